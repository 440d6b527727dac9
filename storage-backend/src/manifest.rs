//! Reads what the registry needs out of a manifest's JSON — its media type, the
//! blobs and child manifests it references with their declared sizes, its
//! `subject`, its `artifactType` and annotations — after checking it is a valid
//! image manifest or index by the OCI image spec (and docker's schema 2). The
//! bytes themselves are stored untouched.
//!
//! Rules: the body is UTF-8 JSON; `schemaVersion` is 2; an image manifest has a
//! `config` descriptor and a `layers` array (empty for artifacts), an index a
//! `manifests` array; every descriptor has a media type, a digest and a size that
//! is a non-negative int64. Schema 1 manifests are refused, as distribution does by
//! default. Other manifest media types keep the loose reading (their descriptors,
//! where present, are still checked). Sizes are compared with the stored content
//! when the manifest is stored (`meta::put_manifest`).

use serde_json::{Map, Value};

use crate::names::{Digest, DigestError};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's schema 1 (unsigned and signed): not accepted.
const SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// Why a manifest body was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
    #[error("manifest is not a JSON object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest is not a JSON object")]
    NotObject,
    #[error("manifest JSON is nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("manifest media type {declared:?} does not match Content-Type {content_type:?}")]
    MediaTypeMismatch {
        declared: String,
        content_type: String,
    },
    #[error("manifest has no media type (no Content-Type and no mediaType field)")]
    NoMediaType,
    #[error("invalid manifest media type {0:?}")]
    BadMediaType(String),
    #[error("schema 1 manifests are not accepted: push a schema 2 or OCI image manifest")]
    Schema1,
    #[error("`{field}` {problem}")]
    Field { field: String, problem: String },
    #[error("`{field}` references {source}")]
    Digest { field: String, source: DigestError },
    #[error("`{field}` is {declared} but {digest} has {stored} bytes")]
    SizeMismatch {
        field: String,
        digest: Digest,
        declared: u64,
        stored: u64,
    },
}

impl ManifestError {
    /// The manifest field at fault, for the error's detail.
    pub fn field(&self) -> Option<&str> {
        match self {
            ManifestError::Field { field, .. }
            | ManifestError::Digest { field, .. }
            | ManifestError::SizeMismatch { field, .. } => Some(field),
            ManifestError::MediaTypeMismatch { .. } | ManifestError::BadMediaType(_) => {
                Some("mediaType")
            }
            _ => None,
        }
    }

