//! On-demand backfills while streaming (DBLog): a task reads a table chunk by chunk between a low
//! and a high watermark written into the WAL, and the session publishes each chunk's surviving
//! rows at its high watermark, in stream order.
//!
//! Two halves, joined by a channel:
//! - [`BackfillTask`] runs beside the session on its own connection: it polls the control table
//!   for this slot's backfills, and for each chunk writes the low watermark, reads the chunk and
//!   the snapshot it was read under, hands both to the session, writes the high watermark, waits
//!   until Kafka acknowledged the chunk (the slot's confirmable position passed the high
//!   watermark) and only then records the chunk's last key as progress.
//! - [`Backfills`] is the session's side: it marks the keys of a watched table's streamed
//!   changes in its [`Window`], and at the high watermark publishes the rows the window keeps as
//!   `Insert` records at `(lsn = one below the high watermark's LSN, seq_id = 0, 1, ...)`, below
//!   a transaction whose commit record starts where the watermark ends, with the header
//!   `pgkafka.snapshot: backfill`, as one transaction of the sink, written by the encoder's
//!   [`SnapshotRows`](crate::producer::encode::SnapshotRows) in the topic's format.
//!
//! Watermarks are non-transactional logical messages with the prefix `pgkafka` and a JSON body
//! naming the slot, the backfill and the chunk; messages of other slots are ignored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};
use pgkafka_common::ident::TableName;
use pgkafka_common::Lsn;
use rdkafka::message::{Header, OwnedHeaders};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::chunk::{published_columns, ChunkReader, PublishedColumn};
use super::control::{ControlTable, Run, RunKind, RunState};
use super::window::{Key, Unconfirmed, Window, XidSnapshot};
use crate::backoff::Backoff;
use crate::metrics::{PRODUCER_BACKFILL_CHUNKS, PRODUCER_BACKFILL_PROGRESS, PRODUCER_BACKFILL_ROWS};
use crate::producer::connection::ConnectionInfo;
use crate::producer::encode::{system_clock, Encoder, RowImage, SnapshotRead};
use crate::producer::error::Failure;
use crate::producer::routes::{Routes, TableRoute};
use crate::producer::sink::Sink;
use crate::producer::watermark::TxId;
use crate::producer::{Producer, ProducerBuilder, ProducerConfig, ProducerError};

/// The prefix of pgkafka's logical messages.
pub(crate) const MESSAGE_PREFIX: &str = "pgkafka";

/// The value of the snapshot header on backfill rows.
const SNAPSHOT_BACKFILL: &str = "backfill";

/// How often the control table is polled for new backfills.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a chunk whose snapshot missed a lagging commit waits before it is read again.
const READ_AGAIN_DELAY: Duration = Duration::from_millis(200);

/// The backfill settings of a producer ([`ProducerBuilder::backfills`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackfillSettings {
    /// Whether the producer runs the backfills requested in the control table.
    pub(crate) enabled: bool,
    /// Rows per chunk.
    pub(crate) chunk_size: usize,
}

impl Default for BackfillSettings {
    fn default() -> Self {
        Self { enabled: false, chunk_size: 1_000 }
    }
}

impl ProducerBuilder {
    /// Runs the backfills requested for this slot while streaming (default off): the producer
    /// polls the control table (`snapshot_table`, default `public.pgkafka_snapshots`, created if
    /// missing) every second and
    /// publishes each requested table's rows as snapshot records consistent with the stream.
    /// Request one with [`Producer::request_backfill`] or `pgkafka backfill --table t`.
    #[must_use]
    pub fn backfills(mut self, enabled: bool) -> Self {
        self.config.backfill.enabled = enabled;
        self
    }

    /// Rows a backfill reads per chunk (default 1,000): the rows held in memory at once, and how
    /// long each read holds its snapshot.
    #[must_use]
    pub fn backfill_chunk_size(mut self, rows: usize) -> Self {
        self.config.backfill.chunk_size = rows.max(1);
        self
    }
}

