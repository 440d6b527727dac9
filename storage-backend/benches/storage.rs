//! Load driver for the storage backend, run by `cargo bench -p portcullis-storage`: starts
//! the real router in-process on 127.0.0.1:0 (release build, data in a temporary directory)
//! and measures blob PUT and GET throughput (MB/s) and manifest GET rate (requests/s) at
//! several client concurrencies, over real HTTP with an async reqwest client.
//!
//! Knobs (environment): `BENCH_BLOB_MIB` (default 64), `BENCH_BLOB_ROUNDS` (default 5),
//! `BENCH_SECONDS` per concurrency level (default 5).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark driver: any failure must abort the run"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use portcullis_storage::{Registry, StorageConfig, router};
use sha2::{Digest, Sha256};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Deterministic, incompressible-enough content of `len` bytes whose first 8 bytes are `seed`.
fn content(len: usize, seed: u64) -> Bytes {
    let mut v = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v[..8].copy_from_slice(&seed.to_le_bytes());
    Bytes::from(v)
}

fn location(base: &str, r: &reqwest::Response) -> String {
    let l = r.headers()["location"].to_str().unwrap();
    if l.starts_with('/') {
        format!("{base}{l}")
    } else {
        l.to_owned()
    }
}

async fn put_blob(c: &reqwest::Client, base: &str, repo: &str, data: Bytes, d: &str) {
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let url = location(base, &r);
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{url}{sep}digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "PUT blob");
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

async fn blob_throughput(c: &reqwest::Client, base: &str) {
    let mib = env_or("BENCH_BLOB_MIB", 64);
    let rounds = env_or("BENCH_BLOB_ROUNDS", 5);
    let len = usize::try_from(mib << 20).unwrap();
    let mut digests = Vec::new();
    let mut put_time = Duration::ZERO;
    for round in 0..rounds {
        let data = content(len, round);
        let d = digest(&data);
        let start = Instant::now();
        put_blob(c, base, "bench/blobs", data, &d).await;
        put_time += start.elapsed();
        digests.push(d);
    }
    let total = (len as u64) * rounds;
    println!(
        "blob PUT   {mib} MiB x {rounds}: {:8.1} MB/s ({:.3} s per blob)",
        mb_per_s(total, put_time),
        put_time.as_secs_f64() / rounds as f64
    );

    let start = Instant::now();
    for d in &digests {
        let r = c
            .get(format!("{base}/v2/bench/blobs/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut n = 0u64;
        let mut body = r.bytes_stream();
        while let Some(chunk) = body.next().await {
            n += chunk.unwrap().len() as u64;
        }
        assert_eq!(n, len as u64);
    }
    let get_time = start.elapsed();
    println!(
        "blob GET   {mib} MiB x {rounds}: {:8.1} MB/s ({:.3} s per blob)",
        mb_per_s(total, get_time),
        get_time.as_secs_f64() / rounds as f64
    );
}

async fn manifest_rate(c: &reqwest::Client, base: &str) {
    let config = Bytes::from_static(b"{\"architecture\":\"amd64\",\"os\":\"linux\"}");
    let layer = content(1024, 7);
    let (cd, ld) = (digest(&config), digest(&layer));
    put_blob(c, base, "bench/app", config.clone(), &cd).await;
    put_blob(c, base, "bench/app", layer.clone(), &ld).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": layer.len()}],
    })
    .to_string();
    let r = c
        .put(format!("{base}/v2/bench/app/manifests/latest"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let seconds = env_or("BENCH_SECONDS", 5);
    for concurrency in [1u64, 16, 64] {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let start = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                // One client per worker: one keep-alive connection each.
                let c = reqwest::Client::new();
                let (done, url) = (
                    done.clone(),
                    format!("{base}/v2/bench/app/manifests/latest"),
                );
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let r = c
                            .get(&url)
                            .header("accept", "application/vnd.oci.image.manifest.v1+json")
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), 200);
                        r.bytes().await.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let n = done.load(Ordering::Relaxed);
        println!(
            "manifest GET, {concurrency:>2} connections: {:8.0} req/s ({n} requests in {:.1} s)",
            n as f64 / start.elapsed().as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::open(StorageConfig::new(tmp.path())).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router(registry)).await.unwrap() });
        println!(
            "portcullis-storage bench: in-process server at {base}, data in {}",
            tmp.path().display()
        );
        let c = reqwest::Client::new();
        blob_throughput(&c, &base).await;
        manifest_rate(&c, &base).await;
    });
}
