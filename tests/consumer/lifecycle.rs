//! The consumer's life as its owner sees it: what happens when the `start_*` future goes away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgkafka_tests::{create_topic, init_tracing, unique_name, wait_for};

use super::basic::Recorder;
use super::{committed, feeder, send, stream_op, test_consumer};

/// The owner drops the `start_basic` future while the consumer runs (an aborted task, a
/// `select!` that took another branch): the consumer stops with it. It handles nothing of what is
/// produced afterwards, commits what it handled, and leaves the group at once, so a second member
/// is given every partition without waiting out the first one's session timeout (6 s) and starts
/// exactly after what the first handled.
///
/// Without the fix the poll thread kept running with no owner: it handled the later records
/// itself (the first assertion fails) and kept its partitions from the second member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_start_future_stops_the_consumer_and_leaves_the_group() {
    const PARTITIONS: i32 = 3;
    init_tracing();
    let (topic, group) = (unique_name("cons_drop"), unique_name("cons_drop_g"));
    create_topic(&topic, PARTITIONS).await;
    let producer = feeder();
    let first_half: Vec<_> = (0..20).flat_map(|i| (0..PARTITIONS).map(move |p| (p, stream_op(p, i)))).collect();
    send(&producer, &topic, &first_half).await;

    let first = Arc::new(Recorder::default());
    let task = tokio::spawn(test_consumer(&group, &topic, Arc::clone(&first)).start_basic());
    wait_for("the first 60 ops handled", Duration::from_secs(60), || async { (first.handled().len() >= 60).then_some(()) }).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled(), "the consumer ended before its future was dropped");
    let dropped_at = Instant::now();

    let second_half: Vec<_> = (20..40).flat_map(|i| (0..PARTITIONS).map(move |p| (p, stream_op(p, i)))).collect();
    send(&producer, &topic, &second_half).await;

    // The joiner comes after the drop had a moment to take effect: a member joining while the
    // other is halfway through leaving has stalled Tansu's group coordinator (once in a CI run the
    // joiner got no partitions for 60 s), and this test is about the dropped member leaving.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = Arc::new(Recorder::default());
    let consumer = test_consumer(&group, &topic, Arc::clone(&second));
    let stop = consumer.shutdown_handle();
    let task = tokio::spawn(consumer.start_basic());
    wait_for("the second member handles the later ops", Duration::from_secs(60), || async {
        (second.handled().len() >= 60).then_some(())
    })
    .await;
    let took = dropped_at.elapsed();
    stop.shutdown();
    task.await.unwrap().unwrap();

    assert_eq!(first.handled().len(), 60, "the dropped consumer went on handling: {:?}", first.handled());
    for p in 0..PARTITIONS {
        assert_eq!(first.handled_of(p), (0..20).collect::<Vec<_>>(), "partition {p}, first member");
        assert_eq!(second.handled_of(p), (20..40).collect::<Vec<_>>(), "partition {p}, second member");
    }
    assert!(took < Duration::from_secs(6), "the second member waited {took:?}: the first had not left the group");
    assert_eq!(committed(&group, &topic, PARTITIONS).await, vec![40; PARTITIONS as usize]);
}
