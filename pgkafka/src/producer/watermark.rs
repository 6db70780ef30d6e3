//! Which WAL position may be confirmed to the slot.
//!
//! Kafka acknowledges messages out of order across partitions. The slot may only be told
//! "everything up to here is safe" for a transaction once all of its messages, and all messages
//! of every earlier transaction, are acknowledged. This keeps that ledger: one entry per
//! transaction in WAL order with its count of unacknowledged messages; the confirmed position is
//! the end LSN of the longest fully acknowledged, committed prefix.

use std::collections::VecDeque;

use pgkafka_common::Lsn;

/// Identifies a transaction in the ledger; assigned in WAL order.
pub(crate) type TxId = u64;

#[derive(Debug)]
struct TxProgress {
    /// The transaction's commit LSN, for messages about its records.
    commit_lsn: Lsn,
    /// Set when the transaction's Commit has been read: no more messages will come.
    end_lsn: Option<Lsn>,
    unacked: u64,
}

/// The ledger of transactions whose messages are in flight.
#[derive(Debug)]
pub(crate) struct Watermark {
    open: VecDeque<TxProgress>,
    /// Id of `open[0]`.
    first_id: TxId,
    confirmed: Lsn,
    in_flight: u64,
}

impl Watermark {
    /// A ledger whose confirmed position starts at `confirmed` (the slot's `confirmed_flush_lsn`).
    pub(crate) fn new(confirmed: Lsn) -> Self {
        Self { open: VecDeque::new(), first_id: 0, confirmed, in_flight: 0 }
    }

    /// A transaction committed at `commit_lsn` starts; its messages are recorded against the
    /// returned id.
    pub(crate) fn begin(&mut self, commit_lsn: Lsn) -> TxId {
        self.open.push_back(TxProgress { commit_lsn, end_lsn: None, unacked: 0 });
        self.first_id + self.open.len() as u64 - 1
    }

    /// A message of `tx` was handed to Kafka.
    pub(crate) fn sent(&mut self, tx: TxId) {
        if let Some(progress) = self.get_mut(tx) {
            progress.unacked += 1;
            self.in_flight += 1;
        }
    }

    /// A message of `tx` counted by [`sent`](Self::sent) was not handed to Kafka after all.
    pub(crate) fn unsent(&mut self, tx: TxId) {
        if let Some(progress) = self.get_mut(tx) {
            if progress.unacked > 0 {
                progress.unacked -= 1;
                self.in_flight -= 1;
            }
        }
    }

    /// Kafka acknowledged a message of `tx`.
    ///
    /// Returns whether a transaction left the ledger, so waiters for a settled transaction know
    /// to look again.
    pub(crate) fn acked(&mut self, tx: TxId) -> bool {
        let first = self.first_id;
        self.unsent(tx);
        self.advance();
        self.first_id != first
    }

    /// The transaction `tx` committed; `end_lsn` is where the next transaction's WAL starts.
    pub(crate) fn committed(&mut self, tx: TxId, end_lsn: Lsn) {
        if let Some(progress) = self.get_mut(tx) {
            progress.end_lsn = Some(end_lsn);
        }
        self.advance();
    }

    /// The server says it has sent everything up to `wal_end`. When no transaction is open or
    /// unacknowledged, everything before it is safe: confirming it lets the server recycle WAL
    /// written by tables outside the publication.
    pub(crate) fn idle_at(&mut self, wal_end: Lsn) {
        if self.open.is_empty() && wal_end > self.confirmed {
            self.confirmed = wal_end;
        }
    }

    /// The position that may be confirmed to the slot.
    pub(crate) fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Messages handed to Kafka and not yet acknowledged.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// The commit LSN of `tx`, while it is in the ledger.
    pub(crate) fn commit_lsn(&self, tx: TxId) -> Option<Lsn> {
        let index = usize::try_from(tx.checked_sub(self.first_id)?).ok()?;
        self.open.get(index).map(|progress| progress.commit_lsn)
    }

    /// Whether reading may go on with at most `max` messages in flight. The ledger counts too:
    /// transactions that sent nothing (empty, or only unpublished tables) wait in it behind an
    /// unacknowledged one, and must not grow it without bound. Only committed transactions can
    /// wait behind the front one, so a full ledger always has an acknowledgement to wait for.
    pub(crate) fn has_room(&self, max: u64) -> bool {
        self.in_flight < max && (self.open.len() as u64) <= max
    }

