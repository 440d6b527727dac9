//! The in-process axum app for the routes the gateway answers itself: the token
//! endpoint, the catalog, the repository API, the Notary API, the admin API,
//! `/metrics`, `/healthz` and `/readyz`. The proxy calls it directly (no socket) with a
//! [`RequestMeta`] extension; with a separate admin listener the admin API is served
//! there instead.
//!
//! [`RequestMeta`]: super::RequestMeta

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use portcullis_storage::CacheSize;

use super::Gateway;
use super::backend::Backend;
use super::metrics::{CacheReading, Readings, ReloadReading};
use crate::admin::{self, AdminState};

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
pub fn admin_router(gw: &Arc<Gateway>) -> Router {
    admin::router(AdminState {
        store: Arc::clone(&gw.store),
        admin: Arc::clone(&gw.admin),
        engine: Arc::clone(&gw.engine),
        trust: Arc::clone(&gw.trust),
        signing_keys: Arc::clone(&gw.signing_keys),
        pushed_policies: Arc::clone(&gw.pushed_policies),
        audit: gw.audit.clone(),
        gateway: Some(Arc::clone(gw)),
        throttle: Arc::clone(gw.authn.throttle()),
    })
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gw.metrics.render(&readings(&gw)),
    )
        .into_response()
}

/// The counts other components keep, for `/metrics`.
fn readings(gw: &Gateway) -> Readings {
    let authn = gw.authn.cache_stats();
    let decision = gw.engine.cache_stats();
    let reloads = gw.engine.reload_stats();
    Readings {
        caches: [
            Some(CacheReading {
                cache: "authn",
                hits: authn.hits,
                misses: authn.misses,
            }),
            Some(CacheReading {
                cache: "decision",
                hits: decision.hits,
                misses: decision.misses,
            }),
        ],
        reloads: ReloadReading {
            successes: reloads.successes,
            failures: reloads.failures,
            last_success: reloads.last_success,
        },
        gc: match &gw.backend {
            Backend::Bundled { registry } => Some(registry.gc_stats()),
            Backend::Upstream { .. } => None,
        },
        cache_sizes: cache_sizes(gw),
    }
}

fn cache_sizes(gw: &Gateway) -> Vec<CacheSize> {
    let mut sizes = Vec::with_capacity(20);
    sizes.extend(gw.engine.cache_sizes());
    sizes.extend(gw.authn.cache_sizes());
    sizes.extend(gw.signatures.cache_sizes());
    sizes.push(gw.uploads.cache_size());
    sizes.push(gw.trust.cache_size());
    if let Backend::Bundled { registry } = &gw.backend {
        sizes.extend(registry.cache_sizes());
    }
    sizes
}

/// The process is up and answering.
async fn healthz() -> &'static str {
    "ok\n"
}

/// The control plane's snapshot is within its staleness bound and the backend answers
/// the distribution API: 200 `ready`, else 503 saying why (see [`Backend::ready`]).
async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if let Err(stale) = gw.store.fresh() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: control plane unreachable for {}s\n",
                stale.elapsed.as_secs()
            ),
        )
            .into_response();
    }
    match gw.backend.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: backend {why}\n"),
        )
            .into_response(),
    }
}
