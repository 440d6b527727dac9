//! Registry metadata behind the [`MetadataStore`] trait: which blobs each repository
//! holds, manifests (exact bytes and parsed record), tags, referrers, upload sessions,
//! the repository list and GC over all of it. The default implementation is
//! [`RedbMeta`] (`redb_store.rs`, one redb database); [`PgMeta`] (`pg_store.rs`) keeps it
//! in PostgreSQL for several processes ([`MetadataLocation`], `--metadata`). The contract
//! every implementation meets is the conformance suite (`crate::conformance`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::StorageError;
use crate::manifest::ParsedManifest;
use crate::names::{Digest, Reference};

mod pg_store;
mod redb_store;

pub use pg_store::{PgMeta, redact};
pub use redb_store::RedbMeta;

/// Where the metadata lives: `--metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MetadataLocation {
    /// `meta.redb` in the data directory ([`RedbMeta`]): one process.
    #[default]
    Local,
    /// A PostgreSQL database ([`PgMeta`]), shared by any number of processes.
    Postgres(String),
}

impl MetadataLocation {
    /// `local` (or empty) or a `postgres://` / `postgresql://` URL.
    pub fn parse(value: &str) -> Result<MetadataLocation, String> {
        let value = value.trim();
        if value.is_empty() || value == "local" {
            Ok(MetadataLocation::Local)
        } else if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Ok(MetadataLocation::Postgres(value.to_owned()))
        } else {
            Err(format!(
                "metadata location `{}` is neither `local` nor a postgres:// URL",
                redact(value)
            ))
        }
    }
}

pub(crate) use redb_store::contents;
/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// What is stored about a manifest besides its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    pub created_at: u64,
    pub blobs: Vec<String>,
    pub children: Vec<String>,
    pub subject: Option<String>,
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ManifestRecord {
    /// The record of a manifest of `size` bytes parsed as `parsed`, stored at `created_at`.
    pub fn new(parsed: &ParsedManifest, size: u64, created_at: u64) -> ManifestRecord {
        ManifestRecord {
            media_type: parsed.media_type.clone(),
            size,
            created_at,
            blobs: parsed.blobs.iter().map(|d| d.to_string()).collect(),
            children: parsed.children.iter().map(|d| d.to_string()).collect(),
            subject: parsed.subject.as_ref().map(|d| d.to_string()),
            artifact_type: parsed.artifact_type.clone(),
            annotations: parsed.annotations.clone(),
        }
    }
}

/// Everything a metadata database holds that `crate::fsck` checks.
#[derive(Debug, Default)]
pub(crate) struct MetaContents {
    /// digest → recorded size
    pub blobs: BTreeMap<String, u64>,
    /// (digest, repository)
    pub links: BTreeSet<(String, String)>,
    pub manifests: Vec<MetaManifest>,
    /// (repository, tag, digest)
    pub tags: Vec<(String, String, String)>,
    /// upload session ids
    pub uploads: BTreeSet<String>,
}

/// One stored manifest as read back, undecoded parts kept so fsck can name them.
#[derive(Debug)]
pub(crate) struct MetaManifest {
    pub repo: String,
    pub digest: String,
    pub record: Result<ManifestRecord, String>,
    pub bytes: Option<Vec<u8>>,
}

/// A manifest's record and, when asked for, its bytes.
pub type ManifestWithBytes = (ManifestRecord, Option<Vec<u8>>);

/// A blob as linked into a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkedBlob {
    pub size: u64,
    /// When the link was made or last refreshed (unix seconds).
    pub linked_at: u64,
}

/// A blob store's own record of an upload session ([`MetadataStore::upload_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadState {
    /// Opaque to the metadata store.
    pub bytes: Vec<u8>,
    /// 1 for the first record, one more with each replacement.
    pub version: u64,
    /// When it was last written (unix seconds).
    pub updated_at: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    /// Whether more items follow the last one returned.
    pub more: bool,
}

/// What a repository or image delete removed: manifest digests and tags, sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub manifests: Vec<String>,
    pub tags: Vec<String>,
}

/// What a GC pass removed (or would remove, in a dry run).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub manifests: usize,
    pub links: usize,
    pub repositories: usize,
    /// Blobs whose metadata was removed; their files are deleted after commit.
    pub blobs: Vec<Digest>,
    /// The recorded sizes of `blobs`, summed.
    pub bytes: u64,
    /// Blob files without metadata (a crash between file and metadata
    /// steps), older than the grace period; filled in by the registry.
    pub orphan_files: usize,
}

/// A write that can change the answer of a manifest GET, as a cache of those answers
/// ([`crate::cache`]) must learn it. Serialized as JSON when sent to other processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Tags of `repo` removed.
    Tags { repo: String, tags: Vec<String> },
    /// Manifest `digest` of `repo` stored (again) or removed, and `tags` moved to it or
    /// removed with it.
    Manifest {
        repo: String,
        digest: String,
        tags: Vec<String>,
    },
    /// Anything may have changed: a repository delete, GC, or a change not known whole.
    All,
}

