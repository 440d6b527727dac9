//! Repository patterns of scope-map rules: parsing, validation, matching, and the
//! candidate keys a repository name yields (used to slice policies per request).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::model::RepositoryPattern;

/// Why a repository pattern was refused. Messages name the user's input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("repository pattern is empty")]
    Empty,
    #[error(
        "repository pattern `{0}` has more than one wildcard; only one trailing `/*` is allowed"
    )]
    MultipleWildcards(String),
    #[error(
        "repository pattern `{0}` has a wildcard in the middle; a wildcard may only end the pattern as `/*`"
    )]
    WildcardInMiddle(String),
    #[error("repository pattern `{0}` has a wildcard not preceded by `/`; write `prefix/*`")]
    WildcardNotAfterSlash(String),
    #[error(
        "repository pattern `{0}` is not a valid repository name: path components are lowercase letters and digits separated by `.`, `_`, `__` or `-`, joined by `/`"
    )]
    InvalidName(String),
    #[error("repository pattern `{0}` is longer than 255 characters")]
    TooLong(String),
}

/// The OCI repository-name grammar is the storage backend's; patterns use the same one.
pub use portcullis_oci::is_valid_repository_name;

impl RepositoryPattern {
    /// Parses and validates a pattern; input is lowercased first because repository
    /// names are lowercase on the wire (ACR's docs write `sample/teamA/*`).
    pub fn parse(input: &str) -> Result<Self, PatternError> {
        let text = input.trim().to_ascii_lowercase();
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.len() > 255 {
            return Err(PatternError::TooLong(input.to_owned()));
        }
        if text == "*" {
            return Ok(RepositoryPattern::Root);
        }
        let stars = text.matches('*').count();
        if stars > 1 {
            return Err(PatternError::MultipleWildcards(input.to_owned()));
        }
        if stars == 1 {
            if let Some(prefix) = text.strip_suffix("/*") {
                if !is_valid_repository_name(prefix) {
                    return Err(PatternError::InvalidName(input.to_owned()));
                }
                return Ok(RepositoryPattern::Prefix(format!("{prefix}/")));
            }
            if text.ends_with('*') {
                return Err(PatternError::WildcardNotAfterSlash(input.to_owned()));
            }
            return Err(PatternError::WildcardInMiddle(input.to_owned()));
        }
        if !is_valid_repository_name(&text) {
            return Err(PatternError::InvalidName(input.to_owned()));
        }
        Ok(RepositoryPattern::Exact(text))
    }

    /// Whether this pattern covers `repository` (a valid, lowercase name).
    pub fn matches(&self, repository: &str) -> bool {
        match self {
            RepositoryPattern::Root => true,
            RepositoryPattern::Prefix(p) => {
                repository.len() > p.len() && repository.starts_with(p.as_str())
            }
            RepositoryPattern::Exact(n) => n == repository,
        }
    }

    /// The slicing key: `*`, `prefix/`, or the exact name. A pattern matches a
    /// repository exactly when its key is among `candidate_keys(repository)`.
    pub fn key(&self) -> &str {
        match self {
            RepositoryPattern::Root => "*",
            RepositoryPattern::Prefix(p) => p,
            RepositoryPattern::Exact(n) => n,
        }
    }
}

/// Every pattern key that could match `repository`: `*`, each proper prefix ending in
/// `/`, and the name itself. `a/b/c` → `*`, `a/`, `a/b/`, `a/b/c`.
pub fn candidate_keys(repository: &str) -> impl Iterator<Item = &str> {
    let prefixes = repository
        .match_indices('/')
        .map(move |(i, _)| &repository[..=i]);
    std::iter::once("*")
        .chain(prefixes)
        .chain(std::iter::once(repository))
}

impl fmt::Display for RepositoryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepositoryPattern::Root => f.write_str("*"),
            RepositoryPattern::Prefix(p) => write!(f, "{p}*"),
            RepositoryPattern::Exact(n) => f.write_str(n),
        }
    }
}

impl Serialize for RepositoryPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RepositoryPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        RepositoryPattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_patterns() {
        assert_eq!(RepositoryPattern::parse("*"), Ok(RepositoryPattern::Root));
        assert_eq!(
            RepositoryPattern::parse("samples/*"),
            Ok(RepositoryPattern::Prefix("samples/".into()))
        );
        assert_eq!(
            RepositoryPattern::parse("sample/teamA/*"),
            Ok(RepositoryPattern::Prefix("sample/teama/".into()))
        );
        assert_eq!(
            RepositoryPattern::parse("samples/hello-world"),
            Ok(RepositoryPattern::Exact("samples/hello-world".into()))
        );
        assert!(RepositoryPattern::parse("a__b/c.d/e---f").is_ok());
    }

    #[test]
    fn invalid_patterns_name_the_rule() {
        assert!(matches!(
            RepositoryPattern::parse("sample/*/teamA"),
            Err(PatternError::WildcardInMiddle(_))
        ));
        assert!(matches!(
            RepositoryPattern::parse("sample/teamA*"),
            Err(PatternError::WildcardNotAfterSlash(_))
        ));
        assert!(matches!(
            RepositoryPattern::parse("sample/teamA/*/projectB/*"),
            Err(PatternError::MultipleWildcards(_))
        ));
        for bad in [
            "", "/x", "x/", "a//b", "a..b", "-a", "a_-b", "a b", "ä", "a___b",
        ] {
            assert!(RepositoryPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(RepositoryPattern::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn matching_is_multi_level_and_strict_below_prefix() {
        let p = RepositoryPattern::parse("samples/*").unwrap();
        assert!(p.matches("samples/a"));
        assert!(p.matches("samples/a/b"));
        assert!(!p.matches("samples"));
        assert!(!p.matches("samplesx/a"));
    }

    #[test]
    fn keys_agree_with_matching() {
        let repos = ["a", "a/b", "a/b/c", "ab/c"];
        let pats = ["*", "a/*", "a/b/*", "a", "a/b", "a/b/c", "ab/*"];
        for r in repos {
            let keys: Vec<&str> = candidate_keys(r).collect();
            for p in pats {
                let p = RepositoryPattern::parse(p).unwrap();
                assert_eq!(p.matches(r), keys.contains(&p.key()), "{p} vs {r}");
            }
        }
    }
}
