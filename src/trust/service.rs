//! The trust service: what the Notary API and the signed-only views ask of trust data.
//! It validates updates (`validate::validate_update`) against the stored state and
//! persists them atomically, refreshes expired timestamps/snapshots on GET, hands out
//! and rotates the server-managed timestamp/snapshot keys, serves the changefeed, owns
//! the registry-level content-trust switch, and caches each repository's signed targets
//! for the views (invalidated on every change of that repository).
//!
//! Everything here is synchronous (redb and signing are quick); HTTP handlers call it
//! from `spawn_blocking`.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::kek::{self, Kek, KekError, PassphraseSource, Unlocked};
use super::keys::PublicKey;
use super::metadata::{Root, SignedFile};
use super::naming::{MetadataRef, Role, gun_repository};
use super::signer::{KeyAlgorithm, ServerKey};
use super::store::{Change, NewFile, Tables, TrustStore, TrustStoreError, TrustTxn, WriteTxn};
use super::validate::{self, Files, TrustState, UpdateError};

/// Repositories whose signed targets stay cached (a few hundred bytes each).
const SIGNED_TARGETS_CAPACITY: u64 = 10_000;
/// How long signed targets stay cached without a change: metadata expiring in the
/// meantime stops counting within this delay.
const SIGNED_TARGETS_TTL: std::time::Duration = std::time::Duration::from_secs(60);
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

pub struct TrustService {
    store: TrustStore,
    /// Seals the server-held private keys at rest.
    kek: Kek,
    /// For new server-managed keys.
    algorithm: Mutex<KeyAlgorithm>,
    enabled: AtomicBool,
    signed: Cache<String, Arc<SignedTargets>>,
    /// Bumped after every committed change, so a signed-targets computation that raced
    /// with one is not cached.
    epoch: AtomicU64,
}

