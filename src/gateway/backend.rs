//! Where allowed requests go — the bundled store (in this process: the proxy calls its
//! router directly) or an upstream registry (`--upstream URL`) — and the lookups
//! decisions and the catalog need from it: whether a tag exists (create vs overwrite)
//! and the list of repositories. The bundled store answers those in process; an
//! upstream is asked over HTTP with the same API docker uses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode, header};
use portcullis_oci::{Digest, Reference};
pub use portcullis_storage::meta::Deleted;
use portcullis_storage::{Registry, StorageError};

use super::errors::GatewayError;

/// Manifest media types asked for when probing a tag, so a registry that only has an
/// index or a Docker list still answers 200.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest signature manifest, payload or envelope the gateway reads to verify it.
pub const SIGNATURE_LIMIT: u64 = 1 << 20;

/// What signature manifests are asked for as (OCI image manifests; cosign's are).
const SIGNATURE_MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The referrers tag schema's index.
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Longest an upstream lookup (one tag probe or catalog page) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Catalog page size asked of an upstream (distribution's default maximum is 1000).
const UPSTREAM_PAGE: usize = 1000;

/// Longest a readiness probe of the upstream may take.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a probe's outcome answers `/readyz`: probes from several kubelets and load
/// balancers do not each reach the upstream.
const READY_CACHE: Duration = Duration::from_secs(2);

pub enum Backend {
    /// The storage crate's registry in this process. The proxy hands every authorized
    /// request to the store's own HTTP API (`portcullis_storage::serve`) in process: no
    /// socket.
    Bundled { registry: Arc<Registry> },
    /// An existing registry reached over HTTP(S).
    Upstream {
        /// Base URL without a trailing `/` (`https://registry.example:5000`).
        base: String,
        peer: PeerAddress,
        /// `host[:port]` as the upstream expects it in `Host`.
        host: String,
        client: reqwest::Client,
        /// The last readiness probe: when, and its outcome.
        probed: Mutex<Option<(Instant, Result<(), String>)>>,
    },
}

/// Where pingora connects to an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddress {
    /// `host:port`
    pub addr: String,
    pub tls: bool,
    pub sni: String,
}

impl Backend {
    pub fn bundled(registry: Arc<Registry>) -> Backend {
        Backend::Bundled { registry }
    }

