//! Notary Project signatures: a referrer of the signed manifest with `artifactType`
//! [`ARTIFACT_TYPE`] whose one layer is a signature envelope, JWS
//! (`application/jose+json`, JSON serialization; [`jws`]) or COSE
//! (`application/cose`, `COSE_Sign1_Tagged`; [`cose`]). Each format is read into one
//! [`Envelope`], checked here the same way: the algorithm (one of the six the
//! specification allows, and the one the signing key's type and size call for); the
//! content type, the signing scheme (`notary.x509`) and the critical headers (every
//! one listed must be understood; the signing scheme and an expiry must be listed);
//! the signing time (not ahead of now, inside the signing certificate's validity) and
//! expiry (not passed); the signature over the exact signed bytes with the leaf's key;
//! the payload's `targetArtifact.digest` against the manifest; the certificate chain
//! (leaf first) to one of an identity's CA certificates, valid now and for code
//! signing; the leaf's subject against the identity's, when it names one.

mod cose;
mod jws;

use std::fmt;

use rustls_pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, SignatureVerificationAlgorithm,
    UnixTime, alg_id,
};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384, OID_NIST_EC_P521};
use x509_parser::prelude::{FromDer as _, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::{TrustMaterialError, Verifiers};

/// The `artifactType` of a Notary Project signature manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.cncf.notary.signature";
/// The media type of a JWS envelope layer.
pub const JWS_MEDIA_TYPE: &str = "application/jose+json";
/// The media type of a COSE envelope layer.
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
    #[error("envelope is not a COSE_Sign1 message: {0}")]
    Cose(String),
    #[error("envelope media type `{0}` is not a Notary Project envelope")]
    MediaType(String),
    #[error("algorithm `{0}` is not allowed (PS256, PS384, PS512, ES256, ES384, ES512)")]
    Algorithm(String),
    #[error(
        "signing key ({0}) is not one the Notary Project allows (RSA 2048, 3072, 4096 bits; EC P-256, P-384, P-521)"
    )]
    Key(String),
    #[error("algorithm `{header}` does not match the signing key, which calls for `{key}`")]
    AlgorithmMismatch { header: Algorithm, key: Algorithm },
    #[error("content type `{0}` is not `{PAYLOAD_CONTENT_TYPE}`")]
    ContentType(String),
    #[error("signing scheme `{0}` is not supported (notary.x509)")]
    SigningScheme(String),
    #[error("critical header `{0}` is not understood")]
    UnknownCritical(String),
    #[error("header `{0}` must be listed as critical")]
    NotCritical(&'static str),
    #[error("signing time is missing or not a date/time (JWS: RFC 3339; COSE: tag 1)")]
    SigningTime,
    #[error("signing time `{0}` is in the future")]
    SignedInFuture(String),
    #[error("signing time `{0}` is outside the signing certificate's validity")]
    SignedOutsideValidity(String),
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

/// A signature algorithm the Notary Project allows, by its JWS name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    Es512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::Es512 => "ES512",
        }
    }

    fn from_jws(name: &str) -> Option<Algorithm> {
        [
            Algorithm::Ps256,
            Algorithm::Ps384,
            Algorithm::Ps512,
            Algorithm::Es256,
            Algorithm::Es384,
            Algorithm::Es512,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }

    /// By its COSE `alg` label (IANA COSE Algorithms).
    fn from_cose(label: i128) -> Option<Algorithm> {
        Some(match label {
            -37 => Algorithm::Ps256,
            -38 => Algorithm::Ps384,
            -39 => Algorithm::Ps512,
            -7 => Algorithm::Es256,
            -35 => Algorithm::Es384,
            -36 => Algorithm::Es512,
            _ => return None,
        })
    }

    /// The algorithm the specification assigns to `leaf`'s public key (its type and
    /// size): the header must name this one, against algorithm substitution.
    fn of_key(leaf: &X509Certificate<'_>) -> Result<Algorithm, NotaryError> {
        let spki = leaf.public_key();
        match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => match modulus_bits(rsa.modulus) {
                2048 => Ok(Algorithm::Ps256),
                3072 => Ok(Algorithm::Ps384),
                4096 => Ok(Algorithm::Ps512),
                bits => Err(NotaryError::Key(format!("RSA {bits} bits"))),
            },
            Ok(PublicKey::EC(_)) => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok());
                match curve {
                    Some(oid) if oid == OID_EC_P256 => Ok(Algorithm::Es256),
                    Some(oid) if oid == OID_NIST_EC_P384 => Ok(Algorithm::Es384),
                    Some(oid) if oid == OID_NIST_EC_P521 => Ok(Algorithm::Es512),
                    Some(oid) => Err(NotaryError::Key(format!("EC curve {oid}"))),
                    None => Err(NotaryError::Key("EC without a named curve".into())),
                }
            }
            _ => Err(NotaryError::Key(format!(
                "algorithm {}",
                spki.algorithm.algorithm
            ))),
        }
    }

    fn verifier(self) -> &'static dyn SignatureVerificationAlgorithm {
        match self {
            Algorithm::Ps256 => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            Algorithm::Ps384 => webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
            Algorithm::Ps512 => webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
            Algorithm::Es256 => webpki::ring::ECDSA_P256_SHA256,
            Algorithm::Es384 => webpki::ring::ECDSA_P384_SHA384,
            Algorithm::Es512 => ECDSA_P521_SHA512,
        }
    }

    fn is_ecdsa(self) -> bool {
        matches!(self, Algorithm::Es256 | Algorithm::Es384 | Algorithm::Es512)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The bit length of an RSA modulus (big-endian, maybe with leading zero bytes).
fn modulus_bits(modulus: &[u8]) -> usize {
    let trimmed: &[u8] = match modulus.iter().position(|b| *b != 0) {
        Some(first) => &modulus[first..],
        None => &[],
    };
    trimmed.first().map_or(0, |top| {
        trimmed.len() * 8 - usize::try_from(top.leading_zeros()).unwrap_or(0)
    })
}

/// What either envelope format says, read but not yet checked.
struct Envelope {
    algorithm: Algorithm,
    content_type: Option<String>,
    signing_scheme: Option<String>,
    /// The critical headers, by name.
    critical: Vec<String>,
    /// `None` when missing or not a time.
    signing_time: Option<OffsetDateTime>,
    expiry: Option<OffsetDateTime>,
    /// Leaf first.
    chain: Vec<CertificateDer<'static>>,
    /// The exact bytes the signature is over.
    signed: Vec<u8>,
    /// As the envelope carries it (`r || s` for ECDSA).
    signature: Vec<u8>,
    payload: Vec<u8>,
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

/// The names of the Notary Project identities that an envelope layer of `media_type`
/// verifies with, once it binds to `manifest_digest`; `now` is the verification time.
pub fn verify(
    verifiers: &Verifiers,
    media_type: &str,
    envelope: &[u8],
    manifest_digest: &str,
    now: OffsetDateTime,
) -> Result<Vec<String>, NotaryError> {
    let envelope = match media_type {
        JWS_MEDIA_TYPE => jws::read(envelope)?,
        COSE_MEDIA_TYPE => cose::read(envelope)?,
        other => return Err(NotaryError::MediaType(other.to_owned())),
    };
    check(verifiers, envelope, manifest_digest, now)
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

fn check(
    verifiers: &Verifiers,
    envelope: Envelope,
    manifest_digest: &str,
    now: OffsetDateTime,
) -> Result<Vec<String>, NotaryError> {
    let content_type = envelope.content_type.unwrap_or_default();
    if content_type != PAYLOAD_CONTENT_TYPE {
        return Err(NotaryError::ContentType(content_type));
    }
    let scheme = envelope.signing_scheme.unwrap_or_default();
    if scheme != "notary.x509" {
        return Err(NotaryError::SigningScheme(scheme));
    }
    let critical = &envelope.critical;
    if let Some(unknown) = critical
        .iter()
        .find(|c| !UNDERSTOOD_CRITICAL.contains(&c.as_str()))
    {
        return Err(NotaryError::UnknownCritical(unknown.clone()));
    }
    let listed = |name: &str| critical.iter().any(|c| c == name);
    if !listed(SIGNING_SCHEME) {
        return Err(NotaryError::NotCritical(SIGNING_SCHEME));
    }
    let signing_time = envelope.signing_time.ok_or(NotaryError::SigningTime)?;
    if signing_time > now {
        return Err(NotaryError::SignedInFuture(rfc3339(signing_time)));
    }
    if let Some(expiry) = envelope.expiry {
        if !listed(EXPIRY) {
            return Err(NotaryError::NotCritical(EXPIRY));
        }
        if expiry <= now {
            return Err(NotaryError::Expired(rfc3339(expiry)));
        }
    }

    let (leaf, intermediates) = envelope
        .chain
        .split_first()
        .ok_or_else(|| NotaryError::Chain("the envelope carries no certificate".into()))?;
    let (_, parsed) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| NotaryError::Chain(format!("signing certificate: {e}")))?;
    let key_algorithm = Algorithm::of_key(&parsed)?;
    if key_algorithm != envelope.algorithm {
        return Err(NotaryError::AlgorithmMismatch {
            header: envelope.algorithm,
            key: key_algorithm,
        });
    }
    let leaf_cert =
        EndEntityCert::try_from(leaf).map_err(|e| NotaryError::Chain(chain_reason(&e)))?;
    let signature = if envelope.algorithm.is_ecdsa() {
        ecdsa_raw_to_der(&envelope.signature).ok_or(NotaryError::Signature)?
    } else {
        envelope.signature
    };
    leaf_cert
        .verify_signature(envelope.algorithm.verifier(), &envelope.signed, &signature)
        .map_err(|_| NotaryError::Signature)?;

    let payload: Payload = serde_json::from_slice(&envelope.payload)
        .map_err(|e| NotaryError::Envelope(format!("payload: {e}")))?;
    if payload.target_artifact.digest != manifest_digest {
        return Err(NotaryError::Digest {
            signed: payload.target_artifact.digest,
            manifest: manifest_digest.to_owned(),
        });
    }
    let validity = parsed.validity();
    let signed_at = signing_time.unix_timestamp();
    if signed_at < validity.not_before.timestamp() || signed_at > validity.not_after.timestamp() {
        return Err(NotaryError::SignedOutsideValidity(rfc3339(signing_time)));
    }

    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now.unix_timestamp()).unwrap_or(0),
    ));
    let subject = parse_dn(&parsed.subject().to_string());
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
            (Err(e), _) => last_error = NotaryError::Chain(chain_reason(&e)),
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

