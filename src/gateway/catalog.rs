//! `GET /v2/_catalog`, answered by the gateway: the backend's repositories filtered to
//! those on which the caller holds `metadata/read` (decided by Cedar for everybody,
//! the admin included), paginated with `n`/`last` and a `Link` header as distribution
//! does. A repository-scoped caller is never shown a name it cannot read.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use http::{HeaderMap, HeaderValue, header};

use super::access::{Check, ask};
use super::errors::GatewayError;
use super::{Gateway, RequestMeta};
use crate::identity::{Action, IdentitySnapshot, Principal};
use crate::policy::{Operation, PolicyEngine};

pub fn router() -> Router<Arc<Gateway>> {
    Router::new().route("/v2/_catalog", get(catalog))
}

#[derive(serde::Deserialize)]
struct Pagination {
    n: Option<String>,
    last: Option<String>,
}

/// One page of the filtered catalog.
#[derive(Debug, PartialEq, Eq)]
struct Page {
    repositories: Vec<String>,
    /// Whether more visible repositories follow the last one returned.
    more: bool,
}

async fn catalog(
    State(gw): State<Arc<Gateway>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    query: Result<Query<Pagination>, QueryRejection>,
) -> Response {
    match list(&gw, &meta, &headers, query.ok().map(|q| q.0)).await {
        Ok(response) => response,
        Err(e) => e.into_axum(&meta.challenge),
    }
}

