//! Protocol details of the gateway over real HTTP (reqwest, and curl where a real client
//! adds something): the `/v2/` challenge, the token endpoint (GET with Basic, OAuth2 POST
//! with `password` and `refresh_token`), the JWT `access` claim, 401 vs 403 refusals,
//! revocation that beats earlier bearer tokens, repository attributes and a user policy
//! that tells tag create from tag overwrite.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::content;

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{ADMIN_PASSWORD, Server};
use content::{OCI_MANIFEST, TestImage};
use portcullis::identity::{IdentityStore, PasswordSlot, now_unix};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const DENIED_TEXT: &str = "requested access to the resource is denied";

fn start(dir: &tempfile::TempDir) -> Server {
    Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD))
}

fn admin(rb: RequestBuilder) -> RequestBuilder {
    rb.basic_auth("admin", Some(ADMIN_PASSWORD))
}

/// Creates a token through the admin API with one repository rule; returns
/// (password1, password2).
fn create_token(server: &Server, name: &str, rules: &[(&str, &[&str])]) -> (String, String) {
    let repositories: Vec<Value> = rules
        .iter()
        .map(|(repo, actions)| json!({"repository": repo, "actions": actions}))
        .collect();
    let resp = admin(Client::new().post(server.url("/admin/v1/tokens")))
        .json(&json!({"name": name, "repositories": repositories}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "create token {name}");
    let body: Value = resp.json().unwrap();
    let slot = |s: &str| {
        body["credentials"]["passwords"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == s)
            .and_then(|p| p["value"].as_str())
            .unwrap()
            .to_owned()
    };
    (slot("password1"), slot("password2"))
}

fn admin_send(server: &Server, method: Method, path: &str, body: Option<Value>) -> Response {
    let mut rb = admin(Client::new().request(method.clone(), server.url(path)));
    if let Some(body) = body {
        rb = rb.json(&body);
    }
    let resp = rb.send().unwrap();
    assert!(
        resp.status().is_success(),
        "admin {method} {path}: {}",
        resp.status()
    );
    resp
}

/// Pushes a distinct image as `repo:tag` with the admin's credentials.
fn seed(server: &Server, repo: &str, tag: &str) -> TestImage {
    let image = TestImage::new(&format!("{repo}:{tag}"));
    image.push(&Client::new(), &server.base, repo, tag, &admin);
    image
}

/// The `service` from the `/v2/` challenge, after checking the header's exact form.
fn service(server: &Server) -> String {
    let resp = Client::new().get(server.url("/v2/")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let header = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let prefix = format!("Bearer realm=\"{}/oauth2/token\",service=\"", server.base);
    let service = header
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("/v2/ challenge {header:?} is not {prefix}<service>\""));
    assert!(
        !service.is_empty() && !service.contains('"'),
        "challenge {header:?}: service must be one quoted value"
    );
    service.to_owned()
}

/// GET /oauth2/token with the given scopes and credentials.
fn token_get(
    server: &Server,
    service: &str,
    scopes: &[&str],
    creds: Option<(&str, &str)>,
) -> Response {
    let mut query = vec![("service", service)];
    query.extend(scopes.iter().map(|s| ("scope", *s)));
    let mut rb = Client::new().get(server.url("/oauth2/token")).query(&query);
    if let Some((user, password)) = creds {
        rb = rb.basic_auth(user, Some(password));
    }
    rb.send().unwrap()
}

/// A bearer token for `scopes`, fetched with Basic credentials.
fn bearer(server: &Server, service: &str, scopes: &[&str], user: &str, password: &str) -> String {
    let resp = token_get(server, service, scopes, Some((user, password)));
    assert_eq!(resp.status(), StatusCode::OK, "token for {user} {scopes:?}");
    let body: Value = resp.json().unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// The JWT's (header, claims), decoded without verification.
fn jwt_parts(jwt: &str) -> (Value, Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWS compact serialization: {jwt}");
    let decode =
        |p: &str| -> Value { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap() };
    (decode(parts[0]), decode(parts[1]))
}

/// The access claim without entries that grant nothing, for comparisons.
fn granted(claims: &Value) -> Value {
    let access = claims["access"]
        .as_array()
        .unwrap_or_else(|| panic!("no access array in {claims}"));
    Value::Array(
        access
            .iter()
            .filter(|e| e["actions"].as_array().is_some_and(|a| !a.is_empty()))
            .cloned()
            .collect(),
    )
}

fn get_manifest(server: &Server, repo: &str, reference: &str, auth: Auth) -> Response {
    auth.apply(Client::new().get(server.url(&format!("/v2/{repo}/manifests/{reference}"))))
        .header("accept", OCI_MANIFEST)
        .send()
        .unwrap()
}

fn start_upload(server: &Server, repo: &str, auth: Auth) -> Response {
    auth.apply(Client::new().post(server.url(&format!("/v2/{repo}/blobs/uploads/"))))
        .send()
        .unwrap()
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Anonymous,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

impl Auth<'_> {
    fn apply(self, rb: RequestBuilder) -> RequestBuilder {
        match self {
            Auth::Anonymous => rb,
            Auth::Basic(user, password) => rb.basic_auth(user, Some(password)),
            Auth::Bearer(token) => rb.bearer_auth(token),
        }
    }
}

/// Status and body of a refusal, after checking the body is OCI error JSON.
fn oci_error(resp: Response) -> (StatusCode, String, String) {
    let status = resp.status();
    let text = resp.text().unwrap();
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {text}"));
    let code = body["errors"][0]["code"].as_str().unwrap_or_default();
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    (status, code.to_owned(), message.to_owned())
}

fn assert_unauthorized(resp: Response, what: &str) {
    let (status, code, _) = oci_error(resp);
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
        "{what}"
    );
}

fn assert_denied(resp: Response, what: &str) {
    let (status, code, message) = oci_error(resp);
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (StatusCode::FORBIDDEN, "DENIED", DENIED_TEXT),
        "{what}"
    );
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn v2_challenge_and_basic_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let service = service(&server);
    let (password, _) = create_token(&server, "basic-bot", &[("samples/app", &["content/read"])]);

    // curl sees the exact challenge on the wire.
    let head = curl(&["-i", &server.url("/v2/")]);
    let expected = format!(
        "www-authenticate: Bearer realm=\"{}/oauth2/token\",service=\"{service}\"\r\n",
        server.base
    );
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        head.to_lowercase().contains(&expected.to_lowercase()),
        "{head}"
    );
    assert_unauthorized(
        Client::new().get(server.url("/v2/")).send().unwrap(),
        "anonymous /v2/",
    );

    for (user, pw) in [("basic-bot", password.as_str()), ("admin", ADMIN_PASSWORD)] {
        let resp = Client::new()
            .get(server.url("/v2/"))
            .basic_auth(user, Some(pw))
            .send()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "/v2/ as {user}");
        assert_eq!(resp.json::<Value>().unwrap(), json!({}));
    }
    for (user, pw) in [
        ("basic-bot", "wrong"),
        ("no-such-token", password.as_str()),
        ("admin", "wrong"),
    ] {
        let resp = Client::new()
            .get(server.url("/v2/"))
            .basic_auth(user, Some(pw))
            .send()
            .unwrap();
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.starts_with("Bearer realm=") && challenge.contains("error=\"invalid_token\""),
            "bad credentials for {user}: {challenge}"
        );
        assert_unauthorized(resp, &format!("/v2/ as {user} with a bad password"));
    }
}

