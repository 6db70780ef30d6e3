//! A pgkafka producer in its own process, for tests that SIGKILL it at random points.
//!
//! Configured by the JSON in `PGKAFKA_CHILD_CONFIG` (`pgkafka_tests::producer_process::ChildConfig`). SIGTERM or
//! SIGINT stops it gracefully. `PGKAFKA_CHILD_SNAPSHOT` (`initial`, `initial_only`) and
//! `PGKAFKA_CHILD_SNAPSHOT_CHUNK_ROWS` set its snapshot. Exit status: 0 after a graceful stop, 1 when `start()` failed.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use pgkafka::{Producer, SnapshotMode};
use pgkafka_tests::producer_process::ChildConfig;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    pgkafka_tests::init_child_tracing("info");
    let config: ChildConfig = serde_json::from_str(
        &std::env::var("PGKAFKA_CHILD_CONFIG").expect("PGKAFKA_CHILD_CONFIG is not set"),
    )
    .expect("PGKAFKA_CHILD_CONFIG is not a ChildConfig");
    let mut builder = Producer::builder(
        config.database_url,
        config.brokers,
        config.slot,
        config.publication,
        config.topic_map,
    )
    .status_interval(Duration::from_millis(config.status_interval_ms))
    .reconnect_backoff_max(Duration::from_millis(config.reconnect_backoff_max_ms))
    .snapshot(std::env::var("PGKAFKA_CHILD_SNAPSHOT").map_or(SnapshotMode::Never, |mode| mode.parse().expect("PGKAFKA_CHILD_SNAPSHOT")))
    .snapshot_chunk_rows(std::env::var("PGKAFKA_CHILD_SNAPSHOT_CHUNK_ROWS").map_or(10_000, |rows| rows.parse().expect("chunk rows")));
    // Backfill tests turn backfills on with their chunk size.
    if let Some(rows) = std::env::var("PGKAFKA_CHILD_BACKFILL_CHUNK").ok().and_then(|v| v.parse().ok()) {
        builder = builder.backfills(true).backfill_chunk_size(rows);
    }
    let producer = builder.build();
    let shutdown = producer.shutdown_handle();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("producer_child: stopping gracefully");
        shutdown.shutdown();
    });
    eprintln!("producer_child: pid {} starting", std::process::id());
    match producer.start().await {
        Ok(()) => {
            eprintln!("producer_child: stopped");
            std::process::exit(0);
        }
        Err(error) => {
            eprintln!("producer_child: failed: {error}");
            std::process::exit(1);
        }
    }
}
