//! The initial snapshot: the rows that existed when the producer created its slot, then the
//! changes after, with nothing missing and nothing doubled, through SIGKILLs mid-snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgkafka::async_trait::async_trait;
use pgkafka::consumer::current_message;
use pgkafka::sqlx::{Postgres, Transaction};
use pgkafka::{Consumer, ConsumerError, IdempotentApplication, Op, ReplicationOp, SnapshotKind};
use pgkafka_tests::consumer_task::RunningConsumer;
use pgkafka_tests::producer_process::{ChildConfig, ChildProducer};
use pgkafka_tests::rng::Rng;
use pgkafka_tests::slots::{slot_confirmed, wait_confirmed_past_now};
use pgkafka_tests::topics::read_topics;
use pgkafka_tests::{env, pg_client, unique_name, wait_for};

use super::{Scenario, Table};

const CHILD: &str = env!("CARGO_BIN_EXE_producer_child");
const CHUNK_ROWS: &str = "40";

/// A published table of the test: its records' name, its primary-key columns.
struct Source {
    name: String,
    key: Vec<String>,
}

/// The table's rows as PostgreSQL prints them (simple query protocol: each type's output
/// function), keyed by primary key. Independent of pgkafka's chunk reader.
async fn contents(pg: &tokio_postgres::Client, source: &Source) -> BTreeMap<Vec<String>, Vec<Option<String>>> {
    let messages = pg.simple_query(&format!("SELECT * FROM {}", source.name)).await.unwrap();
    let mut rows = BTreeMap::new();
    let mut key_indexes = Vec::new();
    for message in messages {
        if let tokio_postgres::SimpleQueryMessage::RowDescription(columns) = &message {
            key_indexes = source.key.iter().map(|k| columns.iter().position(|c| c.name() == k).unwrap()).collect();
        }
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            let values: Vec<Option<String>> = (0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect();
            let key = key_indexes.iter().map(|&i| values[i].clone().unwrap()).collect();
            rows.insert(key, values);
        }
    }
    rows
}

/// Folds every op of `table_name` in `(lsn, seq_id)` order: the last state of each key wins,
/// deletes remove it.
fn fold(ops: &[ReplicationOp], source: &Source) -> BTreeMap<Vec<String>, Vec<Option<String>>> {
    let mut ops: Vec<&ReplicationOp> = ops.iter().filter(|op| op.table_name == source.name).collect();
    ops.sort_by_key(|op| (op.lsn, op.seq_id));
    let mut state = BTreeMap::new();
    for op in ops {
        let key_of = |row: &Vec<Option<String>>| -> Vec<String> {
            source.key.iter().map(|k| row[op.col_names.iter().position(|c| c == k).unwrap()].clone().unwrap()).collect()
        };
        match &op.op {
            Op::Insert(row) => {
                state.insert(key_of(row), row.clone());
            }
            Op::Update((old, new)) => {
                state.remove(&key_of(old));
                state.insert(key_of(new), new.clone());
            }
            Op::Delete(old) => {
                state.remove(&key_of(old));
            }
        }
    }
    state
}

/// An idempotent consumer that applies every op to a copy of its table (same columns and key).
struct Copier {
    /// Source table name -> (copy table, key columns).
    copies: HashMap<String, (String, Vec<String>)>,
    snapshot_rows: AtomicU64,
    snapshot_non_inserts: AtomicU64,
}

