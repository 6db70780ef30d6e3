//! A router that routes a table twice is refused when the consumer starts, not on the first op.

use std::time::Duration;

use pgkafka::typed::{handler_fn, IdempotentRouter, IdempotentTableHandler, Router};
use pgkafka::{async_trait::async_trait, Consumer, ConsumerError, ReplicatedTable, TypedOp};
use pgkafka_tests::{env, unique_name};

#[derive(ReplicatedTable, Debug)]
#[replicated(table = "inventory", topic = "inventory_topic")]
struct Inventory {
    #[allow(dead_code)]
    sku: String,
}

/// The same table under a second name in its own (`public`) schema: still the same table.
#[derive(ReplicatedTable, Debug)]
#[replicated(table = "inventory", schema = "public", topic = "inventory_topic")]
struct InventoryAgain {
    #[allow(dead_code)]
    sku: String,
}

struct Nothing;

#[async_trait]
impl IdempotentTableHandler<Inventory> for Nothing {}

fn ignore<T: ReplicatedTable + Send + 'static>() -> impl pgkafka::typed::TableHandler<T> {
    handler_fn(|_: TypedOp<T>| async { Ok(()) })
}

/// Both consumers stop at start with a configuration error naming the table, before they
/// subscribe (the topic does not even exist) or, for the idempotent one, touch the database.
#[tokio::test]
async fn a_table_routed_twice_stops_the_consumer_at_start() {
    let topic = unique_name("typed_twice");

    let router = Router::new().route::<Inventory>(ignore()).route::<InventoryAgain>(ignore());
    let consumer = Consumer::new(unique_name("typed_twice_group"), [topic.as_str()], env().brokers.as_str(), router);
    let err = tokio::time::timeout(Duration::from_secs(10), consumer.start_basic())
        .await
        .expect("a refused configuration stops the consumer at once")
        .unwrap_err();
    assert!(matches!(&err, ConsumerError::Config(message) if message.contains("table inventory is routed to more than one handler")), "{err:?}");

    let router = IdempotentRouter::new().route::<Inventory>(Nothing).route::<Inventory>(Nothing);
    let consumer = Consumer::new(unique_name("typed_twice_group"), [topic.as_str()], env().brokers.as_str(), router);
    let unreachable_database = "postgresql://nobody@127.0.0.1:1/nothing";
    let err = tokio::time::timeout(Duration::from_secs(10), consumer.start_idempotent(unreachable_database))
        .await
        .expect("a refused configuration stops the consumer at once")
        .unwrap_err();
    assert!(matches!(&err, ConsumerError::Config(message) if message.contains("routed to more than one handler")), "{err:?}");
}
