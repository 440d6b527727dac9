//! Trust data in the control-plane PostgreSQL database (tables `trust_*` of
//! `control_plane/migrations/0002_trust.sql`), shared by every gateway: the same records
//! as the redb [`store`](super::store), written one PostgreSQL transaction per change.
//!
//! Writes of one GUN are serialized by the database: a write takes a transaction-level
//! advisory lock on the GUN's hash, then reads the GUN's state, lets the caller validate
//! and sign against it, and stores the result, all in one transaction; a second gateway
//! publishing the same GUN waits for the lock and then validates against what the first
//! stored (notary's `ErrOldVersion` for a version already taken). Writers hold the switch
//! row (`trust_meta`) `FOR SHARE`, so a disable waits for them and they see it after.
//! Each committed change notifies [`CHANNEL`] with its GUN (or [`ALL`] for the switch),
//! so other gateways drop what they cached.

use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::store::{Change, GunData, GunWrite, KekParams, StoredFile, TrustStoreError};
use crate::control_plane::PgControl;

/// The notification channel of trust changes; the payload is the GUN.
pub const CHANNEL: &str = "portcullis_control_trust";
/// The payload of a change of the switch (every GUN's data may have gone): no GUN has
/// an empty name.
pub const ALL: &str = "";

/// The role whose writes the changefeed records (as the redb store does).
const TIMESTAMP: &str = "timestamp";

fn pg_err(e: impl std::fmt::Display) -> TrustStoreError {
    TrustStoreError::Postgres(e.to_string())
}

/// The advisory lock of one GUN's writes: the first 8 bytes of a hash of it, under a
/// prefix of its own so no other lock of the control plane shares the key space.
fn gun_lock(gun: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"portcullis trust gun\0")
        .chain_update(gun.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Versions are `u64` in TUF and `bigint` here; validation refuses any beyond
/// `metadata::MAX_VERSION` (`i64::MAX`), so this never fails for a validated file.
fn version_param(version: u64) -> Result<i64, TrustStoreError> {
    i64::try_from(version).map_err(|_| TrustStoreError::Corrupt(format!("version {version}")))
}

fn stored_file(role: String, row: &Row) -> Result<StoredFile, TrustStoreError> {
    let version: i64 = row.try_get("version").map_err(pg_err)?;
    let bytes: Vec<u8> = row.try_get("bytes").map_err(pg_err)?;
    Ok(StoredFile {
        role,
        version: u64::try_from(version).map_err(|_| TrustStoreError::Corrupt(role_of(row)))?,
        bytes: Bytes::from(bytes),
        stored_at: row.try_get("stored_at").map_err(pg_err)?,
    })
}

fn role_of(row: &Row) -> String {
    row.try_get::<_, String>("role").unwrap_or_default()
}

/// The trust tables of a control-plane database; cheap to clone.
#[derive(Clone)]
pub struct PgTrustStore {
    control: Arc<PgControl>,
}

impl std::fmt::Debug for PgTrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTrustStore")
            .field("url", &self.control.url())
            .finish()
    }
}

impl PgTrustStore {
    pub fn new(control: Arc<PgControl>) -> PgTrustStore {
        PgTrustStore { control }
    }

    pub fn control(&self) -> &Arc<PgControl> {
        &self.control
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, TrustStoreError> {
        self.control.pool().get().await.map_err(pg_err)
    }

    /// The key-encryption key's salt and check value, once set up.
    pub async fn kek_params(&self) -> Result<Option<KekParams>, TrustStoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT name, value FROM trust_kek", &[])
            .await
            .map_err(pg_err)?;
        Ok(kek_params(&rows))
    }

