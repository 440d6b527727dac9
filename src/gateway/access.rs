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
use super::{Gateway, RequestMeta, signatures};
use crate::identity::{Action, IdentitySnapshot, Principal, now_unix};
use crate::policy::{
    AuthzRequest, Decision, Operation, PolicyEngine, Reference, RequestContext, SignerNames,
};
use crate::signatures::{Verifiers, cosign, notary};

/// The base policy that refuses unsigned manifests in signed-only repositories.
const SIGNED_ONLY_POLICY: &str = "base/repository-signed-only";

/// What the context of a manifest pull says about its signatures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureFacts {
    /// Content trust (`context.signed`).
    pub signed: bool,
    /// OCI signatures (`context.signatures`).
    pub signatures: SignerNames,
    /// `context.signatureArtifact`.
    pub signature_artifact: bool,
}

impl SignatureFacts {
    /// Signed every way there is: content trust and every identity of `identity`.
    fn every(identity: &IdentitySnapshot) -> SignatureFacts {
        SignatureFacts {
            signed: true,
            signatures: identity.signature_trust.keys().cloned().collect(),
            signature_artifact: false,
        }
    }
}

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
            let facts = manifest_facts(gw, who, req, &checks, reference, source_ip).await?;
            decide_counted(gw, who, &checks, source_ip, &facts).map(|()| Disposition::Forward)
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
            let tags = pullable_tags(gw, who, &req.repository, source_ip).await?;
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

/// The signature facts of a manifest pull. Free without trust data for the repository
/// and without signature-trust identities; otherwise, only when the decision depends on
/// them, the manifest's digest is looked up (by tag: one backend lookup, as content
/// trust always needed) and its verified OCI signatures read (a hit: one cached
/// lookup). Whether the manifest is itself a signature is asked only when nothing else
/// lets the pull through.
async fn manifest_facts(
    gw: &Gateway,
    who: &Authenticated,
    req: &RepositoryRequest,
    checks: &[Check],
    reference: &Reference,
    source_ip: Option<IpAddr>,
) -> Result<SignatureFacts, GatewayError> {
    let targets = signed::targets(gw, &req.repository).await;
    let trust = signed::signature(targets.as_deref(), reference);
    let identity = gw.store.snapshot();
    let verifiers = gw.signatures.verifiers(&identity);
    if trust == Signature::Unsigned && verifiers.is_empty() {
        return Ok(SignatureFacts::default());
    }
    let ask = |check: &Check, facts: &SignatureFacts| {
        ask_signed(
            &gw.engine,
            &identity,
            &who.principal,
            check,
            source_ip,
            facts,
        )
        .allowed
    };
    let unsigned = SignatureFacts::default();
    let alternatives = alternatives(trust != Signature::Unsigned, &verifiers);
    let depends = checks.iter().any(|check| {
        let base = ask(check, &unsigned);
        alternatives.iter().any(|facts| ask(check, facts) != base)
    });
    if !depends {
        return Ok(unsigned);
    }
    let (digest, verified) = match reference {
        Reference::Digest(digest) => {
            let digest = digest.to_string();
            let verified = signatures::verified(gw, &verifiers, &req.repository, &digest).await?;
            (digest, verified)
        }
        Reference::Tag(tag) => {
            match signatures::tag_verified(gw, &verifiers, &req.repository, tag).await? {
                Some(found) => found,
                None => return Ok(unsigned),
            }
        }
    };
    let signed = match (&trust, reference, targets.as_deref()) {
        (Signature::Signed, _, _) => true,
        (Signature::TagSigned, Reference::Tag(tag), Some(targets)) => {
            targets.tag_has_digest(tag, &digest)
        }
        _ => false,
    };
    let mut facts = SignatureFacts {
        signed,
        signatures: verified,
        signature_artifact: false,
    };
    let artifact = SignatureFacts {
        signature_artifact: true,
        ..facts.clone()
    };
    let artifact_helps = checks
        .iter()
        .any(|check| !ask(check, &facts) && ask(check, &artifact));
    if artifact_helps && is_signature_artifact(gw, &req.repository, &digest).await? {
        facts = artifact;
    }
    Ok(facts)
}