/// One backfill as the control table records it: see [`Producer::backfill_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackfillRun {
    /// Its id: `pgkafka backfill --cancel <id>` takes it.
    pub id: i64,
    /// The table, as records name it.
    pub table_name: String,
    /// `pending`, `running`, `done`, `cancelled` or `failed`.
    pub state: String,
    /// Rows read so far (in chunks Kafka acknowledged).
    pub rows_read: i64,
    /// Chunks read so far.
    pub chunks: i64,
    /// The last primary key acknowledged, where a restarted producer resumes.
    pub last_key: Option<Vec<String>>,
    /// When it was requested, started and finished, as PostgreSQL prints timestamps.
    pub requested_at: String,
    /// See `requested_at`.
    pub started_at: Option<String>,
    /// See `requested_at`.
    pub finished_at: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<Run> for BackfillRun {
    fn from(run: Run) -> Self {
        Self {
            id: run.id,
            table_name: run.table_name,
            state: run.state.as_str().to_owned(),
            rows_read: run.rows_read,
            chunks: run.chunks,
            last_key: run.last_key,
            requested_at: run.requested_at,
            started_at: run.started_at,
            finished_at: run.finished_at,
            error: run.error,
        }
    }
}

/// Which backfills [`Producer::cancel_backfill`] cancels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackfillSelector {
    /// The backfill with this id.
    Id(i64),
    /// Every open backfill of this table (as records name it).
    Table(String),
}

impl std::str::FromStr for BackfillSelector {
    type Err = std::convert::Infallible;

    /// A number is an id, anything else a table name.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(text.trim().parse().map_or_else(|_| Self::Table(text.trim().to_owned()), Self::Id))
    }
}

/// Requesting, listing and cancelling backfills: on the producer's database, so any process with
/// the producer's configuration (the `pgkafka backfill` command) can do it while another streams.
impl Producer {
    /// Requests a backfill of `tables` (as records name them: `t` in `public`, `schema.t`
    /// elsewhere; empty for every table the producer streams). The producer streaming this slot
    /// with [`backfills(true)`](ProducerBuilder::backfills) picks them up within a second.
    /// Returns the new backfills' ids.
    ///
    /// # Errors
    /// [`ProducerError::Config`] naming a table the producer does not stream; database errors.
    pub async fn request_backfill(&self, tables: &[String]) -> Result<Vec<i64>, ProducerError> {
        let (client, control) = self.control_client().await?;
        let catalog = crate::producer::catalog::fetch(&client, &self.config.publication_name)
            .await
            .map_err(|e| ProducerError::Postgres(format!("reading the publication: {e}")))?;
        let routes = crate::producer::routes::resolve_skipping(&self.config.topic_map, &catalog, |schema, table| {
            control.is(schema, table)
        })
        .map_err(|problems| ProducerError::Config(crate::producer::routes::report(&problems)))?;
        let streamed: Vec<String> = routes.all().map(|r| r.table_name.clone()).collect();
        let wanted = if tables.is_empty() {
            streamed
        } else {
            let mut wanted = Vec::new();
            for table in tables {
                let name = TableName::parse(table.trim()).record_name();
                if !streamed.contains(&name) {
                    return Err(ProducerError::Config(format!(
                        "table {name} is not streamed by this producer (publication {:?}: {}); a backfill needs a \
                         published table with a topic map entry",
                        self.config.publication_name,
                        streamed.join(", ")
                    )));
                }
                wanted.push(name);
            }
            wanted
        };
        control
            .enqueue(&client, &self.config.slot_name, &wanted, RunKind::Backfill)
            .await
            .map_err(ProducerError::Postgres)
    }

    /// Every backfill of this slot, oldest first, with its progress.
    ///
    /// # Errors
    /// Database errors.
    pub async fn backfill_status(&self) -> Result<Vec<BackfillRun>, ProducerError> {
        let (client, control) = self.control_client().await?;
        let runs = control.list(&client, Some(&self.config.slot_name)).await.map_err(ProducerError::Postgres)?;
        Ok(runs.into_iter().filter(|run| run.kind == RunKind::Backfill).map(BackfillRun::from).collect())
    }

