//! The real `notary` 0.7 CLI against the gateway's Notary API with token auth (issue 5,
//! "How it is checked"): init, add, publish, list from fresh trust directories and
//! anonymously, snapshot key rotation, remote delete; signing refused without
//! `trust/write` and to the admin account; the changefeed of every GUN over HTTP, filtered
//! to what the caller may read, after the CLI published to two repositories.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use common::ADMIN_PASSWORD;
use common::trust::{Notary, TrustGateway};
use reqwest::StatusCode;
use reqwest::blocking::{RequestBuilder, Response};
use serde_json::Value;

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

/// GET `/v2/_trust/changefeed?<query>` with `auth` applied.
fn global_feed(
    gateway: &TrustGateway,
    query: &str,
    auth: impl Fn(RequestBuilder) -> RequestBuilder,
) -> Response {
    let url = gateway
        .server
        .url(&format!("/v2/_trust/changefeed?{query}"));
    auth(gateway.http.get(url)).send().unwrap()
}

/// The (ID, GUN) of each record of a 200 changefeed page, after checking its shape.
fn records(resp: Response) -> Vec<(String, String)> {
    assert_eq!(resp.status(), StatusCode::OK);
    let feed: Value = resp.json().unwrap();
    let records = feed["records"].as_array().unwrap();
    assert_eq!(feed["count"].as_u64(), Some(records.len() as u64), "{feed}");
    records
        .iter()
        .map(|r| {
            assert_eq!(r["Category"], "update", "{r}");
            (
                r["ID"].as_str().unwrap().to_owned(),
                r["GUN"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn global_changefeed_shows_each_caller_the_guns_it_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TrustGateway::start(dir.path(), &[]);
    let (one, two) = (gateway.gun("samples/one"), gateway.gun("samples/two"));
    let signer_password = gateway.token(
        "signer",
        "samples/*",
        &["content/read", "content/write", "trust/write"],
    );
    let signer = Some(("signer", signer_password.as_str()));
    let reader_password = gateway.token("one-reader", "samples/one", &["content/read"]);
    let payload = dir.path().join("payload.txt");
    std::fs::write(&payload, "in the changefeed\n").unwrap();
    let payload = payload.to_str().unwrap();

    // Four publishes, alternating: one, two, one, two.
    let notary = Notary::new(&gateway);
    notary.ok(signer, &["init", &one, "-p"]);
    notary.ok(signer, &["init", &two, "-p"]);
    notary.ok(signer, &["add", &one, "v1", payload, "-p"]);
    notary.ok(signer, &["add", &two, "v1", payload, "-p"]);

    // Anonymous callers are challenged for the catalog scope, as notary-server does.
    let resp = global_feed(&gateway, "", |r| r);
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer realm=")
            && challenge.ends_with(",scope=\"registry:catalog:*\""),
        "{challenge}"
    );

    // The admin sees every GUN, in change order.
    let admin = |r: RequestBuilder| r.basic_auth("admin", Some(ADMIN_PASSWORD));
    let all = records(global_feed(&gateway, "", admin));
    let guns: Vec<&str> = all.iter().map(|(_, gun)| gun.as_str()).collect();
    assert_eq!(guns, [&one, &two, &one, &two]);
    let id = |i: usize| all[i].0.as_str();

    // A token for samples/one sees its records only, with Basic and with a bearer token
    // for the catalog scope; the name samples/two never appears.
    let basic = |r: RequestBuilder| r.basic_auth("one-reader", Some(&reader_password));
    let mine = vec![all[0].clone(), all[2].clone()];
    assert_eq!(records(global_feed(&gateway, "", basic)), mine);
    let token = |scope: &str| -> String {
        let resp = gateway
            .http
            .get(gateway.server.url("/oauth2/token"))
            .query(&[("scope", scope)])
            .basic_auth("one-reader", Some(&reader_password))
            .send()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json::<Value>().unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let catalog = token("registry:catalog:*");
    let resp = global_feed(&gateway, "", |r| r.bearer_auth(&catalog));
    let text = resp.text().unwrap();
    assert!(!text.contains("samples/two"), "{text}");
    let feed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(feed["count"], 2, "{feed}");
    // A bearer token without the catalog scope is asked to get it.
    let gun_only = token(&format!("repository:{one}:pull"));
    let resp = global_feed(&gateway, "", |r| r.bearer_auth(&gun_only));
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.ends_with(",scope=\"registry:catalog:*\",error=\"insufficient_scope\""),
        "{challenge}"
    );

    // Paging: full pages although filtering skips records, forwards and backwards.
    let page = |query: String| records(global_feed(&gateway, &query, basic));
    assert_eq!(page("records=1".into()), [all[0].clone()]);
    assert_eq!(
        page(format!("change_id={}&records=1", id(0))),
        [all[2].clone()]
    );
    assert_eq!(page(format!("change_id={}&records=5", id(2))), []);
    assert_eq!(page("records=-1".into()), [all[2].clone()]);
    assert_eq!(
        page(format!("change_id={}&records=-1", id(2))),
        [all[0].clone()]
    );
    let admin_page = records(global_feed(
        &gateway,
        &format!("change_id={}&records=2", id(0)),
        admin,
    ));
    assert_eq!(admin_page, all[1..3]);
    let resp = global_feed(&gateway, "records=many", admin);
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}
