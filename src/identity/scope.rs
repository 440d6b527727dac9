//! Scope-map semantics: names of tokens and scope maps, the system-defined scope maps,
//! rule normalisation (add/remove), additive permissions, and ACR's action strings
//! (`repositories/<pattern>/<action>`).

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Action, RepositoryPattern, ScopeMap, ScopeRule, UnknownActionError};
use super::pattern::PatternError;

/// ACR's limit of repositories (rules) per scope map.
pub const MAX_RULES: usize = 500;

/// The shortest and longest token name. Scope-map names may be 10 characters longer so
/// that `<token>-scope-map` always fits.
pub const NAME_MIN: usize = 5;
pub const TOKEN_NAME_MAX: usize = 50;
pub const SCOPE_MAP_NAME_MAX: usize = TOKEN_NAME_MAX + "-scope-map".len();

/// The admin account's user name; no token may take it.
pub const ADMIN_USER: &str = "admin";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "name `{name}` is invalid: use {NAME_MIN} to {max} characters, letters, digits, `-` and `_`, starting with a letter or digit"
    )]
    Invalid { name: String, max: usize },
    #[error("name `{0}` is reserved for the admin account")]
    Reserved(String),
}

/// Checks a token name: `^[a-zA-Z0-9][a-zA-Z0-9_-]{4,49}$`, and not `admin` in any case.
pub fn validate_token_name(name: &str) -> Result<(), NameError> {
    validate_name(name, TOKEN_NAME_MAX)?;
    if name.eq_ignore_ascii_case(ADMIN_USER) {
        return Err(NameError::Reserved(name.to_owned()));
    }
    Ok(())
}

/// Checks a user-defined scope-map name: `^[a-zA-Z0-9][a-zA-Z0-9_-]{4,59}$`. System maps
/// start with `_`, so user names can never collide with them.
pub fn validate_scope_map_name(name: &str) -> Result<(), NameError> {
    validate_name(name, SCOPE_MAP_NAME_MAX)
}

/// Checks a signature-trust identity name (policies name it in `context.signatures`):
/// as a token name.
pub fn validate_signature_trust_name(name: &str) -> Result<(), NameError> {
    validate_name(name, TOKEN_NAME_MAX)
}

fn validate_name(name: &str, max: usize) -> Result<(), NameError> {
    let ok = (NAME_MIN..=max).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(NameError::Invalid {
            name: name.to_owned(),
            max,
        })
    }
}

/// The system-defined scope maps, all on `*`. `_repositories_admin` grants every action,
/// `trust/write` included (SPEC §2); the admin *account* still may not sign (base policy).
pub fn system_scope_maps() -> Vec<ScopeMap> {
    use Action::*;
    let maps: [(&str, &str, &[Action]); 5] = [
        (
            "_repositories_admin",
            "Can perform all read, write, delete and signing operations on the registry",
            &Action::ALL,
        ),
        (
            "_repositories_pull",
            "Can pull any repository of the registry",
            &[ContentRead],
        ),
        (
            "_repositories_push",
            "Can push to any repository of the registry",
            &[ContentRead, ContentWrite],
        ),
        (
            "_repositories_pull_metadata_read",
            "Can perform all read operations on the registry",
            &[ContentRead, MetadataRead],
        ),
        (
            "_repositories_push_metadata_write",
            "Can perform all read and write operations on the registry",
            &[ContentRead, ContentWrite, MetadataRead, MetadataWrite],
        ),
    ];
    maps.into_iter()
        .map(|(name, description, actions)| ScopeMap {
            name: name.to_owned(),
            description: description.to_owned(),
            rules: vec![ScopeRule {
                repository: RepositoryPattern::Root,
                actions: actions.iter().copied().collect(),
            }],
            system: true,
            created_at: 0,
            updated_at: 0,
        })
        .collect()
}

/// Whether `name` is a system scope map's name (they all start with `_`).
pub fn is_system_name(name: &str) -> bool {
    name.starts_with('_')
}

/// The actions `scope_map` grants on `repository`: the union over every matching rule.
pub fn actions_for(scope_map: &ScopeMap, repository: &str) -> BTreeSet<Action> {
    scope_map
        .rules
        .iter()
        .filter(|r| r.repository.matches(repository))
        .flat_map(|r| r.actions.iter().copied())
        .collect()
}

