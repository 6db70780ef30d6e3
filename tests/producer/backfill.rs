//! On-demand backfills while the producer streams: rows that existed before the slot reach their
//! topics consistent with the changes streamed around them, across SIGKILLs, and a backfill can
//! be cancelled.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgkafka::async_trait::async_trait;
use pgkafka::producer::{BackfillRun, BackfillSelector};
use pgkafka::sqlx::{Postgres, Transaction};
use pgkafka::{Consumer, ConsumerError, IdempotentApplication, Op, Producer, ReplicationOp};
use pgkafka_tests::consumer_task::RunningConsumer;
use pgkafka_tests::producer_process::{ChildConfig, ChildProducer};
use pgkafka_tests::producer_task::RunningProducer;
use pgkafka_tests::rng::Rng;
use pgkafka_tests::slots::{slot_active_pid, wait_confirmed_past_now};
use pgkafka_tests::{env, pg_client, unique_name, wait_for, Record};

use super::{Scenario, Table};

const CHILD: &str = env!("CARGO_BIN_EXE_producer_child");

/// A row by its primary-key values, every column as text.
pub(crate) type Rows = BTreeMap<Vec<Option<String>>, Vec<Option<String>>>;

/// The table's rows as pgoutput prints them (`col::text`), by primary key.
pub(crate) async fn table_rows(pg: &tokio_postgres::Client, table: &str, key: &[&str]) -> Rows {
    let columns: Vec<String> = pg
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let select: Vec<String> = columns.iter().map(|c| format!("\"{c}\"::text")).collect();
    let rows = pg.query(&format!("SELECT {} FROM {table}", select.join(", ")), &[]).await.unwrap();
    let positions: Vec<usize> = key.iter().map(|k| columns.iter().position(|c| c == k).unwrap()).collect();
    rows.iter()
        .map(|row| {
            let values: Vec<Option<String>> = (0..columns.len()).map(|i| row.get(i)).collect();
            (positions.iter().map(|&i| values[i].clone()).collect(), values)
        })
        .collect()
}

/// The key of an op's row, by the key columns' names.
fn key_of(op: &ReplicationOp, row: &[Option<String>], key: &[&str]) -> Vec<Option<String>> {
    key.iter().map(|k| row[op.col_names.iter().position(|c| c == k).unwrap()].clone()).collect()
}

/// A table `(id int PRIMARY KEY, ver int NOT NULL, v text)` with a unique name, holding `rows`
/// rows at `ver` 0 before any slot exists: what [`fold`] reads back, checking `ver` never goes
/// down. Returns its name too.
pub(crate) fn versioned_table(prefix: &str, rows: u32, partitions: i32) -> (String, Table) {
    let t = unique_name(prefix);
    let table = Table::new(
        &t,
        format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, ver int NOT NULL, v text); \
             INSERT INTO {t} SELECT g, 0, 'v' || g FROM generate_series(1, {rows}) g"
        ),
        &[],
        partitions,
    );
    (t, table)
}

/// What a topic folds to, applied as the idempotent consumer applies it: per partition in offset
/// order, skipping records at or below the partition's last applied `(lsn, seq_id)` (re-sends).
/// On the way, checks that no key goes back in time: its `ver` column never decreases and nothing
/// follows its delete.
pub(crate) fn fold(records: &[&Record], key: &[&str], table: &str) -> Rows {
    let mut state = Rows::new();
    for (partition, records) in in_apply_order(records) {
        let mut versions: HashMap<Vec<Option<String>>, Option<i64>> = HashMap::new();
        for (record, op, covered_by) in records {
            if covered_by.is_some() {
                continue;
            }
            let ver_at = op.col_names.iter().position(|c| c == "ver").unwrap();
            let (row_key, row) = match &op.op {
                Op::Insert(new) | Op::Update((_, new)) => (key_of(&op, new, key), Some(new.clone())),
                Op::Delete(old) => (key_of(&op, old, key), None),
            };
            let version = row.as_ref().map(|r| r[ver_at].as_deref().unwrap().parse::<i64>().unwrap());
            if let Some(previous) = versions.get(&row_key) {
                let context =
                    format!("table {table}, partition {partition}, offset {}, key {row_key:?}", record.offset);
                assert!(previous.is_some(), "a record after the row's delete: {context}: {op:?}");
                if let (Some(previous), Some(version)) = (previous, version) {
                    assert!(version >= *previous, "the row went back from ver {previous} to {version}: {context}");
                }
            }
            versions.insert(row_key.clone(), version);
            match row {
                Some(row) => state.insert(row_key, row),
                None => state.remove(&row_key),
            };
        }
    }
    state
}

