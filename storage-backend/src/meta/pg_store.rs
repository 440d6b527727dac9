//! [`PgMeta`], the [`MetadataStore`] in PostgreSQL, so several gateway processes can share
//! one registry's metadata: repositories, manifests (exact bytes and parsed record), tags,
//! referrers, upload sessions, blob↔repository links and the references GC counts.
//!
//! - Schema: versioned migrations in `storage-backend/migrations/NNNN_*.sql`, compiled in
//!   and applied at [`PgMeta::connect`] under an advisory lock (gateways starting together
//!   migrate once); a database whose version is newer than this binary's is refused.
//! - Each call is one transaction. Tag moves are an upsert inside the manifest PUT's
//!   transaction, so a tag always names a stored manifest and two pushes of one tag end
//!   with one of them, never a mix.
//! - GC against many writers: every write that creates a reference (blob commit, link
//!   refresh, mount, manifest PUT) holds a shared advisory lock for its transaction; a
//!   GC pass holds it exclusively, so its "unreferenced?" checks never interleave with a
//!   new reference (as redb's single writer guarantees). The rows a manifest PUT checks
//!   are locked `FOR KEY SHARE`, so a concurrent unlink or delete waits for it. The
//!   grace period (a cutoff on blob and link timestamps) keeps what a push still in
//!   flight uploaded. Blob bytes are guarded the same way: [`MetadataStore::lock_blob`]
//!   is a transaction-level advisory lock on the digest, on a pool of its own, held by
//!   an upload from placing the bytes to committing them and try-locked by GC before it
//!   deletes them.
//! - A lost or refused connection is [`StorageError::MetaUnavailable`] (503); the pool
//!   reconnects on the next call.
//! - Every write that can change a manifest GET's answer sends a [`Change`] on the
//!   [`CHANNEL`] (`pg_notify`, in its transaction, so it is delivered exactly when the
//!   write commits); [`PgMeta::watch`]'s listener, one connection per process, hands the
//!   changes of every process to the manifest cache (`crate::cache`).

use std::sync::Arc;

use deadpool_postgres::{Pool, Transaction};
use futures_util::future::BoxFuture;

use super::{
    BlobLock, Change, ChangeSink, Deleted, GcReport, LinkedBlob, ManifestRecord, ManifestWithBytes,
    MetaFuture, MetadataStore, Page, UploadState, now_secs,
};
use crate::error::StorageError;
use crate::manifest::{ParsedManifest, Target};
use crate::names::{Digest, Reference};
pub use crate::pg::redact;
use crate::pg::{self, MigrateError, Notified, Schema};

/// The metadata schema: migrations in `storage-backend/migrations/`, in order.
const SCHEMA: Schema = Schema {
    table: "portcullis_schema",
    lock: MIGRATION_LOCK,
    migrations: &[
        (1, include_str!("../../migrations/0001_initial.sql")),
        (2, include_str!("../../migrations/0002_upload_states.sql")),
    ],
};

/// Advisory-lock keys ("portcull" + 1, + 2): schema migration, and GC against writes
/// that create references.
const MIGRATION_LOCK: i64 = 0x706f_7274_6375_6c01;
const GC_LOCK: i64 = 0x706f_7274_6375_6c02;

/// The advisory-lock key of blob `digest`: the first 60 bits of its hash (a collision
/// with another blob only makes the two wait for each other; one with the keys above
/// would need a preimage).
fn blob_lock_key(digest: &Digest) -> i64 {
    i64::from_str_radix(digest.hex().get(..15).unwrap_or("0"), 16).unwrap_or_default()
}

/// A [`MetadataStore::lock_blob`] held by PgMeta: a transaction-level advisory lock on a
/// connection of its own, released by ending the transaction.
struct PgBlobLock(Option<deadpool_postgres::Object>);

impl Drop for PgBlobLock {
    fn drop(&mut self) {
        let Some(client) = self.0.take() else {
            return;
        };
        // The rollback needs a runtime; without one (or if it fails) the connection is
        // closed instead, which ends the transaction just as well.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        drop(deadpool_postgres::Object::take(client));
                    }
                });
            }
            Err(_) => drop(deadpool_postgres::Object::take(client)),
        }
    }
}

/// Connections kept open to the database, per process.
const POOL_SIZE: usize = 16;

