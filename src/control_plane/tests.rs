//! The token-signing key ring and the pushed policies on both control planes: redb, and
//! a real PostgreSQL started by the test (`portcullis_test_support::postgres`). Two
//! "gateways" are two stores over one database sharing one key-encryption key.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ControlDb, PgControl};
use crate::gateway::jwt::{self, PrincipalKind, Subject, TokenUse};
use crate::gateway::signing_keys::{OVERLAP, SigningKeyError, SigningKeys};
use crate::identity::now_unix;
use crate::policy::pushed::{Author, PushError, PushedPolicies};
use crate::policy::{PolicyEngine, PolicyFile};
use crate::trust::KeyAlgorithm;
use crate::trust::kek::PassphraseSource;
use crate::trust::service::TrustService;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Redb,
    Postgres,
}

const BACKENDS: [Backend; 2] = [Backend::Redb, Backend::Postgres];

async fn control_db(backend: Backend, dir: &Path) -> ControlDb {
    match backend {
        Backend::Redb => ControlDb::Embedded(Arc::new(
            crate::control_plane::EmbeddedDb::open(&dir.join("control.redb")).unwrap(),
        )),
        Backend::Postgres => {
            let url = tokio::task::spawn_blocking(|| {
                portcullis_test_support::postgres::Postgres::shared().database()
            })
            .await
            .unwrap();
            ControlDb::Postgres(PgControl::connect(&url).await.unwrap())
        }
    }
}

/// A trust service (for its key-encryption key) in `dir` unlocked by `passphrase`.
fn trust(dir: &Path, passphrase: &str) -> Arc<TrustService> {
    std::fs::create_dir_all(dir).unwrap();
    let db = Arc::new(crate::control_plane::EmbeddedDb::open(&dir.join("trust.redb")).unwrap());
    TrustService::open(
        db,
        KeyAlgorithm::Ecdsa,
        dir,
        &PassphraseSource::Value(passphrase.to_owned().into()),
    )
    .unwrap()
    .0
}

async fn keys(db: &ControlDb, trust: &Arc<TrustService>, dir: &Path) -> Arc<SigningKeys> {
    SigningKeys::open(
        db.clone(),
        Arc::clone(trust),
        dir,
        "registry.test",
        Duration::from_secs(300),
    )
    .await
    .unwrap()
}

fn admin_subject() -> Subject {
    Subject {
        sub: "admin".into(),
        principal: PrincipalKind::Admin,
        slot: None,
        password_created: None,
        password_id: None,
    }
}

fn mint(keys: &SigningKeys) -> String {
    keys.issuer()
        .sign(TokenUse::Access, admin_subject(), vec![], now_unix())
        .unwrap()
        .token
}

