//! The Notary v1 server API on the registry host, `/v2/<gun>/_trust/…`, over
//! [`TrustService`](crate::trust::service::TrustService): metadata GET by role, checksum
//! and version (with notary's caching headers), the atomic multipart POST, the
//! `timestamp`/`snapshot` `.key` routes, DELETE and the changefeed (of one GUN, and of
//! every GUN the caller may read at `/v2/_trust/changefeed`). Errors use notary's
//! own code table (`{"errors":[{"code","message","detail"}]}`, bodies under 1 KiB since
//! clients read no more), not the OCI codes.
//!
//! Authorization: Cedar decides on the GUN's repository, and a bearer token's `access`
//! claim must name the GUN with notary's actions. Reading (metadata, changefeed) needs
//! `content/read` (`pull`); publishing (POST, GET `.key`) `content/write` + `trust/write`
//! (`push` + `pull`); DELETE and key rotation the admin account or `content/delete` +
//! `trust/write` (`*`). A refusal is a 401 with a Bearer challenge for the GUN scope, as
//! notary-server answers (its clients print "you are not authorized to perform this
//! operation"; they would report a 403 as "unable to reach trust server").
//!
//! With content trust disabled, reads answer 404 `METADATA_NOT_FOUND` and writes 400
//! `INVALID_UPDATE` (validation detail), both saying content trust is disabled: clients
//! then report missing trust data, or the message, instead of retrying or failing opaquely.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::any;
use time::OffsetDateTime;
use time::macros::format_description;

use super::access::{self, Check};
use super::authn::Authenticated;
use super::classify::{self, Route, TrustKind, TrustRequest};
use super::errors::{Challenge, GatewayError, clip};
use super::{Gateway, RequestMeta};
use crate::identity::{Action, Principal};
use crate::policy::Operation;
use crate::trust::Role;
use crate::trust::naming::{MetadataRef, gun_repository};
use crate::trust::service::TrustError;
use crate::trust::store::TrustStoreError;
use crate::trust::validate::UpdateError;
use portcullis_storage::error::is_out_of_space;

/// `Cache-Control` of current metadata (`<role>.json`): notary's 5-minute default. Shared
/// caches may keep only what anonymous callers may read.
const CURRENT_CACHE: &str = "public, max-age=300, s-maxage=300, must-revalidate";
const CURRENT_CACHE_PRIVATE: &str = "private, max-age=300, must-revalidate";
/// `Cache-Control` of consistent metadata (by checksum or version): 30 days.
const CONSISTENT_CACHE: &str = "public, max-age=2592000, s-maxage=2592000";
const CONSISTENT_CACHE_PRIVATE: &str = "private, max-age=2592000";
/// Longest message or detail text in an error body (clients read 1 KiB of it).
const MAX_ERROR_TEXT: usize = 300;
/// Most parts one update may carry (a root, a targets, a snapshot and delegations).
const MAX_PARTS: usize = 64;

/// Every `/v2/…` path the control app receives besides the catalog: the proxy sends
/// only trust routes here, and the path is classified again to get the request.
pub fn router() -> Router<Arc<Gateway>> {
    Router::new().route("/v2/{*rest}", any(trust))
}

async fn trust(
    State(gw): State<Arc<Gateway>>,
    Extension(meta): Extension<RequestMeta>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = match classify::classify(&method, uri.path(), uri.query()) {
        Ok(Route::Trust(req)) => req,
        Ok(Route::TrustChangefeed) => {
            return match global_changefeed(&gw, &meta, uri.query(), &headers).await {
                Ok(response) => response,
                Err(e) => e.response(&meta.challenge),
            };
        }
        Ok(_) => {
            return NotaryError::NotFound(format!("no trust route {method} {}", uri.path()))
                .response(&meta.challenge);
        }
        Err(e) => return e.into_axum(&meta.challenge),
    };
    let request = (method.as_str(), uri.path());
    match handle(&gw, &meta, request, &req, uri.query(), &headers, body).await {
        Ok(response) => response,
        Err(e) => e.response(&meta.challenge),
    }
}

