//! The idempotent processor: applying a batch of ops exactly once in one transaction (row lock on
//! the partition's position, duplicates skipped, an op of another origin refused, position stored).
//!
//! A batch that simply continues the stored position (the usual case) costs one statement beyond
//! the handler's: an `UPDATE` that advances the position only if the batch continues it, which
//! locks the row and reads and advances the position in one round trip. When it matches no row
//! (re-sends, another origin, a new partition) the batch takes the careful path: lock and read
//! the row, judge each op, store the position reached.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, Executor as _, PgPool, Postgres};

use pgkafka_common::ident::{qualified, quote_ident};

use super::origin::{Diverged, Origin, Step, Stored};
use super::processor::{Batch, Outcome, Processor};
use super::{state_table, ConsumerError, IdempotentApplication, Settings};
use crate::redact::redact;
use crate::Lsn;

pub(crate) struct IdempotentProcessor<A> {
    app: A,
    pool: PgPool,
    /// Connections whose last transaction committed, for the next batch (see [`Spare`]).
    spare: Spare,
    group_id: String,
    batch_size: usize,
    linger: Duration,
    table: String,
    ensure_row: String,
    lock_row: String,
    update_row: String,
    advance_row: String,
}

impl<A: IdempotentApplication> IdempotentProcessor<A> {
    pub(crate) async fn connect(app: A, settings: &Settings, url: &str) -> Result<Self, ConsumerError> {
        let size = settings.pool_size.unwrap_or_else(|| u32::try_from(settings.max_concurrent_partitions).unwrap_or(u32::MAX).saturating_add(1));
        let idle_timeout_ms = transaction_idle_timeout(settings).as_millis();
        let pool = PgPoolOptions::new()
            .max_connections(size)
            // No ping before each transaction (a round trip as long as the transaction's own
            // statements): sqlx pings a connection when it returns to the pool (between batches
            // most stay out, see `Spare`), and a connection that died idle fails the next BEGIN,
            // a transient error that is retried.
            .test_before_acquire(false)
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
            spare: Spare::new(settings.max_concurrent_partitions.min(size.saturating_sub(1) as usize)),
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
            advance_row: advance_row(&table),
        })
    }
}

/// Connections kept checked out of the pool from a committed batch to the next one.
///
/// sqlx pings a connection returned to its pool (a round trip the server answers), and the next
/// batch then takes whichever connection is idle, so more sessions than partitions at work take
/// turns. Kept here, the next batch of any partition begins on a connection that just committed:
/// one round trip fewer per transaction, and as many warm sessions as partitions at work. That
/// took the benchmark's one-op transactions from 4,900–8,000 to 9,700–10,200 ops/s.
///
/// Only connections whose transaction committed are kept; after a failed batch, its connection
/// and all kept ones go back to the pool, which checks them (the failure may be a restarted
/// server). One kept longer than [`Spare::FRESH`] goes back to the pool too, so a
/// connection that died while the consumer was quiet is found by the pool's check, not by the
/// next batch's `BEGIN`, and the pool's lifetime limits still apply. At most `max` are kept, so
/// the pool always has one for a partition that finds none here.
struct Spare {
    connections: std::sync::Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    max: usize,
}

impl Spare {
    /// How long a kept connection is used without the pool's check.
    const FRESH: Duration = Duration::from_secs(5);