#[test]
fn token_endpoint_get_post_and_access_claim() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let service = service(&server);
    let image = seed(&server, "samples/app", "v1");
    let (password, _) = create_token(
        &server,
        "claims-bot",
        &[("samples/app", &["content/read", "content/write"])],
    );
    let scopes = [
        "repository:samples/app:pull,push,delete",
        "repository:samples/other:pull",
    ];

    // GET with Basic: only what policy grants.
    let resp = token_get(&server, &service, &scopes, Some(("claims-bot", &password)));
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().unwrap();
    let jwt = body["token"].as_str().unwrap();
    assert_eq!(body["access_token"], body["token"]);
    let expires_in = body["expires_in"].as_i64().unwrap();
    assert!(expires_in > 0, "{body}");
    let issued_at = body["issued_at"].as_str().unwrap();
    time::OffsetDateTime::parse(issued_at, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("issued_at {issued_at:?}: {e}"));
    let (header, claims) = jwt_parts(jwt);
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(claims["sub"], "claims-bot", "{claims}");
    assert_eq!(claims["aud"], service.as_str(), "{claims}");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        expires_in,
        "{claims}"
    );
    assert_eq!(
        granted(&claims),
        json!([{"type": "repository", "name": "samples/app", "actions": ["pull", "push"]}]),
        "{claims}"
    );

    // The bearer token works; a tampered one (delete added) does not.
    let resp = get_manifest(&server, "samples/app", "v1", Auth::Bearer(jwt));
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().unwrap().as_ref(), image.manifest.as_slice());
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut forged = claims.clone();
    forged["access"] = json!([{"type": "repository", "name": "samples/app",
                               "actions": ["pull", "push", "delete"]}]);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap()),
        parts[2]
    );
    assert_unauthorized(
        get_manifest(&server, "samples/app", "v1", Auth::Bearer(&forged)),
        "forged JWT",
    );

    // Anonymous: an empty grant, not an error; the token opens nothing.
    let resp = token_get(&server, &service, &scopes[..1], None);
    assert_eq!(resp.status(), StatusCode::OK, "anonymous token request");
    let body: Value = resp.json().unwrap();
    let anonymous = body["token"].as_str().unwrap();
    assert_eq!(granted(&jwt_parts(anonymous).1), json!([]));
    let resp = get_manifest(&server, "samples/app", "v1", Auth::Bearer(anonymous));
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "anonymous bearer");

    // Bad password: 401 with an OCI error body, from GET and POST.
    assert_unauthorized(
        token_get(&server, &service, &scopes, Some(("claims-bot", "wrong"))),
        "token GET with a bad password",
    );
    let form = |extra: &[(&str, &str)]| -> Response {
        let mut fields = vec![("service", service.as_str()), ("client_id", "e2e")];
        fields.extend_from_slice(extra);
        Client::new()
            .post(server.url("/oauth2/token"))
            .form(&fields)
            .send()
            .unwrap()
    };
    assert_unauthorized(
        form(&[
            ("grant_type", "password"),
            ("username", "claims-bot"),
            ("password", "wrong"),
            ("scope", scopes[0]),
        ]),
        "token POST with a bad password",
    );

    // POST password grant (offline: a refresh token comes back), then refresh_token.
    let resp = form(&[
        ("grant_type", "password"),
        ("username", "claims-bot"),
        ("password", &password),
        ("scope", scopes[0]),
        ("access_type", "offline"),
    ]);
    assert_eq!(resp.status(), StatusCode::OK, "POST grant_type=password");
    let body: Value = resp.json().unwrap();
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(
        granted(&jwt_parts(access).1),
        json!([{"type": "repository", "name": "samples/app", "actions": ["pull", "push"]}])
    );
    let refresh = body["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh_token for access_type=offline: {body}"));
    let resp = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh),
        ("scope", "repository:samples/app:pull"),
    ]);
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "POST grant_type=refresh_token"
    );
    let body: Value = resp.json().unwrap();
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(
        granted(&jwt_parts(access).1),
        json!([{"type": "repository", "name": "samples/app", "actions": ["pull"]}])
    );
    let resp = get_manifest(&server, "samples/app", "v1", Auth::Bearer(access));
    assert_eq!(resp.status(), StatusCode::OK, "refreshed bearer");
    assert_unauthorized(
        form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "not-a-refresh-token"),
            ("scope", "repository:samples/app:pull"),
        ]),
        "bogus refresh token",
    );

    // curl through the whole flow: token, then the manifest with it.
    let token_json = curl(&[
        "-u",
        &format!("claims-bot:{password}"),
        &format!(
            "{}?service={service}&scope=repository:samples/app:pull",
            server.url("/oauth2/token")
        ),
    ]);
    let token: Value = serde_json::from_str(&token_json).unwrap();
    let manifest = curl(&[
        "-H",
        &format!("Authorization: Bearer {}", token["token"].as_str().unwrap()),
        "-H",
        &format!("Accept: {OCI_MANIFEST}"),
        &server.url("/v2/samples/app/manifests/v1"),
    ]);
    assert_eq!(manifest.as_bytes(), image.manifest.as_slice());
}

