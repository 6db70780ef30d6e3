//! Where the machine's CPU went during one measurement: the cores used by pgkafka, PostgreSQL,
//! the broker, the harness itself and everything else, read from `/proc`.
//!
//! On a machine of a few cores every process of a run shares the same CPUs, so a rate is bounded
//! by what the others take. A line that says "pgkafka 0.9 cores, PostgreSQL 0.6, broker 0.4,
//! machine 2.0 of 2" explains a rate that a bare number cannot, and shows when another load
//! (the "other" column) took the machine during a round.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};

/// The group of another process than the harness, by its name (`/proc/<pid>/stat`).
fn group(comm: &str) -> &'static str {
    match comm {
        "pgkafka" => "pgkafka",
        "postgres" => "postgres",
        "tansu" => "broker",
        "pg_recvlogical" | "psql" => "children",
        _ => "other",
    }
}

/// Clock ticks per second of `/proc`'s times: 100 on every Linux this runs on.
const TICKS: f64 = 100.0;

/// CPU ticks per group, with the machine's busy and total ticks, at one moment.
#[derive(Clone)]
pub(crate) struct CpuSample {
    at: Instant,
    groups: BTreeMap<&'static str, u64>,
    machine_busy: u64,
    machine_total: u64,
}

impl CpuSample {
    /// Reads `/proc` now. Each process counts its own time and that of the children it reaped,
    /// so a PostgreSQL backend's time stays counted after it exits (in the postmaster's); the
    /// harness's reaped children are a group of their own.
    pub(crate) fn now() -> Self {
        let mut groups = BTreeMap::new();
        for (pid, comm, own, reaped) in processes() {
            if pid == std::process::id() {
                // What the harness ran and waited for: `pg_recvlogical`, `psql`, and a `pgkafka`
                // that exited on its own (the snapshot runs) once it was reaped.
                *groups.entry("children").or_insert(0) += reaped;
                *groups.entry("harness").or_insert(0) += own;
            } else {
                *groups.entry(group(&comm)).or_insert(0) += own + reaped;
            }
        }
        let (machine_busy, machine_total) = machine().unwrap_or((0, 0));
        Self { at: Instant::now(), groups, machine_busy, machine_total }
    }

    /// The cores each group used between `self` and `later` (CPU seconds over wall seconds),
    /// the machine's busy cores, and the machine's core count.
    pub(crate) fn cores_until(&self, later: &CpuSample) -> Value {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let mut out = serde_json::Map::new();
        for (name, ticks) in &later.groups {
            // Processes that exited and were reaped by a process outside the group are lost;
            // a group never goes below zero.
            let used = ticks.saturating_sub(self.groups.get(name).copied().unwrap_or(0));
            out.insert((*name).to_owned(), json!(used as f64 / TICKS / secs));
        }
        let busy = later.machine_busy.saturating_sub(self.machine_busy) as f64;
        let total = later.machine_total.saturating_sub(self.machine_total) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        out.insert("machine".into(), json!(if total > 0.0 { busy / total * cores } else { f64::NAN }));
        out.insert("cores".into(), json!(cores));
        Value::Object(out)
    }
}

/// (pid, name, utime + stime, cutime + cstime) of every process.
fn processes() -> Vec<(u32, String, u64, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The name is in parentheses and may hold spaces: the fields follow the last ')'.
            let (head, tail) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let fields: Vec<&str> = tail.split_whitespace().collect();
            // After the name: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
            let tick = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            Some((pid, comm, tick(14) + tick(15), tick(16) + tick(17)))
        })
        .collect()
}

/// (busy, total) ticks of all CPUs from `/proc/stat`.
fn machine() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    let total: u64 = values.iter().take(8).sum();
    Some((total.saturating_sub(idle), total))
}

/// The cores each thread of process `pid` used over `secs` seconds of its life, summed by thread
/// name (librdkafka's broker threads, tokio's workers, the main thread): which of them is
/// saturated tells what bounds the process.
pub(crate) fn threads(pid: u32, secs: f64) -> Value {
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            let Some((head, tail)) = stat.rsplit_once(')') else { continue };
            let Some((_, name)) = head.split_once('(') else { continue };
            let fields: Vec<&str> = tail.split_whitespace().collect();
            let tick = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // librdkafka names broker threads after the broker ("rdk:broker1", "rdk:broker-1"): one group.
            let name = if name.starts_with("rdk:broker") { "rdk:broker*".to_owned() } else { name.to_owned() };
            *by_name.entry(name).or_insert(0) += tick(14) + tick(15);
        }
    }
    Value::Object(by_name.into_iter().map(|(name, ticks)| (name, json!(ticks as f64 / TICKS / secs.max(1e-9)))).collect())
}
