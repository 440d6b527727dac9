//! Differential test: one scripted request sequence (pull, push, discovery, management and
//! their error cases) runs against our backend and against Debian's `docker-registry` 2.8.2
//! (distribution). Status codes and the headers clients depend on must match, except for the
//! explicit list of differences below where distribution-spec v1.1 demands otherwise; those
//! differences are asserted too, so a change on either side is noticed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use common::oci::*;
use common::registry::DockerRegistry;
use common::{Server, client, digest};
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;

/// What a client can observe of one response, reduced to what must agree.
#[derive(Debug, Clone, PartialEq)]
struct Obs {
    status: u16,
    /// `errors[0].code` of an error body.
    code: Option<String>,
    /// `Docker-Content-Digest` on success.
    digest: Option<String>,
    /// `Content-Length` of a 200/206 (HEAD included).
    content_length: Option<String>,
    /// `Content-Type`, recorded for manifest GET/HEAD only.
    content_type: Option<String>,
    /// Presence of `Location` on success.
    location: bool,
    /// `Range` of upload responses.
    range: Option<String>,
    /// `Content-Range` of blob range responses.
    content_range: Option<String>,
    /// Presence of `Docker-Upload-UUID` on success.
    upload_uuid: bool,
    /// `Link` reduced to its sorted query parameters.
    link: Option<String>,
    /// JSON body of list endpoints.
    body: Option<Value>,
    /// `OCI-Subject` on success.
    oci_subject: Option<String>,
    /// `OCI-Tag` values on success.
    oci_tag: Vec<String>,
}

/// Records the observations of one registry, in script order.
struct Run<'a> {
    base: &'a str,
    obs: Vec<(&'static str, Obs)>,
}

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Plain,
    Manifest,
    List,
}

impl Run<'_> {
    /// Sends `req`, records it as `step`, returns the `Location` made absolute (or an upload
    /// URL no registry knows, so the script goes on when a step failed).
    fn record(&mut self, step: &'static str, kind: Kind, req: RequestBuilder) -> String {
        let r = req.send().unwrap();
        let h = r.headers().clone();
        let status = r.status().as_u16();
        let ok = (200..300).contains(&status);
        let text = r.text().unwrap_or_default();
        let json: Option<Value> = serde_json::from_str(&text).ok();
        let code = json
            .as_ref()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned));
        let location = header(&h, "location");
        let obs = Obs {
            status,
            code,
            digest: header(&h, "docker-content-digest").filter(|_| ok),
            // List bodies may differ in whitespace; their JSON is compared instead.
            content_length: header(&h, "content-length")
                .filter(|_| (status == 200 || status == 206) && kind != Kind::List),
            content_type: header(&h, "content-type").filter(|_| ok && kind == Kind::Manifest),
            location: ok && location.is_some(),
            range: header(&h, "range").filter(|_| status == 202 || status == 204),
            content_range: header(&h, "content-range").filter(|_| status == 206),
            upload_uuid: ok && header(&h, "docker-upload-uuid").is_some(),
            link: header(&h, "link").map(|l| normalize_link(&l)),
            body: json.filter(|_| kind == Kind::List && ok),
            oci_subject: header(&h, "oci-subject").filter(|_| ok),
            oci_tag: h
                .get_all("oci-tag")
                .iter()
                .filter(|_| ok)
                .map(|v| v.to_str().unwrap_or_default().to_owned())
                .collect(),
        };
        self.obs.push((step, obs));
        location.map_or_else(
            || format!("{}/v2/diff/a/blobs/uploads/no-location", self.base),
            |l| absolute(self.base, &l),
        )
    }
}

/// `</v2/x/tags/list?n=2&last=b>; rel="next"` → `last=b&n=2`: parameters sorted, since their
/// order is not significant, and `%2F` decoded (2.8.2 escapes the `/` of repository names).
fn normalize_link(link: &str) -> String {
    let target = link.split(['<', '>']).nth(1).unwrap_or(link);
    let mut params: Vec<&str> = target
        .split_once('?')
        .map(|(_, q)| q.split('&').collect())
        .unwrap_or_default();
    params.sort();
    params.join("&").replace("%2F", "/").replace("%2f", "/")
}

