//! The gateway's refusals: one typed enum, mapped once to an OCI error body, a status
//! and (for 401s) the `WWW-Authenticate` challenge docker clients follow.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use portcullis_oci::{ErrorCode, OciError};

/// Why a request was refused before (or instead of) reaching the backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No credentials where some are needed; the client should log in.
    #[error("authentication required")]
    AuthenticationRequired { scope: Option<String> },
    /// Credentials were given but are not valid (unknown token, wrong password,
    /// disabled token, expired password, bad or expired bearer token).
    #[error("{reason}")]
    InvalidCredentials {
        reason: String,
        scope: Option<String>,
    },
    /// A bearer token whose `access` claim does not cover the request: the client
    /// fetches a new one for `scope` and retries.
    #[error("the bearer token does not grant `{scope}`")]
    InsufficientScope { scope: String },
    /// Policy says no. `reason` names the action and repository (and, when a shipped
    /// rule decided, why: "repository is not writable").
    #[error("requested access to the resource is denied: {reason}")]
    Denied { reason: String },
    /// A manifest pull refused because the manifest is not signed and a signature is
    /// demanded (signed-only repository or policy). Unlike `Denied`, the reason is in
    /// the message too: it is the one thing the user must learn from `docker pull`.
    #[error("requested access to the resource is denied: {reason}")]
    Unsigned { reason: String },
    #[error("invalid repository name `{0}`")]
    NameInvalid(String),
    #[error("invalid reference `{0}`")]
    ReferenceInvalid(String),
    #[error("invalid digest `{0}`")]
    DigestInvalid(String),
    #[error("repository `{0}` not known to registry")]
    NameUnknown(String),
    #[error("manifest `{reference}` unknown to repository `{repository}`")]
    ManifestUnknown {
        repository: String,
        reference: String,
    },
    #[error("no such route: {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{method} is not supported on {path}")]
    Unsupported { method: String, path: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    /// An abuse limit was hit (failed logins, connections, upload sessions); the client
    /// may try again after `retry_after` seconds.
    #[error("{reason}")]
    TooManyRequests { reason: String, retry_after: u64 },
    #[error("the backend is unavailable: {0}")]
    Unavailable(String),
    /// Internal failure: the cause is logged, the client sees a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Where clients get bearer tokens: the realm (`<base>/oauth2/token`) and service.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub realm: String,
    pub service: String,
}

/// A complete refusal, ready for pingora or axum to write.
#[derive(Debug, Clone)]
pub struct ErrorResponse {
    pub status: StatusCode,
    pub www_authenticate: Option<HeaderValue>,
    /// Seconds for `Retry-After` (429s).
    pub retry_after: Option<u64>,
    pub body: Bytes,
}

impl GatewayError {
    /// The OCI error code: the one table every refusal goes through.
    pub fn code(&self) -> ErrorCode {
        match self {
            GatewayError::AuthenticationRequired { .. }
            | GatewayError::InvalidCredentials { .. }
            | GatewayError::InsufficientScope { .. } => ErrorCode::Unauthorized,
            GatewayError::Denied { .. } | GatewayError::Unsigned { .. } => ErrorCode::Denied,
            GatewayError::NameInvalid(_) => ErrorCode::NameInvalid,
            GatewayError::ReferenceInvalid(_) => ErrorCode::TagInvalid,
            GatewayError::DigestInvalid(_) => ErrorCode::DigestInvalid,
            GatewayError::NameUnknown(_) => ErrorCode::NameUnknown,
            GatewayError::ManifestUnknown { .. } => ErrorCode::ManifestUnknown,
            // As the bundled store answers an unknown route: 404 UNSUPPORTED.
            GatewayError::NotFound { .. } => ErrorCode::Unsupported,
            GatewayError::Unsupported { .. } => ErrorCode::Unsupported,
            GatewayError::BadRequest(_) => ErrorCode::Unsupported,
            GatewayError::PayloadTooLarge(_) | GatewayError::HeadTooLarge(_) => {
                ErrorCode::SizeInvalid
            }
            GatewayError::TooManyRequests { .. } => ErrorCode::TooManyRequests,
            GatewayError::Unavailable(_) => ErrorCode::Unavailable,
            GatewayError::Internal(_) => ErrorCode::Unknown,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NotFound { .. } => StatusCode::NOT_FOUND,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            other => other.code().status(),
        }
    }

    /// The message clients see. Docker prints it; for denials it must start with
    /// "requested access to the resource is denied" (docker matches that text).
    fn message(&self) -> String {
        match self {
            GatewayError::Denied { .. } => ErrorCode::Denied.default_message().to_owned(),
            GatewayError::Internal(_) => ErrorCode::Unknown.default_message().to_owned(),
            other => other.to_string(),
        }
    }

    fn detail(&self) -> serde_json::Value {
        match self {
            GatewayError::Denied { reason } | GatewayError::Unsigned { reason } => {
                serde_json::json!({ "reason": reason })
            }
            GatewayError::InsufficientScope { scope } => serde_json::json!({ "scope": scope }),
            _ => serde_json::Value::Null,
        }
    }

    /// This refusal with the challenge scope `scope` if it is a 401 that names none yet
    /// (credentials are checked before the request's scopes are known).
    pub fn with_scope(self, scope: impl FnOnce() -> String) -> GatewayError {
        match self {
            GatewayError::AuthenticationRequired { scope: None } => {
                GatewayError::AuthenticationRequired {
                    scope: Some(scope()),
                }
            }
            GatewayError::InvalidCredentials {
                reason,
                scope: None,
            } => GatewayError::InvalidCredentials {
                reason,
                scope: Some(scope()),
            },
            other => other,
        }
    }

