//! `portcullis serve --metadata postgres://…` against a real PostgreSQL 15 started here:
//! skopeo pushes and pulls an image through the gateway with the bundled store's metadata
//! in the database (none in the data directory), kept across a gateway restart; a
//! PostgreSQL stopped in the middle of a push (blobs on the local disk or on S3) gives
//! clients 503 `UNAVAILABLE` error JSON and leaves nothing half-written; a wrong
//! `--metadata` stops `serve` at start with a message that names the setting.
//! Two gateways on one database (and one S3 bucket) serve manifest GETs from their caches
//! without a statement and see each other's tag moves and deletes within moments
//! (NOTIFY); a lost change listener empties the cache.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::process::{Command, Output};

use common::backend::Storage;
use common::content::{self, TestImage, write_oci_layout};
use common::{ADMIN_PASSWORD, Server, admin};
use portcullis_test_support::oci::status_and_code;
use portcullis_test_support::postgres::{Postgres, psql};
use portcullis_test_support::seaweedfs::{S3Target, SeaweedFs};
use portcullis_test_support::skopeo_ok;
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::Value;

#[test]
fn skopeo_push_and_pull_with_metadata_in_postgres() {
    let url = Postgres::shared().database();
    let storage = Storage::default().postgres(url.clone());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = TestImage::new("postgres skopeo");
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, &[("v1", &image)]);
    let creds = format!("admin:{ADMIN_PASSWORD}");

    let server = storage.gateway(&data, &[]);
    let target = format!("docker://{}/pg/app:v1", server.host());
    skopeo_ok(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        "--preserve-digests",
        &format!("oci:{}:v1", layout.display()),
        &target,
    ]);
    // The metadata is in the database, not beside the blobs.
    assert!(!data.join("meta.redb").exists(), "no local metadata");
    assert_eq!(
        psql(
            &url,
            "SELECT digest FROM tags WHERE repo = 'pg/app' AND tag = 'v1'"
        ),
        image.digest()
    );
    assert_eq!(
        psql(
            &url,
            "SELECT count(*) FROM blob_links WHERE repo = 'pg/app'"
        ),
        "2"
    );
    server.stop();

    // A restarted gateway finds everything in the database.
    let server = storage.gateway(&data, &[]);
    let target = format!("docker://{}/pg/app:v1", server.host());
    let inspected: Value = serde_json::from_str(&skopeo_ok(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &creds,
        &target,
    ]))
    .unwrap();
    assert_eq!(inspected["Digest"], image.digest());
    let pulled = dir.path().join("pulled");
    skopeo_ok(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        "--preserve-digests",
        &target,
        &format!("oci:{}:v1", pulled.display()),
    ]);
    let hex = |d: &[u8]| content::digest(d).trim_start_matches("sha256:").to_owned();
    for blob in [&image.config, &image.layer, &image.manifest] {
        let path = pulled.join("blobs/sha256").join(hex(blob));
        assert_eq!(&std::fs::read(&path).unwrap(), blob, "{}", path.display());
    }
}

#[test]
fn postgres_stopped_during_a_push_is_503_and_nothing_half_written() {
    postgres_stopped_during_a_push(None);
}

#[test]
fn postgres_stopped_during_a_push_on_s3_is_503_and_nothing_half_written() {
    postgres_stopped_during_a_push(Some(SeaweedFs::shared().target()));
}

