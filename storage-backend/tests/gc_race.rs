//! Garbage collection against concurrent pushes, and the offline `gc` command.
//! Several threads push images (re-uploading blobs from a shared pool, so blobs
//! keep becoming orphaned and referenced again; tags overwritten or deleted so
//! manifests become untagged) while the background GC runs every second with a
//! 2 s grace period. No push may fail with MANIFEST_BLOB_UNKNOWN, every tagged
//! manifest's blobs must be intact at the end, and GC must have deleted the
//! untagged manifests and their orphaned blobs — so the test fails both ways. The race
//! runs with the metadata in redb and in PostgreSQL, and with blobs on S3 (SeaweedFS)
//! beside PostgreSQL while a second process runs online dry runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::image;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::oci::{OCI_INDEX, OCI_MANIFEST, descriptor, image_manifest, push_blob, put_manifest};
use common::{Server, bin, client, digest};
use image::{Prng, check_repo, config_of, error_code, get_blob_digest, get_manifest, try_upload};
use portcullis_test_support::postgres::Postgres;
use portcullis_test_support::seaweedfs::{S3Target, SeaweedFs};

const REPOS: [&str; 2] = ["race/a", "race/b"];
const GRACE: Duration = Duration::from_secs(2);
const INTERVAL: Duration = Duration::from_secs(1);
const PUSH_FOR: Duration = Duration::from_secs(16);
/// How much longer pushes go on when GC has not yet collected a pool blob (a loaded
/// machine pushes slower or faster than expected): the race must be exercised.
const PUSH_AT_MOST: Duration = Duration::from_secs(45);

/// When pushing and sampling stop: after `PUSH_FOR`, once a pool blob was collected.
#[derive(Clone)]
struct Window {
    until: Instant,
    limit: Instant,
    raced: Arc<AtomicBool>,
}

impl Window {
    fn new() -> Window {
        let now = Instant::now();
        Window {
            until: now + PUSH_FOR,
            limit: now + PUSH_AT_MOST,
            raced: Arc::new(AtomicBool::new(false)),
        }
    }

    fn open(&self) -> bool {
        let now = Instant::now();
        now < self.until || (!self.raced.load(Ordering::Relaxed) && now < self.limit)
    }
}
const POOL: usize = 64;

/// Where the server keeps blob bytes, as the test looks at them.
enum BlobBytes {
    /// Files under the data directory.
    Dir(PathBuf),
    /// Objects `<prefix>/blobs/sha256/<hex>` of the test bucket.
    S3 { prefix: String },
}

impl BlobBytes {
    /// Whether each of `digests` has its bytes stored.
    fn present(&self, digests: &[String]) -> Vec<bool> {
        match self {
            BlobBytes::Dir(dir) => digests.iter().map(|d| blob_file(dir, d).exists()).collect(),
            BlobBytes::S3 { prefix } => {
                let keys: HashSet<String> = SeaweedFs::shared()
                    .keys(&format!("{prefix}/blobs"))
                    .into_iter()
                    .collect();
                digests
                    .iter()
                    .map(|d| {
                        let hex = d.trim_start_matches("sha256:");
                        keys.contains(&format!("{prefix}/blobs/sha256/{hex}"))
                    })
                    .collect()
            }
        }
    }
}

/// How often one of `digests` lost its bytes, sampled every 50 ms while `window` is
/// open.
fn count_disappearances(bytes: &BlobBytes, digests: &[String], window: &Window) -> usize {
    let mut present = bytes.present(digests);
    let mut count = 0;
    while window.open() {
        std::thread::sleep(Duration::from_millis(50));
        for (is, was) in bytes.present(digests).into_iter().zip(present.iter_mut()) {
            count += usize::from(*was && !is);
            *was = is;
        }
        if count > 0 {
            window.raced.store(true, Ordering::Relaxed);
        }
    }
    count
}

