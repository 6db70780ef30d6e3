//! The producer against real PostgreSQL and a real broker.
//!
//! Every test builds its own tables, publication, topics and slot, and compares what reached
//! Kafka with what PostgreSQL itself says the publication's changes are: a second `pgoutput` slot
//! peeked over SQL and decoded by the test support (`pgkafka_tests::reference`), independently of
//! pgkafka's decoder. Hand-written expectations back that up where the values matter.
//!
//! `disruption` pauses the broker and restarts PostgreSQL: it holds the services exclusively
//! against the other producer tests of this binary (`pgkafka_tests::disrupt`).

mod backfill;
mod crash;
mod debezium;
mod debezium_snapshot;
mod disruption;
mod lifecycle;
mod refused;
mod replayed_ddl;
mod security;
mod slot_loss;
mod snapshot;
mod startup;
mod stream;
mod wal;

use std::collections::HashMap;
use std::time::Duration;

use pgkafka::{Producer, ProducerBuilder, ReplicationOp, TopicInfo};
use pgkafka_tests::delivery::{verify_delivery, Delivery, Route};
use pgkafka_tests::producer_task::RunningProducer;
use pgkafka_tests::slots::drop_slot;
use pgkafka_tests::topics::{read_topics, wait_delivered};
use pgkafka_tests::reference::{all_ops, create_reference_slot, reference_transactions, RefTx};
use pgkafka_tests::{create_topic, env, pg_client, unique_name, Record};

/// One table of a scenario.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// The topic-map key and records' `table_name` (`name` or `schema.name`).
    pub name: String,
    /// `CREATE TABLE ...` (any other setup statements may follow, `;`-separated).
    pub create: String,
    /// The topic map's `partition_key`.
    pub partition_key: Vec<String>,
    /// The columns the message key must be made of (the primary key when `partition_key` is empty).
    pub key_columns: Vec<String>,
    pub partitions: i32,
}

impl Table {
    pub(crate) fn new(name: &str, create: String, partition_key: &[&str], partitions: i32) -> Self {
        let key: Vec<String> = partition_key.iter().map(|s| (*s).to_owned()).collect();
        Self { name: name.to_owned(), create, partition_key: key.clone(), key_columns: key, partitions }
    }
}

/// Tables in a publication with topics, a slot name, and a reference slot.
pub(crate) struct Scenario {
    pub pg: tokio_postgres::Client,
    pub publication: String,
    pub slot: String,
    pub reference: Option<String>,
    pub topic_map: HashMap<String, TopicInfo>,
    pub routes: HashMap<String, Route>,
    pub topics: Vec<String>,
    tables: Vec<String>,
    extra_cleanup: Vec<String>,
    cleaned: bool,
    _services: Option<tokio::sync::RwLockReadGuard<'static, ()>>,
}

impl Scenario {
    /// Creates the tables (REPLICA IDENTITY FULL), a publication of all of them, and a topic each.
    /// Holds the services shared (see `pgkafka_tests::disrupt`) until dropped.
    pub(crate) async fn new(prefix: &str, tables: Vec<Table>) -> Self {
        let services = pgkafka_tests::disrupt::shared_services().await;
        let mut scenario = Self::unlocked(prefix, tables).await;
        scenario._services = Some(services);
        scenario
    }

    /// Like [`Self::new`], for the test that holds the services exclusively.
    pub(crate) async fn unlocked(prefix: &str, tables: Vec<Table>) -> Self {
        let mut scenario = Self::bare(prefix).await;
        let pg = &scenario.pg;
        for table in &tables {
            pg.batch_execute(&table.create).await.unwrap_or_else(|e| panic!("{}: {e}", table.create));
            pg.batch_execute(&format!("ALTER TABLE {} REPLICA IDENTITY FULL", table.name)).await.unwrap();
            scenario.tables.push(table.name.clone());
        }
        let list: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        pg.batch_execute(&format!("CREATE PUBLICATION {} FOR TABLE {}", scenario.publication, list.join(", ")))
            .await
            .unwrap();
        for table in &tables {
            let topic = unique_name(&format!("{prefix}_topic"));
            create_topic(&topic, table.partitions).await;
            scenario.topic_map.insert(table.name.clone(), TopicInfo::new(topic.clone(), table.partition_key.clone()));
            scenario
                .routes
                .insert(table.name.clone(), Route { topic: topic.clone(), key_columns: table.key_columns.clone() });
            scenario.topics.push(topic);
        }
        scenario
    }

    /// Names only: nothing created.
    pub(crate) async fn bare(prefix: &str) -> Self {
        Self {
            pg: pg_client().await,
            publication: unique_name(&format!("{prefix}_pub")),
            slot: unique_name(&format!("{prefix}_slot")),
            reference: None,
            topic_map: HashMap::new(),
            routes: HashMap::new(),
            topics: Vec::new(),
            tables: Vec::new(),
            extra_cleanup: Vec::new(),
            cleaned: false,
            _services: None,
        }
    }

    /// Drops `sql` objects at cleanup (e.g. `SCHEMA x CASCADE`).
    pub(crate) fn drop_at_cleanup(&mut self, what: String) {
        self.extra_cleanup.push(what);
    }

