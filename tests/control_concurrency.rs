//! Concurrent control-plane writers over real HTTP: 100 clients at once add repositories
//! to one scope map, create tokens on it, and flip distinct repository attributes; every
//! update must be there afterwards (none overwritten by a writer that read stale state).
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::sync::Barrier;

use common::{ADMIN_PASSWORD, Server};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

const WRITERS: usize = 100;
const SCOPE_MAP: &str = "shared";
/// The attribute fields a `PATCH` may change and the non-default value each writer sets.
const FIELDS: [(&str, bool); 5] = [
    ("deleteEnabled", false),
    ("writeEnabled", false),
    ("readEnabled", false),
    ("listEnabled", false),
    ("signedOnly", true),
];
const ATTRIBUTE_REPOSITORIES: usize = WRITERS / FIELDS.len();

fn attribute_repository(i: usize) -> String {
    format!("attrs/repo-{i}")
}

#[test]
fn hundred_concurrent_writers_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD));
    let http = Client::new();
    let admin = |r: reqwest::blocking::RequestBuilder| r.basic_auth("admin", Some(ADMIN_PASSWORD));
    let resp = admin(http.post(server.url("/admin/v1/scope-maps")))
        .json(&json!({"name": SCOPE_MAP, "repositories": []}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    let barrier = Barrier::new(WRITERS);
    std::thread::scope(|s| {
        for i in 0..WRITERS {
            let (http, server, barrier) = (&http, &server, &barrier);
            s.spawn(move || {
                barrier.wait();
                let resp =
                    admin(http.patch(server.url(&format!("/admin/v1/scope-maps/{SCOPE_MAP}"))))
                        .json(&json!({"addRepository": [
                            {"repository": format!("team/repo-{i}"), "actions": ["content/read"]}
                        ]}))
                        .send()
                        .unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "scope map writer {i}");

                let resp = admin(http.post(server.url("/admin/v1/tokens")))
                    .json(&json!({"name": format!("bot-{i}"), "scopeMap": SCOPE_MAP}))
                    .send()
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::CREATED, "token writer {i}");

                let (field, value) = FIELDS[i % FIELDS.len()];
                let repository = attribute_repository(i / FIELDS.len());
                let resp = admin(
                    http.patch(server.url(&format!("/portcullis/v1/repositories/{repository}"))),
                )
                .json(&json!({ field: value }))
                .send()
                .unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "attribute writer {i}");
            });
        }
    });

    let get = |path: &str| -> Value {
        let resp = admin(http.get(server.url(path))).send().unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
        resp.json().unwrap()
    };
    let map = get(&format!("/admin/v1/scope-maps/{SCOPE_MAP}"));
    let actions: Vec<&str> = map["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let tokens = get("/admin/v1/tokens");
    let names: Vec<&str> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for i in 0..WRITERS {
        let rule = format!("repositories/team/repo-{i}/content/read");
        assert!(actions.contains(&rule.as_str()), "lost {rule}: {map}");
        let name = format!("bot-{i}");
        assert!(names.contains(&name.as_str()), "lost token {name}");
    }
    assert_eq!(actions.len(), WRITERS, "{map}");
    for r in 0..ATTRIBUTE_REPOSITORIES {
        let repository = attribute_repository(r);
        let shown = get(&format!("/portcullis/v1/repositories/{repository}"));
        for (field, value) in FIELDS {
            assert_eq!(
                shown["changeableAttributes"][field], value,
                "{repository}: lost the update of {field}: {shown}"
            );
        }
    }
    println!(
        "{WRITERS} writers: {} scope-map rules, {} tokens, {ATTRIBUTE_REPOSITORIES} repositories \
         x {} attributes, none lost",
        actions.len(),
        names.len(),
        FIELDS.len()
    );
}
