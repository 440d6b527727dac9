//! OCI signatures of the manifests the gateway serves (`context.signatures`): found in
//! the backend — cosign's `sha256-<hex>.sig` tag and the referrers of the digest —,
//! verified with [`crate::signatures`], and cached per (repository, digest,
//! signature-trust version, repository write generation). A manifest PUT or DELETE in
//! a repository bumps its generation once the backend has answered, so a signature
//! pushed or deleted is seen by the next pull; a change of the trust configuration
//! bumps the version. With the bundled store, a pull by tag also caches the tag's
//! digest with its signers ([`tag_verified`]), keyed by the store's cache generation.
//! Uncached, each signature's outcome (kind, identities, or why it
//! was refused) for `policy explain` ([`inspect`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use arc_swap::ArcSwap;
use moka::sync::Cache;
use portcullis_oci::{Digest, Reference};
use portcullis_storage::CacheSize;
use serde::Deserialize;

use super::Gateway;
use super::errors::GatewayError;
use crate::identity::IdentitySnapshot;
use crate::signatures::{Verifiers, cosign, notary};

/// Verified manifests remembered.
const CACHE_ENTRIES: u64 = 100_000;

/// The sorted names of the identities whose signatures over a manifest verified.
pub type Verified = Arc<[String]>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    repository: String,
    digest: String,
    trust_version: u64,
    generation: u64,
}

/// A pull by tag's cached answer: the digest the tag served and its verified signers,
/// valid while the store's cache generation and the trust version are those in the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TagKey {
    repository: String,
    tag: String,
    trust_version: u64,
    store_generation: u64,
}

/// The parsed identities and the verification caches.
pub struct SignatureCache {
    verifiers: ArcSwap<Verifiers>,
    verified: Cache<Key, Verified, ahash::RandomState>,
    /// By tag: (digest, signers), so a signed-only pull by tag is one lookup. Keyed by
    /// the bundled store's cache generation, which every manifest write or tag move
    /// bumps — here or, by `NOTIFY`, in another gateway — signature pushes included.
    tagged: Cache<TagKey, (String, Verified), ahash::RandomState>,
    /// Per repository, bumped after every manifest write in it. Never shrinks: one
    /// counter per repository ever written through this process.
    generations: RwLock<HashMap<String, u64>>,
}

impl Default for SignatureCache {
    fn default() -> Self {
        SignatureCache {
            verifiers: ArcSwap::from_pointee(Verifiers::default()),
            verified: Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .build_with_hasher(ahash::RandomState::new()),
            tagged: Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .build_with_hasher(ahash::RandomState::new()),
            generations: RwLock::new(HashMap::new()),
        }
    }
}

impl SignatureCache {
    /// The verification caches' sizes, by digest and by tag.
    pub fn cache_sizes(&self) -> [CacheSize; 2] {
        [
            CacheSize::counted("verified_signatures", &self.verified),
            CacheSize::counted("verified_signatures_by_tag", &self.tagged),
        ]
    }

    /// The identities of `snapshot`'s signature-trust version, parsed once per version.
    pub fn verifiers(&self, snapshot: &IdentitySnapshot) -> Arc<Verifiers> {
        let current = self.verifiers.load_full();
        if current.version == snapshot.signature_trust_version {
            return current;
        }
        let fresh = Arc::new(Verifiers::from_snapshot(snapshot));
        self.verifiers.store(Arc::clone(&fresh));
        fresh
    }

    /// A manifest of `repository` was written or deleted: its verifications are redone.
    pub fn manifest_written(&self, repository: &str) {
        let mut generations = self
            .generations
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *generations.entry(repository.to_owned()).or_default() += 1;
    }

    fn generation(&self, repository: &str) -> u64 {
        self.generations
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(repository)
            .copied()
            .unwrap_or(0)
    }
}

/// The identities whose signatures over manifest `digest` of `repository` verify; a
/// cache hit is one lookup. Empty without any identity configured.
pub async fn verified(
    gw: &Gateway,
    verifiers: &Verifiers,
    repository: &str,
    digest: &str,
) -> Result<Verified, GatewayError> {
    if verifiers.is_empty() {
        return Ok(Arc::from([]));
    }
    // The generation is read before the backend: a write landing meanwhile bumps it,
    // and what this lookup stores is never found again.
    let key = Key {
        repository: repository.to_owned(),
        digest: digest.to_owned(),
        trust_version: verifiers.version,
        generation: gw.signatures.generation(repository),
    };
    if let Some(hit) = gw.signatures.verified.get(&key) {
        return Ok(hit);
    }
    let names: Verified = identities(&checked(gw, verifiers, repository, digest).await?).into();
    gw.signatures.verified.insert(key, Arc::clone(&names));
    Ok(names)
}

