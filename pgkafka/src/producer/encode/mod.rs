//! Turns pgoutput messages into Kafka records: keeps each relation's columns, types and route,
//! fills unchanged TOAST values from the old row, and writes key and value in the topic's
//! output format through a [`ValueFormat`]: [`JsonValue`] (the
//! [`ReplicationOp`](pgkafka_common::ReplicationOp) JSON) or [`debezium`] (Debezium change
//! events, with tombstones and transaction records). Pure: bytes in, records out, no I/O.
//!
//! Another output format is another [`ValueFormat`], not a branch in the session.

pub(crate) mod debezium;
mod json;
mod snapshot;

pub(crate) use self::json::JsonValue;
pub(crate) use self::snapshot::{ColumnType, SnapshotRead, SnapshotRows};

use std::collections::HashMap;
use std::sync::Arc;

use pgkafka_common::ident::{qualified, quote_ident, table_name};
use pgkafka_common::key::encode_key_into;
use pgkafka_common::pgoutput::{self, Message, OldTupleKind, TupleValue};
use pgkafka_common::Lsn;
use serde::Serialize;

use self::debezium::types::Kind;
use self::debezium::{DebeziumColumn, DebeziumTable, TransactionEnd, TransactionPosition};
use super::format::{DebeziumOptions, Formats, Resolved};
use super::routes::{Routes, TableRoute};
use super::ProducerError;

/// Microseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// The `table_name` of transaction-metadata records in error messages.
const TRANSACTION_RECORDS: &str = "(transaction metadata)";

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
/// Serializes exactly as [`ReplicationOp`](pgkafka_common::ReplicationOp); `source` is for
/// formats that say more.
#[derive(Debug, Serialize)]
pub(crate) struct RowOp<'a> {
    pub(crate) table_name: &'a str,
    pub(crate) col_names: &'a [String],
    pub(crate) lsn: u64,
    pub(crate) seq_id: u64,
    pub(crate) op: Change<'a>,
    #[serde(skip)]
    pub(crate) source: Source<'a>,
}

/// Where a change comes from, beyond its commit LSN and sequence number.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Source<'a> {
    /// The transaction id (pgoutput's Begin `xid`); `None` for rows read outside a transaction.
    pub(crate) xid: Option<u32>,
    /// The commit time, microseconds since the Unix epoch.
    pub(crate) commit_time_micros: i64,
    /// The change's own WAL position (the XLogData message's start).
    pub(crate) change_lsn: Lsn,
    /// Debezium's `lastCommitLsn`, the first element of `source.sequence`: a position below
    /// this transaction's commit and above the previous transaction's, the same in every run.
    pub(crate) last_commit_lsn: Option<Lsn>,
    /// Which snapshot read the row, `None` when it was streamed (Debezium op `r` otherwise).
    pub(crate) snapshot: Option<SnapshotRead>,
    /// When the record is written, microseconds since the Unix epoch.
    pub(crate) now_micros: i64,
    /// The change's place in its transaction, when transaction metadata is on.
    pub(crate) transaction: Option<TransactionPosition<'a>>,
}

impl Source<'_> {
    /// A row read by a `read` snapshot at `position`, written at `now_micros`.
    pub(crate) fn snapshot_row(read: SnapshotRead, position: Lsn, now_micros: i64) -> Self {
        Self {
            change_lsn: position,
            // Debezium's snapshot rows carry the position the stream continues from.
            last_commit_lsn: Some(position),
            commit_time_micros: now_micros,
            now_micros,
            snapshot: Some(read),
            ..Self::default()
        }
    }
}

/// How a record's key and value are written.
pub(crate) trait ValueFormat: Send + Sync {
    /// Appends `op`'s value to `out` (which is empty).
    fn write_value(&self, op: &RowOp<'_>, out: &mut Vec<u8>) -> Result<(), String>;

    /// Appends the key of `row` (the new row, or the deleted one) to `out` (which is empty):
    /// by default pgkafka's JSON array of the values at `key_indexes`.
    fn write_key(&self, row: &[Option<String>], key_indexes: &[usize], out: &mut Vec<u8>) -> Result<(), String> {
        encode_key_into(key_indexes.iter().map(|&i| row.get(i).and_then(Option::as_deref)), out);
        Ok(())
    }

    /// Whether a delete is followed by a tombstone (the key with a null value).
    fn tombstones(&self) -> bool {
        false
    }

    /// The Debezium format's table, for its transaction metadata.
    fn debezium(&self) -> Option<&DebeziumTable> {
        None
    }
}

/// An encoded record, borrowing the encoder's buffers until the next message.
#[derive(Debug)]
pub(crate) struct Record<'a> {
    /// The records' `table_name` of the table, for error messages.
    pub(crate) table_name: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) key: &'a [u8],
    /// `None` for a tombstone.
    pub(crate) value: Option<&'a [u8]>,
    /// The commit time, milliseconds since the Unix epoch.
    pub(crate) timestamp_ms: i64,
}

