//! Decoding of PostgreSQL `pgoutput` logical replication messages (protocol version 1).
//!
//! Each `XLogData` payload of a logical replication stream started with `pgoutput` carries one
//! message, described in PostgreSQL's "Logical Replication Message Formats". [`decode`] turns
//! the bytes into a [`Message`]; it never panics, whatever the bytes, and says at which byte
//! offset a malformed message went wrong.
//!
//! ```
//! use pgkafka_common::pgoutput::{decode, Message, TupleValue};
//!
//! // An Insert into relation 16384 of one text column holding "hi".
//! let bytes = b"I\x00\x00\x40\x00N\x00\x01t\x00\x00\x00\x02hi";
//! match decode(bytes)? {
//!     Message::Insert { relation_id, new } => {
//!         assert_eq!(relation_id, 16384);
//!         assert_eq!(new, vec![TupleValue::Text("hi".into())]);
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), pgkafka_common::pgoutput::PgOutputError>(())
//! ```

use crate::Lsn;

/// A decoded `pgoutput` message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// A transaction starts.
    Begin {
        /// The LSN of the transaction's commit record.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// A transaction ends.
    Commit {
        /// Flags (currently unused by PostgreSQL).
        flags: u8,
        /// The LSN of the commit record.
        commit_lsn: Lsn,
        /// The end LSN of the transaction: where the next one starts.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
    },
    /// The transaction came from another replication origin.
    Origin {
        /// Commit LSN on the origin server.
        lsn: Lsn,
        /// Origin name.
        name: String,
    },
    /// The shape of a table, sent before the first change of it in a session and after every
    /// change to its schema.
    Relation(Relation),
    /// A data type's name.
    Type {
        /// Type OID.
        type_id: u32,
        /// Namespace of the type.
        namespace: String,
        /// Name of the type.
        name: String,
    },
    /// A new row.
    Insert {
        /// Relation id, as in [`Relation::id`].
        relation_id: u32,
        /// The row.
        new: Vec<TupleValue>,
    },
    /// A changed row.
    Update {
        /// Relation id.
        relation_id: u32,
        /// The old row (whole with `REPLICA IDENTITY FULL`, key columns only with a key
        /// identity), when the server sent it.
        old: Option<(OldTupleKind, Vec<TupleValue>)>,
        /// The new row. Unchanged TOASTed values are [`TupleValue::UnchangedToast`].
        new: Vec<TupleValue>,
    },
    /// A deleted row.
    Delete {
        /// Relation id.
        relation_id: u32,
        /// Which old values were sent.
        kind: OldTupleKind,
        /// The old row's values.
        old: Vec<TupleValue>,
    },
    /// Tables were truncated.
    Truncate {
        /// Bit 1: `CASCADE`, bit 2: `RESTART IDENTITY`.
        options: u8,
        /// The truncated relations.
        relation_ids: Vec<u32>,
    },
    /// A message emitted with `pg_logical_emit_message`.
    LogicalMessage {
        /// Whether the message is part of a transaction.
        transactional: bool,
        /// LSN of the message.
        lsn: Lsn,
        /// Its prefix.
        prefix: String,
        /// Its content.
        content: Vec<u8>,
    },
}

/// Which values of the old row an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldTupleKind {
    /// `K`: the replica identity key columns only.
    Key,
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full,
}

/// One column value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// SQL `NULL`.
    Null,
    /// A TOASTed value that did not change; the server did not send it.
    UnchangedToast,
    /// The value in PostgreSQL's text output format.
    Text(String),
    /// The value in binary format (only when the stream was started with `binary 'true'`).
    Binary(Vec<u8>),
}

/// A table's shape, from a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation's OID; changes refer to it.
    pub id: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// The published columns, in order.
    pub columns: Vec<Column>,
}

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Bit 1: part of the replica identity key.
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// Data type OID.
    pub type_id: u32,
    /// Type modifier (`atttypmod`).
    pub type_modifier: i32,
}

