//! The gateway's request handling on a pingora server session, shared by both data
//! planes ([`super::direct`] with the bundled store, [`super::upstream`]'s `ProxyHttp`
//! phases in front of an upstream registry). Every request is classified, and then
//!
//! - a repository operation is authenticated, authorized ([`access::authorize`]) and
//!   handed to the backend, streaming both ways (a body is never buffered whole): the
//!   bundled store's router is called in process ([`super::in_process`]), an upstream
//!   registry gets the request through pingora;
//! - `/v2/` answers a challenge to anonymous clients and `{}` to authenticated ones;
//! - every other route (token, catalog, repository API, admin API, metrics, health) is
//!   answered in process by the control app ([`super::control`]), with the body read
//!   into memory (at most [`CONTROL_BODY_LIMIT`]).
//!
//! Refusals are [`GatewayError`]s written with the request's challenge (realm
//! `<scheme>://<Host>/oauth2/token` unless `public_url` is configured). No backend sees
//! `Authorization` (it trusts the gateway's decision, and an upstream must not see
//! gateway credentials).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode, header};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorSource, ErrorType, Result};
use tower::ServiceExt;

use super::authn::Authenticated;
use super::backend::Backend;
use super::classify::{self, RepositoryRequest, RequestKind, Route};
use super::errors::{Challenge, GatewayError};
use super::forwarded::{Origin, TrustedProxies};
use super::in_process;
use super::metrics::{self, BackendError};
use super::{Gateway, RequestMeta, access};
use crate::audit::Actor;
use crate::identity::Principal;

/// Largest request body the control app accepts (token forms, admin JSON).
pub const CONTROL_BODY_LIMIT: usize = 1024 * 1024;
pub(super) const API_VERSION: &str = "registry/2.0";
pub(super) const API_VERSION_HEADER: &str = "docker-distribution-api-version";
pub(super) const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
/// Longest `X-Request-Id` taken from a client.
const REQUEST_ID_MAX: usize = 128;

/// A client's request id is kept when it is short and of safe characters (it goes into
/// logs, audit records and the response).
fn sane_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= REQUEST_ID_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
}

/// A request id for a request without a sane one of its own: a random prefix drawn
/// once per process and a counter, 32 hex digits like a UUID's, unique per process
/// without asking the kernel for randomness on every request.
fn generated_request_id() -> Arc<str> {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Arc::from(std::str::from_utf8(&hex_id(prefix, n)).unwrap_or_default())
}

/// `{prefix:016x}{n:016x}`, written by hand: `format!` cost more than the rest of
/// [`Proxy::identify`] per request.
fn hex_id(prefix: u64, n: u64) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for (i, byte) in id.iter_mut().enumerate() {
        let word = if i < 16 { prefix } else { n };
        *byte = HEX[((word >> (60 - 4 * (i % 16))) & 0xf) as usize];
    }
    id
}

/// Which listener a proxy instance serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The registry listener; `admin_api` says whether `/admin/v1` is served here.
    Main { admin_api: bool },
    /// A separate listener for the admin API only.
    Admin,
}

pub struct Proxy {
    pub(super) gw: Arc<Gateway>,
    control: Router,
    listener: Listener,
    /// `http` or `https`: this listener's scheme, for realms and `X-Forwarded-Proto`.
    pub(super) scheme: &'static str,
    /// The configured external base URL (no trailing `/`).
    public_url: Option<String>,
    /// Peers whose forwarding headers are believed.
    pub(super) trusted: TrustedProxies,
}

/// Per-request state, for the later phases and the access log.
pub struct RequestCtx {
    started: Instant,
    route: &'static str,
    principal: Option<Principal>,
    /// The request declares a body (`Content-Length` > 0 or chunked).
    pub(super) has_body: bool,
    /// The query the backend gets instead of the client's (an automatic mount that
    /// access resolved).
    pub(super) query: Option<String>,
    /// The client's `X-Request-Id` when sane, else generated; echoed in the response.
    pub(super) request_id: Arc<str>,
    /// The client as the trusted proxies name it (the peer without them).
    pub(super) origin: Origin,
    /// The repository of an authorized manifest PUT or DELETE: once the backend has
    /// answered, its cached signature verifications are redone.
    manifest_write: Option<String>,
    /// The bundled store's route of an authorized pull, as classified here.
    store_route: Option<portcullis_storage::route::Route>,
}

