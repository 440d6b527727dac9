//! sigstore/cosign signatures: a manifest whose layers are "simple signing" payloads
//! (`application/vnd.dev.cosign.simplesigning.v1+json`), each with its ECDSA signature
//! in the `dev.cosignproject.cosign/signature` annotation (base64 of DER). cosign
//! stores it under the tag `sha256-<hex>.sig` of the signed digest, or as a referrer
//! of it (`artifactType` [`ARTIFACT_TYPE`]). A payload counts for a manifest when its
//! `critical.image.docker-manifest-digest` is the manifest's digest, its
//! `critical.identity.docker-reference` names the repository, and the signature over
//! the payload's exact bytes verifies with a trusted key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::Deserialize;

use super::{Verifiers, reference_repository};

pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `artifactType` of a cosign signature stored as a referrer.
pub const ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const CRITICAL_TYPE: &str = "cosign container image signature";

/// Why a cosign signature does not count for a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosignError {
    #[error("payload is not a simple-signing document: {0}")]
    Payload(String),
    #[error("payload type `{0}` is not `{CRITICAL_TYPE}`")]
    PayloadType(String),
    #[error("payload signs `{signed}`, not manifest `{manifest}`")]
    Digest { signed: String, manifest: String },
    #[error("payload names `{reference}`, not repository `{repository}`")]
    Reference {
        reference: String,
        repository: String,
    },
    #[error("signature annotation is not base64 of an ECDSA signature")]
    Encoding,
    #[error("no trusted key verifies the signature")]
    Untrusted,
}

/// The tag cosign stores the signatures of `digest` (`sha256:<hex>`) under.
pub fn signature_tag(digest: &str) -> Option<String> {
    let (algorithm, hex) = digest.split_once(':')?;
    Some(format!("{algorithm}-{hex}.sig"))
}

/// Whether `tag` is a cosign signature tag (`sha256-<64 hex>.sig`).
pub fn is_signature_tag(tag: &str) -> bool {
    tag.strip_prefix("sha256-")
        .and_then(|rest| rest.strip_suffix(".sig"))
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[derive(Deserialize)]
struct SimpleSigning {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    type_name: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The names of the trusted keys whose signature `signature` (the annotation's value)
/// over `payload` verifies, once the payload binds to `manifest_digest` in
/// `repository`.
pub fn verify(
    verifiers: &Verifiers,
    payload: &[u8],
    signature: &str,
    manifest_digest: &str,
    repository: &str,
) -> Result<Vec<String>, CosignError> {
    let doc: SimpleSigning =
        serde_json::from_slice(payload).map_err(|e| CosignError::Payload(e.to_string()))?;
    let critical = doc.critical;
    if critical.type_name != CRITICAL_TYPE {
        return Err(CosignError::PayloadType(critical.type_name));
    }
    if critical.image.docker_manifest_digest != manifest_digest {
        return Err(CosignError::Digest {
            signed: critical.image.docker_manifest_digest,
            manifest: manifest_digest.to_owned(),
        });
    }
    if reference_repository(&critical.identity.docker_reference) != repository {
        return Err(CosignError::Reference {
            reference: critical.identity.docker_reference,
            repository: repository.to_owned(),
        });
    }
    let raw = STANDARD
        .decode(signature.trim())
        .map_err(|_| CosignError::Encoding)?;
    let signature = Signature::from_der(&raw)
        .or_else(|_| Signature::from_slice(&raw))
        .map_err(|_| CosignError::Encoding)?;
    let names: Vec<String> = verifiers
        .cosign_keys()
        .filter(|(_, key)| verifies(key, payload, &signature))
        .map(|(name, _)| name.to_owned())
        .collect();
    if names.is_empty() {
        return Err(CosignError::Untrusted);
    }
    Ok(names)
}

fn verifies(key: &VerifyingKey, payload: &[u8], signature: &Signature) -> bool {
    key.verify(payload, signature).is_ok()
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;

    use super::*;
    use crate::identity::{IdentitySnapshot, SignatureTrust, TrustMaterial};

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn verifiers(keys: &[(&str, &SigningKey)]) -> Verifiers {
        let mut snap = IdentitySnapshot::default();
        for (name, key) in keys {
            let pem = key
                .verifying_key()
                .to_public_key_pem(Default::default())
                .unwrap();
            snap.signature_trust.insert(
                (*name).to_owned(),
                std::sync::Arc::new(SignatureTrust {
                    name: (*name).to_owned(),
                    material: TrustMaterial::Cosign { public_key: pem },
                    created_at: 0,
                }),
            );
        }
        Verifiers::from_snapshot(&snap)
    }

    fn payload(digest: &str, reference: &str) -> Vec<u8> {
        serde_json::json!({"critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": CRITICAL_TYPE}, "optional": null})
        .to_string()
        .into_bytes()
    }

    fn sign(key: &SigningKey, payload: &[u8]) -> String {
        let signature: Signature = key.sign(payload);
        STANDARD.encode(signature.to_der().as_bytes())
    }

    #[test]
    fn binding_reference_and_key_are_all_checked() {
        let release = SigningKey::random(&mut rand_core_rng());
        let other = SigningKey::random(&mut rand_core_rng());
        let v = verifiers(&[("release", &release)]);
        let good = payload(DIGEST, "localhost:5000/prod/app");
        assert_eq!(
            verify(&v, &good, &sign(&release, &good), DIGEST, "prod/app"),
            Ok(vec!["release".to_owned()])
        );
        assert_eq!(
            verify(&v, &good, &sign(&other, &good), DIGEST, "prod/app"),
            Err(CosignError::Untrusted)
        );
        // Copied to another repository: the payload names the first one.
        assert!(matches!(
            verify(&v, &good, &sign(&release, &good), DIGEST, "dev/app"),
            Err(CosignError::Reference { .. })
        ));
        let other_digest = DIGEST.replace('1', "2");
        assert!(matches!(
            verify(&v, &good, &sign(&release, &good), &other_digest, "prod/app"),
            Err(CosignError::Digest { .. })
        ));
        // One byte of the payload changed after signing.
        let mut tampered = good.clone();
        tampered.push(b' ');
        assert_eq!(
            verify(&v, &tampered, &sign(&release, &good), DIGEST, "prod/app"),
            Err(CosignError::Untrusted)
        );
        assert_eq!(
            verify(&v, &good, "not base64!", DIGEST, "prod/app"),
            Err(CosignError::Encoding)
        );
    }

    #[test]
    fn signature_tags() {
        let tag = signature_tag(DIGEST).unwrap();
        assert_eq!(tag, format!("sha256-{}.sig", "1".repeat(64)));
        assert!(is_signature_tag(&tag));
        assert!(!is_signature_tag("sha256-11.sig"));
        assert!(!is_signature_tag("v1"));
    }

    fn rand_core_rng() -> p256::elliptic_curve::rand_core::OsRng {
        p256::elliptic_curve::rand_core::OsRng
    }
}
