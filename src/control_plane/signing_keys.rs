//! The records of the token-signing keys: kid, creation time, retirement time and the
//! private key sealed by the trust key-encryption key, in `control.redb` (table
//! `signing_keys`) or in PostgreSQL (table `signing_keys`). Which key signs and which
//! verify is `gateway::signing_keys`' business; this module stores and announces.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{ControlDb, ControlStoreError, blocking, redb_err};
use crate::identity::UnixSeconds;

/// The notification channel of key changes.
pub const CHANNEL: &str = "portcullis_control_keys";
/// kid → [`StoredKey`] as JSON.
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("signing_keys");
/// Serializes first-key creation and rotations across gateways ("portcull" + 0x30).
const LOCK: i64 = 0x706f_7274_6375_6c30;

/// One key as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    pub created: UnixSeconds,
    /// When a newer key took over signing; it still verifies for a while.
    pub retired: Option<UnixSeconds>,
    /// The PKCS#8 DER private key sealed by the key-encryption key.
    pub sealed: Vec<u8>,
}

/// The signing keys' table in the control plane.
#[derive(Clone, Debug)]
pub struct SigningKeyStore {
    db: ControlDb,
}

impl SigningKeyStore {
    pub fn new(db: ControlDb) -> SigningKeyStore {
        SigningKeyStore { db }
    }

    pub fn db(&self) -> &ControlDb {
        &self.db
    }

    /// Every stored key, oldest first.
    pub async fn list(&self) -> Result<Vec<StoredKey>, ControlStoreError> {
        let mut keys = match &self.db {
            ControlDb::Embedded(db) => {
                let db = db.clone();
                blocking(move || {
                    let txn = db.begin_read().map_err(redb_err)?;
                    let table = match txn.open_table(TABLE) {
                        Ok(table) => table,
                        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                        Err(e) => return Err(redb_err(e)),
                    };
                    let mut keys = Vec::new();
                    for entry in table.iter().map_err(redb_err)? {
                        let (kid, value) = entry.map_err(redb_err)?;
                        keys.push(decode(kid.value(), value.value())?);
                    }
                    Ok(keys)
                })
                .await?
            }
            ControlDb::Postgres(pg) => pg
                .pool()
                .get()
                .await?
                .query(
                    "SELECT kid, created_at, retired_at, sealed_key FROM signing_keys",
                    &[],
                )
                .await?
                .iter()
                .map(|row| StoredKey {
                    kid: row.get(0),
                    created: row.get(1),
                    retired: row.get(2),
                    sealed: row.get(3),
                })
                .collect(),
        };
        // Within one second, a key retired earlier is the older one.
        keys.sort_by_key(|k| {
            (
                k.created,
                k.retired.unwrap_or(UnixSeconds::MAX),
                k.kid.clone(),
            )
        });
        Ok(keys)
    }

    /// Stores `key` if there is no key yet (the first gateway to start creates the
    /// ring; the others find it). Whether it was stored.
    pub async fn create_first(&self, key: StoredKey) -> Result<bool, ControlStoreError> {
        self.write(None, None, key, true).await
    }

    /// Makes `key` the signing key: every key still signing is retired at `now`, then
    /// keys retired before `drop_retired_before` are deleted (all of them with
    /// `UnixSeconds::MAX`), in one transaction, announced to every gateway.
    pub async fn rotate(
        &self,
        key: StoredKey,
        now: UnixSeconds,
        drop_retired_before: UnixSeconds,
    ) -> Result<(), ControlStoreError> {
        self.write(Some(now), Some(drop_retired_before), key, false)
            .await
            .map(|_| ())
    }

