//! The COSE envelope (`application/cose`): a `COSE_Sign1_Tagged` message (RFC 9052)
//! with the Notary Project's headers in the protected header (`alg` 1, `crit` 2,
//! content type 3, and the `io.cncf.notary.*` text labels, times as epoch-based
//! date/time, tag 1), the certificate chain in `x5chain` (label 33, DER byte strings,
//! leaf first; unprotected, or protected), the payload attached, and the signature
//! over the `Sig_structure` `["Signature1", protected, h'', payload]`.

use ciborium::Value;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::{Algorithm, EXPIRY, Envelope, NotaryError, SIGNING_SCHEME, SIGNING_TIME};

/// The CBOR tag of `COSE_Sign1`.
const COSE_SIGN1: u64 = 18;
const ALG: i128 = 1;
const CRIT: i128 = 2;
const CONTENT_TYPE: i128 = 3;
const X5CHAIN: i128 = 33;

fn malformed(what: impl std::fmt::Display) -> NotaryError {
    NotaryError::Cose(what.to_string())
}

/// A header map's entries; duplicate labels are refused (RFC 9052, section 3).
fn header_map(value: Value, which: &str) -> Result<Vec<(Value, Value)>, NotaryError> {
    let Value::Map(entries) = value else {
        return Err(malformed(format!("{which} header is not a map")));
    };
    for (i, (label, _)) in entries.iter().enumerate() {
        if entries[..i].iter().any(|(seen, _)| seen == label) {
            return Err(malformed(format!("{which} header repeats a label")));
        }
    }
    Ok(entries)
}

fn by_int(map: &[(Value, Value)], label: i128) -> Option<&Value> {
    map.iter()
        .find(|(k, _)| matches!(k, Value::Integer(i) if i128::from(*i) == label))
        .map(|(_, v)| v)
}

fn by_text<'a>(map: &'a [(Value, Value)], label: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| matches!(k, Value::Text(t) if t == label))
        .map(|(_, v)| v)
}

/// An epoch-based date/time (tag 1 over whole seconds).
fn epoch(value: &Value) -> Option<OffsetDateTime> {
    match value {
        Value::Tag(1, inner) => match inner.as_ref() {
            Value::Integer(seconds) => {
                let seconds = i64::try_from(i128::from(*seconds)).ok()?;
                OffsetDateTime::from_unix_timestamp(seconds).ok()
            }
            _ => None,
        },
        _ => None,
    }
}

fn text(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::Text(t)) => Some(t.clone()),
        _ => None,
    }
}

pub(super) fn read(bytes: &[u8]) -> Result<Envelope, NotaryError> {
    let message: Value = ciborium::from_reader(bytes).map_err(malformed)?;
    let Value::Tag(COSE_SIGN1, message) = message else {
        return Err(malformed("not a COSE_Sign1_Tagged message (tag 18)"));
    };
    let Value::Array(parts) = *message else {
        return Err(malformed("COSE_Sign1 is not an array"));
    };
    let [protected, unprotected, payload, signature] = <[Value; 4]>::try_from(parts)
        .map_err(|_| malformed("COSE_Sign1 does not have four parts"))?;
    let (Value::Bytes(protected_bytes), Value::Bytes(payload), Value::Bytes(signature)) =
        (protected, payload, signature)
    else {
        return Err(malformed(
            "protected header, payload (attached) and signature must be byte strings",
        ));
    };
    let protected = header_map(
        ciborium::from_reader(protected_bytes.as_slice()).map_err(malformed)?,
        "protected",
    )?;
    let unprotected = header_map(unprotected, "unprotected")?;

    let algorithm = match by_int(&protected, ALG) {
        Some(Value::Integer(label)) => {
            let label = i128::from(*label);
            Algorithm::from_cose(label)
                .ok_or_else(|| NotaryError::Algorithm(format!("COSE {label}")))?
        }
        Some(Value::Text(name)) => return Err(NotaryError::Algorithm(name.clone())),
        _ => return Err(NotaryError::Algorithm(String::new())),
    };
    let critical = match by_int(&protected, CRIT) {
        Some(Value::Array(labels)) => labels
            .iter()
            .map(|label| match label {
                Value::Text(name) => Ok(name.clone()),
                other => Err(NotaryError::UnknownCritical(format!("{other:?}"))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(malformed("crit is not an array")),
        None => Vec::new(),
    };
    let expiry = match by_text(&protected, EXPIRY) {
        None => None,
        Some(value) => Some(
            epoch(value).ok_or_else(|| malformed("expiry is not an epoch date/time (tag 1)"))?,
        ),
    };
    let chain = match by_int(&unprotected, X5CHAIN).or_else(|| by_int(&protected, X5CHAIN)) {
        Some(Value::Bytes(one)) => vec![CertificateDer::from(one.clone())],
        Some(Value::Array(certs)) => certs
            .iter()
            .map(|c| match c {
                Value::Bytes(der) => Ok(CertificateDer::from(der.clone())),
                _ => Err(NotaryError::Chain("x5chain holds a non-byte-string".into())),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(NotaryError::Chain(
                "x5chain is not a byte string array".into(),
            ));
        }
        None => Vec::new(),
    };

    let sig_structure = Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected_bytes),
        Value::Bytes(Vec::new()),
        Value::Bytes(payload.clone()),
    ]);
    let mut signed = Vec::new();
    ciborium::into_writer(&sig_structure, &mut signed).map_err(malformed)?;
    Ok(Envelope {
        algorithm,
        content_type: text(by_int(&protected, CONTENT_TYPE)),
        signing_scheme: text(by_text(&protected, SIGNING_SCHEME)),
        critical,
        signing_time: by_text(&protected, SIGNING_TIME).and_then(epoch),
        expiry,
        chain,
        signed,
        signature,
        payload,
    })
}
