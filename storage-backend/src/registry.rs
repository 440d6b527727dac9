//! [`Registry`]: the storage service behind the HTTP handlers. It owns the
//! two stores ([`Stores`]: blob bytes and metadata) and enforces the write
//! order that keeps a crash harmless: blob bytes first (durable, placed
//! atomically), metadata second; GC deletes metadata first, bytes after commit. Manifest
//! GET/HEAD answers are cached in memory ([`crate::cache`]), invalidated by every write.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::blobstore::{BlobReader, BlobStore, FsBlobStore, body_stream};
use crate::cache::{CacheSize, CachedManifest, ManifestCache};
use crate::error::StorageError;
use crate::manifest;
use crate::meta::{
    Change, ChangeSink, Deleted, GcReport, ManifestRecord, MetadataLocation, MetadataStore, Page,
    PgMeta, RedbMeta, now_secs,
};
use crate::names::{Digest, Reference, is_valid_tag};
use crate::s3::{S3BlobStore, S3Config};

/// Configuration of the storage service.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub max_manifest_bytes: usize,
    /// Sessions idle for longer are removed.
    pub upload_expiry: Duration,
    /// Blob bytes in this S3 bucket instead of `data_dir/blobs`.
    pub s3: Option<S3Config>,
    /// `None` disables the background GC pass.
    pub gc_interval: Option<Duration>,
    /// Unreferenced content younger than this is never collected.
    pub gc_grace: Duration,
    /// Where the metadata lives (`--metadata`); blobs stay in `data_dir`.
    pub metadata: MetadataLocation,
    /// Memory for cached manifest GET answers ([`crate::cache`]); 0 turns the cache off.
    pub manifest_cache_bytes: u64,
}

impl StorageConfig {
    /// Defaults: 4 MiB manifests, 24 h upload expiry, GC every hour with a 1 h grace,
    /// 64 MiB of cached manifests.
    pub fn new(data_dir: impl Into<PathBuf>) -> StorageConfig {
        StorageConfig {
            data_dir: data_dir.into(),
            max_manifest_bytes: 4 * 1024 * 1024,
            s3: None,
            upload_expiry: Duration::from_secs(24 * 3600),
            gc_interval: Some(Duration::from_secs(3600)),
            gc_grace: Duration::from_secs(3600),
            metadata: MetadataLocation::Local,
            manifest_cache_bytes: 64 << 20,
        }
    }
}

/// Number of lock stripes serialising "place blob file + commit metadata"
/// against "GC deletes blob file" for the same digest.
const BLOB_LOCKS: usize = 64;

/// Where a registry keeps its data: blob bytes and metadata, each behind its trait.
#[derive(Clone)]
pub struct Stores {
    pub blobs: Arc<dyn BlobStore>,
    pub meta: Arc<dyn MetadataStore>,
}

impl Stores {
    /// The default stores in `data_dir` (created owner-only): blob files
    /// ([`FsBlobStore`]) and a redb database ([`RedbMeta`], `meta.redb`, 0600).
    pub fn open(data_dir: &Path) -> Result<Stores, StorageError> {
        let meta = Stores::redb(data_dir)?;
        Ok(Stores {
            blobs: Arc::new(FsBlobStore::open(data_dir)?),
            meta,
        })
    }

    /// The stores `config` names with the metadata in the data directory: blobs there
    /// ([`Stores::open`]) or on S3 (reached once to prove the settings).
    pub fn for_config(config: &StorageConfig) -> Result<Stores, StorageError> {
        let meta = Stores::redb(&config.data_dir)?;
        Ok(Stores {
            blobs: Stores::blobs(config, &meta)?,
            meta,
        })
    }

    /// Blobs on S3 when `config` names a bucket (upload sessions' records in `meta`),
    /// else files in the data directory.
    fn blobs(
        config: &StorageConfig,
        meta: &Arc<dyn MetadataStore>,
    ) -> Result<Arc<dyn BlobStore>, StorageError> {
        if let Some(s3) = &config.s3 {
            return Ok(Arc::new(S3BlobStore::connect(s3, Arc::clone(meta))?));
        }
        let dir = &config.data_dir;
        crate::private::private_dir(dir).map_err(|e| StorageError::io(dir, e))?;
        Ok(Arc::new(FsBlobStore::open(dir)?))
    }

