//! [`RedbMeta`], the default [`MetadataStore`]: one redb database (`meta.redb`)
//! holding tags, manifests (exact bytes and parsed record), repository↔blob links,
//! manifest references, referrers, upload sessions, blob sizes and GC timestamps.
//! Every operation is one transaction, so each change is atomic.
//!
//! The operations are written blocking (`impl RedbMeta`); the [`MetadataStore`] impl runs
//! reads inline (a redb read transaction never waits for a writer) and writes, which
//! fsync on commit, on the blocking pool.
//! Manifest PUT and GC are both write transactions, which redb serialises:
//! GC's "still unreferenced?" re-check can never interleave with a PUT's
//! reference check.
//!
//! One file (~740 lines without its tests) on purpose: every operation is one
//! transaction over the same nine tables, and the invariants GC relies on (links,
//! manifest references, referrers) are checked side by side with the writes that keep
//! them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{
    Deleted, GcReport, LinkedBlob, ManifestRecord, ManifestWithBytes, MetaContents, MetaFuture,
    MetaManifest, MetadataStore, Page, UploadState, now_secs,
};
use crate::error::StorageError;
use crate::manifest::ParsedManifest;
use crate::names::{Digest, Reference};

/// digest → (size, last touched, unix seconds)
const BLOBS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("blobs");
/// (digest, repo) → linked at. Keyed by digest first so "linked anywhere?" is one range probe.
const BLOB_LINKS: TableDefinition<(&str, &str), u64> = TableDefinition::new("blob_links");
/// repo → created at
const REPOS: TableDefinition<&str, u64> = TableDefinition::new("repos");
/// (repo, digest) → JSON [`ManifestRecord`]
const MANIFESTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("manifests");
/// (repo, digest) → exact manifest bytes
const MANIFEST_BYTES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("manifest_bytes");
/// (referenced digest, repo, referencing manifest) — blobs and index children.
const MANIFEST_REFS: TableDefinition<(&str, &str, &str), ()> =
    TableDefinition::new("manifest_refs");
/// (repo, tag) → digest
const TAGS: TableDefinition<(&str, &str), &str> = TableDefinition::new("tags");
/// (repo, subject, referrer)
const REFERRERS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("referrers");
/// upload id → (repo, started at)
const UPLOADS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("uploads");
/// upload id → (version, updated at, the blob store's opaque record)
const UPLOAD_STATES: TableDefinition<&str, (u64, u64, &[u8])> =
    TableDefinition::new("upload_states");

/// The default [`MetadataStore`]: one redb database file. Clones share it.
#[derive(Clone)]
pub struct RedbMeta {
    path: Arc<PathBuf>,
    /// `None` after an I/O failure ([`MetadataStore::recover`]) until the next call
    /// reopens the file: redb refuses all work on a handle that failed once.
    db: Arc<RwLock<Option<Arc<Database>>>>,
}

fn decode(bytes: &[u8]) -> Result<ManifestRecord, StorageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StorageError::Corrupt(format!("manifest record: {e}")))
}

/// Whether any key of a 2-tuple table starts with `a`.
fn has_prefix2<V: redb::Value + 'static>(
    t: &impl ReadableTable<(&'static str, &'static str), V>,
    a: &str,
) -> Result<bool, StorageError> {
    Ok(match t.range((a, "")..)?.next() {
        Some(r) => r?.0.value().0 == a,
        None => false,
    })
}

