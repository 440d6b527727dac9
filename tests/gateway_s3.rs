//! The gateway on S3 blob storage (`portcullis serve --storage s3://…`) against a real
//! SeaweedFS started by the test: skopeo pushes and pulls an image whose big layer spans
//! several multipart parts; a gateway killed midway through a chunked upload leaves a
//! session the next gateway process finishes. Two gateways on S3 + PostgreSQL with data
//! directories of their own share content: one pushes, the other pulls, and one takes over
//! the upload session of the other, killed. S3 stopped during a push (metadata in the
//! data directory or in PostgreSQL) gives the client 503 `UNAVAILABLE` and leaves nothing
//! half-written visible; a wrong setting stops the start with a message naming it.
//! `portcullis migrate` moves a stopped gateway's content to S3 + PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::backend::{Backend, Storage};
use common::{ADMIN_PASSWORD, Server, admin, bin};
use portcullis_test_support::content::{follow, pseudo_random};
use portcullis_test_support::image::{Image, Prng, tar_gz_layer, write_oci_layout};
use portcullis_test_support::oci::{OCI_MANIFEST, image_manifest, status_and_code};
use portcullis_test_support::postgres::Postgres;
use portcullis_test_support::seaweedfs::{S3Target, SeaweedFs};
use portcullis_test_support::{digest, skopeo_ok};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};

const MIB: usize = 1 << 20;

/// A gateway in `data` with its blobs on `target` (metadata in `data`).
fn gateway(data: &Path, target: &S3Target) -> Server {
    Storage::default().s3(target.clone()).gateway(data, &[])
}

#[test]
fn skopeo_push_and_pull_through_the_gateway_on_s3() {
    let target = SeaweedFs::shared().target();
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&dir.path().join("data"), &target);
    skopeo_push_and_pull(&target, &server, &server);
}

/// Two gateways with data directories of their own on one bucket prefix and one
/// database: what is pushed through one is pulled through the other. Both use the admin
/// account: tokens and scope maps are still per process (`control.redb` in the data
/// directory) until issue 18 moves the control plane.
#[test]
fn two_gateways_on_s3_and_postgres_push_through_one_pull_through_the_other() {
    let storage = Backend::S3Pg.storage();
    let dir = tempfile::tempdir().unwrap();
    let a = storage.gateway(&dir.path().join("a"), &[]);
    let b = storage.gateway(&dir.path().join("b"), &[]);
    skopeo_push_and_pull(storage.s3.as_ref().unwrap(), &a, &b);
    for server in [&a, &b] {
        assert!(
            !server.data_dir.join("meta.redb").exists(),
            "no local metadata"
        );
    }
}

/// skopeo pushes an image whose 20 MiB layer crosses two multipart part boundaries
/// through `push` and pulls it through `pull`. The bytes are in the bucket under
/// `target`, and only the blobs: no session is left behind, and nothing went to a data
/// directory.
fn skopeo_push_and_pull(target: &S3Target, push: &Server, pull: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Prng::new(17);
    let image = Image::new(
        "amd64",
        vec![
            tar_gz_layer(&[("data/big.bin", &rng.bytes(20 * MIB))]),
            tar_gz_layer(&[("etc/hello.txt", b"hello s3\n")]),
        ],
    );
    let layout = dir.path().join("layout");
    write_oci_layout(
        &layout,
        &image.blobs(),
        &[("v1", OCI_MANIFEST, &image.manifest)],
    );
    let creds = format!("admin:{ADMIN_PASSWORD}");
    skopeo_ok(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        "--preserve-digests",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/s3/app:v1", push.host()),
    ]);
    let out = dir.path().join("out");
    skopeo_ok(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &format!("docker://{}/s3/app:v1", pull.host()),
        &format!("dir:{}", out.display()),
    ]);
    for blob in image.blobs() {
        let hex = digest(blob).trim_start_matches("sha256:").to_owned();
        assert_eq!(std::fs::read(out.join(&hex)).unwrap(), blob, "blob {hex}");
    }
    let mut want: Vec<String> = image
        .blobs()
        .iter()
        .map(|b| {
            let hex = digest(b).trim_start_matches("sha256:").to_owned();
            format!("{}/blobs/sha256/{hex}", target.prefix())
        })
        .collect();
    want.sort();
    assert_eq!(SeaweedFs::shared().keys(target.prefix()), want);
    for server in [push, pull] {
        assert!(!server.data_dir.join("blobs").exists());
    }
}

/// PATCHes `chunk` at `start` to the session at `location`; the response.
fn patch(http: &Client, location: &str, start: usize, chunk: &[u8]) -> Response {
    admin(http.patch(location))
        .header("content-type", "application/octet-stream")
        .header(
            "content-range",
            format!("{start}-{}", start + chunk.len() - 1),
        )
        .body(chunk.to_vec())
        .send()
        .unwrap()
}

