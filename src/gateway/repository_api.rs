//! Repository attributes over HTTP for tokens and the admin:
//! `GET/PATCH /portcullis/v1/repositories/<name>`, answered in ACR's shape
//! (`changeableAttributes`). Unlike the admin API's attribute routes, any principal may
//! call these: Cedar decides, as `metadata/read` (`read-attributes`) for `GET` and
//! `metadata/write` (`write-attributes`) for `PATCH`. The base policy enforces the
//! stored attributes on every registry request. Besides ACR's four, `signedOnly`
//! (content trust): the repository serves only signed manifests.
//!
//! Deletes as ACR does them: `DELETE /portcullis/v1/repositories/<name>` (or ACR's
//! `DELETE /acr/v1/<name>`) removes the whole repository, `DELETE
//! /portcullis/v1/repositories/<name>/_manifests/<reference>` an image (the manifest and
//! every tag on it). Each is one `content/delete` decision (`delete-repository`,
//! `delete-manifest`); the gateway then deletes server-side, without the caller
//! needing to list tags or read manifests.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use http::{HeaderMap, Method, StatusCode, Uri, header};
use serde::{Deserialize, Serialize};

use super::access::{self, Check};
use super::backend::Deleted;
use super::classify::{Route, classify};
use super::errors::GatewayError;
use super::{Gateway, RequestMeta};
use crate::identity::pattern::is_valid_repository_name;
use crate::identity::store::IdentityStoreError;
use crate::identity::{Action, RepositoryAttributes};
use crate::policy::Operation;

/// `GET` (metadata/read) and `PATCH` (metadata/write) of a repository's attributes;
/// `DELETE` (content/delete) of a repository or an image, also at ACR's
/// `/acr/v1/<name>`.
pub fn router() -> Router<Arc<Gateway>> {
    Router::new()
        .route(
            "/portcullis/v1/repositories/{*name}",
            get(show).patch(update).delete(remove),
        )
        .route("/acr/v1/{*name}", delete(remove))
}

/// The attributes a `metadata/write` holder may change, as ACR names them, and
/// content trust's `signedOnly`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct ChangeableAttributes {
    delete_enabled: bool,
    write_enabled: bool,
    read_enabled: bool,
    list_enabled: bool,
    signed_only: bool,
}

/// A `PATCH` body: the attributes to change; absent ones keep their value.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AttributesPatch {
    delete_enabled: Option<bool>,
    write_enabled: Option<bool>,
    read_enabled: Option<bool>,
    list_enabled: Option<bool>,
    signed_only: Option<bool>,
}