/// The digest `repository:tag` serves and the identities whose signatures over it
/// verify; `None` when there is no such tag. With the bundled store's cache in use a
/// hit is one lookup; otherwise (upstream, cache off) the tag is resolved and then
/// [`verified`] asked.
pub async fn tag_verified(
    gw: &Gateway,
    verifiers: &Verifiers,
    repository: &str,
    tag: &str,
) -> Result<Option<(String, Verified)>, GatewayError> {
    // The generation is read before the backend: a change landing meanwhile bumps it,
    // and what this lookup stores is never found again.
    let key = gw
        .backend
        .store_generation()
        .map(|store_generation| TagKey {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            trust_version: verifiers.version,
            store_generation,
        });
    if let Some(hit) = key.as_ref().and_then(|k| gw.signatures.tagged.get(k)) {
        return Ok(Some(hit));
    }
    let Some(digest) = gw.backend.manifest_digest(repository, tag).await? else {
        return Ok(None);
    };
    let names = verified(gw, verifiers, repository, &digest).await?;
    if let Some(key) = key {
        gw.signatures
            .tagged
            .insert(key, (digest.clone(), Arc::clone(&names)));
    }
    Ok(Some((digest, names)))
}

#[derive(Deserialize)]
struct SignatureManifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Layer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// The kind of an OCI signature, as `policy explain` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureKind {
    /// sigstore/cosign.
    Cosign,
    /// Notary Project (what `notation` makes).
    Notation,
}

/// One signature found over a manifest and what checking it gave.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Checked {
    pub kind: SignatureKind,
    /// The identities it verified with; empty when refused.
    pub identities: Vec<String>,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl Checked {
    fn new<E: std::fmt::Display>(kind: SignatureKind, result: Result<Vec<String>, E>) -> Self {
        match result {
            Ok(identities) => Checked {
                kind,
                identities,
                refused: None,
            },
            Err(e) => Checked {
                kind,
                identities: Vec::new(),
                refused: Some(e.to_string()),
            },
        }
    }
}

/// Every signature of `digest` in `repository`, found and checked against `verifiers`
/// (uncached). A signature that does not verify is an outcome, not an error.
pub async fn checked(
    gw: &Gateway,
    verifiers: &Verifiers,
    repository: &str,
    digest: &str,
) -> Result<Vec<Checked>, GatewayError> {
    let mut out = Vec::new();
    let mut cosign_manifests = Vec::new();
    if let Some(tag) = cosign::signature_tag(digest)
        && let Some(bytes) = gw
            .backend
            .manifest_bytes(repository, &Reference::Tag(tag))
            .await?
    {
        cosign_manifests.push(bytes);
    }
    let mut notary_manifests = Vec::new();
    for (referrer, artifact_type) in gw.backend.referrers(repository, digest).await? {
        let Ok(referrer) = Digest::parse(&referrer) else {
            continue;
        };
        let list = match artifact_type.as_deref() {
            Some(cosign::ARTIFACT_TYPE) => &mut cosign_manifests,
            Some(notary::ARTIFACT_TYPE) => &mut notary_manifests,
            _ => continue,
        };
        if let Some(bytes) = gw
            .backend
            .manifest_bytes(repository, &Reference::Digest(referrer))
            .await?
        {
            list.push(bytes);
        }
    }
    for bytes in cosign_manifests {
        for layer in layers(&bytes, &[cosign::PAYLOAD_MEDIA_TYPE]) {
            let Some(signature) = layer.annotations.get(cosign::SIGNATURE_ANNOTATION) else {
                continue;
            };
            let Some(payload) = gw.backend.small_blob(repository, &layer.digest).await? else {
                continue;
            };
            let result = cosign::verify(verifiers, &payload, signature, digest, repository);
            if let Err(e) = &result {
                tracing::debug!(repository, digest, error = %e, "cosign signature not counted");
            }
            out.push(Checked::new(SignatureKind::Cosign, result));
        }
    }
    let now = time::OffsetDateTime::now_utc();
    for bytes in notary_manifests {
        for layer in layers(&bytes, &[notary::JWS_MEDIA_TYPE, notary::COSE_MEDIA_TYPE]) {
            let Some(envelope) = gw.backend.small_blob(repository, &layer.digest).await? else {
                continue;
            };
            let result = notary::verify(verifiers, &layer.media_type, &envelope, digest, now);
            if let Err(e) = &result {
                tracing::debug!(repository, digest, error = %e, "notary signature not counted");
            }
            out.push(Checked::new(SignatureKind::Notation, result));
        }
    }
    Ok(out)
}

