//! One assigned partition: the poll thread's side (copying its records out, its queue to the
//! task, duplicate and pause accounting, what is finished and committed) and its task, which
//! decodes and handles the records strictly in offset order, a batch at a time.
//!
//! The poll thread copies the records of a poll burst into one buffer ([`Burst`]) and hands it
//! to the task in one send, so a busy partition costs one cross-thread wake-up per burst rather
//! than per record. The task decodes them (keeping the origin headers only when the processor
//! reads them): decoding runs on the workers, in parallel across partitions, and an op is freed
//! on the thread that allocated it.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rdkafka::message::{BorrowedMessage, Message as _, OwnedMessage};
use rdkafka::Timestamp;
use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info_span, Instrument as _};

use super::burst::{Burst, Pending, Record};
use super::dead_letter::{DeadLetterSender, Delivery};
use super::format::{Formats, Read, Reader};
use super::halt::Halt;
use super::origin::Origin;
use super::SnapshotKind;
use super::processor::{Batch, Handled, RetryingProcessor};
use super::ConsumerError;
use crate::metrics::{
    CONSUMER_BATCH_SIZE, CONSUMER_INVALID_MESSAGES, CONSUMER_LAG, CONSUMER_OPS_DUPLICATE, CONSUMER_OPS_FAILED,
    CONSUMER_OPS_HANDLED, CONSUMER_RECORDS_SKIPPED, CONSUMER_RETRIES,
};
use crate::ReplicationOp;

/// What every partition task needs, shared by all of them.
pub(crate) struct PartitionContext {
    pub(crate) processor: RetryingProcessor,
    pub(crate) on_invalid: OnInvalid,
    pub(crate) formats: Formats,
    pub(crate) halt: Arc<Halt>,
    pub(crate) runtime: tokio::runtime::Handle,
}

/// What a partition task does with a record that is not a valid `ReplicationOp`: the
/// [`InvalidMessagePolicy`](super::InvalidMessagePolicy), with its dead-letter sender.
pub(crate) enum OnInvalid {
    Stop,
    Skip,
    DeadLetter(DeadLetterSender),
}

/// What the poll thread and a partition's task both see.
#[derive(Debug)]
struct Progress {
    /// The offset to commit: one past the last record whose handling finished; -1 for none yet.
    done: AtomicI64,
    /// Records sent to the task and not yet taken by it.
    queued: AtomicUsize,
}

impl Progress {
    fn finish(&self, offset: i64) {
        self.done.store(offset + 1, Ordering::Release);
    }
}

/// What became of a record handed to [`Partition::dispatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dispatched {
    /// Copied and held for the next [`Partition::flush`].
    Held,
    /// At or below an offset already queued: librdkafka delivered it again after a pause.
    Duplicate,
}

/// What became of the records held by a partition at [`Partition::flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// None were held.
    Nothing,
    /// Queued for the task, which has `queued` records waiting now.
    Queued { queued: usize },
    /// The task has ended (after a fatal error); the consumer is about to stop. `first` is the
    /// offset of the first record not handed over.
    TaskEnded { first: i64 },
}

/// One assigned partition, as the poll thread keeps it.
pub(crate) struct Partition {
    topic: String,
    partition: i32,
    progress: Arc<Progress>,
    worker: Option<Worker>,
    /// Offset of the last record handed to the worker or held for it.
    last_dispatched: i64,
    /// Records copied in this poll burst, not yet sent to the task.
    held: Burst,
    /// The offset last committed to Kafka.
    committed: i64,
    paused: bool,
    lag: metrics::Gauge,
}

struct Worker {
    tx: UnboundedSender<Burst>,
    stop: CancellationToken,
    join: JoinHandle<()>,
}

/// A partition's task, told to stop, to be awaited.
pub(crate) struct Stopping {
    tx: UnboundedSender<Burst>,
    join: JoinHandle<()>,
}

impl Stopping {
    /// Waits until the task has finished the batch in hand.
    pub(crate) async fn finished(self) -> Result<(), tokio::task::JoinError> {
        drop(self.tx);
        self.join.await
    }
}

