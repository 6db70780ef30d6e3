//! Everything before streaming, in one order for [`Producer::check`](super::Producer::check) and
//! every session of [`Producer::start`](super::Producer::start): settings -> connect -> catalog ->
//! routes -> topics -> slot (created only as `slot_guard` allows) -> replication connection.

use std::sync::Arc;
use std::time::Duration;

use pgkafka_common::Lsn;
use pgwire_replication::{PgWireError, ReplicationClient};
use pgkafka_common::headers;
use rdkafka::message::{Header, OwnedHeaders};
use tokio_postgres::Client;

use super::connection::{self, ConnectionInfo};
use super::error::{Attempt, Failure};
use super::routes::{self, Routes};
use super::sink::Sink;
use super::slot_guard::{self, SessionStart};
use super::snapshot::control::RunKind;
use super::snapshot::initial::{self, Prepared};
use super::{catalog, slot, ProducerConfig, ProducerError, SlotInUsePolicy};

/// The checks that need no server, and the parsed connection string.
pub(crate) fn validate(config: &ProducerConfig) -> Result<ConnectionInfo, ProducerError> {
    // pgwire-replication and rustls need a process-wide crypto provider; keep one that the
    // application installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    slot::validate_name(&config.slot_name)?;
    if config.publication_name.is_empty() {
        return Err(ProducerError::Config("the publication name is empty".into()));
    }
    if config.brokers.trim().is_empty() {
        return Err(ProducerError::Config("the Kafka broker list is empty".into()));
    }
    if config.status_interval.is_zero() {
        return Err(ProducerError::Config(
            "status_interval is zero; the confirmed position needs a positive reporting interval (default 1 s)".into(),
        ));
    }
    config.formats()?;
    ConnectionInfo::parse(&config.connection_string)
}

/// Connects the control connection, reads the catalog and resolves the routes; on the first
/// attempt also checks that Kafka answers.
pub(crate) async fn preflight(
    config: &ProducerConfig,
    connection: &ConnectionInfo,
    sink: &Arc<Sink>,
    attempt: Attempt,
    create_control_table: bool,
) -> Result<(Client, Routes), Failure> {
    let client = connection.connect().await.map_err(|e| connect_failure(&e, connection, attempt))?;
    // The snapshot control table exists before the catalog is read, so a publication FOR ALL
    // TABLES shows it and the routes skip it.
    let control = match config.snapshot.enabled() || config.backfill.enabled {
        true => {
            let control = initial::control_table(&config.snapshot)?;
            if create_control_table {
                control.ensure(&client).await.map_err(|e| Failure::postgres(e, attempt))?;
            }
            Some(control)
        }
        false => None,
    };
    let catalog = catalog::fetch(&client, &config.publication_name)
        .await
        .map_err(|e| Failure::retry(format!("checking the database: {e}")))?;
    let routes = routes::resolve_skipping(&config.topic_map, &catalog, |schema, table| {
        control.as_ref().is_some_and(|control| control.is(schema, table))
    })
    .map_err(|problems| ProducerError::Schema(routes::report(&problems)))?;
    // A backfill refuses only its own table without a primary key, when it is asked for.
    if config.snapshot.enabled() {
        initial::check_primary_keys(&catalog, &routes)?;
    }
    if attempt == Attempt::First {
        let mut topics = routes.topics();
        let table_topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let extra = config.formats()?.extra_topics(&table_topics);
        topics.extend(extra);
        sink.check_topics(topics, config.brokers.clone()).await?;
    }
    Ok((client, routes))
}

/// The longest the steps before streaming may take together (connect, catalog, slot,
/// replication connection): a server that stops answering mid-way is a lost connection.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// Where a session's records come from: the server's identity, read with `IDENTIFY_SYSTEM` on
/// the replication connection before it streams, so it describes the very server the records
/// come from (the control connection could reach another one after a failover). Any role with
/// the `REPLICATION` attribute may run it; `pg_control_system()` is executable by PUBLIC on
/// PostgreSQL 15 too, but only on the control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) system_id: String,
    pub(crate) timeline: u32,
}

impl Origin {
    /// The origin headers of every record (see [`pgkafka_common::headers`]).
    pub(crate) fn headers(&self, slot: &str) -> OwnedHeaders {
        let timeline = self.timeline.to_string();
        [(headers::SYSTEM_ID, self.system_id.as_str()), (headers::TIMELINE, timeline.as_str()), (headers::SLOT, slot)]
            .into_iter()
            .fold(OwnedHeaders::new_with_capacity(headers::ALL.len()), |all, (key, value)| {
                all.insert(Header { key, value: Some(value) })
            })
    }
}

/// A replication stream, ready to read.
pub(crate) struct Stream {
    pub(crate) origin: Origin,
    pub(crate) routes: Routes,
    pub(crate) replication: ReplicationClient,
    /// Where the slot resumes: everything before it is in Kafka.
    pub(crate) confirmed: Lsn,
    /// An initial snapshot to publish when the stream reaches its point. While there is one,
    /// the replication session has not started: [`start`] starts it.
    pub(crate) snapshot: Option<Prepared>,
}

