//! `portcullis serve` as a process, over real sockets: the `/v2/` challenge, admin Basic,
//! `/metrics`, `/healthz` and `/readyz`, the bundled backend behind the proxy (push and
//! pull with `Location` followed through the gateway, `Content-Length` on HEAD), an
//! unreachable upstream answered as OCI `UNAVAILABLE`, upstream `Location`s rewritten,
//! self-signed TLS trusted through the generated CA, a separate admin listener, and
//! SIGTERM shutting down cleanly.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::content;
use common::registry;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN_PASSWORD, Server, bin};
use content::{OCI_MANIFEST, TestImage};
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;

fn admin(rb: RequestBuilder) -> RequestBuilder {
    rb.basic_auth("admin", Some(ADMIN_PASSWORD))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn challenge_admin_basic_metrics_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD));
    let http = Client::new();

    let resp = http.get(server.url("/v2/")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        format!(
            "Bearer realm=\"http://{}/oauth2/token\",service=\"portcullis\"",
            server.host()
        )
        .as_str()
    );
    assert_eq!(
        resp.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");

    let resp = admin(http.get(server.url("/v2/"))).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().unwrap(), "{}");

    let resp = http
        .get(server.url("/v2/"))
        .basic_auth("admin", Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .ends_with(",error=\"invalid_token\"")
    );

    let resp = http.get(server.url("/healthz")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http.get(server.url("/readyz")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the bundled store is open");

    let metrics = http.get(server.url("/metrics")).send().unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().unwrap();
    for needle in [
        "portcullis_requests_total{method=\"GET\",route=\"base\",status=\"401\"} 2",
        "portcullis_requests_total{method=\"GET\",route=\"base\",status=\"200\"} 1",
        "portcullis_authentications_total{result=\"admin\"} 1",
        "portcullis_authentications_total{result=\"invalid\"} 1",
        "portcullis_request_duration_seconds_bucket{route=\"health\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

#[test]
fn bundled_backend_push_and_pull_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD));
    let http = Client::new();
    let image = TestImage::new("serve");
    // `upload` follows the POST's Location through the gateway.
    image.push(&http, &server.base, "samples/serve", "v1", &admin);

    let resp = admin(http.get(server.url("/v2/samples/serve/manifests/v1")))
        .header("accept", OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["docker-content-digest"],
        image.digest().as_str()
    );
    assert_eq!(resp.bytes().unwrap().as_ref(), image.manifest.as_slice());

    let blob = format!("/v2/samples/serve/blobs/{}", content::digest(&image.layer));
    let resp = admin(http.head(server.url(&blob))).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-length"],
        image.layer.len().to_string().as_str(),
        "Content-Length survives HEAD"
    );
    let resp = admin(http.head(server.url("/v2/samples/serve/manifests/v1")))
        .header("accept", OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(
        resp.headers()["content-length"],
        image.manifest.len().to_string().as_str()
    );
    let resp = admin(http.get(server.url(&blob))).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().unwrap().as_ref(), image.layer.as_slice());

    // Without credentials the same blob is a challenge naming the scope.
    let resp = http.get(server.url(&blob)).send().unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"repository:samples/serve:pull\"")
    );
    let text = http
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for needle in [
        "portcullis_decisions_total{decision=\"deny\"} 1",
        "portcullis_requests_total{method=\"HEAD\",route=\"blob_get\",status=\"200\"} 1",
        "portcullis_requests_total{method=\"PUT\",route=\"manifest_put\",status=\"201\"} 1",
        "portcullis_cache_lookups_total{cache=\"decision\",result=\"hit\"}",
        "portcullis_cache_lookups_total{cache=\"authn\",result=\"miss\"}",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    assert!(!text.contains("portcullis_decisions_total{decision=\"allow\"} 0"));
    // The manifest GET above is cached; the caches' sizes say so.
    let gauge = |name: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"));
        line[name.len()..].trim().parse().unwrap()
    };
    assert_eq!(gauge("portcullis_cache_entries{cache=\"manifests\"}"), 1);
    assert!(gauge("portcullis_cache_bytes{cache=\"manifests\"}") > image.manifest.len() as u64);
    assert!(gauge("portcullis_cache_entries{cache=\"decisions\"}") >= 1);
}

