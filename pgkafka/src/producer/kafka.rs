//! The Kafka side of the producer: an idempotent librdkafka producer whose delivery reports feed
//! the [`Watermark`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pgkafka_common::Lsn;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::{Producer as _, ProducerContext, ThreadedProducer};

use super::watermark::{TxId, Watermark};
use super::{ProducerConfig, ProducerError};

/// A message Kafka refused for good.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryFailure {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) error: KafkaError,
}

/// State shared between the session and librdkafka's delivery-report thread.
#[derive(Debug)]
pub(crate) struct Shared {
    watermark: Mutex<Watermark>,
    failure: Mutex<Option<DeliveryFailure>>,
    failed: AtomicBool,
    /// Woken on every delivery report, so a session waiting for room in the window or for the
    /// last acknowledgement can look again.
    pub(crate) progress: tokio::sync::Notify,
    acked_total: metrics::Counter,
}

impl Shared {
    pub(crate) fn watermark(&self) -> MutexGuard<'_, Watermark> {
        // A poisoned lock only means another thread panicked mid-update of plain counters; the
        // counters themselves are still consistent enough to keep going.
        self.watermark.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub(crate) fn take_failure(&self) -> Option<DeliveryFailure> {
        self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

/// librdkafka callbacks: delivery reports to the watermark, logs and errors to `tracing`.
pub(crate) struct DeliveryContext {
    shared: Arc<Shared>,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility = fac, "{log_message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility = fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility = fac, "{log_message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility = fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
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
                let mut failure = self.shared.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if failure.is_none() {
                    *failure = Some(DeliveryFailure {
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        error: error.clone(),
                    });
                }
                self.shared.failed.store(true, Ordering::Release);
            }
        }
        self.shared.progress.notify_one();
    }
}

/// The librdkafka producer and what it shares with the session.
pub(crate) struct KafkaSink {
    pub(crate) producer: ThreadedProducer<DeliveryContext>,
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").finish_non_exhaustive()
    }
}

/// Settings the producer's guarantees rest on; the user cannot turn them off.
const REQUIRED: [(&str, &[&str]); 2] = [("enable.idempotence", &["true"]), ("acks", &["all", "-1"])];

pub(crate) fn client_config(config: &ProducerConfig) -> Result<ClientConfig, ProducerError> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Never give up on a message: a finite timeout would turn a broker outage into a gap.
        // Nothing is confirmed to the slot until Kafka acknowledges, so waiting is always safe.
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("client.id", "pgkafka-producer");
    for (key, value) in &config.kafka_options {
        if let Some((_, allowed)) = REQUIRED.iter().find(|(k, _)| k == key) {
            if !allowed.contains(&value.as_str()) {
                return Err(ProducerError::Config(format!(
                    "Kafka option {key}={value} would break the producer's ordering and no-gap guarantees; \
                     pgkafka always uses enable.idempotence=true and acks=all"
                )));
            }
        }
        client.set(key, value);
    }
    Ok(client)
}

impl KafkaSink {
    pub(crate) fn new(config: &ProducerConfig, confirmed: Lsn) -> Result<Self, ProducerError> {
        let shared = Arc::new(Shared {
            watermark: Mutex::new(Watermark::new(confirmed)),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            progress: tokio::sync::Notify::new(),
            acked_total: metrics::counter!("pgkafka_producer_records_acked_total", "slot" => config.slot_name.clone()),
        });
        let producer = client_config(config)?
            .create_with_context(DeliveryContext { shared: Arc::clone(&shared) })
            .map_err(|e| ProducerError::Config(format!("invalid Kafka producer settings: {e}")))?;
        Ok(Self { producer, shared })
    }

    /// Starts a fresh ledger for a new replication session. Only called with nothing in flight.
    pub(crate) fn reset(&self, confirmed: Lsn) {
        *self.shared.watermark() = Watermark::new(confirmed);
    }

    /// Checks the brokers answer and the topics exist, off the async runtime.
    pub(crate) async fn check_topics(self: &Arc<Self>, topics: Vec<String>, brokers: String) -> Result<(), ProducerError> {
        let sink = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let client = sink.producer.client();
            let metadata = client.fetch_metadata(None, Duration::from_secs(15)).map_err(|e| {
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

    /// Waits until every message handed to Kafka is acknowledged, or `until` resolves first.
    /// Returns whether everything was acknowledged.
    pub(crate) async fn drain(&self, until: impl std::future::Future<Output = ()>) -> bool {
        tokio::pin!(until);
        loop {
            let notified = self.shared.progress.notified();
            if self.shared.watermark().in_flight() == 0 {
                return true;
            }
            if self.shared.has_failed() {
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
