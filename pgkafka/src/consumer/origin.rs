//! Where an op comes from (the producer's origin headers), and whether an op continues the history
//! its partition's stored position belongs to: the idempotent consumer's guard against LSNs that
//! went backwards.
//!
//! A position `(lsn, seq_id)` only orders ops of one history: one database cluster (its system
//! identifier) read through one slot. A restore into a new cluster, a failover to a standby that
//! was behind, or a second producer writing the same topic starts ops at LSNs the stored position
//! has already passed; skipping them as duplicates would lose them without a word. So the
//! consumer stores the origin with the position and, when an op's origin does not continue it,
//! stops with [`Diverged`], which says what happened and how to reset.
//!
//! The rules, for an op with origin headers against the stored origin:
//!
//! - no stored origin (a new partition, or a position the earlier library stored): as before,
//!   and the op's origin is stored with it once applied;
//! - another system identifier or slot: [`Diverged`], whatever the LSN;
//! - the same timeline: as before (at or below the stored position: a duplicate);
//! - a higher timeline at a higher position: a failover to a standby that had everything applied;
//!   applied, and the new timeline stored;
//! - a higher timeline at or below the stored position: the standby was behind (its new changes
//!   reuse LSNs already passed) or these are re-sends after the failover; which one, only the
//!   timeline history tells: [`Diverged`];
//! - a lower timeline at or below the stored position: ops of the old primary redelivered; skipped
//!   as duplicates. Above it: the old primary is still being read while the new one is: [`Diverged`].
//!
//! Ops without origin headers (written by the earlier library) are judged as before.

use std::fmt;

use crate::Lsn;

// The producer writes these headers; one home for their names in `pgkafka_common::headers`.
use pgkafka_common::headers::{SLOT as SLOT_HEADER, SYSTEM_ID as SYSTEM_ID_HEADER, TIMELINE as TIMELINE_HEADER};

/// The history an op belongs to: the cluster, timeline and slot its producer read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) system_id: String,
    pub(crate) timeline: u32,
    pub(crate) slot: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "system {} timeline {} slot {}", self.system_id, self.timeline, self.slot)
    }
}

impl Origin {
    /// The origin a record's headers name: `None` when it carries none of the three headers (a
    /// record of the earlier library), an error naming the header when they are partial or not
    /// readable.
    pub(crate) fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Result<Option<Self>, String> {
        Ok(read_headers(headers)?.map(|(system_id, timeline, slot)| Origin { system_id: system_id.to_owned(), timeline, slot: slot.to_owned() }))
    }

    /// Checks a record's origin headers as [`Origin::from_headers`] does, without keeping (or
    /// allocating) the origin: for consumers that do not use it, a record with broken headers is
    /// still invalid.
    pub(crate) fn check_headers<'a>(headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Result<(), String> {
        read_headers(headers).map(|_| ())
    }
}

/// The origin headers' values, borrowed from the record.
fn read_headers<'a>(headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Result<Option<(&'a str, u32, &'a str)>, String> {
    let (mut system_id, mut timeline, mut slot) = (None, None, None);
    for (key, value) in headers {
        let target = match key {
            SYSTEM_ID_HEADER => &mut system_id,
            TIMELINE_HEADER => &mut timeline,
            SLOT_HEADER => &mut slot,
            _ => continue,
        };
        let text = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or_else(|| format!("header {key} is empty or not UTF-8"))?;
        *target = Some(text);
    }
    match (system_id, timeline, slot) {
        (None, None, None) => Ok(None),
        (Some(system_id), Some(timeline), Some(slot)) => {
            let timeline = timeline
                .parse()
                .map_err(|_| format!("header {TIMELINE_HEADER} is {timeline:?}, not a timeline number"))?;
            Ok(Some((system_id, timeline, slot)))
        }
        _ => Err(format!(
            "the record carries only some of the origin headers {SYSTEM_ID_HEADER}, {TIMELINE_HEADER}, {SLOT_HEADER}"
        )),
    }
}

