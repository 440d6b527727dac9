//! Observability of `portcullis serve`, over real sockets: `/metrics` after real traffic
//! passes `promtool check metrics` (Prometheus 2.42, Debian `prometheus`) and counts GC
//! and reloads; the Grafana dashboard in `deploy/` names only metrics a live scrape
//! has and its queries parse (`promtool check rules`); JSON access logs carry the
//! request id (echoed), client, user agent, bytes, duration and principal; the audit
//! stream has one record per decision and per admin or token-endpoint action, with the
//! principal and no secret, whatever `RUST_LOG` says; `/readyz` asks the backend's
//! distribution API.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN_PASSWORD, Server, cli_json, content, create_token, registry};
use content::{OCI_MANIFEST, TestImage};
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;

fn admin(rb: RequestBuilder) -> RequestBuilder {
    rb.basic_auth("admin", Some(ADMIN_PASSWORD))
}

fn scrape(server: &Server) -> String {
    let resp = Client::new().get(server.url("/metrics")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.text().unwrap()
}

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// Runs `program args` with `input` on stdin; panics unless it succeeds silently.
fn run_quietly(program: &str, args: &[&str], input: &str) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/install-test-deps.sh installs it)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{stdout}{stderr}\ninput:\n{input}"
    );
    assert!(
        !stderr.contains("problem") && !stdout.contains("problem"),
        "{program} {args:?} complains:\n{stdout}{stderr}\ninput:\n{input}"
    );
}

