//! Consumers on the bad day: a handler that panics, a zombie frozen inside its transaction, ops
//! from a new origin whose LSNs went backwards, and a state table of the wrong shape. Each fault is
//! made the way production makes it (a real panic, SIGSTOP/SIGCONT of a consumer process, records
//! carrying the producer's origin headers, a hand-made table) and each test shows the consumer
//! either heals or stops loudly, losing and doubling nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgkafka::consumer::ShutdownHandle;
use pgkafka::sqlx::{Postgres, Transaction};
use pgkafka::typed::{Router, TableHandler};
use pgkafka::{async_trait::async_trait, ConsumerError, IdempotentApplication, Lsn, ReplicatedTable, ReplicationOp};
use pgkafka_tests::{create_topic, env, init_tracing, pg_client, unique_name, wait_for};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use pgkafka_tests::consuming::{assert_exactly_once_in_order, create_sink_table, sink_count, tag_and_i, tagged_op as op, Sink};

use super::{committed, feeder, send, stream_op, test_consumer};

const CHILD: &str = env!("CARGO_BIN_EXE_consumer_fault_child");

/// Stops a consumer when dropped, also when the test fails: its poll thread would otherwise keep
/// the test's runtime, and the test, from ending.
struct StopOnDrop(ShutdownHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// Waits for `task` to end, or fails the test naming the fault that should have stopped it.
async fn stops_within<T>(task: tokio::task::JoinHandle<T>, limit: Duration, fault: &str) -> T {
    match tokio::time::timeout(limit, task).await {
        Ok(joined) => joined.unwrap(),
        Err(_) => panic!("the consumer was still running {limit:?} after {fault}"),
    }
}

fn assert_names(error: &str, parts: &[&str]) {
    for part in parts {
        assert!(error.contains(part), "the error does not name {part:?}: {error}");
    }
}

// ---------------------------------------------------------------------------------------------
// Item 5: a panic in a handler

/// A basic consumer in its own process whose handler panics once, on op 7 of partition 0 (of 20):
/// the consumer stops with an error naming topic, partition, offset and the panic message, the
/// handler never sees an op after it, and the committed offset does not move past it. (Before the
/// fix the partition's task died silently and the process kept running: the test timed out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_basic_handler_stops_the_consumer_naming_the_op() {
    init_tracing();
    let (topic, group) = (unique_name("fault_panic"), unique_name("fault_panic_g"));
    create_topic(&topic, 1).await;
    send(&feeder(), &topic, &(0..20).map(|i| (0, stream_op(0, i))).collect::<Vec<_>>()).await;

    let child = tokio::process::Command::new(CHILD)
        .args(["basic-panic", &topic, &group, &env().brokers, "0", "7"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start consumer_fault_child");
    let output = match tokio::time::timeout(Duration::from_secs(40), child.wait_with_output()).await {
        Ok(output) => output.unwrap(),
        Err(_) => panic!("the consumer was still running 40 s after its handler panicked"),
    };
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "exit status {:?}; stderr: {stderr}", output.status);
    let error = stderr.lines().find(|l| l.starts_with("consumer_fault_child:")).unwrap_or_else(|| panic!("no error: {stderr}"));
    assert_names(error, &[&topic, "partition 0", "offset 7", "panicked", "handler bug at 0/7"]);
    let seen: Vec<i64> = stdout.lines().filter_map(|l| l.strip_prefix("handled 0 ")).map(|i| i.parse().unwrap()).collect();
    assert_eq!(seen, (0..=7).collect::<Vec<_>>(), "ops the handler saw");
    let offset = committed(&group, &topic, 1).await[0];
    assert!(offset <= 7, "committed offset {offset} is past the op that panicked (7)");
}

/// Panics once, after its insert, on one op; otherwise a [`Sink`].
struct PanickingSink {
    sink: Arc<Sink>,
    at: (i32, i64),
    panicked: AtomicBool,
}

#[async_trait]
impl IdempotentApplication for PanickingSink {
    async fn handle_message(&self, tx: &mut Transaction<'_, Postgres>, op: &ReplicationOp) -> Result<(), ConsumerError> {
        self.sink.handle_message(tx, op).await?;
        if tag_and_i(op).ok() == Some(self.at) && !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("handler bug at {}/{}", self.at.0, self.at.1);
        }
        Ok(())
    }
}

