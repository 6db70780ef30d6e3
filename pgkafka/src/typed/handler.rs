//! Handlers of one table's typed changes.

use std::future::Future;
use std::marker::PhantomData;

use async_trait::async_trait;
use pgkafka_common::{Change, ReplicatedTable, TypedOp};
use sqlx::{Postgres, Transaction};

use crate::ConsumerError;

/// Whether the op being handled is a snapshot row (its record's `pgkafka.snapshot` header).
fn is_snapshot() -> bool {
    crate::consumer::current_message().is_some_and(|message| message.snapshot.is_some())
}

/// Handles the changes of table `T` for a [`Router`](super::Router) run by the basic consumer.
///
/// Implement [`handle`](Self::handle) to see every change with its position (`lsn`, `seq_id`),
/// or any of [`insert`](Self::insert), [`update`](Self::update) and [`delete`](Self::delete):
/// the provided `handle` calls them, and the ones you do not implement accept the change and do
/// nothing — an insert-only handler ignores updates and deletes.
///
/// ```
/// use pgkafka::typed::TableHandler;
/// use pgkafka::{async_trait::async_trait, ConsumerError, ReplicatedTable};
///
/// #[derive(ReplicatedTable)]
/// struct Signups { email: String }
///
/// struct Welcome;
///
/// #[async_trait]
/// impl TableHandler<Signups> for Welcome {
///     async fn insert(&self, row: Signups) -> Result<(), ConsumerError> {
///         send_welcome(&row.email).map_err(ConsumerError::transient)
///     }
/// }
/// # fn send_welcome(_: &str) -> Result<(), std::io::Error> { Ok(()) }
/// ```
#[async_trait]
pub trait TableHandler<T>: Send + Sync + 'static
where
    T: ReplicatedTable + Send + 'static,
{
    /// Handles one change. By default calls `snapshot` (a snapshot row), `insert`, `update` or
    /// `delete`.
    async fn handle(&self, op: TypedOp<T>) -> Result<(), ConsumerError> {
        match op.change {
            Change::Insert(row) if is_snapshot() => self.snapshot(row).await,
            Change::Insert(row) => self.insert(row).await,
            Change::Update { old, new } => self.update(old, new).await,
            Change::Delete(row) => self.delete(row).await,
        }
    }

    /// A row was inserted. Does nothing unless implemented.
    async fn insert(&self, row: T) -> Result<(), ConsumerError> {
        let _ = row;
        Ok(())
    }

    /// A row of a snapshot (initial or backfill, see
    /// [`MessageInfo::snapshot`](crate::consumer::MessageInfo::snapshot)): a row that existed,
    /// not one just inserted. Calls `insert` unless implemented.
    async fn snapshot(&self, row: T) -> Result<(), ConsumerError> {
        self.insert(row).await
    }

    /// A row was updated. Does nothing unless implemented.
    async fn update(&self, old: T, new: T) -> Result<(), ConsumerError> {
        let _ = (old, new);
        Ok(())
    }

    /// A row was deleted. Does nothing unless implemented.
    async fn delete(&self, row: T) -> Result<(), ConsumerError> {
        let _ = row;
        Ok(())
    }
}

