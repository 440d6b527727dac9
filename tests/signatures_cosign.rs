//! sigstore/cosign signatures through the gateway, made and checked by the Sigstore
//! project's own Rust implementation (the `sigstore` crate), not by our code: a key pair
//! in cosign's encrypted format (scrypt + NaCl secretbox over PKCS#8), the signature
//! pushed through the gateway as the `sha256-<hex>.sig` artifact by sigstore's OCI
//! client, and what the gateway serves checked by sigstore's `PublicKeyVerifier`. The
//! gateway then serves or refuses per policy (`context.signatures`) and per signed-only
//! repository, by tag, by digest and in the tag list.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::path::Path;

use reqwest::blocking::{Client, RequestBuilder};
use sigstore::cosign::constraint::PrivateKeySigner;
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{
    ClientBuilder, Constraint as _, CosignCapabilities as _, SignatureLayer, verify_constraints,
};
use sigstore::crypto::SigningScheme;
use sigstore::crypto::signing_key::SigStoreKeyPair;
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};
use zeroize::Zeroizing;

use common::content::TestImage;
use common::{ADMIN_PASSWORD, Server, cli, cli_json};

const KEY_PASSWORD: &[u8] = b"cosign key password";

/// A cosign key pair as `cosign generate-key-pair` writes it: `cosign.key` (encrypted
/// PEM) and `cosign.pub`.
struct KeyPair {
    encrypted: Zeroizing<Vec<u8>>,
    public_pem: String,
}

fn generate_key_pair(dir: &Path, name: &str) -> KeyPair {
    let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
        .create_signer()
        .unwrap();
    let pair = signer.to_sigstore_keypair().unwrap();
    let encrypted = pair.private_key_to_encrypted_pem(KEY_PASSWORD).unwrap();
    assert!(encrypted.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"));
    // The encrypted key reads back only with its password.
    assert!(SigStoreKeyPair::from_encrypted_pem(encrypted.as_bytes(), b"wrong").is_err());
    let public_pem = pair.public_key_to_pem().unwrap();
    std::fs::write(dir.join(format!("{name}.pub")), &public_pem).unwrap();
    KeyPair {
        encrypted: Zeroizing::new(encrypted.as_bytes().to_vec()),
        public_pem,
    }
}

struct Setup {
    server: Server,
    http: Client,
    puller: String,
    dir: tempfile::TempDir,
}

impl Setup {
    /// A gateway with the shipped `prod/*` example policy and a token `puller` that may
    /// pull and list everything.
    fn start() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (server, puller) = common::start_with_release_policy(dir.path(), &[]);
        Setup {
            server,
            http: portcullis_test_support::client(),
            puller,
            dir,
        }
    }

    fn admin(&self) -> impl Fn(RequestBuilder) -> RequestBuilder {
        |r| r.basic_auth("admin", Some(ADMIN_PASSWORD))
    }

    fn push(&self, repo: &str, tag: &str, seed: &str) -> TestImage {
        let image = TestImage::new(seed);
        image.push(&self.http, &self.server.base, repo, tag, &self.admin());
        image
    }

    /// The puller's `GET` of a manifest: status and, on a refusal, the error message.
    fn pull(&self, repo: &str, reference: &str) -> (u16, String) {
        let r = self
            .http
            .get(
                self.server
                    .url(&format!("/v2/{repo}/manifests/{reference}")),
            )
            .header("accept", common::content::OCI_MANIFEST)
            .basic_auth("puller", Some(&self.puller))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().unwrap_or_default();
        (
            status,
            body["errors"][0]["message"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        )
    }

    fn tags(&self, repo: &str) -> Vec<String> {
        let body: serde_json::Value = self
            .http
            .get(self.server.url(&format!("/v2/{repo}/tags/list")))
            .basic_auth("puller", Some(&self.puller))
            .send()
            .unwrap()
            .json()
            .unwrap();
        serde_json::from_value(body["tags"].clone()).unwrap()
    }

    fn trust(&self, name: &str, key_file: &str) {
        let key = self.dir.path().join(key_file);
        cli_json(
            &self.server,
            &[
                "signature-trust",
                "add",
                "--name",
                name,
                "--public-key",
                key.to_str().unwrap(),
            ],
        );
    }

    fn reference(&self, repo: &str, reference: &str) -> OciReference {
        let sep = if reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        format!("{}/{repo}{sep}{reference}", self.server.host())
            .parse()
            .unwrap()
    }
}

fn sigstore_client() -> sigstore::cosign::Client {
    ClientBuilder::default()
        .with_oci_client_config(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        })
        .build()
        .unwrap()
}

fn admin_auth() -> Auth {
    Auth::Basic("admin".into(), ADMIN_PASSWORD.into())
}

