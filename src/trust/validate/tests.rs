use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::Digest as _;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::testkit::*;
use super::*;
use crate::trust::KeyAlgorithm;
use crate::trust::metadata::fixtures::*;

const GUN: &str = "127.0.0.1:5443/samples/app";
/// Before the notary0.3 root certificate's notAfter (2026-07-25).
const V03_NOW: OffsetDateTime = datetime!(2026-07-01 00:00 UTC);

fn fixture(bytes: &'static [u8]) -> Bytes {
    Bytes::from_static(bytes)
}

fn v03_upload() -> Vec<(Role, Bytes)> {
    vec![
        (Role::root(), fixture(V03_ROOT)),
        (Role::targets(), fixture(V03_TARGETS)),
        (role("targets/releases"), fixture(V03_RELEASES)),
        (Role::snapshot(), fixture(V03_SNAPSHOT)),
    ]
}

/// Rewrites the first signature of a fixture file (outer formatting is free; `signed`
/// stays byte-identical in meaning).
fn with_signature(bytes: &[u8], edit: impl FnOnce(&mut Value)) -> Bytes {
    let mut doc: Value = serde_json::from_slice(bytes).unwrap();
    edit(&mut doc["signatures"][0]);
    Bytes::from(serde_json::to_vec(&doc).unwrap())
}

fn raw(files: Files) -> Vec<(Role, Bytes)> {
    files
        .into_iter()
        .map(|(role, file)| (role, file.raw))
        .collect()
}

/// `refresh` of the repository, as raw bytes.
fn refreshed(
    state: &MemState,
    role: &Role,
    now: OffsetDateTime,
) -> Result<Option<Vec<(Role, Bytes)>>, UpdateError> {
    Ok(refresh(GUN, state, role, now)?.map(raw))
}

fn no_timestamp_key(result: Result<Files, UpdateError>) {
    assert_eq!(
        result.unwrap_err(),
        UpdateError::BadRoot("no timestamp keys exist on the server".into())
    );
}

#[test]
fn notary01_fixtures_validate_up_to_the_timestamp() {
    let upload = vec![
        (Role::root(), fixture(V01_ROOT)),
        (Role::targets(), fixture(V01_TARGETS)),
        (Role::snapshot(), fixture(V01_SNAPSHOT)),
        (Role::timestamp(), Bytes::from_static(b"ignored")),
    ];
    no_timestamp_key(validate_update(
        V01_GUN,
        &MemState::default(),
        upload,
        OffsetDateTime::now_utc(),
    ));
}

#[test]
fn notary03_fixtures_validate_with_rsapss_delegation() {
    no_timestamp_key(validate_update(
        V03_GUN,
        &MemState::default(),
        v03_upload(),
        V03_NOW,
    ));
}

#[test]
fn expired_root_certificate_is_refused() {
    let after = datetime!(2026-07-26 00:00 UTC);
    let err = validate_update(V03_GUN, &MemState::default(), v03_upload(), after).unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadRoot(m) if m.contains("expired")),
        "{err}"
    );
}

#[test]
fn root_certificate_cn_must_match_the_gun() {
    let upload = vec![
        (Role::root(), fixture(V01_ROOT)),
        (Role::targets(), fixture(V01_TARGETS)),
    ];
    let now = OffsetDateTime::now_utc();
    let err = validate_update(
        "docker.com/notary0.1/other",
        &MemState::default(),
        upload,
        now,
    )
    .unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadRoot(m) if m.contains("does not match the GUN")),
        "{err}"
    );
}

#[test]
fn tampered_byte_in_signed_is_refused() {
    let text = std::str::from_utf8(V03_TARGETS)
        .unwrap()
        .replace("\"length\":11309", "\"length\":11308");
    let mut upload = v03_upload();
    upload[1].1 = Bytes::from(text);
    let err = validate_update(V03_GUN, &MemState::default(), upload, V03_NOW).unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadTargets(m) if m.contains("threshold")),
        "{err}"
    );
}

