//! The token walkthrough (issue 4, "How it is checked") replayed with the real docker
//! engine and CLI against a running gateway, whatever backend it fronts: the bundled
//! store (`gateway_docker`) or Debian's `docker-registry` (`gateway_upstream`).
//! Tokens and scope maps are changed through the real `portcullis` CLI.

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::Value;

use crate::docker::Docker;
use crate::gateway::{Server, bin, cli_json as portcullis, create_token};
use crate::oci::status_and_code;

const DENIED: &str = "requested access to the resource is denied";
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.manifest.v1+json";

/// `portcullis scope-map update --name MAP` with `--add-repository` / `--remove-repository`
/// groups (each `[repo, action...]`).
pub fn update_scope_map(server: &Server, map: &str, add: &[&[&str]], remove: &[&[&str]]) {
    let mut args = vec!["scope-map", "update", "--name", map];
    for group in add {
        args.push("--add-repository");
        args.extend_from_slice(group);
    }
    for group in remove {
        args.push("--remove-repository");
        args.extend_from_slice(group);
    }
    portcullis(server, &args);
}

/// Registry API calls with a token's Basic credentials.
pub struct Basic<'a> {
    pub server: &'a Server,
    pub user: &'a str,
    pub password: &'a str,
    pub http: Client,
}

impl Basic<'_> {
    pub fn send(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::Response {
        self.http
            .request(method, self.server.url(path))
            .basic_auth(self.user, Some(self.password))
            .header("accept", MANIFEST_TYPES)
            .send()
            .unwrap()
    }

    /// The digest of `repo:tag` from a HEAD on its manifest.
    pub fn manifest_digest(&self, repo: &str, tag: &str) -> String {
        let resp = self.send(
            reqwest::Method::HEAD,
            &format!("/v2/{repo}/manifests/{tag}"),
        );
        assert_eq!(resp.status(), StatusCode::OK, "HEAD {repo}:{tag}");
        resp.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned()
    }
}

/// The walkthrough, step by step as ACR documents it: push allowed and denied, a live
/// scope-map change without a new login, pulls, `content/delete` and a whole-repository
/// delete, `metadata/read` and the tag list.
pub fn token_walkthrough(server: &Server) {
    const TOKEN: &str = "walkthrough";
    const MAP: &str = "walkthrough-scope-map";
    let docker = Docker::new();
    let host = server.host();
    let password = create_token(
        server,
        TOKEN,
        "samples/hello-world",
        &["content/write", "content/read"],
    );
    let login = docker.login(host, TOKEN, &password);
    assert!(
        login.status.success(),
        "docker login as {TOKEN}: {}",
        String::from_utf8_lossy(&login.stderr)
    );

    let hello = format!("{host}/samples/hello-world");
    let nginx = format!("{host}/samples/nginx");
    let hello_v1 = docker.import(&format!("{hello}:v1"), &format!("hello v1 {host}"));
    docker.run(&["push", &hello_v1]);
    let nginx_v1 = docker.import(&format!("{nginx}:v1"), &format!("nginx v1 {host}"));
    let out = docker.fails(&["push", &nginx_v1]);
    assert!(
        out.contains(DENIED),
        "push {nginx_v1} without rights:\n{out}"
    );

    // Read/write on nginx, no more write on hello-world: effective at once, no new login.
    update_scope_map(
        server,
        MAP,
        &[&["samples/nginx", "content/read", "content/write"]],
        &[&["samples/hello-world", "content/write"]],
    );
    docker.run(&["push", &nginx_v1]);
    let hello_v2 = docker.import(&format!("{hello}:v2"), &format!("hello v2 {host}"));
    let out = docker.fails(&["push", &hello_v2]);
    assert!(
        out.contains(DENIED),
        "push {hello_v2} after write was removed:\n{out}"
    );

    // Both pulls work, from scratch.
    let hello_id = docker.image_id(&hello_v1);
    let nginx_id = docker.image_id(&nginx_v1);
    docker.run(&["rmi", &hello_v1, &hello_v2, &nginx_v1]);
    docker.run(&["pull", &hello_v1]);
    docker.run(&["pull", &nginx_v1]);
    assert_eq!(docker.image_id(&hello_v1), hello_id, "pulled {hello_v1}");
    assert_eq!(docker.image_id(&nginx_v1), nginx_id, "pulled {nginx_v1}");

    // content/delete lets the token delete the nginx repository (refused before it is
    // granted), as ACR's `az acr repository delete --repository samples/nginx
    // --username MyToken --password ...`: one server-side delete that needs
    // content/delete alone (the token cannot list nginx's tags: no metadata/read).
    let api = Basic {
        server,
        user: TOKEN,
        password: &password,
        http: Client::new(),
    };
    let digest = api.manifest_digest("samples/nginx", "v1");
    let delete_nginx = [
        "repository",
        "delete",
        "--repository",
        "samples/nginx",
        "--yes",
    ];
    let refused = as_token_fails(server, TOKEN, &password, &delete_nginx);
    assert!(
        refused.contains(DENIED) && refused.contains("content/delete"),
        "repository delete without content/delete: {refused}"
    );
    update_scope_map(server, MAP, &[&["samples/nginx", "content/delete"]], &[]);
    let deleted = as_token(server, TOKEN, &password, &delete_nginx);
    assert_eq!(
        deleted,
        serde_json::json!({"manifestsDeleted": [digest], "tagsDeleted": ["v1"]}),
        "repository delete"
    );
    for reference in ["v1", digest.as_str()] {
        let path = format!("/v2/samples/nginx/manifests/{reference}");
        let (status, _) = status_and_code(api.send(reqwest::Method::GET, &path));
        assert_eq!(status, StatusCode::NOT_FOUND, "GET {path} after delete");
    }
    docker.run(&["rmi", &nginx_v1]);
    let out = docker.fails(&["pull", &nginx_v1]);
    assert!(!out.contains(DENIED), "pull of a deleted image:\n{out}");

    // metadata/read lets it list hello-world's tags (refused before it is granted).
    let tags = "/v2/samples/hello-world/tags/list";
    assert_eq!(
        status_and_code(api.send(reqwest::Method::GET, tags)),
        (StatusCode::FORBIDDEN, "DENIED".to_owned()),
        "GET {tags} without metadata/read"
    );
    update_scope_map(
        server,
        MAP,
        &[&["samples/hello-world", "metadata/read"]],
        &[],
    );
    let resp = api.send(reqwest::Method::GET, tags);
    assert_eq!(resp.status(), StatusCode::OK, "GET {tags}");
    let body: Value = resp.json().unwrap();
    assert_eq!(body["name"], "samples/hello-world");
    assert_eq!(body["tags"], serde_json::json!(["v1"]), "{body}");
    let shown = as_token(
        server,
        TOKEN,
        &password,
        &[
            "repository",
            "show-tags",
            "--repository",
            "samples/hello-world",
        ],
    );
    assert!(
        shown.to_string().contains("\"v1\""),
        "repository show-tags: {shown}"
    );
    docker.run(&["rmi", &hello_v1]);
}