/// Why a chain was refused, in words an operator reads in `policy explain`.
fn chain_reason(e: &webpki::Error) -> String {
    match e {
        webpki::Error::CertExpired { .. } => "certificate expired".into(),
        webpki::Error::CertNotValidYet { .. } => "certificate is not valid yet".into(),
        webpki::Error::UnknownIssuer => {
            "certificate does not chain to the identity's CA certificates".into()
        }
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "certificate is not for code signing".into()
        }
        other => format!("{other:?}"),
    }
}

/// Certificate signature algorithms accepted in chains.
const CHAIN_ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    ECDSA_P521_SHA512,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// ECDSA on P-521 with SHA-512 (ES512), which ring lacks: RustCrypto's `p521`.
const ECDSA_P521_SHA512: &dyn SignatureVerificationAlgorithm = &EcdsaP521Sha512;

#[derive(Debug)]
struct EcdsaP521Sha512;

impl SignatureVerificationAlgorithm for EcdsaP521Sha512 {
    /// `public_key` is the SEC1 point, `signature` DER, as webpki hands them over.
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        use p521::ecdsa::signature::Verifier as _;
        let key =
            p521::ecdsa::VerifyingKey::from_sec1_bytes(public_key).map_err(|_| InvalidSignature)?;
        let signature =
            p521::ecdsa::Signature::from_der(signature).map_err(|_| InvalidSignature)?;
        key.verify(message, &signature)
            .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P521
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_SHA512
    }
}