#[test]
fn insufficient_scope_is_401_and_policy_denial_is_403() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let service = service(&server);
    seed(&server, "samples/app", "v1");
    let (rw, _) = create_token(
        &server,
        "writer-bot",
        &[("samples/app", &["content/read", "content/write"])],
    );
    let (ro, _) = create_token(&server, "reader-bot", &[("samples/app", &["content/read"])]);

    // Policy would allow the push, but the bearer token was issued for pull only.
    let pull_only = bearer(
        &server,
        &service,
        &["repository:samples/app:pull"],
        "writer-bot",
        &rw,
    );
    let resp = start_upload(&server, "samples/app", Auth::Bearer(&pull_only));
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let prefix = format!(
        "Bearer realm=\"{}/oauth2/token\",service=\"{service}\",scope=\"repository:samples/app:",
        server.base
    );
    assert!(
        challenge.starts_with(&prefix)
            && challenge.contains("push")
            && challenge.ends_with(",error=\"insufficient_scope\""),
        "insufficient scope challenge: {challenge}"
    );
    assert_unauthorized(resp, "push with a pull-only bearer token");
    let resp = start_upload(&server, "samples/app", Auth::Basic("writer-bot", &rw));
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "push with Basic");

    // Policy says no: 403 DENIED, with Basic and with a bearer token alike.
    assert_denied(
        start_upload(&server, "samples/app", Auth::Basic("reader-bot", &ro)),
        "push by a read-only token (Basic)",
    );
    let ro_bearer = bearer(
        &server,
        &service,
        &["repository:samples/app:pull,push"],
        "reader-bot",
        &ro,
    );
    assert_denied(
        start_upload(&server, "samples/app", Auth::Bearer(&ro_bearer)),
        "push by a read-only token (bearer)",
    );
    assert_denied(
        get_manifest(
            &server,
            "samples/other",
            "v1",
            Auth::Basic("reader-bot", &ro),
        ),
        "pull outside the scope map",
    );

    // No credentials: 401 naming the scope, without error=.
    let resp = start_upload(&server, "samples/app", Auth::Anonymous);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with(&prefix) && !challenge.contains("error="),
        "anonymous push challenge: {challenge}"
    );
    assert_unauthorized(resp, "anonymous push");
    let resp = get_manifest(&server, "samples/app", "v1", Auth::Anonymous);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.ends_with(",scope=\"repository:samples/app:pull\""),
        "anonymous pull challenge: {challenge}"
    );
}

/// One revocation case: a bearer token and Basic credentials that worked are refused on
/// the very next request after `revoke`.
fn assert_revoked<T>(
    server: &Server,
    service: &str,
    name: &str,
    password: &str,
    revoke: impl FnOnce() -> T,
) -> T {
    let jwt = bearer(
        server,
        service,
        &["repository:samples/app:pull"],
        name,
        password,
    );
    for auth in [Auth::Bearer(&jwt), Auth::Basic(name, password)] {
        let resp = get_manifest(server, "samples/app", "v1", auth);
        assert_eq!(resp.status(), StatusCode::OK, "{name} before revocation");
    }
    let revoked = revoke();
    assert_unauthorized(
        get_manifest(server, "samples/app", "v1", Auth::Bearer(&jwt)),
        &format!("earlier bearer token of {name} after revocation"),
    );
    assert_unauthorized(
        get_manifest(server, "samples/app", "v1", Auth::Basic(name, password)),
        &format!("Basic credentials of {name} after revocation"),
    );
    revoked
}

