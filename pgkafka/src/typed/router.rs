//! Routers: one [`BasicApplication`] / [`IdempotentApplication`] dispatching each op to the
//! typed handler of its table.

use std::collections::HashMap;
use std::marker::PhantomData;

use async_trait::async_trait;
use pgkafka_common::{ReplicatedTable, TopicInfo, TypedOp};
use sqlx::{Postgres, Transaction};

use super::handler::{IdempotentTableHandler, TableHandler};
use crate::{BasicApplication, ConsumerError, IdempotentApplication, ReplicationOp};

/// What a router does with an op of a table it has no route for.
enum Unrouted<A: ?Sized> {
    /// Stop with [`ConsumerError::UnhandledTable`]: a topic carrying a table nobody expected is
    /// a deployment mistake, and skipping it would lose its changes silently.
    Fail,
    /// Skip the op.
    Ignore,
    /// Hand the raw op to another application.
    Fallback(Box<A>),
}

/// The routes of a router, by table name.
struct Routes<H: ?Sized, A: ?Sized> {
    by_table: HashMap<&'static str, Box<H>>,
    topics: Vec<(&'static str, &'static str, TopicInfo)>,
    /// Tables routed twice: reported on every op, so the mistake cannot go unnoticed.
    conflicts: Vec<&'static str>,
    unrouted: Unrouted<A>,
}

impl<H: ?Sized, A: ?Sized> Routes<H, A> {
    fn new() -> Self {
        Self { by_table: HashMap::new(), topics: Vec::new(), conflicts: Vec::new(), unrouted: Unrouted::Fail }
    }

    fn add<T: ReplicatedTable>(&mut self, handler: Box<H>) {
        if self.by_table.insert(T::TABLE_NAME, handler).is_some() {
            self.conflicts.push(T::TABLE_NAME);
        } else {
            self.topics.push((T::TABLE_NAME, T::TOPIC, T::topic_info()));
        }
    }

    fn check(&self) -> Result<(), ConsumerError> {
        match self.conflicts.first() {
            None => Ok(()),
            Some(table) => Err(ConsumerError::Config(format!(
                "table {table} is routed to two handlers; route each table once"
            ))),
        }
    }

    /// The handler of `table_name`, which the producer writes bare for `public` tables and
    /// `schema.table` otherwise; `public.t` is accepted too.
    fn find(&self, table_name: &str) -> Option<&H> {
        let bare = table_name.strip_prefix("public.").unwrap_or(table_name);
        self.by_table.get(bare).map(|h| &**h)
    }

    fn topics(&self) -> Vec<String> {
        let names: Vec<&str> = self.topics.iter().map(|(_, topic, _)| *topic).collect();
        super::dedup_topics(&names)
    }

    fn topic_map(&self) -> HashMap<String, TopicInfo> {
        self.topics.iter().map(|(table, _, info)| ((*table).to_owned(), info.clone())).collect()
    }

    fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut tables: Vec<&str> = self.by_table.keys().copied().collect();
        tables.sort_unstable();
        let unrouted = match self.unrouted {
            Unrouted::Fail => "fail",
            Unrouted::Ignore => "ignore",
            Unrouted::Fallback(_) => "fallback",
        };
        f.debug_struct(name).field("tables", &tables).field("unknown_tables", &unrouted).finish()
    }
}

fn unhandled(op: &ReplicationOp) -> ConsumerError {
    ConsumerError::UnhandledTable { table: op.table_name.clone() }
}

#[async_trait]
trait ErasedBasic: Send + Sync {
    async fn handle(&self, op: &ReplicationOp) -> Result<(), ConsumerError>;
}

struct BasicRoute<T, H> {
    handler: H,
    _table: PhantomData<fn() -> T>,
}

#[async_trait]
impl<T, H> ErasedBasic for BasicRoute<T, H>
where
    T: ReplicatedTable + Send + 'static,
    H: TableHandler<T>,
{
    async fn handle(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
        let typed = TypedOp::<T>::from_op(op)?;
        self.handler.handle(typed).await
    }
}

