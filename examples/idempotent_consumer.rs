//! Keeps a copy of the `inventory` table's quantities per organisation, exactly once: each op is
//! applied inside the same PostgreSQL transaction that records the consumer's progress.
//!
//! Guarantee: ops are applied in partition order, each exactly once, even when the producer
//! re-sends or this consumer crashes, restarts or shares its group with other instances.
//!
//! ```sh
//! scripts/services.sh up && set -a && . .services/env && set +a
//! cargo run -p pgkafka-examples --example producer        # in another terminal
//! cargo run -p pgkafka-examples --example idempotent_consumer
//! psql "$PGKAFKA_TEST_DATABASE_URL" -c "SELECT * FROM inventory_items_per_org"
//! ```

use std::time::Duration;

use pgkafka::sqlx::{Postgres, Transaction};
use pgkafka::{async_trait::async_trait, Consumer, ConsumerError, IdempotentApplication, Op, ReplicationOp};

/// Counts the inventory rows of each organisation.
struct ItemsPerOrg;

impl ItemsPerOrg {
    fn organization(op: &ReplicationOp, row: &[Option<String>]) -> Result<i64, ConsumerError> {
        let column = op
            .col_names
            .iter()
            .position(|c| c == "organization_id")
            .ok_or_else(|| ConsumerError::fatal(format!("{}: no organization_id column", op.table_name)))?;
        row.get(column)
            .and_then(|v| v.as_deref())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ConsumerError::fatal(format!("{}: bad organization_id", op.table_name)))
    }

    async fn add(tx: &mut Transaction<'_, Postgres>, org: i64, delta: i64) -> Result<(), ConsumerError> {
        pgkafka::sqlx::query(
            "INSERT INTO inventory_items_per_org (organization_id, items) VALUES ($1, $2)
             ON CONFLICT (organization_id) DO UPDATE SET items = inventory_items_per_org.items + EXCLUDED.items",
        )
        .bind(org)
        .bind(delta)
        // A lost connection or a serialization failure converts to a transient error: the whole
        // transaction is rolled back and retried.
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl IdempotentApplication for ItemsPerOrg {
    async fn handle_message(&self, tx: &mut Transaction<'_, Postgres>, op: &ReplicationOp) -> Result<(), ConsumerError> {
        match &op.op {
            Op::Insert(row) => Self::add(tx, Self::organization(op, row)?, 1).await,
            Op::Delete(row) => Self::add(tx, Self::organization(op, row)?, -1).await,
            Op::Update((old, new)) => {
                let (from, to) = (Self::organization(op, old)?, Self::organization(op, new)?);
                if from != to {
                    Self::add(tx, from, -1).await?;
                    Self::add(tx, to, 1).await?;
                }
                Ok(())
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let database = std::env::var("PGKAFKA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:54329/postgres".into());
    let brokers = std::env::var("PGKAFKA_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());

    let pool = pgkafka::sqlx::PgPool::connect(&database).await?;
    pgkafka::sqlx::query(
        "CREATE TABLE IF NOT EXISTS inventory_items_per_org (organization_id bigint PRIMARY KEY, items bigint NOT NULL)",
    )
    .execute(&pool)
    .await?;

    let consumer = Consumer::new("inventory_counter", vec!["inventory_topic"], brokers, ItemsPerOrg)
        .kafka_option("session.timeout.ms", "6000")
        .kafka_option("heartbeat.interval.ms", "500")
        // Progress lives in this table of the same database (created if missing).
        .state_table("pgkafka_consumer_offsets")
        // Up to 100 consecutive ops of a partition per transaction (the default), waiting at most
        // 5 ms to fill a batch.
        .batch_size(100)
        .batch_linger(Duration::from_millis(5));

    let stop = consumer.shutdown_handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.shutdown();
    });
    consumer.start_idempotent(&database).await?;
    Ok(())
}