#[test]
fn der_encoded_ecdsa_signature_is_refused() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let der = with_signature(V03_TARGETS, |sig| {
        let raw = b64.decode(sig["sig"].as_str().unwrap()).unwrap();
        let parsed = p256::ecdsa::Signature::from_slice(&raw).unwrap();
        sig["sig"] = json!(b64.encode(parsed.to_der().as_bytes()));
    });
    let mut upload = v03_upload();
    upload[1].1 = der.clone();
    let err = validate_update(V03_GUN, &MemState::default(), upload, V03_NOW).unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadTargets(m) if m.contains("threshold")),
        "{err}"
    );
    // The key itself names the reason.
    let file = crate::trust::metadata::SignedFile::parse(der).unwrap();
    let root = crate::trust::metadata::Root::parse(
        &crate::trust::metadata::SignedFile::parse(fixture(V03_ROOT)).unwrap(),
    )
    .unwrap();
    let key = root.role(&Role::targets()).keys.values().next().unwrap();
    let message = crate::trust::canonical::canonical_json(&file.signed).unwrap();
    let err = key
        .verify("ecdsa", &message, &file.signatures[0].sig)
        .unwrap_err();
    assert!(err.to_string().contains("64 raw bytes"), "{err}");
}

#[test]
fn wrong_key_id_is_refused() {
    let mut upload = v03_upload();
    upload[1].1 = with_signature(V03_TARGETS, |sig| {
        sig["keyid"] = json!(sig["keyid"].as_str().unwrap().to_uppercase());
    });
    let err = validate_update(V03_GUN, &MemState::default(), upload, V03_NOW).unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadTargets(m) if m.contains("threshold")),
        "{err}"
    );
}

#[test]
fn malformed_json_and_missing_root() {
    let upload = vec![(Role::targets(), Bytes::from_static(b"{not json"))];
    let err =
        validate_update(GUN, &MemState::default(), upload, OffsetDateTime::now_utc()).unwrap_err();
    assert!(matches!(err, UpdateError::MalformedJson(_)));
    assert_eq!(err.code(), "MALFORMED_JSON");
    let upload = vec![(Role::targets(), fixture(V01_TARGETS))];
    let err =
        validate_update(GUN, &MemState::default(), upload, OffsetDateTime::now_utc()).unwrap_err();
    assert!(matches!(err, UpdateError::Validation(_)));
    assert_eq!(
        err.detail(),
        json!({"Name": "ErrValidation", "Error": {"Msg": "no pre-existing root and no root provided in update."}})
    );
}

/// A repository as docker creates it: x509 root, client targets key, server-held snapshot
/// and timestamp keys.
struct Repo {
    root: TestKey,
    targets: TestKey,
    snapshot: ServerKey,
    timestamp: ServerKey,
    state: MemState,
    now: OffsetDateTime,
}

impl Repo {
    fn new() -> Repo {
        let snapshot = ServerKey::generate(KeyAlgorithm::Ed25519);
        let timestamp = ServerKey::generate(KeyAlgorithm::Ecdsa);
        let state = MemState::with_keys(&[
            (Role::snapshot(), &snapshot),
            (Role::timestamp(), &timestamp),
        ]);
        let now = OffsetDateTime::now_utc();
        Repo {
            root: TestKey::root(GUN),
            targets: TestKey::ecdsa(),
            snapshot,
            timestamp,
            state,
            now,
        }
    }

    fn root_file(&self, version: u64, signers: &[&TestKey]) -> Bytes {
        let (snapshot, timestamp) = (self.snapshot.public(), self.timestamp.public());
        let keys = RootKeys {
            root: vec![&self.root.public],
            targets: vec![&self.targets.public],
            targets_threshold: 1,
            snapshot: &snapshot,
            timestamp: &timestamp,
        };
        sign(
            &root_json(version, &keys, self.now + Duration::days(3650)),
            signers,
        )
    }

