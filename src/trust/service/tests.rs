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

/// Each test runs on both backends: redb, and a fresh database of a real PostgreSQL.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_redb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Fixture::redb().await).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Fixture::postgres().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    server_keys_are_pending_until_a_root_pins_one,
    an_update_is_served_by_role_checksum_and_version,
    an_expired_timestamp_is_regenerated_on_get,
    signed_targets_follow_every_change,
    disabling_deletes_all_trust_data,
    writes_check_the_switch_inside_their_transaction,
    pending_keys_are_bounded_per_gun_and_role,
    every_gun_of_a_repository_may_sign_a_tag,
    changefeed_pages_are_capped,
    a_filtered_changefeed_still_fills_its_pages,
);

impl Fixture {
    async fn redb() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::control_plane::EmbeddedDb::open(&dir.path().join("control.redb")).unwrap();
        let (service, _) = TrustService::open(
            Arc::new(db),
            KeyAlgorithm::Ecdsa,
            dir.path(),
            &PassphraseSource::DataDir,
        )
        .unwrap();
        Fixture::enabled(dir, service).await
    }

    /// On a fresh database, listening for changes as a server does.
    async fn postgres() -> Fixture {
        let url = portcullis_test_support::postgres::Postgres::shared().database();
        let control = PgControl::connect(&url).await.unwrap();
        let passphrase = PassphraseSource::Value(zeroize::Zeroizing::new("test".into()));
        let (service, _) = TrustService::open_shared(control, KeyAlgorithm::Ecdsa, &passphrase)
            .await
            .unwrap();
        service.spawn_watch();
        while !service.listening.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Fixture::enabled(tempfile::tempdir().unwrap(), service).await
    }

    async fn enabled(dir: tempfile::TempDir, service: Arc<TrustService>) -> Fixture {
        service
            .set_status(ContentTrustStatus::Enabled)
            .await
            .unwrap();
        Fixture {
            _dir: dir,
            service,
            root: TestKey::root(GUN),
            targets: TestKey::ecdsa(),
        }
    }

    /// Whether the server holds key `id` of `gun`'s `role`.
    async fn holds(&self, gun: &str, role: &str, id: &str) -> bool {
        let data = self.service.store.gun(gun, true).await.unwrap();
        data.keys.contains_key(&(role.to_owned(), id.to_owned()))
    }

    /// The stored current version of `role`.
    async fn stored_version(&self, role: &str) -> u64 {
        let data = self.service.store.gun(GUN, false).await.unwrap();
        data.current[role].version
    }

    /// Stores timestamps 1 to `versions` of each of `guns` in turn, as they are (no
    /// validation): one changefeed record each.
    async fn timestamps(&self, guns: &[&str], versions: u64) {
        let file = |gun: &str, version: u64| NewFile {
            role: "timestamp".to_owned(),
            version,
            bytes: Bytes::from(format!("{gun} {version}")),
        };
        match &self.service.store {
            // One transaction: a commit each would sync to disk a thousand times.
            Backend::Redb(store) => {
                let txn = store.write().unwrap();
                for version in 1..=versions {
                    for gun in guns {
                        txn.update_many(gun, &[file(gun, version)], now()).unwrap();
                    }
                }
                txn.commit().unwrap();
            }
            Backend::Pg(store) => {
                for version in 1..=versions {
                    for gun in guns {
                        let write = GunWrite {
                            files: vec![file(gun, version)],
                            ..GunWrite::default()
                        };
                        store
                            .transact(gun, now(), |_| Ok::<_, TrustError>((write, ())))
                            .await
                            .unwrap();
                    }
                }
            }
        }
    }

    /// Waits until this process has heard of every committed change (PostgreSQL: its own
    /// writes come back by notification and poll too, and drop what they touch again).
    async fn settle(&self) {
        if let Backend::Pg(store) = &self.service.store {
            let (_, last) = store.status().await.unwrap();
            while self.service.last_change.load(Ordering::Acquire) != last {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            // The notification, sent at commit, is in by now.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Turns content trust off in the database, behind the service's back.
    async fn switch_off_behind(&self) {
        match &self.service.store {
            Backend::Redb(store) => {
                let txn = store.write().unwrap();
                txn.set_enabled(false).unwrap();
                txn.commit().unwrap();
            }
            Backend::Pg(store) => {
                let client = store.control().pool().get().await.unwrap();
                client
                    .execute("UPDATE trust_meta SET content_trust = false", &[])
                    .await
                    .unwrap();
            }
        }
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
    async fn publish(&self, tags: &[(&str, &[u8])]) -> Bytes {
        let timestamp = self
            .service
            .public_key(GUN, &role("timestamp"))
            .await
            .unwrap();
        let snapshot = self
            .service
            .public_key(GUN, &role("snapshot"))
            .await
            .unwrap();
        let root = self.root_file(1, &timestamp, &snapshot);
        let parts = vec![
            (role("root"), root.clone()),
            (role("targets"), self.targets_file(1, tags)),
        ];
        self.service.update(GUN, parts, now()).await.unwrap();
        root
    }

    async fn get(&self, what: MetadataRef) -> Result<Metadata, TrustError> {
        self.service.get(GUN, &what, now()).await
    }

    async fn current(&self, name: &str) -> Bytes {
        self.get(MetadataRef::Current(role(name)))
            .await
            .unwrap()
            .bytes
    }
}

async fn server_keys_are_pending_until_a_root_pins_one(f: Fixture) {
    let timestamp = role("timestamp");
    let first = f.service.public_key(GUN, &timestamp).await.unwrap();
    let second = f.service.public_key(GUN, &timestamp).await.unwrap();
    assert_ne!(first.id(), second.id(), "each call creates a pending key");
    let snapshot = f.service.public_key(GUN, &role("snapshot")).await.unwrap();
    let root = f.root_file(1, &second, &snapshot);
    let parts = vec![
        (role("root"), root),
        (role("targets"), f.targets_file(1, &[])),
    ];
    f.service.update(GUN, parts, now()).await.unwrap();
    // The pinned key from now on, and it signed the timestamp.
    for _ in 0..2 {
        assert_eq!(
            f.service.public_key(GUN, &timestamp).await.unwrap().id(),
            second.id()
        );
    }
    let stamp: Value = serde_json::from_slice(&f.current("timestamp").await).unwrap();
    assert_eq!(stamp["signatures"][0]["keyid"], second.id());
    // The key nobody pinned is gone.
    assert!(!f.holds(GUN, "timestamp", &first.id()).await);
    assert!(f.holds(GUN, "timestamp", &second.id()).await);
    // Rotation hands out a new key without changing the pinned one yet.
    let rotated = f.service.rotate_key(GUN, &timestamp).await.unwrap();
    assert_ne!(rotated.id(), second.id());
    assert_eq!(
        f.service.public_key(GUN, &timestamp).await.unwrap().id(),
        second.id()
    );
    assert!(matches!(
        f.service.public_key(GUN, &role("targets")).await,
        Err(TrustError::NotServerManaged(_))
    ));
}

async fn an_update_is_served_by_role_checksum_and_version(f: Fixture) {
    let root = f.publish(&[("v1", b"manifest")]).await;
    assert_eq!(f.current("root").await, root);
    let snapshot = f.current("snapshot").await;
    let timestamp = f.current("timestamp").await;
    assert_eq!((version_of(&snapshot), version_of(&timestamp)), (1, 1));
    let sha = hex::encode(Sha256::digest(&snapshot));
    let by_sum = f
        .get(MetadataRef::Checksum {
            role: role("snapshot"),
            sha256: sha.clone(),
        })
        .await;
    assert_eq!(by_sum.unwrap().bytes, snapshot);
    // The checksum must be of that role.
    assert!(matches!(
        f.get(MetadataRef::Checksum {
            role: role("targets"),
            sha256: sha
        })
        .await,
        Err(TrustError::NotFound { .. })
    ));
    let v1 = f
        .get(MetadataRef::Version {
            role: role("root"),
            version: 1,
        })
        .await;
    assert_eq!(v1.unwrap().bytes, root);
    assert!(matches!(
        f.get(MetadataRef::Current(role("targets/releases"))).await,
        Err(TrustError::NotFound { .. })
    ));
    // A second publish of targets: snapshot and timestamp move on.
    let parts = vec![(role("targets"), f.targets_file(2, &[("v2", b"other")]))];
    f.service.update(GUN, parts, now()).await.unwrap();
    assert_eq!(version_of(&f.current("snapshot").await), 2);
    assert_eq!(version_of(&f.current("timestamp").await), 2);
    // The same version again is refused and changes nothing.
    let parts = vec![(role("targets"), f.targets_file(2, &[("v3", b"x")]))];
    let err = f.service.update(GUN, parts, now()).await.unwrap_err();
    assert!(matches!(err, TrustError::OldVersion(_)), "{err}");
    assert_eq!(version_of(&f.current("timestamp").await), 2);
    let feed = f.service.changefeed(Some(GUN), None, 0).await.unwrap();
    assert_eq!(feed.count, 2);
    assert_eq!(feed.records[1].version, 2);
}

async fn an_expired_timestamp_is_regenerated_on_get(f: Fixture) {
    f.publish(&[]).await;
    let later = now() + Duration::days(15);
    let fresh = f
        .service
        .get(GUN, &MetadataRef::Current(role("timestamp")), later)
        .await
        .unwrap();
    assert_eq!(version_of(&fresh.bytes), 2);
    // Stored: a plain read now serves it, and the version index has both.
    assert_eq!(f.current("timestamp").await, fresh.bytes);
    assert!(
        f.get(MetadataRef::Version {
            role: role("timestamp"),
            version: 1
        })
        .await
        .is_ok()
    );
    // Not expired: served as is.
    let again = f
        .service
        .get(GUN, &MetadataRef::Current(role("timestamp")), later)
        .await
        .unwrap();
    assert_eq!(again.bytes, fresh.bytes);
}

async fn signed_targets_follow_every_change(f: Fixture) {
    let digest = |bytes: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    assert!(f.service.signed_targets("samples/app").await.is_empty());
    f.publish(&[("v1", b"one")]).await;
    f.settle().await;
    let signed = f.service.signed_targets("samples/app").await;
    assert!(!signed.is_empty());
    assert!(signed.tag_has_digest("v1", &digest(b"one")));
    assert!(signed.has_digest(&digest(b"one")));
    assert!(f.service.signed_targets("samples/other").await.is_empty());
    // Cached, and dropped when the repository's trust data changes.
    assert!(Arc::ptr_eq(
        &signed,
        &f.service.signed_targets("samples/app").await
    ));
    let parts = vec![(role("targets"), f.targets_file(2, &[("v1", b"two")]))];
    f.service.update(GUN, parts, now()).await.unwrap();
    let signed = f.service.signed_targets("samples/app").await;
    assert!(signed.tag_has_digest("v1", &digest(b"two")));
    assert!(!signed.tag_has_digest("v1", &digest(b"one")));
    assert!(!signed.has_digest(&digest(b"one")));
    f.service.delete(GUN).await.unwrap();
    assert!(f.service.signed_targets("samples/app").await.is_empty());
    assert!(matches!(
        f.get(MetadataRef::Current(role("root"))).await,
        Err(TrustError::NotFound { .. })
    ));
}

async fn disabling_deletes_all_trust_data(f: Fixture) {
    f.publish(&[("v1", b"one")]).await;
    assert!(!f.service.signed_targets("samples/app").await.is_empty());
    f.service
        .set_status(ContentTrustStatus::Disabled)
        .await
        .unwrap();
    assert_eq!(f.service.status(), ContentTrustStatus::Disabled);
    assert!(f.service.signed_targets("samples/app").await.is_empty());
    assert!(matches!(
        f.get(MetadataRef::Current(role("root"))).await,
        Err(TrustError::Disabled)
    ));
    assert!(matches!(
        f.service.public_key(GUN, &role("timestamp")).await,
        Err(TrustError::Disabled)
    ));
    f.service
        .set_status(ContentTrustStatus::Enabled)
        .await
        .unwrap();
    assert!(matches!(
        f.get(MetadataRef::Current(role("root"))).await,
        Err(TrustError::NotFound { .. })
    ));
}

async fn writes_check_the_switch_inside_their_transaction(f: Fixture) {
    f.publish(&[("v1", b"one")]).await;
    // A disable committed after the (still enabled) in-memory switch was read.
    f.switch_off_behind().await;
    assert_eq!(f.service.status(), ContentTrustStatus::Enabled);
    let parts = vec![(role("targets"), f.targets_file(2, &[("v2", b"two")]))];
    assert!(matches!(
        f.service.update(GUN, parts, now()).await,
        Err(TrustError::Disabled)
    ));
    for name in ["timestamp", "snapshot"] {
        assert!(matches!(
            f.service
                .public_key("127.0.0.1:5443/samples/new", &role(name))
                .await,
            Err(TrustError::Disabled)
        ));
        assert!(matches!(
            f.service.rotate_key(GUN, &role(name)).await,
            Err(TrustError::Disabled)
        ));
    }
    assert!(matches!(
        f.service.delete(GUN).await,
        Err(TrustError::Disabled)
    ));
    // The refresh of an expired timestamp does not write either.
    let later = now() + Duration::days(15);
    let stale = f
        .service
        .get(GUN, &MetadataRef::Current(role("timestamp")), later)
        .await;
    assert!(matches!(stale, Err(TrustError::Disabled)), "{stale:?}");
    assert_eq!(f.stored_version("targets").await, 1);
    assert_eq!(f.stored_version("timestamp").await, 1);
}

async fn pending_keys_are_bounded_per_gun_and_role(f: Fixture) {
    let gun = "made.up/samples/app";
    let timestamp = role("timestamp");
    let mut keys = Vec::new();
    for _ in 0..10 {
        keys.push(f.service.public_key(gun, &timestamp).await.unwrap());
    }
    let mut held = Vec::new();
    for key in &keys {
        held.push(f.holds(gun, "timestamp", &key.id()).await);
    }
    let mut expected = vec![false; 10 - MAX_PENDING_KEYS];
    expected.extend(vec![true; MAX_PENDING_KEYS]);
    assert_eq!(held, expected);
    // A pinned key is never dropped by later rotations.
    f.publish(&[]).await;
    let pinned = f.service.public_key(GUN, &timestamp).await.unwrap();
    for _ in 0..(MAX_PENDING_KEYS + 2) {
        f.service.rotate_key(GUN, &timestamp).await.unwrap();
    }
    assert_eq!(
        f.service.public_key(GUN, &timestamp).await.unwrap().id(),
        pinned.id()
    );
}

async fn every_gun_of_a_repository_may_sign_a_tag(f: Fixture) {
    let digest = |bytes: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    f.publish(&[("v1", b"real")]).await;
    // Another host's GUN for the same repository, sorting first, signs v1 differently.
    let other = "a.example/samples/app";
    let (root_key, targets_key) = (TestKey::root(other), TestKey::ecdsa());
    let timestamp = f
        .service
        .public_key(other, &role("timestamp"))
        .await
        .unwrap();
    let snapshot = f
        .service
        .public_key(other, &role("snapshot"))
        .await
        .unwrap();
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
    f.service.update(other, parts, now()).await.unwrap();
    let signed = f.service.signed_targets("samples/app").await;
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

async fn changefeed_pages_are_capped(f: Fixture) {
    f.timestamps(&[GUN], 1005).await;
    for records in [5000, -5000, i64::MAX, i64::MIN] {
        let feed = f.service.changefeed(None, None, records).await.unwrap();
        assert_eq!(feed.count, 1000, "{records}");
    }
    assert_eq!(
        f.service
            .changefeed(Some(GUN), None, 0)
            .await
            .unwrap()
            .count,
        100
    );
}

async fn a_filtered_changefeed_still_fills_its_pages(f: Fixture) {
    let other = "registry.test/other";
    // Change ids alternate: odd ones are GUN's, even ones the other's.
    f.timestamps(&[GUN, other], 6).await;
    let ids = async |change_id: Option<&str>, records| -> Vec<String> {
        let feed = f
            .service
            .changefeed_of(|g| g == GUN, change_id, records)
            .await
            .unwrap();
        assert_eq!(feed.count, feed.records.len());
        assert!(feed.records.iter().all(|c| c.gun == GUN));
        feed.records.into_iter().map(|c| c.id).collect()
    };
    assert_eq!(ids(None, 2).await, ["1", "3"]);
    assert_eq!(ids(Some("3"), 2).await, ["5", "7"]);
    assert_eq!(
        ids(Some("9"), 5).await,
        ["11"],
        "only the end gives a short page"
    );
    assert_eq!(ids(None, -2).await, ["9", "11"]);
    assert_eq!(ids(Some("9"), -2).await, ["5", "7"]);
    assert_eq!(ids(Some("3"), -5).await, ["1"]);
    assert_eq!(
        f.service
            .changefeed(None, Some("3"), 2)
            .await
            .unwrap()
            .count,
        2
    );
}

/// PostgreSQL: a change whose notification never arrived (committed here without one)
/// still reaches the cache, by the poll, within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_notification_is_caught_by_the_poll() {
    let f = Fixture::postgres().await;
    f.publish(&[("v1", b"one")]).await;
    f.settle().await;
    let cached = f.service.signed_targets("samples/app").await;
    assert!(!cached.is_empty());
    let Backend::Pg(store) = &f.service.store else {
        unreachable!("a PostgreSQL fixture")
    };
    let mut client = store.control().pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.batch_execute(&format!(
        "DELETE FROM trust_current WHERE gun = '{GUN}';
         UPDATE trust_change_counter SET last_change = last_change + 1;
         INSERT INTO trust_changes (id, created_at, gun, version, sha256, category)
             SELECT last_change, '', '{GUN}', 0, '', 'deletion' FROM trust_change_counter;"
    ))
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let committed = std::time::Instant::now();
    while !f.service.signed_targets("samples/app").await.is_empty() {
        assert!(
            committed.elapsed() < std::time::Duration::from_secs(1),
            "the poll did not drop the cached targets"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// PostgreSQL: when the listener's connection is lost, whatever was cached may have
/// missed a change and is dropped; the listener reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listener_drops_the_cache_and_reconnects() {
    let f = Fixture::postgres().await;
    f.publish(&[("v1", b"one")]).await;
    f.settle().await;
    let cached = f.service.signed_targets("samples/app").await;
    assert!(Arc::ptr_eq(
        &cached,
        &f.service.signed_targets("samples/app").await
    ));
    let Backend::Pg(store) = &f.service.store else {
        unreachable!("a PostgreSQL fixture")
    };
    let client = store.control().pool().get().await.unwrap();
    let ended = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'portcullis trust listener'
               AND datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(ended.len(), 1, "one listener");
    let lost = std::time::Instant::now();
    while Arc::ptr_eq(&cached, &f.service.signed_targets("samples/app").await) {
        assert!(
            lost.elapsed() < std::time::Duration::from_secs(5),
            "cache kept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    while !f.service.listening.load(Ordering::Acquire) {
        assert!(
            lost.elapsed() < std::time::Duration::from_secs(5),
            "no reconnect"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
