//! The benchmark harness behind `scripts/bench.sh`: pgkafka against the physical limits of the
//! same machine, on the same workload, in one run.
//!
//! Not a guarantee, a measurement. Run it with `scripts/bench.sh` (release build, local
//! services); it writes `docs/benchmarks.json`, which `scripts/bench_report.py` turns into
//! `docs/benchmarks.md` and `docs/benchmarks.png`.
//!
//! 1. PostgreSQL side: `pg_recvlogical` streaming the workload's changes (pgoutput), rows/s.
//! 2. Kafka side: a raw rdkafka producer sending as many same-sized messages with the same
//!    delivery settings, msgs/s.
//! 3. The pgkafka producer (the `pgkafka` binary) from slot to acknowledged in Kafka, rows/s.
//! 4. Peak RSS of the producer while streaming one transaction of all the rows.
//! 5. The basic consumer with a no-op handler against a raw rdkafka consumer, msgs/s.
//! 6. The idempotent consumer inserting one row per op, batching on and off, ops/s.
//! 7. Latency from COMMIT to `handle_message` at a steady transaction rate, p50/p99.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgkafka::async_trait::async_trait;
use pgkafka::rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use pgkafka::rdkafka::message::Message as _;
use pgkafka::rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use pgkafka::sqlx::{Postgres, Transaction};
use pgkafka::{BasicApplication, Consumer, ConsumerError, IdempotentApplication, ReplicationOp};
use pgkafka_tests::{create_topic, kafka_brokers_config, pg_client, unique_name};
use serde_json::json;

/// The servers (the integration tests' `PGKAFKA_TEST_*` environment) and the workload's size.
struct Env {
    database_url: String,
    brokers: String,
    pg_bin: String,
    pgkafka_bin: PathBuf,
    rows: u64,
    rows_per_tx: u64,
    partitions: i32,
    idempotent_ops: u64,
    latency_tps: u64,
    latency_secs: u64,
}

