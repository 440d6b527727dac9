//! The trust service: what the Notary API and the signed-only views ask of trust data.
//! It validates updates (`validate::validate_update`) against the stored state and
//! persists them atomically, refreshes expired timestamps/snapshots on GET, hands out
//! and rotates the server-managed timestamp/snapshot keys, serves the changefeed, owns
//! the registry-level content-trust switch, and caches each repository's signed targets
//! for the views (invalidated on every change of that repository).
//!
//! Two backends behind one interface ([`Backend`]): the redb tables of `control.redb`
//! ([`super::store`]) or the control-plane PostgreSQL database ([`super::pg`]). A change
//! reads the GUN's state, validates and signs against it and stores the result in one
//! transaction of the backend, which serializes writes of a GUN. With PostgreSQL, other
//! gateways' changes arrive by notification (and a poll as the safety net,
//! [`TrustService::spawn_watch`]); until the listener listens, nothing is served from
//! the cache. The methods that reach the store are `async`; HTTP handlers run them on a
//! blocking thread (redb writes sync to disk).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use moka::sync::Cache;
use portcullis_storage::CacheSize;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::kek::{self, Kek, KekError, PassphraseSource, Unlocked};
use super::keys::PublicKey;
use super::metadata::{Root, SignedFile};
use super::naming::{MetadataRef, Role, gun_repository};
use super::pg::{self as trust_pg, PgTrustStore};
use super::signer::{KeyAlgorithm, ServerKey};
use super::store::{Change, GunData, GunWrite, NewFile, StoredFile, TrustStore, TrustStoreError};
use super::validate::{self, Files, TrustState, UpdateError};
use crate::control_plane::{EmbeddedDb, PgControl};

/// Repositories whose signed targets stay cached (a few hundred bytes each).
const SIGNED_TARGETS_CAPACITY: u64 = 10_000;
/// How long signed targets stay cached without a change: metadata expiring in the
/// meantime stops counting within this delay.
const SIGNED_TARGETS_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// How often a gateway on PostgreSQL reads the switch and the last change id, in case a
/// notification was missed: a change is seen within this delay (plus a query) anyway.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Changefeed page size when the client names none (notary's default).
const DEFAULT_CHANGEFEED_RECORDS: i64 = 100;
/// Largest changefeed page, either direction.
const MAX_CHANGEFEED_RECORDS: i64 = 1000;
/// Pending (not yet pinned by a root) server keys kept per GUN and role; older ones are
/// dropped, so `GET <role>.key` on made-up GUNs cannot grow the store without bound.
const MAX_PENDING_KEYS: usize = 4;

/// The registry-level content-trust switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentTrustStatus {
    Enabled,
    #[default]
    Disabled,
}

/// A stored TUF file as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub bytes: Bytes,
    /// When the server stored it (`Last-Modified`).
    pub modified: OffsetDateTime,
}

/// A changefeed page, in notary's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changefeed {
    pub count: usize,
    pub records: Vec<Change>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("content trust is disabled on this registry")]
    Disabled,
    #[error("{what} of `{gun}` does not exist")]
    NotFound { gun: String, what: String },
    /// The upload failed validation (notary's `INVALID_UPDATE` and friends).
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// A role's stored version is not older than the new one (notary's `VERSION`).
    #[error("{0}")]
    OldVersion(String),
    #[error("the server manages only timestamp and snapshot keys, not `{0}`")]
    NotServerManaged(String),
    #[error("invalid changefeed parameter: {0}")]
    InvalidParameter(String),
    #[error("trust store: {0}")]
    Store(TrustStoreError),
    #[error("stored server key of `{gun}` is unreadable: {reason}")]
    CorruptKey { gun: String, reason: String },
    #[error(transparent)]
    Kek(#[from] KekError),
}

impl From<TrustStoreError> for TrustError {
    fn from(e: TrustStoreError) -> TrustError {
        match e {
            TrustStoreError::OldVersion { .. } => TrustError::OldVersion(e.to_string()),
            TrustStoreError::Disabled => TrustError::Disabled,
            other => TrustError::Store(other),
        }
    }
}

