//! `portcullis-storage migrate`: copies a local store (a data directory's blob files and
//! `meta.redb`) into other [`Stores`] (S3 + PostgreSQL), so a single-node registry can
//! grow without re-pushing.
//!
//! - Every blob is hashed while it streams to the target, whose put refuses bytes that do
//!   not match their digest: a corrupted local blob is reported and never copied (nor
//!   are the links and manifests that need it).
//! - Resumable: a blob the target already stores (S3 shows a blob only whole and
//!   verified), a link it has, a manifest it holds with the same bytes and tags are
//!   skipped, so a rerun after a kill finishes the work and a second run changes nothing.
//! - Order as a push's: blobs, then their links, then manifests (index children before
//!   their index), each tag moved with its manifest.
//! - Upload sessions in flight are not copied: clients restart them.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use tokio::sync::Mutex;

use crate::blobstore::{BlobStore, ByteStream, FsBlobStore};
use crate::error::StorageError;
use crate::manifest;
use crate::meta::{MetaManifest, RedbMeta};
use crate::names::{Digest, Reference};
use crate::registry::Stores;

/// What a migration did; `failures` name each item not copied and why.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    pub blobs_copied: usize,
    pub blobs_skipped: usize,
    /// Bytes of the blobs copied (not of those skipped).
    pub bytes_copied: u64,
    pub links_copied: usize,
    pub links_skipped: usize,
    pub manifests_copied: usize,
    pub manifests_skipped: usize,
    /// Tags of the manifests copied.
    pub tags_copied: usize,
    pub failures: Vec<String>,
}

/// A manifest to copy: the source row and the tags pointing at it.
struct Pending {
    row: MetaManifest,
    tags: Vec<String>,
}

/// Copies the store in `data_dir` (which no server may hold open: its database is
/// locked) into `target`. Failures of single items are in the report; an error is a
/// failure of the source or target as a whole (unreachable, unreadable).
pub async fn migrate(data_dir: &Path, target: &Stores) -> Result<MigrateReport, StorageError> {
    let db = data_dir.join("meta.redb");
    if !db.is_file() {
        return Err(StorageError::io(
            &db,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no local metadata to migrate"),
        ));
    }
    let contents = RedbMeta::open(&db)?.contents()?;
    let source = FsBlobStore::open(data_dir)?;
    let mut report = MigrateReport::default();

    let mut stored = HashSet::new();
    for (digest, size) in &contents.blobs {
        match copy_blob(&source, target.blobs.as_ref(), digest, *size).await {
            Ok(Copied::Skipped) => report.blobs_skipped += 1,
            Ok(Copied::Bytes(n)) => {
                report.blobs_copied += 1;
                report.bytes_copied += n;
            }
            Ok(Copied::Refused(why)) => {
                report.failures.push(format!("blob {digest}: {why}"));
                continue;
            }
            Err(e) => return Err(e),
        }
        stored.insert(digest.as_str());
    }

    for (digest, repo) in &contents.links {
        let (Some(size), true) = (contents.blobs.get(digest), stored.contains(digest.as_str()))
        else {
            continue;
        };
        let d = Digest::parse(digest)?;
        if target.meta.linked_blob_size(repo, &d).await?.is_some() {
            report.links_skipped += 1;
        } else {
            target.meta.commit_blob(repo, &d, *size, None).await?;
            report.links_copied += 1;
        }
    }

    let mut tags: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (repo, tag, digest) in contents.tags {
        tags.entry((repo, digest)).or_default().push(tag);
    }
    let mut pending: Vec<Pending> = contents
        .manifests
        .into_iter()
        .map(|row| Pending {
            tags: tags
                .remove(&(row.repo.clone(), row.digest.clone()))
                .unwrap_or_default(),
            row,
        })
        .collect();
    // An index is refused until its children are stored: passes until none lands.
    loop {
        let before = pending.len();
        let mut waiting = Vec::new();
        for p in pending {
            match copy_manifest(target, &p).await {
                Ok(true) => {
                    report.manifests_copied += 1;
                    report.tags_copied += p.tags.len();
                }
                Ok(false) => report.manifests_skipped += 1,
                Err(StorageError::ManifestChildUnknown(_)) => waiting.push(p),
                Err(e @ (StorageError::MetaUnavailable(_) | StorageError::ObjectStore { .. })) => {
                    return Err(e);
                }
                Err(e) => report
                    .failures
                    .push(format!("manifest {}@{}: {e}", p.row.repo, p.row.digest)),
            }
        }
        if waiting.is_empty() || waiting.len() == before {
            for p in waiting {
                report.failures.push(format!(
                    "manifest {}@{}: an index whose child manifests could not be copied",
                    p.row.repo, p.row.digest
                ));
            }
            break;
        }
        pending = waiting;
    }
    Ok(report)
}

enum Copied {
    /// The target stores it already.
    Skipped,
    Bytes(u64),
    /// Not copied: why (the source's bytes are missing or do not match).
    Refused(String),
}

async fn copy_blob(
    source: &FsBlobStore,
    target: &dyn BlobStore,
    digest: &str,
    size: u64,
) -> Result<Copied, StorageError> {
    let Ok(d) = Digest::parse(digest) else {
        return Ok(Copied::Refused("not a digest".into()));
    };
    if let Some(stat) = target.stat(&d).await? {
        if stat.size == size {
            return Ok(Copied::Skipped);
        }
        return Ok(Copied::Refused(format!(
            "the target holds {} bytes under this digest, the source records {size}",
            stat.size
        )));
    }
    let local = match source.stat(&d).await? {
        Some(stat) => stat.size,
        None => return Ok(Copied::Refused("the local blob file is missing".into())),
    };
    if local != size {
        return Ok(Copied::Refused(format!(
            "the local blob file has {local} bytes, the metadata records {size}"
        )));
    }
    let reader = source.get(&d, 0, size).await?;
    let body: ByteStream = Box::pin(tokio_util::io::ReaderStream::new(reader));
    let lock = Mutex::new(());
    match target.put(&d, body, &lock).await {
        Ok((n, _placed)) => Ok(Copied::Bytes(n)),
        Err(StorageError::DigestMismatch { actual, .. }) => Ok(Copied::Refused(format!(
            "corrupt: the local bytes hash to {actual}"
        ))),
        Err(e) => Err(e),
    }
}

/// Copies one manifest with its tags; false if the target holds it already.
async fn copy_manifest(target: &Stores, p: &Pending) -> Result<bool, StorageError> {
    let (repo, digest) = (&p.row.repo, Digest::parse(&p.row.digest)?);
    let record = p
        .row
        .record
        .as_ref()
        .map_err(|e| StorageError::Corrupt(e.clone()))?;
    let bytes = p
        .row
        .bytes
        .as_deref()
        .ok_or_else(|| StorageError::Corrupt("the manifest's bytes are missing".to_owned()))?;
    let actual = Digest::of(bytes);
    if actual != digest {
        return Err(StorageError::DigestMismatch {
            expected: digest,
            actual,
        });
    }
    if let Some((_, Some(held))) = target.meta.manifest(repo, &digest, true).await?
        && held == bytes
    {
        let mut tagged = true;
        for tag in &p.tags {
            let reference = Reference::Tag(tag.clone());
            tagged &= target.meta.resolve(repo, &reference).await?.as_ref() == Some(&digest);
        }
        if tagged {
            return Ok(false);
        }
    }
    let parsed = manifest::parse(bytes, Some(&record.media_type))?;
    target
        .meta
        .put_manifest(repo, &digest, bytes, &parsed, &p.tags)
        .await?;
    Ok(true)
}
