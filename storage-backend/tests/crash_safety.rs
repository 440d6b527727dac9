//! Crash safety of `portcullis-storage`: the server is SIGKILLed (a) at random
//! moments while uploads stream and images are pushed from several threads, and
//! (b) right after each kind of acknowledged write. After a restart on the same
//! data directory: every acknowledged write is there with the right bytes,
//! nothing partial is visible (tags resolve, manifests' blobs exist with the
//! declared size and digest, blob files hash to their names), and an
//! interrupted upload session is either resumable or cleanly unknown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::image;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::oci::{
    OCI_MANIFEST, absolute, header, image_manifest, push_blob, put_manifest, with_query,
};
use common::{Server, client, digest};
use image::{
    Generated, Prng, check_blob_files, check_repo, config_of, error_code, get_blob_digest,
    get_manifest, try_put_manifest, try_start_upload, try_upload,
};
use reqwest::blocking::{Body, Client};

const REPO: &str = "crash/app";

/// A tag's manifest as the client knows it.
#[derive(Default)]
struct TagState {
    /// The manifest of the last acknowledged PUT.
    acked: Option<Vec<u8>>,
    /// A later PUT whose answer never came (it may or may not have been committed).
    in_flight: Option<Vec<u8>>,
}

/// What clients were told, and what they were still waiting for, at the kill.
#[derive(Default)]
struct Journal {
    /// Blobs whose upload PUT answered 201: digest → length.
    blobs: BTreeMap<String, u64>,
    tags: BTreeMap<String, TagState>,
    /// Upload sessions not finished at the kill: (path of the location, seed,
    /// length); the path outlives the server's port.
    sessions: Vec<(String, u64, u64)>,
}

type Shared = Arc<Mutex<Journal>>;

/// Streams generated blobs (1–24 MiB; half with Content-Length, half chunked)
/// in one PATCH each, then PUT `?digest=`, until the server goes away.
fn stream_uploads(base: String, journal: Shared, mut rng: Prng) {
    let c = client();
    loop {
        let Ok(location) = try_start_upload(&c, &base, REPO) else {
            return;
        };
        let (seed, len) = (rng.next_u64(), rng.range(1 << 20, 24 << 20));
        journal.lock().unwrap().sessions.push((
            location.trim_start_matches(&base).to_owned(),
            seed,
            len,
        ));
        let body = if seed % 2 == 0 {
            Body::sized(Generated::new(seed, len), len)
        } else {
            Body::new(Generated::new(seed, len))
        };
        let Ok(resp) = c
            .patch(&location)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
        else {
            return;
        };
        assert_eq!(
            resp.status(),
            202,
            "PATCH: {}",
            resp.text().unwrap_or_default()
        );
        let next = absolute(
            &base,
            &header(resp.headers(), "location").expect("PATCH Location"),
        );
        let d = Generated::digest_of(seed, len);
        let Ok(resp) = c.put(with_query(&next, "digest", &d)).send() else {
            return;
        };
        assert_eq!(
            resp.status(),
            201,
            "PUT {d}: {}",
            resp.text().unwrap_or_default()
        );
        let mut j = journal.lock().unwrap();
        j.sessions.retain(|s| !location.ends_with(&s.0));
        j.blobs.insert(d, len);
    }
}

