//! The docker walkthrough with the gateway fronting Debian's `docker-registry` 2.8.2
//! (`portcullis serve --upstream http://127.0.0.1:PORT`): push, denied push, a live
//! scope-map change, pulls, delete and tag listing all pass through to distribution.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::content;
use common::registry;
use common::walkthrough;

use common::{ADMIN_PASSWORD, Server};
use registry::DockerRegistry;
use reqwest::blocking::Client;
use serde_json::Value;

fn gateway(dir: &tempfile::TempDir, upstream: &DockerRegistry) -> Server {
    Server::start_with(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &["--upstream", &upstream.url],
    )
}

#[test]
fn token_walkthrough_through_an_upstream_registry() {
    let upstream = DockerRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&dir, &upstream);
    walkthrough::token_walkthrough(&server);

    // What the gateway let through really landed upstream (and the denied push did not).
    let tags = |repo: &str| -> Value {
        let resp = Client::new()
            .get(format!("{}/v2/{repo}/tags/list", upstream.url))
            .send()
            .unwrap();
        resp.json().unwrap()
    };
    assert_eq!(
        tags("samples/hello-world")["tags"],
        serde_json::json!(["v1"])
    );
    // The repository delete deleted nginx's manifests upstream, which untagged them.
    let nginx = tags("samples/nginx");
    assert!(
        nginx["tags"].as_array().is_none_or(|t| t.is_empty()),
        "upstream tags of the deleted samples/nginx: {nginx}"
    );
    let catalog: Value = Client::new()
        .get(format!("{}/v2/_catalog", upstream.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        catalog["repositories"],
        serde_json::json!(["samples/hello-world", "samples/nginx"]),
        "upstream catalog"
    );
    // The gateway's own data directory holds no blobs: the upstream stored them.
    let stored = files_under(&dir.path().join("data/blobs"));
    assert!(stored.is_empty(), "the gateway stored blobs: {stored:?}");
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                files_under(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

#[test]
fn revocation_through_an_upstream_registry() {
    let upstream = DockerRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&dir, &upstream);
    walkthrough::revocation_walkthrough(&server);
}

#[test]
fn blobs_stream_through_to_the_upstream_with_gateway_locations() {
    let upstream = DockerRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&dir, &upstream);
    let admin =
        |rb: reqwest::blocking::RequestBuilder| rb.basic_auth("admin", Some(ADMIN_PASSWORD));
    // 24 MiB in 5 MiB PATCHes; every Location distribution hands out must lead back
    // to the gateway, never to the upstream (that would bypass every decision).
    let blob = content::pseudo_random(11, 24 << 20);
    content::chunked_blob_round_trip(
        &Client::new(),
        &server.base,
        "samples/big",
        &blob,
        5 << 20,
        &admin,
    );
    let resp = Client::new()
        .head(format!(
            "{}/v2/samples/big/blobs/{}",
            upstream.url,
            content::digest(&blob)
        ))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "the blob is stored upstream");

    // A mount without `from` reaches the upstream as a plain upload (the gateway cannot
    // tell which upstream repositories the caller may read): a session at the gateway.
    let resp = admin(Client::new().post(format!(
        "{}/v2/samples/other/blobs/uploads/?mount={}",
        server.base,
        content::digest(&blob)
    )))
    .send()
    .unwrap();
    assert_eq!(resp.status(), 202, "automatic mount through an upstream");
    let location = resp.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("/v2/samples/other/blobs/uploads/")
            || location.starts_with(&format!("{}/v2/samples/other/blobs/uploads/", server.base)),
        "{location}"
    );
}