impl Proxy {
    pub fn new(
        gw: Arc<Gateway>,
        control: Router,
        listener: Listener,
        tls: bool,
        public_url: Option<String>,
        trusted: TrustedProxies,
    ) -> Proxy {
        Proxy {
            gw,
            control,
            listener,
            scheme: if tls { "https" } else { "http" },
            public_url,
            trusted,
        }
    }

    /// Whether this listener proxies requests (to an upstream) rather than answering
    /// every request itself.
    pub fn proxies(&self) -> bool {
        matches!(self.listener, Listener::Main { .. })
            && matches!(self.gw.backend, Backend::Upstream { .. })
    }

    /// Where this client gets tokens: the public URL, else the scheme and host the
    /// client used (as a trusted proxy names them, or as it connected).
    fn challenge(&self, session: &ServerSession, ctx: &RequestCtx) -> Challenge {
        let base = match &self.public_url {
            Some(url) => url.clone(),
            None => format!(
                "{}://{}",
                ctx.origin.proto.unwrap_or(self.scheme),
                ctx.origin
                    .host
                    .as_deref()
                    .or_else(|| host(session))
                    .unwrap_or("localhost")
            ),
        };
        Challenge {
            realm: format!("{base}/oauth2/token"),
            service: self.gw.service.clone(),
        }
    }

    fn meta(&self, session: &ServerSession, ctx: &RequestCtx) -> RequestMeta {
        RequestMeta {
            source_ip: ctx.origin.client,
            request_id: Arc::clone(&ctx.request_id),
            challenge: self.challenge(session, ctx),
        }
    }

    /// Writes `error` as the response (status, challenge, OCI JSON body).
    async fn refuse(
        &self,
        session: &mut ServerSession,
        ctx: &RequestCtx,
        error: &GatewayError,
    ) -> Result<bool> {
        if let GatewayError::Internal(cause) = error {
            tracing::error!(cause, "internal error");
        }
        let response = error.to_response(&self.challenge(session, ctx));
        let mut header = json_header(response.status, response.body.len())?;
        if let Some(challenge) = response.www_authenticate {
            header.insert_header(header::WWW_AUTHENTICATE, challenge)?;
        }
        if let Some(seconds) = response.retry_after {
            header.insert_header(header::RETRY_AFTER, seconds)?;
        }
        // An unread request body (a refused blob upload) is not worth draining.
        if ctx.has_body {
            session.set_keepalive(None);
        }
        write(session, ctx, header, response.body).await
    }

    pub(super) fn backend_error(&self, kind: BackendError) {
        let backend = match self.gw.backend {
            Backend::Bundled { .. } => metrics::Backend::Storage,
            Backend::Upstream { .. } => metrics::Backend::Upstream,
        };
        self.gw.metrics.record_backend_error(backend, kind);
    }

    /// The audit record of the decision on a repository request.
    fn audit(&self, session: &ServerSession, ctx: &RequestCtx, refusal: Option<&GatewayError>) {
        if !self.gw.audit.is_on() {
            return;
        }
        let head = session.req_header();
        self.gw.audit_decision(
            &self.meta(session, ctx),
            ctx.principal.as_ref(),
            (head.method.as_str(), head.uri.path()),
            refusal,
        );
    }

    fn authenticate(
        &self,
        session: &ServerSession,
        ctx: &RequestCtx,
    ) -> Result<Authenticated, GatewayError> {
        let result = self.gw.authn.authenticate(
            session.req_header().headers.get(header::AUTHORIZATION),
            ctx.origin.client,
        );
        let label = match &result {
            Ok(Authenticated {
                principal: Principal::Anonymous,
                ..
            }) => "anonymous",
            Ok(Authenticated {
                principal: Principal::Admin,
                ..
            }) => "admin",
            Ok(Authenticated {
                bearer_access: Some(_),
                ..
            }) => "bearer",
            Ok(_) => "basic",
            Err(_) => "invalid",
        };
        self.gw.metrics.record_authentication(label);
        result
    }