/// The scripted sequence. Every request is recorded; upload requests go to the `Location` the
/// registry itself returned, so both registries are driven the same way.
fn script(base: &str) -> Vec<(&'static str, Obs)> {
    let mut run = Run {
        base,
        obs: Vec::new(),
    };
    let c = client();
    let data: Vec<u8> = (0..20u8).map(|i| b'a' + i).collect();
    let d = digest(&data);
    let missing = digest(b"never pushed");
    let url = |p: &str| format!("{base}{p}");

    run.record("base", Kind::Plain, c.get(url("/v2/")));
    run.record(
        "blob unknown GET",
        Kind::Plain,
        c.get(url(&format!("/v2/diff/a/blobs/{missing}"))),
    );
    run.record(
        "blob unknown HEAD",
        Kind::Plain,
        c.head(url(&format!("/v2/diff/a/blobs/{missing}"))),
    );
    run.record(
        "blob bad digest GET",
        Kind::Plain,
        c.get(url("/v2/diff/a/blobs/sha256:abc")),
    );
    run.record(
        "invalid name GET blob",
        Kind::Plain,
        c.get(url(&format!("/v2/Diff/A/blobs/{missing}"))),
    );
    run.record(
        "invalid name POST upload",
        Kind::Plain,
        c.post(url("/v2/Diff/A/blobs/uploads/")),
    );

    // Chunked upload with an out-of-order chunk and a status query in between.
    let loc = run.record(
        "upload POST",
        Kind::Plain,
        c.post(url("/v2/diff/a/blobs/uploads/")),
    );
    let loc = run.record(
        "upload PATCH 0-9",
        Kind::Plain,
        chunk(&c, &loc, &data[..10], 0),
    );
    run.record("upload GET status", Kind::Plain, c.get(&loc));
    let loc = run.record(
        "upload PATCH 10-19",
        Kind::Plain,
        chunk(&c, &loc, &data[10..], 10),
    );
    run.record(
        "upload PUT",
        Kind::Plain,
        c.put(with_query(&loc, "digest", &d)),
    );
    run.record("upload GET status after PUT", Kind::Plain, c.get(&loc));

    // Out-of-order chunk on a separate session (2.8.2 accepts it; see the differences).
    let loc = run.record(
        "upload 2 POST",
        Kind::Plain,
        c.post(url("/v2/diff/a/blobs/uploads/")),
    );
    let loc = run.record(
        "upload 2 PATCH 0-4",
        Kind::Plain,
        chunk(&c, &loc, &data[..5], 0),
    );
    run.record(
        "upload 2 PATCH out of order",
        Kind::Plain,
        chunk(&c, &loc, &data[15..], 15),
    );
    run.record("upload 2 GET status", Kind::Plain, c.get(&loc));

    run.record(
        "blob HEAD",
        Kind::Plain,
        c.head(url(&format!("/v2/diff/a/blobs/{d}"))),
    );
    run.record(
        "blob GET",
        Kind::Plain,
        c.get(url(&format!("/v2/diff/a/blobs/{d}"))),
    );
    run.record(
        "blob GET range",
        Kind::Plain,
        c.get(url(&format!("/v2/diff/a/blobs/{d}")))
            .header("range", "bytes=3-7"),
    );
    run.record(
        "blob GET unsatisfiable range",
        Kind::Plain,
        c.get(url(&format!("/v2/diff/a/blobs/{d}")))
            .header("range", "bytes=50-60"),
    );
    run.record(
        "blob in other repo GET",
        Kind::Plain,
        c.get(url(&format!("/v2/diff/b/blobs/{d}"))),
    );

    // Monolithic uploads, good and bad digests.
    let mono = b"monolithic".to_vec();
    run.record(
        "monolithic POST",
        Kind::Plain,
        c.post(url(&format!(
            "/v2/diff/a/blobs/uploads/?digest={}",
            digest(&mono)
        )))
        .header("content-type", "application/octet-stream")
        .body(mono.clone()),
    );
    run.record(
        "monolithic POST wrong digest",
        Kind::Plain,
        c.post(url(&format!("/v2/diff/a/blobs/uploads/?digest={missing}")))
            .header("content-type", "application/octet-stream")
            .body(b"other".to_vec()),
    );
    run.record(
        "wrong digest not visible",
        Kind::Plain,
        c.head(url(&format!("/v2/diff/a/blobs/{missing}"))),
    );
    let loc = run.record(
        "upload 3 POST",
        Kind::Plain,
        c.post(url("/v2/diff/a/blobs/uploads/")),
    );
    run.record(
        "upload 3 PUT wrong digest",
        Kind::Plain,
        c.put(with_query(&loc, "digest", &missing))
            .body(b"other".to_vec()),
    );

    // Cross-repository mount, and cancelling an upload.
    run.record(
        "mount",
        Kind::Plain,
        c.post(url(&format!(
            "/v2/diff/b/blobs/uploads/?mount={d}&from=diff/a"
        ))),
    );
    run.record(
        "mounted blob HEAD",
        Kind::Plain,
        c.head(url(&format!("/v2/diff/b/blobs/{d}"))),
    );
    let loc = run.record(
        "mount missing",
        Kind::Plain,
        c.post(url(&format!(
            "/v2/diff/b/blobs/uploads/?mount={missing}&from=diff/a"
        ))),
    );
    run.record("upload DELETE", Kind::Plain, c.delete(&loc));
    run.record("upload GET after DELETE", Kind::Plain, c.get(&loc));

    // Manifests.
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}".to_vec();
    let upload = start_upload(&c, base, "diff/a");
    run.record(
        "config blob",
        Kind::Plain,
        c.put(with_query(&upload, "digest", &digest(&config)))
            .body(config.clone()),
    );
    let oci = image_manifest(OCI_MANIFEST, &config, &[&data]);
    let docker = image_manifest(DOCKER_MANIFEST, &config, &[&data]);
    let broken = image_manifest(OCI_MANIFEST, &config, &[&data, b"absent layer"]);
    let put = |reference: &str, media_type: &str, body: &[u8]| {
        c.put(url(&format!("/v2/diff/a/manifests/{reference}")))
            .header("content-type", media_type)
            .body(body.to_vec())
    };
    run.record(
        "manifest PUT missing blob",
        Kind::Plain,
        put("broken", OCI_MANIFEST, &broken),
    );
    run.record(
        "manifest PUT oci",
        Kind::Plain,
        put("oci", OCI_MANIFEST, &oci),
    );
    run.record(
        "manifest PUT docker",
        Kind::Plain,
        put("docker", DOCKER_MANIFEST, &docker),
    );
    let mut altered = oci.clone();
    altered.push(b'\n');
    run.record(
        "manifest PUT digest mismatch",
        Kind::Plain,
        put(&digest(&oci), OCI_MANIFEST, &altered),
    );
    run.record(
        "manifest PUT by digest",
        Kind::Plain,
        put(&digest(&docker), DOCKER_MANIFEST, &docker),
    );
    run.record(
        "manifest PUT invalid tag",
        Kind::Plain,
        put(".bad", OCI_MANIFEST, &oci),
    );
    let index = index_manifest(
        OCI_INDEX,
        &[(OCI_MANIFEST, &oci), (DOCKER_MANIFEST, &docker)],
    );
    run.record(
        "manifest PUT index",
        Kind::Plain,
        put("index", OCI_INDEX, &index),
    );
    let list = index_manifest(DOCKER_LIST, &[(DOCKER_MANIFEST, &docker)]);
    run.record(
        "manifest PUT list",
        Kind::Plain,
        put("list", DOCKER_LIST, &list),
    );
    let orphan = index_manifest(OCI_INDEX, &[(OCI_MANIFEST, &broken)]);
    run.record(
        "manifest PUT index missing child",
        Kind::Plain,
        put("orphan", OCI_INDEX, &orphan),
    );
    for (step, reference) in [
        ("manifest GET oci by tag", "oci".to_owned()),
        ("manifest GET oci by digest", digest(&oci)),
        ("manifest GET docker", "docker".to_owned()),
        ("manifest GET index", "index".to_owned()),
        ("manifest GET list", "list".to_owned()),
        ("manifest GET unknown tag", "nope".to_owned()),
        ("manifest GET unknown digest", missing.clone()),
        (
            "manifest GET malformed digest",
            format!("sha256:{}", "0".repeat(40)),
        ),
        ("manifest GET invalid tag", ".bad".to_owned()),
    ] {
        let u = url(&format!("/v2/diff/a/manifests/{reference}"));
        run.record(step, Kind::Manifest, c.get(&u).header("accept", ACCEPT));
    }
    run.record(
        "manifest HEAD docker",
        Kind::Manifest,
        c.head(url("/v2/diff/a/manifests/docker"))
            .header("accept", ACCEPT),
    );
    run.record(
        "manifest GET unknown repo",
        Kind::Manifest,
        c.get(url("/v2/diff/none/manifests/oci"))
            .header("accept", ACCEPT),
    );

    // v1.1 additions: subject/referrers and `?tag=` on a digest PUT.
    let upload = start_upload(&c, base, "diff/a");
    run.record(
        "empty config blob",
        Kind::Plain,
        c.put(with_query(&upload, "digest", &digest(b"{}")))
            .body(b"{}".to_vec()),
    );
    let artifact = artifact_manifest(Some("application/vnd.example.sig"), OCI_EMPTY, &data, &oci);
    run.record(
        "manifest PUT artifact with subject",
        Kind::Plain,
        put(&digest(&artifact), OCI_MANIFEST, &artifact),
    );
    run.record(
        "referrers",
        Kind::Plain,
        c.get(url(&format!("/v2/diff/a/referrers/{}", digest(&oci)))),
    );
    run.record(
        "manifest PUT by digest with ?tag=",
        Kind::Plain,
        put(
            &format!("{}?tag=via-query", digest(&oci)),
            OCI_MANIFEST,
            &oci,
        ),
    );
    run.record(
        "manifest GET tag set via ?tag=",
        Kind::Manifest,
        c.get(url("/v2/diff/a/manifests/via-query"))
            .header("accept", ACCEPT),
    );

    // Discovery.
    for tag in ["t1", "t2", "t3"] {
        run.record("tag PUT", Kind::Plain, put(tag, OCI_MANIFEST, &oci));
    }
    run.record("tags list", Kind::List, c.get(url("/v2/diff/a/tags/list")));
    run.record(
        "tags list n=2",
        Kind::List,
        c.get(url("/v2/diff/a/tags/list?n=2")),
    );
    run.record(
        "tags list n=2 last=list",
        Kind::List,
        c.get(url("/v2/diff/a/tags/list?n=2&last=list")),
    );
    run.record(
        "tags list last=t2",
        Kind::List,
        c.get(url("/v2/diff/a/tags/list?last=t2")),
    );
    run.record(
        "tags list n=0",
        Kind::List,
        c.get(url("/v2/diff/a/tags/list?n=0")),
    );
    run.record(
        "tags list unknown repo",
        Kind::List,
        c.get(url("/v2/diff/none/tags/list")),
    );
    run.record(
        "invalid name tags list",
        Kind::List,
        c.get(url("/v2/Diff/tags/list")),
    );
    let upload = start_upload(&c, base, "diff/b");
    run.record(
        "diff/b config blob",
        Kind::Plain,
        c.put(with_query(&upload, "digest", &digest(b"{}")))
            .body(b"{}".to_vec()),
    );
    run.record(
        "manifest PUT in diff/b",
        Kind::Plain,
        c.put(url("/v2/diff/b/manifests/latest"))
            .header("content-type", OCI_MANIFEST)
            .body(image_manifest(OCI_MANIFEST, b"{}", &[])),
    );
    run.record("catalog", Kind::List, c.get(url("/v2/_catalog")));
    run.record("catalog n=1", Kind::List, c.get(url("/v2/_catalog?n=1")));
    run.record(
        "catalog n=1 last=diff/a",
        Kind::List,
        c.get(url("/v2/_catalog?n=1&last=diff/a")),
    );

    run.record("catalog n=0", Kind::List, c.get(url("/v2/_catalog?n=0")));
    run.record(
        "catalog last=diff/b",
        Kind::List,
        c.get(url("/v2/_catalog?last=diff/b")),
    );
    run.record(
        "manifest HEAD unknown",
        Kind::Manifest,
        c.head(url(&format!("/v2/diff/a/manifests/{missing}")))
            .header("accept", ACCEPT),
    );

    // Content management.
    run.record(
        "manifest DELETE by tag",
        Kind::Plain,
        c.delete(url("/v2/diff/a/manifests/t1")),
    );
    run.record(
        "manifest GET deleted tag",
        Kind::Manifest,
        c.get(url("/v2/diff/a/manifests/t1"))
            .header("accept", ACCEPT),
    );
    run.record(
        "manifest DELETE by digest",
        Kind::Plain,
        c.delete(url(&format!("/v2/diff/a/manifests/{}", digest(&docker)))),
    );
    run.record(
        "manifest GET deleted digest",
        Kind::Manifest,
        c.get(url(&format!("/v2/diff/a/manifests/{}", digest(&docker))))
            .header("accept", ACCEPT),
    );
    run.record(
        "manifest GET tag of deleted digest",
        Kind::Manifest,
        c.get(url("/v2/diff/a/manifests/docker"))
            .header("accept", ACCEPT),
    );
    run.record(
        "manifest DELETE unknown digest",
        Kind::Plain,
        c.delete(url(&format!("/v2/diff/a/manifests/{missing}"))),
    );
    run.record(
        "blob DELETE",
        Kind::Plain,
        c.delete(url(&format!("/v2/diff/b/blobs/{d}"))),
    );
    run.record(
        "blob GET after DELETE",
        Kind::Plain,
        c.get(url(&format!("/v2/diff/b/blobs/{d}"))),
    );
    run.record(
        "blob DELETE unknown",
        Kind::Plain,
        c.delete(url(&format!("/v2/diff/b/blobs/{missing}"))),
    );
    run.obs
}

