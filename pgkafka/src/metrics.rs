//! Every metric pgkafka records, with its kind, labels and help text: the one list that code,
//! the README's metrics table and dashboards are checked against.
//!
//! pgkafka records through the [`metrics`](https://docs.rs/metrics) facade; install the recorder
//! of your choice (the `pgkafka` binary serves Prometheus). Call [`describe`] once after
//! installing it to attach the help texts.
//!
//! ```
//! assert!(pgkafka::metrics::ALL.iter().any(|m| m.name == pgkafka::metrics::PRODUCER_RECORDS_ACKED.name));
//! ```

/// What a metric measures over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of observed values.
    Histogram,
}

/// One metric pgkafka records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metric {
    /// The name, as a Prometheus exporter shows it.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The labels every value carries.
    pub labels: &'static [&'static str],
    /// What it measures.
    pub help: &'static str,
}

const fn metric(name: &'static str, kind: MetricKind, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind, labels, help }
}

const SLOT: &[&str] = &["slot"];
const PARTITION: &[&str] = &["topic", "partition"];
const SLOT_TABLE: &[&str] = &["slot", "table"];

/// Records handed to Kafka by the producer.
pub const PRODUCER_RECORDS_PRODUCED: Metric =
    metric("pgkafka_producer_records_produced_total", MetricKind::Counter, SLOT, "Records handed to Kafka.");
/// Records Kafka acknowledged.
pub const PRODUCER_RECORDS_ACKED: Metric =
    metric("pgkafka_producer_records_acked_total", MetricKind::Counter, SLOT, "Records Kafka acknowledged.");
/// Bytes of record values handed to Kafka.
pub const PRODUCER_BYTES_PRODUCED: Metric =
    metric("pgkafka_producer_bytes_produced_total", MetricKind::Counter, SLOT, "Bytes of record values handed to Kafka.");
/// The LSN confirmed to the replication slot.
pub const PRODUCER_CONFIRMED_LSN: Metric = metric(
    "pgkafka_producer_confirmed_lsn",
    MetricKind::Gauge,
    SLOT,
    "The position confirmed to the replication slot (everything before it is in Kafka).",
);
/// WAL bytes between the server's end of WAL and the confirmed position.
pub const PRODUCER_REPLICATION_LAG: Metric = metric(
    "pgkafka_producer_replication_lag_bytes",
    MetricKind::Gauge,
    SLOT,
    "The server's WAL end minus the confirmed position, in bytes.",
);
/// Records handed to Kafka and not yet acknowledged.
pub const PRODUCER_IN_FLIGHT: Metric =
    metric("pgkafka_producer_in_flight", MetricKind::Gauge, SLOT, "Records handed to Kafka and not yet acknowledged.");
/// Replication sessions that ended and were resumed.
pub const PRODUCER_RECONNECTS: Metric = metric(
    "pgkafka_producer_reconnects_total",
    MetricKind::Counter,
    SLOT,
    "Replication sessions that ended and were resumed from the slot.",
);

/// Ops handed to the application and finished.
pub const CONSUMER_OPS_HANDLED: Metric =
    metric("pgkafka_consumer_ops_handled_total", MetricKind::Counter, PARTITION, "Ops the application handled.");
/// Ops the idempotent consumer skipped as already applied.
pub const CONSUMER_OPS_DUPLICATE: Metric = metric(
    "pgkafka_consumer_ops_duplicate_total",
    MetricKind::Counter,
    PARTITION,
    "Ops the idempotent consumer skipped because their (lsn, seq_id) was already applied.",
);
/// Ops whose handling failed for good.
pub const CONSUMER_OPS_FAILED: Metric =
    metric("pgkafka_consumer_ops_failed_total", MetricKind::Counter, PARTITION, "Ops whose handling failed with a fatal error.");
/// Retries after transient errors.
pub const CONSUMER_RETRIES: Metric =
    metric("pgkafka_consumer_retries_total", MetricKind::Counter, PARTITION, "Retries of an op or batch after a transient error.");
/// Records that are not valid ops.
pub const CONSUMER_INVALID_MESSAGES: Metric = metric(
    "pgkafka_consumer_invalid_messages_total",
    MetricKind::Counter,
    PARTITION,
    "Records that could not be decoded as ops (stopped on, skipped or dead-lettered).",
);
/// Records without a row change, passed over (Debezium tombstones, transaction boundaries, heartbeats).
pub const CONSUMER_RECORDS_SKIPPED: Metric = metric(
    "pgkafka_consumer_records_skipped_total",
    MetricKind::Counter,
    PARTITION,
    "Records without a row change passed over: tombstones, transaction boundaries, heartbeats.",
);
/// Ops per idempotent batch transaction.
pub const CONSUMER_BATCH_SIZE: Metric =
    metric("pgkafka_consumer_batch_size", MetricKind::Histogram, PARTITION, "Ops per handled batch.");
/// Records between the last handled one and the partition's end.
pub const CONSUMER_LAG: Metric = metric(
    "pgkafka_consumer_lag",
    MetricKind::Gauge,
    PARTITION,
    "Records from the last handled one to the partition's end (from librdkafka statistics).",
);

