//! Manifests over real HTTP (OCI distribution-spec v1.1 "Pushing manifests", "Pulling
//! manifests", "Deleting tags/manifests"): every media type round-trips byte-exact with its
//! Content-Type, references are checked, digests verified, size limited, `?tag=` and
//! `OCI-Subject` honoured, and deletes behave.

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

/// GET and HEAD `reference` and check bytes, Content-Type, digest and length.
fn assert_served(
    c: &Client,
    base: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) {
    let url = format!("{base}/v2/{repo}/manifests/{reference}");
    let d = digest(body);
    let r = c.get(&url).header("accept", media_type).send().unwrap();
    assert_eq!(r.status(), 200, "GET {reference}");
    assert_eq!(
        header(r.headers(), "content-type").as_deref(),
        Some(media_type),
        "GET {reference}"
    );
    assert_eq!(
        header(r.headers(), "docker-content-digest").as_deref(),
        Some(d.as_str())
    );
    assert_eq!(
        r.bytes().unwrap().as_ref(),
        body,
        "exact bytes of {reference}"
    );
    let r = c.head(&url).header("accept", media_type).send().unwrap();
    assert_eq!(r.status(), 200, "HEAD {reference}");
    assert_eq!(
        header(r.headers(), "content-type").as_deref(),
        Some(media_type),
        "HEAD {reference}"
    );
    assert_eq!(
        header(r.headers(), "docker-content-digest").as_deref(),
        Some(d.as_str())
    );
    assert_eq!(
        header(r.headers(), "content-length"),
        Some(body.len().to_string()),
        "HEAD {reference}"
    );
}

/// PUT by tag, check the 201 headers, then serve by tag and by digest.
fn put_and_check(c: &Client, base: &str, repo: &str, tag: &str, media_type: &str, body: &[u8]) {
    let d = digest(body);
    let r = put_manifest(c, base, repo, tag, media_type, body);
    assert_eq!(
        r.status(),
        201,
        "PUT {media_type}: {}",
        r.text().unwrap_or_default()
    );
    assert_eq!(
        header(r.headers(), "docker-content-digest").as_deref(),
        Some(d.as_str())
    );
    let location = header(r.headers(), "location").expect("Location");
    assert!(
        location.ends_with(&format!("/v2/{repo}/manifests/{d}")),
        "{location}"
    );
    assert_served(c, base, repo, tag, media_type, body);
    assert_served(c, base, repo, &d, media_type, body);
}

#[test]
fn every_manifest_media_type_round_trips() {
    let s = Server::start(&[]);
    let c = client();
    let (base, repo) = (s.url.as_str(), "lib/app");
    let (config, layer) = (
        b"{\"architecture\":\"amd64\"}".as_slice(),
        b"layer bytes".as_slice(),
    );
    push_blob(&c, base, repo, config);
    push_blob(&c, base, repo, layer);

    let docker = image_manifest(DOCKER_MANIFEST, config, &[layer]);
    put_and_check(&c, base, repo, "docker", DOCKER_MANIFEST, &docker);
    let list = index_manifest(DOCKER_LIST, &[(DOCKER_MANIFEST, &docker)]);
    put_and_check(&c, base, repo, "docker-list", DOCKER_LIST, &list);

    let oci = image_manifest(OCI_MANIFEST, config, &[layer]);
    put_and_check(&c, base, repo, "oci", OCI_MANIFEST, &oci);
    let index = index_manifest(
        OCI_INDEX,
        &[(OCI_MANIFEST, &oci), (DOCKER_MANIFEST, &docker)],
    );
    put_and_check(&c, base, repo, "oci-index", OCI_INDEX, &index);

    push_blob(&c, base, repo, b"{}");
    push_blob(&c, base, repo, b"signature");
    let artifact = artifact_manifest(
        Some("application/vnd.example.sig"),
        OCI_EMPTY,
        b"signature",
        &oci,
    );
    put_and_check(&c, base, repo, "artifact", OCI_MANIFEST, &artifact);
    // Artifacts may use any config media type.
    push_blob(&c, base, repo, b"sbom");
    let custom = artifact_manifest(None, "application/vnd.example.sbom.config", b"sbom", &oci);
    put_and_check(&c, base, repo, "custom-config", OCI_MANIFEST, &custom);
}

