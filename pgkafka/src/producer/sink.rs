//! The Kafka side of the producer: an idempotent librdkafka producer whose delivery reports
//! drive the [`Watermark`]. The session hands it transactions and records and asks it what may
//! be confirmed; nothing else touches the ledger.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pgkafka_common::Lsn;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use super::encode::Record;
use super::error::Failure;
use super::slot_guard::TopicRecords;
use super::watermark::{TxId, Watermark};
use super::{ProducerConfig, ProducerError};
use crate::kafka_config::{self, KafkaClientConfig, Pinned};
use crate::metrics::PRODUCER_RECORDS_ACKED;

/// Settings the producer's ordering and no-gap guarantees rest on; the user cannot change them.
const PINNED: [Pinned; 5] = [
    Pinned {
        key: "enable.idempotence",
        accepted: &["true"],
        because: "without idempotence a retried batch can be written twice or out of order",
    },
    Pinned {
        key: "acks",
        accepted: &["all", "-1"],
        because: "a record acknowledged by fewer than all in-sync replicas can be lost after the slot moved past it",
    },
    Pinned {
        key: "enable.gapless.guarantee",
        accepted: &["true"],
        because: "after a record the broker refuses, later records of its partition must not be written past the gap",
    },
    Pinned {
        // Never give up on a message: a finite timeout would turn a broker outage into a gap.
        // Nothing is confirmed to the slot until Kafka acknowledges, so waiting is always safe.
        key: "message.timeout.ms",
        accepted: &["0"],
        because: "a record that times out would be a gap; pgkafka waits for the broker instead",
    },
    Pinned {
        key: "partitioner",
        accepted: &["consistent_random"],
        because: "the changes of one key must go to the same partition in every run, or their order is lost",
    },
];

/// The librdkafka configuration of the producer: pgkafka's defaults, the pinned settings, then
/// the user's options.
pub(crate) fn client_config(config: &ProducerConfig) -> Result<KafkaClientConfig, ProducerError> {
    PINNED
        .into_iter()
        .fold(KafkaClientConfig::new(&config.brokers, "pgkafka-producer").set_default("linger.ms", "5"), KafkaClientConfig::pin)
        .user_options(&config.kafka_options)
        .map_err(ProducerError::Config)
}

/// A record Kafka refused, with where it came from.
#[derive(Debug)]
struct DeliveryFailure {
    topic: String,
    /// `None` when the record was refused before a partition was chosen.
    partition: Option<i32>,
    /// The records' `table_name`, when the value could be read back.
    table: Option<String>,
    /// The commit LSN of the record's transaction, while it was in the ledger.
    lsn: Option<Lsn>,
    error: KafkaError,
}

impl DeliveryFailure {
    /// Where the record was going and where it came from, for messages.
    fn describe(&self) -> String {
        let mut text = match self.partition {
            Some(partition) => format!("a record for {}/{partition}", self.topic),
            None => format!("a record for topic {}", self.topic),
        };
        if let Some(table) = &self.table {
            text.push_str(&format!(" (table {table}"));
            match self.lsn {
                Some(lsn) => text.push_str(&format!(", transaction committed at LSN {lsn})")),
                None => text.push(')'),
            }
        }
        text
    }

    /// Whether this is only the client's fatal state, not the refusal that caused it.
    fn is_client_fatal(&self) -> bool {
        self.error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
    }
}

/// The table a record's value names, read back on the (rare) failure path only: a
/// `ReplicationOp`'s `table_name`, or a Debezium event's `source` (with or without schemas).
fn table_of(value: Option<&[u8]>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        table_name: Option<String>,
        source: Option<Source>,
        payload: Option<Box<Head>>,
    }
    #[derive(serde::Deserialize)]
    struct Source {
        schema: String,
        table: String,
    }
    fn name(head: Head) -> Option<String> {
        head.table_name
            .or_else(|| head.source.map(|s| pgkafka_common::ident::table_name(&s.schema, &s.table)))
            .or_else(|| head.payload.and_then(|payload| name(*payload)))
    }
    value.and_then(|value| serde_json::from_slice::<Head>(value).ok()).and_then(name)
}

/// Where a full window of `max_in_flight` records reopens: a quarter below it, and never at
/// zero, so a window of one still reopens once its record is acknowledged.
fn resume_below(max_in_flight: u64) -> u64 {
    (max_in_flight - max_in_flight / 4).max(1)
}

