//! The admin HTTP API (`/admin/v1/...`): tokens, credentials and scope maps over the
//! identity store, repository attributes, verification identities of OCI signatures,
//! policies (explained, exported, pushed), token-signing keys and the content-trust
//! switch, admin-authenticated, with an OpenAPI document.
//!
//! Every route, including the OpenAPI document and unknown `/admin/v1/` paths, requires
//! the admin account's Basic credentials; failures are OCI-style JSON errors. Every
//! request that changes something, and every failed authentication, leaves an audit
//! record.

mod config_routes;
mod error;
mod handlers;
mod policy_routes;
mod signing_key_routes;
mod wire;

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, delete, get, patch, post, put};
use http::{Method, header};

use crate::audit::{Actor, Audit, Detail, Record};
use crate::gateway::RequestMeta;
use crate::gateway::signing_keys::SigningKeys;
use crate::gateway::throttle::Throttle;
use crate::identity::basic::decode_basic;
use crate::identity::{AdminAccount, IdentityStore, Principal};
use crate::policy::PolicyEngine;
use crate::policy::pushed::PushedPolicies;
use crate::trust::service::TrustService;

pub use error::{AdminError, REALM};

/// The hand-written OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<IdentityStore>,
    pub admin: Arc<AdminAccount>,
    pub engine: Arc<PolicyEngine>,
    pub trust: Arc<TrustService>,
    pub signing_keys: Arc<SigningKeys>,
    pub pushed_policies: Arc<PushedPolicies>,
    pub audit: Audit,
    /// The gateway the API belongs to, for reports over the repositories it serves
    /// (`None` in tests of the API alone).
    pub gateway: Option<Arc<crate::gateway::Gateway>>,
    /// Failed-login throttling, shared with the registry's Basic credentials.
    pub throttle: Arc<Throttle>,
}

/// Every identity route: method, axum path, handler. The router is built from this
/// table, so a test can check each entry against the OpenAPI document.
fn route_table() -> Vec<(Method, &'static str, MethodRouter<AdminState>)> {
    use handlers::*;
    const TOKEN: &str = "/admin/v1/tokens/{name}";
    const SCOPE_MAP: &str = "/admin/v1/scope-maps/{name}";
    const ATTRIBUTES: &str = "/admin/v1/repositories/{*path}";
    const CONTENT_TRUST: &str = "/admin/v1/config/content-trust";
    const SIGNATURE_TRUST: &str = "/admin/v1/signature-trust/{name}";
    vec![
        (Method::GET, "/admin/v1/openapi.json", get(openapi)),
        (Method::GET, "/admin/v1/tokens", get(list_tokens)),
        (Method::POST, "/admin/v1/tokens", post(create_token)),
        (Method::GET, TOKEN, get(get_token)),
        (Method::PATCH, TOKEN, patch(update_token)),
        (Method::DELETE, TOKEN, delete(delete_token)),
        (
            Method::POST,
            "/admin/v1/tokens/{name}/credentials/generate",
            post(generate_credentials),
        ),
        (
            Method::DELETE,
            "/admin/v1/tokens/{name}/credentials/{password}",
            delete(delete_credential),
        ),
        (Method::GET, "/admin/v1/scope-maps", get(list_scope_maps)),
        (Method::POST, "/admin/v1/scope-maps", post(create_scope_map)),
        (Method::GET, SCOPE_MAP, get(get_scope_map)),
        (Method::PATCH, SCOPE_MAP, patch(update_scope_map)),
        (Method::DELETE, SCOPE_MAP, delete(delete_scope_map)),
        (
            Method::GET,
            "/admin/v1/signature-trust",
            get(list_signature_trust),
        ),
        (
            Method::POST,
            "/admin/v1/signature-trust",
            post(add_signature_trust),
        ),
        (Method::GET, SIGNATURE_TRUST, get(get_signature_trust)),
        (
            Method::GET,
            "/admin/v1/signature-report",
            get(signature_report),
        ),
        (
            Method::DELETE,
            SIGNATURE_TRUST,
            delete(remove_signature_trust),
        ),
        (Method::GET, ATTRIBUTES, get(get_attributes)),
        (Method::PUT, ATTRIBUTES, put(put_attributes)),
        (
            Method::GET,
            CONTENT_TRUST,
            get(config_routes::get_content_trust),
        ),
        (
            Method::PUT,
            CONTENT_TRUST,
            put(config_routes::put_content_trust),
        ),
        (
            Method::GET,
            "/admin/v1/signing-keys",
            get(signing_key_routes::list),
        ),
        (
            Method::POST,
            "/admin/v1/signing-keys/rotate",
            post(signing_key_routes::rotate),
        ),
        (
            Method::GET,
            "/admin/v1/policies",
            get(policy_routes::history),
        ),
        (Method::PUT, "/admin/v1/policies", put(policy_routes::push)),
        (
            Method::POST,
            "/admin/v1/policies/rollback",
            post(policy_routes::rollback),
        ),
    ]
}

