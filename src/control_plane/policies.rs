//! The pushed policy sets (`portcullis policy push`): every push or rollback stores a
//! new version (who, when, a sha256 of the set, the files), in `control.redb` (table
//! `policy_versions`) or PostgreSQL (table `policy_versions`); the highest version is
//! the set in force. Validation is the policy engine's (`policy::pushed`), before a
//! version is stored.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{ControlDb, ControlStoreError, blocking, redb_err};
use crate::identity::UnixSeconds;
use crate::policy::PolicyFile;

/// The notification channel of new policy versions.
pub const CHANNEL: &str = "portcullis_control_policies";
/// version → [`PolicyVersion`] as JSON.
const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("policy_versions");
/// Serializes version numbering across gateways ("portcull" + 0x31).
const LOCK: i64 = 0x706f_7274_6375_6c31;

/// One stored version of the pushed set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PolicyVersion {
    pub version: i64,
    pub created: UnixSeconds,
    pub author: String,
    pub message: Option<String>,
    /// Hex SHA-256 of the files as JSON (`[{"name","text"}]`, sorted by name).
    pub sha256: String,
    /// The version a rollback restored.
    pub rollback_of: Option<i64>,
    /// Sorted by name.
    pub files: Vec<PolicyFile>,
}

/// A version to store; its number is the next one.
#[derive(Clone, Debug)]
pub struct NewVersion {
    pub created: UnixSeconds,
    pub author: String,
    pub message: Option<String>,
    pub rollback_of: Option<i64>,
    pub files: Vec<PolicyFile>,
}

/// The policy versions' table in the control plane.
#[derive(Clone, Debug)]
pub struct PolicyStore {
    db: ControlDb,
}

const COLUMNS: &str = "version, created_at, author, message, sha256, rollback_of, files::text";

impl PolicyStore {
    pub fn new(db: ControlDb) -> PolicyStore {
        PolicyStore { db }
    }

    pub fn db(&self) -> &ControlDb {
        &self.db
    }

    /// The number of the version in force (0: nothing was ever pushed).
    pub async fn current_version(&self) -> Result<i64, ControlStoreError> {
        match &self.db {
            ControlDb::Embedded(_) => Ok(self.current().await?.map_or(0, |v| v.version)),
            ControlDb::Postgres(pg) => Ok(pg
                .pool()
                .get()
                .await?
                .query_one(
                    "SELECT coalesce(max(version), 0)::bigint FROM policy_versions",
                    &[],
                )
                .await?
                .get(0)),
        }
    }

    /// The version in force, if any was pushed.
    pub async fn current(&self) -> Result<Option<PolicyVersion>, ControlStoreError> {
        self.query(Query::Current).await.map(|mut v| v.pop())
    }

    /// One version.
    pub async fn get(&self, version: i64) -> Result<Option<PolicyVersion>, ControlStoreError> {
        self.query(Query::One(version)).await.map(|mut v| v.pop())
    }

    /// Every version, oldest first.
    pub async fn history(&self) -> Result<Vec<PolicyVersion>, ControlStoreError> {
        self.query(Query::All).await
    }