    /// An upstream registry at `url` (`http://` or `https://`, optional port, no path).
    pub fn upstream(url: &str) -> Result<Backend, GatewayError> {
        let invalid =
            |why: &str| GatewayError::BadRequest(format!("invalid upstream `{url}`: {why}"));
        let parsed = reqwest::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        let tls = match parsed.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(invalid("the scheme must be http or https")),
        };
        if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
            return Err(invalid("a registry URL has no path or query"));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| invalid("no host"))?
            .to_owned();
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| invalid("no port"))?;
        let host_header = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A hung upstream fails the lookup (503) instead of holding the request.
            .connect_timeout(Duration::from_secs(10))
            .timeout(LOOKUP_TIMEOUT)
            .build()
            .map_err(|e| GatewayError::Internal(format!("http client: {e}")))?;
        Ok(Backend::Upstream {
            base: format!("{}://{host_header}", parsed.scheme()),
            peer: PeerAddress {
                // IPv6 literals keep their brackets, as `host:port` needs.
                addr: format!("{host}:{port}"),
                tls,
                sni: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            },
            host: host_header,
            client,
            probed: Mutex::new(None),
        })
    }

    /// Whether the backend answers the distribution API; why not when it does not.
    /// An upstream must answer `GET /v2/` with 200 or 401 and
    /// `Docker-Distribution-API-Version: registry/2.0` (a socket that merely accepts
    /// is not a registry); the bundled store must read its metadata and reach its blob
    /// store (the blob directory, or the S3 bucket).
    pub async fn ready(&self) -> Result<(), String> {
        match self {
            Backend::Bundled { registry } => {
                registry
                    .catalog(None, Some(1))
                    .await
                    .map_err(|e| format!("the bundled store: {e}"))?;
                registry
                    .check_blobs()
                    .await
                    .map_err(|e| format!("the blob store: {e}"))
            }
            Backend::Upstream {
                base,
                client,
                probed,
                ..
            } => {
                // A poisoned lock only means a probe panicked; its value is whole.
                let cached = probed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .filter(|(at, _)| at.elapsed() < READY_CACHE)
                    .map(|(_, outcome)| outcome.clone());
                if let Some(outcome) = cached {
                    return outcome;
                }
                let outcome = probe_upstream(client, base).await;
                *probed.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), outcome.clone()));
                outcome
            }
        }
    }

    /// The upstream pingora proxies to; `None` for the bundled store (called in process).
    pub fn peer(&self) -> Option<&PeerAddress> {
        match self {
            Backend::Bundled { .. } => None,
            Backend::Upstream { peer, .. } => Some(peer),
        }
    }

    /// The `Host` to send upstream; `None` keeps the client's (the bundled store builds
    /// its `Location` headers as paths, so the client's host is the right one).
    pub fn host_header(&self) -> Option<String> {
        match self {
            Backend::Bundled { .. } => None,
            Backend::Upstream { host, .. } => Some(host.clone()),
        }
    }

    /// Whether `repository:tag` exists, which makes a manifest PUT an overwrite.
    pub async fn tag_exists(&self, repository: &str, tag: &str) -> Result<bool, GatewayError> {
        Ok(self.lookup_tag(repository, tag).await?.is_some())
    }

    /// The bundled store's cache generation ([`Registry::cache_generation`]); `None` for
    /// an upstream (nothing tells us of its changes) or while the store cache is off.
    pub fn store_generation(&self) -> Option<u64> {
        match self {
            Backend::Bundled { registry } => registry.cache_generation(),
            Backend::Upstream { .. } => None,
        }
    }

    /// The digest the backend serves for `repository:tag` (`None`: no such tag, or an
    /// upstream that names no digest), for signed-only views.
    pub async fn manifest_digest(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Option<String>, GatewayError> {
        Ok(self.lookup_tag(repository, tag).await?.flatten())
    }

    /// `None` when `repository:tag` does not exist, else the digest served for it if the
    /// backend names one.
    async fn lookup_tag(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Option<Option<String>>, GatewayError> {
        match self {
            Backend::Bundled { registry, .. } => {
                let reference = Reference::Tag(tag.to_owned());
                match registry.get_manifest(repository, &reference, false).await {
                    Ok(found) => Ok(Some(Some(found.digest.to_string()))),
                    Err(StorageError::ManifestUnknown { .. } | StorageError::NameUnknown(_)) => {
                        Ok(None)
                    }
                    Err(e) => Err(bundled_error(
                        format!("looking up tag `{repository}:{tag}`"),
                        e,
                    )),
                }
            }
            Backend::Upstream { base, client, .. } => {
                let url = format!("{base}/v2/{repository}/manifests/{tag}");
                let response = client
                    .head(&url)
                    .header(header::ACCEPT, MANIFEST_ACCEPT)
                    .send()
                    .await
                    .map_err(|e| unavailable(&url, e))?;
                match response.status() {
                    s if s.is_success() => Ok(Some(
                        response
                            .headers()
                            .get("docker-content-digest")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                    )),
                    StatusCode::NOT_FOUND => Ok(None),
                    s => Err(GatewayError::Unavailable(format!("HEAD {url}: {s}"))),
                }
            }
        }
    }

    /// The bytes of manifest `reference` of `repository` (`None`: no such manifest),
    /// for verifying the signatures stored as manifests. At most [`SIGNATURE_LIMIT`].
    pub async fn manifest_bytes(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        match self {
            Backend::Bundled { registry } => {
                match registry.get_manifest(repository, reference, true).await {
                    Ok(found) => Ok(found.bytes.map(Vec::from)),
                    Err(StorageError::ManifestUnknown { .. } | StorageError::NameUnknown(_)) => {
                        Ok(None)
                    }
                    Err(e) => Err(GatewayError::Internal(format!(
                        "reading manifest `{repository}:{reference}`: {e}"
                    ))),
                }
            }
            Backend::Upstream { base, client, .. } => {
                let url = format!("{base}/v2/{repository}/manifests/{reference}");
                upstream_bytes(client, &url, Some(SIGNATURE_MANIFEST_ACCEPT)).await
            }
        }
    }

    /// The bytes of blob `digest` linked into `repository` (`None`: not there), when at
    /// most [`SIGNATURE_LIMIT`] long: signature payloads and envelopes are small.
    pub async fn small_blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        match self {
            Backend::Bundled { registry } => {
                let Ok(parsed) = Digest::parse(digest) else {
                    return Ok(None);
                };
                let size = match registry.blob_size(repository, &parsed, false).await {
                    Ok(size) => size,
                    Err(StorageError::BlobUnknown { .. } | StorageError::NameUnknown(_)) => {
                        return Ok(None);
                    }
                    Err(e) => {
                        return Err(GatewayError::Internal(format!(
                            "reading blob `{digest}` of `{repository}`: {e}"
                        )));
                    }
                };
                if size > SIGNATURE_LIMIT {
                    return Ok(None);
                }
                let mut reader = registry
                    .read_blob(&parsed, 0, size)
                    .await
                    .map_err(|e| GatewayError::Internal(format!("reading blob `{digest}`: {e}")))?;
                let mut bytes = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes)
                    .await
                    .map_err(|e| GatewayError::Internal(format!("reading blob `{digest}`: {e}")))?;
                Ok(Some(bytes))
            }
            Backend::Upstream { base, client, .. } => {
                let url = format!("{base}/v2/{repository}/blobs/{digest}");
                upstream_bytes(client, &url, None).await
            }
        }
    }

    /// The referrers of manifest `digest` in `repository`: (digest, artifact type).
    pub async fn referrers(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Vec<(String, Option<String>)>, GatewayError> {
        match self {
            Backend::Bundled { registry } => {
                let Ok(parsed) = Digest::parse(digest) else {
                    return Ok(Vec::new());
                };
                match registry.referrers(repository, &parsed, None).await {
                    Ok(found) => Ok(found
                        .into_iter()
                        .map(|(digest, record)| (digest, record.artifact_type))
                        .collect()),
                    Err(StorageError::NameUnknown(_)) => Ok(Vec::new()),
                    Err(e) => Err(GatewayError::Internal(format!(
                        "listing referrers of `{digest}` in `{repository}`: {e}"
                    ))),
                }
            }
            Backend::Upstream { base, client, .. } => {
                let mut url = format!("{base}/v2/{repository}/referrers/{digest}");
                let mut found = upstream_bytes(client, &url, None).await?;
                // A registry without the referrers API (docker-registry 2.x): clients keep
                // the referrers in an index tagged `<alg>-<hex>` instead (the OCI
                // distribution spec's referrers tag schema; notation does so).
                if found.is_none()
                    && let Some((algorithm, hex)) = digest.split_once(':')
                {
                    url = format!("{base}/v2/{repository}/manifests/{algorithm}-{hex}");
                    found = upstream_bytes(client, &url, Some(OCI_INDEX)).await?;
                }
                let Some(bytes) = found else {
                    return Ok(Vec::new());
                };
                let index: ReferrersIndex = serde_json::from_slice(&bytes).map_err(|e| {
                    GatewayError::Unavailable(format!("GET {url}: not a referrers index: {e}"))
                })?;
                Ok(index
                    .manifests
                    .into_iter()
                    .map(|m| (m.digest, m.artifact_type))
                    .collect())
            }
        }
    }

    /// Every tag of `repository`, sorted (`None`: no such repository).
    pub async fn tags(&self, repository: &str) -> Result<Option<Vec<String>>, GatewayError> {
        match self {
            Backend::Bundled { registry } => match registry.tags(repository, None, None).await {
                Ok(page) => Ok(Some(page.items)),
                Err(StorageError::NameUnknown(_)) => Ok(None),
                Err(e) => Err(GatewayError::Internal(format!(
                    "listing tags of `{repository}`: {e}"
                ))),
            },
            Backend::Upstream { base, client, .. } => {
                let upstream = Upstream {
                    client,
                    base,
                    repository,
                };
                upstream.tags().await
            }
        }
    }

    /// Every repository, sorted.
    pub async fn repositories(&self) -> Result<Vec<String>, GatewayError> {
        match self {
            Backend::Bundled { registry, .. } => registry
                .catalog(None, None)
                .await
                .map(|page| page.items)
                .map_err(|e| GatewayError::Internal(format!("listing repositories: {e}"))),
            Backend::Upstream { base, client, .. } => {
                upstream_catalog(client, base, UPSTREAM_PAGE).await
            }
        }
    }
}

