//! The in-process bridge to the bundled store: an authorized repository request runs
//! the store's HTTP API (`portcullis_storage::serve`) directly on the pingora session,
//! without a second HTTP hop. The request body streams from the client into the store
//! through a short queue and the response body streams back.

use std::io;
use std::pin::pin;
use std::sync::Arc;

use axum::body::{Body, HttpBody};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use http::{Method, header};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorType, Result};
use portcullis_storage::Registry;
use portcullis_storage::route::Route;
use tokio::sync::mpsc::Sender;

use super::proxy::{REQUEST_ID, RequestCtx, in_process_request, read_body, with_query};

/// Request body chunks (pingora reads up to 64 KiB each) queued between the client and
/// the in-process store: enough to keep both sides busy, small enough to bound memory.
const BODY_QUEUE: usize = 16;

/// Runs the bundled store's HTTP API on the request (whose path parses to `route` when
/// given) and writes its response.
/// A request body streams from the client into the store through a short queue, so
/// uploads are hashed and written once, in memory bounded by the queue; the response
/// body streams back the same way.
pub(super) async fn serve(
    session: &mut ServerSession,
    ctx: &RequestCtx,
    store: &Arc<Registry>,
    route: Option<Route>,
) -> Result<bool> {
    let mut request = in_process_request(session, Body::empty())?;
    // The store trusts the gateway's decision; it never sees the credentials.
    request.headers_mut().remove(header::AUTHORIZATION);
    if let Some(query) = &ctx.query {
        *request.uri_mut() = with_query(request.uri(), query)?;
    }
    let (response, body_read) = if ctx.has_body {
        let (tx, rx) = tokio::sync::mpsc::channel(BODY_QUEUE);
        *request.body_mut() =
            Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            }));
        let call = pin!(portcullis_storage::serve_route(store, route, request));
        let pump = pin!(pump_request_body(session, tx));
        match select(call, pump).await {
            // The store answered without reading the whole body (a refusal).
            Either::Left((response, _)) => (response, false),
            Either::Right((pumped, call)) => {
                // On a client error the store sees the body fail and cleans up first.
                let response = call.await;
                pumped?;
                (response, true)
            }
        }
    } else {
        (
            portcullis_storage::serve_route(store, route, request).await,
            true,
        )
    };
    if !body_read {
        // The rest of the request body is not worth draining.
        session.set_keepalive(None);
    }
    let (parts, body) = response.into_parts();
    let mut header = ResponseHeader::from(parts);
    if !header.headers.contains_key(header::CONTENT_LENGTH)
        && let Some(len) = HttpBody::size_hint(&body).exact()
    {
        header.insert_header(header::CONTENT_LENGTH, len)?;
    }
    header.insert_header(REQUEST_ID, &*ctx.request_id)?;
    // `Date` (and `Connection`) are set by pingora as it writes the header.
    if session.req_header().method == Method::HEAD || HttpBody::is_end_stream(&body) {
        session.write_response_header(Box::new(header)).await?;
        return Ok(true);
    }
    session.write_response_header(Box::new(header)).await?;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk
            .map_err(|e| Error::because(ErrorType::InternalError, "store response body", e))?;
        session.write_response_body(chunk, false).await?;
    }
    session.write_response_body(Bytes::new(), true).await?;
    Ok(true)
}

/// Feeds the client's request body to the store; a client error reaches the store as a
/// body error (a partial chunk is never taken for a whole one). Answers `100 Continue`
/// to a client that waits for it.
async fn pump_request_body(
    session: &mut ServerSession,
    tx: Sender<io::Result<Bytes>>,
) -> Result<()> {
    let expects_continue = session
        .req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session.write_continue_response().await?;
    }
    loop {
        match read_body(session).await {
            // HTTP/2 may end the body with an empty DATA frame: nothing to pass on.
            Ok(Some(chunk)) if chunk.is_empty() => {}
            Ok(Some(chunk)) => {
                if tx.send(Ok(chunk)).await.is_err() {
                    // The store stopped reading: it has its answer.
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(e) => {
                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                return Err(e);
            }
        }
    }
}
