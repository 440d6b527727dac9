//! TUF public keys as notary encodes them, key ids, signature verification, and the rules a
//! root key's certificate must satisfy.
//!
//! A key is `{"keytype":T,"keyval":{"private":null,"public":B64}}`; its id is the hex SHA-256
//! of that object's canonical JSON. `public` holds a DER SubjectPublicKeyInfo (`ecdsa`, `rsa`),
//! 32 raw bytes (`ed25519`), or the PEM text of a leaf certificate, optionally followed by
//! intermediates (`ecdsa-x509`, `rsa-x509`), whose SPKI is the verifying key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;

use super::canonical::canonical_json;

/// Smallest RSA modulus notary accepts, for signatures and root certificates.
const MIN_RSA_BITS: usize = 2048;

/// Signature algorithms whose certificates notary refuses (SHA-1 based).
const SHA1_SIGNATURE_OIDS: [&str; 3] = [
    "1.2.840.113549.1.1.5", // sha1WithRSAEncryption
    "1.2.840.10040.4.3",    // dsa-with-sha1
    "1.2.840.10045.4.1",    // ecdsa-with-SHA1
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("malformed key: {0}")]
    Malformed(String),
    #[error("unsupported key type {0:?}")]
    UnsupportedKeyType(String),
    #[error("signature method {method:?} cannot be used with a {keytype} key")]
    MethodMismatch {
        method: String,
        keytype: &'static str,
    },
    #[error("invalid signature: {0}")]
    BadSignature(String),
    #[error("invalid root certificate: {0}")]
    Certificate(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Ecdsa,
    EcdsaX509,
    Ed25519,
    Rsa,
    RsaX509,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ecdsa => "ecdsa",
            KeyType::EcdsaX509 => "ecdsa-x509",
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa => "rsa",
            KeyType::RsaX509 => "rsa-x509",
        }
    }

    pub fn parse(s: &str) -> Result<KeyType, KeyError> {
        Ok(match s {
            "ecdsa" => KeyType::Ecdsa,
            "ecdsa-x509" => KeyType::EcdsaX509,
            "ed25519" => KeyType::Ed25519,
            "rsa" => KeyType::Rsa,
            "rsa-x509" => KeyType::RsaX509,
            other => return Err(KeyError::UnsupportedKeyType(other.to_owned())),
        })
    }

    fn is_x509(self) -> bool {
        matches!(self, KeyType::EcdsaX509 | KeyType::RsaX509)
    }
}

/// A TUF public key (`keyval.public` decoded from base64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub keytype: KeyType,
    pub public: Vec<u8>,
}

/// A decoded verifying key.
enum Verifier {
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
    Rsa(rsa::RsaPublicKey),
}

impl PublicKey {
    /// Parses `{"keytype","keyval":{"public"}}`; `private` is ignored (public keys carry null).
    pub fn from_json(v: &Value) -> Result<PublicKey, KeyError> {
        let keytype = v
            .get("keytype")
            .and_then(Value::as_str)
            .ok_or_else(|| KeyError::Malformed("missing keytype".to_owned()))?;
        let public = v
            .get("keyval")
            .and_then(|keyval| keyval.get("public"))
            .and_then(Value::as_str)
            .ok_or_else(|| KeyError::Malformed("missing keyval.public".to_owned()))?;
        let public = B64
            .decode(public)
            .map_err(|e| KeyError::Malformed(format!("keyval.public is not base64: {e}")))?;
        Ok(PublicKey {
            keytype: KeyType::parse(keytype)?,
            public,
        })
    }

    /// `{"keytype","keyval":{"private":null,"public"}}`, as notary serialises public keys.
    pub fn to_json(&self) -> Value {
        json!({
            "keytype": self.keytype.as_str(),
            "keyval": {"private": null, "public": B64.encode(&self.public)},
        })
    }

