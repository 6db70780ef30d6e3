//! The machinery shared by both consumers: the Kafka poll thread, rebalance handling, one task per
//! partition, retries, and offset commits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver, UnboundedSender};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument as _};

use super::origin::Origin;
use super::{BasicApplication, ConsumerError, InvalidMessagePolicy, Settings};
use crate::ReplicationOp;



/// What handles the ops of one partition: the basic or the idempotent consumer.
#[async_trait]
pub(crate) trait Processor: Send + Sync + 'static {
    /// How many consecutive ops of a partition `process` may take at once.
    fn max_batch(&self) -> usize;
    /// How long to wait for more ops to fill a batch.
    fn linger(&self) -> Duration;
    /// Handles `ops` (consecutive, of one partition, at `offsets`, from `origins` as their
    /// records' headers say) as one unit: all or nothing.
    async fn process(&self, topic: &str, partition: i32, offsets: &[i64], ops: &[ReplicationOp], origins: &[Option<Origin>]) -> Result<Outcome, ConsumerError>;
}

/// What a `process` call did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) applied: u64,
    pub(crate) duplicates: u64,
}

pub(crate) struct BasicProcessor<A> {
    pub(crate) app: Arc<A>,
}

#[async_trait]
impl<A: BasicApplication> Processor for BasicProcessor<A> {
    fn max_batch(&self) -> usize {
        1
    }

    fn linger(&self) -> Duration {
        Duration::ZERO
    }

    async fn process(&self, topic: &str, partition: i32, offsets: &[i64], ops: &[ReplicationOp], _: &[Option<Origin>]) -> Result<Outcome, ConsumerError> {
        for (op, &offset) in ops.iter().zip(offsets) {
            super::call_handler(topic, partition, offset, self.app.handle_message(op)).await?;
        }
        Ok(Outcome { applied: ops.len() as u64, duplicates: 0 })
    }
}

type Key = (String, i32);

/// Progress of one assigned partition, shared by the poll thread and the partition's task.
#[derive(Debug)]
struct PartitionState {
    topic: String,
    partition: i32,
    /// The offset to commit: one past the last record whose handling finished; -1 for none yet.
    done: AtomicI64,
    /// Records sent to the task and not yet taken by it.
    queued: AtomicUsize,
}

struct Worker {
    tx: UnboundedSender<OwnedMessage>,
    stop: CancellationToken,
    join: JoinHandle<()>,
}

struct Assigned {
    state: Arc<PartitionState>,
    worker: Option<Worker>,
    /// Offset of the last record handed to the worker; protects against a redelivery by
    /// librdkafka after a pause.
    last_dispatched: i64,
    committed: i64,
    paused: bool,
}

#[derive(Default)]
struct Dispatch {
    assigned: HashMap<Key, Assigned>,
}