impl Partition {
    pub(crate) fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            progress: Arc::new(Progress { done: AtomicI64::new(-1), queued: AtomicUsize::new(0) }),
            worker: None,
            last_dispatched: -1,
            held: Burst::default(),
            committed: -1,
            paused: false,
            lag: CONSUMER_LAG.partition_gauge(topic, partition),
        }
    }

    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// Copies `message` and holds it for the partition's task until [`Partition::flush`].
    pub(crate) fn dispatch(&mut self, message: &BorrowedMessage<'_>) -> Dispatched {
        let offset = message.offset();
        if offset <= self.last_dispatched {
            return Dispatched::Duplicate;
        }
        self.held.push(message);
        self.last_dispatched = offset;
        Dispatched::Held
    }

    /// Hands the records held since the last flush to the partition's task, starting the task if
    /// needed.
    pub(crate) fn flush(&mut self, context: &Arc<PartitionContext>) -> Flushed {
        let Some(first) = self.held.first_offset() else { return Flushed::Nothing };
        let next = Burst::sized_like(&self.held);
        let held = std::mem::replace(&mut self.held, next);
        let count = held.len();
        let worker = self.worker.get_or_insert_with(|| spawn(context, &self.topic, self.partition, &self.progress));
        // Counted before sending: the task may take the records (and count them down) at once.
        let queued = self.progress.queued.fetch_add(count, Ordering::AcqRel).saturating_add(count);
        if worker.tx.send(held).is_err() {
            self.progress.queued.fetch_sub(count, Ordering::AcqRel);
            return Flushed::TaskEnded { first };
        }
        Flushed::Queued { queued }
    }

    /// Whether the partition should be paused now: `max_queued` records wait and it is not yet.
    pub(crate) fn should_pause(&self, queued: usize, max_queued: usize) -> bool {
        queued >= max_queued && !self.paused
    }

    /// Whether a paused partition has drained below half of `max_queued`, so resuming it lets
    /// librdkafka's next fetch overlap the handler's work on the other half.
    pub(crate) fn should_resume(&self, max_queued: usize) -> bool {
        self.paused && self.progress.queued.load(Ordering::Acquire) < max_queued / 2
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    pub(crate) fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// The offset to commit, when handling moved past the last commit.
    pub(crate) fn to_commit(&self) -> Option<i64> {
        let done = self.progress.done.load(Ordering::Acquire);
        (done > self.committed).then_some(done)
    }

    /// As if the task had finished the record at `offset`.
    #[cfg(test)]
    pub(crate) fn finish_for_test(&self, offset: i64) {
        self.progress.finish(offset);
    }

    /// Records that Kafka has `offset` committed.
    pub(crate) fn committed(&mut self, offset: i64) {
        self.committed = self.committed.max(offset);
    }

    /// Sets the lag gauge from the partition's end offset and the offset committed by the group
    /// (librdkafka's statistics): records fetched but not yet handled count as lag too.
    pub(crate) fn record_lag(&self, end_offset: i64, group_committed: i64) {
        let done = self.progress.done.load(Ordering::Acquire).max(group_committed);
        if end_offset >= 0 && done >= 0 {
            self.lag.set((end_offset - done).max(0) as f64);
        }
    }

    /// Tells the task (if any) to stop after the batch in hand; await the result to wait for it.
    pub(crate) fn stop(&mut self) -> Option<Stopping> {
        self.worker.take().map(|worker| {
            worker.stop.cancel();
            Stopping { tx: worker.tx, join: worker.join }
        })
    }
}

fn spawn(context: &Arc<PartitionContext>, topic: &str, partition: i32, progress: &Arc<Progress>) -> Worker {
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = context.halt.child_token();
    let span = info_span!("partition", topic, partition);
    let task = PartitionTask {
        reader: context.formats.reader(topic),
        context: Arc::clone(context),
        topic: topic.to_owned(),
        partition,
        progress: Arc::clone(progress),
        rx,
        stop: stop.clone(),
        meters: PartitionMeters::new(topic, partition),
    };
    let join = context.runtime.spawn(task.run().instrument(span));
    Worker { tx, stop, join }
}

