//! The decision engine: [`PolicyEngine`] loads the policy files and decides each
//! request, evaluating only what the caches (`cache`) do not hold: the context-free
//! policies once per principal, repository (or matching rules and attributes) and
//! action, the policies that read `context` per request, combined by Cedar's rule
//! ([`Outcome::decide`]).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use cedar_policy::{
    Authorizer, Context, Effect, Entities, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression, Schema,
};
use moka::sync::Cache;
use portcullis_oci::Reference;
use portcullis_storage::CacheSize;

use super::analysis::{Contextual, Kind, Loaded};
use super::cache::{
    COMPILED_CACHE_BYTES, CacheStats, CachedDecision, DECISION_CACHE_BYTES, DECISION_CACHE_PRESIZE,
    DecisionKey, ENTITY_WEIGHT, FIXED_CACHE_BYTES, FLAGGED_CACHE_BYTES, FixedKey, POLICY_WEIGHT,
    PREPARED_CACHE_BYTES, PREPARED_CACHE_PRESIZE, PRINCIPAL_CACHE_BYTES, Prepared, PreparedKey,
    PrincipalEntry, PrincipalKey, SET_CACHE_BYTES, SOURCE_IP_CACHE_BYTES, SetKey, bounded,
    keyed_context, weight,
};
use super::compile::{self, CompiledEntry, action_bit, uid};
use super::entities::{FLAGS_REPOSITORY, entity_uid, flags_entities, string};
use super::files::{self, PolicyError, PushedSet};
use super::reload::ReloadCounters;
use super::request::{AuthzRequest, Decision, Explanation};
use super::scope_map_cedar;
use crate::identity::{Action, IdentitySnapshot, Principal, RepositoryAttributes};