    fn redb(data_dir: &Path) -> Result<Arc<dyn MetadataStore>, StorageError> {
        crate::private::private_dir(data_dir).map_err(|e| StorageError::io(data_dir, e))?;
        let meta_path = data_dir.join("meta.redb");
        crate::private::private_file(&meta_path).map_err(|e| StorageError::io(&meta_path, e))?;
        Ok(Arc::new(RedbMeta::open(&meta_path)?))
    }

    /// The stores `config` names: blobs in the data directory or on S3, metadata there
    /// ([`Stores::for_config`]) or in PostgreSQL (connected, migrated).
    pub async fn connect(config: &StorageConfig) -> Result<Stores, StorageError> {
        let url = match &config.metadata {
            MetadataLocation::Local => return Stores::for_config(config),
            MetadataLocation::Postgres(url) => url,
        };
        let meta: Arc<dyn MetadataStore> = Arc::new(PgMeta::connect(url).await?);
        Ok(Stores {
            blobs: Stores::blobs(config, &meta)?,
            meta,
        })
    }
}

pub struct Registry {
    config: StorageConfig,
    meta: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    blob_locks: [tokio::sync::Mutex<()>; BLOB_LOCKS],
    gc_counters: GcCounters,
    cache: Arc<ManifestCache>,
    /// The metadata store's change listener ([`MetadataStore::watch`]), until
    /// [`Registry::start_background`] spawns it; the cache is off until it listens.
    watcher: Mutex<Option<BoxFuture<'static, ()>>>,
}

/// Totals of the GC passes (not dry runs) since the store was opened, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    pub runs: u64,
    pub failures: u64,
    pub manifests: u64,
    pub blobs: u64,
    /// Bytes of the removed blobs (as recorded when they were stored).
    pub bytes: u64,
    /// Time spent in passes, failed ones included.
    pub nanos: u64,
}

#[derive(Default)]
struct GcCounters {
    runs: AtomicU64,
    failures: AtomicU64,
    manifests: AtomicU64,
    blobs: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
}

/// A manifest as served.
pub struct StoredManifest {
    pub digest: Digest,
    pub record: Arc<ManifestRecord>,
    pub bytes: Option<Bytes>,
}

/// The outcome of a manifest PUT.
pub struct PutManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
    pub tags: Vec<String>,
}