/// Dispatches each op to the [`TableHandler`] of its table; a [`BasicApplication`] for
/// [`Consumer::start_basic`](crate::Consumer::start_basic).
///
/// Each op is decoded into the table's type first; a row that does not decode stops the
/// consumer with [`ConsumerError::Decode`], naming table, column, value and type. An op of a
/// table without a route stops it with [`ConsumerError::UnhandledTable`], unless
/// [`ignore_unknown_tables`](Self::ignore_unknown_tables) or [`fallback`](Self::fallback) says
/// otherwise.
///
/// ```
/// use pgkafka::typed::{handler_fn, Router, TableHandler};
/// use pgkafka::{async_trait::async_trait, BasicApplication, ConsumerError, ReplicatedTable, ReplicationOp};
///
/// #[derive(ReplicatedTable, Debug)]
/// struct Inventory { sku: String, quantity: i32 }
///
/// #[derive(ReplicatedTable, Debug)]
/// #[replicated(table = "orders", schema = "sales", topic = "orders_topic")]
/// struct Order { id: i64 }
///
/// struct Stock;
/// #[async_trait]
/// impl TableHandler<Inventory> for Stock {
///     async fn insert(&self, item: Inventory) -> Result<(), ConsumerError> {
///         assert_eq!((item.sku.as_str(), item.quantity), ("A-1", 5));
///         Ok(())
///     }
/// }
///
/// let router = Router::new()
///     .route::<Inventory>(Stock)
///     .route(handler_fn(|_op: pgkafka::TypedOp<Order>| async { Ok(()) }));
/// assert_eq!(router.topics(), ["inventory", "orders_topic"]);
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let op: ReplicationOp = serde_json::from_str(
///     r#"{"table_name":"inventory","col_names":["sku","quantity"],"lsn":1,"seq_id":0,"op":{"Insert":["A-1","5"]}}"#,
/// )?;
/// router.handle_message(&op).await?;
///
/// let bad = ReplicationOp { op: pgkafka::Op::Insert(vec![Some("A-1".into()), Some("five".into())]), ..op };
/// let err = router.handle_message(&bad).await.unwrap_err();
/// assert!(err.to_string().contains(r#"column quantity: cannot decode "five" as i32"#), "{err}");
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
pub struct Router {
    routes: Routes<dyn ErasedBasic, dyn BasicApplication>,
}

impl Router {
    /// A router without routes.
    #[must_use]
    pub fn new() -> Self {
        Self { routes: Routes::new() }
    }

    /// Routes the changes of `T`'s table to `handler`.
    ///
    /// Route each table once: a second route for the same table makes every op fail with
    /// [`ConsumerError::Config`].
    #[must_use]
    pub fn route<T>(mut self, handler: impl TableHandler<T>) -> Self
    where
        T: ReplicatedTable + Send + 'static,
    {
        self.routes.add::<T>(Box::new(BasicRoute { handler, _table: PhantomData }));
        self
    }

    /// Skips ops of tables without a route instead of stopping the consumer.
    #[must_use]
    pub fn ignore_unknown_tables(mut self) -> Self {
        self.routes.unrouted = Unrouted::Ignore;
        self
    }

    /// Hands ops of tables without a route, undecoded, to `app`: the raw API for tables you
    /// handle dynamically.
    #[must_use]
    pub fn fallback(mut self, app: impl BasicApplication) -> Self {
        self.routes.unrouted = Unrouted::Fallback(Box::new(app));
        self
    }

    /// The topics of the routed tables, each once, for [`Consumer::new`](crate::Consumer::new).
    #[must_use]
    pub fn topics(&self) -> Vec<String> {
        self.routes.topics()
    }

    /// The producer's topic map for the routed tables.
    #[must_use]
    pub fn topic_map(&self) -> HashMap<String, TopicInfo> {
        self.routes.topic_map()
    }
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.routes.debug("Router", f)
    }
}

#[async_trait]
impl BasicApplication for Router {
    async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
        self.routes.check()?;
        match self.routes.find(&op.table_name) {
            Some(route) => route.handle(op).await,
            None => match &self.routes.unrouted {
                Unrouted::Fail => Err(unhandled(op)),
                Unrouted::Ignore => {
                    tracing::debug!(table = %op.table_name, "skipping an op of a table without a route");
                    Ok(())
                }
                Unrouted::Fallback(app) => app.handle_message(op).await,
            },
        }
    }
}