    fn at(field: impl Into<String>, problem: impl Into<String>) -> ManifestError {
        ManifestError::Field {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// What a descriptor points at, for the check against stored content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Config or layer: a blob that must be linked into the repository.
    Blob,
    /// Index child: a manifest that must be in the repository.
    Manifest,
    /// `subject`: may be absent (OCI 1.1); checked only when present.
    Subject,
}

/// A descriptor's digest and declared size, and where it sits in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// e.g. `layers[2]`.
    pub field: String,
    pub digest: Digest,
    pub size: u64,
    pub target: Target,
}

impl Declared {
    /// Checks the declared size against `stored`, the size of the content found (none
    /// when it was not looked up or an absent subject is allowed).
    pub fn check_size(&self, stored: Option<u64>) -> Result<(), ManifestError> {
        match stored {
            Some(stored) if stored != self.size => Err(ManifestError::SizeMismatch {
                field: format!("{}.size", self.field),
                digest: self.digest.clone(),
                declared: self.size,
                stored,
            }),
            _ => Ok(()),
        }
    }
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
    /// Every checked descriptor (blobs, children, subject) with its declared size.
    pub declared: Vec<Declared>,
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

/// How strictly a manifest's shape is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Image,
    Index,
    /// A media type this registry does not interpret: descriptors checked where present.
    Other,
}

/// A descriptor as checked.
struct Descriptor {
    media_type: String,
    digest: Digest,
    size: u64,
    foreign: bool,
}

/// Parses `bytes`; `content_type` is the request's Content-Type, if any.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, ManifestError> {
    // serde_json does not check the UTF-8 of strings it skips.
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(ManifestError::NotUtf8(e.valid_up_to()));
    }
    if portcullis_oci::json::nested_deeper_than(bytes, portcullis_oci::json::MAX_DEPTH) {
        return Err(ManifestError::TooDeep(portcullis_oci::json::MAX_DEPTH));
    }
    let value: Value = serde_json::from_slice(bytes)?;
    let Value::Object(obj) = value else {
        return Err(ManifestError::NotObject);
    };
    let declared = optional_str(&obj, "mediaType", "mediaType")?;
    let content_type = content_type.map(bare_media_type).filter(|c| !c.is_empty());
    let schema_version = obj.get("schemaVersion");
    if [content_type, declared]
        .iter()
        .flatten()
        .any(|t| SCHEMA1.contains(t))
        || schema_version.and_then(Value::as_i64) == Some(1)
    {
        return Err(ManifestError::Schema1);
    }
    let media_type = match (content_type, declared) {
        (Some(ct), Some(mt)) if ct != mt => {
            return Err(ManifestError::MediaTypeMismatch {
                declared: mt.to_owned(),
                content_type: ct.to_owned(),
            });
        }
        (Some(ct), _) => ct.to_owned(),
        (None, Some(mt)) => mt.to_owned(),
        // OCI makes mediaType optional; infer it from the shape.
        (None, None) if obj.contains_key("manifests") => OCI_INDEX.to_owned(),
        (None, None) if obj.contains_key("config") => OCI_MANIFEST.to_owned(),
        (None, None) => return Err(ManifestError::NoMediaType),
    };
    if !is_media_type(&media_type) {
        return Err(ManifestError::BadMediaType(media_type));
    }
    let kind = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Image,
        OCI_INDEX | DOCKER_LIST => Kind::Index,
        _ => Kind::Other,
    };
    match schema_version {
        Some(v) if v.as_i64() == Some(2) => {}
        Some(v) => {
            return Err(ManifestError::at(
                "schemaVersion",
                format!("must be 2, got {v}"),
            ));
        }
        None if kind == Kind::Other => {}
        None => return Err(ManifestError::at("schemaVersion", "is required")),
    }

    let mut out = ParsedManifest {
        media_type,
        blobs: Vec::new(),
        children: Vec::new(),
        subject: None,
        artifact_type: optional_str(&obj, "artifactType", "artifactType")?.map(str::to_owned),
        annotations: None,
        declared: Vec::new(),
    };
    if let Some(t) = &out.artifact_type
        && !is_media_type(t)
    {
        return Err(ManifestError::at(
            "artifactType",
            format!("is not a media type: {t:?}"),
        ));
    }
    let config = match (obj.get("config"), kind) {
        (None, Kind::Image) => return Err(ManifestError::at("config", "is required")),
        (None, _) => None,
        (Some(v), _) => Some(descriptor(v, "config")?),
    };
    if let Some(c) = &config {
        out.push(Target::Blob, "config".into(), c);
    }
    for (i, l) in array(&obj, "layers", kind == Kind::Image)?
        .iter()
        .enumerate()
    {
        let field = format!("layers[{i}]");
        let l = descriptor(l, &field)?;
        if !l.foreign {
            out.push(Target::Blob, field, &l);
        }
    }
    for (i, m) in array(&obj, "manifests", kind == Kind::Index)?
        .iter()
        .enumerate()
    {
        let field = format!("manifests[{i}]");
        let m = descriptor(m, &field)?;
        out.push(Target::Manifest, field, &m);
    }
    if let Some(s) = obj.get("subject") {
        let s = descriptor(s, "subject")?;
        out.push(Target::Subject, "subject".into(), &s);
    }
    out.annotations = match obj.get("annotations") {
        None | Some(Value::Null) => None,
        Some(Value::Object(a)) => Some(a.clone()),
        Some(_) => return Err(ManifestError::at("annotations", "must be an object")),
    };
    if out.artifact_type.is_none() {
        out.artifact_type = config.map(|c| c.media_type);
    }
    Ok(out)
}

impl ParsedManifest {
    fn push(&mut self, target: Target, field: String, d: &Descriptor) {
        match target {
            Target::Blob => self.blobs.push(d.digest.clone()),
            Target::Manifest => self.children.push(d.digest.clone()),
            Target::Subject => self.subject = Some(d.digest.clone()),
        }
        self.declared.push(Declared {
            field,
            digest: d.digest.clone(),
            size: d.size,
            target,
        });
    }
}

/// `obj[key]` as a string, when present.
fn optional_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, ManifestError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ManifestError::at(field, "must be a string")),
    }
}

