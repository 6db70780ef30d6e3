//! The broker paused past the client timeouts, and PostgreSQL restarted, both mid-stream: the
//! producer resumes by itself, and nothing is lost or reordered. Then a graceful shutdown while
//! the broker is paused: it ends after the shutdown timeout, and a new producer delivers the rest.
//!
//! This disturbs every test using the servers at the time. It holds the services exclusively
//! against the other producer tests of this binary; run it on its own (`producer::disruption`) or
//! skip it (`--skip producer::disruption`) when other suites share the servers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgkafka_tests::disrupt::{exclusive_services, restart_postgres, BrokerPause};
use pgkafka_tests::producer_task::RunningProducer;
use pgkafka_tests::rng::Rng;
use pgkafka_tests::{env, pg_client, unique_name};

use super::crash::{workload, Workload};
use super::{Scenario, Table};

/// A workload on two tables while the broker is SIGSTOPped past librdkafka's timeouts and then
/// PostgreSQL is restarted: the producer keeps running and delivers every change, in commit order
/// per partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_rides_out_a_broker_pause_and_a_postgres_restart() {
    pgkafka_tests::init_tracing();
    // Fail clearly up front when the servers are not the scripts' own.
    assert!(
        env().broker_pid.is_some() && env().pg_data.is_some(),
        "this test pauses the broker and restarts PostgreSQL, so it needs the services scripts/services.sh \
         started (PGKAFKA_TEST_BROKER_PID and PGKAFKA_TEST_PG_DATA are not set)"
    );
    let _exclusive = exclusive_services().await;
    let started = Instant::now();
    let mut rng = Rng::from_env("disruption test");
    let names: Vec<String> = (0..2).map(|i| unique_name(&format!("p_dis{i}"))).collect();
    let tables = names
        .iter()
        .map(|t| {
            let mut table =
                Table::new(t, format!("CREATE TABLE {t} (id bigint PRIMARY KEY, grp int NOT NULL, v text, n int)"), &[], 3);
            table.key_columns = vec!["id".into()];
            table
        })
        .collect();
    // Scenario::new takes the shared lock, which this test holds exclusively.
    let mut sc = Scenario::unlocked("p_dis", tables).await;
    let producer = sc
        .builder()
        .status_interval(Duration::from_millis(300))
        .reconnect_backoff_max(Duration::from_secs(2))
        .shutdown_timeout(Duration::from_secs(3))
        .build();
    let producer = RunningProducer::start(producer, &sc.slot).await;
    sc.ensure_reference().await;

    // 1. The broker stops answering for longer than librdkafka's request and session timeouts.
    let stop = Arc::new(AtomicBool::new(false));
    let plan = Workload {
        tables: names.clone(),
        seed: rng.next_u64(),
        min_txs: 200,
        max_txs: 2_000,
        reconnect: true,
        pause_ms: (10, 40),
        first_id: 1,
    };
    let writer = tokio::spawn(workload(plan.clone(), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(rng.range(500, 2000))).await;
    {
        // Past librdkafka's request.timeout.ms (30 s): in-flight produce requests time out and are
        // retried by the idempotent producer.
        let pause = BrokerPause::start();
        tokio::time::sleep(Duration::from_secs(32)).await;
        pause.resume();
    }
    tokio::time::sleep(Duration::from_millis(rng.range(500, 2000))).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let (_, _, delivery) = sc.delivered(Duration::from_secs(180)).await;
    assert!(!producer.is_finished(), "the producer stopped during the broker pause");
    println!(
        "broker pause: {written} transactions, {} changes, {} re-sent, {:?}",
        delivery.distinct,
        delivery.duplicates,
        started.elapsed()
    );

    // 2. PostgreSQL restarts (fast shutdown) while changes stream.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(workload(Workload { seed: rng.next_u64(), first_id: 10_000_000, ..plan }, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(rng.range(500, 2000))).await;
    let restart = Instant::now();
    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    println!("PostgreSQL restarted in {:?}", restart.elapsed());
    sc.pg = pg_client().await;
    tokio::time::sleep(Duration::from_millis(rng.range(1000, 3000))).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let (_, _, delivery) = sc.delivered(Duration::from_secs(180)).await;
    assert!(!producer.is_finished(), "the producer stopped after the PostgreSQL restart");
    println!(
        "postgres restart: {written} more transactions, {} changes in all, {} re-sent, {:?}",
        delivery.distinct,
        delivery.duplicates,
        started.elapsed()
    );

    // 3. A graceful shutdown while the broker cannot acknowledge: the shutdown timeout ends it,
    // nothing unacknowledged is confirmed, and a new producer delivers the rest once the broker is back.
    {
        let pause = BrokerPause::start();
        super::stream::run_each(
            &sc.pg,
            &(0..20)
                .map(|i| {
                    format!(
                        "BEGIN; INSERT INTO {a} VALUES ({id}, {i}, 'during pause', NULL); \
                         INSERT INTO {b} VALUES ({id}, {i}, 'during pause', NULL); COMMIT",
                        a = names[0],
                        b = names[1],
                        id = 20_000_000 + i
                    )
                })
                .collect::<Vec<_>>(),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stopping = Instant::now();
        producer.stop().await.expect("a graceful stop that timed out waiting for Kafka still returns Ok");
        println!("stopped with the broker paused in {:?}", stopping.elapsed());
        pause.resume();
    }
    let producer = RunningProducer::start(sc.builder().build(), &sc.slot).await;
    let (_, _, delivery) = sc.delivered(Duration::from_secs(180)).await;
    println!(
        "shutdown during a broker pause: {} changes in all, {} re-sent, {:?}",
        delivery.distinct,
        delivery.duplicates,
        started.elapsed()
    );
    producer.stop().await.expect("graceful stop after the disruptions");
    sc.cleanup().await;
}

mod lagging_commit;
mod slot_invalidated;
