//! The idempotent processor: applying a batch of ops exactly once in one transaction (row lock on
//! the partition's position, duplicates skipped, an op of another origin refused, position stored).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor as _, PgPool};

use pgkafka_common::ident::{qualified, quote_ident};

use super::origin::{Diverged, Origin, Step, Stored};
use super::processor::{Batch, Outcome, Processor};
use super::{state_table, ConsumerError, IdempotentApplication, Settings};
use crate::redact::redact;
use crate::Lsn;

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
        let idle_timeout_ms = transaction_idle_timeout(settings).as_millis();
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(30))
            // Bounds how long a frozen instance keeps a partition's row lock (see
            // `Consumer::transaction_idle_timeout`).
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    connection.execute(format!("SET idle_in_transaction_session_timeout = {idle_timeout_ms}").as_str()).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| ConsumerError::Config(format!("cannot connect to PostgreSQL at {}: {e}", redact(url))))?;
        let table = match &settings.state_schema {
            Some(schema) => qualified(schema, &settings.state_table),
            None => quote_ident(&settings.state_table),
        };
        state_table::prepare(&pool, &table).await?;
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
                "SELECT lsn::text, seq_id::text, system_id, timeline, slot FROM {table} \
                 WHERE group_id = $1 AND topic = $2 AND partition = $3 FOR UPDATE"
            ),
            update_row: format!(
                "UPDATE {table} SET lsn = $4::text::pg_lsn, seq_id = $5::text::numeric, \
                 system_id = $6, timeline = $7, slot = $8, updated_at = now() \
                 WHERE group_id = $1 AND topic = $2 AND partition = $3"
            ),
        })
    }
}

/// The `idle_in_transaction_session_timeout` of the consumer's sessions: the setting, else the
/// Kafka session timeout (a frozen member loses its partitions after about that long).
fn transaction_idle_timeout(settings: &Settings) -> Duration {
    settings.transaction_idle_timeout.unwrap_or_else(|| {
        let session_ms = settings
            .kafka_options
            .iter()
            .rev()
            .find(|(key, _)| key == "session.timeout.ms")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(45_000);
        Duration::from_millis(session_ms)
    })
}

/// The state row's columns as `lock_row` reads them.
type StateRow = (Option<String>, Option<String>, Option<String>, Option<i64>, Option<String>);

fn parse_state((lsn, seq_id, system_id, timeline, slot): StateRow, table: &str) -> Result<Stored, ConsumerError> {
    let origin = match (system_id, timeline, slot) {
        (Some(system_id), Some(timeline), Some(slot)) => {
            let timeline = u32::try_from(timeline)
                .map_err(|_| ConsumerError::fatal(format!("state table {table}: bad timeline {timeline}")))?;
            Some(Origin { system_id, timeline, slot })
        }
        _ => None,
    };
    Ok(Stored { position: parse_position(lsn, seq_id, table)?, origin })
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

impl<A> IdempotentProcessor<A> {
    /// The error for an op that does not continue the stored position, with the statements that
    /// reset it.
    fn origin_changed(&self, topic: &str, partition: i32, offset: i64, diverged: &Diverged) -> ConsumerError {
        let literal = |text: &str| format!("'{}'", text.replace('\'', "''"));
        let row = format!("group_id = {} AND topic = {} AND partition = {partition}", literal(&self.group_id), literal(topic));
        let origin = &diverged.origin;
        let reason = format!(
            "{diverged}. The consumer stopped without applying or skipping it. If the op's origin is the truth \
             now, forget the stored position (the ops of the new origin are then applied from this offset on): \
             DELETE FROM {table} WHERE {row}; if you know its ops up to the stored position were already applied \
             (re-sends after a failover to a standby that had every transaction), keep the position and take the \
             new origin: UPDATE {table} SET system_id = {}, timeline = {}, slot = {} WHERE {row}; then restart",
            literal(&origin.system_id),
            origin.timeline,
            literal(&origin.slot),
            table = self.table,
        );
        ConsumerError::OriginChanged { topic: topic.to_owned(), partition, offset, reason }
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

    async fn process(&self, topic: &str, partition: i32, batch: Batch<'_>) -> Result<Outcome, ConsumerError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&self.ensure_row)
            .bind(&self.group_id)
            .bind(topic)
            .bind(partition)
            .execute(&mut *tx)
            .await?;
        // The row lock is what keeps two instances (a rebalance in progress, a zombie) from both
        // applying an op: the second waits here, then reads the position the first committed.
        let row: StateRow = sqlx::query_as(&self.lock_row)
            .bind(&self.group_id)
            .bind(topic)
            .bind(partition)
            .fetch_one(&mut *tx)
            .await?;
        let mut state = parse_state(row, &self.table)?;
        let mut outcome = Outcome::default();
        // An op from another origin stops the consumer after the ops before it are stored: they
        // were applied, and a restart then begins exactly at the op that needs an operator.
        let mut diverged = None;
        for (((op, &offset), origin), &snapshot) in batch.ops.iter().zip(batch.offsets).zip(batch.origins).zip(batch.snapshots) {
            let this = (op.lsn, op.seq_id);
            match state.judge(this, origin.as_ref()) {
                Ok(Step::Duplicate) => {
                    outcome.duplicates += 1;
                    continue;
                }
                Ok(Step::Apply) => {}
                Err(reason) => {
                    diverged = Some(self.origin_changed(topic, partition, offset, &reason));
                    break;
                }
            }
            if let Err(e) = super::call_handler(topic, partition, offset, snapshot, self.app.handle_message(&mut tx, op)).await {
                // Rolling back explicitly returns the connection at once; a failure to roll back
                // only means the connection is gone, which discards the transaction too.
                let _ = tx.rollback().await;
                return Err(e);
            }
            state.advance(this, origin.as_ref());
            outcome.applied += 1;
        }
        if let (true, Some((lsn, seq_id))) = (outcome.applied > 0, state.position) {
            let origin = state.origin.as_ref();
            sqlx::query(&self.update_row)
                .bind(&self.group_id)
                .bind(topic)
                .bind(partition)
                .bind(Lsn::from(lsn).to_string())
                .bind(seq_id.to_string())
                .bind(origin.map(|o| o.system_id.as_str()))
                .bind(origin.map(|o| i64::from(o.timeline)))
                .bind(origin.map(|o| o.slot.as_str()))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        match diverged {
            Some(error) => Err(error),
            None => Ok(outcome),
        }
    }
}