#[test]
fn revocation_beats_earlier_bearer_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let service = service(&server);
    seed(&server, "samples/app", "v1");
    let read = &[("samples/app", &["content/read"][..])];

    let (p1, _) = create_token(&server, "disabled-bot", read);
    assert_revoked(&server, &service, "disabled-bot", &p1, || {
        admin_send(
            &server,
            Method::PATCH,
            "/admin/v1/tokens/disabled-bot",
            Some(json!({"status": "disabled"})),
        );
    });

    let (p1, _) = create_token(&server, "deleted-bot", read);
    assert_revoked(&server, &service, "deleted-bot", &p1, || {
        admin_send(
            &server,
            Method::DELETE,
            "/admin/v1/tokens/deleted-bot",
            None,
        );
    });

    // Regenerating password1 revokes what it issued; password2 keeps working.
    let (p1, p2) = create_token(&server, "rotated-bot", read);
    let jwt2 = bearer(
        &server,
        &service,
        &["repository:samples/app:pull"],
        "rotated-bot",
        &p2,
    );
    let new_p1 = assert_revoked(&server, &service, "rotated-bot", &p1, || {
        let resp = admin_send(
            &server,
            Method::POST,
            "/admin/v1/tokens/rotated-bot/credentials/generate",
            Some(json!({"passwords": ["password1"]})),
        );
        let body: Value = resp.json().unwrap();
        body["passwords"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "password1")
            .and_then(|p| p["value"].as_str())
            .unwrap_or_else(|| panic!("no new password1 in {body}"))
            .to_owned()
    });
    for auth in [
        Auth::Bearer(&jwt2),
        Auth::Basic("rotated-bot", &p2),
        Auth::Basic("rotated-bot", &new_p1),
    ] {
        let resp = get_manifest(&server, "samples/app", "v1", auth);
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "rotated-bot after rotating password1"
        );
    }
}

#[test]
fn expired_password_is_refused_on_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&dir);
    seed(&server, "samples/app", "v1");
    create_token(
        &server,
        "expiring-bot",
        &[("samples/app", &["content/read"])],
    );
    server.stop();

    // The admin API only takes whole days: set a near expiry in the store directly.
    let expires_at = now_unix() + 6;
    let store = IdentityStore::open(&data.join("control.redb")).unwrap();
    // The store's writes are async; this test's HTTP clients are blocking ones, which
    // must not run inside a runtime.
    let generated = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(store.generate_passwords(
            "expiring-bot",
            &[PasswordSlot::Password1],
            Some(expires_at),
        ))
        .unwrap();
    let password = generated.passwords[0].value.clone();
    drop(store);

    let server = Server::start(&data, Some(ADMIN_PASSWORD));
    let service = service(&server);
    assert_revoked(&server, &service, "expiring-bot", &password, || {
        while now_unix() <= expires_at {
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

#[test]
fn repository_attributes_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let image = seed(&server, "samples/locked", "v1");
    let (pw, _) = create_token(
        &server,
        "locked-bot",
        &[(
            "samples/locked",
            &["content/read", "content/write", "content/delete"],
        )],
    );
    let bot = Auth::Basic("locked-bot", &pw);
    let attributes = "/admin/v1/repositories/samples/locked/attributes";
    let set = |attrs: Value| {
        admin_send(&server, Method::PUT, attributes, Some(attrs));
    };

    set(json!({"writeEnabled": false}));
    assert_denied(
        start_upload(&server, "samples/locked", bot),
        "upload to a write-disabled repository",
    );
    assert_denied(
        image.put_manifest(
            &Client::new(),
            &server.base,
            "samples/locked",
            "v2",
            &|rb| bot.apply(rb),
        ),
        "manifest PUT to a write-disabled repository",
    );
    assert_denied(
        start_upload(
            &server,
            "samples/locked",
            Auth::Basic("admin", ADMIN_PASSWORD),
        ),
        "admin upload to a write-disabled repository",
    );
    let resp = get_manifest(&server, "samples/locked", "v1", bot);
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "pull from a write-disabled repository"
    );

    set(json!({"readEnabled": false}));
    assert_denied(
        get_manifest(&server, "samples/locked", "v1", bot),
        "pull from a read-disabled repository",
    );

    set(json!({"deleteEnabled": false}));
    let delete = |auth: Auth| {
        auth.apply(
            Client::new()
                .delete(server.url(&format!("/v2/samples/locked/manifests/{}", image.digest()))),
        )
        .send()
        .unwrap()
    };
    assert_denied(delete(bot), "delete in a delete-disabled repository");

    // Defaults again: everything the scope map grants works.
    set(json!({}));
    let resp = start_upload(&server, "samples/locked", bot);
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "upload after unlocking"
    );
    let resp = delete(bot);
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "delete after unlocking"
    );
}

#[test]
fn tag_overwrite_and_create_reach_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("release-immutable.cedar"),
        r#"// Tags under release/ are immutable: they may be created, never moved.
@id("test/release-tags-immutable")
forbid (principal, action == Action::"content/write", resource)
when { resource.name like "release/*" && context.operation == "overwrite-tag" };
"#,
    )
    .unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &["--policy-dir", policies.to_str().unwrap()],
    );
    let (pw, _) = create_token(
        &server,
        "release-bot",
        &[
            ("release/*", &["content/read", "content/write"]),
            ("samples/*", &["content/read", "content/write"]),
        ],
    );
    let bot = |rb: RequestBuilder| rb.basic_auth("release-bot", Some(&pw));
    let http = Client::new();
    let first = TestImage::new("first");
    let second = TestImage::new("second");

    first.push(&http, &server.base, "release/app", "v1", &bot);
    for blob in [&second.config, &second.layer] {
        let resp = content::upload(&http, &server.base, "release/app", blob, &bot);
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "blob push under release/"
        );
    }
    assert_denied(
        second.put_manifest(&http, &server.base, "release/app", "v1", &bot),
        "moving release/app:v1",
    );
    let resp = second.put_manifest(&http, &server.base, "release/app", "v2", &bot);
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "creating release/app:v2"
    );
    let resp = second.put_manifest(&http, &server.base, "release/app", &second.digest(), &bot);
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "push by digest under release/"
    );
    let resp = get_manifest(
        &server,
        "release/app",
        "v1",
        Auth::Basic("release-bot", &pw),
    );
    assert_eq!(
        resp.headers()["docker-content-digest"],
        first.digest().as_str()
    );

    // Outside release/ a tag moves freely.
    first.push(&http, &server.base, "samples/app", "v1", &bot);
    second.push(&http, &server.base, "samples/app", "v1", &bot);
    let resp = get_manifest(
        &server,
        "samples/app",
        "v1",
        Auth::Basic("release-bot", &pw),
    );
    assert_eq!(
        resp.headers()["docker-content-digest"],
        second.digest().as_str()
    );
}

