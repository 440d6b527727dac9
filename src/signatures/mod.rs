//! OCI signatures stored beside an image, the successors of Docker Content Trust:
//! sigstore/cosign signatures ([`cosign`]) and Notary Project signatures ([`notary`]),
//! verified against the named verification identities of the control plane
//! (`portcullis signature-trust`). This module owns the identities' parsed form
//! ([`Verifiers`]) and the checks of one signature; finding a manifest's signatures in a
//! repository and caching the outcome is the gateway's (`gateway::signatures`).

pub mod cosign;
pub mod notary;

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey as _;

use crate::identity::{IdentitySnapshot, TrustMaterial};

/// Why an identity's key or certificates were refused when it was added.
#[derive(Debug, thiserror::Error)]
pub enum TrustMaterialError {
    #[error("public key is not an ECDSA P-256 public key in PEM: {0}")]
    CosignKey(String),
    #[error("CA certificate file holds no PEM certificate")]
    NoCertificate,
    #[error("CA certificate {index} does not parse: {reason}")]
    Certificate { index: usize, reason: String },
    #[error("identity `{0}` is empty or not a certificate subject (`CN=...,O=...`)")]
    Identity(String),
}

/// One verification identity, parsed.
#[derive(Debug, Clone)]
pub enum TrustedIdentity {
    Cosign(VerifyingKey),
    Notary(notary::NotaryTrust),
}

impl TrustedIdentity {
    /// Parses and checks what an operator gave for an identity.
    pub fn parse(material: &TrustMaterial) -> Result<TrustedIdentity, TrustMaterialError> {
        match material {
            TrustMaterial::Cosign { public_key } => VerifyingKey::from_public_key_pem(public_key)
                .map(TrustedIdentity::Cosign)
                .map_err(|e| TrustMaterialError::CosignKey(e.to_string())),
            TrustMaterial::Notary { ca_certs, identity } => {
                notary::NotaryTrust::parse(ca_certs, identity.as_deref())
                    .map(TrustedIdentity::Notary)
            }
        }
    }
}

/// The verification identities of one signature-trust version, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Verifiers {
    /// `IdentitySnapshot::signature_trust_version` they were built from.
    pub version: u64,
    /// By name, sorted.
    identities: Vec<(String, TrustedIdentity)>,
}

impl Verifiers {
    /// The identities of `snapshot`. Each parsed when it was added; one that no longer
    /// does (a stored record edited by hand) is left out and logged.
    pub fn from_snapshot(snapshot: &IdentitySnapshot) -> Verifiers {
        let identities = snapshot
            .signature_trust
            .values()
            .filter_map(|trust| match TrustedIdentity::parse(&trust.material) {
                Ok(parsed) => Some((trust.name.clone(), parsed)),
                Err(e) => {
                    tracing::error!(name = %trust.name, error = %e, "signature trust skipped");
                    None
                }
            })
            .collect();
        Verifiers {
            version: snapshot.signature_trust_version,
            identities,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// Every identity's name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.identities.iter().map(|(name, _)| name.as_str())
    }

    pub(crate) fn cosign_keys(&self) -> impl Iterator<Item = (&str, &VerifyingKey)> {
        self.identities.iter().filter_map(|(name, id)| match id {
            TrustedIdentity::Cosign(key) => Some((name.as_str(), key)),
            TrustedIdentity::Notary(_) => None,
        })
    }

    pub(crate) fn notary_trust(&self) -> impl Iterator<Item = (&str, &notary::NotaryTrust)> {
        self.identities.iter().filter_map(|(name, id)| match id {
            TrustedIdentity::Notary(trust) => Some((name.as_str(), trust)),
            TrustedIdentity::Cosign(_) => None,
        })
    }
}

/// The repository path of an image reference as signatures name it
/// (`registry.example:5000/team/app:v1@sha256:…` → `team/app`): digest, tag and a
/// leading registry host (a first component with `.` or `:`, or `localhost`) dropped.
pub fn reference_repository(reference: &str) -> &str {
    let name = reference.split('@').next().unwrap_or(reference);
    let name = match name.rfind(':') {
        Some(at) if !name[at..].contains('/') => &name[..at],
        _ => name,
    };
    match name.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_repository_drops_host_tag_and_digest() {
        let r = reference_repository;
        assert_eq!(r("127.0.0.1:5000/samples/app:v1"), "samples/app");
        assert_eq!(r("registry.example/team/app"), "team/app");
        assert_eq!(r("localhost/app@sha256:ab"), "app");
        assert_eq!(r("localhost:5000/a/b:t@sha256:ab"), "a/b");
        assert_eq!(r("team/app:v1"), "team/app");
        assert_eq!(r("app"), "app");
    }
}
