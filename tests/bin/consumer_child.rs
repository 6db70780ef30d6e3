//! An idempotent consumer in its own process, for the crash test that SIGKILLs it
//! (`tests/consumer/crash.rs`).
//!
//! Usage: `consumer_child TOPIC GROUP DATABASE_URL TABLE BROKERS`. The application is the consumer
//! tests' [`Sink`]: one row per op into TABLE, with a pause of a few milliseconds per op so kills
//! land inside batch transactions.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use pgkafka::Consumer;
use pgkafka_tests::consuming::Sink;

#[tokio::main]
async fn main() {
    pgkafka_tests::init_child_tracing("warn");
    let args: Vec<String> = std::env::args().collect();
    let [_, topic, group, url, table, brokers] = &args[..] else {
        panic!("usage: consumer_child TOPIC GROUP DATABASE_URL TABLE BROKERS");
    };
    let seed = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let app = Sink::new(table).random_pause(seed);
    let consumer = Consumer::new(group.as_str(), vec![topic.as_str()], brokers.as_str(), app)
        // Short, so a killed instance leaves the group soon and its successor joins quickly.
        .kafka_option("session.timeout.ms", "3000")
        .kafka_option("heartbeat.interval.ms", "300")
        .state_table(format!("{table}_state"))
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(500))
        .batch_size(50)
        .batch_linger(Duration::from_millis(20));
    if let Err(e) = consumer.start_idempotent(url).await {
        eprintln!("consumer_child: {e}");
        std::process::exit(1);
    }
}
