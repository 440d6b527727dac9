//! Blob bytes behind the [`BlobStore`] trait — stored blobs (content-addressed; put with
//! streaming digest verification, ranged get, stat, delete, list) and the bytes of upload
//! sessions (resumable append, verified commit) — with the local filesystem
//! implementation [`FsBlobStore`]: blobs under `<data-dir>/blobs/sha256/<aa>/<hex>`,
//! sessions under `<data-dir>/uploads/<id>` (see [`crate::upload`]).
//!
//! Which blobs a repository holds, and which sessions exist, is metadata
//! ([`crate::meta::MetadataStore`]), not this trait's concern.
//!
//! A blob enters the filesystem store only as a verified, fsynced upload file, through a
//! create-if-absent link followed by a directory fsync, so a blob file is either absent
//! or complete.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio::sync::{Mutex, MutexGuard};

use crate::error::StorageError;
use crate::meta::BlobLock;
use crate::names::Digest;
use crate::upload::Uploads;

/// A byte stream of (part of) a blob.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// Bytes arriving for a blob or an upload session (a request body).
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A request body as a [`ByteStream`].
pub fn body_stream(body: axum::body::Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(io::Error::other))
}

/// The lock the caller holds from the moment a blob becomes visible until its metadata
/// is committed; GC takes the same lock before it deletes a blob it found without
/// metadata, so it never deletes a blob whose metadata is about to be written. A store
/// other processes share adds the digest's [`MetadataStore::lock_blob`] to it, as GC
/// in those processes takes that one.
///
/// [`MetadataStore::lock_blob`]: crate::meta::MetadataStore::lock_blob
pub struct Placement<'a> {
    _local: MutexGuard<'a, ()>,
    _shared: Option<BlobLock>,
}

impl<'a> Placement<'a> {
    /// The in-process lock, held.
    pub fn local(guard: MutexGuard<'a, ()>) -> Placement<'a> {
        Placement {
            _local: guard,
            _shared: None,
        }
    }

    /// The in-process lock and the cross-process one, both held.
    pub fn shared(guard: MutexGuard<'a, ()>, lock: BlobLock) -> Placement<'a> {
        Placement {
            _local: guard,
            _shared: Some(lock),
        }
    }
}

/// A stored blob as [`BlobStore::stat`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobStat {
    pub size: u64,
    /// When the blob was last written.
    pub modified: SystemTime,
}

/// An upload session's bytes as [`BlobStore::uploads`] reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStat {
    pub id: String,
    /// When bytes were last appended (or the session created).
    pub modified: SystemTime,
    /// Whether a request is working on the session right now (expiry skips it).
    pub busy: bool,
}

/// Where blob bytes live. Every method is safe to call concurrently; calls on one upload
/// session are serialised by the implementation.
///
/// The contract is checked by [`crate::conformance`] (feature `conformance`); a new
/// implementation runs it with one line, `portcullis_storage::conformance_tests!(…)`.
pub trait BlobStore: Send + Sync {
    /// Whether the store can be reached and used (readiness probes); why not if not.
    fn check(&self) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Size and last write of `digest`; `None` if it is not stored.
    fn stat<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<BlobStat>, StorageError>>;

    /// Streams `len` bytes of `digest` starting at `offset`. A range that does not lie
    /// within the blob is [`StorageError::RangeUnsatisfiable`].
    fn get<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<BlobReader, StorageError>>;

    /// A short-lived URL the client can fetch `digest` from directly, if the store hands
    /// out such URLs and is configured to; `None`: the registry streams the bytes.
    fn redirect<'a>(
        &'a self,
        _digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<String>, StorageError>> {
        Box::pin(async { Ok(None) })
    }

