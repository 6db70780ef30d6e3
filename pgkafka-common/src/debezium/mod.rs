//! Decodes the record values of Debezium's PostgreSQL connector (Kafka Connect JSON, with or
//! without schemas) into pgkafka's [`ReplicationOp`], so pgkafka's consumers read Debezium topics.
//!
//! [`decode`] takes a record's value and its offset and returns a [`Decoded::Change`] (an op of
//! `c`reate, `u`pdate, `d`elete or snapshot `r`ead, the last flagged as a snapshot row) or a
//! [`Decoded::Skipped`] record (a tombstone, a transaction `BEGIN`/`END`, a heartbeat, a logical
//! decoding message), which carries no row change.
//!
//! # Values
//!
//! Each column value becomes the PostgreSQL text form pgoutput sends (what pgkafka's own producer
//! writes), so `#[derive(ReplicatedTable)]` types decode the same from either format. With
//! schemas (`value.converter.schemas.enable=true`, the `{"schema": .., "payload": ..}` shape) the
//! schema's semantic types turn Debezium's encodings back: `io.debezium.time.Date` days into
//! `2024-05-01`, `MicroTimestamp` microseconds into `2024-05-01 12:00:00.5`, `ZonedTimestamp`
//! into `2024-05-01 12:00:00+00`, `org.apache.kafka.connect.data.Decimal` and
//! `VariableScaleDecimal` into every digit of the `numeric`, base64 `bytes` into `\x..`, arrays
//! into `{..}`, booleans into `t`/`f`. Column order is the schema's field order.
//!
//! Without schemas the types are gone: strings pass as they are, numbers print as JSON prints
//! them, booleans become `t`/`f`, and columns keep the order of the event's `after` (or
//! `before`) object. That is exact for text, integers, booleans, `uuid` and `json`; temporal,
//! `numeric` and `bytea` columns then arrive in Debezium's encoding (configure
//! `time.precision.mode=isostring`, `decimal.handling.mode=string` and
//! `binary.handling.mode=hex` on the connector to get parseable text for them, or enable
//! schemas).
//!
//! # Positions
//!
//! See [`position`] for what `lsn` and `seq_id` are and why they increase in Debezium's emit
//! order.

mod value;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use self::value::{is_unavailable, to_pg_text, FieldSchema};
use crate::{ident, Op, ReplicationOp, Row};

/// What a Debezium record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A row change.
    Change(Change),
    /// A record without a row change, to be passed over.
    Skipped(Skipped),
}

/// A row change read from a Debezium event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// The change as pgkafka's op.
    pub op: ReplicationOp,
    /// Whether it is a snapshot row (`op: "r"`), handed on as an insert.
    pub snapshot: bool,
}

/// Why a record carries no row change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// A `null` value: the tombstone Debezium writes after a delete for log compaction.
    Tombstone,
    /// A transaction `BEGIN` or `END` record (`provide.transaction.metadata=true`).
    TransactionBoundary,
    /// A heartbeat (`heartbeat.interval.ms`).
    Heartbeat,
    /// A logical decoding message (`op: "m"`, from `pg_logical_emit_message`).
    Message,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skipped::Tombstone => "tombstone",
            Skipped::TransactionBoundary => "transaction boundary",
            Skipped::Heartbeat => "heartbeat",
            Skipped::Message => "logical decoding message",
        })
    }
}

/// Which events [`decode`] gives a position to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Positions {
    /// Change events must carry a `transaction` block (`provide.transaction.metadata=true`): its
    /// `total_order` is the `seq_id`. An event without one is an error. The default: every event
    /// of a transaction has a position of its own. Debezium before 3.7 numbers the rest of a
    /// transaction from 1 again when it restarts inside it (fixed by debezium/dbz#633), so
    /// those events would sit below positions already stored.
    #[default]
    TransactionOrder,
    /// Change events take `source.lsn` (the change's own WAL position) as their `seq_id`, with
    /// or without a `transaction` block. It does not depend on Debezium's counters, so it is the
    /// same after any Debezium restart; but the rows of one `COPY` (or any multi-insert) share
    /// that LSN, and an idempotent consumer would apply only the first of them.
    ChangeLsn,
}

