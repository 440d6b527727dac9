//! The crash campaign: for each iteration, start the gateway (TLS, content trust on) on
//! one data directory, drive concurrent writes — monolithic and chunked blob pushes,
//! manifest puts with tag overwrites, manifest deletes, scope-map updates over the admin
//! API, trust publishes (targets and snapshot signed with the fixture's keys) — and
//! `kill -9` it at a random moment. A ledger keeps every write the server acknowledged
//! (and the one write per key that was in flight at the kill, which may land either way).
//! Then `portcullis fsck` must find the crashed data directory clean, the server must
//! start again with no repair, and every acknowledged write must read back byte-exact
//! (tags and scope maps: the last acknowledged value or the in-flight one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::gateway::{ADMIN_PASSWORD, bin};
use crate::image::Prng;
use crate::oci::{OCI_MANIFEST, absolute, header, image_manifest, with_query};
use crate::trust::{Fixture, TrustGateway, multipart};

/// Writer threads of each kind.
const WORKERS: usize = 2;
const TAGS: [&str; 3] = ["t0", "t1", "t2"];
const SIGNER: &str = "chaos-signer";
const SIGNER_ACTIONS: &[&str] = &[
    "content/read",
    "content/write",
    "metadata/read",
    "trust/write",
];

/// What a campaign did.
#[derive(Debug, Default)]
pub struct Summary {
    pub iterations: usize,
    /// Writes acknowledged to a client over the whole campaign.
    pub acknowledged: usize,
    /// The same by kind of write.
    pub by_kind: BTreeMap<&'static str, usize>,
    /// Acknowledged writes checked after the restarts (each checked after every restart).
    pub checks: usize,
    /// Acknowledged writes missing or different after a restart (must be 0).
    pub lost: Vec<String>,
    pub elapsed: Duration,
}

/// Latest acknowledged value of a key and the write in flight at the kill, if any.
#[derive(Debug, Default, Clone)]
struct Slot {
    acked: Option<String>,
    in_flight: Option<String>,
}

#[derive(Default)]
struct Ledger {
    acknowledged: usize,
    by_kind: BTreeMap<&'static str, usize>,
    /// (repo, digest, size): blobs whose push was acknowledged, in order.
    blobs: Vec<(String, String, u64)>,
    /// How many of `blobs` a restart has read back already.
    blobs_checked: usize,
    /// (repo, digest) → bytes: manifests acknowledged and not since deleted.
    manifests: BTreeMap<(String, String), Vec<u8>>,
    /// (repo, digest): manifests whose delete was acknowledged.
    deleted: BTreeSet<(String, String)>,
    /// (repo, tag) → digest
    tags: BTreeMap<(String, String), Slot>,
    /// scope map → description
    scope_maps: BTreeMap<String, Slot>,
    /// targets version (as a string) of the published GUN
    trust: Slot,
    /// targets version → the bytes published
    trust_files: BTreeMap<u64, Vec<u8>>,
}

impl Ledger {
    fn ack(&mut self, kind: &'static str) {
        self.acknowledged += 1;
        *self.by_kind.entry(kind).or_default() += 1;
    }
}

/// Everything a writer thread needs.
struct Ctx {
    base: String,
    http: Client,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    fixture: Arc<Fixture>,
    bearer: String,
}

