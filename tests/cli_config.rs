//! `portcullis config content-trust` against a running `portcullis serve`, through the
//! admin API.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use common::{ADMIN_PASSWORD, Server, bin, cli, cli_json as ok};
use serde_json::json;

#[test]
fn content_trust_is_switched_and_disabling_needs_yes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD));
    let show = ["config", "content-trust", "show"];
    assert_eq!(ok(&server, &show), json!({"status": "disabled"}));
    assert_eq!(
        ok(
            &server,
            &["config", "content-trust", "update", "--status", "enabled"]
        ),
        json!({"status": "enabled"})
    );

    let out = cli(
        &server,
        &["config", "content-trust", "update", "--status", "disabled"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("deletes the trust data of every repository")
            && err.contains("cannot be undone")
            && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(ok(&server, &show), json!({"status": "enabled"}));

    assert_eq!(
        ok(
            &server,
            &[
                "config",
                "content-trust",
                "update",
                "--status",
                "disabled",
                "--yes"
            ]
        ),
        json!({"status": "disabled"})
    );
    let table = cli(&server, &["config", "content-trust", "show", "-o", "table"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("CONTENT TRUST") && table.contains("disabled"),
        "{table}"
    );
    // Usage errors are clap's (exit 2).
    let out = cli(
        &server,
        &["config", "content-trust", "update", "--status", "off"],
    );
    assert_eq!(out.status.code(), Some(2));
}

fn text(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn az_style_options_and_the_generated_admin_password() {
    let dir = tempfile::tempdir().unwrap();
    // No password given: the server generates one into ./data/admin-password.
    let server = Server::start(&dir.path().join("data"), None);
    // The CLI run where ./data is, with no credential: it reads that file.
    let run = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .current_dir(dir.path())
            .env_remove("PORTCULLIS_ADMIN_PASSWORD")
            .env_remove("PORTCULLIS_DATA_DIR")
            .env_remove("PORTCULLIS_REGISTRY")
            .output()
            .unwrap()
    };
    // `-r` for the registry, enum values in any case (`az ... --status Enabled`).
    let out = run(&[
        "config",
        "content-trust",
        "update",
        "-r",
        &server.base,
        "--status",
        "Enabled",
    ]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text(&out)).unwrap(),
        json!({"status": "enabled"})
    );
    let show = |format: &str, query: Option<&str>| {
        let mut args = vec![
            "config",
            "content-trust",
            "show",
            "-r",
            &server.base,
            "-o",
            format,
        ];
        if let Some(q) = query {
            args.extend(["--query", q]);
        }
        text(&run(&args))
    };
    assert_eq!(show("yaml", None), "status: enabled\n");
    assert_eq!(show("tsv", None), "enabled\n");
    assert_eq!(show("TSV", Some("status")), "enabled\n");
    assert_eq!(
        show("json", Some("{on: status == 'enabled'}")),
        "{\n  \"on\": true\n}\n"
    );
    assert_eq!(show("none", None), "");
    let colored = show("jsonc", None);
    assert!(
        colored.contains("\u{1b}[") && colored.contains("enabled"),
        "{colored}"
    );
    let table = show("table", Some("status"));
    assert_eq!(table, "Result\nenabled\n");
    let out = run(&[
        "config",
        "content-trust",
        "show",
        "-r",
        &server.base,
        "--query",
        "[?",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --query `[?`"));

    // PORTCULLIS_DATA_DIR names the data directory from anywhere else.
    let out = std::process::Command::new(bin())
        .args(["config", "content-trust", "show", "-r", &server.base])
        .current_dir(std::env::temp_dir())
        .env_remove("PORTCULLIS_ADMIN_PASSWORD")
        .env("PORTCULLIS_DATA_DIR", &server.data_dir)
        .output()
        .unwrap();
    assert!(text(&out).contains("enabled"));
    // Nowhere to find it: the error says where it looked.
    let out = std::process::Command::new(bin())
        .args(["config", "content-trust", "show", "-r", &server.base])
        .current_dir(std::env::temp_dir())
        .env_remove("PORTCULLIS_ADMIN_PASSWORD")
        .env("PORTCULLIS_DATA_DIR", dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no admin password") && err.contains("nowhere/admin-password"),
        "{err}"
    );
}
