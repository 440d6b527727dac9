//! skopeo with `--creds` against `portcullis serve`: the additive wildcard example of
//! SPEC §2 (`sample/*` read, `sample/teamA/*` write, `sample/teamA/projectB` delete)
//! enforced on live copy / inspect / list-tags / delete traffic, the catalog filtered to
//! what a token may read (Basic and bearer), a disabled or deleted token refused on
//! its next request, and a registry-to-registry copy that mounts its blobs. The scope-map
//! traffic and the mount run on both backends (local, S3 + PostgreSQL).
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::content;
use portcullis_test_support::{skopeo, skopeo_fails, skopeo_ok};

use std::path::Path;
use std::process::Output;

use common::backend::Backend;
use common::{ADMIN_PASSWORD, Server, cli};
use content::{TestImage, write_oci_layout};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

const DENIED_TEXT: &str = "requested access to the resource is denied";

fn portcullis_ok(server: &Server, args: &[&str]) -> Value {
    let out = cli(server, args);
    assert!(
        out.status.success(),
        "portcullis {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// A registry client with one set of credentials.
struct Skopeo<'a> {
    server: &'a Server,
    creds: String,
}

impl Skopeo<'_> {
    fn reference(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.server.host())
    }

    /// `skopeo copy oci:LAYOUT:TAG docker://HOST/REPO:TAG`.
    fn copy(&self, layout: &Path, tag: &str, dest: &str) -> Output {
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &self.creds,
            // Push the layout's bytes as they are (skopeo would gzip the layers), so
            // digests can be compared with the images made here.
            "--preserve-digests",
            &format!("oci:{}:{tag}", layout.display()),
            &self.reference(dest),
        ])
    }

    fn args<'b>(&'b self, command: &'b str, target: &'b str) -> [&'b str; 5] {
        [
            command,
            "--tls-verify=false",
            "--creds",
            &self.creds,
            target,
        ]
    }
}

portcullis_test_support::backend_matrix!(
    wildcard_scope_map_on_live_skopeo_traffic,
    skopeo_copy_between_repositories_mounts_through_the_gateway,
);

