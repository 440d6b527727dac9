//! The real `notary` 0.7 CLI against the gateway's Notary API with token auth (issue 5,
//! "How it is checked"): init, add, publish, list from fresh trust directories and
//! anonymously, snapshot key rotation, remote delete; signing refused without
//! `trust/write` and to the admin account.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::ADMIN_PASSWORD;
use common::trust::{Notary, TrustGateway};

/// What the notary client prints when the server answers 401 to a write.
const NOT_AUTHORIZED: &str = "you are not authorized to perform this operation";

#[test]
fn notary_cli_publishes_lists_rotates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TrustGateway::start(dir.path(), &["--anonymous-pull"]);
    let repository = "samples/notary";
    let gun = gateway.gun(repository);
    let signer_password = gateway.token(
        "signer",
        repository,
        &[
            "content/read",
            "content/write",
            "content/delete",
            "trust/write",
        ],
    );
    let signer = Some(("signer", signer_password.as_str()));
    let reader_password = gateway.token("reader", repository, &["content/read"]);
    let reader = Some(("reader", reader_password.as_str()));
    let payload = dir.path().join("payload.txt");
    std::fs::write(&payload, "signed by the notary CLI\n").unwrap();
    let payload = payload.to_str().unwrap();

    let notary = Notary::new(&gateway);
    notary.ok(signer, &["init", &gun, "-p"]);
    notary.ok(signer, &["add", &gun, "v1", payload]);
    notary.ok(signer, &["publish", &gun]);
    let listed = notary.ok(signer, &["list", &gun]);
    assert!(listed.contains("v1"), "list after publish:\n{listed}");

    // Another machine (fresh trust directory) sees it, with read rights or anonymously.
    let listed = Notary::new(&gateway).ok(reader, &["list", &gun]);
    assert!(listed.contains("v1"), "list by a reader:\n{listed}");
    let listed = Notary::new(&gateway).ok(None, &["list", &gun]);
    assert!(listed.contains("v1"), "anonymous list:\n{listed}");

    // The snapshot key moves to the server; the next publish gets a server-made snapshot.
    notary.ok(signer, &["key", "rotate", &gun, "snapshot", "-r"]);
    notary.ok(signer, &["add", &gun, "v2", payload, "-p"]);
    let listed = Notary::new(&gateway).ok(reader, &["list", &gun]);
    assert!(
        listed.contains("v1") && listed.contains("v2"),
        "list after rotation and a second publish:\n{listed}"
    );
    let listed = notary.ok(signer, &["list", &gun]);
    assert!(
        listed.contains("v2"),
        "list from the signer's cache:\n{listed}"
    );

    // A reader may not delete; the signer (content/delete + trust/write) may.
    let out = Notary::new(&gateway).fails(reader, &["delete", &gun, "--remote"]);
    assert!(out.contains(NOT_AUTHORIZED), "delete by a reader:\n{out}");
    notary.ok(signer, &["delete", &gun, "--remote"]);
    let out = Notary::new(&gateway).fails(reader, &["list", &gun]);
    assert!(
        out.contains(&format!("does not have trust data for {gun}")),
        "list after delete:\n{out}"
    );
}

#[test]
fn notary_cli_cannot_publish_without_trust_write_nor_as_admin() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TrustGateway::start(dir.path(), &[]);
    let repository = "samples/unsigned";
    let gun = gateway.gun(repository);
    let pusher_password = gateway.token(
        "pusher",
        repository,
        &["content/read", "content/write", "content/delete"],
    );

    for (who, user) in [
        (
            "a token without trust/write",
            ("pusher", pusher_password.as_str()),
        ),
        ("the admin account", ("admin", ADMIN_PASSWORD)),
    ] {
        let notary = Notary::new(&gateway);
        let out = notary.fails(Some(user), &["init", &gun, "-p"]);
        assert!(out.contains(NOT_AUTHORIZED), "init -p by {who}:\n{out}");
    }
    // Nothing was published: a reader finds no trust data.
    let out = Notary::new(&gateway).fails(Some(("pusher", &pusher_password)), &["list", &gun]);
    assert!(
        out.contains(&format!("does not have trust data for {gun}")),
        "list of a never-published GUN:\n{out}"
    );
}
