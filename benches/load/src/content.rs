//! The test image (a config, a 4 KiB layer, a large layer, an OCI manifest) and the
//! distribution-spec push flows: monolithic (POST, then one PUT with the body) and
//! chunked (POST, PATCH per chunk, empty PUT).

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};

use crate::client::{Conn, collect};

pub const REPOSITORY: &str = "bench/app";
pub const TAG: &str = "v1";
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const OCTET_STREAM: &str = "application/octet-stream";

pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Incompressible, deterministic bytes (xorshift64) whose first 8 bytes are `seed`, so
/// every seed gives a blob with its own digest.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    reseed(&mut v, seed);
    v
}

/// Makes `data` a different blob by rewriting its first 8 bytes.
pub fn reseed(data: &mut [u8], seed: u64) {
    for (b, s) in data.iter_mut().zip(seed.to_le_bytes()) {
        *b = s;
    }
}

/// A blob and its digest.
#[derive(Clone)]
pub struct Blob {
    pub data: Bytes,
    pub digest: String,
}

impl Blob {
    pub fn new(data: Vec<u8>) -> Blob {
        let digest = digest(&data);
        Blob {
            data: Bytes::from(data),
            digest,
        }
    }
}

/// The image every target serves.
pub struct Image {
    pub config: Blob,
    pub small: Blob,
    pub large: Blob,
    pub manifest: Bytes,
}

impl Image {
    pub fn new(large_bytes: usize) -> Result<Image> {
        let config = Blob::new(br#"{"architecture":"amd64","os":"linux"}"#.to_vec());
        let small = Blob::new(pseudo_random(4096, 1));
        let large = Blob::new(pseudo_random(large_bytes, 2));
        let layer = |b: &Blob| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": b.digest,
                "size": b.data.len(),
            })
        };
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.digest,
                "size": config.data.len(),
            },
            "layers": [layer(&small), layer(&large)],
        }))?;
        Ok(Image {
            config,
            small,
            large,
            manifest: Bytes::from(manifest),
        })
    }

    /// Pushes the blobs and tags the manifest.
    pub async fn push(&self, conn: &mut Conn) -> Result<()> {
        for blob in [&self.config, &self.small, &self.large] {
            push_monolithic(conn, REPOSITORY, blob).await?;
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(MANIFEST_TYPE));
        let path = format!("/v2/{REPOSITORY}/manifests/{TAG}");
        expect(
            conn,
            Method::PUT,
            &path,
            headers,
            self.manifest.clone(),
            StatusCode::CREATED,
        )
        .await?;
        Ok(())
    }
}

/// Sends a request; its `Location` header (as a path) when the status is `status`.
async fn expect(
    conn: &mut Conn,
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: Bytes,
    status: StatusCode,
) -> Result<Option<String>> {
    let req = conn
        .endpoint()
        .request(method.clone(), path, &headers, body)?;
    let resp = conn.send(req).await?;
    let got = resp.status();
    let location = resp
        .headers()
        .get(LOCATION)
        .map(|l| location_path(l.to_str().unwrap_or_default()));
    let body = collect(resp).await?;
    if got != status {
        bail!(
            "{method} {path} answered {got}, not {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(location)
}

/// `Location` may be absolute (docker-registry) or a path; requests use the path.
pub fn location_path(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => rest
            .find('/')
            .map_or_else(|| "/".to_owned(), |i| rest[i..].to_owned()),
        None => location.to_owned(),
    }
}

async fn start_upload(conn: &mut Conn, repo: &str) -> Result<String> {
    let path = format!("/v2/{repo}/blobs/uploads/");
    expect(
        conn,
        Method::POST,
        &path,
        HeaderMap::new(),
        Bytes::new(),
        StatusCode::ACCEPTED,
    )
    .await?
    .ok_or_else(|| anyhow!("POST {path} gave no Location"))
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

fn octet_stream(len: usize) -> Result<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM));
    h.insert(CONTENT_LENGTH, HeaderValue::from_str(&len.to_string())?);
    Ok(h)
}

/// POST, then one PUT `?digest=` carrying the whole blob.
pub async fn push_monolithic(conn: &mut Conn, repo: &str, blob: &Blob) -> Result<()> {
    let location = start_upload(conn, repo).await?;
    expect(
        conn,
        Method::PUT,
        &with_digest(&location, &blob.digest),
        octet_stream(blob.data.len())?,
        blob.data.clone(),
        StatusCode::CREATED,
    )
    .await
    .with_context(|| format!("monolithic push of {}", blob.digest))?;
    Ok(())
}

/// POST, a PATCH per `chunk` bytes (with `Content-Range`), then an empty PUT `?digest=`.
pub async fn push_chunked(conn: &mut Conn, repo: &str, blob: &Blob, chunk: usize) -> Result<()> {
    let mut location = start_upload(conn, repo).await?;
    let mut start = 0;
    while start < blob.data.len() {
        let end = (start + chunk.max(1)).min(blob.data.len());
        let mut headers = octet_stream(end - start)?;
        headers.insert(
            "content-range",
            HeaderValue::from_str(&format!("{start}-{}", end - 1))?,
        );
        location = expect(
            conn,
            Method::PATCH,
            &location,
            headers,
            blob.data.slice(start..end),
            StatusCode::ACCEPTED,
        )
        .await
        .with_context(|| format!("chunked push of {}", blob.digest))?
        .ok_or_else(|| anyhow!("PATCH gave no Location"))?;
        start = end;
    }
    expect(
        conn,
        Method::PUT,
        &with_digest(&location, &blob.digest),
        octet_stream(0)?,
        Bytes::new(),
        StatusCode::CREATED,
    )
    .await
    .with_context(|| format!("closing the chunked push of {}", blob.digest))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_is_reduced_to_its_path() {
        assert_eq!(
            location_path("http://127.0.0.1:5000/v2/a/blobs/uploads/x?_state=y"),
            "/v2/a/blobs/uploads/x?_state=y"
        );
        assert_eq!(
            location_path("/v2/a/blobs/uploads/x"),
            "/v2/a/blobs/uploads/x"
        );
    }

    #[test]
    fn seeds_give_distinct_blobs_of_the_asked_length() {
        let a = pseudo_random(1000, 1);
        let mut b = a.clone();
        reseed(&mut b, 2);
        assert_eq!(a.len(), 1000);
        assert_ne!(digest(&a), digest(&b));
        assert_eq!(a[8..], b[8..]);
    }
}
