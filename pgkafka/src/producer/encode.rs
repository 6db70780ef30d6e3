//! Turns pgoutput messages into Kafka records: keeps each relation's columns and route, fills
//! unchanged TOAST values from the old row, builds the partition key and writes the value in
//! the record format ([`JsonValue`], the [`ReplicationOp`](pgkafka_common::ReplicationOp) JSON).
//! Pure: bytes in, records out, no I/O.
//!
//! Another output format is another [`ValueFormat`], not a branch in the session.

use std::collections::HashMap;
use std::sync::Arc;

use pgkafka_common::ident::{qualified, quote_ident, table_name};
use pgkafka_common::key::encode_key_into;
use pgkafka_common::pgoutput::{self, Message, OldTupleKind, TupleValue};
use pgkafka_common::Lsn;
use serde::Serialize;

use super::routes::{Routes, TableRoute};
use super::ProducerError;

/// Microseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// One row change, borrowing its rows. Serializes as the `op` field of the wire format.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) enum Change<'a> {
    Insert(&'a [Option<String>]),
    Update(&'a [Option<String>], &'a [Option<String>]),
    Delete(&'a [Option<String>]),
}

impl<'a> Change<'a> {
    /// The row the partition key is taken from: the new row, or the old one of a delete.
    fn key_row(self) -> &'a [Option<String>] {
        match self {
            Self::Insert(new) | Self::Update(_, new) => new,
            Self::Delete(old) => old,
        }
    }
}

/// A row change with its place in the WAL: what a [`ValueFormat`] writes.
/// Serializes exactly as [`ReplicationOp`](pgkafka_common::ReplicationOp).
#[derive(Debug, Serialize)]
pub(crate) struct RowOp<'a> {
    pub(crate) table_name: &'a str,
    pub(crate) col_names: &'a [String],
    pub(crate) lsn: u64,
    pub(crate) seq_id: u64,
    pub(crate) op: Change<'a>,
}

/// How a record's value is written.
pub(crate) trait ValueFormat {
    /// Appends `op`'s value to `out` (which is empty).
    fn write_value(&self, op: &RowOp<'_>, out: &mut Vec<u8>) -> Result<(), String>;
}

/// The JSON [`ReplicationOp`](pgkafka_common::ReplicationOp) consumers read.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonValue;

impl ValueFormat for JsonValue {
    fn write_value(&self, op: &RowOp<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        serde_json::to_writer(out, op).map_err(|e| e.to_string())
    }
}

/// An encoded record, borrowing the encoder's buffers until the next message.
#[derive(Debug)]
pub(crate) struct Record<'a> {
    /// The records' `table_name` of the table, for error messages.
    pub(crate) table_name: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
    /// The commit time, milliseconds since the Unix epoch.
    pub(crate) timestamp_ms: i64,
}

/// What one pgoutput message turned into.
#[derive(Debug)]
pub(crate) enum Encoded<'a> {
    /// Nothing to publish (a Relation, Type or Origin message, a logical message).
    Nothing,
    Record(Record<'a>),
    /// Published tables were truncated; what to do is the truncate policy's call.
    Truncate { tables: String, lsn: Lsn },
}

/// What the encoder knows of a relation from its latest Relation message.
struct Relation {
    route: Arc<TableRoute>,
    col_names: Vec<String>,
    /// Positions of the partition-key columns, or the name of one that no longer exists.
    key_indexes: Result<Vec<usize>, String>,
}

/// The transaction being encoded.
#[derive(Debug, Clone, Copy)]
struct Transaction {
    commit_lsn: Lsn,
    timestamp_ms: i64,
    next_seq: u64,
}