/// Whether any key of a 3-tuple table starts with `(a, b)`; with `b = None`, with `a`.
fn has_prefix3(
    t: &impl ReadableTable<(&'static str, &'static str, &'static str), ()>,
    a: &str,
    b: Option<&str>,
) -> Result<bool, StorageError> {
    Ok(match t.range((a, b.unwrap_or(""), "")..)?.next() {
        Some(r) => {
            let g = r?.0;
            let (ka, kb, _) = g.value();
            ka == a && b.is_none_or(|b| kb == b)
        }
        None => false,
    })
}

/// redb's page cache for `meta.redb`. Its default, 1 GiB per database, would let the
/// process grow with the store. Manifest GETs are answered from [`crate::cache`] first,
/// and a page evicted here is read again, usually from the kernel's page cache
/// (ARCHITECTURE.md, "Memory").
const CACHE_BYTES: usize = 64 << 20;

impl RedbMeta {
    /// Opens (or creates) the database and all tables.
    pub fn open(path: &Path) -> Result<RedbMeta, StorageError> {
        let db = RedbMeta::open_file(path)?;
        let tx = db.begin_write()?;
        tx.open_table(BLOBS)?;
        tx.open_table(BLOB_LINKS)?;
        tx.open_table(REPOS)?;
        tx.open_table(MANIFESTS)?;
        tx.open_table(MANIFEST_BYTES)?;
        tx.open_table(MANIFEST_REFS)?;
        tx.open_table(TAGS)?;
        tx.open_table(REFERRERS)?;
        tx.open_table(UPLOADS)?;
        tx.open_table(UPLOAD_STATES)?;
        tx.commit()?;
        Ok(RedbMeta {
            path: Arc::new(path.to_owned()),
            db: Arc::new(RwLock::new(Some(Arc::new(db)))),
        })
    }

    fn open_file(path: &Path) -> Result<Database, StorageError> {
        match redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
        {
            Ok(db) => Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                Err(StorageError::DbLocked(path.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The open database, reopened first if an I/O failure dropped it. A reopen runs
    /// redb's repair when the failure left a commit half-written; until it succeeds
    /// (space freed, the last transaction of the old handle gone) calls fail.
    fn db(&self) -> Result<Arc<Database>, StorageError> {
        if let Some(db) = self
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return Ok(Arc::clone(db));
        }
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = slot.as_ref() {
            return Ok(Arc::clone(db));
        }
        let db = Arc::new(RedbMeta::open_file(&self.path)?);
        tracing::warn!(path = %self.path.display(), "metadata database reopened after an i/o failure");
        *slot = Some(Arc::clone(&db));
        Ok(db)
    }

    /// Every row, read in one transaction (`crate::migrate` copies them).
    pub(crate) fn contents(&self) -> Result<MetaContents, StorageError> {
        contents(&*self.db()?)
    }

    fn link(
        tx: &WriteTransaction,
        repo: &str,
        digest: &Digest,
        size: u64,
        now: u64,
    ) -> Result<(), StorageError> {
        tx.open_table(BLOBS)?.insert(digest.as_str(), (size, now))?;
        tx.open_table(BLOB_LINKS)?
            .insert((digest.as_str(), repo), now)?;
        let mut repos = tx.open_table(REPOS)?;
        if repos.get(repo)?.is_none() {
            repos.insert(repo, now)?;
        }
        Ok(())
    }

    /// Links `digest` into `repo` and commits, when `linked` (the source holds it) and
    /// its bytes are stored; returns its size.
    fn link_if_stored(
        tx: WriteTransaction,
        repo: &str,
        digest: &Digest,
        linked: bool,
    ) -> Result<Option<u64>, StorageError> {
        let size = tx
            .open_table(BLOBS)?
            .get(digest.as_str())?
            .map(|g| g.value().0);
        let Some(size) = size.filter(|_| linked) else {
            return Ok(None);
        };
        RedbMeta::link(&tx, repo, digest, size, now_secs())?;
        tx.commit()?;
        Ok(Some(size))
    }

    /// Removes a manifest with its bytes, references, referrer row and tags; returns
    /// the tags removed, `None` if the manifest did not exist.
    fn remove_manifest(
        tx: &WriteTransaction,
        repo: &str,
        digest: &str,
    ) -> Result<Option<Vec<String>>, StorageError> {
        let Some(rec) = tx
            .open_table(MANIFESTS)?
            .remove((repo, digest))?
            .map(|g| decode(g.value()))
        else {
            return Ok(None);
        };
        let rec = rec?;
        tx.open_table(MANIFEST_BYTES)?.remove((repo, digest))?;
        let mut refs = tx.open_table(MANIFEST_REFS)?;
        for r in rec.blobs.iter().chain(&rec.children) {
            refs.remove((r.as_str(), repo, digest))?;
        }
        if let Some(s) = &rec.subject {
            tx.open_table(REFERRERS)?
                .remove((repo, s.as_str(), digest))?;
        }
        let mut tags = tx.open_table(TAGS)?;
        let mut doomed = Vec::new();
        for entry in tags.range((repo, "")..)? {
            let (k, v) = entry?;
            let (r, tag) = k.value();
            if r != repo {
                break;
            }
            if v.value() == digest {
                doomed.push(tag.to_owned());
            }
        }
        for tag in &doomed {
            tags.remove((repo, tag.as_str()))?;
        }
        Ok(Some(doomed))
    }
}

/// The operations, blocking; see [`MetadataStore`] for what each does.
impl RedbMeta {
    fn linked_blob_size(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<LinkedBlob>, StorageError> {
        let rx = self.db()?.begin_read()?;
        let Some(linked_at) = rx
            .open_table(BLOB_LINKS)?
            .get((digest.as_str(), repo))?
            .map(|g| g.value())
        else {
            return Ok(None);
        };
        Ok(rx
            .open_table(BLOBS)?
            .get(digest.as_str())?
            .map(|g| LinkedBlob {
                size: g.value().0,
                linked_at,
            }))
    }

    fn touch_link(&self, repo: &str, digest: &Digest) -> Result<bool, StorageError> {
        let tx = self.db()?.begin_write()?;
        let now = now_secs();
        let size = tx
            .open_table(BLOBS)?
            .get(digest.as_str())?
            .map(|g| g.value().0);
        let linked = tx
            .open_table(BLOB_LINKS)?
            .get((digest.as_str(), repo))?
            .is_some();
        let (Some(size), true) = (size, linked) else {
            return Ok(false);
        };
        RedbMeta::link(&tx, repo, digest, size, now)?;
        tx.commit()?;
        Ok(true)
    }

    fn blob_known(&self, digest: &Digest) -> Result<bool, StorageError> {
        let rx = self.db()?.begin_read()?;
        Ok(rx.open_table(BLOBS)?.get(digest.as_str())?.is_some())
    }

    fn commit_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        upload: Option<&str>,
    ) -> Result<(), StorageError> {
        let tx = self.db()?.begin_write()?;
        RedbMeta::link(&tx, repo, digest, size, now_secs())?;
        if let Some(upload) = upload {
            tx.open_table(UPLOADS)?.remove(upload)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn mount(&self, repo: &str, from: &str, digest: &Digest) -> Result<Option<u64>, StorageError> {
        let tx = self.db()?.begin_write()?;
        let linked = tx
            .open_table(BLOB_LINKS)?
            .get((digest.as_str(), from))?
            .is_some();
        RedbMeta::link_if_stored(tx, repo, digest, linked)
    }

    fn blob_repositories(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let rx = self.db()?.begin_read()?;
        let links = rx.open_table(BLOB_LINKS)?;
        let mut out = Vec::new();
        for entry in links.range((digest.as_str(), "")..)? {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry?;
            let (d, repo) = k.value();
            if d != digest.as_str() {
                break;
            }
            out.push(repo.to_owned());
        }
        Ok(out)
    }

    fn mount_any(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, StorageError> {
        let tx = self.db()?.begin_write()?;
        let linked = has_prefix2(&tx.open_table(BLOB_LINKS)?, digest.as_str())?;
        RedbMeta::link_if_stored(tx, repo, digest, linked)
    }

    fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool, StorageError> {
        let tx = self.db()?.begin_write()?;
        let removed = tx
            .open_table(BLOB_LINKS)?
            .remove((digest.as_str(), repo))?
            .is_some();
        tx.commit()?;
        Ok(removed)
    }

    fn put_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        bytes: &[u8],
        parsed: &ParsedManifest,
        tags: &[String],
    ) -> Result<(), StorageError> {
        let now = now_secs();
        let tx = self.db()?.begin_write()?;
        {
            check_declared(&tx, repo, parsed)?;
            let mut manifests = tx.open_table(MANIFESTS)?;
            let record = ManifestRecord::new(parsed, bytes.len() as u64, now);
            let encoded =
                serde_json::to_vec(&record).map_err(|e| StorageError::Corrupt(e.to_string()))?;
            manifests.insert((repo, digest.as_str()), encoded.as_slice())?;
            tx.open_table(MANIFEST_BYTES)?
                .insert((repo, digest.as_str()), bytes)?;
            let mut refs = tx.open_table(MANIFEST_REFS)?;
            for r in parsed.blobs.iter().chain(&parsed.children) {
                refs.insert((r.as_str(), repo, digest.as_str()), ())?;
            }
            if let Some(s) = &parsed.subject {
                tx.open_table(REFERRERS)?
                    .insert((repo, s.as_str(), digest.as_str()), ())?;
            }
            let mut t = tx.open_table(TAGS)?;
            for tag in tags {
                t.insert((repo, tag.as_str()), digest.as_str())?;
            }
            let mut repos = tx.open_table(REPOS)?;
            if repos.get(repo)?.is_none() {
                repos.insert(repo, now)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn resolve(&self, repo: &str, reference: &Reference) -> Result<Option<Digest>, StorageError> {
        match reference {
            Reference::Digest(d) => Ok(Some(d.clone())),
            Reference::Tag(t) => {
                let rx = self.db()?.begin_read()?;
                let found = rx
                    .open_table(TAGS)?
                    .get((repo, t.as_str()))?
                    .map(|g| g.value().to_owned());
                found
                    .map(|d| Digest::parse(&d).map_err(|e| StorageError::Corrupt(e.to_string())))
                    .transpose()
            }
        }
    }

    fn manifest(
        &self,
        repo: &str,
        digest: &Digest,
        with_bytes: bool,
    ) -> Result<Option<ManifestWithBytes>, StorageError> {
        let rx = self.db()?.begin_read()?;
        let Some(rec) = rx
            .open_table(MANIFESTS)?
            .get((repo, digest.as_str()))?
            .map(|g| decode(g.value()))
        else {
            return Ok(None);
        };
        let bytes = if with_bytes {
            rx.open_table(MANIFEST_BYTES)?
                .get((repo, digest.as_str()))?
                .map(|g| g.value().to_vec())
        } else {
            None
        };
        Ok(Some((rec?, bytes)))
    }

    fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool, StorageError> {
        let tx = self.db()?.begin_write()?;
        let removed = tx.open_table(TAGS)?.remove((repo, tag))?.is_some();
        tx.commit()?;
        Ok(removed)
    }

    fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<bool, StorageError> {
        Ok(self
            .delete_image(repo, &Reference::Digest(digest.clone()))?
            .is_some())
    }

    fn delete_image(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<Option<Deleted>, StorageError> {
        let tx = self.db()?.begin_write()?;
        let digest = match reference {
            Reference::Digest(d) => Some(d.to_string()),
            Reference::Tag(t) => tx
                .open_table(TAGS)?
                .get((repo, t.as_str()))?
                .map(|g| g.value().to_owned()),
        };
        let Some(digest) = digest else {
            return Ok(None);
        };
        let Some(mut tags) = RedbMeta::remove_manifest(&tx, repo, &digest)? else {
            return Ok(None);
        };
        tx.commit()?;
        tags.sort();
        Ok(Some(Deleted {
            manifests: vec![digest],
            tags,
        }))
    }

    fn delete_repository(&self, repo: &str) -> Result<Option<Deleted>, StorageError> {
        let tx = self.db()?.begin_write()?;
        if tx.open_table(REPOS)?.remove(repo)?.is_none() {
            return Ok(None);
        }
        let mut deleted = Deleted::default();
        {
            let mut tags = tx.open_table(TAGS)?;
            for entry in tags.range((repo, "")..)? {
                let (k, _) = entry?;
                let (r, tag) = k.value();
                if r != repo {
                    break;
                }
                deleted.tags.push(tag.to_owned());
            }
            for tag in &deleted.tags {
                tags.remove((repo, tag.as_str()))?;
            }
        }
        {
            let manifests = tx.open_table(MANIFESTS)?;
            for entry in manifests.range((repo, "")..)? {
                let (k, _) = entry?;
                let (r, digest) = k.value();
                if r != repo {
                    break;
                }
                deleted.manifests.push(digest.to_owned());
            }
        }
        for digest in &deleted.manifests {
            RedbMeta::remove_manifest(&tx, repo, digest)?;
        }
        {
            // Links are keyed by digest first (for GC's probe), so finding a
            // repository's links is a scan, as in GC.
            let mut links = tx.open_table(BLOB_LINKS)?;
            let mut doomed = Vec::new();
            for entry in links.iter()? {
                let (k, _) = entry?;
                let (digest, r) = k.value();
                if r == repo {
                    doomed.push(digest.to_owned());
                }
            }
            for digest in &doomed {
                links.remove((digest.as_str(), repo))?;
            }
        }
        tx.commit()?;
        Ok(Some(deleted))
    }

    fn tags(
        &self,
        repo: &str,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<Option<Page>, StorageError> {
        let rx = self.db()?.begin_read()?;
        if rx.open_table(REPOS)?.get(repo)?.is_none() {
            return Ok(None);
        }
        let t = rx.open_table(TAGS)?;
        let mut items = Vec::new();
        let mut more = false;
        for entry in t.range((repo, last.unwrap_or(""))..)? {
            let (k, _) = entry?;
            let (r, tag) = k.value();
            if r != repo {
                break;
            }
            if Some(tag) == last {
                continue;
            }
            if n.is_some_and(|n| items.len() >= n) {
                more = true;
                break;
            }
            items.push(tag.to_owned());
        }
        Ok(Some(Page { items, more }))
    }

    fn catalog(&self, last: Option<&str>, n: Option<usize>) -> Result<Page, StorageError> {
        let rx = self.db()?.begin_read()?;
        let t = rx.open_table(REPOS)?;
        let mut items = Vec::new();
        let mut more = false;
        for entry in t.range(last.unwrap_or("")..)? {
            let (k, _) = entry?;
            let name = k.value();
            if Some(name) == last {
                continue;
            }
            if n.is_some_and(|n| items.len() >= n) {
                more = true;
                break;
            }
            items.push(name.to_owned());
        }
        Ok(Page { items, more })
    }

    fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<(String, ManifestRecord)>, StorageError> {
        let rx = self.db()?.begin_read()?;
        let refs = rx.open_table(REFERRERS)?;
        let manifests = rx.open_table(MANIFESTS)?;
        let mut out = Vec::new();
        for entry in refs.range((repo, subject.as_str(), "")..)? {
            let (k, _) = entry?;
            let (r, s, referrer) = k.value();
            if r != repo || s != subject.as_str() {
                break;
            }
            if let Some(g) = manifests.get((repo, referrer))? {
                let record = decode(g.value())?;
                if artifact_type.is_none_or(|t| record.artifact_type.as_deref() == Some(t)) {
                    out.push((referrer.to_owned(), record));
                }
            }
        }
        Ok(out)
    }

    fn create_upload(&self, id: &str, repo: &str) -> Result<(), StorageError> {
        let tx = self.db()?.begin_write()?;
        tx.open_table(UPLOADS)?.insert(id, (repo, now_secs()))?;
        tx.commit()?;
        Ok(())
    }

    fn upload(&self, id: &str) -> Result<Option<(String, u64)>, StorageError> {
        let rx = self.db()?.begin_read()?;
        Ok(rx.open_table(UPLOADS)?.get(id)?.map(|g| {
            let (repo, started) = g.value();
            (repo.to_owned(), started)
        }))
    }

    fn remove_upload(&self, id: &str) -> Result<bool, StorageError> {
        let tx = self.db()?.begin_write()?;
        let removed = tx.open_table(UPLOADS)?.remove(id)?.is_some();
        tx.commit()?;
        Ok(removed)
    }

    fn uploads(&self) -> Result<Vec<(String, String, u64)>, StorageError> {
        let rx = self.db()?.begin_read()?;
        let mut out = Vec::new();
        for entry in rx.open_table(UPLOADS)?.iter()? {
            let (k, v) = entry?;
            let (repo, started) = v.value();
            out.push((k.value().to_owned(), repo.to_owned(), started));
        }
        Ok(out)
    }

    fn upload_state(&self, id: &str) -> Result<Option<UploadState>, StorageError> {
        let rx = self.db()?.begin_read()?;
        Ok(rx.open_table(UPLOAD_STATES)?.get(id)?.map(|g| {
            let (version, updated_at, bytes) = g.value();
            UploadState {
                bytes: bytes.to_vec(),
                version,
                updated_at,
            }
        }))
    }

    fn set_upload_state(
        &self,
        id: &str,
        bytes: &[u8],
        expected: u64,
    ) -> Result<bool, StorageError> {
        let tx = self.db()?.begin_write()?;
        {
            let mut states = tx.open_table(UPLOAD_STATES)?;
            let current = states.get(id)?.map_or(0, |g| g.value().0);
            if current != expected {
                return Ok(false);
            }
            states.insert(id, (expected + 1, now_secs(), bytes))?;
        }
        tx.commit()?;
        Ok(true)
    }

    fn remove_upload_state(&self, id: &str) -> Result<bool, StorageError> {
        let tx = self.db()?.begin_write()?;
        let removed = tx.open_table(UPLOAD_STATES)?.remove(id)?.is_some();
        tx.commit()?;
        Ok(removed)
    }

    fn upload_states(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let rx = self.db()?.begin_read()?;
        let mut out = Vec::new();
        for entry in rx.open_table(UPLOAD_STATES)?.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_owned(), v.value().1));
        }
        Ok(out)
    }

    fn recover(&self) {
        // Dropped here; closed once the last call still holding it ends.
        self.db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    fn gc(&self, cutoff: u64, dry_run: bool) -> Result<GcReport, StorageError> {
        let mut report = GcReport::default();
        let tx = self.db()?.begin_write()?;
        loop {
            let tagged: HashSet<(String, String)> = {
                let t = tx.open_table(TAGS)?;
                let mut s = HashSet::new();
                for e in t.iter()? {
                    let (k, v) = e?;
                    s.insert((k.value().0.to_owned(), v.value().to_owned()));
                }
                s
            };
            let mut doomed = Vec::new();
            {
                let manifests = tx.open_table(MANIFESTS)?;
                let refs = tx.open_table(MANIFEST_REFS)?;
                for e in manifests.iter()? {
                    let (k, v) = e?;
                    let (repo, digest) = k.value();
                    let rec = decode(v.value())?;
                    let key = (repo.to_owned(), digest.to_owned());
                    if rec.created_at > cutoff
                        || tagged.contains(&key)
                        || has_prefix3(&refs, digest, Some(repo))?
                    {
                        continue;
                    }
                    if let Some(s) = &rec.subject
                        && manifests.get((repo, s.as_str()))?.is_some()
                    {
                        continue;
                    }
                    doomed.push(key);
                }
            }
            if doomed.is_empty() {
                break;
            }
            for (repo, digest) in &doomed {
                RedbMeta::remove_manifest(&tx, repo, digest)?;
            }
            report.manifests += doomed.len();
        }

        let mut live_repos = HashSet::new();
        {
            let refs = tx.open_table(MANIFEST_REFS)?;
            let mut links = tx.open_table(BLOB_LINKS)?;
            let mut doomed = Vec::new();
            for e in links.iter()? {
                let (k, v) = e?;
                let (digest, repo) = k.value();
                if v.value() <= cutoff && !has_prefix3(&refs, digest, Some(repo))? {
                    doomed.push((digest.to_owned(), repo.to_owned()));
                } else {
                    live_repos.insert(repo.to_owned());
                }
            }
            for (d, r) in &doomed {
                links.remove((d.as_str(), r.as_str()))?;
            }
            report.links = doomed.len();

            let mut blobs = tx.open_table(BLOBS)?;
            let mut dead = Vec::new();
            for e in blobs.iter()? {
                let (k, v) = e?;
                let digest = k.value();
                if v.value().1 <= cutoff
                    && !has_prefix2(&links, digest)?
                    && !has_prefix3(&refs, digest, None)?
                {
                    dead.push(digest.to_owned());
                    report.bytes = report.bytes.saturating_add(v.value().0);
                }
            }
            for d in dead {
                blobs.remove(d.as_str())?;
                report
                    .blobs
                    .push(Digest::parse(&d).map_err(|e| StorageError::Corrupt(e.to_string()))?);
            }
        }
        {
            let manifests = tx.open_table(MANIFESTS)?;
            let mut repos = tx.open_table(REPOS)?;
            let mut dead = Vec::new();
            for e in repos.iter()? {
                let (k, _) = e?;
                let repo = k.value();
                if !live_repos.contains(repo) && !has_prefix2(&manifests, repo)? {
                    dead.push(repo.to_owned());
                }
            }
            for r in &dead {
                repos.remove(r.as_str())?;
            }
            report.repositories = dead.len();
        }
        if dry_run {
            tx.abort()?;
        } else {
            tx.commit()?;
        }
        Ok(report)
    }
}

impl RedbMeta {
    /// Runs a write transaction on the blocking pool (its commit fsyncs).
    fn write<'a, T: Send + 'static>(
        &self,
        f: impl FnOnce(&RedbMeta) -> Result<T, StorageError> + Send + 'static,
    ) -> MetaFuture<'a, T> {
        let this = self.clone();
        Box::pin(
            async move { tokio::task::spawn_blocking(move || this.recovering(f(&this))).await? },
        )
    }

    /// Passes `result` on; after a database I/O error the handle is dropped, so the next
    /// call reopens the file (service resumes once a full disk has room again).
    fn recovering<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if result.as_ref().is_err_and(StorageError::is_database_io) {
            RedbMeta::recover(self);
        }
        result
    }
}

/// Reads inline, writes on the blocking pool (see the module docs).
impl MetadataStore for RedbMeta {
    fn linked_blob_size<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> MetaFuture<'a, Option<LinkedBlob>> {
        Box::pin(async move { self.recovering(RedbMeta::linked_blob_size(self, repo, digest)) })
    }

    fn touch_link<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> MetaFuture<'a, bool> {
        let (repo, digest) = (repo.to_owned(), digest.clone());
        self.write(move |m| m.touch_link(&repo, &digest))
    }

    fn blob_known<'a>(&'a self, digest: &'a Digest) -> MetaFuture<'a, bool> {
        Box::pin(async move { self.recovering(RedbMeta::blob_known(self, digest)) })
    }

    fn commit_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: u64,
        upload: Option<&'a str>,
    ) -> MetaFuture<'a, ()> {
        let (repo, digest, upload) = (repo.to_owned(), digest.clone(), upload.map(str::to_owned));
        self.write(move |m| m.commit_blob(&repo, &digest, size, upload.as_deref()))
    }

    fn mount<'a>(
        &'a self,
        repo: &'a str,
        from: &'a str,
        digest: &'a Digest,
    ) -> MetaFuture<'a, Option<u64>> {
        let (repo, from, digest) = (repo.to_owned(), from.to_owned(), digest.clone());
        self.write(move |m| m.mount(&repo, &from, &digest))
    }

    fn blob_repositories<'a>(
        &'a self,
        digest: &'a Digest,
        limit: usize,
    ) -> MetaFuture<'a, Vec<String>> {
        Box::pin(async move { self.recovering(RedbMeta::blob_repositories(self, digest, limit)) })
    }

    fn mount_any<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> MetaFuture<'a, Option<u64>> {
        let (repo, digest) = (repo.to_owned(), digest.clone());
        self.write(move |m| m.mount_any(&repo, &digest))
    }

    fn unlink_blob<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> MetaFuture<'a, bool> {
        let (repo, digest) = (repo.to_owned(), digest.clone());
        self.write(move |m| m.unlink_blob(&repo, &digest))
    }

    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        bytes: &'a [u8],
        parsed: &'a ParsedManifest,
        tags: &'a [String],
    ) -> MetaFuture<'a, ()> {
        let (repo, digest, bytes, parsed, tags) = (
            repo.to_owned(),
            digest.clone(),
            bytes.to_vec(),
            parsed.clone(),
            tags.to_vec(),
        );
        self.write(move |m| m.put_manifest(&repo, &digest, &bytes, &parsed, &tags))
    }

    fn resolve<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a Reference,
    ) -> MetaFuture<'a, Option<Digest>> {
        Box::pin(async move { self.recovering(RedbMeta::resolve(self, repo, reference)) })
    }

    fn manifest<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        with_bytes: bool,
    ) -> MetaFuture<'a, Option<ManifestWithBytes>> {
        Box::pin(async move { self.recovering(RedbMeta::manifest(self, repo, digest, with_bytes)) })
    }

    fn delete_tag<'a>(&'a self, repo: &'a str, tag: &'a str) -> MetaFuture<'a, bool> {
        let (repo, tag) = (repo.to_owned(), tag.to_owned());
        self.write(move |m| m.delete_tag(&repo, &tag))
    }

    fn delete_manifest<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> MetaFuture<'a, bool> {
        let (repo, digest) = (repo.to_owned(), digest.clone());
        self.write(move |m| m.delete_manifest(&repo, &digest))
    }

    fn delete_image<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a Reference,
    ) -> MetaFuture<'a, Option<Deleted>> {
        let (repo, reference) = (repo.to_owned(), reference.clone());
        self.write(move |m| m.delete_image(&repo, &reference))
    }

    fn delete_repository<'a>(&'a self, repo: &'a str) -> MetaFuture<'a, Option<Deleted>> {
        let repo = repo.to_owned();
        self.write(move |m| m.delete_repository(&repo))
    }

    fn tags<'a>(
        &'a self,
        repo: &'a str,
        last: Option<&'a str>,
        n: Option<usize>,
    ) -> MetaFuture<'a, Option<Page>> {
        Box::pin(async move { self.recovering(RedbMeta::tags(self, repo, last, n)) })
    }

    fn catalog<'a>(&'a self, last: Option<&'a str>, n: Option<usize>) -> MetaFuture<'a, Page> {
        Box::pin(async move { self.recovering(RedbMeta::catalog(self, last, n)) })
    }

    fn referrers<'a>(
        &'a self,
        repo: &'a str,
        subject: &'a Digest,
        artifact_type: Option<&'a str>,
    ) -> MetaFuture<'a, Vec<(String, ManifestRecord)>> {
        Box::pin(
            async move { self.recovering(RedbMeta::referrers(self, repo, subject, artifact_type)) },
        )
    }

    fn create_upload<'a>(&'a self, id: &'a str, repo: &'a str) -> MetaFuture<'a, ()> {
        let (id, repo) = (id.to_owned(), repo.to_owned());
        self.write(move |m| m.create_upload(&id, &repo))
    }

    fn upload<'a>(&'a self, id: &'a str) -> MetaFuture<'a, Option<(String, u64)>> {
        Box::pin(async move { self.recovering(RedbMeta::upload(self, id)) })
    }

    fn remove_upload<'a>(&'a self, id: &'a str) -> MetaFuture<'a, bool> {
        let id = id.to_owned();
        self.write(move |m| m.remove_upload(&id))
    }

    fn uploads(&self) -> MetaFuture<'_, Vec<(String, String, u64)>> {
        Box::pin(async move { self.recovering(RedbMeta::uploads(self)) })
    }

    fn upload_state<'a>(&'a self, id: &'a str) -> MetaFuture<'a, Option<UploadState>> {
        Box::pin(async move { self.recovering(RedbMeta::upload_state(self, id)) })
    }

    fn set_upload_state<'a>(
        &'a self,
        id: &'a str,
        bytes: &'a [u8],
        expected: u64,
    ) -> MetaFuture<'a, bool> {
        let (id, bytes) = (id.to_owned(), bytes.to_vec());
        self.write(move |m| m.set_upload_state(&id, &bytes, expected))
    }

    fn remove_upload_state<'a>(&'a self, id: &'a str) -> MetaFuture<'a, bool> {
        let id = id.to_owned();
        self.write(move |m| m.remove_upload_state(&id))
    }

    fn upload_states(&self) -> MetaFuture<'_, Vec<(String, u64)>> {
        Box::pin(async move { self.recovering(RedbMeta::upload_states(self)) })
    }

    fn gc(&self, cutoff: u64, dry_run: bool) -> MetaFuture<'_, GcReport> {
        self.write(move |m| m.gc(cutoff, dry_run))
    }

    fn recover(&self) {
        RedbMeta::recover(self);
    }
}

