//! Typed routers handling ops that went through the real broker, alone and under the basic and
//! idempotent consumers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgkafka::typed::{handler_fn, IdempotentRouter, IdempotentTableHandler, Router, TableHandler};
use pgkafka::{
    async_trait::async_trait, BasicApplication, Change, Consumer, ConsumerError, DecodeError, IdempotentApplication,
    Lsn, ReplicatedTable, ReplicationOp, TypedOp,
};
use pgkafka_tests::consumer_task::RunningConsumer;
use pgkafka_tests::{create_topic, env, kafka_config, read_topic, unique_name};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{Postgres, Transaction};

#[derive(ReplicatedTable, Debug, Clone, PartialEq)]
#[replicated(table = "inventory", topic = "inventory_topic", partition_key = [organization_id])]
pub(super) struct Inventory {
    #[replicated(column = "org_id")]
    organization_id: i64,
    sku: String,
    quantity: Option<i32>,
}

#[derive(ReplicatedTable, Debug, Clone, PartialEq)]
#[replicated(table = "orders", schema = "sales", topic = "orders_topic")]
pub(super) struct Order {
    id: i64,
    total_cents: i64,
}

/// Sends each op as JSON to `topic`, keyed like the producer keys it, and reads the topic
/// back: the ops a consumer of `topic` would get, in partition order.
async fn through_kafka(topic: &str, ops: &[ReplicationOp]) -> Vec<ReplicationOp> {
    create_topic(topic, 1).await;
    let producer: FutureProducer = kafka_config().set("acks", "all").create().unwrap();
    for op in ops {
        let key = pgkafka::key::encode_key(op.op.key_row().iter().take(1).map(Option::as_deref));
        let payload = serde_json::to_vec(op).unwrap();
        producer
            .send(FutureRecord::to(topic).key(&key).payload(&payload), Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("send failed: {e}"));
    }
    read_topic(topic).await.iter().map(|r| r.op()).collect()
}

fn op(table: &str, cols: &[&str], lsn: u64, seq_id: u64, op: pgkafka::Op) -> ReplicationOp {
    ReplicationOp {
        table_name: table.into(),
        col_names: cols.iter().map(|&c| c.to_owned()).collect(),
        lsn,
        seq_id,
        op,
    }
}

fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(str::to_owned)).collect()
}

/// Records what it is handed, by method, to check the provided `handle` dispatch.
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl TableHandler<Inventory> for Recorder {
    async fn insert(&self, row: Inventory) -> Result<(), ConsumerError> {
        self.0.lock().unwrap().push(format!("insert {} {} {:?}", row.organization_id, row.sku, row.quantity));
        Ok(())
    }
    async fn update(&self, old: Inventory, new: Inventory) -> Result<(), ConsumerError> {
        self.0.lock().unwrap().push(format!("update {:?} -> {:?}", old.quantity, new.quantity));
        Ok(())
    }
    async fn delete(&self, row: Inventory) -> Result<(), ConsumerError> {
        self.0.lock().unwrap().push(format!("delete {}", row.sku));
        Ok(())
    }
}

/// Ops of two tables (one schema-qualified, one also as `public.`) read back from Kafka: the router
/// hands each handler its typed rows, and reports its topics and topic map.
#[tokio::test]
async fn a_router_hands_typed_rows_of_each_table_to_its_handler() {
    let inv_cols = ["org_id", "sku", "quantity", "added_later"];
    let ops = through_kafka(
        &unique_name("typed_route"),
        &[
            op("inventory", &inv_cols, 10, 0, pgkafka::Op::Insert(row(&[Some("42"), Some("A-1"), Some("5"), Some("x")]))),
            op("sales.orders", &["id", "total_cents"], 10, 1, pgkafka::Op::Insert(row(&[Some("7"), Some("1999")]))),
            op(
                "inventory",
                &inv_cols,
                11,
                0,
                pgkafka::Op::Update((
                    row(&[Some("42"), Some("A-1"), Some("5"), None]),
                    row(&[Some("42"), Some("A-1"), None, None]),
                )),
            ),
            op("public.inventory", &inv_cols, 12, 0, pgkafka::Op::Delete(row(&[Some("42"), Some("A-1"), None, None]))),
        ],
    )
    .await;
    assert_eq!(ops.len(), 4);

    let inventory = Recorder::default();
    let orders: Arc<Mutex<Vec<TypedOp<Order>>>> = Arc::default();
    let seen = orders.clone();
    let router = Router::new().route::<Inventory>(inventory.clone()).route(handler_fn(move |op: TypedOp<Order>| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(op);
            Ok(())
        }
    }));
    assert_eq!(router.topics(), ["inventory_topic", "orders_topic"]);
    assert_eq!(router.topic_map(), pgkafka::topic_map![Inventory, Order]);
    for op in &ops {
        router.handle_message(op).await.unwrap();
    }
    assert_eq!(
        *inventory.0.lock().unwrap(),
        ["insert 42 A-1 Some(5)", "update Some(5) -> None", "delete A-1"]
    );
    assert_eq!(
        *orders.lock().unwrap(),
        [TypedOp { lsn: Lsn(10), seq_id: 1, change: Change::Insert(Order { id: 7, total_cents: 1999 }) }]
    );
}

