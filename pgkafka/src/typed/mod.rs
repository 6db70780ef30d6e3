//! The typed API: structs that stand for tables, topic maps built from them, and handlers that
//! take decoded rows.
//!
//! 1. Derive [`ReplicatedTable`] on a struct per table.
//! 2. Give the producer [`topic_map!`](crate::topic_map)`[Inventory, Orders]`.
//! 3. Implement [`TableHandler<Inventory>`](TableHandler) (or [`IdempotentTableHandler`]), route
//!    tables to handlers with a [`Router`] (or [`IdempotentRouter`]), and run it with a
//!    [`Consumer`](crate::Consumer) on the router's [`topics`](Router::topics).
//!
//! ```no_run
//! use pgkafka::typed::{Router, TableHandler};
//! use pgkafka::{async_trait::async_trait, Consumer, ConsumerError, Producer, ReplicatedTable};
//!
//! #[derive(ReplicatedTable, Debug)]
//! #[replicated(table = "inventory", topic = "inventory_topic", partition_key = [organization_id])]
//! struct Inventory {
//!     organization_id: i64,
//!     sku: String,
//!     quantity: i32,
//! }
//!
//! struct Restock;
//!
//! #[async_trait]
//! impl TableHandler<Inventory> for Restock {
//!     async fn update(&self, old: Inventory, new: Inventory) -> Result<(), ConsumerError> {
//!         if new.quantity < 10 && old.quantity >= 10 {
//!             println!("reorder {} for organization {}", new.sku, new.organization_id);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # async fn produce() -> Result<(), Box<dyn std::error::Error>> {
//! // The producer: the topic map comes from the derived types.
//! let producer = Producer::new(
//!     "postgresql://username:password@localhost:5432/database".into(),
//!     "localhost:9092".into(),
//!     "slot_1".into(),
//!     "publication_1".into(),
//!     pgkafka::topic_map![Inventory],
//! );
//! producer.start().await?;
//! # Ok(()) }
//!
//! # async fn consume() -> Result<(), Box<dyn std::error::Error>> {
//! // The consumer: ops of `inventory` arrive at `Restock` as `Inventory` values.
//! let router = Router::new().route::<Inventory>(Restock);
//! let consumer = Consumer::new("restock", router.topics(), "localhost:9092", router);
//! consumer.start_basic().await?;
//! # Ok(()) }
//! ```

#[cfg(feature = "consumer")]
mod handler;
#[cfg(feature = "consumer")]
mod router;
#[cfg(feature = "consumer")]
mod schema;

#[cfg(feature = "consumer")]
pub use handler::{handler_fn, FnHandler, IdempotentTableHandler, TableHandler};
#[cfg(feature = "consumer")]
pub use router::{IdempotentRouter, Router};
#[cfg(feature = "consumer")]
pub use schema::{check_table, SchemaCheckError};

pub use pgkafka_common::{Change, Column, DecodeError, ReplicatedTable, RowDecoder, TypedOp};

/// The producer's topic map for the given [`ReplicatedTable`](crate::ReplicatedTable) types:
/// a `HashMap<String, TopicInfo>` keyed by each type's
/// [`TABLE_NAME`](crate::ReplicatedTable::TABLE_NAME).
///
/// ```
/// use pgkafka::ReplicatedTable;
///
/// #[derive(ReplicatedTable)]
/// #[replicated(topic = "inventory_topic", partition_key = [organization_id])]
/// struct Inventory { organization_id: i64 }
///
/// #[derive(ReplicatedTable)]
/// #[replicated(table = "orders", schema = "sales")]
/// struct Order { id: i64 }
///
/// let map = pgkafka::topic_map![Inventory, Order];
/// assert_eq!(map["inventory"].name, "inventory_topic");
/// assert_eq!(map["inventory"].partition_key, ["organization_id"]);
/// assert_eq!(map["sales.orders"].name, "sales.orders");
/// assert!(map["sales.orders"].partition_key.is_empty()); // the primary key
/// ```
#[macro_export]
macro_rules! topic_map {
    ($($table:ty),* $(,)?) => {{
        let mut map: ::std::collections::HashMap<::std::string::String, $crate::TopicInfo> =
            ::std::collections::HashMap::new();
        $(
            map.insert(
                ::std::string::String::from(<$table as $crate::__private::ReplicatedTable>::TABLE_NAME),
                <$table as $crate::__private::ReplicatedTable>::topic_info(),
            );
        )*
        map
    }};
}

/// The Kafka topics of the given [`ReplicatedTable`](crate::ReplicatedTable) types, each once,
/// in the order given: a `Vec<String>` for [`Consumer::new`](crate::Consumer::new).
///
/// ```
/// # use pgkafka::ReplicatedTable;
/// # #[derive(ReplicatedTable)] #[replicated(topic = "shop")] struct Inventory { id: i64 }
/// # #[derive(ReplicatedTable)] #[replicated(topic = "shop")] struct Orders { id: i64 }
/// # #[derive(ReplicatedTable)] struct Customers { id: i64 }
/// assert_eq!(pgkafka::topics![Inventory, Orders, Customers], ["shop", "customers"]);
/// ```
#[macro_export]
macro_rules! topics {
    ($($table:ty),* $(,)?) => {
        $crate::__private::dedup_topics(&[$(<$table as $crate::__private::ReplicatedTable>::TOPIC),*])
    };
}

/// Topics in first-seen order, each once (several tables may share a topic).
#[doc(hidden)]
#[must_use]
pub fn dedup_topics(topics: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(topics.len());
    for topic in topics {
        if !out.iter().any(|t| t == topic) {
            out.push((*topic).to_owned());
        }
    }
    out
}