/// An idempotent consumer whose handler panics once, on op 7 of partition 0, after writing through
/// the transaction: `start_idempotent` returns the error naming the op and the panic, the batch's
/// writes are rolled back, and a restart applies every op exactly once, in order. (Before the fix:
/// the partition stalled and the consumer ran on; the test timed out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_idempotent_handler_stops_and_a_restart_applies_everything_once() {
    init_tracing();
    let (topic, group) = (unique_name("fault_ipanic"), unique_name("fault_ipanic_g"));
    create_topic(&topic, 2).await;
    let table = create_sink_table().await;
    send(&feeder(), &topic, &(0..20).flat_map(|i| (0..2).map(move |p| (p, stream_op(p, i)))).collect::<Vec<_>>()).await;

    let app = Arc::new(PanickingSink { sink: Arc::new(Sink::new(&table)), at: (0, 7), panicked: AtomicBool::new(false) });
    let consumer = test_consumer(&group, &topic, Arc::clone(&app)).batch_size(4);
    let _stop = StopOnDrop(consumer.shutdown_handle());
    let url = env().database_url.clone();
    let task = tokio::spawn(async move { consumer.start_idempotent(&url).await });
    let error = stops_within(task, Duration::from_secs(40), "its handler panicked").await.unwrap_err().to_string();
    assert_names(&error, &[&topic, "partition 0", "offset 7", "panicked", "handler bug at 0/7"]);
    let rows = pg_client().await.query(&format!("SELECT i FROM {table} WHERE partition_tag = 0 ORDER BY id"), &[]).await.unwrap();
    let applied: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert!(applied.iter().all(|&i| i < 7), "ops of partition 0 at or past the panic were applied: {applied:?}");

    // The same handler, which panics no more: everything exactly once.
    let consumer = test_consumer(&group, &topic, app).batch_size(4);
    let stop = StopOnDrop(consumer.shutdown_handle());
    let url = env().database_url.clone();
    let task = tokio::spawn(async move { consumer.start_idempotent(&url).await });
    wait_for("every op applied", Duration::from_secs(60), || async { (sink_count(&table).await >= 40).then_some(()) }).await;
    drop(stop);
    task.await.unwrap().unwrap();
    assert_exactly_once_in_order(&table, 2, 20).await;
}

/// The ops' rows as a typed table.
#[derive(ReplicatedTable, Debug)]
#[replicated(table = "t", partition_key = [tag])]
struct FaultRow {
    tag: i32,
    i: i64,
}

/// Records the rows it sees and panics on one.
#[derive(Default, Clone)]
struct PanickingTableHandler {
    seen: Arc<Mutex<Vec<(i32, i64)>>>,
}

#[async_trait]
impl TableHandler<FaultRow> for PanickingTableHandler {
    async fn insert(&self, row: FaultRow) -> Result<(), ConsumerError> {
        self.seen.lock().unwrap().push((row.tag, row.i));
        if (row.tag, row.i) == (0, 7) {
            panic!("typed handler bug at 0/7");
        }
        Ok(())
    }
}

/// A typed `Router` whose `TableHandler` panics on op 7: the basic consumer running it stops with
/// an error naming the op and the panic, and commits nothing past it. (Before the fix: a silent
/// stall; the test timed out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_typed_handler_stops_the_consumer_naming_the_op() {
    init_tracing();
    let (topic, group) = (unique_name("fault_tpanic"), unique_name("fault_tpanic_g"));
    create_topic(&topic, 1).await;
    send(&feeder(), &topic, &(0..20).map(|i| (0, stream_op(0, i))).collect::<Vec<_>>()).await;

    let handler = PanickingTableHandler::default();
    let consumer = test_consumer(&group, &topic, Router::new().route::<FaultRow>(handler.clone()));
    let _stop = StopOnDrop(consumer.shutdown_handle());
    let task = tokio::spawn(consumer.start_basic());
    let error = stops_within(task, Duration::from_secs(40), "its handler panicked").await.unwrap_err().to_string();
    assert_names(&error, &[&topic, "partition 0", "offset 7", "panicked", "typed handler bug at 0/7"]);
    assert_eq!(*handler.seen.lock().unwrap(), (0..=7).map(|i| (0, i)).collect::<Vec<_>>());
    let offset = committed(&group, &topic, 1).await[0];
    assert!(offset <= 7, "committed offset {offset} is past the op that panicked (7)");
}

// ---------------------------------------------------------------------------------------------
// Item 6: the zombie

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Whether the child's session has a transaction open that took locks (an xid: its row lock or
/// its inserts), idle or running.
async fn transaction_open(pid: u32) -> bool {
    let open: i64 = pg_client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND backend_xid IS NOT NULL \
             AND state IN ('idle in transaction', 'active')",
            &[&format!("pgkafka_fault_{pid}")],
        )
        .await
        .unwrap()
        .get(0);
    open > 0
}

