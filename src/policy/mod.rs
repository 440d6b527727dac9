//! Policy: every request decided by Cedar. Owns the schema, the shipped base policies,
//! compilation of scope maps into Cedar policies, the sliced and cached policy sets,
//! loading/validating user policy files and their reloads, and the policy tools. (The
//! gateway audits decisions on requests: [`crate::audit`].)
//!
//! Cedar evaluates every policy in a set, so the set for one request is sliced: the
//! base and user policies whose scope can apply to the principal's type and the action,
//! plus only the principal's scope-map rules whose pattern key is a candidate key of
//! the repository and that grant the action. Of those, the policies that never read
//! `context` (scope-map rules, most base rules) are decided once per principal,
//! repository and action; a request evaluates only the few that read `context`, and
//! the two outcomes are combined by Cedar's rule (any forbid denies, else any permit
//! allows). When no loaded policy reads the repository but for its attribute flags
//! (outside the scope-map rules, matched in Rust by pattern key), the context-free
//! outcome is shared by every repository with the same matching rules and attributes,
//! so a new repository builds no entities; otherwise it is kept per (principal,
//! repository). The principal's entity and compiled scope map, those outcomes, the
//! sliced sets and the decisions are cached in `moka`, keyed by the identity snapshot
//! version and the policy-file generation, so any change is seen by the very next
//! decision.

mod compile;
mod files;
pub mod testcases;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use cedar_policy::{
    ActionConstraint, Authorizer, Context, Effect, Entities, Entity, EntityUid, Policy, PolicyId,
    PolicySet, PrincipalConstraint, Request, ResourceConstraint, RestrictedExpression, Schema,
};
use moka::sync::Cache;

use crate::identity::{Action, IdentitySnapshot, Principal, RepositoryAttributes, UnixSeconds};
use compile::{CompiledEntry, CompiledScopeMap, action_bit, uid};
pub use compile::{rule_cedar, scope_map_cedar};
pub use files::{Diagnostic, PolicyError};

/// A request to decide: who, what, on which repository, in which context.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuthzRequest {
    pub principal: Principal,
    pub action: Action,
    pub repository: String,
    pub context: RequestContext,
}

/// Request facts user policies may test (`context.*` in Cedar).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestContext {
    /// The manifest reference, if the request has one.
    pub reference: Option<Reference>,
    pub signed: bool,
    pub source_ip: Option<IpAddr>,
    pub now: UnixSeconds,
    /// What the request does, finer than the action (`context.operation`).
    pub operation: Operation,
}

/// The registry operation behind a request, so policies can tell a tag create from a
/// tag overwrite, or a delete by tag from a delete by digest (`context.operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// Manifest or blob GET/HEAD.
    Pull,
    /// Blob upload (start, chunk, complete, cancel, status).
    PushBlob,
    /// Blob mount from another repository (the read side is decided as `Pull`).
    Mount,
    /// Manifest PUT by tag where the tag does not exist yet.
    CreateTag,
    /// Manifest PUT by tag where the tag already exists.
    OverwriteTag,
    /// Manifest PUT by digest.
    PushManifest,
    /// Manifest DELETE by tag (untag).
    DeleteTag,
    /// Manifest DELETE by digest, or an image delete (the manifest a tag or digest
    /// names, with every tag on it: `context.tag`/`context.digest` say which).
    DeleteManifest,
    /// A whole repository deleted at once: every manifest and tag, and its catalog entry.
    DeleteRepository,
    DeleteBlob,
    ListTags,
    ListReferrers,
    Catalog,
    ReadAttributes,
    WriteAttributes,
    ReadTrust,
    WriteTrust,
    DeleteTrust,
    /// Anything else (policy tools, explain).
    #[default]
    Other,
}

impl Operation {
    /// The string policies compare `context.operation` with.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Pull => "pull",
            Operation::PushBlob => "push-blob",
            Operation::Mount => "mount",
            Operation::CreateTag => "create-tag",
            Operation::OverwriteTag => "overwrite-tag",
            Operation::PushManifest => "push-manifest",
            Operation::DeleteTag => "delete-tag",
            Operation::DeleteManifest => "delete-manifest",
            Operation::DeleteRepository => "delete-repository",
            Operation::DeleteBlob => "delete-blob",
            Operation::ListTags => "list-tags",
            Operation::ListReferrers => "list-referrers",
            Operation::Catalog => "catalog",
            Operation::ReadAttributes => "read-attributes",
            Operation::WriteAttributes => "write-attributes",
            Operation::ReadTrust => "read-trust",
            Operation::WriteTrust => "write-trust",
            Operation::DeleteTrust => "delete-trust",
            Operation::Other => "other",
        }
    }
}

/// A manifest reference: by tag or by digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(String),
}

/// The outcome of one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Ids of the determining policies (the satisfied permits on allow; the satisfied
    /// or erroring forbids on deny; empty when nothing permitted).
    pub policies: Vec<String>,
    pub errors: Vec<String>,
}

