//! Parses a `/v2/...` (or ACR's `/acr/v1/<name>`) path into a typed [`Route`].
//!
//! Repository names contain `/`, so axum's router cannot express the API; the
//! router has one catch-all route and this parser recognises the suffix
//! (`/manifests/<ref>`, `/blobs/uploads/<uuid>`, …) and validates the name.

use crate::names::{Digest, DigestError, Reference, is_valid_repository_name, is_valid_tag};

/// One endpoint of the distribution API (method-independent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: String },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: String, reference: Reference },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: String, digest: Digest },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: String },
    /// `/v2/<name>/blobs/uploads/<uuid>`
    Upload { name: String, id: String },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: String, digest: Digest },
    /// `/acr/v1/<name>`: the repository itself (ACR's path; `DELETE` removes it whole,
    /// which the distribution API cannot express).
    Repository { name: String },
}

/// Why a path is not a valid API route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no such endpoint {0:?}")]
    NotFound(String),
    #[error("invalid repository name {0:?}")]
    NameInvalid(String),
    #[error("invalid tag {0:?}")]
    TagInvalid(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// A manifest path whose reference is neither a tag nor a digest (`cause` says
    /// which it looked like). Nothing can exist there: a `GET`/`HEAD` is answered 404
    /// `MANIFEST_UNKNOWN` as for any missing manifest, a `PUT`/`DELETE` with `cause`.
    #[error("{cause}")]
    ManifestReference {
        name: String,
        reference: String,
        cause: Box<RouteError>,
    },
}

