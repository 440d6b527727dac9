//! `portcullis-load soak`: a long mixed load against the gateway on the bundled store,
//! checking every answer, while the gateway's own garbage collector runs every few
//! seconds. Pushers push small images (a layer shared by the images of a repository, a
//! layer of their own, monolithic or chunked), pullers pull live images by tag and by
//! digest and check every byte, a deleter removes the oldest images, and a churner
//! creates, narrows and deletes tokens and scope maps. Everyone re-uses one bearer
//! token per 4 minutes. A sampler records the gateway's RSS and open descriptors, and
//! how full its caches are (`/metrics`), so growth can be told from caches filling.
//!
//! A request fails when its answer is not what the registry owes the client: anything
//! but success, except a `404` for an image the deleter has already started to delete.
//! `blob unknown` for a blob a live manifest references is counted on its own.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use plotters::prelude::*;
use serde::Serialize;

use crate::client::{Conn, Endpoint, collect};
use crate::content::{Blob, MANIFEST_TYPE, digest, pseudo_random, push_chunked, push_monolithic};
use crate::report::register_font;
use crate::servers::{Binaries, Running, Target, admin_basic, basic, proc_status_kib, token_realm};

/// What `portcullis-load soak` is told.
pub struct SoakSettings {
    pub duration: Duration,
    pub repositories: usize,
    pub pushers: usize,
    pub pullers: usize,
    /// Live images kept; the deleter removes the oldest beyond this.
    pub keep: usize,
    pub gc_interval_seconds: u64,
    pub gc_grace_seconds: u64,
    pub sample_every: Duration,
}

/// One pushed image: its repository, tag, manifest and blobs.
struct Pushed {
    repo: String,
    tag: String,
    manifest: Bytes,
    manifest_digest: String,
    blobs: Vec<Blob>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    failures: AtomicU64,
    blob_unknown: AtomicU64,
    raced_delete: AtomicU64,
    pushes: AtomicU64,
    pulls: AtomicU64,
    deletes: AtomicU64,
    admin_changes: AtomicU64,
    bearer_tokens: AtomicU64,
}

/// What every worker shares.
struct Shared {
    endpoint: Endpoint,
    /// The current bearer token (`Authorization` value) and its generation.
    bearer: RwLock<(u64, HeaderValue)>,
    live: Mutex<BTreeMap<u64, Arc<Pushed>>>,
    /// Images whose deletion has started: a 404 for them is expected.
    doomed: Mutex<HashSet<String>>,
    next_image: AtomicU64,
    counters: Counters,
    first_failures: Mutex<Vec<String>>,
    stop: AtomicBool,
    repositories: usize,
    keep: usize,
}

impl Shared {
    fn fail(&self, what: String) {
        self.counters.failures.fetch_add(1, Relaxed);
        let mut first = self
            .first_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if first.len() < 50 {
            eprintln!("soak: FAILED {what}");
            first.push(what);
        }
    }

    fn auth(&self) -> HeaderValue {
        self.bearer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    fn pick_live(&self, rng: &mut Rng) -> Option<Arc<Pushed>> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let n = live.len();
        if n == 0 {
            return None;
        }
        live.values().nth(rng.below(n as u64) as usize).cloned()
    }

    fn is_doomed(&self, manifest_digest: &str) -> bool {
        self.doomed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(manifest_digest)
    }
}

/// A sample of the gateway process.
#[derive(Clone, Debug, Serialize)]
struct Sample {
    seconds: f64,
    rss_mib: f64,
    open_fds: u64,
    requests: u64,
    failures: u64,
    /// The weighed bytes of the caches bounded by bytes, summed.
    cache_mib: f64,
    /// Per cache, from `portcullis_cache_entries` and `portcullis_cache_bytes`.
    caches: BTreeMap<String, CacheGauges>,
}

#[derive(Clone, Debug, Default, Serialize)]
struct CacheGauges {
    entries: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
}

