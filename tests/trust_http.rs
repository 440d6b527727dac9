//! The gateway's Notary API over HTTP with metadata made by the real notary CLI
//! (`tests/fixtures/trust/`, re-signed for each gateway by an independent signer):
//! every validation rule refuses its broken update with notary's error code, the metadata
//! routes (by role, checksum, version; cache headers; 404s; key and changefeed rights), and
//! the signed-only views (by tag, by digest, tag list).
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::content;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use reqwest::StatusCode;
use reqwest::blocking::RequestBuilder;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use common::ADMIN_PASSWORD;
use common::trust::{
    Bearer, Bound, Fixture, TrustGateway, bump_version, canonical, envelope, key_id, meta,
    notary_error,
};
use content::TestImage;

const SIGNER: &str = "signer";
const READER: &str = "reader";

/// A gateway with a signer (`trust/write` and the rest) and a reader (`content/read`,
/// `metadata/read`) on the fixture's repository, and the fixture bound to its keys.
struct Setup {
    gateway: TrustGateway,
    fixture: Fixture,
    signer_password: String,
    reader_password: String,
    /// The signer's bearer token for the fixture's GUN (`push,pull`).
    push: Bearer,
    /// The reader's (`pull` only).
    pull: Bearer,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let gateway = TrustGateway::start(dir.path(), &[]);
        let fixture = Fixture::load();
        // Also covers `fixtures/other`, a GUN the fixture's root does not name.
        let scope = "fixtures/*";
        assert_eq!(repository_of(&fixture.gun), "fixtures/app");
        let signer_password = gateway.token(
            SIGNER,
            scope,
            &[
                "content/read",
                "content/write",
                "content/delete",
                "metadata/read",
                "trust/write",
            ],
        );
        let reader_password = gateway.token(READER, scope, &["content/read", "metadata/read"]);
        let push = gateway.bearer((SIGNER, &signer_password), &fixture.gun, "push,pull");
        assert_eq!(sorted(&push.granted), ["pull", "push"], "signer's grant");
        let pull = gateway.bearer((READER, &reader_password), &fixture.gun, "push,pull");
        assert_eq!(pull.granted, ["pull"], "reader's grant");
        Setup {
            gateway,
            fixture,
            signer_password,
            reader_password,
            push,
            pull,
            _dir: dir,
        }
    }

    /// The fixture with root listing this gateway's timestamp key for `gun`.
    fn bind(&self, gun: &str, bearer: &Bearer) -> Bound {
        let resp = self.gateway.get(gun, "tuf/timestamp.key", Some(bearer));
        assert_eq!(resp.status(), StatusCode::OK, "GET {gun} timestamp.key");
        let key: Value = resp.json().unwrap();
        self.fixture.bind(&key)
    }

    /// POSTs `parts` to the fixture's GUN as the signer; asserts 200.
    fn publish(&self, parts: &[(&str, &[u8])]) {
        let resp = self
            .gateway
            .post_update(&self.fixture.gun, &self.push, parts);
        let status = resp.status();
        assert_eq!(status, StatusCode::OK, "publish: {}", resp.text().unwrap());
    }

    /// POSTs `parts` to the fixture's GUN as the signer; returns status, code, detail name.
    fn refused(&self, parts: &[(&str, &[u8])]) -> (StatusCode, String, String) {
        notary_error(
            self.gateway
                .post_update(&self.fixture.gun, &self.push, parts),
        )
    }

    fn reader(&self) -> impl Fn(RequestBuilder) -> RequestBuilder + '_ {
        move |r: RequestBuilder| r.basic_auth(READER, Some(&self.reader_password))
    }

    fn signer(&self) -> impl Fn(RequestBuilder) -> RequestBuilder + '_ {
        move |r: RequestBuilder| r.basic_auth(SIGNER, Some(&self.signer_password))
    }
}

/// `fixtures/app` of `registry.test:5443/fixtures/app`.
fn repository_of(gun: &str) -> &str {
    gun.split_once('/').unwrap().1
}

fn sorted(items: &[String]) -> Vec<&str> {
    let mut items: Vec<&str> = items.iter().map(String::as_str).collect();
    items.sort_unstable();
    items
}

