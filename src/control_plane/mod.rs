//! Where the control plane lives: embedded (`control.redb` in the data directory, one
//! process) or PostgreSQL ([`PgControl`]), shared by every gateway. The stores that keep
//! control-plane state (identity, trust, token-signing keys, policies) each have their
//! tables in it; this module owns the connection, the schema and the change listener,
//! and [`ControlDb`], the choice between the two that the key and policy stores take.

mod embedded;
mod pg;
pub mod policies;
pub mod signing_keys;
pub mod sync;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use embedded::EmbeddedDb;
pub use pg::{ControlPlaneError, PgControl};

/// The database a control-plane store keeps its records in.
#[derive(Clone, Debug)]
pub enum ControlDb {
    /// `control.redb`: this process alone.
    Embedded(Arc<EmbeddedDb>),
    /// Shared by every gateway; changes are announced by `NOTIFY`.
    Postgres(Arc<PgControl>),
}

impl ControlDb {
    /// The PostgreSQL control plane, when that is where the records are.
    pub fn postgres(&self) -> Option<&Arc<PgControl>> {
        match self {
            ControlDb::Embedded(_) => None,
            ControlDb::Postgres(pg) => Some(pg),
        }
    }
}

/// Why a control-plane store could not read or write.
#[derive(Debug, thiserror::Error)]
pub enum ControlStoreError {
    #[error("control-plane database: {0}")]
    Embedded(#[from] redb::Error),
    #[error("control-plane database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("control-plane database: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("control-plane record {0} is corrupt")]
    Corrupt(String),
    #[error("control-plane store task failed: {0}")]
    Task(String),
}

pub(crate) fn redb_err(e: impl Into<redb::Error>) -> ControlStoreError {
    ControlStoreError::Embedded(e.into())
}

/// Runs a redb transaction off the async workers (a commit syncs the file).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlStoreError> + Send + 'static,
) -> Result<T, ControlStoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlStoreError::Task(e.to_string()))?
}

/// Runs `future` to completion on a thread and current-thread runtime of its own, for
/// synchronous start-up code (`Gateway::open`). Pooled connections it makes end with that
/// runtime; the pool notices and makes new ones where they are next used.
pub fn block_on<F>(future: F) -> anyhow::Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            Ok(tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(future))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the control-plane start-up thread panicked"
            ))
        })
    })
}