/// An op of an unrouted table is a fatal `UnhandledTable` unless ignored or sent to a fallback; a
/// row that does not decode names its column; a table routed twice is a configuration error.
#[tokio::test]
async fn unknown_tables_stop_the_consumer_unless_ignored_and_bad_rows_name_their_column() {
    let ops = through_kafka(
        &unique_name("typed_unknown"),
        &[
            op("audit_log", &["id"], 1, 0, pgkafka::Op::Insert(row(&[Some("1")]))),
            op("inventory", &["org_id", "sku"], 2, 0, pgkafka::Op::Insert(row(&[Some("forty-two"), Some("A")]))),
            op("inventory", &["sku"], 3, 0, pgkafka::Op::Insert(row(&[Some("A")]))),
        ],
    )
    .await;

    let strict = Router::new().route::<Inventory>(Recorder::default());
    let err = strict.handle_message(&ops[0]).await.unwrap_err();
    assert!(matches!(&err, ConsumerError::UnhandledTable { table } if table == "audit_log"), "{err:?}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("ignore_unknown_tables"), "{err}");

    let lenient = Router::new().route::<Inventory>(Recorder::default()).ignore_unknown_tables();
    lenient.handle_message(&ops[0]).await.unwrap();

    let err = lenient.handle_message(&ops[1]).await.unwrap_err();
    assert!(!err.is_transient(), "a row that does not decode fails the same way on every retry");
    let ConsumerError::Decode(DecodeError::InvalidValue { table, column, value, target, .. }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((table.as_str(), column.as_str(), value.as_str(), *target), ("inventory", "org_id", "forty-two", "i64"));
    assert_eq!(
        err.to_string(),
        "table inventory, column org_id: cannot decode \"forty-two\" as i64: expected a bigint: invalid digit found in string"
    );

    let err = lenient.handle_message(&ops[2]).await.unwrap_err();
    assert!(
        matches!(&err, ConsumerError::Decode(DecodeError::MissingColumn { column, .. }) if column == "org_id"),
        "{err:?}"
    );

    // Tables handled dynamically go to a raw fallback application.
    struct Raw(Arc<Mutex<Vec<String>>>);
    #[async_trait]
    impl BasicApplication for Raw {
        async fn handle_message(&self, op: &ReplicationOp) -> Result<(), ConsumerError> {
            self.0.lock().unwrap().push(op.table_name.clone());
            Ok(())
        }
    }
    let raw = Arc::new(Mutex::new(Vec::new()));
    let with_fallback = Router::new().route::<Inventory>(Recorder::default()).fallback(Raw(raw.clone()));
    with_fallback.handle_message(&ops[0]).await.unwrap();
    assert_eq!(*raw.lock().unwrap(), ["audit_log"]);

    // A table routed twice is a configuration mistake, reported rather than guessed at.
    let twice = Router::new().route::<Inventory>(Recorder::default()).route::<Inventory>(Recorder::default());
    assert!(matches!(twice.validate(), Err(ConsumerError::Config(_))));
}

/// A new table for [`Mirror`] to write to; returns its name.
async fn mirror_table(pool: &sqlx::PgPool, prefix: &str) -> String {
    let table = unique_name(prefix);
    sqlx::query(&format!("CREATE TABLE {table} (org_id bigint, sku text PRIMARY KEY, quantity int)"))
        .execute(pool)
        .await
        .unwrap();
    table
}

/// Mirrors inventory rows into a table of the consumer's database, inside its transaction.
struct Mirror {
    table: String,
}

#[async_trait]
impl IdempotentTableHandler<Inventory> for Mirror {
    async fn insert(&self, tx: &mut Transaction<'_, Postgres>, item: Inventory) -> Result<(), ConsumerError> {
        if item.sku == "poison" {
            return Err(ConsumerError::fatal("poison row"));
        }
        sqlx::query(&format!("INSERT INTO {} (org_id, sku, quantity) VALUES ($1, $2, $3)", self.table))
            .bind(item.organization_id)
            .bind(&item.sku)
            .bind(item.quantity)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn delete(&self, tx: &mut Transaction<'_, Postgres>, item: Inventory) -> Result<(), ConsumerError> {
        sqlx::query(&format!("DELETE FROM {} WHERE sku = $1", self.table)).bind(&item.sku).execute(&mut **tx).await?;
        Ok(())
    }
}

/// An idempotent router's handlers write through the given transaction: a failing handler's writes
/// roll back, and an unrouted table is an error.
#[tokio::test]
async fn an_idempotent_router_writes_through_the_consumers_transaction() {
    let pool = sqlx::PgPool::connect(&env().database_url).await.unwrap();
    let table = mirror_table(&pool, "typed_mirror").await;
    let cols = ["org_id", "sku", "quantity"];
    let ops = through_kafka(
        &unique_name("typed_idem"),
        &[
            op("inventory", &cols, 1, 0, pgkafka::Op::Insert(row(&[Some("1"), Some("A"), Some("3")]))),
            op("inventory", &cols, 2, 0, pgkafka::Op::Insert(row(&[Some("1"), Some("B"), None]))),
            op("inventory", &cols, 3, 0, pgkafka::Op::Delete(row(&[Some("1"), Some("A"), None]))),
            op("inventory", &cols, 4, 0, pgkafka::Op::Insert(row(&[Some("1"), Some("poison"), None]))),
        ],
    )
    .await;
    let router = IdempotentRouter::new().route::<Inventory>(Mirror { table: table.clone() });
    assert_eq!(router.topics(), ["inventory_topic"]);
    for op in &ops[..3] {
        let mut tx = pool.begin().await.unwrap();
        router.handle_message(&mut tx, op).await.unwrap();
        tx.commit().await.unwrap();
    }
    // A failing handler leaves nothing behind once its transaction is rolled back.
    let mut tx = pool.begin().await.unwrap();
    assert!(router.handle_message(&mut tx, &ops[3]).await.is_err());
    tx.rollback().await.unwrap();

    let rows: Vec<(i64, String, Option<i32>)> =
        sqlx::query_as(&format!("SELECT org_id, sku, quantity FROM {table} ORDER BY sku")).fetch_all(&pool).await.unwrap();
    assert_eq!(rows, [(1, "B".to_owned(), None)]);

    let mut tx = pool.begin().await.unwrap();
    let unknown = op("audit_log", &["id"], 5, 0, pgkafka::Op::Insert(row(&[Some("1")])));
    assert!(matches!(router.handle_message(&mut tx, &unknown).await, Err(ConsumerError::UnhandledTable { .. })));
    tx.rollback().await.unwrap();
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.unwrap();
}

fn consumer<A>(group: &str, topic: &str, app: A) -> Consumer<A> {
    Consumer::new(group, [topic], env().brokers.as_str(), app)
        .kafka_option("session.timeout.ms", "6000")
        .kafka_option("heartbeat.interval.ms", "500")
        .commit_interval(Duration::from_millis(200))
}

/// A typed router as the basic consumer's application: 20 inserts handled in offset order, each
/// once.
#[tokio::test]
async fn a_typed_router_runs_under_the_basic_consumer() {
    let topic = unique_name("typed_basic");
    let cols = ["org_id", "sku", "quantity"];
    let mut ops = Vec::new();
    for i in 0..20u64 {
        let sku = format!("S{i}");
        ops.push(op("inventory", &cols, 100 + i, 0, pgkafka::Op::Insert(row(&[Some("1"), Some(&sku), Some("1")]))));
    }
    through_kafka(&topic, &ops).await;

    let inventory = Recorder::default();
    let router = Router::new().route::<Inventory>(inventory.clone());
    let consumer = consumer(&unique_name("typed_basic_group"), &topic, router);
    let running = RunningConsumer::basic(consumer);
    let seen = inventory.0.clone();
    pgkafka_tests::wait_for("20 typed inserts", Duration::from_secs(60), || {
        let n = seen.lock().unwrap().len();
        async move { (n >= 20).then_some(()) }
    })
    .await;
    running.stop().await.unwrap();
    let expected: Vec<String> = (0..20).map(|i| format!("insert 1 S{i} Some(1)")).collect();
    assert_eq!(*inventory.0.lock().unwrap(), expected, "one partition: in offset order, each once");
}

/// A row whose key column does not decode: the basic consumer stops with the decode error naming
/// column and value, after handling only the rows before it.
#[tokio::test]
async fn a_row_that_does_not_decode_stops_the_basic_consumer_with_its_context() {
    let topic = unique_name("typed_poison");
    through_kafka(
        &topic,
        &[
            op("inventory", &["org_id", "sku"], 1, 0, pgkafka::Op::Insert(row(&[Some("1"), Some("fine")]))),
            op("inventory", &["org_id", "sku"], 2, 0, pgkafka::Op::Insert(row(&[Some("1.5"), Some("bad")]))),
            op("inventory", &["org_id", "sku"], 3, 0, pgkafka::Op::Insert(row(&[Some("1"), Some("never")]))),
        ],
    )
    .await;
    let inventory = Recorder::default();
    let router = Router::new().route::<Inventory>(inventory.clone());
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        consumer(&unique_name("typed_poison_group"), &topic, router).start_basic(),
    )
    .await
    .expect("the consumer should stop on its own");
    let err = result.unwrap_err();
    assert!(
        matches!(&err, ConsumerError::Decode(DecodeError::InvalidValue { column, value, .. }) if column == "org_id" && value == "1.5"),
        "{err:?}"
    );
    assert_eq!(*inventory.0.lock().unwrap(), ["insert 1 fine None"]);
}

/// A typed router under the idempotent consumer with a re-sent op: each row written once (a second
/// insert would violate the primary key).
#[tokio::test]
async fn an_idempotent_router_runs_under_the_idempotent_consumer_exactly_once() {
    let pool = sqlx::PgPool::connect(&env().database_url).await.unwrap();
    let table = mirror_table(&pool, "typed_exactly_once").await;
    let topic = unique_name("typed_idem_topic");
    let cols = ["org_id", "sku", "quantity"];
    let insert = |lsn: u64, sku: &str| op("inventory", &cols, lsn, 0, pgkafka::Op::Insert(row(&[Some("1"), Some(sku), Some("2")])));
    // The producer may re-send after a restart: lsn 2 arrives twice.
    through_kafka(&topic, &[insert(1, "A"), insert(2, "B"), insert(2, "B"), insert(3, "C")]).await;

    let state_table = unique_name("typed_state");
    let router = IdempotentRouter::new().route::<Inventory>(Mirror { table: table.clone() });
    let consumer = consumer(&unique_name("typed_idem_group"), &topic, router).state_table(state_table.clone());
    let running = RunningConsumer::idempotent(consumer, &env().database_url);
    let rows = pgkafka_tests::wait_for("3 mirrored rows", Duration::from_secs(60), || {
        let pool = pool.clone();
        let table = table.clone();
        async move {
            let rows: Vec<(String,)> =
                sqlx::query_as(&format!("SELECT sku FROM {table} ORDER BY sku")).fetch_all(&pool).await.ok()?;
            (rows.len() >= 3).then_some(rows)
        }
    })
    .await;
    running.stop().await.unwrap();
    let skus: Vec<&str> = rows.iter().map(|(s,)| s.as_str()).collect();
    // A second insert of B would have violated the primary key and stopped the consumer.
    assert_eq!(skus, ["A", "B", "C"]);
    sqlx::query(&format!("DROP TABLE {table}; DROP TABLE IF EXISTS \"{state_table}\""))
        .execute(&pool)
        .await
        .ok();
}