#[test]
fn blobs_stream_through_with_lengths_and_locations() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let (pw, _) = create_token(
        &server,
        "stream-bot",
        &[("samples/big", &["content/read", "content/write"])],
    );
    let bot = |rb: RequestBuilder| rb.basic_auth("stream-bot", Some(&pw));
    // 24 MiB in 5 MiB PATCHes: more than any single buffer on the way.
    let blob = content::pseudo_random(7, 24 << 20);
    content::chunked_blob_round_trip(
        &Client::new(),
        &server.base,
        "samples/big",
        &blob,
        5 << 20,
        &bot,
    );
    // HEAD on a manifest keeps its Content-Length too.
    let image = TestImage::new("stream");
    image.push(&Client::new(), &server.base, "samples/big", "v1", &bot);
    let resp = bot(Client::new().head(server.url("/v2/samples/big/manifests/v1")))
        .header("accept", OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-length"],
        image.manifest.len().to_string().as_str()
    );
}

#[test]
fn cross_repository_mount_needs_read_on_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let secret = seed(&server, "private/src", "v1");
    let public = seed(&server, "samples/src", "v1");
    let (pw, _) = create_token(
        &server,
        "mount-bot",
        &[
            ("samples/dst", &["content/read", "content/write"]),
            ("samples/src", &["content/read"]),
        ],
    );
    let mount = |digest: &str, from: &str| {
        Client::new()
            .post(server.url(&format!(
                "/v2/samples/dst/blobs/uploads/?mount={digest}&from={from}"
            )))
            .basic_auth("mount-bot", Some(&pw))
            .send()
            .unwrap()
    };
    let head = |digest: &str| {
        Client::new()
            .head(server.url(&format!("/v2/samples/dst/blobs/{digest}")))
            .basic_auth("mount-bot", Some(&pw))
            .send()
            .unwrap()
            .status()
    };

    // From a readable repository: mounted.
    let layer = content::digest(&public.layer);
    let resp = mount(&layer, "samples/src");
    assert_eq!(resp.status(), StatusCode::CREATED, "mount from samples/src");
    assert_eq!(head(&layer), StatusCode::OK);

    // From one the token cannot read: never mounted (refused, or a plain upload).
    let layer = content::digest(&secret.layer);
    let resp = mount(&layer, "private/src");
    assert_ne!(
        resp.status(),
        StatusCode::CREATED,
        "mounted a blob from an unreadable repository"
    );
    assert_eq!(head(&layer), StatusCode::NOT_FOUND);
}

/// The `scope` parameter of a `WWW-Authenticate` challenge.
fn challenge_scope(resp: &Response) -> String {
    let header = resp.headers()["www-authenticate"].to_str().unwrap();
    let (_, rest) = header
        .split_once(",scope=\"")
        .unwrap_or_else(|| panic!("challenge {header:?} names no scope"));
    rest.split('"').next().unwrap().to_owned()
}

#[test]
fn mount_challenge_names_every_scope_and_its_token_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let service = service(&server);
    let source = seed(&server, "samples/src", "v1");
    let (pw, _) = create_token(
        &server,
        "mount-bot",
        &[
            ("samples/dst", &["content/read", "content/write"]),
            ("samples/src", &["content/read"]),
        ],
    );
    let layer = content::digest(&source.layer);
    let path = format!("/v2/samples/dst/blobs/uploads/?mount={layer}&from=samples/src");
    let mount = |auth: Auth| {
        auth.apply(Client::new().post(server.url(&path)))
            .send()
            .unwrap()
    };
    let both = "repository:samples/dst:push,pull repository:samples/src:pull";

    // Anonymous, bad credentials, and a token for the target only: every challenge
    // names both repositories, in one space-separated `scope` (as distribution does).
    let resp = mount(Auth::Anonymous);
    assert_eq!(challenge_scope(&resp), both, "anonymous mount");
    assert_unauthorized(resp, "anonymous mount");
    let resp = mount(Auth::Basic("mount-bot", "wrong"));
    assert_eq!(challenge_scope(&resp), both, "bad password");
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .ends_with(",error=\"invalid_token\"")
    );
    let target_only = bearer(
        &server,
        &service,
        &["repository:samples/dst:push,pull"],
        "mount-bot",
        &pw,
    );
    let resp = mount(Auth::Bearer(&target_only));
    assert_eq!(challenge_scope(&resp), both, "target-only token");
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .ends_with(",error=\"insufficient_scope\"")
    );
    assert_unauthorized(resp, "mount with a target-only token");

    // A client that fetches one token for exactly the challenge's scope (one `scope`
    // parameter, as given) then mounts.
    let resp = Client::new()
        .get(server.url("/oauth2/token"))
        .query(&[("service", service.as_str()), ("scope", both)])
        .basic_auth("mount-bot", Some(&pw))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let token = resp.json::<Value>().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(mount(Auth::Bearer(&token)).status(), StatusCode::CREATED);
    let resp = Auth::Bearer(&token)
        .apply(Client::new().head(server.url(&format!("/v2/samples/dst/blobs/{layer}"))))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[test]
