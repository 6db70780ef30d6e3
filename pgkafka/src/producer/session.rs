//! One replication session, the I/O loop: reads the replication stream, feeds the encoder,
//! hands records to the sink and reports the confirmed position back to PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use pgkafka_common::Lsn;
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use rdkafka::message::OwnedHeaders;
use tokio_util::sync::CancellationToken;

use super::connection::ConnectionInfo;
use super::encode::{Encoded, Encoder, Record};
use super::error::Failure;
use super::heartbeat::Heartbeat;
use super::sink::Sink;
use super::slot_guard::SessionStart;
use super::snapshot::backfill::{self, BackfillTask, Backfills};
use super::startup;
use super::watermark::TxId;
use super::routes::Routes;
use super::snapshot::initial::{Counters, Prepared};
use super::{ProducerConfig, ProducerError, SnapshotMode, TruncatePolicy};
use crate::metrics::{
    PRODUCER_BYTES_PRODUCED, PRODUCER_CONFIRMED_LSN, PRODUCER_IN_FLIGHT, PRODUCER_RECORDS_PRODUCED,
    PRODUCER_REPLICATION_LAG,
};

/// Metrics handles, made once per session so the hot path only increments.
struct Meters {
    produced: Counter,
    bytes: Counter,
    confirmed: Gauge,
    lag: Gauge,
    in_flight: Gauge,
}

impl Meters {
    fn new(slot: &str) -> Self {
        Self {
            produced: PRODUCER_RECORDS_PRODUCED.slot_counter(slot),
            bytes: PRODUCER_BYTES_PRODUCED.slot_counter(slot),
            confirmed: PRODUCER_CONFIRMED_LSN.slot_gauge(slot),
            lag: PRODUCER_REPLICATION_LAG.slot_gauge(slot),
            in_flight: PRODUCER_IN_FLIGHT.slot_gauge(slot),
        }
    }
}

/// Connects, checks, and streams until `shutdown` or an error. `Ok(())` means a graceful
/// shutdown finished: everything acknowledged was confirmed to the slot.
pub(crate) async fn run(
    config: &ProducerConfig,
    connection: &ConnectionInfo,
    sink: &Arc<Sink>,
    shutdown: &CancellationToken,
    start: SessionStart,
) -> Result<(), Failure> {
    let attempt = start.attempt();
    // Bounded: a network blackhole must not hold up a shutdown, nor a reconnect for ever.
    let opened = tokio::select! {
        opened = tokio::time::timeout(startup::TIMEOUT, startup::open_stream(config, connection, sink, start)) => opened,
        () = shutdown.cancelled() => return Ok(()),
    };
    let startup::Stream { routes, mut replication, confirmed, origin, snapshot } = opened.map_err(|_| {
        Failure::postgres(
            format!("connecting to {} and checking it took longer than {:?}", connection.redacted, startup::TIMEOUT),
            attempt,
        )
    })??;
    sink.reset(confirmed);
    let headers = origin.headers(&config.slot_name);
    // Backfills run beside the stream, in this session's future: they end with it.
    let (backfill_task, backfills) = if config.backfill.enabled {
        let control = backfill::control_table(config)?;
        let (task, backfills) =
            BackfillTask::new(&config.slot_name, connection, routes.clone(), sink, control, config.backfill.chunk_size, &headers);
        (Some(task.run()), Some(backfills))
    } else {
        (None, None)
    };
    let gated = snapshot.is_some();
    let snapshot = snapshot.map(|prepared| (prepared, routes.clone()));
    let formats = config.formats()?;
    let mut session = Session {
        config,
        sink,
        heartbeat: Heartbeat::new(&formats, &routes),
        encoder: Encoder::new(routes, &config.publication_name, formats, &connection.database()),
        headers,
        tx: None,
        xid: 0,
        backfills,
        meters: Meters::new(&config.slot_name),
        last_wal_end: confirmed,
        snapshot,
        snapshot_only_done: false,
    };
    let mut started = !gated;
    let streamed = async {
        // A snapshot at the slot's own position is read before the stream starts.
        if session.snapshot_due(confirmed) {
            if let Next::Shutdown = session.run_snapshot(shutdown).await? {
                return Ok(());
            }
        }
        if gated {
            startup::start(&mut replication, config, connection, attempt).await?;
            started = true;
        }
        session.stream(&mut replication, shutdown).await
    };
    let streamed = match backfill_task {
        Some(task) => tokio::select! {
            streamed = streamed => streamed,
            () = task => Ok(()),
        },
        None => streamed.await,
    };
    match streamed {
        Ok(()) => {
            session.finish(&mut replication, started).await;
            if session.snapshot_only_done {
                return drop_snapshot_slot(config, connection).await;
            }
            Ok(())
        }
        Err(error) => {
            replication.abort();
            Err(error)
        }
    }
}

