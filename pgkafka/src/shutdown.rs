//! Stopping a producer or consumer gracefully from another task.

use tokio_util::sync::CancellationToken;

/// Stops a running [`Producer`](crate::Producer) or [`Consumer`](crate::Consumer) gracefully,
/// from anywhere (a signal handler, another task). Cheap to clone.
///
/// A producer finishes its in-flight deliveries and confirms them to the slot; a consumer
/// finishes the op (or idempotent batch) in hand and commits the finished offsets. Then
/// `start` / `start_basic` / `start_idempotent` return `Ok(())`.
///
/// ```no_run
/// # async fn run(producer: pgkafka::Producer) -> Result<(), pgkafka::ProducerError> {
/// let stop = producer.shutdown_handle();
/// tokio::spawn(async move {
///     let _ = tokio::signal::ctrl_c().await;
///     stop.shutdown();
/// });
/// producer.start().await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    token: CancellationToken,
}

impl ShutdownHandle {
    pub(crate) fn new(token: CancellationToken) -> Self {
        Self { token }
    }

    /// Asks the producer or consumer to stop.
    pub fn shutdown(&self) {
        self.token.cancel();
    }
}