async fn handle(
    gw: &Arc<Gateway>,
    meta: &RequestMeta,
    request: (&str, &str),
    req: &TrustRequest,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, NotaryError> {
    let who = gw
        .authn
        .authenticate(headers.get(header::AUTHORIZATION), meta.source_ip)
        .map_err(|e| e.with_scope(|| trust_scope(req)))?;
    let decided = authorize(gw, &who, req, meta);
    let refusal = match &decided {
        Ok(()) => None,
        Err(NotaryError::Denied { reason, .. }) => Some(GatewayError::Denied {
            reason: reason.clone(),
        }),
        Err(NotaryError::Gateway(e)) => Some(e.clone()),
        Err(_) => None,
    };
    gw.audit_decision(meta, Some(&who.principal), request, refusal.as_ref());
    decided?;
    let reading = matches!(req.kind, TrustKind::Metadata(_) | TrustKind::Changefeed);
    let fail = |e: TrustError| NotaryError::Trust { error: e, reading };
    let trust = Arc::clone(&gw.trust);
    let gun = req.gun.clone();
    match req.kind.clone() {
        TrustKind::Metadata(what) => {
            let consistent = !matches!(what, MetadataRef::Current(_));
            let found =
                blocking(async move { trust.get(&gun, &what, OffsetDateTime::now_utc()).await })
                    .await?
                    .map_err(fail)?;
            let mut response = Response::new(Body::from(found.bytes));
            let headers = response.headers_mut();
            let anonymous = who.principal == Principal::Anonymous;
            let cache = match (consistent, anonymous) {
                (true, true) => CONSISTENT_CACHE,
                (true, false) => CONSISTENT_CACHE_PRIVATE,
                (false, true) => CURRENT_CACHE,
                (false, false) => CURRENT_CACHE_PRIVATE,
            };
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
            if let Ok(value) = HeaderValue::from_str(&http_date(found.modified)) {
                headers.insert(header::LAST_MODIFIED, value);
            }
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(response)
        }
        TrustKind::Update => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let parts = upload_parts(&content_type, &body)?;
            blocking(async move { trust.update(&gun, parts, OffsetDateTime::now_utc()).await })
                .await?
                .map_err(fail)?;
            Ok(empty())
        }
        TrustKind::Delete => {
            blocking(async move { trust.delete(&gun).await })
                .await?
                .map_err(fail)?;
            Ok(empty())
        }
        TrustKind::Key(role) => {
            let key = blocking(async move { trust.public_key(&gun, &role).await })
                .await?
                .map_err(fail)?;
            Ok(json(StatusCode::OK, key.to_json().to_string()))
        }
        TrustKind::RotateKey(role) => {
            let key = blocking(async move { trust.rotate_key(&gun, &role).await })
                .await?
                .map_err(fail)?;
            Ok(json(StatusCode::OK, key.to_json().to_string()))
        }
        TrustKind::Changefeed => {
            let (change_id, records) = changefeed_query(query.unwrap_or_default())?;
            let feed = blocking(async move {
                trust
                    .changefeed(Some(&gun), change_id.as_deref(), records)
                    .await
            })
            .await?
            .map_err(fail)?;
            let body = serde_json::to_string(&feed)
                .map_err(|e| NotaryError::Internal(format!("changefeed json: {e}")))?;
            Ok(json(StatusCode::OK, body))
        }
    }
}

/// What notary-server asks for on its changefeed of every GUN.
const CATALOG_SCOPE: &str = "registry:catalog:*";