    async fn query(&self, query: Query) -> Result<Vec<PolicyVersion>, ControlStoreError> {
        match &self.db {
            ControlDb::Embedded(db) => {
                let db = db.clone();
                blocking(move || {
                    let txn = db.begin_read().map_err(redb_err)?;
                    let table = match txn.open_table(TABLE) {
                        Ok(table) => table,
                        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                        Err(e) => return Err(redb_err(e)),
                    };
                    let entries: Vec<_> = match query {
                        Query::All => table.iter().map_err(redb_err)?.collect(),
                        Query::Current => table
                            .last()
                            .map_err(redb_err)?
                            .into_iter()
                            .map(Ok)
                            .collect(),
                        Query::One(v) => match u64::try_from(v) {
                            Ok(v) => table.range(v..=v).map_err(redb_err)?.collect(),
                            Err(_) => Vec::new(),
                        },
                    };
                    entries
                        .into_iter()
                        .map(|entry| {
                            let (version, value) = entry.map_err(redb_err)?;
                            decode(version.value(), value.value())
                        })
                        .collect()
                })
                .await
            }
            ControlDb::Postgres(pg) => {
                let client = pg.pool().get().await?;
                let rows = match query {
                    Query::All => {
                        client
                            .query(
                                &format!("SELECT {COLUMNS} FROM policy_versions ORDER BY version"),
                                &[],
                            )
                            .await?
                    }
                    Query::Current => {
                        client
                            .query(
                                &format!(
                                    "SELECT {COLUMNS} FROM policy_versions \
                                     ORDER BY version DESC LIMIT 1"
                                ),
                                &[],
                            )
                            .await?
                    }
                    Query::One(v) => {
                        client
                            .query(
                                &format!(
                                    "SELECT {COLUMNS} FROM policy_versions WHERE version = $1"
                                ),
                                &[&v],
                            )
                            .await?
                    }
                };
                rows.iter()
                    .map(|row| {
                        let version: i64 = row.get(0);
                        let files: String = row.get(6);
                        Ok(PolicyVersion {
                            version,
                            created: row.get(1),
                            author: row.get(2),
                            message: row.get(3),
                            sha256: row.get(4),
                            rollback_of: row.get(5),
                            files: serde_json::from_str(&files).map_err(|e| {
                                ControlStoreError::Corrupt(format!("policy version {version}: {e}"))
                            })?,
                        })
                    })
                    .collect()
            }
        }
    }

    /// Stores `new` as the next version, in force from now on (announced to every
    /// gateway); the stored version.
    pub async fn append(&self, new: NewVersion) -> Result<PolicyVersion, ControlStoreError> {
        let mut files = new.files;
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let files_json = serde_json::to_string(&files)
            .map_err(|e| ControlStoreError::Corrupt(format!("policy files: {e}")))?;
        let mut stored = PolicyVersion {
            version: 0,
            created: new.created,
            author: new.author,
            message: new.message,
            sha256: sha256_hex(files_json.as_bytes()),
            rollback_of: new.rollback_of,
            files,
        };
        match &self.db {
            ControlDb::Embedded(db) => {
                let db = db.clone();
                blocking(move || {
                    let txn = db.begin_write().map_err(redb_err)?;
                    {
                        let mut table = txn.open_table(TABLE).map_err(redb_err)?;
                        let last = table
                            .last()
                            .map_err(redb_err)?
                            .map_or(0, |(k, _)| k.value());
                        let next = last + 1;
                        stored.version = i64::try_from(next)
                            .map_err(|_| ControlStoreError::Corrupt("policy version".into()))?;
                        let bytes = serde_json::to_vec(&stored).map_err(|e| {
                            ControlStoreError::Corrupt(format!("policy version {next}: {e}"))
                        })?;
                        table.insert(next, bytes.as_slice()).map_err(redb_err)?;
                    }
                    txn.commit().map_err(redb_err)?;
                    Ok(stored)
                })
                .await
            }
            ControlDb::Postgres(pg) => {
                let mut client = pg.pool().get().await?;
                let tx = client.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
                    .await?;
                stored.version = tx
                    .query_one(
                        "INSERT INTO policy_versions \
                         (version, created_at, author, message, sha256, rollback_of, files) \
                         SELECT coalesce(max(version), 0) + 1, $1, $2, $3, $4, $5, $6::text::jsonb \
                         FROM policy_versions RETURNING version",
                        &[
                            &stored.created,
                            &stored.author,
                            &stored.message,
                            &stored.sha256,
                            &stored.rollback_of,
                            &files_json,
                        ],
                    )
                    .await?
                    .get(0);
                tx.execute(
                    "SELECT pg_notify($1, $2)",
                    &[&CHANNEL, &stored.version.to_string()],
                )
                .await?;
                tx.commit().await?;
                Ok(stored)
            }
        }
    }
}

enum Query {
    All,
    Current,
    One(i64),
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

fn decode(version: u64, bytes: &[u8]) -> Result<PolicyVersion, ControlStoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ControlStoreError::Corrupt(format!("policy version {version}: {e}")))
}
