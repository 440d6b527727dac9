//! Blob pull and delete over real HTTP (OCI distribution-spec v1.1 "Pulling blobs",
//! "Deleting blobs"): HEAD/GET headers, RFC 9110 ranges, repository scoping, errors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use common::oci::{assert_error, header, push_blob};
use common::{Server, client, digest};

const DATA: &[u8] = b"0123456789abcdefghij";

#[test]
fn head_blob_has_digest_and_content_length() {
    let s = Server::start(&[]);
    let c = client();
    let d = push_blob(&c, &s.url, "lib/a", DATA);
    let r = c
        .head(format!("{}/v2/lib/a/blobs/{d}", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(r.headers(), "docker-content-digest").as_deref(),
        Some(d.as_str())
    );
    assert_eq!(
        header(r.headers(), "content-length"),
        Some(DATA.len().to_string())
    );
    assert_eq!(
        header(r.headers(), "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
    assert!(r.bytes().unwrap().is_empty(), "HEAD has no body");
}

#[test]
fn get_blob_returns_exact_bytes_and_headers() {
    let s = Server::start(&[]);
    let c = client();
    let d = push_blob(&c, &s.url, "lib/a", DATA);
    let r = c
        .get(format!("{}/v2/lib/a/blobs/{d}", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(r.headers(), "docker-content-digest").as_deref(),
        Some(d.as_str())
    );
    assert_eq!(
        header(r.headers(), "content-length"),
        Some(DATA.len().to_string())
    );
    assert_eq!(
        header(r.headers(), "content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert!(
        header(r.headers(), "etag").is_some_and(|e| e.contains(&d)),
        "ETag names the digest"
    );
    assert_eq!(r.bytes().unwrap().as_ref(), DATA);
}

#[test]
fn empty_blob_round_trips() {
    let s = Server::start(&[]);
    let c = client();
    let d = push_blob(&c, &s.url, "lib/a", b"");
    assert_eq!(d, digest(b""));
    let r = c
        .get(format!("{}/v2/lib/a/blobs/{d}", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(r.headers(), "content-length").as_deref(), Some("0"));
    assert!(r.bytes().unwrap().is_empty());
}

#[test]
fn range_requests_return_206_with_content_range() {
    let s = Server::start(&[]);
    let c = client();
    let d = push_blob(&c, &s.url, "lib/a", DATA);
    let url = format!("{}/v2/lib/a/blobs/{d}", s.url);
    // (Range header, expected Content-Range, expected body)
    let cases: [(&str, &str, &[u8]); 4] = [
        ("bytes=2-5", "bytes 2-5/20", b"2345"),
        ("bytes=15-", "bytes 15-19/20", b"fghij"),
        ("bytes=-3", "bytes 17-19/20", b"hij"),
        // An end past the last byte is clamped (RFC 9110 §14.1.2).
        ("bytes=18-100", "bytes 18-19/20", b"ij"),
    ];
    for (range, content_range, body) in cases {
        let r = c.get(&url).header("range", range).send().unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            header(r.headers(), "content-range").as_deref(),
            Some(content_range),
            "{range}"
        );
        assert_eq!(
            header(r.headers(), "content-length"),
            Some(body.len().to_string()),
            "{range}"
        );
        assert_eq!(r.bytes().unwrap().as_ref(), body, "{range}");
    }
}

#[test]
fn unsatisfiable_range_is_416() {
    let s = Server::start(&[]);
    let c = client();
    let d = push_blob(&c, &s.url, "lib/a", DATA);
    let r = c
        .get(format!("{}/v2/lib/a/blobs/{d}", s.url))
        .header("range", "bytes=20-30")
        .send()
        .unwrap();
    assert_eq!(r.status(), 416);
    // RFC 9110 §15.5.17: a 416 to a byte range SHOULD carry `Content-Range: bytes */<size>`.
    assert_eq!(
        header(r.headers(), "content-range").as_deref(),
        Some("bytes */20")
    );
}

#[test]
fn unknown_blob_is_404_blob_unknown() {
    let s = Server::start(&[]);
    let c = client();
    push_blob(&c, &s.url, "lib/a", DATA);
    let missing = digest(b"never pushed");
    let url = format!("{}/v2/lib/a/blobs/{missing}", s.url);
    assert_error(c.get(&url).send().unwrap(), 404, &["BLOB_UNKNOWN"]);
    assert_eq!(c.head(&url).send().unwrap().status(), 404);
}

#[test]
fn blob_is_scoped_to_its_repository() {
    let s = Server::start(&[]);
    let c = client();
    let d = push_blob(&c, &s.url, "lib/a", DATA);
    let r = c
        .get(format!("{}/v2/lib/b/blobs/{d}", s.url))
        .send()
        .unwrap();
    assert_error(r, 404, &["BLOB_UNKNOWN", "NAME_UNKNOWN"]);
    assert_eq!(
        c.head(format!("{}/v2/lib/b/blobs/{d}", s.url))
            .send()
            .unwrap()
            .status(),
        404
    );
}

#[test]
fn malformed_digest_is_400_digest_invalid() {
    let s = Server::start(&[]);
    let c = client();
    for bad in [
        "sha256:abc",
        "sha256:XYZ0000000000000000000000000000000000000000000000000000000000000",
        "nodigest:",
    ] {
        let r = c
            .get(format!("{}/v2/lib/a/blobs/{bad}", s.url))
            .send()
            .unwrap();
        assert_error(r, 400, &["DIGEST_INVALID"]);
    }
}

#[test]
fn invalid_repository_name_is_400_name_invalid() {
    let s = Server::start(&[]);
    let c = client();
    let d = digest(DATA);
    for bad in ["Upper/case", "-lead", "trail-", "a..b", "a/_b"] {
        let r = c
            .get(format!("{}/v2/{bad}/blobs/{d}", s.url))
            .send()
            .unwrap();
        assert_error(r, 400, &["NAME_INVALID"]);
    }
}

#[test]
fn delete_blob_is_202_then_404() {
    let s = Server::start(&[]);
    let c = client();
    let d = push_blob(&c, &s.url, "lib/a", DATA);
    let url = format!("{}/v2/lib/a/blobs/{d}", s.url);
    assert_eq!(c.delete(&url).send().unwrap().status(), 202);
    assert_error(c.get(&url).send().unwrap(), 404, &["BLOB_UNKNOWN"]);
    assert_eq!(c.head(&url).send().unwrap().status(), 404);
    assert_error(c.delete(&url).send().unwrap(), 404, &["BLOB_UNKNOWN"]);
}

#[test]
fn deleting_a_blob_in_one_repository_keeps_it_in_another() {
    let s = Server::start(&[]);
    let c = client();
    let d = push_blob(&c, &s.url, "lib/a", DATA);
    push_blob(&c, &s.url, "lib/b", DATA);
    assert_eq!(
        c.delete(format!("{}/v2/lib/a/blobs/{d}", s.url))
            .send()
            .unwrap()
            .status(),
        202
    );
    let r = c
        .get(format!("{}/v2/lib/b/blobs/{d}", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), DATA);
}

#[test]
fn other_digest_algorithms_are_refused_or_unknown_never_a_server_error() {
    let s = Server::start(&[]);
    let c = client();
    let sha512 = format!("sha512:{}", "ab".repeat(64));
    let r = c
        .get(format!("{}/v2/lib/a/blobs/{sha512}", s.url))
        .send()
        .unwrap();
    // sha512 support is the server's choice (documented by the storage crate).
    let status = r.status().as_u16();
    let code = assert_error(
        r,
        status,
        &["BLOB_UNKNOWN", "UNSUPPORTED", "DIGEST_INVALID"],
    );
    assert!(
        // UNSUPPORTED is 405 in distribution's error table (errcode `ErrorCodeUnsupported`).
        matches!(
            (status, code.as_str()),
            (404, "BLOB_UNKNOWN") | (400, "DIGEST_INVALID" | "UNSUPPORTED") | (405, "UNSUPPORTED")
        ),
        "{status} {code}"
    );
}