impl AttributesPatch {
    /// `current` with this patch applied.
    fn apply(&self, current: &RepositoryAttributes) -> RepositoryAttributes {
        RepositoryAttributes {
            delete_enabled: self.delete_enabled.unwrap_or(current.delete_enabled),
            write_enabled: self.write_enabled.unwrap_or(current.write_enabled),
            read_enabled: self.read_enabled.unwrap_or(current.read_enabled),
            list_enabled: self.list_enabled.unwrap_or(current.list_enabled),
            signed_only: self.signed_only.unwrap_or(current.signed_only),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RepositoryJson<'a> {
    registry: &'a str,
    image_name: &'a str,
    changeable_attributes: ChangeableAttributes,
}

fn repository_json(gw: &Gateway, name: &str, a: &RepositoryAttributes) -> Response {
    let body = RepositoryJson {
        registry: &gw.service,
        image_name: name,
        changeable_attributes: ChangeableAttributes {
            delete_enabled: a.delete_enabled,
            write_enabled: a.write_enabled,
            read_enabled: a.read_enabled,
            list_enabled: a.list_enabled,
            signed_only: a.signed_only,
        },
    };
    axum::Json(body).into_response()
}

async fn show(
    State(gw): State<Arc<Gateway>>,
    Extension(meta): Extension<RequestMeta>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let request = ("GET", uri.path());
    let result = authorize(&gw, &meta, request, &headers, &name, Action::MetadataRead)
        .map(|()| gw.store.snapshot().repository_attributes(&name));
    match result {
        Ok(attributes) => repository_json(&gw, &name, &attributes),
        Err(e) => e.into_axum(&meta.challenge),
    }
}

async fn update(
    State(gw): State<Arc<Gateway>>,
    Extension(meta): Extension<RequestMeta>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = (method.as_str(), uri.path());
    match patch(&gw, &meta, request, &headers, &name, &body).await {
        Ok(attributes) => repository_json(&gw, &name, &attributes),
        Err(e) => e.into_axum(&meta.challenge),
    }
}

async fn patch(
    gw: &Arc<Gateway>,
    meta: &RequestMeta,
    request: (&str, &str),
    headers: &HeaderMap,
    name: &str,
    body: &[u8],
) -> Result<RepositoryAttributes, GatewayError> {
    authorize(gw, meta, request, headers, name, Action::MetadataWrite)?;
    if portcullis_oci::json::nested_deeper_than(body, portcullis_oci::json::MAX_DEPTH) {
        return Err(GatewayError::BadRequest(format!(
            "invalid repository attributes for `{name}`: JSON nested deeper than {} levels",
            portcullis_oci::json::MAX_DEPTH
        )));
    }
    let changes: AttributesPatch = serde_json::from_slice(body).map_err(|e| {
        GatewayError::BadRequest(format!("invalid repository attributes for `{name}`: {e}"))
    })?;
    // Read, change and write in one transaction: concurrent PATCHes of different
    // fields must not undo each other.
    gw.store
        .update_repository_attributes(name, |current| changes.apply(current))
        .await
        .map_err(|e| match e {
            IdentityStoreError::Postgres { .. } => GatewayError::Unavailable(e.to_string()),
            e => GatewayError::Internal(e.to_string()),
        })
}

/// `DELETE` of a whole repository (`<name>`) or an image (`<name>/_manifests/<ref>`):
/// one decision, then the backend deletes everything server-side, so `content/delete`
/// alone suffices (as in ACR). 202 with what went, in ACR's shape.
async fn remove(
    State(gw): State<Arc<Gateway>>,
    Extension(meta): Extension<RequestMeta>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    match delete_target(&gw, &meta, &headers, uri.path()).await {
        Ok(deleted) => {
            let body = serde_json::json!({
                "manifestsDeleted": deleted.manifests,
                "tagsDeleted": deleted.tags,
            });
            (StatusCode::ACCEPTED, axum::Json(body)).into_response()
        }
        Err(e) => e.into_axum(&meta.challenge),
    }
}

async fn delete_target(
    gw: &Gateway,
    meta: &RequestMeta,
    headers: &HeaderMap,
    path: &str,
) -> Result<Deleted, GatewayError> {
    // The proxy classified this path already; the same parser names the target.
    let req = match classify(&Method::DELETE, path, None)? {
        Route::RepositoryDelete(req) => req,
        _ => {
            return Err(GatewayError::NotFound {
                method: Method::DELETE.to_string(),
                path: path.to_owned(),
            });
        }
    };
    let who = gw
        .authn
        .authenticate(headers.get(header::AUTHORIZATION), meta.source_ip);
    let decided = who.as_ref().map_err(Clone::clone).and_then(|who| {
        access::authorize_checks(gw, who, &[access::delete_check(&req)], meta.source_ip)
    });
    let principal = who.as_ref().ok().map(|who| &who.principal);
    gw.audit_decision(meta, principal, ("DELETE", path), decided.as_ref().err());
    decided?;
    let deleted = match &req.reference {
        None => gw.backend.delete_repository(&req.repository).await,
        Some(reference) => gw.backend.delete_image(&req.repository, reference).await,
    };
    gw.signatures.manifest_written(&req.repository);
    deleted
}

/// Authenticates the caller and asks Cedar whether it holds `action` on `name`; a
/// bearer token's `access` claim must cover it too.
fn authorize(
    gw: &Gateway,
    meta: &RequestMeta,
    request: (&str, &str),
    headers: &HeaderMap,
    name: &str,
    action: Action,
) -> Result<(), GatewayError> {
    if !is_valid_repository_name(name) {
        return Err(GatewayError::NameInvalid(name.to_owned()));
    }
    let operation = match action {
        Action::MetadataWrite => Operation::WriteAttributes,
        _ => Operation::ReadAttributes,
    };
    let checks = [Check {
        action,
        repository: name.to_owned(),
        operation,
        reference: None,
    }];
    let who = gw
        .authn
        .authenticate(headers.get(header::AUTHORIZATION), meta.source_ip)
        .map_err(|e| e.with_scope(|| access::challenge_scopes(&checks)));
    let decided = who
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|who| access::authorize_checks(gw, who, &checks, meta.source_ip));
    let principal = who.as_ref().ok().map(|who| &who.principal);
    gw.audit_decision(meta, principal, request, decided.as_ref().err());
    decided
}

#[cfg(test)]
mod tests {

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use tower::ServiceExt;

