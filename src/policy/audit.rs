//! The audit record of each decision (`portcullis::audit` target).

use super::request::{AuthzRequest, Decision};
use crate::identity::Principal;

pub(super) fn principal_label(principal: &Principal) -> String {
    match principal {
        Principal::Token { name, slot } => format!("token:{name}/{}", slot.as_str()),
        Principal::Admin => "admin".to_owned(),
        Principal::Anonymous => "anonymous".to_owned(),
    }
}

/// The structured audit record of one decision.
pub(super) fn audit(request: &AuthzRequest, decision: &Decision, cached: bool) {
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