/// The signed targets of one repository (`targets` and `targets/releases` of every GUN
/// naming it), for the signed-only views. Several GUNs (hosts) may sign the same tag, each
/// with its own digest: a tag is signed as any of them, so no GUN can veto another's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SignedTargets {
    /// How many GUNs of the repository hold trust data.
    guns: usize,
    /// tag → every `sha256:<hex>` signed for it
    tags: HashMap<String, BTreeSet<String>>,
    /// `sha256:<hex>` of every signed target.
    digests: HashSet<String>,
}

impl SignedTargets {
    /// No trust data for the repository.
    pub fn is_empty(&self) -> bool {
        self.guns == 0
    }

    /// Whether `tag` has a signed target (in any GUN).
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.contains_key(tag)
    }

    /// Whether `digest` (`sha256:<hex>`) is one of `tag`'s signed digests.
    pub fn tag_has_digest(&self, tag: &str, digest: &str) -> bool {
        self.tags.get(tag).is_some_and(|d| d.contains(digest))
    }

    /// Whether `digest` (`sha256:<hex>`) is a signed target.
    pub fn has_digest(&self, digest: &str) -> bool {
        self.digests.contains(digest)
    }

    /// Every signed tag, once, in no order (the signed-only tag list).
    pub fn tag_names(&self) -> impl Iterator<Item = &str> {
        self.tags.keys().map(String::as_str)
    }

    /// Every signed (tag, digest `sha256:<hex>`) pair, a tag once per digest, in no order.
    #[cfg(test)]
    pub fn tags(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tags
            .iter()
            .flat_map(|(t, ds)| ds.iter().map(move |d| (t.as_str(), d.as_str())))
    }

    /// One GUN's signed `tags` (tag, `sha256:<hex>`), for view tests (added by VIEWS).
    #[cfg(test)]
    pub fn from_tags(tags: &[(&str, &str)]) -> SignedTargets {
        SignedTargets {
            guns: 1,
            tags: tags
                .iter()
                .map(|(t, d)| ((*t).to_owned(), BTreeSet::from([(*d).to_owned()])))
                .collect(),
            digests: tags.iter().map(|(_, d)| (*d).to_owned()).collect(),
        }
    }
}

/// Where trust data lives.
enum Backend {
    Redb(TrustStore),
    Pg(PgTrustStore),
}

impl Backend {
    async fn gun(&self, gun: &str, keys: bool) -> Result<GunData, TrustStoreError> {
        match self {
            Backend::Redb(store) => store.read()?.gun_data(gun, keys),
            Backend::Pg(store) => store.gun(gun, keys).await,
        }
    }

    async fn version(
        &self,
        gun: &str,
        role: &str,
        version: u64,
    ) -> Result<Option<StoredFile>, TrustStoreError> {
        match self {
            Backend::Redb(store) => store.read()?.version(gun, role, version),
            Backend::Pg(store) => store.version(gun, role, version).await,
        }
    }

    async fn by_checksum(
        &self,
        gun: &str,
        sha256: &str,
    ) -> Result<Option<StoredFile>, TrustStoreError> {
        match self {
            Backend::Redb(store) => store.read()?.by_checksum(gun, sha256),
            Backend::Pg(store) => store.by_checksum(gun, sha256).await,
        }
    }

    /// The GUNs whose repository part is `repository`.
    async fn guns_of(&self, repository: &str) -> Result<Vec<String>, TrustStoreError> {
        let mut guns = match self {
            Backend::Redb(store) => store.read()?.guns()?,
            Backend::Pg(store) => store.guns_of(repository).await?,
        };
        guns.retain(|gun| gun_repository(gun) == Some(repository));
        Ok(guns)
    }

