//! Notary Project signatures through the gateway: JWS envelopes whose signatures are
//! made by an independent JWS implementation (`jsonwebtoken`, over ring) with
//! certificates made by rcgen, pushed as referrers of the image
//! (`application/vnd.cncf.notary.signature`), then verified by the gateway against a
//! `signature-trust` identity (CA certificate and subject): the chain, the code-signing
//! usage, the subject, the signing time and expiry, the critical headers, the payload's
//! digest. Pulls are served or refused per policy; the migration report names them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use reqwest::blocking::Client;
use serde_json::{Value, json};

use common::content::{OCI_MANIFEST, TestImage, digest, upload};
use common::{Server, admin, cli_json};

const ARTIFACT_TYPE: &str = "application/vnd.cncf.notary.signature";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// A CA and a code-signing certificate it issued.
struct Pki {
    ca_pem: String,
    ca_der: Vec<u8>,
    leaf_der: Vec<u8>,
    leaf_key: KeyPair,
}

fn pki(ca_name: &str, leaf_cn: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, leaf_cn);
    leaf.distinguished_name
        .push(DnType::OrganizationName, "Example");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().to_vec(),
        leaf_der: leaf_cert.der().to_vec(),
        leaf_key,
    }
}

fn rfc3339(offset_seconds: i64) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_seconds);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A JWS envelope (JSON serialization) over the Notary Project payload for
/// `manifest`, signed ES256 by `jsonwebtoken` with `pki`'s leaf key; `protected` may
/// override or add header fields.
fn envelope(pki: &Pki, manifest: &[u8], protected: Value) -> Vec<u8> {
    let mut header = json!({
        "alg": "ES256",
        "crit": ["io.cncf.notary.signingScheme", "io.cncf.notary.expiry"],
        "cty": "application/vnd.cncf.notary.payload.v1+json",
        "io.cncf.notary.signingScheme": "notary.x509",
        "io.cncf.notary.signingTime": rfc3339(-60),
        "io.cncf.notary.expiry": rfc3339(86_400),
    });
    for (k, v) in protected.as_object().unwrap() {
        header[k] = v.clone();
    }
    let payload = json!({"targetArtifact": {
        "mediaType": OCI_MANIFEST, "digest": digest(manifest), "size": manifest.len()}});
    let protected = URL_SAFE_NO_PAD.encode(header.to_string());
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
    let key = EncodingKey::from_ec_der(&pki.leaf_key.serialize_der());
    let signature = jsonwebtoken::crypto::sign(
        format!("{protected}.{payload}").as_bytes(),
        &key,
        Algorithm::ES256,
    )
    .unwrap();
    serde_json::to_vec(&json!({
        "payload": payload,
        "protected": protected,
        "header": {"x5c": [STANDARD.encode(&pki.leaf_der), STANDARD.encode(&pki.ca_der)],
                   "io.cncf.notary.signingAgent": "portcullis-test"},
        "signature": signature,
    }))
    .unwrap()
}

struct Setup {
    server: Server,
    http: Client,
    puller: String,
    dir: tempfile::TempDir,
}

impl Setup {
    fn start() -> Setup {
        Setup::start_with(&[])
    }

    /// [`Setup::start`] with more `serve` arguments.
    fn start_with(args: &[&str]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (server, puller) = common::start_with_release_policy(dir.path(), args);
        Setup {
            server,
            http: portcullis_test_support::client(),
            puller,
            dir,
        }
    }

    /// Pushes `envelope` as a Notary Project signature of `subject` (a referrer);
    /// returns the signature manifest's digest.
    fn push_signature(&self, repo: &str, subject: &[u8], envelope: &[u8]) -> String {
        self.push_envelope(repo, subject, envelope, "application/jose+json")
    }