/// `GET /v2/_trust/changefeed`: the records of the GUNs the caller may read
/// (`content/read` on the GUN's repository, as each GUN's own changefeed needs; the admin
/// account reads every one), with notary's paging. Authentication is notary-server's for
/// this route: anonymous callers are challenged for `registry:catalog:*` and a bearer
/// token must carry that scope; what it shows is then up to policy alone, so a token
/// scoped to one repository learns no other repository's name.
async fn global_changefeed(
    gw: &Arc<Gateway>,
    meta: &RequestMeta,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, NotaryError> {
    let catalog = || CATALOG_SCOPE.to_owned();
    let who = gw
        .authn
        .authenticate(headers.get(header::AUTHORIZATION), meta.source_ip)
        .map_err(|e| e.with_scope(catalog))?;
    if who.principal == Principal::Anonymous {
        gw.metrics.record_decision(false);
        return Err(GatewayError::AuthenticationRequired {
            scope: Some(catalog()),
        }
        .into());
    }
    if !claim_covers_catalog(&who) {
        gw.metrics.record_decision(false);
        return Err(GatewayError::InsufficientScope { scope: catalog() }.into());
    }
    gw.metrics.record_decision(true);
    let (change_id, records) = changefeed_query(query.unwrap_or_default())?;
    let (gw, principal, source_ip) = (Arc::clone(gw), who.principal, meta.source_ip);
    let feed = blocking(async move {
        let identity = gw.store.snapshot();
        // One decision per repository, however many records it has.
        let mut readable: HashMap<String, bool> = HashMap::new();
        let visible = |gun: &str| {
            let Some(repository) = gun_repository(gun) else {
                return false;
            };
            if let Some(&known) = readable.get(repository) {
                return known;
            }
            let check = Check {
                action: Action::ContentRead,
                repository: repository.to_owned(),
                operation: Operation::ReadTrust,
                reference: None,
            };
            let allowed = access::ask(&gw.engine, &identity, &principal, &check, source_ip).allowed;
            readable.insert(repository.to_owned(), allowed);
            allowed
        };
        gw.trust
            .changefeed_of(visible, change_id.as_deref(), records)
            .await
    })
    .await?
    .map_err(|error| NotaryError::Trust {
        error,
        reading: true,
    })?;
    let body = serde_json::to_string(&feed)
        .map_err(|e| NotaryError::Internal(format!("changefeed json: {e}")))?;
    Ok(json(StatusCode::OK, body))
}

/// Whether a bearer claim (if any) grants `registry:catalog:*`.
fn claim_covers_catalog(who: &Authenticated) -> bool {
    who.bearer_access.as_deref().is_none_or(|claim| {
        claim.iter().any(|entry| {
            entry.kind == "registry"
                && entry.name == "catalog"
                && entry.actions.iter().any(|a| a == "*")
        })
    })
}

/// Runs `work` to completion on a blocking thread: redb writes sync to disk, and
/// validation and signing take a while.
async fn blocking<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, NotaryError> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(work))
        .await
        .map_err(|e| NotaryError::Internal(format!("trust task: {e}")))
}

/// The notary actions a bearer claim must name on the GUN for a request.
fn claim_actions(kind: &TrustKind) -> &'static [&'static str] {
    match kind {
        TrustKind::Metadata(_) | TrustKind::Changefeed => &["pull"],
        TrustKind::Update | TrustKind::Key(_) => &["push", "pull"],
        TrustKind::Delete | TrustKind::RotateKey(_) => &["*"],
    }
}

/// The challenge scope of a trust request: the GUN with every notary action it needs.
fn trust_scope(req: &TrustRequest) -> String {
    format!(
        "repository:{}:{}",
        req.gun,
        claim_actions(&req.kind).join(",")
    )
}

/// Cedar decides every check; then the bearer claim (if any) must cover the GUN.
fn authorize(
    gw: &Gateway,
    who: &Authenticated,
    req: &TrustRequest,
    meta: &RequestMeta,
) -> Result<(), NotaryError> {
    let claim = claim_actions(&req.kind);
    let scope = trust_scope(req);
    let identity = gw.store.snapshot();
    let checks = claim
        .iter()
        .filter_map(|a| access::trust_checks(a, &who.principal))
        .flatten();
    for &(action, operation) in checks {
        let check = Check {
            action,
            repository: req.repository.clone(),
            operation,
            reference: None,
        };
        let decision = access::ask(
            &gw.engine,
            &identity,
            &who.principal,
            &check,
            meta.source_ip,
        );
        if !decision.allowed {
            gw.metrics.record_decision(false);
            if who.principal == Principal::Anonymous {
                return Err(GatewayError::AuthenticationRequired { scope: Some(scope) }.into());
            }
            let mut reason = format!("{action} ({}) on `{}`", operation.as_str(), req.repository);
            if !decision.policies.is_empty() {
                reason.push_str(&format!(": forbidden by {}", decision.policies.join(", ")));
            }
            return Err(NotaryError::Denied { scope, reason });
        }
    }
    if !claim.iter().all(|a| access::claim_covers(who, &req.gun, a)) {
        gw.metrics.record_decision(false);
        return Err(GatewayError::InsufficientScope { scope }.into());
    }
    gw.metrics.record_decision(true);
    Ok(())
}