async fn list(
    gw: &Gateway,
    meta: &RequestMeta,
    headers: &HeaderMap,
    query: Option<Pagination>,
) -> Result<Response, GatewayError> {
    let Pagination { n, last } = query.ok_or_else(|| {
        GatewayError::BadRequest("invalid catalog query: expected `n` and `last`".to_owned())
    })?;
    let n = n
        .map(|n| {
            n.parse::<usize>()
                .map_err(|_| GatewayError::BadRequest(format!("invalid page size `n={n}`")))
        })
        .transpose()?;
    let who = gw
        .authn
        .authenticate(headers.get(header::AUTHORIZATION), meta.source_ip)?;
    let all = gw.backend.repositories().await?;
    let page = visible(
        &gw.engine,
        &gw.store.snapshot(),
        &who.principal,
        meta.source_ip,
        &all,
        last.as_deref(),
        n,
    );
    // An anonymous caller who may see nothing is asked to log in, as distribution
    // asks for `registry:catalog:*`.
    if who.principal == Principal::Anonymous && page.repositories.is_empty() && !page.more {
        return Err(GatewayError::AuthenticationRequired {
            scope: Some("registry:catalog:*".to_owned()),
        });
    }
    let mut response =
        axum::Json(serde_json::json!({ "repositories": page.repositories })).into_response();
    if let (true, Some(n), Some(last)) = (page.more, n, page.repositories.last()) {
        // Names are URL-safe by grammar: nothing to escape.
        if let Ok(link) =
            HeaderValue::from_str(&format!("</v2/_catalog?last={last}&n={n}>; rel=\"next\""))
        {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

/// The repositories of `all` (sorted) after `last` that `principal` may
/// `metadata/read`, at most `n`.
fn visible(
    engine: &PolicyEngine,
    identity: &IdentitySnapshot,
    principal: &Principal,
    source_ip: Option<IpAddr>,
    all: &[String],
    last: Option<&str>,
    n: Option<usize>,
) -> Page {
    let readable = |repository: &&String| {
        let check = Check {
            action: Action::MetadataRead,
            repository: (*repository).clone(),
            operation: Operation::Catalog,
            reference: None,
        };
        ask(engine, identity, principal, &check, source_ip).allowed
    };
    let shown = all
        .iter()
        .filter(|r| last.is_none_or(|last| r.as_str() > last))
        .filter(readable);
    let mut repositories = Vec::new();
    let mut more = false;
    for repository in shown {
        if n.is_some_and(|n| repositories.len() >= n) {
            more = true;
            break;
        }
        repositories.push(repository.clone());
    }
    Page { repositories, more }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::testing::token;
    use crate::identity::store::{NewToken, TokenScope};
    use crate::identity::{IdentityStore, PasswordSlot, TokenStatus};

    fn names(page: &Page) -> Vec<&str> {
        page.repositories.iter().map(String::as_str).collect()
    }

    #[tokio::test]
    async fn catalog_shows_only_readable_repositories_page_by_page() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityStore::open(&dir.path().join("control.redb")).unwrap();
        let engine = PolicyEngine::load(&[]).unwrap();
        let all: Vec<String> = ["a", "samples/app", "samples/db", "samples/web", "secret/x"]
            .into_iter()
            .map(String::from)
            .collect();
        let reader = token(
            &store,
            "reader",
            &[
                ("samples/*", &[Action::MetadataRead]),
                ("a", &[Action::ContentRead]),
            ],
        )
        .await;
        let page = |who: &Principal, last: Option<&str>, n: Option<usize>| {
            visible(&engine, &store.snapshot(), who, None, &all, last, n)
        };

        let p = page(&reader, None, None);
        assert_eq!(names(&p), ["samples/app", "samples/db", "samples/web"]);
        assert!(!p.more);
        // Pages count visible names only, and `last` may be a hidden name.
        let p = page(&reader, None, Some(2));
        assert_eq!(
            (names(&p), p.more),
            (vec!["samples/app", "samples/db"], true)
        );
        let p = page(&reader, Some("samples/db"), Some(2));
        assert_eq!((names(&p), p.more), (vec!["samples/web"], false));
        let p = page(&reader, Some("a"), Some(1));
        assert_eq!((names(&p), p.more), (vec!["samples/app"], true));
        assert_eq!(names(&page(&reader, None, Some(0))), Vec::<&str>::new());

        assert_eq!(page(&Principal::Admin, None, None).repositories, all);
        assert!(
            page(&Principal::Anonymous, None, None)
                .repositories
                .is_empty()
        );
        // Anonymous pull is content/read only: still nothing to list.
        engine.set_anonymous_pull(true);
        assert!(
            page(&Principal::Anonymous, None, None)
                .repositories
                .is_empty()
        );
    }

    mod through_the_router {

        use axum::body::Body;
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        use http::{Request, StatusCode};
        use portcullis_oci::{Digest, Reference};
        use tower::ServiceExt;

        use super::*;
        use crate::gateway::errors::Challenge;
        use crate::gateway::{GatewayOptions, Opened};

        const CONFIG: &[u8] = b"{}";

        async fn gateway(dir: &std::path::Path, repositories: &[&str]) -> Arc<Gateway> {
            let Opened {
                gateway, bundled, ..
            } = Gateway::open(&GatewayOptions {
                policy_dirs: Vec::new(),
                admin_password: Some("admin-password".into()),
                service: "registry.test".into(),
                ..crate::gateway::testing::options(dir)
            })
            .unwrap();
            let registry = bundled.unwrap();
            let digest = Digest::of(CONFIG);
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest.to_string(),
                    "size": CONFIG.len(),
                },
                "layers": [],
            }))
            .unwrap();
            for repository in repositories {
                let id = registry.start_upload(repository).await.unwrap();
                registry
                    .finish_upload(repository, &id, &digest, Body::from(CONFIG))
                    .await
                    .unwrap();
                registry
                    .put_manifest(
                        repository,
                        &Reference::Tag("v1".into()),
                        Some("application/vnd.oci.image.manifest.v1+json"),
                        manifest.clone(),
                        Vec::new(),
                    )
                    .await
                    .unwrap();
            }
            gateway
        }

        fn basic(user: &str, password: &str) -> String {
            format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
        }

        /// GET `uri` through the catalog router; status, `Link`, challenge and body.
        async fn get(
            gw: &Arc<Gateway>,
            uri: &str,
            authorization: Option<&str>,
        ) -> (
            StatusCode,
            Option<String>,
            Option<String>,
            serde_json::Value,
        ) {
            let mut request = Request::get(uri);
            if let Some(a) = authorization {
                request = request.header(header::AUTHORIZATION, a);
            }
            let mut request = request.body(Body::empty()).unwrap();
            request.extensions_mut().insert(RequestMeta {
                source_ip: None,
                request_id: "test".into(),
                challenge: Challenge {
                    realm: "https://registry.test/oauth2/token".into(),
                    service: "registry.test".into(),
                },
            });
            let response = router()
                .with_state(Arc::clone(gw))
                .oneshot(request)
                .await
                .unwrap();
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
            };
            let (link, challenge) = (header(header::LINK), header(header::WWW_AUTHENTICATE));
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (
                status,
                link,
                challenge,
                serde_json::from_slice(&body).unwrap(),
            )
        }

        #[tokio::test]
        async fn catalog_is_filtered_paginated_and_challenges_anonymous() {
            let dir = tempfile::tempdir().unwrap();
            let gw = gateway(dir.path(), &["samples/web", "samples/app", "secret/db"]).await;
            let created = gw
                .store
                .create_token(&NewToken {
                    name: "lister".into(),
                    scope: TokenScope::Repositories(vec![
                        crate::identity::scope::parse_rule("samples/*", &["metadata/read"])
                            .unwrap(),
                    ]),
                    status: TokenStatus::Enabled,
                    passwords: vec![PasswordSlot::Password1],
                    expires_at: None,
                })
                .await
                .unwrap();
            let lister = basic("lister", &created.passwords[0].value);

            let (status, _, challenge, body) = get(&gw, "/v2/_catalog", None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(
                challenge
                    .unwrap()
                    .ends_with(",scope=\"registry:catalog:*\""),
                "{body}"
            );

            let (status, link, _, body) = get(&gw, "/v2/_catalog", Some(&lister)).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                body["repositories"],
                serde_json::json!(["samples/app", "samples/web"])
            );
            assert_eq!(link, None);

            let (_, link, _, body) = get(&gw, "/v2/_catalog?n=1", Some(&lister)).await;
            assert_eq!(body["repositories"], serde_json::json!(["samples/app"]));
            assert_eq!(
                link.as_deref(),
                Some("</v2/_catalog?last=samples/app&n=1>; rel=\"next\"")
            );
            let (_, link, _, body) =
                get(&gw, "/v2/_catalog?last=samples/app&n=1", Some(&lister)).await;
            assert_eq!(body["repositories"], serde_json::json!(["samples/web"]));
            assert_eq!(link, None);

            let admin = basic("admin", "admin-password");
            let (_, _, _, body) = get(&gw, "/v2/_catalog", Some(&admin)).await;
            assert_eq!(
                body["repositories"],
                serde_json::json!(["samples/app", "samples/web", "secret/db"])
            );

            let (status, _, challenge, _) =
                get(&gw, "/v2/_catalog", Some(&basic("lister", "wrong"))).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(challenge.unwrap().contains("error=\"invalid_token\""));
            let (status, _, _, body) = get(&gw, "/v2/_catalog?n=many", Some(&admin)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        }
    }
}
