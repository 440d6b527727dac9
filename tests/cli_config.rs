//! `portcullis config content-trust` against a running `portcullis serve`, through the
//! admin API.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_PASSWORD, Server, cli, cli_json as ok};
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