/// Encodes the changes of one replication session.
pub(crate) struct Encoder<F = JsonValue> {
    routes: Routes,
    publication: String,
    format: F,
    relations: HashMap<u32, Relation>,
    tx: Option<Transaction>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl<F: ValueFormat> Encoder<F> {
    /// An encoder for a publication's routes, writing values with `format`.
    pub(crate) fn new(routes: Routes, publication: &str, format: F) -> Self {
        Self {
            routes,
            publication: publication.to_owned(),
            format,
            relations: HashMap::new(),
            tx: None,
            key: Vec::with_capacity(64),
            value: Vec::with_capacity(512),
        }
    }

    /// A transaction committed at `commit_lsn` at `commit_time_micros` (PostgreSQL epoch) starts.
    pub(crate) fn begin(&mut self, commit_lsn: Lsn, commit_time_micros: i64) {
        self.tx = Some(Transaction {
            commit_lsn,
            timestamp_ms: commit_time_micros.saturating_add(PG_EPOCH_UNIX_MICROS) / 1000,
            next_seq: 0,
        });
    }

    /// The open transaction ends.
    pub(crate) fn commit(&mut self) {
        self.tx = None;
    }

    /// Decodes one pgoutput message and encodes what it says. `wal_end` is the latest position
    /// the server reported; errors outside a transaction name it.
    pub(crate) fn encode(&mut self, pgoutput: &[u8], wal_end: Lsn) -> Result<Encoded<'_>, ProducerError> {
        let position = self.tx.map_or(wal_end, |tx| tx.commit_lsn);
        let message = pgoutput::decode(pgoutput).map_err(|e| protocol(position, e.to_string()))?;
        self.encode_message(message, position)
    }

