//! The format of a topic's records (pgkafka's `ReplicationOp` JSON or Debezium's change events)
//! and the reading of one record value into an op, a record to pass over, or an invalid record.

use std::collections::HashMap;

use pgkafka_common::debezium::{self, DebeziumError, Decoded, Positions, Skipped};

use super::SnapshotKind;
use crate::ReplicationOp;

/// The format of a topic's record values, set per topic with [`Consumer::record_format`](super::Consumer::record_format).
///
/// Either way the application receives [`ReplicationOp`]s; see the README's "Reading Debezium
/// topics" for what a Debezium event becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecordFormat {
    /// Each record is read as pgkafka's `ReplicationOp` first and, when it is not one, as a
    /// Debezium event. A record without a value is a tombstone and is passed over. The default.
    #[default]
    Detect,
    /// pgkafka's `ReplicationOp` only: anything else, a record without a value included, is
    /// invalid.
    Pgkafka,
    /// Debezium PostgreSQL change events only (Kafka Connect JSON, with or without schemas).
    Debezium,
}

/// The formats of the consumer's topics.
#[derive(Debug, Clone, Default)]
pub(crate) struct Formats {
    per_topic: HashMap<String, RecordFormat>,
    positions: Positions,
}

impl Formats {
    pub(crate) fn new(per_topic: &[(String, RecordFormat)], positions: Positions) -> Self {
        Self { per_topic: per_topic.iter().cloned().collect(), positions }
    }

    /// How the records of `topic` are read.
    pub(crate) fn reader(&self, topic: &str) -> Reader {
        Reader { format: self.per_topic.get(topic).copied().unwrap_or_default(), positions: self.positions }
    }
}

/// How one topic's records are read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader {
    format: RecordFormat,
    positions: Positions,
}

/// What a record value holds.
#[derive(Debug)]
pub(crate) enum Read {
    /// An op, and whether the record itself says it is a snapshot row (a Debezium `r` event; a
    /// pgkafka record says so in its `pgkafka.snapshot` header instead).
    Op(ReplicationOp, Option<SnapshotKind>),
    /// No row change: a tombstone, a transaction boundary, a heartbeat.
    Skipped(Skipped),
    /// Not a record this topic may hold; the reason names what is wrong.
    Invalid(String),
}

impl Reader {
    /// Reads the value of the record at `offset` (`None`: the record has no value).
    pub(crate) fn read(&self, value: Option<&[u8]>, offset: i64) -> Read {
        match (self.format, value) {
            (RecordFormat::Pgkafka, None) => Read::Invalid("the record has no value".to_owned()),
            (RecordFormat::Pgkafka, Some(bytes)) => pgkafka(bytes).unwrap_or_else(Read::Invalid),
            (RecordFormat::Debezium, _) => match debezium::decode(value, offset, self.positions) {
                Ok(decoded) => decoded.into(),
                Err(e) => Read::Invalid(e.to_string()),
            },
            (RecordFormat::Detect, None) => Read::Skipped(Skipped::Tombstone),
            (RecordFormat::Detect, Some(bytes)) => pgkafka(bytes).unwrap_or_else(|not_pgkafka| {
                match debezium::decode(value, offset, self.positions) {
                    Ok(decoded) => decoded.into(),
                    // Neither: the pgkafka reason, the format most topics hold.
                    Err(DebeziumError::NotDebezium(_)) => Read::Invalid(not_pgkafka),
                    Err(e) => Read::Invalid(e.to_string()),
                }
            }),
        }
    }
}

fn pgkafka(bytes: &[u8]) -> Result<Read, String> {
    serde_json::from_slice::<ReplicationOp>(bytes).map(|op| Read::Op(op, None)).map_err(|e| e.to_string())
}

impl From<Decoded> for Read {
    fn from(decoded: Decoded) -> Self {
        match decoded {
            // Debezium's snapshot rows (initial or incremental) are handed on as initial-snapshot
            // rows: both are reads of the current row, which is what a `snapshot` handler expects.
            Decoded::Change(change) => Read::Op(change.op, change.snapshot.then_some(SnapshotKind::Initial)),
            Decoded::Skipped(skipped) => Read::Skipped(skipped),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    const PGKAFKA: &[u8] = br#"{"table_name":"t","col_names":["id"],"lsn":5,"seq_id":0,"op":{"Insert":["1"]}}"#;
    const DEBEZIUM: &[u8] = br#"{"before":null,"after":{"id":1},"source":{"schema":"public","table":"t","lsn":9,"sequence":"[\"4\",\"9\"]"},"op":"c","transaction":{"id":"1:9","total_order":1}}"#;

    fn reader(format: RecordFormat) -> Reader {
        Formats::new(&[("topic".to_owned(), format)], Positions::default()).reader("topic")
    }

    #[test]
    fn detect_reads_either_format_and_passes_tombstones_over() {
        let detect = reader(RecordFormat::Detect);
        let Read::Op(ours, _) = detect.read(Some(PGKAFKA), 0) else { panic!() };
        let Read::Op(theirs, _) = detect.read(Some(DEBEZIUM), 0) else { panic!() };
        assert_eq!((ours.op, ours.lsn), (theirs.op, 5));
        assert!(matches!(detect.read(None, 0), Read::Skipped(Skipped::Tombstone)));
        // Neither format: the error explains what a ReplicationOp lacks.
        let Read::Invalid(reason) = detect.read(Some(br#"{"x":1}"#), 0) else { panic!() };
        assert!(reason.contains("table_name"), "{reason}");
    }

    #[test]
    fn a_fixed_format_refuses_the_other() {
        assert!(matches!(reader(RecordFormat::Pgkafka).read(Some(DEBEZIUM), 0), Read::Invalid(_)));
        assert!(matches!(reader(RecordFormat::Pgkafka).read(None, 0), Read::Invalid(_)));
        assert!(matches!(reader(RecordFormat::Debezium).read(Some(PGKAFKA), 0), Read::Invalid(_)));
        assert!(matches!(reader(RecordFormat::Debezium).read(None, 0), Read::Skipped(Skipped::Tombstone)));
        // Topics without a setting are detected.
        let other = Formats::new(&[("topic".to_owned(), RecordFormat::Pgkafka)], Positions::default()).reader("other");
        assert!(matches!(other.read(Some(DEBEZIUM), 0), Read::Op(..)));
    }
}
