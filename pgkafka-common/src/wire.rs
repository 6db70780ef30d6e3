//! The record format pgkafka writes to Kafka: one JSON-encoded [`ReplicationOp`] per row change.

use serde::{Deserialize, Serialize};

/// One row's column values, in the order of [`ReplicationOp::col_names`].
///
/// Each value is the text output of the column's type, as PostgreSQL sends it to logical
/// replication (what `SELECT col::text` prints, except that `boolean` is `t`/`f`); SQL `NULL` is
/// `None`.
pub type Row = Vec<Option<String>>;

/// One row change, as published to Kafka.
///
/// Serialized with `serde_json`, field names and shapes exactly as shown:
///
/// ```
/// use pgkafka_common::{Op, ReplicationOp};
///
/// let op = ReplicationOp {
///     table_name: "inventory".into(),
///     col_names: vec!["id".into(), "note".into()],
///     lsn: 23_456_789,
///     seq_id: 0,
///     op: Op::Insert(vec![Some("1".into()), None]),
/// };
/// assert_eq!(
///     serde_json::to_string(&op)?,
///     r#"{"table_name":"inventory","col_names":["id","note"],"lsn":23456789,"seq_id":0,"op":{"Insert":["1",null]}}"#
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReplicationOp {
    /// The table the change happened in. Tables of the `public` schema are written by name alone
    /// (`inventory`); others as `schema.table`.
    pub table_name: String,
    /// Column names, in the order the row values appear.
    pub col_names: Vec<String>,
    /// The commit LSN of the transaction that made the change. See [`crate::Lsn`] to print it.
    pub lsn: u64,
    /// Position of the change within its transaction: 0 for the first change, then one more for
    /// each following change, across all tables of the transaction.
    pub seq_id: u64,
    /// What happened, with the row values.
    pub op: Op,
}

/// The kind of change, with its row values.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new row.
    Insert(Row),
    /// A changed row: `(old, new)`.
    Update((Row, Row)),
    /// A deleted row: the whole old row.
    Delete(Row),
}

/// The kind of an [`Op`] without its values, for logs, metrics and routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// [`Op::Insert`]
    Insert,
    /// [`Op::Update`]
    Update,
    /// [`Op::Delete`]
    Delete,
}

impl Op {
    /// The kind of this change.
    #[must_use]
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Insert(_) => OpKind::Insert,
            Op::Update(_) => OpKind::Update,
            Op::Delete(_) => OpKind::Delete,
        }
    }

    /// The row that identifies the changed record: the new row of an insert or update, the old
    /// row of a delete. Partition keys are read from it.
    #[must_use]
    pub fn key_row(&self) -> &Row {
        match self {
            Op::Insert(row) | Op::Delete(row) => row,
            Op::Update((_, new)) => new,
        }
    }
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpKind::Insert => "insert",
            OpKind::Update => "update",
            OpKind::Delete => "delete",
        })
    }
}

impl ReplicationOp {
    /// The value of column `name` in `row`, if the column exists.
    ///
    /// Returns `None` when there is no such column, `Some(None)` for SQL `NULL`.
    #[must_use]
    pub fn value<'a>(&self, row: &'a Row, name: &str) -> Option<Option<&'a str>> {
        let index = self.col_names.iter().position(|c| c == name)?;
        row.get(index).map(Option::as_deref)
    }
}

/// Where the changes of one table go: a Kafka topic, and the columns whose values form the
/// message key (so all changes of one key land in one partition, in order).
///
/// An empty `partition_key` means the table's primary-key columns.
///
/// ```
/// use std::collections::HashMap;
/// use pgkafka_common::TopicInfo;
///
/// let topic_map: HashMap<String, TopicInfo> = serde_json::from_value(serde_json::json!({
///     "inventory_table": { "name": "inventory_topic", "partition_key": ["organization_id"] },
/// }))?;
/// assert_eq!(topic_map["inventory_table"].name, "inventory_topic");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicInfo {
    /// The Kafka topic.
    pub name: String,
    /// Columns whose values form the Kafka message key, in order.
    pub partition_key: Vec<String>,
}

impl TopicInfo {
    /// A topic keyed by the given columns.
    ///
    /// ```
    /// # use pgkafka_common::TopicInfo;
    /// let info = TopicInfo::new("orders", ["customer_id"]);
    /// assert_eq!(info.partition_key, ["customer_id"]);
    /// ```
    pub fn new<I, S>(name: impl Into<String>, partition_key: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self { name: name.into(), partition_key: partition_key.into_iter().map(Into::into).collect() }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn roundtrip(json: &str) {
        let op: ReplicationOp = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_string(&op).unwrap(), json, "re-encoding changed the bytes");
    }

    #[test]
    fn insert_matches_the_earlier_library_byte_for_byte() {
        roundtrip(r#"{"table_name":"t","col_names":["id","v"],"lsn":23456789,"seq_id":0,"op":{"Insert":["1",null]}}"#);
    }

    #[test]
    fn update_is_a_tuple_of_old_and_new_rows() {
        let json = r#"{"table_name":"t","col_names":["id","v"],"lsn":1,"seq_id":7,"op":{"Update":[["1","a"],["1","b"]]}}"#;
        roundtrip(json);
        let op: ReplicationOp = serde_json::from_str(json).unwrap();
        assert_eq!(
            op.op,
            Op::Update((vec![Some("1".into()), Some("a".into())], vec![Some("1".into()), Some("b".into())]))
        );
    }

    #[test]
    fn delete_carries_the_old_row() {
        roundtrip(r#"{"table_name":"t","col_names":["id"],"lsn":1,"seq_id":0,"op":{"Delete":["1"]}}"#);
    }

    #[test]
    fn max_lsn_unicode_quotes_and_nulls_survive() {
        roundtrip(concat!(
            r#"{"table_name":"Ünïcödé \"tbl\"","col_names":["a","b\\c","ä"],"lsn":18446744073709551615,"#,
            r#""seq_id":18446744073709551615,"op":{"Update":[[null,"{\"x\": [1,2]}","日本語 ✓"],["","\n\t",null]]}}"#
        ));
    }

    #[test]
    fn encoding_is_stable_for_values_built_in_code() {
        let op = ReplicationOp {
            table_name: "sales.orders".into(),
            col_names: vec!["id".into(), "note".into()],
            lsn: u64::MAX,
            seq_id: 3,
            op: Op::Delete(vec![Some("42".into()), Some("say \"hi\", {ok}".into())]),
        };
        assert_eq!(
            serde_json::to_string(&op).unwrap(),
            r#"{"table_name":"sales.orders","col_names":["id","note"],"lsn":18446744073709551615,"seq_id":3,"op":{"Delete":["42","say \"hi\", {ok}"]}}"#
        );
    }

    #[test]
    fn topic_info_matches_the_seed_json() {
        let info: TopicInfo =
            serde_json::from_str(r#"{"name":"inventory_topic","partition_key":["organization_id"]}"#).unwrap();
        assert_eq!(info, TopicInfo::new("inventory_topic", ["organization_id"]));
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"name":"inventory_topic","partition_key":["organization_id"]}"#
        );
    }

    #[test]
    fn value_looks_up_by_column_name() {
        let op: ReplicationOp = serde_json::from_str(
            r#"{"table_name":"t","col_names":["id","v"],"lsn":1,"seq_id":0,"op":{"Insert":["1",null]}}"#,
        )
        .unwrap();
        let row = op.op.key_row();
        assert_eq!(op.value(row, "id"), Some(Some("1")));
        assert_eq!(op.value(row, "v"), Some(None));
        assert_eq!(op.value(row, "missing"), None);
    }
}
