//! The ground everything stands on: logical replication works on the test PostgreSQL, and the
//! broker carries messages through the bundled librdkafka.

use std::time::Duration;

use pgkafka_tests::{create_topic, kafka_config, pg_client, read_topic, unique_name};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The test PostgreSQL runs with `wal_level=logical`: a `test_decoding` slot shows a committed
/// insert.
#[tokio::test]
async fn a_logical_slot_sees_a_committed_insert() {
    let pg = pg_client().await;
    let table = unique_name("found_tbl");
    let slot = unique_name("found_slot");
    let level: String = pg.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    assert_eq!(level, "logical", "the test PostgreSQL must run with wal_level=logical");

    pg.batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY, note text)")).await.unwrap();
    pg.execute("SELECT pg_create_logical_replication_slot($1, 'test_decoding')", &[&slot])
        .await
        .unwrap();
    pg.batch_execute(&format!("INSERT INTO {table} VALUES (1, 'hello')")).await.unwrap();

    let rows = pg
        .query("SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL)", &[&slot])
        .await
        .unwrap();
    let changes: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.unwrap();
    pg.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();

    assert!(
        changes.iter().any(|c| c.contains(&format!("table public.{table}: INSERT: id[integer]:1 note[text]:'hello'"))),
        "the slot did not show the insert: {changes:?}"
    );
}

/// 30 keyed messages over 3 partitions: every key stays in one partition, in the order sent.
#[tokio::test]
async fn the_broker_carries_keyed_messages_in_partition_order() {
    let topic = unique_name("found_topic");
    create_topic(&topic, 3).await;
    let producer: FutureProducer = kafka_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    for i in 0..30 {
        let key = format!("k{}", i % 5);
        let value = format!("v{i}");
        producer
            .send(FutureRecord::to(&topic).key(&key).payload(&value), Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("send {i} failed: {e}"));
    }

    let records = read_topic(&topic).await;
    assert_eq!(records.len(), 30);
    for key in 0..5 {
        let key = format!("k{key}");
        let of_key: Vec<_> = records.iter().filter(|r| r.key_text().as_deref() == Some(key.as_str())).collect();
        assert!(of_key.windows(2).all(|w| w[0].partition == w[1].partition), "key {key} was split across partitions");
        let values: Vec<u32> = of_key
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap())[1..].parse().unwrap())
            .collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "key {key} out of order: {values:?}");
    }
}
