//! The basic and idempotent consumers against the real broker and PostgreSQL: order per
//! partition, commits only of handled records, retries, fatal errors, poison messages, and
//! exactly-once effects through duplicates, re-sends, SIGKILLs and a consumer joining and leaving.
//!
//! The records are written straight to Kafka (not by pgkafka's producer), so each test controls
//! partitions, duplicates and garbage exactly. An op's row is `[tag, i]`: `tag` is the partition it
//! was sent to and `i` its position in that partition's stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pgkafka::consumer::InvalidMessagePolicy;
use pgkafka::sqlx::{Postgres, Transaction};
use pgkafka::{async_trait::async_trait, BasicApplication, Consumer, ConsumerError, IdempotentApplication, Lsn, Op, ReplicationOp};
use pgkafka_tests::{create_topic, env, init_tracing, kafka_config, pg_client, read_topic, unique_name, wait_for};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// A `lsn` base just below 2^63, so a stream crosses the signed 64-bit boundary: a state stored
/// or compared as `bigint` would put the later ops before the earlier ones.
const HIGH_LSN: u64 = (1 << 63) - 7;

fn op(tag: i32, i: i64, lsn: u64, seq_id: u64) -> Vec<u8> {
    serde_json::to_vec(&ReplicationOp {
        table_name: "t".into(),
        col_names: vec!["tag".into(), "i".into()],
        lsn,
        seq_id,
        op: Op::Insert(vec![Some(tag.to_string()), Some(i.to_string())]),
    })
    .unwrap()
}

/// Op `i` of partition `p`: three changes per transaction, lsn rising past 2^63.
fn stream_op(p: i32, i: i64) -> Vec<u8> {
    op(p, i, HIGH_LSN + (i as u64) / 3, (i as u64) % 3)
}

fn tag_and_i(op: &ReplicationOp) -> (i32, i64) {
    let Op::Insert(row) = &op.op else { panic!("not an insert: {op:?}") };
    (row[0].as_deref().unwrap().parse().unwrap(), row[1].as_deref().unwrap().parse().unwrap())
}

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

fn merge(into: &mut BTreeMap<i32, i64>, ends: BTreeMap<i32, i64>) {
    for (p, end) in ends {
        let e = into.entry(p).or_insert(0);
        *e = (*e).max(end);
    }
}

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

fn test_consumer<A>(group: &str, topic: &str, app: A) -> Consumer<A> {
    Consumer::new(group, vec![topic], env().brokers.as_str(), app)
        .kafka_option("session.timeout.ms", "6000")
        .kafka_option("heartbeat.interval.ms", "500")
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .commit_interval(Duration::from_millis(200))
}

// ---------------------------------------------------------------------------------------------
// Basic consumer

/// Records what it handles, and whether handlers of one partition ever overlapped.
#[derive(Default)]
struct Recorder {
    /// Every call: (tag, i, succeeded).
    calls: Mutex<Vec<(i32, i64, bool)>>,
    busy: Mutex<BTreeMap<i32, bool>>,
    overlap_in_partition: AtomicBool,
    /// `current_message()` was missing or named another partition.
    wrong_origin: AtomicBool,
    running: AtomicUsize,
    max_running: AtomicUsize,
    /// (tag, i, how many times it fails transiently first)
    transient: Option<(i32, i64, usize)>,
    transient_seen: AtomicUsize,
    /// (tag, i) that fails fatally.
    fatal: Option<(i32, i64)>,
    delay: Duration,
}

impl Recorder {
    fn handled(&self) -> Vec<(i32, i64)> {
        self.calls.lock().unwrap().iter().filter(|c| c.2).map(|c| (c.0, c.1)).collect()
    }

    fn handled_of(&self, tag: i32) -> Vec<i64> {
        self.handled().into_iter().filter(|c| c.0 == tag).map(|c| c.1).collect()
    }

    fn calls_of(&self, tag: i32) -> Vec<i64> {
        self.calls.lock().unwrap().iter().filter(|c| c.0 == tag).map(|c| c.1).collect()
    }
}

#[async_trait]
impl BasicApplication for Recorder {
    async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
        let (tag, i) = tag_and_i(op);
        if pgkafka::consumer::current_message().is_none_or(|at| at.partition != tag) {
            self.wrong_origin.store(true, Ordering::SeqCst);
        }
        if std::mem::replace(self.busy.lock().unwrap().entry(tag).or_default(), true) {
            self.overlap_in_partition.store(true, Ordering::SeqCst);
        }
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.busy.lock().unwrap().insert(tag, false);

