//! The redb store's tests (`store/tests.rs`) on the PostgreSQL store, against a real
//! PostgreSQL (a fresh database each), and what only it has: writes of one GUN from
//! concurrent transactions are serialized.

use std::time::Duration;

use super::*;
use crate::trust::store::NewFile;

const GUN: &str = "127.0.0.1:5443/samples/app";
const OTHER: &str = "127.0.0.1:5443/samples/other";

async fn store() -> PgTrustStore {
    let url = portcullis_test_support::postgres::Postgres::shared().database();
    let store = PgTrustStore::new(PgControl::connect(&url).await.unwrap());
    store.set_enabled(true, now()).await.unwrap();
    store
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

async fn write(store: &PgTrustStore, gun: &str, write: GunWrite) -> Result<(), TrustStoreError> {
    store
        .transact(gun, now(), |_| Ok::<_, TrustStoreError>((write, ())))
        .await
        .map(|_| ())
}

async fn commit(
    store: &PgTrustStore,
    gun: &str,
    files: Vec<NewFile>,
) -> Result<(), TrustStoreError> {
    let files = GunWrite {
        files,
        ..GunWrite::default()
    };
    write(store, gun, files).await
}

async fn keys(store: &PgTrustStore, gun: &str, role: &str, ids: &[&str]) {
    for id in ids {
        let key = GunWrite {
            keys: vec![(role.into(), (*id).into(), id.as_bytes().to_vec())],
            ..GunWrite::default()
        };
        write(store, gun, key).await.unwrap();
    }
}

async fn held(store: &PgTrustStore, gun: &str, role: &str, id: &str) -> bool {
    let data = store.gun(gun, true).await.unwrap();
    data.keys.contains_key(&(role.to_owned(), id.to_owned()))
}

fn ids(changes: Vec<Change>) -> Vec<String> {
    changes.into_iter().map(|c| c.id).collect()
}

#[tokio::test]
async fn updates_are_indexed_by_version_and_checksum() {
    let store = store().await;
    commit(&store, GUN, vec![file("root", 1), file("timestamp", 1)])
        .await
        .unwrap();
    commit(&store, GUN, vec![file("root", 2)]).await.unwrap();
    let data = store.gun(GUN, false).await.unwrap();
    let current = &data.current["root"];
    assert_eq!((current.version, current.stored_at), (2, 1_800_000_000));
    assert_eq!(current.bytes, file("root", 2).bytes);
    let v1 = store.version(GUN, "root", 1).await.unwrap().unwrap();
    assert_eq!(v1.bytes, file("root", 1).bytes);
    let sha = hex::encode(Sha256::digest(&file("root", 1).bytes));
    let by_sum = store.by_checksum(GUN, &sha).await.unwrap().unwrap();
    assert_eq!((by_sum.role.as_str(), by_sum.version), ("root", 1));
    assert!(store.by_checksum(OTHER, &sha).await.unwrap().is_none());
    assert!(!data.current.contains_key("targets"));
    assert_eq!(store.guns_of("samples/app").await.unwrap(), [GUN]);
    assert!(store.guns_of("samples").await.unwrap().is_empty());
}

#[tokio::test]
async fn versions_must_increase_and_a_failing_update_writes_nothing() {
    let store = store().await;
    commit(&store, GUN, vec![file("root", 1), file("targets", 3)])
        .await
        .unwrap();
    for stale in [file("targets", 3), file("targets", 2)] {
        // `root` v2 comes first and is fine, but the whole update must fail.
        let err = commit(&store, GUN, vec![file("root", 2), stale])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TrustStoreError::OldVersion { role, stored: 3, .. } if role == "targets"),
            "{err}"
        );
    }
    let data = store.gun(GUN, false).await.unwrap();
    assert_eq!(data.current["root"].version, 1);
    assert!(store.version(GUN, "root", 2).await.unwrap().is_none());
    let sha = hex::encode(Sha256::digest(&file("root", 2).bytes));
    assert!(store.by_checksum(GUN, &sha).await.unwrap().is_none());
    assert_eq!(
        ids(store.changes_of(|_| true, 0, 10).await.unwrap()),
        Vec::<String>::new()
    );
    // Another GUN's versions are its own.
    commit(&store, OTHER, vec![file("targets", 1)])
        .await
        .unwrap();
}

