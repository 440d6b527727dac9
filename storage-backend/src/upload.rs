//! Upload sessions' bytes and running digests. Data is appended to
//! `<data-dir>/uploads/<id>` while SHA-256 is computed on the fly; the hasher
//! is kept in memory between PATCH requests, and rebuilt by re-reading the
//! partial file after a restart or a failed write. The session's existence
//! and repository are metadata (see `meta`).

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::StorageError;
use crate::names::Digest;

/// The running state of one upload; lock it for the length of a request so
/// concurrent requests on one session are serialised.
#[derive(Default)]
pub struct UploadState {
    pub offset: u64,
    /// `None` until synchronised with the file (fresh after restart or error).
    hasher: Option<Sha256>,
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

    pub fn dir(&self) -> &PathBuf {
        &self.dir
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
    pub fn busy(&self, id: &str) -> bool {
        self.states().get(id).is_some_and(|s| s.try_lock().is_err())
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
        *state = UploadState {
            offset,
            hasher: Some(hasher),
        };
        Ok(())
    }

    /// Streams `body` onto the end of the session file. On any failure the
    /// state is marked unsynchronised so the next request re-reads the file.
    pub async fn append(
        &self,
        id: &str,
        state: &mut UploadState,
        body: Body,
    ) -> Result<(), StorageError> {
        self.sync(id, state).await?;
        let result = self.append_synced(id, state, body).await;
        if result.is_err() {
            state.hasher = None;
        }
        result
    }

    async fn append_synced(
        &self,
        id: &str,
        state: &mut UploadState,
        body: Body,
    ) -> Result<(), StorageError> {
        let path = self.path(id);
        let io_err = |e| StorageError::io(&path, e);
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .await
            .map_err(io_err)?;
        // Each tokio file write is a blocking-pool round trip; batch small body chunks.
        let mut f = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut stream = body.into_data_stream();
        let mut result = Ok(());
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    result = Err(StorageError::UploadInvalid(format!(
                        "reading request body: {e}"
                    )));
                    break;
                }
            };
            if let Err(e) = f.write_all(&chunk).await {
                result = Err(io_err(e));
                break;
            }
            if let Some(h) = state.hasher.as_mut() {
                h.update(&chunk);
            }
            state.offset += chunk.len() as u64;
        }
        // Flush even after an error: no write may still be in flight when
        // the next request re-reads the file.
        let flushed = f.flush().await.map_err(io_err);
        result.and(flushed)
    }

    /// fsyncs the file and returns the digest and size of everything uploaded.
    pub async fn finish(
        &self,
        id: &str,
        state: &mut UploadState,
    ) -> Result<(Digest, u64), StorageError> {
        self.sync(id, state).await?;
        let path = self.path(id);
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StorageError::io(&path, e))?;
        f.sync_all().await.map_err(|e| StorageError::io(&path, e))?;
        let hasher = state.hasher.clone().unwrap_or_default();
        Ok((Digest::from_sha256(&hasher.finalize()), state.offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn running_hash_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let up = Uploads::new(dir.path().to_owned());
        up.create("u").await.unwrap();
        let lock = up.session("u");
        let mut st = lock.lock().await;
        up.append("u", &mut st, Body::from("hello ")).await.unwrap();
        assert_eq!(st.offset, 6);
        drop(st);

        // A new process: no in-memory state; the file is re-hashed.
        let up2 = Uploads::new(dir.path().to_owned());
        let lock = up2.session("u");
        let mut st = lock.lock().await;
        up2.append("u", &mut st, Body::from("world")).await.unwrap();
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
}
