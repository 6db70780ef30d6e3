//! One replication session: from connecting to the slot until the connection ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use pgkafka_common::key::encode_key_into;
use pgkafka_common::pgoutput::{self, Message, TupleValue};
use pgkafka_common::Lsn;
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationEvent};
use rdkafka::producer::BaseRecord;
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::connection::ConnectionInfo;
use super::kafka::KafkaSink;
use super::schema::{self, Routes, TableRoute};
use super::watermark::TxId;
use super::{ProducerConfig, ProducerError, SlotInUsePolicy, TruncatePolicy};

/// Why a session ended other than by shutdown.
#[derive(Debug)]
pub(crate) enum SessionError {
    /// Stop the producer and return this.
    Fatal(ProducerError),
    /// Connect again after a backoff.
    Retry {
        reason: String,
        /// The Kafka producer hit an error it cannot recover from; build a new one.
        recreate_kafka: bool,
    },
}

impl From<ProducerError> for SessionError {
    fn from(error: ProducerError) -> Self {
        SessionError::Fatal(error)
    }
}

fn retry(reason: impl Into<String>) -> SessionError {
    SessionError::Retry { reason: reason.into(), recreate_kafka: false }
}

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
        let slot = slot.to_owned();
        Self {
            produced: metrics::counter!("pgkafka_producer_records_produced_total", "slot" => slot.clone()),
            bytes: metrics::counter!("pgkafka_producer_bytes_produced_total", "slot" => slot.clone()),
            confirmed: metrics::gauge!("pgkafka_producer_confirmed_lsn", "slot" => slot.clone()),
            lag: metrics::gauge!("pgkafka_producer_replication_lag_bytes", "slot" => slot.clone()),
            in_flight: metrics::gauge!("pgkafka_producer_in_flight", "slot" => slot),
        }
    }
}

/// What the session knows of a relation from its latest Relation message.
struct RelationState {
    route: Arc<TableRoute>,
    col_names: Vec<String>,
    /// Positions of the partition-key columns, or the name of one that no longer exists.
    key_indexes: Result<Vec<usize>, String>,
}

/// The transaction being read.
struct OpenTx {
    id: TxId,
    commit_lsn: Lsn,
    commit_time_ms: i64,
    next_seq: u64,
}

/// The same JSON as [`pgkafka_common::ReplicationOp`], serialized from borrowed rows.
#[derive(Serialize)]
struct OpRef<'a> {
    table_name: &'a str,
    col_names: &'a [String],
    lsn: u64,
    seq_id: u64,
    op: OpBody<'a>,
}

#[derive(Serialize)]
enum OpBody<'a> {
    Insert(&'a [Option<String>]),
    Update((&'a [Option<String>], &'a [Option<String>])),
    Delete(&'a [Option<String>]),
}

/// Microseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

pub(crate) struct Session<'a> {
    config: &'a ProducerConfig,
    sink: &'a KafkaSink,
    routes: Routes,
    relations: HashMap<u32, RelationState>,
    tx: Option<OpenTx>,
    meters: Meters,
    key_buf: Vec<u8>,
    json_buf: Vec<u8>,
    last_wal_end: Lsn,
}

