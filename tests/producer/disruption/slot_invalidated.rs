//! A replication slot the server invalidated (`wal_status = 'lost'`) because it fell more than
//! `max_slot_wal_keep_size` behind while its producer was down: the producer stops with
//! `ProducerError::SlotLost` instead of retrying for ever or making a new slot.
//!
//! `max_slot_wal_keep_size` is server-wide and invalidates every slot that lags: this runs in the
//! serial phase (`producer::disruption`), holds the services exclusively, and restores the setting
//! even when it fails.

use std::time::{Duration, Instant};

use pgkafka::ProducerError;
use pgkafka_tests::disrupt::{exclusive_services, SystemSettings};
use pgkafka_tests::producer_task::RunningProducer;
use pgkafka_tests::wait_for;

use crate::producer::{id_table, Scenario};

async fn wal_status(pg: &tokio_postgres::Client, slot: &str) -> Option<String> {
    pg.query_opt("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .unwrap()
        .and_then(|row| row.get(0))
}

/// A producer streams a published table and confirms its rows, then stops gracefully. While it is
/// down, `max_slot_wal_keep_size` is lowered to 1 MB and the server writes and switches WAL
/// segments and checkpoints until the slot's `wal_status` is `lost`. Started again, the producer
/// stops within seconds with `ProducerError::SlotLost` naming the slot, the reason and its last
/// confirmed LSN, and leaves the invalidated slot as it is (not dropped, not re-created).
///
/// Checked to fail when the producer does not see `lost` as fatal (`SlotHealth::invalidated`
/// ignoring `wal_status`): it then retries the stream for ever and the test times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_invalidated_while_the_producer_was_down_stops_it_with_slot_lost() {
    pgkafka_tests::init_tracing();
    let _exclusive = exclusive_services().await;
    let started = Instant::now();
    let (t, table) = id_table("p_slotinv", 1);
    let sc = Scenario::unlocked("p_slotinv", vec![table]).await;
    let producer = RunningProducer::start(sc.builder().status_interval(Duration::from_millis(200)).build(), &sc.slot).await;
    for id in 1..=5 {
        sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'before')")).await.unwrap();
    }
    let topic = sc.topics[0].clone();
    wait_for("the rows written before the invalidation", Duration::from_secs(30), || {
        let topic = topic.clone();
        async move { (pgkafka_tests::read_topic(&topic).await.len() >= 5).then_some(()) }
    })
    .await;
    producer.stop().await.expect("a graceful stop");

    {
        let _tiny = SystemSettings::set(&sc.pg, &[("max_slot_wal_keep_size", "1MB")]).await;
        let mut rounds = 0;
        while wal_status(&sc.pg, &sc.slot).await.as_deref() != Some("lost") {
            rounds += 1;
            assert!(rounds <= 20, "the slot is still not lost after {rounds} rounds of WAL switches and checkpoints");
            for i in 0..4 {
                sc.pg
                    .batch_execute(&format!(
                        "INSERT INTO {t} VALUES ({id}, repeat('x', 1000)); SELECT pg_switch_wal()",
                        id = 1_000 + rounds * 10 + i
                    ))
                    .await
                    .unwrap();
            }
            sc.pg.batch_execute("CHECKPOINT").await.unwrap();
        }
        println!("slot {} lost after {rounds} rounds, {:?}", sc.slot, started.elapsed());
    }

    let mut restarted = RunningProducer::spawn(sc.builder().reconnect_backoff_max(Duration::from_millis(500)).build());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !restarted.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = wal_status(&sc.pg, &sc.slot).await;
    assert!(
        restarted.is_finished(),
        "the producer still runs 20 s after starting on an invalidated slot (wal_status now {status:?})"
    );
    let error = restarted.join(Duration::from_secs(5)).await.expect_err("the producer returned Ok on a lost slot");
    println!("producer on the invalidated slot: {error}");
    assert_eq!(status.as_deref(), Some("lost"), "the invalidated slot was dropped or re-created");
    assert!(matches!(error, ProducerError::SlotLost { last_confirmed: Some(_), .. }), "{error:?}");
    let message = error.to_string();
    for part in [sc.slot.as_str(), "lost", "pg_drop_replication_slot"] {
        assert!(message.contains(part), "the error does not name {part:?}: {message}");
    }
    sc.cleanup().await;
    println!("done in {:?}", started.elapsed());
}
