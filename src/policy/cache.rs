//! The cached intermediates of a decision, their keys and how they are filled: the
//! decisions, the principal's entity and compiled scope map, the prepared entities of a
//! (principal, repository), the context-free outcomes and the sliced policy sets. Every
//! key carries the identity snapshot version and the policy-file generation, so a change
//! is seen by the very next decision.
//!
//! A decision is keyed by the request facts its contextual policies read and nothing
//! else: when none reads the context, every pull of a repository by one principal shares
//! one entry, whatever the tag, client address or second. The clock is never part of a
//! key (a key per second grew the cache without bound under steady load); a decision a
//! policy made from `context.now` holds for its second only, checked on a hit.
//!
//! Every cache is bounded by bytes (a `moka` weigher; the budgets below), and evicts
//! the least recently used entry: entries of an old identity version or policy
//! generation are unreachable, so recency, not frequency, says what is worth keeping.
//! Cedar's own structures (entities, policy sets) are weighed by estimates per entity
//! and per policy.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use cedar_policy::{Entities, Entity, EntityUid, PolicySet};
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::analysis::ContextReads;
use super::analysis::{Kind, Loaded};
use super::compile::{CompiledScopeMap, action_bit};
use super::engine::{Outcome, PolicyEngine};
use super::entities::{entity_uid, principal_entity, repository_entity};
use super::request::{AuthzRequest, Decision, RequestContext};
use crate::identity::{Action, IdentitySnapshot, Principal, RepositoryAttributes, UnixSeconds};

/// Decision-cache counters since start (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// A decision's key: the request with the context facts no contextual policy reads
/// reset ([`keyed_context`]), and `now` always 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct DecisionKey {
    pub(super) request: AuthzRequest,
    pub(super) version: u64,
    pub(super) generation: u64,
    pub(super) anonymous_pull: bool,
}

/// A cached decision and the seconds it holds for, `[from, until)`: all of them unless
/// the clock decided it. A policy that reads `context.now` makes it hold for its second
/// only; the shipped password-expiry policy, for as long as the password's side of its
/// expiry stays the same.
#[derive(Debug, Clone)]
pub(super) struct CachedDecision {
    pub(super) decision: Arc<Decision>,
    pub(super) from: UnixSeconds,
    pub(super) until: UnixSeconds,
}

impl CachedDecision {
    /// `decision`, made at `now`, for the seconds it holds: the second alone when
    /// `clock` (a policy read `context.now`), else bounded by the expiry of `request`'s
    /// password.
    pub(super) fn new(
        decision: Arc<Decision>,
        identity: &IdentitySnapshot,
        request: &AuthzRequest,
        now: UnixSeconds,
        clock: bool,
    ) -> CachedDecision {
        let (from, until) = if clock {
            (now, now.saturating_add(1))
        } else {
            match password_expiry(identity, &request.principal) {
                Some(expiry) if now < expiry => (UnixSeconds::MIN, expiry),
                Some(expiry) => (expiry, UnixSeconds::MAX),
                None => (UnixSeconds::MIN, UnixSeconds::MAX),
            }
        };
        CachedDecision {
            decision,
            from,
            until,
        }
    }

    pub(super) fn holds_at(&self, now: UnixSeconds) -> bool {
        (self.from..self.until).contains(&now)
    }
}

/// When the password a token principal authenticated with expires.
fn password_expiry(identity: &IdentitySnapshot, principal: &Principal) -> Option<UnixSeconds> {
    match principal {
        Principal::Token { name, slot } => identity.tokens.get(name)?.password(*slot)?.expires_at,
        Principal::Admin | Principal::Anonymous => None,
    }
}

/// Resets in `context` what `reads` says no contextual policy reads, and `now` (which
/// a decision records instead, see [`CachedDecision`]). Deciding on the reset context
/// gives the same decision: only the facts read are handed to Cedar.
pub(super) fn keyed_context(context: &mut RequestContext, reads: ContextReads) {
    if !reads.reference {
        context.reference = None;
    }
    if !reads.operation {
        context.operation = Default::default();
    }
    if !reads.signed {
        context.signed = false;
    }
    if !reads.signatures && !context.signatures.is_empty() {
        context.signatures = Arc::default();
    }
    if !reads.signature_artifact {
        context.signature_artifact = false;
    }
    if !reads.source_ip {
        context.source_ip = None;
    }
    context.now = 0;
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SetKey {
    pub(super) generation: u64,
    pub(super) kind: Kind,
    /// 0 when the principal has no scope map.
    pub(super) compiled: u64,
    pub(super) action: Action,
    pub(super) rules: Vec<u32>,
}

/// What every decision for one principal shares at one identity version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PrincipalKey {
    pub(super) principal: Principal,
    pub(super) version: u64,
    pub(super) anonymous_pull: bool,
}

pub(super) struct PrincipalEntry {
    pub(super) uid: EntityUid,
    pub(super) entity: Entity,
    /// The principal alone: enough for contextual policies that never read `resource`.
    pub(super) entities: Entities,
    /// The token's compiled scope map, if it has one.
    pub(super) compiled: Option<Arc<CompiledScopeMap>>,
}

/// What every decision for one principal on one repository shares, the request
/// context aside, for (kind, action) pairs outside `Loaded::by_rules`: a decision-cache
/// miss for a known pair costs one lookup here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PreparedKey {
    pub(super) principal: Principal,
    pub(super) repository: String,
    pub(super) version: u64,
    pub(super) generation: u64,
    pub(super) anonymous_pull: bool,
}

