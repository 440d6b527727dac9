//! HTTP/2 beside HTTP/1.1 on the same port: h2 by ALPN on the TLS listener (curl
//! `--http2`), h2c by prior knowledge on the plain one (`--http2-prior-knowledge`), and
//! every kind of exchange over it with curl as the client — the challenge and error
//! bodies, the token endpoint, a push with a streamed (length-less) PATCH, large blob
//! GET/HEAD, manifests valid and refused, the admin and trust APIs, metrics — and
//! skopeo pushing and pulling through the TLS listener that now offers h2.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::content;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{ADMIN_PASSWORD, Server};
use content::{OCI_MANIFEST, TestImage, digest, write_oci_layout};
use serde_json::{Value, json};

/// One curl exchange: status, negotiated HTTP version, response headers and body.
struct Reply {
    status: u16,
    version: String,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// A curl speaking to one server in one protocol mode (`--http2`, `--http1.1`,
/// `--http2-prior-knowledge`).
struct Curl<'a> {
    server: &'a Server,
    mode: &'a str,
    ca: Option<PathBuf>,
    dir: PathBuf,
}

impl Curl<'_> {
    /// Runs curl with `args`, the request body (if any) on stdin.
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Reply {
        let headers = self.dir.join("headers");
        let body = self.dir.join("body");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", self.mode])
            .args(["-D", headers.to_str().unwrap()])
            .args(["-o", body.to_str().unwrap()])
            .args(["-w", "%{http_code} %{http_version}"])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ca) = &self.ca {
            cmd.arg("--cacert").arg(ca);
        }
        let mut child = cmd.spawn().expect("run curl");
        if let Some(bytes) = stdin {
            // Written in pieces so curl streams it (no length known up front).
            let mut pipe = child.stdin.take().unwrap();
            for piece in bytes.chunks(256 * 1024) {
                pipe.write_all(piece).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let written = String::from_utf8(out.stdout).unwrap();
        let (status, version) = written.split_once(' ').unwrap();
        Reply {
            status: status.parse().unwrap(),
            version: version.to_owned(),
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            body: std::fs::read(&body).unwrap_or_default(),
        }
    }

    fn get(&self, path: &str, extra: &[&str]) -> Reply {
        let url = self.server.url(path);
        let mut args = extra.to_vec();
        args.push(&url);
        self.run(&args, None)
    }
}

fn curl<'a>(server: &'a Server, mode: &'a str, dir: &Path) -> Curl<'a> {
    let ca = server.data_dir.join("tls/ca.pem");
    Curl {
        server,
        mode,
        ca: ca.is_file().then_some(ca),
        dir: dir.to_owned(),
    }
}

