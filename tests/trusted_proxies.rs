//! `--trusted-proxies` with a real HAProxy (Debian `haproxy`) in front of the gateway on
//! loopback: HAProxy connects to the gateway from 127.0.0.2 (`source`), the only
//! address the gateway trusts, and appends the client to `X-Forwarded-For` (`option
//! forwardfor`). A policy keyed on `context.sourceIp` then admits or denies by the real
//! client address (clients bind 127.0.0.3 or 127.0.0.1); a client connecting directly
//! cannot spoof its address with forged `X-Forwarded-For`/`Forwarded` headers, nor can
//! a forged left-most entry through the proxy. The token realm follows the proxy's
//! `X-Forwarded-Proto`, and the audit records name the real client.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN_PASSWORD, Server, create_token};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use serde_json::Value;

const HAPROXY: &str = "/usr/sbin/haproxy";
/// The proxy's address towards the gateway.
const PROXY_SOURCE: &str = "127.0.0.2";
/// The one client address the test policy lets push.
const INTERNAL: &str = "127.0.0.3";

/// A running `haproxy -db -f CONFIG`; killed on drop.
struct Haproxy {
    child: Child,
    /// `http://127.0.0.1:PORT`
    url: String,
}

impl Haproxy {
    fn start(dir: &Path, gateway: &str) -> Haproxy {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: scripts/install-test-deps.sh installs Debian's haproxy"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 64\n\
                 defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend registry\n  bind 127.0.0.1:{port}\n  option forwardfor\n\
                 \x20 http-request set-header X-Forwarded-Proto https\n  default_backend gateway\n\
                 backend gateway\n  server portcullis {gateway} source {PROXY_SOURCE}\n"
            ),
        )
        .unwrap();
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Haproxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client whose connections come from `source`.
fn client_from(source: &str) -> Client {
    Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// Starts a blob upload as `pusher`, with extra headers.
fn start_upload(client: &Client, base: &str, password: &str, headers: &[(&str, &str)]) -> Response {
    let mut request = client
        .post(format!("{base}/v2/samples/proxied/blobs/uploads/"))
        .basic_auth("pusher", Some(password));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().unwrap()
}

#[test]
fn the_client_behind_a_trusted_proxy_decides_and_forgeries_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("push-from-internal.cedar"),
        format!(
            "@id(\"test/push-from-internal\")\n\
             forbid (principal, action == Action::\"content/write\", resource)\n\
             unless {{ context has sourceIp && context.sourceIp.isInRange(ip(\"{INTERNAL}/32\")) }};\n"
        ),
    )
    .unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = Server::start_with(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &[
            "--policy-dir",
            policies.to_str().unwrap(),
            "--trusted-proxies",
            &format!("{PROXY_SOURCE}/32"),
            "--audit-log",
            audit.to_str().unwrap(),
        ],
    );
    let password = create_token(
        &server,
        "pusher",
        "samples/proxied",
        &["content/read", "content/write"],
    );
    let proxy = Haproxy::start(dir.path(), server.host());
    let internal = client_from(INTERNAL);
    let outside = client_from("127.0.0.1");

    // Through the proxy, the real client address decides.
    let resp = start_upload(&internal, &proxy.url, &password, &[]);
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "internal client via the proxy"
    );
    let resp = start_upload(&outside, &proxy.url, &password, &[]);
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "outside client via the proxy"
    );
    let body: Value = resp.json().unwrap();
    assert!(
        body["errors"][0]["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("test/push-from-internal"),
        "{body}"
    );

    // Attack: directly (not from a trusted address) with forged headers.
    let forged = [
        ("x-forwarded-for", INTERNAL),
        ("forwarded", "for=127.0.0.3;proto=https"),
        ("x-real-ip", INTERNAL),
    ];
    let resp = start_upload(&outside, &server.base, &password, &forged);
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "forged headers, direct"
    );
    // Attack: a forged left-most X-Forwarded-For entry through the trusted proxy.
    let resp = start_upload(
        &outside,
        &proxy.url,
        &password,
        &[("x-forwarded-for", INTERNAL)],
    );
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "forged XFF via the proxy"
    );
    let resp = start_upload(
        &outside,
        &proxy.url,
        &password,
        &[("forwarded", "for=127.0.0.3")],
    );
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "forged Forwarded via the proxy"
    );
    // Without the setting, even the proxy is not believed (the default).
    let untrusting = Server::start_with(
        &dir.path().join("data2"),
        Some(ADMIN_PASSWORD),
        &["--policy-dir", policies.to_str().unwrap()],
    );
    let password2 = create_token(
        &untrusting,
        "pusher",
        "samples/proxied",
        &["content/read", "content/write"],
    );
    let proxy2 = Haproxy::start(&dir.path().join("data2"), untrusting.host());
    let resp = start_upload(&internal, &proxy2.url, &password2, &[]);
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "no trusted proxies configured"
    );

    // The token realm follows the proxy's scheme; a direct client cannot change it.
    let challenge = |client: &Client, base: &str, headers: &[(&str, &str)]| {
        let mut request = client.get(format!("{base}/v2/"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let resp = request.send().unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let via_proxy = challenge(&outside, &proxy.url, &[]);
    let proxy_host = proxy.url.trim_start_matches("http://");
    assert!(
        via_proxy.contains(&format!("realm=\"https://{proxy_host}/oauth2/token\"")),
        "{via_proxy}"
    );
    let direct = challenge(
        &outside,
        &server.base,
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ],
    );
    assert!(
        direct.contains(&format!("realm=\"http://{}/oauth2/token\"", server.host())),
        "{direct}"
    );
    drop(proxy);
    server.stop();

    // The audit stream names the real client of each decision.
    let records: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let uploads: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| {
            r["type"] == "authorization" && r["path"] == "/v2/samples/proxied/blobs/uploads/"
        })
        .map(|r| {
            (
                r["client"].as_str().unwrap_or("unknown"),
                r["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        uploads,
        [
            (INTERNAL, "allow"),
            ("127.0.0.1", "deny"),
            ("127.0.0.1", "deny"),
            ("127.0.0.1", "deny"),
            // HAProxy appends to X-Forwarded-For and passes the forged Forwarded on:
            // the two disagree, so the client is unknown.
            ("unknown", "deny"),
        ],
        "{records:#?}"
    );
}