/// Pushes small images (config + two layers, then the manifest) under `tag`
/// again and again, until the server goes away.
fn push_images(base: String, journal: Shared, mut rng: Prng, tag: String) {
    let c = client();
    loop {
        let config = config_of(&mut rng);
        let (len1, len2) = (rng.range(1, 300_000), rng.range(1, 2_000_000));
        let (l1, l2) = (rng.bytes(len1 as usize), rng.bytes(len2 as usize));
        for blob in [&config, &l1, &l2] {
            let d = digest(blob);
            let Ok(resp) = try_upload(&c, &base, REPO, &d, blob.clone()) else {
                return;
            };
            assert_eq!(
                resp.status(),
                201,
                "blob PUT {d}: {}",
                resp.text().unwrap_or_default()
            );
            journal.lock().unwrap().blobs.insert(d, blob.len() as u64);
        }
        let manifest = image_manifest(OCI_MANIFEST, &config, &[&l1, &l2]);
        journal
            .lock()
            .unwrap()
            .tags
            .entry(tag.clone())
            .or_default()
            .in_flight = Some(manifest.clone());
        let Ok(resp) = try_put_manifest(&c, &base, REPO, &tag, OCI_MANIFEST, &manifest) else {
            return;
        };
        assert_eq!(
            resp.status(),
            201,
            "manifest PUT {tag}: {}",
            resp.text().unwrap_or_default()
        );
        journal.lock().unwrap().tags.insert(
            tag.clone(),
            TagState {
                acked: Some(manifest),
                in_flight: None,
            },
        );
    }
}

/// Sessions resumed per round (the rest are cancelled) to bound the runtime.
const RESUMES_PER_ROUND: usize = 2;

#[test]
fn sigkill_during_streaming_uploads_and_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let journal: Shared = Arc::default();
    let mut rng = Prng::from_time();
    for round in 0..5 {
        let server = Server::start_in(dir.path(), &[]);
        let mut workers: Vec<JoinHandle<()>> = Vec::new();
        for _ in 0..3 {
            let (base, j, r) = (
                server.url.clone(),
                journal.clone(),
                Prng::new(rng.next_u64()),
            );
            workers.push(std::thread::spawn(move || stream_uploads(base, j, r)));
        }
        for i in 0..2 {
            let (base, j, r) = (
                server.url.clone(),
                journal.clone(),
                Prng::new(rng.next_u64()),
            );
            workers.push(std::thread::spawn(move || {
                push_images(base, j, r, format!("t{i}"))
            }));
        }
        let delay = Duration::from_millis(rng.range(150, 2500));
        std::thread::sleep(delay);
        server.kill();
        for w in workers {
            w.join()
                .expect("a client thread got a wrong answer before the kill");
        }

        let server = Server::start_in(dir.path(), &[]);
        let mut j = journal.lock().unwrap();
        eprintln!(
            "round {round}: killed after {delay:?}; {} blobs acknowledged so far, {} sessions interrupted",
            j.blobs.len(),
            j.sessions.len()
        );
        verify_journal(&server, dir.path(), &mut j);
        server.kill();
    }
}

/// Checks the restarted server against the journal, then rebases the journal on
/// what the server now holds (in-flight tag updates resolved, sessions gone).
fn verify_journal(server: &Server, data_dir: &Path, j: &mut Journal) {
    let c = client();
    let mut problems = Vec::new();
    for (d, len) in &j.blobs {
        let (status, got_len, got) = get_blob_digest(&c, &server.url, REPO, d);
        if (status.as_u16(), got_len, got.as_str()) != (200, *len, d.as_str()) {
            problems.push(format!(
                "acknowledged blob {d} ({len} bytes): GET {status}, {got_len} bytes, digest {got}"
            ));
        }
    }
    for (tag, TagState { acked, in_flight }) in &mut j.tags {
        let (status, _, body) = get_manifest(&c, &server.url, REPO, tag);
        let fine = match status.as_u16() {
            200 => acked.as_ref() == Some(&body) || in_flight.as_ref() == Some(&body),
            404 => acked.is_none(),
            _ => false,
        };
        if !fine {
            problems.push(format!(
                "tag {tag}: GET {status}, not the acknowledged or in-flight manifest"
            ));
        }
        *acked = (status == 200).then_some(body);
        *in_flight = None;
    }
    problems.extend(check_repo(&c, &server.url, REPO));
    problems.extend(check_blob_files(data_dir));
    let mut outcomes = Vec::new();
    for (i, (path, seed, len)) in std::mem::take(&mut j.sessions).into_iter().enumerate() {
        let location = format!("{}{path}", server.url);
        match resume_or_unknown(&c, &server.url, &location, seed, len, i < RESUMES_PER_ROUND) {
            Ok(outcome) => {
                if let Outcome::Resumed { digest, .. } = &outcome {
                    j.blobs.insert(digest.clone(), len);
                }
                outcomes.push(outcome);
            }
            Err(problem) => problems.push(problem),
        }
    }
    eprintln!("  interrupted sessions: {outcomes:?}");
    assert!(
        problems.is_empty(),
        "after SIGKILL and restart:\n{}",
        problems.join("\n")
    );
}

