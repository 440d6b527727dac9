//! Request classification: method + path (+ query) → [`Route`], the first step of every
//! request. Registry routes follow the OCI distribution v1.1 API exactly and are parsed
//! by the path parser the bundled store uses too (`portcullis_oci::route`), so the gateway
//! decides on precisely the request the bundled backend will serve. Repository names
//! contain `/`; anything that does not parse is refused here, before authentication.
//!
//! The Notary v1 API lives under `/v2/<gun>/_trust/…` (GUN = `host[:port]/repository`,
//! so it may contain `:`); `_trust` can never be a repository component, so these paths
//! never collide with registry routes.

use http::Method;
use percent_encoding::percent_decode_str;
use portcullis_oci::{self as oci, Digest, DigestError, Reference, RouteError};
use portcullis_oci::{is_valid_repository_name, is_valid_tag};

use super::errors::{GatewayError, clip};
use crate::trust::naming::{MetadataRef, Role, gun_repository};

/// Where a request goes: a repository operation the proxy forwards after a decision,
/// or one of the routes the gateway answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check docker uses to discover authentication.
    Base,
    /// `/v2/_catalog`
    Catalog,
    Repository(RepositoryRequest),
    /// `/oauth2/token`
    Token,
    /// `/admin/v1/…`
    Admin,
    /// `/portcullis/v1/repositories/<name>` (GET, PATCH)
    RepositoryAttributes {
        repository: String,
    },
    /// `DELETE /portcullis/v1/repositories/<name>` (ACR: `DELETE /acr/v1/<name>`) and
    /// `DELETE /portcullis/v1/repositories/<name>/_manifests/<reference>`: one
    /// `content/delete` decision, then the gateway deletes server-side.
    RepositoryDelete(DeleteRequest),
    /// `/metrics`
    Metrics,
    /// `/healthz`, `/readyz`
    Health,
    /// `/v2/<gun>/_trust/…`: the Notary v1 API.
    Trust(TrustRequest),
    /// `GET /v2/_trust/changefeed`: notary's changefeed of every GUN (the caller sees
    /// the GUNs it may read).
    TrustChangefeed,
}

/// A whole repository (`reference: None`) or an image to delete: the manifest a tag or
/// digest names, with every tag pointing at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRequest {
    pub repository: String,
    pub reference: Option<Reference>,
}

/// Separates the repository from the reference in an image delete path; `_` cannot
/// begin a repository name component, so the split is unambiguous.
const MANIFESTS_MARKER: &str = "/_manifests/";

/// A Notary API request on one GUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRequest {
    /// `host[:port]/repository`, as the client wrote it.
    pub gun: String,
    /// The GUN's repository part, which policy decides on.
    pub repository: String,
    pub kind: TrustKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustKind {
    /// `GET …/_trust/tuf/<role>.json`, `<role>.<sha256>.json`, `<version>.<role>.json`
    Metadata(MetadataRef),
    /// `POST …/_trust/tuf/`: an atomic multipart update.
    Update,
    /// `DELETE …/_trust/tuf/`
    Delete,
    /// `GET …/_trust/tuf/<timestamp|snapshot>.key`
    Key(Role),
    /// `POST …/_trust/tuf/<timestamp|snapshot>.key`
    RotateKey(Role),
    /// `GET …/_trust/changefeed`
    Changefeed,
}

/// An operation on one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryRequest {
    pub repository: String,
    pub kind: RequestKind,
}