    /// Cancels open backfills of this slot; returns how many. A running one stops after its
    /// chunk in hand; what it published stays in the topics.
    ///
    /// # Errors
    /// Database errors.
    pub async fn cancel_backfill(&self, which: BackfillSelector) -> Result<u64, ProducerError> {
        let (client, control) = self.control_client().await?;
        let slot = &self.config.slot_name;
        match which {
            BackfillSelector::Table(table) => {
                let name = TableName::parse(&table).record_name();
                control.cancel(&client, slot, Some(&name)).await.map_err(ProducerError::Postgres)
            }
            BackfillSelector::Id(id) => client
                .execute(
                    &format!(
                        "UPDATE {} SET state = 'cancelled', finished_at = now() \
                         WHERE id = $1 AND slot_name = $2 AND kind = 'backfill' AND state IN ('pending', 'running')",
                        TableName::parse(&control.name()).quoted()
                    ),
                    &[&id, slot],
                )
                .await
                .map_err(|e| ProducerError::Postgres(format!("cancelling backfill {id}: {e}"))),
        }
    }

    /// A connection to the producer's database and the control table, created if missing.
    async fn control_client(&self) -> Result<(Client, ControlTable), ProducerError> {
        let connection = ConnectionInfo::parse(&self.config.connection_string)?;
        let client = connection
            .connect()
            .await
            .map_err(|e| ProducerError::Postgres(format!("connecting to {}: {e}", connection.redacted)))?;
        let control = control_table(&self.config)?;
        control.ensure(&client).await.map_err(ProducerError::Postgres)?;
        Ok((client, control))
    }
}

/// The control table of a producer (`snapshot_table`).
pub(crate) fn control_table(config: &ProducerConfig) -> Result<ControlTable, ProducerError> {
    super::initial::control_table(&config.snapshot)
}

/// Which watermark of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mark {
    Low,
    High,
}

/// The body of a watermark message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Watermark {
    slot: String,
    /// Which task wrote it: after a restart the slot replays the watermarks of chunks that were
    /// never acknowledged, and a new task numbers its chunks from the same point, so the chunk
    /// number alone would pair a new chunk with an old high watermark.
    task: u64,
    backfill: i64,
    chunk: i64,
    mark: Mark,
}

/// What the backfill task tells the session.
#[derive(Debug)]
pub(crate) enum Signal {
    /// Start marking the changes of `table` for the watermarks of `task`; answered once the
    /// session does.
    Watch { task: u64, backfill: i64, table: String, key_columns: Vec<String>, watching: oneshot::Sender<()> },
    /// A chunk read between its watermarks, to publish at its high watermark.
    Chunk(PendingChunk),
    /// The backfill ended: stop marking.
    Unwatch { backfill: i64 },
    /// A snapshot the task just took: the transactions it sees need no more waiting for.
    Horizon(XidSnapshot),
}

/// A chunk waiting for its high watermark in the stream.
#[derive(Debug)]
pub(crate) struct PendingChunk {
    backfill: i64,
    chunk: i64,
    table: String,
    route: Arc<TableRoute>,
    /// The columns of `rows`, in order, with their types.
    columns: Vec<PublishedColumn>,
    /// Positions of the primary-key columns in `columns`: what the window compares.
    primary_key: Vec<usize>,
    rows: Vec<Vec<Option<String>>>,
    snapshot: XidSnapshot,
    published: oneshot::Sender<Published>,
}

/// What the session did with a chunk at its high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    /// Rows published.
    pub(crate) rows: usize,
    /// Rows dropped because the stream carries a newer state.
    pub(crate) dropped: usize,
    /// Nothing was published: the chunk's snapshot misses a commit streamed before watching
    /// began (its visibility lags its WAL record), so the chunk must be read again.
    pub(crate) read_again: bool,
}

/// A chunk whose high watermark was streamed, with the rows the window kept.
#[derive(Debug)]
pub(crate) struct ReadyChunk {
    chunk: PendingChunk,
    dropped: usize,
}

/// A table the session watches for a backfill.
#[derive(Debug)]
struct Watched {
    task: u64,
    backfill: i64,
    key_columns: Vec<String>,
    window: Window,
    pending: Option<PendingChunk>,
}

/// The session's side of backfills.
#[derive(Debug)]
pub(crate) struct Backfills {
    slot: String,
    inbox: mpsc::UnboundedReceiver<Signal>,
    /// By the records' table name.
    watched: HashMap<String, Watched>,
    /// Streamed transactions no snapshot was seen to see yet: what a new window must wait for.
    unconfirmed: Unconfirmed,
    headers: OwnedHeaders,
}

