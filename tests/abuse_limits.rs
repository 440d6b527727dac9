//! Abuse limits against the running gateway over real sockets: slow and idle clients
//! (plain and TLS, bundled store and `--upstream`), the per-address connection cap, the
//! descriptor limit, oversized heads and stalled bodies, failed-login throttling, the
//! upload-session cap and JSON nesting. The limits are set small so the tests run fast;
//! the times measured are printed (`probe: …` lines), never asserted beyond "closed at
//! all within a generous bound".
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use common::{ADMIN_PASSWORD, Server, create_token};

/// Longest any limit here may take to act before the test calls it broken (the limits
/// themselves are 1–2 s).
const BOUND: Duration = Duration::from_secs(30);

/// Prints a measurement past libtest's capture.
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "probe: {line}").unwrap();
    out.flush().unwrap();
}

/// A client connection, plain or TLS (trusting the gateway's self-signed CA).
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn open(addr: &str, ca: Option<&Path>) -> Conn {
        let tcp = TcpStream::connect(addr).unwrap();
        // Reads poll (the tests watch for the server closing); not during a handshake.
        let poll = Some(Duration::from_millis(200));
        let Some(ca) = ca else {
            tcp.set_read_timeout(poll).unwrap();
            return Conn::Plain(tcp);
        };
        tcp.set_read_timeout(Some(BOUND)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(ca).unwrap();
        use rustls::pki_types::pem::PemObject as _;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut stream = rustls::StreamOwned::new(client, tcp);
        // Finish the handshake now (the test measures what happens after it).
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).unwrap();
        }
        stream.sock.set_read_timeout(poll).unwrap();
        Conn::Tls(Box::new(stream))
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Conn::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
        }
    }

    /// `Ok(None)` when nothing arrived within the read timeout.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        let read = match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        };
        match read {
            Ok(n) => Ok(Some(n)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            // A TLS peer that closes without close_notify.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }

    /// Waits (up to [`BOUND`]) for the server to close; the time it took, and what
    /// arrived before.
    fn wait_closed(&mut self) -> (Option<Duration>, Vec<u8>) {
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while started.elapsed() < BOUND {
            match self.read(&mut buf) {
                Ok(Some(0)) | Err(_) => return (Some(started.elapsed()), got),
                Ok(Some(n)) => got.extend_from_slice(&buf[..n]),
                Ok(None) => {}
            }
        }
        (None, got)
    }
}

/// One answer read off a raw connection: status and body (by Content-Length).
fn read_response(conn: &mut Conn) -> (u16, String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                return (status, head, got[end + 4..end + 4 + len].to_vec());
            }
        }
        assert!(started.elapsed() < BOUND, "no complete response: {got:?}");
        match conn.read(&mut buf).unwrap() {
            Some(0) => panic!("closed mid-response: {}", String::from_utf8_lossy(&got)),
            Some(n) => got.extend_from_slice(&buf[..n]),
            None => {}
        }
    }
}

fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body).unwrap_or_default()["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn tls_client(server: &Server) -> Client {
    let ca = std::fs::read(server.data_dir.join("tls/ca.pem")).unwrap();
    Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap()
}

/// A gateway with small connection limits: bundled store or an upstream (never
/// reached here), plain or self-signed TLS.
fn limited(dir: &Path, tls: bool, upstream: bool, extra: &[&str]) -> Server {
    let mut args = Vec::new();
    for flag in [
        "--header-timeout-seconds",
        "--keepalive-timeout-seconds",
        "--body-timeout-seconds",
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, "2"]);
        }
    }
    if tls {
        args.push("--tls-self-signed");
    }
    if upstream {
        args.extend(["--upstream", "http://127.0.0.1:9"]);
    }
    args.extend_from_slice(extra);
    Server::start_with_env(
        &dir.join("data"),
        Some(ADMIN_PASSWORD),
        &args,
        &[("RUST_LOG", "warn,portcullis::gateway::connections=debug")],
    )
}

