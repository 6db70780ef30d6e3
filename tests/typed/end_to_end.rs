//! End to end: PostgreSQL, the real producer, the broker and a typed consumer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::time::Instant;

use pgkafka::typed::{Router, TableHandler};
use pgkafka::{async_trait::async_trait, Consumer, ConsumerError, Producer, ReplicatedTable};
use pgkafka_tests::consumer_task::RunningConsumer;
use pgkafka_tests::producer_task::RunningProducer;
use pgkafka_tests::slots::drop_slot;
use pgkafka_tests::{create_topic, env, kafka_config, pg_client, unique_name, wait_for, Record};

/// A derive names its table at compile time, so runs share this table; each run's rows carry
/// its own `run` value and each run has its own publication, slot and topic.
#[derive(ReplicatedTable, Debug, Clone, PartialEq)]
#[replicated(table = "typed_e2e_inventory", partition_key = [organization_id])]
struct Inventory {
    run: String,
    organization_id: i64,
    sku: String,
    quantity: Option<i32>,
    price: Option<rust_decimal::Decimal>,
    tags: Vec<String>,
}

/// What the handler saw of this run's rows.
#[derive(Clone, Default)]
struct Seen {
    run: String,
    events: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl TableHandler<Inventory> for Seen {
    async fn insert(&self, row: Inventory) -> Result<(), ConsumerError> {
        if row.run == self.run {
            self.events.lock().unwrap().push(format!(
                "insert {} {} {:?} {:?} {:?}",
                row.organization_id,
                row.sku,
                row.quantity,
                row.price.map(|p| p.to_string()),
                row.tags
            ));
        }
        Ok(())
    }
    async fn update(&self, old: Inventory, new: Inventory) -> Result<(), ConsumerError> {
        if new.run == self.run {
            self.events.lock().unwrap().push(format!("update {} {:?} -> {:?}", new.sku, old.quantity, new.quantity));
        }
        Ok(())
    }
    async fn delete(&self, row: Inventory) -> Result<(), ConsumerError> {
        if row.run == self.run {
            self.events.lock().unwrap().push(format!("delete {}", row.sku));
        }
        Ok(())
    }
}

/// Reads `topic` from the beginning until `count` records of `run` arrived. Polls rather than
/// reading to the high watermark: the bundled broker has reported a watermark one short for
/// partitions written by batches, which would end the read early.
async fn records_of_run(topic: &str, run: &str, count: usize, timeout: Duration) -> Vec<Record> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let (topic, run) = (topic.to_owned(), run.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka_config()
            .set("group.id", unique_name("typed_reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        while records.len() < count {
            assert!(Instant::now() < deadline, "only {} of {count} records of {run} in {topic} after {timeout:?}", records.len());
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let record = Record::from_message(&message.unwrap());
                let op = record.op();
                if op.value(op.op.key_row(), "run") == Some(Some(run.as_str())) {
                    records.push(record);
                }
            }
        }
        records
    })
    .await
    .unwrap()
}

async fn create_shared_table(pg: &tokio_postgres::Client) {
    // Concurrent runs may race to create it; one wins, the others see it exist.
    for _ in 0..5 {
        let created = pg
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS typed_e2e_inventory (
                    run text, organization_id bigint NOT NULL, sku text, quantity int, price numeric,
                    tags text[] NOT NULL DEFAULT '{}', PRIMARY KEY (run, sku));
                 ALTER TABLE typed_e2e_inventory REPLICA IDENTITY FULL;
                 ALTER TABLE typed_e2e_inventory ALTER COLUMN organization_id SET NOT NULL;",
            )
            .await;
        if created.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("cannot create typed_e2e_inventory");
}

/// The real producer streams a derived type's table (topic map from the derive) to a typed router
/// under the basic consumer: keys are the partition-key values, and each organization's changes
/// arrive in commit order.
#[tokio::test]
async fn the_real_producer_feeds_a_typed_consumer() {
    pgkafka_tests::init_tracing();
    let pg = pg_client().await;
    create_shared_table(&pg).await;
    let run = unique_name("run");
    let publication = unique_name("typed_e2e_pub");
    let slot = unique_name("typed_e2e_slot");
    let topic = unique_name("typed_e2e_topic");
    pg.batch_execute(&format!("CREATE PUBLICATION {publication} FOR TABLE typed_e2e_inventory")).await.unwrap();
    create_topic(&topic, 3).await;

    // The topic map comes from the derived type; only the topic is made unique for the run.
    let mut topic_map = pgkafka::topic_map![Inventory];
    topic_map.get_mut(Inventory::TABLE_NAME).unwrap().name = topic.clone();
    assert_eq!(topic_map[Inventory::TABLE_NAME].partition_key, ["organization_id"]);
    let producer = Producer::new(
        env().database_url.clone(),
        env().brokers.clone(),
        slot.clone(),
        publication.clone(),
        topic_map,
    );
    // The slot exists once the producer is streaming; changes before it would not be sent.
    let running = RunningProducer::start(producer, &slot).await;

    pg.batch_execute(&format!(
        "BEGIN;
         INSERT INTO typed_e2e_inventory VALUES ('{run}', 1, 'A', 5, 9.99, '{{red,\"big one\"}}');
         INSERT INTO typed_e2e_inventory VALUES ('{run}', 2, 'B', NULL, NULL, '{{}}');
         COMMIT;
         UPDATE typed_e2e_inventory SET quantity = 4 WHERE run = '{run}' AND sku = 'A';
         DELETE FROM typed_e2e_inventory WHERE run = '{run}' AND sku = 'B';"
    ))
    .await
    .unwrap();

    let records = records_of_run(&topic, &run, 4, Duration::from_secs(60)).await;
    // Keys are the partition-key values of the derived type.
    for record in &records {
        let op = record.op();
        let org = op.value(op.op.key_row(), "organization_id").unwrap().unwrap().to_owned();
        assert_eq!(record.key_text().unwrap(), format!("[\"{org}\"]"));
    }

    // The typed router under the real basic consumer.
    let seen = Seen { run: run.clone(), ..Seen::default() };
    let router = Router::new().route::<Inventory>(seen.clone());
    let consumer = Consumer::new(unique_name("typed_e2e_group"), [topic.as_str()], env().brokers.as_str(), router)
        .kafka_option("session.timeout.ms", "6000")
        .kafka_option("heartbeat.interval.ms", "500");
    let consuming = RunningConsumer::basic(consumer);
    let events = seen.events.clone();
    wait_for("the typed handler to see the run's 4 changes", Duration::from_secs(60), || {
        let n = events.lock().unwrap().len();
        async move { (n >= 4).then_some(()) }
    })
    .await;
    consuming.stop().await.unwrap();
    running.stop().await.unwrap();

    // Each organization's changes are in one partition, so in commit order; the two
    // organizations' partitions are consumed concurrently.
    let events = seen.events.lock().unwrap().clone();
    let of = |sku: &str| -> Vec<&str> {
        events.iter().map(String::as_str).filter(|e| e.split(' ').any(|w| w == sku)).collect()
    };
    assert_eq!(
        of("A"),
        ["insert 1 A Some(5) Some(\"9.99\") [\"red\", \"big one\"]", "update A Some(5) -> Some(4)"]
    );
    assert_eq!(of("B"), ["insert 2 B None None []", "delete B"]);
    assert_eq!(events.len(), 4, "{events:?}");

    drop_slot(&pg, &slot).await;
    pg.batch_execute(&format!("DROP PUBLICATION {publication}")).await.unwrap();
}