/// State shared between the session and librdkafka's delivery-report thread.
struct Shared {
    watermark: Mutex<Watermark>,
    failure: Mutex<Option<DeliveryFailure>>,
    failed: AtomicBool,
    /// Woken when a delivery report settles a transaction, leaves fewer than `resume_below`
    /// records in flight, or fails, so a wait for room in the window or for the last
    /// acknowledgement can look again.
    progress: tokio::sync::Notify,
    /// Where a full window reopens: a quarter below its size.
    resume_below: u64,
    acked_total: metrics::Counter,
}

impl Shared {
    fn watermark(&self) -> MutexGuard<'_, Watermark> {
        // A poisoned lock only means another thread panicked mid-update of plain counters; the
        // counters themselves are still consistent enough to keep going.
        self.watermark.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failure(&self) -> MutexGuard<'_, Option<DeliveryFailure>> {
        self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// librdkafka callbacks: delivery reports to the watermark, logs and errors to `tracing`.
struct DeliveryContext {
    shared: Arc<Shared>,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        kafka_config::log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka_config::error_to_tracing(&error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: usize) {
        match result {
            Ok(_) => {
                let (settled, in_flight) = {
                    let mut watermark = self.shared.watermark();
                    (watermark.acked(tx as TxId), watermark.in_flight())
                };
                self.shared.acked_total.increment(1);
                // Wake a waiter only for what it can be waiting for: a transaction settled, or
                // the window drained to where a full one reopens (see `Sink::wait_for_room`).
                if !settled && in_flight >= self.shared.resume_below {
                    return;
                }
            }
            Err((error, message)) => {
                let failure = DeliveryFailure {
                    topic: message.topic().to_owned(),
                    partition: Some(message.partition()),
                    table: table_of(message.payload()),
                    lsn: self.shared.watermark().commit_lsn(tx as TxId),
                    error: error.clone(),
                };
                let mut first = self.shared.failure();
                // Keep the first refusal; a client-level fatal error only stands in until the
                // refusal that caused it is reported.
                if first.as_ref().is_none_or(|f| f.is_client_fatal() && !failure.is_client_fatal()) {
                    *first = Some(failure);
                }
                self.shared.failed.store(true, Ordering::Release);
            }
        }
        self.shared.progress.notify_one();
    }
}

/// The Kafka producer and the ledger of what it has delivered.
pub(crate) struct Sink {
    producer: ThreadedProducer<DeliveryContext>,
    shared: Arc<Shared>,
    max_in_flight: u64,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("max_in_flight", &self.max_in_flight).finish_non_exhaustive()
    }
}

impl Sink {
    /// A producer for `config`'s brokers with an empty ledger; [`reset`](Self::reset) it to the
    /// slot's position before a session streams.
    pub(crate) fn new(config: &ProducerConfig) -> Result<Self, ProducerError> {
        let shared = Arc::new(Shared {
            watermark: Mutex::new(Watermark::new(Lsn::INVALID)),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            progress: tokio::sync::Notify::new(),
            resume_below: resume_below(config.max_in_flight as u64),
            acked_total: PRODUCER_RECORDS_ACKED.slot_counter(&config.slot_name),
        });
        let producer = client_config(config)?
            .into_client_config()
            .create_with_context(DeliveryContext { shared: Arc::clone(&shared) })
            .map_err(|e| ProducerError::Config(format!("invalid Kafka producer settings: {e}")))?;
        Ok(Self { producer, shared, max_in_flight: config.max_in_flight as u64 })
    }

    /// Starts a fresh ledger for a new replication session. Only called with nothing in flight.
    pub(crate) fn reset(&self, confirmed: Lsn) {
        *self.shared.watermark() = Watermark::new(confirmed);
    }

    /// Checks the brokers answer and warns of topics that do not exist yet, off the async runtime.
    pub(crate) async fn check_topics(self: &Arc<Self>, topics: Vec<String>, brokers: String) -> Result<(), ProducerError> {
        let sink = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let metadata = sink.producer.client().fetch_metadata(None, Duration::from_secs(15)).map_err(|e| {
                ProducerError::Kafka(format!(
                    "cannot reach the Kafka brokers {brokers}: {e}; check the broker list and that they are up"
                ))
            })?;
            for topic in topics {
                let known = metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none());
                if !known {
                    tracing::warn!(
                        topic,
                        "topic does not exist yet; the broker creates it on first write if it auto-creates \
                         topics, with its default partition count. Create it beforehand to choose the partitions"
                    );
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| ProducerError::Kafka(format!("metadata check did not finish: {e}")))?
    }

