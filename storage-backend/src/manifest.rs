//! Reads what the registry needs out of a manifest's JSON: its media type,
//! the blobs and child manifests it references, its `subject`, its
//! `artifactType` and annotations. The bytes themselves are stored untouched.

use serde::Deserialize;

use crate::names::{Digest, DigestError};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Why a manifest body was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not a JSON object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest media type {declared:?} does not match Content-Type {content_type:?}")]
    MediaTypeMismatch {
        declared: String,
        content_type: String,
    },
    #[error("manifest has no media type (no Content-Type and no mediaType field)")]
    NoMediaType,
    #[error("invalid manifest media type {0:?}")]
    BadMediaType(String),
    #[error("manifest references {0}")]
    Digest(#[from] DigestError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    urls: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The parsed parts of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedManifest {
    pub media_type: String,
    /// Config and layers: must be blobs of the repository. Foreign layers
    /// (with `urls`) are not pushed, so they are not listed.
    pub blobs: Vec<Digest>,
    /// Children of an index: must be manifests of the repository.
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
    /// `artifactType`, falling back to the config's media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Strips parameters and whitespace from a Content-Type value.
pub fn bare_media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// `type/subtype` with RFC 6838 name characters (so it is a valid header value).
fn is_media_type(s: &str) -> bool {
    let name = |p: &str| {
        p.len() <= 127
            && p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    s.split_once('/').is_some_and(|(t, st)| name(t) && name(st))
}

/// Parses `bytes`; `content_type` is the request's Content-Type, if any.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, ManifestError> {
    let raw: Raw = serde_json::from_slice(bytes)?;
    let content_type = content_type.map(bare_media_type).filter(|c| !c.is_empty());
    let media_type = match (content_type, raw.media_type.as_deref()) {
        (Some(ct), Some(mt)) if ct != mt => {
            return Err(ManifestError::MediaTypeMismatch {
                declared: mt.to_owned(),
                content_type: ct.to_owned(),
            });
        }
        (Some(ct), _) => ct.to_owned(),
        (None, Some(mt)) => mt.to_owned(),
        // OCI makes mediaType optional; infer it from the shape.
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, None) if raw.config.is_some() => OCI_MANIFEST.to_owned(),
        (None, None) => return Err(ManifestError::NoMediaType),
    };
    if !is_media_type(&media_type) {
        return Err(ManifestError::BadMediaType(media_type));
    }
    let mut blobs = Vec::new();
    if let Some(c) = &raw.config {
        blobs.push(Digest::parse(&c.digest)?);
    }
    for l in raw.layers.iter().filter(|l| l.urls.is_empty()) {
        blobs.push(Digest::parse(&l.digest)?);
    }
    let children = raw
        .manifests
        .iter()
        .flatten()
        .map(|m| Digest::parse(&m.digest))
        .collect::<Result<Vec<_>, _>>()?;
    let subject = raw
        .subject
        .as_ref()
        .map(|s| Digest::parse(&s.digest))
        .transpose()?;
    let artifact_type = raw
        .artifact_type
        .or_else(|| raw.config.and_then(|c| c.media_type));
    Ok(ParsedManifest {
        media_type,
        blobs,
        children,
        subject,
        artifact_type,
        annotations: raw.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest_references() {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d('a'), "size": 1},
            "layers": [
                {"mediaType": "x", "digest": d('b'), "size": 2},
                {"mediaType": "foreign", "digest": d('c'), "size": 3, "urls": ["https://example.invalid/l"]}
            ]
        });
        let p = parse(m.to_string().as_bytes(), None).unwrap();
        assert_eq!(
            p.media_type,
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(
            p.blobs,
            vec![
                Digest::parse(&d('a')).unwrap(),
                Digest::parse(&d('b')).unwrap()
            ]
        );
        assert!(p.children.is_empty());
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.docker.container.image.v1+json")
        );
    }

    #[test]
    fn index_and_artifact() {
        let idx = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": d('1'), "size": 5}]});
        let p = parse(
            idx.to_string().as_bytes(),
            Some("application/vnd.oci.image.index.v1+json; charset=x"),
        )
        .unwrap();
        assert_eq!(p.media_type, OCI_INDEX);
        assert_eq!(p.children, vec![Digest::parse(&d('1')).unwrap()]);

        let art = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": d('e'), "size": 2},
            "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": d('f'), "size": 9},
            "annotations": {"k": "v"}
        });
        let p = parse(art.to_string().as_bytes(), None).unwrap();
        assert_eq!(p.subject, Some(Digest::parse(&d('f')).unwrap()));
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.example.sig")
        );
        assert_eq!(p.annotations.unwrap()["k"], "v");
    }

    #[test]
    fn refusals() {
        let m = serde_json::json!({"mediaType": OCI_MANIFEST, "config": {"digest": d('a')}});
        assert!(matches!(
            parse(m.to_string().as_bytes(), Some(OCI_INDEX)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(matches!(
            parse(b"not json", None),
            Err(ManifestError::Json(_))
        ));
        let weird = serde_json::json!({"mediaType": "bad\ntype/x", "config": {"digest": d('a')}});
        assert!(matches!(
            parse(weird.to_string().as_bytes(), None),
            Err(ManifestError::BadMediaType(_))
        ));
        assert!(matches!(
            parse(b"{}", None),
            Err(ManifestError::NoMediaType)
        ));
        let bad = serde_json::json!({"config": {"digest": "sha256:zz"}});
        assert!(matches!(
            parse(bad.to_string().as_bytes(), None),
            Err(ManifestError::Digest(_))
        ));
    }
}