    /// One write: retire (at `retire_at`, if given) the keys still signing, then drop
    /// keys retired before `drop_before`, insert `key` — unless `only_if_empty` and keys
    /// exist.
    async fn write(
        &self,
        retire_at: Option<UnixSeconds>,
        drop_before: Option<UnixSeconds>,
        key: StoredKey,
        only_if_empty: bool,
    ) -> Result<bool, ControlStoreError> {
        match &self.db {
            ControlDb::Embedded(db) => {
                let db = db.clone();
                blocking(move || {
                    let txn = db.begin_write().map_err(redb_err)?;
                    {
                        let mut table = txn.open_table(TABLE).map_err(redb_err)?;
                        let mut existing = Vec::new();
                        for entry in table.iter().map_err(redb_err)? {
                            let (kid, value) = entry.map_err(redb_err)?;
                            existing.push(decode(kid.value(), value.value())?);
                        }
                        if only_if_empty && !existing.is_empty() {
                            return Ok(false);
                        }
                        for mut old in existing {
                            if old.retired.is_none() {
                                old.retired = retire_at;
                            }
                            match old.retired {
                                Some(at) if drop_before.is_some_and(|cut| at < cut) => {
                                    table.remove(old.kid.as_str()).map_err(redb_err)?;
                                }
                                _ => {
                                    table
                                        .insert(old.kid.as_str(), encode(&old)?.as_slice())
                                        .map_err(redb_err)?;
                                }
                            }
                        }
                        table
                            .insert(key.kid.as_str(), encode(&key)?.as_slice())
                            .map_err(redb_err)?;
                    }
                    txn.commit().map_err(redb_err)?;
                    Ok(true)
                })
                .await
            }
            ControlDb::Postgres(pg) => {
                let mut client = pg.pool().get().await?;
                let tx = client.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
                    .await?;
                if only_if_empty {
                    let count: i64 = tx
                        .query_one("SELECT count(*) FROM signing_keys", &[])
                        .await?
                        .get(0);
                    if count > 0 {
                        return Ok(false);
                    }
                }
                if let Some(at) = retire_at {
                    tx.execute(
                        "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL",
                        &[&at],
                    )
                    .await?;
                }
                if let Some(cut) = drop_before {
                    tx.execute("DELETE FROM signing_keys WHERE retired_at < $1", &[&cut])
                        .await?;
                }
                tx.execute(
                    "INSERT INTO signing_keys (kid, created_at, retired_at, sealed_key) \
                     VALUES ($1, $2, $3, $4)",
                    &[&key.kid, &key.created, &key.retired, &key.sealed],
                )
                .await?;
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &key.kid])
                    .await?;
                tx.commit().await?;
                Ok(true)
            }
        }
    }
}

/// Replaces every key's sealed bytes in `control.redb` by what `reseal` makes of them
/// (`portcullis trust rotate-kek`, offline), in one transaction; how many.
pub fn reseal_embedded<E: From<ControlStoreError>>(
    db: &super::EmbeddedDb,
    mut reseal: impl FnMut(&StoredKey) -> Result<Vec<u8>, E>,
) -> Result<usize, E> {
    let txn = db.begin_write().map_err(redb_err)?;
    let mut count = 0;
    {
        let mut table = txn.open_table(TABLE).map_err(redb_err)?;
        let mut keys = Vec::new();
        for entry in table.iter().map_err(redb_err)? {
            let (kid, value) = entry.map_err(redb_err)?;
            keys.push(decode(kid.value(), value.value())?);
        }
        for mut key in keys {
            key.sealed = reseal(&key)?;
            table
                .insert(key.kid.as_str(), encode(&key)?.as_slice())
                .map_err(redb_err)?;
            count += 1;
        }
    }
    txn.commit().map_err(redb_err)?;
    Ok(count)
}

fn encode(key: &StoredKey) -> Result<Vec<u8>, ControlStoreError> {
    serde_json::to_vec(key).map_err(|e| ControlStoreError::Corrupt(format!("`{}`: {e}", key.kid)))
}

fn decode(kid: &str, bytes: &[u8]) -> Result<StoredKey, ControlStoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ControlStoreError::Corrupt(format!("signing key `{kid}`: {e}")))
}