    fn new(max: usize) -> Self {
        Self { connections: std::sync::Mutex::new(Vec::with_capacity(max)), max }
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, Vec<(PoolConnection<Postgres>, Instant)>> {
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection kept last if it is fresh, else one from `pool`. Stale ones are dropped,
    /// which hands them back to the pool.
    async fn take(&self, pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let kept = {
            let mut connections = self.connections();
            let fresh = connections.pop().filter(|(_, kept_at)| kept_at.elapsed() < Self::FRESH);
            if fresh.is_none() {
                connections.clear();
            }
            fresh
        };
        match kept {
            Some((connection, _)) => Ok(connection),
            None => pool.acquire().await,
        }
    }

    /// Hands every kept connection back to the pool.
    fn clear(&self) {
        self.connections().clear();
    }

    /// Keeps `connection`, whose transaction committed, unless enough are kept already.
    fn keep(&self, connection: PoolConnection<Postgres>) {
        let mut connections = self.connections();
        if connections.len() < self.max {
            connections.push((connection, Instant::now()));
        }
    }
}

/// The statement that advances a partition's position to the end of a batch that continues it
/// ([`Continuation`]): it matches the row only when every op of the batch would be judged
/// [`Step::Apply`] against the stored state (see [`Continuation::continues`], its mirror), so zero
/// rows means "take the careful path". Like `SELECT … FOR UPDATE`, it waits for an instance
/// holding the row and then judges the position that instance committed.
///
/// Parameters: `$1..$3` the row's key, `$4, $5` the batch's last position (as text), `$6, $7` its
/// first, `$8..$10` the batch's origin (system id, timeline, slot; all NULL without headers).
fn advance_row(table: &str) -> String {
    format!(
        "UPDATE {table} SET lsn = $4::text::pg_lsn, seq_id = $5::text::numeric, \
         system_id = COALESCE($8::text, system_id), timeline = COALESCE($9::bigint, timeline), \
         slot = COALESCE($10::text, slot), updated_at = now() \
         WHERE group_id = $1 AND topic = $2 AND partition = $3 \
         AND (timeline IS NULL OR timeline BETWEEN 0 AND 4294967295) \
         AND (seq_id IS NULL OR seq_id BETWEEN 0 AND 18446744073709551615) \
         AND (lsn IS NULL OR seq_id IS NULL \
              OR ((lsn, seq_id) < ($6::text::pg_lsn, $7::text::numeric) \
                  AND ($8::text IS NULL OR system_id IS NULL OR timeline IS NULL OR slot IS NULL \
                       OR (system_id = $8::text AND slot = $10::text AND timeline <= $9::bigint))))"
    )
}

/// A batch whose positions strictly increase and whose ops all carry the same origin (or none):
/// against a stored state it either continues (every op applied, the position advanced to its
/// last op) or it does not and is judged op by op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Continuation<'a> {
    first: (u64, u64),
    last: (u64, u64),
    origin: Option<&'a Origin>,
}

impl<'a> Continuation<'a> {
    fn of(batch: &Batch<'a>) -> Option<Self> {
        let first_op = batch.ops.first()?;
        let first_origin = batch.origins.first()?.as_ref();
        let mut last = (first_op.lsn, first_op.seq_id);
        for (op, origin) in batch.ops.iter().zip(batch.origins).skip(1) {
            let position = (op.lsn, op.seq_id);
            if position <= last || origin.as_ref() != first_origin {
                return None;
            }
            last = position;
        }
        Some(Continuation { first: (first_op.lsn, first_op.seq_id), last, origin: first_origin })
    }

