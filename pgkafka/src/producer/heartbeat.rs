//! Debezium heartbeat records: when the next one is due, and the record itself (the logical
//! server name as key, the time and the position confirmed to the slot as value).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgkafka_common::Lsn;

use super::encode::debezium::heartbeat_record;
use super::encode::{system_clock, Record};
use super::format::{DebeziumOptions, Formats};
use super::routes::Routes;
use super::watermark::TxId;

/// The ledger id of records outside every transaction: the ledger knows no such transaction,
/// so it neither counts them in flight nor waits for them before confirming.
pub(crate) const UNTRACKED: TxId = TxId::MAX;

/// The heartbeat of one session.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    options: Arc<DebeziumOptions>,
    topic: String,
    interval: Duration,
    next: Instant,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Heartbeat {
    /// The heartbeat the formats of `routes`' topics ask for, if any; the first is due one
    /// interval from now.
    pub(crate) fn new(formats: &Formats, routes: &Routes) -> Option<Self> {
        let topics = routes.topics();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let (options, interval) = formats.heartbeat(&topics)?;
        Some(Self {
            topic: options.heartbeat_topic(),
            options,
            interval,
            next: Instant::now() + interval,
            key: Vec::new(),
            value: Vec::new(),
        })
    }

    /// The heartbeat record, if one is due at `now`, saying `confirmed`.
    pub(crate) fn due(&mut self, confirmed: Lsn, now: Instant) -> Option<Record<'_>> {
        if now < self.next {
            return None;
        }
        self.next = now + self.interval;
        self.key.clear();
        self.value.clear();
        let now_ms = system_clock() / 1000;
        heartbeat_record(&self.options, confirmed, now_ms, &mut self.key, &mut self.value);
        Some(Record { table_name: "(heartbeat)", topic: &self.topic, key: &self.key, value: Some(&self.value), timestamp_ms: now_ms })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// One record per interval, none in between, each saying the position it is given.
    #[test]
    fn a_heartbeat_is_due_once_per_interval() {
        let start = Instant::now();
        let mut options = DebeziumOptions::new("server");
        options.schemas = false;
        let interval = Duration::from_secs(5);
        let mut heartbeat = Heartbeat {
            options: Arc::new(options),
            topic: "__debezium-heartbeat.server".into(),
            interval,
            next: start + interval,
            key: Vec::new(),
            value: Vec::new(),
        };
        assert!(heartbeat.due(Lsn(1), start).is_none());
        let record = heartbeat.due(Lsn(0x500), start + interval).unwrap();
        assert_eq!((record.topic, record.key), ("__debezium-heartbeat.server", &br#"{"serverName":"server"}"#[..]));
        let value: serde_json::Value = serde_json::from_slice(record.value.unwrap()).unwrap();
        assert_eq!(value["lsn"], 0x500);
        assert!(heartbeat.due(Lsn(0x500), start + interval + Duration::from_secs(4)).is_none());
        assert!(heartbeat.due(Lsn(0x600), start + interval * 2).is_some());
    }
}
