//! Admin API for registry-level settings: the content-trust switch
//! (`GET/PUT /admin/v1/config/content-trust`). Enabling restricts nobody who does not
//! use content trust; disabling deletes every repository's trust data (images stay) and
//! cannot be undone, so it needs `"confirm": true`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::wire::parse_body;
use super::{AdminError, AdminState};
use crate::audit::Detail;
use crate::trust::service::ContentTrustStatus;

/// The switch as the API shows it.
#[derive(Debug, Serialize)]
struct ContentTrustJson {
    status: ContentTrustStatus,
}

/// A `PUT` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentTrustUpdate {
    status: ContentTrustStatus,
    /// Required (true) to disable: disabling deletes all trust data.
    #[serde(default)]
    confirm: bool,
}

pub async fn get_content_trust(State(state): State<AdminState>) -> Response {
    Json(ContentTrustJson {
        status: state.trust.status(),
    })
    .into_response()
}

pub async fn put_content_trust(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let update: ContentTrustUpdate = parse_body(&body)?;
    if update.status == ContentTrustStatus::Disabled && !update.confirm {
        return Err(AdminError::BadRequest(
            "disabling content trust deletes the trust data of every repository and \
             cannot be undone (images are kept): send \"confirm\": true to proceed"
                .into(),
        ));
    }
    let trust = state.trust.clone();
    // On a blocking thread: a disable deletes every GUN's data, and redb syncs to disk.
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(trust.set_status(update.status)))
        .await
        .map_err(|e| AdminError::Internal(format!("content trust task failed: {e}")))?
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    let status = state.trust.status();
    // The audit record says what the switch was set to.
    let detail = Detail(serde_json::json!({ "status": status }));
    let mut response = Json(ContentTrustJson { status }).into_response();
    response.extensions_mut().insert(detail);
    Ok(response)
}