    /// Whether the batch continues `stored`: what [`advance_row`]'s condition says in SQL, for
    /// a stored state that parses.
    #[cfg(test)]
    fn continues(&self, stored: &Stored) -> bool {
        let Some(position) = stored.position else { return true };
        position < self.first
            && match (&stored.origin, self.origin) {
                (Some(stored), Some(origin)) => {
                    stored.system_id == origin.system_id && stored.slot == origin.slot && stored.timeline <= origin.timeline
                }
                _ => true,
            }
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

impl<A: IdempotentApplication> IdempotentProcessor<A> {
    /// Advances the partition's position past `continuation` if the batch continues it; false
    /// when it does not (or the row does not exist yet), with nothing changed.
    async fn advance(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        topic: &str,
        partition: i32,
        continuation: &Continuation<'_>,
    ) -> Result<bool, ConsumerError> {
        let (first, last, origin) = (continuation.first, continuation.last, continuation.origin);
        let advanced = sqlx::query(&self.advance_row)
            .bind(&self.group_id)
            .bind(topic)
            .bind(partition)
            .bind(Lsn::from(last.0).to_string())
            .bind(last.1.to_string())
            .bind(Lsn::from(first.0).to_string())
            .bind(first.1.to_string())
            .bind(origin.map(|o| o.system_id.as_str()))
            .bind(origin.map(|o| i64::from(o.timeline)))
            .bind(origin.map(|o| o.slot.as_str()))
            .execute(&mut **tx)
            .await?;
        Ok(advanced.rows_affected() == 1)
    }

    /// Locks the partition's state row and reads it; `None` when it does not exist yet.
    async fn lock(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        topic: &str,
        partition: i32,
    ) -> Result<Option<StateRow>, ConsumerError> {
        Ok(sqlx::query_as(&self.lock_row).bind(&self.group_id).bind(topic).bind(partition).fetch_optional(&mut **tx).await?)
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
        let mut connection = self.spare.take(&self.pool).await?;
        let outcome = self.apply(&mut connection, topic, partition, batch).await;
        match outcome {
            Ok(_) => self.spare.keep(connection),
            // The error may be a restarted server: the kept connections go back to the pool's check too.
            Err(_) => self.spare.clear(),
        }
        outcome
    }
}

impl<A: IdempotentApplication> IdempotentProcessor<A> {
    /// Applies `batch` in one transaction on `connection`, committed when this returns `Ok`.
    async fn apply(
        &self,
        connection: &mut PoolConnection<Postgres>,
        topic: &str,
        partition: i32,
        batch: Batch<'_>,
    ) -> Result<Outcome, ConsumerError> {
        let mut tx = connection.begin().await?;
        if let Some(continuation) = Continuation::of(&batch) {
            if self.advance(&mut tx, topic, partition, &continuation).await? {
                for ((op, &offset), &snapshot) in batch.ops.iter().zip(batch.offsets).zip(batch.snapshots) {
                    if let Err(e) =
                        super::call_handler(topic, partition, offset, snapshot, self.app.handle_message(&mut tx, op)).await
                    {
                        let _ = tx.rollback().await;
                        return Err(e);
                    }
                }
                tx.commit().await?;
                return Ok(Outcome { applied: batch.ops.len() as u64, duplicates: 0 });
            }
        }
        // The row lock is what keeps two instances (a rebalance in progress, a zombie) from both
        // applying an op: the second waits here, then reads the position the first committed.
        let row = match self.lock(&mut tx, topic, partition).await? {
            Some(row) => row,
            None => {
                sqlx::query(&self.ensure_row)
                    .bind(&self.group_id)
                    .bind(topic)
                    .bind(partition)
                    .execute(&mut *tx)
                    .await?;
                self.lock(&mut tx, topic, partition)
                    .await?
                    .ok_or_else(|| ConsumerError::fatal(format!("state table {}: the row of {topic} partition {partition} vanished", self.table)))?
            }
        };
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{Op, ReplicationOp};

    fn origin() -> impl Strategy<Value = Option<Origin>> {
        proptest::option::of(
            (prop::sample::select(vec!["1", "2"]), 0u32..4, prop::sample::select(vec!["s", "t"]))
                .prop_map(|(system_id, timeline, slot)| Origin { system_id: system_id.into(), timeline, slot: slot.into() }),
        )
    }

    fn position() -> impl Strategy<Value = (u64, u64)> {
        (0u64..4, 0u64..4)
    }

    fn op((lsn, seq_id): (u64, u64)) -> ReplicationOp {
        ReplicationOp { table_name: "t".into(), col_names: vec![], lsn, seq_id, op: Op::Insert(vec![]) }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// The fast path's condition (`advance_row`, mirrored by `continues`) only takes batches
        /// that the op-by-op judgement would apply whole, and leaves the state the op-by-op path
        /// would store: a wrong condition would skip or double an op, or store the wrong position.
        #[test]
        fn a_continuing_batch_is_what_judging_each_op_applies(
            stored_position in proptest::option::of(position()),
            stored_origin in origin(),
            batch_origin in origin(),
            positions in proptest::collection::vec(position(), 1..4),
            other_origin in proptest::option::of((0usize..4, origin())),
        ) {
            let stored = Stored { position: stored_position, origin: stored_origin };
            // Mostly one origin for the whole batch (what the fast path takes), sometimes another in it.
            let mut origins = vec![batch_origin; positions.len()];
            if let Some((at, other)) = other_origin {
                if let Some(origin) = origins.get_mut(at) {
                    *origin = other;
                }
            }
            let ops: Vec<ReplicationOp> = positions.iter().copied().map(op).collect();
            let offsets: Vec<i64> = (0..ops.len() as i64).collect();
            let batch = Batch { offsets: &offsets, ops: &ops, origins: &origins, snapshots: &vec![None; ops.len()] };
            let Some(continuation) = Continuation::of(&batch) else { return Ok(()) };
            if !continuation.continues(&stored) {
                return Ok(());
            }
            let mut state = stored.clone();
            for (position, origin) in positions.iter().zip(&origins) {
                prop_assert_eq!(state.judge(*position, origin.as_ref()), Ok(Step::Apply));
                state.advance(*position, origin.as_ref());
            }
            let expected = Stored {
                position: Some(continuation.last),
                origin: continuation.origin.cloned().or(stored.origin),
            };
            prop_assert_eq!(state, expected);
        }
    }

    #[test]
    fn a_batch_with_mixed_origins_or_positions_out_of_order_is_judged_op_by_op() {
        let a = Origin { system_id: "1".into(), timeline: 1, slot: "s".into() };
        let ops = [op((5, 0)), op((5, 1))];
        let offsets = [0, 1];
        let mixed = [Some(a.clone()), None];
        assert_eq!(Continuation::of(&Batch { offsets: &offsets, ops: &ops, origins: &mixed, snapshots: &[None, None] }), None);
        let same = [Some(a.clone()), Some(a.clone())];
        let continuation = Continuation::of(&Batch { offsets: &offsets, ops: &ops, origins: &same, snapshots: &[None, None] }).unwrap();
        assert_eq!(continuation, Continuation { first: (5, 0), last: (5, 1), origin: Some(&a) });
        let backwards = [op((5, 1)), op((5, 1))];
        assert_eq!(Continuation::of(&Batch { offsets: &offsets, ops: &backwards, origins: &same, snapshots: &[None, None] }), None);
    }
}