/// The Cedar decision engine: policy files, compiled scope maps and caches.
pub struct PolicyEngine {
    pub(super) dirs: Vec<PathBuf>,
    /// Extra files loaded besides `dirs` (the policy test tool's per-file examples).
    pub(super) files: Vec<PathBuf>,
    pub(super) schema: Schema,
    /// The set pushed to the control plane that is in force (loaded with the files);
    /// held while a load is being swapped in, so loads never interleave.
    pub(super) pushed: std::sync::Mutex<Option<PushedSet>>,
    pub(super) loaded: ArcSwap<Loaded>,
    pub(super) next_id: AtomicU64,
    pub(super) anonymous_pull: AtomicBool,
    pub(super) actions: HashMap<Action, EntityUid>,
    pub(super) authorizer: Authorizer,
    /// Consulted on every request: hashed with aHash (keyed per process) rather than
    /// SipHash, which cost a quarter of a cached decision.
    pub(super) decisions: Cache<DecisionKey, CachedDecision, ahash::RandomState>,
    pub(super) sets: Cache<SetKey, Arc<PolicySet>>,
    pub(super) prepared: Cache<PreparedKey, Arc<Result<Prepared, String>>>,
    pub(super) fixed: Cache<FixedKey, Arc<Result<Outcome, String>>>,
    pub(super) principals: Cache<PrincipalKey, Arc<Result<PrincipalEntry, String>>>,
    /// The principal and a flags-only repository, for contextual policies that read
    /// repository flags in `decide_by_rules`.
    pub(super) flagged: Cache<(PrincipalKey, RepositoryAttributes), Arc<Result<Entities, String>>>,
    pub(super) compiled: Cache<String, Arc<CompiledEntry>>,
    /// `ip("…")` per source address: `RestrictedExpression::new_ip` parses the name
    /// `ip` with Cedar's parser on every call, about a third of a decision's cost.
    pub(super) source_ips: Cache<IpAddr, RestrictedExpression>,
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) reloads: ReloadCounters,
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
        let policies = files::load_policies(&schema, dirs, files, None)?;
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
            pushed: std::sync::Mutex::new(None),
            loaded: ArcSwap::from_pointee(Loaded::new(policies, 1)?),
            next_id: AtomicU64::new(2),
            anonymous_pull: AtomicBool::new(false),
            actions,
            authorizer: Authorizer::new(),
            decisions: bounded(
                DECISION_CACHE_BYTES,
                DECISION_CACHE_PRESIZE,
                DecisionKey::weight,
                ahash::RandomState::new(),
            ),
            sets: bounded(
                SET_CACHE_BYTES,
                0,
                |key: &SetKey, set: &Arc<PolicySet>| {
                    weight(4 * key.rules.len() + POLICY_WEIGHT * set.policies().count())
                },
                RandomState::new(),
            ),
            prepared: bounded(
                PREPARED_CACHE_BYTES,
                PREPARED_CACHE_PRESIZE,
                |key: &PreparedKey, _| key.weight(),
                RandomState::new(),
            ),
            fixed: bounded(
                FIXED_CACHE_BYTES,
                PREPARED_CACHE_PRESIZE,
                |key: &FixedKey, outcome: &Arc<Result<Outcome, String>>| key.weight(outcome),
                RandomState::new(),
            ),
            principals: bounded(
                PRINCIPAL_CACHE_BYTES,
                0,
                |_, _| weight(2 * ENTITY_WEIGHT),
                RandomState::new(),
            ),
            flagged: bounded(
                FLAGGED_CACHE_BYTES,
                0,
                |_, _| weight(2 * ENTITY_WEIGHT),
                RandomState::new(),
            ),
            compiled: bounded(
                COMPILED_CACHE_BYTES,
                0,
                |name: &String, entry: &Arc<CompiledEntry>| {
                    weight(name.len() + POLICY_WEIGHT * entry.1.rules.len())
                },
                RandomState::new(),
            ),
            source_ips: bounded(
                SOURCE_IP_CACHE_BYTES,
                0,
                |_, _| weight(64),
                RandomState::new(),
            ),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            reloads: ReloadCounters::started(),
        })
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

    /// The sizes of the decision cache and the caches behind a miss.
    pub fn cache_sizes(&self) -> [CacheSize; 8] {
        [
            CacheSize::weighed("decisions", &self.decisions),
            CacheSize::weighed("policy_sets", &self.sets),
            CacheSize::weighed("prepared_requests", &self.prepared),
            CacheSize::weighed("fixed_outcomes", &self.fixed),
            CacheSize::weighed("principals", &self.principals),
            CacheSize::weighed("flagged_principals", &self.flagged),
            CacheSize::weighed("compiled_scope_maps", &self.compiled),
            CacheSize::weighed("source_ips", &self.source_ips),
        ]
    }

    /// The registry's anonymous-pull setting (off by default).
    pub fn set_anonymous_pull(&self, allowed: bool) {
        self.anonymous_pull.store(allowed, Ordering::Relaxed);
    }

    /// Decides `request` against `identity`, from the decision cache when possible.
    /// The request, reduced to the facts the contextual policies read, becomes the cache
    /// key and a hit shares the cached decision: nothing is copied per request.
    pub fn authorize(
        &self,
        identity: &IdentitySnapshot,
        mut request: AuthzRequest,
    ) -> Arc<Decision> {
        let loaded = self.loaded.load();
        let anonymous_pull = self.anonymous_pull.load(Ordering::Relaxed);
        let now = request.context.now;
        let reads = loaded.reads(Kind::of(&request.principal), request.action);
        keyed_context(&mut request.context, reads);
        let mut key = DecisionKey {
            request,
            version: identity.version,
            generation: loaded.generation,
            anonymous_pull,
        };
        if let Some(cached) = self.decisions.get(&key)
            && cached.holds_at(now)
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return cached.decision;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        key.request.context.now = now;
        let decision = Arc::new(self.decide(&loaded, identity, &key.request, anonymous_pull));
        key.request.context.now = 0;
        let cached = CachedDecision::new(
            Arc::clone(&decision),
            identity,
            &key.request,
            now,
            reads.now,
        );
        self.decisions.insert(key, cached);
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

    pub(super) fn decide(
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
    pub(super) fn decide_by_rules(
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
    pub(super) fn decide_contextual(
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
    pub(super) fn fixed_outcome(
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

    pub(super) fn action_uid(&self, action: Action) -> Result<EntityUid, String> {
        self.actions
            .get(&action)
            .cloned()
            .ok_or_else(|| format!("unknown action `{action}`"))
    }

    pub(super) fn cedar_request(
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
        add("signatures", &|| {
            RestrictedExpression::new_set(ctx.signatures.iter().map(|name| string(name)))
        });
        add("signatureArtifact", &|| {
            RestrictedExpression::new_bool(ctx.signature_artifact)
        });
        add("now", &|| RestrictedExpression::new_long(ctx.now));
        if let Some(tag) = tag {
            add("tag", &|| string(tag));
        }
        if let Some(digest) = digest {
            add("digest", &|| string(digest.as_str()));
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

/// The satisfied and erroring policies of one evaluation, by effect.
#[derive(Debug, Clone, Default)]
pub(super) struct Outcome {
    pub(super) permits: Vec<String>,
    pub(super) forbids: Vec<String>,
    pub(super) failed_forbids: Vec<String>,
    pub(super) errors: Vec<String>,
}

impl Outcome {
    pub(super) fn of(set: &PolicySet, response: &cedar_policy::Response) -> Self {
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
    pub(super) fn decide(&self, other: Outcome) -> Decision {
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
