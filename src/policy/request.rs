//! What is asked of the policy engine and what it answers: the request, the request
//! context policies may test (`context.*`), the registry operation behind it, and the
//! decision.

use std::net::IpAddr;
use std::sync::Arc;

use portcullis_oci::Reference;

use crate::identity::{Action, Principal, UnixSeconds};

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
    /// Content trust: the manifest is a signed target (`context.signed`).
    pub signed: bool,
    /// OCI signatures: the names of the verification identities whose signatures over
    /// the manifest verify, sorted (`context.signatures`).
    pub signatures: SignerNames,
    /// The manifest is itself a signature (cosign or Notary Project): every layer is a
    /// signature payload or envelope (`context.signatureArtifact`).
    pub signature_artifact: bool,
    pub source_ip: Option<IpAddr>,
    pub now: UnixSeconds,
    /// What the request does, finer than the action (`context.operation`).
    pub operation: Operation,
}

/// Sorted verification-identity names (`context.signatures`).
pub type SignerNames = Arc<[String]>;

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
    pub(super) fn deny(error: String) -> Self {
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