#[test]
fn content_type_defaults_to_the_media_type_field() {
    let s = Server::start(&[]);
    let c = client();
    let (config, layer) = (b"{}".as_slice(), b"l".as_slice());
    push_blob(&c, &s.url, "lib/a", config);
    push_blob(&c, &s.url, "lib/a", layer);
    let body = image_manifest(OCI_MANIFEST, config, &[layer]);
    let r = c
        .put(format!("{}/v2/lib/a/manifests/v1", s.url))
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_served(&c, &s.url, "lib/a", "v1", OCI_MANIFEST, &body);
}

#[test]
fn content_type_contradicting_media_type_is_manifest_invalid() {
    let s = Server::start(&[]);
    let c = client();
    let (config, layer) = (b"{}".as_slice(), b"l".as_slice());
    push_blob(&c, &s.url, "lib/a", config);
    push_blob(&c, &s.url, "lib/a", layer);
    let body = image_manifest(OCI_MANIFEST, config, &[layer]);
    let r = put_manifest(&c, &s.url, "lib/a", "v1", DOCKER_MANIFEST, &body);
    assert_error(r, 400, &["MANIFEST_INVALID"]);
}

#[test]
fn unparsable_manifest_is_manifest_invalid() {
    let s = Server::start(&[]);
    let c = client();
    let r = put_manifest(&c, &s.url, "lib/a", "v1", OCI_MANIFEST, b"{not json");
    assert_error(r, 400, &["MANIFEST_INVALID"]);
}