/// `<data-dir>/blobs/sha256/<aa>/<hex>`, where the server keeps a blob's bytes.
fn blob_file(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    data_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// A manifest that lost its tag: it and its own (unshared) blobs are garbage.
struct Untagged {
    repo: &'static str,
    manifest: String,
    own_blobs: Vec<String>,
    at: Instant,
}

/// Pushes while `window` is open: each image has a fresh config and layer plus two blobs
/// from the shared pool (all uploaded, which refreshes the pool blobs), and is
/// tagged `t<id>` (overwriting the previous one) or, one time in four, pushed
/// under a throwaway tag that is deleted at once. Returns the untagged
/// manifests, or the failures seen.
fn pusher(
    base: &str,
    id: usize,
    pool: &[Vec<u8>],
    window: &Window,
    mut rng: Prng,
) -> Result<Vec<Untagged>, String> {
    let c = client();
    let mut untagged = Vec::new();
    let mut current: [Option<Untagged>; 2] = [None, None];
    let mut n = 0;
    while window.open() {
        n += 1;
        let r = rng.range(0, 2) as usize;
        let repo = REPOS[r];
        let config = config_of(&mut rng);
        let fresh_len = rng.range(100, 50_000) as usize;
        let fresh = rng.bytes(fresh_len);
        let picks = [
            rng.range(0, pool.len() as u64),
            rng.range(0, pool.len() as u64),
        ];
        let shared = picks.map(|i| &pool[i as usize]);
        for blob in [&config, &fresh, shared[0], shared[1]] {
            let d = digest(blob);
            let resp = try_upload(&c, base, repo, &d, blob.clone()).map_err(|e| e.to_string())?;
            if resp.status() != 201 {
                return Err(format!(
                    "{repo}: blob PUT {d} answered {}: {}",
                    resp.status(),
                    resp.text().unwrap_or_default()
                ));
            }
        }
        let manifest = image_manifest(OCI_MANIFEST, &config, &[shared[0], shared[1], &fresh]);
        let throwaway = rng.range(0, 4) == 0;
        let tag = if throwaway {
            format!("tmp-{id}-{n}")
        } else {
            format!("t{id}")
        };
        let resp = put_manifest(&c, base, repo, &tag, OCI_MANIFEST, &manifest);
        if resp.status() != 201 {
            return Err(format!(
                "{repo}:{tag}: manifest PUT answered {}: {}",
                resp.status(),
                resp.text().unwrap_or_default()
            ));
        }
        let entry = Untagged {
            repo,
            manifest: digest(&manifest),
            own_blobs: vec![digest(&config), digest(&fresh)],
            at: Instant::now(),
        };
        if throwaway {
            let resp = c
                .delete(format!("{base}/v2/{repo}/manifests/{tag}"))
                .send()
                .map_err(|e| e.to_string())?;
            if resp.status() != 202 {
                return Err(format!(
                    "{repo}: DELETE tag {tag} answered {}",
                    resp.status()
                ));
            }
            untagged.push(Untagged {
                at: Instant::now(),
                ..entry
            });
        } else if let Some(previous) = current[r].replace(entry) {
            untagged.push(Untagged {
                at: Instant::now(),
                ..previous
            });
        }
    }
    Ok(untagged)
}

#[test]
fn background_gc_races_pushes_without_losing_referenced_blobs() {
    race_gc_against_pushes(&[], None);
}

/// The same race with the metadata in PostgreSQL, where GC and the pushes are separate
/// database transactions; then an online dry run from a second process beside the server.
#[test]
fn background_gc_races_pushes_with_metadata_in_postgres() {
    let url = Postgres::shared().database();
    let server = race_gc_against_pushes(&["--metadata", &url], None);
    let out = gc(
        &server.data_dir,
        &["--metadata", &url, "--grace-seconds", "0", "--dry-run"],
    );
    let report = assert_gc_ok(&out);
    assert!(report.starts_with("gc: would remove "), "{report}");
    for repo in REPOS {
        let problems = check_repo(&client(), &server.url, repo);
        assert!(
            problems.is_empty(),
            "a dry run changed something:\n{}",
            problems.join("\n")
        );
    }
}

/// The race on S3 + PostgreSQL, the stores several gateways share, with a second
/// process beside the server running online GC dry runs (which must change nothing)
/// the whole time.
#[test]
fn background_gc_races_pushes_on_s3_and_postgres() {
    let url = Postgres::shared().database();
    let target = SeaweedFs::shared().target();
    let args = ["--metadata", url.as_str(), "--storage", target.url.as_str()];
    let stop = Arc::new(AtomicBool::new(false));
    let dry_runs = {
        let (stop, target, args) = (stop.clone(), target.clone(), args.map(str::to_owned));
        std::thread::spawn(move || {
            let dir = tempfile::tempdir().unwrap();
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut gc_args: Vec<&str> = args.iter().map(String::as_str).collect();
                gc_args.extend(["--grace-seconds", "0", "--dry-run"]);
                let out = gc_with_env(dir.path(), &gc_args, &target.env());
                let report = assert_gc_ok(&out);
                assert!(report.starts_with("gc: would remove "), "{report}");
                runs += 1;
            }
            runs
        })
    };
    race_gc_against_pushes(&args, Some(&target));
    stop.store(true, Ordering::Relaxed);
    let runs = dry_runs.join().unwrap();
    assert!(runs > 0, "no dry run completed beside the pushes");
    eprintln!("{runs} online dry runs from a second process");
}

