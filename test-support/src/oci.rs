//! OCI distribution-spec client helpers shared by the API and differential tests:
//! pushing blobs and manifests, building manifests of every media type, and checking the
//! spec's error JSON. They take a base URL so the same code drives our backend and
//! docker-registry 2.8.2.

use reqwest::blocking::{Client, Response};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Status and first OCI error code of a response (`""` without error JSON).
pub fn status_and_code(resp: Response) -> (reqwest::StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().unwrap_or(Value::Null);
    let code = body["errors"][0]["code"].as_str().unwrap_or("").to_owned();
    (status, code)
}

/// Resolves a `Location` header (relative on our backend, absolute on distribution).
pub fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

/// The value of header `name`, or `None`.
pub fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_owned())
}

/// Appends `?digest=` (or `&digest=`) to an upload URL that may already carry a query.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// Starts an upload session; returns the absolute upload URL.
pub fn start_upload(c: &Client, base: &str, repo: &str) -> String {
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202, "POST upload in {repo}");
    absolute(
        base,
        &header(r.headers(), "location").expect("Location on POST"),
    )
}

/// Pushes `data` to `repo` with POST + PUT (the two-step monolithic upload); returns its digest.
pub fn push_blob(c: &Client, base: &str, repo: &str, data: &[u8]) -> String {
    let d = digest(data);
    let url = start_upload(c, base, repo);
    let r = c
        .put(with_query(&url, "digest", &d))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "PUT blob {d} to {repo}");
    d
}

/// PUT a manifest with the given Content-Type.
pub fn put_manifest(
    c: &Client,
    base: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Response {
    c.put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .unwrap_or_else(|e| panic!("PUT manifest {repo}:{reference}: {e:?}"))
}

/// A descriptor JSON object.
pub fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(data), "size": data.len()})
}

/// An image manifest (OCI or Docker schema2, by `media_type`) with `config` and `layers` as
/// raw contents; serialized with unusual spacing so byte-exact storage is observable.
pub fn image_manifest(media_type: &str, config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let (config_type, layer_type) = if media_type == DOCKER_MANIFEST {
        (DOCKER_CONFIG, DOCKER_LAYER)
    } else {
        (OCI_CONFIG, OCI_LAYER)
    };
    let m = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": layers.iter().map(|l| descriptor(layer_type, l)).collect::<Vec<_>>(),
    });
    spaced(&m)
}

/// An index / manifest list over `children` (media type, bytes).
pub fn index_manifest(media_type: &str, children: &[(&str, &[u8])]) -> Vec<u8> {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": children.iter().map(|(t, b)| {
            let mut d = descriptor(t, b);
            d["platform"] = json!({"architecture": "amd64", "os": "linux"});
            d
        }).collect::<Vec<_>>(),
    });
    spaced(&m)
}

/// An OCI artifact manifest with `artifactType`, the empty config, one layer and a `subject`.
pub fn artifact_manifest(
    artifact_type: Option<&str>,
    config_type: &str,
    layer: &[u8],
    subject: &[u8],
) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config_type, b"{}"),
        "layers": [descriptor("application/octet-stream", layer)],
        "subject": descriptor(OCI_MANIFEST, subject),
        "annotations": {"org.example.note": "referrer"},
    });
    if let Some(t) = artifact_type {
        m["artifactType"] = json!(t);
    }
    spaced(&m)
}

/// Pretty-printed JSON with a trailing newline: a digest over these bytes differs from the
/// digest of any canonical re-serialization, so a server that re-encodes is caught.
fn spaced(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).unwrap();
    s.extend_from_slice(b"\n");
    s
}

/// Pushes an OCI image (one config, one layer, both unique to `seed`) to `repo:reference`;
/// returns the manifest bytes.
pub fn push_image(c: &Client, base: &str, repo: &str, reference: &str, seed: &str) -> Vec<u8> {
    let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
    let layer = format!("layer of {seed}").into_bytes();
    push_blob(c, base, repo, &config);
    push_blob(c, base, repo, &layer);
    let m = image_manifest(OCI_MANIFEST, &config, &[&layer]);
    let r = put_manifest(c, base, repo, reference, OCI_MANIFEST, &m);
    assert_eq!(r.status(), 201, "PUT manifest {repo}:{reference}");
    m
}

/// Asserts an OCI error response: `status`, `errors[0].code` among `codes`, a non-empty
/// message. Returns the code.
pub fn assert_error(r: Response, status: u16, codes: &[&str]) -> String {
    let got = r.status().as_u16();
    assert_eq!(
        header(r.headers(), "docker-distribution-api-version").as_deref(),
        Some("registry/2.0"),
        "API version header on errors too"
    );
    let text = r.text().unwrap();
    assert_eq!(got, status, "status; body: {text}");
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let e = &v["errors"][0];
    let code = e["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no errors[0].code in {text}"));
    assert!(
        codes.contains(&code),
        "code {code} not in {codes:?}; body: {text}"
    );
    let message = e["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "empty message in {text}");
    code.to_owned()
}