/// Why a value is not a usable Debezium event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DebeziumError {
    /// The value is JSON but not shaped like any Debezium record (no `payload`, `op`, `source`,
    /// `status` or lone `ts_ms`): most likely not a Debezium topic at all.
    #[error("not a Debezium record: {0}")]
    NotDebezium(String),
    /// A Debezium record pgkafka cannot turn into an op; the message says what and where.
    #[error("Debezium event{at}: {reason}", at = table.as_deref().map(|t| format!(" of table {t}")).unwrap_or_default())]
    Invalid {
        /// The event's table, when it got that far.
        table: Option<String>,
        /// What is wrong.
        reason: String,
    },
}

impl DebeziumError {
    fn invalid(table: Option<&str>, reason: impl Into<String>) -> Self {
        Self::Invalid { table: table.map(str::to_owned), reason: reason.into() }
    }
}

/// Decodes a record's value (`None` for a tombstone), read at `offset` of its partition.
///
/// ```
/// use pgkafka_common::debezium::{decode, Decoded, Positions};
/// use pgkafka_common::Op;
///
/// let value = br#"{"before":null,"after":{"id":1,"name":"Anne"},
///   "source":{"connector":"postgresql","schema":"public","table":"customers","lsn":24023128,
///             "sequence":"[\"24023119\",\"24023128\"]","txId":555},
///   "op":"c","ts_ms":1559033904863,
///   "transaction":{"id":"555:24023128","total_order":1,"data_collection_order":1}}"#;
/// let Decoded::Change(change) = decode(Some(value), 42, Positions::TransactionOrder)? else { unreachable!() };
/// assert_eq!(change.op.table_name, "customers");
/// assert_eq!(change.op.col_names, ["id", "name"]);
/// assert_eq!(change.op.op, Op::Insert(vec![Some("1".into()), Some("Anne".into())]));
/// assert_eq!((change.op.lsn, change.op.seq_id), (24023120, 0));
/// # Ok::<(), pgkafka_common::debezium::DebeziumError>(())
/// ```
///
/// # Errors
/// [`DebeziumError::NotDebezium`] when the value is not a Debezium record at all (not JSON, or
/// JSON of another shape), [`DebeziumError::Invalid`] when it is one that cannot become an op
/// (a `TRUNCATE`, a value without a PostgreSQL text form, a missing position).
pub fn decode(value: Option<&[u8]>, offset: i64, positions: Positions) -> Result<Decoded, DebeziumError> {
    let Some(bytes) = value else { return Ok(Decoded::Skipped(Skipped::Tombstone)) };
    let top: Envelope = serde_json::from_slice(bytes).map_err(|e| DebeziumError::NotDebezium(e.to_string()))?;
    let (payload, schema) = match top.payload {
        Some(raw) => {
            let payload: Option<Envelope> =
                serde_json::from_str(raw.get()).map_err(|e| DebeziumError::NotDebezium(e.to_string()))?;
            match payload {
                None => return Ok(Decoded::Skipped(Skipped::Tombstone)),
                Some(payload) => (payload, top.schema),
            }
        }
        None => (top, None),
    };
    decode_payload(payload, schema.as_ref(), offset, positions)
}

/// The fields of a Debezium record value, of whichever kind; `payload` and `schema` only at the
/// top of the schema'd shape.
#[derive(Deserialize, Default)]
struct Envelope {
    schema: Option<Value>,
    /// `Some` also for `"payload": null` (a tombstone in the schema'd shape).
    #[serde(default, deserialize_with = "present")]
    payload: Option<Box<serde_json::value::RawValue>>,
    before: Option<OrderedRow>,
    after: Option<OrderedRow>,
    source: Option<Source>,
    op: Option<String>,
    transaction: Option<TransactionBlock>,
    status: Option<String>,
    ts_ms: Option<Value>,
}

