//! The replication-slot-to-Kafka producer.
//!
//! See [`Producer`].

mod catalog;
mod connection;
mod encode;
mod error;
mod format;
mod heartbeat;
mod routes;
mod session;
mod sink;
mod slot;
mod slot_guard;
mod snapshot;
mod startup;
mod watermark;

pub use error::ProducerError;
pub use format::{DebeziumOptions, DecimalHandling, OutputFormat};
pub use slot_guard::SlotMissingPolicy;
pub use snapshot::backfill::{BackfillRun, BackfillSelector};
pub use snapshot::SnapshotMode;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use self::error::{Attempt, Failure};
use self::sink::Sink;
use self::slot_guard::SessionStart;
pub use crate::shutdown::ShutdownHandle;
use crate::kafka_config::RedactedOptions;
use crate::metrics::PRODUCER_RECONNECTS;
use crate::{Backoff, Lsn, TopicInfo};

/// What [`Producer::check`] found: the routes the producer would stream, and the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// Every published table with its topic and partition-key columns, by table name.
    pub tables: Vec<CheckedTable>,
    /// The replication slot.
    pub slot: SlotStatus,
}

/// One published table, as the producer would stream it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckedTable {
    /// The records' `table_name`.
    pub table_name: String,
    /// The Kafka topic.
    pub topic: String,
    /// The columns of the message key (the primary key when the topic map names none).
    pub partition_key: Vec<String>,
}

/// The replication slot, as [`Producer::check`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotStatus {
    /// It does not exist yet, and the topics hold no records (or [`SlotMissingPolicy::Create`]
    /// is set); [`Producer::start`] creates it.
    Missing,
    /// It exists and no connection streams from it.
    Idle {
        /// Where streaming resumes.
        confirmed: Lsn,
    },
    /// Another connection streams from it.
    Active {
        /// Where that connection has confirmed to.
        confirmed: Lsn,
        /// The server process serving that connection.
        pid: i32,
    },
}

/// What the producer does when a published table is truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TruncatePolicy {
    /// Stop with [`ProducerError::Truncate`], without confirming the truncating transaction.
    #[default]
    Fail,
    /// Log a warning and go on; the truncate is not published.
    Skip,
}

/// What the producer does when another connection is streaming from its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlotInUsePolicy {
    /// Retry with backoff until the slot is free (a standby producer takes over when the active
    /// one dies).
    #[default]
    Wait,
    /// Return [`ProducerError::SlotInUse`] at once.
    Fail,
}

/// Everything a producer is told, as [`ProducerBuilder`] collects it. Crate-private: users
/// configure through the builder, which is the one place defaults and limits are applied.
#[derive(Clone)]
pub(crate) struct ProducerConfig {
    pub(crate) connection_string: String,
    pub(crate) brokers: String,
    pub(crate) slot_name: String,
    pub(crate) publication_name: String,
    pub(crate) topic_map: HashMap<String, TopicInfo>,
    pub(crate) kafka_options: Vec<(String, String)>,
    pub(crate) truncate_policy: TruncatePolicy,
    pub(crate) slot_in_use_policy: SlotInUsePolicy,
    pub(crate) slot_missing_policy: SlotMissingPolicy,
    pub(crate) slot_failover: bool,
    pub(crate) max_in_flight: usize,
    pub(crate) status_interval: Duration,
    pub(crate) reconnect_backoff_max: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) backfill: snapshot::backfill::BackfillSettings,
    pub(crate) snapshot: snapshot::Settings,
    pub(crate) output_format: OutputFormat,
    pub(crate) topic_formats: HashMap<String, OutputFormat>,
}

impl ProducerConfig {
    /// Every topic's output format, checked.
    pub(crate) fn formats(&self) -> Result<format::Formats, ProducerError> {
        let topics: Vec<&str> = self.topic_map.values().map(|info| info.name.as_str()).collect();
        format::Formats::new(&self.output_format, &self.topic_formats, &topics)
    }
}

