//! The attack suite: real HTTP against a running gateway, each case an attempt to read or
//! write where the caller may not, with the refusal it must get (status and OCI error
//! code), and beside it a control — the same request by someone entitled — that succeeds,
//! so each refusal is for the trick and not for a broken request.
//!
//! Families: path tricks, method tricks, header tricks, JWT tricks, scope tricks, trust
//! tricks. Every case prints one line (`attack <family>/<name>: <status> <code>`) straight
//! to the process's stdout, so `cargo test --test attacks` lists them even when it
//! captures test output.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use common::content;

use std::io::{Read as _, Write as _};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use common::trust::{Fixture, TrustGateway, bump_version, multipart, notary_error};
use common::{ADMIN_PASSWORD, Server, create_token};
use content::{OCI_MANIFEST, TestImage};

const READER: &str = "reader";
const WRITER: &str = "writer";
const PRIVATE: &str = "private/secret";
const TEAM: &str = "team/app";

/// Prints one case line past libtest's capture (which only takes `print!` output).
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// Status and error code of an answer; the code is empty for a body that is not OCI
/// error JSON (a success, or a `HEAD`).
fn outcome(status: StatusCode, body: &[u8]) -> (StatusCode, String) {
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, code)
}

fn answer(resp: Response) -> (StatusCode, String) {
    let status = resp.status();
    let body = resp.bytes().unwrap();
    outcome(status, &body)
}

/// Asserts a refusal: `status` and, when given, the OCI error `code`.
fn refused(family: &str, name: &str, got: (StatusCode, String), status: StatusCode, code: &str) {
    report(&format!(
        "attack {family}/{name}: {} {}",
        got.0.as_u16(),
        got.1
    ));
    assert_eq!(
        (got.0, got.1.as_str()),
        (status, code),
        "{family}/{name}: wrong refusal"
    );
}

/// Asserts a control (the entitled request) got `status`.
fn allowed(family: &str, name: &str, got: (StatusCode, String), status: StatusCode) {
    report(&format!("control {family}/{name}: {}", got.0.as_u16()));
    assert_eq!(
        got.0, status,
        "{family}/{name}: the control failed ({})",
        got.1
    );
}

/// A gateway with two repositories (one the tokens may not touch) and two tokens.
struct Registry {
    server: Server,
    http: Client,
    service: String,
    reader_password: String,
    writer_password: String,
    team: TestImage,
    private: TestImage,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // The gateway adopts this key as the first of its signing-key ring (the key file
        // of a gateway from before the ring), so forged tokens can use the real key.
        std::fs::create_dir_all(&data).unwrap();
        let pem = p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&test_signing_key(), LineEnding::LF)
            .unwrap();
        std::fs::write(data.join("token-signing-key.pem"), pem.as_bytes()).unwrap();
        let server = Server::start(&data, Some(ADMIN_PASSWORD));
        let http = Client::new();
        let team = TestImage::new("team");
        team.push(&http, &server.base, TEAM, "v1", &admin);
        let private = TestImage::new("private");
        private.push(&http, &server.base, PRIVATE, "v1", &admin);
        let base = TestImage::new("base");
        base.push(&http, &server.base, "team/base", "v1", &admin);
        let reader_password =
            create_token(&server, READER, TEAM, &["content/read", "metadata/read"]);
        let writer_password = create_token(
            &server,
            WRITER,
            "team/*",
            &["content/read", "content/write", "metadata/read"],
        );
        let resp = http.get(server.url("/v2/")).send().unwrap();
        let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
        let service = challenge
            .split("service=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_owned();
        Registry {
            server,
            http,
            service,
            reader_password,
            writer_password,
            team,
            private,
            _dir: dir,
        }
    }

    fn reader(&self) -> impl Fn(RequestBuilder) -> RequestBuilder + '_ {
        move |r: RequestBuilder| r.basic_auth(READER, Some(&self.reader_password))
    }

    fn writer(&self) -> impl Fn(RequestBuilder) -> RequestBuilder + '_ {
        move |r: RequestBuilder| r.basic_auth(WRITER, Some(&self.writer_password))
    }

    fn manifest(&self, repo: &str, auth: &dyn Fn(RequestBuilder) -> RequestBuilder) -> Response {
        auth(
            self.http
                .get(self.server.url(&format!("/v2/{repo}/manifests/v1"))),
        )
        .header("accept", OCI_MANIFEST)
        .send()
        .unwrap()
    }

    /// A bearer token for `scopes` with `user`'s Basic credentials.
    fn bearer(&self, user: &str, password: &str, scopes: &[&str]) -> String {
        let mut query = vec![("service", self.service.as_str())];
        query.extend(scopes.iter().map(|s| ("scope", *s)));
        let resp = self
            .http
            .get(self.server.url("/oauth2/token"))
            .query(&query)
            .basic_auth(user, Some(password))
            .send()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "token for {user} {scopes:?}");
        resp.json::<Value>().unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Sends `request` (a request line and headers, without the final blank line) on a
    /// fresh connection exactly as written — no client normalises its path.
    fn raw(&self, request: &str, basic: Option<(&str, &str)>) -> (StatusCode, String) {
        let mut text = format!(
            "{request}\r\nHost: {}\r\nConnection: close\r\n",
            self.server.host()
        );
        if let Some((user, password)) = basic {
            let credentials =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            text.push_str(&format!("Authorization: Basic {credentials}\r\n"));
        }
        text.push_str("\r\n");
        let mut stream = std::net::TcpStream::connect(self.server.host()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(text.as_bytes()).unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&out)));
        let head = String::from_utf8_lossy(&out[..split]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {head:?}"));
        let mut body = &out[split + 4..];
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            // One chunk is all an error body needs; skip its size line.
            let line = body.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
            body = &body[line..];
        }
        outcome(StatusCode::from_u16(status).unwrap(), body)
    }
}