    async fn changes_of(
        &self,
        wanted: impl FnMut(&str) -> bool,
        change_id: i64,
        records: i64,
    ) -> Result<Vec<Change>, TrustStoreError> {
        match self {
            Backend::Redb(store) => store.read()?.changes_of(wanted, change_id, records),
            Backend::Pg(store) => store.changes_of(wanted, change_id, records).await,
        }
    }

    /// `write` run on `gun`'s state (files and keys) and what it returns stored, in one
    /// transaction in which content trust is enabled (checked inside it, so a concurrent
    /// disable, which deletes everything, cannot be followed by a write that recreates
    /// trust data). Returns its value and whether files changed.
    async fn transact<T>(
        &self,
        gun: &str,
        now: OffsetDateTime,
        write: impl FnOnce(&GunData) -> Result<(GunWrite, T), TrustError>,
    ) -> Result<(T, bool), TrustError> {
        match self {
            Backend::Redb(store) => {
                // redb serialises write transactions.
                let txn = store.write()?;
                if !txn.enabled()? {
                    return Err(TrustError::Disabled);
                }
                let (changes, value) = write(&txn.gun_data(gun, true)?)?;
                if changes.is_empty() {
                    return Ok((value, false));
                }
                txn.apply(gun, &changes, now)?;
                txn.commit()?;
                Ok((value, !changes.files.is_empty()))
            }
            Backend::Pg(store) => store.transact(gun, now, write).await,
        }
    }

    async fn delete(&self, gun: &str, now: OffsetDateTime) -> Result<(), TrustError> {
        match self {
            Backend::Redb(store) => {
                let txn = store.write()?;
                if !txn.enabled()? {
                    return Err(TrustError::Disabled);
                }
                txn.delete(gun, now)?;
                txn.commit()?;
            }
            Backend::Pg(store) => store.delete(gun, now).await?,
        }
        Ok(())
    }

    async fn set_enabled(&self, enabled: bool, now: OffsetDateTime) -> Result<(), TrustError> {
        match self {
            Backend::Redb(store) => {
                let txn = store.write()?;
                if !enabled {
                    txn.delete_all(now)?;
                }
                txn.set_enabled(enabled)?;
                txn.commit()?;
            }
            Backend::Pg(store) => store.set_enabled(enabled, now).await?,
        }
        Ok(())
    }
}

pub struct TrustService {
    store: Backend,
    /// Seals the server-held private keys at rest.
    kek: Kek,
    /// For new server-managed keys.
    algorithm: Mutex<KeyAlgorithm>,
    enabled: AtomicBool,
    signed: Cache<String, Arc<SignedTargets>>,
    /// Bumped after every committed change, so a signed-targets computation that raced
    /// with one is not cached.
    epoch: AtomicU64,
    /// Whether every change committed elsewhere reaches this process (always with redb;
    /// with PostgreSQL while the listener listens): otherwise the cache is not used.
    listening: AtomicBool,
    /// PostgreSQL: the last change id the poll has seen.
    last_change: AtomicI64,
}

