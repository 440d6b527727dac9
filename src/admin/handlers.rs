//! Admin API handlers: tokens and their credentials, scope maps, repository attributes,
//! verification identities of OCI signatures.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;

use crate::identity::model::PasswordSlot;
use crate::identity::now_unix;
use crate::identity::pattern::is_valid_repository_name;
use crate::identity::store::{
    IdentityStoreError, NewToken, ScopeMapUpdate, TokenScope, TokenUpdate,
};

use super::AdminState;
use super::error::AdminError;
use super::wire::{
    AddSignatureTrust, AttributesJson, CreateScopeMap, CreateToken, GenerateCredentials,
    UpdateScopeMap, UpdateToken, credentials_json, expiry, parse_action_strings, parse_body,
    parse_rules, scope_map_json, signature_trust_json, token_json,
};

fn token_not_found(name: &str) -> AdminError {
    IdentityStoreError::NotFound {
        kind: "token",
        name: name.to_owned(),
    }
    .into()
}

pub async fn list_tokens(State(state): State<AdminState>) -> Response {
    let snap = state.store.snapshot();
    let mut tokens: Vec<_> = snap.tokens.values().collect();
    tokens.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let body: Vec<_> = tokens.into_iter().map(|t| token_json(t, &[])).collect();
    Json(body).into_response()
}

