//! Running producers in tests (in a task, or as a child process that can be SIGKILLed), waiting
//! for their output, and checking it against what the slot holds.
#![allow(clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgkafka::{Producer, ProducerError, ReplicationOp, ShutdownHandle};
use tokio::task::JoinHandle;

use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::{env, kafka_config, wait_for, Record};

/// A producer running in a background task. Dropping it asks it to shut down.
#[derive(Debug)]
pub struct RunningProducer {
    shutdown: ShutdownHandle,
    task: Option<JoinHandle<Result<(), ProducerError>>>,
}

impl RunningProducer {
    /// Starts `producer` in a task, without waiting for anything.
    pub fn spawn(producer: Producer) -> Self {
        let shutdown = producer.shutdown_handle();
        let task = tokio::spawn(async move { producer.start().await });
        Self { shutdown, task: Some(task) }
    }

    /// Starts `producer` and waits until it streams from `slot` (the slot exists and is active).
    /// Panics with the producer's error if it stops first.
    pub async fn start(producer: Producer, slot: &str) -> Self {
        let mut running = Self::spawn(producer);
        running.wait_streaming(slot, Duration::from_secs(60)).await;
        running
    }

    /// Waits until the slot is active, panicking with the producer's error if it stops first.
    pub async fn wait_streaming(&mut self, slot: &str, timeout: Duration) {
        let pg = crate::pg_client().await;
        let streaming = wait_for(&format!("the producer to stream from slot {slot}"), timeout, || {
            let finished = self.is_finished();
            let pg = &pg;
            async move {
                if finished {
                    return Some(false);
                }
                slot_active_pid(pg, slot).await.map(|_| true)
            }
        })
        .await;
        if !streaming {
            let result = self.join(Duration::from_secs(5)).await;
            panic!("the producer stopped before streaming from slot {slot}: {result:?}");
        }
    }

    /// Whether `start()` returned.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// A handle to stop it.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Shuts it down gracefully and returns what `start()` returned.
    pub async fn stop(mut self) -> Result<(), ProducerError> {
        self.shutdown.shutdown();
        self.join(Duration::from_secs(90)).await
    }

    /// Waits for `start()` to return on its own.
    pub async fn join(&mut self, timeout: Duration) -> Result<(), ProducerError> {
        let task = self.task.take().expect("producer already joined");
        match tokio::time::timeout(timeout, task).await {
            Ok(joined) => joined.expect("the producer task panicked"),
            Err(_) => panic!("the producer did not return within {timeout:?}"),
        }
    }
}

