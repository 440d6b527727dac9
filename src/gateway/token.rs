//! `/oauth2/token`: the Docker token endpoint. `GET` with optional Basic credentials
//! (what `docker login` and pulls use, `offline_token=true` for a refresh token) and the
//! OAuth2 `POST` form (`grant_type=password` or `refresh_token`, what docker uses once it
//! holds an identity token). The JWT's `access` claim lists only what policy grants for
//! the requested scopes; anonymous callers get an empty grant, not an error. Scopes
//! naming a trust GUN (`repository:127.0.0.1:5443/samples/app:push,pull`) are granted
//! by the content-trust rules.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use axum::routing::get;
use percent_encoding::percent_decode_str;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::errors::GatewayError;
use super::jwt::{AccessEntry, TokenUse};
use super::{Gateway, RequestMeta, access};
use crate::audit::{Actor, Record};
use crate::identity::pattern::is_valid_repository_name;
use crate::identity::{Principal, now_unix};
use crate::trust::naming::gun_repository;

/// GET and POST `/oauth2/token`.
pub fn router() -> Router<Arc<Gateway>> {
    Router::new().route("/oauth2/token", get(get_token).post(post_token))
}

/// The token response: `token` and `access_token` are the same JWT (old and OAuth2
/// clients read one or the other).
#[derive(Debug, Serialize)]
struct TokenResponse {
    token: String,
    access_token: String,
    expires_in: u64,
    issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// The granted scopes, space-separated (required in OAuth2 responses).
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// The granted scopes, for the audit record.
    #[serde(skip)]
    granted: Vec<String>,
}

async fn get_token(
    State(gw): State<Arc<Gateway>>,
    Extension(meta): Extension<RequestMeta>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let form = Form::parse(query.as_deref().unwrap_or_default());
    let who = gw
        .authn
        .authenticate(headers.get(header::AUTHORIZATION), meta.source_ip);
    let principal = who.as_ref().ok().map(|who| who.principal.clone());
    let result = who.and_then(|who| {
        let offline = form.one("offline_token") == Some("true");
        issue(&gw, &meta, &form, &who.principal, offline, false)
    });
    respond(&gw, &meta, "basic", principal, result)
}

async fn post_token(
    State(gw): State<Arc<Gateway>>,
    Extension(meta): Extension<RequestMeta>,
    body: Bytes,
) -> Response {
    let mut grant = "other";
    let mut authenticated = None;
    let result = std::str::from_utf8(&body)
        .map_err(|_| GatewayError::BadRequest("the token request form is not utf-8".into()))
        .map(Form::parse)
        .and_then(|form| {
            let (principal, offline) = match form.one("grant_type") {
                Some("password") => {
                    grant = "password";
                    let username = form.required("username")?;
                    let password = form.required("password")?;
                    let offline = form.one("access_type") == Some("offline");
                    (gw.authn.basic(username, password, meta.source_ip)?, offline)
                }
                // The refresh token stays what the client holds; no new one is minted.
                Some("refresh_token") => {
                    grant = "refresh_token";
                    (gw.authn.refresh(form.required("refresh_token")?)?, false)
                }
                Some(other) => {
                    return Err(GatewayError::BadRequest(format!(
                        "unsupported grant_type `{other}`"
                    )));
                }
                None => return Err(GatewayError::BadRequest("grant_type is required".into())),
            };
            authenticated = Some(principal.clone());
            issue(&gw, &meta, &form, &principal, offline, true)
        });
    respond(&gw, &meta, grant, authenticated, result)
}