fn invalid_update(name: &str) -> (StatusCode, String, String) {
    (
        StatusCode::BAD_REQUEST,
        "INVALID_UPDATE".to_owned(),
        name.to_owned(),
    )
}

fn plain(code: &str) -> (StatusCode, String, String) {
    (StatusCode::BAD_REQUEST, code.to_owned(), String::new())
}

/// Replaces the first `from` in `bytes` (once) by `to`, same length.
fn tamper(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} not in the file"));
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to.as_bytes());
    out
}

#[test]
fn fixture_signatures_verify_with_the_test_canonicaliser() {
    let fixture = Fixture::load();
    let root = Fixture::signed(&fixture.root);
    for (id, key) in root["keys"].as_object().unwrap() {
        assert_eq!(&key_id(key), id, "key id of {key}");
    }
    for (role, bytes) in [
        ("targets", &fixture.targets),
        ("snapshot", &fixture.snapshot),
    ] {
        let file: Value = serde_json::from_slice(bytes).unwrap();
        let id = root["roles"][role]["keyids"][0].as_str().unwrap();
        let public = B64
            .decode(root["keys"][id]["keyval"]["public"].as_str().unwrap())
            .unwrap();
        let key = VerifyingKey::from_public_key_der(&public).unwrap();
        let signature = &file["signatures"][0];
        assert_eq!(
            signature["keyid"], id,
            "{role} signed by its root-listed key"
        );
        let raw = B64.decode(signature["sig"].as_str().unwrap()).unwrap();
        let signature = Signature::from_slice(&raw).unwrap();
        key.verify(&canonical(&file["signed"]), &signature)
            .unwrap_or_else(|e| panic!("{role}: {e}"));
    }
    // The timestamp the gateway made at capture covers the snapshot the CLI sent.
    let timestamp = Fixture::signed(&fixture.timestamp);
    assert_eq!(
        timestamp["meta"]["snapshot"]["hashes"]["sha256"],
        meta(&fixture.snapshot)["hashes"]["sha256"]
    );
}

