//! The built `portcullis` CLI (token, scope-map) against a running `portcullis serve`.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use common::{Server, bin, cli};
use portcullis::identity::{IdentityStore, PasswordSlot, now_unix};
use serde_json::Value;

fn ok_json(server: &Server, args: &[&str]) -> Value {
    let out = cli(server, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ok_text(server: &Server, args: &[&str]) -> String {
    let out = cli(server, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn value_of(passwords: &Value, slot: &str) -> String {
    passwords
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == slot)
        .and_then(|p| p["value"].as_str())
        .unwrap()
        .to_owned()
}

#[test]
fn token_lifecycle_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, Some(common::ADMIN_PASSWORD));

    // Create with two --repository groups: a `<token>-scope-map` is made for it.
    let created = ok_json(
        &server,
        &[
            "token",
            "create",
            "--name",
            "ci-bot",
            "--repository",
            "samples/*",
            "content/read",
            "content/write",
            "--repository",
            "samples/hello",
            "content/delete",
        ],
    );
    assert_eq!(created["scopeMap"], "ci-bot-scope-map");
    let p1 = value_of(&created["credentials"]["passwords"], "password1");
    let p2 = value_of(&created["credentials"]["passwords"], "password2");
    let map = ok_json(
        &server,
        &["scope-map", "show", "--name", "ci-bot-scope-map"],
    );
    assert_eq!(
        map["actions"],
        serde_json::json!([
            "repositories/samples/*/content/read",
            "repositories/samples/*/content/write",
            "repositories/samples/hello/content/delete"
        ])
    );

    // Reuse a scope map.
    ok_json(
        &server,
        &[
            "token",
            "create",
            "-n",
            "puller",
            "--scope-map",
            "_repositories_pull",
            "--no-passwords",
        ],
    );
    let list = ok_json(&server, &["token", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci-bot", "puller"]);

    // Table output.
    let table = ok_text(&server, &["token", "list", "--output", "table"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("SCOPE MAP"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("ci-bot") && lines[1].contains("ci-bot-scope-map"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("puller") && lines[2].contains("enabled"),
        "{table}"
    );
    assert!(!table.contains(&p1));

    // Regenerate password1 only.
    let generated = ok_json(
        &server,
        &[
            "token",
            "credential",
            "generate",
            "-n",
            "ci-bot",
            "--password1",
            "--expiration-in-days",
            "30",
        ],
    );
    let passwords = generated["passwords"].as_array().unwrap();
    assert_eq!(passwords.len(), 1);
    let new1 = value_of(&generated["passwords"], "password1");
    assert_ne!(new1, p1);

    // Scope-map update and disable through the CLI.
    ok_json(
        &server,
        &[
            "scope-map",
            "update",
            "-n",
            "ci-bot-scope-map",
            "--add-repository",
            "other",
            "metadata/read",
            "--remove-repository",
            "samples/hello",
            "content/delete",
            "--description",
            "changed",
        ],
    );
    let map = ok_json(
        &server,
        &["scope-map", "show", "-n", "ci-bot-scope-map", "-o", "json"],
    );
    assert_eq!(map["description"], "changed");
    assert_eq!(
        map["actions"],
        serde_json::json!([
            "repositories/samples/*/content/read",
            "repositories/samples/*/content/write",
            "repositories/other/metadata/read"
        ])
    );
    let updated = ok_json(
        &server,
        &["token", "update", "-n", "puller", "--status", "disabled"],
    );
    assert_eq!(updated["status"], "disabled");

    // Errors: the server's message, exit code 1.
    let out = cli(
        &server,
        &["scope-map", "delete", "-n", "_repositories_pull"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("system-defined") && err.contains("409"),
        "{err}"
    );
    let out = cli(
        &server,
        &[
            "scope-map",
            "create",
            "-n",
            "bad-map",
            "--repository",
            "a/*/b",
            "content/read",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wildcard in the middle"));
    let out = std::process::Command::new(bin())
        .args(["token", "list", "--registry", &server.base])
        .env("PORTCULLIS_ADMIN_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // Delete puller; ci-bot stays.
    let out = cli(&server, &["token", "delete", "-n", "puller"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let list = ok_json(&server, &["token", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let out = cli(&server, &["token", "show", "-n", "puller"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token `puller` not found"));

    // The regenerated slot and the untouched slot both work; the old password1 does not.
    server.stop();
    let store = IdentityStore::open(&data.join("control.redb")).unwrap();
    let now = now_unix();
    assert_eq!(
        store.verify_password("ci-bot", &new1, now),
        Ok(PasswordSlot::Password1)
    );
    assert_eq!(
        store.verify_password("ci-bot", &p2, now),
        Ok(PasswordSlot::Password2)
    );
    assert!(store.verify_password("ci-bot", &p1, now).is_err());
}

#[test]
fn credential_delete_removes_one_slot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(common::ADMIN_PASSWORD));
    ok_json(
        &server,
        &[
            "token",
            "create",
            "-n",
            "two-slots",
            "--scope-map",
            "_repositories_push",
        ],
    );
    let after = ok_json(
        &server,
        &[
            "token",
            "credential",
            "delete",
            "-n",
            "two-slots",
            "--password2",
        ],
    );
    let slots: Vec<&str> = after["credentials"]["passwords"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(slots, ["password1"]);
    // One of --password1/--password2 is required (clap usage error, exit 2).
    let out = cli(
        &server,
        &["token", "credential", "delete", "-n", "two-slots"],
    );
    assert_eq!(out.status.code(), Some(2));
    let table = ok_text(
        &server,
        &[
            "token",
            "credential",
            "generate",
            "-n",
            "two-slots",
            "--password2",
            "-o",
            "table",
        ],
    );
    assert!(
        table.starts_with("PASSWORD") && table.contains("password2"),
        "{table}"
    );
    assert!(!table.contains("password1"), "{table}");

    // Both together, as `az acr token credential delete --password1 --password2`.
    let after = ok_json(
        &server,
        &[
            "token",
            "credential",
            "delete",
            "-n",
            "two-slots",
            "--password1",
            "--password2",
        ],
    );
    assert_eq!(
        after["credentials"]["passwords"].as_array().map(Vec::len),
        Some(0),
        "{after}"
    );
    // `--yes` where az prompts.
    let out = cli(&server, &["token", "delete", "-n", "two-slots", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(ok_json(&server, &["token", "list"]), serde_json::json!([]));
}