    /// Authenticate and authorize a repository operation; `Ok(false)` forwards it.
    async fn repository(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        req: &RepositoryRequest,
    ) -> Result<bool> {
        if smuggles_form(session, req) {
            // distribution reads `mount`/`from` from a form body too (Go's FormValue):
            // a form-encoded upload start could name a `from` that was never checked.
            let e = GatewayError::BadRequest(
                "blob uploads take the blob as the body, not a form".into(),
            );
            return self.refuse(session, ctx, &e).await;
        }
        let who = match self.authenticate(session, ctx) {
            Ok(who) => who,
            Err(e) => {
                let e = e.with_scope(|| access::request_scopes(req));
                self.audit(session, ctx, Some(&e));
                return self.refuse(session, ctx, &e).await;
            }
        };
        ctx.principal = Some(who.principal.clone());
        if matches!(req.kind, RequestKind::UploadStart { .. })
            && let Err(e) = self
                .gw
                .uploads
                .admit(&Actor::principal(Some(&who.principal)))
        {
            return self.refuse(session, ctx, &e).await;
        }
        // The challenge (realm from the Host header) is built only if the request is refused.
        let source_ip = ctx.origin.client;
        let query = session.req_header().uri.query().map(str::to_owned);
        let decided = access::authorize(&self.gw, &who, req, source_ip, query.as_deref()).await;
        self.audit(session, ctx, decided.as_ref().err());
        if let Err(GatewayError::Unavailable(_)) = &decided {
            // A lookup of the gateway's own (does the tag exist) failed.
            self.backend_error(BackendError::Lookup);
        }
        if decided.is_ok()
            && matches!(
                req.kind,
                RequestKind::ManifestPut { .. } | RequestKind::ManifestDelete { .. }
            )
        {
            ctx.manifest_write = Some(req.repository.clone());
        }
        match decided {
            Ok(access::Disposition::Forward) => {
                ctx.store_route = req.pull_route();
                self.forward(session, ctx).await
            }
            Ok(access::Disposition::ForwardWithQuery(query)) => {
                ctx.query = Some(query);
                self.forward(session, ctx).await
            }
            Ok(access::Disposition::Respond(response)) => {
                let (parts, body) = response.into_parts();
                write_buffered(session, ctx, parts, body).await
            }
            Err(e) => self.refuse(session, ctx, &e).await,
        }
    }

    /// An authorized repository request. The bundled store is called in process: its
    /// `/v2` handler is the code its own listener serves, so statuses, headers and error
    /// bodies are the store's, without a second HTTP hop. An upstream gets the request
    /// through pingora (`Ok(false)`).
    async fn forward(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> Result<bool> {
        match &self.gw.backend {
            Backend::Bundled { registry } => {
                let route = ctx.store_route.take();
                let served = in_process::serve(session, ctx, registry, route).await;
                let failed = session
                    .response_written()
                    .is_some_and(|r| r.status.is_server_error());
                match &served {
                    Ok(_) if failed => self.backend_error(BackendError::Status),
                    Err(e) if e.esource() != &ErrorSource::Downstream => {
                        self.backend_error(BackendError::Io);
                    }
                    _ => {}
                }
                served
            }
            Backend::Upstream { .. } => Ok(false),
        }
    }

    /// `/v2/`: anonymous → 401 challenge, authenticated → `{}`.
    async fn base(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> Result<bool> {
        match self.authenticate(session, ctx) {
            Ok(Authenticated {
                principal: Principal::Anonymous,
                ..
            }) => {
                let e = GatewayError::AuthenticationRequired { scope: None };
                self.refuse(session, ctx, &e).await
            }
            Ok(who) => {
                ctx.principal = Some(who.principal);
                let body = Bytes::from_static(b"{}");
                let header = json_header(StatusCode::OK, body.len())?;
                write(session, ctx, header, body).await
            }
            Err(e) => self.refuse(session, ctx, &e).await,
        }
    }

    /// Runs the control app on the request (body read fully, bounded) and writes its
    /// response.
    async fn control(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> Result<bool> {
        let declared = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > CONTROL_BODY_LIMIT) {
            return self.too_large(session, ctx).await;
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = read_body(session).await? {
            if body.len() + chunk.len() > CONTROL_BODY_LIMIT {
                return self.too_large(session, ctx).await;
            }
            body.extend_from_slice(&chunk);
        }
        let meta = self.meta(session, ctx);
        let mut request = in_process_request(session, Body::from(body.freeze()))?;
        request.extensions_mut().insert(meta);
        let response = match self.control.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (mut parts, body) = response.into_parts();
        // Handlers that authenticate the caller say who it was (the access log's).
        if let Some(principal) = parts.extensions.remove::<Principal>() {
            ctx.principal = Some(principal);
        }
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|e| Error::because(ErrorType::InternalError, "control response body", e))?;
        write_buffered(session, ctx, parts, bytes).await
    }

    async fn too_large(&self, session: &mut ServerSession, ctx: &RequestCtx) -> Result<bool> {
        let response = GatewayError::PayloadTooLarge(CONTROL_BODY_LIMIT)
            .to_response(&self.challenge(session, ctx));
        let header = json_header(response.status, response.body.len())?;
        if ctx.has_body {
            session.set_keepalive(None);
        }
        write(session, ctx, header, response.body).await
    }

    /// The state of a request (pingora makes it before the head is read).
    pub(super) fn new_request(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            route: "unclassified",
            principal: None,
            manifest_write: None,
            store_route: None,
            has_body: false,
            query: None,
            request_id: Arc::from(""),
            origin: Origin::default(),
        }
    }

    /// The request's id and origin, from its head.
    fn identify(&self, session: &ServerSession, ctx: &mut RequestCtx) {
        let headers = &session.req_header().headers;
        ctx.request_id = headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| sane_request_id(id))
            .map_or_else(generated_request_id, Arc::from);
        ctx.origin = self.trusted.origin(client_ip(session), headers);
    }