/// Pushes against background GC with `extra` arguments (`--metadata`, `--storage`) and,
/// for blobs on S3, `s3`'s credentials; returns the server, still running.
fn race_gc_against_pushes(extra: &[&str], s3: Option<&S3Target>) -> Server {
    let grace = GRACE.as_secs().to_string();
    let interval = INTERVAL.as_secs().to_string();
    let mut args = vec![
        "--gc-interval-seconds",
        &interval,
        "--gc-grace-seconds",
        &grace,
    ];
    args.extend_from_slice(extra);
    let env = s3.map(S3Target::env);
    let env: Vec<(&str, &str)> = env
        .iter()
        .flatten()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let server = Server::start_with_env(&args, &env);
    let bytes = Arc::new(match s3 {
        Some(t) => BlobBytes::S3 {
            prefix: prefix(t).to_owned(),
        },
        None => BlobBytes::Dir(server.data_dir.clone()),
    });
    let mut rng = Prng::from_time();
    // More pool blobs than the tagged manifests can reference at once, so some
    // are always orphaned, collected, and uploaded again.
    let pool: Arc<Vec<Vec<u8>>> = Arc::new((0..POOL).map(|_| rng.bytes(20_000)).collect());
    let window = Window::new();
    let pool_digests: Vec<String> = pool.iter().map(|b| digest(b)).collect();
    let sampler = {
        let (window, bytes) = (window.clone(), bytes.clone());
        std::thread::spawn(move || count_disappearances(&bytes, &pool_digests, &window))
    };
    let workers: Vec<_> = (0..4)
        .map(|id| {
            let (base, pool, r) = (server.url.clone(), pool.clone(), Prng::new(rng.next_u64()));
            let window = window.clone();
            std::thread::spawn(move || pusher(&base, id, &pool, &window, r))
        })
        .collect();
    let mut untagged = Vec::new();
    let mut failures = Vec::new();
    for w in workers {
        match w.join().unwrap() {
            Ok(u) => untagged.extend(u),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "pushes failed while GC ran:\n{}",
        failures.join("\n")
    );
    let pool_deletions = sampler.join().unwrap();
    assert!(
        pool_deletions > 0,
        "GC never collected a pool blob while pushes ran: no race was exercised"
    );

    let c = client();
    for repo in REPOS {
        let mut problems = check_repo(&c, &server.url, repo);
        // A pool blob the registry still admits to must have its bytes (GC must
        // not delete a file whose blob a concurrent upload just re-registered).
        for blob in pool.iter() {
            let d = digest(blob);
            if c.head(format!("{}/v2/{repo}/blobs/{d}", server.url))
                .send()
                .unwrap()
                .status()
                == 200
            {
                let (status, len, got) = get_blob_digest(&c, &server.url, repo, &d);
                if (status.as_u16(), len, &got) != (200, blob.len() as u64, &d) {
                    problems.push(format!(
                        "{repo}: pool blob {d} HEAD 200 but GET {status}, {len} bytes, {got}"
                    ));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "tagged content damaged by GC:\n{}",
            problems.join("\n")
        );
    }

    // Garbage older than grace + two passes must already be gone (GC ran during
    // the pushes); after waiting that long, all of it.
    let settle = GRACE + INTERVAL * 2 + Duration::from_millis(500);
    let stopped = Instant::now();
    let early: Vec<&Untagged> = untagged
        .iter()
        .filter(|u| stopped.duration_since(u.at) > settle)
        .collect();
    assert!(
        early.len() >= 10,
        "only {} manifests were untagged early enough to test GC",
        early.len()
    );
    assert_collected(&server, &bytes, &early, "during the pushes");
    std::thread::sleep(settle);
    assert_collected(
        &server,
        &bytes,
        &untagged.iter().collect::<Vec<_>>(),
        "after the pushes",
    );
    eprintln!("pool blobs whose bytes were deleted while pushes ran: {pool_deletions}");
    eprintln!(
        "{} untagged manifests collected, {} of them while pushes ran",
        untagged.len(),
        early.len()
    );
    for repo in REPOS {
        let problems = check_repo(&c, &server.url, repo);
        assert!(
            problems.is_empty(),
            "tagged content damaged by GC:\n{}",
            problems.join("\n")
        );
    }
    server
}

/// Every manifest in `garbage` answers 404 MANIFEST_UNKNOWN, its own blobs 404
/// BLOB_UNKNOWN, and their bytes are gone.
fn assert_collected(server: &Server, bytes: &BlobBytes, garbage: &[&Untagged], when: &str) {
    let c = client();
    let mut left = Vec::new();
    for u in garbage {
        let resp = c
            .get(format!(
                "{}/v2/{}/manifests/{}",
                server.url, u.repo, u.manifest
            ))
            .send()
            .unwrap();
        if resp.status() != 404 || error_code(resp) != "MANIFEST_UNKNOWN" {
            left.push(format!("{} manifest {}", u.repo, u.manifest));
        }
        for b in &u.own_blobs {
            let resp = c
                .get(format!("{}/v2/{}/blobs/{b}", server.url, u.repo))
                .send()
                .unwrap();
            if resp.status() != 404 || error_code(resp) != "BLOB_UNKNOWN" {
                left.push(format!("{} blob {b}", u.repo));
            }
            if bytes.present(std::slice::from_ref(b))[0] {
                left.push(format!("bytes of blob {b}"));
            }
        }
    }
    assert!(
        left.is_empty(),
        "GC left garbage {when} ({} items):\n{}",
        left.len(),
        left.join("\n")
    );
}

fn gc(data_dir: &Path, args: &[&str]) -> std::process::Output {
    gc_with_env(data_dir, args, &[])
}

/// `gc` with `env` added to its environment (S3 credentials).
fn gc_with_env(data_dir: &Path, args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    Command::new(bin())
        .arg("gc")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

/// The prefix of `target` inside the bucket.
fn prefix(target: &S3Target) -> &str {
    target.url.splitn(4, '/').nth(3).unwrap()
}

fn assert_gc_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "gc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn offline_gc_deletes_only_unreferenced_content() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start_in(dir, &["--gc-interval-seconds", "0"]);
    let c = client();
    let mut rng = Prng::from_time();
    let repo = "gc/app";
    let push = |data: &[u8]| push_blob(&c, &server.url, repo, data);

    // A: tagged. B: pushed under a tag that is then deleted. C: untagged but in
    // a tagged index. O: a blob no manifest references. S: shared by A and B.
    let (shared, only_a, only_b, layer_c, orphan) = (
        rng.bytes(5000),
        rng.bytes(6000),
        rng.bytes(7000),
        rng.bytes(8000),
        rng.bytes(9000),
    );
    let (config_a, config_b, config_c) = (
        config_of(&mut rng),
        config_of(&mut rng),
        config_of(&mut rng),
    );
    for blob in [
        &shared, &only_a, &only_b, &layer_c, &orphan, &config_a, &config_b, &config_c,
    ] {
        push(blob);
    }
    let a = image_manifest(OCI_MANIFEST, &config_a, &[&shared, &only_a]);
    let b = image_manifest(OCI_MANIFEST, &config_b, &[&shared, &only_b]);
    let child = image_manifest(OCI_MANIFEST, &config_c, &[&layer_c]);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, &child)],
    }))
    .unwrap();
    for (reference, media_type, bytes) in [
        ("keep", OCI_MANIFEST, &a),
        ("gone", OCI_MANIFEST, &b),
        (&*digest(&child), OCI_MANIFEST, &child),
        ("multi", OCI_INDEX, &index),
    ] {
        let resp = put_manifest(&c, &server.url, repo, reference, media_type, bytes);
        assert_eq!(resp.status(), 201, "PUT manifest {reference}");
    }
    assert_eq!(
        c.delete(format!("{}/v2/{repo}/manifests/gone", server.url))
            .send()
            .unwrap()
            .status(),
        202
    );

    let out = gc(dir, &["--grace-seconds", "0"]);
    assert!(
        !out.status.success(),
        "offline gc ran while the server held the database"
    );
    assert!(
        !out.stderr.is_empty(),
        "offline gc refused without saying why"
    );
    server.stop();

    let garbage = [&only_b, &orphan, &config_b];
    let kept = [&shared, &only_a, &layer_c, &config_a, &config_c];
    let files_exist =
        |blobs: &[&Vec<u8>]| blobs.iter().all(|b| blob_file(dir, &digest(b)).exists());
    assert!(
        files_exist(&garbage) && files_exist(&kept),
        "blob files missing before gc"
    );

    // Everything is younger than the default grace period, and a dry run deletes nothing.
    assert_gc_ok(&gc(dir, &[]));
    assert_gc_ok(&gc(dir, &["--grace-seconds", "0", "--dry-run"]));
    assert!(
        files_exist(&garbage) && files_exist(&kept),
        "gc deleted within the grace period or on a dry run"
    );

    let report = assert_gc_ok(&gc(dir, &["--grace-seconds", "0"]));
    eprintln!("gc printed: {report}");
    assert!(files_exist(&kept), "gc deleted referenced blobs");
    for b in garbage {
        assert!(
            !blob_file(dir, &digest(b)).exists(),
            "gc kept unreferenced blob {}",
            digest(b)
        );
    }

    let server = Server::start_in(dir, &[]);
    assert_eq!(get_manifest(&c, &server.url, repo, "keep").2, a);
    assert_eq!(get_manifest(&c, &server.url, repo, "multi").2, index);
    assert_eq!(
        get_manifest(&c, &server.url, repo, &digest(&child)).0,
        200,
        "a manifest in a tagged index was collected"
    );
    let resp = c
        .get(format!("{}/v2/{repo}/manifests/{}", server.url, digest(&b)))
        .send()
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), error_code(resp)),
        (404, "MANIFEST_UNKNOWN".to_owned()),
        "untagged manifest B"
    );
    for b in garbage {
        let resp = c
            .get(format!("{}/v2/{repo}/blobs/{}", server.url, digest(b)))
            .send()
            .unwrap();
        assert_eq!(
            (resp.status().as_u16(), error_code(resp)),
            (404, "BLOB_UNKNOWN".to_owned()),
            "collected blob"
        );
    }
    let problems = check_repo(&c, &server.url, repo);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    server.stop();
}