    /// [`Setup::push_signature`] for an envelope layer of `media_type`.
    fn push_envelope(
        &self,
        repo: &str,
        subject: &[u8],
        envelope: &[u8],
        media_type: &str,
    ) -> String {
        let base = &self.server.base;
        for blob in [b"{}".as_slice(), envelope] {
            assert_eq!(upload(&self.http, base, repo, blob, &admin).status(), 201);
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": OCI_EMPTY, "digest": digest(b"{}"), "size": 2},
            "layers": [{"mediaType": media_type,
                        "digest": digest(envelope), "size": envelope.len()}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest(subject),
                        "size": subject.len()},
            "annotations": {"io.cncf.notary.x509chain.thumbprint#S256": "[]"},
        }))
        .unwrap();
        let d = digest(&manifest);
        let r = admin(self.http.put(format!("{base}/v2/{repo}/manifests/{d}")))
            .header("content-type", OCI_MANIFEST)
            .body(manifest)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "PUT signature manifest");
        d
    }

    fn pull(&self, repo: &str, reference: &str) -> u16 {
        self.http
            .get(
                self.server
                    .url(&format!("/v2/{repo}/manifests/{reference}")),
            )
            .header("accept", OCI_MANIFEST)
            .basic_auth("puller", Some(&self.puller))
            .send()
            .unwrap()
            .status()
            .as_u16()
    }

    fn trust(&self, name: &str, pki: &Pki, identity: Option<&str>) {
        let ca = self.dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let mut args = vec![
            "signature-trust",
            "add",
            "--name",
            name,
            "--ca-cert",
            ca.to_str().unwrap(),
        ];
        if let Some(identity) = identity {
            args.extend(["--identity", identity]);
        }
        let added = cli_json(&self.server, &args);
        assert_eq!(added["kind"], "notary");
    }
}