    /// Classifies the request and answers it, except a repository request for an
    /// upstream (`Ok(false)`: pingora proxies it).
    pub(super) async fn respond(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        self.identify(session, ctx);
        // HTTP/2 has no Transfer-Encoding and may omit Content-Length: a body is
        // whatever DATA frames follow a HEADERS frame without END_STREAM.
        ctx.has_body = if session.is_http2() {
            !session.is_body_empty()
        } else {
            declares_body(&session.req_header().headers)
        };
        let head = session.req_header();
        let route = match classify::classify(&head.method, head.uri.path(), head.uri.query()) {
            Ok(route) => route,
            Err(e) => {
                ctx.route = "invalid";
                return self.refuse(session, ctx, &e).await;
            }
        };
        // The admin listener serves the admin API and nothing else; the main one hides
        // it when it has its own listener.
        let served = match (&route, self.listener) {
            (Route::Admin, Listener::Admin) => true,
            (_, Listener::Admin) => false,
            (Route::Admin, Listener::Main { admin_api }) => admin_api,
            (_, Listener::Main { .. }) => true,
        };
        if !served {
            ctx.route = "not_found";
            return self.refuse(session, ctx, &not_served(session)).await;
        }
        ctx.route = route_label(&route);
        match route {
            Route::Repository(req) => self.repository(session, ctx, &req).await,
            Route::Base => self.base(session, ctx).await,
            Route::Catalog
            | Route::Token
            | Route::Admin
            | Route::RepositoryAttributes { .. }
            | Route::RepositoryDelete(_)
            | Route::Metrics
            | Route::Health
            | Route::Trust(_)
            | Route::TrustChangefeed => self.control(session, ctx).await,
        }
    }

