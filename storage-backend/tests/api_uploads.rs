//! Blob pushes over real HTTP (OCI distribution-spec v1.1 "Pushing blobs"): POST+PUT,
//! monolithic POST `?digest=`, chunked PATCH with and without `Content-Range` (also with
//! chunked transfer encoding), out-of-order chunks, upload status, cancel, cross-repository
//! mount (with `from` and automatic), digest verification.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use common::oci::{absolute, assert_error, header, push_blob, start_upload, with_query};
use common::{Server, client, digest};
use reqwest::blocking::{Body, Client};

fn blob_status(c: &Client, base: &str, repo: &str, d: &str) -> u16 {
    c.head(format!("{base}/v2/{repo}/blobs/{d}"))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn get_blob(c: &Client, base: &str, repo: &str, d: &str) -> Vec<u8> {
    let r = c.get(format!("{base}/v2/{repo}/blobs/{d}")).send().unwrap();
    assert_eq!(r.status(), 200, "GET blob {d}");
    r.bytes().unwrap().to_vec()
}

/// PATCH `chunk`, optionally with `Content-Range: start-end`; returns the response.
fn patch(c: &Client, url: &str, chunk: &[u8], start: Option<usize>) -> reqwest::blocking::Response {
    let mut req = c
        .patch(url)
        .header("content-type", "application/octet-stream");
    if let Some(start) = start {
        req = req
            .header(
                "content-range",
                format!("{start}-{}", start + chunk.len() - 1),
            )
            .header("content-length", chunk.len().to_string());
    }
    req.body(chunk.to_vec()).send().unwrap()
}

#[test]
fn post_opens_a_session_with_relative_location_and_uuid() {
    let s = Server::start(&[]);
    let c = client();
    let r = c
        .post(format!("{}/v2/lib/a/blobs/uploads/", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = header(r.headers(), "location").expect("Location");
    // Relative, so it stays valid behind a proxy (product requirement).
    assert!(
        location.starts_with("/v2/lib/a/blobs/uploads/"),
        "{location}"
    );
    let uuid = header(r.headers(), "docker-upload-uuid").expect("Docker-Upload-UUID");
    assert!(location.contains(&uuid), "{location} names {uuid}");
    assert!(header(r.headers(), "range").is_some(), "Range on POST");
}

#[test]
fn post_then_put_with_whole_body() {
    let s = Server::start(&[]);
    let c = client();
    let data = b"monolithic two-step".to_vec();
    let d = digest(&data);
    let url = start_upload(&c, &s.url, "lib/a");
    let r = c
        .put(with_query(&url, "digest", &d))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        header(r.headers(), "docker-content-digest").as_deref(),
        Some(d.as_str())
    );
    let location = header(r.headers(), "location").expect("Location");
    assert!(
        location.ends_with(&format!("/v2/lib/a/blobs/{d}")),
        "{location}"
    );
    assert_eq!(get_blob(&c, &s.url, "lib/a", &d), data);
    // The session is gone once committed.
    assert_error(c.get(&url).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
    // A repeat of the completing PUT (its answer lost, a balancer retrying it) is the
    // same success; in another repository, where the blob is not, the session is unknown.
    let r = c
        .put(with_query(&url, "digest", &d))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        header(r.headers(), "docker-content-digest").as_deref(),
        Some(d.as_str())
    );
    let other = url.replace("/v2/lib/a/", "/v2/lib/b/");
    let r = c
        .put(with_query(&other, "digest", &d))
        .body(data)
        .send()
        .unwrap();
    assert_error(r, 404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_eq!(blob_status(&c, &s.url, "lib/b", &d), 404);
}

#[test]
fn monolithic_post_with_digest_is_201() {
    let s = Server::start(&[]);
    let c = client();
    let data = b"single request".to_vec();
    let d = digest(&data);
    let r = c
        .post(format!("{}/v2/lib/a/blobs/uploads/?digest={d}", s.url))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        header(r.headers(), "docker-content-digest").as_deref(),
        Some(d.as_str())
    );
    assert!(header(r.headers(), "location").is_some_and(|l| l.ends_with(&format!("/blobs/{d}"))));
    assert_eq!(get_blob(&c, &s.url, "lib/a", &d), data);
}

#[test]
fn monolithic_post_with_wrong_digest_is_400_and_nothing_visible() {
    let s = Server::start(&[]);
    let c = client();
    let data = b"actual content".to_vec();
    let claimed = digest(b"something else");
    let r = c
        .post(format!(
            "{}/v2/lib/a/blobs/uploads/?digest={claimed}",
            s.url
        ))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .unwrap();
    assert_error(r, 400, &["DIGEST_INVALID"]);
    assert_eq!(blob_status(&c, &s.url, "lib/a", &claimed), 404);
    assert_eq!(blob_status(&c, &s.url, "lib/a", &digest(&data)), 404);
}

#[test]
fn put_with_wrong_digest_is_400_and_nothing_visible() {
    let s = Server::start(&[]);
    let c = client();
    let data = b"actual content".to_vec();
    let claimed = digest(b"something else");
    let url = start_upload(&c, &s.url, "lib/a");
    let r = c
        .put(with_query(&url, "digest", &claimed))
        .body(data.clone())
        .send()
        .unwrap();
    assert_error(r, 400, &["DIGEST_INVALID"]);
    assert_eq!(blob_status(&c, &s.url, "lib/a", &claimed), 404);
    assert_eq!(blob_status(&c, &s.url, "lib/a", &digest(&data)), 404);
}

#[test]
fn put_without_digest_is_400_digest_invalid() {
    let s = Server::start(&[]);
    let c = client();
    let url = start_upload(&c, &s.url, "lib/a");
    let r = c.put(&url).body(b"x".to_vec()).send().unwrap();
    assert_error(r, 400, &["DIGEST_INVALID"]);
}

#[test]
fn put_with_malformed_digest_is_400_digest_invalid() {
    let s = Server::start(&[]);
    let c = client();
    let url = start_upload(&c, &s.url, "lib/a");
    let r = c
        .put(with_query(&url, "digest", "sha256:1234"))
        .body(b"x".to_vec())
        .send()
        .unwrap();
    assert_error(r, 400, &["DIGEST_INVALID"]);
}

#[test]
fn chunked_patch_with_content_range_then_status_then_put() {
    let s = Server::start(&[]);
    let c = client();
    let data: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
    let d = digest(&data);
    let mut url = start_upload(&c, &s.url, "lib/a");
    let mut offset = 0;
    for chunk in data.chunks(10_000) {
        let r = patch(&c, &url, chunk, Some(offset));
        assert_eq!(r.status(), 202, "PATCH at {offset}");
        offset += chunk.len();
        assert_eq!(
            header(r.headers(), "range"),
            Some(format!("0-{}", offset - 1))
        );
        assert!(header(r.headers(), "docker-upload-uuid").is_some());
        url = absolute(
            &s.url,
            &header(r.headers(), "location").expect("Location on PATCH"),
        );
    }
    let r = c.get(&url).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        header(r.headers(), "range"),
        Some(format!("0-{}", data.len() - 1))
    );
    assert!(header(r.headers(), "docker-upload-uuid").is_some());
    assert!(header(r.headers(), "location").is_some());
    let r = c.put(with_query(&url, "digest", &d)).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        header(r.headers(), "docker-content-digest").as_deref(),
        Some(d.as_str())
    );
    assert_eq!(get_blob(&c, &s.url, "lib/a", &d), data);
}