/// A malformed `pgoutput` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput {message_type} message at byte {offset}: {reason}")]
pub struct PgOutputError {
    /// The message type, as its tag character (or `empty`).
    pub message_type: String,
    /// Byte offset into the message where decoding failed.
    pub offset: usize,
    /// What was wrong.
    pub reason: String,
}

/// Decodes one `pgoutput` message.
///
/// # Errors
/// When the bytes are not a well-formed protocol-version-1 message: truncated, an unknown tag,
/// text that is not UTF-8, or trailing bytes.
pub fn decode(bytes: &[u8]) -> Result<Message, PgOutputError> {
    let mut r = Reader { bytes, pos: 0, tag: bytes.first().copied() };
    let tag = r.u8()?;
    let message = match tag {
        b'B' => Message::Begin { final_lsn: Lsn(r.u64()?), commit_time: r.i64()?, xid: r.u32()? },
        b'C' => Message::Commit {
            flags: r.u8()?,
            commit_lsn: Lsn(r.u64()?),
            end_lsn: Lsn(r.u64()?),
            commit_time: r.i64()?,
        },
        b'O' => Message::Origin { lsn: Lsn(r.u64()?), name: r.cstring()? },
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstring()?;
            let name = r.cstring()?;
            let replica_identity = r.u8()?;
            let count = r.i16()?;
            let count = usize::try_from(count).map_err(|_| r.err(format!("negative column count {count}")))?;
            let mut columns = Vec::with_capacity(count.min(1600));
            for _ in 0..count {
                columns.push(Column {
                    flags: r.u8()?,
                    name: r.cstring()?,
                    type_id: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(Relation { id, namespace, name, replica_identity, columns })
        }
        b'Y' => Message::Type { type_id: r.u32()?, namespace: r.cstring()?, name: r.cstring()? },
        b'I' => {
            let relation_id = r.u32()?;
            r.expect_tag(b'N')?;
            Message::Insert { relation_id, new: r.tuple()? }
        }
        b'U' => {
            let relation_id = r.u32()?;
            let old = match r.u8()? {
                b'N' => None,
                kind @ (b'K' | b'O') => {
                    let old = (old_kind(kind), r.tuple()?);
                    r.expect_tag(b'N')?;
                    Some(old)
                }
                other => return Err(r.err(format!("expected 'K', 'O' or 'N', found {}", show(other)))),
            };
            Message::Update { relation_id, old, new: r.tuple()? }
        }
        b'D' => {
            let relation_id = r.u32()?;
            let kind = match r.u8()? {
                kind @ (b'K' | b'O') => old_kind(kind),
                other => return Err(r.err(format!("expected 'K' or 'O', found {}", show(other)))),
            };
            Message::Delete { relation_id, kind, old: r.tuple()? }
        }
        b'T' => {
            let count = r.u32()?;
            let options = r.u8()?;
            let mut relation_ids = Vec::with_capacity((count as usize).min(r.remaining() / 4));
            for _ in 0..count {
                relation_ids.push(r.u32()?);
            }
            Message::Truncate { options, relation_ids }
        }
        b'M' => {
            let flags = r.u8()?;
            let lsn = Lsn(r.u64()?);
            let prefix = r.cstring()?;
            let len = r.u32()? as usize;
            let content = r.take(len)?.to_vec();
            Message::LogicalMessage { transactional: flags & 1 == 1, lsn, prefix, content }
        }
        other => return Err(r.err(format!("unknown message type {}", show(other)))),
    };
    if r.remaining() != 0 {
        return Err(r.err(format!("{} unexpected trailing bytes", r.remaining())));
    }
    Ok(message)
}

fn old_kind(tag: u8) -> OldTupleKind {
    if tag == b'K' {
        OldTupleKind::Key
    } else {
        OldTupleKind::Full
    }
}

fn show(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("'{}'", byte as char)
    } else {
        format!("0x{byte:02x}")
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    tag: Option<u8>,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> PgOutputError {
        PgOutputError {
            message_type: self.tag.map_or_else(|| "empty".to_owned(), show),
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PgOutputError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(|| {
            self.err(format!("needs {n} more bytes, only {} left", self.remaining()))
        })?;
        let slice = self.bytes.get(self.pos..end).ok_or_else(|| self.err("out of bounds"))?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PgOutputError> {
        let slice = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, PgOutputError> {
        Ok(self.array::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16, PgOutputError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, PgOutputError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, PgOutputError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, PgOutputError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, PgOutputError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn expect_tag(&mut self, tag: u8) -> Result<(), PgOutputError> {
        let found = self.u8()?;
        if found == tag {
            Ok(())
        } else {
            Err(self.err(format!("expected {}, found {}", show(tag), show(found))))
        }
    }

    /// `bytes` as a `String`; `what` names them in the error (a closure, so that the name is only
    /// formatted when it is needed: this runs for every value of every row).
    fn utf8<W: std::fmt::Display>(&self, bytes: &[u8], what: impl FnOnce() -> W) -> Result<String, PgOutputError> {
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            self.err(format!("{} is not UTF-8 (invalid byte at {}); pgkafka needs a UTF8 database", what(), e.utf8_error().valid_up_to()))
        })
    }

    fn cstring(&mut self) -> Result<String, PgOutputError> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let len = rest.iter().position(|&b| b == 0).ok_or_else(|| self.err("unterminated string"))?;
        let text = self.take(len)?;
        self.pos += 1; // the terminating NUL, found above
        self.utf8(text, || "a name")
    }

    fn tuple(&mut self) -> Result<Vec<TupleValue>, PgOutputError> {
        let count = self.i16()?;
        let count = usize::try_from(count).map_err(|_| self.err(format!("negative column count {count}")))?;
        let mut values = Vec::with_capacity(count.min(1600));
        for column in 0..count {
            let value = match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let len = self.i32()?;
                    let len = usize::try_from(len)
                        .map_err(|_| self.err(format!("column {column}: negative length {len}")))?;
                    let data = self.take(len)?;
                    if kind == b't' {
                        TupleValue::Text(self.utf8(data, || format!("the value of column {column}"))?)
                    } else {
                        TupleValue::Binary(data.to_vec())
                    }
                }
                other => {
                    return Err(self.err(format!("column {column}: unknown value kind {}", show(other))))
                }
            };
            values.push(value);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut out = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => out.push(b'n'),
                Some("\u{0}toast") => out.push(b'u'),
                Some(text) => {
                    out.push(b't');
                    out.extend((text.len() as i32).to_be_bytes());
                    out.extend(text.as_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn begin_and_commit() {
        let mut b = vec![b'B'];
        b.extend(0x16_B374_D848u64.to_be_bytes());
        b.extend(5i64.to_be_bytes());
        b.extend(77u32.to_be_bytes());
        assert_eq!(decode(&b).unwrap(), Message::Begin { final_lsn: Lsn(0x16_B374_D848), commit_time: 5, xid: 77 });

        let mut c = vec![b'C', 0];
        c.extend(10u64.to_be_bytes());
        c.extend(20u64.to_be_bytes());
        c.extend(30i64.to_be_bytes());
        assert_eq!(
            decode(&c).unwrap(),
            Message::Commit { flags: 0, commit_lsn: Lsn(10), end_lsn: Lsn(20), commit_time: 30 }
        );
    }

    #[test]
    fn relation() {
        let mut r = vec![b'R'];
        r.extend(16384u32.to_be_bytes());
        r.extend(b"public\0Inventory\0f");
        r.extend(2i16.to_be_bytes());
        r.push(1);
        r.extend(b"id\0");
        r.extend(23u32.to_be_bytes());
        r.extend((-1i32).to_be_bytes());
        r.push(0);
        r.extend("näme\0".as_bytes());
        r.extend(25u32.to_be_bytes());
        r.extend((-1i32).to_be_bytes());
        let Message::Relation(rel) = decode(&r).unwrap() else { panic!("not a relation") };
        assert_eq!(rel.name, "Inventory");
        assert_eq!(rel.replica_identity, b'f');
        assert_eq!(rel.columns.len(), 2);
        assert_eq!(rel.columns[1].name, "näme");
        assert_eq!(rel.columns[0].type_id, 23);
    }

    #[test]
    fn update_with_full_old_row_and_unchanged_toast() {
        let mut u = vec![b'U'];
        u.extend(7u32.to_be_bytes());
        u.push(b'O');
        u.extend(tuple(&[Some("1"), Some("big"), None]));
        u.push(b'N');
        u.extend(tuple(&[Some("1"), Some("\u{0}toast"), Some("x")]));
        assert_eq!(
            decode(&u).unwrap(),
            Message::Update {
                relation_id: 7,
                old: Some((
                    OldTupleKind::Full,
                    vec![TupleValue::Text("1".into()), TupleValue::Text("big".into()), TupleValue::Null]
                )),
                new: vec![TupleValue::Text("1".into()), TupleValue::UnchangedToast, TupleValue::Text("x".into())],
            }
        );
    }

    #[test]
    fn update_without_old_row_and_delete() {
        let mut u = vec![b'U'];
        u.extend(7u32.to_be_bytes());
        u.push(b'N');
        u.extend(tuple(&[Some("")]));
        assert!(matches!(decode(&u).unwrap(), Message::Update { old: None, .. }));

        let mut d = vec![b'D'];
        d.extend(7u32.to_be_bytes());
        d.push(b'K');
        d.extend(tuple(&[Some("9")]));
        assert_eq!(
            decode(&d).unwrap(),
            Message::Delete { relation_id: 7, kind: OldTupleKind::Key, old: vec![TupleValue::Text("9".into())] }
        );
    }

    #[test]
    fn truncate_and_logical_message() {
        let mut t = vec![b'T'];
        t.extend(2u32.to_be_bytes());
        t.push(1);
        t.extend(5u32.to_be_bytes());
        t.extend(6u32.to_be_bytes());
        assert_eq!(decode(&t).unwrap(), Message::Truncate { options: 1, relation_ids: vec![5, 6] });

        let mut m = vec![b'M', 1];
        m.extend(3u64.to_be_bytes());
        m.extend(b"app\0");
        m.extend(2u32.to_be_bytes());
        m.extend(b"hi");
        assert_eq!(
            decode(&m).unwrap(),
            Message::LogicalMessage { transactional: true, lsn: Lsn(3), prefix: "app".into(), content: b"hi".to_vec() }
        );
    }

    #[test]
    fn errors_say_where() {
        let err = decode(b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x09abc").unwrap_err();
        assert_eq!(err.message_type, "'I'");
        assert_eq!(err.offset, 13);
        assert!(err.reason.contains("needs 9 more bytes"), "{err}");
        assert!(decode(b"").unwrap_err().to_string().contains("empty"));
        assert!(decode(b"Z").unwrap_err().reason.contains("unknown message type 'Z'"));
        assert!(decode(b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x01\xff").unwrap_err().reason.contains("UTF-8"));
        assert!(decode(b"I\x00\x00\x00\x01N\x00\x00X").unwrap_err().reason.contains("trailing"));
        assert!(decode(b"I\x00\x00\x00\x01N\xff\xff").unwrap_err().reason.contains("negative"));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn never_panics_on_mutated_valid_messages(
            values in proptest::collection::vec(proptest::option::of(".{0,20}"), 0..6),
            flip in any::<(usize, u8)>(),
            cut in any::<usize>(),
        ) {
            let mut bytes = vec![b'I', 0, 0, 0, 1, b'N'];
            let refs: Vec<Option<&str>> = values.iter().map(|v| v.as_deref().filter(|s| !s.starts_with('\u{0}'))).collect();
            bytes.extend(tuple(&refs));
            let decoded = decode(&bytes).unwrap();
            let expected: Vec<TupleValue> = refs.iter().map(|v| v.map_or(TupleValue::Null, |s| TupleValue::Text(s.into()))).collect();
            prop_assert_eq!(decoded, Message::Insert { relation_id: 1, new: expected });
            let i = flip.0 % bytes.len();
            bytes[i] ^= flip.1;
            let _ = decode(&bytes);
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = decode(&bytes);
        }
    }
}
