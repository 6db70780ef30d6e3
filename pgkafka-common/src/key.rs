//! The Kafka message key of a row change.
//!
//! The key is the JSON array of the partition-key column values, in the order the topic map lists
//! the columns, each value as PostgreSQL's text output (`null` for SQL `NULL`):
//!
//! | partition key | row values | Kafka key |
//! |---|---|---|
//! | `["organization_id"]` | `42` | `["42"]` |
//! | `["a", "b"]` | `ab`, `c` | `["ab","c"]` |
//! | `["a", "b"]` | `a`, `bc` | `["a","bc"]` |
//!
//! JSON quoting makes the encoding unambiguous (distinct value lists never give the same key),
//! readable in any Kafka tool, and easy to build in other languages. Kafka's default partitioner
//! hashes these bytes, so every change of one key goes to one partition, in order.

/// Encodes partition-key values as the Kafka message key.
///
/// ```
/// use pgkafka_common::key::encode_key;
///
/// assert_eq!(encode_key([Some("ab"), Some("c")]), br#"["ab","c"]"#);
/// assert_ne!(encode_key([Some("ab"), Some("c")]), encode_key([Some("a"), Some("bc")]));
/// assert_eq!(encode_key([None, Some("x\"y")]), br#"[null,"x\"y"]"#);
/// ```
pub fn encode_key<'a, I>(values: I) -> Vec<u8>
where
    I: IntoIterator<Item = Option<&'a str>>,
{
    let mut out = Vec::with_capacity(32);
    encode_key_into(values, &mut out);
    out
}

/// Like [`encode_key`], appending to a reused buffer.
pub fn encode_key_into<'a, I>(values: I, out: &mut Vec<u8>)
where
    I: IntoIterator<Item = Option<&'a str>>,
{
    out.push(b'[');
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing a str or unit into a Vec cannot fail.
        let _ = match value {
            Some(text) => serde_json::to_writer(&mut *out, text),
            None => serde_json::to_writer(&mut *out, &()),
        };
    }
    out.push(b']');
}

/// Decodes a key made by [`encode_key`] back into its values.
///
/// # Errors
/// When the bytes are not a JSON array of strings and nulls.
pub fn decode_key(bytes: &[u8]) -> Result<Vec<Option<String>>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decodes_to_what_was_encoded(values: Vec<Option<String>>) {
            let key = encode_key(values.iter().map(Option::as_deref));
            prop_assert_eq!(decode_key(&key).unwrap(), values);
        }

        #[test]
        fn distinct_values_give_distinct_keys(a: Vec<Option<String>>, b: Vec<Option<String>>) {
            prop_assume!(a != b);
            prop_assert_ne!(encode_key(a.iter().map(Option::as_deref)), encode_key(b.iter().map(Option::as_deref)));
        }
    }

    #[test]
    fn concatenation_does_not_collide() {
        assert_ne!(encode_key([Some("ab"), Some("c")]), encode_key([Some("a"), Some("bc")]));
        assert_ne!(encode_key([Some("a,b")]), encode_key([Some("a"), Some("b")]));
        assert_ne!(encode_key([None]), encode_key([Some("null")]));
        assert_ne!(encode_key([Some("")]), encode_key(std::iter::empty()));
    }
}
