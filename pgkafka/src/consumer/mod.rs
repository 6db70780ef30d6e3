//! Kafka consumers that hand each [`ReplicationOp`](crate::ReplicationOp) to your application.
//!
//! Two ways to run a [`Consumer`]:
//!
//! - [`Consumer::start_basic`] runs a [`BasicApplication`]: at least once, in offset order per
//!   partition.
//! - [`Consumer::start_idempotent`] runs an [`IdempotentApplication`]: exactly-once effects, in
//!   offset order per partition, by recording progress in the same PostgreSQL transaction as the
//!   application's writes (see [`Consumer::start_idempotent`] for the state table).
//!
//! # How messages flow
//!
//! One thread polls Kafka (librdkafka's `BaseConsumer`, with `enable.auto.commit=false` and
//! `enable.auto.offset.store=false`) and hands each record to a task of its own partition. A
//! partition's task handles its records strictly one after another, in offset order; tasks of
//! different partitions run concurrently, at most [`Consumer::max_concurrent_partitions`] at a
//! time. A partition whose task falls behind is paused in librdkafka, so one slow partition holds
//! neither memory nor the others.
//!
//! Offsets are committed (every [`Consumer::commit_interval`], on rebalance, and at the end) only
//! up to the first record whose handling has not finished. When partitions are revoked, their
//! tasks finish the op in hand (a transient-error backoff is cut short), the finished offsets are
//! committed synchronously, and only then does the rebalance go on: the next owner starts exactly
//! after what was handled. An offset counts as committed once Kafka confirms it (librdkafka's
//! commit callback for the periodic asynchronous commits): a failed commit is sent again by the
//! next one.
//!
//! The modules: `run` (the poll loop, rebalances, commits), `partition` (one partition's queue
//! and task), `burst` (a poll burst's records, copied by the poll thread for the task to decode),
//! `format` (a record value read as pgkafka's op or a Debezium event, or passed over),
//! `processor` (the basic processor and the retry loop around either processor),
//! `idempotent` (the idempotent processor), `dead_letter`, `halt` (the stop signal) and `error`.

mod burst;
mod dead_letter;
mod error;
mod format;
mod halt;
mod idempotent;
mod origin;
mod partition;
mod processor;
mod run;
mod state_table;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use error::ConsumerError;
pub use format::RecordFormat;
pub use pgkafka_common::debezium::Positions as DebeziumPositions;

use async_trait::async_trait;
use futures::FutureExt as _;
use sqlx::{Postgres, Transaction};
use tokio_util::sync::CancellationToken;

use crate::kafka_config::RedactedOptions;
use crate::ReplicationOp;

/// An application run by [`Consumer::start_basic`]: ops of one partition arrive one at a time, in
/// offset order; ops of different partitions may be handled concurrently.
///
/// Delivery is at least once: after a crash, the ops handled since the last offset commit are
/// handed over again. Use [`IdempotentApplication`] when effects must happen exactly once.
#[async_trait]
pub trait BasicApplication: Send + Sync + 'static {
    /// Handles one op. An error says whether to retry it or stop, see [`ConsumerError`].
    async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError>;

    /// Checked once when the consumer starts, before it subscribes: an error stops
    /// [`Consumer::start_basic`] with it. The default accepts.
    ///
    /// # Errors
    /// Why the application cannot run as configured (usually a [`ConsumerError::Config`]).
    fn validate(&self) -> Result<(), ConsumerError> {
        Ok(())
    }
}

