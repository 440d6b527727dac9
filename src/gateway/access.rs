//! **Where a request is authorized.** A classified repository request becomes the
//! Cedar questions it raises ([`checks`]); each is decided against the current
//! identity snapshot and policy files, and a bearer token's `access` claim must also
//! cover it. The token endpoint asks the same engine which Docker scope actions to
//! grant ([`granted`]), so a token never carries more than policy allows — and since
//! every request is decided again, a claim is only an upper bound.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;

use super::authn::Authenticated;
use super::classify::{DeleteRequest, Mount, RepositoryRequest, RequestKind};
use super::errors::GatewayError;
use super::jwt::AccessEntry;
use super::signed::{self, Signature};
use super::{Gateway, RequestMeta};
use crate::identity::{Action, IdentitySnapshot, Principal, now_unix};
use crate::policy::{AuthzRequest, Decision, Operation, PolicyEngine, Reference, RequestContext};

/// The base policy that refuses unsigned manifests in signed-only repositories.
const SIGNED_ONLY_POLICY: &str = "base/repository-signed-only";

/// One Cedar question a request raises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub action: Action,
    pub repository: String,
    pub operation: Operation,
    pub reference: Option<Reference>,
}

/// The checks of a request, all of which must pass. `existing_tags` are the tags a
/// manifest PUT writes that exist already (overwrites); other requests ignore it.
pub fn checks(req: &RepositoryRequest, existing_tags: &[String]) -> Vec<Check> {
    let check = |action, operation, reference: Option<&Reference>| Check {
        action,
        repository: req.repository.clone(),
        operation,
        reference: reference.cloned(),
    };
    match &req.kind {
        RequestKind::ManifestGet { reference } => {
            vec![check(Action::ContentRead, Operation::Pull, Some(reference))]
        }
        // Nothing is served, so nothing about a manifest is asked: whether the caller
        // may pull from the repository decides between a refusal and the 404.
        RequestKind::BlobGet { .. } | RequestKind::ManifestGetInvalid { .. } => {
            vec![check(Action::ContentRead, Operation::Pull, None)]
        }
        // An automatic mount (no `from`) needs what its fallback, an upload, needs; the
        // source it may mount from is chosen by [`automatic_mount`].
        RequestKind::UploadStart {
            mount: None | Some(Mount { from: None, .. }),
        }
        | RequestKind::Upload => {
            vec![check(Action::ContentWrite, Operation::PushBlob, None)]
        }
        RequestKind::UploadStart {
            mount: Some(Mount {
                from: Some(from), ..
            }),
        } => mount_checks(&req.repository, from),
        RequestKind::ManifestPut { reference, .. } => {
            let digest_push = match reference {
                Reference::Digest(_) => Some(check(
                    Action::ContentWrite,
                    Operation::PushManifest,
                    Some(reference),
                )),
                Reference::Tag(_) => None,
            };
            let tag_writes = written_tags(&req.kind).into_iter().map(|tag| {
                let operation = if existing_tags.iter().any(|t| t == tag) {
                    Operation::OverwriteTag
                } else {
                    Operation::CreateTag
                };
                check(
                    Action::ContentWrite,
                    operation,
                    Some(&Reference::Tag(tag.to_owned())),
                )
            });
            digest_push.into_iter().chain(tag_writes).collect()
        }
        RequestKind::ManifestDelete { reference } => match reference {
            Reference::Digest(_) => vec![check(
                Action::ContentDelete,
                Operation::DeleteManifest,
                Some(reference),
            )],
            // Untagging removes a name, not content.
            Reference::Tag(_) => vec![check(
                Action::MetadataWrite,
                Operation::DeleteTag,
                Some(reference),
            )],
        },
        RequestKind::BlobDelete { .. } => {
            vec![check(Action::ContentDelete, Operation::DeleteBlob, None)]
        }
        RequestKind::TagsList => vec![check(Action::MetadataRead, Operation::ListTags, None)],
        RequestKind::Referrers { digest } => vec![check(
            Action::MetadataRead,
            Operation::ListReferrers,
            Some(&Reference::Digest(digest.clone())),
        )],
    }
}

/// The one check of a repository API delete: `content/delete`, as `delete-repository`
/// for a whole repository, as `delete-manifest` (with the reference) for an image.
pub fn delete_check(req: &DeleteRequest) -> Check {
    let operation = match req.reference {
        Some(_) => Operation::DeleteManifest,
        None => Operation::DeleteRepository,
    };
    Check {
        action: Action::ContentDelete,
        repository: req.repository.clone(),
        operation,
        reference: req.reference.clone(),
    }
}

/// The checks of mounting a blob from `from` into `repository`.
fn mount_checks(repository: &str, from: &str) -> Vec<Check> {
    vec![
        Check {
            action: Action::ContentWrite,
            repository: repository.to_owned(),
            operation: Operation::Mount,
            reference: None,
        },
        // The blob leaves `from`: that is a pull from it.
        Check {
            action: Action::ContentRead,
            repository: from.to_owned(),
            operation: Operation::Pull,
            reference: None,
        },
    ]
}

/// The tags a manifest PUT writes: its tag reference and its `?tag=` values.
fn written_tags(kind: &RequestKind) -> Vec<&str> {
    match kind {
        RequestKind::ManifestPut { reference, tags } => {
            let by_reference = match reference {
                Reference::Tag(tag) => Some(tag.as_str()),
                Reference::Digest(_) => None,
            };
            by_reference
                .into_iter()
                .chain(tags.iter().map(String::as_str))
                .collect()
        }
        _ => Vec::new(),
    }
}

/// Docker scope action ("pull" | "push" | "delete") a bearer token needs for a check.
pub fn scope_action(check: &Check) -> &'static str {
    match (check.action, check.operation) {
        (Action::ContentRead | Action::MetadataRead, _) => "pull",
        (Action::ContentDelete, _) | (Action::MetadataWrite, Operation::DeleteTag) => "delete",
        (Action::ContentWrite | Action::MetadataWrite | Action::TrustWrite, _) => "push",
    }
}