/// Handles the changes of table `T` inside the idempotent consumer's transaction, for an
/// [`IdempotentRouter`](super::IdempotentRouter).
///
/// Everything written through `tx` commits together with the consumer's record that the change
/// was processed, or not at all. As with [`TableHandler`], implement `handle` or any of
/// `insert`, `update`, `delete` (the others do nothing).
///
/// ```
/// use pgkafka::sqlx::{Postgres, Transaction};
/// use pgkafka::typed::IdempotentTableHandler;
/// use pgkafka::{async_trait::async_trait, ConsumerError, ReplicatedTable};
///
/// #[derive(ReplicatedTable)]
/// #[replicated(table = "orders")]
/// struct Order { id: i64, total_cents: i64 }
///
/// /// Keeps a running revenue total in the consumer's database.
/// struct Revenue;
///
/// #[async_trait]
/// impl IdempotentTableHandler<Order> for Revenue {
///     async fn insert(&self, tx: &mut Transaction<'_, Postgres>, order: Order) -> Result<(), ConsumerError> {
///         pgkafka::sqlx::query("UPDATE revenue SET cents = cents + $1")
///             .bind(order.total_cents)
///             .execute(&mut **tx)
///             .await?;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait IdempotentTableHandler<T>: Send + Sync + 'static
where
    T: ReplicatedTable + Send + 'static,
{
    /// Handles one change inside `tx`. By default calls `snapshot` (a snapshot row), `insert`,
    /// `update` or `delete`.
    async fn handle(&self, tx: &mut Transaction<'_, Postgres>, op: TypedOp<T>) -> Result<(), ConsumerError> {
        match op.change {
            Change::Insert(row) if is_snapshot() => self.snapshot(tx, row).await,
            Change::Insert(row) => self.insert(tx, row).await,
            Change::Update { old, new } => self.update(tx, old, new).await,
            Change::Delete(row) => self.delete(tx, row).await,
        }
    }

    /// A row was inserted. Does nothing unless implemented.
    async fn insert(&self, tx: &mut Transaction<'_, Postgres>, row: T) -> Result<(), ConsumerError> {
        let _ = (tx, row);
        Ok(())
    }

    /// A row of a snapshot (initial or backfill, see
    /// [`MessageInfo::snapshot`](crate::consumer::MessageInfo::snapshot)). Calls `insert` unless
    /// implemented.
    async fn snapshot(&self, tx: &mut Transaction<'_, Postgres>, row: T) -> Result<(), ConsumerError> {
        self.insert(tx, row).await
    }

    /// A row was updated. Does nothing unless implemented.
    async fn update(&self, tx: &mut Transaction<'_, Postgres>, old: T, new: T) -> Result<(), ConsumerError> {
        let _ = (tx, old, new);
        Ok(())
    }

    /// A row was deleted. Does nothing unless implemented.
    async fn delete(&self, tx: &mut Transaction<'_, Postgres>, row: T) -> Result<(), ConsumerError> {
        let _ = (tx, row);
        Ok(())
    }
}

/// A [`TableHandler`] made from an async closure, see [`handler_fn`].
pub struct FnHandler<T, F> {
    f: F,
    _table: PhantomData<fn() -> T>,
}

impl<T, F> std::fmt::Debug for FnHandler<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnHandler").field("table", &std::any::type_name::<T>()).finish_non_exhaustive()
    }
}

/// A [`TableHandler<T>`] that calls `f` with every change.
///
/// ```
/// use pgkafka::typed::{handler_fn, Router};
/// use pgkafka::{Change, ReplicatedTable, TypedOp};
///
/// #[derive(ReplicatedTable, Debug)]
/// struct Inventory { sku: String }
///
/// let router = Router::new().route(handler_fn(|op: TypedOp<Inventory>| async move {
///     if let Change::Delete(item) = op.change {
///         println!("{} is gone (lsn {})", item.sku, op.lsn);
///     }
///     Ok(())
/// }));
/// assert_eq!(router.topics(), ["inventory"]);
/// ```
pub fn handler_fn<T, F, Fut>(f: F) -> FnHandler<T, F>
where
    T: ReplicatedTable + Send + 'static,
    F: Fn(TypedOp<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ConsumerError>> + Send,
{
    FnHandler { f, _table: PhantomData }
}

#[async_trait]
impl<T, F, Fut> TableHandler<T> for FnHandler<T, F>
where
    T: ReplicatedTable + Send + 'static,
    F: Fn(TypedOp<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ConsumerError>> + Send,
{
    async fn handle(&self, op: TypedOp<T>) -> Result<(), ConsumerError> {
        (self.f)(op).await
    }
}
