//! The data plane with the bundled store: pingora's HTTP server session (HTTP/1 and /2,
//! TLS, keep-alive) running the gateway's request handling directly, without pingora's
//! proxy layer.
//!
//! With the bundled store nothing is proxied: every response is written by the gateway
//! (its own answers, or the store's, called in process). Pingora's `HttpProxy` would
//! still build its proxy session for every request (cache and compression state,
//! module contexts) and run its proxy state machine, whose per-request future is
//! large enough that copying it into its box was the largest single item of the
//! gateway's profile. This app reads the request, hands it to
//! [`Proxy::respond`] — the very code `request_filter` runs under `HttpProxy`, which
//! stays the data plane in front of an upstream — logs it and returns the connection
//! for the next request, as `HttpProxy` does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use http::{Method, StatusCode};
use pingora::ErrorType;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::H2Options;
use pingora::server::ShutdownWatch;
use pingora::{Error, Result};
use tokio::sync::Notify;

use super::connections::{self, ConnectionLimits};
use super::errors::{Challenge, GatewayError};
use super::proxy::{Proxy, json_header};

/// HTTP/2 beside HTTP/1.1: h2c detection on plain listeners, and the stream limits.
pub struct H2Settings {
    pub server: HttpServerOptions,
    pub h2: H2Options,
}

/// The gateway over the bundled store as a pingora HTTP app.
pub struct Direct {
    proxy: Proxy,
    /// `None`: HTTP/1.1 only.
    http2: Option<H2Settings>,
    /// Set, and waiters woken, when the service shuts down: connections idle between
    /// requests close then instead of waiting out their keep-alive.
    shutting_down: AtomicBool,
    shutdown: Notify,
    /// The body and response timeouts of every request session.
    limits: ConnectionLimits,
}

impl Direct {
    pub fn new(proxy: Proxy, http2: Option<H2Settings>, limits: ConnectionLimits) -> Direct {
        Direct {
            proxy,
            http2,
            limits,
            shutting_down: AtomicBool::new(false),
            shutdown: Notify::new(),
        }
    }

    /// Reads the next request head; `Ok(false)` when the client closed the connection
    /// or the service is shutting down.
    async fn read_request(&self, session: &mut ServerSession) -> Result<bool> {
        let shutdown = self.shutdown.notified();
        tokio::pin!(shutdown);
        // Registered before the flag is read, so a shutdown in between is not missed.
        shutdown.as_mut().enable();
        if self.shutting_down.load(Ordering::Acquire) {
            return Ok(false);
        }
        tokio::select! {
            biased;
            read = session.read_request() => read,
            () = shutdown => Ok(false),
        }
    }

    /// Handles one request whose head has been read; whether the connection may be
    /// reused.
    async fn handle(&self, session: &mut ServerSession, shutdown: &ShutdownWatch) -> bool {
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        // As pingora's proxy: CONNECT changes the framing of the exchange; refuse it.
        if session.req_header().method == Method::CONNECT {
            if let Err(e) = session.respond_error(405).await {
                tracing::debug!(error = %e, "writing the CONNECT refusal");
            }
            return false;
        }
        let mut ctx = self.proxy.new_request();
        let error = match self.proxy.respond(session, &mut ctx).await {
            Ok(true) => None,
            // Only an upstream is proxied, and this app never has one.
            Ok(false) => Some(Error::explain(
                ErrorType::InternalError,
                "the bundled store has no upstream peer",
            )),
            Err(e) => Some(e),
        };
        let reuse = match &error {
            None => true,
            Some(e) => {
                self.proxy.fail(session, e, &mut ctx).await;
                false
            }
        };
        self.proxy.log(session, error.as_deref(), &ctx);
        reuse
    }

    /// Reads and answers one request; the connection when it may carry another.
    async fn serve(
        &self,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match self.read_request(&mut session).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                // A malformed head is the client's mistake: a 400 with the OCI error
                // JSON (pingora's proxy can only write a bare one); a broken
                // connection gets nothing.
                if matches!(e.etype(), ErrorType::InvalidHTTPHeader)
                    && let Err(e) = bad_request(&mut session, &e).await
                {
                    tracing::debug!(error = %e, "writing the bad-request response");
                }
                session.shutdown().await;
                return None;
            }
        }
        if !self.handle(&mut session, shutdown).await {
            session.shutdown().await;
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        session
            .finish()
            .await
            .ok()
            .flatten()
            .map(|stream| ReusedHttpStream::from_reusable_stream(stream, settings))
    }
}

#[async_trait]
impl HttpServerApp for Direct {
    /// Serves the connection's requests one after the other. Pingora would call this
    /// once per keep-alive request and box the returned future each time (copying it
    /// into the box); looping here boxes it once per connection.
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        loop {
            connections::prepare(&mut session, &self.limits);
            let reused = self.serve(session, shutdown).await?;
            // As pingora's own loop does between keep-alive requests.
            let (stream, settings) = reused.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.http2.as_ref().map(|h| &h.server)
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.http2.as_ref().map(|h| h.h2.clone())
    }

    async fn http_cleanup(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
    }
}

/// Answers a request head the HTTP parser refused (too many headers, a bad
/// `Content-Length`, garbage bytes) with the OCI error JSON. Nothing of the request is
/// known, so no challenge is offered.
async fn bad_request(session: &mut ServerSession, e: &pingora::Error) -> pingora::Result<()> {
    let reason = e
        .context
        .as_ref()
        .map_or_else(|| e.etype().as_str().to_owned(), ToString::to_string);
    let error = GatewayError::BadRequest(format!("malformed request: {reason}"));
    let challenge = Challenge {
        realm: String::new(),
        service: String::new(),
    };
    let response = error.to_response(&challenge);
    let header = json_header(StatusCode::BAD_REQUEST, response.body.len())?;
    session.write_error_response(header, response.body).await
}