    /// Answers a request whose handling failed (unless a response was already started,
    /// or the client is gone); the connection is not reused after it.
    pub(super) async fn fail(
        &self,
        session: &mut ServerSession,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let downstream_gone = e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
            );
        if downstream_gone || session.response_written().is_some() {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let error = match e.etype() {
            ErrorType::HTTPStatus(code) if *code < 500 => GatewayError::BadRequest(e.to_string()),
            _ if e.esource() == &ErrorSource::Downstream => {
                GatewayError::BadRequest(client_fault(e))
            }
            // Clients do not learn where the backend is; the access log has the cause.
            etype => {
                self.backend_error(backend_error_kind(etype));
                GatewayError::Unavailable("the storage backend is not answering".into())
            }
        };
        let code = error.status().as_u16();
        // Pingora closes the connection after a failed proxy attempt; say so.
        session.set_keepalive(None);
        if let Err(write_error) = self.refuse(session, ctx, &error).await {
            tracing::debug!(error = %write_error, "writing the failure response");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// The request's metrics and access-log line.
    pub(super) fn log(&self, session: &ServerSession, e: Option<&Error>, ctx: &RequestCtx) {
        if let Some(repository) = &ctx.manifest_write {
            self.gw.signatures.manifest_written(repository);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        let protocol = if session.is_http2() { "h2" } else { "http/1.1" };
        let head = session.req_header();
        let bytes_in = session.body_bytes_read() as u64;
        let bytes_out = session.body_bytes_sent() as u64;
        self.gw.metrics.observe_request(
            ctx.route,
            head.method.as_str(),
            status,
            elapsed,
            (bytes_in, bytes_out),
        );
        self.gw.metrics.observe_protocol(protocol);
        let upload = match ctx.route {
            "upload_start" => Some(true),
            "upload" => Some(false),
            _ => None,
        };
        if let (Some(start), Some(response)) = (upload, session.response_written()) {
            self.gw.uploads.observe(
                &Actor::principal(ctx.principal.as_ref()),
                start,
                (&head.method, head.uri.path()),
                response.status,
                response
                    .headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok()),
            );
        }
        let principal = match &ctx.principal {
            Some(Principal::Admin) => "admin",
            Some(Principal::Token { name, .. }) => name.as_str(),
            Some(Principal::Anonymous) => "anonymous",
            None => "-",
        };
        tracing::info!(
            target: "portcullis::access",
            request_id = &*ctx.request_id,
            client = ctx.origin.client.map(tracing::field::display),
            user_agent = head
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
            method = %head.method,
            path = head.uri.path(),
            route = ctx.route,
            protocol,
            status,
            bytes_in,
            bytes_out,
            principal,
            duration_seconds = elapsed.as_secs_f64(),
            error = e.map(|e| e.to_string()),
            "request"
        );
    }
}

/// The metrics kind of a backend failure.
fn backend_error_kind(etype: &ErrorType) -> BackendError {
    use ErrorType as T;
    match etype {
        T::ConnectTimedout
        | T::ConnectRefused
        | T::ConnectNoRoute
        | T::ConnectError
        | T::BindError
        | T::SocketError
        | T::ConnectProxyFailure => BackendError::Connect,
        T::TLSHandshakeFailure | T::TLSHandshakeTimedout | T::InvalidCert | T::HandshakeError => {
            BackendError::Tls
        }
        T::ReadTimedout | T::WriteTimedout => BackendError::Timeout,
        T::ReadError | T::WriteError | T::ConnectionClosed => BackendError::Io,
        T::HTTPStatus(code) if *code >= 500 => BackendError::Status,
        _ => BackendError::Other,
    }
}

/// What a client did wrong, from a downstream error: pingora's reason in lowercase
/// words (e.g. "malformed request body: invalid chunked encoding: InvalidChunkSize").
fn client_fault(e: &Error) -> String {
    let reason = e
        .context
        .as_ref()
        .map_or_else(|| e.etype().as_str().to_owned(), |c| c.to_string());
    let mut chars = reason.chars();
    let reason = match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => reason,
    };
    format!("malformed request body: {reason}")
}

/// The not-found refusal for a route this listener does not serve.
fn not_served(session: &ServerSession) -> GatewayError {
    let head = session.req_header();
    GatewayError::NotFound {
        method: head.method.to_string(),
        path: head.uri.path().to_owned(),
    }
}

/// The metrics label of a route (a small fixed set).
fn route_label(route: &Route) -> &'static str {
    match route {
        Route::Base => "base",
        Route::Catalog => "catalog",
        Route::Token => "token",
        Route::Admin => "admin",
        Route::RepositoryAttributes { .. } => "repository_api",
        Route::RepositoryDelete(_) => "repository_delete",
        Route::Metrics => "metrics",
        Route::Health => "health",
        Route::Trust(_) | Route::TrustChangefeed => "trust",
        Route::Repository(req) => match req.kind {
            RequestKind::ManifestGet { .. } | RequestKind::ManifestGetInvalid { .. } => {
                "manifest_get"
            }
            RequestKind::ManifestPut { .. } => "manifest_put",
            RequestKind::ManifestDelete { .. } => "manifest_delete",
            RequestKind::BlobGet { .. } => "blob_get",
            RequestKind::BlobDelete { .. } => "blob_delete",
            RequestKind::UploadStart { .. } => "upload_start",
            RequestKind::Upload => "upload",
            RequestKind::TagsList => "tags_list",
            RequestKind::Referrers { .. } => "referrers",
        },
    }
}

