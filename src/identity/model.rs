//! The identity model shared by the store, the admin API and the policy compiler:
//! actions, repository patterns, scope maps and tokens. Types here are plain data;
//! validation of patterns lives in `pattern`, persistence in `store`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Unix time in whole seconds; every timestamp in the control plane uses it.
pub type UnixSeconds = i64;

/// A repository-scoped permission, as Azure Container Registry names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "content/read")]
    ContentRead,
    #[serde(rename = "content/write")]
    ContentWrite,
    #[serde(rename = "content/delete")]
    ContentDelete,
    #[serde(rename = "metadata/read")]
    MetadataRead,
    #[serde(rename = "metadata/write")]
    MetadataWrite,
    #[serde(rename = "trust/write")]
    TrustWrite,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::ContentRead,
        Action::ContentWrite,
        Action::ContentDelete,
        Action::MetadataRead,
        Action::MetadataWrite,
        Action::TrustWrite,
    ];

    /// The position in `Action::ALL`.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The wire name, which is also the Cedar action id.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::ContentRead => "content/read",
            Action::ContentWrite => "content/write",
            Action::ContentDelete => "content/delete",
            Action::MetadataRead => "metadata/read",
            Action::MetadataWrite => "metadata/write",
            Action::TrustWrite => "trust/write",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown action `{0}`: expected one of content/read, content/write, content/delete, metadata/read, metadata/write, trust/write"
)]
pub struct UnknownActionError(pub String);

impl FromStr for Action {
    type Err = UnknownActionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownActionError(s.to_owned()))
    }
}

/// A validated, lowercased repository pattern. Construct with `RepositoryPattern::parse`
/// (in `pattern.rs`); serialized as its text (`samples/*`, `*`, `samples/hello`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RepositoryPattern {
    /// `*`: every repository.
    Root,
    /// `samples/*`, stored as the prefix including the trailing slash: `samples/`.
    /// Matches every repository strictly below the prefix, at any depth.
    Prefix(String),
    /// An exact repository name.
    Exact(String),
}

/// One rule of a scope map: a pattern and the actions it grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeRule {
    pub repository: RepositoryPattern,
    pub actions: BTreeSet<Action>,
}

/// A named set of rules; tokens point at exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeMap {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub rules: Vec<ScopeRule>,
    /// System-defined maps (`_repositories_*`) cannot be changed or deleted.
    #[serde(default)]
    pub system: bool,
    pub created_at: UnixSeconds,
    pub updated_at: UnixSeconds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenStatus {
    Enabled,
    Disabled,
}

/// Which of a token's two password slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PasswordSlot {
    #[serde(rename = "password1")]
    Password1,
    #[serde(rename = "password2")]
    Password2,
}

impl PasswordSlot {
    pub const fn as_str(self) -> &'static str {
        match self {
            PasswordSlot::Password1 => "password1",
            PasswordSlot::Password2 => "password2",
        }
    }
}

/// A stored password: only a salted hash, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordRecord {
    pub salt: [u8; 16],
    pub hash: [u8; 32],
    pub created_at: UnixSeconds,
    pub expires_at: Option<UnixSeconds>,
}

impl PasswordRecord {
    pub fn is_expired(&self, now: UnixSeconds) -> bool {
        self.expires_at.is_some_and(|e| now >= e)
    }
}

/// A repository-scoped credential bound to one scope map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub name: String,
    pub scope_map: String,
    pub status: TokenStatus,
    pub password1: Option<PasswordRecord>,
    pub password2: Option<PasswordRecord>,
    pub created_at: UnixSeconds,
    pub updated_at: UnixSeconds,
}

impl Token {
    pub fn password(&self, slot: PasswordSlot) -> Option<&PasswordRecord> {
        match slot {
            PasswordSlot::Password1 => self.password1.as_ref(),
            PasswordSlot::Password2 => self.password2.as_ref(),
        }
    }
}

/// Who is asking, after authentication.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// The registry's bootstrap administrator.
    Admin,
    /// A repository-scoped token, with the password slot it authenticated with
    /// (expiry is per slot).
    Token { name: String, slot: PasswordSlot },
    /// No credentials.
    Anonymous,
}

/// Per-repository switches an operator sets with `metadata/write`
/// (`portcullis repository update`), as ACR's `--write-enabled` etc.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RepositoryAttributes {
    pub read_enabled: bool,
    pub write_enabled: bool,
    pub delete_enabled: bool,
    pub list_enabled: bool,
    /// Content trust: only signed content is visible (filled in by the trust issue).
    pub signed_only: bool,
}

impl Default for RepositoryAttributes {
    fn default() -> Self {
        Self {
            read_enabled: true,
            write_enabled: true,
            delete_enabled: true,
            list_enabled: true,
            signed_only: false,
        }
    }
}

/// A named verification identity for OCI signatures (`portcullis signature-trust`):
/// `context.signatures` of a manifest pull lists the names of those whose signature
/// over the manifest verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureTrust {
    pub name: String,
    pub material: TrustMaterial,
    pub created_at: UnixSeconds,
}

/// What a [`SignatureTrust`] verifies with, as the operator gave it (PEM text); parsed
/// and checked when added (`crate::signatures`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TrustMaterial {
    /// sigstore/cosign: an ECDSA P-256 public key (SubjectPublicKeyInfo PEM).
    Cosign { public_key: String },
    /// Notary Project: trusted CA certificates (PEM) and, optionally, the subject the
    /// signing certificate must have.
    Notary {
        ca_certs: String,
        identity: Option<String>,
    },
}

impl TrustMaterial {
    /// `cosign` or `notary`.
    pub fn kind(&self) -> &'static str {
        match self {
            TrustMaterial::Cosign { .. } => "cosign",
            TrustMaterial::Notary { .. } => "notary",
        }
    }
}
