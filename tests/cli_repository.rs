//! The built `portcullis repository` / `manifest` commands against a running
//! `portcullis serve`, authenticating as repository-scoped tokens: what each command may
//! do is exactly what the token's scope map allows, decided by the gateway.
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

use std::process::{Command, Output, Stdio};

use common::{ADMIN_PASSWORD, Server, bin, create_token as token, json_output};
use content::TestImage;
use registry::DockerRegistry;
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::{Value, json};

const HELLO: &str = "samples/hello";
const OTHER: &str = "samples/other";
const DENIED: &str = "requested access to the resource is denied";

/// Credentials a CLI run authenticates with.
#[derive(Clone, Copy)]
enum As<'a> {
    Admin,
    /// Passed through PORTCULLIS_USERNAME / PORTCULLIS_PASSWORD.
    Token(&'a str, &'a str),
}

fn run(server: &Server, who: As, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("PORTCULLIS_REGISTRY", &server.base)
        .env("PORTCULLIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env_remove("PORTCULLIS_USERNAME")
        .env_remove("PORTCULLIS_PASSWORD")
        .env_remove("PORTCULLIS_CA_CERT")
        .stdin(Stdio::null());
    if let As::Token(user, password) = who {
        cmd.env("PORTCULLIS_USERNAME", user)
            .env("PORTCULLIS_PASSWORD", password);
    }
    cmd.output().expect("run portcullis")
}

/// Runs the CLI, asserts success, returns its JSON output (`Null` when it printed none).
fn ok(server: &Server, who: As, args: &[&str]) -> Value {
    json_output(args, &run(server, who, args))
}

/// Runs the CLI, asserts exit code 1, returns stderr.
fn fails(server: &Server, who: As, args: &[&str]) -> String {
    let out = run(server, who, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "portcullis {} should fail; stdout {} stderr {stderr}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn admin_auth(req: RequestBuilder) -> RequestBuilder {
    req.basic_auth("admin", Some(ADMIN_PASSWORD))
}

/// A server with `samples/hello:{v1,v2}` (one manifest) and `samples/other:v1`, pushed
/// by the admin; returns the server and hello's image.
fn populated(dir: &tempfile::TempDir) -> (Server, TestImage) {
    populated_with(dir, &[])
}

/// [`populated`] with extra `serve` arguments.
fn populated_with(dir: &tempfile::TempDir, serve_args: &[&str]) -> (Server, TestImage) {
    let data = dir.path().join("data");
    let server = Server::start_with(&data, Some(ADMIN_PASSWORD), serve_args);
    let http = Client::new();
    let hello = TestImage::new("hello");
    hello.push(&http, &server.base, HELLO, "v1", &admin_auth);
    hello.push(&http, &server.base, HELLO, "v2", &admin_auth);
    TestImage::new("other").push(&http, &server.base, OTHER, "v1", &admin_auth);
    (server, hello)
}

#[test]
fn metadata_read_lists_tags_and_attributes_but_cannot_untag() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = populated(&dir);
    let password = token(&server, "reader", HELLO, &["metadata/read"]);
    let reader = As::Token("reader", &password);

    let tags = ok(
        &server,
        reader,
        &["repository", "show-tags", "--repository", HELLO],
    );
    assert_eq!(tags, json!(["v1", "v2"]));
    let top = ok(
        &server,
        reader,
        &[
            "repository",
            "show-tags",
            "--repository",
            HELLO,
            "--top",
            "1",
        ],
    );
    assert_eq!(top, json!(["v1"]));

    // The catalog shows only what the token may read; the admin sees everything.
    assert_eq!(ok(&server, reader, &["repository", "list"]), json!([HELLO]));
    assert_eq!(
        ok(&server, As::Admin, &["repository", "list"]),
        json!([HELLO, OTHER])
    );

    let shown = ok(
        &server,
        reader,
        &["repository", "show", "--repository", HELLO],
    );
    assert_eq!(shown["imageName"], HELLO);
    assert_eq!(shown["changeableAttributes"]["writeEnabled"], true);

    // Digests come from manifest HEADs, which need content/read; the refused HEAD has
    // no body, yet the server's message is shown.
    let err = fails(
        &server,
        reader,
        &["repository", "show-tags", "--repository", HELLO, "--detail"],
    );
    assert!(
        err.contains(DENIED) && err.contains("content/read"),
        "{err}"
    );

    // Untagging needs metadata/write; tags of another repository need metadata/read there.
    let err = fails(
        &server,
        reader,
        &["repository", "untag", "--image", &format!("{HELLO}:v1")],
    );
    assert!(err.contains(DENIED) && err.contains("403"), "{err}");
    let err = fails(
        &server,
        reader,
        &["repository", "show-tags", "--repository", OTHER],
    );
    assert!(err.contains(DENIED), "{err}");
    let err = fails(
        &server,
        reader,
        &[
            "repository",
            "update",
            "--repository",
            HELLO,
            "--write-enabled",
            "false",
        ],
    );
    assert!(err.contains(DENIED), "{err}");
    // Nothing changed.
    assert_eq!(
        ok(
            &server,
            reader,
            &["repository", "show-tags", "--repository", HELLO]
        ),
        json!(["v1", "v2"])
    );

    // A wrong password is refused as such.
    let err = fails(
        &server,
        As::Token("reader", "not-the-password"),
        &["repository", "show-tags", "--repository", HELLO],
    );
    assert!(err.contains("401"), "{err}");
}

#[test]
fn metadata_write_untags_and_the_manifest_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (server, hello) = populated(&dir);
    let password = token(
        &server,
        "tagger",
        HELLO,
        &["metadata/read", "metadata/write", "content/read"],
    );
    // Credentials as flags this time.
    let args = |rest: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
        v.extend([
            "--username".into(),
            "tagger".into(),
            "--password".into(),
            password.clone(),
        ]);
        v
    };
    let untag = args(&["repository", "untag", "--image", &format!("{HELLO}:v1")]);
    let untag: Vec<&str> = untag.iter().map(String::as_str).collect();
    assert_eq!(ok(&server, As::Admin, &untag), Value::Null);

    let detail = args(&["repository", "show-tags", "--repository", HELLO, "--detail"]);
    let detail: Vec<&str> = detail.iter().map(String::as_str).collect();
    let tags = ok(&server, As::Admin, &detail);
    assert_eq!(tags.as_array().unwrap().len(), 1, "{tags}");
    assert_eq!(tags[0]["name"], "v2");
    assert_eq!(tags[0]["digest"], hello.digest().as_str());

    // Untagging the last tag leaves the manifest reachable by digest.
    let untag = args(&["repository", "untag", "--image", &format!("{HELLO}:v2")]);
    let untag: Vec<&str> = untag.iter().map(String::as_str).collect();
    ok(&server, As::Admin, &untag);
    let resp = admin_auth(
        Client::new().head(server.url(&format!("/v2/{HELLO}/manifests/{}", hello.digest()))),
    )
    .header("accept", content::OCI_MANIFEST)
    .send()
    .unwrap();
    assert_eq!(resp.status(), 200);

    // Untag of a tag that does not exist: the registry's message.
    let err = fails(&server, As::Admin, &untag);
    assert!(err.contains("404"), "{err}");
}