impl Drop for RunningProducer {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

/// The pid of the connection streaming from `slot`, if any.
pub async fn slot_active_pid(pg: &tokio_postgres::Client, slot: &str) -> Option<i32> {
    pg.query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active", &[&slot])
        .await
        .ok()
        .flatten()
        .and_then(|row| row.get::<_, Option<i32>>(0))
}

/// The slot's `confirmed_flush_lsn`, or `None` if it does not exist.
pub async fn slot_confirmed(pg: &tokio_postgres::Client, slot: &str) -> Option<u64> {
    let row = pg
        .query_opt(
            "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap_or_else(|e| panic!("cannot read slot {slot}: {e}"))?;
    row.get::<_, Option<String>>(0).map(|s| s.parse().expect("lsn"))
}

/// Drops `slot` once no connection uses it (waits up to 60 s); a missing slot is fine.
pub async fn drop_slot(pg: &tokio_postgres::Client, slot: &str) {
    wait_for(&format!("slot {slot} to be released and dropped"), Duration::from_secs(60), || async move {
        let exists = pg
            .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .ok()?
            .is_some();
        if !exists {
            return Some(());
        }
        pg.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.ok().map(|_| ())
    })
    .await;
}

/// Reads topics from their beginning with one consumer, without trusting the brokers' high
/// watermarks: Tansu can report a stale high watermark (ListOffsets) after pipelined produce
/// requests, so `read_topic`, which reads up to that watermark, can miss records that are there.
struct TopicsReader {
    consumer: BaseConsumer,
    records: Vec<(String, Record)>,
}

impl TopicsReader {
    fn new(topics: &[String]) -> Self {
        let consumer: BaseConsumer = kafka_config()
            .set("group.id", crate::unique_name("reader"))
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
                    self.records.push((
                        message.topic().to_owned(),
                        Record {
                            partition: message.partition(),
                            offset: message.offset(),
                            key: message.key().map(<[u8]>::to_vec),
                            value: message.payload().map(<[u8]>::to_vec),
                        },
                    ));
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
    let wanted: std::collections::HashSet<(u64, u64)> = expected.iter().map(|op| (op.lsn, op.seq_id)).collect();
    let deadline = Instant::now() + timeout;
    let owned = topics.to_vec();
    let mut reader = tokio::task::spawn_blocking(move || TopicsReader::new(&owned)).await.expect("reader panicked");
    loop {
        reader = reader.poll_async(Duration::from_millis(300), Duration::from_secs(3)).await;
        let seen: std::collections::HashSet<(u64, u64)> = reader
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

/// Where a table's changes go and how they are keyed, as a test expects.
#[derive(Debug, Clone)]
pub struct Route {
    pub topic: String,
    pub key_columns: Vec<String>,
}

/// What [`verify_delivery`] found.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Records that repeat an earlier record of their partition.
    pub duplicates: usize,
    /// Distinct changes.
    pub distinct: usize,
    /// Partitions that received records, per topic.
    pub partitions_used: BTreeMap<String, usize>,
}

/// Checks the records against the changes the slot holds:
/// - every record is exactly one of `expected` (same table, columns, values, lsn, seq_id), in the
///   topic of its table, keyed by the JSON array of its partition-key values;
/// - every expected change arrived;
/// - within each partition, changes come in (lsn, seq_id) order; a record out of that order is
///   only allowed as a byte-identical re-send of an earlier record of the same partition;
/// - all changes of one key went to one partition.
pub fn verify_delivery(records: &[(String, Record)], expected: &[ReplicationOp], routes: &HashMap<String, Route>) -> Delivery {
    let by_id: HashMap<(u64, u64), &ReplicationOp> = expected.iter().map(|op| ((op.lsn, op.seq_id), op)).collect();
    assert_eq!(by_id.len(), expected.len(), "the expected changes repeat an (lsn, seq_id)");
    let mut delivery = Delivery::default();
    // (lsn, seq_id) -> (topic, partition, key, value) of its first arrival.
    type FirstSeen = (String, i32, Option<Vec<u8>>, Option<Vec<u8>>);
    let mut first_seen: HashMap<(u64, u64), FirstSeen> = HashMap::new();
    let mut last_in_partition: HashMap<(String, i32), ((u64, u64), i64)> = HashMap::new();
    let mut partition_of_key: HashMap<(String, Vec<u8>), i32> = HashMap::new();
    let mut partitions: BTreeMap<String, std::collections::BTreeSet<i32>> = BTreeMap::new();
    for (topic, record) in records {
        let op = record.op();
        let id = (op.lsn, op.seq_id);
        let where_ = format!("{topic}/{} offset {}", record.partition, record.offset);
        let Some(want) = by_id.get(&id) else {
            panic!("{where_}: a record that is no change of the slot: {op:?}");
        };
        assert_eq!(&op, *want, "{where_}: the record differs from the change the slot holds");
        let route = routes.get(&op.table_name).unwrap_or_else(|| panic!("{where_}: unexpected table {}", op.table_name));
        assert_eq!(topic, &route.topic, "{where_}: change of {} in the wrong topic", op.table_name);
        let key_row = op.op.key_row();
        let key_values: Vec<Option<&str>> = route
            .key_columns
            .iter()
            .map(|c| op.value(key_row, c).unwrap_or_else(|| panic!("{where_}: no key column {c} in {op:?}")))
            .collect();
        let want_key = pgkafka::key::encode_key(key_values);
        assert_eq!(
            record.key_text().as_deref(),
            Some(String::from_utf8_lossy(&want_key).as_ref()),
            "{where_}: wrong message key for {op:?}"
        );
        let partition = *partition_of_key.entry((topic.clone(), want_key)).or_insert(record.partition);
        assert_eq!(partition, record.partition, "{where_}: changes of one key went to two partitions");
        partitions.entry(topic.clone()).or_default().insert(record.partition);

        match first_seen.get(&id) {
            Some((first_topic, first_partition, key, value)) => {
                assert_eq!(
                    (first_topic, *first_partition),
                    (topic, record.partition),
                    "{where_}: change {id:?} re-sent to another partition"
                );
                assert!(
                    key == &record.key && value == &record.value,
                    "{where_}: change {id:?} arrived twice with different bytes"
                );
                delivery.duplicates += 1;
            }
            None => {
                if let Some((last, last_offset)) = last_in_partition.get(&(topic.clone(), record.partition)) {
                    assert!(
                        id > *last,
                        "{where_}: change {id:?} arrived after change {last:?} (offset {last_offset}) of the same \
                         partition and is not a re-send: out of commit order"
                    );
                }
                last_in_partition.insert((topic.clone(), record.partition), (id, record.offset));
                first_seen.insert(id, (topic.clone(), record.partition, record.key.clone(), record.value.clone()));
            }
        }
    }
    let missing: Vec<&(u64, u64)> = by_id.keys().filter(|id| !first_seen.contains_key(id)).collect();
    assert!(missing.is_empty(), "{} of {} changes never arrived, e.g. {:?}", missing.len(), by_id.len(), {
        let mut m = missing.clone();
        m.sort();
        m.into_iter().take(5).map(|id| by_id[id]).collect::<Vec<_>>()
    });
    delivery.distinct = first_seen.len();
    delivery.partitions_used = partitions.into_iter().map(|(t, p)| (t, p.len())).collect();
    delivery
}

/// A small seeded random number generator (SplitMix64), so failures can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `PGKAFKA_TEST_SEED` if set, else from the clock. Prints the seed.
    pub fn from_env(test: &str) -> Self {
        let seed = std::env::var("PGKAFKA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        });
        println!("{test}: random seed {seed} (replay with PGKAFKA_TEST_SEED={seed})");
        eprintln!("{test}: random seed {seed} (replay with PGKAFKA_TEST_SEED={seed})");
        Self(seed)
    }

    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// What `producer_child` runs: passed as JSON in `PGKAFKA_CHILD_CONFIG`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChildConfig {
    pub database_url: String,
    pub brokers: String,
    pub slot: String,
    pub publication: String,
    pub topic_map: HashMap<String, pgkafka::TopicInfo>,
    pub status_interval_ms: u64,
    pub reconnect_backoff_max_ms: u64,
}

/// A producer in a child process (see `tests/bin/producer_child.rs`). Dropping it kills it.
#[derive(Debug)]
pub struct ChildProducer {
    child: Child,
    pub log: PathBuf,
}

impl ChildProducer {
    /// Starts the child producer binary `program` (in an integration test:
    /// `env!("CARGO_BIN_EXE_producer_child")`); its log goes to `log`.
    pub fn spawn(program: &str, config: &ChildConfig, log: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("child log");
        let child = Command::new(program)
            .env("PGKAFKA_CHILD_CONFIG", serde_json::to_string(config).unwrap())
            .env("RUST_LOG", std::env::var("PGKAFKA_CHILD_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("child log"))
            .stderr(file)
            .spawn()
            .expect("cannot start producer_child");
        Self { child, log }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (and how).
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("child status")
    }

    /// SIGKILL, and reap it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (graceful shutdown) and wait for it to exit.
    pub async fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the child producer did not exit within {timeout:?} of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildProducer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The connection string of the test database.
pub fn test_database_url() -> String {
    env().database_url.clone()
}

#[cfg(test)]
mod tests {
    //! The delivery checker must catch what a broken producer would do.
    use super::*;
    use pgkafka::Op;

    fn op(lsn: u64, seq_id: u64, id: &str) -> ReplicationOp {
        ReplicationOp {
            table_name: "t".into(),
            col_names: vec!["id".into(), "v".into()],
            lsn,
            seq_id,
            op: Op::Insert(vec![Some(id.into()), Some("x".into())]),
        }
    }

    fn rec(partition: i32, offset: i64, op: &ReplicationOp) -> (String, Record) {
        let key = pgkafka::key::encode_key([op.value(op.op.key_row(), "id").unwrap()]);
        ("topic".into(), Record { partition, offset, key: Some(key), value: Some(serde_json::to_vec(op).unwrap()) })
    }

    fn routes() -> HashMap<String, Route> {
        [("t".to_owned(), Route { topic: "topic".into(), key_columns: vec!["id".into()] })].into_iter().collect()
    }

    fn fails(records: &[(String, Record)], expected: &[ReplicationOp]) -> bool {
        let records = records.to_vec();
        let expected = expected.to_vec();
        std::panic::catch_unwind(move || {
            verify_delivery(&records, &expected, &routes());
        })
        .is_err()
    }

    #[test]
    fn accepts_exact_and_re_sent_deliveries_and_rejects_broken_ones() {
        let a = op(10, 0, "1");
        let b = op(10, 1, "1");
        let c = op(20, 0, "1");
        let d = op(20, 1, "2");
        let expected = vec![a.clone(), b.clone(), c.clone(), d.clone()];
        let exact = vec![rec(0, 0, &a), rec(0, 1, &b), rec(0, 2, &c), rec(1, 0, &d)];
        assert_eq!(verify_delivery(&exact, &expected, &routes()).duplicates, 0);
        // A crash after c: a and b re-sent, then c again.
        let resent = vec![rec(0, 0, &a), rec(0, 1, &b), rec(0, 2, &c), rec(0, 3, &a), rec(0, 4, &b), rec(0, 5, &c), rec(1, 0, &d)];
        assert_eq!(verify_delivery(&resent, &expected, &routes()).duplicates, 3);

        assert!(fails(&[rec(0, 0, &a), rec(0, 1, &c), rec(1, 0, &d)], &expected), "missing b");
        assert!(fails(&[rec(0, 0, &b), rec(0, 1, &a), rec(0, 2, &c), rec(1, 0, &d)], &expected), "b before a");
        assert!(fails(&[rec(0, 0, &a), rec(0, 1, &c), rec(0, 2, &b), rec(1, 0, &d)], &expected), "gap filled late");
        let mut changed = rec(0, 3, &a);
        changed.1.value = Some(serde_json::to_vec(&op(10, 0, "9")).unwrap());
        let mut with_changed = exact.clone();
        with_changed.push(changed);
        assert!(fails(&with_changed, &expected), "a duplicate with other content");
        let mut wrong_key = exact.clone();
        wrong_key[3].1.key = Some(br#"["1"]"#.to_vec());
        assert!(fails(&wrong_key, &expected), "wrong key");
        assert!(fails(&[rec(0, 0, &a), rec(0, 1, &b), rec(1, 1, &c), rec(1, 0, &d)], &expected), "one key in two partitions");
        let mut extra = exact.clone();
        extra.push(rec(1, 1, &op(30, 0, "2")));
        assert!(fails(&extra, &expected), "a record the slot does not hold");
        let mut wrong_lsn = exact;
        wrong_lsn[3].1.value = Some(serde_json::to_vec(&ReplicationOp { lsn: 21, ..d.clone() }).unwrap());
        assert!(fails(&wrong_lsn, &expected), "wrong lsn");
    }
}