/// Adds `add` to `rules` (union per pattern) and removes `remove` (removing an action
/// that is not there is a no-op); rules left without actions disappear. The result has
/// one rule per pattern, ordered `*` first, then prefix patterns, then exact names.
pub fn apply_rule_changes(
    rules: &[ScopeRule],
    add: &[ScopeRule],
    remove: &[ScopeRule],
) -> Vec<ScopeRule> {
    let mut by_pattern: BTreeMap<RepositoryPattern, BTreeSet<Action>> = BTreeMap::new();
    for r in rules.iter().chain(add) {
        by_pattern
            .entry(r.repository.clone())
            .or_default()
            .extend(r.actions.iter().copied());
    }
    for r in remove {
        if let Some(actions) = by_pattern.get_mut(&r.repository) {
            actions.retain(|a| !r.actions.contains(a));
        }
    }
    by_pattern
        .into_iter()
        .filter(|(_, actions)| !actions.is_empty())
        .map(|(repository, actions)| ScopeRule {
            repository,
            actions,
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error(transparent)]
    Action(#[from] UnknownActionError),
    #[error("repository `{0}` has no actions; give at least one")]
    NoActions(String),
    #[error(
        "action `{0}` is not of the form repositories/<pattern>/<action>, e.g. repositories/samples/*/content/read"
    )]
    ActionString(String),
}

/// Parses one rule from a repository pattern and action names.
pub fn parse_rule<S: AsRef<str>>(repository: &str, actions: &[S]) -> Result<ScopeRule, RuleError> {
    let pattern = RepositoryPattern::parse(repository)?;
    if actions.is_empty() {
        return Err(RuleError::NoActions(repository.to_owned()));
    }
    let actions = actions
        .iter()
        .map(|a| a.as_ref().parse())
        .collect::<Result<_, _>>()?;
    Ok(ScopeRule {
        repository: pattern,
        actions,
    })
}

/// ACR's flat action strings for a rule list: `repositories/samples/*/content/read`.
pub fn action_strings(rules: &[ScopeRule]) -> Vec<String> {
    rules
        .iter()
        .flat_map(|r| {
            r.actions
                .iter()
                .map(move |a| format!("repositories/{}/{a}", r.repository))
        })
        .collect()
}