/// Dripping and idle clients are closed; the gateway still serves; the drops are
/// debug lines, not ERRORs.
fn slow_clients_are_cut_off(tls: bool, upstream: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = limited(dir.path(), tls, upstream, &[]);
    let ca = tls.then(|| server.data_dir.join("tls/ca.pem"));
    let label = format!(
        "{} {}",
        if upstream { "--upstream" } else { "bundled" },
        if tls { "tls" } else { "plain" }
    );
    let addr = server.host().to_owned();

    // 50 connections dripping a request head one byte every 250 ms (it would take
    // them a minute to finish).
    const DRIPPERS: usize = 50;
    let head = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(200)
    );
    let threads: Vec<_> = (0..DRIPPERS)
        .map(|_| {
            let (addr, ca, head) = (addr.clone(), ca.clone(), head.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr, ca.as_deref());
                let started = Instant::now();
                let mut buf = [0u8; 1024];
                for byte in head.as_bytes() {
                    if conn.write(&[*byte]).is_err() {
                        return Some(started.elapsed());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    match conn.read(&mut buf) {
                        Ok(Some(0)) | Err(_) => return Some(started.elapsed()),
                        Ok(Some(n)) => panic!(
                            "a dripped head got an answer: {}",
                            String::from_utf8_lossy(&buf[..n])
                        ),
                        Ok(None) => {}
                    }
                    if started.elapsed() > BOUND {
                        break;
                    }
                }
                None
            })
        })
        .collect();
    let closed: Vec<Duration> = threads
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap()
                .expect("a dripping connection stayed open")
        })
        .collect();
    let (first, last) = (closed.iter().min().unwrap(), closed.iter().max().unwrap());
    report(&format!(
        "{label}: {DRIPPERS} connections dripping a head 1 byte / 250 ms (header timeout \
         2 s): all closed after {:.1}–{:.1} s",
        first.as_secs_f64(),
        last.as_secs_f64()
    ));

    // An idle keep-alive connection after one answered request.
    let mut conn = Conn::open(&addr, ca.as_deref());
    conn.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (status, _, body) = read_response(&mut conn);
    assert_eq!((status, error_code(&body).as_str()), (401, "UNAUTHORIZED"));
    let (idle, _) = conn.wait_closed();
    let idle = idle.expect("an idle keep-alive connection stayed open");
    report(&format!(
        "{label}: idle keep-alive connection (timeout 2 s): closed after {:.1} s",
        idle.as_secs_f64()
    ));

    // A connection that never sends anything.
    let mut silent = Conn::open(&addr, ca.as_deref());
    let (silent_closed, _) = silent.wait_closed();
    assert!(silent_closed.is_some(), "a silent connection stayed open");

    // Still serving, with keep-alive for a client that keeps talking.
    let client = if tls {
        tls_client(&server)
    } else {
        Client::new()
    };
    for _ in 0..3 {
        let r = client.get(server.url("/v2/")).send().unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // A client that is no TLS client at all (a port scan, a TCP health check): its
    // failed handshake is a debug line, not an ERROR.
    if tls {
        let mut raw = TcpStream::connect(&addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        raw.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let _ = raw.read(&mut [0u8; 64]);
    }
    // Log lines are written in batches: all of them are out once the server stopped.
    let stderr_path = server.stderr_path.clone();
    server.stop();
    let stderr = std::fs::read_to_string(stderr_path).unwrap();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "ERROR lines: {errors:#?}");
    if tls {
        assert!(
            stderr.contains("tls handshake not completed"),
            "no debug line for the failed handshake:\n{stderr}"
        );
    }
    // Pingora's h2c peek (plain listeners) or the head buffer: one debug line each.
    let dropped = stderr
        .matches("request head not complete within the header timeout")
        .count();
    assert!(
        dropped >= DRIPPERS,
        "{dropped} debug lines for {DRIPPERS} dropped heads:\n{stderr}"
    );
}

#[test]
fn slow_clients_are_cut_off_bundled_plain() {
    slow_clients_are_cut_off(false, false);
}

#[test]
fn slow_clients_are_cut_off_bundled_tls() {
    slow_clients_are_cut_off(true, false);
}

#[test]
fn slow_clients_are_cut_off_upstream_plain() {
    slow_clients_are_cut_off(false, true);
}

#[test]
fn slow_clients_are_cut_off_upstream_tls() {
    slow_clients_are_cut_off(true, true);
}