/// An ECDSA signature as envelopes carry it (`r || s`, fixed width) as the DER
/// `SEQUENCE { r, s }` the verifiers take.
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

/// The Notary Project's own envelopes (made by Notation; see
/// `tests/fixtures/notation/README.md`), verified against their certificates.
#[cfg(test)]
mod fixture {
    use super::*;
    use crate::identity::{IdentitySnapshot, SignatureTrust, TrustMaterial};

    const ENVELOPE: &[u8] = include_bytes!("../../tests/fixtures/notation/jws_signature.sig");
    const CA: &str = include_str!("../../tests/fixtures/notation/alpine-ca.pem");
    const SIGNED: &str = "sha256:19dbd2e48e921426ee8ace4dc892edfb2ecdc1d1a72d5416c83670c30acecef0";

    fn verifiers(identity: Option<&str>) -> Verifiers {
        trusting(CA, identity)
    }

    /// One identity, `notation`, trusting `ca`.
    pub(super) fn trusting(ca: &str, identity: Option<&str>) -> Verifiers {
        let mut snap = IdentitySnapshot::default();
        snap.signature_trust.insert(
            "notation".into(),
            std::sync::Arc::new(SignatureTrust {
                name: "notation".into(),
                material: TrustMaterial::Notary {
                    ca_certs: ca.into(),
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
            verify(&verifiers(None), JWS_MEDIA_TYPE, ENVELOPE, SIGNED, now()),
            Ok(vec!["notation".to_owned()])
        );
        assert_eq!(
            verify(
                &verifiers(Some("C=US, ST=WA, O=Notary, CN=alpine")),
                JWS_MEDIA_TYPE,
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
            verify(&verifiers(None), JWS_MEDIA_TYPE, ENVELOPE, &other, now()),
            Err(NotaryError::Digest { .. })
        ));
        assert_eq!(
            verify(
                &verifiers(Some("CN=release")),
                JWS_MEDIA_TYPE,
                ENVELOPE,
                SIGNED,
                now()
            ),
            Err(NotaryError::Subject)
        );
        // Signed 2023-03-14: verifying as of 2020 puts the signing time in the future.
        let before = OffsetDateTime::from_unix_timestamp(1_600_000_000).unwrap();
        assert!(matches!(
            verify(&verifiers(None), JWS_MEDIA_TYPE, ENVELOPE, SIGNED, before),
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
            verify(
                &verifiers(None),
                JWS_MEDIA_TYPE,
                envelope.to_string().as_bytes(),
                SIGNED,
                now()
            ),
            Err(NotaryError::Signature)
        );
        // Trusting nothing Notary: the chain has no anchor.
        assert!(matches!(
            verify(
                &Verifiers::default(),
                JWS_MEDIA_TYPE,
                ENVELOPE,
                SIGNED,
                now()
            ),
            Err(NotaryError::Chain(_))
        ));
    }

    const COSE: &[u8] = include_bytes!("../../tests/fixtures/notation/cose_signature.sig");
    const COSE_TIMESTAMPED: &[u8] =
        include_bytes!("../../tests/fixtures/notation/coseWithTimestamp.sig");
    const COSE_EXPIRED: &[u8] =
        include_bytes!("../../tests/fixtures/notation/coseExpiredWithTimestamp.sig");
    const CA_2023: &str = include_str!("../../tests/fixtures/notation/alpine-2023-ca.pem");
    const CA_EXPIRED: &str = include_str!("../../tests/fixtures/notation/testtsa-expired.pem");
    const SIGNED_DOCKER: &str =
        "sha256:c0669ef34cdc14332c0f1ab0c2c01acb91d96014b172f1a76f3a39e63d1f0bda";

    #[test]
    fn the_notation_cose_envelopes_verify_against_their_certificates() {
        let notation = Ok(vec!["notation".to_owned()]);
        assert_eq!(
            verify(&verifiers(None), COSE_MEDIA_TYPE, COSE, SIGNED, now()),
            notation
        );
        assert_eq!(
            verify(
                &trusting(CA_2023, Some("CN=alpine, O=Notary")),
                COSE_MEDIA_TYPE,
                COSE_TIMESTAMPED,
                SIGNED_DOCKER,
                now()
            ),
            notation
        );
    }

    #[test]
    fn the_notation_cose_envelopes_are_refused_where_they_must_be() {
        // Another manifest; another certificate; read as JWS.
        assert!(matches!(
            verify(
                &verifiers(None),
                COSE_MEDIA_TYPE,
                COSE,
                SIGNED_DOCKER,
                now()
            ),
            Err(NotaryError::Digest { .. })
        ));
        assert!(matches!(
            verify(
                &trusting(CA_2023, None),
                COSE_MEDIA_TYPE,
                COSE,
                SIGNED,
                now()
            ),
            Err(NotaryError::Chain(_))
        ));
        assert!(matches!(
            verify(&verifiers(None), JWS_MEDIA_TYPE, COSE, SIGNED, now()),
            Err(NotaryError::Envelope(_))
        ));
        // The ten-minute certificate of 2024 has long expired.
        assert_eq!(
            verify(
                &trusting(CA_EXPIRED, None),
                COSE_MEDIA_TYPE,
                COSE_EXPIRED,
                SIGNED_DOCKER,
                now()
            ),
            Err(NotaryError::Chain("certificate expired".into()))
        );
        // The last byte of the signature flipped.
        let mut tampered = COSE.to_vec();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert_eq!(
            verify(&verifiers(None), COSE_MEDIA_TYPE, &tampered, SIGNED, now()),
            Err(NotaryError::Signature)
        );
        // Cut short; not CBOR at all.
        for bytes in [&COSE[..COSE.len() / 2], b"{}".as_slice()] {
            assert!(matches!(
                verify(&verifiers(None), COSE_MEDIA_TYPE, bytes, SIGNED, now()),
                Err(NotaryError::Cose(_))
            ));
        }
    }
}

/// Every algorithm the specification requires, in COSE envelopes made by `coset` (and
/// JWS by `jsonwebtoken`) with RustCrypto signers: certificates and keys from
/// `tests/fixtures/notary-algorithms` (made with openssl; see its README).
#[cfg(test)]
mod algorithms {
    use coset::cbor::Value;
    use coset::{
        CoseSign1Builder, HeaderBuilder, RegisteredLabel, TaggedCborSerializable as _, iana,
    };
    use p256::elliptic_curve::rand_core::OsRng;
    use p256::pkcs8::DecodePrivateKey as _;
    use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _};

    use super::fixture::trusting;
    use super::*;

    const CA: &str = include_str!("../../tests/fixtures/notary-algorithms/ca.pem");
    const DIGEST: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/notary-algorithms/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .contents
    }

    /// `message` signed with the fixture key `key` as `alg` wants it (raw `r || s`
    /// for ECDSA, PSS with the digest's length of salt for RSA).
    fn sign(key: &str, alg: Algorithm, message: &[u8]) -> Vec<u8> {
        let pem = fixture(&format!("{key}.key"));
        match alg {
            Algorithm::Ps256 | Algorithm::Ps384 | Algorithm::Ps512 => {
                let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
                match alg {
                    Algorithm::Ps256 => rsa::pss::SigningKey::<sha2::Sha256>::new(key)
                        .sign_with_rng(&mut OsRng, message)
                        .to_vec(),
                    Algorithm::Ps384 => rsa::pss::SigningKey::<sha2::Sha384>::new(key)
                        .sign_with_rng(&mut OsRng, message)
                        .to_vec(),
                    _ => rsa::pss::SigningKey::<sha2::Sha512>::new(key)
                        .sign_with_rng(&mut OsRng, message)
                        .to_vec(),
                }
            }
            Algorithm::Es256 => {
                let s: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from_pkcs8_pem(&pem)
                    .unwrap()
                    .sign(message);
                s.to_bytes().to_vec()
            }
            Algorithm::Es384 => {
                let s: p384::ecdsa::Signature = p384::ecdsa::SigningKey::from_pkcs8_pem(&pem)
                    .unwrap()
                    .sign(message);
                s.to_bytes().to_vec()
            }
            Algorithm::Es512 => {
                let secret = p521::SecretKey::from_pkcs8_pem(&pem).unwrap();
                let s: p521::ecdsa::Signature =
                    p521::ecdsa::SigningKey::from_bytes(&secret.to_bytes())
                        .unwrap()
                        .sign(message);
                s.to_bytes().to_vec()
            }
        }
    }

    fn epoch(offset: i64) -> Value {
        let at = OffsetDateTime::now_utc().unix_timestamp() + offset;
        Value::Tag(1, Box::new(Value::Integer(at.into())))
    }

    /// A COSE envelope over `DIGEST` with header `alg` (COSE label), signed by
    /// fixture key `key` as `signer` wants.
    fn cose(key: &str, alg: iana::Algorithm, signer: Algorithm) -> Vec<u8> {
        let text = |s: &str| RegisteredLabel::Text(s.to_owned());
        let protected = HeaderBuilder::new()
            .algorithm(alg)
            .add_critical_label(text(SIGNING_SCHEME))
            .add_critical_label(text(EXPIRY))
            .content_type(PAYLOAD_CONTENT_TYPE.to_owned())
            .text_value(SIGNING_SCHEME.to_owned(), Value::Text("notary.x509".into()))
            .text_value(SIGNING_TIME.to_owned(), epoch(-60))
            .text_value(EXPIRY.to_owned(), epoch(3600))
            .build();
        let chain = [fixture(&format!("{key}.pem")), CA.to_owned()]
            .iter()
            .map(|pem| Value::Bytes(der(pem)))
            .collect();
        let unprotected = HeaderBuilder::new()
            .value(33, Value::Array(chain))
            .text_value(
                "io.cncf.notary.signingAgent".to_owned(),
                Value::Text("coset".into()),
            )
            .build();
        let payload = serde_json::json!({"targetArtifact": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": DIGEST, "size": 1}});
        CoseSign1Builder::new()
            .protected(protected)
            .unprotected(unprotected)
            .payload(payload.to_string().into_bytes())
            .create_signature(b"", |tbs| sign(key, signer, tbs))
            .build()
            .to_tagged_vec()
            .unwrap()
    }

    fn check_cose(envelope: &[u8]) -> Result<Vec<String>, NotaryError> {
        verify(
            &trusting(CA, Some("O=Portcullis Tests")),
            COSE_MEDIA_TYPE,
            envelope,
            DIGEST,
            OffsetDateTime::now_utc(),
        )
    }

    #[test]
    fn cose_envelopes_verify_with_each_required_algorithm() {
        for (key, alg, ours) in [
            ("rsa-2048", iana::Algorithm::PS256, Algorithm::Ps256),
            ("rsa-3072", iana::Algorithm::PS384, Algorithm::Ps384),
            ("rsa-4096", iana::Algorithm::PS512, Algorithm::Ps512),
            ("ec-p256", iana::Algorithm::ES256, Algorithm::Es256),
            ("ec-p384", iana::Algorithm::ES384, Algorithm::Es384),
            ("ec-p521", iana::Algorithm::ES512, Algorithm::Es512),
        ] {
            assert_eq!(
                check_cose(&cose(key, alg, ours)),
                Ok(vec!["notation".to_owned()]),
                "{key} {ours}"
            );
        }
    }

    #[test]
    fn other_algorithms_and_keys_are_refused_with_the_reason() {
        // The header names another algorithm than the key calls for (substitution).
        assert_eq!(
            check_cose(&cose("ec-p384", iana::Algorithm::ES256, Algorithm::Es384)),
            Err(NotaryError::AlgorithmMismatch {
                header: Algorithm::Es256,
                key: Algorithm::Es384
            })
        );
        assert_eq!(
            check_cose(&cose("rsa-3072", iana::Algorithm::PS256, Algorithm::Ps256)),
            Err(NotaryError::AlgorithmMismatch {
                header: Algorithm::Ps256,
                key: Algorithm::Ps384
            })
        );
        // RSA below 2048 bits.
        assert_eq!(
            check_cose(&cose("rsa-1024", iana::Algorithm::PS256, Algorithm::Ps256)),
            Err(NotaryError::Key("RSA 1024 bits".into()))
        );
        // Algorithms outside the six: EdDSA, HMAC.
        for (alg, label) in [
            (iana::Algorithm::EdDSA, "COSE -8"),
            (iana::Algorithm::HMAC_256_256, "COSE 5"),
        ] {
            let refused = check_cose(&cose("ec-p256", alg, Algorithm::Es256));
            assert_eq!(refused, Err(NotaryError::Algorithm(label.into())));
            assert!(
                refused
                    .unwrap_err()
                    .to_string()
                    .contains("is not allowed (PS256, PS384, PS512, ES256, ES384, ES512)")
            );
        }
    }

    #[test]
    fn jws_envelopes_take_the_same_algorithms() {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use jsonwebtoken::{Algorithm as Jwt, EncodingKey};
        let rfc =
            |offset: i64| rfc3339(OffsetDateTime::now_utc() + time::Duration::seconds(offset));
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(&fixture("rsa-3072.key")).unwrap();
        for (key, alg, encoding) in [
            (
                "rsa-3072",
                Jwt::PS384,
                EncodingKey::from_rsa_der(rsa.to_pkcs1_der().unwrap().as_bytes()),
            ),
            (
                "ec-p384",
                Jwt::ES384,
                EncodingKey::from_ec_der(&der(&fixture("ec-p384.key"))),
            ),
        ] {
            let header = serde_json::json!({
                "alg": format!("{alg:?}"),
                "crit": [SIGNING_SCHEME],
                "cty": PAYLOAD_CONTENT_TYPE,
                SIGNING_SCHEME: "notary.x509",
                SIGNING_TIME: rfc(-60),
            });
            let payload = serde_json::json!({"targetArtifact": {"digest": DIGEST}});
            let protected = URL_SAFE_NO_PAD.encode(header.to_string());
            let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
            let signature = jsonwebtoken::crypto::sign(
                format!("{protected}.{payload}").as_bytes(),
                &encoding,
                alg,
            )
            .unwrap();
            let envelope = serde_json::json!({
                "payload": payload, "protected": protected, "signature": signature,
                "header": {"x5c": [STANDARD.encode(der(&fixture(&format!("{key}.pem")))),
                                   STANDARD.encode(der(CA))]},
            });
            assert_eq!(
                verify(
                    &trusting(CA, None),
                    JWS_MEDIA_TYPE,
                    envelope.to_string().as_bytes(),
                    DIGEST,
                    OffsetDateTime::now_utc()
                ),
                Ok(vec!["notation".to_owned()]),
                "{key}"
            );
        }
    }
}