impl std::fmt::Debug for TrustService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustService")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl TrustService {
    /// The trust tables in the control-plane redb file `db`; new keys use `algorithm`.
    /// Unlocks the key-encryption key with the passphrase `passphrase` names (see
    /// [`kek::unlock`]); says what the unlock did.
    pub fn open(
        db: Arc<EmbeddedDb>,
        algorithm: KeyAlgorithm,
        data_dir: &std::path::Path,
        passphrase: &PassphraseSource,
    ) -> Result<(Arc<Self>, Unlocked), TrustError> {
        let store = TrustStore::open(db)?;
        let (kek, unlocked) = kek::unlock(&store, data_dir, passphrase)?;
        let enabled = store.read()?.enabled()?;
        let service = Self::new(Backend::Redb(store), kek, algorithm, enabled, 0, true);
        Ok((service, unlocked))
    }

    /// The trust tables of the control-plane PostgreSQL database, shared with every
    /// gateway given the same operator passphrase ([`kek::unlock_shared`]). Nothing is
    /// served from the cache until [`spawn_watch`](Self::spawn_watch)'s listener listens.
    pub async fn open_shared(
        control: Arc<PgControl>,
        algorithm: KeyAlgorithm,
        passphrase: &PassphraseSource,
    ) -> Result<(Arc<Self>, Unlocked), TrustError> {
        let store = PgTrustStore::new(control);
        let (kek, unlocked) = kek::unlock_shared(&store, passphrase).await?;
        let (enabled, last_change) = store.status().await?;
        let service = Self::new(
            Backend::Pg(store),
            kek,
            algorithm,
            enabled,
            last_change,
            false,
        );
        Ok((service, unlocked))
    }

    fn new(
        store: Backend,
        kek: Kek,
        algorithm: KeyAlgorithm,
        enabled: bool,
        last_change: i64,
        listening: bool,
    ) -> Arc<Self> {
        Arc::new(TrustService {
            store,
            kek,
            algorithm: Mutex::new(algorithm),
            enabled: AtomicBool::new(enabled),
            signed: Cache::builder()
                .max_capacity(SIGNED_TARGETS_CAPACITY)
                .time_to_live(SIGNED_TARGETS_TTL)
                .build(),
            epoch: AtomicU64::new(0),
            listening: AtomicBool::new(listening),
            last_change: AtomicI64::new(last_change),
        })
    }

    /// With PostgreSQL, starts (on the current runtime) the listener on
    /// [`trust_pg::CHANNEL`] and the poll that keep this process's switch and cache in
    /// step with other gateways' changes; both end with the service. Nothing to do on
    /// redb.
    pub fn spawn_watch(self: &Arc<Self>) {
        let Backend::Pg(store) = &self.store else {
            return;
        };
        let watcher = Arc::new(Watcher {
            service: Arc::downgrade(self),
            wake: tokio::sync::Notify::new(),
        });
        let listener = store.control().listen(
            trust_pg::CHANNEL,
            "portcullis trust listener",
            Arc::clone(&watcher) as Arc<dyn portcullis_storage::pg::Notified>,
        );
        let listener = tokio::spawn(listener);
        tokio::spawn(poll(store.clone(), watcher, listener));
    }

    /// The signed-targets cache's size.
    pub fn cache_size(&self) -> CacheSize {
        CacheSize::counted("signed_targets", &self.signed)
    }

    /// The key-encryption key, which also seals the token-signing keys
    /// (`gateway::signing_keys`).
    pub fn kek(&self) -> &Kek {
        &self.kek
    }

    /// The algorithm of keys generated from now on (`trust.key_algorithm`).
    pub fn set_key_algorithm(&self, algorithm: KeyAlgorithm) {
        *self
            .algorithm
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = algorithm;
    }

    pub fn status(&self) -> ContentTrustStatus {
        if self.enabled.load(Ordering::Acquire) {
            ContentTrustStatus::Enabled
        } else {
            ContentTrustStatus::Disabled
        }
    }

    /// Enabling keeps data; disabling deletes every GUN's trust data and keys (images are
    /// not trust data and stay), for every gateway at once.
    pub async fn set_status(&self, status: ContentTrustStatus) -> Result<(), TrustError> {
        let enabled = status == ContentTrustStatus::Enabled;
        self.store
            .set_enabled(enabled, OffsetDateTime::now_utc())
            .await?;
        self.enabled.store(enabled, Ordering::Release);
        self.changed(None);
        Ok(())
    }

    /// For reads: the switch as last committed (or, with PostgreSQL, as last heard of).
    fn check_enabled(&self) -> Result<(), TrustError> {
        match self.status() {
            ContentTrustStatus::Enabled => Ok(()),
            ContentTrustStatus::Disabled => Err(TrustError::Disabled),
        }
    }

    /// A stored file. The current timestamp or snapshot is first regenerated (and
    /// stored) when it has expired or no longer matches.
    pub async fn get(
        &self,
        gun: &str,
        what: &MetadataRef,
        now: OffsetDateTime,
    ) -> Result<Metadata, TrustError> {
        self.check_enabled()?;
        let found = match what {
            MetadataRef::Current(role) if role.is_server_managed() => {
                self.refreshed(gun, role, now).await?
            }
            MetadataRef::Current(role) => self
                .store
                .gun(gun, false)
                .await?
                .current
                .remove(role.as_str()),
            MetadataRef::Version { role, version } => {
                self.store.version(gun, role.as_str(), *version).await?
            }
            MetadataRef::Checksum { role, sha256 } => self
                .store
                .by_checksum(gun, sha256)
                .await?
                .filter(|f| f.role == role.as_str()),
        };
        let file = found.ok_or_else(|| TrustError::NotFound {
            gun: gun.to_owned(),
            what: describe(what),
        })?;
        Ok(Metadata {
            bytes: file.bytes,
            modified: OffsetDateTime::from_unix_timestamp(file.stored_at)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        })
    }

    /// The current `role` (timestamp or snapshot), regenerated and stored first when
    /// `validate::refresh` says so. Checked first, without signing or locking (the
    /// common case: nothing to do), then regenerated in the write that stores the
    /// result. A failed refresh is logged and the stored file served: clients judge
    /// expiry themselves.
    async fn refreshed(
        &self,
        gun: &str,
        role: &Role,
        now: OffsetDateTime,
    ) -> Result<Option<StoredFile>, TrustError> {
        let mut data = self.store.gun(gun, true).await?;
        let state = GunView::new(&data, gun, &self.kek);
        let stale = validate::is_stale(&state, role, now);
        state.finish()?;
        match stale {
            Ok(false) => return Ok(data.current.remove(role.as_str())),
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(gun, role = role.as_str(), error = %e, "cannot refresh trust metadata");
                return Ok(data.current.remove(role.as_str()));
            }
        }
        let (file, changed) = self
            .store
            .transact(gun, now, |data| {
                let state = GunView::new(data, gun, &self.kek);
                let regenerated = validate::refresh(gun, &state, role, now);
                state.finish()?;
                let current = data.current.get(role.as_str()).cloned();
                match regenerated {
                    Ok(Some(files)) => {
                        let file = files.iter().find(|(r, _)| r == role).map(|(_, f)| {
                            StoredFile {
                                role: role.as_str().to_owned(),
                                version: f.version,
                                bytes: f.raw.clone(),
                                stored_at: now.unix_timestamp(),
                            }
                        });
                        let write = GunWrite {
                            files: new_files(files),
                            ..GunWrite::default()
                        };
                        Ok((write, file.or(current)))
                    }
                    Ok(None) => Ok((GunWrite::default(), current)),
                    Err(e) => {
                        tracing::warn!(gun, role = role.as_str(), error = %e, "cannot refresh trust metadata");
                        Ok((GunWrite::default(), current))
                    }
                }
            })
            .await?;
        if changed {
            self.changed(Some(gun));
        }
        Ok(file)
    }

    /// Validates an upload (multipart parts: role → bytes) and stores it with the
    /// generated snapshot/timestamp, atomically. A new root also retires the pending
    /// server keys it did not pin.
    pub async fn update(
        &self,
        gun: &str,
        parts: Vec<(Role, Bytes)>,
        now: OffsetDateTime,
    ) -> Result<(), TrustError> {
        let ((), changed) = self
            .store
            .transact(gun, now, |data| {
                let state = GunView::new(data, gun, &self.kek);
                let validated = validate::validate_update(gun, &state, parts, now);
                state.finish()?;
                let files = validated?;
                let retain = files
                    .iter()
                    .find(|(role, _)| *role == Role::root())
                    .map(|(_, root)| {
                        [Role::timestamp(), Role::snapshot()]
                            .map(|role| {
                                let keep = pinned_key_ids(root, &role);
                                (role.as_str().to_owned(), keep, 0)
                            })
                            .to_vec()
                    })
                    .unwrap_or_default();
                let write = GunWrite {
                    files: new_files(files),
                    keys: Vec::new(),
                    retain,
                };
                Ok((write, ()))
            })
            .await?;
        if changed {
            self.changed(Some(gun));
        }
        Ok(())
    }

    /// `GET <role>.key` (notary's GetOrCreate…Key): the key the stored root pins for
    /// `role` when the server holds it, else a new pending key (one per call, the
    /// [`MAX_PENDING_KEYS`] newest kept; the root the client then publishes pins one).
    pub async fn public_key(&self, gun: &str, role: &Role) -> Result<PublicKey, TrustError> {
        server_managed(role)?;
        let (key, _) = self
            .store
            .transact(gun, OffsetDateTime::now_utc(), |data| {
                let pinned = stored_pins(data, role);
                for id in &pinned {
                    if let Some(sealed) = data.keys.get(&(role.as_str().to_owned(), id.clone())) {
                        let key = decode_key(&self.kek, gun, role.as_str(), id, sealed)?;
                        return Ok((GunWrite::default(), key.public()));
                    }
                }
                Ok(self.new_key(gun, role, pinned))
            })
            .await?;
        Ok(key)
    }

    /// `POST <role>.key`: always a new pending key, which takes effect when a root
    /// listing it is published.
    pub async fn rotate_key(&self, gun: &str, role: &Role) -> Result<PublicKey, TrustError> {
        server_managed(role)?;
        let (key, _) = self
            .store
            .transact(gun, OffsetDateTime::now_utc(), |data| {
                Ok(self.new_key(gun, role, stored_pins(data, role)))
            })
            .await?;
        Ok(key)
    }

    /// A new pending key of `gun`'s `role`; of the keys the root does not pin (`pinned`),
    /// only the newest [`MAX_PENDING_KEYS`] stay.
    fn new_key(&self, gun: &str, role: &Role, pinned: Vec<String>) -> (GunWrite, PublicKey) {
        let algorithm = *self
            .algorithm
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = ServerKey::generate(algorithm);
        let id = key.id();
        let plain = zeroize::Zeroizing::new(key.to_bytes());
        let sealed = self
            .kek
            .seal(&kek::key_aad(gun, role.as_str(), &id), plain.as_slice());
        let role = role.as_str().to_owned();
        let write = GunWrite {
            files: Vec::new(),
            keys: vec![(role.clone(), id, sealed)],
            retain: vec![(role, pinned, MAX_PENDING_KEYS)],
        };
        (write, key.public())
    }

    /// Deletes all trust data of `gun`.
    pub async fn delete(&self, gun: &str) -> Result<(), TrustError> {
        self.store.delete(gun, OffsetDateTime::now_utc()).await?;
        self.changed(Some(gun));
        Ok(())
    }

    /// Changefeed records after `change_id` (`records` < 0: the latest ones before it),
    /// of `gun` or of every GUN. `records` 0 means notary's default page; at most
    /// [`MAX_CHANGEFEED_RECORDS`] either way.
    pub async fn changefeed(
        &self,
        gun: Option<&str>,
        change_id: Option<&str>,
        records: i64,
    ) -> Result<Changefeed, TrustError> {
        self.changefeed_of(|g| gun.is_none_or(|gun| gun == g), change_id, records)
            .await
    }

    /// [`changefeed`](Self::changefeed) of the GUNs `visible` accepts (asked once per
    /// record): a page is full unless the feed ends, however many records it skips.
    pub async fn changefeed_of(
        &self,
        visible: impl FnMut(&str) -> bool,
        change_id: Option<&str>,
        records: i64,
    ) -> Result<Changefeed, TrustError> {
        self.check_enabled()?;
        let change_id = match change_id.filter(|c| !c.is_empty()) {
            None => 0,
            Some(id) => id.parse::<i64>().map_err(|_| {
                TrustError::InvalidParameter(format!("change_id `{id}` is not an integer"))
            })?,
        };
        let records = if records == 0 {
            DEFAULT_CHANGEFEED_RECORDS
        } else {
            records.clamp(-MAX_CHANGEFEED_RECORDS, MAX_CHANGEFEED_RECORDS)
        };
        let records = self.store.changes_of(visible, change_id, records).await?;
        Ok(Changefeed {
            count: records.len(),
            records,
        })
    }

    /// Signed targets of every GUN whose repository part is `repository` (cached; the
    /// cache entry is dropped on every update/delete of the repository, here or, heard
    /// of, on another gateway, and on a status change, and after [`SIGNED_TARGETS_TTL`]
    /// so expiry is noticed). Each GUN's roles are verified as the notary client walks
    /// them (`validate::signed_targets`).
    pub async fn signed_targets(&self, repository: &str) -> Arc<SignedTargets> {
        let cached = self.listening.load(Ordering::Acquire);
        if cached && let Some(hit) = self.signed.get(repository) {
            return hit;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        match self.compute_signed_targets(repository).await {
            Ok(targets) => {
                let targets = Arc::new(targets);
                if cached && self.epoch.load(Ordering::Acquire) == epoch {
                    self.signed
                        .insert(repository.to_owned(), Arc::clone(&targets));
                }
                targets
            }
            Err(e) => {
                // Nothing cached: the next request tries again.
                tracing::error!(repository, error = %e, "reading signed targets");
                Arc::new(SignedTargets::default())
            }
        }
    }

    async fn compute_signed_targets(&self, repository: &str) -> Result<SignedTargets, TrustError> {
        let mut out = SignedTargets::default();
        for gun in self.store.guns_of(repository).await? {
            let data = self.store.gun(&gun, false).await?;
            let state = GunView::new(&data, &gun, &self.kek);
            let targets = validate::signed_targets(&state, OffsetDateTime::now_utc());
            state.finish()?;
            out.guns += 1;
            for target in targets {
                let digest = format!("sha256:{}", target.sha256);
                out.digests.insert(digest.clone());
                out.tags.entry(target.name).or_default().insert(digest);
            }
        }
        Ok(out)
    }

    /// After a committed change of `gun` (`None`: of everything), here or elsewhere.
    fn changed(&self, gun: Option<&str>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match gun.and_then(gun_repository) {
            Some(repository) => self.signed.invalidate(repository),
            None => self.signed.invalidate_all(),
        }
    }
}

