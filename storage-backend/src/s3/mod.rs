//! [`S3BlobStore`]: blob bytes and upload sessions in an S3-compatible bucket, through
//! `object_store`, so several registry processes can share them.
//!
//! Keys under the configured prefix:
//! - `blobs/sha256/<hex>`: stored blobs. A blob appears only whole and verified: it is
//!   written by one PUT (small blobs, hashed before it is sent) or by a multipart upload
//!   that is completed only once the digest has been checked (S3 shows nothing of a
//!   multipart upload before its completion), or copied there from a completed session.
//! - `uploads/<id>/state`: an upload session (JSON, [`Session`]): its S3 multipart upload
//!   of `uploads/<id>/data`, the parts sent, and the SHA-256 state after them.
//!   Any process can take the session's next request: nothing of it lives in memory.
//!   (The session's repository stays in the metadata store; its bytes' record lives here,
//!   beside them, because the metadata trait has no place for it yet.)
//! - `uploads/<id>/tail-<n>`: the session's bytes after its last part. S3 parts must be
//!   at least 5 MiB (but the last), while a client's chunks have any size: bytes collect
//!   in the tail until a whole [`PART`] can be sent.
//!
//! A request that fails midway leaves the session as it was before the request or, when
//! only the client's body broke, with what arrived recorded; the offset always names a
//! prefix of what was sent. Requests on one session are serialised within a process, not
//! across processes (clients send a session's requests one after another).

mod config;
mod sha256;

use std::io;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, MultipartId, ObjectStore, ObjectStoreExt,
    PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

pub use config::{S3Config, S3ConfigError, S3Settings};
use sha256::Sha256;

use crate::blobstore::{BlobReader, BlobStat, BlobStore, ByteStream, Placement, UploadStat};
use crate::error::StorageError;
use crate::names::Digest;

/// Bytes per multipart part: above S3's 5 MiB minimum, and a whole number of SHA-256
/// blocks, so the saved hash state always ends at a part boundary.
pub const PART: usize = 8 * 1024 * 1024;

/// Lock stripes serialising requests on one session in this process.
const SESSION_LOCKS: usize = 64;

/// An upload session's record (`uploads/<id>/state`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    /// The multipart upload of `uploads/<id>/data`, once the first part is sent.
    multipart: Option<String>,
    /// ETags of the parts sent, in order; each is [`PART`] bytes.
    parts: Vec<String>,
    /// SHA-256 state after the parts' bytes.
    hash: [u32; 8],
    /// Bytes in `tail-<tail_generation>` (0: no tail object).
    tail: u64,
    tail_generation: u64,
}

impl Session {
    fn new() -> Session {
        Session {
            multipart: None,
            parts: Vec::new(),
            hash: sha256::INITIAL,
            tail: 0,
            tail_generation: 0,
        }
    }

    fn part_bytes(&self) -> u64 {
        (self.parts.len() * PART) as u64
    }

    fn offset(&self) -> u64 {
        self.part_bytes() + self.tail
    }
}

/// Blobs and upload sessions in an S3 bucket.
pub struct S3BlobStore {
    /// Requests of bounded size (metadata, 8 MiB parts): a stuck server times out.
    s3: AmazonS3,
    /// Blob GETs, streamed to clients at their pace: no limit on the whole request.
    s3_streams: AmazonS3,
    config: S3Config,
    session_locks: [Mutex<()>; SESSION_LOCKS],
}

/// A failed S3 request on `key`.
fn s3_error(key: &Path) -> impl FnOnce(object_store::Error) -> StorageError {
    let key = key.to_string();
    move |error| StorageError::ObjectStore { key, error }
}

impl S3BlobStore {
    /// The store `config` names; no request is made (see [`S3BlobStore::connect`]).
    pub fn open(config: &S3Config) -> Result<S3BlobStore, StorageError> {
        let bounded = ClientOptions::new().with_timeout(Duration::from_secs(120));
        Ok(S3BlobStore {
            s3: Self::client(config, bounded)?,
            s3_streams: Self::client(config, ClientOptions::new().with_timeout_disabled())?,
            config: config.clone(),
            session_locks: std::array::from_fn(|_| Mutex::new(())),
        })
    }

