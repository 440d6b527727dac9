//! The admin API over real HTTP against the `portcullis serve` binary.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{ADMIN_PASSWORD, Server};
use portcullis::identity::{IdentityStore, PasswordSlot, now_unix};
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

struct Api<'a> {
    server: &'a Server,
    http: Client,
}

impl<'a> Api<'a> {
    fn new(server: &'a Server) -> Self {
        Api {
            server,
            http: Client::new(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.server.url(path))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
    }

    fn get(&self, path: &str) -> Response {
        self.req(reqwest::Method::GET, path).send().unwrap()
    }

    fn send(&self, method: reqwest::Method, path: &str, body: Value) -> Response {
        self.req(method, path).json(&body).send().unwrap()
    }

    fn delete(&self, path: &str) -> Response {
        self.req(reqwest::Method::DELETE, path).send().unwrap()
    }
}

/// Asserts status and OCI error body; returns the message.
fn expect_error(resp: Response, status: StatusCode, code: &str) -> String {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    body["errors"][0]["message"].as_str().unwrap().to_owned()
}

fn json(resp: Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status);
    resp.json().unwrap()
}

fn password<'v>(token: &'v Value, slot: &str) -> &'v Value {
    token["credentials"]["passwords"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == slot)
        .unwrap_or(&Value::Null)
}

const POST: reqwest::Method = reqwest::Method::POST;
const PATCH: reqwest::Method = reqwest::Method::PATCH;
const PUT: reqwest::Method = reqwest::Method::PUT;

#[test]
fn missing_or_wrong_credentials_get_401_with_basic_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD));
    let http = Client::new();
    let cases = [
        http.get(server.url("/admin/v1/tokens")),
        http.get(server.url("/admin/v1/tokens"))
            .basic_auth("admin", Some("wrong")),
        http.get(server.url("/admin/v1/tokens"))
            .basic_auth("ci-bot", Some(ADMIN_PASSWORD)),
        http.get(server.url("/admin/v1/openapi.json"))
            .bearer_auth("x"),
        http.delete(server.url("/admin/v1/scope-maps/anything")),
    ];
    for req in cases {
        let resp = req.send().unwrap();
        assert_eq!(
            resp.headers()["www-authenticate"],
            r#"Basic realm="portcullis-admin""#
        );
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    // The registry on the same listener answers with its own (Bearer) challenge.
    let v2 = http.get(server.url("/v2/")).send().unwrap();
    assert_eq!(v2.status(), StatusCode::UNAUTHORIZED);
    assert!(
        v2.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm=")
    );
}