/// `snapshot = "initial_only"` is done: the slot would only keep WAL that nothing reads.
async fn drop_snapshot_slot(config: &ProducerConfig, connection: &ConnectionInfo) -> Result<(), Failure> {
    let client = connection.connect().await.map_err(|e| Failure::retry(format!("connecting to {}: {e}", connection.redacted)))?;
    super::slot::drop_slot(&client, &config.slot_name).await.map_err(Failure::retry)?;
    tracing::info!(slot = %config.slot_name, "initial snapshot published; dropped the slot (snapshot = \"initial_only\")");
    Ok(())
}

struct Session<'a> {
    config: &'a ProducerConfig,
    sink: &'a Sink,
    encoder: Encoder,
    /// Debezium heartbeat records, when a Debezium format asks for them.
    heartbeat: Option<Heartbeat>,
    /// The origin headers every record of this session carries, built once.
    headers: OwnedHeaders,
    /// The sink's id of the transaction being read.
    tx: Option<TxId>,
    /// Its transaction id, for backfill windows.
    xid: u32,
    /// The session's side of backfills, when they are enabled.
    backfills: Option<Backfills>,
    meters: Meters,
    last_wal_end: Lsn,
    /// An initial snapshot to publish when the stream reaches its point, with the routes.
    snapshot: Option<(Prepared, Routes)>,
    /// The snapshot of `snapshot = "initial_only"` is published: the session ends.
    snapshot_only_done: bool,
}

/// Whether the session goes on after an event.
enum Next {
    Continue,
    Shutdown,
}

