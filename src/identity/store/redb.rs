//! The embedded backend of the identity store: one redb table per record kind in
//! `control.redb` (shared with the trust store), the store version in `meta`. One
//! process owns the file, so a write needs no catching up.

use std::sync::Arc;

use redb::{ReadTransaction, ReadableTable, TableDefinition};

use crate::control_plane::EmbeddedDb;
use serde::de::DeserializeOwned;

use super::{IdentityStoreError, Kind, Record, decode};
use crate::identity::model::{PasswordRecord, RepositoryAttributes, ScopeMap, Token};
use crate::identity::scope::system_scope_maps;

const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const SCOPE_MAPS: TableDefinition<&str, &[u8]> = TableDefinition::new("scope_maps");
const REPOSITORIES: TableDefinition<&str, &[u8]> = TableDefinition::new("repositories");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `admin` → the admin password's [`PasswordRecord`] (JSON).
const ADMIN: TableDefinition<&str, &[u8]> = TableDefinition::new("admin");
const VERSION_KEY: &str = "version";
/// Verification identities of OCI signatures, by name.
const SIGNATURE_TRUST: TableDefinition<&str, &[u8]> = TableDefinition::new("signature_trust");

fn table(kind: Kind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match kind {
        Kind::Token => TOKENS,
        Kind::ScopeMap => SCOPE_MAPS,
        Kind::Repository => REPOSITORIES,
        Kind::SignatureTrust => SIGNATURE_TRUST,
        Kind::Admin => ADMIN,
    }
}

fn db_err(e: impl Into<redb::Error>) -> IdentityStoreError {
    IdentityStoreError::Database(e.into())
}

/// The identity tables of one redb database.
#[derive(Clone)]
pub(super) struct Redb {
    db: Arc<EmbeddedDb>,
}

impl Redb {
    /// Every record and the store version; creates missing tables, so a fresh file loads
    /// like an old one.
    pub(super) fn open(
        db: Arc<EmbeddedDb>,
    ) -> Result<(Redb, u64, Vec<Record>), IdentityStoreError> {
        let txn = db.begin_write().map_err(db_err)?;
        let version = txn
            .open_table(META)
            .map_err(db_err)?
            .get(VERSION_KEY)
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        let mut records = Vec::new();
        for kind in Kind::ALL {
            let t = txn.open_table(table(kind)).map_err(db_err)?;
            for entry in t.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                records.push(Record {
                    kind,
                    key: k.value().to_owned(),
                    value: Some(v.value().to_vec()),
                });
            }
        }
        txn.commit().map_err(db_err)?;
        Ok((Redb { db }, version, records))
    }

    pub(super) fn database(&self) -> Arc<EmbeddedDb> {
        Arc::clone(&self.db)
    }

    /// Writes `records` and `version` in one transaction.
    pub(super) fn commit(
        &self,
        records: &[Record],
        version: u64,
    ) -> Result<(), IdentityStoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        for record in records {
            let mut t = txn.open_table(table(record.kind)).map_err(db_err)?;
            match &record.value {
                Some(bytes) => t.insert(record.key.as_str(), bytes.as_slice()).map(drop),
                None => t.remove(record.key.as_str()).map(drop),
            }
            .map_err(db_err)?;
        }
        txn.open_table(META)
            .map_err(db_err)?
            .insert(VERSION_KEY, version)
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }
}

/// What [`check_tables`] found: records counted, problems as (subject, message).
#[derive(Debug, Default)]
pub struct TablesCheck {
    pub tokens: usize,
    pub scope_maps: usize,
    pub repositories: usize,
    pub problems: Vec<(String, String)>,
}

/// What `portcullis fsck` finds in the identity tables read through `txn`: every token,
/// scope map, repository attribute record and the admin password record must decode under
/// its key, and every token's scope map must exist.
pub fn check_tables(txn: &ReadTransaction) -> Result<TablesCheck, IdentityStoreError> {
    fn rows<T: DeserializeOwned>(
        txn: &ReadTransaction,
        table: TableDefinition<&str, &[u8]>,
        kind: &str,
        problems: &mut Vec<(String, String)>,
    ) -> Result<Vec<(String, T)>, IdentityStoreError> {
        let mut out = Vec::new();
        let table = match txn.open_table(table) {
            // A table is created at the first write that needs it.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
            r => r.map_err(db_err)?,
        };
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let key = k.value().to_owned();
            match decode::<T>(&key, v.value()) {
                Ok(value) => out.push((key, value)),
                Err(e) => problems.push((format!("{kind} {key}"), e.to_string())),
            }
        }
        Ok(out)
    }
    let mut problems = Vec::new();
    let tokens: Vec<(String, Token)> = rows(txn, TOKENS, "token", &mut problems)?;
    let maps: Vec<(String, ScopeMap)> = rows(txn, SCOPE_MAPS, "scope map", &mut problems)?;
    let repositories: Vec<(String, RepositoryAttributes)> =
        rows(txn, REPOSITORIES, "repository", &mut problems)?;
    let _admin: Vec<(String, PasswordRecord)> = rows(txn, ADMIN, "admin", &mut problems)?;
    for (key, map) in &maps {
        if &map.name != key {
            problems.push((
                format!("scope map {key}"),
                format!("its record is named `{}`", map.name),
            ));
        }
    }
    let system = system_scope_maps();
    for (key, token) in &tokens {
        let known = maps.iter().any(|(name, _)| name == &token.scope_map)
            || system.iter().any(|m| m.name == token.scope_map);
        if !known {
            problems.push((
                format!("token {key}"),
                format!(
                    "is bound to scope map `{}`, which does not exist",
                    token.scope_map
                ),
            ));
        }
    }
    Ok(TablesCheck {
        tokens: tokens.len(),
        scope_maps: maps.len(),
        repositories: repositories.len(),
        problems,
    })
}
