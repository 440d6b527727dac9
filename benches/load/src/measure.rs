//! The measurements of one target: request rates with latency percentiles (an HDR
//! histogram per connection, merged), transfer throughputs, and the servers' peak RSS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use hdrhistogram::Histogram;
use http::header::{ACCEPT, AUTHORIZATION};
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::client::{Call, Conn, Endpoint, Protocol};
use crate::content::{Blob, Image, REPOSITORY, TAG, push_chunked, push_monolithic, reseed};
use crate::lean;
use crate::servers::{Running, Target};

/// What a run measures; `--phase` picks a subset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Manifest GET by tag, at each `--connections`.
    ManifestGet,
    /// Manifest HEAD by tag, at each `--connections`.
    ManifestHead,
    /// 4 KiB blob GET.
    SmallBlob,
    /// Large blob GET throughput, one connection.
    LargeGet,
    /// Large blob push: POST, one PUT with the body.
    PushMonolithic,
    /// Large blob push: POST, PATCH per chunk, PUT.
    PushChunked,
    /// `/oauth2/token` rate (gateways only).
    Token,
    /// Gateways only, over HTTP/2 by prior knowledge: manifest GET at each
    /// `--connections` (one stream per connection, as the HTTP/1.1 rows) and as that
    /// many concurrent streams on one connection; the large blob GET and chunked push.
    H2,
    /// Manifest GET by tag driven by `wrk` (a leaner client), at the first `--connections`.
    WrkManifestGet,
    /// Manifest HEAD by tag driven by `ab -k -i`, at the first `--connections`.
    AbManifestHead,
    /// Bundled-store gateways only: manifest GET by tag from a signed-only repository,
    /// of a cosign-signed and of a Notary Project-signed manifest, at the first
    /// `--connections` (see `signed.rs`).
    SignedPull,
}

impl Phase {
    pub const ALL: [Phase; 11] = [
        Phase::ManifestGet,
        Phase::ManifestHead,
        Phase::WrkManifestGet,
        Phase::AbManifestHead,
        Phase::SmallBlob,
        Phase::LargeGet,
        Phase::PushMonolithic,
        Phase::PushChunked,
        Phase::Token,
        Phase::H2,
        Phase::SignedPull,
    ];
}

/// Test names of the phases driven by wrk and ab (the report's goals look them up).
pub const WRK_GET: &str = "wrk manifest GET";
pub const AB_HEAD: &str = "ab -k manifest HEAD";

/// How long and how hard each phase runs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub duration: Duration,
    pub warmup: Duration,
    /// Connection counts for the manifest phases; the first is also used for the small
    /// blob and token phases.
    pub connections: Vec<usize>,
    pub chunk_bytes: usize,
    /// Pushes per push phase (each of a new blob, so nothing is deduplicated).
    pub push_rounds: u64,
    pub phases: Vec<Phase>,
}

/// One figure of one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    pub target: Target,
    /// What was measured, e.g. `manifest GET`; with `connections`, the row key.
    pub test: String,
    pub connections: usize,
    pub value: f64,
    /// `req/s`, `MB/s` (10^6 bytes) or `MiB`.
    pub unit: String,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests (or transfers) that succeeded, and those that failed.
    pub count: u64,
    pub errors: u64,
}

impl Measurement {
    fn new(target: Target, test: &str, connections: usize, unit: &str) -> Measurement {
        Measurement {
            target,
            test: test.to_owned(),
            connections,
            value: 0.0,
            unit: unit.to_owned(),
            p50_ms: None,
            p99_ms: None,
            count: 0,
            errors: 0,
        }
    }

    pub fn print(&self) {
        let latency = match (self.p50_ms, self.p99_ms) {
            (Some(p50), Some(p99)) => format!("  p50 {p50:.3} ms  p99 {p99:.3} ms"),
            _ => String::new(),
        };
        let conns = if self.connections > 1 {
            format!(" ×{}", self.connections)
        } else {
            String::new()
        };
        eprintln!(
            "{:<17} {:<22} {:>10.1} {}{latency}  (n={}, errors={})",
            self.target.name(),
            format!("{}{conns}", self.test),
            self.value,
            self.unit,
            self.count,
            self.errors
        );
    }
}

