//! What each loaded policy reads, decided once per policy-file generation: whether it
//! can apply to a principal kind and action, whether it reads `context` (and which
//! fields), and how it reads the repository. [`Loaded`] holds one generation's policies
//! sliced by (principal kind, action) on those answers.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    ActionConstraint, EntityUid, Policy, PolicySet, PrincipalConstraint, ResourceConstraint,
};

use super::files::PolicyError;
use crate::identity::{Action, Principal};

/// The principal types of the schema, used to slice base and user policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Token,
    Admin,
    Anonymous,
}

impl Kind {
    pub(super) const ALL: [Kind; 3] = [Kind::Token, Kind::Admin, Kind::Anonymous];

    pub(super) fn of(principal: &Principal) -> Kind {
        match principal {
            Principal::Token { .. } => Kind::Token,
            Principal::Admin => Kind::Admin,
            Principal::Anonymous => Kind::Anonymous,
        }
    }

    /// The position in `Kind::ALL`.
    pub(super) const fn index(self) -> usize {
        match self {
            Kind::Token => 0,
            Kind::Admin => 1,
            Kind::Anonymous => 2,
        }
    }

    pub(super) fn type_name(self) -> &'static str {
        match self {
            Kind::Token => "Token",
            Kind::Admin => "Admin",
            Kind::Anonymous => "Anonymous",
        }
    }
}

/// One loaded generation of policy files.
pub(super) struct Loaded {
    pub(super) generation: u64,
    pub(super) count: usize,
    /// Base and user policies that can apply and never read `context`, per (principal
    /// kind, action): decided once per principal, repository and action.
    pub(super) sliced: HashMap<(Kind, Action), Vec<Policy>>,
    /// Those that can apply and read `context`: the only ones evaluated per request.
    pub(super) contextual: HashMap<(Kind, Action), Contextual>,
    /// The (principal kind, action) pairs whose decisions depend on the repository
    /// only through the scope-map rules matching it and its attributes: no policy
    /// reads `resource` but for its flags. Their context-free outcome is shared by
    /// every repository with the same matching rules and attributes, and no repository
    /// entity is built (contextual policies that read flags get a flags-only one, shared
    /// by every repository with the same attributes).
    pub(super) by_rules: HashSet<(Kind, Action)>,
    /// What the contextual policies of each (kind, action) read, indexed by
    /// [`Loaded::reads_index`]: consulted on every decision to key the decision cache.
    pub(super) reads: Vec<ContextReads>,
}

/// The base policy that refuses a token whose password has expired: the one reader of
/// `context.now` whose answer changes at a known second (the password's expiry).
pub(super) const PASSWORD_EXPIRED_POLICY: &str = "base/password-expired";

/// Which request facts the contextual policies of one (kind, action) read. A decision
/// depends on no others, so the decision cache keys it without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ContextReads {
    /// `context.referenceKind`, `context.tag` or `context.digest`.
    pub(super) reference: bool,
    pub(super) operation: bool,
    pub(super) signed: bool,
    pub(super) signatures: bool,
    pub(super) signature_artifact: bool,
    pub(super) source_ip: bool,
    /// `context.now`, by a policy other than [`PASSWORD_EXPIRED_POLICY`].
    pub(super) now: bool,
}

impl ContextReads {
    /// Every field: `context` used as a whole (or an unknown action).
    pub(super) const ALL: ContextReads = ContextReads {
        reference: true,
        operation: true,
        signed: true,
        signatures: true,
        signature_artifact: true,
        source_ip: true,
        now: true,
    };

    fn of(fields: Option<&[String]>) -> ContextReads {
        let Some(fields) = fields else {
            return ContextReads::ALL;
        };
        let reads = |name: &str| fields.iter().any(|f| f == name);
        ContextReads {
            reference: reads("referenceKind") || reads("tag") || reads("digest"),
            operation: reads("operation"),
            signed: reads("signed"),
            signatures: reads("signatures"),
            signature_artifact: reads("signatureArtifact"),
            source_ip: reads("sourceIp"),
            now: reads("now"),
        }
    }
}

pub(super) struct Contextual {
    pub(super) set: PolicySet,
    /// The context fields the set reads (`None`: it uses `context` as a whole), so a
    /// request builds only those.
    pub(super) fields: Option<Vec<String>>,
    /// Some policy of the set reads a repository flag (`resource.signedOnly`).
    pub(super) reads_flags: bool,
}

impl Loaded {
    pub(super) fn new(policies: Vec<Policy>, generation: u64) -> Result<Self, PolicyError> {
        let mut sliced = HashMap::new();
        let mut contextual = HashMap::new();
        let mut by_rules = HashSet::new();
        let mut reads_by_pair = vec![ContextReads::ALL; Kind::ALL.len() * Action::ALL.len()];
        for kind in Kind::ALL {
            for action in Action::ALL {
                let (reads, free): (Vec<Policy>, Vec<Policy>) = policies
                    .iter()
                    .filter(|p| may_apply(p, kind, action))
                    .cloned()
                    .partition(reads_context);
                if free
                    .iter()
                    .chain(&reads)
                    .all(|p| repository_use(p) <= RepositoryUse::Flags)
                {
                    by_rules.insert((kind, action));
                }
                let fields = context_fields(&reads);
                if let Some(slot) = reads_by_pair.get_mut(Loaded::reads_index(kind, action)) {
                    *slot = ContextReads::of(fields.as_deref());
                    // The password's expiry bounds a cached decision instead of the clock
                    // keying it, unless another policy reads the clock too.
                    let others: Vec<Policy> = reads
                        .iter()
                        .filter(|p| p.id().to_string() != PASSWORD_EXPIRED_POLICY)
                        .cloned()
                        .collect();
                    slot.now = ContextReads::of(context_fields(&others).as_deref()).now;
                }
                let reads_flags = reads
                    .iter()
                    .any(|p| repository_use(p) == RepositoryUse::Flags);
                let set =
                    PolicySet::from_policies(reads).map_err(|e| PolicyError::Set(e.to_string()))?;
                sliced.insert((kind, action), free);
                contextual.insert(
                    (kind, action),
                    Contextual {
                        set,
                        fields,
                        reads_flags,
                    },
                );
            }
        }
        Ok(Loaded {
            generation,
            count: policies.len(),
            sliced,
            contextual,
            by_rules,
            reads: reads_by_pair,
        })
    }