    /// Stores `body` as `digest`, hashing while it streams. Content that does not hash to
    /// `digest` is [`StorageError::DigestMismatch`] and leaves nothing visible. Takes
    /// `placement` before the blob becomes visible and returns it held, with the size.
    fn put<'a>(
        &'a self,
        digest: &'a Digest,
        body: ByteStream,
        placement: &'a Mutex<()>,
    ) -> BoxFuture<'a, Result<(u64, Placement<'a>), StorageError>>;

    /// Deletes a blob; absent is fine.
    fn delete<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Every stored blob last written before `cutoff` (GC's sweep of blobs whose
    /// metadata commit never happened).
    fn list(&self, cutoff: SystemTime) -> BoxFuture<'_, Result<Vec<Digest>, StorageError>>;

    /// Opens the (empty) bytes of upload session `id`.
    fn create_upload<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;

    /// The number of bytes the session holds; [`StorageError::UploadUnknown`] if none.
    fn upload_offset<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<u64, StorageError>>;

    /// Appends `body` to the session and returns the new offset. With `range` (the
    /// chunk's first and last byte, inclusive), the chunk must continue the session
    /// exactly at its offset, else [`StorageError::RangeInvalid`].
    /// After a failure midway (a broken body, a dropped request) the session holds a
    /// prefix of what was sent and its offset says how much; the client resumes there.
    fn append_upload<'a>(
        &'a self,
        id: &'a str,
        range: Option<(u64, u64)>,
        body: ByteStream,
    ) -> BoxFuture<'a, Result<u64, StorageError>>;

    /// Appends `body` (possibly empty), makes the session's bytes durable and, if they
    /// hash to `digest`, the blob `digest` — atomically: a reader sees all of it or
    /// nothing — and ends the session. A mismatch is [`StorageError::DigestMismatch`]
    /// and ends the session too. Takes `placement` as [`BlobStore::put`] does.
    fn commit_upload<'a>(
        &'a self,
        id: &'a str,
        digest: &'a Digest,
        body: ByteStream,
        placement: &'a Mutex<()>,
    ) -> BoxFuture<'a, Result<(u64, Placement<'a>), StorageError>>;

    /// Drops the session's bytes; absent is fine.
    fn cancel_upload<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Every session holding bytes (expiry, and the sweep of sessions whose metadata
    /// was never written).
    fn uploads(&self) -> BoxFuture<'_, Result<Vec<UploadStat>, StorageError>>;
}

/// Blobs and upload sessions as files under a data directory.
pub struct FsBlobStore {
    /// `<data-dir>/blobs`
    root: PathBuf,
    uploads: Uploads,
}

impl FsBlobStore {
    /// Blobs under `data_dir/blobs`, sessions under `data_dir/uploads` (both created).
    pub fn open(data_dir: &Path) -> Result<FsBlobStore, StorageError> {
        let root = data_dir.join("blobs");
        let uploads = data_dir.join("uploads");
        for dir in [&root, &uploads] {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        }
        Ok(FsBlobStore {
            root,
            uploads: Uploads::new(uploads),
        })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("sha256")
            .join(hex.get(..2).unwrap_or("00"))
            .join(hex)
    }