/// Parses `body` as every kind of admin API request body (the fuzz target's entry).
#[doc(hidden)]
pub fn parse_request_bodies(body: &[u8]) {
    let _ = wire::parse_body::<wire::CreateToken>(body);
    let _ = wire::parse_body::<wire::UpdateToken>(body);
    let _ = wire::parse_body::<wire::GenerateCredentials>(body);
    let _ = wire::parse_body::<wire::CreateScopeMap>(body);
    let _ = wire::parse_body::<wire::UpdateScopeMap>(body);
    let _ = wire::parse_body::<wire::AttributesJson>(body);
    let _ = wire::parse_body::<wire::AddSignatureTrust>(body);
    let _ = wire::parse_body::<policy_routes::PushBody>(body);
    let _ = wire::parse_body::<policy_routes::RollbackBody>(body);
    let _ = wire::parse_body::<signing_key_routes::RotateBody>(body);
}

/// The admin API with every path under `/admin/v1/`; mount it beside the registry.
pub fn router(state: AdminState) -> Router {
    let mut router = Router::new();
    for (_, path, method_router) in route_table() {
        router = router.route(path, method_router);
    }
    router
        .merge(policy_routes::routes())
        .route("/admin/v1/{*rest}", any(handlers::not_found))
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .with_state(state)
}

async fn require_admin(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let meta = request.extensions().get::<RequestMeta>().cloned();
    let client = meta.as_ref().and_then(|m| m.source_ip);
    let credentials = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| decode_basic(b64.trim()).ok());
    // Throttled attempts are refused unchecked (the throttle audits them).
    let throttled = credentials
        .as_ref()
        .and_then(|(user, _)| state.throttle.check(user, client).err());
    let authorized = throttled.is_none()
        && credentials.as_ref().is_some_and(|(user, password)| {
            let ok = state.admin.verify(user, password);
            if ok {
                state.throttle.succeeded(user);
            } else {
                state.throttle.failed(user, client);
            }
            ok
        });
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let action = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |matched| action_name(&method, matched.as_str()));
    let (principal, mut response) = match (&throttled, authorized) {
        (Some(refusal), _) => {
            let challenge = meta.as_ref().map(|m| m.challenge.clone()).unwrap_or(
                crate::gateway::errors::Challenge {
                    realm: String::new(),
                    service: String::new(),
                },
            );
            return refusal.into_axum(&challenge);
        }
        (None, true) => (Some(Principal::Admin), next.run(request).await),
        (None, false) => (None, AdminError::Unauthorized.into_response()),
    };
    // Reads are not actions; a failed login is audited whatever it asked for.
    if !authorized || !matches!(method, Method::GET | Method::HEAD) {
        state.audit.record(&Record::Admin {
            actor: Actor {
                principal: Actor::principal(principal.as_ref()),
                client: meta.as_ref().and_then(|m| m.source_ip),
                request_id: meta.as_ref().map_or("", |m| &m.request_id),
            },
            action: if authorized { action } else { "authenticate" },
            method: method.as_str(),
            path: &path,
            status: response.status().as_u16(),
            detail: response.extensions_mut().remove::<Detail>().map(|d| d.0),
        });
    }
    if let Some(principal) = principal {
        // For the access log.
        response.extensions_mut().insert(principal);
    }
    response
}