impl Backend {
    /// Deletes a whole repository: every manifest and tag, and (bundled store) its blob
    /// links and catalog entry, in one transaction. An upstream registry has no such
    /// operation: its tags are listed and each manifest is deleted by digest (indexes
    /// before their children), which untags it; the repository may stay in its catalog.
    pub async fn delete_repository(&self, repository: &str) -> Result<Deleted, GatewayError> {
        match self {
            Backend::Bundled { registry } => registry
                .delete_repository(repository)
                .await
                .map_err(|e| storage_error(repository, None, e)),
            Backend::Upstream { base, client, .. } => {
                let upstream = Upstream {
                    client,
                    base,
                    repository,
                };
                upstream.delete_repository().await
            }
        }
    }

    /// Deletes the manifest `reference` names (a tag's manifest) and every tag pointing
    /// at it.
    pub async fn delete_image(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<Deleted, GatewayError> {
        match self {
            Backend::Bundled { registry } => registry
                .delete_image(repository, reference)
                .await
                .map_err(|e| storage_error(repository, Some(reference), e)),
            Backend::Upstream { base, client, .. } => {
                let upstream = Upstream {
                    client,
                    base,
                    repository,
                };
                upstream.delete_image(reference).await
            }
        }
    }

    /// Up to `limit` repositories holding blob `digest` (the candidates of a mount
    /// without `from`); `None` from an upstream, which cannot be asked.
    pub async fn blob_repositories(
        &self,
        digest: &str,
        limit: usize,
    ) -> Result<Option<Vec<String>>, GatewayError> {
        match self {
            Backend::Bundled { registry } => {
                let parsed = Digest::parse(digest)
                    .map_err(|_| GatewayError::DigestInvalid(digest.to_owned()))?;
                registry
                    .blob_repositories(&parsed, limit)
                    .await
                    .map(Some)
                    .map_err(|e| bundled_error(format!("finding repositories of `{digest}`"), e))
            }
            Backend::Upstream { .. } => Ok(None),
        }
    }
}

/// A bundled-store refusal of a delete, as the gateway reports it.
fn storage_error(repository: &str, reference: Option<&Reference>, e: StorageError) -> GatewayError {
    match (e, reference) {
        (StorageError::NameUnknown(_), None) => GatewayError::NameUnknown(repository.to_owned()),
        (StorageError::ManifestUnknown { .. } | StorageError::NameUnknown(_), Some(r)) => {
            GatewayError::ManifestUnknown {
                repository: repository.to_owned(),
                reference: r.to_string(),
            }
        }
        (e, _) => bundled_error(format!("deleting from `{repository}`"), e),
    }
}

/// Any other failure of the bundled store: 503 when its metadata database is out of
/// reach (a client retries), else internal.
fn bundled_error(context: String, e: StorageError) -> GatewayError {
    match e {
        StorageError::MetaUnavailable(_) => GatewayError::Unavailable(format!("{context}: {e}")),
        e => GatewayError::Internal(format!("{context}: {e}")),
    }
}

/// One repository of an upstream registry, for the deletes done on a client's behalf.
struct Upstream<'a> {
    client: &'a reqwest::Client,
    base: &'a str,
    repository: &'a str,
}

