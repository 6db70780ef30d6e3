#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn change(value: &Value, offset: i64) -> Change {
    change_of(&value.to_string(), offset)
}

/// `json!` sorts object members: tests of column order write their JSON by hand.
fn change_of(text: &str, offset: i64) -> Change {
    match decode(Some(text.as_bytes()), offset, Positions::TransactionOrder) {
        Ok(Decoded::Change(change)) => change,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn source(table: &str, last_commit: Option<u64>, lsn: u64) -> Value {
    let sequence = json!([last_commit.map(|l| l.to_string()), lsn.to_string()]).to_string();
    json!({"version": "2.7.0.Final", "connector": "postgresql", "name": "srv", "ts_ms": 1, "snapshot": "false",
           "db": "app", "sequence": sequence, "schema": "public", "table": table, "txId": 770, "lsn": lsn, "xmin": null})
}

fn tx(order: u64) -> Value {
    json!({"id": "770:100", "total_order": order, "data_collection_order": order})
}

#[test]
fn schemaless_insert_keeps_the_events_column_order() {
    let event = format!(
        r#"{{"before":null,"after":{{"zeta":1,"alpha":"a","mid":true}},"source":{},"op":"c","ts_ms":5,"transaction":{}}}"#,
        source("t", Some(90), 120),
        tx(3)
    );
    let c = change_of(&event, 7);
    assert_eq!(c.op.col_names, ["zeta", "alpha", "mid"]);
    assert_eq!(c.op.op, Op::Insert(vec![Some("1".into()), Some("a".into()), Some("t".into())]));
    assert_eq!((c.op.lsn, c.op.seq_id), (91, 2));
    assert!(!c.snapshot);
}

#[test]
fn schema_gives_column_order_and_types() {
    let field = |name: &str, kind: &str, semantic: Option<&str>| {
        let mut f = json!({"type": kind, "optional": true, "field": name});
        if let Some(s) = semantic {
            f["name"] = json!(s);
        }
        f
    };
    let mut amount = field("amount", "bytes", Some("org.apache.kafka.connect.data.Decimal"));
    amount["parameters"] = json!({"scale": "2", "connect.decimal.precision": "10"});
    let row = json!({"type": "struct", "optional": true, "fields": [
        field("id", "int64", None), field("day", "int32", Some("io.debezium.time.Date")), amount,
        field("at", "string", Some("io.debezium.time.ZonedTimestamp"))]});
    let mut before = row.clone();
    before["field"] = json!("before");
    let mut after = row;
    after["field"] = json!("after");
    let schema = json!({"type": "struct", "fields": [before, after, {"type": "struct", "field": "source"}], "name": "srv.sales.orders.Envelope"});
    let mut src = source("orders", None, 50);
    src["schema"] = json!("sales");
    // `after` written in another order than the schema's: the schema's order wins.
    let payload = json!({"before": {"id": 9, "day": 19_000, "amount": "AeI=", "at": "2024-05-01T10:00:00Z"},
                         "after": {"at": "2024-05-01T11:30:00.25Z", "amount": "/h4=", "day": 19_001, "id": 9},
                         "source": src, "op": "u", "ts_ms": 1, "transaction": tx(1)});
    let c = change(&json!({"schema": schema, "payload": payload}), 0);
    assert_eq!(c.op.table_name, "sales.orders");
    assert_eq!(c.op.col_names, ["id", "day", "amount", "at"]);
    let row = |a: &str, b: &str, c: &str, d: &str| {
        vec![Some(a.to_owned()), Some(b.to_owned()), Some(c.to_owned()), Some(d.to_owned())]
    };
    assert_eq!(
        c.op.op,
        Op::Update((
            row("9", "2022-01-08", "4.82", "2024-05-01 10:00:00+00"),
            row("9", "2022-01-09", "-4.82", "2024-05-01 11:30:00.25+00")
        ))
    );
    assert_eq!((c.op.lsn, c.op.seq_id), (1, 0), "no last commit yet reads as 0");
}

#[test]
fn delete_with_a_key_only_old_row_has_nulls_elsewhere_and_an_unchanged_toast_value_is_filled() {
    let delete = json!({"before": {"id": 1}, "after": null, "source": source("t", Some(10), 30), "op": "d", "transaction": tx(2)});
    assert_eq!(change(&delete, 0).op.op, Op::Delete(vec![Some("1".into())]));

    let update = format!(
        r#"{{"before":{{"id":1,"doc":"long"}},"after":{{"id":1,"doc":"__debezium_unavailable_value"}},"source":{},"op":"u","transaction":{}}}"#,
        source("t", Some(10), 30),
        tx(1)
    );
    let Op::Update((_, new)) = change_of(&update, 0).op.op else { panic!() };
    assert_eq!(new, vec![Some("1".into()), Some("long".into())]);

    let no_old = json!({"before": null, "after": {"id": 1, "doc": "__debezium_unavailable_value"},
                        "source": source("t", Some(10), 30), "op": "u", "transaction": tx(1)});
    let err = decode(Some(no_old.to_string().as_bytes()), 0, Positions::TransactionOrder).unwrap_err();
    assert!(err.to_string().contains("table t") && err.to_string().contains("REPLICA IDENTITY FULL"), "{err}");
}

#[test]
fn snapshot_rows_are_inserts_flagged_and_positioned_by_offset() {
    let mut src = source("t", Some(700), 800);
    src["snapshot"] = json!("true");
    let c = change(&json!({"before": null, "after": {"id": 4}, "source": src, "op": "r"}), 12);
    assert!(c.snapshot);
    assert_eq!(c.op.op, Op::Insert(vec![Some("4".into())]));
    assert_eq!((c.op.lsn, c.op.seq_id), (700, 12));
}

#[test]
fn records_without_a_change_are_skipped() {
    let skip = |v: Option<&[u8]>| decode(v, 0, Positions::TransactionOrder).unwrap();
    assert_eq!(skip(None), Decoded::Skipped(Skipped::Tombstone));
    assert_eq!(skip(Some(br#"{"schema":null,"payload":null}"#)), Decoded::Skipped(Skipped::Tombstone));
    assert_eq!(
        skip(Some(br#"{"status":"BEGIN","id":"571:53195829","ts_ms":1486500577125,"event_count":null,"data_collections":null}"#)),
        Decoded::Skipped(Skipped::TransactionBoundary)
    );
    assert_eq!(
        skip(Some(
            br#"{"schema":{"type":"struct","name":"io.debezium.connector.common.Heartbeat"},"payload":{"ts_ms":1}}"#
        )),
        Decoded::Skipped(Skipped::Heartbeat)
    );
    let message = json!({"op": "m", "source": source("", Some(1), 2), "message": {"prefix": "p", "content": "AA=="}});
    assert_eq!(skip(Some(message.to_string().as_bytes())), Decoded::Skipped(Skipped::Message));
}

#[test]
fn other_json_is_not_debezium_and_truncates_and_missing_positions_are_errors() {
    let decode = |v: &str, p| decode(Some(v.as_bytes()), 0, p);
    assert!(matches!(decode(r#"{"table_name":"t"}"#, Positions::TransactionOrder), Err(DebeziumError::NotDebezium(_))));
    assert!(matches!(decode("not json", Positions::TransactionOrder), Err(DebeziumError::NotDebezium(_))));
    let truncate = json!({"before": null, "after": null, "source": source("t", Some(1), 2), "op": "t"}).to_string();
    let err = decode(&truncate, Positions::TransactionOrder).unwrap_err().to_string();
    assert!(err.contains("TRUNCATE") && err.contains("table t"), "{err}");
    let no_tx = json!({"before": null, "after": {"id": 1}, "source": source("t", Some(5), 9), "op": "c"}).to_string();
    let err = decode(&no_tx, Positions::TransactionOrder).unwrap_err().to_string();
    assert!(err.contains("provide.transaction.metadata=true"), "{err}");
    let Decoded::Change(c) = decode(&no_tx, Positions::ChangeLsn).unwrap() else { panic!() };
    assert_eq!((c.op.lsn, c.op.seq_id), (6, 9));
    // Change-LSN positions ignore Debezium's counters, also where they are given.
    let with_tx =
        json!({"before": null, "after": {"id": 1}, "source": source("t", Some(5), 9), "op": "c", "transaction": tx(4)})
            .to_string();
    let Decoded::Change(c) = decode(&with_tx, Positions::ChangeLsn).unwrap() else { panic!() };
    assert_eq!((c.op.lsn, c.op.seq_id), (6, 9));
}

/// One WAL history: transactions with interleaved change LSNs, some preceded by a blocking
/// snapshot; what Debezium emits for it, in order.
fn emitted(transactions: &[(u8, bool)]) -> Vec<(String, Option<u64>, u64, Option<u64>)> {
    // (op, lastCommitLsn, change lsn, total_order) per event.
    let mut events = Vec::new();
    let mut last_commit: Option<u64> = None;
    let mut wal = 1_000u64;
    for (i, &(changes, snapshot_before)) in transactions.iter().enumerate() {
        if snapshot_before {
            for _ in 0..3 {
                events.push(("r".to_owned(), last_commit, wal, None));
            }
        }
        // Changes of a transaction start at a WAL position before the previous commit's end
        // when transactions overlap: change LSNs go back in emit order.
        let start = if i % 2 == 1 { wal.saturating_sub(500) } else { wal };
        for n in 0..u64::from(changes) {
            // Multi-insert: two changes may share an LSN.
            events.push(("c".to_owned(), last_commit, start + n / 2 * 8, Some(n + 1)));
        }
        wal += 100 + u64::from(changes) * 8;
        last_commit = Some(wal);
        wal += 1;
    }
    events
}

proptest! {
    /// Whatever the transactions, their sizes, overlaps, multi-inserts and blocking snapshots,
    /// positions strictly increase along Debezium's emit order (any partition's records are a
    /// subsequence of it, so there too); change-LSN positions too, except between the rows of one
    /// multi-insert, which share one.
    #[test]
    fn positions_increase_strictly_in_emit_order(transactions in proptest::collection::vec((1u8..6, any::<bool>()), 1..40)) {
        let events = emitted(&transactions);
        let mut previous: Option<(u64, u64)> = None;
        let mut previous_by_lsn: Option<((u64, u64), u64)> = None;
        for (offset, (op, last_commit, lsn, order)) in events.iter().enumerate() {
            let sequence = json!([last_commit.map(|l| l.to_string()), lsn.to_string()]).to_string();
            let src = SourceRef { sequence: Some(&sequence), lsn: Some(*lsn) };
            let order = order.map(|o| json!(o));
            let now = position(op, &src, order.as_ref(), offset as i64, Positions::TransactionOrder).unwrap();
            if let Some(previous) = previous {
                prop_assert!(now > previous, "{previous:?} then {now:?} at event {offset}");
            }
            previous = Some(now);
            // Change-LSN positions only stand still between rows sharing an LSN.
            let by_lsn = position(op, &src, order.as_ref(), offset as i64, Positions::ChangeLsn).unwrap();
            if let Some((previous, previous_lsn)) = previous_by_lsn {
                prop_assert!(by_lsn > previous || (by_lsn == previous && *lsn == previous_lsn && op != "r"), "{previous:?} then {by_lsn:?}");
            }
            previous_by_lsn = Some((by_lsn, *lsn));
        }
    }

    /// Decoding never panics, whatever the bytes.
    #[test]
    fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(Some(&bytes), 0, Positions::TransactionOrder);
    }
}

#[test]
fn change_lsns_alone_go_backwards_in_emit_order() {
    // Why `source.lsn` is not the position: the proptest's overlapping transactions emit lower
    // change LSNs after higher ones.
    let events = emitted(&[(2, false), (2, false)]);
    let lsns: Vec<u64> = events.iter().map(|e| e.2).collect();
    assert!(lsns.windows(2).any(|w| w[1] < w[0]), "{lsns:?}");
}