#[test]
fn content_delete_deletes_images_and_whole_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let (server, hello) = populated(&dir);
    let http = Client::new();
    // A second manifest in hello, so deleting one image leaves the other.
    TestImage::new("hello-2").push(&http, &server.base, HELLO, "v3", &admin_auth);

    // content/delete alone: the deletes are done server-side, without listing tags
    // (metadata/read) or reading manifests (content/read), as in ACR.
    let password = token(&server, "cleaner", "samples/*", &["content/delete"]);
    let cleaner = As::Token("cleaner", &password);
    let lister_pw = token(&server, "lister", HELLO, &["metadata/read", "content/read"]);
    let lister = As::Token("lister", &lister_pw);

    // Without content/delete: denied, nothing deleted.
    let err = fails(
        &server,
        lister,
        &["repository", "delete", "--repository", HELLO, "--yes"],
    );
    assert!(err.contains(DENIED), "{err}");
    // Without --yes and without a terminal: refused before anything is deleted.
    let err = fails(
        &server,
        cleaner,
        &["repository", "delete", "--repository", HELLO],
    );
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(
        ok(
            &server,
            lister,
            &["repository", "show-tags", "--repository", HELLO]
        ),
        json!(["v1", "v2", "v3"])
    );

    // Deleting an image by tag deletes its manifest and both tags on it.
    let deleted = ok(
        &server,
        cleaner,
        &[
            "repository",
            "delete",
            "--image",
            &format!("{HELLO}:v1"),
            "--yes",
        ],
    );
    assert_eq!(
        deleted,
        json!({"manifestsDeleted": [hello.digest()], "tagsDeleted": ["v1", "v2"]})
    );
    assert_eq!(
        ok(
            &server,
            lister,
            &["repository", "show-tags", "--repository", HELLO]
        ),
        json!(["v3"])
    );

    // The whole repository.
    let deleted = ok(
        &server,
        cleaner,
        &["repository", "delete", "--repository", OTHER, "--yes"],
    );
    assert_eq!(
        deleted,
        json!({"manifestsDeleted": [TestImage::new("other").digest()], "tagsDeleted": ["v1"]})
    );
    // Gone whole: out of the catalog, its tag list unknown.
    assert_eq!(
        ok(&server, As::Admin, &["repository", "list"]),
        json!([HELLO])
    );
    let err = fails(
        &server,
        As::Admin,
        &["repository", "show-tags", "--repository", OTHER],
    );
    assert!(err.contains("404"), "{err}");
    let resp = admin_auth(http.get(server.url(&format!("/v2/{OTHER}/manifests/v1"))))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);
    let err = fails(
        &server,
        cleaner,
        &["repository", "delete", "--repository", OTHER, "--yes"],
    );
    assert!(err.contains("404"), "{err}");
}