impl Upstream<'_> {
    async fn delete_repository(&self) -> Result<Deleted, GatewayError> {
        let tags = self
            .tags()
            .await?
            .ok_or_else(|| GatewayError::NameUnknown(self.repository.to_owned()))?;
        // digest → its tags; children of indexes go after their parents.
        let mut manifests: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut children = Vec::new();
        for tag in &tags {
            // A tag deleted meanwhile is simply not there to delete.
            let Some((digest, media_type)) = self.head(tag).await? else {
                continue;
            };
            if is_index(&media_type) && !manifests.contains_key(&digest) {
                children.extend(self.children(&digest).await?);
            }
            manifests.entry(digest).or_default().push(tag.clone());
        }
        let mut deleted = Deleted::default();
        for (digest, tags) in &manifests {
            if self.delete(digest).await? {
                deleted.manifests.push(digest.clone());
                deleted.tags.extend(tags.iter().cloned());
            }
        }
        children.retain(|c| !manifests.contains_key(c));
        children.sort();
        children.dedup();
        for digest in children {
            // A child shared by two indexes, or deleted concurrently: already gone.
            if self.delete(&digest).await? {
                deleted.manifests.push(digest);
            }
        }
        deleted.manifests.sort();
        deleted.tags.sort();
        Ok(deleted)
    }

    async fn delete_image(&self, reference: &Reference) -> Result<Deleted, GatewayError> {
        let unknown = || GatewayError::ManifestUnknown {
            repository: self.repository.to_owned(),
            reference: reference.to_string(),
        };
        let digest = match reference {
            Reference::Digest(d) => d.to_string(),
            Reference::Tag(t) => self.head(t).await?.ok_or_else(unknown)?.0,
        };
        // The tags the delete removes with the manifest (distribution untags them).
        let mut tags = Vec::new();
        for tag in self.tags().await?.ok_or_else(unknown)? {
            if self.head(&tag).await?.is_some_and(|(d, _)| d == digest) {
                tags.push(tag);
            }
        }
        if !self.delete(&digest).await? {
            return Err(unknown());
        }
        tags.sort();
        Ok(Deleted {
            manifests: vec![digest],
            tags,
        })
    }

    /// Every tag (following `Link` pages); `None` if the repository is unknown.
    async fn tags(&self) -> Result<Option<Vec<String>>, GatewayError> {
        let prefix = format!("/v2/{}/tags/list?", self.repository);
        upstream_listing(
            self.client,
            self.base,
            &prefix,
            UPSTREAM_PAGE,
            |p: TagsPage| p.tags.unwrap_or_default(),
        )
        .await
    }

    /// Digest and media type of a manifest; `None` if there is none.
    async fn head(&self, reference: &str) -> Result<Option<(String, String)>, GatewayError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.repository);
        let response = self
            .client
            .head(&url)
            .header(header::ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await
            .map_err(|e| unavailable(&url, e))?;
        let text = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        match response.status() {
            s if s.is_success() => match text("docker-content-digest") {
                Some(digest) => Ok(Some((digest, text("content-type").unwrap_or_default()))),
                None => Err(GatewayError::Unavailable(format!(
                    "HEAD {url}: no Docker-Content-Digest"
                ))),
            },
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(GatewayError::Unavailable(format!("HEAD {url}: {s}"))),
        }
    }

    /// The manifests an index lists.
    async fn children(&self, digest: &str) -> Result<Vec<String>, GatewayError> {
        let url = format!("{}/v2/{}/manifests/{digest}", self.base, self.repository);
        let response = self
            .client
            .get(&url)
            .header(header::ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await
            .map_err(|e| unavailable(&url, e))?;
        if !response.status().is_success() {
            return Err(GatewayError::Unavailable(format!(
                "GET {url}: {}",
                response.status()
            )));
        }
        let index: IndexManifest = response.json().await.map_err(|e| unavailable(&url, e))?;
        Ok(index.manifests.into_iter().map(|m| m.digest).collect())
    }

    /// `DELETE` by digest; false if the upstream had no such manifest.
    async fn delete(&self, digest: &str) -> Result<bool, GatewayError> {
        let path = format!("/v2/{}/manifests/{digest}", self.repository);
        let url = format!("{}{path}", self.base);
        let response = self
            .client
            .delete(&url)
            .send()
            .await
            .map_err(|e| unavailable(&url, e))?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            // distribution without `storage.delete.enabled`.
            StatusCode::METHOD_NOT_ALLOWED => Err(GatewayError::Unsupported {
                method: "DELETE".into(),
                path: format!("{path} (the upstream registry does not allow deletes)"),
            }),
            s => Err(GatewayError::Unavailable(format!("DELETE {url}: {s}"))),
        }
    }
}

