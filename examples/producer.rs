//! Streams every row change of a publication to Kafka with the raw API.
//!
//! Guarantee: changes reach Kafka in WAL commit order, at least once, with no gaps; the slot is
//! only advanced past what Kafka acknowledged.
//!
//! ```sh
//! scripts/services.sh up && set -a && . .services/env && set +a
//! psql "$PGKAFKA_TEST_DATABASE_URL" -c "CREATE TABLE inventory (id int PRIMARY KEY, organization_id int NOT NULL, item text)" \
//!     -c "ALTER TABLE inventory REPLICA IDENTITY FULL" -c "CREATE PUBLICATION inventory_pub FOR TABLE inventory"
//! cargo run -p pgkafka-examples --example producer
//! ```
//! Stop it with Ctrl-C: in-flight messages are delivered and confirmed first.

use std::collections::HashMap;

use pgkafka::{Producer, TopicInfo};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
    ).init();
    let database = std::env::var("PGKAFKA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:54329/postgres".into());
    let brokers = std::env::var("PGKAFKA_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());

    let topic_map: HashMap<String, TopicInfo> = serde_json::from_value(serde_json::json!({
        "inventory": { "name": "inventory_topic", "partition_key": ["organization_id"] },
    }))?;
    let producer = Producer::new(database, brokers, "inventory_slot".into(), "inventory_pub".into(), topic_map);

    let stop = producer.shutdown_handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.shutdown();
    });
    producer.start().await?;
    Ok(())
}