fn automatic_mount_comes_only_from_readable_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let service = service(&server);
    let public = seed(&server, "samples/pub", "v1");
    let secret = seed(&server, "private/src", "v1");
    let (pw, _) = create_token(
        &server,
        "auto-bot",
        &[
            ("samples/dst", &["content/read", "content/write"]),
            ("samples/pub", &["content/read"]),
        ],
    );
    // `?mount=` without `from` (OCI 1.1).
    let mount = |digest: &str, auth: Auth| {
        auth.apply(
            Client::new()
                .post(server.url(&format!("/v2/samples/dst/blobs/uploads/?mount={digest}"))),
        )
        .send()
        .unwrap()
    };
    let head = |digest: &str| {
        Client::new()
            .head(server.url(&format!("/v2/samples/dst/blobs/{digest}")))
            .basic_auth("auto-bot", Some(&pw))
            .send()
            .unwrap()
            .status()
    };
    let basic = Auth::Basic("auto-bot", &pw);
    let is_upload = |resp: Response, what: &str| {
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{what}");
        let location = resp.headers()["location"].to_str().unwrap();
        assert!(
            location.contains("/v2/samples/dst/blobs/uploads/"),
            "{what}: {location}"
        );
    };

    // In a readable repository: mounted.
    let layer = content::digest(&public.layer);
    let resp = mount(&layer, basic);
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "mount of a readable blob"
    );
    assert_eq!(
        resp.headers()["docker-content-digest"].to_str().unwrap(),
        layer
    );
    assert_eq!(head(&layer), StatusCode::OK);

    // Only in an unreadable repository: a plain upload, as if it existed nowhere.
    let hidden = content::digest(&secret.layer);
    is_upload(
        mount(&hidden, basic),
        "blob only in an unreadable repository",
    );
    assert_eq!(head(&hidden), StatusCode::NOT_FOUND);
    is_upload(
        mount(&content::digest(b"in no repository"), basic),
        "blob nowhere",
    );

    // A bearer token is bounded by its claim: without the source in it, an upload.
    let config = content::digest(&public.config);
    let target_only = bearer(
        &server,
        &service,
        &["repository:samples/dst:push,pull"],
        "auto-bot",
        &pw,
    );
    is_upload(
        mount(&config, Auth::Bearer(&target_only)),
        "source outside the bearer claim",
    );
    assert_eq!(head(&config), StatusCode::NOT_FOUND);
    let with_source = bearer(
        &server,
        &service,
        &[
            "repository:samples/dst:push,pull",
            "repository:samples/pub:pull",
        ],
        "auto-bot",
        &pw,
    );
    assert_eq!(
        mount(&config, Auth::Bearer(&with_source)).status(),
        StatusCode::CREATED
    );
    assert_eq!(head(&config), StatusCode::OK);

    // Whoever may not push gets the push refusal, not a hint about the blob.
    let resp = mount(&layer, Auth::Anonymous);
    assert_eq!(challenge_scope(&resp), "repository:samples/dst:push,pull");
    assert_unauthorized(resp, "anonymous automatic mount");
}

#[test]
fn hostile_requests_are_refused_before_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let http = Client::new();
    let image = seed(&server, "hostile/secret", "v1");
    let layer = content::digest(&image.layer);

    // distribution would read `mount`/`from` from a form body (Go's FormValue), behind
    // the gateway's back: a form-encoded upload is refused, and nothing is mounted.
    let resp = admin(
        http.post(server.url("/v2/hostile/mine/blobs/uploads/"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("mount={layer}&from=hostile/secret")),
    )
    .send()
    .unwrap();
    let (status, code, message) = oci_error(resp);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert_eq!(code, "UNSUPPORTED");
    let resp = admin(http.head(server.url(&format!("/v2/hostile/mine/blobs/{layer}"))))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // A Host that could break out of the quoted realm is not echoed into the challenge.
    let out = curl(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Host: evil\",error=\"x",
        &server.url("/v2/"),
    ]);
    let challenge = out
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .unwrap_or_else(|| panic!("no challenge in {out}"));
    assert!(!challenge.contains("evil"), "{challenge}");

    // Client-chosen methods do not mint metric series.
    let resp = http
        .request(Method::from_bytes(b"BREW").unwrap(), server.url("/v2/"))
        .send()
        .unwrap();
    assert!(resp.status().is_client_error());
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!metrics.contains("BREW"), "{metrics}");
    assert!(metrics.contains("method=\"other\""), "{metrics}");

    // A pull by an invalid tag is a missing manifest (404 MANIFEST_UNKNOWN), a push
    // by one TAG_INVALID, an unknown route 404 UNSUPPORTED, as the store says.
    let resp = admin(http.get(server.url("/v2/hostile/secret/manifests/-bad")))
        .send()
        .unwrap();
    let (status, code, _) = oci_error(resp);
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
    let resp = image.put_manifest(&http, &server.base, "hostile/secret", "-bad", &admin);
    let (status, code, _) = oci_error(resp);
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "TAG_INVALID")
    );
    let resp = admin(http.get(server.url("/nowhere"))).send().unwrap();
    let (status, code, _) = oci_error(resp);
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "UNSUPPORTED")
    );
}

