//! `pgkafka`: runs a producer from a configuration file.
//!
//! ```text
//! pgkafka --config pgkafka.toml                 # stream until SIGINT/SIGTERM
//! pgkafka --config pgkafka.toml --check         # validate config, database and brokers, then exit
//! pgkafka --config pgkafka.toml --metrics-addr 127.0.0.1:9187   # also serve Prometheus metrics
//! pgkafka --config pgkafka.toml --log-format json  # one JSON object per log line
//! pgkafka backfill --config pgkafka.toml --table inventory   # ask the running producer to backfill a table
//! pgkafka backfill --config pgkafka.toml --status            # list backfills and their progress
//! pgkafka backfill --config pgkafka.toml --cancel inventory  # cancel by table, or by id
//! ```
//!
//! The file is TOML (or JSON, by the `.json` extension):
//!
//! ```toml
//! connection_string = "postgresql://replicator@db.internal:5432/app?sslmode=verify-full"
//! brokers = "kafka-1:9092,kafka-2:9092"
//! slot = "pgkafka_app"
//! publication = "pgkafka_app"
//! truncate = "fail"          # or "skip"
//! slot_in_use = "wait"       # or "fail"
//! slot_missing = "refuse"    # or "create": start anew when the slot is gone but the topics hold records
//! # slot_failover = true      # PostgreSQL 17+: create the slot as a failover slot
//! # max_in_flight = 10000     # unacknowledged messages at most (bounds memory)
//! # status_interval_ms = 1000 # how often the confirmed position is reported
//! # shutdown_timeout_secs = 30
//! # snapshot = "never"       # or "initial": publish the existing rows when the slot is created,
//! #                          # or "initial_only": publish them, then stop and drop the slot
//! # snapshot_table = "public.pgkafka_snapshots"  # snapshot progress, in the source database
//! # snapshot_chunk_rows = 10000
//! # snapshot_readers = 1     # connections reading tables in parallel during a snapshot
//! # backfills = true          # run the backfills `pgkafka backfill` requests
//! # backfill_chunk_size = 1000
//!
//! # format = "debezium"     # every topic's records: "pgkafka" (default) or "debezium"
//!
//! [topics.inventory]
//! name = "inventory"
//! partition_key = ["organization_id"]
//! # format = "debezium"     # this topic's records, instead of the file's `format`
//!
//! # [debezium]              # the Debezium format's settings (needed when a format is "debezium")
//! # name = "app"             # logical server name: source.name, schema names, <name>.transaction
//! # schemas = true           # Kafka Connect {"schema", "payload"} envelope
//! # decimal_handling = "precise"   # or "string", "double"
//! # tombstones = true        # a null-valued record after each delete
//! # transaction_metadata = false   # BEGIN/END records on <name>.transaction
//! # heartbeat_interval_ms = 10000  # records on __debezium-heartbeat.<name>
//!
//! [kafka]                    # librdkafka producer properties, passed through
//! "compression.type" = "lz4"
//! ```
//!
//! Secrets stay out of the file: `PGKAFKA_CONNECTION_STRING` and `PGKAFKA_BROKERS` replace the
//! file's values, and `PGKAFKA_KAFKA_<PROPERTY>` sets a librdkafka property (`PGKAFKA_KAFKA_SASL_PASSWORD`
//! sets `sasl.password`).

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use pgkafka::producer::BackfillSelector;
use pgkafka::{
    DebeziumOptions, DecimalHandling, OutputFormat, Producer, ProducerError, SlotInUsePolicy, SlotMissingPolicy,
    SlotStatus, SnapshotMode, TopicInfo, TruncatePolicy,
};
use serde::Deserialize;