/// The `scope` a client should ask the token endpoint for to pass every one of `checks`:
/// one `repository:<name>:<actions>` per repository, actions merged, space-separated, as
/// distribution's token authentication lists its whole access set. A client that fetches
/// one token per challenge (many do) then gets a token for the whole request, e.g. both
/// sides of a cross-repository mount. Docker asks for `push,pull` when it pushes.
pub fn challenge_scopes(checks: &[Check]) -> String {
    let mut scopes: Vec<(&str, Vec<&str>)> = Vec::new();
    for check in checks {
        let actions: &[&str] = match scope_action(check) {
            "push" => &["push", "pull"],
            "pull" => &["pull"],
            _ => &["delete"],
        };
        let at = match scopes.iter().position(|(r, _)| *r == check.repository) {
            Some(at) => at,
            None => {
                scopes.push((&check.repository, Vec::new()));
                scopes.len() - 1
            }
        };
        if let Some((_, merged)) = scopes.get_mut(at) {
            for action in actions {
                if !merged.contains(action) {
                    merged.push(action);
                }
            }
        }
    }
    scopes
        .iter()
        .map(|(repository, actions)| format!("repository:{repository}:{}", actions.join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The challenge scope of a whole repository request (for a 401 given before its
/// checks are decided, e.g. on bad credentials).
pub fn request_scopes(req: &RepositoryRequest) -> String {
    challenge_scopes(&checks(req, &[]))
}

/// What to do with an authorized repository request.
#[derive(Debug)]
pub enum Disposition {
    /// Hand it to the backend.
    Forward,
    /// Answer it from the gateway: the tag list of a caller under a signature demand.
    Respond(http::Response<Bytes>),
    /// Hand it to the backend with this query instead of the client's: an automatic
    /// mount, resolved to `mount=<digest>&from=<readable source>` or to a plain upload
    /// (empty), so the backend never picks a source itself.
    ForwardWithQuery(String),
}

/// Most repositories holding a blob that an automatic mount considers as its source
/// (each costs a policy decision; beyond them the client uploads the blob).
const MAX_MOUNT_CANDIDATES: usize = 64;

/// The tag a tag-list request is judged for: whether policy demands signatures of this
/// caller on this repository is asked as for a pull of this tag.
const PROBE_TAG: &str = "latest";

/// Every check against the current policy (and the bearer access claim). Anonymous +
/// deny → 401 `AuthenticationRequired{scope}`; claim too narrow → 401
/// `InsufficientScope`; principal + deny → 403 `Denied`; an unsigned manifest where a
/// signature is demanded → 403 `Unsigned`. A manifest PUT that writes tags asks the
/// backend which of them exist; a manifest pull by a tag that has a signed target asks
/// it which digest it serves, when the decision depends on it. A tag list under a
/// signature demand is answered here (`query` is its `n`/`last`).
pub async fn authorize(
    gw: &Gateway,
    who: &Authenticated,
    req: &RepositoryRequest,
    source_ip: Option<IpAddr>,
    query: Option<&str>,
) -> Result<Disposition, GatewayError> {
    match &req.kind {
        RequestKind::ManifestGet { reference } => {
            let checks = checks(req, &[]);
            let signed = manifest_signed(gw, who, req, &checks, reference, source_ip).await?;
            decide_counted(gw, who, &checks, source_ip, signed).map(|()| Disposition::Forward)
        }
        RequestKind::ManifestGetInvalid { reference } => {
            authorize_checks(gw, who, &checks(req, &[]), source_ip)?;
            Err(GatewayError::ManifestUnknown {
                repository: req.repository.clone(),
                reference: reference.clone(),
            })
        }
        RequestKind::TagsList => {
            authorize_checks(gw, who, &checks(req, &[]), source_ip)?;
            if !signature_demanded(gw, &who.principal, &req.repository, source_ip) {
                return Ok(Disposition::Forward);
            }
            let targets = signed::targets(gw, &req.repository);
            let tags = signed::signed_tags(gw, &req.repository, targets.as_deref()).await?;
            Ok(Disposition::Respond(signed::tags_list(
                &req.repository,
                &tags,
                query,
            )))
        }
        RequestKind::UploadStart {
            mount: Some(Mount { digest, from: None }),
        } => {
            authorize_checks(gw, who, &checks(req, &[]), source_ip)?;
            automatic_mount(gw, who, &req.repository, digest, source_ip).await
        }
        _ => authorize_writes(gw, who, req, source_ip)
            .await
            .map(|()| Disposition::Forward),
    }
}

/// An authorized upload start with `?mount=<digest>` and no `from` (OCI 1.1): mount the
/// blob from the first repository holding it that the caller may mount from — policy
/// allows the mount into `repository` and a pull of the source, and a bearer claim
/// covers that pull —, else a plain upload. Which repositories hold it is never
/// revealed: an unreadable holder reads as no holder. An upstream cannot be asked which
/// repositories hold a blob, so it gets a plain upload: one that mounts automatically
/// would otherwise mount from repositories the caller may not read.
async fn automatic_mount(
    gw: &Gateway,
    who: &Authenticated,
    repository: &str,
    digest: &str,
    source_ip: Option<IpAddr>,
) -> Result<Disposition, GatewayError> {
    let Some(holders) = gw
        .backend
        .blob_repositories(digest, MAX_MOUNT_CANDIDATES)
        .await?
    else {
        return Ok(Disposition::ForwardWithQuery(String::new()));
    };
    let identity = gw.store.snapshot();
    let allowed = |check: &Check| {
        ask(&gw.engine, &identity, &who.principal, check, source_ip).allowed
            && claim_covers(who, &check.repository, scope_action(check))
    };
    let source = holders
        .iter()
        .find(|from| mount_checks(repository, from).iter().all(allowed));
    Ok(Disposition::ForwardWithQuery(match source {
        Some(from) => format!("mount={digest}&from={from}"),
        None => String::new(),
    }))
}

/// `context.signed` of a manifest pull. Free without trust data for the repository; a
/// tag with a signed target costs a backend lookup only when the decision differs
/// between signed and unsigned.
async fn manifest_signed(
    gw: &Gateway,
    who: &Authenticated,
    req: &RepositoryRequest,
    checks: &[Check],
    reference: &Reference,
    source_ip: Option<IpAddr>,
) -> Result<bool, GatewayError> {
    let targets = signed::targets(gw, &req.repository);
    match (signed::signature(targets.as_deref(), reference), reference) {
        (Signature::Unsigned, _) => Ok(false),
        (Signature::Signed, _) => Ok(true),
        (Signature::TagSigned, Reference::Tag(tag)) => {
            let identity = gw.store.snapshot();
            let depends = checks.iter().any(|check| {
                let ask = |signed| {
                    ask_signed(
                        &gw.engine,
                        &identity,
                        &who.principal,
                        check,
                        source_ip,
                        signed,
                    )
                    .allowed
                };
                ask(false) != ask(true)
            });
            if depends {
                match targets.as_deref() {
                    Some(targets) => signed::serves_signed(gw, targets, &req.repository, tag).await,
                    None => Ok(false),
                }
            } else {
                Ok(false)
            }
        }
        (Signature::TagSigned, Reference::Digest(_)) => Ok(false),
    }
}

/// Whether policy refuses `principal` an unsigned manifest of `repository` but would
/// serve a signed one: the repository is signed-only, or a policy demands signatures
/// (asked as for a pull of [`PROBE_TAG`]).
fn signature_demanded(
    gw: &Gateway,
    principal: &Principal,
    repository: &str,
    source_ip: Option<IpAddr>,
) -> bool {
    let identity = gw.store.snapshot();
    if identity.repository_attributes(repository).signed_only {
        return true;
    }
    let probe = Check {
        action: Action::ContentRead,
        repository: repository.to_owned(),
        operation: Operation::Pull,
        reference: Some(Reference::Tag(PROBE_TAG.to_owned())),
    };
    let ask =
        |signed| ask_signed(&gw.engine, &identity, principal, &probe, source_ip, signed).allowed;
    !ask(false) && ask(true)
}

/// Every other request: only a manifest PUT that writes tags asks the backend anything
/// (which of them exist).
async fn authorize_writes(
    gw: &Gateway,
    who: &Authenticated,
    req: &RepositoryRequest,
    source_ip: Option<IpAddr>,
) -> Result<(), GatewayError> {
    let written = written_tags(&req.kind);
    if !written.is_empty() {
        // Decide as if every tag were new before asking the backend anything: a caller
        // who may not even create them costs no lookups and learns nothing.
        if let Err(e) = decide_for(gw, who, &checks(req, &[]), source_ip, false) {
            gw.metrics.record_decision(false);
            return Err(e);
        }
    }
    let mut existing_tags = Vec::new();
    for tag in written {
        if gw.backend.tag_exists(&req.repository, tag).await? {
            existing_tags.push(tag.to_owned());
        }
    }
    authorize_checks(gw, who, &checks(req, &existing_tags), source_ip)
}

/// Decides `checks` that name no manifest for an authenticated caller (see
/// [`decide_counted`]).
pub fn authorize_checks(
    gw: &Gateway,
    who: &Authenticated,
    checks: &[Check],
    source_ip: Option<IpAddr>,
) -> Result<(), GatewayError> {
    decide_counted(gw, who, checks, source_ip, false)
}

/// Decides `checks` and counts the decision in the metrics: the one place every
/// registry decision passes through.
fn decide_counted(
    gw: &Gateway,
    who: &Authenticated,
    checks: &[Check],
    source_ip: Option<IpAddr>,
    signed: bool,
) -> Result<(), GatewayError> {
    let result = decide_for(gw, who, checks, source_ip, signed);
    gw.metrics.record_decision(result.is_ok());
    result
}

fn decide_for(
    gw: &Gateway,
    who: &Authenticated,
    checks: &[Check],
    source_ip: Option<IpAddr>,
    signed: bool,
) -> Result<(), GatewayError> {
    decide(
        &gw.engine,
        &gw.store.snapshot(),
        &who.principal,
        |repository, action| claim_covers(who, repository, action),
        checks,
        source_ip,
        signed,
    )
}

/// For the token endpoint: which requested Docker actions (pull/push/delete/*) policy grants.
pub fn granted(
    gw: &Gateway,
    principal: &Principal,
    repository: &str,
    requested: &[String],
    meta: &RequestMeta,
) -> Vec<String> {
    grants(
        &gw.engine,
        &gw.store.snapshot(),
        principal,
        repository,
        requested,
        meta.source_ip,
    )
}

/// Whether a bearer token's `access` claim grants the Docker scope `action` (or `*`)
/// on `repository`. Basic credentials carry no claim: policy alone decides.
pub fn claim_covers(who: &Authenticated, repository: &str, action: &str) -> bool {
    who.bearer_access.as_deref().is_none_or(|claim| {
        claim.iter().any(|entry: &AccessEntry| {
            entry.kind == "repository"
                && entry.name == repository
                && entry.actions.iter().any(|a| a == action || a == "*")
        })
    })
}

/// Decides `checks` for `principal` in order; the first refusal wins. Policy is asked
/// first (for every check), so a request policy forbids is a 403 even when the bearer
/// claim is also too narrow; a request policy allows but the claim does not cover is a
/// 401 `insufficient_scope` naming every scope of the request, on which docker fetches
/// a fresh token (that is how a widened scope map takes effect without a new login).
/// `signed` is `context.signed` of the manifest a pull names (false for every other
/// request).
fn decide(
    engine: &PolicyEngine,
    identity: &IdentitySnapshot,
    principal: &Principal,
    covered: impl Fn(&str, &str) -> bool,
    checks: &[Check],
    source_ip: Option<IpAddr>,
    signed: bool,
) -> Result<(), GatewayError> {
    for check in checks {
        let decision = ask_signed(engine, identity, principal, check, source_ip, signed);
        if !decision.allowed {
            // Refused unsigned but allowed signed: the signature is what is missing.
            let unsigned_pull =
                !signed && check.action == Action::ContentRead && check.reference.is_some();
            if unsigned_pull
                && ask_signed(engine, identity, principal, check, source_ip, true).allowed
            {
                return Err(unsigned(check, &decision));
            }
            return Err(refusal(principal, checks, check, &decision));
        }
    }
    // Only once policy allows every check: a claim too narrow for any of them asks for
    // a token for all of them.
    if !checks
        .iter()
        .all(|check| covered(&check.repository, scope_action(check)))
    {
        return Err(GatewayError::InsufficientScope {
            scope: challenge_scopes(checks),
        });
    }
    Ok(())
}

/// One check that names no manifest (`context.signed` is false) decided by Cedar for
/// `principal`, now.
pub(crate) fn ask(
    engine: &PolicyEngine,
    identity: &IdentitySnapshot,
    principal: &Principal,
    check: &Check,
    source_ip: Option<IpAddr>,
) -> Arc<Decision> {
    ask_signed(engine, identity, principal, check, source_ip, false)
}

/// One check decided by Cedar for `principal`, now, with `context.signed`.
pub(crate) fn ask_signed(
    engine: &PolicyEngine,
    identity: &IdentitySnapshot,
    principal: &Principal,
    check: &Check,
    source_ip: Option<IpAddr>,
    signed: bool,
) -> Arc<Decision> {
    let request = AuthzRequest {
        principal: principal.clone(),
        action: check.action,
        repository: check.repository.clone(),
        context: RequestContext {
            reference: check.reference.clone(),
            signed,
            source_ip,
            now: now_unix(),
            operation: check.operation,
        },
    };
    engine.authorize(identity, request)
}

/// The refusal of a manifest that is not signed where a signature is demanded, naming
/// the manifest and who demands it (docker prints the message).
fn unsigned(check: &Check, decision: &Decision) -> GatewayError {
    let manifest = match &check.reference {
        Some(Reference::Tag(r) | Reference::Digest(r)) => r.as_str(),
        None => "",
    };
    let demand = if decision.policies.iter().any(|p| p == SIGNED_ONLY_POLICY) {
        "signed-only repository".to_owned()
    } else {
        format!("signature required by {}", decision.policies.join(", "))
    };
    GatewayError::Unsigned {
        reason: format!(
            "manifest `{manifest}` of `{}` is not signed ({demand})",
            check.repository
        ),
    }
}

/// The refusal of `check`, one of `checks`: an anonymous caller is asked to log in for
/// all of them.
fn refusal(
    principal: &Principal,
    checks: &[Check],
    check: &Check,
    decision: &Decision,
) -> GatewayError {
    if *principal == Principal::Anonymous {
        return GatewayError::AuthenticationRequired {
            scope: Some(challenge_scopes(checks)),
        };
    }
    let mut reason = format!(
        "{} ({}) on `{}`",
        check.action,
        check.operation.as_str(),
        check.repository
    );
    if !decision.policies.is_empty() {
        reason.push_str(&format!(": forbidden by {}", decision.policies.join(", ")));
    }
    GatewayError::Denied { reason }
}

/// The policy actions (and a representative operation for `context.operation`) a
/// Docker scope action stands for. `delete` covers untag too, so it is granted when
/// either `content/delete` or the untag right is; `*` needs all of its actions.
fn scope_needs(action: &str) -> Option<(&'static [(Action, Operation)], bool)> {
    const PULL: &[(Action, Operation)] = &[(Action::ContentRead, Operation::Pull)];
    const PUSH: &[(Action, Operation)] = &[(Action::ContentWrite, Operation::PushBlob)];
    const DELETE: &[(Action, Operation)] = &[
        (Action::ContentDelete, Operation::DeleteManifest),
        (Action::MetadataWrite, Operation::DeleteTag),
    ];
    const ALL: &[(Action, Operation)] = &[
        (Action::ContentRead, Operation::Pull),
        (Action::ContentWrite, Operation::PushBlob),
        (Action::ContentDelete, Operation::DeleteManifest),
        (Action::MetadataRead, Operation::ListTags),
        (Action::MetadataWrite, Operation::WriteAttributes),
    ];
    match action {
        "pull" => Some((PULL, true)),
        "push" => Some((PUSH, true)),
        "delete" => Some((DELETE, false)),
        "*" => Some((ALL, true)),
        _ => None,
    }
}

/// Which of the `requested` Docker actions policy grants `principal` on `repository`,
/// in request order without duplicates; unknown actions are dropped.
fn grants(
    engine: &PolicyEngine,
    identity: &IdentitySnapshot,
    principal: &Principal,
    repository: &str,
    requested: &[String],
    source_ip: Option<IpAddr>,
) -> Vec<String> {
    let allowed = |(action, operation): &(Action, Operation)| {
        let check = Check {
            action: *action,
            repository: repository.to_owned(),
            operation: *operation,
            reference: None,
        };
        ask(engine, identity, principal, &check, source_ip).allowed
    };
    let mut out: Vec<String> = Vec::new();
    for action in requested {
        if out.contains(action) {
            continue;
        }
        let Some((needs, all)) = scope_needs(action) else {
            continue;
        };
        let granted = if all {
            needs.iter().all(allowed)
        } else {
            needs.iter().any(allowed)
        };
        if granted {
            out.push(action.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::gateway::classify::{self, Mount};
    use crate::identity::IdentityStore;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<IdentityStore>,
        engine: PolicyEngine,
    }

    /// A real store and engine; `policy` is an extra user policy file.
    fn fixture(policy: Option<&str>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityStore::open(&dir.path().join("control.redb")).unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        if let Some(text) = policy {
            std::fs::write(policies.join("user.cedar"), text).unwrap();
        }
        let engine = PolicyEngine::load(&[PathBuf::from(&policies)]).unwrap();
        Fixture {
            _dir: dir,
            store,
            engine,
        }
    }

    impl Fixture {
        fn token(&self, name: &str, rules: &[(&str, &[Action])]) -> Principal {
            crate::gateway::testing::token(&self.store, name, rules)
        }

        /// Decides `kind` on `repository` for a Basic-authenticated `principal`.
        fn decide(
            &self,
            principal: &Principal,
            repository: &str,
            kind: RequestKind,
            tag_exists: bool,
        ) -> Result<(), GatewayError> {
            let who = Authenticated {
                principal: principal.clone(),
                bearer_access: None,
            };
            self.decide_as(&who, repository, kind, tag_exists)
        }

        fn decide_as(
            &self,
            who: &Authenticated,
            repository: &str,
            kind: RequestKind,
            tag_exists: bool,
        ) -> Result<(), GatewayError> {
            let req = RepositoryRequest {
                repository: repository.into(),
                kind,
            };
            decide(
                &self.engine,
                &self.store.snapshot(),
                &who.principal,
                |r, a| claim_covers(who, r, a),
                &checks(&req, &existing(&req.kind, tag_exists)),
                None,
                false,
            )
        }

        fn granted(
            &self,
            principal: &Principal,
            repository: &str,
            requested: &[&str],
        ) -> Vec<String> {
            let requested: Vec<String> = requested.iter().map(|s| s.to_string()).collect();
            grants(
                &self.engine,
                &self.store.snapshot(),
                principal,
                repository,
                &requested,
                None,
            )
        }
    }

    /// The tags `kind` writes if `exist`, else none: what the backend would report.
    fn existing(kind: &RequestKind, exist: bool) -> Vec<String> {
        match exist {
            true => written_tags(kind).into_iter().map(str::to_owned).collect(),
            false => Vec::new(),
        }
    }

    fn tag(t: &str) -> Reference {
        Reference::Tag(t.into())
    }

    fn digest() -> Reference {
        Reference::Digest(D.into())
    }

    fn push() -> RequestKind {
        RequestKind::UploadStart { mount: None }
    }

    fn pull() -> RequestKind {
        RequestKind::ManifestGet {
            reference: tag("latest"),
        }
    }

    fn denied(result: Result<(), GatewayError>) -> String {
        match result {
            Err(GatewayError::Denied { reason }) => reason,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    /// A check as (action, repository, operation, reference, scope action).
    type Expected = (
        Action,
        &'static str,
        Operation,
        Option<Reference>,
        &'static str,
    );

    #[test]
    fn every_request_kind_asks_its_cedar_question() {
        use Action::*;
        use Operation::*;
        let mount = Some(classify::Mount {
            digest: D.into(),
            from: Some("other".into()),
        });
        let cases: Vec<(RequestKind, bool, Vec<Expected>)> = vec![
            (
                pull(),
                false,
                vec![(ContentRead, "a", Pull, Some(tag("latest")), "pull")],
            ),
            (
                RequestKind::BlobGet { digest: D.into() },
                false,
                vec![(ContentRead, "a", Pull, None, "pull")],
            ),
            (
                push(),
                false,
                vec![(ContentWrite, "a", PushBlob, None, "push")],
            ),
            (
                RequestKind::Upload,
                false,
                vec![(ContentWrite, "a", PushBlob, None, "push")],
            ),
            (
                RequestKind::UploadStart { mount },
                false,
                vec![
                    (ContentWrite, "a", Mount, None, "push"),
                    (ContentRead, "other", Pull, None, "pull"),
                ],
            ),
            (
                RequestKind::ManifestPut {
                    reference: tag("v1"),
                    tags: vec![],
                },
                false,
                vec![(ContentWrite, "a", CreateTag, Some(tag("v1")), "push")],
            ),
            (
                RequestKind::ManifestPut {
                    reference: tag("v1"),
                    tags: vec![],
                },
                true,
                vec![(ContentWrite, "a", OverwriteTag, Some(tag("v1")), "push")],
            ),
            (
                RequestKind::ManifestPut {
                    reference: digest(),
                    tags: vec![],
                },
                true,
                vec![(ContentWrite, "a", PushManifest, Some(digest()), "push")],
            ),
            (
                RequestKind::ManifestDelete {
                    reference: digest(),
                },
                false,
                vec![(ContentDelete, "a", DeleteManifest, Some(digest()), "delete")],
            ),
            (
                RequestKind::ManifestDelete {
                    reference: tag("v1"),
                },
                false,
                vec![(MetadataWrite, "a", DeleteTag, Some(tag("v1")), "delete")],
            ),
            (
                RequestKind::BlobDelete { digest: D.into() },
                false,
                vec![(ContentDelete, "a", DeleteBlob, None, "delete")],
            ),
            (
                RequestKind::TagsList,
                false,
                vec![(MetadataRead, "a", ListTags, None, "pull")],
            ),
            (
                RequestKind::Referrers { digest: D.into() },
                false,
                vec![(MetadataRead, "a", ListReferrers, Some(digest()), "pull")],
            ),
        ];
        for (kind, tag_exists, expected) in cases {
            let req = RepositoryRequest {
                repository: "a".into(),
                kind: kind.clone(),
            };
            let got: Vec<_> = checks(&req, &existing(&req.kind, tag_exists))
                .into_iter()
                .map(|c| {
                    let scope = scope_action(&c);
                    (c.action, c.repository, c.operation, c.reference, scope)
                })
                .collect();
            let expected: Vec<_> = expected
                .into_iter()
                .map(|(a, r, o, rf, s)| (a, r.to_owned(), o, rf, s))
                .collect();
            assert_eq!(got, expected, "{kind:?}");
        }
    }

    #[test]
    fn each_written_tag_is_a_create_or_an_overwrite_of_its_own() {
        let req = RepositoryRequest {
            repository: "a".into(),
            kind: RequestKind::ManifestPut {
                reference: digest(),
                tags: vec!["new".into(), "old".into()],
            },
        };
        let got: Vec<_> = checks(&req, &["old".to_owned()])
            .into_iter()
            .map(|c| (c.operation, c.reference))
            .collect();
        assert_eq!(
            got,
            vec![
                (Operation::PushManifest, Some(digest())),
                (Operation::CreateTag, Some(tag("new"))),
                (Operation::OverwriteTag, Some(tag("old"))),
            ]
        );
    }

    #[test]
    fn additive_wildcard_example_is_enforced() {
        use Action::*;
        let f = fixture(None);
        let t = f.token(
            "tester",
            &[
                ("sample/*", &[ContentRead]),
                ("sample/teamA/*", &[ContentWrite]),
                ("sample/teamA/projectB", &[ContentDelete]),
            ],
        );
        let delete = || RequestKind::ManifestDelete {
            reference: digest(),
        };
        for repo in ["sample/teama/projectb", "sample/teama/projectc"] {
            f.decide(&t, repo, pull(), false).unwrap();
            f.decide(&t, repo, push(), false).unwrap();
        }
        f.decide(&t, "sample/teama/projectb", delete(), false)
            .unwrap();
        let reason = denied(f.decide(&t, "sample/teama/projectc", delete(), false));
        assert!(
            reason.contains("content/delete") && reason.contains("`sample/teama/projectc`"),
            "{reason}"
        );
        f.decide(&t, "sample/other", pull(), false).unwrap();
        denied(f.decide(&t, "sample/other", push(), false));
        denied(f.decide(&t, "elsewhere", pull(), false));
    }

    #[test]
    fn mount_needs_read_on_the_source() {
        use Action::*;
        let f = fixture(None);
        let mount = |from: &str| RequestKind::UploadStart {
            mount: Some(Mount {
                digest: D.into(),
                from: Some(from.into()),
            }),
        };
        let t = f.token(
            "tester",
            &[("a", &[ContentRead, ContentWrite]), ("b", &[ContentRead])],
        );
        f.decide(&t, "a", mount("b"), false).unwrap();
        let reason = denied(f.decide(&t, "a", mount("secret"), false));
        assert!(
            reason.contains("content/read") && reason.contains("`secret`"),
            "{reason}"
        );
        // Read on the source does not make the target writable.
        denied(f.decide(&t, "b", mount("a"), false));
        // Every 401 names both sides of the mount, whichever check failed.
        let both = "repository:a:push,pull repository:b:pull";
        assert_eq!(
            f.decide(&Principal::Anonymous, "a", mount("b"), false),
            Err(GatewayError::AuthenticationRequired {
                scope: Some(both.into())
            })
        );
        let bearer = |entries: &[(&str, &[&str])]| Authenticated {
            principal: t.clone(),
            bearer_access: Some(
                entries
                    .iter()
                    .map(|(name, actions)| AccessEntry {
                        kind: "repository".into(),
                        name: (*name).into(),
                        actions: actions.iter().map(|a| a.to_string()).collect(),
                    })
                    .collect(),
            ),
        };
        for claim in [
            bearer(&[("a", &["push", "pull"])]),
            bearer(&[("b", &["pull"])]),
            bearer(&[]),
        ] {
            assert_eq!(
                f.decide_as(&claim, "a", mount("b"), false),
                Err(GatewayError::InsufficientScope { scope: both.into() })
            );
        }
        f.decide_as(
            &bearer(&[("a", &["push", "pull"]), ("b", &["pull"])]),
            "a",
            mount("b"),
            false,
        )
        .unwrap();
        // Without `from` it is an upload's check only (the source is chosen later).
        let automatic = RequestKind::UploadStart {
            mount: Some(Mount {
                digest: D.into(),
                from: None,
            }),
        };
        assert_eq!(
            f.decide(&Principal::Anonymous, "a", automatic, false),
            Err(GatewayError::AuthenticationRequired {
                scope: Some("repository:a:push,pull".into())
            })
        );
    }

    #[test]
    fn challenge_scopes_merge_actions_per_repository() {
        let check = |action, repository: &str, operation| Check {
            action,
            repository: repository.into(),
            operation,
            reference: None,
        };
        assert_eq!(
            challenge_scopes(&[
                check(Action::ContentRead, "a", Operation::Pull),
                check(Action::ContentWrite, "b", Operation::Mount),
                check(Action::ContentWrite, "a", Operation::PushBlob),
                check(Action::ContentDelete, "b", Operation::DeleteBlob),
                check(Action::ContentRead, "b", Operation::Pull),
            ]),
            "repository:a:pull,push repository:b:push,pull,delete"
        );
        assert_eq!(challenge_scopes(&[]), "");
    }

    #[test]
    fn tag_overwrite_and_create_reach_cedar_as_different_operations() {
        let f = fixture(Some(
            "@id(\"immutable-releases\")\n\
             forbid(principal, action == Action::\"content/write\", resource)\n\
             when { resource.name like \"release/*\" && context.operation == \"overwrite-tag\" };\n",
        ));
        let t = f.token(
            "tester",
            &[("release/*", &[Action::ContentRead, Action::ContentWrite])],
        );
        let put = |reference| RequestKind::ManifestPut {
            reference,
            tags: vec![],
        };
        f.decide(&t, "release/app", put(tag("v1")), false).unwrap();
        let reason = denied(f.decide(&t, "release/app", put(tag("v1")), true));
        assert!(
            reason.contains("overwrite-tag") && reason.contains("immutable-releases"),
            "{reason}"
        );
        // `?tag=` on a push by digest writes tags too: an existing one is an overwrite.
        let tagged = |tags: &[&str]| RequestKind::ManifestPut {
            reference: digest(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        };
        let reason = denied(f.decide(&t, "release/app", tagged(&["v1"]), true));
        assert!(reason.contains("overwrite-tag"), "{reason}");
        f.decide(&t, "release/app", tagged(&["v2"]), false).unwrap();
        // A digest push is not an overwrite, and the rule is scoped to `release/*`.
        f.decide(&t, "release/app", put(digest()), true).unwrap();
        let admin = Principal::Admin;
        denied(f.decide(&admin, "release/app", put(tag("v1")), true));
        f.decide(&admin, "staging/app", put(tag("v1")), true)
            .unwrap();
    }

    #[test]
    fn bearer_claim_must_cover_what_policy_allows() {
        let f = fixture(None);
        let t = f.token(
            "tester",
            &[("a", &[Action::ContentRead, Action::ContentWrite])],
        );
        let bearer = |entries: Vec<(&str, &str, &[&str])>| Authenticated {
            principal: t.clone(),
            bearer_access: Some(
                entries
                    .into_iter()
                    .map(|(kind, name, actions)| AccessEntry {
                        kind: kind.into(),
                        name: name.into(),
                        actions: actions.iter().map(|a| a.to_string()).collect(),
                    })
                    .collect(),
            ),
        };
        let pull_only = bearer(vec![("repository", "a", &["pull"])]);
        f.decide_as(&pull_only, "a", pull(), false).unwrap();
        assert_eq!(
            f.decide_as(&pull_only, "a", push(), false),
            Err(GatewayError::InsufficientScope {
                scope: "repository:a:push,pull".into()
            })
        );
        f.decide_as(
            &bearer(vec![("repository", "a", &["*"])]),
            "a",
            push(),
            false,
        )
        .unwrap();
        // The claim names another repository, or is not a repository claim.
        for who in [
            bearer(vec![("repository", "b", &["pull"])]),
            bearer(vec![("registry", "a", &["pull"])]),
            bearer(vec![]),
        ] {
            assert!(matches!(
                f.decide_as(&who, "a", pull(), false),
                Err(GatewayError::InsufficientScope { .. })
            ));
        }
        // Policy is asked first: what it forbids is a 403 whatever the claim says.
        denied(f.decide_as(
            &bearer(vec![("repository", "c", &["*"])]),
            "c",
            pull(),
            false,
        ));
    }

    #[test]
    fn anonymous_is_challenged_and_a_token_is_denied() {
        let f = fixture(None);
        let anonymous = Principal::Anonymous;
        assert_eq!(
            f.decide(&anonymous, "a/b", pull(), false),
            Err(GatewayError::AuthenticationRequired {
                scope: Some("repository:a/b:pull".into())
            })
        );
        assert_eq!(
            f.decide(&anonymous, "a/b", push(), false),
            Err(GatewayError::AuthenticationRequired {
                scope: Some("repository:a/b:push,pull".into())
            })
        );
        let t = f.token("tester", &[("x", &[Action::ContentRead])]);
        denied(f.decide(&t, "a/b", pull(), false));
        // With anonymous pull on, anonymous may pull and nothing more.
        f.engine.set_anonymous_pull(true);
        f.decide(&anonymous, "a/b", pull(), false).unwrap();
        assert!(matches!(
            f.decide(&anonymous, "a/b", push(), false),
            Err(GatewayError::AuthenticationRequired { .. })
        ));
    }

    #[test]
    fn granted_scope_actions_follow_policy() {
        use Action::*;
        let f = fixture(None);
        let rw = f.token("reader-writer", &[("a", &[ContentRead, ContentWrite])]);
        assert_eq!(
            f.granted(&rw, "a", &["push", "bogus", "pull", "delete", "push", "*"]),
            vec!["push", "pull"]
        );
        assert!(f.granted(&rw, "b", &["pull", "push"]).is_empty());
        let untag = f.token("untagger", &[("a", &[MetadataWrite])]);
        assert_eq!(f.granted(&untag, "a", &["pull", "delete"]), vec!["delete"]);
        let all = f.token(
            "everything",
            &[(
                "a",
                &[
                    ContentRead,
                    ContentWrite,
                    ContentDelete,
                    MetadataRead,
                    MetadataWrite,
                ],
            )],
        );
        assert_eq!(f.granted(&all, "a", &["*", "delete"]), vec!["*", "delete"]);
        assert_eq!(f.granted(&Principal::Admin, "any/repo", &["*"]), vec!["*"]);
        assert!(f.granted(&Principal::Anonymous, "a", &["pull"]).is_empty());
    }

    /// Signed-only views end to end: a gateway with the bundled store holding images
    /// and the trust service holding real (validated) trust data.
    mod signed_views {
        use axum::body::Body;
        use portcullis_storage::Digest;
        use portcullis_storage::names::Reference as StoredReference;
        use time::{Duration, OffsetDateTime};

        use super::*;
        use crate::gateway::backend::Backend;
        use crate::gateway::testing;
        use crate::identity::RepositoryAttributes;
        use crate::trust::Role;
        use crate::trust::service::ContentTrustStatus;
        use crate::trust::validate::testkit::{RootKeys, TestKey, root_json, sign, targets_json};

        const REPO: &str = "samples/app";
        const GUN: &str = "127.0.0.1:5443/samples/app";
        const CONFIG: &[u8] = b"{}";

        struct Views {
            _dir: tempfile::TempDir,
            gw: Arc<Gateway>,
        }

        fn manifest(label: &str) -> Vec<u8> {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": Digest::of(CONFIG).to_string(),
                    "size": CONFIG.len(),
                },
                "layers": [],
                "annotations": { "label": label },
            }))
            .unwrap()
        }

        fn digest_of(bytes: &[u8]) -> String {
            Digest::of(bytes).to_string()
        }

        fn role(name: &str) -> Role {
            Role::parse(name).unwrap()
        }

        /// `policy`: an extra user policy file; content trust enabled.
        fn views(policy: Option<&str>) -> Views {
            let dir = tempfile::tempdir().unwrap();
            let gw = match policy {
                None => testing::gateway(dir.path()),
                Some(text) => {
                    let policies = dir.path().join("policies");
                    std::fs::create_dir(&policies).unwrap();
                    std::fs::write(policies.join("user.cedar"), text).unwrap();
                    let options = crate::gateway::GatewayOptions {
                        data_dir: dir.path().join("data"),
                        policy_dirs: vec![policies],
                        admin_password: Some("admin-secret".into()),
                        upstream: None,
                        service: "portcullis-test".into(),
                        token_ttl: std::time::Duration::from_secs(300),
                        storage: Default::default(),
                        trust_key_passphrase: Default::default(),
                    };
                    Gateway::open(&options).unwrap().gateway
                }
            };
            gw.trust.set_status(ContentTrustStatus::Enabled).unwrap();
            Views { _dir: dir, gw }
        }

        impl Views {
            /// Pushes `bytes` as `REPO:tag` into the bundled store.
            async fn push(&self, tag: &str, bytes: &[u8]) {
                let Backend::Bundled { registry, .. } = &self.gw.backend else {
                    panic!("not the bundled backend")
                };
                let id = registry.start_upload(REPO).await.unwrap();
                registry
                    .finish_upload(REPO, &id, &Digest::of(CONFIG), Body::from(CONFIG))
                    .await
                    .unwrap();
                registry
                    .put_manifest(
                        REPO,
                        &StoredReference::Tag(tag.to_owned()),
                        Some("application/vnd.oci.image.manifest.v1+json"),
                        bytes.to_vec(),
                        Vec::new(),
                    )
                    .await
                    .unwrap();
            }

            /// Publishes trust data signing `tags` (tag → manifest bytes), as docker's
            /// first signed push does.
            fn sign(&self, tags: &[(&str, &[u8])]) {
                let trust = &self.gw.trust;
                let root_key = TestKey::root(GUN);
                let targets_key = TestKey::ecdsa();
                let timestamp = trust.public_key(GUN, &role("timestamp")).unwrap();
                let snapshot = trust.public_key(GUN, &role("snapshot")).unwrap();
                let now = OffsetDateTime::now_utc();
                let keys = RootKeys {
                    root: vec![&root_key.public],
                    targets: vec![&targets_key.public],
                    targets_threshold: 1,
                    snapshot: &snapshot,
                    timestamp: &timestamp,
                };
                let root = sign(
                    &root_json(1, &keys, now + Duration::days(3650)),
                    &[&root_key],
                );
                let targets = sign(
                    &targets_json(1, tags, &[], now + Duration::days(1000)),
                    &[&targets_key],
                );
                trust
                    .update(
                        GUN,
                        vec![(role("root"), root), (role("targets"), targets)],
                        now,
                    )
                    .unwrap();
            }

            fn signed_only(&self, on: bool) {
                let attributes = RepositoryAttributes {
                    signed_only: on,
                    ..RepositoryAttributes::default()
                };
                self.gw
                    .store
                    .set_repository_attributes(REPO, &attributes)
                    .unwrap();
            }

            async fn request(
                &self,
                principal: &Principal,
                kind: RequestKind,
                query: Option<&str>,
            ) -> Result<Disposition, GatewayError> {
                let who = Authenticated {
                    principal: principal.clone(),
                    bearer_access: None,
                };
                let req = RepositoryRequest {
                    repository: REPO.into(),
                    kind,
                };
                authorize(&self.gw, &who, &req, testing::meta().source_ip, query).await
            }

            async fn pull(
                &self,
                principal: &Principal,
                reference: Reference,
            ) -> Result<(), GatewayError> {
                match self
                    .request(principal, RequestKind::ManifestGet { reference }, None)
                    .await?
                {
                    Disposition::Forward => Ok(()),
                    other => panic!("a pull not forwarded as it came: {other:?}"),
                }
            }

            /// `None`: forwarded; else the tags the gateway answered and its `Link`.
            async fn tags(
                &self,
                principal: &Principal,
                query: Option<&str>,
            ) -> Option<(Vec<String>, Option<String>)> {
                match self
                    .request(principal, RequestKind::TagsList, query)
                    .await
                    .unwrap()
                {
                    Disposition::Forward => None,
                    Disposition::ForwardWithQuery(q) => panic!("a tag list rewritten to {q}"),
                    Disposition::Respond(r) => {
                        assert_eq!(r.status(), http::StatusCode::OK);
                        let link = r
                            .headers()
                            .get(http::header::LINK)
                            .map(|v| v.to_str().unwrap().to_owned());
                        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
                        assert_eq!(body["name"], REPO);
                        let tags = body["tags"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|t| t.as_str().unwrap().to_owned())
                            .collect();
                        Some((tags, link))
                    }
                }
            }

            fn reader(&self, name: &str) -> Principal {
                testing::token(
                    &self.gw.store,
                    name,
                    &[(REPO, &[Action::ContentRead, Action::MetadataRead])],
                )
            }
        }

        fn unsigned_reason(result: Result<(), GatewayError>) -> String {
            match result {
                Err(GatewayError::Unsigned { reason }) => reason,
                other => panic!("expected an unsigned refusal, got {other:?}"),
            }
        }

        fn tag(t: &str) -> Reference {
            Reference::Tag(t.into())
        }

        #[tokio::test]
        async fn signed_only_serves_signed_tags_and_digests_only() {
            let v = views(None);
            let (one, two) = (manifest("one"), manifest("two"));
            v.push("v1", &one).await;
            v.push("v2", &two).await;
            v.push("latest", &one).await;
            v.sign(&[("v1", &one), ("latest", &one)]);
            let t = v.reader("reader");
            // Not signed-only: everything is served, the tag list is the backend's.
            v.pull(&t, tag("v2")).await.unwrap();
            assert_eq!(v.tags(&t, None).await, None);

            v.signed_only(true);
            v.pull(&t, tag("v1")).await.unwrap();
            v.pull(&t, Reference::Digest(digest_of(&one)))
                .await
                .unwrap();
            let reason = unsigned_reason(v.pull(&t, tag("v2")).await);
            assert_eq!(
                reason,
                "manifest `v2` of `samples/app` is not signed (signed-only repository)"
            );
            let reason = unsigned_reason(v.pull(&t, Reference::Digest(digest_of(&two))).await);
            assert!(reason.contains(&digest_of(&two)), "{reason}");
            // Blobs are not restricted; the admin is held to it too.
            v.request(
                &t,
                RequestKind::BlobGet {
                    digest: digest_of(CONFIG),
                },
                None,
            )
            .await
            .unwrap();
            unsigned_reason(v.pull(&Principal::Admin, tag("v2")).await);
            // Anonymous callers learn the reason too, not a login challenge.
            v.gw.engine.set_anonymous_pull(true);
            unsigned_reason(v.pull(&Principal::Anonymous, tag("v2")).await);
            assert_eq!(
                v.tags(&t, None).await,
                Some((vec!["latest".to_owned(), "v1".to_owned()], None))
            );

            // `v1` moved to another manifest: its signature no longer covers it.
            v.push("v1", &two).await;
            unsigned_reason(v.pull(&t, tag("v1")).await);
            assert_eq!(
                v.tags(&t, None).await,
                Some((vec!["latest".to_owned()], None))
            );
        }

        #[tokio::test]
        async fn the_signed_tag_list_is_paginated_as_distribution() {
            let v = views(None);
            let bytes: Vec<Vec<u8>> = (0..5).map(|i| manifest(&format!("m{i}"))).collect();
            let names = ["a", "b", "c", "d", "e"];
            for (name, b) in names.iter().zip(&bytes) {
                v.push(name, b).await;
            }
            let signed: Vec<(&str, &[u8])> = names
                .iter()
                .zip(&bytes)
                .filter(|(n, _)| **n != "c")
                .map(|(n, b)| (*n, b.as_slice()))
                .collect();
            v.sign(&signed);
            v.signed_only(true);
            let t = v.reader("reader");
            let page = v.tags(&t, Some("n=2")).await.unwrap();
            assert_eq!(page.0, vec!["a", "b"]);
            assert_eq!(
                page.1.as_deref(),
                Some("</v2/samples/app/tags/list?n=2&last=b>; rel=\"next\"")
            );
            let page = v.tags(&t, Some("n=2&last=b")).await.unwrap();
            assert_eq!(page, (vec!["d".to_owned(), "e".to_owned()], None));
            let page = v.tags(&t, Some("last=d")).await.unwrap();
            assert_eq!(page, (vec!["e".to_owned()], None));
        }

        #[tokio::test]
        async fn a_policy_can_demand_signatures_of_some_principals() {
            let v = views(Some(
                "@id(\"signed-for-deployers\")\n\
                 forbid (principal, action == Action::\"content/read\", resource)\n\
                 when { principal is Token && principal.name == \"deployer\" &&\n\
                        context.referenceKind != \"none\" && !context.signed };\n",
            ));
            let one = manifest("one");
            let two = manifest("two");
            v.push("v1", &one).await;
            v.push("v2", &two).await;
            v.sign(&[("v1", &one)]);
            let deployer = v.reader("deployer");
            let developer = v.reader("developer");
            v.pull(&deployer, tag("v1")).await.unwrap();
            let reason = unsigned_reason(v.pull(&deployer, tag("v2")).await);
            assert_eq!(
                reason,
                "manifest `v2` of `samples/app` is not signed \
                 (signature required by signed-for-deployers)"
            );
            v.pull(&developer, tag("v2")).await.unwrap();
            assert_eq!(
                v.tags(&deployer, None).await,
                Some((vec!["v1".to_owned()], None))
            );
            assert_eq!(v.tags(&developer, None).await, None);
        }

        #[tokio::test]
        async fn without_content_trust_nothing_is_signed() {
            let v = views(None);
            let one = manifest("one");
            v.push("v1", &one).await;
            v.sign(&[("v1", &one)]);
            v.signed_only(true);
            let t = v.reader("reader");
            v.pull(&t, tag("v1")).await.unwrap();
            // Disabling deletes the trust data: the signed-only repository serves nothing.
            v.gw.trust.set_status(ContentTrustStatus::Disabled).unwrap();
            unsigned_reason(v.pull(&t, tag("v1")).await);
            assert_eq!(v.tags(&t, None).await, Some((vec![], None)));
            v.signed_only(false);
            v.pull(&t, tag("v1")).await.unwrap();
        }
    }
}
