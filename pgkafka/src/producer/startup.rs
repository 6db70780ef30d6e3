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
) -> Result<(Client, Routes), Failure> {
    let client = connection.connect().await.map_err(|e| connect_failure(&e, connection, attempt))?;
    let catalog = catalog::fetch(&client, &config.publication_name)
        .await
        .map_err(|e| Failure::retry(format!("checking the database: {e}")))?;
    let routes = routes::resolve(&config.topic_map, &catalog)
        .map_err(|problems| ProducerError::Schema(routes::report(&problems)))?;
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
}

/// The preflight, then the slot (created if missing) and the replication connection.
pub(crate) async fn open_stream(
    config: &ProducerConfig,
    connection: &ConnectionInfo,
    sink: &Arc<Sink>,
    start: SessionStart,
) -> Result<Stream, Failure> {
    let attempt = start.attempt();
    let (client, routes) = preflight(config, connection, sink, attempt).await?;
    let slot = match slot::inspect(&client, &config.slot_name, attempt).await? {
        Some(slot) => slot,
        None => {
            // Only a first start may create the slot, and only if nothing shows one existed.
            let evidence = match start {
                SessionStart::First | SessionStart::Retrying => sink.records_in(routes.topics()).await?,
                SessionStart::Resumed { .. } => Vec::new(),
            };
            slot_guard::on_missing(&config.slot_name, start, config.slot_missing_policy, &evidence)?;
            slot::create(&client, &config.slot_name, config.slot_failover, attempt).await?
        }
    };
    slot.usable(&config.slot_name)?;
    if let Some(pid) = slot.active_pid {
        return Err(slot_in_use(config, Some(pid)));
    }
    let replication_config = connection
        .replication_config(&config.slot_name, &config.publication_name)
        .with_ack_lsn(pgwire_replication::Lsn::from_u64(slot.confirmed_flush.0))
        .with_status_interval(config.status_interval)
        .with_wakeup_interval(Duration::from_secs(5))
        .with_buffer_size(1024);
    let failed = |error: PgWireError| replication_failure(&error, config, connection, attempt);
    let mut replication = ReplicationClient::connect_gated(replication_config).await.map_err(failed)?;
    let identity = replication.identify_system().await.map_err(failed)?;
    replication.start().await.map_err(failed)?;
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
    Ok(Stream { origin, routes, replication, confirmed: slot.confirmed_flush })
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
