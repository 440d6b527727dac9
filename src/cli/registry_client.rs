//! The blocking client the `repository` and `manifest` commands share. It speaks the
//! registry API (`/v2/…`, so it works against the bundled backend and an upstream
//! registry alike) and the gateway's repository API (`/portcullis/v1/repositories/…`),
//! with HTTP Basic on every request: a token name and password, or the admin account.

use clap::Args;
use portcullis_oci::{Digest, Reference};
use reqwest::blocking::{Client, Response};
use reqwest::{Method, Url, header};
use serde_json::Value;

use super::admin_client::{ClientArgs, ClientError, http_client, server_error};

/// Every manifest type the commands understand, for `Accept`.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Page size asked for when listing; the server may return fewer and a `Link`.
const PAGE_SIZE: usize = 100;

/// Options of the registry-API commands (valid before or after the subcommand).
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Token name to authenticate as (default: the admin account, `admin`).
    #[arg(long, global = true, env = "PORTCULLIS_USERNAME")]
    pub username: Option<String>,
    /// The token's password (for `admin`, the admin password is used when not given).
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no password for `{0}`: set PORTCULLIS_PASSWORD or pass --password")]
    NoPassword(String),
    #[error("registry URL `{url}` is invalid: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse { url: String, reason: String },
}

/// `--image REPO:TAG` or `--image REPO@DIGEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub repository: String,
    pub reference: Reference,
}

#[derive(Debug, thiserror::Error)]
#[error("image `{0}` must be REPOSITORY:TAG or REPOSITORY@DIGEST")]
pub struct ImageError(String);

impl std::str::FromStr for Image {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ImageError(s.to_owned());
        let (repository, reference) = if let Some((repo, digest)) = s.split_once('@') {
            (
                repo,
                Reference::Digest(Digest::parse(digest).map_err(|_| bad())?),
            )
        } else {
            // A tag never contains `/`, so the last `:` after the last `/` starts it.
            let (repo, tag) = s.rsplit_once(':').ok_or_else(bad)?;
            if tag.contains('/') {
                return Err(bad());
            }
            (repo, Reference::Tag(tag.to_owned()))
        };
        if repository.is_empty() || reference.to_string().is_empty() {
            return Err(bad());
        }
        Ok(Image {
            repository: repository.to_owned(),
            reference,
        })
    }
}

/// What a manifest `HEAD` (or `GET`) tells about a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInfo {
    pub digest: String,
    pub media_type: String,
    /// The manifest's own size in bytes.
    pub size: u64,
}

pub struct RegistryClient {
    http: Client,
    base: Url,
    username: String,
    password: String,
}