fn start_upload(http: &Client, server: &Server, repo: &str) -> String {
    let resp = admin(http.post(server.url(&format!("/v2/{repo}/blobs/uploads/"))))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    follow(&server.base, resp.headers()["location"].to_str().unwrap())
}

fn finish(http: &Client, location: &str, blob: &[u8]) -> Response {
    let separator = if location.contains('?') { '&' } else { '?' };
    admin(http.put(format!("{location}{separator}digest={}", digest(blob))))
        .send()
        .unwrap()
}

/// Closes the session at `location` with `blob` as its (last) body.
fn finish_with(http: &Client, location: &str, blob: &[u8]) -> Response {
    let separator = if location.contains('?') { '&' } else { '?' };
    admin(http.put(format!("{location}{separator}digest={}", digest(blob))))
        .body(blob.to_vec())
        .send()
        .unwrap()
}

/// The session's offset, from `GET` of its location (`Range: 0-<last>`).
fn offset(http: &Client, location: &str) -> usize {
    let resp = admin(http.get(location)).send().unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let range = resp.headers()["range"].to_str().unwrap();
    range.split_once('-').unwrap().1.parse::<usize>().unwrap() + 1
}

#[test]
fn upload_started_on_a_killed_gateway_is_finished_by_the_next() {
    let target = SeaweedFs::shared().target();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The session's state is in `meta.redb`: the next process has the same data directory.
    let first = gateway(&data, &target);
    finish_upload_of_a_killed_gateway(first, || gateway(&data, &target));
}

/// The check: the session lives in S3 and PostgreSQL, so another gateway process
/// with a data directory of its own, running beside the first, takes it over.
#[test]
fn upload_started_on_a_killed_gateway_is_finished_by_another_on_s3_and_postgres() {
    let storage = Backend::S3Pg.storage();
    let dir = tempfile::tempdir().unwrap();
    let first = storage.gateway(&dir.path().join("a"), &[]);
    let second = storage.gateway(&dir.path().join("b"), &[]);
    finish_upload_of_a_killed_gateway(first, || second);
}

/// Starts a chunked upload on `first`, kills it (SIGKILL) midway, then finishes the upload
/// on the gateway `second` gives (asked for after the kill) with the same session URL.
fn finish_upload_of_a_killed_gateway(mut first: Server, second: impl FnOnce() -> Server) {
    let http = portcullis_test_support::client();
    let blob = pseudo_random(5, 19 * MIB + 123);
    let location = start_upload(&http, &first, "s3/resume");
    let path = location.strip_prefix(&first.base).unwrap().to_owned();
    // 11 MiB: one 8 MiB part sent to S3, 3 MiB waiting for the next.
    let resp = patch(&http, &location, 0, &blob[..11 * MIB]);
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    first.kill();

    let second = second();
    let location = second.url(&path);
    assert_eq!(offset(&http, &location), 11 * MIB);
    let resp = patch(&http, &location, 11 * MIB, &blob[11 * MIB..]);
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = finish(&http, &location, &blob);
    assert_eq!(resp.status(), StatusCode::CREATED);
    let got = admin(http.get(second.url(&format!("/v2/s3/resume/blobs/{}", digest(&blob)))))
        .send()
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(digest(&got.bytes().unwrap()), digest(&blob));
}

#[test]
fn s3_stopped_during_a_push_is_503_and_leaves_nothing_visible() {
    s3_stopped_during_a_push(Storage::default());
}

/// As above with the upload sessions' state in PostgreSQL, which stays up.
#[test]
fn s3_stopped_during_a_push_on_s3_and_postgres_is_503_and_leaves_nothing_visible() {
    s3_stopped_during_a_push(Storage::default().postgres(Postgres::shared().database()));
}