impl Backfills {
    /// The session's side for `slot`, receiving from the task through `inbox`; records carry
    /// `origin_headers` and the snapshot marker.
    pub(crate) fn new(slot: &str, inbox: mpsc::UnboundedReceiver<Signal>, origin_headers: &OwnedHeaders) -> Self {
        let headers = origin_headers
            .clone()
            .insert(Header { key: pgkafka_common::headers::SNAPSHOT, value: Some(SNAPSHOT_BACKFILL.as_bytes()) });
        Self { slot: slot.to_owned(), inbox, watched: HashMap::new(), unconfirmed: Unconfirmed::default(), headers }
    }

    /// The task's next signal; never resolves once the task is gone.
    pub(crate) async fn signal(&mut self) -> Signal {
        match self.inbox.recv().await {
            Some(signal) => signal,
            None => std::future::pending().await,
        }
    }

    /// Takes a signal of the task into account.
    pub(crate) fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::Watch { task, backfill, table, key_columns, watching } => {
                self.watched
                    .insert(table, Watched { task, backfill, key_columns, window: Window::after(&self.unconfirmed), pending: None });
                let _ = watching.send(());
            }
            Signal::Chunk(chunk) => {
                if let Some(watched) = self.watched.get_mut(&chunk.table) {
                    if watched.backfill == chunk.backfill {
                        watched.pending = Some(chunk);
                    }
                }
            }
            Signal::Unwatch { backfill } => self.watched.retain(|_, watched| watched.backfill != backfill),
            Signal::Horizon(snapshot) => self.unconfirmed.seen_by(&snapshot),
        }
    }

    /// Whether any table is watched.
    #[cfg(test)]
    pub(crate) fn is_watching(&self) -> bool {
        !self.watched.is_empty()
    }

    /// A change by transaction `xid` was streamed: marks its keys if its table is watched.
    pub(crate) fn on_change(&mut self, rows: &RowImage<'_>, xid: u32) {
        self.unconfirmed.streamed(xid);
        if self.watched.is_empty() {
            return;
        }
        let Some(watched) = self.watched.get_mut(rows.table_name) else { return };
        let key_of = |row: &[Option<String>]| -> Key {
            watched
                .key_columns
                .iter()
                .map(|column| rows.col_names.iter().position(|c| c == column).and_then(|i| row.get(i).cloned().flatten()))
                .collect()
        };
        let keys: Vec<Key> = rows.old.iter().chain(rows.new.iter()).map(|row| key_of(row)).collect();
        for key in keys {
            watched.window.changed(key, xid);
        }
    }

    /// A logical message was streamed. At a high watermark of this slot, returns the chunk to
    /// publish there.
    pub(crate) fn on_message(&mut self, prefix: &str, content: &[u8]) -> Option<ReadyChunk> {
        if prefix != MESSAGE_PREFIX {
            return None;
        }
        let watermark = serde_json::from_slice::<Watermark>(content).ok().filter(|w| w.slot == self.slot)?;
        // The chunk was handed over before its high watermark was written: it is in the inbox.
        while let Ok(signal) = self.inbox.try_recv() {
            self.on_signal(signal);
        }
        let watched =
            self.watched.values_mut().find(|w| w.backfill == watermark.backfill && w.task == watermark.task)?;
        match watermark.mark {
            Mark::Low => {
                watched.window.low();
                None
            }
            Mark::High => {
                if watched.pending.as_ref().is_none_or(|c| c.chunk != watermark.chunk) {
                    return None;
                }
                let mut chunk = watched.pending.take()?;
                let read = chunk.rows.len();
                let primary_key = chunk.primary_key.clone();
                let key_of = |row: &Vec<Option<String>>| -> Key {
                    primary_key.iter().map(|&i| row.get(i).cloned().flatten()).collect()
                };
                self.unconfirmed.seen_by(&chunk.snapshot);
                let Some(rows) = watched.window.high(std::mem::take(&mut chunk.rows), key_of, &chunk.snapshot) else {
                    tracing::info!(
                        table = %chunk.table,
                        backfill = chunk.backfill,
                        chunk = chunk.chunk,
                        "backfill chunk read again: a commit streamed before the backfill began is not visible yet (a synchronous standby may be holding it)"
                    );
                    let _ = chunk.published.send(Published { rows: 0, dropped: 0, read_again: true });
                    return None;
                };
                chunk.rows = rows;
                let dropped = read - chunk.rows.len();
                Some(ReadyChunk { chunk, dropped })
            }
        }
    }

    /// Publishes a ready chunk at `lsn` (its high watermark) as one transaction of the sink,
    /// written by `encoder`'s formats. Returns `Ok(false)` if `shutdown` came first.
    pub(crate) async fn publish(
        &self,
        ready: ReadyChunk,
        lsn: Lsn,
        encoder: &Encoder,
        sink: &Sink,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        let ReadyChunk { chunk, dropped } = ready;
        let timestamp_ms = system_clock() / 1000;
        let tx: TxId = sink.begin(lsn);
        let types: Vec<_> = chunk.columns.iter().map(PublishedColumn::as_type).collect();
        let schema_error = |message: String| Failure::Fatal(ProducerError::Schema(message));
        let mut writer = encoder.snapshot_rows(&chunk.route, &types).map_err(schema_error)?;
        for (seq_id, row) in chunk.rows.iter().enumerate() {
            if !sink.room_unless(shutdown).await? {
                return Ok(false);
            }
            let record =
                writer.write(row, SnapshotRead::Incremental, lsn, seq_id as u64, timestamp_ms).map_err(schema_error)?;
            if !sink.send(tx, &record, &self.headers, shutdown).await? {
                return Ok(false);
            }
        }
        sink.commit(tx, lsn);
        let _ = chunk.published.send(Published { rows: chunk.rows.len(), dropped, read_again: false });
        Ok(true)
    }
}