fn admin(r: RequestBuilder) -> RequestBuilder {
    r.basic_auth("admin", Some(ADMIN_PASSWORD))
}

#[test]
fn path_tricks() {
    let r = Registry::start();
    let reader = Some((READER, r.reader_password.as_str()));
    allowed(
        "path",
        "reader pulls its own repository",
        r.raw("GET /v2/team/app/manifests/v1 HTTP/1.1", reader),
        StatusCode::OK,
    );
    refused(
        "path",
        "reader pulls the private repository",
        r.raw("GET /v2/private/secret/manifests/v1 HTTP/1.1", reader),
        StatusCode::FORBIDDEN,
        "DENIED",
    );
    // Each of these names the private repository through its own repository (or
    // outside any) and must never be served.
    let name_invalid = [
        ("dot-dot", "/v2/team/app/../../private/secret/manifests/v1"),
        (
            "encoded dot-dot",
            "/v2/team/app/%2e%2e/%2e%2e/private/secret/manifests/v1",
        ),
        (
            "encoded slash",
            "/v2/team/app%2F..%2F..%2Fprivate%2Fsecret/manifests/v1",
        ),
        (
            "double-encoded dot-dot",
            "/v2/team/app/%252e%252e/%252e%252e/private/secret/manifests/v1",
        ),
        ("empty component", "/v2/team//app/manifests/v1"),
        ("leading slash", "/v2//private/secret/manifests/v1"),
        ("dot component", "/v2/team/app/./manifests/v1"),
        ("upper-case name", "/v2/Private/Secret/manifests/v1"),
        ("upper-case own name", "/v2/TEAM/APP/manifests/v1"),
        (
            "cyrillic look-alike",
            "/v2/priv%D0%B0te/secret/manifests/v1",
        ),
        (
            "fullwidth solidus",
            "/v2/team/app%EF%BC%8F..%EF%BC%8Fprivate/manifests/v1",
        ),
        ("nul byte", "/v2/team/app%00/manifests/v1"),
        (
            "dot-dot out of the repository API",
            "/portcullis/v1/repositories/../../admin/v1/tokens",
        ),
    ];
    for (name, path) in name_invalid {
        let got = r.raw(&format!("GET {path} HTTP/1.1"), reader);
        refused("path", name, got, StatusCode::BAD_REQUEST, "NAME_INVALID");
    }
    for (name, path) in [
        ("trailing slash", "/v2/private/secret/manifests/v1/"),
        ("dot-dot into the admin API", "/v2/../admin/v1/tokens"),
    ] {
        let got = r.raw(&format!("GET {path} HTTP/1.1"), reader);
        refused("path", name, got, StatusCode::NOT_FOUND, "UNSUPPORTED");
    }
    refused(
        "path",
        "reader on the admin API",
        r.raw("GET /admin/v1/tokens HTTP/1.1", reader),
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
    allowed(
        "path",
        "admin on the admin API",
        r.raw(
            "GET /admin/v1/tokens HTTP/1.1",
            Some(("admin", ADMIN_PASSWORD)),
        ),
        StatusCode::OK,
    );
}

#[test]
fn method_tricks() {
    let r = Registry::start();
    let url = |repo: &str| r.server.url(&format!("/v2/{repo}/manifests/v1"));
    let head = |repo: &str| answer(r.reader()(r.http.head(url(repo))).send().unwrap());
    allowed(
        "method",
        "HEAD of its own manifest",
        head(TEAM),
        StatusCode::OK,
    );
    // A HEAD answer has no body, so only its status can be checked.
    refused(
        "method",
        "HEAD of the private manifest",
        head(PRIVATE),
        StatusCode::FORBIDDEN,
        "",
    );
    // A GET that asks to be treated as a DELETE stays a GET: the private manifest is
    // neither served nor deleted.
    let got = answer(
        r.reader()(r.http.get(url(PRIVATE)))
            .header("x-http-method-override", "GET")
            .send()
            .unwrap(),
    );
    refused(
        "method",
        "GET private with X-HTTP-Method-Override: GET",
        got,
        StatusCode::FORBIDDEN,
        "DENIED",
    );
    for verb in ["DELETE", "PUT"] {
        let got = answer(
            r.reader()(r.http.post(url(TEAM)))
                .header("x-http-method-override", verb)
                .header("x-http-method", verb)
                .header("x-method-override", verb)
                .send()
                .unwrap(),
        );
        refused(
            "method",
            &format!("POST with X-HTTP-Method-Override: {verb}"),
            got,
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        );
    }
    let got = answer(r.reader()(r.http.delete(url(TEAM))).send().unwrap());
    refused(
        "method",
        "DELETE by a reader",
        got,
        StatusCode::FORBIDDEN,
        "DENIED",
    );
    allowed(
        "method",
        "its manifest is still there",
        answer(r.manifest(TEAM, &r.reader())),
        StatusCode::OK,
    );
    for (name, auth) in [
        ("OPTIONS of the private manifest, anonymous", None),
        ("OPTIONS of the private manifest, reader", Some(())),
    ] {
        let mut req = r.http.request(Method::OPTIONS, url(PRIVATE));
        if auth.is_some() {
            req = r.reader()(req);
        }
        refused(
            "method",
            name,
            answer(req.send().unwrap()),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        );
    }
    let got = answer(
        r.http
            .request(Method::from_bytes(b"PROPFIND").unwrap(), url(PRIVATE))
            .send()
            .unwrap(),
    );
    refused(
        "method",
        "PROPFIND of the private manifest",
        got,
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
    );
}

#[test]
fn header_tricks() {
    let r = Registry::start();
    let tricks: [(&str, &[(&str, &str)]); 7] = [
        ("Host: localhost", &[("host", "localhost")]),
        (
            "X-Forwarded-For from loopback",
            &[("x-forwarded-for", "127.0.0.1"), ("x-real-ip", "127.0.0.1")],
        ),
        (
            "X-Forwarded-Host and -Proto",
            &[
                ("x-forwarded-host", "internal"),
                ("x-forwarded-proto", "https"),
            ],
        ),
        (
            "X-Forwarded-User: admin",
            &[
                ("x-forwarded-user", "admin"),
                ("x-remote-user", "admin"),
                ("remote-user", "admin"),
            ],
        ),
        (
            "User-Agent: docker",
            &[("user-agent", "docker/27.0.1 go/go1.22.5 os/linux")],
        ),
        (
            "User-Agent: notary-server",
            &[("user-agent", "notary-server/0.7")],
        ),
        (
            "User-Agent: kube-probe",
            &[("user-agent", "kube-probe/1.30")],
        ),
    ];
    for (name, headers) in tricks {
        let mut anonymous = r
            .http
            .get(r.server.url(&format!("/v2/{PRIVATE}/manifests/v1")));
        let mut reader = r.reader()(
            r.http
                .get(r.server.url(&format!("/v2/{PRIVATE}/manifests/v1"))),
        );
        for (header, value) in headers {
            anonymous = anonymous.header(*header, *value);
            reader = reader.header(*header, *value);
        }
        refused(
            "header",
            &format!("{name}, anonymous"),
            answer(anonymous.send().unwrap()),
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        );
        refused(
            "header",
            &format!("{name}, reader"),
            answer(reader.send().unwrap()),
            StatusCode::FORBIDDEN,
            "DENIED",
        );
    }
    allowed(
        "header",
        "admin pulls the private manifest",
        answer(r.manifest(PRIVATE, &admin)),
        StatusCode::OK,
    );
}

/// The gateway's JWT signing key (given to it at start): forging with the real key is
/// how a test isolates the one claim a case gets wrong.
fn test_signing_key() -> SigningKey {
    SigningKey::from_slice(&Sha256::digest(b"attacks test signing key")).unwrap()
}

fn b64json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// A compact JWS of `header` and `claims`, ES256-signed with `key`.
fn es256(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64json(header), b64json(claims));
    let signature: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// HMAC-SHA256 (RFC 2104), for the HS256 key-confusion case.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn jwt_part(jwt: &str, index: usize) -> Value {
    let part = jwt.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[test]
fn jwt_tricks() {
    let r = Registry::start();
    let key = test_signing_key();
    let pull_private = format!("repository:{PRIVATE}:pull");
    let private_manifest = |jwt: &str| {
        answer(
            r.http
                .get(r.server.url(&format!("/v2/{PRIVATE}/manifests/v1")))
                .header("accept", OCI_MANIFEST)
                .bearer_auth(jwt)
                .send()
                .unwrap(),
        )
    };
    // The admin's real token: re-signed as it is, it works, so each case below is
    // refused for the one thing it changes.
    let real = r.bearer("admin", ADMIN_PASSWORD, &[&pull_private]);
    let (header, claims) = (jwt_part(&real, 0), jwt_part(&real, 1));
    allowed(
        "jwt",
        "the admin's token",
        private_manifest(&real),
        StatusCode::OK,
    );
    allowed(
        "jwt",
        "the admin's claims re-signed with the gateway's key",
        private_manifest(&es256(&key, &header, &claims)),
        StatusCode::OK,
    );
    let with = |mut value: Value, field: &str, new: Value| {
        value[field] = new;
        value
    };
    let now = claims["iat"].as_i64().unwrap();
    let other_key = SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let hs256 = |secret: &[u8]| {
        let header = with(header.clone(), "alg", json!("HS256"));
        let input = format!("{}.{}", b64json(&header), b64json(&claims));
        let mac = hmac_sha256(secret, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac))
    };
    let spki_der = key.verifying_key().to_public_key_der().unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none, no signature",
            format!(
                "{}.{}.",
                b64json(&with(header.clone(), "alg", json!("none"))),
                b64json(&claims)
            ),
        ),
        ("alg none with the real signature", {
            let signed = es256(&key, &header, &claims);
            let signature = signed.rsplit('.').next().unwrap().to_owned();
            format!(
                "{}.{}.{signature}",
                b64json(&with(header.clone(), "alg", json!("none"))),
                b64json(&claims)
            )
        }),
        (
            "HS256 keyed with the public key (PEM)",
            hs256(public_pem.as_bytes()),
        ),
        (
            "HS256 keyed with the public key (DER)",
            hs256(spki_der.as_bytes()),
        ),
        (
            "unknown kid, real key",
            es256(
                &key,
                &with(
                    header.clone(),
                    "kid",
                    json!("AAAA:BBBB:CCCC:DDDD:EEEE:FFFF:GGGG:HHHH:IIII:JJJJ:KKKK:LLLL"),
                ),
                &claims,
            ),
        ),
        ("our kid, another key", es256(&other_key, &header, &claims)),
        (
            "expired an hour ago",
            es256(
                &key,
                &header,
                &with(claims.clone(), "exp", json!(now - 3600)),
            ),
        ),
        (
            "not valid for another hour",
            es256(
                &key,
                &header,
                &with(claims.clone(), "nbf", json!(now + 3600)),
            ),
        ),
        (
            "for another service (aud)",
            es256(
                &key,
                &header,
                &with(claims.clone(), "aud", json!("registry.example.com")),
            ),
        ),
        (
            "from another issuer (iss)",
            es256(
                &key,
                &header,
                &with(claims.clone(), "iss", json!("auth.example.com")),
            ),
        ),
        (
            "refresh-token type as a bearer",
            es256(
                &key,
                &with(header.clone(), "typ", json!("portcullis-refresh+jwt")),
                &claims,
            ),
        ),
        ("claims altered after signing", {
            let signed = es256(&key, &header, &claims);
            let signature = signed.rsplit('.').next().unwrap().to_owned();
            let wider = with(claims.clone(), "sub", json!("admin2"));
            format!("{}.{}.{signature}", b64json(&header), b64json(&wider))
        }),
        (
            "two parts",
            format!("{}.{}", b64json(&header), b64json(&claims)),
        ),
    ];
    for (name, jwt) in &cases {
        refused(
            "jwt",
            name,
            private_manifest(jwt),
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        );
    }

    // A token for another service is not even issued.
    let resp = r
        .http
        .get(r.server.url("/oauth2/token"))
        .query(&[
            ("service", "registry.example.com"),
            ("scope", pull_private.as_str()),
        ])
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    refused(
        "jwt",
        "token request for another service",
        answer(resp),
        StatusCode::BAD_REQUEST,
        "UNSUPPORTED",
    );

    // Tokens issued before a password regeneration or a disable stop working at once.
    let team_manifest = |jwt: &str| {
        answer(
            r.http
                .get(r.server.url(&format!("/v2/{TEAM}/manifests/v1")))
                .header("accept", OCI_MANIFEST)
                .bearer_auth(jwt)
                .send()
                .unwrap(),
        )
    };
    let pull_team = format!("repository:{TEAM}:pull");
    let before = r.bearer(READER, &r.reader_password, &[&pull_team]);
    allowed(
        "jwt",
        "reader's token before regeneration",
        team_manifest(&before),
        StatusCode::OK,
    );
    let resp = admin(
        r.http.post(
            r.server
                .url(&format!("/admin/v1/tokens/{READER}/credentials/generate")),
        ),
    )
    .json(&json!({"passwords": ["password1"]}))
    .send()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let generated: Value = resp.json().unwrap();
    let new_password = generated["passwords"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    refused(
        "jwt",
        "token issued before its password was regenerated",
        team_manifest(&before),
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
    let after = r.bearer(READER, &new_password, &[&pull_team]);
    allowed(
        "jwt",
        "reader's token after regeneration",
        team_manifest(&after),
        StatusCode::OK,
    );
    let resp = admin(
        r.http
            .patch(r.server.url(&format!("/admin/v1/tokens/{READER}"))),
    )
    .json(&json!({"status": "disabled"}))
    .send()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    refused(
        "jwt",
        "token issued before the token was disabled",
        team_manifest(&after),
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
}

#[test]
fn scope_tricks() {
    let r = Registry::start();
    // A bearer scope wider than the token's rights grants only the rights.
    let wide = r.bearer(
        READER,
        &r.reader_password,
        &[
            &format!("repository:{TEAM}:pull,push,delete,*"),
            &format!("repository:{PRIVATE}:pull"),
            "repository:*:pull",
            "registry:catalog:*",
        ],
    );
    let access = jwt_part(&wide, 1)["access"].clone();
    report(&format!("attack scope/wide request granted: {access}"));
    for entry in access.as_array().unwrap() {
        let actions = entry["actions"].as_array().unwrap();
        if entry["name"] == TEAM {
            assert_eq!(actions, &[json!("pull")], "{access}");
        } else if entry["type"] != "registry" {
            assert!(
                actions.is_empty(),
                "granted {entry} beyond the rights: {access}"
            );
        }
    }
    let upload = |repo: &str, jwt: &str| {
        answer(
            r.http
                .post(r.server.url(&format!("/v2/{repo}/blobs/uploads/")))
                .bearer_auth(jwt)
                .send()
                .unwrap(),
        )
    };
    // Policy refuses before the token's scope is even consulted.
    refused(
        "scope",
        "push with a wide-scope reader token",
        upload(TEAM, &wide),
        StatusCode::FORBIDDEN,
        "DENIED",
    );
    let manifest = |repo: &str, jwt: &str| {
        answer(
            r.http
                .get(r.server.url(&format!("/v2/{repo}/manifests/v1")))
                .header("accept", OCI_MANIFEST)
                .bearer_auth(jwt)
                .send()
                .unwrap(),
        )
    };
    refused(
        "scope",
        "pull private with a wide-scope reader token",
        manifest(PRIVATE, &wide),
        StatusCode::FORBIDDEN,
        "DENIED",
    );
    allowed(
        "scope",
        "pull its own with the same token",
        manifest(TEAM, &wide),
        StatusCode::OK,
    );
    let writer = r.bearer(
        WRITER,
        &r.writer_password,
        &[&format!("repository:{TEAM}:pull,push")],
    );
    allowed(
        "scope",
        "writer pushes",
        upload(TEAM, &writer),
        StatusCode::ACCEPTED,
    );

    // A mount from a repository the caller cannot read never mounts.
    let mount = |from: &str, digest: &str| {
        r.writer()(r.http.post(r.server.url(&format!(
            "/v2/{TEAM}/blobs/uploads/?mount={digest}&from={from}"
        ))))
        .send()
        .unwrap()
    };
    let head = |digest: &str| {
        r.writer()(
            r.http
                .head(r.server.url(&format!("/v2/{TEAM}/blobs/{digest}"))),
        )
        .send()
        .unwrap()
        .status()
    };
    let secret_layer = content::digest(&r.private.layer);
    refused(
        "scope",
        "mount from an unreadable repository",
        answer(mount(PRIVATE, &secret_layer)),
        StatusCode::FORBIDDEN,
        "DENIED",
    );
    refused(
        "scope",
        "the private layer after the mount attempt",
        (head(&secret_layer), String::new()),
        StatusCode::NOT_FOUND,
        "",
    );
    let base_layer = content::digest(&TestImage::new("base").layer);
    allowed(
        "scope",
        "mount from a readable repository",
        answer(mount("team/base", &base_layer)),
        StatusCode::CREATED,
    );

    // The catalog shows a repository-scoped token only its repositories.
    let catalog = |auth: &dyn Fn(RequestBuilder) -> RequestBuilder| -> Value {
        let resp = auth(r.http.get(r.server.url("/v2/_catalog")))
            .send()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().unwrap()
    };
    let seen = catalog(&r.reader());
    report(&format!(
        "attack scope/catalog by a repository-scoped token: {seen}"
    ));
    assert_eq!(seen["repositories"], json!([TEAM]), "{seen}");
    let everything = catalog(&admin);
    report(&format!("control scope/catalog by the admin: {everything}"));
    assert!(
        everything["repositories"]
            .as_array()
            .unwrap()
            .contains(&json!(PRIVATE)),
        "{everything}"
    );
    let seen = catalog(&|rb: RequestBuilder| rb.bearer_auth(&wide));
    report(&format!(
        "attack scope/catalog with the wide bearer: {seen}"
    ));
    assert_eq!(seen["repositories"], json!([TEAM]), "{seen}");
    assert_eq!(r.team.digest(), content::digest(&r.team.manifest));
}

#[test]
fn trust_tricks() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TrustGateway::start(dir.path(), &[]);
    let f = Fixture::load();
    let repository = f.gun.split_once('/').unwrap().1.to_owned();
    let signer_password = gateway.token(
        "signer",
        &repository,
        &[
            "content/read",
            "content/write",
            "metadata/read",
            "trust/write",
        ],
    );
    let pusher_password = gateway.token(
        "pusher",
        &repository,
        &["content/read", "content/write", "metadata/read"],
    );
    let signer = gateway.bearer(("signer", &signer_password), &f.gun, "push,pull");
    let pusher = gateway.bearer(("pusher", &pusher_password), &f.gun, "push,pull");
    let key: Value = gateway
        .get(&f.gun, "tuf/timestamp.key", Some(&signer))
        .json()
        .unwrap();
    let good = f.bind(&key);
    let result = |resp: Response| {
        let (status, code, name) = notary_error(resp);
        (
            status,
            if name.is_empty() {
                code
            } else {
                format!("{code} {name}")
            },
        )
    };
    let ok = |resp: Response| answer(resp);

    // The pusher's bearer token is granted only `pull` on the GUN (publishing needs
    // trust/write): 401 insufficient scope. With Basic credentials policy says no, and
    // the Notary API answers that with 401 too, as notary-server does.
    refused(
        "trust",
        "publish by a pusher without trust/write (bearer)",
        result(gateway.post_update(&f.gun, &pusher, &good.parts())),
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
    let (content_type, body) = multipart(&good.parts());
    let resp = gateway
        .http
        .post(gateway.trust_url(&f.gun, "tuf/"))
        .basic_auth("pusher", Some(&pusher_password))
        .header("content-type", content_type)
        .body(body)
        .send()
        .unwrap();
    refused(
        "trust",
        "publish by a pusher without trust/write (Basic)",
        result(resp),
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
    allowed(
        "trust",
        "publish by the signer",
        ok(gateway.post_update(&f.gun, &signer, &good.parts())),
        StatusCode::OK,
    );
    refused(
        "trust",
        "replayed publish",
        result(gateway.post_update(&f.gun, &signer, &good.parts())),
        StatusCode::BAD_REQUEST,
        "VERSION",
    );

    // Newer targets land; the old ones sent again (with a newer snapshot) are a rollback.
    let mut newer = Fixture::signed(&good.targets);
    bump_version(&mut newer, 1);
    newer["targets"]["added"] =
        json!({"hashes": {"sha256": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="}, "length": 0});
    let newer = f.targets_key.file(&newer);
    allowed(
        "trust",
        "newer targets",
        ok(gateway.post_update(
            &f.gun,
            &signer,
            &[
                ("targets", &newer),
                ("snapshot", &f.snapshot_for(&good.root, &newer, 1)),
            ],
        )),
        StatusCode::OK,
    );
    refused(
        "trust",
        "rolled-back targets",
        result(gateway.post_update(
            &f.gun,
            &signer,
            &[
                ("targets", &good.targets),
                ("snapshot", &f.snapshot_for(&good.root, &good.targets, 2)),
            ],
        )),
        StatusCode::BAD_REQUEST,
        "VERSION",
    );
    refused(
        "trust",
        "rolled-back snapshot",
        result(gateway.post_update(
            &f.gun,
            &signer,
            &[("snapshot", &f.snapshot_for(&good.root, &newer, 0))],
        )),
        StatusCode::BAD_REQUEST,
        "VERSION",
    );

    // Root v2 signed only by a key the current root does not trust for root.
    let mut root2 = Fixture::signed(&good.root);
    bump_version(&mut root2, 1);
    let unsigned_by_old = f.targets_key.file(&root2);
    refused(
        "trust",
        "root rotation not signed by the old root",
        result(gateway.post_update(
            &f.gun,
            &signer,
            &[
                ("root", &unsigned_by_old),
                ("snapshot", &f.snapshot_for(&unsigned_by_old, &newer, 2)),
            ],
        )),
        StatusCode::BAD_REQUEST,
        "INVALID_UPDATE ErrBadRoot",
    );
    let signed_by_old = f.root_key.file(&root2);
    allowed(
        "trust",
        "root rotation signed by the old root",
        ok(gateway.post_update(
            &f.gun,
            &signer,
            &[
                ("root", &signed_by_old),
                ("snapshot", &f.snapshot_for(&signed_by_old, &newer, 2)),
            ],
        )),
        StatusCode::OK,
    );
}

/// The admin's bearer tokens are bound to the admin password: a restart with the same
/// password keeps them, a restart with a new one revokes them.
#[test]
fn jwt_admin_token_after_an_admin_password_change() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = Client::new();
    let server = Server::start(&data, Some(ADMIN_PASSWORD));
    TestImage::new("admin").push(&http, &server.base, PRIVATE, "v1", &admin);
    let jwt = {
        let resp = http
            .get(server.url("/oauth2/token"))
            .query(&[("scope", format!("repository:{PRIVATE}:pull"))])
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json::<Value>().unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let pull = |server: &Server| {
        answer(
            http.get(server.url(&format!("/v2/{PRIVATE}/manifests/v1")))
                .header("accept", OCI_MANIFEST)
                .bearer_auth(&jwt)
                .send()
                .unwrap(),
        )
    };
    allowed("jwt", "admin token", pull(&server), StatusCode::OK);
    server.stop();
    let server = Server::start(&data, Some(ADMIN_PASSWORD));
    allowed(
        "jwt",
        "admin token after a restart with the same password",
        pull(&server),
        StatusCode::OK,
    );
    server.stop();
    let server = Server::start(&data, Some("a-new-admin-password"));
    refused(
        "jwt",
        "admin token issued before the admin password changed",
        pull(&server),
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
}