/// An application run by [`Consumer::start_idempotent`]: each op is applied exactly once, inside
/// the PostgreSQL transaction that also records the consumer's progress.
///
/// Write your effects through `tx` only: what is written elsewhere (another connection, an HTTP
/// call) is not rolled back with the transaction and may happen more than once.
#[async_trait]
pub trait IdempotentApplication: Send + Sync + 'static {
    /// Applies one op inside `tx`. Everything written through `tx` commits together with the
    /// record that this op was processed, or not at all.
    async fn handle_message(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        op: &ReplicationOp,
    ) -> Result<(), ConsumerError>;

    /// Checked once when the consumer starts, before it connects to the database or subscribes:
    /// an error stops [`Consumer::start_idempotent`] with it. The default accepts.
    ///
    /// # Errors
    /// Why the application cannot run as configured (usually a [`ConsumerError::Config`]).
    fn validate(&self) -> Result<(), ConsumerError> {
        Ok(())
    }
}

/// A shared application: `Consumer::new(.., Arc::clone(&app))` keeps a handle to it.
#[async_trait]
impl<T: BasicApplication + ?Sized> BasicApplication for Arc<T> {
    async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
        (**self).handle_message(op).await
    }

    fn validate(&self) -> Result<(), ConsumerError> {
        (**self).validate()
    }
}

/// A shared application: `Consumer::new(.., Arc::clone(&app))` keeps a handle to it.
#[async_trait]
impl<T: IdempotentApplication + ?Sized> IdempotentApplication for Arc<T> {
    async fn handle_message(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        op: &ReplicationOp,
    ) -> Result<(), ConsumerError> {
        (**self).handle_message(tx, op).await
    }

    fn validate(&self) -> Result<(), ConsumerError> {
        (**self).validate()
    }
}

/// Where the op being handled came from: its Kafka record's topic, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageInfo {
    /// The record's topic.
    pub topic: String,
    /// The record's partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// Whether the record is a row of a snapshot (its `pgkafka.snapshot` header) rather than a
    /// streamed change. Its op is then an ordinary insert.
    pub snapshot: Option<SnapshotKind>,
}

/// Which kind of snapshot a record comes from (the record's
/// [`pgkafka.snapshot`](pgkafka_common::headers::SNAPSHOT) header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SnapshotKind {
    /// The initial snapshot, taken when the producer created its slot.
    Initial,
    /// An on-demand backfill while the producer streamed.
    Backfill,
}

impl SnapshotKind {
    /// The kind a record's headers name, or `None` for a streamed change (or an unknown value,
    /// which a newer producer may write: the op is still a valid insert).
    pub(crate) fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Option<Self> {
        headers.into_iter().find(|(key, _)| *key == pgkafka_common::headers::SNAPSHOT).and_then(|(_, value)| match value? {
            b"initial" => Some(Self::Initial),
            b"backfill" => Some(Self::Backfill),
            _ => None,
        })
    }
}

tokio::task_local! {
    static CURRENT_MESSAGE: MessageInfo;
}

/// The Kafka record of the op being handled, when called from inside a `handle_message` run by a
/// [`Consumer`] (`None` elsewhere). For logs and error messages.
///
/// ```
/// use pgkafka::{async_trait::async_trait, BasicApplication, ConsumerError, ReplicationOp};
///
/// struct Audit;
///
/// #[async_trait]
/// impl BasicApplication for Audit {
///     async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
///         if let Some(at) = pgkafka::consumer::current_message() {
///             println!("{} from {}/{} offset {}", op.table_name, at.topic, at.partition, at.offset);
///         }
///         Ok(())
///     }
/// }
/// ```
#[must_use]
pub fn current_message() -> Option<MessageInfo> {
    CURRENT_MESSAGE.try_with(Clone::clone).ok()
}