/// Rows a backfill read from a table.
pub const PRODUCER_BACKFILL_ROWS: Metric = metric(
    "pgkafka_producer_backfill_rows_total",
    MetricKind::Counter,
    SLOT_TABLE,
    "Rows a backfill read from the table (Kafka acknowledged their chunk).",
);
/// Chunks a backfill read from a table.
pub const PRODUCER_BACKFILL_CHUNKS: Metric = metric(
    "pgkafka_producer_backfill_chunks_total",
    MetricKind::Counter,
    SLOT_TABLE,
    "Chunks a backfill read from the table (Kafka acknowledged them).",
);
/// How far a table's backfill is.
pub const PRODUCER_BACKFILL_PROGRESS: Metric = metric(
    "pgkafka_producer_backfill_progress",
    MetricKind::Gauge,
    SLOT_TABLE,
    "Rows read by the table's backfill over the planner's row estimate (1 when finished).",
);

/// Every metric pgkafka records.
pub const ALL: &[Metric] = &[
    PRODUCER_RECORDS_PRODUCED,
    PRODUCER_RECORDS_ACKED,
    PRODUCER_BYTES_PRODUCED,
    PRODUCER_CONFIRMED_LSN,
    PRODUCER_REPLICATION_LAG,
    PRODUCER_IN_FLIGHT,
    PRODUCER_RECONNECTS,
    PRODUCER_BACKFILL_ROWS,
    PRODUCER_BACKFILL_CHUNKS,
    PRODUCER_BACKFILL_PROGRESS,
    CONSUMER_OPS_HANDLED,
    CONSUMER_OPS_DUPLICATE,
    CONSUMER_OPS_FAILED,
    CONSUMER_RETRIES,
    CONSUMER_INVALID_MESSAGES,
    CONSUMER_RECORDS_SKIPPED,
    CONSUMER_BATCH_SIZE,
    CONSUMER_LAG,
];

/// Attaches every metric's help text to the installed recorder.
pub fn describe() {
    for metric in ALL {
        match metric.kind {
            MetricKind::Counter => ::metrics::describe_counter!(metric.name, metric.help),
            MetricKind::Gauge => ::metrics::describe_gauge!(metric.name, metric.help),
            MetricKind::Histogram => ::metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

#[cfg(any(feature = "producer", feature = "consumer"))]
impl Metric {
    /// This counter, labelled by `slot`.
    #[cfg(feature = "producer")]
    pub(crate) fn slot_counter(&self, slot: &str) -> ::metrics::Counter {
        ::metrics::counter!(self.name, "slot" => slot.to_owned())
    }

    /// This gauge, labelled by `slot`.
    #[cfg(feature = "producer")]
    pub(crate) fn slot_gauge(&self, slot: &str) -> ::metrics::Gauge {
        ::metrics::gauge!(self.name, "slot" => slot.to_owned())
    }

    /// This counter, labelled by `slot` and `table`.
    #[cfg(feature = "producer")]
    pub(crate) fn table_counter(&self, slot: &str, table: &str) -> ::metrics::Counter {
        ::metrics::counter!(self.name, "slot" => slot.to_owned(), "table" => table.to_owned())
    }

    /// This gauge, labelled by `slot` and `table`.
    #[cfg(feature = "producer")]
    pub(crate) fn table_gauge(&self, slot: &str, table: &str) -> ::metrics::Gauge {
        ::metrics::gauge!(self.name, "slot" => slot.to_owned(), "table" => table.to_owned())
    }

    /// This counter, labelled by `topic` and `partition`.
    #[cfg(feature = "consumer")]
    pub(crate) fn partition_counter(&self, topic: &str, partition: i32) -> ::metrics::Counter {
        ::metrics::counter!(self.name, "topic" => topic.to_owned(), "partition" => partition.to_string())
    }

    /// This gauge, labelled by `topic` and `partition`.
    #[cfg(feature = "consumer")]
    pub(crate) fn partition_gauge(&self, topic: &str, partition: i32) -> ::metrics::Gauge {
        ::metrics::gauge!(self.name, "topic" => topic.to_owned(), "partition" => partition.to_string())
    }

    /// This histogram, labelled by `topic` and `partition`.
    #[cfg(feature = "consumer")]
    pub(crate) fn partition_histogram(&self, topic: &str, partition: i32) -> ::metrics::Histogram {
        ::metrics::histogram!(self.name, "topic" => topic.to_owned(), "partition" => partition.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    /// The README's metrics table lists exactly the metrics recorded, with their kinds.
    #[test]
    fn the_readme_lists_every_metric_and_no_other() {
        let readme = include_str!("../../README.md");
        for metric in ALL {
            let row = readme.lines().find(|line| line.starts_with(&format!("| `{}` |", metric.name)));
            let row = row.unwrap_or_else(|| panic!("README's metrics table has no row for {}", metric.name));
            let kind = format!("{:?}", metric.kind).to_lowercase();
            assert!(row.contains(&kind), "README row for {} does not say {kind}: {row}", metric.name);
        }
        let listed = readme.lines().filter(|line| line.starts_with("| `pgkafka_")).count();
        assert_eq!(listed, ALL.len(), "README's metrics table has rows for metrics pgkafka does not record");
    }
}
