//! Upload sessions' bytes and running digests for [`crate::blobstore::FsBlobStore`].
//! Data is appended to `<data-dir>/uploads/<id>` while SHA-256 is computed on the fly;
//! the hasher is kept in memory between PATCH requests, and rebuilt by re-reading the
//! partial file after a restart or a failed write. The session's existence and
//! repository are metadata (see [`crate::meta`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::blobstore::{ByteStream, UploadStat};
use crate::error::StorageError;
use crate::names::Digest;

/// Body bytes gathered before one write to the file.
const WRITE_BATCH: usize = 1 << 20;

/// The running state of one upload; lock it for the length of a request so
/// concurrent requests on one session are serialised.
pub struct UploadState {
    pub offset: u64,
    /// `None` until synchronised with the file (fresh after restart, error or a
    /// request that did not finish).
    hasher: Option<Sha256>,
    /// One permit, held by the file write in flight: a write left running by a
    /// cancelled request still lands before the file is re-read, appended to or synced.
    writing: Arc<Semaphore>,
}

impl Default for UploadState {
    fn default() -> UploadState {
        UploadState {
            offset: 0,
            hasher: None,
            writing: Arc::new(Semaphore::new(1)),
        }
    }
}

pub type SessionLock = Arc<tokio::sync::Mutex<UploadState>>;

pub struct Uploads {
    dir: PathBuf,
    states: Mutex<HashMap<String, SessionLock>>,
}

impl Uploads {
    pub fn new(dir: PathBuf) -> Uploads {
        Uploads {
            dir,
            states: Mutex::new(HashMap::new()),
        }
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionLock>> {
        // A poisoned map only means another request panicked mid-insert; the map is still valid.
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the empty file of a new session.
    pub async fn create(&self, id: &str) -> Result<(), StorageError> {
        let path = self.path(id);
        tokio::fs::File::create(&path)
            .await
            .map_err(|e| StorageError::io(&path, e))?;
        self.states().insert(
            id.to_owned(),
            Arc::new(tokio::sync::Mutex::new(UploadState::default())),
        );
        Ok(())
    }

    /// The lock of a session's state (created unsynchronised if not in memory).
    pub fn session(&self, id: &str) -> SessionLock {
        self.states().entry(id.to_owned()).or_default().clone()
    }

    /// Whether a request currently holds the session (expiry skips those).
    fn busy(&self, id: &str) -> bool {
        self.states().get(id).is_some_and(|s| s.try_lock().is_err())
    }

    /// Every session file with its last write.
    pub async fn list(&self) -> Result<Vec<UploadStat>, StorageError> {
        let dir = &self.dir;
        let mut entries = tokio::fs::read_dir(dir)
            .await
            .map_err(|e| StorageError::io(dir, e))?;
        let mut out = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| StorageError::io(dir, e))?
        {
            let id = entry.file_name().to_string_lossy().into_owned();
            // A file gone or unreadable meanwhile counts as old: expiry removes what is left.
            let modified = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            let busy = self.busy(&id);
            out.push(UploadStat { id, modified, busy });
        }
        Ok(out)
    }

    pub fn forget(&self, id: &str) {
        self.states().remove(id);
    }

    /// Removes the session's file and in-memory state.
    pub async fn remove(&self, id: &str) -> Result<(), StorageError> {
        self.forget(id);
        let path = self.path(id);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StorageError::io(&path, e)),
            _ => Ok(()),
        }
    }

    /// Makes `state` match the file, re-hashing it if needed.
    pub async fn sync(&self, id: &str, state: &mut UploadState) -> Result<(), StorageError> {
        if state.hasher.is_some() {
            return Ok(());
        }
        let gate = Arc::clone(&state.writing);
        let _quiet = gate.acquire().await;
        let path = self.path(id);
        let mut f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::UploadUnknown(id.to_owned()));
            }
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut offset = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .await
                .map_err(|e| StorageError::io(&path, e))?;
            let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
                break;
            };
            hasher.update(chunk);
            offset += n as u64;
        }
        state.offset = offset;
        state.hasher = Some(hasher);
        Ok(())
    }

    /// Streams `body` onto the end of the session file. The state stays
    /// unsynchronised until the whole body is written, so after any failure, or a
    /// request dropped midway, the next request re-reads the file.
    pub async fn append(
        &self,
        id: &str,
        state: &mut UploadState,
        mut body: ByteStream,
    ) -> Result<(), StorageError> {
        self.sync(id, state).await?;
        let mut hasher = state.hasher.take().ok_or_else(|| {
            StorageError::Corrupt(format!("upload `{id}` is not synchronised with its file"))
        })?;
        let mut offset = state.offset;
        let path = self.path(id);
        let io_err = |e| StorageError::io(&path, e);
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .await
            .map_err(io_err)?
            .into_std()
            .await;
        let mut writer = BatchWriter::new(file, Arc::clone(&state.writing));
        let mut result = Ok(());
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    result = Err(StorageError::UploadInvalid(format!(
                        "reading request body: {e}"
                    )));
                    break;
                }
            };
            // Hashing here overlaps the write of the previous batch.
            hasher.update(&chunk);
            offset += chunk.len() as u64;
            if let Err(e) = writer.push(chunk).await {
                result = Err(io_err(e));
                break;
            }
        }
        // Write what was received even after an error: the next request re-reads
        // the file, and a client may resume from its length.
        let written = writer.finish().await.map_err(io_err);
        result.and(written)?;
        state.hasher = Some(hasher);
        state.offset = offset;
        Ok(())
    }

    /// fsyncs the file and returns the digest and size of everything uploaded.
    pub async fn finish(
        &self,
        id: &str,
        state: &mut UploadState,
    ) -> Result<(Digest, u64), StorageError> {
        self.sync(id, state).await?;
        let _quiet = state.writing.acquire().await;
        let path = self.path(id);
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StorageError::io(&path, e))?;
        f.sync_all().await.map_err(|e| StorageError::io(&path, e))?;
        let hasher = state.hasher.clone().unwrap_or_default();
        Ok((Digest::from_sha256(&hasher.finalize()), state.offset))
    }
}