    /// Whether every transaction read so far is committed and acknowledged.
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.open.is_empty()
    }

    /// Whether `tx` is committed and all of its messages, and those of every earlier
    /// transaction, are acknowledged (it left the ledger).
    pub(crate) fn settled(&self, tx: TxId) -> bool {
        tx < self.first_id
    }

    fn get_mut(&mut self, tx: TxId) -> Option<&mut TxProgress> {
        let index = usize::try_from(tx.checked_sub(self.first_id)?).ok()?;
        self.open.get_mut(index)
    }

    fn advance(&mut self) {
        while let Some(front) = self.open.front() {
            match front.end_lsn {
                Some(end) if front.unacked == 0 => {
                    if end > self.confirmed {
                        self.confirmed = end;
                    }
                    self.open.pop_front();
                    self.first_id += 1;
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn confirms_only_a_fully_acked_prefix() {
        let mut w = Watermark::new(Lsn(10));
        let a = w.begin(Lsn(0));
        w.sent(a);
        w.sent(a);
        w.committed(a, Lsn(100));
        let b = w.begin(Lsn(0));
        w.sent(b);
        w.committed(b, Lsn(200));
        w.acked(b);
        assert_eq!(w.confirmed(), Lsn(10), "b is acked but a is not");
        w.acked(a);
        assert_eq!(w.confirmed(), Lsn(10), "a still has one unacked message");
        w.acked(a);
        assert_eq!(w.confirmed(), Lsn(200));
        assert!(w.is_idle());
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn an_uncommitted_transaction_holds_the_watermark() {
        let mut w = Watermark::new(Lsn(0));
        let a = w.begin(Lsn(0));
        w.sent(a);
        w.acked(a);
        assert_eq!(w.confirmed(), Lsn(0));
        w.idle_at(Lsn(500));
        assert_eq!(w.confirmed(), Lsn(0), "not idle while a transaction is open");
        w.committed(a, Lsn(50));
        assert_eq!(w.confirmed(), Lsn(50));
        w.idle_at(Lsn(500));
        assert_eq!(w.confirmed(), Lsn(500));
        w.idle_at(Lsn(400));
        assert_eq!(w.confirmed(), Lsn(500), "never moves back");
    }

    #[test]
    fn empty_transactions_confirm_at_commit() {
        let mut w = Watermark::new(Lsn(0));
        let a = w.begin(Lsn(0));
        w.committed(a, Lsn(7));
        assert_eq!(w.confirmed(), Lsn(7));
    }

    #[test]
    fn empty_transactions_behind_an_unacked_record_fill_the_window() {
        let mut w = Watermark::new(Lsn(0));
        let a = w.begin(Lsn(10));
        w.sent(a);
        w.committed(a, Lsn(11));
        assert!(w.has_room(3));
        for end in 12..14 {
            let empty = w.begin(Lsn(end));
            w.committed(empty, Lsn(end));
        }
        assert_eq!(w.commit_lsn(a), Some(Lsn(10)));
        assert!(w.has_room(3), "three transactions in the ledger, one record in flight");
        let empty = w.begin(Lsn(20));
        w.committed(empty, Lsn(20));
        assert!(!w.has_room(3), "a fourth transaction waiting behind the unacked record");
        w.acked(a);
        assert!(w.is_idle() && w.has_room(3));
        assert_eq!(w.confirmed(), Lsn(20));
        assert_eq!(w.commit_lsn(a), None);
    }

    proptest! {
        /// Whatever order Kafka acknowledges in, the confirmed position is exactly the end of
        /// the longest prefix of committed transactions whose messages are all acknowledged.
        #[test]
        fn confirmed_is_the_end_of_the_acked_prefix(
            sizes in proptest::collection::vec(0u64..5, 1..20),
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..100),
        ) {
            let mut w = Watermark::new(Lsn(1));
            let mut pending: Vec<(usize, TxId)> = Vec::new();
            let mut unacked = vec![0u64; sizes.len()];
            for (i, &n) in sizes.iter().enumerate() {
                let tx = w.begin(Lsn(0));
                for _ in 0..n {
                    w.sent(tx);
                    pending.push((i, tx));
                }
                unacked[i] = n;
                w.committed(tx, Lsn(100 * (i as u64 + 1)));
            }
            for index in order {
                if pending.is_empty() { break; }
                let (i, tx) = pending.swap_remove(index.index(pending.len()));
                w.acked(tx);
                unacked[i] -= 1;
                let prefix = unacked.iter().take_while(|&&u| u == 0).count();
                let expected = if prefix == 0 { Lsn(1) } else { Lsn(100 * prefix as u64) };
                prop_assert_eq!(w.confirmed(), expected);
                prop_assert_eq!(w.in_flight(), unacked.iter().sum::<u64>());
            }
        }
    }
}