#[test]
fn streamed_patch_without_content_range_uses_chunked_encoding() {
    let s = Server::start(&[]);
    let c = client();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let d = digest(&data);
    let url = start_upload(&c, &s.url, "lib/a");
    // A reader of unknown length makes reqwest send `Transfer-Encoding: chunked`, as the
    // Docker client's `ReadFrom` does.
    let r = c
        .patch(&url)
        .header("content-type", "application/octet-stream")
        .body(Body::new(std::io::Cursor::new(data.clone())))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        header(r.headers(), "range"),
        Some(format!("0-{}", data.len() - 1))
    );
    let url = absolute(&s.url, &header(r.headers(), "location").unwrap());
    let r = c.put(with_query(&url, "digest", &d)).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(get_blob(&c, &s.url, "lib/a", &d), data);
}

#[test]
fn two_streamed_patches_append() {
    let s = Server::start(&[]);
    let c = client();
    let data = b"first half|second half".to_vec();
    let d = digest(&data);
    let (a, b) = data.split_at(11);
    let url = start_upload(&c, &s.url, "lib/a");
    let r = patch(&c, &url, a, None);
    assert_eq!(r.status(), 202);
    let url = absolute(&s.url, &header(r.headers(), "location").unwrap());
    let r = patch(&c, &url, b, None);
    assert_eq!(r.status(), 202);
    assert_eq!(
        header(r.headers(), "range"),
        Some(format!("0-{}", data.len() - 1))
    );
    let url = absolute(&s.url, &header(r.headers(), "location").unwrap());
    finish_upload(&c, &url, &d);
    assert_eq!(get_blob(&c, &s.url, "lib/a", &d), data);
}