#[derive(Deserialize, Default)]
struct Source {
    schema: Option<String>,
    table: Option<String>,
    lsn: Option<u64>,
    sequence: Option<String>,
}

#[derive(Deserialize)]
struct TransactionBlock {
    total_order: Option<Value>,
}

/// A JSON object's members in the order they were written (`serde_json::Map` sorts them).
struct OrderedRow(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedRow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = OrderedRow;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a row object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<OrderedRow, M::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(OrderedRow(members))
            }
        }
        deserializer.deserialize_map(RowVisitor)
    }
}

impl OrderedRow {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

fn decode_payload(
    payload: Envelope,
    schema: Option<&Value>,
    offset: i64,
    positions: Positions,
) -> Result<Decoded, DebeziumError> {
    let Some(op) = payload.op.as_deref() else {
        if payload.status.is_some() {
            return Ok(Decoded::Skipped(Skipped::TransactionBoundary));
        }
        if payload.ts_ms.is_some() && payload.source.is_none() && payload.before.is_none() && payload.after.is_none() {
            return Ok(Decoded::Skipped(Skipped::Heartbeat));
        }
        return Err(DebeziumError::NotDebezium(
            "no \"payload\", \"op\", \"status\" or heartbeat \"ts_ms\" field".into(),
        ));
    };
    let source = payload
        .source
        .as_ref()
        .ok_or_else(|| DebeziumError::invalid(None, format!("op {op:?} without a \"source\"")))?;
    if op == "m" {
        return Ok(Decoded::Skipped(Skipped::Message));
    }
    let (Some(schema_name), Some(table)) = (source.schema.as_deref(), source.table.as_deref()) else {
        return Err(DebeziumError::invalid(None, "source.schema or source.table is missing"));
    };
    let table_name = ident::table_name(schema_name, table);
    let invalid = |reason: String| DebeziumError::invalid(Some(&table_name), reason);
    if op == "t" {
        return Err(invalid(
            "a TRUNCATE (op \"t\"): pgkafka's ops have no truncate; drop truncate from the connector's \
             skipped.operations (the default skips it) or handle the table's reset yourself"
                .into(),
        ));
    }
    let columns = schema.map(row_schema).unwrap_or_default();
    let total_order = payload.transaction.as_ref().and_then(|t| t.total_order.as_ref());
    let (lsn, seq_id) = position(op, &source.as_ref(), total_order, offset, positions).map_err(invalid)?;
    let col_names = column_names(&columns, payload.before.as_ref(), payload.after.as_ref());
    let row = |r: Option<&OrderedRow>, fill: Option<&Row>| build_row(&col_names, &columns, r, fill).map_err(invalid);
    let (op, snapshot) = match op {
        "c" | "r" => {
            let after = payload.after.as_ref().ok_or_else(|| invalid(format!("op {op:?} without \"after\"")))?;
            (Op::Insert(row(Some(after), None)?), op == "r")
        }
        "u" => {
            let after = payload.after.as_ref().ok_or_else(|| invalid("op \"u\" without \"after\"".into()))?;
            let old = row(payload.before.as_ref(), None)?;
            let new = row(Some(after), Some(&old))?;
            (Op::Update((old, new)), false)
        }
        "d" => (Op::Delete(row(payload.before.as_ref(), None)?), false),
        other => return Err(invalid(format!("unknown op {other:?}"))),
    };
    Ok(Decoded::Change(Change { op: ReplicationOp { table_name, col_names, lsn, seq_id, op }, snapshot }))
}

/// The column schemas of the row (the `after` field's struct schema, else `before`'s).
fn row_schema(schema: &Value) -> Vec<FieldSchema> {
    let fields = schema.get("fields").and_then(Value::as_array);
    let row = |name: &str| {
        fields?
            .iter()
            .find(|f| f.get("field").and_then(Value::as_str) == Some(name))?
            .get("fields")?
            .as_array()
            .cloned()
    };
    row("after").or_else(|| row("before")).unwrap_or_default().iter().map(FieldSchema::from_json).collect()
}

/// Column names: the schema's order, else the order of `after`, then columns only `before` has.
fn column_names(columns: &[FieldSchema], before: Option<&OrderedRow>, after: Option<&OrderedRow>) -> Vec<String> {
    if !columns.is_empty() {
        return columns.iter().map(|c| c.name.clone()).collect();
    }
    let mut names: Vec<String> = after.map(|r| r.0.iter().map(|(k, _)| k.clone()).collect()).unwrap_or_default();
    for (name, _) in before.map(|r| r.0.as_slice()).unwrap_or_default() {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// The row's values in `col_names` order. A column the event does not carry (an old row under
/// `REPLICA IDENTITY DEFAULT`) is `NULL`. Debezium's placeholder for an unchanged TOASTed value
/// takes the old row's value (`fill`), and is an error when there is none.
fn build_row(
    col_names: &[String],
    columns: &[FieldSchema],
    row: Option<&OrderedRow>,
    fill: Option<&Row>,
) -> Result<Row, String> {
    col_names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let Some(value) = row.and_then(|r| r.get(name)) else { return Ok(None) };
            if is_unavailable(value) {
                return match fill.and_then(|old| old.get(i)).cloned().flatten() {
                    Some(old) => Ok(Some(old)),
                    None => Err(format!(
                        "column {name} holds Debezium's unavailable-value placeholder (an unchanged TOASTed value) \
                         and the old row does not have it: set REPLICA IDENTITY FULL on the table"
                    )),
                };
            }
            to_pg_text(value, columns.get(i)).map_err(|e| format!("column {name}: {e}"))
        })
        .collect()
}

/// The `(lsn, seq_id)` of a change event read at `offset`.
///
/// Debezium numbers nothing the way pgkafka does (`lsn` the commit LSN of the change's
/// transaction, `seq_id` its index in it): `source.lsn` is the LSN of the change itself, and the
/// changes of transactions that ran at the same time interleave in the WAL, so it goes back and
/// forth in commit order, which is the order Debezium emits. What does increase is
/// `source.sequence`'s first element, `lastCommitLsn`: the end LSN of the last transaction whose
/// `COMMIT` Debezium processed before this event (`null` before the first one, read as 0). It
/// changes only between transactions, and always upwards. So:
///
/// - a streamed change (`c`, `u`, `d`) of a transaction T: `lsn = lastCommitLsn + 1` (the first
///   WAL position T's changes could follow; equal for all of T's changes) and
///   `seq_id = transaction.total_order - 1` (0 for T's first change, like pgkafka's own seq_id;
///   [`Positions::ChangeLsn`] takes `source.lsn`, which grows within a transaction too, and
///   stands still only between rows of one multi-insert).
/// - a snapshot row (`r`): `lsn = lastCommitLsn` and `seq_id = offset`, the record's Kafka
///   offset. Snapshot rows have no transaction block and all share one `source.lsn`; nothing in
///   them tells them apart but their place in the topic.
///
/// Why this increases strictly along a partition (in Debezium's emit order, which Kafka keeps
/// per partition), for events e1 before e2 with `C` their `lastCommitLsn`:
/// - both streamed, one transaction: same `C`, `total_order` grows by one per event.
/// - both streamed, T1 before T2: Debezium processed T1's `COMMIT` between them, so
///   `C(e2) >= end(T1) > C(e1)` (a commit record ends after every earlier one), hence
///   `C(e1) + 1 < C(e2) + 1`.
/// - both snapshot rows: `C(e1) <= C(e2)` and the offset grows.
/// - a snapshot row before a streamed change: `C(e1) <= C(e2) < C(e2) + 1`.
/// - a streamed change before a snapshot row (a blocking or incremental snapshot later on):
///   `C(e1) + 1 <= C(e2)` holds when a `COMMIT` was processed between them, i.e. unless the
///   snapshot chunk was emitted inside e1's transaction. Debezium emits an incremental chunk
///   while processing the watermark insert into its signalling table, inside that (its own)
///   transaction, whose rows go to the signalling table's topic, not the data topics.
///
/// Re-sends are the same events: a Kafka redelivery has the same offset and value, and after a
/// Debezium restart its offsets restore `lastCommitLsn` (`lsn_commit`) and, from Debezium 3.7
/// on (debezium/dbz#633), the counters of a transaction it restarts inside of, so re-emitted
/// events carry the same values. An earlier Debezium restarting inside a transaction numbers
/// its remaining events from 1 again: under [`Positions::TransactionOrder`] they would be taken
/// for re-sends; [`Positions::ChangeLsn`] does not depend on those counters. Snapshot rows re-read by a repeated
/// snapshot are new records at new offsets and are applied again (a snapshot row is a read of the
/// current row, so applying it twice leaves the same state).
///
/// A connector started afresh (new offsets) counts from `lastCommitLsn = null` again: its
/// positions restart below those of the earlier run, which an idempotent consumer must forget.
///
/// # Errors
/// A missing or unreadable `source.sequence` (Debezium before 1.5 does not write it), or a
/// streamed change without a `transaction` block under [`Positions::TransactionOrder`].
pub fn position(
    op: &str,
    source: &SourceRef<'_>,
    total_order: Option<&Value>,
    offset: i64,
    positions: Positions,
) -> Result<(u64, u64), String> {
    let last_commit = last_commit_lsn(source.sequence)?;
    if op == "r" {
        let offset = u64::try_from(offset).map_err(|_| format!("a snapshot row at offset {offset}"))?;
        return Ok((last_commit, offset));
    }
    let lsn = last_commit.saturating_add(1);
    match (total_order, positions) {
        (_, Positions::ChangeLsn) => {
            source.lsn.map(|change| (lsn, change)).ok_or_else(|| "source.lsn is missing".to_owned())
        }
        (Some(order), _) => {
            let order = order
                .as_u64()
                .or_else(|| order.as_str().and_then(|s| s.parse().ok()))
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("transaction.total_order {order} is not a positive integer"))?;
            Ok((lsn, order - 1))
        }
        (None, _) => Err("the event has no \"transaction\" block, so it has no position of its own (the rows of \
                          one COPY share an LSN): set provide.transaction.metadata=true on the Debezium connector, \
                          or choose change-LSN positions (Positions::ChangeLsn), which cannot tell the rows of one COPY apart"
            .to_owned()),
    }
}

/// What [`position`] reads of an event's `source`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceRef<'a> {
    /// `source.sequence`: a JSON array in a string, `["<lastCommitLsn>","<lsn>"]`.
    pub sequence: Option<&'a str>,
    /// `source.lsn`.
    pub lsn: Option<u64>,
}

fn last_commit_lsn(sequence: Option<&str>) -> Result<u64, String> {
    let text = sequence.ok_or("source.sequence is missing (it needs Debezium 1.5 or later)")?;
    let parts: Vec<Option<String>> = serde_json::from_str(text)
        .map_err(|e| format!("source.sequence {text:?} is not a JSON array of strings: {e}"))?;
    match parts.first() {
        None | Some(None) => Ok(0),
        Some(Some(lsn)) => lsn.parse().map_err(|_| format!("source.sequence {text:?}: {lsn:?} is not an LSN")),
    }
}

/// A field that is present, even as `null`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Box<serde_json::value::RawValue>>, D::Error> {
    Box::<serde_json::value::RawValue>::deserialize(deserializer).map(Some)
}

impl Source {
    fn as_ref(&self) -> SourceRef<'_> {
        SourceRef { sequence: self.sequence.as_deref(), lsn: self.lsn }
    }
}

#[cfg(test)]
mod tests;