struct Shared {
    settings: Settings,
    runtime: tokio::runtime::Handle,
    processor: Arc<dyn Processor>,
    permits: Arc<Semaphore>,
    /// Cancelled on a fatal error or a shutdown: every task finishes what it has in hand.
    halt: CancellationToken,
    fatal: Mutex<Option<ConsumerError>>,
    dispatch: Mutex<Dispatch>,
    dead_letter: Option<(FutureProducer, String)>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Dispatch> {
        // A poisoned lock only means a panic elsewhere; the map itself is still consistent.
        self.dispatch.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fail(&self, error: ConsumerError) {
        let mut fatal = self.fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if fatal.is_none() {
            *fatal = Some(error);
        }
        self.halt.cancel();
    }

    /// Stops the tasks of `keys` (all when `None`), waits until each has finished the op in hand,
    /// and commits what finished. Runs on the poll thread, so it may block.
    fn stop_and_commit(&self, consumer: &BaseConsumer<Context>, keys: Option<&[Key]>) {
        let workers: Vec<(Key, Worker)> = {
            let mut dispatch = self.lock();
            dispatch
                .assigned
                .iter_mut()
                .filter(|(key, _)| keys.is_none_or(|keys| keys.contains(key)))
                .filter_map(|(key, a)| a.worker.take().map(|w| (key.clone(), w)))
                .collect()
        };
        for (_, worker) in &workers {
            worker.stop.cancel();
        }
        for ((topic, partition), worker) in workers {
            drop(worker.tx);
            if let Err(e) = self.runtime.block_on(worker.join) {
                error!(topic, partition, "partition task failed: {e}");
            }
        }
        self.commit(consumer, keys, CommitMode::Sync);
    }

    /// Commits the finished offsets of `keys` (all when `None`) that moved since the last commit.
    fn commit(&self, consumer: &BaseConsumer<Context>, keys: Option<&[Key]>, mode: CommitMode) {
        let mut list = TopicPartitionList::new();
        let mut moved = Vec::new();
        {
            let dispatch = self.lock();
            for (key, a) in &dispatch.assigned {
                if keys.is_some_and(|keys| !keys.contains(key)) {
                    continue;
                }
                let done = a.state.done.load(Ordering::Acquire);
                if done > a.committed {
                    if let Err(e) = list.add_partition_offset(&key.0, key.1, Offset::Offset(done)) {
                        warn!(topic = key.0, partition = key.1, "cannot list offset {done} for commit: {e}");
                        continue;
                    }
                    moved.push((key.clone(), done));
                }
            }
        }
        if moved.is_empty() {
            return;
        }
        match consumer.commit(&list, mode) {
            Ok(()) => {
                let mut dispatch = self.lock();
                for (key, done) in moved {
                    if let Some(a) = dispatch.assigned.get_mut(&key) {
                        a.committed = a.committed.max(done);
                    }
                    debug!(topic = key.0, partition = key.1, offset = done, "committed");
                }
            }
            // Not fatal: the records after the last successful commit are delivered again, which
            // the idempotent consumer skips and a basic application must tolerate anyway.
            Err(e) => warn!("offset commit failed: {e}"),
        }
    }

    /// Hands a record to its partition's task, starting the task if needed.
    fn dispatch(self: &Arc<Self>, consumer: &BaseConsumer<Context>, message: OwnedMessage) {
        let key = (message.topic().to_owned(), message.partition());
        let offset = message.offset();
        let mut dispatch = self.lock();
        let Some(assigned) = dispatch.assigned.get_mut(&key) else {
            debug!(topic = key.0, partition = key.1, offset, "record of a partition not assigned to us; dropped");
            return;
        };
        if offset <= assigned.last_dispatched {
            debug!(topic = key.0, partition = key.1, offset, "record delivered twice by librdkafka; dropped");
            return;
        }
        let worker = assigned.worker.get_or_insert_with(|| self.spawn_worker(&assigned.state));
        // Counted before sending: the task may take the record (and count it down) at once.
        let queued = assigned.state.queued.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if worker.tx.send(message).is_err() {
            // The task ended: after a fatal error (kept as the reason; the poll loop is about to
            // stop), or for a reason it could not report. Never drop the partition's records silently.
            assigned.state.queued.fetch_sub(1, Ordering::AcqRel);
            drop(dispatch);
            self.fail(ConsumerError::fatal(format!(
                "the task of {} partition {} ended unexpectedly; offset {offset} and later are not handled",
                key.0, key.1
            )));
            return;
        }
        assigned.last_dispatched = offset;
        if queued >= self.settings.max_queued_per_partition && !assigned.paused {
            match consumer.pause(&single(&key)) {
                Ok(()) => {
                    debug!(topic = key.0, partition = key.1, queued, "paused: the partition's task is behind");
                    assigned.paused = true;
                }
                Err(e) => warn!(topic = key.0, partition = key.1, "cannot pause: {e}"),
            }
        }
    }

    fn resume_drained(&self, consumer: &BaseConsumer<Context>) {
        let mut dispatch = self.lock();
        for (key, a) in &mut dispatch.assigned {
            if a.paused && a.state.queued.load(Ordering::Acquire) < self.settings.max_queued_per_partition / 2 {
                match consumer.resume(&single(key)) {
                    Ok(()) => {
                        debug!(topic = key.0, partition = key.1, "resumed");
                        a.paused = false;
                    }
                    Err(e) => warn!(topic = key.0, partition = key.1, "cannot resume: {e}"),
                }
            }
        }
    }

    fn spawn_worker(self: &Arc<Self>, state: &Arc<PartitionState>) -> Worker {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = self.halt.child_token();
        let span = info_span!("partition", topic = state.topic, partition = state.partition);
        let task = PartitionTask {
            shared: Arc::clone(self),
            state: Arc::clone(state),
            rx,
            stop: stop.clone(),
            meters: PartitionMeters::new(&state.topic, state.partition),
        };
        let join = self.runtime.spawn(task.run().instrument(span));
        Worker { tx, stop, join }
    }
}

fn single(key: &Key) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(&key.0, key.1);
    list
}