#[test]
fn out_of_order_chunk_is_416_and_upload_recovers() {
    let s = Server::start(&[]);
    let c = client();
    let data = b"0123456789ABCDEFGHIJ".to_vec();
    let d = digest(&data);
    let url = start_upload(&c, &s.url, "lib/a");
    let r = patch(&c, &url, &data[..10], Some(0));
    assert_eq!(r.status(), 202);
    let url = absolute(&s.url, &header(r.headers(), "location").unwrap());
    // Skips bytes 10..15.
    let r = patch(&c, &url, &data[15..], Some(15));
    assert_error(r, 416, &["BLOB_UPLOAD_INVALID", "RANGE_INVALID"]);
    // Replays the first chunk: also out of order.
    let r = patch(&c, &url, &data[..10], Some(0));
    assert_error(r, 416, &["BLOB_UPLOAD_INVALID", "RANGE_INVALID"]);
    // The client asks where to resume (spec: GET the upload URL), then continues.
    let r = c.get(&url).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(r.headers(), "range").as_deref(), Some("0-9"));
    let r = patch(&c, &url, &data[10..], Some(10));
    assert_eq!(r.status(), 202);
    let url = absolute(&s.url, &header(r.headers(), "location").unwrap());
    finish_upload(&c, &url, &d);
    assert_eq!(get_blob(&c, &s.url, "lib/a", &d), data);
}

