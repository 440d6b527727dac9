//! Signed-only views: whether a manifest request names signed content (Cedar's
//! `context.signed`), and the tag list a caller under a signature demand sees.
//!
//! A manifest is signed when, by digest, the digest is among the repository's signed
//! targets (`targets` and `targets/releases` of every GUN `<host>/<repository>`), and,
//! by tag, the tag's signed target digest is the digest the backend serves for that tag
//! now. Docker's content-trust pulls arrive by digest: they cost one cached lookup. Only
//! a pull by tag of a tag that has a signed target asks the backend, and only when the
//! decision depends on it (see `access`). With content trust disabled, or for a
//! repository without trust data, nothing is looked up at all.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use percent_encoding::percent_decode_str;

use super::Gateway;
use crate::policy::Reference;
use crate::trust::service::{ContentTrustStatus, SignedTargets};

/// What the trust data says about one manifest reference, before asking the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// No signed target matches (or content trust is off).
    Unsigned,
    /// By digest: the digest is a signed target.
    Signed,
    /// By tag: the tag has signed targets; signed if the backend serves one of their
    /// digests (several GUNs may sign a tag).
    TagSigned,
}

/// The repository's signed targets when content trust is enabled and it has any; `None`
/// costs a status read.
pub async fn targets(gw: &Gateway, repository: &str) -> Option<Arc<SignedTargets>> {
    if gw.trust.status() != ContentTrustStatus::Enabled {
        return None;
    }
    let targets = gw.trust.signed_targets(repository).await;
    (!targets.is_empty()).then_some(targets)
}

/// What `targets` say about `reference` (no backend call).
pub fn signature(targets: Option<&SignedTargets>, reference: &Reference) -> Signature {
    let Some(targets) = targets else {
        return Signature::Unsigned;
    };
    match reference {
        Reference::Digest(digest) if targets.has_digest(digest.as_str()) => Signature::Signed,
        Reference::Digest(_) => Signature::Unsigned,
        Reference::Tag(tag) if targets.has_tag(tag) => Signature::TagSigned,
        Reference::Tag(_) => Signature::Unsigned,
    }
}

/// `GET /v2/<repository>/tags/list` answered with `tags` (sorted), paginated as
/// distribution does: `n` at most, after `last`, `Link` to the next page.
pub fn tags_list(repository: &str, tags: &[String], query: Option<&str>) -> Response<Bytes> {
    let mut n: Option<usize> = None;
    let mut last: Option<String> = None;
    for pair in query.unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value).decode_utf8_lossy();
        match key {
            // An unparsable `n` is ignored, as the bundled store does.
            "n" => n = value.parse().ok(),
            "last" => last = Some(value.into_owned()),
            _ => {}
        }
    }
    let after = tags
        .iter()
        .filter(|t| last.as_deref().is_none_or(|l| t.as_str() > l));
    let page: Vec<&String> = after.clone().take(n.unwrap_or(usize::MAX)).collect();
    let more = after.count() > page.len();
    let body = serde_json::json!({ "name": repository, "tags": page });
    let mut response = Response::new(Bytes::from(body.to_string()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let (true, Some(n), Some(last)) = (more, n, page.last()) {
        // Names and tags are URL-safe by grammar: no escaping needed.
        let link = format!("</v2/{repository}/tags/list?n={n}&last={last}>; rel=\"next\"");
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, value);
        }
    }
    *response.status_mut() = StatusCode::OK;
    response
}

#[cfg(test)]
mod tests {
    use portcullis_oci::Digest;

    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn signature_by_digest_and_by_tag() {
        let targets = SignedTargets::from_tags(&[("v1", D1)]);
        let t = Some(&targets);
        let tag = |s: &str| Reference::Tag(s.into());
        let digest = |s: &str| Reference::Digest(Digest::parse(s).unwrap());
        assert_eq!(signature(t, &digest(D1)), Signature::Signed);
        assert_eq!(signature(t, &digest(D2)), Signature::Unsigned);
        assert_eq!(signature(t, &tag("v1")), Signature::TagSigned);
        assert_eq!(signature(t, &tag("v2")), Signature::Unsigned);
        assert_eq!(signature(None, &digest(D1)), Signature::Unsigned);
    }

    fn page(query: Option<&str>) -> (serde_json::Value, Option<String>) {
        let tags: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let r = tags_list("x/y", &tags, query);
        let link = r
            .headers()
            .get(header::LINK)
            .map(|v| v.to_str().unwrap().to_owned());
        (serde_json::from_slice(r.body()).unwrap(), link)
    }

    #[test]
    fn tag_list_pages() {
        assert_eq!(page(None).0["tags"], serde_json::json!(["a", "b", "c"]));
        assert_eq!(page(None).1, None);
        let (body, link) = page(Some("n=1&last=a"));
        assert_eq!(body["tags"], serde_json::json!(["b"]));
        assert_eq!(
            link.as_deref(),
            Some("</v2/x/y/tags/list?n=1&last=b>; rel=\"next\"")
        );
        // An unparsable `n` is ignored; `n=0` is an empty page without a link.
        assert_eq!(
            page(Some("n=x")).0["tags"],
            serde_json::json!(["a", "b", "c"])
        );
        assert_eq!(
            page(Some("n=0")),
            (serde_json::json!({"name": "x/y", "tags": []}), None)
        );
        assert_eq!(page(Some("last=c")).0["tags"], serde_json::json!([]));
    }
}
