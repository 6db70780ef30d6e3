//! Stopping and starting: graceful shutdown confirms what was delivered, TRUNCATE, and a second
//! producer on the same slot.

use std::collections::HashMap;
use std::time::Duration;

use pgkafka::{ProducerError, SlotInUsePolicy, TruncatePolicy};
use pgkafka_tests::delivery::verify_delivery;
use pgkafka_tests::producer_task::RunningProducer;
use pgkafka_tests::slots::slot_confirmed;
use pgkafka_tests::topics::wait_delivered;
use pgkafka_tests::reference::all_ops;

use super::{id_table, Scenario};

const DELIVERY: Duration = Duration::from_secs(90);

/// 50 two-table transactions, then a graceful stop: the slot is confirmed to the last transaction's
/// end, so a restart re-sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_confirms_what_was_delivered() {
    pgkafka_tests::init_tracing();
    let (a, ta) = id_table("p_gs_a", 3);
    let (b, tb) = id_table("p_gs_b", 3);
    let mut sc = Scenario::new("p_gs", vec![ta, tb]).await;
    let first = sc.start().await;
    for i in 0..50 {
        sc.pg
            .batch_execute(&format!(
                "BEGIN; INSERT INTO {a} VALUES ({i}, 'a'); INSERT INTO {b} VALUES ({i}, 'b');
                 UPDATE {a} SET v = 'a{i}' WHERE id = {i}; COMMIT;"
            ))
            .await
            .unwrap();
    }
    let (txs, _, delivery) = sc.delivered(DELIVERY).await;
    assert_eq!(delivery.duplicates, 0);
    first.stop().await.expect("a graceful shutdown returns Ok");
    let confirmed = slot_confirmed(&sc.pg, &sc.slot).await.unwrap();
    let last_end = txs.last().unwrap().end_lsn;
    assert!(
        confirmed >= last_end,
        "after a graceful shutdown the slot is confirmed to {confirmed:#x}, short of the end {last_end:#x} \
         of the last delivered transaction: a restart would re-send delivered changes"
    );

    // A restart re-sends nothing that was delivered.
    let second = RunningProducer::start(sc.producer(), &sc.slot).await;
    for i in 50..80 {
        sc.pg
            .batch_execute(&format!("BEGIN; DELETE FROM {a} WHERE id = {}; INSERT INTO {b} VALUES ({i}, 'b'); COMMIT;", i - 50))
            .await
            .unwrap();
    }
    let (_, _, delivery) = sc.delivered(DELIVERY).await;
    assert_eq!(delivery.duplicates, 0, "the restarted producer re-sent delivered changes");

    // Shut down right after a large transaction: afterwards only that transaction (the unconfirmed
    // tail) may be sent again, and nothing is missing.
    sc.pg
        .batch_execute(&format!("INSERT INTO {b} SELECT g, repeat('x', 100) FROM generate_series(1000, 6000) g"))
        .await
        .unwrap();
    second.stop().await.expect("a graceful shutdown returns Ok");
    let third = RunningProducer::start(sc.producer(), &sc.slot).await;
    let txs = sc.expected().await;
    let tail_lsn = txs.last().unwrap().commit_lsn;
    let ops = all_ops(&txs);
    let records = wait_delivered(&sc.topics, &ops, DELIVERY).await;
    let _ = verify_delivery(&records, &ops, &sc.routes);
    let mut seen: HashMap<(u64, u64), usize> = HashMap::new();
    for (_, record) in &records {
        let op = record.op();
        *seen.entry((op.lsn, op.seq_id)).or_default() += 1;
    }
    let resent_earlier: Vec<_> = seen.iter().filter(|(id, n)| **n > 1 && id.0 != tail_lsn).collect();
    assert!(resent_earlier.is_empty(), "changes confirmed before the shutdown were re-sent: {resent_earlier:?}");
    third.stop().await.unwrap();
    sc.cleanup().await;
}