/// Manifests that are not valid images or indexes are refused with the field at fault
/// named (OCI image spec: descriptors, `schemaVersion`, `config`/`layers`/`manifests`;
/// sizes checked against the stored content; schema 1 refused as distribution does).
#[test]
fn invalid_images_and_indexes_are_refused_naming_the_field() {
    let s = Server::start(&[]);
    let c = client();
    let (base, repo) = (s.url.as_str(), "lib/strict");
    let config = b"{\"architecture\":\"amd64\"}".as_slice();
    let layer = vec![7u8; 1024 * 1024];
    push_blob(&c, base, repo, config);
    push_blob(&c, base, repo, &layer);
    let child = image_manifest(OCI_MANIFEST, config, &[&layer]);
    assert_eq!(
        put_manifest(&c, base, repo, "child", OCI_MANIFEST, &child).status(),
        201
    );
    let image: serde_json::Value = serde_json::from_slice(&child).unwrap();
    let with = |path: &[&str], value: serde_json::Value| {
        let mut m = image.clone();
        let mut at = &mut m;
        for key in &path[..path.len() - 1] {
            at = match key.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*key],
            };
        }
        let last = path[path.len() - 1];
        match value {
            serde_json::Value::Null => {
                at.as_object_mut().unwrap().remove(last);
            }
            v => at[last] = v,
        }
        serde_json::to_vec(&m).unwrap()
    };
    let index = |size: serde_json::Value| {
        let mut d = descriptor(OCI_MANIFEST, &child);
        d["size"] = size;
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d]}))
        .unwrap()
    };
    let null = serde_json::Value::Null;
    let schema1 = br#"{"schemaVersion":1,"name":"lib/strict","tag":"v1","architecture":"amd64","fsLayers":[],"history":[]}"#;
    let cases: Vec<(&str, &str, Vec<u8>, &str, &str)> = vec![
        ("bare schemaVersion", OCI_MANIFEST, br#"{"schemaVersion":2}"#.to_vec(), "MANIFEST_INVALID", "config"),
        ("schemaVersion 3", OCI_MANIFEST, with(&["schemaVersion"], 3.into()), "MANIFEST_INVALID", "schemaVersion"),
        ("no schemaVersion", OCI_MANIFEST, with(&["schemaVersion"], null.clone()), "MANIFEST_INVALID", "schemaVersion"),
        ("no layers", OCI_MANIFEST, with(&["layers"], null.clone()), "MANIFEST_INVALID", "layers"),
        ("docker, no config", DOCKER_MANIFEST, br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","layers":[]}"#.to_vec(), "MANIFEST_INVALID", "config"),
        ("size -1", OCI_MANIFEST, with(&["layers", "0", "size"], (-1).into()), "MANIFEST_INVALID", "layers[0].size"),
        ("size 2^62", OCI_MANIFEST, with(&["layers", "0", "size"], (1u64 << 62).into()), "MANIFEST_INVALID", "layers[0].size"),
        ("size 5 for 1 MiB", OCI_MANIFEST, with(&["layers", "0", "size"], 5.into()), "MANIFEST_INVALID", "layers[0].size"),
        ("size as string", OCI_MANIFEST, with(&["config", "size"], "24".into()), "MANIFEST_INVALID", "config.size"),
        ("no size", OCI_MANIFEST, with(&["config", "size"], null.clone()), "MANIFEST_INVALID", "config.size"),
        ("no digest", OCI_MANIFEST, with(&["layers", "0", "digest"], null.clone()), "MANIFEST_INVALID", "layers[0].digest"),
        ("no descriptor mediaType", OCI_MANIFEST, with(&["config", "mediaType"], null.clone()), "MANIFEST_INVALID", "config.mediaType"),
        ("missing layer", OCI_MANIFEST, with(&["layers", "0", "digest"], digest(b"absent").into()), "MANIFEST_BLOB_UNKNOWN", "sha256:"),
        ("index without manifests", OCI_INDEX, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#.to_vec(), "MANIFEST_INVALID", "manifests"),
        ("index child size", OCI_INDEX, index(3.into()), "MANIFEST_INVALID", "manifests[0].size"),
        ("index child size -1", OCI_INDEX, index((-1).into()), "MANIFEST_INVALID", "manifests[0].size"),
        ("invalid UTF-8", OCI_MANIFEST, b"{\"schemaVersion\":2,\"x\":\"\xff\xfe\"}".to_vec(), "MANIFEST_INVALID", "UTF-8"),
        ("unsigned schema1", "application/vnd.docker.distribution.manifest.v1+json", schema1.to_vec(), "MANIFEST_INVALID", "schema 1"),
        ("schema1 without Content-Type", "", schema1.to_vec(), "MANIFEST_INVALID", "schema 1"),
    ];
    for (name, media_type, body, code, names) in cases {
        let r = if media_type.is_empty() {
            c.put(format!("{base}/v2/{repo}/manifests/bad"))
                .body(body)
                .send()
                .unwrap()
        } else {
            put_manifest(&c, base, repo, "bad", media_type, &body)
        };
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        assert_eq!(status, 400, "{name}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let e = &v["errors"][0];
        assert_eq!(e["code"], code, "{name}: {text}");
        let said = format!("{} {}", e["message"], e["detail"]);
        assert!(said.contains(names), "{name}: {said} should name {names}");
    }
    // Nothing was tagged.
    assert_error(
        c.get(format!("{base}/v2/{repo}/manifests/bad"))
            .send()
            .unwrap(),
        404,
        &["MANIFEST_UNKNOWN"],
    );
    // The same shapes done right are accepted, the empty artifact config included.
    push_blob(&c, base, repo, b"{}");
    let artifact = artifact_manifest(
        Some("application/vnd.example.sig"),
        OCI_EMPTY,
        &layer,
        &child,
    );
    assert_eq!(
        put_manifest(&c, base, repo, "sig", OCI_MANIFEST, &artifact).status(),
        201
    );
    assert_eq!(
        put_manifest(&c, base, repo, "idx", OCI_INDEX, &index(child.len().into())).status(),
        201
    );
}

#[test]
fn missing_layer_or_config_is_manifest_blob_unknown() {
    let s = Server::start(&[]);
    let c = client();
    let (config, layer) = (b"{\"c\":1}".as_slice(), b"present".as_slice());
    push_blob(&c, &s.url, "lib/a", config);
    push_blob(&c, &s.url, "lib/a", layer);
    for media_type in [OCI_MANIFEST, DOCKER_MANIFEST] {
        let missing_layer = image_manifest(media_type, config, &[layer, b"absent"]);
        let r = put_manifest(&c, &s.url, "lib/a", "v1", media_type, &missing_layer);
        assert_error(r, 400, &["MANIFEST_BLOB_UNKNOWN"]);
        let missing_config = image_manifest(media_type, b"{\"absent\":1}", &[layer]);
        let r = put_manifest(&c, &s.url, "lib/a", "v1", media_type, &missing_config);
        assert_error(r, 400, &["MANIFEST_BLOB_UNKNOWN"]);
    }
    assert_error(
        c.get(format!("{}/v2/lib/a/manifests/v1", s.url))
            .send()
            .unwrap(),
        404,
        &["MANIFEST_UNKNOWN"],
    );
}

#[test]
fn blobs_of_another_repository_do_not_satisfy_references() {
    let s = Server::start(&[]);
    let c = client();
    let (config, layer) = (b"{}".as_slice(), b"elsewhere".as_slice());
    push_blob(&c, &s.url, "lib/a", config);
    push_blob(&c, &s.url, "lib/a", layer);
    let body = image_manifest(OCI_MANIFEST, config, &[layer]);
    let r = put_manifest(&c, &s.url, "lib/b", "v1", OCI_MANIFEST, &body);
    assert_error(r, 400, &["MANIFEST_BLOB_UNKNOWN"]);
}

#[test]
fn index_with_missing_child_is_refused() {
    let s = Server::start(&[]);
    let c = client();
    let child = image_manifest(OCI_MANIFEST, b"{}", &[b"never pushed"]);
    for media_type in [OCI_INDEX, DOCKER_LIST] {
        let index = index_manifest(media_type, &[(OCI_MANIFEST, &child)]);
        let r = put_manifest(&c, &s.url, "lib/a", "multi", media_type, &index);
        assert_error(r, 400, &["MANIFEST_UNKNOWN", "MANIFEST_BLOB_UNKNOWN"]);
    }
}

#[test]
fn put_by_digest_verifies_the_digest() {
    let s = Server::start(&[]);
    let c = client();
    let body = push_image(&c, &s.url, "lib/a", "seed", "a");
    let d = digest(&body);
    let r = put_manifest(&c, &s.url, "lib/a", &d, OCI_MANIFEST, &body);
    assert_eq!(r.status(), 201);
    assert_eq!(
        header(r.headers(), "docker-content-digest").as_deref(),
        Some(d.as_str())
    );
    let mut altered = body.clone();
    altered.extend_from_slice(b" ");
    let r = put_manifest(&c, &s.url, "lib/a", &d, OCI_MANIFEST, &altered);
    assert_error(r, 400, &["DIGEST_INVALID"]);
    assert_served(&c, &s.url, "lib/a", &d, OCI_MANIFEST, &body);
    let r = put_manifest(&c, &s.url, "lib/a", "sha256:00ff", OCI_MANIFEST, &body);
    assert_error(r, 400, &["DIGEST_INVALID"]);
}

#[test]
fn put_by_digest_with_tag_parameters_sets_oci_tag() {
    let s = Server::start(&[]);
    let c = client();
    let body = push_image(&c, &s.url, "lib/a", "untagged-first", "t");
    let d = digest(&body);
    let r = put_manifest(
        &c,
        &s.url,
        "lib/a",
        &format!("{d}?tag=one&tag=two"),
        OCI_MANIFEST,
        &body,
    );
    assert_eq!(r.status(), 201);
    let mut tags: Vec<String> = r
        .headers()
        .get_all("oci-tag")
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap()
                .split(',')
                .map(|t| t.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    tags.sort();
    assert_eq!(tags, ["one", "two"]);
    assert_served(&c, &s.url, "lib/a", "one", OCI_MANIFEST, &body);
    assert_served(&c, &s.url, "lib/a", "two", OCI_MANIFEST, &body);
    let r = put_manifest(
        &c,
        &s.url,
        "lib/a",
        &format!("{d}?tag=-bad"),
        OCI_MANIFEST,
        &body,
    );
    assert_error(r, 400, &["TAG_INVALID"]);
}

#[test]
fn subject_is_echoed_in_oci_subject() {
    let s = Server::start(&[]);
    let c = client();
    // The subject need not exist (spec: registries MUST accept such manifests).
    let subject = image_manifest(OCI_MANIFEST, b"{}", &[b"not pushed"]);
    push_blob(&c, &s.url, "lib/a", b"{}");
    push_blob(&c, &s.url, "lib/a", b"sig");
    let artifact = artifact_manifest(
        Some("application/vnd.example.sig"),
        OCI_EMPTY,
        b"sig",
        &subject,
    );
    let r = put_manifest(
        &c,
        &s.url,
        "lib/a",
        &digest(&artifact),
        OCI_MANIFEST,
        &artifact,
    );
    assert_eq!(r.status(), 201);
    assert_eq!(header(r.headers(), "oci-subject"), Some(digest(&subject)));
    // A manifest without a subject carries no OCI-Subject.
    let r = put_manifest(
        &c,
        &s.url,
        "lib/a",
        "plain",
        OCI_MANIFEST,
        &image_manifest(OCI_MANIFEST, b"{}", &[b"sig"]),
    );
    assert_eq!(r.status(), 201);
    assert_eq!(header(r.headers(), "oci-subject"), None);
}

/// A manifest padded with an annotation to exactly `size` bytes.
fn manifest_of_size(size: usize) -> Vec<u8> {
    let head = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"config\":{},\"layers\":[],\"annotations\":{{\"pad\":\"",
        descriptor(OCI_EMPTY, b"{}")
    );
    let tail = "\"}}";
    let mut m = head.into_bytes();
    m.resize(size - tail.len(), b'x');
    m.extend_from_slice(tail.as_bytes());
    assert_eq!(m.len(), size);
    m
}

#[test]
fn four_mib_manifest_is_accepted_and_larger_is_413() {
    let s = Server::start(&[]);
    let c = client();
    push_blob(&c, &s.url, "lib/a", b"{}");
    let limit = 4 * 1024 * 1024;
    let at_limit = manifest_of_size(limit);
    let r = put_manifest(&c, &s.url, "lib/a", "big", OCI_MANIFEST, &at_limit);
    assert_eq!(r.status(), 201, "a 4 MiB manifest is accepted");
    assert_served(&c, &s.url, "lib/a", "big", OCI_MANIFEST, &at_limit);
    let r = put_manifest(
        &c,
        &s.url,
        "lib/a",
        "bigger",
        OCI_MANIFEST,
        &manifest_of_size(limit + 1),
    );
    assert_error(r, 413, &["SIZE_INVALID", "MANIFEST_INVALID"]);
}

#[test]
fn manifest_size_limit_is_configurable() {
    let s = Server::start(&["--max-manifest-bytes", "1000"]);
    let c = client();
    push_blob(&c, &s.url, "lib/a", b"{}");
    assert_eq!(
        put_manifest(
            &c,
            &s.url,
            "lib/a",
            "ok",
            OCI_MANIFEST,
            &manifest_of_size(1000)
        )
        .status(),
        201
    );
    let r = put_manifest(
        &c,
        &s.url,
        "lib/a",
        "big",
        OCI_MANIFEST,
        &manifest_of_size(1001),
    );
    assert_error(r, 413, &["SIZE_INVALID", "MANIFEST_INVALID"]);
}

#[test]
fn unknown_manifest_is_404() {
    let s = Server::start(&[]);
    let c = client();
    push_image(&c, &s.url, "lib/a", "v1", "a");
    let missing = digest(b"no such manifest");
    for reference in ["v2", missing.as_str()] {
        let url = format!("{}/v2/lib/a/manifests/{reference}", s.url);
        assert_error(c.get(&url).send().unwrap(), 404, &["MANIFEST_UNKNOWN"]);
        assert_eq!(c.head(&url).send().unwrap().status(), 404);
    }
    let r = c
        .get(format!("{}/v2/lib/nothing/manifests/v1", s.url))
        .send()
        .unwrap();
    assert_error(r, 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);
}

#[test]
fn invalid_tag_name_and_digest_are_refused() {
    let s = Server::start(&[]);
    let c = client();
    let body = manifest_of_size(300);
    push_blob(&c, &s.url, "lib/a", b"{}");
    let long_tag = "t".repeat(129);
    for tag in [".dot", "-dash", long_tag.as_str(), "t%21"] {
        assert_error(
            put_manifest(&c, &s.url, "lib/a", tag, OCI_MANIFEST, &body),
            400,
            &["TAG_INVALID"],
        );
    }
    // 128 characters is the longest valid tag.
    assert_eq!(
        put_manifest(&c, &s.url, "lib/a", &"t".repeat(128), OCI_MANIFEST, &body).status(),
        201
    );
    assert_error(
        put_manifest(&c, &s.url, "Lib/A", "v1", OCI_MANIFEST, &body),
        400,
        &["NAME_INVALID"],
    );
    assert_error(
        put_manifest(&c, &s.url, "lib/a", "sha256:zz", OCI_MANIFEST, &body),
        400,
        &["DIGEST_INVALID"],
    );
    let r = c
        .delete(format!("{}/v2/lib/a/manifests/-dash", s.url))
        .send()
        .unwrap();
    assert_error(r, 400, &["TAG_INVALID"]);
}

/// A GET or HEAD by a reference that can name no manifest (an invalid tag, a malformed
/// or unsupported digest) is answered like any missing manifest: 404 `MANIFEST_UNKNOWN`,
/// as distribution and zot answer it. The name is still checked first.
#[test]
fn get_by_an_invalid_reference_is_manifest_unknown() {
    let s = Server::start(&[]);
    let c = client();
    push_image(&c, &s.url, "lib/a", "v1", "a");
    let long_tag = "t".repeat(129);
    let sha512 = format!("sha512:{}", "a".repeat(128));
    for reference in [
        "-dash",
        ".dot",
        long_tag.as_str(),
        "t%21",
        "sha256:zz",
        sha512.as_str(),
    ] {
        for repo in ["lib/a", "lib/nothing"] {
            let url = format!("{}/v2/{repo}/manifests/{reference}", s.url);
            let code = assert_error(c.get(&url).send().unwrap(), 404, &["MANIFEST_UNKNOWN"]);
            assert_eq!(code, "MANIFEST_UNKNOWN", "GET {url}");
            let r = c.head(&url).send().unwrap();
            assert_eq!(r.status(), 404, "HEAD {url}");
        }
    }
    let r = c
        .get(format!("{}/v2/Lib/A/manifests/-dash", s.url))
        .send()
        .unwrap();
    assert_error(r, 400, &["NAME_INVALID"]);
}

fn tags_of(c: &Client, base: &str, repo: &str) -> serde_json::Value {
    c.get(format!("{base}/v2/{repo}/tags/list"))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// `DELETE /acr/v1/<name>` removes the repository whole, in one transaction: every
/// manifest (indexes, children and referrers included), every tag, its blob links and
/// its catalog entry; other repositories keep what they share with it.
#[test]
fn repository_delete_removes_everything_of_the_repository() {
    let s = Server::start(&[]);
    let c = client();
    let first = push_image(&c, &s.url, "lib/a", "v1", "first");
    let second = push_image(&c, &s.url, "lib/a", "keep", "second");
    assert_eq!(
        put_manifest(&c, &s.url, "lib/a", "v1-alias", OCI_MANIFEST, &first).status(),
        201
    );
    let index = index_manifest(OCI_INDEX, &[(OCI_MANIFEST, &second)]);
    assert_eq!(
        put_manifest(&c, &s.url, "lib/a", "multi", OCI_INDEX, &index).status(),
        201
    );
    push_blob(&c, &s.url, "lib/a", b"{}");
    push_blob(&c, &s.url, "lib/a", b"signature");
    let referrer = artifact_manifest(Some("application/x.sig"), OCI_CONFIG, b"signature", &first);
    let r = put_manifest(
        &c,
        &s.url,
        "lib/a",
        &digest(&referrer),
        OCI_MANIFEST,
        &referrer,
    );
    assert_eq!(r.status(), 201);
    // Another repository with the same image: untouched by the delete.
    let other = push_image(&c, &s.url, "lib/b", "v1", "first");
    assert_eq!(other, first);

    let r = c.delete(format!("{}/acr/v1/lib/a", s.url)).send().unwrap();
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().unwrap();
    let mut manifests = vec![
        digest(&first),
        digest(&second),
        digest(&index),
        digest(&referrer),
    ];
    manifests.sort();
    assert_eq!(
        body,
        serde_json::json!({
            "manifestsDeleted": manifests,
            "tagsDeleted": ["keep", "multi", "v1", "v1-alias"],
        })
    );

    let catalog: serde_json::Value = c
        .get(format!("{}/v2/_catalog", s.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!(["lib/b"]));
    let r = c
        .get(format!("{}/v2/lib/a/tags/list", s.url))
        .send()
        .unwrap();
    assert_error(r, 404, &["NAME_UNKNOWN"]);
    for m in &manifests {
        let r = c
            .get(format!("{}/v2/lib/a/manifests/{m}", s.url))
            .send()
            .unwrap();
        assert_error(r, 404, &["MANIFEST_UNKNOWN"]);
    }
    let r = c
        .get(format!("{}/v2/lib/a/referrers/{}", s.url, digest(&first)))
        .send()
        .unwrap();
    let referrers: serde_json::Value = r.json().unwrap();
    assert_eq!(referrers["manifests"], serde_json::json!([]));
    // The blob links went too: a blob of the repository is unknown there.
    let r = c
        .get(format!("{}/v2/lib/a/blobs/{}", s.url, digest(b"signature")))
        .send()
        .unwrap();
    assert_error(r, 404, &["BLOB_UNKNOWN"]);
    assert_served(&c, &s.url, "lib/b", "v1", OCI_MANIFEST, &first);
    assert_eq!(
        tags_of(&c, &s.url, "lib/b")["tags"],
        serde_json::json!(["v1"])
    );

    // Gone: a second delete is NAME_UNKNOWN; a bad name is NAME_INVALID.
    let r = c.delete(format!("{}/acr/v1/lib/a", s.url)).send().unwrap();
    assert_error(r, 404, &["NAME_UNKNOWN"]);
    let r = c.delete(format!("{}/acr/v1/Lib/A", s.url)).send().unwrap();
    assert_error(r, 400, &["NAME_INVALID"]);
    let r = c.get(format!("{}/acr/v1/lib/b", s.url)).send().unwrap();
    assert_error(r, 405, &["UNSUPPORTED"]);

    // A push recreates it from nothing.
    push_image(&c, &s.url, "lib/a", "v2", "again");
    assert_eq!(
        tags_of(&c, &s.url, "lib/a")["tags"],
        serde_json::json!(["v2"])
    );
}

#[test]
fn retagging_moves_the_tag() {
    let s = Server::start(&[]);
    let c = client();
    let first = push_image(&c, &s.url, "lib/a", "latest", "first");
    let second = push_image(&c, &s.url, "lib/a", "latest", "second");
    assert_served(&c, &s.url, "lib/a", "latest", OCI_MANIFEST, &second);
    // The old manifest stays reachable by digest.
    assert_served(&c, &s.url, "lib/a", &digest(&first), OCI_MANIFEST, &first);
}

#[test]
fn delete_by_tag_removes_only_the_tag() {
    let s = Server::start(&[]);
    let c = client();
    let body = push_image(&c, &s.url, "lib/a", "v1", "a");
    assert_eq!(
        put_manifest(&c, &s.url, "lib/a", "v1-alias", OCI_MANIFEST, &body).status(),
        201
    );
    let r = c
        .delete(format!("{}/v2/lib/a/manifests/v1", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .get(format!("{}/v2/lib/a/manifests/v1", s.url))
        .send()
        .unwrap();
    assert_error(r, 404, &["MANIFEST_UNKNOWN"]);
    assert_served(&c, &s.url, "lib/a", &digest(&body), OCI_MANIFEST, &body);
    assert_served(&c, &s.url, "lib/a", "v1-alias", OCI_MANIFEST, &body);
    let r = c
        .delete(format!("{}/v2/lib/a/manifests/v1", s.url))
        .send()
        .unwrap();
    assert_error(r, 404, &["MANIFEST_UNKNOWN"]);
}

#[test]
fn delete_by_digest_removes_manifest_and_its_tags() {
    let s = Server::start(&[]);
    let c = client();
    let body = push_image(&c, &s.url, "lib/a", "v1", "a");
    let keep = push_image(&c, &s.url, "lib/a", "keep", "b");
    assert_eq!(
        put_manifest(&c, &s.url, "lib/a", "v1-alias", OCI_MANIFEST, &body).status(),
        201
    );
    let d = digest(&body);
    let r = c
        .delete(format!("{}/v2/lib/a/manifests/{d}", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    for reference in [d.as_str(), "v1", "v1-alias"] {
        let r = c
            .get(format!("{}/v2/lib/a/manifests/{reference}", s.url))
            .send()
            .unwrap();
        assert_error(r, 404, &["MANIFEST_UNKNOWN"]);
    }
    let tags: serde_json::Value = c
        .get(format!("{}/v2/lib/a/tags/list", s.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["keep"]));
    assert_served(&c, &s.url, "lib/a", "keep", OCI_MANIFEST, &keep);
    let r = c
        .delete(format!("{}/v2/lib/a/manifests/{d}", s.url))
        .send()
        .unwrap();
    assert_error(r, 404, &["MANIFEST_UNKNOWN"]);
}

#[test]
fn content_type_parameters_are_ignored() {
    let s = Server::start(&[]);
    let c = client();
    push_blob(&c, &s.url, "lib/a", b"{}");
    push_blob(&c, &s.url, "lib/a", b"l");
    let body = image_manifest(OCI_MANIFEST, b"{}", &[b"l"]);
    // Spec: the registry SHOULD ignore parameters on the request Content-Type and SHOULD NOT
    // include any on the response.
    let with_params = format!("{OCI_MANIFEST}; charset=utf-8");
    assert_eq!(
        put_manifest(&c, &s.url, "lib/a", "v1", &with_params, &body).status(),
        201
    );
    assert_served(&c, &s.url, "lib/a", "v1", OCI_MANIFEST, &body);
}

#[test]
fn stored_bytes_are_served_whatever_the_accept_header() {
    let s = Server::start(&[]);
    let c = client();
    let body = push_image(&c, &s.url, "lib/a", "v1", "a");
    let r = c
        .get(format!("{}/v2/lib/a/manifests/v1", s.url))
        .header("accept", DOCKER_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(r.headers(), "content-type").as_deref(),
        Some(OCI_MANIFEST)
    );
    assert_eq!(r.bytes().unwrap().as_ref(), body.as_slice());
}

#[test]
fn index_child_must_be_in_the_same_repository() {
    let s = Server::start(&[]);
    let c = client();
    let child = push_image(&c, &s.url, "lib/a", "v1", "a");
    let index = index_manifest(OCI_INDEX, &[(OCI_MANIFEST, &child)]);
    let r = put_manifest(&c, &s.url, "lib/b", "multi", OCI_INDEX, &index);
    assert_error(r, 400, &["MANIFEST_UNKNOWN", "MANIFEST_BLOB_UNKNOWN"]);
    assert_eq!(
        put_manifest(&c, &s.url, "lib/a", "multi", OCI_INDEX, &index).status(),
        201
    );
}