impl Ctx {
    fn admin(&self, rb: RequestBuilder) -> RequestBuilder {
        rb.basic_auth("admin", Some(ADMIN_PASSWORD))
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sends; `None` when the server went away (the kill) — any other failure before the
    /// kill fails the campaign.
    fn send(&self, what: &str, rb: RequestBuilder) -> Option<Response> {
        match rb.send() {
            Ok(r) => Some(r),
            Err(e) => {
                assert!(self.stopped(), "{what}: {e} before the kill");
                None
            }
        }
    }

    /// Sends and expects `status`; `None` after the kill.
    fn expect(&self, what: &str, status: u16, rb: RequestBuilder) -> Option<Response> {
        let r = self.send(what, rb)?;
        if r.status().as_u16() != status {
            let got = r.status();
            let body = r.text().unwrap_or_default();
            assert!(
                self.stopped() && got.is_server_error(),
                "{what}: {got} {body} (wanted {status})"
            );
            return None;
        }
        Some(r)
    }

    /// Monolithic (one POST with `?digest=`) or chunked (POST, PATCHes, PUT) blob push;
    /// true when acknowledged.
    fn push_blob(&self, repo: &str, data: &[u8], chunked: bool) -> bool {
        let digest = crate::digest(data);
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let acked = if chunked {
            let Some(r) = self.expect("POST upload", 202, self.admin(self.http.post(&url))) else {
                return false;
            };
            let mut at = absolute(&self.base, &header(r.headers(), "location").unwrap());
            let mut offset = 0;
            for chunk in data.chunks(data.len().div_ceil(3).max(1)) {
                let end = offset + chunk.len() - 1;
                let rb = self
                    .http
                    .patch(&at)
                    .header("content-type", "application/octet-stream")
                    .header("content-range", format!("{offset}-{end}"))
                    .body(chunk.to_vec());
                let Some(r) = self.expect("PATCH chunk", 202, self.admin(rb)) else {
                    return false;
                };
                at = absolute(&self.base, &header(r.headers(), "location").unwrap());
                offset = end + 1;
            }
            let rb = self.http.put(with_query(&at, "digest", &digest));
            self.expect("PUT upload", 201, self.admin(rb)).is_some()
        } else {
            let rb = self
                .http
                .post(with_query(&url, "digest", &digest))
                .header("content-type", "application/octet-stream")
                .body(data.to_vec());
            self.expect("monolithic POST", 201, self.admin(rb))
                .is_some()
        };
        if acked {
            let mut l = self.ledger.lock().unwrap();
            l.blobs.push((repo.to_owned(), digest, data.len() as u64));
            l.ack(if chunked {
                "chunked blob push"
            } else {
                "monolithic blob push"
            });
        }
        acked
    }

    /// Blobs of both kinds into `chaos/b<w>`, until the kill.
    fn blobs(&self, w: usize, rng: &mut Prng) {
        let repo = format!("chaos/b{w}");
        while !self.stopped() {
            let len = rng.range(1, 64 * 1024) as usize;
            let data = rng.bytes(len);
            let chunked = rng.range(0, 2) == 0;
            if !self.push_blob(&repo, &data, chunked) {
                return;
            }
        }
    }

    /// Images into `chaos/m<w>`: new manifests over the same few tags, and deletes of
    /// manifests no tag points at any more.
    fn manifests(&self, w: usize, rng: &mut Prng) {
        let repo = format!("chaos/m{w}");
        while !self.stopped() {
            let config = format!("{{\"n\":{}}}", rng.next_u64()).into_bytes();
            let len = rng.range(16, 16 * 1024) as usize;
            let layer = rng.bytes(len);
            if !self.push_blob(&repo, &config, false) || !self.push_blob(&repo, &layer, true) {
                return;
            }
            let manifest = image_manifest(OCI_MANIFEST, &config, &[&layer]);
            let digest = crate::digest(&manifest);
            let tag = TAGS[rng.range(0, TAGS.len() as u64) as usize];
            let key = (repo.clone(), tag.to_owned());
            self.ledger
                .lock()
                .unwrap()
                .tags
                .entry(key.clone())
                .or_default()
                .in_flight = Some(digest.clone());
            let rb = self
                .http
                .put(format!("{}/v2/{repo}/manifests/{tag}", self.base))
                .header("content-type", OCI_MANIFEST)
                .body(manifest.clone());
            if self.expect("PUT manifest", 201, self.admin(rb)).is_none() {
                return;
            }
            {
                let mut l = self.ledger.lock().unwrap();
                let slot = l.tags.entry(key).or_default();
                slot.acked = Some(digest.clone());
                slot.in_flight = None;
                l.manifests.insert((repo.clone(), digest), manifest);
                l.ack("manifest put (tag overwrite)");
            }
            if rng.range(0, 3) == 0 && !self.delete_untagged(&repo) {
                return;
            }
        }
    }

    /// Deletes one manifest of `repo` that no tag names (acknowledged or in flight).
    fn delete_untagged(&self, repo: &str) -> bool {
        let victim = {
            let mut l = self.ledger.lock().unwrap();
            let named: BTreeSet<String> = l
                .tags
                .iter()
                .filter(|((r, _), _)| r == repo)
                .flat_map(|(_, s)| s.acked.iter().chain(&s.in_flight).cloned())
                .collect();
            let victim = l
                .manifests
                .keys()
                .find(|(r, d)| r == repo && !named.contains(d))
                .cloned();
            // In flight: it may or may not survive the kill, so it is checked no more.
            victim.inspect(|v| {
                l.manifests.remove(v);
            })
        };
        let Some((repo, digest)) = victim else {
            return true;
        };
        let rb = self
            .http
            .delete(format!("{}/v2/{repo}/manifests/{digest}", self.base));
        if self
            .expect("DELETE manifest", 202, self.admin(rb))
            .is_none()
        {
            return false;
        }
        let mut l = self.ledger.lock().unwrap();
        l.deleted.insert((repo, digest));
        l.ack("manifest delete");
        true
    }

    /// Description updates of scope map `chaos-<w>` through the admin API.
    fn scope_maps(&self, w: usize, rng: &mut Prng) {
        let name = format!("chaos-{w}");
        while !self.stopped() {
            let description = format!("v{}", rng.next_u64());
            self.ledger
                .lock()
                .unwrap()
                .scope_maps
                .entry(name.clone())
                .or_default()
                .in_flight = Some(description.clone());
            let rb = self
                .http
                .patch(format!("{}/admin/v1/scope-maps/{name}", self.base))
                .json(&json!({"description": description}));
            if self
                .expect("PATCH scope map", 200, self.admin(rb))
                .is_none()
            {
                return;
            }
            let mut l = self.ledger.lock().unwrap();
            let slot = l.scope_maps.entry(name.clone()).or_default();
            slot.acked = Some(description);
            slot.in_flight = None;
            l.ack("scope-map update");
        }
    }

    fn trust_get(&self, role: &str) -> Option<Vec<u8>> {
        let url = format!(
            "{}/v2/{}/_trust/tuf/{role}.json",
            self.base, self.fixture.gun
        );
        let r = self.send("GET trust", self.http.get(url).bearer_auth(&self.bearer))?;
        match r.status() {
            StatusCode::OK => Some(r.bytes().unwrap().to_vec()),
            StatusCode::NOT_FOUND => Some(Vec::new()),
            s => panic!("GET {role}.json: {s}"),
        }
    }

    /// Trust publishes to the fixture's GUN: the first one root, targets and snapshot;
    /// then each a new targets version (one more target) and a snapshot over it.
    fn trust(&self, rng: &mut Prng) {
        let f = &self.fixture;
        while !self.stopped() {
            let Some(root) = self.trust_get("root") else {
                return;
            };
            let (parts, version, targets) = if root.is_empty() {
                let url = format!("{}/v2/{}/_trust/tuf/timestamp.key", self.base, f.gun);
                let Some(r) = self.send(
                    "timestamp.key",
                    self.http.get(url).bearer_auth(&self.bearer),
                ) else {
                    return;
                };
                let key: Value = r.json().unwrap();
                let bound = f.bind(&key);
                let version = Fixture::signed(&bound.targets)["version"].as_u64().unwrap();
                let targets = bound.targets.clone();
                let parts = vec![
                    ("root".to_owned(), bound.root),
                    ("targets".to_owned(), bound.targets),
                    ("snapshot".to_owned(), bound.snapshot),
                ];
                (parts, version, targets)
            } else {
                let (Some(current), Some(snapshot)) =
                    (self.trust_get("targets"), self.trust_get("snapshot"))
                else {
                    return;
                };
                let mut signed = Fixture::signed(&current);
                let version = signed["version"].as_u64().unwrap() + 1;
                signed["version"] = json!(version);
                let content = rng.next_u64().to_le_bytes();
                signed["targets"][format!("chaos-{version}")] = json!({
                    "hashes": {"sha256": base64::engine::general_purpose::STANDARD
                        .encode(Sha256::digest(content))},
                    "length": content.len(),
                });
                let targets = f.targets_key.file(&signed);
                let snapshot_version = Fixture::signed(&snapshot)["version"].as_u64().unwrap();
                let base_version = Fixture::signed(&f.snapshot)["version"].as_u64().unwrap();
                let snapshot = f.snapshot_for(&root, &targets, snapshot_version + 1 - base_version);
                let parts = vec![
                    ("targets".to_owned(), targets.clone()),
                    ("snapshot".to_owned(), snapshot),
                ];
                (parts, version, targets)
            };
            {
                let mut l = self.ledger.lock().unwrap();
                l.trust.in_flight = Some(version.to_string());
                l.trust_files.insert(version, targets);
            }
            let borrowed: Vec<(&str, &[u8])> = parts
                .iter()
                .map(|(n, b)| (n.as_str(), b.as_slice()))
                .collect();
            let (content_type, body) = multipart(&borrowed);
            let rb = self
                .http
                .post(format!("{}/v2/{}/_trust/tuf/", self.base, f.gun))
                .bearer_auth(&self.bearer)
                .header("content-type", content_type)
                .body(body);
            if self.expect("trust publish", 200, rb).is_none() {
                return;
            }
            let mut l = self.ledger.lock().unwrap();
            l.trust.acked = Some(version.to_string());
            l.trust.in_flight = None;
            l.ack("trust publish");
        }
    }
}

/// Runs `iterations` crash iterations in `dir` (a fresh directory); `progress` after each.
pub fn run(dir: &Path, iterations: usize, mut progress: impl FnMut(usize, &Summary)) -> Summary {
    let started = Instant::now();
    let fixture = Arc::new(Fixture::load());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = Prng::from_time();
    let mut summary = Summary::default();
    // The admin may not sign; a token with `trust/write` publishes.
    let mut signer = String::new();
    for iteration in 1..=iterations {
        let mut gateway = TrustGateway::start(dir, &[]);
        if iteration == 1 {
            signer = gateway.token(SIGNER, "fixtures/*", SIGNER_ACTIONS);
        }
        let base = gateway.server.base.clone();
        let bearer = gateway
            .bearer((SIGNER, &signer), &fixture.gun, "push,pull")
            .jwt;
        let ctx = |stop: &Arc<AtomicBool>| Ctx {
            base: base.clone(),
            http: gateway.http.clone(),
            stop: Arc::clone(stop),
            ledger: Arc::clone(&ledger),
            fixture: Arc::clone(&fixture),
            bearer: bearer.clone(),
        };
        if iteration > 1 {
            // The restart: everything acknowledged before the kill reads back.
            verify(
                &ctx(&Arc::new(AtomicBool::new(false))),
                &mut summary,
                false,
                &mut rng,
            );
        } else {
            for w in 0..WORKERS {
                let c = ctx(&Arc::new(AtomicBool::new(false)));
                let rb = c
                    .http
                    .post(format!("{base}/admin/v1/scope-maps"))
                    .json(&json!({"name": format!("chaos-{w}"), "actions": ["repositories/chaos/*/content/read"]}));
                c.expect("create scope map", 201, c.admin(rb));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for w in 0..WORKERS {
            for kind in 0..3 {
                let c = ctx(&stop);
                let mut r = Prng::new(rng.next_u64());
                threads.push(std::thread::spawn(move || match kind {
                    0 => c.blobs(w, &mut r),
                    1 => c.manifests(w, &mut r),
                    _ => c.scope_maps(w, &mut r),
                }));
            }
        }
        let c = ctx(&stop);
        let mut r = Prng::new(rng.next_u64());
        threads.push(std::thread::spawn(move || c.trust(&mut r)));
        std::thread::sleep(Duration::from_millis(rng.range(200, 2000)));
        stop.store(true, Ordering::SeqCst);
        gateway.server.kill();
        for t in threads {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        let fsck = Command::new(bin())
            .args(["fsck", "--data-dir"])
            .arg(dir.join("data"))
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "iteration {iteration}: fsck after kill -9 failed ({}):\n{}{}",
            fsck.status,
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        summary.iterations = iteration;
        summary.acknowledged = ledger.lock().unwrap().acknowledged;
        summary.by_kind = ledger.lock().unwrap().by_kind.clone();
        summary.elapsed = started.elapsed();
        progress(iteration, &summary);
    }
    // The last kill's writes, checked after one more start.
    let gateway = TrustGateway::start(dir, &[]);
    let bearer = gateway
        .bearer((SIGNER, &signer), &fixture.gun, "push,pull")
        .jwt;
    verify(
        &Ctx {
            base: gateway.server.base.clone(),
            http: gateway.http.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            ledger: Arc::clone(&ledger),
            fixture,
            bearer,
        },
        &mut summary,
        true,
        &mut rng,
    );
    gateway.server.stop();
    summary.elapsed = started.elapsed();
    summary
}

/// Reads back every acknowledged write — of the blobs, the ones acknowledged since the
/// last restart and a sample of the older ones unless `all` — and settles in-flight keys
/// to what the server holds.
fn verify(c: &Ctx, summary: &mut Summary, all: bool, rng: &mut Prng) {
    let mut l = c.ledger.lock().unwrap();
    let mut lost = |what: String| summary.lost.push(what);
    let mut checks = 0;
    let older = l.blobs_checked;
    let mut picked: Vec<usize> = (older..l.blobs.len()).collect();
    if all {
        picked.extend(0..older);
    } else if older > 0 {
        picked.extend((0..32).map(|_| rng.range(0, older as u64) as usize));
    }
    l.blobs_checked = l.blobs.len();
    for (repo, digest, size) in picked.into_iter().map(|i| &l.blobs[i]) {
        checks += 1;
        let r = c.admin(c.http.get(format!("{}/v2/{repo}/blobs/{digest}", c.base)));
        let r = r.send().unwrap();
        let status = r.status();
        let body = r.bytes().unwrap();
        if status != StatusCode::OK || body.len() as u64 != *size || crate::digest(&body) != *digest
        {
            lost(format!(
                "blob {repo}@{digest}: {status}, {} bytes",
                body.len()
            ));
        }
    }
    for ((repo, digest), bytes) in &l.manifests {
        checks += 1;
        let r = c.admin(
            c.http
                .get(format!("{}/v2/{repo}/manifests/{digest}", c.base)),
        );
        let r = r.header("accept", OCI_MANIFEST).send().unwrap();
        let status = r.status();
        if status != StatusCode::OK || r.bytes().unwrap().as_ref() != bytes.as_slice() {
            lost(format!("manifest {repo}@{digest}: {status}"));
        }
    }
    for (repo, digest) in &l.deleted {
        checks += 1;
        let r = c.admin(
            c.http
                .head(format!("{}/v2/{repo}/manifests/{digest}", c.base)),
        );
        let status = r.header("accept", OCI_MANIFEST).send().unwrap().status();
        if status != StatusCode::NOT_FOUND {
            lost(format!(
                "deleted manifest {repo}@{digest} is back: {status}"
            ));
        }
    }
    let mut tags = std::mem::take(&mut l.tags);
    for ((repo, tag), slot) in tags.iter_mut() {
        checks += 1;
        let r = c.admin(c.http.head(format!("{}/v2/{repo}/manifests/{tag}", c.base)));
        let r = r.header("accept", OCI_MANIFEST).send().unwrap();
        let now = (r.status() == StatusCode::OK)
            .then(|| header(r.headers(), "docker-content-digest"))
            .flatten();
        settle(&format!("tag {repo}:{tag}"), slot, now, &mut lost);
    }
    l.tags = tags;
    let mut maps = std::mem::take(&mut l.scope_maps);
    for (name, slot) in maps.iter_mut() {
        checks += 1;
        let r = c.admin(c.http.get(format!("{}/admin/v1/scope-maps/{name}", c.base)));
        let body: Value = r.send().unwrap().json().unwrap();
        let now = body["description"].as_str().map(str::to_owned);
        settle(&format!("scope map {name}"), slot, now, &mut lost);
    }
    l.scope_maps = maps;
    if l.trust.acked.is_some() || l.trust.in_flight.is_some() {
        checks += 1;
        let targets = c.trust_get("targets").unwrap_or_default();
        let now = (!targets.is_empty())
            .then(|| Fixture::signed(&targets)["version"].as_u64())
            .flatten();
        let mut slot = l.trust.clone();
        settle(
            "trust targets",
            &mut slot,
            now.map(|v| v.to_string()),
            &mut lost,
        );
        if let Some(v) = now
            && l.trust_files.get(&v).is_some_and(|b| *b != targets)
        {
            lost(format!(
                "trust targets v{v}: bytes differ from the ones published"
            ));
        }
        l.trust = slot;
    }
    summary.checks += checks;
}

/// A key's value after a restart must be the acknowledged one or the one in flight; the
/// ledger then holds what the server has.
fn settle(what: &str, slot: &mut Slot, now: Option<String>, lost: &mut impl FnMut(String)) {
    let fine = now == slot.acked || (now.is_some() && now == slot.in_flight);
    if !fine {
        lost(format!(
            "{what}: {now:?}, acknowledged {:?}, in flight {:?}",
            slot.acked, slot.in_flight
        ));
    }
    slot.acked = now;
    slot.in_flight = None;
}
