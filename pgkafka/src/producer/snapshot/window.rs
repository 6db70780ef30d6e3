//! The DBLog window of one table being backfilled: which rows of a chunk, read between a low and
//! a high watermark in the WAL, may be published at the high watermark without putting an older
//! state of a row after a newer one. Pure: keys and transaction ids in, rows out.
//!
//! The rule: a chunk row read under snapshot `S` and published at the high watermark `H` is
//! stale exactly when a transaction that changed its key was streamed before `H` but is not
//! visible in `S`; the stream then already carries (or is about to carry, before `H`) a newer
//! state than the chunk. Such rows are dropped; every other row is published. Two sets of
//! changes are marked:
//! - every change of the table streamed between the chunk's low watermark `L` and `H` (the
//!   classic DBLog window: `S` is taken after `L` was written and before `H` was);
//! - every change streamed since the table began to be watched whose transaction `S` does not
//!   see. A transaction whose commit record precedes `L` can still be invisible to a snapshot
//!   taken after `L` (the commit record is written, and with synchronous replication waited on,
//!   before the transaction shows as committed), and it is the snapshot, not the WAL order, that
//!   decides what the chunk read.
//!
//! Marks of transactions that `S` sees are forgotten at `H`: every later snapshot sees them too.
//!
//! A transaction streamed before watching began has no marks: which keys it changed is not known.
//! If `S` does not see one of those (its commit was streamed, its visibility lags: a commit still
//! waiting on a synchronous standby), the chunk cannot be judged and is read again later
//! ([`Window::high`] returns `None`). [`Unconfirmed`] remembers, while backfills are enabled, the
//! streamed transactions no snapshot has yet been seen to see, so a new window knows them.

use std::collections::HashMap;

/// The text values of a row's primary-key columns, in key order, as pgoutput and `col::text`
/// print them.
pub(crate) type Key = Vec<Option<String>>;

/// A snapshot as `pg_current_snapshot()` prints it (`xmin:xmax:xip,...`): which transactions the
/// chunk's read saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct XidSnapshot {
    xmin: u64,
    xmax: u64,
    in_progress: Vec<u64>,
}

impl XidSnapshot {
    /// Parses `pg_current_snapshot()::text`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("not a snapshot (xmin:xmax:xip,...): {text:?}");
        let mut parts = text.trim().splitn(3, ':');
        let number = |part: Option<&str>| part.and_then(|p| p.parse::<u64>().ok()).ok_or_else(bad);
        let xmin = number(parts.next())?;
        let xmax = number(parts.next())?;
        let in_progress = match parts.next() {
            None | Some("") => Vec::new(),
            Some(list) => list.split(',').map(|x| x.parse::<u64>().map_err(|_| bad())).collect::<Result<_, _>>()?,
        };
        if xmin > xmax {
            return Err(bad());
        }
        Ok(Self { xmin, xmax, in_progress })
    }

    /// A snapshot from its parts (for tests and callers that read them separately).
    #[cfg(test)]
    pub(crate) fn new(xmin: u64, xmax: u64, in_progress: Vec<u64>) -> Self {
        Self { xmin, xmax, in_progress }
    }

    /// Whether a committed transaction with the 32-bit id pgoutput's Begin carries was visible
    /// to this snapshot.
    pub(crate) fn sees(&self, xid: u32) -> bool {
        let full = widen(xid, self.xmax);
        full < self.xmin || (full < self.xmax && !self.in_progress.contains(&full))
    }
}

/// The 64-bit id of a recent 32-bit transaction id, taking the epoch from `reference` (an xid
/// of the same era: the transactions in a window are seconds apart, never 2^31 ids).
fn widen(xid: u32, reference: u64) -> u64 {
    const EPOCH: u64 = 1 << 32;
    const HALF: u64 = 1 << 31;
    let candidate = (reference & !(EPOCH - 1)) | u64::from(xid);
    if candidate > reference.saturating_add(HALF) && candidate >= EPOCH {
        candidate - EPOCH
    } else if candidate.saturating_add(HALF) < reference {
        candidate.saturating_add(EPOCH)
    } else {
        candidate
    }
}

/// One change of a watched key: its transaction, and whether it was streamed inside the window
/// of the chunk in flight (after its low watermark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    xid: u32,
    in_window: bool,
}