/// Why a backfill chunk could not go on.
#[derive(Debug)]
enum Stop {
    /// Worth another try later (a lost connection): the run stays `running`.
    Retry(String),
    /// The run cannot succeed (no such table, no primary key): it is marked `failed`.
    Fail(String),
}

impl From<tokio_postgres::Error> for Stop {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Retry(error.to_string())
    }
}

/// Metrics of one table's backfill.
struct TableMeters {
    rows: Counter,
    chunks: Counter,
    progress: Gauge,
}

impl TableMeters {
    fn new(slot: &str, table: &str) -> Self {
        Self {
            rows: PRODUCER_BACKFILL_ROWS.table_counter(slot, table),
            chunks: PRODUCER_BACKFILL_CHUNKS.table_counter(slot, table),
            progress: PRODUCER_BACKFILL_PROGRESS.table_gauge(slot, table),
        }
    }
}

/// The task side: runs this slot's backfills, one table at a time, while the session streams.
pub(crate) struct BackfillTask<'a> {
    slot: &'a str,
    /// Tells this task's watermarks from those of earlier tasks the slot replays.
    id: u64,
    /// Numbers the chunks this task reads, never twice: a chunk read again after an
    /// interruption must not match the watermarks written around its first read.
    next_chunk: std::sync::atomic::AtomicI64,
    connection: &'a ConnectionInfo,
    routes: Routes,
    sink: &'a Sink,
    control: ControlTable,
    chunk_size: usize,
    outbox: mpsc::UnboundedSender<Signal>,
}

impl std::fmt::Debug for BackfillTask<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackfillTask").field("slot", &self.slot).field("control", &self.control.name()).finish()
    }
}

