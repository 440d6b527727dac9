//! [`S3BlobStore`]: blob bytes and upload sessions in an S3-compatible bucket, through
//! `object_store`, so several registry processes can share them.
//!
//! Keys under the configured prefix:
//! - `blobs/sha256/<hex>`: stored blobs. A blob appears only whole and verified: it is
//!   written by one PUT (small blobs, hashed before it is sent) or by a multipart upload
//!   that is completed only once the digest has been checked (S3 shows nothing of a
//!   multipart upload before its completion), or copied there from a completed session.
//! - `uploads/<id>/data`: the session's S3 multipart upload.
//! - `uploads/<id>/tail-<uuid>`: the session's bytes after its last part. S3 parts must
//!   be at least 5 MiB (but the last), while a client's chunks have any size: bytes
//!   collect in the tail until a whole [`PART`] can be sent.
//!
//! The session's record ([`Session`]: its multipart upload id, the parts' ETags, the
//! SHA-256 state after them, which tail object holds the rest) lives in the metadata
//! store ([`MetadataStore::upload_state`]), replaced only by compare-and-swap, so any
//! process can take the session's next request. The split: small, frequently replaced
//! state in the database; bytes (parts and the < 8 MiB tail) in S3.
//!
//! A request holds the session by a lease in its record (claimed by compare-and-swap,
//! renewed while its body arrives and before each part it sends), so two processes never
//! send the same part number. A request of another process waits for the lease to be
//! given up or to run out: when a process is killed mid-request and a load balancer
//! repeats the request on another process (HAProxy's redispatch), the repeat continues
//! the session at most [`LEASE_SECS`] later instead of failing. A lease that stays held
//! longer than that (a live request still writing) refuses the waiter
//! ([`StorageError::UploadBusy`], 416).
//!
//! A request that fails midway leaves the session as it was before the request or, when
//! only the client's body broke, with what arrived recorded; the offset always names a
//! prefix of what was sent.

mod config;
mod sha256;

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
use crate::meta::{MetadataStore, now_secs};
use crate::names::Digest;

/// Bytes per multipart part: above S3's 5 MiB minimum, and a whole number of SHA-256
/// blocks, so the saved hash state always ends at a part boundary.
pub const PART: usize = 8 * 1024 * 1024;

/// Lock stripes serialising requests on one session in this process.
const SESSION_LOCKS: usize = 64;

/// How long a request holds an upload session against requests of other processes
/// (renewed once half of it has passed): short, since a request repeated after its
/// first process died waits this long.
pub const LEASE_SECS: u64 = 15;

/// How often a request waiting for another process's lease looks at it again.
const LEASE_POLL: Duration = Duration::from_millis(200);

/// An upload session's record (JSON, in the metadata store).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    /// The multipart upload of `uploads/<id>/data`, once the first part is sent.
    multipart: Option<String>,
    /// ETags of the parts sent, in order; each is [`PART`] bytes.
    parts: Vec<String>,
    /// SHA-256 state after the parts' bytes.
    hash: [u32; 8],
    /// Bytes in the object `tail-<tail_name>` (0: no tail object).
    tail: u64,
    tail_name: String,
    /// Unix seconds until which a request holds the session (0: none does).
    lease_until: u64,
}

impl Session {
    fn new() -> Session {
        Session {
            multipart: None,
            parts: Vec::new(),
            hash: sha256::INITIAL,
            tail: 0,
            tail_name: String::new(),
            lease_until: 0,
        }
    }

    fn part_bytes(&self) -> u64 {
        (self.parts.len() * PART) as u64
    }

    fn offset(&self) -> u64 {
        self.part_bytes() + self.tail
    }
}

/// A session this request holds: its record as claimed, and the record's version.
struct Held {
    id: String,
    session: Session,
    version: u64,
}