fn is_index(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.index.v1+json")
        || media_type.starts_with("application/vnd.docker.distribution.manifest.list.v2+json")
}

#[derive(serde::Deserialize)]
struct TagsPage {
    tags: Option<Vec<String>>,
}

#[derive(serde::Deserialize)]
struct IndexManifest {
    #[serde(default)]
    manifests: Vec<ChildDescriptor>,
}

#[derive(serde::Deserialize)]
struct ChildDescriptor {
    digest: String,
}

/// Every repository of an upstream, following `_catalog` pages of `page` names.
async fn upstream_catalog(
    client: &reqwest::Client,
    base: &str,
    page: usize,
) -> Result<Vec<String>, GatewayError> {
    let prefix = "/v2/_catalog?";
    upstream_listing(client, base, prefix, page, |p: CatalogPage| p.repositories)
        .await?
        .ok_or_else(|| GatewayError::Unavailable(format!("GET {base}{prefix}: 404 Not Found")))
}

/// The names of a paged upstream listing (`prefix`: its path up to the query),
/// following `Link` pages of `page` names, sorted and unique; `None` on a 404.
async fn upstream_listing<P: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    base: &str,
    prefix: &str,
    page: usize,
    names: impl Fn(P) -> Vec<String>,
) -> Result<Option<Vec<String>>, GatewayError> {
    let mut out = Vec::new();
    let mut next = Some(format!("{prefix}n={page}"));
    while let Some(path) = next {
        let url = format!("{base}{path}");
        let response = client
            .get(&url)
            .send()
            .await
            .map_err(|e| unavailable(&url, e))?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Ok(None),
            s => return Err(GatewayError::Unavailable(format!("GET {url}: {s}"))),
        }
        next = next_link(response.headers(), prefix);
        let body: P = response.json().await.map_err(|e| unavailable(&url, e))?;
        out.extend(names(body));
    }
    out.sort();
    out.dedup();
    Ok(Some(out))
}

