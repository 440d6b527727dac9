//! `portcullis fsck` on a real data directory: a gateway stores an image, a scope map and
//! a trust publish and stops; fsck finds it clean; then each kind of damage, made on a
//! copy of the directory, fails the check with a report naming the damaged thing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use portcullis_test_support::content::TestImage;
use portcullis_test_support::gateway::{ADMIN_PASSWORD, Server, bin};
use portcullis_test_support::trust::{Fixture, TrustGateway};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use reqwest::StatusCode;

/// The store's tag table (`storage-backend/src/meta/redb_store.rs`).
const TAGS: TableDefinition<(&str, &str), &str> = TableDefinition::new("tags");
/// The trust store's tables (`src/trust/store.rs`).
const TRUST_FILES: TableDefinition<(&str, &str, u64), (i64, &[u8])> =
    TableDefinition::new("trust_files");
const TRUST_CURRENT: TableDefinition<(&str, &str), u64> = TableDefinition::new("trust_current");

const REPO: &str = "fsck/app";

fn fsck(data: &Path, json: bool) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(["fsck", "--data-dir"]).arg(data);
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A copy of the data directory to damage.
fn copy_of(data: &Path, name: &str) -> PathBuf {
    let copy = data.with_file_name(name);
    let status = Command::new("cp")
        .arg("-a")
        .arg(data)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    copy
}

fn blob_path(data: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Fails with exit 1 and a PROBLEM line containing every one of `needles`.
fn assert_problem(data: &Path, needles: &[&str]) {
    let out = fsck(data, false);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "fsck of damaged {data:?}:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("PROBLEM") && needles.iter().all(|n| l.contains(n))),
        "no PROBLEM line with {needles:?}:\n{text}"
    );
}

#[test]
fn fsck_finds_a_clean_directory_clean_and_names_each_damage() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TrustGateway::start(dir.path(), &[]);
    let base = gateway.server.base.clone();
    let admin =
        |rb: reqwest::blocking::RequestBuilder| rb.basic_auth("admin", Some(ADMIN_PASSWORD));
    let image = TestImage::new("fsck");
    image.push(&gateway.http, &base, REPO, "v1", &admin);
    // A trust publish of the fixture's GUN, by a token allowed to sign.
    let fixture = Fixture::load();
    let password = gateway.token(
        "signer",
        "fixtures/*",
        &[
            "content/read",
            "content/write",
            "metadata/read",
            "trust/write",
        ],
    );
    let bearer = gateway.bearer(("signer", &password), &fixture.gun, "push,pull");
    let key = gateway.get(&fixture.gun, "tuf/timestamp.key", Some(&bearer));
    let bound = fixture.bind(&key.json().unwrap());
    let resp = gateway.post_update(&fixture.gun, &bearer, &bound.parts());
    assert_eq!(resp.status(), StatusCode::OK, "publish");
    let data = gateway.server.data_dir.clone();

    // While the server runs the files are its own: fsck cannot run (exit 2).
    let out = fsck(&data, false);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));
    gateway.server.stop();

    let out = fsck(&data, true);
    assert!(out.status.success(), "clean directory:\n{}", stdout(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["problems"], 0);
    assert_eq!(report["store"]["manifests"], 1);
    assert_eq!(report["store"]["tags"], 1);
    assert_eq!(report["store"]["blobs"], 2);
    assert_eq!(report["control"]["tokens"], 1);
    assert_eq!(report["control"]["trust_guns"], 1);
    let text = stdout(&fsck(&data, false));
    assert!(text.contains("clean: no problems found"), "{text}");

    // A blob whose bytes changed.
    let corrupt = copy_of(&data, "corrupt");
    let layer = portcullis_test_support::digest(&image.layer);
    let path = blob_path(&corrupt, &layer);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert_problem(&corrupt, &[&format!("blob {layer}"), "corrupt"]);
    assert_problem(&corrupt, &[&format!("manifest {REPO}@"), &layer]);

    // A blob a manifest references, gone.
    let missing = copy_of(&data, "missing");
    let config = portcullis_test_support::digest(&image.config);
    std::fs::remove_file(blob_path(&missing, &config)).unwrap();
    assert_problem(&missing, &[&format!("blob {config}"), "missing"]);
    assert_problem(
        &missing,
        &[&format!("manifest {REPO}@"), "references blob", &config],
    );

    // A tag pointing at no manifest.
    let dangling = copy_of(&data, "dangling");
    let nothing = format!("sha256:{}", "0".repeat(64));
    {
        let db = redb::Database::open(dangling.join("meta.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(TAGS)
            .unwrap()
            .insert((REPO, "dangling"), nothing.as_str())
            .unwrap();
        tx.commit().unwrap();
    }
    assert_problem(&dangling, &[&format!("tag {REPO}:dangling"), &nothing]);

    // Trust metadata whose targets no longer match the snapshot.
    let trust = copy_of(&data, "trust");
    {
        let db = redb::Database::open(trust.join("control.redb")).unwrap();
        let version = db
            .begin_read()
            .unwrap()
            .open_table(TRUST_CURRENT)
            .unwrap()
            .get((fixture.gun.as_str(), "targets"))
            .unwrap()
            .unwrap()
            .value();
        let tx = db.begin_write().unwrap();
        {
            let mut files = tx.open_table(TRUST_FILES).unwrap();
            let key = (fixture.gun.as_str(), "targets", version);
            let (at, bytes) = {
                let row = files.get(key).unwrap().unwrap();
                let (at, bytes) = row.value();
                (at, bytes.to_vec())
            };
            let mut doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            doc["signed"]["targets"]["injected"] =
                serde_json::json!({"hashes": {"sha256": "AAAA"}, "length": 1});
            files
                .insert(key, (at, serde_json::to_vec(&doc).unwrap().as_slice()))
                .unwrap();
        }
        tx.commit().unwrap();
    }
    assert_problem(&trust, &[&format!("trust {}", fixture.gun)]);

    // Leftovers of an unfinished push are garbage, not problems.
    let leftovers = copy_of(&data, "leftovers");
    std::fs::write(leftovers.join("uploads/0b8e7c1e-leftover"), b"partial").unwrap();
    let stray = blob_path(&leftovers, &layer).with_file_name("stray.tmp");
    std::fs::write(&stray, b"x").unwrap();
    let out = fsck(&leftovers, false);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("garbage: uploads/"), "{text}");
    assert!(text.contains("stray.tmp"), "{text}");

    // Not a data directory at all: exit 2.
    let out = fsck(&dir.path().join("nowhere"), false);
    assert_eq!(out.status.code(), Some(2));

    // The original, after all this, still serves.
    let server = Server::start(&data, Some(ADMIN_PASSWORD));
    let resp = reqwest::blocking::Client::new()
        .head(server.url(&format!("/v2/{REPO}/manifests/v1")))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
