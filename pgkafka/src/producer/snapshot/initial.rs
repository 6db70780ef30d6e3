//! The initial snapshot: every row of every published table as it was at one consistent point of
//! the slot, published before the changes streamed after that point.
//!
//! A new slot is created with an exported snapshot (`CREATE_REPLICATION_SLOT .. (SNAPSHOT
//! 'export')` on the replication session that then streams from it); reader connections import
//! it (`SET TRANSACTION SNAPSHOT`) and read the tables in key order, chunk by chunk, before the
//! stream starts. The rows are `Insert` records at `(lsn = one below the consistent point,
//! seq_id = 0, 1, ..)` with the [`SNAPSHOT`](pgkafka_common::headers::SNAPSHOT) header, written
//! by the encoder's [`SnapshotRows`] in the topic's format (a Debezium topic gets read events;
//! [`SnapshotRows`] says why one below).
//!
//! Crash during the snapshot: the control table holds, per table, the last key Kafka
//! acknowledged, and the slot is never confirmed past the snapshot's point. A restart resumes:
//! it takes a new exported snapshot (a temporary slot, at a later point `P`), streams the old
//! slot's changes up to `P` (so every change after the first snapshot's point reaches Kafka,
//! deletes of rows already sent included), then reads the rest of each table (keys after the
//! last acknowledged one) at `P`, and streams on. Every key's records thus stay in WAL order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use pgkafka_common::headers;
use pgkafka_common::Lsn;
use pgwire_replication::ReplicationClient;
use rdkafka::message::{Header, OwnedHeaders};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::chunk::{published_columns, Chunk, ChunkReader};
use super::copy_text::TextRow;
use super::control::{ControlTable, Run, RunKind, RunState};
use super::{Settings, SnapshotMode};
use crate::producer::catalog::{Catalog, Publication};
use crate::producer::connection::ConnectionInfo;
use crate::producer::encode::{system_clock, Encoder, SnapshotRead, SnapshotRows};
use crate::producer::error::{Attempt, Failure};
use crate::producer::routes::Routes;
use crate::producer::sink::Sink;
use crate::producer::slot::SlotState;
use crate::producer::watermark::TxId;
use crate::producer::{ProducerConfig, ProducerError};

/// The control table of `settings`, as a configuration error when its name is unusable.
pub(crate) fn control_table(settings: &Settings) -> Result<ControlTable, ProducerError> {
    ControlTable::new(&settings.table).map_err(ProducerError::Config)
}

/// The routed tables a snapshot cannot read because they have no primary key, as an error
/// naming them, found before any slot is created.
pub(crate) fn check_primary_keys(catalog: &Catalog, routes: &Routes) -> Result<(), ProducerError> {
    let Publication::Tables(tables) = &catalog.publication else { return Ok(()) };
    let without: Vec<String> = tables
        .iter()
        .filter(|table| table.primary_key.is_empty() && routes.get(&table.schema, &table.table).is_some())
        .map(|table| pgkafka_common::ident::qualified(&table.schema, &table.table))
        .collect();
    if without.is_empty() {
        return Ok(());
    }
    Err(ProducerError::Schema(format!(
        "snapshots read tables in primary-key order, and {} no primary key: {}. Add one (ALTER TABLE .. ADD PRIMARY KEY \
         (..)), take the table out of the publication, or set snapshot = \"never\"",
        if without.len() == 1 { "this table has" } else { "these tables have" },
        without.join(", ")
    )))
}

/// An exported snapshot: its consistent point and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exported {
    pub(crate) at: Lsn,
    pub(crate) name: String,
}

/// `CREATE_REPLICATION_SLOT` with an exported snapshot, on a gated replication session that has
/// not started. A temporary slot goes away with its session.
pub(crate) fn create_slot_command(slot: &str, temporary: bool, failover: bool) -> String {
    let temporary = if temporary { " TEMPORARY" } else { "" };
    // FAILOVER exists from PostgreSQL 17 on; the caller passes `failover` only there.
    let failover = if failover { ", FAILOVER" } else { "" };
    format!(
        "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput (SNAPSHOT 'export'{failover})",
        pgkafka_common::ident::quote_ident(slot)
    )
}

