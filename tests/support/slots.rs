//! Replication slots seen from SQL: who streams from one, how far it is confirmed, dropping it.

use std::time::Duration;

use crate::wait_for;

/// The pid of the walsender streaming from `slot`, if any. A backend creating the slot holds it
/// too (while it waits for running transactions to find a consistent point), but is not
/// streaming: only a walsender counts.
pub async fn slot_active_pid(pg: &tokio_postgres::Client, slot: &str) -> Option<i32> {
    pg.query_opt(
        "SELECT r.active_pid FROM pg_replication_slots r JOIN pg_stat_activity a ON a.pid = r.active_pid \
         WHERE r.slot_name = $1 AND r.active AND a.backend_type = 'walsender'",
        &[&slot],
    )
        .await
        .ok()
        .flatten()
        .and_then(|row| row.get::<_, Option<i32>>(0))
}

/// The slot's `confirmed_flush_lsn`, or `None` if it does not exist.
pub async fn slot_confirmed(pg: &tokio_postgres::Client, slot: &str) -> Option<u64> {
    let row = pg
        .query_opt(
            "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap_or_else(|e| panic!("cannot read slot {slot}: {e}"))?;
    row.get::<_, Option<String>>(0).map(|s| s.parse().expect("lsn"))
}

/// Waits (up to 60 s) until `slot` is confirmed past everything written so far: every change
/// committed before the call is in Kafka.
pub async fn wait_confirmed_past_now(pg: &tokio_postgres::Client, slot: &str) {
    let now: String = pg.query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::text", &[]).await.unwrap().get(0);
    let now: u64 = now.parse().expect("lsn");
    wait_for("the producer to confirm everything written", Duration::from_secs(60), || async {
        slot_confirmed(pg, slot).await.filter(|c| *c >= now).map(|_| ())
    })
    .await;
}

/// Drops `slot` once no connection uses it (waits up to 60 s); a missing slot is fine.
pub async fn drop_slot(pg: &tokio_postgres::Client, slot: &str) {
    wait_for(&format!("slot {slot} to be released and dropped"), Duration::from_secs(60), || async move {
        let exists = pg
            .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .ok()?
            .is_some();
        if !exists {
            return Some(());
        }
        pg.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.ok().map(|_| ())
    })
    .await;
}