impl Registry {
    /// Opens the stores `config` names ([`Stores::connect`]), synchronously: callable
    /// inside a runtime or outside any.
    pub fn open(config: StorageConfig) -> Result<Arc<Registry>, StorageError> {
        let stores = match &config.metadata {
            MetadataLocation::Local => Stores::for_config(&config)?,
            // On a thread and runtime of their own; the store's pool connects later, on
            // the runtime that first uses it, so nothing is tied to this one.
            MetadataLocation::Postgres(url) => std::thread::scope(|s| {
                s.spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| StorageError::io("tokio runtime", e))?
                        .block_on(Stores::connect(&config))
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(StorageError::MetaConnect {
                        url: crate::meta::redact(url),
                        cause: "the connecting thread panicked".into(),
                    })
                })
            })?,
        };
        Ok(Registry::with_stores(config, stores))
    }

    /// Opens the stores `config` names ([`Stores::connect`]).
    pub async fn connect(config: StorageConfig) -> Result<Arc<Registry>, StorageError> {
        let stores = Stores::connect(&config).await?;
        Ok(Registry::with_stores(config, stores))
    }

    /// A registry over other stores (`config.data_dir` is then unused).
    pub fn with_stores(config: StorageConfig, stores: Stores) -> Arc<Registry> {
        // Live at once unless other processes can change the store: then only once its
        // listener is.
        let cache = Arc::new(ManifestCache::new(config.manifest_cache_bytes, false));
        let watcher = stores.meta.watch(cache.clone());
        if watcher.is_none() {
            cache.watching(true);
        }
        Arc::new(Registry {
            blobs: stores.blobs,
            meta: stores.meta,
            blob_locks: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            gc_counters: GcCounters::default(),
            cache,
            watcher: Mutex::new(watcher),
            config,
        })
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// Whether the blob store can be used now (readiness).
    pub async fn check_blobs(&self) -> Result<(), StorageError> {
        self.blobs.check().await
    }

    fn blob_lock(&self, digest: &Digest) -> &tokio::sync::Mutex<()> {
        let i = usize::from_str_radix(digest.hex().get(..4).unwrap_or("0"), 16).unwrap_or_default();
        &self.blob_locks[i % BLOB_LOCKS]
    }

    /// Spawns upload expiry, (if configured) GC and (for metadata other processes share)
    /// the listener that keeps the manifest cache in step with them, on the current
    /// runtime.
    pub fn start_background(self: &Arc<Self>) {
        let watcher = self.watcher.lock().map(|mut w| w.take());
        if let Ok(Some(watcher)) = watcher {
            tokio::spawn(watcher);
        }
        let reg = self.clone();
        let every =
            (self.config.upload_expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match reg.expire_uploads().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(sessions = n, "expired upload sessions"),
                    Err(e) => tracing::error!(error = %e, "upload expiry failed"),
                }
            }
        });
        if let Some(interval) = self.config.gc_interval.filter(|i| !i.is_zero()) {
            let reg = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.tick().await; // the first tick is immediate; wait a full interval
                loop {
                    tick.tick().await;
                    match reg.gc(reg.config.gc_grace, false).await {
                        Ok(r) => tracing::info!(
                            manifests = r.manifests,
                            links = r.links,
                            blobs = r.blobs.len(),
                            repositories = r.repositories,
                            orphan_files = r.orphan_files,
                            "gc pass"
                        ),
                        Err(e) => tracing::error!(error = %e, "gc pass failed"),
                    }
                }
            });
        }
    }

    // ---- blobs ----

    /// The size of a blob linked into `repo`.
    /// The size of a blob linked into `repo`. With `refresh` (a client
    /// checking whether to skip an upload), a link older than half the GC
    /// grace period is refreshed first, so the blob cannot be collected
    /// between this answer and the manifest PUT that relies on it.
    pub async fn blob_size(
        &self,
        repo: &str,
        digest: &Digest,
        refresh: bool,
    ) -> Result<u64, StorageError> {
        let unknown = || StorageError::BlobUnknown {
            name: repo.to_owned(),
            digest: digest.clone(),
        };
        let linked = self
            .meta
            .linked_blob_size(repo, digest)
            .await?
            .ok_or_else(unknown)?;
        let half_grace = self.config.gc_grace.as_secs() / 2;
        if refresh
            && linked.linked_at.saturating_add(half_grace) <= now_secs()
            && !self.meta.touch_link(repo, digest).await?
        {
            return Err(unknown());
        }
        Ok(linked.size)
    }

    pub async fn read_blob(
        &self,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<BlobReader, StorageError> {
        self.blobs.get(digest, offset, len).await
    }

    /// Where the client may fetch `digest` itself (a pre-signed URL), if the blob store
    /// is configured to redirect.
    pub async fn blob_redirect(&self, digest: &Digest) -> Result<Option<String>, StorageError> {
        self.blobs.redirect(digest).await
    }

    /// Unlinks a blob from `repo`; GC removes the bytes later.
    pub async fn delete_blob(&self, repo: &str, digest: &Digest) -> Result<(), StorageError> {
        if self.meta.unlink_blob(repo, digest).await? {
            Ok(())
        } else {
            Err(StorageError::BlobUnknown {
                name: repo.to_owned(),
                digest: digest.clone(),
            })
        }
    }

    // ---- uploads ----

    pub async fn start_upload(&self, repo: &str) -> Result<String, StorageError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.blobs.create_upload(&id).await?;
        self.meta.create_upload(&id, repo).await?;
        Ok(id)
    }

    async fn check_session(&self, repo: &str, id: &str) -> Result<(), StorageError> {
        match self.meta.upload(id).await? {
            Some((r, _)) if r == repo => Ok(()),
            _ => Err(StorageError::UploadUnknown(id.to_owned())),
        }
    }

    /// The number of bytes received so far.
    pub async fn upload_offset(&self, repo: &str, id: &str) -> Result<u64, StorageError> {
        self.check_session(repo, id).await?;
        self.blobs.upload_offset(id).await
    }

    /// Appends a chunk. With `range` (`start-end` from Content-Range), `start`
    /// must be the current offset.
    pub async fn patch_upload(
        &self,
        repo: &str,
        id: &str,
        range: Option<(u64, u64)>,
        body: Body,
    ) -> Result<u64, StorageError> {
        self.check_session(repo, id).await?;
        self.blobs.append_upload(id, range, body_stream(body)).await
    }

    /// Appends the optional final chunk, verifies the digest and commits the
    /// blob (file, then metadata). A digest mismatch cancels the session.
    ///
    /// A repeat of a completing PUT whose session is gone while its blob is linked
    /// into `repo` succeeds without reading the body: the first one committed and its
    /// answer was lost (its server died; a load balancer retried it on another), and
    /// what the client asked for holds. Docker does not retry this request itself.
    pub async fn finish_upload(
        &self,
        repo: &str,
        id: &str,
        expected: &Digest,
        body: Body,
    ) -> Result<(), StorageError> {
        match self.check_session(repo, id).await {
            Err(StorageError::UploadUnknown(_))
                if self.meta.linked_blob_size(repo, expected).await?.is_some() =>
            {
                return Ok(());
            }
            r => r?,
        }
        let committed = self
            .blobs
            .commit_upload(id, expected, body_stream(body), self.blob_lock(expected))
            .await;
        let (size, _placed) = match committed {
            Err(e @ StorageError::DigestMismatch { .. }) => {
                self.meta.remove_upload(id).await?;
                return Err(e);
            }
            r => r?,
        };
        self.meta.commit_blob(repo, expected, size, Some(id)).await
    }

    /// Stores `body` as blob `digest` of `repo` in one step (a monolithic upload):
    /// verified while it streams, bytes first, then the link.
    pub async fn put_blob(
        &self,
        repo: &str,
        digest: &Digest,
        body: Body,
    ) -> Result<(), StorageError> {
        let (size, _placed) = self
            .blobs
            .put(digest, body_stream(body), self.blob_lock(digest))
            .await?;
        self.meta.commit_blob(repo, digest, size, None).await
    }

    pub async fn cancel_upload(&self, repo: &str, id: &str) -> Result<(), StorageError> {
        self.check_session(repo, id).await?;
        self.meta.remove_upload(id).await?;
        self.blobs.cancel_upload(id).await
    }

    /// Links `digest` from `from` into `repo`; false if `from` does not have it.
    pub async fn mount(
        &self,
        repo: &str,
        from: &str,
        digest: &Digest,
    ) -> Result<bool, StorageError> {
        Ok(self.meta.mount(repo, from, digest).await?.is_some())
    }

    /// Links `digest` into `repo` from whichever repository has it (a mount without
    /// `from`); false if none has.
    pub async fn mount_any(&self, repo: &str, digest: &Digest) -> Result<bool, StorageError> {
        Ok(self.meta.mount_any(repo, digest).await?.is_some())
    }

    /// Up to `limit` repositories `digest` is linked into, in name order.
    pub async fn blob_repositories(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        self.meta.blob_repositories(digest, limit).await
    }

    /// Removes sessions idle for longer than the expiry, and session bytes without a
    /// session (a crash between the bytes and metadata steps).
    pub async fn expire_uploads(&self) -> Result<usize, StorageError> {
        let cutoff = SystemTime::now()
            .checked_sub(self.config.upload_expiry)
            .unwrap_or(UNIX_EPOCH);
        let sessions = self.meta.uploads().await?;
        let mut files: HashMap<String, _> = self
            .blobs
            .uploads()
            .await?
            .into_iter()
            .map(|u| (u.id.clone(), u))
            .collect();
        let mut expired = 0;
        for (id, _repo, started) in sessions {
            let file = files.remove(&id);
            let touched = file
                .as_ref()
                .map_or(UNIX_EPOCH, |f| f.modified)
                .max(UNIX_EPOCH + Duration::from_secs(started));
            if touched < cutoff && !file.is_some_and(|f| f.busy) {
                self.meta.remove_upload(&id).await?;
                self.blobs.cancel_upload(&id).await?;
                expired += 1;
            }
        }
        for file in files.into_values() {
            if file.modified < cutoff && !file.busy {
                self.blobs.cancel_upload(&file.id).await?;
            }
        }
        Ok(expired)
    }

    // ---- manifests ----

    /// Verifies, checks references and stores a manifest, tagging it with
    /// the tag reference (if any) and `extra_tags`.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Vec<u8>,
        extra_tags: Vec<String>,
    ) -> Result<PutManifest, StorageError> {
        let digest = Digest::of(&bytes);
        let mut tags = extra_tags;
        match reference {
            Reference::Digest(d) if d != &digest => {
                return Err(StorageError::DigestMismatch {
                    expected: d.clone(),
                    actual: digest,
                });
            }
            Reference::Digest(_) => {}
            Reference::Tag(t) => tags.insert(0, t.clone()),
        }
        if let Some(bad) = tags.iter().find(|t| !is_valid_tag(t)) {
            return Err(StorageError::TagInvalid(bad.clone()));
        }
        let parsed = manifest::parse(&bytes, content_type)?;
        let subject = parsed.subject.clone();
        let stored = self
            .meta
            .put_manifest(repo, &digest, &bytes, &parsed, &tags)
            .await;
        self.cache.apply(&Change::Manifest {
            repo: repo.to_owned(),
            digest: digest.to_string(),
            tags: tags.clone(),
        });
        stored?;
        Ok(PutManifest {
            digest,
            subject,
            tags,
        })
    }

    /// The manifest cache's generation, bumped by every change that can alter a manifest
    /// or tag answer (through this process or, by `NOTIFY`, another); `None` while the
    /// cache is not in use. Lets callers cache what they derive from those answers.
    pub fn cache_generation(&self) -> Option<u64> {
        self.cache.begin()
    }

    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        with_bytes: bool,
    ) -> Result<StoredManifest, StorageError> {
        let unknown = || StorageError::ManifestUnknown {
            name: repo.to_owned(),
            reference: reference.to_string(),
        };
        // Before any store read: a change after this point keeps what it read uncached.
        let Some(generation) = self.cache.begin() else {
            let digest = self
                .meta
                .resolve(repo, reference)
                .await?
                .ok_or_else(unknown)?;
            let (record, bytes) = self
                .meta
                .manifest(repo, &digest, with_bytes)
                .await?
                .ok_or_else(unknown)?;
            return Ok(StoredManifest {
                digest,
                record: Arc::new(record),
                bytes: bytes.map(Bytes::from),
            });
        };
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(tag) => match self.cache.tag(repo, tag) {
                Some(d) => d,
                None => {
                    let d = self
                        .meta
                        .resolve(repo, reference)
                        .await?
                        .ok_or_else(unknown)?;
                    self.cache.fill_tag(generation, repo, tag, &d);
                    d
                }
            },
        };
        let manifest = match self.cache.manifest(repo, &digest) {
            Some(m) => m,
            None => {
                // With the bytes even for a HEAD, so the entry serves a GET too.
                let (record, bytes) = self
                    .meta
                    .manifest(repo, &digest, true)
                    .await?
                    .ok_or_else(unknown)?;
                let m = Arc::new(CachedManifest {
                    record: Arc::new(record),
                    bytes: Bytes::from(bytes.unwrap_or_default()),
                });
                self.cache
                    .fill_manifest(generation, repo, &digest, m.clone());
                m
            }
        };
        Ok(StoredManifest {
            digest,
            record: manifest.record.clone(),
            bytes: with_bytes.then(|| manifest.bytes.clone()),
        })
    }

    /// By tag: removes the tag. By digest: removes the manifest and its tags.
    pub async fn delete_manifest(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<(), StorageError> {
        let tag = match reference {
            // As an image delete, which names the tags that went with the manifest.
            Reference::Digest(_) => return self.delete_image(repo, reference).await.map(drop),
            Reference::Tag(t) => t,
        };
        let removed = self.meta.delete_tag(repo, tag).await;
        self.cache.apply(&Change::Tags {
            repo: repo.to_owned(),
            tags: vec![tag.clone()],
        });
        if removed? {
            Ok(())
        } else {
            Err(StorageError::ManifestUnknown {
                name: repo.to_owned(),
                reference: reference.to_string(),
            })
        }
    }

    /// Deletes the manifest `reference` names and every tag pointing at it (by tag:
    /// the manifest the tag points at, resolved in the same transaction). Blob bytes
    /// are left to GC.
    pub async fn delete_image(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<Deleted, StorageError> {
        let deleted = self.meta.delete_image(repo, reference).await;
        let change = match &deleted {
            Ok(Some(d)) => match d.manifests.as_slice() {
                [digest] => Some(Change::Manifest {
                    repo: repo.to_owned(),
                    digest: digest.clone(),
                    tags: d.tags.clone(),
                }),
                _ => Some(Change::All),
            },
            Ok(None) => None,
            Err(_) => Some(Change::All),
        };
        if let Some(change) = change {
            self.cache.apply(&change);
        }
        deleted?.ok_or_else(|| StorageError::ManifestUnknown {
            name: repo.to_owned(),
            reference: reference.to_string(),
        })
    }

    /// Deletes a whole repository atomically: every manifest, tag, referrer row and
    /// blob link, and its catalog entry. Blob bytes are left to GC.
    pub async fn delete_repository(&self, repo: &str) -> Result<Deleted, StorageError> {
        let deleted = self.meta.delete_repository(repo).await;
        // Rare: the whole cache rather than a scan for the repository's entries.
        self.cache.apply(&Change::All);
        deleted?.ok_or_else(|| StorageError::NameUnknown(repo.to_owned()))
    }

    // ---- discovery ----

    pub async fn tags(
        &self,
        repo: &str,
        last: Option<String>,
        n: Option<usize>,
    ) -> Result<Page, StorageError> {
        self.meta
            .tags(repo, last.as_deref(), n)
            .await?
            .ok_or_else(|| StorageError::NameUnknown(repo.to_owned()))
    }

    pub async fn catalog(
        &self,
        last: Option<String>,
        n: Option<usize>,
    ) -> Result<Page, StorageError> {
        self.meta.catalog(last.as_deref(), n).await
    }

    pub async fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<(String, ManifestRecord)>, StorageError> {
        self.meta.referrers(repo, subject, artifact_type).await
    }

    // ---- garbage collection ----

    /// One GC pass with the given grace period; blob files are deleted after
    /// the metadata commit, each re-checked under its blob lock so a blob
    /// re-uploaded in between is kept.
    pub async fn gc(&self, grace: Duration, dry_run: bool) -> Result<GcReport, StorageError> {
        if dry_run {
            return self.gc_pass(grace, true).await;
        }
        let started = Instant::now();
        let result = self.gc_pass(grace, false).await;
        let c = &self.gc_counters;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        c.nanos.fetch_add(nanos, Ordering::Relaxed);
        match &result {
            Ok(r) => {
                c.runs.fetch_add(1, Ordering::Relaxed);
                c.manifests.fetch_add(r.manifests as u64, Ordering::Relaxed);
                let blobs = (r.blobs.len() + r.orphan_files) as u64;
                c.blobs.fetch_add(blobs, Ordering::Relaxed);
                c.bytes.fetch_add(r.bytes, Ordering::Relaxed);
            }
            Err(_) => {
                c.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// What the GC passes since opening did (see [`GcStats`]).
    pub fn gc_stats(&self) -> GcStats {
        let c = &self.gc_counters;
        GcStats {
            runs: c.runs.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            manifests: c.manifests.load(Ordering::Relaxed),
            blobs: c.blobs.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            nanos: c.nanos.load(Ordering::Relaxed),
        }
    }

    /// The manifest cache's sizes (see [`ManifestCache::sizes`]).
    pub fn cache_sizes(&self) -> [CacheSize; 2] {
        self.cache.sizes()
    }

    async fn gc_pass(&self, grace: Duration, dry_run: bool) -> Result<GcReport, StorageError> {
        // Timestamps are whole seconds (rounded down): one second more, or something
        // written 1.1 s ago would count as 2 s old and a push's blobs could be collected
        // just before its manifest arrives. No grace collects everything up to now.
        let cutoff = now_secs()
            .saturating_sub(grace.as_secs())
            .saturating_sub(u64::from(!grace.is_zero()));
        // To the nanosecond (as file times are): with no grace, everything written
        // before the pass counts as old.
        let before = SystemTime::now().checked_sub(grace).unwrap_or(UNIX_EPOCH);
        let report = self.meta.gc(cutoff, dry_run).await;
        // Removed manifests were untagged: only lookups by digest can have them cached.
        if !dry_run && report.as_ref().map_or(true, |r| r.manifests > 0) {
            self.cache.apply(&Change::All);
        }
        let mut report = report?;
        if !dry_run {
            for d in &report.blobs {
                self.delete_unknown(d, before).await?;
            }
        }
        for d in self.blobs.list(before).await? {
            if dry_run {
                report.orphan_files += usize::from(!self.meta.blob_known(&d).await?);
            } else if self.delete_unknown(&d, before).await? {
                report.orphan_files += 1;
            }
        }
        Ok(report)
    }

    /// Deletes the bytes of `d` if it has no metadata and they were last written before
    /// `before`; whether it did. Under the blob lock, an upload in this process cannot be
    /// between "bytes placed" and "metadata committed" for the digest; under the metadata
    /// store's lock on it ([`MetadataStore::lock_blob`]), neither can one in another
    /// process sharing the stores. A digest another process holds is left for the next
    /// pass. The write time keeps bytes an upload has just rewritten for its commit.
    async fn delete_unknown(&self, d: &Digest, before: SystemTime) -> Result<bool, StorageError> {
        let _guard = self.blob_lock(d).lock().await;
        let Some(_shared) = self.meta.lock_blob(d, false).await? else {
            return Ok(false);
        };
        if self.meta.blob_known(d).await? {
            return Ok(false);
        }
        match self.blobs.stat(d).await? {
            Some(stat) if stat.modified < before => {
                self.blobs.delete(d).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> Arc<Registry> {
        Registry::open(StorageConfig::new(dir)).unwrap()
    }

    #[tokio::test]
    async fn concurrent_uploads_of_one_blob_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        let data = vec![7u8; 300_000];
        let d = Digest::of(&data);
        let mut tasks = Vec::new();
        for repo in ["a", "b", "a", "c"] {
            let (reg, data, d) = (reg.clone(), data.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                let id = reg.start_upload(repo).await?;
                reg.finish_upload(repo, &id, &d, Body::from(data)).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        for repo in ["a", "b", "c"] {
            assert_eq!(reg.blob_size(repo, &d, true).await.unwrap(), 300_000);
        }
        assert!(matches!(
            reg.blob_size("d", &d, false).await,
            Err(StorageError::BlobUnknown { .. })
        ));
        // No upload file is left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("uploads"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn digest_mismatch_is_refused_and_ends_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        let id = reg.start_upload("a").await.unwrap();
        let wrong = Digest::of(b"other");
        let err = reg
            .finish_upload("a", &id, &wrong, Body::from("data"))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::DigestMismatch { .. }));
        assert!(matches!(
            reg.upload_offset("a", &id).await,
            Err(StorageError::UploadUnknown(_))
        ));
        assert!(matches!(
            reg.blob_size("a", &wrong, false).await,
            Err(StorageError::BlobUnknown { .. })
        ));
    }

    #[tokio::test]
    async fn upload_resumes_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        let id = reg.start_upload("a").await.unwrap();
        assert_eq!(
            reg.patch_upload("a", &id, Some((0, 4)), Body::from("hello"))
                .await
                .unwrap(),
            5
        );
        // Wrong repository, out-of-order chunk.
        assert!(matches!(
            reg.upload_offset("b", &id).await,
            Err(StorageError::UploadUnknown(_))
        ));
        let err = reg
            .patch_upload("a", &id, Some((0, 4)), Body::from("hello"))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::RangeInvalid { offset: 5, .. }));
        drop(reg);

        let reg = open(dir.path());
        assert_eq!(reg.upload_offset("a", &id).await.unwrap(), 5);
        let d = Digest::of(b"hello world");
        reg.finish_upload("a", &id, &d, Body::from(" world"))
            .await
            .unwrap();
        let mut out = Vec::new();
        use tokio::io::AsyncReadExt;
        reg.read_blob(&d, 0, 11)
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, b"hello world");
    }

    #[tokio::test]
    async fn gc_deletes_files_only_of_collected_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        let keep = b"kept".to_vec();
        let kd = Digest::of(&keep);
        let id = reg.start_upload("a").await.unwrap();
        reg.finish_upload("a", &id, &kd, Body::from(keep))
            .await
            .unwrap();
        let cfg = b"{}".to_vec();
        let cd = Digest::of(&cfg);
        let id = reg.start_upload("a").await.unwrap();
        reg.finish_upload("a", &id, &cd, Body::from(cfg))
            .await
            .unwrap();
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": 2},
            "layers": []
        });
        reg.put_manifest(
            "a",
            &Reference::Tag("v1".into()),
            None,
            serde_json::to_vec(&m).unwrap(),
            vec![],
        )
        .await
        .unwrap();
        // A grace period in the future of every timestamp: everything unreferenced is old.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = reg.gc(Duration::ZERO, false).await.unwrap();
        assert_eq!(r.blobs, vec![kd.clone()]);
        assert!(reg.read_blob(&kd, 0, 1).await.is_err());
        assert!(reg.read_blob(&cd, 0, 1).await.is_ok());
    }

    /// Manifest PUT of an image with config `{}` and annotation `n` in `repo`, by `reference`.
    async fn put_image(reg: &Registry, repo: &str, reference: Reference, n: &str) -> Digest {
        let cfg = b"{}".to_vec();
        let cd = Digest::of(&cfg);
        reg.put_blob(repo, &cd, Body::from(cfg)).await.unwrap();
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": 2},
            "layers": [], "annotations": {"n": n}
        });
        let bytes = serde_json::to_vec(&m).unwrap();
        reg.put_manifest(repo, &reference, None, bytes, vec![])
            .await
            .unwrap()
            .digest
    }

    /// The digest a GET of `reference` answers, twice (the second from the cache).
    async fn served(reg: &Registry, repo: &str, reference: &str) -> Option<Digest> {
        let reference = match Digest::parse(reference) {
            Ok(d) => Reference::Digest(d),
            Err(_) => Reference::Tag(reference.into()),
        };
        let mut answers = Vec::new();
        for with_bytes in [true, false, true] {
            answers.push(match reg.get_manifest(repo, &reference, with_bytes).await {
                Ok(m) => {
                    assert_eq!(m.bytes.is_some(), with_bytes);
                    if let Some(b) = &m.bytes {
                        assert_eq!(Digest::of(b), m.digest);
                    }
                    Some(m.digest)
                }
                Err(StorageError::ManifestUnknown { .. }) => None,
                Err(e) => panic!("{e}"),
            });
        }
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
        answers.pop().flatten()
    }

    #[tokio::test]
    async fn cached_manifest_answers_follow_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        let tag = |t: &str| Reference::Tag(t.into());
        let a = put_image(&reg, "r", tag("v1"), "a").await;
        assert_eq!(served(&reg, "r", "v1").await, Some(a.clone()));
        // Moved.
        let b = put_image(&reg, "r", tag("v1"), "b").await;
        assert_eq!(served(&reg, "r", "v1").await, Some(b.clone()));
        assert_eq!(served(&reg, "r", a.as_str()).await, Some(a.clone()));
        // Tag deleted; the manifest stays.
        reg.delete_manifest("r", &tag("v1")).await.unwrap();
        assert_eq!(served(&reg, "r", "v1").await, None);
        assert_eq!(served(&reg, "r", b.as_str()).await, Some(b.clone()));
        // Manifest deleted by digest: its tags go with it.
        put_image(&reg, "r", tag("v2"), "b").await;
        assert_eq!(served(&reg, "r", "v2").await, Some(b.clone()));
        reg.delete_manifest("r", &Reference::Digest(b.clone()))
            .await
            .unwrap();
        assert_eq!(served(&reg, "r", "v2").await, None);
        assert_eq!(served(&reg, "r", b.as_str()).await, None);
        // Image deleted by tag.
        put_image(&reg, "r", tag("v3"), "b").await;
        assert_eq!(served(&reg, "r", "v3").await, Some(b.clone()));
        reg.delete_image("r", &tag("v3")).await.unwrap();
        assert_eq!(served(&reg, "r", "v3").await, None);
        // Repository deleted.
        put_image(&reg, "r", tag("v4"), "b").await;
        assert_eq!(served(&reg, "r", "v4").await, Some(b.clone()));
        reg.delete_repository("r").await.unwrap();
        assert_eq!(served(&reg, "r", "v4").await, None);
        assert_eq!(served(&reg, "r", a.as_str()).await, None);
        // Collected by GC (untagged, older than the grace period).
        put_image(&reg, "r", Reference::Digest(a.clone()), "a").await;
        assert_eq!(served(&reg, "r", a.as_str()).await, Some(a.clone()));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(reg.gc(Duration::ZERO, false).await.unwrap().manifests, 1);
        assert_eq!(served(&reg, "r", a.as_str()).await, None);
    }
}