/// The streamed transactions that no snapshot has yet been seen to see, oldest first. Visibility
/// never goes back: once one snapshot sees a transaction, every later one does, so it is
/// forgotten. In steady state this holds only the transactions of the last moments.
#[derive(Debug, Default)]
pub(crate) struct Unconfirmed {
    xids: Vec<u32>,
    /// Whether the bound was reached and the oldest were forgotten (warned once).
    overflowed: bool,
}

impl Unconfirmed {
    /// More than this many streamed transactions that no snapshot saw yet means snapshots stopped
    /// coming (the database is unreachable); the oldest are forgotten then.
    const BOUND: usize = 1_000_000;

    /// Transaction `xid`'s changes were streamed.
    pub(crate) fn streamed(&mut self, xid: u32) {
        if self.xids.last() == Some(&xid) {
            return;
        }
        self.xids.push(xid);
        if self.xids.len() > Self::BOUND {
            if !self.overflowed {
                tracing::warn!(
                    transactions = Self::BOUND,
                    "no snapshot of the database was taken for a long time; a backfill starting now may miss a commit whose visibility lags its WAL record"
                );
                self.overflowed = true;
            }
            self.xids.drain(..Self::BOUND / 2);
        }
    }

    /// `snapshot` was taken: what it sees, every later snapshot sees.
    pub(crate) fn seen_by(&mut self, snapshot: &XidSnapshot) {
        self.xids.retain(|&xid| !snapshot.sees(xid));
    }

    /// The transactions still unconfirmed.
    pub(crate) fn xids(&self) -> &[u32] {
        &self.xids
    }
}

/// The changes of one watched table that may make a chunk row stale.
#[derive(Debug, Default)]
pub(crate) struct Window {
    marks: HashMap<Key, Vec<Mark>>,
    /// The low watermark of the chunk in flight was streamed: changes from now on are inside
    /// its window.
    low_seen: bool,
    /// Transactions streamed before watching began that no snapshot was seen to see yet.
    unwatched: Vec<u32>,
}

impl Window {
    /// Starts watching a table: call before its first low watermark is written.
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Starts watching a table, after the `unconfirmed` transactions were streamed: call before
    /// its first low watermark is written.
    pub(crate) fn after(unconfirmed: &Unconfirmed) -> Self {
        Self { unwatched: unconfirmed.xids().to_vec(), ..Self::default() }
    }

    /// The low watermark of the next chunk was streamed.
    pub(crate) fn low(&mut self) {
        self.low_seen = true;
    }

    /// A change of the row with `key` by transaction `xid` was streamed (for an update that
    /// changed the key, call it for the old and the new key).
    pub(crate) fn changed(&mut self, key: Key, xid: u32) {
        let mark = Mark { xid, in_window: self.low_seen };
        let marks = self.marks.entry(key).or_default();
        if marks.last() != Some(&mark) {
            marks.push(mark);
        }
    }

    /// The high watermark of the chunk read under `snapshot` was streamed: returns the rows that
    /// may be published there, in their order, and forgets what no later chunk needs. `None`:
    /// the snapshot misses a transaction streamed before watching began, whose keys are not
    /// known; the chunk must be read again, under a later snapshot.
    pub(crate) fn high<R>(&mut self, rows: Vec<R>, key_of: impl Fn(&R) -> Key, snapshot: &XidSnapshot) -> Option<Vec<R>> {
        self.low_seen = false;
        self.unwatched.retain(|&xid| !snapshot.sees(xid));
        if !self.unwatched.is_empty() {
            // The next read has a window of its own; what this one marked only matters if that
            // read's snapshot misses it.
            for mark in self.marks.values_mut().flatten() {
                mark.in_window = false;
            }
            return None;
        }
        let stale = |marks: &Vec<Mark>| marks.iter().any(|m| m.in_window || !snapshot.sees(m.xid));
        let fresh: Vec<R> =
            rows.into_iter().filter(|row| self.marks.get(&key_of(row)).is_none_or(|marks| !stale(marks))).collect();
        self.marks.retain(|_, marks| {
            marks.retain(|m| !snapshot.sees(m.xid));
            for mark in marks.iter_mut() {
                mark.in_window = false;
            }
            !marks.is_empty()
        });
        Some(fresh)
    }

