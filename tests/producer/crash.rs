//! SIGKILL a producer process at random points of a randomized multi-table workload: the union of
//! what reached Kafka is exactly what the slot holds, in commit order within every partition,
//! with duplicates only as re-sends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgkafka_tests::delivery::verify_delivery;
use pgkafka_tests::producer_process::{ChildConfig, ChildProducer};
use pgkafka_tests::rng::Rng;
use pgkafka_tests::slots::{slot_active_pid, slot_confirmed};
use pgkafka_tests::topics::wait_delivered;
use pgkafka_tests::reference::all_ops;
use pgkafka_tests::{env, pg_client, unique_name, wait_for};

use super::{Scenario, Table};

const KILLS: usize = 6;
const CHILD: &str = env!("CARGO_BIN_EXE_producer_child");

/// Random text with the characters that break naive encoders.
fn text(rng: &mut Rng) -> String {
    const PIECES: [&str; 10] = ["a", "b,c", "\"q\"", "{x}", "ü", "🚀", "\\", "'", " ", "null"];
    (0..rng.range(0, 6)).map(|_| PIECES[rng.range(0, PIECES.len() as u64) as usize]).collect()
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// What [`workload`] writes.
#[derive(Debug, Clone)]
pub(super) struct Workload {
    pub tables: Vec<String>,
    pub seed: u64,
    pub min_txs: usize,
    pub max_txs: usize,
    pub reconnect: bool,
    pub pause_ms: (u64, u64),
    /// Ids of inserted rows count up from here (distinct per workload on the same tables).
    pub first_id: i64,
}

/// Writes random multi-table transactions until `stop`, and at least `min_txs`. Returns how many
/// committed. With `reconnect`, a failed transaction (server restart) is dropped and the
/// connection made again; otherwise it panics. Sleeps `pause_ms` (random in the range) between
/// transactions.
pub(super) async fn workload(w: Workload, stop: Arc<AtomicBool>) -> usize {
    let Workload { tables, seed, min_txs, max_txs, reconnect, pause_ms, first_id } = w;
    let mut pg = pg_client().await;
    let mut rng = Rng::new(seed);
    let mut ids: Vec<Vec<i64>> = vec![Vec::new(); tables.len()];
    let mut next_id: i64 = first_id;
    let mut done = 0;
    while done < max_txs && (done < min_txs || !stop.load(Ordering::Relaxed)) {
        let mut sql = String::from("BEGIN;");
        let big = rng.chance(0.02);
        let ops = if big { 1 } else { rng.range(1, 7) };
        for _ in 0..ops {
            let ti = rng.range(0, tables.len() as u64) as usize;
            let t = &tables[ti];
            let roll = rng.range(0, 100);
            if big {
                // A transaction of a few hundred rows in one statement.
                let n = rng.range(100, 400) as i64;
                sql.push_str(&format!(
                    "INSERT INTO {t} SELECT g, g % 7, 'bulk ' || g, NULL FROM generate_series({next_id}, {}) g;",
                    next_id + n - 1
                ));
                ids[ti].extend(next_id..next_id + n);
                next_id += n;
            } else if roll < 45 || ids[ti].len() < 3 {
                let v = text(&mut rng);
                let n = if rng.chance(0.3) { "NULL".to_owned() } else { rng.range(0, 1000).to_string() };
                sql.push_str(&format!(
                    "INSERT INTO {t} VALUES ({next_id}, {}, {}, {n});",
                    rng.range(0, 7),
                    sql_literal(&v)
                ));
                ids[ti].push(next_id);
                next_id += 1;
            } else if roll < 80 {
                let id = ids[ti][rng.range(0, ids[ti].len() as u64) as usize];
                let v = text(&mut rng);
                let grp = if rng.chance(0.2) { format!(", grp = {}", rng.range(0, 7)) } else { String::new() };
                sql.push_str(&format!("UPDATE {t} SET v = {}, n = COALESCE(n, 0) + 1{grp} WHERE id = {id};", sql_literal(&v)));
            } else if roll < 95 {
                let index = rng.range(0, ids[ti].len() as u64) as usize;
                let id = ids[ti].swap_remove(index);
                sql.push_str(&format!("DELETE FROM {t} WHERE id = {id};"));
            } else {
                // One statement changing several rows.
                let some: Vec<String> =
                    (0..rng.range(2, 6)).map(|_| ids[ti][rng.range(0, ids[ti].len() as u64) as usize].to_string()).collect();
                sql.push_str(&format!("UPDATE {t} SET n = COALESCE(n, 0) - 1 WHERE id IN ({});", some.join(", ")));
            }
        }
        sql.push_str("COMMIT;");
        match pg.batch_execute(&sql).await {
            Ok(()) => done += 1,
            Err(e) if reconnect => {
                let detail = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned());
                eprintln!("workload: transaction failed ({detail}); reconnecting");
                pg = loop {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if let Ok((client, connection)) = tokio_postgres::connect(&env().database_url, tokio_postgres::NoTls).await {
                        tokio::spawn(connection);
                        break client;
                    }
                };
            }
            Err(e) => panic!("workload transaction failed: {e}\n{sql}"),
        }
        tokio::time::sleep(Duration::from_millis(rng.range(pause_ms.0, pause_ms.1))).await;
    }
    done
}

