//! A consumer running in-process, in a background task: start it, stop it gracefully and see what
//! `start_basic()` or `start_idempotent()` returned.

use std::time::Duration;

use pgkafka::{BasicApplication, Consumer, ConsumerError, IdempotentApplication, ShutdownHandle};
use tokio::task::JoinHandle;

/// A consumer running in a background task. Dropping it asks it to shut down.
#[derive(Debug)]
pub struct RunningConsumer {
    shutdown: ShutdownHandle,
    task: Option<JoinHandle<Result<(), ConsumerError>>>,
}

impl RunningConsumer {
    /// Starts `consumer` as a basic consumer.
    pub fn basic<A: BasicApplication + 'static>(consumer: Consumer<A>) -> Self {
        let shutdown = consumer.shutdown_handle();
        Self { shutdown, task: Some(tokio::spawn(consumer.start_basic())) }
    }

    /// Starts `consumer` as an idempotent consumer keeping its state in `database_url`.
    pub fn idempotent<A: IdempotentApplication + 'static>(consumer: Consumer<A>, database_url: &str) -> Self {
        let shutdown = consumer.shutdown_handle();
        let url = database_url.to_owned();
        Self { shutdown, task: Some(tokio::spawn(async move { consumer.start_idempotent(&url).await })) }
    }

    /// Shuts it down gracefully and returns what its `start_*` returned.
    pub async fn stop(mut self) -> Result<(), ConsumerError> {
        self.shutdown.shutdown();
        let task = self.task.take().expect("consumer already stopped");
        match tokio::time::timeout(Duration::from_secs(90), task).await {
            Ok(joined) => joined.expect("the consumer task panicked"),
            Err(_) => panic!("the consumer did not stop within 90 s of a graceful shutdown"),
        }
    }
}

impl Drop for RunningConsumer {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}
