//! The poll loop: one thread polls Kafka, hands each record to its partition (the records of a
//! poll burst in one send per partition), follows rebalances
//! (the revoked partitions finish the op in hand and commit before they are given up) and commits
//! finished offsets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::dead_letter::DeadLetterSender;
use super::format::Formats;
use super::halt::Halt;
use super::partition::{Dispatched, Flushed, OnInvalid, Partition, PartitionContext};
use super::processor::{Processor, RetryingProcessor};
use super::{ConsumerError, InvalidMessagePolicy, Settings};
use crate::kafka_config::{self, KafkaClientConfig, Pinned};
use crate::Backoff;

/// Offsets are stored and committed by pgkafka, only for records whose handling finished.
const AUTO_COMMIT: Pinned = Pinned {
    key: "enable.auto.commit",
    accepted: &["false"],
    because: "pgkafka commits offsets itself, only for records whose handling finished",
};
const AUTO_OFFSET_STORE: Pinned = Pinned {
    key: "enable.auto.offset.store",
    accepted: &["false"],
    because: "pgkafka commits offsets itself, only for records whose handling finished",
};

/// A partition of a topic.
type Key = (String, i32);

/// The assigned partitions by topic, then partition: a record's partition is found from its
/// borrowed topic name, with no allocation per record.
#[derive(Default)]
struct Partitions(HashMap<String, HashMap<i32, Partition>>);

impl Partitions {
    fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Partition> {
        self.0.get_mut(topic).and_then(|partitions| partitions.get_mut(&partition))
    }

    fn add(&mut self, topic: &str, partition: i32) {
        self.0.entry(topic.to_owned()).or_default().entry(partition).or_insert_with(|| Partition::new(topic, partition));
    }

    fn remove(&mut self, topic: &str, partition: i32) {
        if let Some(partitions) = self.0.get_mut(topic) {
            partitions.remove(&partition);
        }
    }

    /// The finished offsets of `keys` (all when `None`) that Kafka has not confirmed as committed.
    fn pending_commits(&mut self, keys: Option<&[Key]>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (topic, p, partition) in self.selected(keys) {
            let Some(done) = partition.to_commit() else { continue };
            if let Err(e) = list.add_partition_offset(topic, p, Offset::Offset(done)) {
                warn!(topic, partition = p, "cannot list offset {done} for commit: {e}");
            }
        }
        list
    }

    /// Takes in the outcome of committing `offsets`: each partition whose commit succeeded is
    /// committed up to its offset; the others keep their finished offset to commit, so the next
    /// commit (periodic, on rebalance, or the final one) sends it again.
    fn confirm(&mut self, result: &KafkaResult<()>, offsets: &TopicPartitionList) {
        for element in offsets.elements() {
            let (topic, p) = (element.topic(), element.partition());
            if let Err(e) = result.as_ref().and(element.error().as_ref()) {
                warn!(topic, partition = p, offset = ?element.offset(), "offset commit failed, to be committed again: {e}");
                continue;
            }
            if let (Some(partition), Offset::Offset(offset)) = (self.get_mut(topic, p), element.offset()) {
                partition.committed(offset);
                debug!(topic, partition = p, offset, "committed");
            }
        }
    }

    /// The partitions of `keys` (all when `None`).
    fn selected<'a>(&'a mut self, keys: Option<&'a [Key]>) -> impl Iterator<Item = (&'a str, i32, &'a mut Partition)> + 'a {
        self.0
            .iter_mut()
            .flat_map(|(topic, partitions)| partitions.iter_mut().map(move |(p, partition)| (topic.as_str(), *p, partition)))
            .filter(move |(topic, p, _)| keys.is_none_or(|keys| keys.iter().any(|(t, q)| t == topic && q == p)))
    }
}

/// What the poll thread and librdkafka's callbacks share: the assigned partitions.
struct Assignment {
    partitions: Mutex<Partitions>,
    context: Arc<PartitionContext>,
    max_queued: usize,
}

impl Assignment {
    fn lock(&self) -> MutexGuard<'_, Partitions> {
        // A poisoned lock only means a panic elsewhere; the map itself is still consistent.
        self.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Copies a record into its partition's burst until [`Assignment::flush`].
    fn dispatch(&self, message: &BorrowedMessage<'_>) {
        let (p, offset) = (message.partition(), message.offset());
        let mut partitions = self.lock();
        let Some(partition) = partitions.get_mut(message.topic(), p) else {
            debug!(topic = message.topic(), partition = p, offset, "record of a partition not assigned to us; dropped");
            return;
        };
        match partition.dispatch(message) {
            Dispatched::Held => {}
            Dispatched::Duplicate => {
                debug!(topic = partition.topic(), partition = p, offset, "record delivered twice by librdkafka; dropped");
            }
        }
    }