impl Decision {
    fn deny(error: String) -> Self {
        Decision {
            allowed: false,
            policies: Vec::new(),
            errors: vec![error],
        }
    }
}

/// A decision with the scope-map rules that match the repository (for `explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub decision: Decision,
    /// `scopemap/<map>/rule/<n>: <pattern> -> <actions>` for each rule whose pattern
    /// matches the repository, whatever its actions.
    pub matching_rules: Vec<String>,
}

/// The principal types of the schema, used to slice base and user policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Token,
    Admin,
    Anonymous,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Token, Kind::Admin, Kind::Anonymous];

    fn of(principal: &Principal) -> Kind {
        match principal {
            Principal::Token { .. } => Kind::Token,
            Principal::Admin => Kind::Admin,
            Principal::Anonymous => Kind::Anonymous,
        }
    }

    fn type_name(self) -> &'static str {
        match self {
            Kind::Token => "Token",
            Kind::Admin => "Admin",
            Kind::Anonymous => "Anonymous",
        }
    }
}

/// One loaded generation of policy files.
struct Loaded {
    generation: u64,
    count: usize,
    /// Base and user policies that can apply and never read `context`, per (principal
    /// kind, action): decided once per principal, repository and action.
    sliced: HashMap<(Kind, Action), Vec<Policy>>,
    /// Those that can apply and read `context`: the only ones evaluated per request.
    contextual: HashMap<(Kind, Action), Contextual>,
    /// The (principal kind, action) pairs whose decisions depend on the repository
    /// only through the scope-map rules matching it and its attributes: no policy
    /// reads `resource` but for its flags. Their context-free outcome is shared by
    /// every repository with the same matching rules and attributes, and no repository
    /// entity is built (contextual policies that read flags get a flags-only one, shared
    /// by every repository with the same attributes).
    by_rules: HashSet<(Kind, Action)>,
}

struct Contextual {
    set: PolicySet,
    /// The context fields the set reads (`None`: it uses `context` as a whole), so a
    /// request builds only those.
    fields: Option<Vec<String>>,
    /// Some policy of the set reads a repository flag (`resource.signedOnly`).
    reads_flags: bool,
}

impl Loaded {
    fn new(policies: Vec<Policy>, generation: u64) -> Result<Self, PolicyError> {
        let mut sliced = HashMap::new();
        let mut contextual = HashMap::new();
        let mut by_rules = HashSet::new();
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
        })
    }
}

/// How a policy reads the repository, least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum RepositoryUse {
    None,
    /// Only `resource.f` / `resource has f` for attribute flags (not `name`).
    Flags,
    /// Anything else: a resource scope, `resource.name`, `resource` as a value.
    Other,
}

/// The repository flags a policy may read and still be decided by matching rules and
/// attributes alone (the repository entity's attributes but `name`).
const REPOSITORY_FLAGS: [&str; 5] = [
    "readEnabled",
    "writeEnabled",
    "deleteEnabled",
    "listEnabled",
    "signedOnly",
];