    /// Links the verified, fsynced file `staged` into place as `digest` and removes
    /// `staged`. If the blob already exists, `staged` is only removed: content
    /// addressing makes the two identical.
    async fn place(&self, digest: &Digest, staged: PathBuf) -> Result<(), StorageError> {
        let target = self.path(digest);
        tokio::task::spawn_blocking(move || {
            let dir = target
                .parent()
                .ok_or_else(|| io::Error::other("blob path has no parent"))?;
            std::fs::create_dir_all(dir)?;
            // hard_link fails if the target exists: first writer wins, atomically.
            match std::fs::hard_link(&staged, &target) {
                Ok(()) => sync_dir(dir)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            std::fs::remove_file(&staged)
        })
        .await?
        .map_err(|e| StorageError::io(format!("blob {digest}"), e))
    }

    /// [`BlobStore::commit_upload`], with the placement lock's lifetime apart from the
    /// others' (a [`BlobStore::put`] commits a session of its own making).
    async fn commit<'p>(
        &self,
        id: &str,
        digest: &Digest,
        body: ByteStream,
        placement: &'p Mutex<()>,
    ) -> Result<(u64, Placement<'p>), StorageError> {
        let lock = self.uploads.session(id);
        let mut st = lock.lock().await;
        self.uploads.append(id, &mut st, body).await?;
        let (actual, size) = self.uploads.finish(id, &mut st).await?;
        if &actual != digest {
            self.uploads.remove(id).await?;
            return Err(StorageError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let placed = Placement::local(placement.lock().await);
        self.place(digest, self.uploads.path(id)).await?;
        self.uploads.forget(id);
        Ok((size, placed))
    }
}

/// fsync a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl BlobStore for FsBlobStore {
    fn check(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            match tokio::fs::metadata(&self.root).await {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(StorageError::io(
                    &self.root,
                    io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                )),
                Err(e) => Err(StorageError::io(&self.root, e)),
            }
        })
    }

    fn stat<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<BlobStat>, StorageError>> {
        Box::pin(async move {
            match tokio::fs::metadata(self.path(digest)).await {
                Ok(m) => Ok(Some(BlobStat {
                    size: m.len(),
                    modified: m
                        .modified()
                        .map_err(|e| StorageError::io(self.path(digest), e))?,
                })),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StorageError::io(self.path(digest), e)),
            }
        })
    }

    fn get<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<BlobReader, StorageError>> {
        Box::pin(async move {
            let path = self.path(digest);
            let io_err = |e| StorageError::io(&path, e);
            let mut f = tokio::fs::File::open(&path).await.map_err(io_err)?;
            let size = f.metadata().await.map_err(io_err)?.len();
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(StorageError::RangeUnsatisfiable(format!(
                    "bytes {offset}+{len} of {size}"
                )));
            }
            if offset > 0 {
                f.seek(io::SeekFrom::Start(offset)).await.map_err(io_err)?;
            }
            let r: BlobReader = Box::pin(f.take(len));
            Ok(r)
        })
    }

    fn put<'a>(
        &'a self,
        digest: &'a Digest,
        body: ByteStream,
        placement: &'a Mutex<()>,
    ) -> BoxFuture<'a, Result<(u64, Placement<'a>), StorageError>> {
        Box::pin(async move {
            // A session nobody else knows of; a crash leaves its file to the sweep of
            // sessions without metadata.
            let id = uuid::Uuid::new_v4().to_string();
            self.create_upload(&id).await?;
            let put = self.commit(&id, digest, body, placement).await;
            if put.is_err() {
                self.cancel_upload(&id).await?;
            }
            put
        })
    }

    fn delete<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<(), StorageError>> {
        let path = self.path(digest);
        Box::pin(async move {
            match tokio::fs::remove_file(&path).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StorageError::io(&path, e)),
                _ => Ok(()),
            }
        })
    }

    fn list(&self, cutoff: SystemTime) -> BoxFuture<'_, Result<Vec<Digest>, StorageError>> {
        let root = self.root.join("sha256");
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                let dirs = match std::fs::read_dir(&root) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                    r => r?,
                };
                for dir in dirs {
                    for file in std::fs::read_dir(dir?.path())? {
                        let file = file?;
                        let name = file.file_name();
                        // Anything that is not a digest (e.g. a stray temp file) is left alone.
                        let Ok(d) = Digest::parse(&format!("sha256:{}", name.to_string_lossy()))
                        else {
                            continue;
                        };
                        if file.metadata()?.modified()? < cutoff {
                            out.push(d);
                        }
                    }
                }
                Ok(out)
            })
            .await?
            .map_err(|e| StorageError::io("blob store listing", e))
        })
    }

    fn create_upload<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(self.uploads.create(id))
    }

    fn upload_offset<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<u64, StorageError>> {
        Box::pin(async move {
            let lock = self.uploads.session(id);
            let mut st = lock.lock().await;
            self.uploads.sync(id, &mut st).await?;
            Ok(st.offset)
        })
    }

    fn append_upload<'a>(
        &'a self,
        id: &'a str,
        range: Option<(u64, u64)>,
        body: ByteStream,
    ) -> BoxFuture<'a, Result<u64, StorageError>> {
        Box::pin(async move {
            let lock = self.uploads.session(id);
            let mut st = lock.lock().await;
            self.uploads.sync(id, &mut st).await?;
            if let Some((start, end)) = range
                && (start != st.offset || end < start)
            {
                return Err(StorageError::RangeInvalid {
                    start,
                    end,
                    offset: st.offset,
                });
            }
            self.uploads.append(id, &mut st, body).await?;
            Ok(st.offset)
        })
    }

    fn commit_upload<'a>(
        &'a self,
        id: &'a str,
        digest: &'a Digest,
        body: ByteStream,
        placement: &'a Mutex<()>,
    ) -> BoxFuture<'a, Result<(u64, Placement<'a>), StorageError>> {
        Box::pin(self.commit(id, digest, body, placement))
    }

    fn cancel_upload<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let lock = self.uploads.session(id);
            let _st = lock.lock().await;
            self.uploads.remove(id).await
        })
    }

    fn uploads(&self) -> BoxFuture<'_, Result<Vec<UploadStat>, StorageError>> {
        Box::pin(self.uploads.list())
    }
}
