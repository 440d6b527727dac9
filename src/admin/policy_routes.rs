//! Admin API for policies: explain a decision against the live identity snapshot,
//! export the compiled scope-map policies, reload the policy files, and push, list and
//! roll back the policy sets kept in the control plane. Admin authentication is the
//! admin router's layer, applied to these routes too.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::header;
use portcullis_oci::Digest;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminError, AdminState};
use crate::control_plane::policies::PolicyVersion;
use crate::identity::pattern::is_valid_repository_name;
use crate::identity::{Action, PasswordSlot, Principal, UnixSeconds};
use crate::policy::pushed::{Author, PushError};
use crate::policy::{AuthzRequest, Operation, PolicyFile, Reference, RequestContext};

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

/// A policy set to push, as `portcullis policy push` sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushBody {
    pub files: Vec<PolicyFile>,
    /// Why (e.g. the commit it comes from); kept with the version.
    pub message: Option<String>,
}

/// The version to make current again.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackBody {
    pub version: i64,
    pub message: Option<String>,
}

impl From<PushError> for AdminError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Invalid(e) => AdminError::BadRequest(format!("policies refused:\n{e}")),
            PushError::NotFound(_) => AdminError::NotFound(e.to_string()),
            PushError::Store(e) => AdminError::Internal(e.to_string()),
        }
    }
}

/// A version without its texts: number, when, who, why, hash, file names.
fn version_json(v: &PolicyVersion) -> Value {
    json!({
        "version": v.version,
        "created": v.created,
        "author": v.author,
        "message": v.message,
        "sha256": v.sha256,
        "rollbackOf": v.rollback_of,
        "files": v.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
    })
}

/// `GET /admin/v1/policies`: every pushed version, oldest first (the last is in force).
pub async fn history(State(state): State<AdminState>) -> Result<Response, AdminError> {
    let versions = state.pushed_policies.history().await?;
    Ok(Json(versions.iter().map(version_json).collect::<Vec<_>>()).into_response())
}

/// `PUT /admin/v1/policies`: validates the set with the policy directories' files and
/// stores it as the next version, in force on every gateway.
pub async fn push(
    State(state): State<AdminState>,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    let body: PushBody = super::wire::parse_body(&body)?;
    let author = Author {
        name: "admin".into(),
        message: body.message,
    };
    let stored = state.pushed_policies.push(body.files, author).await?;
    Ok((http::StatusCode::CREATED, Json(version_json(&stored))).into_response())
}

/// `POST /admin/v1/policies/rollback`: the files of an earlier version, stored as the
/// next version.
pub async fn rollback(
    State(state): State<AdminState>,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    let body: RollbackBody = super::wire::parse_body(&body)?;
    let author = Author {
        name: "admin".into(),
        message: body.message,
    };
    let stored = state.pushed_policies.rollback(body.version, author).await?;
    Ok((http::StatusCode::CREATED, Json(version_json(&stored))).into_response())
}

/// `names` as `context.signatures`: sorted, without duplicates.
fn sorted_names(mut names: Vec<String>) -> crate::policy::SignerNames {
    names.sort_unstable();
    names.dedup();
    names.into()
}