/// An idempotent consumer process is frozen (SIGSTOP) while its batch transaction holds the
/// partition's row lock; a second member of the group (session timeout 6 s, max poll interval
/// 20 s on both) must take over and apply the rest while the zombie stays frozen. Then the zombie
/// is thawed (SIGCONT) and carries on: nothing is applied twice, nothing is missing. (Before the
/// fix the new owner waited on `SELECT ... FOR UPDATE` until the zombie was thawed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_zombie_does_not_block_its_successor_and_applies_nothing_twice() {
    const PARTITIONS: i32 = 2;
    const N: i64 = 250;
    init_tracing();
    let (topic, group) = (unique_name("fault_zombie"), unique_name("fault_zombie_g"));
    create_topic(&topic, PARTITIONS).await;
    let table = create_sink_table().await;
    let records: Vec<_> = (0..N).flat_map(|i| (0..PARTITIONS).map(move |p| (p, stream_op(p, i)))).collect();
    let end = super::as_vec(&send(&feeder(), &topic, &records).await, PARTITIONS);
    let spawn_child = || {
        tokio::process::Command::new(CHILD)
            .args(["idempotent", &topic, &group, &env().database_url, &table, &env().brokers])
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start consumer_fault_child")
    };

    let mut zombie = spawn_child();
    let pid = zombie.id().unwrap();
    wait_for("the first consumer at work", Duration::from_secs(60), || async { (sink_count(&table).await > 0).then_some(()) }).await;
    // Freeze it; keep it frozen only if its transaction is open (else thaw and try again).
    let frozen_at = wait_for("the zombie frozen inside its transaction", Duration::from_secs(20), || async {
        signal(pid, "STOP");
        if transaction_open(pid).await {
            return Some(Instant::now());
        }
        signal(pid, "CONT");
        tokio::time::sleep(Duration::from_millis(30)).await;
        None
    })
    .await;
    let before = sink_count(&table).await;

    let mut successor = spawn_child();
    // The group drops the frozen member after about 20 s here (max.poll.interval.ms); then the
    // successor must get past the zombie's row lock within a bounded time.
    wait_for("the successor's first op while the zombie is frozen", Duration::from_secs(45), || async {
        (sink_count(&table).await > before).then_some(())
    })
    .await;
    let took_over = frozen_at.elapsed();
    wait_for("every op applied while the zombie is frozen", Duration::from_secs(60), || async {
        (sink_count(&table).await >= PARTITIONS as i64 * N).then_some(())
    })
    .await;
    assert!(zombie.try_wait().unwrap().is_none(), "the zombie exited while frozen");

    signal(pid, "CONT");
    // The thawed zombie finds its session gone and rejoins; give any double apply time to land.
    tokio::time::sleep(Duration::from_secs(10)).await;
    wait_for("the group's offsets at the end", Duration::from_secs(30), || async {
        (committed(&group, &topic, PARTITIONS).await == end).then_some(())
    })
    .await;
    for child in [&mut zombie, &mut successor] {
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
    println!("the successor applied its first op {took_over:?} after the freeze");
    assert_exactly_once_in_order(&table, PARTITIONS, N).await;
}

// ---------------------------------------------------------------------------------------------
// Item 9: a new origin whose LSNs went backwards

/// Where a record's op comes from, as the producer's headers say.
struct Origin {
    system_id: &'static str,
    timeline: u32,
    slot: &'static str,
}

const CLUSTER_A: &str = "7301234567890123456";
const CLUSTER_B: &str = "7309876543210987654";

