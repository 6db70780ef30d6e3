//! Sources of rows that are not changes streamed from the slot: tables read in key order, in
//! chunks, and published as snapshot rows consistent with the stream.

pub(crate) mod window;