/// A partition's place in its history: the last applied op's `(lsn, seq_id)` and its origin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) position: Option<(u64, u64)>,
    pub(crate) origin: Option<Origin>,
}

/// What to do with an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Hand it to the application and store its position (and origin).
    Apply,
    /// Already applied: skip it.
    Duplicate,
}

/// An op that does not continue the stored history: the consumer stops on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Diverged {
    pub(crate) stored_position: (u64, u64),
    pub(crate) stored_origin: Origin,
    pub(crate) position: (u64, u64),
    pub(crate) origin: Origin,
}

impl Diverged {
    /// What happened, in a sentence, for the error message.
    pub(crate) fn what(&self) -> &'static str {
        let (stored, op) = (&self.stored_origin, &self.origin);
        if stored.system_id != op.system_id {
            "the op comes from another database cluster (a restore into a new cluster, or another producer writing this topic)"
        } else if stored.slot != op.slot {
            "the op comes from another replication slot (a second producer writing this topic)"
        } else if op.timeline > stored.timeline {
            "the op is on a newer timeline at or below the stored position (a failover to a standby that was behind, or re-sends after a failover)"
        } else {
            "the op is on an older timeline above the stored position (the old primary is still being read after a failover)"
        }
    }
}

impl fmt::Display for Diverged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |(lsn, seq_id): (u64, u64)| format!("lsn {} seq_id {seq_id}", Lsn::from(lsn));
        write!(
            f,
            "{}: the op ({}, {}) does not continue the stored position ({}, {}); skipping it as a duplicate could lose it",
            self.what(),
            show(self.position),
            self.origin,
            show(self.stored_position),
            self.stored_origin,
        )
    }
}

impl Stored {
    /// Judges an op at `position` from `origin` (`None`: no origin headers) against this state.
    ///
    /// # Errors
    /// [`Diverged`] when the op belongs to another history than the stored position.
    pub(crate) fn judge(&self, position: (u64, u64), origin: Option<&Origin>) -> Result<Step, Box<Diverged>> {
        let Some(stored_position) = self.position else { return Ok(Step::Apply) };
        let after = position > stored_position;
        let as_before = if after { Step::Apply } else { Step::Duplicate };
        let (Some(stored_origin), Some(origin)) = (&self.origin, origin) else { return Ok(as_before) };
        let diverged = || {
            Box::new(Diverged { stored_position, stored_origin: stored_origin.clone(), position, origin: origin.clone() })
        };
        if stored_origin.system_id != origin.system_id || stored_origin.slot != origin.slot {
            return Err(diverged());
        }
        match (origin.timeline.cmp(&stored_origin.timeline), after) {
            (std::cmp::Ordering::Equal, _) | (std::cmp::Ordering::Greater, true) | (std::cmp::Ordering::Less, false) => Ok(as_before),
            _ => Err(diverged()),
        }
    }