#[test]
fn token_crud_and_password_shown_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD));
    let api = Api::new(&server);

    let created = json(
        api.send(
            POST,
            "/admin/v1/tokens",
            json!({
                "name": "ci-bot",
                "repositories": [{"repository": "samples/*", "actions": ["content/read", "content/write"]}],
                "expirationInDays": 30
            }),
        ),
        StatusCode::CREATED,
    );
    assert_eq!(created["name"], "ci-bot");
    assert_eq!(created["scopeMap"], "ci-bot-scope-map");
    assert_eq!(created["status"], "enabled");
    for slot in ["password1", "password2"] {
        let p = password(&created, slot);
        assert!(p["value"].as_str().unwrap().len() >= 43, "{p}");
        assert!(p["expiry"].is_string());
    }

    // Never shown again.
    let shown = json(api.get("/admin/v1/tokens/ci-bot"), StatusCode::OK);
    assert!(password(&shown, "password1").get("value").is_none());
    assert!(password(&shown, "password1")["creationTime"].is_string());
    let list = json(api.get("/admin/v1/tokens"), StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(
        !list
            .to_string()
            .contains(password(&created, "password1")["value"].as_str().unwrap())
    );

    let map = json(
        api.get("/admin/v1/scope-maps/ci-bot-scope-map"),
        StatusCode::OK,
    );
    assert_eq!(
        map["actions"],
        json!([
            "repositories/samples/*/content/read",
            "repositories/samples/*/content/write"
        ])
    );
    assert_eq!(map["type"], "UserDefined");

    // Conflicts and bad input.
    let msg = expect_error(
        api.send(
            POST,
            "/admin/v1/tokens",
            json!({"name": "ci-bot", "scopeMap": "_repositories_pull"}),
        ),
        StatusCode::CONFLICT,
        "DENIED",
    );
    assert!(msg.contains("`ci-bot` already exists"), "{msg}");
    let msg = expect_error(
        api.send(
            POST,
            "/admin/v1/tokens",
            json!({"name": "admin", "scopeMap": "_repositories_pull"}),
        ),
        StatusCode::BAD_REQUEST,
        "NAME_INVALID",
    );
    assert!(msg.contains("reserved"), "{msg}");
    let msg = expect_error(
        api.send(
            POST,
            "/admin/v1/tokens",
            json!({"name": "x", "scopeMap": "_repositories_pull"}),
        ),
        StatusCode::BAD_REQUEST,
        "NAME_INVALID",
    );
    assert!(msg.contains("`x`") && msg.contains("5 to 50"), "{msg}");
    expect_error(
        api.send(
            POST,
            "/admin/v1/tokens",
            json!({"name": "other-bot", "scopeMap": "no-such-map"}),
        ),
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
    );
    let msg = expect_error(
        api.send(
            POST,
            "/admin/v1/tokens",
            json!({"name": "other-bot", "scopeMapp": "x"}),
        ),
        StatusCode::BAD_REQUEST,
        "UNSUPPORTED",
    );
    assert!(msg.contains("scopeMapp"), "{msg}");
    expect_error(
        api.send(POST, "/admin/v1/tokens", json!({"name": "other-bot"})),
        StatusCode::BAD_REQUEST,
        "UNSUPPORTED",
    );

    // PATCH status and scope map.
    let patched = json(
        api.send(
            PATCH,
            "/admin/v1/tokens/ci-bot",
            json!({"status": "disabled", "scopeMap": "_repositories_pull"}),
        ),
        StatusCode::OK,
    );
    assert_eq!(patched["status"], "disabled");
    assert_eq!(patched["scopeMap"], "_repositories_pull");

    // DELETE, then 404 with OCI JSON.
    assert_eq!(
        api.delete("/admin/v1/tokens/ci-bot").status(),
        StatusCode::NO_CONTENT
    );
    let msg = expect_error(
        api.get("/admin/v1/tokens/ci-bot"),
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
    );
    assert_eq!(msg, "token `ci-bot` not found");
    expect_error(
        api.delete("/admin/v1/tokens/ci-bot"),
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
    );
    expect_error(
        api.get("/admin/v1/no-such-thing"),
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
    );
    expect_error(
        api.send(PUT, "/admin/v1/tokens", json!({})),
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
    );
}

#[test]
fn credentials_regenerate_and_delete_one_slot_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, Some(ADMIN_PASSWORD));
    let api = Api::new(&server);
    let created = json(
        api.send(
            POST,
            "/admin/v1/tokens",
            json!({"name": "rotator", "scopeMap": "_repositories_pull"}),
        ),
        StatusCode::CREATED,
    );
    let old1 = password(&created, "password1")["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let old2 = password(&created, "password2")["value"]
        .as_str()
        .unwrap()
        .to_owned();

    let generated = json(
        api.send(
            POST,
            "/admin/v1/tokens/rotator/credentials/generate",
            json!({"passwords": ["password1"], "expirationInDays": 7}),
        ),
        StatusCode::OK,
    );
    assert_eq!(generated["username"], "rotator");
    let passwords = generated["passwords"].as_array().unwrap();
    assert_eq!(passwords.len(), 1, "{generated}");
    assert_eq!(passwords[0]["name"], "password1");
    let new1 = passwords[0]["value"].as_str().unwrap().to_owned();
    assert_ne!(new1, old1);
    assert!(passwords[0]["expiry"].is_string());
    let shown = json(api.get("/admin/v1/tokens/rotator"), StatusCode::OK);
    assert_eq!(
        password(&shown, "password2")["creationTime"],
        password(&created, "password2")["creationTime"]
    );
    assert!(password(&shown, "password2")["expiry"].is_null());

    expect_error(
        api.send(
            POST,
            "/admin/v1/tokens/rotator/credentials/generate",
            json!({"passwords": ["password3"]}),
        ),
        StatusCode::BAD_REQUEST,
        "UNSUPPORTED",
    );
    expect_error(
        api.send(
            POST,
            "/admin/v1/tokens/rotator/credentials/generate",
            json!({"expirationInDays": 0}),
        ),
        StatusCode::BAD_REQUEST,
        "UNSUPPORTED",
    );
    expect_error(
        api.delete("/admin/v1/tokens/rotator/credentials/password3"),
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
    );
    expect_error(
        api.send(
            POST,
            "/admin/v1/tokens/nobody/credentials/generate",
            json!({}),
        ),
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
    );

    // Deleting password2 leaves password1.
    let after = json(
        api.delete("/admin/v1/tokens/rotator/credentials/password2"),
        StatusCode::OK,
    );
    assert!(password(&after, "password2").is_null());
    assert!(password(&after, "password1").is_object());

    // What the store says once the server has let go of it.
    server.stop();
    let store = IdentityStore::open(&data.join("control.redb")).unwrap();
    let now = now_unix();
    assert_eq!(
        store.verify_password("rotator", &new1, now),
        Ok(PasswordSlot::Password1)
    );
    assert!(store.verify_password("rotator", &old1, now).is_err());
    assert!(store.verify_password("rotator", &old2, now).is_err());
}

