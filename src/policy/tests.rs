//! Engine tests: spec examples compiled to Cedar and decided, invalidation on every
//! kind of identity change, caching, reload, and fail-closed forbids.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{Authorizer, Entities, Policy, PolicySet, ValidationMode, Validator};

use super::analysis::{Kind, Loaded, RepositoryUse, context_fields, repository_use};
use super::compile::CompiledScopeMap;
use super::entities::{entity_uid, principal_entity, repository_entity};
use super::*;
use crate::identity::scope::system_scope_maps;
use crate::identity::{
    Action, IdentitySnapshot, PasswordRecord, PasswordSlot, Principal, RepositoryAttributes,
    RepositoryPattern, ScopeMap, ScopeRule, Token, TokenStatus, UnixSeconds,
};

const NOW: UnixSeconds = 1_767_225_600;

fn rule(pattern: &str, actions: &[Action]) -> ScopeRule {
    ScopeRule {
        repository: RepositoryPattern::parse(pattern).unwrap(),
        actions: actions.iter().copied().collect::<BTreeSet<_>>(),
    }
}

fn map(name: &str, rules: Vec<ScopeRule>) -> ScopeMap {
    ScopeMap {
        name: name.into(),
        description: String::new(),
        rules,
        system: false,
        created_at: 0,
        updated_at: 0,
    }
}

fn password(expires_at: Option<UnixSeconds>) -> PasswordRecord {
    PasswordRecord {
        salt: [0; 16],
        hash: [0; 32],
        created_at: 0,
        expires_at,
    }
}

fn token(name: &str, scope_map: &str) -> Token {
    Token {
        name: name.into(),
        scope_map: scope_map.into(),
        status: TokenStatus::Enabled,
        password1: Some(password(None)),
        password2: Some(password(None)),
        created_at: 0,
        updated_at: 0,
    }
}

/// A snapshot with the system maps plus `maps` and `tokens`.
fn snapshot(version: u64, maps: Vec<ScopeMap>, tokens: Vec<Token>) -> IdentitySnapshot {
    let mut snap = IdentitySnapshot {
        version,
        ..Default::default()
    };
    for m in system_scope_maps().into_iter().chain(maps) {
        snap.scope_maps.insert(m.name.clone(), Arc::new(m));
    }
    for t in tokens {
        snap.tokens.insert(t.name.clone(), Arc::new(t));
    }
    snap
}

fn engine() -> PolicyEngine {
    PolicyEngine::load(&[]).unwrap()
}

fn req(principal: Principal, action: Action, repository: &str) -> AuthzRequest {
    AuthzRequest {
        principal,
        action,
        repository: repository.into(),
        context: RequestContext {
            reference: None,
            signed: false,
            signatures: Default::default(),
            signature_artifact: false,
            source_ip: None,
            now: NOW,
            operation: Operation::Other,
        },
    }
}

fn tok(name: &str) -> Principal {
    Principal::Token {
        name: name.into(),
        slot: PasswordSlot::Password1,
    }
}

fn allowed(e: &PolicyEngine, snap: &IdentitySnapshot, p: &Principal, a: Action, r: &str) -> bool {
    e.authorize(snap, req(p.clone(), a, r)).allowed
}

/// The actions `p` holds on `repository`.
fn granted(
    e: &PolicyEngine,
    snap: &IdentitySnapshot,
    p: &Principal,
    repository: &str,
) -> Vec<Action> {
    Action::ALL
        .into_iter()
        .filter(|a| allowed(e, snap, p, *a, repository))
        .collect()
}

use Action::*;

fn additive() -> ScopeMap {
    map(
        "teams",
        vec![
            rule("sample/*", &[ContentRead]),
            rule("sample/teamA/*", &[ContentWrite]),
            rule("sample/teamA/projectB", &[ContentDelete]),
        ],
    )
}

#[test]
fn spec_additive_example() {
    let e = engine();
    let snap = snapshot(1, vec![additive()], vec![token("t", "teams")]);
    let t = tok("t");
    assert_eq!(
        granted(&e, &snap, &t, "sample/teama/projectb"),
        vec![ContentRead, ContentWrite, ContentDelete]
    );
    assert_eq!(
        granted(&e, &snap, &t, "sample/teama/projectc"),
        vec![ContentRead, ContentWrite]
    );
    assert_eq!(granted(&e, &snap, &t, "sample/x/y/z"), vec![ContentRead]);
    assert!(granted(&e, &snap, &t, "other/x").is_empty());
    assert!(granted(&e, &snap, &t, "sample").is_empty());
    // Rules apply to repositories that do not exist yet (no repository is stored).
    assert!(snap.repositories.is_empty());
}