fn env() -> Env {
    let servers = pgkafka_tests::env();
    let num = |k: &str, default: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let exe = std::env::current_exe().unwrap();
    // target/release/examples/bench -> target/release/pgkafka
    let pgkafka_bin = exe.parent().and_then(|p| p.parent()).unwrap().join("pgkafka");
    Env {
        database_url: servers.database_url.clone(),
        brokers: servers.brokers.clone(),
        pg_bin: servers.pg_bin.clone().expect("PGKAFKA_TEST_PG_BIN is not set; run scripts/bench.sh"),
        pgkafka_bin,
        rows: num("BENCH_ROWS", 1_000_000),
        rows_per_tx: num("BENCH_ROWS_PER_TX", 1_000),
        partitions: num("BENCH_PARTITIONS", 3) as i32,
        idempotent_ops: num("BENCH_IDEMPOTENT_OPS", 100_000),
        latency_tps: num("BENCH_LATENCY_TPS", 200),
        latency_secs: num("BENCH_LATENCY_SECS", 15),
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

fn write_producer_config(env: &Env, dir: &std::path::Path, slot: &str, publication: &str, table: &str, topic: &str) -> PathBuf {
    let path = dir.join(format!("{slot}.json"));
    let config = json!({
        "connection_string": env.database_url,
        "brokers": env.brokers,
        "slot": slot,
        "publication": publication,
        "topics": { table: { "name": topic, "partition_key": ["organization_id"] } },
        "status_interval_ms": 50,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    path
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the `pgkafka` binary until the slot's confirmed position reaches `end_lsn` (which only
/// happens once Kafka acknowledged every record before it); returns (seconds from start, peak
/// RSS in KiB). The producer reports its position every 50 ms here.
async fn run_producer_binary(env: &Env, config: &PathBuf, slot: &str, end_lsn: &str) -> (f64, u64) {
    let client = pg_client().await;
    let mut child = tokio::process::Command::new(&env.pgkafka_bin)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", env.pgkafka_bin.display()));
    let pid = child.id().unwrap();
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
    peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
    // SIGTERM: graceful shutdown confirms what was delivered.
    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    (elapsed, peak)
}

struct Counting {
    seen: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    latencies_ms: Mutex<Vec<i64>>,
    measure_latency: bool,
}

impl Counting {
    fn new(measure_latency: bool) -> Arc<Self> {
        Arc::new(Self {
            seen: AtomicU64::new(0),
            first: Mutex::new(None),
            last: Mutex::new(None),
            latencies_ms: Mutex::new(Vec::new()),
            measure_latency,
        })
    }

    fn record(&self, op: &ReplicationOp) {
        let now = Instant::now();
        self.first.lock().unwrap().get_or_insert(now);
        *self.last.lock().unwrap() = Some(now);
        self.seen.fetch_add(1, Ordering::Relaxed);
        if self.measure_latency {
            // The row carries its commit time's clock (clock_timestamp() in the inserting
            // transaction, a few microseconds before COMMIT).
            if let Some(Some(micros)) = op.value(op.op.key_row(), "created_us") {
                let created: i64 = micros.parse().unwrap_or(0);
                let now_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
                self.latencies_ms.lock().unwrap().push((now_us - created) / 1000);
            }
        }
    }

    fn rate(&self) -> f64 {
        let first = self.first.lock().unwrap().unwrap();
        let last = self.last.lock().unwrap().unwrap();
        self.seen.load(Ordering::Relaxed) as f64 / (last - first).as_secs_f64().max(1e-9)
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

struct InsertApp {
    table: String,
    counting: Arc<Counting>,
}

#[async_trait]
impl IdempotentApplication for InsertApp {
    async fn handle_message(&self, tx: &mut Transaction<'_, Postgres>, op: &ReplicationOp) -> Result<(), ConsumerError> {
        pgkafka::sqlx::query(&format!("INSERT INTO {} (lsn, seq_id) VALUES ($1, $2)", self.table))
            .bind(op.lsn as i64)
            .bind(op.seq_id as i64)
            .execute(&mut **tx)
            .await?;
        self.counting.record(op);
        Ok(())
    }
}

async fn wait_count(counting: &Counting, expected: u64, limit: Duration) {
    let started = Instant::now();
    while counting.seen.load(Ordering::Relaxed) < expected {
        assert!(started.elapsed() < limit, "only {} of {expected} ops arrived", counting.seen.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn consumer_options<A>(consumer: Consumer<A>) -> Consumer<A> {
    consumer
        .kafka_option("session.timeout.ms", "6000")
        .kafka_option("heartbeat.interval.ms", "500")
        .kafka_option("auto.offset.reset", "earliest")
}

#[tokio::main]
async fn main() {
    let env = env();
    let client = pg_client().await;
    let dir = std::env::temp_dir().join(unique_name("pgkafka_bench"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut results = serde_json::Map::new();
    results.insert(
        "workload".into(),
        json!({ "rows": env.rows, "rows_per_tx": env.rows_per_tx, "partitions": env.partitions, "columns": 5,
                "idempotent_ops": env.idempotent_ops, "latency_secs": env.latency_secs }),
    );

    // The workload, read by two slots made before it: one for pg_recvlogical, one for pgkafka.
    let table = unique_name("bench");
    let publication = format!("{table}_pub");
    let topic = format!("{table}_topic");
    let (recv_slot, producer_slot) = (format!("{table}_recv"), format!("{table}_slot"));
    setup_table(&client, &table, &publication).await;
    for slot in [&recv_slot, &producer_slot] {
        client.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[slot]).await.unwrap();
    }
    create_topic(&topic, env.partitions).await;
    eprintln!("bench: writing {} rows in transactions of {}", env.rows, env.rows_per_tx);
    let end_lsn = write_rows(&client, &table, env.rows, env.rows_per_tx).await;

    // 1. PostgreSQL's own limit.
    eprintln!("bench: pg_recvlogical");
    let started = Instant::now();
    let status = std::process::Command::new(format!("{}/pg_recvlogical", env.pg_bin))
        .args(["-d", &env.database_url, "--slot", &recv_slot, "--start", "--endpos", &end_lsn, "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", &format!("publication_names={publication}")])
        .status()
        .unwrap();
    assert!(status.success(), "pg_recvlogical failed");
    let recv_rate = env.rows as f64 / started.elapsed().as_secs_f64();
    results.insert("pg_recvlogical_rows_per_sec".into(), json!(recv_rate));

    // 3. The pgkafka producer, slot to acknowledged in Kafka.
    eprintln!("bench: pgkafka producer");
    let config = write_producer_config(&env, &dir, &producer_slot, &publication, &table, &topic);
    let (secs, rss) = run_producer_binary(&env, &config, &producer_slot, &end_lsn).await;
    let producer_rate = env.rows as f64 / secs;
    results.insert("pgkafka_producer_rows_per_sec".into(), json!(producer_rate));
    results.insert("pgkafka_producer_peak_rss_mib_batched".into(), json!(rss as f64 / 1024.0));

    // 2. Kafka's own limit: the same number of messages of the same size and keys, same settings.
    eprintln!("bench: raw rdkafka producer");
    let sample: Vec<(Vec<u8>, Vec<u8>)> = {
        let reader: BaseConsumer = kafka_brokers_config().set("group.id", unique_name("bench_sample")).create().unwrap();
        let mut tpl = pgkafka::rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, pgkafka::rdkafka::Offset::Beginning).unwrap();
        reader.assign(&tpl).unwrap();
        let mut sample = Vec::new();
        while sample.len() < 1000 {
            if let Some(Ok(m)) = reader.poll(Duration::from_secs(5)) {
                sample.push((m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec()));
            }
        }
        sample
    };
    let avg_bytes = sample.iter().map(|(_, v)| v.len()).sum::<usize>() as f64 / sample.len() as f64;
    results.insert("record_value_bytes_avg".into(), json!(avg_bytes));
    let raw_topic = format!("{table}_raw");
    create_topic(&raw_topic, env.partitions).await;
    let raw: FutureProducer = kafka_brokers_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "0")
        .create()
        .unwrap();
    let started = Instant::now();
    let window = Arc::new(tokio::sync::Semaphore::new(10_000));
    let mut handles = Vec::with_capacity(env.rows as usize);
    for i in 0..env.rows as usize {
        let (key, value) = &sample[i % sample.len()];
        let permit = Arc::clone(&window).acquire_owned().await.unwrap();
        let future = raw.send_result(FutureRecord::to(&raw_topic).key(key).payload(value)).map_err(|(e, _)| e).unwrap();
        handles.push(tokio::spawn(async move {
            let result = future.await;
            drop(permit);
            result
        }));
    }
    for handle in handles {
        handle.await.unwrap().unwrap().unwrap();
    }
    let raw_rate = env.rows as f64 / started.elapsed().as_secs_f64();
    results.insert("rdkafka_producer_msgs_per_sec".into(), json!(raw_rate));
    drop(raw);

    // 4. Peak RSS while streaming ONE transaction of all the rows.
    eprintln!("bench: one transaction of {} rows", env.rows);
    let big = format!("{table}_big");
    let big_pub = format!("{big}_pub");
    let big_topic = format!("{big}_topic");
    let big_slot = format!("{big}_slot");
    setup_table(&client, &big, &big_pub).await;
    create_topic(&big_topic, env.partitions).await;
    client.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&big_slot]).await.unwrap();
    let big_end = write_rows(&client, &big, env.rows, env.rows).await;
    let big_config = write_producer_config(&env, &dir, &big_slot, &big_pub, &big, &big_topic);
    let (big_secs, big_rss) = run_producer_binary(&env, &big_config, &big_slot, &big_end).await;
    results.insert("one_transaction_rows_per_sec".into(), json!(env.rows as f64 / big_secs));
    results.insert("one_transaction_peak_rss_mib".into(), json!(big_rss as f64 / 1024.0));

    // 5. Basic consumer, no-op handler, against a raw rdkafka consumer on the same topic.
    eprintln!("bench: raw rdkafka consumer");
    let raw_consumer: StreamConsumer = kafka_brokers_config()
        .set("group.id", unique_name("bench_raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .unwrap();
    raw_consumer.subscribe(&[&topic]).unwrap();
    let mut first = None;
    let mut count = 0u64;
    let mut last = Instant::now();
    while count < env.rows {
        let m = raw_consumer.recv().await.unwrap();
        let _op: ReplicationOp = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
        first.get_or_insert_with(Instant::now);
        count += 1;
        last = Instant::now();
    }
    let raw_consume_rate = count as f64 / (last - first.unwrap()).as_secs_f64();
    results.insert("rdkafka_consumer_msgs_per_sec".into(), json!(raw_consume_rate));
    drop(raw_consumer);

    eprintln!("bench: basic consumer");
    let counting = Counting::new(false);
    let consumer = consumer_options(Consumer::new(unique_name("bench_basic"), vec![topic.clone()], env.brokers.clone(), NoopApp(Arc::clone(&counting))));
    let stop = consumer.shutdown_handle();
    let task = tokio::spawn(consumer.start_basic());
    wait_count(&counting, env.rows, Duration::from_secs(900)).await;
    stop.shutdown();
    let _ = task.await;
    results.insert("basic_consumer_msgs_per_sec".into(), json!(counting.rate()));

    // 6. Idempotent consumer inserting one row per op, batching on and off.
    for batching in [true, false] {
        eprintln!("bench: idempotent consumer, batching {batching}");
        let sink = unique_name("bench_sink");
        client.batch_execute(&format!("CREATE TABLE {sink} (lsn bigint, seq_id bigint)")).await.unwrap();
        let ops_topic = format!("{sink}_ops");
        create_topic(&ops_topic, env.partitions).await;
        let feeder: FutureProducer = kafka_brokers_config().set("linger.ms", "5").create().unwrap();
        for i in 0..env.idempotent_ops {
            let (key, value) = &sample[(i as usize) % sample.len()];
            let mut op: ReplicationOp = serde_json::from_slice(value).unwrap();
            op.lsn = 1 + i / 1000;
            op.seq_id = i % 1000;
            let value = serde_json::to_vec(&op).unwrap();
            loop {
                match feeder.send_result(FutureRecord::to(&ops_topic).key(key).payload(&value)) {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }
        feeder.flush(Duration::from_secs(60)).unwrap();
        let counting = Counting::new(false);
        let app = InsertApp { table: sink.clone(), counting: Arc::clone(&counting) };
        let mut consumer = consumer_options(Consumer::new(unique_name("bench_idem"), vec![ops_topic.clone()], env.brokers.clone(), app))
            .state_table(format!("{sink}_state"));
        if !batching {
            consumer = consumer.batch_size(1);
        }
        let url = env.database_url.clone();
        let stop = consumer.shutdown_handle();
        let task = tokio::spawn(async move { consumer.start_idempotent(&url).await });
        wait_count(&counting, env.idempotent_ops, Duration::from_secs(900)).await;
        stop.shutdown();
        let _ = task.await;
        let key = if batching { "idempotent_consumer_ops_per_sec_batched" } else { "idempotent_consumer_ops_per_sec_unbatched" };
        results.insert(key.into(), json!(counting.rate()));
    }

    // 7. Latency from COMMIT to handle_message at a steady rate of small transactions.
    eprintln!("bench: latency at {} transactions/s", env.latency_tps);
    let lat = unique_name("bench_lat");
    let lat_pub = format!("{lat}_pub");
    let lat_topic = format!("{lat}_topic");
    let lat_slot = format!("{lat}_slot");
    client
        .batch_execute(&format!(
            "CREATE TABLE {lat} (id bigint PRIMARY KEY, organization_id int NOT NULL, created_us bigint NOT NULL);
             ALTER TABLE {lat} REPLICA IDENTITY FULL; CREATE PUBLICATION {lat_pub} FOR TABLE {lat};"
        ))
        .await
        .unwrap();
    create_topic(&lat_topic, env.partitions).await;
    let mut topic_map = HashMap::new();
    topic_map.insert(lat.clone(), pgkafka::TopicInfo::new(&lat_topic, ["organization_id"]));
    let producer = pgkafka::Producer::builder(env.database_url.clone(), env.brokers.clone(), lat_slot.clone(), lat_pub.clone(), topic_map)
        .kafka_option("linger.ms", "0")
        .build();
    let stop = producer.shutdown_handle();
    let producer_task = tokio::spawn(async move { producer.start().await });
    let counting = Counting::new(true);
    let consumer = consumer_options(Consumer::new(unique_name("bench_lat"), vec![lat_topic.clone()], env.brokers.clone(), NoopApp(Arc::clone(&counting))))
        .kafka_option("fetch.wait.max.ms", "5");
    let stop_consumer = consumer.shutdown_handle();
    let consumer_task = tokio::spawn(consumer.start_basic());
    // Warm up until the group has joined and the producer streams.
    let mut id = 0i64;
    let insert = format!("INSERT INTO {lat} VALUES ($1, $2, (extract(epoch from clock_timestamp()) * 1000000)::bigint)");
    while counting.seen.load(Ordering::Relaxed) == 0 {
        id += 1;
        client.execute(&insert, &[&id, &((id % 7) as i32)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.latencies_ms.lock().unwrap().clear();
    let total = env.latency_tps * env.latency_secs;
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / env.latency_tps));
    let before = counting.seen.load(Ordering::Relaxed);
    for _ in 0..total {
        ticker.tick().await;
        id += 1;
        client.execute(&insert, &[&id, &((id % 7) as i32)]).await.unwrap();
    }
    wait_count(&counting, before + total, Duration::from_secs(120)).await;
    let mut latencies = counting.latencies_ms.lock().unwrap().clone();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    results.insert(
        "latency_ms".into(),
        json!({ "tps": env.latency_tps, "samples": latencies.len(), "p50": pct(0.50), "p99": pct(0.99), "max": latencies.last() }),
    );
    stop.shutdown();
    let _ = producer_task.await;
    stop_consumer.shutdown();
    let _ = consumer_task.await;

    // Clean up slots so they do not retain WAL.
    for slot in [&recv_slot, &producer_slot, &big_slot, &lat_slot] {
        let _ = client.execute("SELECT pg_drop_replication_slot($1)", &[slot]).await;
    }
    let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| "docs/benchmarks.json".into());
    std::fs::write(&out, serde_json::to_vec_pretty(&serde_json::Value::Object(results)).unwrap()).unwrap();
    eprintln!("bench: results written to {out}");
    // librdkafka's threads may still be closing; the measurements are written.
    std::process::exit(0);
}