fn wildcard_scope_map_on_live_skopeo_traffic(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = backend.storage().gateway(&dir.path().join("data"), &[]);
    let layout = dir.path().join("layout");
    let images = [
        ("a", TestImage::new("skopeo a")),
        ("b", TestImage::new("skopeo b")),
    ];
    write_oci_layout(
        &layout,
        &images.iter().map(|(t, i)| (*t, i)).collect::<Vec<_>>(),
    );
    let admin = Skopeo {
        server: &server,
        creds: format!("admin:{ADMIN_PASSWORD}"),
    };
    for dest in ["sample/other/app:v1", "other/secret:v1"] {
        let out = admin.copy(&layout, "a", dest);
        assert!(out.status.success(), "admin copy to {dest}: {out:?}");
    }

    // ACR's documentation writes `teamA`; patterns are case-insensitive.
    portcullis_ok(
        &server,
        &[
            "scope-map",
            "create",
            "--name",
            "teams-map",
            "--repository",
            "sample/*",
            "content/read",
            "--repository",
            "sample/teamA/*",
            "content/write",
            "--repository",
            "sample/teamA/projectB",
            "content/delete",
            "metadata/read",
        ],
    );
    let created = portcullis_ok(
        &server,
        &[
            "token",
            "create",
            "--name",
            "skopeo-bot",
            "--scope-map",
            "teams-map",
        ],
    );
    let password = created["credentials"]["passwords"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let bot = Skopeo {
        server: &server,
        creds: format!("skopeo-bot:{password}"),
    };

    // Write where `sample/teamA/*` reaches, nowhere else.
    for dest in ["sample/teama/projectb:v1", "sample/teama/projectc:v1"] {
        let out = bot.copy(&layout, "a", dest);
        assert!(
            out.status.success(),
            "copy to {dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for dest in ["sample/other/app:v2", "other/new:v1", "sample/teama:v1"] {
        let out = bot.copy(&layout, "b", dest);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && refused(&stderr),
            "copy to {dest} must be denied: {stderr}"
        );
    }

    // Read under `sample/*` only.
    let inspected: Value = serde_json::from_str(&skopeo_ok(
        &bot.args("inspect", &bot.reference("sample/other/app:v1")),
    ))
    .unwrap();
    assert_eq!(inspected["Digest"], images[0].1.digest().as_str());
    let err = skopeo_fails(&bot.args("inspect", &bot.reference("other/secret:v1")));
    assert!(refused(&err), "inspect other/secret: {err}");

    // Tags only where metadata/read was granted.
    let tags: Value = serde_json::from_str(&skopeo_ok(
        &bot.args("list-tags", &bot.reference("sample/teama/projectb")),
    ))
    .unwrap();
    assert_eq!(tags["Tags"], json!(["v1"]));
    let err = skopeo_fails(&bot.args("list-tags", &bot.reference("sample/teama/projectc")));
    assert!(refused(&err), "list-tags projectc: {err}");
    // skopeo does not show the body here; it is docker's DENIED error.
    let resp = Client::new()
        .get(server.url("/v2/sample/teama/projectc/tags/list"))
        .basic_auth("skopeo-bot", Some(&password))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED", "{body}");
    assert_eq!(body["errors"][0]["message"], DENIED_TEXT, "{body}");

    // The catalog shows only what the token may read (metadata/read), with Basic
    // credentials and through the bearer flow; the admin sees everything.
    let catalog = |rb: reqwest::blocking::RequestBuilder| -> Value {
        let resp = rb.send().unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "catalog");
        resp.json().unwrap()
    };
    let http = Client::new();
    let url = server.url("/v2/_catalog");
    let mine = json!({"repositories": ["sample/teama/projectb"]});
    assert_eq!(
        catalog(http.get(&url).basic_auth("skopeo-bot", Some(&password))),
        mine
    );
    let resp = http.get(&url).send().unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "anonymous catalog");
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    let (realm, service) = parse_challenge(challenge);
    assert!(
        challenge.contains("scope=\"registry:catalog:*\""),
        "catalog challenge: {challenge}"
    );
    let token: Value = http
        .get(&realm)
        .query(&[
            ("service", service.as_str()),
            ("scope", "registry:catalog:*"),
        ])
        .basic_auth("skopeo-bot", Some(&password))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        catalog(http.get(&url).bearer_auth(token["token"].as_str().unwrap())),
        mine
    );
    let all = json!({"repositories": [
        "other/secret", "sample/other/app", "sample/teama/projectb", "sample/teama/projectc"
    ]});
    assert_eq!(
        catalog(http.get(&url).basic_auth("admin", Some(ADMIN_PASSWORD))),
        all
    );
    let resp = http
        .get(format!("{url}?n=2"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    let link = resp.headers()["link"].to_str().unwrap().to_owned();
    assert!(
        link.contains("last=sample%2Fother%2Fapp") || link.contains("last=sample/other/app"),
        "catalog Link: {link}"
    );
    assert_eq!(
        resp.json::<Value>().unwrap(),
        json!({"repositories": ["other/secret", "sample/other/app"]})
    );

    // Delete only in projectB.
    let err = skopeo_fails(&bot.args("delete", &bot.reference("sample/teama/projectc:v1")));
    assert!(refused(&err), "delete in projectc: {err}");
    skopeo_ok(&bot.args("delete", &bot.reference("sample/teama/projectb:v1")));
    let err = skopeo_fails(&admin.args("inspect", &admin.reference("sample/teama/projectb:v1")));
    assert!(!refused(&err), "inspect after delete: {err}");
    skopeo_ok(&admin.args("inspect", &admin.reference("sample/teama/projectc:v1")));
}

/// skopeo's report of a policy refusal: docker's text when it shows the error body, the
/// 403 status when it does not (HEAD requests have no body; some paths drop it).
fn refused(stderr: &str) -> bool {
    stderr.contains(DENIED_TEXT) || stderr.contains("403 (Forbidden)")
}

/// (realm, service) of a Bearer challenge.
fn parse_challenge(header: &str) -> (String, String) {
    let param = |name: &str| -> String {
        let start = header
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("no {name} in {header}"))
            + name.len()
            + 2;
        let len = header[start..].find('"').unwrap();
        header[start..start + len].to_owned()
    };
    (param("realm"), param("service"))
}