    /// Hands the records held by each partition to its task, pausing a partition whose task is behind.
    fn flush(&self, consumer: &BaseConsumer<Context>) {
        let mut partitions = self.lock();
        for (topic, p, partition) in partitions.selected(None) {
            match partition.flush(&self.context) {
                Flushed::Queued { queued } if partition.should_pause(queued, self.max_queued) => {
                    match consumer.pause(&single(topic, p)) {
                        Ok(()) => {
                            debug!(topic, partition = p, queued, "paused: the partition's task is behind");
                            partition.set_paused(true);
                        }
                        Err(e) => warn!(topic, partition = p, "cannot pause: {e}"),
                    }
                }
                Flushed::Queued { .. } | Flushed::Nothing => {}
                // After a fatal error the task ended on purpose and the halt already holds the error
                // (it keeps the first). Otherwise the task died without a word: never drop the
                // partition's records silently.
                Flushed::TaskEnded { first } => self.context.halt.fail(ConsumerError::fatal(format!(
                    "the task of {topic} partition {p} ended unexpectedly; offset {first} and later are not handled"
                ))),
            }
        }
    }

    /// Resumes the paused partitions whose tasks have drained; returns whether any is still paused.
    fn resume_drained(&self, consumer: &BaseConsumer<Context>) -> bool {
        let mut partitions = self.lock();
        let mut still_paused = false;
        for (topic, p, partition) in partitions.selected(None) {
            if partition.should_resume(self.max_queued) {
                match consumer.resume(&single(topic, p)) {
                    Ok(()) => {
                        debug!(topic, partition = p, "resumed");
                        partition.set_paused(false);
                    }
                    Err(e) => warn!(topic, partition = p, "cannot resume: {e}"),
                }
            }
            still_paused |= partition.is_paused();
        }
        still_paused
    }

    /// Stops the tasks of `keys` (all when `None`), waits until each has finished the op in hand,
    /// and commits what finished. Runs on the poll thread, so it may block.
    fn stop_and_commit(&self, consumer: &BaseConsumer<Context>, keys: Option<&[Key]>) {
        let stopping: Vec<_> = {
            let mut partitions = self.lock();
            partitions.selected(keys).filter_map(|(topic, p, partition)| Some((topic.to_owned(), p, partition.stop()?))).collect()
        };
        for (topic, partition, task) in stopping {
            if let Err(e) = self.context.runtime.block_on(task.finished()) {
                error!(topic, partition, "partition task failed: {e}");
            }
        }
        self.commit(consumer, keys, CommitMode::Sync);
    }

    /// Commits the finished offsets of `keys` (all when `None`) not yet confirmed as committed.
    /// A synchronous commit is confirmed by its result; an asynchronous one by the committed
    /// offset in librdkafka's next statistics (see `Context::stats`): until confirmed, an offset
    /// is sent again by the next commit, so a commit that failed is never lost.
    fn commit(&self, consumer: &BaseConsumer<Context>, keys: Option<&[Key]>, mode: CommitMode) {
        let list = self.lock().pending_commits(keys);
        if list.count() == 0 {
            return;
        }
        match (consumer.commit(&list, mode), mode) {
            (Ok(()), CommitMode::Sync) => self.lock().confirm(&Ok(()), &list),
            (Ok(()), CommitMode::Async) => {}
            // Not fatal: the offsets stay to be committed, and if the process ends first, the
            // records after the last successful commit are delivered again, which the idempotent
            // consumer skips and a basic application must tolerate anyway.
            (Err(e), _) => warn!("offset commit failed, to be committed again: {e}"),
        }
    }
}

fn single(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}

/// At most this many records are taken from librdkafka (without waiting) before they are handed
/// to their partitions' tasks: a burst costs one wake-up per partition instead of one per record.
const MAX_BURST: usize = 1_000;

/// How long the poll thread waits for records.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// How long it waits while a partition is paused: its task drains it meanwhile, and a wait as
/// long as [`POLL_WAIT`] would leave the task without records before the resume is seen (a
/// paused partition delivers nothing that would end the wait early).
const PAUSED_POLL_WAIT: Duration = Duration::from_millis(5);

/// librdkafka's callbacks. They run on the poll thread, inside `poll`.
struct Context {
    assignment: Arc<Assignment>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        kafka_config::log_to_tracing(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka_config::error_to_tracing(&error, reason);
    }

