"""Turns the harness's docs/benchmarks.json into docs/benchmarks.md and a PNG chart."""
import json
import os
import platform
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, md_path, png_path = sys.argv[1:4]
r = json.load(open(src))
w = r["workload"]


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return "?"


cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
mem = sh("free -g | awk '/Mem:/ {print $2}'")
pg = sh(f"{os.environ.get('PGKAFKA_TEST_PG_BIN', '')}/postgres --version")
limit = min(r["pg_recvlogical_rows_per_sec"], r["rdkafka_producer_msgs_per_sec"])
ratio_p = r["pgkafka_producer_rows_per_sec"] / limit
ratio_c = r["basic_consumer_msgs_per_sec"] / r["rdkafka_consumer_msgs_per_sec"]
lat = r["latency_ms"]


def ok(cond):
    return "met" if cond else "**missed**"


rows = [
    ("1. PostgreSQL limit: pg_recvlogical (pgoutput)", f"{r['pg_recvlogical_rows_per_sec']:,.0f} rows/s", ""),
    ("2. Kafka limit: raw rdkafka producer, same size/settings", f"{r['rdkafka_producer_msgs_per_sec']:,.0f} msgs/s", ""),
    ("3. pgkafka producer, slot to acked in Kafka", f"{r['pgkafka_producer_rows_per_sec']:,.0f} rows/s",
     f"{ratio_p:.2f} of min(1,2); target >= 0.8: {ok(ratio_p >= 0.8)}"),
    ("4. producer peak RSS, one {:,}-row transaction".format(w["rows"]), f"{r['one_transaction_peak_rss_mib']:.1f} MiB",
     f"target <= 64 MB: {ok(r['one_transaction_peak_rss_mib'] * 1.048576 <= 64)}; {r['one_transaction_rows_per_sec']:,.0f} rows/s"),
    ("   producer peak RSS, transactions of {:,}".format(w["rows_per_tx"]), f"{r['pgkafka_producer_peak_rss_mib_batched']:.1f} MiB", ""),
    ("5. raw rdkafka consumer (JSON decode)", f"{r['rdkafka_consumer_msgs_per_sec']:,.0f} msgs/s", ""),
    ("   pgkafka basic consumer, no-op handler", f"{r['basic_consumer_msgs_per_sec']:,.0f} msgs/s",
     f"{ratio_c:.2f} of raw; target >= 0.8: {ok(ratio_c >= 0.8)}"),
    ("6. idempotent consumer, insert per op, batching on", f"{r['idempotent_consumer_ops_per_sec_batched']:,.0f} ops/s",
     f"target >= 5,000: {ok(r['idempotent_consumer_ops_per_sec_batched'] >= 5000)}"),
    ("   idempotent consumer, batching off", f"{r['idempotent_consumer_ops_per_sec_unbatched']:,.0f} ops/s", ""),
    (f"7. COMMIT to handle_message at {lat['tps']} tx/s", f"p50 {lat['p50']} ms, p99 {lat['p99']} ms",
     f"target p99 <= 100 ms: {ok(lat['p99'] <= 100)}; {lat['samples']} samples, max {lat['max']} ms"),
]

with open(md_path, "w") as f:
    f.write("# Benchmarks\n\n")
    f.write("Produced by `scripts/bench.sh` (the harness is `examples/bench.rs`); numbers from one run.\n\n")
    f.write(f"- Machine: {platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem} GiB memory, {platform.system()} {platform.release()}\n")
    f.write(f"- PostgreSQL: {pg}, on the same machine, fsync off (throwaway test cluster)\n")
    f.write("- Broker: Tansu (Kafka wire protocol, memory storage) on the same machine\n")
    f.write(f"- Workload: {w['rows']:,} inserted rows of a {w['columns']}-column table, {w['rows_per_tx']:,} rows per transaction, "
            f"topic of {w['partitions']} partitions, JSON values of {r['record_value_bytes_avg']:.0f} bytes on average\n")
    f.write(f"- Idempotent consumer runs: {w.get('idempotent_ops', '?'):,} ops each, over the same {w['partitions']} partitions; latency: {w.get('latency_secs', '?')} s of single-row transactions\n")
    f.write("- Command: `scripts/bench.sh` (defaults above; BENCH_ROWS, BENCH_ROWS_PER_TX, BENCH_PARTITIONS, BENCH_IDEMPOTENT_OPS, BENCH_LATENCY_TPS override)\n\n")
    f.write("| measurement | result | against the limit / target |\n|---|---|---|\n")
    for name, value, note in rows:
        f.write(f"| {name} | {value} | {note} |\n")
    f.write("\n![throughput against the limits](benchmarks.png)\n")

labels = ["pg_recvlogical", "rdkafka\nproducer", "pgkafka\nproducer", "rdkafka\nconsumer", "pgkafka basic\nconsumer", "idempotent\n(batched)"]
values = [r["pg_recvlogical_rows_per_sec"], r["rdkafka_producer_msgs_per_sec"], r["pgkafka_producer_rows_per_sec"],
          r["rdkafka_consumer_msgs_per_sec"], r["basic_consumer_msgs_per_sec"], r["idempotent_consumer_ops_per_sec_batched"]]
colors = ["#999999", "#999999", "#1f77b4", "#999999", "#1f77b4", "#1f77b4"]
fig, ax = plt.subplots(figsize=(9, 4.5))
bars = ax.bar(labels, values, color=colors)
for bar, value in zip(bars, values):
    ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{value/1000:.0f}k", ha="center", va="bottom")
ax.set_ylabel("rows or messages per second")
ax.set_title("pgkafka (blue) against the limits of PostgreSQL and Kafka (grey), same workload")
fig.tight_layout()
fig.savefig(png_path, dpi=100)