/// Runs the application's `handler` for the op of the record at `topic`/`partition`/`offset`, with
/// `current_message()` telling where it came from. A panic in it becomes the fatal
/// [`ConsumerError::HandlerPanicked`] instead of ending the partition's task: a retry would most
/// likely panic again, and a silent stall is the one outcome a consumer must never have.
pub(crate) async fn call_handler<F>(
    topic: &str,
    partition: i32,
    offset: i64,
    snapshot: Option<SnapshotKind>,
    handler: F,
) -> Result<(), ConsumerError>
where
    F: std::future::Future<Output = Result<(), ConsumerError>>,
{
    let scoped = CURRENT_MESSAGE.scope(MessageInfo { topic: topic.to_owned(), partition, offset, snapshot }, handler);
    // Unwind safety: after a panic the consumer stops and never calls the application again.
    match std::panic::AssertUnwindSafe(scoped).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let message = match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
                (Some(text), _) => (*text).to_owned(),
                (None, Some(text)) => text.clone(),
                (None, None) => "a panic without a message".to_owned(),
            };
            Err(ConsumerError::HandlerPanicked { topic: topic.to_owned(), partition, offset, message })
        }
    }
}

/// What the consumer does with a Kafka record that is not a valid [`ReplicationOp`] or Debezium
/// change event (not JSON, the wrong shape, a Debezium `TRUNCATE`, or no value at all under
/// [`RecordFormat::Pgkafka`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum InvalidMessagePolicy {
    /// Stop with [`ConsumerError::InvalidMessage`] (naming topic, partition and offset) without
    /// committing past the record. The default: nothing is lost silently.
    #[default]
    Stop,
    /// Log the error, count it (`pgkafka_consumer_invalid_messages_total`) and go on.
    Skip,
    /// Copy the record (key, value, and headers `pgkafka.topic`, `pgkafka.partition`,
    /// `pgkafka.offset`, `pgkafka.error`) to this topic, then go on. The offset moves past the
    /// record only once the broker acknowledged the copy.
    DeadLetter(String),
}

pub use crate::shutdown::ShutdownHandle;

/// Consumes [`ReplicationOp`]s from Kafka topics in a consumer group.
///
/// [`Consumer::new`] takes what the earlier library took; the chainable methods set everything
/// else. Then [`start_basic`](Consumer::start_basic) or
/// [`start_idempotent`](Consumer::start_idempotent) runs it until a fatal error or a shutdown.
///
/// ```no_run
/// use std::time::Duration;
/// use pgkafka::{async_trait::async_trait, BasicApplication, Consumer, ConsumerError, ReplicationOp};
/// use pgkafka::consumer::InvalidMessagePolicy;
///
/// struct Printer;
///
/// #[async_trait]
/// impl BasicApplication for Printer {
///     async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
///         println!("{} {:?}", op.table_name, op.op);
///         Ok(())
///     }
/// }
///
/// # async fn run() -> Result<(), ConsumerError> {
/// let consumer = Consumer::new("printer", vec!["inventory_topic"], "localhost:9092", Printer)
///     .kafka_option("security.protocol", "sasl_ssl")
///     .kafka_option("session.timeout.ms", "10000")
///     .max_concurrent_partitions(8)
///     .retry_backoff(Duration::from_millis(50), Duration::from_secs(10))
///     .invalid_message_policy(InvalidMessagePolicy::DeadLetter("inventory_dlq".into()));
/// let stop = consumer.shutdown_handle();
/// tokio::spawn(async move {
///     let _ = tokio::signal::ctrl_c().await;
///     stop.shutdown();
/// });
/// consumer.start_basic().await
/// # }
/// ```
pub struct Consumer<A> {
    app: A,
    settings: Settings,
}

/// Everything about a consumer except its application.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) group_id: String,
    pub(crate) topics: Vec<String>,
    pub(crate) brokers: String,
    pub(crate) kafka_options: Vec<(String, String)>,
    pub(crate) max_concurrent_partitions: usize,
    pub(crate) retry_initial: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) invalid_messages: InvalidMessagePolicy,
    pub(crate) commit_interval: Duration,
    pub(crate) state_schema: Option<String>,
    pub(crate) state_table: String,
    pub(crate) batch_size: usize,
    pub(crate) batch_linger: Duration,
    pub(crate) pool_size: Option<u32>,
    pub(crate) transaction_idle_timeout: Option<Duration>,
    pub(crate) max_queued_per_partition: usize,
    pub(crate) record_formats: Vec<(String, RecordFormat)>,
    pub(crate) debezium_positions: DebeziumPositions,
    pub(crate) shutdown: CancellationToken,
}

