//! A minimal HTTP/1.1 keep-alive client on hyper's connection API: one connection per
//! task and no pool, so the driver's own cost per request stays small and the same for
//! every target.

use std::net::SocketAddr;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
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

/// One keep-alive connection; reopened transparently when the server closes it.
pub struct Conn {
    endpoint: Endpoint,
    send: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(endpoint: &Endpoint) -> Result<Conn> {
        let stream = TcpStream::connect(endpoint.addr)
            .await
            .with_context(|| format!("connecting to {}", endpoint.addr))?;
        stream.set_nodelay(true)?;
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // A connection error surfaces on the next send; nothing to report here.
            let _ = conn.await;
        });
        Ok(Conn {
            endpoint: endpoint.clone(),
            send,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>> {
        if self.send.is_closed() || self.send.ready().await.is_err() {
            *self = Conn::open(&self.endpoint).await?;
        }
        Ok(self.send.send_request(req).await?)
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
