//! Content-addressed blob bytes behind the small [`BlobStore`] trait, with
//! the local filesystem implementation [`FsBlobStore`]
//! (`<data-dir>/blobs/sha256/<aa>/<hex>`).
//!
//! Blobs enter the store only as verified, fsynced upload files, through a
//! create-if-absent rename followed by a directory fsync, so a blob file is
//! either absent or complete.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

use crate::names::Digest;

/// A byte stream of (part of) a blob.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// Where blob bytes live. Metadata (which blobs exist) is not its concern.
pub trait BlobStore: Send + Sync {
    /// Streams `len` bytes of `digest` starting at `offset`.
    fn read<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, io::Result<BlobReader>>;
    /// Moves the verified, fsynced local file `staged` into place as
    /// `digest`. If the blob already exists, `staged` is removed instead:
    /// content addressing makes the two identical.
    fn commit<'a>(&'a self, digest: &'a Digest, staged: &'a Path) -> BoxFuture<'a, io::Result<()>>;
    /// Deletes a blob; absent is fine.
    fn delete<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<()>>;
    /// Every stored blob last written before `cutoff` (for the sweep of
    /// files whose metadata commit never happened).
    fn list_older_than(&self, cutoff: SystemTime) -> BoxFuture<'_, io::Result<Vec<Digest>>>;
}

/// Blobs as files under a root directory.
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    pub fn new(root: PathBuf) -> FsBlobStore {
        FsBlobStore { root }
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("sha256")
            .join(hex.get(..2).unwrap_or("00"))
            .join(hex)
    }
}

/// fsync a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl BlobStore for FsBlobStore {
    fn read<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, io::Result<BlobReader>> {
        Box::pin(async move {
            let mut f = tokio::fs::File::open(self.path(digest)).await?;
            if offset > 0 {
                f.seek(io::SeekFrom::Start(offset)).await?;
            }
            let r: BlobReader = Box::pin(f.take(len));
            Ok(r)
        })
    }

    fn commit<'a>(&'a self, digest: &'a Digest, staged: &'a Path) -> BoxFuture<'a, io::Result<()>> {
        let target = self.path(digest);
        let staged = staged.to_owned();
        Box::pin(async move {
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
            .await
            .map_err(io::Error::other)?
        })
    }

    fn list_older_than(&self, cutoff: SystemTime) -> BoxFuture<'_, io::Result<Vec<Digest>>> {
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
            .await
            .map_err(io::Error::other)?
        })
    }

    fn delete<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<()>> {
        let path = self.path(digest);
        Box::pin(async move {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_read_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path().join("blobs"));
        let data = b"hello blob";
        let d = Digest::of(data);
        for _ in 0..2 {
            // The second commit of the same digest succeeds and drops its copy.
            let staged = dir.path().join("staged");
            std::fs::write(&staged, data).unwrap();
            store.commit(&d, &staged).await.unwrap();
            assert!(!staged.exists());
        }
        assert!(
            store
                .path(&d)
                .ends_with(format!("sha256/{}/{}", &d.hex()[..2], d.hex()))
        );
        let mut out = Vec::new();
        store
            .read(&d, 6, 4)
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, b"blob");
        let future = SystemTime::now() + std::time::Duration::from_secs(60);
        assert_eq!(
            store.list_older_than(future).await.unwrap(),
            vec![d.clone()]
        );
        assert!(
            store
                .list_older_than(SystemTime::UNIX_EPOCH)
                .await
                .unwrap()
                .is_empty()
        );
        store.delete(&d).await.unwrap();
        store.delete(&d).await.unwrap();
        assert!(store.read(&d, 0, 1).await.is_err());
    }
}