/// The records of one row change, in the order they are sent: a transaction's BEGIN record
/// before its first change, the change, a tombstone after a delete, and the create event of an
/// update that changed the key (which the Debezium format writes as a delete and a create).
#[derive(Debug)]
pub(crate) struct Records<'a> {
    pub(crate) begin: Option<Record<'a>>,
    pub(crate) change: Record<'a>,
    pub(crate) tombstone: Option<Record<'a>>,
    pub(crate) created: Option<Record<'a>>,
    /// The rows of the change, whatever format its records are written in.
    pub(crate) rows: RowImage<'a>,
}

/// The rows of one change as the encoder read them (unchanged TOAST values filled in), for
/// what watches changes beside the records (a backfill's window).
#[derive(Debug)]
pub(crate) struct RowImage<'a> {
    /// The records' `table_name` of the table.
    pub(crate) table_name: &'a str,
    pub(crate) col_names: &'a [String],
    /// The old row of an update or delete.
    pub(crate) old: Option<Vec<Option<String>>>,
    /// The new row of an insert or update.
    pub(crate) new: Option<Vec<Option<String>>>,
}

impl<'a> Records<'a> {
    /// The records in sending order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Record<'a>> {
        self.begin.iter().chain(std::iter::once(&self.change)).chain(self.tombstone.iter()).chain(self.created.iter())
    }
}

/// What one pgoutput message turned into.
#[derive(Debug)]
// Returned once per message and consumed at once: boxing the records would allocate per change.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Encoded<'a> {
    /// Nothing to publish (a Relation, Type or Origin message, a logical message).
    Nothing,
    Records(Records<'a>),
    /// Published tables were truncated; what to do is the truncate policy's call.
    Truncate { tables: String, lsn: Lsn },
}

/// What the encoder knows of a relation from its latest Relation message.
struct Relation {
    route: Arc<TableRoute>,
    col_names: Vec<String>,
    /// Positions of the partition-key columns, or the name of one that no longer exists.
    key_indexes: Result<Vec<usize>, String>,
    /// How its records are written: its topic's format.
    format: Box<dyn ValueFormat>,
}

/// The transaction being encoded.
#[derive(Debug)]
struct Transaction {
    commit_lsn: Lsn,
    xid: u32,
    timestamp_ms: i64,
    commit_time_micros: i64,
    next_seq: u64,
    /// Debezium transaction metadata, from the first change of a table that has it on.
    metadata: Option<TransactionMetadata>,
}

/// What a transaction's BEGIN and END records and `transaction` blocks say.
#[derive(Debug)]
struct TransactionMetadata {
    options: Arc<DebeziumOptions>,
    topic: String,
    /// `<xid>:<commit LSN>`.
    id: String,
    event_count: u64,
    /// Events per table (`schema.table`), in order of first appearance.
    data_collections: Vec<(String, u64)>,
}

/// Encodes the changes of one replication session.
pub(crate) struct Encoder {
    routes: Routes,
    publication: String,
    formats: Formats,
    /// The database, Debezium's `source.db`.
    database: String,
    relations: HashMap<u32, Relation>,
    tx: Option<Transaction>,
    /// Microseconds since the Unix epoch, now (a fixed clock in tests).
    clock: fn() -> i64,
    key: Vec<u8>,
    value: Vec<u8>,
    /// The key and value of the create event of an update that changed the key (Debezium).
    created_key: Vec<u8>,
    created_value: Vec<u8>,
    /// The key and value of a transaction's BEGIN or END record.
    boundary_key: Vec<u8>,
    boundary_value: Vec<u8>,
    /// The topic of the END record being sent.
    boundary_topic: String,
}

/// The system clock in microseconds since the Unix epoch.
pub(crate) fn system_clock() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
}

impl Encoder {
    /// An encoder for a publication's routes, writing each topic's records in its format.
    pub(crate) fn new(routes: Routes, publication: &str, formats: Formats, database: &str) -> Self {
        Self {
            routes,
            publication: publication.to_owned(),
            formats,
            database: database.to_owned(),
            relations: HashMap::new(),
            tx: None,
            clock: system_clock,
            key: Vec::with_capacity(64),
            value: Vec::with_capacity(512),
            created_key: Vec::new(),
            created_value: Vec::new(),
            boundary_key: Vec::new(),
            boundary_value: Vec::new(),
            boundary_topic: String::new(),
        }
    }

    /// A transaction `xid` committed at `commit_lsn` at `commit_time_micros` (PostgreSQL epoch) starts.
    pub(crate) fn begin(&mut self, commit_lsn: Lsn, commit_time_micros: i64, xid: u32) {
        let unix_micros = commit_time_micros.saturating_add(PG_EPOCH_UNIX_MICROS);
        self.tx = Some(Transaction {
            commit_lsn,
            xid,
            timestamp_ms: unix_micros / 1000,
            commit_time_micros: unix_micros,
            next_seq: 0,
            metadata: None,
        });
    }