#[test]
fn connections_per_client_address_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let server = limited(
        dir.path(),
        false,
        false,
        &[
            "--max-connections-per-client",
            "5",
            "--header-timeout-seconds",
            "60",
        ],
    );
    let addr = server.host().to_owned();
    let mut held: Vec<Conn> = (0..5).map(|_| Conn::open(&addr, None)).collect();
    // Give the gateway time to admit them (admission happens after accept).
    std::thread::sleep(Duration::from_millis(300));
    let mut sixth = Conn::open(&addr, None);
    let (status, head, body) = read_response(&mut sixth);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (429, "TOOMANYREQUESTS")
    );
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    // One closes: a new connection is served again.
    drop(held.pop());
    let started = Instant::now();
    loop {
        let mut conn = Conn::open(&addr, None);
        conn.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (status, _, _) = read_response(&mut conn);
        if status == 401 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            started.elapsed() < BOUND,
            "the freed place was never reused"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn at_the_descriptor_limit_the_oldest_idle_connections_make_room() {
    // 256 descriptors: the gateway caps connections at 64 (a quarter; the rest is its
    // reserve). 400 idle connections would exhaust the limit without the cap.
    const IDLE: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_under(
        &["prlimit", "--nofile=256:256", "--"],
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &["--header-timeout-seconds", "120"],
        &[],
    );
    let addr = server.host().to_owned();
    // In bursts of 50 a few milliseconds apart (a flood, still 400 connections in well
    // under a second): pingora accepts a whole backlog before the connections' tasks run,
    // so one burst of hundreds at once can still meet EMFILE in accept() before the
    // shedding closes anything (see the note in src/gateway/connections.rs).
    let idle: Vec<Conn> = (0..IDLE)
        .map(|i| {
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(20));
            }
            Conn::open(&addr, None)
        })
        .collect();
    // A legitimate client is still served, promptly enough that it notices nothing.
    let client = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    for _ in 0..20 {
        let r = client.get(server.url("/v2/")).send().unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let served = started.elapsed();
    let mut shed = 0;
    for mut conn in idle {
        let mut buf = [0u8; 16];
        if matches!(conn.read(&mut buf), Ok(Some(0)) | Err(_)) {
            shed += 1;
        }
    }
    report(&format!(
        "descriptor limit 256, {IDLE} idle connections: 20 requests served in {:.2} s; \
         {shed} oldest idle connections shed",
        served.as_secs_f64()
    ));
    assert!(
        shed >= IDLE - 64,
        "only {shed} of {IDLE} idle connections shed"
    );
    let stderr = server.stderr();
    assert!(!stderr.contains("Accept() failed"), "{stderr}");
}

#[test]
fn oversized_heads_get_431_and_stalled_bodies_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = limited(dir.path(), false, false, &["--max-header-bytes", "8192"]);
    let addr = server.host().to_owned();

    let mut conn = Conn::open(&addr, None);
    let big = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(16 * 1024)
    );
    conn.write(big.as_bytes()).unwrap();
    let (status, _, body) = read_response(&mut conn);
    assert_eq!((status, error_code(&body).as_str()), (431, "SIZE_INVALID"));
    // Within the limit is fine.
    let mut conn = Conn::open(&addr, None);
    let fits = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Fits: {}\r\n\r\n",
        "b".repeat(4 * 1024)
    );
    conn.write(fits.as_bytes()).unwrap();
    assert_eq!(read_response(&mut conn).0, 401);

    // A body that stalls: the token endpoint's form, 100 bytes declared, 10 sent.
    let mut conn = Conn::open(&addr, None);
    conn.write(
        b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n\
          grant_type",
    )
    .unwrap();
    let (closed, got) = conn.wait_closed();
    let closed = closed.expect("a stalled body kept its connection");
    report(&format!(
        "stalled request body (body timeout 2 s): connection closed after {:.1} s",
        closed.as_secs_f64()
    ));
    if !got.is_empty() {
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    }
}

/// A Basic `Authorization` value.
fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

