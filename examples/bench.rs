//! The benchmark harness behind `scripts/bench.sh`: pgkafka against the limits of the same
//! machine on the same workload, each measured several times, interleaved, so ratios of medians
//! can be trusted on a noisy machine.
//!
//! Not a guarantee, a measurement. Run it with `scripts/bench.sh` (release build, local
//! services); it writes `docs/benchmarks.json`, which the `bench_report` example turns into
//! `docs/benchmarks.md` and `docs/benchmarks.png`.
//!
//! Every line runs `BENCH_REPEATS` times (default 3) in rounds: a round runs each limit and the
//! pgkafka measurement it is compared with back to back, so a noisy minute hits both. The JSON
//! holds every run, the median, min and max, and each target computed from the medians.
//!
//! 1. Producer: `pg_recvlogical` (PostgreSQL's limit), the pgkafka producer (the `pgkafka`
//!    binary, slot to acknowledged in Kafka) and a raw rdkafka producer sending the same records
//!    with the same delivery settings (Kafka's limit). Target: ≥ 0.9 × min(limits). The producer
//!    also runs in the `debezium` format and with `linger.ms=50` (larger batches), without targets.
//! 2. Peak RSS of the producer through one transaction of all the rows. Target: ≤ 64 MB.
//! 3. Consumer: a raw rdkafka consumer on all partitions that decodes nothing (Kafka's limit),
//!    a single-thread rdkafka consumer decoding each JSON value (the reference), and the basic
//!    consumer with a no-op handler. Target: ≥ 1.0 × the reference.
//! 4. Idempotent consumer inserting one row per op, against a plain sqlx loop doing the same
//!    inserts in transactions of the same size over as many connections as partitions; batched
//!    (target ≥ 0.8 ×) and one op per transaction (target ≥ 0.5 ×). Beside it, without a target:
//!    the same loop plus one state-row `UPDATE` per transaction, what exactly-once costs PostgreSQL.
//! 5. Latency from COMMIT to `handle_message` at 200 and 2,000 transactions/s, p50/p99. Target:
//!    p99 ≤ 50 ms. Beside it: Kafka alone at the same rate (raw producer to raw consumer, the
//!    floor the broker sets; with `BENCH_LATENCY_RAW=1` also a raw consumer on the pipeline's
//!    topic, the producer and broker's share, which loads the broker with a second consumer), and
//!    PostgreSQL alone at the same rate (COMMIT to `pg_recvlogical` with `test_decoding`, the
//!    walsender's share).
//! 6. Initial snapshot of a `BENCH_ROWS`-row table (`pgkafka` with `snapshot = "initial_only"`,
//!    from start to exit, every row acknowledged) against `COPY (SELECT …) TO STDOUT` of the same
//!    table (PostgreSQL's limit) and the raw rdkafka producer of 1. Target: ≥ 0.7 × min(limits),
//!    peak RSS ≤ 64 MB. Also two tables with one and with two reader connections.
//!    `BENCH_SNAPSHOT_ONLY=1` runs only this part (no targets).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgkafka::async_trait::async_trait;
use pgkafka::rdkafka::config::ClientConfig;
use pgkafka::rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use pgkafka::rdkafka::error::{KafkaError, RDKafkaErrorCode};
use pgkafka::rdkafka::message::{Message as _, OwnedHeaders};
use pgkafka::rdkafka::producer::{BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer as _, ProducerContext, ThreadedProducer};
use pgkafka::rdkafka::{ClientContext, Offset, TopicPartitionList};
use pgkafka::sqlx::postgres::PgPoolOptions;
use pgkafka::sqlx::{Postgres, Transaction};
use pgkafka::{BasicApplication, Consumer, ConsumerError, IdempotentApplication, ReplicationOp};
use pgkafka_tests::{create_topic, delete_topic, kafka_brokers_config, pg_client, unique_name};
use serde_json::{json, Value};

#[path = "bench_support/cpu.rs"]
mod cpu;
use cpu::CpuSample;

/// The servers (the integration tests' `PGKAFKA_TEST_*` environment) and the workload's size.
struct Env {
    database_url: String,
    brokers: String,
    pg_bin: String,
    pgkafka_bin: PathBuf,
    repeats: usize,
    rows: u64,
    rows_per_tx: u64,
    partitions: i32,
    idempotent_ops: u64,
    unbatched_ops: u64,
    batch_size: usize,
    latency_rates: Vec<u64>,
    latency_secs: u64,
    /// `BENCH_LATENCY_RAW=1`: a raw rdkafka consumer reads the latency pipeline's topic beside
    /// the basic consumer (the `latency_{tps}_raw_p99` line). Off by default: a second consumer
    /// fetching every 5 ms doubles the broker's fetch load, and on this broker that alone doubles
    /// Kafka's p99 at 2,000 records/s (see `BENCH_KAFKA_EXTRA_CONSUMERS`).
    latency_raw: bool,
    /// `BENCH_SECTIONS`: which of `producer`, `snapshot` (needs `producer`), `consumer`,
    /// `idempotent`, `latency` to measure
    /// (comma-separated; all by default), for quick A/B runs of one hot path.
    sections: Vec<String>,
}

impl Env {
    fn runs(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

fn env() -> Env {
    let servers = pgkafka_tests::env();
    let num = |k: &str, default: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let exe = std::env::current_exe().unwrap();
    // target/release/examples/bench -> target/release/pgkafka
    let pgkafka_bin = exe.parent().and_then(|p| p.parent()).unwrap().join("pgkafka");
    let idempotent_ops = num("BENCH_IDEMPOTENT_OPS", 100_000);
    let latency_rates = std::env::var("BENCH_LATENCY_TPS")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect::<Vec<u64>>())
        .filter(|rates| !rates.is_empty())
        .unwrap_or_else(|| vec![200, 2_000]);
    Env {
        database_url: servers.database_url.clone(),
        brokers: servers.brokers.clone(),
        pg_bin: servers.pg_bin.clone().expect("PGKAFKA_TEST_PG_BIN is not set; run scripts/bench.sh"),
        pgkafka_bin,
        repeats: num("BENCH_REPEATS", 3).max(1) as usize,
        rows: num("BENCH_ROWS", 1_000_000),
        rows_per_tx: num("BENCH_ROWS_PER_TX", 1_000),
        partitions: num("BENCH_PARTITIONS", 3) as i32,
        idempotent_ops,
        unbatched_ops: num("BENCH_UNBATCHED_OPS", idempotent_ops / 5).min(idempotent_ops),
        batch_size: num("BENCH_BATCH_SIZE", 100) as usize,
        latency_rates,
        latency_secs: num("BENCH_LATENCY_SECS", 10),
        latency_raw: std::env::var("BENCH_LATENCY_RAW").is_ok_and(|v| v == "1"),
        sections: std::env::var("BENCH_SECTIONS")
            .unwrap_or_else(|_| "producer,snapshot,consumer,idempotent,latency".into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
    }
}

/// One line of the results: every run's value, in round order.
struct Series {
    key: String,
    label: String,
    unit: &'static str,
    /// `limit` (what the machine can do), `reference` (a second yardstick) or `pgkafka`.
    role: &'static str,
    runs: Vec<f64>,
}

/// The median of the values (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.is_empty() {
        f64::NAN
    } else if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

#[derive(Default)]
struct Results {
    series: Vec<Series>,
    targets: Vec<Value>,
    /// Per run: the cores each process group used during it (see `cpu`).
    cpu: Vec<Value>,
}

impl Results {
    fn add(&mut self, key: &str, label: impl Into<String>, unit: &'static str, role: &'static str, value: f64) {
        eprintln!("bench:   {key} = {value:.1} {unit}");
        match self.series.iter_mut().find(|s| s.key == key) {
            Some(series) => series.runs.push(value),
            None => self.series.push(Series { key: key.to_owned(), label: label.into(), unit, role, runs: vec![value] }),
        }
    }

    /// Records where the CPU went during the last run of `key`, which started at `started`.
    fn cpu(&mut self, key: &str, started: &CpuSample) {
        self.cpu_between(key, started.cores_until(&CpuSample::now()));
    }

    fn cpu_between(&mut self, key: &str, cores: Value) {
        let shown: Vec<String> = cores
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(name, _)| *name != "cores")
            .map(|(name, v)| match v.as_object() {
                Some(threads) => format!(
                    "{name} [{}]",
                    threads.iter().map(|(t, v)| format!("{t} {:.2}", v.as_f64().unwrap_or(f64::NAN))).collect::<Vec<_>>().join(", ")
                ),
                None => format!("{name} {:.2}", v.as_f64().unwrap_or(f64::NAN)),
            })
            .collect();
        eprintln!("bench:     cores used: {}", shown.join(", "));
        let round = self.series.iter().find(|s| s.key == key).map_or(0, |s| s.runs.len().saturating_sub(1));
        self.cpu.push(json!({ "key": key, "round": round, "cores": cores }));
    }