/// Connects, checks, and streams until `shutdown` or an error. `Ok(())` means a graceful
/// shutdown finished: everything acknowledged was confirmed to the slot.
pub(crate) async fn run(
    config: &ProducerConfig,
    connection: &ConnectionInfo,
    sink: &Arc<KafkaSink>,
    shutdown: &CancellationToken,
    first: bool,
) -> Result<(), SessionError> {
    let client = connection.connect().await.map_err(|e| classify_connect_error(e, connection, first))?;
    let routes = match schema::check(&client, &config.publication_name, &config.topic_map).await {
        Ok(routes) => routes,
        Err(ProducerError::Postgres(message)) => return Err(retry(message)),
        Err(other) => return Err(other.into()),
    };
    if first {
        sink.check_topics(routes.topics(), config.brokers.clone()).await?;
    }
    let slot = match schema::ensure_slot(&client, &config.slot_name).await {
        Ok(slot) => slot,
        Err(ProducerError::Postgres(message)) if !first => return Err(retry(message)),
        Err(other) => return Err(other.into()),
    };
    if let Some(pid) = slot.active_pid {
        return Err(slot_in_use(config, Some(pid)));
    }

    let replication_config = connection
        .replication_config(&config.slot_name, &config.publication_name)
        .with_ack_lsn(pgwire_replication::Lsn::from_u64(slot.confirmed_flush.0))
        .with_status_interval(config.status_interval)
        .with_wakeup_interval(Duration::from_secs(5))
        .with_buffer_size(1024);
    let mut replication = match ReplicationClient::connect(replication_config).await {
        Ok(client) => client,
        Err(error) => return Err(classify_replication_error(&error, config, connection, first)),
    };
    tracing::info!(
        slot = %config.slot_name,
        publication = %config.publication_name,
        confirmed = %slot.confirmed_flush,
        database = %connection.redacted,
        "streaming from the replication slot"
    );
    sink.reset(slot.confirmed_flush);
    drop(client);

    let mut session = Session {
        config,
        sink,
        routes,
        relations: HashMap::new(),
        tx: None,
        meters: Meters::new(&config.slot_name),
        key_buf: Vec::with_capacity(64),
        json_buf: Vec::with_capacity(512),
        last_wal_end: slot.confirmed_flush,
    };
    let result = session.stream(&mut replication, shutdown).await;
    match result {
        Ok(()) => {
            session.finish(&mut replication).await;
            Ok(())
        }
        Err(error) => {
            replication.abort();
            Err(error)
        }
    }
}

fn slot_in_use(config: &ProducerConfig, pid: Option<i32>) -> SessionError {
    match config.slot_in_use_policy {
        SlotInUsePolicy::Fail => {
            SessionError::Fatal(ProducerError::SlotInUse { slot: config.slot_name.clone(), pid })
        }
        SlotInUsePolicy::Wait => retry(format!(
            "replication slot {} is in use by another connection (pid {}); waiting for it to be released",
            config.slot_name,
            pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
        )),
    }
}

fn classify_connect_error(error: tokio_postgres::Error, connection: &ConnectionInfo, first: bool) -> SessionError {
    let message = format!(
        "cannot connect to PostgreSQL at {}: {}",
        connection.redacted,
        super::connection::with_sources(&error)
    );
    let permanent = error.code().is_some_and(|code| {
        let code = code.code();
        // 28: invalid authorization, 3D: invalid catalog name (no such database).
        code.starts_with("28") || code.starts_with("3D")
    });
    if permanent || first {
        SessionError::Fatal(ProducerError::Postgres(message))
    } else {
        retry(message)
    }
}

fn classify_replication_error(
    error: &PgWireError,
    config: &ProducerConfig,
    connection: &ConnectionInfo,
    first: bool,
) -> SessionError {
    let text = error.to_string();
    if text.contains("is active for PID") {
        let pid = text
            .split("is active for PID")
            .nth(1)
            .and_then(|rest| rest.trim().trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok());
        return slot_in_use(config, pid);
    }
    let message = format!("replication connection to {} failed: {text}", connection.redacted);
    match error {
        PgWireError::Auth(_) | PgWireError::Tls(_) => SessionError::Fatal(ProducerError::Postgres(message)),
        PgWireError::Server(_) if first => SessionError::Fatal(ProducerError::Postgres(message)),
        _ => retry(message),
    }
}

