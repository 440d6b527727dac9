use std::path::PathBuf;
use std::sync::Arc;

use portcullis_oci::Digest;

use super::*;
use crate::gateway::classify::{self, Mount};
use crate::identity::IdentityStore;

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<IdentityStore>,
    engine: PolicyEngine,
}

/// A real store and engine; `policy` is an extra user policy file.
fn fixture(policy: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = IdentityStore::open(&dir.path().join("control.redb")).unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    if let Some(text) = policy {
        std::fs::write(policies.join("user.cedar"), text).unwrap();
    }
    let engine = PolicyEngine::load(&[PathBuf::from(&policies)]).unwrap();
    Fixture {
        _dir: dir,
        store,
        engine,
    }
}

impl Fixture {
    async fn token(&self, name: &str, rules: &[(&str, &[Action])]) -> Principal {
        crate::gateway::testing::token(&self.store, name, rules).await
    }

    /// Decides `kind` on `repository` for a Basic-authenticated `principal`.
    fn decide(
        &self,
        principal: &Principal,
        repository: &str,
        kind: RequestKind,
        tag_exists: bool,
    ) -> Result<(), GatewayError> {
        let who = Authenticated {
            principal: principal.clone(),
            bearer_access: None,
        };
        self.decide_as(&who, repository, kind, tag_exists)
    }

    fn decide_as(
        &self,
        who: &Authenticated,
        repository: &str,
        kind: RequestKind,
        tag_exists: bool,
    ) -> Result<(), GatewayError> {
        let req = RepositoryRequest {
            repository: repository.into(),
            kind,
        };
        decide(
            &self.engine,
            &self.store.snapshot(),
            &who.principal,
            |r, a| claim_covers(who, r, a),
            &checks(&req, &existing(&req.kind, tag_exists)),
            None,
            &SignatureFacts::default(),
        )
    }

    fn granted(&self, principal: &Principal, repository: &str, requested: &[&str]) -> Vec<String> {
        let requested: Vec<String> = requested.iter().map(|s| s.to_string()).collect();
        grants(
            &self.engine,
            &self.store.snapshot(),
            principal,
            repository,
            &requested,
            None,
        )
    }
}

/// The tags `kind` writes if `exist`, else none: what the backend would report.
fn existing(kind: &RequestKind, exist: bool) -> Vec<String> {
    match exist {
        true => written_tags(kind).into_iter().map(str::to_owned).collect(),
        false => Vec::new(),
    }
}

fn tag(t: &str) -> Reference {
    Reference::Tag(t.into())
}

fn d() -> Digest {
    Digest::parse(D).unwrap()
}

fn digest() -> Reference {
    Reference::Digest(d())
}

fn push() -> RequestKind {
    RequestKind::UploadStart { mount: None }
}

fn pull() -> RequestKind {
    RequestKind::ManifestGet {
        reference: tag("latest"),
    }
}

