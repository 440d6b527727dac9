//! Identity: who may call the registry. Owns the token / scope-map model, pattern
//! validation, secrets (generation, salted hashing, constant-time checks), Basic
//! credentials, the control-plane store (redb, or PostgreSQL shared by every gateway),
//! and the bootstrap admin account.

pub mod admin;
pub mod basic;
pub mod model;
pub mod pattern;
pub mod scope;
pub mod secret;
pub mod store;

use std::sync::Arc;

use imbl::{HashMap, OrdMap};

pub use admin::{AdminAccount, AdminPasswordSource};
pub use model::*;
pub use scope::actions_for;
pub use store::IdentityStore;

use secret::verify_secret;

/// An immutable, in-memory view of the control plane at one store version.
/// The store swaps in a new snapshot after every committed write (its own or, with a
/// shared control plane, another gateway's), so readers on the request path never touch
/// the database and can tell what changed by `version`. The maps are persistent
/// (`imbl`): a clone is O(1) and a change copies O(log n), so applying one write does
/// not copy the whole snapshot.
#[derive(Debug, Clone, Default)]
pub struct IdentitySnapshot {
    /// Increases with every committed control-plane write.
    pub version: u64,
    pub tokens: HashMap<String, Arc<Token>>,
    /// Includes the system scope maps.
    pub scope_maps: HashMap<String, Arc<ScopeMap>>,
    /// Only repositories whose attributes differ from the default are listed.
    pub repositories: HashMap<String, RepositoryAttributes>,
    /// Verification identities of OCI signatures, by name.
    pub signature_trust: OrdMap<String, Arc<SignatureTrust>>,
    /// Increases with every change of `signature_trust` only (it is the store version of
    /// the last such change): verified signatures are cached under it, so token and
    /// scope-map writes keep them.
    pub signature_trust_version: u64,
    /// The admin password's stored record (see [`IdentityStore::admin_password_record`]).
    pub admin_password: Option<Arc<PasswordRecord>>,
}

/// Why token credentials were refused. Distinct for logs and tests; clients must only
/// ever see one generic refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown token")]
    UnknownToken,
    #[error("wrong password")]
    WrongPassword,
    #[error("token is disabled")]
    Disabled,
    #[error("{} has expired", .0.as_str())]
    Expired(PasswordSlot),
}

impl IdentitySnapshot {
    pub fn repository_attributes(&self, repository: &str) -> RepositoryAttributes {
        self.repositories
            .get(repository)
            .cloned()
            .unwrap_or_default()
    }

    /// Checks `secret` against both password slots of token `name` at time `now`.
    /// The password is checked before status and expiry, so only a caller who knows a
    /// secret learns that the token is disabled or the password expired.
    pub fn verify_password(
        &self,
        name: &str,
        secret: &str,
        now: UnixSeconds,
    ) -> Result<PasswordSlot, AuthError> {
        let token = self.tokens.get(name).ok_or(AuthError::UnknownToken)?;
        let matched = [PasswordSlot::Password1, PasswordSlot::Password2]
            .into_iter()
            .filter_map(|slot| token.password(slot).map(|r| (slot, r)))
            .find(|(_, record)| verify_secret(record, secret));
        let (slot, record) = matched.ok_or(AuthError::WrongPassword)?;
        if token.status == TokenStatus::Disabled {
            return Err(AuthError::Disabled);
        }
        if record.is_expired(now) {
            return Err(AuthError::Expired(slot));
        }
        Ok(slot)
    }
}

/// The current Unix time in seconds.
pub fn now_unix() -> UnixSeconds {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