/// Sends `records` (value, origin or none) to partition 0 of `topic`, in order.
async fn send_from(producer: &FutureProducer, topic: &str, records: &[(Vec<u8>, Option<Origin>)]) {
    let mut deliveries = Vec::new();
    for (value, origin) in records {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).partition(0).key("k0").payload(value);
        if let Some(origin) = origin {
            let timeline = origin.timeline.to_string();
            record = record.headers(
                OwnedHeaders::new()
                    .insert(Header { key: "pgkafka.system_id", value: Some(origin.system_id) })
                    .insert(Header { key: "pgkafka.timeline", value: Some(timeline.as_str()) })
                    .insert(Header { key: "pgkafka.slot", value: Some(origin.slot) }),
            );
        }
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Ops `from..to` (row `[0, i]`) at LSN `base + i`, each its own transaction.
fn ops_from(from: i64, to: i64, base: u64, origin: impl Fn() -> Option<Origin>) -> Vec<(Vec<u8>, Option<Origin>)> {
    (from..to).map(|i| (op(0, i, base + i as u64, 0), origin())).collect()
}

fn cluster(system_id: &'static str, timeline: u32) -> impl Fn() -> Option<Origin> {
    move || Some(Origin { system_id, timeline, slot: "orders_slot" })
}

/// After 10 ops of cluster A, ops of cluster B (a restore into a new cluster) arrive with lower
/// LSNs: the consumer stops at the first of them with an error naming both origins and the reset
/// statement, without skipping them; after that reset a restart applies them. (Before the fix
/// they were skipped as duplicates and the consumer ran on: the test timed out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_of_a_new_cluster_with_lower_lsns_stop_the_consumer_until_reset() {
    init_tracing();
    let (topic, group) = (unique_name("fault_origin"), unique_name("fault_origin_g"));
    create_topic(&topic, 1).await;
    let table = create_sink_table().await;
    let producer = feeder();
    send_from(&producer, &topic, &ops_from(0, 10, 1_000_000, cluster(CLUSTER_A, 1))).await;

    let sink = Arc::new(Sink::new(&table));
    let consumer = test_consumer(&group, &topic, Arc::clone(&sink));
    let _stop = StopOnDrop(consumer.shutdown_handle());
    let url = env().database_url.clone();
    let task = tokio::spawn(async move { consumer.start_idempotent(&url).await });
    wait_for("cluster A's ops applied", Duration::from_secs(60), || async { (sink_count(&table).await >= 10).then_some(()) }).await;

    send_from(&producer, &topic, &ops_from(10, 15, 500, cluster(CLUSTER_B, 1))).await;
    let error = stops_within(task, Duration::from_secs(30), "ops of another cluster arrived").await.unwrap_err().to_string();
    assert_names(&error, &[&topic, "partition 0", "offset 10", CLUSTER_A, CLUSTER_B, "DELETE FROM", &group]);
    assert_eq!(sink_count(&table).await, 10, "ops of cluster B were applied or skipped: {error}");

    // What the error says to do when the new cluster is the truth now.
    pg_client()
        .await
        .execute(
            &format!("DELETE FROM {} WHERE group_id = $1 AND topic = $2 AND partition = 0", pgkafka::consumer::DEFAULT_STATE_TABLE),
            &[&group, &topic],
        )
        .await
        .unwrap();
    let consumer = test_consumer(&group, &topic, Arc::clone(&sink));
    let stop = StopOnDrop(consumer.shutdown_handle());
    let url = env().database_url.clone();
    let task = tokio::spawn(async move { consumer.start_idempotent(&url).await });
    wait_for("cluster B's ops applied", Duration::from_secs(60), || async { (sink_count(&table).await >= 15).then_some(()) }).await;
    drop(stop);
    task.await.unwrap().unwrap();
    assert_exactly_once_in_order(&table, 1, 15).await;
}

/// One partition's history: ops without origin headers (the earlier library) and their re-send
/// (skipped, as before); ops of timeline 1; ops of timeline 2 at higher LSNs (a normal failover:
/// applied) and their re-send (skipped); then ops of timeline 3 at LSNs below the stored position
/// (a failover to a standby that was behind): the consumer stops there, naming the timelines.
/// (Before the fix the last ones were skipped and the consumer ran on: the test timed out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_with_higher_lsns_goes_on_and_one_that_went_backwards_stops() {
    init_tracing();
    let (topic, group) = (unique_name("fault_tl"), unique_name("fault_tl_g"));
    create_topic(&topic, 1).await;
    let table = create_sink_table().await;
    let mut history = ops_from(0, 5, 1000, || None);
    history.extend(ops_from(0, 5, 1000, || None));
    history.extend(ops_from(5, 10, 1000, cluster(CLUSTER_A, 1)));
    history.extend(ops_from(10, 15, 1000, cluster(CLUSTER_A, 2)));
    history.extend(ops_from(10, 15, 1000, cluster(CLUSTER_A, 2)));
    history.extend(ops_from(15, 20, 900, cluster(CLUSTER_A, 3)));
    send_from(&feeder(), &topic, &history).await;

    let consumer = test_consumer(&group, &topic, Sink::new(&table));
    let _stop = StopOnDrop(consumer.shutdown_handle());
    let url = env().database_url.clone();
    let task = tokio::spawn(async move { consumer.start_idempotent(&url).await });
    let error = stops_within(task, Duration::from_secs(40), "timeline 3 went back below the stored position").await.unwrap_err().to_string();
    assert_names(&error, &[&topic, "partition 0", "offset 25", "timeline 3", "timeline 2"]);
    assert_exactly_once_in_order(&table, 1, 15).await;
}

