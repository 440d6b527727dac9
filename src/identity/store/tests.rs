use std::time::Duration;

use portcullis_test_support::postgres::Postgres;

use super::*;
use crate::identity::model::Action;
use crate::identity::scope::{actions_for, parse_rule};

fn open() -> (tempfile::TempDir, Arc<IdentityStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = IdentityStore::open(&dir.path().join("control.redb")).unwrap();
    (dir, store)
}

/// A store on a fresh database of this test binary's PostgreSQL.
async fn open_pg() -> Arc<IdentityStore> {
    open_pg_at(&Postgres::shared().database()).await
}

async fn open_pg_at(url: &str) -> Arc<IdentityStore> {
    let control = PgControl::connect(url).await.unwrap();
    IdentityStore::postgres(control, Duration::from_secs(30))
        .await
        .unwrap()
}

/// Each test runs on both backends: redb in a temporary directory, and PostgreSQL.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_redb {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_dir, store) = super::open();
                    super::$name(store).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::open_pg().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    every_write_bumps_version_and_publishes_a_snapshot,
    system_scope_maps_are_read_only,
    scope_map_in_use_cannot_be_deleted,
    create_errors_name_the_input,
    scope_map_update_shows_in_the_next_snapshot,
    verify_password_follows_every_change,
    expired_password_fails_and_slots_expire_independently,
    token_can_move_to_another_scope_map
);

fn rules(r: &[(&str, &[&str])]) -> Vec<ScopeRule> {
    r.iter().map(|(p, a)| parse_rule(p, a).unwrap()).collect()
}

fn token(name: &str, scope: TokenScope) -> NewToken {
    NewToken {
        name: name.into(),
        scope,
        status: TokenStatus::Enabled,
        passwords: vec![PasswordSlot::Password1, PasswordSlot::Password2],
        expires_at: None,
    }
}

fn secret(created: &TokenWithSecrets, slot: PasswordSlot) -> String {
    created
        .passwords
        .iter()
        .find(|p| p.slot == slot)
        .unwrap()
        .value
        .clone()
}

async fn every_write_bumps_version_and_publishes_a_snapshot(store: Arc<IdentityStore>) {
    let mut rx = store.subscribe();
    let v0 = store.snapshot().version;
    store
        .create_scope_map("readers", "", &rules(&[("a/*", &["content/read"])]))
        .await
        .unwrap();
    assert_eq!(store.snapshot().version, v0 + 1);
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), v0 + 1);
    store
        .create_token(&token("ci-bot", TokenScope::ScopeMap("readers".into())))
        .await
        .unwrap();
    assert_eq!(store.snapshot().version, v0 + 2);
    assert!(store.snapshot().tokens.contains_key("ci-bot"));
    assert_eq!(*rx.borrow_and_update(), v0 + 2);
    // A failed write changes nothing and notifies no one.
    assert!(store.delete_scope_map("readers").await.is_err());
    assert_eq!(store.snapshot().version, v0 + 2);
    assert!(!rx.has_changed().unwrap());
}

#[tokio::test]
async fn reopen_restores_everything_and_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.redb");
    let (version, p1) = {
        let store = IdentityStore::open(&path).unwrap();
        let created = store
            .create_token(&token(
                "pusher",
                TokenScope::Repositories(rules(&[("x/*", &["content/write"])])),
            ))
            .await
            .unwrap();
        let attrs = RepositoryAttributes {
            write_enabled: false,
            ..Default::default()
        };
        store
            .set_repository_attributes("x/y", &attrs)
            .await
            .unwrap();
        (
            store.snapshot().version,
            secret(&created, PasswordSlot::Password1),
        )
    };
    let store = IdentityStore::open(&path).unwrap();
    let snap = store.snapshot();
    assert_eq!(snap.version, version);
    assert_eq!(snap.tokens["pusher"].scope_map, "pusher-scope-map");
    assert!(snap.scope_maps.contains_key("_repositories_pull"));
    assert!(!snap.repository_attributes("x/y").write_enabled);
    assert_eq!(
        store.verify_password("pusher", &p1, now_unix()),
        Ok(PasswordSlot::Password1)
    );
}

async fn system_scope_maps_are_read_only(store: Arc<IdentityStore>) {
    for name in ["_repositories_admin", "_repositories_pull"] {
        assert!(matches!(
            store
                .update_scope_map(name, &ScopeMapUpdate::default())
                .await,
            Err(IdentityStoreError::SystemScopeMap(_))
        ));
        assert!(matches!(
            store.delete_scope_map(name).await,
            Err(IdentityStoreError::SystemScopeMap(_))
        ));
        assert!(matches!(
            store.create_scope_map(name, "", &[]).await,
            Err(IdentityStoreError::SystemScopeMap(_))
        ));
    }
    // But tokens may use them.
    store
        .create_token(&token(
            "puller",
            TokenScope::ScopeMap("_repositories_pull".into()),
        ))
        .await
        .unwrap();
}