/// What became of an interrupted upload session after the restart.
#[derive(Debug)]
#[allow(dead_code, reason = "fields are read through Debug in the test log")]
enum Outcome {
    /// 404 BLOB_UPLOAD_UNKNOWN.
    Unknown,
    /// Reported `received` bytes and was cancelled.
    Cancelled { received: u64, of: u64 },
    /// Reported `received` bytes and was finished into the right blob.
    Resumed {
        received: u64,
        of: u64,
        digest: String,
    },
}

/// An interrupted session is either unknown (404 BLOB_UPLOAD_UNKNOWN) or reports
/// a `Range` from which it can be finished (`resume`) into the right blob, or
/// cancelled.
fn resume_or_unknown(
    c: &Client,
    base: &str,
    location: &str,
    seed: u64,
    len: u64,
    resume: bool,
) -> Result<Outcome, String> {
    let resp = c.get(location).send().unwrap();
    match resp.status().as_u16() {
        404 => {
            let code = error_code(resp);
            return if code == "BLOB_UPLOAD_UNKNOWN" {
                Ok(Outcome::Unknown)
            } else {
                Err(format!("session {location}: 404 {code}"))
            };
        }
        204 => {}
        other => return Err(format!("session {location}: status GET {other}")),
    }
    let range = header(resp.headers(), "range").unwrap_or_default();
    let end: u64 = range
        .strip_prefix("0-")
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| format!("session {location}: Range {range:?}"))?;
    // `0-0` is what registries report for an empty session.
    let received = if end == 0 { 0 } else { end + 1 };
    if received > len {
        return Err(format!(
            "session {location}: Range {range} beyond the {len} bytes sent"
        ));
    }
    if !resume {
        let status = c.delete(location).send().unwrap().status();
        return if status == 204 {
            Ok(Outcome::Cancelled { received, of: len })
        } else {
            Err(format!("session {location}: cancel answered {status}"))
        };
    }
    let d = Generated::digest_of(seed, len);
    // Bytes were missing, so no blob with the whole content's digest can exist yet.
    let head = c
        .head(format!("{base}/v2/{REPO}/blobs/{d}"))
        .send()
        .unwrap()
        .status();
    if received < len && head != 404 {
        return Err(format!(
            "session {location}: unfinished upload ({received} of {len} bytes) is visible as blob {d}: HEAD {head}"
        ));
    }
    let mut rest = Generated::new(seed, len);
    std::io::copy(
        &mut std::io::Read::take(&mut rest, received),
        &mut std::io::sink(),
    )
    .unwrap();
    let mut next = location.to_owned();
    if received < len {
        let resp = c
            .patch(location)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{received}-{}", len - 1))
            .body(Body::sized(rest, len - received))
            .send()
            .unwrap();
        if resp.status() != 202 {
            return Err(format!(
                "session {location}: resuming PATCH from {received} answered {}",
                resp.status()
            ));
        }
        next = absolute(
            base,
            &header(resp.headers(), "location").unwrap_or_default(),
        );
    }
    let resp = c.put(with_query(&next, "digest", &d)).send().unwrap();
    if resp.status() != 201 {
        return Err(format!(
            "session {location}: PUT after resume answered {} {}",
            resp.status(),
            resp.text().unwrap_or_default()
        ));
    }
    Ok(Outcome::Resumed {
        received,
        of: len,
        digest: d,
    })
}

