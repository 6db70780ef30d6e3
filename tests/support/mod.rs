//! What pgkafka's integration tests share: the servers to talk to, unique names, topics, and
//! reading a topic to its end. Tests state their scenario; the plumbing lives here.
//!
//! The servers come from the environment `scripts/services.sh up` writes to `.services/env`
//! (`scripts/test.sh` exports it). Missing servers fail the test with what to run; nothing skips.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::ClientConfig;

pub mod disrupt;
pub mod kafka_proxy;
pub mod producing;
pub mod reference;

/// Where the test servers are.
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// PostgreSQL connection string of a role that may create publications and slots.
    pub database_url: String,
    /// The same server over TLS with SCRAM password auth, when the scripts started it.
    pub scram_database_url: Option<String>,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Data directory and binaries of the local PostgreSQL, when the scripts started it.
    pub pg_data: Option<String>,
    pub pg_bin: Option<String>,
    /// Process id of the local broker, when the scripts started it.
    pub broker_pid: Option<i32>,
}

/// The test servers, read once.
pub fn env() -> &'static TestEnv {
    static ENV: OnceLock<TestEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut vars: HashMap<String, String> = HashMap::new();
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../.services/env");
        if let Ok(text) = std::fs::read_to_string(file) {
            for line in text.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    vars.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        // Variables set in the process win over the file.
        for (k, v) in std::env::vars() {
            if k.starts_with("PGKAFKA_TEST_") {
                vars.insert(k, v);
            }
        }
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let missing = |what: &str| -> ! {
            panic!(
                "{what} is not set. Run the suite with scripts/test.sh, or start the local services \
                 with `scripts/services.sh up` first, or point PGKAFKA_TEST_DATABASE_URL and \
                 PGKAFKA_TEST_BROKERS at servers of your own."
            )
        };
        TestEnv {
            database_url: get("PGKAFKA_TEST_DATABASE_URL")
                .unwrap_or_else(|| missing("PGKAFKA_TEST_DATABASE_URL")),
            scram_database_url: get("PGKAFKA_TEST_SCRAM_DATABASE_URL"),
            brokers: get("PGKAFKA_TEST_BROKERS").unwrap_or_else(|| missing("PGKAFKA_TEST_BROKERS")),
            pg_data: get("PGKAFKA_TEST_PG_DATA"),
            pg_bin: get("PGKAFKA_TEST_PG_BIN"),
            broker_pid: get("PGKAFKA_TEST_BROKER_PID").and_then(|p| p.parse().ok()),
        }
    })
}

/// A name no other test, run or process uses: `prefix_<pid>_<time>_<counter>`, lower case, so it
/// is a valid slot, publication, table, topic and group name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
    format!(
        "{}_{}_{}_{}",
        prefix.to_lowercase(),
        std::process::id(),
        micros % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A connected PostgreSQL client; its connection task runs on the current runtime.
pub async fn pg_client() -> tokio_postgres::Client {
    pg_client_for(&env().database_url).await
}

/// A connected PostgreSQL client for the given connection string (no TLS).
pub async fn pg_client_for(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL at {}: {e}", redact(url)));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// `url` with any password replaced by `***`, for messages.
pub use pgkafka::redact;

/// librdkafka settings every test client uses: the test brokers and short group timeouts, so a
/// consumer group joins in about 3 s instead of 23 s.
pub fn kafka_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &env().brokers)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("topic.metadata.refresh.interval.ms", "1000");
    config
}

/// Creates `topic` with `partitions` partitions and waits until its metadata shows them all.
pub async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        kafka_config().create().expect("cannot create a Kafka admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot create topic {topic}: {e}"));
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("cannot create topic {name}: {code}"));
    }
    let consumer: BaseConsumer = kafka_config().create().expect("cannot create a Kafka consumer");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32 == partitions))
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "topic {topic} did not show {partitions} partitions in 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One Kafka record, as read back by a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

impl Record {
    /// The value decoded as a ReplicationOp.
    pub fn op(&self) -> pgkafka::ReplicationOp {
        let value = self.value.as_deref().expect("record without a value");
        serde_json::from_slice(value).unwrap_or_else(|e| {
            panic!(
                "partition {} offset {}: not a ReplicationOp ({e}): {}",
                self.partition,
                self.offset,
                String::from_utf8_lossy(value)
            )
        })
    }

    /// The key as UTF-8 text.
    pub fn key_text(&self) -> Option<String> {
        self.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned())
    }
}

/// Everything in `topic` right now, sorted by (partition, offset): every partition read from its
/// start until nothing new came for 2 s. The brokers' high watermarks are not trusted (Tansu can
/// report a stale one after pipelined produce requests, see `producing::read_topics`).
pub async fn read_topic(topic: &str) -> Vec<Record> {
    producing::read_topics(&[topic.to_owned()]).await.into_iter().map(|(_, record)| record).collect()
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Logs of the code under test go to the test's output (shown for failing tests).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}
