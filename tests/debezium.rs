//! Reading topics written by Debezium's PostgreSQL connector: the recorded events of
//! `tests/fixtures/debezium/` decoded (`fixtures`, no servers needed), and an idempotent consumer
//! applying a topic of them exactly once across SIGKILLs (`consume`), and a basic consumer
//! detecting the format of each record in a topic holding both (`detect`).

mod consume;
mod detect;
mod fixtures;

use pgkafka::ReplicationOp;
use serde_json::Value;

/// The folder of the recorded events.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/debezium");

/// A fixture file's text.
fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// One record of `stream.jsonl`: the partition Debezium wrote it to, its key and value (`None`:
/// a tombstone), as the bytes Kafka Connect's JSON converter writes.
struct StreamRecord {
    partition: i32,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

/// The records of `stream.jsonl`, in the order Debezium emitted them.
fn stream() -> Vec<StreamRecord> {
    fixture("stream.jsonl")
        .lines()
        .map(|line| {
            // Re-serialised from a `Value`, whose object members serde_json sorts: the bytes differ
            // from the file's, the columns' order must then come from the schema.
            let record: Value = serde_json::from_str(line).unwrap();
            let value = match &record["value"] {
                Value::Null => None,
                value => Some(raw_member(line, "value").unwrap_or_else(|| value.to_string()).into_bytes()),
            };
            StreamRecord {
                partition: i32::try_from(record["partition"].as_i64().unwrap()).unwrap(),
                key: record["key"].to_string().into_bytes(),
                value,
            }
        })
        .collect()
}

/// The text of the member `"name": {...}` of a one-line JSON object, as written (member order
/// kept), when it is the last member.
fn raw_member(line: &str, name: &str) -> Option<String> {
    let marker = format!("\"{name}\": ");
    let start = line.find(&marker)? + marker.len();
    let text = line.get(start..line.len().checked_sub(1)?)?;
    serde_json::from_str::<Value>(text).ok().map(|_| text.to_owned())
}

/// The changes of `stream.jsonl` as pgkafka's own producer writes them, with the partition and
/// offset each was read at: `(partition, offset, op)`.
fn expected_ops() -> Vec<(i32, i64, ReplicationOp)> {
    fixture("stream.expected.jsonl")
        .lines()
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).unwrap();
            let partition = i32::try_from(value["partition"].as_i64().unwrap()).unwrap();
            let offset = value["offset"].as_i64().unwrap();
            let object = value.as_object_mut().unwrap();
            object.remove("partition");
            object.remove("offset");
            (partition, offset, serde_json::from_value(value).unwrap())
        })
        .collect()
}