/// `change_id` (kept as text: the service parses it) and `records` (default 0 = the
/// service's default page).
fn changefeed_query(query: &str) -> Result<(Option<String>, i64), NotaryError> {
    let mut change_id = None;
    let mut records = 0;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "change_id" => change_id = Some(value.to_owned()),
            "records" if !value.is_empty() => {
                records = value.parse::<i32>().map_err(|_| {
                    NotaryError::InvalidParameters(format!(
                        "records `{}` is not an integer",
                        cut(value)
                    ))
                })?;
            }
            _ => {}
        }
    }
    Ok((change_id, i64::from(records)))
}

/// The parts of a `multipart/form-data` update: each part's `filename` is a role (kept
/// verbatim, `targets/releases` included; an optional `.json` suffix is dropped), its
/// body the file's bytes. The body is already bounded by the control app.
fn upload_parts(content_type: &str, body: &[u8]) -> Result<Vec<(Role, Bytes)>, NotaryError> {
    let malformed = |why: &str| NotaryError::MalformedUpload(why.to_owned());
    let (mime, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(malformed("the update must be multipart/form-data"));
    }
    let boundary = params
        .split(';')
        .find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            k.eq_ignore_ascii_case("boundary")
                .then(|| v.trim_matches('"'))
        })
        .filter(|b| !b.is_empty() && b.len() <= 200)
        .ok_or_else(|| malformed("the multipart content type has no boundary"))?;
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // Everything before the first delimiter is preamble.
    let mut rest = find(body, delimiter)
        .and_then(|at| body.get(at + delimiter.len()..))
        .ok_or_else(|| malformed("the multipart body has no parts"))?;
    let mut parts: Vec<(Role, Bytes)> = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        let after_line = rest
            .strip_prefix(b"\r\n")
            .ok_or_else(|| malformed("malformed multipart delimiter line"))?;
        let header_end = find(after_line, b"\r\n\r\n")
            .ok_or_else(|| malformed("a multipart part has no header end"))?;
        let (head, tail) = after_line.split_at(header_end);
        let content = tail.get(4..).unwrap_or_default();
        let mut close = b"\r\n".to_vec();
        close.extend_from_slice(delimiter);
        let end = find(content, &close)
            .ok_or_else(|| malformed("the multipart body is not terminated"))?;
        let (file, next) = content.split_at(end);
        rest = next.get(close.len()..).unwrap_or_default();
        if parts.len() == MAX_PARTS {
            return Err(malformed("too many parts in one update"));
        }
        let filename = part_filename(head).ok_or(NotaryError::NoFilename)?;
        let role =
            Role::parse(&filename).map_err(|_| NotaryError::InvalidRole(filename.clone()))?;
        if parts.iter().any(|(r, _)| *r == role) {
            return Err(NotaryError::MalformedUpload(format!(
                "role `{role}` is uploaded twice"
            )));
        }
        parts.push((role, Bytes::copy_from_slice(file)));
    }
    Ok(parts)
}

/// The `filename` parameter of a part's `Content-Disposition` (quoted or not).
fn part_filename(head: &[u8]) -> Option<String> {
    let head = std::str::from_utf8(head).ok()?;
    let disposition = head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-disposition")
            .then_some(value)
    })?;
    let filename = disposition.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("filename")
            .then_some(v.trim())
    })?;
    let filename = match filename.strip_prefix('"').and_then(|f| f.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => filename.to_owned(),
    };
    (!filename.is_empty()).then_some(filename)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An HTTP date (RFC 7231 IMF-fixdate), what Go's `time.RFC1123` prints for UTC.
fn http_date(t: OffsetDateTime) -> String {
    let format = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(format)
        .unwrap_or_default()
}

fn empty() -> Response {
    Response::new(Body::empty())
}