        let result = if self.fatal == Some((tag, i)) {
            Err(ConsumerError::fatal(format!("boom at {tag}/{i}")))
        } else if matches!(self.transient, Some((t, j, times)) if t == tag && j == i && self.transient_seen.fetch_add(1, Ordering::SeqCst) < times)
        {
            Err(ConsumerError::transient("downstream busy"))
        } else {
            Ok(())
        };
        self.calls.lock().unwrap().push((tag, i, result.is_ok()));
        result
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_handles_each_partition_in_order_and_partitions_concurrently() {
    init_tracing();
    let (topic, group) = (unique_name("cons_order"), unique_name("cons_order_g"));
    create_topic(&topic, 4).await;
    let records: Vec<_> = (0..50).flat_map(|i| (0..4).map(move |p| (p, stream_op(p, i)))).collect();
    send(&feeder(), &topic, &records).await;

    let app = Arc::new(Recorder { delay: Duration::from_millis(2), ..Recorder::default() });
    let consumer = test_consumer(&group, &topic, Arc::clone(&app));
    let stop = consumer.shutdown_handle();
    let task = tokio::spawn(consumer.start_basic());
    wait_for("200 ops handled", Duration::from_secs(60), || async { (app.handled().len() >= 200).then_some(()) }).await;
    stop.shutdown();
    task.await.unwrap().unwrap();

    for p in 0..4 {
        assert_eq!(app.handled_of(p), (0..50).collect::<Vec<_>>(), "partition {p} out of order or incomplete");
    }
    assert!(!app.overlap_in_partition.load(Ordering::SeqCst), "two ops of one partition were handled at once");
    assert!(app.max_running.load(Ordering::SeqCst) >= 2, "partitions were never handled concurrently");
    assert!(!app.wrong_origin.load(Ordering::SeqCst), "current_message() did not name the op's partition");
    // A graceful stop commits everything handled.
    assert_eq!(committed(&group, &topic, 4).await, vec![50; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_retries_a_transient_error_in_place() {
    init_tracing();
    let (topic, group) = (unique_name("cons_retry"), unique_name("cons_retry_g"));
    create_topic(&topic, 2).await;
    let records: Vec<_> = (0..20).flat_map(|i| (0..2).map(move |p| (p, stream_op(p, i)))).collect();
    send(&feeder(), &topic, &records).await;

    let app = Arc::new(Recorder { transient: Some((0, 5, 3)), ..Recorder::default() });
    let consumer = test_consumer(&group, &topic, Arc::clone(&app));
    let stop = consumer.shutdown_handle();
    let task = tokio::spawn(consumer.start_basic());
    wait_for("40 ops handled", Duration::from_secs(60), || async { (app.handled().len() >= 40).then_some(()) }).await;
    stop.shutdown();
    task.await.unwrap().unwrap();

    let mut expected: Vec<i64> = (0..5).collect();
    expected.extend([5, 5, 5]);
    expected.extend(5..20);
    assert_eq!(app.calls_of(0), expected, "op 5 must be retried three times, before anything after it");
    assert_eq!(app.handled_of(0), (0..20).collect::<Vec<_>>());
    assert_eq!(app.handled_of(1), (0..20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_fatal_error_stops_and_commits_exactly_what_was_handled() {
    init_tracing();
    let (topic, group) = (unique_name("cons_fatal"), unique_name("cons_fatal_g"));
    create_topic(&topic, 3).await;
    let records: Vec<_> = (0..30).flat_map(|i| (0..3).map(move |p| (p, stream_op(p, i)))).collect();
    send(&feeder(), &topic, &records).await;

    let app = Arc::new(Recorder { fatal: Some((1, 12)), delay: Duration::from_millis(1), ..Recorder::default() });
    let result = tokio::time::timeout(Duration::from_secs(60), test_consumer(&group, &topic, Arc::clone(&app)).start_basic())
        .await
        .expect("the consumer did not stop on a fatal error");
    match result {
        Err(ConsumerError::Fatal(e)) => assert_eq!(e.to_string(), "boom at 1/12"),
        other => panic!("expected the application's fatal error, got {other:?}"),
    }
    assert_eq!(app.handled_of(1), (0..12).collect::<Vec<_>>());
    // Every partition's commit is exactly the number of its ops that were handled: never past an
    // unhandled one (partition 1 stops at the failed op 12), and nothing finished is left out.
    let offsets = committed(&group, &topic, 3).await;
    for p in 0..3 {
        let handled = app.handled_of(p);
        assert_eq!(handled, (0..handled.len() as i64).collect::<Vec<_>>());
        let expected = if handled.is_empty() { -1 } else { handled.len() as i64 };
        assert_eq!(offsets[p as usize], expected, "partition {p}: committed {offsets:?}, handled {}", handled.len());
    }

    // The group resumes exactly there.
    let again = Arc::new(Recorder::default());
    let consumer = test_consumer(&group, &topic, Arc::clone(&again));
    let stop = consumer.shutdown_handle();
    let task = tokio::spawn(consumer.start_basic());
    wait_for("partition 1 finished", Duration::from_secs(60), || async {
        (again.handled_of(1).last() == Some(&29)).then_some(())
    })
    .await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    assert_eq!(again.handled_of(1), (12..30).collect::<Vec<_>>());
}

/// A partition stuck on a failing op neither holds up the others nor loses or reorders anything
/// while its backlog outgrows the pause threshold (1,000 records) and it is paused and resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_stuck_partition_is_paused_without_blocking_others_or_losing_records() {
    init_tracing();
    let (topic, group) = (unique_name("cons_stuck"), unique_name("cons_stuck_g"));
    create_topic(&topic, 2).await;
    let mut records: Vec<_> = (0..2500).map(|i| (0, stream_op(0, i))).collect();
    records.extend((0..100).map(|i| (1, stream_op(1, i))));
    send(&feeder(), &topic, &records).await;

    let app = Arc::new(Recorder { transient: Some((0, 0, 60)), ..Recorder::default() });
    // Below the 2,500 records of partition 0, so its pause and resume are exercised.
    let consumer = test_consumer(&group, &topic, Arc::clone(&app)).max_queued_per_partition(1000);
    let stop = consumer.shutdown_handle();
    let task = tokio::spawn(consumer.start_basic());
    wait_for("partition 1 handled", Duration::from_secs(60), || async { (app.handled_of(1).len() == 100).then_some(()) }).await;
    assert!(app.handled_of(0).is_empty(), "partition 0 should still be stuck on its first op");
    wait_for("partition 0 handled", Duration::from_secs(90), || async { (app.handled_of(0).len() >= 2500).then_some(()) }).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    assert_eq!(app.handled_of(0), (0..2500).collect::<Vec<_>>());
    assert_eq!(committed(&group, &topic, 2).await, vec![2500, 100]);
}

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
        let stop = consumer.shutdown_handle();
        let task = tokio::spawn(consumer.start_basic());
        wait_for("20 ops handled", Duration::from_secs(60), || async { (app.handled().len() >= 20).then_some(()) }).await;
        wait_for("offsets committed past the poison", Duration::from_secs(30), || async {
            (committed(&group, &topic, 2).await == vec![12, 10]).then_some(())
        })
        .await;
        stop.shutdown();
        task.await.unwrap().unwrap_or_else(|e| panic!("{policy:?}: {e}"));
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

#[tokio::test]
async fn enable_auto_commit_cannot_be_set() {
    let consumer = Consumer::new("g", vec!["t"], env().brokers.as_str(), Recorder::default())
        .kafka_option("enable.auto.commit", "true");
    assert!(matches!(consumer.start_basic().await, Err(ConsumerError::Config(_))));
}

// ---------------------------------------------------------------------------------------------
// Idempotent consumer

/// Inserts one row per op into its table; optionally fails once, after inserting, on one op.
struct Sink {
    table: String,
    fail_once_after_insert: Option<(i32, i64)>,
    failed: AtomicBool,
    applied: AtomicU64,
    /// A pause after each insert, to widen the windows in which instances overlap.
    delay: Duration,
}

impl Sink {
    fn new(table: &str) -> Arc<Self> {
        Arc::new(Sink {
            table: table.into(),
            fail_once_after_insert: None,
            failed: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            delay: Duration::ZERO,
        })
    }
}

#[async_trait]
impl IdempotentApplication for Sink {
    async fn handle_message(&self, tx: &mut Transaction<'_, Postgres>, op: &ReplicationOp) -> Result<(), ConsumerError> {
        let (tag, i) = tag_and_i(op);
        pgkafka::sqlx::query(&format!(
            "INSERT INTO {} (partition_tag, i, lsn, seq_id) VALUES ($1, $2, $3::text::numeric, $4::text::numeric)",
            self.table
        ))
        .bind(tag)
        .bind(i)
        .bind(op.lsn.to_string())
        .bind(op.seq_id.to_string())
        .execute(&mut **tx)
        .await?;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.fail_once_after_insert == Some((tag, i)) && !self.failed.swap(true, Ordering::SeqCst) {
            return Err(ConsumerError::transient("fails once, after its insert"));
        }
        self.applied.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn create_sink_table() -> String {
    let table = unique_name("cons_sink");
    pg_client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, partition_tag int NOT NULL, i bigint NOT NULL, \
             lsn numeric NOT NULL, seq_id numeric NOT NULL)"
        ))
        .await
        .unwrap();
    table
}

/// The rows in `table`. Retries for a while: other suites on the same server restart it.
async fn sink_count(table: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let (client, connection) = tokio_postgres::connect(&env().database_url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let row = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?;
            Ok::<i64, tokio_postgres::Error>(row.get(0))
        };
        match attempt.await {
            Ok(count) => return count,
            Err(e) if Instant::now() < deadline => {
                eprintln!("counting rows of {table}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("cannot count rows of {table}: {e}"),
        }
    }
}

/// Each partition's `i` values, in the order the rows were inserted, must be exactly `0..n`.
async fn assert_exactly_once_in_order(table: &str, partitions: i32, n: i64) {
    let rows = pg_client()
        .await
        .query(&format!("SELECT partition_tag, i FROM {table} ORDER BY id"), &[])
        .await
        .unwrap();
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for row in rows {
        by_partition.entry(row.get(0)).or_default().push(row.get(1));
    }
    for p in 0..partitions {
        let got = by_partition.remove(&p).unwrap_or_default();
        if got != (0..n).collect::<Vec<_>>() {
            let mut seen = BTreeMap::new();
            for i in &got {
                *seen.entry(*i).or_insert(0) += 1;
            }
            let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).map(|(i, _)| *i).collect();
            let missing: Vec<_> = (0..n).filter(|i| !seen.contains_key(i)).collect();
            panic!("partition {p}: {} rows, duplicates {dups:?}, missing {missing:?}, first rows {:?}", got.len(), &got[..got.len().min(40)]);
        }
    }
    assert!(by_partition.is_empty(), "rows of unknown partitions: {:?}", by_partition.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_applies_each_op_once_through_resends_and_rollbacks() {
    init_tracing();
    let (topic, group) = (unique_name("cons_idem"), unique_name("cons_idem_g"));
    create_topic(&topic, 3).await;
    let table = create_sink_table().await;
    let schema = unique_name("cons_state");
    pg_client().await.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let producer = feeder();
    send(&producer, &topic, &stream_with_resends(3, 0, 60)).await;

    let sink = Arc::new(Sink {
        fail_once_after_insert: Some((0, 17)),
        ..Arc::try_unwrap(Sink::new(&table)).ok().unwrap()
    });
    let consumer = test_consumer(&group, &topic, Arc::clone(&sink)).state_schema(&schema).state_table("Progress");
    let stop = consumer.shutdown_handle();
    let url = env().database_url.clone();
    let task = tokio::spawn(async move { consumer.start_idempotent(&url).await });
    wait_for("180 rows", Duration::from_secs(60), || async { (sink_count(&table).await >= 180).then_some(()) }).await;

    // The whole stream again, as a producer restarted from an old slot position would send it:
    // every op is a duplicate now.
    let end = as_vec(&send(&producer, &topic, &stream_with_resends(3, 0, 60)).await, 3);
    wait_for("everything consumed", Duration::from_secs(60), || async {
        (committed(&group, &topic, 3).await == end).then_some(())
    })
    .await;
    stop.shutdown();
    task.await.unwrap().unwrap();

    assert!(sink.failed.load(Ordering::SeqCst), "the transient failure did not happen");
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

/// SIGKILLs a consumer process at random points while a stream with duplicates and re-sends flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_idempotent_consumers_apply_every_op_exactly_once() {
    const CHILD: &str = env!("CARGO_BIN_EXE_consumer_child");
    const PARTITIONS: i32 = 4;
    const N: i64 = 500;
    const KILLS: usize = 6;
    init_tracing();
    let (topic, group) = (unique_name("cons_crash"), unique_name("cons_crash_g"));
    create_topic(&topic, PARTITIONS).await;
    let table = create_sink_table().await;

    // The stream flows in 50 rounds over about 40 s, with re-sends, and a "producer restart"
    // half way that sends partitions 0 and 1 again from the start.
    let feed_topic = topic.clone();
    let feed = tokio::spawn(async move {
        let producer = feeder();
        let mut ends = BTreeMap::new();
        for round in 0..50 {
            merge(&mut ends, send(&producer, &feed_topic, &stream_with_resends(PARTITIONS, round * 10, round * 10 + 10)).await);
            if round == 20 {
                let resend: Vec<_> = (0..round * 10).flat_map(|i| (0..2).map(move |p| (p, stream_op(p, i)))).collect();
                merge(&mut ends, send(&producer, &feed_topic, &resend).await);
            }
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        ends
    });

    let mut seed = (std::process::id() as u64) << 20 | 0x5DEE_CE66;
    let mut random = move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    let spawn_child = || {
        tokio::process::Command::new(CHILD)
            .args([&topic, &group, &env().database_url, &table, &env().brokers])
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start consumer_child")
    };
    let mut log = Vec::new();
    let mut in_batch = 0;
    for kill in 0..KILLS {
        let before = sink_count(&table).await;
        let mut child = spawn_child();
        // Kill while it works: once it has applied something (a batch commits), a random moment
        // later, usually inside the next batch's transaction.
        let started = Instant::now();
        while sink_count(&table).await == before && started.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("consumer_child exited on its own: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let delay = Duration::from_millis(random(300));
        tokio::time::sleep(delay).await;
        // Whether the child has a transaction open on the sink table right now (a batch in hand).
        let open: i64 = pg_client()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() \
                 AND state <> 'idle' AND query LIKE '%' || $1 || '%'",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        in_batch += usize::from(open > 0);
        let after = sink_count(&table).await;
        log.push(format!("kill {kill}: {before}->{after} rows, {delay:?} after progress, {open} open transactions"));
    }
    let end = as_vec(&feed.await.unwrap(), PARTITIONS);

    let mut child = spawn_child();
    let total = PARTITIONS as i64 * N;
    let reached = async {
        while sink_count(&table).await < total {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(90), reached).await;
    // Let any duplicate that would slip through arrive before counting.
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while committed(&group, &topic, PARTITIONS).await != end {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    println!("{}", log.join("; "));
    assert!(finished.is_ok(), "only {} of {total} rows after the last restart ({})", sink_count(&table).await, log.join("; "));
    assert_exactly_once_in_order(&table, PARTITIONS, N).await;
    assert!(in_batch > 0, "no kill landed inside a transaction: {}", log.join("; "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_idempotent_consumers_in_one_group_apply_each_op_once() {
    const PARTITIONS: i32 = 4;
    const N: i64 = 300;
    init_tracing();
    let (topic, group) = (unique_name("cons_pair"), unique_name("cons_pair_g"));
    create_topic(&topic, PARTITIONS).await;
    let table = create_sink_table().await;
    let feed_topic = topic.clone();
    let feed = tokio::spawn(async move {
        let producer = feeder();
        let mut ends = BTreeMap::new();
        for round in 0..30 {
            merge(&mut ends, send(&producer, &feed_topic, &stream_with_resends(PARTITIONS, round * 10, round * 10 + 10)).await);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ends
    });

    let url = env().database_url.clone();
    let first = Sink::new(&table);
    let consumer_a = test_consumer(&group, &topic, Arc::clone(&first)).batch_size(20);
    let stop_a = consumer_a.shutdown_handle();
    let url_a = url.clone();
    let task_a = tokio::spawn(async move { consumer_a.start_idempotent(&url_a).await });
    wait_for("the first consumer at work", Duration::from_secs(60), || async {
        (first.applied.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;

    // The second joins mid-stream, takes some partitions, works, and leaves mid-stream.
    let second = Sink::new(&table);
    let consumer_b = test_consumer(&group, &topic, Arc::clone(&second)).batch_size(20);
    let stop_b = consumer_b.shutdown_handle();
    let task_b = tokio::spawn(async move { consumer_b.start_idempotent(&url).await });
    wait_for("the second consumer at work", Duration::from_secs(60), || async {
        (second.applied.load(Ordering::SeqCst) >= 30).then_some(())
    })
    .await;
    stop_b.shutdown();
    task_b.await.unwrap().unwrap();
    assert!(!feed.is_finished(), "the stream ended before the second consumer left; the test proves nothing");

    let end = as_vec(&feed.await.unwrap(), PARTITIONS);
    let total = PARTITIONS as i64 * N;
    wait_for("every op applied", Duration::from_secs(90), || async { (sink_count(&table).await >= total).then_some(()) }).await;
    wait_for("everything consumed", Duration::from_secs(60), || async {
        (committed(&group, &topic, PARTITIONS).await == end).then_some(())
    })
    .await;
    stop_a.shutdown();
    task_a.await.unwrap().unwrap();
    println!("first applied {}, second {}", first.applied.load(Ordering::SeqCst), second.applied.load(Ordering::SeqCst));
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
    let (topic, group) = (unique_name("cons_zombie"), unique_name("cons_zombie_g"));
    create_topic(&topic, PARTITIONS).await;
    let table = create_sink_table().await;
    let end = as_vec(&send(&feeder(), &topic, &stream_with_resends(PARTITIONS, 0, N)).await, PARTITIONS);

    let url = env().database_url.clone();
    let zombie_group = format!("{group}_zombie");
    let mut tasks = Vec::new();
    let mut stops = Vec::new();
    for kafka_group in [group.clone(), zombie_group.clone()] {
        let sink = Arc::new(Sink { delay: Duration::from_millis(3), ..Arc::try_unwrap(Sink::new(&table)).ok().unwrap() });
        let consumer = test_consumer(&group, &topic, sink).kafka_option("group.id", &kafka_group).batch_size(10);
        stops.push(consumer.shutdown_handle());
        let url = url.clone();
        tasks.push(tokio::spawn(async move { consumer.start_idempotent(&url).await }));
    }
    for kafka_group in [&group, &zombie_group] {
        wait_for("both instances through the whole topic", Duration::from_secs(90), || async {
            (committed(kafka_group, &topic, PARTITIONS).await == end).then_some(())
        })
        .await;
    }
    for stop in stops {
        stop.shutdown();
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_exactly_once_in_order(&table, PARTITIONS, N).await;
}

/// Not a check: prints the idempotent consumer's rate with and without batching (4 partitions,
/// 10,000 ops, one insert each). Run it with
/// `cargo test -p pgkafka-tests --test integration consumer::measure_idempotent_batching -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn measure_idempotent_batching() {
    for batch in [100usize, 1] {
        let (topic, group) = (unique_name("cons_meas"), unique_name("cons_meas_g"));
        create_topic(&topic, 4).await;
        let table = create_sink_table().await;
        let records: Vec<_> = (0..2500).flat_map(|i| (0..4).map(move |p| (p, stream_op(p, i)))).collect();
        send(&feeder(), &topic, &records).await;
        let sink = Sink::new(&table);
        let consumer = test_consumer(&group, &topic, Arc::clone(&sink)).batch_size(batch);
        let stop = consumer.shutdown_handle();
        let url = env().database_url.clone();
        let task = tokio::spawn(async move { consumer.start_idempotent(&url).await });
        wait_for("the first op", Duration::from_secs(60), || async { (sink.applied.load(Ordering::SeqCst) > 0).then_some(()) }).await;
        let (started, before) = (Instant::now(), sink.applied.load(Ordering::SeqCst));
        wait_for("every op", Duration::from_secs(300), || async { (sink.applied.load(Ordering::SeqCst) >= 10_000).then_some(()) }).await;
        let rate = (10_000 - before) as f64 / started.elapsed().as_secs_f64();
        println!("idempotent consumer, batch_size {batch}: {rate:.0} ops/s");
        stop.shutdown();
        task.await.unwrap().unwrap();
    }
}

#[path = "consumer/faults.rs"]
mod faults;