    fn encode_message(&mut self, message: Message, position: Lsn) -> Result<Encoded<'_>, ProducerError> {
        let (relation_id, change) = match message {
            Message::Relation(relation) => {
                self.add_relation(relation, position)?;
                return Ok(Encoded::Nothing);
            }
            Message::Insert { relation_id, new } => (relation_id, Rows::Insert(new)),
            Message::Update { relation_id, old, new } => match old {
                Some((OldTupleKind::Full, old)) => (relation_id, Rows::Update(old, new)),
                _ => return Err(self.needs_full_identity(relation_id, "an update", position)),
            },
            Message::Delete { relation_id, kind, old } => {
                if kind != OldTupleKind::Full {
                    return Err(self.needs_full_identity(relation_id, "a delete", position));
                }
                (relation_id, Rows::Delete(old))
            }
            Message::Truncate { relation_ids, .. } => {
                let tables: Vec<String> = relation_ids.iter().map(|id| self.describe(*id)).collect();
                return Ok(Encoded::Truncate { tables: tables.join(", "), lsn: position });
            }
            // Type, Origin and logical messages carry nothing pgkafka publishes.
            _ => return Ok(Encoded::Nothing),
        };
        if self.routes.is_skipped(relation_id) {
            return Ok(Encoded::Nothing);
        }
        self.encode_change(relation_id, change, position).map(Encoded::Record)
    }

    fn add_relation(&mut self, relation: pgoutput::Relation, position: Lsn) -> Result<(), ProducerError> {
        if self.routes.is_skipped(relation.id) {
            return Ok(());
        }
        let Some(route) = self.routes.for_relation(relation.id, &relation.namespace, &relation.name).cloned() else {
            return Err(self.unrouted(&relation, position));
        };
        let name = table_name(&relation.namespace, &relation.name);
        if name != route.table_name {
            tracing::info!(
                table = %route.table_name,
                was = %name,
                lsn = %position,
                "changes made while the table had another name: they go to its topic under its current name"
            );
        }
        let col_names: Vec<String> = relation.columns.into_iter().map(|c| c.name).collect();
        let key_indexes = route
            .key_columns
            .iter()
            .map(|key| col_names.iter().position(|c| c == key).ok_or_else(|| key.clone()))
            .collect();
        self.relations.insert(relation.id, Relation { route, col_names, key_indexes });
        Ok(())
    }

    /// The hot path: one relation lookup, the rows moved (not copied) out of the message, key
    /// and value written into reused buffers.
    fn encode_change(&mut self, relation_id: u32, rows: Rows, position: Lsn) -> Result<Record<'_>, ProducerError> {
        let Self { relations, tx, format, key, value, .. } = self;
        let Some(tx) = tx.as_mut() else {
            return Err(protocol(position, "a row change outside a transaction".into()));
        };
        let relation = relations.get(&relation_id).ok_or_else(|| {
            protocol(position, format!("a change of relation {relation_id} before its Relation message"))
        })?;
        let (old, new);
        let change = match rows {
            Rows::Insert(values) => {
                new = relation.row(values, None, position)?;
                Change::Insert(&new)
            }
            Rows::Update(old_values, new_values) => {
                old = relation.row(old_values, None, position)?;
                new = relation.row(new_values, Some(&old), position)?;
                Change::Update(&old, &new)
            }
            Rows::Delete(values) => {
                old = relation.row(values, None, position)?;
                Change::Delete(&old)
            }
        };
        let key_indexes = relation.key_indexes.as_ref().map_err(|missing| {
            ProducerError::Schema(format!(
                "partition_key column {missing:?} of table {} no longer exists (change at LSN {position}); put the \
                 column back or change the topic map's partition_key, then restart. Nothing from this transaction \
                 was confirmed",
                relation.route.table_name
            ))
        })?;
        let key_row = change.key_row();
        key.clear();
        encode_key_into(key_indexes.iter().map(|&i| key_row.get(i).and_then(Option::as_deref)), key);
        value.clear();
        let op = RowOp {
            table_name: &relation.route.table_name,
            col_names: &relation.col_names,
            lsn: tx.commit_lsn.0,
            seq_id: tx.next_seq,
            op: change,
        };
        format.write_value(&op, value).map_err(|e| protocol(position, format!("cannot encode a record: {e}")))?;
        tx.next_seq += 1;
        Ok(Record {
            table_name: &relation.route.table_name,
            topic: &relation.route.topic,
            key,
            value,
            timestamp_ms: tx.timestamp_ms,
        })
    }

    /// A relation the routes do not know: it joined the publication after the producer started,
    /// or it left the publication (or was renamed out of the topic map) while changes made
    /// before that waited in the slot. Both are fixed without touching the slot.
    fn unrouted(&self, relation: &pgoutput::Relation, position: Lsn) -> ProducerError {
        let name = table_name(&relation.namespace, &relation.name);
        let publication = &self.publication;
        ProducerError::Schema(format!(
            "the slot holds a change of table {name} (relation OID {}) at LSN {position}, but when the producer \
             started, publication {publication:?} had no route for that table, and nothing from it was confirmed. \
             If the table joined the publication since: add a topic map entry for it and restart. If it left the \
             publication while these changes waited in the slot: to deliver them, add it back with ALTER \
             PUBLICATION {} ADD TABLE {} and restore its topic map entry, restart, and drop it again once the \
             producer has confirmed past LSN {position}",
            relation.id,
            quote_ident(publication),
            qualified(&relation.namespace, &relation.name),
        ))
    }

    /// A relation's table name for messages, or its id if no Relation message named it.
    fn describe(&self, relation_id: u32) -> String {
        self.relations.get(&relation_id).map_or_else(|| format!("relation {relation_id}"), |r| r.route.table_name.clone())
    }

    fn needs_full_identity(&self, relation_id: u32, what: &str, position: Lsn) -> ProducerError {
        let table = self.describe(relation_id);
        ProducerError::Schema(format!(
            "{what} of table {table} at LSN {position} came without the whole old row; the table's replica identity \
             was changed while the producer ran. Run ALTER TABLE {table} REPLICA IDENTITY FULL and restart"
        ))
    }
}

/// The rows of a change as decoded, before TOAST filling.
enum Rows {
    Insert(Vec<TupleValue>),
    Update(Vec<TupleValue>, Vec<TupleValue>),
    Delete(Vec<TupleValue>),
}

