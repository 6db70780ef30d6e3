//! The dead-letter sender: copies a record that is not a valid `ReplicationOp` to the dead-letter
//! topic, with headers saying where it came from and why, retrying until the broker has it.

use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{ConsumerError, Settings};
use crate::kafka_config::{self, KafkaClientConfig, Pinned};
use crate::Backoff;

/// How long librdkafka tries one copy before the sender's own retry takes over.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// A copy that is acknowledged by every in-sync replica, once: the offset of the bad record moves
/// on only after it, so a copy lost by the broker would be a lost record.
const ACKS: Pinned = Pinned {
    key: "acks",
    accepted: &["all", "-1"],
    because: "a dead-lettered record must be on every in-sync replica before its offset is committed",
};
const IDEMPOTENCE: Pinned = Pinned {
    key: "enable.idempotence",
    accepted: &["true"],
    because: "a retried dead-letter copy must not be written twice",
};

/// What came of [`DeadLetterSender::send`].
#[derive(Debug)]
pub(crate) enum Delivery {
    /// The broker acknowledged the copy.
    Sent,
    /// The partition was told to stop before the copy was acknowledged.
    Stopped,
    /// The broker refused the copy for good (a fatal Kafka error, such as a missing topic).
    Refused(KafkaError),
}

/// The dead-letter producer's librdkafka callbacks: logs and errors to `tracing`.
struct DeadLetterContext;

impl ClientContext for DeadLetterContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        kafka_config::log_to_tracing(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka_config::error_to_tracing(&error, reason);
    }
}

/// Writes invalid records to the dead-letter topic.
pub(crate) struct DeadLetterSender {
    producer: FutureProducer<DeadLetterContext>,
    topic: String,
    retry: Backoff,
}

impl DeadLetterSender {
    /// A sender to `topic` on the consumer's brokers, with the consumer's connection and security
    /// options (its consumer properties would only make librdkafka warn).
    pub(crate) fn new(settings: &Settings, topic: &str) -> Result<Self, ConsumerError> {
        let connection_options = settings.kafka_options.iter().filter(|(key, _)| {
            key.starts_with("security.") || key.starts_with("sasl.") || key.starts_with("ssl.") || key == "client.id"
        });
        let config = KafkaClientConfig::new(&settings.brokers, "pgkafka-dead-letter")
            .pin(IDEMPOTENCE)
            .pin(ACKS)
            .user_options(connection_options)
            .map_err(ConsumerError::Config)?
            .into_client_config();
        Ok(Self {
            producer: config.create_with_context(DeadLetterContext)?,
            topic: topic.to_owned(),
            retry: Backoff::new(settings.retry_initial, settings.retry_max),
        })
    }

    /// The dead-letter topic.
    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// Copies `message` (key and value) with headers `pgkafka.topic`, `pgkafka.partition`,
    /// `pgkafka.offset` and `pgkafka.error` (`error`), retrying transient failures after a
    /// backoff until the broker acknowledges it or `stop` is cancelled.
    pub(crate) async fn send(&self, message: &OwnedMessage, error: &ConsumerError, stop: &CancellationToken) -> Delivery {
        let error_text = error.to_string();
        let partition_text = message.partition().to_string();
        let offset_text = message.offset().to_string();
        let mut backoff = self.retry.clone();
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "pgkafka.topic", value: Some(message.topic()) })
                .insert(Header { key: "pgkafka.partition", value: Some(partition_text.as_str()) })
                .insert(Header { key: "pgkafka.offset", value: Some(offset_text.as_str()) })
                .insert(Header { key: "pgkafka.error", value: Some(error_text.as_str()) });
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            // Not cut short by `stop`: a copy in flight is the op in hand, which a stopping
            // partition finishes (a copy abandoned here could still land, and be copied again by
            // the next owner).
            match self.producer.send(record, SEND_TIMEOUT).await {
                Ok(_) => return Delivery::Sent,
                Err((e, _)) if kafka_config::is_fatal(&e) => return Delivery::Refused(e),
                Err((e, _)) => {
                    warn!("cannot write to dead-letter topic {}, retrying in {:?}: {e}", self.topic, backoff.peek());
                    if !backoff.wait(stop.cancelled()).await {
                        return Delivery::Stopped;
                    }
                }
            }
        }
    }
}