impl Session<'_> {
    async fn stream(
        &mut self,
        replication: &mut ReplicationClient,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let mut status = tokio::time::interval(self.config.status_interval.min(Duration::from_secs(1)));
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_in_flight = self.config.max_in_flight as u64;
        loop {
            self.check_failure()?;
            // Bounded memory: read no further while the window of unacknowledged messages is full.
            loop {
                let notified = self.sink.shared.progress.notified();
                if self.sink.shared.watermark().in_flight() < max_in_flight {
                    break;
                }
                tokio::select! {
                    () = notified => {}
                    () = shutdown.cancelled() => return Ok(()),
                    _ = status.tick() => self.report(replication),
                }
                self.check_failure()?;
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                _ = status.tick() => self.report(replication),
                event = replication.recv() => match event {
                    Ok(Some(event)) => self.handle(event)?,
                    Ok(None) => return Err(retry("the server ended the replication stream")),
                    Err(error) => return Err(retry(format!("replication stream broke: {error}"))),
                },
            }
        }
    }

    /// Reports the confirmed position to the server (sent by the replication client's worker
    /// within the status interval) and updates the gauges.
    fn report(&self, replication: &ReplicationClient) {
        let (confirmed, in_flight) = {
            let watermark = self.sink.shared.watermark();
            (watermark.confirmed(), watermark.in_flight())
        };
        replication.update_applied_lsn(pgwire_replication::Lsn::from_u64(confirmed.0));
        self.meters.confirmed.set(confirmed.0 as f64);
        self.meters.in_flight.set(in_flight as f64);
        let wal_end = replication.metrics().last_wal_end().as_u64().max(self.last_wal_end.0);
        self.meters.lag.set(wal_end.saturating_sub(confirmed.0) as f64);
    }

    fn check_failure(&self) -> Result<(), SessionError> {
        if !self.sink.shared.has_failed() {
            return Ok(());
        }
        let Some(failure) = self.sink.shared.take_failure() else { return Ok(()) };
        let fatal_for_instance = matches!(failure.error.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal));
        let message = format!(
            "Kafka did not accept a message for {}/{}: {}",
            failure.topic, failure.partition, failure.error
        );
        if fatal_for_instance {
            // The idempotent producer lost its sequence state; a new producer re-sends from the slot.
            Err(SessionError::Retry { reason: message, recreate_kafka: true })
        } else {
            Err(SessionError::Fatal(ProducerError::Kafka(format!(
                "{message}. Nothing after it was confirmed to the slot; fix the cause (topic, permissions, \
                 message.max.bytes) and restart the producer"
            ))))
        }
    }

    fn handle(&mut self, event: ReplicationEvent) -> Result<(), SessionError> {
        match event {
            ReplicationEvent::Begin { final_lsn, commit_time_micros, .. } => {
                let id = self.sink.shared.watermark().begin();
                self.tx = Some(OpenTx {
                    id,
                    commit_lsn: Lsn(final_lsn.as_u64()),
                    commit_time_ms: commit_time_micros.saturating_add(PG_EPOCH_UNIX_MICROS) / 1000,
                    next_seq: 0,
                });
            }
            ReplicationEvent::Commit { end_lsn, lsn, .. } => {
                let Some(tx) = self.tx.take() else {
                    return Err(self.protocol(Lsn(lsn.as_u64()), "a Commit without a Begin"));
                };
                self.sink.shared.watermark().committed(tx.id, Lsn(end_lsn.as_u64()));
            }
            ReplicationEvent::XLogData { data, wal_end, .. } => {
                if wal_end.as_u64() > self.last_wal_end.0 {
                    self.last_wal_end = Lsn(wal_end.as_u64());
                }
                let message = pgoutput::decode(&data).map_err(|e| self.protocol(self.position(), &e.to_string()))?;
                self.apply(message)?;
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                let wal_end = Lsn(wal_end.as_u64());
                if wal_end > self.last_wal_end {
                    self.last_wal_end = wal_end;
                }
                if self.tx.is_none() {
                    self.sink.shared.watermark().idle_at(wal_end);
                }
            }
            ReplicationEvent::Message { .. } => {}
            ReplicationEvent::StoppedAt { .. } => {
                return Err(retry("the replication stream stopped"));
            }
        }
        Ok(())
    }

    /// The commit LSN of the open transaction, or the last WAL position seen.
    fn position(&self) -> Lsn {
        self.tx.as_ref().map_or(self.last_wal_end, |tx| tx.commit_lsn)
    }

    fn protocol(&self, lsn: Lsn, message: &str) -> SessionError {
        SessionError::Fatal(ProducerError::Protocol { lsn, message: message.to_owned() })
    }

    fn apply(&mut self, message: Message) -> Result<(), SessionError> {
        match message {
            Message::Relation(relation) => {
                let Some(route) = self.routes.get(&relation.namespace, &relation.name).cloned() else {
                    return Err(SessionError::Fatal(ProducerError::Schema(format!(
                        "table {} joined publication {:?} while the producer was running (at LSN {}) and has no \
                         topic map entry; add one and restart the producer. Nothing from it was confirmed",
                        schema::table_name(&relation.namespace, &relation.name),
                        self.config.publication_name,
                        self.position()
                    ))));
                };
                let col_names: Vec<String> = relation.columns.into_iter().map(|c| c.name).collect();
                let key_indexes = route
                    .key_columns
                    .iter()
                    .map(|key| col_names.iter().position(|c| c == key).ok_or_else(|| key.clone()))
                    .collect();
                self.relations.insert(relation.id, RelationState { route, col_names, key_indexes });
            }
            Message::Insert { relation_id, new } => {
                let new = self.row(relation_id, new, None)?;
                self.publish(relation_id, OpKindRows::Insert(&new))?;
            }
            Message::Update { relation_id, old, new } => {
                let Some((pgoutput::OldTupleKind::Full, old)) = old else {
                    return Err(self.needs_full_identity(relation_id, "an update"));
                };
                let old = self.row(relation_id, old, None)?;
                let new = self.row(relation_id, new, Some(&old))?;
                self.publish(relation_id, OpKindRows::Update(&old, &new))?;
            }
            Message::Delete { relation_id, kind, old } => {
                if kind != pgoutput::OldTupleKind::Full {
                    return Err(self.needs_full_identity(relation_id, "a delete"));
                }
                let old = self.row(relation_id, old, None)?;
                self.publish(relation_id, OpKindRows::Delete(&old))?;
            }
            Message::Truncate { relation_ids, .. } => {
                let tables: Vec<String> = relation_ids
                    .iter()
                    .map(|id| self.relations.get(id).map_or_else(|| format!("relation {id}"), |r| r.route.table_name.clone()))
                    .collect();
                match self.config.truncate_policy {
                    TruncatePolicy::Fail => {
                        return Err(SessionError::Fatal(ProducerError::Truncate {
                            table: tables.join(", "),
                            lsn: self.position(),
                        }))
                    }
                    TruncatePolicy::Skip => tracing::warn!(
                        tables = %tables.join(", "),
                        lsn = %self.position(),
                        "TRUNCATE not published (TruncatePolicy::Skip)"
                    ),
                }
            }
            // Type, Origin and logical messages carry nothing pgkafka publishes.
            _ => {}
        }
        Ok(())
    }

    fn needs_full_identity(&self, relation_id: u32, what: &str) -> SessionError {
        let table = self.relations.get(&relation_id).map_or_else(|| format!("relation {relation_id}"), |r| r.route.table_name.clone());
        SessionError::Fatal(ProducerError::Schema(format!(
            "{what} of table {table} at LSN {} came without the whole old row; the table's replica identity was \
             changed while the producer ran. Run ALTER TABLE {table} REPLICA IDENTITY FULL and restart",
            self.position()
        )))
    }

    /// Converts a tuple to a row; unchanged TOASTed values are taken from `old`.
    fn row(
        &self,
        relation_id: u32,
        values: Vec<TupleValue>,
        old: Option<&Vec<Option<String>>>,
    ) -> Result<Vec<Option<String>>, SessionError> {
        let relation = self.relation(relation_id)?;
        if values.len() != relation.col_names.len() {
            return Err(self.protocol(
                self.position(),
                &format!(
                    "a row of table {} has {} values but its Relation message listed {} columns",
                    relation.route.table_name,
                    values.len(),
                    relation.col_names.len()
                ),
            ));
        }
        values
            .into_iter()
            .enumerate()
            .map(|(index, value)| match value {
                TupleValue::Null => Ok(None),
                TupleValue::Text(text) => Ok(Some(text)),
                TupleValue::UnchangedToast => old.and_then(|old| old.get(index).cloned()).ok_or_else(|| {
                    self.protocol(
                        self.position(),
                        &format!(
                            "column {} of table {} is an unchanged TOAST value with no old row to take it from",
                            relation.col_names.get(index).map_or("?", String::as_str),
                            relation.route.table_name
                        ),
                    )
                }),
                TupleValue::Binary(_) => Err(self.protocol(
                    self.position(),
                    &format!("table {} sent a binary value; pgkafka streams text", relation.route.table_name),
                )),
            })
            .collect()
    }

    fn relation(&self, relation_id: u32) -> Result<&RelationState, SessionError> {
        self.relations.get(&relation_id).ok_or_else(|| {
            self.protocol(self.position(), &format!("a change of relation {relation_id} before its Relation message"))
        })
    }

    fn publish(&mut self, relation_id: u32, rows: OpKindRows<'_>) -> Result<(), SessionError> {
        let position = self.position();
        let Some(tx) = self.tx.as_mut() else {
            return Err(SessionError::Fatal(ProducerError::Protocol {
                lsn: position,
                message: "a row change outside a transaction".into(),
            }));
        };
        let relation = self.relations.get(&relation_id).ok_or_else(|| ProducerError::Protocol {
            lsn: tx.commit_lsn,
            message: format!("a change of relation {relation_id} before its Relation message"),
        })?;
        let key_indexes = relation.key_indexes.as_ref().map_err(|missing| {
            ProducerError::Schema(format!(
                "partition_key column {missing:?} of table {} no longer exists (change at LSN {}); put the column \
                 back or change the topic map's partition_key, then restart. Nothing from this transaction was confirmed",
                relation.route.table_name, tx.commit_lsn
            ))
        })?;
        let (body, key_row) = match rows {
            OpKindRows::Insert(new) => (OpBody::Insert(new), new),
            OpKindRows::Update(old, new) => (OpBody::Update((old, new)), new),
            OpKindRows::Delete(old) => (OpBody::Delete(old), old),
        };
        self.key_buf.clear();
        encode_key_into(
            key_indexes.iter().map(|&i| key_row.get(i).and_then(Option::as_deref)),
            &mut self.key_buf,
        );
        self.json_buf.clear();
        let op = OpRef {
            table_name: &relation.route.table_name,
            col_names: &relation.col_names,
            lsn: tx.commit_lsn.0,
            seq_id: tx.next_seq,
            op: body,
        };
        serde_json::to_writer(&mut self.json_buf, &op)
            .map_err(|e| ProducerError::Protocol { lsn: tx.commit_lsn, message: format!("cannot encode a record: {e}") })?;
        tx.next_seq += 1;

        let mut record = BaseRecord::with_opaque_to(&relation.route.topic, tx.id as usize)
            .key(&self.key_buf[..])
            .payload(&self.json_buf[..])
            .timestamp(tx.commit_time_ms);
        self.sink.shared.watermark().sent(tx.id);
        let mut waited = Instant::now();
        loop {
            match self.sink.producer.send(record) {
                Ok(()) => break,
                Err((error, returned)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    // librdkafka's own queue is full (its limits are below our window): give its
                    // background thread a moment to move messages out.
                    record = returned;
                    if waited.elapsed() > Duration::from_secs(30) {
                        tracing::warn!(topic = %relation.route.topic, "librdkafka's queue has been full for 30 s");
                        waited = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => {
                    return Err(SessionError::Fatal(ProducerError::Kafka(format!(
                        "cannot hand a record of table {} to Kafka topic {}: {error}",
                        relation.route.table_name, relation.route.topic
                    ))))
                }
            }
        }
        self.meters.produced.increment(1);
        self.meters.bytes.increment(self.json_buf.len() as u64);
        Ok(())
    }

    /// Graceful end: wait for Kafka to acknowledge what is in flight, confirm it, and close.
    async fn finish(&mut self, replication: &mut ReplicationClient) {
        let timeout = self.config.shutdown_timeout;
        let drained = self.sink.drain(tokio::time::sleep(timeout)).await;
        if !drained {
            tracing::warn!(
                in_flight = self.sink.shared.watermark().in_flight(),
                "Kafka did not acknowledge everything within the shutdown timeout; the rest will be re-sent on restart"
            );
        }
        let confirmed = self.sink.shared.watermark().confirmed();
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

enum OpKindRows<'a> {
    Insert(&'a [Option<String>]),
    Update(&'a [Option<String>], &'a [Option<String>]),
    Delete(&'a [Option<String>]),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pgkafka_common::{Op, ReplicationOp};
    use proptest::prelude::*;

    fn row() -> impl Strategy<Value = Vec<Option<String>>> {
        proptest::collection::vec(proptest::option::of(".*"), 0..4)
    }

    proptest! {
        /// The producer's borrowed encoding is byte-for-byte the wire type's.
        #[test]
        fn borrowed_encoding_matches_the_wire_type(
            table in ".*", cols in proptest::collection::vec(".*", 0..4),
            lsn: u64, seq: u64, old in row(), new in row(), kind in 0..3u8,
        ) {
            let (body, op) = match kind {
                0 => (OpBody::Insert(&new), Op::Insert(new.clone())),
                1 => (OpBody::Update((&old, &new)), Op::Update((old.clone(), new.clone()))),
                _ => (OpBody::Delete(&old), Op::Delete(old.clone())),
            };
            let borrowed = serde_json::to_string(&OpRef { table_name: &table, col_names: &cols, lsn, seq_id: seq, op: body }).unwrap();
            let owned = serde_json::to_string(&ReplicationOp { table_name: table.clone(), col_names: cols.clone(), lsn, seq_id: seq, op }).unwrap();
            prop_assert_eq!(borrowed, owned);
        }
    }
}