/// Learns the changes other processes make to a shared store ([`MetadataStore::watch`]).
pub trait ChangeSink: Send + Sync {
    /// Another process committed `change`.
    fn changed(&self, change: &Change);
    /// Whether changes are being received: false from the moment one could be missed
    /// (the listener lost its connection) until it listens again.
    fn watching(&self, watching: bool);
}

/// The future a [`MetadataStore`] call returns.
pub type MetaFuture<'a, T> = BoxFuture<'a, Result<T, StorageError>>;

/// A held [`MetadataStore::lock_blob`]; dropping it releases the lock.
pub type BlobLock = Box<dyn Send + Sync>;

/// Where the registry's metadata lives: which blobs each repository holds, manifests
/// (exact bytes and parsed record), tags, referrers, upload sessions, the repository list,
/// and GC over all of it. Each call is atomic: it happens whole or not at all, and
/// concurrent calls behave as if they ran one after another.
///
/// Calls are async (as [`crate::blobstore::BlobStore`]'s are), so an implementation over
/// a network database awaits its client; one over a local file keeps blocking work (an
/// fsync) off the async workers itself. The contract is checked by
/// [`crate::conformance`] (feature `conformance`).
pub trait MetadataStore: Send + Sync {
    /// The size of `digest` and when it was linked, if it is linked into `repo`.
    fn linked_blob_size<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> MetaFuture<'a, Option<LinkedBlob>>;

    /// Refreshes the link and blob timestamps, if the link still exists (false if not).
    /// Ordered against GC: either GC sees the fresh timestamps, or this sees the link gone.
    fn touch_link<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> MetaFuture<'a, bool>;

    /// Whether metadata for `digest` exists at all (checked before deleting its bytes).
    fn blob_known<'a>(&'a self, digest: &'a Digest) -> MetaFuture<'a, bool>;