    use crate::identity::{Principal, now_unix};

    use super::*;
    use crate::gateway::errors::Challenge;
    use crate::gateway::{GatewayOptions, jwt};
    use crate::identity::scope::parse_rule;
    use crate::identity::store::{NewToken, TokenScope};
    use crate::identity::{PasswordSlot, TokenStatus};

    const REPO: &str = "samples/hello";

    struct Fixture {
        _dir: tempfile::TempDir,
        gw: Arc<Gateway>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let opened = Gateway::open(&GatewayOptions {
            policy_dirs: Vec::new(),
            admin_password: Some("admin-pw".into()),
            // Never contacted: attributes live in the identity store.
            upstream: Some("http://127.0.0.1:9".into()),
            service: "registry.test".into(),
            ..crate::gateway::testing::options(dir.path())
        })
        .unwrap();
        Fixture {
            _dir: dir,
            gw: opened.gateway,
        }
    }

    /// A token holding `actions` on [`REPO`]; returns its Basic credentials.
    async fn token(gw: &Gateway, name: &str, actions: &[&str]) -> String {
        let created = gw
            .store
            .create_token(&NewToken {
                name: name.into(),
                scope: TokenScope::Repositories(vec![parse_rule(REPO, actions).unwrap()]),
                status: TokenStatus::Enabled,
                passwords: vec![PasswordSlot::Password1],
                expires_at: None,
            })
            .await
            .unwrap();
        basic(name, &created.passwords[0].value)
    }

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
    }

    async fn call(
        gw: &Arc<Gateway>,
        method: &str,
        repo: &str,
        auth: Option<&str>,
        body: &str,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/portcullis/v1/repositories/{repo}"));
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let mut req = req.body(Body::from(body.to_owned())).unwrap();
        req.extensions_mut().insert(RequestMeta {
            source_ip: None,
            request_id: "test".into(),
            challenge: Challenge {
                realm: "http://registry.test/oauth2/token".into(),
                service: "registry.test".into(),
            },
        });
        let resp = router()
            .with_state(Arc::clone(gw))
            .oneshot(req)
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (parts.status, parts.headers, json)
    }

