//! Signed pulls decided at the gateway (`access::authorize`, the bundled store in
//! process): a pull by tag and by digest with no signature demand, and the same from a
//! signed-only repository whose manifest carries a cosign signature — a verification
//! cache hit, one lookup more than an unsigned pull — and the cache miss (finding the
//! `.sig` artifact and the referrers, reading the payload, verifying ECDSA); the same
//! for a Notary Project signature, a COSE envelope made by `coset` (cache miss: reading
//! the envelope, the chain to the CA, ES256).
//!
//! `cargo bench --bench signatures [FILTER]`. `cargo test --all-targets` runs each case
//! once, as a smoke test.
#![allow(clippy::expect_used)] // a benchmark setup failure should abort loudly

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use criterion::Criterion;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey as _;
use portcullis::audit::Audit;
use portcullis::gateway::access::{self, Disposition};
use portcullis::gateway::authn::Authenticated;
use portcullis::gateway::classify::{RepositoryRequest, RequestKind};
use portcullis::gateway::{Gateway, GatewayOptions, signatures};
use portcullis::identity::store::{NewToken, TokenScope};
use portcullis::identity::{
    Action, PasswordSlot, Principal, RepositoryAttributes, RepositoryPattern, ScopeRule,
    TokenStatus, TrustMaterial,
};
use portcullis::trust::kek::PassphraseSource;
use portcullis_oci::{Digest, Reference};
use portcullis_storage::Registry;
use serde_json::json;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": Digest::of(data).to_string(), "size": data.len()})
}

async fn put_blob(registry: &Registry, repo: &str, data: &[u8]) {
    registry
        .put_blob(
            repo,
            &Digest::of(data),
            axum::body::Body::from(data.to_vec()),
        )
        .await
        .expect("blob");
}

/// Pushes a small image to `repo:tag`; its digest.
async fn push_image(registry: &Registry, repo: &str, tag: &str) -> String {
    let config = format!("{{\"image\":\"{repo}:{tag}\"}}").into_bytes();
    let layer = format!("layer of {repo}:{tag}").into_bytes();
    put_blob(registry, repo, &config).await;
    put_blob(registry, repo, &layer).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
    }))
    .expect("json");
    registry
        .put_manifest(
            repo,
            &Reference::Tag(tag.into()),
            Some(OCI_MANIFEST),
            manifest,
            vec![],
        )
        .await
        .expect("manifest")
        .digest
        .to_string()
}

/// Signs `repo@digest` as cosign does: the simple-signing payload as a layer of the
/// `sha256-<hex>.sig` manifest, its ECDSA signature in the layer's annotation.
async fn cosign_sign(registry: &Registry, key: &SigningKey, repo: &str, digest: &str) {
    let payload = serde_json::to_vec(&json!({"critical": {
        "identity": {"docker-reference": format!("registry.example/{repo}")},
        "image": {"docker-manifest-digest": digest},
        "type": "cosign container image signature"}, "optional": null}))
    .expect("json");
    let signature: Signature = key.sign(&payload);
    let config = b"{}".to_vec();
    put_blob(registry, repo, &config).await;
    put_blob(registry, repo, &payload).await;
    let mut layer = descriptor(portcullis::signatures::cosign::PAYLOAD_MEDIA_TYPE, &payload);
    layer["annotations"] = json!({
        portcullis::signatures::cosign::SIGNATURE_ANNOTATION:
            STANDARD.encode(signature.to_der().as_bytes())});
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [layer],
    }))
    .expect("json");
    let tag = portcullis::signatures::cosign::signature_tag(digest).expect("tag");
    registry
        .put_manifest(
            repo,
            &Reference::Tag(tag),
            Some(OCI_MANIFEST),
            manifest,
            vec![],
        )
        .await
        .expect("signature manifest");
}

