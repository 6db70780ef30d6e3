//! A record the broker refuses for good, in the middle of a stream to one partition.
//!
//! Tansu does not enforce a topic's `max.message.bytes`, so a Kafka-protocol proxy in front of the
//! real broker (`pgkafka_tests::kafka_proxy`) answers the batch holding that record with
//! MESSAGE_TOO_LARGE, as a broker with a topic limit below the record does; "raising the limit" is
//! the proxy forwarding it again.

use std::time::Duration;

use pgkafka::{Lsn, Producer};
use pgkafka_tests::kafka_proxy::{KafkaProxy, MESSAGE_TOO_LARGE};
use pgkafka_tests::producer_task::RunningProducer;
use pgkafka_tests::slots::slot_confirmed;
use pgkafka_tests::env;

use super::{id_table, Scenario};

const DELIVERY: Duration = Duration::from_secs(90);
const MARKER: &str = "refuse-me";

/// A producer of the scenario whose Kafka traffic goes through `proxy`.
fn through(sc: &Scenario, proxy: &KafkaProxy) -> Producer {
    Producer::builder(
        env().database_url.clone(),
        proxy.bootstrap().to_owned(),
        sc.slot.clone(),
        sc.publication.clone(),
        sc.topic_map.clone(),
    )
    .build()
}

/// Ten rows are delivered; then the broker refuses the eleventh row's record while twenty more
/// follow one transaction at a time. Nothing after the refused record may reach its partition, the
/// producer stops with an error naming topic, partition, table and the transaction's LSN, the slot
/// is not confirmed past it; once the broker takes the record again, a restart delivers every
/// change exactly in commit order (re-sends allowed, gaps and overtaking not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_is_not_overtaken_by_later_records_of_its_partition() {
    pgkafka_tests::init_tracing();
    let (t, table) = id_table("p_refuse", 1);
    let mut sc = Scenario::new("p_refuse", vec![table]).await;
    let proxy = KafkaProxy::start(&env().brokers).await;
    let mut producer = RunningProducer::start(through(&sc, &proxy), &sc.slot).await;
    sc.ensure_reference().await;
    for id in 1..=10 {
        sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'before')")).await.unwrap();
    }
    sc.delivered_once(DELIVERY).await;
    assert!(proxy.connections() > 0, "the producer's Kafka traffic does not go through the proxy");

    proxy.refuse_records_containing(MARKER, MESSAGE_TOO_LARGE, Duration::from_secs(1));
    sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES (11, '{MARKER}')")).await.unwrap();
    for id in 12..=31 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'after')")).await.unwrap();
    }
    let error = producer.join(Duration::from_secs(60)).await.expect_err("a refused record must stop the producer");
    let refused = proxy.refused();
    assert!(!refused.is_empty(), "the proxy refused nothing: the test did not happen");
    assert!(refused.iter().all(|r| r.topic == sc.topics[0] && r.partition == 0), "{refused:?}");

    let txs = sc.expected().await;
    assert_eq!(txs.len(), 31);
    let refused_tx = &txs[10];
    assert_eq!(refused_tx.ops[0].op.key_row()[1].as_deref(), Some(MARKER));
    let published = sc.read_all().await;
    let overtaking: Vec<String> = published
        .iter()
        .filter(|(_, r)| r.op().lsn >= refused_tx.commit_lsn)
        .map(|(_, r)| format!("offset {}: {:?}", r.offset, r.op().op.key_row()))
        .collect();
    assert!(overtaking.is_empty(), "records at or after the refused one were published: {overtaking:?}");
    let confirmed = slot_confirmed(&sc.pg, &sc.slot).await.unwrap();
    assert!(confirmed < refused_tx.end_lsn, "the slot was confirmed past the refused record");

    let message = error.to_string();
    for part in [sc.topics[0].clone(), t.clone(), Lsn(refused_tx.commit_lsn).to_string()] {
        assert!(message.contains(&part), "the error does not name {part:?}: {message}");
    }
    let topic = &sc.topics[0];
    assert!(
        message.contains(&format!("{topic}/0")) || message.contains("partition 0"),
        "the error does not name partition 0: {message}"
    );

    // The limit is raised: a restart delivers everything, in order.
    proxy.stop_refusing();
    let producer = RunningProducer::start(through(&sc, &proxy), &sc.slot).await;
    let (_, _, delivery) = sc.delivered(DELIVERY).await;
    assert_eq!(delivery.distinct, 31);
    producer.stop().await.expect("a graceful stop");
    sc.cleanup().await;
}