    /// Hex SHA-256 of the canonical JSON of [`PublicKey::to_json`] (notary's `TUFKey.ID`).
    pub fn id(&self) -> String {
        // A key object holds strings and null only, so canonicalisation cannot fail.
        let bytes = canonical_json(&self.to_json()).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }

    /// Verifies `signature` over `message` with `method` (`ecdsa`, `eddsa`, `rsapss`,
    /// `rsapkcs1v15`). ECDSA signatures are raw `r||s` (64 bytes on P-256), never DER.
    pub fn verify(&self, method: &str, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let bad = |e: &dyn std::fmt::Display| KeyError::BadSignature(e.to_string());
        match (method, self.verifier()?) {
            ("ecdsa", Verifier::P256(key)) => {
                if signature.len() != 64 {
                    return Err(KeyError::BadSignature(format!(
                        "ecdsa signature must be 64 raw bytes (r||s), got {}",
                        signature.len()
                    )));
                }
                let sig = p256::ecdsa::Signature::from_slice(signature).map_err(|e| bad(&e))?;
                key.verify(message, &sig).map_err(|e| bad(&e))
            }
            ("eddsa", Verifier::Ed25519(key)) => {
                let sig = ed25519_dalek::Signature::from_slice(signature).map_err(|e| bad(&e))?;
                key.verify(message, &sig).map_err(|e| bad(&e))
            }
            ("rsapss" | "rsapkcs1v15", Verifier::Rsa(key)) => {
                if key.n().bits() < MIN_RSA_BITS {
                    return Err(KeyError::BadSignature(format!(
                        "rsa key has {} bits, at least {MIN_RSA_BITS} required",
                        key.n().bits()
                    )));
                }
                let digest = Sha256::digest(message);
                let result = if method == "rsapss" {
                    key.verify(rsa::Pss::new_with_salt::<Sha256>(32), &digest, signature)
                } else {
                    key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, signature)
                };
                result.map_err(|e| bad(&e))
            }
            (method, _) => Err(KeyError::MethodMismatch {
                method: method.to_owned(),
                keytype: self.keytype.as_str(),
            }),
        }
    }

    /// Checks notary's root certificate rules (`trustpinning.ValidateRoot`): an x509 key whose
    /// first certificate is a non-CA leaf with CN == `gun` (or a `prefix*` the GUN starts
    /// with), later certificates CAs, a sane validity window that contains `now` (with a day's
    /// leeway on notBefore; `None` skips the expiry check, as for a previous root), no SHA-1
    /// signature, RSA keys of at least 2048 bits.
    pub fn check_root_certificate(
        &self,
        gun: &str,
        now: Option<time::OffsetDateTime>,
    ) -> Result<(), KeyError> {
        if !self.keytype.is_x509() {
            return Err(KeyError::Certificate(format!(
                "root keys must be x509 certificates, got {}",
                self.keytype.as_str()
            )));
        }
        let pems = self.pems()?;
        let (leaf, rest) = pems
            .split_first()
            .ok_or_else(|| cert_err("no certificate"))?;
        for pem in rest {
            if !parse_cert(pem)?.is_ca() {
                return Err(cert_err("an intermediate certificate is not a CA"));
            }
        }
        let cert = parse_cert(leaf)?;
        if cert.is_ca() {
            return Err(cert_err("the leaf certificate is a CA"));
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default();
        if !cn_matches_gun(cn, gun) {
            return Err(KeyError::Certificate(format!(
                "certificate CN {cn:?} does not match the GUN {gun:?}"
            )));
        }
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        if not_before > not_after {
            return Err(cert_err("the certificate validity window is invalid"));
        }
        let algorithm = cert.signature_algorithm.algorithm.to_id_string();
        if SHA1_SIGNATURE_OIDS.contains(&algorithm.as_str()) {
            return Err(KeyError::Certificate(format!(
                "certificate with CN {cn:?} uses a SHA-1 signature algorithm"
            )));
        }
        if let Verifier::Rsa(key) = self.verifier()?
            && key.n().bits() < MIN_RSA_BITS
        {
            return Err(KeyError::Certificate(format!(
                "certificate with CN {cn:?} has a {}-bit rsa key, at least {MIN_RSA_BITS} required",
                key.n().bits()
            )));
        }
        if let Some(now) = now {
            let now = now.unix_timestamp();
            if now + 86_400 < not_before || now > not_after {
                return Err(KeyError::Certificate(format!(
                    "certificate with CN {cn:?} is expired or not yet valid"
                )));
            }
        }
        Ok(())
    }

    /// The PEM blocks of an x509 key.
    fn pems(&self) -> Result<Vec<Pem>, KeyError> {
        Pem::iter_from_buffer(&self.public)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_err(&format!("bad pem: {e}")))
    }

    fn verifier(&self) -> Result<Verifier, KeyError> {
        let malformed = |e: &dyn std::fmt::Display| {
            KeyError::Malformed(format!("bad {} public key: {e}", self.keytype.as_str()))
        };
        let spki = match self.keytype {
            KeyType::Ed25519 => {
                let bytes: [u8; 32] = self
                    .public
                    .as_slice()
                    .try_into()
                    .map_err(|_| malformed(&"ed25519 keys are 32 bytes"))?;
                let key =
                    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| malformed(&e))?;
                return Ok(Verifier::Ed25519(key));
            }
            KeyType::Ecdsa | KeyType::Rsa => self.public.clone(),
            KeyType::EcdsaX509 | KeyType::RsaX509 => {
                let pems = self.pems()?;
                let leaf = pems.first().ok_or_else(|| malformed(&"no certificate"))?;
                parse_cert(leaf)?.public_key().raw.to_vec()
            }
        };
        match self.keytype {
            KeyType::Ecdsa | KeyType::EcdsaX509 => {
                p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
                    .map(Verifier::P256)
                    .map_err(|e| malformed(&e))
            }
            _ => rsa::RsaPublicKey::from_public_key_der(&spki)
                .map(Verifier::Rsa)
                .map_err(|e| malformed(&e)),
        }
    }
}