/// Kafka options through [`RedactedOptions`]: a `sasl.password` never reaches a log line.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("brokers", &self.brokers)
            .field("kafka_options", &RedactedOptions(&self.kafka_options))
            .field("max_concurrent_partitions", &self.max_concurrent_partitions)
            .field("retry_initial", &self.retry_initial)
            .field("retry_max", &self.retry_max)
            .field("invalid_messages", &self.invalid_messages)
            .field("commit_interval", &self.commit_interval)
            .field("state_schema", &self.state_schema)
            .field("state_table", &self.state_table)
            .field("batch_size", &self.batch_size)
            .field("batch_linger", &self.batch_linger)
            .field("pool_size", &self.pool_size)
            .field("max_queued_per_partition", &self.max_queued_per_partition)
            .field("record_formats", &self.record_formats)
            .field("debezium_positions", &self.debezium_positions)
            .finish_non_exhaustive()
    }
}

/// Settings only, secrets hidden (the application need not be `Debug`).
impl<A> fmt::Debug for Consumer<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// The default name of the idempotent consumer's state table.
pub const DEFAULT_STATE_TABLE: &str = "pgkafka_consumer_offsets";

impl<A> Consumer<A> {
    /// A consumer in group `group_id` of `topics` on `brokers` (a comma-separated bootstrap list),
    /// running `app`, with default settings.
    ///
    /// ```no_run
    /// # use pgkafka::{async_trait::async_trait, BasicApplication, Consumer, ConsumerError, ReplicationOp};
    /// # struct BasicApp {}
    /// # #[async_trait]
    /// # impl BasicApplication for BasicApp {
    /// #     async fn handle_message(&self, _: &ReplicationOp) -> Result<(), ConsumerError> { Ok(()) }
    /// # }
    /// # async fn run() {
    /// let app = BasicApp {};
    /// let consumer = Consumer::new("consumer_group_name", vec!["topic_name_1", "topic_name_2"], "localhost:9092", app);
    /// consumer.start_basic().await.unwrap();
    /// # }
    /// ```
    pub fn new<T: Into<String>>(
        group_id: impl Into<String>,
        topics: impl IntoIterator<Item = T>,
        brokers: impl Into<String>,
        app: A,
    ) -> Self {
        Consumer {
            app,
            settings: Settings {
                group_id: group_id.into(),
                topics: topics.into_iter().map(Into::into).collect(),
                brokers: brokers.into(),
                kafka_options: Vec::new(),
                max_concurrent_partitions: 16,
                retry_initial: Duration::from_millis(100),
                retry_max: Duration::from_secs(30),
                invalid_messages: InvalidMessagePolicy::Stop,
                commit_interval: Duration::from_secs(1),
                state_schema: None,
                state_table: DEFAULT_STATE_TABLE.to_owned(),
                batch_size: 100,
                batch_linger: Duration::from_millis(5),
                pool_size: None,
                transaction_idle_timeout: None,
                max_queued_per_partition: 20_000,
                record_formats: Vec::new(),
                debezium_positions: DebeziumPositions::default(),
                shutdown: CancellationToken::new(),
            },
        }
    }

    /// The same as [`Consumer::new`], which takes the same arguments and the same chained
    /// settings.
    #[deprecated(note = "use Consumer::new: it takes the same arguments and the same chained settings")]
    pub fn builder<T: Into<String>>(
        group_id: impl Into<String>,
        topics: impl IntoIterator<Item = T>,
        brokers: impl Into<String>,
        app: A,
    ) -> Self {
        Self::new(group_id, topics, brokers, app)
    }

