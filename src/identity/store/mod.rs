//! The control-plane store: tokens, scope maps, repository attributes, signature
//! trust and the admin password record, with an in-memory [`IdentitySnapshot`] swapped
//! in after every change so the request path reads memory only.
//!
//! Two backends keep the records ([`Kind`], key → JSON): redb (`control.redb`, one
//! process; [`redb`]) and PostgreSQL, shared by every gateway ([`pg`]). A write is a
//! list of record writes plus a version bump, committed atomically: its checks run on a
//! snapshot that is current under the write's lock (in PostgreSQL, the version row
//! locked `FOR UPDATE`, after catching up with other gateways' writes), and the new
//! snapshot is published only after the commit. Other gateways' writes arrive as
//! records changed since a version ([`pg::follow`]) and are applied the same way.
//! System scope maps live in code, not in the database.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::control_plane::{EmbeddedDb, PgControl};

mod pg;
mod redb;

pub use self::redb::{TablesCheck, check_tables};

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
    Database(#[from] ::redb::Error),
    #[error("control-plane write task: {0}")]
    Task(String),
    #[error("control-plane database {url}: {cause}")]
    Postgres { url: String, cause: String },
    #[error("control-plane record `{key}` is corrupt: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

fn not_found(kind: &'static str, name: &str) -> IdentityStoreError {
    IdentityStoreError::NotFound {
        kind,
        name: name.to_owned(),
    }
}

/// What a control-plane record is: its redb table, its `kind` in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Token,
    ScopeMap,
    Repository,
    SignatureTrust,
    Admin,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Token,
        Kind::ScopeMap,
        Kind::Repository,
        Kind::SignatureTrust,
        Kind::Admin,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::ScopeMap => "scope_map",
            Kind::Repository => "repository",
            Kind::SignatureTrust => "signature_trust",
            Kind::Admin => "admin",
        }
    }

    fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One record write (`value` `None`: deleted), as committed and as replayed.
#[derive(Debug, Clone)]
struct Record {
    kind: Kind,
    key: String,
    /// JSON.
    value: Option<Vec<u8>>,
}

/// The admin password record's key.
const ADMIN_KEY: &str = "admin";

/// Sets one record in `snap`: how loading and other gateways' writes reach a snapshot.
fn apply(snap: &mut IdentitySnapshot, record: &Record) -> Result<(), IdentityStoreError> {
    let key = record.key.clone();
    let Some(bytes) = &record.value else {
        match record.kind {
            Kind::Token => drop(snap.tokens.remove(&key)),
            Kind::ScopeMap => drop(snap.scope_maps.remove(&key)),
            Kind::Repository => drop(snap.repositories.remove(&key)),
            Kind::SignatureTrust => drop(snap.signature_trust.remove(&key)),
            Kind::Admin => snap.admin_password = None,
        }
        return Ok(());
    };
    match record.kind {
        Kind::Token => drop(
            snap.tokens
                .insert(key, Arc::new(decode(&record.key, bytes)?)),
        ),
        Kind::ScopeMap => drop(
            snap.scope_maps
                .insert(key, Arc::new(decode(&record.key, bytes)?)),
        ),
        Kind::Repository => drop(snap.repositories.insert(key, decode(&record.key, bytes)?)),
        Kind::SignatureTrust => drop(
            snap.signature_trust
                .insert(key, Arc::new(decode(&record.key, bytes)?)),
        ),
        Kind::Admin => snap.admin_password = Some(Arc::new(decode(&record.key, bytes)?)),
    }
    Ok(())
}

/// A snapshot at `version` holding `records` (and the system scope maps).
fn load(version: u64, records: &[Record]) -> Result<IdentitySnapshot, IdentityStoreError> {
    let mut snap = IdentitySnapshot {
        version,
        // Nothing verified under an earlier one survives a restart.
        signature_trust_version: version,
        ..IdentitySnapshot::default()
    };
    for map in system_scope_maps() {
        snap.scope_maps.insert(map.name.clone(), Arc::new(map));
    }
    for record in records {
        apply(&mut snap, record)?;
    }
    Ok(snap)
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
    backend: Backend,
    current: ArcSwap<IdentitySnapshot>,
    /// Serialises this process's writers (PostgreSQL serialises every gateway's too).
    write_lock: tokio::sync::Mutex<()>,
    /// Held while a snapshot is replaced: only ever by a newer one.
    publish_lock: Mutex<()>,
    changes: watch::Sender<u64>,
    /// When the snapshot was last known to be current: milliseconds since `epoch`.
    confirmed_ms: AtomicI64,
    epoch: std::time::Instant,
}

