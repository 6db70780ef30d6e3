//! pgkafka streams PostgreSQL row changes into Kafka and processes them from Kafka.
//!
//! - [`Producer`] (feature `producer`) reads a logical replication slot (`pgoutput`) and publishes
//!   one JSON [`ReplicationOp`] per row change, in WAL commit order, at least once, with no gaps.
//! - [`Consumer`] (feature `consumer`) runs a [`BasicApplication`] (in order per partition) or an
//!   [`IdempotentApplication`] (exactly-once effects, progress kept in your own PostgreSQL
//!   transaction).
//!
//! Kafka is the distributed engine: scale consumers out with consumer groups and partitions.

pub use pgkafka_common::{key, Lsn, Op, OpKind, ParseLsnError, ReplicationOp, Row, TopicInfo};

/// Re-exported so applications implement the consumer traits with the same version pgkafka uses.
pub use async_trait;
/// Re-exported so applications use the same librdkafka binding pgkafka was built with.
#[cfg(any(feature = "producer", feature = "consumer"))]
pub use rdkafka;
/// Re-exported so [`IdempotentApplication`] handlers name the exact `sqlx` types it hands them.
#[cfg(feature = "consumer")]
pub use sqlx;

#[cfg(feature = "producer")]
pub mod producer;
#[cfg(feature = "producer")]
pub use producer::{
    CheckReport, CheckedTable, Producer, ProducerBuilder, ProducerError, ShutdownHandle, SlotInUsePolicy, SlotStatus,
    TruncatePolicy,
};

#[cfg(feature = "consumer")]
pub mod consumer;
#[cfg(feature = "consumer")]
pub use consumer::{BasicApplication, Consumer, ConsumerError, IdempotentApplication};