#[test]
fn determining_policies_name_the_rules() {
    let e = engine();
    let snap = snapshot(1, vec![additive()], vec![token("t", "teams")]);
    let d = e.authorize(&snap, req(tok("t"), ContentRead, "sample/teama/projectb"));
    assert!(d.allowed);
    assert_eq!(d.policies, vec!["scopemap/teams/rule/1".to_owned()]);
    let x = e.explain(&snap, &req(tok("t"), ContentRead, "sample/teama/projectb"));
    assert_eq!(x.decision, *d);
    assert_eq!(
        x.matching_rules,
        vec![
            "scopemap/teams/rule/1: sample/* -> content/read",
            "scopemap/teams/rule/2: sample/teama/* -> content/write",
            "scopemap/teams/rule/3: sample/teama/projectb -> content/delete",
        ]
    );
}

#[test]
fn exact_and_root_rules() {
    let e = engine();
    let maps = vec![
        map("exact", vec![rule("samples/hello", &[ContentRead])]),
        map("root", vec![rule("*", &[MetadataRead])]),
    ];
    let snap = snapshot(1, maps, vec![token("x", "exact"), token("r", "root")]);
    assert!(allowed(&e, &snap, &tok("x"), ContentRead, "samples/hello"));
    assert!(!allowed(
        &e,
        &snap,
        &tok("x"),
        ContentRead,
        "samples/hello/sub"
    ));
    assert!(!allowed(&e, &snap, &tok("x"), ContentRead, "samples/hell"));
    assert!(allowed(
        &e,
        &snap,
        &tok("r"),
        MetadataRead,
        "anything/at/all"
    ));
    assert!(!allowed(&e, &snap, &tok("r"), ContentRead, "anything"));
}

#[test]
fn system_scope_maps_grant_their_actions() {
    let e = engine();
    let tokens = system_scope_maps()
        .iter()
        .map(|m| token(&m.name, &m.name))
        .collect();
    let snap = snapshot(1, vec![], tokens);
    for m in system_scope_maps() {
        let expected: Vec<Action> = m.rules[0].actions.iter().copied().collect();
        assert_eq!(
            granted(&e, &snap, &tok(&m.name), "new/repo"),
            expected,
            "{}",
            m.name
        );
    }
}

#[test]
fn admin_may_do_everything_but_trust_write() {
    let e = engine();
    let snap = snapshot(1, vec![], vec![]);
    assert_eq!(
        granted(&e, &snap, &Principal::Admin, "any/repo"),
        vec![
            ContentRead,
            ContentWrite,
            ContentDelete,
            MetadataRead,
            MetadataWrite
        ]
    );
    let d = e.authorize(&snap, req(Principal::Admin, TrustWrite, "any/repo"));
    assert_eq!(d.policies, vec!["base/admin-no-trust-write".to_owned()]);
}

#[test]
fn anonymous_pull_only_when_enabled() {
    let e = engine();
    let snap = snapshot(1, vec![], vec![]);
    assert!(granted(&e, &snap, &Principal::Anonymous, "a/b").is_empty());
    e.set_anonymous_pull(true);
    assert_eq!(
        granted(&e, &snap, &Principal::Anonymous, "a/b"),
        vec![ContentRead]
    );
}

#[test]
fn repository_attributes_lock_actions() {
    let e = engine();
    let mut snap = snapshot(
        1,
        vec![],
        vec![token("t", "_repositories_push_metadata_write")],
    );
    snap.repositories.insert(
        "locked".into(),
        RepositoryAttributes {
            write_enabled: false,
            list_enabled: false,
            ..Default::default()
        },
    );
    assert_eq!(
        granted(&e, &snap, &tok("t"), "locked"),
        vec![ContentRead, MetadataWrite]
    );
    // The admin still sees it listed, but cannot write either.
    assert!(allowed(
        &e,
        &snap,
        &Principal::Admin,
        MetadataRead,
        "locked"
    ));
    assert!(!allowed(
        &e,
        &snap,
        &Principal::Admin,
        ContentWrite,
        "locked"
    ));
}