/// A manifest's OCI signatures as `policy explain` shows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    pub digest: String,
    pub signatures: Vec<Checked>,
}

impl Inspection {
    /// The identities some signature verified with (`context.signatures`), sorted.
    pub fn identities(&self) -> Vec<String> {
        identities(&self.signatures)
    }
}

/// The identities some of `checked` verified with, sorted, once each.
fn identities(checked: &[Checked]) -> Vec<String> {
    let names: BTreeSet<&String> = checked.iter().flat_map(|c| c.identities.iter()).collect();
    names.into_iter().cloned().collect()
}

/// The signatures of the manifest `reference` names in `repository`, checked against
/// the current trust configuration; `None` when there is no such manifest.
pub async fn inspect(
    gw: &Gateway,
    repository: &str,
    reference: &Reference,
) -> Result<Option<Inspection>, GatewayError> {
    let digest = match reference {
        Reference::Digest(digest) => digest.to_string(),
        Reference::Tag(tag) => match gw.backend.manifest_digest(repository, tag).await? {
            Some(digest) => digest,
            None => return Ok(None),
        },
    };
    let verifiers = gw.signatures.verifiers(&gw.store.snapshot());
    let signatures = checked(gw, &verifiers, repository, &digest).await?;
    Ok(Some(Inspection { digest, signatures }))
}

/// The layers of a signature manifest with one of `media_types` (none if it does not
/// parse).
fn layers(manifest: &[u8], media_types: &[&str]) -> Vec<Layer> {
    serde_json::from_slice::<SignatureManifest>(manifest)
        .map(|m| {
            m.layers
                .into_iter()
                .filter(|l| media_types.contains(&l.media_type.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

/// One tag in the migration report: which kinds of signature its manifest carries.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagSignatures {
    pub tag: String,
    pub digest: String,
    /// Signed by Docker Content Trust (the tag's signed target is the manifest served).
    pub content_trust: bool,
    /// Trusted identities whose OCI signatures verify.
    pub signatures: Vec<String>,
}

/// The migration report of one repository.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepositorySignatures {
    pub repository: String,
    pub tags: Vec<TagSignatures>,
}

/// Per repository and tag, which carry content-trust signatures, which trusted OCI
/// signatures, which neither: what an operator leaving Docker Content Trust needs to
/// know. cosign's own `sha256-<hex>.sig` tags are left out.
pub async fn report(gw: &Gateway) -> Result<Vec<RepositorySignatures>, GatewayError> {
    let identity = gw.store.snapshot();
    let verifiers = gw.signatures.verifiers(&identity);
    let mut out = Vec::new();
    for repository in gw.backend.repositories().await? {
        let targets = super::signed::targets(gw, &repository).await;
        let mut tags = Vec::new();
        for tag in gw.backend.tags(&repository).await?.unwrap_or_default() {
            if cosign::is_signature_tag(&tag) {
                continue;
            }
            let Some(digest) = gw.backend.manifest_digest(&repository, &tag).await? else {
                continue;
            };
            tags.push(TagSignatures {
                content_trust: targets
                    .as_deref()
                    .is_some_and(|t| t.tag_has_digest(&tag, &digest)),
                signatures: verified(gw, &verifiers, &repository, &digest)
                    .await?
                    .to_vec(),
                tag,
                digest,
            });
        }
        out.push(RepositorySignatures { repository, tags });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(repository: &str, tag: &str, trust_version: u64, store_generation: u64) -> TagKey {
        TagKey {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            trust_version,
            store_generation,
        }
    }

    /// A by-tag answer is found only under the repository, tag, trust version and store
    /// generation it was stored under: a store change or a trust change misses it.
    #[test]
    fn tag_answers_are_keyed_by_store_generation_and_trust_version() {
        let cache = SignatureCache::default();
        let names: Verified = Arc::from(["release".to_owned()]);
        cache
            .tagged
            .insert(key("r", "v1", 1, 7), ("sha256:aa".into(), names.clone()));
        assert_eq!(
            cache.tagged.get(&key("r", "v1", 1, 7)),
            Some(("sha256:aa".to_owned(), names))
        );
        for other in [
            key("r", "v1", 1, 8),
            key("r", "v1", 2, 7),
            key("r", "v2", 1, 7),
            key("s", "v1", 1, 7),
        ] {
            assert_eq!(cache.tagged.get(&other), None, "{other:?}");
        }
    }
}
