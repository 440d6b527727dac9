//! Notary Project signatures: a referrer of the signed manifest with `artifactType`
//! [`ARTIFACT_TYPE`] whose one layer is a signature envelope. The JWS envelope
//! (`application/jose+json`, JSON serialization) is verified here: the protected
//! header's algorithm, content type, signing scheme (`notary.x509`) and critical
//! headers (every one listed must be understood; the signing scheme and an expiry must
//! be listed); the signing time (not ahead of now) and expiry (not passed); the
//! certificate chain in `x5c` (leaf first) to one of an identity's CA certificates,
//! valid now and for code signing; the leaf's subject against the identity's, when it
//! names one; the signature over `protected.payload` with the leaf's key; and the
//! payload's `targetArtifact.digest` against the manifest. COSE envelopes are not
//! verified (they never count).

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{TrustMaterialError, Verifiers};

/// The `artifactType` of a Notary Project signature manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.cncf.notary.signature";
/// The media type of a JWS envelope layer.
pub const JWS_MEDIA_TYPE: &str = "application/jose+json";
/// The media type of a COSE envelope layer (not verified: never counts).
pub const COSE_MEDIA_TYPE: &str = "application/cose";
const PAYLOAD_CONTENT_TYPE: &str = "application/vnd.cncf.notary.payload.v1+json";
const SIGNING_SCHEME: &str = "io.cncf.notary.signingScheme";
const SIGNING_TIME: &str = "io.cncf.notary.signingTime";
const EXPIRY: &str = "io.cncf.notary.expiry";
/// Critical headers this verifier understands.
const UNDERSTOOD_CRITICAL: [&str; 2] = [SIGNING_SCHEME, EXPIRY];
/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER content octets.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// What a Notary Project identity trusts: CA certificates and, optionally, the
/// `K=V` attributes the signing certificate's subject must carry.
#[derive(Debug, Clone)]
pub struct NotaryTrust {
    roots: Vec<CertificateDer<'static>>,
    subject: Option<Vec<(String, String)>>,
}

/// Why a Notary Project signature does not count for a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotaryError {
    #[error("envelope is not a JWS in JSON serialization: {0}")]
    Envelope(String),
    #[error("algorithm `{0}` is not supported (PS256, PS384, PS512, ES256, ES384)")]
    Algorithm(String),
    #[error("content type `{0}` is not `{PAYLOAD_CONTENT_TYPE}`")]
    ContentType(String),
    #[error("signing scheme `{0}` is not supported (notary.x509)")]
    SigningScheme(String),
    #[error("critical header `{0}` is not understood")]
    UnknownCritical(String),
    #[error("header `{0}` must be listed as critical")]
    NotCritical(&'static str),
    #[error("signing time is missing or not RFC 3339")]
    SigningTime,
    #[error("signing time `{0}` is in the future")]
    SignedInFuture(String),
    #[error("signature expired at `{0}`")]
    Expired(String),
    #[error("certificate chain: {0}")]
    Chain(String),
    #[error("signing certificate subject does not match identity")]
    Subject,
    #[error("signature does not verify with the signing certificate")]
    Signature,
    #[error("payload signs `{signed}`, not manifest `{manifest}`")]
    Digest { signed: String, manifest: String },
}

impl NotaryTrust {
    /// `ca_certs` (one or more PEM certificates) and an optional subject
    /// (`CN=…, O=…`).
    pub fn parse(
        ca_certs: &str,
        identity: Option<&str>,
    ) -> Result<NotaryTrust, TrustMaterialError> {
        let mut roots = Vec::new();
        for (index, pem) in x509_parser::pem::Pem::iter_from_buffer(ca_certs.as_bytes()).enumerate()
        {
            let pem = pem.map_err(|e| TrustMaterialError::Certificate {
                index,
                reason: e.to_string(),
            })?;
            let der = CertificateDer::from(pem.contents);
            anchor_from_trusted_cert(&der).map_err(|e| TrustMaterialError::Certificate {
                index,
                reason: format!("{e:?}"),
            })?;
            roots.push(der);
        }
        if roots.is_empty() {
            return Err(TrustMaterialError::NoCertificate);
        }
        let subject = match identity {
            None => None,
            Some(dn) => Some(
                parse_dn(dn)
                    .filter(|parts| !parts.is_empty())
                    .ok_or_else(|| TrustMaterialError::Identity(dn.to_owned()))?,
            ),
        };
        Ok(NotaryTrust { roots, subject })
    }
}

