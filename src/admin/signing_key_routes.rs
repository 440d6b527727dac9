//! Admin API for the token-signing keys: list the ring's keys, rotate.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{AdminError, AdminState};
use crate::gateway::signing_keys::SigningKeyError;

impl From<SigningKeyError> for AdminError {
    fn from(e: SigningKeyError) -> Self {
        AdminError::Internal(e.to_string())
    }
}

/// How to rotate (the body may be empty).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateBody {
    /// Delete the previous keys instead of retiring them: every token they signed is
    /// refused at once (a leaked key).
    #[serde(default)]
    pub drop_previous: bool,
}

/// `GET /admin/v1/signing-keys`: every stored key, oldest first.
pub async fn list(State(state): State<AdminState>) -> Result<Response, AdminError> {
    Ok(Json(state.signing_keys.list().await?).into_response())
}

/// `POST /admin/v1/signing-keys/rotate`: a new key signs from now on, everywhere; the
/// others are retired and keep verifying until their tokens expired, or dropped.
pub async fn rotate(
    State(state): State<AdminState>,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    let body: RotateBody = if body.is_empty() {
        RotateBody::default()
    } else {
        super::wire::parse_body(&body)?
    };
    Ok(Json(state.signing_keys.rotate(body.drop_previous).await?).into_response())
}
