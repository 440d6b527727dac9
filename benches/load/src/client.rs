//! A minimal keep-alive client on hyper's connection API: one connection per task and
//! no pool, so the driver's own cost per request stays small and the same for every
//! target. HTTP/1.1, or HTTP/2 by prior knowledge (h2c) for the gateway's h2 rows, where
//! one connection may also be shared by several tasks as concurrent streams.

use std::net::SocketAddr;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Where requests go and the credentials every registry request carries.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    /// `Authorization` for registry requests (a bearer token for the gateway).
    pub auth: Option<HeaderValue>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Result<Endpoint> {
        Ok(Endpoint {
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            auth: None,
        })
    }

    /// A request with `Host` and the endpoint's `Authorization` (unless `headers` has one).
    pub fn request(
        &self,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(body))?;
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        if let Some(auth) = &self.auth {
            h.insert(AUTHORIZATION, auth.clone());
        }
        for (name, value) in headers {
            h.insert(name.clone(), value.clone());
        }
        Ok(req)
    }
}

/// One request repeated by the rate phases.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub expect: StatusCode,
}

impl Call {
    pub fn new(method: Method, path: String, expect: StatusCode) -> Call {
        Call {
            method,
            path,
            headers: HeaderMap::new(),
            expect,
        }
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> Result<Call> {
        self.headers.insert(name, HeaderValue::from_str(value)?);
        Ok(self)
    }
}

/// The protocol of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 without TLS, by prior knowledge.
    H2c,
}

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One keep-alive connection; reopened transparently when the server closes it.
pub struct Conn {
    endpoint: Endpoint,
    send: Sender,
}

impl Conn {
    pub async fn open(endpoint: &Endpoint) -> Result<Conn> {
        Conn::open_with(endpoint, Protocol::Http1).await
    }

    pub async fn open_with(endpoint: &Endpoint, protocol: Protocol) -> Result<Conn> {
        let stream = TcpStream::connect(endpoint.addr)
            .await
            .with_context(|| format!("connecting to {}", endpoint.addr))?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        let send = match protocol {
            Protocol::Http1 => {
                let (send, conn) = http1::handshake(io).await?;
                tokio::spawn(async move {
                    // A connection error surfaces on the next send; nothing to report here.
                    let _ = conn.await;
                });
                Sender::Http1(send)
            }
            Protocol::H2c => {
                let (send, conn) = http2::Builder::new(TokioExecutor::new())
                    // Windows as large as the gateway's, so a blob is not window-bound.
                    .initial_stream_window_size(1 << 20)
                    .initial_connection_window_size(8 << 20)
                    .handshake(io)
                    .await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H2(send)
            }
        };
        Ok(Conn {
            endpoint: endpoint.clone(),
            send,
        })
    }

    /// Another handle on the same HTTP/2 connection (a concurrent stream); `None` for
    /// HTTP/1.1, which has one request at a time.
    pub fn share(&self) -> Option<Conn> {
        match &self.send {
            Sender::H2(send) => Some(Conn {
                endpoint: self.endpoint.clone(),
                send: Sender::H2(send.clone()),
            }),
            Sender::Http1(_) => None,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub async fn send(&mut self, mut req: Request<Full<Bytes>>) -> Result<Response<Incoming>> {
        match &mut self.send {
            Sender::Http1(send) => {
                if send.is_closed() || send.ready().await.is_err() {
                    *self = Conn::open(&self.endpoint).await?;
                }
            }
            Sender::H2(send) => {
                if send.is_closed() || send.ready().await.is_err() {
                    *self = Conn::open_with(&self.endpoint, Protocol::H2c).await?;
                }
                // HTTP/2 carries the scheme and authority as pseudo-headers.
                if req.uri().scheme().is_none() {
                    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    *req.uri_mut() = format!("http://{}{path}", self.endpoint.addr).parse()?;
                }
                req.headers_mut().remove(HOST);
            }
        }
        Ok(match &mut self.send {
            Sender::Http1(send) => send.send_request(req).await?,
            Sender::H2(send) => send.send_request(req).await?,
        })
    }

    /// Sends `call` and drains the body; the number of body bytes, or an error for an
    /// unexpected status.
    pub async fn call(&mut self, call: &Call) -> Result<u64> {
        let req =
            self.endpoint
                .request(call.method.clone(), &call.path, &call.headers, Bytes::new())?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = drain(resp).await?;
        if status != call.expect {
            return Err(anyhow!("{} {} answered {status}", call.method, call.path));
        }
        Ok(bytes)
    }
}

/// Reads a body to its end without keeping it; its length.
pub async fn drain(resp: Response<Incoming>) -> Result<u64> {
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

/// Reads a whole body.
pub async fn collect(resp: Response<Incoming>) -> Result<Bytes> {
    Ok(resp.into_body().collect().await?.to_bytes())
}
