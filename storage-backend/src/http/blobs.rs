//! Blob GET/HEAD (with RFC 9110 single `Range`) and DELETE.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use tokio_util::io::ReaderStream;

use super::{build, header_str};
use crate::errcode::OciError;
use crate::error::StorageError;
use crate::names::Digest;
use crate::registry::Registry;

/// Bytes read from a blob file per chunk of a GET: each read is one trip to the blocking
/// pool, so large chunks (1 MiB: ~1000 trips per GiB instead of ~16000 at 64 KiB) keep
/// a download at disk/socket speed while memory per download stays small.
const READ_CHUNK: usize = 1024 * 1024;

/// What a `Range` header asks of a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole blob (no header, a malformed one, or several ranges,
    /// which RFC 9110 allows a server to ignore).
    Full,
    /// Inclusive byte range.
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n` against `size`.
pub fn parse_range(value: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match num(b) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if size > 0 => RangeRequest::Part(size.saturating_sub(n), size - 1),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        (false, _) => {
            let Some(start) = num(a) else {
                return RangeRequest::Full;
            };
            let end = if b.is_empty() { Some(u64::MAX) } else { num(b) };
            match end {
                None => RangeRequest::Full,
                Some(end) if end < start => RangeRequest::Full,
                Some(_) if start >= size => RangeRequest::Unsatisfiable,
                Some(end) => RangeRequest::Part(start, end.min(size - 1)),
            }
        }
        (true, true) => RangeRequest::Full,
    }
}

pub(super) async fn get(
    reg: &Arc<Registry>,
    name: &str,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, StorageError> {
    let size = reg.blob_size(name, digest, head).await?;
    // Only after the repository check above: the URL is a bearer credential for the bytes.
    if !head && let Some(url) = reg.blob_redirect(digest).await? {
        return build(
            Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, url)
                .header("docker-content-digest", digest.as_str())
                .header(header::CONTENT_LENGTH, 0),
            Body::empty(),
        );
    }
    let range = if head {
        RangeRequest::Full
    } else {
        parse_range(header_str(headers, header::RANGE), size)
    };
    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeRequest::Unsatisfiable => {
            let mut resp = OciError::from(StorageError::RangeUnsatisfiable(
                header_str(headers, header::RANGE)
                    .unwrap_or_default()
                    .to_owned(),
            ))
            .into_response();
            if let Ok(v) = format!("bytes */{size}").parse() {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header("docker-content-digest", digest.as_str())
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "max-age=31536000");
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", start, start + len - 1),
        );
    }
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(ReaderStream::with_capacity(
            reg.read_blob(digest, start, len).await?,
            READ_CHUNK,
        ))
    };
    build(b, body)
}

pub(super) async fn delete(
    reg: &Arc<Registry>,
    name: &str,
    digest: &Digest,
) -> Result<Response, StorageError> {
    reg.delete_blob(name, digest).await?;
    build(
        Response::builder()
            .status(StatusCode::ACCEPTED)
            .header(header::CONTENT_LENGTH, 0),
        Body::empty(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Part(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Full);
    }
}