#[test]
fn put_carries_the_final_chunk() {
    let s = Server::start(&[]);
    let c = client();
    let data = b"chunk one + final chunk".to_vec();
    let d = digest(&data);
    let url = start_upload(&c, &s.url, "lib/a");
    let r = patch(&c, &url, &data[..9], Some(0));
    assert_eq!(r.status(), 202);
    let url = absolute(&s.url, &header(r.headers(), "location").unwrap());
    let r = c
        .put(with_query(&url, "digest", &d))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("9-{}", data.len() - 1))
        .body(data[9..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(get_blob(&c, &s.url, "lib/a", &d), data);
}

#[test]
fn cancelled_upload_is_gone() {
    let s = Server::start(&[]);
    let c = client();
    let url = start_upload(&c, &s.url, "lib/a");
    let r = patch(&c, &url, b"partial", Some(0));
    assert_eq!(r.status(), 202);
    let url = absolute(&s.url, &header(r.headers(), "location").unwrap());
    assert_eq!(c.delete(&url).send().unwrap().status(), 204);
    assert_error(c.get(&url).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_error(
        patch(&c, &url, b"more", None),
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    );
    let r = c
        .put(with_query(&url, "digest", &digest(b"partial")))
        .send()
        .unwrap();
    assert_error(r, 404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_eq!(blob_status(&c, &s.url, "lib/a", &digest(b"partial")), 404);
}

#[test]
fn unknown_upload_session_is_404() {
    let s = Server::start(&[]);
    let c = client();
    let url = format!(
        "{}/v2/lib/a/blobs/uploads/00000000-0000-4000-8000-000000000000",
        s.url
    );
    assert_error(c.get(&url).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_error(patch(&c, &url, b"x", None), 404, &["BLOB_UPLOAD_UNKNOWN"]);
    assert_error(
        c.delete(&url).send().unwrap(),
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
    );
}

#[test]
fn upload_session_belongs_to_its_repository() {
    let s = Server::start(&[]);
    let c = client();
    let url = start_upload(&c, &s.url, "lib/a");
    let other = url.replace("/v2/lib/a/", "/v2/lib/b/");
    assert_error(c.get(&other).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
}

/// A mount answered 201 with the blob's digest and its location in `repo`, which
/// now serves `data`.
fn assert_mounted(
    c: &reqwest::blocking::Client,
    url: &str,
    r: &reqwest::blocking::Response,
    repo: &str,
    d: &str,
    data: &[u8],
) {
    assert_eq!(r.status(), 201);
    assert_eq!(
        header(r.headers(), "docker-content-digest").as_deref(),
        Some(d)
    );
    assert!(
        header(r.headers(), "location")
            .is_some_and(|l| l.ends_with(&format!("/v2/{repo}/blobs/{d}")))
    );
    assert_eq!(get_blob(c, url, repo, d), data);
}

#[test]
fn mount_from_another_repository_is_201() {
    let s = Server::start(&[]);
    let c = client();
    let data = b"shared layer".to_vec();
    let d = push_blob(&c, &s.url, "lib/src", &data);
    let r = c
        .post(format!(
            "{}/v2/lib/dst/blobs/uploads/?mount={d}&from=lib/src",
            s.url
        ))
        .send()
        .unwrap();
    assert_mounted(&c, &s.url, &r, "lib/dst", &d, &data);
}

#[test]
fn mount_without_from_finds_the_blob_in_any_repository() {
    let s = Server::start(&[]);
    let c = client();
    let data = b"layer somewhere".to_vec();
    let d = push_blob(&c, &s.url, "lib/holder", &data);
    // OCI 1.1 automatic mount: no `from`, the store looks for it itself.
    let r = c
        .post(format!("{}/v2/lib/auto/blobs/uploads/?mount={d}", s.url))
        .send()
        .unwrap();
    assert_mounted(&c, &s.url, &r, "lib/auto", &d, &data);
    // A blob no repository has: a working upload session instead.
    let missing = b"in no repository".to_vec();
    let md = digest(&missing);
    let r = c
        .post(format!("{}/v2/lib/auto/blobs/uploads/?mount={md}", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let url = absolute(&s.url, &header(r.headers(), "location").expect("Location"));
    assert_eq!(blob_status(&c, &s.url, "lib/auto", &md), 404);
    let r = c
        .put(with_query(&url, "digest", &md))
        .body(missing)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(blob_status(&c, &s.url, "lib/auto", &md), 200);
}

#[test]
fn mount_of_missing_blob_falls_back_to_a_session() {
    let s = Server::start(&[]);
    let c = client();
    let data = b"only in another repo".to_vec();
    let d = push_blob(&c, &s.url, "lib/other", &data);
    // Not in `from` (exists elsewhere), and not anywhere at all.
    for (mount, from) in [(d.clone(), "lib/src"), (digest(b"nowhere"), "lib/other")] {
        let r = c
            .post(format!(
                "{}/v2/lib/dst/blobs/uploads/?mount={mount}&from={from}",
                s.url
            ))
            .send()
            .unwrap();
        assert_eq!(r.status(), 202, "mount {mount} from {from}");
        let url = absolute(&s.url, &header(r.headers(), "location").expect("Location"));
        assert!(header(r.headers(), "docker-upload-uuid").is_some());
        // The fallback session is a working upload.
        let r = c
            .put(with_query(&url, "digest", &d))
            .body(data.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert_eq!(get_blob(&c, &s.url, "lib/dst", &d), data);
}

#[test]
fn concurrent_uploads_of_the_same_blob_both_succeed() {
    let s = Server::start(&[]);
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
    let d = digest(&data);
    std::thread::scope(|scope| {
        for repo in ["lib/a", "lib/b", "lib/a"] {
            let (url, data) = (&s.url, &data);
            scope.spawn(move || push_blob(&client(), url, repo, data));
        }
    });
    let c = client();
    assert_eq!(get_blob(&c, &s.url, "lib/a", &d), data);
    assert_eq!(get_blob(&c, &s.url, "lib/b", &d), data);
}

#[test]
fn upload_to_invalid_name_is_400_name_invalid() {
    let s = Server::start(&[]);
    let c = client();
    let r = c
        .post(format!("{}/v2/Bad_Name/blobs/uploads/", s.url))
        .send()
        .unwrap();
    assert_error(r, 400, &["NAME_INVALID"]);
}

#[test]
fn stale_upload_sessions_expire_with_their_files() {
    let s = Server::start(&["--upload-expiry-seconds", "1"]);
    let c = client();
    let url = start_upload(&c, &s.url, "lib/a");
    let r = patch(&c, &url, b"abandoned", Some(0));
    assert_eq!(r.status(), 202);
    let url = absolute(&s.url, &header(r.headers(), "location").unwrap());
    let uploads = s.data_dir.join("uploads");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let status = c.get(&url).send().unwrap().status();
        let files = std::fs::read_dir(&uploads).map_or(0, Iterator::count);
        if status == 404 && files == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "session still answers {status} with {files} upload files after 15 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_error(c.get(&url).send().unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]);
}

#[test]
fn put_and_monolithic_post_accept_chunked_bodies() {
    let s = Server::start(&[]);
    let c = client();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 239) as u8).collect();
    let d = digest(&data);
    let streamed = || Body::new(std::io::Cursor::new(data.clone()));
    let url = start_upload(&c, &s.url, "lib/a");
    let r = c
        .put(with_query(&url, "digest", &d))
        .header("content-type", "application/octet-stream")
        .body(streamed())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(get_blob(&c, &s.url, "lib/a", &d), data);
    let r = c
        .post(format!("{}/v2/lib/b/blobs/uploads/?digest={d}", s.url))
        .header("content-type", "application/octet-stream")
        .body(streamed())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(get_blob(&c, &s.url, "lib/b", &d), data);
}

#[test]
fn chunk_whose_length_contradicts_its_range_is_refused_and_not_appended() {
    let s = Server::start(&[]);
    let c = client();
    let url = start_upload(&c, &s.url, "lib/a");
    let r = patch(&c, &url, b"01234", Some(0));
    assert_eq!(r.status(), 202);
    let url = absolute(&s.url, &header(r.headers(), "location").unwrap());
    // Claims 10 bytes, sends 3 (distribution answers SIZE_INVALID; a 416 is also defensible).
    let r = c
        .patch(&url)
        .header("content-type", "application/octet-stream")
        .header("content-range", "5-14")
        .body(b"567".to_vec())
        .send()
        .unwrap();
    let status = r.status().as_u16();
    assert!(status == 400 || status == 416, "{status}");
    assert_error(
        r,
        status,
        &["SIZE_INVALID", "BLOB_UPLOAD_INVALID", "RANGE_INVALID"],
    );
    let r = c.get(&url).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(r.headers(), "range").as_deref(), Some("0-4"));
}

/// Completes an upload with an empty `PUT ?digest=` and expects 201 Created.
fn finish_upload(c: &reqwest::blocking::Client, url: &str, digest: &str) {
    let r = c.put(with_query(url, "digest", digest)).send().unwrap();
    assert_eq!(r.status(), 201);
}