#[test]
fn an_unreachable_upstream_is_unavailable_and_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = format!("http://127.0.0.1:{}", free_port());
    let server = Server::start_with(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &["--upstream", &upstream],
    );
    let http = Client::new();
    let resp = admin(http.get(server.url("/v2/samples/x/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    let resp = http.get(server.url("/readyz")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn upstream_locations_lead_back_through_the_gateway() {
    let upstream = registry::DockerRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &["--upstream", &upstream.url],
    );
    let http = Client::new();
    let resp = admin(http.post(server.url("/v2/samples/up/blobs/uploads/")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap();
    assert!(
        !location.contains(upstream.url.trim_start_matches("http://")),
        "{location} names the upstream"
    );
    // And a whole push and pull works through it.
    let image = TestImage::new("upstream-serve");
    image.push(&http, &server.base, "samples/up", "v1", &admin);
    let resp = admin(http.get(server.url("/v2/samples/up/manifests/v1")))
        .header("accept", OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().unwrap().as_ref(), image.manifest.as_slice());
}

#[test]
fn self_signed_tls_is_trusted_through_the_generated_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, Some(ADMIN_PASSWORD), &["--tls-self-signed"]);
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    let ca_path = data.join("tls/ca.pem");
    let ca = std::fs::read(&ca_path).unwrap();
    let trusting = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let resp = trusting.get(server.url("/v2/")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with(&format!(
                "Bearer realm=\"https://{}/oauth2/token\"",
                server.host()
            ))
    );
    let resp = admin(trusting.get(server.url("/v2/"))).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        Client::new().get(server.url("/v2/")).send().is_err(),
        "an untrusting client refuses the certificate"
    );
    server.stop();

    // The next start reuses the certificate.
    let server = Server::start_with(&data, Some(ADMIN_PASSWORD), &["--tls-self-signed"]);
    assert_eq!(std::fs::read(&ca_path).unwrap(), ca);
    let resp = trusting.get(server.url("/healthz")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// A `serve` process started by a test here; killed on drop, so a failing assertion
/// leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` with `args` and returns the process and its stdout lines reader.
fn spawn(data: &Path, args: &[&str]) -> (Running, BufReader<std::process::ChildStdout>) {
    spawn_with_env(data, args, &[])
}

fn spawn_with_env(
    data: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Running, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(bin())
        .envs(env.iter().copied())
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(args)
        .env("PORTCULLIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (Running(child), stdout)
}

fn line(reader: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line.trim().to_owned()
}

#[test]
fn a_separate_admin_listener_takes_the_admin_api_away_from_the_main_one() {
    let dir = tempfile::tempdir().unwrap();
    let (main_port, admin_port) = (free_port(), free_port());
    let (_child, mut out) = spawn(
        &dir.path().join("data"),
        &[
            "--listen",
            &format!("127.0.0.1:{main_port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin_port}"),
        ],
    );
    assert_eq!(
        line(&mut out),
        format!("listening on http://127.0.0.1:{main_port}")
    );
    assert_eq!(
        line(&mut out),
        format!("admin API on http://127.0.0.1:{admin_port}")
    );
    let http = Client::new();
    let tokens = "/admin/v1/tokens";
    let resp = admin(http.get(format!("http://127.0.0.1:{main_port}{tokens}")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = admin(http.get(format!("http://127.0.0.1:{admin_port}{tokens}")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = admin(http.get(format!("http://127.0.0.1:{admin_port}/v2/")))
        .send()
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "only the admin API there"
    );
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, mut out) = spawn(
        &data,
        &["--listen", "127.0.0.1:0", "--shutdown-grace-seconds", "1"],
    );
    let first = line(&mut out);
    let base = first.strip_prefix("listening on ").unwrap().to_owned();
    // The bundled store is called in process: no backend socket.
    assert!(!data.join("backend.sock").exists());
    let resp = Client::new().get(format!("{base}/healthz")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still running 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    assert!(Client::new().get(format!("{base}/healthz")).send().is_err());
}

/// `len` bytes: a 1 MiB pseudo-random pattern repeated (distinct from other tests').
struct Pattern {
    chunk: Vec<u8>,
    remaining: u64,
}

impl Pattern {
    const CHUNK: usize = 1 << 20;

    fn new(len: u64) -> Pattern {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let chunk = (0..Self::CHUNK)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        Pattern {
            chunk,
            remaining: len,
        }
    }

    fn digest(len: u64) -> String {
        use sha2::Digest as _;
        let mut pattern = Pattern::new(len);
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut pattern, &mut hasher).unwrap();
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }
}

impl std::io::Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let offset = usize::try_from(self.remaining % Self::CHUNK as u64).unwrap();
        let start = (Self::CHUNK - offset) % Self::CHUNK;
        let n = buf
            .len()
            .min(Self::CHUNK - start)
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.chunk[start..start + n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn large_blobs_stream_through_without_buffering() {
    const LEN: u64 = 256 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (child, mut out) = spawn(&dir.path().join("data"), &["--listen", "127.0.0.1:0"]);
    let base = line(&mut out)
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let digest = Pattern::digest(LEN);
    let http = Client::builder().timeout(None).build().unwrap();

    let resp = admin(http.post(format!("{base}/v2/samples/big/blobs/uploads/")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let separator = if location.contains('?') { '&' } else { '?' };
    let resp = admin(http.put(format!("{base}{location}{separator}digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(reqwest::blocking::Body::sized(Pattern::new(LEN), LEN))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    let blob = format!("{base}/v2/samples/big/blobs/{digest}");
    let resp = admin(http.head(&blob)).send().unwrap();
    assert_eq!(resp.headers()["content-length"], LEN.to_string().as_str());
    let mut resp = admin(http.get(&blob)).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let copied = resp.copy_to(&mut hasher).unwrap();
    assert_eq!(copied, LEN);
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher))),
        digest
    );

    // Gateway and bundled backend together stay far below the blob's size.
    let peak = peak_rss_kib(child.0.id());
    assert!(peak < 128 * 1024, "peak RSS {peak} KiB for a 256 MiB blob");
}

#[test]
fn flags_beat_environment_which_beats_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\nservice = \"from-file\"\npublic_url = \"https://file.example\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (_child, mut out) = spawn_with_env(
        &dir.path().join("data"),
        &["--config", config, "--listen", "127.0.0.1:0"],
        &[
            ("PORTCULLIS_LISTEN", "127.0.0.1:2"),
            ("PORTCULLIS_SERVICE", "from-env"),
        ],
    );
    let base = line(&mut out)
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let resp = Client::new().get(format!("{base}/v2/")).send().unwrap();
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"https://file.example/oauth2/token\",service=\"from-env\""
    );
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn data_directory_and_secrets_are_owner_only_and_tightened_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No admin password: the generated one is written to the data directory.
    let server = Server::start_with(&data, None, &["--tls-self-signed"]);
    let secrets = ["control.redb", "meta.redb", "admin-password", "tls/key.pem"];
    assert_eq!(mode(&data), 0o700, "data directory");
    for file in secrets {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    server.stop();

    // Loosened (an old version, a careless copy): the next start tightens and says so.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in secrets {
        std::fs::set_permissions(data.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let server = Server::start_with(&data, None, &["--tls-self-signed"]);
    assert_eq!(mode(&data), 0o700, "data directory");
    for file in secrets {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    let log = server.stderr();
    for file in secrets {
        let path = data.join(file);
        assert!(
            log.lines()
                .any(|l| l.contains("tightened mode 0644 to 0600")
                    && l.contains(&path.display().to_string())),
            "no log line for {file}:\n{log}"
        );
    }
    assert!(log.contains("tightened mode 0755 to 0700"), "{log}");
}

/// The DNS names and addresses the first certificate of a PEM file names.
fn certificate_names(pem: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string())
            }
            GeneralName::IPAddress(b) if b.len() == 16 => {
                Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn self_signed_certificate_names_the_machine_and_the_public_host() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(
        &data,
        Some(ADMIN_PASSWORD),
        &[
            "--tls-self-signed",
            "--public-url",
            "https://registry.example:5000",
        ],
    );
    let names = certificate_names(&std::fs::read(data.join("tls/cert.pem")).unwrap());
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for name in [
        "localhost",
        "127.0.0.1",
        "::1",
        machine.trim(),
        "registry.example",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
    // A client that reaches the gateway by the public name verifies the certificate.
    let ca = std::fs::read(data.join("tls/ca.pem")).unwrap();
    let addr: std::net::SocketAddr = server.host().parse().unwrap();
    let http = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve("registry.example", addr)
        .build()
        .unwrap();
    let url = format!("https://registry.example:{}/healthz", addr.port());
    assert_eq!(http.get(url).send().unwrap().status(), StatusCode::OK);
    server.stop();

    // Another public name: a new server certificate, signed by the CA clients trust.
    let server = Server::start_with(
        &data,
        Some(ADMIN_PASSWORD),
        &["--tls-self-signed", "--public-url", "https://other.example"],
    );
    let names = certificate_names(&std::fs::read(data.join("tls/cert.pem")).unwrap());
    assert!(names.iter().any(|n| n == "other.example"), "{names:?}");
    assert_eq!(std::fs::read(data.join("tls/ca.pem")).unwrap(), ca);
    let addr: std::net::SocketAddr = server.host().parse().unwrap();
    let url = format!("https://other.example:{}/healthz", addr.port());
    let http = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve("other.example", addr)
        .build()
        .unwrap();
    assert_eq!(http.get(url).send().unwrap().status(), StatusCode::OK);
}

/// Starts `serve` with `env`, and the status of an anonymous manifest GET.
fn anonymous_manifest_status(env: &[(&str, &str)]) -> StatusCode {
    let dir = tempfile::tempdir().unwrap();
    let (_child, mut out) =
        spawn_with_env(&dir.path().join("data"), &["--listen", "127.0.0.1:0"], env);
    let base = line(&mut out)
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    Client::new()
        .get(format!("{base}/v2/samples/app/manifests/v1"))
        .send()
        .unwrap()
        .status()
}

#[test]
fn boolean_environment_variables_take_1_0_yes_no_in_any_case() {
    for on in ["1", "YES", "True"] {
        assert_eq!(
            anonymous_manifest_status(&[("PORTCULLIS_ANONYMOUS_PULL", on)]),
            StatusCode::NOT_FOUND,
            "PORTCULLIS_ANONYMOUS_PULL={on}: an anonymous pull reaches the store"
        );
    }
    assert_eq!(
        anonymous_manifest_status(&[("PORTCULLIS_ANONYMOUS_PULL", "no")]),
        StatusCode::UNAUTHORIZED
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("PORTCULLIS_ANONYMOUS_PULL", "maybe")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("maybe"), "{err}");
}

#[test]
fn policy_dir_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("site-policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("broken.cedar"), "permit(principal, action").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("PORTCULLIS_POLICY_DIR", &policies)
        .env("PORTCULLIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.cedar"), "{err}");
}

#[test]
fn bundled_store_gc_upload_expiry_and_manifest_size_are_serve_settings() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        "[storage]\ngc_interval_seconds = 1\ngc_grace_seconds = 3600\n",
    )
    .unwrap();
    let (_child, mut out) = spawn_with_env(
        &dir.path().join("data"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
            "--upload-expiry-seconds",
            "1",
        ],
        &[
            ("PORTCULLIS_GC_GRACE_SECONDS", "0"),
            ("PORTCULLIS_MAX_MANIFEST_BYTES", "64"),
        ],
    );
    let base = line(&mut out)
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let http = Client::new();
    let image = TestImage::new("settings");
    for blob in [&image.config, &image.layer] {
        let resp = content::upload(&http, &base, "samples/settings", blob, &admin);
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let resp = image.put_manifest(&http, &base, "samples/settings", "v1", &admin);
    assert_eq!(
        resp.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than 64 bytes"
    );
    let body: Value = resp.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "SIZE_INVALID", "{body}");

    // An upload session left open expires after a second (the default is a day).
    let resp = admin(http.post(format!("{base}/v2/samples/settings/blobs/uploads/")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let session = content::follow(&base, resp.headers()["location"].to_str().unwrap());
    // Unreferenced blobs go at the next GC pass (every second, no grace).
    let blob = format!(
        "{base}/v2/samples/settings/blobs/{}",
        content::digest(&image.layer)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let blob_status = admin(http.head(&blob)).send().unwrap().status();
        let session_status = admin(http.get(&session)).send().unwrap().status();
        if blob_status == StatusCode::NOT_FOUND && session_status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "blob {blob_status}, upload session {session_status} after 20 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