#[test]
fn every_identity_change_affects_the_very_next_decision() {
    let e = engine();
    let t = tok("t");
    let mut snap = snapshot(1, vec![additive()], vec![token("t", "teams")]);
    let repo = "sample/teama/projectc";
    assert!(allowed(&e, &snap, &t, ContentWrite, repo));

    // Scope map updated: the write rule removed.
    snap.version += 1;
    let mut updated = additive();
    updated.rules.remove(1);
    snap.scope_maps.insert("teams".into(), Arc::new(updated));
    assert!(!allowed(&e, &snap, &t, ContentWrite, repo));
    assert!(allowed(&e, &snap, &t, ContentRead, repo));

    // Disabled token.
    snap.version += 1;
    let mut disabled = token("t", "teams");
    disabled.status = TokenStatus::Disabled;
    snap.tokens.insert("t".into(), Arc::new(disabled));
    let d = e.authorize(&snap, req(t.clone(), ContentRead, repo));
    assert!(!d.allowed);
    assert_eq!(d.policies, vec!["base/token-disabled".to_owned()]);

    // Re-enabled, then the password expires.
    snap.version += 1;
    snap.tokens
        .insert("t".into(), Arc::new(token("t", "teams")));
    assert!(allowed(&e, &snap, &t, ContentRead, repo));
    snap.version += 1;
    let mut expired = token("t", "teams");
    expired.password1 = Some(password(Some(NOW)));
    snap.tokens.insert("t".into(), Arc::new(expired));
    let d = e.authorize(&snap, req(t.clone(), ContentRead, repo));
    assert_eq!(d.policies, vec!["base/password-expired".to_owned()]);
    // The other slot still works (zero-downtime rotation).
    let t2 = Principal::Token {
        name: "t".into(),
        slot: PasswordSlot::Password2,
    };
    assert!(allowed(&e, &snap, &t2, ContentRead, repo));

    // Slot regenerated: works again; slot deleted: denied.
    snap.version += 1;
    snap.tokens
        .insert("t".into(), Arc::new(token("t", "teams")));
    assert!(allowed(&e, &snap, &t, ContentRead, repo));
    snap.version += 1;
    let mut no_password = token("t", "teams");
    no_password.password1 = None;
    snap.tokens.insert("t".into(), Arc::new(no_password));
    let d = e.authorize(&snap, req(t.clone(), ContentRead, repo));
    assert_eq!(d.policies, vec!["base/password-missing".to_owned()]);

    // Deleted token.
    snap.version += 1;
    snap.tokens.remove("t");
    let d = e.authorize(&snap, req(t.clone(), ContentRead, repo));
    assert!(!d.allowed);
    assert_eq!(d.errors, vec!["unknown token `t`".to_owned()]);
}

#[test]
fn cache_hit_equals_miss_and_ignores_other_requests() {
    let e = engine();
    let snap = snapshot(1, vec![additive()], vec![token("t", "teams")]);
    let r = req(tok("t"), ContentWrite, "sample/teama/x");
    let miss = e.authorize(&snap, r.clone());
    let hit = e.authorize(&snap, r.clone());
    assert_eq!(miss, hit);
    assert!(miss.allowed);
    // No policy reads the context: another address, tag, operation or second is the
    // same repository decision, served from the cache.
    let mut other = r.clone();
    other.context.source_ip = Some("10.1.2.3".parse().unwrap());
    other.context.reference = Some(Reference::Tag("v1".into()));
    other.context.operation = Operation::OverwriteTag;
    other.context.now = NOW + 3600;
    assert_eq!(e.authorize(&snap, other), miss);
    assert_eq!(e.cache_stats(), CacheStats { hits: 2, misses: 1 });
    // Another repository, action or identity version is another decision.
    e.authorize(&snap, req(tok("t"), ContentWrite, "sample/teama/y"));
    e.authorize(&snap, req(tok("t"), ContentRead, "sample/teama/x"));
    let mut next = snap.clone();
    next.version += 1;
    e.authorize(&next, r);
    assert_eq!(e.cache_stats(), CacheStats { hits: 2, misses: 4 });
}

#[test]
fn facts_a_policy_reads_stay_in_the_decision_key() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "ctx.cedar",
        r#"@id("pull-from-10")
forbid(principal, action == Action::"content/read", resource)
unless { context has sourceIp && context.sourceIp.isInRange(ip("10.0.0.0/8")) };
"#,
    );
    let e = PolicyEngine::load(&[tmp.path().into()]).unwrap();
    let snap = snapshot(1, vec![], vec![token("t", "_repositories_pull")]);
    let mut r = req(tok("t"), ContentRead, "a/b");
    r.context.source_ip = Some("10.1.2.3".parse().unwrap());
    assert!(e.authorize(&snap, r.clone()).allowed);
    r.context.source_ip = Some("192.0.2.1".parse().unwrap());
    assert!(!e.authorize(&snap, r.clone()).allowed);
    // The operation and the clock are read by no policy: the same decision.
    r.context.operation = Operation::ListTags;
    r.context.now = NOW + 60;
    assert!(!e.authorize(&snap, r.clone()).allowed);
    assert_eq!(e.cache_stats(), CacheStats { hits: 1, misses: 2 });
}