impl Route {
    /// Parses a request path (`/v2/...`, not percent-decoded).
    pub fn parse(path: &str) -> Result<Route, RouteError> {
        let not_found = || RouteError::NotFound(path.to_owned());
        if let Some(name) = path.strip_prefix("/acr/v1/") {
            return if is_valid_repository_name(name) {
                Ok(Route::Repository {
                    name: name.to_owned(),
                })
            } else {
                Err(RouteError::NameInvalid(name.to_owned()))
            };
        }
        let rest = match path {
            "/v2" | "/v2/" => return Ok(Route::Base),
            _ => path.strip_prefix("/v2/").ok_or_else(not_found)?,
        };
        if rest == "_catalog" {
            return Ok(Route::Catalog);
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        // The repository name is everything before the endpoint suffix.
        let name_of = |suffix_len: usize| -> Result<String, RouteError> {
            let name = segs
                .get(..n.saturating_sub(suffix_len))
                .unwrap_or_default()
                .join("/");
            if is_valid_repository_name(&name) {
                Ok(name)
            } else {
                Err(RouteError::NameInvalid(name))
            }
        };
        let tail = |k: usize| segs.get(n.wrapping_sub(k)).copied();
        if n < 2 {
            return Err(not_found());
        }
        match (tail(3), tail(2), tail(1)) {
            (Some("blobs"), Some("uploads"), Some("")) if n > 3 => {
                Ok(Route::UploadStart { name: name_of(3)? })
            }
            (_, Some("blobs"), Some("uploads")) if n > 2 => {
                Ok(Route::UploadStart { name: name_of(2)? })
            }
            (Some("blobs"), Some("uploads"), Some(id)) if n > 3 => {
                if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Err(not_found());
                }
                Ok(Route::Upload {
                    name: name_of(3)?,
                    id: id.to_owned(),
                })
            }
            (_, Some("tags"), Some("list")) if n > 2 => Ok(Route::Tags { name: name_of(2)? }),
            (_, Some("manifests"), Some(r)) if n > 2 => {
                let name = name_of(2)?;
                let reference = if r.contains(':') {
                    Digest::parse(r)
                        .map(Reference::Digest)
                        .map_err(RouteError::Digest)
                } else if is_valid_tag(r) {
                    Ok(Reference::Tag(r.to_owned()))
                } else {
                    Err(RouteError::TagInvalid(r.to_owned()))
                };
                match reference {
                    Ok(reference) => Ok(Route::Manifest { name, reference }),
                    Err(cause) => Err(RouteError::ManifestReference {
                        name,
                        reference: r.to_owned(),
                        cause: Box::new(cause),
                    }),
                }
            }
            (_, Some("blobs"), Some(d)) if n > 2 => {
                let name = name_of(2)?;
                Ok(Route::Blob {
                    name,
                    digest: Digest::parse(d)?,
                })
            }
            (_, Some("referrers"), Some(d)) if n > 2 => {
                let name = name_of(2)?;
                Ok(Route::Referrers {
                    name,
                    digest: Digest::parse(d)?,
                })
            }
            _ => Err(not_found()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_every_endpoint() {
        assert_eq!(Route::parse("/v2/").unwrap(), Route::Base);
        assert_eq!(Route::parse("/v2").unwrap(), Route::Base);
        assert_eq!(Route::parse("/v2/_catalog").unwrap(), Route::Catalog);
        assert_eq!(
            Route::parse("/v2/a/b/tags/list").unwrap(),
            Route::Tags { name: "a/b".into() }
        );
        assert_eq!(
            Route::parse("/v2/a/manifests/latest").unwrap(),
            Route::Manifest {
                name: "a".into(),
                reference: Reference::Tag("latest".into())
            }
        );
        assert_eq!(
            Route::parse(&format!("/v2/x/y/z/manifests/{D}")).unwrap(),
            Route::Manifest {
                name: "x/y/z".into(),
                reference: Reference::Digest(Digest::parse(D).unwrap())
            }
        );
        assert_eq!(
            Route::parse(&format!("/v2/a/blobs/{D}")).unwrap(),
            Route::Blob {
                name: "a".into(),
                digest: Digest::parse(D).unwrap()
            }
        );
        assert_eq!(
            Route::parse("/v2/a/b/blobs/uploads/").unwrap(),
            Route::UploadStart { name: "a/b".into() }
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads").unwrap(),
            Route::UploadStart { name: "a".into() }
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads/0b7c-11").unwrap(),
            Route::Upload {
                name: "a".into(),
                id: "0b7c-11".into()
            }
        );
        assert_eq!(
            Route::parse(&format!("/v2/a/referrers/{D}")).unwrap(),
            Route::Referrers {
                name: "a".into(),
                digest: Digest::parse(D).unwrap()
            }
        );
        assert_eq!(
            Route::parse("/acr/v1/samples/nginx").unwrap(),
            Route::Repository {
                name: "samples/nginx".into()
            }
        );
        // A repository may be called "blobs" or "manifests".
        assert_eq!(
            Route::parse("/v2/manifests/manifests/v1").unwrap(),
            Route::Manifest {
                name: "manifests".into(),
                reference: Reference::Tag("v1".into())
            }
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(
            matches!(Route::parse("/v2/A/tags/list"), Err(RouteError::NameInvalid(n)) if n == "A")
        );
        assert!(matches!(
            Route::parse("/v2/tags/list"),
            Err(RouteError::NotFound(_))
        ));
        assert!(
            matches!(Route::parse("/v2/-a/tags/list"), Err(RouteError::NameInvalid(n)) if n == "-a")
        );
        assert!(matches!(
            Route::parse("/v2/a/manifests/-bad"),
            Err(RouteError::ManifestReference { name, reference, cause })
                if name == "a" && reference == "-bad" && matches!(*cause, RouteError::TagInvalid(_))
        ));
        assert!(matches!(
            Route::parse("/v2/a/b/manifests/sha256:12"),
            Err(RouteError::ManifestReference { name, cause, .. })
                if name == "a/b" && matches!(*cause, RouteError::Digest(_))
        ));
        // The name is checked first.
        assert!(matches!(
            Route::parse("/v2/A/manifests/-bad"),
            Err(RouteError::NameInvalid(_))
        ));
        assert!(matches!(
            Route::parse("/acr/v1/a/B"),
            Err(RouteError::NameInvalid(n)) if n == "a/B"
        ));
        assert!(matches!(
            Route::parse("/acr/v1/"),
            Err(RouteError::NameInvalid(_))
        ));
        assert!(matches!(
            Route::parse("/v2/a/blobs/sha256:12"),
            Err(RouteError::Digest(_))
        ));
        assert!(matches!(
            Route::parse("/v2/a"),
            Err(RouteError::NotFound(_))
        ));
        assert!(matches!(
            Route::parse("/v2/a/unknown/x"),
            Err(RouteError::NotFound(_))
        ));
        assert!(matches!(
            Route::parse("/v3/a/tags/list"),
            Err(RouteError::NotFound(_))
        ));
        assert!(matches!(
            Route::parse("/v2/a/blobs/uploads/../x"),
            Err(RouteError::NotFound(_))
        ));
    }
}
