//! Content discovery: tags list and catalog (with `n`/`last` pagination and
//! a `Link` header), and the referrers API.

use std::sync::Arc;

use axum::response::Response;
use http::{StatusCode, header};
use serde_json::json;

use super::{Query, json, pagination};
use crate::error::StorageError;
use crate::manifest::OCI_INDEX;
use crate::meta::Page;
use crate::names::Digest;
use crate::registry::Registry;

/// Adds `Link: <path?n=N&last=LAST>; rel="next"` when more items follow.
fn with_link(mut resp: Response, path: &str, page: &Page, n: Option<usize>) -> Response {
    if let (true, Some(n), Some(last)) = (page.more, n, page.items.last()) {
        // Names and tags are URL-safe by grammar, so no escaping is needed.
        if let Ok(v) = format!("<{path}?n={n}&last={last}>; rel=\"next\"").parse() {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    resp
}

pub(super) async fn tags(
    reg: &Arc<Registry>,
    name: &str,
    q: &Query,
) -> Result<Response, StorageError> {
    let (n, last) = pagination(q);
    let page = reg.tags(name, last, n).await?;
    let resp = json(
        StatusCode::OK,
        "application/json",
        &json!({"name": name, "tags": page.items}),
    )?;
    Ok(with_link(resp, &format!("/v2/{name}/tags/list"), &page, n))
}

pub(super) async fn catalog(reg: &Arc<Registry>, q: &Query) -> Result<Response, StorageError> {
    let (n, last) = pagination(q);
    let page = reg.catalog(last, n).await?;
    let resp = json(
        StatusCode::OK,
        "application/json",
        &json!({"repositories": page.items}),
    )?;
    Ok(with_link(resp, "/v2/_catalog", &page, n))
}

pub(super) async fn referrers(
    reg: &Arc<Registry>,
    name: &str,
    subject: &Digest,
    q: &Query,
) -> Result<Response, StorageError> {
    let filter = q.get("artifactType");
    let manifests: Vec<serde_json::Value> = reg
        .referrers(name, subject, filter)
        .await?
        .into_iter()
        .map(|(digest, r)| {
            let mut d = json!({"mediaType": r.media_type, "digest": digest, "size": r.size});
            if let Some(a) = r.artifact_type {
                d["artifactType"] = json!(a);
            }
            if let Some(a) = r.annotations {
                d["annotations"] = json!(a);
            }
            d
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    let mut resp = json(StatusCode::OK, OCI_INDEX, &index)?;
    if filter.is_some() {
        resp.headers_mut().insert(
            "oci-filters-applied",
            http::HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