/// Pushes an image, pulls it, is refused once, untags it (for GC to collect).
fn traffic(server: &Server) {
    let http = Client::new();
    let image = TestImage::new("observability");
    image.push(&http, &server.base, "samples/obs", "v1", &admin);
    let resp = admin(http.get(server.url("/v2/samples/obs/manifests/v1")))
        .header("accept", OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http.get(server.url("/v2/")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp =
        admin(http.delete(server.url(&format!("/v2/samples/obs/manifests/{}", image.digest()))))
            .send()
            .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

#[test]
fn metrics_pass_promtool_and_count_gc_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    // GC every second; content unreferenced for 2 s goes (the push finishes well
    // inside that).
    let server = Server::start_with(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &[
            "--gc-interval-seconds",
            "1",
            "--gc-grace-seconds",
            "2",
            "--policy-dir",
            policies.to_str().unwrap(),
        ],
    );
    traffic(&server);
    // A broken policy file is a failed reload; the admin API's reload then fails too.
    std::fs::write(policies.join("broken.cedar"), "permit (principal,").unwrap();
    let resp = admin(Client::new().post(server.url("/admin/v1/policy/reload")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    std::fs::remove_file(policies.join("broken.cedar")).unwrap();
    let resp = admin(Client::new().post(server.url("/admin/v1/policy/reload")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // The untagged manifest, its blobs' links and the blobs go in GC passes (one or two:
    // on a busy machine the two blobs may pass their grace in different seconds).
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = scrape(&server);
        if sample(&text, "portcullis_gc_removed_bytes_total").unwrap_or(0.0) > 0.0
            && sample(&text, "portcullis_gc_removed_total{kind=\"blob\"}").unwrap_or(0.0) >= 2.0
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "not both blobs' GC removal counted:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    run_quietly("promtool", &["check", "metrics"], &text);

    let at_least = |series: &str, min: f64| {
        let value = sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
        assert!(value >= min, "{series} = {value} < {min}");
    };
    at_least("portcullis_gc_runs_total{result=\"success\"}", 1.0);
    at_least("portcullis_gc_removed_total{kind=\"manifest\"}", 0.0);
    at_least("portcullis_gc_removed_total{kind=\"blob\"}", 2.0);
    at_least("portcullis_gc_duration_seconds_total", 0.0);
    at_least("portcullis_policy_reloads_total{result=\"success\"}", 1.0);
    at_least("portcullis_policy_reloads_total{result=\"failure\"}", 1.0);
    at_least(
        "portcullis_policy_last_reload_success_timestamp_seconds",
        1.7e9,
    );
    at_least(
        "portcullis_cache_lookups_total{cache=\"decision\",result=\"miss\"}",
        1.0,
    );
    at_least(
        "portcullis_request_body_bytes_total{route=\"manifest_put\"}",
        100.0,
    );
    at_least(
        "portcullis_response_body_bytes_total{route=\"manifest_get\"}",
        100.0,
    );
    at_least("portcullis_storage_errors_total{kind=\"status_5xx\"}", 0.0);
    at_least("process_resident_memory_bytes", 1.0);
    at_least("process_open_fds", 1.0);
    assert!(
        text.contains(&format!(
            "portcullis_build_info{{arch=\"{}\",os=\"linux\",version=\"{}\"}} 1",
            std::env::consts::ARCH,
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    // Prometheus conventions: no gauge masquerading as a running count.
    assert!(!text.contains("portcullis_cache_lookups{"), "{text}");
}

/// Metric names a PromQL expression refers to (`portcullis_*` and `process_*`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1])) {
            let end = (i..bytes.len())
                .find(|&j| !word(bytes[j]))
                .unwrap_or(bytes.len());
            let token = &expr[i..end];
            if token.starts_with("portcullis_") || token.starts_with("process_") {
                names.push(token.to_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_dashboard_names_only_metrics_a_live_scrape_has() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/portcullis-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let variables: Vec<String> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["definition"].as_str().map(str::to_owned))
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &["--gc-interval-seconds", "1"],
    );
    traffic(&server);
    // One GC pass, so the GC series exist with their labels.
    std::thread::sleep(Duration::from_millis(1500));
    let text = scrape(&server);
    let scraped: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let mut referenced = BTreeSet::new();
    for expr in exprs.iter().chain(&variables) {
        referenced.extend(metric_names(expr));
    }
    let missing: Vec<_> = referenced
        .iter()
        .filter(|name| !scraped.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics /metrics does not have: {missing:?}\nscraped: {scraped:?}"
    );
    for family in [
        "portcullis_requests_total",
        "portcullis_request_duration_seconds_bucket",
        "portcullis_decisions_total",
        "portcullis_cache_lookups_total",
        "portcullis_cache_bytes",
        "portcullis_upstream_errors_total",
        "portcullis_storage_errors_total",
        "portcullis_gc_runs_total",
        "portcullis_policy_reloads_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            referenced.contains(family),
            "the dashboard does not show {family}"
        );
    }

    // Every query parses as PromQL: promtool checks them as recording rules.
    exprs.dedup();
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| serde_json::json!({"record": format!("dashboard:query{i}"), "expr": expr}))
        .collect();
    let file = dir.path().join("dashboard-rules.json");
    // YAML is a superset of JSON.
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, doc.to_string()).unwrap();
    run_quietly("promtool", &["check", "rules", file.to_str().unwrap()], "");
}

/// The JSON objects among a log's lines whose `target` is `target`.
fn json_lines(log: &str, target: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == target)
        .collect()
}

#[test]
fn json_access_lines_carry_request_ids_and_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &[],
        &[("PORTCULLIS_LOG_FORMAT", "json"), ("RUST_LOG", "info")],
    );
    let http = Client::builder()
        .user_agent("observability-test/1.0")
        .build()
        .unwrap();
    let image = TestImage::new("json-logs");
    image.push(&http, &server.base, "samples/logs", "v1", &admin);
    let resp = admin(http.get(server.url("/v2/samples/logs/manifests/v1")))
        .header("accept", OCI_MANIFEST)
        .header("x-request-id", "client-id.42:a_b-c")
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-request-id"], "client-id.42:a_b-c");
    // An id that is not sane (a space, too long) is replaced by a generated one.
    let mut generated = Vec::new();
    for bad in ["two words", &"x".repeat(300)] {
        let resp = http
            .get(server.url("/v2/"))
            .header("x-request-id", bad)
            .send()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(id != bad && !id.is_empty() && id.len() <= 128, "{id}");
        generated.push(id);
    }
    assert_ne!(generated[0], generated[1]);
    let stderr_path = server.stderr_path.clone();
    server.stop();

    let log = std::fs::read_to_string(stderr_path).unwrap();
    let access = json_lines(&log, "portcullis::access");
    let pull = access
        .iter()
        .find(|l| l["request_id"] == "client-id.42:a_b-c")
        .unwrap_or_else(|| panic!("no access line with the client's id in\n{log}"));
    assert_eq!(pull["level"], "INFO");
    assert_eq!(pull["method"], "GET");
    assert_eq!(pull["path"], "/v2/samples/logs/manifests/v1");
    assert_eq!(pull["route"], "manifest_get");
    assert_eq!(pull["status"], 200);
    assert_eq!(pull["client"], "127.0.0.1");
    assert_eq!(pull["user_agent"], "observability-test/1.0");
    assert_eq!(pull["protocol"], "http/1.1");
    assert_eq!(pull["principal"], "admin");
    assert_eq!(pull["bytes_out"], image.manifest.len());
    assert_eq!(pull["bytes_in"], 0);
    assert!(pull["duration_seconds"].as_f64().unwrap() > 0.0, "{pull}");
    assert!(pull["timestamp"].is_string(), "{pull}");
    let put = access
        .iter()
        .find(|l| l["route"] == "manifest_put")
        .unwrap_or_else(|| panic!("no manifest PUT in\n{log}"));
    assert_eq!(put["bytes_in"], image.manifest.len());
    assert_eq!(put["status"], 201);
    for id in &generated {
        let line = access.iter().find(|l| l["request_id"] == id.as_str());
        let line = line.unwrap_or_else(|| panic!("no access line for {id}"));
        assert_eq!(line["principal"], "-");
        assert_eq!(line["status"], 401);
    }
    // Every line of the log is JSON.
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

fn audit_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn the_audit_stream_records_decisions_and_actions_with_the_principal() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    // RUST_LOG=warn (the helper's default) must not silence the audit stream.
    let server = Server::start_with(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &["--audit-log", audit.to_str().unwrap()],
    );
    let http = Client::new();
    let reader = create_token(&server, "reader", "samples/audit", &["content/read"]);
    let generated = cli_json(
        &server,
        &[
            "token",
            "credential",
            "generate",
            "-n",
            "reader",
            "--password2",
        ],
    );
    let password2 = generated["passwords"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    cli_json(
        &server,
        &["config", "content-trust", "update", "--status", "enabled"],
    );
    // A failed admin login.
    let resp = http
        .get(server.url("/admin/v1/tokens"))
        .basic_auth("admin", Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Token endpoint: issued (pull granted, push not), and refused.
    let resp = http
        .get(
            server.url("/oauth2/token?service=portcullis&scope=repository:samples/audit:pull,push"),
        )
        .basic_auth("reader", Some(&reader))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .get(server.url("/oauth2/token?service=portcullis"))
        .basic_auth("reader", Some("not-the-password"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Registry decisions: a denied manifest pull (one record, not two), a denied push,
    // an allowed pull.
    let denied_pull = "/v2/samples/other/manifests/latest";
    let resp = http
        .get(server.url(denied_pull))
        .basic_auth("reader", Some(&reader))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = http
        .post(server.url("/v2/samples/audit/blobs/uploads/"))
        .basic_auth("reader", Some(&password2))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = http
        .get(server.url("/v2/samples/audit/manifests/v1"))
        .basic_auth("reader", Some(&reader))
        .send()
        .unwrap();
    let status = resp.status();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "allowed: {}",
        resp.text().unwrap()
    );
    cli_json(&server, &["token", "delete", "-n", "reader", "--yes"]);
    let stderr = server.stderr();
    server.stop();

    let records = audit_records(&audit);
    let text = std::fs::read_to_string(&audit).unwrap();
    for secret in [ADMIN_PASSWORD, &reader, &password2, "not-the-password"] {
        assert!(!text.contains(secret), "a secret in the audit log:\n{text}");
    }
    assert!(
        !stderr.contains("\"type\":\"authorization\""),
        "audit went to stderr"
    );
    let find = |pred: &dyn Fn(&Value) -> bool| -> Vec<&Value> {
        records.iter().filter(|r| pred(r)).collect()
    };
    for r in &records {
        assert!(r["time"].is_string() && r["request_id"].is_string(), "{r}");
    }

    let admin_action = |action: &str| {
        let found = find(&|r| r["type"] == "admin" && r["action"] == action);
        assert_eq!(found.len(), 1, "{action} in {records:#?}");
        let r = found[0];
        assert_eq!(r["principal"], "admin", "{r}");
        assert_eq!(r["client"], "127.0.0.1", "{r}");
        r.clone()
    };
    assert_eq!(admin_action("token.create")["status"], 201);
    assert_eq!(
        admin_action("credential.generate")["path"],
        "/admin/v1/tokens/reader/credentials/generate"
    );
    assert_eq!(
        admin_action("content_trust.update")["detail"]["status"],
        "enabled"
    );
    assert_eq!(admin_action("token.delete")["status"], 204);
    let failed = find(&|r| r["type"] == "admin" && r["action"] == "authenticate");
    assert_eq!(failed.len(), 1, "{records:#?}");
    assert_eq!(failed[0]["principal"], "-");
    assert_eq!(failed[0]["status"], 401);
    // Reads are not actions.
    assert!(
        find(&|r| r["type"] == "admin" && r["method"] == "GET" && r["status"] == 200).is_empty()
    );

    let tokens = find(&|r| r["type"] == "token");
    assert_eq!(tokens.len(), 2, "{records:#?}");
    assert_eq!(tokens[0]["principal"], "token:reader/password1");
    assert_eq!(tokens[0]["status"], 200);
    assert_eq!(
        tokens[0]["scopes"],
        serde_json::json!(["repository:samples/audit:pull"])
    );
    assert_eq!(tokens[1]["principal"], "-");
    assert_eq!(tokens[1]["status"], 401);
    assert!(tokens[1]["error"].is_string());

    let decisions = |path: &str| find(&|r| r["type"] == "authorization" && r["path"] == path);
    let pull = decisions(denied_pull);
    assert_eq!(pull.len(), 1, "one record per denied request: {pull:#?}");
    assert_eq!(pull[0]["decision"], "deny");
    assert_eq!(pull[0]["principal"], "token:reader/password1");
    assert_eq!(pull[0]["method"], "GET");
    assert!(
        pull[0]["reason"]
            .as_str()
            .unwrap()
            .contains("samples/other")
    );
    let push = decisions("/v2/samples/audit/blobs/uploads/");
    assert_eq!(push.len(), 1, "{push:#?}");
    assert_eq!(push[0]["decision"], "deny");
    assert_eq!(push[0]["principal"], "token:reader/password2");
    let list = decisions("/v2/samples/audit/manifests/v1");
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0]["decision"], "allow");
    assert!(list[0]["reason"].is_null());
}

/// A loopback socket that answers every request with `response` (not a registry).
fn fake_server(response: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(response.as_bytes());
        }
    });
    format!("http://{addr}")
}