fn chunk(c: &Client, loc: &str, bytes: &[u8], start: usize) -> RequestBuilder {
    c.patch(loc)
        .header("content-type", "application/octet-stream")
        .header(
            "content-range",
            format!("{start}-{}", start + bytes.len() - 1),
        )
        .body(bytes.to_vec())
}

/// A predicate on one side's observation of a step listed as an expected difference.
type Check = fn(&Obs) -> bool;

fn is(o: &Obs, status: u16, code: Option<&str>) -> bool {
    o.status == status && o.code.as_deref() == code
}

fn tags(o: &Obs) -> Vec<&str> {
    o.body
        .as_ref()
        .and_then(|b| b["tags"].as_array())
        .map_or_else(Vec::new, |t| t.iter().filter_map(Value::as_str).collect())
}

/// Tags of `diff/a` when the list step runs; 2.8.2 lacks `via-query` (it ignores `?tag=`).
const ALL_TAGS: [&str; 8] = [
    "docker",
    "index",
    "list",
    "oci",
    "t1",
    "t2",
    "t3",
    "via-query",
];

/// 2.8.2's unpaginated, unsorted answer to every tags-list variant.
fn unpaginated(o: &Obs) -> bool {
    let mut t = tags(o);
    t.sort_unstable();
    o.status == 200 && o.link.is_none() && t == ALL_TAGS[..7]
}