#[async_trait]
impl IdempotentApplication for Copier {
    async fn handle_message(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        op: &ReplicationOp,
    ) -> Result<(), ConsumerError> {
        let (copy, key) = self
            .copies
            .get(&op.table_name)
            .ok_or_else(|| ConsumerError::fatal(format!("no copy of {}", op.table_name)))?;
        if current_message().and_then(|m| m.snapshot) == Some(SnapshotKind::Initial) {
            self.snapshot_rows.fetch_add(1, Ordering::Relaxed);
            if !matches!(op.op, Op::Insert(_)) {
                self.snapshot_non_inserts.fetch_add(1, Ordering::Relaxed);
            }
        }
        let json = |row: &Vec<Option<String>>| -> serde_json::Value {
            serde_json::Value::Object(
                op.col_names.iter().cloned().zip(row.iter().map(|v| serde_json::json!(v))).collect(),
            )
        };
        let keys = key.join(", ");
        let delete = format!("DELETE FROM {copy} WHERE ({keys}) = (SELECT {keys} FROM json_populate_record(NULL::{copy}, $1::text::json))");
        let set: Vec<String> = op.col_names.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect();
        let upsert = format!(
            "INSERT INTO {copy} SELECT * FROM json_populate_record(NULL::{copy}, $1::text::json) ON CONFLICT ({keys}) DO UPDATE SET {}",
            set.join(", ")
        );
        let (sql, row) = match &op.op {
            Op::Insert(row) => (upsert, json(row)),
            Op::Update((old, new)) => {
                pgkafka::sqlx::query(&delete).bind(json(old).to_string()).execute(&mut **tx).await?;
                (upsert, json(new))
            }
            Op::Delete(old) => (delete, json(old)),
        };
        pgkafka::sqlx::query(&sql).bind(row.to_string()).execute(&mut **tx).await?;
        Ok(())
    }
}

/// Inserts, updates (some of the TOASTed column, some leaving it unchanged) and deletes at a
/// steady rate on both tables until `stop`.
async fn writers(composite: String, other: String, first_id: i64, stop: Arc<AtomicBool>) -> u64 {
    let pg = pg_client().await;
    let mut rng = Rng::new(first_id as u64);
    let mut next = first_id;
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = rng.range(1, next as u64) as i64;
        let sql = match rng.range(0, 6) {
            0 => {
                next += 1;
                format!("INSERT INTO {composite} VALUES ({}, {next}, 'new {next}', NULL, NULL)", next % 5)
            }
            1 => format!("UPDATE {composite} SET v = 'upd {done}', n = {done} WHERE org = {} AND id = {id}", id % 5),
            2 => format!("DELETE FROM {composite} WHERE org = {} AND id = {id}", id % 5),
            3 => {
                next += 1;
                format!("INSERT INTO {other} VALUES ({next}, 'new', {done})")
            }
            4 => format!("UPDATE {other} SET v = NULL, n = {done} WHERE id = {id}"),
            _ => format!("DELETE FROM {other} WHERE id = {id}"),
        };
        pg.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        done += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    done
}

/// (open runs, rows read) of the slot's initial snapshot in the control table.
async fn snapshot_progress(pg: &tokio_postgres::Client, slot: &str) -> (i64, i64) {
    // The first producer creates the control table.
    let Ok(row) = pg
        .query_one(
            "SELECT count(*) FILTER (WHERE state IN ('pending', 'running')), COALESCE(sum(rows_read), 0)::bigint \
             FROM public.pgkafka_snapshots WHERE slot_name = $1 AND kind = 'initial'",
            &[&slot],
        )
        .await
    else {
        return (0, 0);
    };
    (row.get(0), row.get(1))
}