fn json(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// A notary refusal.
#[derive(Debug, thiserror::Error)]
enum NotaryError {
    /// Authentication failures and challenges: the gateway's own 401s.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// Policy refuses: a 401 for the GUN scope, as notary-server answers.
    #[error("requested access to the resource is denied: {reason}")]
    Denied { scope: String, reason: String },
    /// `reading`: the request was a metadata or changefeed GET.
    #[error("{error}")]
    Trust { error: TrustError, reading: bool },
    #[error("{0}")]
    MalformedUpload(String),
    #[error("a multipart part has no filename (the role it carries)")]
    NoFilename,
    #[error("invalid role `{0}` in the update")]
    InvalidRole(String),
    #[error("{0}")]
    InvalidParameters(String),
    #[error("{0}")]
    NotFound(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl NotaryError {
    /// Status, notary code and typed detail.
    fn classify(&self) -> (StatusCode, &'static str, serde_json::Value) {
        use serde_json::Value::Null;
        match self {
            NotaryError::Gateway(_) | NotaryError::Denied { .. } => {
                (StatusCode::UNAUTHORIZED, "UNAUTHORIZED", Null)
            }
            NotaryError::MalformedUpload(_) => (StatusCode::BAD_REQUEST, "MALFORMED_UPLOAD", Null),
            NotaryError::NoFilename => (StatusCode::BAD_REQUEST, "NO_FILENAME", Null),
            NotaryError::InvalidRole(_) => (StatusCode::BAD_REQUEST, "INVALID_ROLE", Null),
            NotaryError::InvalidParameters(_) => {
                (StatusCode::BAD_REQUEST, "INVALID_PARAMETERS", Null)
            }
            NotaryError::NotFound(_) => (StatusCode::NOT_FOUND, "METADATA_NOT_FOUND", Null),
            NotaryError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", Null),
            NotaryError::Trust { error, reading } => match error {
                TrustError::Disabled if *reading => {
                    (StatusCode::NOT_FOUND, "METADATA_NOT_FOUND", Null)
                }
                TrustError::Disabled => (
                    StatusCode::BAD_REQUEST,
                    "INVALID_UPDATE",
                    UpdateError::Validation(error.to_string()).detail(),
                ),
                TrustError::NotFound { .. } | TrustError::NotServerManaged(_) => {
                    (StatusCode::NOT_FOUND, "METADATA_NOT_FOUND", Null)
                }
                TrustError::OldVersion(_) => (StatusCode::BAD_REQUEST, "VERSION", Null),
                TrustError::Update(UpdateError::MalformedJson(_)) => {
                    (StatusCode::BAD_REQUEST, "MALFORMED_JSON", Null)
                }
                TrustError::Update(e) => (StatusCode::BAD_REQUEST, "INVALID_UPDATE", e.detail()),
                TrustError::InvalidParameter(_) => {
                    (StatusCode::BAD_REQUEST, "INVALID_PARAMETERS", Null)
                }
                TrustError::Store(TrustStoreError::Database(e)) if is_out_of_space(e) => (
                    StatusCode::INSUFFICIENT_STORAGE,
                    "INSUFFICIENT_STORAGE",
                    Null,
                ),
                TrustError::Store(_) | TrustError::CorruptKey { .. } | TrustError::Kek(_)
                    if !*reading =>
                {
                    (StatusCode::INTERNAL_SERVER_ERROR, "UPDATING", Null)
                }
                TrustError::Store(_) | TrustError::CorruptKey { .. } | TrustError::Kek(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", Null)
                }
            },
        }
    }

    fn response(&self, challenge: &Challenge) -> Response {
        let scope = match self {
            NotaryError::Gateway(e) => return e.into_axum(challenge),
            NotaryError::Denied { scope, .. } => Some(scope),
            _ => None,
        };
        let (status, code, detail) = self.classify();
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "trust request failed");
            "internal error".to_owned()
        } else {
            cut(&self.to_string())
        };
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": message, "detail": shorten(detail) }]
        });
        let mut response = json(status, body.to_string());
        if let Some(scope) = scope {
            // The same challenge an insufficient bearer scope gets.
            let refusal = GatewayError::InsufficientScope {
                scope: scope.clone(),
            };
            if let Some(value) = refusal.to_response(challenge).www_authenticate {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// `text` cut to [`MAX_ERROR_TEXT`] bytes (on a character boundary).
fn cut(text: &str) -> String {
    clip(text, MAX_ERROR_TEXT)
}

/// A detail whose strings are cut, so the whole body stays under 1 KiB.
fn shorten(detail: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match detail {
        Value::String(s) => Value::String(cut(&s)),
        Value::Object(map) => map.into_iter().map(|(k, v)| (k, shorten(v))).collect(),
        Value::Array(items) => items.into_iter().map(shorten).collect(),
        other => other,
    }
}

#[cfg(test)]
mod tests;
