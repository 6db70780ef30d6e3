//! The Debezium format: each row change as the Debezium PostgreSQL connector's change event
//! (key and envelope, with or without Kafka Connect schemas), and the transaction-metadata and
//! heartbeat records beside them. Pure: rows in, bytes out.
//!
//! Field names and order follow Debezium's documentation ("Data change events", "Transaction
//! metadata") and its source (`SchemaFactory`, `PostgresSourceInfoStructMaker`, `HeartbeatImpl`);
//! schemas are written as Kafka Connect's `JsonConverter` writes them.

mod json;
pub(crate) mod types;

use std::sync::Arc;

use pgkafka_common::Lsn;

use self::json::push_str;
use self::types::Kind;
use super::{Change, RowOp, ValueFormat};
use crate::producer::format::DebeziumOptions;

/// `source.version`: which producer wrote the event (Debezium writes its own version here).
pub(crate) const VERSION: &str = concat!("pgkafka-", env!("CARGO_PKG_VERSION"));

/// The schema of `source`, as Debezium's PostgreSQL connector documents it.
const SOURCE_SCHEMA: &str = concat!(
    r#"{"type":"struct","fields":["#,
    r#"{"type":"string","optional":false,"field":"version"},"#,
    r#"{"type":"string","optional":false,"field":"connector"},"#,
    r#"{"type":"string","optional":false,"field":"name"},"#,
    r#"{"type":"int64","optional":false,"field":"ts_ms"},"#,
    r#"{"type":"int64","optional":true,"field":"ts_us"},"#,
    r#"{"type":"int64","optional":true,"field":"ts_ns"},"#,
    r#"{"type":"string","optional":true,"name":"io.debezium.data.Enum","version":1,"#,
    r#""parameters":{"allowed":"true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},"#,
    r#""default":"false","field":"snapshot"},"#,
    r#"{"type":"string","optional":false,"field":"db"},"#,
    r#"{"type":"string","optional":true,"field":"sequence"},"#,
    r#"{"type":"string","optional":false,"field":"schema"},"#,
    r#"{"type":"string","optional":false,"field":"table"},"#,
    r#"{"type":"int64","optional":true,"field":"txId"},"#,
    r#"{"type":"int64","optional":true,"field":"lsn"},"#,
    r#"{"type":"int64","optional":true,"field":"xmin"}"#,
    r#"],"optional":false,"name":"io.debezium.connector.postgresql.Source","field":"source"}"#
);

/// The `transaction` block's schema (Debezium's `event.block`).
const TRANSACTION_BLOCK_SCHEMA: &str = concat!(
    r#"{"type":"struct","fields":["#,
    r#"{"type":"string","optional":false,"field":"id"},"#,
    r#"{"type":"int64","optional":false,"field":"total_order"},"#,
    r#"{"type":"int64","optional":false,"field":"data_collection_order"}"#,
    r#"],"optional":true,"name":"event.block","version":1,"field":"transaction"}"#
);

/// A column as the Debezium format writes it.
#[derive(Debug, Clone)]
pub(crate) struct DebeziumColumn {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) optional: bool,
}

/// The Debezium format of one table, built from its latest Relation message: its columns'
/// types and the schemas, written once per relation rather than per record.
#[derive(Debug)]
pub(crate) struct DebeziumTable {
    options: Arc<DebeziumOptions>,
    database: String,
    schema: String,
    table: String,
    columns: Vec<DebeziumColumn>,
    key_indexes: Vec<usize>,
    /// `{"schema":<envelope schema>,"payload":` when schemas are on.
    value_prefix: Option<String>,
    /// `{"schema":<key schema>,"payload":` when schemas are on.
    key_prefix: Option<String>,
}

/// Where a change sits in its transaction, for the `transaction` block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransactionPosition<'a> {
    /// `<xid>:<commit LSN>`, as in the BEGIN and END records.
    pub(crate) id: &'a str,
    /// 1 for the transaction's first event.
    pub(crate) total_order: u64,
    /// 1 for the transaction's first event of this table.
    pub(crate) data_collection_order: u64,
}

