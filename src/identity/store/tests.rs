use super::*;
use crate::identity::model::Action;
use crate::identity::scope::{actions_for, parse_rule};

fn open() -> (tempfile::TempDir, Arc<IdentityStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = IdentityStore::open(&dir.path().join("control.redb")).unwrap();
    (dir, store)
}

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

#[test]
fn every_write_bumps_version_and_publishes_a_snapshot() {
    let (_dir, store) = open();
    let mut rx = store.subscribe();
    let v0 = store.snapshot().version;
    store
        .create_scope_map("readers", "", &rules(&[("a/*", &["content/read"])]))
        .unwrap();
    assert_eq!(store.snapshot().version, v0 + 1);
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), v0 + 1);
    store
        .create_token(&token("ci-bot", TokenScope::ScopeMap("readers".into())))
        .unwrap();
    assert_eq!(store.snapshot().version, v0 + 2);
    assert!(store.snapshot().tokens.contains_key("ci-bot"));
    assert_eq!(*rx.borrow_and_update(), v0 + 2);
    // A failed write changes nothing and notifies no one.
    assert!(store.delete_scope_map("readers").is_err());
    assert_eq!(store.snapshot().version, v0 + 2);
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn reopen_restores_everything_and_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.redb");
    let (version, p1) = {
        let store = IdentityStore::open(&path).unwrap();
        let created = store
            .create_token(&token(
                "pusher",
                TokenScope::Repositories(rules(&[("x/*", &["content/write"])])),
            ))
            .unwrap();
        let attrs = RepositoryAttributes {
            write_enabled: false,
            ..Default::default()
        };
        store.set_repository_attributes("x/y", &attrs).unwrap();
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

#[test]
fn system_scope_maps_are_read_only() {
    let (_dir, store) = open();
    for name in ["_repositories_admin", "_repositories_pull"] {
        assert!(matches!(
            store.update_scope_map(name, &ScopeMapUpdate::default()),
            Err(IdentityStoreError::SystemScopeMap(_))
        ));
        assert!(matches!(
            store.delete_scope_map(name),
            Err(IdentityStoreError::SystemScopeMap(_))
        ));
        assert!(matches!(
            store.create_scope_map(name, "", &[]),
            Err(IdentityStoreError::SystemScopeMap(_))
        ));
    }
    // But tokens may use them.
    store
        .create_token(&token(
            "puller",
            TokenScope::ScopeMap("_repositories_pull".into()),
        ))
        .unwrap();
}

#[test]
fn scope_map_in_use_cannot_be_deleted() {
    let (_dir, store) = open();
    store.create_scope_map("shared", "d", &[]).unwrap();
    store
        .create_token(&token("user1", TokenScope::ScopeMap("shared".into())))
        .unwrap();
    let err = store.delete_scope_map("shared").unwrap_err();
    assert!(matches!(err, IdentityStoreError::ScopeMapInUse { .. }));
    assert!(err.to_string().contains("`user1`"), "{err}");
    store.delete_token("user1").unwrap();
    store.delete_scope_map("shared").unwrap();
    assert!(!store.snapshot().scope_maps.contains_key("shared"));
}

#[test]
fn create_errors_name_the_input() {
    let (_dir, store) = open();
    assert!(matches!(
        store.create_token(&token(
            "ab",
            TokenScope::ScopeMap("_repositories_pull".into())
        )),
        Err(IdentityStoreError::Name(NameError::Invalid { .. }))
    ));
    assert!(matches!(
        store.create_token(&token(
            "admin",
            TokenScope::ScopeMap("_repositories_pull".into())
        )),
        Err(IdentityStoreError::Name(NameError::Reserved(_)))
    ));
    let err = store
        .create_token(&token("tok01", TokenScope::ScopeMap("nope-map".into())))
        .unwrap_err();
    assert_eq!(err.to_string(), "scope map `nope-map` not found");
    store
        .create_token(&token("tok01", TokenScope::Repositories(vec![])))
        .unwrap();
    let err = store
        .create_token(&token("tok01", TokenScope::Repositories(vec![])))
        .unwrap_err();
    assert_eq!(err.to_string(), "token `tok01` already exists");
    let many: Vec<ScopeRule> = (0..=MAX_RULES)
        .map(|i| parse_rule(&format!("r{i}"), &["content/read"]).unwrap())
        .collect();
    assert!(matches!(
        store.create_scope_map("too-many", "", &many),
        Err(IdentityStoreError::TooManyRules { .. })
    ));
    assert!(matches!(
        store.set_repository_attributes("Bad//Name", &RepositoryAttributes::default()),
        Err(IdentityStoreError::InvalidRepository(_))
    ));
}

#[test]
fn scope_map_update_shows_in_the_next_snapshot() {
    let (_dir, store) = open();
    store
        .create_token(&token(
            "team-a",
            TokenScope::Repositories(rules(&[("sample/*", &["content/read"])])),
        ))
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
        .unwrap();
    assert_eq!(
        actions_for(&map_of(&store), "sample/teama/x"),
        [Action::ContentWrite].into()
    );
    assert!(actions_for(&map_of(&store), "sample/other").is_empty());
}

#[test]
fn verify_password_follows_every_change() {
    let (_dir, store) = open();
    let created = store
        .create_token(&token(
            "rotator",
            TokenScope::ScopeMap("_repositories_pull".into()),
        ))
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
    store.update_token("rotator", &disable).unwrap();
    assert_eq!(
        store.verify_password("rotator", &new1, now),
        Err(AuthError::Disabled)
    );
    let enable = TokenUpdate {
        status: Some(TokenStatus::Enabled),
        ..Default::default()
    };
    store.update_token("rotator", &enable).unwrap();
    assert_eq!(
        store.verify_password("rotator", &new1, now),
        Ok(PasswordSlot::Password1)
    );

    // Deleted.
    store.delete_token("rotator").unwrap();
    assert_eq!(
        store.verify_password("rotator", &new1, now),
        Err(AuthError::UnknownToken)
    );
}

#[test]
fn expired_password_fails_and_slots_expire_independently() {
    let (_dir, store) = open();
    let now = now_unix();
    let mut new = token(
        "expiring",
        TokenScope::ScopeMap("_repositories_pull".into()),
    );
    new.passwords = vec![PasswordSlot::Password1];
    new.expires_at = Some(now + 60);
    let created = store.create_token(&new).unwrap();
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

#[test]
fn token_can_move_to_another_scope_map() {
    let (_dir, store) = open();
    store
        .create_token(&token(
            "mover",
            TokenScope::ScopeMap("_repositories_pull".into()),
        ))
        .unwrap();
    let update = TokenUpdate {
        scope_map: Some("_repositories_push".into()),
        ..Default::default()
    };
    let t = store.update_token("mover", &update).unwrap();
    assert_eq!(t.scope_map, "_repositories_push");
    let bad = TokenUpdate {
        scope_map: Some("missing-map".into()),
        ..Default::default()
    };
    assert!(matches!(
        store.update_token("mover", &bad),
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
#[test]
#[ignore = "measurement; slow in debug builds"]
fn writes_stay_cheap_at_50k_tokens() {
    let (_dir, store) = open();
    let n = 20;
    let time_writes = |prefix: &str| {
        let start = std::time::Instant::now();
        for i in 0..n {
            let name = format!("{prefix}-{i:03}");
            store
                .create_token(&token(
                    &name,
                    TokenScope::ScopeMap("_repositories_pull".into()),
                ))
                .unwrap();
        }
        start.elapsed() / n
    };
    let empty = time_writes("empty");
    store
        .write(|tx| {
            for i in 0..50_000 {
                let mut t = token(
                    &format!("token-{i:05}"),
                    TokenScope::ScopeMap(String::new()),
                );
                t.passwords.clear();
                tx.put_token(Token {
                    name: t.name,
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
        .unwrap();
    let per_write = time_writes("extra");
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