/// librdkafka's callbacks. They run on the poll thread, inside `poll`.
struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {
    /// librdkafka's statistics (every `statistics.interval.ms`, 5 s by default here) give each
    /// partition's end offset; the lag is the records from the last handled one to that end, so
    /// records fetched but not yet handled count too.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let dispatch = self.shared.lock();
        for (key, assigned) in &dispatch.assigned {
            let Some(partition) = statistics.topics.get(&key.0).and_then(|t| t.partitions.get(&key.1)) else {
                continue;
            };
            let done = assigned.state.done.load(Ordering::Acquire).max(partition.committed_offset);
            if partition.hi_offset >= 0 && done >= 0 {
                metrics::gauge!("pgkafka_consumer_lag", "topic" => key.0.clone(), "partition" => key.1.to_string())
                    .set((partition.hi_offset - done).max(0) as f64);
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let keys: Vec<Key> = list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
            info!(partitions = ?keys, "partitions revoked: finishing the ops in hand and committing");
            self.shared.stop_and_commit(consumer, Some(&keys));
            let mut dispatch = self.shared.lock();
            for key in &keys {
                dispatch.assigned.remove(key);
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let mut dispatch = self.shared.lock();
                let mut keys = Vec::new();
                for element in list.elements() {
                    let key = (element.topic().to_owned(), element.partition());
                    keys.push(key.clone());
                    dispatch.assigned.entry(key).or_insert_with(|| Assigned {
                        state: Arc::new(PartitionState {
                            topic: element.topic().to_owned(),
                            partition: element.partition(),
                            done: AtomicI64::new(-1),
                            queued: AtomicUsize::new(0),
                        }),
                        worker: None,
                        last_dispatched: -1,
                        committed: -1,
                        paused: false,
                    });
                }
                info!(partitions = ?keys, "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!("rebalance error: {e}"),
        }
    }
}

/// The task of one partition: takes its records in order and handles them one batch at a time.
struct PartitionTask {
    shared: Arc<Shared>,
    state: Arc<PartitionState>,
    rx: UnboundedReceiver<OwnedMessage>,
    stop: CancellationToken,
    meters: PartitionMeters,
}

/// A partition's metric handles, made once when its task starts so handling an op only
/// increments them.
struct PartitionMeters {
    handled: metrics::Counter,
    duplicates: metrics::Counter,
    retries: metrics::Counter,
    failed: metrics::Counter,
    batch_size: metrics::Histogram,
}

impl PartitionMeters {
    fn new(topic: &str, partition: i32) -> Self {
        let labels = [("topic", topic.to_owned()), ("partition", partition.to_string())];
        Self {
            handled: metrics::counter!("pgkafka_consumer_ops_handled_total", &labels),
            duplicates: metrics::counter!("pgkafka_consumer_ops_duplicate_total", &labels),
            retries: metrics::counter!("pgkafka_consumer_retries_total", &labels),
            failed: metrics::counter!("pgkafka_consumer_ops_failed_total", &labels),
            batch_size: metrics::histogram!("pgkafka_consumer_batch_size", &labels),
        }
    }
}

enum Item {
    Op(i64, ReplicationOp, Option<Origin>),
    Invalid(OwnedMessage, String),
}

impl PartitionTask {
    async fn run(mut self) {
        let max_batch = self.shared.processor.max_batch();
        let linger = self.shared.processor.linger();
        loop {
            let first = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                m = self.rx.recv() => match m { Some(m) => m, None => return },
            };
            let mut items = vec![decode(first)];
            let deadline = Instant::now() + linger;
            while items.len() < max_batch && matches!(items.last(), Some(Item::Op(..))) {
                match self.rx.try_recv() {
                    Ok(m) => items.push(decode(m)),
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        match tokio::time::timeout(left, self.rx.recv()).await {
                            Ok(Some(m)) => items.push(decode(m)),
                            _ => break,
                        }
                    }
                }
            }
            self.state.queued.fetch_sub(items.len(), Ordering::AcqRel);

            let invalid = match items.last() {
                Some(Item::Invalid(..)) => items.pop(),
                _ => None,
            };
            let mut offsets = Vec::with_capacity(items.len());
            let mut ops = Vec::with_capacity(items.len());
            let mut origins = Vec::with_capacity(items.len());
            for item in items {
                if let Item::Op(offset, op, origin) = item {
                    offsets.push(offset);
                    ops.push(op);
                    origins.push(origin);
                }
            }
            if !self.handle_ops(&ops, &offsets, &origins).await {
                return;
            }
            if let Some(Item::Invalid(message, reason)) = invalid {
                if !self.handle_invalid(message, reason).await {
                    return;
                }
            }
        }
    }

    /// Handles `ops` (offsets `first..=last`) until done; false when the task must end.
    async fn handle_ops(&self, ops: &[ReplicationOp], offsets: &[i64], origins: &[Option<Origin>]) -> bool {
        let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else { return true };
        let topic = self.state.topic.as_str();
        let partition = self.state.partition;
        let mut backoff = self.shared.settings.retry_initial;
        loop {
            let permit = tokio::select! {
                biased;
                () = self.stop.cancelled() => return false,
                p = Arc::clone(&self.shared.permits).acquire_owned() => p,
            };
            let result = self.shared.processor.process(topic, partition, offsets, ops, origins).await;
            drop(permit);
            match result {
                Ok(outcome) => {
                    self.state.done.store(last + 1, Ordering::Release);
                    self.meters.handled.increment(outcome.applied);
                    if outcome.duplicates > 0 {
                        self.meters.duplicates.increment(outcome.duplicates);
                        debug!(offsets = ?(first..=last), duplicates = outcome.duplicates, "skipped ops already applied");
                    }
                    self.meters.batch_size.record(ops.len() as f64);
                    return true;
                }
                Err(e) if e.is_transient() => {
                    self.meters.retries.increment(1);
                    warn!(offsets = ?(first..=last), "transient error, retrying in {backoff:?}: {e}");
                    tokio::select! {
                        biased;
                        () = self.stop.cancelled() => return false,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = backoff.saturating_mul(2).min(self.shared.settings.retry_max);
                }
                Err(e) => {
                    self.meters.failed.increment(1);
                    error!(offsets = ?(first..=last), "fatal error, stopping the consumer: {e}");
                    self.shared.fail(e);
                    return false;
                }
            }
        }
    }

    /// Applies the invalid-message policy; false when the task must end.
    async fn handle_invalid(&self, message: OwnedMessage, reason: String) -> bool {
        let topic = self.state.topic.clone();
        let partition = self.state.partition;
        let offset = message.offset();
        let error = ConsumerError::InvalidMessage { topic: topic.clone(), partition, offset, reason };
        metrics::counter!("pgkafka_consumer_invalid_messages_total", "topic" => topic.clone(), "partition" => partition.to_string())
            .increment(1);
        match &self.shared.settings.invalid_messages {
            InvalidMessagePolicy::Skip => {
                error!("skipping: {error}");
                self.state.done.store(offset + 1, Ordering::Release);
                true
            }
            InvalidMessagePolicy::DeadLetter(_) => {
                let Some((producer, dlq)) = &self.shared.dead_letter else {
                    self.shared.fail(ConsumerError::Config("dead-letter producer missing".into()));
                    return false;
                };
                let mut backoff = self.shared.settings.retry_initial;
                loop {
                    let text = error.to_string();
                    let partition_text = partition.to_string();
                    let offset_text = offset.to_string();
                    let headers = OwnedHeaders::new()
                        .insert(Header { key: "pgkafka.topic", value: Some(topic.as_str()) })
                        .insert(Header { key: "pgkafka.partition", value: Some(partition_text.as_str()) })
                        .insert(Header { key: "pgkafka.offset", value: Some(offset_text.as_str()) })
                        .insert(Header { key: "pgkafka.error", value: Some(text.as_str()) });
                    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq).headers(headers);
                    if let Some(key) = message.key() {
                        record = record.key(key);
                    }
                    if let Some(payload) = message.payload() {
                        record = record.payload(payload);
                    }
                    match producer.send(record, Duration::from_secs(30)).await {
                        Ok(_) => {
                            error!("sent to dead-letter topic {dlq}: {error}");
                            self.state.done.store(offset + 1, Ordering::Release);
                            return true;
                        }
                        Err((e, _)) if ConsumerError::Kafka(e.clone()).is_transient() => {
                            warn!("cannot write to dead-letter topic {dlq}, retrying in {backoff:?}: {e}");
                            tokio::select! {
                                biased;
                                () = self.stop.cancelled() => return false,
                                () = tokio::time::sleep(backoff) => {}
                            }
                            backoff = backoff.saturating_mul(2).min(self.shared.settings.retry_max);
                        }
                        Err((e, _)) => {
                            error!("cannot write to dead-letter topic {dlq}: {e}; stopping on: {error}");
                            self.shared.fail(error);
                            return false;
                        }
                    }
                }
            }
            InvalidMessagePolicy::Stop => {
                error!("stopping: {error}");
                self.shared.fail(error);
                false
            }
        }
    }
}