    /// The partitions of `topics` that hold records (end offset above start offset): the trace an
    /// earlier stream into them left. Topics that do not exist hold none. Off the async runtime.
    pub(crate) async fn records_in(self: &Arc<Self>, topics: Vec<String>) -> Result<Vec<TopicRecords>, ProducerError> {
        let sink = Arc::clone(self);
        let unreadable = |what: String, e: &dyn std::fmt::Display| {
            ProducerError::Kafka(format!(
                "cannot read {what}, which shows whether an earlier stream wrote to the topics while the slot is \
                 missing: {e}"
            ))
        };
        tokio::task::spawn_blocking(move || {
            let client = sink.producer.client();
            // All topics' metadata: asking for one topic by name could auto-create it.
            let metadata = client
                .fetch_metadata(None, Duration::from_secs(15))
                .map_err(|e| unreadable("the brokers' topic metadata".to_owned(), &e))?;
            let mut found = Vec::new();
            for topic in metadata.topics().iter().filter(|t| t.error().is_none() && topics.iter().any(|n| n == t.name())) {
                for partition in topic.partitions() {
                    let (low, high) = client
                        .fetch_watermarks(topic.name(), partition.id(), Duration::from_secs(15))
                        .map_err(|e| unreadable(format!("the offsets of {} partition {}", topic.name(), partition.id()), &e))?;
                    if high > low {
                        found.push(TopicRecords { topic: topic.name().to_owned(), partition: partition.id(), end_offset: high });
                    }
                }
            }
            Ok(found)
        })
        .await
        .map_err(|e| ProducerError::Kafka(format!("reading the topics' offsets did not finish: {e}")))?
    }

    /// A transaction committed at `commit_lsn` starts; its records are sent under the returned id.
    pub(crate) fn begin(&self, commit_lsn: Lsn) -> TxId {
        self.shared.watermark().begin(commit_lsn)
    }

    /// The transaction `tx` committed; `end_lsn` may be confirmed once all its records are acknowledged.
    pub(crate) fn commit(&self, tx: TxId, end_lsn: Lsn) {
        self.shared.watermark().committed(tx, end_lsn);
    }

    /// The server has sent everything before `wal_end` and no transaction is open.
    pub(crate) fn idle_at(&self, wal_end: Lsn) {
        self.shared.watermark().idle_at(wal_end);
    }