/// What a client expects after its acknowledged writes: `None` = deleted.
#[derive(Default)]
struct Model {
    blobs: BTreeMap<String, Option<Vec<u8>>>,
    manifests: BTreeMap<String, Option<Vec<u8>>>,
}

/// SIGKILLs the server right after an acknowledged write, restarts it on the
/// same data directory and checks the model.
fn crash_and_check(server: Server, data_dir: &Path, model: &Model, step: &str) -> Server {
    server.kill();
    let server = Server::start_in(data_dir, &[]);
    let c = client();
    let mut problems = Vec::new();
    for (d, want) in &model.blobs {
        let resp = c
            .get(format!("{}/v2/{REPO}/blobs/{d}", server.url))
            .send()
            .unwrap();
        match want {
            Some(data) if resp.status() == 200 => {
                if resp.bytes().unwrap() != data.as_slice() {
                    problems.push(format!("blob {d}: wrong bytes"));
                }
            }
            None if resp.status() == 404 => {}
            _ => problems.push(format!(
                "blob {d}: GET {}, want {}",
                resp.status(),
                if want.is_some() { 200 } else { 404 }
            )),
        }
    }
    for (reference, want) in &model.manifests {
        let (status, _, body) = get_manifest(&c, &server.url, REPO, reference);
        match want {
            Some(bytes) if status == 200 && &body == bytes => {}
            None if status == 404 => {}
            _ => problems.push(format!(
                "manifest {reference}: GET {status}, want {}",
                if want.is_some() {
                    "the acknowledged bytes"
                } else {
                    "404"
                }
            )),
        }
    }
    problems.extend(check_repo(&c, &server.url, REPO));
    problems.extend(check_blob_files(data_dir));
    assert!(
        problems.is_empty(),
        "after SIGKILL right after {step}:\n{}",
        problems.join("\n")
    );
    server
}