impl std::fmt::Debug for TrustService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustService")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl TrustService {
    /// The trust tables in the control-plane database; new keys use `algorithm`.
    /// Opens the trust tables in `db` and unlocks the key-encryption key with the
    /// passphrase `passphrase` names (see [`kek::unlock`]); says what the unlock did.
    pub fn open(
        db: Arc<redb::Database>,
        algorithm: KeyAlgorithm,
        data_dir: &std::path::Path,
        passphrase: &PassphraseSource,
    ) -> Result<(Arc<Self>, Unlocked), TrustError> {
        let store = TrustStore::open(db)?;
        let (kek, unlocked) = kek::unlock(&store, data_dir, passphrase)?;
        let enabled = store.read()?.enabled()?;
        let service = Arc::new(TrustService {
            store,
            kek,
            algorithm: Mutex::new(algorithm),
            enabled: AtomicBool::new(enabled),
            signed: Cache::builder()
                .max_capacity(SIGNED_TARGETS_CAPACITY)
                .time_to_live(SIGNED_TARGETS_TTL)
                .build(),
            epoch: AtomicU64::new(0),
        });
        Ok((service, unlocked))
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
    /// not trust data and stay).
    pub fn set_status(&self, status: ContentTrustStatus) -> Result<(), TrustError> {
        let txn = self.store.write()?;
        let enabled = status == ContentTrustStatus::Enabled;
        if !enabled {
            txn.delete_all(OffsetDateTime::now_utc())?;
        }
        txn.set_enabled(enabled)?;
        txn.commit()?;
        self.enabled.store(enabled, Ordering::Release);
        self.changed(None);
        Ok(())
    }

    /// For reads: the switch as last committed.
    fn check_enabled(&self) -> Result<(), TrustError> {
        match self.status() {
            ContentTrustStatus::Enabled => Ok(()),
            ContentTrustStatus::Disabled => Err(TrustError::Disabled),
        }
    }

    /// For writes: a write transaction in which content trust is enabled. Checked inside
    /// it, so a concurrent disable (which deletes everything) cannot be followed by a
    /// write that recreates trust data.
    fn write(&self) -> Result<WriteTxn, TrustError> {
        let txn = self.store.write()?;
        if !txn.enabled()? {
            return Err(TrustError::Disabled);
        }
        Ok(txn)
    }

    /// A stored file. The current timestamp or snapshot is first regenerated (and
    /// stored) when it has expired or no longer matches.
    pub fn get(
        &self,
        gun: &str,
        what: &MetadataRef,
        now: OffsetDateTime,
    ) -> Result<Metadata, TrustError> {
        self.check_enabled()?;
        if let MetadataRef::Current(role) = what
            && role.is_server_managed()
        {
            self.refresh(gun, role, now)?;
        }
        let txn = self.store.read()?;
        let found = match what {
            MetadataRef::Current(role) => txn.current(gun, role.as_str())?,
            MetadataRef::Version { role, version } => txn.version(gun, role.as_str(), *version)?,
            MetadataRef::Checksum { role, sha256 } => txn
                .by_checksum(gun, sha256)?
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

    /// Regenerates and stores `role` (timestamp or snapshot) when `validate::refresh`
    /// says so. Checked first, without signing, on a read transaction (the common case:
    /// nothing to do), then regenerated under the write transaction that stores the
    /// result. A failed refresh is logged and the stored file served: clients judge
    /// expiry themselves.
    fn refresh(&self, gun: &str, role: &Role, now: OffsetDateTime) -> Result<(), TrustError> {
        let stale = {
            let txn = self.store.read()?;
            let state = GunState::new(&txn, gun, &self.kek);
            let stale = validate::is_stale(&state, role, now);
            state.finish()?;
            stale
        };
        match stale {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(gun, role = role.as_str(), error = %e, "cannot refresh trust metadata");
                return Ok(());
            }
        }
        let txn = self.write()?;
        let state = GunState::new(&txn, gun, &self.kek);
        let regenerated = validate::refresh(gun, &state, role, now);
        state.finish()?;
        match regenerated {
            Ok(Some(files)) => {
                txn.update_many(gun, &new_files(files), now)?;
                txn.commit()?;
                self.changed(Some(gun));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(gun, role = role.as_str(), error = %e, "cannot refresh trust metadata");
            }
        }
        Ok(())
    }

    /// Validates an upload (multipart parts: role → bytes) and stores it with the
    /// generated snapshot/timestamp, atomically. A new root also retires the pending
    /// server keys it did not pin.
    pub fn update(
        &self,
        gun: &str,
        parts: Vec<(Role, Bytes)>,
        now: OffsetDateTime,
    ) -> Result<(), TrustError> {
        let txn = self.write()?;
        let state = GunState::new(&txn, gun, &self.kek);
        let validated = validate::validate_update(gun, &state, parts, now);
        state.finish()?;
        let files = validated?;
        let root = files
            .iter()
            .find(|(role, _)| *role == Role::root())
            .map(|(_, file)| file.clone());
        txn.update_many(gun, &new_files(files), now)?;
        if let Some(root) = root {
            for role in [Role::timestamp(), Role::snapshot()] {
                txn.retain_server_keys(gun, role.as_str(), &pinned_key_ids(&root, &role), 0)?;
            }
        }
        txn.commit()?;
        self.changed(Some(gun));
        Ok(())
    }

    /// `GET <role>.key` (notary's GetOrCreate…Key): the key the stored root pins for
    /// `role` when the server holds it, else a new pending key (one per call, the
    /// [`MAX_PENDING_KEYS`] newest kept; the root the client then publishes pins one).
    pub fn public_key(&self, gun: &str, role: &Role) -> Result<PublicKey, TrustError> {
        server_managed(role)?;
        let txn = self.write()?;
        let pinned = stored_pins(&txn, gun, role)?;
        for id in &pinned {
            if let Some(bytes) = txn.server_key(gun, role.as_str(), id)? {
                return Ok(decode_key(&self.kek, gun, role.as_str(), id, &bytes)?.public());
            }
        }
        let key = self.new_key(&txn, gun, role, &pinned)?;
        txn.commit()?;
        Ok(key)
    }

    /// `POST <role>.key`: always a new pending key, which takes effect when a root
    /// listing it is published.
    pub fn rotate_key(&self, gun: &str, role: &Role) -> Result<PublicKey, TrustError> {
        server_managed(role)?;
        let txn = self.write()?;
        let pinned = stored_pins(&txn, gun, role)?;
        let key = self.new_key(&txn, gun, role, &pinned)?;
        txn.commit()?;
        Ok(key)
    }

    /// A new pending key of `gun`'s `role`; of the keys the root does not pin (`pinned`),
    /// only the newest [`MAX_PENDING_KEYS`] stay.
    fn new_key(
        &self,
        txn: &WriteTxn,
        gun: &str,
        role: &Role,
        pinned: &[String],
    ) -> Result<PublicKey, TrustError> {
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
        txn.put_server_key(gun, role.as_str(), &id, &sealed)?;
        txn.retain_server_keys(gun, role.as_str(), pinned, MAX_PENDING_KEYS)?;
        Ok(key.public())
    }

    /// Deletes all trust data of `gun`.
    pub fn delete(&self, gun: &str) -> Result<(), TrustError> {
        let txn = self.write()?;
        txn.delete(gun, OffsetDateTime::now_utc())?;
        txn.commit()?;
        self.changed(Some(gun));
        Ok(())
    }

    /// Changefeed records after `change_id` (`records` < 0: the latest ones before it),
    /// of `gun` or of every GUN. `records` 0 means notary's default page; at most
    /// [`MAX_CHANGEFEED_RECORDS`] either way.
    pub fn changefeed(
        &self,
        gun: Option<&str>,
        change_id: Option<&str>,
        records: i64,
    ) -> Result<Changefeed, TrustError> {
        self.changefeed_of(|g| gun.is_none_or(|gun| gun == g), change_id, records)
    }

    /// [`changefeed`](Self::changefeed) of the GUNs `visible` accepts (asked once per
    /// record): a page is full unless the feed ends, however many records it skips.
    pub fn changefeed_of(
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
        let records = self.store.read()?.changes_of(visible, change_id, records)?;
        Ok(Changefeed {
            count: records.len(),
            records,
        })
    }

    /// Signed targets of every GUN whose repository part is `repository` (cached; the
    /// cache entry is dropped on every update/delete of the repository and on a status
    /// change, and after [`SIGNED_TARGETS_TTL`] so expiry is noticed). Each GUN's roles are
    /// verified as the notary client walks them (`validate::signed_targets`).
    pub fn signed_targets(&self, repository: &str) -> Arc<SignedTargets> {
        if let Some(hit) = self.signed.get(repository) {
            return hit;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        match self.compute_signed_targets(repository) {
            Ok(targets) => {
                let targets = Arc::new(targets);
                if self.epoch.load(Ordering::Acquire) == epoch {
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

    fn compute_signed_targets(&self, repository: &str) -> Result<SignedTargets, TrustError> {
        let txn = self.store.read()?;
        let mut out = SignedTargets::default();
        for gun in txn.guns()? {
            if gun_repository(&gun) != Some(repository) {
                continue;
            }
            let state = GunState::new(&txn, &gun, &self.kek);
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

    /// After a committed change of `gun` (`None`: of everything).
    fn changed(&self, gun: Option<&str>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match gun.and_then(gun_repository) {
            Some(repository) => self.signed.invalidate(repository),
            None => self.signed.invalidate_all(),
        }
    }
}

/// The store seen by `validate` for one GUN. A read failure makes the file look absent
/// to the validator and is reported by [`GunState::finish`], so it never passes as
/// "nothing stored".
struct GunState<'t, T> {
    txn: &'t TrustTxn<T>,
    gun: &'t str,
    kek: &'t Kek,
    error: RefCell<Option<TrustError>>,
}

impl<'t, T: Tables> GunState<'t, T> {
    fn new(txn: &'t TrustTxn<T>, gun: &'t str, kek: &'t Kek) -> Self {
        GunState {
            txn,
            gun,
            kek,
            error: RefCell::new(None),
        }
    }

    fn finish(self) -> Result<(), TrustError> {
        self.error.into_inner().map_or(Ok(()), Err)
    }

    fn note<V>(&self, result: Result<Option<V>, TrustError>) -> Option<V> {
        result.unwrap_or_else(|e| {
            self.error.borrow_mut().get_or_insert(e);
            None
        })
    }
}

impl<T: Tables> TrustState for GunState<'_, T> {
    fn current(&self, role: &Role) -> Option<Bytes> {
        let found = self
            .txn
            .current(self.gun, role.as_str())
            .map_err(TrustError::from);
        self.note(found).map(|f| f.bytes)
    }

    fn server_key(&self, role: &Role, key_id: &str) -> Option<ServerKey> {
        let found = self
            .txn
            .server_key(self.gun, role.as_str(), key_id)
            .map_err(TrustError::from)
            .and_then(|bytes| {
                bytes
                    .map(|b| decode_key(self.kek, self.gun, role.as_str(), key_id, &b))
                    .transpose()
            });
        self.note(found)
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

/// The key ids the stored root of `gun` lists for `role` (none without a root).
fn stored_pins(txn: &WriteTxn, gun: &str, role: &Role) -> Result<Vec<String>, TrustError> {
    Ok(match txn.current(gun, "root")? {
        Some(root) => SignedFile::parse(root.bytes)
            .map(|root| pinned_key_ids(&root, role))
            .unwrap_or_default(),
        None => Vec::new(),
    })
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