impl RepositoryRequest {
    /// The bundled store's route of a pull (manifest or blob GET/HEAD), handed to it so
    /// it does not parse the path again; `None` for the rest.
    pub fn pull_route(&self) -> Option<oci::Route> {
        match &self.kind {
            RequestKind::ManifestGet { reference } => Some(oci::Route::Manifest {
                name: self.repository.clone(),
                reference: reference.clone(),
            }),
            RequestKind::BlobGet { digest } => Some(oci::Route::Blob {
                name: self.repository.clone(),
                digest: digest.clone(),
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// GET and HEAD.
    ManifestGet {
        reference: Reference,
    },
    /// GET and HEAD by a reference that can name no manifest (an invalid tag, a malformed
    /// or unsupported digest): decided as a pull, then answered 404 `MANIFEST_UNKNOWN`,
    /// as registries answer any missing manifest.
    ManifestGetInvalid {
        reference: String,
    },
    ManifestPut {
        reference: Reference,
        /// More tags from `?tag=` (OCI 1.1, honoured by the bundled store): each one is
        /// a tag create or overwrite too.
        tags: Vec<String>,
    },
    ManifestDelete {
        reference: Reference,
    },
    /// GET and HEAD.
    BlobGet {
        digest: Digest,
    },
    BlobDelete {
        digest: Digest,
    },
    /// POST `…/blobs/uploads/`, monolithic (`?digest=`) or with a cross-repository
    /// mount (`?mount=&from=`).
    UploadStart {
        mount: Option<Mount>,
    },
    /// PATCH/PUT/GET/DELETE `…/blobs/uploads/<id>`.
    Upload,
    TagsList,
    Referrers {
        digest: Digest,
    },
}

/// A cross-repository blob mount: `digest` linked into the target from `from`, or
/// (without `from`, OCI 1.1 automatic mount) from a repository the gateway picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub digest: String,
    pub from: Option<String>,
}

/// Longest path echoed back in an error message.
const MAX_ECHOED_PATH: usize = 256;

/// Classifies one request. `path` is the raw (not percent-decoded) request path,
/// `query` the raw query string without `?`.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> Result<Route, GatewayError> {
    let unsupported = || GatewayError::Unsupported {
        method: method.to_string(),
        path: echoed(path),
    };
    let allow = |ok: bool, route: Route| if ok { Ok(route) } else { Err(unsupported()) };
    let get = method == Method::GET;
    let read = get || method == Method::HEAD;
    match path {
        "/oauth2/token" => return allow(get || method == Method::POST, Route::Token),
        "/metrics" => return allow(get, Route::Metrics),
        "/healthz" | "/readyz" => return allow(read, Route::Health),
        "/admin/v1" => return Ok(Route::Admin),
        _ => {}
    }
    if path.starts_with("/admin/v1/") {
        // The admin API routes (and refuses) its own methods and paths.
        return Ok(Route::Admin);
    }
    if let Some(rest) = path.strip_prefix("/portcullis/v1/repositories/")
        && method == Method::DELETE
    {
        return repository_delete(rest).map(Route::RepositoryDelete);
    }
    if let Some(name) = path.strip_prefix("/acr/v1/") {
        if method != Method::DELETE {
            return Err(unsupported());
        }
        return if is_valid_repository_name(name) {
            Ok(Route::RepositoryDelete(DeleteRequest {
                repository: name.to_owned(),
                reference: None,
            }))
        } else {
            Err(GatewayError::NameInvalid(echoed(name)))
        };
    }
    if let Some(name) = path.strip_prefix("/portcullis/v1/repositories/") {
        return if is_valid_repository_name(name) {
            Ok(Route::RepositoryAttributes {
                repository: name.to_owned(),
            })
        } else {
            Err(GatewayError::NameInvalid(echoed(name)))
        };
    }
    if path != "/v2" && !path.starts_with("/v2/") {
        return Err(not_found(method, path));
    }
    if path == GLOBAL_CHANGEFEED {
        // As notary-server routes it: GET only, anything else is not found.
        return if get {
            Ok(Route::TrustChangefeed)
        } else {
            Err(not_found(method, path))
        };
    }
    if let Some((gun, rest)) = path
        .strip_prefix("/v2/")
        .and_then(|p| p.split_once(TRUST_MARKER))
    {
        return trust(method, path, gun, rest);
    }
    let repository = |repository: String, kind: RequestKind| {
        Route::Repository(RepositoryRequest { repository, kind })
    };
    let api = match oci::Route::parse(path) {
        Ok(api) => api,
        Err(RouteError::ManifestReference {
            name, reference, ..
        }) if read => {
            let reference = echoed(&reference);
            return Ok(repository(
                name,
                RequestKind::ManifestGetInvalid { reference },
            ));
        }
        Err(e) => return Err(route_error(method, path, e)),
    };
    Ok(match api {
        oci::Route::Base => allow(read, Route::Base)?,
        oci::Route::Catalog => allow(get, Route::Catalog)?,
        oci::Route::Tags { name } => allow(get, repository(name, RequestKind::TagsList))?,
        oci::Route::Manifest { name, reference } => {
            let kind = match *method {
                Method::GET | Method::HEAD => RequestKind::ManifestGet { reference },
                Method::PUT => RequestKind::ManifestPut {
                    reference,
                    tags: manifest_tags(query.unwrap_or_default())?,
                },
                Method::DELETE => RequestKind::ManifestDelete { reference },
                _ => return Err(unsupported()),
            };
            repository(name, kind)
        }
        oci::Route::Blob { name, digest } => {
            let kind = match *method {
                Method::GET | Method::HEAD => RequestKind::BlobGet { digest },
                Method::DELETE => RequestKind::BlobDelete { digest },
                _ => return Err(unsupported()),
            };
            repository(name, kind)
        }
        oci::Route::UploadStart { name } => {
            if method != Method::POST {
                return Err(unsupported());
            }
            let mount = upload_start(query.unwrap_or_default())?;
            repository(name, RequestKind::UploadStart { mount })
        }
        oci::Route::Upload { name, .. } => match *method {
            Method::GET | Method::PATCH | Method::PUT | Method::DELETE => {
                repository(name, RequestKind::Upload)
            }
            _ => return Err(unsupported()),
        },
        // Only under `/acr/v1/`, answered above.
        oci::Route::Repository { .. } => return Err(not_found(method, path)),
        oci::Route::Referrers { name, digest } => {
            allow(get, repository(name, RequestKind::Referrers { digest }))?
        }
    })
}

/// Why a path is no registry route, as the gateway refuses it.
fn route_error(method: &Method, path: &str, e: RouteError) -> GatewayError {
    match e {
        RouteError::NotFound(_) => not_found(method, path),
        RouteError::NameInvalid(name) => GatewayError::NameInvalid(echoed(&name)),
        RouteError::TagInvalid(tag) => GatewayError::ReferenceInvalid(echoed(&tag)),
        RouteError::Digest(e) => digest_error(e),
        RouteError::ManifestReference { cause, .. } => route_error(method, path, *cause),
    }
}

/// `<name>` or `<name>/_manifests/<reference>` of a repository API `DELETE`.
fn repository_delete(rest: &str) -> Result<DeleteRequest, GatewayError> {
    let (name, reference) = match rest.split_once(MANIFESTS_MARKER) {
        Some((name, reference)) => (name, Some(reference)),
        None => (rest, None),
    };
    if !is_valid_repository_name(name) {
        return Err(GatewayError::NameInvalid(echoed(name)));
    }
    let reference = match reference {
        None => None,
        Some(r) if r.contains(':') => {
            Some(Reference::Digest(Digest::parse(r).map_err(digest_error)?))
        }
        Some(r) if is_valid_tag(r) => Some(Reference::Tag(r.to_owned())),
        Some(r) => return Err(GatewayError::ReferenceInvalid(echoed(r))),
    };
    Ok(DeleteRequest {
        repository: name.to_owned(),
        reference,
    })
}

/// Separates a GUN from the Notary API path after it.
const TRUST_MARKER: &str = "/_trust/";
/// Notary's changefeed of every GUN (no GUN before `_trust`).
const GLOBAL_CHANGEFEED: &str = "/v2/_trust/changefeed";

/// A Notary API route: `rest` is what follows `<gun>/_trust/`. Unknown files and
/// methods are 404, as notary-server answers them (HEAD included).
fn trust(method: &Method, path: &str, gun: &str, rest: &str) -> Result<Route, GatewayError> {
    let repository = gun_repository(gun).ok_or_else(|| {
        GatewayError::BadRequest(format!(
            "invalid trust GUN `{}`: expected host[:port]/repository",
            echoed(gun)
        ))
    })?;
    let not_found = || not_found(method, path);
    let kind = match (method.clone(), rest) {
        (Method::POST, "tuf/" | "tuf") => TrustKind::Update,
        (Method::DELETE, "tuf/" | "tuf") => TrustKind::Delete,
        (Method::GET, "changefeed") => TrustKind::Changefeed,
        (method, file) => {
            let file = file.strip_prefix("tuf/").ok_or_else(not_found)?;
            if let Some(stem) = file.strip_suffix(".key") {
                let role = Role::parse(stem)
                    .ok()
                    .filter(Role::is_server_managed)
                    .ok_or_else(not_found)?;
                match method {
                    Method::GET => TrustKind::Key(role),
                    Method::POST => TrustKind::RotateKey(role),
                    _ => return Err(not_found()),
                }
            } else {
                let stem = file.strip_suffix(".json").ok_or_else(not_found)?;
                if method != Method::GET {
                    return Err(not_found());
                }
                TrustKind::Metadata(metadata_ref(stem).ok_or_else(not_found)?)
            }
        }
    };
    Ok(Route::Trust(TrustRequest {
        gun: gun.to_owned(),
        repository: repository.to_owned(),
        kind,
    }))
}

/// `<version>.<role>`, `<role>.<sha256 hex>` or `<role>` (roles may contain `/`).
fn metadata_ref(stem: &str) -> Option<MetadataRef> {
    if let Some((version, role)) = stem.split_once('.')
        && !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
    {
        return Some(MetadataRef::Version {
            role: Role::parse(role).ok()?,
            version: version.parse().ok()?,
        });
    }
    if let Some((role, sha256)) = stem.rsplit_once('.')
        && sha256.len() == 64
        && sha256.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Some(MetadataRef::Checksum {
            role: Role::parse(role).ok()?,
            sha256: sha256.to_ascii_lowercase(),
        });
    }
    Role::parse(stem).ok().map(MetadataRef::Current)
}

/// The query of an upload start. A mount without `from` is an automatic mount (the
/// gateway picks a readable source, or opens a plain session). Each key may appear
/// once: a second `from` that the backend read instead of ours would let a mount
/// copy from a repository nobody checked.
fn upload_start(query: &str) -> Result<Option<Mount>, GatewayError> {
    let pairs = parse_query(query);
    let single = |key: &str| -> Result<Option<&str>, GatewayError> {
        let mut values = pairs.iter().filter(|(k, _)| k == key);
        let first = values.next().map(|(_, v)| v.as_str());
        match values.next() {
            Some(_) => Err(GatewayError::BadRequest(format!(
                "query parameter `{key}` given more than once"
            ))),
            None => Ok(first),
        }
    };
    let (mount, from) = (single("mount")?, single("from")?);
    if let Some(digest) = single("digest")? {
        Digest::parse(digest).map_err(digest_error)?;
    }
    let Some(digest) = mount else {
        return Ok(None);
    };
    let digest = Digest::parse(digest).map_err(digest_error)?;
    if let Some(from) = from
        && !is_valid_repository_name(from)
    {
        return Err(GatewayError::NameInvalid(echoed(from)));
    }
    Ok(Some(Mount {
        digest: digest.to_string(),
        from: from.map(str::to_owned),
    }))
}

/// Most `?tag=` values accepted on one manifest PUT (each costs a tag lookup).
const MAX_EXTRA_TAGS: usize = 32;

/// The `?tag=` values of a manifest PUT, validated.
fn manifest_tags(query: &str) -> Result<Vec<String>, GatewayError> {
    let tags: Vec<String> = parse_query(query)
        .into_iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v)
        .collect();
    if tags.len() > MAX_EXTRA_TAGS {
        return Err(GatewayError::BadRequest(format!(
            "at most {MAX_EXTRA_TAGS} `tag` query parameters are accepted"
        )));
    }
    match tags.iter().find(|t| !is_valid_tag(t)) {
        Some(bad) => Err(GatewayError::ReferenceInvalid(echoed(bad))),
        None => Ok(tags),
    }
}

/// `application/x-www-form-urlencoded` pairs, keys and values decoded (`+` is a space).
/// Invalid UTF-8 becomes U+FFFD, which no name or digest accepts.
fn parse_query(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let spaced = s.replace('+', " ");
        percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn digest_error(e: DigestError) -> GatewayError {
    match e {
        DigestError::Invalid(d) | DigestError::Unsupported(d) => {
            GatewayError::DigestInvalid(echoed(&d))
        }
    }
}

fn not_found(method: &Method, path: &str) -> GatewayError {
    GatewayError::NotFound {
        method: method.to_string(),
        path: echoed(path),
    }
}

/// Input quoted in an error message, cut to a bounded length.
fn echoed(input: &str) -> String {
    clip(input, MAX_ECHOED_PATH)
}

#[cfg(test)]
mod tests;
