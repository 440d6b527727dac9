//! `portcullis-storage migrate`: content pushed to a server on a local data directory is
//! copied to a real SeaweedFS + PostgreSQL, then served from there byte-exact by a
//! server that has nothing else; a corrupted local blob is refused (with what needs it),
//! and the copy is resumable — killed while it copies, it finishes on the next run, and
//! a run after that copies nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::image::{Prng, config_of, error_code, get_manifest};
use common::oci::{
    OCI_INDEX, OCI_MANIFEST, artifact_manifest, image_manifest, index_manifest, push_blob,
    put_manifest,
};
use common::{Server, bin, client, digest};
use portcullis_test_support::postgres::Postgres;
use portcullis_test_support::seaweedfs::{S3Target, SeaweedFs};

const MIB: usize = 1 << 20;

/// A manifest pushed to the local server, as the migrated one must serve it.
struct Pushed {
    repo: &'static str,
    reference: String,
    bytes: Vec<u8>,
    blobs: Vec<Vec<u8>>,
}

fn migrate(data_dir: &Path, target: &S3Target, database: &str) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("migrate")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--storage", &target.url, "--metadata", database])
        .envs(target.env());
    cmd
}

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "migrate ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out, stdout)
}

/// `<data-dir>/blobs/sha256/<aa>/<hex>`
fn blob_file(data_dir: &Path, data: &[u8]) -> std::path::PathBuf {
    let d = digest(data);
    let hex = d.trim_start_matches("sha256:");
    data_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Pushes images, an index over two of them, a referrer, a blob only linked, and an
/// image whose layer is then corrupted on disk (returned apart).
fn push_all(base: &str) -> (Vec<Pushed>, Vec<u8>, Pushed) {
    let c = client();
    let mut rng = Prng::new(23);
    let mut pushed = Vec::new();
    let mut image = |repo: &'static str, reference: &str, layers: Vec<Vec<u8>>| {
        let config = config_of(&mut rng);
        for b in layers.iter().chain([&config]) {
            push_blob(&c, base, repo, b);
        }
        let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        let bytes = image_manifest(OCI_MANIFEST, &config, &refs);
        let resp = put_manifest(&c, base, repo, reference, OCI_MANIFEST, &bytes);
        assert_eq!(resp.status(), 201, "PUT {repo}:{reference}");
        let mut blobs = layers;
        blobs.push(config);
        Pushed {
            repo,
            reference: reference.to_owned(),
            bytes,
            blobs,
        }
    };
    let shared = Prng::new(5).bytes(3000);
    // 9 MiB: copied to S3 as a multipart upload.
    let app = image(
        "mig/app",
        "v1",
        vec![Prng::new(6).bytes(9 * MIB), shared.clone()],
    );
    let arm = image("mig/app", "v1-arm", vec![Prng::new(7).bytes(4000)]);
    let other = image("mig/other", "latest", vec![shared, Prng::new(8).bytes(100)]);
    let broken = image("mig/broken", "v1", vec![Prng::new(9).bytes(5000)]);

    let index = index_manifest(
        OCI_INDEX,
        &[(OCI_MANIFEST, &app.bytes), (OCI_MANIFEST, &arm.bytes)],
    );
    let resp = put_manifest(&c, base, "mig/app", "multi", OCI_INDEX, &index);
    assert_eq!(resp.status(), 201);
    // Untagged once the index is there: reachable by digest only.
    let resp = c
        .delete(format!("{base}/v2/mig/app/manifests/v1-arm"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202);
    let signature = b"signature bytes".to_vec();
    push_blob(&c, base, "mig/app", &signature);
    push_blob(&c, base, "mig/app", b"{}");
    let referrer = artifact_manifest(
        Some("application/vnd.example.sig"),
        "application/vnd.oci.empty.v1+json",
        &signature,
        &app.bytes,
    );
    let resp = put_manifest(
        &c,
        base,
        "mig/app",
        &digest(&referrer),
        OCI_MANIFEST,
        &referrer,
    );
    assert_eq!(resp.status(), 201);
    let lone = b"a blob no manifest needs".to_vec();
    push_blob(&c, base, "mig/lone", &lone);

    let arm = Pushed {
        reference: digest(&arm.bytes),
        ..arm
    };
    pushed.extend([
        app,
        arm,
        other,
        Pushed {
            repo: "mig/app",
            reference: "multi".into(),
            bytes: index,
            blobs: vec![],
        },
        Pushed {
            repo: "mig/app",
            reference: digest(&referrer),
            bytes: referrer,
            blobs: vec![signature, b"{}".to_vec()],
        },
    ]);
    (pushed, lone, broken)
}

/// Numbers of the summary line: `key` followed by its count, e.g. "blobs 3 copied".
fn count(report: &str, what: &str) -> usize {
    let line = report
        .lines()
        .find(|l| l.starts_with("migrate:"))
        .unwrap_or_else(|| panic!("no summary in {report:?}"));
    let at = line
        .find(what)
        .unwrap_or_else(|| panic!("{what:?} not in {line:?}"));
    line[at + what.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn local_store_moves_to_s3_and_postgres_verified_and_resumable() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    let server = Server::start_in(&local, &["--gc-interval-seconds", "0"]);
    let (pushed, lone, broken) = push_all(&server.url);
    server.stop();
    // Same size, one byte changed: only hashing finds it.
    let bad_layer = &broken.blobs[0];
    let file = blob_file(&local, bad_layer);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let s3 = SeaweedFs::shared();
    let target = s3.target();
    let database = Postgres::shared().database();
    let prefix = target.url.splitn(4, '/').nth(3).unwrap().to_owned();

    // Killed as soon as the first blob is in the bucket.
    let mut child = migrate(&local, &target, &database)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && s3.keys(&prefix).is_empty() {
        assert!(Instant::now() < deadline, "migrate copied nothing in 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child.wait().unwrap();
    let copied_before = s3.keys(&prefix).len();

    let (out, report) = run(&mut migrate(&local, &target, &database));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a corrupted blob must fail the run"
    );
    assert!(
        report.contains(&format!("not copied: blob {}: corrupt", digest(bad_layer))),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "not copied: manifest mig/broken@{}",
            digest(&broken.bytes)
        )),
        "{report}"
    );
    // 12 distinct blobs were pushed; the corrupted one is refused.
    assert_eq!(
        count(&report, "blobs ") + count(&report, "bytes), "),
        11,
        "{report}"
    );
    assert_eq!(count(&report, "bytes), "), copied_before, "{report}");

    let (out, again) = run(&mut migrate(&local, &target, &database));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(count(&again, "blobs "), 0, "{again}");
    assert_eq!(count(&again, "manifests "), 0, "{again}");
    assert_eq!(count(&again, "blob links "), 0, "{again}");

    // A server with nothing but the bucket and the database serves everything.
    let env = target.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_in_with_env(
        &tmp.path().join("empty"),
        &["--storage", &target.url, "--metadata", &database],
        &env,
    );
    let c = client();
    for p in &pushed {
        let (status, _, body) = get_manifest(&c, &server.url, p.repo, &p.reference);
        assert_eq!(status, 200, "{}:{}", p.repo, p.reference);
        assert_eq!(body, p.bytes, "{}:{} byte-exact", p.repo, p.reference);
        for b in &p.blobs {
            let resp = c
                .get(format!("{}/v2/{}/blobs/{}", server.url, p.repo, digest(b)))
                .send()
                .unwrap();
            assert_eq!(resp.status(), 200, "{} blob {}", p.repo, digest(b));
            assert!(resp.bytes().unwrap() == b.as_slice(), "blob {}", digest(b));
        }
    }
    let tags: serde_json::Value = c
        .get(format!("{}/v2/mig/app/tags/list", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["multi", "v1"]));
    let referrers: serde_json::Value = c
        .get(format!(
            "{}/v2/mig/app/referrers/{}",
            server.url,
            digest(&pushed[0].bytes)
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        referrers["manifests"][0]["digest"],
        serde_json::json!(digest(&pushed[4].bytes))
    );
    let resp = c
        .head(format!(
            "{}/v2/mig/lone/blobs/{}",
            server.url,
            digest(&lone)
        ))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "a blob linked without a manifest");
    let resp = c
        .get(format!("{}/v2/mig/broken/manifests/v1", server.url))
        .send()
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), error_code(resp)),
        (404, "MANIFEST_UNKNOWN".into())
    );
    let resp = c
        .get(format!(
            "{}/v2/mig/broken/blobs/{}",
            server.url,
            digest(bad_layer)
        ))
        .send()
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), error_code(resp)),
        (404, "BLOB_UNKNOWN".into())
    );
    assert!(
        s3.keys(&prefix)
            .iter()
            .all(|k| !k.ends_with(digest(bad_layer).trim_start_matches("sha256:"))),
        "the corrupted bytes reached the bucket"
    );
}

/// Without a target on both S3 and PostgreSQL there is nothing to migrate to.
#[test]
fn migrate_names_the_missing_target() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["migrate", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--storage") && stderr.contains("--metadata"),
        "{stderr}"
    );
}
