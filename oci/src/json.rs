//! JSON nesting depth, checked before parsing: manifests and the admin API's bodies are
//! a few levels deep, and a document nested thousands of levels (well within the size
//! limits) only costs the parser stack and time.

/// Deepest nesting of arrays and objects accepted in manifests and API bodies (OCI
/// manifests and indexes are about 4 levels deep).
pub const MAX_DEPTH: usize = 32;

/// Whether `bytes` nest arrays/objects deeper than `max` (brackets inside strings do
/// not count). Malformed JSON is left to the parser.
pub fn nested_deeper_than(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert!(!nested_deeper_than(br#"{"a":[{"b":1}]}"#, 3));
        assert!(nested_deeper_than(br#"{"a":[{"b":[1]}]}"#, 3));
        assert!(!nested_deeper_than(br#"{"a":"[[[[[[\"[[[["}"#, 1));
        let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert!(nested_deeper_than(deep.as_bytes(), MAX_DEPTH));
        assert!(!nested_deeper_than(
            &deep.as_bytes()[1..deep.len() - 1],
            MAX_DEPTH
        ));
    }
}