/// How `policy` reads `resource` (conservatively `Other` without a JSON form).
fn repository_use(policy: &Policy) -> RepositoryUse {
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
fn reads_context(policy: &Policy) -> bool {
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
fn context_fields(policies: &[Policy]) -> Option<Vec<String>> {
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

/// The satisfied and erroring policies of one evaluation, by effect.
#[derive(Debug, Clone, Default)]
struct Outcome {
    permits: Vec<String>,
    forbids: Vec<String>,
    failed_forbids: Vec<String>,
    errors: Vec<String>,
}

impl Outcome {
    fn of(set: &PolicySet, response: &cedar_policy::Response) -> Self {
        let diagnostics = response.diagnostics();
        let errors = diagnostics.errors().map(ToString::to_string).collect();
        let forbid = |id: &PolicyId| set.policy(id).is_some_and(|p| p.effect() == Effect::Forbid);
        let failed_forbids = diagnostics
            .errors()
            .map(|e| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
                e.policy_id()
            })
            .filter(|id| forbid(id))
            .map(ToString::to_string)
            .collect();
        // Cedar reports the satisfied policies of the deciding effect only: all
        // satisfied forbids on deny, all satisfied permits on allow.
        let (forbids, permits) = diagnostics.reason().partition::<Vec<_>, _>(|id| forbid(id));
        Outcome {
            permits: permits.into_iter().map(ToString::to_string).collect(),
            forbids: forbids.into_iter().map(ToString::to_string).collect(),
            failed_forbids,
            errors,
        }
    }

    /// Cedar's rule over the union of two evaluations: a satisfied forbid denies, else
    /// a satisfied permit allows. Cedar skips a policy whose evaluation errors; for a
    /// forbid that would turn an intended deny into an allow, so any erroring forbid
    /// denies (fail closed).
    fn decide(&self, other: Outcome) -> Decision {
        let join = |a: &[String], b: Vec<String>| {
            let mut all = a.to_vec();
            all.extend(b);
            all.sort_unstable();
            all
        };
        let errors = join(&self.errors, other.errors);
        let failed_forbids = join(&self.failed_forbids, other.failed_forbids);
        if !failed_forbids.is_empty() {
            return Decision {
                allowed: false,
                policies: failed_forbids,
                errors,
            };
        }
        let forbids = join(&self.forbids, other.forbids);
        if !forbids.is_empty() {
            return Decision {
                allowed: false,
                policies: forbids,
                errors,
            };
        }
        let permits = join(&self.permits, other.permits);
        Decision {
            allowed: !permits.is_empty(),
            policies: permits,
            errors,
        }
    }
}

/// Whether a policy's principal and action scopes can match `kind` and `action`
/// (conservative: `principal in ...` is kept for every kind).
fn may_apply(policy: &Policy, kind: Kind, action: Action) -> bool {
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

/// Decision-cache counters since start (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    request: AuthzRequest,
    version: u64,
    generation: u64,
    anonymous_pull: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SetKey {
    generation: u64,
    kind: Kind,
    /// 0 when the principal has no scope map.
    compiled: u64,
    action: Action,
    rules: Vec<u32>,
}

/// What every decision for one principal shares at one identity version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PrincipalKey {
    principal: Principal,
    version: u64,
    anonymous_pull: bool,
}

struct PrincipalEntry {
    uid: EntityUid,
    entity: Entity,
    /// The principal alone: enough for contextual policies that never read `resource`.
    entities: Entities,
    /// The token's compiled scope map, if it has one.
    compiled: Option<Arc<CompiledScopeMap>>,
}

/// What every decision for one principal on one repository shares, the request
/// context aside, for (kind, action) pairs outside `Loaded::by_rules`: a decision-cache
/// miss for a known pair costs one lookup here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PreparedKey {
    principal: Principal,
    repository: String,
    version: u64,
    generation: u64,
    anonymous_pull: bool,
}

/// What decides the context-free outcome of a `by_rules` (kind, action): the
/// principal, its matching scope-map rules and the repository's attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FixedKey {
    principal: Principal,
    version: u64,
    generation: u64,
    anonymous_pull: bool,
    /// 0 when the principal has no scope map.
    compiled: u64,
    rules: Vec<u32>,
    attributes: RepositoryAttributes,
    action: Action,
}

struct Prepared {
    principal: EntityUid,
    resource: EntityUid,
    entities: Entities,
    compiled: Option<Arc<CompiledScopeMap>>,
    /// The outcome of the context-free policies per action (`Action::ALL` order),
    /// evaluated on first use.
    fixed: [OnceLock<Result<Outcome, String>>; Action::ALL.len()],
}

const DECISION_CACHE: u64 = 100_000;
const SET_CACHE: u64 = 10_000;
const PREPARED_CACHE: u64 = 10_000;
const FIXED_CACHE: u64 = 10_000;
const PRINCIPAL_CACHE: u64 = 10_000;
const COMPILED_CACHE: u64 = 10_000;
const SOURCE_IP_CACHE: u64 = 10_000;

/// The Cedar decision engine: policy files, compiled scope maps and caches.
pub struct PolicyEngine {
    dirs: Vec<PathBuf>,
    /// Extra files loaded besides `dirs` (the policy test tool's per-file examples).
    files: Vec<PathBuf>,
    schema: Schema,
    loaded: ArcSwap<Loaded>,
    next_id: AtomicU64,
    anonymous_pull: AtomicBool,
    actions: HashMap<Action, EntityUid>,
    authorizer: Authorizer,
    /// Consulted on every request: hashed with aHash (keyed per process) rather than
    /// SipHash, which cost a quarter of a cached decision.
    decisions: Cache<DecisionKey, Arc<Decision>, ahash::RandomState>,
    sets: Cache<SetKey, Arc<PolicySet>>,
    prepared: Cache<PreparedKey, Arc<Result<Prepared, String>>>,
    fixed: Cache<FixedKey, Arc<Result<Outcome, String>>>,
    principals: Cache<PrincipalKey, Arc<Result<PrincipalEntry, String>>>,
    /// The principal and a flags-only repository, for contextual policies that read
    /// repository flags in `decide_by_rules`.
    flagged: Cache<(PrincipalKey, RepositoryAttributes), Arc<Result<Entities, String>>>,
    compiled: Cache<String, Arc<CompiledEntry>>,
    /// `ip("…")` per source address: `RestrictedExpression::new_ip` parses the name
    /// `ip` with Cedar's parser on every call, about a third of a decision's cost.
    source_ips: Cache<IpAddr, RestrictedExpression>,
    hits: AtomicU64,
    misses: AtomicU64,
    reloads: ReloadCounters,
}

