//! The gateway's per-request work outside Cedar (which `benches/authz.rs` measures):
//! request classification, ES256 JWT verification (raw, and through the authenticator's
//! claim cache), and password checks (the salted hash on a cache miss, the
//! authenticator's Basic cache on a hit), and the bundled store's manifest GET (what the
//! metadata store costs a pull).
//!
//! `cargo bench --bench hot_path [FILTER]`. `cargo test --all-targets` runs each case
//! once, as a smoke test.
#![allow(clippy::expect_used)] // a benchmark setup failure should abort loudly

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use criterion::Criterion;
use http::{HeaderValue, Method};
use portcullis::gateway::authn::Authenticator;
use portcullis::gateway::classify::classify;
use portcullis::gateway::jwt::{AccessEntry, Issuer, PrincipalKind, Subject, TokenUse};
use portcullis::identity::store::{NewToken, TokenScope};
use portcullis::identity::{
    AdminAccount, IdentityStore, PasswordSlot, RepositoryPattern, ScopeRule, TokenStatus, now_unix,
};

const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn classification(c: &mut Criterion) {
    let upload = "/v2/team/app/blobs/uploads/0b4a3e4c-54e5-4b53-9a7a-bc1a2f2d4a8e";
    let cases = [
        (
            "manifest GET by tag",
            Method::GET,
            "/v2/team/app/manifests/v1".to_owned(),
            None,
        ),
        (
            "manifest HEAD by digest",
            Method::HEAD,
            format!("/v2/team/app/manifests/{DIGEST}"),
            None,
        ),
        (
            "blob GET, 3-level name",
            Method::GET,
            format!("/v2/team/sub/app/blobs/{DIGEST}"),
            None,
        ),
        ("upload PATCH", Method::PATCH, upload.to_owned(), None),
        (
            "upload PUT ?digest",
            Method::PUT,
            upload.to_owned(),
            Some(format!("digest={DIGEST}")),
        ),
    ];
    for (name, method, path, query) in cases {
        c.bench_function(&format!("classify/{name}"), |b| {
            b.iter(|| classify(black_box(&method), black_box(&path), query.as_deref()))
        });
    }
}

/// A store with token `ci-bot` (content/read, content/write on `team/app`), the
/// authenticator over it, and the token's password.
fn authenticator(
    dir: &std::path::Path,
) -> (Arc<IdentityStore>, Arc<Issuer>, Authenticator, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let store = IdentityStore::open(&dir.join("control.redb")).expect("store");
    let created = rt
        .block_on(store.create_token(&NewToken {
            name: "ci-bot".into(),
            scope: TokenScope::Repositories(vec![ScopeRule {
                repository: RepositoryPattern::parse("team/app").expect("pattern"),
                actions: [
                    portcullis::identity::Action::ContentRead,
                    portcullis::identity::Action::ContentWrite,
                ]
                .into_iter()
                .collect(),
            }]),
            status: TokenStatus::Enabled,
            passwords: vec![PasswordSlot::Password1],
            expires_at: None,
        }))
        .expect("token");
    let password = created.passwords[0].value.clone();
    let (admin, _) = rt
        .block_on(AdminAccount::open(
            dir,
            Some("bench-admin-password"),
            &store,
        ))
        .expect("admin");
    let issuer =
        Arc::new(Issuer::generated("portcullis", Duration::from_secs(300)).expect("issuer"));
    let authn = Authenticator::new(Arc::clone(&store), Arc::new(admin), Arc::clone(&issuer));
    (store, issuer, authn, password)
}

fn credentials(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, issuer, authn, password) = authenticator(dir.path());
    let principal = authn
        .basic("ci-bot", &password, None)
        .expect("the password is accepted");
    let subject = authn.subject(&principal).expect("subject");
    let jwt = issuer
        .sign(
            TokenUse::Access,
            subject,
            vec![AccessEntry {
                kind: "repository".into(),
                name: "team/app".into(),
                actions: vec!["pull".into(), "push".into()],
            }],
            now_unix(),
        )
        .expect("sign")
        .token;

    c.bench_function("jwt/sign", |b| {
        let subject = Subject {
            sub: "ci-bot".into(),
            principal: PrincipalKind::Token,
            slot: Some(PasswordSlot::Password1),
            password_created: None,
            password_id: None,
        };
        b.iter(|| issuer.sign(TokenUse::Access, subject.clone(), vec![], now_unix()))
    });
    c.bench_function("jwt/verify (uncached)", |b| {
        b.iter(|| issuer.verify(black_box(&jwt), TokenUse::Access, now_unix()))
    });
    let bearer = HeaderValue::from_str(&format!("Bearer {jwt}")).expect("header");
    c.bench_function("authenticate/bearer (cached claims)", |b| {
        b.iter(|| authn.authenticate(Some(black_box(&bearer)), None))
    });

    // What a Basic-cache miss costs: the salted hash of both password slots.
    c.bench_function("password/verify (uncached)", |b| {
        b.iter(|| store.verify_password("ci-bot", black_box(&password), now_unix()))
    });
    let basic = HeaderValue::from_str(&format!(
        "Basic {}",
        STANDARD.encode(format!("ci-bot:{password}"))
    ))
    .expect("header");
    c.bench_function("authenticate/basic (cached)", |b| {
        b.iter(|| authn.authenticate(Some(black_box(&basic)), None))
    });
}

/// The bundled store's manifest GET by tag (resolve + record + bytes) on the default
/// stores, driven as the gateway drives it: from a multi-threaded runtime.
fn manifest_get(c: &mut Criterion) {
    use portcullis_storage::{Registry, StorageConfig, names::Reference};
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let registry = Registry::open(StorageConfig::new(dir.path())).expect("registry");
    let tag = Reference::Tag("v1".into());
    rt.block_on(async {
        let config = b"{}".to_vec();
        let digest = portcullis_storage::Digest::of(&config);
        registry
            .put_blob("team/app", &digest, axum::body::Body::from(config))
            .await
            .expect("config blob");
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest.as_str(), "size": 2},
            "layers": []
        });
        let bytes = serde_json::to_vec(&manifest).expect("json");
        registry
            .put_manifest("team/app", &tag, None, bytes, vec![])
            .await
            .expect("manifest");
    });
    c.bench_function("storage/manifest GET by tag", |b| {
        b.iter(|| {
            rt.block_on(registry.get_manifest("team/app", black_box(&tag), true))
                .expect("manifest")
        })
    });
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    classification(&mut c);
    credentials(&mut c);
    manifest_get(&mut c);
    c.final_summary();
}
