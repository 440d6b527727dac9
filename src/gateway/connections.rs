//! Connection-level abuse limits, owned here for every listener (plain and TLS, the
//! bundled store's [`super::direct`] app and the `--upstream` proxy alike):
//!
//! - a **head deadline**: a request head must be complete `header_timeout` after its
//!   first byte (after the connection opened, for the first request), so a client
//!   dripping bytes cannot hold a connection;
//! - a **keep-alive idle timeout** between requests;
//! - a **head size limit**, answered `431` with the OCI error JSON;
//! - a **per-address connection cap** (the TCP peer; trusted proxies are exempt, their
//!   clients are behind them), answered `429`;
//! - a **connection cap** below the file-descriptor limit: at the cap the oldest idle
//!   connection is closed to make room, so `accept()` never starts failing with
//!   `EMFILE` while attackers hold descriptors; with none idle the newcomer is refused.
//!
//! Pingora reads a request head with a per-read timeout only (a byte every few seconds
//! resets it) and keeps HTTP/1.1 connections alive forever, so [`Connections`] wraps
//! each accepted stream in a [`Guarded`] stream that buffers a request head until it is
//! complete, under the deadline, before the HTTP parser sees any of it. A client that
//! gives up (or is timed out) half-way therefore looks to pingora like one that closed
//! an idle connection: no ERROR line per dropped connection, one debug line here.
//! After the head, reads pass through; the request body and the response are bounded by
//! pingora's per-operation read and write timeouts ([`prepare`]), and the app marks the
//! start of the next request on the connection with [`prepare`] too.
//!
//! HTTP/2 connections (ALPN `h2`, or the h2c preface) pass through after the first
//! bytes: their idle timeout is pingora's `h2_idle_timeout`.
//!
//! A TLS handshake the client abandons happens before any app sees the connection, and
//! pingora's listener logs it at ERROR; [`HandshakeLog`] turns those lines into debug
//! lines here too.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use futures_util::task::AtomicWaker;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use super::errors::{Challenge, GatewayError};
use super::forwarded::TrustedProxies;
use super::proxy::{API_VERSION, API_VERSION_HEADER};

/// Descriptors kept free below `RLIMIT_NOFILE` for everything that is not a client
/// connection (blob files, the databases, upstream connections, the listeners).
const DESCRIPTOR_RESERVE: usize = 256;
/// Headers a request head may have (pingora's parser allows as many).
const MAX_HEADERS: usize = 256;
/// Bytes a read of a request head asks for at least.
const HEAD_READ: usize = 4096;
/// Longest a refusal written before any request was read may take to send.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection limits (see the module doc); `[limits]` in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request head must be complete this long after its first byte.
    pub header_timeout: Duration,
    /// A connection idle between requests this long is closed.
    pub keepalive_timeout: Duration,
    /// The longest a read of the request body or a write of the response may wait.
    pub body_timeout: Duration,
    /// Larger request heads are refused (`431`).
    pub max_header_bytes: usize,
    /// Open connections per client address (trusted proxies exempt).
    pub max_connections_per_client: usize,
    /// Open connections in all; `None`: the descriptor limit less a reserve.
    pub max_connections: Option<usize>,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_connections_per_client: 256,
            max_connections: None,
        }
    }
}

/// The connection cap that keeps `accept()` clear of `EMFILE`: the soft descriptor
/// limit (from `/proc/self/limits`) less [`DESCRIPTOR_RESERVE`], at least a quarter of
/// it; unlimited where the limit cannot be read. Shedding happens when a connection's
/// task runs, after pingora accepted it: a burst larger than the reserve, accepted
/// before those tasks run, can still meet `EMFILE` for a moment (pingora logs it and
/// accepts again); admitting in pingora's accept loop would need its connection filter.
fn descriptor_cap() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<usize>().ok())
        });
    match soft {
        Some(soft) => soft.saturating_sub(DESCRIPTOR_RESERVE).max(soft / 4).max(1),
        None => usize::MAX,
    }
}

/// One open connection as the [`Tracker`] sees it.
#[derive(Debug)]
struct Conn {
    /// Milliseconds since the tracker started at which it went idle; `u64::MAX` busy.
    idle_since: AtomicU64,
    /// Set to close it when idle (the connection cap needs room).
    shed: AtomicBool,
    /// Wakes its reader when shed.
    waker: AtomicWaker,
    /// Wakes pingora's h2c peek at the start of a connection when shed.
    shed_notify: tokio::sync::Notify,
    /// Set by [`prepare`]: the next read starts a new request.
    next_request: AtomicBool,
}

