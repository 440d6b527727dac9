//! Small OCI images for the HTTP and skopeo tests: a config and one layer of distinct
//! bytes per seed, pushed over the registry API (with any `Authorization`) or written as
//! an OCI image layout for skopeo.

use std::path::Path;

use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::json;

pub use crate::digest;
pub use crate::oci::OCI_MANIFEST;
use crate::oci::{OCI_CONFIG, descriptor};

/// An uncompressed layer: the bytes are plain text.
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

pub struct TestImage {
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl TestImage {
    /// Distinct content for each `seed`.
    pub fn new(seed: &str) -> TestImage {
        let layer = format!("layer of {seed}\n").repeat(64).into_bytes();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": [format!("SEED={seed}")]},
            "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": [descriptor(OCI_LAYER, &layer)],
        }))
        .unwrap();
        TestImage {
            config,
            layer,
            manifest,
        }
    }

    pub fn digest(&self) -> String {
        digest(&self.manifest)
    }

    /// Uploads both blobs (POST, then PUT `?digest=` with the body) and PUTs the
    /// manifest as `repo:tag`, each request given its credentials by `auth`. Panics
    /// unless every step succeeds.
    pub fn push(
        &self,
        http: &Client,
        base: &str,
        repo: &str,
        tag: &str,
        auth: &dyn Fn(RequestBuilder) -> RequestBuilder,
    ) {
        for blob in [&self.config, &self.layer] {
            let resp = upload(http, base, repo, blob, auth);
            assert_eq!(resp.status(), StatusCode::CREATED, "blob upload to {repo}");
        }
        let resp = self.put_manifest(http, base, repo, tag, auth);
        assert_eq!(resp.status(), StatusCode::CREATED, "PUT {repo}:{tag}");
    }

    pub fn put_manifest(
        &self,
        http: &Client,
        base: &str,
        repo: &str,
        tag: &str,
        auth: &dyn Fn(RequestBuilder) -> RequestBuilder,
    ) -> reqwest::blocking::Response {
        auth(http.put(format!("{base}/v2/{repo}/manifests/{tag}")))
            .header("content-type", OCI_MANIFEST)
            .body(self.manifest.clone())
            .send()
            .unwrap()
    }
}

/// POST an upload session, then PUT `?digest=` with the whole blob; returns the PUT's
/// response (panics if the POST is not 202).
pub fn upload(
    http: &Client,
    base: &str,
    repo: &str,
    blob: &[u8],
    auth: &dyn Fn(RequestBuilder) -> RequestBuilder,
) -> reqwest::blocking::Response {
    let resp = auth(http.post(format!("{base}/v2/{repo}/blobs/uploads/")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "POST upload to {repo}");
    let location = follow(base, resp.headers()["location"].to_str().unwrap());
    let separator = if location.contains('?') { '&' } else { '?' };
    auth(http.put(format!("{location}{separator}digest={}", digest(blob))))
        .header("content-type", "application/octet-stream")
        .body(blob.to_vec())
        .send()
        .unwrap()
}

/// Writes an OCI image layout at `dir` holding `images` under their tags.
pub fn write_oci_layout(dir: &Path, images: &[(&str, &TestImage)]) {
    let blobs: Vec<&[u8]> = images
        .iter()
        .flat_map(|(_, image)| [image.config.as_slice(), image.layer.as_slice()])
        .collect();
    let refs: Vec<(&str, &str, &[u8])> = images
        .iter()
        .map(|(tag, image)| (*tag, OCI_MANIFEST, image.manifest.as_slice()))
        .collect();
    crate::image::write_oci_layout(dir, &blobs, &refs);
}

/// The absolute URL of an upload `Location`, after checking it points back at the
/// gateway (`base`), relative or absolute — never at the backend behind it.
pub fn follow(base: &str, location: &str) -> String {
    if location.starts_with('/') {
        return format!("{base}{location}");
    }
    assert!(
        location.starts_with(&format!("{base}/")),
        "Location {location:?} leads away from the gateway {base}"
    );
    location.to_owned()
}

/// Pushes `blob` as `chunk`-sized PATCHes and a closing empty PUT `?digest=`, following
/// each `Location` (checked to stay on the gateway); then checks HEAD (status,
/// `Content-Length`, digest header) and GET (bytes) of the blob through the gateway.
pub fn chunked_blob_round_trip(
    http: &Client,
    base: &str,
    repo: &str,
    blob: &[u8],
    chunk: usize,
    auth: &dyn Fn(RequestBuilder) -> RequestBuilder,
) {
    let location_of = |resp: &reqwest::blocking::Response| -> String {
        follow(base, resp.headers()["location"].to_str().unwrap())
    };
    let resp = auth(http.post(format!("{base}/v2/{repo}/blobs/uploads/")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "POST upload to {repo}");
    let mut location = location_of(&resp);
    for (i, piece) in blob.chunks(chunk).enumerate() {
        let start = i * chunk;
        let resp = auth(http.patch(&location))
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("{start}-{}", start + piece.len() - 1),
            )
            .body(piece.to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "PATCH chunk {i}");
        location = location_of(&resp);
    }
    let want = digest(blob);
    let separator = if location.contains('?') { '&' } else { '?' };
    let resp = auth(http.put(format!("{location}{separator}digest={want}")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "closing PUT");

    let url = format!("{base}/v2/{repo}/blobs/{want}");
    let resp = auth(http.head(&url)).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "HEAD {url}");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        header("content-length"),
        Some(blob.len().to_string()),
        "HEAD Content-Length"
    );
    assert_eq!(header("docker-content-digest"), Some(want.clone()));
    let resp = auth(http.get(&url)).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "GET {url}");
    let got = resp.bytes().unwrap();
    assert_eq!(got.len(), blob.len(), "GET length");
    assert_eq!(digest(&got), want, "GET content");
}

/// `len` bytes of distinct, incompressible-looking content.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    crate::image::Prng::new(seed).bytes(len)
}
