//! Disturbing the local services on purpose: pausing the broker, restarting PostgreSQL. Only with
//! the services `scripts/services.sh` started (their pid and data directory are in `.services/env`);
//! otherwise these panic saying so. Tests that disturb the servers hold [`exclusive_services`];
//! tests that would be upset by it may hold [`shared_services`].

use std::process::Command;
use std::time::Duration;

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::env;

fn services_lock() -> &'static RwLock<()> {
    static LOCK: RwLock<()> = RwLock::const_new(());
    &LOCK
}

/// Held by tests that must not see the servers paused or restarted (within this test binary).
pub async fn shared_services() -> RwLockReadGuard<'static, ()> {
    services_lock().read().await
}

/// Held by a test that pauses or restarts a server: waits for the [`shared_services`] holders.
pub async fn exclusive_services() -> RwLockWriteGuard<'static, ()> {
    services_lock().write().await
}

fn signal(pid: i32, sig: &str) -> bool {
    Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().map(|s| s.success()).unwrap_or(false)
}

/// The broker stopped with SIGSTOP; dropping it (also on panic) sends SIGCONT.
#[derive(Debug)]
pub struct BrokerPause {
    pid: i32,
}

impl BrokerPause {
    /// Stops the local broker process.
    pub fn start() -> Self {
        let pid = env().broker_pid.unwrap_or_else(|| {
            panic!(
                "this test pauses the broker and needs the one scripts/services.sh started \
                 (PGKAFKA_TEST_BROKER_PID is not set: the suite points at brokers of your own)"
            )
        });
        assert!(signal(pid, "0"), "the broker process {pid} (PGKAFKA_TEST_BROKER_PID) is not running");
        let pause = Self { pid };
        assert!(signal(pid, "STOP"), "cannot SIGSTOP the broker {pid}");
        pause
    }

    /// Resumes it now.
    pub fn resume(self) {}
}

impl Drop for BrokerPause {
    fn drop(&mut self) {
        // Retry: leaving the broker stopped would hang every other test.
        for _ in 0..20 {
            if signal(self.pid, "CONT") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("WARNING: could not SIGCONT the broker {}; run `kill -CONT {}`", self.pid, self.pid);
    }
}

/// Restarts the local PostgreSQL (`pg_ctl restart -m fast`), waiting until it accepts connections.
pub fn restart_postgres() {
    let (data, bin) = match (&env().pg_data, &env().pg_bin) {
        (Some(data), Some(bin)) => (data.clone(), bin.clone()),
        _ => panic!(
            "this test restarts PostgreSQL and needs the cluster scripts/services.sh started \
             (PGKAFKA_TEST_PG_DATA / PGKAFKA_TEST_PG_BIN are not set: the suite points at a server of your own)"
        ),
    };
    let pg_ctl = format!("{bin}/pg_ctl");
    let log = format!("{data}/server.log");
    let args = ["-D", data.as_str(), "-l", log.as_str(), "-m", "fast", "-w", "-t", "120", "restart"];
    let as_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let output = if as_root {
        Command::new("runuser").args(["-u", "postgres", "--", pg_ctl.as_str()]).args(args).output()
    } else {
        Command::new(&pg_ctl).args(args).output()
    }
    .unwrap_or_else(|e| panic!("cannot run {pg_ctl}: {e}"));
    assert!(
        output.status.success(),
        "pg_ctl restart failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Server-wide settings changed with `ALTER SYSTEM` for one test; dropping the guard (also on
/// panic) resets them. Only for tests that hold [`exclusive_services`]: every session sees them.
#[derive(Debug)]
pub struct SystemSettings {
    names: Vec<&'static str>,
}

impl SystemSettings {
    /// Sets each `(name, value)` and reloads the configuration. Names and values are the test's
    /// own constants.
    pub async fn set(pg: &tokio_postgres::Client, settings: &[(&'static str, &str)]) -> Self {
        // The guard first, so that a failure half-way still resets what was set.
        let guard = Self { names: settings.iter().map(|(name, _)| *name).collect() };
        for (name, value) in settings {
            // ALTER SYSTEM may not share a (multi-statement, so implicit) transaction.
            pg.batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'")).await.unwrap();
        }
        pg.batch_execute("SELECT pg_reload_conf()").await.unwrap();
        guard
    }
}

impl Drop for SystemSettings {
    fn drop(&mut self) {
        // Drop cannot await, and may run while the test's runtime unwinds: reset on a thread of its own.
        let (url, names) = (env().database_url.clone(), self.names.clone());
        let reset = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let pg = crate::pg_client_for(&url).await;
                for name in &names {
                    pg.batch_execute(&format!("ALTER SYSTEM RESET {name}")).await?;
                }
                pg.batch_execute("SELECT pg_reload_conf()").await
            })
        });
        match reset.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not reset {:?}: {error}", self.names),
            Err(_) => eprintln!("could not reset {:?}: the resetting thread panicked", self.names),
        }
    }
}
