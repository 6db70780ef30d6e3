//! Snapshots of published tables into their topics: reading tables in key order
//! ([`chunk`]).

// Used by the initial snapshot and the backfill, which build on it.
#[allow(dead_code)]
pub(crate) mod chunk;