// ---------------------------------------------------------------------------------------------
// Item 10: the state table's shape

/// Starts an idempotent consumer on `state_table` and returns what `start_idempotent` returned
/// within 20 s (a shape problem must stop it before it consumes anything).
async fn start_on_state_table(state_table: &str) -> Result<(), ConsumerError> {
    let (topic, group) = (unique_name("fault_shape"), unique_name("fault_shape_g"));
    create_topic(&topic, 1).await;
    let consumer = test_consumer(&group, &topic, Sink::new(&create_sink_table().await)).state_table(state_table);
    let _stop = StopOnDrop(consumer.shutdown_handle());
    let url = env().database_url.clone();
    let task = tokio::spawn(async move { consumer.start_idempotent(&url).await });
    match tokio::time::timeout(Duration::from_secs(20), task).await {
        Ok(joined) => joined.unwrap(),
        Err(_) => panic!("the consumer accepted the state table {state_table} and ran"),
    }
}

/// A state table without a primary key, or with `lsn` as `bigint`: `start_idempotent` refuses it
/// at once, naming the table, the column and the expected type. (Before the fix: the first ran
/// with duplicate state rows, the second failed only at the first op.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_table_of_the_wrong_shape_is_refused_at_start() {
    init_tracing();
    let pg = pg_client().await;
    let no_key = unique_name("fault_state_nokey");
    pg.batch_execute(&format!(
        "CREATE TABLE {no_key} (group_id text NOT NULL, topic text NOT NULL, partition integer NOT NULL, \
         lsn pg_lsn, seq_id numeric(20, 0), updated_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .unwrap();
    let error = start_on_state_table(&no_key).await.unwrap_err().to_string();
    assert_names(&error, &[&no_key, "primary key", "group_id, topic, partition"]);

    let bigint_lsn = unique_name("fault_state_bigint");
    pg.batch_execute(&format!(
        "CREATE TABLE {bigint_lsn} (group_id text, topic text, partition integer, lsn bigint, seq_id numeric(20, 0), \
         updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (group_id, topic, partition))"
    ))
    .await
    .unwrap();
    let error = start_on_state_table(&bigint_lsn).await.unwrap_err().to_string();
    assert_names(&error, &[&bigint_lsn, "column lsn", "pg_lsn", "bigint"]);
}

/// A state table of the earlier library's shape, holding a position: the consumer adds the origin
/// columns and goes on from that position, skipping the ops at or below it. (Before the fix the
/// columns were missing: the last assertion failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_table_of_the_earlier_shape_is_migrated_and_keeps_its_position() {
    init_tracing();
    let (topic, group) = (unique_name("fault_migrate"), unique_name("fault_migrate_g"));
    create_topic(&topic, 1).await;
    let table = create_sink_table().await;
    let state = format!("{table}_state");
    let pg = pg_client().await;
    pg.batch_execute(&format!(
        "CREATE TABLE {state} (group_id text NOT NULL, topic text NOT NULL, partition integer NOT NULL, \
         lsn pg_lsn, seq_id numeric(20, 0), updated_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (group_id, topic, partition))"
    ))
    .await
    .unwrap();
    // Ops 0..5 were applied by the earlier library.
    pg.execute(
        &format!("INSERT INTO {state} (group_id, topic, partition, lsn, seq_id) VALUES ($1, $2, 0, $3::text::pg_lsn, 0)"),
        &[&group, &topic, &Lsn(1004).to_string()],
    )
    .await
    .unwrap();
    send_from(&feeder(), &topic, &ops_from(0, 12, 1000, cluster(CLUSTER_A, 1))).await;

    let consumer = test_consumer(&group, &topic, Sink::new(&table)).state_table(&state);
    let stop = StopOnDrop(consumer.shutdown_handle());
    let url = env().database_url.clone();
    let task = tokio::spawn(async move { consumer.start_idempotent(&url).await });
    wait_for("ops 5..12 applied", Duration::from_secs(60), || async { (sink_count(&table).await >= 7).then_some(()) }).await;
    drop(stop);
    task.await.unwrap().unwrap();
    let applied: Vec<i64> =
        pg.query(&format!("SELECT i FROM {table} ORDER BY id"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(applied, (5..12).collect::<Vec<_>>());
    let columns: Vec<String> = pg
        .query("SELECT column_name::text FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position", &[&state])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(columns.iter().any(|c| c.contains("system_id")), "no origin columns were added: {columns:?}");
}
