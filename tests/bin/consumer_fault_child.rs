//! A consumer in its own process, for the fault tests that break it the way production does
//! (tests/consumer/faults.rs): a handler that panics, and a process frozen with SIGSTOP.
//!
//! Usage:
//! - `consumer_fault_child basic-panic TOPIC GROUP BROKERS TAG I`: a basic consumer whose handler
//!   prints `handled TAG I` for every op it sees and panics (once) on the op whose row is `[TAG, I]`.
//!   Exits 1 printing the error `start_basic` returned, 0 if it returned `Ok`.
//! - `consumer_fault_child idempotent TOPIC GROUP DATABASE_URL TABLE BROKERS`: an idempotent consumer
//!   that inserts one row per op into TABLE (`partition_tag, i, lsn, seq_id`) and takes 25 ms per op,
//!   so its batch transactions are open most of the time. Its PostgreSQL sessions carry
//!   `application_name = pgkafka_fault_<pid>`, so the test finds them in `pg_stat_activity`.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgkafka::{async_trait::async_trait, BasicApplication, Consumer, ConsumerError, ReplicationOp};
use pgkafka_tests::consuming::{tag_and_i, Sink};

/// Panics once, on one op.
struct PanicsOnce {
    at: (i32, i64),
    panicked: AtomicBool,
}

#[async_trait]
impl BasicApplication for PanicsOnce {
    async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
        let (tag, i) = tag_and_i(op)?;
        println!("handled {tag} {i}");
        std::io::stdout().flush().unwrap();
        if (tag, i) == self.at && !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("handler bug at {tag}/{i}");
        }
        Ok(())
    }
}

/// Settings both roles share: a frozen member leaves the group within about 20 s on this broker
/// (see /work/shared/notes/test-infra.md), a killed one within the session timeout.
fn in_group<A>(consumer: Consumer<A>) -> Consumer<A> {
    consumer
        .kafka_option("session.timeout.ms", "6000")
        .kafka_option("heartbeat.interval.ms", "500")
        .kafka_option("max.poll.interval.ms", "20000")
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(500))
        .commit_interval(Duration::from_millis(200))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let result = match &args[1..] {
        [mode, topic, group, brokers, tag, i] if mode == "basic-panic" => {
            let app = PanicsOnce { at: (tag.parse().unwrap(), i.parse().unwrap()), panicked: AtomicBool::new(false) };
            in_group(Consumer::new(group.as_str(), vec![topic.as_str()], brokers.as_str(), app)).start_basic().await
        }
        [mode, topic, group, url, table, brokers] if mode == "idempotent" => {
            let separator = if url.contains('?') { '&' } else { '?' };
            let url = format!("{url}{separator}application_name=pgkafka_fault_{}", std::process::id());
            let app = Sink::new(table).pause(Duration::from_millis(25));
            in_group(Consumer::new(group.as_str(), vec![topic.as_str()], brokers.as_str(), app))
                .state_table(format!("{table}_state"))
                .batch_size(20)
                .batch_linger(Duration::from_millis(20))
                .start_idempotent(&url)
                .await
        }
        _ => panic!(
            "usage: consumer_fault_child basic-panic TOPIC GROUP BROKERS TAG I | idempotent TOPIC GROUP DATABASE_URL TABLE BROKERS"
        ),
    };
    if let Err(e) = result {
        eprintln!("consumer_fault_child: {e}");
        std::process::exit(1);
    }
}
