//! The idempotent consumer: each op applied exactly once, in order, through re-sends, rolled
//! back batches, a second consumer joining and leaving the group, a zombie instance working
//! the same partitions, and its sessions ended by the server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgkafka::Lsn;
use pgkafka_tests::consumer_task::RunningConsumer;
use pgkafka_tests::consuming::{assert_exactly_once_in_order, create_sink_table, sink_count, Sink};
use pgkafka_tests::{env, init_tracing, pg_client, unique_name, wait_for};
use tokio::task::JoinHandle;

use super::{
    as_vec, committed, feed_in_rounds, feeder, send, stream_op, stream_with_resends, test_consumer, topic_and_group, HIGH_LSN,
};

/// A stream with re-sends, a handler failing once after its insert (the batch rolls back), then the
/// whole stream again: each op applied once, in order, and the state rows (in a custom schema and
/// quoted table) hold positions past 2^63.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_applies_each_op_once_through_resends_and_rollbacks() {
    init_tracing();
    let (topic, group) = topic_and_group("cons_idem", 3).await;
    let table = create_sink_table().await;
    let schema = unique_name("cons_state");
    pg_client().await.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let producer = feeder();
    send(&producer, &topic, &stream_with_resends(3, 0, 60)).await;

    let sink = Arc::new(Sink::new(&table).fail_once_after_insert(0, 17));
    let consumer = test_consumer(&group, &topic, Arc::clone(&sink)).state_schema(&schema).state_table("Progress");
    let running = RunningConsumer::idempotent(consumer, &env().database_url);
    wait_for("180 rows", Duration::from_secs(60), || async { (sink_count(&table).await >= 180).then_some(()) }).await;

    // The whole stream again, as a producer restarted from an old slot position would send it:
    // every op is a duplicate now.
    let end = as_vec(&send(&producer, &topic, &stream_with_resends(3, 0, 60)).await, 3);
    wait_for("everything consumed", Duration::from_secs(60), || async {
        (committed(&group, &topic, 3).await == end).then_some(())
    })
    .await;
    running.stop().await.unwrap();

    assert!(sink.failed(), "the transient failure did not happen");
    assert_exactly_once_in_order(&table, 3, 60).await;
    // The state row of each partition holds the last op's position, beyond 2^63.
    let rows = pg_client()
        .await
        .query(
            &format!("SELECT partition, lsn::text, seq_id::text FROM {schema}.\"Progress\" WHERE group_id = $1 AND topic = $2 ORDER BY partition"),
            &[&group, &topic],
        )
        .await
        .unwrap();
    let states: Vec<(i32, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let last = Lsn(HIGH_LSN + 59 / 3).to_string();
    assert_eq!(states, (0..3).map(|p| (p, last.clone(), "2".to_owned())).collect::<Vec<_>>());
}

/// Waits until `feed` has sent its `n` ops per partition, all of them are in `table`, and `group`
/// committed the end of each partition of `topic`.
async fn fed_applied_and_committed(
    feed: JoinHandle<BTreeMap<i32, i64>>,
    table: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    n: i64,
) {
    let end = as_vec(&feed.await.unwrap(), partitions);
    let total = i64::from(partitions) * n;
    wait_for("every op applied", Duration::from_secs(90), || async { (sink_count(table).await >= total).then_some(()) }).await;
    wait_for("everything consumed", Duration::from_secs(60), || async {
        (committed(group, topic, partitions).await == end).then_some(())
    })
    .await;
}

/// A second consumer joins the group mid-stream, takes partitions, works and leaves mid-stream:
/// each op applied exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_idempotent_consumers_in_one_group_apply_each_op_once() {
    const PARTITIONS: i32 = 4;
    const N: i64 = 300;
    init_tracing();
    let (topic, group) = topic_and_group("cons_pair", PARTITIONS).await;
    let table = create_sink_table().await;
    let feed = feed_in_rounds(&topic, PARTITIONS, 30, Duration::from_millis(500), None);

    let first = Arc::new(Sink::new(&table));
    let consumer_a = RunningConsumer::idempotent(test_consumer(&group, &topic, Arc::clone(&first)).batch_size(20), &env().database_url);
    wait_for("the first consumer at work", Duration::from_secs(60), || async {
        (first.applied() > 0).then_some(())
    })
    .await;

    // The second joins mid-stream, takes some partitions, works, and leaves mid-stream.
    let second = Arc::new(Sink::new(&table));
    let consumer_b = RunningConsumer::idempotent(test_consumer(&group, &topic, Arc::clone(&second)).batch_size(20), &env().database_url);
    wait_for("the second consumer at work", Duration::from_secs(60), || async {
        (second.applied() >= 30).then_some(())
    })
    .await;
    consumer_b.stop().await.unwrap();
    assert!(!feed.is_finished(), "the stream ended before the second consumer left; the test proves nothing");

    fed_applied_and_committed(feed, &table, &group, &topic, PARTITIONS, N).await;
    consumer_a.stop().await.unwrap();
    println!("first applied {}, second {}", first.applied(), second.applied());
    assert_exactly_once_in_order(&table, PARTITIONS, N).await;
}