/// A partition's metric handles, made once when its task starts so handling an op only
/// increments them.
struct PartitionMeters {
    handled: metrics::Counter,
    duplicates: metrics::Counter,
    retries: metrics::Counter,
    failed: metrics::Counter,
    invalid: metrics::Counter,
    skipped: metrics::Counter,
    batch_size: metrics::Histogram,
}

impl PartitionMeters {
    fn new(topic: &str, partition: i32) -> Self {
        Self {
            handled: CONSUMER_OPS_HANDLED.partition_counter(topic, partition),
            duplicates: CONSUMER_OPS_DUPLICATE.partition_counter(topic, partition),
            retries: CONSUMER_RETRIES.partition_counter(topic, partition),
            failed: CONSUMER_OPS_FAILED.partition_counter(topic, partition),
            invalid: CONSUMER_INVALID_MESSAGES.partition_counter(topic, partition),
            skipped: CONSUMER_RECORDS_SKIPPED.partition_counter(topic, partition),
            batch_size: CONSUMER_BATCH_SIZE.partition_histogram(topic, partition),
        }
    }
}

/// The task of one partition: takes its records in order and handles them one batch at a time.
struct PartitionTask {
    context: Arc<PartitionContext>,
    /// How this partition's topic is read.
    reader: Reader,
    topic: String,
    partition: i32,
    progress: Arc<Progress>,
    rx: UnboundedReceiver<Burst>,
    stop: CancellationToken,
    meters: PartitionMeters,
}

/// A decoded record: an op (with its offset and, if the processor reads it, its origin), or a
/// record that is not a valid op, copied out of its burst with the reason.
enum Item {
    Op(i64, ReplicationOp, Option<Origin>, Option<SnapshotKind>),
    /// A record without a row change (a tombstone, a transaction boundary): finished with the batch.
    Skipped(i64),
    Invalid(OwnedMessage, String),
}

impl PartitionTask {
    async fn run(mut self) {
        let max_batch = self.context.processor.max_batch();
        let linger = self.context.processor.linger();
        let keep_origin = self.context.processor.uses_origin();
        let mut pending = Pending::default();
        // Reused from batch to batch.
        let (mut offsets, mut ops, mut origins, mut snapshots) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        loop {
            // Told to stop: the batch in hand is finished, the records queued behind it are not.
            if self.stop.is_cancelled() {
                return;
            }
            if pending.is_empty() {
                let chunk = tokio::select! {
                    biased;
                    () = self.stop.cancelled() => return,
                    chunk = self.rx.recv() => match chunk { Some(chunk) => chunk, None => return },
                };
                pending.push(chunk);
            }
            offsets.clear();
            ops.clear();
            origins.clear();
            snapshots.clear();
            let (mut skipped, mut last_skipped) = (0_usize, None);
            let mut invalid = None;
            let mut deadline = None;
            loop {
                while offsets.len() < max_batch {
                    let topic = self.topic.as_str();
                    match pending.pop(|record| decode(&self.reader, topic, self.partition, record, keep_origin)) {
                        Some(Item::Op(offset, op, origin, snapshot)) => {
                            offsets.push(offset);
                            ops.push(op);
                            origins.push(origin);
                            snapshots.push(snapshot);
                        }
                        Some(Item::Skipped(offset)) => {
                            self.meters.skipped.increment(1);
                            skipped += 1;
                            last_skipped = Some(offset);
                        }
                        // An invalid record ends the batch: the ops before it are handled first.
                        Some(Item::Invalid(message, reason)) => {
                            invalid = Some((message, reason));
                            break;
                        }
                        None => break,
                    }
                }
                if invalid.is_some() || offsets.len() >= max_batch {
                    break;
                }
                match self.rx.try_recv() {
                    Ok(chunk) => pending.push(chunk),
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {
                        let deadline = *deadline.get_or_insert_with(|| Instant::now() + linger);
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        match tokio::time::timeout(left, self.rx.recv()).await {
                            Ok(Some(chunk)) => pending.push(chunk),
                            _ => break,
                        }
                    }
                }
            }
            self.progress.queued.fetch_sub(offsets.len() + skipped + usize::from(invalid.is_some()), Ordering::AcqRel);

            if !self.handle_ops(&ops, &offsets, &origins, &snapshots).await {
                return;
            }
            if let Some(skipped) = last_skipped {
                // Passed-over records finish with the ops around them, never before them.
                self.progress.finish(offsets.last().map_or(skipped, |&last| last.max(skipped)));
            }
            if let Some((message, reason)) = invalid {
                if !self.handle_invalid(message, reason).await {
                    return;
                }
            }
        }
    }