/// `obj[key]` as an array: required or empty when absent.
fn array<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    required: bool,
) -> Result<&'a [Value], ManifestError> {
    match obj.get(key) {
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(ManifestError::at(key, "must be an array")),
        None if required => Err(ManifestError::at(key, "is required")),
        None => Ok(&[]),
    }
}

/// Checks a descriptor: media type, digest and size are required, the size a
/// non-negative int64, `urls` (foreign content) a list of strings.
fn descriptor(v: &Value, field: &str) -> Result<Descriptor, ManifestError> {
    let Value::Object(d) = v else {
        return Err(ManifestError::at(field, "must be a descriptor object"));
    };
    let sub = |key: &str| format!("{field}.{key}");
    let media_type = optional_str(d, "mediaType", &sub("mediaType"))?
        .ok_or_else(|| ManifestError::at(sub("mediaType"), "is required"))?;
    if !is_media_type(media_type) {
        return Err(ManifestError::at(
            sub("mediaType"),
            format!("is not a media type: {media_type:?}"),
        ));
    }
    let digest = optional_str(d, "digest", &sub("digest"))?
        .ok_or_else(|| ManifestError::at(sub("digest"), "is required"))?;
    let digest = Digest::parse(digest).map_err(|source| ManifestError::Digest {
        field: sub("digest"),
        source,
    })?;
    let size = match d.get("size") {
        None => return Err(ManifestError::at(sub("size"), "is required")),
        // as_i64: integers within int64 only (no fractions, no u64 above i64::MAX).
        Some(v) => v
            .as_i64()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| {
                ManifestError::at(
                    sub("size"),
                    format!("must be a non-negative 64-bit integer, got {v}"),
                )
            })?,
    };
    let foreign = match d.get("urls") {
        None | Some(Value::Null) => false,
        Some(Value::Array(urls)) if urls.iter().all(Value::is_string) => !urls.is_empty(),
        Some(_) => return Err(ManifestError::at(sub("urls"), "must be a list of URLs")),
    };
    Ok(Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
        foreign,
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
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": d('b'), "size": 2},
                {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": d('c'), "size": 3, "urls": ["https://example.invalid/l"]}
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
        let bad = serde_json::json!({"schemaVersion": 2, "layers": [],
            "config": {"mediaType": "a/b", "digest": "sha256:zz", "size": 1}});
        assert!(matches!(
            parse(bad.to_string().as_bytes(), None),
            Err(ManifestError::Digest { field, .. }) if field == "config.digest"
        ));
    }

    #[test]
    fn image_rules_name_the_field() {
        let desc = |size: serde_json::Value| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d('b'), "size": size});
        let image = |layers: serde_json::Value| {
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d('a'), "size": 2},
                "layers": layers})
        };
        let field = |m: serde_json::Value| {
            let e = parse(m.to_string().as_bytes(), None).unwrap_err();
            e.field()
                .map(str::to_owned)
                .unwrap_or_else(|| e.to_string())
        };
        assert_eq!(
            field(serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST})),
            "config"
        );
        assert_eq!(
            field(serde_json::json!({"schemaVersion": 3, "mediaType": OCI_INDEX, "manifests": []})),
            "schemaVersion"
        );
        assert_eq!(
            field(serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_LIST})),
            "manifests"
        );
        assert_eq!(
            field(image(serde_json::json!([desc((-1).into())]))),
            "layers[0].size"
        );
        assert_eq!(
            field(image(serde_json::json!([desc(1.5.into())]))),
            "layers[0].size"
        );
        assert_eq!(
            field(image(serde_json::json!([desc(u64::MAX.into())]))),
            "layers[0].size"
        );
        assert_eq!(
            field(image(serde_json::json!([{"digest": d('b'), "size": 1}]))),
            "layers[0].mediaType"
        );
        assert_eq!(field(image(serde_json::json!({}))), "layers");
        let big = image(serde_json::json!([desc((1u64 << 62).into())]));
        assert_eq!(
            parse(big.to_string().as_bytes(), None).unwrap().declared[1].size,
            1 << 62
        );
        assert!(matches!(
            parse(
                br#"{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}"#,
                None
            ),
            Err(ManifestError::Schema1)
        ));
        assert!(matches!(
            parse(b"{\"schemaVersion\":2,\"x\":\"\xff\"}", Some(OCI_MANIFEST)),
            Err(ManifestError::NotUtf8(_))
        ));
    }
}