    fn targets_file(&self, version: u64, tags: &[(&str, &[u8])]) -> Bytes {
        sign(
            &targets_json(version, tags, &[], self.now + Duration::days(1095)),
            &[&self.targets],
        )
    }

    fn update(&mut self, upload: Vec<(Role, Bytes)>) -> Result<Vec<(Role, Bytes)>, UpdateError> {
        let files = raw(validate_update(GUN, &self.state, upload, self.now)?);
        self.state.apply(files.clone());
        Ok(files)
    }

    fn init(&mut self) -> Vec<(Role, Bytes)> {
        let root = self.root_file(1, &[&self.root]);
        let targets = self.targets_file(1, &[("v1", b"manifest one")]);
        self.update(vec![(Role::root(), root), (Role::targets(), targets)])
            .unwrap()
    }
}

fn parsed(files: &[(Role, Bytes)], name: &str) -> crate::trust::metadata::SignedFile {
    let bytes = files
        .iter()
        .find(|(r, _)| r.as_str() == name)
        .unwrap()
        .1
        .clone();
    crate::trust::metadata::SignedFile::parse(bytes).unwrap()
}

/// Checks the generated snapshot and timestamp: signed by the server keys, hashes chained.
fn assert_generated(repo: &Repo, files: &[(Role, Bytes)], versions: (u64, u64)) {
    use crate::trust::metadata::{Root, Snapshot, Timestamp};
    let root = Root::parse(
        &crate::trust::metadata::SignedFile::parse(repo.state.current(&Role::root()).unwrap())
            .unwrap(),
    )
    .unwrap();
    let snapshot = parsed(files, "snapshot");
    snapshot
        .verify(&Role::snapshot(), root.role(&Role::snapshot()))
        .unwrap();
    assert_eq!(snapshot.version, versions.0);
    let body = Snapshot::parse(&snapshot).unwrap();
    for name in ["root", "targets"] {
        body.meta[name]
            .check(&role(name), &repo.state.current(&role(name)).unwrap())
            .unwrap();
    }
    let timestamp = parsed(files, "timestamp");
    timestamp
        .verify(&Role::timestamp(), root.role(&Role::timestamp()))
        .unwrap();
    assert_eq!(timestamp.version, versions.1);
    assert!(timestamp.expires > repo.now + Duration::days(13));
    Timestamp::parse(&timestamp)
        .unwrap()
        .snapshot
        .check(&Role::snapshot(), &snapshot.raw)
        .unwrap();
}

#[test]
fn new_repository_then_updates_round_trip() {
    let mut repo = Repo::new();
    let files = repo.init();
    let names: Vec<&str> = files.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(names, ["root", "targets", "snapshot", "timestamp"]);
    assert_generated(&repo, &files, (1, 1));

    let targets = repo.targets_file(2, &[("v1", b"manifest one"), ("v2", b"manifest two")]);
    let files = repo.update(vec![(Role::targets(), targets)]).unwrap();
    let names: Vec<&str> = files.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(names, ["targets", "snapshot", "timestamp"]);
    assert_generated(&repo, &files, (2, 2));

    let signed = signed_targets(&repo.state, repo.now);
    let v2 = signed.iter().find(|t| t.name == "v2").unwrap();
    assert_eq!(
        v2.sha256,
        hex::encode(sha2::Sha256::digest(b"manifest two"))
    );
    assert_eq!(signed.len(), 2);
}

#[test]
fn refresh_regenerates_expired_timestamp_and_snapshot() {
    let mut repo = Repo::new();
    repo.init();
    assert_eq!(
        refreshed(&repo.state, &Role::timestamp(), repo.now).unwrap(),
        None
    );
    assert_eq!(
        refreshed(&repo.state, &Role::root(), repo.now + Duration::days(30)).unwrap(),
        None
    );

    repo.now += Duration::days(15);
    let files = refreshed(&repo.state, &Role::timestamp(), repo.now)
        .unwrap()
        .unwrap();
    assert_eq!(files.len(), 1);
    repo.state.apply(files.clone());
    let timestamp = parsed(&files, "timestamp");
    assert_eq!(timestamp.version, 2);
    assert!(timestamp.expires > repo.now);
    assert_eq!(
        refreshed(&repo.state, &Role::snapshot(), repo.now).unwrap(),
        None
    );

    // Past the snapshot's 3 years the server re-signs it too, then a timestamp over it.
    repo.now += Duration::days(4 * 365);
    let files = refreshed(&repo.state, &Role::snapshot(), repo.now)
        .unwrap()
        .unwrap();
    repo.state.apply(files.clone());
    let names: Vec<&str> = files.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(names, ["snapshot", "timestamp"]);
    assert_generated(&repo, &files, (2, 3));
}

