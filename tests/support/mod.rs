//! What pgkafka's integration tests and its benchmark share: the servers to talk to, unique
//! names, clients, waiting; the modules hold the rest, one concern each. Tests state their
//! scenario; the plumbing lives here.
//!
//! The servers come from the environment `scripts/services.sh up` writes to `.services/env`
//! (`scripts/test.sh` exports it). Missing servers fail the test with what to run; nothing skips.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;

pub mod consumer_task;
pub mod consuming;
pub mod delivery;
pub mod disrupt;
pub mod kafka_proxy;
pub mod producer_process;
pub mod producer_task;
pub mod reference;
pub mod rng;
pub mod slots;
pub mod topics;

pub use topics::{create_topic, delete_topic, read_topic, Record};

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

/// librdkafka settings naming the test brokers and nothing else: librdkafka's defaults, for
/// clients that measure (the benchmark's baselines).
pub fn kafka_brokers_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &env().brokers);
    config
}

/// librdkafka settings every test client uses: the test brokers and short group timeouts, so a
/// consumer group joins in about 3 s instead of 23 s.
pub fn kafka_config() -> ClientConfig {
    let mut config = kafka_brokers_config();
    config
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("topic.metadata.refresh.interval.ms", "1000");
    config
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
    let _ = tracing_subscriber::fmt().with_env_filter(env_filter("info")).with_test_writer().try_init();
}

/// Logs of a test's child process (`tests/bin/*`) go to its stderr, filtered by `RUST_LOG`, else
/// at `default_level`.
pub fn init_child_tracing(default_level: &str) {
    tracing_subscriber::fmt().with_env_filter(env_filter(default_level)).with_writer(std::io::stderr).init();
}

fn env_filter(default_level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level))
}