/// Signs `repo@digest` with `key` and pushes the signature through the gateway, as
/// `cosign sign --key` does: sigstore's client builds the simple-signing payload and
/// pushes the artifact under the `.sig` tag. The digest is the one the push returned:
/// under a signature demand the gateway serves the unsigned manifest to nobody, the
/// signer included.
async fn cosign_sign(setup: &Setup, key: &KeyPair, repo: &str, digest: &str) {
    let mut client = sigstore_client();
    let image = setup.reference(repo, digest);
    let signature_image = setup.reference(
        repo,
        &format!("sha256-{}.sig", digest.trim_start_matches("sha256:")),
    );
    let mut layer = SignatureLayer::new_unsigned(&image, digest).unwrap();
    let signer = PrivateKeySigner::new_with_raw(
        key.encrypted.clone(),
        Zeroizing::new(KEY_PASSWORD.to_vec()),
        &SigningScheme::ECDSA_P256_SHA256_ASN1,
    )
    .unwrap();
    assert!(signer.add_constraint(&mut layer).unwrap());
    client
        .push_signature(None, &admin_auth(), &signature_image, vec![layer])
        .await
        .unwrap();
}

/// `cosign verify --key` of `repo@digest`: the signature layers the gateway serves,
/// read with `auth`, checked by sigstore's `PublicKeyVerifier`.
async fn cosign_verify(
    setup: &Setup,
    public_pem: &str,
    repo: &str,
    digest: &str,
    auth: &Auth,
) -> bool {
    let mut client = sigstore_client();
    let signature_image = setup.reference(
        repo,
        &format!("sha256-{}.sig", digest.trim_start_matches("sha256:")),
    );
    let Ok(layers) = client
        .trusted_signature_layers(auth, digest, &signature_image)
        .await
    else {
        return false;
    };
    let verifier = PublicKeyVerifier::new(
        public_pem.as_bytes(),
        &SigningScheme::ECDSA_P256_SHA256_ASN1,
    )
    .unwrap();
    let constraints: VerificationConstraintVec = vec![Box::new(verifier)];
    verify_constraints(&layers, constraints.iter()).is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn cosign_signatures_decide_pulls_by_policy() {
    let setup = tokio::task::spawn_blocking(Setup::start).await.unwrap();
    let release = generate_key_pair(setup.dir.path(), "release");
    let other = generate_key_pair(setup.dir.path(), "other");
    let (v1, v2) = tokio::task::block_in_place(|| {
        (
            setup.push("prod/app", "v1", "cosign-v1"),
            setup.push("prod/app", "v2", "cosign-v2"),
        )
    });
    let (d1, d2) = (v1.digest(), v2.digest());

    tokio::task::block_in_place(|| {
        setup.trust("release", "release.pub");
        // Nothing signed yet: `prod/*` refuses both, by tag and by digest.
        let (status, message) = setup.pull("prod/app", "v1");
        assert_eq!(status, 403);
        assert_eq!(
            message,
            "requested access to the resource is denied: manifest `v1` of `prod/app` is not \
             signed (signature required by examples/prod-signed-by-release)"
        );
        assert_eq!(setup.pull("prod/app", &d1).0, 403);
        assert!(setup.tags("prod/app").is_empty());
    });

    cosign_sign(&setup, &release, "prod/app", &d1).await;
    cosign_sign(&setup, &other, "prod/app", &d2).await;

    // sigstore's verifier accepts what the gateway serves, read as the puller (the
    // signatures themselves are readable under the policy).
    let puller = Auth::Basic("puller".into(), setup.puller.clone());
    assert!(cosign_verify(&setup, &release.public_pem, "prod/app", &d1, &puller).await);
    assert!(cosign_verify(&setup, &other.public_pem, "prod/app", &d2, &puller).await);
    assert!(!cosign_verify(&setup, &release.public_pem, "prod/app", &d2, &puller).await);
    // sigstore's client resolves the signed tag through the gateway, as the puller; the
    // tag signed by an untrusted key is refused to it.
    let mut client = sigstore_client();
    let (_, digest) = client
        .triangulate(&setup.reference("prod/app", "v1"), &puller)
        .await
        .unwrap();
    assert_eq!(digest, d1);
    assert!(
        client
            .triangulate(&setup.reference("prod/app", "v2"), &puller)
            .await
            .is_err()
    );

    tokio::task::block_in_place(|| {
        // v1 is signed by `release`: served by tag and digest, listed.
        assert_eq!(setup.pull("prod/app", "v1").0, 200);
        assert_eq!(setup.pull("prod/app", &d1).0, 200);
        // v2 is signed by a key nobody trusts.
        assert_eq!(setup.pull("prod/app", "v2").0, 403);
        assert_eq!(setup.tags("prod/app"), ["v1"]);

        // Trusting the other key as `nightly` does not satisfy the policy…
        setup.trust("nightly", "other.pub");
        assert_eq!(setup.pull("prod/app", "v2").0, 403);
        // …and removing `release` takes v1's signature away at once.
        cli_json(
            &setup.server,
            &["signature-trust", "remove", "--name", "release", "--yes"],
        );
        assert_eq!(setup.pull("prod/app", "v1").0, 403);
        setup.trust("release", "release.pub");
        assert_eq!(setup.pull("prod/app", "v1").0, 200);

        // Deleting the signature artifact through the gateway is seen by the next pull.
        let tag = format!("sha256-{}.sig", d1.trim_start_matches("sha256:"));
        let sig = setup
            .http
            .head(setup.server.url(&format!("/v2/prod/app/manifests/{tag}")))
            .header("accept", common::content::OCI_MANIFEST)
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .unwrap();
        let sig_digest = sig.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        let deleted = setup
            .http
            .delete(
                setup
                    .server
                    .url(&format!("/v2/prod/app/manifests/{sig_digest}")),
            )
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .unwrap();
        assert_eq!(deleted.status().as_u16(), 202);
        assert_eq!(setup.pull("prod/app", "v1").0, 403);
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_only_repositories_serve_cosign_signed_images() {
    let setup = tokio::task::spawn_blocking(Setup::start).await.unwrap();
    let release = generate_key_pair(setup.dir.path(), "release");
    let (v1, _v2) = tokio::task::block_in_place(|| {
        let images = (
            setup.push("team/app", "v1", "signed-only-v1"),
            setup.push("team/app", "v2", "signed-only-v2"),
        );
        setup.trust("release", "release.pub");
        let out = cli(
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
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        images
    });
    let d1 = v1.digest();
    cosign_sign(&setup, &release, "team/app", &d1).await;
    tokio::task::block_in_place(|| {
        assert_eq!(setup.pull("team/app", "v1").0, 200);
        assert_eq!(setup.pull("team/app", &d1).0, 200);
        let (status, message) = setup.pull("team/app", "v2");
        assert_eq!(status, 403);
        assert_eq!(
            message,
            "requested access to the resource is denied: manifest `v2` of `team/app` is not \
             signed (signed-only repository)"
        );
        // The tag list shows the signed tag only (not the `.sig` artifact either).
        assert_eq!(setup.tags("team/app"), ["v1"]);

        // The tag's signed answer is cached now; moving the tag to the unsigned image is
        // seen by the very next pull, and moving it back serves it again.
        assert_eq!(setup.pull("team/app", "v1").0, 200);
        setup.push("team/app", "v1", "signed-only-v2");
        let (status, message) = setup.pull("team/app", "v1");
        assert_eq!(status, 403);
        assert_eq!(
            message,
            "requested access to the resource is denied: manifest `v1` of `team/app` is not \
             signed (signed-only repository)"
        );
        setup.push("team/app", "v1", "signed-only-v1");
        assert_eq!(setup.pull("team/app", "v1").0, 200);
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_explain_names_each_cosign_signature() {
    let setup = tokio::task::spawn_blocking(Setup::start).await.unwrap();
    let release = generate_key_pair(setup.dir.path(), "release");
    let other = generate_key_pair(setup.dir.path(), "other");
    let (v1, v2) = tokio::task::block_in_place(|| {
        setup.trust("release", "release.pub");
        (
            setup.push("prod/app", "v1", "explain-v1"),
            setup.push("prod/app", "v2", "explain-v2"),
        )
    });
    cosign_sign(&setup, &release, "prod/app", &v1.digest()).await;
    cosign_sign(&setup, &other, "prod/app", &v2.digest()).await;
    tokio::task::block_in_place(|| {
        let explain = |tag: &str| {
            common::explain_table(
                &setup.server,
                "puller",
                "prod/app",
                "content/read",
                &["--tag", tag],
            )
        };
        let text = explain("v1");
        assert!(text.starts_with("decision: allow\n"), "{text}");
        assert!(
            text.contains("  signature by 'release' (cosign) verified\n"),
            "{text}"
        );
        let text = explain("v2");
        assert!(text.starts_with("decision: deny\n"), "{text}");
        assert!(
            text.contains("  cosign signature rejected: no trusted key verifies the signature\n"),
            "{text}"
        );
        // Names given with `--signature` are taken as they are: nothing is looked up.
        let text = common::explain_table(
            &setup.server,
            "puller",
            "prod/app",
            "content/read",
            &["--tag", "v2", "--signature", "release"],
        );
        assert!(text.starts_with("decision: allow\n"), "{text}");
        assert!(!text.contains("signatures of"), "{text}");
    });
}
