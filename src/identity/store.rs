//! The control-plane store: tokens, scope maps and repository attributes in redb
//! (`<data-dir>/control.redb`), with an in-memory [`IdentitySnapshot`] swapped in after
//! every commit so the request path reads memory only.
//!
//! Every write runs in one redb write transaction that also bumps `version`; the new
//! snapshot is built alongside (a shallow clone of the previous one: maps of `Arc`s) and
//! published only after the commit succeeds. Writers are serialised by a mutex so the
//! snapshot and the database never diverge. System scope maps live in code, not in redb.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use redb::{Database, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::model::{
    PasswordRecord, PasswordSlot, RepositoryAttributes, ScopeMap, ScopeRule, SignatureTrust, Token,
    TokenStatus, TrustMaterial, UnixSeconds,
};
use super::pattern::is_valid_repository_name;
use super::scope::{
    MAX_RULES, NameError, apply_rule_changes, is_system_name, system_scope_maps,
    validate_scope_map_name, validate_signature_trust_name, validate_token_name,
};
use super::secret::{generate_secret, hash_secret, verify_secret};
use super::{AuthError, IdentitySnapshot, now_unix};
use crate::signatures::{TrustMaterialError, TrustedIdentity};

const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const SCOPE_MAPS: TableDefinition<&str, &[u8]> = TableDefinition::new("scope_maps");
const REPOSITORIES: TableDefinition<&str, &[u8]> = TableDefinition::new("repositories");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `admin` → the admin password's [`PasswordRecord`] (JSON).
const ADMIN: TableDefinition<&str, &[u8]> = TableDefinition::new("admin");
const VERSION_KEY: &str = "version";
/// Verification identities of OCI signatures ([`SignatureTrust`], JSON), by name.
const SIGNATURE_TRUST: TableDefinition<&str, &[u8]> = TableDefinition::new("signature_trust");
const SIGNATURE_TRUST_VERSION_KEY: &str = "signature_trust_version";

/// Why a control-plane operation failed. Messages name the user's input.
#[derive(Debug, thiserror::Error)]
pub enum IdentityStoreError {
    #[error("{kind} `{name}` not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} `{name}` already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("scope map `{0}` is system-defined and cannot be changed or deleted")]
    SystemScopeMap(String),
    #[error("scope map `{name}` is in use by token(s) {tokens}; delete or move them first")]
    ScopeMapInUse { name: String, tokens: String },
    #[error("scope map `{name}` would have {count} repositories; at most {MAX_RULES} are allowed")]
    TooManyRules { name: String, count: usize },
    #[error("repository name `{0}` is invalid")]
    InvalidRepository(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    TrustMaterial(#[from] TrustMaterialError),
    #[error("control-plane database: {0}")]
    Database(#[from] redb::Error),
    #[error("control-plane record `{key}` is corrupt: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

fn db_err(e: impl Into<redb::Error>) -> IdentityStoreError {
    IdentityStoreError::Database(e.into())
}

fn not_found(kind: &'static str, name: &str) -> IdentityStoreError {
    IdentityStoreError::NotFound {
        kind,
        name: name.to_owned(),
    }
}

/// How a new token gets its scope map.
#[derive(Debug, Clone)]
pub enum TokenScope {
    /// Reuse an existing scope map by name.
    ScopeMap(String),
    /// Create `<token>-scope-map` with these rules.
    Repositories(Vec<ScopeRule>),
}

#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub scope: TokenScope,
    pub status: TokenStatus,
    /// Slots to fill with generated passwords at creation.
    pub passwords: Vec<PasswordSlot>,
    pub expires_at: Option<UnixSeconds>,
}

/// A token change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TokenUpdate {
    pub status: Option<TokenStatus>,
    pub scope_map: Option<String>,
}

/// A scope-map change; `None` leaves the description as it is.
#[derive(Debug, Clone, Default)]
pub struct ScopeMapUpdate {
    pub description: Option<String>,
    pub add: Vec<ScopeRule>,
    pub remove: Vec<ScopeRule>,
}

/// A generated secret, returned once and never stored in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedPassword {
    pub slot: PasswordSlot,
    pub value: String,
}

/// A token with the secrets generated for it in the same operation.
#[derive(Debug, Clone)]
pub struct TokenWithSecrets {
    pub token: Arc<Token>,
    pub passwords: Vec<GeneratedPassword>,
}

/// The control-plane store; open once per process and share the `Arc`.
pub struct IdentityStore {
    /// Shared with the trust store, whose tables live in the same file.
    db: Arc<Database>,
    current: ArcSwap<IdentitySnapshot>,
    write_lock: Mutex<()>,
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityStore")
            .field("version", &self.current.load().version)
            .finish_non_exhaustive()
    }
}