fn verifies(keys: &SigningKeys, token: &str) -> bool {
    keys.issuer()
        .verify(token, TokenUse::Access, now_unix())
        .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn gateways_share_one_ring_and_rotation_keeps_old_tokens_valid() {
    for backend in BACKENDS {
        let tmp = tempfile::tempdir().unwrap();
        let db = control_db(backend, tmp.path()).await;
        let kek = trust(&tmp.path().join("kek"), "shared passphrase");
        // Two gateways starting at once create one key between them.
        let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
        let (a, b) = tokio::join!(keys(&db, &kek, &dir_a), keys(&db, &kek, &dir_b));
        assert_eq!(a.issuer().kid(), b.issuer().kid(), "{backend:?}");
        assert_eq!(a.list().await.unwrap().len(), 1, "{backend:?}");
        let first_kid = a.issuer().kid();
        let old = mint(&a);
        assert!(verifies(&b, &old), "{backend:?}: B accepts A's token");

        let rotated = b.rotate(false).await.unwrap();
        assert_ne!(rotated.kid, first_kid);
        assert_eq!(b.issuer().kid(), rotated.kid, "{backend:?}");
        // A learns of it on its refresh (a notification or the poll).
        use super::sync::Refresh;
        a.refresh().await;
        assert_eq!(a.issuer().kid(), rotated.kid, "{backend:?}");
        let new = mint(&a);
        for gateway in [&a, &b] {
            assert!(
                verifies(gateway, &old),
                "{backend:?}: old token in the window"
            );
            assert!(verifies(gateway, &new), "{backend:?}: new token");
        }
        let listed = a.list().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].kid, first_kid);
        assert!(!listed[0].signing);
        let retired = listed[0].retired.unwrap();
        assert_eq!(listed[0].drops_at, Some(retired + OVERLAP));
        assert!(listed[1].signing && listed[1].retired.is_none());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_dropping_the_previous_keys_refuses_their_tokens() {
    for backend in BACKENDS {
        let tmp = tempfile::tempdir().unwrap();
        let db = control_db(backend, tmp.path()).await;
        let kek = trust(tmp.path(), "pass");
        let (a, b) = (
            keys(&db, &kek, tmp.path()).await,
            keys(&db, &kek, tmp.path()).await,
        );
        let first = mint(&a);
        a.rotate(false).await.unwrap();
        let second = mint(&a);
        let rotated = a.rotate(true).await.unwrap();
        use super::sync::Refresh;
        b.refresh().await;
        let listed = b.list().await.unwrap();
        assert_eq!(listed.len(), 1, "{backend:?}");
        assert_eq!(listed[0].kid, rotated.kid);
        for gateway in [&a, &b] {
            for token in [&first, &second] {
                assert!(matches!(
                    gateway.issuer().verify(token, TokenUse::Access, now_unix()),
                    Err(jwt::JwtError::UnknownKey(_))
                ));
            }
            assert!(verifies(gateway, &mint(&a)), "{backend:?}");
        }
    }
}

#[test]
fn a_retired_key_leaves_the_ring_when_its_window_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = trust(tmp.path(), "pass");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(control_db(Backend::Redb, tmp.path()));
    let keys = runtime.block_on(keys(&db, &kek, tmp.path()));
    let old_kid = keys.issuer().kid();
    runtime.block_on(keys.rotate(false)).unwrap();
    let retired = runtime.block_on(keys.list()).unwrap()[0].retired.unwrap();
    let stored = runtime
        .block_on(super::signing_keys::SigningKeyStore::new(db).list())
        .unwrap();
    let ring_at = |now| crate::gateway::signing_keys::ring_of(&kek, &stored, now, None).unwrap();
    assert!(ring_at(retired + OVERLAP).kids().any(|k| k == old_kid));
    assert!(!ring_at(retired + OVERLAP + 1).kids().any(|k| k == old_kid));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_legacy_key_file_becomes_the_first_key() {
    let tmp = tempfile::tempdir().unwrap();
    let legacy = crate::trust::signer::random_p256_key();
    let pem = p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&legacy, Default::default()).unwrap();
    let file = tmp.path().join(jwt::SIGNING_KEY_FILE);
    std::fs::write(&file, pem.as_bytes()).unwrap();
    let db = control_db(Backend::Redb, tmp.path()).await;
    let kek = trust(tmp.path(), "pass");
    let keys = keys(&db, &kek, tmp.path()).await;
    assert_eq!(
        keys.issuer().kid(),
        jwt::key_id(legacy.verifying_key()).unwrap()
    );
    assert!(
        !file.exists(),
        "the plain key file is gone once sealed in the store"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn another_passphrase_does_not_open_the_ring() {
    for backend in BACKENDS {
        let tmp = tempfile::tempdir().unwrap();
        let db = control_db(backend, tmp.path()).await;
        keys(&db, &trust(&tmp.path().join("a"), "one"), tmp.path()).await;
        let err = SigningKeys::open(
            db,
            trust(&tmp.path().join("b"), "another"),
            tmp.path(),
            "registry.test",
            Duration::from_secs(300),
        )
        .await
        .err()
        .unwrap();
        assert!(
            matches!(err, SigningKeyError::Sealed(_)),
            "{backend:?}: {err}"
        );
        assert!(
            err.to_string().contains("same trust key passphrase"),
            "{err}"
        );
    }
}

/// `portcullis trust rotate-kek` re-seals the keys in `control.redb`: the ring opens with
/// the new key-encryption key only.
#[tokio::test(flavor = "multi_thread")]
async fn keys_are_resealed_for_a_new_key_encryption_key() {
    let tmp = tempfile::tempdir().unwrap();
    let db = control_db(Backend::Redb, tmp.path()).await;
    let (old, new) = (
        trust(&tmp.path().join("old"), "old"),
        trust(&tmp.path().join("new"), "new"),
    );
    let kid = keys(&db, &old, tmp.path()).await.issuer().kid();
    let ControlDb::Embedded(redb) = &db else {
        unreachable!()
    };
    let count = crate::gateway::signing_keys::reseal_embedded(redb, old.kek(), new.kek()).unwrap();
    assert_eq!(count, 1);
    assert_eq!(keys(&db, &new, tmp.path()).await.issuer().kid(), kid);
    let err = SigningKeys::open(db, old, tmp.path(), "s", Duration::from_secs(1)).await;
    assert!(matches!(err, Err(SigningKeyError::Sealed(_))));
}

/// A rotation through one gateway reaches a following one by notification, well before
/// its poll.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_is_announced_to_listening_gateways() {
    let tmp = tempfile::tempdir().unwrap();
    let db = control_db(Backend::Postgres, tmp.path()).await;
    let kek = trust(tmp.path(), "pass");
    let a = keys(&db, &kek, tmp.path()).await;
    let b = keys(&db, &kek, tmp.path()).await;
    b.spawn_sync();
    // The listener's first refresh (on listening) has run once the ring is read again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let rotated = a.rotate(false).await.unwrap();
    while b.issuer().kid() != rotated.kid {
        // Under the 5 s poll: the notification did it.
        assert!(started.elapsed() < Duration::from_secs(4), "not announced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn file(name: &str, text: &str) -> PolicyFile {
    PolicyFile {
        name: name.into(),
        text: text.into(),
    }
}

fn author() -> Author {
    Author {
        name: "admin".into(),
        message: Some("from CI".into()),
    }
}

const FORBID_PROD: &str = "@id(\"no-prod\")\nforbid(principal, action, resource)\n\
                           when { resource.name like \"prod/*\" };\n";

#[tokio::test(flavor = "multi_thread")]
async fn pushed_policies_are_versioned_shared_and_rolled_back() {
    for backend in BACKENDS {
        let tmp = tempfile::tempdir().unwrap();
        let db = control_db(backend, tmp.path()).await;
        let engine_a = Arc::new(PolicyEngine::load(&[]).unwrap());
        let engine_b = Arc::new(PolicyEngine::load(&[]).unwrap());
        let base = engine_a.policy_count();
        let a = PushedPolicies::open(db.clone(), Arc::clone(&engine_a))
            .await
            .unwrap();
        let b = PushedPolicies::open(db.clone(), Arc::clone(&engine_b))
            .await
            .unwrap();

        let v1 = a
            .push(vec![file("prod.cedar", FORBID_PROD)], author())
            .await
            .unwrap();
        assert_eq!(v1.version, 1, "{backend:?}");
        assert_eq!(v1.sha256.len(), 64);
        assert_eq!(engine_a.policy_count(), base + 1);
        use super::sync::Refresh;
        b.refresh().await;
        assert_eq!(engine_b.pushed_version(), 1, "{backend:?}");
        assert_eq!(engine_b.policy_count(), base + 1);

        let v2 = b.push(vec![], author()).await.unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(engine_b.policy_count(), base);
        let v3 = b.rollback(1, author()).await.unwrap();
        assert_eq!((v3.version, v3.rollback_of), (3, Some(1)));
        assert_eq!(v3.sha256, v1.sha256, "same files, same hash");
        a.refresh().await;
        assert_eq!(engine_a.pushed_version(), 3);
        assert_eq!(engine_a.policy_count(), base + 1);
        let history = a.history().await.unwrap();
        let versions: Vec<i64> = history.iter().map(|v| v.version).collect();
        assert_eq!(versions, [1, 2, 3], "{backend:?}");
        assert_eq!(history[0].message.as_deref(), Some("from CI"));
        assert!(matches!(
            a.rollback(9, author()).await,
            Err(PushError::NotFound(9))
        ));

        // A restarted gateway starts with the version in force.
        let engine_c = Arc::new(PolicyEngine::load(&[]).unwrap());
        PushedPolicies::open(db, Arc::clone(&engine_c))
            .await
            .unwrap();
        assert_eq!(engine_c.pushed_version(), 3);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_push_is_refused_with_its_place_and_changes_nothing() {
    for backend in BACKENDS {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("policies");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("local.cedar"), FORBID_PROD).unwrap();
        let db = control_db(backend, tmp.path()).await;
        let engine = Arc::new(PolicyEngine::load(std::slice::from_ref(&dir)).unwrap());
        let pushed = PushedPolicies::open(db, Arc::clone(&engine)).await.unwrap();
        let count = engine.policy_count();
        let cases = [
            (
                file("tags.cedar", "// ok\nforbid(principal, action resource);\n"),
                "tags.cedar (pushed):2:",
            ),
            (
                file("dup.cedar", FORBID_PROD),
                "duplicate policy id `no-prod`",
            ),
            (
                file("../x.cedar", "forbid(principal, action, resource);"),
                "`../x.cedar`",
            ),
        ];
        for (bad, expected) in cases {
            let err = pushed.push(vec![bad], author()).await.err().unwrap();
            let text = err.to_string();
            assert!(matches!(err, PushError::Invalid(_)), "{backend:?}: {text}");
            assert!(text.contains(expected), "{backend:?}: {text}");
        }
        assert!(pushed.history().await.unwrap().is_empty(), "{backend:?}");
        assert_eq!(engine.policy_count(), count);
        assert_eq!(engine.pushed_version(), 0);
    }
}
