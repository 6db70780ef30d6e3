//! pgkafka's integration tests: one binary, against the real PostgreSQL and Kafka-protocol broker
//! that `scripts/services.sh` starts (or the servers named by `PGKAFKA_TEST_*`).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod cli;
mod consumer;
mod debezium;
mod foundation;
mod producer;
mod typed;
