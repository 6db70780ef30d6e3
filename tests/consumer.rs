//! The basic and idempotent consumers against the real broker and PostgreSQL: order per
//! partition, commits only of handled records, retries, fatal errors, poison messages, and
//! exactly-once effects through duplicates, re-sends, SIGKILLs and a consumer joining and leaving.
//!
//! The records are written straight to Kafka (not by pgkafka's producer), so each test controls
//! partitions, duplicates and garbage exactly. An op's row is `[tag, i]`: `tag` is the partition it
//! was sent to and `i` its position in that partition's stream (`pgkafka_tests::consuming`).

mod basic;
mod commits;
mod crash;
mod faults;
mod idempotent;
mod lifecycle;
mod poison;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pgkafka::Consumer;
use pgkafka_tests::consuming::tagged_op;
use pgkafka_tests::{create_topic, env, kafka_config, unique_name};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;


/// A `lsn` base just below 2^63, so a stream crosses the signed 64-bit boundary: a state stored
/// or compared as `bigint` would put the later ops before the earlier ones.
const HIGH_LSN: u64 = (1 << 63) - 7;

/// Op `i` of partition `p`: three changes per transaction, lsn rising past 2^63.
fn stream_op(p: i32, i: i64) -> Vec<u8> {
    tagged_op(p, i, HIGH_LSN + (i as u64) / 3, (i as u64) % 3)
}

/// A Kafka producer that writes the test streams straight to the topics, idempotently.
fn feeder() -> FutureProducer {
    kafka_config().set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5").create().unwrap()
}

/// Sends `records` (partition, value), in order, and waits until the broker has them all.
/// Returns the end offset of each partition written to, from the delivery reports (this broker's
/// high watermarks are not exact enough to compare with).
async fn send(producer: &FutureProducer, topic: &str, records: &[(i32, Vec<u8>)]) -> BTreeMap<i32, i64> {
    let mut deliveries = Vec::with_capacity(records.len());
    for (p, value) in records {
        let key = format!("k{p}");
        let delivery = producer
            .send_result(FutureRecord::to(topic).partition(*p).key(&key).payload(value))
            .map_err(|(e, _)| e)
            .unwrap();
        deliveries.push(delivery);
    }
    let mut ends = BTreeMap::new();
    for delivery in deliveries {
        let delivered = delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
        let end = ends.entry(delivered.partition).or_insert(0);
        *end = (*end).max(delivered.offset + 1);
    }
    ends
}

/// Folds `ends` (from [`send`]) into `into`, keeping each partition's highest end offset.
fn merge(into: &mut BTreeMap<i32, i64>, ends: BTreeMap<i32, i64>) {
    for (p, end) in ends {
        let e = into.entry(p).or_insert(0);
        *e = (*e).max(end);
    }
}

/// The end offsets of partitions `0..partitions` (-1: none written), as [`committed`] returns them.
fn as_vec(ends: &BTreeMap<i32, i64>, partitions: i32) -> Vec<i64> {
    (0..partitions).map(|p| ends.get(&p).copied().unwrap_or(-1)).collect()
}

/// The stream of `n` ops per partition, with re-sends: after every 25th op of a partition its
/// last 10 ops go out again, as a restarted producer would send them.
fn stream_with_resends(partitions: i32, from: i64, to: i64) -> Vec<(i32, Vec<u8>)> {
    let mut records = Vec::new();
    for i in from..to {
        for p in 0..partitions {
            records.push((p, stream_op(p, i)));
            if i % 25 == 24 {
                for j in (i - 9)..=i {
                    records.push((p, stream_op(p, j)));
                }
            }
        }
    }
    records
}

/// Feeds [`stream_with_resends`] to `topic` in a task: `rounds` rounds of 10 ops per partition,
/// `pause` apart. With `replay_at`, after that round partitions 0 and 1 are sent again from their
/// start, as a producer restarted from an old slot position would. Returns the end offsets.
fn feed_in_rounds(topic: &str, partitions: i32, rounds: i64, pause: Duration, replay_at: Option<i64>) -> JoinHandle<BTreeMap<i32, i64>> {
    let topic = topic.to_owned();
    tokio::spawn(async move {
        let producer = feeder();
        let mut ends = BTreeMap::new();
        for round in 0..rounds {
            merge(&mut ends, send(&producer, &topic, &stream_with_resends(partitions, round * 10, round * 10 + 10)).await);
            if replay_at == Some(round) {
                let resend: Vec<_> = (0..round * 10).flat_map(|i| (0..2).map(move |p| (p, stream_op(p, i)))).collect();
                merge(&mut ends, send(&producer, &topic, &resend).await);
            }
            tokio::time::sleep(pause).await;
        }
        ends
    })
}

/// The committed offsets of `group` for partitions `0..partitions` of `topic` (-1: none).
async fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        // One reader per group, never dropped: closing a consumer that carries the group id of a
        // live group can block for good with this broker.
        static READERS: OnceLock<Mutex<HashMap<String, Arc<BaseConsumer>>>> = OnceLock::new();
        let consumer = Arc::clone(
            READERS
                .get_or_init(Default::default)
                .lock()
                .unwrap()
                .entry(group.clone())
                .or_insert_with(|| Arc::new(kafka_config().set("group.id", &group).create().unwrap())),
        );
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(&topic, p);
        }
        let list = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
        (0..partitions)
            .map(|p| match list.find_partition(&topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect()
    })
    .await
    .unwrap()
}

/// A new topic of `partitions` partitions, and a group name of its own, both from `prefix`.
async fn topic_and_group(prefix: &str, partitions: i32) -> (String, String) {
    let topic = unique_name(prefix);
    create_topic(&topic, partitions).await;
    (topic, unique_name(&format!("{prefix}_g")))
}

/// A consumer of `topic` in `group` with short group timeouts, retry backoffs and commit interval.
fn test_consumer<A>(group: &str, topic: &str, app: A) -> Consumer<A> {
    Consumer::new(group, vec![topic], env().brokers.as_str(), app)
        .kafka_option("session.timeout.ms", "6000")
        .kafka_option("heartbeat.interval.ms", "500")
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .commit_interval(Duration::from_millis(200))
}
