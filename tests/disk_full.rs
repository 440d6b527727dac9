//! Disk full: the gateway's data directory on a 64 MiB tmpfs. Uploads fill it; clients
//! get 507 `INSUFFICIENT_STORAGE` JSON, never a hang; control-plane writes too; every
//! write acknowledged before stays readable byte-exact; once space is freed the same
//! server takes blob, manifest and control-plane writes again (no restart: both redb
//! files are reopened after their failed commits); a restart needs no repair; and
//! `portcullis fsck` finds the directory clean afterwards.
//!
//! Mounting needs root, so the test is ignored by `cargo test`; `scripts/disk-full` runs
//! it (`cargo test --test disk_full -- --ignored`), and there it fails, not skips, when
//! it cannot mount.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_test_support::gateway::{ADMIN_PASSWORD, Server, bin};
use portcullis_test_support::image::Prng;
use portcullis_test_support::oci::{OCI_MANIFEST, descriptor, image_manifest};
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::json;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (this test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn admin(rb: RequestBuilder) -> RequestBuilder {
    rb.basic_auth("admin", Some(ADMIN_PASSWORD))
}

/// Asserts a 507 with the OCI error JSON.
fn assert_full(r: Response, what: &str) {
    let status = r.status();
    let body = r.text().unwrap();
    assert_eq!(status.as_u16(), 507, "{what}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json["errors"][0]["code"], "INSUFFICIENT_STORAGE",
        "{what}: {body}"
    );
}

/// One-request blob push (POST with `?digest=`).
fn push(c: &Client, base: &str, repo: &str, data: &[u8]) -> Response {
    let digest = portcullis_test_support::digest(data);
    admin(c.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .unwrap()
}

fn put_manifest(c: &Client, base: &str, repo: &str, tag: &str, m: &[u8]) -> Response {
    admin(c.put(format!("{base}/v2/{repo}/manifests/{tag}")))
        .header("content-type", OCI_MANIFEST)
        .body(m.to_vec())
        .send()
        .unwrap()
}

/// An image manifest whose annotation makes it 256 KiB, distinct for each `i`.
fn annotated(config: &[u8], layer: &[u8], i: usize) -> Vec<u8> {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
        "annotations": {"fill": format!("{i}-{}", "x".repeat(256 * 1024))},
    });
    serde_json::to_vec(&m).unwrap()
}

fn create_scope_map(c: &Client, base: &str, name: &str) -> Response {
    admin(c.post(format!("{base}/admin/v1/scope-maps")))
        .json(&json!({"name": name, "actions": ["repositories/full/*/content/read"]}))
        .send()
        .unwrap()
}

/// Fills what is left of the file system with one file; returns it.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output()
        .unwrap();
    filler
}