/// Parses one ACR action string into a single-action rule.
pub fn parse_action_string(s: &str) -> Result<ScopeRule, RuleError> {
    let bad = || RuleError::ActionString(s.to_owned());
    let rest = s.strip_prefix("repositories/").ok_or_else(bad)?;
    let mut parts = rest.rsplitn(3, '/');
    let (verb, group, pattern) = match (parts.next(), parts.next(), parts.next()) {
        (Some(v), Some(g), Some(p)) => (v, g, p),
        _ => return Err(bad()),
    };
    parse_rule(pattern, &[format!("{group}/{verb}")])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rules: &[(&str, &[&str])]) -> ScopeMap {
        ScopeMap {
            name: "test-map".into(),
            description: String::new(),
            rules: rules
                .iter()
                .map(|(p, a)| parse_rule(p, a).unwrap())
                .collect(),
            system: false,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn set(actions: &[Action]) -> BTreeSet<Action> {
        actions.iter().copied().collect()
    }

    #[test]
    fn permissions_are_additive_spec_example() {
        let m = map(&[
            ("sample/*", &["content/read"]),
            ("sample/teamA/*", &["content/write"]),
            ("sample/teamA/projectB", &["content/delete"]),
        ]);
        use Action::*;
        assert_eq!(
            actions_for(&m, "sample/teama/projectb"),
            set(&[ContentRead, ContentWrite, ContentDelete])
        );
        assert_eq!(
            actions_for(&m, "sample/teama/projectc"),
            set(&[ContentRead, ContentWrite])
        );
        assert_eq!(actions_for(&m, "sample/other"), set(&[ContentRead]));
        assert_eq!(actions_for(&m, "sample"), set(&[]));
        assert_eq!(actions_for(&m, "elsewhere/x"), set(&[]));
    }

    #[test]
    fn rules_cover_repositories_that_do_not_exist_yet() {
        // Matching is by name only; there is no registry lookup to fail.
        let m = map(&[("new/*", &["content/write", "content/read"])]);
        assert_eq!(actions_for(&m, "new/never/pushed/before").len(), 2);
    }

    #[test]
    fn system_maps_are_as_documented() {
        let maps = system_scope_maps();
        let names: Vec<_> = maps.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "_repositories_admin",
                "_repositories_pull",
                "_repositories_push",
                "_repositories_pull_metadata_read",
                "_repositories_push_metadata_write"
            ]
        );
        use Action::*;
        let admin = &maps[0];
        assert!(admin.system && maps.iter().all(|m| m.system && is_system_name(&m.name)));
        assert_eq!(actions_for(admin, "any/repo"), set(&Action::ALL));
        assert_eq!(actions_for(&maps[1], "x"), set(&[ContentRead]));
        assert_eq!(
            actions_for(&maps[2], "x"),
            set(&[ContentRead, ContentWrite])
        );
        assert_eq!(
            actions_for(&maps[3], "x"),
            set(&[ContentRead, MetadataRead])
        );
        assert_eq!(
            actions_for(&maps[4], "x"),
            set(&[ContentRead, ContentWrite, MetadataRead, MetadataWrite])
        );
    }

    #[test]
    fn names_follow_the_documented_rule() {
        for ok in ["abcde", "ci-bot_1", "A1234", &"a".repeat(50)] {
            assert_eq!(validate_token_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "abcd",
            "_abcde",
            "-abcde",
            "abc de",
            "abcdé",
            &"a".repeat(51),
        ] {
            assert!(
                matches!(validate_token_name(bad), Err(NameError::Invalid { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            validate_token_name("Admin"),
            Err(NameError::Reserved("Admin".into()))
        );
        let derived = format!("{}-scope-map", "a".repeat(50));
        assert_eq!(validate_scope_map_name(&derived), Ok(()));
        assert!(validate_scope_map_name("_repositories_pull").is_err());
        let msg = validate_token_name("x y").unwrap_err().to_string();
        assert!(msg.contains("`x y`") && msg.contains("5 to 50"), "{msg}");
    }

    #[test]
    fn add_and_remove_rules() {
        let base = map(&[("a/*", &["content/read"])]).rules;
        let add = [
            parse_rule("a/*", &["content/write"]).unwrap(),
            parse_rule("b", &["metadata/read"]).unwrap(),
        ];
        let rules = apply_rule_changes(&base, &add, &[]);
        assert_eq!(
            action_strings(&rules),
            [
                "repositories/a/*/content/read",
                "repositories/a/*/content/write",
                "repositories/b/metadata/read"
            ]
        );
        // Removing an absent action is a no-op; removing the last action drops the rule.
        let remove = [
            parse_rule("a/*", &["content/delete", "content/read"]).unwrap(),
            parse_rule("b", &["metadata/read"]).unwrap(),
            parse_rule("zzz", &["content/read"]).unwrap(),
        ];
        let rules = apply_rule_changes(&rules, &[], &remove);
        assert_eq!(action_strings(&rules), ["repositories/a/*/content/write"]);
    }

    #[test]
    fn action_strings_round_trip() {
        for s in [
            "repositories/*/content/read",
            "repositories/samples/*/trust/write",
            "repositories/samples/hello/metadata/write",
        ] {
            let rule = parse_action_string(s).unwrap();
            assert_eq!(action_strings(&[rule]), [s]);
        }
        assert!(matches!(
            parse_action_string("samples/content/read"),
            Err(RuleError::ActionString(_))
        ));
        assert!(matches!(
            parse_action_string("repositories/content/read"),
            Err(RuleError::ActionString(_))
        ));
        assert!(matches!(
            parse_action_string("repositories/a/*/b/content/read"),
            Err(RuleError::Pattern(PatternError::WildcardInMiddle(_)))
        ));
        assert!(matches!(
            parse_action_string("repositories/a/content/fly"),
            Err(RuleError::Action(_))
        ));
        assert!(matches!(
            parse_rule::<&str>("a", &[]),
            Err(RuleError::NoActions(_))
        ));
    }
}