/// `CN=a, O=b` → `[("CN","a"),("O","b")]`; `None` when a part has no `=`.
fn parse_dn(dn: &str) -> Option<Vec<(String, String)>> {
    dn.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=')?;
            Some((k.trim().to_ascii_uppercase(), v.trim().to_owned()))
        })
        .collect()
}

#[derive(Deserialize)]
struct Envelope {
    payload: String,
    protected: String,
    #[serde(default)]
    header: UnprotectedHeader,
    signature: String,
}

#[derive(Deserialize, Default)]
struct UnprotectedHeader {
    #[serde(default)]
    x5c: Vec<String>,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "targetArtifact")]
    target_artifact: TargetArtifact,
}

#[derive(Deserialize)]
struct TargetArtifact {
    digest: String,
}

/// The names of the Notary Project identities that a JWS `envelope` verifies with,
/// once it binds to `manifest_digest`; `now` is the verification time.
pub fn verify_jws(
    verifiers: &Verifiers,
    envelope: &[u8],
    manifest_digest: &str,
    now: OffsetDateTime,
) -> Result<Vec<String>, NotaryError> {
    let envelope: Envelope =
        serde_json::from_slice(envelope).map_err(|e| NotaryError::Envelope(e.to_string()))?;
    let protected_bytes = URL_SAFE_NO_PAD
        .decode(envelope.protected.as_bytes())
        .map_err(|e| NotaryError::Envelope(format!("protected header: {e}")))?;
    let protected: HashMap<String, serde_json::Value> = serde_json::from_slice(&protected_bytes)
        .map_err(|e| NotaryError::Envelope(format!("protected header: {e}")))?;
    let text = |name: &str| protected.get(name).and_then(|v| v.as_str());
    let alg = text("alg").unwrap_or_default();
    let algorithm = algorithm(alg).ok_or_else(|| NotaryError::Algorithm(alg.to_owned()))?;
    let cty = text("cty").unwrap_or_default();
    if cty != PAYLOAD_CONTENT_TYPE {
        return Err(NotaryError::ContentType(cty.to_owned()));
    }
    let scheme = text(SIGNING_SCHEME).unwrap_or_default();
    if scheme != "notary.x509" {
        return Err(NotaryError::SigningScheme(scheme.to_owned()));
    }
    let critical: Vec<&str> = match protected.get("crit") {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    };
    if let Some(unknown) = critical.iter().find(|c| !UNDERSTOOD_CRITICAL.contains(c)) {
        return Err(NotaryError::UnknownCritical((*unknown).to_owned()));
    }
    if !critical.contains(&SIGNING_SCHEME) {
        return Err(NotaryError::NotCritical(SIGNING_SCHEME));
    }
    let signing_time = text(SIGNING_TIME)
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .ok_or(NotaryError::SigningTime)?;
    if signing_time > now {
        return Err(NotaryError::SignedInFuture(
            text(SIGNING_TIME).unwrap_or_default().to_owned(),
        ));
    }
    if let Some(expiry) = text(EXPIRY) {
        if !critical.contains(&EXPIRY) {
            return Err(NotaryError::NotCritical(EXPIRY));
        }
        let at = OffsetDateTime::parse(expiry, &Rfc3339)
            .map_err(|_| NotaryError::Envelope(format!("expiry `{expiry}` is not RFC 3339")))?;
        if at <= now {
            return Err(NotaryError::Expired(expiry.to_owned()));
        }
    }

    let certs: Vec<CertificateDer<'static>> = envelope
        .header
        .x5c
        .iter()
        .map(|c| STANDARD.decode(c).map(CertificateDer::from))
        .collect::<Result<_, _>>()
        .map_err(|e| NotaryError::Chain(format!("x5c is not base64: {e}")))?;
    let (leaf, intermediates) = certs
        .split_first()
        .ok_or_else(|| NotaryError::Chain("x5c is empty".into()))?;
    let leaf_cert =
        EndEntityCert::try_from(leaf).map_err(|e| NotaryError::Chain(format!("{e:?}")))?;
    let signing_input = format!("{}.{}", envelope.protected, envelope.payload);
    let raw_signature = URL_SAFE_NO_PAD
        .decode(envelope.signature.as_bytes())
        .map_err(|e| NotaryError::Envelope(format!("signature: {e}")))?;
    let signature = match alg {
        "ES256" | "ES384" => ecdsa_raw_to_der(&raw_signature).ok_or(NotaryError::Signature)?,
        _ => raw_signature,
    };
    leaf_cert
        .verify_signature(algorithm, signing_input.as_bytes(), &signature)
        .map_err(|_| NotaryError::Signature)?;

    let payload = URL_SAFE_NO_PAD
        .decode(envelope.payload.as_bytes())
        .map_err(|e| NotaryError::Envelope(format!("payload: {e}")))?;
    let payload: Payload = serde_json::from_slice(&payload)
        .map_err(|e| NotaryError::Envelope(format!("payload: {e}")))?;
    if payload.target_artifact.digest != manifest_digest {
        return Err(NotaryError::Digest {
            signed: payload.target_artifact.digest,
            manifest: manifest_digest.to_owned(),
        });
    }

    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now.unix_timestamp()).unwrap_or(0),
    ));
    let subject = leaf_subject(leaf);
    let mut names = Vec::new();
    let mut last_error = NotaryError::Chain("no Notary Project identity is trusted".into());
    for (name, trust) in verifiers.notary_trust() {
        let anchors: Vec<_> = trust
            .roots
            .iter()
            .filter_map(|root| anchor_from_trusted_cert(root).ok())
            .collect();
        let chained = leaf_cert.verify_for_usage(
            CHAIN_ALGORITHMS,
            &anchors,
            intermediates,
            time,
            KeyUsage::required(CODE_SIGNING),
            None,
            None,
        );
        match (chained, &trust.subject) {
            (Err(e), _) => last_error = NotaryError::Chain(format!("{e:?}")),
            (Ok(_), Some(wanted))
                if !wanted
                    .iter()
                    .all(|part| subject.as_ref().is_some_and(|s| s.contains(part))) =>
            {
                last_error = NotaryError::Subject;
            }
            (Ok(_), _) => names.push(name.to_owned()),
        }
    }
    if names.is_empty() {
        return Err(last_error);
    }
    Ok(names)
}

