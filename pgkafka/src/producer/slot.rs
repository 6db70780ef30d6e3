//! The replication slot on the control connection: its name's rules, its state, and creating it.

use pgkafka_common::Lsn;
use tokio_postgres::Client;

use super::error::{Attempt, Failure};
use super::slot_guard::{self, SlotHealth};
use super::ProducerError;

/// Replication slot names PostgreSQL accepts: lower-case letters, digits and underscores.
pub(crate) fn validate_name(slot: &str) -> Result<(), ProducerError> {
    let valid = !slot.is_empty()
        && slot.len() <= 63
        && slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ProducerError::Config(format!(
            "invalid replication slot name {slot:?}: PostgreSQL allows 1 to 63 lower-case letters, digits and underscores"
        )))
    }
}

/// The slot as `pg_replication_slots` shows it.
#[derive(Debug)]
pub(crate) struct SlotState {
    pub(crate) confirmed_flush: Lsn,
    pub(crate) active_pid: Option<i32>,
    pub(crate) health: SlotHealth,
}

impl SlotState {
    /// An error if the slot was invalidated and can no longer stream.
    pub(crate) fn usable(&self, slot: &str) -> Result<(), ProducerError> {
        match self.health.invalidated() {
            Some(reason) => Err(slot_guard::invalidated(slot, self.confirmed_flush, reason)),
            None => Ok(()),
        }
    }
}

/// Creates the slot (pgoutput; a failover slot on PostgreSQL 17+ when `failover`). Callers ask
/// [`slot_guard::on_missing`] first: a new slot skips everything before the current WAL end.
pub(crate) async fn create(client: &Client, slot: &str, failover: bool, attempt: Attempt) -> Result<SlotState, Failure> {
    let version = server_version(client, attempt).await?;
    let created = client.query_opt(slot_guard::create_slot_sql(version, failover), &[&slot]).await;
    match created {
        Ok(_) => tracing::info!(slot, failover = failover && version >= 170_000, "created logical replication slot (pgoutput)"),
        // Another producer created it first: use it.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
        Err(e) => {
            return Err(Failure::postgres(
                format!(
                    "cannot create logical replication slot {slot}: {e} (the role needs the REPLICATION attribute, \
                     and max_replication_slots must leave room)"
                ),
                attempt,
            ))
        }
    }
    inspect(client, slot, attempt).await?.ok_or_else(|| {
        Failure::postgres(format!("replication slot {slot} vanished right after it was created"), attempt)
    })
}

/// `server_version_num`, e.g. 150004.
pub(crate) async fn server_version(client: &Client, attempt: Attempt) -> Result<i32, Failure> {
    Ok(client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| Failure::postgres(format!("reading the server version: {e}"), attempt))?
        .get(0))
}

/// Drops the slot, waiting up to 10 s for the session that streamed from it to release it.
pub(crate) async fn drop_slot(client: &Client, slot: &str) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match client.execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&slot]).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("dropping replication slot {slot}: {e}")),
        }
    }
}

/// The slot's state, or `None` if it does not exist; an error if it cannot serve the producer.
pub(crate) async fn inspect(client: &Client, slot: &str, attempt: Attempt) -> Result<Option<SlotState>, Failure> {
    let row = client
        .query_opt(
            // The health columns differ between server versions: read them through to_jsonb, which
            // yields NULL for a column the server does not have.
            "SELECT s.plugin::text, s.slot_type, s.database::text, current_database()::text, \
             s.active_pid, COALESCE(s.confirmed_flush_lsn, '0/0')::text, \
             to_jsonb(s) ->> 'wal_status', to_jsonb(s) ->> 'invalidation_reason', \
             (to_jsonb(s) ->> 'conflicting')::boolean \
             FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Failure::postgres(format!("inspecting replication slot {slot}: {e}"), attempt))?;
    let Some(row) = row else { return Ok(None) };
    let plugin: Option<String> = row.get(0);
    let slot_type: String = row.get(1);
    let database: Option<String> = row.get(2);
    let current: String = row.get(3);
    if slot_type != "logical" || plugin.as_deref() != Some("pgoutput") {
        return Err(Failure::Fatal(ProducerError::Config(format!(
            "replication slot {slot} exists but is a {slot_type} slot with plugin {}; pgkafka needs a logical \
             pgoutput slot. Choose another slot name, or drop it with SELECT pg_drop_replication_slot('{slot}')",
            plugin.as_deref().unwrap_or("none")
        ))));
    }
    if database.as_deref() != Some(current.as_str()) {
        return Err(Failure::Fatal(ProducerError::Config(format!(
            "replication slot {slot} belongs to database {}, but the connection string names database {current}",
            database.as_deref().unwrap_or("?")
        ))));
    }
    let confirmed: String = row.get(5);
    let health = SlotHealth { wal_status: row.get(6), invalidation_reason: row.get(7), conflicting: row.get(8) };
    Ok(Some(SlotState { confirmed_flush: confirmed.parse().unwrap_or_default(), active_pid: row.get(4), health }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_postgres_rules() {
        assert!(validate_name("slot_1").is_ok());
        for bad in ["", "Slot", "slot-1", "slot;drop", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