/// Runs the selected phases against a started, populated target.
pub async fn measure(
    running: &Running,
    image: &Image,
    settings: &Settings,
) -> Result<Vec<Measurement>> {
    let target = running.target;
    let endpoint = &running.endpoint;
    let manifest = format!("/v2/{REPOSITORY}/manifests/{TAG}");
    let mut out = Vec::new();
    let conns0 = settings.connections.first().copied().unwrap_or(32);
    for &phase in &settings.phases {
        let mut results = Vec::new();
        match phase {
            Phase::ManifestGet | Phase::ManifestHead => {
                let (method, test) = if phase == Phase::ManifestGet {
                    (Method::GET, "manifest GET")
                } else {
                    (Method::HEAD, "manifest HEAD")
                };
                let call = Call::new(method, manifest.clone(), StatusCode::OK)
                    .header(ACCEPT, crate::content::MANIFEST_TYPE)?;
                for &conns in &settings.connections {
                    let m = Measurement::new(target, test, conns, "req/s");
                    results.push(rate(endpoint, &call, m, settings, Open::Http1).await?);
                }
            }
            Phase::SmallBlob => {
                let path = format!("/v2/{REPOSITORY}/blobs/{}", image.small.digest);
                let call = Call::new(Method::GET, path, StatusCode::OK);
                let m = Measurement::new(target, "4 KiB blob GET", conns0, "req/s");
                results.push(rate(endpoint, &call, m, settings, Open::Http1).await?);
            }
            Phase::LargeGet => {
                results.push(large_get(running, image, settings, Protocol::Http1).await?);
            }
            Phase::PushMonolithic | Phase::PushChunked => {
                results.push(push(running, image, settings, phase, Protocol::Http1).await?);
            }
            Phase::H2 if target.is_gateway() => {
                let call = Call::new(Method::GET, manifest.clone(), StatusCode::OK)
                    .header(ACCEPT, crate::content::MANIFEST_TYPE)?;
                for &conns in &settings.connections {
                    let m = Measurement::new(target, "manifest GET h2c", conns, "req/s");
                    results.push(rate(endpoint, &call, m, settings, Open::H2c).await?);
                }
                let m = Measurement::new(target, "manifest GET h2c, 1 conn", conns0, "req/s");
                results.push(rate(endpoint, &call, m, settings, Open::H2cShared).await?);
                results.push(large_get(running, image, settings, Protocol::H2c).await?);
                let chunked = Phase::PushChunked;
                results.push(push(running, image, settings, chunked, Protocol::H2c).await?);
            }
            // HTTP/2 is the gateway's (the anchor and the bare store speak HTTP/1.1 here).
            Phase::H2 => {}
            Phase::WrkManifestGet | Phase::AbManifestHead => {
                let mut headers =
                    vec![(ACCEPT.to_string(), crate::content::MANIFEST_TYPE.to_owned())];
                if let Some(auth) = &endpoint.auth {
                    headers.push((AUTHORIZATION.to_string(), auth.to_str()?.to_owned()));
                }
                let req = lean::Request {
                    addr: endpoint.addr,
                    path: &manifest,
                    headers,
                };
                let (warmup, duration) = (settings.warmup, settings.duration);
                results.push(if phase == Phase::WrkManifestGet {
                    let m = Measurement::new(target, WRK_GET, conns0, "req/s");
                    lean::wrk_get(&req, m, warmup, duration).await?
                } else {
                    let m = Measurement::new(target, AB_HEAD, conns0, "req/s");
                    lean::ab_head(&req, m, warmup, duration).await?
                });
            }
            Phase::SignedPull if matches!(target, Target::Gateway | Target::GatewayS3) => {
                crate::signed::prepare(running, image).await?;
                for (tag, kind) in [
                    (crate::signed::COSIGN_TAG, "cosign"),
                    (crate::signed::NOTATION_TAG, "notation"),
                ] {
                    let path = format!("/v2/{REPOSITORY}/manifests/{tag}");
                    let call = Call::new(Method::GET, path, StatusCode::OK)
                        .header(ACCEPT, crate::content::MANIFEST_TYPE)?;
                    let test = format!("signed-only manifest GET, {kind}");
                    let m = Measurement::new(target, &test, conns0, "req/s");
                    results.push(rate(endpoint, &call, m, settings, Open::Http1).await?);
                }
                crate::signed::finish(running).await?;
            }
            // The upstream registry has no referrers API for the Notary Project signature;
            // the other targets no signatures at all.
            Phase::SignedPull => {}
            Phase::Token => {
                if let Some((path, credentials)) = &running.token_request {
                    let mut call = Call::new(Method::GET, path.clone(), StatusCode::OK);
                    call.headers.insert(AUTHORIZATION, credentials.clone());
                    let m = Measurement::new(target, "token endpoint", conns0, "req/s");
                    results.push(rate(endpoint, &call, m, settings, Open::Http1).await?);
                }
            }
        }
        for m in results {
            m.print();
            out.push(m);
        }
    }
    for (process, kib) in running.peak_rss_kib()? {
        let mut m = Measurement::new(target, &format!("peak RSS {process}"), 0, "MiB");
        m.value = kib as f64 / 1024.0;
        m.count = 1;
        m.print();
        out.push(m);
    }
    Ok(out)
}

fn histogram() -> Result<Histogram<u64>> {
    // Microseconds, 1 µs to 60 s, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// How the clients of a rate phase connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Http1,
    /// One h2c connection per client.
    H2c,
    /// One h2c connection, each client a concurrent stream on it.
    H2cShared,
}