    /// The open transaction ends; returns its END record when it has transaction metadata.
    pub(crate) fn commit(&mut self) -> Option<Record<'_>> {
        let tx = self.tx.take()?;
        let metadata = tx.metadata?;
        self.boundary_key.clear();
        self.boundary_value.clear();
        let end = TransactionEnd { event_count: metadata.event_count, data_collections: &metadata.data_collections };
        debezium::transaction_record(
            &metadata.options,
            &metadata.id,
            tx.timestamp_ms,
            Some(&end),
            &mut self.boundary_key,
            &mut self.boundary_value,
        );
        self.boundary_topic = metadata.topic;
        Some(Record {
            table_name: TRANSACTION_RECORDS,
            topic: &self.boundary_topic,
            key: &self.boundary_key,
            value: Some(&self.boundary_value),
            timestamp_ms: tx.timestamp_ms,
        })
    }

    /// Decodes one pgoutput message, which starts at `wal_start`, and encodes what it says.
    /// `wal_end` is the latest position the server reported; errors outside a transaction name it.
    pub(crate) fn encode(&mut self, pgoutput: &[u8], wal_start: Lsn, wal_end: Lsn) -> Result<Encoded<'_>, ProducerError> {
        let position = self.tx.as_ref().map_or(wal_end, |tx| tx.commit_lsn);
        let message = pgoutput::decode(pgoutput).map_err(|e| protocol(position, e.to_string()))?;
        self.encode_message(message, wal_start, position)
    }

    fn encode_message(&mut self, message: Message, wal_start: Lsn, position: Lsn) -> Result<Encoded<'_>, ProducerError> {
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
        self.encode_change(relation_id, change, wal_start, position).map(Encoded::Records)
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
        let col_names: Vec<String> = relation.columns.iter().map(|c| c.name.clone()).collect();
        let key_indexes: Result<Vec<usize>, String> = route
            .key_columns
            .iter()
            .map(|key| col_names.iter().position(|c| c == key).ok_or_else(|| key.clone()))
            .collect();
        let columns = relation.columns.iter().map(|c| ColumnType::new(&c.name, c.type_id, c.type_modifier));
        let format = self.table_format(&route, columns, key_indexes.as_deref().unwrap_or_default());
        self.relations.insert(relation.id, Relation { route, col_names, key_indexes, format });
        Ok(())
    }

    /// How the records of `route`'s table are written in its topic's format, the table having
    /// `columns` (as its records list them) and its partition key at `key_indexes`.
    fn table_format<'c>(
        &self,
        route: &TableRoute,
        columns: impl Iterator<Item = ColumnType<'c>>,
        key_indexes: &[usize],
    ) -> Box<dyn ValueFormat> {
        match self.formats.for_topic(&route.topic) {
            Resolved::Pgkafka => Box::new(JsonValue),
            Resolved::Debezium(options) => {
                let columns = columns
                    .map(|column| DebeziumColumn {
                        name: column.name.to_owned(),
                        kind: Kind::of(column.type_oid, column.type_modifier),
                        // A column added since the producer started is not in the catalog read then.
                        optional: !route.not_null.iter().any(|name| name == column.name),
                    })
                    .collect();
                Box::new(DebeziumTable::new(
                    Arc::clone(options),
                    &self.database,
                    &route.schema,
                    &route.table,
                    columns,
                    key_indexes.to_vec(),
                ))
            }
        }
    }

    /// The hot path: one relation lookup, the rows moved (not copied) out of the message, key
    /// and value written into reused buffers.
    fn encode_change(&mut self, relation_id: u32, rows: Rows, wal_start: Lsn, position: Lsn) -> Result<Records<'_>, ProducerError> {
        let Self { relations, tx, key, value, created_key, created_value, boundary_key, boundary_value, clock, .. } =
            self;
        let Some(tx) = tx.as_mut() else {
            return Err(protocol(position, "a row change outside a transaction".into()));
        };
        let relation = relations.get(&relation_id).ok_or_else(|| {
            protocol(position, format!("a change of relation {relation_id} before its Relation message"))
        })?;
        let (old, new) = match rows {
            Rows::Insert(values) => (None, Some(relation.row(values, None, position)?)),
            Rows::Update(old_values, new_values) => {
                let old = relation.row(old_values, None, position)?;
                let new = relation.row(new_values, Some(&old), position)?;
                (Some(old), Some(new))
            }
            Rows::Delete(values) => (Some(relation.row(values, None, position)?), None),
        };
        let change = match (&old, &new) {
            (None, Some(new)) => Change::Insert(new),
            (Some(old), Some(new)) => Change::Update(old, new),
            (Some(old), None) => Change::Delete(old),
            (None, None) => return Err(protocol(position, "a row change without a row".into())),
        };
        let key_indexes = relation.key_indexes.as_ref().map_err(|missing| {
            ProducerError::Schema(format!(
                "partition_key column {missing:?} of table {} no longer exists (change at LSN {position}); put the \
                 column back or change the topic map's partition_key, then restart. Nothing from this transaction \
                 was confirmed",
                relation.route.table_name
            ))
        })?;
        // The same row fails the same way on every retry: stop, naming what and where.
        let cannot_encode = |e: String| {
            ProducerError::Schema(format!(
                "cannot write the change at LSN {position} in its topic's format: {e}. Nothing from this transaction \
                 was confirmed to the slot"
            ))
        };
        let debezium = relation.format.debezium();
        // Debezium writes an update that changes the key as a delete of the old key (and its
        // tombstone) and a create of the new one, so a compacted topic forgets the old key.
        let (first, created) = match change {
            Change::Update(old, new) if debezium.is_some() && key_indexes.iter().any(|&i| old.get(i) != new.get(i)) => {
                (Change::Delete(old), Some(new))
            }
            _ => (change, None),
        };

        // Debezium transaction metadata: BEGIN before the first event, then each event's place.
        let mut begins = false;
        let mut orders = [(0u64, 0u64); 2];
        let with_metadata = debezium.filter(|table| table.options().transaction_metadata);
        if let Some(table) = with_metadata {
            let metadata = tx.metadata.get_or_insert_with(|| {
                begins = true;
                TransactionMetadata {
                    options: Arc::clone(table.options()),
                    topic: table.options().transaction_topic(),
                    id: format!("{}:{}", tx.xid, tx.commit_lsn.0),
                    event_count: 0,
                    data_collections: Vec::new(),
                }
            });
            let collection = table.data_collection();
            for order in orders.iter_mut().take(if created.is_some() { 2 } else { 1 }) {
                metadata.event_count += 1;
                let count = match metadata.data_collections.iter_mut().find(|(name, _)| *name == collection) {
                    Some((_, count)) => {
                        *count += 1;
                        *count
                    }
                    None => {
                        metadata.data_collections.push((collection.clone(), 1));
                        1
                    }
                };
                *order = (metadata.event_count, count);
            }
        }
        let metadata = tx.metadata.as_ref().filter(|_| with_metadata.is_some());
        let place = |(total_order, data_collection_order): (u64, u64)| {
            metadata.map(|m| TransactionPosition { id: &m.id, total_order, data_collection_order })
        };
        let begin = match (begins, metadata) {
            (true, Some(metadata)) => {
                boundary_key.clear();
                boundary_value.clear();
                debezium::transaction_record(&metadata.options, &metadata.id, tx.timestamp_ms, None, boundary_key, boundary_value);
                Some(Record {
                    table_name: TRANSACTION_RECORDS,
                    topic: &metadata.topic,
                    key: boundary_key,
                    value: Some(boundary_value),
                    timestamp_ms: tx.timestamp_ms,
                })
            }
            _ => None,
        };

        let source = Source {
            xid: Some(tx.xid),
            commit_time_micros: tx.commit_time_micros,
            change_lsn: wal_start,
            // Debezium writes the end LSN of the previous transaction it processed, which after
            // a restart depends on where it resumed. The LSN just below this transaction's commit
            // lies between the same two commits and is the same in every run, re-sends included:
            // a consumer that orders by it (lsn = sequence[0] + 1) gets the commit LSN.
            last_commit_lsn: Some(Lsn(tx.commit_lsn.0.saturating_sub(1))),
            snapshot: None,
            // Only the Debezium format writes the time of writing: no clock read on the pgkafka path.
            now_micros: if debezium.is_some() { clock() } else { 0 },
            transaction: place(orders[0]),
        };
        let op = |change, transaction| RowOp {
            table_name: &relation.route.table_name,
            col_names: &relation.col_names,
            lsn: tx.commit_lsn.0,
            seq_id: tx.next_seq,
            op: change,
            source: Source { transaction, ..source },
        };
        key.clear();
        relation.format.write_key(first.key_row(), key_indexes, key).map_err(cannot_encode)?;
        value.clear();
        relation.format.write_value(&op(first, place(orders[0])), value).map_err(cannot_encode)?;
        if let Some(new) = created {
            created_key.clear();
            relation.format.write_key(new, key_indexes, created_key).map_err(cannot_encode)?;
            created_value.clear();
            relation.format.write_value(&op(Change::Insert(new), place(orders[1])), created_value).map_err(cannot_encode)?;
        }
        tx.next_seq += 1;
        let is_delete = matches!(first, Change::Delete(_));
        let has_created = created.is_some();
        let record = |key, value| Record {
            table_name: &relation.route.table_name,
            topic: &relation.route.topic,
            key,
            value,
            timestamp_ms: tx.timestamp_ms,
        };
        Ok(Records {
            begin,
            change: record(key, Some(value)),
            tombstone: (is_delete && relation.format.tombstones()).then(|| record(key, None)),
            created: has_created.then(|| record(created_key, Some(created_value))),
            rows: RowImage { table_name: &relation.route.table_name, col_names: &relation.col_names, old, new },
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
            JsonValue.write_value(&RowOp { table_name: &table, col_names: &cols, lsn, seq_id: seq, op: change, source: Source::default() }, &mut borrowed).unwrap();
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
        encoder_with(partition_key, &crate::producer::OutputFormat::Pgkafka)
    }

    fn encoder_with(partition_key: &[&str], format: &crate::producer::OutputFormat) -> Encoder {
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
        let formats = Formats::new(format, &HashMap::new(), &["orders_topic"]).unwrap();
        let mut encoder = Encoder::new(resolve(&topic_map, &catalog).unwrap(), "pub", formats, "db");
        encoder.clock = || 1_700_000_000_000_000;
        encoder
    }

    /// The record's key, value (as the wire type) and timestamp.
    fn record(encoded: Encoded<'_>) -> (Vec<u8>, ReplicationOp, i64) {
        let Encoded::Records(records) = encoded else { panic!("expected a record, got {encoded:?}") };
        assert!(records.begin.is_none() && records.tombstone.is_none() && records.created.is_none(), "{records:?}");
        let record = records.change;
        assert_eq!((record.topic, record.table_name), ("orders_topic", "sales.orders"));
        (record.key.to_vec(), serde_json::from_slice(record.value.unwrap()).unwrap(), record.timestamp_ms)
    }

    fn key(values: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_key_into(values.iter().map(|v| Some(*v)), &mut out);
        out
    }

    #[test]
    fn raw_pgoutput_becomes_keyed_records_numbered_within_their_transaction() {
        let mut encoder = encoder(&["org"]);
        assert!(matches!(encoder.encode(&wire::relation(7, "sales", "orders", &["id", "org", "doc"]), Lsn(0), Lsn(1)).unwrap(), Encoded::Nothing));
        encoder.begin(Lsn(0x500), 1_000_000, 1);
        let (k, op, timestamp) = record(encoder.encode(&wire::insert(7, &[Some("1"), Some("42"), None]), Lsn(0), Lsn(1)).unwrap());
        assert_eq!(k, key(&["42"]));
        assert_eq!(timestamp, (PG_EPOCH_UNIX_MICROS + 1_000_000) / 1000);
        assert_eq!((op.table_name.as_str(), op.col_names.as_slice(), op.lsn, op.seq_id), ("sales.orders", &["id".to_owned(), "org".into(), "doc".into()][..], 0x500, 0));
        assert_eq!(op.op, Op::Insert(vec![Some("1".into()), Some("42".into()), None]));
        let (k, op, _) = record(encoder.encode(&wire::delete(7, &[Some("1"), Some("43"), Some("d")]), Lsn(0), Lsn(1)).unwrap());
        assert_eq!((k, op.seq_id), (key(&["43"]), 1), "a delete is keyed by its old row");
        encoder.commit();
        encoder.begin(Lsn(0x600), 0, 1);
        let (_, op, _) = record(encoder.encode(&wire::insert(7, &[Some("2"), Some("1"), None]), Lsn(0), Lsn(1)).unwrap());
        assert_eq!((op.lsn, op.seq_id), (0x600, 0), "sequence numbers start over in each transaction");
    }

    #[test]
    fn an_unchanged_toast_value_is_taken_from_the_old_row() {
        let mut encoder = encoder(&[]);
        encoder.encode(&wire::relation(7, "sales", "orders", &["id", "org", "doc"]), Lsn(0), Lsn(1)).unwrap();
        encoder.begin(Lsn(0x500), 0, 1);
        let old: &[Option<&str>] = &[Some("1"), Some("2"), Some("big document")];
        let message = wire::update(7, Some((b'O', old)), &[Some("1"), Some("3"), Some("\u{0}toast")]);
        let (k, op, _) = record(encoder.encode(&message, Lsn(0), Lsn(1)).unwrap());
        assert_eq!(k, key(&["1"]), "the primary key when the topic map names none");
        let old: Vec<Option<String>> = old.iter().map(|v| v.map(str::to_owned)).collect();
        let new = vec![Some("1".into()), Some("3".into()), Some("big document".into())];
        assert_eq!(op.op, Op::Update((old, new)));
    }

    #[test]
    fn what_cannot_be_encoded_is_an_error_naming_table_and_lsn() {
        let mut encoder = encoder(&["org"]);
        encoder.begin(Lsn(0x500), 0, 1);
        let error = encoder.encode(&wire::insert(7, &[Some("1")]), Lsn(0), Lsn(1)).unwrap_err();
        assert!(error.to_string().contains("relation 7 before its Relation message") && error.to_string().contains("0/500"), "{error}");
        encoder.encode(&wire::relation(7, "sales", "orders", &["id", "org", "doc"]), Lsn(0), Lsn(1)).unwrap();
        let error = encoder.encode(&wire::update(7, None, &[Some("1"), Some("2"), None]), Lsn(0), Lsn(1)).unwrap_err();
        assert!(matches!(error, ProducerError::Schema(_)) && error.to_string().contains("REPLICA IDENTITY FULL"), "{error}");
        let error = encoder.encode(&wire::insert(7, &[Some("1"), Some("\u{0}toast"), None]), Lsn(0), Lsn(1)).unwrap_err();
        assert!(error.to_string().contains("column org of table sales.orders is an unchanged TOAST value"), "{error}");
        let error = encoder.encode(&wire::insert(7, &[Some("1")]), Lsn(0), Lsn(1)).unwrap_err();
        assert!(error.to_string().contains("has 1 values but its Relation message listed 3"), "{error}");
        let error = encoder.encode(&wire::relation(8, "public", "stray", &["id"]), Lsn(0), Lsn(1)).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("change of table stray (relation OID 8) at LSN 0/500"), "{message}");
        assert!(message.contains("ALTER PUBLICATION \"pub\" ADD TABLE \"public\".\"stray\""), "{message}");
        encoder.encode(&wire::relation(7, "sales", "orders", &["id", "doc"]), Lsn(0), Lsn(1)).unwrap();
        let error = encoder.encode(&wire::insert(7, &[Some("1"), None]), Lsn(0), Lsn(1)).unwrap_err();
        assert!(error.to_string().contains("partition_key column \"org\" of table sales.orders no longer exists"), "{error}");
        encoder.commit();
        let error = encoder.encode(&wire::insert(7, &[Some("1"), None]), Lsn(0), Lsn(0x700)).unwrap_err();
        assert!(error.to_string().contains("outside a transaction") && error.to_string().contains("0/700"), "{error}");
    }

    #[test]
    fn changes_replayed_under_a_table_s_old_name_go_to_its_topic_under_its_current_name() {
        let mut encoder = encoder(&["org"]);
        encoder.encode(&wire::relation(7, "sales", "orders_before_rename", &["id", "org", "doc"]), Lsn(0), Lsn(1)).unwrap();
        encoder.begin(Lsn(0x500), 0, 1);
        let (k, op, _) = record(encoder.encode(&wire::insert(7, &[Some("1"), Some("42"), None]), Lsn(0), Lsn(1)).unwrap());
        assert_eq!((k, op.table_name.as_str()), (key(&["42"]), "sales.orders"));
    }

    #[test]
    fn a_truncate_names_its_tables_and_lsn() {
        let mut encoder = encoder(&["org"]);
        encoder.encode(&wire::relation(7, "sales", "orders", &["id", "org", "doc"]), Lsn(0), Lsn(1)).unwrap();
        encoder.begin(Lsn(0x500), 0, 1);
        let Encoded::Truncate { tables, lsn } = encoder.encode(&wire::truncate(&[7, 9]), Lsn(0), Lsn(1)).unwrap() else { panic!() };
        assert_eq!((tables.as_str(), lsn), ("sales.orders, relation 9", Lsn(0x500)));
    }

    /// A Debezium topic with transaction metadata and tombstones: BEGIN before the first
    /// event only, each event's place in the transaction, a tombstone after a delete with the
    /// delete's key, END at commit counting the events; the next transaction starts over.
    #[test]
    fn debezium_records_come_with_transaction_boundaries_and_tombstones() {
        use crate::producer::{DebeziumOptions, OutputFormat};
        let mut options = DebeziumOptions::new("server");
        options.schemas = false;
        options.transaction_metadata = true;
        let mut encoder = encoder_with(&[], &OutputFormat::Debezium(options));
        encoder.encode(&wire::relation(7, "sales", "orders", &["id", "org", "doc"]), Lsn(0), Lsn(1)).unwrap();
        encoder.begin(Lsn(0x500), 0, 42);
        let json = |bytes: Option<&[u8]>| serde_json::from_slice::<serde_json::Value>(bytes.unwrap()).unwrap();
        let Encoded::Records(first) = encoder.encode(&wire::insert(7, &[Some("1"), Some("2"), None]), Lsn(0x490), Lsn(1)).unwrap() else { panic!() };
        let begin = first.begin.as_ref().unwrap();
        assert_eq!(begin.topic, "server.transaction");
        assert_eq!(json(begin.value)["status"], "BEGIN");
        assert_eq!(json(Some(begin.key))["id"], "42:1280");
        let event = json(first.change.value);
        assert_eq!(event["after"]["id"], "1", "text columns stay strings");
        assert_eq!((event["op"].as_str(), event["source"]["lsn"].as_u64(), event["source"]["txId"].as_u64()), (Some("c"), Some(0x490), Some(42)));
        assert_eq!(event["transaction"], serde_json::json!({"id": "42:1280", "total_order": 1, "data_collection_order": 1}));
        assert_eq!(event["ts_ms"], 1_700_000_000_000i64);
        assert_eq!(first.iter().count(), 2);
        let Encoded::Records(second) = encoder.encode(&wire::delete(7, &[Some("1"), Some("2"), None]), Lsn(0x498), Lsn(1)).unwrap() else { panic!() };
        assert!(second.begin.is_none());
        let tombstone = second.tombstone.as_ref().unwrap();
        assert_eq!((tombstone.topic, tombstone.key, tombstone.value), ("orders_topic", second.change.key, None));
        assert_eq!(tombstone.key, br#"{"id":"1"}"#);
        assert_eq!(json(second.change.value)["transaction"]["total_order"], 2);
        let end = encoder.commit().unwrap();
        let end = json(end.value);
        assert_eq!((end["status"].as_str(), end["event_count"].as_u64()), (Some("END"), Some(2)));
        assert_eq!(end["data_collections"], serde_json::json!([{"data_collection": "sales.orders", "event_count": 2}]));
        encoder.begin(Lsn(0x600), 0, 43);
        let Encoded::Records(next) = encoder.encode(&wire::insert(7, &[Some("3"), Some("2"), None]), Lsn(0x590), Lsn(1)).unwrap() else { panic!() };
        assert!(next.begin.is_some(), "each transaction has its BEGIN");
        assert_eq!(json(next.change.value)["source"]["sequence"], "[\"1535\",\"1424\"]", "the LSN below its commit");
        assert!(encoder.commit().is_some());
        encoder.begin(Lsn(0x700), 0, 44);
        assert!(encoder.commit().is_none(), "an empty transaction has no records");
    }

    /// An update that changes the key is, in the Debezium format as in Debezium, a delete of
    /// the old key with its tombstone and a create of the new key, each an event of the
    /// transaction; in the pgkafka format it stays one update keyed by the new row.
    #[test]
    fn an_update_of_the_key_is_a_delete_and_a_create_in_the_debezium_format() {
        use crate::producer::{DebeziumOptions, OutputFormat};
        let mut options = DebeziumOptions::new("server");
        options.schemas = false;
        options.transaction_metadata = true;
        let mut encoder = encoder_with(&[], &OutputFormat::Debezium(options));
        encoder.encode(&wire::relation(7, "sales", "orders", &["id", "org", "doc"]), Lsn(0), Lsn(1)).unwrap();
        encoder.begin(Lsn(0x500), 0, 42);
        let old: &[Option<&str>] = &[Some("1"), Some("2"), None];
        let message = wire::update(7, Some((b'O', old)), &[Some("9"), Some("2"), None]);
        let Encoded::Records(records) = encoder.encode(&message, Lsn(0x490), Lsn(1)).unwrap() else { panic!() };
        let json = |bytes: Option<&[u8]>| serde_json::from_slice::<serde_json::Value>(bytes.unwrap()).unwrap();
        let kinds: Vec<(&[u8], Option<String>)> = records
            .iter()
            .map(|r| (r.key, r.value.map(|v| json(Some(v))["op"].as_str().unwrap_or("BEGIN").to_owned())))
            .collect();
        assert_eq!(
            kinds,
            [
                (&br#"{"id":"42:1280"}"#[..], Some("BEGIN".to_owned())),
                (&br#"{"id":"1"}"#[..], Some("d".to_owned())),
                (&br#"{"id":"1"}"#[..], None),
                (&br#"{"id":"9"}"#[..], Some("c".to_owned())),
            ]
        );
        let created = json(records.created.as_ref().unwrap().value);
        assert_eq!((created["before"].clone(), created["after"]["id"].clone()), (serde_json::Value::Null, serde_json::json!("9")));
        assert_eq!(created["transaction"]["total_order"], 2);
        assert_eq!(json(records.change.value)["transaction"]["total_order"], 1);
        assert_eq!(json(encoder.commit().unwrap().value)["event_count"], 2);

        let mut pgkafka = encoder_with(&[], &OutputFormat::Pgkafka);
        pgkafka.encode(&wire::relation(7, "sales", "orders", &["id", "org", "doc"]), Lsn(0), Lsn(1)).unwrap();
        pgkafka.begin(Lsn(0x500), 0, 42);
        let (k, op, _) = record(pgkafka.encode(&message, Lsn(0), Lsn(1)).unwrap());
        assert_eq!((k, op.op.kind()), (key(&["9"]), pgkafka_common::OpKind::Update));
    }

    /// A snapshot row is written by the table's format: in pgkafka's, the `Insert` a streamed
    /// insert would be at the snapshot's position (one below its WAL point), byte for byte; in
    /// Debezium's, a read event (`op: "r"`) saying which snapshot read it, at that position,
    /// keyed like a change.
    #[test]
    fn snapshot_rows_are_inserts_or_debezium_read_events() {
        use crate::producer::{DebeziumOptions, OutputFormat};
        let columns = [ColumnType::new("id", 23, -1), ColumnType::new("org", 23, -1), ColumnType::new("doc", 25, -1)];
        let row = [Some("1".to_owned()), Some("42".to_owned()), None];
        let pgkafka = encoder_with(&["org"], &OutputFormat::Pgkafka);
        let route = pgkafka.routes.get("sales", "orders").unwrap().clone();
        let mut rows = pgkafka.snapshot_rows(&route, &columns).unwrap();
        let record = rows.write(&row, SnapshotRead::Initial, Lsn(0x500), 3, 1_700_000_000_000).unwrap();
        assert_eq!((record.topic, record.key, record.timestamp_ms), ("orders_topic", &key(&["42"])[..], 1_700_000_000_000));
        let op = ReplicationOp {
            table_name: "sales.orders".into(),
            col_names: vec!["id".into(), "org".into(), "doc".into()],
            lsn: 0x4FF,
            seq_id: 3,
            op: Op::Insert(row.to_vec()),
        };
        assert_eq!(record.value.unwrap(), serde_json::to_vec(&op).unwrap());

        let mut options = DebeziumOptions::new("server");
        options.schemas = false;
        let debezium = encoder_with(&[], &OutputFormat::Debezium(options));
        let mut rows = debezium.snapshot_rows(&route, &columns).unwrap();
        for (read, flag) in [(SnapshotRead::Initial, "true"), (SnapshotRead::Last, "last"), (SnapshotRead::Incremental, "incremental")] {
            let record = rows.write(&row, read, Lsn(0x500), 0, 1_700_000_000_000).unwrap();
            assert_eq!(record.key, br#"{"org":42}"#);
            let event: serde_json::Value = serde_json::from_slice(record.value.unwrap()).unwrap();
            assert_eq!((event["op"].as_str(), event["source"]["snapshot"].as_str()), (Some("r"), Some(flag)));
            assert_eq!((event["before"].clone(), event["after"]["id"].clone()), (serde_json::Value::Null, serde_json::json!(1)));
            assert_eq!((event["source"]["sequence"].as_str(), event["source"]["lsn"].as_u64()), (Some("[\"1279\",\"1279\"]"), Some(0x4FF)));
        }
        let without_key = ColumnType::new("id", 23, -1);
        let error = pgkafka.snapshot_rows(&route, &[without_key]).unwrap_err();
        assert!(error.contains("sales.orders") && error.contains("partition-key"), "{error}");
    }

    /// A snapshot taken at a WAL point (a consistent point, a high watermark: where a record
    /// ends) can be followed directly by the `COMMIT` of a transaction it did not see, which is
    /// streamed at that same LSN. Every row of the snapshot sorts below that transaction's first
    /// change, in pgkafka's positions and in those a consumer reads from Debezium events, and
    /// above a transaction whose commit record started before the point's record.
    #[test]
    fn snapshot_rows_sort_below_a_transaction_committed_right_at_their_point() {
        use crate::producer::{DebeziumOptions, OutputFormat};
        use pgkafka_common::debezium::{self, Decoded, Positions};
        let (at, earlier_commit) = (Lsn(0x500), Lsn(0x4C8));
        let columns = [ColumnType::new("id", 23, -1), ColumnType::new("org", 23, -1), ColumnType::new("doc", 25, -1)];
        let row = [Some("1".to_owned()), Some("42".to_owned()), None];
        let mut options = DebeziumOptions::new("server");
        options.schemas = false;
        for format in [OutputFormat::Pgkafka, OutputFormat::Debezium(options)] {
            // The position a consumer reads from a record value at `offset`.
            let position = |value: &[u8], offset: i64| -> (u64, u64) {
                let op = match format {
                    OutputFormat::Pgkafka => serde_json::from_slice::<ReplicationOp>(value).unwrap(),
                    _ => match debezium::decode(Some(value), offset, Positions::ChangeLsn).unwrap() {
                        Decoded::Change(change) => change.op,
                        other => panic!("{other:?}"),
                    },
                };
                (op.lsn, op.seq_id)
            };
            let mut encoder = encoder_with(&["org"], &format);
            encoder.encode(&wire::relation(7, "sales", "orders", &["id", "org", "doc"]), Lsn(0), Lsn(1)).unwrap();
            let mut streamed = |commit: Lsn, offset: i64| {
                encoder.begin(commit, 0, 1);
                let Encoded::Records(records) =
                    encoder.encode(&wire::insert(7, &[Some("2"), Some("42"), None]), Lsn(0), Lsn(1)).unwrap()
                else {
                    panic!("expected records")
                };
                let value = records.change.value.unwrap().to_vec();
                encoder.commit();
                position(&value, offset)
            };
            let (before, after) = (streamed(earlier_commit, 1), streamed(at, 9));
            let route = encoder.routes.get("sales", "orders").unwrap().clone();
            let mut rows = encoder.snapshot_rows(&route, &columns).unwrap();
            for (seq_id, offset) in [(0, 2), (7, 8)] {
                let value = rows.write(&row, SnapshotRead::Incremental, at, seq_id, 0).unwrap().value.unwrap().to_vec();
                let row_position = position(&value, offset);
                assert!(before < row_position && row_position < after, "{format:?}: {before:?} < {row_position:?} < {after:?}");
            }
        }
    }
}
