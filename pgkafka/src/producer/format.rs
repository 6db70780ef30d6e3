//! The producer's output formats and their settings: pgkafka's JSON `ReplicationOp` (the
//! default) or Debezium PostgreSQL connector change events, producer-wide or per topic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::ProducerError;

/// How the producer writes records.
///
/// ```
/// use pgkafka::{DebeziumOptions, OutputFormat};
///
/// let mut options = DebeziumOptions::new("inventory_server");
/// options.tombstones = false;
/// let format = OutputFormat::Debezium(options);
/// assert_ne!(format, OutputFormat::Pgkafka);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OutputFormat {
    /// One JSON [`ReplicationOp`](crate::ReplicationOp) per change, keyed by the JSON array of
    /// the partition-key values: what pgkafka's consumers read.
    #[default]
    Pgkafka,
    /// The Debezium PostgreSQL connector's change events (see the README's "Output formats").
    Debezium(DebeziumOptions),
}

/// How `numeric` values are written in Debezium events (Debezium's `decimal.handling.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DecimalHandling {
    /// Kafka Connect `Decimal` (base64 of the big-endian unscaled value, the scale in the
    /// schema); unconstrained `numeric` as Debezium's `VariableScaleDecimal` struct. Exact.
    #[default]
    Precise,
    /// The value's text, a JSON string. Exact.
    String,
    /// A JSON number (a double): may round.
    Double,
}

/// Settings of the Debezium format.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DebeziumOptions {
    /// The logical server name (Debezium's `topic.prefix`): `source.name`, the prefix of the
    /// schema names, and of the `<name>.transaction` and `__debezium-heartbeat.<name>` topics.
    pub name: String,
    /// Kafka Connect's `schemas.enable`: each key and value is `{"schema": ..., "payload": ...}`
    /// (default `true`, what sinks such as the JDBC sink need); `false` writes the payload alone.
    pub schemas: bool,
    /// How `numeric` is written (default [`DecimalHandling::Precise`]).
    pub decimal_handling: DecimalHandling,
    /// A delete is followed by a tombstone: the same key with a null value, so a compacted
    /// topic forgets the row (default `true`, as Debezium's `tombstones.on.delete`).
    pub tombstones: bool,
    /// BEGIN and END records on `<name>.transaction` and a `transaction` block in each event
    /// (default `false`, as Debezium's `provide.transaction.metadata`).
    pub transaction_metadata: bool,
    /// A heartbeat record on `__debezium-heartbeat.<name>` this often, carrying the position
    /// confirmed to the slot (default `None`: no heartbeats).
    pub heartbeat_interval: Option<Duration>,
}

impl DebeziumOptions {
    /// Debezium's defaults for the logical server name `name`.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            schemas: true,
            decimal_handling: DecimalHandling::default(),
            tombstones: true,
            transaction_metadata: false,
            heartbeat_interval: None,
        }
    }

    /// The topic of BEGIN and END records.
    #[must_use]
    pub fn transaction_topic(&self) -> String {
        format!("{}.transaction", self.name)
    }

    /// The topic of heartbeat records (Debezium's `topic.heartbeat.prefix` default, then the name).
    #[must_use]
    pub fn heartbeat_topic(&self) -> String {
        format!("__debezium-heartbeat.{}", self.name)
    }
}

/// The format of every topic: the producer-wide default and the topics that differ.
#[derive(Debug, Clone, Default)]
pub(crate) struct Formats {
    default: Resolved,
    by_topic: HashMap<String, Resolved>,
}

/// A format ready for the encoder: Debezium options shared, not copied per table.
#[derive(Debug, Clone, Default)]
pub(crate) enum Resolved {
    #[default]
    Pgkafka,
    Debezium(Arc<DebeziumOptions>),
}