impl RegistryClient {
    pub fn new(args: &RegistryArgs) -> Result<Self, RegistryError> {
        let username = args.username.clone().unwrap_or_else(|| "admin".to_owned());
        let password = match (&args.password, username.as_str()) {
            (Some(p), _) => p.clone(),
            (None, "admin") => args.client.admin_password()?,
            (None, user) => return Err(RegistryError::NoPassword(user.to_owned())),
        };
        let url = &args.client.registry;
        let base = Url::parse(url).map_err(|e| RegistryError::InvalidUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        Ok(RegistryClient {
            http: http_client(&args.client)?,
            base,
            username,
            password,
        })
    }

    fn url(&self, path_and_query: &str) -> Result<Url, RegistryError> {
        self.base
            .join(path_and_query)
            .map_err(|e| RegistryError::InvalidUrl {
                url: format!("{}{path_and_query}", self.base),
                reason: e.to_string(),
            })
    }

    /// Sends an authenticated request; a refusal becomes the server's error message.
    fn send(
        &self,
        method: Method,
        url: &Url,
        accept: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Response, RegistryError> {
        let mut req = self
            .http
            .request(method, url.clone())
            .basic_auth(&self.username, Some(&self.password));
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().map_err(|source| ClientError::Http {
            url: url.to_string(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = self.read_json(url, resp).unwrap_or(Value::Null);
        Err(server_error(status, &body).into())
    }

    fn read_json(&self, url: &Url, resp: Response) -> Result<Value, RegistryError> {
        let bytes = resp.bytes().map_err(|source| ClientError::Http {
            url: url.to_string(),
            source,
        })?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::BadResponse {
            url: url.to_string(),
            reason: format!("body is not JSON: {e}"),
        })
    }

    /// Follows `Link: <…>; rel="next"` from `path?n=…`, collecting the strings of array
    /// `field` of every page.
    fn paginate(&self, path: &str, field: &str) -> Result<Vec<String>, RegistryError> {
        let mut items = Vec::new();
        let mut next = Some(self.url(&format!("{path}?n={PAGE_SIZE}"))?);
        while let Some(url) = next.take() {
            let resp = self.send(Method::GET, &url, None, None)?;
            if let Some(link) = resp.headers().get(header::LINK) {
                let target = link.to_str().ok().and_then(next_link);
                next = match target {
                    Some(t) => {
                        let joined = url.join(t).map_err(|e| RegistryError::BadResponse {
                            url: url.to_string(),
                            reason: format!("bad Link `{t}`: {e}"),
                        })?;
                        // Credentials go with every request: never to another origin.
                        if joined.origin() != url.origin() {
                            return Err(RegistryError::BadResponse {
                                url: url.to_string(),
                                reason: format!("Link `{t}` leaves the registry"),
                            });
                        }
                        Some(joined)
                    }
                    None => None,
                };
            }
            let page = self.read_json(&url, resp)?;
            // `tags` is null for a repository without tags.
            let values = match &page[field] {
                Value::Null => &[][..],
                Value::Array(a) => a.as_slice(),
                _ => {
                    return Err(RegistryError::BadResponse {
                        url: url.to_string(),
                        reason: format!("`{field}` is not a list"),
                    });
                }
            };
            items.extend(values.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        Ok(items)
    }

    /// Every repository the caller may list (`GET /v2/_catalog`, all pages).
    pub fn catalog(&self) -> Result<Vec<String>, RegistryError> {
        self.paginate("/v2/_catalog", "repositories")
    }

    /// Every tag of `repository` (`GET /v2/<name>/tags/list`, all pages).
    pub fn tags(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        self.paginate(&format!("/v2/{repository}/tags/list"), "tags")
    }

    fn manifest_url(&self, repository: &str, reference: &Reference) -> Result<Url, RegistryError> {
        self.url(&format!("/v2/{repository}/manifests/{reference}"))
    }

    /// Digest, media type and size of a manifest, from a `HEAD`. A refused `HEAD` has no
    /// body, so the request is repeated as `GET` to report the server's message.
    pub fn head_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<ManifestInfo, RegistryError> {
        let url = self.manifest_url(repository, reference)?;
        match self.send(Method::HEAD, &url, Some(MANIFEST_ACCEPT), None) {
            Ok(resp) => match header_info(&resp) {
                Some(info) => Ok(info),
                // No Docker-Content-Digest: compute it from the body.
                None => self
                    .get_manifest(repository, reference)
                    .map(|(info, _)| info),
            },
            Err(_) => self
                .get_manifest(repository, reference)
                .map(|(info, _)| info),
        }
    }

    /// A manifest and what its headers (or bytes) say about it.
    pub fn get_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<(ManifestInfo, Value), RegistryError> {
        let url = self.manifest_url(repository, reference)?;
        let resp = self.send(Method::GET, &url, Some(MANIFEST_ACCEPT), None)?;
        let from_headers = header_info(&resp);
        let bytes = resp.bytes().map_err(|source| ClientError::Http {
            url: url.to_string(),
            source,
        })?;
        let manifest: Value =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::BadResponse {
                url: url.to_string(),
                reason: format!("manifest is not JSON: {e}"),
            })?;
        let info = from_headers.unwrap_or_else(|| ManifestInfo {
            digest: Digest::of(&bytes).to_string(),
            media_type: manifest["mediaType"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            size: bytes.len() as u64,
        });
        Ok((info, manifest))
    }

    /// A JSON blob (an image config).
    pub fn get_json_blob(&self, repository: &str, digest: &str) -> Result<Value, RegistryError> {
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"))?;
        let resp = self.send(Method::GET, &url, None, None)?;
        self.read_json(&url, resp)
    }

    /// `DELETE /v2/<name>/manifests/<reference>`: by tag it untags, by digest it deletes
    /// the manifest and every tag pointing at it.
    pub fn delete_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<(), RegistryError> {
        let url = self.manifest_url(repository, reference)?;
        self.send(Method::DELETE, &url, None, None).map(drop)
    }

    /// The gateway's repository API: `DELETE` a whole repository. Returns what went:
    /// `{"manifestsDeleted": [...], "tagsDeleted": [...]}`.
    pub fn delete_repository(&self, repository: &str) -> Result<Value, RegistryError> {
        self.delete_json(&format!("/portcullis/v1/repositories/{repository}"))
    }

    /// The gateway's repository API: `DELETE` an image, the manifest a tag or digest
    /// names with every tag on it. Returns what went, as [`Self::delete_repository`].
    pub fn delete_image(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<Value, RegistryError> {
        self.delete_json(&format!(
            "/portcullis/v1/repositories/{repository}/_manifests/{reference}"
        ))
    }

    fn delete_json(&self, path: &str) -> Result<Value, RegistryError> {
        let url = self.url(path)?;
        let resp = self.send(Method::DELETE, &url, None, None)?;
        self.read_json(&url, resp)
    }

    /// The gateway's repository API: `GET` or `PATCH` a repository's attributes.
    pub fn repository_attributes(
        &self,
        method: Method,
        repository: &str,
        body: Option<&Value>,
    ) -> Result<Value, RegistryError> {
        let url = self.url(&format!("/portcullis/v1/repositories/{repository}"))?;
        let resp = self.send(method, &url, None, body)?;
        self.read_json(&url, resp)
    }
}

/// The target of the `rel="next"` entry of a `Link` header.
fn next_link(link: &str) -> Option<&str> {
    link.split(',').find_map(|entry| {
        let (target, params) = entry.trim().strip_prefix('<')?.split_once('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim();
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then_some(target)
    })
}

/// Digest, media type and size from manifest response headers, if the digest is there.
fn header_info(resp: &Response) -> Option<ManifestInfo> {
    let text = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Some(ManifestInfo {
        digest: text("docker-content-digest")?,
        media_type: text("content-type").unwrap_or_default(),
        size: text("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_parse_by_tag_and_digest() {
        let img: Image = "samples/hello:v1".parse().unwrap();
        assert_eq!(img.repository, "samples/hello");
        assert_eq!(img.reference, Reference::Tag("v1".into()));
        let digest = Digest::of(b"manifest");
        let img: Image = format!("a/b@{digest}").parse().unwrap();
        assert_eq!(img.repository, "a/b");
        assert_eq!(img.reference, Reference::Digest(digest));
        for bad in [
            "samples/hello",
            "host:5000/hello",
            ":v1",
            "a@",
            "a:",
            "a@sha256:0123",
        ] {
            assert!(bad.parse::<Image>().is_err(), "{bad}");
        }
    }

    #[test]
    fn next_link_is_found_among_others() {
        assert_eq!(
            next_link(r#"</v2/_catalog?n=2&last=b>; rel="next""#),
            Some("/v2/_catalog?n=2&last=b")
        );
        assert_eq!(
            next_link(r#"<https://x/a>; rel="prev", <https://x/b>; rel="next""#),
            Some("https://x/b")
        );
        assert_eq!(next_link(r#"</v2/_catalog>; rel="prev""#), None);
    }
}