/// A record in the order the idempotent consumer takes it, decoded, with the earlier record of
/// its partition whose position covers it when it is skipped as a re-send.
type InOrder<'a> = (&'a Record, ReplicationOp, Option<&'a Record>);

/// The records of each partition in offset order, each marked as [`fold`] and the idempotent
/// consumer treat it: skipped when its `(lsn, seq_id)` is at or below the last applied one.
fn in_apply_order<'a>(records: &[&'a Record]) -> HashMap<i32, Vec<InOrder<'a>>> {
    let mut by_partition: HashMap<i32, Vec<&Record>> = HashMap::new();
    for record in records {
        by_partition.entry(record.partition).or_default().push(record);
    }
    by_partition
        .into_iter()
        .map(|(partition, mut records)| {
            records.sort_by_key(|r| r.offset);
            let mut applied: Option<((u64, u64), &Record)> = None;
            let ordered = records
                .into_iter()
                .map(|record| {
                    let op = record.op();
                    let position = (op.lsn, op.seq_id);
                    let covered_by = applied.filter(|(last, _)| position <= *last).map(|(_, by)| by);
                    if covered_by.is_none() {
                        applied = Some((position, record));
                    }
                    (record, op, covered_by)
                })
                .collect();
            (partition, ordered)
        })
        .collect()
}

/// For each record of `key` (of every key when `None`) that [`fold`] skips as a re-send, the
/// record whose position covered it: what to look at when a fold loses a change.
fn skipped_because(records: &[&Record], key: Option<&[Option<String>]>, key_columns: &[&str]) -> Vec<String> {
    let mut lines = Vec::new();
    for (record, op, covered_by) in in_apply_order(records).into_values().flatten() {
        let Some(by) = covered_by else { continue };
        let row = match &op.op {
            Op::Insert(new) | Op::Update((_, new)) => new,
            Op::Delete(old) => old,
        };
        if key.is_none_or(|key| key_of(&op, row, key_columns) == key) {
            let cover = by.op();
            lines.push(format!(
                "skipped {}@{} ({}, {}): covered by {}@{} ({}, {}) of table {}, key {:?}",
                record.partition,
                record.offset,
                pgkafka::Lsn(op.lsn),
                op.seq_id,
                by.partition,
                by.offset,
                pgkafka::Lsn(cover.lsn),
                cover.seq_id,
                cover.table_name,
                by.key_text()
            ));
        }
    }
    lines
}

/// Writes inserts, updates (of old and new rows, bumping `ver`) and deletes to both tables at a
/// steady pace until `stop`. Returns how many transactions committed.
async fn writer(a: String, b: String, seed: u64, stop: Arc<AtomicBool>) -> usize {
    let pg = pg_client().await;
    let mut rng = Rng::new(seed);
    let mut next_id = 100_000i64;
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = rng.range(1, 2_000) as i64;
        let sql = match rng.range(0, 8) {
            0 => {
                next_id += 1;
                format!("INSERT INTO {a} VALUES ({}, {next_id}, 0, 'new', repeat(md5('{next_id}'), 100))", next_id % 3)
            }
            1 => {
                next_id += 1;
                let n = if rng.chance(0.5) { "NULL".to_owned() } else { next_id.to_string() };
                format!("INSERT INTO {b} VALUES ({next_id}, 0, NULL, {n})")
            }
            // An update that leaves the TOASTed column unchanged, and one that rewrites it.
            2 => format!("UPDATE {a} SET ver = ver + 1, note = 'upd' WHERE org = {} AND id = {id}", id % 3),
            3 => format!(
                "UPDATE {a} SET ver = ver + 1, big = repeat(md5('{id}x{done}'), 90) WHERE org = {} AND id = {id}",
                id % 3
            ),
            4 | 5 => format!("UPDATE {b} SET ver = ver + 1, v = 'upd {done}', n = NULL WHERE id = {id}"),
            6 => format!("DELETE FROM {a} WHERE org = {} AND id = {id}", id % 3),
            _ => format!("DELETE FROM {b} WHERE id = {id}"),
        };
        pg.batch_execute(&sql).await.unwrap();
        done += 1;
        tokio::time::sleep(Duration::from_millis(rng.range(1, 8))).await;
    }
    done
}