/// A randomised workload on three tables (one keyed by a group column, two by id) while the child
/// producer is SIGKILLed six times at random moments and restarted: every change arrives, in commit
/// order per partition, duplicates only as byte-identical re-sends, and a final SIGTERM confirms
/// the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_producers_lose_nothing_and_reorder_nothing() {
    pgkafka_tests::init_tracing();
    let started = Instant::now();
    let mut rng = Rng::from_env("crash test");
    let names: Vec<String> = (0..3).map(|i| unique_name(&format!("p_crash{i}"))).collect();
    let tables = names
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let create = format!("CREATE TABLE {t} (id bigint PRIMARY KEY, grp int NOT NULL, v text, n int)");
            if i == 0 {
                Table::new(t, create, &["grp"], 3)
            } else {
                let mut table = Table::new(t, create, &[], 3);
                table.key_columns = vec!["id".into()];
                table
            }
        })
        .collect();
    let mut sc = Scenario::new("p_crash", tables).await;
    let config = ChildConfig::on_test_servers(&sc.slot, &sc.publication, &sc.topic_map, 300, 1000);
    let log = std::env::temp_dir().join(format!("{}.log", unique_name("p_crash_child")));
    println!("child producer logs: {}", log.display());
    let mut child = ChildProducer::spawn(CHILD, &config, &log);
    // The first child creates the slot; the reference slot comes after it, before any change.
    let pg = &sc.pg;
    wait_for("the first child producer to stream", Duration::from_secs(60), || async {
        slot_active_pid(pg, &sc.slot).await.map(|_| ())
    })
    .await;
    sc.ensure_reference().await;

    let stop = Arc::new(AtomicBool::new(false));
    let plan = Workload {
        tables: names.clone(),
        seed: rng.next_u64(),
        min_txs: 400,
        max_txs: 4000,
        reconnect: false,
        pause_ms: (0, 6),
        first_id: 1,
    };
    let writer = tokio::spawn(workload(plan, Arc::clone(&stop)));
    let mut kills = Vec::new();
    for kill in 0..KILLS {
        let delay = Duration::from_millis(rng.range(200, 2500));
        tokio::time::sleep(delay).await;
        if let Some(status) = child.try_status() {
            panic!("child producer exited by itself with {status}; see {}", log.display());
        }
        let streaming = slot_active_pid(&sc.pg, &sc.slot).await.is_some();
        child.kill();
        kills.push(format!("kill {kill} after {delay:?} (streaming: {streaming})"));
        if rng.chance(0.3) {
            tokio::time::sleep(Duration::from_millis(rng.range(0, 1500))).await;
        }
        child = ChildProducer::spawn(CHILD, &config, &log);
    }
    stop.store(true, Ordering::Relaxed);
    let committed = writer.await.expect("workload panicked");
    println!("{committed} transactions; {}", kills.join("; "));

    // The last child delivers the rest, then stops gracefully.
    let txs = sc.expected().await;
    assert_eq!(txs.len(), committed, "the reference slot does not hold every workload transaction");
    let ops = all_ops(&txs);
    let records = wait_delivered(&sc.topics, &ops, Duration::from_secs(180)).await;
    let status = child.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "the last child did not stop gracefully ({status}); see {}", log.display());

    let records_after = pgkafka_tests::topics::read_topics(&sc.topics).await;
    assert!(records_after.len() >= records.len());
    let delivery = verify_delivery(&records_after, &ops, &sc.routes);
    println!(
        "crash test: {} changes in {} transactions, {} records, {} re-sent, {:?} partitions used, {:?}",
        ops.len(),
        txs.len(),
        records_after.len(),
        delivery.duplicates,
        delivery.partitions_used,
        started.elapsed()
    );
    let confirmed = slot_confirmed(&sc.pg, &sc.slot).await.unwrap();
    assert!(confirmed >= txs.last().unwrap().end_lsn, "the graceful stop did not confirm everything delivered");
    let _ = std::fs::remove_file(&log);
    sc.cleanup().await;
}