/// Runs `CREATE_REPLICATION_SLOT` on `replication` and returns its snapshot.
pub(crate) async fn export(
    replication: &mut ReplicationClient,
    command: &str,
    slot: &str,
    attempt: Attempt,
) -> Result<Exported, Failure> {
    let rows = replication.simple_query(command).await.map_err(|e| {
        Failure::postgres(format!("cannot create replication slot {slot} with an exported snapshot: {e}"), attempt)
    })?;
    let text = |index: usize| -> Option<String> {
        rows.first()?.get(index)?.as_ref().map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    };
    let (Some(point), Some(name)) = (text(1), text(2)) else {
        return Err(Failure::postgres(
            format!("CREATE_REPLICATION_SLOT {slot} returned no consistent point or snapshot"),
            attempt,
        ));
    };
    let at: Lsn = point.parse().map_err(|_| {
        Failure::postgres(format!("CREATE_REPLICATION_SLOT {slot} returned the consistent point {point:?}"), attempt)
    })?;
    // Snapshot names are hexadecimal digits and dashes; anything else is not spliced into SQL.
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(Failure::postgres(
            format!("CREATE_REPLICATION_SLOT {slot} returned the snapshot name {name:?}"),
            attempt,
        ));
    }
    tracing::info!(slot, consistent_point = %at, snapshot = %name, "created a replication slot with an exported snapshot");
    Ok(Exported { at, name })
}

/// Opens `readers` connections, each in a read-only repeatable-read transaction that imported
/// the snapshot. They keep it after the exporting session ends.
pub(crate) async fn import(
    connection: &ConnectionInfo,
    exported: &Exported,
    readers: usize,
    attempt: Attempt,
) -> Result<Vec<Client>, Failure> {
    let mut clients = Vec::with_capacity(readers);
    for _ in 0..readers.max(1) {
        let client = connection.connect().await.map_err(|e| {
            Failure::postgres(format!("connecting a snapshot reader to {}: {e}", connection.redacted), attempt)
        })?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                exported.name
            ))
            .await
            .map_err(|e| {
                Failure::postgres(format!("importing snapshot {} into a reader: {e}", exported.name), attempt)
            })?;
        clients.push(client);
    }
    Ok(clients)
}

/// The producer's counters of records and bytes handed to Kafka, which snapshot rows count in.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) produced: metrics::Counter,
    pub(crate) bytes: metrics::Counter,
}

/// An initial snapshot ready to be read: its point, its readers (holding the snapshot) and the
/// runs still to do.
pub(crate) struct Prepared {
    at: Lsn,
    readers: Vec<Client>,
    runs: Vec<Run>,
    control: ControlTable,
    /// A connection outside the readers' read-only transactions, for progress.
    control_client: Client,
    chunk_rows: usize,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("at", &self.at)
            .field("readers", &self.readers.len())
            .field("runs", &self.runs)
            .finish_non_exhaustive()
    }
}

/// How one table is turned into records.
struct TableSend {
    run: Run,
    rows: SnapshotRows,
    sent_rows: u64,
}

/// A table given to a reader: its index in the runs, its reader, and the key to resume after.
type Assigned = (usize, ChunkReader, Option<Vec<String>>);

/// A chunk a reader read, for the table at `index` of the runs.
struct Read {
    index: usize,
    chunk: Result<Chunk, String>,
    last: bool,
}

/// A chunk handed to Kafka, waiting for its acknowledgement before its progress is recorded.
struct Sent {
    tx: TxId,
    index: usize,
    last_key: Vec<String>,
    rows: i64,
    last: bool,
}

impl Prepared {
    /// A snapshot at `at` read by `readers`, doing `runs` (claimed in `control`).
    pub(crate) fn new(
        at: Lsn,
        readers: Vec<Client>,
        runs: Vec<Run>,
        control: ControlTable,
        control_client: Client,
        chunk_rows: usize,
    ) -> Self {
        Self { at, readers, runs, control, control_client, chunk_rows }
    }

    /// The snapshot's consistent point: its rows are published when the stream reaches it.
    pub(crate) fn at(&self) -> Lsn {
        self.at
    }

