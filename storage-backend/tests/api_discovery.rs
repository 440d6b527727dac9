//! Discovery endpoints over real HTTP (OCI distribution-spec v1.1 "Content discovery"): the
//! `/v2/` base, tags list and catalog with `n`/`last` pagination and `Link`, and the
//! referrers API with and without the `artifactType` filter.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use common::oci::*;
use common::{Server, client, digest};
use reqwest::blocking::Client;
use serde_json::{Value, json};

#[test]
fn base_endpoint_answers_200_with_api_version() {
    let s = Server::start(&[]);
    let r = client().get(format!("{}/v2/", s.url)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(r.headers(), "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
    let body: Value = r.json().unwrap();
    assert_eq!(body, json!({}));
}

/// GETs `path` and returns (JSON body, Link header).
fn get_page(c: &Client, base: &str, path: &str) -> (Value, Option<String>) {
    let r = c.get(format!("{base}{path}")).send().unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let link = header(r.headers(), "link");
    (r.json().unwrap(), link)
}

/// The target of a `Link: <url>; rel="next"` header.
fn next_path(link: &str) -> String {
    assert!(link.ends_with("rel=\"next\""), "{link}");
    let start = link.find('<').unwrap() + 1;
    let end = link.find('>').unwrap();
    link[start..end].to_owned()
}

#[test]
fn tags_list_is_sorted_and_paginated() {
    let s = Server::start(&[]);
    let c = client();
    let body = push_image(&c, &s.url, "lib/a", "c", "x");
    for tag in ["a", "d", "0", "a.1", "b"] {
        assert_eq!(
            put_manifest(&c, &s.url, "lib/a", tag, OCI_MANIFEST, &body).status(),
            201
        );
    }
    // Lexical order (no upper case or punctuation-only differences: the spec's wording of
    // "lexical" has varied between ASCII and case-insensitive).
    let all = ["0", "a", "a.1", "b", "c", "d"];
    let (v, link) = get_page(&c, &s.url, "/v2/lib/a/tags/list");
    assert_eq!(v, json!({"name": "lib/a", "tags": all}));
    assert_eq!(link, None);

    let (v, link) = get_page(&c, &s.url, "/v2/lib/a/tags/list?n=2");
    assert_eq!(v["tags"], json!(["0", "a"]));
    let next = next_path(&link.expect("Link on a full page"));
    assert!(next.starts_with("/v2/lib/a/tags/list?"), "{next}");
    assert!(next.contains("n=2") && next.contains("last=a"), "{next}");
    let (v, link) = get_page(&c, &s.url, &next);
    assert_eq!(v["tags"], json!(["a.1", "b"]));
    let (v, link) = get_page(&c, &s.url, &next_path(&link.expect("second Link")));
    assert_eq!(v["tags"], json!(["c", "d"]));
    // Whether the exactly-full last page links on is the server's choice; following it must
    // give an empty page.
    if let Some(link) = link {
        let (v, link) = get_page(&c, &s.url, &next_path(&link));
        assert_eq!(v["tags"].as_array().map(Vec::len).unwrap_or(0), 0);
        assert_eq!(link, None);
    }

    let (v, link) = get_page(&c, &s.url, "/v2/lib/a/tags/list?last=a.1");
    assert_eq!(v["tags"], json!(["b", "c", "d"]));
    assert_eq!(link, None);
    let (v, _) = get_page(&c, &s.url, "/v2/lib/a/tags/list?n=10&last=a");
    assert_eq!(v["tags"], json!(["a.1", "b", "c", "d"]));
    // Spec: "When n is zero, this endpoint MUST return an empty list, and MUST NOT include a
    // Link header."
    let (v, link) = get_page(&c, &s.url, "/v2/lib/a/tags/list?n=0");
    assert_eq!(v["tags"].as_array().map(Vec::len).unwrap_or(0), 0, "{v}");
    assert_eq!(link, None);
}

#[test]
fn tags_list_of_unknown_repository_is_name_unknown() {
    let s = Server::start(&[]);
    let c = client();
    let r = c
        .get(format!("{}/v2/lib/none/tags/list", s.url))
        .send()
        .unwrap();
    assert_error(r, 404, &["NAME_UNKNOWN"]);
    let r = c.get(format!("{}/v2/Lib/tags/list", s.url)).send().unwrap();
    assert_error(r, 400, &["NAME_INVALID"]);
}

#[test]
fn catalog_lists_repositories_with_pagination() {
    let s = Server::start(&[]);
    let c = client();
    let (v, _) = get_page(&c, &s.url, "/v2/_catalog");
    assert_eq!(
        v["repositories"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "empty registry"
    );
    for repo in ["zeta", "alpha/one", "alpha/two", "beta"] {
        push_image(&c, &s.url, repo, "latest", repo);
    }
    let (v, link) = get_page(&c, &s.url, "/v2/_catalog");
    assert_eq!(
        v,
        json!({"repositories": ["alpha/one", "alpha/two", "beta", "zeta"]})
    );
    assert_eq!(link, None);
    let (v, link) = get_page(&c, &s.url, "/v2/_catalog?n=3");
    assert_eq!(v["repositories"], json!(["alpha/one", "alpha/two", "beta"]));
    let next = next_path(&link.expect("Link"));
    assert!(
        next.starts_with("/v2/_catalog?") && next.contains("n=3"),
        "{next}"
    );
    assert!(next.contains("last=beta"), "{next}");
    let (v, link) = get_page(&c, &s.url, &next);
    assert_eq!(v["repositories"], json!(["zeta"]));
    assert_eq!(link, None);
    let (v, link) = get_page(&c, &s.url, "/v2/_catalog?n=0");
    assert_eq!(
        v["repositories"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "{v}"
    );
    assert_eq!(link, None);
}

/// Pushes a subject image and returns its manifest bytes.
fn subject(c: &Client, base: &str, repo: &str) -> Vec<u8> {
    push_image(c, base, repo, "v1", "subject")
}

/// GETs the referrers of `subject` (with an optional filter) and checks the index shape.
fn referrers(
    c: &Client,
    base: &str,
    repo: &str,
    subject: &str,
    filter: Option<&str>,
) -> (Value, Option<String>) {
    let mut url = format!("{base}/v2/{repo}/referrers/{subject}");
    if let Some(t) = filter {
        url = with_query(&url, "artifactType", t);
    }
    let r = c.get(&url).send().unwrap();
    assert_eq!(r.status(), 200, "{url}");
    assert_eq!(
        header(r.headers(), "content-type").as_deref(),
        Some(OCI_INDEX)
    );
    let applied = header(r.headers(), "oci-filters-applied");
    let v: Value = r.json().unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    assert!(v["manifests"].is_array(), "{v}");
    (v, applied)
}

#[test]
fn referrers_list_descriptors_and_filter_by_artifact_type() {
    let s = Server::start(&[]);
    let c = client();
    let (base, repo) = (s.url.as_str(), "lib/a");
    let subj = subject(&c, base, repo);
    let subj_digest = digest(&subj);
    push_blob(&c, base, repo, b"{}");
    push_blob(&c, base, repo, b"sig");
    push_blob(&c, base, repo, b"sbom");
    let sig = artifact_manifest(
        Some("application/vnd.example.sig"),
        OCI_EMPTY,
        b"sig",
        &subj,
    );
    // No artifactType: the descriptor's artifactType falls back to config.mediaType.
    let sbom = artifact_manifest(None, "application/vnd.example.sbom", b"sbom", &subj);
    for m in [&sig, &sbom] {
        let r = put_manifest(&c, base, repo, &digest(m), OCI_MANIFEST, m);
        assert_eq!(r.status(), 201);
        assert_eq!(
            header(r.headers(), "oci-subject"),
            Some(subj_digest.clone())
        );
    }

    let (v, applied) = referrers(&c, base, repo, &subj_digest, None);
    assert_eq!(applied, None);
    // Only the fields the spec requires are compared; extra descriptor fields are allowed.
    let fields = ["mediaType", "digest", "size", "artifactType", "annotations"];
    let mut got: Vec<Value> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            fields
                .iter()
                .map(|f| ((*f).to_owned(), d[f].clone()))
                .collect()
        })
        .collect();
    got.sort_by_key(|d| d["digest"].as_str().unwrap().to_owned());
    let mut want = vec![
        json!({"mediaType": OCI_MANIFEST, "digest": digest(&sig), "size": sig.len(),
               "artifactType": "application/vnd.example.sig",
               "annotations": {"org.example.note": "referrer"}}),
        json!({"mediaType": OCI_MANIFEST, "digest": digest(&sbom), "size": sbom.len(),
               "artifactType": "application/vnd.example.sbom",
               "annotations": {"org.example.note": "referrer"}}),
    ];
    want.sort_by_key(|d| d["digest"].as_str().unwrap().to_owned());
    assert_eq!(got, want);

    let (v, applied) = referrers(
        &c,
        base,
        repo,
        &subj_digest,
        Some("application/vnd.example.sbom"),
    );
    assert_eq!(applied.as_deref(), Some("artifactType"));
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], json!(digest(&sbom)));

    // Deleting a referrer removes it from the list.
    let r = c
        .delete(format!("{base}/v2/{repo}/manifests/{}", digest(&sig)))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let (v, _) = referrers(&c, base, repo, &subj_digest, None);
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], json!(digest(&sbom)));
}