    fn runs(&self, key: &str) -> &[f64] {
        &self.series.iter().find(|s| s.key == key).unwrap_or_else(|| panic!("no series {key}")).runs
    }

    fn median(&self, key: &str) -> f64 {
        median(self.runs(key))
    }

    fn has(&self, keys: &[&str]) -> bool {
        keys.iter().all(|key| self.series.iter().any(|s| s.key == *key))
    }

    /// A ratio target: `numerator` over the smallest of the `limits` medians, with the range of
    /// the per-round ratios (round i's pgkafka run over round i's limits) as its spread.
    fn ratio_target(&mut self, name: &str, numerator: &str, limits: &[&str], goal: Option<f64>) {
        if !self.has(&[numerator]) || !self.has(limits) {
            return;
        }
        let value = self.median(numerator) / limits.iter().map(|l| self.median(l)).fold(f64::INFINITY, f64::min);
        let per_round: Vec<f64> = (0..self.runs(numerator).len())
            .map(|i| self.runs(numerator)[i] / limits.iter().map(|l| self.runs(l)[i]).fold(f64::INFINITY, f64::min))
            .collect();
        let (lo, hi) = min_max(&per_round);
        self.targets.push(json!({
            "name": name, "kind": "ratio", "value": value, "round_min": lo, "round_max": hi,
            "goal": goal.map(|g| format!(">= {g:.1}")), "met": goal.map(|g| value >= g),
        }));
    }

    /// An upper bound on a measurement's `statistic` (`median` or `max` of its runs).
    fn at_most_target(&mut self, name: &str, key: &str, statistic: &str, bound: f64, unit: &str, goal: &str) {
        if !self.has(&[key]) {
            return;
        }
        let runs = self.runs(key);
        let (lo, hi) = min_max(runs);
        let value = if statistic == "max" { hi } else { median(runs) };
        self.targets.push(json!({
            "name": name, "kind": "at_most", "value": value, "round_min": lo, "round_max": hi, "unit": unit,
            "goal": format!("<= {goal} ({statistic})"), "met": value <= bound,
        }));
    }

    fn to_json(&self) -> Value {
        let series: Vec<Value> = self
            .series
            .iter()
            .map(|s| {
                let (lo, hi) = min_max(&s.runs);
                json!({ "key": s.key, "label": s.label, "unit": s.unit, "role": s.role, "runs": s.runs,
                        "median": median(&s.runs), "min": lo, "max": hi })
            })
            .collect();
        json!({ "measurements": series, "targets": self.targets, "cpu": self.cpu })
    }
}

/// A table of the benchmark's shape: five columns, REPLICA IDENTITY FULL, in its own publication.
async fn setup_table(client: &tokio_postgres::Client, table: &str, publication: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, organization_id int NOT NULL, name text NOT NULL, \
             quantity int NOT NULL, price numeric(12,2) NOT NULL);
             ALTER TABLE {table} REPLICA IDENTITY FULL;
             CREATE PUBLICATION {publication} FOR TABLE {table};"
        ))
        .await
        .unwrap();
}

async fn create_slots(client: &tokio_postgres::Client, slots: &[String]) {
    for slot in slots {
        client.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[slot]).await.unwrap();
    }
}

/// The run's replication slots, dropped with `psql` when the run ends, also when a measurement
/// panics, so no slot is left retaining WAL on the server.
struct Slots {
    names: Vec<String>,
    psql: String,
    database_url: String,
}

impl Drop for Slots {
    fn drop(&mut self) {
        for slot in &self.names {
            let psql = std::process::Command::new(&self.psql)
                .args(["-q", "-d", &self.database_url, "-v"])
                .arg(format!("slot={slot}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn();
            if let Ok(mut psql) = psql {
                if let Some(mut stdin) = psql.stdin.take() {
                    let _ = stdin.write_all(b"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = :'slot';\n");
                }
                let _ = psql.wait();
            }
        }
    }
}

async fn write_rows(client: &tokio_postgres::Client, table: &str, rows: u64, per_tx: u64) -> String {
    let mut start = 0;
    while start < rows {
        let end = (start + per_tx).min(rows);
        client
            .batch_execute(&format!(
                "INSERT INTO {table} SELECT g, g % 97, 'item ' || g, g % 1000, (g % 10000) / 100.0 \
                 FROM generate_series({start}, {}) g",
                end - 1
            ))
            .await
            .unwrap();
        start = end;
    }
    client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0)
}

/// PostgreSQL's limit: `pg_recvlogical` streaming the slot to /dev/null up to `end_lsn`, rows/s.
fn pg_recvlogical(env: &Env, slot: &str, publication: &str, end_lsn: &str, rows: u64) -> f64 {
    let started = Instant::now();
    let status = std::process::Command::new(format!("{}/pg_recvlogical", env.pg_bin))
        .args(["-d", &env.database_url, "--slot", slot, "--start", "--endpos", end_lsn, "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", &format!("publication_names={publication}")])
        .status()
        .unwrap();
    assert!(status.success(), "pg_recvlogical failed");
    rows as f64 / started.elapsed().as_secs_f64()
}

fn write_producer_config(env: &Env, dir: &Path, slot: &str, publication: &str, table: &str, topic: &str, debezium: bool) -> PathBuf {
    let path = dir.join(format!("{slot}.json"));
    let mut config = json!({
        "connection_string": env.database_url,
        "brokers": env.brokers,
        "slot": slot,
        "publication": publication,
        "topics": { table: { "name": topic, "partition_key": ["organization_id"] } },
        "status_interval_ms": 50,
    });
    if let Some(window) = std::env::var("BENCH_MAX_IN_FLIGHT").ok().and_then(|v| v.parse::<u64>().ok()) {
        config["max_in_flight"] = json!(window);
    }
    if let Some(kafka) = producer_kafka_overrides() {
        config["kafka"] = kafka;
    }
    if debezium {
        // Debezium's defaults: Kafka Connect schemas in every record, tombstones.
        config["format"] = json!("debezium");
        config["debezium"] = json!({ "name": table });
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    path
}

/// `BENCH_PRODUCER_KAFKA` (`key=value,key=value`): librdkafka settings for every producer under
/// test, streaming and snapshot runs alike.
fn producer_kafka_overrides() -> Option<Value> {
    let settings = std::env::var("BENCH_PRODUCER_KAFKA").ok()?;
    Some(Value::Object(
        settings.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.trim().to_owned(), json!(v.trim()))).collect(),
    ))
}