/// Requests the gateway counted as HTTP/2 (its `/metrics`).
fn h2_requests(c: &Curl) -> u64 {
    let r = c.get("/metrics", &[]);
    let text = String::from_utf8(r.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("portcullis_requests_by_protocol_total{protocol=\"h2\"} "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[test]
fn tls_listener_speaks_h2_by_alpn_beside_http1() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &["--tls-self-signed"],
    );
    assert!(server.url("/").starts_with("https://"));
    let h2 = curl(&server, "--http2", dir.path());
    let h1 = curl(&server, "--http1.1", dir.path());

    // The challenge and its error body, in either protocol on the same port.
    let r = h2.get("/v2/", &[]);
    assert_eq!((r.status, r.version.as_str()), (401, "2"));
    assert_eq!(r.json()["errors"][0]["code"], "UNAUTHORIZED");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer "));
    let r = h1.get("/v2/", &[]);
    assert_eq!((r.status, r.version.as_str()), (401, "1.1"));

    // The token endpoint, then a whole push with the bearer token over h2.
    let repo = "h2/app";
    let creds = format!("admin:{ADMIN_PASSWORD}");
    let r = h2.get(
        &format!("/oauth2/token?service=portcullis&scope=repository:{repo}:push,pull"),
        &["-u", &creds],
    );
    assert_eq!((r.status, r.version.as_str()), (200, "2"));
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let auth = format!("Authorization: Bearer {token}");
    let bearer = ["-H", auth.as_str()];

    // A 6 MiB layer in one streamed PATCH: no Content-Length, and HTTP/2 has no chunked
    // encoding, so the body is only DATA frames.
    let layer: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let r = h2.run(
        &[
            &bearer[..],
            &[
                "-X",
                "POST",
                &server.url(&format!("/v2/{repo}/blobs/uploads/")),
            ],
        ]
        .concat(),
        None,
    );
    assert_eq!((r.status, r.version.as_str()), (202, "2"));
    let location = r.header("location").unwrap();
    let r = h2.run(
        &[
            &bearer[..],
            &[
                "-X",
                "PATCH",
                "-H",
                "content-type: application/octet-stream",
                "-T",
                "-",
                &server.url(&location),
            ],
        ]
        .concat(),
        Some(&layer),
    );
    assert_eq!(
        r.status,
        202,
        "{}; log: {}",
        String::from_utf8_lossy(&r.body),
        server.stderr()
    );
    assert_eq!(
        r.header("range").as_deref(),
        Some(format!("0-{}", layer.len() - 1).as_str())
    );
    let location = r.header("location").unwrap();
    let separator = if location.contains('?') { '&' } else { '?' };
    let r = h2.run(
        &[
            &bearer[..],
            &[
                "-X",
                "PUT",
                "-H",
                "content-type: application/octet-stream",
                "--data-binary",
                "",
                &server.url(&format!("{location}{separator}digest={}", digest(&layer))),
            ],
        ]
        .concat(),
        None,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // The config monolithically (POST ?digest= with the body), then the manifest.
    let image = TestImage::new("h2");
    let config_file = dir.path().join("config.json");
    std::fs::write(&config_file, &image.config).unwrap();
    let r = h2.run(
        &[
            &bearer[..],
            &[
                "-X",
                "POST",
                "-H",
                "content-type: application/octet-stream",
                "--data-binary",
                &format!("@{}", config_file.display()),
                &server.url(&format!(
                    "/v2/{repo}/blobs/uploads/?digest={}",
                    digest(&image.config)
                )),
            ],
        ]
        .concat(),
        None,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(&image.config), "size": image.config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let put_manifest = |body: &[u8]| {
        h2.run(
            &[
                &bearer[..],
                &[
                    "-X",
                    "PUT",
                    "-H",
                    &format!("content-type: {OCI_MANIFEST}"),
                    "--data-binary",
                    "@-",
                    &server.url(&format!("/v2/{repo}/manifests/v1")),
                ],
            ]
            .concat(),
            Some(body),
        )
    };
    let r = put_manifest(&manifest);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // A refusal with its body: the declared layer size disagrees with the stored blob.
    let mut wrong: Value = serde_json::from_slice(&manifest).unwrap();
    wrong["layers"][0]["size"] = json!(5);
    let r = put_manifest(&serde_json::to_vec(&wrong).unwrap());
    assert_eq!((r.status, r.version.as_str()), (400, "2"));
    assert_eq!(r.json()["errors"][0]["code"], "MANIFEST_INVALID");

    // Pull: manifest by tag, the layer whole (GET) and its length (HEAD).
    let r = h2.get(
        &format!("/v2/{repo}/manifests/v1"),
        &[&bearer[..], &["-H", &format!("accept: {OCI_MANIFEST}")]].concat(),
    );
    assert_eq!((r.status, r.version.as_str()), (200, "2"));
    assert_eq!(r.body, manifest);
    let blob = format!("/v2/{repo}/blobs/{}", digest(&layer));
    let r = h2.get(&blob, &bearer);
    assert_eq!((r.status, r.version.as_str()), (200, "2"));
    assert!(r.body == layer, "the layer comes back byte for byte");
    let r = h2.get(&blob, &[&bearer[..], &["-I"]].concat());
    assert_eq!((r.status, r.version.as_str()), (200, "2"));
    assert_eq!(r.header("content-length"), Some(layer.len().to_string()));

    // The admin API and the trust API answer over h2 too.
    let r = h2.get("/admin/v1/tokens", &["-u", &creds]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"));
    assert!(r.json().is_array());
    let r = h2.get(
        &format!("/v2/{}/{repo}/_trust/tuf/root.json", server.host()),
        &["-u", &creds],
    );
    assert_eq!((r.status, r.version.as_str()), (404, "2"));
    assert_eq!(r.json()["errors"][0]["code"], "METADATA_NOT_FOUND");

    // 13 requests above (this one is counted once answered).
    assert_eq!(h2_requests(&h2), 13, "h2 requests counted");
}

#[test]
fn plain_listener_speaks_h2c_by_prior_knowledge() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD));
    let h2c = curl(&server, "--http2-prior-knowledge", dir.path());
    let h1 = curl(&server, "--http1.1", dir.path());
    let r = h2c.get("/v2/", &[]);
    assert_eq!((r.status, r.version.as_str()), (401, "2"));
    assert_eq!(r.json()["errors"][0]["code"], "UNAUTHORIZED");
    let r = h1.get("/v2/", &[]);
    assert_eq!((r.status, r.version.as_str()), (401, "1.1"));

    let http = reqwest::blocking::Client::new();
    let image = TestImage::new("h2c");
    image.push(&http, &server.url(""), "h2c/app", "v1", &|rb| {
        rb.basic_auth("admin", Some(ADMIN_PASSWORD))
    });
    let creds = format!("admin:{ADMIN_PASSWORD}");
    let r = h2c.get(
        &format!("/v2/h2c/app/blobs/{}", digest(&image.layer)),
        &["-u", &creds],
    );
    assert_eq!((r.status, r.version.as_str()), (200, "2"));
    assert_eq!(r.body, image.layer);
    assert_eq!(h2_requests(&h2c), 2, "h2c requests counted");
}

/// skopeo (Go, containers/image) through the TLS listener that offers h2 and
/// http/1.1 by ALPN: push and pull work, verifying the gateway's certificate.
/// (skopeo 1.9's transport has a custom dialer and no `ForceAttemptHTTP2`, so Go keeps
/// it on HTTP/1.1; curl above is the h2 client.)
#[test]
fn skopeo_pushes_and_pulls_through_the_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &["--tls-self-signed"],
    );
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(server.data_dir.join("tls/ca.pem"), certs.join("ca.crt")).unwrap();
    let layout = dir.path().join("layout");
    let image = TestImage::new("skopeo over tls");
    write_oci_layout(&layout, &[("v1", &image)]);
    let creds = format!("admin:{ADMIN_PASSWORD}");
    let target = format!("docker://{}/tls/app:v1", server.host());
    let skopeo = |args: &[&str]| {
        let out = Command::new("skopeo")
            .arg("--insecure-policy")
            .args(args)
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    skopeo(&[
        "copy",
        "--dest-cert-dir",
        certs.to_str().unwrap(),
        "--dest-creds",
        &creds,
        "--preserve-digests",
        &format!("oci:{}:v1", layout.display()),
        &target,
    ]);
    let pulled = dir.path().join("pulled");
    skopeo(&[
        "copy",
        "--src-cert-dir",
        certs.to_str().unwrap(),
        "--src-creds",
        &creds,
        &target,
        &format!("dir:{}", pulled.display()),
    ]);
    assert_eq!(
        std::fs::read(pulled.join("manifest.json")).unwrap(),
        image.manifest
    );
    let layer = digest(&image.layer);
    assert_eq!(
        std::fs::read(pulled.join(layer.trim_start_matches("sha256:"))).unwrap(),
        image.layer
    );
}