    /// librdkafka's statistics (every `statistics.interval.ms`, 5 s by default here) give each
    /// partition's end offset, from which the lag gauges are set, and the offset Kafka confirmed
    /// as committed. The latter is how asynchronous commits are confirmed: rust-rdkafka 0.39 never
    /// calls `commit_callback` for them (fede1024/rust-rdkafka#856), so without it every commit
    /// would be sent again at each `commit_interval`; with it, at most until the next statistics.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, p, partition) in self.assignment.lock().selected(None) {
            if let Some(stats) = statistics.topics.get(topic).and_then(|t| t.partitions.get(&p)) {
                partition.record_lag(stats.hi_offset, stats.committed_offset);
                if stats.committed_offset >= 0 {
                    partition.committed(stats.committed_offset);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    /// The outcome of an offset commit, served by `poll`. Synchronous commits are confirmed from
    /// their result directly; for asynchronous ones rust-rdkafka 0.39 does not call this (see
    /// `stats`), but a future version will, and the bookkeeping is the same.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.assignment.lock().confirm(&result, offsets);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let keys: Vec<Key> = list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
            info!(partitions = ?keys, "partitions revoked: finishing the ops in hand and committing");
            self.assignment.stop_and_commit(consumer, Some(&keys));
            let mut partitions = self.assignment.lock();
            for (topic, p) in &keys {
                partitions.remove(topic, *p);
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let mut partitions = self.assignment.lock();
                let mut keys = Vec::new();
                for element in list.elements() {
                    partitions.add(element.topic(), element.partition());
                    keys.push((element.topic().to_owned(), element.partition()));
                }
                info!(partitions = ?keys, "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!("rebalance error: {e}"),
        }
    }
}

/// Kafka errors after which polling on cannot help: the shared list of final errors, except a
/// subscribed topic that does not exist (yet): librdkafka reports it on every poll until the
/// topic appears, for instance when the consumer starts before the producer created its topics.
fn is_fatal_poll_error(error: &KafkaError) -> bool {
    kafka_config::is_fatal(error) && error.rdkafka_error_code() != Some(RDKafkaErrorCode::UnknownTopicOrPartition)
}

/// The librdkafka consumer configuration: pgkafka's defaults, the user's options, and the
/// settings pgkafka's commits rest on pinned.
fn client_config(settings: &Settings) -> Result<rdkafka::ClientConfig, ConsumerError> {
    Ok(KafkaClientConfig::new(&settings.brokers, "pgkafka-consumer")
        .set_default("group.id", &settings.group_id)
        .set_default("auto.offset.reset", "earliest")
        .set_default("statistics.interval.ms", "5000")
        // When a partition's prefetch queue is full (`queued.min.messages`), librdkafka stops
        // fetching it for this long. Its default, 1 s, is longer than the handlers take to drain
        // that queue, so every handler faster than the fetcher sat idle for most of each second
        // (stalls of 0.6 s in the benchmark's timeline). Re-checking soon costs a timer wake-up.
        .set_default("fetch.queue.backoff.ms", "10")
        .pin(AUTO_COMMIT)
        .pin(AUTO_OFFSET_STORE)
        .user_options(&settings.kafka_options)
        .map_err(ConsumerError::Config)?
        .into_client_config())
}

/// Runs a consumer until a fatal error, a shutdown, or until the returned future is dropped.
pub(crate) async fn run(settings: Settings, processor: Arc<dyn Processor>) -> Result<(), ConsumerError> {
    if settings.topics.is_empty() {
        return Err(ConsumerError::Config("no topics to consume".into()));
    }
    let config = client_config(&settings)?;
    let on_invalid = match &settings.invalid_messages {
        InvalidMessagePolicy::Stop => OnInvalid::Stop,
        InvalidMessagePolicy::Skip => OnInvalid::Skip,
        InvalidMessagePolicy::DeadLetter(topic) => OnInvalid::DeadLetter(DeadLetterSender::new(&settings, topic)?),
    };
    let halt = Arc::new(Halt::default());
    // Dropping this future (an aborted task, a `select!` that lost) must stop the consumer: the
    // poll thread would otherwise go on handling and committing with no owner, in the group.
    let _stop_when_dropped = halt.raise_on_drop();
    let context = Arc::new(PartitionContext {
        processor: RetryingProcessor::new(
            processor,
            settings.max_concurrent_partitions,
            Backoff::new(settings.retry_initial, settings.retry_max),
        ),
        on_invalid,
        formats: Formats::new(&settings.record_formats, settings.debezium_positions),
        halt: Arc::clone(&halt),
        runtime: tokio::runtime::Handle::current(),
    });
    let assignment = Arc::new(Assignment {
        partitions: Mutex::new(Partitions::default()),
        context,
        max_queued: settings.max_queued_per_partition,
    });
    let consumer: BaseConsumer<Context> = config.create_with_context(Context { assignment: Arc::clone(&assignment) })?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    info!(group = settings.group_id, topics = ?settings.topics, "consumer started");

    let poller = Poller {
        consumer,
        assignment,
        halt: Arc::clone(&halt),
        shutdown: settings.shutdown.clone(),
        commit_interval: settings.commit_interval,
    };
    let joined = tokio::task::spawn_blocking(move || poller.run()).await;
    if let Err(e) = joined {
        halt.raise();
        return Err(ConsumerError::fatal(format!("the poll thread failed: {e}")));
    }
    match halt.take_error() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// The poll thread's loop and what it owns.
struct Poller {
    consumer: BaseConsumer<Context>,
    assignment: Arc<Assignment>,
    halt: Arc<Halt>,
    shutdown: CancellationToken,
    commit_interval: Duration,
}

impl Poller {
    fn run(self) {
        let consumer = &self.consumer;
        let mut last_commit = Instant::now();
        let mut wait = POLL_WAIT;
        loop {
            if self.halt.is_raised() || self.shutdown.is_cancelled() {
                break;
            }
            let mut next = consumer.poll(wait);
            let (mut taken, mut fatal) = (0, false);
            while let Some(result) = next.take() {
                match result {
                    Ok(message) => self.assignment.dispatch(&message),
                    Err(e) if is_fatal_poll_error(&e) => {
                        self.halt.fail(ConsumerError::Kafka(e));
                        fatal = true;
                        break;
                    }
                    Err(e) => warn!("kafka: {e}"),
                }
                taken += 1;
                if taken < MAX_BURST {
                    next = consumer.poll(Duration::ZERO);
                }
            }
            self.assignment.flush(consumer);
            if fatal {
                break;
            }
            wait = if self.assignment.resume_drained(consumer) { PAUSED_POLL_WAIT } else { POLL_WAIT };
            if last_commit.elapsed() >= self.commit_interval {
                self.assignment.commit(consumer, None, CommitMode::Async);
                last_commit = Instant::now();
            }
        }
        info!("consumer stopping: finishing the ops in hand and committing");
        self.halt.raise();
        self.assignment.stop_and_commit(consumer, None);
        consumer.unsubscribe();
        info!("consumer stopped");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn listed(list: &TopicPartitionList) -> Vec<(String, i32, Offset)> {
        list.elements().iter().map(|e| (e.topic().to_owned(), e.partition(), e.offset())).collect()
    }

    /// An asynchronous commit that fails (the broker's answer arrives later, through the commit
    /// callback) leaves its offsets to be committed again; one that succeeds does not. The
    /// bookkeeping this replaces marked offsets committed when the commit was queued, so a
    /// failed one was never sent again, not even by the final commit.
    #[test]
    fn a_failed_commit_is_committed_again_and_a_confirmed_one_is_not() {
        let mut partitions = Partitions::default();
        partitions.add("t", 0);
        partitions.add("t", 1);
        partitions.get_mut("t", 0).unwrap().finish_for_test(9);
        partitions.get_mut("t", 1).unwrap().finish_for_test(4);

        let first = partitions.pending_commits(None);
        let mut sent = listed(&first);
        sent.sort_by_key(|(_, p, _)| *p);
        assert_eq!(sent, vec![("t".into(), 0, Offset::Offset(10)), ("t".into(), 1, Offset::Offset(5))]);

        // Sent, then refused: still to commit, also while nothing more was handled.
        partitions.confirm(&Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::RebalanceInProgress)), &first);
        assert_eq!(partitions.pending_commits(None).count(), 2);

        // Partition 0 moved on meanwhile; the retry carries its newer offset, and once Kafka
        // confirms it nothing is left to commit.
        partitions.get_mut("t", 0).unwrap().finish_for_test(14);
        let retry = partitions.pending_commits(None);
        assert!(listed(&retry).contains(&("t".into(), 0, Offset::Offset(15))));
        partitions.confirm(&Ok(()), &retry);
        assert_eq!(partitions.pending_commits(None).count(), 0);

        // A late confirmation of the older commit moves nothing back.
        partitions.confirm(&Ok(()), &first);
        partitions.get_mut("t", 0).unwrap().finish_for_test(15);
        assert_eq!(listed(&partitions.pending_commits(None)), vec![("t".into(), 0, Offset::Offset(16))]);
    }

    /// A partition revoked while its commit was in flight is not brought back by the answer.
    #[test]
    fn a_confirmation_for_a_revoked_partition_is_ignored() {
        let mut partitions = Partitions::default();
        partitions.add("t", 0);
        partitions.get_mut("t", 0).unwrap().finish_for_test(3);
        let sent = partitions.pending_commits(None);
        partitions.remove("t", 0);
        partitions.confirm(&Ok(()), &sent);
        assert!(partitions.get_mut("t", 0).is_none());
    }
}