#[derive(serde::Deserialize)]
struct ReferrersIndex {
    #[serde(default)]
    manifests: Vec<ReferrerDescriptor>,
}

#[derive(serde::Deserialize)]
struct ReferrerDescriptor {
    digest: String,
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
}

/// `GET url` from an upstream, bounded by [`SIGNATURE_LIMIT`]; `None` on a 404 or a
/// larger body.
async fn upstream_bytes(
    client: &reqwest::Client,
    url: &str,
    accept: Option<&str>,
) -> Result<Option<Vec<u8>>, GatewayError> {
    let mut request = client.get(url);
    if let Some(accept) = accept {
        request = request.header(header::ACCEPT, accept);
    }
    let mut response = request.send().await.map_err(|e| unavailable(url, e))?;
    match response.status() {
        s if s.is_success() => {}
        StatusCode::NOT_FOUND => return Ok(None),
        s => return Err(GatewayError::Unavailable(format!("GET {url}: {s}"))),
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| unavailable(url, e))? {
        if (bytes.len() + chunk.len()) as u64 > SIGNATURE_LIMIT {
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(bytes))
}

#[derive(serde::Deserialize)]
struct CatalogPage {
    #[serde(default)]
    repositories: Vec<String>,
}

/// The target of `Link: <…>; rel="next"`, as a path on the same registry that starts
/// with `prefix` (the listing being paged).
fn next_link(headers: &HeaderMap, prefix: &str) -> Option<String> {
    headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|link| link.contains("rel=\"next\"") || link.contains("rel=next"))
        .and_then(|link| {
            let start = link.find('<')?;
            let end = link.find('>')?;
            let target = link.get(start + 1..end)?;
            // Only ever follow links on the upstream itself.
            target.starts_with(prefix).then(|| target.to_owned())
        })
}

/// `GET <base>/v2/` as a readiness check (see [`Backend::ready`]).
async fn probe_upstream(client: &reqwest::Client, base: &str) -> Result<(), String> {
    let url = format!("{base}/v2/");
    let response = client
        .get(&url)
        .timeout(READY_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    if status != StatusCode::OK && status != StatusCode::UNAUTHORIZED {
        return Err(format!("{url} answered {status}"));
    }
    let version = response
        .headers()
        .get("docker-distribution-api-version")
        .and_then(|v| v.to_str().ok());
    if version != Some("registry/2.0") {
        return Err(format!(
            "{url} is not a registry: no `Docker-Distribution-API-Version: registry/2.0`"
        ));
    }
    Ok(())
}

fn unavailable(url: &str, e: reqwest::Error) -> GatewayError {
    GatewayError::Unavailable(format!("{url}: {e}"))
}

#[cfg(test)]
use portcullis_test_support::registry as test_registry;

#[cfg(test)]
mod tests;
