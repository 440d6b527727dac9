//! Trust data in the control-plane redb file (`control.redb`, the same [`EmbeddedDb`] as
//! the identity store): TUF files by (GUN, role, version) with the time they were
//! stored, the current version of each role, a sha256-hex index for consistent
//! (checksum) fetches, the server-managed private keys, the changefeed and the registry's
//! content-trust switch.
//!
//! Reads go through a [`TrustTxn`] over a redb read transaction, writes through one over
//! a write transaction: everything one update writes — its files, their indexes, its
//! changefeed record — commits together or not at all (dropping an uncommitted
//! [`WriteTxn`] aborts it). Roles are plain strings here; `crate::trust::Role` validates
//! them before they reach the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use redb::{Key, ReadTransaction, ReadableTable, TableDefinition, Value, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::control_plane::EmbeddedDb;

/// (gun, role, version) → (stored at, unix seconds; the file's bytes, verbatim).
const FILES: TableDefinition<(&str, &str, u64), (i64, &[u8])> = TableDefinition::new("trust_files");
/// (gun, role) → current version.
const CURRENT: TableDefinition<(&str, &str), u64> = TableDefinition::new("trust_current");
/// (gun, sha256 hex of the whole file) → (role, version).
const CHECKSUMS: TableDefinition<(&str, &str), (&str, u64)> =
    TableDefinition::new("trust_checksums");
/// (gun, role, key id) → (creation sequence within the GUN's role, a server-managed
/// private key as `ServerKey::to_bytes` wrote it, sealed by the key-encryption key:
/// see `trust::kek`).
const KEYS: TableDefinition<(&str, &str, &str), (u64, &[u8])> =
    TableDefinition::new("trust_server_keys");
/// `salt` (of the key-encryption key's derivation) and `check` (a value it sealed).
const KEK: TableDefinition<&str, &[u8]> = TableDefinition::new("trust_kek");
/// change id → [`Change`] as JSON.
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("trust_changes");
/// `content_trust` (1 = enabled) and `last_change` (the last change id handed out).
const META: TableDefinition<&str, u64> = TableDefinition::new("trust_meta");
const STATUS_KEY: &str = "content_trust";
const LAST_CHANGE_KEY: &str = "last_change";

/// The role whose writes the changefeed records (as notary does): every published
/// version of a repository ends in a new timestamp.
const TIMESTAMP: &str = "timestamp";

#[derive(Debug, thiserror::Error)]
pub enum TrustStoreError {
    /// The stored version of a role is at least the new one (notary's `ErrOldVersion`).
    #[error("`{role}` version {new} of `{gun}` is not newer than the stored version {stored}")]
    OldVersion {
        gun: String,
        role: String,
        stored: u64,
        new: u64,
    },
    /// Content trust is switched off (writes check it inside their transaction).
    #[error("content trust is disabled on this registry")]
    Disabled,
    #[error("trust database: {0}")]
    Database(#[from] redb::Error),
    /// The control-plane PostgreSQL database failed (unreachable, or a query failed).
    #[error("trust database (PostgreSQL): {0}")]
    Postgres(String),
    #[error("trust database record `{0}` is corrupt")]
    Corrupt(String),
}

fn db_err(e: impl Into<redb::Error>) -> TrustStoreError {
    TrustStoreError::Database(e.into())
}

/// One stored TUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub role: String,
    pub version: u64,
    pub bytes: Bytes,
    /// When it was stored, unix seconds.
    pub stored_at: i64,
}

/// A file to store: its role, the version its `signed.version` says, its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFile {
    pub role: String,
    pub version: u64,
    pub bytes: Bytes,
}

/// A changefeed record, in notary's JSON shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    #[serde(rename = "ID")]
    pub id: String,
    /// RFC 3339.
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    #[serde(rename = "GUN")]
    pub gun: String,
    #[serde(rename = "Version")]
    pub version: u64,
    /// Hex sha256 of the new timestamp; empty for a deletion.
    #[serde(rename = "SHA256")]
    pub sha256: String,
    /// `update` or `deletion`.
    #[serde(rename = "Category")]
    pub category: String,
}

