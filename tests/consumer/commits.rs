//! Offset commits the broker refuses: the consumer commits them again instead of counting them as
//! done, so a graceful shutdown leaves the group's offset at what was handled. The refusals come
//! from `pgkafka_tests::kafka_proxy` between the consumer and the real broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgkafka::Consumer;
use pgkafka_tests::consumer_task::RunningConsumer;
use pgkafka_tests::kafka_proxy::{KafkaProxy, REBALANCE_IN_PROGRESS};
use pgkafka_tests::{env, init_tracing, wait_for};

use super::basic::Recorder;
use super::{committed, feeder, send, stream_op, topic_and_group};

/// How many offset commits the proxy refuses.
const REFUSED_COMMITS: u32 = 3;

/// A basic consumer, its group traffic through the proxy, handles all 20 records of a partition;
/// the proxy answers the next 3 offset commits (the periodic ones that would record offset 20)
/// with REBALANCE_IN_PROGRESS, without passing them on. Nothing more arrives. After a graceful
/// shutdown the group's committed offset, read from the broker itself, is 20.
///
/// REBALANCE_IN_PROGRESS, because librdkafka reports it to the application as it is; a commit
/// refused with COORDINATOR_NOT_AVAILABLE it keeps and sends again by itself, so that one never
/// reaches pgkafka (see `kafka_proxy::REBALANCE_IN_PROGRESS`).
///
/// Before the fix (commit e53827a) a commit counted as done once queued: the first refused commit
/// was never sent again, not even by the final one, and the committed offset stayed unset (-1);
/// checked by restoring that bookkeeping locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_commits_the_broker_refuses_are_committed_again() {
    init_tracing();
    let (topic, group) = topic_and_group("cons_commit_refused", 1).await;
    let n = 20;
    let ends = send(&feeder(), &topic, &(0..n).map(|i| (0, stream_op(0, i))).collect::<Vec<_>>()).await;
    assert_eq!(ends.get(&0), Some(&n));

    let proxy = KafkaProxy::start(&env().brokers).await;
    proxy.refuse_offset_commits(REFUSED_COMMITS, REBALANCE_IN_PROGRESS);
    let app = Arc::new(Recorder::default());
    let consumer = Consumer::new(&group, vec![topic.as_str()], proxy.bootstrap(), Arc::clone(&app))
        .kafka_option("session.timeout.ms", "6000")
        .kafka_option("heartbeat.interval.ms", "500")
        .commit_interval(Duration::from_millis(200));
    let running = RunningConsumer::basic(consumer);
    wait_for("all records handled", Duration::from_secs(60), || async {
        (app.handled().len() >= n as usize).then_some(())
    })
    .await;
    // Every refusal used up (with the fix, by commits sent again), or long enough for several
    // periodic commits (without it, only the first commit carries offset 20).
    let deadline = Instant::now() + Duration::from_secs(3);
    while proxy.refused_commits().len() < REFUSED_COMMITS as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = proxy.refused_commits();
    println!("refused offset commits: {refused:?}");
    assert!(
        refused.iter().any(|c| c.topic == topic && c.partition == 0 && c.offset == n),
        "no commit of offset {n} went through the proxy and was refused: {refused:?}"
    );
    running.stop().await.expect("a graceful stop");

    assert_eq!(app.handled_of(0), (0..n).collect::<Vec<_>>());
    assert_eq!(
        committed(&group, &topic, 1).await,
        vec![n],
        "the refused commits of offset {n} were not committed again (refused: {refused:?})"
    );
}