fn cert_err(msg: &str) -> KeyError {
    KeyError::Certificate(msg.to_owned())
}

fn parse_cert(pem: &Pem) -> Result<X509Certificate<'_>, KeyError> {
    pem.parse_x509()
        .map_err(|e| cert_err(&format!("bad certificate: {e}")))
}

/// notary's `MatchCNToGun`: exact, or a CN ending in `*` whose prefix starts the GUN.
fn cn_matches_gun(cn: &str, gun: &str) -> bool {
    match cn.strip_suffix('*') {
        Some(_) => gun.starts_with(cn.trim_end_matches('*')),
        None => cn == gun,
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::trust::metadata::fixtures::{V01_GUN, V03_GUN, V03_ROOT};
    use crate::trust::validate::testkit::TestKey;

    fn v03_root_key() -> PublicKey {
        let root: Value = serde_json::from_slice(V03_ROOT).unwrap();
        let id = root["signed"]["roles"]["root"]["keyids"][0]
            .as_str()
            .unwrap();
        PublicKey::from_json(&root["signed"]["keys"][id]).unwrap()
    }

    #[test]
    fn json_round_trip_and_errors() {
        let key = v03_root_key();
        assert_eq!(key.keytype, KeyType::EcdsaX509);
        assert_eq!(PublicKey::from_json(&key.to_json()).unwrap(), key);
        let bad = |v: Value| PublicKey::from_json(&v).unwrap_err();
        assert!(matches!(
            bad(json!({"keytype": "dsa", "keyval": {"public": ""}})),
            KeyError::UnsupportedKeyType(_)
        ));
        assert!(matches!(
            bad(json!({"keytype": "ecdsa", "keyval": {"public": "%%"}})),
            KeyError::Malformed(_)
        ));
        assert!(matches!(
            bad(json!({"keytype": "ecdsa"})),
            KeyError::Malformed(_)
        ));
    }

    #[test]
    fn methods_must_fit_the_key() {
        let key = TestKey::ecdsa().public;
        let err = key.verify("rsapss", b"m", &[0; 256]).unwrap_err();
        assert!(matches!(err, KeyError::MethodMismatch { .. }), "{err}");
        let err = key.verify("ecdsa", b"m", &[0; 70]).unwrap_err();
        assert!(err.to_string().contains("64 raw bytes"), "{err}");
    }

    #[test]
    fn fixture_root_certificates_follow_the_rules() {
        let key = v03_root_key();
        key.check_root_certificate(V03_GUN, Some(datetime!(2026-07-01 00:00 UTC)))
            .unwrap();
        // notAfter 2026-07-25; a previous root's certificates are used without expiry.
        let err = key
            .check_root_certificate(V03_GUN, Some(datetime!(2026-07-26 00:00 UTC)))
            .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        key.check_root_certificate(V03_GUN, None).unwrap();
        let err = key.check_root_certificate(V01_GUN, None).unwrap_err();
        assert!(err.to_string().contains("does not match the GUN"), "{err}");
    }

    #[test]
    fn generated_root_certificates_follow_the_rules() {
        let now = Some(time::OffsetDateTime::now_utc());
        let gun = "127.0.0.1:5443/samples/app";
        TestKey::root(gun)
            .public
            .check_root_certificate(gun, now)
            .unwrap();
        let wildcard = TestKey::root("127.0.0.1:5443/samples/*").public;
        wildcard.check_root_certificate(gun, now).unwrap();
        assert!(
            wildcard
                .check_root_certificate("127.0.0.1:5443/other/app", now)
                .is_err()
        );
        let ca = TestKey::root_with(gun, |p| {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
        });
        let err = ca.public.check_root_certificate(gun, now).unwrap_err();
        assert!(err.to_string().contains("is a CA"), "{err}");
        let future = TestKey::root_with(gun, |p| {
            p.not_before = time::OffsetDateTime::now_utc() + time::Duration::days(2);
        });
        assert!(future.public.check_root_certificate(gun, now).is_err());
        let plain = TestKey::ecdsa().public;
        let err = plain.check_root_certificate(gun, now).unwrap_err();
        assert!(err.to_string().contains("must be x509"), "{err}");
    }

    #[test]
    fn x509_keys_verify_with_the_certificate_key() {
        use crate::trust::validate::testkit::sign;
        let gun = "127.0.0.1:5443/samples/app";
        let key = TestKey::root(gun);
        let file = sign(&json!({"_type": "Root"}), &[&key]);
        let doc: Value = serde_json::from_slice(&file).unwrap();
        let sig = B64
            .decode(doc["signatures"][0]["sig"].as_str().unwrap())
            .unwrap();
        key.public
            .verify("ecdsa", br#"{"_type":"Root"}"#, &sig)
            .unwrap();
        assert!(
            key.public
                .verify("ecdsa", br#"{"_type":"Targets"}"#, &sig)
                .is_err()
        );
    }

    #[test]
    fn high_s_ecdsa_signatures_verify_as_go_makes_them() {
        use p256::ecdsa::signature::Signer as _;
        let key = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
        let sig: p256::ecdsa::Signature = key.sign(b"message");
        let (r, s) = sig.split_scalars();
        let flipped = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
        let public = PublicKey {
            keytype: KeyType::Ecdsa,
            public: p256::pkcs8::EncodePublicKey::to_public_key_der(key.verifying_key())
                .unwrap()
                .into_vec(),
        };
        for sig in [sig, flipped] {
            public.verify("ecdsa", b"message", &sig.to_bytes()).unwrap();
        }
    }
}
