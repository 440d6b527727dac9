//! Memory stays flat in blob size: two 1 GiB blobs, uploaded concurrently (one
//! in 256 MiB PATCH chunks, one in a single monolithic PUT) and downloaded
//! concurrently, all streamed on both sides (generated and hashed on the fly by
//! the test); the server's peak RSS must stay under 120 MiB and every digest
//! must match.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::image;

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use common::oci::{absolute, header, with_query};
use image::{Generated, get_blob_digest, try_start_upload, try_upload};
use reqwest::blocking::Body;

const GIB: u64 = 1 << 30;
const CHUNK: u64 = 256 << 20;
const PEAK_RSS_LIMIT_KIB: u64 = 120 * 1024;

/// The next `left` bytes of a shared generator, as one PATCH body.
struct Slice {
    source: Arc<Mutex<Generated>>,
    left: u64,
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let max = buf.len().min(self.left as usize);
        let n = self.source.lock().unwrap().read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A client without the harness's 120 s limit: on a loaded 2-core machine a
/// debug build may need longer for 1 GiB, and speed is not what is tested here.
fn slow_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()
        .unwrap()
}

/// Four 256 MiB PATCHes with Content-Range, then PUT `?digest=` without a
/// body (the digest is computed while the body streams). Returns the digest.
fn upload_chunked(base: &str, repo: &str) -> String {
    let c = slow_client();
    let mut location = try_start_upload(&c, base, repo).unwrap();
    let source = Arc::new(Mutex::new(Generated::new(1, GIB)));
    for start in (0..GIB).step_by(CHUNK as usize) {
        let slice = Slice {
            source: source.clone(),
            left: CHUNK,
        };
        let resp = c
            .patch(&location)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{start}-{}", start + CHUNK - 1))
            .body(Body::sized(slice, CHUNK))
            .send()
            .unwrap();
        assert_eq!(
            resp.status(),
            202,
            "PATCH {start}: {}",
            resp.text().unwrap_or_default()
        );
        assert_eq!(
            header(resp.headers(), "range"),
            Some(format!("0-{}", start + CHUNK - 1))
        );
        location = absolute(base, &header(resp.headers(), "location").unwrap());
    }
    let digest = source.lock().unwrap().digest();
    let resp = c
        .put(with_query(&location, "digest", &digest))
        .send()
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "PUT chunked: {}",
        resp.text().unwrap_or_default()
    );
    digest
}

/// POST, then one PUT `?digest=` carrying the whole body; the digest must be
/// known up front, so the stream is generated twice. Returns the digest.
fn upload_monolithic(base: &str, repo: &str) -> String {
    let digest = Generated::digest_of(2, GIB);
    let resp = try_upload(
        &slow_client(),
        base,
        repo,
        &digest,
        Body::sized(Generated::new(2, GIB), GIB),
    )
    .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "PUT monolithic: {}",
        resp.text().unwrap_or_default()
    );
    assert_eq!(
        header(resp.headers(), "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    digest
}

/// Both uploads run at once, then both downloads: two 1 GiB streams in flight
/// together must still not grow the server's memory.
#[test]
fn one_gib_blobs_stream_with_flat_memory() {
    let server = Server::start(&[]);
    let (base, repo) = (server.url.as_str(), "memory/big");
    let started = Instant::now();
    let digests = std::thread::scope(|s| {
        let chunked = s.spawn(|| upload_chunked(base, repo));
        let monolithic = s.spawn(|| upload_monolithic(base, repo));
        [chunked.join().unwrap(), monolithic.join().unwrap()]
    });
    let uploaded = started.elapsed();
    std::thread::scope(|s| {
        for digest in &digests {
            s.spawn(move || {
                let (status, len, got) = get_blob_digest(&slow_client(), base, repo, digest);
                assert_eq!(
                    (status.as_u16(), len, got.as_str()),
                    (200, GIB, digest.as_str())
                );
            });
        }
    });
    let peak = server.peak_rss_kib();
    eprintln!(
        "two 1 GiB uploads (chunked and monolithic, concurrent) {uploaded:?}, two concurrent downloads {:?}; server peak RSS {} MiB",
        started.elapsed() - uploaded,
        peak / 1024
    );
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "server peak RSS {peak} KiB exceeds {PEAK_RSS_LIMIT_KIB} KiB"
    );
}