/// How many upload starts the gateway answered 201 (mounts: skopeo never pushes
/// monolithically), from `/metrics`.
fn mounts_answered(server: &Server) -> u64 {
    let metrics = Client::new()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    metrics
        .lines()
        .find(|l| {
            l.starts_with("portcullis_requests_total{")
                && l.contains("route=\"upload_start\"")
                && l.contains("status=\"201\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn skopeo_copy_between_repositories_mounts_through_the_gateway(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = backend.storage().gateway(&dir.path().join("data"), &[]);
    let layout = dir.path().join("layout");
    let image = TestImage::new("skopeo mount");
    write_oci_layout(&layout, &[("v1", &image)]);
    let password = common::create_token(
        &server,
        "mount-bot",
        "samples/*",
        &["content/read", "content/write"],
    );
    let bot = Skopeo {
        server: &server,
        creds: format!("mount-bot:{password}"),
    };
    let out = bot.copy(&layout, "v1", "samples/src:v1");
    assert!(out.status.success(), "copy into samples/src: {out:?}");
    let before = mounts_answered(&server);
    // Registry to registry, same host: skopeo mounts the blobs from samples/src.
    skopeo_ok(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        &bot.creds,
        "--dest-creds",
        &bot.creds,
        &bot.reference("samples/src:v1"),
        &bot.reference("samples/dst:v1"),
    ]);
    assert!(
        mounts_answered(&server) > before,
        "skopeo copied without a mount"
    );
    let inspected = skopeo_ok(&bot.args("inspect", &bot.reference("samples/dst:v1")));
    assert!(
        inspected.contains(&content::digest(&image.layer)),
        "{inspected}"
    );
}

#[test]
fn disabled_and_deleted_tokens_fail_the_next_skopeo_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD));
    let layout = dir.path().join("layout");
    let image = TestImage::new("revoked");
    write_oci_layout(&layout, &[("v1", &image)]);
    let created = portcullis_ok(
        &server,
        &[
            "token",
            "create",
            "--name",
            "revoked-bot",
            "--repository",
            "samples/revoked",
            "content/read",
            "content/write",
        ],
    );
    let password = created["credentials"]["passwords"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let bot = Skopeo {
        server: &server,
        creds: format!("revoked-bot:{password}"),
    };
    let out = bot.copy(&layout, "v1", "samples/revoked:v1");
    assert!(out.status.success(), "copy: {out:?}");
    let target = bot.reference("samples/revoked:v1");
    skopeo_ok(&bot.args("inspect", &target));

    let set_status = |status: &str| {
        portcullis_ok(
            &server,
            &[
                "token",
                "update",
                "--name",
                "revoked-bot",
                "--status",
                status,
            ],
        );
    };
    set_status("disabled");
    let err = skopeo_fails(&bot.args("inspect", &target));
    assert!(
        err.to_lowercase().contains("unauthorized"),
        "inspect with a disabled token: {err}"
    );
    set_status("enabled");
    skopeo_ok(&bot.args("inspect", &target));
    portcullis_ok(&server, &["token", "delete", "--name", "revoked-bot"]);
    let err = skopeo_fails(&bot.args("inspect", &target));
    assert!(
        err.to_lowercase().contains("unauthorized"),
        "inspect with a deleted token: {err}"
    );
}
