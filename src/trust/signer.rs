//! Server-held private keys for the timestamp (always) and snapshot (optional) roles.
//!
//! ECDSA P-256 (method `ecdsa`, raw `r||s` over SHA-256, public key a DER SPKI of keytype
//! `ecdsa`) is the default; Ed25519 (method `eddsa`, keytype `ed25519`, 32 raw public bytes)
//! is the option notary's local signer uses. Stored as one algorithm byte + the 32-byte secret.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePublicKey as _;
use serde_json::{Value, json};

use super::keys::{KeyError, KeyType, PublicKey};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    #[default]
    Ecdsa,
    Ed25519,
}

#[derive(Clone)]
enum Secret {
    Ecdsa(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

/// A private key the server signs timestamp/snapshot metadata with.
#[derive(Clone)]
pub struct ServerKey {
    secret: Secret,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("ServerKey").field("id", &self.id()).finish()
    }
}

impl ServerKey {
    pub fn generate(algorithm: KeyAlgorithm) -> ServerKey {
        let secret = match algorithm {
            KeyAlgorithm::Ecdsa => Secret::Ecdsa(random_p256_key()),
            KeyAlgorithm::Ed25519 => {
                Secret::Ed25519(ed25519_dalek::SigningKey::from_bytes(&rand::random()))
            }
        };
        ServerKey { secret }
    }

    fn from_secret(algorithm: KeyAlgorithm, secret: &[u8; 32]) -> Result<ServerKey, KeyError> {
        let secret = match algorithm {
            KeyAlgorithm::Ecdsa => p256::ecdsa::SigningKey::from_bytes(secret.into())
                .map(Secret::Ecdsa)
                .map_err(|e| KeyError::Malformed(format!("bad p-256 secret: {e}")))?,
            KeyAlgorithm::Ed25519 => Secret::Ed25519(ed25519_dalek::SigningKey::from_bytes(secret)),
        };
        Ok(ServerKey { secret })
    }

    /// Reads what [`ServerKey::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<ServerKey, KeyError> {
        let malformed = || KeyError::Malformed("stored server key is not 33 bytes".to_owned());
        let (tag, secret) = bytes.split_first().ok_or_else(malformed)?;
        let secret: &[u8; 32] = secret.try_into().map_err(|_| malformed())?;
        let algorithm = match tag {
            1 => KeyAlgorithm::Ecdsa,
            2 => KeyAlgorithm::Ed25519,
            other => {
                return Err(KeyError::Malformed(format!(
                    "unknown stored key algorithm {other}"
                )));
            }
        };
        ServerKey::from_secret(algorithm, secret)
    }

    /// One algorithm byte (1 = ecdsa, 2 = ed25519) followed by the 32-byte secret.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(33);
        match &self.secret {
            Secret::Ecdsa(key) => {
                out.push(1);
                out.extend_from_slice(&key.to_bytes());
            }
            Secret::Ed25519(key) => {
                out.push(2);
                out.extend_from_slice(key.as_bytes());
            }
        }
        out
    }

    pub fn public(&self) -> PublicKey {
        match &self.secret {
            Secret::Ecdsa(key) => PublicKey {
                keytype: KeyType::Ecdsa,
                // Encoding a valid P-256 point as SPKI cannot fail.
                public: key
                    .verifying_key()
                    .to_public_key_der()
                    .map(|der| der.into_vec())
                    .unwrap_or_default(),
            },
            Secret::Ed25519(key) => PublicKey {
                keytype: KeyType::Ed25519,
                public: key.verifying_key().to_bytes().to_vec(),
            },
        }
    }

    pub fn id(&self) -> String {
        self.public().id()
    }

    /// A TUF signature object over `message`: `{"keyid","method","sig"}`.
    pub fn sign(&self, message: &[u8]) -> Value {
        let (method, sig) = match &self.secret {
            Secret::Ecdsa(key) => {
                let sig: p256::ecdsa::Signature = key.sign(message);
                ("ecdsa", sig.to_bytes().to_vec())
            }
            Secret::Ed25519(key) => ("eddsa", key.sign(message).to_bytes().to_vec()),
        };
        json!({"keyid": self.id(), "method": method, "sig": B64.encode(sig)})
    }
}

/// A uniformly random P-256 scalar: 32 random bytes, retried in the (2^-32) case
/// they are not a valid scalar.
pub(crate) fn random_p256_key() -> p256::ecdsa::SigningKey {
    loop {
        let bytes: [u8; 32] = rand::random();
        if let Ok(key) = p256::ecdsa::SigningKey::from_bytes(&bytes.into()) {
            return key;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sign_verifiably() {
        for (algorithm, keytype) in [
            (KeyAlgorithm::Ecdsa, KeyType::Ecdsa),
            (KeyAlgorithm::Ed25519, KeyType::Ed25519),
        ] {
            let key = ServerKey::generate(algorithm);
            let again = ServerKey::from_bytes(&key.to_bytes()).unwrap();
            assert_eq!(again.id(), key.id());
            assert_eq!(again.public().keytype, keytype);
            let sig = key.sign(b"message");
            assert_eq!(sig["keyid"], key.id());
            let bytes = B64.decode(sig["sig"].as_str().unwrap()).unwrap();
            assert_eq!(bytes.len(), 64);
            let public = PublicKey::from_json(&key.public().to_json()).unwrap();
            let method = sig["method"].as_str().unwrap();
            public.verify(method, b"message", &bytes).unwrap();
            assert!(public.verify(method, b"other", &bytes).is_err());
        }
        assert_eq!(
            ServerKey::generate(KeyAlgorithm::Ecdsa).public().keytype,
            KeyType::Ecdsa
        );
        assert_eq!(
            ServerKey::generate(KeyAlgorithm::Ed25519).public().keytype,
            KeyType::Ed25519
        );
        assert!(ServerKey::from_bytes(&[3; 33]).is_err());
        assert!(ServerKey::from_bytes(&[1; 5]).is_err());
    }

    #[test]
    fn algorithm_serialises_lowercase() {
        assert_eq!(
            serde_json::to_string(&KeyAlgorithm::Ed25519).unwrap(),
            "\"ed25519\""
        );
        assert_eq!(KeyAlgorithm::default(), KeyAlgorithm::Ecdsa);
    }
}