#[test]
fn scope_maps_crud_validation_and_system_maps() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD));
    let api = Api::new(&server);

    let list = json(api.get("/admin/v1/scope-maps"), StatusCode::OK);
    let system: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "SystemDefined")
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(system.len(), 5, "{list}");
    let pull = json(
        api.get("/admin/v1/scope-maps/_repositories_pull"),
        StatusCode::OK,
    );
    assert_eq!(pull["actions"], json!(["repositories/*/content/read"]));

    for (pattern, rule) in [
        ("sample/*/teamA", "wildcard in the middle"),
        ("sample/teamA*", "not preceded by `/`"),
        ("sample/teamA/*/projectB/*", "more than one wildcard"),
        ("Sample//x", "not a valid repository name"),
    ] {
        let msg = expect_error(
            api.send(
                POST,
                "/admin/v1/scope-maps",
                json!({"name": "bad-map", "repositories": [{"repository": pattern, "actions": ["content/read"]}]}),
            ),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        );
        assert!(
            msg.contains(pattern) && msg.contains(rule),
            "{pattern}: {msg}"
        );
    }
    let msg = expect_error(
        api.send(
            POST,
            "/admin/v1/scope-maps",
            json!({"name": "bad-map", "repositories": [{"repository": "a", "actions": ["content/fly"]}]}),
        ),
        StatusCode::BAD_REQUEST,
        "UNSUPPORTED",
    );
    assert!(msg.contains("content/fly"), "{msg}");

    // ACR-style action strings and repository lists both work; `sample/teamA/*` is lowercased.
    let created = json(
        api.send(
            POST,
            "/admin/v1/scope-maps",
            json!({
                "name": "team-a",
                "description": "team A",
                "actions": ["repositories/sample/*/content/read"],
                "repositories": [{"repository": "sample/teamA/*", "actions": ["content/write"]}]
            }),
        ),
        StatusCode::CREATED,
    );
    assert_eq!(
        created["actions"],
        json!([
            "repositories/sample/*/content/read",
            "repositories/sample/teama/*/content/write"
        ])
    );

    let updated = json(
        api.send(
            PATCH,
            "/admin/v1/scope-maps/team-a",
            json!({
                "description": "changed",
                "addRepository": [{"repository": "sample/teamA/projectB", "actions": ["content/delete"]}],
                "removeRepository": [{"repository": "sample/*", "actions": ["content/read", "metadata/read"]}]
            }),
        ),
        StatusCode::OK,
    );
    assert_eq!(updated["description"], "changed");
    assert_eq!(
        updated["actions"],
        json!([
            "repositories/sample/teama/*/content/write",
            "repositories/sample/teama/projectb/content/delete"
        ])
    );

    // System maps are read-only.
    for name in ["_repositories_admin", "_repositories_push_metadata_write"] {
        let msg = expect_error(
            api.send(
                PATCH,
                &format!("/admin/v1/scope-maps/{name}"),
                json!({"description": "x"}),
            ),
            StatusCode::CONFLICT,
            "DENIED",
        );
        assert!(msg.contains("system-defined"), "{msg}");
        expect_error(
            api.delete(&format!("/admin/v1/scope-maps/{name}")),
            StatusCode::CONFLICT,
            "DENIED",
        );
    }

    // In use → conflict naming the token; free → deleted.
    json(
        api.send(
            POST,
            "/admin/v1/tokens",
            json!({"name": "team-a-bot", "scopeMap": "team-a", "noPasswords": true}),
        ),
        StatusCode::CREATED,
    );
    let msg = expect_error(
        api.delete("/admin/v1/scope-maps/team-a"),
        StatusCode::CONFLICT,
        "DENIED",
    );
    assert!(msg.contains("team-a-bot"), "{msg}");
    assert_eq!(
        api.delete("/admin/v1/tokens/team-a-bot").status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.delete("/admin/v1/scope-maps/team-a").status(),
        StatusCode::NO_CONTENT
    );
    expect_error(
        api.get("/admin/v1/scope-maps/team-a"),
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
    );
}