    /// Sets a librdkafka consumer property, passed through as is: `session.timeout.ms`,
    /// `heartbeat.interval.ms`, `security.protocol`, `sasl.mechanism`, `sasl.username`,
    /// `sasl.password`, `ssl.ca.location`, `client.id`, `auto.offset.reset`, ...
    ///
    /// pgkafka sets `auto.offset.reset=earliest` (a new group starts at the beginning of the
    /// topics, so no change is missed) and `fetch.queue.backoff.ms=10` (librdkafka's 1 s left
    /// handlers faster than the fetcher idle), which this overrides. `enable.auto.commit` and
    /// `enable.auto.offset.store` are pgkafka's to manage: setting them to anything but `false`
    /// is a [`ConsumerError::Config`] at start. Secret values (`sasl.password`, ...) never appear
    /// in `Debug` output.
    #[must_use]
    pub fn kafka_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.kafka_options.push((key.into(), value.into()));
        self
    }

    /// How many partitions are handled at the same time (default 16). The idempotent consumer's
    /// connection pool has this many connections plus one, unless [`Consumer::pool_size`] says
    /// otherwise.
    #[must_use]
    pub fn max_concurrent_partitions(mut self, n: usize) -> Self {
        self.settings.max_concurrent_partitions = n.max(1);
        self
    }

    /// The backoff before retrying an op after a transient error: `initial`, doubling up to `max`
    /// (defaults 100 ms and 30 s).
    #[must_use]
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.settings.retry_initial = initial;
        self.settings.retry_max = max.max(initial);
        self
    }

    /// What to do with records that are not valid [`ReplicationOp`]s (default
    /// [`InvalidMessagePolicy::Stop`]).
    #[must_use]
    pub fn invalid_message_policy(mut self, policy: InvalidMessagePolicy) -> Self {
        self.settings.invalid_messages = policy;
        self
    }

    /// How often finished offsets are committed to Kafka while running (default 1 s). They are
    /// also committed on rebalance and at the end.
    #[must_use]
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.settings.commit_interval = interval;
        self
    }

    /// The idempotent consumer's state table (default [`DEFAULT_STATE_TABLE`], in the first schema
    /// of the connection's `search_path`). The name is used as is, quoted.
    #[must_use]
    pub fn state_table(mut self, table: impl Into<String>) -> Self {
        self.settings.state_table = table.into();
        self
    }

    /// The schema of the idempotent consumer's state table (default: the connection's
    /// `search_path`). It must exist.
    #[must_use]
    pub fn state_schema(mut self, schema: impl Into<String>) -> Self {
        self.settings.state_schema = Some(schema.into());
        self
    }

    /// The idempotent consumer applies up to `n` consecutive ops of one partition in one
    /// database transaction (default 100; 1 turns batching off). See
    /// [`Consumer::start_idempotent`] for the trade-off.
    #[must_use]
    pub fn batch_size(mut self, n: usize) -> Self {
        self.settings.batch_size = n.max(1);
        self
    }

    /// How long the idempotent consumer waits for more ops of a partition to fill a batch once it
    /// has one (default 5 ms). Ops already received are batched without waiting.
    #[must_use]
    pub fn batch_linger(mut self, linger: Duration) -> Self {
        self.settings.batch_linger = linger;
        self
    }

    /// How many records of one partition may wait for its handler (default 20,000). Past that the
    /// partition is paused in librdkafka, other partitions go on, and it resumes at half: memory
    /// stays bounded behind a slow handler. Resuming while half is still queued lets librdkafka's
    /// re-fetch overlap the handler's work; resuming near empty starved the handler for a fetch
    /// round trip at every cycle (a fifth of raw librdkafka's rate in the benchmark).
    #[must_use]
    pub fn max_queued_per_partition(mut self, records: usize) -> Self {
        self.settings.max_queued_per_partition = records.max(2);
        self
    }

    /// The size of the idempotent consumer's PostgreSQL connection pool (default
    /// [`max_concurrent_partitions`](Consumer::max_concurrent_partitions) + 1). A connection
    /// whose batch committed is kept for the next batch rather than returned (sqlx checks each
    /// returned connection with a round trip); at most one fewer than the pool's size are kept,
    /// each for at most 5 seconds, and all of them go back after a failed batch.
    #[must_use]
    pub fn pool_size(mut self, n: u32) -> Self {
        self.settings.pool_size = Some(n.max(1));
        self
    }

    /// How long the idempotent consumer's database sessions may sit idle inside a transaction
    /// before PostgreSQL ends them (`idle_in_transaction_session_timeout`; default: the Kafka
    /// `session.timeout.ms` given through [`Consumer::kafka_option`], else librdkafka's 45 s;
    /// `Duration::ZERO` turns it off).
    ///
    /// This bounds how long a frozen instance (SIGSTOP, a VM pause, a long GC) can keep a
    /// partition's row lock: when the group hands its partitions to another member, about a
    /// session timeout after the freeze, the frozen instance's transaction is gone and the new
    /// owner goes on. When it wakes, its transaction fails and is retried, and it sees what the new
    /// owner applied. The price: a handler that keeps its transaction idle longer than this (a
    /// slow call to another service between two statements) has its session ended and the batch
    /// retried.
    #[must_use]
    pub fn transaction_idle_timeout(mut self, timeout: Duration) -> Self {
        self.settings.transaction_idle_timeout = Some(timeout);
        self
    }

    /// The format of `topic`'s records (default [`RecordFormat::Detect`]: each record is read as
    /// pgkafka's `ReplicationOp`, else as a Debezium change event). [`RecordFormat::Debezium`]
    /// reads a topic written by Debezium's PostgreSQL connector: its events become the same
    /// [`ReplicationOp`]s pgkafka's producer would have written for the same changes, and its
    /// tombstones, transaction boundaries and heartbeats are passed over (counted in
    /// `pgkafka_consumer_records_skipped_total`). [`RecordFormat::Pgkafka`] refuses anything
    /// else, a record without a value included, as invalid.
    ///
    /// ```no_run
    /// # use pgkafka::{async_trait::async_trait, BasicApplication, Consumer, ConsumerError, ReplicationOp};
    /// use pgkafka::consumer::RecordFormat;
    /// # struct App;
    /// # #[async_trait]
    /// # impl BasicApplication for App {
    /// #     async fn handle_message(&self, _: &ReplicationOp) -> Result<(), ConsumerError> { Ok(()) }
    /// # }
    /// let consumer = Consumer::new("audit", vec!["dbserver1.public.customers"], "localhost:9092", App)
    ///     .record_format("dbserver1.public.customers", RecordFormat::Debezium);
    /// ```
    #[must_use]
    pub fn record_format(mut self, topic: impl Into<String>, format: RecordFormat) -> Self {
        let topic = topic.into();
        self.settings.record_formats.retain(|(t, _)| *t != topic);
        self.settings.record_formats.push((topic, format));
        self
    }

    /// How Debezium change events get their position (`lsn`, `seq_id`), see
    /// [`DebeziumPositions`]. By default ([`DebeziumPositions::TransactionOrder`]) an event must
    /// carry Debezium's `transaction` block (`provide.transaction.metadata=true`), whose
    /// `total_order` is its `seq_id`, and one without it is an invalid record.
    /// [`DebeziumPositions::ChangeLsn`] takes the change's LSN instead: it survives restarts of
    /// any Debezium version, but the rows of one `COPY` share it, and the idempotent consumer
    /// would take all but the first for duplicates.
    #[must_use]
    pub fn debezium_positions(mut self, positions: DebeziumPositions) -> Self {
        self.settings.debezium_positions = positions;
        self
    }

    /// Stops the consumer when `token` is cancelled (see [`ShutdownHandle`] for what a stop does).
    /// Replaces the consumer's own token, so handles taken before this call no longer apply.
    #[must_use]
    pub fn with_shutdown_token(mut self, token: CancellationToken) -> Self {
        self.settings.shutdown = token;
        self
    }

    /// A handle that stops the consumer gracefully.
    #[must_use]
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.settings.shutdown.clone())
    }
}

