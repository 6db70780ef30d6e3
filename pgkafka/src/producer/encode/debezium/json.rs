//! The few JSON writing primitives the Debezium format needs, writing straight into the
//! record's buffer: strings escaped as `serde_json` escapes them, bytes as base64 strings
//! (what Kafka Connect's `JsonConverter` writes for `bytes`).

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Appends `text` as a JSON string.
pub(crate) fn push_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let mut start = 0;
    for (index, byte) in text.bytes().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(text.as_bytes().get(start..index).unwrap_or_default());
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{byte:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        start = index + 1;
    }
    out.extend_from_slice(text.as_bytes().get(start..).unwrap_or_default());
    out.push(b'"');
}

/// Appends `bytes` as a JSON string of their standard, padded base64.
pub(crate) fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    for chunk in bytes.chunks(3) {
        let b = [chunk.first().copied(), chunk.get(1).copied(), chunk.get(2).copied()];
        let n = (u32::from(b[0].unwrap_or(0)) << 16) | (u32::from(b[1].unwrap_or(0)) << 8) | u32::from(b[2].unwrap_or(0));
        let sextet = |shift: u32| BASE64.get(((n >> shift) & 63) as usize).copied().unwrap_or(b'=');
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if b[1].is_some() { sextet(6) } else { b'=' });
        out.push(if b[2].is_some() { sextet(0) } else { b'=' });
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    proptest::proptest! {
        /// Escaping is byte-for-byte serde_json's.
        #[test]
        fn strings_escape_as_serde_json_does(text in ".*") {
            let mut out = Vec::new();
            push_str(&mut out, &text);
            proptest::prop_assert_eq!(out, serde_json::to_vec(&text).unwrap());
        }
    }

    #[test]
    fn base64_is_standard_and_padded() {
        for (bytes, expected) in [(&b""[..], ""), (b"f", "Zg=="), (b"fo", "Zm8="), (b"foo", "Zm9v"), (b"foob", "Zm9vYg==")] {
            let mut out = Vec::new();
            push_base64(&mut out, bytes);
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"{expected}\""));
        }
    }
}