    /// Records a stored blob (timestamp refreshed, so the GC grace period protects it) and
    /// its link into `repo`, and ends `upload` if given.
    fn commit_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: u64,
        upload: Option<&'a str>,
    ) -> MetaFuture<'a, ()>;

    /// Links `digest` into `repo` if it is linked into `from`; returns its size.
    fn mount<'a>(
        &'a self,
        repo: &'a str,
        from: &'a str,
        digest: &'a Digest,
    ) -> MetaFuture<'a, Option<u64>>;

    /// Up to `limit` repositories `digest` is linked into, in name order.
    fn blob_repositories<'a>(
        &'a self,
        digest: &'a Digest,
        limit: usize,
    ) -> MetaFuture<'a, Vec<String>>;

    /// Links `digest` into `repo` if it is linked into any repository; returns its size.
    /// Atomic, so the link it copies cannot vanish meanwhile.
    fn mount_any<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> MetaFuture<'a, Option<u64>>;

    /// Removes the link of `digest` from `repo`; false if there was none.
    fn unlink_blob<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> MetaFuture<'a, bool>;

    /// Stores a manifest and points `tags` at it (a tag already elsewhere moves), after
    /// checking atomically that every descriptor names content stored in `repo` with the
    /// declared size ([`StorageError::ManifestBlobUnknown`],
    /// [`StorageError::ManifestChildUnknown`], a size mismatch).
    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        bytes: &'a [u8],
        parsed: &'a ParsedManifest,
        tags: &'a [String],
    ) -> MetaFuture<'a, ()>;

    /// Resolves a reference to a digest in `repo` (a digest resolves to itself).
    fn resolve<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a Reference,
    ) -> MetaFuture<'a, Option<Digest>>;

    /// A manifest's record and, if `with_bytes`, its exact bytes.
    fn manifest<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        with_bytes: bool,
    ) -> MetaFuture<'a, Option<ManifestWithBytes>>;

    /// Removes a tag; false if it did not exist.
    fn delete_tag<'a>(&'a self, repo: &'a str, tag: &'a str) -> MetaFuture<'a, bool>;

    /// Removes a manifest with its references, referrer entry and tags; false if absent.
    fn delete_manifest<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> MetaFuture<'a, bool> {
        Box::pin(async move {
            let reference = Reference::Digest(digest.clone());
            Ok(self.delete_image(repo, &reference).await?.is_some())
        })
    }

    /// Removes the manifest `reference` names (a tag resolved atomically with the
    /// removal) with every tag pointing at it; `None` if there is no such manifest.
    fn delete_image<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a Reference,
    ) -> MetaFuture<'a, Option<Deleted>>;

    /// Removes a repository atomically: its manifests, tags and blob links, and its
    /// entry in the repository list. Blobs stay until GC finds them unlinked and
    /// unreferenced; upload sessions are left alone (one that completes recreates the
    /// repository, as a push after the delete would). `None` if the repository is unknown.
    fn delete_repository<'a>(&'a self, repo: &'a str) -> MetaFuture<'a, Option<Deleted>>;

    /// Tags of `repo` in order after `last`, at most `n`; `None` if the repository is
    /// unknown.
    fn tags<'a>(
        &'a self,
        repo: &'a str,
        last: Option<&'a str>,
        n: Option<usize>,
    ) -> MetaFuture<'a, Option<Page>>;

    /// Repository names in order after `last`, at most `n`. A repository exists from its
    /// first blob link or manifest until it is deleted or GC finds it empty.
    fn catalog<'a>(&'a self, last: Option<&'a str>, n: Option<usize>) -> MetaFuture<'a, Page>;

    /// Manifests in `repo` whose subject is `subject` (digest and record), only those of
    /// `artifact_type` if given.
    fn referrers<'a>(
        &'a self,
        repo: &'a str,
        subject: &'a Digest,
        artifact_type: Option<&'a str>,
    ) -> MetaFuture<'a, Vec<(String, ManifestRecord)>>;

    /// Records upload session `id` into `repo`, started now.
    fn create_upload<'a>(&'a self, id: &'a str, repo: &'a str) -> MetaFuture<'a, ()>;

    /// The repository and start time (unix seconds) of an upload session.
    fn upload<'a>(&'a self, id: &'a str) -> MetaFuture<'a, Option<(String, u64)>>;

    /// Ends an upload session; false if there was none.
    fn remove_upload<'a>(&'a self, id: &'a str) -> MetaFuture<'a, bool>;

    /// All upload sessions: (id, repository, started at), for expiry.
    fn uploads(&self) -> MetaFuture<'_, Vec<(String, String, u64)>>;

    /// The blob store's record of upload session `id`, if it keeps one here: opaque
    /// bytes (the S3 store's multipart upload, parts and hash state), so whichever
    /// process takes the session's next request finds it. Independent of the session
    /// rows above: the blob store writes it before the registry records the session.
    fn upload_state<'a>(&'a self, id: &'a str) -> MetaFuture<'a, Option<UploadState>>;

    /// Compare-and-swap: replaces the record of `id` with `bytes` if its version is
    /// still `expected` (0: there is no record yet, and this creates it); the new version
    /// is `expected + 1`. False, with nothing changed, if another writer came first.
    fn set_upload_state<'a>(
        &'a self,
        id: &'a str,
        bytes: &'a [u8],
        expected: u64,
    ) -> MetaFuture<'a, bool>;

    /// Removes the record of `id`; false if there was none.
    fn remove_upload_state<'a>(&'a self, id: &'a str) -> MetaFuture<'a, bool>;

    /// Every record: (id, last written), for expiry of sessions no one finished.
    fn upload_states(&self) -> MetaFuture<'_, Vec<(String, u64)>>;

    /// One garbage-collection pass, atomic:
    /// 1. untagged manifests created before `cutoff` (unix seconds) are removed, unless
    ///    an index in the same repository lists them or they are a referrer whose
    ///    subject still exists (repeated until nothing changes, so a removed index
    ///    releases its children);
    /// 2. repository↔blob links older than `cutoff` that no manifest of the repository
    ///    references are removed;
    /// 3. blobs touched before `cutoff` with no link and no reference are removed (the
    ///    report lists them: the caller deletes their bytes);
    /// 4. repositories with no manifest and no link left are forgotten.
    ///
    /// With `dry_run` nothing changes and the report says what would go.
    fn gc(&self, cutoff: u64, dry_run: bool) -> MetaFuture<'_, GcReport>;

    /// Locks blob `digest` against other processes sharing this store, until the guard
    /// is dropped: an upload holds it from just before the bytes become visible until
    /// their metadata is committed, and GC around its "no metadata?" check and the
    /// delete, so GC never deletes bytes another process has just placed. With `wait`
    /// false, `None` when another holder has it. The default (one process: the caller's
    /// in-process lock is enough) locks nothing.
    fn lock_blob<'a>(
        &'a self,
        _digest: &'a Digest,
        _wait: bool,
    ) -> MetaFuture<'a, Option<BlobLock>> {
        Box::pin(async { Ok(Some(Box::new(()) as BlobLock)) })
    }

    /// Called after a call failed with a database I/O error
    /// ([`StorageError::is_database_io`]): an implementation whose database refuses all
    /// work after one (redb) starts afresh here, so service resumes once the cause (a
    /// full disk) is gone, without a restart.
    fn recover(&self) {}

    /// For a store other processes can change: the task that reports their changes to
    /// `sink`, running (and reconnecting) until dropped; the caller spawns it on its
    /// runtime. `None` (the default): only this process writes, so the changes its own
    /// calls make are all there is.
    fn watch(&self, _sink: Arc<dyn ChangeSink>) -> Option<BoxFuture<'static, ()>> {
        None
    }
}
