//! An idempotent consumer in its own process, for the crash test that SIGKILLs it
//! (tests/consumer.rs, `sigkilled_idempotent_consumers_apply_every_op_exactly_once`).
//!
//! Usage: `consumer_child TOPIC GROUP DATABASE_URL TABLE BROKERS`. The application inserts one row
//! per op into TABLE (`partition_tag, i, lsn, seq_id`), taken from the op, and dawdles a few
//! milliseconds per op so kills land inside batch transactions.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pgkafka::sqlx::{Postgres, Transaction};
use pgkafka::{async_trait::async_trait, Consumer, ConsumerError, IdempotentApplication, Op, ReplicationOp};

struct Sink {
    table: String,
    rng: AtomicU64,
}

#[async_trait]
impl IdempotentApplication for Sink {
    async fn handle_message(&self, tx: &mut Transaction<'_, Postgres>, op: &ReplicationOp) -> Result<(), ConsumerError> {
        let Op::Insert(row) = &op.op else { return Err(ConsumerError::fatal("expected inserts only")) };
        let tag: i32 = row[0].as_deref().unwrap().parse().unwrap();
        let i: i64 = row[1].as_deref().unwrap().parse().unwrap();
        pgkafka::sqlx::query(&format!(
            "INSERT INTO {} (partition_tag, i, lsn, seq_id) VALUES ($1, $2, $3::text::numeric, $4::text::numeric)",
            self.table
        ))
        .bind(tag)
        .bind(i)
        .bind(op.lsn.to_string())
        .bind(op.seq_id.to_string())
        .execute(&mut **tx)
        .await?;
        // xorshift: a pause of 2-5 ms on every op, so a restarted child spends a while catching
        // up inside batch transactions, where the test's kills should land.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(2 + x % 4)).await;
        Ok(())
    }
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
    let [_, topic, group, url, table, brokers] = &args[..] else {
        panic!("usage: consumer_child TOPIC GROUP DATABASE_URL TABLE BROKERS");
    };
    let seed = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let app = Sink { table: table.clone(), rng: AtomicU64::new(seed) };
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
