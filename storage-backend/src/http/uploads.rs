//! Blob uploads: POST (session, monolithic `?digest=`, cross-repository
//! `?mount=&from=`, automatic `?mount=` without `from`), PATCH (streamed chunks, with or without
//! `Content-Range: start-end`), PUT `?digest=` (optional final chunk),
//! GET status and DELETE.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};

use super::{Query, build, header_str};
use crate::error::StorageError;
use crate::names::{Digest, DigestError, is_valid_repository_name};
use crate::registry::Registry;

/// `Range: 0-<last byte>`; an empty upload reports `0-0`, as distribution does.
fn range_header(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

fn session_response(
    status: StatusCode,
    name: &str,
    id: &str,
    offset: u64,
) -> Result<Response, StorageError> {
    build(
        Response::builder()
            .status(status)
            .header(header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
            .header(header::RANGE, range_header(offset))
            .header("docker-upload-uuid", id)
            .header(header::CONTENT_LENGTH, 0),
        Body::empty(),
    )
}

fn blob_created(name: &str, digest: &Digest) -> Result<Response, StorageError> {
    build(
        Response::builder()
            .status(StatusCode::CREATED)
            .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
            .header("docker-content-digest", digest.as_str())
            .header(header::CONTENT_LENGTH, 0),
        Body::empty(),
    )
}

fn required_digest(q: &Query) -> Result<Digest, StorageError> {
    let d = q
        .get("digest")
        .ok_or_else(|| DigestError::Invalid("(missing digest query parameter)".to_owned()))?;
    Ok(Digest::parse(d)?)
}

pub(super) async fn start(
    reg: &Arc<Registry>,
    name: &str,
    q: &Query,
    body: Body,
) -> Result<Response, StorageError> {
    if let Some(mount) = q.get("mount") {
        let digest = Digest::parse(mount)?;
        // Without `from`, the blob comes from any repository that has it (OCI 1.1
        // automatic mount; the store has no authorization: the gateway in front names
        // a readable `from` itself). Not found, or an unusable `from`: a new session
        // (spec: 202).
        let mounted = match q.get("from") {
            None => reg.mount_any(name, &digest).await?,
            Some(from) => is_valid_repository_name(from) && reg.mount(name, from, &digest).await?,
        };
        if mounted {
            return blob_created(name, &digest);
        }
    } else if q.get("digest").is_some() {
        let digest = required_digest(q)?;
        reg.put_blob(name, &digest, body).await?;
        return blob_created(name, &digest);
    }
    let id = reg.start_upload(name).await?;
    session_response(StatusCode::ACCEPTED, name, &id, 0)
}

/// `Content-Range: start-end` (no unit, as the spec and clients send it;
/// a `bytes ` prefix is tolerated).
fn content_range(h: &HeaderMap) -> Result<Option<(u64, u64)>, StorageError> {
    let Some(v) = header_str(h, header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let spec = v.trim().trim_start_matches("bytes ").trim();
    let spec = spec.split('/').next().unwrap_or_default();
    let invalid = || StorageError::UploadInvalid(format!("invalid Content-Range {v:?}"));
    let (a, b) = spec.split_once('-').ok_or_else(invalid)?;
    let a = a.trim().parse().map_err(|_| invalid())?;
    let b = b.trim().parse().map_err(|_| invalid())?;
    Ok(Some((a, b)))
}

pub(super) async fn patch(
    reg: &Arc<Registry>,
    name: &str,
    id: &str,
    h: &HeaderMap,
    body: Body,
) -> Result<Response, StorageError> {
    let range = content_range(h)?;
    if let (Some((a, b)), Some(len)) = (range, header_str(h, header::CONTENT_LENGTH))
        && b >= a
        && len.trim().parse::<u64>().ok() != Some(b - a + 1)
    {
        return Err(StorageError::SizeInvalid(format!(
            "Content-Length {len} does not match Content-Range {a}-{b}"
        )));
    }
    let offset = reg.patch_upload(name, id, range, body).await?;
    session_response(StatusCode::ACCEPTED, name, id, offset)
}

pub(super) async fn put(
    reg: &Arc<Registry>,
    name: &str,
    id: &str,
    q: &Query,
    body: Body,
) -> Result<Response, StorageError> {
    let digest = required_digest(q)?;
    reg.finish_upload(name, id, &digest, body).await?;
    blob_created(name, &digest)
}

pub(super) async fn status(
    reg: &Arc<Registry>,
    name: &str,
    id: &str,
) -> Result<Response, StorageError> {
    let offset = reg.upload_offset(name, id).await?;
    session_response(StatusCode::NO_CONTENT, name, id, offset)
}

pub(super) async fn cancel(
    reg: &Arc<Registry>,
    name: &str,
    id: &str,
) -> Result<Response, StorageError> {
    reg.cancel_upload(name, id).await?;
    build(
        Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::CONTENT_LENGTH, 0),
        Body::empty(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(content_range(&h).unwrap(), None);
        h.insert(header::CONTENT_RANGE, "0-99".parse().unwrap());
        assert_eq!(content_range(&h).unwrap(), Some((0, 99)));
        h.insert(header::CONTENT_RANGE, "bytes 100-199/*".parse().unwrap());
        assert_eq!(content_range(&h).unwrap(), Some((100, 199)));
        h.insert(header::CONTENT_RANGE, "nonsense".parse().unwrap());
        assert!(content_range(&h).is_err());
        assert_eq!(range_header(0), "0-0");
        assert_eq!(range_header(10), "0-9");
    }
}