#[test]
fn write_disabled_makes_the_next_push_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = populated(&dir);
    let http = Client::new();
    let password = token(
        &server,
        "operator",
        HELLO,
        &["metadata/write", "metadata/read"],
    );
    let operator = As::Token("operator", &password);

    let updated = ok(
        &server,
        operator,
        &[
            "repository",
            "update",
            "--repository",
            HELLO,
            "--write-enabled",
            "false",
        ],
    );
    assert_eq!(updated["changeableAttributes"]["writeEnabled"], false);
    assert_eq!(updated["changeableAttributes"]["deleteEnabled"], true);

    // Even the admin cannot push now: 403 DENIED from the base policy.
    let image = TestImage::new("new");
    let resp = admin_auth(http.post(server.url(&format!("/v2/{HELLO}/blobs/uploads/"))))
        .send()
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().unwrap_or(Value::Null);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errors"][0]["code"], "DENIED");
    // Other repositories are unaffected.
    image.push(&http, &server.base, OTHER, "v2", &admin_auth);

    let table = String::from_utf8(
        run(
            &server,
            operator,
            &["repository", "show", "--repository", HELLO, "-o", "table"],
        )
        .stdout,
    )
    .unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("WRITE"),
        "{table}"
    );
    assert!(
        lines[1].starts_with(HELLO) && lines[1].contains("false"),
        "{table}"
    );

    // Lifting the lock makes pushes work again.
    ok(
        &server,
        operator,
        &[
            "repository",
            "update",
            "--repository",
            HELLO,
            "--write-enabled",
            "true",
        ],
    );
    image.push(&http, &server.base, HELLO, "v9", &admin_auth);
}