/// What the service reads of one GUN before validating or signing: every role's
/// current file and, when asked for, the server-held keys.
#[derive(Debug, Default, Clone)]
pub struct GunData {
    /// role → its current file.
    pub current: BTreeMap<String, StoredFile>,
    /// (role, key id) → the sealed key as stored.
    pub keys: BTreeMap<(String, String), Vec<u8>>,
}

/// What one write of a GUN stores, all or nothing: new current files (each newer than
/// the stored version, else [`TrustStoreError::OldVersion`]), new server keys, and which
/// keys stay.
#[derive(Debug, Default)]
pub struct GunWrite {
    pub files: Vec<NewFile>,
    /// (role, key id, sealed key), each newer than every key held for its role.
    pub keys: Vec<(String, String, Vec<u8>)>,
    /// (role, key ids kept, how many of the newest other keys are kept too).
    pub retain: Vec<(String, Vec<String>, usize)>,
}

impl GunWrite {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.keys.is_empty() && self.retain.is_empty()
    }
}

/// The key-encryption key's (salt, check value).
pub type KekParams = (Vec<u8>, Vec<u8>);
/// A held server key: ((gun, role, key id), its stored bytes).
pub type HeldKey = ((String, String, String), Vec<u8>);

/// The trust tables; cheap to clone.
#[derive(Clone)]
pub struct TrustStore {
    db: Arc<EmbeddedDb>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore").finish_non_exhaustive()
    }
}

/// A transaction over the trust tables: reads on both kinds, writes on [`WriteTxn`].
pub struct TrustTxn<T> {
    txn: T,
}

pub type ReadTxn = TrustTxn<ReadTransaction>;
pub type WriteTxn = TrustTxn<WriteTransaction>;

/// Opening a table for reading, in a read or a write transaction.
pub trait Tables {
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<impl ReadableTable<K, V>, TrustStoreError>;
}

impl Tables for ReadTransaction {
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<impl ReadableTable<K, V>, TrustStoreError> {
        self.open_table(definition).map_err(db_err)
    }
}

impl Tables for WriteTransaction {
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<impl ReadableTable<K, V>, TrustStoreError> {
        self.open_table(definition).map_err(db_err)
    }
}

impl TrustStore {
    /// The trust tables in `db`, created when missing.
    pub fn open(db: Arc<EmbeddedDb>) -> Result<TrustStore, TrustStoreError> {
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(FILES).map_err(db_err)?;
        txn.open_table(CURRENT).map_err(db_err)?;
        txn.open_table(CHECKSUMS).map_err(db_err)?;
        txn.open_table(KEYS).map_err(db_err)?;
        txn.open_table(CHANGES).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.open_table(KEK).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(TrustStore { db })
    }

    /// The key-encryption key's salt and check value, once set up.
    pub fn kek_params(&self) -> Result<Option<KekParams>, TrustStoreError> {
        let txn = self.read()?;
        let kek = txn.txn.table(KEK)?;
        let get = |name: &str| -> Result<Option<Vec<u8>>, TrustStoreError> {
            Ok(kek.get(name).map_err(db_err)?.map(|v| v.value().to_vec()))
        };
        Ok(get("salt")?.zip(get("check")?))
    }

    /// Reads through `txn`, a read transaction of any handle on the control-plane file
    /// (fsck's read-only open of a stopped server's file).
    pub fn reader(txn: ReadTransaction) -> ReadTxn {
        TrustTxn { txn }
    }

    pub fn read(&self) -> Result<ReadTxn, TrustStoreError> {
        Ok(TrustTxn {
            txn: self.db.begin_read().map_err(db_err)?,
        })
    }

