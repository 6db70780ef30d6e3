//! Schema changes made while the producer is down and a backlog waits in the slot: the replayed
//! changes carry the table as it was when they were made. The producer must deliver them to the
//! topic the table had, or stop with an error that says how to go on, never stop on them again
//! and again until someone advances the slot by hand.

use std::collections::HashMap;
use std::time::Duration;

use pgkafka::{Lsn, Producer, ReplicationOp, TopicInfo};
use pgkafka_tests::delivery::{verify_delivery, Route};
use pgkafka_tests::producer_task::RunningProducer;
use pgkafka_tests::slots::slot_confirmed;
use pgkafka_tests::topics::wait_delivered;
use pgkafka_tests::reference::all_ops;
use pgkafka_tests::{env, wait_for};

use super::{id_table, Scenario};

const DELIVERY: Duration = Duration::from_secs(90);

fn producer_with(sc: &Scenario, topic_map: HashMap<String, TopicInfo>) -> Producer {
    Producer::builder(env().database_url.clone(), env().brokers.clone(), sc.slot.clone(), sc.publication.clone(), topic_map)
        .build()
}

/// Waits until the slot is confirmed past every change the reference slot holds, or panics with
/// the producer's error if it stops first.
async fn confirmed_all_or_panic(sc: &Scenario, producer: &mut RunningProducer) {
    let end = sc.expected().await.last().unwrap().end_lsn;
    let (pg, slot) = (&sc.pg, &sc.slot);
    let running = &*producer;
    let done = wait_for("the producer to confirm the backlog", DELIVERY, || async move {
        if running.is_finished() {
            return Some(false);
        }
        slot_confirmed(pg, slot).await.filter(|c| *c >= end).map(|_| true)
    })
    .await;
    if !done {
        let result = producer.join(Duration::from_secs(5)).await;
        panic!("the producer stopped instead of delivering the backlog: {result:?}");
    }
}

/// Producer down; 20 rows written; the table renamed; 5 more rows. Restarted with the old topic map
/// it stops at once naming the renamed table. With the map updated to the new name (same topic) it
/// delivers the backlog, made under the old name, and what followed, to the table's topic, in order,
/// all under the table's current name (the topic map's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_renamed_while_the_producer_is_down_still_delivers_its_backlog() {
    pgkafka_tests::init_tracing();
    let (t, table) = id_table("p_rename", 1);
    let mut sc = Scenario::new("p_rename", vec![table]).await;
    let producer = sc.start().await;
    sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'delivered')")).await.unwrap();
    sc.delivered_once(DELIVERY).await;
    producer.stop().await.expect("a graceful stop");

    for id in 2..=21 {
        sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'backlog')")).await.unwrap();
    }
    let renamed = format!("{t}_r");
    sc.pg.batch_execute(&format!("ALTER TABLE {t} RENAME TO {renamed}")).await.unwrap();
    sc.drop_at_cleanup(format!("TABLE IF EXISTS {renamed}"));
    for id in 22..=26 {
        sc.pg.batch_execute(&format!("INSERT INTO {renamed} VALUES ({id}, 'renamed')")).await.unwrap();
    }

    let mut old_map = RunningProducer::spawn(sc.producer());
    let error = old_map.join(Duration::from_secs(60)).await.expect_err("the topic map names a table that is gone");
    assert!(error.to_string().contains(&renamed), "the error does not name the renamed table: {error}");

    let info = sc.topic_map[&t].clone();
    let new_map: HashMap<String, TopicInfo> = [(renamed.clone(), info)].into_iter().collect();
    let mut producer = RunningProducer::spawn(producer_with(&sc, new_map));
    confirmed_all_or_panic(&sc, &mut producer).await;
    // The reference names the backlog's changes as the table was called when they were made.
    let txs = sc.expected().await;
    let first_run = txs[0].commit_lsn;
    let ops: Vec<ReplicationOp> = all_ops(&txs)
        .into_iter()
        .map(|op| if op.lsn > first_run { ReplicationOp { table_name: renamed.clone(), ..op } } else { op })
        .collect();
    let records = wait_delivered(&sc.topics, &ops, DELIVERY).await;
    let route = Route { topic: sc.topics[0].clone(), key_columns: vec!["id".into()] };
    let routes: HashMap<String, Route> = [(t.clone(), route.clone()), (renamed.clone(), route)].into_iter().collect();
    let delivery = verify_delivery(&records, &ops, &routes);
    assert_eq!(delivery.distinct, 26);
    producer.stop().await.expect("a graceful stop");
    sc.cleanup().await;
}

/// Producer down; rows written to tables t and u; t dropped from the publication. Restarted with
/// the topic map of the new publication (no t), the producer stops on t's backlog with an error
/// naming t, the LSN and the way out (add t back to the publication and the map). Taking it, the
/// backlog of both tables is delivered in order without anyone touching the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_from_the_publication_with_a_backlog_stops_clearly_and_recovers() {
    pgkafka_tests::init_tracing();
    let (t, table_t) = id_table("p_unpub_t", 1);
    let (u, table_u) = id_table("p_unpub_u", 1);
    let mut sc = Scenario::new("p_unpub", vec![table_t, table_u]).await;
    let producer = sc.start().await;
    sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'delivered'); INSERT INTO {u} VALUES (1, 'delivered')")).await.unwrap();
    sc.delivered_once(DELIVERY).await;
    producer.stop().await.expect("a graceful stop");

    for id in 2..=11 {
        sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'backlog'); INSERT INTO {u} VALUES ({id}, 'backlog')")).await.unwrap();
    }
    sc.pg.batch_execute(&format!("ALTER PUBLICATION {} DROP TABLE {t}", sc.publication)).await.unwrap();
    for id in 12..=14 {
        sc.pg.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'unpublished'); INSERT INTO {u} VALUES ({id}, 'after')")).await.unwrap();
    }
    let backlog_lsn = sc.expected().await[1].commit_lsn;

    let mut without_t: HashMap<String, TopicInfo> = sc.topic_map.clone();
    without_t.remove(&t);
    for attempt in 0..2 {
        let mut producer = RunningProducer::spawn(producer_with(&sc, without_t.clone()));
        let error = producer.join(Duration::from_secs(60)).await.expect_err("t's backlog has no route");
        let message = error.to_string();
        for part in [t.as_str(), &Lsn(backlog_lsn).to_string(), "ALTER PUBLICATION", "ADD TABLE"] {
            assert!(message.contains(part), "attempt {attempt}: the error does not name {part:?}: {message}");
        }
    }

    sc.pg.batch_execute(&format!("ALTER PUBLICATION {} ADD TABLE {t}", sc.publication)).await.unwrap();
    let mut producer = RunningProducer::spawn(sc.producer());
    confirmed_all_or_panic(&sc, &mut producer).await;
    let (txs, _, delivery) = sc.delivered(DELIVERY).await;
    assert!(txs.len() >= 11, "{} transactions", txs.len());
    assert!(delivery.distinct >= 22, "the backlog of t and u: {} changes", delivery.distinct);
    producer.stop().await.expect("a graceful stop");
    sc.cleanup().await;
}
