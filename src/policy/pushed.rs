//! Policy sets pushed to the control plane (`portcullis policy push`, `history`,
//! `rollback`): a push is validated together with the policy directories' files (the
//! same validation and messages as loading files) before it is stored as a new version,
//! then put in force here; other gateways follow by `NOTIFY` on
//! `portcullis_control_policies` and a poll every [`POLL`]. A rollback stores an old
//! version's files as a new version.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::engine::PolicyEngine;
use super::files::{PolicyError, PolicyFile, PushedSet};
use crate::control_plane::policies::{CHANNEL, NewVersion, PolicyStore, PolicyVersion};
use crate::control_plane::sync::{self, Refresh};
use crate::control_plane::{ControlDb, ControlStoreError};
use crate::identity::now_unix;

/// The safety-net poll of the version in force.
pub const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The set does not load; nothing was stored.
    #[error("{0}")]
    Invalid(PolicyError),
    #[error("policy version {0} not found")]
    NotFound(i64),
    #[error(transparent)]
    Store(#[from] ControlStoreError),
}

/// Who pushes, and why (stored with the version).
#[derive(Debug, Clone)]
pub struct Author {
    pub name: String,
    pub message: Option<String>,
}

/// The pushed policies of one gateway: the store and the engine they are in force in.
pub struct PushedPolicies {
    store: PolicyStore,
    engine: Arc<PolicyEngine>,
    /// Held while reading and swapping in a version, so an older read never replaces
    /// a newer version.
    applying: tokio::sync::Mutex<()>,
}

impl PushedPolicies {
    /// Puts the version in force in `db` (if any) in `engine`; an error if it does not
    /// load with this gateway's policy files.
    pub async fn open(
        db: ControlDb,
        engine: Arc<PolicyEngine>,
    ) -> Result<Arc<PushedPolicies>, PushError> {
        let pushed = Arc::new(PushedPolicies {
            store: PolicyStore::new(db),
            engine,
            applying: tokio::sync::Mutex::new(()),
        });
        pushed.apply().await?;
        Ok(pushed)
    }

    /// Validates `files` with the directories' files, stores them as the next version
    /// and puts it in force here.
    pub async fn push(
        &self,
        files: Vec<PolicyFile>,
        author: Author,
    ) -> Result<PolicyVersion, PushError> {
        self.store_version(files, author, None).await
    }

    /// Stores the files of `version` as the next version and puts it in force.
    pub async fn rollback(&self, version: i64, author: Author) -> Result<PolicyVersion, PushError> {
        let old = self
            .store
            .get(version)
            .await?
            .ok_or(PushError::NotFound(version))?;
        self.store_version(old.files, author, Some(version)).await
    }

    /// Every version, oldest first.
    pub async fn history(&self) -> Result<Vec<PolicyVersion>, PushError> {
        Ok(self.store.history().await?)
    }

    async fn store_version(
        &self,
        files: Vec<PolicyFile>,
        author: Author,
        rollback_of: Option<i64>,
    ) -> Result<PolicyVersion, PushError> {
        let engine = Arc::clone(&self.engine);
        let candidate = files.clone();
        tokio::task::spawn_blocking(move || engine.check_pushed(candidate))
            .await
            .map_err(|e| ControlStoreError::Task(e.to_string()))?
            .map_err(PushError::Invalid)?;
        let stored = self
            .store
            .append(NewVersion {
                created: now_unix(),
                author: author.name,
                message: author.message,
                rollback_of,
                files,
            })
            .await?;
        self.apply().await?;
        tracing::info!(version = stored.version, sha256 = %stored.sha256, "policy version pushed");
        Ok(stored)
    }

    /// Puts the newest stored version in force if it is not already.
    async fn apply(&self) -> Result<(), PushError> {
        let _applying = self.applying.lock().await;
        if self.store.current_version().await? == self.engine.pushed_version() {
            return Ok(());
        }
        let Some(current) = self.store.current().await? else {
            return Ok(());
        };
        let version = current.version;
        let set = PushedSet {
            version: Some(version),
            files: current.files,
        };
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || engine.set_pushed(Some(set)))
            .await
            .map_err(|e| ControlStoreError::Task(e.to_string()))?
            .map_err(PushError::Invalid)?;
        tracing::info!(
            version,
            policies = self.engine.policy_count(),
            "policy version in force"
        );
        Ok(())
    }

    /// Starts following versions pushed through other gateways (PostgreSQL only).
    pub fn spawn_sync(self: &Arc<Self>) {
        sync::spawn(
            self.store.db(),
            CHANNEL,
            "portcullis policies listener",
            POLL,
            Arc::clone(self) as Arc<dyn Refresh>,
        );
    }
}

impl Refresh for PushedPolicies {
    fn refresh(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.apply().await {
                tracing::error!(
                    error = %e,
                    "pushed policies not put in force; the policies in force stay"
                );
            }
        })
    }
}
