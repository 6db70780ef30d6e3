//! Snapshots of published tables into their topics: reading tables in key order
//! ([`chunk`]), the durable progress and signal table ([`control`]), and on-demand backfills
//! while streaming ([`backfill`], consistent with the stream through the DBLog [`window`]).

pub(crate) mod backfill;
// Used by the initial snapshot and the backfill, which build on them.
#[allow(dead_code)]
pub(crate) mod chunk;
#[allow(dead_code)]
pub(crate) mod control;
pub(crate) mod window;
