//! The rules a stored value follows: kept as sent, less the whitespace outside its strings (its
//! compact JSON encoding, whose length is its size), at most [`MAX_VALUE_DEPTH`] levels deep
//! and at most [`MAX_VALUE_BYTES`] long.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::store;

/// Largest stored value: the byte length of its compact JSON encoding.
pub const MAX_VALUE_BYTES: usize = 65_536;
/// Deepest nesting of arrays and objects a stored value may have. A get reply wraps the value in
/// two more levels (`{"data":{"value":…}}`), and common JSON parsers (serde_json among them)
/// refuse documents nested past 127: deeper values could be stored but not read back.
pub(crate) const MAX_VALUE_DEPTH: usize = 125;

/// Why a value is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Nested deeper than [`MAX_VALUE_DEPTH`].
    TooDeep { depth: usize },
    /// Its compact encoding is longer than [`MAX_VALUE_BYTES`].
    TooLarge { size: usize },
}

/// The value as it is stored: compacted, within its limits.
pub(crate) fn admit(value: Box<RawValue>) -> Result<store::Value, Refused> {
    let json = value.get();
    let scan = Scan::of(json.as_bytes());
    // Fewer brackets than the limit cannot nest past it: most values skip the walk.
    if scan.brackets > MAX_VALUE_DEPTH {
        let depth = nesting(json.as_bytes());
        if depth > MAX_VALUE_DEPTH {
            return Err(Refused::TooDeep { depth });
        }
    }
    let value: store::Value = match scan.blanks.then(|| compact(json)) {
        Some(Cow::Owned(text)) => {
            Arc::from(RawValue::from_string(text).expect("JSON minus whitespace is JSON"))
        }
        None | Some(Cow::Borrowed(_)) => Arc::from(value),
    };
    match value.get().len() {
        size if size > MAX_VALUE_BYTES => Err(Refused::TooLarge { size }),
        _ => Ok(value),
    }
}

/// What one pass over a value's bytes tells, written so the compiler vectorizes it: every set
/// scans its whole value, and a byte-at-a-time scan costs ~10 instructions per byte.
struct Scan {
    /// `[` and `{` bytes, strings included: a bound on the depth.
    brackets: usize,
    /// Any byte `<= b' '`. Valid JSON has no raw control characters, so without one there is no
    /// whitespace to drop.
    blanks: bool,
}

/// Bytes counted per chunk by [`Scan::of`]'s byte-wide counters: fewer than 256, so a counter
/// cannot overflow.
const SCAN_CHUNK: usize = 128;

impl Scan {
    fn of(bytes: &[u8]) -> Scan {
        // Byte-wide counters per chunk: what lets the loop run 32 bytes to an instruction.
        let mut brackets = 0;
        let mut blanks = 0;
        for chunk in bytes.chunks(SCAN_CHUNK) {
            let (mut opened, mut low) = (0_u8, 0_u8);
            for &byte in chunk {
                opened += u8::from(byte == b'[' || byte == b'{');
                low |= u8::from(byte <= b' ');
            }
            brackets += usize::from(opened);
            blanks |= low;
        }
        Scan {
            brackets,
            blanks: blanks != 0,
        }
    }
}

/// How deeply arrays and objects nest in valid JSON (`0` for a scalar).
fn nesting(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0_usize, 0_usize);
    let mut strings = Strings::default();
    for &byte in bytes {
        if !strings.outside(byte) {
            continue;
        }
        match byte {
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

/// Follows valid JSON byte by byte and tells which bytes lie outside every string (a string's
/// quotes count as inside): what [`nesting`] and [`compact`] may treat as structure.
#[derive(Default)]
struct Strings {
    inside: bool,
    escaped: bool,
}

impl Strings {
    fn outside(&mut self, byte: u8) -> bool {
        if self.inside {
            match (self.escaped, byte) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.inside = false,
                _ => {}
            }
            false
        } else if byte == b'"' {
            self.inside = true;
            false
        } else {
            true
        }
    }
}

/// `json` without insignificant whitespace; borrowed when it has none. The input is valid JSON
/// (a `RawValue`), so outside strings every byte is structural, a literal or whitespace, and
/// dropping the whitespace keeps numbers and strings exactly as sent.
fn compact(json: &str) -> Cow<'_, str> {
    let is_space = |byte: &u8| matches!(byte, b' ' | b'\n' | b'\r' | b'\t');
    let bytes = json.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut strings = Strings::default();
    for &byte in bytes {
        if strings.outside(byte) && is_space(&byte) {
            continue;
        }
        out.push(byte);
    }
    if out.len() == bytes.len() {
        // The whitespace was all inside strings.
        return Cow::Borrowed(json);
    }
    // Only ASCII whitespace was removed, so the bytes are still UTF-8.
    Cow::Owned(String::from_utf8(out).expect("compacted JSON is UTF-8"))
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use serde_json::value::RawValue;

    use super::{MAX_VALUE_BYTES, MAX_VALUE_DEPTH, Refused, admit, compact, nesting};

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn nesting_counts_brackets_outside_strings_only() {
        assert_eq!(nesting(b"1"), 0);
        assert_eq!(nesting(br#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(nesting(br#"["[[[{{{", "\"]]]"]"#), 1);
    }

    #[test]
    fn admit_refuses_past_the_depth_limit_only() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(admit(raw(&deep(MAX_VALUE_DEPTH))).is_ok());
        assert_eq!(
            admit(raw(&deep(MAX_VALUE_DEPTH + 1))).unwrap_err(),
            Refused::TooDeep {
                depth: MAX_VALUE_DEPTH + 1
            }
        );
        // Many brackets, little depth; brackets inside strings are not structure.
        let wide = format!("[{}]", vec!["[]"; 1000].join(","));
        assert!(admit(raw(&wide)).is_ok());
        let quoted = format!("\"{}\"", "[".repeat(500));
        assert!(admit(raw(&quoted)).is_ok());
    }

    #[test]
    fn admit_measures_the_compacted_value() {
        let padded = format!("[ \"{}\" ]", "x".repeat(MAX_VALUE_BYTES - 4));
        let admitted = admit(raw(&padded)).expect("fits once compacted");
        assert_eq!(admitted.get().len(), MAX_VALUE_BYTES);
        let over = format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES - 1));
        assert_eq!(
            admit(raw(&over)).unwrap_err(),
            Refused::TooLarge {
                size: MAX_VALUE_BYTES + 1
            }
        );
        assert_eq!(
            admit(raw("{ \"a b\" :\n[1, 2.50] }")).unwrap().get(),
            r#"{"a b":[1,2.50]}"#
        );
    }

    #[test]
    fn compact_borrows_when_only_strings_hold_spaces() {
        assert!(matches!(compact(r#"{"a":"b c"}"#), Cow::Borrowed(_)));
    }

    #[test]
    fn compact_drops_whitespace_outside_strings_only() {
        assert_eq!(
            compact(" { \"a b\" : [ 1 ,\n\t2.50 ] } "),
            r#"{"a b":[1,2.50]}"#
        );
        assert_eq!(
            compact(r#"[ "x \" y" , "\\" , " " ]"#),
            r#"["x \" y","\\"," "]"#
        );
        assert_eq!(compact(" null "), "null");
        assert_eq!(compact("\"é  ü\""), "\"é  ü\"");
    }

    #[test]
    fn compact_length_matches_serde_json_for_plain_values() {
        let value = serde_json::json!({"k": ["x", 1, null, true, {"n": 1.5}]});
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        assert_eq!(compact(&pretty), serde_json::to_string(&value).unwrap());
    }
}
