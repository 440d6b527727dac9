use serde_json::Value;
use sha2::{Digest, Sha256};
use time::Duration;

use super::*;
use crate::trust::validate::testkit::{RootKeys, TestKey, root_json, sign, targets_json};

const GUN: &str = "127.0.0.1:5443/samples/app";

struct Fixture {
    _dir: tempfile::TempDir,
    service: Arc<TrustService>,
    root: TestKey,
    targets: TestKey,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("control.redb")).unwrap();
    let (service, _) = TrustService::open(
        Arc::new(db),
        KeyAlgorithm::Ecdsa,
        dir.path(),
        &PassphraseSource::DataDir,
    )
    .unwrap();
    service.set_status(ContentTrustStatus::Enabled).unwrap();
    Fixture {
        _dir: dir,
        service,
        root: TestKey::root(GUN),
        targets: TestKey::ecdsa(),
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn role(name: &str) -> Role {
    Role::parse(name).unwrap()
}

fn version_of(bytes: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(bytes).unwrap();
    v["signed"]["version"].as_u64().unwrap()
}

impl Fixture {
    /// A root pinning the given server keys, signed by the root key.
    fn root_file(&self, version: u64, timestamp: &PublicKey, snapshot: &PublicKey) -> Bytes {
        let keys = RootKeys {
            root: vec![&self.root.public],
            targets: vec![&self.targets.public],
            targets_threshold: 1,
            snapshot,
            timestamp,
        };
        sign(
            &root_json(version, &keys, now() + Duration::days(3650)),
            &[&self.root],
        )
    }

    fn targets_file(&self, version: u64, tags: &[(&str, &[u8])]) -> Bytes {
        let body = targets_json(version, tags, &[], now() + Duration::days(1000));
        sign(&body, &[&self.targets])
    }

    /// docker's first push: server-managed timestamp and snapshot keys, root + targets.
    fn publish(&self, tags: &[(&str, &[u8])]) -> Bytes {
        let timestamp = self.service.public_key(GUN, &role("timestamp")).unwrap();
        let snapshot = self.service.public_key(GUN, &role("snapshot")).unwrap();
        let root = self.root_file(1, &timestamp, &snapshot);
        let parts = vec![
            (role("root"), root.clone()),
            (role("targets"), self.targets_file(1, tags)),
        ];
        self.service.update(GUN, parts, now()).unwrap();
        root
    }

    fn get(&self, what: MetadataRef) -> Result<Metadata, TrustError> {
        self.service.get(GUN, &what, now())
    }

    fn current(&self, name: &str) -> Bytes {
        self.get(MetadataRef::Current(role(name))).unwrap().bytes
    }
}

#[test]
fn server_keys_are_pending_until_a_root_pins_one() {
    let f = fixture();
    let timestamp = role("timestamp");
    let first = f.service.public_key(GUN, &timestamp).unwrap();
    let second = f.service.public_key(GUN, &timestamp).unwrap();
    assert_ne!(first.id(), second.id(), "each call creates a pending key");
    let snapshot = f.service.public_key(GUN, &role("snapshot")).unwrap();
    let root = f.root_file(1, &second, &snapshot);
    let parts = vec![
        (role("root"), root),
        (role("targets"), f.targets_file(1, &[])),
    ];
    f.service.update(GUN, parts, now()).unwrap();
    // The pinned key from now on, and it signed the timestamp.
    for _ in 0..2 {
        assert_eq!(
            f.service.public_key(GUN, &timestamp).unwrap().id(),
            second.id()
        );
    }
    let stamp: Value = serde_json::from_slice(&f.current("timestamp")).unwrap();
    assert_eq!(stamp["signatures"][0]["keyid"], second.id());
    // The key nobody pinned is gone.
    let txn = f.service.store.read().unwrap();
    assert!(
        txn.server_key(GUN, "timestamp", &first.id())
            .unwrap()
            .is_none()
    );
    assert!(
        txn.server_key(GUN, "timestamp", &second.id())
            .unwrap()
            .is_some()
    );
    // Rotation hands out a new key without changing the pinned one yet.
    let rotated = f.service.rotate_key(GUN, &timestamp).unwrap();
    assert_ne!(rotated.id(), second.id());
    assert_eq!(
        f.service.public_key(GUN, &timestamp).unwrap().id(),
        second.id()
    );
    assert!(matches!(
        f.service.public_key(GUN, &role("targets")),
        Err(TrustError::NotServerManaged(_))
    ));
}

#[test]
fn an_update_is_served_by_role_checksum_and_version() {
    let f = fixture();
    let root = f.publish(&[("v1", b"manifest")]);
    assert_eq!(f.current("root"), root);
    let snapshot = f.current("snapshot");
    let timestamp = f.current("timestamp");
    assert_eq!((version_of(&snapshot), version_of(&timestamp)), (1, 1));
    let sha = hex::encode(Sha256::digest(&snapshot));
    let by_sum = f.get(MetadataRef::Checksum {
        role: role("snapshot"),
        sha256: sha.clone(),
    });
    assert_eq!(by_sum.unwrap().bytes, snapshot);
    // The checksum must be of that role.
    assert!(matches!(
        f.get(MetadataRef::Checksum {
            role: role("targets"),
            sha256: sha
        }),
        Err(TrustError::NotFound { .. })
    ));
    let v1 = f.get(MetadataRef::Version {
        role: role("root"),
        version: 1,
    });
    assert_eq!(v1.unwrap().bytes, root);
    assert!(matches!(
        f.get(MetadataRef::Current(role("targets/releases"))),
        Err(TrustError::NotFound { .. })
    ));
    // A second publish of targets: snapshot and timestamp move on.
    let parts = vec![(role("targets"), f.targets_file(2, &[("v2", b"other")]))];
    f.service.update(GUN, parts, now()).unwrap();
    assert_eq!(version_of(&f.current("snapshot")), 2);
    assert_eq!(version_of(&f.current("timestamp")), 2);
    // The same version again is refused and changes nothing.
    let parts = vec![(role("targets"), f.targets_file(2, &[("v3", b"x")]))];
    let err = f.service.update(GUN, parts, now()).unwrap_err();
    assert!(matches!(err, TrustError::OldVersion(_)), "{err}");
    assert_eq!(version_of(&f.current("timestamp")), 2);
    let feed = f.service.changefeed(Some(GUN), None, 0).unwrap();
    assert_eq!(feed.count, 2);
    assert_eq!(feed.records[1].version, 2);
}

#[test]
fn an_expired_timestamp_is_regenerated_on_get() {
    let f = fixture();
    f.publish(&[]);
    let later = now() + Duration::days(15);
    let fresh = f
        .service
        .get(GUN, &MetadataRef::Current(role("timestamp")), later)
        .unwrap();
    assert_eq!(version_of(&fresh.bytes), 2);
    // Stored: a plain read now serves it, and the version index has both.
    assert_eq!(f.current("timestamp"), fresh.bytes);
    assert!(
        f.get(MetadataRef::Version {
            role: role("timestamp"),
            version: 1
        })
        .is_ok()
    );
    // Not expired: served as is.
    let again = f
        .service
        .get(GUN, &MetadataRef::Current(role("timestamp")), later)
        .unwrap();
    assert_eq!(again.bytes, fresh.bytes);
}

#[test]
fn signed_targets_follow_every_change() {
    let f = fixture();
    let digest = |bytes: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    assert!(f.service.signed_targets("samples/app").is_empty());
    f.publish(&[("v1", b"one")]);
    let signed = f.service.signed_targets("samples/app");
    assert!(!signed.is_empty());
    assert!(signed.tag_has_digest("v1", &digest(b"one")));
    assert!(signed.has_digest(&digest(b"one")));
    assert!(f.service.signed_targets("samples/other").is_empty());
    // Cached, and dropped when the repository's trust data changes.
    assert!(Arc::ptr_eq(
        &signed,
        &f.service.signed_targets("samples/app")
    ));
    let parts = vec![(role("targets"), f.targets_file(2, &[("v1", b"two")]))];
    f.service.update(GUN, parts, now()).unwrap();
    let signed = f.service.signed_targets("samples/app");
    assert!(signed.tag_has_digest("v1", &digest(b"two")));
    assert!(!signed.tag_has_digest("v1", &digest(b"one")));
    assert!(!signed.has_digest(&digest(b"one")));
    f.service.delete(GUN).unwrap();
    assert!(f.service.signed_targets("samples/app").is_empty());
    assert!(matches!(
        f.get(MetadataRef::Current(role("root"))),
        Err(TrustError::NotFound { .. })
    ));
}

#[test]
fn disabling_deletes_all_trust_data() {
    let f = fixture();
    f.publish(&[("v1", b"one")]);
    assert!(!f.service.signed_targets("samples/app").is_empty());
    f.service.set_status(ContentTrustStatus::Disabled).unwrap();
    assert_eq!(f.service.status(), ContentTrustStatus::Disabled);
    assert!(f.service.signed_targets("samples/app").is_empty());
    assert!(matches!(
        f.get(MetadataRef::Current(role("root"))),
        Err(TrustError::Disabled)
    ));
    assert!(matches!(
        f.service.public_key(GUN, &role("timestamp")),
        Err(TrustError::Disabled)
    ));
    f.service.set_status(ContentTrustStatus::Enabled).unwrap();
    assert!(matches!(
        f.get(MetadataRef::Current(role("root"))),
        Err(TrustError::NotFound { .. })
    ));
}

#[test]
fn writes_check_the_switch_inside_their_transaction() {
    let f = fixture();
    f.publish(&[("v1", b"one")]);
    // A disable committed after the (still enabled) in-memory switch was read.
    let txn = f.service.store.write().unwrap();
    txn.set_enabled(false).unwrap();
    txn.commit().unwrap();
    assert_eq!(f.service.status(), ContentTrustStatus::Enabled);
    let parts = vec![(role("targets"), f.targets_file(2, &[("v2", b"two")]))];
    assert!(matches!(
        f.service.update(GUN, parts, now()),
        Err(TrustError::Disabled)
    ));
    for name in ["timestamp", "snapshot"] {
        assert!(matches!(
            f.service
                .public_key("127.0.0.1:5443/samples/new", &role(name)),
            Err(TrustError::Disabled)
        ));
        assert!(matches!(
            f.service.rotate_key(GUN, &role(name)),
            Err(TrustError::Disabled)
        ));
    }
    assert!(matches!(f.service.delete(GUN), Err(TrustError::Disabled)));
    // The refresh of an expired timestamp does not write either.
    let later = now() + Duration::days(15);
    let stale = f
        .service
        .get(GUN, &MetadataRef::Current(role("timestamp")), later);
    assert!(matches!(stale, Err(TrustError::Disabled)), "{stale:?}");
    let txn = f.service.store.read().unwrap();
    assert_eq!(txn.current(GUN, "targets").unwrap().unwrap().version, 1);
    assert_eq!(txn.current(GUN, "timestamp").unwrap().unwrap().version, 1);
}

#[test]
fn pending_keys_are_bounded_per_gun_and_role() {
    let f = fixture();
    let gun = "made.up/samples/app";
    let timestamp = role("timestamp");
    let keys: Vec<PublicKey> = (0..10)
        .map(|_| f.service.public_key(gun, &timestamp).unwrap())
        .collect();
    let txn = f.service.store.read().unwrap();
    let held: Vec<bool> = keys
        .iter()
        .map(|k| txn.server_key(gun, "timestamp", &k.id()).unwrap().is_some())
        .collect();
    let mut expected = vec![false; 10 - MAX_PENDING_KEYS];
    expected.extend(vec![true; MAX_PENDING_KEYS]);
    assert_eq!(held, expected);
    drop(txn);
    // A pinned key is never dropped by later rotations.
    f.publish(&[]);
    let pinned = f.service.public_key(GUN, &timestamp).unwrap();
    for _ in 0..(MAX_PENDING_KEYS + 2) {
        f.service.rotate_key(GUN, &timestamp).unwrap();
    }
    assert_eq!(
        f.service.public_key(GUN, &timestamp).unwrap().id(),
        pinned.id()
    );
}

#[test]
fn every_gun_of_a_repository_may_sign_a_tag() {
    let f = fixture();
    let digest = |bytes: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    f.publish(&[("v1", b"real")]);
    // Another host's GUN for the same repository, sorting first, signs v1 differently.
    let other = "a.example/samples/app";
    let (root_key, targets_key) = (TestKey::root(other), TestKey::ecdsa());
    let timestamp = f.service.public_key(other, &role("timestamp")).unwrap();
    let snapshot = f.service.public_key(other, &role("snapshot")).unwrap();
    let keys = RootKeys {
        root: vec![&root_key.public],
        targets: vec![&targets_key.public],
        targets_threshold: 1,
        snapshot: &snapshot,
        timestamp: &timestamp,
    };
    let root = sign(
        &root_json(1, &keys, now() + Duration::days(3650)),
        &[&root_key],
    );
    let targets = sign(
        &targets_json(1, &[("v1", b"other")], &[], now() + Duration::days(100)),
        &[&targets_key],
    );
    let parts = vec![(role("root"), root), (role("targets"), targets)];
    f.service.update(other, parts, now()).unwrap();
    let signed = f.service.signed_targets("samples/app");
    assert!(signed.tag_has_digest("v1", &digest(b"real")));
    assert!(signed.tag_has_digest("v1", &digest(b"other")));
    assert!(!signed.tag_has_digest("v1", &digest(b"neither")));
    assert!(!signed.tag_has_digest("v2", &digest(b"real")));
    let mut pairs: Vec<(&str, &str)> = signed.tags().collect();
    pairs.sort_unstable();
    let mut expected = [digest(b"real"), digest(b"other")];
    expected.sort_unstable();
    assert_eq!(
        pairs,
        [("v1", expected[0].as_str()), ("v1", expected[1].as_str())]
    );
}

#[test]
fn changefeed_pages_are_capped() {
    let f = fixture();
    let txn = f.service.store.write().unwrap();
    for version in 1..=1005 {
        let file = NewFile {
            role: "timestamp".to_owned(),
            version,
            bytes: Bytes::from(version.to_string()),
        };
        txn.update_many(GUN, &[file], now()).unwrap();
    }
    txn.commit().unwrap();
    for records in [5000, -5000, i64::MAX, i64::MIN] {
        let feed = f.service.changefeed(None, None, records).unwrap();
        assert_eq!(feed.count, 1000, "{records}");
    }
    assert_eq!(f.service.changefeed(Some(GUN), None, 0).unwrap().count, 100);
}

#[test]
fn a_filtered_changefeed_still_fills_its_pages() {
    let f = fixture();
    let other = "registry.test/other";
    let txn = f.service.store.write().unwrap();
    // Change ids alternate: odd ones are GUN's, even ones the other's.
    for version in 1..=6 {
        for gun in [GUN, other] {
            let file = NewFile {
                role: "timestamp".to_owned(),
                version,
                bytes: Bytes::from(format!("{gun} {version}")),
            };
            txn.update_many(gun, &[file], now()).unwrap();
        }
    }
    txn.commit().unwrap();
    let ids = |change_id: Option<&str>, records| -> Vec<String> {
        let feed = f
            .service
            .changefeed_of(|g| g == GUN, change_id, records)
            .unwrap();
        assert_eq!(feed.count, feed.records.len());
        assert!(feed.records.iter().all(|c| c.gun == GUN));
        feed.records.into_iter().map(|c| c.id).collect()
    };
    assert_eq!(ids(None, 2), ["1", "3"]);
    assert_eq!(ids(Some("3"), 2), ["5", "7"]);
    assert_eq!(ids(Some("9"), 5), ["11"], "only the end gives a short page");
    assert_eq!(ids(None, -2), ["9", "11"]);
    assert_eq!(ids(Some("9"), -2), ["5", "7"]);
    assert_eq!(ids(Some("3"), -5), ["1"]);
    assert_eq!(f.service.changefeed(None, Some("3"), 2).unwrap().count, 2);
}