/// Several tables (a composite key with TOASTed values and NULLs, a table in another schema, an
/// empty one) snapshotted while writers insert, update and delete at a steady rate; the producer
/// is SIGKILLed twice in the middle of its snapshot and restarted. In the end, folding each topic
/// in `(lsn, seq_id)` order gives exactly each table's contents, and an idempotent consumer that
/// applies every op to a copy ends equal to the source; snapshot rows carry the marker and are
/// inserts. (A restart that re-reads from scratch at a later point without first streaming the
/// slot's changes leaves rows deleted in between in the fold: the comparison catches it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_survives_sigkills_and_matches_the_tables() {
    pgkafka_tests::init_tracing();
    let started = Instant::now();
    let schema = unique_name("snap_schema");
    pg_client().await.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let composite = unique_name("snap_comp");
    let other = format!("{schema}.{}", unique_name("snap_items"));
    let empty = unique_name("snap_empty");
    let tables = vec![
        Table::new(
            &composite,
            format!("CREATE TABLE {composite} (org int, id bigint, v text, big text, n int, PRIMARY KEY (org, id))"),
            &[],
            3,
        ),
        Table::new(&other, format!("CREATE TABLE {other} (id bigint PRIMARY KEY, v text, n int)"), &[], 2),
        Table::new(&empty, format!("CREATE TABLE {empty} (id int PRIMARY KEY, v text)"), &[], 1),
    ];
    let mut sc = Scenario::new("p_snap", tables).await;
    sc.drop_at_cleanup(format!("SCHEMA {schema} CASCADE"));
    const ROWS: i64 = 6000;
    sc.pg
        .batch_execute(&format!(
            "INSERT INTO {composite} SELECT g % 5, g, 'row ' || g, \
               CASE WHEN g % 10 = 0 THEN (SELECT string_agg(md5(g::text || x::text), '') FROM generate_series(1, 100) x) END, \
               CASE WHEN g % 3 = 0 THEN NULL ELSE g END FROM generate_series(1, {ROWS}) g; \
             INSERT INTO {other} SELECT g, CASE WHEN g % 4 = 0 THEN NULL ELSE 'item ' || g END, g FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .unwrap();
    let sources = [
        Source { name: composite.clone(), key: vec!["org".into(), "id".into()] },
        Source { name: other.clone(), key: vec!["id".into()] },
        Source { name: empty.clone(), key: vec!["id".into()] },
    ];

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(writers(composite.clone(), other.clone(), ROWS + 1, Arc::clone(&stop)));
    let config = ChildConfig::on_test_servers(&sc.slot, &sc.publication, &sc.topic_map, 200, 500);
    let child_env = [("PGKAFKA_CHILD_SNAPSHOT", "initial"), ("PGKAFKA_CHILD_SNAPSHOT_CHUNK_ROWS", CHUNK_ROWS)];
    let log = std::env::temp_dir().join(format!("{}.log", unique_name("p_snap_child")));
    println!("child producer logs: {}", log.display());
    let mut child = ChildProducer::spawn_with_env(CHILD, &config, &log, &child_env);

    // Two SIGKILLs, each once the running child has read some chunks but not all.
    let mut read_before = 0;
    for kill in 0..2 {
        let pg = &sc.pg;
        let slot = &sc.slot;
        let read = wait_for("the snapshot to progress", Duration::from_secs(60), || async move {
            let (open, read) = snapshot_progress(pg, slot).await;
            assert!(open > 0 || read == 0, "the snapshot finished before kill {kill}; make it longer");
            (open > 0 && read >= read_before + 200).then_some(read)
        })
        .await;
        child.kill();
        println!("kill {kill} after {read} snapshot rows acknowledged ({:?})", started.elapsed());
        read_before = read;
        child = ChildProducer::spawn_with_env(CHILD, &config, &log, &child_env);
    }
    let pg = &sc.pg;
    let slot = &sc.slot;
    wait_for("the snapshot to finish", Duration::from_secs(90), || async move {
        (snapshot_progress(pg, slot).await.0 == 0).then_some(())
    })
    .await;
    // Changes streamed after the snapshot, too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    wait_confirmed_past_now(pg, slot).await;

    let records = read_topics(&sc.topics).await;
    let ops: Vec<ReplicationOp> = records.iter().map(|(_, record)| record.op()).collect();
    for source in &sources {
        let expected = contents(&sc.pg, source).await;
        let folded = fold(&ops, source);
        let missing = expected.keys().filter(|k| !folded.contains_key(*k)).count();
        let extra = folded.keys().filter(|k| !expected.contains_key(*k)).count();
        let differing = expected.iter().filter(|(k, v)| folded.get(*k).is_some_and(|f| f != *v)).count();
        assert!(
            missing == 0 && extra == 0 && differing == 0,
            "table {}: {} rows, folded topic: {missing} missing, {extra} extra, {differing} differing",
            source.name,
            expected.len()
        );
    }

    // An idempotent consumer applying every op to copies ends equal to the sources.
    let copies: HashMap<String, (String, Vec<String>)> = sources
        .iter()
        .map(|source| {
            let copy = format!("{schema}.{}", unique_name("snap_copy"));
            (source.name.clone(), (copy, source.key.clone()))
        })
        .collect();
    for (name, (copy, _)) in &copies {
        sc.pg.batch_execute(&format!("CREATE TABLE {copy} (LIKE {name} INCLUDING ALL)")).await.unwrap();
    }
    let copier = Arc::new(Copier {
        copies: copies.clone(),
        snapshot_rows: AtomicU64::new(0),
        snapshot_non_inserts: AtomicU64::new(0),
    });
    let group = unique_name("p_snap_group");
    let topics: Vec<&str> = sc.topics.iter().map(String::as_str).collect();
    let consumer = Consumer::new(&group, topics, env().brokers.as_str(), Arc::clone(&copier))
        .kafka_option("session.timeout.ms", "6000")
        .kafka_option("heartbeat.interval.ms", "500")
        .batch_size(200);
    let running = RunningConsumer::idempotent(consumer, &env().database_url);
    for (name, (copy, _)) in &copies {
        let pg = &sc.pg;
        let sql = format!(
            "SELECT count(*) FROM ((TABLE {name} EXCEPT TABLE {copy}) UNION ALL (TABLE {copy} EXCEPT TABLE {name})) d"
        );
        wait_for(&format!("the copy of {name} to equal it"), Duration::from_secs(90), || {
            let sql = sql.clone();
            async move { (pg.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) == 0).then_some(()) }
        })
        .await;
    }
    running.stop().await.unwrap();
    let snapshot_rows = copier.snapshot_rows.load(Ordering::Relaxed);
    assert!(snapshot_rows >= 2 * ROWS as u64 - 2000, "only {snapshot_rows} records carried the snapshot marker");
    assert_eq!(copier.snapshot_non_inserts.load(Ordering::Relaxed), 0, "a snapshot record was not an insert");
    println!(
        "snapshot test: {writes} concurrent writes, {} records, {snapshot_rows} snapshot rows, {:?}",
        ops.len(),
        started.elapsed()
    );

    let status = child.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "the last child did not stop gracefully ({status}); see {}", log.display());
    let _ = std::fs::remove_file(&log);
    sc.cleanup().await;
}