async fn scope_map_in_use_cannot_be_deleted(store: Arc<IdentityStore>) {
    store.create_scope_map("shared", "d", &[]).await.unwrap();
    store
        .create_token(&token("user1", TokenScope::ScopeMap("shared".into())))
        .await
        .unwrap();
    let err = store.delete_scope_map("shared").await.unwrap_err();
    assert!(matches!(err, IdentityStoreError::ScopeMapInUse { .. }));
    assert!(err.to_string().contains("`user1`"), "{err}");
    store.delete_token("user1").await.unwrap();
    store.delete_scope_map("shared").await.unwrap();
    assert!(!store.snapshot().scope_maps.contains_key("shared"));
}

async fn create_errors_name_the_input(store: Arc<IdentityStore>) {
    assert!(matches!(
        store
            .create_token(&token(
                "ab",
                TokenScope::ScopeMap("_repositories_pull".into())
            ))
            .await,
        Err(IdentityStoreError::Name(NameError::Invalid { .. }))
    ));
    assert!(matches!(
        store
            .create_token(&token(
                "admin",
                TokenScope::ScopeMap("_repositories_pull".into())
            ))
            .await,
        Err(IdentityStoreError::Name(NameError::Reserved(_)))
    ));
    let err = store
        .create_token(&token("tok01", TokenScope::ScopeMap("nope-map".into())))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "scope map `nope-map` not found");
    store
        .create_token(&token("tok01", TokenScope::Repositories(vec![])))
        .await
        .unwrap();
    let err = store
        .create_token(&token("tok01", TokenScope::Repositories(vec![])))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "token `tok01` already exists");
    let many: Vec<ScopeRule> = (0..=MAX_RULES)
        .map(|i| parse_rule(&format!("r{i}"), &["content/read"]).unwrap())
        .collect();
    assert!(matches!(
        store.create_scope_map("too-many", "", &many).await,
        Err(IdentityStoreError::TooManyRules { .. })
    ));
    assert!(matches!(
        store
            .set_repository_attributes("Bad//Name", &RepositoryAttributes::default())
            .await,
        Err(IdentityStoreError::InvalidRepository(_))
    ));
}

