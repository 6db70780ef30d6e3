//! What can stop a producer, and what to do about it.

use pgkafka_common::Lsn;

/// Why [`Producer::start`](super::Producer::start) returned.
///
/// Configuration and schema problems are found before anything is streamed, and their message
/// says what to change. Lost connections to PostgreSQL or Kafka do not end up here: the producer
/// warns, backs off and resumes from the slot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerError {
    /// The producer's configuration cannot work; the message says what to change.
    #[error("invalid producer configuration: {0}")]
    Config(String),
    /// The database does not match the configuration (missing publication, table without a
    /// topic, partition-key column that does not exist, replica identity not FULL, ...). The
    /// message names the table or column and the fix.
    #[error("{0}")]
    Schema(String),
    /// A published table was truncated, and the truncate policy says to stop.
    #[error(
        "table {table} was truncated in the transaction committed at LSN {lsn}; pgkafka cannot \
         express TRUNCATE as row changes. The slot has not been advanced past it. To skip \
         truncates with a warning instead, set TruncatePolicy::Skip"
    )]
    Truncate {
        /// The truncated table.
        table: String,
        /// Commit LSN of the truncating transaction.
        lsn: Lsn,
    },
    /// The replication stream carried something pgkafka cannot decode.
    #[error("cannot decode the replication stream at LSN {lsn}: {message}")]
    Protocol {
        /// Where in the WAL.
        lsn: Lsn,
        /// What was wrong.
        message: String,
    },
    /// Another connection is streaming from the slot, and the producer was told not to wait.
    #[error("replication slot {slot} is in use by another connection (pid {pid:?})")]
    SlotInUse {
        /// The slot.
        slot: String,
        /// The server process holding it, if known.
        pid: Option<i32>,
    },
    /// The replication slot is gone or can no longer stream (dropped, lost in a failover to a
    /// server without it, or invalidated because the server removed WAL it needed). The changes
    /// after `last_confirmed` cannot be streamed from it any more; the producer never creates a
    /// new slot silently, since that would skip them. The message says how to go on.
    #[error(
        "replication slot {slot} {reason}. {}pgkafka does not create a new slot by itself, since a new slot \
         starts at the current end of the WAL and everything in between would be skipped. To go on: {remedy}",
        last_confirmed.map(|lsn| format!("The changes after LSN {lsn}, the last position confirmed to it, cannot be streamed any more. ")).unwrap_or_default()
    )]
    SlotLost {
        /// The slot.
        slot: String,
        /// What happened to it.
        reason: String,
        /// The last position confirmed to the slot, when known: what was delivered for sure.
        last_confirmed: Option<Lsn>,
        /// How to recover.
        remedy: String,
    },
    /// An error from PostgreSQL that retrying did not fix.
    #[error("postgres: {0}")]
    Postgres(String),
    /// An error from Kafka that retrying cannot fix (authorization, unknown topic, a message
    /// larger than the broker accepts, ...).
    #[error("kafka: {0}")]
    Kafka(String),
}

/// How a failure ends the producer's current attempt, decided where the failure arises.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Stop the producer and return this.
    Fatal(ProducerError),
    /// Resume from the slot after a backoff.
    Retry {
        reason: String,
        /// The Kafka client lost state it cannot recover (its idempotence sequence): make a new one.
        new_kafka_client: bool,
    },
}

impl Failure {
    /// A failure that a new session may not have.
    pub(crate) fn retry(reason: impl Into<String>) -> Self {
        Self::Retry { reason: reason.into(), new_kafka_client: false }
    }

    /// A PostgreSQL failure that is retried once the producer has streamed, and is fatal on the
    /// first attempt, so a wrong host or a missing permission stops `start()` at once.
    pub(crate) fn postgres(message: String, attempt: Attempt) -> Self {
        match attempt {
            Attempt::First => Self::Fatal(ProducerError::Postgres(message)),
            Attempt::Resume => Self::retry(message),
        }
    }

    /// The error to return from an API call that does not retry ([`Producer::check`](super::Producer::check)).
    pub(crate) fn into_error(self) -> ProducerError {
        match self {
            Self::Fatal(error) => error,
            Self::Retry { reason, .. } => ProducerError::Postgres(reason),
        }
    }
}

impl From<ProducerError> for Failure {
    fn from(error: ProducerError) -> Self {
        Self::Fatal(error)
    }
}

/// Whether a session is the producer's first or resumes after a lost one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    First,
    Resume,
}
