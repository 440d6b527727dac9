//! The Cedar entities a decision is evaluated with: the principal (token, admin,
//! anonymous) with its attributes and scope map, and the repository with its name and
//! attribute flags (or flags alone, shared by every repository with those attributes).

use std::collections::{HashMap, HashSet};

use cedar_policy::{Entities, Entity, EntityUid, RestrictedExpression};

use super::compile::uid;
use crate::identity::{IdentitySnapshot, Principal, RepositoryAttributes};

pub(super) fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

pub(super) fn entity_uid(type_name: &str, id: &str) -> Result<EntityUid, String> {
    uid(type_name, id).ok_or_else(|| format!("bad entity type `{type_name}`"))
}

pub(super) fn principal_uid(principal: &Principal) -> Result<EntityUid, String> {
    match principal {
        Principal::Token { name, .. } => entity_uid("Token", name),
        Principal::Admin => entity_uid("Admin", "admin"),
        Principal::Anonymous => entity_uid("Anonymous", "anonymous"),
    }
}

pub(super) fn principal_entity(
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

pub(super) fn repository_entity(
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
pub(super) const FLAGS_REPOSITORY: &str = "";

/// The repository entity's attribute flags ([`REPOSITORY_FLAGS`]).
pub(super) fn flag_attributes(
    attributes: &RepositoryAttributes,
) -> HashMap<String, RestrictedExpression> {
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
pub(super) fn flags_entities(
    principal: &Entity,
    attributes: &RepositoryAttributes,
) -> Result<Entities, String> {
    let uid = entity_uid("Repository", FLAGS_REPOSITORY)?;
    let repository = Entity::new(uid, flag_attributes(attributes), HashSet::new())
        .map_err(|e| format!("cannot build repository: {e}"))?;
    Entities::from_entities([principal.clone(), repository], None)
        .map_err(|e| format!("cannot build entities: {e}"))
}