const BUSY: u64 = u64::MAX;

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
    per_client: HashMap<IpAddr, usize>,
}

/// The open connections of every listener (they share the descriptor budget).
#[derive(Debug)]
pub struct Tracker {
    limits: ConnectionLimits,
    max_connections: usize,
    trusted: TrustedProxies,
    epoch: Instant,
    registry: Mutex<Registry>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    PerClient(usize),
    Full(usize),
}

/// A connection's place in the [`Tracker`], given back when it is dropped.
#[derive(Debug)]
struct Admission {
    tracker: Arc<Tracker>,
    id: u64,
    /// The address counted against the per-client cap.
    client: Option<IpAddr>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut registry = self.tracker.lock();
        registry.open.remove(&self.id);
        if let Some(ip) = self.client
            && let Some(n) = registry.per_client.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                registry.per_client.remove(&ip);
            }
        }
    }
}

impl Tracker {
    pub fn new(limits: ConnectionLimits, trusted: TrustedProxies) -> Arc<Tracker> {
        let max_connections = limits.max_connections.unwrap_or_else(descriptor_cap);
        tracing::debug!(max_connections, "connection cap");
        Arc::new(Tracker {
            limits,
            max_connections,
            trusted,
            epoch: Instant::now(),
            registry: Mutex::new(Registry::default()),
        })
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The registry's counts stay consistent under a panic elsewhere (none here).
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(BUSY - 1)
    }

    /// Admits a connection from `peer`, shedding the oldest idle connection when the
    /// cap is reached.
    fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<(Admission, Arc<Conn>), Refusal> {
        let client = peer.filter(|ip| !self.trusted.trusts(*ip));
        let mut registry = self.lock();
        if let Some(ip) = client
            && registry.per_client.get(&ip).copied().unwrap_or(0)
                >= self.limits.max_connections_per_client
        {
            return Err(Refusal::PerClient(self.limits.max_connections_per_client));
        }
        let shedding = registry
            .open
            .values()
            .filter(|c| c.shed.load(Ordering::Acquire))
            .count();
        if registry.open.len() - shedding >= self.max_connections {
            let oldest = registry
                .open
                .values()
                .filter(|c| !c.shed.load(Ordering::Acquire))
                .filter(|c| c.idle_since.load(Ordering::Acquire) != BUSY)
                .min_by_key(|c| c.idle_since.load(Ordering::Acquire));
            match oldest {
                Some(victim) => {
                    victim.shed.store(true, Ordering::Release);
                    victim.waker.wake();
                    victim.shed_notify.notify_one();
                }
                None => return Err(Refusal::Full(self.max_connections)),
            }
        }
        let id = registry.next_id;
        registry.next_id += 1;
        let conn = Arc::new(Conn {
            idle_since: AtomicU64::new(self.now_ms()),
            shed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            shed_notify: tokio::sync::Notify::new(),
            next_request: AtomicBool::new(false),
        });
        registry.open.insert(id, Arc::clone(&conn));
        if let Some(ip) = client {
            *registry.per_client.entry(ip).or_insert(0) += 1;
        }
        drop(registry);
        Ok((
            Admission {
                tracker: Arc::clone(self),
                id,
                client,
            },
            conn,
        ))
    }
}

/// Sets a request's body and response timeouts, and tells the connection's guard that
/// the next bytes read start a new request head (the app calls it for every request
/// session it makes on a connection).
pub fn prepare(session: &mut ServerSession, limits: &ConnectionLimits) {
    session.set_read_timeout(Some(limits.body_timeout));
    session.set_write_timeout(Some(limits.body_timeout));
    if let Some(guarded) = session
        .stream()
        .and_then(|s| (**s).as_any().downcast_ref::<Guarded>())
    {
        guarded.conn.next_request.store(true, Ordering::Release);
    }
}

/// The pingora app of a listener: admits each accepted connection, wraps its stream
/// in a [`Guarded`] one and hands it to the HTTP app `A`.
pub struct Connections<A> {
    app: Arc<A>,
    tracker: Arc<Tracker>,
}

impl<A> Connections<A> {
    pub fn new(app: A, tracker: Arc<Tracker>) -> Connections<A> {
        Connections {
            app: Arc::new(app),
            tracker,
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Connections<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| match d.peer_addr() {
                Some(SocketAddr::Inet(addr)) => Some(addr.ip()),
                _ => None,
            });
        let (admission, conn) = match self.tracker.admit(peer) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                let client = peer.map(tracing::field::display);
                tracing::debug!(client, ?refusal, "connection refused");
                refuse(&mut stream, refusal).await;
                return None;
            }
        };
        let guarded = Guarded::new(stream, conn, admission);
        // Pingora's HTTP handling (h2c detection, HTTP/2, the HTTP/1.1 keep-alive
        // loop) runs on the guarded stream; it keeps the connection until it closes.
        let reused = ServerApp::process_new(&self.app, Box::new(guarded), shutdown).await;
        // A stream handed back would be admitted a second time: close it instead.
        drop(reused);
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.app).await;
    }
}