/// What decides the context-free outcome of a `by_rules` (kind, action): the
/// principal, its matching scope-map rules and the repository's attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct FixedKey {
    pub(super) principal: Principal,
    pub(super) version: u64,
    pub(super) generation: u64,
    pub(super) anonymous_pull: bool,
    /// 0 when the principal has no scope map.
    pub(super) compiled: u64,
    pub(super) rules: Vec<u32>,
    pub(super) attributes: RepositoryAttributes,
    pub(super) action: Action,
}

pub(super) struct Prepared {
    pub(super) principal: EntityUid,
    pub(super) resource: EntityUid,
    pub(super) entities: Entities,
    pub(super) compiled: Option<Arc<CompiledScopeMap>>,
    /// The outcome of the context-free policies per action (`Action::ALL` order),
    /// evaluated on first use.
    pub(super) fixed: [OnceLock<Result<Outcome, String>>; Action::ALL.len()],
}

/// Byte budgets of the caches, about 47 MiB in all at most. A cached pull decision
/// weighs a few hundred bytes, so the decision cache holds tens of thousands of them.
pub(super) const DECISION_CACHE_BYTES: u64 = 16 << 20;
pub(super) const SET_CACHE_BYTES: u64 = 8 << 20;
pub(super) const PREPARED_CACHE_BYTES: u64 = 8 << 20;
pub(super) const FIXED_CACHE_BYTES: u64 = 4 << 20;
pub(super) const PRINCIPAL_CACHE_BYTES: u64 = 4 << 20;
pub(super) const FLAGGED_CACHE_BYTES: u64 = 2 << 20;
pub(super) const COMPILED_CACHE_BYTES: u64 = 4 << 20;
pub(super) const SOURCE_IP_CACHE_BYTES: u64 = 1 << 20;

/// Entries the decision cache's table is sized for up front (the budget holds a few
/// times as many).
pub(super) const DECISION_CACHE_PRESIZE: usize = 10_000;
/// The same for the per-(principal, repository) caches.
pub(super) const PREPARED_CACHE_PRESIZE: usize = 2_000;

/// What an entry costs besides its key and value: moka's node, its hash-table slot and
/// the eviction queue's links, roughly.
const ENTRY_OVERHEAD: usize = 128;
/// Estimated bytes of one Cedar entity (uid, attributes, ancestors) in an `Entities`.
pub(super) const ENTITY_WEIGHT: usize = 1024;
/// Estimated bytes of one policy in a `PolicySet` (its AST and id).
pub(super) const POLICY_WEIGHT: usize = 2048;

/// An entry's weight for moka: `bytes` plus the per-entry overhead.
pub(super) fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes.saturating_add(ENTRY_OVERHEAD)).unwrap_or(u32::MAX)
}

fn strings_len(strings: &[String]) -> usize {
    strings.iter().map(|s| s.len() + size_of::<String>()).sum()
}

fn principal_len(principal: &Principal) -> usize {
    match principal {
        Principal::Token { name, .. } => name.len(),
        Principal::Admin | Principal::Anonymous => 0,
    }
}

impl DecisionKey {
    pub(super) fn weight(&self, cached: &CachedDecision) -> u32 {
        let request = &self.request;
        let reference = request
            .context
            .reference
            .as_ref()
            .map_or(0, |r| r.to_string().len());
        let decision = &cached.decision;
        weight(
            size_of::<DecisionKey>()
                + size_of::<Decision>()
                + principal_len(&request.principal)
                + request.repository.len()
                + reference
                + strings_len(&request.context.signatures)
                + strings_len(&decision.policies)
                + strings_len(&decision.errors),
        )
    }
}

impl PreparedKey {
    /// The principal's and the repository's entities, and their uids.
    pub(super) fn weight(&self) -> u32 {
        weight(
            size_of::<PreparedKey>()
                + size_of::<Prepared>()
                + principal_len(&self.principal)
                + 3 * self.repository.len()
                + 2 * ENTITY_WEIGHT,
        )
    }
}

impl FixedKey {
    pub(super) fn weight(&self, outcome: &Result<Outcome, String>) -> u32 {
        let outcome = match outcome {
            Ok(o) => {
                strings_len(&o.permits)
                    + strings_len(&o.forbids)
                    + strings_len(&o.failed_forbids)
                    + strings_len(&o.errors)
            }
            Err(e) => e.len(),
        };
        weight(
            size_of::<FixedKey>()
                + size_of::<Outcome>()
                + principal_len(&self.principal)
                + 4 * self.rules.len()
                + outcome,
        )
    }
}

impl PolicyEngine {
    /// The compiled form of a scope map, recompiled when the map changed.
    pub(super) fn compiled_map(
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
    pub(super) fn prepared(
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

    pub(super) fn prepare(
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
    pub(super) fn principal(
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

    pub(super) fn principal_entry(
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
    pub(super) fn policy_set(
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
}

/// A cache of at most `bytes` by `weigher`, least recently used out first, with its
/// table allocated for `presize` entries up front: growing it rehashes every entry
/// inside some request's insert, the slowest decisions of a cold cache.
pub(super) fn bounded<K, V, S>(
    bytes: u64,
    presize: usize,
    weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static,
    hasher: S,
) -> Cache<K, V, S>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: std::hash::BuildHasher + Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(bytes)
        .weigher(weigher)
        .eviction_policy(EvictionPolicy::lru())
        .initial_capacity(presize)
        .build_with_hasher(hasher)
}
