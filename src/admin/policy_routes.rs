//! Admin API for policies: explain a decision against the live identity snapshot,
//! export the compiled scope-map policies, reload the policy files. Admin
//! authentication is the admin router's layer, applied to these routes too.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::header;
use portcullis_oci::Digest;
use serde::Deserialize;
use serde_json::json;

use super::{AdminError, AdminState};
use crate::identity::pattern::is_valid_repository_name;
use crate::identity::{Action, PasswordSlot, Principal, UnixSeconds};
use crate::policy::{AuthzRequest, Operation, Reference, RequestContext};

/// `POST /admin/v1/policy/explain`, `GET /admin/v1/policy/export`,
/// `POST /admin/v1/policy/reload`.
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/admin/v1/policy/explain", post(explain))
        .route("/admin/v1/policy/export", get(export))
        .route("/admin/v1/policy/reload", post(reload))
}

/// A request to explain, as `portcullis policy explain` sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExplainBody {
    pub token: String,
    /// The password slot the caller would authenticate with (default `password1`).
    pub slot: Option<PasswordSlot>,
    pub repository: String,
    pub action: Action,
    pub tag: Option<String>,
    pub digest: Option<String>,
    #[serde(default)]
    pub signed: bool,
    /// `context.signatures`: verification identities whose signatures verify. When
    /// absent, and a tag or digest is given, the manifest's own signatures are found
    /// and checked, and the answer lists each.
    #[serde(default)]
    pub signatures: Option<Vec<String>>,
    #[serde(default)]
    pub signature_artifact: bool,
    pub source_ip: Option<IpAddr>,
    /// Unix seconds; default now.
    pub now: Option<UnixSeconds>,
    /// `context.operation`, e.g. `overwrite-tag`; default `other`.
    #[serde(default)]
    pub operation: Operation,
}

async fn explain(
    State(state): State<AdminState>,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    let body: ExplainBody = super::wire::parse_body(&body)?;
    let snapshot = state.store.snapshot();
    if !snapshot.tokens.contains_key(&body.token) {
        return Err(AdminError::NotFound(format!(
            "token `{}` not found",
            body.token
        )));
    }
    if !is_valid_repository_name(&body.repository) {
        return Err(AdminError::InvalidName(format!(
            "`{}` is not a valid repository name",
            body.repository
        )));
    }
    let reference = match (body.tag, body.digest) {
        (Some(_), Some(_)) => {
            return Err(AdminError::BadRequest(
                "give `tag` or `digest`, not both".into(),
            ));
        }
        (Some(tag), None) => Some(Reference::Tag(tag)),
        (None, Some(digest)) => Some(Reference::Digest(
            Digest::parse(&digest).map_err(|e| AdminError::BadRequest(e.to_string()))?,
        )),
        (None, None) => None,
    };
    // Without given signer names, the ones the manifest's signatures verify with.
    let inspection = match (&body.signatures, &reference, &state.gateway) {
        (None, Some(reference), Some(gateway)) => {
            crate::gateway::signatures::inspect(gateway, &body.repository, reference)
                .await
                .map_err(|e| AdminError::Internal(e.to_string()))?
        }
        _ => None,
    };
    let signatures = match (&inspection, body.signatures) {
        (Some(found), _) => found.identities(),
        (None, given) => given.unwrap_or_default(),
    };
    let now = body.now.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    });
    let request = AuthzRequest {
        principal: Principal::Token {
            name: body.token,
            slot: body.slot.unwrap_or(PasswordSlot::Password1),
        },
        action: body.action,
        repository: body.repository,
        context: RequestContext {
            reference,
            signed: body.signed,
            signatures: sorted_names(signatures),
            signature_artifact: body.signature_artifact,
            source_ip: body.source_ip,
            now,
            operation: body.operation,
        },
    };
    let explanation = state.engine.explain(&snapshot, &request);
    let decision = &explanation.decision;
    let mut answer = json!({
        "decision": if decision.allowed { "allow" } else { "deny" },
        "policies": decision.policies,
        "errors": decision.errors,
        "matchingRules": explanation.matching_rules,
    });
    if let Some(inspection) = inspection {
        answer["manifest"] = json!(inspection);
    }
    Ok(Json(answer).into_response())
}

async fn export(State(state): State<AdminState>) -> Response {
    let text = state.engine.export(&state.store.snapshot());
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

async fn reload(State(state): State<AdminState>) -> Result<Response, AdminError> {
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || engine.reload().map(|()| engine.policy_count()))
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?
        .map(|count| Json(json!({ "policies": count })).into_response())
        .map_err(|e| AdminError::BadRequest(e.to_string()))
}

/// `names` as `context.signatures`: sorted, without duplicates.
fn sorted_names(mut names: Vec<String>) -> crate::policy::SignerNames {
    names.sort_unstable();
    names.dedup();
    names.into()
}