impl<'a> BackfillTask<'a> {
    /// The task and the session's side, joined by a channel.
    pub(crate) fn new(
        slot: &'a str,
        connection: &'a ConnectionInfo,
        routes: Routes,
        sink: &'a Sink,
        control: ControlTable,
        chunk_size: usize,
        origin_headers: &OwnedHeaders,
    ) -> (Self, Backfills) {
        let (outbox, inbox) = mpsc::unbounded_channel();
        // Random per task (std's hasher keys are random per process and per `RandomState`).
        let id = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), slot);
        let next_chunk = std::sync::atomic::AtomicI64::new(1);
        let task =
            Self { slot, id, next_chunk, connection, routes, sink, control, chunk_size: chunk_size.max(1), outbox };
        (task, Backfills::new(slot, inbox, origin_headers))
    }

    /// Runs until the session ends (the future is dropped with it). Errors are logged and
    /// retried: a backfill never stops the stream.
    pub(crate) async fn run(self) {
        let mut backoff = Backoff::new(POLL_INTERVAL, Duration::from_secs(30));
        let mut client: Option<Client> = None;
        loop {
            let connected = match client.take() {
                Some(client) if !client.is_closed() => Ok(client),
                _ => self.open().await,
            };
            match connected {
                Ok(connected) => match self.poll(&connected).await {
                    Ok(()) => {
                        backoff.reset();
                        client = Some(connected);
                        tokio::time::sleep(POLL_INTERVAL).await;
                        continue;
                    }
                    Err(message) => {
                        tracing::warn!(slot = %self.slot, error = %message, "backfill interrupted; retrying")
                    }
                },
                Err(message) => {
                    tracing::warn!(slot = %self.slot, error = %message, "backfills cannot reach the database; retrying")
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn open(&self) -> Result<Client, String> {
        let client =
            self.connection.connect().await.map_err(|e| format!("connecting to {}: {e}", self.connection.redacted))?;
        self.control.ensure(&client).await?;
        Ok(client)
    }

    /// Claims this slot's open backfills and runs them, oldest first. Tells the session what a
    /// fresh snapshot sees first, so it forgets the transactions no window needs to wait for.
    async fn poll(&self, client: &Client) -> Result<(), String> {
        let horizon: String = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .map_err(|e| format!("reading the current snapshot: {e}"))?
            .get(0);
        let _ = self.outbox.send(Signal::Horizon(XidSnapshot::parse(&horizon)?));
        for run in self.control.claim(client, self.slot, RunKind::Backfill).await? {
            match self.backfill(client, &run).await {
                Ok(()) => {}
                Err(Stop::Fail(message)) => {
                    tracing::error!(slot = %self.slot, table = %run.table_name, backfill = run.id, error = %message, "backfill failed");
                    self.control.finish(client, run.id, RunState::Failed, Some(&message)).await?;
                }
                Err(Stop::Retry(message)) => {
                    let _ = self.outbox.send(Signal::Unwatch { backfill: run.id });
                    return Err(format!("backfill {} of table {}: {message}", run.id, run.table_name));
                }
            }
            let _ = self.outbox.send(Signal::Unwatch { backfill: run.id });
        }
        Ok(())
    }

    /// Backfills one table from where its run stopped.
    async fn backfill(&self, client: &Client, run: &Run) -> Result<(), Stop> {
        let table = &run.table_name;
        let name = TableName::parse(table);
        let route = self.routes.get(name.schema, name.table).cloned().ok_or_else(|| {
            Stop::Fail(format!(
                "table {table} is not streamed by slot {}: it is not in the publication or has no topic map entry",
                self.slot
            ))
        })?;
        let columns = published_columns(client, name.schema, name.table).await.map_err(Stop::Retry)?;
        let col_names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let primary_key = primary_key(client, name.schema, name.table).await?;
        if primary_key.is_empty() {
            return Err(Stop::Fail(format!(
                "table {table} has no primary key; a backfill reads tables in primary-key order. Add one \
                 (ALTER TABLE {} ADD PRIMARY KEY (...))",
                name.quoted()
            )));
        }
        let positions = |columns: &[String]| -> Result<Vec<usize>, Stop> {
            columns
                .iter()
                .map(|c| {
                    col_names
                        .iter()
                        .position(|n| n == c)
                        .ok_or_else(|| Stop::Fail(format!("table {table} has no column {c:?}")))
                })
                .collect()
        };
        let pk_positions = positions(&primary_key)?;
        // A partition key the table lacks fails the backfill before it starts.
        positions(&route.key_columns)?;
        let reader = ChunkReader::prepare(client, name.schema, name.table, col_names.clone(), self.chunk_size)
            .await
            .map_err(Stop::Fail)?;
        let estimate = estimated_rows(client, name.schema, name.table).await.unwrap_or(0.0);
        let meters = TableMeters::new(self.slot, table);

        let (watching, watched) = oneshot::channel();
        self.send(Signal::Watch {
            task: self.id,
            backfill: run.id,
            table: table.clone(),
            key_columns: primary_key,
            watching,
        })?;
        watched.await.map_err(|_| Stop::Retry("the session ended".into()))?;
        match &run.last_key {
            None => tracing::info!(slot = %self.slot, table = %table, backfill = run.id, "backfill started"),
            Some(key) => {
                tracing::info!(slot = %self.slot, table = %table, backfill = run.id, after = ?key, rows_read = run.rows_read, "backfill resumed")
            }
        }

        let (mut last_key, mut rows_read) = (run.last_key.clone(), run.rows_read);
        loop {
            let chunk_no = self.next_chunk.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.emit(client, run.id, chunk_no, Mark::Low).await?;
            client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
            let read = async {
                let snapshot: String = client.query_one("SELECT pg_current_snapshot()::text", &[]).await?.get(0);
                let chunk = reader.read(client, last_key.as_deref()).await.map_err(Stop::Retry)?;
                Ok::<_, Stop>((snapshot, chunk))
            }
            .await;
            client.batch_execute(if read.is_ok() { "COMMIT" } else { "ROLLBACK" }).await?;
            let (snapshot, chunk) = read?;
            let snapshot = XidSnapshot::parse(&snapshot).map_err(Stop::Retry)?;
            let is_last = chunk.is_last(reader.limit());
            let Some(chunk_last_key) = chunk.last_key.clone() else {
                break;
            };
            let read_now = chunk.rows.len();
            let (published_tx, published) = oneshot::channel();
            self.send(Signal::Chunk(PendingChunk {
                backfill: run.id,
                chunk: chunk_no,
                table: table.clone(),
                route: Arc::clone(&route),
                columns: columns.clone(),
                primary_key: pk_positions.clone(),
                rows: chunk.rows,
                snapshot,
                published: published_tx,
            }))?;
            let high = self.emit(client, run.id, chunk_no, Mark::High).await?;
            let outcome = published
                .await
                .map_err(|_| Stop::Retry("the session ended before the chunk's high watermark".into()))?;
            if outcome.read_again {
                tokio::time::sleep(READ_AGAIN_DELAY).await;
                continue;
            }
            // Progress only once Kafka acknowledged the chunk: a crash before re-reads it.
            self.acknowledged(high).await;
            let row_count = i64::try_from(read_now).unwrap_or(i64::MAX);
            let still_running =
                self.control.progress(client, run.id, &chunk_last_key, row_count).await.map_err(Stop::Retry)?;
            rows_read += row_count;
            meters.rows.increment(read_now as u64);
            meters.chunks.increment(1);
            if estimate > 0.0 {
                meters.progress.set((rows_read as f64 / estimate).min(1.0));
            }
            tracing::debug!(table = %table, backfill = run.id, chunk = chunk_no, published = outcome.rows, dropped = outcome.dropped, "backfill chunk acknowledged");
            if !still_running {
                tracing::info!(slot = %self.slot, table = %table, backfill = run.id, rows_read, "backfill cancelled");
                return Ok(());
            }
            last_key = Some(chunk_last_key);
            if is_last {
                break;
            }
        }
        self.control.finish(client, run.id, RunState::Done, None).await.map_err(Stop::Retry)?;
        meters.progress.set(1.0);
        tracing::info!(slot = %self.slot, table = %table, backfill = run.id, rows_read, "backfill finished");
        Ok(())
    }

    fn send(&self, signal: Signal) -> Result<(), Stop> {
        self.outbox.send(signal).map_err(|_| Stop::Retry("the session ended".into()))
    }

    /// Writes a watermark into the WAL; returns its LSN.
    async fn emit(&self, client: &Client, backfill: i64, chunk: i64, mark: Mark) -> Result<Lsn, Stop> {
        let body =
            serde_json::to_string(&Watermark { slot: self.slot.to_owned(), task: self.id, backfill, chunk, mark })
                .map_err(|e| Stop::Retry(e.to_string()))?;
        let lsn: String = client
            .query_one("SELECT pg_logical_emit_message(false, $1, $2)::text", &[&MESSAGE_PREFIX, &body])
            .await?
            .get(0);
        lsn.parse().map_err(|e| Stop::Retry(format!("the server returned LSN {lsn:?}: {e}")))
    }

    /// Waits until the slot may be confirmed at `lsn`: every record up to it is in Kafka.
    async fn acknowledged(&self, lsn: Lsn) {
        while self.sink.progress().0 < lsn {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The primary key's columns, in key order.
async fn primary_key(client: &Client, schema: &str, table: &str) -> Result<Vec<String>, Stop> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = CAST($1::text AS regclass) AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&pgkafka_common::ident::qualified(schema, table)],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The planner's row estimate, for the progress gauge.
async fn estimated_rows(client: &Client, schema: &str, table: &str) -> Result<f64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT GREATEST(reltuples, 0)::float8 FROM pg_catalog.pg_class WHERE oid = CAST($1::text AS regclass)",
            &[&pgkafka_common::ident::qualified(schema, table)],
        )
        .await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn watermarks_are_json_naming_slot_backfill_and_chunk() {
        let w = Watermark { slot: "s".into(), task: 9, backfill: 3, chunk: 7, mark: Mark::High };
        let text = serde_json::to_string(&w).unwrap();
        assert_eq!(text, r#"{"slot":"s","task":9,"backfill":3,"chunk":7,"mark":"high"}"#);
        assert_eq!(serde_json::from_str::<Watermark>(&text).unwrap(), w);
    }

    fn chunk(
        backfill: i64,
        chunk: i64,
        rows: Vec<Vec<Option<String>>>,
    ) -> (PendingChunk, oneshot::Receiver<Published>) {
        let (published, receiver) = oneshot::channel();
        let pending = PendingChunk {
            backfill,
            chunk,
            table: "t".into(),
            route: Arc::new(TableRoute {
                table_name: "t".into(),
                topic: "t".into(),
                key_columns: vec!["id".into()],
                schema: "public".into(),
                table: "t".into(),
                not_null: Vec::new(),
            }),
            columns: ["id", "v"]
                .map(|name| PublishedColumn { name: name.into(), type_oid: 25, type_modifier: -1 })
                .to_vec(),
            primary_key: vec![0],
            rows,
            snapshot: XidSnapshot::parse("100:100:").unwrap(),
            published,
        };
        (pending, receiver)
    }

    fn row(id: &str, v: &str) -> Vec<Option<String>> {
        vec![Some(id.into()), Some(v.into())]
    }

    fn watermark(slot: &str, backfill: i64, chunk: i64, mark: Mark) -> Vec<u8> {
        serde_json::to_vec(&Watermark { slot: slot.into(), task: 9, backfill, chunk, mark }).unwrap()
    }

    /// The session's side end to end without I/O: a change inside the window drops its row,
    /// other slots' and other prefixes' messages are ignored, and the chunk handed over before
    /// its high watermark is found there.
    #[test]
    fn the_session_publishes_the_rows_the_window_keeps_at_the_high_watermark() {
        let (outbox, inbox) = mpsc::unbounded_channel();
        let mut backfills = Backfills::new("s", inbox, &OwnedHeaders::new());
        let (watching, _) = oneshot::channel();
        backfills.on_signal(Signal::Watch {
            task: 9,
            backfill: 1,
            table: "t".into(),
            key_columns: vec!["id".into()],
            watching,
        });
        assert!(backfills.on_message(MESSAGE_PREFIX, &watermark("s", 1, 1, Mark::Low)).is_none());
        let col_names = ["id".to_owned(), "v".to_owned()];
        let update = RowImage {
            table_name: "t",
            col_names: &col_names,
            old: Some(vec![Some("2".into()), Some("a".into())]),
            new: Some(vec![Some("2".into()), Some("b".into())]),
        };
        backfills.on_change(&update, 90);
        let (pending, _published) = chunk(1, 1, vec![row("1", "x"), row("2", "a"), row("3", "y")]);
        outbox.send(Signal::Chunk(pending)).unwrap();
        assert!(backfills.on_message("other", &watermark("s", 1, 1, Mark::High)).is_none());
        assert!(backfills.on_message(MESSAGE_PREFIX, &watermark("other_slot", 1, 1, Mark::High)).is_none());
        // The same chunk number from an earlier task (replayed after a restart) is not this chunk.
        let replayed = Watermark { slot: "s".into(), task: 8, backfill: 1, chunk: 1, mark: Mark::High };
        assert!(backfills.on_message(MESSAGE_PREFIX, &serde_json::to_vec(&replayed).unwrap()).is_none());
        let ready = backfills.on_message(MESSAGE_PREFIX, &watermark("s", 1, 1, Mark::High)).unwrap();
        assert_eq!(ready.chunk.rows, vec![row("1", "x"), row("3", "y")]);
        assert_eq!(ready.dropped, 1);
        // A replayed high watermark (after a restart) finds no chunk.
        assert!(backfills.on_message(MESSAGE_PREFIX, &watermark("s", 1, 1, Mark::High)).is_none());
        backfills.on_signal(Signal::Unwatch { backfill: 1 });
        assert!(!backfills.is_watching());
    }
}
