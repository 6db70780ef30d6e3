//! Snapshots of published tables into their topics: reading tables in key order
//! ([`chunk`]) and the durable progress and signal table ([`control`]).

// Used by the initial snapshot and the backfill, which build on them.
#[allow(dead_code)]
pub(crate) mod chunk;
#[allow(dead_code)]
pub(crate) mod control;
pub(crate) mod window;
