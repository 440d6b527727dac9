//! [`PgControl`]: the control plane's PostgreSQL database. One pool per process, the
//! control schema's migrations (`src/control_plane/migrations/NNNN_*.sql`, compiled in,
//! applied at [`PgControl::connect`] under an advisory lock, tracked apart from the
//! metadata schema so both may share one database), and listeners on notification
//! channels (`LISTEN`, reconnecting with backoff).

use std::sync::Arc;

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use portcullis_storage::pg::{self, MigrateError, Notified, Schema};

/// The control schema, in order; the last one's number is its version.
const SCHEMA: Schema = Schema {
    table: "portcullis_control_schema",
    // "portcull" + 0x10: apart from the metadata schema's locks.
    lock: 0x706f_7274_6375_6c10,
    migrations: &[
        (1, include_str!("migrations/0001_identity.sql")),
        (2, include_str!("migrations/0002_trust.sql")),
    ],
};

/// Connections kept open to the control-plane database, per process: writes are rare,
/// reads come from memory.
const POOL_SIZE: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("cannot use control-plane database `{url}` (--control-plane): {cause}")]
    Connect { url: String, cause: String },
    #[error("control-plane database `{url}`: {source}")]
    Schema { url: String, source: MigrateError },
}

/// The control plane's database; share the `Arc`.
pub struct PgControl {
    pool: Pool,
    /// For listeners' own connections.
    config: tokio_postgres::Config,
    /// The URL without its password, for messages.
    url: String,
}

impl std::fmt::Debug for PgControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgControl")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PgControl {
    /// Connects to `url`, applies the control schema's migrations this database lacks.
    /// Pooled connections are made on first use, on the runtime that uses them.
    pub async fn connect(url: &str) -> Result<Arc<PgControl>, ControlPlaneError> {
        let redacted = pg::redact(url);
        let failed = |cause: String| ControlPlaneError::Connect {
            url: redacted.clone(),
            cause,
        };
        let config = pg::config(url, "portcullis control").map_err(failed)?;
        pg::migrate(&config, &SCHEMA)
            .await
            .map_err(|source| ControlPlaneError::Schema {
                url: redacted.clone(),
                source,
            })?;
        Ok(Arc::new(PgControl {
            pool: pg::pool(&config, POOL_SIZE).map_err(failed)?,
            config,
            url: redacted,
        }))
    }

    /// The pool every control-plane store shares.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The URL without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A listener on `channel` that runs until dropped, on a connection of its own named
    /// `application_name` (operators and tests find it in `pg_stat_activity`).
    pub fn listen(
        &self,
        channel: &'static str,
        application_name: &str,
        sink: Arc<dyn Notified>,
    ) -> BoxFuture<'static, ()> {
        let mut config = self.config.clone();
        config.application_name(application_name);
        Box::pin(pg::listen(config, channel, sink))
    }
}