/// A pull by a reference that can name no manifest (an invalid tag, a malformed digest)
/// is decided like any pull — 401 with a challenge to an anonymous caller, 403 without
/// `content/read` — and only then answered as a missing manifest: 404
/// `MANIFEST_UNKNOWN`, as distribution and zot answer it. A push by one stays 400.
#[test]
fn reads_by_an_invalid_reference_are_404_once_authorized() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let image = seed(&server, "samples/app", "v1");
    let (reader_pw, _) = create_token(&server, "reader", &[("samples/app", &["content/read"])]);
    let (outsider_pw, _) =
        create_token(&server, "outsider", &[("samples/other", &["content/read"])]);
    let (writer_pw, _) = create_token(
        &server,
        "writer",
        &[("samples/app", &["content/read", "content/write"])],
    );
    let reader = Auth::Basic("reader", &reader_pw);
    let long_tag = "t".repeat(129);
    for reference in ["-bad", ".dot", long_tag.as_str(), "sha256:zz"] {
        let what = |who: &str| format!("GET samples/app by {reference:.20} as {who}");
        let resp = get_manifest(&server, "samples/app", reference, Auth::Anonymous);
        assert!(
            resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("scope=\"repository:samples/app:pull\""),
            "{}",
            what("anonymous")
        );
        assert_unauthorized(resp, &what("anonymous"));
        assert_denied(
            get_manifest(
                &server,
                "samples/app",
                reference,
                Auth::Basic("outsider", &outsider_pw),
            ),
            &what("outsider"),
        );
        let (status, code, message) =
            oci_error(get_manifest(&server, "samples/app", reference, reader));
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            "{}: {message}",
            what("reader")
        );
    }
    // HEAD, as curl sends it: 404 and no body.
    let url = server.url("/v2/samples/app/manifests/-bad");
    let out = curl(&[
        "-I",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-u",
        &format!("reader:{reader_pw}"),
        &url,
    ]);
    assert_eq!(out, "404", "HEAD {url}");
    // A push by an invalid tag is refused as one.
    let resp = image.put_manifest(&Client::new(), &server.base, "samples/app", "-bad", &|rb| {
        rb.basic_auth("writer", Some(&writer_pw))
    });
    let (status, code, _) = oci_error(resp);
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "TAG_INVALID")
    );
}

fn delete(server: &Server, path: &str, auth: Auth) -> Response {
    auth.apply(Client::new().delete(server.url(path)))
        .send()
        .unwrap()
}

/// The JSON body of an accepted delete.
fn deleted(resp: Response, what: &str) -> Value {
    let status = resp.status();
    let text = resp.text().unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{what}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"))
}

/// A repository or an image is deleted server-side on ONE `content/delete` decision:
/// a token holding only `content/delete` deletes, without listing tags or reading
/// manifests; everyone else is refused as for any other delete.
#[test]
fn repository_and_image_deletes_need_only_content_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let http = Client::new();
    let v1 = seed(&server, "samples/nginx", "v1");
    v1.put_manifest(&http, &server.base, "samples/nginx", "stable", &admin);
    let v2 = seed(&server, "samples/nginx", "v2");
    seed(&server, "samples/other", "v1");
    let (deleter_pw, _) = create_token(
        &server,
        "deleter",
        &[("samples/nginx", &["content/delete"])],
    );
    let deleter = Auth::Basic("deleter", &deleter_pw);
    let (reader_pw, _) = create_token(
        &server,
        "reader",
        &[("samples/nginx", &["content/read", "metadata/read"])],
    );
    let repository = "/portcullis/v1/repositories/samples/nginx";

    // Refusals: anonymous 401 with a challenge, no content/delete 403, another
    // repository 403, a delete-disabled repository 403; nothing is deleted.
    let resp = delete(&server, repository, Auth::Anonymous);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("repository:samples/nginx:delete"),
        "{:?}",
        resp.headers()
    );
    assert_unauthorized(resp, "anonymous repository delete");
    assert_denied(
        delete(&server, repository, Auth::Basic("reader", &reader_pw)),
        "repository delete without content/delete",
    );
    assert_denied(
        delete(
            &server,
            "/portcullis/v1/repositories/samples/other",
            deleter,
        ),
        "repository delete out of scope",
    );
    assert_denied(
        delete(
            &server,
            "/portcullis/v1/repositories/samples/other/_manifests/v1",
            deleter,
        ),
        "image delete out of scope",
    );
    let attributes = "/admin/v1/repositories/samples/nginx/attributes";
    admin_send(
        &server,
        Method::PUT,
        attributes,
        Some(json!({"deleteEnabled": false})),
    );
    assert_denied(
        delete(&server, repository, deleter),
        "repository delete in a delete-disabled repository",
    );
    assert_denied(
        delete(&server, &format!("{repository}/_manifests/v1"), deleter),
        "image delete in a delete-disabled repository",
    );
    admin_send(&server, Method::PUT, attributes, Some(json!({})));
    let resp = get_manifest(
        &server,
        "samples/nginx",
        "v1",
        Auth::Basic("admin", ADMIN_PASSWORD),
    );
    assert_eq!(resp.status(), StatusCode::OK, "v1 survives the refusals");

    // An image by tag: its manifest and every tag on it.
    let body = deleted(
        delete(&server, &format!("{repository}/_manifests/stable"), deleter),
        "image delete",
    );
    assert_eq!(
        body,
        json!({"manifestsDeleted": [v1.digest()], "tagsDeleted": ["stable", "v1"]})
    );
    let (status, code, _) = oci_error(delete(
        &server,
        &format!("{repository}/_manifests/{}", v1.digest()),
        deleter,
    ));
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );

    // The whole repository, at ACR's path.
    let body = deleted(
        delete(&server, "/acr/v1/samples/nginx", deleter),
        "repository delete",
    );
    assert_eq!(
        body,
        json!({"manifestsDeleted": [v2.digest()], "tagsDeleted": ["v2"]})
    );
    let catalog: Value = admin(http.get(server.url("/v2/_catalog")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(catalog["repositories"], json!(["samples/other"]));
    let (status, code, _) = oci_error(
        admin(http.get(server.url("/v2/samples/nginx/tags/list")))
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
    );
    // Gone: NAME_UNKNOWN, but only to a caller who may delete there.
    let (status, code, _) = oci_error(delete(&server, repository, deleter));
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
    );
    assert_denied(
        delete(&server, repository, Auth::Basic("reader", &reader_pw)),
        "delete of a deleted repository without content/delete",
    );

    // A bearer token needs `delete` in its access claim.
    let service = service(&server);
    let pull = bearer(
        &server,
        &service,
        &["repository:samples/other:pull"],
        "admin",
        ADMIN_PASSWORD,
    );
    let resp = delete(
        &server,
        "/portcullis/v1/repositories/samples/other",
        Auth::Bearer(&pull),
    );
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope"),
        "{:?}",
        resp.headers()
    );
    assert_unauthorized(resp, "repository delete with a pull-only bearer token");
    let delete_scope = bearer(
        &server,
        &service,
        &["repository:samples/other:delete"],
        "admin",
        ADMIN_PASSWORD,
    );
    deleted(
        delete(
            &server,
            "/portcullis/v1/repositories/samples/other",
            Auth::Bearer(&delete_scope),
        ),
        "repository delete with a delete bearer token",
    );
}

