//! A producer in a child process (`tests/bin/producer_child.rs`), for tests that SIGKILL it or
//! stop it with SIGTERM, and the configuration it is started with.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What `producer_child` runs: passed as JSON in `PGKAFKA_CHILD_CONFIG`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChildConfig {
    pub database_url: String,
    pub brokers: String,
    pub slot: String,
    pub publication: String,
    pub topic_map: HashMap<String, pgkafka::TopicInfo>,
    pub status_interval_ms: u64,
    pub reconnect_backoff_max_ms: u64,
}

impl ChildConfig {
    /// A child producer on the test servers for `slot`, `publication` and `topic_map`, reporting
    /// its confirmed position every `status_interval_ms` and reconnecting at most
    /// `reconnect_backoff_max_ms` apart.
    pub fn on_test_servers(
        slot: &str,
        publication: &str,
        topic_map: &HashMap<String, pgkafka::TopicInfo>,
        status_interval_ms: u64,
        reconnect_backoff_max_ms: u64,
    ) -> Self {
        Self {
            database_url: crate::env().database_url.clone(),
            brokers: crate::env().brokers.clone(),
            slot: slot.to_owned(),
            publication: publication.to_owned(),
            topic_map: topic_map.clone(),
            status_interval_ms,
            reconnect_backoff_max_ms,
        }
    }
}

/// A producer in a child process (see `tests/bin/producer_child.rs`). Dropping it kills it.
#[derive(Debug)]
pub struct ChildProducer {
    child: Child,
}

impl ChildProducer {
    /// Starts the child producer binary `program` (in an integration test:
    /// `env!("CARGO_BIN_EXE_producer_child")`); its log goes to `log`.
    pub fn spawn(program: &str, config: &ChildConfig, log: impl AsRef<Path>) -> Self {
        Self::spawn_with_env(program, config, log, &[])
    }

    /// [`spawn`](Self::spawn) with more environment variables (`PGKAFKA_CHILD_SNAPSHOT`,
    /// `PGKAFKA_CHILD_SNAPSHOT_CHUNK_ROWS`, `PGKAFKA_CHILD_BACKFILL_CHUNK`: see `tests/bin/producer_child.rs`).
    pub fn spawn_with_env(program: &str, config: &ChildConfig, log: impl AsRef<Path>, env: &[(&str, &str)]) -> Self {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("child log");
        let child = Command::new(program)
            .env("PGKAFKA_CHILD_CONFIG", serde_json::to_string(config).unwrap())
            .env("RUST_LOG", std::env::var("PGKAFKA_CHILD_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("child log"))
            .stderr(file)
            .spawn()
            .expect("cannot start producer_child");
        Self { child }
    }

    /// Whether it has exited (and how).
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("child status")
    }

    /// SIGKILL, and reap it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (graceful shutdown) and wait for it to exit.
    pub async fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                return status;
            }
            assert!(Instant::now() < deadline, "the child producer did not exit within {timeout:?} of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildProducer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
