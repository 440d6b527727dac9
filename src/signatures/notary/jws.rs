//! The JWS envelope (`application/jose+json`): JSON serialization with one signature,
//! the Notary Project's headers in the protected header, the certificate chain in the
//! unprotected header's `x5c` (base64 DER, leaf first), the signature over
//! `protected.payload` (both base64url as sent).

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Algorithm, EXPIRY, Envelope, NotaryError, SIGNING_SCHEME, SIGNING_TIME};

#[derive(Deserialize)]
struct Jws {
    payload: String,
    protected: String,
    #[serde(default)]
    header: UnprotectedHeader,
    signature: String,
}

#[derive(Deserialize, Default)]
struct UnprotectedHeader {
    #[serde(default)]
    x5c: Vec<String>,
}

fn malformed(what: &str, e: impl std::fmt::Display) -> NotaryError {
    NotaryError::Envelope(format!("{what}: {e}"))
}

pub(super) fn read(bytes: &[u8]) -> Result<Envelope, NotaryError> {
    let jws: Jws =
        serde_json::from_slice(bytes).map_err(|e| NotaryError::Envelope(e.to_string()))?;
    let protected_bytes = URL_SAFE_NO_PAD
        .decode(jws.protected.as_bytes())
        .map_err(|e| malformed("protected header", e))?;
    let protected: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&protected_bytes).map_err(|e| malformed("protected header", e))?;
    let text = |name: &str| protected.get(name).and_then(|v| v.as_str());
    let alg = text("alg").unwrap_or_default();
    let algorithm = Algorithm::from_jws(alg).ok_or_else(|| NotaryError::Algorithm(alg.into()))?;
    let critical = match protected.get("crit") {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| match v.as_str() {
                Some(name) => Ok(name.to_owned()),
                None => Err(NotaryError::UnknownCritical(v.to_string())),
            })
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    let time = |name: &str| text(name).and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    let expiry = match text(EXPIRY) {
        None => None,
        Some(raw) => Some(
            time(EXPIRY)
                .ok_or_else(|| NotaryError::Envelope(format!("expiry `{raw}` is not RFC 3339")))?,
        ),
    };
    let chain = jws
        .header
        .x5c
        .iter()
        .map(|c| STANDARD.decode(c).map(CertificateDer::from))
        .collect::<Result<_, _>>()
        .map_err(|e| NotaryError::Chain(format!("x5c is not base64: {e}")))?;
    Ok(Envelope {
        algorithm,
        content_type: text("cty").map(str::to_owned),
        signing_scheme: text(SIGNING_SCHEME).map(str::to_owned),
        critical,
        signing_time: time(SIGNING_TIME),
        expiry,
        chain,
        signed: format!("{}.{}", jws.protected, jws.payload).into_bytes(),
        signature: URL_SAFE_NO_PAD
            .decode(jws.signature.as_bytes())
            .map_err(|e| malformed("signature", e))?,
        payload: URL_SAFE_NO_PAD
            .decode(jws.payload.as_bytes())
            .map_err(|e| malformed("payload", e))?,
    })
}