    /// The key-encryption key's salt and check value; `salt` and `check` are stored first
    /// when none are (the first gateway to start sets them up; the others use its).
    pub async fn kek_params_or_init(
        &self,
        salt: &[u8],
        check: &[u8],
    ) -> Result<KekParams, TrustStoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO trust_kek (name, value) VALUES ('salt', $1), ('check', $2)
             ON CONFLICT (name) DO NOTHING",
            &[&salt, &check],
        )
        .await
        .map_err(pg_err)?;
        let rows = tx
            .query("SELECT name, value FROM trust_kek", &[])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        kek_params(&rows).ok_or_else(|| TrustStoreError::Corrupt("trust_kek".into()))
    }

    /// The switch and the last change id.
    pub async fn status(&self) -> Result<(bool, i64), TrustStoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT m.content_trust, c.last_change
                 FROM trust_meta m, trust_change_counter c",
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok((row.get(0), row.get(1)))
    }

    /// The last change id, and the GUNs changed after `change_id` up to it.
    pub async fn changed_since(
        &self,
        change_id: i64,
    ) -> Result<(i64, Vec<String>), TrustStoreError> {
        let client = self.client().await?;
        // The counter first: ids commit in order, so every change up to it is visible.
        let last: i64 = client
            .query_one("SELECT last_change FROM trust_change_counter", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        let rows = client
            .query(
                "SELECT DISTINCT gun FROM trust_changes WHERE id > $1 AND id <= $2",
                &[&change_id, &last],
            )
            .await
            .map_err(pg_err)?;
        Ok((last, rows.into_iter().map(|r| r.get(0)).collect()))
    }

    /// `gun`'s current files, and its keys when `keys`.
    pub async fn gun(&self, gun: &str, keys: bool) -> Result<GunData, TrustStoreError> {
        let client = self.client().await?;
        load_gun(&client, gun, keys).await
    }

    /// `role` of `gun` at `version`.
    pub async fn version(
        &self,
        gun: &str,
        role: &str,
        version: u64,
    ) -> Result<Option<StoredFile>, TrustStoreError> {
        let Ok(version) = i64::try_from(version) else {
            return Ok(None);
        };
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT version, stored_at, bytes FROM trust_files
                 WHERE gun = $1 AND role = $2 AND version = $3",
                &[&gun, &role, &version],
            )
            .await
            .map_err(pg_err)?;
        row.map(|r| stored_file(role.to_owned(), &r)).transpose()
    }

    /// The file of `gun` whose sha256 (hex, lowercase) is `sha256`.
    pub async fn by_checksum(
        &self,
        gun: &str,
        sha256: &str,
    ) -> Result<Option<StoredFile>, TrustStoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT role, version, stored_at, bytes FROM trust_files
                 WHERE gun = $1 AND sha256 = $2 ORDER BY version DESC LIMIT 1",
                &[&gun, &sha256],
            )
            .await
            .map_err(pg_err)?;
        row.map(|r| stored_file(role_of(&r), &r)).transpose()
    }

    /// The GUNs with trust data whose part after the first `/` is `repository`, sorted
    /// (a superset of the ones `gun_repository` names it: the caller checks).
    pub async fn guns_of(&self, repository: &str) -> Result<Vec<String>, TrustStoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT gun FROM trust_current
                 WHERE substr(gun, strpos(gun, '/') + 1) = $1 ORDER BY gun",
                &[&repository],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// As the redb store's `changes_of`: records after `change_id` (forward), or the
    /// latest before it (backward when `records` or `change_id` is negative), at most
    /// `|records|` of the GUNs `wanted` accepts, oldest first. Read in pages of that size
    /// until full or the feed ends.
    pub async fn changes_of(
        &self,
        mut wanted: impl FnMut(&str) -> bool,
        change_id: i64,
        records: i64,
    ) -> Result<Vec<Change>, TrustStoreError> {
        let client = self.client().await?;
        let limit = usize::try_from(records.unsigned_abs()).unwrap_or(usize::MAX);
        let page = i64::try_from(limit).unwrap_or(i64::MAX);
        let backward = records < 0 || change_id < 0;
        let mut cursor = if backward {
            Some(change_id).filter(|id| *id > 0).unwrap_or(i64::MAX)
        } else {
            change_id.max(0)
        };
        let query = if backward {
            "SELECT id, created_at, gun, version, sha256, category FROM trust_changes
             WHERE id < $1 ORDER BY id DESC LIMIT $2"
        } else {
            "SELECT id, created_at, gun, version, sha256, category FROM trust_changes
             WHERE id > $1 ORDER BY id LIMIT $2"
        };
        let mut out = Vec::new();
        while out.len() < limit {
            let rows = client
                .query(query, &[&cursor, &page])
                .await
                .map_err(pg_err)?;
            let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) == page;
            for row in &rows {
                let id: i64 = row.get("id");
                cursor = id;
                let gun: String = row.get("gun");
                if !wanted(&gun) {
                    continue;
                }
                let version: i64 = row.get("version");
                out.push(Change {
                    id: id.to_string(),
                    created_at: row.get("created_at"),
                    gun,
                    version: u64::try_from(version).unwrap_or_default(),
                    sha256: row.get("sha256"),
                    category: row.get("category"),
                });
                if out.len() == limit {
                    break;
                }
            }
            if !full {
                break;
            }
        }
        if backward {
            out.reverse();
        }
        Ok(out)
    }

    /// Runs `write` on `gun`'s state (current files and keys) under the GUN's lock, with
    /// content trust enabled ([`TrustStoreError::Disabled`] otherwise), and stores what it
    /// returns in the same transaction. Returns its value and whether files changed.
    pub async fn transact<T, E: From<TrustStoreError>>(
        &self,
        gun: &str,
        now: time::OffsetDateTime,
        write: impl FnOnce(&GunData) -> Result<(GunWrite, T), E>,
    ) -> Result<(T, bool), E> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        lock_gun(&tx, gun).await?;
        let data = load_gun(&tx, gun, true).await?;
        let (changes, value) = write(&data)?;
        if changes.is_empty() {
            return Ok((value, false));
        }
        apply(&tx, gun, &data, &changes, now).await?;
        let changed = !changes.files.is_empty();
        if changed {
            notify(&tx, gun).await?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok((value, changed))
    }

    /// Deletes all of `gun`'s trust data and keys, with a changefeed deletion.
    pub async fn delete(
        &self,
        gun: &str,
        now: time::OffsetDateTime,
    ) -> Result<(), TrustStoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        lock_gun(&tx, gun).await?;
        delete_gun(&tx, gun, now).await?;
        notify(&tx, gun).await?;
        tx.commit().await.map_err(pg_err)
    }

    /// Sets the switch; disabling deletes every GUN's data (a deletion record each) and
    /// every key, in the same transaction.
    pub async fn set_enabled(
        &self,
        enabled: bool,
        now: time::OffsetDateTime,
    ) -> Result<(), TrustStoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // Waits for every writer holding the row FOR SHARE.
        tx.execute("UPDATE trust_meta SET content_trust = $1", &[&enabled])
            .await
            .map_err(pg_err)?;
        if !enabled {
            let rows = tx
                .query("SELECT DISTINCT gun FROM trust_current ORDER BY gun", &[])
                .await
                .map_err(pg_err)?;
            for row in rows {
                delete_gun(&tx, row.get(0), now).await?;
            }
            tx.execute("DELETE FROM trust_server_keys", &[])
                .await
                .map_err(pg_err)?;
        }
        notify(&tx, ALL).await?;
        tx.commit().await.map_err(pg_err)
    }
}