/// Certificate signature algorithms accepted in chains.
const CHAIN_ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// The verification algorithm of a JWS `alg` the Notary Project allows.
fn algorithm(alg: &str) -> Option<&'static dyn SignatureVerificationAlgorithm> {
    Some(match alg {
        "PS256" => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        "PS384" => webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        "PS512" => webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
        "ES256" => webpki::ring::ECDSA_P256_SHA256,
        "ES384" => webpki::ring::ECDSA_P384_SHA384,
        _ => return None,
    })
}

/// The leaf's subject as `K=V` pairs (attribute short names upper-cased).
fn leaf_subject(leaf: &CertificateDer<'_>) -> Option<Vec<(String, String)>> {
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    parse_dn(&cert.subject().to_string())
}

/// A JWS ECDSA signature (`r || s`, fixed width) as the DER `SEQUENCE { r, s }` ring
/// verifies.
fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) || raw.len() > 132 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let integer = |bytes: &[u8]| {
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        let mut out = vec![0x02];
        let pad = trimmed.first().is_none_or(|b| b & 0x80 != 0);
        let len = trimmed.len() + usize::from(pad);
        out.push(u8::try_from(len).unwrap_or(0));
        if pad {
            out.push(0);
        }
        out.extend(trimmed);
        out
    };
    let body = [integer(r), integer(s)].concat();
    let mut der = vec![0x30];
    if body.len() >= 0x80 {
        der.push(0x81);
    }
    der.push(u8::try_from(body.len()).ok()?);
    der.extend(body);
    Some(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguished_names_parse() {
        assert_eq!(
            parse_dn("CN=release, o = Example"),
            Some(vec![
                ("CN".into(), "release".into()),
                ("O".into(), "Example".into())
            ])
        );
        assert_eq!(parse_dn("release"), None);
    }

    #[test]
    fn raw_ecdsa_signatures_become_der() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80;
        raw[63] = 1;
        let der = ecdsa_raw_to_der(&raw).unwrap();
        // r gets a 0x00 pad (high bit), s shrinks to one byte.
        assert_eq!(&der[..4], &[0x30, 38, 0x02, 33]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 1]);
        assert_eq!(ecdsa_raw_to_der(&[1, 2, 3]), None);
    }
}