impl DebeziumTable {
    /// The format of table `schema.table` of `database` with `columns`, keyed by the columns
    /// at `key_indexes`.
    pub(crate) fn new(
        options: Arc<DebeziumOptions>,
        database: &str,
        schema: &str,
        table: &str,
        columns: Vec<DebeziumColumn>,
        key_indexes: Vec<usize>,
    ) -> Self {
        let mut this = Self {
            options,
            database: database.to_owned(),
            schema: schema.to_owned(),
            table: table.to_owned(),
            columns,
            key_indexes,
            value_prefix: None,
            key_prefix: None,
        };
        if this.options.schemas {
            this.value_prefix = Some(format!(r#"{{"schema":{},"payload":"#, this.envelope_schema()));
            this.key_prefix = Some(format!(r#"{{"schema":{},"payload":"#, this.key_schema()));
        }
        this
    }

    /// `<name>.<schema>.<table>.<suffix>`, each part as Avro names allow.
    fn schema_name(&self, suffix: &str) -> String {
        format!("{}.{}.{}.{suffix}", avro_name(&self.options.name), avro_name(&self.schema), avro_name(&self.table))
    }

    fn fields_schema<'a>(&self, columns: impl Iterator<Item = &'a DebeziumColumn>) -> String {
        let mut out = String::new();
        for (index, column) in columns.enumerate() {
            if index > 0 {
                out.push(',');
            }
            column.kind.push_schema(self.options.decimal_handling, column.optional, &mut out);
            out.push_str(r#","field":"#);
            out.push_str(&serde_json::Value::from(column.name.as_str()).to_string());
            out.push('}');
        }
        out
    }

    fn envelope_schema(&self) -> String {
        let row = self.fields_schema(self.columns.iter());
        let value = self.schema_name("Value");
        let row_field = |field: &str| {
            format!(r#"{{"type":"struct","fields":[{row}],"optional":true,"name":"{value}","field":"{field}"}}"#)
        };
        let mut out = format!(r#"{{"type":"struct","fields":[{},{},{SOURCE_SCHEMA}"#, row_field("before"), row_field("after"));
        out.push_str(concat!(
            r#",{"type":"string","optional":false,"field":"op"}"#,
            r#",{"type":"int64","optional":true,"field":"ts_ms"}"#,
            r#",{"type":"int64","optional":true,"field":"ts_us"}"#,
            r#",{"type":"int64","optional":true,"field":"ts_ns"}"#,
        ));
        if self.options.transaction_metadata {
            out.push(',');
            out.push_str(TRANSACTION_BLOCK_SCHEMA);
        }
        out.push_str(&format!(r#"],"optional":false,"name":"{}"}}"#, self.schema_name("Envelope")));
        out
    }

    fn key_schema(&self) -> String {
        let key_columns = self.key_indexes.iter().filter_map(|&i| self.columns.get(i));
        // Key columns are a primary key or NOT NULL partition-key columns.
        let fields: Vec<DebeziumColumn> = key_columns.map(|c| DebeziumColumn { optional: false, ..c.clone() }).collect();
        format!(
            r#"{{"type":"struct","fields":[{}],"optional":false,"name":"{}"}}"#,
            self.fields_schema(fields.iter()),
            self.schema_name("Key")
        )
    }

    /// Writes `row`'s values of the columns at `indexes` (all when `None`) as a JSON object.
    fn push_row(&self, row: &[Option<String>], indexes: Option<&[usize]>, out: &mut Vec<u8>) -> Result<(), String> {
        out.push(b'{');
        let mut push = |index: usize, first: bool| -> Result<(), String> {
            let (Some(column), Some(value)) = (self.columns.get(index), row.get(index)) else {
                return Err(format!("table {}.{}: a row without column {index}", self.schema, self.table));
            };
            if !first {
                out.push(b',');
            }
            push_str(out, &column.name);
            out.push(b':');
            match value {
                None => out.extend_from_slice(b"null"),
                Some(text) => column.kind.push_value(text, self.options.decimal_handling, out).map_err(|e| {
                    format!("table {}.{}, column {}: {e}", self.schema, self.table, column.name)
                })?,
            }
            Ok(())
        };
        match indexes {
            Some(indexes) => {
                for (n, &index) in indexes.iter().enumerate() {
                    push(index, n == 0)?;
                }
            }
            None => {
                for index in 0..row.len() {
                    push(index, index == 0)?;
                }
            }
        }
        out.push(b'}');
        Ok(())
    }

    fn push_optional_row(&self, row: Option<&[Option<String>]>, out: &mut Vec<u8>) -> Result<(), String> {
        match row {
            Some(row) => self.push_row(row, None, out),
            None => {
                out.extend_from_slice(b"null");
                Ok(())
            }
        }
    }

    fn push_source(&self, op: &RowOp<'_>, out: &mut Vec<u8>) {
        let source = &op.source;
        let commit_us = source.commit_time_micros;
        out.extend_from_slice(br#"{"version":"#);
        push_str(out, VERSION);
        out.extend_from_slice(br#","connector":"postgresql","name":"#);
        push_str(out, &self.options.name);
        out.extend_from_slice(
            format!(
                r#","ts_ms":{},"ts_us":{commit_us},"ts_ns":{},"snapshot":"{}","db":"#,
                commit_us.div_euclid(1000),
                commit_us.saturating_mul(1000),
                source.snapshot.map_or("false", |read| read.as_str())
            )
            .as_bytes(),
        );
        push_str(out, &self.database);
        out.extend_from_slice(br#","sequence":"#);
        let last_commit = source.last_commit_lsn.map_or_else(|| "null".to_owned(), |lsn| format!("\"{}\"", lsn.0));
        push_str(out, &format!("[{last_commit},\"{}\"]", source.change_lsn.0));
        out.extend_from_slice(br#","schema":"#);
        push_str(out, &self.schema);
        out.extend_from_slice(br#","table":"#);
        push_str(out, &self.table);
        out.extend_from_slice(br#","txId":"#);
        out.extend_from_slice(source.xid.map_or_else(|| "null".to_owned(), |xid| xid.to_string()).as_bytes());
        out.extend_from_slice(format!(r#","lsn":{},"xmin":null}}"#, source.change_lsn.0).as_bytes());
    }
}

impl ValueFormat for DebeziumTable {
    fn write_value(&self, op: &RowOp<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        if let Some(prefix) = &self.value_prefix {
            out.extend_from_slice(prefix.as_bytes());
        }
        let (before, after, code) = match op.op {
            Change::Insert(new) => (None, Some(new), if op.source.snapshot.is_some() { "r" } else { "c" }),
            Change::Update(old, new) => (Some(old), Some(new), "u"),
            Change::Delete(old) => (Some(old), None, "d"),
        };
        out.extend_from_slice(br#"{"before":"#);
        self.push_optional_row(before, out)?;
        out.extend_from_slice(br#","after":"#);
        self.push_optional_row(after, out)?;
        out.extend_from_slice(br#","source":"#);
        self.push_source(op, out);
        let now = op.source.now_micros;
        out.extend_from_slice(
            format!(
                r#","op":"{code}","ts_ms":{},"ts_us":{now},"ts_ns":{}"#,
                now.div_euclid(1000),
                now.saturating_mul(1000)
            )
            .as_bytes(),
        );
        if self.options.transaction_metadata {
            out.extend_from_slice(br#","transaction":"#);
            match op.source.transaction {
                Some(tx) => {
                    out.extend_from_slice(br#"{"id":"#);
                    push_str(out, tx.id);
                    out.extend_from_slice(
                        format!(r#","total_order":{},"data_collection_order":{}}}"#, tx.total_order, tx.data_collection_order)
                            .as_bytes(),
                    );
                }
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
        if self.value_prefix.is_some() {
            out.push(b'}');
        }
        Ok(())
    }

    fn write_key(&self, row: &[Option<String>], key_indexes: &[usize], out: &mut Vec<u8>) -> Result<(), String> {
        if let Some(prefix) = &self.key_prefix {
            out.extend_from_slice(prefix.as_bytes());
        }
        self.push_row(row, Some(key_indexes), out)?;
        if self.key_prefix.is_some() {
            out.push(b'}');
        }
        Ok(())
    }

    fn tombstones(&self) -> bool {
        self.options.tombstones
    }

    fn debezium(&self) -> Option<&DebeziumTable> {
        Some(self)
    }
}

impl DebeziumTable {
    /// The settings this table is written with.
    pub(crate) fn options(&self) -> &Arc<DebeziumOptions> {
        &self.options
    }

    /// `schema.table`: Debezium's data collection name in transaction records.
    pub(crate) fn data_collection(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// A transaction boundary record's end: the events written and their count per table.
#[derive(Debug)]
pub(crate) struct TransactionEnd<'a> {
    pub(crate) event_count: u64,
    pub(crate) data_collections: &'a [(String, u64)],
}

/// Writes a BEGIN (`end` is `None`) or END record of transaction `id` at `ts_ms`.
pub(crate) fn transaction_record(
    options: &DebeziumOptions,
    id: &str,
    ts_ms: i64,
    end: Option<&TransactionEnd<'_>>,
    key: &mut Vec<u8>,
    value: &mut Vec<u8>,
) {
    if options.schemas {
        key.extend_from_slice(concat!(
            r#"{"schema":{"type":"struct","fields":[{"type":"string","optional":false,"field":"id"}],"#,
            r#""optional":false,"name":"io.debezium.connector.common.TransactionMetadataKey","version":1},"payload":"#
        ).as_bytes());
        value.extend_from_slice(concat!(
            r#"{"schema":{"type":"struct","fields":["#,
            r#"{"type":"string","optional":false,"field":"status"},"#,
            r#"{"type":"string","optional":false,"field":"id"},"#,
            r#"{"type":"int64","optional":false,"field":"ts_ms"},"#,
            r#"{"type":"int64","optional":true,"field":"event_count"},"#,
            r#"{"type":"array","items":{"type":"struct","fields":["#,
            r#"{"type":"string","optional":false,"field":"data_collection"},"#,
            r#"{"type":"int64","optional":false,"field":"event_count"}],"#,
            r#""optional":true,"name":"event.collection","version":1},"optional":true,"field":"data_collections"}"#,
            r#"],"optional":false,"name":"io.debezium.connector.common.TransactionMetadataValue","version":1},"payload":"#
        ).as_bytes());
    }
    key.extend_from_slice(br#"{"id":"#);
    push_str(key, id);
    key.push(b'}');
    value.extend_from_slice(if end.is_some() { br#"{"status":"END","id":"# } else { br#"{"status":"BEGIN","id":"# });
    push_str(value, id);
    value.extend_from_slice(format!(r#","ts_ms":{ts_ms},"event_count":"#).as_bytes());
    match end {
        None => value.extend_from_slice(br#"null,"data_collections":null}"#),
        Some(end) => {
            value.extend_from_slice(format!(r#"{},"data_collections":["#, end.event_count).as_bytes());
            for (index, (collection, count)) in end.data_collections.iter().enumerate() {
                if index > 0 {
                    value.push(b',');
                }
                value.extend_from_slice(br#"{"data_collection":"#);
                push_str(value, collection);
                value.extend_from_slice(format!(r#","event_count":{count}}}"#).as_bytes());
            }
            value.extend_from_slice(b"]}");
        }
    }
    if options.schemas {
        key.push(b'}');
        value.push(b'}');
    }
}

/// Writes a heartbeat record: Debezium's key (`serverName`) and value (`ts_ms`), and the
/// position confirmed to the slot as `lsn` (pgkafka's addition; Debezium keeps it in Kafka
/// Connect's offsets instead).
pub(crate) fn heartbeat_record(options: &DebeziumOptions, confirmed: Lsn, ts_ms: i64, key: &mut Vec<u8>, value: &mut Vec<u8>) {
    if options.schemas {
        key.extend_from_slice(concat!(
            r#"{"schema":{"type":"struct","fields":[{"type":"string","optional":false,"field":"serverName"}],"#,
            r#""optional":false,"name":"io.debezium.connector.common.ServerNameKey","version":1},"payload":"#
        ).as_bytes());
        value.extend_from_slice(concat!(
            r#"{"schema":{"type":"struct","fields":[{"type":"int64","optional":false,"field":"ts_ms"},"#,
            r#"{"type":"int64","optional":true,"field":"lsn"}],"#,
            r#""optional":false,"name":"io.debezium.connector.common.Heartbeat","version":1},"payload":"#
        ).as_bytes());
    }
    key.extend_from_slice(br#"{"serverName":"#);
    push_str(key, &options.name);
    key.push(b'}');
    value.extend_from_slice(format!(r#"{{"ts_ms":{ts_ms},"lsn":{}}}"#, confirmed.0).as_bytes());
    if options.schemas {
        key.push(b'}');
        value.push(b'}');
    }
}

/// A name part as Avro allows it (Debezium's schema name adjustment): letters, digits and
/// `_`, not starting with a digit; anything else becomes `_`.
fn avro_name(part: &str) -> String {
    part.chars()
        .enumerate()
        .map(|(index, c)| if c.is_ascii_alphabetic() || c == '_' || (index > 0 && c.is_ascii_digit()) { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::producer::encode::Source;
    use serde_json::{json, Value};

    fn customers(options: DebeziumOptions) -> DebeziumTable {
        let column = |name: &str, kind| DebeziumColumn { name: name.into(), kind, optional: false };
        DebeziumTable::new(
            Arc::new(options),
            "postgres",
            "public",
            "customers",
            vec![column("id", Kind::Int32), column("first_name", Kind::Text), column("last_name", Kind::Text), column("email", Kind::Text)],
            vec![0],
        )
    }

    fn row(values: &[&str]) -> Vec<Option<String>> {
        values.iter().map(|v| Some((*v).to_owned())).collect()
    }

    fn source() -> Source<'static> {
        Source {
            xid: Some(555),
            commit_time_micros: 1_559_033_904_863_123,
            change_lsn: Lsn(24_023_128),
            last_commit_lsn: Some(Lsn(24_023_119)),
            snapshot: None,
            now_micros: 1_559_033_904_863_841,
            transaction: None,
        }
    }

    fn value(table: &DebeziumTable, change: Change<'_>, source: Source<'_>) -> Value {
        let op = RowOp { table_name: "customers", col_names: &[], lsn: 0, seq_id: 0, op: change, source };
        let mut out = Vec::new();
        table.write_value(&op, &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_create_event_has_the_documented_envelope_and_source() {
        let mut options = DebeziumOptions::new("PostgreSQL_server");
        options.schemas = false;
        let table = customers(options);
        let after = row(&["1", "Anne", "Kretchmar", "annek@noanswer.org"]);
        let event = value(&table, Change::Insert(&after), source());
        assert_eq!(
            event,
            json!({
                "before": null,
                "after": {"id": 1, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"},
                "source": {
                    "version": VERSION, "connector": "postgresql", "name": "PostgreSQL_server",
                    "ts_ms": 1_559_033_904_863i64, "ts_us": 1_559_033_904_863_123i64, "ts_ns": 1_559_033_904_863_123_000i64,
                    "snapshot": "false", "db": "postgres", "sequence": "[\"24023119\",\"24023128\"]",
                    "schema": "public", "table": "customers", "txId": 555, "lsn": 24_023_128, "xmin": null
                },
                "op": "c", "ts_ms": 1_559_033_904_863i64, "ts_us": 1_559_033_904_863_841i64, "ts_ns": 1_559_033_904_863_841_000i64
            })
        );
        let mut key = Vec::new();
        table.write_key(&after, &[0], &mut key).unwrap();
        assert_eq!(key, br#"{"id":1}"#);
        let read = value(&table, Change::Insert(&after), Source { snapshot: Some(crate::producer::encode::SnapshotRead::Initial), ..source() });
        assert_eq!((read["op"].as_str(), read["source"]["snapshot"].as_str()), (Some("r"), Some("true")));
        let backfilled = value(&table, Change::Insert(&after), Source { snapshot: Some(crate::producer::encode::SnapshotRead::Incremental), ..source() });
        assert_eq!((backfilled["op"].as_str(), backfilled["source"]["snapshot"].as_str()), (Some("r"), Some("incremental")));
    }

    #[test]
    fn with_schemas_each_key_and_value_is_schema_and_payload() {
        let mut options = DebeziumOptions::new("PostgreSQL_server");
        options.transaction_metadata = true;
        let table = customers(options);
        let old = row(&["1", "Anne", "Kretchmar", "annek@noanswer.org"]);
        let position = TransactionPosition { id: "555:24023200", total_order: 2, data_collection_order: 1 };
        let event = value(&table, Change::Delete(&old), Source { transaction: Some(position), ..source() });
        let schema = &event["schema"];
        assert_eq!(schema["name"], "PostgreSQL_server.public.customers.Envelope");
        let fields: Vec<&str> = schema["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
        assert_eq!(fields, ["before", "after", "source", "op", "ts_ms", "ts_us", "ts_ns", "transaction"]);
        assert_eq!(schema["fields"][0]["name"], "PostgreSQL_server.public.customers.Value");
        assert_eq!(schema["fields"][0]["fields"][0], json!({"type": "int32", "optional": false, "field": "id"}));
        assert_eq!(event["payload"]["op"], "d");
        assert_eq!(event["payload"]["after"], Value::Null);
        assert_eq!(event["payload"]["transaction"], json!({"id": "555:24023200", "total_order": 2, "data_collection_order": 1}));
        let mut key = Vec::new();
        table.write_key(&old, &[0], &mut key).unwrap();
        let key: Value = serde_json::from_slice(&key).unwrap();
        assert_eq!(
            key,
            json!({"schema": {"type": "struct", "fields": [{"type": "int32", "optional": false, "field": "id"}],
                              "optional": false, "name": "PostgreSQL_server.public.customers.Key"},
                   "payload": {"id": 1}})
        );
    }

    #[test]
    fn a_value_that_cannot_be_converted_names_table_and_column() {
        let table = customers(DebeziumOptions::new("s"));
        let bad = row(&["one", "a", "b", "c"]);
        let op = RowOp { table_name: "customers", col_names: &[], lsn: 0, seq_id: 0, op: Change::Insert(&bad), source: source() };
        let error = table.write_value(&op, &mut Vec::new()).unwrap_err();
        assert!(error.contains("table public.customers, column id: \"one\" is not an integer"), "{error}");
    }

    #[test]
    fn transaction_and_heartbeat_records_have_debeziums_fields() {
        let mut options = DebeziumOptions::new("server");
        options.schemas = false;
        let (mut key, mut value) = (Vec::new(), Vec::new());
        transaction_record(&options, "571:53195832", 7, None, &mut key, &mut value);
        assert_eq!(String::from_utf8(key).unwrap(), r#"{"id":"571:53195832"}"#);
        assert_eq!(
            String::from_utf8(value).unwrap(),
            r#"{"status":"BEGIN","id":"571:53195832","ts_ms":7,"event_count":null,"data_collections":null}"#
        );
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let counts = [("s1.a".to_owned(), 1), ("s2.a".to_owned(), 1)];
        transaction_record(&options, "571:53195832", 8, Some(&TransactionEnd { event_count: 2, data_collections: &counts }), &mut key, &mut value);
        assert_eq!(
            serde_json::from_slice::<Value>(&value).unwrap(),
            json!({"status": "END", "id": "571:53195832", "ts_ms": 8, "event_count": 2,
                   "data_collections": [{"data_collection": "s1.a", "event_count": 1}, {"data_collection": "s2.a", "event_count": 1}]})
        );
        options.schemas = true;
        let (mut key, mut value) = (Vec::new(), Vec::new());
        heartbeat_record(&options, Lsn(99), 5, &mut key, &mut value);
        let key: Value = serde_json::from_slice(&key).unwrap();
        let value: Value = serde_json::from_slice(&value).unwrap();
        assert_eq!((key["payload"].clone(), value["payload"].clone()), (json!({"serverName": "server"}), json!({"ts_ms": 5, "lsn": 99})));
        assert_eq!(value["schema"]["name"], "io.debezium.connector.common.Heartbeat");
    }

    #[test]
    fn schema_names_are_avro_names() {
        assert_eq!(avro_name("my-server.1"), "my_server_1");
        assert_eq!(avro_name("1st"), "_st");
    }
}
