//! The idempotent processor: the state table, and applying a batch of ops exactly once in one
//! transaction (row lock on the partition's position, duplicates skipped, position stored).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use pgkafka_common::ident::{qualified, quote_ident};

use super::processor::{Outcome, Processor};
use super::{ConsumerError, IdempotentApplication, Settings};
use crate::redact::redact;
use crate::{Lsn, ReplicationOp};

pub(crate) struct IdempotentProcessor<A> {
    app: A,
    pool: PgPool,
    group_id: String,
    batch_size: usize,
    linger: Duration,
    table: String,
    ensure_row: String,
    lock_row: String,
    update_row: String,
}

impl<A: IdempotentApplication> IdempotentProcessor<A> {
    pub(crate) async fn connect(app: A, settings: &Settings, url: &str) -> Result<Self, ConsumerError> {
        let size = settings.pool_size.unwrap_or_else(|| u32::try_from(settings.max_concurrent_partitions).unwrap_or(u32::MAX).saturating_add(1));
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .map_err(|e| ConsumerError::Config(format!("cannot connect to PostgreSQL at {}: {e}", redact(url))))?;
        let table = match &settings.state_schema {
            Some(schema) => qualified(schema, &settings.state_table),
            None => quote_ident(&settings.state_table),
        };
        create_state_table(&pool, &table).await?;
        Ok(IdempotentProcessor {
            app,
            pool,
            group_id: settings.group_id.clone(),
            batch_size: settings.batch_size,
            linger: settings.batch_linger,
            table: table.clone(),
            ensure_row: format!(
                "INSERT INTO {table} (group_id, topic, partition) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            ),
            lock_row: format!(
                "SELECT lsn::text, seq_id::text FROM {table} WHERE group_id = $1 AND topic = $2 AND partition = $3 FOR UPDATE"
            ),
            update_row: format!(
                "UPDATE {table} SET lsn = $4::text::pg_lsn, seq_id = $5::text::numeric, updated_at = now() \
                 WHERE group_id = $1 AND topic = $2 AND partition = $3"
            ),
        })
    }
}

async fn create_state_table(pool: &PgPool, table: &str) -> Result<(), ConsumerError> {
    // Two consumers starting together would race in CREATE TABLE IF NOT EXISTS (a unique
    // violation on the catalog); a transaction-scoped advisory lock serialises them.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('pgkafka_consumer_state_table'))").execute(&mut *tx).await?;
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            group_id   text        NOT NULL,
            topic      text        NOT NULL,
            partition  integer     NOT NULL,
            lsn        pg_lsn,
            seq_id     numeric(20, 0),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (group_id, topic, partition)
        )"
    ))
    .execute(&mut *tx)
    .await
    .map_err(|e| match e {
        sqlx::Error::Database(db) => {
            ConsumerError::Config(format!("cannot create the consumer state table {table}: {}", db.message()))
        }
        other => ConsumerError::Database(other),
    })?;
    tx.commit().await?;
    Ok(())
}

fn parse_position(lsn: Option<String>, seq_id: Option<String>, table: &str) -> Result<Option<(u64, u64)>, ConsumerError> {
    match (lsn, seq_id) {
        (Some(lsn), Some(seq_id)) => {
            let lsn: Lsn = lsn
                .parse()
                .map_err(|e| ConsumerError::fatal(format!("state table {table}: bad lsn {lsn:?}: {e}")))?;
            let seq_id: u64 = seq_id
                .parse()
                .map_err(|e| ConsumerError::fatal(format!("state table {table}: bad seq_id {seq_id:?}: {e}")))?;
            Ok(Some((u64::from(lsn), seq_id)))
        }
        _ => Ok(None),
    }
}

#[async_trait]
impl<A: IdempotentApplication> Processor for IdempotentProcessor<A> {
    fn max_batch(&self) -> usize {
        self.batch_size
    }

    fn linger(&self) -> Duration {
        self.linger
    }

    async fn process(&self, topic: &str, partition: i32, offsets: &[i64], ops: &[ReplicationOp]) -> Result<Outcome, ConsumerError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&self.ensure_row)
            .bind(&self.group_id)
            .bind(topic)
            .bind(partition)
            .execute(&mut *tx)
            .await?;
        // The row lock is what keeps two instances (a rebalance in progress, a zombie) from both
        // applying an op: the second waits here, then reads the position the first committed.
        let (lsn, seq_id): (Option<String>, Option<String>) = sqlx::query_as(&self.lock_row)
            .bind(&self.group_id)
            .bind(topic)
            .bind(partition)
            .fetch_one(&mut *tx)
            .await?;
        let mut position = parse_position(lsn, seq_id, &self.table)?;
        let mut outcome = Outcome::default();
        for (op, &offset) in ops.iter().zip(offsets) {
            let this = (op.lsn, op.seq_id);
            if position.is_some_and(|stored| this <= stored) {
                outcome.duplicates += 1;
                continue;
            }
            if let Err(e) = super::with_message(topic, partition, offset, self.app.handle_message(&mut tx, op)).await {
                // Rolling back explicitly returns the connection at once; a failure to roll back
                // only means the connection is gone, which discards the transaction too.
                let _ = tx.rollback().await;
                return Err(e);
            }
            position = Some(this);
            outcome.applied += 1;
        }
        if let (true, Some((lsn, seq_id))) = (outcome.applied > 0, position) {
            sqlx::query(&self.update_row)
                .bind(&self.group_id)
                .bind(topic)
                .bind(partition)
                .bind(Lsn::from(lsn).to_string())
                .bind(seq_id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }
}