/// Hears of other gateways' changes (PostgreSQL): a GUN's notification drops its
/// repository's cached signed targets; a change of the switch wakes the poll, which
/// reads it.
struct Watcher {
    service: Weak<TrustService>,
    wake: tokio::sync::Notify,
}

impl portcullis_storage::pg::Notified for Watcher {
    fn notified(&self, payload: &str) {
        let Some(service) = self.service.upgrade() else {
            return;
        };
        if payload == trust_pg::ALL {
            service.changed(None);
            self.wake.notify_one();
        } else {
            service.changed(Some(payload));
        }
    }

    fn listening(&self, listening: bool) {
        let Some(service) = self.service.upgrade() else {
            return;
        };
        service.listening.store(listening, Ordering::Release);
        // Whatever was cached may have missed a change.
        service.changed(None);
        self.wake.notify_one();
    }
}

/// Every [`POLL_INTERVAL`] (or when woken): reads the switch and the last change id,
/// and drops the cached targets of GUNs changed since the last poll. Ends, with the
/// listener, when the service is gone.
async fn poll(store: PgTrustStore, watcher: Arc<Watcher>, listener: tokio::task::JoinHandle<()>) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = watcher.wake.notified() => {}
        }
        let Some(service) = watcher.service.upgrade() else {
            listener.abort();
            return;
        };
        let seen = service.last_change.load(Ordering::Acquire);
        let polled = async {
            let (enabled, last) = store.status().await?;
            let changed = if last == seen {
                None
            } else {
                Some(store.changed_since(seen).await?)
            };
            Ok::<_, TrustStoreError>((enabled, changed))
        };
        match polled.await {
            Ok((enabled, changed)) => {
                if failing {
                    tracing::info!("trust data poll works again");
                    failing = false;
                }
                if service.enabled.swap(enabled, Ordering::AcqRel) != enabled {
                    service.changed(None);
                }
                if let Some((last, guns)) = changed {
                    for gun in &guns {
                        service.changed(Some(gun));
                    }
                    service.last_change.store(last, Ordering::Release);
                }
            }
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot poll trust data changes");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// One GUN's state as `validate` sees it. A key that does not open makes it look
/// absent to the validator and is reported by [`GunView::finish`], so it never passes
/// as "no key held".
struct GunView<'t> {
    data: &'t GunData,
    gun: &'t str,
    kek: &'t Kek,
    error: RefCell<Option<TrustError>>,
}

