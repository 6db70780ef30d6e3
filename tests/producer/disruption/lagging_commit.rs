//! A commit whose visibility lags its WAL record, as with a synchronous standby that has not
//! answered: the slot streams the change while every snapshot still shows the row's old state.
//! A backfill started then must not publish that old state after the streamed new one.
//!
//! `synchronous_standby_names` is server-wide: this runs in the serial phase
//! (`producer::disruption`), holds the services exclusively, makes every other session commit
//! with `synchronous_commit = local`, and restores both settings even when it fails.

use std::time::Duration;

use pgkafka::Op;
use pgkafka_tests::disrupt::{exclusive_services, SystemSettings};
use pgkafka_tests::producer_task::RunningProducer;
use pgkafka_tests::{pg_client, wait_for};

use crate::producer::backfill::{fold, table_rows, versioned_table};
use crate::producer::Scenario;

/// An update of row 7 commits while its session waits for a synchronous standby that never
/// answers: the slot streams it (ver 1), but no snapshot sees it yet. A backfill of the table is
/// requested then. Its chunk, read under a snapshot that shows row 7 at ver 0, is read again
/// rather than published after the update; once the wait is cancelled (the commit becomes
/// visible) the backfill finishes, and the topic folds to the table with no row going back in
/// time.
///
/// Checked to fail without the fix (the window not knowing the transactions streamed before it
/// began watching): the chunk, row 7 at ver 0, is published after the streamed update to ver 1,
/// and the test stops at "the backfill published its chunk while a streamed commit was not
/// visible to it".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_does_not_publish_a_row_older_than_a_commit_a_standby_still_holds() {
    pgkafka_tests::init_tracing();
    let _exclusive = exclusive_services().await;
    let (t, table) = versioned_table("p_lagging", 20, 1);
    let sc = Scenario::unlocked("p_lagging", vec![table]).await;
    let running = RunningProducer::start(sc.builder().backfills(true).backfill_chunk_size(100).build(), &sc.slot).await;
    let control = sc.producer();
    let topic = sc.topics[0].clone();

    // A standby that never answers, waited for by the one session that asks to.
    let _standby = SystemSettings::set(
        &sc.pg,
        &[("synchronous_standby_names", "pgkafka_absent_standby"), ("synchronous_commit", "local")],
    )
    .await;
    let holder = pg_client().await;
    holder.batch_execute("SET synchronous_commit = on").await.unwrap();
    let holder_pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let update = format!("UPDATE {t} SET ver = 1, v = 'updated' WHERE id = 7");
    let committing = tokio::spawn(async move { holder.batch_execute(&update).await });

    // The slot streams the update while its session still waits for the standby.
    wait_for("the update to be streamed", Duration::from_secs(30), || {
        let topic = topic.clone();
        async move {
            let records = pgkafka_tests::read_topic(&topic).await;
            records.iter().any(|r| matches!(r.op().op, Op::Update(_))).then_some(())
        }
    })
    .await;
    let ver: i32 = sc.pg.query_one(&format!("SELECT ver FROM {t} WHERE id = 7"), &[]).await.unwrap().get(0);
    assert_eq!(ver, 0, "the update became visible before the test could request the backfill");
    assert!(!committing.is_finished(), "the update's commit did not wait for the standby");

    let ids = control.request_backfill(std::slice::from_ref(&t)).await.unwrap();
    // The backfill reads its chunk several times while the commit is held.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let early = pgkafka_tests::read_topic(&topic).await;
    let backfilled = early.iter().filter(|r| matches!(r.op().op, Op::Insert(_))).count();
    assert_eq!(backfilled, 0, "the backfill published its chunk while a streamed commit was not visible to it");

    sc.pg.query_one("SELECT pg_cancel_backend($1)", &[&holder_pid]).await.unwrap();
    // The commit is already in the WAL: cancelling the wait only makes it visible (with a warning).
    committing.await.unwrap().unwrap();
    wait_for("the backfill to finish", Duration::from_secs(60), || async {
        control.backfill_status().await.unwrap().iter().any(|r| ids.contains(&r.id) && r.state == "done").then_some(())
    })
    .await;

    let records = pgkafka_tests::read_topic(&topic).await;
    let mine: Vec<_> = records.iter().collect();
    let folded = fold(&mine, &["id"], &t);
    assert_eq!(folded, table_rows(&sc.pg, &t, &["id"]).await, "the topic does not fold to the table");
    running.stop().await.unwrap();
    sc.cleanup().await;
}
