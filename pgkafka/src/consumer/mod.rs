//! Kafka consumers that hand each [`ReplicationOp`](crate::ReplicationOp) to your application.

mod error;

pub use error::ConsumerError;

use async_trait::async_trait;
use sqlx::{Postgres, Transaction};

use crate::ReplicationOp;

/// An application run by [`Consumer::start_basic`]: ops of one partition arrive one at a time, in
/// offset order; ops of different partitions may be handled concurrently.
#[async_trait]
pub trait BasicApplication: Send + Sync + 'static {
    /// Handles one op. An error says whether to retry it or stop, see [`ConsumerError`].
    async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError>;
}

/// An application run by [`Consumer::start_idempotent`]: each op is applied exactly once, inside
/// the PostgreSQL transaction that also records the consumer's progress.
#[async_trait]
pub trait IdempotentApplication: Send + Sync + 'static {
    /// Applies one op inside `tx`. Everything written through `tx` commits together with the
    /// record that this op was processed, or not at all.
    async fn handle_message(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        op: &ReplicationOp,
    ) -> Result<(), ConsumerError>;
}

/// Consumes ReplicationOps from Kafka topics in a consumer group.
#[derive(Debug)]
pub struct Consumer<A> {
    #[allow(dead_code)]
    app: A,
}