/// The signature facts a decision is compared under to tell whether it depends on
/// signatures: content trust alone (when the repository has trust data), every
/// identity, and each identity alone.
fn alternatives(trust_data: bool, verifiers: &Verifiers) -> Vec<SignatureFacts> {
    let names = |names: Vec<String>| SignatureFacts {
        signed: false,
        signatures: names.into(),
        signature_artifact: false,
    };
    let mut out = Vec::new();
    if trust_data {
        out.push(SignatureFacts {
            signed: true,
            ..SignatureFacts::default()
        });
    }
    if !verifiers.is_empty() {
        out.push(names(verifiers.names().map(str::to_owned).collect()));
        out.extend(verifiers.names().map(|name| names(vec![name.to_owned()])));
    }
    out
}

/// Whether manifest `digest` of `repository` is a signature: it has layers and every
/// one is a cosign payload or a Notary Project envelope (so it is no runnable image,
/// whatever its tag or artifact type claims).
async fn is_signature_artifact(
    gw: &Gateway,
    repository: &str,
    digest: &str,
) -> Result<bool, GatewayError> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        #[serde(default)]
        layers: Vec<Layer>,
    }
    #[derive(serde::Deserialize)]
    struct Layer {
        #[serde(rename = "mediaType")]
        media_type: String,
    }
    let Ok(parsed) = portcullis_oci::Digest::parse(digest) else {
        return Ok(false);
    };
    let Some(bytes) = gw
        .backend
        .manifest_bytes(repository, &Reference::Digest(parsed))
        .await?
    else {
        return Ok(false);
    };
    let signature_layer = |l: &Layer| {
        [
            cosign::PAYLOAD_MEDIA_TYPE,
            notary::JWS_MEDIA_TYPE,
            notary::COSE_MEDIA_TYPE,
        ]
        .contains(&l.media_type.as_str())
    };
    Ok(serde_json::from_slice::<Manifest>(&bytes)
        .is_ok_and(|m| !m.layers.is_empty() && m.layers.iter().all(signature_layer)))
}

/// The tag list of a caller under a signature demand: the tags whose manifest the
/// caller may pull now, given its signatures. Without signature-trust identities only
/// the tags with signed targets are candidates; with them, every tag.
async fn pullable_tags(
    gw: &Gateway,
    who: &Authenticated,
    repository: &str,
    source_ip: Option<IpAddr>,
) -> Result<Vec<String>, GatewayError> {
    use futures_util::{StreamExt as _, TryStreamExt as _};
    let targets = signed::targets(gw, repository).await;
    let identity = gw.store.snapshot();
    let verifiers = gw.signatures.verifiers(&identity);
    let candidates: Vec<String> = if verifiers.is_empty() {
        targets
            .as_deref()
            .map(|t| t.tag_names().map(str::to_owned).collect())
            .unwrap_or_default()
    } else {
        gw.backend.tags(repository).await?.unwrap_or_default()
    };
    let (targets, identity, verifiers) = (&targets, &identity, &verifiers);
    let mut tags: Vec<String> = futures_util::stream::iter(candidates)
        .map(|tag| async move {
            let Some(digest) = gw.backend.manifest_digest(repository, &tag).await? else {
                return Ok(None);
            };
            let facts = SignatureFacts {
                signed: targets
                    .as_deref()
                    .is_some_and(|t| t.tag_has_digest(&tag, &digest)),
                signatures: signatures::verified(gw, verifiers, repository, &digest).await?,
                signature_artifact: false,
            };
            let check = Check {
                action: Action::ContentRead,
                repository: repository.to_owned(),
                operation: Operation::Pull,
                reference: Some(Reference::Tag(tag.clone())),
            };
            let allowed = ask_signed(
                &gw.engine,
                identity,
                &who.principal,
                &check,
                source_ip,
                &facts,
            )
            .allowed;
            Ok::<_, GatewayError>(allowed.then_some(tag))
        })
        .buffer_unordered(CONCURRENT_LOOKUPS)
        .try_filter_map(|tag| async move { Ok(tag) })
        .try_collect()
        .await?;
    tags.sort_unstable();
    Ok(tags)
}

/// Backend lookups run at once when building a signed tag list.
const CONCURRENT_LOOKUPS: usize = 8;

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
    let ask = |facts: &SignatureFacts| {
        ask_signed(&gw.engine, &identity, principal, &probe, source_ip, facts).allowed
    };
    !ask(&SignatureFacts::default()) && ask(&SignatureFacts::every(&identity))
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
        if let Err(e) = decide_for(
            gw,
            who,
            &checks(req, &[]),
            source_ip,
            &SignatureFacts::default(),
        ) {
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
    decide_counted(gw, who, checks, source_ip, &SignatureFacts::default())
}

