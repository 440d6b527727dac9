//! Manifest GET/HEAD/PUT/DELETE by tag or digest, and whole-repository DELETE.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode, header};

use super::{Query, build, header_str};
use crate::error::StorageError;
use crate::names::Reference;
use crate::registry::Registry;

pub(super) async fn get(
    reg: &Arc<Registry>,
    name: &str,
    reference: &Reference,
    head: bool,
) -> Result<Response, StorageError> {
    // Accept is honoured loosely: the stored bytes are served as they are.
    let m = reg.get_manifest(name, reference, !head).await?;
    let b = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, m.record.media_type.as_str())
        .header(header::CONTENT_LENGTH, m.record.size)
        .header("docker-content-digest", m.digest.as_str())
        .header(header::ETAG, format!("\"{}\"", m.digest));
    build(b, m.bytes.map(Body::from).unwrap_or_else(Body::empty))
}

/// Reads the body up to `limit` bytes.
async fn read_limited(h: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, StorageError> {
    let too_large = || StorageError::ManifestTooLarge { limit };
    if header_str(h, header::CONTENT_LENGTH)
        .and_then(|l| l.parse::<u64>().ok())
        .is_some_and(|l| l > limit as u64)
    {
        drain(body, limit).await;
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) if bytes.len() + chunk.len() <= limit => bytes.extend_from_slice(&chunk),
            Ok(_) => {
                drain_stream(stream, limit).await;
                return Err(too_large());
            }
            Err(e) => {
                return Err(StorageError::UploadInvalid(format!(
                    "reading manifest body: {e}"
                )));
            }
        }
    }
    Ok(bytes)
}

/// Reads and discards a refused body (up to `4 × limit`) so the client, still sending,
/// gets the 413 rather than a reset connection.
async fn drain(body: Body, limit: usize) {
    drain_stream(body.into_data_stream(), limit).await;
}

async fn drain_stream(mut stream: axum::body::BodyDataStream, limit: usize) {
    let mut drained = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        drained += chunk.len();
        if drained > limit.saturating_mul(4) {
            break;
        }
    }
}

pub(super) async fn put(
    reg: &Arc<Registry>,
    name: &str,
    reference: &Reference,
    h: &HeaderMap,
    q: &Query,
    body: Body,
) -> Result<Response, StorageError> {
    let bytes = read_limited(h, body, reg.config().max_manifest_bytes).await?;
    let extra_tags = q.all("tag");
    let content_type = header_str(h, header::CONTENT_TYPE);
    let put = reg
        .put_manifest(name, reference, content_type, bytes, extra_tags.clone())
        .await?;
    let mut b = Response::builder()
        .status(StatusCode::CREATED)
        .header(
            header::LOCATION,
            format!("/v2/{name}/manifests/{}", put.digest),
        )
        .header("docker-content-digest", put.digest.as_str())
        .header(header::CONTENT_LENGTH, 0);
    if let Some(s) = &put.subject {
        b = b.header("oci-subject", s.as_str());
    }
    for t in &extra_tags {
        b = b.header("oci-tag", t.as_str());
    }
    build(b, Body::empty())
}

pub(super) async fn delete(
    reg: &Arc<Registry>,
    name: &str,
    reference: &Reference,
) -> Result<Response, StorageError> {
    reg.delete_manifest(name, reference).await?;
    build(
        Response::builder()
            .status(StatusCode::ACCEPTED)
            .header(header::CONTENT_LENGTH, 0),
        Body::empty(),
    )
}

/// `DELETE /acr/v1/<name>`: the whole repository, answered as ACR does (202 with
/// `{"manifestsDeleted": [...], "tagsDeleted": [...]}`).
pub(super) async fn delete_repository(
    reg: &Arc<Registry>,
    name: &str,
) -> Result<Response, StorageError> {
    let deleted = reg.delete_repository(name).await?;
    super::json(
        StatusCode::ACCEPTED,
        "application/json",
        &serde_json::json!({
            "manifestsDeleted": deleted.manifests,
            "tagsDeleted": deleted.tags,
        }),
    )
}
