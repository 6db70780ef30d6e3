//! The Kafka record headers the producer puts on every record: where the change came from.
//!
//! The JSON value stays as it is; these headers let a reader tell which database cluster,
//! timeline and replication slot wrote a record, so a restore, a failover to another cluster or
//! a second producer on the same topic can be detected instead of silently mixed in. Producer and
//! consumers name them only through these constants. Values are UTF-8 text.
//!
//! ```
//! use pgkafka_common::headers;
//! assert_eq!(headers::SYSTEM_ID, "pgkafka.system_id");
//! ```

/// The database system identifier (`IDENTIFY_SYSTEM`'s `systemid`), in decimal: one per cluster,
/// kept by physical standbys, new after `initdb` or a logical restore.
pub const SYSTEM_ID: &str = "pgkafka.system_id";

/// The server's timeline id when the session started, in decimal: it grows with each promotion.
pub const TIMELINE: &str = "pgkafka.timeline";

/// The name of the replication slot the record was read from.
pub const SLOT: &str = "pgkafka.slot";

/// Every origin header, in the order the producer writes them.
pub const ALL: [&str; 3] = [SYSTEM_ID, TIMELINE, SLOT];

/// Set on records of a snapshot, not of a streamed change: `initial` for the initial snapshot
/// taken when the producer created its slot, `backfill` for an on-demand backfill. Such a
/// record's value is an ordinary `Insert`. Not one of the origin headers in [`ALL`].
pub const SNAPSHOT: &str = "pgkafka.snapshot";