fn declares_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// The client's `Host` (HTTP/1.1 header, or the HTTP/2 authority).
/// The client's `Host`, when it is a plain `host[:port]` authority (it ends up inside
/// the quoted realm of a challenge, so nothing else may pass).
pub(super) fn host(session: &ServerSession) -> Option<&str> {
    let head = session.req_header();
    head.headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| head.uri.authority().map(|a| a.as_str()))
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
}

/// Whether an upload request carries a form body (see `repository`).
fn smuggles_form(session: &ServerSession, req: &RepositoryRequest) -> bool {
    use crate::gateway::classify::RequestKind;
    if !matches!(
        req.kind,
        RequestKind::UploadStart { .. } | RequestKind::Upload
    ) {
        return false;
    }
    session
        .req_header()
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim_start().to_ascii_lowercase();
            ct.starts_with("application/x-www-form-urlencoded")
                || ct.starts_with("multipart/form-data")
        })
}

pub(super) fn client_ip(session: &ServerSession) -> Option<IpAddr> {
    match session.client_addr() {
        Some(SocketAddr::Inet(addr)) => Some(addr.ip()),
        _ => None,
    }
}

pub(super) fn json_header(status: StatusCode, len: usize) -> Result<ResponseHeader> {
    let mut header = ResponseHeader::build(status, Some(4))?;
    header.insert_header(header::CONTENT_TYPE, "application/json")?;
    header.insert_header(header::CONTENT_LENGTH, len)?;
    Ok(header)
}

/// The next chunk of the request body. Every failure here is the client's (a malformed
/// chunk, a body cut short, a reset stream), so it is marked as coming from downstream:
/// `fail_to_proxy` answers it 400 (or not at all when the client is gone), never as a
/// backend failure.
pub(super) async fn read_body(session: &mut ServerSession) -> Result<Option<Bytes>> {
    session.read_request_body().await.map_err(|mut e| {
        e.as_down();
        e
    })
}

/// The client's request as an `http::Request` for a service called in process.
pub(super) fn in_process_request(
    session: &ServerSession,
    body: Body,
) -> Result<http::Request<Body>> {
    let head = session.req_header();
    let mut request = http::Request::builder()
        .method(head.method.clone())
        .uri(head.uri.clone())
        .body(body)
        .map_err(|e| Error::because(ErrorType::InternalError, "building in-process request", e))?;
    *request.headers_mut() = head.headers.clone();
    Ok(request)
}

/// `uri` with its query replaced by `query` (none when empty).
pub(super) fn with_query(uri: &http::Uri, query: &str) -> Result<http::Uri> {
    let path = uri.path();
    let replaced = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    replaced
        .parse()
        .map_err(|e| Error::because(ErrorType::InternalError, "rewriting the request query", e))
}

/// Writes a response whose whole body is in memory, with its length.
async fn write_buffered(
    session: &mut ServerSession,
    ctx: &RequestCtx,
    parts: http::response::Parts,
    body: Bytes,
) -> Result<bool> {
    let mut header = ResponseHeader::build(parts.status, Some(parts.headers.len() + 2))?;
    for (name, value) in &parts.headers {
        header.append_header(name.clone(), value.clone())?;
    }
    header.insert_header(header::CONTENT_LENGTH, body.len())?;
    write(session, ctx, header, body).await
}

/// Writes a complete response the gateway produced itself.
async fn write(
    session: &mut ServerSession,
    ctx: &RequestCtx,
    mut header: ResponseHeader,
    body: Bytes,
) -> Result<bool> {
    header.insert_header(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION))?;
    header.insert_header(REQUEST_ID, &*ctx.request_id)?;
    let head_only = session.req_header().method == Method::HEAD;
    session.write_response_header(Box::new(header)).await?;
    if !head_only && !body.is_empty() {
        session.write_response_body(body, true).await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_prefix_and_counter_in_hex() {
        for (prefix, n) in [(0, 0), (u64::MAX, 1), (0x0123_4567_89ab_cdef, 0xfedc_ba98)] {
            let id = hex_id(prefix, n);
            assert_eq!(
                std::str::from_utf8(&id).unwrap(),
                format!("{prefix:016x}{n:016x}")
            );
        }
        assert_ne!(generated_request_id(), generated_request_id());
    }

    #[test]
    fn bodies_are_declared_by_length_or_chunking() {
        let mut h = http::HeaderMap::new();
        assert!(!declares_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(!declares_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert!(declares_body(&h));
        h.remove(header::CONTENT_LENGTH);
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(declares_body(&h));
    }
}
