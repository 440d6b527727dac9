//! Registry metadata behind the [`MetadataStore`] trait: which blobs each repository
//! holds, manifests (exact bytes and parsed record), tags, referrers, upload sessions,
//! the repository list and GC over all of it. The default implementation is
//! [`RedbMeta`] (`redb_store.rs`, one redb database); the contract every implementation
//! meets is the conformance suite (`crate::conformance`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::StorageError;
use crate::manifest::ParsedManifest;
use crate::names::{Digest, Reference};

mod redb_store;

pub use redb_store::RedbMeta;
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

/// Where the registry's metadata lives: which blobs each repository holds, manifests
/// (exact bytes and parsed record), tags, referrers, upload sessions, the repository list,
/// and GC over all of it. Each call is atomic: it happens whole or not at all, and
/// concurrent calls behave as if they ran one after another.
///
/// Calls block; the registry makes them on the blocking thread pool, so an implementation
/// over a network database may block on its client too. The contract is checked by
/// [`crate::conformance`] (feature `conformance`).
pub trait MetadataStore: Send + Sync {
    /// The size of `digest` and when it was linked, if it is linked into `repo`.
    fn linked_blob_size(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<LinkedBlob>, StorageError>;

    /// Refreshes the link and blob timestamps, if the link still exists (false if not).
    /// Ordered against GC: either GC sees the fresh timestamps, or this sees the link gone.
    fn touch_link(&self, repo: &str, digest: &Digest) -> Result<bool, StorageError>;

    /// Whether metadata for `digest` exists at all (checked before deleting its bytes).
    fn blob_known(&self, digest: &Digest) -> Result<bool, StorageError>;

    /// Records a stored blob (timestamp refreshed, so the GC grace period protects it) and
    /// its link into `repo`, and ends `upload` if given.
    fn commit_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        upload: Option<&str>,
    ) -> Result<(), StorageError>;

    /// Links `digest` into `repo` if it is linked into `from`; returns its size.
    fn mount(&self, repo: &str, from: &str, digest: &Digest) -> Result<Option<u64>, StorageError>;

    /// Up to `limit` repositories `digest` is linked into, in name order.
    fn blob_repositories(&self, digest: &Digest, limit: usize)
    -> Result<Vec<String>, StorageError>;

    /// Links `digest` into `repo` if it is linked into any repository; returns its size.
    /// Atomic, so the link it copies cannot vanish meanwhile.
    fn mount_any(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, StorageError>;

    /// Removes the link of `digest` from `repo`; false if there was none.
    fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool, StorageError>;

    /// Stores a manifest and points `tags` at it (a tag already elsewhere moves), after
    /// checking atomically that every descriptor names content stored in `repo` with the
    /// declared size ([`StorageError::ManifestBlobUnknown`],
    /// [`StorageError::ManifestChildUnknown`], a size mismatch).
    fn put_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        bytes: &[u8],
        parsed: &ParsedManifest,
        tags: &[String],
    ) -> Result<(), StorageError>;

    /// Resolves a reference to a digest in `repo` (a digest resolves to itself).
    fn resolve(&self, repo: &str, reference: &Reference) -> Result<Option<Digest>, StorageError>;

    /// A manifest's record and, if `with_bytes`, its exact bytes.
    fn manifest(
        &self,
        repo: &str,
        digest: &Digest,
        with_bytes: bool,
    ) -> Result<Option<ManifestWithBytes>, StorageError>;

    /// Removes a tag; false if it did not exist.
    fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool, StorageError>;

    /// Removes a manifest with its references, referrer entry and tags; false if absent.
    fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<bool, StorageError> {
        Ok(self
            .delete_image(repo, &Reference::Digest(digest.clone()))?
            .is_some())
    }

    /// Removes the manifest `reference` names (a tag resolved atomically with the
    /// removal) with every tag pointing at it; `None` if there is no such manifest.
    fn delete_image(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<Option<Deleted>, StorageError>;

    /// Removes a repository atomically: its manifests, tags and blob links, and its
    /// entry in the repository list. Blobs stay until GC finds them unlinked and
    /// unreferenced; upload sessions are left alone (one that completes recreates the
    /// repository, as a push after the delete would). `None` if the repository is unknown.
    fn delete_repository(&self, repo: &str) -> Result<Option<Deleted>, StorageError>;

    /// Tags of `repo` in order after `last`, at most `n`; `None` if the repository is
    /// unknown.
    fn tags(
        &self,
        repo: &str,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<Option<Page>, StorageError>;

    /// Repository names in order after `last`, at most `n`. A repository exists from its
    /// first blob link or manifest until it is deleted or GC finds it empty.
    fn catalog(&self, last: Option<&str>, n: Option<usize>) -> Result<Page, StorageError>;

    /// Manifests in `repo` whose subject is `subject` (digest and record), only those of
    /// `artifact_type` if given.
    fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<(String, ManifestRecord)>, StorageError>;

    /// Records upload session `id` into `repo`, started now.
    fn create_upload(&self, id: &str, repo: &str) -> Result<(), StorageError>;

    /// The repository and start time (unix seconds) of an upload session.
    fn upload(&self, id: &str) -> Result<Option<(String, u64)>, StorageError>;

    /// Ends an upload session; false if there was none.
    fn remove_upload(&self, id: &str) -> Result<bool, StorageError>;

    /// All upload sessions: (id, repository, started at), for expiry.
    fn uploads(&self) -> Result<Vec<(String, String, u64)>, StorageError>;

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
    fn gc(&self, cutoff: u64, dry_run: bool) -> Result<GcReport, StorageError>;

    /// Called after a call failed with a database I/O error
    /// ([`StorageError::is_database_io`]): an implementation whose database refuses all
    /// work after one (redb) starts afresh here, so service resumes once the cause (a
    /// full disk) is gone, without a restart.
    fn recover(&self) {}
}