impl Formats {
    /// Checks the settings and shares them. The Debezium formats of one producer must agree on
    /// the name: it names the one transaction topic and the one heartbeat topic.
    pub(crate) fn new(
        default: &OutputFormat,
        by_topic: &HashMap<String, OutputFormat>,
        topics: &[&str],
    ) -> Result<Self, ProducerError> {
        let mut names: Vec<&str> = Vec::new();
        let resolve = |format: &OutputFormat, what: &str| -> Result<Resolved, ProducerError> {
            Ok(match format {
                OutputFormat::Pgkafka => Resolved::Pgkafka,
                OutputFormat::Debezium(options) => {
                    if options.name.trim().is_empty() {
                        return Err(ProducerError::Config(format!(
                            "the Debezium format of {what} has an empty name; set the logical server name (Debezium's \
                             topic.prefix)"
                        )));
                    }
                    if options.heartbeat_interval.is_some_and(|interval| interval.is_zero()) {
                        return Err(ProducerError::Config(format!(
                            "the Debezium heartbeat_interval of {what} is zero; give a positive interval or none"
                        )));
                    }
                    Resolved::Debezium(Arc::new(options.clone()))
                }
            })
        };
        let default_format = resolve(default, "the producer")?;
        let mut topic_formats = HashMap::new();
        let mut keys: Vec<&String> = by_topic.keys().collect();
        keys.sort();
        for topic in keys {
            if !topics.contains(&topic.as_str()) {
                return Err(ProducerError::Config(format!(
                    "topic_format names topic {topic:?}, which no topic map entry writes to; the topics are {}",
                    topics.join(", ")
                )));
            }
            if let Some(format) = by_topic.get(topic) {
                topic_formats.insert(topic.clone(), resolve(format, &format!("topic {topic}"))?);
            }
        }
        let formats = Self { default: default_format, by_topic: topic_formats };
        for topic in topics {
            if let Resolved::Debezium(options) = formats.for_topic(topic) {
                if !names.contains(&options.name.as_str()) {
                    names.push(&options.name);
                }
            }
        }
        if names.len() > 1 {
            return Err(ProducerError::Config(format!(
                "the Debezium formats of one producer must share one name (it names the transaction and heartbeat \
                 topics), but they name {}",
                names.join(", ")
            )));
        }
        Ok(formats)
    }

    /// The format of `topic`.
    pub(crate) fn for_topic(&self, topic: &str) -> &Resolved {
        self.by_topic.get(topic).unwrap_or(&self.default)
    }

    /// The Debezium settings that the transaction and heartbeat records follow: the first
    /// Debezium format (they share their name) with transaction metadata on, and the shortest
    /// heartbeat interval of any.
    pub(crate) fn debezium_of(&self, topics: &[&str]) -> Vec<Arc<DebeziumOptions>> {
        topics
            .iter()
            .filter_map(|topic| match self.for_topic(topic) {
                Resolved::Debezium(options) => Some(Arc::clone(options)),
                Resolved::Pgkafka => None,
            })
            .collect()
    }

    /// The heartbeat topic and interval, if a Debezium format asks for heartbeats.
    pub(crate) fn heartbeat(&self, topics: &[&str]) -> Option<(Arc<DebeziumOptions>, Duration)> {
        self.debezium_of(topics)
            .into_iter()
            .filter_map(|options| options.heartbeat_interval.map(|interval| (Arc::clone(&options), interval)))
            .min_by_key(|(_, interval)| *interval)
    }

    /// Topics besides the tables' that records go to: the transaction and heartbeat topics.
    pub(crate) fn extra_topics(&self, topics: &[&str]) -> Vec<String> {
        let mut extra: Vec<String> = Vec::new();
        for options in self.debezium_of(topics) {
            if options.transaction_metadata {
                extra.push(options.transaction_topic());
            }
            if options.heartbeat_interval.is_some() {
                extra.push(options.heartbeat_topic());
            }
        }
        extra.sort();
        extra.dedup();
        extra
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn formats_resolve_per_topic_and_refuse_what_cannot_work() {
        let debezium = OutputFormat::Debezium(DebeziumOptions::new("server"));
        let by_topic = HashMap::from([("b".to_owned(), debezium.clone())]);
        let formats = Formats::new(&OutputFormat::Pgkafka, &by_topic, &["a", "b"]).unwrap();
        assert!(matches!(formats.for_topic("a"), Resolved::Pgkafka));
        assert!(matches!(formats.for_topic("b"), Resolved::Debezium(o) if o.name == "server"));
        assert!(formats.extra_topics(&["a", "b"]).is_empty());

        let error = Formats::new(&OutputFormat::Pgkafka, &by_topic, &["a"]).unwrap_err();
        assert!(error.to_string().contains("topic_format names topic \"b\""), "{error}");
        let other = OutputFormat::Debezium(DebeziumOptions::new("other"));
        let error = Formats::new(&other, &by_topic, &["a", "b"]).unwrap_err();
        assert!(error.to_string().contains("share one name"), "{error}");
        let error = Formats::new(&OutputFormat::Debezium(DebeziumOptions::new(" ")), &HashMap::new(), &["a"]).unwrap_err();
        assert!(error.to_string().contains("empty name"), "{error}");

        let mut options = DebeziumOptions::new("server");
        options.transaction_metadata = true;
        options.heartbeat_interval = Some(Duration::from_secs(5));
        let formats = Formats::new(&OutputFormat::Debezium(options), &HashMap::new(), &["a"]).unwrap();
        assert_eq!(formats.extra_topics(&["a"]), ["__debezium-heartbeat.server", "server.transaction"]);
        assert_eq!(formats.heartbeat(&["a"]).unwrap().1, Duration::from_secs(5));
    }
}