fn decode(message: OwnedMessage) -> Item {
    let parsed = match message.payload() {
        None => Err("the record has no value".to_owned()),
        Some(bytes) => serde_json::from_slice::<ReplicationOp>(bytes).map_err(|e| e.to_string()),
    };
    let origin = match message.headers() {
        None => Ok(None),
        Some(headers) => Origin::from_headers(headers.iter().map(|h| (h.key, h.value))),
    };
    match (parsed, origin) {
        (Ok(op), Ok(origin)) => Item::Op(message.offset(), op, origin),
        (Err(reason), _) | (_, Err(reason)) => Item::Invalid(message, reason),
    }
}

/// Kafka errors after which polling on cannot help.
fn is_fatal_poll_error(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::Fatal
                | C::Authentication
                | C::SaslAuthenticationFailed
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::FencedInstanceId
        )
    )
}

/// Runs a consumer until a fatal error or a shutdown.
pub(crate) async fn run(settings: Settings, processor: Arc<dyn Processor>) -> Result<(), ConsumerError> {
    if settings.topics.is_empty() {
        return Err(ConsumerError::Config("no topics to consume".into()));
    }
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group_id)
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000");
    for (key, value) in &settings.kafka_options {
        if matches!(key.as_str(), "enable.auto.commit" | "enable.auto.offset.store") {
            return Err(ConsumerError::Config(format!(
                "{key} cannot be set: pgkafka commits offsets itself, only for handled records"
            )));
        }
        config.set(key, value);
    }
    config.set("enable.auto.commit", "false").set("enable.auto.offset.store", "false");

    let dead_letter = match &settings.invalid_messages {
        InvalidMessagePolicy::DeadLetter(topic) => {
            let mut producer_config = ClientConfig::new();
            producer_config.set("bootstrap.servers", &settings.brokers);
            // Only connection and security settings apply to the producer; consumer properties
            // would make librdkafka warn.
            for (key, value) in &settings.kafka_options {
                if key.starts_with("security.") || key.starts_with("sasl.") || key.starts_with("ssl.") || key == "client.id" {
                    producer_config.set(key, value);
                }
            }
            producer_config.set("enable.idempotence", "true").set("acks", "all");
            Some((producer_config.create::<FutureProducer>()?, topic.clone()))
        }
        _ => None,
    };

    let shared = Arc::new(Shared {
        permits: Arc::new(Semaphore::new(settings.max_concurrent_partitions)),
        halt: CancellationToken::new(),
        runtime: tokio::runtime::Handle::current(),
        processor,
        fatal: Mutex::new(None),
        dispatch: Mutex::new(Dispatch::default()),
        dead_letter,
        settings,
    });
    let consumer: BaseConsumer<Context> = config.create_with_context(Context { shared: Arc::clone(&shared) })?;
    let topics: Vec<&str> = shared.settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    info!(group = shared.settings.group_id, topics = ?shared.settings.topics, "consumer started");

    let poll_shared = Arc::clone(&shared);
    let joined = tokio::task::spawn_blocking(move || poll_loop(&consumer, &poll_shared)).await;
    if let Err(e) = joined {
        shared.halt.cancel();
        return Err(ConsumerError::fatal(format!("the poll thread failed: {e}")));
    }
    let fatal = shared.fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    match fatal {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn poll_loop(consumer: &BaseConsumer<Context>, shared: &Arc<Shared>) {
    let mut last_commit = Instant::now();
    loop {
        if shared.halt.is_cancelled() || shared.settings.shutdown.is_cancelled() {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => shared.dispatch(consumer, message.detach()),
            Some(Err(e)) if is_fatal_poll_error(&e) => {
                shared.fail(ConsumerError::Kafka(e));
                break;
            }
            Some(Err(e)) => warn!("kafka: {e}"),
        }
        shared.resume_drained(consumer);
        if last_commit.elapsed() >= shared.settings.commit_interval {
            shared.commit(consumer, None, CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    info!("consumer stopping: finishing the ops in hand and committing");
    shared.halt.cancel();
    shared.stop_and_commit(consumer, None);
    consumer.unsubscribe();
    info!("consumer stopped");
}
