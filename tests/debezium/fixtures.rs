//! The recorded Debezium events decode into the ops pgkafka's producer writes for the same
//! changes. Pure: no servers.

use std::collections::BTreeMap;

use pgkafka::debezium::{decode, Decoded, Positions, Skipped};
use pgkafka::{Op, ReplicationOp};
use serde_json::{json, Value};

use super::{expected_ops, fixture, stream};

fn decode_file(name: &str, positions: Positions) -> Result<Decoded, pgkafka::debezium::DebeziumError> {
    decode(Some(fixture(name).as_bytes()), 0, positions)
}

fn op_of(decoded: Decoded) -> ReplicationOp {
    match decoded {
        Decoded::Change(change) => change.op,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(str::to_owned)).collect()
}

/// The documentation's create event, with and without schemas: the row, in the table's column
/// order, at the position of its `source.sequence` (no transaction block: only with change-LSN
/// positions, and refused by default with the setting that fixes it).
#[test]
fn the_documented_create_event_decodes_in_both_shapes() {
    for name in ["docs-create.json", "docs-create-schemaless.json"] {
        let op = op_of(decode_file(name, Positions::ChangeLsn).unwrap());
        assert_eq!(op.table_name, "customers", "{name}");
        assert_eq!(op.col_names, ["id", "first_name", "last_name", "email"], "{name}");
        assert_eq!(
            op.op,
            Op::Insert(row(&[Some("1"), Some("Anne"), Some("Kretchmar"), Some("annek@noanswer.org")])),
            "{name}"
        );
        assert_eq!((op.lsn, op.seq_id), (24_023_120, 24_023_128), "{name}");
        let refused = decode_file(name, Positions::TransactionOrder).unwrap_err().to_string();
        assert!(refused.contains("customers") && refused.contains("provide.transaction.metadata=true"), "{refused}");
    }
}

/// The documentation's update and delete events, with and without schemas. As printed they lack
/// `source.sequence` (every Debezium since 1.5 writes it) and are refused saying so; with it and a
/// transaction block added they decode: an update's old row under `REPLICA IDENTITY DEFAULT` has
/// only the key, the other columns read as NULL.
#[test]
fn the_documented_update_and_delete_events_decode_in_both_shapes() {
    for name in ["docs-update.json", "docs-update-schemaless.json", "docs-delete.json", "docs-delete-schemaless.json"] {
        let refused = decode_file(name, Positions::ChangeLsn).unwrap_err().to_string();
        assert!(refused.contains("source.sequence"), "{name}: {refused}");

        let mut event: Value = serde_json::from_str(&fixture(name)).unwrap();
        let payload = if event.get("payload").is_some() { &mut event["payload"] } else { &mut event };
        payload["source"]["sequence"] = json!("[\"24023119\",\"24023128\"]");
        payload["transaction"] = json!({"id": "556:24023128", "total_order": 2, "data_collection_order": 2});
        // `Value` sorts members: the columns' order then comes from the schema alone, so check
        // it only where there is one (the schemaless order is checked on the raw file above).
        let op = op_of(decode(Some(event.to_string().as_bytes()), 0, Positions::TransactionOrder).unwrap());
        assert_eq!((op.lsn, op.seq_id), (24_023_120, 1), "{name}");
        let key_only = row(&[Some("1"), None, None, None]);
        if !name.contains("schemaless") {
            assert_eq!(op.col_names, ["id", "first_name", "last_name", "email"]);
            let expected = if name.contains("update") {
                Op::Update((
                    key_only.clone(),
                    row(&[Some("1"), Some("Anne Marie"), Some("Kretchmar"), Some("annek@noanswer.org")]),
                ))
            } else {
                Op::Delete(key_only.clone())
            };
            assert_eq!(op.op, expected, "{name}");
        } else if name.contains("delete") {
            assert_eq!((op.col_names, op.op), (vec!["id".to_owned()], Op::Delete(row(&[Some("1")]))));
        }
    }
}

/// The documentation's transaction BEGIN and END records are passed over.
#[test]
fn the_documented_transaction_records_are_skipped() {
    for name in ["docs-transaction-begin.json", "docs-transaction-end.json"] {
        assert_eq!(
            decode_file(name, Positions::TransactionOrder).unwrap(),
            Decoded::Skipped(Skipped::TransactionBoundary)
        );
    }
}

/// The recorded stream (snapshot, 45 interleaved transactions with tombstones, transaction records
/// and heartbeats) decodes into exactly the expected ops, at strictly increasing positions in
/// every partition.
#[test]
fn the_recorded_stream_decodes_into_the_expected_ops() {
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut decoded = Vec::new();
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    for record in stream() {
        let offset = offsets.entry(record.partition).or_insert(0);
        match decode(record.value.as_deref(), *offset, Positions::TransactionOrder).unwrap() {
            Decoded::Change(change) => decoded.push((record.partition, *offset, change.op)),
            Decoded::Skipped(why) => *skipped.entry(why.to_string()).or_default() += 1,
        }
        *offset += 1;
    }
    let expected = expected_ops();
    assert_eq!(decoded.len(), expected.len());
    for (got, want) in decoded.iter().zip(&expected) {
        assert_eq!(got, want);
    }
    assert!(
        skipped["tombstone"] > 0 && skipped["transaction boundary"] == 90 && skipped["heartbeat"] == 3,
        "{skipped:?}"
    );
    let mut last: BTreeMap<i32, (u64, u64)> = BTreeMap::new();
    for (partition, offset, op) in &decoded {
        let position = (op.lsn, op.seq_id);
        if let Some(previous) = last.insert(*partition, position) {
            assert!(position > previous, "partition {partition} offset {offset}: {previous:?} then {position:?}");
        }
    }
}

/// A `#[derive(ReplicatedTable)]` type of the recorded `inventory.orders` table.
#[derive(pgkafka::ReplicatedTable, Debug, PartialEq)]
#[replicated(schema = "inventory", table = "orders", crate = "pgkafka")]
struct Order {
    id: i64,
    customer_id: i32,
    amount: rust_decimal::Decimal,
    placed_at: chrono::DateTime<chrono::Utc>,
    ship_on: Option<chrono::NaiveDate>,
    note: Option<String>,
    tags: Option<Vec<Option<String>>>,
    paid: bool,
}

/// Every `inventory.orders` change of the recorded stream decodes into the typed `Order` (its
/// `numeric`, `timestamptz`, `date` and `text[]` values rebuilt from Debezium's encodings), the
/// same as the pgkafka op of the same change does.
#[test]
fn typed_rows_decode_the_same_from_either_format() {
    let expected = expected_ops();
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut orders = 0;
    for record in stream() {
        let offset = offsets.entry(record.partition).or_insert(0);
        if let Decoded::Change(change) = decode(record.value.as_deref(), *offset, Positions::TransactionOrder).unwrap()
        {
            if change.op.table_name == "inventory.orders" {
                let ours = expected
                    .iter()
                    .find(|(p, o, _)| (*p, *o) == (record.partition, *offset))
                    .map(|(_, _, op)| op)
                    .unwrap();
                let from_debezium = pgkafka::TypedOp::<Order>::from_op(&change.op).unwrap();
                let from_pgkafka = pgkafka::TypedOp::<Order>::from_op(ours).unwrap();
                assert_eq!(from_debezium.change, from_pgkafka.change);
                orders += 1;
            }
        }
        *offset += 1;
    }
    assert!(orders > 20, "{orders}");
}
