//! Writes the rows a snapshot or backfill read as records of their topic's format: the one home
//! of that for the initial snapshot and for backfills, built per table like a streamed relation.
//!
//! A row is an `Insert` at `(lsn = one below the snapshot's WAL point, seq_id)` in pgkafka's
//! format and a read event (`op: "r"`) in the Debezium format, its `source.snapshot` saying which
//! snapshot read it as Debezium does: `"true"` (the last row of an initial snapshot `"last"`) or
//! `"incremental"` for a backfill.
//!
//! Why one below: a snapshot's WAL point (a slot's consistent point, a backfill chunk's high
//! watermark) is where a WAL record ends, and the next record can be the `COMMIT` of a
//! transaction the snapshot did not see. That transaction is streamed at `(lsn = its commit
//! record's start = the point, seq_id = 0, 1, ..)`: rows at the point itself would share its
//! positions, and an idempotent consumer would skip its first changes as re-sends. One below the
//! point lies above every commit record that starts before the point's record (records take
//! more than one byte) and below every one that starts at or after it.

use pgkafka_common::Lsn;

use super::{Change, Encoder, Record, RowOp, Source, ValueFormat};
use crate::producer::routes::TableRoute;

/// A column as its records list it, with its type: `pg_attribute`'s `atttypid` and
/// `atttypmod`, what a Relation message says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ColumnType<'a> {
    pub(crate) name: &'a str,
    pub(crate) type_oid: u32,
    pub(crate) type_modifier: i32,
}

impl<'a> ColumnType<'a> {
    pub(crate) fn new(name: &'a str, type_oid: u32, type_modifier: i32) -> Self {
        Self {
            name,
            type_oid,
            type_modifier,
        }
    }
}

/// The LSN of the rows of a snapshot taken at the WAL point `at`: one below it, so that they sort
/// below a transaction whose commit record starts at `at` (see the module docs).
fn rows_lsn(at: Lsn) -> Lsn {
    Lsn(at.0.saturating_sub(1))
}

/// Which snapshot read a row: Debezium's `source.snapshot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SnapshotRead {
    /// A row of the initial snapshot.
    Initial,
    /// The last row of the initial snapshot.
    Last,
    /// A row of a backfill (Debezium's incremental snapshot).
    Incremental,
}

impl SnapshotRead {
    /// The value of Debezium's `source.snapshot`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "true",
            Self::Last => "last",
            Self::Incremental => "incremental",
        }
    }
}

/// Writes one table's snapshot rows: its records' table name, topic, columns, partition key
/// and format, and reused key and value buffers.
pub(crate) struct SnapshotRows {
    table_name: String,
    topic: String,
    col_names: Vec<String>,
    key_indexes: Vec<usize>,
    format: Box<dyn ValueFormat>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl std::fmt::Debug for SnapshotRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotRows")
            .field("table_name", &self.table_name)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// The writer of snapshot rows of `route`'s table, whose rows have `columns` in order.
    ///
    /// # Errors
    /// A message naming the table when a partition-key column is not among `columns`.
    pub(crate) fn snapshot_rows(
        &self,
        route: &TableRoute,
        columns: &[ColumnType<'_>],
    ) -> Result<SnapshotRows, String> {
        let col_names: Vec<String> = columns.iter().map(|c| c.name.to_owned()).collect();
        let key_indexes = route
            .key_columns
            .iter()
            .map(|key| col_names.iter().position(|c| c == key))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| {
                format!(
                    "table {}: a partition-key column is not among its columns {col_names:?}",
                    route.table_name
                )
            })?;
        let format = self.table_format(route, columns.iter().copied(), &key_indexes);
        Ok(SnapshotRows {
            table_name: route.table_name.clone(),
            topic: route.topic.clone(),
            col_names,
            key_indexes,
            format,
            key: Vec::with_capacity(64),
            value: Vec::with_capacity(512),
        })
    }
}

impl SnapshotRows {
    /// The record of `row`, read by a `read` snapshot at the WAL point `at` as its `seq_id`th
    /// row, written at `timestamp_ms` (milliseconds since the Unix epoch); positioned at
    /// [`rows_lsn`]`(at)`.
    ///
    /// # Errors
    /// A message naming the table and the snapshot's LSN when the row cannot be written in the
    /// topic's format.
    pub(crate) fn write(
        &mut self,
        row: &[Option<String>],
        read: SnapshotRead,
        at: Lsn,
        seq_id: u64,
        timestamp_ms: i64,
    ) -> Result<Record<'_>, String> {
        let position = rows_lsn(at);
        let Self {
            table_name,
            topic,
            col_names,
            key_indexes,
            format,
            key,
            value,
        } = self;
        let cannot = |e: String| {
            format!("cannot write a snapshot row of table {table_name} read at LSN {at}: {e}")
        };
        key.clear();
        format.write_key(row, key_indexes, key).map_err(cannot)?;
        value.clear();
        let op = RowOp {
            table_name,
            col_names,
            lsn: position.0,
            seq_id,
            op: Change::Insert(row),
            source: Source::snapshot_row(read, position, timestamp_ms.saturating_mul(1000)),
        };
        format.write_value(&op, value).map_err(cannot)?;
        Ok(Record {
            table_name,
            topic,
            key,
            value: Some(value),
            timestamp_ms,
        })
    }
}