/// The last key backfill `run` recorded as acknowledged, straight from the control table: the
/// writers poll it, and the library's `backfill_status` opens a connection per call.
async fn acknowledged_key(pg: &tokio_postgres::Client, run: i64) -> Option<Vec<String>> {
    pg.query_one("SELECT last_key FROM public.pgkafka_snapshots WHERE id = $1", &[&run]).await.unwrap().get(0)
}

/// Updates the rows the backfill of `table` reads next (the chunk after its last acknowledged
/// key) as fast as it can until `stop`: commits land between a chunk's read and its high
/// watermark, the race the window exists for. `key` are the primary-key columns (all integers).
async fn hot_writer(table: String, key: Vec<&'static str>, run: i64, stop: Arc<AtomicBool>) -> usize {
    let pg = pg_client().await;
    let columns = key.join(", ");
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) {
        let last = acknowledged_key(&pg, run).await;
        let after = match &last {
            Some(last) => format!("WHERE ({columns}) > ({})", last.join(", ")),
            None => String::new(),
        };
        let select: Vec<String> = key.iter().map(|k| format!("{k}::bigint")).collect();
        let next = pg
            .query(&format!("SELECT {} FROM {table} {after} ORDER BY {columns} LIMIT 30", select.join(", ")), &[])
            .await
            .unwrap();
        if next.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let deadline = Instant::now() + Duration::from_millis(30);
        while Instant::now() < deadline {
            // A few rows at a time with a pause: enough commits land inside the chunks' windows
            // without a load that keeps the producer behind for the whole test.
            tokio::time::sleep(Duration::from_millis(4)).await;
            for row in next.iter().take(4) {
                let filter: Vec<String> =
                    key.iter().enumerate().map(|(i, k)| format!("{k} = {}", row.get::<_, i64>(i))).collect();
                pg.batch_execute(&format!("UPDATE {table} SET ver = ver + 1 WHERE {}", filter.join(" AND ")))
                    .await
                    .unwrap();
                done += 1;
            }
        }
    }
    done
}

/// A [`versioned_table`] of `rows` rows on `partitions` partitions, streamed by a producer
/// running in this process with backfills on, `chunk_size` rows per chunk; with the table's
/// name, and a producer handle to request backfills with.
async fn backfilling(prefix: &str, rows: u32, partitions: i32, chunk_size: usize) -> (String, Scenario, RunningProducer, Producer) {
    let (t, table) = versioned_table(prefix, rows, partitions);
    let sc = Scenario::new(prefix, vec![table]).await;
    let producer = sc.builder().backfills(true).backfill_chunk_size(chunk_size).build();
    let running = RunningProducer::start(producer, &sc.slot).await;
    let control = sc.producer();
    (t, sc, running, control)
}

/// This slot's backfills, through the library API the `pgkafka backfill` command uses.
async fn runs(producer: &Producer) -> Vec<BackfillRun> {
    producer.backfill_status().await.unwrap()
}

/// Applies every op to a copy table keyed by (table, key), as an application would.
struct CopyApp {
    copy: String,
    keys: HashMap<String, Vec<&'static str>>,
}

