//! Admin API errors and their one mapping to HTTP: status, OCI error code and the
//! `{"errors":[{"code","message","detail"}]}` body registry clients already parse.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use portcullis_oci::{ErrorCode, OciError};

use crate::identity::pattern::PatternError;
use crate::identity::scope::{NameError, RuleError};
use crate::identity::store::IdentityStoreError;
use portcullis_storage::error::is_out_of_space;

/// The admin realm, sent with every 401.
pub const REALM: &str = r#"Basic realm="portcullis-admin""#;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin credentials required")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    /// A bad token/scope-map/repository name or repository pattern.
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed on this admin endpoint")]
    MethodNotAllowed,
    /// The disk holding `control.redb` is full; nothing was written.
    #[error("{}", ErrorCode::InsufficientStorage.default_message())]
    InsufficientStorage(String),
    /// The control-plane database cannot be reached; nothing was written.
    #[error("{0}")]
    Unavailable(String),
    /// The cause is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl AdminError {
    /// Status and OCI error code. Conflicts use `DENIED` with 409; other bad input that is
    /// not a name uses `UNSUPPORTED` with 400 (the OCI table has no generic "bad request").
    fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            AdminError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            AdminError::InvalidName(_) => (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::Unsupported),
            AdminError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Denied),
            AdminError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported)
            }
            AdminError::InsufficientStorage(_) => (
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::InsufficientStorage,
            ),
            AdminError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            AdminError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unknown),
        }
    }
}

impl From<IdentityStoreError> for AdminError {
    fn from(e: IdentityStoreError) -> Self {
        let msg = e.to_string();
        match e {
            IdentityStoreError::NotFound { .. } => AdminError::NotFound(msg),
            IdentityStoreError::AlreadyExists { .. }
            | IdentityStoreError::SystemScopeMap(_)
            | IdentityStoreError::ScopeMapInUse { .. } => AdminError::Conflict(msg),
            IdentityStoreError::TooManyRules { .. } | IdentityStoreError::TrustMaterial(_) => {
                AdminError::BadRequest(msg)
            }
            IdentityStoreError::InvalidRepository(_) | IdentityStoreError::Name(_) => {
                AdminError::InvalidName(msg)
            }
            IdentityStoreError::Database(e) if is_out_of_space(&e) => {
                AdminError::InsufficientStorage(msg)
            }
            IdentityStoreError::Postgres { .. } => AdminError::Unavailable(msg),
            IdentityStoreError::Database(_)
            | IdentityStoreError::Corrupt { .. }
            | IdentityStoreError::Task(_) => AdminError::Internal(msg),
        }
    }
}

impl From<NameError> for AdminError {
    fn from(e: NameError) -> Self {
        AdminError::InvalidName(e.to_string())
    }
}

impl From<PatternError> for AdminError {
    fn from(e: PatternError) -> Self {
        AdminError::InvalidName(e.to_string())
    }
}

impl From<RuleError> for AdminError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::Pattern(p) => p.into(),
            other => AdminError::BadRequest(other.to_string()),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match &self {
            AdminError::Internal(cause) => tracing::error!(%cause, "admin api internal error"),
            AdminError::InsufficientStorage(cause) => tracing::warn!(%cause, "storage full"),
            _ => {}
        }
        let (status, code) = self.status_and_code();
        let mut resp = OciError::new(code, self.to_string())
            .with_status(status)
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
        }
        resp
    }
}