/// Checks the service, grants each requested scope as policy allows, and signs.
fn issue(
    gw: &Gateway,
    meta: &RequestMeta,
    form: &Form,
    principal: &Principal,
    offline: bool,
    oauth: bool,
) -> Result<TokenResponse, GatewayError> {
    if let Some(service) = form.one("service")
        && service != gw.service
    {
        return Err(GatewayError::BadRequest(format!(
            "unknown service `{service}`: this registry is `{}`",
            gw.service
        )));
    }
    // GET repeats `scope`; the OAuth2 form sends one space-separated list.
    let mut access: Vec<AccessEntry> = Vec::new();
    for scope in form.all("scope").flat_map(str::split_whitespace) {
        let requested = parse_scope(scope)?;
        let actions = grant(gw, meta, principal, &requested);
        if actions.is_empty() {
            continue;
        }
        match access
            .iter_mut()
            .find(|e| e.kind == requested.kind && e.name == requested.name)
        {
            Some(entry) => {
                for action in actions {
                    if !entry.actions.contains(&action) {
                        entry.actions.push(action);
                    }
                }
            }
            None => access.push(AccessEntry {
                kind: requested.kind,
                name: requested.name,
                actions,
            }),
        }
    }
    let now = now_unix();
    let subject = gw.authn.subject(principal)?;
    // Refresh tokens go to repository-scoped tokens only: theirs are bound to the
    // password they were issued for. The admin account exposes nothing to bind to, so
    // docker keeps the admin's password instead of a long-lived identity token.
    let refresh_token = match (offline, principal) {
        (false, _) | (true, Principal::Anonymous | Principal::Admin) => None,
        (true, Principal::Token { .. }) => Some(
            gw.issuer
                .sign(TokenUse::Refresh, subject.clone(), vec![], now)
                .map_err(|e| GatewayError::Internal(e.to_string()))?
                .token,
        ),
    };
    let granted: Vec<String> = access
        .iter()
        .map(|e| format!("{}:{}:{}", e.kind, e.name, e.actions.join(",")))
        .collect();
    let scope = oauth.then(|| granted.join(" "));
    tracing::debug!(subject = %subject.sub, ?access, "token issued");
    let signed = gw
        .issuer
        .sign(TokenUse::Access, subject, access, now)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let issued_at = OffsetDateTime::from_unix_timestamp(signed.claims.iat)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    Ok(TokenResponse {
        access_token: signed.token.clone(),
        token: signed.token,
        expires_in: gw.issuer.ttl().as_secs(),
        issued_at,
        refresh_token,
        scope,
        granted,
    })
}

/// One requested scope: `type[(class)]:name:action[,action…]`.
#[derive(Debug, PartialEq, Eq)]
struct RequestedScope {
    kind: String,
    name: String,
    actions: Vec<String>,
}

/// Every scope a token request's query (or form body) asks for, as `issue` reads them:
/// repeated `scope` keys, each a space-separated list; returns how many. The first
/// malformed one fails.
pub fn requested_scopes(query: &str) -> Result<usize, GatewayError> {
    let form = Form::parse(query);
    let mut count = 0;
    for scope in form.all("scope").flat_map(str::split_whitespace) {
        parse_scope(scope)?;
        count += 1;
    }
    Ok(count)
}

