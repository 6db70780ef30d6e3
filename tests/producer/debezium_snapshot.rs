//! Snapshot and backfill rows on Debezium topics: read events (`op: "r"`) shaped as Debezium's
//! documented events, and a Debezium topic read back by pgkafka's decoder giving the ops the
//! pgkafka format gives for the same changes.

use std::time::Duration;

use pgkafka::debezium::{decode, Decoded, Positions};
use pgkafka::{OutputFormat, Producer, ReplicationOp, SnapshotMode, TopicInfo};
use pgkafka_tests::producer_task::RunningProducer;
use pgkafka_tests::slots::drop_slot;
use pgkafka_tests::{create_topic, env, unique_name, wait_for, Record};
use serde_json::{json, Value};

use super::debezium::{debezium, fixture, key_order, read_at_least, strip_volatile, text};
use super::{forget_snapshot_runs, id_table, wait_snapshot_done, Scenario, Table};

/// `source.sequence` of an event as numbers: `[lastCommitLsn, the change's LSN]`.
fn sequence(event: &Value) -> Vec<u64> {
    let sequence: Vec<String> =
        serde_json::from_str(event["source"]["sequence"].as_str().unwrap()).unwrap();
    sequence.iter().map(|lsn| lsn.parse().unwrap()).collect()
}

/// The event as pgkafka's Debezium decoder reads it: a snapshot row, and its op.
fn decoded(record: &Record) -> Option<(bool, ReplicationOp)> {
    match decode(
        record.value.as_deref(),
        record.offset,
        Positions::TransactionOrder,
    )
    .unwrap()
    {
        Decoded::Change(change) => Some((change.snapshot, change.op)),
        Decoded::Skipped(_) => None,
    }
}