/// The Notary Project's own envelope (made by Notation; see
/// `tests/fixtures/notation/README.md`), verified against its certificate.
#[cfg(test)]
mod fixture {
    use super::*;
    use crate::identity::{IdentitySnapshot, SignatureTrust, TrustMaterial};

    const ENVELOPE: &[u8] = include_bytes!("../../tests/fixtures/notation/jws_signature.sig");
    const CA: &str = include_str!("../../tests/fixtures/notation/alpine-ca.pem");
    const SIGNED: &str = "sha256:19dbd2e48e921426ee8ace4dc892edfb2ecdc1d1a72d5416c83670c30acecef0";

    fn verifiers(identity: Option<&str>) -> Verifiers {
        let mut snap = IdentitySnapshot::default();
        snap.signature_trust.insert(
            "notation".into(),
            std::sync::Arc::new(SignatureTrust {
                name: "notation".into(),
                material: TrustMaterial::Notary {
                    ca_certs: CA.into(),
                    identity: identity.map(str::to_owned),
                },
                created_at: 0,
            }),
        );
        Verifiers::from_snapshot(&snap)
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn the_notation_envelope_verifies_against_its_certificate() {
        assert_eq!(
            verify_jws(&verifiers(None), ENVELOPE, SIGNED, now()),
            Ok(vec!["notation".to_owned()])
        );
        assert_eq!(
            verify_jws(
                &verifiers(Some("C=US, ST=WA, O=Notary, CN=alpine")),
                ENVELOPE,
                SIGNED,
                now()
            ),
            Ok(vec!["notation".to_owned()])
        );
    }

    #[test]
    fn the_notation_envelope_is_refused_where_it_must_be() {
        let other = SIGNED.replace("19db", "29db");
        assert!(matches!(
            verify_jws(&verifiers(None), ENVELOPE, &other, now()),
            Err(NotaryError::Digest { .. })
        ));
        assert_eq!(
            verify_jws(&verifiers(Some("CN=release")), ENVELOPE, SIGNED, now()),
            Err(NotaryError::Subject)
        );
        // Signed 2023-03-14: verifying as of 2020 puts the signing time in the future.
        let before = OffsetDateTime::from_unix_timestamp(1_600_000_000).unwrap();
        assert!(matches!(
            verify_jws(&verifiers(None), ENVELOPE, SIGNED, before),
            Err(NotaryError::SignedInFuture(_))
        ));
        // One bit of the signature flipped.
        let mut envelope: serde_json::Value = serde_json::from_slice(ENVELOPE).unwrap();
        let signature = envelope["signature"]
            .as_str()
            .unwrap()
            .replacen('e', "f", 1);
        envelope["signature"] = signature.into();
        assert_eq!(
            verify_jws(
                &verifiers(None),
                envelope.to_string().as_bytes(),
                SIGNED,
                now()
            ),
            Err(NotaryError::Signature)
        );
        // Trusting nothing Notary: the chain has no anchor.
        assert!(matches!(
            verify_jws(&Verifiers::default(), ENVELOPE, SIGNED, now()),
            Err(NotaryError::Chain(_))
        ));
    }
}