/// `context.operation` tells a whole-repository delete from an image delete, so a
/// policy can forbid one and allow the other.
#[test]
fn policy_can_forbid_whole_repository_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("no-repository-deletes.cedar"),
        r#"// Images may be deleted one by one, repositories not at once.
@id("test/no-repository-deletes")
forbid (principal, action == Action::"content/delete", resource)
when { context.operation == "delete-repository" };
"#,
    )
    .unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        Some(ADMIN_PASSWORD),
        &["--policy-dir", policies.to_str().unwrap()],
    );
    let image = seed(&server, "samples/app", "v1");
    let (pw, _) = create_token(&server, "janitor", &[("samples/*", &["content/delete"])]);
    let janitor = Auth::Basic("janitor", &pw);
    let resp = delete(&server, "/portcullis/v1/repositories/samples/app", janitor);
    let (status, code, _) = oci_error(resp);
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "DENIED"));
    assert_denied(
        delete(
            &server,
            "/acr/v1/samples/app",
            Auth::Basic("admin", ADMIN_PASSWORD),
        ),
        "the admin's repository delete",
    );
    let body = deleted(
        delete(
            &server,
            &format!(
                "/portcullis/v1/repositories/samples/app/_manifests/{}",
                image.digest()
            ),
            janitor,
        ),
        "image delete by digest",
    );
    assert_eq!(
        body,
        json!({"manifestsDeleted": [image.digest()], "tagsDeleted": ["v1"]})
    );
}

/// Sends `bytes` on a fresh connection and returns everything the gateway answers
/// until it closes the connection.
fn raw_exchange(server: &Server, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server.host()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The status and the OCI error code of a raw HTTP/1.1 answer.
fn raw_oci_error(answer: &str) -> (u16, String) {
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let (_, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body in {answer:?}"));
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: body {body:?} of {answer:?}"));
    (status, v["errors"][0]["code"].as_str().unwrap().to_owned())
}

#[test]
fn malformed_framing_is_the_clients_fault() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN_PASSWORD}"));

    // A bad chunk line, without credentials, on a route the gateway answers itself…
    let answer = raw_exchange(
        &server,
        b"POST /oauth2/token HTTP/1.1\r\nHost: registry\r\nTransfer-Encoding: chunked\r\n\
          Content-Type: application/x-www-form-urlencoded\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(
        raw_oci_error(&answer),
        (400, "UNSUPPORTED".into()),
        "{answer}"
    );
    assert!(answer.contains("chunk"), "{answer}");
    // …and with credentials on an upload the bundled store reads in process.
    let resp = admin(Client::new().post(server.url("/v2/framing/app/blobs/uploads/")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let request = format!(
        "PATCH {location} HTTP/1.1\r\nHost: registry\r\nAuthorization: Basic {creds}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
         4\r\nabcd\r\nzz\r\nabc\r\n0\r\n\r\n"
    );
    let answer = raw_exchange(&server, request.as_bytes());
    assert_eq!(raw_oci_error(&answer).0, 400, "{answer}");
    // Neither is the gateway's error: nothing is logged at ERROR (the servers run at warn).
    let log = server.stderr();
    assert!(!log.contains("ERROR"), "{log}");

    // What pingora's HTTP/1 parser refuses (too many headers, a bad Content-Length,
    // bytes that are not HTTP) is answered 400 with the OCI error JSON and the
    // connection closed. (In front of an upstream, pingora's proxy writes a bare 400
    // itself before any gateway code runs; see `HttpProxy::handle_new_request`.)
    let many: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let garbage = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]
        .iter()
        .copied()
        .chain(std::iter::repeat_n(0u8, 60))
        .collect::<Vec<u8>>();
    for (what, bytes) in [
        (
            "1000 headers",
            format!("GET /v2/ HTTP/1.1\r\nHost: registry\r\n{many}\r\n").into_bytes(),
        ),
        (
            "bad Content-Length",
            b"POST /oauth2/token HTTP/1.1\r\nHost: registry\r\nContent-Length: 12abc\r\n\r\n"
                .to_vec(),
        ),
        ("garbage", garbage),
    ] {
        let answer = raw_exchange(&server, &bytes);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{what}: {answer:?}");
        assert_eq!(
            raw_oci_error(&answer),
            (400, "UNSUPPORTED".to_owned()),
            "{what}"
        );
        assert!(answer.contains("malformed request"), "{what}: {answer:?}");
    }
    // The gateway still serves.
    let resp = admin(Client::new().get(server.url("/v2/"))).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