    /// Reads every open table and hands its rows, written by `encoder`'s formats, to `sink`, recording each chunk's progress once
    /// Kafka acknowledged it, and each table as done. Returns `Ok(false)` if `shutdown` came first.
    pub(crate) async fn run(
        self,
        routes: &Routes,
        encoder: &Encoder,
        sink: &Sink,
        origin: &OwnedHeaders,
        meters: &Counters,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        let Self { at, readers, runs, control, control_client, chunk_rows } = self;
        let postgres = |message: String| Failure::retry(message);
        let mut tables = Vec::with_capacity(runs.len());
        let mut readers_of: Vec<Vec<Assigned>> = readers.iter().map(|_| Vec::new()).collect();
        let reader_count = readers.len().max(1);
        for (index, run) in runs.into_iter().enumerate() {
            let Some((schema, table, route)) = routes.named(&run.table_name) else {
                // The table left the publication or the topic map since the run was requested.
                tracing::warn!(table = %run.table_name, "the table is no longer published; its snapshot is cancelled");
                control
                    .finish(&control_client, run.id, RunState::Cancelled, Some("no longer published"))
                    .await
                    .map_err(postgres)?;
                continue;
            };
            let slot = index % reader_count;
            let Some(reader) = readers.get(slot) else { continue };
            let schema_error = |e: String| Failure::Fatal(ProducerError::Schema(e));
            let columns = published_columns(reader, schema, table).await.map_err(schema_error)?;
            let col_names = columns.iter().map(|c| c.name.clone()).collect();
            let chunks = ChunkReader::prepare(reader, schema, table, col_names, chunk_rows).await.map_err(schema_error)?;
            let types: Vec<_> = columns.iter().map(|c| c.as_type()).collect();
            let rows = encoder.snapshot_rows(route, &types).map_err(ProducerError::Schema)?;
            tracing::info!(table = %run.table_name, resume_after = ?run.last_key, snapshot_lsn = %at, "snapshot of the table started");
            let table_index = tables.len();
            let resume = run.last_key.clone();
            tables.push(TableSend { run, rows, sent_rows: 0 });
            if let Some(list) = readers_of.get_mut(slot) {
                list.push((table_index, chunks, resume));
            }
        }
        if tables.is_empty() {
            return Ok(true);
        }

        // Readers read ahead at most one chunk each; memory stays bounded by the Kafka window.
        let (chunks_tx, mut chunks_rx) = mpsc::channel::<Read>(reader_count);
        // The rows of chunks already sent, at most one per reader, which readers fill again:
        // their strings are allocated once, not per value.
        let spent = Arc::new(Mutex::new(Vec::<Vec<TextRow>>::with_capacity(reader_count)));
        let mut tasks = JoinSet::new();
        for (client, work) in readers.into_iter().zip(readers_of) {
            let chunks_tx = chunks_tx.clone();
            let spent = Arc::clone(&spent);
            tasks.spawn(async move {
                for (index, reader, mut after) in work {
                    loop {
                        let spare = spent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop().unwrap_or_default();
                        let chunk = reader.read_reusing(&client, after.as_deref(), spare).await;
                        let last = chunk.as_ref().map_or(true, |c| c.is_last(reader.limit()));
                        after = chunk.as_ref().ok().and_then(|c| c.last_key.clone()).or(after);
                        let failed = chunk.is_err();
                        if chunks_tx.send(Read { index, chunk, last }).await.is_err() || failed {
                            return;
                        }
                        if last {
                            break;
                        }
                    }
                }
                // The snapshot transaction ends with the reader.
                drop(client);
            });
        }
        drop(chunks_tx);

        let mut headers = origin.clone();
        headers = headers.insert(Header { key: headers::SNAPSHOT, value: Some(RunKind::Initial.as_str()) });
        let timestamp_ms = system_clock() / 1000;
        let mut seq_id: u64 = 0;
        // Tables whose last chunk is still to come: the last row of the last one ends the snapshot.
        let mut unread = tables.len();
        let mut waiting: VecDeque<Sent> = VecDeque::new();
        let mut open = tables.len();
        // Whether every reader is done: then what is still waiting is waited for.
        let mut read_all = false;
        while open > 0 {
            if read_all && waiting.is_empty() {
                return Err(Failure::retry("a snapshot reader ended before its tables were read"));
            }
            let read = match read_all {
                true => None,
                false => tokio::select! {
                    read = chunks_rx.recv() => read,
                    () = shutdown.cancelled() => return Ok(false),
                },
            };
            read_all |= read.is_none();
            if let Some(Read { index, chunk, last }) = read {
                let chunk = chunk.map_err(postgres)?;
                let Some(table) = tables.get_mut(index) else { continue };
                let tx = sink.begin(at);
                let rows = chunk.rows.len();
                for (row_index, row) in chunk.rows.iter().enumerate() {
                    if !sink.room_unless(shutdown).await? {
                        return Ok(false);
                    }
                    let read = match unread == 1 && last && row_index + 1 == rows {
                        true => SnapshotRead::Last,
                        false => SnapshotRead::Initial,
                    };
                    let record = table.rows.write(row, read, at, seq_id, timestamp_ms).map_err(|message| {
                        Failure::Fatal(ProducerError::Schema(message))
                    })?;
                    let value_len = record.value.map_or(0, <[u8]>::len);
                    if !sink.send(tx, &record, &headers, shutdown).await? {
                        return Ok(false);
                    }
                    seq_id += 1;
                    meters.produced.increment(1);
                    meters.bytes.increment(value_len as u64);
                }
                sink.commit(tx, at);
                if last {
                    unread = unread.saturating_sub(1);
                }
                table.sent_rows += rows as u64;
                let last_key = chunk.last_key.or_else(|| table.run.last_key.clone()).unwrap_or_default();
                waiting.push_back(Sent { tx, index, last_key, rows: i64::try_from(rows).unwrap_or(i64::MAX), last });
                {
                    let mut spare = spent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if spare.len() < reader_count {
                        spare.push(chunk.rows);
                    }
                }
            }
            // Record what Kafka has acknowledged; at a table's end, or once everything is
            // read, wait for it.
            while let Some(front) = waiting.front() {
                if !sink.settled(front.tx) {
                    if !front.last && !read_all {
                        break;
                    }
                    tokio::select! {
                        settled = sink.wait_settled(front.tx) => settled?,
                        () = shutdown.cancelled() => return Ok(false),
                    }
                }
                let Some(done) = waiting.pop_front() else { break };
                let Some(table) = tables.get(done.index) else { continue };
                if done.rows > 0 {
                    control
                        .progress(&control_client, table.run.id, &done.last_key, done.rows)
                        .await
                        .map_err(postgres)?;
                }
                if done.last {
                    control.finish(&control_client, table.run.id, RunState::Done, None).await.map_err(postgres)?;
                    tracing::info!(table = %table.run.table_name, rows = table.sent_rows, snapshot_lsn = %at, "snapshot of the table finished");
                    open -= 1;
                }
            }
        }
        while let Some(task) = tasks.join_next().await {
            if let Err(error) = task {
                tracing::debug!(%error, "a snapshot reader task ended abnormally");
            }
        }
        tracing::info!(rows = seq_id, snapshot_lsn = %at, "initial snapshot finished");
        Ok(true)
    }
}