/// The preflight, then the slot (created if missing) and the replication connection.
pub(crate) async fn open_stream(
    config: &ProducerConfig,
    connection: &ConnectionInfo,
    sink: &Arc<Sink>,
    start: SessionStart,
) -> Result<Stream, Failure> {
    let attempt = start.attempt();
    let (client, routes) = preflight(config, connection, sink, attempt, true).await?;
    let failed = |error: PgWireError| replication_failure(&error, config, connection, attempt);
    let replication_config = |slot: &str, confirmed: Lsn| {
        connection
            .replication_config(slot, &config.publication_name)
            .with_ack_lsn(pgwire_replication::Lsn::from_u64(confirmed.0))
            .with_status_interval(config.status_interval)
            .with_wakeup_interval(Duration::from_secs(5))
            .with_buffer_size(1024)
    };
    let control = if config.snapshot.enabled() { Some(initial::control_table(&config.snapshot)?) } else { None };
    // A slot created here with an exported snapshot, on the session that will stream from it.
    let mut created: Option<(ReplicationClient, initial::Exported)> = None;
    let slot = match slot::inspect(&client, &config.slot_name, attempt).await? {
        Some(slot) => slot,
        None => {
            // Only a first start may create the slot, and only if nothing shows one existed.
            let evidence = match start {
                SessionStart::First | SessionStart::Retrying => sink.records_in(routes.topics()).await?,
                SessionStart::Resumed { .. } => Vec::new(),
            };
            slot_guard::on_missing(&config.slot_name, start, config.slot_missing_policy, &evidence)?;
            match &control {
                None => slot::create(&client, &config.slot_name, config.slot_failover, attempt).await?,
                Some(control) => {
                    // The runs are requested before the slot exists: a slot without them would
                    // stream without its snapshot after a crash in between.
                    initial::request(&client, control, &config.slot_name, &routes, attempt).await?;
                    let failover = config.slot_failover && slot::server_version(&client, attempt).await? >= 170_000;
                    let mut replication =
                        ReplicationClient::connect_gated(replication_config(&config.slot_name, Lsn(0))).await.map_err(failed)?;
                    let command = initial::create_slot_command(&config.slot_name, false, failover);
                    let exported = initial::export(&mut replication, &command, &config.slot_name, attempt).await?;
                    created = Some((replication, exported));
                    slot::inspect(&client, &config.slot_name, attempt).await?.ok_or_else(|| {
                        Failure::postgres(format!("replication slot {} vanished right after it was created", config.slot_name), attempt)
                    })?
                }
            }
        }
    };
    slot.usable(&config.slot_name)?;
    if let (Some(pid), None) = (slot.active_pid, &created) {
        return Err(slot_in_use(config, Some(pid)));
    }
    let (mut replication, snapshot) = match (created, control) {
        (Some((replication, exported)), Some(control)) => {
            // Imported before any other command on the session, which would end the export.
            let readers = initial::import(connection, &exported, config.snapshot.readers, attempt).await?;
            let runs = control.claim(&client, &config.slot_name, RunKind::Initial).await.map_err(|e| Failure::postgres(e, attempt))?;
            replication.update_applied_lsn(pgwire_replication::Lsn::from_u64(exported.at.0));
            let prepared = Prepared::new(exported.at, readers, runs, control, client, config.snapshot.chunk_rows);
            (replication, Some(prepared))
        }
        (_, control) => {
            let snapshot = match control {
                Some(control) => initial::resume(config, connection, &client, control, &slot, attempt).await?,
                None => None,
            };
            let replication =
                ReplicationClient::connect_gated(replication_config(&config.slot_name, slot.confirmed_flush)).await.map_err(failed)?;
            (replication, snapshot)
        }
    };
    let confirmed = slot.confirmed_flush;
    let identity = replication.identify_system().await.map_err(failed)?;
    if snapshot.is_none() {
        replication.start().await.map_err(failed)?;
    }
    let origin = Origin { system_id: identity.system_id, timeline: identity.timeline };
    tracing::info!(
        slot = %config.slot_name,
        publication = %config.publication_name,
        confirmed = %slot.confirmed_flush,
        system_id = %origin.system_id,
        timeline = origin.timeline,
        database = %connection.redacted,
        "streaming from the replication slot"
    );
    Ok(Stream { origin, routes, replication, confirmed, snapshot })
}

/// Starts streaming on a session [`open_stream`] left gated for its snapshot.
pub(crate) async fn start(
    replication: &mut ReplicationClient,
    config: &ProducerConfig,
    connection: &ConnectionInfo,
    attempt: Attempt,
) -> Result<(), Failure> {
    replication.start().await.map_err(|error| replication_failure(&error, config, connection, attempt))
}

fn slot_in_use(config: &ProducerConfig, pid: Option<i32>) -> Failure {
    match config.slot_in_use_policy {
        SlotInUsePolicy::Fail => Failure::Fatal(ProducerError::SlotInUse { slot: config.slot_name.clone(), pid }),
        SlotInUsePolicy::Wait => Failure::retry(format!(
            "replication slot {} is in use by another connection (pid {}); waiting for it to be released",
            config.slot_name,
            pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
        )),
    }
}

fn connect_failure(error: &tokio_postgres::Error, connection: &ConnectionInfo, attempt: Attempt) -> Failure {
    let message =
        format!("cannot connect to PostgreSQL at {}: {}", connection.redacted, connection::with_sources(error));
    let permanent = error.code().is_some_and(|code| {
        let code = code.code();
        // 28: invalid authorization, 3D: invalid catalog name (no such database).
        code.starts_with("28") || code.starts_with("3D")
    });
    if permanent {
        Failure::Fatal(ProducerError::Postgres(message))
    } else {
        Failure::postgres(message, attempt)
    }
}

fn replication_failure(
    error: &PgWireError,
    config: &ProducerConfig,
    connection: &ConnectionInfo,
    attempt: Attempt,
) -> Failure {
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
        PgWireError::Auth(_) | PgWireError::Tls(_) => Failure::Fatal(ProducerError::Postgres(message)),
        PgWireError::Server(_) => Failure::postgres(message, attempt),
        _ => Failure::retry(message),
    }
}
