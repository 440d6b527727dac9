//! The spec's grammars: repository names, tags and digests, and the [`Digest`]
//! type every other module uses.
//!
//! Only `sha256` digests are accepted; a well-formed `sha512:` digest is
//! refused as unsupported (documented choice) and anything else is invalid.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

/// Longest repository name accepted (distribution's limit).
pub const MAX_NAME_LEN: usize = 255;

static NAME_RE: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used, reason = "constant pattern, covered by tests")]
    Regex::new(
        r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$",
    )
    .expect("valid name regex")
});

static TAG_RE: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used, reason = "constant pattern, covered by tests")]
    Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").expect("valid tag regex")
});

/// Whether `name` matches the spec's repository-name grammar (and length limit).
pub fn is_valid_repository_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && NAME_RE.is_match(name)
}

/// Whether `tag` matches the spec's tag grammar.
pub fn is_valid_tag(tag: &str) -> bool {
    TAG_RE.is_match(tag)
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex>")]
    Invalid(String),
    #[error("unsupported digest algorithm in {0:?}: only sha256 is supported")]
    Unsupported(String),
}

/// A validated `sha256:<64 hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(DigestError::Invalid(s.to_owned()));
        };
        let lower_hex = |h: &str| {
            h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        match alg {
            "sha256" if hex.len() == 64 && lower_hex(hex) => Ok(Digest(s.to_owned())),
            "sha512" if hex.len() == 128 && lower_hex(hex) => {
                Err(DigestError::Unsupported(s.to_owned()))
            }
            _ => Err(DigestError::Invalid(s.to_owned())),
        }
    }

    /// The digest of finished SHA-256 output.
    pub fn from_sha256(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(bytes)))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_sha256(&sha2::Sha256::digest(data))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, after `sha256:`.
    pub fn hex(&self) -> &str {
        self.0.get("sha256:".len()..).unwrap_or_default()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        for ok in [
            "a",
            "library/alpine",
            "a.b/c_d/e__f",
            "x-y--z/0",
            "samples/team-a/project.b",
        ] {
            assert!(is_valid_repository_name(ok), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", "a:b", "a/B",
        ] {
            assert!(!is_valid_repository_name(bad), "{bad}");
        }
        assert!(!is_valid_repository_name(&"a".repeat(256)));
        assert!(is_valid_repository_name(&"a".repeat(255)));
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.0", "_x", "A-b.C_d", &"a".repeat(128)] {
            assert!(is_valid_tag(ok), "{ok}");
        }
        for bad in ["", ".a", "-a", "a/b", "a:b", &"a".repeat(129)] {
            assert!(!is_valid_tag(bad), "{bad}");
        }
    }

    #[test]
    fn digests() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.hex(), hex);
        assert_eq!(Digest::of(b""), d);
        assert!(matches!(
            Digest::parse("sha256:abc"),
            Err(DigestError::Invalid(_))
        ));
        assert!(matches!(
            Digest::parse(&format!("sha256:{}", hex.to_uppercase())),
            Err(DigestError::Invalid(_))
        ));
        assert!(matches!(
            Digest::parse(&format!("sha512:{hex}{hex}")),
            Err(DigestError::Unsupported(_))
        ));
        assert!(matches!(
            Digest::parse("md5:abc"),
            Err(DigestError::Invalid(_))
        ));
        assert!(matches!(Digest::parse(hex), Err(DigestError::Invalid(_))));
    }
}