/// Policy loads since start (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReloadStats {
    pub successes: u64,
    pub failures: u64,
    /// Unix seconds of the last successful load (the first load counts).
    pub last_success: u64,
}

fn unix_now() -> u64 {
    u64::try_from(crate::identity::now_unix()).unwrap_or(0)
}

#[derive(Debug, Default)]
struct ReloadCounters {
    successes: AtomicU64,
    failures: AtomicU64,
    last_success: AtomicU64,
}

impl PolicyEngine {
    /// Shipped base policies plus every `*.cedar` directly in `dirs`, validated in
    /// strict mode against the schema; errors carry `file:line:column`.
    pub fn load(dirs: &[PathBuf]) -> Result<PolicyEngine, PolicyError> {
        Self::load_with_files(dirs, &[])
    }

    /// As `load`, plus the listed policy files.
    pub fn load_with_files(
        dirs: &[PathBuf],
        files: &[PathBuf],
    ) -> Result<PolicyEngine, PolicyError> {
        let schema = files::schema()?;
        let policies = files::load_policies(&schema, dirs, files)?;
        let mut actions = HashMap::new();
        for action in Action::ALL {
            let uid = uid("Action", action.as_str())
                .ok_or_else(|| PolicyError::Schema(format!("bad action `{action}`")))?;
            actions.insert(action, uid);
        }
        Ok(PolicyEngine {
            dirs: dirs.to_vec(),
            files: files.to_vec(),
            schema,
            loaded: ArcSwap::from_pointee(Loaded::new(policies, 1)?),
            next_id: AtomicU64::new(2),
            anonymous_pull: AtomicBool::new(false),
            actions,
            authorizer: Authorizer::new(),
            decisions: presized(DECISION_CACHE, ahash::RandomState::new()),
            sets: Cache::new(SET_CACHE),
            prepared: presized(PREPARED_CACHE, RandomState::new()),
            fixed: presized(FIXED_CACHE, RandomState::new()),
            principals: Cache::new(PRINCIPAL_CACHE),
            flagged: Cache::new(PRINCIPAL_CACHE),
            compiled: Cache::new(COMPILED_CACHE),
            source_ips: Cache::new(SOURCE_IP_CACHE),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            reloads: ReloadCounters {
                last_success: AtomicU64::new(unix_now()),
                ..ReloadCounters::default()
            },
        })
    }

