use std::net::TcpListener;

use axum::body::Body;
use portcullis_storage::StorageConfig;

use super::*;

const CONFIG: &[u8] = b"{}";

fn manifest() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Digest::of(CONFIG).to_string(),
            "size": CONFIG.len(),
        },
        "layers": [],
    }))
    .unwrap()
}

/// The storage backend's `docker-registry` 2.8.2 harness (blocking: started off the
/// async runtime).
async fn docker_registry() -> test_registry::DockerRegistry {
    tokio::task::spawn_blocking(test_registry::DockerRegistry::start)
        .await
        .unwrap()
}

/// Pushes the config blob and `repository:tag` over the registry API.
async fn push(url: &str, repository: &str, tag: &str) {
    let client = reqwest::Client::new();
    let digest = Digest::of(CONFIG);
    // distribution 2.8 ignores a monolithic POST: open a session, then PUT.
    let r = client
        .post(format!("{url}/v2/{repository}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()[header::LOCATION].to_str().unwrap().to_owned();
    let location = if location.starts_with('/') {
        format!("{url}{location}")
    } else {
        location
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let r = client
        .put(format!("{location}{separator}digest={digest}"))
        .body(CONFIG)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = client
        .put(format!("{url}/v2/{repository}/manifests/{tag}"))
        .header(
            header::CONTENT_TYPE,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .body(manifest())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
}

#[tokio::test]
async fn upstream_answers_tag_lookups_and_the_whole_catalog() {
    let upstream = docker_registry().await;
    let names = ["zeta", "alpha/one", "alpha/two", "beta", "gamma/x/y"];
    for name in names {
        push(&upstream.url, name, "v1").await;
    }
    let backend = Backend::upstream(&upstream.url).unwrap();
    assert!(backend.tag_exists("alpha/one", "v1").await.unwrap());
    assert!(!backend.tag_exists("alpha/one", "v2").await.unwrap());
    assert!(!backend.tag_exists("missing", "v1").await.unwrap());
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(backend.repositories().await.unwrap(), expected);
    // Small pages: the `Link` chain is followed to the end.
    let Backend::Upstream { client, base, .. } = &backend else {
        panic!("not an upstream")
    };
    assert_eq!(upstream_catalog(client, base, 2).await.unwrap(), expected);
}

#[tokio::test]
async fn unreachable_upstream_is_unavailable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backend = Backend::upstream(&format!("http://127.0.0.1:{port}")).unwrap();
    assert!(matches!(
        backend.tag_exists("a", "v1").await,
        Err(GatewayError::Unavailable(_))
    ));
    assert!(matches!(
        backend.repositories().await,
        Err(GatewayError::Unavailable(_))
    ));
}

#[test]
fn upstream_urls() {
    let b = Backend::upstream("https://registry.example").unwrap();
    assert_eq!(
        b.peer(),
        Some(&PeerAddress {
            addr: "registry.example:443".into(),
            tls: true,
            sni: "registry.example".into()
        })
    );
    assert_eq!(b.host_header().as_deref(), Some("registry.example"));
    let b = Backend::upstream("http://127.0.0.1:5000/").unwrap();
    assert_eq!(
        b.peer(),
        Some(&PeerAddress {
            addr: "127.0.0.1:5000".into(),
            tls: false,
            sni: "127.0.0.1".into()
        })
    );
    assert_eq!(b.host_header().as_deref(), Some("127.0.0.1:5000"));
    let b = Backend::upstream("http://[::1]:5000").unwrap();
    assert!(
        matches!(b.peer(), Some(PeerAddress { addr, sni, .. }) if addr == "[::1]:5000" && sni == "::1")
    );
    for bad in [
        "ftp://x",
        "registry.example",
        "http://x/v2/",
        "http://x?a=b",
        "",
    ] {
        assert!(Backend::upstream(bad).is_err(), "{bad}");
    }
}

#[test]
fn only_catalog_links_on_the_upstream_are_followed() {
    let link = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(header::LINK, v.parse().unwrap());
        next_link(&h, "/v2/_catalog?")
    };
    assert_eq!(
        link("</v2/_catalog?last=b&n=2>; rel=\"next\"").as_deref(),
        Some("/v2/_catalog?last=b&n=2")
    );
    assert_eq!(
        link("<https://evil.example/v2/_catalog?n=1>; rel=\"next\""),
        None
    );
    assert_eq!(link("</v2/_catalog?last=b&n=2>; rel=\"prev\""), None);
    assert_eq!(link("garbage"), None);
}

#[tokio::test]
async fn bundled_lookups_run_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(StorageConfig::new(dir.path())).unwrap();
    let digest = Digest::of(CONFIG);
    for repository in ["b/two", "a/one"] {
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
                manifest(),
                Vec::new(),
            )
            .await
            .unwrap();
    }
    let backend = Backend::bundled(registry);
    assert_eq!(backend.peer(), None);
    assert_eq!(backend.host_header(), None);
    assert!(backend.tag_exists("a/one", "v1").await.unwrap());
    assert!(!backend.tag_exists("a/one", "v2").await.unwrap());
    assert!(!backend.tag_exists("nobody", "v1").await.unwrap());
    assert_eq!(
        backend.repositories().await.unwrap(),
        vec!["a/one", "b/two"]
    );
}