#[tokio::test]
async fn delete_removes_one_gun_and_is_in_the_changefeed() {
    let store = store().await;
    commit(&store, GUN, vec![file("root", 1), file("timestamp", 1)])
        .await
        .unwrap();
    commit(&store, OTHER, vec![file("root", 1), file("timestamp", 1)])
        .await
        .unwrap();
    keys(&store, GUN, "timestamp", &["k1"]).await;
    store.delete(GUN, now()).await.unwrap();
    assert!(store.gun(GUN, true).await.unwrap().current.is_empty());
    assert!(store.version(GUN, "timestamp", 1).await.unwrap().is_none());
    assert!(!held(&store, GUN, "timestamp", "k1").await);
    assert!(!store.gun(OTHER, false).await.unwrap().current.is_empty());
    // Publishing again starts over at any version.
    commit(&store, GUN, vec![file("root", 1)]).await.unwrap();

    let feed = store.changes_of(|_| true, 0, 100).await.unwrap();
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
    let of_gun = |g: &str| g == GUN;
    assert_eq!(
        ids(store.changes_of(of_gun, 0, 100).await.unwrap()),
        ["1", "3"]
    );
    assert_eq!(ids(store.changes_of(|_| true, 1, 1).await.unwrap()), ["2"]);
    assert_eq!(
        ids(store.changes_of(|_| true, -1, 2).await.unwrap()),
        ["2", "3"]
    );
    assert_eq!(
        ids(store.changes_of(|_| true, 3, -5).await.unwrap()),
        ["1", "2"]
    );
    assert!(store.changes_of(|_| true, 3, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn disabling_deletes_everything_and_writes_then_refuse() {
    let store = store().await;
    commit(&store, GUN, vec![file("root", 1)]).await.unwrap();
    keys(&store, OTHER, "snapshot", &["pending"]).await;
    store.set_enabled(false, now()).await.unwrap();
    assert_eq!(
        store.status().await.unwrap(),
        (false, 1),
        "one deletion record"
    );
    assert!(store.gun(GUN, false).await.unwrap().current.is_empty());
    assert!(!held(&store, OTHER, "snapshot", "pending").await);
    let err = commit(&store, GUN, vec![file("root", 2)])
        .await
        .unwrap_err();
    assert!(matches!(err, TrustStoreError::Disabled), "{err}");
    assert!(matches!(
        store.delete(GUN, now()).await,
        Err(TrustStoreError::Disabled)
    ));
}

#[tokio::test]
async fn only_the_newest_pending_keys_are_kept() {
    let store = store().await;
    // Ids in the opposite of creation order: age is the sequence, not the id.
    keys(&store, GUN, "timestamp", &["f", "e", "d", "c", "b", "a"]).await;
    let retain = GunWrite {
        retain: vec![("timestamp".into(), vec!["f".into()], 2)],
        ..GunWrite::default()
    };
    write(&store, GUN, retain).await.unwrap();
    let mut kept = Vec::new();
    for id in ["f", "e", "d", "c", "b", "a"] {
        if held(&store, GUN, "timestamp", id).await {
            kept.push(id);
        }
    }
    assert_eq!(kept, ["f", "b", "a"]);
}

#[tokio::test]
async fn delete_spares_guns_that_extend_its_name() {
    let store = store().await;
    let longer = format!("{GUN}/sub");
    commit(&store, GUN, vec![file("root", 1)]).await.unwrap();
    commit(&store, &longer, vec![file("root", 1)])
        .await
        .unwrap();
    keys(&store, &longer, "timestamp", &["k1"]).await;
    store.delete(GUN, now()).await.unwrap();
    assert!(store.gun(GUN, false).await.unwrap().current.is_empty());
    assert!(!store.gun(&longer, false).await.unwrap().current.is_empty());
    assert!(held(&store, &longer, "timestamp", "k1").await);
}

/// Two transactions on one GUN: the second reads the GUN only after the first commits,
/// so it sees what the first wrote; another GUN does not wait. The first runs in a
/// process-like setting of its own (thread, runtime, pool) and holds the GUN's lock until
/// released.
#[tokio::test]
async fn writes_of_one_gun_are_serialized() {
    let url = portcullis_test_support::postgres::Postgres::shared().database();
    let store = PgTrustStore::new(PgControl::connect(&url).await.unwrap());
    store.set_enabled(true, now()).await.unwrap();
    let (entered, wait) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let first = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = PgTrustStore::new(PgControl::connect(&url).await.unwrap());
            store
                .transact(GUN, now(), move |_| {
                    entered.send(()).unwrap();
                    released.recv_timeout(Duration::from_secs(10)).unwrap();
                    let write = GunWrite {
                        files: vec![file("targets", 1)],
                        ..GunWrite::default()
                    };
                    Ok::<_, TrustStoreError>((write, ()))
                })
                .await
                .unwrap();
        });
    });
    tokio::task::spawn_blocking(move || wait.recv_timeout(Duration::from_secs(10)).unwrap())
        .await
        .unwrap();
    // Another GUN is not held up.
    tokio::time::timeout(
        Duration::from_secs(5),
        commit(&store, OTHER, vec![file("targets", 1)]),
    )
    .await
    .unwrap()
    .unwrap();
    let second = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .transact(GUN, now(), |data| {
                    let seen = data.current.get("targets").map(|f| f.version);
                    Ok::<_, TrustStoreError>((GunWrite::default(), seen))
                })
                .await
                .unwrap()
                .0
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the second write waits for the lock");
    release.send(()).unwrap();
    tokio::task::spawn_blocking(move || first.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        second.await.unwrap(),
        Some(1),
        "and then sees the first's write"
    );
}
