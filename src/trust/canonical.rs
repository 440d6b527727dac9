//! Canonical JSON as notary's `MarshalCanonical` writes it (OLPC canonical JSON): no
//! whitespace, object keys sorted bytewise, strings escaping only `"` and `\`, integers only.
//! Signatures cover these bytes of the parsed `signed` object, never the received text.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("number {0} is not an integer; canonical json allows integers only")]
    NotInteger(String),
}

/// The canonical bytes of `value`.
pub fn canonical_json(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write(value, &mut out)?;
    Ok(out)
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            // Bytewise order of the UTF-8 keys (what Go's sort of strings does).
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    if let Some(i) = n.as_i64() {
        out.extend_from_slice(i.to_string().as_bytes());
    } else if let Some(u) = n.as_u64() {
        out.extend_from_slice(u.to_string().as_bytes());
    } else {
        // Notary verifies over float64-decoded numbers: integral floats print as integers.
        let f = n.as_f64().unwrap_or(f64::NAN);
        let in_range = f.is_finite() && f.abs() < 9.2e18;
        if !in_range || f.fract() != 0.0 {
            return Err(CanonicalError::NotInteger(n.to_string()));
        }
        #[allow(
            clippy::cast_possible_truncation,
            reason = "integral and in range, checked above"
        )]
        let i = f as i64;
        out.extend_from_slice(i.to_string().as_bytes());
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_bytewise_and_drops_whitespace() {
        let v = json!({"b": 1, "_type": "Root", "a": [true, null, {"z": 0, "Z": -2}]});
        let out = canonical_json(&v).unwrap();
        assert_eq!(
            out,
            br#"{"_type":"Root","a":[true,null,{"Z":-2,"z":0}],"b":1}"#
        );
    }

    #[test]
    fn escapes_only_quote_and_backslash() {
        let v = json!("a\"b\\c\n<>&\u{e9}\u{1}");
        let out = canonical_json(&v).unwrap();
        assert_eq!(out, "\"a\\\"b\\\\c\n<>&\u{e9}\u{1}\"".as_bytes());
    }

    #[test]
    fn integers_only() {
        assert_eq!(canonical_json(&json!(2.0)).unwrap(), b"2");
        assert_eq!(
            canonical_json(&json!(u64::MAX)).unwrap(),
            u64::MAX.to_string().as_bytes()
        );
        assert!(matches!(
            canonical_json(&json!(1.5)),
            Err(CanonicalError::NotInteger(_))
        ));
        assert!(matches!(
            canonical_json(&json!([1e300])),
            Err(CanonicalError::NotInteger(_))
        ));
    }
}