#[derive(Serialize)]
struct SoakReport {
    command: String,
    date: String,
    minutes: f64,
    repositories: usize,
    pushers: usize,
    pullers: usize,
    gc_interval_seconds: u64,
    gc_grace_seconds: u64,
    requests: u64,
    failures: u64,
    blob_unknown_for_live_content: u64,
    raced_with_delete: u64,
    pushes: u64,
    pulls: u64,
    deletes: u64,
    admin_changes: u64,
    bearer_tokens: u64,
    first_failures: Vec<String>,
    samples: Vec<Sample>,
}

/// A small xorshift generator: choices only, no need for a crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs the soak; writes `soak.json`, `SOAK.md` and `soak.png` into `out` and fails
/// when any request failed.
pub async fn run(bins: &Binaries, settings: &SoakSettings, out: &Path) -> Result<()> {
    let gc_interval = settings.gc_interval_seconds.to_string();
    let gc_grace = settings.gc_grace_seconds.to_string();
    let running = Running::start(
        Target::Gateway,
        bins,
        "warn",
        &[
            "--gc-interval-seconds",
            &gc_interval,
            "--gc-grace-seconds",
            &gc_grace,
            "--audit-log",
            "off",
        ],
    )
    .await?;
    let mut endpoint = running.endpoint.clone();
    endpoint.auth = None;

    let mut conn = Conn::open(&endpoint).await?;
    let (realm, service) = token_realm(&mut conn).await?;
    let password = create_token(
        &mut conn,
        "soak-load",
        &["content/read", "content/write", "content/delete"],
        "soak/*",
    )
    .await?;
    let credentials = basic("soak-load", &password)?;
    let scopes: String = (0..settings.repositories)
        .map(|r| format!("&scope=repository:soak/r{r}:pull,push,delete"))
        .collect();
    let token_path = format!("{realm}?service={service}{scopes}");
    let first = bearer(&mut conn, &token_path, &credentials).await?;

    let shared = Arc::new(Shared {
        endpoint,
        bearer: RwLock::new((0, first)),
        live: Mutex::new(BTreeMap::new()),
        doomed: Mutex::new(HashSet::new()),
        next_image: AtomicU64::new(0),
        counters: Counters::default(),
        first_failures: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        repositories: settings.repositories,
        keep: settings.keep,
    });
    shared.counters.bearer_tokens.fetch_add(1, Relaxed);

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..settings.pushers {
        tasks.spawn(pusher(shared.clone(), i as u64));
    }
    for i in 0..settings.pullers {
        tasks.spawn(puller(shared.clone(), 1000 + i as u64));
    }
    tasks.spawn(deleter(shared.clone()));
    tasks.spawn(churner(shared.clone(), realm.clone(), service.clone()));
    {
        let shared = shared.clone();
        tasks.spawn(async move {
            // Tokens live 300 s: a new one every 240 s, the old re-used until then.
            let mut generation = 0;
            while !sleep_unless_stopped(&shared, Duration::from_secs(240)).await {
                match bearer(&mut conn, &token_path, &credentials).await {
                    Ok(value) => {
                        generation += 1;
                        *shared.bearer.write().unwrap_or_else(|e| e.into_inner()) =
                            (generation, value);
                        shared.counters.bearer_tokens.fetch_add(1, Relaxed);
                    }
                    Err(e) => shared.fail(format!("refreshing the bearer token: {e:#}")),
                }
            }
            Ok(())
        });
    }

    let started = Instant::now();
    let mut samples = Vec::new();
    let pid = running.pid();
    let mut metrics = Conn::open(&shared.endpoint).await?;
    while started.elapsed() < settings.duration {
        samples.push(sample(pid, started, &shared, &mut metrics).await?);
        if let Some(last) = samples.last() {
            eprintln!(
                "soak: {:>5.0} s  rss {:>6.1} MiB  caches {:>6.1} MiB  fds {:>4}  requests {:>8}  failures {}",
                last.seconds,
                last.rss_mib,
                last.cache_mib,
                last.open_fds,
                last.requests,
                last.failures
            );
        }
        let left = settings.duration.saturating_sub(started.elapsed());
        tokio::time::sleep(settings.sample_every.min(left)).await;
    }
    shared.stop.store(true, Relaxed);
    while let Some(joined) = tasks.join_next().await {
        joined.context("a soak worker panicked")??;
    }
    samples.push(sample(pid, started, &shared, &mut metrics).await?);

    let c = &shared.counters;
    let report = SoakReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)?,
        minutes: settings.duration.as_secs_f64() / 60.0,
        repositories: settings.repositories,
        pushers: settings.pushers,
        pullers: settings.pullers,
        gc_interval_seconds: settings.gc_interval_seconds,
        gc_grace_seconds: settings.gc_grace_seconds,
        requests: c.requests.load(Relaxed),
        failures: c.failures.load(Relaxed),
        blob_unknown_for_live_content: c.blob_unknown.load(Relaxed),
        raced_with_delete: c.raced_delete.load(Relaxed),
        pushes: c.pushes.load(Relaxed),
        pulls: c.pulls.load(Relaxed),
        deletes: c.deletes.load(Relaxed),
        admin_changes: c.admin_changes.load(Relaxed),
        bearer_tokens: c.bearer_tokens.load(Relaxed),
        first_failures: shared
            .first_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        samples,
    };
    fs::create_dir_all(out)?;
    fs::write(out.join("soak.json"), serde_json::to_vec_pretty(&report)?)?;
    fs::write(out.join("SOAK.md"), markdown(&report))?;
    plot(&report, &out.join("soak.png"))?;
    println!("{}", markdown(&report));
    if report.failures > 0 {
        bail!(
            "{} of {} requests failed\n{}",
            report.failures,
            report.requests,
            running.stderr_tails()
        );
    }
    Ok(())
}