#[test]
fn failed_logins_are_throttled_per_name_and_per_address() {
    let dir = tempfile::tempdir().unwrap();
    // Loopback is a trusted proxy: each request names its client in X-Forwarded-For.
    let server = Server::start_with(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &[
            "--max-failed-logins",
            "3",
            "--failed-login-window-seconds",
            "120",
            "--trusted-proxies",
            "127.0.0.1/32",
        ],
    );
    let ci = create_token(&server, "ci-bot", "team/app", &["content/read"]);
    let other = create_token(&server, "other", "team/app", &["content/read"]);
    let http = Client::new();
    let v2 = |from: &str, user: &str, password: &str| {
        http.get(server.url("/v2/"))
            .header("x-forwarded-for", from)
            .header("authorization", basic(user, password))
            .send()
            .unwrap()
    };
    let mut throttled = 0;
    let mut expect_429 = |r: reqwest::blocking::Response, what: &str| {
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=120).contains(&retry), "{what}: Retry-After {retry}");
        let body: Value = r.json().unwrap();
        assert_eq!(
            body["errors"][0]["code"], "TOOMANYREQUESTS",
            "{what}: {body}"
        );
        throttled += 1;
    };

    // Per name: three failures for `ci-bot` from one address; then even its correct
    // password, from another address, is refused unchecked.
    for _ in 0..3 {
        assert_eq!(
            v2("10.0.0.1", "ci-bot", "wrong").status(),
            StatusCode::UNAUTHORIZED
        );
    }
    expect_429(v2("10.0.0.2", "ci-bot", &ci), "name throttled");
    assert_eq!(v2("10.0.0.2", "other", &other).status(), StatusCode::OK);

    // Per address: one address guessing three names is throttled for every name,
    // on /v2/, the token endpoint (GET and POST) and the admin API.
    for name in ["a", "b", "c"] {
        assert_eq!(v2("10.0.0.3", name, "x").status(), StatusCode::UNAUTHORIZED);
    }
    expect_429(v2("10.0.0.3", "other", &other), "address throttled, /v2/");
    let token = http
        .get(server.url("/oauth2/token?service=portcullis&scope=repository:team/app:pull"))
        .header("x-forwarded-for", "10.0.0.3")
        .header("authorization", basic("other", &other))
        .send()
        .unwrap();
    expect_429(token, "address throttled, GET /oauth2/token");
    let form = format!(
        "grant_type=password&service=portcullis&client_id=test&username=other&password={other}"
    );
    let token = http
        .post(server.url("/oauth2/token"))
        .header("x-forwarded-for", "10.0.0.3")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .unwrap();
    expect_429(token, "address throttled, POST /oauth2/token");
    assert_eq!(v2("10.0.0.4", "other", &other).status(), StatusCode::OK);

    // A correct password does not clear the address's count for other names.
    assert_eq!(v2("10.0.0.5", "x", "x").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(v2("10.0.0.5", "y", "y").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(v2("10.0.0.5", "other", &other).status(), StatusCode::OK);
    assert_eq!(v2("10.0.0.5", "z", "z").status(), StatusCode::UNAUTHORIZED);
    expect_429(
        v2("10.0.0.5", "other", &other),
        "address count survives a success",
    );

    // The admin API: the name `admin` throttled after three wrong passwords.
    let admin = |from: &str, password: &str| {
        http.get(server.url("/admin/v1/tokens"))
            .header("x-forwarded-for", from)
            .header("authorization", basic("admin", password))
            .send()
            .unwrap()
    };
    assert_eq!(admin("10.0.0.6", ADMIN_PASSWORD).status(), StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(
            admin("10.0.0.6", "wrong").status(),
            StatusCode::UNAUTHORIZED
        );
    }
    expect_429(admin("10.0.0.7", ADMIN_PASSWORD), "admin throttled");

    // One audit record per throttled attempt (all written once the server stopped).
    let stderr_path = server.stderr_path.clone();
    server.stop();
    let stderr = std::fs::read_to_string(stderr_path).unwrap();
    let records = stderr
        .lines()
        .filter(|l| l.contains("\"type\":\"login_throttled\""))
        .count();
    assert_eq!(records, throttled, "{stderr}");
}

#[test]
fn upload_sessions_per_principal_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &["--max-upload-sessions", "2"],
    );
    let one = create_token(
        &server,
        "first",
        "team/app",
        &["content/read", "content/write"],
    );
    let two = create_token(
        &server,
        "second",
        "team/app",
        &["content/read", "content/write"],
    );
    let http = Client::new();
    let start = |user: &str, password: &str| {
        http.post(server.url("/v2/team/app/blobs/uploads/"))
            .header("authorization", basic(user, password))
            .send()
            .unwrap()
    };
    let first = start("first", &one);
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(start("first", &one).status(), StatusCode::ACCEPTED);
    let refused = start("first", &one);
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("upload sessions"),
        "{body}"
    );
    // Another principal is not affected.
    assert_eq!(start("second", &two).status(), StatusCode::ACCEPTED);
    // Cancelling a session frees its place.
    let url = if location.starts_with('/') {
        server.url(&location)
    } else {
        location
    };
    let cancelled = http
        .delete(url)
        .header("authorization", basic("first", &one))
        .send()
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::NO_CONTENT);
    assert_eq!(start("first", &one).status(), StatusCode::ACCEPTED);
}

#[test]
fn deeply_nested_json_and_oversized_manifests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD));
    let http = Client::new();
    let admin = basic("admin", ADMIN_PASSWORD);
    let deep = |levels: usize| {
        format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
             \"annotations\":{{\"x\":\"y\"}},\"deep\":{}1{}}}",
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    let put = |body: String| {
        http.put(server.url("/v2/team/app/manifests/deep"))
            .header("authorization", &admin)
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(body)
            .send()
            .unwrap()
    };
    let r = put(deep(100));
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_INVALID", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nested deeper than 32"),
        "{body}"
    );
    // Larger than 4 MiB.
    let big = format!(
        "{{\"schemaVersion\":2,\"annotations\":{{\"x\":\"{}\"}}}}",
        "a".repeat(4 * 1024 * 1024)
    );
    let r = put(big);
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = r.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "SIZE_INVALID", "{body}");

    // The admin API's JSON bodies.
    let nested = json!({"name": "deep", "repositories": []}).to_string();
    let nested = nested.replacen("[]", &format!("{}{}", "[".repeat(64), "]".repeat(64)), 1);
    let r = http
        .post(server.url("/admin/v1/tokens"))
        .header("authorization", &admin)
        .header("content-type", "application/json")
        .body(nested)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().unwrap();
    assert!(body.to_string().contains("nested deeper than 32"), "{body}");
}