impl<A: BasicApplication> Consumer<A> {
    /// Runs the basic consumer until a fatal error or a shutdown.
    ///
    /// Ops of a partition are handed to the application one at a time, in offset order, at least
    /// once: after a crash, ops handled since the last commit are handled again.
    ///
    /// # Errors
    /// The fatal [`ConsumerError`] that stopped it (the application's, an invalid record under
    /// [`InvalidMessagePolicy::Stop`], a fatal Kafka error, a bad configuration). Offsets of the
    /// ops whose handling finished are committed before it returns.
    ///
    /// # Cancellation
    /// Dropping the returned future stops the consumer as a shutdown does: the op in hand
    /// finishes, what finished is committed, and the consumer leaves its group (in the
    /// background, after the future is gone).
    pub async fn start_basic(self) -> Result<(), ConsumerError> {
        self.app.validate()?;
        run::run(self.settings, Arc::new(processor::BasicProcessor::new(self.app))).await
    }
}

impl<A: IdempotentApplication> Consumer<A> {
    /// Runs the idempotent consumer until a fatal error or a shutdown, keeping its progress in
    /// the database at `connection_string` (the application's own).
    ///
    /// # Exactly once
    ///
    /// The state table (default `pgkafka_consumer_offsets`, see [`Consumer::state_table`] and
    /// [`Consumer::state_schema`]) holds one row per (group, topic, partition):
    ///
    /// | column | type | meaning |
    /// |---|---|---|
    /// | `group_id` | `text` | the consumer group |
    /// | `topic` | `text` | the topic |
    /// | `partition` | `integer` | the partition |
    /// | `lsn` | `pg_lsn` | `lsn` of the last op applied (`NULL`: none yet) |
    /// | `seq_id` | `numeric(20,0)` | `seq_id` of that op (`numeric`: a `u64` does not fit a `bigint`) |
    /// | `updated_at` | `timestamptz` | when it last moved |
    /// | `system_id`, `timeline`, `slot` | `text`, `bigint`, `text` | the origin of that op, from its record's headers (`NULL` without them) |
    ///
    /// with primary key `(group_id, topic, partition)`. It is created at start if missing;
    /// otherwise its primary key and column types are checked (a wrong table is a
    /// [`ConsumerError::Config`] naming the column and the expected type), and a table of the
    /// earlier shape gets the origin columns.
    ///
    /// An op whose origin (another cluster or slot, or a timeline that went back below the stored
    /// position) does not continue the stored position is neither applied nor skipped:
    /// [`ConsumerError::OriginChanged`] says what happened and how to reset the partition's row.
    ///
    /// For each op (or batch of ops) of a partition the consumer begins a transaction, locks the
    /// partition's row (`SELECT ... FOR UPDATE`, inserting it first if missing), skips every op
    /// whose `(lsn, seq_id)` is not greater than the stored one — a re-send by a restarted
    /// producer, or a redelivery after a crash or rebalance — hands the others to the application
    /// with the same transaction, stores the new position and commits. The database, not Kafka,
    /// is the truth: Kafka offsets are committed only as a starting point. Because the row is
    /// locked, two instances that both believe they own a partition (during a rebalance, or a
    /// zombie) take turns, and the second sees what the first applied. A zombie frozen inside its
    /// transaction holds the lock at most [`Consumer::transaction_idle_timeout`].
    ///
    /// An application error rolls the transaction back, its writes with it; the op is retried
    /// (transient) or the consumer stops (fatal).
    ///
    /// # Batching
    ///
    /// By default up to 100 consecutive ops of a partition ([`Consumer::batch_size`]), gathered
    /// for at most 5 ms ([`Consumer::batch_linger`]), share one transaction: one lock, one state
    /// update and one commit (one WAL flush) per batch instead of per op, the main costs of a small
    /// op. The cost: an error in any op rolls the whole batch back, and the whole batch is
    /// retried; the row lock is held for the batch's duration; and a fatal error leaves the
    /// batch's earlier ops unapplied too (they are applied when the consumer restarts). Set
    /// `batch_size(1)` for one transaction per op.
    ///
    /// # Errors
    /// As [`Consumer::start_basic`], plus a database that cannot be reached at start, a state
    /// table that cannot be created or has the wrong shape, and
    /// [`ConsumerError::OriginChanged`].
    ///
    /// # Cancellation
    /// As [`Consumer::start_basic`]: dropping the future stops the consumer.
    pub async fn start_idempotent(self, connection_string: &str) -> Result<(), ConsumerError> {
        self.app.validate()?;
        let processor = idempotent::IdempotentProcessor::connect(self.app, &self.settings, connection_string).await?;
        run::run(self.settings, Arc::new(processor)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    #[test]
    fn the_snapshot_header_names_the_kind() {
        let kind = |value: &'static [u8]| SnapshotKind::from_headers([("pgkafka.slot", Some(&b"s"[..])), ("pgkafka.snapshot", Some(value))]);
        assert_eq!(kind(b"initial"), Some(SnapshotKind::Initial));
        assert_eq!(kind(b"backfill"), Some(SnapshotKind::Backfill));
        assert_eq!(kind(b"other"), None);
        assert_eq!(SnapshotKind::from_headers([("pgkafka.slot", Some(&b"s"[..]))]), None);
    }

    struct Nothing;

    #[async_trait]
    impl BasicApplication for Nothing {
        async fn handle_message(&self, _: &ReplicationOp) -> Result<(), ConsumerError> {
            Ok(())
        }
    }

    struct Refuses;

    #[async_trait]
    impl BasicApplication for Refuses {
        async fn handle_message(&self, _: &ReplicationOp) -> Result<(), ConsumerError> {
            Ok(())
        }

        fn validate(&self) -> Result<(), ConsumerError> {
            Err(ConsumerError::Config("table t is routed twice".into()))
        }
    }

    /// An application that refuses its configuration stops `start_basic` before any Kafka client
    /// exists (the broker address here is unreachable), also behind an `Arc`.
    #[tokio::test]
    async fn validate_refuses_before_subscribing() {
        let app = Arc::new(Refuses);
        // Without the check the consumer would poll the unreachable broker for ever.
        let started = tokio::time::timeout(Duration::from_secs(5), Consumer::new("group", vec!["topic"], "127.0.0.1:1", app).start_basic()).await;
        let Ok(started) = started else { panic!("validate() was not checked at start") };
        assert!(matches!(&started, Err(ConsumerError::Config(m)) if m.contains("routed twice")), "{started:?}");
    }

    /// A consumer printed with `{:?}` (as a `tracing` field or a panic message would) shows its
    /// settings but no secret Kafka option.
    #[test]
    fn debug_prints_no_secret() {
        let consumer = Consumer::new("group", vec!["topic"], "broker:9092", Nothing)
            .kafka_option("sasl.username", "alice")
            .kafka_option("sasl.password", "hunter2")
            .kafka_option("ssl.key.password", "k3y-pass")
            .kafka_option("sasl.oauthbearer.client.secret", "s3cret");
        let shown = format!("{consumer:?} {consumer:#?}");
        for secret in ["hunter2", "k3y-pass", "s3cret"] {
            assert!(!shown.contains(secret), "{secret} printed: {shown}");
        }
        assert!(shown.contains("sasl.password") && shown.contains("alice") && shown.contains("group"), "{shown}");
    }
}
