#!/usr/bin/env bash
# The benchmark harness: brings up the local services, measures pgkafka against the limits of
# PostgreSQL (pg_recvlogical, a plain sqlx insert loop) and Kafka (raw rdkafka clients) on the same
# workload, each BENCH_REPEATS times interleaved, and writes docs/benchmarks.json,
# docs/benchmarks.md and docs/benchmarks.png (drawn in Rust: nothing is installed). Takes about
# 10 minutes on 2 cores.
#
#   scripts/bench.sh                                  1,000,000 rows, 1,000 per transaction, 3 partitions, 3 rounds
#   BENCH_ROWS=200000 BENCH_REPEATS=2 scripts/bench.sh   a smaller run
#   BENCH_PERF_DIR=/tmp/perf scripts/bench.sh         also `perf record -g` every pgkafka producer run there
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
with_services

cargo build --release -p pgkafka --features cli --bin pgkafka
cargo build --release -p pgkafka-examples --example bench --example bench_report
mkdir -p docs
target="${CARGO_TARGET_DIR:-target}"
BENCH_OUT=docs/benchmarks.json "$target/release/examples/bench"
"$target/release/examples/bench_report" docs/benchmarks.json docs/benchmarks.md docs/benchmarks.png