pub async fn get_token(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, AdminError> {
    let snap = state.store.snapshot();
    let token = snap
        .tokens
        .get(&name)
        .ok_or_else(|| token_not_found(&name))?;
    Ok(Json(token_json(token, &[])).into_response())
}

pub async fn create_token(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let req: CreateToken = parse_body(&body)?;
    let scope = match (req.scope_map, req.repositories) {
        (Some(map), None) => TokenScope::ScopeMap(map),
        (None, Some(repos)) => TokenScope::Repositories(parse_rules(&repos)?),
        _ => {
            return Err(AdminError::BadRequest(
                "give exactly one of `scopeMap` or `repositories`".into(),
            ));
        }
    };
    let passwords = if req.no_passwords {
        vec![]
    } else {
        vec![PasswordSlot::Password1, PasswordSlot::Password2]
    };
    let new = NewToken {
        name: req.name,
        scope,
        status: req.status,
        passwords,
        expires_at: expiry(now_unix(), req.expiration_in_days)?,
    };
    let created = state.store.create_token(&new).await?;
    let body = token_json(&created.token, &created.passwords);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn update_token(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let req: UpdateToken = parse_body(&body)?;
    let update = TokenUpdate {
        status: req.status,
        scope_map: req.scope_map,
    };
    let token = state.store.update_token(&name, &update).await?;
    Ok(Json(token_json(&token, &[])).into_response())
}

pub async fn delete_token(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<StatusCode, AdminError> {
    state.store.delete_token(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn generate_credentials(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, AdminError> {
    // An empty body means "both passwords, no expiry", like `az acr token credential generate`.
    let req: GenerateCredentials = if body.is_empty() {
        parse_body(b"{}")?
    } else {
        parse_body(&body)?
    };
    let slots = if req.passwords.is_empty() {
        vec![PasswordSlot::Password1, PasswordSlot::Password2]
    } else {
        req.passwords
    };
    let expires_at = expiry(now_unix(), req.expiration_in_days)?;
    let generated = state
        .store
        .generate_passwords(&name, &slots, expires_at)
        .await?;
    let body = credentials_json(&generated.token, &generated.passwords, |slot| {
        generated.passwords.iter().any(|g| g.slot == slot)
    });
    Ok(Json(body).into_response())
}

pub async fn delete_credential(
    State(state): State<AdminState>,
    Path((name, slot)): Path<(String, String)>,
) -> Result<Response, AdminError> {
    let slot = match slot.as_str() {
        "password1" => PasswordSlot::Password1,
        "password2" => PasswordSlot::Password2,
        other => {
            return Err(AdminError::NotFound(format!(
                "password `{other}` not found: use password1 or password2"
            )));
        }
    };
    let token = state.store.delete_password(&name, slot).await?;
    Ok(Json(token_json(&token, &[])).into_response())
}

pub async fn list_scope_maps(State(state): State<AdminState>) -> Response {
    let snap = state.store.snapshot();
    let mut maps: Vec<_> = snap.scope_maps.values().collect();
    maps.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let body: Vec<_> = maps.into_iter().map(|m| scope_map_json(m)).collect();
    Json(body).into_response()
}

pub async fn get_scope_map(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, AdminError> {
    let snap = state.store.snapshot();
    let map = snap.scope_maps.get(&name).ok_or_else(|| {
        AdminError::from(IdentityStoreError::NotFound {
            kind: "scope map",
            name: name.clone(),
        })
    })?;
    Ok(Json(scope_map_json(map)).into_response())
}

pub async fn create_scope_map(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let req: CreateScopeMap = parse_body(&body)?;
    let mut rules = parse_action_strings(&req.actions)?;
    rules.extend(parse_rules(&req.repositories)?);
    let map = state
        .store
        .create_scope_map(&req.name, &req.description, &rules)
        .await?;
    Ok((StatusCode::CREATED, Json(scope_map_json(&map))).into_response())
}

pub async fn update_scope_map(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let req: UpdateScopeMap = parse_body(&body)?;
    let update = ScopeMapUpdate {
        description: req.description,
        add: parse_rules(&req.add_repository)?,
        remove: parse_rules(&req.remove_repository)?,
    };
    let map = state.store.update_scope_map(&name, &update).await?;
    Ok(Json(scope_map_json(&map)).into_response())
}

pub async fn delete_scope_map(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<StatusCode, AdminError> {
    state.store.delete_scope_map(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_signature_trust(State(state): State<AdminState>) -> Response {
    let snap = state.store.snapshot();
    let body: Vec<_> = snap
        .signature_trust
        .values()
        .map(|t| signature_trust_json(t))
        .collect();
    Json(body).into_response()
}

pub async fn get_signature_trust(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, AdminError> {
    let snap = state.store.snapshot();
    let trust = snap.signature_trust.get(&name).ok_or_else(|| {
        AdminError::from(IdentityStoreError::NotFound {
            kind: "signature trust",
            name: name.clone(),
        })
    })?;
    Ok(Json(signature_trust_json(trust)).into_response())
}

pub async fn add_signature_trust(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let (name, material) = parse_body::<AddSignatureTrust>(&body)?.material()?;
    let trust = state.store.add_signature_trust(&name, material).await?;
    Ok((StatusCode::CREATED, Json(signature_trust_json(&trust))).into_response())
}

pub async fn remove_signature_trust(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<StatusCode, AdminError> {
    state.store.remove_signature_trust(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Per repository and tag: content-trust signed, OCI signatures, or neither.
pub async fn signature_report(State(state): State<AdminState>) -> Result<Response, AdminError> {
    let gateway = state.gateway.as_ref().ok_or_else(|| {
        AdminError::NotFound("the signature report needs a running gateway".into())
    })?;
    let report = crate::gateway::signatures::report(gateway)
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    Ok(Json(report).into_response())
}

/// `{*path}` is `<repository>/attributes`; repository names contain slashes.
fn attributes_repository(path: &str) -> Result<&str, AdminError> {
    let repo = path
        .strip_suffix("/attributes")
        .ok_or_else(|| AdminError::NotFound(format!("admin endpoint `{path}` not found")))?;
    if !is_valid_repository_name(repo) {
        return Err(AdminError::InvalidName(format!(
            "repository name `{repo}` is invalid"
        )));
    }
    Ok(repo)
}

pub async fn get_attributes(
    State(state): State<AdminState>,
    Path(path): Path<String>,
) -> Result<Response, AdminError> {
    let repo = attributes_repository(&path)?;
    let attrs = AttributesJson::from(state.store.snapshot().repository_attributes(repo));
    Ok(Json(attrs).into_response())
}

pub async fn put_attributes(
    State(state): State<AdminState>,
    Path(path): Path<String>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let repo = attributes_repository(&path)?.to_owned();
    let attrs: AttributesJson = parse_body(&body)?;
    let stored = attrs.clone().into();
    state
        .store
        .set_repository_attributes(&repo, &stored)
        .await?;
    Ok(Json(attrs).into_response())
}

pub async fn openapi() -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        super::OPENAPI,
    )
        .into_response()
}

pub async fn not_found(uri: http::Uri) -> AdminError {
    AdminError::NotFound(format!("admin endpoint `{}` not found", uri.path()))
}

pub async fn method_not_allowed() -> AdminError {
    AdminError::MethodNotAllowed
}
