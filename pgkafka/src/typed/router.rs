//! Routers: one [`BasicApplication`] / [`IdempotentApplication`] dispatching each op to the
//! typed handler of its table.
//!
//! Both routers share one dispatch ([`Routes`]): a table's route is itself an application (a
//! [`Typed`] handler, which decodes the op into the table's type first), so finding the
//! application for an op is all a router does before handing the op on.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::marker::PhantomData;

use async_trait::async_trait;
use pgkafka_common::ident::TableName;
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

/// The applications of a router by table (`A` is `dyn BasicApplication` or
/// `dyn IdempotentApplication`), and what to do with ops of other tables.
struct Routes<A: ?Sized> {
    /// By schema, then table: a lookup by the parts of an op's [`TableName`] borrows nothing
    /// from the op (a map keyed by `TableName<'static>` would tie the result to the op).
    by_table: HashMap<&'static str, HashMap<&'static str, Box<A>>>,
    /// The routed tables in the order they were added: the name records carry, and its topic.
    tables: Vec<(&'static str, TopicInfo)>,
    /// Tables routed more than once, each time after the first: reported by [`Routes::validate`]
    /// when the consumer starts.
    routed_again: Vec<&'static str>,
    unrouted: Unrouted<A>,
}

impl<A: ?Sized> Routes<A> {
    fn new() -> Self {
        Self { by_table: HashMap::new(), tables: Vec::new(), routed_again: Vec::new(), unrouted: Unrouted::Fail }
    }

    /// Routes `T`'s table to `app`, unless it is routed already (then the first route stays and
    /// the mistake is kept for [`validate`](Self::validate)).
    fn add<T: ReplicatedTable>(&mut self, app: Box<A>) {
        match self.by_table.entry(T::SCHEMA).or_default().entry(T::TABLE) {
            Entry::Occupied(_) => self.routed_again.push(T::TABLE_NAME),
            Entry::Vacant(slot) => {
                slot.insert(app);
                self.tables.push((T::TABLE_NAME, T::topic_info()));
            }
        }
    }

    /// Whether each table is routed once (a fallback application is validated by the router).
    ///
    /// # Errors
    /// [`ConsumerError::Config`] naming the tables routed more than once.
    fn validate(&self) -> Result<(), ConsumerError> {
        let mut tables: Vec<&str> = self.routed_again.clone();
        tables.sort_unstable();
        tables.dedup();
        match tables.as_slice() {
            [] => Ok(()),
            [table] => Err(ConsumerError::Config(format!(
                "table {table} is routed to more than one handler; route each table once"
            ))),
            tables => Err(ConsumerError::Config(format!(
                "tables {} are each routed to more than one handler; route each table once",
                tables.join(", ")
            ))),
        }
    }

    /// The application for an op of `table_name`: its route (a `public` table matches both its
    /// bare name and `public.table`), else the fallback; `None` to skip the op.
    ///
    /// # Errors
    /// [`ConsumerError::UnhandledTable`] when the table has no route and unknown tables stop the
    /// consumer.
    fn app_for(&self, table_name: &str) -> Result<Option<&A>, ConsumerError> {
        let name = TableName::parse(table_name);
        if let Some(route) = self.by_table.get(name.schema).and_then(|tables| tables.get(name.table)) {
            return Ok(Some(route));
        }
        match &self.unrouted {
            Unrouted::Fail => Err(ConsumerError::UnhandledTable { table: table_name.to_owned() }),
            Unrouted::Ignore => {
                tracing::debug!(table = %table_name, "skipping an op of a table without a route");
                Ok(None)
            }
            Unrouted::Fallback(app) => Ok(Some(app)),
        }
    }

    fn fallback(&self) -> Option<&A> {
        match &self.unrouted {
            Unrouted::Fallback(app) => Some(app),
            Unrouted::Fail | Unrouted::Ignore => None,
        }
    }

    fn topics(&self) -> Vec<String> {
        let names: Vec<&str> = self.tables.iter().map(|(_, info)| info.name.as_str()).collect();
        super::dedup_topics(&names)
    }

    fn topic_map(&self) -> HashMap<String, TopicInfo> {
        self.tables.iter().map(|(table, info)| ((*table).to_owned(), info.clone())).collect()
    }

    fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut tables: Vec<&str> = self.tables.iter().map(|(table, _)| *table).collect();
        tables.sort_unstable();
        let unrouted = match self.unrouted {
            Unrouted::Fail => "fail",
            Unrouted::Ignore => "ignore",
            Unrouted::Fallback(_) => "fallback",
        };
        f.debug_struct(name).field("tables", &tables).field("unknown_tables", &unrouted).finish()
    }
}

/// The route of table `T`: decodes each op into `T` and hands it to `handler`, a
/// [`TableHandler`] or an [`IdempotentTableHandler`].
struct Typed<T, H> {
    handler: H,
    _table: PhantomData<fn() -> T>,
}

impl<T, H> Typed<T, H> {
    fn new(handler: H) -> Self {
        Self { handler, _table: PhantomData }
    }
}

#[async_trait]
impl<T, H> BasicApplication for Typed<T, H>
where
    T: ReplicatedTable + Send + 'static,
    H: TableHandler<T>,
{
    async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
        self.handler.handle(TypedOp::from_op(op)?).await
    }
}

#[async_trait]
impl<T, H> IdempotentApplication for Typed<T, H>
where
    T: ReplicatedTable + Send + 'static,
    H: IdempotentTableHandler<T>,
{
    async fn handle_message(&self, tx: &mut Transaction<'_, Postgres>, op: &ReplicationOp) -> Result<(), ConsumerError> {
        self.handler.handle(tx, TypedOp::from_op(op)?).await
    }
}

