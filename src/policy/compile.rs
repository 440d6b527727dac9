//! Scope maps compiled to Cedar: one `permit` per rule, `@id("scopemap/<map>/rule/<n>")`
//! (n counts from 1), and an index from each rule's pattern key to its rules so a
//! request only ever evaluates the rules that can match its repository.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use cedar_policy::{EntityId, EntityTypeName, EntityUid, Policy, PolicyId};

use crate::identity::{Action, RepositoryPattern, ScopeMap, ScopeRule};

/// A bit per action, in `Action::ALL` order.
pub fn action_bit(action: Action) -> u8 {
    1 << action.index()
}

pub fn rule_id(map: &str, n: usize) -> String {
    format!("scopemap/{map}/rule/{n}")
}

/// The schema's entity type names, parsed once: parsing a name runs Cedar's parser
/// (a lexer regex included), a large share of a decision's cost if done per request.
static TYPE_NAMES: LazyLock<HashMap<&'static str, EntityTypeName>> = LazyLock::new(|| {
    [
        "Token",
        "Admin",
        "Anonymous",
        "Repository",
        "ScopeMap",
        "Action",
    ]
    .into_iter()
    .filter_map(|name| Some((name, EntityTypeName::from_str(name).ok()?)))
    .collect()
});

/// A Cedar entity uid for one of the schema's types (names are escaped by Cedar).
pub fn uid(type_name: &str, id: &str) -> Option<EntityUid> {
    let type_name = match TYPE_NAMES.get(type_name) {
        Some(parsed) => parsed.clone(),
        None => EntityTypeName::from_str(type_name).ok()?,
    };
    Some(EntityUid::from_type_name_and_id(
        type_name,
        EntityId::new(id),
    ))
}

/// Escapes `s` for a Cedar string literal; in `like` patterns `*` is escaped too.
fn escape(s: &str, like: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '*' if like => out.push_str("\\*"),
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    out
}

fn cedar_string(s: &str) -> String {
    format!("\"{}\"", escape(s, false))
}

/// The Cedar text of one rule.
pub fn rule_cedar(map: &str, n: usize, rule: &ScopeRule) -> String {
    let principal = uid("ScopeMap", map).map_or_else(String::new, |u| u.to_string());
    let actions = rule
        .actions
        .iter()
        .map(|a| format!("Action::{}", cedar_string(a.as_str())))
        .collect::<Vec<_>>()
        .join(", ");
    let (resource, condition) = match &rule.repository {
        RepositoryPattern::Root => ("resource".to_owned(), String::new()),
        // `*` in `like` spans `/` (multi-level, as ACR); `prefix/*` never matches
        // `prefix` itself.
        RepositoryPattern::Prefix(prefix) => (
            "resource".to_owned(),
            format!(
                "\nwhen {{ resource.name like \"{}*\" }}",
                escape(prefix, true)
            ),
        ),
        RepositoryPattern::Exact(name) => (
            uid("Repository", name).map_or_else(String::new, |u| format!("resource == {u}")),
            String::new(),
        ),
    };
    format!(
        "@id({})\npermit (\n  principal in {principal},\n  action in [{actions}],\n  {resource}\n){condition};\n",
        cedar_string(&rule_id(map, n))
    )
}

/// The Cedar text of a whole scope map (what `policy export` prints).
pub fn scope_map_cedar(map: &ScopeMap) -> String {
    let mut out = format!("// scope map `{}`\n", escape(&map.name, false));
    for (i, rule) in map.rules.iter().enumerate() {
        out.push_str(&rule_cedar(&map.name, i + 1, rule));
    }
    out
}

/// A compiled rule: its policy and the actions it grants.
pub struct CompiledRule {
    pub policy: Policy,
    pub actions: u8,
}

/// A scope map's rules as Cedar policies, indexed by pattern key.
pub struct CompiledScopeMap {
    /// Unique per compilation: keys the policy-set cache, so a recompiled map never
    /// reuses a stale set.
    pub id: u64,
    pub rules: Vec<CompiledRule>,
    pub by_key: HashMap<String, Vec<u32>>,
}

impl CompiledScopeMap {
    pub fn compile(map: &ScopeMap, id: u64) -> Result<Self, String> {
        let mut rules = Vec::with_capacity(map.rules.len());
        let mut by_key: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, rule) in map.rules.iter().enumerate() {
            let text = rule_cedar(&map.name, i + 1, rule);
            let policy = Policy::from_str(&text)
                .map_err(|e| format!("scope map `{}` rule {}: {e}", map.name, i + 1))?
                .new_id(PolicyId::new(rule_id(&map.name, i + 1)));
            let actions = rule.actions.iter().fold(0, |bits, a| bits | action_bit(*a));
            by_key
                .entry(rule.repository.key().to_owned())
                .or_default()
                .push(u32::try_from(i).map_err(|e| e.to_string())?);
            rules.push(CompiledRule { policy, actions });
        }
        Ok(Self { id, rules, by_key })
    }

    /// Indices of the rules whose pattern matches `repository` and that grant `action`
    /// (pass `u8::MAX` for any action), in rule order.
    pub fn matching(&self, repository: &str, actions: u8) -> Vec<u32> {
        let mut out: Vec<u32> = crate::identity::pattern::candidate_keys(repository)
            .filter_map(|key| self.by_key.get(key))
            .flatten()
            .copied()
            .filter(|i| {
                self.rules
                    .get(*i as usize)
                    .is_some_and(|r| r.actions & actions != 0)
            })
            .collect();
        out.sort_unstable();
        out
    }
}

/// A compiled map with the scope map it was compiled from (to detect changes).
pub type CompiledEntry = (Arc<ScopeMap>, Arc<CompiledScopeMap>);