/// Decides `checks` and counts the decision in the metrics: the one place every
/// registry decision passes through.
fn decide_counted(
    gw: &Gateway,
    who: &Authenticated,
    checks: &[Check],
    source_ip: Option<IpAddr>,
    facts: &SignatureFacts,
) -> Result<(), GatewayError> {
    let result = decide_for(gw, who, checks, source_ip, facts);
    gw.metrics.record_decision(result.is_ok());
    result
}

fn decide_for(
    gw: &Gateway,
    who: &Authenticated,
    checks: &[Check],
    source_ip: Option<IpAddr>,
    facts: &SignatureFacts,
) -> Result<(), GatewayError> {
    decide(
        &gw.engine,
        &gw.store.snapshot(),
        &who.principal,
        |repository, action| claim_covers(who, repository, action),
        checks,
        source_ip,
        facts,
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
/// `facts` are the signature facts of the manifest a pull names (none for every other
/// request).
fn decide(
    engine: &PolicyEngine,
    identity: &IdentitySnapshot,
    principal: &Principal,
    covered: impl Fn(&str, &str) -> bool,
    checks: &[Check],
    source_ip: Option<IpAddr>,
    facts: &SignatureFacts,
) -> Result<(), GatewayError> {
    for check in checks {
        let decision = ask_signed(engine, identity, principal, check, source_ip, facts);
        if !decision.allowed {
            // Refused as signed but allowed signed every way: a signature is missing.
            let pull = check.action == Action::ContentRead && check.reference.is_some();
            let every = SignatureFacts::every(identity);
            if pull
                && *facts != every
                && ask_signed(engine, identity, principal, check, source_ip, &every).allowed
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

/// One check that names no manifest (no signature facts) decided by Cedar for
/// `principal`, now.
pub(crate) fn ask(
    engine: &PolicyEngine,
    identity: &IdentitySnapshot,
    principal: &Principal,
    check: &Check,
    source_ip: Option<IpAddr>,
) -> Arc<Decision> {
    ask_signed(
        engine,
        identity,
        principal,
        check,
        source_ip,
        &SignatureFacts::default(),
    )
}

/// One check decided by Cedar for `principal`, now, with a manifest's signature facts.
pub(crate) fn ask_signed(
    engine: &PolicyEngine,
    identity: &IdentitySnapshot,
    principal: &Principal,
    check: &Check,
    source_ip: Option<IpAddr>,
    facts: &SignatureFacts,
) -> Arc<Decision> {
    let request = AuthzRequest {
        principal: principal.clone(),
        action: check.action,
        repository: check.repository.clone(),
        context: RequestContext {
            reference: check.reference.clone(),
            signed: facts.signed,
            signatures: facts.signatures.clone(),
            signature_artifact: facts.signature_artifact,
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
    let manifest = check
        .reference
        .as_ref()
        .map_or_else(String::new, ToString::to_string);
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

/// The Cedar checks (on the GUN's repository) a notary action stands for; `None` for
/// actions notary does not use. The trust API decides by this table and the token
/// endpoint grants by it.
pub fn trust_checks(action: &str, principal: &Principal) -> Option<&'static [(Action, Operation)]> {
    const READ: &[(Action, Operation)] = &[(Action::ContentRead, Operation::ReadTrust)];
    const WRITE: &[(Action, Operation)] = &[
        (Action::ContentWrite, Operation::WriteTrust),
        (Action::TrustWrite, Operation::WriteTrust),
    ];
    const DELETE: &[(Action, Operation)] = &[
        (Action::ContentDelete, Operation::DeleteTrust),
        (Action::TrustWrite, Operation::DeleteTrust),
    ];
    // The admin account may clean up trust data it may not write.
    const ADMIN_DELETE: &[(Action, Operation)] = &[(Action::ContentDelete, Operation::DeleteTrust)];
    match (action, principal) {
        ("pull", _) => Some(READ),
        ("push", _) => Some(WRITE),
        ("*", Principal::Admin) => Some(ADMIN_DELETE),
        ("*", _) => Some(DELETE),
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
mod tests;
