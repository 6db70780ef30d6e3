//! What can go wrong while consuming, and what the consumer does about it.

/// A boxed error from application code.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from a consumer, or from the application it runs.
///
/// The application decides what happens to the op it failed on:
///
/// - [`ConsumerError::transient`]: the same op is handed to the application again after a
///   backoff. Nothing after it in its partition is handled meanwhile, nothing is skipped, and (in
///   the idempotent consumer) the failed transaction is rolled back first.
/// - [`ConsumerError::fatal`]: the consumer stops. It commits the offsets of the ops whose
///   handling finished, and `start_basic` / `start_idempotent` return this error.
///
/// Errors from `sqlx` convert with `?` and are classified by [`ConsumerError::is_transient`]:
/// serialization failures, deadlocks, lost connections and pool timeouts are retried; anything
/// else (a constraint violation, a syntax error) stops the consumer, because retrying it would
/// fail the same way forever.
///
/// ```
/// use pgkafka::{async_trait::async_trait, BasicApplication, ConsumerError, ReplicationOp};
///
/// struct Mailer;
///
/// #[async_trait]
/// impl BasicApplication for Mailer {
///     async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
///         if op.table_name != "signups" {
///             return Err(ConsumerError::fatal(format!("unexpected table {}", op.table_name)));
///         }
///         // A flaky downstream service: try the same op again later.
///         send_mail(op).map_err(ConsumerError::transient)
///     }
/// }
/// # fn send_mail(_: &ReplicationOp) -> Result<(), std::io::Error> { Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The application asks for the same op to be retried after a backoff.
    #[error("transient error (the op will be retried): {0}")]
    Transient(#[source] BoxError),
    /// The application asks the consumer to stop.
    #[error("fatal error: {0}")]
    Fatal(#[source] BoxError),
    /// A Kafka record that is not a valid `ReplicationOp` (bad JSON or wrong shape).
    #[error("{topic}/{partition} offset {offset}: not a valid ReplicationOp: {reason}")]
    InvalidMessage {
        /// Topic of the record.
        topic: String,
        /// Partition of the record.
        partition: i32,
        /// Offset of the record.
        offset: i64,
        /// Why it could not be decoded.
        reason: String,
    },
    /// An error of the Kafka client.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// An error of the database: the application's, or the idempotent consumer's own.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The consumer's configuration cannot work; the message says what to change.
    #[error("invalid consumer configuration: {0}")]
    Config(String),
    /// A row that does not decode into its `#[derive(ReplicatedTable)]` type (typed handlers).
    /// Fatal: the same bytes would fail the same way on every retry.
    #[error("{0}")]
    Decode(#[from] pgkafka_common::DecodeError),
    /// The application panicked while handling an op. Fatal: the consumer stops without
    /// committing past the op (an idempotent consumer's transaction is rolled back), so a restart
    /// with the bug fixed handles it again.
    #[error("the handler panicked on {topic} partition {partition} offset {offset}: {message}; the consumer stopped without committing past this op")]
    HandlerPanicked {
        /// Topic of the op's record.
        topic: String,
        /// Partition of the op's record.
        partition: i32,
        /// Offset of the op's record.
        offset: i64,
        /// The panic's message (its payload, when it is a string).
        message: String,
    },
    /// The idempotent consumer met an op from another origin than its stored position (another
    /// database cluster or slot, or a timeline that went back below it): its LSN cannot be
    /// compared with the stored one, so the op is neither applied nor skipped. The reason says
    /// what happened and how to reset the partition's position.
    #[error("{topic} partition {partition} offset {offset}: {reason}")]
    OriginChanged {
        /// Topic of the op's record.
        topic: String,
        /// Partition of the op's record.
        partition: i32,
        /// Offset of the op's record.
        offset: i64,
        /// What changed, and the statements that reset the position.
        reason: String,
    },
    /// An op of a table that no typed handler is routed for (see `typed::Router`).
    #[error("no handler is routed for table {table}; route it, or call ignore_unknown_tables()")]
    UnhandledTable {
        /// The op's table.
        table: String,
    },
}

impl ConsumerError {
    /// An error after which the same op should be retried.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        ConsumerError::Transient(error.into())
    }

    /// An error after which the consumer should stop.
    pub fn fatal(error: impl Into<BoxError>) -> Self {
        ConsumerError::Fatal(error.into())
    }

    /// Whether retrying the same op can succeed.
    ///
    /// ```
    /// # use pgkafka::ConsumerError;
    /// assert!(ConsumerError::transient("downstream busy").is_transient());
    /// assert!(!ConsumerError::fatal("bad data").is_transient());
    /// ```
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            ConsumerError::Transient(_) => true,
            ConsumerError::Database(error) => is_transient_database_error(error),
            ConsumerError::Kafka(error) => !crate::kafka_config::is_fatal(error),
            _ => false,
        }
    }
}

/// SQLSTATE classes and codes after which the same statement can succeed on a retry.
fn is_transient_database_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            let code = code.as_ref();
            // 40001 serialization_failure, 40P01 deadlock_detected, 08 connection exceptions,
            // 53 insufficient resources, 57P01-57P03 shutdown / cannot connect now, 55P03 lock_not_available,
            // 25P03 idle_in_transaction_session_timeout (the session was ended; a new one may retry).
            code == "40001"
                || code == "25P03"
                || code == "40P01"
                || code == "55P03"
                || code.starts_with("08")
                || code.starts_with("53")
                || matches!(code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}