impl Relation {
    /// Converts a tuple to a row; unchanged TOASTed values are taken from `old`.
    fn row(&self, values: Vec<TupleValue>, old: Option<&[Option<String>]>, position: Lsn) -> Result<Vec<Option<String>>, ProducerError> {
        let table = &self.route.table_name;
        if values.len() != self.col_names.len() {
            return Err(protocol(
                position,
                format!(
                    "a row of table {table} has {} values but its Relation message listed {} columns",
                    values.len(),
                    self.col_names.len()
                ),
            ));
        }
        values
            .into_iter()
            .enumerate()
            .map(|(index, value)| match value {
                TupleValue::Null => Ok(None),
                TupleValue::Text(text) => Ok(Some(text)),
                TupleValue::UnchangedToast => old.and_then(|old| old.get(index).cloned()).ok_or_else(|| {
                    protocol(
                        position,
                        format!(
                            "column {} of table {table} is an unchanged TOAST value with no old row to take it from",
                            self.col_names.get(index).map_or("?", String::as_str),
                        ),
                    )
                }),
                TupleValue::Binary(_) => {
                    Err(protocol(position, format!("table {table} sent a binary value; pgkafka streams text")))
                }
            })
            .collect()
    }
}

fn protocol(lsn: Lsn, message: String) -> ProducerError {
    ProducerError::Protocol { lsn, message }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;
    use crate::producer::catalog::{Catalog, CatalogColumn, Publication, PublishedTable, ReplicaIdentity};
    use crate::producer::routes::resolve;
    use pgkafka_common::{Op, ReplicationOp, TopicInfo};
    use proptest::prelude::*;

    fn row() -> impl Strategy<Value = Vec<Option<String>>> {
        proptest::collection::vec(proptest::option::of(".*"), 0..4)
    }

    proptest! {
        /// The producer's borrowed encoding is byte-for-byte the wire type's.
        #[test]
        fn borrowed_encoding_matches_the_wire_type(
            table in ".*", cols in proptest::collection::vec(".*", 0..4),
            lsn: u64, seq: u64, old in row(), new in row(), kind in 0..3u8,
        ) {
            let (change, op) = match kind {
                0 => (Change::Insert(&new), Op::Insert(new.clone())),
                1 => (Change::Update(&old, &new), Op::Update((old.clone(), new.clone()))),
                _ => (Change::Delete(&old), Op::Delete(old.clone())),
            };
            let mut borrowed = Vec::new();
            JsonValue.write_value(&RowOp { table_name: &table, col_names: &cols, lsn, seq_id: seq, op: change }, &mut borrowed).unwrap();
            let owned = serde_json::to_vec(&ReplicationOp { table_name: table.clone(), col_names: cols.clone(), lsn, seq_id: seq, op }).unwrap();
            prop_assert_eq!(borrowed, owned);
        }
    }

    /// pgoutput bytes, as the server sends them.
    mod wire {
        pub(super) fn relation(id: u32, schema: &str, table: &str, columns: &[&str]) -> Vec<u8> {
            let mut m = vec![b'R'];
            m.extend(id.to_be_bytes());
            for name in [schema, table] {
                m.extend(name.as_bytes());
                m.push(0);
            }
            m.push(b'f');
            m.extend((columns.len() as i16).to_be_bytes());
            for column in columns {
                m.push(0);
                m.extend(column.as_bytes());
                m.push(0);
                m.extend(25u32.to_be_bytes());
                m.extend((-1i32).to_be_bytes());
            }
            m
        }

        /// A tuple: `Some(text)`, `None` for NULL; `"\u{0}toast"` for an unchanged TOAST value.
        pub(super) fn tuple(values: &[Option<&str>]) -> Vec<u8> {
            let mut m = (values.len() as i16).to_be_bytes().to_vec();
            for value in values {
                match value {
                    None => m.push(b'n'),
                    Some("\u{0}toast") => m.push(b'u'),
                    Some(text) => {
                        m.push(b't');
                        m.extend((text.len() as u32).to_be_bytes());
                        m.extend(text.as_bytes());
                    }
                }
            }
            m
        }

        pub(super) fn insert(id: u32, new: &[Option<&str>]) -> Vec<u8> {
            let mut m = vec![b'I'];
            m.extend(id.to_be_bytes());
            m.push(b'N');
            m.extend(tuple(new));
            m
        }

        pub(super) fn update(id: u32, old: Option<(u8, &[Option<&str>])>, new: &[Option<&str>]) -> Vec<u8> {
            let mut m = vec![b'U'];
            m.extend(id.to_be_bytes());
            if let Some((kind, old)) = old {
                m.push(kind);
                m.extend(tuple(old));
            }
            m.push(b'N');
            m.extend(tuple(new));
            m
        }

        pub(super) fn delete(id: u32, old: &[Option<&str>]) -> Vec<u8> {
            let mut m = vec![b'D'];
            m.extend(id.to_be_bytes());
            m.push(b'O');
            m.extend(tuple(old));
            m
        }

        pub(super) fn truncate(ids: &[u32]) -> Vec<u8> {
            let mut m = vec![b'T'];
            m.extend((ids.len() as u32).to_be_bytes());
            m.push(0);
            for id in ids {
                m.extend(id.to_be_bytes());
            }
            m
        }
    }

    fn encoder(partition_key: &[&str]) -> Encoder {
        let catalog = Catalog {
            publication_name: "pub".into(),
            wal_level: "logical".into(),
            server_encoding: "UTF8".into(),
            publication: Publication::Tables(vec![PublishedTable {
                oid: 7,
                schema: "sales".into(),
                table: "orders".into(),
                replica_identity: ReplicaIdentity::Full,
                published_columns: None,
                columns: ["id", "org", "doc"].map(|name| CatalogColumn { name: name.into(), not_null: true }).to_vec(),
                primary_key: vec!["id".into()],
            }]),
        };
        let topic_map = [("sales.orders".to_owned(), TopicInfo::new("orders_topic", partition_key.iter().copied()))].into();
        Encoder::new(resolve(&topic_map, &catalog).unwrap(), "pub", JsonValue)
    }

    /// The record's key, value (as the wire type) and timestamp.
    fn record(encoded: Encoded<'_>) -> (Vec<u8>, ReplicationOp, i64) {
        let Encoded::Record(record) = encoded else { panic!("expected a record, got {encoded:?}") };
        assert_eq!((record.topic, record.table_name), ("orders_topic", "sales.orders"));
        (record.key.to_vec(), serde_json::from_slice(record.value).unwrap(), record.timestamp_ms)
    }

    fn key(values: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_key_into(values.iter().map(|v| Some(*v)), &mut out);
        out
    }

    #[test]
    fn raw_pgoutput_becomes_keyed_records_numbered_within_their_transaction() {
        let mut encoder = encoder(&["org"]);
        assert!(matches!(encoder.encode(&wire::relation(7, "sales", "orders", &["id", "org", "doc"]), Lsn(1)).unwrap(), Encoded::Nothing));
        encoder.begin(Lsn(0x500), 1_000_000);
        let (k, op, timestamp) = record(encoder.encode(&wire::insert(7, &[Some("1"), Some("42"), None]), Lsn(1)).unwrap());
        assert_eq!(k, key(&["42"]));
        assert_eq!(timestamp, (PG_EPOCH_UNIX_MICROS + 1_000_000) / 1000);
        assert_eq!((op.table_name.as_str(), op.col_names.as_slice(), op.lsn, op.seq_id), ("sales.orders", &["id".to_owned(), "org".into(), "doc".into()][..], 0x500, 0));
        assert_eq!(op.op, Op::Insert(vec![Some("1".into()), Some("42".into()), None]));
        let (k, op, _) = record(encoder.encode(&wire::delete(7, &[Some("1"), Some("43"), Some("d")]), Lsn(1)).unwrap());
        assert_eq!((k, op.seq_id), (key(&["43"]), 1), "a delete is keyed by its old row");
        encoder.commit();
        encoder.begin(Lsn(0x600), 0);
        let (_, op, _) = record(encoder.encode(&wire::insert(7, &[Some("2"), Some("1"), None]), Lsn(1)).unwrap());
        assert_eq!((op.lsn, op.seq_id), (0x600, 0), "sequence numbers start over in each transaction");
    }

    #[test]
    fn an_unchanged_toast_value_is_taken_from_the_old_row() {
        let mut encoder = encoder(&[]);
        encoder.encode(&wire::relation(7, "sales", "orders", &["id", "org", "doc"]), Lsn(1)).unwrap();
        encoder.begin(Lsn(0x500), 0);
        let old: &[Option<&str>] = &[Some("1"), Some("2"), Some("big document")];
        let message = wire::update(7, Some((b'O', old)), &[Some("1"), Some("3"), Some("\u{0}toast")]);
        let (k, op, _) = record(encoder.encode(&message, Lsn(1)).unwrap());
        assert_eq!(k, key(&["1"]), "the primary key when the topic map names none");
        let old: Vec<Option<String>> = old.iter().map(|v| v.map(str::to_owned)).collect();
        let new = vec![Some("1".into()), Some("3".into()), Some("big document".into())];
        assert_eq!(op.op, Op::Update((old, new)));
    }

    #[test]
    fn what_cannot_be_encoded_is_an_error_naming_table_and_lsn() {
        let mut encoder = encoder(&["org"]);
        encoder.begin(Lsn(0x500), 0);
        let error = encoder.encode(&wire::insert(7, &[Some("1")]), Lsn(1)).unwrap_err();
        assert!(error.to_string().contains("relation 7 before its Relation message") && error.to_string().contains("0/500"), "{error}");
        encoder.encode(&wire::relation(7, "sales", "orders", &["id", "org", "doc"]), Lsn(1)).unwrap();
        let error = encoder.encode(&wire::update(7, None, &[Some("1"), Some("2"), None]), Lsn(1)).unwrap_err();
        assert!(matches!(error, ProducerError::Schema(_)) && error.to_string().contains("REPLICA IDENTITY FULL"), "{error}");
        let error = encoder.encode(&wire::insert(7, &[Some("1"), Some("\u{0}toast"), None]), Lsn(1)).unwrap_err();
        assert!(error.to_string().contains("column org of table sales.orders is an unchanged TOAST value"), "{error}");
        let error = encoder.encode(&wire::insert(7, &[Some("1")]), Lsn(1)).unwrap_err();
        assert!(error.to_string().contains("has 1 values but its Relation message listed 3"), "{error}");
        let error = encoder.encode(&wire::relation(8, "public", "stray", &["id"]), Lsn(1)).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("change of table stray (relation OID 8) at LSN 0/500"), "{message}");
        assert!(message.contains("ALTER PUBLICATION \"pub\" ADD TABLE \"public\".\"stray\""), "{message}");
        encoder.encode(&wire::relation(7, "sales", "orders", &["id", "doc"]), Lsn(1)).unwrap();
        let error = encoder.encode(&wire::insert(7, &[Some("1"), None]), Lsn(1)).unwrap_err();
        assert!(error.to_string().contains("partition_key column \"org\" of table sales.orders no longer exists"), "{error}");
        encoder.commit();
        let error = encoder.encode(&wire::insert(7, &[Some("1"), None]), Lsn(0x700)).unwrap_err();
        assert!(error.to_string().contains("outside a transaction") && error.to_string().contains("0/700"), "{error}");
    }

    #[test]
    fn changes_replayed_under_a_table_s_old_name_go_to_its_topic_under_its_current_name() {
        let mut encoder = encoder(&["org"]);
        encoder.encode(&wire::relation(7, "sales", "orders_before_rename", &["id", "org", "doc"]), Lsn(1)).unwrap();
        encoder.begin(Lsn(0x500), 0);
        let (k, op, _) = record(encoder.encode(&wire::insert(7, &[Some("1"), Some("42"), None]), Lsn(1)).unwrap());
        assert_eq!((k, op.table_name.as_str()), (key(&["42"]), "sales.orders"));
    }

    #[test]
    fn a_truncate_names_its_tables_and_lsn() {
        let mut encoder = encoder(&["org"]);
        encoder.encode(&wire::relation(7, "sales", "orders", &["id", "org", "doc"]), Lsn(1)).unwrap();
        encoder.begin(Lsn(0x500), 0);
        let Encoded::Truncate { tables, lsn } = encoder.encode(&wire::truncate(&[7, 9]), Lsn(1)).unwrap() else { panic!() };
        assert_eq!((tables.as_str(), lsn), ("sales.orders, relation 9", Lsn(0x500)));
    }
}