#[test]
fn every_validation_rule_refuses_its_broken_update() {
    let s = Setup::new();
    let f = &s.fixture;
    let good = s.bind(&f.gun, &s.push);

    // Envelope errors.
    let resp = s
        .gateway
        .http
        .post(s.gateway.trust_url(&f.gun, "tuf/"))
        .bearer_auth(&s.push.jwt)
        .header("content-type", "application/json")
        .body(good.root.clone())
        .send()
        .unwrap();
    assert_eq!(
        notary_error(resp),
        plain("MALFORMED_UPLOAD"),
        "not multipart"
    );
    assert_eq!(
        s.refused(&[("not a role", &good.root)]),
        plain("INVALID_ROLE"),
        "bad role name"
    );
    assert_eq!(
        s.refused(&[("root", b"{\"signed\": nope"), ("targets", &good.targets)]),
        plain("MALFORMED_JSON"),
        "bad JSON"
    );

    // One byte of root's signed part changed (its expiry year).
    let root = tamper(&good.root, "\"expires\":\"20", "\"expires\":\"21");
    let snapshot = f.snapshot_for(&root, &good.targets, 0);
    assert_eq!(
        s.refused(&[
            ("root", &root),
            ("targets", &good.targets),
            ("snapshot", &snapshot)
        ]),
        invalid_update("ErrBadRoot"),
        "tampered root"
    );
    // One byte of targets' signed part changed.
    let targets = tamper(&good.targets, "\"expires\":\"20", "\"expires\":\"21");
    let snapshot = f.snapshot_for(&good.root, &targets, 0);
    assert_eq!(
        s.refused(&[
            ("root", &good.root),
            ("targets", &targets),
            ("snapshot", &snapshot)
        ]),
        invalid_update("ErrBadTargets"),
        "tampered targets"
    );

    // A DER-encoded ECDSA signature (valid, but not notary's raw r||s).
    let root_signed = Fixture::signed(&good.root);
    let root = envelope(&root_signed, vec![f.root_key.sign_der(&root_signed)]);
    let snapshot = f.snapshot_for(&root, &good.targets, 0);
    assert_eq!(
        s.refused(&[
            ("root", &root),
            ("targets", &good.targets),
            ("snapshot", &snapshot)
        ]),
        invalid_update("ErrBadRoot"),
        "DER signature"
    );

    // A correct signature under the key id of another key root lists (the targets key).
    let mut signature = f.root_key.sign(&root_signed);
    signature["keyid"] = json!(f.targets_key.id);
    let root = envelope(&root_signed, vec![signature]);
    let snapshot = f.snapshot_for(&root, &good.targets, 0);
    assert_eq!(
        s.refused(&[
            ("root", &root),
            ("targets", &good.targets),
            ("snapshot", &snapshot)
        ]),
        invalid_update("ErrBadRoot"),
        "wrong key id"
    );

    // Expired targets, correctly signed.
    let targets_signed = Fixture::signed(&good.targets);
    let mut expired = targets_signed.clone();
    expired["expires"] = json!("2001-01-01T00:00:00Z");
    let targets = f.targets_key.file(&expired);
    let snapshot = f.snapshot_for(&good.root, &targets, 0);
    assert_eq!(
        s.refused(&[
            ("root", &good.root),
            ("targets", &targets),
            ("snapshot", &snapshot)
        ]),
        invalid_update("ErrBadTargets"),
        "expired targets"
    );

    // The root certificate's CN is the fixture's GUN, not this one.
    let other = s.gateway.gun("fixtures/other");
    let other_push = s
        .gateway
        .bearer((SIGNER, &s.signer_password), &other, "push,pull");
    let bound = s.bind(&other, &other_push);
    let (status, code, name) =
        notary_error(s.gateway.post_update(&other, &other_push, &bound.parts()));
    assert_eq!(
        (status, code, name),
        invalid_update("ErrBadRoot"),
        "root of {} posted to {other}",
        f.gun
    );

    // Nothing of the above was stored.
    let resp = s.gateway.get(&f.gun, "tuf/root.json", Some(&s.pull));
    assert_eq!(
        notary_error(resp),
        (
            StatusCode::NOT_FOUND,
            "METADATA_NOT_FOUND".to_owned(),
            String::new()
        ),
        "root before the first good publish"
    );

    // The untouched fixture is accepted (so each refusal above was for its own defect).
    s.publish(&good.parts());

    // Same versions again.
    assert_eq!(
        s.refused(&good.parts()),
        plain("VERSION"),
        "republish of the same versions"
    );
    // Targets at the stored version with a newer, consistent snapshot.
    let snapshot = f.snapshot_for(&good.root, &good.targets, 1);
    assert_eq!(
        s.refused(&[("targets", &good.targets), ("snapshot", &snapshot)]),
        plain("VERSION"),
        "targets at the stored version"
    );

    // Targets below the stored version, correctly signed, with a consistent snapshot.
    let mut lower = targets_signed.clone();
    let version = lower["version"].as_u64().unwrap();
    assert!(version > 1, "the fixture's targets start above version 1");
    lower["version"] = json!(version - 1);
    let lower = f.targets_key.file(&lower);
    let snapshot = f.snapshot_for(&good.root, &lower, 1);
    assert_eq!(
        s.refused(&[("targets", &lower), ("snapshot", &snapshot)]),
        plain("VERSION"),
        "targets below the stored version"
    );

    // New targets whose snapshot still describes the old targets.
    let mut newer = targets_signed.clone();
    bump_version(&mut newer, 1);
    newer["targets"]["added"] =
        json!({"hashes": {"sha256": B64.encode(Sha256::digest(b"added"))}, "length": 5});
    let newer = f.targets_key.file(&newer);
    let stale = f.snapshot_for(&good.root, &good.targets, 1);
    assert_eq!(
        s.refused(&[("targets", &newer), ("snapshot", &stale)]),
        invalid_update("ErrBadSnapshot"),
        "snapshot hash mismatch"
    );
    // New targets and no snapshot, whose key only the client holds.
    assert_eq!(
        s.refused(&[("targets", &newer)]),
        invalid_update("ErrBadHierarchy"),
        "targets without a snapshot"
    );
    // Both right: accepted, and served verbatim.
    let fresh = f.snapshot_for(&good.root, &newer, 1);
    s.publish(&[("targets", &newer), ("snapshot", &fresh)]);
    let resp = s.gateway.get(&f.gun, "tuf/targets.json", Some(&s.pull));
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().unwrap().as_ref(), newer.as_slice());
}