#[test]
fn notary_project_signatures_decide_pulls_by_policy() {
    let setup = Setup::start();
    let release = pki("Release CA", "release");
    let rogue = pki("Rogue CA", "release");
    setup.trust("release", &release, Some("CN=release, O=Example"));

    let images: Vec<TestImage> = ["v1", "v2", "v3", "v4", "v5"]
        .iter()
        .map(|tag| {
            let image = TestImage::new(&format!("notary-{tag}"));
            image.push(&setup.http, &setup.server.base, "prod/app", tag, &admin);
            image
        })
        .collect();
    for tag in ["v1", "v2", "v3", "v4", "v5"] {
        assert_eq!(setup.pull("prod/app", tag), 403, "{tag} unsigned");
    }

    // v1: a good signature. v2: a chain to a CA nobody trusts. v3: expired. v4: a
    // critical header this verifier does not know. v5: signed for v1's digest.
    let m = |i: usize| images[i].manifest.as_slice();
    setup.push_signature("prod/app", m(0), &envelope(&release, m(0), json!({})));
    setup.push_signature("prod/app", m(1), &envelope(&rogue, m(1), json!({})));
    let expired = json!({"io.cncf.notary.signingTime": rfc3339(-7200),
                         "io.cncf.notary.expiry": rfc3339(-3600)});
    setup.push_signature("prod/app", m(2), &envelope(&release, m(2), expired));
    let unknown = json!({"crit": ["io.cncf.notary.signingScheme", "io.cncf.notary.expiry",
                                  "io.example.unknown"], "io.example.unknown": true});
    setup.push_signature("prod/app", m(3), &envelope(&release, m(3), unknown));
    let sig5 = setup.push_signature("prod/app", m(4), &envelope(&release, m(0), json!({})));

    assert_eq!(setup.pull("prod/app", "v1"), 200);
    assert_eq!(setup.pull("prod/app", &images[0].digest()), 200);
    for tag in ["v2", "v3", "v4", "v5"] {
        assert_eq!(setup.pull("prod/app", tag), 403, "{tag} must stay refused");
    }
    // The signatures themselves are readable, so `notation verify` can fetch them.
    assert_eq!(setup.pull("prod/app", &sig5), 200);

    // The migration report names what signed each tag.
    let report = cli_json(&setup.server, &["signature-trust", "report"]);
    let tags = &report.as_array().unwrap()[0]["tags"];
    let by_tag = |tag: &str| {
        tags.as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag"] == tag)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_tag("v1")["signatures"], json!(["release"]));
    assert_eq!(by_tag("v1")["contentTrust"], false);
    assert_eq!(by_tag("v2")["signatures"], json!([]));

    // Trusting the rogue CA under another name makes v2 signed by `rogue`, not by
    // `release`: still refused.
    setup.trust("rogue", &rogue, None);
    assert_eq!(setup.pull("prod/app", "v2"), 403);
    let report = cli_json(&setup.server, &["signature-trust", "report"]);
    let v2 = report[0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag"] == "v2")
        .cloned()
        .unwrap();
    assert_eq!(v2["signatures"], json!(["rogue"]));
}

/// A COSE envelope (`COSE_Sign1_Tagged`, made by `coset`) over the Notary Project
/// payload for `manifest`, ES256 by `pki`'s leaf key (p256), signed `signed_at`
/// seconds from now and expiring `expires_at` seconds from now.
fn cose_envelope(pki: &Pki, manifest: &[u8], signed_at: i64, expires_at: i64) -> Vec<u8> {
    use coset::cbor::Value;
    use coset::{
        CoseSign1Builder, HeaderBuilder, RegisteredLabel, TaggedCborSerializable as _, iana,
    };
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::DecodePrivateKey as _;
    let epoch = |offset: i64| {
        let at = time::OffsetDateTime::now_utc().unix_timestamp() + offset;
        Value::Tag(1, Box::new(Value::Integer(at.into())))
    };
    let crit = |name: &str| RegisteredLabel::Text(name.to_owned());
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES256)
        .add_critical_label(crit("io.cncf.notary.signingScheme"))
        .add_critical_label(crit("io.cncf.notary.expiry"))
        .content_type("application/vnd.cncf.notary.payload.v1+json".to_owned())
        .text_value(
            "io.cncf.notary.signingScheme".to_owned(),
            Value::Text("notary.x509".into()),
        )
        .text_value("io.cncf.notary.signingTime".to_owned(), epoch(signed_at))
        .text_value("io.cncf.notary.expiry".to_owned(), epoch(expires_at))
        .build();
    let unprotected = HeaderBuilder::new()
        .value(
            33,
            Value::Array(vec![
                Value::Bytes(pki.leaf_der.clone()),
                Value::Bytes(pki.ca_der.clone()),
            ]),
        )
        .build();
    let payload = json!({"targetArtifact": {
        "mediaType": OCI_MANIFEST, "digest": digest(manifest), "size": manifest.len()}});
    let key = p256::ecdsa::SigningKey::from_pkcs8_der(&pki.leaf_key.serialize_der()).unwrap();
    CoseSign1Builder::new()
        .protected(protected)
        .unprotected(unprotected)
        .payload(payload.to_string().into_bytes())
        .create_signature(b"", |tbs| {
            let signature: p256::ecdsa::Signature = key.sign(tbs);
            signature.to_bytes().to_vec()
        })
        .build()
        .to_tagged_vec()
        .unwrap()
}

#[test]
fn cose_envelopes_decide_pulls_and_explain_names_each_signature() {
    let setup = Setup::start();
    let release = pki("Release CA", "release");
    setup.trust("release", &release, Some("CN=release, O=Example"));
    let images: Vec<TestImage> = ["v1", "v2"]
        .iter()
        .map(|tag| {
            let image = TestImage::new(&format!("cose-{tag}"));
            image.push(&setup.http, &setup.server.base, "prod/app", tag, &admin);
            image
        })
        .collect();
    let (good, expired) = (&images[0].manifest, &images[1].manifest);
    setup.push_envelope(
        "prod/app",
        good,
        &cose_envelope(&release, good, -60, 86_400),
        "application/cose",
    );
    setup.push_envelope(
        "prod/app",
        expired,
        &cose_envelope(&release, expired, -7200, -3600),
        "application/cose",
    );
    assert_eq!(setup.pull("prod/app", "v1"), 200);
    assert_eq!(setup.pull("prod/app", &images[0].digest()), 200);
    assert_eq!(setup.pull("prod/app", "v2"), 403);

    // `policy explain` finds each manifest's signatures and names what they gave.
    let explain = |tag: &str| {
        common::explain_table(
            &setup.server,
            "puller",
            "prod/app",
            "content/read",
            &["--tag", tag],
        )
    };
    let v1 = explain("v1");
    assert!(v1.starts_with("decision: allow\n"), "{v1}");
    assert!(
        v1.contains(&format!("signatures of {}:\n", images[0].digest())),
        "{v1}"
    );
    assert!(
        v1.contains("  signature by 'release' (notation) verified\n"),
        "{v1}"
    );
    let v2 = explain("v2");
    assert!(v2.starts_with("decision: deny\n"), "{v2}");
    assert!(v2.contains("prod-signed-by-release"), "{v2}");
    assert!(
        v2.contains("  notation signature rejected: signature expired at"),
        "{v2}"
    );
}

/// Through `--upstream` (docker-registry 2.8, no referrers API): the referrers are
/// found in the index tagged `sha256-<hex>` that notation maintains on such registries
/// (the OCI referrers tag schema), for a policy (`prod/app`) and a signed-only
/// repository (`team/app`, tag list included).
#[test]
fn notary_project_signatures_through_an_upstream_registry() {
    let upstream = common::registry::DockerRegistry::start();
    let setup = Setup::start_with(&["--upstream", &upstream.url]);
    let release = pki("Release CA", "release");
    setup.trust("release", &release, Some("CN=release, O=Example"));
    let out = common::cli(
        &setup.server,
        &[
            "repository",
            "update",
            "--repository",
            "team/app",
            "--signed-only",
            "true",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    for repo in ["prod/app", "team/app"] {
        let images: Vec<TestImage> = ["v1", "v2"]
            .iter()
            .map(|tag| {
                let image = TestImage::new(&format!("upstream-{repo}-{tag}"));
                image.push(&setup.http, &setup.server.base, repo, tag, &admin);
                image
            })
            .collect();
        let (signed, d1) = (&images[0].manifest, images[0].digest());
        let envelope = envelope(&release, signed, json!({}));
        let signature = setup.push_signature(repo, signed, &envelope);
        assert_eq!(
            setup.pull(repo, "v1"),
            403,
            "{repo}: no referrers API upstream"
        );
        let upstream_get = |path: &str| {
            setup
                .http
                .get(format!("{}/v2/{repo}/{path}", upstream.url))
                .header("accept", OCI_MANIFEST)
                .send()
                .unwrap()
        };
        assert_eq!(upstream_get(&format!("referrers/{d1}")).status(), 404);

        let size = upstream_get(&format!("manifests/{signature}"))
            .bytes()
            .unwrap()
            .len();
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
                           "digest": signature, "size": size}],
        }))
        .unwrap();
        let tag = d1.replacen(':', "-", 1);
        let url = format!("{}/v2/{repo}/manifests/{tag}", setup.server.base);
        let r = admin(setup.http.put(url))
            .header("content-type", "application/vnd.oci.image.index.v1+json")
            .body(index)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{repo}: PUT the referrers index");
        assert_eq!(setup.pull(repo, "v1"), 200, "{repo}");
        assert_eq!(setup.pull(repo, &d1), 200, "{repo}");
        assert_eq!(setup.pull(repo, "v2"), 403, "{repo}");
    }
    let tags: Value = setup
        .http
        .get(setup.server.url("/v2/team/app/tags/list"))
        .basic_auth("puller", Some(&setup.puller))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(tags["tags"], json!(["v1"]), "{tags}");
}
