//! The typed API end to end: a `#[derive(ReplicatedTable)]` struct gives the producer its topic
//! map and the consumer its decoding; the handler receives `Inventory` values.
//!
//! ```sh
//! scripts/services.sh up && set -a && . .services/env && set +a
//! cargo run -p pgkafka-examples --example typed
//! ```
//!
//! It creates its table and publication if missing, starts the producer, changes a few rows,
//! prints what the typed handler receives, and stops once it has seen this run's changes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgkafka::typed::{Router, TableHandler};
use pgkafka::{async_trait::async_trait, Consumer, ConsumerError, Producer, ReplicatedTable};
use tokio::sync::Notify;

/// One row of `typed_example_inventory`. Changes go to the topic `typed_example_inventory`,
/// keyed by `organization_id`, so all changes of one organization stay in order.
#[derive(ReplicatedTable, Debug)]
#[replicated(table = "typed_example_inventory", topic = "typed_example_inventory", partition_key = [organization_id])]
struct Inventory {
    #[replicated(column = "org_id")]
    organization_id: i64,
    sku: String,
    quantity: i32,
    /// `text[]`
    tags: Vec<String>,
    /// `jsonb`, any shape.
    attributes: Option<serde_json::Value>,
}

/// Prints every change, and says when it saw the last change this run makes.
struct Stock {
    last_sku: String,
    done: Arc<Notify>,
}

#[async_trait]
impl TableHandler<Inventory> for Stock {
    async fn insert(&self, item: Inventory) -> Result<(), ConsumerError> {
        let bin = item.attributes.as_ref().and_then(|a| a.get("bin")).and_then(|b| b.as_str()).unwrap_or("-");
        println!(
            "new:     {} x{} for organization {}, tags {:?}, bin {bin}",
            item.sku, item.quantity, item.organization_id, item.tags
        );
        Ok(())
    }

    async fn update(&self, old: Inventory, new: Inventory) -> Result<(), ConsumerError> {
        println!("changed: {} quantity {} -> {}", new.sku, old.quantity, new.quantity);
        if new.quantity < 10 && old.quantity >= 10 {
            println!("         reorder {} for organization {}", new.sku, new.organization_id);
        }
        Ok(())
    }

    async fn delete(&self, item: Inventory) -> Result<(), ConsumerError> {
        println!("gone:    {}", item.sku);
        if item.sku == self.last_sku {
            self.done.notify_one();
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let database = std::env::var("PGKAFKA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:54329/postgres".into());
    let brokers = std::env::var("PGKAFKA_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());

    let db = pgkafka::sqlx::PgPool::connect(&database).await?;
    for statement in [
        "CREATE TABLE IF NOT EXISTS typed_example_inventory (
            org_id bigint NOT NULL, sku text PRIMARY KEY, quantity int NOT NULL,
            tags text[] NOT NULL DEFAULT '{}', attributes jsonb)",
        // Old rows of updates and deletes carry every column, so they decode like new ones.
        "ALTER TABLE typed_example_inventory REPLICA IDENTITY FULL",
        "DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'typed_example_pub') THEN
                CREATE PUBLICATION typed_example_pub FOR TABLE typed_example_inventory;
            END IF;
         END $$",
    ] {
        pgkafka::sqlx::query(statement).execute(&db).await?;
    }

    // The producer: its topic map comes from the derived type.
    let producer = Producer::new(
        database.clone(),
        brokers.clone(),
        "typed_example_slot".into(),
        "typed_example_pub".into(),
        pgkafka::topic_map![Inventory],
    );
    let stop_producer = producer.shutdown_handle();
    let producing = tokio::spawn(async move { producer.start().await });
    while !slot_is_active(&db).await? {
        if producing.is_finished() {
            producing.await??;
            return Err("the producer stopped".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Changes in PostgreSQL.
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let (bolts, nuts) = (format!("bolts-{run}"), format!("nuts-{run}"));
    let mut tx = db.begin().await?;
    pgkafka::sqlx::query(
        "INSERT INTO typed_example_inventory VALUES ($1, $2, 25, '{steel,\"m8 x 40\"}', '{\"bin\": \"A3\"}'), ($1, $3, 100, '{}', NULL)",
    )
    .bind(42_i64)
    .bind(&bolts)
    .bind(&nuts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    pgkafka::sqlx::query("UPDATE typed_example_inventory SET quantity = 7 WHERE sku = $1").bind(&bolts).execute(&db).await?;
    pgkafka::sqlx::query("DELETE FROM typed_example_inventory WHERE sku = $1").bind(&nuts).execute(&db).await?;

    // The consumer: a router of typed handlers is a BasicApplication. A new consumer group
    // starts at the beginning of the topic, so earlier runs' changes are shown too.
    let done = Arc::new(Notify::new());
    let router = Router::new().route::<Inventory>(Stock { last_sku: nuts.clone(), done: done.clone() });
    println!("consuming {:?}", router.topics());
    let consumer = Consumer::new(format!("typed_example_{run}"), router.topics(), brokers, router);
    let stop_consumer = consumer.shutdown_handle();
    let consuming = tokio::spawn(consumer.start_basic());
    tokio::select! {
        () = done.notified() => println!("saw this run's changes"),
        () = tokio::time::sleep(Duration::from_secs(60)) => return Err("no changes arrived within 60 s".into()),
    }
    stop_consumer.shutdown();
    consuming.await??;

    stop_producer.shutdown();
    producing.await??;
    Ok(())
}

async fn slot_is_active(db: &pgkafka::sqlx::PgPool) -> Result<bool, pgkafka::sqlx::Error> {
    let active: Option<bool> =
        pgkafka::sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = 'typed_example_slot'")
            .fetch_optional(db)
            .await?;
    Ok(active == Some(true))
}
