//! Admin API for the token-signing keys: list the ring's keys, rotate.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::{AdminError, AdminState};
use crate::gateway::signing_keys::SigningKeyError;

impl From<SigningKeyError> for AdminError {
    fn from(e: SigningKeyError) -> Self {
        AdminError::Internal(e.to_string())
    }
}

/// `GET /admin/v1/signing-keys`: every stored key, oldest first.
pub async fn list(State(state): State<AdminState>) -> Result<Response, AdminError> {
    Ok(Json(state.signing_keys.list().await?).into_response())
}

/// `POST /admin/v1/signing-keys/rotate`: a new key signs from now on, everywhere; the
/// others are retired and keep verifying until their tokens expired.
pub async fn rotate(State(state): State<AdminState>) -> Result<Response, AdminError> {
    Ok(Json(state.signing_keys.rotate().await?).into_response())
}
