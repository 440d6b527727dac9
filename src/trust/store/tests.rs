use super::*;

const GUN: &str = "127.0.0.1:5443/samples/app";
const OTHER: &str = "127.0.0.1:5443/samples/other";

fn store() -> (tempfile::TempDir, TrustStore) {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::control_plane::EmbeddedDb::open(&dir.path().join("control.redb")).unwrap();
    let store = TrustStore::open(Arc::new(db)).unwrap();
    (dir, store)
}

fn file(role: &str, version: u64) -> NewFile {
    NewFile {
        role: role.into(),
        version,
        bytes: Bytes::from(format!("{{\"{role}\":{version}}}")),
    }
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn commit(store: &TrustStore, gun: &str, files: &[NewFile]) -> Result<(), TrustStoreError> {
    let txn = store.write()?;
    txn.update_many(gun, files, now())?;
    txn.commit()
}

#[test]
fn updates_are_indexed_by_version_and_checksum() {
    let (_dir, store) = store();
    commit(&store, GUN, &[file("root", 1), file("timestamp", 1)]).unwrap();
    commit(&store, GUN, &[file("root", 2)]).unwrap();
    let r = store.read().unwrap();
    let current = r.current(GUN, "root").unwrap().unwrap();
    assert_eq!((current.version, current.stored_at), (2, 1_800_000_000));
    assert_eq!(current.bytes, file("root", 2).bytes);
    assert_eq!(
        r.version(GUN, "root", 1).unwrap().unwrap().bytes,
        file("root", 1).bytes
    );
    let sha = hex::encode(Sha256::digest(&file("root", 1).bytes));
    let by_sum = r.by_checksum(GUN, &sha).unwrap().unwrap();
    assert_eq!((by_sum.role.as_str(), by_sum.version), ("root", 1));
    assert!(r.by_checksum(OTHER, &sha).unwrap().is_none());
    assert!(r.current(GUN, "targets").unwrap().is_none());
    assert_eq!(r.guns().unwrap(), vec![GUN.to_owned()]);
}

#[test]
fn versions_must_increase_and_a_failing_update_writes_nothing() {
    let (_dir, store) = store();
    commit(&store, GUN, &[file("root", 1), file("targets", 3)]).unwrap();
    for stale in [file("targets", 3), file("targets", 2)] {
        // `root` v2 comes first and is fine, but the whole update must fail.
        let err = commit(&store, GUN, &[file("root", 2), stale]).unwrap_err();
        assert!(
            matches!(&err, TrustStoreError::OldVersion { role, stored: 3, .. } if role == "targets"),
            "{err}"
        );
    }
    let r = store.read().unwrap();
    assert_eq!(r.current(GUN, "root").unwrap().unwrap().version, 1);
    assert!(r.version(GUN, "root", 2).unwrap().is_none());
    let sha = hex::encode(Sha256::digest(&file("root", 2).bytes));
    assert!(r.by_checksum(GUN, &sha).unwrap().is_none());
    // Another GUN's versions are its own.
    commit(&store, OTHER, &[file("targets", 1)]).unwrap();
}

#[test]
fn delete_removes_one_gun_and_is_in_the_changefeed() {
    let (_dir, store) = store();
    commit(&store, GUN, &[file("root", 1), file("timestamp", 1)]).unwrap();
    commit(&store, OTHER, &[file("root", 1), file("timestamp", 1)]).unwrap();
    let txn = store.write().unwrap();
    txn.put_server_key(GUN, "timestamp", "k1", b"secret")
        .unwrap();
    txn.delete(GUN, now()).unwrap();
    txn.commit().unwrap();
    let r = store.read().unwrap();
    assert!(r.current(GUN, "root").unwrap().is_none());
    assert!(r.version(GUN, "timestamp", 1).unwrap().is_none());
    assert!(r.server_key(GUN, "timestamp", "k1").unwrap().is_none());
    assert!(r.current(OTHER, "root").unwrap().is_some());
    assert_eq!(r.guns().unwrap(), vec![OTHER.to_owned()]);
    // Publishing again starts over at any version.
    commit(&store, GUN, &[file("root", 1)]).unwrap();

    let feed = store.read().unwrap().changes(None, 0, 100).unwrap();
    let summary: Vec<_> = feed
        .iter()
        .map(|c| {
            (
                c.id.as_str(),
                c.gun.as_str(),
                c.version,
                c.category.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("1", GUN, 1, "update"),
            ("2", OTHER, 1, "update"),
            ("3", GUN, 0, "deletion"),
        ]
    );
    assert_eq!(
        feed[0].sha256,
        hex::encode(Sha256::digest(&file("timestamp", 1).bytes))
    );
    let r = store.read().unwrap();
    let ids = |changes: Vec<Change>| changes.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(ids(r.changes(Some(GUN), 0, 100).unwrap()), ["1", "3"]);
    assert_eq!(ids(r.changes(None, 1, 1).unwrap()), ["2"]);
    assert_eq!(ids(r.changes(None, -1, 2).unwrap()), ["2", "3"]);
    assert_eq!(ids(r.changes(None, 3, -5).unwrap()), ["1", "2"]);
    assert!(r.changes(None, 3, 10).unwrap().is_empty());
}

#[test]
fn delete_all_and_key_retention() {
    let (_dir, store) = store();
    commit(&store, GUN, &[file("root", 1)]).unwrap();
    let txn = store.write().unwrap();
    for id in ["a", "b", "c"] {
        txn.put_server_key(GUN, "snapshot", id, id.as_bytes())
            .unwrap();
    }
    txn.put_server_key(GUN, "timestamp", "t", b"t").unwrap();
    txn.put_server_key(OTHER, "snapshot", "pending", b"p")
        .unwrap();
    txn.retain_server_keys(GUN, "snapshot", &["b".to_owned()], 0)
        .unwrap();
    txn.commit().unwrap();
    let r = store.read().unwrap();
    assert_eq!(r.server_key(GUN, "snapshot", "b").unwrap().unwrap(), b"b");
    assert!(r.server_key(GUN, "snapshot", "a").unwrap().is_none());
    assert!(r.server_key(GUN, "timestamp", "t").unwrap().is_some());
    drop(r);

    let txn = store.write().unwrap();
    assert!(!txn.enabled().unwrap());
    txn.set_enabled(true).unwrap();
    txn.delete_all(now()).unwrap();
    txn.commit().unwrap();
    let r = store.read().unwrap();
    assert!(r.enabled().unwrap());
    assert!(r.guns().unwrap().is_empty());
    assert!(
        r.server_key(OTHER, "snapshot", "pending")
            .unwrap()
            .is_none()
    );
    assert!(r.server_key(GUN, "snapshot", "b").unwrap().is_none());
}

#[test]
fn only_the_newest_pending_keys_are_kept() {
    let (_dir, store) = store();
    let txn = store.write().unwrap();
    // Ids in the opposite of creation order: age is the sequence, not the id.
    for id in ["f", "e", "d", "c", "b", "a"] {
        txn.put_server_key(GUN, "timestamp", id, id.as_bytes())
            .unwrap();
    }
    txn.retain_server_keys(GUN, "timestamp", &["f".to_owned()], 2)
        .unwrap();
    txn.commit().unwrap();
    let r = store.read().unwrap();
    let held: Vec<&str> = ["f", "e", "d", "c", "b", "a"]
        .into_iter()
        .filter(|id| r.server_key(GUN, "timestamp", id).unwrap().is_some())
        .collect();
    assert_eq!(held, ["f", "b", "a"]);
}

#[test]
fn an_uncommitted_write_leaves_nothing() {
    let (_dir, store) = store();
    let txn = store.write().unwrap();
    txn.update_many(GUN, &[file("root", 1)], now()).unwrap();
    drop(txn);
    assert!(
        store
            .read()
            .unwrap()
            .current(GUN, "root")
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .read()
            .unwrap()
            .changes(None, 0, 10)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn delete_spares_guns_that_extend_its_name() {
    let (_dir, store) = store();
    let longer = format!("{GUN}/sub");
    commit(&store, GUN, &[file("root", 1)]).unwrap();
    commit(&store, &longer, &[file("root", 1)]).unwrap();
    let txn = store.write().unwrap();
    txn.put_server_key(&longer, "timestamp", "k1", b"secret")
        .unwrap();
    txn.delete(GUN, now()).unwrap();
    txn.commit().unwrap();
    let r = store.read().unwrap();
    assert!(r.current(GUN, "root").unwrap().is_none());
    assert!(r.current(&longer, "root").unwrap().is_some());
    assert!(r.version(&longer, "root", 1).unwrap().is_some());
    assert!(r.server_key(&longer, "timestamp", "k1").unwrap().is_some());
}
