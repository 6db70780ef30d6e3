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
use rdkafka::message::{DeliveryResult, Message as _};
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
const PINNED: [Pinned; 2] = [
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
];

/// The librdkafka configuration of the producer: pgkafka's defaults, the pinned settings, then
/// the user's options.
pub(crate) fn client_config(config: &ProducerConfig) -> Result<KafkaClientConfig, ProducerError> {
    PINNED
        .into_iter()
        .fold(
            KafkaClientConfig::new(&config.brokers, "pgkafka-producer")
                // Never give up on a message: a finite timeout would turn a broker outage into a
                // gap. Nothing is confirmed to the slot until Kafka acknowledges, so waiting is safe.
                .set_default("message.timeout.ms", "0")
                .set_default("linger.ms", "5"),
            KafkaClientConfig::pin,
        )
        .user_options(&config.kafka_options)
        .map_err(ProducerError::Config)
}

/// The first message Kafka refused, and what that means for the producer.
#[derive(Debug)]
struct DeliveryFailure {
    topic: String,
    partition: i32,
    /// The table and commit LSN the record carries, read back from its value.
    origin: Option<RecordOrigin>,
    error: KafkaError,
}

/// The fields of a record's JSON value that say where it came from.
#[derive(Debug, serde::Deserialize)]
struct RecordOrigin {
    table_name: String,
    lsn: u64,
}

impl DeliveryFailure {
    /// A client-level fatal error means the idempotent producer lost its sequence state: a new
    /// client re-sends from the slot. Anything else the broker refused for good.
    fn into_failure(self) -> Failure {
        let record = match &self.origin {
            Some(origin) => {
                format!("a record of table {} (transaction committed at LSN {})", origin.table_name, Lsn(origin.lsn))
            }
            None => "a record".to_owned(),
        };
        let message = format!(
            "Kafka did not accept {record} for topic {} partition {}: {}",
            self.topic, self.partition, self.error
        );
        if self.error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            Failure::Retry { reason: message, new_kafka_client: true }
        } else {
            Failure::Fatal(ProducerError::Kafka(format!(
                "{message}. Nothing after it was confirmed to the slot; fix the cause (topic, permissions, \
                 message.max.bytes) and restart the producer"
            )))
        }
    }
}

/// State shared between the session and librdkafka's delivery-report thread.
struct Shared {
    watermark: Mutex<Watermark>,
    failure: Mutex<Option<DeliveryFailure>>,
    failed: AtomicBool,
    /// Woken on every delivery report, so a wait for room in the window or for the last
    /// acknowledgement can look again.
    progress: tokio::sync::Notify,
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
                self.shared.watermark().acked(tx as TxId);
                self.shared.acked_total.increment(1);
            }
            Err((error, message)) => {
                let mut failure = self.shared.failure();
                if failure.is_none() {
                    *failure = Some(DeliveryFailure {
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        origin: message.payload().and_then(|value| serde_json::from_slice(value).ok()),
                        error: error.clone(),
                    });
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

    /// A transaction starts; its records are sent under the returned id.
    pub(crate) fn begin(&self) -> TxId {
        self.shared.watermark().begin()
    }

    /// The transaction `tx` committed; `end_lsn` may be confirmed once all its records are acknowledged.
    pub(crate) fn commit(&self, tx: TxId, end_lsn: Lsn) {
        self.shared.watermark().committed(tx, end_lsn);
    }

    /// The server has sent everything before `wal_end` and no transaction is open.
    pub(crate) fn idle_at(&self, wal_end: Lsn) {
        self.shared.watermark().idle_at(wal_end);
    }

    /// Hands a record of transaction `tx` to Kafka. While librdkafka's own queue is full it
    /// waits without blocking the runtime; returns `Ok(false)` if `shutdown` came first and the
    /// record was not sent.
    pub(crate) async fn send(&self, tx: TxId, record: &Record<'_>, shutdown: &CancellationToken) -> Result<bool, Failure> {
        let mut base = BaseRecord::with_opaque_to(record.topic, tx as usize)
            .key(record.key)
            .payload(record.value)
            .timestamp(record.timestamp_ms);
        // Counted before sending: the delivery report may arrive before `send` returns.
        self.shared.watermark().sent(tx);
        let mut warned = Instant::now();
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(true),
                Err((error, returned)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    // librdkafka's own queue is full (its limits are below our window): give its
                    // background thread a moment to move messages out.
                    base = returned;
                    if warned.elapsed() > Duration::from_secs(30) {
                        tracing::warn!(topic = %record.topic, "librdkafka's queue has been full for 30 s");
                        warned = Instant::now();
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
                    return Err(Failure::Fatal(ProducerError::Kafka(format!(
                        "cannot hand a record of table {} to Kafka topic {}: {error}",
                        record.table_name, record.topic
                    ))));
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
            Some(failure) => Err(failure.into_failure()),
            None => Ok(()),
        }
    }

    /// Whether the window of unacknowledged records has room for another.
    pub(crate) fn has_room(&self) -> bool {
        self.shared.watermark().in_flight() < self.max_in_flight
    }

    /// Waits until the window has room, or a delivery failed.
    pub(crate) async fn wait_for_room(&self) -> Result<(), Failure> {
        loop {
            let notified = self.shared.progress.notified();
            self.check_failure()?;
            if self.has_room() {
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
    fn idempotence_and_acks_are_pinned() {
        let client = client_config(&config(&[("acks", "-1"), ("linger.ms", "50")])).unwrap().into_client_config();
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("linger.ms"), Some("50"));
        assert_eq!(client.get("message.timeout.ms"), Some("0"));
        for (key, value) in [("acks", "1"), ("enable.idempotence", "false")] {
            let error = client_config(&config(&[(key, value)])).unwrap_err();
            assert!(matches!(error, ProducerError::Config(_)), "{error:?}");
            assert!(error.to_string().contains(&format!("{key}={value}")), "{error}");
        }
    }
}