#[test]
fn manifest_list_metadata_groups_tags_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (server, hello) = populated(&dir);
    let http = Client::new();
    let second = TestImage::new("hello-2");
    second.push(&http, &server.base, HELLO, "a-first", &admin_auth);
    let password = token(&server, "viewer", HELLO, &["metadata/read", "content/read"]);
    let viewer = As::Token("viewer", &password);

    let list = ok(
        &server,
        viewer,
        &["manifest", "list-metadata", "--name", HELLO],
    );
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    // In the order of each manifest's first tag.
    assert_eq!(list[0]["digest"], second.digest().as_str());
    assert_eq!(list[0]["tags"], json!(["a-first"]));
    let entry = &list[1];
    assert_eq!(entry["digest"], hello.digest().as_str());
    assert_eq!(entry["tags"], json!(["v1", "v2"]));
    assert_eq!(entry["mediaType"], content::OCI_MANIFEST);
    assert_eq!(entry["manifestSize"], hello.manifest.len());
    assert_eq!(entry["imageSize"], hello.config.len() + hello.layer.len());
    assert_eq!(entry["architecture"], "amd64");
    assert_eq!(entry["os"], "linux");

    // Needs metadata/read on the repository.
    let err = fails(
        &server,
        viewer,
        &["manifest", "list-metadata", "--name", OTHER],
    );
    assert!(err.contains(DENIED), "{err}");
}

#[test]
fn ca_cert_makes_the_cli_trust_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, Some(ADMIN_PASSWORD), &["--tls-self-signed"]);
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let ca = data.join("tls/ca.pem");
    let ca = ca.to_str().unwrap();

    // Not trusted by default.
    let err = fails(&server, As::Admin, &["repository", "list"]);
    assert!(
        err.contains("certificate") || err.contains("request to"),
        "{err}"
    );
    // The flag, for the registry client and the admin client alike.
    assert_eq!(
        ok(&server, As::Admin, &["repository", "list", "--ca-cert", ca]),
        json!([])
    );
    assert_eq!(
        ok(&server, As::Admin, &["token", "list", "--ca-cert", ca]),
        json!([])
    );
    // The environment variable.
    let out = Command::new(bin())
        .args(["repository", "list"])
        .env("PORTCULLIS_REGISTRY", &server.base)
        .env("PORTCULLIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("PORTCULLIS_CA_CERT", ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A file that holds no certificate is named in the error.
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let err = fails(
        &server,
        As::Admin,
        &["repository", "list", "--ca-cert", bogus.to_str().unwrap()],
    );
    assert!(err.contains("bogus.pem"), "{err}");
}

/// The commands speak only the registry API, so they work the same in front of
/// Debian's `docker-registry` 2.8.2.
#[test]
fn commands_work_through_an_upstream_registry() {
    let upstream = DockerRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let (server, hello) = populated_with(&dir, &["--upstream", &upstream.url]);
    let password = token(
        &server,
        "upstream-ops",
        "samples/*",
        &[
            "metadata/read",
            "metadata/write",
            "content/read",
            "content/delete",
        ],
    );
    let ops = As::Token("upstream-ops", &password);

    assert_eq!(
        ok(&server, ops, &["repository", "list"]),
        json!([HELLO, OTHER])
    );
    let detail = ok(
        &server,
        ops,
        &["repository", "show-tags", "--repository", HELLO, "--detail"],
    );
    assert_eq!(detail[0]["digest"], hello.digest().as_str());
    let list = ok(
        &server,
        ops,
        &["manifest", "list-metadata", "--name", HELLO],
    );
    assert_eq!(list[0]["tags"], json!(["v1", "v2"]));
    assert_eq!(list[0]["os"], "linux");

    let deleted = ok(
        &server,
        ops,
        &["repository", "delete", "--repository", OTHER, "--yes"],
    );
    assert_eq!(
        deleted,
        json!({"manifestsDeleted": [TestImage::new("other").digest()], "tagsDeleted": ["v1"]})
    );
    assert_eq!(
        ok(
            &server,
            ops,
            &["repository", "show-tags", "--repository", OTHER]
        ),
        json!([])
    );
    let deleted = ok(
        &server,
        ops,
        &[
            "repository",
            "delete",
            "--image",
            &format!("{HELLO}:v1"),
            "--yes",
        ],
    );
    assert_eq!(
        deleted,
        json!({"manifestsDeleted": [hello.digest()], "tagsDeleted": ["v1", "v2"]})
    );
    assert_eq!(
        ok(
            &server,
            ops,
            &["repository", "show-tags", "--repository", HELLO]
        ),
        json!([])
    );
}