    /// A write transaction (redb serialises writers); nothing is written unless
    /// [`WriteTxn::commit`] is called.
    pub fn write(&self) -> Result<WriteTxn, TrustStoreError> {
        Ok(TrustTxn {
            txn: self.db.begin_write().map_err(db_err)?,
        })
    }
}

impl<T: Tables> TrustTxn<T> {
    /// Whether content trust is enabled (disabled until switched on).
    pub fn enabled(&self) -> Result<bool, TrustStoreError> {
        let meta = self.txn.table(META)?;
        Ok(meta.get(STATUS_KEY).map_err(db_err)?.map(|v| v.value()) == Some(1))
    }

    /// The current version of `role`.
    pub fn current(&self, gun: &str, role: &str) -> Result<Option<StoredFile>, TrustStoreError> {
        let current = self.txn.table(CURRENT)?;
        let Some(version) = current.get((gun, role)).map_err(db_err)?.map(|v| v.value()) else {
            return Ok(None);
        };
        self.version(gun, role, version)?
            .map(Some)
            .ok_or_else(|| TrustStoreError::Corrupt(format!("{gun} {role} v{version}")))
    }

    /// `role` at `version`.
    pub fn version(
        &self,
        gun: &str,
        role: &str,
        version: u64,
    ) -> Result<Option<StoredFile>, TrustStoreError> {
        let files = self.txn.table(FILES)?;
        let found = files.get((gun, role, version)).map_err(db_err)?;
        Ok(found.map(|v| {
            let (stored_at, bytes) = v.value();
            StoredFile {
                role: role.to_owned(),
                version,
                bytes: Bytes::copy_from_slice(bytes),
                stored_at,
            }
        }))
    }

    /// The file of `gun` whose sha256 (hex, lowercase) is `sha256`.
    pub fn by_checksum(
        &self,
        gun: &str,
        sha256: &str,
    ) -> Result<Option<StoredFile>, TrustStoreError> {
        let checksums = self.txn.table(CHECKSUMS)?;
        let found = checksums.get((gun, sha256)).map_err(db_err)?.map(|v| {
            let (role, version) = v.value();
            (role.to_owned(), version)
        });
        match found {
            Some((role, version)) => self.version(gun, &role, version),
            None => Ok(None),
        }
    }

    /// The server-managed private key `key_id` of `gun`'s `role`, as stored.
    pub fn server_key(
        &self,
        gun: &str,
        role: &str,
        key_id: &str,
    ) -> Result<Option<Vec<u8>>, TrustStoreError> {
        let keys = self.txn.table(KEYS)?;
        let found = keys.get((gun, role, key_id)).map_err(db_err)?;
        Ok(found.map(|v| v.value().1.to_vec()))
    }

