//! Test images and registry-API helpers for the client, crash, GC and memory
//! tests: deterministic pseudo-random content (also as a streaming `Read`),
//! tar / gzip'd tar layers, OCI image manifests and indexes, OCI image layouts
//! on disk (for skopeo), and blocking HTTP calls that push and read content
//! (built on [`crate::oci`]; the `try_` variants return transport errors instead
//! of panicking, for clients whose server is killed under them), plus checks
//! that a repository and the blob files on disk are consistent.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use reqwest::blocking::{Body, Client, Response};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::digest;
use crate::oci::{
    DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, absolute, descriptor, header,
    with_query,
};

/// xorshift64* — fast, seedable, good enough for test content and delays.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Seeded from the clock, so repeated runs explore different timings.
    pub fn from_time() -> Prng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Prng::new(nanos as u64 ^ u64::from(std::process::id()))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(&mut v);
        v
    }
}

/// `len` bytes of pseudo-random content produced on the fly (memory stays at one
/// 1 MiB block): a random block repeated, each repetition stamped with its index
/// so the stream is not periodic. The SHA-256 of what was read so far is kept.
pub struct Generated {
    block: Vec<u8>,
    pos: u64,
    len: u64,
    hasher: Sha256,
}

const BLOCK: usize = 1 << 20;

impl Generated {
    pub fn new(seed: u64, len: u64) -> Generated {
        Generated {
            block: Prng::new(seed).bytes(BLOCK),
            pos: 0,
            len,
            hasher: Sha256::new(),
        }
    }

    /// `sha256:<hex>` of the bytes read so far (the whole stream once drained).
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    /// Digest of the whole stream, computed by generating it.
    pub fn digest_of(seed: u64, len: u64) -> String {
        let mut g = Generated::new(seed, len);
        std::io::copy(&mut g, &mut std::io::sink()).unwrap();
        g.digest()
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len - self.pos;
        if left == 0 {
            return Ok(0);
        }
        let offset = (self.pos % BLOCK as u64) as usize;
        if offset == 0 {
            let index = self.pos / BLOCK as u64;
            self.block[..8].copy_from_slice(&index.to_le_bytes());
        }
        let n = buf.len().min(BLOCK - offset).min(left as usize);
        buf[..n].copy_from_slice(&self.block[offset..offset + n]);
        self.hasher.update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// A gzip'd tar layer and the digest of its uncompressed tar (the config's diff_id).
pub struct Layer {
    pub gz: Vec<u8>,
    pub diff_id: String,
}

/// An uncompressed tar of `files` (path, content), made by GNU tar with fixed
/// owner and mtime.
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for (name, data) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    let out = dir.path().join("layer.tar");
    let status = Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-C",
        ])
        .arg(&root)
        .arg("-cf")
        .arg(&out)
        .args(files.iter().map(|(name, _)| *name))
        .status()
        .unwrap();
    assert!(status.success(), "tar failed");
    std::fs::read(out).unwrap()
}

pub fn tar_gz_layer(files: &[(&str, &[u8])]) -> Layer {
    let tar = tar(files);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.tar");
    std::fs::write(&path, &tar).unwrap();
    let out = Command::new("gzip")
        .args(["-n", "-1", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "gzip failed");
    Layer {
        gz: out.stdout,
        diff_id: digest(&tar),
    }
}

/// An OCI image: config, gzip'd layers and the manifest bytes referencing them.
pub struct Image {
    pub config: Vec<u8>,
    pub layers: Vec<Layer>,
    pub manifest: Vec<u8>,
}

impl Image {
    pub fn new(arch: &str, layers: Vec<Layer>) -> Image {
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        }))
        .unwrap();
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": layers.iter().map(|l| descriptor(OCI_LAYER, &l.gz)).collect::<Vec<_>>(),
        }))
        .unwrap();
        Image {
            config,
            layers,
            manifest,
        }
    }

    /// Config first, then the layers.
    pub fn blobs(&self) -> Vec<&[u8]> {
        std::iter::once(self.config.as_slice())
            .chain(self.layers.iter().map(|l| l.gz.as_slice()))
            .collect()
    }

    pub fn digest(&self) -> String {
        digest(&self.manifest)
    }
}

/// A small unique image config.
pub fn config_of(rng: &mut Prng) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [format!("NONCE={}", rng.next_u64())]},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap()
}

/// An OCI image index of `images` (one per architecture, `linux`).
pub fn oci_index(images: &[(&str, &Image)]) -> Vec<u8> {
    let manifests: Vec<Value> = images
        .iter()
        .map(|(arch, image)| {
            let mut d = descriptor(OCI_MANIFEST, &image.manifest);
            d["platform"] = json!({"architecture": arch, "os": "linux"});
            d
        })
        .collect();
    serde_json::to_vec_pretty(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
    )
    .unwrap()
}

/// Writes an OCI image layout at `dir`: every blob under `blobs/sha256/`, and
/// `index.json` naming each `(tag, media type, manifest or index bytes)`.
pub fn write_oci_layout(dir: &Path, blobs: &[&[u8]], refs: &[(&str, &str, &[u8])]) {
    let blob_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir).unwrap();
    for blob in blobs.iter().copied().chain(refs.iter().map(|(_, _, m)| *m)) {
        let hex = digest(blob).trim_start_matches("sha256:").to_owned();
        std::fs::write(blob_dir.join(hex), blob).unwrap();
    }
    let manifests: Vec<Value> = refs
        .iter()
        .map(|(tag, media_type, bytes)| {
            let mut d = descriptor(media_type, bytes);
            d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
            d
        })
        .collect();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
        )
        .unwrap(),
    )
    .unwrap();
}