    /// Hands a record of transaction `tx` to Kafka with `headers` (the session's origin
    /// headers, copied per record by librdkafka). While librdkafka's own queue is full it waits
    /// without blocking the runtime; returns `Ok(false)` if `shutdown` came first and the record
    /// was not sent.
    pub(crate) async fn send(
        &self,
        tx: TxId,
        record: &Record<'_>,
        headers: &OwnedHeaders,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        let mut base = BaseRecord::with_opaque_to(record.topic, tx as usize)
            .key(record.key)
            .headers(headers.clone())
            .timestamp(record.timestamp_ms);
        if let Some(value) = record.value {
            base = base.payload(value);
        }
        // Counted before sending: the delivery report may arrive before `send` returns.
        self.shared.watermark().sent(tx);
        // Read the clock only once the queue is full: this runs for every record.
        let mut warned: Option<Instant> = None;
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(true),
                Err((error, returned)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    // librdkafka's own queue is full (its limits are below our window): give its
                    // background thread a moment to move messages out.
                    base = returned;
                    let since = *warned.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(30) {
                        tracing::warn!(topic = %record.topic, "librdkafka's queue has been full for 30 s");
                        warned = Some(Instant::now());
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            self.shared.watermark().unsent(tx);
                            return Ok(false);
                        }
                        () = tokio::time::sleep(Duration::from_millis(1)) => {}
                    }
                }
                Err((error, _)) => {
                    self.shared.watermark().unsent(tx);
                    // After a refusal the client fails every send: report the refusal itself.
                    self.check_failure()?;
                    let failure = DeliveryFailure {
                        topic: record.topic.to_owned(),
                        partition: None,
                        table: Some(record.table_name.to_owned()),
                        lsn: self.shared.watermark().commit_lsn(tx),
                        error,
                    };
                    return Err(if failure.is_client_fatal() {
                        self.classify(&failure)
                    } else {
                        Failure::Fatal(ProducerError::Kafka(format!(
                            "cannot hand {} to Kafka: {}",
                            failure.describe(),
                            failure.error
                        )))
                    });
                }
            }
        }
    }

    /// The first delivery failure, if Kafka refused a record.
    pub(crate) fn check_failure(&self) -> Result<(), Failure> {
        if !self.shared.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.shared.failure().take() {
            Some(failure) => Err(self.classify(&failure)),
            None => Ok(()),
        }
    }

    /// What a refused record means. A record the broker refused for good stops the producer:
    /// with `enable.gapless.guarantee` librdkafka then writes nothing more, so nothing after it
    /// reaches its partition, and the ledger confirms nothing after it to the slot. A client that
    /// lost its idempotence state for another reason is replaced, and the slot re-sends.
    fn classify(&self, failure: &DeliveryFailure) -> Failure {
        let cause = if failure.is_client_fatal() { self.producer.client().fatal_error() } else { None };
        let stop = |cause: &dyn std::fmt::Display| {
            Failure::Fatal(ProducerError::Kafka(format!(
                "Kafka refused {}: {cause}. Nothing after it was written to that partition or confirmed to the \
                 slot; fix the cause (topic, permissions, max.message.bytes) and restart the producer, which \
                 re-sends from that record on",
                failure.describe()
            )))
        };
        match cause {
            None => stop(&failure.error),
            Some((RDKafkaErrorCode::GaplessGuarantee, reason)) => stop(&reason),
            Some((code, reason)) => Failure::Retry {
                reason: format!("the Kafka producer failed ({code:?}: {reason}) delivering {}", failure.describe()),
                new_kafka_client: true,
            },
        }
    }

    /// Whether the window of unacknowledged records (and of transactions waiting for them) has
    /// room for another.
    pub(crate) fn has_room(&self) -> bool {
        self.shared.watermark().has_room(self.max_in_flight)
    }

    /// Waits until the window has room, as [`wait_for_room`](Self::wait_for_room) does;
    /// `Ok(false)` if `shutdown` came first.
    pub(crate) async fn room_unless(&self, shutdown: &CancellationToken) -> Result<bool, Failure> {
        if self.has_room() {
            return Ok(true);
        }
        tokio::select! {
            room = self.wait_for_room() => room.map(|()| true),
            () = shutdown.cancelled() => Ok(false),
        }
    }

    /// Waits until the window has room, or a delivery failed. A full window is waited on until
    /// a quarter of it has drained, not until the next acknowledgement: acknowledgements arrive
    /// one per record on librdkafka's delivery thread, and waking the reader for each would hand
    /// records over one at a time, with a thread switch and a contended ledger lock per record.
    pub(crate) async fn wait_for_room(&self) -> Result<(), Failure> {
        loop {
            let notified = self.shared.progress.notified();
            self.check_failure()?;
            if self.shared.watermark().has_room(self.shared.resume_below) {
                return Ok(());
            }
            notified.await;
        }
    }

    /// Whether transaction `tx` and every one before it are committed and acknowledged.
    pub(crate) fn settled(&self, tx: TxId) -> bool {
        self.shared.watermark().settled(tx)
    }

    /// Waits until transaction `tx` is [settled](Self::settled), or a delivery failed.
    pub(crate) async fn wait_settled(&self, tx: TxId) -> Result<(), Failure> {
        loop {
            let notified = self.shared.progress.notified();
            self.check_failure()?;
            if self.settled(tx) {
                return Ok(());
            }
            notified.await;
        }
    }

    /// The position that may be confirmed to the slot, and the records in flight.
    pub(crate) fn progress(&self) -> (Lsn, u64) {
        let watermark = self.shared.watermark();
        (watermark.confirmed(), watermark.in_flight())
    }

    /// Waits until every record handed to Kafka is acknowledged, or `until` resolves first.
    /// Returns whether everything was acknowledged.
    pub(crate) async fn drain(&self, until: impl std::future::Future<Output = ()>) -> bool {
        tokio::pin!(until);
        loop {
            let notified = self.shared.progress.notified();
            if self.shared.watermark().in_flight() == 0 {
                return true;
            }
            if self.shared.failed.load(Ordering::Acquire) {
                return false;
            }
            tokio::select! {
                () = notified => {}
                () = &mut until => return self.shared.watermark().in_flight() == 0,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Drops everything queued in librdkafka, so nothing of this producer is written after a
    /// new one starts re-sending.
    pub(crate) fn purge(&self) {
        self.producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::producer::Producer;

    fn config(options: &[(&str, &str)]) -> ProducerConfig {
        let mut builder = Producer::builder("postgresql://u@h/d", "localhost:9092", "s", "p", Default::default());
        for (key, value) in options {
            builder = builder.kafka_option(*key, *value);
        }
        builder.build().config
    }

    #[test]
    fn the_settings_ordering_rests_on_are_pinned() {
        let client = client_config(&config(&[("acks", "-1"), ("linger.ms", "50")])).unwrap().into_client_config();
        for (key, value) in [
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("enable.gapless.guarantee", "true"),
            ("message.timeout.ms", "0"),
            ("partitioner", "consistent_random"),
            ("linger.ms", "50"),
        ] {
            assert_eq!(client.get(key), Some(value), "{key}");
        }
        for (key, value) in [("acks", "1"), ("enable.idempotence", "false"), ("enable.gapless.guarantee", "false")] {
            let error = client_config(&config(&[(key, value)])).unwrap_err();
            assert!(matches!(error, ProducerError::Config(_)), "{error:?}");
            assert!(error.to_string().contains(&format!("{key}={value}")), "{error}");
        }
    }

    #[test]
    fn a_full_window_reopens_a_quarter_below_its_size_and_a_window_of_one_at_empty() {
        assert_eq!(resume_below(10_000), 7_500);
        assert_eq!(resume_below(4), 3);
        assert_eq!(resume_below(1), 1);
    }

    /// A refusal names topic, partition, table and the transaction's commit LSN; the table is
    /// read back from the record's value.
    #[test]
    fn a_refused_record_is_described_by_where_it_came_from() {
        let value = br#"{"table_name":"sales.orders","col_names":[],"lsn":5,"seq_id":0,"op":{"Insert":[]}}"#;
        let failure = DeliveryFailure {
            topic: "orders".into(),
            partition: Some(3),
            table: table_of(Some(value)),
            lsn: Some(Lsn(0x1_0000_0500)),
            error: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        };
        assert_eq!(failure.describe(), "a record for orders/3 (table sales.orders, transaction committed at LSN 1/500)");
        assert!(!failure.is_client_fatal());
        let debezium = br#"{"schema":{},"payload":{"before":null,"source":{"schema":"sales","table":"orders"}}}"#;
        assert_eq!(table_of(Some(debezium)).as_deref(), Some("sales.orders"));
        assert_eq!(table_of(Some(br#"{"source":{"schema":"public","table":"t"}}"#)).as_deref(), Some("t"));
        let unknown = DeliveryFailure { partition: None, table: table_of(Some(b"not json")), lsn: None, ..failure };
        assert_eq!(unknown.describe(), "a record for topic orders");
    }

    /// librdkafka's queue is full (one message, no broker to take it): a send waits on the
    /// runtime, not in `std::thread::sleep`, and a shutdown ends the wait without counting the
    /// record as in flight. (With the old blocking retry loop this test never returned.)
    #[test]
    fn shutdown_ends_a_send_waiting_for_a_full_librdkafka_queue() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut config = config(&[("queue.buffering.max.messages", "1")]);
            config.brokers = "127.0.0.1:1".into();
            let sink = Sink::new(&config).unwrap();
            sink.reset(Lsn(1));
            let tx = sink.begin(Lsn(2));
            let record = Record { table_name: "t", topic: "pgkafka_unit_queue_full", key: b"k", value: Some(b"{}"), timestamp_ms: 0 };
            let headers = OwnedHeaders::new();
            let shutdown = CancellationToken::new();
            assert!(sink.send(tx, &record, &headers, &shutdown).await.unwrap(), "the first record fits");
            let stop = shutdown.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                stop.cancel();
            });
            let sent = tokio::time::timeout(Duration::from_secs(10), sink.send(tx, &record, &headers, &shutdown)).await;
            assert!(!sent.unwrap().unwrap(), "the second record was sent into a full queue");
            assert_eq!(sink.progress().1, 1, "only the first record is in flight");
            sink.purge();
        });
    }
}