/// Shows no secret: the connection string's password and secret Kafka options are hidden.
impl std::fmt::Debug for ProducerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerConfig")
            .field("connection_string", &crate::redact(&self.connection_string))
            .field("brokers", &self.brokers)
            .field("slot_name", &self.slot_name)
            .field("publication_name", &self.publication_name)
            .field("topic_map", &self.topic_map)
            .field("kafka_options", &RedactedOptions(&self.kafka_options))
            .field("truncate_policy", &self.truncate_policy)
            .field("slot_in_use_policy", &self.slot_in_use_policy)
            .field("slot_missing_policy", &self.slot_missing_policy)
            .field("slot_failover", &self.slot_failover)
            .field("max_in_flight", &self.max_in_flight)
            .field("status_interval", &self.status_interval)
            .field("reconnect_backoff_max", &self.reconnect_backoff_max)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("backfill", &self.backfill)
            .field("snapshot", &self.snapshot)
            .field("output_format", &self.output_format)
            .field("topic_formats", &self.topic_formats)
            .finish()
    }
}

/// Streams every row change of a publication's tables from a logical replication slot to Kafka.
///
/// ```no_run
/// use std::collections::HashMap;
/// use pgkafka::{Producer, TopicInfo};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let topic_map: HashMap<String, TopicInfo> = serde_json::from_value(serde_json::json!({
///     "inventory_table": { "name": "inventory_topic", "partition_key": ["organization_id"] },
/// }))?;
/// let producer = Producer::new(
///     "postgresql://username:password@localhost:5432/database".into(),
///     "localhost:9092".into(),
///     "slot_1".into(),
///     "publication_1".into(),
///     topic_map,
/// );
/// producer.start().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Producer {
    config: ProducerConfig,
    shutdown: CancellationToken,
}

/// Builds a [`Producer`] with settings beyond the five of [`Producer::new`].
#[derive(Debug)]
pub struct ProducerBuilder {
    config: ProducerConfig,
    shutdown: CancellationToken,
}

impl Producer {
    /// A producer for the given database, brokers, slot, publication and topic map, with default
    /// settings. Nothing is checked or connected until [`Producer::start`].
    #[must_use]
    pub fn new(
        connection_string: String,
        brokers: String,
        slot_name: String,
        publication_name: String,
        topic_map: HashMap<String, TopicInfo>,
    ) -> Self {
        Self::builder(connection_string, brokers, slot_name, publication_name, topic_map).build()
    }

    /// A builder for a producer with more settings.
    #[must_use]
    pub fn builder(
        connection_string: impl Into<String>,
        brokers: impl Into<String>,
        slot_name: impl Into<String>,
        publication_name: impl Into<String>,
        topic_map: HashMap<String, TopicInfo>,
    ) -> ProducerBuilder {
        ProducerBuilder {
            config: ProducerConfig {
                connection_string: connection_string.into(),
                brokers: brokers.into(),
                slot_name: slot_name.into(),
                publication_name: publication_name.into(),
                topic_map,
                kafka_options: Vec::new(),
                truncate_policy: TruncatePolicy::default(),
                slot_in_use_policy: SlotInUsePolicy::default(),
                slot_missing_policy: SlotMissingPolicy::default(),
                slot_failover: true,
                max_in_flight: 10_000,
                status_interval: Duration::from_secs(1),
                reconnect_backoff_max: Duration::from_secs(30),
                shutdown_timeout: Duration::from_secs(30),
                backfill: snapshot::backfill::BackfillSettings::default(),
                snapshot: snapshot::Settings::default(),
                output_format: OutputFormat::default(),
                topic_formats: HashMap::new(),
            },
            shutdown: CancellationToken::new(),
        }
    }