/// A deleted repository leaves its blob bytes to GC: the next pass (offline here)
/// removes the blobs only it had, and keeps those another repository still links.
#[test]
fn gc_collects_the_blobs_of_a_deleted_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start_in(dir, &["--gc-interval-seconds", "0"]);
    let c = client();
    let mut rng = Prng::from_time();
    let (shared, own_layer, config_a, config_b) = (
        rng.bytes(5000),
        rng.bytes(6000),
        config_of(&mut rng),
        config_of(&mut rng),
    );
    for blob in [&shared, &own_layer, &config_a] {
        push_blob(&c, &server.url, "gone/app", blob);
    }
    for blob in [&shared, &config_b] {
        push_blob(&c, &server.url, "kept/app", blob);
    }
    let a = image_manifest(OCI_MANIFEST, &config_a, &[&shared, &own_layer]);
    let b = image_manifest(OCI_MANIFEST, &config_b, &[&shared]);
    assert_eq!(
        put_manifest(&c, &server.url, "gone/app", "v1", OCI_MANIFEST, &a).status(),
        201
    );
    assert_eq!(
        put_manifest(&c, &server.url, "kept/app", "v1", OCI_MANIFEST, &b).status(),
        201
    );
    let r = c
        .delete(format!("{}/acr/v1/gone/app", server.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    server.stop();

    let own = [&own_layer, &config_a];
    let kept = [&shared, &config_b];
    let exists = |b: &Vec<u8>| blob_file(dir, &digest(b)).exists();
    assert!(
        own.iter().chain(&kept).all(|b| exists(b)),
        "the delete removed blob files itself"
    );
    assert_gc_ok(&gc(dir, &["--grace-seconds", "0"]));
    for b in own {
        assert!(
            !exists(b),
            "gc kept blob {} of the deleted repository",
            digest(b)
        );
    }
    for b in kept {
        assert!(
            exists(b),
            "gc deleted blob {} still linked elsewhere",
            digest(b)
        );
    }
}