/// `initial_only`: the rows of every table (none for an empty one) reach the topics as inserts at
/// one position, byte for byte in the wire format, then `start()` returns by itself and the slot
/// is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_only_publishes_the_rows_then_stops_and_drops_the_slot() {
    pgkafka_tests::init_tracing();
    let (t, table) = super::id_table("snap_only", 2);
    let (empty, empty_table) = super::id_table("snap_only_empty", 1);
    let sc = Scenario::new("p_snap_only", vec![table, empty_table]).await;
    sc.pg
        .batch_execute(&format!(
            "INSERT INTO {t} SELECT g, CASE WHEN g % 2 = 0 THEN 'v' || g END FROM generate_series(1, 500) g"
        ))
        .await
        .unwrap();
    let producer = sc.builder().snapshot(pgkafka::SnapshotMode::InitialOnly).snapshot_chunk_rows(64).build();
    let result = tokio::time::timeout(Duration::from_secs(60), producer.start()).await;
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    assert_eq!(slot_confirmed(&sc.pg, &sc.slot).await, None, "the slot was not dropped");

    let records = read_topics(&sc.topics).await;
    assert_eq!(records.len(), 500);
    let source = Source { name: t.clone(), key: vec!["id".into()] };
    let ops: Vec<ReplicationOp> = records.iter().map(|(_, r)| r.op()).collect();
    assert_eq!(fold(&ops, &source), contents(&sc.pg, &source).await);
    assert!(ops.iter().all(|op| matches!(op.op, Op::Insert(_)) && op.lsn == ops[0].lsn && op.table_name == t));
    let mut seq_ids: Vec<u64> = ops.iter().map(|op| op.seq_id).collect();
    seq_ids.sort_unstable();
    assert_eq!(seq_ids, (0..500).collect::<Vec<u64>>(), "seq_ids are not 0, 1, 2, ... once each");
    for (_, record) in &records {
        assert_eq!(
            serde_json::to_vec(&record.op()).unwrap(),
            record.value.clone().unwrap(),
            "not the wire format byte for byte"
        );
    }
    assert!(!ops.iter().any(|op| op.table_name == empty));
    let runs: i64 = sc
        .pg
        .query_one("SELECT count(*) FROM public.pgkafka_snapshots WHERE slot_name = $1 AND state = 'done'", &[&sc.slot])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 2, "the control table does not show both tables done");
    sc.cleanup().await;
}

