//! No secret in any log line: a whole content-trust scenario (tokens, passwords,
//! regeneration, bearer tokens, a wrong password, pushes and pulls, a trust publish with
//! server-held keys) against a gateway logging at `debug`; then every log line is searched
//! for every password, passphrase, token and private key the run created.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use common::content;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use redb::ReadableTable as _;
use reqwest::StatusCode;
use reqwest::blocking::RequestBuilder;
use serde_json::Value;

use common::ADMIN_PASSWORD;
use common::trust::{Fixture, TrustGateway};
use content::TestImage;
use portcullis::control_plane::EmbeddedDb;
use portcullis::trust::kek::{self, PassphraseSource};
use portcullis::trust::store::TrustStore;

const PASSPHRASE: &str = "leak-test-kek-passphrase-5f1c9";

#[test]
fn no_secret_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TrustGateway::start_with_env(
        dir.path(),
        &[],
        &[
            ("RUST_LOG", "debug"),
            ("PORTCULLIS_TRUST_KEY_PASSPHRASE", PASSPHRASE),
        ],
    );
    let f = Fixture::load();
    let repository = f.gun.split_once('/').unwrap().1.to_owned();
    let mut secrets: Vec<(String, String)> = vec![
        ("admin password".into(), ADMIN_PASSWORD.into()),
        ("trust key passphrase".into(), PASSPHRASE.into()),
    ];

    let created = gateway.portcullis(&[
        "token",
        "create",
        "--name",
        "signer",
        "--repository",
        &repository,
        "content/read",
        "content/write",
        "metadata/read",
        "trust/write",
    ]);
    for password in created["credentials"]["passwords"].as_array().unwrap() {
        let value = password["value"].as_str().unwrap().to_owned();
        secrets.push((format!("signer {}", password["name"]), value));
    }
    let signer_password = common::password1(&created);
    let reader_password = gateway.token("reader", &repository, &["content/read"]);
    secrets.push(("reader password1".into(), reader_password.clone()));

    // Pushes and pulls with Basic credentials; a failed login with a wrong password.
    let signer = |r: RequestBuilder| r.basic_auth("signer", Some(&signer_password));
    let image = TestImage::new("leak");
    image.push(
        &gateway.http,
        &gateway.server.base,
        &repository,
        "v1",
        &signer,
    );
    let resp = gateway
        .http
        .get(
            gateway
                .server
                .url(&format!("/v2/{repository}/manifests/v1")),
        )
        .basic_auth("reader", Some(&reader_password))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let wrong = format!("{reader_password}x");
    let resp = gateway
        .http
        .get(
            gateway
                .server
                .url(&format!("/v2/{repository}/manifests/v1")),
        )
        .basic_auth("reader", Some(&wrong))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    secrets.push(("a wrong password".into(), wrong));

    // Bearer tokens, a refresh token, a trust publish with the server-held keys.
    let push = gateway.bearer(("signer", &signer_password), &f.gun, "push,pull");
    secrets.push(("signer's bearer token".into(), push.jwt.clone()));
    let resp = gateway
        .http
        .post(gateway.server.url("/oauth2/token"))
        .form(&[
            ("grant_type", "password"),
            ("service", "portcullis"),
            ("client_id", "leak-test"),
            ("access_type", "offline"),
            ("username", "signer"),
            ("password", &signer_password),
        ])
        .send()
        .unwrap();
    let body: Value = resp.json().unwrap();
    if let Some(refresh) = body["refresh_token"].as_str() {
        secrets.push(("a refresh token".into(), refresh.to_owned()));
    }
    let key: Value = gateway
        .get(&f.gun, "tuf/timestamp.key", Some(&push))
        .json()
        .unwrap();
    let bound = f.bind(&key);
    let resp = gateway.post_update(&f.gun, &push, &bound.parts());
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = gateway.get(&f.gun, "tuf/timestamp.json", Some(&push));
    assert_eq!(resp.status(), StatusCode::OK);

    // Regenerated and deleted credentials.
    let regenerated = gateway.portcullis(&[
        "token",
        "credential",
        "generate",
        "--name",
        "reader",
        "--password1",
    ]);
    let text = regenerated.to_string();
    let value = text
        .split('"')
        .find(|s| {
            s.len() >= 43
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .unwrap_or_else(|| panic!("no generated password in {regenerated}"))
        .to_owned();
    secrets.push(("regenerated reader password".into(), value));
    gateway.portcullis(&["token", "delete", "--name", "reader", "--yes"]);
    let resp = gateway
        .http
        .get(gateway.server.url("/admin/v1/tokens"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let data_dir = gateway.server.data_dir.clone();
    gateway.server.stop();
    let log = std::fs::read_to_string(data_dir.with_extension("stderr.log")).unwrap();

    // The token-signing keys (sealed in control.redb) and every server-held trust key,
    // opened with the KEK.
    let db = Arc::new(EmbeddedDb::open_existing(&data_dir.join("control.redb")).unwrap());
    let store = TrustStore::open(Arc::clone(&db)).unwrap();
    let (kek, _) = kek::unlock(
        &store,
        &data_dir,
        &PassphraseSource::Value(PASSPHRASE.to_owned().into()),
    )
    .unwrap();
    for signing in signing_keys(&db, &kek) {
        secrets.push((
            "token-signing key (hex)".into(),
            hex::encode(signing.to_bytes()),
        ));
        let pem = signing.to_pkcs8_pem(Default::default()).unwrap();
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            secrets.push(("token-signing key PEM line".into(), line.to_owned()));
        }
    }
    let keys = store.read().unwrap().server_keys().unwrap();
    assert!(!keys.is_empty(), "the publish made no server-held key");
    for ((gun, role, id), sealed) in keys {
        assert!(kek::is_sealed(&sealed), "{role} key {id} stored in plain");
        let plain = kek.open(&kek::key_aad(&gun, &role, &id), &sealed).unwrap();
        let secret = &plain[1..];
        secrets.push((format!("{role} key (hex)"), hex::encode(secret)));
        secrets.push((format!("{role} key (base64)"), STANDARD.encode(secret)));
        secrets.push((
            format!("{role} key (base64url)"),
            URL_SAFE_NO_PAD.encode(secret),
        ));
    }

    let lines = log.lines().count();
    assert!(
        lines > 50 && log.contains("DEBUG"),
        "the run logged too little to judge ({lines} lines)"
    );
    let mut leaks = Vec::new();
    for (name, secret) in &secrets {
        assert!(secret.len() >= 16, "{name} is too short to search for");
        for (i, line) in log.lines().enumerate() {
            if line.contains(secret.as_str()) {
                leaks.push(format!("{name} on log line {}: {line:.200}", i + 1));
            }
        }
    }
    println!(
        "searched {lines} log lines for {} secrets: {} leaks",
        secrets.len(),
        leaks.len()
    );
    assert!(
        leaks.is_empty(),
        "secrets in the log:\n{}",
        leaks.join("\n")
    );
}

/// The token-signing keys in `control.redb` (JSON records with the PKCS#8 key sealed by
/// the KEK under `token-signing-key\n<kid>`), each checked to be sealed.
fn signing_keys(db: &EmbeddedDb, kek: &kek::Kek) -> Vec<p256::SecretKey> {
    const TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("signing_keys");
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(TABLE).unwrap();
    let mut keys = Vec::new();
    for entry in table.iter().unwrap() {
        let (kid, record) = entry.unwrap();
        let record: Value = serde_json::from_slice(record.value()).unwrap();
        let sealed: Vec<u8> = serde_json::from_value(record["sealed"].clone()).unwrap();
        assert!(
            kek::is_sealed(&sealed),
            "signing key {} stored in plain",
            kid.value()
        );
        let aad = format!("token-signing-key\n{}", kid.value());
        let der = kek.open(aad.as_bytes(), &sealed).unwrap();
        keys.push(p256::SecretKey::from_pkcs8_der(&der).unwrap());
    }
    assert!(!keys.is_empty(), "no token-signing key in control.redb");
    keys
}
