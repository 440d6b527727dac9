//! PostgreSQL plumbing shared by every store that keeps state in PostgreSQL (the
//! metadata store here, the gateway's control plane): connection settings, pools,
//! versioned schema migrations applied once under an advisory lock, and a `LISTEN`er
//! that reconnects by itself.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{AsyncMessage, NoTls};

/// How long a call waits for a connection (new or free) before it fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a listener proves its connection alive, and how long it waits for that.
const LISTENER_PING: Duration = Duration::from_secs(5);
/// A listener's longest wait between attempts to reconnect.
const LISTENER_BACKOFF: Duration = Duration::from_secs(5);

/// `url` with its password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // The key=value form.
        return url
            .split_whitespace()
            .map(|kv| match kv.split_once('=') {
                Some(("password", _)) => "password=***",
                _ => kv,
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The connection settings of `url` (`postgres://user:password@host:port/database` or
/// the key=value form), with a connect timeout and an `application_name` unless the URL
/// sets them.
pub fn config(url: &str, application_name: &str) -> Result<tokio_postgres::Config, String> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(|e| e.to_string())?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    Ok(config)
}

/// A pool of up to `size` connections, made on first use on the runtime that uses them.
pub fn pool(config: &tokio_postgres::Config, size: usize) -> Result<Pool, String> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| e.to_string())
}

/// One schema: the table recording its applied versions, the advisory lock its
/// migrations run under, and the migrations in order (the last one's number is the
/// schema version).
pub struct Schema {
    pub table: &'static str,
    pub lock: i64,
    pub migrations: &'static [(i64, &'static str)],
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error(
        "database schema version {found} is newer than this binary's {known}: run a newer \
         portcullis (never an older one) against this database"
    )]
    TooNew { found: i64, known: i64 },
}

/// Brings `schema` up to its last version in one transaction on a connection of its
/// own (processes starting together migrate once).
pub async fn migrate(config: &tokio_postgres::Config, schema: &Schema) -> Result<(), MigrateError> {
    let (mut client, connection) = config.connect(NoTls).await?;
    let connection = tokio::spawn(connection);
    let migrated = migrate_with(&mut client, schema).await;
    drop(client);
    // The connection ends once the client is gone; its own error is the client's.
    let _ = connection.await;
    migrated
}

async fn migrate_with(
    client: &mut tokio_postgres::Client,
    schema: &Schema,
) -> Result<(), MigrateError> {
    let table = schema.table;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema.lock])
        .await?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            version bigint PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )"
    ))
    .await?;
    let found: i64 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {table}"),
            &[],
        )
        .await?
        .get(0);
    let known = schema.migrations.last().map_or(0, |m| m.0);
    if found > known {
        return Err(MigrateError::TooNew { found, known });
    }
    for (version, sql) in schema.migrations.iter().filter(|m| m.0 > found) {
        tx.batch_execute(sql).await?;
        tx.execute(
            &format!("INSERT INTO {table} (version) VALUES ($1)"),
            &[version],
        )
        .await?;
        tracing::info!(schema = table, version, "database migrated");
    }
    tx.commit().await?;
    Ok(())
}

/// What a [`listen`]er hands its notifications to.
pub trait Notified: Send + Sync {
    /// A notification's payload, in commit order.
    fn notified(&self, payload: &str);
    /// Whether notifications are being received: false from the moment one could be
    /// missed (the connection was lost) until a new connection listens again.
    fn listening(&self, listening: bool);
}

/// Listens on `channel` for as long as it runs, on a connection of its own: each
/// notification goes to `sink`; a lost connection is retried with exponential backoff
/// (100 ms up to 5 s), and proven alive by a ping every 5 s meanwhile.
pub async fn listen(
    config: tokio_postgres::Config,
    channel: &'static str,
    sink: Arc<dyn Notified>,
) {
    const FIRST_RETRY: Duration = Duration::from_millis(100);
    let mut backoff = FIRST_RETRY;
    loop {
        let mut listened = false;
        let lost = listen_once(&config, channel, &*sink, &mut listened).await;
        sink.listening(false);
        tracing::warn!(channel, error = %lost, "database listener lost; reconnecting");
        if listened {
            backoff = FIRST_RETRY;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LISTENER_BACKOFF);
    }
}

/// One listener connection, until it fails: why it did. Sets `listened` once it listens.
async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    sink: &dyn Notified,
    listened: &mut bool,
) -> String {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    // The connection's messages (notifications among them) on a task of their own, so
    // the pings below can run beside them; it ends with this function.
    let (tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            let failed = message.is_err();
            if tx.send(message).is_err() || failed {
                break;
            }
        }
    });
    let _driver = AbortOnDrop(driver);
    if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await {
        return e.to_string();
    }
    // From here every commit's notification arrives.
    sink.listening(true);
    *listened = true;
    let mut ping = tokio::time::interval(LISTENER_PING);
    ping.tick().await;
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => sink.notified(n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.to_string(),
                None => return "the connection closed".into(),
            },
            _ = ping.tick() => {
                // A connection that hangs (not closed) would miss notifications silently.
                match tokio::time::timeout(LISTENER_PING, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return format!("no answer to a ping within {LISTENER_PING:?}"),
                }
            }
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/reg"),
            "postgres://app:***@db:5432/reg"
        );
        assert_eq!(redact("postgres://app@db/reg"), "postgres://app@db/reg");
        assert_eq!(
            redact("host=db user=app password=x"),
            "host=db user=app password=***"
        );
    }
}