async fn scope_map_update_shows_in_the_next_snapshot(store: Arc<IdentityStore>) {
    store
        .create_token(&token(
            "team-a",
            TokenScope::Repositories(rules(&[("sample/*", &["content/read"])])),
        ))
        .await
        .unwrap();
    let map_of = |store: &IdentityStore| {
        let snap = store.snapshot();
        let name = snap.tokens["team-a"].scope_map.clone();
        snap.scope_maps[&name].clone()
    };
    assert_eq!(actions_for(&map_of(&store), "sample/teama/x").len(), 1);
    store
        .update_scope_map(
            "team-a-scope-map",
            &ScopeMapUpdate {
                description: Some("new".into()),
                add: rules(&[("sample/teamA/*", &["content/write"])]),
                remove: vec![],
            },
        )
        .await
        .unwrap();
    let map = map_of(&store);
    assert_eq!(map.description, "new");
    assert_eq!(
        actions_for(&map, "sample/teama/x"),
        [Action::ContentRead, Action::ContentWrite].into()
    );
    store
        .update_scope_map(
            "team-a-scope-map",
            &ScopeMapUpdate {
                remove: rules(&[("sample/*", &["content/read", "content/delete"])]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        actions_for(&map_of(&store), "sample/teama/x"),
        [Action::ContentWrite].into()
    );
    assert!(actions_for(&map_of(&store), "sample/other").is_empty());
}

async fn verify_password_follows_every_change(store: Arc<IdentityStore>) {
    let created = store
        .create_token(&token(
            "rotator",
            TokenScope::ScopeMap("_repositories_pull".into()),
        ))
        .await
        .unwrap();
    let p1 = secret(&created, PasswordSlot::Password1);
    let p2 = secret(&created, PasswordSlot::Password2);
    let now = now_unix();
    assert_eq!(
        store.verify_password("rotator", &p1, now),
        Ok(PasswordSlot::Password1)
    );
    assert_eq!(
        store.verify_password("rotator", &p2, now),
        Ok(PasswordSlot::Password2)
    );
    assert_eq!(
        store.verify_password("rotator", "wrong", now),
        Err(AuthError::WrongPassword)
    );
    assert_eq!(
        store.verify_password("nobody", &p1, now),
        Err(AuthError::UnknownToken)
    );

    // Regenerating password1 kills the old one at once and leaves password2 working.
    let regen = store
        .generate_passwords("rotator", &[PasswordSlot::Password1], None)
        .await
        .unwrap();
    let new1 = secret(&regen, PasswordSlot::Password1);
    assert_eq!(regen.passwords.len(), 1);
    assert_eq!(
        store.verify_password("rotator", &p1, now),
        Err(AuthError::WrongPassword)
    );
    assert_eq!(
        store.verify_password("rotator", &new1, now),
        Ok(PasswordSlot::Password1)
    );
    assert_eq!(
        store.verify_password("rotator", &p2, now),
        Ok(PasswordSlot::Password2)
    );

    // Deleting password2 leaves password1.
    store
        .delete_password("rotator", PasswordSlot::Password2)
        .await
        .unwrap();
    assert_eq!(
        store.verify_password("rotator", &p2, now),
        Err(AuthError::WrongPassword)
    );
    assert_eq!(
        store.verify_password("rotator", &new1, now),
        Ok(PasswordSlot::Password1)
    );

    // Disabled, then enabled again.
    let disable = TokenUpdate {
        status: Some(TokenStatus::Disabled),
        ..Default::default()
    };
    store.update_token("rotator", &disable).await.unwrap();
    assert_eq!(
        store.verify_password("rotator", &new1, now),
        Err(AuthError::Disabled)
    );
    let enable = TokenUpdate {
        status: Some(TokenStatus::Enabled),
        ..Default::default()
    };
    store.update_token("rotator", &enable).await.unwrap();
    assert_eq!(
        store.verify_password("rotator", &new1, now),
        Ok(PasswordSlot::Password1)
    );

    // Deleted.
    store.delete_token("rotator").await.unwrap();
    assert_eq!(
        store.verify_password("rotator", &new1, now),
        Err(AuthError::UnknownToken)
    );
}

async fn expired_password_fails_and_slots_expire_independently(store: Arc<IdentityStore>) {
    let now = now_unix();
    let mut new = token(
        "expiring",
        TokenScope::ScopeMap("_repositories_pull".into()),
    );
    new.passwords = vec![PasswordSlot::Password1];
    new.expires_at = Some(now + 60);
    let created = store.create_token(&new).await.unwrap();
    let p1 = secret(&created, PasswordSlot::Password1);
    assert_eq!(
        store.verify_password("expiring", &p1, now),
        Ok(PasswordSlot::Password1)
    );
    assert_eq!(
        store.verify_password("expiring", &p1, now + 60),
        Err(AuthError::Expired(PasswordSlot::Password1))
    );
    // An expiry already in the past fails on the very next check.
    let past = store
        .generate_passwords("expiring", &[PasswordSlot::Password2], Some(now - 1))
        .await
        .unwrap();
    let p2 = secret(&past, PasswordSlot::Password2);
    assert_eq!(
        store.verify_password("expiring", &p2, now),
        Err(AuthError::Expired(PasswordSlot::Password2))
    );
    assert_eq!(
        store.verify_password("expiring", &p1, now),
        Ok(PasswordSlot::Password1)
    );
    let t = &store.snapshot().tokens["expiring"];
    assert_eq!(t.password1.as_ref().unwrap().expires_at, Some(now + 60));
}

async fn token_can_move_to_another_scope_map(store: Arc<IdentityStore>) {
    store
        .create_token(&token(
            "mover",
            TokenScope::ScopeMap("_repositories_pull".into()),
        ))
        .await
        .unwrap();
    let update = TokenUpdate {
        scope_map: Some("_repositories_push".into()),
        ..Default::default()
    };
    let t = store.update_token("mover", &update).await.unwrap();
    assert_eq!(t.scope_map, "_repositories_push");
    let bad = TokenUpdate {
        scope_map: Some("missing-map".into()),
        ..Default::default()
    };
    assert!(matches!(
        store.update_token("mover", &bad).await,
        Err(IdentityStoreError::NotFound {
            kind: "scope map",
            ..
        })
    ));
    assert_eq!(
        store.snapshot().tokens["mover"].scope_map,
        "_repositories_push"
    );
}

/// Write cost at ACR's Premium limit: 50,000 tokens. Run with
/// `cargo test --release --lib -- --ignored writes_stay_cheap --nocapture`.
#[tokio::test]
#[ignore = "measurement; slow in debug builds"]
async fn writes_stay_cheap_at_50k_tokens() {
    let (_dir, store) = open();
    let n = 20;
    async fn time_writes(store: &IdentityStore, prefix: &str, n: u32) -> std::time::Duration {
        let start = std::time::Instant::now();
        for i in 0..n {
            let name = format!("{prefix}-{i:03}");
            store
                .create_token(&token(
                    &name,
                    TokenScope::ScopeMap("_repositories_pull".into()),
                ))
                .await
                .unwrap();
        }
        start.elapsed() / n
    }
    let empty = time_writes(&store, "empty", n).await;
    store
        .write(|tx| {
            for i in 0..50_000 {
                tx.put_token(Token {
                    name: format!("token-{i:05}"),
                    scope_map: "_repositories_pull".into(),
                    status: TokenStatus::Enabled,
                    password1: None,
                    password2: None,
                    created_at: tx.now,
                    updated_at: tx.now,
                })?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let per_write = time_writes(&store, "extra", n).await;
    let start = std::time::Instant::now();
    let snap = store.snapshot();
    let per_snapshot = start.elapsed();
    println!(
        "per create_token: {empty:?} on an empty store, {per_write:?} at {} tokens; snapshot() {per_snapshot:?}",
        snap.tokens.len()
    );
    assert!(
        per_write < std::time::Duration::from_millis(100),
        "{per_write:?}"
    );
}

/// Waits up to 5 s for `store` to satisfy `ready`.
async fn eventually(store: &IdentityStore, ready: impl Fn(&IdentitySnapshot) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !ready(&store.snapshot()) {
        assert!(
            std::time::Instant::now() < deadline,
            "not seen within 5 s; at version {}",
            store.snapshot().version
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn postgres_stores_follow_each_others_writes() {
    let url = Postgres::shared().database();
    let (a, b) = (open_pg_at(&url).await, open_pg_at(&url).await);
    let follower = tokio::spawn(b.follower().unwrap());
    let created = a
        .create_token(&token(
            "shared-bot",
            TokenScope::Repositories(rules(&[("x/*", &["content/read"])])),
        ))
        .await
        .unwrap();
    eventually(&b, |s| s.tokens.contains_key("shared-bot")).await;
    let p1 = secret(&created, PasswordSlot::Password1);
    assert_eq!(
        b.verify_password("shared-bot", &p1, now_unix()),
        Ok(PasswordSlot::Password1)
    );
    let disable = TokenUpdate {
        status: Some(TokenStatus::Disabled),
        ..Default::default()
    };
    a.update_token("shared-bot", &disable).await.unwrap();
    eventually(&b, |s| {
        s.verify_password("shared-bot", &p1, now_unix()) == Err(AuthError::Disabled)
    })
    .await;
    a.delete_token("shared-bot").await.unwrap();
    eventually(&b, |s| !s.tokens.contains_key("shared-bot")).await;
    assert_eq!(a.snapshot().version, b.snapshot().version);
    follower.abort();

    // A store opened now loads the same state (deletions included).
    let c = open_pg_at(&url).await;
    assert_eq!(c.snapshot().version, a.snapshot().version);
    assert!(!c.snapshot().tokens.contains_key("shared-bot"));
    assert!(c.snapshot().scope_maps.contains_key("shared-bot-scope-map"));
}

#[tokio::test]
async fn postgres_writes_decide_on_the_newest_state() {
    let url = Postgres::shared().database();
    // Neither follows: only the write protocol's catching up brings them together.
    let (a, b) = (open_pg_at(&url).await, open_pg_at(&url).await);
    a.create_scope_map("shared", "", &[]).await.unwrap();
    a.create_token(&token("user1", TokenScope::ScopeMap("shared".into())))
        .await
        .unwrap();
    assert!(!b.snapshot().tokens.contains_key("user1"));
    let err = b
        .create_token(&token("user1", TokenScope::ScopeMap("shared".into())))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "token `user1` already exists");
    assert!(b.snapshot().tokens.contains_key("user1"), "caught up");
    let err = b.delete_scope_map("shared").await.unwrap_err();
    assert!(
        matches!(err, IdentityStoreError::ScopeMapInUse { .. }),
        "{err}"
    );

    // Concurrent writers on both: every write lands, each with its own version.
    let before = a.snapshot().version;
    let writes = (0..10).flat_map(|i| {
        [
            (Arc::clone(&a), format!("writer-a-{i}")),
            (Arc::clone(&b), format!("writer-b-{i}")),
        ]
    });
    let tasks: Vec<_> = writes
        .map(|(store, name)| {
            tokio::spawn(async move {
                store
                    .create_token(&token(&name, TokenScope::ScopeMap("shared".into())))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let c = open_pg_at(&url).await;
    assert_eq!(c.snapshot().version, before + 20);
    assert_eq!(c.snapshot().tokens.len(), 21);
}

#[tokio::test]
async fn postgres_admin_record_is_shared() {
    let url = Postgres::shared().database();
    let (a, b) = (open_pg_at(&url).await, open_pg_at(&url).await);
    let first = a.admin_password_record("pw-one").await.unwrap();
    // Same password on another gateway: the same record (its bearer tokens stay valid).
    assert_eq!(b.admin_password_record("pw-one").await.unwrap(), first);
    let version = b.snapshot().version;
    assert_ne!(b.admin_password_record("pw-two").await.unwrap(), first);
    assert_eq!(b.snapshot().version, version + 1);
}
