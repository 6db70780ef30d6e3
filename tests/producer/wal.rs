//! A producer idle on its publication must not hold WAL back while other tables are written.

use std::time::Duration;

use pgkafka_tests::slots::slot_confirmed;
use pgkafka_tests::{unique_name, wait_for};

use super::{Scenario, Table};

/// About 80 MB of WAL for a table outside the publication: the slot's confirmed position follows
/// the WAL end, and later published changes still arrive exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_retention_stays_bounded_while_only_unpublished_tables_are_written() {
    pgkafka_tests::init_tracing();
    let t = unique_name("p_wal_pub");
    let mut table = Table::new(&t, format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)"), &[], 1);
    table.key_columns = vec!["id".into()];
    let mut sc = Scenario::new("p_wal", vec![table]).await;
    let other = unique_name("p_wal_unpub");
    sc.pg.batch_execute(&format!("CREATE TABLE {other} (id bigint, payload text)")).await.unwrap();
    sc.drop_at_cleanup(format!("TABLE {other}"));
    let producer = sc.start().await;
    sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'published before')")).await.unwrap();
    sc.delivered_once(Duration::from_secs(90)).await;

    // About 80 MB of WAL for a table outside the publication, in several transactions.
    let start: String = sc.pg.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    for batch in 0..8 {
        sc.pg
            .batch_execute(&format!(
                "INSERT INTO {other} SELECT g, repeat(md5(g::text), 30) FROM generate_series({}, {}) g",
                batch * 10_000,
                batch * 10_000 + 9_999
            ))
            .await
            .unwrap();
    }
    let written: i64 = sc
        .pg
        .query_one(&format!("SELECT (pg_current_wal_lsn() - '{start}'::pg_lsn)::bigint"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(written > 60 << 20, "the test wrote only {written} bytes of WAL; it needs more to mean anything");

    let slot = sc.slot.clone();
    let lag = wait_for("the slot's confirmed position to follow the WAL end", Duration::from_secs(120), || {
        let pg = &sc.pg;
        let slot = slot.clone();
        async move {
            let lag: i64 = pg
                .query_one(
                    "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .ok()?
                .get(0);
            (lag < 8 << 20).then_some(lag)
        }
    })
    .await;
    println!("wrote {written} bytes of unpublished WAL; the slot lags {lag} bytes behind");
    assert!(!producer.is_finished());

    // Following the WAL end skipped nothing: later published changes still arrive, exactly once.
    sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES (2, 'published after'); DELETE FROM {t} WHERE id = 1")).await.unwrap();
    let (txs, _) = sc.delivered_once(Duration::from_secs(90)).await;
    assert_eq!(txs.len(), 2);
    producer.stop().await.unwrap();
    let confirmed = slot_confirmed(&sc.pg, &sc.slot).await.unwrap();
    assert!(confirmed >= txs[1].end_lsn);
    sc.cleanup().await;
}