#[test]
fn a_decision_read_from_the_clock_holds_for_its_second_and_is_not_keyed_by_it() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "clock.cedar",
        &format!(
            "@id(\"until\")\nforbid(principal, action, resource)\nwhen {{ context.now >= {} }};\n",
            NOW + 2
        ),
    );
    let e = PolicyEngine::load(&[tmp.path().into()]).unwrap();
    let snap = snapshot(1, vec![], vec![token("t", "_repositories_pull")]);
    let at = |now| {
        let mut r = req(tok("t"), ContentRead, "a/b");
        r.context.now = now;
        e.authorize(&snap, r).allowed
    };
    assert!(at(NOW));
    assert!(at(NOW));
    assert!(at(NOW + 1));
    assert!(!at(NOW + 2));
    assert!(!at(NOW + 2));
    assert_eq!(e.cache_stats(), CacheStats { hits: 2, misses: 3 });
    // One entry, replaced every second, not one per second.
    e.decisions.run_pending_tasks();
    assert_eq!(e.decisions.entry_count(), 1);
}

#[test]
fn a_cached_decision_ends_when_the_password_expires() {
    let e = engine();
    let mut t = token("t", "_repositories_pull");
    t.password1 = Some(password(Some(NOW + 10)));
    let snap = snapshot(1, vec![], vec![t]);
    let at = |now| {
        let mut r = req(tok("t"), ContentRead, "a/b");
        r.context.now = now;
        e.authorize(&snap, r)
    };
    assert!(at(NOW).allowed);
    assert!(at(NOW + 9).allowed);
    let expired = at(NOW + 10);
    assert_eq!(expired.policies, vec!["base/password-expired".to_owned()]);
    assert!(!at(NOW + 11).allowed);
    assert_eq!(e.cache_stats(), CacheStats { hits: 2, misses: 2 });
}

#[test]
fn decision_cache_is_bounded_by_bytes() {
    let e = engine();
    let snap = snapshot(1, vec![additive()], vec![token("t", "teams")]);
    // Long repository names: the budget, not a count, bounds the cache.
    let name = "x".repeat(8000);
    for i in 0..6_000 {
        e.authorize(
            &snap,
            req(tok("t"), ContentRead, &format!("sample/{name}/{i}")),
        );
    }
    e.decisions.run_pending_tasks();
    let bytes = e.decisions.weighted_size();
    assert!(bytes <= super::cache::DECISION_CACHE_BYTES, "{bytes}");
    assert!(e.decisions.entry_count() < 6_000);
    // The newest decisions are the ones kept (least recently used out first).
    let last = req(tok("t"), ContentRead, &format!("sample/{name}/5999"));
    let before = e.cache_stats().hits;
    e.authorize(&snap, last);
    assert_eq!(e.cache_stats().hits, before + 1);
}

#[test]
fn action_index_follows_all() {
    for (i, action) in Action::ALL.into_iter().enumerate() {
        assert_eq!(action.index(), i);
    }
}

#[test]
fn scope_map_recompiled_when_content_changes_without_version_change_elsewhere() {
    // Two snapshots with equal content but fresh Arcs reuse the compiled map.
    let e = engine();
    let a = snapshot(1, vec![additive()], vec![token("t", "teams")]);
    let b = snapshot(2, vec![additive()], vec![token("t", "teams")]);
    let first = e.compiled_map(&a, "teams").unwrap().unwrap();
    let second = e.compiled_map(&b, "teams").unwrap().unwrap();
    assert_eq!(first.id, second.id);
    let mut changed = additive();
    changed.rules.pop();
    let c = snapshot(3, vec![changed], vec![token("t", "teams")]);
    assert_ne!(e.compiled_map(&c, "teams").unwrap().unwrap().id, first.id);
}

