#!/usr/bin/env bash
# The benchmark harness: brings up the local services, measures pgkafka against the limits of
# PostgreSQL (pg_recvlogical) and Kafka (a raw rdkafka client) on the same workload, and writes
# docs/benchmarks.md with docs/benchmarks.png. Takes about 10 minutes on 2 cores.
#
#   scripts/bench.sh                    1,000,000 rows, 1,000 per transaction, 3 partitions
#   BENCH_ROWS=200000 scripts/bench.sh  a smaller run
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
with_services

python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib >&2

cargo build --release -p pgkafka --features cli --bin pgkafka
cargo build --release -p pgkafka-examples --example bench
mkdir -p docs
BENCH_OUT=docs/benchmarks.json target/release/examples/bench
python3 scripts/bench_report.py docs/benchmarks.json docs/benchmarks.md docs/benchmarks.png
echo "wrote docs/benchmarks.md and docs/benchmarks.png"
