//! Identity: who may call the registry. Owns the token / scope-map model, pattern
//! validation, secrets (generation, salted hashing, constant-time checks), the
//! control-plane store in redb, and the bootstrap admin account.

pub mod model;
pub mod pattern;

use std::collections::HashMap;
use std::sync::Arc;

pub use model::*;

/// An immutable, in-memory view of the control plane at one store version.
/// The store swaps in a new snapshot after every committed write, so readers on the
/// request path never touch redb and can tell what changed by `version`.
#[derive(Debug, Clone, Default)]
pub struct IdentitySnapshot {
    /// Increases with every committed control-plane write.
    pub version: u64,
    pub tokens: HashMap<String, Arc<Token>>,
    /// Includes the system scope maps.
    pub scope_maps: HashMap<String, Arc<ScopeMap>>,
    /// Only repositories whose attributes differ from the default are listed.
    pub repositories: HashMap<String, RepositoryAttributes>,
}

impl IdentitySnapshot {
    pub fn repository_attributes(&self, repository: &str) -> RepositoryAttributes {
        self.repositories
            .get(repository)
            .cloned()
            .unwrap_or_default()
    }
}