    fn client(config: &S3Config, options: ClientOptions) -> Result<AmazonS3, StorageError> {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_virtual_hosted_style_request(!config.path_style)
            // A stopped S3 must become a 503 within seconds, not after the default
            // three minutes of retries.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(1),
                    base: 2.,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
            })
            .with_client_options(options.with_connect_timeout(Duration::from_secs(5)));
        if let Some(token) = &config.session_token {
            b = b.with_token(token);
        }
        if let Some(endpoint) = &config.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        b.build().map_err(|e| StorageError::S3Settings {
            target: config.describe(),
            cause: root_cause(&e),
        })
    }

    /// Lists the prefix once: the bucket exists and the credentials work.
    async fn list_prefix(&self) -> Result<(), StorageError> {
        let prefix = self.key(&[]);
        self.s3
            .list_with_delimiter(Some(&prefix))
            .await
            .map(|_| ())
            .map_err(|e| StorageError::ObjectStore {
                key: self.config.describe(),
                error: e,
            })
    }

    /// Opens the store after one request proves it reachable (see
    /// [`BlobStore::check`]), from synchronous code inside or outside a runtime: the
    /// request runs on a thread of its own with a client of its own (a pooled connection
    /// must not outlive the runtime it was made on).
    pub fn connect(config: &S3Config) -> Result<S3BlobStore, StorageError> {
        let probe = S3BlobStore::open(config)?;
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| StorageError::io("tokio runtime", e))?;
                rt.block_on(probe.list_prefix())
            })
            .join()
            .unwrap_or_else(|_| Err(StorageError::Corrupt("s3 check panicked".into())))
        })
        .map_err(|e| match e {
            StorageError::ObjectStore { error, .. } => StorageError::S3Settings {
                target: config.describe(),
                cause: root_cause(&error),
            },
            e => e,
        })?;
        S3BlobStore::open(config)
    }

    /// `<prefix>/<parts…>`.
    fn key(&self, parts: &[&str]) -> Path {
        self.config
            .prefix
            .split('/')
            .chain(parts.iter().copied())
            .filter(|p| !p.is_empty())
            .collect()
    }

    fn blob_key(&self, digest: &Digest) -> Path {
        self.key(&["blobs", "sha256", digest.hex()])
    }

    fn session_key(&self, id: &str, name: &str) -> Path {
        self.key(&["uploads", id, name])
    }

    fn tail_key(&self, id: &str, generation: u64) -> Path {
        self.session_key(id, &format!("tail-{generation}"))
    }

    fn session_lock(&self, id: &str) -> &Mutex<()> {
        let h = id
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
        &self.session_locks[h % SESSION_LOCKS]
    }

    async fn read_all(&self, key: &Path) -> Result<Option<Bytes>, StorageError> {
        match self.s3.get(key).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(s3_error(key))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error(key)(e)),
        }
    }

    async fn write(&self, key: &Path, bytes: Bytes) -> Result<(), StorageError> {
        self.s3
            .put(key, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(s3_error(key))
    }

    async fn remove(&self, key: &Path) -> Result<(), StorageError> {
        match self.s3.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_error(key)(e)),
        }
    }

    async fn load(&self, id: &str) -> Result<Session, StorageError> {
        let key = self.session_key(id, "state");
        let bytes = self
            .read_all(&key)
            .await?
            .ok_or_else(|| StorageError::UploadUnknown(id.to_owned()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Corrupt(format!("upload session {key}: {e}")))
    }

    async fn save(&self, id: &str, session: &Session) -> Result<(), StorageError> {
        let json = serde_json::to_vec(session)
            .map_err(|e| StorageError::Corrupt(format!("upload session {id}: {e}")))?;
        self.write(&self.session_key(id, "state"), json.into())
            .await
    }

    /// The session with its tail read back into a writer that continues it.
    async fn resume(&self, id: &str) -> Result<(Session, Parts), StorageError> {
        let session = self.load(id).await?;
        let mut buf = BytesMut::new();
        if session.tail > 0 {
            let key = self.tail_key(id, session.tail_generation);
            let tail = self.read_all(&key).await?.ok_or_else(|| {
                StorageError::Corrupt(format!("upload session {id}: tail {key} is missing"))
            })?;
            buf.extend_from_slice(&tail);
        }
        let parts = Parts {
            key: self.session_key(id, "data"),
            multipart: session.multipart.clone(),
            parts: session
                .parts
                .iter()
                .map(|e| PartId {
                    content_id: e.clone(),
                })
                .collect(),
            hasher: Sha256::resume(session.hash, session.part_bytes()),
            buf,
        };
        Ok((session, parts))
    }

    /// Records what `parts` holds as the session's new state: the tail first (a new
    /// object), then the record that names it, then the old tail goes.
    async fn persist(
        &self,
        id: &str,
        old: &Session,
        parts: &Parts,
    ) -> Result<Session, StorageError> {
        let hash = parts.hasher_at_parts()?;
        if parts.parts.len() == old.parts.len() && parts.buf.len() as u64 == old.tail {
            return Ok(old.clone());
        }
        let mut new = Session {
            multipart: parts.multipart.clone(),
            parts: parts.parts.iter().map(|p| p.content_id.clone()).collect(),
            hash,
            tail: parts.buf.len() as u64,
            tail_generation: old.tail_generation,
        };
        if !parts.buf.is_empty() {
            new.tail_generation += 1;
            let tail = parts.buf.clone().freeze();
            self.write(&self.tail_key(id, new.tail_generation), tail)
                .await?;
        }
        self.save(id, &new).await?;
        // Replaced by a new tail, or taken into a part.
        if old.tail > 0 {
            self.remove(&self.tail_key(id, old.tail_generation)).await?;
        }
        Ok(new)
    }

    /// Appends `body` to the session (the lock held by the caller). S3 failures leave
    /// the session as it was; a broken body is recorded as far as it arrived.
    async fn append(
        &self,
        id: &str,
        range: Option<(u64, u64)>,
        body: ByteStream,
    ) -> Result<(Session, Parts), StorageError> {
        let (session, mut parts) = self.resume(id).await?;
        if let Some((start, end)) = range
            && (start != session.offset() || end < start)
        {
            return Err(StorageError::RangeInvalid {
                start,
                end,
                offset: session.offset(),
            });
        }
        match parts.feed(self, body).await? {
            None => Ok((session, parts)),
            Some(broken) => {
                self.persist(id, &session, &parts).await?;
                Err(StorageError::io(
                    format!("upload {id} request body"),
                    broken,
                ))
            }
        }
    }

    /// Removes everything of session `id`: its multipart upload and its objects.
    async fn drop_session(&self, id: &str) -> Result<(), StorageError> {
        match self.load(id).await {
            Ok(Session {
                multipart: Some(mp),
                ..
            }) => {
                let data = self.session_key(id, "data");
                let aborted = self.s3.abort_multipart(&data, &mp).await;
                if let Err(e) = aborted
                    && !matches!(e, object_store::Error::NotFound { .. })
                {
                    return Err(s3_error(&data)(e));
                }
            }
            Ok(_) | Err(StorageError::UploadUnknown(_)) => {}
            Err(e) => return Err(e),
        }
        self.remove_session_objects(id).await
    }

    /// Deletes the objects under `uploads/<id>/`, the record last: until it is gone, a
    /// retry finds the session again.
    async fn remove_session_objects(&self, id: &str) -> Result<(), StorageError> {
        let prefix = self.key(&["uploads", id]);
        let mut keys: Vec<Path> = self
            .s3
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(s3_error(&prefix))?;
        let state = self.session_key(id, "state");
        keys.sort_by_key(|k| *k == state);
        for key in keys {
            self.remove(&key).await?;
        }
        Ok(())
    }

    /// Verifies the bytes of `parts` as `digest` and makes them the blob: one PUT when
    /// they fit in one part, else the completed multipart upload (at the blob's key, or at
    /// a session's `data`, then copied). Takes `placement` just before the bytes become
    /// visible.
    async fn publish<'p>(
        &self,
        digest: &Digest,
        mut parts: Parts,
        placement: &'p Mutex<()>,
    ) -> Result<(u64, Placement<'p>), StorageError> {
        let size = parts.hasher.hashed() + parts.buf.len() as u64;
        let mut hasher = parts.hasher.clone();
        hasher.update(&parts.buf);
        let actual = Digest::from_sha256(&hasher.finish());
        if &actual != digest {
            parts.abort(self).await?;
            return Err(StorageError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let target = self.blob_key(digest);
        let Some(mp) = parts.multipart.clone() else {
            let placed = placement.lock().await;
            self.write(&target, parts.buf.freeze()).await?;
            return Ok((size, placed));
        };
        if !parts.buf.is_empty() {
            let last = parts.buf.split().freeze();
            parts.send(self, last).await?;
        }
        let placed = placement.lock().await;
        self.s3
            .complete_multipart(&parts.key, &mp, parts.parts)
            .await
            .map_err(s3_error(&parts.key))?;
        if parts.key != target {
            self.s3
                .copy(&parts.key, &target)
                .await
                .map_err(s3_error(&target))?;
        }
        Ok((size, placed))
    }

    /// A ranged GET; the range must lie within the blob.
    async fn read_range(
        &self,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<BlobReader, StorageError> {
        let key = self.blob_key(digest);
        let unsatisfiable =
            |size: u64| StorageError::RangeUnsatisfiable(format!("bytes {range:?} of {size}"));
        if range.is_empty() {
            // A zero-length range is no request S3 answers: check the blob is there.
            let meta = self.s3.head(&key).await.map_err(not_found(&key))?;
            if range.start > meta.size {
                return Err(unsatisfiable(meta.size));
            }
            return Ok(Box::pin(tokio::io::empty()));
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let got = match self.s3_streams.get_opts(&key, opts).await {
            Ok(got) => got,
            Err(e) => {
                // S3 refuses a range starting past the end; tell that from a failure.
                let meta = self.s3.head(&key).await.map_err(not_found(&key))?;
                if range.end > meta.size {
                    return Err(unsatisfiable(meta.size));
                }
                return Err(s3_error(&key)(e));
            }
        };
        // S3 shortens a range running past the end instead of refusing it.
        if got.meta.size < range.end {
            return Err(unsatisfiable(got.meta.size));
        }
        let stream = got.into_stream().map_err(io::Error::other);
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }
}

/// The innermost cause (object_store's messages repeat their sources), with an S3 error
/// document cut down to its code and message.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    let text = e.to_string();
    let element = |name: &str| {
        let (_, rest) = text.split_once(&format!("<{name}>"))?;
        Some(rest.split_once(&format!("</{name}>"))?.0.to_owned())
    };
    match (element("Code"), element("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => text,
    }
}

/// A missing object is an i/o `NotFound` (as a missing file is); other failures are S3's.
fn not_found(key: &Path) -> impl FnOnce(object_store::Error) -> StorageError {
    let key = key.clone();
    move |e| match e {
        object_store::Error::NotFound { .. } => {
            StorageError::io(key.to_string(), io::ErrorKind::NotFound.into())
        }
        e => s3_error(&key)(e),
    }
}

/// Bytes on their way into a multipart upload of `key`: whole [`PART`]s are sent as
/// they fill, the rest waits in `buf`.
struct Parts {
    key: Path,
    multipart: Option<MultipartId>,
    parts: Vec<PartId>,
    /// Over the bytes sent as parts; `buf` is not in it yet.
    hasher: Sha256,
    buf: BytesMut,
}

impl Parts {
    fn new(key: Path) -> Parts {
        Parts {
            key,
            multipart: None,
            parts: Vec::new(),
            hasher: Sha256::new(),
            buf: BytesMut::new(),
        }
    }

    /// Reads `body`, sending each [`PART`] that fills. `Ok(Some(e))`: the body broke
    /// (what arrived before is kept); `Err`: S3 failed.
    async fn feed(
        &mut self,
        store: &S3BlobStore,
        mut body: ByteStream,
    ) -> Result<Option<io::Error>, StorageError> {
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Ok(Some(e)),
            };
            self.buf.extend_from_slice(&chunk);
            while self.buf.len() >= PART {
                let part = self.buf.split_to(PART).freeze();
                self.hasher.update(&part);
                self.send(store, part).await?;
            }
        }
        Ok(None)
    }

    /// Sends `part` as the next part (creating the multipart upload first if needed).
    /// The caller has hashed it.
    async fn send(&mut self, store: &S3BlobStore, part: Bytes) -> Result<(), StorageError> {
        let mp = match &self.multipart {
            Some(mp) => mp.clone(),
            None => {
                let mp = store
                    .s3
                    .create_multipart(&self.key)
                    .await
                    .map_err(s3_error(&self.key))?;
                self.multipart = Some(mp.clone());
                mp
            }
        };
        let id = store
            .s3
            .put_part(&self.key, &mp, self.parts.len(), PutPayload::from(part))
            .await
            .map_err(s3_error(&self.key))?;
        self.parts.push(id);
        Ok(())
    }

    /// The saved hash state: the parts are whole blocks by construction.
    fn hasher_at_parts(&self) -> Result<[u32; 8], StorageError> {
        self.hasher
            .saved()
            .ok_or_else(|| StorageError::Corrupt("hash state off a block boundary".into()))
    }

    /// Abandons the multipart upload, if one was started.
    async fn abort(&self, store: &S3BlobStore) -> Result<(), StorageError> {
        if let Some(mp) = &self.multipart {
            store
                .s3
                .abort_multipart(&self.key, mp)
                .await
                .map_err(s3_error(&self.key))?;
        }
        Ok(())
    }
}

impl BlobStore for S3BlobStore {
    fn check(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.list_prefix())
    }

    fn stat<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<BlobStat>, StorageError>> {
        Box::pin(async move {
            let key = self.blob_key(digest);
            match self.s3.head(&key).await {
                Ok(meta) => Ok(Some(BlobStat {
                    size: meta.size,
                    modified: SystemTime::from(meta.last_modified),
                })),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(s3_error(&key)(e)),
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
            let Some(end) = offset.checked_add(len) else {
                return Err(StorageError::RangeUnsatisfiable(format!(
                    "bytes {offset}+{len}"
                )));
            };
            self.read_range(digest, offset..end).await
        })
    }

    fn redirect<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<String>, StorageError>> {
        Box::pin(async move {
            let Some(valid) = self.config.redirect else {
                return Ok(None);
            };
            let key = self.blob_key(digest);
            let url = self
                .s3
                .signed_url(http::Method::GET, &key, valid)
                .await
                .map_err(s3_error(&key))?;
            Ok(Some(url.to_string()))
        })
    }

    fn put<'a>(
        &'a self,
        digest: &'a Digest,
        body: ByteStream,
        placement: &'a Mutex<()>,
    ) -> BoxFuture<'a, Result<(u64, Placement<'a>), StorageError>> {
        Box::pin(async move {
            // Straight to the blob's key: an unfinished multipart upload is invisible.
            let mut parts = Parts::new(self.blob_key(digest));
            let fed = parts.feed(self, body).await;
            let published = match fed {
                Ok(None) => return self.publish(digest, parts, placement).await,
                Ok(Some(broken)) => Err(StorageError::io(
                    format!("blob {digest} request body"),
                    broken,
                )),
                Err(e) => Err(e),
            };
            if let Err(e) = parts.abort(self).await {
                tracing::warn!(error = %e, %digest, "aborting a failed blob upload");
            }
            published
        })
    }

    fn delete<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move { self.remove(&self.blob_key(digest)).await })
    }

    fn list(&self, cutoff: SystemTime) -> BoxFuture<'_, Result<Vec<Digest>, StorageError>> {
        Box::pin(async move {
            let prefix = self.key(&["blobs", "sha256"]);
            let found: Vec<_> = self
                .s3
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(s3_error(&prefix))?;
            Ok(found
                .into_iter()
                .filter(|m| SystemTime::from(m.last_modified) < cutoff)
                // Anything that is not a digest is left alone.
                .filter_map(|m| {
                    let name = m.location.filename()?;
                    Digest::parse(&format!("sha256:{name}")).ok()
                })
                .collect())
        })
    }

    fn create_upload<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move { self.save(id, &Session::new()).await })
    }

    fn upload_offset<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<u64, StorageError>> {
        Box::pin(async move {
            let _lock = self.session_lock(id).lock().await;
            Ok(self.load(id).await?.offset())
        })
    }

    fn append_upload<'a>(
        &'a self,
        id: &'a str,
        range: Option<(u64, u64)>,
        body: ByteStream,
    ) -> BoxFuture<'a, Result<u64, StorageError>> {
        Box::pin(async move {
            let _lock = self.session_lock(id).lock().await;
            let (old, parts) = self.append(id, range, body).await?;
            Ok(self.persist(id, &old, &parts).await?.offset())
        })
    }

    fn commit_upload<'a>(
        &'a self,
        id: &'a str,
        digest: &'a Digest,
        body: ByteStream,
        placement: &'a Mutex<()>,
    ) -> BoxFuture<'a, Result<(u64, Placement<'a>), StorageError>> {
        Box::pin(async move {
            let _lock = self.session_lock(id).lock().await;
            let (_, parts) = self.append(id, None, body).await?;
            let published = self.publish(digest, parts, placement).await;
            // Published or refused, the session is over; its multipart upload is
            // completed or aborted by now.
            if matches!(&published, Ok(_) | Err(StorageError::DigestMismatch { .. })) {
                self.remove_session_objects(id).await?;
            }
            published
        })
    }

    fn cancel_upload<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let _lock = self.session_lock(id).lock().await;
            self.drop_session(id).await
        })
    }

    fn uploads(&self) -> BoxFuture<'_, Result<Vec<UploadStat>, StorageError>> {
        Box::pin(async move {
            let prefix = self.key(&["uploads"]);
            let found: Vec<_> = self
                .s3
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(s3_error(&prefix))?;
            Ok(found
                .into_iter()
                .filter(|m| m.location.filename() == Some("state"))
                .filter_map(|m| {
                    let mut parts = m.location.parts();
                    let _state = parts.next_back()?;
                    let id = parts.next_back()?.as_ref().to_owned();
                    let busy = self.session_lock(&id).try_lock().is_err();
                    Some(UploadStat {
                        id,
                        modified: SystemTime::from(m.last_modified),
                        busy,
                    })
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path as FsPath;
    use std::sync::Arc;

    use portcullis_test_support::seaweedfs::SeaweedFs;

    use super::*;
    use crate::registry::Stores;

    /// Redb metadata in `dir`, blobs under a fresh prefix of this binary's SeaweedFS.
    pub(crate) fn stores(dir: &FsPath) -> Stores {
        // Started off the runtime: the harness uses a blocking HTTP client.
        let target = std::thread::spawn(|| SeaweedFs::shared().target())
            .join()
            .unwrap();
        let env = target.env();
        let config = S3Config::resolve_with(&target.url, &S3Settings::default(), |name| {
            env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
        })
        .unwrap();
        let mut stores = Stores::open(dir).unwrap();
        stores.blobs = Arc::new(S3BlobStore::connect(&config).unwrap());
        stores
    }

    crate::conformance_tests!(stores);

    fn config() -> S3Config {
        let target = std::thread::spawn(|| SeaweedFs::shared().target())
            .join()
            .unwrap();
        let env = target.env();
        S3Config::resolve_with(&target.url, &S3Settings::default(), |name| {
            env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
        })
        .unwrap()
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
            .collect()
    }

    fn body(data: &[u8]) -> ByteStream {
        // As a request body arrives: in pieces that do not line up with parts.
        let chunks: Vec<_> = data
            .chunks(1_000_003)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures_util::stream::iter(chunks))
    }

    async fn keys(store: &S3BlobStore) -> Vec<String> {
        let mut keys: Vec<String> = store
            .s3
            .list(Some(&store.key(&[])))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    }

    async fn read(store: &S3BlobStore, digest: &Digest, offset: u64, len: u64) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        let mut r = store.get(digest, offset, len).await.unwrap();
        r.read_to_end(&mut out).await.unwrap();
        out
    }

    /// A session of several parts, continued by a second store (another gateway
    /// process): chunks of any size, parts of [`PART`], the digest state carried along.
    #[tokio::test]
    async fn multipart_session_is_continued_by_another_process() {
        let config = config();
        let (a, b) = (
            S3BlobStore::connect(&config).unwrap(),
            S3BlobStore::connect(&config).unwrap(),
        );
        let data = content(2 * PART + 3 * 1024 * 1024 + 17);
        let digest = Digest::from_sha256(&<sha2::Sha256 as sha2::Digest>::digest(&data));
        a.create_upload("s").await.unwrap();
        let cuts = [0, 3 << 20, PART + 1, PART + (5 << 20), data.len() - 10];
        for (i, w) in cuts.windows(2).enumerate() {
            let store = if i % 2 == 0 { &a } else { &b };
            let range = (w[0] as u64, w[1] as u64 - 1);
            let offset = store
                .append_upload("s", Some(range), body(&data[w[0]..w[1]]))
                .await
                .unwrap();
            assert_eq!(offset, w[1] as u64);
            assert_eq!(b.upload_offset("s").await.unwrap(), w[1] as u64);
        }
        assert!(a.stat(&digest).await.unwrap().is_none(), "not yet visible");
        let lock = Mutex::new(());
        let (size, placed) = b
            .commit_upload("s", &digest, body(&data[cuts[4]..]), &lock)
            .await
            .unwrap();
        drop(placed);
        assert_eq!(size, data.len() as u64);
        assert_eq!(read(&a, &digest, 0, size).await, data);
        let across = (PART - 5) as u64;
        assert_eq!(
            read(&a, &digest, across, 10).await,
            &data[PART - 5..PART + 5]
        );
        assert_eq!(
            keys(&a).await,
            [a.blob_key(&digest).to_string()],
            "the session left nothing behind"
        );
    }

    /// A put of several parts goes straight to the blob's key, where S3 shows nothing
    /// until the verified upload completes; a mismatch aborts it.
    #[tokio::test]
    async fn large_put_is_invisible_until_verified() {
        let store = S3BlobStore::connect(&config()).unwrap();
        let data = content(PART + PART / 2);
        let digest = Digest::from_sha256(&<sha2::Sha256 as sha2::Digest>::digest(&data));
        let wrong = Digest::of(b"something else");
        let lock = Mutex::new(());
        let err = store
            .put(&wrong, body(&data), &lock)
            .await
            .map(|(size, _)| size)
            .unwrap_err();
        assert!(matches!(err, StorageError::DigestMismatch { .. }), "{err}");
        assert!(keys(&store).await.is_empty(), "nothing visible");
        let (size, placed) = store.put(&digest, body(&data), &lock).await.unwrap();
        drop(placed);
        assert_eq!(size, data.len() as u64);
        assert_eq!(read(&store, &digest, 0, size).await, data);
        assert_eq!(keys(&store).await, [store.blob_key(&digest).to_string()]);
    }

    /// A session whose record names a multipart upload: cancelling aborts it and
    /// removes every object of the session.
    #[tokio::test]
    async fn cancel_removes_parts_and_tail() {
        let store = S3BlobStore::connect(&config()).unwrap();
        store.create_upload("c").await.unwrap();
        store
            .append_upload("c", None, body(&content(PART + 10)))
            .await
            .unwrap();
        let session = store.load("c").await.unwrap();
        assert_eq!((session.parts.len(), session.tail), (1, 10));
        store.cancel_upload("c").await.unwrap();
        assert!(keys(&store).await.is_empty());
        assert!(matches!(
            store.upload_offset("c").await,
            Err(StorageError::UploadUnknown(_))
        ));
    }
}
