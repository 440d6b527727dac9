//! The PostgreSQL backend of the identity store, shared by every gateway
//! (`src/control_plane/migrations/0001_identity.sql`): records in `identity_records`
//! (tombstones for deletions), the store version in the one row of `identity_version`.
//!
//! A write locks that row (`FOR UPDATE`: every gateway's writers queue there), catches
//! the snapshot up with the records changed since its version, runs its checks on that,
//! writes its records with version + 1, notifies `portcullis_control_identity` and
//! commits. Every gateway [`follow`]s: on a notification, on (re)connecting its listener
//! and at least every [`POLL`] it applies what changed since its version; each
//! successful look confirms the snapshot current (the staleness bound counts from the
//! last one).

use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::Transaction;
use tokio_postgres::IsolationLevel;

use super::{IdentityStore, IdentityStoreError, Kind, Record, Tx};
use crate::control_plane::PgControl;
use portcullis_storage::pg::Notified;

/// The channel every identity write notifies, with the new version as payload.
pub const CHANNEL: &str = "portcullis_control_identity";
/// The `application_name` of each gateway's listener connection.
pub const LISTENER_NAME: &str = "portcullis identity listener";
/// The safety net under notifications: the version is read at least this often.
const POLL: Duration = Duration::from_secs(1);
/// How often a failing poll is logged.
const WARN_EVERY: Duration = Duration::from_secs(30);

fn failed(control: &PgControl, cause: impl ToString) -> IdentityStoreError {
    IdentityStoreError::Postgres {
        url: control.url().to_owned(),
        cause: cause.to_string(),
    }
}

fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

/// The records changed after `since` (deletions as `value: None`).
async fn changed_since(
    control: &PgControl,
    client: &Transaction<'_>,
    since: Option<u64>,
) -> Result<Vec<Record>, IdentityStoreError> {
    let rows = match since {
        Some(v) => {
            let v = i64::try_from(v).unwrap_or(i64::MAX);
            client
                .query(
                    "SELECT kind, key, value FROM identity_records WHERE version > $1",
                    &[&v],
                )
                .await
        }
        None => {
            client
                .query(
                    "SELECT kind, key, value FROM identity_records WHERE value IS NOT NULL",
                    &[],
                )
                .await
        }
    }
    .map_err(|e| failed(control, e))?;
    let mut records = Vec::with_capacity(rows.len());
    for row in rows {
        let kind: &str = row.get(0);
        let key: String = row.get(1);
        let kind = Kind::parse(kind).ok_or_else(|| {
            failed(
                control,
                format!("record `{key}` has an unknown kind `{kind}`: a newer portcullis wrote it"),
            )
        })?;
        records.push(Record {
            kind,
            key,
            value: row.get(2),
        });
    }
    Ok(records)
}

/// The store version and the records changed after `since` (every record when
/// `None`), read from one database snapshot.
async fn read(
    control: &PgControl,
    since: Option<u64>,
) -> Result<(u64, Vec<Record>), IdentityStoreError> {
    let mut client = control.pool().get().await.map_err(|e| failed(control, e))?;
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| failed(control, e))?;
    let v: i64 = txn
        .query_one("SELECT version FROM identity_version", &[])
        .await
        .map_err(|e| failed(control, e))?
        .get(0);
    let records = changed_since(control, &txn, since).await?;
    txn.commit().await.map_err(|e| failed(control, e))?;
    Ok((version(v), records))
}

/// Every record and the store version.
pub(super) async fn load(control: &PgControl) -> Result<(u64, Vec<Record>), IdentityStoreError> {
    read(control, None).await
}

/// The database holds an older version than this gateway has seen: it was restored or
/// replaced. Deciding from either would be wrong.
fn behind(control: &PgControl, db: u64, ours: u64) -> IdentityStoreError {
    failed(
        control,
        format!(
            "the identity store is at version {db}, behind this gateway's {ours}: was the \
             database restored from a backup? restart the gateways"
        ),
    )
}

