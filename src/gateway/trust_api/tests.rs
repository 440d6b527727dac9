use axum::http::Request;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use super::*;
use crate::gateway::jwt::{AccessEntry, TokenUse};
use crate::gateway::testing;
use crate::identity::now_unix;
use crate::trust::PublicKey;
use crate::trust::service::ContentTrustStatus;
use crate::trust::validate::testkit::{RootKeys, TestKey, root_json, sign, targets_json};

const GUN: &str = "127.0.0.1:5443/samples/app";
const BOUNDARY: &str = "b0undary";

struct Fixture {
    _dir: tempfile::TempDir,
    gw: Arc<Gateway>,
    root: TestKey,
    targets: TestKey,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers[name].to_str().unwrap()
    }
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let gw = testing::gateway(dir.path());
    gw.trust
        .set_status(ContentTrustStatus::Enabled)
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        gw,
        root: TestKey::root(GUN),
        targets: TestKey::ecdsa(),
    }
}

fn role(name: &str) -> Role {
    Role::parse(name).unwrap()
}

fn multipart(parts: &[(&str, &Bytes)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (filename, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; \
                     filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

impl Fixture {
    /// A bearer token for a new token `name` with scope-map `rules` and claim
    /// `actions` on the GUN.
    async fn bearer(&self, name: &str, rules: &[Action], actions: &[&str]) -> String {
        let principal = testing::token(&self.gw.store, name, &[("samples/app", rules)]).await;
        self.bearer_for(&principal, actions)
    }

    fn bearer_for(&self, principal: &Principal, actions: &[&str]) -> String {
        let subject = self.gw.authn.subject(principal).unwrap();
        let access = vec![AccessEntry {
            kind: "repository".into(),
            name: GUN.into(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }];
        let signed = self
            .gw
            .issuer
            .sign(TokenUse::Access, subject, access, now_unix())
            .unwrap();
        format!("Bearer {}", signed.token)
    }

    async fn signer(&self) -> String {
        use Action::*;
        self.bearer(
            "signer",
            &[ContentRead, ContentWrite, TrustWrite],
            &["push", "pull"],
        )
        .await
    }

    async fn call(
        &self,
        method: &str,
        rest: &str,
        auth: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/v2/{GUN}/_trust/{rest}"))
            .extension(testing::meta());
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let response = router()
            .with_state(Arc::clone(&self.gw))
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, rest: &str, auth: &str) -> Reply {
        self.call("GET", rest, Some(auth), None, Vec::new()).await
    }

    async fn post(&self, auth: &str, parts: &[(&str, &Bytes)]) -> Reply {
        let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
        self.call(
            "POST",
            "tuf/",
            Some(auth),
            Some(&content_type),
            multipart(parts),
        )
        .await
    }

    async fn key(&self, name: &str, auth: &str) -> PublicKey {
        let reply = self.get(&format!("tuf/{name}.key"), auth).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        PublicKey::from_json(&reply.json()).unwrap()
    }

    fn root_file(&self, timestamp: &PublicKey, snapshot: &PublicKey) -> Bytes {
        let keys = RootKeys {
            root: vec![&self.root.public],
            targets: vec![&self.targets.public],
            targets_threshold: 1,
            snapshot,
            timestamp,
        };
        let expires = OffsetDateTime::now_utc() + time::Duration::days(3650);
        sign(&root_json(1, &keys, expires), &[&self.root])
    }

    fn targets_file(&self, version: u64) -> Bytes {
        let expires = OffsetDateTime::now_utc() + time::Duration::days(1000);
        let body = targets_json(version, &[("v1", b"manifest")], &[], expires);
        sign(&body, &[&self.targets])
    }

    /// docker's first signed push; the root's bytes.
    async fn publish(&self, auth: &str) -> Bytes {
        let timestamp = self.key("timestamp", auth).await;
        let snapshot = self.key("snapshot", auth).await;
        let root = self.root_file(&timestamp, &snapshot);
        let reply = self
            .post(
                auth,
                &[("root", &root), ("targets.json", &self.targets_file(1))],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert!(reply.body.is_empty());
        root
    }
}

#[tokio::test]
async fn publish_then_read_with_caching_headers() {
    let f = fixture().await;
    let signer = f.signer().await;
    let missing = f.get("tuf/root.json", &signer).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.code(), "METADATA_NOT_FOUND");
    let root = f.publish(&signer).await;
    let reader = f.bearer("reader", &[Action::ContentRead], &["pull"]).await;
    let current = f.get("tuf/root.json", &reader).await;
    assert_eq!(current.status, StatusCode::OK);
    assert_eq!(current.body, root);
    assert_eq!(current.header(header::CACHE_CONTROL), CURRENT_CACHE_PRIVATE);
    let modified = current.header(header::LAST_MODIFIED);
    assert!(
        modified.ends_with(" GMT") && modified.len() == 29,
        "{modified}"
    );
    let sha = hex::encode(Sha256::digest(&root));
    for rest in [format!("tuf/root.{sha}.json"), "tuf/1.root.json".to_owned()] {
        let consistent = f.get(&rest, &reader).await;
        assert_eq!(consistent.status, StatusCode::OK, "{rest}");
        assert_eq!(consistent.body, root);
        assert_eq!(
            consistent.header(header::CACHE_CONTROL),
            CONSISTENT_CACHE_PRIVATE
        );
    }
    // Only what anonymous callers may read goes to shared caches.
    f.gw.engine.set_anonymous_pull(true);
    for (rest, cache) in [
        ("tuf/root.json".to_owned(), CURRENT_CACHE),
        (format!("tuf/root.{sha}.json"), CONSISTENT_CACHE),
    ] {
        let public = f.call("GET", &rest, None, None, Vec::new()).await;
        assert_eq!(public.status, StatusCode::OK, "{rest}");
        assert_eq!(public.header(header::CACHE_CONTROL), cache);
    }
    f.gw.engine.set_anonymous_pull(false);
    let timestamp = f.get("tuf/timestamp.json", &reader).await;
    assert_eq!(timestamp.json()["signed"]["_type"], "Timestamp");
    let feed = f.get("changefeed?records=10", &reader).await;
    assert_eq!(feed.json()["count"], 1);
    assert_eq!(feed.json()["records"][0]["GUN"], GUN);
    // A reader may not publish, fetch keys or delete.
    let refused = f.get("tuf/timestamp.key", &reader).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.code(), "UNAUTHORIZED");
}

#[tokio::test]
async fn bad_uploads_get_notary_codes() {
    let f = fixture().await;
    let signer = f.signer().await;
    f.publish(&signer).await;
    let check = |reply: Reply, status: StatusCode, code: &str| {
        assert_eq!(reply.status, status, "{:?}", reply.body);
        assert_eq!(reply.code(), code);
        assert!(reply.body.len() < 1024);
        assert_eq!(
            reply.header(header::CONTENT_TYPE),
            "application/json; charset=utf-8"
        );
        reply
    };
    // The same targets version again.
    let stale = f.post(&signer, &[("targets", &f.targets_file(1))]).await;
    check(stale, StatusCode::BAD_REQUEST, "VERSION");
    // A tampered byte breaks the signature.
    let tampered = Bytes::from(
        String::from_utf8(f.targets_file(2).to_vec())
            .unwrap()
            .replace("\"version\":2", "\"version\":3"),
    );
    let reply = check(
        f.post(&signer, &[("targets", &tampered)]).await,
        StatusCode::BAD_REQUEST,
        "INVALID_UPDATE",
    );
    assert_eq!(reply.json()["errors"][0]["detail"]["Name"], "ErrBadTargets");
    let garbage = Bytes::from_static(b"not json");
    let reply = f.post(&signer, &[("targets", &garbage)]).await;
    check(reply, StatusCode::BAD_REQUEST, "MALFORMED_JSON");
    let reply = f.post(&signer, &[("Targets", &garbage)]).await;
    check(reply, StatusCode::BAD_REQUEST, "INVALID_ROLE");
    let reply = f.post(&signer, &[("", &garbage)]).await;
    check(reply, StatusCode::BAD_REQUEST, "NO_FILENAME");
    let reply = f
        .call(
            "POST",
            "tuf/",
            Some(&signer),
            Some("application/json"),
            b"{}".to_vec(),
        )
        .await;
    check(reply, StatusCode::BAD_REQUEST, "MALFORMED_UPLOAD");
    // A good update still goes through.
    let reply = f.post(&signer, &[("targets", &f.targets_file(2))]).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

#[tokio::test]
async fn refusals_are_401s_for_the_gun_scope() {
    use Action::*;
    let f = fixture().await;
    let anonymous = f.call("GET", "tuf/root.json", None, None, Vec::new()).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        anonymous.header(header::WWW_AUTHENTICATE),
        format!(
            "Bearer realm=\"http://127.0.0.1:5000/oauth2/token\",service=\"portcullis-test\",\
                 scope=\"repository:{GUN}:pull\""
        )
    );
    // Push without trust/write: no signing.
    let pusher = f
        .bearer("pusher", &[ContentRead, ContentWrite], &["push", "pull"])
        .await;
    let reply = f.get("tuf/timestamp.key", &pusher).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(
        reply.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("trust/write"),
        "{:?}",
        reply.body
    );
    assert!(reply.header(header::WWW_AUTHENTICATE).ends_with(&format!(
        "scope=\"repository:{GUN}:push,pull\",error=\"insufficient_scope\""
    )));
    // Policy allows, but the claim names only `pull`.
    let narrow = f
        .bearer(
            "narrow",
            &[ContentRead, ContentWrite, TrustWrite],
            &["pull"],
        )
        .await;
    let reply = f.get("tuf/snapshot.key", &narrow).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // The admin account never signs, but may delete and rotate.
    let admin = format!("Basic {}", STANDARD.encode("admin:admin-secret"));
    assert_eq!(
        f.get("tuf/timestamp.key", &admin).await.status,
        StatusCode::UNAUTHORIZED
    );
    let rotate = f
        .call("POST", "tuf/snapshot.key", Some(&admin), None, Vec::new())
        .await;
    assert_eq!(rotate.status, StatusCode::OK);
    let delete = f
        .call("DELETE", "tuf/", Some(&admin), None, Vec::new())
        .await;
    assert_eq!(delete.status, StatusCode::OK);
    // A signer without content/delete may not.
    let signer = f.signer().await;
    let delete = f
        .call("DELETE", "tuf/", Some(&signer), None, Vec::new())
        .await;
    assert_eq!(delete.status, StatusCode::UNAUTHORIZED);
    let owner = f
        .bearer(
            "owner",
            &[ContentRead, ContentWrite, ContentDelete, TrustWrite],
            &["*"],
        )
        .await;
    let delete = f
        .call("DELETE", "tuf/", Some(&owner), None, Vec::new())
        .await;
    assert_eq!(delete.status, StatusCode::OK);
}

#[tokio::test]
async fn disabled_content_trust_is_a_clear_notary_error() {
    let f = fixture().await;
    let signer = f.signer().await;
    f.publish(&signer).await;
    f.gw.trust
        .set_status(ContentTrustStatus::Disabled)
        .await
        .unwrap();
    let read = f.get("tuf/root.json", &signer).await;
    assert_eq!(read.status, StatusCode::NOT_FOUND);
    assert_eq!(read.code(), "METADATA_NOT_FOUND");
    assert_eq!(
        read.json()["errors"][0]["message"],
        "content trust is disabled on this registry"
    );
    let key = f.get("tuf/timestamp.key", &signer).await;
    assert_eq!(key.status, StatusCode::BAD_REQUEST);
    assert_eq!(key.code(), "INVALID_UPDATE");
    assert_eq!(key.json()["errors"][0]["detail"]["Name"], "ErrValidation");
}

#[test]
fn multipart_keeps_delegation_names_and_strips_json() {
    let root = Bytes::from_static(b"{\"a\":1}");
    let releases = Bytes::from_static(b"{\"b\":\r\n2}");
    let body = multipart(&[("root.json", &root), ("targets/releases", &releases)]);
    let content_type = format!("multipart/form-data; boundary=\"{BOUNDARY}\"");
    let parts = upload_parts(&content_type, &body).unwrap();
    assert_eq!(
        parts,
        vec![
            (role("root"), root.clone()),
            (role("targets/releases"), releases)
        ]
    );
    let twice = multipart(&[("root", &root), ("root.json", &root)]);
    assert!(matches!(
        upload_parts(&content_type, &twice),
        Err(NotaryError::MalformedUpload(_))
    ));
    let truncated = &body[..body.len() - 20];
    assert!(matches!(
        upload_parts(&content_type, truncated),
        Err(NotaryError::MalformedUpload(_))
    ));
    assert!(matches!(
        upload_parts("multipart/form-data", &body),
        Err(NotaryError::MalformedUpload(_))
    ));
}
