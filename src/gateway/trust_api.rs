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
use crate::trust::service::{MetadataRef, TrustError, gun_repository};
use crate::trust::validate::UpdateError;

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
    match handle(&gw, &meta, &req, uri.query(), &headers, body).await {
        Ok(response) => response,
        Err(e) => e.response(&meta.challenge),
    }
}

async fn handle(
    gw: &Arc<Gateway>,
    meta: &RequestMeta,
    req: &TrustRequest,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, NotaryError> {
    let who = gw
        .authn
        .authenticate(headers.get(header::AUTHORIZATION))
        .map_err(|e| e.with_scope(|| trust_scope(req)))?;
    authorize(gw, &who, req, meta)?;
    let reading = matches!(req.kind, TrustKind::Metadata(_) | TrustKind::Changefeed);
    let fail = |e: TrustError| NotaryError::Trust { error: e, reading };
    let trust = Arc::clone(&gw.trust);
    let gun = req.gun.clone();
    match req.kind.clone() {
        TrustKind::Metadata(what) => {
            let consistent = !matches!(what, MetadataRef::Current(_));
            let found = blocking(move || trust.get(&gun, &what, OffsetDateTime::now_utc()))
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
            blocking(move || trust.update(&gun, parts, OffsetDateTime::now_utc()))
                .await?
                .map_err(fail)?;
            Ok(empty())
        }
        TrustKind::Delete => {
            blocking(move || trust.delete(&gun)).await?.map_err(fail)?;
            Ok(empty())
        }
        TrustKind::Key(role) => {
            let key = blocking(move || trust.public_key(&gun, &role))
                .await?
                .map_err(fail)?;
            Ok(json(StatusCode::OK, key.to_json().to_string()))
        }
        TrustKind::RotateKey(role) => {
            let key = blocking(move || trust.rotate_key(&gun, &role))
                .await?
                .map_err(fail)?;
            Ok(json(StatusCode::OK, key.to_json().to_string()))
        }
        TrustKind::Changefeed => {
            let (change_id, records) = changefeed_query(query.unwrap_or_default())?;
            let feed =
                blocking(move || trust.changefeed(Some(&gun), change_id.as_deref(), records))
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
        .authenticate(headers.get(header::AUTHORIZATION))
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
    let feed = blocking(move || {
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NotaryError> {
    tokio::task::spawn_blocking(f)
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

/// The Cedar checks (on the GUN's repository) a notary action stands for; `None` for
/// actions notary does not use. The token endpoint grants by the same table.
pub(crate) fn action_checks(
    action: &str,
    principal: &Principal,
) -> Option<&'static [(Action, Operation)]> {
    const READ: &[(Action, Operation)] = &[(Action::ContentRead, Operation::ReadTrust)];
    const WRITE: &[(Action, Operation)] = &[
        (Action::ContentWrite, Operation::WriteTrust),
        (Action::TrustWrite, Operation::WriteTrust),
    ];
    const DELETE: &[(Action, Operation)] = &[
        (Action::ContentDelete, Operation::DeleteTrust),
        (Action::TrustWrite, Operation::DeleteTrust),
    ];
    // The admin account may clean up trust data it may not write.
    const ADMIN_DELETE: &[(Action, Operation)] = &[(Action::ContentDelete, Operation::DeleteTrust)];
    match (action, principal) {
        ("pull", _) => Some(READ),
        ("push", _) => Some(WRITE),
        ("*", Principal::Admin) => Some(ADMIN_DELETE),
        ("*", _) => Some(DELETE),
        _ => None,
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
        .filter_map(|a| action_checks(a, &who.principal))
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
mod tests {
    use axum::http::Request;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::Value;
    use sha2::{Digest, Sha256};
    use tower::ServiceExt;

    use super::*;
    use crate::gateway::jwt::{AccessEntry, TokenUse};
    use crate::gateway::testing;
    use crate::identity::now_unix;
    use crate::trust::PublicKey;
    use crate::trust::service::ContentTrustStatus;
    use crate::trust::validate::testkit::{RootKeys, TestKey, root_json, sign, targets_json};

    const GUN: &str = "127.0.0.1:5443/samples/app";
    const BOUNDARY: &str = "b0undary";

    struct Fixture {
        _dir: tempfile::TempDir,
        gw: Arc<Gateway>,
        root: TestKey,
        targets: TestKey,
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Reply {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }

        fn code(&self) -> String {
            self.json()["errors"][0]["code"]
                .as_str()
                .unwrap()
                .to_owned()
        }

        fn header(&self, name: header::HeaderName) -> &str {
            self.headers[name].to_str().unwrap()
        }
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let gw = testing::gateway(dir.path());
        gw.trust.set_status(ContentTrustStatus::Enabled).unwrap();
        Fixture {
            _dir: dir,
            gw,
            root: TestKey::root(GUN),
            targets: TestKey::ecdsa(),
        }
    }

    fn role(name: &str) -> Role {
        Role::parse(name).unwrap()
    }

    fn multipart(parts: &[(&str, &Bytes)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (filename, bytes) in parts {
            body.extend_from_slice(
                format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; \
                     filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        body
    }

    impl Fixture {
        /// A bearer token for a new token `name` with scope-map `rules` and claim
        /// `actions` on the GUN.
        fn bearer(&self, name: &str, rules: &[Action], actions: &[&str]) -> String {
            let principal = testing::token(&self.gw.store, name, &[("samples/app", rules)]);
            self.bearer_for(&principal, actions)
        }

        fn bearer_for(&self, principal: &Principal, actions: &[&str]) -> String {
            let subject = self.gw.authn.subject(principal).unwrap();
            let access = vec![AccessEntry {
                kind: "repository".into(),
                name: GUN.into(),
                actions: actions.iter().map(|a| (*a).to_owned()).collect(),
            }];
            let signed = self
                .gw
                .issuer
                .sign(TokenUse::Access, subject, access, now_unix())
                .unwrap();
            format!("Bearer {}", signed.token)
        }

        fn signer(&self) -> String {
            use Action::*;
            self.bearer(
                "signer",
                &[ContentRead, ContentWrite, TrustWrite],
                &["push", "pull"],
            )
        }

        async fn call(
            &self,
            method: &str,
            rest: &str,
            auth: Option<&str>,
            content_type: Option<&str>,
            body: Vec<u8>,
        ) -> Reply {
            let mut request = Request::builder()
                .method(method)
                .uri(format!("/v2/{GUN}/_trust/{rest}"))
                .extension(testing::meta());
            if let Some(auth) = auth {
                request = request.header(header::AUTHORIZATION, auth);
            }
            if let Some(content_type) = content_type {
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            let response = router()
                .with_state(Arc::clone(&self.gw))
                .oneshot(request.body(Body::from(body)).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            Reply {
                status,
                headers,
                body,
            }
        }

        async fn get(&self, rest: &str, auth: &str) -> Reply {
            self.call("GET", rest, Some(auth), None, Vec::new()).await
        }

        async fn post(&self, auth: &str, parts: &[(&str, &Bytes)]) -> Reply {
            let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
            self.call(
                "POST",
                "tuf/",
                Some(auth),
                Some(&content_type),
                multipart(parts),
            )
            .await
        }

        async fn key(&self, name: &str, auth: &str) -> PublicKey {
            let reply = self.get(&format!("tuf/{name}.key"), auth).await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
            PublicKey::from_json(&reply.json()).unwrap()
        }

        fn root_file(&self, timestamp: &PublicKey, snapshot: &PublicKey) -> Bytes {
            let keys = RootKeys {
                root: vec![&self.root.public],
                targets: vec![&self.targets.public],
                targets_threshold: 1,
                snapshot,
                timestamp,
            };
            let expires = OffsetDateTime::now_utc() + time::Duration::days(3650);
            sign(&root_json(1, &keys, expires), &[&self.root])
        }

        fn targets_file(&self, version: u64) -> Bytes {
            let expires = OffsetDateTime::now_utc() + time::Duration::days(1000);
            let body = targets_json(version, &[("v1", b"manifest")], &[], expires);
            sign(&body, &[&self.targets])
        }

        /// docker's first signed push; the root's bytes.
        async fn publish(&self, auth: &str) -> Bytes {
            let timestamp = self.key("timestamp", auth).await;
            let snapshot = self.key("snapshot", auth).await;
            let root = self.root_file(&timestamp, &snapshot);
            let reply = self
                .post(
                    auth,
                    &[("root", &root), ("targets.json", &self.targets_file(1))],
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
            assert!(reply.body.is_empty());
            root
        }
    }

    #[tokio::test]
    async fn publish_then_read_with_caching_headers() {
        let f = fixture();
        let signer = f.signer();
        let missing = f.get("tuf/root.json", &signer).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.code(), "METADATA_NOT_FOUND");
        let root = f.publish(&signer).await;
        let reader = f.bearer("reader", &[Action::ContentRead], &["pull"]);
        let current = f.get("tuf/root.json", &reader).await;
        assert_eq!(current.status, StatusCode::OK);
        assert_eq!(current.body, root);
        assert_eq!(current.header(header::CACHE_CONTROL), CURRENT_CACHE_PRIVATE);
        let modified = current.header(header::LAST_MODIFIED);
        assert!(
            modified.ends_with(" GMT") && modified.len() == 29,
            "{modified}"
        );
        let sha = hex::encode(Sha256::digest(&root));
        for rest in [format!("tuf/root.{sha}.json"), "tuf/1.root.json".to_owned()] {
            let consistent = f.get(&rest, &reader).await;
            assert_eq!(consistent.status, StatusCode::OK, "{rest}");
            assert_eq!(consistent.body, root);
            assert_eq!(
                consistent.header(header::CACHE_CONTROL),
                CONSISTENT_CACHE_PRIVATE
            );
        }
        // Only what anonymous callers may read goes to shared caches.
        f.gw.engine.set_anonymous_pull(true);
        for (rest, cache) in [
            ("tuf/root.json".to_owned(), CURRENT_CACHE),
            (format!("tuf/root.{sha}.json"), CONSISTENT_CACHE),
        ] {
            let public = f.call("GET", &rest, None, None, Vec::new()).await;
            assert_eq!(public.status, StatusCode::OK, "{rest}");
            assert_eq!(public.header(header::CACHE_CONTROL), cache);
        }
        f.gw.engine.set_anonymous_pull(false);
        let timestamp = f.get("tuf/timestamp.json", &reader).await;
        assert_eq!(timestamp.json()["signed"]["_type"], "Timestamp");
        let feed = f.get("changefeed?records=10", &reader).await;
        assert_eq!(feed.json()["count"], 1);
        assert_eq!(feed.json()["records"][0]["GUN"], GUN);
        // A reader may not publish, fetch keys or delete.
        let refused = f.get("tuf/timestamp.key", &reader).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refused.code(), "UNAUTHORIZED");
    }

    #[tokio::test]
    async fn bad_uploads_get_notary_codes() {
        let f = fixture();
        let signer = f.signer();
        f.publish(&signer).await;
        let check = |reply: Reply, status: StatusCode, code: &str| {
            assert_eq!(reply.status, status, "{:?}", reply.body);
            assert_eq!(reply.code(), code);
            assert!(reply.body.len() < 1024);
            assert_eq!(
                reply.header(header::CONTENT_TYPE),
                "application/json; charset=utf-8"
            );
            reply
        };
        // The same targets version again.
        let stale = f.post(&signer, &[("targets", &f.targets_file(1))]).await;
        check(stale, StatusCode::BAD_REQUEST, "VERSION");
        // A tampered byte breaks the signature.
        let tampered = Bytes::from(
            String::from_utf8(f.targets_file(2).to_vec())
                .unwrap()
                .replace("\"version\":2", "\"version\":3"),
        );
        let reply = check(
            f.post(&signer, &[("targets", &tampered)]).await,
            StatusCode::BAD_REQUEST,
            "INVALID_UPDATE",
        );
        assert_eq!(reply.json()["errors"][0]["detail"]["Name"], "ErrBadTargets");
        let garbage = Bytes::from_static(b"not json");
        let reply = f.post(&signer, &[("targets", &garbage)]).await;
        check(reply, StatusCode::BAD_REQUEST, "MALFORMED_JSON");
        let reply = f.post(&signer, &[("Targets", &garbage)]).await;
        check(reply, StatusCode::BAD_REQUEST, "INVALID_ROLE");
        let reply = f.post(&signer, &[("", &garbage)]).await;
        check(reply, StatusCode::BAD_REQUEST, "NO_FILENAME");
        let reply = f
            .call(
                "POST",
                "tuf/",
                Some(&signer),
                Some("application/json"),
                b"{}".to_vec(),
            )
            .await;
        check(reply, StatusCode::BAD_REQUEST, "MALFORMED_UPLOAD");
        // A good update still goes through.
        let reply = f.post(&signer, &[("targets", &f.targets_file(2))]).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }

    #[tokio::test]
    async fn refusals_are_401s_for_the_gun_scope() {
        use Action::*;
        let f = fixture();
        let anonymous = f.call("GET", "tuf/root.json", None, None, Vec::new()).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            anonymous.header(header::WWW_AUTHENTICATE),
            format!(
                "Bearer realm=\"http://127.0.0.1:5000/oauth2/token\",service=\"portcullis-test\",\
                 scope=\"repository:{GUN}:pull\""
            )
        );
        // Push without trust/write: no signing.
        let pusher = f.bearer("pusher", &[ContentRead, ContentWrite], &["push", "pull"]);
        let reply = f.get("tuf/timestamp.key", &pusher).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(
            reply.json()["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("trust/write"),
            "{:?}",
            reply.body
        );
        assert!(reply.header(header::WWW_AUTHENTICATE).ends_with(&format!(
            "scope=\"repository:{GUN}:push,pull\",error=\"insufficient_scope\""
        )));
        // Policy allows, but the claim names only `pull`.
        let narrow = f.bearer(
            "narrow",
            &[ContentRead, ContentWrite, TrustWrite],
            &["pull"],
        );
        let reply = f.get("tuf/snapshot.key", &narrow).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        // The admin account never signs, but may delete and rotate.
        let admin = format!("Basic {}", STANDARD.encode("admin:admin-secret"));
        assert_eq!(
            f.get("tuf/timestamp.key", &admin).await.status,
            StatusCode::UNAUTHORIZED
        );
        let rotate = f
            .call("POST", "tuf/snapshot.key", Some(&admin), None, Vec::new())
            .await;
        assert_eq!(rotate.status, StatusCode::OK);
        let delete = f
            .call("DELETE", "tuf/", Some(&admin), None, Vec::new())
            .await;
        assert_eq!(delete.status, StatusCode::OK);
        // A signer without content/delete may not.
        let signer = f.signer();
        let delete = f
            .call("DELETE", "tuf/", Some(&signer), None, Vec::new())
            .await;
        assert_eq!(delete.status, StatusCode::UNAUTHORIZED);
        let owner = f.bearer(
            "owner",
            &[ContentRead, ContentWrite, ContentDelete, TrustWrite],
            &["*"],
        );
        let delete = f
            .call("DELETE", "tuf/", Some(&owner), None, Vec::new())
            .await;
        assert_eq!(delete.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn disabled_content_trust_is_a_clear_notary_error() {
        let f = fixture();
        let signer = f.signer();
        f.publish(&signer).await;
        f.gw.trust.set_status(ContentTrustStatus::Disabled).unwrap();
        let read = f.get("tuf/root.json", &signer).await;
        assert_eq!(read.status, StatusCode::NOT_FOUND);
        assert_eq!(read.code(), "METADATA_NOT_FOUND");
        assert_eq!(
            read.json()["errors"][0]["message"],
            "content trust is disabled on this registry"
        );
        let key = f.get("tuf/timestamp.key", &signer).await;
        assert_eq!(key.status, StatusCode::BAD_REQUEST);
        assert_eq!(key.code(), "INVALID_UPDATE");
        assert_eq!(key.json()["errors"][0]["detail"]["Name"], "ErrValidation");
    }

    #[test]
    fn multipart_keeps_delegation_names_and_strips_json() {
        let root = Bytes::from_static(b"{\"a\":1}");
        let releases = Bytes::from_static(b"{\"b\":\r\n2}");
        let body = multipart(&[("root.json", &root), ("targets/releases", &releases)]);
        let content_type = format!("multipart/form-data; boundary=\"{BOUNDARY}\"");
        let parts = upload_parts(&content_type, &body).unwrap();
        assert_eq!(
            parts,
            vec![
                (role("root"), root.clone()),
                (role("targets/releases"), releases)
            ]
        );
        let twice = multipart(&[("root", &root), ("root.json", &root)]);
        assert!(matches!(
            upload_parts(&content_type, &twice),
            Err(NotaryError::MalformedUpload(_))
        ));
        let truncated = &body[..body.len() - 20];
        assert!(matches!(
            upload_parts(&content_type, truncated),
            Err(NotaryError::MalformedUpload(_))
        ));
        assert!(matches!(
            upload_parts("multipart/form-data", &body),
            Err(NotaryError::MalformedUpload(_))
        ));
    }
}