/// Values the text format escapes (tab, newline, carriage return, backslash, a literal `\N`),
/// NULLs, empty strings and types whose output form is their own (boolean, numeric, jsonb,
/// bytea, arrays), in a table keyed by text keys holding quotes and backslashes, read one row a
/// chunk so each of those keys is one the next chunk reads after: every row reaches the
/// topic once, as PostgreSQL prints it, in the wire format byte for byte. (Checked to fail when
/// the reader does not undo an escape, or quotes a key without doubling its backslashes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_values_and_text_keys_reach_the_topic_as_postgresql_prints_them() {
    pgkafka_tests::init_tracing();
    let t = unique_name("snap_awkward");
    let mut table = Table::new(
        &t,
        format!(
            "CREATE TABLE {t} (k text PRIMARY KEY, v text, b boolean, n numeric(8,3), j jsonb, raw bytea, tags text[])"
        ),
        &[],
        1,
    );
    table.key_columns = vec!["k".into()];
    let sc = Scenario::new("p_snap_awkward", vec![table]).await;
    sc.pg
        .batch_execute(&format!(
            r#"INSERT INTO {t} VALUES
               ('plain', 'tab	and
newline', true, 1.5, '{{"a": "b\\tc", "q": "it''s"}}', '\x00ff', ARRAY['x y', NULL, 'q"uote']),
               ('it''s', E'back\\slash and \\N and \r cr', false, -0.001, 'null', '', '{{}}'),
               (E'a\\b', 'ab', NULL, NULL, NULL, NULL, NULL),
               (E'back\\slash', '', NULL, NULL, NULL, NULL, NULL),
               (E'both\\''s', E'\\N', true, 0, '[]', 'ab', ARRAY['\\']),
               ('\N', NULL, NULL, NULL, NULL, NULL, NULL),
               ('ünï ☃', 'ünï ☃', true, 12345.678, '{{"ü": 1}}', E'\\\\x', ARRAY['ü'])"#
        ))
        .await
        .unwrap();
    let producer = sc.builder().snapshot(pgkafka::SnapshotMode::InitialOnly).snapshot_chunk_rows(1).build();
    let result = tokio::time::timeout(Duration::from_secs(30), producer.start()).await;
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");

    let records = read_topics(&sc.topics).await;
    let source = Source { name: t.clone(), key: vec!["k".into()] };
    let ops: Vec<ReplicationOp> = records.iter().map(|(_, r)| r.op()).collect();
    assert_eq!(ops.len(), 7, "{ops:?}");
    assert_eq!(fold(&ops, &source), contents(&sc.pg, &source).await);
    for (_, record) in &records {
        assert_eq!(serde_json::to_vec(&record.op()).unwrap(), record.value.clone().unwrap(), "not the wire format");
    }
    sc.cleanup().await;
}