/// Steps where distribution-spec v1.1 (which our backend follows) and distribution 2.8.2
/// disagree: (step, check of ours, check of 2.8.2, why). Both sides are asserted.
const EXPECTED_DIFFERENCES: &[(&str, Check, Check, &str)] = &[
    (
        "blob GET unsatisfiable range",
        |o| is(o, 416, Some("RANGE_INVALID")),
        |o| is(o, 416, None),
        "every error of ours is OCI error JSON; 2.8.2's Go `http.ServeContent` answers plain text",
    ),
    (
        "upload DELETE",
        |o| o.status == 204,
        |o| o.status == 204 && o.upload_uuid,
        "2.8.2 repeats `Docker-Upload-UUID` on a cancelled session; no client reads it there",
    ),
    (
        "invalid name GET blob",
        |o| is(o, 400, Some("NAME_INVALID")),
        |o| is(o, 404, None),
        "2.8.2's router does not match names outside the grammar and answers a plain-text 404; \
         the spec's NAME_INVALID is a 400 error",
    ),
    (
        "invalid name POST upload",
        |o| is(o, 400, Some("NAME_INVALID")),
        |o| is(o, 404, None),
        "as above",
    ),
    (
        "invalid name tags list",
        |o| is(o, 400, Some("NAME_INVALID")),
        |o| is(o, 404, None),
        "as above",
    ),
    (
        "manifest PUT invalid tag",
        |o| is(o, 400, Some("TAG_INVALID")),
        |o| is(o, 404, None),
        "2.8.2's router does not match tags outside the grammar; the spec has TAG_INVALID",
    ),
    (
        "manifest GET malformed digest",
        |o| is(o, 404, Some("MANIFEST_UNKNOWN")),
        |o| is(o, 500, Some("UNKNOWN")),
        "2.8.2 takes a digest it cannot parse for a tag, which its storage cannot look up (500); \
         we answer what cannot exist as any missing manifest",
    ),
    (
        "manifest GET invalid tag",
        |o| is(o, 404, Some("MANIFEST_UNKNOWN")),
        |o| is(o, 404, None),
        "2.8.2's router does not match tags outside the grammar (a plain-text 404); we answer \
         what cannot exist as any missing manifest",
    ),
    (
        "upload 2 PATCH out of order",
        |o| {
            o.status == 416
                && matches!(
                    o.code.as_deref(),
                    Some("BLOB_UPLOAD_INVALID" | "RANGE_INVALID")
                )
        },
        |o| o.status == 202 && o.range.as_deref() == Some("0-9"),
        "the spec says an out-of-order chunk MUST get 416; 2.8.2 ignores the Content-Range start \
         and appends the bytes at the wrong offset",
    ),
    (
        "upload 2 GET status",
        |o| o.status == 204 && o.range.as_deref() == Some("0-4"),
        |o| is(o, 404, Some("BLOB_UPLOAD_INVALID")),
        "our session is intact after the refused chunk; 2.8.2's state token no longer matches the \
         data it appended",
    ),
    (
        "monolithic POST",
        |o| o.status == 201 && o.digest.is_some() && o.location,
        |o| o.status == 202 && o.location,
        "single-POST upload is a MAY in the spec and required of our backend; 2.8.2 ignores \
         `?digest=` and opens a session",
    ),
    (
        "monolithic POST wrong digest",
        |o| is(o, 400, Some("DIGEST_INVALID")),
        |o| o.status == 202,
        "as above: 2.8.2 never looks at the body or the digest",
    ),
    (
        "manifest PUT artifact with subject",
        |o| o.status == 201 && o.oci_subject.is_some(),
        |o| o.status == 201 && o.oci_subject.is_none(),
        "v1.1: a registry with the referrers API MUST answer `OCI-Subject`; 2.8.2 predates it",
    ),
    (
        "referrers",
        |o| o.status == 200,
        |o| is(o, 404, None),
        "v1.1 referrers API; 2.8.2 has no such route",
    ),
    (
        "manifest PUT by digest with ?tag=",
        |o| o.status == 201 && o.oci_tag == ["via-query"],
        |o| o.status == 201 && o.oci_tag.is_empty(),
        "`?tag=` on a digest PUT (spec main) sets tags and echoes `OCI-Tag`; 2.8.2 ignores it",
    ),
    (
        "manifest GET tag set via ?tag=",
        |o| o.status == 200,
        |o| is(o, 404, Some("MANIFEST_UNKNOWN")),
        "consequence of the previous step",
    ),
    (
        "tags list",
        |o| o.status == 200 && tags(o) == ALL_TAGS,
        unpaginated,
        "the spec requires lexical order; 2.8.2 lists in storage order (and lacks `via-query`)",
    ),
    (
        "tags list n=2",
        |o| tags(o) == ["docker", "index"] && o.link.as_deref() == Some("last=index&n=2"),
        unpaginated,
        "2.8.2 ignores `n` and `last` on tags lists (it paginates only the catalog)",
    ),
    (
        "tags list n=2 last=list",
        |o| tags(o) == ["oci", "t1"] && o.link.as_deref() == Some("last=t1&n=2"),
        unpaginated,
        "as above",
    ),
    (
        "tags list last=t2",
        |o| tags(o) == ["t3", "via-query"] && o.link.is_none(),
        unpaginated,
        "as above",
    ),
    (
        "tags list n=0",
        |o| o.status == 200 && tags(o).is_empty() && o.link.is_none(),
        unpaginated,
        "spec: n=0 MUST return an empty list without Link; 2.8.2 ignores `n`",
    ),
    (
        "manifest DELETE by tag",
        |o| o.status == 202,
        |o| is(o, 400, Some("DIGEST_INVALID")),
        "the spec's tag deletion answers 202; 2.8.2 deletes by digest only",
    ),
    (
        "manifest GET deleted tag",
        |o| is(o, 404, Some("MANIFEST_UNKNOWN")),
        |o| o.status == 200,
        "consequence of the previous step",
    ),
];

#[test]
fn differential_against_docker_registry_2_8_2() {
    let reference = DockerRegistry::start();
    let ours = Server::start(&[]);
    let theirs = script(&reference.url);
    let mine = script(&ours.url);
    assert_eq!(mine.len(), theirs.len());
    let mut mismatches = Vec::new();
    for ((step, o), (_, t)) in mine.iter().zip(&theirs) {
        if let Some((_, ours_ok, theirs_ok, why)) =
            EXPECTED_DIFFERENCES.iter().find(|d| d.0 == *step)
        {
            for (side, got, ok) in [("ours", o, ours_ok), ("2.8.2", t, theirs_ok)] {
                if !ok(got) {
                    mismatches.push(format!(
                        "{step} (expected difference: {why}):\n  {side}: {got:?}"
                    ));
                }
            }
        } else if o != t {
            mismatches.push(format!("{step}:\n  ours:  {o:?}\n  2.8.2: {t:?}"));
        }
    }
    // Every listed difference names a step of the script.
    for (step, ..) in EXPECTED_DIFFERENCES {
        assert!(
            mine.iter().any(|(s, _)| s == step),
            "unknown step {step} in EXPECTED_DIFFERENCES"
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