    /// A handle that stops this producer gracefully, from another task.
    #[must_use]
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.shutdown.clone())
    }

    /// Checks the configuration, the database and the brokers without streaming or creating
    /// anything: the publication, every table's topic-map entry, replica identity and key
    /// columns, the slot, and that Kafka answers.
    ///
    /// ```no_run
    /// # async fn run(producer: pgkafka::Producer) -> Result<(), pgkafka::ProducerError> {
    /// let report = producer.check().await?;
    /// for table in &report.tables {
    ///     println!("{} -> {} keyed by {:?}", table.table_name, table.topic, table.partition_key);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The first kind of problem found, saying what to fix (see [`ProducerError`]).
    pub async fn check(&self) -> Result<CheckReport, ProducerError> {
        let config = &self.config;
        let connection = startup::validate(config)?;
        let sink = Arc::new(Sink::new(config)?);
        let checked = async {
            let (client, routes) = startup::preflight(config, &connection, &sink, Attempt::First, false).await?;
            let slot = slot::inspect(&client, &config.slot_name, Attempt::First).await?;
            Ok::<_, Failure>((routes, slot))
        };
        let (routes, slot) = tokio::time::timeout(startup::TIMEOUT, checked)
            .await
            .map_err(|_| {
                ProducerError::Postgres(format!(
                    "checking {} took longer than {:?}; is the server reachable?",
                    connection.redacted,
                    startup::TIMEOUT
                ))
            })?
            .map_err(Failure::into_error)?;
        let slot = match slot {
            None => {
                let evidence = sink.records_in(routes.topics()).await?;
                slot_guard::on_missing(&config.slot_name, SessionStart::First, config.slot_missing_policy, &evidence)?;
                SlotStatus::Missing
            }
            Some(state) => {
                state.usable(&config.slot_name)?;
                match state.active_pid {
                    None => SlotStatus::Idle { confirmed: state.confirmed_flush },
                    Some(pid) => SlotStatus::Active { confirmed: state.confirmed_flush, pid },
                }
            }
        };
        Ok(CheckReport {
            tables: routes
                .all()
                .map(|route| CheckedTable {
                    table_name: route.table_name.clone(),
                    topic: route.topic.clone(),
                    partition_key: route.key_columns.clone(),
                })
                .collect(),
            slot,
        })
    }

    /// Checks the configuration and the database, then streams until shut down or a fatal error.
    ///
    /// # Errors
    /// A [`ProducerError`] saying what to fix. Lost connections are retried, not returned.
    pub async fn start(&self) -> Result<(), ProducerError> {
        let config = &self.config;
        let connection = startup::validate(config)?;
        let span = tracing::info_span!("pgkafka_producer", slot = %config.slot_name);
        let reconnects = PRODUCER_RECONNECTS.slot_counter(&config.slot_name);
        let mut sink = Arc::new(Sink::new(config)?);
        let mut start = SessionStart::First;
        let mut backoff = Backoff::new(Duration::from_millis(250), config.reconnect_backoff_max);
        loop {
            let started = Instant::now();
            let result = tracing::Instrument::instrument(
                session::run(config, &connection, &sink, &self.shutdown, start),
                span.clone(),
            )
            .await;
            let (reason, new_kafka_client) = match result {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(error)) => {
                    // Deliver what can be delivered, so a restart re-sends as little as possible.
                    let _ = sink.drain(tokio::time::sleep(config.shutdown_timeout.min(Duration::from_secs(5)))).await;
                    return Err(error);
                }
                Err(Failure::Retry { reason, new_kafka_client }) => (reason, new_kafka_client),
            };
            // What this process delivered for sure, should the slot be gone when it reconnects
            // (the sink's position stays 0/0 when the session never opened the stream).
            start = start.next(sink.progress().0);
            reconnects.increment(1);
            if started.elapsed() > Duration::from_secs(60) {
                backoff.reset();
            }
            tracing::warn!(parent: &span, %reason, retry_in = ?backoff.peek(), "replication session ended; resuming from the slot");
            // Re-sent records must not overtake records of the last session still in flight:
            // wait until Kafka has acknowledged all of them, or start over with a new client.
            if new_kafka_client || !sink.drain(self.shutdown.cancelled()).await {
                if self.shutdown.is_cancelled() {
                    return Ok(());
                }
                sink.purge();
                sink = Arc::new(Sink::new(config)?);
            }
            if !backoff.wait(self.shutdown.cancelled()).await {
                return Ok(());
            }
        }
    }
}