/// Appends body chunks to an upload file on the blocking pool, a batch at a time,
/// while the caller receives and hashes the next batch. Chunks are written as they
/// arrived (one `writev` per batch, no copy). Flushing to disk is left to the fsync
/// that completes the upload: flushing every 16 MiB on the way measured slower here.
struct BatchWriter {
    /// The file, while no write holds it.
    file: Option<File>,
    in_flight: Option<JoinHandle<(File, io::Result<()>)>>,
    batch: Vec<Bytes>,
    batched: usize,
    gate: Arc<Semaphore>,
}

impl BatchWriter {
    fn new(file: File, gate: Arc<Semaphore>) -> BatchWriter {
        BatchWriter {
            file: Some(file),
            in_flight: None,
            batch: Vec::new(),
            batched: 0,
            gate,
        }
    }

    async fn push(&mut self, chunk: Bytes) -> io::Result<()> {
        // An empty chunk (an HTTP/2 DATA frame may be empty) would be a zero-length
        // slice left over after the data is written: `write_vectored` answers 0.
        if chunk.is_empty() {
            return Ok(());
        }
        self.batched += chunk.len();
        self.batch.push(chunk);
        if self.batched >= WRITE_BATCH {
            self.write_batch().await?;
        }
        Ok(())
    }

    /// Waits for the previous write, then starts one of the gathered chunks.
    async fn write_batch(&mut self) -> io::Result<()> {
        let mut file = match self.file.take() {
            Some(file) => file,
            None => self.wait().await?,
        };
        let batch = std::mem::take(&mut self.batch);
        self.batched = 0;
        let permit = Arc::clone(&self.gate)
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let result = write_all(&mut file, &batch);
            (file, result)
        }));
        Ok(())
    }

    async fn wait(&mut self) -> io::Result<File> {
        let write = self
            .in_flight
            .take()
            .ok_or_else(|| io::Error::other("no upload write in flight"))?;
        let (file, result) = write.await.map_err(io::Error::other)?;
        result.map(|()| file)
    }

    /// Writes the rest and waits until every write has returned.
    async fn finish(mut self) -> io::Result<()> {
        if !self.batch.is_empty() {
            self.write_batch().await?;
        }
        if self.in_flight.is_some() {
            self.wait().await?;
        }
        Ok(())
    }
}

fn write_all(file: &mut File, batch: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(data: &'static str) -> ByteStream {
        Box::pin(futures_util::stream::iter([Ok(Bytes::from_static(
            data.as_bytes(),
        ))]))
    }

    #[tokio::test]
    async fn empty_chunks_are_skipped_not_a_write_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let mut w = BatchWriter::new(file, Arc::new(Semaphore::new(1)));
        w.push(Bytes::from_static(b"ab")).await.unwrap();
        w.push(Bytes::new()).await.unwrap();
        w.finish().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ab");
    }

    #[tokio::test]
    async fn running_hash_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let up = Uploads::new(dir.path().to_owned());
        up.create("u").await.unwrap();
        let lock = up.session("u");
        let mut st = lock.lock().await;
        up.append("u", &mut st, body("hello ")).await.unwrap();
        assert_eq!(st.offset, 6);
        drop(st);

        // A new process: no in-memory state; the file is re-hashed.
        let up2 = Uploads::new(dir.path().to_owned());
        let lock = up2.session("u");
        let mut st = lock.lock().await;
        up2.append("u", &mut st, body("world")).await.unwrap();
        let (d, size) = up2.finish("u", &mut st).await.unwrap();
        assert_eq!((d, size), (Digest::of(b"hello world"), 11));
        drop(st);
        up2.remove("u").await.unwrap();
        assert!(!up2.path("u").exists());
        let lock = up2.session("gone");
        assert!(matches!(
            up2.sync("gone", &mut *lock.lock().await).await,
            Err(StorageError::UploadUnknown(_))
        ));
    }

    /// A request dropped midway (its client went away) leaves the session to be
    /// re-read: the digest always matches the bytes in the file.
    #[tokio::test]
    async fn a_cancelled_append_leaves_a_consistent_session() {
        let dir = tempfile::tempdir().unwrap();
        let up = Uploads::new(dir.path().to_owned());
        up.create("u").await.unwrap();
        let lock = up.session("u");
        let mut st = lock.lock().await;
        // 3 MiB arrive, then the body stalls until the request is dropped.
        let sent = futures_util::stream::iter(
            (0..3u8).map(|i| Ok::<_, io::Error>(Bytes::from(vec![i; 1 << 20]))),
        );
        let stalled: ByteStream = Box::pin(sent.chain(futures_util::stream::pending()));
        let cancelled = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            up.append("u", &mut st, stalled),
        )
        .await;
        assert!(
            cancelled.is_err(),
            "the append must still be waiting for its body"
        );
        up.append("u", &mut st, body("tail")).await.unwrap();
        let (digest, size) = up.finish("u", &mut st).await.unwrap();
        let on_disk = std::fs::read(up.path("u")).unwrap();
        assert_eq!((digest, size), (Digest::of(&on_disk), on_disk.len() as u64));
        assert!(on_disk.ends_with(b"tail"));
    }
}
