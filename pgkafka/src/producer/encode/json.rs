//! The pgkafka format: the JSON [`ReplicationOp`](pgkafka_common::ReplicationOp) pgkafka's
//! consumers read, keyed by the JSON array of the partition-key values.

use super::{RowOp, ValueFormat};

/// The JSON [`ReplicationOp`](pgkafka_common::ReplicationOp) consumers read.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonValue;

impl ValueFormat for JsonValue {
    fn write_value(&self, op: &RowOp<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        serde_json::to_writer(out, op).map_err(|e| e.to_string())
    }
}