/// A push through a gateway on `storage` with blobs on an S3 server of its own, which
/// is stopped midway and restarted.
fn s3_stopped_during_a_push(storage: Storage) {
    let mut s3 = SeaweedFs::start();
    let target = s3.target();
    let dir = tempfile::tempdir().unwrap();
    let server = storage
        .s3(target.clone())
        .gateway(&dir.path().join("data"), &[]);
    let http = portcullis_test_support::client();
    let blob = pseudo_random(9, 3 * MIB);
    let location = start_upload(&http, &server, "s3/outage");
    assert_eq!(
        patch(&http, &location, 0, &blob[..MIB]).status(),
        StatusCode::ACCEPTED
    );

    s3.stop();
    let (status, code) = status_and_code(patch(&http, &location, MIB, &blob[MIB..2 * MIB]));
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
    );
    let (status, code) = status_and_code(finish(&http, &location, &blob));
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
    );
    let other = pseudo_random(10, 100_000);
    let monolithic = admin(http.post(server.url(&format!(
        "/v2/s3/outage/blobs/uploads/?digest={}",
        digest(&other)
    ))))
    .body(other.clone())
    .send()
    .unwrap();
    let (status, code) = status_and_code(monolithic);
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
    );

    // Back up: no blob appeared, and the session holds exactly what was acknowledged.
    s3.restart();
    let blobs = format!("{}/blobs/", target.prefix());
    assert!(
        s3.keys(target.prefix())
            .iter()
            .all(|k| !k.starts_with(&blobs)),
        "{:?}",
        s3.keys(target.prefix())
    );
    for d in [digest(&blob), digest(&other)] {
        let url = server.url(&format!("/v2/s3/outage/blobs/{d}"));
        assert_eq!(
            admin(http.head(url)).send().unwrap().status(),
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(offset(&http, &location), MIB);
    assert_eq!(
        patch(&http, &location, MIB, &blob[MIB..]).status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        finish(&http, &location, &blob).status(),
        StatusCode::CREATED
    );
}

#[test]
fn blob_gets_redirect_to_presigned_urls_when_configured() {
    let s3 = SeaweedFs::shared();
    let target = s3.target();
    let dir = tempfile::tempdir().unwrap();
    let server = Storage::default()
        .s3(target)
        .gateway(&dir.path().join("data"), &["--s3-redirect-seconds", "60"]);
    let http = portcullis_test_support::client();
    let blob = pseudo_random(11, 300_000);
    let location = start_upload(&http, &server, "s3/redirect");
    assert_eq!(
        finish_with(&http, &location, &blob).status(),
        StatusCode::CREATED
    );
    let url = server.url(&format!("/v2/s3/redirect/blobs/{}", digest(&blob)));
    let resp = admin(http.get(&url)).send().unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let presigned = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(presigned.starts_with(&s3.endpoint), "{presigned}");
    assert!(presigned.contains("X-Amz-Signature="), "{presigned}");
    // No credentials: the URL itself is the permission, for a short while.
    let got = http.get(&presigned).send().unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().unwrap().as_ref(), blob.as_slice());
    // Still refused to whoever may not read the repository, before any URL is made.
    assert_eq!(
        http.get(&url).send().unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin(http.head(&url)).send().unwrap().status(),
        StatusCode::OK
    );
}

#[test]
fn a_wrong_s3_setting_stops_the_start_and_is_named() {
    let s3 = SeaweedFs::shared();
    let dir = tempfile::tempdir().unwrap();
    let run = |url: &str, secret: &str| {
        let out = Command::new(bin())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--storage",
                url,
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .env("PORTCULLIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env(
                "AWS_ACCESS_KEY_ID",
                portcullis_test_support::seaweedfs::ACCESS_KEY,
            )
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_ENDPOINT_URL", &s3.endpoint)
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with {url}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let good = portcullis_test_support::seaweedfs::SECRET_KEY;
    let err = run("s3://no-such-bucket/x", good);
    assert!(
        err.contains("NoSuchBucket") && err.contains("--storage"),
        "{err}"
    );
    let err = run(&s3.target().url, "wrong");
    assert!(
        err.contains("SignatureDoesNotMatch") && err.contains("AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
    let err = run("/var/lib/registry", good);
    assert!(err.contains("expected s3://BUCKET[/PREFIX]"), "{err}");
}

/// `portcullis migrate` runs `portcullis-storage migrate`'s code with its flags (whose
/// own test covers corrupted blobs and resuming): a stopped gateway's content moves to
/// S3 + PostgreSQL, and a gateway with only those serves it byte-exact.
#[test]
fn migrate_moves_a_stopped_gateways_content_to_s3_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let server = Storage::default().gateway(&local, &[]);
    let http = portcullis_test_support::client();
    let (config, layer) = (b"{}".to_vec(), pseudo_random(11, 200_000));
    for blob in [&config, &layer] {
        let url = server.url(&format!(
            "/v2/mig/app/blobs/uploads/?digest={}",
            digest(blob)
        ));
        let resp = admin(http.post(url)).body(blob.clone()).send().unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let manifest = image_manifest(OCI_MANIFEST, &config, &[&layer]);
    let resp = admin(http.put(server.url("/v2/mig/app/manifests/v1")))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    server.stop();

    let storage = Backend::S3Pg.storage();
    let out = Command::new(bin())
        .arg("migrate")
        .arg("--data-dir")
        .arg(&local)
        .args(storage.args())
        .envs(storage.env())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("blobs 2 copied") && report.contains("manifests 1 copied (with 1 tags)"),
        "{report}"
    );

    let scaled = storage.gateway(&dir.path().join("scaled"), &[]);
    let got = admin(http.get(scaled.url("/v2/mig/app/manifests/v1")))
        .header("accept", OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert!(got.bytes().unwrap() == manifest.as_slice());
    let got = admin(http.get(scaled.url(&format!("/v2/mig/app/blobs/{}", digest(&layer)))))
        .send()
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert!(got.bytes().unwrap() == layer.as_slice());
}