/// Starts an upload session; returns the absolute `Location` (panics on a
/// non-202 answer, returns the transport error when the server is gone).
pub fn try_start_upload(c: &Client, base: &str, repo: &str) -> reqwest::Result<String> {
    let resp = c.post(format!("{base}/v2/{repo}/blobs/uploads/")).send()?;
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "POST upload to {repo}");
    Ok(absolute(
        base,
        &header(resp.headers(), "location").expect("upload Location"),
    ))
}

/// Uploads `body` (of digest `digest`) with POST then PUT `?digest=` carrying the
/// body; returns the PUT response, whatever its status.
pub fn try_upload(
    c: &Client,
    base: &str,
    repo: &str,
    digest: &str,
    body: impl Into<Body>,
) -> reqwest::Result<Response> {
    let location = try_start_upload(c, base, repo)?;
    c.put(with_query(&location, "digest", digest))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
}

/// PUTs a manifest; returns the response, whatever its status.
pub fn try_put_manifest(
    c: &Client,
    base: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> reqwest::Result<Response> {
    c.put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(bytes.to_vec())
        .send()
}

/// The first OCI error code of an error response body.
pub fn error_code(resp: Response) -> String {
    let body: Value = resp.json().expect("error body is JSON");
    body["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// GETs a manifest; returns (status, content type, body).
pub fn get_manifest(
    c: &Client,
    base: &str,
    repo: &str,
    reference: &str,
) -> (StatusCode, String, Vec<u8>) {
    let resp = c
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header(
            "accept",
            [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST].join(", "),
        )
        .send()
        .unwrap();
    let status = resp.status();
    let content_type = header(resp.headers(), "content-type").unwrap_or_default();
    (status, content_type, resp.bytes().unwrap().to_vec())
}

/// GETs a blob, hashing while streaming; returns (status, length, digest).
pub fn get_blob_digest(
    c: &Client,
    base: &str,
    repo: &str,
    digest: &str,
) -> (StatusCode, u64, String) {
    let mut resp = c
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .unwrap();
    let status = resp.status();
    let mut hasher = HashingSink {
        hasher: Sha256::new(),
        len: 0,
    };
    resp.copy_to(&mut hasher).unwrap();
    (
        status,
        hasher.len,
        format!("sha256:{}", hex::encode(hasher.hasher.finalize())),
    )
}

/// Tags of `repo` (empty when the repository is unknown).
pub fn tags(c: &Client, base: &str, repo: &str) -> Vec<String> {
    let resp = c.get(format!("{base}/v2/{repo}/tags/list")).send().unwrap();
    if resp.status() == StatusCode::NOT_FOUND {
        return Vec::new();
    }
    assert_eq!(resp.status(), StatusCode::OK, "tags list of {repo}");
    let body: Value = resp.json().unwrap();
    body["tags"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

struct HashingSink {
    hasher: Sha256,
    len: u64,
}

impl std::io::Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Checks that `repo` is consistent as a client sees it: every tag resolves to
/// a manifest, and every blob and child manifest that manifest references is
/// there with the declared size and digest. Returns the problems found.
pub fn check_repo(c: &Client, base: &str, repo: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for tag in tags(c, base, repo) {
        check_manifest(c, base, repo, &tag, &mut problems);
    }
    problems
}

fn check_manifest(c: &Client, base: &str, repo: &str, reference: &str, problems: &mut Vec<String>) {
    let (status, _, body) = get_manifest(c, base, repo, reference);
    if status != StatusCode::OK {
        problems.push(format!("{repo}:{reference}: manifest GET {status}"));
        return;
    }
    if reference.starts_with("sha256:") && digest(&body) != reference {
        problems.push(format!(
            "{repo}@{reference}: manifest bytes have digest {}",
            digest(&body)
        ));
    }
    let Ok(manifest) = serde_json::from_slice::<Value>(&body) else {
        problems.push(format!("{repo}:{reference}: manifest is not JSON"));
        return;
    };
    for child in manifest["manifests"].as_array().into_iter().flatten() {
        check_manifest(
            c,
            base,
            repo,
            child["digest"].as_str().unwrap_or_default(),
            problems,
        );
    }
    let blobs = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(manifest.get("config"));
    for d in blobs {
        let want = d["digest"].as_str().unwrap_or_default();
        let size = d["size"].as_u64().unwrap_or_default();
        let head = c
            .head(format!("{base}/v2/{repo}/blobs/{want}"))
            .send()
            .unwrap();
        let head_len = header(head.headers(), "content-length").and_then(|l| l.parse::<u64>().ok());
        if head.status() != StatusCode::OK || head_len != Some(size) {
            problems.push(format!("{repo}:{reference}: blob {want} HEAD {} length {head_len:?}, want 200 length {size}", head.status()));
            continue;
        }
        let (status, len, got) = get_blob_digest(c, base, repo, want);
        if status != StatusCode::OK || len != size || got != want {
            problems.push(format!(
                "{repo}:{reference}: blob {want} GET {status}, {len} bytes, digest {got}"
            ));
        }
    }
}

/// Every file named by a 64-hex digest under `<data-dir>/blobs/` hashes to its
/// name (a torn write would not); returns the mismatches.
pub fn check_blob_files(data_dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut stack = vec![data_dir.join("blobs")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                let mut file = std::fs::File::open(&path).unwrap();
                let mut hasher = Sha256::new();
                std::io::copy(&mut file, &mut hasher).unwrap();
                let got = hex::encode(hasher.finalize());
                if got != name {
                    problems.push(format!("{}: content hashes to {got}", path.display()));
                }
            }
        }
    }
    problems
}
