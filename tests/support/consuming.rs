//! The consumer tests' application: ops tagged with the partition they were sent to and their
//! position in it, and an idempotent [`Sink`] that inserts one row per op into a sink table, run
//! by the consumer tests in-process and by `tests/bin/consumer_child.rs` in a process of its own.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgkafka::sqlx::{Postgres, Transaction};
use pgkafka::{async_trait::async_trait, ConsumerError, IdempotentApplication, Op, ReplicationOp};

use crate::{env, pg_client, unique_name};

/// The record value of an insert into table `t` whose row is `[tag, i]`: `tag` is the partition
/// it is sent to and `i` its position in that partition's stream.
pub fn tagged_op(tag: i32, i: i64, lsn: u64, seq_id: u64) -> Vec<u8> {
    serde_json::to_vec(&ReplicationOp {
        table_name: "t".into(),
        col_names: vec!["tag".into(), "i".into()],
        lsn,
        seq_id,
        op: Op::Insert(vec![Some(tag.to_string()), Some(i.to_string())]),
    })
    .unwrap()
}

/// The `(tag, i)` of an op made by [`tagged_op`]; anything else is a fatal error.
pub fn tag_and_i(op: &ReplicationOp) -> Result<(i32, i64), ConsumerError> {
    let not_tagged = || ConsumerError::fatal(format!("not a tagged insert: {op:?}"));
    let Op::Insert(row) = &op.op else { return Err(not_tagged()) };
    let field = |n: usize| row.get(n).and_then(Option::as_deref).ok_or_else(not_tagged);
    Ok((field(0)?.parse().map_err(|_| not_tagged())?, field(1)?.parse().map_err(|_| not_tagged())?))
}

/// How long [`Sink`] dawdles after each insert.
#[derive(Debug)]
enum Pause {
    None,
    Fixed(Duration),
    /// 2 to 5 ms, from a xorshift generator with this state.
    Random(AtomicU64),
}

/// Inserts one row per tagged op into its sink table (`partition_tag, i, lsn, seq_id`), inside
/// the consumer's transaction; optionally pauses after each insert and fails once, after
/// inserting, on one op.
#[derive(Debug)]
pub struct Sink {
    table: String,
    fail_once_after_insert: Option<(i32, i64)>,
    failed: AtomicBool,
    applied: AtomicU64,
    pause: Pause,
}

impl Sink {
    /// A sink writing to `table` (made by [`create_sink_table`]), without pauses or failures.
    pub fn new(table: &str) -> Self {
        Self {
            table: table.to_owned(),
            fail_once_after_insert: None,
            failed: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            pause: Pause::None,
        }
    }

    /// Fails op `i` of partition `tag` once, transiently, after its insert.
    pub fn fail_once_after_insert(self, tag: i32, i: i64) -> Self {
        Self { fail_once_after_insert: Some((tag, i)), ..self }
    }

    /// Pauses `pause` after each insert, to widen the windows in which instances overlap.
    pub fn pause(self, pause: Duration) -> Self {
        Self { pause: Pause::Fixed(pause), ..self }
    }

    /// Pauses 2 to 5 ms (drawn from `seed`) after each insert, so a consumer catching up spends
    /// its time inside batch transactions, where a test's kills should land.
    pub fn random_pause(self, seed: u64) -> Self {
        Self { pause: Pause::Random(AtomicU64::new(seed | 1)), ..self }
    }

    /// How many ops it applied (calls that returned `Ok`).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// Whether the failure asked for by [`Self::fail_once_after_insert`] happened.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    async fn dawdle(&self) {
        let pause = match &self.pause {
            Pause::None => return,
            Pause::Fixed(pause) => *pause,
            Pause::Random(state) => {
                let mut x = state.load(Ordering::Relaxed);
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                state.store(x, Ordering::Relaxed);
                Duration::from_millis(2 + x % 4)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

#[async_trait]
impl IdempotentApplication for Sink {
    async fn handle_message(&self, tx: &mut Transaction<'_, Postgres>, op: &ReplicationOp) -> Result<(), ConsumerError> {
        let (tag, i) = tag_and_i(op)?;
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
        self.dawdle().await;
        if self.fail_once_after_insert == Some((tag, i)) && !self.failed.swap(true, Ordering::SeqCst) {
            return Err(ConsumerError::transient("fails once, after its insert"));
        }
        self.applied.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A new sink table for [`Sink`]; returns its name.
pub async fn create_sink_table() -> String {
    let table = unique_name("cons_sink");
    pg_client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, partition_tag int NOT NULL, i bigint NOT NULL, \
             lsn numeric NOT NULL, seq_id numeric NOT NULL)"
        ))
        .await
        .unwrap();
    table
}

/// The rows in `table`. Retries for a while: other suites on the same server restart it.
pub async fn sink_count(table: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let (client, connection) = tokio_postgres::connect(&env().database_url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let row = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?;
            Ok::<i64, tokio_postgres::Error>(row.get(0))
        };
        match attempt.await {
            Ok(count) => return count,
            Err(e) if Instant::now() < deadline => {
                eprintln!("counting rows of {table}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("cannot count rows of {table}: {e}"),
        }
    }
}

/// Each partition's `i` values, in the order the rows were inserted, must be exactly `0..n`.
pub async fn assert_exactly_once_in_order(table: &str, partitions: i32, n: i64) {
    let rows = pg_client()
        .await
        .query(&format!("SELECT partition_tag, i FROM {table} ORDER BY id"), &[])
        .await
        .unwrap();
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for row in rows {
        by_partition.entry(row.get(0)).or_default().push(row.get(1));
    }
    for p in 0..partitions {
        let got = by_partition.remove(&p).unwrap_or_default();
        if got != (0..n).collect::<Vec<_>>() {
            let mut seen = BTreeMap::new();
            for i in &got {
                *seen.entry(*i).or_insert(0) += 1;
            }
            let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).map(|(i, _)| *i).collect();
            let missing: Vec<_> = (0..n).filter(|i| !seen.contains_key(i)).collect();
            panic!("partition {p}: {} rows, duplicates {dups:?}, missing {missing:?}, first rows {:?}", got.len(), &got[..got.len().min(40)]);
        }
    }
    assert!(by_partition.is_empty(), "rows of unknown partitions: {:?}", by_partition.keys());
}
