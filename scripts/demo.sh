#!/usr/bin/env bash
# The main job, end to end: starts the local services (PostgreSQL with wal_level=logical and a
# Kafka-protocol broker), runs a producer and a typed consumer on a demo table, applies a few
# transactions of inserts, updates and deletes, prints each change as the consumer receives it,
# then stops everything. Safe to run again.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
with_services
cargo run --quiet -p pgkafka-examples --example demo