/// Tags come in pages of 100 with a `Link` to the next; the CLI follows them all.
#[test]
fn show_tags_follows_link_pagination() {
    let dir = tempfile::tempdir().unwrap();
    let (server, hello) = populated(&dir);
    let http = Client::new();
    let mut expected: Vec<String> = vec!["v1".into(), "v2".into()];
    for i in 0..150 {
        let tag = format!("t{i:03}");
        let resp = hello.put_manifest(&http, &server.base, HELLO, &tag, &admin_auth);
        assert_eq!(resp.status(), 201);
        expected.push(tag);
    }
    expected.sort();
    let password = token(&server, "pager", HELLO, &["metadata/read"]);
    let tags = ok(
        &server,
        As::Token("pager", &password),
        &["repository", "show-tags", "--repository", HELLO],
    );
    assert_eq!(tags, json!(expected));
}

#[test]
fn signed_only_refuses_unsigned_manifests_and_hides_unsigned_tags() {
    let dir = tempfile::tempdir().unwrap();
    let (server, hello) = populated(&dir);
    let password = token(
        &server,
        "writer",
        HELLO,
        &["content/read", "metadata/read", "metadata/write"],
    );
    let writer = As::Token("writer", &password);
    let http = Client::new();
    let get = |path: &str| {
        http.get(format!("{}{path}", server.base))
            .basic_auth("writer", Some(&password))
            .header(
                "accept",
                "application/vnd.oci.image.manifest.v1+json, application/json",
            )
            .send()
            .unwrap()
    };
    let updated = ok(
        &server,
        writer,
        &[
            "repository",
            "update",
            "--repository",
            HELLO,
            "--signed-only",
            "true",
        ],
    );
    assert_eq!(updated["changeableAttributes"]["signedOnly"], true);
    let table = run(
        &server,
        writer,
        &["repository", "show", "--repository", HELLO, "-o", "table"],
    );
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("SIGNED-ONLY"), "{table}");

    // Nothing is signed (content trust is off): manifests are refused by tag and by
    // digest, with the reason in the message docker prints.
    for reference in ["v1".to_owned(), hello.digest()] {
        let resp = get(&format!("/v2/{HELLO}/manifests/{reference}"));
        assert_eq!(resp.status(), 403);
        let body: Value = resp.json().unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED");
        assert_eq!(
            body["errors"][0]["message"],
            format!(
                "{DENIED}: manifest `{reference}` of `{HELLO}` is not signed (signed-only repository)"
            )
        );
    }
    // Blobs are not restricted; the tag list shows only signed tags: none.
    let config = content::digest(&hello.config);
    assert_eq!(get(&format!("/v2/{HELLO}/blobs/{config}")).status(), 200);
    assert_eq!(
        ok(
            &server,
            writer,
            &["repository", "show-tags", "--repository", HELLO]
        ),
        json!([])
    );
    // Other repositories are untouched, for the admin too.
    let resp = admin_auth(http.get(format!("{}/v2/{OTHER}/tags/list", server.base)))
        .send()
        .unwrap();
    assert_eq!(resp.json::<Value>().unwrap()["tags"], json!(["v1"]));

    ok(
        &server,
        writer,
        &[
            "repository",
            "update",
            "--repository",
            HELLO,
            "--signed-only",
            "false",
        ],
    );
    assert_eq!(get(&format!("/v2/{HELLO}/manifests/v1")).status(), 200);
    assert_eq!(
        ok(
            &server,
            writer,
            &["repository", "show-tags", "--repository", HELLO]
        ),
        json!(["v1", "v2"])
    );
}