/// Sleeps `d` in short steps; true when the soak is over.
async fn sleep_unless_stopped(shared: &Shared, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if shared.stop.load(Relaxed) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shared.stop.load(Relaxed)
}

async fn sample(pid: u32, started: Instant, shared: &Shared, metrics: &mut Conn) -> Result<Sample> {
    let rss_kib = proc_status_kib(pid, "VmRSS")? as f64;
    let open_fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let req = shared
        .endpoint
        .request(Method::GET, "/metrics", &HeaderMap::new(), Bytes::new())?;
    let resp = metrics.send(req).await.context("GET /metrics")?;
    if resp.status() != StatusCode::OK {
        bail!("GET /metrics answered {}", resp.status());
    }
    let caches = cache_gauges(&String::from_utf8_lossy(&collect(resp).await?));
    let cache_bytes: u64 = caches.values().filter_map(|c| c.bytes).sum();
    Ok(Sample {
        seconds: started.elapsed().as_secs_f64(),
        rss_mib: rss_kib / 1024.0,
        open_fds,
        requests: shared.counters.requests.load(Relaxed),
        failures: shared.counters.failures.load(Relaxed),
        cache_mib: cache_bytes as f64 / (1024.0 * 1024.0),
        caches,
    })
}

/// The `portcullis_cache_entries` and `portcullis_cache_bytes` lines of a `/metrics` text.
fn cache_gauges(text: &str) -> BTreeMap<String, CacheGauges> {
    let mut caches = BTreeMap::<String, CacheGauges>::new();
    for line in text.lines() {
        let Some((family, rest)) = line.split_once("{cache=\"") else {
            continue;
        };
        let bytes = match family {
            "portcullis_cache_entries" => false,
            "portcullis_cache_bytes" => true,
            _ => continue,
        };
        let Some((cache, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        let gauges = caches.entry(cache.to_owned()).or_default();
        if bytes {
            gauges.bytes = Some(value);
        } else {
            gauges.entries = value;
        }
    }
    caches
}

/// One request: status, headers' `Docker-Content-Digest` and body.
async fn call(
    shared: &Shared,
    conn: &mut Conn,
    method: Method,
    path: &str,
    mut headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Bytes)> {
    if !headers.contains_key(AUTHORIZATION) {
        headers.insert(AUTHORIZATION, shared.auth());
    }
    shared.counters.requests.fetch_add(1, Relaxed);
    let req = shared.endpoint.request(method, path, &headers, body)?;
    let resp = conn.send(req).await?;
    let status = resp.status();
    Ok((status, collect(resp).await?))
}

/// A bearer `Authorization` value from the token endpoint.
async fn bearer(conn: &mut Conn, path: &str, credentials: &HeaderValue) -> Result<HeaderValue> {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, credentials.clone());
    let req = conn
        .endpoint()
        .request(Method::GET, path, &headers, Bytes::new())?;
    let resp = conn.send(req).await?;
    let status = resp.status();
    let body: serde_json::Value = serde_json::from_slice(&collect(resp).await?)?;
    let jwt = body["token"]
        .as_str()
        .ok_or_else(|| anyhow!("token endpoint answered {status}: {body}"))?;
    Ok(HeaderValue::from_str(&format!("Bearer {jwt}"))?)
}

/// Creates token `name` with `actions` on `pattern` as the admin; its first password.
async fn create_token(
    conn: &mut Conn,
    name: &str,
    actions: &[&str],
    pattern: &str,
) -> Result<String> {
    let body = serde_json::json!({
        "name": name,
        "repositories": [{"repository": pattern, "actions": actions}],
    });
    let (status, body) = admin(conn, Method::POST, "/admin/v1/tokens", Some(body)).await?;
    if status != StatusCode::CREATED {
        bail!(
            "creating token {name} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let created: serde_json::Value = serde_json::from_slice(&body)?;
    created["credentials"]["passwords"][0]["value"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no password in {created}"))
}

async fn admin(
    conn: &mut Conn,
    method: Method,
    path: &str,
    json: Option<serde_json::Value>,
) -> Result<(StatusCode, Bytes)> {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, admin_basic()?);
    let body = match json {
        Some(v) => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Bytes::from(serde_json::to_vec(&v)?)
        }
        None => Bytes::new(),
    };
    let req = conn.endpoint().request(method, path, &headers, body)?;
    let resp = conn.send(req).await?;
    let status = resp.status();
    Ok((status, collect(resp).await?))
}

/// Pushes images until the soak ends: the repository's shared layer (HEAD first and
/// skipped when present, as docker does), a layer of its own (monolithic or chunked
/// by turns), a config, the manifest under a tag of its own.
async fn pusher(shared: Arc<Shared>, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed + 1);
    // The push flows send the connection's own credentials: reopened per bearer token.
    let mut generation = u64::MAX;
    let mut conn = Conn::open(&shared.endpoint).await?;
    while !shared.stop.load(Relaxed) {
        let (current, auth) = shared
            .bearer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if current != generation {
            let mut endpoint = shared.endpoint.clone();
            endpoint.auth = Some(auth);
            conn = Conn::open(&endpoint).await?;
            generation = current;
        }
        let n = shared.next_image.fetch_add(1, Relaxed);
        let repo = format!("soak/r{}", rng.below(shared.repositories as u64));
        // One of three shared layers per repository: a push often finds it present.
        let shared_layer = Blob::new(pseudo_random(32 * 1024, hash(&repo) + rng.below(3)));
        let own = Blob::new(pseudo_random(
            16 * 1024 + rng.below(512 * 1024) as usize,
            2_000_000 + n,
        ));
        let config =
            Blob::new(format!(r#"{{"architecture":"amd64","os":"linux","n":{n}}}"#).into_bytes());
        if let Err(e) = push_image(&shared, &mut conn, &repo, n, [config, shared_layer, own]).await
        {
            shared.fail(format!("push of image {n} to {repo}: {e:#}"));
        }
    }
    Ok(())
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

async fn push_image(
    shared: &Shared,
    conn: &mut Conn,
    repo: &str,
    n: u64,
    [config, shared_layer, own]: [Blob; 3],
) -> Result<()> {
    let head_path = format!("/v2/{repo}/blobs/{}", shared_layer.digest);
    let (status, _) = call(
        shared,
        conn,
        Method::HEAD,
        &head_path,
        HeaderMap::new(),
        Bytes::new(),
    )
    .await?;
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            push_monolithic(conn, repo, &shared_layer).await?;
            shared.counters.requests.fetch_add(2, Relaxed);
        }
        other => bail!("HEAD {head_path} answered {other}"),
    }
    if n.is_multiple_of(2) {
        push_monolithic(conn, repo, &own).await?;
        shared.counters.requests.fetch_add(2, Relaxed);
    } else {
        let chunk = (own.data.len() / 3).max(1);
        push_chunked(conn, repo, &own, chunk).await?;
        shared
            .counters
            .requests
            .fetch_add(2 + own.data.len().div_ceil(chunk) as u64, Relaxed);
    }
    push_monolithic(conn, repo, &config).await?;
    shared.counters.requests.fetch_add(2, Relaxed);

    let layer = |b: &Blob| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": b.digest,
            "size": b.data.len(),
        })
    };
    let manifest = Bytes::from(serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.digest,
            "size": config.data.len(),
        },
        "layers": [layer(&shared_layer), layer(&own)],
    }))?);
    let tag = format!("i{n}");
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(MANIFEST_TYPE));
    let path = format!("/v2/{repo}/manifests/{tag}");
    let (status, body) = call(shared, conn, Method::PUT, &path, headers, manifest.clone()).await?;
    if status != StatusCode::CREATED {
        bail!(
            "PUT {path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    shared.counters.pushes.fetch_add(1, Relaxed);
    let pushed = Pushed {
        repo: repo.to_owned(),
        tag,
        manifest_digest: digest(&manifest),
        manifest,
        blobs: vec![config, shared_layer, own],
    };
    shared
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(n, Arc::new(pushed));
    Ok(())
}

/// Pulls live images by tag or by digest and checks every byte.
async fn puller(shared: Arc<Shared>, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let mut conn = Conn::open(&shared.endpoint).await?;
    while !shared.stop.load(Relaxed) {
        let Some(image) = shared.pick_live(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if let Err(e) = pull(&shared, &mut conn, &image, rng.below(2) == 0).await {
            shared.fail(format!("pull of {}:{}: {e:#}", image.repo, image.tag));
        }
    }
    Ok(())
}

async fn pull(shared: &Shared, conn: &mut Conn, image: &Pushed, by_tag: bool) -> Result<()> {
    let reference = if by_tag {
        &image.tag
    } else {
        &image.manifest_digest
    };
    let path = format!("/v2/{}/manifests/{reference}", image.repo);
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_TYPE));
    let (status, body) = call(shared, conn, Method::GET, &path, headers, Bytes::new()).await?;
    if !expected(shared, image, status, &body, &path)? {
        return Ok(());
    }
    if body != image.manifest {
        bail!("GET {path}: the manifest differs from the one pushed");
    }
    for blob in &image.blobs {
        let path = format!("/v2/{}/blobs/{}", image.repo, blob.digest);
        let (status, body) = call(
            shared,
            conn,
            Method::GET,
            &path,
            HeaderMap::new(),
            Bytes::new(),
        )
        .await?;
        if !expected(shared, image, status, &body, &path)? {
            return Ok(());
        }
        if digest(&body) != blob.digest {
            bail!(
                "GET {path}: {} bytes that do not hash to the digest",
                body.len()
            );
        }
    }
    shared.counters.pulls.fetch_add(1, Relaxed);
    Ok(())
}