impl ProducerBuilder {
    /// Sets a librdkafka producer property (`security.protocol`, `sasl.mechanisms`,
    /// `linger.ms`, ...). pgkafka always sets `enable.idempotence=true`, `acks=all`,
    /// `enable.gapless.guarantee=true`, `message.timeout.ms=0` and
    /// `partitioner=consistent_random`; setting them otherwise is a configuration error.
    #[must_use]
    pub fn kafka_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.kafka_options.push((key.into(), value.into()));
        self
    }

    /// What to do when a published table is truncated.
    #[must_use]
    pub fn truncate_policy(mut self, policy: TruncatePolicy) -> Self {
        self.config.truncate_policy = policy;
        self
    }

    /// What to do when another connection streams from the slot.
    #[must_use]
    pub fn slot_in_use_policy(mut self, policy: SlotInUsePolicy) -> Self {
        self.config.slot_in_use_policy = policy;
        self
    }

    /// What to do when the slot does not exist at start while the mapped topics already hold
    /// records (default [`SlotMissingPolicy::Refuse`]: stop with [`ProducerError::SlotLost`]).
    /// A slot missing on a reconnect always stops the producer.
    #[must_use]
    pub fn slot_missing_policy(mut self, policy: SlotMissingPolicy) -> Self {
        self.config.slot_missing_policy = policy;
        self
    }

    /// Whether the slot is created with `failover = true` on PostgreSQL 17 and later (default
    /// on), so standbys that synchronize slots (`sync_replication_slots`) have it after a
    /// promotion. Older servers have no failover slots; this setting does nothing there.
    #[must_use]
    pub fn slot_failover(mut self, failover: bool) -> Self {
        self.config.slot_failover = failover;
        self
    }

    /// The most messages handed to Kafka and not yet acknowledged (default 10,000). Reading from
    /// the slot pauses while the window is full, which bounds memory.
    #[must_use]
    pub fn max_in_flight(mut self, messages: usize) -> Self {
        self.config.max_in_flight = messages.max(1);
        self
    }

    /// How often the confirmed position is reported to PostgreSQL (default 1 s). Zero is a
    /// configuration error at [`Producer::start`].
    #[must_use]
    pub fn status_interval(mut self, interval: Duration) -> Self {
        self.config.status_interval = interval;
        self
    }

    /// The longest wait between reconnection attempts (default 30 s).
    #[must_use]
    pub fn reconnect_backoff_max(mut self, max: Duration) -> Self {
        self.config.reconnect_backoff_max = max;
        self
    }

    /// How long a graceful shutdown waits for Kafka to acknowledge what is in flight
    /// (default 30 s). What is not acknowledged by then is re-sent after a restart.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Whether the producer first publishes every existing row of the published tables when it
    /// creates its slot (default [`SnapshotMode::Never`]; see the README's "Snapshots").
    #[must_use]
    pub fn snapshot(mut self, mode: SnapshotMode) -> Self {
        self.config.snapshot.mode = mode;
        self
    }

    /// The table in the source database that records snapshot progress (default
    /// `public.pgkafka_snapshots`; `schema.table`, or a bare name for `public`). It is created
    /// only when snapshots are enabled, and never streamed.
    #[must_use]
    pub fn snapshot_table(mut self, table: impl Into<String>) -> Self {
        self.config.snapshot.table = table.into();
        self
    }

    /// How many rows a snapshot reads per query (default 10,000): each chunk is one short query
    /// in key order, and progress is recorded per acknowledged chunk.
    #[must_use]
    pub fn snapshot_chunk_rows(mut self, rows: usize) -> Self {
        self.config.snapshot.chunk_rows = rows.max(1);
        self
    }

    /// How many connections read tables in parallel during a snapshot (default 1), all in the
    /// same exported snapshot. Rows are still sent one chunk at a time.
    #[must_use]
    pub fn snapshot_readers(mut self, readers: usize) -> Self {
        self.config.snapshot.readers = readers.max(1);
        self
    }

    /// How records are written, for every topic without a [`topic_format`](Self::topic_format)
    /// (default [`OutputFormat::Pgkafka`]).
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// use pgkafka::{DebeziumOptions, OutputFormat, Producer};
    ///
    /// let producer = Producer::builder("postgresql://localhost/app", "localhost:9092", "slot", "pub", HashMap::new())
    ///     .output_format(OutputFormat::Debezium(DebeziumOptions::new("app")))
    ///     .build();
    /// ```
    #[must_use]
    pub fn output_format(mut self, format: OutputFormat) -> Self {
        self.config.output_format = format;
        self
    }

    /// How the records of `topic` (a topic the topic map writes to) are written, instead of
    /// the [`output_format`](Self::output_format). The Debezium formats of one producer share
    /// one `name`.
    #[must_use]
    pub fn topic_format(mut self, topic: impl Into<String>, format: OutputFormat) -> Self {
        self.config.topic_formats.insert(topic.into(), format);
        self
    }

    /// Stops the producer when `token` is cancelled (see [`ShutdownHandle`] for what a stop
    /// does), e.g. one token for every part of an application. Replaces the producer's own
    /// token, so handles taken before this call no longer apply.
    #[must_use]
    pub fn with_shutdown_token(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// The producer.
    #[must_use]
    pub fn build(self) -> Producer {
        Producer { config: self.config, shutdown: self.shutdown }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What the error of `start()` says, without a server (the settings are checked first).
    fn start_error(builder: ProducerBuilder) -> ProducerError {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(builder.build().start()).unwrap_err()
    }

    fn builder() -> ProducerBuilder {
        Producer::builder("postgresql://u:hunter2@localhost:1/d", "localhost:1", "slot", "pub", HashMap::new())
    }

    #[test]
    fn debug_prints_no_secret() {
        for connection_string in ["host=h user=u password=hunter2 dbname=d", "postgresql://u:hunter2@h/d"] {
            let builder = Producer::builder(connection_string, "b:9092", "slot", "pub", HashMap::new())
                .kafka_option("sasl.password", "s3cret")
                .kafka_option("ssl.key.password", "k3y")
                .kafka_option("sasl.oauthbearer.client.secret", "t0ken");
            let shown = format!("{builder:?}");
            let producer = builder.build();
            let shown = format!("{shown}\n{producer:?}\n{:#?}", producer.config);
            for secret in ["hunter2", "s3cret", "k3y", "t0ken"] {
                assert!(!shown.contains(secret), "Debug shows {secret}:\n{shown}");
            }
            assert!(shown.contains("sasl.password") && shown.contains("slot_name"), "{shown}");
        }
    }

    /// A server that accepts the connection and then never answers (a network blackhole):
    /// a shutdown still ends `start()` at once instead of waiting on the handshake. Without the
    /// shutdown-aware startup this test waits out its 10 s limit.
    #[test]
    fn shutdown_ends_start_while_the_database_does_not_answer() {
        let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = blackhole.local_addr().unwrap().port();
        let token = CancellationToken::new();
        let producer = Producer::builder(
            format!("postgresql://u:p@127.0.0.1:{port}/d?sslmode=disable"),
            "127.0.0.1:1",
            "slot",
            "pub",
            HashMap::new(),
        )
        .with_shutdown_token(token.clone())
        .build();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let started = std::time::Instant::now();
        let result = runtime.block_on(async {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                token.cancel();
            });
            tokio::time::timeout(Duration::from_secs(10), producer.start()).await
        });
        assert!(matches!(result, Ok(Ok(()))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        drop(blackhole);
    }

    #[test]
    fn a_zero_status_interval_is_a_configuration_error_not_a_panic() {
        let error = start_error(builder().status_interval(Duration::ZERO));
        assert!(matches!(error, ProducerError::Config(_)) && error.to_string().contains("status_interval"), "{error}");
    }

    #[test]
    fn pinned_kafka_settings_are_refused_naming_the_setting() {
        for (key, value) in [
            ("enable.gapless.guarantee", "false"),
            ("message.timeout.ms", "30000"),
            ("partitioner", "murmur2_random"),
            ("acks", "1"),
            ("enable.idempotence", "false"),
        ] {
            let error = start_error(builder().kafka_option(key, value));
            assert!(matches!(error, ProducerError::Config(_)), "{key}: {error:?}");
            assert!(error.to_string().contains(&format!("{key}={value}")), "{error}");
        }
    }
}