#[test]
fn metadata_routes_headers_keys_and_changefeed() {
    let s = Setup::new();
    let f = &s.fixture;
    let good = s.bind(&f.gun, &s.push);

    // Reads need credentials (anonymous pull is off); the challenge leads to the token.
    let resp = s.gateway.get(&f.gun, "tuf/root.json", None);
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm="),
        "{:?}",
        resp.headers()
    );

    // Publishing needs push rights.
    let resp = s.gateway.post_update(&f.gun, &s.pull, &good.parts());
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "publish with pull only"
    );
    s.publish(&good.parts());

    let get = |rest: &str| s.gateway.get(&f.gun, rest, Some(&s.pull));
    let header = |resp: &reqwest::blocking::Response, name: &str| -> String {
        resp.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", resp.headers()))
            .to_str()
            .unwrap()
            .to_owned()
    };

    // By role: the current version, cached briefly.
    let resp = get("tuf/root.json");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(header(&resp, "cache-control").contains("max-age=300"));
    assert!(!header(&resp, "last-modified").is_empty());
    assert_eq!(resp.bytes().unwrap().as_ref(), good.root.as_slice());
    // By checksum and by version: immutable, cached long.
    let sha = hex::encode(Sha256::digest(&good.root));
    let version = Fixture::signed(&good.root)["version"].as_u64().unwrap();
    for rest in [
        format!("tuf/root.{sha}.json"),
        format!("tuf/{version}.root.json"),
    ] {
        let resp = get(&rest);
        assert_eq!(resp.status(), StatusCode::OK, "GET {rest}");
        assert!(
            header(&resp, "cache-control").contains("max-age=2592000"),
            "GET {rest}"
        );
        assert_eq!(
            resp.bytes().unwrap().as_ref(),
            good.root.as_slice(),
            "GET {rest}"
        );
    }
    // The server-made timestamp covers the stored snapshot.
    let snapshot = get("tuf/snapshot.json").bytes().unwrap();
    assert_eq!(snapshot.as_ref(), good.snapshot.as_slice());
    let timestamp: Value = get("tuf/timestamp.json").json().unwrap();
    assert_eq!(
        timestamp["signed"]["meta"]["snapshot"]["hashes"]["sha256"],
        meta(&snapshot)["hashes"]["sha256"]
    );
    let root = Fixture::signed(&good.root);
    assert_eq!(
        timestamp["signatures"][0]["keyid"], root["roles"]["timestamp"]["keyids"][0],
        "timestamp signed with the key root lists"
    );

    // What does not exist.
    let not_found = (
        StatusCode::NOT_FOUND,
        "METADATA_NOT_FOUND".to_owned(),
        String::new(),
    );
    for rest in [
        "tuf/targets/releases.json".to_owned(),
        format!("tuf/root.{}.json", "0".repeat(64)),
        format!("tuf/{}.root.json", version + 1),
    ] {
        assert_eq!(notary_error(get(&rest)), not_found, "GET {rest}");
    }

    // The timestamp key is for publishers; the reader's pull-only token gets 401.
    let resp = s.gateway.get(&f.gun, "tuf/timestamp.key", Some(&s.pull));
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "timestamp.key with pull"
    );
    let resp = s.gateway.get(&f.gun, "tuf/timestamp.key", Some(&s.push));
    assert_eq!(resp.status(), StatusCode::OK);
    let key: Value = resp.json().unwrap();
    assert_eq!(
        json!([key_id(&key)]),
        root["roles"]["timestamp"]["keyids"],
        "timestamp.key is the key root pins"
    );

    // The changefeed records the publish.
    let resp = get("changefeed");
    assert_eq!(resp.status(), StatusCode::OK);
    let feed: Value = resp.json().unwrap();
    assert!(feed["count"].as_u64().unwrap() >= 1, "{feed}");
    let record = &feed["records"][0];
    assert_eq!(record["GUN"], f.gun.as_str(), "{feed}");
    assert_eq!(record["Category"], "update", "{feed}");
}