/// Every row `crate::fsck` checks, read in one transaction of `db` (any redb handle, so
/// a read-only open of a stopped server's file works).
pub(crate) fn contents(db: &impl ReadableDatabase) -> Result<MetaContents, StorageError> {
    let rx = db.begin_read()?;
    let mut out = MetaContents::default();
    for row in rx.open_table(BLOBS)?.iter()? {
        let (k, v) = row?;
        out.blobs.insert(k.value().to_owned(), v.value().0);
    }
    for row in rx.open_table(BLOB_LINKS)?.iter()? {
        let (k, _) = row?;
        let (digest, repo) = k.value();
        out.links.insert((digest.to_owned(), repo.to_owned()));
    }
    let bytes = rx.open_table(MANIFEST_BYTES)?;
    for row in rx.open_table(MANIFESTS)?.iter()? {
        let (k, v) = row?;
        let (repo, digest) = k.value();
        out.manifests.push(MetaManifest {
            repo: repo.to_owned(),
            digest: digest.to_owned(),
            record: decode(v.value()).map_err(|e| e.to_string()),
            bytes: bytes.get((repo, digest))?.map(|g| g.value().to_vec()),
        });
    }
    for row in rx.open_table(TAGS)?.iter()? {
        let (k, v) = row?;
        let (repo, tag) = k.value();
        out.tags
            .push((repo.to_owned(), tag.to_owned(), v.value().to_owned()));
    }
    for row in rx.open_table(UPLOADS)?.iter()? {
        out.uploads.insert(row?.0.value().to_owned());
    }
    Ok(out)
}