    pub(crate) fn builder(&self) -> ProducerBuilder {
        Producer::builder(
            env().database_url.clone(),
            env().brokers.clone(),
            self.slot.clone(),
            self.publication.clone(),
            self.topic_map.clone(),
        )
    }

    pub(crate) fn producer(&self) -> Producer {
        self.builder().build()
    }

    /// Starts a default producer, waits until it streams, and creates the reference slot.
    pub(crate) async fn start(&mut self) -> RunningProducer {
        let running = RunningProducer::start(self.producer(), &self.slot).await;
        self.ensure_reference().await;
        running
    }

    /// Creates the reference slot if there is none yet (after the producer's slot exists).
    pub(crate) async fn ensure_reference(&mut self) {
        if self.reference.is_none() {
            self.reference = Some(create_reference_slot(&self.pg).await);
        }
    }

    /// The transactions the reference slot holds.
    pub(crate) async fn expected(&self) -> Vec<RefTx> {
        let reference = self.reference.as_ref().expect("no reference slot");
        reference_transactions(&self.pg, reference, &self.publication).await
    }

    /// Waits until every change of the reference slot arrived, then checks the delivery.
    pub(crate) async fn delivered(&self, timeout: Duration) -> (Vec<RefTx>, Vec<(String, Record)>, Delivery) {
        let txs = self.expected().await;
        let ops = all_ops(&txs);
        let records = wait_delivered(&self.topics, &ops, timeout).await;
        let delivery = verify_delivery(&records, &ops, &self.routes);
        (txs, records, delivery)
    }

    /// Like [`Self::delivered`], and nothing arrived twice.
    pub(crate) async fn delivered_once(&self, timeout: Duration) -> (Vec<RefTx>, Vec<ReplicationOp>) {
        let (txs, records, delivery) = self.delivered(timeout).await;
        assert_eq!(delivery.duplicates, 0, "changes arrived more than once without any failure");
        let mut ops: Vec<ReplicationOp> = records.iter().map(|(_, r)| r.op()).collect();
        ops.sort_by_key(|op| (op.lsn, op.seq_id));
        (txs, ops)
    }

    /// Everything in the topics now.
    pub(crate) async fn read_all(&self) -> Vec<(String, Record)> {
        read_topics(&self.topics).await
    }

    /// Drops the slots (once released), the publication and the tables. Call after the producer stopped.
    pub(crate) async fn cleanup(mut self) {
        self.cleaned = true;
        forget_snapshot_runs(&self.pg, &self.slot).await;
        drop_slot(&self.pg, &self.slot).await;
        if let Some(reference) = &self.reference {
            drop_slot(&self.pg, reference).await;
        }
        let _ = self.pg.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", self.publication)).await;
        for table in &self.tables {
            let _ = self.pg.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
        }
        for what in &self.extra_cleanup {
            let _ = self.pg.batch_execute(&format!("DROP {what}")).await;
        }
    }
}

/// Deletes `slot`'s snapshot and backfill runs from the default control table, if there is one.
pub(crate) async fn forget_snapshot_runs(pg: &tokio_postgres::Client, slot: &str) {
    let _ = pg.execute("DELETE FROM public.pgkafka_snapshots WHERE slot_name = $1", &[&slot]).await;
}

/// Waits until `slot`'s initial snapshot is done (every table's run `done` in the default control
/// table). A slot shows as active while it is still being created, before its consistent point:
/// changes written before then belong to the snapshot, not to the stream.
pub(crate) async fn wait_snapshot_done(pg: &tokio_postgres::Client, slot: &str, tables: i64) {
    pgkafka_tests::wait_for(&format!("the initial snapshot of slot {slot}"), Duration::from_secs(60), || async {
        let done: Option<i64> = pg
            .query_one(
                "SELECT count(*) FROM public.pgkafka_snapshots WHERE slot_name = $1 AND kind = 'initial' AND state = 'done'",
                &[&slot],
            )
            .await
            .ok()
            .map(|row| row.get(0));
        (done == Some(tables)).then_some(())
    })
    .await;
}

/// A table `(id int PRIMARY KEY, v text)` with a unique name, keyed by `id`; returns its name too.
pub(crate) fn id_table(prefix: &str, partitions: i32) -> (String, Table) {
    let t = unique_name(prefix);
    let mut table = Table::new(&t, format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)"), &[], partitions);
    table.key_columns = vec!["id".into()];
    (t, table)
}

/// A row from literals: `row(&[Some("1"), None])`.
pub(crate) fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(str::to_owned)).collect()
}

impl Drop for Scenario {
    /// A test that panicked before `cleanup()` must not leave slots behind: they would retain WAL
    /// for good. End whatever streams from them and drop them (best effort, off the runtime).
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let mut slots = vec![self.slot.clone()];
        slots.extend(self.reference.clone());
        let url = env().database_url.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                let Ok((pg, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else { return };
                tokio::spawn(connection);
                for slot in slots {
                    for _ in 0..50 {
                        let _ = pg
                            .execute(
                                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                                 WHERE slot_name = $1 AND active",
                                &[&slot],
                            )
                            .await;
                        let gone = pg
                            .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                            .await
                            .map(|row| row.is_none())
                            .unwrap_or(true);
                        if gone || pg.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.is_ok() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            });
        })
        .join();
    }
}