fn run_as_token(
    server: &Server,
    user: &str,
    password: &str,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .env("PORTCULLIS_REGISTRY", &server.base)
        .env_remove("PORTCULLIS_ADMIN_PASSWORD")
        .env("PORTCULLIS_USERNAME", user)
        .env("PORTCULLIS_PASSWORD", password)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// Runs the CLI as token `user`, asserts failure, returns its stderr.
fn as_token_fails(server: &Server, user: &str, password: &str, args: &[&str]) -> String {
    let out = run_as_token(server, user, password, args);
    assert!(
        !out.status.success(),
        "portcullis {} as {user} should fail",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the CLI as token `user`, asserts success, returns its JSON output.
fn as_token(server: &Server, user: &str, password: &str, args: &[&str]) -> Value {
    let out = run_as_token(server, user, password, args);
    assert!(
        out.status.success(),
        "portcullis {} as {user} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "portcullis {}: output is not JSON ({e}): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A logged-in docker client loses access on its next pull when its token is disabled,
/// regains it when re-enabled, and loses it for good when the token is deleted.
pub fn revocation_walkthrough(server: &Server) {
    const TOKEN: &str = "revocation";
    let docker = Docker::new();
    let host = server.host();
    let password = create_token(
        server,
        TOKEN,
        "samples/revoked",
        &["content/read", "content/write"],
    );
    let login = docker.login(host, TOKEN, &password);
    assert!(login.status.success(), "docker login as {TOKEN}");
    let image = docker.import(
        &format!("{host}/samples/revoked:v1"),
        &format!("revoked {host}"),
    );
    docker.run(&["push", &image]);
    docker.run(&["rmi", &image]);
    docker.run(&["pull", &image]);
    docker.run(&["rmi", &image]);

    let refused = |why: &str| {
        let out = docker.fails(&["pull", &image]).to_lowercase();
        assert!(
            out.contains("unauthorized") || out.contains("denied"),
            "pull of {image} with a {why} token:\n{out}"
        );
    };
    portcullis(
        server,
        &["token", "update", "--name", TOKEN, "--status", "disabled"],
    );
    refused("disabled");
    portcullis(
        server,
        &["token", "update", "--name", TOKEN, "--status", "enabled"],
    );
    docker.run(&["pull", &image]);
    docker.run(&["rmi", &image]);
    portcullis(server, &["token", "delete", "--name", TOKEN]);
    refused("deleted");
}