    /// The challenge for a 401, per the Docker token spec: realm, service, the scope the
    /// request needs, and `error=` when credentials were given but did not suffice.
    fn challenge(&self, challenge: &Challenge) -> Option<HeaderValue> {
        let (scope, error) = match self {
            GatewayError::AuthenticationRequired { scope } => (scope.as_deref(), None),
            GatewayError::InvalidCredentials { scope, .. } => {
                (scope.as_deref(), Some("invalid_token"))
            }
            GatewayError::InsufficientScope { scope } => {
                (Some(scope.as_str()), Some("insufficient_scope"))
            }
            _ => return None,
        };
        let mut value = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            challenge.realm, challenge.service
        );
        if let Some(scope) = scope {
            value.push_str(&format!(",scope=\"{scope}\""));
        }
        if let Some(error) = error {
            value.push_str(&format!(",error=\"{error}\""));
        }
        HeaderValue::from_str(&value).ok()
    }

    /// The refusal as an axum response (for the control app's handlers). Internal
    /// errors are logged here, once, with their cause.
    pub fn into_axum(&self, challenge: &Challenge) -> axum::response::Response {
        if let GatewayError::Internal(cause) = self {
            tracing::error!(cause = %cause, "internal error");
        }
        let r = self.to_response(challenge);
        let mut response = axum::response::Response::new(axum::body::Body::from(r.body));
        *response.status_mut() = r.status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(challenge) = r.www_authenticate {
            headers.insert(http::header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(seconds) = r.retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }

    /// Status, challenge and `{"errors":[…]}` body.
    pub fn to_response(&self, challenge: &Challenge) -> ErrorResponse {
        let oci = OciError::new(self.code(), self.message())
            .with_detail(self.detail())
            .with_status(self.status());
        ErrorResponse {
            status: oci.status,
            www_authenticate: self.challenge(challenge),
            retry_after: match self {
                GatewayError::TooManyRequests { retry_after, .. } => Some(*retry_after),
                _ => None,
            },
            body: Bytes::from(oci.body().to_string()),
        }
    }
}

/// `text` quoted in an error message: at most `max` bytes (cut on a character boundary,
/// marked with `…`), so a long input cannot blow up the response.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", text.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge() -> Challenge {
        Challenge {
            realm: "https://r.example/oauth2/token".into(),
            service: "r.example".into(),
        }
    }

    #[test]
    fn missing_credentials_challenge_names_realm_service_and_scope() {
        let e = GatewayError::AuthenticationRequired {
            scope: Some("repository:samples/app:pull".into()),
        };
        let r = e.to_response(&challenge());
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.www_authenticate.as_ref().and_then(|v| v.to_str().ok()),
            Some(
                "Bearer realm=\"https://r.example/oauth2/token\",service=\"r.example\",\
                 scope=\"repository:samples/app:pull\""
            )
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    }

    #[test]
    fn bad_credentials_and_insufficient_scope_carry_error() {
        let r = GatewayError::InvalidCredentials {
            reason: "token `ci` is disabled".into(),
            scope: None,
        }
        .to_response(&challenge());
        let h = r.www_authenticate.unwrap();
        assert!(h.to_str().unwrap().ends_with(",error=\"invalid_token\""));
        let r = GatewayError::InsufficientScope {
            scope: "repository:a:push".into(),
        }
        .to_response(&challenge());
        let h = r.www_authenticate.unwrap();
        assert!(
            h.to_str()
                .unwrap()
                .ends_with(",scope=\"repository:a:push\",error=\"insufficient_scope\"")
        );
    }

    #[test]
    fn with_scope_fills_only_a_401_that_names_none() {
        let scope = || "repository:a:pull repository:b:pull".to_owned();
        let filled = GatewayError::InvalidCredentials {
            reason: "bad".into(),
            scope: None,
        }
        .with_scope(scope);
        let h = filled.to_response(&challenge()).www_authenticate.unwrap();
        assert!(
            h.to_str().unwrap().ends_with(
                ",scope=\"repository:a:pull repository:b:pull\",error=\"invalid_token\""
            )
        );
        let named = GatewayError::AuthenticationRequired {
            scope: Some("registry:catalog:*".into()),
        };
        assert_eq!(named.clone().with_scope(scope), named);
        let denied = GatewayError::Denied { reason: "x".into() };
        assert_eq!(denied.clone().with_scope(scope), denied);
    }

    #[test]
    fn denial_is_403_denied_with_dockers_text_and_the_reason_in_detail() {
        let r = GatewayError::Denied {
            reason: "content/write on `samples/nginx`".into(),
        }
        .to_response(&challenge());
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.www_authenticate.is_none());
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED");
        assert_eq!(
            body["errors"][0]["message"],
            "requested access to the resource is denied"
        );
        assert_eq!(
            body["errors"][0]["detail"]["reason"],
            "content/write on `samples/nginx`"
        );
    }

    #[test]
    fn unsigned_refusal_names_the_reason_in_the_message() {
        let reason = "manifest `v1` of `samples/app` is not signed (signed-only repository)";
        let r = GatewayError::Unsigned {
            reason: reason.into(),
        }
        .to_response(&challenge());
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED");
        assert_eq!(
            body["errors"][0]["message"],
            format!("requested access to the resource is denied: {reason}")
        );
        assert_eq!(body["errors"][0]["detail"]["reason"], reason);
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let r = GatewayError::Internal("redb: disk on fire".into()).to_response(&challenge());
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!String::from_utf8_lossy(&r.body).contains("disk"));
    }
}
