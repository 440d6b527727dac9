//! The in-process axum app for the routes the gateway answers itself: the token
//! endpoint, the catalog, the repository API, the Notary API, the admin API,
//! `/metrics`, `/healthz` and `/readyz`. The proxy calls it directly (no socket) with a
//! [`RequestMeta`] extension; with a separate admin listener the admin API is served
//! there instead.
//!
//! [`RequestMeta`]: super::RequestMeta

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Gateway;
use super::backend::PeerAddress;
use super::metrics::CacheReading;
use crate::admin::{self, AdminState};

/// How long `/readyz` waits for the backend to accept a connection.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which listener the app serves: the admin API lives on the main one unless a separate
/// admin listener is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminPlacement {
    Included,
    Excluded,
}

/// The control app for the main listener.
pub fn router(gw: Arc<Gateway>) -> Router {
    app(gw, AdminPlacement::Included)
}

/// The control app, with or without the admin API.
pub fn app(gw: Arc<Gateway>, admin: AdminPlacement) -> Router {
    let gateway_routes: Router<Arc<Gateway>> = Router::new()
        .merge(super::token::router())
        .merge(super::catalog::router())
        .merge(super::repository_api::router())
        .merge(super::trust_api::router())
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let app = gateway_routes.with_state(Arc::clone(&gw));
    match admin {
        AdminPlacement::Included => app.merge(admin_router(&gw)),
        AdminPlacement::Excluded => app,
    }
}

/// The admin API alone, for a separate admin listener.
pub fn admin_router(gw: &Gateway) -> Router {
    admin::router(AdminState {
        store: Arc::clone(&gw.store),
        admin: Arc::clone(&gw.admin),
        engine: Arc::clone(&gw.engine),
        trust: Arc::clone(&gw.trust),
    })
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gw.metrics.render(&cache_readings(&gw)),
    )
        .into_response()
}

fn cache_readings(gw: &Gateway) -> [CacheReading; 2] {
    let authn = gw.authn.cache_stats();
    let decision = gw.engine.cache_stats();
    [
        CacheReading {
            cache: "authn",
            hits: authn.hits,
            misses: authn.misses,
        },
        CacheReading {
            cache: "decision",
            hits: decision.hits,
            misses: decision.misses,
        },
    ]
}

/// The process is up and answering.
async fn healthz() -> &'static str {
    "ok\n"
}

/// The backend can serve: 200 `ready`, else 503 naming the backend. The bundled store
/// is ready once opened (it runs in this process); an upstream must accept connections.
async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    let Some(peer) = gw.backend.peer() else {
        return (StatusCode::OK, "ready\n").into_response();
    };
    let connected = tokio::time::timeout(
        READY_PROBE_TIMEOUT,
        tokio::net::TcpStream::connect(&peer.addr),
    )
    .await;
    match connected {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => not_ready(peer, &e.to_string()),
        Err(_) => not_ready(peer, "timed out"),
    }
}

fn not_ready(peer: &PeerAddress, why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: backend {}: {why}\n", peer.addr),
    )
        .into_response()
}