/// PostgreSQL stops after the blobs of a push were uploaded (to the data directory, or to
/// `s3` when given) and before its manifest: every request is refused 503 `UNAVAILABLE`,
/// and once PostgreSQL is back nothing of the failed requests is visible.
fn postgres_stopped_during_a_push(s3: Option<S3Target>) {
    // A server of its own: this test stops it.
    let pg = Postgres::start();
    let url = pg.database();
    let mut storage = Storage::default().postgres(url.clone());
    storage.s3 = s3;
    let dir = tempfile::tempdir().unwrap();
    let server = storage.gateway(&dir.path().join("data"), &[]);
    let http = Client::new();
    let base = server.base.clone();
    let image = TestImage::new("postgres outage");
    for blob in [&image.config, &image.layer] {
        let resp = content::upload(&http, &base, "pg/outage", blob, &admin);
        assert_eq!(resp.status(), StatusCode::CREATED);
    }

    pg.stop();
    // The manifest PUT that would finish the push, a new upload, a pull: each a clear
    // 503 with OCI error JSON, never a 500 or a hang.
    let put = image.put_manifest(&http, &base, "pg/outage", "v1", &admin);
    assert_eq!(
        status_and_code(put),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE".into())
    );
    let post = admin(http.post(format!("{base}/v2/pg/outage/blobs/uploads/")))
        .send()
        .unwrap();
    assert_eq!(
        status_and_code(post),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE".into())
    );
    let get = admin(http.get(format!("{base}/v2/pg/outage/manifests/v1")))
        .send()
        .unwrap();
    assert_eq!(
        status_and_code(get),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE".into())
    );

    pg.restart();
    // Nothing of the failed PUT is visible; the blobs committed before the outage are.
    let get = admin(http.get(format!("{base}/v2/pg/outage/manifests/v1")))
        .send()
        .unwrap();
    assert_eq!(
        status_and_code(get),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
    assert_eq!(psql(&url, "SELECT count(*) FROM manifests"), "0");
    if let Some(s3) = &storage.s3 {
        // Only the two blobs committed before the outage are in the bucket. The refused
        // upload start may have left its session object (written before the database
        // refused the session): no client can reach it, and the upload expiry removes it.
        let keys = SeaweedFs::shared().keys(s3.prefix());
        let (blobs, rest): (Vec<&String>, Vec<&String>) = keys
            .iter()
            .partition(|k| k.starts_with(&format!("{}/blobs/", s3.prefix())));
        let mut want: Vec<String> = [&image.config, &image.layer]
            .iter()
            .map(|b| {
                let hex = content::digest(b).trim_start_matches("sha256:").to_owned();
                format!("{}/blobs/sha256/{hex}", s3.prefix())
            })
            .collect();
        want.sort();
        assert_eq!(blobs, want.iter().collect::<Vec<_>>());
        for key in rest {
            let id = key
                .strip_prefix(&format!("{}/uploads/", s3.prefix()))
                .and_then(|k| k.split('/').next())
                .unwrap_or_else(|| panic!("unexpected object {key}"));
            let get = admin(http.get(format!("{base}/v2/pg/outage/blobs/uploads/{id}")))
                .send()
                .unwrap();
            assert_eq!(
                status_and_code(get),
                (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into()),
                "{key}"
            );
        }
    }
    let tags: Value = admin(http.get(format!("{base}/v2/pg/outage/tags/list")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(tags["tags"], Value::Array(vec![]), "{tags}");
    // The client's retry completes the push on the same gateway (the pool reconnects).
    let put = image.put_manifest(&http, &base, "pg/outage", "v1", &admin);
    assert_eq!(put.status(), StatusCode::CREATED);
    let got = admin(http.get(format!("{base}/v2/pg/outage/manifests/v1")))
        .header("accept", content::OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().unwrap().as_ref(), image.manifest.as_slice());
}

fn serve_fails(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out: Output = Command::new(common::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(args)
        .env("PORTCULLIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_wrong_metadata_setting_stops_serve_at_start_and_is_named() {
    let err = serve_fails(&["--metadata", "mysql://app:secret@127.0.0.1/reg"]);
    assert!(
        err.contains("--metadata") && err.contains("mysql://app:***@127.0.0.1/reg"),
        "{err}"
    );
    assert!(!err.contains("secret"), "the password is not shown: {err}");

    // Nothing listens on the port: the connection test fails before serving.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://app:secret@127.0.0.1:{port}/reg");
    let err = serve_fails(&["--metadata", &url]);
    assert!(
        err.contains("--metadata")
            && err.contains(&format!("postgres://app:***@127.0.0.1:{port}/reg")),
        "{err}"
    );
    assert!(!err.contains("secret"), "the password is not shown: {err}");

    // A database whose schema is newer than this binary is refused, named.
    let url = Postgres::shared().database();
    psql(
        &url,
        "CREATE TABLE portcullis_schema (version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO portcullis_schema (version) VALUES (999)",
    );
    let err = serve_fails(&["--metadata", &url]);
    assert!(err.contains("schema version 999 is newer"), "{err}");
}

/// Statements run by sessions with `log_statement` set (one test's database), as the
/// server logged them (written before each answer, unlike the `pg_stat_*` counters, which
/// a backend flushes up to seconds later), without the change listeners' pings.
fn statements(pg: &Postgres) -> usize {
    pg.log()
        .lines()
        .filter(|l| l.contains("LOG:  execute") || l.contains("LOG:  statement:"))
        .filter(|l| !l.ends_with("SELECT 1") && !l.contains("LISTEN "))
        .count()
}

/// A GET of `repo`'s manifest `reference` through `server`: (status, Docker-Content-Digest
/// or the error code).
fn manifest_get(
    http: &Client,
    server: &Server,
    repo: &str,
    reference: &str,
) -> (StatusCode, String) {
    let resp = admin(http.get(format!("{}/v2/{repo}/manifests/{reference}", server.base)))
        .header("accept", content::OCI_MANIFEST)
        .send()
        .unwrap();
    match resp.status() {
        StatusCode::OK => {
            let digest = resp.headers()["docker-content-digest"]
                .to_str()
                .unwrap()
                .to_owned();
            let body = resp.bytes().unwrap();
            assert_eq!(content::digest(&body), digest);
            (StatusCode::OK, digest)
        }
        _ => status_and_code(resp),
    }
}

/// Polls `server` until a GET of `repo:reference` answers `want` (another gateway's
/// change arrives by NOTIFY, asynchronously), for at most 5 s.
fn eventually(
    http: &Client,
    server: &Server,
    repo: &str,
    reference: &str,
    want: (StatusCode, String),
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let got = manifest_get(http, server, repo, reference);
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{reference}: {got:?}, not {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn two_gateways_on_one_database_serve_cached_manifests_and_see_each_others_changes() {
    let pg = Postgres::shared();
    let url = pg.database();
    let database = url.rsplit('/').next().unwrap();
    // Every statement of this database's sessions in the server log (no other database
    // of the shared server logs statements).
    psql(
        &url,
        &format!("ALTER DATABASE {database} SET log_statement = 'all'"),
    );
    let storage = Storage::default()
        .s3(SeaweedFs::shared().target())
        .postgres(url.clone());
    let dir = tempfile::tempdir().unwrap();
    let a = storage.gateway(&dir.path().join("a"), &[]);
    let b = storage.gateway(&dir.path().join("b"), &[]);
    let http = Client::new();
    let (one, two) = (TestImage::new("cache one"), TestImage::new("cache two"));
    let repo = "cache/app";
    one.push(&http, &a.base, repo, "v1", &admin);
    for blob in [&two.config, &two.layer] {
        assert_eq!(
            content::upload(&http, &a.base, repo, blob, &admin).status(),
            StatusCode::CREATED
        );
    }
    let ok = |image: &TestImage| (StatusCode::OK, image.digest());

    // The first GET through B reads the database (the counter moves); then 200 GETs
    // are cache hits and run no statement at all.
    let before = statements(pg);
    assert_eq!(manifest_get(&http, &b, repo, "v1"), ok(&one));
    let after_miss = statements(pg);
    assert!(
        after_miss > before,
        "a miss runs statements ({before} → {after_miss})"
    );
    for _ in 0..200 {
        assert_eq!(manifest_get(&http, &b, repo, "v1"), ok(&one));
    }
    assert_eq!(statements(pg), after_miss, "cache hits ran statements");

    // Moved through A: B answers the new digest (once A's NOTIFY has arrived).
    assert_eq!(
        two.put_manifest(&http, &a.base, repo, "v1", &admin)
            .status(),
        StatusCode::CREATED
    );
    eventually(&http, &b, repo, "v1", ok(&two));
    assert_eq!(manifest_get(&http, &b, repo, &one.digest()), ok(&one));

    // Deleted through A: B says MANIFEST_UNKNOWN, by tag and by digest.
    let resp = admin(http.delete(format!("{}/v2/{repo}/manifests/{}", a.base, two.digest())))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let unknown = (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".to_owned());
    eventually(&http, &b, repo, "v1", unknown.clone());
    eventually(&http, &b, repo, &two.digest(), unknown);

    // A lost listener connection empties B's cache: the next GET reads the database,
    // and once the listener is back, hits are served from memory again.
    assert_eq!(manifest_get(&http, &b, repo, &one.digest()), ok(&one));
    let listeners = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' \
         AND application_name = 'portcullis listener'"
    );
    assert_eq!(psql(&url, &listeners), "2");
    psql(
        &url,
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{database}' AND application_name = 'portcullis listener'"
        ),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while psql(&url, &listeners) != "2" {
        assert!(
            std::time::Instant::now() < deadline,
            "the listeners did not reconnect"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = statements(pg);
    assert_eq!(manifest_get(&http, &b, repo, &one.digest()), ok(&one));
    let after_miss = statements(pg);
    assert!(
        after_miss > before,
        "the cache was emptied ({before} → {after_miss})"
    );
    for _ in 0..20 {
        assert_eq!(manifest_get(&http, &b, repo, &one.digest()), ok(&one));
    }
    assert_eq!(statements(pg), after_miss, "cached again once listening");
}
