//! Two gateway processes sharing one control plane in a real PostgreSQL
//! (`--control-plane postgres://…`, separate data directories, the same admin password
//! and trust key passphrase file): a bearer token minted by one is accepted by the
//! other; a signing-key rotation through one leaves earlier tokens valid on both and new
//! tokens (with the new kid) valid on both, and a rotation dropping the previous keys
//! (after a leak) refuses their tokens on both; a policy set pushed through one is enforced
//! by the other (the delay printed), a rollback restores the previous set, and an invalid
//! push is refused with its place and changes nothing. Each gateway serves its own
//! content (blobs in its data directory); what they share is the control plane.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::content::TestImage;
use common::{ADMIN_PASSWORD, Server, cli, json_output};
use portcullis_test_support::oci::status_and_code;
use portcullis_test_support::postgres::Postgres;
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;

const REPO: &str = "cluster/app";
const LOCKED: &str = "cluster/locked";

/// A gateway on the shared control plane at `url`, data in `dir`.
fn gateway(dir: &Path, url: &str, passphrase: &Path) -> Server {
    Server::start_with(
        dir,
        Some(ADMIN_PASSWORD),
        &[
            "--control-plane",
            url,
            "--trust-key-passphrase-file",
            passphrase.to_str().unwrap(),
        ],
    )
}

