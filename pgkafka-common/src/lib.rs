//! Types and pure logic shared by the pgkafka runtime and the `ReplicatedTable` derive.
//!
//! - [`ReplicationOp`], [`Op`], [`Row`], [`TopicInfo`]: the JSON wire format, byte-compatible with
//!   the earlier library whose records may already sit in your topics.
//! - [`Lsn`]: PostgreSQL log sequence numbers, shown the way `psql` shows them (`16/B374D848`).
//! - [`debezium`]: Debezium PostgreSQL change events decoded into [`ReplicationOp`]s.
//! - [`headers`]: the names of the origin headers (system id, timeline, slot) on every record.
//! - [`ident`]: how records name tables (`t`, `schema.t`) and how SQL identifiers are quoted.
//! - [`key`]: the Kafka message key built from partition-key column values.
//! - [`pgoutput`]: a decoder for the messages of PostgreSQL's `pgoutput` logical decoding plugin.
//! - [`text`]: parsing PostgreSQL's text output of a value into Rust types ([`text::FromPgText`]).
//! - [`ReplicatedTable`], [`DecodeError`], [`TypedOp`]: typed rows, as `#[derive(ReplicatedTable)]`
//!   generates them.

mod lsn;
mod table;
mod wire;

pub mod debezium;
pub mod headers;
pub mod ident;
pub mod key;
pub mod pgoutput;
pub mod text;

pub use lsn::{Lsn, ParseLsnError};
pub use table::{Change, Column, DecodeError, ReplicatedTable, RowDecoder, TypedOp, MAX_QUOTED_VALUE_CHARS};
pub use wire::{Op, OpKind, ReplicationOp, Row, TopicInfo};
