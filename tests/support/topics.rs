//! Kafka topics in tests: creating one, and reading topics back from their beginning, either
//! everything now ([`read_topic`], [`read_topics`]) or until expected changes arrived
//! ([`wait_delivered`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pgkafka::ReplicationOp;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::{kafka_config, unique_name};

/// Creates `topic` with `partitions` partitions and waits until its metadata shows them all.
pub async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        kafka_config().create().expect("cannot create a Kafka admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot create topic {topic}: {e}"));
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("cannot create topic {name}: {code}"));
    }
    let consumer: BaseConsumer = kafka_config().create().expect("cannot create a Kafka consumer");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32 == partitions))
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "topic {topic} did not show {partitions} partitions in 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes `topic` and its records. The local broker keeps records in memory, so a run that writes
/// millions of them (the benchmark harness) deletes each topic once it is measured.
pub async fn delete_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> =
        kafka_config().create().expect("cannot create a Kafka admin client");
    let results = admin
        .delete_topics(&[topic], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))))
        .await
        .unwrap_or_else(|e| panic!("cannot delete topic {topic}: {e}"));
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("cannot delete topic {name}: {code}"));
    }
}

/// One Kafka record, as read back by a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

impl Record {
    /// The value decoded as a ReplicationOp.
    pub fn op(&self) -> pgkafka::ReplicationOp {
        let value = self.value.as_deref().expect("record without a value");
        serde_json::from_slice(value).unwrap_or_else(|e| {
            panic!(
                "partition {} offset {}: not a ReplicationOp ({e}): {}",
                self.partition,
                self.offset,
                String::from_utf8_lossy(value)
            )
        })
    }

    /// The record as a consumer received it.
    pub fn from_message(message: &impl Message) -> Self {
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
        }
    }

    /// The key as UTF-8 text.
    pub fn key_text(&self) -> Option<String> {
        self.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned())
    }
}

/// Everything in `topic` right now, sorted by (partition, offset): every partition read from its
/// start until nothing new came for 2 s. The brokers' high watermarks are not trusted (Tansu can
/// report a stale one after pipelined produce requests, see [`read_topics`]).
pub async fn read_topic(topic: &str) -> Vec<Record> {
    read_topics(&[topic.to_owned()]).await.into_iter().map(|(_, record)| record).collect()
}

/// Reads topics from their beginning with one consumer until they are quiet, without trusting
/// the brokers' high watermarks: Tansu can report a stale high watermark (ListOffsets) after
/// pipelined produce requests, so reading up to it can miss records that are there.
struct TopicsReader {
    consumer: BaseConsumer,
    records: Vec<(String, Record)>,
}

impl TopicsReader {
    fn new(topics: &[String]) -> Self {
        let consumer: BaseConsumer = kafka_config()
            .set("group.id", unique_name("reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("cannot create a Kafka consumer");
        let mut assignment = TopicPartitionList::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("no metadata for topic {topic}: {e}"));
            let ids: Vec<i32> = metadata.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
            for id in ids {
                assignment
                    .add_partition_offset(topic, id, Offset::Beginning)
                    .expect("bad assignment");
            }
        }
        consumer.assign(&assignment).expect("cannot assign partitions");
        Self { consumer, records: Vec::new() }
    }

    /// Polls until nothing new came for `idle` (counted from the first record, or from 3 s
    /// into the call if nothing came), or `max` passed.
    fn poll(mut self, idle: Duration, max: Duration) -> Self {
        let start = Instant::now();
        let mut last = None::<Instant>;
        loop {
            let now = Instant::now();
            let quiet_since = last.unwrap_or(start + Duration::from_secs(3).min(max));
            if now >= start + max || (now >= quiet_since && now - quiet_since >= idle) {
                return self;
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    self.records.push((message.topic().to_owned(), Record::from_message(&message)));
                    last = Some(Instant::now());
                }
                Some(Err(e)) => panic!("error reading topics: {e}"),
                None => {}
            }
        }
    }

    async fn poll_async(self, idle: Duration, max: Duration) -> Self {
        tokio::task::spawn_blocking(move || self.poll(idle, max)).await.expect("reader panicked")
    }

    fn sorted(mut self) -> Vec<(String, Record)> {
        self.records.sort_by(|a, b| (&a.0, a.1.partition, a.1.offset).cmp(&(&b.0, b.1.partition, b.1.offset)));
        self.records
    }
}

/// The records of every topic, each tagged with its topic, sorted by (topic, partition, offset):
/// read from the beginning until nothing new came for 2 s.
pub async fn read_topics(topics: &[String]) -> Vec<(String, Record)> {
    let topics = topics.to_vec();
    let reader = tokio::task::spawn_blocking(move || TopicsReader::new(&topics)).await.expect("reader panicked");
    reader.poll_async(Duration::from_secs(2), Duration::from_secs(120)).await.sorted()
}

/// Waits until the topics together hold every `(lsn, seq_id)` of `expected`, then reads on until
/// nothing new came for 2 s, and returns what they hold.
pub async fn wait_delivered(topics: &[String], expected: &[ReplicationOp], timeout: Duration) -> Vec<(String, Record)> {
    let wanted: HashSet<(u64, u64)> = expected.iter().map(|op| (op.lsn, op.seq_id)).collect();
    let deadline = Instant::now() + timeout;
    let owned = topics.to_vec();
    let mut reader = tokio::task::spawn_blocking(move || TopicsReader::new(&owned)).await.expect("reader panicked");
    loop {
        reader = reader.poll_async(Duration::from_millis(300), Duration::from_secs(3)).await;
        let seen: HashSet<(u64, u64)> = reader
            .records
            .iter()
            .filter_map(|(_, r)| serde_json::from_slice::<ReplicationOp>(r.value.as_deref()?).ok())
            .map(|op| (op.lsn, op.seq_id))
            .collect();
        let missing = wanted.difference(&seen).count();
        if missing == 0 {
            return reader.poll_async(Duration::from_secs(2), Duration::from_secs(30)).await.sorted();
        }
        if Instant::now() > deadline {
            let missing_example: Vec<&ReplicationOp> =
                expected.iter().filter(|op| !seen.contains(&(op.lsn, op.seq_id))).take(3).collect();
            let arrived: Vec<String> = reader
                .records
                .iter()
                .rev()
                .take(20)
                .map(|(t, r)| {
                    let id = serde_json::from_slice::<ReplicationOp>(r.value.as_deref().unwrap_or_default())
                        .map(|op| format!("({}, {})", op.lsn, op.seq_id))
                        .unwrap_or_else(|_| "?".into());
                    format!("{t}/{}@{}={id}", r.partition, r.offset)
                })
                .collect();
            panic!(
                "after {timeout:?}, {missing} of {} expected changes had not arrived in {topics:?}, e.g. \
                 {missing_example:?}; the last records that did arrive: {arrived:?}",
                wanted.len()
            );
        }
    }
}