/// The audit name of an admin request, from its route.
fn action_name(method: &Method, route: &str) -> &'static str {
    let tail = route.strip_prefix("/admin/v1/").unwrap_or(route);
    match (method.as_str(), tail) {
        ("POST", "tokens") => "token.create",
        ("PATCH", "tokens/{name}") => "token.update",
        ("DELETE", "tokens/{name}") => "token.delete",
        ("POST", "tokens/{name}/credentials/generate") => "credential.generate",
        ("DELETE", "tokens/{name}/credentials/{password}") => "credential.delete",
        ("POST", "scope-maps") => "scope_map.create",
        ("PATCH", "scope-maps/{name}") => "scope_map.update",
        ("DELETE", "scope-maps/{name}") => "scope_map.delete",
        ("PUT", "repositories/{*path}") => "repository.attributes.update",
        ("PUT", "config/content-trust") => "content_trust.update",
        ("POST", "signature-trust") => "signature_trust.add",
        ("DELETE", "signature-trust/{name}") => "signature_trust.remove",
        ("POST", "policy/explain") => "policy.explain",
        ("POST", "policy/reload") => "policy.reload",
        ("PUT", "policies") => "policy.push",
        ("POST", "policies/rollback") => "policy.rollback",
        ("POST", "signing-keys/rotate") => "signing_key.rotate",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        for (method, route, _) in route_table() {
            // The repository wildcard is documented as `{name}/attributes`, the only
            // suffix it serves.
            let path = route.replace("{*path}", "{name}/attributes");
            let ops = paths
                .get(&path)
                .unwrap_or_else(|| panic!("{path} missing from openapi.json"));
            let m = method.as_str().to_ascii_lowercase();
            assert!(
                ops.get(&m).is_some(),
                "{method} {path} missing from openapi.json"
            );
        }
    }

    /// Every documented operation reaches a handler (not the catch-all 404 or a 405),
    /// including the policy routes, which are not in `route_table`.
    #[tokio::test]
    async fn everything_documented_is_routed() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityStore::open(&dir.path().join("control.redb")).unwrap();
        let (trust, _) = TrustService::open(
            store.database().unwrap(),
            crate::trust::KeyAlgorithm::Ecdsa,
            dir.path(),
            &crate::trust::kek::PassphraseSource::DataDir,
        )
        .unwrap();
        let engine = Arc::new(PolicyEngine::load(&[]).unwrap());
        let db = crate::control_plane::ControlDb::Embedded(store.database().unwrap());
        let signing_keys = SigningKeys::open(
            db.clone(),
            Arc::clone(&trust),
            dir.path(),
            "test",
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
        let pushed_policies = PushedPolicies::open(db, Arc::clone(&engine)).await.unwrap();
        let state = AdminState {
            store,
            admin: Arc::new(AdminAccount::new("pw").unwrap()),
            engine,
            trust,
            signing_keys,
            pushed_policies,
            audit: Audit::default(),
            gateway: None,
            throttle: Arc::new(Throttle::new(Default::default(), Audit::default())),
        };
        let app = router(state);
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let auth = format!("Basic {}", STANDARD.encode("admin:pw"));
        for (path, ops) in doc["paths"].as_object().unwrap() {
            let uri = path
                .replace("{name}/attributes", "some/repo/attributes")
                .replace("{name}", "some-name")
                .replace("{password}", "password1");
            for method in ops
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
            {
                let request = Request::builder()
                    .method(method.to_ascii_uppercase().as_str())
                    .uri(&uri)
                    .header(header::AUTHORIZATION, &auth)
                    .body(axum::body::Body::empty())
                    .unwrap();
                let resp = app.clone().oneshot(request).await.unwrap();
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let body = String::from_utf8_lossy(&body);
                assert_ne!(
                    status,
                    http::StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri}"
                );
                assert!(!body.contains("admin endpoint"), "{method} {uri}: {body}");
            }
        }
    }
}