impl Session<'_> {
    /// Whether the stream has reached the pending snapshot's point.
    fn snapshot_due(&self, position: Lsn) -> bool {
        self.snapshot.as_ref().is_some_and(|(prepared, _)| position >= prepared.at())
    }

    /// Publishes the pending snapshot (every earlier change is in the sink already).
    async fn run_snapshot(&mut self, shutdown: &CancellationToken) -> Result<Next, Failure> {
        let Some((prepared, routes)) = self.snapshot.take() else { return Ok(Next::Continue) };
        let counters = Counters { produced: self.meters.produced.clone(), bytes: self.meters.bytes.clone() };
        if !prepared.run(&routes, &self.encoder, self.sink, &self.headers, &counters, shutdown).await? {
            return Ok(Next::Shutdown);
        }
        if self.config.snapshot.mode == SnapshotMode::InitialOnly {
            self.snapshot_only_done = true;
            return Ok(Next::Shutdown);
        }
        Ok(Next::Continue)
    }

    async fn stream(&mut self, replication: &mut ReplicationClient, shutdown: &CancellationToken) -> Result<(), Failure> {
        let mut status = tokio::time::interval(self.config.status_interval.min(Duration::from_secs(1)));
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.sink.check_failure()?;
            // Bounded memory: read no further while the window of unacknowledged messages is full.
            if !self.sink.has_room() {
                tokio::select! {
                    room = self.sink.wait_for_room() => room?,
                    () = shutdown.cancelled() => return Ok(()),
                    _ = status.tick() => self.report(replication),
                }
                continue;
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                _ = status.tick() => {
                    self.report(replication);
                    if let Next::Shutdown = self.beat(shutdown).await? {
                        return Ok(());
                    }
                }
                signal = next_signal(&mut self.backfills) => {
                    if let Some(backfills) = &mut self.backfills {
                        backfills.on_signal(signal);
                    }
                }
                event = replication.recv() => match event {
                    Ok(Some(event)) => {
                        if let Next::Shutdown = self.handle(event, shutdown).await? {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Err(Failure::retry("the server ended the replication stream")),
                    Err(error) => return Err(Failure::retry(format!("replication stream broke: {error}"))),
                },
            }
        }
    }

    /// Reports the confirmed position to the server (sent by the replication client's worker
    /// within the status interval) and updates the gauges.
    fn report(&self, replication: &ReplicationClient) {
        let (confirmed, in_flight) = self.sink.progress();
        replication.update_applied_lsn(pgwire_replication::Lsn::from_u64(confirmed.0));
        self.meters.confirmed.set(confirmed.0 as f64);
        self.meters.in_flight.set(in_flight as f64);
        let wal_end = replication.metrics().last_wal_end().as_u64().max(self.last_wal_end.0);
        self.meters.lag.set(wal_end.saturating_sub(confirmed.0) as f64);
    }

    fn saw_wal_end(&mut self, wal_end: Lsn) {
        if wal_end > self.last_wal_end {
            self.last_wal_end = wal_end;
        }
    }

    async fn handle(&mut self, event: ReplicationEvent, shutdown: &CancellationToken) -> Result<Next, Failure> {
        match event {
            ReplicationEvent::Begin { final_lsn, commit_time_micros, xid } => {
                let commit_lsn = Lsn(final_lsn.as_u64());
                self.xid = xid;
                // Transactions committed before the snapshot's point are in Kafka; it goes first.
                if self.snapshot_due(commit_lsn) {
                    if let Next::Shutdown = self.run_snapshot(shutdown).await? {
                        return Ok(Next::Shutdown);
                    }
                }
                self.tx = Some(self.sink.begin(commit_lsn));
                self.encoder.begin(commit_lsn, commit_time_micros, xid);
            }
            ReplicationEvent::Commit { end_lsn, lsn, .. } => {
                let Some(tx) = self.tx.take() else {
                    return Err(ProducerError::Protocol { lsn: Lsn(lsn.as_u64()), message: "a Commit without a Begin".into() }.into());
                };
                if let Some(end) = self.encoder.commit() {
                    // The transaction's END record (Debezium transaction metadata).
                    if !send(self.sink, tx, &end, &self.headers, &self.meters, shutdown).await? {
                        return Ok(Next::Shutdown);
                    }
                }
                self.sink.commit(tx, Lsn(end_lsn.as_u64()));
            }
            ReplicationEvent::XLogData { data, wal_start, wal_end, .. } => {
                self.saw_wal_end(Lsn(wal_end.as_u64()));
                return self.publish(&data, Lsn(wal_start.as_u64()), shutdown).await;
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                let wal_end = Lsn(wal_end.as_u64());
                self.saw_wal_end(wal_end);
                if self.tx.is_none() && self.snapshot_due(wal_end) {
                    if let Next::Shutdown = self.run_snapshot(shutdown).await? {
                        return Ok(Next::Shutdown);
                    }
                }
                if self.tx.is_none() {
                    self.sink.idle_at(wal_end);
                }
            }
            ReplicationEvent::Message { transactional: false, lsn, prefix, content } => {
                let Some(backfills) = &mut self.backfills else { return Ok(Next::Continue) };
                if let Some(chunk) = backfills.on_message(&prefix, &content) {
                    if self.tx.is_some() {
                        return Err(ProducerError::Protocol { lsn: Lsn(lsn.as_u64()), message: "a backfill watermark inside a transaction".into() }.into());
                    }
                    if !backfills.publish(chunk, Lsn(lsn.as_u64()), &self.encoder, self.sink, shutdown).await? {
                        return Ok(Next::Shutdown);
                    }
                }
            }
            ReplicationEvent::Message { .. } => {}
            ReplicationEvent::StoppedAt { .. } => return Err(Failure::retry("the replication stream stopped")),
        }
        Ok(Next::Continue)
    }

    async fn publish(&mut self, data: &[u8], wal_start: Lsn, shutdown: &CancellationToken) -> Result<Next, Failure> {
        match self.encoder.encode(data, wal_start, self.last_wal_end)? {
            Encoded::Nothing => {}
            Encoded::Records(records) => {
                let Some(tx) = self.tx else {
                    // The encoder refuses a row change outside a transaction; this is that case.
                    return Err(ProducerError::Protocol { lsn: self.last_wal_end, message: "a row change outside a transaction".into() }.into());
                };
                for record in records.iter() {
                    if !send(self.sink, tx, record, &self.headers, &self.meters, shutdown).await? {
                        return Ok(Next::Shutdown);
                    }
                }
                if let Some(backfills) = self.backfills.as_mut() {
                    backfills.on_change(&records.rows, self.xid);
                }
            }
            Encoded::Truncate { tables, lsn } => match self.config.truncate_policy {
                TruncatePolicy::Fail => return Err(ProducerError::Truncate { table: tables, lsn }.into()),
                TruncatePolicy::Skip => {
                    tracing::warn!(tables = %tables, lsn = %lsn, "TRUNCATE not published (TruncatePolicy::Skip)");
                }
            },
        }
        Ok(Next::Continue)
    }

    /// Sends a heartbeat record when one is due and no transaction is being read.
    async fn beat(&mut self, shutdown: &CancellationToken) -> Result<Next, Failure> {
        let Some(heartbeat) = self.heartbeat.as_mut() else { return Ok(Next::Continue) };
        if self.tx.is_some() {
            return Ok(Next::Continue);
        }
        let (confirmed, _) = self.sink.progress();
        let Some(record) = heartbeat.due(confirmed, Instant::now()) else { return Ok(Next::Continue) };
        // Not part of any transaction: the ledger ignores it, so it never holds up the slot.
        if !send(self.sink, super::heartbeat::UNTRACKED, &record, &self.headers, &self.meters, shutdown).await? {
            return Ok(Next::Shutdown);
        }
        Ok(Next::Continue)
    }

    /// Graceful end: wait for Kafka to acknowledge what is in flight, confirm it, and close.
    async fn finish(&mut self, replication: &mut ReplicationClient, started: bool) {
        let drained = self.sink.drain(tokio::time::sleep(self.config.shutdown_timeout)).await;
        let (confirmed, in_flight) = self.sink.progress();
        if !drained {
            tracing::warn!(
                in_flight,
                "Kafka did not acknowledge everything within the shutdown timeout; the rest will be re-sent on restart"
            );
        }
        if !started {
            // A session gated for its snapshot sends no status: nothing went past the snapshot's
            // point, which the slot was created at or confirmed to before.
            replication.abort();
            tracing::info!(confirmed = %confirmed, slot = %self.config.slot_name, "producer stopped");
            return;
        }
        let target = pgwire_replication::Lsn::from_u64(confirmed.0);
        replication.update_applied_lsn(target);
        // Wait for the worker to send the status, so the slot remembers what was delivered.
        let deadline = Instant::now() + self.config.status_interval * 3 + Duration::from_secs(1);
        while replication.metrics().last_applied_lsn() < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(error) = replication.shutdown().await {
            tracing::debug!(%error, "closing the replication connection");
        }
        tracing::info!(confirmed = %confirmed, slot = %self.config.slot_name, "producer stopped");
    }
}

/// The backfill task's next signal; never, without backfills.
async fn next_signal(backfills: &mut Option<Backfills>) -> backfill::Signal {
    match backfills {
        Some(backfills) => backfills.signal().await,
        None => std::future::pending().await,
    }
}

/// Hands one record to the sink and counts it; `Ok(false)` if a shutdown came first.
async fn send(
    sink: &Sink,
    tx: TxId,
    record: &Record<'_>,
    headers: &OwnedHeaders,
    meters: &Meters,
    shutdown: &CancellationToken,
) -> Result<bool, Failure> {
    if !sink.send(tx, record, headers, shutdown).await? {
        return Ok(false);
    }
    meters.produced.increment(1);
    meters.bytes.increment(record.value.map_or(0, <[u8]>::len) as u64);
    Ok(true)
}