#[async_trait]
impl IdempotentApplication for CopyApp {
    async fn handle_message(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        op: &ReplicationOp,
    ) -> Result<(), ConsumerError> {
        let key = &self.keys[&op.table_name];
        let (row_key, row) = match &op.op {
            Op::Insert(new) | Op::Update((_, new)) => (key_of(op, new, key), Some(new)),
            Op::Delete(old) => (key_of(op, old, key), None),
        };
        let row_key = serde_json::to_string(&row_key).unwrap();
        match row {
            Some(row) => {
                pgkafka::sqlx::query(&format!(
                    "INSERT INTO {} VALUES ($1, $2, $3) ON CONFLICT (tbl, k) DO UPDATE SET r = EXCLUDED.r",
                    self.copy
                ))
                .bind(&op.table_name)
                .bind(&row_key)
                .bind(row)
                .execute(&mut **tx)
                .await?;
            }
            None => {
                pgkafka::sqlx::query(&format!("DELETE FROM {} WHERE tbl = $1 AND k = $2", self.copy))
                    .bind(&op.table_name)
                    .bind(&row_key)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }
}

/// The copy table's rows of `table`, by key.
async fn copy_rows(pg: &tokio_postgres::Client, copy: &str, table: &str) -> Rows {
    pg.query(&format!("SELECT k, r FROM {copy} WHERE tbl = $1"), &[&table])
        .await
        .unwrap()
        .iter()
        .map(|row| (serde_json::from_str(row.get::<_, &str>(0)).unwrap(), row.get(1)))
        .collect()
}

/// Two tables that held rows before the slot existed (a composite key with TOASTed values, and
/// one in another schema with NULLs) are backfilled while a writer inserts, updates and deletes
/// at a steady pace, and the producer (a child process) is SIGKILLed twice in the middle of the
/// backfill. Every backfill finishes, resuming after its last acknowledged key; then each topic,
/// applied as an idempotent consumer applies it, equals its table exactly, no row ever goes back
/// to an older version after a newer one in its partition, and a real idempotent consumer
/// upserting every op into a copy table ends equal to the source.
///
/// Checked to fail without the window: with every chunk row published (`Window::high` keeping
/// all rows), rows updated while their chunk was read go back to an older `ver`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_while_writing_survives_sigkills_and_folds_to_the_tables() {
    pgkafka_tests::init_tracing();
    let started = Instant::now();
    let mut rng = Rng::from_env("backfill test");
    let a = unique_name("p_bf_a");
    let schema = unique_name("p_bf_s");
    let b = format!("{schema}.items");
    let pg = pg_client().await;
    pg.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let tables = vec![
        Table::new(
            &a,
            format!(
                "CREATE TABLE {a} (org int, id bigint, ver int NOT NULL, note text, big text, PRIMARY KEY (org, id)); \
                 INSERT INTO {a} SELECT g % 3, g, 0, CASE WHEN g % 5 = 0 THEN NULL ELSE 'old ' || g END, \
                 (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 80) i) \
                 FROM generate_series(1, 2000) g"
            ),
            &[],
            3,
        ),
        Table::new(
            &b,
            format!(
                "CREATE TABLE {b} (id int PRIMARY KEY, ver int NOT NULL, v text, n int); \
                 INSERT INTO {b} SELECT g, 0, CASE WHEN g % 4 = 0 THEN NULL ELSE 'v' || g END, \
                 CASE WHEN g % 3 = 0 THEN NULL ELSE g END FROM generate_series(1, 1000) g"
            ),
            &[],
            2,
        ),
    ];
    let mut sc = Scenario::new("p_bf", tables).await;
    sc.drop_at_cleanup(format!("SCHEMA {schema} CASCADE"));
    let keys: HashMap<String, Vec<&'static str>> =
        HashMap::from([(a.clone(), vec!["org", "id"]), (b.clone(), vec!["id"])]);

    let config = ChildConfig::on_test_servers(&sc.slot, &sc.publication, &sc.topic_map, 200, 500);
    let log = std::env::temp_dir().join(format!("{}.log", unique_name("p_bf_child")));
    println!("child producer logs: {}", log.display());
    let vars = [("PGKAFKA_CHILD_BACKFILL_CHUNK", "25")];
    let mut child = ChildProducer::spawn_with_env(CHILD, &config, &log, &vars);
    wait_for("the child producer to stream", Duration::from_secs(60), || async {
        slot_active_pid(&sc.pg, &sc.slot).await.map(|_| ())
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(writer(a.clone(), b.clone(), rng.next_u64(), Arc::clone(&stop)));
    let control = sc.producer();
    let ids = control.request_backfill(&[]).await.unwrap();
    assert_eq!(ids.len(), 2, "one backfill per streamed table");
    let hot: Vec<_> = [(&a, 0), (&b, 1)]
        .into_iter()
        .map(|(table, i)| {
            tokio::spawn(hot_writer(table.clone(), keys[table.as_str()].clone(), ids[i], Arc::clone(&stop)))
        })
        .collect();

    // SIGKILL the producer twice while a backfill is running and has made progress.
    let mut kills = Vec::new();
    for kill in 0..2 {
        let reached = 300 * (kill + 1) as i64;
        let at = wait_for("the backfill to make progress", Duration::from_secs(60), || async {
            let runs = runs(&control).await;
            let total: i64 = runs.iter().map(|r| r.rows_read).sum();
            let running = runs.iter().any(|r| r.state == "running");
            (total >= reached && running).then_some(total)
        })
        .await;
        if let Some(status) = child.try_status() {
            panic!("the child producer exited by itself with {status}; see {}", log.display());
        }
        child.kill();
        kills.push(at);
        tokio::time::sleep(Duration::from_millis(rng.range(0, 500))).await;
        child = ChildProducer::spawn_with_env(CHILD, &config, &log, &vars);
    }
    wait_for("every backfill to finish", Duration::from_secs(90), || async {
        let runs = runs(&control).await;
        assert!(runs.iter().all(|r| r.state != "failed"), "a backfill failed: {runs:?}");
        runs.iter().all(|r| r.state == "done").then_some(())
    })
    .await;
    let finished = runs(&control).await;
    for run in &finished {
        assert!(run.last_key.is_some() && run.rows_read > 0, "{run:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let committed = writing.await.unwrap();
    let mut hot_updates = 0;
    for task in hot {
        hot_updates += task.await.unwrap();
    }

    // Everything written is confirmed (so in Kafka); then stop gracefully.
    wait_confirmed_past_now(&sc.pg, &sc.slot).await;
    let status = child.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "the last child did not stop gracefully ({status}); see {}", log.display());

    let records = sc.read_all().await;
    let mut backfilled = 0;
    for (table, topic) in [(&a, &sc.topics[0]), (&b, &sc.topics[1])] {
        let mine: Vec<&Record> = records.iter().filter(|(t, _)| t == topic).map(|(_, r)| r).collect();
        backfilled += mine.len();
        let folded = fold(&mine, &keys[table.as_str()], table);
        let source = table_rows(&sc.pg, table, &keys[table.as_str()]).await;
        assert_eq!(folded.len(), source.len(), "table {table}: rows in the topic against rows in the table");
        if let Some((key, row)) = source.iter().find(|(k, row)| folded.get(*k) != Some(*row)) {
            let history: Vec<String> = mine
                .iter()
                .filter(|r| {
                    let op = r.op();
                    let row = match &op.op {
                        Op::Insert(new) | Op::Update((_, new)) => new.clone(),
                        Op::Delete(old) => old.clone(),
                    };
                    key_of(&op, &row, &keys[table.as_str()]) == *key
                })
                .map(|r| {
                    let op = r.op();
                    let kind = match &op.op {
                        Op::Insert(_) => "insert",
                        Op::Update(_) => "update",
                        Op::Delete(_) => "delete",
                    };
                    let ver = op.col_names.iter().position(|c| c == "ver").unwrap();
                    let vers: Vec<Option<String>> = match &op.op {
                        Op::Insert(new) => vec![new[ver].clone()],
                        Op::Update((old, new)) => vec![old[ver].clone(), new[ver].clone()],
                        Op::Delete(old) => vec![old[ver].clone()],
                    };
                    format!(
                        "{}@{} ({}, {}) {kind} ver {vers:?}",
                        r.partition,
                        r.offset,
                        pgkafka::Lsn(op.lsn),
                        op.seq_id
                    )
                })
                .collect();
            panic!(
                "table {table}: key {key:?} is {:?} in the table but {:?} in the folded topic; its records:\n{}\n{}",
                row.iter().map(|v| v.as_deref().map(|v| &v[..v.len().min(20)])).collect::<Vec<_>>(),
                folded
                    .get(key)
                    .map(|r| r.iter().map(|v| v.as_deref().map(|v| &v[..v.len().min(20)])).collect::<Vec<_>>()),
                history.join("\n").chars().take(6000).collect::<String>(),
                skipped_because(&mine, Some(key), &keys[table.as_str()]).join("\n")
            );
        }
        assert!(folded == source, "table {table}: the folded topic differs from the table");
    }

    // A real idempotent consumer upserting every op ends equal to the source.
    let copy = unique_name("p_bf_copy");
    sc.pg
        .batch_execute(&format!("CREATE TABLE {copy} (tbl text, k text, r text[], PRIMARY KEY (tbl, k))"))
        .await
        .unwrap();
    sc.drop_at_cleanup(format!("TABLE {copy}"));
    let state_table = unique_name("p_bf_state");
    sc.drop_at_cleanup(format!("TABLE IF EXISTS {state_table}"));
    let consumer = Consumer::new(
        unique_name("p_bf_group"),
        sc.topics.clone(),
        env().brokers.clone(),
        CopyApp { copy: copy.clone(), keys: keys.clone() },
    )
    .state_table(state_table);
    let consuming = RunningConsumer::idempotent(consumer, &env().database_url);
    for table in [&a, &b] {
        let source = table_rows(&sc.pg, table, &keys[table.as_str()]).await;
        let (pg, copy) = (&sc.pg, &copy);
        wait_for(&format!("the copy of {table} to equal it"), Duration::from_secs(90), || {
            let source = &source;
            async move { (copy_rows(pg, copy, table).await == *source).then_some(()) }
        })
        .await;
    }
    consuming.stop().await.unwrap();
    println!(
        "backfill test: {committed} writer transactions, {hot_updates} hot updates, {} records, kills at {kills:?} rows read, runs {:?}, {:?}",
        backfilled,
        finished.iter().map(|r| (r.table_name.clone(), r.rows_read, r.chunks)).collect::<Vec<_>>(),
        started.elapsed()
    );
    let _ = std::fs::remove_file(&log);
    sc.cleanup().await;
}

/// Updates, each in a transaction of its own with a round trip between the `UPDATE` and the
/// `COMMIT`, the rows of `table` the backfill `run` already published (ids up to its last
/// acknowledged key), round and round, until `stop`: commits land at any point of the WAL,
/// right after a chunk's high watermark included. Returns how many committed.
async fn behind_the_backfill(table: String, run: i64, seed: u64, stop: Arc<AtomicBool>) -> usize {
    let mut pg = pg_client().await;
    let mut rng = Rng::new(seed);
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(published) = acknowledged_key(&pg, run).await.and_then(|key| key[0].parse::<u64>().ok()) else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        for _ in 0..10 {
            let tx = pg.transaction().await.unwrap();
            let id = rng.range(1, published + 1) as i32;
            tx.execute(&format!("UPDATE {table} SET ver = ver + 1 WHERE id = $1"), &[&id]).await.unwrap();
            tx.commit().await.unwrap();
            done += 1;
        }
    }
    done
}

/// The WAL point a chunk is read at, its high watermark, is where a WAL record ends, and the next
/// record can be the `COMMIT` of a transaction the chunk did not see: that transaction is
/// streamed at the watermark's LSN. Its changes must sort above the chunk's rows, or an
/// idempotent consumer skips them as re-sends and loses them. Writers update rows the backfill
/// already published, committing with a round trip after each `UPDATE`, so that commits land
/// right after high watermarks; the test checks that some did (a streamed change at a chunk's
/// LSN or one above it: chunk rows sit one below their watermark), that applied as the
/// idempotent consumer applies it no change of the topic is skipped (nothing was sent twice),
/// and that the topic folds to the table.
///
/// Checked to fail with the chunk rows at the watermark's LSN itself: each such change is
/// skipped as covered by a row of the chunk before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_right_after_a_high_watermark_sorts_above_the_chunk() {
    pgkafka_tests::init_tracing();
    let (t, sc, running, control) = backfilling("p_bf_edge", 300, 1, 2).await;
    let run = control.request_backfill(std::slice::from_ref(&t)).await.unwrap()[0];

    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = Rng::from_env("high watermark edge test");
    let writers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(behind_the_backfill(t.clone(), run, rng.next_u64(), Arc::clone(&stop))))
        .collect();
    wait_for("the backfill to finish", Duration::from_secs(120), || async {
        let runs = runs(&control).await;
        assert!(runs.iter().all(|r| r.state != "failed"), "the backfill failed: {runs:?}");
        runs.iter().any(|r| r.id == run && r.state == "done").then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut updates = 0;
    for writer in writers {
        updates += writer.await.unwrap();
    }
    wait_confirmed_past_now(&sc.pg, &sc.slot).await;
    running.stop().await.unwrap();

    let records: Vec<Record> = sc.read_all().await.into_iter().map(|(_, r)| r).collect();
    let ops: Vec<ReplicationOp> = records.iter().map(Record::op).collect();
    // The writers only update, so the inserts are the chunks' rows.
    let chunk_lsns: std::collections::HashSet<u64> =
        ops.iter().filter(|op| matches!(op.op, Op::Insert(_))).map(|op| op.lsn).collect();
    let right_after = ops
        .iter()
        .filter(|op| matches!(op.op, Op::Update(_)))
        .filter(|op| chunk_lsns.contains(&op.lsn) || chunk_lsns.contains(&op.lsn.wrapping_sub(1)))
        .count();
    println!(
        "{} chunks, {updates} updates, {right_after} of them committed right after a high watermark",
        chunk_lsns.len()
    );
    assert!(
        right_after > 0,
        "no update committed right after a high watermark in {} chunks: the run did not produce the case it checks",
        chunk_lsns.len()
    );
    let mine: Vec<&Record> = records.iter().collect();
    // Nothing was sent twice (no restart), so a change skipped as a re-send is a lost change,
    // even when a later update of its row hides it in the end state.
    let skipped = skipped_because(&mine, None, &["id"]);
    assert!(skipped.is_empty(), "{} changes would be skipped as re-sends:\n{}", skipped.len(), skipped.join("\n"));
    let folded = fold(&mine, &["id"], &t);
    let source = table_rows(&sc.pg, &t, &["id"]).await;
    if let Some((key, row)) = source.iter().find(|(k, row)| folded.get(*k) != Some(*row)) {
        panic!("key {key:?} is {row:?} in the table but {:?} in the folded topic", folded.get(key));
    }
    assert_eq!(folded.len(), source.len());
    sc.cleanup().await;
}

/// A backfill cancelled while it runs stops after the chunk in hand: its state is `cancelled`,
/// its progress stops growing, and the topic holds only part of the table; the producer keeps
/// streaming. An unknown table is refused with an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backfill_stops() {
    pgkafka_tests::init_tracing();
    let (t, sc, running, control) = backfilling("p_bf_cancel", 5000, 2, 5).await;

    let refused = control.request_backfill(&["no_such_table".to_owned()]).await.unwrap_err();
    assert!(refused.to_string().contains("no_such_table"), "{refused}");

    let ids = control.request_backfill(std::slice::from_ref(&t)).await.unwrap();
    let id = ids[0];
    wait_for("the backfill to make progress", Duration::from_secs(60), || async {
        runs(&control).await.iter().any(|r| r.id == id && r.rows_read >= 50).then_some(())
    })
    .await;
    assert_eq!(control.cancel_backfill(BackfillSelector::Id(id)).await.unwrap(), 1);
    let cancelled = wait_for("the backfill to be cancelled", Duration::from_secs(10), || async {
        runs(&control).await.into_iter().find(|r| r.id == id && r.state == "cancelled")
    })
    .await;
    assert!(cancelled.finished_at.is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = runs(&control).await.into_iter().find(|r| r.id == id).unwrap();
    assert!(later.rows_read <= cancelled.rows_read + 5, "the backfill went on after its cancel: {later:?}");
    assert!(later.rows_read < 5000, "the whole table was read: {later:?}");

    // The producer still streams.
    sc.pg.batch_execute(&format!("UPDATE {t} SET ver = 1 WHERE id = 4999")).await.unwrap();
    let topics = sc.topics.clone();
    wait_for("the update to arrive", Duration::from_secs(30), || {
        let topics = &topics;
        async move {
            let records = pgkafka_tests::topics::read_topics(topics).await;
            records.iter().any(|(_, r)| matches!(r.op().op, Op::Update(_))).then_some(())
        }
    })
    .await;
    running.stop().await.unwrap();
    sc.cleanup().await;
}