/// The notification channel of [`Change`]s.
pub const CHANNEL: &str = "portcullis_changes";
/// A payload longer than this is sent as [`Change::All`] (PostgreSQL's limit is 8000 bytes).
const MAX_PAYLOAD: usize = 7900;
/// The `application_name` of the listener's connection.
pub const LISTENER_NAME: &str = "portcullis listener";

/// The [`MetadataStore`] in a PostgreSQL database.
pub struct PgMeta {
    pool: Pool,
    /// The connections holding [`MetadataStore::lock_blob`]s: apart from `pool`, so
    /// uploads holding locks can always get the connection their commit needs.
    locks: Pool,
    /// For the listener's own connection.
    config: tokio_postgres::Config,
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

fn decode(json: &str) -> Result<ManifestRecord, StorageError> {
    serde_json::from_str(json).map_err(|e| StorageError::Corrupt(format!("manifest record: {e}")))
}

fn parse_digest(s: &str) -> Result<Digest, StorageError> {
    Digest::parse(s).map_err(|e| StorageError::Corrupt(e.to_string()))
}

impl PgMeta {
    /// Connects to `url` (`postgres://user:password@host:port/database`), applies the
    /// schema migrations this database lacks and returns the store. Connections are
    /// made on first use, on the runtime that uses them.
    pub async fn connect(url: &str) -> Result<PgMeta, StorageError> {
        let failed = |cause: String| StorageError::MetaConnect {
            url: redact(url),
            cause,
        };
        let config = pg::config(url, "portcullis").map_err(failed)?;
        pg::migrate(&config, &SCHEMA).await.map_err(|e| match e {
            MigrateError::Db(e) => failed(e.to_string()),
            MigrateError::TooNew { found, known } => StorageError::SchemaTooNew { found, known },
        })?;
        Ok(PgMeta {
            pool: pg::pool(&config, POOL_SIZE).map_err(failed)?,
            locks: pg::pool(&config, POOL_SIZE).map_err(failed)?,
            config,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StorageError> {
        Ok(self.pool.get().await?)
    }
}

/// Sends `change` to every process's listener when `tx` commits (nothing if it does not).
async fn notify(tx: &Transaction<'_>, change: &Change) -> Result<(), StorageError> {
    let mut payload = serde_json::to_string(change).unwrap_or_default();
    if payload.is_empty() || payload.len() > MAX_PAYLOAD {
        payload = serde_json::to_string(&Change::All).unwrap_or_default();
    }
    let stmt = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
    tx.execute(&stmt, &[&CHANNEL, &payload]).await?;
    Ok(())
}

/// Hands notifications on [`CHANNEL`] to the manifest cache's [`ChangeSink`].
struct Changes(Arc<dyn ChangeSink>);

impl Notified for Changes {
    fn notified(&self, payload: &str) {
        self.0
            .changed(&serde_json::from_str(payload).unwrap_or(Change::All));
    }

    fn listening(&self, listening: bool) {
        self.0.watching(listening);
    }
}

/// Holds GC off until the transaction ends (see the module docs).
async fn hold_gc_off(tx: &Transaction<'_>) -> Result<(), StorageError> {
    tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&GC_LOCK])
        .await?;
    Ok(())
}

/// Records blob `digest` (timestamp refreshed) and its link into `repo`.
async fn link(
    tx: &Transaction<'_>,
    repo: &str,
    digest: &Digest,
    size: u64,
    now: i64,
) -> Result<(), StorageError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO blobs (digest, size, touched_at) VALUES ($1, $2, $3)
             ON CONFLICT (digest) DO UPDATE SET size = EXCLUDED.size, touched_at = EXCLUDED.touched_at",
        )
        .await?;
    tx.execute(&stmt, &[&digest.as_str(), &signed(size), &now])
        .await?;
    let stmt = tx
        .prepare_cached(
            "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&stmt, &[&repo, &now]).await?;
    let stmt = tx
        .prepare_cached(
            "INSERT INTO blob_links (digest, repo, linked_at) VALUES ($1, $2, $3)
             ON CONFLICT (digest, repo) DO UPDATE SET linked_at = EXCLUDED.linked_at",
        )
        .await?;
    tx.execute(&stmt, &[&digest.as_str(), &repo, &now]).await?;
    Ok(())
}

/// Links `digest` into `repo` when `linked` (a source holds it, its row locked) and it is
/// stored; returns its size.
async fn link_if_stored(
    tx: Transaction<'_>,
    repo: &str,
    digest: &Digest,
    linked: bool,
) -> Result<Option<u64>, StorageError> {
    if !linked {
        return Ok(None);
    }
    let Some(row) = tx
        .query_opt(
            "SELECT size FROM blobs WHERE digest = $1 FOR KEY SHARE",
            &[&digest.as_str()],
        )
        .await?
    else {
        return Ok(None);
    };
    let size = unsigned(row.get(0));
    link(&tx, repo, digest, size, signed(now_secs())).await?;
    tx.commit().await?;
    Ok(Some(size))
}

/// Removes a manifest with its tags (its references and referrer entry go with its
/// row); returns the tags removed, `None` if the manifest did not exist.
async fn remove_manifest(
    tx: &Transaction<'_>,
    repo: &str,
    digest: &str,
) -> Result<Option<Vec<String>>, StorageError> {
    let tags = tx
        .query(
            "DELETE FROM tags WHERE repo = $1 AND digest = $2 RETURNING tag",
            &[&repo, &digest],
        )
        .await?;
    let removed = tx
        .execute(
            "DELETE FROM manifests WHERE repo = $1 AND digest = $2",
            &[&repo, &digest],
        )
        .await?;
    if removed == 0 {
        return Ok(None);
    }
    let mut tags: Vec<String> = tags.iter().map(|r| r.get(0)).collect();
    tags.sort();
    Ok(Some(tags))
}

/// Every descriptor of `parsed` against the stored content (as the redb store checks
/// it), locking what it finds so it cannot be removed before the manifest commits.
async fn check_declared(
    tx: &Transaction<'_>,
    repo: &str,
    parsed: &ParsedManifest,
) -> Result<(), StorageError> {
    let blob = tx
        .prepare_cached(
            "SELECT b.size FROM blob_links l JOIN blobs b ON b.digest = l.digest
             WHERE l.digest = $1 AND l.repo = $2 FOR KEY SHARE",
        )
        .await?;
    let manifest = tx
        .prepare_cached(
            "SELECT (record->>'size')::bigint FROM manifests
             WHERE repo = $1 AND digest = $2 FOR KEY SHARE",
        )
        .await?;
    for d in &parsed.declared {
        let stored = match d.target {
            Target::Blob => {
                let row = tx.query_opt(&blob, &[&d.digest.as_str(), &repo]).await?;
                let row = row.ok_or_else(|| StorageError::ManifestBlobUnknown(d.digest.clone()))?;
                Some(unsigned(row.get(0)))
            }
            Target::Manifest | Target::Subject => {
                let row = tx
                    .query_opt(&manifest, &[&repo, &d.digest.as_str()])
                    .await?;
                match (row, d.target) {
                    (Some(r), _) => Some(unsigned(r.get(0))),
                    (None, Target::Subject) => None,
                    (None, _) => return Err(StorageError::ManifestChildUnknown(d.digest.clone())),
                }
            }
        };
        d.check_size(stored)?;
    }
    Ok(())
}

/// A page of `query`'s single text column (which takes `$1` = after, `$2` = limit,
/// `$3..` = `extra`), one row beyond `n` fetched to tell whether more follow.
async fn page(
    client: &deadpool_postgres::Object,
    query: &str,
    last: Option<&str>,
    n: Option<usize>,
    extra: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Page, StorageError> {
    let after = last.unwrap_or("");
    let limit = n.map(|n| signed(n as u64).saturating_add(1));
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&after, &limit];
    params.extend_from_slice(extra);
    let stmt = client.prepare_cached(query).await?;
    let mut items: Vec<String> = client
        .query(&stmt, &params)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let more = n.is_some_and(|n| items.len() > n);
    if let Some(n) = n {
        items.truncate(n);
    }
    Ok(Page { items, more })
}

impl MetadataStore for PgMeta {
    fn linked_blob_size<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> MetaFuture<'a, Option<LinkedBlob>> {
        Box::pin(async move {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(
                    "SELECT b.size, l.linked_at FROM blob_links l JOIN blobs b ON b.digest = l.digest
                     WHERE l.digest = $1 AND l.repo = $2",
                )
                .await?;
            Ok(c.query_opt(&stmt, &[&digest.as_str(), &repo])
                .await?
                .map(|r| LinkedBlob {
                    size: unsigned(r.get(0)),
                    linked_at: unsigned(r.get(1)),
                }))
        })
    }