#[async_trait]
trait ErasedIdempotent: Send + Sync {
    async fn handle(&self, tx: &mut Transaction<'_, Postgres>, op: &ReplicationOp) -> Result<(), ConsumerError>;
}

struct IdempotentRoute<T, H> {
    handler: H,
    _table: PhantomData<fn() -> T>,
}

#[async_trait]
impl<T, H> ErasedIdempotent for IdempotentRoute<T, H>
where
    T: ReplicatedTable + Send + 'static,
    H: IdempotentTableHandler<T>,
{
    async fn handle(&self, tx: &mut Transaction<'_, Postgres>, op: &ReplicationOp) -> Result<(), ConsumerError> {
        let typed = TypedOp::<T>::from_op(op)?;
        self.handler.handle(tx, typed).await
    }
}

/// Dispatches each op to the [`IdempotentTableHandler`] of its table, inside the idempotent
/// consumer's transaction; an [`IdempotentApplication`] for
/// [`Consumer::start_idempotent`](crate::Consumer::start_idempotent). Behaves like [`Router`]
/// otherwise.
///
/// ```
/// use pgkafka::sqlx::{Postgres, Transaction};
/// use pgkafka::typed::{IdempotentRouter, IdempotentTableHandler};
/// use pgkafka::{async_trait::async_trait, ConsumerError, ReplicatedTable};
///
/// #[derive(ReplicatedTable)]
/// #[replicated(topic = "inventory_topic")]
/// struct Inventory { sku: String, quantity: i32 }
///
/// struct Mirror;
///
/// #[async_trait]
/// impl IdempotentTableHandler<Inventory> for Mirror {
///     async fn insert(&self, tx: &mut Transaction<'_, Postgres>, item: Inventory) -> Result<(), ConsumerError> {
///         pgkafka::sqlx::query("INSERT INTO stock (sku, quantity) VALUES ($1, $2)")
///             .bind(item.sku)
///             .bind(item.quantity)
///             .execute(&mut **tx)
///             .await?;
///         Ok(())
///     }
/// }
///
/// let router = IdempotentRouter::new().route::<Inventory>(Mirror).ignore_unknown_tables();
/// assert_eq!(router.topics(), ["inventory_topic"]);
/// ```
pub struct IdempotentRouter {
    routes: Routes<dyn ErasedIdempotent, dyn IdempotentApplication>,
}

impl IdempotentRouter {
    /// A router without routes.
    #[must_use]
    pub fn new() -> Self {
        Self { routes: Routes::new() }
    }

    /// Routes the changes of `T`'s table to `handler`. Route each table once, see
    /// [`Router::route`].
    #[must_use]
    pub fn route<T>(mut self, handler: impl IdempotentTableHandler<T>) -> Self
    where
        T: ReplicatedTable + Send + 'static,
    {
        self.routes.add::<T>(Box::new(IdempotentRoute { handler, _table: PhantomData }));
        self
    }

    /// Skips ops of tables without a route instead of stopping the consumer. Skipped ops still
    /// count as processed.
    #[must_use]
    pub fn ignore_unknown_tables(mut self) -> Self {
        self.routes.unrouted = Unrouted::Ignore;
        self
    }

    /// Hands ops of tables without a route, undecoded, to `app`.
    #[must_use]
    pub fn fallback(mut self, app: impl IdempotentApplication) -> Self {
        self.routes.unrouted = Unrouted::Fallback(Box::new(app));
        self
    }

    /// The topics of the routed tables, each once, for [`Consumer::new`](crate::Consumer::new).
    #[must_use]
    pub fn topics(&self) -> Vec<String> {
        self.routes.topics()
    }

    /// The producer's topic map for the routed tables.
    #[must_use]
    pub fn topic_map(&self) -> HashMap<String, TopicInfo> {
        self.routes.topic_map()
    }
}

impl Default for IdempotentRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for IdempotentRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.routes.debug("IdempotentRouter", f)
    }
}

#[async_trait]
impl IdempotentApplication for IdempotentRouter {
    async fn handle_message(&self, tx: &mut Transaction<'_, Postgres>, op: &ReplicationOp) -> Result<(), ConsumerError> {
        self.routes.check()?;
        match self.routes.find(&op.table_name) {
            Some(route) => route.handle(tx, op).await,
            None => match &self.routes.unrouted {
                Unrouted::Fail => Err(unhandled(op)),
                Unrouted::Ignore => {
                    tracing::debug!(table = %op.table_name, "skipping an op of a table without a route");
                    Ok(())
                }
                Unrouted::Fallback(app) => app.handle_message(tx, op).await,
            },
        }
    }
}