/// jemalloc for the whole process, librdkafka's C allocations included. Every record is allocated
/// on the thread that hands it to librdkafka (the message, its copied headers) and freed on the
/// delivery-report thread; glibc's malloc serves that pattern from its locked arena bins, not its
/// thread caches, and was the largest single cost of a snapshot (`_int_malloc` 14% of the
/// process). With jemalloc a 500,000-row snapshot ran at 450,000 rows/s instead of about 280,000,
/// at 46 MiB peak RSS instead of 36 (`scripts/bench.sh`, see docs/benchmarks.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Streams PostgreSQL row changes to Kafka from a logical replication slot.
#[derive(Debug, Parser)]
#[command(name = "pgkafka", version, about)]
struct Args {
    /// The configuration file (TOML, or JSON when it ends in .json).
    #[arg(short, long, env = "PGKAFKA_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration, the database (publication, replica identity, key columns,
    /// slot) and the brokers, print what would be streamed, and exit.
    #[arg(long)]
    check: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// How log lines on stderr look: `text` (coloured only when stderr is a terminal) or `json`
    /// (one object per line; the slot, topic and partition of the span a line comes from are
    /// fields of its `span` and `spans`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "PGKAFKA_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Backfill tables into their topics while the producer streams (it needs `backfills = true`),
    /// list backfills, or cancel them.
    Backfill(BackfillArgs),
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct BackfillArgs {
    /// A table to backfill, as records name it (`t` in `public`, `schema.t` elsewhere); repeatable.
    #[arg(long = "table", value_name = "TABLE")]
    tables: Vec<String>,
    /// Backfill every table the producer streams.
    #[arg(long)]
    all: bool,
    /// List this slot's backfills with their progress.
    #[arg(long)]
    status: bool,
    /// Cancel the backfill with this id, or every open backfill of this table.
    #[arg(long, value_name = "ID|TABLE")]
    cancel: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The configuration file. No `Debug`: it holds the connection string and the `[kafka]` settings,
/// which may carry passwords.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    connection_string: Option<String>,
    brokers: Option<String>,
    slot: String,
    publication: String,
    topics: HashMap<String, TopicEntry>,
    #[serde(default)]
    kafka: BTreeMap<String, String>,
    #[serde(default)]
    format: FormatName,
    debezium: Option<DebeziumSection>,
    #[serde(default)]
    truncate: Truncate,
    #[serde(default)]
    slot_in_use: SlotInUse,
    #[serde(default)]
    slot_missing: SlotMissing,
    slot_failover: Option<bool>,
    max_in_flight: Option<usize>,
    shutdown_timeout_secs: Option<u64>,
    status_interval_ms: Option<u64>,
    backfills: Option<bool>,
    backfill_chunk_size: Option<usize>,
    #[serde(default)]
    snapshot: Snapshot,
    snapshot_table: Option<String>,
    snapshot_chunk_rows: Option<usize>,
    snapshot_readers: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Snapshot {
    #[default]
    Never,
    Initial,
    InitialOnly,
}

/// A topic-map entry: [`TopicInfo`]'s keys and the topic's output format.
#[derive(Debug, Deserialize)]
struct TopicEntry {
    name: String,
    partition_key: Vec<String>,
    format: Option<FormatName>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FormatName {
    #[default]
    Pgkafka,
    Debezium,
}

/// The `[debezium]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DebeziumSection {
    name: String,
    schemas: Option<bool>,
    #[serde(default)]
    decimal_handling: Decimal,
    tombstones: Option<bool>,
    #[serde(default)]
    transaction_metadata: bool,
    heartbeat_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Decimal {
    #[default]
    Precise,
    String,
    Double,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Truncate {
    #[default]
    Fail,
    Skip,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SlotInUse {
    #[default]
    Wait,
    Fail,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SlotMissing {
    #[default]
    Refuse,
    Create,
}

/// A problem reported to the user: one paragraph, and the exit code.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn config(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 2 }
    }
}

impl From<ProducerError> for Failure {
    fn from(error: ProducerError) -> Self {
        let code = match error {
            ProducerError::Config(_) | ProducerError::Schema(_) => 2,
            _ => 1,
        };
        Self { message: error.to_string(), code }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        // Escape codes only where a person reads them: a redirected log file gets plain text.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(true).with_span_list(true).init(),
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let path = args.config.as_deref().ok_or_else(|| {
        Failure::config("no configuration file: pass it with --config FILE (or set PGKAFKA_CONFIG); see `pgkafka --help`")
    })?;
    let file = load(path)?;
    let producer = build(file, path)?;
    if let Some(Command::Backfill(backfill)) = args.command {
        return run_backfill(&producer, backfill).await;
    }
    if args.check {
        let report = producer.check().await?;
        println!("configuration and database OK; the producer would stream:");
        for table in &report.tables {
            println!("  {} -> topic {} (key: {})", table.table_name, table.topic, table.partition_key.join(", "));
        }
        match report.slot {
            SlotStatus::Missing => println!("replication slot: does not exist yet, will be created"),
            SlotStatus::Idle { confirmed } => println!("replication slot: idle, resumes at {confirmed}"),
            SlotStatus::Active { confirmed, pid } => {
                println!("replication slot: in use by server process {pid} (confirmed {confirmed})");
            }
            _ => {}
        }
        return Ok(());
    }
    if let Some(addr) = args.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| Failure::config(format!("cannot serve metrics on {addr}: {e}")))?;
        pgkafka::metrics::describe();
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let stop = producer.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: delivering what is in flight and confirming it");
        stop.shutdown();
    });
    producer.start().await?;
    Ok(())
}

/// `pgkafka backfill`: requests, lists or cancels backfills in the control table.
async fn run_backfill(producer: &Producer, args: BackfillArgs) -> Result<(), Failure> {
    if args.status {
        let runs = producer.backfill_status().await?;
        if runs.is_empty() {
            println!("no backfills for this slot");
        }
        for run in runs {
            let mut line = format!("{:>6}  {:<24} {:<9} {:>10} rows {:>6} chunks", run.id, run.table_name, run.state, run.rows_read, run.chunks);
            if let Some(key) = &run.last_key {
                line.push_str(&format!("  after key ({})", key.join(", ")));
            }
            line.push_str(&format!("  requested {}", run.requested_at));
            if let Some(finished) = &run.finished_at {
                line.push_str(&format!(", finished {finished}"));
            }
            if let Some(error) = &run.error {
                line.push_str(&format!("\n        error: {error}"));
            }
            println!("{line}");
        }
        return Ok(());
    }
    if let Some(which) = args.cancel {
        let selector: BackfillSelector = which.parse().unwrap_or(BackfillSelector::Table(which.clone()));
        let cancelled = producer.cancel_backfill(selector).await?;
        println!("cancelled {cancelled} backfill(s) matching {which}");
        return Ok(());
    }
    let tables = if args.all { Vec::new() } else { args.tables };
    let ids = producer.request_backfill(&tables).await?;
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    println!(
        "requested backfill(s) {}; the producer streaming this slot (with backfills = true) starts within a second. \
         See progress with `pgkafka backfill --status`",
        ids.join(", ")
    );
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn load(path: &Path) -> Result<FileConfig, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::config(format!(
            "cannot read the configuration file {}: {e}. Pass an existing file with --config (see `pgkafka --help`)",
            path.display()
        ))
    })?;
    let is_json = path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
    let parsed = if is_json {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|span| text.get(..span.start).unwrap_or_default().matches('\n').count() + 1);
            match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_owned(),
            }
        })
    };
    parsed.map_err(|e| Failure::config(format!("the configuration file {} is not valid: {e}", path.display())))
}