#[test]
fn refresh_repairs_a_timestamp_that_does_not_match_the_snapshot() {
    let mut repo = Repo::new();
    repo.init();
    let stale = repo.state.current(&Role::timestamp()).unwrap();
    let targets = repo.targets_file(2, &[("v2", b"two")]);
    repo.update(vec![(Role::targets(), targets)]).unwrap();
    repo.state.apply(vec![(Role::timestamp(), stale)]);
    let files = refreshed(&repo.state, &Role::timestamp(), repo.now)
        .unwrap()
        .unwrap();
    assert_eq!(files.len(), 1);
    repo.state.apply(files.clone());
    assert_generated(
        &repo,
        &[
            (
                Role::snapshot(),
                repo.state.current(&Role::snapshot()).unwrap(),
            ),
            files[0].clone(),
        ],
        (2, 2),
    );
}

#[test]
fn expired_metadata_is_refused() {
    let mut repo = Repo::new();
    repo.init();
    let expired = targets_json(2, &[], &[], repo.now - Duration::seconds(1));
    let err = repo
        .update(vec![(Role::targets(), sign(&expired, &[&repo.targets]))])
        .unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadTargets(m) if m.contains("expired")),
        "{err}"
    );
}

#[test]
fn threshold_not_met_is_refused() {
    let mut repo = Repo::new();
    let second = TestKey::ecdsa();
    let (snapshot, timestamp) = (repo.snapshot.public(), repo.timestamp.public());
    let keys = RootKeys {
        root: vec![&repo.root.public],
        targets: vec![&repo.targets.public, &second.public],
        targets_threshold: 2,
        snapshot: &snapshot,
        timestamp: &timestamp,
    };
    let root = sign(
        &root_json(1, &keys, repo.now + Duration::days(365)),
        &[&repo.root],
    );
    let body = targets_json(1, &[], &[], repo.now + Duration::days(365));
    let one = sign(&body, &[&repo.targets]);
    let err = repo
        .update(vec![(Role::root(), root.clone()), (Role::targets(), one)])
        .unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadTargets(m) if m.contains("1 of 2")),
        "{err}"
    );
    let both = sign(&body, &[&repo.targets, &second]);
    repo.update(vec![(Role::root(), root), (Role::targets(), both)])
        .unwrap();
}

#[test]
fn root_rotation_needs_old_and_new_root_keys() {
    let mut repo = Repo::new();
    repo.init();
    let old = std::mem::replace(&mut repo.root, TestKey::root(GUN));
    let only_new = repo.root_file(2, &[&repo.root]);
    let err = repo.update(vec![(Role::root(), only_new)]).unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadRoot(m) if m.contains("rotation")),
        "{err}"
    );
    let only_old = repo.root_file(2, &[&old]);
    let err = repo.update(vec![(Role::root(), only_old)]).unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadRoot(m) if m.contains("threshold")),
        "{err}"
    );
    let skipped = repo.root_file(3, &[&old, &repo.root]);
    let err = repo.update(vec![(Role::root(), skipped)]).unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadRoot(m) if m.contains("current 1, new 3")),
        "{err}"
    );
    // Rotation with both: the server re-generates snapshot (root meta) and timestamp.
    let both = repo.root_file(2, &[&old, &repo.root]);
    let files = repo.update(vec![(Role::root(), both)]).unwrap();
    assert_generated(&repo, &files, (2, 2));
}