/// A zombie: a second instance working the same partitions under the same state group at the
/// same time (here: in another Kafka group, so both are handed every record). Only the row lock
/// in the state table keeps them from applying an op twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_instances_on_the_same_partitions_apply_each_op_once() {
    const PARTITIONS: i32 = 3;
    const N: i64 = 150;
    init_tracing();
    let (topic, group) = topic_and_group("cons_zombie", PARTITIONS).await;
    let table = create_sink_table().await;
    let end = as_vec(&send(&feeder(), &topic, &stream_with_resends(PARTITIONS, 0, N)).await, PARTITIONS);

    let zombie_group = format!("{group}_zombie");
    let mut instances = Vec::new();
    for kafka_group in [group.clone(), zombie_group.clone()] {
        let sink = Arc::new(Sink::new(&table).pause(Duration::from_millis(3)));
        let consumer = test_consumer(&group, &topic, sink).kafka_option("group.id", &kafka_group).batch_size(10);
        instances.push(RunningConsumer::idempotent(consumer, &env().database_url));
    }
    for kafka_group in [&group, &zombie_group] {
        wait_for("both instances through the whole topic", Duration::from_secs(90), || async {
            (committed(kafka_group, &topic, PARTITIONS).await == end).then_some(())
        })
        .await;
    }
    for instance in instances {
        instance.stop().await.unwrap();
    }
    assert_exactly_once_in_order(&table, PARTITIONS, N).await;
}

/// PostgreSQL ends every session of the consumer mid-stream, twice (what an administrator's
/// `pg_terminate_backend`, a server restart or a failover does to the client), including the
/// connections it keeps between batches: the batch in hand fails as a lost connection, is retried
/// on a new session, and every op is applied exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_the_server_ends_mid_stream_are_survived_exactly_once() {
    const PARTITIONS: i32 = 3;
    const N: i64 = 300;
    init_tracing();
    let (topic, group) = topic_and_group("cons_ended", PARTITIONS).await;
    let table = create_sink_table().await;
    let feed = feed_in_rounds(&topic, PARTITIONS, 30, Duration::from_millis(400), None);

    // The consumer's sessions are found by their application name.
    let application = unique_name("cons_ended");
    let base = &env().database_url;
    let url = format!("{base}{}application_name={application}", if base.contains('?') { '&' } else { '?' });
    let sink = Arc::new(Sink::new(&table));
    let consumer = RunningConsumer::idempotent(test_consumer(&group, &topic, Arc::clone(&sink)).batch_size(10), &url);
    let admin = pg_client().await;
    for (round, applied) in [(1, 100), (2, 400)] {
        wait_for("ops applied before the sessions end", Duration::from_secs(60), || async {
            (sink.applied() >= applied).then_some(())
        })
        .await;
        let ended: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                &[&application],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ended > 0, "round {round}: the consumer had no session to end");
        println!("round {round}: ended {ended} sessions after {} ops", sink.applied());
    }
    assert!(!feed.is_finished(), "the stream ended before the last sessions were ended; the test proves nothing");

    fed_applied_and_committed(feed, &table, &group, &topic, PARTITIONS, N).await;
    consumer.stop().await.unwrap();
    assert_exactly_once_in_order(&table, PARTITIONS, N).await;
}

/// Not a check: prints the idempotent consumer's rate with and without batching (4 partitions,
/// 10,000 ops, one insert each). Run it with
/// `cargo test -p pgkafka-tests --test integration consumer::idempotent::measure_idempotent_batching -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn measure_idempotent_batching() {
    for batch in [100usize, 1] {
        let (topic, group) = topic_and_group("cons_meas", 4).await;
        let table = create_sink_table().await;
        let records: Vec<_> = (0..2500).flat_map(|i| (0..4).map(move |p| (p, stream_op(p, i)))).collect();
        send(&feeder(), &topic, &records).await;
        let sink = Arc::new(Sink::new(&table));
        let consumer = test_consumer(&group, &topic, Arc::clone(&sink)).batch_size(batch);
        let running = RunningConsumer::idempotent(consumer, &env().database_url);
        wait_for("the first op", Duration::from_secs(60), || async { (sink.applied() > 0).then_some(()) }).await;
        let (started, before) = (Instant::now(), sink.applied());
        wait_for("every op", Duration::from_secs(300), || async { (sink.applied() >= 10_000).then_some(()) }).await;
        let rate = (10_000 - before) as f64 / started.elapsed().as_secs_f64();
        println!("idempotent consumer, batch_size {batch}: {rate:.0} ops/s");
        running.stop().await.unwrap();
    }
}
