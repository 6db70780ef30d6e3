//! A producer running in-process, in a background task: start it, wait until it streams from
//! its slot, stop it gracefully and see what `start()` returned.

use std::time::Duration;

use pgkafka::{Producer, ProducerError, ShutdownHandle};
use tokio::task::JoinHandle;

use crate::slots::slot_active_pid;
use crate::wait_for;

/// A producer running in a background task. Dropping it asks it to shut down.
#[derive(Debug)]
pub struct RunningProducer {
    shutdown: ShutdownHandle,
    task: Option<JoinHandle<Result<(), ProducerError>>>,
}

impl RunningProducer {
    /// Starts `producer` in a task, without waiting for anything.
    pub fn spawn(producer: Producer) -> Self {
        let shutdown = producer.shutdown_handle();
        let task = tokio::spawn(async move { producer.start().await });
        Self { shutdown, task: Some(task) }
    }

    /// Starts `producer` and waits until it streams from `slot` (the slot exists and is active).
    /// Panics with the producer's error if it stops first.
    pub async fn start(producer: Producer, slot: &str) -> Self {
        let mut running = Self::spawn(producer);
        running.wait_streaming(slot, Duration::from_secs(60)).await;
        running
    }

    /// Waits until the slot is active, panicking with the producer's error if it stops first.
    pub async fn wait_streaming(&mut self, slot: &str, timeout: Duration) {
        let pg = crate::pg_client().await;
        let streaming = wait_for(&format!("the producer to stream from slot {slot}"), timeout, || {
            let finished = self.is_finished();
            let pg = &pg;
            async move {
                if finished {
                    return Some(false);
                }
                slot_active_pid(pg, slot).await.map(|_| true)
            }
        })
        .await;
        if !streaming {
            let result = self.join(Duration::from_secs(5)).await;
            panic!("the producer stopped before streaming from slot {slot}: {result:?}");
        }
    }

    /// Whether `start()` returned.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Shuts it down gracefully and returns what `start()` returned.
    pub async fn stop(mut self) -> Result<(), ProducerError> {
        self.shutdown.shutdown();
        self.join(Duration::from_secs(90)).await
    }

    /// Waits for `start()` to return on its own.
    pub async fn join(&mut self, timeout: Duration) -> Result<(), ProducerError> {
        let task = self.task.take().expect("producer already joined");
        match tokio::time::timeout(timeout, task).await {
            Ok(joined) => joined.expect("the producer task panicked"),
            Err(_) => panic!("the producer did not return within {timeout:?}"),
        }
    }
}

impl Drop for RunningProducer {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}