    /// This state after applying an op at `position` from `origin`: an op without origin headers
    /// keeps the stored origin.
    pub(crate) fn advance(&mut self, position: (u64, u64), origin: Option<&Origin>) {
        self.position = Some(position);
        if let Some(origin) = origin {
            self.origin = Some(origin.clone());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn origin(system_id: &str, timeline: u32, slot: &str) -> Origin {
        Origin { system_id: system_id.into(), timeline, slot: slot.into() }
    }

    fn at(position: (u64, u64), origin: Option<Origin>) -> Stored {
        Stored { position: Some(position), origin }
    }

    #[test]
    fn headers_give_an_origin_none_or_a_reason() {
        let full = [
            ("other", Some(&b"x"[..])),
            (SYSTEM_ID_HEADER, Some(&b"7301234567890123456"[..])),
            (TIMELINE_HEADER, Some(&b"3"[..])),
            (SLOT_HEADER, Some(&b"orders"[..])),
        ];
        assert_eq!(Origin::from_headers(full), Ok(Some(origin("7301234567890123456", 3, "orders"))));
        assert_eq!(Origin::from_headers([("other", None)]), Ok(None));
        assert_eq!(Origin::from_headers([]), Ok(None));
        let partial = Origin::from_headers([(SYSTEM_ID_HEADER, Some(&b"1"[..]))]).unwrap_err();
        assert!(partial.contains("only some"), "{partial}");
        let bad = Origin::from_headers([
            (SYSTEM_ID_HEADER, Some(&b"1"[..])),
            (TIMELINE_HEADER, Some(&b"three"[..])),
            (SLOT_HEADER, Some(&b"s"[..])),
        ])
        .unwrap_err();
        assert!(bad.contains("pgkafka.timeline") && bad.contains("three"), "{bad}");
        let empty = Origin::from_headers([(SLOT_HEADER, None)]).unwrap_err();
        assert!(empty.contains("pgkafka.slot"), "{empty}");
        assert_eq!(Origin::check_headers(full), Ok(()));
        assert_eq!(Origin::check_headers([(SLOT_HEADER, None)]).unwrap_err(), empty);
    }

    #[test]
    fn without_origins_positions_decide_as_before() {
        let a = origin("1", 1, "s");
        assert_eq!(Stored::default().judge((5, 0), Some(&a)), Ok(Step::Apply));
        assert_eq!(Stored::default().judge((5, 0), None), Ok(Step::Apply));
        // A position the earlier library stored, and ops without headers.
        assert_eq!(at((5, 1), None).judge((5, 1), Some(&a)), Ok(Step::Duplicate));
        assert_eq!(at((5, 1), None).judge((5, 2), Some(&a)), Ok(Step::Apply));
        assert_eq!(at((5, 1), Some(a.clone())).judge((4, 9), None), Ok(Step::Duplicate));
        assert_eq!(at((5, 1), Some(a)).judge((6, 0), None), Ok(Step::Apply));
    }

    #[test]
    fn the_same_history_decides_by_position() {
        let a = origin("1", 2, "s");
        let stored = at((100, 3), Some(a.clone()));
        assert_eq!(stored.judge((100, 3), Some(&a)), Ok(Step::Duplicate));
        assert_eq!(stored.judge((90, 0), Some(&a)), Ok(Step::Duplicate));
        assert_eq!(stored.judge((100, 4), Some(&a)), Ok(Step::Apply));
    }

    #[test]
    fn another_cluster_or_slot_diverges_whatever_the_position() {
        let stored = at((100, 0), Some(origin("1", 1, "s")));
        for other in [origin("2", 1, "s"), origin("1", 1, "t")] {
            for position in [(50, 0), (100, 0), (200, 0)] {
                let diverged = stored.judge(position, Some(&other)).unwrap_err();
                assert_eq!(diverged.origin, other);
            }
        }
        let text = stored.judge((50, 0), Some(&origin("2", 1, "s"))).unwrap_err().to_string();
        assert!(text.contains("another database cluster") && text.contains("system 2") && text.contains("system 1"), "{text}");
        assert!(text.contains(&Lsn(50).to_string()) && text.contains(&Lsn(100).to_string()), "{text}");
    }

    #[test]
    fn a_failover_goes_on_when_the_position_moved_forward_only() {
        let stored = at((100, 0), Some(origin("1", 2, "s")));
        assert_eq!(stored.judge((101, 0), Some(&origin("1", 3, "s"))), Ok(Step::Apply));
        let behind = stored.judge((100, 0), Some(&origin("1", 3, "s"))).unwrap_err();
        assert!(behind.what().contains("newer timeline"), "{behind}");
        // Redelivered ops of the old primary are duplicates; new ones of it above the position diverge.
        assert_eq!(stored.judge((99, 0), Some(&origin("1", 1, "s"))), Ok(Step::Duplicate));
        let split = stored.judge((101, 0), Some(&origin("1", 1, "s"))).unwrap_err();
        assert!(split.what().contains("older timeline"), "{split}");
    }

    #[test]
    fn advancing_keeps_the_origin_of_ops_without_headers() {
        let a = origin("1", 1, "s");
        let mut stored = Stored::default();
        stored.advance((5, 0), Some(&a));
        stored.advance((6, 0), None);
        assert_eq!(stored, at((6, 0), Some(a)));
    }
}