    /// Every server-held key: ((gun, role, key id), stored bytes).
    pub fn server_keys(&self) -> Result<Vec<HeldKey>, TrustStoreError> {
        let keys = self.txn.table(KEYS)?;
        let mut out = Vec::new();
        for entry in keys.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let (gun, role, id) = k.value();
            out.push((
                (gun.to_owned(), role.to_owned(), id.to_owned()),
                v.value().1.to_vec(),
            ));
        }
        Ok(out)
    }

    /// The roles `gun` has a current version of, sorted.
    pub fn roles(&self, gun: &str) -> Result<Vec<String>, TrustStoreError> {
        let current = self.txn.table(CURRENT)?;
        let mut roles = Vec::new();
        for entry in current.range((gun, "")..).map_err(db_err)? {
            let (key, _) = entry.map_err(db_err)?;
            let (g, role) = key.value();
            if g != gun {
                break;
            }
            roles.push(role.to_owned());
        }
        Ok(roles)
    }

    /// Every GUN with trust data, sorted.
    pub fn guns(&self) -> Result<Vec<String>, TrustStoreError> {
        let current = self.txn.table(CURRENT)?;
        let mut guns: Vec<String> = Vec::new();
        for entry in current.iter().map_err(db_err)? {
            let (key, _) = entry.map_err(db_err)?;
            let gun = key.value().0;
            if guns.last().is_none_or(|last| last != gun) {
                guns.push(gun.to_owned());
            }
        }
        Ok(guns)
    }

    /// `gun`'s current files, and its server-held keys when `keys`.
    pub fn gun_data(&self, gun: &str, keys: bool) -> Result<GunData, TrustStoreError> {
        let mut data = GunData::default();
        for role in self.roles(gun)? {
            let file = self
                .current(gun, &role)?
                .ok_or_else(|| TrustStoreError::Corrupt(format!("{gun} {role}")))?;
            data.current.insert(role, file);
        }
        if keys {
            let table = self.txn.table(KEYS)?;
            for entry in table.range((gun, "", "")..).map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let (g, role, id) = k.value();
                if g != gun {
                    break;
                }
                data.keys
                    .insert((role.to_owned(), id.to_owned()), v.value().1.to_vec());
            }
        }
        Ok(data)
    }

    /// Changefeed records after `change_id` (forward), or the ones before it when
    /// `records` is negative or `change_id` is negative (backward, "the latest"); at most
    /// `|records|`, oldest first, of `gun` only when given.
    pub fn changes(
        &self,
        gun: Option<&str>,
        change_id: i64,
        records: i64,
    ) -> Result<Vec<Change>, TrustStoreError> {
        self.changes_of(|g| gun.is_none_or(|gun| gun == g), change_id, records)
    }

    /// [`changes`](Self::changes) of the GUNs `wanted` accepts: records it refuses do not
    /// count, so a page is full unless the feed ends.
    pub fn changes_of(
        &self,
        mut wanted: impl FnMut(&str) -> bool,
        change_id: i64,
        records: i64,
    ) -> Result<Vec<Change>, TrustStoreError> {
        let table = self.txn.table(CHANGES)?;
        let limit = usize::try_from(records.unsigned_abs()).unwrap_or(usize::MAX);
        let backward = records < 0 || change_id < 0;
        let decode = |bytes: &[u8], id: u64| {
            serde_json::from_slice::<Change>(bytes)
                .map_err(|_| TrustStoreError::Corrupt(format!("change {id}")))
        };
        let mut out = Vec::new();
        if backward {
            // Before `change_id` (everything when it is not positive), newest first.
            let upper = u64::try_from(change_id).ok().filter(|id| *id > 0);
            let range = match upper {
                Some(id) => table.range(..id).map_err(db_err)?,
                None => table.iter().map_err(db_err)?,
            };
            for entry in range.rev() {
                let (k, v) = entry.map_err(db_err)?;
                let change = decode(v.value(), k.value())?;
                if wanted(&change.gun) {
                    out.push(change);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            out.reverse();
        } else {
            let after = u64::try_from(change_id).unwrap_or(0);
            for entry in table.range((after + 1)..).map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let change = decode(v.value(), k.value())?;
                if wanted(&change.gun) {
                    out.push(change);
                    if out.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}

impl WriteTxn {
    pub fn commit(self) -> Result<(), TrustStoreError> {
        self.txn.commit().map_err(db_err)
    }

    /// Stores `write` for `gun`.
    pub fn apply(
        &self,
        gun: &str,
        write: &GunWrite,
        now: time::OffsetDateTime,
    ) -> Result<(), TrustStoreError> {
        if !write.files.is_empty() {
            self.update_many(gun, &write.files, now)?;
        }
        for (role, id, sealed) in &write.keys {
            self.put_server_key(gun, role, id, sealed)?;
        }
        for (role, keep, pending) in &write.retain {
            self.retain_server_keys(gun, role, keep, *pending)?;
        }
        Ok(())
    }

    pub fn set_enabled(&self, enabled: bool) -> Result<(), TrustStoreError> {
        let mut meta = self.txn.open_table(META).map_err(db_err)?;
        meta.insert(STATUS_KEY, u64::from(enabled))
            .map_err(db_err)?;
        Ok(())
    }

    /// Stores `files` as the new current versions of their roles, indexed by sha256, and
    /// records a changefeed update when a timestamp is among them. Any role whose stored
    /// version is not lower than the new one fails the whole update
    /// ([`TrustStoreError::OldVersion`]); the caller then drops the transaction.
    pub fn update_many(
        &self,
        gun: &str,
        files: &[NewFile],
        now: time::OffsetDateTime,
    ) -> Result<(), TrustStoreError> {
        let stored_at = now.unix_timestamp();
        let mut change = None;
        {
            let mut current = self.txn.open_table(CURRENT).map_err(db_err)?;
            let mut table = self.txn.open_table(FILES).map_err(db_err)?;
            let mut checksums = self.txn.open_table(CHECKSUMS).map_err(db_err)?;
            for file in files {
                let role = file.role.as_str();
                let stored = current.get((gun, role)).map_err(db_err)?.map(|v| v.value());
                if let Some(stored) = stored.filter(|s| *s >= file.version) {
                    return Err(TrustStoreError::OldVersion {
                        gun: gun.to_owned(),
                        role: role.to_owned(),
                        stored,
                        new: file.version,
                    });
                }
                table
                    .insert((gun, role, file.version), (stored_at, &file.bytes[..]))
                    .map_err(db_err)?;
                current.insert((gun, role), file.version).map_err(db_err)?;
                let sha256 = hex::encode(Sha256::digest(&file.bytes));
                checksums
                    .insert((gun, sha256.as_str()), (role, file.version))
                    .map_err(db_err)?;
                if role == TIMESTAMP {
                    change = Some((file.version, sha256));
                }
            }
        }
        if let Some((version, sha256)) = change {
            self.record_change(gun, version, sha256, "update", now)?;
        }
        Ok(())
    }

    /// Stores a new server-managed key of `gun`'s `role`, newer than every key held.
    pub fn put_server_key(
        &self,
        gun: &str,
        role: &str,
        key_id: &str,
        key: &[u8],
    ) -> Result<(), TrustStoreError> {
        let mut keys = self.txn.open_table(KEYS).map_err(db_err)?;
        let newest = held_keys(&keys, gun, role)?
            .into_iter()
            .map(|(sequence, _)| sequence)
            .max();
        let sequence = newest.map_or(0, |n| n.saturating_add(1));
        keys.insert((gun, role, key_id), (sequence, key))
            .map_err(db_err)?;
        Ok(())
    }

    /// Rewrites a held key's stored bytes (sealing or re-sealing it), keeping its place
    /// in the creation order.
    pub fn replace_server_key(
        &self,
        gun: &str,
        role: &str,
        key_id: &str,
        key: &[u8],
    ) -> Result<(), TrustStoreError> {
        let mut keys = self.txn.open_table(KEYS).map_err(db_err)?;
        let sequence = keys
            .get((gun, role, key_id))
            .map_err(db_err)?
            .map(|v| v.value().0)
            .ok_or_else(|| TrustStoreError::Corrupt(format!("{gun}/{role}/{key_id}")))?;
        keys.insert((gun, role, key_id), (sequence, key))
            .map_err(db_err)?;
        Ok(())
    }

    /// Stores the key-encryption key's salt and check value.
    pub fn set_kek_params(&self, salt: &[u8], check: &[u8]) -> Result<(), TrustStoreError> {
        let mut kek = self.txn.open_table(KEK).map_err(db_err)?;
        kek.insert("salt", salt).map_err(db_err)?;
        kek.insert("check", check).map_err(db_err)?;
        Ok(())
    }

    /// Forgets `gun`'s keys for `role` other than `keep` and the `pending` newest others
    /// (keys no root pinned yet).
    pub fn retain_server_keys(
        &self,
        gun: &str,
        role: &str,
        keep: &[String],
        pending: usize,
    ) -> Result<(), TrustStoreError> {
        let mut keys = self.txn.open_table(KEYS).map_err(db_err)?;
        let mut others: Vec<(u64, String)> = held_keys(&keys, gun, role)?
            .into_iter()
            .filter(|(_, id)| !keep.contains(id))
            .collect();
        others.sort_unstable_by_key(|(sequence, _)| std::cmp::Reverse(*sequence));
        for (_, id) in others.iter().skip(pending) {
            keys.remove((gun, role, id.as_str())).map_err(db_err)?;
        }
        Ok(())
    }

    /// Deletes all of `gun`'s trust data and keys and records a changefeed deletion.
    pub fn delete(&self, gun: &str, now: time::OffsetDateTime) -> Result<(), TrustStoreError> {
        {
            // Every key of `gun` sorts from `(gun, "", …)` to before `(gun + NUL, "", …)`:
            // any other GUN is either greater at some byte or longer than `gun` + NUL.
            let next = format!("{gun}\0");
            let next = next.as_str();
            let mut files = self.txn.open_table(FILES).map_err(db_err)?;
            files
                .retain_in((gun, "", 0)..(next, "", 0), |_, _| false)
                .map_err(db_err)?;
            let mut current = self.txn.open_table(CURRENT).map_err(db_err)?;
            current
                .retain_in((gun, "")..(next, ""), |_, _| false)
                .map_err(db_err)?;
            let mut checksums = self.txn.open_table(CHECKSUMS).map_err(db_err)?;
            checksums
                .retain_in((gun, "")..(next, ""), |_, _| false)
                .map_err(db_err)?;
            let mut keys = self.txn.open_table(KEYS).map_err(db_err)?;
            keys.retain_in((gun, "", "")..(next, "", ""), |_, _| false)
                .map_err(db_err)?;
        }
        self.record_change(gun, 0, String::new(), "deletion", now)
    }

    /// Deletes every GUN's trust data (a deletion record each) and every key.
    pub fn delete_all(&self, now: time::OffsetDateTime) -> Result<(), TrustStoreError> {
        for gun in self.guns()? {
            self.delete(&gun, now)?;
        }
        // Pending keys of GUNs that never published anything.
        let mut keys = self.txn.open_table(KEYS).map_err(db_err)?;
        keys.retain(|_, _| false).map_err(db_err)?;
        Ok(())
    }

    fn record_change(
        &self,
        gun: &str,
        version: u64,
        sha256: String,
        category: &str,
        now: time::OffsetDateTime,
    ) -> Result<(), TrustStoreError> {
        let mut meta = self.txn.open_table(META).map_err(db_err)?;
        let id = meta
            .get(LAST_CHANGE_KEY)
            .map_err(db_err)?
            .map_or(0, |v| v.value())
            + 1;
        meta.insert(LAST_CHANGE_KEY, id).map_err(db_err)?;
        let change = Change {
            id: id.to_string(),
            created_at: now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            gun: gun.to_owned(),
            version,
            sha256,
            category: category.to_owned(),
        };
        let json = serde_json::to_vec(&change)
            .map_err(|_| TrustStoreError::Corrupt(format!("change {id}")))?;
        let mut changes = self.txn.open_table(CHANGES).map_err(db_err)?;
        changes.insert(id, json.as_slice()).map_err(db_err)?;
        Ok(())
    }
}

/// (sequence, key id) of every key held for `gun`'s `role`.
fn held_keys(
    keys: &impl ReadableTable<(&'static str, &'static str, &'static str), (u64, &'static [u8])>,
    gun: &str,
    role: &str,
) -> Result<Vec<(u64, String)>, TrustStoreError> {
    let mut out = Vec::new();
    for entry in keys.range((gun, role, "")..).map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        let (g, r, id) = k.value();
        if g != gun || r != role {
            break;
        }
        out.push((v.value().0, id.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