/// An HTTP app that [`prepare`]s every request session before `A` reads it (pingora's
/// proxy makes one session per keep-alive request and cannot be told to).
pub struct Prepared<A> {
    app: Arc<A>,
    limits: ConnectionLimits,
}

impl<A> Prepared<A> {
    pub fn new(app: A, limits: ConnectionLimits) -> Prepared<A> {
        Prepared {
            app: Arc::new(app),
            limits,
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for Prepared<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        prepare(&mut session, &self.limits);
        self.app.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.app.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.app.server_options()
    }

    async fn http_cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

/// Writes the refusal of a connection that was not admitted (HTTP/1.1 only: an h2
/// client would not understand it and is just closed).
async fn refuse(stream: &mut Stream, refusal: Refusal) {
    if !matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        let error = match refusal {
            Refusal::PerClient(n) => GatewayError::TooManyRequests {
                reason: format!("more than {n} open connections from this address"),
                retry_after: 1,
            },
            Refusal::Full(n) => GatewayError::TooManyRequests {
                reason: format!("the gateway has {n} connections open, none idle"),
                retry_after: 1,
            },
        };
        let response = raw_response(&error);
        let write = async {
            stream.write_all(&response).await?;
            stream.flush().await
        };
        if let Err(e) = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
        {
            tracing::debug!(error = %e, "writing the connection refusal");
        }
    }
    Shutdown::shutdown(&mut **stream).await;
}

/// A complete HTTP/1.1 response (closing the connection) for a refusal written before
/// any request was parsed.
fn raw_response(error: &GatewayError) -> Vec<u8> {
    let challenge = Challenge {
        realm: String::new(),
        service: String::new(),
    };
    let response = error.to_response(&challenge);
    let status = response.status;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n{API_VERSION_HEADER}: {API_VERSION}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        response.body.len()
    );
    if let Some(seconds) = response.retry_after {
        head.push_str(&format!("retry-after: {seconds}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&response.body);
    bytes
}

/// Where a [`Guarded`] stream is in the exchange.
enum Phase {
    /// Buffering a request head until it is complete or the deadline passes.
    Head {
        /// The connection's first request (its deadline runs from the accept).
        first: bool,
        /// The head started arriving and [`Guarded::deadline`] is now its deadline.
        timed: bool,
    },
    /// Handing a complete head (and whatever followed it) to the HTTP parser; then
    /// HTTP/2 passes through (`h2`) or the request goes on.
    Deliver { h2: bool },
    /// Within a request: reads pass through until [`prepare`] marks the next one.
    Request,
    /// HTTP/2: reads pass through for good.
    Passthrough,
    /// Writing the `431` refusal of an oversized head; then end of stream.
    Refuse { response: Vec<u8>, written: usize },
    /// End of stream for the HTTP parser (timed out, shed, refused or closed).
    Closed,
}

/// An accepted stream under the connection limits (see the module doc).
pub struct Guarded {
    inner: Stream,
    conn: Arc<Conn>,
    /// Held for the connection's lifetime; dropping it frees its place.
    _admission: Admission,
    phase: Phase,
    head: BytesMut,
    /// When the current wait (keep-alive, or a head arriving) ends.
    deadline: Instant,
    /// One timer for the connection's life, never later than `deadline`: moving it costs
    /// a lock of the timer wheel, so a later `deadline` only takes effect when the timer
    /// fires early and is re-armed (at most once per timeout, not once per request).
    timer: Pin<Box<Sleep>>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Guarded {
    fn new(inner: Stream, conn: Arc<Conn>, admission: Admission) -> Guarded {
        let phase = if matches!(inner.selected_alpn_proto(), Some(ALPN::H2)) {
            conn.idle_since.store(BUSY, Ordering::Release);
            Phase::Passthrough
        } else {
            Phase::Head {
                first: true,
                timed: true,
            }
        };
        let deadline = Instant::now() + admission.tracker.limits.header_timeout;
        Guarded {
            inner,
            conn,
            _admission: admission,
            phase,
            head: BytesMut::new(),
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline.into())),
        }
    }

    fn limits(&self) -> &ConnectionLimits {
        &self._admission.tracker.limits
    }

    /// Waiting for the next request on a kept-alive connection.
    fn await_next_request(&mut self) {
        let tracker = &self._admission.tracker;
        let now = Instant::now();
        self.conn
            .idle_since
            .store(tracker.ms_at(now), Ordering::Release);
        self.deadline = now + tracker.limits.keepalive_timeout;
        self.phase = Phase::Head {
            first: false,
            timed: false,
        };
    }

    /// Whether the current wait's deadline has passed; otherwise the timer is armed to
    /// wake the task by then.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timer.deadline() > self.deadline.into() {
            self.timer.as_mut().reset(self.deadline.into());
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= self.deadline {
                return true;
            }
            // Fired at an earlier wait's deadline: re-armed for this one's.
            self.timer.as_mut().reset(self.deadline.into());
        }
        false
    }

