//! An idempotent consumer reading a topic of recorded Debezium events, SIGKILLed mid-way and
//! restarted, applies exactly the ops the same changes give in pgkafka's format, each once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgkafka::ReplicationOp;
use pgkafka_tests::{create_topic, env, kafka_config, pg_client, unique_name};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{expected_ops, stream, StreamRecord};

/// Where the stream is cut to play a Debezium restart: records up to `RESTART_AT` are written,
/// then those from `RESUMED_FROM` again (what a connector restarted from its last flushed offset
/// emits a second time), then the rest.
const RESTART_AT: usize = 200;
const RESUMED_FROM: usize = 140;

async fn produce(topic: &str, records: &[&StreamRecord]) {
    let producer: FutureProducer =
        kafka_config().set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5").create().unwrap();
    let mut deliveries = Vec::new();
    for record in records {
        let mut to = FutureRecord::to(topic).partition(record.partition).key(&record.key);
        if let Some(value) = &record.value {
            to = to.payload(value);
        }
        deliveries.push(producer.send_result(to).map_err(|(e, _)| e).unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

async fn applied(table: &str) -> Vec<(i32, ReplicationOp)> {
    pg_client()
        .await
        .query(&format!("SELECT partition, op FROM {table} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), serde_json::from_str(row.get::<_, &str>(1)).unwrap()))
        .collect()
}

async fn count(table: &str) -> i64 {
    pg_client().await.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0)
}

/// A Debezium topic (snapshot rows, interleaved transactions, tombstones after deletes,
/// transaction BEGIN/END records and heartbeats, and a stretch emitted twice as after a connector
/// restart) is read by an idempotent consumer process that is SIGKILLed (up to three times) at
/// random points and restarted: in every partition, the ops applied are exactly the expected pgkafka ops,
/// in order, once each; no record is taken for invalid (the child would stop on it).
///
/// Checked to fail: with the positions taken from `source.lsn` instead (interleaved transactions
/// go back), ops are dropped as duplicates; with the re-sent stretch not skipped, ops repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_idempotent_consumer_applies_a_debezium_topic_exactly_once() {
    const CHILD: &str = env!("CARGO_BIN_EXE_dbz_consumer_child");
    const PARTITIONS: i32 = 3;
    pgkafka_tests::init_tracing();
    let topic = unique_name("dbz_topic");
    let group = unique_name("dbz_topic_g");
    create_topic(&topic, PARTITIONS).await;
    let table = unique_name("dbz_sink");
    pg_client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, partition int NOT NULL, record_offset bigint NOT NULL, op text NOT NULL)"
        ))
        .await
        .unwrap();

    let records = stream();
    let order: Vec<&StreamRecord> =
        records[..RESTART_AT].iter().chain(&records[RESUMED_FROM..RESTART_AT]).chain(&records[RESTART_AT..]).collect();
    produce(&topic, &order).await;
    let expected = expected_ops();
    let total = i64::try_from(expected.len()).unwrap();

    let spawn_child = || {
        tokio::process::Command::new(CHILD)
            .args([&topic, &group, &env().database_url, &table, &env().brokers])
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start dbz_consumer_child")
    };
    let mut seed = u64::from(std::process::id()) << 20 | 0x5DEE_CE66;
    let mut log = Vec::new();
    // Up to three kills, each a random moment after the child applied something, while at most
    // two thirds of the ops are in: the first always lands mid-way.
    let mut kills = 0;
    while kills < 3 && count(&table).await < total * 2 / 3 {
        let before = count(&table).await;
        let mut child = spawn_child();
        let started = Instant::now();
        while count(&table).await == before && started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("dbz_consumer_child exited on its own: {status}");
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(seed % 400)).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        kills += 1;
        log.push(format!("kill {kills}: {before} -> {} of {total} ops", count(&table).await));
    }
    assert!(kills > 0, "no kill: {}", log.join("; "));

    let mut child = spawn_child();
    let started = Instant::now();
    while count(&table).await < total && started.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("dbz_consumer_child exited on its own: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a duplicate that would slip through to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let mut got: BTreeMap<i32, Vec<ReplicationOp>> = BTreeMap::new();
    for (partition, op) in applied(&table).await {
        got.entry(partition).or_default().push(op);
    }
    let mut want: BTreeMap<i32, Vec<ReplicationOp>> = BTreeMap::new();
    for (partition, _, op) in expected {
        want.entry(partition).or_default().push(op);
    }
    for p in 0..PARTITIONS {
        let (got, want) = (got.remove(&p).unwrap_or_default(), want.remove(&p).unwrap_or_default());
        assert_eq!(
            got.len(),
            want.len(),
            "partition {p}: {} ops applied, {} expected ({})",
            got.len(),
            want.len(),
            log.join("; ")
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "partition {p}, op {i}");
        }
    }
    println!("{}", log.join("; "));
}