#[test]
fn snapshot_must_match_the_uploaded_targets() {
    // notary init style: the client holds the snapshot key.
    let mut repo = Repo::new();
    let client_snapshot = TestKey::ecdsa();
    let timestamp = repo.timestamp.public();
    let keys = RootKeys {
        root: vec![&repo.root.public],
        targets: vec![&repo.targets.public],
        targets_threshold: 1,
        snapshot: &client_snapshot.public,
        timestamp: &timestamp,
    };
    let later = repo.now + Duration::days(365);
    let root = sign(&root_json(1, &keys, later), &[&repo.root]);
    let targets = repo.targets_file(1, &[("v1", b"one")]);
    let snapshot = sign(
        &snapshot_json(1, &[("root", &root), ("targets", &targets)], later),
        &[&client_snapshot],
    );
    let files = repo
        .update(vec![
            (Role::root(), root.clone()),
            (Role::targets(), targets.clone()),
            (Role::snapshot(), snapshot),
        ])
        .unwrap();
    assert_eq!(files[2].0, Role::snapshot());

    // Targets changed, snapshot still describing the old targets.
    let changed = repo.targets_file(2, &[("v2", b"two")]);
    let stale = sign(
        &snapshot_json(2, &[("root", &root), ("targets", &targets)], later),
        &[&client_snapshot],
    );
    let err = repo
        .update(vec![
            (Role::targets(), changed.clone()),
            (Role::snapshot(), stale),
        ])
        .unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadSnapshot(m) if m.contains("targets")),
        "{err}"
    );

    // Without a snapshot the server cannot make one: it does not hold that key.
    let err = repo
        .update(vec![(Role::targets(), changed.clone())])
        .unwrap_err();
    assert_eq!(
        err.detail(),
        json!({"Name": "ErrBadHierarchy", "Error": {"Missing": "snapshot", "Msg": "no snapshot was included in update and server does not hold current snapshot key for repository"}})
    );
    // A snapshot alone is checked against the stored targets too.
    let alone = sign(
        &snapshot_json(2, &[("root", &root), ("targets", &changed)], later),
        &[&client_snapshot],
    );
    let err = repo.update(vec![(Role::snapshot(), alone)]).unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadSnapshot(m) if m.contains("targets")),
        "{err}"
    );
    let fresh = sign(
        &snapshot_json(2, &[("root", &root), ("targets", &changed)], later),
        &[&client_snapshot],
    );
    repo.update(vec![(Role::targets(), changed), (Role::snapshot(), fresh)])
        .unwrap();
}

#[test]
fn delegations_are_checked_against_their_parent() {
    let mut repo = Repo::new();
    let releases_key = TestKey::ecdsa();
    let later = repo.now + Duration::days(365);
    let root = repo.root_file(1, &[&repo.root]);
    let body = targets_json(
        1,
        &[("v1", b"from targets")],
        &[("targets/releases", &releases_key.public)],
        later,
    );
    let targets = sign(&body, &[&repo.targets]);
    let releases = sign(
        &targets_json(1, &[("v1", b"from releases")], &[], later),
        &[&releases_key],
    );
    let files = repo
        .update(vec![
            (role("targets/releases"), releases),
            (Role::root(), root),
            (Role::targets(), targets),
        ])
        .unwrap();
    let names: Vec<&str> = files.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "root",
            "targets",
            "targets/releases",
            "snapshot",
            "timestamp"
        ]
    );
    let snapshot = crate::trust::metadata::Snapshot::parse(&parsed(&files, "snapshot")).unwrap();
    assert!(snapshot.meta.contains_key("targets/releases"));

    // targets/releases wins for docker.
    let signed = signed_targets(&repo.state, repo.now);
    assert_eq!(signed.len(), 1);
    assert_eq!(
        signed[0].sha256,
        hex::encode(sha2::Sha256::digest(b"from releases"))
    );

    // Alone, against the stored targets; signed by the wrong key, refused.
    let v2 = sign(
        &targets_json(2, &[("v2", b"x")], &[], later),
        &[&releases_key],
    );
    repo.update(vec![(role("targets/releases"), v2)]).unwrap();
    let forged = sign(
        &targets_json(3, &[("v3", b"x")], &[], later),
        &[&repo.targets],
    );
    let err = repo
        .update(vec![(role("targets/releases"), forged)])
        .unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadTargets(m) if m.contains("threshold")),
        "{err}"
    );
    // Not delegated at all.
    let other = sign(&targets_json(1, &[], &[], later), &[&releases_key]);
    let err = repo
        .update(vec![(role("targets/other"), other.clone())])
        .unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadTargets(m) if m.contains("not delegated")),
        "{err}"
    );
    let err = repo
        .update(vec![(role("targets/other/deep"), other)])
        .unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadTargets(m) if m.contains("not available")),
        "{err}"
    );
}

