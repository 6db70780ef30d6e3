#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs and starts PostgreSQL (wal_level=logical) and a
# Kafka-protocol broker, runs every test of the workspace against them, and stops what it started.
# Set PGKAFKA_TEST_DATABASE_URL / PGKAFKA_TEST_BROKERS to use servers of your own (see README).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
with_services

# Each feature on its own must compile: a consumer-only service never builds the replication client.
cargo check -p pgkafka --no-default-features --features producer
cargo check -p pgkafka --no-default-features --features consumer
cargo check -p pgkafka --no-default-features --features derive
cargo build --workspace --all-targets
# Integration tests wait on servers, not on the CPU: run more of them at once than there are cores.
# The disruption test pauses the broker and restarts PostgreSQL under everyone's feet, so it runs
# on its own afterwards.
status=0
RUST_TEST_THREADS=${RUST_TEST_THREADS:-6} cargo test --workspace --no-fail-fast "$@" -- --skip producer::disruption || status=$?
cargo test -p pgkafka-tests --test integration "$@" -- producer::disruption || status=$?
exit $status
