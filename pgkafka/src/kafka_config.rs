//! librdkafka client configuration: the one place where pgkafka builds a `ClientConfig`, routes
//! librdkafka's logs to `tracing`, hides secret settings, and says which Kafka errors are final.
//!
//! Every Kafka client pgkafka makes (the producer, the consumer, the consumer's dead-letter
//! producer) starts from [`KafkaClientConfig`]: the user's pass-through options are applied on
//! top of pgkafka's defaults, except the settings pgkafka's guarantees rest on, which are
//! *pinned*: setting one to another value is a configuration error naming the setting.

use std::fmt;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
#[cfg(feature = "consumer")]
use rdkafka::types::RDKafkaErrorCode;

/// A setting the user may not change, with the values that keep pgkafka's guarantees and why.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pinned {
    pub(crate) key: &'static str,
    /// The value pgkafka sets; the first of `accepted`.
    pub(crate) accepted: &'static [&'static str],
    /// Why, for the error message.
    pub(crate) because: &'static str,
}

/// Builds a librdkafka `ClientConfig` from pgkafka's settings and the user's pass-through options.
#[derive(Clone)]
pub(crate) struct KafkaClientConfig {
    config: ClientConfig,
    pinned: Vec<Pinned>,
}

impl fmt::Debug for KafkaClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        let config_map = self.config.config_map();
        let mut entries: Vec<(&&str, &&str)> = config_map.iter().collect();
        entries.sort();
        for (key, value) in entries {
            if is_secret_key(key) {
                map.entry(key, &"<redacted>");
            } else {
                map.entry(key, value);
            }
        }
        map.finish()
    }
}

impl KafkaClientConfig {
    /// A client of `brokers`, named `client_id` unless the user names it.
    pub(crate) fn new(brokers: &str, client_id: &str) -> Self {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers).set("client.id", client_id);
        Self { config, pinned: Vec::new() }
    }

    /// Sets a default the user may override.
    pub(crate) fn set_default(mut self, key: &str, value: &str) -> Self {
        self.config.set(key, value);
        self
    }

    /// Sets a setting the user may not change to anything but `accepted`.
    pub(crate) fn pin(mut self, pinned: Pinned) -> Self {
        if let Some(value) = pinned.accepted.first() {
            self.config.set(pinned.key, *value);
        }
        self.pinned.push(pinned);
        self
    }

    /// Applies the user's options in order. An option that changes a pinned setting is an error
    /// message naming it, its value and why pgkafka needs it.
    pub(crate) fn user_options<'a>(
        mut self,
        options: impl IntoIterator<Item = &'a (String, String)>,
    ) -> Result<Self, String> {
        for (key, value) in options {
            if let Some(pinned) = self.pinned.iter().find(|p| p.key == key) {
                if !pinned.accepted.contains(&value.as_str()) {
                    let shown = if is_secret_key(key) { "<redacted>" } else { value.as_str() };
                    return Err(format!(
                        "Kafka option {key}={shown} cannot be set: {}. pgkafka sets {key}={}",
                        pinned.because,
                        pinned.accepted.first().copied().unwrap_or_default()
                    ));
                }
                continue;
            }
            self.config.set(key, value);
        }
        Ok(self)
    }

    /// The librdkafka configuration.
    pub(crate) fn into_client_config(self) -> ClientConfig {
        self.config
    }
}

/// Whether a librdkafka property holds a secret (passwords, keys, tokens): such values never
/// reach a log line, an error message or a `Debug` print.
pub(crate) fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "credential", "jaas", "key.pem", ".key", "private"]
        .iter()
        .any(|word| key.contains(word))
}

/// The user's pass-through options for a `Debug` print, secret values hidden.
pub(crate) struct RedactedOptions<'a>(pub(crate) &'a [(String, String)]);

impl fmt::Debug for RedactedOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for (key, value) in self.0 {
            if is_secret_key(key) {
                list.entry(&(key, "<redacted>"));
            } else {
                list.entry(&(key, value));
            }
        }
        list.finish()
    }
}

/// Forwards a librdkafka log line to `tracing` under the target `librdkafka`.
pub(crate) fn log_to_tracing(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility, "{message}");
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// Forwards a librdkafka client error to `tracing`.
pub(crate) fn error_to_tracing(error: &KafkaError, reason: &str) {
    tracing::warn!(target: "librdkafka", %error, "{reason}");
}

/// Kafka errors that retrying with the same client and settings cannot fix: authentication and
/// authorization, a fenced or fatal client, an unknown topic, invalid arguments.
#[cfg(feature = "consumer")]
pub(crate) fn is_fatal_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::Fatal
            | C::InvalidArgument
            | C::Authentication
            | C::SaslAuthenticationFailed
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::UnknownTopicOrPartition
            | C::FencedInstanceId
    )
}

/// [`is_fatal_code`] for an error that may carry no code.
#[cfg(feature = "consumer")]
pub(crate) fn is_fatal(error: &KafkaError) -> bool {
    error.rdkafka_error_code().is_some_and(is_fatal_code)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ACKS: Pinned = Pinned { key: "acks", accepted: &["all", "-1"], because: "records must be on every in-sync replica" };

    #[test]
    fn a_pinned_setting_refuses_other_values_and_accepts_its_own() {
        let error = KafkaClientConfig::new("b", "c").pin(ACKS).user_options(&[("acks".into(), "1".into())]).unwrap_err();
        assert!(error.contains("acks=1") && error.contains("in-sync"), "{error}");
        let config = KafkaClientConfig::new("b", "c").pin(ACKS).user_options(&[("acks".into(), "-1".into())]).unwrap();
        assert_eq!(config.into_client_config().get("acks"), Some("all"));
    }

    #[test]
    fn user_options_override_defaults() {
        let config = KafkaClientConfig::new("b", "c")
            .set_default("linger.ms", "5")
            .user_options(&[("linger.ms".into(), "50".into())])
            .unwrap();
        assert_eq!(config.into_client_config().get("linger.ms"), Some("50"));
    }

    #[test]
    fn secrets_never_print() {
        let options = vec![("sasl.password".to_owned(), "hunter2".to_owned()), ("ssl.key.password".to_owned(), "k3y".to_owned())];
        let config = KafkaClientConfig::new("b", "c").user_options(&options).unwrap();
        let shown = format!("{config:?} {:?}", RedactedOptions(&options));
        assert!(!shown.contains("hunter2") && !shown.contains("k3y"), "{shown}");
        assert!(shown.contains("sasl.password"));
    }
}