#[test]
fn compiled_scope_maps_validate_strictly() {
    let tricky = map(
        "weird\"name\\x",
        vec![
            rule("*", &Action::ALL),
            rule("a.b/c__d/*", &[ContentRead, TrustWrite]),
            rule("x-y/z", &[MetadataWrite]),
        ],
    );
    let mut text = String::new();
    for m in system_scope_maps().iter().chain([&additive(), &tricky]) {
        text.push_str(&scope_map_cedar(m));
    }
    let set = PolicySet::from_str(&text).unwrap();
    assert_eq!(set.policies().count(), 5 + 3 + 3);
    let schema = files::schema().unwrap();
    let result = Validator::new(schema).validate(&set, ValidationMode::Strict);
    assert!(
        result.validation_passed(),
        "{:?}",
        result
            .validation_errors()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    assert!(
        text.contains("@id(\"scopemap/weird\\\"name\\\\x/rule/2\")"),
        "{text}"
    );
    assert!(text.contains("resource.name like \"sample/*\""), "{text}");
    assert!(
        text.contains("resource == Repository::\"sample/teama/projectb\""),
        "{text}"
    );
}

#[test]
fn export_lists_every_scope_map() {
    let e = engine();
    let snap = snapshot(1, vec![additive()], vec![]);
    let text = e.export(&snap);
    assert!(text.contains("scopemap/teams/rule/3"));
    assert!(text.contains("scopemap/_repositories_admin/rule/1"));
    assert_eq!(PolicySet::from_str(&text).unwrap().policies().count(), 8);
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn invalid_reload_keeps_previous_policies_and_reports_location() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = vec![PathBuf::from(tmp.path())];
    write(
        tmp.path(),
        "prod.cedar",
        "@id(\"no-prod-deletes\")\nforbid(principal, action == Action::\"content/delete\", resource)\nwhen { resource.name like \"prod/*\" };\n",
    );
    let e = PolicyEngine::load(&dirs).unwrap();
    let snap = snapshot(1, vec![], vec![token("t", "_repositories_admin")]);
    let d = e.authorize(&snap, req(tok("t"), ContentDelete, "prod/app"));
    assert_eq!(d.policies, vec!["no-prod-deletes".to_owned()]);

    write(
        tmp.path(),
        "prod.cedar",
        "forbid(principal, action, resource)\nwhen { resource.nosuch };\n",
    );
    let err = e.reload().unwrap_err().to_string();
    assert!(err.contains("prod.cedar:2:"), "{err}");
    let d = e.authorize(&snap, req(tok("t"), ContentDelete, "prod/app"));
    assert_eq!(d.policies, vec!["no-prod-deletes".to_owned()]);

    std::fs::remove_file(tmp.path().join("prod.cedar")).unwrap();
    e.reload().unwrap();
    assert!(allowed(&e, &snap, &tok("t"), ContentDelete, "prod/app"));
}

#[test]
fn erroring_forbid_fails_closed() {
    let tmp = tempfile::tempdir().unwrap();
    // Validates in strict mode but overflows at run time.
    write(
        tmp.path(),
        "overflow.cedar",
        "@id(\"overflow\")\nforbid(principal, action, resource)\nwhen { context.now * 10000000000000 < 0 };\n",
    );
    let e = PolicyEngine::load(&[tmp.path().into()]).unwrap();
    let snap = snapshot(1, vec![], vec![token("t", "_repositories_admin")]);
    let d = e.authorize(&snap, req(tok("t"), ContentRead, "a"));
    assert!(!d.allowed);
    assert_eq!(d.policies, vec!["overflow".to_owned()]);
    assert!(
        d.errors.iter().any(|m| m.contains("overflow")),
        "{:?}",
        d.errors
    );
}

#[test]
fn context_reaches_user_policies() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "ctx.cedar",
        r#"@id("push-from-10")
forbid(principal, action == Action::"content/write", resource)
unless { context has sourceIp && context.sourceIp.isInRange(ip("10.0.0.0/8")) };
@id("no-latest")
forbid(principal, action == Action::"content/write", resource)
when { context has tag && context.tag == "latest" };
"#,
    );
    let e = PolicyEngine::load(&[tmp.path().into()]).unwrap();
    let snap = snapshot(1, vec![], vec![token("t", "_repositories_push")]);
    let mut r = req(tok("t"), ContentWrite, "a/b");
    assert!(!e.authorize(&snap, r.clone()).allowed);
    r.context.source_ip = Some("10.9.8.7".parse().unwrap());
    assert!(e.authorize(&snap, r.clone()).allowed);
    r.context.reference = Some(Reference::Tag("latest".into()));
    assert_eq!(
        e.authorize(&snap, r.clone()).policies,
        vec!["no-latest".to_owned()]
    );
    r.context.reference = Some(Reference::Digest(portcullis_oci::Digest::of(b"manifest")));
    assert!(e.authorize(&snap, r.clone()).allowed);
}

#[test]
fn shipped_policy_tests_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let files = testcases::test_files(&dir).unwrap();
    assert!(!files.is_empty());
    for file in files {
        for case in testcases::run_file(&dir, &file).unwrap() {
            assert!(
                case.passed(),
                "{}: {} -> {:?}",
                file.display(),
                case.name,
                case.decision
            );
        }
    }
}