fn readyz(server: &Server) -> (StatusCode, String) {
    let resp = Client::new().get(server.url("/readyz")).send().unwrap();
    (resp.status(), resp.text().unwrap())
}

#[test]
fn readiness_asks_the_backend_for_the_distribution_api() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = registry::DockerRegistry::start();
    let server = Server::start_with(
        &dir.path().join("ok"),
        Some(ADMIN_PASSWORD),
        &["--upstream", &upstream.url],
    );
    assert_eq!(readyz(&server).0, StatusCode::OK);
    // Stopped: after the cached answer expires, not ready.
    drop(upstream);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = readyz(&server);
        if status != StatusCode::OK || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // A socket that accepts and answers HTTP, but is no registry.
    for (name, response) in [
        (
            "web",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        ),
        (
            "forbidden",
            "HTTP/1.1 403 Forbidden\r\nDocker-Distribution-API-Version: registry/2.0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let server = Server::start_with(
            &dir.path().join(name),
            Some(ADMIN_PASSWORD),
            &["--upstream", &fake_server(response)],
        );
        let (status, body) = readyz(&server);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {body}");
        assert!(body.starts_with("not ready: backend"), "{body}");
    }
    // A socket that accepts and never answers: not ready within the probe timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = Server::start_with(
        &dir.path().join("silent"),
        Some(ADMIN_PASSWORD),
        &[
            "--upstream",
            &format!("http://{}", silent.local_addr().unwrap()),
        ],
    );
    let started = Instant::now();
    assert_eq!(readyz(&server).0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The bundled store is ready.
    let server = Server::start(&dir.path().join("bundled"), Some(ADMIN_PASSWORD));
    assert_eq!(readyz(&server).0, StatusCode::OK);
}