    #[tokio::test]
    async fn metadata_read_shows_attributes_but_cannot_change_them() {
        let f = fixture();
        let reader = token(&f.gw, "reader", &["metadata/read"]).await;
        let (status, _, body) = call(&f.gw, "GET", REPO, Some(&reader), "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            serde_json::json!({
                "registry": "registry.test",
                "imageName": REPO,
                "changeableAttributes": {
                    "deleteEnabled": true, "writeEnabled": true,
                    "readEnabled": true, "listEnabled": true, "signedOnly": false
                }
            })
        );
        let (status, _, body) = call(
            &f.gw,
            "PATCH",
            REPO,
            Some(&reader),
            r#"{"writeEnabled":false}"#,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["errors"][0]["code"], "DENIED");
        assert!(
            body["errors"][0]["detail"]["reason"]
                .as_str()
                .unwrap()
                .contains("metadata/write"),
            "{body}"
        );
        assert!(f.gw.store.snapshot().repositories.is_empty());
        // Another repository is out of the token's scope.
        let (status, _, _) = call(&f.gw, "GET", "samples/other", Some(&reader), "").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn metadata_write_changes_only_the_given_attributes() {
        let f = fixture();
        let mut stored = RepositoryAttributes {
            signed_only: true,
            ..RepositoryAttributes::default()
        };
        f.gw.store
            .set_repository_attributes(REPO, &stored)
            .await
            .unwrap();
        let writer = token(&f.gw, "writer", &["metadata/write"]).await;
        let (status, _, body) = call(
            &f.gw,
            "PATCH",
            REPO,
            Some(&writer),
            r#"{"writeEnabled":false,"deleteEnabled":false}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["changeableAttributes"]["writeEnabled"], false);
        assert_eq!(body["changeableAttributes"]["readEnabled"], true);
        stored.write_enabled = false;
        stored.delete_enabled = false;
        assert_eq!(
            f.gw.store.snapshot().repository_attributes(REPO),
            stored,
            "signed_only is kept"
        );
        assert_eq!(body["changeableAttributes"]["signedOnly"], true);
        let (status, _, body) = call(
            &f.gw,
            "PATCH",
            REPO,
            Some(&writer),
            r#"{"signedOnly":false}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["changeableAttributes"]["signedOnly"], false);
        assert!(
            !f.gw
                .store
                .snapshot()
                .repository_attributes(REPO)
                .signed_only
        );
        // Writing does not imply reading.
        let (status, _, _) = call(&f.gw, "GET", REPO, Some(&writer), "").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn admin_may_do_both_and_bad_input_is_named() {
        let f = fixture();
        let admin = basic("admin", "admin-pw");
        let (status, _, body) = call(
            &f.gw,
            "PATCH",
            REPO,
            Some(&admin),
            r#"{"listEnabled":false}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, _, body) = call(&f.gw, "GET", REPO, Some(&admin), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["changeableAttributes"]["listEnabled"], false);

        let (status, _, body) =
            call(&f.gw, "PATCH", REPO, Some(&admin), r#"{"signed":true}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("samples/hello"),
            "{body}"
        );
        let (status, _, body) = call(&f.gw, "GET", "Samples/Bad", Some(&admin), "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errors"][0]["code"], "NAME_INVALID");
    }

    /// A bearer token for the admin whose `access` claim is `actions` on [`REPO`].
    fn bearer(gw: &Gateway, actions: &[&str]) -> String {
        let subject = gw.authn.subject(&Principal::Admin).unwrap();
        let access = vec![jwt::AccessEntry {
            kind: "repository".into(),
            name: REPO.into(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }];
        let signed = gw
            .issuer
            .sign(jwt::TokenUse::Access, subject, access, now_unix())
            .unwrap();
        format!("Bearer {}", signed.token)
    }

    #[tokio::test]
    async fn a_bearer_claim_bounds_what_policy_allows() {
        let f = fixture();
        let (status, _, body) = call(&f.gw, "GET", REPO, Some(&bearer(&f.gw, &["pull"])), "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // Policy allows the admin everything, but the claim only covers pull.
        let (status, headers, _) = call(
            &f.gw,
            "PATCH",
            REPO,
            Some(&bearer(&f.gw, &["pull"])),
            r#"{"readEnabled":false}"#,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let challenge = headers[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
        assert_eq!(
            f.gw.store.snapshot().repository_attributes(REPO),
            RepositoryAttributes::default()
        );
        let (status, _, _) = call(
            &f.gw,
            "PATCH",
            REPO,
            Some(&bearer(&f.gw, &["push", "pull"])),
            r#"{"readEnabled":false}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn missing_or_bad_credentials_get_a_challenge() {
        let f = fixture();
        let (status, headers, body) = call(&f.gw, "GET", REPO, None, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
        let challenge = headers[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.starts_with("Bearer realm=\"http://registry.test/oauth2/token\""));
        token(&f.gw, "reader", &["metadata/read"]).await;
        let (status, headers, _) =
            call(&f.gw, "GET", REPO, Some(&basic("reader", "wrong")), "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key(header::WWW_AUTHENTICATE));
    }
}
