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
//!
//! - `request`: what is asked ([`AuthzRequest`]) and answered ([`Decision`]).
//! - `files`: the schema, the shipped base policies, loading and validating policy files.
//! - `compile`: scope maps compiled into Cedar policies, matched by pattern key.
//! - `analysis`: what each loaded policy reads, and the sets sliced by principal kind
//!   and action.
//! - `engine`: [`PolicyEngine`], the decision itself.
//! - `cache`: the cached intermediates of a decision and how they are filled.
//! - `entities`: the Cedar entities of principals and repositories.
//! - `reload`: re-reading policy files on SIGHUP or change, swapping in a pushed set,
//!   and the reload counts.
//! - [`pushed`]: the policy sets pushed to the control plane (push, history, rollback)
//!   and keeping every gateway on the newest.
//! - [`testcases`]: the `portcullis policy test` case files.

mod analysis;
mod cache;
mod compile;
mod engine;
mod entities;
mod files;
pub mod pushed;
mod reload;
mod request;
pub mod testcases;

pub use cache::CacheStats;
pub use compile::{rule_cedar, scope_map_cedar};
pub use engine::PolicyEngine;
pub use files::{Diagnostic, PolicyError, PolicyFile, PushedSet, pushable_files};
pub use portcullis_oci::Reference;
pub use reload::ReloadStats;
pub use request::{AuthzRequest, Decision, Explanation, Operation, RequestContext, SignerNames};

#[cfg(test)]
mod tests;
