//! The HTTP edge: one catch-all `/v2/…` route (and ACR's `DELETE /acr/v1/<name>`,
//! a whole-repository delete), our own path parser
//! ([`Route`]), a handler per area, and the single place where
//! [`StorageError`] becomes an OCI error response.

mod blobs;
pub use blobs::{RangeRequest, parse_range};
mod discovery;
mod manifests;
mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::errcode::{ErrorCode, OciError};
use crate::error::StorageError;
use crate::registry::Registry;
use crate::route::{Route, RouteError};

const API_VERSION: &str = "docker-distribution-api-version";

/// The `/v2/…` API as a plain router with its state applied.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*rest}", any(dispatch))
        .route("/acr/v1/{*rest}", any(dispatch))
        .with_state(registry)
}

async fn dispatch(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    serve(&reg, req).await
}

/// Answers one `/v2/…` request: what [`router`] serves, without its routing layer, for a
/// caller that has already classified the request (the gateway, in process).
pub async fn serve(reg: &Arc<Registry>, req: Request) -> Response {
    serve_route(reg, None, req).await
}

/// [`serve`] for a caller that parsed the request's path already: `route` is what
/// [`Route::parse`] made of it (`None`: parsed here).
pub async fn serve_route(reg: &Arc<Registry>, route: Option<Route>, req: Request) -> Response {
    let method = req.method().clone();
    // A cheap clone (shared bytes), kept for the log line of a refusal.
    let uri = req.uri().clone();
    let mut response = match handle(reg, &method, route, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, path = uri.path(), error = %e, "request refused");
            OciError::from(e).into_response()
        }
    };
    response
        .headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    response
}

/// Decoded query parameters, in order (repeated keys kept).
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn from_uri(uri: &http::Uri) -> Query {
        Query(
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
                .map(|q| q.0)
                .unwrap_or_default(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

async fn handle(
    reg: &Arc<Registry>,
    m: &Method,
    route: Option<Route>,
    req: Request,
) -> Result<Response, StorageError> {
    let head = m == Method::HEAD;
    let route = match route.map_or_else(|| Route::parse(req.uri().path()), Ok) {
        // What cannot exist is missing, as registries answer any missing manifest.
        Err(RouteError::ManifestReference {
            name, reference, ..
        }) if m == Method::GET || head => {
            return Err(StorageError::ManifestUnknown { name, reference });
        }
        route => route?,
    };
    let query = Query::from_uri(req.uri());
    let (parts, body) = req.into_parts();
    let h = &parts.headers;
    match route {
        Route::Base if m == Method::GET || head => {
            json(StatusCode::OK, "application/json", &serde_json::json!({}))
        }
        Route::Catalog if m == Method::GET => discovery::catalog(reg, &query).await,
        Route::Tags { name } if m == Method::GET => discovery::tags(reg, &name, &query).await,
        Route::Referrers { name, digest } if m == Method::GET => {
            discovery::referrers(reg, &name, &digest, &query).await
        }
        Route::Blob { name, digest } if m == Method::GET || head => {
            blobs::get(reg, &name, &digest, h, head).await
        }
        Route::Blob { name, digest } if m == Method::DELETE => {
            blobs::delete(reg, &name, &digest).await
        }
        Route::UploadStart { name } if m == Method::POST => {
            uploads::start(reg, &name, &query, body).await
        }
        Route::Upload { name, id } if m == Method::PATCH => {
            uploads::patch(reg, &name, &id, h, body).await
        }
        Route::Upload { name, id } if m == Method::PUT => {
            uploads::put(reg, &name, &id, &query, body).await
        }
        Route::Upload { name, id } if m == Method::GET => uploads::status(reg, &name, &id).await,
        Route::Upload { name, id } if m == Method::DELETE => uploads::cancel(reg, &name, &id).await,
        Route::Manifest { name, reference } if m == Method::GET || head => {
            manifests::get(reg, &name, &reference, head).await
        }
        Route::Manifest { name, reference } if m == Method::PUT => {
            manifests::put(reg, &name, &reference, h, &query, body).await
        }
        Route::Manifest { name, reference } if m == Method::DELETE => {
            manifests::delete(reg, &name, &reference).await
        }
        Route::Repository { name } if m == Method::DELETE => {
            manifests::delete_repository(reg, &name).await
        }
        _ => Ok(OciError::new(
            ErrorCode::Unsupported,
            format!("method {m} is not supported on {}", parts.uri.path()),
        )
        .into_response()),
    }
}

/// Builds a response; header values here come from validated input, so a
/// build failure is an internal error rather than a panic.
pub(crate) fn build(
    builder: http::response::Builder,
    body: Body,
) -> Result<Response, StorageError> {
    builder
        .body(body)
        .map_err(|e| StorageError::Corrupt(format!("building response: {e}")))
}

pub(crate) fn json(
    status: StatusCode,
    content_type: &str,
    value: &serde_json::Value,
) -> Result<Response, StorageError> {
    let body = value.to_string();
    build(
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len()),
        Body::from(body),
    )
}

/// A header as a string, if present and valid.
pub(crate) fn header_str(h: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `n` and `last` pagination parameters.
pub(crate) fn pagination(q: &Query) -> (Option<usize>, Option<String>) {
    (
        q.get("n").and_then(|n| n.parse().ok()),
        q.get("last").map(str::to_owned),
    )
}