/// Adds librdkafka `settings` to the producer config file at `path`.
fn with_kafka_settings(path: PathBuf, settings: &[(&str, &str)]) -> PathBuf {
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for (key, value) in settings {
        config["kafka"][*key] = json!(value);
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    path
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// Starts the `pgkafka` binary with the config file `config`, logging warnings to stderr.
fn spawn_pgkafka(env: &Env, config: &Path) -> tokio::process::Child {
    tokio::process::Command::new(&env.pgkafka_bin)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // A failed measurement must not leave a producer streaming from the shared server.
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", env.pgkafka_bin.display()))
}

/// Runs the `pgkafka` binary until the slot's confirmed position reaches `end_lsn` (which only
/// happens once Kafka acknowledged every record before it); returns (seconds from start, peak
/// RSS in MiB, the cores each process group used). The producer reports its position every 50 ms here. With `BENCH_PERF_DIR` set,
/// the run is recorded by `perf record -g` into that folder.
async fn run_producer_binary(env: &Env, config: &Path, slot: &str, end_lsn: &str) -> (f64, f64, Value) {
    let client = pg_client().await;
    let cpu = CpuSample::now();
    let mut child = spawn_pgkafka(env, config);
    let pid = child.id().unwrap();
    let perf = perf_record(pid, slot);
    let started = Instant::now();
    let mut peak = 0;
    loop {
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        let done: bool = client
            .query_one(
                "SELECT COALESCE(confirmed_flush_lsn >= $2::text::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &end_lsn],
            )
            .await
            .unwrap()
            .get(0);
        if done {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(900), "the producer did not confirm {end_lsn} in 15 min");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Before the producer stops: its time is its own only while it runs.
    let mut cores = cpu.cores_until(&CpuSample::now());
    cores["pgkafka_threads"] = cpu::threads(pid, elapsed);
    peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
    stop_perf(perf);
    // SIGTERM: graceful shutdown confirms what was delivered.
    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    (elapsed, peak as f64 / 1024.0, cores)
}

/// PostgreSQL's limit for a snapshot: `COPY (SELECT * FROM table) TO STDOUT` through `psql`
/// into /dev/null, rows/s.
fn copy_out(env: &Env, tables: &[&str], rows: u64) -> f64 {
    let started = Instant::now();
    for table in tables {
        let status = std::process::Command::new(format!("{}/psql", env.pg_bin))
            .args(["-q", "-d", &env.database_url, "-c", &format!("COPY (SELECT * FROM {table}) TO STDOUT")])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "psql COPY failed");
    }
    rows as f64 / started.elapsed().as_secs_f64()
}

/// Runs the `pgkafka` binary with `snapshot = "initial_only"` on a new slot until it exits (it
/// exits once Kafka acknowledged every snapshot row and the slot is dropped); returns (seconds,
/// peak RSS in MiB).
async fn run_snapshot_binary(env: &Env, dir: &Path, publication: &str, tables: &[(&str, &str)], readers: usize) -> (f64, f64) {
    let slot = unique_name("bench_snap_slot");
    let topics: serde_json::Map<String, Value> =
        tables.iter().map(|(table, topic)| ((*table).to_owned(), json!({ "name": topic, "partition_key": ["organization_id"] }))).collect();
    let config = dir.join(format!("{slot}.json"));
    let mut body = json!({
        "connection_string": env.database_url,
        "brokers": env.brokers,
        "slot": slot,
        "publication": publication,
        "topics": topics,
        "snapshot": "initial_only",
        "snapshot_readers": readers,
    });
    if let Some(kafka) = producer_kafka_overrides() {
        body["kafka"] = kafka;
    }
    std::fs::write(&config, serde_json::to_vec_pretty(&body).unwrap()).unwrap();
    let mut child = spawn_pgkafka(env, &config);
    let pid = child.id().unwrap();
    let perf = perf_record(pid, &slot);
    let started = Instant::now();
    let mut peak = 0;
    let status = loop {
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        if let Ok(status) = tokio::time::timeout(Duration::from_millis(10), child.wait()).await {
            break status.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(900), "the snapshot did not finish in 15 min");
    };
    let elapsed = started.elapsed().as_secs_f64();
    stop_perf(perf);
    assert!(status.success(), "the snapshot producer failed: {status}");
    (elapsed, peak as f64 / 1024.0)
}

/// Part 6: the initial snapshot of `table` (and of `table` and `other` together with one and
/// two readers), against COPY.
async fn snapshot_section(env: &Env, client: &tokio_postgres::Client, dir: &Path, results: &mut Results, table: &str, other: &str) {
    let one_pub = format!("{table}_snap_pub");
    let two_pub = format!("{table}_snap2_pub");
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {one_pub} FOR TABLE {table}; CREATE PUBLICATION {two_pub} FOR TABLE {table}, {other};"
        ))
        .await
        .unwrap();
    for round in 0..env.repeats {
        eprintln!("bench: snapshot round {}/{}", round + 1, env.repeats);
        let cpu = CpuSample::now();
        let rate = copy_out(env, &[table], env.rows);
        results.add("copy_out", "PostgreSQL limit: COPY (SELECT * FROM table) TO STDOUT", "rows/s", "limit", rate);
        results.cpu("copy_out", &cpu);
        let topic = format!("{table}_snap{round}");
        create_topic(&topic, env.partitions).await;
        let cpu = CpuSample::now();
        let (secs, rss) = run_snapshot_binary(env, dir, &one_pub, &[(table, &topic)], 1).await;
        results.add("pgkafka_snapshot", format!("pgkafka initial snapshot of {} rows", env.rows), "rows/s", "pgkafka", env.rows as f64 / secs);
        results.cpu("pgkafka_snapshot", &cpu);
        results.add("snapshot_peak_rss", "pgkafka producer peak RSS during the snapshot", "MiB", "pgkafka", rss);
        delete_topic(&topic).await;
        for readers in [1, 2] {
            let (topic_a, topic_b) = (format!("{table}_snap2a{round}_{readers}"), format!("{table}_snap2b{round}_{readers}"));
            create_topic(&topic_a, env.partitions).await;
            create_topic(&topic_b, env.partitions).await;
            let (secs, _) = run_snapshot_binary(env, dir, &two_pub, &[(table, &topic_a), (other, &topic_b)], readers).await;
            results.add(
                &format!("pgkafka_snapshot_two_tables_{readers}_readers"),
                format!("pgkafka initial snapshot of two tables of {} rows, {readers} reader(s)", env.rows),
                "rows/s",
                "pgkafka",
                2.0 * env.rows as f64 / secs,
            );
            delete_topic(&topic_a).await;
            delete_topic(&topic_b).await;
        }
    }
}