/// Blobs and upload sessions in an S3 bucket, the sessions' records in `meta`.
pub struct S3BlobStore {
    /// Requests of bounded size (metadata, 8 MiB parts): a stuck server times out.
    s3: AmazonS3,
    /// Blob GETs, streamed to clients at their pace: no limit on the whole request.
    s3_streams: AmazonS3,
    config: S3Config,
    meta: Arc<dyn MetadataStore>,
    session_locks: [Mutex<()>; SESSION_LOCKS],
    /// [`LEASE_SECS`]; shorter in tests.
    lease_secs: u64,
}

/// A failed S3 request on `key`.
fn s3_error(key: &Path) -> impl FnOnce(object_store::Error) -> StorageError {
    let key = key.to_string();
    move |error| StorageError::ObjectStore { key, error }
}

impl S3BlobStore {
    /// The store `config` names, keeping upload sessions' records in `meta`; no request
    /// is made (see [`S3BlobStore::connect`]).
    pub fn open(
        config: &S3Config,
        meta: Arc<dyn MetadataStore>,
    ) -> Result<S3BlobStore, StorageError> {
        let bounded = ClientOptions::new().with_timeout(Duration::from_secs(120));
        Ok(S3BlobStore {
            s3: Self::client(config, bounded)?,
            s3_streams: Self::client(config, ClientOptions::new().with_timeout_disabled())?,
            config: config.clone(),
            meta,
            session_locks: std::array::from_fn(|_| Mutex::new(())),
            lease_secs: LEASE_SECS,
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
    pub fn connect(
        config: &S3Config,
        meta: Arc<dyn MetadataStore>,
    ) -> Result<S3BlobStore, StorageError> {
        let probe = S3BlobStore::open(config, Arc::clone(&meta))?;
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
        S3BlobStore::open(config, meta)
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

    fn tail_key(&self, id: &str, name: &str) -> Path {
        self.session_key(id, &format!("tail-{name}"))
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

    /// The record of session `id` and its version.
    async fn load(&self, id: &str) -> Result<(Session, u64), StorageError> {
        let state = self
            .meta
            .upload_state(id)
            .await?
            .ok_or_else(|| StorageError::UploadUnknown(id.to_owned()))?;
        let session = serde_json::from_slice(&state.bytes)
            .map_err(|e| StorageError::Corrupt(format!("upload session {id}: {e}")))?;
        Ok((session, state.version))
    }

    /// Replaces the record of `id` if it is still at `version` (0: creates it); the new
    /// version. Another request got there first: [`StorageError::UploadBusy`].
    async fn store(&self, id: &str, session: &Session, version: u64) -> Result<u64, StorageError> {
        let json = serde_json::to_vec(session)
            .map_err(|e| StorageError::Corrupt(format!("upload session {id}: {e}")))?;
        if self.meta.set_upload_state(id, &json, version).await? {
            Ok(version + 1)
        } else {
            Err(StorageError::UploadBusy(id.to_owned()))
        }
    }

    /// Takes the lease of session `id` for this request, waiting (a little longer than
    /// one lease) while another process holds it.
    async fn claim(&self, id: &str) -> Result<Held, StorageError> {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(self.lease_secs + 1);
        loop {
            let (mut session, version) = self.load(id).await?;
            let now = now_secs();
            if session.lease_until <= now {
                session.lease_until = now + self.lease_secs;
                // Lost to another waiter: it holds the session now, so wait on.
                match self.store(id, &session, version).await {
                    Ok(version) => {
                        return Ok(Held {
                            id: id.to_owned(),
                            session,
                            version,
                        });
                    }
                    Err(StorageError::UploadBusy(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(StorageError::UploadBusy(id.to_owned()));
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// Extends the lease; fails if the lease was lost.
    async fn renew(&self, held: &mut Held) -> Result<(), StorageError> {
        held.session.lease_until = now_secs() + self.lease_secs;
        held.version = self.store(&held.id, &held.session, held.version).await?;
        Ok(())
    }

    /// Extends the lease once half of it has passed (a body arriving slowly).
    async fn keep(&self, held: &mut Held) -> Result<(), StorageError> {
        if held.session.lease_until < now_secs() + self.lease_secs / 2 + 1 {
            self.renew(held).await?;
        }
        Ok(())
    }

    /// Gives the lease up, the record unchanged (a request that failed).
    async fn release(&self, mut held: Held) {
        held.session.lease_until = 0;
        if let Err(e) = self.store(&held.id, &held.session, held.version).await {
            tracing::warn!(error = %e, upload = %held.id, "releasing an upload session");
        }
    }

    /// The bytes of the session's tail object.
    async fn read_tail(&self, id: &str, session: &Session) -> Result<BytesMut, StorageError> {
        let mut buf = BytesMut::new();
        if session.tail > 0 {
            let key = self.tail_key(id, &session.tail_name);
            let tail = self.read_all(&key).await?.ok_or_else(|| {
                StorageError::Corrupt(format!("upload session {id}: tail {key} is missing"))
            })?;
            buf.extend_from_slice(&tail);
        }
        Ok(buf)
    }

    /// The held session as a writer that continues it, its tail `buf` read back.
    fn resume(&self, held: Held, buf: BytesMut) -> Parts {
        let (id, session) = (&held.id, &held.session);
        Parts {
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
            lease: Some(held),
        }
    }

    /// Records what `parts` holds as the session's new state and gives the lease up: the
    /// tail first (a new object), then the record that names it, then the old tail goes.
    async fn persist(&self, mut parts: Parts) -> Result<Session, StorageError> {
        let hash = parts.hasher_at_parts()?;
        let Some(held) = parts.lease.take() else {
            return Err(StorageError::Corrupt("persisting an unheld session".into()));
        };
        let (id, old) = (&held.id, &held.session);
        let mut new = Session {
            multipart: parts.multipart.clone(),
            parts: parts.parts.iter().map(|p| p.content_id.clone()).collect(),
            hash,
            tail: parts.buf.len() as u64,
            tail_name: old.tail_name.clone(),
            lease_until: 0,
        };
        let unchanged = new.parts.len() == old.parts.len() && new.tail == old.tail;
        if !unchanged && !parts.buf.is_empty() {
            new.tail_name = uuid::Uuid::new_v4().simple().to_string();
            let tail = parts.buf.clone().freeze();
            self.write(&self.tail_key(id, &new.tail_name), tail).await?;
        }
        self.store(id, &new, held.version).await?;
        // Replaced by a new tail, or taken into a part.
        if !unchanged && old.tail > 0 {
            self.remove(&self.tail_key(id, &old.tail_name)).await?;
        }
        Ok(new)
    }

    /// Appends `body` to the session (the local lock held by the caller), holding its
    /// lease: on success the returned writer still holds it. S3 failures leave the
    /// session as it was; a broken body is recorded as far as it arrived.
    async fn append(
        &self,
        id: &str,
        range: Option<(u64, u64)>,
        body: ByteStream,
    ) -> Result<Parts, StorageError> {
        let held = self.claim(id).await?;
        let offset = held.session.offset();
        if let Some((start, end)) = range
            && (start != offset || end < start)
        {
            self.release(held).await;
            return Err(StorageError::RangeInvalid { start, end, offset });
        }
        let buf = match self.read_tail(id, &held.session).await {
            Ok(buf) => buf,
            Err(e) => {
                self.release(held).await;
                return Err(e);
            }
        };
        let mut parts = self.resume(held, buf);
        match parts.feed(self, body).await {
            Ok(None) => Ok(parts),
            Ok(Some(broken)) => {
                self.persist(parts).await?;
                Err(StorageError::io(
                    format!("upload {id} request body"),
                    broken,
                ))
            }
            Err(e) => {
                if let Some(held) = parts.lease.take() {
                    self.release(held).await;
                }
                Err(e)
            }
        }
    }

    /// Removes everything of session `id`: its multipart upload and its objects.
    async fn drop_session(&self, id: &str) -> Result<(), StorageError> {
        match self.load(id).await {
            Ok((
                Session {
                    multipart: Some(mp),
                    ..
                },
                _,
            )) => {
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

    /// Deletes the objects under `uploads/<id>/`, then the record: until it is gone, a
    /// retry finds the session again.
    async fn remove_session_objects(&self, id: &str) -> Result<(), StorageError> {
        let prefix = self.key(&["uploads", id]);
        let keys: Vec<Path> = self
            .s3
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(s3_error(&prefix))?;
        for key in keys {
            self.remove(&key).await?;
        }
        self.meta.remove_upload_state(id).await?;
        Ok(())
    }

    /// Takes `placement` and `digest`'s lock in the metadata store, which GC in every
    /// process sharing this bucket takes before it deletes a blob ([`Placement`]).
    async fn place<'p>(
        &self,
        digest: &Digest,
        placement: &'p Mutex<()>,
    ) -> Result<Placement<'p>, StorageError> {
        let local = placement.lock().await;
        match self.meta.lock_blob(digest, true).await? {
            Some(shared) => Ok(Placement::shared(local, shared)),
            // Only a lock that does not wait can be refused.
            None => Ok(Placement::local(local)),
        }
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
            let placed = self.place(digest, placement).await?;
            self.write(&target, parts.buf.freeze()).await?;
            return Ok((size, placed));
        };
        if !parts.buf.is_empty() {
            let last = parts.buf.split().freeze();
            parts.send(self, last).await?;
        }
        let placed = self.place(digest, placement).await?;
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
    /// The upload session these bytes continue, held by this request (none for a
    /// monolithic put).
    lease: Option<Held>,
}

impl Parts {
    fn new(key: Path) -> Parts {
        Parts {
            key,
            multipart: None,
            parts: Vec::new(),
            hasher: Sha256::new(),
            buf: BytesMut::new(),
            lease: None,
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
            if let Some(held) = &mut self.lease {
                store.keep(held).await?;
            }
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
        // Still ours: no other process sends this part number meanwhile.
        if let Some(held) = &mut self.lease {
            store.renew(held).await?;
        }
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
        Box::pin(async move { self.store(id, &Session::new(), 0).await.map(|_| ()) })
    }

    fn upload_offset<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<u64, StorageError>> {
        Box::pin(async move {
            let _lock = self.session_lock(id).lock().await;
            Ok(self.load(id).await?.0.offset())
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
            let parts = self.append(id, range, body).await?;
            Ok(self.persist(parts).await?.offset())
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
            let mut parts = self.append(id, None, body).await?;
            // Held to the end: publishing sends at most one more part.
            let held = parts.lease.take();
            let published = self.publish(digest, parts, placement).await;
            // Published or refused, the session is over; its multipart upload is
            // completed or aborted by now.
            if matches!(&published, Ok(_) | Err(StorageError::DigestMismatch { .. })) {
                self.remove_session_objects(id).await?;
            } else if let Some(held) = held {
                self.release(held).await;
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

    /// Sessions with a record, and objects under `uploads/<id>/` left without one (a
    /// crash between removing a session's objects and its record).
    fn uploads(&self) -> BoxFuture<'_, Result<Vec<UploadStat>, StorageError>> {
        Box::pin(async move {
            let mut sessions: HashMap<String, SystemTime> = self
                .meta
                .upload_states()
                .await?
                .into_iter()
                .map(|(id, at)| (id, UNIX_EPOCH + Duration::from_secs(at)))
                .collect();
            let prefix = self.key(&["uploads"]);
            let found: Vec<_> = self
                .s3
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(s3_error(&prefix))?;
            for m in found {
                let mut parts = m.location.parts();
                let (Some(_), Some(id)) = (parts.next_back(), parts.next_back()) else {
                    continue;
                };
                let modified = SystemTime::from(m.last_modified);
                let at = sessions.entry(id.as_ref().to_owned()).or_insert(modified);
                *at = (*at).max(modified);
            }
            let now = now_secs();
            let mut out = Vec::new();
            for (id, modified) in sessions {
                let leased = match self.meta.upload_state(&id).await? {
                    Some(state) => serde_json::from_slice::<Session>(&state.bytes)
                        .is_ok_and(|s| s.lease_until > now),
                    None => false,
                };
                let busy = leased || self.session_lock(&id).try_lock().is_err();
                out.push(UploadStat { id, modified, busy });
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path as FsPath;
    use std::sync::Arc;

    use portcullis_test_support::postgres::Postgres;
    use portcullis_test_support::seaweedfs::SeaweedFs;

    use super::*;
    use crate::meta::{PgMeta, RedbMeta};
    use crate::registry::Stores;

    /// Redb metadata in `dir`, blobs under a fresh prefix of this binary's SeaweedFS.
    pub(crate) fn stores(dir: &FsPath) -> Stores {
        let meta: Arc<dyn MetadataStore> =
            Arc::new(RedbMeta::open(&dir.join("meta.redb")).unwrap());
        Stores {
            blobs: Arc::new(S3BlobStore::connect(&config(), Arc::clone(&meta)).unwrap()),
            meta,
        }
    }

    crate::conformance_tests!(stores);

    /// A fresh database of this binary's PostgreSQL (started off the runtime: the
    /// harness blocks).
    fn database() -> String {
        std::thread::spawn(|| Postgres::shared().database())
            .join()
            .unwrap()
    }

    /// A connection pool of its own to `url`, as another gateway process has.
    async fn pg(url: &str) -> Arc<dyn MetadataStore> {
        Arc::new(PgMeta::connect(url).await.unwrap())
    }

    /// A store on this binary's SeaweedFS (fresh prefix) with a fresh database.
    async fn store() -> S3BlobStore {
        S3BlobStore::connect(&config(), pg(&database()).await).unwrap()
    }

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
        let (config, url) = (config(), database());
        let (a, b) = (
            S3BlobStore::connect(&config, pg(&url).await).unwrap(),
            S3BlobStore::connect(&config, pg(&url).await).unwrap(),
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
        let store = store().await;
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

    /// GC in one process leaves a blob whose bytes an upload in another process (its own
    /// S3 store and PostgreSQL pool, one bucket and database) has placed but not yet
    /// committed metadata for: the upload holds the digest's lock in the database until
    /// it lets go of the placement. Once it does, the uncommitted bytes are an orphan.
    #[tokio::test]
    async fn gc_in_another_process_skips_a_blob_being_placed() {
        let (config, url) = (config(), database());
        let uploader = S3BlobStore::connect(&config, pg(&url).await).unwrap();
        let meta = pg(&url).await;
        let dir = tempfile::tempdir().unwrap();
        let gc = crate::Registry::with_stores(
            crate::StorageConfig::new(dir.path()),
            Stores {
                blobs: Arc::new(S3BlobStore::connect(&config, Arc::clone(&meta)).unwrap()),
                meta,
            },
        );
        let data = content(10_000);
        let digest = Digest::of(&data);
        let lock = Mutex::new(());
        let (_, placed) = uploader.put(&digest, body(&data), &lock).await.unwrap();
        // Older than the pass by S3's whole-second times too: only the lock keeps it.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let report = gc.gc(Duration::ZERO, false).await.unwrap();
        assert_eq!(report.orphan_files, 0, "{report:?}");
        assert!(uploader.stat(&digest).await.unwrap().is_some());
        drop(placed);
        // The lock's transaction ends just after the guard is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut orphans = 0;
        while orphans == 0 && std::time::Instant::now() < deadline {
            orphans = gc.gc(Duration::ZERO, false).await.unwrap().orphan_files;
        }
        assert_eq!(orphans, 1);
        assert!(uploader.stat(&digest).await.unwrap().is_none());
    }

    /// A session whose record names a multipart upload: cancelling aborts it and
    /// removes every object of the session.
    #[tokio::test]
    async fn cancel_removes_parts_and_tail() {
        let store = store().await;
        store.create_upload("c").await.unwrap();
        store
            .append_upload("c", None, body(&content(PART + 10)))
            .await
            .unwrap();
        let (session, _) = store.load("c").await.unwrap();
        assert_eq!((session.parts.len(), session.tail), (1, 10));
        store.cancel_upload("c").await.unwrap();
        assert!(keys(&store).await.is_empty());
        assert!(matches!(
            store.upload_offset("c").await,
            Err(StorageError::UploadUnknown(_))
        ));
    }

    /// A body whose first chunk (`first`) arrives at once and whose end waits for the
    /// returned sender.
    fn stalled(first: &[u8]) -> (ByteStream, tokio::sync::oneshot::Sender<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let first = Bytes::copy_from_slice(first);
        let body: ByteStream =
            Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(
                futures_util::stream::once(async move {
                    let _ = rx.await;
                    Ok(Bytes::new())
                }),
            ));
        (body, tx)
    }

    /// Until some request holds session `id`.
    async fn until_held(store: &S3BlobStore, id: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while store.load(id).await.unwrap().0.lease_until == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the first request never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Two processes on one session: while one request holds it (its body still
    /// arriving), the other's waits, then continues at the offset the first left;
    /// nothing sent was lost. A waiter gives up on a lease held longer than one lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_has_one_writer_across_processes() {
        let (config, url) = (config(), database());
        let a = Arc::new(S3BlobStore::connect(&config, pg(&url).await).unwrap());
        let b = Arc::new(S3BlobStore::connect(&config, pg(&url).await).unwrap());
        let mut impatient = S3BlobStore::connect(&config, pg(&url).await).unwrap();
        impatient.lease_secs = 1;
        let data = content(PART + 1000);
        let digest = Digest::from_sha256(&<sha2::Sha256 as sha2::Digest>::digest(&data));
        a.create_upload("w").await.unwrap();
        let (slow, tx) = stalled(&data[..PART + 10]);
        let writer = {
            let a = Arc::clone(&a);
            tokio::spawn(
                async move { a.append_upload("w", Some((0, PART as u64 + 9)), slow).await },
            )
        };
        until_held(&b, "w").await;

        let started = std::time::Instant::now();
        let err = impatient
            .append_upload("w", Some((0, 99)), body(&data[..100]))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::UploadBusy(_)), "{err}");
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "gave up at once"
        );

        let next = PART as u64 + 10;
        let waiter = {
            let (b, chunk) = (Arc::clone(&b), body(&data[PART + 10..PART + 110]));
            tokio::spawn(async move { b.append_upload("w", Some((next, next + 99)), chunk).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiter.is_finished(), "wrote while the session was held");
        tx.send(()).unwrap();
        assert_eq!(writer.await.unwrap().unwrap(), next);
        assert_eq!(waiter.await.unwrap().unwrap(), next + 100);
        let lock = Mutex::new(());
        let (size, placed) = b
            .commit_upload("w", &digest, body(&data[PART + 110..]), &lock)
            .await
            .unwrap();
        drop(placed);
        assert_eq!(size, data.len() as u64);
        assert_eq!(read(&b, &digest, 0, size).await, data);
        assert!(b.meta.upload_state("w").await.unwrap().is_none());
    }

    /// A process killed while it held a session (its lease never given up): the request
    /// a load balancer repeats on another process waits for the lease to run out, then
    /// completes the upload.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_holder_delays_the_repeated_request_by_one_lease() {
        let (config, url) = (config(), database());
        let mut dead = S3BlobStore::connect(&config, pg(&url).await).unwrap();
        dead.lease_secs = 2;
        let other = S3BlobStore::connect(&config, pg(&url).await).unwrap();
        let data = content(1000);
        let digest = Digest::from_sha256(&<sha2::Sha256 as sha2::Digest>::digest(&data));
        dead.create_upload("k").await.unwrap();
        let _ = dead.claim("k").await.unwrap();

        let started = std::time::Instant::now();
        let lock = Mutex::new(());
        let (size, placed) = other
            .commit_upload("k", &digest, body(&data), &lock)
            .await
            .unwrap();
        drop(placed);
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "took a held lease"
        );
        assert_eq!(size, data.len() as u64);
        assert_eq!(read(&other, &digest, 0, size).await, data);
    }
}