#[test]
fn signed_only_views_by_tag_by_digest_and_tag_list() {
    let s = Setup::new();
    let f = &s.fixture;
    let repository = repository_of(&f.gun);
    let base = &s.gateway.server.base;
    let http = &s.gateway.http;
    let signed_image = TestImage::new("trust signed");
    let unsigned_image = TestImage::new("trust unsigned");
    let moved_image = TestImage::new("trust moved");
    signed_image.push(http, base, repository, "signed", &s.signer());
    signed_image.push(http, base, repository, "moved", &s.signer());
    unsigned_image.push(http, base, repository, "unsigned", &s.signer());

    // Sign `signed` and `moved` (both the signed image), as docker does: tag -> digest.
    let target = |image: &TestImage| {
        let digest = image.digest();
        let hex = digest.trim_start_matches("sha256:");
        json!({
            "hashes": {"sha256": B64.encode(hex::decode(hex).unwrap())},
            "length": image.manifest.len(),
        })
    };
    let mut targets = Fixture::signed(&f.targets);
    targets["targets"] = json!({"signed": target(&signed_image), "moved": target(&signed_image)});
    let targets = f.targets_key.file(&targets);
    let bound = s.bind(&f.gun, &s.push);
    let snapshot = f.snapshot_for(&bound.root, &targets, 0);
    s.publish(&[
        ("root", &bound.root),
        ("targets", &targets),
        ("snapshot", &snapshot),
    ]);
    // `moved` now points at an image that is not signed.
    moved_image.push(http, base, repository, "moved", &s.signer());

    let reader = s.reader();
    let manifest = |method: reqwest::Method, reference: &str| {
        reader(http.request(
            method,
            format!("{base}/v2/{repository}/manifests/{reference}"),
        ))
        .header("accept", content::OCI_MANIFEST)
        .send()
        .unwrap()
    };
    let tags = || -> Value {
        let resp = reader(http.get(format!("{base}/v2/{repository}/tags/list")))
            .send()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "tag list");
        resp.json().unwrap()
    };
    let unsigned_refs = [
        "unsigned".to_owned(),
        unsigned_image.digest(),
        "moved".to_owned(),
        moved_image.digest(),
    ];
    let signed_refs = ["signed".to_owned(), signed_image.digest()];

    // Content trust on, no demand: unsigned content is served as before.
    for reference in unsigned_refs.iter().chain(&signed_refs) {
        let resp = manifest(reqwest::Method::GET, reference);
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "GET {reference} without demand"
        );
    }
    assert_eq!(
        sorted_tags(&tags()),
        ["moved", "signed", "unsigned"],
        "tag list without demand"
    );

    // The repository demands signatures (the attributes API, as the CLI calls it).
    let resp = http
        .patch(format!("{base}/portcullis/v1/repositories/{repository}"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&json!({"signedOnly": true}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "PATCH signedOnly");
    for reference in &signed_refs {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let resp = manifest(method.clone(), reference);
            assert_eq!(resp.status(), StatusCode::OK, "{method} signed {reference}");
        }
    }
    let resp = manifest(reqwest::Method::GET, "signed");
    assert_eq!(
        resp.bytes().unwrap().as_ref(),
        signed_image.manifest.as_slice()
    );
    for reference in &unsigned_refs {
        let resp = manifest(reqwest::Method::HEAD, reference);
        assert!(
            resp.status().is_client_error(),
            "HEAD unsigned {reference}: {}",
            resp.status()
        );
        let resp = manifest(reqwest::Method::GET, reference);
        let status = resp.status();
        let body: Value = resp.json().unwrap_or(Value::Null);
        assert!(
            status.is_client_error() && status != StatusCode::NOT_FOUND,
            "GET unsigned {reference}: {status} {body}"
        );
        let message = body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            message.contains("not signed"),
            "GET unsigned {reference}: the refusal names the reason: {body}"
        );
    }
    // `moved` has a signed target, but for another manifest than the tag's.
    assert_eq!(
        sorted_tags(&tags()),
        ["signed"],
        "tag list under the demand"
    );
}

fn sorted_tags(list: &Value) -> Vec<String> {
    let mut tags: Vec<String> = list["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    tags.sort_unstable();
    tags
}