/// (salt, check) among `trust_kek` rows.
fn kek_params(rows: &[Row]) -> Option<KekParams> {
    let get = |name: &str| {
        rows.iter()
            .find(|r| r.get::<_, &str>("name") == name)
            .map(|r| r.get::<_, Vec<u8>>("value"))
    };
    get("salt").zip(get("check"))
}

/// Takes `gun`'s write lock and [`lock_enabled`], both until the transaction ends.
async fn lock_gun(
    tx: &deadpool_postgres::Transaction<'_>,
    gun: &str,
) -> Result<(), TrustStoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&gun_lock(gun)])
        .await
        .map_err(pg_err)?;
    lock_enabled(tx).await
}

/// Holds the switch row FOR SHARE until the transaction ends; refuses when it is off.
async fn lock_enabled(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), TrustStoreError> {
    let row = tx
        .query_one("SELECT content_trust FROM trust_meta FOR SHARE", &[])
        .await
        .map_err(pg_err)?;
    if row.get::<_, bool>(0) {
        Ok(())
    } else {
        Err(TrustStoreError::Disabled)
    }
}

async fn load_gun(
    client: &impl deadpool_postgres::GenericClient,
    gun: &str,
    keys: bool,
) -> Result<GunData, TrustStoreError> {
    let params: [&(dyn ToSql + Sync); 1] = [&gun];
    let files = client.query(
        "SELECT c.role, f.version, f.stored_at, f.bytes
         FROM trust_current c JOIN trust_files f USING (gun, role, version)
         WHERE c.gun = $1",
        &params,
    );
    // Pipelined with the files' query on the same connection: one round trip.
    let key_rows = async {
        if keys {
            client
                .query(
                    "SELECT role, key_id, sealed FROM trust_server_keys WHERE gun = $1",
                    &params,
                )
                .await
        } else {
            Ok(Vec::new())
        }
    };
    let (files, key_rows) = futures_util::try_join!(files, key_rows).map_err(pg_err)?;
    let mut data = GunData::default();
    for row in files {
        let role = role_of(&row);
        data.current.insert(role.clone(), stored_file(role, &row)?);
    }
    for row in key_rows {
        data.keys
            .insert((row.get("role"), row.get("key_id")), row.get("sealed"));
    }
    Ok(data)
}