    /// Handles `ops` until done; false when the task must end.
    async fn handle_ops(
        &self,
        ops: &[ReplicationOp],
        offsets: &[i64],
        origins: &[Option<Origin>],
        snapshots: &[Option<SnapshotKind>],
    ) -> bool {
        let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else { return true };
        let handled = self
            .context
            .processor
            .process(&self.topic, self.partition, Batch { offsets, ops, origins, snapshots }, &self.stop, &self.meters.retries)
            .await;
        match handled {
            Handled::Done(outcome) => {
                self.progress.finish(last);
                self.meters.handled.increment(outcome.applied);
                if outcome.duplicates > 0 {
                    self.meters.duplicates.increment(outcome.duplicates);
                    debug!(offsets = ?(first..=last), duplicates = outcome.duplicates, "skipped ops already applied");
                }
                self.meters.batch_size.record(ops.len() as f64);
                true
            }
            Handled::Stopped => false,
            Handled::Failed(e) => {
                self.meters.failed.increment(1);
                error!(offsets = ?(first..=last), "fatal error, stopping the consumer: {e}");
                self.context.halt.fail(e);
                false
            }
        }
    }

    /// Applies the invalid-message policy; false when the task must end.
    async fn handle_invalid(&self, message: OwnedMessage, reason: String) -> bool {
        let offset = message.offset();
        let error = ConsumerError::InvalidMessage { topic: self.topic.clone(), partition: self.partition, offset, reason };
        self.meters.invalid.increment(1);
        match &self.context.on_invalid {
            OnInvalid::Skip => {
                error!("skipping: {error}");
                self.progress.finish(offset);
                true
            }
            OnInvalid::DeadLetter(dead_letter) => {
                match dead_letter.send(&message, &error, &self.stop).await {
                    Delivery::Sent => {
                        error!("sent to dead-letter topic {}: {error}", dead_letter.topic());
                        self.progress.finish(offset);
                        true
                    }
                    Delivery::Stopped => false,
                    Delivery::Refused(e) => {
                        error!("cannot write to dead-letter topic {}: {e}; stopping on: {error}", dead_letter.topic());
                        self.context.halt.fail(error);
                        false
                    }
                }
            }
            OnInvalid::Stop => {
                error!("stopping: {error}");
                self.context.halt.fail(error);
                false
            }
        }
    }
}

/// Decodes a record of `topic`/`partition` as `reader` reads its topic, keeping its origin when
/// `keep_origin`; an invalid record is copied out (key and value, what the dead-letter topic takes).
fn decode(reader: &Reader, topic: &str, partition: i32, record: Record<'_>, keep_origin: bool) -> Item {
    let parsed = match reader.read(record.value, record.offset) {
        Read::Op(op, snapshot) => Ok((op, snapshot)),
        Read::Skipped(why) => {
            debug!(offset = record.offset, "passing over a {why} record");
            return Item::Skipped(record.offset);
        }
        Read::Invalid(reason) => Err(reason),
    };
    // The producer's origin headers; a record with broken ones is invalid like a broken value.
    let origin = match keep_origin {
        true => Origin::from_headers(record.headers()),
        false => Origin::check_headers(record.headers()).map(|()| None),
    };
    match (parsed, origin) {
        (Ok((op, in_value)), Ok(origin)) => {
            let snapshot = SnapshotKind::from_headers(record.headers()).or(in_value);
            Item::Op(record.offset, op, origin, snapshot)
        }
        (Err(reason), _) | (_, Err(reason)) => {
            let copy = OwnedMessage::new(
                record.value.map(<[u8]>::to_vec),
                record.key.map(<[u8]>::to_vec),
                topic.to_owned(),
                Timestamp::NotAvailable,
                partition,
                record.offset,
                None,
            );
            Item::Invalid(copy, reason)
        }
    }
}