/// `perf record -g` attached to `pid` when `BENCH_PERF_DIR` names a folder; the profile of a
/// measurement whose target is missed is where its bound shows.
fn perf_record(pid: u32, name: &str) -> Option<std::process::Child> {
    let dir = std::env::var("BENCH_PERF_DIR").ok()?;
    std::process::Command::new("perf")
        .args(["record", "-g", "-q", "-o"])
        .arg(Path::new(&dir).join(format!("{name}.perf.data")))
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn stop_perf(perf: Option<std::process::Child>) {
    if let Some(mut perf) = perf {
        let _ = std::process::Command::new("kill").arg("-INT").arg(perf.id().to_string()).status();
        let _ = perf.wait();
    }
}

/// Counts delivery reports of the raw producer.
#[derive(Default)]
struct Acks {
    acked: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() { &self.acked } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A plain rdkafka producer with the settings pgkafka pins and its default `linger.ms`, counting
/// delivery reports: the raw clients' side of the Kafka limits.
fn raw_rdkafka_producer() -> ThreadedProducer<Acks> {
    kafka_brokers_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("enable.gapless.guarantee", "true")
        .set("message.timeout.ms", "0")
        .set("partitioner", "consistent_random")
        .set("linger.ms", "5")
        // Quiet: librdkafka warns that enable.gapless.guarantee is experimental.
        .set("log_level", "3")
        .create_with_context(Acks::default())
        .unwrap()
}

/// Kafka's producer limit: `rows` records cycling through `sample` (the pgkafka producer's own
/// keys and values, with its origin `headers` on each, as pgkafka sends them), with the settings
/// pgkafka pins, as fast as librdkafka takes them; msgs/s from the first send to the last
/// acknowledgement.
fn raw_producer(topic: &str, sample: &[(Vec<u8>, Vec<u8>)], headers: &OwnedHeaders, rows: u64) -> f64 {
    let producer = raw_rdkafka_producer();
    let started = Instant::now();
    for i in 0..rows as usize {
        let (key, value) = &sample[i % sample.len()];
        let mut record = BaseRecord::to(topic).key(key).payload(value).headers(headers.clone());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err((e, _)) => panic!("raw producer: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(600)).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(producer.context().failed.load(Ordering::Relaxed), 0, "the raw producer lost records");
    assert_eq!(producer.context().acked.load(Ordering::Relaxed), rows);
    rows as f64 / elapsed
}

/// Records' (key, value) pairs, as the raw clients replay them.
type Sample = Vec<(Vec<u8>, Vec<u8>)>;

/// The first 1,000 records of partition 0 of `topic`: (key, value), and the origin headers they carry.
fn read_sample(topic: &str) -> (Sample, OwnedHeaders) {
    let reader: BaseConsumer = kafka_brokers_config().set("group.id", unique_name("bench_sample")).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    reader.assign(&tpl).unwrap();
    let (mut sample, mut headers) = (Vec::new(), OwnedHeaders::new());
    while sample.len() < 1000 {
        if let Some(Ok(m)) = reader.poll(Duration::from_secs(5)) {
            if sample.is_empty() {
                // The origin headers are the same on every record of one producer.
                headers = m.headers().map(|h| h.detach()).unwrap_or_default();
            }
            sample.push((m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec()));
        }
    }
    (sample, headers)
}

fn consumer_config(group: &str) -> ClientConfig {
    let mut config = kafka_brokers_config();
    config
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    config
}

/// Kafka's consumer limit: one rdkafka consumer assigned every partition from the start, reading
/// `rows` values without decoding them; msgs/s from the first message to the last.
fn raw_consumer_no_decode(topic: &str, partitions: i32, rows: u64) -> f64 {
    let consumer: BaseConsumer = consumer_config(&unique_name("bench_nodecode")).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for partition in 0..partitions {
        tpl.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (mut count, mut bytes, mut first) = (0u64, 0usize, None);
    let mut last = Instant::now();
    while count < rows {
        if let Some(m) = consumer.poll(Duration::from_secs(5)) {
            bytes += m.unwrap().payload().map_or(0, <[u8]>::len);
            first.get_or_insert_with(Instant::now);
            count += 1;
            last = Instant::now();
        }
    }
    assert!(bytes > 0);
    count as f64 / (last - first.unwrap()).as_secs_f64()
}

/// The reference the basic consumer is held to: a single-thread subscribed rdkafka consumer
/// that decodes every value into a `ReplicationOp`; msgs/s from the first message to the last.
async fn raw_consumer_json(topic: &str, rows: u64) -> f64 {
    let consumer: StreamConsumer = consumer_config(&unique_name("bench_json")).create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let (mut count, mut first) = (0u64, None);
    let mut last = Instant::now();
    while count < rows {
        let m = consumer.recv().await.unwrap();
        let _op: ReplicationOp = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
        first.get_or_insert_with(Instant::now);
        count += 1;
        last = Instant::now();
    }
    count as f64 / (last - first.unwrap()).as_secs_f64()
}

/// What a handler saw: how many ops, when the first and last came, and (for latency runs) how
/// long after their COMMIT.
struct Counting {
    base: Instant,
    seen: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    latencies_us: Mutex<Vec<i64>>,
    measure_latency: bool,
}

impl Counting {
    fn new(measure_latency: bool) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            seen: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            latencies_us: Mutex::new(Vec::new()),
            measure_latency,
        })
    }

    fn record(&self, op: &ReplicationOp) {
        self.count();
        if self.measure_latency {
            // The row carries its commit time's clock (clock_timestamp() in the inserting
            // statement, a few microseconds before COMMIT).
            if let Some(Some(micros)) = op.value(op.op.key_row(), "created_us") {
                self.latency_since(micros.parse().unwrap_or(0));
            }
        }
    }

    /// Counts a row that is not a `ReplicationOp` (a line of `pg_recvlogical`), recording the time
    /// from `created_us`, its commit time's clock, to now.
    fn record_created_us(&self, created_us: i64) {
        self.count();
        self.latency_since(created_us);
    }

    /// One more op seen, now.
    fn count(&self) {
        let now = self.base.elapsed().as_nanos() as u64;
        self.first_ns.fetch_min(now, Ordering::Relaxed);
        self.last_ns.fetch_max(now, Ordering::Relaxed);
        self.seen.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the time from `created_us` (µs since the Unix epoch) to now.
    fn latency_since(&self, created_us: i64) {
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
        self.latencies_us.lock().unwrap().push(now_us - created_us);
    }

    fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    fn rate(&self) -> f64 {
        let span_ns = self.last_ns.load(Ordering::Relaxed).saturating_sub(self.first_ns.load(Ordering::Relaxed));
        self.seen() as f64 / (span_ns as f64 / 1e9).max(1e-9)
    }
}

struct NoopApp(Arc<Counting>);

#[async_trait]
impl BasicApplication for NoopApp {
    async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
        self.0.record(op);
        Ok(())
    }
}

/// The statement both the idempotent consumer's handler and the plain loop run per op.
fn sink_insert(sink: &str) -> String {
    format!("INSERT INTO {sink} (lsn, seq_id) VALUES ($1, $2)")
}

async fn create_sink(client: &tokio_postgres::Client) -> String {
    let sink = unique_name("bench_sink");
    client.batch_execute(&format!("CREATE TABLE {sink} (lsn bigint, seq_id bigint)")).await.unwrap();
    sink
}

/// The position the feeder gives op number `i`: 1,000 ops per LSN.
fn op_position(i: u64) -> (i64, i64) {
    ((1 + i / 1000) as i64, (i % 1000) as i64)
}

struct InsertApp {
    insert: String,
    counting: Arc<Counting>,
}

#[async_trait]
impl IdempotentApplication for InsertApp {
    async fn handle_message(&self, tx: &mut Transaction<'_, Postgres>, op: &ReplicationOp) -> Result<(), ConsumerError> {
        pgkafka::sqlx::query(&self.insert).bind(op.lsn as i64).bind(op.seq_id as i64).execute(&mut **tx).await?;
        self.counting.record(op);
        Ok(())
    }
}

/// The idempotent consumer's baseline: the same `ops` inserts by a plain sqlx loop, in
/// transactions of `per_tx`, one worker and connection per partition (as many as the consumer
/// keeps busy); ops/s over the whole run. With `state_row`, each transaction also updates its
/// worker's row of a state table first, as the consumer stores its position: what exactly-once
/// costs PostgreSQL, without the consumer.
async fn plain_loop(env: &Env, client: &tokio_postgres::Client, ops: u64, per_tx: usize, state_row: bool) -> f64 {
    let sink = create_sink(client).await;
    let update = match state_row {
        false => None,
        true => {
            let state = format!("{sink}_state");
            client
                .batch_execute(&format!(
                    "CREATE TABLE {state} (worker bigint PRIMARY KEY, lsn bigint, seq_id bigint, updated_at timestamptz); \
                     INSERT INTO {state} (worker) SELECT generate_series(0, {})",
                    env.partitions.max(1) - 1
                ))
                .await
                .unwrap();
            Some(Arc::new(format!(
                "UPDATE {state} SET lsn = $2, seq_id = $3, updated_at = now() WHERE worker = $1 AND (lsn IS NULL OR lsn <= $2)"
            )))
        }
    };
    let workers = env.partitions.max(1) as u64;
    let pool = PgPoolOptions::new().max_connections(workers as u32).min_connections(workers as u32).connect(&env.database_url).await.unwrap();
    let insert = Arc::new(sink_insert(&sink));
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (pool, insert, update) = (pool.clone(), Arc::clone(&insert), update.clone());
            tokio::spawn(async move {
                let mine: Vec<u64> = (w..ops).step_by(workers as usize).collect();
                for chunk in mine.chunks(per_tx) {
                    let mut tx = pool.begin().await.unwrap();
                    if let Some(update) = &update {
                        let (lsn, seq_id) = op_position(chunk.last().copied().unwrap_or_default());
                        let query = pgkafka::sqlx::query(update).bind(w as i64).bind(lsn).bind(seq_id);
                        assert_eq!(query.execute(&mut *tx).await.unwrap().rows_affected(), 1);
                    }
                    for &i in chunk {
                        let (lsn, seq_id) = op_position(i);
                        pgkafka::sqlx::query(&insert).bind(lsn).bind(seq_id).execute(&mut *tx).await.unwrap();
                    }
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let rate = ops as f64 / started.elapsed().as_secs_f64();
    pool.close().await;
    rate
}

/// With `BENCH_TIMELINE` set: prints the consumer's rate every 100 ms until it handled `expected`
/// ops (in thousands of ops per second), which shows stalls a median hides.
async fn print_timeline(counting: &Counting, expected: u64) {
    let mut line = String::new();
    let mut last = counting.seen();
    while counting.seen() < expected {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = counting.seen();
        line.push_str(&format!("{} ", (now - last) / 100));
        last = now;
    }
    eprintln!("bench:     timeline, thousands of ops/s per 100 ms: {line}");
}

/// Waits until `counting` saw `expected` ops; returns the cores used from its first op on, the
/// window its rate covers. Joining the group before the first op and shutting down after the
/// last are left out: in a run of a few seconds they would halve the cores shown.
async fn wait_count_cpu(counting: &Counting, expected: u64, limit: Duration) -> Value {
    wait_count(counting, 1, limit).await;
    let started = CpuSample::now();
    if std::env::var("BENCH_TIMELINE").is_ok() {
        print_timeline(counting, expected).await;
    }
    wait_count(counting, expected, limit).await;
    started.cores_until(&CpuSample::now())
}

async fn wait_count(counting: &Counting, expected: u64, limit: Duration) {
    let started = Instant::now();
    while counting.seen() < expected {
        assert!(started.elapsed() < limit, "only {} of {expected} ops arrived", counting.seen());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The group settings every measured consumer gets, then `BENCH_CONSUMER_KAFKA` (`key=value,key=value`):
/// librdkafka settings for the pgkafka consumers, to try one without rebuilding.
fn consumer_options<A>(consumer: Consumer<A>) -> Consumer<A> {
    let consumer = consumer
        .kafka_option("session.timeout.ms", "6000")
        .kafka_option("heartbeat.interval.ms", "500")
        .kafka_option("auto.offset.reset", "earliest");
    let settings = std::env::var("BENCH_CONSUMER_KAFKA").unwrap_or_default();
    settings.split(',').filter_map(|kv| kv.split_once('=')).fold(consumer, |c, (k, v)| c.kafka_option(k.trim(), v.trim()))
}

/// The basic consumer on `topic` until it handled `rows` ops: ops/s from the first handler call
/// to the last, and the cores used over that window.
async fn basic_consumer(env: &Env, topic: &str, rows: u64) -> (f64, Value) {
    let counting = Counting::new(false);
    let consumer = consumer_options(Consumer::new(unique_name("bench_basic"), vec![topic.to_owned()], env.brokers.clone(), NoopApp(Arc::clone(&counting))));
    let stop = consumer.shutdown_handle();
    let task = tokio::spawn(consumer.start_basic());
    let cores = wait_count_cpu(&counting, rows, Duration::from_secs(900)).await;
    stop.shutdown();
    let _ = task.await;
    (counting.rate(), cores)
}

/// The idempotent consumer on `topic` until it applied `ops`, `batch_size` ops per transaction
/// at most; ops/s from the first handler call to the last, and the cores used over that window.
async fn idempotent_consumer(env: &Env, client: &tokio_postgres::Client, topic: &str, ops: u64, batch_size: usize) -> (f64, Value) {
    let sink = create_sink(client).await;
    let counting = Counting::new(false);
    let app = InsertApp { insert: sink_insert(&sink), counting: Arc::clone(&counting) };
    let consumer = consumer_options(Consumer::new(unique_name("bench_idem"), vec![topic.to_owned()], env.brokers.clone(), app))
        .state_table(format!("{sink}_state"))
        .batch_size(batch_size);
    let url = env.database_url.clone();
    let stop = consumer.shutdown_handle();
    let task = tokio::spawn(async move { consumer.start_idempotent(&url).await });
    let cores = wait_count_cpu(&counting, ops, Duration::from_secs(900)).await;
    stop.shutdown();
    let _ = task.await;
    (counting.rate(), cores)
}

/// Writes `ops` ops to a new topic: the sample's values with positions 1,000 ops per LSN, op `i`
/// to partition `i % partitions`, as the plain loop's workers split them. (By key they would all
/// go to one partition: the sample is read from partition 0, and the consumer would then work on
/// one connection against the loop's three.)
async fn feed_ops(env: &Env, sample: &[(Vec<u8>, Vec<u8>)], ops: u64) -> String {
    let topic = unique_name("bench_ops");
    create_topic(&topic, env.partitions).await;
    let feeder: FutureProducer = kafka_brokers_config().set("linger.ms", "5").create().unwrap();
    for i in 0..ops {
        let (key, value) = &sample[(i as usize) % sample.len()];
        let mut op: ReplicationOp = serde_json::from_slice(value).unwrap();
        let (lsn, seq_id) = op_position(i);
        (op.lsn, op.seq_id) = (lsn as u64, seq_id as u64);
        let value = serde_json::to_vec(&op).unwrap();
        loop {
            match feeder.send_result(FutureRecord::to(&topic).partition((i % env.partitions.max(1) as u64) as i32).key(key).payload(&value)) {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
    feeder.flush(Duration::from_secs(60)).unwrap();
    topic
}

/// The `p` quantile (0.0–1.0) of latencies sorted ascending, in µs, as ms; NaN when there are none.
fn percentile_ms(sorted_us: &[i64], p: f64) -> f64 {
    match sorted_us.len() {
        0 => f64::NAN,
        n => sorted_us[((n as f64 - 1.0) * p).round() as usize] as f64 / 1000.0,
    }
}

/// One row of the latency workload, `id` in organization `id % 7`.
async fn insert_latency_row(client: &tokio_postgres::Client, insert: &tokio_postgres::Statement, id: i64) {
    client.execute(insert, &[&id, &((id % 7) as i32)]).await.unwrap();
}

/// The latency workload: `tps` single-row transactions a second for `secs`, each `insert` (with
/// `$1` the id, `$2` the organization) pipelined on the one connection so the writer keeps the
/// pace whatever a COMMIT takes; ids continue from `next_id`. Returns the rate achieved, tx/s.
async fn insert_at_rate(client: &Arc<tokio_postgres::Client>, insert: &tokio_postgres::Statement, next_id: &mut i64, tps: u64, secs: u64) -> f64 {
    let total = tps * secs;
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / tps.max(1)));
    let started = Instant::now();
    let mut writes = Vec::with_capacity(total as usize);
    for _ in 0..total {
        ticker.tick().await;
        *next_id += 1;
        let (client, insert, id) = (Arc::clone(client), insert.clone(), *next_id);
        writes.push(tokio::spawn(async move { insert_latency_row(&client, &insert, id).await }));
    }
    for write in writes {
        write.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// The table both latency workloads write: `created_us` is the inserting statement's
/// clock_timestamp(), a few microseconds before its COMMIT.
fn create_latency_table(table: &str) -> String {
    format!("CREATE TABLE {table} (id bigint PRIMARY KEY, organization_id int NOT NULL, created_us bigint NOT NULL); ALTER TABLE {table} REPLICA IDENTITY FULL;")
}

/// The latency workload's one statement, stamping the row with its commit time's clock.
fn latency_insert(table: &str) -> String {
    format!("INSERT INTO {table} VALUES ($1, $2, (extract(epoch from clock_timestamp()) * 1000000)::bigint)")
}

/// A child process killed and reaped when dropped, so a measurement that panics leaves no
/// `pg_recvlogical` holding its slot.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// PostgreSQL's own latency at `tps` single-row transactions a second for `secs`: the latency
/// workload on a table of its own, streamed from `slot` (made here with `test_decoding`) by
/// `pg_recvlogical` to a pipe; returns (p50, p99) in ms of COMMIT → the change's line read. No
/// pgkafka, no Kafka: the floor the walsender sets for COMMIT → handler.
async fn pg_latency(env: &Env, slot: &str, tps: u64, secs: u64) -> (f64, f64) {
    let client = Arc::new(pg_client().await);
    let table = unique_name("bench_pg_lat");
    client.batch_execute(&create_latency_table(&table)).await.unwrap();
    client.execute("SELECT pg_create_logical_replication_slot($1, 'test_decoding')", &[&slot]).await.unwrap();
    // pg_recvlogical write(2)s each change and its newline straight to the file descriptor (no
    // stdio buffer), so a line is in the pipe as soon as the walsender's message is read. Status
    // packets only confirm positions to the server; 1 s is the shortest interval it takes.
    let mut recvlogical = KillOnDrop(
        std::process::Command::new(format!("{}/pg_recvlogical", env.pg_bin))
            .args(["-d", &env.database_url, "--slot", slot, "--start", "-f", "-", "--status-interval", "1"])
            .args(["-o", "include-xids=0", "-o", "skip-empty-xacts=1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let counting = Counting::new(true);
    let reader = {
        let (stdout, counting) = (recvlogical.0.stdout.take().unwrap(), Arc::clone(&counting));
        // test_decoding has no table filter: the slot streams every table of the database.
        let insert_line = format!("table public.{table}: INSERT: ");
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let created_us = line
                    .strip_prefix(&insert_line)
                    .and_then(|columns| columns.split_once("created_us[bigint]:"))
                    .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok());
                if let Some(created_us) = created_us {
                    counting.record_created_us(created_us);
                }
            }
        })
    };
    let insert = client.prepare(&latency_insert(&table)).await.unwrap();
    let mut next_id = 0;
    // Measure from the first change streamed on: connecting and starting the slot are not latency.
    while counting.seen() == 0 {
        assert!(recvlogical.0.try_wait().unwrap().is_none(), "pg_recvlogical exited");
        next_id += 1;
        insert_latency_row(&client, &insert, next_id).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.latencies_us.lock().unwrap().clear();
    let before = counting.seen();
    insert_at_rate(&client, &insert, &mut next_id, tps, secs).await;
    wait_count(&counting, before + tps * secs, Duration::from_secs(120)).await;
    drop(recvlogical);
    reader.join().unwrap();
    // The slot stays active until its walsender notices the client is gone.
    let inactive = Instant::now();
    while client.query_one("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap().get::<_, bool>(0) {
        assert!(inactive.elapsed() < Duration::from_secs(30), "slot {slot} still active after pg_recvlogical exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.unwrap();
    client.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();
    let mut latencies = counting.latencies_us.lock().unwrap().clone();
    latencies.sort_unstable();
    (percentile_ms(&latencies, 0.50), percentile_ms(&latencies, 0.99))
}

/// A running producer and basic consumer on a small table, for COMMIT → handler latency; with
/// `BENCH_LATENCY_RAW=1` a raw rdkafka consumer assigned the same partitions beside it:
/// COMMIT → raw consumer is what the producer and the broker take, the rest is the basic
/// consumer's.
struct LatencyPipeline {
    client: Arc<tokio_postgres::Client>,
    insert: tokio_postgres::Statement,
    counting: Arc<Counting>,
    raw: Arc<Counting>,
    next_id: i64,
    topic: String,
}

/// Kafka's own latency at `tps` records a second for `secs`: a raw producer with pgkafka's pinned
/// settings sends single records stamped with the send time, a raw consumer assigned every
/// partition reads them; returns the p99 of send → receipt in ms. No PostgreSQL, no pgkafka: the
/// floor the broker and librdkafka set for COMMIT → handler.
fn kafka_latency_p99(topic: &str, partitions: i32, tps: u64, secs: u64) -> f64 {
    let producer = raw_rdkafka_producer();
    let consumer: BaseConsumer = consumer_config(&unique_name("bench_kafka_lat")).set("fetch.wait.max.ms", "5").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for partition in 0..partitions {
        tpl.add_partition_offset(topic, partition, Offset::End).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    // `BENCH_KAFKA_EXTRA_CONSUMERS=n`: n more consumers fetch the topic meanwhile, to measure
    // what each fetching consumer costs the broker's latency.
    let extra: usize = std::env::var("BENCH_KAFKA_EXTRA_CONSUMERS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let extra_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let extras: Vec<_> = (0..extra)
        .map(|_| {
            let extra: BaseConsumer = consumer_config(&unique_name("bench_kafka_lat_x")).set("fetch.wait.max.ms", "5").create().unwrap();
            extra.assign(&tpl).unwrap();
            let stop = Arc::clone(&extra_stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = extra.poll(Duration::from_millis(100));
                }
            })
        })
        .collect();
    let now_us = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
    let total = tps * secs;
    let reader = std::thread::spawn(move || {
        let mut latencies = Vec::with_capacity(total as usize);
        let deadline = Instant::now() + Duration::from_secs(secs + 60);
        while (latencies.len() as u64) < total && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                if let Some(sent) = m.payload().and_then(|p| p.try_into().ok()).map(i64::from_le_bytes) {
                    latencies.push(now_us() - sent);
                }
            }
        }
        latencies
    });
    // Let the consumer's assignment settle at the end of the log before the first record.
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    for i in 0..total {
        let due = started + Duration::from_nanos(i * 1_000_000_000 / tps.max(1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (key, payload) = ((i % 7).to_le_bytes(), now_us().to_le_bytes());
        producer.send(BaseRecord::to(topic).key(&key).payload(&payload)).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let mut latencies = reader.join().unwrap();
    extra_stop.store(true, Ordering::Relaxed);
    for extra in extras {
        let _ = extra.join();
    }
    latencies.sort_unstable();
    percentile_ms(&latencies, 0.99)
}

/// Reads every partition of `topic` from its end with a plain rdkafka consumer (no group, no
/// pgkafka) until `stop`, recording each op's COMMIT → receipt time in `counting`.
fn raw_latency_watcher(topic: &str, partitions: i32, counting: Arc<Counting>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let consumer: BaseConsumer = consumer_config(&unique_name("bench_lat_raw")).set("fetch.wait.max.ms", "5").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for partition in 0..partitions {
        tpl.add_partition_offset(topic, partition, Offset::End).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if let Ok(op) = serde_json::from_slice::<ReplicationOp>(m.payload().unwrap_or_default()) {
                counting.record(&op);
            }
        }
    }
}

impl LatencyPipeline {
    async fn start(env: &Env, slot: &str) -> (Self, Vec<Box<dyn FnOnce() + Send>>, Vec<tokio::task::JoinHandle<()>>) {
        let client = Arc::new(pg_client().await);
        let lat = unique_name("bench_lat");
        let (lat_pub, lat_topic) = (format!("{lat}_pub"), format!("{lat}_topic"));
        client
            .batch_execute(&format!("{} CREATE PUBLICATION {lat_pub} FOR TABLE {lat};", create_latency_table(&lat)))
            .await
            .unwrap();
        create_topic(&lat_topic, env.partitions).await;
        let topic = lat_topic.clone();
        let mut topic_map = HashMap::new();
        topic_map.insert(lat.clone(), pgkafka::TopicInfo::new(&lat_topic, ["organization_id"]));
        // The producer's defaults (linger.ms=5): with linger.ms=0 librdkafka's broker thread
        // wakes for every record and, at 2,000 tx/s on 2 shared cores, its CPU is what the p99 waits on.
        let producer = pgkafka::Producer::builder(env.database_url.clone(), env.brokers.clone(), slot.to_owned(), lat_pub, topic_map).build();
        let stop_producer = producer.shutdown_handle();
        let producer_task = tokio::spawn(async move {
            let _ = producer.start().await;
        });
        let counting = Counting::new(true);
        let raw = Counting::new(true);
        let stop_raw = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let raw_watcher = env.latency_raw.then(|| {
            let (topic, partitions, raw, stop) = (lat_topic.clone(), env.partitions, Arc::clone(&raw), Arc::clone(&stop_raw));
            tokio::task::spawn_blocking(move || raw_latency_watcher(&topic, partitions, raw, stop))
        });
        let consumer = consumer_options(Consumer::new(unique_name("bench_lat"), vec![lat_topic], env.brokers.clone(), NoopApp(Arc::clone(&counting))))
            .kafka_option("fetch.wait.max.ms", "5");
        let stop_consumer = consumer.shutdown_handle();
        let consumer_task = tokio::spawn(async move {
            let _ = consumer.start_basic().await;
        });
        let insert = client.prepare(&latency_insert(&lat)).await.unwrap();
        let mut pipeline = Self { client, insert, counting, raw, next_id: 0, topic };
        // Warm up until the group has joined and the producer streams.
        while pipeline.counting.seen() == 0 {
            pipeline.insert_one().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stops: Vec<Box<dyn FnOnce() + Send>> = vec![
            Box::new(move || stop_producer.shutdown()),
            Box::new(move || stop_consumer.shutdown()),
            Box::new(move || stop_raw.store(true, Ordering::Relaxed)),
        ];
        (pipeline, stops, [producer_task, consumer_task].into_iter().chain(raw_watcher).collect())
    }

    async fn insert_one(&mut self) {
        self.next_id += 1;
        insert_latency_row(&self.client, &self.insert, self.next_id).await;
    }

    /// `tps` single-row transactions a second for `secs` (pipelined on one connection, so the
    /// writer keeps the pace); returns (p50, p99, max) in ms, the rate achieved, and the p99 in ms
    /// of the raw consumer beside.
    async fn run(&mut self, tps: u64, secs: u64) -> (f64, f64, f64, f64, f64) {
        self.counting.latencies_us.lock().unwrap().clear();
        self.raw.latencies_us.lock().unwrap().clear();
        let before = self.counting.seen();
        let achieved = insert_at_rate(&self.client, &self.insert, &mut self.next_id, tps, secs).await;
        wait_count(&self.counting, before + tps * secs, Duration::from_secs(120)).await;
        let sorted = |counting: &Counting| {
            let mut latencies = counting.latencies_us.lock().unwrap().clone();
            latencies.sort_unstable();
            latencies
        };
        let (latencies, raw) = (sorted(&self.counting), sorted(&self.raw));
        (percentile_ms(&latencies, 0.50), percentile_ms(&latencies, 0.99), percentile_ms(&latencies, 1.0), achieved, percentile_ms(&raw, 0.99))
    }
}

#[tokio::main]
async fn main() {
    // The in-process consumers log only when asked (`RUST_LOG`): logging would cost their rates.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let env = env();
    let client = pg_client().await;
    let dir = std::env::temp_dir().join(unique_name("pgkafka_bench"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut results = Results::default();
    let rounds = env.repeats;
    let mut all_slots = Slots { names: Vec::new(), psql: format!("{}/psql", env.pg_bin), database_url: env.database_url.clone() };

    if std::env::var("BENCH_SNAPSHOT_ONLY").is_ok_and(|v| v == "1") {
        let (table, other) = (unique_name("bench"), unique_name("bench_other"));
        setup_table(&client, &table, &format!("{table}_pub")).await;
        setup_table(&client, &other, &format!("{other}_pub")).await;
        write_rows(&client, &table, env.rows, env.rows_per_tx).await;
        write_rows(&client, &other, env.rows, env.rows_per_tx).await;
        snapshot_section(&env, &client, &dir, &mut results, &table, &other).await;
        println!("{}", serde_json::to_string_pretty(&results.to_json()).unwrap());
        std::process::exit(0);
    }

    // The workload, read by slots made before it: per round one for pg_recvlogical and one for
    // pgkafka, which writes to a topic of its own.
    let table = unique_name("bench");
    let publication = format!("{table}_pub");
    setup_table(&client, &table, &publication).await;
    let recv_slots: Vec<String> = (0..rounds).map(|r| format!("{table}_recv{r}")).collect();
    let producer_slots: Vec<String> = (0..rounds).map(|r| format!("{table}_slot{r}")).collect();
    create_slots(&client, &recv_slots).await;
    let debezium_slots: Vec<String> = (0..rounds).map(|r| format!("{table}_dbz{r}")).collect();
    let linger_slots: Vec<String> = (0..rounds).map(|r| format!("{table}_linger{r}")).collect();
    create_slots(&client, &linger_slots).await;
    all_slots.names.extend(linger_slots.iter().cloned());
    create_slots(&client, &producer_slots).await;
    create_slots(&client, &debezium_slots).await;
    all_slots.names.extend(recv_slots.iter().chain(&producer_slots).chain(&debezium_slots).cloned());
    eprintln!("bench: writing {} rows in transactions of {}", env.rows, env.rows_per_tx);
    let end_lsn = write_rows(&client, &table, env.rows, env.rows_per_tx).await;

    let (mut sample, mut sample_headers) = (Vec::new(), OwnedHeaders::new());
    let mut first_topic = String::new();
    // Without the producer section, one unmeasured producer run still fills the consumers' topic.
    let producer_rounds = if env.runs("producer") { rounds } else { 1 };
    for round in 0..producer_rounds {
        let measure = env.runs("producer");
        eprintln!("bench: producer round {}/{rounds}", round + 1);
        if measure {
            let cpu = CpuSample::now();
            let rate = pg_recvlogical(&env, &recv_slots[round], &publication, &end_lsn, env.rows);
            results.add("pg_recvlogical", "PostgreSQL limit: pg_recvlogical (pgoutput)", "rows/s", "limit", rate);
            results.cpu("pg_recvlogical", &cpu);
        }

        let topic = format!("{table}_topic{round}");
        create_topic(&topic, env.partitions).await;
        let config = write_producer_config(&env, &dir, &producer_slots[round], &publication, &table, &topic, false);
        let (secs, rss, cores) = run_producer_binary(&env, &config, &producer_slots[round], &end_lsn).await;
        if measure {
            results.add("pgkafka_producer", "pgkafka producer, slot to acknowledged in Kafka", "rows/s", "pgkafka", env.rows as f64 / secs);
            results.cpu_between("pgkafka_producer", cores);
            results.add("producer_peak_rss", format!("pgkafka producer peak RSS, transactions of {}", env.rows_per_tx), "MiB", "pgkafka", rss);
            let debezium_topic = format!("{table}_dbz_topic{round}");
            create_topic(&debezium_topic, env.partitions).await;
            let config = write_producer_config(&env, &dir, &debezium_slots[round], &publication, &table, &debezium_topic, true);
            let (secs, _, cores) = run_producer_binary(&env, &config, &debezium_slots[round], &end_lsn).await;
            results.add("pgkafka_producer_debezium", "pgkafka producer, debezium format (with schemas), same workload", "rows/s", "pgkafka", env.rows as f64 / secs);
            results.cpu_between("pgkafka_producer_debezium", cores);
            delete_topic(&debezium_topic).await;
            // The same run with larger batches: what the batching knob buys on this machine.
            let linger_topic = format!("{table}_linger_topic{round}");
            create_topic(&linger_topic, env.partitions).await;
            let config = write_producer_config(&env, &dir, &linger_slots[round], &publication, &table, &linger_topic, false);
            let config = with_kafka_settings(config, &[("linger.ms", "50")]);
            let (secs, _, cores) = run_producer_binary(&env, &config, &linger_slots[round], &end_lsn).await;
            results.add("pgkafka_producer_linger50", "pgkafka producer with linger.ms=50 (default 5), same workload", "rows/s", "pgkafka", env.rows as f64 / secs);
            results.cpu_between("pgkafka_producer_linger50", cores);
            delete_topic(&linger_topic).await;
        }
        if round == 0 {
            (sample, sample_headers) = read_sample(&topic);
            first_topic = topic;
        } else {
            delete_topic(&topic).await;
        }
        if !measure {
            continue;
        }

        let raw_topic = format!("{table}_raw{round}");
        create_topic(&raw_topic, env.partitions).await;
        let (raw_sample, raw_headers, rows) = (sample.clone(), sample_headers.clone(), env.rows);
        let produced_to = raw_topic.clone();
        let cpu = CpuSample::now();
        let rate = tokio::task::spawn_blocking(move || raw_producer(&produced_to, &raw_sample, &raw_headers, rows)).await.unwrap();
        results.add("rdkafka_producer", "Kafka limit: raw rdkafka producer, same records (key, value, origin headers) and pinned settings", "msgs/s", "limit", rate);
        results.cpu("rdkafka_producer", &cpu);
        delete_topic(&raw_topic).await;
    }
    let avg_bytes = sample.iter().map(|(_, v)| v.len()).sum::<usize>() as f64 / sample.len() as f64;

    // Peak RSS while streaming ONE transaction of all the rows.
    if env.runs("producer") {
        eprintln!("bench: one transaction of {} rows", env.rows);
        let big = format!("{table}_big");
        let big_pub = format!("{big}_pub");
        setup_table(&client, &big, &big_pub).await;
        let big_slots: Vec<String> = (0..rounds).map(|r| format!("{big}_slot{r}")).collect();
        create_slots(&client, &big_slots).await;
        all_slots.names.extend(big_slots.iter().cloned());
        let big_end = write_rows(&client, &big, env.rows, env.rows).await;
        for (round, slot) in big_slots.iter().enumerate() {
            let big_topic = format!("{big}_topic{round}");
            create_topic(&big_topic, env.partitions).await;
            let config = write_producer_config(&env, &dir, slot, &big_pub, &big, &big_topic, false);
            let (secs, rss, cores) = run_producer_binary(&env, &config, slot, &big_end).await;
            results.add("one_transaction_rate", format!("pgkafka producer, one transaction of {} rows", env.rows), "rows/s", "pgkafka", env.rows as f64 / secs);
            results.cpu_between("one_transaction_rate", cores);
            results.add("one_transaction_peak_rss", format!("pgkafka producer peak RSS, one transaction of {} rows", env.rows), "MiB", "pgkafka", rss);
            delete_topic(&big_topic).await;
        }
        // The initial snapshot of the workload table (and of it with the one-transaction table).
        if env.runs("snapshot") {
            snapshot_section(&env, &client, &dir, &mut results, &table, &big).await;
        }
    }

    // Consumers, all reading the first round's producer topic.
    for round in 0..if env.runs("consumer") { rounds } else { 0 } {
        eprintln!("bench: consumer round {}/{rounds}", round + 1);
        let (topic, partitions, rows) = (first_topic.clone(), env.partitions, env.rows);
        let cpu = CpuSample::now();
        let rate = tokio::task::spawn_blocking(move || raw_consumer_no_decode(&topic, partitions, rows)).await.unwrap();
        results.add("rdkafka_consumer_no_decode", "Kafka limit: raw rdkafka consumer, all partitions, no decoding", "msgs/s", "limit", rate);
        results.cpu("rdkafka_consumer_no_decode", &cpu);
        let cpu = CpuSample::now();
        let rate = raw_consumer_json(&first_topic, env.rows).await;
        results.add("rdkafka_consumer_json", "reference: single-thread rdkafka consumer decoding JSON", "msgs/s", "reference", rate);
        results.cpu("rdkafka_consumer_json", &cpu);
        let (rate, cores) = basic_consumer(&env, &first_topic, env.rows).await;
        results.add("basic_consumer", "pgkafka basic consumer, no-op handler", "msgs/s", "pgkafka", rate);
        results.cpu_between("basic_consumer", cores);
    }
    // The idempotent section feeds a topic of its own from the sample.
    delete_topic(&first_topic).await;

    // The idempotent consumer against the same inserts in a plain loop.
    if env.runs("idempotent") {
        eprintln!("bench: feeding {} ops", env.idempotent_ops);
        let ops_topic = feed_ops(&env, &sample, env.idempotent_ops).await;
        let (batch, unbatched) = (env.batch_size, env.unbatched_ops);
        for round in 0..rounds {
            eprintln!("bench: idempotent round {}/{rounds}", round + 1);
            let cpu = CpuSample::now();
            let rate = plain_loop(&env, &client, env.idempotent_ops, batch, false).await;
            results.add("plain_loop_batched", format!("PostgreSQL limit: sqlx loop, same inserts, {batch} per transaction, {} connections", env.partitions), "ops/s", "limit", rate);
            results.cpu("plain_loop_batched", &cpu);
            let cpu = CpuSample::now();
            let rate = plain_loop(&env, &client, env.idempotent_ops, batch, true).await;
            results.add("plain_loop_state_batched", format!("reference: the same loop plus one state-row UPDATE per transaction, {batch} per transaction"), "ops/s", "reference", rate);
            results.cpu("plain_loop_state_batched", &cpu);
            let (rate, cores) = idempotent_consumer(&env, &client, &ops_topic, env.idempotent_ops, batch).await;
            results.add("idempotent_batched", format!("pgkafka idempotent consumer, batches of up to {batch}"), "ops/s", "pgkafka", rate);
            results.cpu_between("idempotent_batched", cores);
            let cpu = CpuSample::now();
            let rate = plain_loop(&env, &client, unbatched, 1, false).await;
            results.add("plain_loop_unbatched", format!("PostgreSQL limit: sqlx loop, one insert per transaction, {} connections", env.partitions), "ops/s", "limit", rate);
            results.cpu("plain_loop_unbatched", &cpu);
            let cpu = CpuSample::now();
            let rate = plain_loop(&env, &client, unbatched, 1, true).await;
            results.add("plain_loop_state_unbatched", "reference: the same loop plus one state-row UPDATE per transaction, one insert per transaction", "ops/s", "reference", rate);
            results.cpu("plain_loop_state_unbatched", &cpu);
            let (rate, cores) = idempotent_consumer(&env, &client, &ops_topic, unbatched, 1).await;
            results.add("idempotent_unbatched", "pgkafka idempotent consumer, batch_size(1)", "ops/s", "pgkafka", rate);
            results.cpu_between("idempotent_unbatched", cores);
        }
        delete_topic(&ops_topic).await;
    }

    // Latency from COMMIT to handle_message at steady rates of single-row transactions.
    // Each run gets a pipeline (table, slot, topic, group) of its own: the local broker's cost per
    // request grows with a topic's length (its CPU at a steady 200 tx/s went 0.50, 0.86, 1.33
    // cores over three 15 s runs on one topic), which would make each round slower than the last.
    if env.runs("latency") {
        for round in 0..rounds {
            for &tps in &env.latency_rates {
                eprintln!("bench: latency round {}/{rounds} at {tps} transactions/s", round + 1);
                let lat_slot = unique_name("bench_lat_slot");
                let (mut pipeline, stops, tasks) = LatencyPipeline::start(&env, &lat_slot).await;
                all_slots.names.push(lat_slot);
                let cpu = CpuSample::now();
                let (p50, p99, max, achieved, raw_p99) = pipeline.run(tps, env.latency_secs).await;
                results.add(&format!("latency_{tps}_p50"), format!("COMMIT to handler at {tps} tx/s, p50"), "ms", "pgkafka", p50);
                results.add(&format!("latency_{tps}_p99"), format!("COMMIT to handler at {tps} tx/s, p99"), "ms", "pgkafka", p99);
                results.add(&format!("latency_{tps}_max"), format!("COMMIT to handler at {tps} tx/s, max"), "ms", "pgkafka", max);
                if env.latency_raw {
                    results.add(
                        &format!("latency_{tps}_raw_p99"),
                        format!("COMMIT to a raw rdkafka consumer on the same topic at {tps} tx/s, p99 (producer and broker)"),
                        "ms",
                        "reference",
                        raw_p99,
                    );
                }
                results.add(&format!("latency_{tps}_achieved"), format!("transactions written, aiming at {tps} tx/s"), "tx/s", "reference", achieved);
                results.cpu(&format!("latency_{tps}_p99"), &cpu);
                for stop in stops {
                    stop();
                }
                for task in tasks {
                    let _ = task.await;
                }
                delete_topic(&pipeline.topic).await;
                // Kafka alone at the same rate, once the pipeline is stopped.
                let kafka_topic = unique_name("bench_kafka_lat");
                create_topic(&kafka_topic, env.partitions).await;
                let (topic, partitions, secs) = (kafka_topic.clone(), env.partitions, env.latency_secs);
                let cpu = CpuSample::now();
                let kafka_p99 = tokio::task::spawn_blocking(move || kafka_latency_p99(&topic, partitions, tps, secs)).await.unwrap();
                results.add(
                    &format!("latency_{tps}_kafka_p99"),
                    format!("Kafka alone: raw producer to raw consumer at {tps} records/s, p99"),
                    "ms",
                    "limit",
                    kafka_p99,
                );
                // After its line: the CPU is filed under the round the line's run belongs to.
                results.cpu(&format!("latency_{tps}_kafka_p99"), &cpu);
                delete_topic(&kafka_topic).await;
                // PostgreSQL alone at the same rate, after Kafka alone, with nothing else running.
                let pg_slot = unique_name("bench_pg_lat_slot");
                all_slots.names.push(pg_slot.clone());
                let (pg_p50, pg_p99) = pg_latency(&env, &pg_slot, tps, env.latency_secs).await;
                results.add(&format!("latency_{tps}_pg_p50"), format!("PostgreSQL alone: COMMIT to pg_recvlogical at {tps} tx/s, p50"), "ms", "limit", pg_p50);
                results.add(&format!("latency_{tps}_pg_p99"), format!("PostgreSQL alone: COMMIT to pg_recvlogical at {tps} tx/s, p99"), "ms", "limit", pg_p99);
            }
        }
    }

    results.ratio_target("producer / min(pg_recvlogical, raw rdkafka producer)", "pgkafka_producer", &["pg_recvlogical", "rdkafka_producer"], Some(0.9));
    results.ratio_target("producer with linger.ms=50 / min(pg_recvlogical, raw rdkafka producer)", "pgkafka_producer_linger50", &["pg_recvlogical", "rdkafka_producer"], None);
    results.at_most_target("producer peak RSS through one transaction of all rows", "one_transaction_peak_rss", "max", 64.0 / 1.048_576, "MiB", "64 MB");
    results.ratio_target("initial snapshot / min(COPY, raw rdkafka producer)", "pgkafka_snapshot", &["copy_out", "rdkafka_producer"], Some(0.7));
    results.at_most_target("producer peak RSS during the initial snapshot", "snapshot_peak_rss", "max", 64.0 / 1.048_576, "MiB", "64 MB");
    results.ratio_target("initial snapshot of two tables, two readers / one reader", "pgkafka_snapshot_two_tables_2_readers", &["pgkafka_snapshot_two_tables_1_readers"], None);
    results.ratio_target("basic consumer / JSON-decoding reference", "basic_consumer", &["rdkafka_consumer_json"], Some(1.0));
    results.ratio_target("basic consumer / no-decode limit", "basic_consumer", &["rdkafka_consumer_no_decode"], None);
    results.ratio_target("idempotent consumer / plain loop, batched", "idempotent_batched", &["plain_loop_batched"], Some(0.8));
    results.ratio_target("idempotent consumer / plain loop, one op per transaction", "idempotent_unbatched", &["plain_loop_unbatched"], Some(0.5));
    // What the consumer's client side costs, once its state-row statement is paid in the baseline too.
    results.ratio_target("idempotent consumer / loop with the state-row UPDATE, batched", "idempotent_batched", &["plain_loop_state_batched"], None);
    results.ratio_target("idempotent consumer / loop with the state-row UPDATE, one op per transaction", "idempotent_unbatched", &["plain_loop_state_unbatched"], None);
    for &tps in &env.latency_rates {
        results.at_most_target(&format!("COMMIT to handler p99 at {tps} tx/s"), &format!("latency_{tps}_p99"), "median", 50.0, "ms", "50 ms");
    }

    // Drop the slots now: the exit below skips destructors.
    drop(all_slots);
    let mut out = results.to_json();
    out["workload"] = json!({
        "rows": env.rows, "rows_per_tx": env.rows_per_tx, "partitions": env.partitions, "columns": 5,
        "idempotent_ops": env.idempotent_ops, "unbatched_ops": env.unbatched_ops, "batch_size": env.batch_size,
        "latency_rates": env.latency_rates, "latency_secs": env.latency_secs, "repeats": rounds,
        "record_value_bytes_avg": avg_bytes,
    });
    let path = std::env::var("BENCH_OUT").unwrap_or_else(|_| "docs/benchmarks.json".into());
    std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
    eprintln!("bench: results written to {path}");
    // librdkafka's threads may still be closing; the measurements are written.
    std::process::exit(0);
}
