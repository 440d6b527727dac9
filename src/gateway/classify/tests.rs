use super::*;

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn repo(name: &str, kind: RequestKind) -> Route {
    Route::Repository(RepositoryRequest {
        repository: name.to_owned(),
        kind,
    })
}

fn tag(t: &str) -> Reference {
    Reference::Tag(t.to_owned())
}

fn d() -> Digest {
    Digest::parse(D).unwrap()
}

fn digest() -> Reference {
    Reference::Digest(d())
}

fn ok(method: &str, path: &str, query: Option<&str>) -> Route {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    classify(&method, path, query).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn err(method: &str, path: &str, query: Option<&str>) -> GatewayError {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    match classify(&method, path, query) {
        Ok(route) => panic!("{method} {path} classified as {route:?}"),
        Err(e) => e,
    }
}

#[test]
fn every_registry_route() {
    let upload = |mount| RequestKind::UploadStart { mount };
    let cases: Vec<(&str, String, Option<String>, Route)> = vec![
        ("GET", "/v2/".into(), None, Route::Base),
        ("HEAD", "/v2/".into(), None, Route::Base),
        ("GET", "/v2".into(), None, Route::Base),
        (
            "GET",
            "/v2/_catalog".into(),
            Some("n=10&last=a".into()),
            Route::Catalog,
        ),
        (
            "GET",
            "/v2/a/b/c/tags/list".into(),
            Some("n=1".into()),
            repo("a/b/c", RequestKind::TagsList),
        ),
        (
            "GET",
            "/v2/samples/hello-world/manifests/latest".into(),
            None,
            repo(
                "samples/hello-world",
                RequestKind::ManifestGet {
                    reference: tag("latest"),
                },
            ),
        ),
        (
            "HEAD",
            format!("/v2/a/manifests/{D}"),
            None,
            repo(
                "a",
                RequestKind::ManifestGet {
                    reference: digest(),
                },
            ),
        ),
        (
            "PUT",
            "/v2/a/b/manifests/v1.0".into(),
            None,
            repo(
                "a/b",
                RequestKind::ManifestPut {
                    reference: tag("v1.0"),
                    tags: vec![],
                },
            ),
        ),
        (
            "PUT",
            format!("/v2/a/manifests/{D}"),
            Some("tag=x&tag=v%2E1&other=y".into()),
            repo(
                "a",
                RequestKind::ManifestPut {
                    reference: digest(),
                    tags: vec!["x".into(), "v.1".into()],
                },
            ),
        ),
        (
            "DELETE",
            "/v2/a/manifests/old".into(),
            None,
            repo(
                "a",
                RequestKind::ManifestDelete {
                    reference: tag("old"),
                },
            ),
        ),
        (
            "DELETE",
            format!("/v2/a/manifests/{D}"),
            None,
            repo(
                "a",
                RequestKind::ManifestDelete {
                    reference: digest(),
                },
            ),
        ),
        (
            "GET",
            format!("/v2/a/b/blobs/{D}"),
            None,
            repo("a/b", RequestKind::BlobGet { digest: d() }),
        ),
        (
            "HEAD",
            format!("/v2/a/blobs/{D}"),
            None,
            repo("a", RequestKind::BlobGet { digest: d() }),
        ),
        (
            "DELETE",
            format!("/v2/a/blobs/{D}"),
            None,
            repo("a", RequestKind::BlobDelete { digest: d() }),
        ),
        (
            "POST",
            "/v2/a/b/blobs/uploads/".into(),
            None,
            repo("a/b", upload(None)),
        ),
        (
            "POST",
            "/v2/a/blobs/uploads".into(),
            Some("".into()),
            repo("a", upload(None)),
        ),
        (
            "POST",
            "/v2/a/blobs/uploads/".into(),
            Some(format!("digest={D}")),
            repo("a", upload(None)),
        ),
        (
            "POST",
            "/v2/a/blobs/uploads/".into(),
            Some(format!("mount={D}&from=other/repo")),
            repo(
                "a",
                upload(Some(Mount {
                    digest: D.into(),
                    from: Some("other/repo".into()),
                })),
            ),
        ),
        // `from` percent-encoded, keys too; order does not matter.
        (
            "POST",
            "/v2/a/blobs/uploads/".into(),
            Some(format!(
                "fr%6Fm=other%2Frepo&mount={}",
                D.replace(':', "%3A")
            )),
            repo(
                "a",
                upload(Some(Mount {
                    digest: D.into(),
                    from: Some("other/repo".into()),
                })),
            ),
        ),
        // A mount without `from`: an automatic mount.
        (
            "POST",
            "/v2/a/blobs/uploads/".into(),
            Some(format!("mount={D}")),
            repo(
                "a",
                upload(Some(Mount {
                    digest: D.into(),
                    from: None,
                })),
            ),
        ),
        (
            "GET",
            "/v2/a/blobs/uploads/0b7c-11".into(),
            None,
            repo("a", RequestKind::Upload),
        ),
        (
            "PATCH",
            "/v2/a/b/blobs/uploads/0b7c-11".into(),
            None,
            repo("a/b", RequestKind::Upload),
        ),
        (
            "PUT",
            "/v2/a/blobs/uploads/0b7c-11".into(),
            Some(format!("digest={D}")),
            repo("a", RequestKind::Upload),
        ),
        (
            "DELETE",
            "/v2/a/blobs/uploads/0b7c-11".into(),
            None,
            repo("a", RequestKind::Upload),
        ),
        (
            "GET",
            format!("/v2/a/referrers/{D}"),
            Some("artifactType=x".into()),
            repo("a", RequestKind::Referrers { digest: d() }),
        ),
        // Repositories may be named like API path segments.
        (
            "GET",
            "/v2/manifests/tags/manifests/list".into(),
            None,
            repo(
                "manifests/tags",
                RequestKind::ManifestGet {
                    reference: tag("list"),
                },
            ),
        ),
        (
            "GET",
            "/v2/blobs/uploads/tags/list".into(),
            None,
            repo("blobs/uploads", RequestKind::TagsList),
        ),
    ];
    for (method, path, query, expected) in cases {
        assert_eq!(
            ok(method, &path, query.as_deref()),
            expected,
            "{method} {path}"
        );
    }
}

#[test]
fn gateway_routes() {
    assert_eq!(ok("GET", "/oauth2/token", Some("scope=x")), Route::Token);
    assert_eq!(ok("POST", "/oauth2/token", None), Route::Token);
    assert_eq!(ok("GET", "/metrics", None), Route::Metrics);
    assert_eq!(ok("GET", "/healthz", None), Route::Health);
    assert_eq!(ok("HEAD", "/readyz", None), Route::Health);
    assert_eq!(ok("GET", "/admin/v1", None), Route::Admin);
    assert_eq!(ok("DELETE", "/admin/v1/tokens/ci", None), Route::Admin);
    assert_eq!(
        ok("PATCH", "/portcullis/v1/repositories/samples/app", None),
        Route::RepositoryAttributes {
            repository: "samples/app".into()
        }
    );
    let delete = |repository: &str, reference| {
        Route::RepositoryDelete(DeleteRequest {
            repository: repository.into(),
            reference,
        })
    };
    assert_eq!(
        ok("DELETE", "/portcullis/v1/repositories/samples/app", None),
        delete("samples/app", None)
    );
    assert_eq!(
        ok("DELETE", "/acr/v1/samples/app", None),
        delete("samples/app", None)
    );
    assert_eq!(
        ok(
            "DELETE",
            "/portcullis/v1/repositories/samples/app/_manifests/v1",
            None
        ),
        delete("samples/app", Some(tag("v1")))
    );
    assert_eq!(
        ok(
            "DELETE",
            &format!("/portcullis/v1/repositories/a/_manifests/{D}"),
            None
        ),
        delete("a", Some(digest()))
    );
}

#[test]
fn reads_by_an_invalid_reference_are_classified_for_a_404() {
    let long = "t".repeat(129);
    for reference in ["-x", ".dot", long.as_str(), "sha256:abc", ""] {
        for method in ["GET", "HEAD"] {
            assert_eq!(
                ok(method, &format!("/v2/a/b/manifests/{reference}"), None),
                repo(
                    "a/b",
                    RequestKind::ManifestGetInvalid {
                        reference: reference.into()
                    }
                ),
                "{method} {reference}"
            );
        }
    }
    // Writes by an invalid reference are still refused as invalid.
    assert!(matches!(
        err("PUT", "/v2/a/manifests/-x", None),
        GatewayError::ReferenceInvalid(_)
    ));
}

/// Whether an error is the expected one.
type Expect = fn(&GatewayError) -> bool;

#[test]
fn every_error() {
    let cases: Vec<(&str, String, Option<String>, Expect)> = vec![
        ("GET", "/".into(), None, |e| {
            matches!(e, GatewayError::NotFound { .. })
        }),
        ("GET", "/v1/".into(), None, |e| {
            matches!(e, GatewayError::NotFound { .. })
        }),
        ("GET", "/v2/a".into(), None, |e| {
            matches!(e, GatewayError::NotFound { .. })
        }),
        ("GET", "/v2/a/unknown/x".into(), None, |e| {
            matches!(e, GatewayError::NotFound { .. })
        }),
        ("GET", "/admin".into(), None, |e| {
            matches!(e, GatewayError::NotFound { .. })
        }),
        (
            "GET",
            "/v2/A/tags/list".into(),
            None,
            |e| matches!(e, GatewayError::NameInvalid(n) if n == "A"),
        ),
        ("GET", "/v2/a/b-/manifests/x".into(), None, |e| {
            matches!(e, GatewayError::NameInvalid(_))
        }),
        ("GET", "/portcullis/v1/repositories/Bad".into(), None, |e| {
            matches!(e, GatewayError::NameInvalid(_))
        }),
        (
            "DELETE",
            "/v2/a/manifests/-x".into(),
            None,
            |e| matches!(e, GatewayError::ReferenceInvalid(r) if r == "-x"),
        ),
        ("GET", "/v2/A/manifests/-x".into(), None, |e| {
            matches!(e, GatewayError::NameInvalid(_))
        }),
        (
            "DELETE",
            "/portcullis/v1/repositories/a/_manifests/-x".into(),
            None,
            |e| matches!(e, GatewayError::ReferenceInvalid(r) if r == "-x"),
        ),
        (
            "DELETE",
            "/portcullis/v1/repositories/a/_manifests/sha256:0".into(),
            None,
            |e| matches!(e, GatewayError::DigestInvalid(_)),
        ),
        (
            "DELETE",
            "/portcullis/v1/repositories/a/_tags/v1".into(),
            None,
            |e| matches!(e, GatewayError::NameInvalid(_)),
        ),
        ("DELETE", "/acr/v1/A".into(), None, |e| {
            matches!(e, GatewayError::NameInvalid(_))
        }),
        ("GET", "/acr/v1/a".into(), None, |e| {
            matches!(e, GatewayError::Unsupported { .. })
        }),
        ("PUT", "/v2/a/manifests/".into(), None, |e| {
            matches!(e, GatewayError::ReferenceInvalid(_))
        }),
        ("PUT", "/v2/a/manifests/sha256:abc".into(), None, |e| {
            matches!(e, GatewayError::DigestInvalid(_))
        }),
        ("GET", "/v2/a/blobs/latest".into(), None, |e| {
            matches!(e, GatewayError::DigestInvalid(_))
        }),
        ("GET", "/v2/a/referrers/sha512:00".into(), None, |e| {
            matches!(e, GatewayError::DigestInvalid(_))
        }),
        (
            "POST",
            "/v2/a/blobs/uploads/".into(),
            Some("mount=sha256:0&from=b".into()),
            |e| matches!(e, GatewayError::DigestInvalid(_)),
        ),
        (
            "POST",
            "/v2/a/blobs/uploads/".into(),
            Some("digest=nope".into()),
            |e| matches!(e, GatewayError::DigestInvalid(_)),
        ),
        (
            "POST",
            "/v2/a/blobs/uploads/".into(),
            Some(format!("mount={D}&from=B%2Fx")),
            |e| matches!(e, GatewayError::NameInvalid(n) if n == "B/x"),
        ),
        (
            "POST",
            "/v2/a/blobs/uploads/".into(),
            Some(format!("mount={D}&from=b&from=c")),
            |e| matches!(e, GatewayError::BadRequest(_)),
        ),
        (
            "POST",
            "/v2/a/blobs/uploads/".into(),
            Some(format!("mount={D}&from=b&mount={D}")),
            |e| matches!(e, GatewayError::BadRequest(_)),
        ),
        (
            "PUT",
            "/v2/a/manifests/v1".into(),
            Some("tag=ok&tag=-bad".into()),
            |e| matches!(e, GatewayError::ReferenceInvalid(t) if t == "-bad"),
        ),
        (
            "PUT",
            "/v2/a/manifests/v1".into(),
            Some("tag=t&".repeat(33)),
            |e| matches!(e, GatewayError::BadRequest(_)),
        ),
        ("POST", "/v2/".into(), None, |e| {
            matches!(e, GatewayError::Unsupported { .. })
        }),
        ("DELETE", "/v2/_catalog".into(), None, |e| {
            matches!(e, GatewayError::Unsupported { .. })
        }),
        ("POST", "/v2/a/manifests/x".into(), None, |e| {
            matches!(e, GatewayError::Unsupported { .. })
        }),
        ("PUT", format!("/v2/a/blobs/{D}"), None, |e| {
            matches!(e, GatewayError::Unsupported { .. })
        }),
        ("GET", "/v2/a/blobs/uploads/".into(), None, |e| {
            matches!(e, GatewayError::Unsupported { .. })
        }),
        ("POST", "/v2/a/blobs/uploads/x1".into(), None, |e| {
            matches!(e, GatewayError::Unsupported { .. })
        }),
        ("DELETE", "/v2/a/tags/list".into(), None, |e| {
            matches!(e, GatewayError::Unsupported { .. })
        }),
        ("POST", format!("/v2/a/referrers/{D}"), None, |e| {
            matches!(e, GatewayError::Unsupported { .. })
        }),
        ("PUT", "/oauth2/token".into(), None, |e| {
            matches!(e, GatewayError::Unsupported { .. })
        }),
        ("POST", "/metrics".into(), None, |e| {
            matches!(e, GatewayError::Unsupported { .. })
        }),
        ("POST", "/healthz".into(), None, |e| {
            matches!(e, GatewayError::Unsupported { .. })
        }),
    ];
    for (method, path, query, expected) in cases {
        let e = err(method, &path, query.as_deref());
        assert!(expected(&e), "{method} {path} {query:?}: {e:?}");
    }
}

fn trust(gun: &str, repository: &str, kind: TrustKind) -> Route {
    Route::Trust(TrustRequest {
        gun: gun.to_owned(),
        repository: repository.to_owned(),
        kind,
    })
}

fn role(name: &str) -> Role {
    Role::parse(name).unwrap()
}

#[test]
fn notary_routes() {
    const GUN: &str = "127.0.0.1:5443/samples/app";
    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let at = |rest: &str| format!("/v2/{GUN}/_trust/{rest}");
    let metadata = |m| trust(GUN, "samples/app", TrustKind::Metadata(m));
    let current = |name| metadata(MetadataRef::Current(role(name)));
    let cases: Vec<(&str, String, Route)> = vec![
        (
            "POST",
            at("tuf/"),
            trust(GUN, "samples/app", TrustKind::Update),
        ),
        (
            "DELETE",
            at("tuf/"),
            trust(GUN, "samples/app", TrustKind::Delete),
        ),
        ("GET", at("tuf/root.json"), current("root")),
        ("GET", at("tuf/timestamp.json"), current("timestamp")),
        (
            "GET",
            at("tuf/targets/releases.json"),
            current("targets/releases"),
        ),
        (
            "GET",
            at(&format!("tuf/snapshot.{}.json", HEX.to_uppercase())),
            metadata(MetadataRef::Checksum {
                role: role("snapshot"),
                sha256: HEX.into(),
            }),
        ),
        (
            "GET",
            at(&format!("tuf/targets/releases.{HEX}.json")),
            metadata(MetadataRef::Checksum {
                role: role("targets/releases"),
                sha256: HEX.into(),
            }),
        ),
        (
            "GET",
            at("tuf/2.root.json"),
            metadata(MetadataRef::Version {
                role: role("root"),
                version: 2,
            }),
        ),
        (
            "GET",
            at("tuf/timestamp.key"),
            trust(GUN, "samples/app", TrustKind::Key(role("timestamp"))),
        ),
        (
            "POST",
            at("tuf/snapshot.key"),
            trust(GUN, "samples/app", TrustKind::RotateKey(role("snapshot"))),
        ),
        (
            "GET",
            at("changefeed"),
            trust(GUN, "samples/app", TrustKind::Changefeed),
        ),
        // A host without a port, and `localhost`.
        (
            "GET",
            "/v2/registry.example.com/a/b/_trust/tuf/root.json".into(),
            trust(
                "registry.example.com/a/b",
                "a/b",
                TrustKind::Metadata(MetadataRef::Current(role("root"))),
            ),
        ),
        (
            "POST",
            "/v2/localhost/app/_trust/tuf/".into(),
            trust("localhost/app", "app", TrustKind::Update),
        ),
        // The changefeed of every GUN.
        (
            "GET",
            "/v2/_trust/changefeed".into(),
            Route::TrustChangefeed,
        ),
    ];
    for (method, path, expected) in cases {
        assert_eq!(ok(method, &path, None), expected, "{method} {path}");
    }
    let not_found = [
        ("HEAD", at("tuf/root.json")),
        ("PUT", at("tuf/root.json")),
        ("POST", at("tuf/root.json")),
        ("GET", at("tuf/")),
        ("GET", at("tuf/root")),
        ("GET", at("tuf/targets.key")),
        ("DELETE", at("tuf/timestamp.key")),
        ("GET", at("tuf/Root.json")),
        ("GET", at("tuf/targets/../root.json")),
        ("GET", at("tuf/root.abc.json")),
        ("GET", at("other")),
        ("POST", at("changefeed")),
        ("POST", "/v2/_trust/changefeed".into()),
        ("HEAD", "/v2/_trust/changefeed".into()),
        ("GET", "/v2/_trust/tuf/root.json".into()),
    ];
    for (method, path) in not_found {
        let e = err(method, &path, None);
        assert!(
            matches!(e, GatewayError::NotFound { .. }),
            "{method} {path}: {e:?}"
        );
    }
    // A GUN needs a host and a valid repository.
    for path in [
        "/v2/samples/app/_trust/tuf/root.json",
        "/v2/127.0.0.1:5443/Samples/_trust/tuf/root.json",
        "/v2/127.0.0.1:5443/_trust/tuf/root.json",
        "/v2/127.0.0.1:5443/a/../b/_trust/tuf/root.json",
    ] {
        let e = err("GET", path, None);
        assert!(
            matches!(&e, GatewayError::BadRequest(m) if m.contains("trust GUN")),
            "{path}: {e:?}"
        );
    }
    // Registry routes are unaffected: `_trust` is no repository component.
    assert_eq!(
        ok("GET", "/v2/samples/trust/manifests/latest", None),
        repo(
            "samples/trust",
            RequestKind::ManifestGet {
                reference: tag("latest")
            }
        )
    );
    assert!(matches!(
        err("GET", "/v2/a/_trust/tags/list", None),
        GatewayError::BadRequest(_)
    ));
}

#[test]
fn hostile_paths_are_refused_without_panicking() {
    let huge = format!("/v2/{}/manifests/latest", "a/".repeat(100_000));
    let hostile = [
        "/v2/../v2/a/manifests/x",
        "/v2/a/../b/manifests/x",
        "/v2/a/./manifests/x",
        "/v2//a/manifests/x",
        "/v2/a//b/tags/list",
        "/v2/a%2Fb/manifests/x",
        "/v2/a/manifests/%2e%2e",
        "/v2/a/blobs/uploads/..",
        "/v2/a/blobs/uploads/%00",
        "/v2/\u{ff}\u{fe}/tags/list",
        "/v2/a/manifests/\u{1F600}",
        "/v2/%ff%fe%/tags/list",
        "/v2/\0/tags/list",
        "/portcullis/v1/repositories/../admin",
        "/portcullis/v1/repositories/",
        "",
        "v2/a/tags/list",
        &huge,
    ];
    for method in [Method::GET, Method::POST, Method::DELETE, Method::PATCH] {
        for path in hostile {
            for query in [None, Some("mount=%ff%fe&from=%"), Some("&&=&=%zz&from")] {
                let result = classify(&method, path, query);
                if let Ok(Route::Repository(RepositoryRequest {
                    kind: RequestKind::ManifestGetInvalid { reference },
                    ..
                })) = &result
                {
                    // A read of what cannot exist: decided, then 404.
                    assert!(method == Method::GET && reference.len() <= MAX_ECHOED_PATH + 4);
                    continue;
                }
                assert!(result.is_err(), "{method} {path:.80} → {result:?}");
                if let Err(e) = result {
                    assert!(e.to_string().len() < 1024, "{e:.80}");
                }
            }
        }
    }
    // Hostile queries on a valid route never panic and never yield a mount.
    for query in [
        "%",
        "%%%",
        "mount",
        "=",
        "mount=&from=",
        "from=a%2",
        "a=%f0%9f%98",
    ] {
        let route = classify(&Method::POST, "/v2/a/blobs/uploads/", Some(query));
        assert!(
            !matches!(
                route,
                Ok(Route::Repository(RepositoryRequest {
                    kind: RequestKind::UploadStart { mount: Some(_) },
                    ..
                }))
            ),
            "{query}: {route:?}"
        );
    }
}
