//! The basic consumer: each partition in order and partitions concurrently, retries in place,
//! a fatal error that stops it with exactly the handled records committed, a stuck partition.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgkafka::{async_trait::async_trait, BasicApplication, ConsumerError, ReplicationOp};
use pgkafka_tests::consumer_task::RunningConsumer;
use pgkafka_tests::consuming::tag_and_i;
use pgkafka_tests::{init_tracing, wait_for};

use super::{committed, feeder, send, stream_op, test_consumer, topic_and_group};

/// Records what it handles, and whether handlers of one partition ever overlapped.
#[derive(Default)]
pub(super) struct Recorder {
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
    pub(super) fn handled(&self) -> Vec<(i32, i64)> {
        self.calls.lock().unwrap().iter().filter(|c| c.2).map(|c| (c.0, c.1)).collect()
    }

    pub(super) fn handled_of(&self, tag: i32) -> Vec<i64> {
        self.handled().into_iter().filter(|c| c.0 == tag).map(|c| c.1).collect()
    }

    fn calls_of(&self, tag: i32) -> Vec<i64> {
        self.calls.lock().unwrap().iter().filter(|c| c.0 == tag).map(|c| c.1).collect()
    }
}

#[async_trait]
impl BasicApplication for Recorder {
    async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
        let (tag, i) = tag_and_i(op)?;
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

/// 50 ops in each of 4 partitions: each partition's ops are handled in order and never two at once,
/// partitions run concurrently, `current_message()` names the partition, and a graceful stop
/// commits everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_handles_each_partition_in_order_and_partitions_concurrently() {
    init_tracing();
    let (topic, group) = topic_and_group("cons_order", 4).await;
    let records: Vec<_> = (0..50).flat_map(|i| (0..4).map(move |p| (p, stream_op(p, i)))).collect();
    send(&feeder(), &topic, &records).await;

    let app = Arc::new(Recorder { delay: Duration::from_millis(2), ..Recorder::default() });
    let consumer = test_consumer(&group, &topic, Arc::clone(&app));
    let running = RunningConsumer::basic(consumer);
    wait_for("200 ops handled", Duration::from_secs(60), || async { (app.handled().len() >= 200).then_some(()) }).await;
    running.stop().await.unwrap();

    for p in 0..4 {
        assert_eq!(app.handled_of(p), (0..50).collect::<Vec<_>>(), "partition {p} out of order or incomplete");
    }
    assert!(!app.overlap_in_partition.load(Ordering::SeqCst), "two ops of one partition were handled at once");
    assert!(app.max_running.load(Ordering::SeqCst) >= 2, "partitions were never handled concurrently");
    assert!(!app.wrong_origin.load(Ordering::SeqCst), "current_message() did not name the op's partition");
    // A graceful stop commits everything handled.
    assert_eq!(committed(&group, &topic, 4).await, vec![50; 4]);
}

/// An op that fails transiently three times: it is retried in place, before anything after it in
/// its partition, and then everything is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_retries_a_transient_error_in_place() {
    init_tracing();
    let (topic, group) = topic_and_group("cons_retry", 2).await;
    let records: Vec<_> = (0..20).flat_map(|i| (0..2).map(move |p| (p, stream_op(p, i)))).collect();
    send(&feeder(), &topic, &records).await;

    let app = Arc::new(Recorder { transient: Some((0, 5, 3)), ..Recorder::default() });
    let consumer = test_consumer(&group, &topic, Arc::clone(&app));
    let running = RunningConsumer::basic(consumer);
    wait_for("40 ops handled", Duration::from_secs(60), || async { (app.handled().len() >= 40).then_some(()) }).await;
    running.stop().await.unwrap();

    let mut expected: Vec<i64> = (0..5).collect();
    expected.extend([5, 5, 5]);
    expected.extend(5..20);
    assert_eq!(app.calls_of(0), expected, "op 5 must be retried three times, before anything after it");
    assert_eq!(app.handled_of(0), (0..20).collect::<Vec<_>>());
    assert_eq!(app.handled_of(1), (0..20).collect::<Vec<_>>());
}

/// A fatal error on op 12 of partition 1: the consumer stops with that error, each partition's
/// commit is exactly what was handled, and the group resumes at the failed op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_fatal_error_stops_and_commits_exactly_what_was_handled() {
    init_tracing();
    let (topic, group) = topic_and_group("cons_fatal", 3).await;
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
    let running = RunningConsumer::basic(consumer);
    wait_for("partition 1 finished", Duration::from_secs(60), || async {
        (again.handled_of(1).last() == Some(&29)).then_some(())
    })
    .await;
    running.stop().await.unwrap();
    assert_eq!(again.handled_of(1), (12..30).collect::<Vec<_>>());
}

/// A partition stuck on a failing op neither holds up the others nor loses or reorders anything
/// while its backlog outgrows the pause threshold (1,000 records) and it is paused and resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_stuck_partition_is_paused_without_blocking_others_or_losing_records() {
    init_tracing();
    let (topic, group) = topic_and_group("cons_stuck", 2).await;
    let mut records: Vec<_> = (0..2500).map(|i| (0, stream_op(0, i))).collect();
    records.extend((0..100).map(|i| (1, stream_op(1, i))));
    send(&feeder(), &topic, &records).await;

    let app = Arc::new(Recorder { transient: Some((0, 0, 60)), ..Recorder::default() });
    // Below the 2,500 records of partition 0, so its pause and resume are exercised.
    let consumer = test_consumer(&group, &topic, Arc::clone(&app)).max_queued_per_partition(1000);
    let running = RunningConsumer::basic(consumer);
    wait_for("partition 1 handled", Duration::from_secs(60), || async { (app.handled_of(1).len() == 100).then_some(()) }).await;
    assert!(app.handled_of(0).is_empty(), "partition 0 should still be stuck on its first op");
    wait_for("partition 0 handled", Duration::from_secs(90), || async { (app.handled_of(0).len() >= 2500).then_some(()) }).await;
    running.stop().await.unwrap();
    assert_eq!(app.handled_of(0), (0..2500).collect::<Vec<_>>());
    assert_eq!(committed(&group, &topic, 2).await, vec![2500, 100]);
}