/// A TRUNCATE between two inserts stops the producer with an error naming the table and nothing
/// confirmed past it (again on restart); with `TruncatePolicy::Skip` it goes on without publishing
/// the TRUNCATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_stops_the_producer_by_default_and_skip_goes_on() {
    pgkafka_tests::init_tracing();
    let (t, table) = id_table("p_trunc", 1);
    let mut sc = Scenario::new("p_trunc", vec![table]).await;
    let mut producer = sc.start().await;
    super::stream::run_each(&sc.pg, &[
        format!("INSERT INTO {t} VALUES (1, 'before')"),
        format!("TRUNCATE {t}"),
        format!("INSERT INTO {t} VALUES (2, 'after')"),
    ])
    .await;
    let error = producer.join(Duration::from_secs(60)).await.expect_err("TRUNCATE must stop the producer");
    match &error {
        ProducerError::Truncate { table, .. } => assert_eq!(table, &t),
        other => panic!("expected ProducerError::Truncate, got {other:?}"),
    }
    assert!(error.to_string().contains(&t), "{error}");
    let txs = sc.expected().await;
    assert_eq!(txs.len(), 3);
    assert_eq!(txs[1].truncated, std::slice::from_ref(&t));
    let confirmed = slot_confirmed(&sc.pg, &sc.slot).await.unwrap();
    assert!(confirmed < txs[1].end_lsn, "the slot was confirmed past the TRUNCATE it stopped on");
    let records = sc.read_all().await;
    assert!(
        records.iter().all(|(_, r)| r.op().lsn < txs[1].commit_lsn),
        "changes after the TRUNCATE were published by a producer that stopped on it"
    );

    // It stops there again on restart: nothing was skipped.
    let mut again = RunningProducer::spawn(sc.producer());
    let error = again.join(Duration::from_secs(60)).await.expect_err("the TRUNCATE is still ahead in the slot");
    assert!(matches!(error, ProducerError::Truncate { .. }), "{error:?}");

    // With Skip it goes on: the inserts before and after arrive, the TRUNCATE itself is not published.
    let skipping = RunningProducer::start(sc.builder().truncate_policy(TruncatePolicy::Skip).build(), &sc.slot).await;
    let (_, records, _) = sc.delivered(DELIVERY).await;
    assert!(records.iter().all(|(_, r)| r.op().lsn != txs[1].commit_lsn));
    // A skipped TRUNCATE inside a transaction takes no seq_id: the published changes stay contiguous.
    sc.pg
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {t} VALUES (3, 'later'); TRUNCATE {t}; INSERT INTO {t} VALUES (4, 'last'); COMMIT"
        ))
        .await
        .unwrap();
    let (txs, records, _) = sc.delivered(DELIVERY).await;
    assert_eq!(txs.len(), 4);
    let last: Vec<(u64, Option<String>)> = records
        .iter()
        .map(|(_, r)| r.op())
        .filter(|op| op.lsn == txs[3].commit_lsn)
        .map(|op| (op.seq_id, op.op.key_row()[0].clone()))
        .collect();
    assert_eq!(last, [(0, Some("3".to_owned())), (1, Some("4".to_owned()))]);
    assert!(!skipping.is_finished());
    skipping.stop().await.unwrap();
    sc.cleanup().await;
}

/// A second producer on an active slot fails with `SlotInUse` under `SlotInUsePolicy::Fail`; by
/// default it waits and takes over when the first stops, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_producer_on_the_slot_fails_with_slot_in_use_or_waits_to_take_over() {
    pgkafka_tests::init_tracing();
    let (t, table) = id_table("p_inuse", 2);
    let mut sc = Scenario::new("p_inuse", vec![table]).await;
    let active = sc.start().await;

    let second = sc.builder().slot_in_use_policy(SlotInUsePolicy::Fail).build();
    let error = tokio::time::timeout(Duration::from_secs(60), second.start())
        .await
        .expect("SlotInUsePolicy::Fail must not wait")
        .expect_err("two producers streamed from one slot");
    match &error {
        ProducerError::SlotInUse { slot, .. } => assert_eq!(slot, &sc.slot),
        other => panic!("expected ProducerError::SlotInUse, got {other:?}"),
    }

    // The default waits, and takes over when the active producer stops.
    let standby = RunningProducer::spawn(sc.producer());
    sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'one')")).await.unwrap();
    sc.delivered_once(DELIVERY).await;
    assert!(!standby.is_finished(), "the standby gave up instead of waiting: SlotInUsePolicy::Wait");
    active.stop().await.unwrap();
    sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES (2, 'two')")).await.unwrap();
    let (txs, _) = sc.delivered_once(DELIVERY).await;
    assert_eq!(txs.len(), 2);
    standby.stop().await.unwrap();
    sc.cleanup().await;
}

/// A row whose record (1.6 MB) exceeds the broker's limit: the producer stops with a Kafka error
/// naming the topic, confirms nothing past it and publishes nothing after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_kafka_refuses_for_good_stops_the_producer_naming_the_topic_without_confirming_it() {
    pgkafka_tests::init_tracing();
    let (t, table) = id_table("p_big", 1);
    let mut sc = Scenario::new("p_big", vec![table]).await;
    let mut producer = sc.start().await;
    // Over librdkafka's and the broker's default message.max.bytes (1 MB).
    super::stream::run_each(&sc.pg, &[
        format!("INSERT INTO {t} VALUES (1, 'small')"),
        format!("INSERT INTO {t} SELECT 2, string_agg(md5(g::text), '') FROM generate_series(1, 50000) g"),
        format!("INSERT INTO {t} VALUES (3, 'after')"),
    ])
    .await;
    let error = producer.join(Duration::from_secs(90)).await.expect_err("a 1.6 MB record cannot be delivered");
    assert!(matches!(error, ProducerError::Kafka(_)), "expected ProducerError::Kafka, got {error:?}");
    assert!(error.to_string().contains(&sc.topics[0]), "the error does not name the topic: {error}");
    let txs = sc.expected().await;
    assert_eq!(txs.len(), 3);
    let confirmed = slot_confirmed(&sc.pg, &sc.slot).await.unwrap();
    assert!(confirmed < txs[1].end_lsn, "the slot was confirmed past the record Kafka refused");
    let records = sc.read_all().await;
    assert!(
        records.iter().all(|(_, r)| r.op().lsn < txs[1].commit_lsn),
        "records after the refused one were published"
    );
    // The refused record is still ahead in the slot: a restart stops on it again.
    let mut again = RunningProducer::spawn(sc.producer());
    let error = again.join(Duration::from_secs(90)).await.expect_err("the refused record is still in the slot");
    assert!(matches!(error, ProducerError::Kafka(_)), "{error:?}");
    sc.cleanup().await;
}
