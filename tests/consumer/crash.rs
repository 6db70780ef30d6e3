//! Idempotent consumer processes SIGKILLed at random points, inside and between batch
//! transactions, while a stream with duplicates and re-sends flows: every op applied exactly once.

use std::time::{Duration, Instant};

use pgkafka_tests::consuming::{assert_exactly_once_in_order, create_sink_table, sink_count};
use pgkafka_tests::{env, init_tracing, pg_client};

use super::{as_vec, committed, feed_in_rounds, topic_and_group};

/// SIGKILLs a consumer process at random points while a stream with duplicates and re-sends flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_idempotent_consumers_apply_every_op_exactly_once() {
    const CHILD: &str = env!("CARGO_BIN_EXE_consumer_child");
    const PARTITIONS: i32 = 4;
    const N: i64 = 500;
    const KILLS: usize = 6;
    init_tracing();
    let (topic, group) = topic_and_group("cons_crash", PARTITIONS).await;
    let table = create_sink_table().await;

    // The stream flows in 50 rounds over about 40 s, with re-sends, and a "producer restart"
    // half way that sends partitions 0 and 1 again from the start.
    let feed = feed_in_rounds(&topic, PARTITIONS, 50, Duration::from_millis(800), Some(20));

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