    fn touch_link<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> MetaFuture<'a, bool> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            hold_gc_off(&tx).await?;
            let now = signed(now_secs());
            let touched = tx
                .execute(
                    "UPDATE blob_links SET linked_at = $3 WHERE digest = $1 AND repo = $2",
                    &[&digest.as_str(), &repo, &now],
                )
                .await?;
            if touched == 0 {
                return Ok(false);
            }
            tx.execute(
                "UPDATE blobs SET touched_at = $2 WHERE digest = $1",
                &[&digest.as_str(), &now],
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn blob_known<'a>(&'a self, digest: &'a Digest) -> MetaFuture<'a, bool> {
        Box::pin(async move {
            let c = self.client().await?;
            let row = c
                .query_opt("SELECT 1 FROM blobs WHERE digest = $1", &[&digest.as_str()])
                .await?;
            Ok(row.is_some())
        })
    }

    fn commit_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: u64,
        upload: Option<&'a str>,
    ) -> MetaFuture<'a, ()> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            hold_gc_off(&tx).await?;
            link(&tx, repo, digest, size, signed(now_secs())).await?;
            if let Some(id) = upload {
                tx.execute("DELETE FROM uploads WHERE id = $1", &[&id])
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn mount<'a>(
        &'a self,
        repo: &'a str,
        from: &'a str,
        digest: &'a Digest,
    ) -> MetaFuture<'a, Option<u64>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            hold_gc_off(&tx).await?;
            let linked = tx
                .query_opt(
                    "SELECT 1 FROM blob_links WHERE digest = $1 AND repo = $2 FOR KEY SHARE",
                    &[&digest.as_str(), &from],
                )
                .await?
                .is_some();
            link_if_stored(tx, repo, digest, linked).await
        })
    }

    fn blob_repositories<'a>(
        &'a self,
        digest: &'a Digest,
        limit: usize,
    ) -> MetaFuture<'a, Vec<String>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT repo FROM blob_links WHERE digest = $1 ORDER BY repo LIMIT $2",
                    &[&digest.as_str(), &signed(limit as u64)],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn mount_any<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> MetaFuture<'a, Option<u64>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            hold_gc_off(&tx).await?;
            let linked = tx
                .query_opt(
                    "SELECT 1 FROM blob_links WHERE digest = $1 LIMIT 1 FOR KEY SHARE",
                    &[&digest.as_str()],
                )
                .await?
                .is_some();
            link_if_stored(tx, repo, digest, linked).await
        })
    }

    fn unlink_blob<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> MetaFuture<'a, bool> {
        Box::pin(async move {
            let c = self.client().await?;
            let removed = c
                .execute(
                    "DELETE FROM blob_links WHERE digest = $1 AND repo = $2",
                    &[&digest.as_str(), &repo],
                )
                .await?;
            Ok(removed > 0)
        })
    }

    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        bytes: &'a [u8],
        parsed: &'a ParsedManifest,
        tags: &'a [String],
    ) -> MetaFuture<'a, ()> {
        Box::pin(async move {
            let now = now_secs();
            let record = ManifestRecord::new(parsed, bytes.len() as u64, now);
            let record =
                serde_json::to_string(&record).map_err(|e| StorageError::Corrupt(e.to_string()))?;
            let now = signed(now);
            let subject = parsed.subject.as_ref().map(Digest::as_str);
            let refs: Vec<&str> = parsed
                .blobs
                .iter()
                .chain(&parsed.children)
                .map(Digest::as_str)
                .collect();

            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            hold_gc_off(&tx).await?;
            check_declared(&tx, repo, parsed).await?;
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO manifests (repo, digest, subject, created_at, record, bytes)
                     VALUES ($1, $2, $3, $4, $5::text::jsonb, $6)
                     ON CONFLICT (repo, digest) DO UPDATE SET subject = EXCLUDED.subject,
                         created_at = EXCLUDED.created_at, record = EXCLUDED.record,
                         bytes = EXCLUDED.bytes",
                )
                .await?;
            tx.execute(
                &stmt,
                &[&repo, &digest.as_str(), &subject, &now, &record, &bytes],
            )
            .await?;
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO manifest_refs (digest, repo, manifest)
                     SELECT unnest($1::text[]), $2, $3 ON CONFLICT DO NOTHING",
                )
                .await?;
            tx.execute(&stmt, &[&refs, &repo, &digest.as_str()]).await?;
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO tags (repo, tag, digest) SELECT $1, unnest($2::text[]), $3
                     ON CONFLICT (repo, tag) DO UPDATE SET digest = EXCLUDED.digest",
                )
                .await?;
            tx.execute(&stmt, &[&repo, &tags, &digest.as_str()]).await?;
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .await?;
            tx.execute(&stmt, &[&repo, &now]).await?;
            let change = Change::Manifest {
                repo: repo.to_owned(),
                digest: digest.to_string(),
                tags: tags.to_vec(),
            };
            notify(&tx, &change).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn resolve<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a Reference,
    ) -> MetaFuture<'a, Option<Digest>> {
        Box::pin(async move {
            let tag = match reference {
                Reference::Digest(d) => return Ok(Some(d.clone())),
                Reference::Tag(t) => t,
            };
            let c = self.client().await?;
            let stmt = c
                .prepare_cached("SELECT digest FROM tags WHERE repo = $1 AND tag = $2")
                .await?;
            c.query_opt(&stmt, &[&repo, &tag.as_str()])
                .await?
                .map(|r| parse_digest(r.get(0)))
                .transpose()
        })
    }

    fn manifest<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        with_bytes: bool,
    ) -> MetaFuture<'a, Option<ManifestWithBytes>> {
        Box::pin(async move {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(
                    "SELECT record::text, CASE WHEN $3 THEN bytes END FROM manifests
                     WHERE repo = $1 AND digest = $2",
                )
                .await?;
            let Some(row) = c
                .query_opt(&stmt, &[&repo, &digest.as_str(), &with_bytes])
                .await?
            else {
                return Ok(None);
            };
            Ok(Some((decode(row.get(0))?, row.get(1))))
        })
    }

    fn delete_tag<'a>(&'a self, repo: &'a str, tag: &'a str) -> MetaFuture<'a, bool> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let removed = tx
                .execute(
                    "DELETE FROM tags WHERE repo = $1 AND tag = $2",
                    &[&repo, &tag],
                )
                .await?;
            if removed == 0 {
                return Ok(false);
            }
            let change = Change::Tags {
                repo: repo.to_owned(),
                tags: vec![tag.to_owned()],
            };
            notify(&tx, &change).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn delete_image<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a Reference,
    ) -> MetaFuture<'a, Option<Deleted>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let digest = match reference {
                Reference::Digest(d) => Some(d.to_string()),
                Reference::Tag(t) => tx
                    .query_opt(
                        "SELECT digest FROM tags WHERE repo = $1 AND tag = $2 FOR UPDATE",
                        &[&repo, &t.as_str()],
                    )
                    .await?
                    .map(|r| r.get(0)),
            };
            let Some(digest) = digest else {
                return Ok(None);
            };
            let Some(tags) = remove_manifest(&tx, repo, &digest).await? else {
                return Ok(None);
            };
            let change = Change::Manifest {
                repo: repo.to_owned(),
                digest: digest.clone(),
                tags: tags.clone(),
            };
            notify(&tx, &change).await?;
            tx.commit().await?;
            Ok(Some(Deleted {
                manifests: vec![digest],
                tags,
            }))
        })
    }

    fn delete_repository<'a>(&'a self, repo: &'a str) -> MetaFuture<'a, Option<Deleted>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let known = tx
                .execute("DELETE FROM repositories WHERE name = $1", &[&repo])
                .await?;
            if known == 0 {
                return Ok(None);
            }
            let column = |rows: Vec<tokio_postgres::Row>| {
                let mut v: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                v.sort();
                v
            };
            let tags = column(
                tx.query("DELETE FROM tags WHERE repo = $1 RETURNING tag", &[&repo])
                    .await?,
            );
            let manifests = column(
                tx.query(
                    "DELETE FROM manifests WHERE repo = $1 RETURNING digest",
                    &[&repo],
                )
                .await?,
            );
            tx.execute("DELETE FROM blob_links WHERE repo = $1", &[&repo])
                .await?;
            notify(&tx, &Change::All).await?;
            tx.commit().await?;
            Ok(Some(Deleted { manifests, tags }))
        })
    }

    fn tags<'a>(
        &'a self,
        repo: &'a str,
        last: Option<&'a str>,
        n: Option<usize>,
    ) -> MetaFuture<'a, Option<Page>> {
        Box::pin(async move {
            let c = self.client().await?;
            let known = c
                .query_opt("SELECT 1 FROM repositories WHERE name = $1", &[&repo])
                .await?;
            if known.is_none() {
                return Ok(None);
            }
            let query = "SELECT tag FROM tags WHERE repo = $3 AND tag > $1 ORDER BY tag LIMIT $2";
            Ok(Some(page(&c, query, last, n, &[&repo]).await?))
        })
    }

    fn catalog<'a>(&'a self, last: Option<&'a str>, n: Option<usize>) -> MetaFuture<'a, Page> {
        Box::pin(async move {
            let c = self.client().await?;
            let query = "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2";
            page(&c, query, last, n, &[]).await
        })
    }

    fn referrers<'a>(
        &'a self,
        repo: &'a str,
        subject: &'a Digest,
        artifact_type: Option<&'a str>,
    ) -> MetaFuture<'a, Vec<(String, ManifestRecord)>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT digest, record::text FROM manifests
                     WHERE repo = $1 AND subject = $2 ORDER BY digest",
                    &[&repo, &subject.as_str()],
                )
                .await?;
            let mut out = Vec::new();
            for row in rows {
                let record = decode(row.get(1))?;
                if artifact_type.is_none_or(|t| record.artifact_type.as_deref() == Some(t)) {
                    out.push((row.get(0), record));
                }
            }
            Ok(out)
        })
    }

    fn create_upload<'a>(&'a self, id: &'a str, repo: &'a str) -> MetaFuture<'a, ()> {
        Box::pin(async move {
            let c = self.client().await?;
            c.execute(
                "INSERT INTO uploads (id, repo, started_at) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET repo = EXCLUDED.repo, started_at = EXCLUDED.started_at",
                &[&id, &repo, &signed(now_secs())],
            )
            .await?;
            Ok(())
        })
    }

    fn upload<'a>(&'a self, id: &'a str) -> MetaFuture<'a, Option<(String, u64)>> {
        Box::pin(async move {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached("SELECT repo, started_at FROM uploads WHERE id = $1")
                .await?;
            Ok(c.query_opt(&stmt, &[&id])
                .await?
                .map(|r| (r.get(0), unsigned(r.get(1)))))
        })
    }

    fn remove_upload<'a>(&'a self, id: &'a str) -> MetaFuture<'a, bool> {
        Box::pin(async move {
            let c = self.client().await?;
            let removed = c
                .execute("DELETE FROM uploads WHERE id = $1", &[&id])
                .await?;
            Ok(removed > 0)
        })
    }

    fn uploads(&self) -> MetaFuture<'_, Vec<(String, String, u64)>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query("SELECT id, repo, started_at FROM uploads", &[])
                .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), unsigned(r.get(2))))
                .collect())
        })
    }

    fn upload_state<'a>(&'a self, id: &'a str) -> MetaFuture<'a, Option<UploadState>> {
        Box::pin(async move {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(
                    "SELECT state, version, updated_at FROM upload_states WHERE id = $1",
                )
                .await?;
            Ok(c.query_opt(&stmt, &[&id]).await?.map(|r| UploadState {
                bytes: r.get(0),
                version: unsigned(r.get(1)),
                updated_at: unsigned(r.get(2)),
            }))
        })
    }

    fn set_upload_state<'a>(
        &'a self,
        id: &'a str,
        bytes: &'a [u8],
        expected: u64,
    ) -> MetaFuture<'a, bool> {
        Box::pin(async move {
            let c = self.client().await?;
            let now = signed(now_secs());
            let next = signed(expected.saturating_add(1));
            // One statement either way, so the version check and the write are atomic:
            // a second creator hits the primary key and does nothing.
            let changed = if expected == 0 {
                c.execute(
                    "INSERT INTO upload_states (id, version, updated_at, state)
                     VALUES ($1, 1, $2, $3) ON CONFLICT (id) DO NOTHING",
                    &[&id, &now, &bytes],
                )
                .await?
            } else {
                let stmt = c
                    .prepare_cached(
                        "UPDATE upload_states SET version = $2, updated_at = $3, state = $4
                         WHERE id = $1 AND version = $5",
                    )
                    .await?;
                c.execute(&stmt, &[&id, &next, &now, &bytes, &signed(expected)])
                    .await?
            };
            Ok(changed == 1)
        })
    }

    fn remove_upload_state<'a>(&'a self, id: &'a str) -> MetaFuture<'a, bool> {
        Box::pin(async move {
            let c = self.client().await?;
            let removed = c
                .execute("DELETE FROM upload_states WHERE id = $1", &[&id])
                .await?;
            Ok(removed > 0)
        })
    }

    fn upload_states(&self) -> MetaFuture<'_, Vec<(String, u64)>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query("SELECT id, updated_at FROM upload_states", &[])
                .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), unsigned(r.get(1))))
                .collect())
        })
    }

    fn gc(&self, cutoff: u64, dry_run: bool) -> MetaFuture<'_, GcReport> {
        Box::pin(async move {
            let cutoff = signed(cutoff);
            let mut report = GcReport::default();
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            // Exclusive: waits for the writes in flight, holds new ones until the end.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&GC_LOCK])
                .await?;
            // One statement sees the state before it, so a manifest whose subject goes
            // in this round is judged again in the next (as a released index child is).
            loop {
                let removed = tx
                    .execute(
                        "DELETE FROM manifests m WHERE m.created_at <= $1
                         AND NOT EXISTS (SELECT 1 FROM tags t
                                         WHERE t.repo = m.repo AND t.digest = m.digest)
                         AND NOT EXISTS (SELECT 1 FROM manifest_refs r
                                         WHERE r.digest = m.digest AND r.repo = m.repo)
                         AND NOT (m.subject IS NOT NULL AND EXISTS (
                             SELECT 1 FROM manifests s WHERE s.repo = m.repo AND s.digest = m.subject))",
                        &[&cutoff],
                    )
                    .await?;
                if removed == 0 {
                    break;
                }
                report.manifests += usize::try_from(removed).unwrap_or(usize::MAX);
            }
            let links = tx
                .execute(
                    "DELETE FROM blob_links l WHERE l.linked_at <= $1
                     AND NOT EXISTS (SELECT 1 FROM manifest_refs r
                                     WHERE r.digest = l.digest AND r.repo = l.repo)",
                    &[&cutoff],
                )
                .await?;
            report.links = usize::try_from(links).unwrap_or(usize::MAX);
            let blobs = tx
                .query(
                    "DELETE FROM blobs b WHERE b.touched_at <= $1
                     AND NOT EXISTS (SELECT 1 FROM blob_links l WHERE l.digest = b.digest)
                     AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.digest = b.digest)
                     RETURNING digest, size",
                    &[&cutoff],
                )
                .await?;
            for row in blobs {
                report.blobs.push(parse_digest(row.get(0))?);
                report.bytes = report.bytes.saturating_add(unsigned(row.get(1)));
            }
            report.blobs.sort();
            let repos = tx
                .execute(
                    "DELETE FROM repositories p
                     WHERE NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo = p.name)
                     AND NOT EXISTS (SELECT 1 FROM blob_links l WHERE l.repo = p.name)",
                    &[],
                )
                .await?;
            report.repositories = usize::try_from(repos).unwrap_or(usize::MAX);
            if report.manifests > 0 {
                notify(&tx, &Change::All).await?;
            }
            if dry_run {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
            Ok(report)
        })
    }

    fn lock_blob<'a>(&'a self, digest: &'a Digest, wait: bool) -> MetaFuture<'a, Option<BlobLock>> {
        Box::pin(async move {
            let client = self.locks.get().await?;
            let key = blob_lock_key(digest);
            let locked = async {
                client.batch_execute("BEGIN").await?;
                if wait {
                    client
                        .execute("SELECT pg_advisory_xact_lock($1)", &[&key])
                        .await?;
                    return Ok(true);
                }
                let row = client
                    .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&key])
                    .await?;
                Ok::<bool, tokio_postgres::Error>(row.get(0))
            }
            .await;
            // Dropping the guard ends the transaction, however far it got.
            let guard = PgBlobLock(Some(client));
            Ok(locked?.then(|| Box::new(guard) as BlobLock))
        })
    }

    fn watch(&self, sink: Arc<dyn ChangeSink>) -> Option<BoxFuture<'static, ()>> {
        let mut config = self.config.clone();
        // Named apart from the pool's connections, for operators (and tests) to find it.
        config.application_name(LISTENER_NAME);
        Some(Box::pin(pg::listen(
            config,
            CHANNEL,
            Arc::new(Changes(sink)),
        )))
    }
}