#[test]
fn policy_sets_are_sliced() {
    // 500 rules, of which only the matching ones enter the evaluated set.
    let e = engine();
    let mut rules: Vec<ScopeRule> = (0..500)
        .map(|i| rule(&format!("other{i}/*"), &[ContentRead]))
        .collect();
    rules.push(rule("mine/*", &[ContentRead]));
    let snap = snapshot(1, vec![map("big", rules)], vec![token("t", "big")]);
    assert!(allowed(&e, &snap, &tok("t"), ContentRead, "mine/app"));
    e.sets.run_pending_tasks();
    let largest = e
        .sets
        .iter()
        .map(|(_, s)| s.policies().count())
        .max()
        .unwrap();
    assert!(largest <= 10, "{largest} policies evaluated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn reloader_picks_up_file_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Arc::new(PolicyEngine::load(&[tmp.path().into()]).unwrap());
    let before = e.policy_count();
    e.spawn_reloader();
    // Let the reloader take its first look at the directory.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    write(
        tmp.path(),
        "extra.cedar",
        "@id(\"x\")\nforbid(principal, action, resource) when { resource.name like \"x/*\" };\n",
    );
    let mut count = before;
    for _ in 0..60 {
        count = e.policy_count();
        if count != before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(count, before + 1);
    // An invalid edit is refused and the loaded set stays.
    write(
        tmp.path(),
        "extra.cedar",
        "forbid(principal, action, resource) when { nosuch };\n",
    );
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert_eq!(e.policy_count(), before + 1);
}

#[test]
fn only_policies_reading_context_are_evaluated_per_request() {
    let e = engine();
    let loaded = e.loaded.load();
    let ids = |policies: Vec<&Policy>| -> Vec<String> {
        policies.iter().map(|p| p.id().to_string()).collect()
    };
    let per_request = &loaded.contextual[&(Kind::Token, ContentRead)];
    let mut per_request_ids = ids(per_request.set.policies().collect());
    per_request_ids.sort();
    assert_eq!(
        per_request_ids,
        vec![
            "base/password-expired".to_owned(),
            "base/repository-signed-only".to_owned()
        ]
    );
    assert_eq!(
        per_request.fields,
        Some(vec![
            "now".to_owned(),
            "referenceKind".to_owned(),
            "signatureArtifact".to_owned(),
            "signatures".to_owned(),
            "signed".to_owned()
        ])
    );
    let once: Vec<&Policy> = loaded.sliced[&(Kind::Token, ContentRead)].iter().collect();
    let once = ids(once);
    assert!(once.contains(&"base/token-disabled".to_owned()), "{once:?}");
    assert!(
        once.contains(&"base/repository-read-disabled".to_owned()),
        "{once:?}"
    );
    assert!(
        loaded.contextual[&(Kind::Admin, ContentWrite)]
            .set
            .is_empty()
    );
    // The signed-only rule reads the context and a repository flag only: pulls keep the
    // shortcut by matching rules and attributes.
    assert!(loaded.contextual[&(Kind::Admin, ContentRead)].reads_flags);
    assert!(loaded.by_rules.contains(&(Kind::Token, ContentRead)));
}

#[test]
fn signed_only_repositories_refuse_unsigned_manifests_only() {
    let e = engine();
    let mut snap = snapshot(1, vec![], vec![token("t", "_repositories_pull")]);
    snap.repositories.insert(
        "trusted".into(),
        RepositoryAttributes {
            signed_only: true,
            ..Default::default()
        },
    );
    for principal in [tok("t"), Principal::Admin] {
        let mut r = req(principal.clone(), ContentRead, "trusted");
        // A blob: no manifest reference.
        assert!(e.authorize(&snap, r.clone()).allowed, "{principal:?}");
        for reference in [
            Reference::Tag("v1".into()),
            Reference::Digest(portcullis_oci::Digest::of(b"manifest")),
        ] {
            r.context.reference = Some(reference);
            r.context.signed = false;
            let d = e.authorize(&snap, r.clone());
            assert!(!d.allowed);
            assert_eq!(d.policies, vec!["base/repository-signed-only".to_owned()]);
            r.context.signed = true;
            assert!(e.authorize(&snap, r.clone()).allowed);
        }
        // Elsewhere an unsigned manifest is fine.
        r.repository = "other".into();
        r.context.signed = false;
        assert!(e.authorize(&snap, r.clone()).allowed);
    }
}

#[test]
fn context_free_and_contextual_outcomes_combine_by_cedar_rules() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "mixed.cedar",
        r#"@id("no-prod")
forbid(principal, action == Action::"content/delete", resource)
when { resource.name like "prod/*" };
@id("no-latest")
forbid(principal, action == Action::"content/delete", resource)
when { context has tag && context.tag == "latest" };
@id("overflow")
forbid(principal, action == Action::"metadata/write", resource)
when { 9223372036854775807 + 1 > 0 };
"#,
    );
    let e = PolicyEngine::load(&[tmp.path().into()]).unwrap();
    assert_eq!(
        e.loaded.load().contextual[&(Kind::Token, ContentDelete)].fields,
        Some(vec!["now".to_owned(), "tag".to_owned()])
    );
    let snap = snapshot(1, vec![], vec![token("t", "_repositories_admin")]);
    let mut r = req(tok("t"), ContentDelete, "prod/app");
    r.context.reference = Some(Reference::Tag("latest".into()));
    let d = e.authorize(&snap, r.clone());
    assert!(!d.allowed);
    assert_eq!(
        d.policies,
        vec!["no-latest".to_owned(), "no-prod".to_owned()]
    );
    r.repository = "dev/app".into();
    assert_eq!(
        e.authorize(&snap, r.clone()).policies,
        vec!["no-latest".to_owned()]
    );
    r.context.reference = None;
    let d = e.authorize(&snap, r.clone());
    assert!(d.allowed);
    assert_eq!(
        d.policies,
        vec!["scopemap/_repositories_admin/rule/1".to_owned()]
    );
    // A context-free forbid that errors still fails closed.
    let d = e.authorize(&snap, req(tok("t"), MetadataWrite, "dev/app"));
    assert!(!d.allowed);
    assert_eq!(d.policies, vec!["overflow".to_owned()]);
}