#[test]
#[ignore = "mounts a tmpfs (root): run by scripts/disk-full"]
fn full_disk_gets_507_loses_nothing_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let _tmpfs = Tmpfs::mount(&mount, "64m");
    let data = mount.join("data");
    let server = Server::start(&data, Some(ADMIN_PASSWORD));
    let base = server.base.clone();
    let c = Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut rng = Prng::new(7);
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    // Tags of full/app and the manifest each was acknowledged with.
    let mut manifests: Vec<(&str, Vec<u8>)> = Vec::new();

    // Before: an image, acknowledged.
    let config = br#"{"before":true}"#.to_vec();
    let layer = rng.bytes(1 << 20);
    for blob in [&config, &layer] {
        assert_eq!(push(&c, &base, "full/app", blob).status(), 201);
        acked.push(("full/app".into(), blob.clone()));
    }
    let manifest = image_manifest(OCI_MANIFEST, &config, &[&layer]);
    assert_eq!(
        put_manifest(&c, &base, "full/app", "before", &manifest).status(),
        201
    );
    manifests.push(("before", manifest));
    assert_eq!(create_scope_map(&c, &base, "before").status(), 201);

    // Uploads until the disk is full: each is acknowledged or refused with 507, in time.
    let mut refused = 0;
    for i in 0..64 {
        let blob = rng.bytes(4 << 20);
        let started = Instant::now();
        let r = push(&c, &base, "full/fill", &blob);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "upload {i} hung"
        );
        if r.status() == 201 {
            acked.push(("full/fill".into(), blob));
        } else {
            assert_full(r, &format!("upload {i}"));
            refused += 1;
            if refused == 3 {
                break;
            }
        }
    }
    assert_eq!(refused, 3, "64 x 4 MiB never filled a 64 MiB disk");

    // Every last byte taken: small writes of every kind are refused with 507.
    let filler = fill(&mount);
    assert_full(push(&c, &base, "full/app", b"tiny"), "small blob");
    // A manifest is a few hundred bytes in pages redb may already hold: either outcome,
    // but a clear one.
    let during = image_manifest(OCI_MANIFEST, &layer, &[&config]);
    let r = put_manifest(&c, &base, "full/app", "during", &during);
    eprintln!("manifest put on a full disk: {}", r.status());
    if r.status() == 201 {
        manifests.push(("during", during.clone()));
    } else {
        assert_full(r, "manifest put");
    }
    // Manifests with a large annotation, until the metadata database itself cannot commit
    // (redb then refuses all work on that handle; the store must reopen it).
    let mut manifest_refused = false;
    for i in 0..400 {
        let m = annotated(&config, &layer, i);
        let tag = format!("fill{i}");
        let r = put_manifest(&c, &base, "full/app", &tag, &m);
        if r.status() == 201 {
            manifests.push((Box::leak(tag.into_boxed_str()), m));
        } else {
            assert_full(r, &format!("manifest put {i}"));
            manifest_refused = true;
            break;
        }
    }
    assert!(
        manifest_refused,
        "400 manifests of 256 KiB never filled the disk"
    );
    let r = create_scope_map(&c, &base, "during");
    eprintln!("scope map create on a full disk: {}", r.status());
    let control_refused = r.status().as_u16() != 201;
    if control_refused {
        assert_full(r, "scope map create");
    }

    // Reads still work and nothing acknowledged is lost.
    let check_acked =
        |base: &str, acked: &[(String, Vec<u8>)], manifests: &[(&str, Vec<u8>)], when: &str| {
            for (tag, bytes) in manifests {
                let r = admin(c.get(format!("{base}/v2/full/app/manifests/{tag}")))
                    .header("accept", OCI_MANIFEST)
                    .send()
                    .unwrap();
                assert_eq!(
                    r.status(),
                    200,
                    "{when}: acknowledged manifest full/app:{tag}"
                );
                assert_eq!(
                    &r.bytes().unwrap()[..],
                    &bytes[..],
                    "{when}: full/app:{tag}"
                );
            }
            for (i, (repo, blob)) in acked.iter().enumerate() {
                let d = portcullis_test_support::digest(blob);
                let r = admin(c.get(format!("{base}/v2/{repo}/blobs/{d}")))
                    .send()
                    .unwrap();
                assert_eq!(r.status(), 200, "{when}: acknowledged blob #{i} {repo}@{d}");
                assert_eq!(portcullis_test_support::digest(&r.bytes().unwrap()), d);
            }
        };
    check_acked(&base, &acked, &manifests, "on the full disk");

    // Space freed: the same server takes writes again.
    std::fs::remove_file(&filler).unwrap();
    let after = rng.bytes(1 << 20);
    let r = push(&c, &base, "full/app", &after);
    assert_eq!(
        r.status(),
        201,
        "blob push after space was freed: {}",
        r.text().unwrap()
    );
    acked.push(("full/app".into(), after));
    let after_manifest = image_manifest(OCI_MANIFEST, &config, &[&layer, &layer]);
    let r = put_manifest(&c, &base, "full/app", "after", &after_manifest);
    assert_eq!(r.status(), 201, "manifest put after space was freed");
    manifests.push(("after", after_manifest));
    check_acked(&base, &acked, &manifests, "after space was freed");
    // The control plane (`control.redb`, whose handle redb latches after a failed
    // commit) takes writes again too, on the same server.
    let r = create_scope_map(&c, &base, "after");
    assert_eq!(
        r.status(),
        201,
        "scope map after space was freed: {}",
        r.text().unwrap()
    );
    let log = server.stderr();
    assert!(
        log.contains("metadata database reopened after an i/o failure"),
        "the store never had to reopen its database, so recovery went untested:\n{log}"
    );
    assert!(
        !control_refused || log.contains("control-plane database reopened after an i/o failure"),
        "control.redb refused a write but was never reopened:\n{log}"
    );
    // And a restart needs no repair.
    server.stop();
    let server = Server::start(&data, Some(ADMIN_PASSWORD));
    let base = server.base.clone();
    let r = create_scope_map(&c, &base, "after-restart");
    assert_eq!(
        r.status(),
        201,
        "scope map after the restart: {}",
        r.text().unwrap()
    );
    check_acked(&base, &acked, &manifests, "after the restart");
    server.stop();

    // No partial content: the directory checks clean.
    let out = Command::new(bin())
        .args(["fsck", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fsck after the disk-full run:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