/// Stores `write` for `gun`, whose state under the lock is `data`.
async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    gun: &str,
    data: &GunData,
    write: &GunWrite,
    now: time::OffsetDateTime,
) -> Result<(), TrustStoreError> {
    let stored_at = now.unix_timestamp();
    let mut change = None;
    for file in &write.files {
        let role = file.role.as_str();
        if let Some(stored) = data
            .current
            .get(role)
            .map(|f| f.version)
            .filter(|s| *s >= file.version)
        {
            return Err(TrustStoreError::OldVersion {
                gun: gun.to_owned(),
                role: role.to_owned(),
                stored,
                new: file.version,
            });
        }
        let version = version_param(file.version)?;
        let sha256 = hex::encode(Sha256::digest(&file.bytes));
        tx.execute(
            "INSERT INTO trust_files (gun, role, version, stored_at, sha256, bytes)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&gun, &role, &version, &stored_at, &sha256, &&file.bytes[..]],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            "INSERT INTO trust_current (gun, role, version) VALUES ($1, $2, $3)
             ON CONFLICT (gun, role) DO UPDATE SET version = EXCLUDED.version",
            &[&gun, &role, &version],
        )
        .await
        .map_err(pg_err)?;
        if role == TIMESTAMP {
            change = Some((version, sha256));
        }
    }
    for (role, id, sealed) in &write.keys {
        tx.execute(
            "INSERT INTO trust_server_keys (gun, role, key_id, sequence, sealed)
             SELECT $1, $2, $3, coalesce(max(sequence) + 1, 0), $4
             FROM trust_server_keys WHERE gun = $1 AND role = $2",
            &[&gun, role, id, sealed],
        )
        .await
        .map_err(pg_err)?;
    }
    for (role, keep, pending) in &write.retain {
        let pending = i64::try_from(*pending).unwrap_or(i64::MAX);
        tx.execute(
            "DELETE FROM trust_server_keys
             WHERE gun = $1 AND role = $2 AND key_id <> ALL($3) AND key_id NOT IN (
                 SELECT key_id FROM trust_server_keys
                 WHERE gun = $1 AND role = $2 AND key_id <> ALL($3)
                 ORDER BY sequence DESC LIMIT $4)",
            &[&gun, role, keep, &pending],
        )
        .await
        .map_err(pg_err)?;
    }
    if let Some((version, sha256)) = change {
        record_change(tx, gun, version, &sha256, "update", now).await?;
    }
    Ok(())
}

async fn delete_gun(
    tx: &deadpool_postgres::Transaction<'_>,
    gun: &str,
    now: time::OffsetDateTime,
) -> Result<(), TrustStoreError> {
    let params: [&(dyn ToSql + Sync); 1] = [&gun];
    for table in ["trust_current", "trust_files", "trust_server_keys"] {
        tx.execute(&format!("DELETE FROM {table} WHERE gun = $1"), &params)
            .await
            .map_err(pg_err)?;
    }
    record_change(tx, gun, 0, "", "deletion", now).await
}

/// A changefeed record with the next change id; the counter row stays locked until the
/// transaction ends, so ids commit in order.
async fn record_change(
    tx: &deadpool_postgres::Transaction<'_>,
    gun: &str,
    version: i64,
    sha256: &str,
    category: &str,
    now: time::OffsetDateTime,
) -> Result<(), TrustStoreError> {
    let id: i64 = tx
        .query_one(
            "UPDATE trust_change_counter SET last_change = last_change + 1
             RETURNING last_change",
            &[],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    let created_at = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    tx.execute(
        "INSERT INTO trust_changes (id, created_at, gun, version, sha256, category)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&id, &created_at, &gun, &version, &sha256, &category],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// Tells every gateway, at commit, that `gun` (or with [`ALL`], everything) changed.
async fn notify(
    tx: &deadpool_postgres::Transaction<'_>,
    payload: &str,
) -> Result<(), TrustStoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await
        .map_err(pg_err)?;
    Ok(())
}

#[cfg(test)]
mod tests;