    /// Re-reads the same directories; on error the previous set stays in force.
    /// Counted either way ([`PolicyEngine::reload_stats`]).
    pub fn reload(&self) -> Result<(), PolicyError> {
        let loaded = files::load_policies(&self.schema, &self.dirs, &self.files).and_then(|p| {
            let generation = self.next_id.fetch_add(1, Ordering::Relaxed);
            Loaded::new(p, generation)
        });
        let counters = &self.reloads;
        match loaded {
            Ok(loaded) => {
                self.loaded.store(Arc::new(loaded));
                counters.successes.fetch_add(1, Ordering::Relaxed);
                counters.last_success.store(unix_now(), Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Reloads since start and when the policies in force were loaded.
    pub fn reload_stats(&self) -> ReloadStats {
        ReloadStats {
            successes: self.reloads.successes.load(Ordering::Relaxed),
            failures: self.reloads.failures.load(Ordering::Relaxed),
            last_success: self.reloads.last_success.load(Ordering::Relaxed),
        }
    }

    /// Number of base and user policies in force.
    pub fn policy_count(&self) -> usize {
        self.loaded.load().count
    }

    /// Decision-cache hits and misses since start.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The registry's anonymous-pull setting (off by default).
    pub fn set_anonymous_pull(&self, allowed: bool) {
        self.anonymous_pull.store(allowed, Ordering::Relaxed);
    }

    /// Spawns, on the current tokio runtime, SIGHUP handling and a poll of the policy
    /// files (names, sizes, mtimes every 2 s) that reload and log the outcome.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("policy reloader not started: no tokio runtime");
            return;
        };
        let engine = Arc::clone(self);
        runtime.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hangup = signal(SignalKind::hangup())
                .inspect_err(|e| tracing::warn!("cannot watch SIGHUP: {e}"))
                .ok();
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            let mut seen = files::fingerprint(&engine.dirs);
            loop {
                let reason = tokio::select! {
                    Some(()) = async {
                        match hangup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => "SIGHUP",
                    _ = tick.tick() => {
                        let now = files::fingerprint(&engine.dirs);
                        if now == seen {
                            continue;
                        }
                        seen = now;
                        "policy files changed"
                    }
                };
                match engine.reload() {
                    Ok(()) => tracing::info!(
                        reason,
                        policies = engine.policy_count(),
                        "policies reloaded"
                    ),
                    Err(e) => tracing::error!(
                        reason,
                        error = %e,
                        "policy reload failed; previous policies stay in force"
                    ),
                }
            }
        });
    }

    /// Decides `request` against `identity`, from the decision cache when possible.
    /// The request becomes the cache key and a hit shares the cached decision: nothing
    /// is copied per request.
    pub fn authorize(&self, identity: &IdentitySnapshot, request: AuthzRequest) -> Arc<Decision> {
        let loaded = self.loaded.load();
        let anonymous_pull = self.anonymous_pull.load(Ordering::Relaxed);
        let key = DecisionKey {
            request,
            version: identity.version,
            generation: loaded.generation,
            anonymous_pull,
        };
        if let Some(decision) = self.decisions.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return decision;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let decision = Arc::new(self.decide(&loaded, identity, &key.request, anonymous_pull));
        self.decisions.insert(key, Arc::clone(&decision));
        decision
    }

    /// Decides without the decision cache and lists the matching scope-map rules.
    pub fn explain(&self, identity: &IdentitySnapshot, request: &AuthzRequest) -> Explanation {
        let loaded = self.loaded.load();
        let anonymous_pull = self.anonymous_pull.load(Ordering::Relaxed);
        let decision = self.decide(&loaded, identity, request, anonymous_pull);
        let mut matching_rules = Vec::new();
        if let Principal::Token { name, .. } = &request.principal
            && let Some(token) = identity.tokens.get(name)
            && let Ok(Some(compiled)) = self.compiled_map(identity, &token.scope_map)
            && let Some(map) = identity.scope_maps.get(&token.scope_map)
        {
            for i in compiled.matching(&request.repository, u8::MAX) {
                if let Some(rule) = map.rules.get(i as usize) {
                    let actions: Vec<&str> = rule.actions.iter().map(|a| a.as_str()).collect();
                    matching_rules.push(format!(
                        "{}: {} -> {}",
                        compile::rule_id(&map.name, i as usize + 1),
                        rule.repository,
                        actions.join(", ")
                    ));
                }
            }
        }
        Explanation {
            decision,
            matching_rules,
        }
    }

    /// The compiled scope-map policies as Cedar text, scope maps sorted by name.
    pub fn export(&self, identity: &IdentitySnapshot) -> String {
        let mut maps: Vec<_> = identity.scope_maps.values().collect();
        maps.sort_by(|a, b| a.name.cmp(&b.name));
        maps.iter()
            .map(|m| scope_map_cedar(m))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn decide(
        &self,
        loaded: &Loaded,
        identity: &IdentitySnapshot,
        request: &AuthzRequest,
        anonymous_pull: bool,
    ) -> Decision {
        if loaded
            .by_rules
            .contains(&(Kind::of(&request.principal), request.action))
        {
            return self.decide_by_rules(loaded, identity, request, anonymous_pull);
        }
        let prepared = self.prepared(loaded, identity, request, anonymous_pull);
        let prepared = match prepared.as_ref() {
            Ok(prepared) => prepared,
            Err(e) => return Decision::deny(e.clone()),
        };
        let fixed = prepared
            .fixed
            .get(request.action.index())
            .map(|fixed| fixed.get_or_init(|| self.fixed_outcome(loaded, prepared, request)));
        let fixed = match fixed {
            Some(Ok(fixed)) => fixed,
            Some(Err(e)) => return Decision::deny(e.clone()),
            None => return Decision::deny(format!("unknown action `{}`", request.action)),
        };
        self.decide_contextual(
            loaded,
            request,
            fixed,
            &prepared.principal,
            || Ok(prepared.resource.clone()),
            &prepared.entities,
        )
    }

    /// `decide` for a (kind, action) in `Loaded::by_rules`: the context-free outcome
    /// comes from the cache keyed by matching rules and attributes (a new repository
    /// costs a pattern match and a lookup), and the contextual policies are evaluated
    /// with the principal's entity alone.
    fn decide_by_rules(
        &self,
        loaded: &Loaded,
        identity: &IdentitySnapshot,
        request: &AuthzRequest,
        anonymous_pull: bool,
    ) -> Decision {
        let principal = self.principal(identity, &request.principal, anonymous_pull);
        let principal = match principal.as_ref() {
            Ok(principal) => principal,
            Err(e) => return Decision::deny(e.clone()),
        };
        let compiled = principal.compiled.as_deref();
        let key = FixedKey {
            principal: request.principal.clone(),
            version: identity.version,
            generation: loaded.generation,
            anonymous_pull,
            compiled: compiled.map_or(0, |map| map.id),
            rules: compiled.map_or_else(Vec::new, |map| {
                map.matching(&request.repository, action_bit(request.action))
            }),
            attributes: identity.repository_attributes(&request.repository),
            action: request.action,
        };
        let fixed = self.fixed.get_with_by_ref(&key, || {
            let prepared = self.prepare(identity, request, anonymous_pull);
            Arc::new(prepared.and_then(|p| self.fixed_outcome(loaded, &p, request)))
        });
        let fixed = match fixed.as_ref() {
            Ok(fixed) => fixed,
            Err(e) => return Decision::deny(e.clone()),
        };
        let reads_flags = loaded
            .contextual
            .get(&(Kind::of(&request.principal), request.action))
            .is_some_and(|c| c.reads_flags);
        if !reads_flags {
            return self.decide_contextual(
                loaded,
                request,
                fixed,
                &principal.uid,
                || entity_uid("Repository", &request.repository),
                &principal.entities,
            );
        }
        // The policies read flags only (not the name, not `resource` as a value), so a
        // repository entity that carries just the flags decides them for every
        // repository with these attributes.
        let flagged_key = (
            PrincipalKey {
                principal: request.principal.clone(),
                version: identity.version,
                anonymous_pull,
            },
            key.attributes.clone(),
        );
        let entities = self.flagged.get_with(flagged_key, || {
            Arc::new(flags_entities(&principal.entity, &key.attributes))
        });
        match entities.as_ref() {
            Ok(entities) => self.decide_contextual(
                loaded,
                request,
                fixed,
                &principal.uid,
                || entity_uid("Repository", FLAGS_REPOSITORY),
                entities,
            ),
            Err(e) => Decision::deny(e.clone()),
        }
    }

    /// Evaluates the policies that read the request context and combines their outcome
    /// with the cached context-free one. `resource` is built only when some policy runs.
    fn decide_contextual(
        &self,
        loaded: &Loaded,
        request: &AuthzRequest,
        fixed: &Outcome,
        principal: &EntityUid,
        resource: impl FnOnce() -> Result<EntityUid, String>,
        entities: &Entities,
    ) -> Decision {
        let Some(Contextual { set, fields, .. }) = loaded
            .contextual
            .get(&(Kind::of(&request.principal), request.action))
        else {
            return Decision::deny(format!("unknown action `{}`", request.action));
        };
        if set.is_empty() {
            return fixed.decide(Outcome::default());
        }
        let cedar_request = resource().and_then(|resource| {
            self.cedar_request(principal.clone(), resource, request, fields.as_deref())
        });
        let cedar_request = match cedar_request {
            Ok(r) => r,
            Err(e) => return Decision::deny(e),
        };
        let response = self.authorizer.is_authorized(&cedar_request, set, entities);
        fixed.decide(Outcome::of(set, &response))
    }

    /// Evaluates the context-free policies for the prepared principal and repository
    /// (with an empty context: none of them reads it).
    fn fixed_outcome(
        &self,
        loaded: &Loaded,
        prepared: &Prepared,
        request: &AuthzRequest,
    ) -> Result<Outcome, String> {
        let set = self.policy_set(loaded, prepared, request)?;
        let action = self.action_uid(request.action)?;
        let cedar_request = Request::new(
            prepared.principal.clone(),
            action,
            prepared.resource.clone(),
            Context::empty(),
            None,
        )
        .map_err(|e| format!("bad request: {e}"))?;
        let response = self
            .authorizer
            .is_authorized(&cedar_request, &set, &prepared.entities);
        Ok(Outcome::of(&set, &response))
    }

    /// The compiled form of a scope map, recompiled when the map changed.
    fn compiled_map(
        &self,
        identity: &IdentitySnapshot,
        name: &str,
    ) -> Result<Option<Arc<CompiledScopeMap>>, String> {
        let Some(map) = identity.scope_maps.get(name) else {
            return Ok(None);
        };
        if let Some(entry) = self.compiled.get(name) {
            if Arc::ptr_eq(&entry.0, map) {
                return Ok(Some(Arc::clone(&entry.1)));
            }
            if entry.0 == *map {
                // Same content in a new snapshot: remember the new Arc so the next
                // lookup is a pointer comparison.
                let compiled = Arc::clone(&entry.1);
                self.compiled.insert(
                    name.to_owned(),
                    Arc::new((Arc::clone(map), Arc::clone(&compiled))),
                );
                return Ok(Some(compiled));
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let compiled = Arc::new(CompiledScopeMap::compile(map, id)?);
        self.compiled.insert(
            name.to_owned(),
            Arc::new((Arc::clone(map), Arc::clone(&compiled))),
        );
        Ok(Some(compiled))
    }

    /// The entities, uids and policy sets for `request`'s principal and repository.
    fn prepared(
        &self,
        loaded: &Loaded,
        identity: &IdentitySnapshot,
        request: &AuthzRequest,
        anonymous_pull: bool,
    ) -> Arc<Result<Prepared, String>> {
        let key = PreparedKey {
            principal: request.principal.clone(),
            repository: request.repository.clone(),
            version: identity.version,
            generation: loaded.generation,
            anonymous_pull,
        };
        if let Some(prepared) = self.prepared.get(&key) {
            return prepared;
        }
        let prepared = Arc::new(self.prepare(identity, request, anonymous_pull));
        self.prepared.insert(key, Arc::clone(&prepared));
        prepared
    }

    fn prepare(
        &self,
        identity: &IdentitySnapshot,
        request: &AuthzRequest,
        anonymous_pull: bool,
    ) -> Result<Prepared, String> {
        let principal = self.principal(identity, &request.principal, anonymous_pull);
        let principal = principal.as_ref().as_ref().map_err(Clone::clone)?;
        let resource = entity_uid("Repository", &request.repository)?;
        let repository = repository_entity(identity, &request.repository, resource.clone())?;
        let entities = Entities::from_entities([principal.entity.clone(), repository], None)
            .map_err(|e| format!("cannot build entities: {e}"))?;
        Ok(Prepared {
            principal: principal.uid.clone(),
            resource,
            entities,
            compiled: principal.compiled.clone(),
            fixed: Default::default(),
        })
    }

    /// The principal's entity and compiled scope map, built once per identity version.
    fn principal(
        &self,
        identity: &IdentitySnapshot,
        principal: &Principal,
        anonymous_pull: bool,
    ) -> Arc<Result<PrincipalEntry, String>> {
        let key = PrincipalKey {
            principal: principal.clone(),
            version: identity.version,
            anonymous_pull,
        };
        self.principals.get_with(key, || {
            Arc::new(self.principal_entry(identity, principal, anonymous_pull))
        })
    }

    fn principal_entry(
        &self,
        identity: &IdentitySnapshot,
        principal: &Principal,
        anonymous_pull: bool,
    ) -> Result<PrincipalEntry, String> {
        let compiled = match principal {
            Principal::Token { name, .. } => {
                let token = identity
                    .tokens
                    .get(name)
                    .ok_or_else(|| format!("unknown token `{name}`"))?;
                // A token whose scope map is gone is granted nothing by it.
                self.compiled_map(identity, &token.scope_map)?
            }
            Principal::Admin | Principal::Anonymous => None,
        };
        let entity = principal_entity(identity, principal, anonymous_pull)?;
        let entities = Entities::from_entities([entity.clone()], None)
            .map_err(|e| format!("cannot build entities: {e}"))?;
        Ok(PrincipalEntry {
            uid: entity.uid(),
            entity,
            entities,
            compiled,
        })
    }

    /// The base and user policies that can apply plus the principal's scope-map rules
    /// that match the repository and grant the action; shared by every repository
    /// with the same matching rules.
    fn policy_set(
        &self,
        loaded: &Loaded,
        prepared: &Prepared,
        request: &AuthzRequest,
    ) -> Result<Arc<PolicySet>, String> {
        let kind = Kind::of(&request.principal);
        let compiled = prepared.compiled.as_deref();
        let key = SetKey {
            generation: loaded.generation,
            kind,
            compiled: compiled.map_or(0, |map| map.id),
            action: request.action,
            rules: compiled.map_or_else(Vec::new, |map| {
                map.matching(&request.repository, action_bit(request.action))
            }),
        };
        if let Some(set) = self.sets.get(&key) {
            return Ok(set);
        }
        let base = loaded
            .sliced
            .get(&(kind, request.action))
            .into_iter()
            .flatten()
            .cloned();
        let granted = compiled.into_iter().flat_map(|map| {
            key.rules
                .iter()
                .filter_map(|i| map.rules.get(*i as usize))
                .map(|r| r.policy.clone())
        });
        let set = Arc::new(
            PolicySet::from_policies(base.chain(granted))
                .map_err(|e| format!("cannot build policy set: {e}"))?,
        );
        self.sets.insert(key, Arc::clone(&set));
        Ok(set)
    }

    fn action_uid(&self, action: Action) -> Result<EntityUid, String> {
        self.actions
            .get(&action)
            .cloned()
            .ok_or_else(|| format!("unknown action `{action}`"))
    }

    fn cedar_request(
        &self,
        principal: EntityUid,
        resource: EntityUid,
        request: &AuthzRequest,
        fields: Option<&[String]>,
    ) -> Result<Request, String> {
        // Fields no policy reads are left out: building them (an `ip` value above all)
        // is a large share of a decision's cost.
        let wanted = |name: &str| fields.is_none_or(|f| f.iter().any(|x| x == name));
        let ctx = &request.context;
        let (kind, tag, digest) = match &ctx.reference {
            Some(Reference::Tag(t)) => ("tag", Some(t), None),
            Some(Reference::Digest(d)) => ("digest", None, Some(d)),
            None => ("none", None, None),
        };
        let mut pairs = Vec::new();
        let mut add = |name: &str, value: &dyn Fn() -> RestrictedExpression| {
            if wanted(name) {
                pairs.push((name.to_owned(), value()));
            }
        };
        add("referenceKind", &|| string(kind));
        add("operation", &|| string(ctx.operation.as_str()));
        add("signed", &|| RestrictedExpression::new_bool(ctx.signed));
        add("now", &|| RestrictedExpression::new_long(ctx.now));
        if let Some(tag) = tag {
            add("tag", &|| string(tag));
        }
        if let Some(digest) = digest {
            add("digest", &|| string(digest));
        }
        if let Some(ip) = ctx.source_ip {
            add("sourceIp", &|| {
                self.source_ips
                    .get_with(ip, || RestrictedExpression::new_ip(ip.to_string()))
            });
        }
        let context = Context::from_pairs(pairs).map_err(|e| format!("bad context: {e}"))?;
        let action = self.action_uid(request.action)?;
        // Validated policies and typed entities: per-request schema checks are skipped.
        Request::new(principal, action, resource, context, None)
            .map_err(|e| format!("bad request: {e}"))
    }
}

/// A cache with its table allocated up front: growing it rehashes every entry inside
/// some request's insert, the slowest decisions of a cold cache.
fn presized<K, V, S>(capacity: u64, hasher: S) -> Cache<K, V, S>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: std::hash::BuildHasher + Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(capacity)
        .initial_capacity(usize::try_from(capacity).unwrap_or(usize::MAX))
        .build_with_hasher(hasher)
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn entity_uid(type_name: &str, id: &str) -> Result<EntityUid, String> {
    uid(type_name, id).ok_or_else(|| format!("bad entity type `{type_name}`"))
}

fn principal_uid(principal: &Principal) -> Result<EntityUid, String> {
    match principal {
        Principal::Token { name, .. } => entity_uid("Token", name),
        Principal::Admin => entity_uid("Admin", "admin"),
        Principal::Anonymous => entity_uid("Anonymous", "anonymous"),
    }
}

fn principal_entity(
    identity: &IdentitySnapshot,
    principal: &Principal,
    anonymous_pull: bool,
) -> Result<Entity, String> {
    let uid = principal_uid(principal)?;
    let mut attrs = HashMap::new();
    let mut parents = HashSet::new();
    match principal {
        Principal::Admin => {}
        Principal::Anonymous => {
            attrs.insert(
                "pullAllowed".to_owned(),
                RestrictedExpression::new_bool(anonymous_pull),
            );
        }
        Principal::Token { name, slot } => {
            let token = identity
                .tokens
                .get(name)
                .ok_or_else(|| format!("unknown token `{name}`"))?;
            parents.insert(entity_uid("ScopeMap", &token.scope_map)?);
            attrs.insert("name".to_owned(), string(&token.name));
            attrs.insert(
                "enabled".to_owned(),
                RestrictedExpression::new_bool(
                    token.status == crate::identity::TokenStatus::Enabled,
                ),
            );
            attrs.insert("scopeMap".to_owned(), string(&token.scope_map));
            attrs.insert("passwordSlot".to_owned(), string(slot.as_str()));
            if let Some(password) = token.password(*slot) {
                attrs.insert(
                    "passwordCreatedAt".to_owned(),
                    RestrictedExpression::new_long(password.created_at),
                );
                if let Some(expires) = password.expires_at {
                    attrs.insert(
                        "passwordExpiresAt".to_owned(),
                        RestrictedExpression::new_long(expires),
                    );
                }
            }
        }
    }
    Entity::new(uid, attrs, parents).map_err(|e| format!("cannot build principal: {e}"))
}

fn repository_entity(
    identity: &IdentitySnapshot,
    repository: &str,
    uid: EntityUid,
) -> Result<Entity, String> {
    let attributes = identity.repository_attributes(repository);
    let mut attrs = flag_attributes(&attributes);
    attrs.insert("name".to_owned(), string(repository));
    Entity::new(uid, attrs, HashSet::new()).map_err(|e| format!("cannot build repository: {e}"))
}

/// The id of the flags-only repository entity `decide_by_rules` evaluates with.
const FLAGS_REPOSITORY: &str = "";

/// The repository entity's attribute flags ([`REPOSITORY_FLAGS`]).
fn flag_attributes(attributes: &RepositoryAttributes) -> HashMap<String, RestrictedExpression> {
    let flag = RestrictedExpression::new_bool;
    HashMap::from([
        ("readEnabled".to_owned(), flag(attributes.read_enabled)),
        ("writeEnabled".to_owned(), flag(attributes.write_enabled)),
        ("deleteEnabled".to_owned(), flag(attributes.delete_enabled)),
        ("listEnabled".to_owned(), flag(attributes.list_enabled)),
        ("signedOnly".to_owned(), flag(attributes.signed_only)),
    ])
}

/// The principal and a repository ([`FLAGS_REPOSITORY`]) with `attributes`' flags only.
fn flags_entities(
    principal: &Entity,
    attributes: &RepositoryAttributes,
) -> Result<Entities, String> {
    let uid = entity_uid("Repository", FLAGS_REPOSITORY)?;
    let repository = Entity::new(uid, flag_attributes(attributes), HashSet::new())
        .map_err(|e| format!("cannot build repository: {e}"))?;
    Entities::from_entities([principal.clone(), repository], None)
        .map_err(|e| format!("cannot build entities: {e}"))
}

#[cfg(test)]
mod tests;