    fn reads_index(kind: Kind, action: Action) -> usize {
        kind.index() * Action::ALL.len() + action.index()
    }

    /// What the contextual policies of (`kind`, `action`) read.
    pub(super) fn reads(&self, kind: Kind, action: Action) -> ContextReads {
        self.reads
            .get(Loaded::reads_index(kind, action))
            .copied()
            .unwrap_or(ContextReads::ALL)
    }
}

/// How a policy reads the repository, least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum RepositoryUse {
    None,
    /// Only `resource.f` / `resource has f` for attribute flags (not `name`).
    Flags,
    /// Anything else: a resource scope, `resource.name`, `resource` as a value.
    Other,
}

/// The repository flags a policy may read and still be decided by matching rules and
/// attributes alone (the repository entity's attributes but `name`).
pub(super) const REPOSITORY_FLAGS: [&str; 5] = [
    "readEnabled",
    "writeEnabled",
    "deleteEnabled",
    "listEnabled",
    "signedOnly",
];

/// How `policy` reads `resource` (conservatively `Other` without a JSON form).
pub(super) fn repository_use(policy: &Policy) -> RepositoryUse {
    fn walk(json: &serde_json::Value) -> RepositoryUse {
        match json {
            serde_json::Value::Object(map) => {
                for op in [".", "has"] {
                    if let Some(access) = map.get(op)
                        && access.get("left") == Some(&serde_json::json!({"Var": "resource"}))
                    {
                        return match access.get("attr") {
                            Some(serde_json::Value::String(attr))
                                if REPOSITORY_FLAGS.contains(&attr.as_str()) =>
                            {
                                RepositoryUse::Flags
                            }
                            _ => RepositoryUse::Other,
                        };
                    }
                }
                if map.get("Var").is_some_and(|v| v == "resource") {
                    return RepositoryUse::Other;
                }
                map.values().map(walk).max().unwrap_or(RepositoryUse::None)
            }
            serde_json::Value::Array(items) => {
                items.iter().map(walk).max().unwrap_or(RepositoryUse::None)
            }
            _ => RepositoryUse::None,
        }
    }
    if !matches!(policy.resource_constraint(), ResourceConstraint::Any) {
        return RepositoryUse::Other;
    }
    match policy.to_json() {
        Ok(json) => walk(&json),
        Err(_) => RepositoryUse::Other,
    }
}

/// Whether the policy mentions the `context` variable (conservatively true when its
/// JSON form cannot be produced).
pub(super) fn reads_context(policy: &Policy) -> bool {
    fn mentions(json: &serde_json::Value) -> bool {
        match json {
            serde_json::Value::Object(map) => map
                .iter()
                .any(|(key, value)| (key == "Var" && value == "context") || mentions(value)),
            serde_json::Value::Array(items) => items.iter().any(mentions),
            _ => false,
        }
    }
    match policy.to_json() {
        Ok(json) => mentions(&json),
        Err(_) => true,
    }
}

/// The fields of `context` that `policies` read through `context.f` or `context has f`,
/// or `None` when one uses `context` in any other way (or has no JSON form).
pub(super) fn context_fields(policies: &[Policy]) -> Option<Vec<String>> {
    fn collect(json: &serde_json::Value, fields: &mut Vec<String>) -> bool {
        match json {
            serde_json::Value::Object(map) => {
                for op in [".", "has"] {
                    if let Some(access) = map.get(op)
                        && access.get("left") == Some(&serde_json::json!({"Var": "context"}))
                        && let Some(serde_json::Value::String(attr)) = access.get("attr")
                    {
                        fields.push(attr.clone());
                        return true;
                    }
                }
                if map.get("Var").is_some_and(|v| v == "context") {
                    return false;
                }
                map.values().all(|v| collect(v, fields))
            }
            serde_json::Value::Array(items) => items.iter().all(|v| collect(v, fields)),
            _ => true,
        }
    }
    let mut fields = Vec::new();
    for policy in policies {
        let json = policy.to_json().ok()?;
        if !collect(&json, &mut fields) {
            return None;
        }
    }
    fields.sort_unstable();
    fields.dedup();
    Some(fields)
}

/// Whether a policy's principal and action scopes can match `kind` and `action`
/// (conservative: `principal in ...` is kept for every kind).
pub(super) fn may_apply(policy: &Policy, kind: Kind, action: Action) -> bool {
    let principal_ok = match policy.principal_constraint() {
        PrincipalConstraint::Any | PrincipalConstraint::In(_) => true,
        PrincipalConstraint::Eq(uid) => uid.type_name().to_string() == kind.type_name(),
        PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => {
            t.to_string() == kind.type_name()
        }
    };
    let is_action = |uid: &EntityUid| uid.id().unescaped() == action.as_str();
    let action_ok = match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => is_action(&uid),
        ActionConstraint::In(uids) => uids.iter().any(is_action),
    };
    principal_ok && action_ok
}