/// True for a 200; false for a 404 of an image being deleted; an error otherwise.
fn expected(
    shared: &Shared,
    image: &Pushed,
    status: StatusCode,
    body: &[u8],
    path: &str,
) -> Result<bool> {
    if status == StatusCode::OK {
        return Ok(true);
    }
    if status == StatusCode::NOT_FOUND && shared.is_doomed(&image.manifest_digest) {
        shared.counters.raced_delete.fetch_add(1, Relaxed);
        return Ok(false);
    }
    let text = String::from_utf8_lossy(body);
    if text.contains("BLOB_UNKNOWN") {
        shared.counters.blob_unknown.fetch_add(1, Relaxed);
    }
    Err(anyhow!("GET {path} answered {status}: {text}"))
}

/// Deletes the oldest images beyond `keep` (by digest, which also removes the tag).
async fn deleter(shared: Arc<Shared>) -> Result<()> {
    let mut conn = Conn::open(&shared.endpoint).await?;
    while !shared.stop.load(Relaxed) {
        let oldest = {
            let live = shared.live.lock().unwrap_or_else(|e| e.into_inner());
            if live.len() > shared.keep {
                live.iter().next().map(|(n, p)| (*n, p.clone()))
            } else {
                None
            }
        };
        let Some((n, image)) = oldest else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        shared
            .doomed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(image.manifest_digest.clone());
        let path = format!("/v2/{}/manifests/{}", image.repo, image.manifest_digest);
        match call(
            &shared,
            &mut conn,
            Method::DELETE,
            &path,
            HeaderMap::new(),
            Bytes::new(),
        )
        .await
        {
            Ok((StatusCode::ACCEPTED, _)) => {
                shared.counters.deletes.fetch_add(1, Relaxed);
            }
            Ok((status, body)) => shared.fail(format!(
                "DELETE {path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            )),
            Err(e) => shared.fail(format!("DELETE {path}: {e:#}")),
        }
        shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&n);
        // Pullers that picked the image before may still ask for it; its digest stays
        // doomed (the set grows by one entry per delete).
    }
    Ok(())
}

/// Once a second: a new token on one repository, a pull with a bearer token it got,
/// its scope map narrowed (the next pull with the same bearer token must be refused
/// at once), the token and its scope map deleted.
async fn churner(shared: Arc<Shared>, realm: String, service: String) -> Result<()> {
    let mut conn = Conn::open(&shared.endpoint).await?;
    let mut rng = Rng::new(77);
    let mut round = 0u64;
    while !sleep_unless_stopped(&shared, Duration::from_secs(1)).await {
        round += 1;
        let Some(image) = shared.pick_live(&mut rng) else {
            continue;
        };
        if let Err(e) = churn(&shared, &mut conn, round, &image, &realm, &service).await {
            shared.fail(format!("token churn round {round}: {e:#}"));
        }
    }
    Ok(())
}

async fn churn(
    shared: &Shared,
    conn: &mut Conn,
    round: u64,
    image: &Pushed,
    realm: &str,
    service: &str,
) -> Result<()> {
    let name = format!("churn{round}");
    let password =
        create_token(conn, &name, &["content/read", "metadata/read"], &image.repo).await?;
    shared.counters.admin_changes.fetch_add(1, Relaxed);
    let token_path = format!(
        "{realm}?service={service}&scope=repository:{}:pull",
        image.repo
    );
    let auth = bearer(conn, &token_path, &basic(&name, &password)?).await?;
    shared.counters.bearer_tokens.fetch_add(1, Relaxed);
    let path = format!("/v2/{}/manifests/{}", image.repo, image.manifest_digest);
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, auth);
    headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_TYPE));
    let (status, body) = call(
        shared,
        conn,
        Method::HEAD,
        &path,
        headers.clone(),
        Bytes::new(),
    )
    .await?;
    // A 404 when the image was deleted meanwhile; the narrowing check still runs.
    expected(shared, image, status, &body, &path)?;

    let scope_map = format!("/admin/v1/scope-maps/{name}-scope-map");
    let narrow = serde_json::json!({
        "removeRepository": [{"repository": image.repo, "actions": ["content/read"]}],
    });
    let (status, body) = admin(conn, Method::PATCH, &scope_map, Some(narrow)).await?;
    if !status.is_success() {
        bail!(
            "PATCH {scope_map} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    shared.counters.admin_changes.fetch_add(1, Relaxed);
    let (status, _) = call(shared, conn, Method::HEAD, &path, headers, Bytes::new()).await?;
    if status.is_success() {
        bail!(
            "HEAD {path} with a bearer token whose scope map lost content/read answered {status}"
        );
    }

    for path in [format!("/admin/v1/tokens/{name}"), scope_map] {
        let (status, body) = admin(conn, Method::DELETE, &path, None).await?;
        if !status.is_success() {
            bail!(
                "DELETE {path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        shared.counters.admin_changes.fetch_add(1, Relaxed);
    }
    Ok(())
}

fn markdown(r: &SoakReport) -> String {
    let first = r.samples.first();
    let last = r.samples.last();
    let (rss, fds) = r.samples.iter().fold((0f64, 0u64), |(rss, fds), s| {
        (rss.max(s.rss_mib), fds.max(s.open_fds))
    });
    let mut md = format!(
        "# Soak\n\n`{}` ({}): {:.0} minutes against `portcullis serve` (bundled store, \
         release build), {} repositories, {} pushers, {} pullers, a deleter, a token churner; \
         the gateway's GC every {} s with a {} s grace.\n\n",
        r.command,
        r.date,
        r.minutes,
        r.repositories,
        r.pushers,
        r.pullers,
        r.gc_interval_seconds,
        r.gc_grace_seconds
    );
    md.push_str("| figure | value |\n|---|---:|\n");
    for (k, v) in [
        ("requests", r.requests),
        ("failed requests", r.failures),
        (
            "`blob unknown` for referenced content",
            r.blob_unknown_for_live_content,
        ),
        (
            "404 for an image being deleted (expected)",
            r.raced_with_delete,
        ),
        ("images pushed", r.pushes),
        ("images pulled and verified", r.pulls),
        ("images deleted", r.deletes),
        ("token / scope-map changes", r.admin_changes),
        ("bearer tokens issued", r.bearer_tokens),
    ] {
        md.push_str(&format!("| {k} | {v} |\n"));
    }
    if let (Some(f), Some(l)) = (first, last) {
        md.push_str(&format!(
            "| RSS first / last / peak sample (MiB) | {:.1} / {:.1} / {rss:.1} |\n\
             | open descriptors first / last / peak | {} / {} / {fds} |\n",
            f.rss_mib, l.rss_mib, f.open_fds, l.open_fds
        ));
    }
    // Flat means the second half adds (next to) nothing: its first and last samples.
    if let (Some(h), Some(l)) = (r.samples.get(r.samples.len() / 2), last) {
        let span = format!("minute {:.0} → {:.0}", h.seconds / 60.0, l.seconds / 60.0);
        let change = |from: f64, to: f64| format!("{from:.1} → {to:.1} ({:+.1})", to - from);
        md.push_str(&format!(
            "| RSS over the second half, {span} (MiB) | {} |\n\
             | caches bounded by bytes, weighed, {span} (MiB) | {} |\n",
            change(h.rss_mib, l.rss_mib),
            change(h.cache_mib, l.cache_mib)
        ));
        md.push_str("\nCaches at the last sample (`/metrics`):\n\n| cache | entries | bytes (weighed) |\n|---|---:|---:|\n");
        for (name, c) in &l.caches {
            let bytes = c.bytes.map_or_else(|| "—".to_owned(), |b| b.to_string());
            md.push_str(&format!("| {name} | {} | {bytes} |\n", c.entries));
        }
    }
    md.push_str("\n![RSS, cache contents and open descriptors](soak.png)\n");
    if !r.first_failures.is_empty() {
        md.push_str("\nFirst failures:\n\n");
        for f in &r.first_failures {
            md.push_str(&format!("- {f}\n"));
        }
    }
    md
}

type Series = (&'static str, fn(&Sample) -> f64, RGBColor);

/// RSS with the caches' weighed bytes in one panel, open descriptors in the other.
fn plot(r: &SoakReport, path: &Path) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 1));
    let end = r.samples.last().map_or(1.0, |s| s.seconds.max(1.0)) / 60.0;
    let memory: [Series; 2] = [
        ("gateway RSS", |s| s.rss_mib, RGBColor(31, 119, 180)),
        (
            "caches bounded by bytes (weighed)",
            |s| s.cache_mib,
            RGBColor(44, 160, 44),
        ),
    ];
    let fds: [Series; 1] = [(
        "open file descriptors",
        |s| s.open_fds as f64,
        RGBColor(214, 39, 40),
    )];
    let contents: [(&str, &[Series]); 2] =
        [("memory (MiB)", &memory), ("open file descriptors", &fds)];
    for (panel, (caption, series)) in panels.iter().zip(contents) {
        let top = series
            .iter()
            .flat_map(|(_, value, _)| r.samples.iter().map(value))
            .fold(1.0f64, f64::max)
            * 1.3;
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..end, 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        for &(label, value, color) in series {
            chart
                .draw_series(LineSeries::new(
                    r.samples.iter().map(|s| (s.seconds / 60.0, value(s))),
                    color.stroke_width(2),
                ))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_gives_the_second_half() {
        let sample = |seconds: f64, rss_mib: f64, cache_mib: f64| Sample {
            seconds,
            rss_mib,
            open_fds: 30,
            requests: 0,
            failures: 0,
            cache_mib,
            caches: BTreeMap::from([(
                "manifests".to_owned(),
                CacheGauges {
                    entries: 3,
                    bytes: Some(4200),
                },
            )]),
        };
        let report = SoakReport {
            command: "soak".into(),
            date: "today".into(),
            minutes: 2.0,
            repositories: 1,
            pushers: 1,
            pullers: 1,
            gc_interval_seconds: 15,
            gc_grace_seconds: 30,
            requests: 0,
            failures: 0,
            blob_unknown_for_live_content: 0,
            raced_with_delete: 0,
            pushes: 0,
            pulls: 0,
            deletes: 0,
            admin_changes: 0,
            bearer_tokens: 0,
            first_failures: vec![],
            samples: vec![
                sample(0.0, 30.0, 0.0),
                sample(60.0, 100.0, 20.0),
                sample(120.0, 101.5, 20.0),
            ],
        };
        let md = markdown(&report);
        for row in [
            "| RSS over the second half, minute 1 → 2 (MiB) | 100.0 → 101.5 (+1.5) |\n",
            "| caches bounded by bytes, weighed, minute 1 → 2 (MiB) | 20.0 → 20.0 (+0.0) |\n",
            "| manifests | 3 | 4200 |\n",
        ] {
            assert!(md.contains(row), "{row:?} missing from\n{md}");
        }
    }

    #[test]
    fn cache_gauges_are_read_per_cache() {
        let text = "# HELP portcullis_cache_bytes Estimated bytes\n\
                    portcullis_cache_bytes{cache=\"manifests\"} 4200\n\
                    portcullis_cache_entries{cache=\"manifests\"} 3\n\
                    portcullis_cache_entries{cache=\"upload_sessions\"} 5\n\
                    portcullis_cache_lookups_total{cache=\"authn\",result=\"hit\"} 9\n";
        let caches = cache_gauges(text);
        assert_eq!(caches.len(), 2, "{caches:?}");
        assert_eq!(caches["manifests"].entries, 3);
        assert_eq!(caches["manifests"].bytes, Some(4200));
        assert_eq!(caches["upload_sessions"].entries, 5);
        assert_eq!(caches["upload_sessions"].bytes, None);
    }
}