impl<'t> GunView<'t> {
    fn new(data: &'t GunData, gun: &'t str, kek: &'t Kek) -> Self {
        GunView {
            data,
            gun,
            kek,
            error: RefCell::new(None),
        }
    }

    fn finish(self) -> Result<(), TrustError> {
        self.error.into_inner().map_or(Ok(()), Err)
    }
}

impl TrustState for GunView<'_> {
    fn current(&self, role: &Role) -> Option<Bytes> {
        self.data
            .current
            .get(role.as_str())
            .map(|f| f.bytes.clone())
    }

    fn server_key(&self, role: &Role, key_id: &str) -> Option<ServerKey> {
        let sealed = self
            .data
            .keys
            .get(&(role.as_str().to_owned(), key_id.to_owned()))?;
        decode_key(self.kek, self.gun, role.as_str(), key_id, sealed)
            .map_err(|e| {
                self.error.borrow_mut().get_or_insert(e);
            })
            .ok()
    }
}

/// A stored key, opened with the key-encryption key.
fn decode_key(
    kek: &Kek,
    gun: &str,
    role: &str,
    key_id: &str,
    sealed: &[u8],
) -> Result<ServerKey, TrustError> {
    let corrupt = |reason: String| TrustError::CorruptKey {
        gun: gun.to_owned(),
        reason,
    };
    let plain = kek
        .open(&kek::key_aad(gun, role, key_id), sealed)
        .ok_or_else(|| corrupt(format!("{role} key `{key_id}` does not open")))?;
    ServerKey::from_bytes(&plain).map_err(|e| corrupt(e.to_string()))
}