/// A bearer token for `scope` from `server`'s token endpoint, as the admin.
fn bearer(http: &Client, server: &Server, scope: &str) -> String {
    let resp = http
        .get(server.url("/oauth2/token"))
        .query(&[("scope", scope), ("service", "portcullis")])
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "token from {}", server.base);
    resp.json::<Value>().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn kid(jwt: &str) -> String {
    let header = jwt.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// GET of `repo:tag`'s manifest on `server` with `jwt`: the status.
fn pull(http: &Client, server: &Server, repo: &str, jwt: &str) -> StatusCode {
    http.get(server.url(&format!("/v2/{repo}/manifests/v1")))
        .header("accept", common::content::OCI_MANIFEST)
        .bearer_auth(jwt)
        .send()
        .unwrap()
        .status()
}

/// Runs the CLI against `server`, asserts success, returns its JSON output.
fn cli_ok(server: &Server, args: &[&str]) -> Value {
    let args = [args, &["-o", "json"]].concat();
    json_output(&args, &cli(server, &args))
}

#[test]
fn two_gateways_share_signing_keys_and_pushed_policies() {
    let url = Postgres::shared().database();
    let tmp = tempfile::tempdir().unwrap();
    let passphrase = tmp.path().join("passphrase");
    std::fs::write(&passphrase, "cluster test passphrase\n").unwrap();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = gateway(&dir_a, &url, &passphrase);
    let b = gateway(&dir_b, &url, &passphrase);
    let http = Client::new();
    let scope = |repo: &str| format!("repository:{repo}:pull,push");

    // A token minted by A pushes and pulls through B.
    let from_a = bearer(&http, &a, &scope(REPO));
    let with = |jwt: String| move |r: RequestBuilder| r.bearer_auth(&jwt);
    TestImage::new("cluster").push(&http, &b.base, REPO, "v1", &with(from_a.clone()));
    assert_eq!(pull(&http, &b, REPO, &from_a), StatusCode::OK);
    let first_kid = kid(&from_a);
    assert_eq!(kid(&bearer(&http, &b, &scope(REPO))), first_kid);

    // Rotated through B: B signs with the new key at once, A within moments.
    let rotated = cli_ok(&b, &["signing-key", "rotate"]);
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, first_kid);
    assert_eq!(rotated["signing"], true);
    let started = Instant::now();
    let from_a_new = loop {
        let jwt = bearer(&http, &a, &scope(REPO));
        if kid(&jwt) == new_kid {
            break jwt;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "A never signed with the new key"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "rotation reached the other gateway in {:?}",
        started.elapsed()
    );
    let from_b_new = bearer(&http, &b, &scope(REPO));
    assert_eq!(kid(&from_b_new), new_kid);
    TestImage::new("cluster on a").push(&http, &a.base, REPO, "v1", &with(from_a.clone()));
    for server in [&a, &b] {
        for jwt in [&from_a, &from_a_new, &from_b_new] {
            assert_eq!(
                pull(&http, server, REPO, jwt),
                StatusCode::OK,
                "{}",
                server.base
            );
        }
    }
    let keys = cli_ok(&a, &["signing-key", "list"]);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["kid"], first_kid.as_str());
    assert!(keys[0]["retired"].is_i64() && keys[0]["dropsAt"].is_i64());
    assert_eq!(keys[1]["kid"], new_kid.as_str());
    assert_eq!(keys[1]["signing"], true);
    // After a leak: rotated through A dropping the previous keys, their tokens (already
    // verified and cached by both gateways) are refused everywhere within moments.
    let dropped = cli_ok(&a, &["signing-key", "rotate", "--drop-previous", "--yes"]);
    let third_kid = dropped["kid"].as_str().unwrap().to_owned();
    for server in [&a, &b] {
        wait_for(|| pull(&http, server, REPO, &from_a_new) == StatusCode::UNAUTHORIZED);
        assert_eq!(pull(&http, server, REPO, &from_a), StatusCode::UNAUTHORIZED);
    }
    let keys = cli_ok(&b, &["signing-key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["kid"], third_kid.as_str());
    let from_b_third = bearer(&http, &b, &scope(REPO));
    assert_eq!(kid(&from_b_third), third_kid);
    assert_eq!(pull(&http, &a, REPO, &from_b_third), StatusCode::OK);
    let from_a_new = from_b_third;
    let refused = cli(&a, &["signing-key", "rotate", "--drop-previous"]);
    assert!(!refused.status.success(), "--drop-previous without --yes");

    // A token signed by a key outside the ring is refused like any invalid token.
    let mut forged = from_a_new.clone();
    forged.replace_range(..forged.find('.').unwrap(), &URL_SAFE_NO_PAD.encode(
        br#"{"alg":"ES256","typ":"JWT","kid":"AAAA:AAAA:AAAA:AAAA:AAAA:AAAA:AAAA:AAAA:AAAA:AAAA:AAAA:AAAA"}"#,
    ));
    assert_eq!(pull(&http, &b, REPO, &forged), StatusCode::UNAUTHORIZED);

    // A policy set pushed through A is enforced by B (announced by NOTIFY).
    let admin_b = with(bearer(&http, &b, &scope(LOCKED)));
    TestImage::new("locked").push(&http, &b.base, LOCKED, "v1", &admin_b);
    let jwt_b = bearer(&http, &b, &scope(LOCKED));
    assert_eq!(pull(&http, &b, LOCKED, &jwt_b), StatusCode::OK);
    let policies = tmp.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("lock.cedar"),
        format!(
            "@id(\"cluster/lock\")\nforbid (principal, action == Action::\"content/read\", resource)\n\
             when {{ resource.name == \"{LOCKED}\" }};\n"
        ),
    )
    .unwrap();
    let pushed = cli_ok(
        &a,
        &["policy", "push", policies.to_str().unwrap(), "-m", "lock"],
    );
    let pushed_at = Instant::now();
    assert_eq!(pushed["version"], 1);
    assert_eq!(pushed["files"], serde_json::json!(["lock.cedar"]));
    // Announced at once; the time is printed, not asserted (debug builds validate the
    // set in a few hundred milliseconds on a loaded machine).
    while pull(&http, &b, LOCKED, &jwt_b) != StatusCode::FORBIDDEN {
        assert!(
            pushed_at.elapsed() < Duration::from_secs(10),
            "B never enforced the pushed policy"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "pushed policy enforced by the other gateway after {:?}",
        pushed_at.elapsed()
    );
    let denied = http
        .get(b.url(&format!("/v2/{LOCKED}/manifests/v1")))
        .bearer_auth(&jwt_b)
        .send()
        .unwrap();
    assert_eq!(
        status_and_code(denied),
        (StatusCode::FORBIDDEN, "DENIED".into())
    );
    assert_eq!(
        pull(&http, &b, REPO, &from_a_new),
        StatusCode::OK,
        "other repositories"
    );

    // An invalid push is refused with its place and changes nothing.
    std::fs::write(
        policies.join("broken.cedar"),
        "forbid (principal, action, resource)\nwhen { resource.nmae == \"x\" };\n",
    )
    .unwrap();
    let out = cli(&b, &["policy", "push", policies.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.cedar (pushed):2:"), "{stderr}");
    assert_eq!(
        cli_ok(&a, &["policy", "history"]).as_array().unwrap().len(),
        1
    );
    assert_eq!(pull(&http, &b, LOCKED, &jwt_b), StatusCode::FORBIDDEN);

    // An empty set lifts the lock; rolling back to version 1 restores it.
    std::fs::remove_dir_all(&policies).unwrap();
    std::fs::create_dir_all(&policies).unwrap();
    let lifted = cli_ok(&b, &["policy", "push", policies.to_str().unwrap()]);
    assert_eq!(lifted["version"], 2);
    wait_for(|| pull(&http, &a, REPO, &from_a_new) == StatusCode::OK);
    wait_for(|| pull(&http, &b, LOCKED, &jwt_b) == StatusCode::OK);
    let restored = cli_ok(&b, &["policy", "rollback", "1"]);
    assert_eq!(restored["version"], 3);
    assert_eq!(restored["rollbackOf"], 1);
    assert_eq!(restored["sha256"], pushed["sha256"]);
    wait_for(|| pull(&http, &b, LOCKED, &jwt_b) == StatusCode::FORBIDDEN);
    let history = cli_ok(&a, &["policy", "history"]);
    let versions: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(history[0]["message"], "lock");
}

fn wait_for(mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never happened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