/// The methods [`Router`] and [`IdempotentRouter`] have alike. `route` and `fallback`, which
/// take the handlers of one kind of consumer, are written out in each.
macro_rules! shared_router_methods {
    ($router:ident) => {
        impl $router {
            /// A router without routes.
            #[must_use]
            pub fn new() -> Self {
                Self { routes: Routes::new() }
            }

            /// Skips ops of tables without a route instead of stopping the consumer (they still
            /// count as processed).
            #[must_use]
            pub fn ignore_unknown_tables(mut self) -> Self {
                self.routes.unrouted = Unrouted::Ignore;
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

        impl Default for $router {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Debug for $router {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.routes.debug(stringify!($router), f)
            }
        }
    };
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
    routes: Routes<dyn BasicApplication>,
}

impl Router {
    /// Routes the changes of `T`'s table to `handler`.
    ///
    /// Route each table once: a second route for the same table makes the consumer refuse to
    /// start, with [`ConsumerError::Config`] from [`BasicApplication::validate`].
    #[must_use]
    pub fn route<T>(mut self, handler: impl TableHandler<T>) -> Self
    where
        T: ReplicatedTable + Send + 'static,
    {
        self.routes.add::<T>(Box::new(Typed::new(handler)));
        self
    }

    /// Hands ops of tables without a route, undecoded, to `app`: the raw API for tables you
    /// handle dynamically.
    #[must_use]
    pub fn fallback(mut self, app: impl BasicApplication) -> Self {
        self.routes.unrouted = Unrouted::Fallback(Box::new(app));
        self
    }
}

shared_router_methods!(Router);

#[async_trait]
impl BasicApplication for Router {
    async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
        match self.routes.app_for(&op.table_name)? {
            Some(app) => app.handle_message(op).await,
            None => Ok(()),
        }
    }

    /// Each table is routed once, and the fallback application, if any, validates.
    fn validate(&self) -> Result<(), ConsumerError> {
        self.routes.validate()?;
        self.routes.fallback().map_or(Ok(()), |app| app.validate())
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
    routes: Routes<dyn IdempotentApplication>,
}

impl IdempotentRouter {
    /// Routes the changes of `T`'s table to `handler`. Route each table once, see
    /// [`Router::route`].
    #[must_use]
    pub fn route<T>(mut self, handler: impl IdempotentTableHandler<T>) -> Self
    where
        T: ReplicatedTable + Send + 'static,
    {
        self.routes.add::<T>(Box::new(Typed::new(handler)));
        self
    }

    /// Hands ops of tables without a route, undecoded, to `app`.
    #[must_use]
    pub fn fallback(mut self, app: impl IdempotentApplication) -> Self {
        self.routes.unrouted = Unrouted::Fallback(Box::new(app));
        self
    }
}

shared_router_methods!(IdempotentRouter);

#[async_trait]
impl IdempotentApplication for IdempotentRouter {
    async fn handle_message(&self, tx: &mut Transaction<'_, Postgres>, op: &ReplicationOp) -> Result<(), ConsumerError> {
        match self.routes.app_for(&op.table_name)? {
            Some(app) => app.handle_message(tx, op).await,
            None => Ok(()),
        }
    }

    /// Each table is routed once, and the fallback application, if any, validates.
    fn validate(&self) -> Result<(), ConsumerError> {
        self.routes.validate()?;
        self.routes.fallback().map_or(Ok(()), |app| app.validate())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

    use std::sync::{Arc, Mutex};

    use pgkafka_common::{Column, DecodeError, Op, RowDecoder};

    use super::*;
    use crate::typed::handler_fn;

    /// `public.items`, one `id` column.
    #[derive(Debug)]
    struct Item {
        id: i64,
    }

    impl ReplicatedTable for Item {
        const SCHEMA: &'static str = "public";
        const TABLE: &'static str = "items";
        const TABLE_NAME: &'static str = "items";
        const TOPIC: &'static str = "shop";
        const PARTITION_KEY: &'static [&'static str] = &[];
        const COLUMNS: &'static [Column] = &[Column::new("id", "i64")];

        fn decode(col_names: &[String], row: &[Option<String>]) -> Result<Self, DecodeError> {
            Ok(Item { id: RowDecoder::new(Self::TABLE_NAME, col_names, row)?.get("id", "i64")? })
        }
    }

    /// `sales.items`: the same table name in another schema.
    struct SalesItem;

    impl ReplicatedTable for SalesItem {
        const SCHEMA: &'static str = "sales";
        const TABLE: &'static str = "items";
        const TABLE_NAME: &'static str = "sales.items";
        const TOPIC: &'static str = "shop";
        const PARTITION_KEY: &'static [&'static str] = &["id"];
        const COLUMNS: &'static [Column] = &[];

        fn decode(_: &[String], _: &[Option<String>]) -> Result<Self, DecodeError> {
            Ok(SalesItem)
        }
    }

    /// A handler of `T` that records the `id`s or the tables it is handed.
    type Seen = Arc<Mutex<Vec<String>>>;

    fn recorder<T: ReplicatedTable + Send + 'static>(seen: &Seen, tag: &'static str) -> impl TableHandler<T> {
        let seen = Arc::clone(seen);
        handler_fn(move |_op: TypedOp<T>| {
            seen.lock().unwrap().push(tag.to_owned());
            async { Ok(()) }
        })
    }

    /// A handler that implements `insert` and `snapshot` separately.
    struct SnapshotAware(Seen);

    #[async_trait]
    impl TableHandler<Item> for SnapshotAware {
        async fn insert(&self, row: Item) -> Result<(), ConsumerError> {
            self.0.lock().unwrap().push(format!("insert {}", row.id));
            Ok(())
        }

        async fn snapshot(&self, row: Item) -> Result<(), ConsumerError> {
            self.0.lock().unwrap().push(format!("snapshot {}", row.id));
            Ok(())
        }
    }

    /// A record with the `pgkafka.snapshot` header reaches `snapshot`; without it, `insert`; a
    /// handler implementing only `insert` gets both.
    #[tokio::test]
    async fn snapshot_rows_reach_the_snapshot_method_which_defaults_to_insert() {
        use crate::consumer::{call_handler, SnapshotKind};
        let seen = Seen::default();
        let router = Router::new().route(SnapshotAware(Arc::clone(&seen)));
        call_handler("shop", 0, 1, Some(SnapshotKind::Initial), router.handle_message(&insert("items", "1"))).await.unwrap();
        call_handler("shop", 0, 2, None, router.handle_message(&insert("items", "2"))).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), ["snapshot 1", "insert 2"]);

        struct InsertOnly(Seen);
        #[async_trait]
        impl TableHandler<Item> for InsertOnly {
            async fn insert(&self, row: Item) -> Result<(), ConsumerError> {
                self.0.lock().unwrap().push(format!("insert {}", row.id));
                Ok(())
            }
        }
        let seen = Seen::default();
        let router = Router::new().route(InsertOnly(Arc::clone(&seen)));
        call_handler("shop", 0, 3, Some(SnapshotKind::Backfill), router.handle_message(&insert("items", "3"))).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), ["insert 3"]);
    }

    fn insert(table: &str, id: &str) -> ReplicationOp {
        ReplicationOp {
            table_name: table.into(),
            col_names: vec!["id".into()],
            lsn: 1,
            seq_id: 0,
            op: Op::Insert(vec![Some(id.into())]),
        }
    }

    #[test]
    fn a_table_routed_twice_is_reported_by_validate_with_its_name() {
        let seen = Seen::default();
        let once = Router::new().route::<Item>(recorder(&seen, "a")).route::<SalesItem>(recorder(&seen, "b"));
        once.validate().unwrap();

        let twice = Router::new().route::<Item>(recorder(&seen, "a")).route::<Item>(recorder(&seen, "b"));
        let err = twice.validate().unwrap_err();
        assert!(matches!(&err, ConsumerError::Config(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "invalid consumer configuration: table items is routed to more than one handler; route each table once"
        );
        assert_eq!(twice.topics(), ["shop"], "the first route stays");

        let both = IdempotentRouter::new()
            .route::<SalesItem>(handler_fn_idem())
            .route::<Item>(handler_fn_idem())
            .route::<SalesItem>(handler_fn_idem())
            .route::<Item>(handler_fn_idem())
            .route::<Item>(handler_fn_idem());
        let err = both.validate().unwrap_err();
        assert!(err.to_string().contains("tables items, sales.items are each routed to more than one handler"), "{err}");

        // A router handing unrouted ops to another router validates that one too.
        let outer = Router::new().route::<SalesItem>(recorder(&seen, "b")).fallback(twice);
        assert!(matches!(outer.validate(), Err(ConsumerError::Config(_))));
    }

    fn handler_fn_idem<T: ReplicatedTable + Send + 'static>() -> impl IdempotentTableHandler<T> {
        struct Nothing;
        #[async_trait]
        impl<T: ReplicatedTable + Send + 'static> IdempotentTableHandler<T> for Nothing {}
        Nothing
    }

    #[tokio::test]
    async fn ops_go_to_the_route_of_their_schema_and_table() {
        let seen = Seen::default();
        let items = Arc::clone(&seen);
        let router = Router::new()
            .route(handler_fn(move |op: TypedOp<Item>| {
                items.lock().unwrap().push(format!("public {}", op.change.row().id));
                async { Ok(()) }
            }))
            .route::<SalesItem>(recorder(&seen, "sales"));
        for (table, id) in [("items", "1"), ("public.items", "2"), ("sales.items", "3")] {
            router.handle_message(&insert(table, id)).await.unwrap();
        }
        assert_eq!(*seen.lock().unwrap(), ["public 1", "public 2", "sales"]);
        assert_eq!(router.topics(), ["shop"]);
        let map = router.topic_map();
        assert_eq!(map.len(), 2);
        assert_eq!(map["sales.items"].partition_key, ["id"]);
        assert_eq!(format!("{router:?}"), r#"Router { tables: ["items", "sales.items"], unknown_tables: "fail" }"#);

        let err = router.handle_message(&insert("items", "one")).await.unwrap_err();
        assert!(matches!(err, ConsumerError::Decode(DecodeError::InvalidValue { .. })), "{err:?}");
    }

    #[tokio::test]
    async fn unrouted_tables_fail_are_skipped_or_fall_back() {
        let seen = Seen::default();
        let op = insert("other.items", "1");

        let strict = Router::new().route::<Item>(recorder(&seen, "item"));
        let err = strict.handle_message(&op).await.unwrap_err();
        assert!(matches!(&err, ConsumerError::UnhandledTable { table } if table == "other.items"), "{err:?}");

        Router::new().route::<Item>(recorder(&seen, "item")).ignore_unknown_tables().handle_message(&op).await.unwrap();
        assert!(seen.lock().unwrap().is_empty());

        struct Raw(Seen);
        #[async_trait]
        impl BasicApplication for Raw {
            async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
                self.0.lock().unwrap().push(op.table_name.clone());
                Ok(())
            }
        }
        let with_fallback = Router::new().route::<Item>(recorder(&seen, "item")).fallback(Raw(Arc::clone(&seen)));
        with_fallback.handle_message(&op).await.unwrap();
        with_fallback.handle_message(&insert("items", "2")).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), ["other.items", "item"]);
    }
}
