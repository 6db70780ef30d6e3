//! The main job in one command (`scripts/demo.sh`): a producer streams an `inventory` table from
//! PostgreSQL to Kafka, and a typed consumer receives each change as an `Inventory` value.
//!
//! Guarantee shown: every change arrives, in commit order within its partition (all changes of
//! one organization share a partition), with the commit LSN and position in its transaction.
//!
//! It creates its table, publication, slot and topic, applies a scripted series of inserts,
//! updates and deletes in a few transactions, prints each change as the consumer gets it, then
//! stops the producer and consumer gracefully and drops what it created. It can run again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgkafka::async_trait::async_trait;
use pgkafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use pgkafka::rdkafka::client::DefaultClientContext;
use pgkafka::rdkafka::ClientConfig;
use pgkafka::typed::{Change, Router, TableHandler, TypedOp};
use pgkafka::{Consumer, ConsumerError, Producer, ReplicatedTable};

/// One row of `pgkafka_demo_inventory`, decoded from PostgreSQL's text output by the derive.
#[derive(ReplicatedTable)]
#[replicated(table = "pgkafka_demo_inventory", topic = "pgkafka_demo_inventory", partition_key = [organization_id])]
struct Inventory {
    id: i64,
    organization_id: i32,
    sku: String,
    quantity: i32,
    note: Option<String>,
}

fn describe(row: &Inventory) -> String {
    format!(
        "id={} organization={} sku={:?} quantity={} note={:?}",
        row.id, row.organization_id, row.sku, row.quantity, row.note
    )
}

/// Prints every change it receives.
struct Printer {
    seen: Arc<AtomicUsize>,
}

#[async_trait]
impl TableHandler<Inventory> for Printer {
    async fn handle(&self, op: TypedOp<Inventory>) -> Result<(), ConsumerError> {
        let at = pgkafka::consumer::current_message()
            .map(|m| format!("{}/{}@{}", m.topic, m.partition, m.offset))
            .unwrap_or_default();
        let what = match &op.change {
            Change::Insert(row) => format!("INSERT {}", describe(row)),
            Change::Update { old, new } => format!("UPDATE {} (quantity was {})", describe(new), old.quantity),
            Change::Delete(row) => format!("DELETE {}", describe(row)),
        };
        println!("  lsn {} seq {}  {at:<28} {what}", op.lsn, op.seq_id);
        self.seen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

const SLOT: &str = "pgkafka_demo";
const PUBLICATION: &str = "pgkafka_demo";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let database = std::env::var("PGKAFKA_TEST_DATABASE_URL")?;
    let brokers = std::env::var("PGKAFKA_TEST_BROKERS")?;
    let (db, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);

    println!("setting up table, publication and topic");
    reset(&db, &brokers).await?;

    // The producer: its topic map comes from the derived type.
    let producer = Producer::builder(database.clone(), brokers.clone(), SLOT, PUBLICATION, pgkafka::topic_map![Inventory])
        .kafka_option("linger.ms", "1")
        .build();
    let stop_producer = producer.shutdown_handle();
    let producer_task = tokio::spawn(async move { producer.start().await });

    // The typed consumer: a router sends `pgkafka_demo_inventory` ops to the printer.
    let seen = Arc::new(AtomicUsize::new(0));
    let router = Router::new().route::<Inventory>(Printer { seen: Arc::clone(&seen) });
    let group = format!("pgkafka_demo_{}", std::process::id());
    let consumer = Consumer::new(group, router.topics(), brokers.clone(), router)
        .kafka_option("session.timeout.ms", "6000")
        .kafka_option("heartbeat.interval.ms", "500")
        .kafka_option("auto.offset.reset", "earliest");
    let stop_consumer = consumer.shutdown_handle();
    let consumer_task = tokio::spawn(consumer.start_basic());

    println!("applying changes in four transactions; the consumer prints them as they arrive:");
    // One simple-query message per transaction: several statements in one message would share
    // an implicit transaction.
    let transactions = [
        "BEGIN;
         INSERT INTO pgkafka_demo_inventory VALUES (1, 10, 'apple', 50, NULL), (2, 10, 'pear', 20, 'fragile'), (3, 20, 'fig', 5, NULL);
         COMMIT;",
        "BEGIN;
         UPDATE pgkafka_demo_inventory SET quantity = quantity - 8 WHERE id = 1;
         DELETE FROM pgkafka_demo_inventory WHERE id = 3;
         COMMIT;",
        "INSERT INTO pgkafka_demo_inventory VALUES (4, 20, 'plum, \"red\"', 12, 'quoted {text}');",
        "UPDATE pgkafka_demo_inventory SET quantity = 0, note = NULL WHERE organization_id = 10;",
    ];
    for sql in transactions {
        db.batch_execute(sql).await?;
    }
    let expected = 8;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::SeqCst) < expected {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("only {} of {expected} changes arrived within 60 s", seen.load(Ordering::SeqCst)).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("all {expected} changes arrived; stopping the producer and consumer");
    stop_consumer.shutdown();
    stop_producer.shutdown();
    consumer_task.await??;
    producer_task.await??;
    db.batch_execute(&format!(
        "SELECT pg_drop_replication_slot('{SLOT}'); DROP PUBLICATION {PUBLICATION}; DROP TABLE pgkafka_demo_inventory;"
    ))
    .await?;
    println!("done");
    Ok(())
}

/// Drops what an earlier run left and creates the table, publication and topic afresh.
async fn reset(db: &tokio_postgres::Client, brokers: &str) -> Result<(), Box<dyn std::error::Error>> {
    db.batch_execute(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{SLOT}' AND NOT active;
         DROP PUBLICATION IF EXISTS {PUBLICATION};
         DROP TABLE IF EXISTS pgkafka_demo_inventory;
         CREATE TABLE pgkafka_demo_inventory (
             id bigint PRIMARY KEY, organization_id int NOT NULL, sku text NOT NULL, quantity int NOT NULL, note text);
         ALTER TABLE pgkafka_demo_inventory REPLICA IDENTITY FULL;
         CREATE PUBLICATION {PUBLICATION} FOR TABLE pgkafka_demo_inventory;"
    ))
    .await?;
    // The slot marks where streaming starts: create it now, so the changes the demo makes next are
    // streamed even if they happen before the producer has connected.
    db.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&SLOT]).await?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    // A topic from an earlier run still holds its records: start from an empty one.
    let _ = admin.delete_topics(&[Inventory::TOPIC], &options).await;
    for attempt in 0..50 {
        let created = admin
            .create_topics(&[NewTopic::new(Inventory::TOPIC, 3, TopicReplication::Fixed(1))], &options)
            .await?;
        match created.into_iter().next() {
            Some(Ok(_)) | None => return Ok(()),
            Some(Err(_)) if attempt < 49 => tokio::time::sleep(Duration::from_millis(200)).await,
            Some(Err((topic, code))) => return Err(format!("cannot create topic {topic}: {code}").into()),
        }
    }
    Ok(())
}