/// `call` on `m.connections` keep-alive connections (or streams) for the warm-up and
/// then the measured duration; requests started in the measured window count.
async fn rate(
    endpoint: &Endpoint,
    call: &Call,
    mut m: Measurement,
    settings: &Settings,
    open: Open,
) -> Result<Measurement> {
    let mut conns: Vec<Conn> = Vec::with_capacity(m.connections);
    for _ in 0..m.connections {
        let shared = match (open, conns.first()) {
            (Open::H2cShared, Some(first)) => first.share(),
            _ => None,
        };
        conns.push(match (shared, open) {
            (Some(conn), _) => conn,
            (None, Open::Http1) => Conn::open(endpoint).await?,
            (None, Open::H2c | Open::H2cShared) => Conn::open_with(endpoint, Protocol::H2c).await?,
        });
    }
    // Fail fast (e.g. a 401) rather than timing errors.
    if let Some(conn) = conns.first_mut() {
        conn.call(call)
            .await
            .with_context(|| format!("{}: {}", m.target, m.test))?;
    }
    let call = Arc::new(call.clone());
    let from = Instant::now() + settings.warmup;
    let until = from + settings.duration;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let call = Arc::clone(&call);
            tokio::spawn(async move {
                let mut hist = histogram()?;
                let mut errors = 0u64;
                let mut first_error = None;
                loop {
                    let start = Instant::now();
                    if start >= until {
                        break;
                    }
                    let result = conn.call(&call).await;
                    if start < from {
                        continue;
                    }
                    match result {
                        Ok(_) => hist.saturating_record(start.elapsed().as_micros() as u64),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                anyhow::Ok((hist, errors, first_error))
            })
        })
        .collect();
    let mut hist = histogram()?;
    for task in tasks {
        let (h, errors, first_error) = task.await??;
        hist.add(&h)?;
        m.errors += errors;
        if let Some(e) = first_error {
            eprintln!("warning: {} {}: {e:#}", m.target, m.test);
        }
    }
    m.count = hist.len();
    m.value = hist.len() as f64 / settings.duration.as_secs_f64();
    m.p50_ms = Some(hist.value_at_quantile(0.50) as f64 / 1000.0);
    m.p99_ms = Some(hist.value_at_quantile(0.99) as f64 / 1000.0);
    Ok(m)
}

/// The large blob downloaded again and again on one connection for the duration
/// (at least once).
async fn large_get(
    running: &Running,
    image: &Image,
    settings: &Settings,
    protocol: Protocol,
) -> Result<Measurement> {
    let test = large_name(image, &format!("blob GET{}", suffix(protocol)));
    let mut m = Measurement::new(running.target, &test, 1, "MB/s");
    let call = Call::new(
        Method::GET,
        format!("/v2/{REPOSITORY}/blobs/{}", image.large.digest),
        StatusCode::OK,
    );
    let mut conn = Conn::open_with(&running.endpoint, protocol).await?;
    let size = image.large.data.len() as u64;
    let start = Instant::now();
    let mut bytes = 0u64;
    while m.count + m.errors == 0 || start.elapsed() < settings.duration {
        match conn.call(&call).await {
            Ok(n) if n == size => m.count += 1,
            Ok(n) => {
                m.errors += 1;
                eprintln!("warning: {}: blob GET gave {n} of {size} bytes", m.target);
            }
            Err(e) => {
                m.errors += 1;
                eprintln!("warning: {}: blob GET: {e:#}", m.target);
            }
        }
        bytes += size;
        if m.errors > 3 {
            return Err(anyhow!("{}: blob GET keeps failing", m.target));
        }
    }
    m.value = bytes as f64 / 1e6 / start.elapsed().as_secs_f64();
    Ok(m)
}

/// `push_rounds` pushes of a new large blob each (same size, another digest): the
/// time from POST to the 201 of the closing PUT.
async fn push(
    running: &Running,
    image: &Image,
    settings: &Settings,
    phase: Phase,
    protocol: Protocol,
) -> Result<Measurement> {
    let chunked = phase == Phase::PushChunked;
    let test = if chunked {
        format!(
            "blob push chunked ({} MiB PATCHes){}",
            settings.chunk_bytes >> 20,
            suffix(protocol)
        )
    } else {
        format!("blob push monolithic{}", suffix(protocol))
    };
    let mut m = Measurement::new(running.target, &large_name(image, &test), 1, "MB/s");
    let mut conn = Conn::open_with(&running.endpoint, protocol).await?;
    let mut data = image.large.data.to_vec();
    let mut busy = Duration::ZERO;
    for round in 0..settings.push_rounds.max(1) {
        reseed(&mut data, 1_000 + round * 2 + u64::from(chunked));
        let blob = Blob::new(data.clone());
        let start = Instant::now();
        if chunked {
            push_chunked(&mut conn, REPOSITORY, &blob, settings.chunk_bytes).await?;
        } else {
            push_monolithic(&mut conn, REPOSITORY, &blob).await?;
        }
        busy += start.elapsed();
        m.count += 1;
    }
    m.value = (m.count * image.large.data.len() as u64) as f64 / 1e6 / busy.as_secs_f64();
    Ok(m)
}

/// How a test's name says it ran over HTTP/2 (HTTP/1.1 rows keep their names).
fn suffix(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http1 => "",
        Protocol::H2c => " h2c",
    }
}

fn large_name(image: &Image, what: &str) -> String {
    format!("{} MiB {what}", image.large.data.len() >> 20)
}