fn assert_status(resp: reqwest::blocking::Response, want: u16, what: &str) {
    let status = resp.status();
    assert_eq!(status, want, "{what}: {}", resp.text().unwrap_or_default());
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut server = Server::start_in(dir, &[]);
    let c = client();
    let mut rng = Prng::from_time();
    let mut model = Model::default();
    let blobs_url = |s: &Server| format!("{}/v2/{REPO}/blobs", s.url);

    // Monolithic POST ?digest=.
    let b1 = rng.bytes(200_000);
    let resp = c
        .post(format!(
            "{}/uploads/?digest={}",
            blobs_url(&server),
            digest(&b1)
        ))
        .body(b1.clone())
        .send()
        .unwrap();
    assert_status(resp, 201, "monolithic POST");
    model.blobs.insert(digest(&b1), Some(b1.clone()));
    server = crash_and_check(server, dir, &model, "monolithic POST 201");

    // POST, PATCH with Content-Range, PUT ?digest= carrying the final chunk.
    let b2 = rng.bytes(3 << 20);
    let location = try_start_upload(&c, &server.url, REPO).unwrap();
    let resp = c
        .patch(&location)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", (1 << 20) - 1))
        .body(b2[..1 << 20].to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = absolute(&server.url, &header(resp.headers(), "location").unwrap());
    let resp = c
        .put(with_query(&location, "digest", &digest(&b2)))
        .body(b2[1 << 20..].to_vec())
        .send()
        .unwrap();
    assert_status(resp, 201, "chunked upload PUT");
    model.blobs.insert(digest(&b2), Some(b2.clone()));
    server = crash_and_check(server, dir, &model, "chunked upload PUT 201");

    // Manifest PUT by tag.
    let config = config_of(&mut rng);
    push_blob(&c, &server.url, REPO, &config);
    model.blobs.insert(digest(&config), Some(config.clone()));
    let m1 = image_manifest(OCI_MANIFEST, &config, &[&b1]);
    assert_status(
        put_manifest(&c, &server.url, REPO, "v1", OCI_MANIFEST, &m1),
        201,
        "manifest PUT v1",
    );
    model.manifests.insert("v1".into(), Some(m1.clone()));
    model.manifests.insert(digest(&m1), Some(m1.clone()));
    server = crash_and_check(server, dir, &model, "manifest PUT 201");

    // Tag update: v1 moves to m2; m1 stays addressable by digest.
    let m2 = image_manifest(OCI_MANIFEST, &config, &[&b1, &b2]);
    assert_status(
        put_manifest(&c, &server.url, REPO, "v1", OCI_MANIFEST, &m2),
        201,
        "manifest PUT v1 again",
    );
    model.manifests.insert("v1".into(), Some(m2.clone()));
    model.manifests.insert(digest(&m2), Some(m2.clone()));
    server = crash_and_check(server, dir, &model, "tag update 201");

    // A second tag on m1, then untag it (DELETE by tag removes only the tag).
    assert_status(
        put_manifest(&c, &server.url, REPO, "v2", OCI_MANIFEST, &m1),
        201,
        "manifest PUT v2",
    );
    model.manifests.insert("v2".into(), Some(m1.clone()));
    server = crash_and_check(server, dir, &model, "second tag 201");
    assert_status(
        c.delete(format!("{}/v2/{REPO}/manifests/v2", server.url))
            .send()
            .unwrap(),
        202,
        "DELETE tag v2",
    );
    model.manifests.insert("v2".into(), None);
    server = crash_and_check(server, dir, &model, "tag delete 202");

    // Manifest DELETE by digest.
    assert_status(
        c.delete(format!(
            "{}/v2/{REPO}/manifests/{}",
            server.url,
            digest(&m1)
        ))
        .send()
        .unwrap(),
        202,
        "DELETE m1",
    );
    model.manifests.insert(digest(&m1), None);
    server = crash_and_check(server, dir, &model, "manifest delete 202");

    // Blob DELETE.
    let b3 = rng.bytes(10_000);
    push_blob(&c, &server.url, REPO, &b3);
    assert_status(
        c.delete(format!("{}/{}", blobs_url(&server), digest(&b3)))
            .send()
            .unwrap(),
        202,
        "DELETE blob",
    );
    model.blobs.insert(digest(&b3), None);
    server = crash_and_check(server, dir, &model, "blob delete 202");

    // Cross-repository mount of b2 into another repository.
    let mirror = "crash/mirror";
    let resp = c
        .post(format!(
            "{}/v2/{mirror}/blobs/uploads/?mount={}&from={REPO}",
            server.url,
            digest(&b2)
        ))
        .send()
        .unwrap();
    assert_status(resp, 201, "mount");
    server = crash_and_check(server, dir, &model, "mount 201");
    let resp = c
        .get(format!("{}/v2/{mirror}/blobs/{}", server.url, digest(&b2)))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "mounted blob after SIGKILL");
    assert!(resp.bytes().unwrap() == b2, "mounted blob bytes");

    // The whole repository deleted (one transaction): no manifest, tag or blob link
    // of it comes back, and it stays out of the catalog; the mirror keeps its mount.
    assert_status(
        c.delete(format!("{}/acr/v1/{REPO}", server.url))
            .send()
            .unwrap(),
        202,
        "repository DELETE",
    );
    for want in model.blobs.values_mut().chain(model.manifests.values_mut()) {
        *want = None;
    }
    server = crash_and_check(server, dir, &model, "repository delete 202");
    let catalog: serde_json::Value = c
        .get(format!("{}/v2/_catalog", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!([mirror]));
    let resp = c
        .get(format!("{}/v2/{mirror}/blobs/{}", server.url, digest(&b2)))
        .send()
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "mounted blob after the repository delete"
    );
    server.stop();
}
