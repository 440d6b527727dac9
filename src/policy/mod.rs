//! Policy: every request decided by Cedar. Owns the schema, the shipped base policies,
//! compilation of scope maps into Cedar policies, the sliced and cached policy sets,
//! loading/validating user policy files, decision auditing, and the policy tools.
//!
//! Cedar evaluates every policy in a set, so the set for one request is sliced: the
//! base and user policies whose scope can apply to the principal's type and the action,
//! plus only the principal's scope-map rules whose pattern key is a candidate key of
//! the repository and that grant the action. Sliced sets, per-request entities and
//! decisions are cached in `moka`, keyed by the identity snapshot version and the
//! policy-file generation, so any change is seen by the very next decision.

mod compile;
mod files;
pub mod testcases;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use cedar_policy::{
    ActionConstraint, Authorizer, Context, Effect, Entities, Entity, EntityUid, Policy, PolicySet,
    PrincipalConstraint, Request, RestrictedExpression, Schema,
};
use moka::sync::Cache;

use crate::identity::{Action, IdentitySnapshot, Principal, UnixSeconds};
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
    /// Base and user policies that can apply, per (principal kind, action).
    sliced: HashMap<(Kind, Action), Vec<Policy>>,
}

impl Loaded {
    fn new(policies: Vec<Policy>, generation: u64) -> Self {
        let mut sliced = HashMap::new();
        for kind in Kind::ALL {
            for action in Action::ALL {
                let applicable = policies
                    .iter()
                    .filter(|p| may_apply(p, kind, action))
                    .cloned()
                    .collect();
                sliced.insert((kind, action), applicable);
            }
        }
        Loaded {
            generation,
            count: policies.len(),
            sliced,
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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EntitiesKey {
    principal: Principal,
    repository: String,
    version: u64,
    anonymous_pull: bool,
}

const DECISION_CACHE: u64 = 100_000;
const SET_CACHE: u64 = 10_000;
const ENTITIES_CACHE: u64 = 10_000;
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
    decisions: Cache<DecisionKey, Arc<Decision>>,
    sets: Cache<SetKey, Arc<PolicySet>>,
    entities: Cache<EntitiesKey, Arc<Entities>>,
    compiled: Cache<String, Arc<CompiledEntry>>,
    /// `ip("…")` per source address: `RestrictedExpression::new_ip` parses the name
    /// `ip` with Cedar's parser on every call, about a third of a decision's cost.
    source_ips: Cache<IpAddr, RestrictedExpression>,
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
            loaded: ArcSwap::from_pointee(Loaded::new(policies, 1)),
            next_id: AtomicU64::new(2),
            anonymous_pull: AtomicBool::new(false),
            actions,
            authorizer: Authorizer::new(),
            decisions: Cache::new(DECISION_CACHE),
            sets: Cache::new(SET_CACHE),
            entities: Cache::new(ENTITIES_CACHE),
            compiled: Cache::new(COMPILED_CACHE),
            source_ips: Cache::new(SOURCE_IP_CACHE),
        })
    }

    /// Re-reads the same directories; on error the previous set stays in force.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let policies = files::load_policies(&self.schema, &self.dirs, &self.files)?;
        let generation = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.loaded
            .store(Arc::new(Loaded::new(policies, generation)));
        Ok(())
    }

    /// Number of base and user policies in force.
    pub fn policy_count(&self) -> usize {
        self.loaded.load().count
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
    /// Every decision is audited (`portcullis::audit`).
    pub fn authorize(&self, identity: &IdentitySnapshot, request: &AuthzRequest) -> Decision {
        let loaded = self.loaded.load();
        let key = DecisionKey {
            request: request.clone(),
            version: identity.version,
            generation: loaded.generation,
            anonymous_pull: self.anonymous_pull.load(Ordering::Relaxed),
        };
        if let Some(decision) = self.decisions.get(&key) {
            audit(request, &decision, true);
            return (*decision).clone();
        }
        let decision = self.decide(&loaded, identity, request);
        audit(request, &decision, false);
        self.decisions.insert(key, Arc::new(decision.clone()));
        decision
    }

    /// Decides without the decision cache and lists the matching scope-map rules.
    pub fn explain(&self, identity: &IdentitySnapshot, request: &AuthzRequest) -> Explanation {
        let loaded = self.loaded.load();
        let decision = self.decide(&loaded, identity, request);
        audit(request, &decision, false);
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
    ) -> Decision {
        let kind = Kind::of(&request.principal);
        let mut compiled_id = 0;
        let mut rules = Vec::new();
        let mut compiled = None;
        if let Principal::Token { name, .. } = &request.principal {
            let Some(token) = identity.tokens.get(name) else {
                return Decision::deny(format!("unknown token `{name}`"));
            };
            match self.compiled_map(identity, &token.scope_map) {
                Ok(Some(map)) => {
                    compiled_id = map.id;
                    rules = map.matching(&request.repository, action_bit(request.action));
                    compiled = Some(map);
                }
                // A token whose scope map is gone is granted nothing by it.
                Ok(None) => {}
                Err(e) => return Decision::deny(e),
            }
        }
        let set_key = SetKey {
            generation: loaded.generation,
            kind,
            compiled: compiled_id,
            action: request.action,
            rules,
        };
        let set = match self.sets.get(&set_key) {
            Some(set) => set,
            None => {
                let base = loaded
                    .sliced
                    .get(&(kind, request.action))
                    .into_iter()
                    .flatten()
                    .cloned();
                let granted = compiled.iter().flat_map(|map| {
                    set_key
                        .rules
                        .iter()
                        .filter_map(|i| map.rules.get(*i as usize))
                        .map(|r| r.policy.clone())
                });
                match PolicySet::from_policies(base.chain(granted)) {
                    Ok(set) => {
                        let set = Arc::new(set);
                        self.sets.insert(set_key, Arc::clone(&set));
                        set
                    }
                    Err(e) => return Decision::deny(format!("cannot build policy set: {e}")),
                }
            }
        };
        let entities = match self.request_entities(identity, request) {
            Ok(entities) => entities,
            Err(e) => return Decision::deny(e),
        };
        let cedar_request = match self.cedar_request(request) {
            Ok(r) => r,
            Err(e) => return Decision::deny(e),
        };
        let response = self
            .authorizer
            .is_authorized(&cedar_request, &set, &entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();
        // Cedar skips a policy whose evaluation errors; for a forbid that would turn
        // an intended deny into an allow, so any erroring forbid denies (fail closed).
        let failed_forbids: Vec<String> = diagnostics
            .errors()
            .map(|e| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
                e.policy_id()
            })
            .filter(|id| set.policy(id).is_some_and(|p| p.effect() == Effect::Forbid))
            .map(ToString::to_string)
            .collect();
        if !failed_forbids.is_empty() {
            return Decision {
                allowed: false,
                policies: failed_forbids,
                errors,
            };
        }
        Decision {
            allowed: response.decision() == cedar_policy::Decision::Allow,
            policies: diagnostics.reason().map(ToString::to_string).collect(),
            errors,
        }
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

    fn request_entities(
        &self,
        identity: &IdentitySnapshot,
        request: &AuthzRequest,
    ) -> Result<Arc<Entities>, String> {
        let anonymous_pull = self.anonymous_pull.load(Ordering::Relaxed);
        let key = EntitiesKey {
            principal: request.principal.clone(),
            repository: request.repository.clone(),
            version: identity.version,
            anonymous_pull,
        };
        if let Some(entities) = self.entities.get(&key) {
            return Ok(entities);
        }
        let principal = principal_entity(identity, &request.principal, anonymous_pull)?;
        let repository = repository_entity(identity, &request.repository)?;
        let entities = Arc::new(
            Entities::from_entities([principal, repository], None)
                .map_err(|e| format!("cannot build entities: {e}"))?,
        );
        self.entities.insert(key, Arc::clone(&entities));
        Ok(entities)
    }

    fn cedar_request(&self, request: &AuthzRequest) -> Result<Request, String> {
        let ctx = &request.context;
        let (kind, tag, digest) = match &ctx.reference {
            Some(Reference::Tag(t)) => ("tag", Some(t), None),
            Some(Reference::Digest(d)) => ("digest", None, Some(d)),
            None => ("none", None, None),
        };
        let mut pairs = vec![
            ("referenceKind".to_owned(), string(kind)),
            (
                "signed".to_owned(),
                RestrictedExpression::new_bool(ctx.signed),
            ),
            ("now".to_owned(), RestrictedExpression::new_long(ctx.now)),
        ];
        if let Some(tag) = tag {
            pairs.push(("tag".to_owned(), string(tag)));
        }
        if let Some(digest) = digest {
            pairs.push(("digest".to_owned(), string(digest)));
        }
        if let Some(ip) = ctx.source_ip {
            let ip = self
                .source_ips
                .get_with(ip, || RestrictedExpression::new_ip(ip.to_string()));
            pairs.push(("sourceIp".to_owned(), ip));
        }
        let context = Context::from_pairs(pairs).map_err(|e| format!("bad context: {e}"))?;
        let action = self
            .actions
            .get(&request.action)
            .cloned()
            .ok_or_else(|| format!("unknown action `{}`", request.action))?;
        let principal = principal_uid(&request.principal)?;
        let resource = entity_uid("Repository", &request.repository)?;
        // Validated policies and typed entities: per-request schema checks are skipped.
        Request::new(principal, action, resource, context, None)
            .map_err(|e| format!("bad request: {e}"))
    }
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

fn repository_entity(identity: &IdentitySnapshot, repository: &str) -> Result<Entity, String> {
    let attributes = identity.repository_attributes(repository);
    let flag = RestrictedExpression::new_bool;
    let attrs = HashMap::from([
        ("name".to_owned(), string(repository)),
        ("readEnabled".to_owned(), flag(attributes.read_enabled)),
        ("writeEnabled".to_owned(), flag(attributes.write_enabled)),
        ("deleteEnabled".to_owned(), flag(attributes.delete_enabled)),
        ("listEnabled".to_owned(), flag(attributes.list_enabled)),
        ("signedOnly".to_owned(), flag(attributes.signed_only)),
    ]);
    Entity::new(entity_uid("Repository", repository)?, attrs, HashSet::new())
        .map_err(|e| format!("cannot build repository: {e}"))
}

fn principal_label(principal: &Principal) -> String {
    match principal {
        Principal::Token { name, slot } => format!("token:{name}/{}", slot.as_str()),
        Principal::Admin => "admin".to_owned(),
        Principal::Anonymous => "anonymous".to_owned(),
    }
}

/// The structured audit record of one decision.
fn audit(request: &AuthzRequest, decision: &Decision, cached: bool) {
    tracing::info!(
        target: "portcullis::audit",
        principal = %principal_label(&request.principal),
        action = request.action.as_str(),
        resource = %request.repository,
        decision = if decision.allowed { "allow" } else { "deny" },
        policies = ?decision.policies,
        errors = ?decision.errors,
        cached,
    );
}

#[cfg(test)]
mod tests;
