//! Records that are not `ReplicationOp`s (poison messages): stop by default, or skip them or
//! send them to a dead-letter topic; and the consumer's settings it refuses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgkafka::consumer::InvalidMessagePolicy;
use pgkafka::{Consumer, ConsumerError};
use pgkafka_tests::consumer_task::RunningConsumer;
use pgkafka_tests::{create_topic, env, init_tracing, kafka_config, read_topic, unique_name, wait_for};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use super::basic::Recorder;
use super::{committed, feeder, send, stream_op, test_consumer};

/// Partition 0: ops 0..5, then not JSON (offset 5), then the wrong shape (offset 6), then ops
/// 5..10 (offsets 7..12). Partition 1: ops 0..10.
async fn poisoned_topic(topic: &str) {
    create_topic(topic, 2).await;
    let mut records: Vec<(i32, Vec<u8>)> = (0..5).map(|i| (0, stream_op(0, i))).collect();
    records.push((0, b"not json".to_vec()));
    records.push((0, br#"{"table_name":"t","lsn":1}"#.to_vec()));
    records.extend((5..10).map(|i| (0, stream_op(0, i))));
    records.extend((0..10).map(|i| (1, stream_op(1, i))));
    send(&feeder(), topic, &records).await;
}

/// A record that is not JSON at partition 0 offset 5: by default the consumer stops with an error
/// naming topic, partition and offset, having committed nothing past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_stops_the_consumer_by_default() {
    init_tracing();
    let (topic, group) = (unique_name("cons_poison"), unique_name("cons_poison_g"));
    poisoned_topic(&topic).await;
    let app = Arc::new(Recorder::default());
    let result = tokio::time::timeout(Duration::from_secs(60), test_consumer(&group, &topic, Arc::clone(&app)).start_basic())
        .await
        .expect("the consumer did not stop on a poison message");
    match result {
        Err(ConsumerError::InvalidMessage { topic: t, partition: 0, offset: 5, reason }) => {
            assert_eq!(t, topic);
            assert!(reason.contains("expected"), "reason should be serde's: {reason}");
        }
        other => panic!("expected InvalidMessage at partition 0 offset 5, got {other:?}"),
    }
    let message = ConsumerError::InvalidMessage { topic: topic.clone(), partition: 0, offset: 5, reason: "x".into() }.to_string();
    assert!(message.contains(&topic) && message.contains("offset 5"), "{message}");
    assert_eq!(app.handled_of(0), (0..5).collect::<Vec<_>>());
    assert_eq!(committed(&group, &topic, 2).await[0], 5, "committed past the poison message");
}

/// The same poison records under `Skip` and `DeadLetter`: the consumer goes on and commits past
/// them; the dead-letter topic holds both, with headers naming where each came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_skipped_or_dead_lettered_on_request() {
    init_tracing();
    let topic = unique_name("cons_poison_skip");
    poisoned_topic(&topic).await;
    let dlq = format!("{topic}_dlq");
    create_topic(&dlq, 1).await;

    for policy in [InvalidMessagePolicy::Skip, InvalidMessagePolicy::DeadLetter(dlq.clone())] {
        let group = unique_name("cons_poison_skip_g");
        let app = Arc::new(Recorder::default());
        let consumer = test_consumer(&group, &topic, Arc::clone(&app)).invalid_message_policy(policy.clone());
        let running = RunningConsumer::basic(consumer);
        wait_for("20 ops handled", Duration::from_secs(60), || async { (app.handled().len() >= 20).then_some(()) }).await;
        wait_for("offsets committed past the poison", Duration::from_secs(30), || async {
            (committed(&group, &topic, 2).await == vec![12, 10]).then_some(())
        })
        .await;
        running.stop().await.unwrap_or_else(|e| panic!("{policy:?}: {e}"));
        assert_eq!(app.handled_of(0), (0..10).collect::<Vec<_>>(), "{policy:?}");
    }

    let dead = read_topic(&dlq).await;
    assert_eq!(dead.len(), 2, "the dead-letter topic holds the two poison records");
    assert_eq!(dead[0].value.as_deref(), Some(&b"not json"[..]));
    assert_eq!(dead[1].value.as_deref(), Some(&br#"{"table_name":"t","lsn":1}"#[..]));
    // Headers say where each came from.
    let headers: Vec<(String, String)> = {
        let topic = dlq.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = kafka_config().set("group.id", unique_name("dlq_reader")).create().unwrap();
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&topic, 0, Offset::Beginning).unwrap();
            consumer.assign(&list).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                assert!(Instant::now() < deadline);
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                    let h = m.headers().unwrap();
                    return (0..h.count())
                        .map(|i| {
                            let h = h.get(i);
                            (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                        })
                        .collect();
                }
            }
        })
        .await
        .unwrap()
    };
    assert!(headers.contains(&("pgkafka.topic".into(), topic.clone())), "{headers:?}");
    assert!(headers.contains(&("pgkafka.partition".into(), "0".into())), "{headers:?}");
    assert!(headers.contains(&("pgkafka.offset".into(), "5".into())), "{headers:?}");
}

/// `enable.auto.commit=true` as a Kafka option: refused as a configuration error, since the
/// consumer commits only handled records.
#[tokio::test]
async fn enable_auto_commit_cannot_be_set() {
    let consumer = Consumer::new("g", vec!["t"], env().brokers.as_str(), Recorder::default())
        .kafka_option("enable.auto.commit", "true");
    assert!(matches!(consumer.start_basic().await, Err(ConsumerError::Config(_))));
}