/// Signs `repo@digest` as notation does: a referrer whose layer is a COSE envelope
/// (made by `coset`, ES256 by a leaf certificate of a CA made here); the CA's PEM.
async fn notation_sign(registry: &Registry, repo: &str, digest: &str) -> String {
    use coset::cbor::Value;
    use coset::{
        CoseSign1Builder, HeaderBuilder, RegisteredLabel, TaggedCborSerializable as _, iana,
    };
    use p256::pkcs8::DecodePrivateKey as _;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, &ca_key);
    let leaf_key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("params");
    leaf.distinguished_name
        .push(DnType::CommonName, "bench signer");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("leaf");
    let signer = SigningKey::from_pkcs8_der(&leaf_key.serialize_der()).expect("pkcs8");

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let scheme = "io.cncf.notary.signingScheme";
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES256)
        .add_critical_label(RegisteredLabel::Text(scheme.into()))
        .content_type("application/vnd.cncf.notary.payload.v1+json".into())
        .text_value(scheme.into(), Value::Text("notary.x509".into()))
        .text_value(
            "io.cncf.notary.signingTime".into(),
            Value::Tag(1, Box::new(Value::Integer((now - 60).into()))),
        )
        .build();
    let chain = vec![
        Value::Bytes(leaf_cert.der().to_vec()),
        Value::Bytes(ca_cert.der().to_vec()),
    ];
    let payload = serde_json::to_vec(&json!({"targetArtifact": {
        "mediaType": OCI_MANIFEST, "digest": digest, "size": 1}}))
    .expect("json");
    let envelope = CoseSign1Builder::new()
        .protected(protected)
        .unprotected(HeaderBuilder::new().value(33, Value::Array(chain)).build())
        .payload(payload)
        .create_signature(b"", |tbs| {
            let signature: Signature = signer.sign(tbs);
            signature.to_bytes().to_vec()
        })
        .build()
        .to_tagged_vec()
        .expect("cose");
    let empty = b"{}".to_vec();
    put_blob(registry, repo, &empty).await;
    put_blob(registry, repo, &envelope).await;
    let subject = registry
        .get_manifest(
            repo,
            &Reference::Digest(Digest::parse(digest).expect("digest")),
            false,
        )
        .await
        .expect("subject")
        .record
        .size;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": portcullis::signatures::notary::ARTIFACT_TYPE,
        "config": descriptor("application/vnd.oci.empty.v1+json", &empty),
        "layers": [descriptor(portcullis::signatures::notary::COSE_MEDIA_TYPE, &envelope)],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": subject},
    }))
    .expect("json");
    registry
        .put_manifest(
            repo,
            &Reference::Digest(Digest::of(&manifest)),
            Some(OCI_MANIFEST),
            manifest,
            vec![],
        )
        .await
        .expect("signature manifest");
    ca_cert.pem()
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let opened = Gateway::open(&GatewayOptions {
        data_dir: dir.path().to_path_buf(),
        policy_dirs: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies")],
        admin_password: Some("bench-admin".into()),
        upstream: None,
        service: "portcullis-bench".into(),
        token_ttl: Duration::from_secs(300),
        storage: Default::default(),
        control_plane: Default::default(),
        control_plane_max_staleness: Duration::from_secs(30),
        audit: Audit::default(),
        trust_key_passphrase: PassphraseSource::DataDir,
        login_throttle: Default::default(),
        max_upload_sessions: 64,
    })
    .expect("gateway");
    let gw: Arc<Gateway> = opened.gateway;
    let registry = opened.bundled.expect("bundled store");
    rt.block_on(gw.store.create_token(&NewToken {
        name: "puller".into(),
        scope: TokenScope::Repositories(vec![ScopeRule {
                repository: RepositoryPattern::parse("team/*").expect("pattern"),
                actions: [Action::ContentRead, Action::MetadataRead]
                    .into_iter()
                    .collect(),
            }]),
        status: TokenStatus::Enabled,
        passwords: vec![PasswordSlot::Password1],
        expires_at: None,
    }))
    .expect("token");
    let who = Authenticated {
        principal: Principal::Token {
            name: "puller".into(),
            slot: PasswordSlot::Password1,
        },
        bearer_access: None,
    };
    let key = SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let (unsigned, signed, notarized, ca_pem) = rt.block_on(async {
        let unsigned = push_image(&registry, "team/app", "v1").await;
        let signed = push_image(&registry, "team/signed", "v1").await;
        cosign_sign(&registry, &key, "team/signed", &signed).await;
        let notarized = push_image(&registry, "team/notarized", "v1").await;
        let ca_pem = notation_sign(&registry, "team/notarized", &notarized).await;
        (unsigned, signed, notarized, ca_pem)
    });
    for repository in ["team/signed", "team/notarized"] {
        rt.block_on(gw.store.set_repository_attributes(
            repository,
            &RepositoryAttributes {
                signed_only: true,
                ..RepositoryAttributes::default()
            },
        ))
        .expect("signed-only");
    }

    let pull = |repository: &str, reference: Reference| RepositoryRequest {
        repository: repository.into(),
        kind: RequestKind::ManifestGet { reference },
    };
    let authorize =
        |req: &RepositoryRequest| rt.block_on(access::authorize(&gw, &who, req, None, None));
    let by_tag = pull("team/app", Reference::Tag("v1".into()));
    c.bench_function("signed/pull by tag, no identities", |b| {
        b.iter(|| assert!(matches!(authorize(&by_tag), Ok(Disposition::Forward))))
    });

    let public = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .expect("pem");
    rt.block_on(
        gw.store
            .add_signature_trust("release", TrustMaterial::Cosign { public_key: public }),
    )
    .expect("trust");
    rt.block_on(gw.store.add_signature_trust(
        "notation",
        TrustMaterial::Notary {
            ca_certs: ca_pem,
            identity: None,
        },
    ))
    .expect("trust");
    c.bench_function("signed/pull by tag, no signature demand", |b| {
        b.iter(|| assert!(matches!(authorize(&by_tag), Ok(Disposition::Forward))))
    });
    let by_digest = pull(
        "team/app",
        Reference::Digest(Digest::parse(&unsigned).expect("digest")),
    );
    c.bench_function("signed/pull by digest, no signature demand", |b| {
        b.iter(|| assert!(matches!(authorize(&by_digest), Ok(Disposition::Forward))))
    });
    let signed_tag = pull("team/signed", Reference::Tag("v1".into()));
    c.bench_function("signed/pull by tag, signed-only, cosign (cached)", |b| {
        b.iter(|| assert!(matches!(authorize(&signed_tag), Ok(Disposition::Forward))))
    });
    let digest = Digest::parse(&signed).expect("digest");
    let signed_digest = pull("team/signed", Reference::Digest(digest));
    c.bench_function("signed/pull by digest, signed-only, cosign (cached)", |b| {
        b.iter(|| {
            assert!(matches!(
                authorize(&signed_digest),
                Ok(Disposition::Forward)
            ))
        })
    });
    let verifiers = gw.signatures.verifiers(&gw.store.snapshot());
    c.bench_function("signed/verify cosign signature (cache miss)", |b| {
        b.iter(|| {
            gw.signatures.manifest_written("team/signed");
            let names = rt
                .block_on(signatures::verified(
                    &gw,
                    &verifiers,
                    "team/signed",
                    &signed,
                ))
                .expect("verify");
            assert_eq!(names.len(), 1);
        })
    });
    let notarized_tag = pull("team/notarized", Reference::Tag("v1".into()));
    c.bench_function(
        "signed/pull by tag, signed-only, notation COSE (cached)",
        |b| {
            b.iter(|| {
                assert!(matches!(
                    authorize(&notarized_tag),
                    Ok(Disposition::Forward)
                ))
            })
        },
    );
    c.bench_function("signed/verify notation COSE signature (cache miss)", |b| {
        b.iter(|| {
            gw.signatures.manifest_written("team/notarized");
            let names = rt
                .block_on(signatures::verified(
                    &gw,
                    &verifiers,
                    "team/notarized",
                    &notarized,
                ))
                .expect("verify");
            assert_eq!(names.len(), 1);
        })
    });
    c.final_summary();
}