/// Every descriptor of `parsed` against the stored content: config and layers are
/// blobs linked into `repo` and index children manifests of `repo`, each with the
/// declared size; a subject, when present in `repo`, has its declared size too.
fn check_declared(
    tx: &WriteTransaction,
    repo: &str,
    parsed: &ParsedManifest,
) -> Result<(), StorageError> {
    use crate::manifest::Target;
    let links = tx.open_table(BLOB_LINKS)?;
    let blobs = tx.open_table(BLOBS)?;
    let manifests = tx.open_table(MANIFESTS)?;
    for d in &parsed.declared {
        let stored = match d.target {
            Target::Blob => {
                let size = match links.get((d.digest.as_str(), repo))? {
                    Some(_) => blobs.get(d.digest.as_str())?.map(|g| g.value().0),
                    None => None,
                };
                Some(size.ok_or_else(|| StorageError::ManifestBlobUnknown(d.digest.clone()))?)
            }
            Target::Manifest | Target::Subject => {
                let record = manifests.get((repo, d.digest.as_str()))?;
                match (record, d.target) {
                    (Some(r), _) => Some(
                        serde_json::from_slice::<ManifestRecord>(r.value())
                            .map_err(|e| StorageError::Corrupt(e.to_string()))?
                            .size,
                    ),
                    (None, Target::Subject) => None,
                    (None, _) => return Err(StorageError::ManifestChildUnknown(d.digest.clone())),
                }
            }
        };
        d.check_size(stored)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    fn d(c: char) -> Digest {
        crate::conformance::digest_of(c)
    }

    fn image(
        config: &Digest,
        layer: &Digest,
        subject: Option<(&Digest, usize)>,
    ) -> (Vec<u8>, ParsedManifest) {
        let (bytes, _, parsed) = crate::conformance::image(config, layer, subject, None);
        (bytes, parsed)
    }

    fn meta() -> (tempfile::TempDir, RedbMeta) {
        let dir = tempfile::tempdir().unwrap();
        let m = RedbMeta::open(&dir.path().join("meta.redb")).unwrap();
        (dir, m)
    }

    #[test]
    fn manifest_put_checks_references() {
        let (_dir, m) = meta();
        let (bytes, parsed) = image(&d('a'), &d('b'), None);
        let md = Digest::of(&bytes);
        let err = m.put_manifest("r", &md, &bytes, &parsed, &[]).unwrap_err();
        assert!(matches!(err, StorageError::ManifestBlobUnknown(x) if x == d('a')));
        m.create_upload("u1", "r").unwrap();
        m.commit_blob("r", &d('a'), 1, Some("u1")).unwrap();
        m.commit_blob("r", &d('b'), 1, Some("u2")).unwrap();
        assert!(m.upload("u1").unwrap().is_none());
        assert!(m.touch_link("r", &d('a')).unwrap());
        assert!(!m.touch_link("other", &d('a')).unwrap());
        assert_eq!(
            m.linked_blob_size("r", &d('a')).unwrap().map(|l| l.size),
            Some(1)
        );
        // Linked in another repository only: still unknown here.
        let err = m
            .put_manifest("other", &md, &bytes, &parsed, &[])
            .unwrap_err();
        assert!(matches!(err, StorageError::ManifestBlobUnknown(_)));
        m.put_manifest("r", &md, &bytes, &parsed, &["v1".into()])
            .unwrap();
        assert_eq!(
            m.resolve("r", &Reference::Tag("v1".into())).unwrap(),
            Some(md.clone())
        );
        let (rec, b) = m.manifest("r", &md, true).unwrap().unwrap();
        assert_eq!(b.unwrap(), bytes);
        assert_eq!(rec.media_type, manifest::OCI_MANIFEST);
        // Mount into another repository, then the manifest can go there too.
        assert_eq!(m.mount("other", "r", &d('a')).unwrap(), Some(1));
        assert_eq!(m.mount("other", "nope", &d('b')).unwrap(), None);
        m.mount("other", "r", &d('b')).unwrap();
        m.put_manifest("other", &md, &bytes, &parsed, &[]).unwrap();
        assert_eq!(m.catalog(None, None).unwrap().items, vec!["other", "r"]);
        // A mount without `from` finds the blob wherever it is linked.
        assert_eq!(
            m.blob_repositories(&d('a'), 10).unwrap(),
            vec!["other", "r"]
        );
        assert_eq!(m.blob_repositories(&d('a'), 1).unwrap(), vec!["other"]);
        assert!(m.blob_repositories(&d('c'), 10).unwrap().is_empty());
        assert_eq!(m.mount_any("third", &d('a')).unwrap(), Some(1));
        assert_eq!(m.mount_any("third", &d('c')).unwrap(), None);
        assert!(m.linked_blob_size("third", &d('a')).unwrap().is_some());
    }

    #[test]
    fn tags_pagination_and_delete() {
        let (_dir, m) = meta();
        m.commit_blob("r", &d('a'), 1, Some("x")).unwrap();
        m.commit_blob("r", &d('b'), 1, Some("x")).unwrap();
        let (bytes, parsed) = image(&d('a'), &d('b'), None);
        let md = Digest::of(&bytes);
        m.put_manifest(
            "r",
            &md,
            &bytes,
            &parsed,
            &["c".into(), "a".into(), "b".into()],
        )
        .unwrap();
        assert_eq!(
            m.tags("r", None, None).unwrap().unwrap().items,
            vec!["a", "b", "c"]
        );
        let p = m.tags("r", None, Some(2)).unwrap().unwrap();
        assert_eq!(
            (p.items, p.more),
            (vec!["a".to_owned(), "b".to_owned()], true)
        );
        let p = m.tags("r", Some("b"), Some(2)).unwrap().unwrap();
        assert_eq!((p.items, p.more), (vec!["c".to_owned()], false));
        assert!(m.tags("unknown", None, None).unwrap().is_none());
        assert!(m.delete_tag("r", "a").unwrap());
        assert!(!m.delete_tag("r", "a").unwrap());
        assert!(m.delete_manifest("r", &md).unwrap());
        assert!(m.tags("r", None, None).unwrap().unwrap().items.is_empty());
        assert!(m.manifest("r", &md, false).unwrap().is_none());
    }

    #[test]
    fn repository_delete_removes_everything_of_the_repository_only() {
        let (_dir, m) = meta();
        for repo in ["r", "s"] {
            m.commit_blob(repo, &d('a'), 1, Some("x")).unwrap();
            m.commit_blob(repo, &d('b'), 1, Some("x")).unwrap();
        }
        // Linked but referenced by no manifest: the link goes too.
        m.commit_blob("r", &d('c'), 1, Some("x")).unwrap();
        let (bytes, parsed) = image(&d('a'), &d('b'), None);
        let md = Digest::of(&bytes);
        m.put_manifest("r", &md, &bytes, &parsed, &["v1".into(), "a".into()])
            .unwrap();
        m.put_manifest("s", &md, &bytes, &parsed, &["v1".into()])
            .unwrap();
        let (sig, sp) = image(&d('a'), &d('a'), Some((&md, bytes.len())));
        let sd = Digest::of(&sig);
        m.put_manifest("r", &sd, &sig, &sp, &[]).unwrap();

        let mut manifests = vec![md.to_string(), sd.to_string()];
        manifests.sort();
        assert_eq!(
            m.delete_repository("r").unwrap(),
            Some(Deleted {
                manifests,
                tags: vec!["a".into(), "v1".into()],
            })
        );
        assert_eq!(m.delete_repository("r").unwrap(), None);
        assert!(m.tags("r", None, None).unwrap().is_none());
        assert!(m.manifest("r", &md, false).unwrap().is_none());
        assert!(m.referrers("r", &md, None).unwrap().is_empty());
        for c in ['a', 'b', 'c'] {
            assert!(m.linked_blob_size("r", &d(c)).unwrap().is_none(), "{c}");
        }
        assert_eq!(m.catalog(None, None).unwrap().items, vec!["s"]);
        // The other repository keeps its manifest, tag and links.
        assert_eq!(
            m.resolve("s", &Reference::Tag("v1".into())).unwrap(),
            Some(md.clone())
        );
        assert!(m.linked_blob_size("s", &d('a')).unwrap().is_some());
        // GC then collects what only `r` had: blob 'c'; 'a' and 'b' stay for `s`.
        let r = m.gc(now_secs() + 100, false).unwrap();
        assert_eq!((r.manifests, r.blobs), (0, vec![d('c')]));
    }

    #[test]
    fn image_delete_by_tag_removes_every_tag_of_its_manifest() {
        let (_dir, m) = meta();
        m.commit_blob("r", &d('a'), 1, Some("x")).unwrap();
        m.commit_blob("r", &d('b'), 1, Some("x")).unwrap();
        let (bytes, parsed) = image(&d('a'), &d('b'), None);
        let md = Digest::of(&bytes);
        m.put_manifest("r", &md, &bytes, &parsed, &["v1".into(), "latest".into()])
            .unwrap();
        assert_eq!(
            m.delete_image("r", &Reference::Tag("v1".into())).unwrap(),
            Some(Deleted {
                manifests: vec![md.to_string()],
                tags: vec!["latest".into(), "v1".into()],
            })
        );
        assert_eq!(
            m.delete_image("r", &Reference::Tag("v1".into())).unwrap(),
            None
        );
        assert_eq!(m.delete_image("r", &Reference::Digest(md)).unwrap(), None);
    }

    #[test]
    fn index_children_must_exist_and_are_kept_by_the_index() {
        let (_dir, m) = meta();
        m.commit_blob("r", &d('a'), 1, Some("x")).unwrap();
        m.commit_blob("r", &d('b'), 1, Some("x")).unwrap();
        let (child, cp) = image(&d('a'), &d('b'), None);
        let cd = Digest::of(&child);
        let idx = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest::OCI_INDEX,
            "manifests": [{"mediaType": manifest::OCI_MANIFEST, "digest": cd.as_str(), "size": child.len()}]
        }))
        .unwrap();
        let ip = manifest::parse(&idx, None).unwrap();
        let id = Digest::of(&idx);
        let err = m
            .put_manifest("r", &id, &idx, &ip, &["multi".into()])
            .unwrap_err();
        assert!(matches!(err, StorageError::ManifestChildUnknown(x) if x == cd));
        m.put_manifest("r", &cd, &child, &cp, &[]).unwrap();
        m.put_manifest("r", &id, &idx, &ip, &["multi".into()])
            .unwrap();

        let future = now_secs() + 100;
        assert_eq!(m.gc(future, false).unwrap(), GcReport::default());
        m.delete_tag("r", "multi").unwrap();
        let r = m.gc(future, false).unwrap();
        assert_eq!((r.manifests, r.blobs.len()), (2, 2));
    }

    #[test]
    fn gc_respects_tags_grace_and_referrers() {
        let (_dir, m) = meta();
        for c in ['a', 'b', 'c', 'e'] {
            m.commit_blob("r", &d(c), 1, Some("x")).unwrap();
        }
        let (tagged, tp) = image(&d('a'), &d('b'), None);
        let td = Digest::of(&tagged);
        m.put_manifest("r", &td, &tagged, &tp, &["latest".into()])
            .unwrap();
        let (sig, sp) = image(&d('e'), &d('e'), Some((&td, tagged.len())));
        let sd = Digest::of(&sig);
        m.put_manifest("r", &sd, &sig, &sp, &[]).unwrap();
        assert_eq!(m.referrers("r", &td, None).unwrap().len(), 1);

        // Inside the grace period nothing goes.
        let r = m.gc(now_secs() - 100, false).unwrap();
        assert_eq!(r, GcReport::default());

        // Past it: only the unreferenced blob 'c' goes; the referrer stays with its subject.
        let future = now_secs() + 100;
        let dry = m.gc(future, true).unwrap();
        assert_eq!(dry.blobs, vec![d('c')]);
        assert!(m.blob_known(&d('c')).unwrap(), "dry run changes nothing");
        let r = m.gc(future, false).unwrap();
        assert_eq!(
            (r.manifests, r.links, r.blobs.clone()),
            (0, 1, vec![d('c')])
        );
        assert!(!m.blob_known(&d('c')).unwrap());

        // Untag: manifest, then its referrer, then all blobs and the repository go.
        m.delete_tag("r", "latest").unwrap();
        let r = m.gc(future, false).unwrap();
        assert_eq!(r.manifests, 2);
        assert_eq!(r.blobs.len(), 3);
        assert_eq!(r.repositories, 1);
        assert!(m.catalog(None, None).unwrap().items.is_empty());
    }
}