/// Debezium's documented `customers` example, read by an `initial_only` snapshot into one topic
/// with Kafka Connect schemas and one without: every row is a read event equal to the documented
/// create event but for `op: "r"` and `source.snapshot` (`"true"`, the snapshot's very last row
/// `"last"`), in the documented field order, keyed like it, with the create event's schema;
/// all at the snapshot's position, and decoded back as snapshot inserts.
#[tokio::test]
async fn an_initial_snapshot_writes_debeziums_read_events() {
    let schemas = [unique_name("dbz_snap"), unique_name("dbz_snap")];
    let tables: Vec<Table> = schemas
        .iter()
        .map(|schema| {
            let create = format!(
                "CREATE SCHEMA {schema}; CREATE TABLE {schema}.customers (id SERIAL, first_name VARCHAR(255) NOT NULL, \
                 last_name VARCHAR(255) NOT NULL, email VARCHAR(255) NOT NULL, PRIMARY KEY(id)); \
                 INSERT INTO {schema}.customers VALUES (1, 'Anne', 'Kretchmar', 'annek@noanswer.org'), \
                 (2, 'Bob', 'Smith', 'bob@noanswer.org')"
            );
            let mut table = Table::new(&format!("{schema}.customers"), create, &[], 1);
            table.key_columns = vec!["id".into()];
            table
        })
        .collect();
    let mut scenario = Scenario::new("dbz_snap", tables).await;
    for schema in &schemas {
        scenario.drop_at_cleanup(format!("SCHEMA {schema} CASCADE"));
    }
    let plain_topic = scenario.topic_map[&format!("{}.customers", schemas[1])]
        .name
        .clone();
    let producer = scenario
        .builder()
        .snapshot(SnapshotMode::InitialOnly)
        .output_format(OutputFormat::Debezium(debezium("PostgreSQL_server", true)))
        .topic_format(
            plain_topic,
            OutputFormat::Debezium(debezium("PostgreSQL_server", false)),
        )
        .build();
    let result = tokio::time::timeout(Duration::from_secs(60), producer.start()).await;
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");

    let database: String = scenario
        .pg
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    let records = read_at_least(&scenario.topics, 4, Duration::from_secs(60)).await;
    assert_eq!(
        records.len(),
        4,
        "two rows of each table, nothing else: {records:?}"
    );
    let mut snapshot_flags = Vec::new();
    let mut positions = Vec::new();
    for (index, schema) in schemas.iter().enumerate() {
        let with_schemas = index == 0;
        let suffix = if with_schemas { ".schemas" } else { "" };
        let normalize = |json: String| {
            json.replace(&format!("\"{schema}\""), "\"public\"")
                .replace(&format!(".{schema}."), ".public.")
                .replace(&format!("\"db\":\"{database}\""), "\"db\":\"postgres\"")
        };
        let topic_records: Vec<&Record> = records
            .iter()
            .filter(|(topic, _)| *topic == scenario.topics[index])
            .map(|(_, r)| r)
            .collect();
        assert_eq!(topic_records.len(), 2);
        for (record, id) in topic_records.iter().zip([1, 2]) {
            let key: Value = serde_json::from_str(&normalize(
                String::from_utf8(record.key.clone().unwrap()).unwrap(),
            ))
            .unwrap();
            let mut golden_key: Value =
                serde_json::from_str(&fixture(&format!("customers.key{suffix}.json"))).unwrap();
            let key_payload = if with_schemas {
                &mut golden_key["payload"]
            } else {
                &mut golden_key
            };
            key_payload["id"] = json!(id);
            assert_eq!(
                key, golden_key,
                "the key of row {id}, schemas {with_schemas}"
            );

            let value = normalize(text(record.value.as_deref()));
            let whole: Value = serde_json::from_str(&value).unwrap();
            let event = if with_schemas {
                whole["payload"].clone()
            } else {
                whole.clone()
            };
            let flag = event["source"]["snapshot"].as_str().unwrap().to_owned();
            snapshot_flags.push(flag.clone());
            let sequence = sequence(&event);
            assert_eq!(
                (sequence[0], sequence[1], event["source"]["lsn"].as_u64()),
                (sequence[1], sequence[1], Some(sequence[1]))
            );
            assert_eq!(
                event["source"]["txId"],
                Value::Null,
                "a snapshot row has no transaction"
            );
            positions.push(sequence[0]);
            if id == 1 {
                let golden_text = fixture("customers.create.json");
                let mut expected: Value = serde_json::from_str(&golden_text).unwrap();
                expected["op"] = json!("r");
                expected["source"]["snapshot"] = json!(flag);
                assert_eq!(
                    strip_volatile(event.clone()),
                    strip_volatile(expected),
                    "the read event, schemas {with_schemas}"
                );
                let payload: &[&str] = if with_schemas { &["payload"] } else { &[] };
                assert_eq!(
                    key_order(&value, payload),
                    key_order(&golden_text, &[]),
                    "the envelope's field order"
                );
                let source = [payload, &["source"]].concat();
                assert_eq!(
                    key_order(&value, &source),
                    key_order(&golden_text, &["source"]),
                    "the source block's field order"
                );
            } else {
                assert_eq!(
                    (
                        &event["op"],
                        &event["before"],
                        &event["after"]["first_name"]
                    ),
                    (&json!("r"), &Value::Null, &json!("Bob"))
                );
            }
            if with_schemas {
                let create_schema =
                    serde_json::from_str::<Value>(&fixture("customers.create.schemas.json"))
                        .unwrap()["schema"]
                        .clone();
                assert_eq!(
                    whole["schema"], create_schema,
                    "a read event has the create event's schema"
                );
            }
            let (snapshot, op) = decoded(record).unwrap();
            assert!(
                snapshot && matches!(op.op, pgkafka::Op::Insert(_)),
                "{op:?}"
            );
            assert_eq!(
                (op.table_name, op.lsn),
                (format!("{schema}.customers"), sequence[0])
            );
        }
    }
    snapshot_flags.sort();
    assert_eq!(
        snapshot_flags,
        ["last", "true", "true", "true"],
        "one last row of the snapshot"
    );
    assert!(
        positions.iter().all(|p| *p == positions[0]),
        "one snapshot position: {positions:?}"
    );
    scenario.cleanup().await;
}