    /// Whether `head` holds a complete request head (or one the HTTP parser will refuse
    /// at once), `new` being how many bytes the last read added.
    fn head_complete(head: &[u8], new: usize) -> bool {
        // The usual head ends in CRLF CRLF after a request line: found with one scan of
        // the new bytes. Anything else (bare LFs, blank lines before the request line, a
        // malformed or partial head) is decided by the parser itself.
        let from = head.len().saturating_sub(new + 3);
        if let Some(end) = memchr::memmem::find(&head[from..], b"\r\n\r\n")
            && head[..from + end].iter().any(|&b| b != b'\r' && b != b'\n')
        {
            return true;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        // A malformed head goes to pingora as well, which answers 400.
        !matches!(
            httparse::Request::new(&mut headers).parse(head),
            Ok(httparse::Status::Partial)
        )
    }

    /// Ends the stream for the HTTP parser, with a debug line saying why.
    fn close(&mut self, why: &'static str) -> Poll<io::Result<()>> {
        tracing::debug!(reason = why, "closing a client connection");
        self.phase = Phase::Closed;
        Poll::Ready(Ok(()))
    }

    /// Reads into the head buffer until the head is complete; `Ready` when the phase
    /// changed or the stream ended.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Registered before the flag is read, so a shed in between is not missed.
        self.conn.waker.register(cx.waker());
        if self.head.is_empty() && self.conn.shed.load(Ordering::Acquire) {
            return self.close("idle connection shed at the connection cap");
        }
        loop {
            let before = self.head.len();
            self.head.reserve(HEAD_READ);
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.head) {
                Poll::Ready(Err(e)) => {
                    if !self.head.is_empty() {
                        tracing::debug!(error = %e, "client connection failed mid-head");
                    }
                    self.phase = Phase::Closed;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(0)) => {
                    return if self.head.is_empty() {
                        self.phase = Phase::Closed;
                        Poll::Ready(Ok(()))
                    } else {
                        self.close(
                            "client closed the connection before its request head was complete",
                        )
                    };
                }
                Poll::Ready(Ok(n)) => {
                    if before == 0 {
                        self.conn.idle_since.store(BUSY, Ordering::Release);
                    }
                    if self.head.starts_with(b"PRI * HTTP/2.0") {
                        // The h2c preface: HTTP/2 from here on.
                        self.phase = Phase::Deliver { h2: true };
                        return Poll::Ready(Ok(()));
                    }
                    if Self::head_complete(&self.head, n) {
                        self.phase = Phase::Deliver { h2: false };
                        return Poll::Ready(Ok(()));
                    }
                    let max = self.limits().max_header_bytes;
                    if self.head.len() > max {
                        tracing::debug!(max, "request head too large");
                        self.phase = Phase::Refuse {
                            response: raw_response(&GatewayError::HeadTooLarge(max)),
                            written: 0,
                        };
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Pending => {
                    let Phase::Head { first, timed } = &mut self.phase else {
                        return Poll::Pending;
                    };
                    let first = *first;
                    if !self.head.is_empty() && !*timed {
                        // A head arriving in pieces: from now on the header timeout
                        // bounds it instead of the keep-alive one.
                        *timed = true;
                        self.deadline = Instant::now() + self.limits().header_timeout;
                    }
                    if !self.poll_deadline(cx) {
                        return Poll::Pending;
                    }
                    let why = match (self.head.is_empty(), first) {
                        (true, false) => "keep-alive idle timeout",
                        (true, true) => "no request within the header timeout",
                        (false, _) => "request head not complete within the header timeout",
                    };
                    return self.close(why);
                }
            }
        }
    }

    /// Writes the refusal of an oversized head; `Ready` once it is out.
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Phase::Refuse { response, written } = &mut self.phase else {
            return Poll::Ready(Ok(()));
        };
        while *written < response.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &response[*written..]) {
                Poll::Ready(Ok(0)) => break,
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "writing the head-too-large refusal");
                    break;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                self.phase = Phase::Closed;
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &this.phase {
                Phase::Passthrough => return Pin::new(&mut this.inner).poll_read(cx, out),
                Phase::Request => {
                    if this.conn.next_request.swap(false, Ordering::AcqRel) {
                        this.await_next_request();
                        continue;
                    }
                    return Pin::new(&mut this.inner).poll_read(cx, out);
                }
                Phase::Deliver { h2 } => {
                    let h2 = *h2;
                    let n = out.remaining().min(this.head.len());
                    out.put_slice(&this.head[..n]);
                    this.head.advance(n);
                    if this.head.is_empty() {
                        this.phase = if h2 {
                            Phase::Passthrough
                        } else {
                            // The session reading this head was prepared already.
                            this.conn.next_request.store(false, Ordering::Release);
                            Phase::Request
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
                // Ready: the phase moved on (deliver, refuse, closed).
                Phase::Head { .. } => match this.poll_head(cx) {
                    Poll::Ready(Ok(())) => {}
                    other => return other,
                },
                Phase::Refuse { .. } => match this.poll_refuse(cx) {
                    Poll::Ready(_) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Guarded {
    /// Pingora peeks for the h2c preface before reading anything: bounded by the
    /// header timeout like the head itself, and ended when the connection is shed.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let timeout = tokio::time::sleep(self.limits().header_timeout);
        let why = tokio::select! {
            peeked = self.inner.try_peek(buf) => return peeked,
            () = timeout => "request head not complete within the header timeout",
            () = self.conn.shed_notify.notified() => "idle connection shed at the connection cap",
        };
        tracing::debug!(reason = why, "closing a client connection");
        Err(io::ErrorKind::TimedOut.into())
    }
}

/// Where pingora's listener logs (through the `log` crate) a TLS handshake that failed or
/// timed out.
const PINGORA_LISTENER: &str = "pingora_core::services::listening";

/// A `tracing` layer that drops pingora's ERROR line for an abandoned TLS handshake (a
/// port scan, a load balancer's TCP check, a client that distrusts the certificate: the
/// client's doing, one per connection) and logs it as a debug line of this module, like
/// every other connection dropped before a request. Other pingora errors pass.
pub struct HandshakeLog;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for HandshakeLog {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if *event.metadata().level() != tracing::Level::ERROR {
            return true;
        }
        // A `log` record comes with the target "log"; its own is a field.
        let mut fields = LogFields::default();
        event.record(&mut fields);
        let from_listener = event.metadata().target() == PINGORA_LISTENER
            || fields.target.as_deref() == Some(PINGORA_LISTENER);
        match fields.message {
            Some(line) if from_listener && line.starts_with("Downstream handshake") => {
                tracing::debug!(error = %line, "tls handshake not completed");
                false
            }
            _ => true,
        }
    }
}

/// The message and the `log` target of an event.
#[derive(Default)]
struct LogFields {
    message: Option<String>,
    target: Option<String>,
}

impl tracing::field::Visit for LogFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.message = Some(value.to_owned()),
            "log.target" => self.target = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = Some(format!("{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_complete_http_responses_with_oci_json() {
        let bytes = raw_response(&GatewayError::HeadTooLarge(1024));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["errors"][0]["code"], "SIZE_INVALID");
        let text = String::from_utf8(raw_response(&GatewayError::TooManyRequests {
            reason: "x".into(),
            retry_after: 3,
        }))
        .unwrap();
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(text.contains("retry-after: 3\r\n"));
    }

    #[test]
    fn a_head_is_complete_at_its_blank_line_whatever_the_reads() {
        let head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(Guarded::head_complete(head, head.len()));
        // The blank line split across reads.
        assert!(Guarded::head_complete(head, 1));
        assert!(!Guarded::head_complete(&head[..head.len() - 1], 4));
        // Bare LFs, as httparse (and pingora) take them.
        assert!(Guarded::head_complete(b"GET / HTTP/1.1\nHost: x\n\n", 3));
        // Blank lines before the request line are no head.
        assert!(!Guarded::head_complete(b"\r\n\r\nGET / HTT", 12));
        // Garbage goes to the parser at once, which answers 400.
        assert!(Guarded::head_complete(b"\x00\x01zz", 4));
    }

    #[test]
    fn the_descriptor_cap_stays_below_the_limit() {
        let cap = descriptor_cap();
        assert!(cap >= 1);
    }
}