#[test]
fn repository_attributes_and_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD));
    let api = Api::new(&server);
    let defaults = json(
        api.get("/admin/v1/repositories/prod/app/attributes"),
        StatusCode::OK,
    );
    assert_eq!(
        defaults,
        json!({"readEnabled": true, "writeEnabled": true, "deleteEnabled": true, "listEnabled": true, "signedOnly": false})
    );
    json(
        api.send(
            PUT,
            "/admin/v1/repositories/prod/app/attributes",
            json!({"deleteEnabled": false, "signedOnly": true}),
        ),
        StatusCode::OK,
    );
    let stored = json(
        api.get("/admin/v1/repositories/prod/app/attributes"),
        StatusCode::OK,
    );
    assert_eq!(stored["deleteEnabled"], false);
    assert_eq!(stored["signedOnly"], true);
    assert_eq!(stored["writeEnabled"], true);
    expect_error(
        api.send(PUT, "/admin/v1/repositories/Prod/App/attributes", json!({})),
        StatusCode::BAD_REQUEST,
        "NAME_INVALID",
    );
    expect_error(
        api.get("/admin/v1/repositories/prod/app"),
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
    );

    let doc = json(api.get("/admin/v1/openapi.json"), StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/admin/v1/tokens/{name}/credentials/generate"]["post"].is_object());
}

#[test]
fn generated_admin_password_is_printed_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, None);
    let stderr = server.stderr();
    assert!(stderr.contains("PORTCULLIS ADMIN PASSWORD"), "{stderr}");
    let file = data.join("admin-password");
    let password = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(password.len() >= 43);
    assert!(stderr.contains(&password));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let ok = |server: &Server, pw: &str| {
        Client::new()
            .get(server.url("/admin/v1/tokens"))
            .basic_auth("admin", Some(pw))
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(ok(&server, &password), StatusCode::OK);
    assert_eq!(ok(&server, ADMIN_PASSWORD), StatusCode::UNAUTHORIZED);
    server.stop();

    // A restart reuses it and does not print it again.
    let server = Server::start(&data, None);
    assert!(!server.stderr().contains(&password));
    assert_eq!(ok(&server, &password), StatusCode::OK);
}

#[test]
fn content_trust_switch_needs_confirmation_to_disable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD));
    let api = Api::new(&server);
    let path = "/admin/v1/config/content-trust";
    assert_eq!(
        json(api.get(path), StatusCode::OK),
        json!({"status": "disabled"})
    );
    assert_eq!(
        json(
            api.send(PUT, path, json!({"status": "enabled"})),
            StatusCode::OK
        ),
        json!({"status": "enabled"})
    );
    let message = expect_error(
        api.send(PUT, path, json!({"status": "disabled"})),
        StatusCode::BAD_REQUEST,
        "UNSUPPORTED",
    );
    assert!(
        message.contains("deletes the trust data of every repository")
            && message.contains("cannot be undone")
            && message.contains("confirm"),
        "{message}"
    );
    assert_eq!(
        json(api.get(path), StatusCode::OK),
        json!({"status": "enabled"}),
        "an unconfirmed disable changes nothing"
    );
    expect_error(
        api.send(PUT, path, json!({"status": "off"})),
        StatusCode::BAD_REQUEST,
        "UNSUPPORTED",
    );
    assert_eq!(
        json(
            api.send(PUT, path, json!({"status": "disabled", "confirm": true})),
            StatusCode::OK
        ),
        json!({"status": "disabled"})
    );
    // The switch is kept across restarts.
    api.send(PUT, path, json!({"status": "enabled"}));
    drop(server);
    let server = Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD));
    let api = Api::new(&server);
    assert_eq!(
        json(api.get(path), StatusCode::OK),
        json!({"status": "enabled"})
    );
    let doc = json(api.get("/admin/v1/openapi.json"), StatusCode::OK);
    assert!(doc["paths"][path]["put"].is_object());
}