enum Backend {
    Redb(redb::Redb),
    Postgres {
        control: Arc<PgControl>,
        /// How long the snapshot may go unconfirmed before requests are refused.
        max_staleness: Duration,
    },
}

impl std::fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityStore")
            .field("version", &self.current.load().version)
            .finish_non_exhaustive()
    }
}

/// The snapshot has not been confirmed current for longer than the staleness bound
/// allows (`--control-plane-max-staleness-seconds`): rights may have changed since.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the control plane is unreachable since {since} ({}s)", .elapsed.as_secs())]
pub struct Stale {
    /// RFC 3339, UTC.
    pub since: String,
    pub elapsed: Duration,
}

/// One write in progress: the snapshot being built and the records to commit.
struct Tx {
    snap: IdentitySnapshot,
    writes: Vec<Record>,
    now: UnixSeconds,
}

impl Tx {
    fn put<T: Serialize>(
        &mut self,
        kind: Kind,
        key: &str,
        value: &T,
    ) -> Result<(), IdentityStoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| IdentityStoreError::Corrupt {
            key: key.to_owned(),
            source,
        })?;
        self.writes.push(Record {
            kind,
            key: key.to_owned(),
            value: Some(bytes),
        });
        Ok(())
    }

    fn remove(&mut self, kind: Kind, key: &str) {
        self.writes.push(Record {
            kind,
            key: key.to_owned(),
            value: None,
        });
    }

    /// Marks a change of the signature trust: the version of this write.
    fn bump_signature_trust(&mut self) {
        self.snap.signature_trust_version = self.snap.version + 1;
    }

    fn put_token(&mut self, token: Token) -> Result<Arc<Token>, IdentityStoreError> {
        self.put(Kind::Token, &token.name, &token)?;
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
        self.put(Kind::ScopeMap, &map.name, &map)?;
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

impl IdentityStore {
    /// Opens (creating if needed) the embedded store at `path` and loads the snapshot.
    pub fn open(path: &Path) -> Result<Arc<Self>, IdentityStoreError> {
        let db = EmbeddedDb::open(path).map_err(|e| IdentityStoreError::Database(e.into()))?;
        Self::embedded(Arc::new(db))
    }

    /// The embedded store in `db` (shared with the trust store).
    pub fn embedded(db: Arc<EmbeddedDb>) -> Result<Arc<Self>, IdentityStoreError> {
        let (redb, version, records) = redb::Redb::open(db)?;
        Ok(Self::with(Backend::Redb(redb), load(version, &records)?))
    }

    /// The store in the shared control-plane database: every record loaded now, other
    /// gateways' writes followed by [`IdentityStore::follower`]. A snapshot unconfirmed
    /// for longer than `max_staleness` is [`Stale`].
    pub async fn postgres(
        control: Arc<PgControl>,
        max_staleness: Duration,
    ) -> Result<Arc<Self>, IdentityStoreError> {
        let (version, records) = pg::load(&control).await?;
        Ok(Self::with(
            Backend::Postgres {
                control,
                max_staleness,
            },
            load(version, &records)?,
        ))
    }

    fn with(backend: Backend, snap: IdentitySnapshot) -> Arc<Self> {
        let (changes, _) = watch::channel(snap.version);
        Arc::new(IdentityStore {
            backend,
            current: ArcSwap::from_pointee(snap),
            write_lock: tokio::sync::Mutex::new(()),
            publish_lock: Mutex::new(()),
            changes,
            confirmed_ms: AtomicI64::new(0),
            epoch: std::time::Instant::now(),
        })
    }

    /// The embedded control-plane database, for other stores keeping their tables in it.
    pub fn database(&self) -> Option<Arc<EmbeddedDb>> {
        match &self.backend {
            Backend::Redb(redb) => Some(redb.database()),
            Backend::Postgres { .. } => None,
        }
    }

    /// The task that keeps a shared store's snapshot current (`None` when embedded: this
    /// process makes every change). Spawn it once, on a runtime that outlives requests.
    pub fn follower(self: &Arc<Self>) -> Option<impl Future<Output = ()> + Send + 'static> {
        match &self.backend {
            Backend::Redb(_) => None,
            Backend::Postgres { control, .. } => {
                Some(pg::follow(Arc::downgrade(self), Arc::clone(control)))
            }
        }
    }

    /// The current snapshot; cheap (one atomic load).
    pub fn snapshot(&self) -> Arc<IdentitySnapshot> {
        self.current.load_full()
    }

    /// Receives the store version after every change of the snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether decisions may be made from the snapshot: `Err` once a shared store has
    /// not been confirmed current for longer than its staleness bound. An embedded
    /// store is never stale.
    pub fn fresh(&self) -> Result<(), Stale> {
        let Backend::Postgres { max_staleness, .. } = &self.backend else {
            return Ok(());
        };
        let confirmed = Duration::from_millis(
            u64::try_from(self.confirmed_ms.load(Ordering::Relaxed)).unwrap_or_default(),
        );
        let elapsed = self.epoch.elapsed().saturating_sub(confirmed);
        if elapsed <= *max_staleness {
            return Ok(());
        }
        let since = time::OffsetDateTime::now_utc() - elapsed;
        Err(Stale {
            since: since
                .replace_nanosecond(0)
                .unwrap_or(since)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            elapsed,
        })
    }

    /// The snapshot was found current just now.
    fn confirm(&self) {
        let now = i64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.confirmed_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// A new write on the current snapshot.
    fn begin(&self) -> Tx {
        Tx {
            snap: IdentitySnapshot::clone(&self.current.load()),
            writes: Vec::new(),
            now: now_unix(),
        }
    }

    /// Publishes a committed write's snapshot (unless a newer one is in place already:
    /// a follower may have applied this very write first).
    fn publish(&self, mut tx: Tx) {
        tx.snap.version += 1;
        let _guard = self
            .publish_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if tx.snap.version > self.current.load().version {
            let version = tx.snap.version;
            self.current.store(Arc::new(tx.snap));
            self.changes.send_replace(version);
        }
    }

    /// Applies the records changed between versions `from` and `to` to the snapshot at
    /// `from`; false (nothing done) when the snapshot is no longer at `from`.
    fn advance(&self, from: u64, to: u64, records: &[Record]) -> Result<bool, IdentityStoreError> {
        let _guard = self
            .publish_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.current.load();
        if current.version != from {
            return Ok(false);
        }
        let mut snap = IdentitySnapshot::clone(&current);
        for record in records {
            apply(&mut snap, record)?;
            if record.kind == Kind::SignatureTrust {
                snap.signature_trust_version = to;
            }
        }
        snap.version = to;
        self.current.store(Arc::new(snap));
        self.changes.send_replace(to);
        Ok(true)
    }

    /// Runs `f` on the current snapshot and commits the records it wrote with the next
    /// version, then publishes the new snapshot. On error, or when `f` wrote nothing,
    /// nothing is committed or published.
    async fn write<T: Send>(
        &self,
        f: impl FnOnce(&mut Tx) -> Result<T, IdentityStoreError> + Send,
    ) -> Result<T, IdentityStoreError> {
        let _guard = self.write_lock.lock().await;
        match &self.backend {
            Backend::Redb(redb) => {
                let mut tx = self.begin();
                let out = f(&mut tx)?;
                if !tx.writes.is_empty() {
                    // A redb commit syncs the file: off the async workers.
                    let (redb, writes) = (redb.clone(), std::mem::take(&mut tx.writes));
                    let version = tx.snap.version + 1;
                    tokio::task::spawn_blocking(move || redb.commit(&writes, version))
                        .await
                        .map_err(|e| IdentityStoreError::Task(e.to_string()))??;
                    self.publish(tx);
                }
                Ok(out)
            }
            Backend::Postgres { control, .. } => pg::write(self, control, f).await,
        }
    }

    pub async fn create_scope_map(
        &self,
        name: &str,
        description: &str,
        rules: &[ScopeRule],
    ) -> Result<Arc<ScopeMap>, IdentityStoreError> {
        self.write(|tx| tx.new_scope_map(name, description, rules))
            .await
    }

    pub async fn update_scope_map(
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
        .await
    }

    /// Deletes a user-defined scope map that no token uses.
    pub async fn delete_scope_map(&self, name: &str) -> Result<(), IdentityStoreError> {
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
            tx.remove(Kind::ScopeMap, name);
            tx.snap.scope_maps.remove(name);
            Ok(())
        })
        .await
    }

    /// Creates a token (and, for [`TokenScope::Repositories`], its `<token>-scope-map`)
    /// in one transaction; returns the generated passwords once.
    pub async fn create_token(
        &self,
        new: &NewToken,
    ) -> Result<TokenWithSecrets, IdentityStoreError> {
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
        .await
    }

    pub async fn update_token(
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
        .await
    }

    /// Deletes a token. Its scope map stays (it may be shared), as in ACR.
    pub async fn delete_token(&self, name: &str) -> Result<(), IdentityStoreError> {
        self.write(|tx| {
            tx.token(name)?;
            tx.remove(Kind::Token, name);
            tx.snap.tokens.remove(name);
            Ok(())
        })
        .await
    }

    /// Replaces the passwords in `slots` with fresh secrets; other slots are untouched.
    pub async fn generate_passwords(
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
        .await
    }

    /// Removes one password; the other slot is untouched. Removing an empty slot is a no-op.
    pub async fn delete_password(
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
        .await
    }

    /// Stores a repository's attributes; defaults are stored as absence.
    pub async fn set_repository_attributes(
        &self,
        repository: &str,
        attributes: &RepositoryAttributes,
    ) -> Result<(), IdentityStoreError> {
        self.update_repository_attributes(repository, |_| attributes.clone())
            .await
            .map(drop)
    }

    /// Reads a repository's attributes, applies `change` and stores the result, all in
    /// one write transaction, so concurrent updates of different fields all land.
    /// Returns the stored attributes.
    pub async fn update_repository_attributes(
        &self,
        repository: &str,
        change: impl FnOnce(&RepositoryAttributes) -> RepositoryAttributes + Send,
    ) -> Result<RepositoryAttributes, IdentityStoreError> {
        if !is_valid_repository_name(repository) {
            return Err(IdentityStoreError::InvalidRepository(repository.to_owned()));
        }
        self.write(|tx| {
            let attributes = change(&tx.snap.repository_attributes(repository));
            if attributes == RepositoryAttributes::default() {
                tx.remove(Kind::Repository, repository);
                tx.snap.repositories.remove(repository);
            } else {
                tx.put(Kind::Repository, repository, &attributes)?;
                tx.snap
                    .repositories
                    .insert(repository.to_owned(), attributes.clone());
            }
            Ok(attributes)
        })
        .await
    }

    /// Adds a verification identity for OCI signatures; its key or certificates must
    /// parse. Bumps the signature-trust version (cached verifications are redone).
    pub async fn add_signature_trust(
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
            tx.put(Kind::SignatureTrust, name, &trust)?;
            let trust = Arc::new(trust);
            tx.snap
                .signature_trust
                .insert(name.to_owned(), Arc::clone(&trust));
            tx.bump_signature_trust();
            Ok(trust)
        })
        .await
    }

    /// Removes a verification identity; signatures it verified no longer count.
    pub async fn remove_signature_trust(&self, name: &str) -> Result<(), IdentityStoreError> {
        self.write(|tx| {
            if tx.snap.signature_trust.remove(name).is_none() {
                return Err(not_found("signature trust", name));
            }
            tx.remove(Kind::SignatureTrust, name);
            tx.bump_signature_trust();
            Ok(())
        })
        .await
    }

    /// The admin password's stored record when `password` still matches it, else a
    /// fresh record (new salt), stored. Bearer tokens name the record they were issued
    /// under, so changing the admin password revokes the admin's earlier tokens while a
    /// restart with the same password keeps them.
    pub async fn admin_password_record(
        &self,
        password: &str,
    ) -> Result<PasswordRecord, IdentityStoreError> {
        self.write(|tx| {
            if let Some(record) = &tx.snap.admin_password
                && verify_secret(record, password)
            {
                return Ok(PasswordRecord::clone(record));
            }
            let record = hash_secret(password, tx.now, None);
            tx.put(Kind::Admin, ADMIN_KEY, &record)?;
            tx.snap.admin_password = Some(Arc::new(record.clone()));
            Ok(record)
        })
        .await
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
