//! The signed-only rows (bundled-store gateways): two more manifests of the bench
//! image in the bench repository, one signed the cosign way (a `sha256-<hex>.sig` tag
//! whose layer is a simple-signing payload with its ECDSA P-256 signature) and one
//! with a Notary Project signature (a referrer holding a JWS envelope, ES256, with a
//! certificate chain made here by rcgen); both signers trusted through the admin API
//! and the repository signed-only while the phase runs. A pull by tag is then decided
//! with one more cached lookup (the verified signers of the digest) than an unsigned
//! pull.

use anyhow::{Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};

use crate::client::{Conn, collect};
use crate::content::{Blob, Image, MANIFEST_TYPE, REPOSITORY, digest, push_monolithic};
use crate::servers::{Running, admin_basic};

/// The tags of the signed manifests.
pub const COSIGN_TAG: &str = "signed-cosign";
pub const NOTATION_TAG: &str = "signed-notation";

/// The bench image's manifest with an annotation, so each signed tag has its own digest.
fn variant(image: &Image, name: &str) -> Result<Bytes> {
    let mut manifest: Value = serde_json::from_slice(&image.manifest)?;
    manifest["annotations"] = json!({ "org.example.bench.signed": name });
    Ok(Bytes::from(serde_json::to_vec(&manifest)?))
}

async fn send(
    conn: &mut Conn,
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: Bytes,
    want: StatusCode,
) -> Result<()> {
    let req = conn
        .endpoint()
        .request(method.clone(), path, &headers, body)?;
    let resp = conn.send(req).await?;
    let status = resp.status();
    let body = collect(resp).await?;
    if status != want {
        bail!(
            "{method} {path} answered {status}, not {want}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

async fn put_manifest(conn: &mut Conn, reference: &str, manifest: Bytes) -> Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(MANIFEST_TYPE));
    let path = format!("/v2/{REPOSITORY}/manifests/{reference}");
    send(
        conn,
        Method::PUT,
        &path,
        headers,
        manifest,
        StatusCode::CREATED,
    )
    .await
}

async fn admin(conn: &mut Conn, method: Method, path: &str, body: Value) -> Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, admin_basic()?);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let want = if method == Method::POST {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = Bytes::from(serde_json::to_vec(&body)?);
    send(conn, method, path, headers, body, want).await
}

async fn signed_only(conn: &mut Conn, on: bool) -> Result<()> {
    let path = format!("/admin/v1/repositories/{REPOSITORY}/attributes");
    admin(conn, Method::PUT, &path, json!({ "signedOnly": on })).await
}

/// Pushes the signed manifests and their signatures (the bench image's blobs are
/// there already), trusts both signers and makes the repository signed-only.
pub async fn prepare(running: &Running, image: &Image) -> Result<()> {
    let mut conn = Conn::open(&running.endpoint).await?;
    let empty = Blob::new(b"{}".to_vec());
    push_monolithic(&mut conn, REPOSITORY, &empty).await?;

    // cosign: ECDSA P-256 over the exact payload bytes, DER, base64 in an annotation.
    let cosigned = variant(image, "cosign")?;
    let cosigned_digest = digest(&cosigned);
    put_manifest(&mut conn, COSIGN_TAG, cosigned).await?;
    let key = SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let payload = Blob::new(serde_json::to_vec(&json!({"critical": {
        "identity": {"docker-reference": format!("{}/{REPOSITORY}", running.endpoint.addr)},
        "image": {"docker-manifest-digest": cosigned_digest},
        "type": "cosign container image signature"}, "optional": null}))?);
    let signature: Signature = key.sign(&payload.data);
    push_monolithic(&mut conn, REPOSITORY, &payload).await?;
    let sig_manifest = json!({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": empty.digest, "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "digest": payload.digest, "size": payload.data.len(),
                    "annotations": {"dev.cosignproject.cosign/signature":
                                    STANDARD.encode(signature.to_der().as_bytes())}}],
    });
    let sig_tag = cosigned_digest.replacen(':', "-", 1) + ".sig";
    put_manifest(
        &mut conn,
        &sig_tag,
        Bytes::from(serde_json::to_vec(&sig_manifest)?),
    )
    .await?;

    // Notary Project: a JWS envelope by a leaf certificate of a CA made here.
    let notarized = variant(image, "notation")?;
    let notarized_digest = digest(&notarized);
    let notarized_size = notarized.len();
    put_manifest(&mut conn, NOTATION_TAG, notarized).await?;
    let (ca_pem, chain, leaf_key) = pki()?;
    let now = time::OffsetDateTime::now_utc();
    let rfc3339 = |at: time::OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let protected = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json!({
        "alg": "ES256",
        "crit": ["io.cncf.notary.signingScheme"],
        "cty": "application/vnd.cncf.notary.payload.v1+json",
        "io.cncf.notary.signingScheme": "notary.x509",
        "io.cncf.notary.signingTime": rfc3339(now - time::Duration::minutes(1)),
    }))?);
    let jws_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json!({"targetArtifact": {
        "mediaType": MANIFEST_TYPE, "digest": notarized_digest, "size": notarized_size}}))?);
    let leaf = SigningKey::from_pkcs8_der(&leaf_key)?;
    let signature: Signature = leaf.sign(format!("{protected}.{jws_payload}").as_bytes());
    let envelope = Blob::new(serde_json::to_vec(&json!({
        "payload": jws_payload, "protected": protected,
        "header": {"x5c": chain.iter().map(|c| STANDARD.encode(c)).collect::<Vec<_>>()},
        "signature": URL_SAFE_NO_PAD.encode(signature.to_bytes()),
    }))?);
    push_monolithic(&mut conn, REPOSITORY, &envelope).await?;
    let referrer = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "artifactType": "application/vnd.cncf.notary.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": empty.digest, "size": 2},
        "layers": [{"mediaType": "application/jose+json",
                    "digest": envelope.digest, "size": envelope.data.len()}],
        "subject": {"mediaType": MANIFEST_TYPE, "digest": notarized_digest,
                    "size": notarized_size},
    }))?;
    let referrer_digest = digest(&referrer);
    put_manifest(&mut conn, &referrer_digest, Bytes::from(referrer)).await?;

    let public_key = key
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)?;
    let trust = "/admin/v1/signature-trust";
    let cosign = json!({"name": "bench-cosign", "publicKey": public_key});
    admin(&mut conn, Method::POST, trust, cosign).await?;
    let notation = json!({"name": "bench-notation", "caCerts": ca_pem});
    admin(&mut conn, Method::POST, trust, notation).await?;
    signed_only(&mut conn, true).await
}

/// The repository is no longer signed-only (for the phases after this one).
pub async fn finish(running: &Running) -> Result<()> {
    let mut conn = Conn::open(&running.endpoint).await?;
    signed_only(&mut conn, false).await
}

/// A CA and a code-signing leaf it issued: the CA's PEM, the chain (leaf first, DER)
/// and the leaf's PKCS#8 key.
fn pki() -> Result<(String, Vec<Vec<u8>>, Vec<u8>)> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "portcullis-load CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.distinguished_name
        .push(DnType::CommonName, "portcullis-load signer");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok((
        ca_cert.pem(),
        vec![leaf_cert.der().to_vec(), ca_cert.der().to_vec()],
        leaf_key.serialize_der(),
    ))
}