/// One write in progress: the redb transaction and the snapshot being built.
struct Tx {
    txn: WriteTransaction,
    snap: IdentitySnapshot,
    now: UnixSeconds,
}

impl Tx {
    fn put<T: Serialize>(
        &mut self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), IdentityStoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| IdentityStoreError::Corrupt {
            key: key.to_owned(),
            source,
        })?;
        let mut t = self.txn.open_table(table).map_err(db_err)?;
        t.insert(key, bytes.as_slice()).map_err(db_err)?;
        Ok(())
    }

    fn remove(
        &mut self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<(), IdentityStoreError> {
        let mut t = self.txn.open_table(table).map_err(db_err)?;
        t.remove(key).map_err(db_err)?;
        Ok(())
    }

    fn bump_signature_trust(&mut self) -> Result<(), IdentityStoreError> {
        self.snap.signature_trust_version += 1;
        self.txn
            .open_table(META)
            .map_err(db_err)?
            .insert(
                SIGNATURE_TRUST_VERSION_KEY,
                self.snap.signature_trust_version,
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn put_token(&mut self, token: Token) -> Result<Arc<Token>, IdentityStoreError> {
        self.put(TOKENS, &token.name, &token)?;
        let token = Arc::new(token);
        self.snap.tokens.insert(token.name.clone(), token.clone());
        Ok(token)
    }

    fn put_scope_map(&mut self, map: ScopeMap) -> Result<Arc<ScopeMap>, IdentityStoreError> {
        if map.rules.len() > MAX_RULES {
            return Err(IdentityStoreError::TooManyRules {
                name: map.name,
                count: map.rules.len(),
            });
        }
        self.put(SCOPE_MAPS, &map.name, &map)?;
        let map = Arc::new(map);
        self.snap.scope_maps.insert(map.name.clone(), map.clone());
        Ok(map)
    }

    fn token(&self, name: &str) -> Result<Token, IdentityStoreError> {
        self.snap
            .tokens
            .get(name)
            .map(|t| Token::clone(t))
            .ok_or_else(|| not_found("token", name))
    }

    /// A user-defined scope map, for changing it.
    fn user_scope_map(&self, name: &str) -> Result<ScopeMap, IdentityStoreError> {
        let map = self
            .snap
            .scope_maps
            .get(name)
            .ok_or_else(|| not_found("scope map", name))?;
        if map.system {
            return Err(IdentityStoreError::SystemScopeMap(name.to_owned()));
        }
        Ok(ScopeMap::clone(map))
    }

    fn require_scope_map(&self, name: &str) -> Result<(), IdentityStoreError> {
        if self.snap.scope_maps.contains_key(name) {
            Ok(())
        } else {
            Err(not_found("scope map", name))
        }
    }

    fn new_scope_map(
        &mut self,
        name: &str,
        description: &str,
        rules: &[ScopeRule],
    ) -> Result<Arc<ScopeMap>, IdentityStoreError> {
        if is_system_name(name) && self.snap.scope_maps.contains_key(name) {
            return Err(IdentityStoreError::SystemScopeMap(name.to_owned()));
        }
        validate_scope_map_name(name)?;
        if self.snap.scope_maps.contains_key(name) {
            return Err(IdentityStoreError::AlreadyExists {
                kind: "scope map",
                name: name.to_owned(),
            });
        }
        self.put_scope_map(ScopeMap {
            name: name.to_owned(),
            description: description.to_owned(),
            rules: apply_rule_changes(&[], rules, &[]),
            system: false,
            created_at: self.now,
            updated_at: self.now,
        })
    }

    fn fill_passwords(
        &self,
        token: &mut Token,
        slots: &[PasswordSlot],
        expires_at: Option<UnixSeconds>,
    ) -> Vec<GeneratedPassword> {
        let mut out = Vec::new();
        for &slot in slots {
            if out.iter().any(|p: &GeneratedPassword| p.slot == slot) {
                continue;
            }
            let value = generate_secret();
            let record = Some(hash_secret(&value, self.now, expires_at));
            match slot {
                PasswordSlot::Password1 => token.password1 = record,
                PasswordSlot::Password2 => token.password2 = record,
            }
            out.push(GeneratedPassword { slot, value });
        }
        out
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, IdentityStoreError> {
    serde_json::from_slice(bytes).map_err(|source| IdentityStoreError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

fn load_table<T: DeserializeOwned>(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
) -> Result<Vec<(String, T)>, IdentityStoreError> {
    let t = txn.open_table(table).map_err(db_err)?;
    let mut out = Vec::new();
    for entry in t.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        let key = k.value().to_owned();
        let value = decode(&key, v.value())?;
        out.push((key, value));
    }
    Ok(out)
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

impl IdentityStore {
    /// Opens (creating if needed) the store at `path` and loads the snapshot.
    pub fn open(path: &Path) -> Result<Arc<Self>, IdentityStoreError> {
        let db = Database::create(path).map_err(db_err)?;
        // A write transaction creates missing tables, so a fresh file loads like an old one.
        let txn = db.begin_write().map_err(db_err)?;
        let counter = |key: &str| -> Result<u64, IdentityStoreError> {
            Ok(txn
                .open_table(META)
                .map_err(db_err)?
                .get(key)
                .map_err(db_err)?
                .map(|v| v.value())
                .unwrap_or(0))
        };
        let mut snap = IdentitySnapshot {
            version: counter(VERSION_KEY)?,
            signature_trust_version: counter(SIGNATURE_TRUST_VERSION_KEY)?,
            ..IdentitySnapshot::default()
        };
        for map in system_scope_maps() {
            snap.scope_maps.insert(map.name.clone(), Arc::new(map));
        }
        for (name, map) in load_table::<ScopeMap>(&txn, SCOPE_MAPS)? {
            snap.scope_maps.insert(name, Arc::new(map));
        }
        for (name, token) in load_table::<Token>(&txn, TOKENS)? {
            snap.tokens.insert(name, Arc::new(token));
        }
        snap.repositories = load_table(&txn, REPOSITORIES)?.into_iter().collect();
        for (name, trust) in load_table::<SignatureTrust>(&txn, SIGNATURE_TRUST)? {
            snap.signature_trust.insert(name, Arc::new(trust));
        }
        txn.commit().map_err(db_err)?;
        let (changes, _) = watch::channel(snap.version);
        Ok(Arc::new(IdentityStore {
            db: Arc::new(db),
            current: ArcSwap::from_pointee(snap),
            write_lock: Mutex::new(()),
            changes,
        }))
    }

    /// The control-plane database, for other stores keeping their tables in it.
    pub fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    /// The current snapshot; cheap (one atomic load).
    pub fn snapshot(&self) -> Arc<IdentitySnapshot> {
        self.current.load_full()
    }

    /// Receives the store version after every committed write.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Runs `f` in one write transaction, bumps the version, commits, then publishes the
    /// new snapshot. On error nothing is written or published.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Tx) -> Result<T, IdentityStoreError>,
    ) -> Result<T, IdentityStoreError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut tx = Tx {
            txn: self.db.begin_write().map_err(db_err)?,
            snap: IdentitySnapshot::clone(&self.current.load()),
            now: now_unix(),
        };
        let out = f(&mut tx)?;
        tx.snap.version += 1;
        let version = tx.snap.version;
        tx.txn
            .open_table(META)
            .map_err(db_err)?
            .insert(VERSION_KEY, version)
            .map_err(db_err)?;
        tx.txn.commit().map_err(db_err)?;
        self.current.store(Arc::new(tx.snap));
        self.changes.send_replace(version);
        Ok(out)
    }

    pub fn create_scope_map(
        &self,
        name: &str,
        description: &str,
        rules: &[ScopeRule],
    ) -> Result<Arc<ScopeMap>, IdentityStoreError> {
        self.write(|tx| tx.new_scope_map(name, description, rules))
    }

    pub fn update_scope_map(
        &self,
        name: &str,
        update: &ScopeMapUpdate,
    ) -> Result<Arc<ScopeMap>, IdentityStoreError> {
        self.write(|tx| {
            let mut map = tx.user_scope_map(name)?;
            if let Some(d) = &update.description {
                map.description.clone_from(d);
            }
            map.rules = apply_rule_changes(&map.rules, &update.add, &update.remove);
            map.updated_at = tx.now;
            tx.put_scope_map(map)
        })
    }

    /// Deletes a user-defined scope map that no token uses.
    pub fn delete_scope_map(&self, name: &str) -> Result<(), IdentityStoreError> {
        self.write(|tx| {
            tx.user_scope_map(name)?;
            let mut users: Vec<&str> = tx
                .snap
                .tokens
                .values()
                .filter(|t| t.scope_map == name)
                .map(|t| t.name.as_str())
                .collect();
            if !users.is_empty() {
                users.sort_unstable();
                let more = users.len().saturating_sub(5);
                let mut list = users
                    .iter()
                    .take(5)
                    .map(|u| format!("`{u}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                if more > 0 {
                    list.push_str(&format!(" and {more} more"));
                }
                return Err(IdentityStoreError::ScopeMapInUse {
                    name: name.to_owned(),
                    tokens: list,
                });
            }
            tx.remove(SCOPE_MAPS, name)?;
            tx.snap.scope_maps.remove(name);
            Ok(())
        })
    }

    /// Creates a token (and, for [`TokenScope::Repositories`], its `<token>-scope-map`)
    /// in one transaction; returns the generated passwords once.
    pub fn create_token(&self, new: &NewToken) -> Result<TokenWithSecrets, IdentityStoreError> {
        validate_token_name(&new.name)?;
        self.write(|tx| {
            if tx.snap.tokens.contains_key(&new.name) {
                return Err(IdentityStoreError::AlreadyExists {
                    kind: "token",
                    name: new.name.clone(),
                });
            }
            let scope_map = match &new.scope {
                TokenScope::ScopeMap(name) => {
                    tx.require_scope_map(name)?;
                    name.clone()
                }
                TokenScope::Repositories(rules) => {
                    let name = format!("{}-scope-map", new.name);
                    let description = format!("Scope map for token {}", new.name);
                    tx.new_scope_map(&name, &description, rules)?;
                    name
                }
            };
            let mut token = Token {
                name: new.name.clone(),
                scope_map,
                status: new.status,
                password1: None,
                password2: None,
                created_at: tx.now,
                updated_at: tx.now,
            };
            let passwords = tx.fill_passwords(&mut token, &new.passwords, new.expires_at);
            Ok(TokenWithSecrets {
                token: tx.put_token(token)?,
                passwords,
            })
        })
    }

    pub fn update_token(
        &self,
        name: &str,
        update: &TokenUpdate,
    ) -> Result<Arc<Token>, IdentityStoreError> {
        self.write(|tx| {
            let mut token = tx.token(name)?;
            if let Some(map) = &update.scope_map {
                tx.require_scope_map(map)?;
                token.scope_map.clone_from(map);
            }
            if let Some(status) = update.status {
                token.status = status;
            }
            token.updated_at = tx.now;
            tx.put_token(token)
        })
    }

    /// Deletes a token. Its scope map stays (it may be shared), as in ACR.
    pub fn delete_token(&self, name: &str) -> Result<(), IdentityStoreError> {
        self.write(|tx| {
            tx.token(name)?;
            tx.remove(TOKENS, name)?;
            tx.snap.tokens.remove(name);
            Ok(())
        })
    }

    /// Replaces the passwords in `slots` with fresh secrets; other slots are untouched.
    pub fn generate_passwords(
        &self,
        name: &str,
        slots: &[PasswordSlot],
        expires_at: Option<UnixSeconds>,
    ) -> Result<TokenWithSecrets, IdentityStoreError> {
        self.write(|tx| {
            let mut token = tx.token(name)?;
            let passwords = tx.fill_passwords(&mut token, slots, expires_at);
            token.updated_at = tx.now;
            Ok(TokenWithSecrets {
                token: tx.put_token(token)?,
                passwords,
            })
        })
    }

    /// Removes one password; the other slot is untouched. Removing an empty slot is a no-op.
    pub fn delete_password(
        &self,
        name: &str,
        slot: PasswordSlot,
    ) -> Result<Arc<Token>, IdentityStoreError> {
        self.write(|tx| {
            let mut token = tx.token(name)?;
            match slot {
                PasswordSlot::Password1 => token.password1 = None,
                PasswordSlot::Password2 => token.password2 = None,
            }
            token.updated_at = tx.now;
            tx.put_token(token)
        })
    }

    /// Stores a repository's attributes; defaults are stored as absence.
    pub fn set_repository_attributes(
        &self,
        repository: &str,
        attributes: &RepositoryAttributes,
    ) -> Result<(), IdentityStoreError> {
        self.update_repository_attributes(repository, |_| attributes.clone())
            .map(drop)
    }

    /// Reads a repository's attributes, applies `change` and stores the result, all in
    /// one write transaction, so concurrent updates of different fields all land.
    /// Returns the stored attributes.
    pub fn update_repository_attributes(
        &self,
        repository: &str,
        change: impl FnOnce(&RepositoryAttributes) -> RepositoryAttributes,
    ) -> Result<RepositoryAttributes, IdentityStoreError> {
        if !is_valid_repository_name(repository) {
            return Err(IdentityStoreError::InvalidRepository(repository.to_owned()));
        }
        self.write(|tx| {
            let current = {
                let table = tx.txn.open_table(REPOSITORIES).map_err(db_err)?;
                let stored = table.get(repository).map_err(db_err)?;
                match stored {
                    Some(bytes) => decode(repository, bytes.value())?,
                    None => RepositoryAttributes::default(),
                }
            };
            let attributes = change(&current);
            if attributes == RepositoryAttributes::default() {
                tx.remove(REPOSITORIES, repository)?;
                tx.snap.repositories.remove(repository);
            } else {
                tx.put(REPOSITORIES, repository, &attributes)?;
                tx.snap
                    .repositories
                    .insert(repository.to_owned(), attributes.clone());
            }
            Ok(attributes)
        })
    }

    /// Adds a verification identity for OCI signatures; its key or certificates must
    /// parse. Bumps the signature-trust version (cached verifications are redone).
    pub fn add_signature_trust(
        &self,
        name: &str,
        material: TrustMaterial,
    ) -> Result<Arc<SignatureTrust>, IdentityStoreError> {
        validate_signature_trust_name(name)?;
        TrustedIdentity::parse(&material)?;
        self.write(|tx| {
            if tx.snap.signature_trust.contains_key(name) {
                return Err(IdentityStoreError::AlreadyExists {
                    kind: "signature trust",
                    name: name.to_owned(),
                });
            }
            let trust = SignatureTrust {
                name: name.to_owned(),
                material,
                created_at: tx.now,
            };
            tx.put(SIGNATURE_TRUST, name, &trust)?;
            let trust = Arc::new(trust);
            tx.snap
                .signature_trust
                .insert(name.to_owned(), Arc::clone(&trust));
            tx.bump_signature_trust()?;
            Ok(trust)
        })
    }

    /// Removes a verification identity; signatures it verified no longer count.
    pub fn remove_signature_trust(&self, name: &str) -> Result<(), IdentityStoreError> {
        self.write(|tx| {
            if tx.snap.signature_trust.remove(name).is_none() {
                return Err(not_found("signature trust", name));
            }
            tx.remove(SIGNATURE_TRUST, name)?;
            tx.bump_signature_trust()
        })
    }

    /// The admin password's stored record when `password` still matches it, else a
    /// fresh record (new salt), stored. Bearer tokens name the record they were issued
    /// under, so changing the admin password revokes the admin's earlier tokens while a
    /// restart with the same password keeps them.
    pub fn admin_password_record(
        &self,
        password: &str,
    ) -> Result<PasswordRecord, IdentityStoreError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut table = txn.open_table(ADMIN).map_err(db_err)?;
            let stored: Option<PasswordRecord> = match table.get("admin").map_err(db_err)? {
                Some(bytes) => Some(decode("admin", bytes.value())?),
                None => None,
            };
            match stored {
                Some(record) if verify_secret(&record, password) => return Ok(record),
                _ => {
                    let record = hash_secret(password, now_unix(), None);
                    let bytes = serde_json::to_vec(&record).map_err(|source| {
                        IdentityStoreError::Corrupt {
                            key: "admin".to_owned(),
                            source,
                        }
                    })?;
                    table.insert("admin", bytes.as_slice()).map_err(db_err)?;
                    record
                }
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(record)
    }

    /// Checks a token's credentials against the current snapshot.
    pub fn verify_password(
        &self,
        name: &str,
        secret: &str,
        now: UnixSeconds,
    ) -> Result<PasswordSlot, AuthError> {
        self.snapshot().verify_password(name, secret, now)
    }
}

#[cfg(test)]
mod tests;
