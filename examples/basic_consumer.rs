//! Prints every change the producer example streams to `inventory_topic`, with the raw API.
//!
//! Guarantee: ops of a partition arrive in order, one at a time, at least once; offsets are
//! committed only for ops whose handling finished.
//!
//! ```sh
//! scripts/services.sh up && set -a && . .services/env && set +a
//! cargo run -p pgkafka-examples --example producer        # in another terminal
//! cargo run -p pgkafka-examples --example basic_consumer
//! ```
//! Stop it with Ctrl-C: the op in hand finishes and the offsets are committed.

use std::time::Duration;

use pgkafka::consumer::InvalidMessagePolicy;
use pgkafka::{async_trait::async_trait, BasicApplication, Consumer, ConsumerError, Lsn, Op, ReplicationOp};

struct Printer;

#[async_trait]
impl BasicApplication for Printer {
    async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
        let (kind, row) = match &op.op {
            Op::Insert(row) => ("insert", row),
            Op::Update((_, new)) => ("update", new),
            Op::Delete(row) => ("delete", row),
        };
        println!("{} {}#{} {kind} {:?} = {:?}", op.table_name, Lsn(op.lsn), op.seq_id, op.col_names, row);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let brokers = std::env::var("PGKAFKA_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());

    let consumer = Consumer::new("inventory_printer", vec!["inventory_topic"], brokers, Printer)
        // Any librdkafka consumer property passes through (security.protocol, sasl.*, ssl.*, ...).
        .kafka_option("session.timeout.ms", "6000")
        .kafka_option("heartbeat.interval.ms", "500")
        .retry_backoff(Duration::from_millis(100), Duration::from_secs(10))
        .invalid_message_policy(InvalidMessagePolicy::Skip);

    let stop = consumer.shutdown_handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.shutdown();
    });
    consumer.start_basic().await?;
    Ok(())
}