    /// Keys currently remembered (for tests and memory bounds).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.marks.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    fn key(k: u8) -> Key {
        vec![Some(k.to_string())]
    }

    #[test]
    fn snapshots_parse_as_postgres_prints_them() {
        let s = XidSnapshot::parse("100:105:101,103").unwrap();
        assert_eq!(s, XidSnapshot::new(100, 105, vec![101, 103]));
        assert!(s.sees(99) && s.sees(100) && s.sees(102) && s.sees(104));
        assert!(!s.sees(101) && !s.sees(103) && !s.sees(105) && !s.sees(200));
        assert_eq!(XidSnapshot::parse("7:7:").unwrap(), XidSnapshot::new(7, 7, vec![]));
        for bad in ["", "1", "a:b:", "5:4:", "1:2:x"] {
            assert!(XidSnapshot::parse(bad).is_err(), "{bad}");
        }
    }

    /// pgoutput's 32-bit ids are compared in the snapshot's epoch, across a wraparound too.
    #[test]
    fn xids_are_widened_into_the_snapshots_epoch() {
        let epoch = 1u64 << 32;
        let s = XidSnapshot::new(3 * epoch + 10, 3 * epoch + 20, vec![3 * epoch + 15]);
        assert!(s.sees(5) && !s.sees(15) && !s.sees(25));
        // Just after a wraparound: an xid from the end of the previous epoch is old and seen.
        let s = XidSnapshot::new(2 * epoch + 3, 2 * epoch + 5, vec![]);
        assert!(s.sees(u32::MAX - 2));
        // Just before one: an xid from the start of the next epoch is new and unseen.
        let s = XidSnapshot::new(2 * epoch - 10, 2 * epoch - 5, vec![]);
        assert!(!s.sees(3));
    }

    #[test]
    fn rows_changed_inside_the_window_are_dropped() {
        let mut w = Window::new();
        w.changed(key(1), 50); // before the low watermark, seen by the snapshot
        w.low();
        w.changed(key(2), 60); // inside the window
        let s = XidSnapshot::new(61, 61, vec![]);
        let rows = w.high(vec![1u8, 2, 3], |r| key(*r), &s).unwrap();
        assert_eq!(rows, vec![1, 3]);
        assert_eq!(w.remembered(), 0, "marks the snapshot saw are forgotten");
    }

    /// A transaction streamed before the low watermark that the snapshot did not see (its
    /// commit record came first, its visibility later) makes the row stale too, in this chunk
    /// and in later ones until a snapshot sees it.
    #[test]
    fn a_change_the_snapshot_missed_drops_the_row_whenever_it_was_streamed() {
        let mut w = Window::new();
        w.changed(key(1), 70);
        w.low();
        let missed = XidSnapshot::new(65, 71, vec![70]);
        assert_eq!(w.high(vec![1u8, 2], |r| key(*r), &missed), Some(vec![2]));
        assert_eq!(w.remembered(), 1);
        w.low();
        assert_eq!(w.high(vec![1u8], |r| key(*r), &missed), Some(Vec::<u8>::new()));
        let seen = XidSnapshot::new(71, 71, vec![]);
        w.low();
        assert_eq!(w.high(vec![1u8], |r| key(*r), &seen), Some(vec![1]));
        assert_eq!(w.remembered(), 0);
    }

    /// A commit streamed before watching began and not yet visible (waiting on a synchronous
    /// standby) leaves the chunk undecidable until a snapshot sees it; what other snapshots
    /// already saw is not waited for.
    #[test]
    fn a_commit_streamed_before_watching_that_the_snapshot_misses_makes_the_chunk_read_again() {
        let mut unconfirmed = Unconfirmed::default();
        for xid in [40, 41, 42] {
            unconfirmed.streamed(xid);
        }
        unconfirmed.seen_by(&XidSnapshot::new(41, 43, vec![42]));
        assert_eq!(unconfirmed.xids(), &[42]);
        let mut w = Window::after(&unconfirmed);
        w.low();
        let lagging = XidSnapshot::new(42, 45, vec![42]);
        assert_eq!(w.high(vec![1u8, 2], |r| key(*r), &lagging), None);
        w.low();
        let visible = XidSnapshot::new(45, 45, vec![]);
        assert_eq!(w.high(vec![1u8, 2], |r| key(*r), &visible), Some(vec![1, 2]));
    }

    /// One chunk of a generated history, positions being indexes into the transactions.
    #[derive(Debug, Clone)]
    struct ChunkCase {
        /// Transactions streamed before the low watermark of this chunk.
        low: usize,
        /// Transactions whose commit precedes the snapshot.
        snap: usize,
        /// Transactions streamed before the high watermark.
        high: usize,
        /// Of the transactions committed just before the snapshot, those it did not see yet.
        late: Vec<bool>,
    }

    /// Transactions (key, delete?), how many were streamed before watching began, and chunks.
    fn history() -> impl Strategy<Value = (Vec<(u8, bool)>, usize, Vec<ChunkCase>)> {
        let txs = proptest::collection::vec((0..6u8, proptest::bool::weighted(0.2)), 0..40);
        txs.prop_flat_map(|txs| {
            let n = txs.len();
            let chunk = (0..=n, 0..=4usize, 0..=4usize, proptest::collection::vec(any::<bool>(), 4));
            (Just(txs), 0..=n, proptest::collection::vec(chunk, 1..5))
        })
        .prop_map(|(txs, watch_from, raw)| {
            let n = txs.len();
            let mut start = watch_from;
            let mut chunks = Vec::new();
            for (low, to_snap, to_high, late) in raw {
                let low = low.max(start).min(n);
                let snap = (low + to_snap).min(n);
                let high = (snap + to_high).min(n);
                chunks.push(ChunkCase { low, snap, high, late });
                start = high;
            }
            (txs, watch_from, chunks)
        })
    }

    proptest! {
        /// Whatever the interleaving of changes, watermarks and snapshot visibility, the rows
        /// published at a high watermark are never older than a change streamed before it, and
        /// a row no transaction touched since watching began is always published.
        #[test]
        fn published_rows_never_go_back_in_time((txs, watch_from, chunks) in history()) {
            // Transaction i changes key txs[i].0 to version i (or deletes it); xid = 1000 + i.
            let xid = |i: usize| 1000 + i as u32;
            // The first `watch_from` transactions were streamed before watching began.
            let mut unconfirmed = Unconfirmed::default();
            for i in 0..watch_from {
                unconfirmed.streamed(xid(i));
            }
            let mut w = Window::after(&unconfirmed);
            let mut streamed = watch_from;
            // Visibility never goes back: a transaction an earlier snapshot saw is seen by all later ones.
            let mut seen_before = std::collections::HashSet::new();
            for chunk in &chunks {
                while streamed < chunk.low {
                    w.changed(key(txs[streamed].0), xid(streamed));
                    streamed += 1;
                }
                w.low();
                while streamed < chunk.high {
                    w.changed(key(txs[streamed].0), xid(streamed));
                    streamed += 1;
                }
                // The snapshot: everything committed before `snap`, except the late ones among
                // the last four, which may have been streamed before watching began.
                let late: Vec<u64> = (chunk.snap.saturating_sub(4)..chunk.snap)
                    .filter(|i| chunk.late[chunk.snap - 1 - i] && !seen_before.contains(i))
                    .map(|i| u64::from(xid(i)))
                    .collect();
                let mut in_progress = late.clone();
                in_progress.extend((chunk.snap..txs.len()).map(|i| u64::from(xid(i))));
                in_progress.sort_unstable();
                let xmin = in_progress.first().copied().unwrap_or(u64::from(xid(chunk.snap)));
                let xmax = u64::from(xid(txs.len())) + 1;
                let snapshot = XidSnapshot::new(xmin, xmax, in_progress);
                // What the chunk read: each key's latest visible version (-1: the initial row).
                let mut state: HashMap<u8, Option<i64>> = (0..6u8).map(|k| (k, Some(-1))).collect();
                for (i, (k, delete)) in txs.iter().enumerate().take(chunk.snap) {
                    if !late.contains(&u64::from(xid(i))) {
                        state.insert(*k, if *delete { None } else { Some(i as i64) });
                    }
                }
                seen_before.extend((0..chunk.snap).filter(|i| !late.contains(&u64::from(xid(*i)))));
                let rows: Vec<(u8, i64)> = (0..6u8).filter_map(|k| state[&k].map(|v| (k, v))).collect();
                let Some(published) = w.high(rows.clone(), |(k, _)| key(*k), &snapshot) else {
                    // Read again only when the snapshot misses a transaction streamed before
                    // watching began.
                    prop_assert!(late.iter().any(|&x| x < u64::from(xid(watch_from))), "a chunk was refused with nothing to refuse it for");
                    continue;
                };
                for (k, version) in &published {
                    let newest_streamed = (0..chunk.high).filter(|i| txs[*i].0 == *k).max();
                    if let Some(i) = newest_streamed {
                        prop_assert!(i as i64 <= *version, "key {} published at version {} after version {} was streamed", k, version, i);
                    }
                }
                for (k, version) in &rows {
                    if (0..chunk.high).all(|i| txs[i].0 != *k) {
                        prop_assert!(published.contains(&(*k, *version)), "untouched key {} was dropped", k);
                    }
                }
            }
        }
    }
}
