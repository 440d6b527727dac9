//! The pingora proxy phases (`ProxyHttp`) in front of an upstream registry: the request
//! is answered or refused in `request_filter` by the shared handling
//! ([`Proxy::respond`]); an authorized repository request goes on to the upstream peer
//! with `X-Forwarded-{For,Proto,Host}` and without `Authorization`. Absolute
//! `Location`s naming the upstream come back relative, so clients follow them through
//! the gateway. Requests with a body are never retried.

use std::time::Duration;

use async_trait::async_trait;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::protocols::TcpKeepalive;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::backend::{Backend, PeerAddress};
use super::proxy::{
    API_VERSION, API_VERSION_HEADER, Proxy, RequestCtx, client_ip, host, with_query,
};

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    /// No modules: pingora's default adds a (disabled) compression module whose
    /// per-request context and filters cost time on every request for nothing.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        self.new_request()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.respond(session.as_downstream_mut(), ctx).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Only an upstream is proxied: `forward` serves the bundled store in process.
        let Some(PeerAddress { addr, tls, sni }) = self.gw.backend.peer() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "the bundled store has no upstream peer",
            ));
        };
        let mut peer = HttpPeer::new(addr.as_str(), *tls, sni.clone());
        peer.options.tcp_keepalive = Some(TcpKeepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 6,
            #[cfg(target_os = "linux")]
            user_timeout: Duration::from_secs(0),
        });
        // No read/write timeouts: a multi-GB blob may legitimately take a long time,
        // and pingora applies them per operation across the whole exchange. A dead
        // upstream is noticed by connect timeout, TCP keepalive or a closed socket.
        peer.options.connection_timeout = Some(Duration::from_secs(10));
        peer.options.total_connection_timeout = Some(Duration::from_secs(20));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let forwarded_for = match (
            upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok()),
            client_ip(session.as_downstream()),
        ) {
            (Some(prior), Some(ip)) => Some(format!("{prior}, {ip}")),
            (None, Some(ip)) => Some(ip.to_string()),
            (_, None) => None,
        };
        if let Some(value) = forwarded_for {
            upstream.insert_header("x-forwarded-for", value)?;
        }
        upstream.insert_header("x-forwarded-proto", self.scheme)?;
        if let Some(host) = host(session.as_downstream()).map(str::to_owned) {
            upstream.insert_header("x-forwarded-host", host)?;
        }
        if let Some(host) = self.gw.backend.host_header() {
            upstream.insert_header(header::HOST, host)?;
        }
        upstream.remove_header(&header::AUTHORIZATION);
        if let Some(query) = &ctx.query {
            let uri = with_query(&upstream.uri, query)?;
            upstream.set_uri(uri);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Backend::Upstream { base, .. } = &self.gw.backend
            && let Some(location) = response
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| relative_location(v, base))
        {
            response.insert_header(header::LOCATION, location)?;
        }
        // Distribution sends it already; pingora's insert re-parses the name and
        // re-indexes the header map, a cost worth skipping on every proxied response.
        if response
            .headers
            .get(API_VERSION_HEADER)
            .is_none_or(|v| v.as_bytes() != API_VERSION.as_bytes())
        {
            response.insert_header(API_VERSION_HEADER, API_VERSION)?;
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        // Never replay a body (pingora would from its retry buffer).
        if ctx.has_body || !session.req_header().method.is_idempotent() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        self.fail(session.as_downstream_mut(), e, ctx).await
    }

    /// A client's own mistake (a malformed body, a client gone midway) is not the
    /// gateway's error: the access line records it, at info.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        e.esource() == &ErrorSource::Downstream
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.log(session.as_downstream(), e, ctx);
    }
}

/// `location` made relative when it is an absolute URL on the upstream `base`
/// (`http://host:port`); `None` leaves it as it is.
fn relative_location(location: &str, base: &str) -> Option<String> {
    let rest = location
        .get(..base.len())
        .filter(|prefix| prefix.eq_ignore_ascii_case(base))?;
    let path = location.get(rest.len()..)?;
    if path.is_empty() {
        Some("/".to_owned())
    } else if path.starts_with('/') || path.starts_with('?') {
        Some(path.to_owned())
    } else {
        // `http://host:5000` must not match `http://host:50001/…`.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_locations_become_relative() {
        let base = "http://127.0.0.1:5001";
        assert_eq!(
            relative_location(
                "http://127.0.0.1:5001/v2/a/blobs/uploads/u?_state=xyz",
                base
            )
            .as_deref(),
            Some("/v2/a/blobs/uploads/u?_state=xyz")
        );
        assert_eq!(
            relative_location("HTTP://127.0.0.1:5001/v2/", base).as_deref(),
            Some("/v2/")
        );
        assert_eq!(relative_location("http://127.0.0.1:50011/v2/", base), None);
        assert_eq!(relative_location("/v2/a/blobs/uploads/u", base), None);
        assert_eq!(relative_location("https://cdn.example/blob", base), None);
    }
}