fn build(file: FileConfig, path: &Path) -> Result<Producer, Failure> {
    let missing = |what: &str, var: &str| {
        Failure::config(format!("{} sets no {what}; set `{what}` in it or the environment variable {var}", path.display()))
    };
    let connection_string = env_nonempty("PGKAFKA_CONNECTION_STRING")
        .or(file.connection_string)
        .ok_or_else(|| missing("connection_string", "PGKAFKA_CONNECTION_STRING"))?;
    let brokers = env_nonempty("PGKAFKA_BROKERS").or(file.brokers).ok_or_else(|| missing("brokers", "PGKAFKA_BROKERS"))?;
    let debezium = file.debezium.map(|section| {
        let mut options = DebeziumOptions::new(section.name);
        options.schemas = section.schemas.unwrap_or(options.schemas);
        options.tombstones = section.tombstones.unwrap_or(options.tombstones);
        options.transaction_metadata = section.transaction_metadata;
        options.heartbeat_interval = section.heartbeat_interval_ms.map(Duration::from_millis);
        options.decimal_handling = match section.decimal_handling {
            Decimal::Precise => DecimalHandling::Precise,
            Decimal::String => DecimalHandling::String,
            Decimal::Double => DecimalHandling::Double,
        };
        options
    });
    let format_of = |name: FormatName| match (name, &debezium) {
        (FormatName::Pgkafka, _) => Ok(OutputFormat::Pgkafka),
        (FormatName::Debezium, Some(options)) => Ok(OutputFormat::Debezium(options.clone())),
        (FormatName::Debezium, None) => Err(Failure::config(format!(
            "{} asks for the debezium format but has no [debezium] table; add one with at least `name` (the \
             logical server name)",
            path.display()
        ))),
    };
    let output_format = format_of(file.format)?;
    let mut topic_formats = Vec::new();
    let mut topics = HashMap::new();
    for (table, entry) in file.topics {
        if let Some(format) = entry.format {
            topic_formats.push((entry.name.clone(), format_of(format)?));
        }
        topics.insert(table, TopicInfo::new(entry.name, entry.partition_key));
    }
    let mut builder = Producer::builder(connection_string, brokers, file.slot, file.publication, topics)
        .output_format(output_format)
        .truncate_policy(match file.truncate {
            Truncate::Fail => TruncatePolicy::Fail,
            Truncate::Skip => TruncatePolicy::Skip,
        })
        .slot_in_use_policy(match file.slot_in_use {
            SlotInUse::Wait => SlotInUsePolicy::Wait,
            SlotInUse::Fail => SlotInUsePolicy::Fail,
        })
        .slot_missing_policy(match file.slot_missing {
            SlotMissing::Refuse => SlotMissingPolicy::Refuse,
            SlotMissing::Create => SlotMissingPolicy::Create,
        });
    builder = builder.snapshot(match file.snapshot {
        Snapshot::Never => SnapshotMode::Never,
        Snapshot::Initial => SnapshotMode::Initial,
        Snapshot::InitialOnly => SnapshotMode::InitialOnly,
    });
    if let Some(table) = file.snapshot_table {
        builder = builder.snapshot_table(table);
    }
    if let Some(rows) = file.snapshot_chunk_rows {
        builder = builder.snapshot_chunk_rows(rows);
    }
    if let Some(readers) = file.snapshot_readers {
        builder = builder.snapshot_readers(readers);
    }
    for (topic, format) in topic_formats {
        builder = builder.topic_format(topic, format);
    }
    if let Some(failover) = file.slot_failover {
        builder = builder.slot_failover(failover);
    }
    if let Some(max) = file.max_in_flight {
        builder = builder.max_in_flight(max);
    }
    if let Some(ms) = file.status_interval_ms {
        builder = builder.status_interval(Duration::from_millis(ms.max(10)));
    }
    if let Some(secs) = file.shutdown_timeout_secs {
        builder = builder.shutdown_timeout(Duration::from_secs(secs));
    }
    if let Some(enabled) = file.backfills {
        builder = builder.backfills(enabled);
    }
    if let Some(rows) = file.backfill_chunk_size {
        builder = builder.backfill_chunk_size(rows);
    }
    for (key, value) in file.kafka {
        builder = builder.kafka_option(key, value);
    }
    for (var, value) in std::env::vars() {
        if let Some(property) = var.strip_prefix("PGKAFKA_KAFKA_") {
            builder = builder.kafka_option(property.to_lowercase().replace('_', "."), value);
        }
    }
    Ok(builder.build())
}

fn env_nonempty(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}