#[test]
fn whole_context_use_gets_every_field() {
    let whole = Policy::from_str(
        "permit(principal, action, resource) when { context == context && context.now > 0 };",
    )
    .unwrap();
    assert_eq!(context_fields(&[whole]), None);
    let fields = Policy::from_str(
        "permit(principal, action, resource) when { context has tag && context.now > 0 };",
    )
    .unwrap();
    assert_eq!(
        context_fields(&[fields]),
        Some(vec!["now".to_owned(), "tag".to_owned()])
    );
}

/// Cedar's own decision over every loaded policy and every rule of the principal's
/// scope map, with the full entities and context: what the sliced, cached engine must
/// reproduce.
fn reference_decision(
    e: &PolicyEngine,
    snap: &IdentitySnapshot,
    r: &AuthzRequest,
    anonymous_pull: bool,
) -> (bool, Vec<String>) {
    let loaded = e.loaded.load();
    let mut policies: Vec<Policy> = Vec::new();
    for kind in Kind::ALL {
        for action in Action::ALL {
            policies.extend(loaded.sliced[&(kind, action)].iter().cloned());
            policies.extend(loaded.contextual[&(kind, action)].set.policies().cloned());
        }
    }
    if let Principal::Token { name, .. } = &r.principal {
        let map = &snap.scope_maps[&snap.tokens[name].scope_map];
        let compiled = CompiledScopeMap::compile(map, 0).unwrap();
        policies.extend(compiled.rules.into_iter().map(|rule| rule.policy));
    }
    policies.sort_by_key(|p| p.id().to_string());
    policies.dedup_by_key(|p| p.id().to_string());
    let set = PolicySet::from_policies(policies).unwrap();
    let principal = principal_entity(snap, &r.principal, anonymous_pull).unwrap();
    let resource = entity_uid("Repository", &r.repository).unwrap();
    let repository = repository_entity(snap, &r.repository, resource.clone()).unwrap();
    let entities = Entities::from_entities([principal.clone(), repository], None).unwrap();
    let request = e.cedar_request(principal.uid(), resource, r, None).unwrap();
    let response = Authorizer::new().is_authorized(&request, &set, &entities);
    let mut ids: Vec<String> = response
        .diagnostics()
        .reason()
        .map(ToString::to_string)
        .collect();
    ids.sort_unstable();
    (response.decision() == cedar_policy::Decision::Allow, ids)
}