#[test]
fn referrers_are_scoped_to_the_repository() {
    let s = Server::start(&[]);
    let c = client();
    let subj = subject(&c, &s.url, "lib/a");
    push_blob(&c, &s.url, "lib/a", b"{}");
    push_blob(&c, &s.url, "lib/a", b"sig");
    let sig = artifact_manifest(
        Some("application/vnd.example.sig"),
        OCI_EMPTY,
        b"sig",
        &subj,
    );
    assert_eq!(
        put_manifest(&c, &s.url, "lib/a", &digest(&sig), OCI_MANIFEST, &sig).status(),
        201
    );
    subject(&c, &s.url, "lib/b");
    let (v, _) = referrers(&c, &s.url, "lib/b", &digest(&subj), None);
    assert_eq!(v["manifests"], json!([]));
}

#[test]
fn referrers_of_unknown_subject_is_an_empty_index() {
    let s = Server::start(&[]);
    let c = client();
    subject(&c, &s.url, "lib/a");
    let (v, _) = referrers(&c, &s.url, "lib/a", &digest(b"no such subject"), None);
    assert_eq!(v["manifests"], json!([]));
    let (v, _) = referrers(
        &c,
        &s.url,
        "lib/a",
        &digest(b"no such subject"),
        Some("a/b"),
    );
    assert_eq!(v["manifests"], json!([]));
}