/// Applies what other gateways wrote since the snapshot's version; confirms the
/// snapshot current.
pub(super) async fn catch_up(
    store: &IdentityStore,
    control: &PgControl,
) -> Result<(), IdentityStoreError> {
    let client = control.pool().get().await.map_err(|e| failed(control, e))?;
    loop {
        let ours = store.snapshot().version;
        let db: i64 = client
            .query_one("SELECT version FROM identity_version", &[])
            .await
            .map_err(|e| failed(control, e))?
            .get(0);
        let db = version(db);
        if db < ours {
            return Err(behind(control, db, ours));
        }
        if db == ours {
            store.confirm();
            return Ok(());
        }
        let (db, records) = read(control, Some(ours)).await?;
        // Another task (a write catching up) may have moved the snapshot meanwhile.
        if store.advance(ours, db, &records)? {
            store.confirm();
            return Ok(());
        }
    }
}

/// [`IdentityStore::write`] on PostgreSQL.
pub(super) async fn write<T: Send>(
    store: &IdentityStore,
    control: &PgControl,
    f: impl FnOnce(&mut Tx) -> Result<T, IdentityStoreError> + Send,
) -> Result<T, IdentityStoreError> {
    let err = |e: tokio_postgres::Error| failed(control, e);
    let mut client = control.pool().get().await.map_err(|e| failed(control, e))?;
    let txn = client.transaction().await.map_err(err)?;
    let db: i64 = txn
        .query_one("SELECT version FROM identity_version FOR UPDATE", &[])
        .await
        .map_err(err)?
        .get(0);
    let db = version(db);
    // Nobody commits while the row is locked: catch up to exactly `db`, so the checks
    // below ("already exists", "in use") decide on the newest state.
    loop {
        let ours = store.snapshot().version;
        if ours > db {
            return Err(behind(control, db, ours));
        }
        if ours == db {
            break;
        }
        let records = changed_since(control, &txn, Some(ours)).await?;
        store.advance(ours, db, &records)?;
    }
    let mut tx = store.begin();
    let out = f(&mut tx)?;
    if tx.writes.is_empty() {
        // Dropping the transaction rolls it back (and unlocks the row).
        return Ok(out);
    }
    let next = i64::try_from(db + 1).unwrap_or(i64::MAX);
    for record in &tx.writes {
        txn.execute(
            "INSERT INTO identity_records (kind, key, value, version) VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, version = excluded.version",
            &[&record.kind.name(), &record.key, &record.value, &next],
        )
        .await
        .map_err(err)?;
    }
    txn.execute("UPDATE identity_version SET version = $1", &[&next])
        .await
        .map_err(err)?;
    txn.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &next.to_string()])
        .await
        .map_err(err)?;
    txn.commit().await.map_err(err)?;
    store.confirm();
    store.publish(tx);
    Ok(out)
}

/// Wakes the follower when a notification may mean news.
struct Wake {
    store: Weak<IdentityStore>,
    notify: tokio::sync::Notify,
}

impl Notified for Wake {
    fn notified(&self, payload: &str) {
        // This gateway's own writes are in place already.
        let news = match (payload.parse::<u64>(), self.store.upgrade()) {
            (Ok(v), Some(store)) => v > store.snapshot().version,
            _ => true,
        };
        if news {
            self.notify.notify_one();
        }
    }

    fn listening(&self, listening: bool) {
        // Listening again: whatever was committed meanwhile is fetched at once.
        if listening {
            self.notify.notify_one();
        }
    }
}

/// Keeps `store` current until it is dropped: a listener on [`CHANNEL`] (its own
/// connection, reconnecting with backoff) and a poll every [`POLL`].
pub(super) async fn follow(store: Weak<IdentityStore>, control: Arc<PgControl>) {
    let wake = Arc::new(Wake {
        store: store.clone(),
        notify: tokio::sync::Notify::new(),
    });
    let listener = tokio::spawn(control.listen(CHANNEL, LISTENER_NAME, wake.clone()));
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = wake.notify.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
        let Some(store) = store.upgrade() else { break };
        match catch_up(&store, &control).await {
            Ok(()) => {
                if warned.take().is_some() {
                    tracing::info!("identity control plane reachable again");
                }
            }
            Err(e) => {
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    tracing::warn!(error = %e, "identity control plane: cannot read changes; serving the last snapshot within the staleness bound");
                    warned = Some(tokio::time::Instant::now());
                }
            }
        }
    }
    listener.abort();
}
