//! The replication slot lost: dropped under a running producer (as a DBA or a failover to a server
//! without it does), or missing at a restart while the topics hold what it once streamed. The
//! producer must never create a fresh slot silently: that skips every change in between.

use std::time::Duration;

use pgkafka::{Lsn, ProducerError, SlotMissingPolicy};
use pgkafka_tests::producer_task::RunningProducer;
use pgkafka_tests::slots::slot_confirmed;
use pgkafka_tests::wait_for;

use super::{id_table, Scenario};

const DELIVERY: Duration = Duration::from_secs(90);

async fn slot_exists(pg: &tokio_postgres::Client, slot: &str) -> bool {
    pg.query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap().is_some()
}

/// Ends the connection streaming from `slot` and drops the slot before the producer reconnects.
async fn drop_slot_under(pg: &tokio_postgres::Client, slot: &str) {
    wait_for(&format!("slot {slot} to be dropped under its producer"), Duration::from_secs(30), || async move {
        let _ = pg
            .execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active", &[&slot])
            .await;
        pg.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.ok().map(|_| ())
    })
    .await;
}

/// Every LSN (`X/Y`, hexadecimal) a message mentions.
fn lsns_in(message: &str) -> Vec<Lsn> {
    message
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '/'))
        .filter_map(|word| word.parse::<Lsn>().ok().filter(|_| word.contains('/')))
        .collect()
}

/// Waits for the producer to stop by itself; if it still runs, says whether it made a new slot.
async fn stopped(producer: &mut RunningProducer, sc: &Scenario, what: &str) -> ProducerError {
    let finished = wait_for_finish(producer, Duration::from_secs(30)).await;
    if !finished {
        let recreated = slot_exists(&sc.pg, &sc.slot).await;
        panic!("{what}: the producer is still running after 30 s (slot {} re-created: {recreated})", sc.slot);
    }
    producer.join(Duration::from_secs(5)).await.expect_err("the producer returned Ok after losing its slot")
}

async fn wait_for_finish(producer: &RunningProducer, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if producer.is_finished() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    producer.is_finished()
}

/// The slot dropped while the producer streams (its walsender terminated, then
/// `pg_drop_replication_slot`), then 100 rows written: the producer stops with a fatal error that
/// names the slot and the last position it confirmed, and creates no new slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_under_a_running_producer_stops_it_naming_the_last_confirmed_lsn() {
    pgkafka_tests::init_tracing();
    let (t, table) = id_table("p_slotdrop", 1);
    let mut sc = Scenario::new("p_slotdrop", vec![table]).await;
    let mut producer = sc.start().await;
    for id in 1..=5 {
        sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'kept')")).await.unwrap();
    }
    let (txs, _) = sc.delivered_once(DELIVERY).await;
    let end = txs.last().unwrap().end_lsn;
    let pg = &sc.pg;
    let slot = &sc.slot;
    let confirmed = wait_for("the delivered rows to be confirmed", Duration::from_secs(30), || async move {
        slot_confirmed(pg, slot).await.filter(|c| *c >= end)
    })
    .await;

    drop_slot_under(&sc.pg, &sc.slot).await;
    for batch in 0..10 {
        let first = 100 + batch * 10;
        sc.pg
            .batch_execute(&format!("INSERT INTO {t} SELECT g, 'lost' FROM generate_series({first}, {}) g", first + 9))
            .await
            .unwrap();
    }
    let error = stopped(&mut producer, &sc, "slot dropped under it").await;
    println!("slot dropped under the producer: {error}");
    assert!(!slot_exists(&sc.pg, &sc.slot).await, "the producer re-created the dropped slot");
    assert!(matches!(error, ProducerError::SlotLost { last_confirmed: Some(_), .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&sc.slot), "the error does not name the slot: {message}");
    assert!(
        lsns_in(&message).iter().any(|lsn| lsn.0 >= confirmed),
        "the error does not name the last confirmed LSN (at least {}): {message}",
        Lsn(confirmed)
    );
    sc.cleanup().await;
}

/// A producer stopped gracefully, its slot dropped while it was down, then started again: its
/// topic holds records it wrote, so the missing slot means lost changes, and the start is refused
/// (naming the slot and the topic) without creating a slot. `SlotMissingPolicy::Create` starts
/// anew: a new slot, and changes from then on are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_the_slot_while_the_topics_hold_its_records_is_refused() {
    pgkafka_tests::init_tracing();
    let (t, table) = id_table("p_slotgone", 1);
    let mut sc = Scenario::new("p_slotgone", vec![table]).await;
    let producer = sc.start().await;
    for id in 1..=5 {
        sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'first run')")).await.unwrap();
    }
    sc.delivered_once(DELIVERY).await;
    producer.stop().await.expect("a graceful stop");
    pgkafka_tests::slots::drop_slot(&sc.pg, &sc.slot).await;
    sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES (6, 'while no slot existed')")).await.unwrap();

    let mut restarted = RunningProducer::spawn(sc.producer());
    let error = stopped(&mut restarted, &sc, "restart without its slot").await;
    println!("restart without the slot: {error}");
    assert!(!slot_exists(&sc.pg, &sc.slot).await, "the refused start created a slot");
    assert!(matches!(error, ProducerError::SlotLost { .. }), "{error:?}");
    let message = error.to_string();
    for part in [&sc.slot, &sc.topics[0], &"SlotMissingPolicy::Create".to_owned()] {
        assert!(message.contains(part.as_str()), "the error does not name {part}: {message}");
    }
    let check = sc.producer().check().await.expect_err("check() sees the same as start()");
    assert!(matches!(check, ProducerError::SlotLost { .. }), "{check:?}");

    let anew = sc.builder().slot_missing_policy(SlotMissingPolicy::Create).build();
    let started = RunningProducer::start(anew, &sc.slot).await;
    sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES (7, 'after starting anew')")).await.unwrap();
    let topic = &sc.topics[0];
    wait_for("the row written after starting anew", DELIVERY, || async move {
        let records = pgkafka_tests::read_topic(topic).await;
        records.iter().any(|r| r.op().op.key_row()[0].as_deref() == Some("7")).then_some(())
    })
    .await;
    let records = pgkafka_tests::read_topic(&sc.topics[0]).await;
    assert!(
        records.iter().all(|r| r.op().op.key_row()[0].as_deref() != Some("6")),
        "a change made while no slot existed cannot have been streamed"
    );
    started.stop().await.expect("a graceful stop");
    sc.cleanup().await;
}