#[test]
fn referrers_with_malformed_digest_is_digest_invalid() {
    let s = Server::start(&[]);
    let c = client();
    let r = c
        .get(format!("{}/v2/lib/a/referrers/sha256:12", s.url))
        .send()
        .unwrap();
    assert_error(r, 400, &["DIGEST_INVALID"]);
    let r = c
        .get(format!("{}/v2/lib/a/referrers/latest", s.url))
        .send()
        .unwrap();
    assert_error(r, 400, &["DIGEST_INVALID"]);
}

#[test]
fn index_referrer_without_artifact_type_omits_it() {
    let s = Server::start(&[]);
    let c = client();
    let subj = subject(&c, &s.url, "lib/a");
    let child = push_image(&c, &s.url, "lib/a", "child", "child");
    // An index with a subject and no artifactType: spec says the descriptor's artifactType
    // MUST be omitted.
    let mut index: Value =
        serde_json::from_slice(&index_manifest(OCI_INDEX, &[(OCI_MANIFEST, &child)])).unwrap();
    index["subject"] = descriptor(OCI_MANIFEST, &subj);
    index["annotations"] = json!({"org.example.kind": "index-referrer"});
    let index = serde_json::to_vec(&index).unwrap();
    let r = put_manifest(&c, &s.url, "lib/a", &digest(&index), OCI_INDEX, &index);
    assert_eq!(r.status(), 201);
    assert_eq!(header(r.headers(), "oci-subject"), Some(digest(&subj)));
    let (v, _) = referrers(&c, &s.url, "lib/a", &digest(&subj), None);
    let d = &v["manifests"][0];
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(d["mediaType"], OCI_INDEX);
    assert_eq!(d["digest"], json!(digest(&index)));
    assert_eq!(d["size"], json!(index.len()));
    assert!(d.get("artifactType").is_none_or(Value::is_null), "{d}");
    assert_eq!(
        d["annotations"],
        json!({"org.example.kind": "index-referrer"})
    );
}
