//! `portcullis policy explain` / `export` and policy reloading (admin endpoint, file
//! change, SIGHUP) against a real `portcullis serve` with its own policy directory.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const PASSWORD: &str = "policy-test-admin-password";

/// `portcullis serve --policy-dir DIR` on an ephemeral port; killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(data_dir: &Path, policy_dir: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--policy-dir")
            .arg(policy_dir)
            .env("PORTCULLIS_ADMIN_PASSWORD", PASSWORD)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn portcullis serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server { child, base }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .env("PORTCULLIS_REGISTRY", &self.base)
            .env("PORTCULLIS_ADMIN_PASSWORD", PASSWORD)
            .output()
            .expect("run portcullis")
    }

    fn explain(&self, action: &str) -> String {
        let out = self.cli(&[
            "policy",
            "explain",
            "--token",
            "ci-bot",
            "--repository",
            "prod/app",
            "--action",
            action,
            "-o",
            "table",
        ]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn reload(&self) -> (u16, String) {
        let resp = reqwest::blocking::Client::new()
            .post(format!("{}/admin/v1/policy/reload", self.base))
            .basic_auth("admin", Some(PASSWORD))
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const NO_PROD_DELETES: &str = include_str!("../policies/examples/no-prod-deletes.cedar");

/// Polls `explain` until its output contains `needle` (reloads are asynchronous).
fn wait_for(server: &Server, action: &str, needle: &str) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        last = server.explain(action);
        if last.contains(needle) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("explain never showed {needle:?}; last:\n{last}");
}

#[test]
fn explain_export_and_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("no-prod-deletes.cedar"), NO_PROD_DELETES).unwrap();
    let server = Server::start(&tmp.path().join("data"), &policies);

    let out = server.cli(&[
        "token",
        "create",
        "--name",
        "ci-bot",
        "--repository",
        "prod/*",
        "content/read",
        "content/delete",
    ]);
    assert!(out.status.success(), "{out:?}");

    let text = server.explain("content/read");
    assert!(text.starts_with("decision: allow\n"), "{text}");
    assert!(
        text.contains("  scopemap/ci-bot-scope-map/rule/1\n"),
        "{text}"
    );
    assert!(
        text.contains("scopemap/ci-bot-scope-map/rule/1: prod/* -> content/read, content/delete"),
        "{text}"
    );

    let text = server.explain("content/delete");
    assert!(text.starts_with("decision: deny\n"), "{text}");
    assert!(text.contains("  examples/no-prod-deletes\n"), "{text}");

    // JSON output by default.
    let out = server.cli(&[
        "policy",
        "explain",
        "--token",
        "ci-bot",
        "--repository",
        "dev/app",
        "--action",
        "content/read",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["matchingRules"], serde_json::json!([]));

    let out = server.cli(&["policy", "export"]);
    let export = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(
        export.contains("@id(\"scopemap/ci-bot-scope-map/rule/1\")"),
        "{export}"
    );
    assert!(export.contains("resource.name like \"prod/*\""), "{export}");
    assert!(
        export.contains("@id(\"scopemap/_repositories_admin/rule/1\")"),
        "{export}"
    );

    // An invalid file is refused with its location; the previous set stays in force.
    std::fs::write(
        policies.join("bad.cedar"),
        "forbid(principal, action, resource)\nwhen { nosuch };\n",
    )
    .unwrap();
    let (status, body) = server.reload();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad.cedar:2:"), "{body}");
    assert!(
        server
            .explain("content/delete")
            .starts_with("decision: deny\n")
    );

    // Fixed and the forbid removed: the reload endpoint puts it in force.
    std::fs::remove_file(policies.join("bad.cedar")).unwrap();
    std::fs::remove_file(policies.join("no-prod-deletes.cedar")).unwrap();
    let (status, body) = server.reload();
    assert_eq!(status, 200, "{body}");
    assert!(
        server
            .explain("content/delete")
            .starts_with("decision: allow\n")
    );

    // SIGHUP (or the file poll) reloads too, and the server keeps running.
    std::fs::write(policies.join("no-prod-deletes.cedar"), NO_PROD_DELETES).unwrap();
    server.hangup();
    wait_for(&server, "content/delete", "decision: deny\n");
}

#[test]
fn explain_requires_admin_and_a_known_token() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let server = Server::start(&tmp.path().join("data"), &policies);
    let resp = reqwest::blocking::Client::new()
        .get(format!("{}/admin/v1/policy/export", server.base))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    let out = server.cli(&[
        "policy",
        "explain",
        "--token",
        "nobody",
        "--repository",
        "a",
        "--action",
        "content/read",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("token `nobody` not found"), "{stderr}");
}