fn tags(repo: &Repo, now: OffsetDateTime) -> Vec<(String, String)> {
    signed_targets(&repo.state, now)
        .into_iter()
        .map(|t| (t.name, t.sha256))
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A repository with `targets` (v1 → "from targets") delegating `targets/releases`
/// (v1, v2 → "from releases"), the delegation limited to `paths`.
fn delegated(paths: Value) -> (Repo, TestKey) {
    let mut repo = Repo::new();
    let releases_key = TestKey::ecdsa();
    let later = repo.now + Duration::days(365);
    let mut body = targets_json(
        1,
        &[("v1", b"from targets")],
        &[("targets/releases", &releases_key.public)],
        later,
    );
    body["delegations"]["roles"][0]["paths"] = paths;
    let releases = sign(
        &targets_json(
            1,
            &[("v1", b"from releases"), ("v2", b"from releases")],
            &[],
            later,
        ),
        &[&releases_key],
    );
    let root = repo.root_file(1, &[&repo.root]);
    repo.update(vec![
        (Role::root(), root),
        (Role::targets(), sign(&body, &[&repo.targets])),
        (Role::releases(), releases),
    ])
    .unwrap();
    (repo, releases_key)
}

#[test]
fn releases_count_only_while_the_current_targets_delegates_them() {
    let (mut repo, _) = delegated(json!([""]));
    let now = repo.now;
    let releases = sha(b"from releases");
    assert_eq!(
        tags(&repo, now),
        [("v1".into(), releases.clone()), ("v2".into(), releases)]
    );
    // targets v2 drops the delegation: the stored releases file no longer counts.
    let targets = repo.targets_file(2, &[("v3", b"three")]);
    repo.update(vec![(Role::targets(), targets)]).unwrap();
    assert_eq!(tags(&repo, now), [("v3".into(), sha(b"three"))]);
}

#[test]
fn delegation_paths_limit_what_releases_sign() {
    let (repo, _) = delegated(json!(["v2"]));
    assert_eq!(
        tags(&repo, repo.now),
        [
            ("v2".into(), sha(b"from releases")),
            ("v1".into(), sha(b"from targets")),
        ]
    );
    let (repo, _) = delegated(json!([]));
    assert_eq!(tags(&repo, repo.now), [("v1".into(), sha(b"from targets"))]);
}

#[test]
fn releases_missing_from_the_snapshot_do_not_count() {
    let (mut repo, _) = delegated(json!([""]));
    let stored = SignedFile::parse(repo.state.current(&Role::snapshot()).unwrap()).unwrap();
    let mut signed = stored.signed.clone();
    signed["meta"]
        .as_object_mut()
        .unwrap()
        .remove("targets/releases");
    let message = canonical_json(&signed).unwrap();
    let resigned = envelope(&signed, &[repo.snapshot.sign(&message)]).unwrap();
    repo.state.apply(vec![(Role::snapshot(), resigned)]);
    assert_eq!(tags(&repo, repo.now), [("v1".into(), sha(b"from targets"))]);
    // A snapshot the root's snapshot keys did not sign: nothing counts.
    let unsigned = envelope(&signed, &[]).unwrap();
    repo.state.apply(vec![(Role::snapshot(), unsigned)]);
    assert!(tags(&repo, repo.now).is_empty());
}

#[test]
fn expired_or_re_keyed_targets_do_not_count() {
    let mut repo = Repo::new();
    repo.init();
    assert_eq!(tags(&repo, repo.now).len(), 1);
    // Past the targets' expiry (1095 days).
    assert!(tags(&repo, repo.now + Duration::days(1100)).is_empty());
    // A root rotating the targets key leaves the old targets unverifiable.
    repo.targets = TestKey::ecdsa();
    let root = repo.root_file(2, &[&repo.root]);
    repo.update(vec![(Role::root(), root)]).unwrap();
    assert!(tags(&repo, repo.now).is_empty());
    let targets = repo.targets_file(2, &[("v2", b"two")]);
    repo.update(vec![(Role::targets(), targets)]).unwrap();
    assert_eq!(tags(&repo, repo.now), [("v2".into(), sha(b"two"))]);
}

#[test]
fn generated_versions_stop_at_the_largest_accepted() {
    let mut repo = Repo::new();
    repo.init();
    let mut stamp: Value =
        serde_json::from_slice(&repo.state.current(&Role::timestamp()).unwrap()).unwrap();
    stamp["signed"]["version"] = json!(MAX_VERSION);
    repo.state
        .apply(vec![(Role::timestamp(), Bytes::from(stamp.to_string()))]);
    let targets = repo.targets_file(2, &[("v2", b"two")]);
    let err = repo.update(vec![(Role::targets(), targets)]).unwrap_err();
    assert!(
        matches!(&err, UpdateError::Validation(m) if m.contains("cannot go past")),
        "{err}"
    );
}

/// The roles a state holds, as fsck lists them from the store.
fn stored_roles(state: &MemState) -> Vec<Role> {
    state.files.keys().cloned().collect()
}

#[test]
fn fsck_chain_accepts_published_metadata_and_names_each_broken_link() {
    let mut repo = Repo::new();
    repo.init();
    let targets = repo.targets_file(2, &[("v2", b"manifest two")]);
    repo.update(vec![(Role::targets(), targets)]).unwrap();
    let roles = stored_roles(&repo.state);
    assert_eq!(check_stored(GUN, &repo.state, &roles), Ok(()));

    // A targets file the snapshot does not list (a write that half landed).
    let mut stale = MemState::default();
    stale.apply(repo.state.files.clone().into_iter().collect());
    stale.apply(vec![(Role::targets(), repo.targets_file(3, &[]))]);
    let err = check_stored(GUN, &stale, &roles).unwrap_err();
    assert!(err.starts_with("snapshot:"), "{err}");

    // A timestamp over another snapshot.
    let mut other = MemState::default();
    other.apply(repo.state.files.clone().into_iter().collect());
    let mut older = Repo::new();
    older.init();
    other.apply(vec![(
        Role::timestamp(),
        older.state.files[&Role::timestamp()].clone(),
    )]);
    let err = check_stored(GUN, &other, &roles).unwrap_err();
    assert!(err.starts_with("timestamp:"), "{err}");

    // Targets signed by a key the root does not name.
    let mut forged = MemState::default();
    forged.apply(repo.state.files.clone().into_iter().collect());
    let bogus = sign(
        &targets_json(9, &[], &[], repo.now + Duration::days(30)),
        &[&TestKey::ecdsa()],
    );
    forged.apply(vec![(Role::targets(), bogus)]);
    assert!(check_stored(GUN, &forged, &roles).is_err());

    // Nothing but a root.
    let mut partial = MemState::default();
    partial.apply(vec![(
        Role::root(),
        repo.state.files[&Role::root()].clone(),
    )]);
    assert_eq!(
        check_stored(GUN, &partial, &[Role::root()]),
        Err("no targets is stored".to_owned())
    );
}