/// A backfill of a table into a Debezium topic, in chunks of 5 while the producer streams: every
/// row is a read event with `source.snapshot: "incremental"`, the table's row as `after`, keyed
/// by its primary key, at its chunk's high watermark; decoded back as snapshot inserts.
#[tokio::test]
async fn a_backfill_writes_incremental_read_events() {
    let (t, table) = id_table("dbz_bf", 1);
    let scenario = Scenario::new("dbz_bf", vec![table]).await;
    scenario
        .pg
        .batch_execute(&format!(
            "INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, 12) g"
        ))
        .await
        .unwrap();
    let producer = scenario
        .builder()
        .output_format(OutputFormat::Debezium(debezium("dbz_bf_server", false)))
        .backfills(true)
        .backfill_chunk_size(5)
        .build();
    let running = RunningProducer::start(producer, &scenario.slot).await;
    scenario
        .producer()
        .request_backfill(std::slice::from_ref(&t))
        .await
        .unwrap();
    let records = read_at_least(&scenario.topics, 12, Duration::from_secs(60)).await;
    assert_eq!(records.len(), 12, "{records:?}");
    let mut positions = Vec::new();
    for (index, (_, record)) in records.iter().enumerate() {
        let id = index as i64 + 1;
        assert_eq!(
            record.key.as_deref(),
            Some(format!(r#"{{"id":{id}}}"#).as_bytes())
        );
        let event: Value = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            (&event["op"], &event["before"]),
            (&json!("r"), &Value::Null),
            "{event}"
        );
        assert_eq!(event["after"], json!({"id": id, "v": format!("v{id}")}));
        assert_eq!(event["source"]["snapshot"], "incremental");
        assert_eq!(
            (
                event["source"]["table"].as_str(),
                event["source"]["txId"].clone()
            ),
            (Some(t.as_str()), Value::Null)
        );
        let sequence = sequence(&event);
        assert_eq!(sequence[0], sequence[1]);
        positions.push(sequence[0]);
        let (snapshot, op) = decoded(record).unwrap();
        assert!(snapshot, "{op:?}");
        assert_eq!(
            op.op,
            pgkafka::Op::Insert(vec![Some(id.to_string()), Some(format!("v{id}"))])
        );
    }
    // Chunks of 5: three high watermarks, growing.
    positions.dedup();
    assert_eq!(positions.len(), 3, "{positions:?}");
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    running.stop().await.unwrap();
    scenario.cleanup().await;
}

/// Closing the loop: two producers on one publication, each with its own slot and an initial
/// snapshot, one writing the pgkafka format and one the Debezium format (with schemas and
/// transaction metadata). After rows that existed before and transactions of inserts, updates
/// and deletes (NULLs, numerics, dates, booleans, JSON included), the Debezium topic read back
/// through `pgkafka::debezium::decode` gives the pgkafka topic's ops: the same snapshot rows
/// (each at its own slot's snapshot position) and the same changes, `(lsn, seq_id)` included.
#[tokio::test]
async fn a_debezium_topic_decodes_to_the_pgkafka_formats_ops() {
    let t = unique_name("dbz_loop");
    let create = format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, v text, n numeric(10,2), b boolean, d date, ts timestamp, j jsonb); \
         INSERT INTO {t} SELECT g, 'old ' || g, g * 1.25, g % 2 = 0, DATE '2024-05-01' + g, \
         TIMESTAMP '2024-05-01 12:00:00.5' + g * INTERVAL '1 hour', jsonb_build_object('g', g) FROM generate_series(1, 7) g"
    );
    let mut table = Table::new(&t, create, &[], 1);
    table.key_columns = vec!["id".into()];
    let scenario = Scenario::new("dbz_loop", vec![table]).await;
    let pgkafka_producer = scenario.builder().snapshot(SnapshotMode::Initial).build();
    let pgkafka_running = RunningProducer::start(pgkafka_producer, &scenario.slot).await;
    wait_snapshot_done(&scenario.pg, &scenario.slot, 1).await;

    let server = unique_name("dbz_loop_server");
    let mut options = debezium(&server, true);
    options.transaction_metadata = true;
    create_topic(&options.transaction_topic(), 1).await;
    let debezium_topic = unique_name("dbz_loop_topic");
    create_topic(&debezium_topic, 1).await;
    let debezium_slot = unique_name("dbz_loop_slot");
    let topic_map = [(
        t.clone(),
        TopicInfo::new(debezium_topic.clone(), Vec::<String>::new()),
    )]
    .into();
    let debezium_producer = Producer::builder(
        env().database_url.clone(),
        env().brokers.clone(),
        debezium_slot.clone(),
        scenario.publication.clone(),
        topic_map,
    )
    .output_format(OutputFormat::Debezium(options))
    .snapshot(SnapshotMode::Initial)
    .build();
    let debezium_running = RunningProducer::start(debezium_producer, &debezium_slot).await;
    // Before any change: a slot counts as active while it is still being created.
    wait_snapshot_done(&scenario.pg, &debezium_slot, 1).await;

    let statements = [
        format!("INSERT INTO {t} VALUES (10, 'ten', 10.5, true, '2024-06-01', '2024-06-01 00:00:00', '{{\"a\": [1, 2]}}')"),
        format!(
            "BEGIN; UPDATE {t} SET v = NULL, n = 0.01 WHERE id = 1; DELETE FROM {t} WHERE id = 2; \
             INSERT INTO {t} VALUES (11, NULL, NULL, NULL, NULL, NULL, NULL); UPDATE {t} SET b = NOT b, j = 'null' WHERE id = 3; COMMIT"
        ),
        format!("UPDATE {t} SET v = 'all' WHERE id > 5"),
        format!("DELETE FROM {t} WHERE id IN (4, 10)"),
    ];
    for statement in &statements {
        scenario.pg.batch_execute(statement).await.unwrap();
    }
    // 7 snapshot rows, then 1 + 4 + 4 (ids 6, 7, 10, 11) + 2 changes.
    let expected = 7 + 11;
    let pgkafka_records = read_at_least(&scenario.topics, expected, Duration::from_secs(60)).await;
    let pgkafka_ops: Vec<ReplicationOp> = pgkafka_records.iter().map(|(_, r)| r.op()).collect();
    assert_eq!(pgkafka_ops.len(), expected, "{pgkafka_ops:?}");
    let debezium_ops = wait_for(
        "the Debezium topic to hold every change",
        Duration::from_secs(60),
        || {
            let topics = [debezium_topic.clone()];
            async move {
                let ops: Vec<(bool, ReplicationOp)> = pgkafka_tests::topics::read_topics(&topics)
                    .await
                    .iter()
                    .filter_map(|(_, r)| decoded(r))
                    .collect();
                (ops.len() >= expected).then_some(ops)
            }
        },
    )
    .await;
    assert_eq!(debezium_ops.len(), expected, "{debezium_ops:?}");

    // The snapshot rows first: the same rows, each topic's at one position below every change.
    let (snapshot, streamed) = debezium_ops.split_at(7);
    assert!(
        snapshot.iter().all(|(is_snapshot, _)| *is_snapshot)
            && streamed.iter().all(|(is_snapshot, _)| !is_snapshot)
    );
    let rows =
        |ops: &mut dyn Iterator<Item = &ReplicationOp>| -> Vec<(String, Vec<String>, pgkafka::Op)> {
            ops.map(|op| (op.table_name.clone(), op.col_names.clone(), op.op.clone()))
                .collect()
        };
    assert_eq!(
        rows(&mut snapshot.iter().map(|(_, op)| op)),
        rows(&mut pgkafka_ops[..7].iter()),
        "the snapshot rows"
    );
    for ops in [
        snapshot.iter().map(|(_, op)| op).collect::<Vec<_>>(),
        pgkafka_ops[..7].iter().collect(),
    ] {
        assert!(
            ops.iter()
                .all(|op| op.lsn == ops[0].lsn && op.lsn < pgkafka_ops[7].lsn),
            "{ops:?}"
        );
    }
    let streamed: Vec<ReplicationOp> = streamed.iter().map(|(_, op)| op.clone()).collect();
    assert_eq!(
        streamed,
        pgkafka_ops[7..],
        "the streamed changes, (lsn, seq_id) included"
    );

    pgkafka_running.stop().await.unwrap();
    debezium_running.stop().await.unwrap();
    drop_slot(&scenario.pg, &debezium_slot).await;
    forget_snapshot_runs(&scenario.pg, &debezium_slot).await;
    scenario.cleanup().await;
}
