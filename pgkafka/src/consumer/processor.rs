//! How a batch of ops is handled: the [`Processor`] both consumers implement, the basic one, and
//! the retry loop (backoff after a transient error, one concurrency permit per attempt) around
//! either.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::origin::Origin;
use super::{BasicApplication, ConsumerError, SnapshotKind};
use crate::{Backoff, ReplicationOp};

/// What handles the ops of one partition: the basic or the idempotent consumer.
#[async_trait]
pub(crate) trait Processor: Send + Sync + 'static {
    /// How many consecutive ops of a partition `process` may take at once.
    fn max_batch(&self) -> usize;
    /// How long to wait for more ops to fill a batch.
    fn linger(&self) -> Duration;
    /// Whether `process` reads the ops' origins; when not, records' origin headers are only
    /// checked (a record with broken ones is still invalid), not kept.
    fn uses_origin(&self) -> bool {
        true
    }
    /// Handles `batch` (consecutive ops of one partition) as one unit: all or nothing.
    async fn process(&self, topic: &str, partition: i32, batch: Batch<'_>) -> Result<Outcome, ConsumerError>;
}

/// What a `process` call did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) applied: u64,
    pub(crate) duplicates: u64,
}

/// The basic consumer: each op to the application, one after another.
pub(crate) struct BasicProcessor<A> {
    app: A,
}

impl<A> BasicProcessor<A> {
    pub(crate) fn new(app: A) -> Self {
        Self { app }
    }
}

#[async_trait]
impl<A: BasicApplication> Processor for BasicProcessor<A> {
    fn max_batch(&self) -> usize {
        1
    }

    fn linger(&self) -> Duration {
        Duration::ZERO
    }

    fn uses_origin(&self) -> bool {
        false
    }

    async fn process(&self, topic: &str, partition: i32, batch: Batch<'_>) -> Result<Outcome, ConsumerError> {
        for ((op, &offset), &snapshot) in batch.ops.iter().zip(batch.offsets).zip(batch.snapshots) {
            super::call_handler(topic, partition, offset, snapshot, self.app.handle_message(op)).await?;
        }
        Ok(Outcome { applied: batch.ops.len() as u64, duplicates: 0 })
    }
}

/// Consecutive ops of one partition, handled as one unit: their records' offsets, the ops, and
/// the origins their records' headers name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batch<'a> {
    pub(crate) offsets: &'a [i64],
    pub(crate) ops: &'a [ReplicationOp],
    pub(crate) origins: &'a [Option<Origin>],
    /// The snapshot kind each record's header names (`None` for streamed changes).
    pub(crate) snapshots: &'a [Option<SnapshotKind>],
}

/// How a batch ended in [`RetryingProcessor::process`].
#[derive(Debug)]
pub(crate) enum Handled {
    /// Processed: the offsets may move past it.
    Done(Outcome),
    /// The partition was told to stop while it waited; the batch is not done.
    Stopped,
    /// A fatal error: the consumer must stop; the batch is not done.
    Failed(ConsumerError),
}

/// A processor shared by every partition, with the retry schedule and the limit on partitions
/// handled at once.
pub(crate) struct RetryingProcessor {
    processor: Arc<dyn Processor>,
    permits: Semaphore,
    retry: Backoff,
}

impl RetryingProcessor {
    pub(crate) fn new(processor: Arc<dyn Processor>, max_concurrent_partitions: usize, retry: Backoff) -> Self {
        Self { processor, permits: Semaphore::new(max_concurrent_partitions), retry }
    }

    pub(crate) fn max_batch(&self) -> usize {
        self.processor.max_batch()
    }

    pub(crate) fn linger(&self) -> Duration {
        self.processor.linger()
    }

    pub(crate) fn uses_origin(&self) -> bool {
        self.processor.uses_origin()
    }

    /// Processes `batch` until done, a fatal error, or `stop`: a transient error
    /// retries the same batch after a backoff (counted in `retries`), which `stop` cuts short.
    pub(crate) async fn process(
        &self,
        topic: &str,
        partition: i32,
        batch: Batch<'_>,
        stop: &CancellationToken,
        retries: &metrics::Counter,
    ) -> Handled {
        let mut backoff = self.retry.clone();
        loop {
            let permit = tokio::select! {
                biased;
                () = stop.cancelled() => return Handled::Stopped,
                permit = self.permits.acquire() => permit,
            };
            let result = self.processor.process(topic, partition, batch).await;
            drop(permit);
            match result {
                Ok(outcome) => return Handled::Done(outcome),
                Err(e) if e.is_transient() => {
                    retries.increment(1);
                    let offsets = batch.offsets.first().zip(batch.offsets.last()).map(|(first, last)| *first..=*last);
                    warn!(?offsets, "transient error, retrying in {:?}: {e}", backoff.peek());
                    if !backoff.wait(stop.cancelled()).await {
                        return Handled::Stopped;
                    }
                }
                Err(e) => return Handled::Failed(e),
            }
        }
    }
}