#[test]
fn decisions_by_matching_rules_equal_cedar_on_random_repositories() {
    // A small xorshift generator: reproducible without a dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    const SEGMENTS: [&str; 4] = ["a", "ab", "team", "app"];
    let name = |next: &mut dyn FnMut(usize) -> usize| {
        (0..1 + next(3))
            .map(|_| SEGMENTS[next(SEGMENTS.len())])
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut maps = Vec::new();
    let mut tokens = Vec::new();
    for m in 0..6 {
        let rules = (0..1 + next(6))
            .map(|_| {
                let pattern = match next(3) {
                    0 => "*".to_owned(),
                    1 => format!("{}/*", name(&mut next)),
                    _ => name(&mut next),
                };
                let actions: Vec<Action> =
                    Action::ALL.into_iter().filter(|_| next(3) == 0).collect();
                rule(
                    &pattern,
                    if actions.is_empty() {
                        &[ContentRead]
                    } else {
                        &actions
                    },
                )
            })
            .collect();
        let map_name = format!("map-{m}");
        maps.push(map(&map_name, rules));
        let mut t = token(&format!("tok-{m}"), &map_name);
        match m {
            4 => t.status = TokenStatus::Disabled,
            5 => t.password1 = Some(password(Some(NOW))),
            _ => {}
        }
        tokens.push(t);
    }
    let mut snap = snapshot(1, maps, tokens);
    for _ in 0..20 {
        let flags: Vec<bool> = (0..5).map(|_| next(4) != 0).collect();
        snap.repositories.insert(
            name(&mut next),
            RepositoryAttributes {
                read_enabled: flags[0],
                write_enabled: flags[1],
                delete_enabled: flags[2],
                list_enabled: flags[3],
                signed_only: flags[4],
            },
        );
    }
    let e = engine();
    e.set_anonymous_pull(true);
    let loaded = e.loaded.load();
    assert_eq!(loaded.by_rules.len(), Kind::ALL.len() * Action::ALL.len());
    let slow = Loaded {
        by_rules: HashSet::new(),
        ..Loaded::new(
            files::load_policies(&e.schema, &[], &[], None).unwrap(),
            loaded.generation,
        )
        .unwrap()
    };
    let mut allows = 0;
    for _ in 0..2_000 {
        let principal = match next(8) {
            0 => Principal::Admin,
            1 => Principal::Anonymous,
            m => tok(&format!("tok-{}", m - 2)),
        };
        let action = Action::ALL[next(Action::ALL.len())];
        let mut r = req(principal, action, &name(&mut next));
        r.context.reference = match next(3) {
            0 => None,
            1 => Some(Reference::Tag("v1".into())),
            _ => Some(Reference::Digest(portcullis_oci::Digest::of(b"manifest"))),
        };
        r.context.signed = next(2) == 0;
        let fast = e.authorize(&snap, r.clone());
        assert_eq!(*fast, e.decide(&slow, &snap, &r, true), "{r:?}");
        let (allowed, ids) = reference_decision(&e, &snap, &r, true);
        allows += usize::from(allowed);
        assert_eq!(
            (fast.allowed, fast.policies.clone()),
            (allowed, ids),
            "{r:?}"
        );
    }
    // Both outcomes are exercised.
    assert!((200..1_800).contains(&allows), "{allows} allows");
}

#[test]
fn policies_reading_the_repository_name_disable_the_shortcut() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "name.cedar",
        r#"@id("no-prod")
forbid(principal, action == Action::"content/delete", resource)
when { resource.name like "prod/*" };
@id("locked")
forbid(principal, action == Action::"content/write", resource)
unless { resource.writeEnabled };
"#,
    );
    let e = PolicyEngine::load(&[tmp.path().into()]).unwrap();
    let loaded = e.loaded.load();
    assert!(!loaded.by_rules.contains(&(Kind::Token, ContentDelete)));
    assert!(loaded.by_rules.contains(&(Kind::Token, ContentWrite)));
    let snap = snapshot(1, vec![], vec![token("t", "_repositories_admin")]);
    assert!(!allowed(&e, &snap, &tok("t"), ContentDelete, "prod/app"));
    assert!(allowed(&e, &snap, &tok("t"), ContentDelete, "dev/app"));
    let uses = |text: &str| repository_use(&Policy::from_str(text).unwrap());
    assert_eq!(
        uses("permit(principal, action, resource) when { context.now > 0 };"),
        RepositoryUse::None
    );
    assert_eq!(
        uses("permit(principal, action, resource) when { resource has signedOnly };"),
        RepositoryUse::Flags
    );
    assert_eq!(
        uses("permit(principal, action, resource) when { resource.name == \"x\" };"),
        RepositoryUse::Other
    );
    assert_eq!(
        uses("permit(principal, action, resource) when { resource == resource };"),
        RepositoryUse::Other
    );
    assert_eq!(
        uses("permit(principal, action, resource == Repository::\"x\");"),
        RepositoryUse::Other
    );
}