fn denied(result: Result<(), GatewayError>) -> String {
    match result {
        Err(GatewayError::Denied { reason }) => reason,
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// A check as (action, repository, operation, reference, scope action).
type Expected = (
    Action,
    &'static str,
    Operation,
    Option<Reference>,
    &'static str,
);

#[test]
fn every_request_kind_asks_its_cedar_question() {
    use Action::*;
    use Operation::*;
    let mount = Some(classify::Mount {
        digest: D.into(),
        from: Some("other".into()),
    });
    let cases: Vec<(RequestKind, bool, Vec<Expected>)> = vec![
        (
            pull(),
            false,
            vec![(ContentRead, "a", Pull, Some(tag("latest")), "pull")],
        ),
        (
            RequestKind::BlobGet { digest: d() },
            false,
            vec![(ContentRead, "a", Pull, None, "pull")],
        ),
        (
            push(),
            false,
            vec![(ContentWrite, "a", PushBlob, None, "push")],
        ),
        (
            RequestKind::Upload,
            false,
            vec![(ContentWrite, "a", PushBlob, None, "push")],
        ),
        (
            RequestKind::UploadStart { mount },
            false,
            vec![
                (ContentWrite, "a", Mount, None, "push"),
                (ContentRead, "other", Pull, None, "pull"),
            ],
        ),
        (
            RequestKind::ManifestPut {
                reference: tag("v1"),
                tags: vec![],
            },
            false,
            vec![(ContentWrite, "a", CreateTag, Some(tag("v1")), "push")],
        ),
        (
            RequestKind::ManifestPut {
                reference: tag("v1"),
                tags: vec![],
            },
            true,
            vec![(ContentWrite, "a", OverwriteTag, Some(tag("v1")), "push")],
        ),
        (
            RequestKind::ManifestPut {
                reference: digest(),
                tags: vec![],
            },
            true,
            vec![(ContentWrite, "a", PushManifest, Some(digest()), "push")],
        ),
        (
            RequestKind::ManifestDelete {
                reference: digest(),
            },
            false,
            vec![(ContentDelete, "a", DeleteManifest, Some(digest()), "delete")],
        ),
        (
            RequestKind::ManifestDelete {
                reference: tag("v1"),
            },
            false,
            vec![(MetadataWrite, "a", DeleteTag, Some(tag("v1")), "delete")],
        ),
        (
            RequestKind::BlobDelete { digest: d() },
            false,
            vec![(ContentDelete, "a", DeleteBlob, None, "delete")],
        ),
        (
            RequestKind::TagsList,
            false,
            vec![(MetadataRead, "a", ListTags, None, "pull")],
        ),
        (
            RequestKind::Referrers { digest: d() },
            false,
            vec![(MetadataRead, "a", ListReferrers, Some(digest()), "pull")],
        ),
    ];
    for (kind, tag_exists, expected) in cases {
        let req = RepositoryRequest {
            repository: "a".into(),
            kind: kind.clone(),
        };
        let got: Vec<_> = checks(&req, &existing(&req.kind, tag_exists))
            .into_iter()
            .map(|c| {
                let scope = scope_action(&c);
                (c.action, c.repository, c.operation, c.reference, scope)
            })
            .collect();
        let expected: Vec<_> = expected
            .into_iter()
            .map(|(a, r, o, rf, s)| (a, r.to_owned(), o, rf, s))
            .collect();
        assert_eq!(got, expected, "{kind:?}");
    }
}

#[test]
fn each_written_tag_is_a_create_or_an_overwrite_of_its_own() {
    let req = RepositoryRequest {
        repository: "a".into(),
        kind: RequestKind::ManifestPut {
            reference: digest(),
            tags: vec!["new".into(), "old".into()],
        },
    };
    let got: Vec<_> = checks(&req, &["old".to_owned()])
        .into_iter()
        .map(|c| (c.operation, c.reference))
        .collect();
    assert_eq!(
        got,
        vec![
            (Operation::PushManifest, Some(digest())),
            (Operation::CreateTag, Some(tag("new"))),
            (Operation::OverwriteTag, Some(tag("old"))),
        ]
    );
}

#[tokio::test]
async fn additive_wildcard_example_is_enforced() {
    use Action::*;
    let f = fixture(None);
    let t = f
        .token(
            "tester",
            &[
                ("sample/*", &[ContentRead]),
                ("sample/teamA/*", &[ContentWrite]),
                ("sample/teamA/projectB", &[ContentDelete]),
            ],
        )
        .await;
    let delete = || RequestKind::ManifestDelete {
        reference: digest(),
    };
    for repo in ["sample/teama/projectb", "sample/teama/projectc"] {
        f.decide(&t, repo, pull(), false).unwrap();
        f.decide(&t, repo, push(), false).unwrap();
    }
    f.decide(&t, "sample/teama/projectb", delete(), false)
        .unwrap();
    let reason = denied(f.decide(&t, "sample/teama/projectc", delete(), false));
    assert!(
        reason.contains("content/delete") && reason.contains("`sample/teama/projectc`"),
        "{reason}"
    );
    f.decide(&t, "sample/other", pull(), false).unwrap();
    denied(f.decide(&t, "sample/other", push(), false));
    denied(f.decide(&t, "elsewhere", pull(), false));
}

#[tokio::test]
async fn mount_needs_read_on_the_source() {
    use Action::*;
    let f = fixture(None);
    let mount = |from: &str| RequestKind::UploadStart {
        mount: Some(Mount {
            digest: D.into(),
            from: Some(from.into()),
        }),
    };
    let t = f
        .token(
            "tester",
            &[("a", &[ContentRead, ContentWrite]), ("b", &[ContentRead])],
        )
        .await;
    f.decide(&t, "a", mount("b"), false).unwrap();
    let reason = denied(f.decide(&t, "a", mount("secret"), false));
    assert!(
        reason.contains("content/read") && reason.contains("`secret`"),
        "{reason}"
    );
    // Read on the source does not make the target writable.
    denied(f.decide(&t, "b", mount("a"), false));
    // Every 401 names both sides of the mount, whichever check failed.
    let both = "repository:a:push,pull repository:b:pull";
    assert_eq!(
        f.decide(&Principal::Anonymous, "a", mount("b"), false),
        Err(GatewayError::AuthenticationRequired {
            scope: Some(both.into())
        })
    );
    let bearer = |entries: &[(&str, &[&str])]| Authenticated {
        principal: t.clone(),
        bearer_access: Some(
            entries
                .iter()
                .map(|(name, actions)| AccessEntry {
                    kind: "repository".into(),
                    name: (*name).into(),
                    actions: actions.iter().map(|a| a.to_string()).collect(),
                })
                .collect(),
        ),
    };
    for claim in [
        bearer(&[("a", &["push", "pull"])]),
        bearer(&[("b", &["pull"])]),
        bearer(&[]),
    ] {
        assert_eq!(
            f.decide_as(&claim, "a", mount("b"), false),
            Err(GatewayError::InsufficientScope { scope: both.into() })
        );
    }
    f.decide_as(
        &bearer(&[("a", &["push", "pull"]), ("b", &["pull"])]),
        "a",
        mount("b"),
        false,
    )
    .unwrap();
    // Without `from` it is an upload's check only (the source is chosen later).
    let automatic = RequestKind::UploadStart {
        mount: Some(Mount {
            digest: D.into(),
            from: None,
        }),
    };
    assert_eq!(
        f.decide(&Principal::Anonymous, "a", automatic, false),
        Err(GatewayError::AuthenticationRequired {
            scope: Some("repository:a:push,pull".into())
        })
    );
}

#[test]
fn challenge_scopes_merge_actions_per_repository() {
    let check = |action, repository: &str, operation| Check {
        action,
        repository: repository.into(),
        operation,
        reference: None,
    };
    assert_eq!(
        challenge_scopes(&[
            check(Action::ContentRead, "a", Operation::Pull),
            check(Action::ContentWrite, "b", Operation::Mount),
            check(Action::ContentWrite, "a", Operation::PushBlob),
            check(Action::ContentDelete, "b", Operation::DeleteBlob),
            check(Action::ContentRead, "b", Operation::Pull),
        ]),
        "repository:a:pull,push repository:b:push,pull,delete"
    );
    assert_eq!(challenge_scopes(&[]), "");
}

#[tokio::test]
async fn tag_overwrite_and_create_reach_cedar_as_different_operations() {
    let f = fixture(Some(
        "@id(\"immutable-releases\")\n\
             forbid(principal, action == Action::\"content/write\", resource)\n\
             when { resource.name like \"release/*\" && context.operation == \"overwrite-tag\" };\n",
    ));
    let t = f
        .token(
            "tester",
            &[("release/*", &[Action::ContentRead, Action::ContentWrite])],
        )
        .await;
    let put = |reference| RequestKind::ManifestPut {
        reference,
        tags: vec![],
    };
    f.decide(&t, "release/app", put(tag("v1")), false).unwrap();
    let reason = denied(f.decide(&t, "release/app", put(tag("v1")), true));
    assert!(
        reason.contains("overwrite-tag") && reason.contains("immutable-releases"),
        "{reason}"
    );
    // `?tag=` on a push by digest writes tags too: an existing one is an overwrite.
    let tagged = |tags: &[&str]| RequestKind::ManifestPut {
        reference: digest(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
    };
    let reason = denied(f.decide(&t, "release/app", tagged(&["v1"]), true));
    assert!(reason.contains("overwrite-tag"), "{reason}");
    f.decide(&t, "release/app", tagged(&["v2"]), false).unwrap();
    // A digest push is not an overwrite, and the rule is scoped to `release/*`.
    f.decide(&t, "release/app", put(digest()), true).unwrap();
    let admin = Principal::Admin;
    denied(f.decide(&admin, "release/app", put(tag("v1")), true));
    f.decide(&admin, "staging/app", put(tag("v1")), true)
        .unwrap();
}

#[tokio::test]
async fn bearer_claim_must_cover_what_policy_allows() {
    let f = fixture(None);
    let t = f
        .token(
            "tester",
            &[("a", &[Action::ContentRead, Action::ContentWrite])],
        )
        .await;
    let bearer = |entries: Vec<(&str, &str, &[&str])>| Authenticated {
        principal: t.clone(),
        bearer_access: Some(
            entries
                .into_iter()
                .map(|(kind, name, actions)| AccessEntry {
                    kind: kind.into(),
                    name: name.into(),
                    actions: actions.iter().map(|a| a.to_string()).collect(),
                })
                .collect(),
        ),
    };
    let pull_only = bearer(vec![("repository", "a", &["pull"])]);
    f.decide_as(&pull_only, "a", pull(), false).unwrap();
    assert_eq!(
        f.decide_as(&pull_only, "a", push(), false),
        Err(GatewayError::InsufficientScope {
            scope: "repository:a:push,pull".into()
        })
    );
    f.decide_as(
        &bearer(vec![("repository", "a", &["*"])]),
        "a",
        push(),
        false,
    )
    .unwrap();
    // The claim names another repository, or is not a repository claim.
    for who in [
        bearer(vec![("repository", "b", &["pull"])]),
        bearer(vec![("registry", "a", &["pull"])]),
        bearer(vec![]),
    ] {
        assert!(matches!(
            f.decide_as(&who, "a", pull(), false),
            Err(GatewayError::InsufficientScope { .. })
        ));
    }
    // Policy is asked first: what it forbids is a 403 whatever the claim says.
    denied(f.decide_as(
        &bearer(vec![("repository", "c", &["*"])]),
        "c",
        pull(),
        false,
    ));
}

#[tokio::test]
async fn anonymous_is_challenged_and_a_token_is_denied() {
    let f = fixture(None);
    let anonymous = Principal::Anonymous;
    assert_eq!(
        f.decide(&anonymous, "a/b", pull(), false),
        Err(GatewayError::AuthenticationRequired {
            scope: Some("repository:a/b:pull".into())
        })
    );
    assert_eq!(
        f.decide(&anonymous, "a/b", push(), false),
        Err(GatewayError::AuthenticationRequired {
            scope: Some("repository:a/b:push,pull".into())
        })
    );
    let t = f.token("tester", &[("x", &[Action::ContentRead])]).await;
    denied(f.decide(&t, "a/b", pull(), false));
    // With anonymous pull on, anonymous may pull and nothing more.
    f.engine.set_anonymous_pull(true);
    f.decide(&anonymous, "a/b", pull(), false).unwrap();
    assert!(matches!(
        f.decide(&anonymous, "a/b", push(), false),
        Err(GatewayError::AuthenticationRequired { .. })
    ));
}

#[tokio::test]
async fn granted_scope_actions_follow_policy() {
    use Action::*;
    let f = fixture(None);
    let rw = f
        .token("reader-writer", &[("a", &[ContentRead, ContentWrite])])
        .await;
    assert_eq!(
        f.granted(&rw, "a", &["push", "bogus", "pull", "delete", "push", "*"]),
        vec!["push", "pull"]
    );
    assert!(f.granted(&rw, "b", &["pull", "push"]).is_empty());
    let untag = f.token("untagger", &[("a", &[MetadataWrite])]).await;
    assert_eq!(f.granted(&untag, "a", &["pull", "delete"]), vec!["delete"]);
    let all = f
        .token(
            "everything",
            &[(
                "a",
                &[
                    ContentRead,
                    ContentWrite,
                    ContentDelete,
                    MetadataRead,
                    MetadataWrite,
                ],
            )],
        )
        .await;
    assert_eq!(f.granted(&all, "a", &["*", "delete"]), vec!["*", "delete"]);
    assert_eq!(f.granted(&Principal::Admin, "any/repo", &["*"]), vec!["*"]);
    assert!(f.granted(&Principal::Anonymous, "a", &["pull"]).is_empty());
}

/// Signed-only views end to end: a gateway with the bundled store holding images
/// and the trust service holding real (validated) trust data.
mod signed_views {
    use axum::body::Body;
    use time::{Duration, OffsetDateTime};

    use super::*;
    use crate::gateway::backend::Backend;
    use crate::gateway::testing;
    use crate::identity::RepositoryAttributes;
    use crate::trust::Role;
    use crate::trust::service::ContentTrustStatus;
    use crate::trust::validate::testkit::{RootKeys, TestKey, root_json, sign, targets_json};

    const REPO: &str = "samples/app";
    const GUN: &str = "127.0.0.1:5443/samples/app";
    const CONFIG: &[u8] = b"{}";

    struct Views {
        _dir: tempfile::TempDir,
        gw: Arc<Gateway>,
    }

    fn manifest(label: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::of(CONFIG).to_string(),
                "size": CONFIG.len(),
            },
            "layers": [],
            "annotations": { "label": label },
        }))
        .unwrap()
    }

    fn digest_of(bytes: &[u8]) -> String {
        Digest::of(bytes).to_string()
    }

    fn role(name: &str) -> Role {
        Role::parse(name).unwrap()
    }

    /// `policy`: an extra user policy file; content trust enabled.
    async fn views(policy: Option<&str>) -> Views {
        let dir = tempfile::tempdir().unwrap();
        let gw = match policy {
            None => testing::gateway(dir.path()),
            Some(text) => {
                let policies = dir.path().join("policies");
                std::fs::create_dir(&policies).unwrap();
                std::fs::write(policies.join("user.cedar"), text).unwrap();
                let options = crate::gateway::GatewayOptions {
                    policy_dirs: vec![policies],
                    ..testing::options(&dir.path().join("data"))
                };
                Gateway::open(&options).unwrap().gateway
            }
        };
        gw.trust
            .set_status(ContentTrustStatus::Enabled)
            .await
            .unwrap();
        Views { _dir: dir, gw }
    }

    impl Views {
        /// Pushes `bytes` as `REPO:tag` into the bundled store.
        async fn push(&self, tag: &str, bytes: &[u8]) {
            let Backend::Bundled { registry, .. } = &self.gw.backend else {
                panic!("not the bundled backend")
            };
            let id = registry.start_upload(REPO).await.unwrap();
            registry
                .finish_upload(REPO, &id, &Digest::of(CONFIG), Body::from(CONFIG))
                .await
                .unwrap();
            registry
                .put_manifest(
                    REPO,
                    &Reference::Tag(tag.to_owned()),
                    Some("application/vnd.oci.image.manifest.v1+json"),
                    bytes.to_vec(),
                    Vec::new(),
                )
                .await
                .unwrap();
        }

        /// Publishes trust data signing `tags` (tag → manifest bytes), as docker's
        /// first signed push does.
        async fn sign(&self, tags: &[(&str, &[u8])]) {
            let trust = &self.gw.trust;
            let root_key = TestKey::root(GUN);
            let targets_key = TestKey::ecdsa();
            let timestamp = trust.public_key(GUN, &role("timestamp")).await.unwrap();
            let snapshot = trust.public_key(GUN, &role("snapshot")).await.unwrap();
            let now = OffsetDateTime::now_utc();
            let keys = RootKeys {
                root: vec![&root_key.public],
                targets: vec![&targets_key.public],
                targets_threshold: 1,
                snapshot: &snapshot,
                timestamp: &timestamp,
            };
            let root = sign(
                &root_json(1, &keys, now + Duration::days(3650)),
                &[&root_key],
            );
            let targets = sign(
                &targets_json(1, tags, &[], now + Duration::days(1000)),
                &[&targets_key],
            );
            trust
                .update(
                    GUN,
                    vec![(role("root"), root), (role("targets"), targets)],
                    now,
                )
                .await
                .unwrap();
        }

        async fn signed_only(&self, on: bool) {
            let attributes = RepositoryAttributes {
                signed_only: on,
                ..RepositoryAttributes::default()
            };
            self.gw
                .store
                .set_repository_attributes(REPO, &attributes)
                .await
                .unwrap();
        }

        async fn request(
            &self,
            principal: &Principal,
            kind: RequestKind,
            query: Option<&str>,
        ) -> Result<Disposition, GatewayError> {
            let who = Authenticated {
                principal: principal.clone(),
                bearer_access: None,
            };
            let req = RepositoryRequest {
                repository: REPO.into(),
                kind,
            };
            authorize(&self.gw, &who, &req, testing::meta().source_ip, query).await
        }

        async fn pull(
            &self,
            principal: &Principal,
            reference: Reference,
        ) -> Result<(), GatewayError> {
            match self
                .request(principal, RequestKind::ManifestGet { reference }, None)
                .await?
            {
                Disposition::Forward => Ok(()),
                other => panic!("a pull not forwarded as it came: {other:?}"),
            }
        }

        /// `None`: forwarded; else the tags the gateway answered and its `Link`.
        async fn tags(
            &self,
            principal: &Principal,
            query: Option<&str>,
        ) -> Option<(Vec<String>, Option<String>)> {
            match self
                .request(principal, RequestKind::TagsList, query)
                .await
                .unwrap()
            {
                Disposition::Forward => None,
                Disposition::ForwardWithQuery(q) => panic!("a tag list rewritten to {q}"),
                Disposition::Respond(r) => {
                    assert_eq!(r.status(), http::StatusCode::OK);
                    let link = r
                        .headers()
                        .get(http::header::LINK)
                        .map(|v| v.to_str().unwrap().to_owned());
                    let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
                    assert_eq!(body["name"], REPO);
                    let tags = body["tags"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t.as_str().unwrap().to_owned())
                        .collect();
                    Some((tags, link))
                }
            }
        }

        async fn reader(&self, name: &str) -> Principal {
            testing::token(
                &self.gw.store,
                name,
                &[(REPO, &[Action::ContentRead, Action::MetadataRead])],
            )
            .await
        }
    }

    fn unsigned_reason(result: Result<(), GatewayError>) -> String {
        match result {
            Err(GatewayError::Unsigned { reason }) => reason,
            other => panic!("expected an unsigned refusal, got {other:?}"),
        }
    }

    fn tag(t: &str) -> Reference {
        Reference::Tag(t.into())
    }

    #[tokio::test]
    async fn signed_only_serves_signed_tags_and_digests_only() {
        let v = views(None).await;
        let (one, two) = (manifest("one"), manifest("two"));
        v.push("v1", &one).await;
        v.push("v2", &two).await;
        v.push("latest", &one).await;
        v.sign(&[("v1", &one), ("latest", &one)]).await;
        let t = v.reader("reader").await;
        // Not signed-only: everything is served, the tag list is the backend's.
        v.pull(&t, tag("v2")).await.unwrap();
        assert_eq!(v.tags(&t, None).await, None);

        v.signed_only(true).await;
        v.pull(&t, tag("v1")).await.unwrap();
        v.pull(&t, Reference::Digest(Digest::of(&one)))
            .await
            .unwrap();
        let reason = unsigned_reason(v.pull(&t, tag("v2")).await);
        assert_eq!(
            reason,
            "manifest `v2` of `samples/app` is not signed (signed-only repository)"
        );
        let reason = unsigned_reason(v.pull(&t, Reference::Digest(Digest::of(&two))).await);
        assert!(reason.contains(&digest_of(&two)), "{reason}");
        // Blobs are not restricted; the admin is held to it too.
        v.request(
            &t,
            RequestKind::BlobGet {
                digest: Digest::of(CONFIG),
            },
            None,
        )
        .await
        .unwrap();
        unsigned_reason(v.pull(&Principal::Admin, tag("v2")).await);
        // Anonymous callers learn the reason too, not a login challenge.
        v.gw.engine.set_anonymous_pull(true);
        unsigned_reason(v.pull(&Principal::Anonymous, tag("v2")).await);
        assert_eq!(
            v.tags(&t, None).await,
            Some((vec!["latest".to_owned(), "v1".to_owned()], None))
        );

        // `v1` moved to another manifest: its signature no longer covers it.
        v.push("v1", &two).await;
        unsigned_reason(v.pull(&t, tag("v1")).await);
        assert_eq!(
            v.tags(&t, None).await,
            Some((vec!["latest".to_owned()], None))
        );
    }

    #[tokio::test]
    async fn the_signed_tag_list_is_paginated_as_distribution() {
        let v = views(None).await;
        let bytes: Vec<Vec<u8>> = (0..5).map(|i| manifest(&format!("m{i}"))).collect();
        let names = ["a", "b", "c", "d", "e"];
        for (name, b) in names.iter().zip(&bytes) {
            v.push(name, b).await;
        }
        let signed: Vec<(&str, &[u8])> = names
            .iter()
            .zip(&bytes)
            .filter(|(n, _)| **n != "c")
            .map(|(n, b)| (*n, b.as_slice()))
            .collect();
        v.sign(&signed).await;
        v.signed_only(true).await;
        let t = v.reader("reader").await;
        let page = v.tags(&t, Some("n=2")).await.unwrap();
        assert_eq!(page.0, vec!["a", "b"]);
        assert_eq!(
            page.1.as_deref(),
            Some("</v2/samples/app/tags/list?n=2&last=b>; rel=\"next\"")
        );
        let page = v.tags(&t, Some("n=2&last=b")).await.unwrap();
        assert_eq!(page, (vec!["d".to_owned(), "e".to_owned()], None));
        let page = v.tags(&t, Some("last=d")).await.unwrap();
        assert_eq!(page, (vec!["e".to_owned()], None));
    }

    #[tokio::test]
    async fn a_policy_can_demand_signatures_of_some_principals() {
        let v = views(Some(
            "@id(\"signed-for-deployers\")\n\
                 forbid (principal, action == Action::\"content/read\", resource)\n\
                 when { principal is Token && principal.name == \"deployer\" &&\n\
                        context.referenceKind != \"none\" && !context.signed };\n",
        ))
        .await;
        let one = manifest("one");
        let two = manifest("two");
        v.push("v1", &one).await;
        v.push("v2", &two).await;
        v.sign(&[("v1", &one)]).await;
        let deployer = v.reader("deployer").await;
        let developer = v.reader("developer").await;
        v.pull(&deployer, tag("v1")).await.unwrap();
        let reason = unsigned_reason(v.pull(&deployer, tag("v2")).await);
        assert_eq!(
            reason,
            "manifest `v2` of `samples/app` is not signed \
                 (signature required by signed-for-deployers)"
        );
        v.pull(&developer, tag("v2")).await.unwrap();
        assert_eq!(
            v.tags(&deployer, None).await,
            Some((vec!["v1".to_owned()], None))
        );
        assert_eq!(v.tags(&developer, None).await, None);
    }

    #[tokio::test]
    async fn without_content_trust_nothing_is_signed() {
        let v = views(None).await;
        let one = manifest("one");
        v.push("v1", &one).await;
        v.sign(&[("v1", &one)]).await;
        v.signed_only(true).await;
        let t = v.reader("reader").await;
        v.pull(&t, tag("v1")).await.unwrap();
        // Disabling deletes the trust data: the signed-only repository serves nothing.
        v.gw.trust
            .set_status(ContentTrustStatus::Disabled)
            .await
            .unwrap();
        unsigned_reason(v.pull(&t, tag("v1")).await);
        assert_eq!(v.tags(&t, None).await, Some((vec![], None)));
        v.signed_only(false).await;
        v.pull(&t, tag("v1")).await.unwrap();
    }
}
