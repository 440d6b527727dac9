//! The cached intermediates of a decision, their keys and how they are filled: the
//! decisions, the principal's entity and compiled scope map, the prepared entities of a
//! (principal, repository), the context-free outcomes and the sliced policy sets. Every
//! key carries the identity snapshot version and the policy-file generation, so a change
//! is seen by the very next decision.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use cedar_policy::{Entities, Entity, EntityUid, PolicySet};
use moka::sync::Cache;

use super::analysis::{Kind, Loaded};
use super::compile::{CompiledScopeMap, action_bit};
use super::engine::{Outcome, PolicyEngine};
use super::entities::{entity_uid, principal_entity, repository_entity};
use super::request::AuthzRequest;
use crate::identity::{Action, IdentitySnapshot, Principal, RepositoryAttributes};

/// Decision-cache counters since start (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct DecisionKey {
    pub(super) request: AuthzRequest,
    pub(super) version: u64,
    pub(super) generation: u64,
    pub(super) anonymous_pull: bool,
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

pub(super) const DECISION_CACHE: u64 = 100_000;
pub(super) const SET_CACHE: u64 = 10_000;
pub(super) const PREPARED_CACHE: u64 = 10_000;
pub(super) const FIXED_CACHE: u64 = 10_000;
pub(super) const PRINCIPAL_CACHE: u64 = 10_000;
pub(super) const COMPILED_CACHE: u64 = 10_000;
pub(super) const SOURCE_IP_CACHE: u64 = 10_000;

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

/// A cache with its table allocated up front: growing it rehashes every entry inside
/// some request's insert, the slowest decisions of a cold cache.
pub(super) fn presized<K, V, S>(capacity: u64, hasher: S) -> Cache<K, V, S>
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