/// Parses a scope. The name may itself contain `:` (a registry host with a port, as in
/// trust scopes), so the actions follow the last `:`.
fn parse_scope(scope: &str) -> Result<RequestedScope, GatewayError> {
    let invalid = || GatewayError::BadRequest(format!("invalid scope `{scope}`"));
    let (kind, rest) = scope.split_once(':').ok_or_else(invalid)?;
    let (name, actions) = rest.rsplit_once(':').ok_or_else(invalid)?;
    // The deprecated resource class, `repository(plugin)`, is ignored.
    let kind = kind.split_once('(').map_or(kind, |(k, _)| k);
    if kind.is_empty() || name.is_empty() {
        return Err(invalid());
    }
    Ok(RequestedScope {
        kind: kind.to_owned(),
        name: name.to_owned(),
        actions: actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// What policy grants of one requested scope. The catalog goes to any authenticated
/// principal (it is filtered per repository anyway); unknown resource types get nothing.
/// A repository name that is a trust GUN (`host[:port]/repository`) is granted notary's
/// actions by the trust rules; a GUN without a port is also a valid repository name, so
/// it gets the union of both readings (every request is decided again anyway).
fn grant(
    gw: &Gateway,
    meta: &RequestMeta,
    principal: &Principal,
    requested: &RequestedScope,
) -> Vec<String> {
    match (requested.kind.as_str(), requested.name.as_str()) {
        ("repository", name) => match gun_repository(name) {
            None => access::granted(gw, principal, name, &requested.actions, meta),
            Some(repository) => {
                let registry = if is_valid_repository_name(name) {
                    access::granted(gw, principal, name, &requested.actions, meta)
                } else {
                    Vec::new()
                };
                let trust = trust_granted(gw, meta, principal, repository, &requested.actions);
                let mut out: Vec<String> = Vec::new();
                for action in &requested.actions {
                    if !out.contains(action)
                        && (registry.contains(action) || trust.contains(action))
                    {
                        out.push(action.clone());
                    }
                }
                out
            }
        },
        ("registry", "catalog") if *principal != Principal::Anonymous => requested
            .actions
            .iter()
            .filter(|a| *a == "*")
            .take(1)
            .cloned()
            .collect(),
        _ => Vec::new(),
    }
}

/// Which notary actions (`pull`, `push`, `*`) policy grants `principal` on the trust
/// data of `repository`: exactly what the trust API's rules allow (see
/// [`access::trust_checks`]), so `*` goes to whoever may delete or rotate keys.
fn trust_granted(
    gw: &Gateway,
    meta: &RequestMeta,
    principal: &Principal,
    repository: &str,
    requested: &[String],
) -> Vec<String> {
    let identity = gw.store.snapshot();
    let allowed = |action: &str| {
        access::trust_checks(action, principal).is_some_and(|checks| {
            checks.iter().all(|&(action, operation)| {
                let check = access::Check {
                    action,
                    repository: repository.to_owned(),
                    operation,
                    reference: None,
                };
                access::ask(&gw.engine, &identity, principal, &check, meta.source_ip).allowed
            })
        })
    };
    requested
        .iter()
        .filter(|action| allowed(action))
        .cloned()
        .collect()
}

/// The token response, with its audit record (`grant`: how the caller authenticated;
/// `principal`: who, when the credentials were good).
fn respond(
    gw: &Gateway,
    meta: &RequestMeta,
    grant: &str,
    principal: Option<Principal>,
    result: Result<TokenResponse, GatewayError>,
) -> Response {
    let result = result.and_then(|token| {
        serde_json::to_vec(&token)
            .map(|body| (token.granted, body))
            .map_err(|e| GatewayError::Internal(e.to_string()))
    });
    let (mut response, scopes, error) = match result {
        Ok((granted, body)) => {
            let mut response = Response::new(Body::from(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            (response, Some(granted), None)
        }
        Err(error) => (
            error.into_axum(&meta.challenge),
            None,
            Some(error.to_string()),
        ),
    };
    gw.audit.record(&Record::Token {
        actor: Actor {
            principal: Actor::principal(principal.as_ref()),
            client: meta.source_ip,
            request_id: &meta.request_id,
        },
        grant,
        status: response.status().as_u16(),
        scopes,
        error,
    });
    if let Some(principal) = principal {
        // For the access log.
        response.extensions_mut().insert(principal);
    }
    // Token responses must not be cached (RFC 6749 §5.1).
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An `application/x-www-form-urlencoded` query or body, keeping repeated keys.
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(text: &str) -> Form {
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        Form(
            text.split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn one(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, key: &str) -> Result<&str, GatewayError> {
        self.one(key)
            .ok_or_else(|| GatewayError::BadRequest(format!("`{key}` is required")))
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use crate::gateway::jwt::{Claims, PrincipalKind};
    use crate::gateway::testing;
    use crate::identity::scope::parse_rule;
    use crate::identity::store::{NewToken, ScopeMapUpdate, TokenScope, TokenUpdate};
    use crate::identity::{PasswordSlot, TokenStatus};

    struct Fixture {
        _dir: tempfile::TempDir,
        gw: Arc<Gateway>,
        /// password1 of token `ci-bot` (content/read + content/write on samples/hello-world).
        secret: String,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let gw = testing::gateway(dir.path());
        let rule = parse_rule("samples/hello-world", &["content/read", "content/write"]).unwrap();
        let created = gw
            .store
            .create_token(&NewToken {
                name: "ci-bot".into(),
                scope: TokenScope::Repositories(vec![rule]),
                status: TokenStatus::Enabled,
                passwords: vec![PasswordSlot::Password1],
                expires_at: None,
            })
            .await
            .unwrap();
        let secret = created.passwords[0].value.clone();
        Fixture {
            _dir: dir,
            gw,
            secret,
        }
    }

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        json: serde_json::Value,
    }

    impl Fixture {
        async fn call(&self, request: http::request::Builder, body: &str) -> Reply {
            let request = request
                .extension(testing::meta())
                .body(Body::from(body.to_owned()))
                .unwrap();
            let response = router()
                .with_state(Arc::clone(&self.gw))
                .oneshot(request)
                .await
                .unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            Reply {
                status,
                headers,
                json: serde_json::from_slice(&bytes).unwrap(),
            }
        }

        async fn get(&self, query: &str, authorization: Option<&str>) -> Reply {
            let mut request = Request::get(format!("/oauth2/token?{query}"));
            if let Some(a) = authorization {
                request = request.header(header::AUTHORIZATION, a);
            }
            self.call(request, "").await
        }

        async fn post(&self, form: &str) -> Reply {
            let request = Request::post("/oauth2/token")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            self.call(request, form).await
        }

        /// Verifies the reply's JWT as the gateway would on a registry request.
        fn claims(&self, reply: &Reply) -> Claims {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
            let token = reply.json["token"].as_str().unwrap();
            assert_eq!(reply.json["access_token"], token);
            self.gw
                .issuer
                .verify(token, TokenUse::Access, now_unix())
                .unwrap()
        }

        async fn set_status(&self, status: TokenStatus) {
            let update = TokenUpdate {
                status: Some(status),
                ..TokenUpdate::default()
            };
            self.gw.store.update_token("ci-bot", &update).await.unwrap();
        }
    }

    fn entry(kind: &str, name: &str, actions: &[&str]) -> AccessEntry {
        AccessEntry {
            kind: kind.into(),
            name: name.into(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    const HELLO: &str = "scope=repository%3Asamples%2Fhello-world%3Apush%2Cpull";
    const NGINX: &str = "scope=repository:samples/nginx:push,pull";

    #[tokio::test]
    async fn get_with_basic_grants_only_what_policy_allows() {
        let f = fixture().await;
        let query =
            format!("service=portcullis-test&{HELLO}&{NGINX}&account=ci-bot&client_id=docker");
        let reply = f.get(&query, Some(&basic("ci-bot", &f.secret))).await;
        let claims = f.claims(&reply);
        assert_eq!(
            claims.access,
            vec![entry(
                "repository",
                "samples/hello-world",
                &["push", "pull"]
            )]
        );
        assert_eq!(claims.subject.sub, "ci-bot");
        assert_eq!(claims.aud, "portcullis-test");
        assert_eq!(reply.json["expires_in"], 300);
        let issued = reply.json["issued_at"].as_str().unwrap();
        assert_eq!(
            OffsetDateTime::parse(issued, &Rfc3339)
                .unwrap()
                .unix_timestamp(),
            claims.iat
        );
        assert!(reply.json.get("refresh_token").is_none());
        assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
        // The token authenticates registry requests, bounded by its access claim.
        let bearer =
            HeaderValue::from_str(&format!("Bearer {}", reply.json["token"].as_str().unwrap()))
                .unwrap();
        let who = f.gw.authn.authenticate(Some(&bearer), None).unwrap();
        assert_eq!(
            who.principal,
            Principal::Token {
                name: "ci-bot".into(),
                slot: PasswordSlot::Password1
            }
        );
        assert_eq!(who.bearer_access, Some(claims.access.into()));
    }

    #[tokio::test]
    async fn a_changed_scope_map_changes_the_next_grant() {
        let f = fixture().await;
        let creds = basic("ci-bot", &f.secret);
        let query = format!("service=portcullis-test&{HELLO}&{NGINX}");
        let update = ScopeMapUpdate {
            add: vec![parse_rule("samples/nginx", &["content/read", "content/write"]).unwrap()],
            remove: vec![parse_rule("samples/hello-world", &["content/write"]).unwrap()],
            ..ScopeMapUpdate::default()
        };
        f.gw.store
            .update_scope_map("ci-bot-scope-map", &update)
            .await
            .unwrap();
        let claims = f.claims(&f.get(&query, Some(&creds)).await);
        assert_eq!(
            claims.access,
            vec![
                entry("repository", "samples/hello-world", &["pull"]),
                entry("repository", "samples/nginx", &["push", "pull"]),
            ]
        );
    }

    #[tokio::test]
    async fn anonymous_gets_an_empty_grant_not_an_error() {
        let f = fixture().await;
        let reply = f
            .get(
                &format!(
                    "service=portcullis-test&{HELLO}&scope=registry:catalog:*&offline_token=true"
                ),
                None,
            )
            .await;
        let claims = f.claims(&reply);
        assert!(claims.access.is_empty());
        assert_eq!(claims.subject.principal, PrincipalKind::Anonymous);
        assert_eq!(claims.subject.sub, "");
        // Nobody to refresh as.
        assert!(reply.json.get("refresh_token").is_none());
    }

    #[tokio::test]
    async fn bad_credentials_are_401_unauthorized_with_a_challenge() {
        let f = fixture().await;
        for creds in [
            basic("ci-bot", "wrong"),
            basic("nobody", &f.secret),
            "Basic !!".into(),
        ] {
            let reply = f
                .get(&format!("service=portcullis-test&{HELLO}"), Some(&creds))
                .await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
            assert_eq!(reply.json["errors"][0]["code"], "UNAUTHORIZED");
            let challenge = reply.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
            assert!(challenge.starts_with("Bearer realm=\"http://127.0.0.1:5000/oauth2/token\""));
            assert!(challenge.ends_with("error=\"invalid_token\""));
        }
    }

    #[tokio::test]
    async fn disabled_token_is_refused() {
        let f = fixture().await;
        f.set_status(TokenStatus::Disabled).await;
        let reply = f
            .get(
                &format!("service=portcullis-test&{HELLO}"),
                Some(&basic("ci-bot", &f.secret)),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            reply.json["errors"][0]["message"],
            "token `ci-bot` is disabled"
        );
    }

    #[tokio::test]
    async fn wrong_service_and_bad_scopes_are_400() {
        let f = fixture().await;
        let creds = basic("ci-bot", &f.secret);
        let reply = f
            .get(&format!("service=elsewhere&{HELLO}"), Some(&creds))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(
            reply.json["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("`elsewhere`")
        );
        let reply = f
            .get("service=portcullis-test&scope=nonsense", Some(&creds))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            reply.json["errors"][0]["message"],
            "invalid scope `nonsense`"
        );
    }

    #[tokio::test]
    async fn host_qualified_scope_splits_on_the_last_colon() {
        let f = fixture().await;
        let reply = f
            .get(
                "service=portcullis-test&scope=repository:localhost:5443/samples/app:push,pull",
                Some(&basic("admin", "admin-secret")),
            )
            .await;
        // A GUN: the admin may read trust data but never sign (base policy).
        assert_eq!(
            f.claims(&reply).access,
            vec![entry("repository", "localhost:5443/samples/app", &["pull"])]
        );
    }

    impl Fixture {
        /// A token with `actions` on `repository`; its password1.
        async fn token(&self, name: &str, repository: &str, actions: &[&str]) -> String {
            let rule = parse_rule(repository, actions).unwrap();
            let created = self
                .gw
                .store
                .create_token(&NewToken {
                    name: name.into(),
                    scope: TokenScope::Repositories(vec![rule]),
                    status: TokenStatus::Enabled,
                    passwords: vec![PasswordSlot::Password1],
                    expires_at: None,
                })
                .await
                .unwrap();
            basic(name, &created.passwords[0].value)
        }

        /// What a GET for `scope` grants to `authorization`.
        async fn grant(&self, scope: &str, authorization: Option<&str>) -> Vec<AccessEntry> {
            let query = format!("service=portcullis-test&scope={scope}");
            self.claims(&self.get(&query, authorization).await).access
        }
    }

    #[tokio::test]
    async fn gun_scopes_are_granted_by_the_trust_rules() {
        let f = fixture().await;
        const GUN: &str = "127.0.0.1:5443/samples/app";
        let scope = |actions: &str| format!("repository:{GUN}:{actions}");
        let signer = f
            .token(
                "signer",
                "samples/app",
                &["content/read", "content/write", "trust/write"],
            )
            .await;
        let pusher = f
            .token("pusher", "samples/app", &["content/read", "content/write"])
            .await;
        let owner = f
            .token(
                "owner",
                "samples/*",
                &[
                    "content/read",
                    "content/write",
                    "content/delete",
                    "trust/write",
                ],
            )
            .await;
        let reader = f.token("reader", "samples/app", &["content/read"]).await;
        // May delete trust data and rotate keys (the API's rule) without push or pull.
        let cleaner = f
            .token("cleaner", "samples/app", &["content/delete", "trust/write"])
            .await;
        let admin = basic("admin", "admin-secret");
        let cases: Vec<(&str, &str, &[&str])> = vec![
            (&signer, "push,pull", &["push", "pull"]),
            (&signer, "*", &[]),
            (&pusher, "push,pull", &["pull"]),
            (&reader, "pull", &["pull"]),
            (&reader, "push,pull", &["pull"]),
            (&owner, "*,push,pull", &["*", "push", "pull"]),
            (&admin, "push,pull", &["pull"]),
            (&admin, "*", &["*"]),
            (&cleaner, "*", &["*"]),
            (&cleaner, "push,pull", &[]),
        ];
        for (who, actions, expected) in cases {
            let granted = f.grant(&scope(actions), Some(who)).await;
            let expected = if expected.is_empty() {
                vec![]
            } else {
                vec![entry("repository", GUN, expected)]
            };
            assert_eq!(granted, expected, "{who} {actions}");
        }
        // Another repository's GUN gets nothing; anonymous gets an empty grant, not an error.
        let other = "repository:127.0.0.1:5443/samples/other:push,pull";
        assert!(f.grant(other, Some(&signer)).await.is_empty());
        assert!(f.grant(&scope("pull"), None).await.is_empty());
        // A GUN without a port is also a repository name: both readings count.
        let both = "repository:registry.example.com/samples/app:push,pull";
        assert_eq!(
            f.grant(both, Some(&signer)).await,
            vec![entry(
                "repository",
                "registry.example.com/samples/app",
                &["push", "pull"]
            )]
        );
    }

    #[tokio::test]
    async fn catalog_scope_goes_to_any_authenticated_principal() {
        let f = fixture().await;
        let reply = f
            .get(
                "scope=registry:catalog:*",
                Some(&basic("ci-bot", &f.secret)),
            )
            .await;
        assert_eq!(
            f.claims(&reply).access,
            vec![entry("registry", "catalog", &["*"])]
        );
    }

    #[tokio::test]
    async fn docker_login_then_refresh_token_grant() {
        let f = fixture().await;
        // `docker login`: GET with Basic and offline_token=true; docker keeps the refresh
        // token as its identity token.
        let reply = f
            .get(
                "account=ci-bot&client_id=docker&offline_token=true&service=portcullis-test",
                Some(&basic("ci-bot", &f.secret)),
            )
            .await;
        assert!(f.claims(&reply).access.is_empty());
        let refresh = reply.json["refresh_token"].as_str().unwrap().to_owned();
        // Later pushes: POST grant_type=refresh_token with a space-separated scope list.
        let form = format!(
            "grant_type=refresh_token&service=portcullis-test&client_id=docker&refresh_token={refresh}\
             &scope=repository%3Asamples%2Fhello-world%3Apush%2Cpull+repository%3Asamples%2Fnginx%3Apull"
        );
        let reply = f.post(&form).await;
        assert_eq!(
            f.claims(&reply).access,
            vec![entry(
                "repository",
                "samples/hello-world",
                &["push", "pull"]
            )]
        );
        assert_eq!(
            reply.json["scope"],
            "repository:samples/hello-world:push,pull"
        );
        assert!(reply.json.get("refresh_token").is_none());
        // Refresh tokens are revocable: the principal is checked on every use.
        f.set_status(TokenStatus::Disabled).await;
        let reply = f.post(&form).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            reply.json["errors"][0]["message"],
            "token `ci-bot` is disabled"
        );
        f.set_status(TokenStatus::Enabled).await;
        f.gw.store
            .generate_passwords("ci-bot", &[PasswordSlot::Password1], None)
            .await
            .unwrap();
        let reply = f.post(&form).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            reply.json["errors"][0]["message"],
            "password1 of token `ci-bot` has been regenerated"
        );
        // An access token is not a refresh token.
        let access = f
            .get(
                "offline_token=true&service=portcullis-test",
                Some(&basic("admin", "admin-secret")),
            )
            .await;
        // The admin gets no refresh token (nothing would revoke it on a password change).
        assert!(access.json.get("refresh_token").is_none());
        let token = access.json["token"].as_str().unwrap();
        let reply = f
            .post(&format!(
                "grant_type=refresh_token&service=portcullis-test&refresh_token={token}"
            ))
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn post_password_grant() {
        let f = fixture().await;
        let password: String =
            percent_encoding::utf8_percent_encode(&f.secret, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let form = format!(
            "grant_type=password&service=portcullis-test&client_id=docker&access_type=offline\
             &username=ci-bot&password={password}&scope=repository%3Asamples%2Fhello-world%3Apull"
        );
        let reply = f.post(&form).await;
        assert_eq!(
            f.claims(&reply).access,
            vec![entry("repository", "samples/hello-world", &["pull"])]
        );
        assert_eq!(reply.json["scope"], "repository:samples/hello-world:pull");
        let refresh = reply.json["refresh_token"].as_str().unwrap();
        assert!(f.gw.authn.refresh(refresh).is_ok());
        // Without offline access there is no refresh token.
        let reply = f.post(&form.replace("&access_type=offline", "")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.json.get("refresh_token").is_none());
        let reply = f.post(&form.replace(&password, "wrong")).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.json["errors"][0]["code"], "UNAUTHORIZED");
        let reply = f
            .post("grant_type=password&service=portcullis-test&password=x")
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.json["errors"][0]["message"], "`username` is required");
        let reply = f
            .post("grant_type=authorization_code&service=portcullis-test")
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let reply = f.post("service=portcullis-test").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn scopes_parse_with_colons_in_names_and_classes() {
        assert_eq!(
            parse_scope("repository:localhost:5443/a/b:push,pull").unwrap(),
            RequestedScope {
                kind: "repository".into(),
                name: "localhost:5443/a/b".into(),
                actions: vec!["push".into(), "pull".into()],
            }
        );
        assert_eq!(
            parse_scope("repository(plugin):a/b:pull").unwrap().kind,
            "repository"
        );
        assert!(parse_scope("repository:a/b:").unwrap().actions.is_empty());
        for bad in [
            "",
            "repository",
            "repository:a",
            ":a:pull",
            "repository::pull",
        ] {
            assert!(parse_scope(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forms_decode_and_keep_repeated_keys() {
        let form = Form::parse("scope=a%3Ab+c&scope=d&empty=&flag&&x=1=2");
        assert_eq!(form.all("scope").collect::<Vec<_>>(), ["a:b c", "d"]);
        assert_eq!(form.one("empty"), Some(""));
        assert_eq!(form.one("flag"), Some(""));
        assert_eq!(form.one("x"), Some("1=2"));
        assert_eq!(form.one("missing"), None);
    }
}
