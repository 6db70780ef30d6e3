//! An idempotent consumer of a topic of Debezium events in its own process, for the test that
//! SIGKILLs it (`tests/debezium/consume.rs`).
//!
//! Usage: `dbz_consumer_child TOPIC GROUP DATABASE_URL TABLE BROKERS`. The application writes
//! every op it is handed, whole, as a row of TABLE (partition, offset, the op's JSON), inside the
//! consumer's transaction, pausing 15 ms per op so kills land inside batch transactions. The
//! topic's format is set to Debezium; invalid records stop it (the default policy), so a
//! tombstone or transaction record taken for invalid ends the process and fails the test.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use pgkafka::consumer::{current_message, RecordFormat};
use pgkafka::sqlx::{Postgres, Transaction};
use pgkafka::{async_trait::async_trait, Consumer, ConsumerError, IdempotentApplication, ReplicationOp};

struct OpLog {
    table: String,
}

#[async_trait]
impl IdempotentApplication for OpLog {
    async fn handle_message(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        op: &ReplicationOp,
    ) -> Result<(), ConsumerError> {
        let at = current_message().ok_or_else(|| ConsumerError::fatal("no current message"))?;
        let json = serde_json::to_string(op).map_err(ConsumerError::fatal)?;
        pgkafka::sqlx::query(&format!("INSERT INTO {} (partition, record_offset, op) VALUES ($1, $2, $3)", self.table))
            .bind(at.partition)
            .bind(at.offset)
            .bind(json)
            .execute(&mut **tx)
            .await?;
        tokio::time::sleep(Duration::from_millis(15)).await;
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    pgkafka_tests::init_child_tracing("warn");
    let args: Vec<String> = std::env::args().collect();
    let [_, topic, group, url, table, brokers] = &args[..] else {
        panic!("usage: dbz_consumer_child TOPIC GROUP DATABASE_URL TABLE BROKERS");
    };
    let consumer =
        Consumer::new(group.as_str(), vec![topic.as_str()], brokers.as_str(), OpLog { table: table.clone() })
            .record_format(topic.as_str(), RecordFormat::Debezium)
            .kafka_option("session.timeout.ms", "3000")
            .kafka_option("heartbeat.interval.ms", "300")
            .state_table(format!("{table}_state"))
            .retry_backoff(Duration::from_millis(20), Duration::from_millis(500))
            .batch_size(20)
            .batch_linger(Duration::from_millis(20));
    if let Err(e) = consumer.start_idempotent(url).await {
        eprintln!("dbz_consumer_child: {e}");
        std::process::exit(1);
    }
}