fn server_managed(role: &Role) -> Result<(), TrustError> {
    if role.is_server_managed() {
        Ok(())
    } else {
        Err(TrustError::NotServerManaged(role.as_str().to_owned()))
    }
}

/// Validated files as the store takes them.
fn new_files(files: Files) -> Vec<NewFile> {
    files
        .into_iter()
        .map(|(role, file)| NewFile {
            role: role.as_str().to_owned(),
            version: file.version,
            bytes: file.raw,
        })
        .collect()
}

/// The key ids the stored root lists for `role` (none without a root).
fn stored_pins(data: &GunData, role: &Role) -> Vec<String> {
    data.current
        .get("root")
        .and_then(|root| SignedFile::parse(root.bytes.clone()).ok())
        .map(|root| pinned_key_ids(&root, role))
        .unwrap_or_default()
}

/// The key ids `root` lists for `role` (none when it does not parse: stored roots do).
fn pinned_key_ids(root: &SignedFile, role: &Role) -> Vec<String> {
    Root::parse(root)
        .map(|root| root.role(role).keys.keys().cloned().collect())
        .unwrap_or_default()
}

fn describe(what: &MetadataRef) -> String {
    match what {
        MetadataRef::Current(role) => format!("`{}.json`", role.as_str()),
        MetadataRef::Checksum { role, sha256 } => format!("`{}.{sha256}.json`", role.as_str()),
        MetadataRef::Version { role, version } => format!("`{version}.{}.json`", role.as_str()),
    }
}

#[cfg(test)]
mod tests;