/// Marks this slot's unfinished initial snapshot as failed (its slot is gone, so it cannot be
/// resumed) and requests a new one of `routes`' tables.
pub(crate) async fn request(
    client: &Client,
    control: &ControlTable,
    slot: &str,
    routes: &Routes,
    attempt: Attempt,
) -> Result<(), Failure> {
    let failed = |e: String| Failure::postgres(e, attempt);
    for run in control.list(client, Some(slot)).await.map_err(failed)? {
        if run.kind == RunKind::Initial && run.state.is_open() {
            control
                .finish(client, run.id, RunState::Failed, Some("the slot was created anew; the snapshot starts over"))
                .await
                .map_err(failed)?;
        }
    }
    let tables: Vec<String> = routes.all().map(|route| route.table_name.clone()).collect();
    control.enqueue(client, slot, &tables, RunKind::Initial).await.map_err(failed)?;
    Ok(())
}

/// At the start of a session on an existing slot: the slot's unfinished initial snapshot, if
/// it has one, prepared at a new snapshot point (a temporary slot's exported snapshot). The
/// session streams the slot's changes up to that point before reading the rest of the tables.
pub(crate) async fn resume(
    config: &ProducerConfig,
    connection: &ConnectionInfo,
    client: &Client,
    control: ControlTable,
    slot: &SlotState,
    attempt: Attempt,
) -> Result<Option<Prepared>, Failure> {
    let slot_name = &config.slot_name;
    let runs = control.claim(client, slot_name, RunKind::Initial).await.map_err(|e| Failure::postgres(e, attempt))?;
    if runs.is_empty() {
        if config.snapshot.mode == SnapshotMode::InitialOnly {
            return Err(Failure::Fatal(ProducerError::Config(format!(
                "replication slot {slot_name} exists and has no unfinished initial snapshot in {}; snapshot = \"initial_only\" \
                 takes its snapshot through a slot it creates. Use another slot name, or drop the slot with \
                 SELECT pg_drop_replication_slot('{slot_name}') if nothing else streams from it",
                control.name()
            ))));
        }
        return Ok(None);
    }
    // One temporary slot per slot name at a time; it goes away with its session.
    let base: String = slot_name.chars().take(50).collect();
    let temporary = format!("{base}_snapshot");
    let mut exporter =
        ReplicationClient::connect_gated(connection.replication_config(&temporary, &config.publication_name))
            .await
            .map_err(|e| {
                Failure::postgres(format!("replication connection to {} failed: {e}", connection.redacted), attempt)
            })?;
    let exported = export(&mut exporter, &create_slot_command(&temporary, true, false), &temporary, attempt).await?;
    let readers = import(connection, &exported, config.snapshot.readers, attempt).await;
    // The readers hold the snapshot now; the temporary slot is not needed any more.
    drop(exporter);
    let readers = readers?;
    let control_client = connection
        .connect()
        .await
        .map_err(|e| Failure::postgres(format!("connecting to {}: {e}", connection.redacted), attempt))?;
    tracing::info!(
        slot = %slot_name,
        confirmed = %slot.confirmed_flush,
        snapshot_lsn = %exported.at,
        tables = runs.len(),
        "resuming the unfinished initial snapshot: streaming the slot's changes up to a new snapshot, then reading the rest"
    );
    Ok(Some(Prepared::new(exported.at, readers, runs, control, control_client, config.snapshot.chunk_rows)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::producer::catalog::{CatalogColumn, PublishedTable, ReplicaIdentity};

    #[test]
    fn tables_without_a_primary_key_are_refused_by_name_before_the_slot_exists() {
        let table = |schema: &str, name: &str, primary_key: &[&str], oid: u32| PublishedTable {
            oid,
            schema: schema.into(),
            table: name.into(),
            replica_identity: ReplicaIdentity::Full,
            published_columns: None,
            columns: vec![CatalogColumn { name: "id".into(), not_null: true }],
            primary_key: primary_key.iter().map(|c| (*c).to_owned()).collect(),
        };
        let catalog = Catalog {
            publication_name: "pub".into(),
            wal_level: "logical".into(),
            server_encoding: "UTF8".into(),
            publication: Publication::Tables(vec![table("public", "keyed", &["id"], 1), table("audit", "log", &[], 2)]),
        };
        let topic_map = [("keyed", vec![]), ("audit.log", vec!["id".to_owned()])]
            .into_iter()
            .map(|(name, key)| (name.to_owned(), pgkafka_common::TopicInfo::new(format!("{name}_topic"), key)))
            .collect();
        let routes = crate::producer::routes::resolve_skipping(&topic_map, &catalog, |_, _| false).unwrap();
        let error = check_primary_keys(&catalog, &routes).unwrap_err().to_string();
        assert!(error.contains("this table has no primary key: \"audit\".\"log\""), "{error}");
        assert!(!error.contains("keyed"), "{error}");
    }

    #[test]
    fn slots_are_created_with_an_exported_snapshot() {
        assert_eq!(
            create_slot_command("s1", false, false),
            "CREATE_REPLICATION_SLOT \"s1\" LOGICAL pgoutput (SNAPSHOT 'export')"
        );
        assert_eq!(
            create_slot_command("t", true, true),
            "CREATE_REPLICATION_SLOT \"t\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER)"
        );
    }
}
