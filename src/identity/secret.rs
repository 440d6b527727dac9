//! Token secrets: generation, salted hashing and constant-time verification.
//!
//! Secrets are 32 random bytes, so a single salted SHA-256 (`SHA-256(salt || secret)`,
//! 16-byte random salt) is sound: there is nothing to brute-force that a slow KDF would
//! protect, and verification stays cheap on the request path.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::model::{PasswordRecord, UnixSeconds};

/// A fresh secret: 32 random bytes, base64url without padding (43 characters).
pub fn generate_secret() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// A new password record for `secret`, with a random salt.
pub fn hash_secret(
    secret: &str,
    created_at: UnixSeconds,
    expires_at: Option<UnixSeconds>,
) -> PasswordRecord {
    let salt = rand::random::<[u8; 16]>();
    PasswordRecord {
        salt,
        hash: digest(&salt, secret),
        created_at,
        expires_at,
    }
}

/// Whether `secret` is the one `record` was made from; compares in constant time.
pub fn verify_secret(record: &PasswordRecord, secret: &str) -> bool {
    digest(&record.salt, secret).ct_eq(&record.hash).into()
}

fn digest(salt: &[u8; 16], secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_and_distinct() {
        let a = generate_secret();
        let b = generate_secret();
        assert!(a.len() >= 43, "{a}");
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn hash_verifies_only_the_same_secret() {
        let s = generate_secret();
        let r = hash_secret(&s, 10, None);
        assert!(verify_secret(&r, &s));
        assert!(!verify_secret(&r, &generate_secret()));
        assert!(!verify_secret(&r, ""));
        assert!(!verify_secret(&r, &s[..42]));
    }

    #[test]
    fn salts_differ_so_hashes_differ() {
        let r1 = hash_secret("same", 0, None);
        let r2 = hash_secret("same", 0, None);
        assert_ne!(r1.salt, r2.salt);
        assert_ne!(r1.hash, r2.hash);
        assert!(verify_secret(&r1, "same") && verify_secret(&r2, "same"));
    }

    #[test]
    fn expiry_is_inclusive_of_the_expiry_instant() {
        let r = hash_secret("x", 0, Some(100));
        assert!(!r.is_expired(99));
        assert!(r.is_expired(100));
        assert!(!hash_secret("x", 0, None).is_expired(i64::MAX));
    }
}
