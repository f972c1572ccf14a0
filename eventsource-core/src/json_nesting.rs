//! How deeply a JSON document nests, measured without recursion, and parsing stored JSON of any
//! depth a reader can safely hold.
//!
//! serde_json refuses to parse documents nested more than 128 levels deep, and code that walks a
//! [`serde_json::Value`] recursively (cloning, printing, dropping it) overflows an ordinary
//! thread's stack a few thousand levels down. So the stores refuse, at append, payloads nested
//! deeper than [`Limits::max_json_depth`](crate::Limits::max_json_depth), and their readers
//! still read rows stored before that limit existed, up to [`MAX_READ_DEPTH`] levels.

use serde::Deserialize;

/// The deepest nesting a reader accepts in a stored document. Values this deep are still
/// cloned, printed and dropped safely on a thread with the default 2 MiB stack; an append
/// limit ([`Limits::max_json_depth`](crate::Limits::max_json_depth)) above it is lowered to it.
pub const MAX_READ_DEPTH: usize = 1_000;

/// What a walk over a [`serde_json::Value`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueShape {
    /// Levels of arrays and objects (a scalar is 0, `[]` is 1, `[[1]]` is 2). The walk stops
    /// counting once it has gone past `stop_past` levels.
    pub depth: usize,
    /// Whether a string or key holds U+0000 (PostgreSQL `jsonb` cannot store it).
    pub has_nul: bool,
}

/// Measures `value`'s nesting depth and looks for U+0000, without recursion, so a hostile
/// document of any depth cannot overflow the stack. Stops descending past `stop_past` levels
/// (the depth then reads `stop_past + 1`): a caller that refuses deeper documents needs no more.
pub fn inspect(value: &serde_json::Value, stop_past: usize) -> ValueShape {
    use serde_json::Value;
    let mut shape = ValueShape {
        depth: 0,
        has_nul: false,
    };
    // Containers still to visit, with the depth of their contents.
    let mut pending: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, level)) = pending.pop() {
        match value {
            Value::String(s) => shape.has_nul |= s.contains('\0'),
            Value::Array(items) => {
                shape.depth = shape.depth.max(level + 1);
                if level < stop_past {
                    pending.extend(items.iter().map(|item| (item, level + 1)));
                }
            }
            Value::Object(map) => {
                shape.depth = shape.depth.max(level + 1);
                shape.has_nul |= map.keys().any(|k| k.contains('\0'));
                if level < stop_past {
                    pending.extend(map.values().map(|item| (item, level + 1)));
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    shape
}

/// The nesting depth of a JSON text, found by scanning its bytes (strings and their escapes
/// are skipped): no parse, no recursion. Meaningful for well-formed JSON.
pub fn text_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Why stored JSON could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoredJsonError {
    /// The text is not JSON, or not what the caller's type expects.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The document nests deeper than a reader can hold safely.
    #[error("the document nests {depth} levels deep; readers accept at most {MAX_READ_DEPTH}")]
    TooDeep {
        /// Its depth.
        depth: usize,
    },
}

/// Parses stored JSON text into `T`. Documents within serde_json's own depth limit take the
/// ordinary path; deeper ones (stored before the append limit existed) are parsed with that
/// limit lifted, up to [`MAX_READ_DEPTH`] levels, and refused beyond it.
pub fn parse_stored<T: for<'de> Deserialize<'de>>(json: &[u8]) -> Result<T, StoredJsonError> {
    match serde_json::from_slice(json) {
        Ok(value) => Ok(value),
        Err(error) => {
            // serde_json stops at 128 levels; anything deeper than that may be our case.
            let depth = text_depth(json);
            if depth <= 127 {
                return Err(error.into());
            }
            if depth > MAX_READ_DEPTH {
                return Err(StoredJsonError::TooDeep { depth });
            }
            let mut deserializer = serde_json::Deserializer::from_slice(json);
            deserializer.disable_recursion_limit();
            let value = T::deserialize(&mut deserializer)?;
            deserializer.end()?;
            Ok(value)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn nested(depth: usize) -> String {
        "[".repeat(depth) + &"]".repeat(depth)
    }

    #[test]
    fn measures_depth_without_recursion() {
        assert_eq!(inspect(&json!(1), 10).depth, 0);
        assert_eq!(inspect(&json!([]), 10).depth, 1);
        assert_eq!(inspect(&json!({"a": [1, {"b": []}]}), 10).depth, 4);
        assert_eq!(inspect(&json!({"a": [[[1]]]}), 2).depth, 3);
        assert!(inspect(&json!({"a": ["x\u{0}"]}), 10).has_nul);
        assert!(inspect(&json!({"a\u{0}": 1}), 10).has_nul);
        assert!(!inspect(&json!({"a": ["x"]}), 10).has_nul);
        assert_eq!(text_depth(br#"{"a":"[[[\"]]","b":[{}]}"#), 3);
        assert_eq!(text_depth(b"[[],[],{}]"), 2, "closing brackets count down");
        assert_eq!(inspect(&json!({}), 10).depth, 1);
        assert_eq!(inspect(&json!({"a": {"b": {"c": 1}}}), 1).depth, 2);
        assert_eq!(inspect(&json!([[[1]]]), 1).depth, 2);
        assert_eq!(text_depth(nested(5000).as_bytes()), 5000);
    }

    #[test]
    fn reads_documents_deeper_than_serde_json_allows() {
        let deep = nested(200);
        assert!(serde_json::from_str::<Value>(&deep).is_err());
        let value: Result<Value, _> = parse_stored(deep.as_bytes());
        assert!(
            matches!(&value, Ok(value) if inspect(value, usize::MAX).depth == 200),
            "200 levels read back"
        );
        assert!(parse_stored::<Value>(nested(MAX_READ_DEPTH).as_bytes()).is_ok());
        assert!(matches!(
            parse_stored::<Value>(nested(MAX_READ_DEPTH + 1).as_bytes()),
            Err(StoredJsonError::TooDeep { .. })
        ));
        assert!(matches!(
            parse_stored::<Value>(b"[1,"),
            Err(StoredJsonError::Json(_))
        ));
        assert!(matches!(
            parse_stored::<Value>(format!("{} x", nested(300)).as_bytes()),
            Err(StoredJsonError::Json(_))
        ));
    }
}
