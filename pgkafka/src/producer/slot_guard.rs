//! What the producer may do about its replication slot: create it only at a first start that finds
//! no trace of an earlier stream, never on a reconnect, and never use an invalidated one.
//!
//! Creating a slot starts it at the current end of the WAL, so every change between the old
//! slot's confirmed position and now is silently skipped. These rules decide when that is allowed;
//! `slot.rs` does the queries. Pure, so each rule has a unit test.

use pgkafka_common::Lsn;

use super::error::{Attempt, ProducerError};

/// What the producer does when its replication slot does not exist at start.
///
/// A missing slot while the mapped topics already hold records means a slot existed and was lost
/// (dropped, or a failover to a server that does not have it): creating a new one would skip
/// every change made in between. A missing slot on a reconnect is always fatal
/// ([`ProducerError::SlotLost`]), whatever the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlotMissingPolicy {
    /// Create the slot only if the mapped topics hold no records; otherwise stop with
    /// [`ProducerError::SlotLost`].
    #[default]
    Refuse,
    /// Create the slot and start streaming from the current WAL position, even though the topics
    /// hold records of an earlier stream. Changes made while no slot existed are not published:
    /// use this after re-snapshotting the tables' state, or when that gap is acceptable.
    Create,
}

/// Where a session of `Producer::start` stands with the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionStart {
    /// The first session.
    First,
    /// A later session, before any session streamed (the first one failed before opening the
    /// slot): the slot may still be created, on the same terms as at first.
    Retrying,
    /// A reconnect after this process streamed from the slot and confirmed it up to
    /// `last_confirmed`: the slot must exist.
    Resumed { last_confirmed: Lsn },
}

impl SessionStart {
    /// How failures of this session are classified.
    pub(crate) fn attempt(self) -> Attempt {
        match self {
            Self::First => Attempt::First,
            Self::Retrying | Self::Resumed { .. } => Attempt::Resume,
        }
    }

    /// The start of the session after this one, which streamed up to `streamed_to` (`0/0` if
    /// it never opened the stream).
    pub(crate) fn next(self, streamed_to: Lsn) -> Self {
        match self {
            Self::Resumed { last_confirmed } => Self::Resumed { last_confirmed: last_confirmed.max(streamed_to) },
            Self::First | Self::Retrying if streamed_to.is_invalid() => Self::Retrying,
            Self::First | Self::Retrying => Self::Resumed { last_confirmed: streamed_to },
        }
    }
}

/// Records a mapped topic already holds: the evidence that a slot streamed into it before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicRecords {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    /// The partition's end offset (one past its last record).
    pub(crate) end_offset: i64,
}

/// The slot's health columns in `pg_replication_slots`, as far as the server version has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SlotHealth {
    /// `wal_status` (PostgreSQL 13+): `reserved`, `extended`, `unreserved` or `lost`.
    pub(crate) wal_status: Option<String>,
    /// `invalidation_reason` (PostgreSQL 17+): why the slot was invalidated, if it was.
    pub(crate) invalidation_reason: Option<String>,
    /// `conflicting` (PostgreSQL 16+): invalidated by a conflict with recovery on a standby.
    pub(crate) conflicting: Option<bool>,
}

impl SlotHealth {
    /// Why the slot can no longer stream, or `None` if it can.
    pub(crate) fn invalidated(&self) -> Option<String> {
        if let Some(reason) = self.invalidation_reason.as_deref().filter(|r| !r.is_empty()) {
            return Some(format!("was invalidated ({reason})"));
        }
        if self.conflicting == Some(true) {
            return Some("was invalidated by a conflict with recovery".to_owned());
        }
        if self.wal_status.as_deref() == Some("lost") {
            return Some(
                "was invalidated: the server removed WAL it still needed (wal_status = lost, \
                 max_slot_wal_keep_size exceeded)"
                    .to_owned(),
            );
        }
        None
    }
}

/// How to start anew once the gap is dealt with, in every `SlotLost` message.
const START_ANEW: &str = "re-snapshot the tables into their topics (or accept the gap), then restart with \
    SlotMissingPolicy::Create (slot_missing = \"create\" in the pgkafka config), which creates a new slot at the \
    current end of the WAL";

/// The slot exists but can no longer stream: always fatal.
pub(crate) fn invalidated(slot: &str, confirmed: Lsn, reason: String) -> ProducerError {
    ProducerError::SlotLost {
        slot: slot.to_owned(),
        reason,
        last_confirmed: Some(confirmed),
        remedy: format!("drop it with SELECT pg_drop_replication_slot('{slot}'); {START_ANEW}"),
    }
}

/// Decides what to do about a missing slot: `Ok(())` to create it, or the error to stop with.
pub(crate) fn on_missing(
    slot: &str,
    start: SessionStart,
    policy: SlotMissingPolicy,
    evidence: &[TopicRecords],
) -> Result<(), ProducerError> {
    match start {
        SessionStart::Resumed { last_confirmed } => Err(ProducerError::SlotLost {
            slot: slot.to_owned(),
            reason: "no longer exists: it was dropped while the producer streamed from it (by hand, or a failover \
                     to a server that does not have it)"
                .to_owned(),
            last_confirmed: Some(last_confirmed),
            remedy: START_ANEW.to_owned(),
        }),
        SessionStart::First | SessionStart::Retrying if evidence.is_empty() => Ok(()),
        SessionStart::First | SessionStart::Retrying => match policy {
            SlotMissingPolicy::Create => {
                tracing::warn!(
                    slot,
                    topics = %describe(evidence),
                    "the replication slot does not exist but the topics hold records of an earlier stream; creating \
                     it as SlotMissingPolicy::Create says: changes made while no slot existed are not published"
                );
                Ok(())
            }
            SlotMissingPolicy::Refuse => Err(ProducerError::SlotLost {
                slot: slot.to_owned(),
                reason: format!(
                    "does not exist, but the topics already hold records of an earlier stream ({}), so a slot \
                     existed and was lost",
                    describe(evidence)
                ),
                last_confirmed: None,
                remedy: format!("if the slot lives on another server (after a failover), point the producer at it; else {START_ANEW}"),
            }),
        },
    }
}

/// `topic partition P (end offset N)`, for the first few partitions.
fn describe(evidence: &[TopicRecords]) -> String {
    const SHOWN: usize = 3;
    let mut parts: Vec<String> = evidence
        .iter()
        .take(SHOWN)
        .map(|r| format!("{} partition {} (end offset {})", r.topic, r.partition, r.end_offset))
        .collect();
    if evidence.len() > SHOWN {
        parts.push(format!("{} more partitions", evidence.len() - SHOWN));
    }
    parts.join(", ")
}

/// The SQL that creates the slot: with `failover = true` on PostgreSQL 17+ when asked, so a
/// standby that syncs slots has it after a promotion.
pub(crate) fn create_slot_sql(server_version_num: i32, failover: bool) -> &'static str {
    if failover && server_version_num >= 170_000 {
        "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
    } else {
        "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn evidence() -> Vec<TopicRecords> {
        vec![TopicRecords { topic: "orders".into(), partition: 2, end_offset: 42 }]
    }

    #[test]
    fn a_first_start_creates_the_slot_only_when_the_topics_are_empty() {
        assert!(on_missing("s", SessionStart::First, SlotMissingPolicy::Refuse, &[]).is_ok());
        let error = on_missing("s", SessionStart::First, SlotMissingPolicy::Refuse, &evidence()).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, ProducerError::SlotLost { last_confirmed: None, .. }), "{error:?}");
        for part in ["slot s", "orders partition 2 (end offset 42)", "SlotMissingPolicy::Create", "slot_missing"] {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
        assert!(on_missing("s", SessionStart::First, SlotMissingPolicy::Create, &evidence()).is_ok());
    }

    #[test]
    fn a_reconnect_never_creates_the_slot() {
        for policy in [SlotMissingPolicy::Refuse, SlotMissingPolicy::Create] {
            let start = SessionStart::Resumed { last_confirmed: Lsn(0x16_B374_D848) };
            let error = on_missing("s", start, policy, &[]).unwrap_err();
            assert!(matches!(error, ProducerError::SlotLost { last_confirmed: Some(_), .. }), "{error:?}");
            assert!(error.to_string().contains("16/B374D848"), "{error}");
        }
    }

    #[test]
    fn only_a_session_after_streaming_counts_as_a_reconnect() {
        let failed_early = SessionStart::First.next(Lsn::INVALID);
        assert_eq!(failed_early, SessionStart::Retrying);
        assert!(on_missing("s", failed_early, SlotMissingPolicy::Refuse, &[]).is_ok());
        let streamed = failed_early.next(Lsn(10));
        assert_eq!(streamed, SessionStart::Resumed { last_confirmed: Lsn(10) });
        // A later session that failed before streaming keeps what was confirmed before.
        assert_eq!(streamed.next(Lsn::INVALID), streamed);
        assert_eq!(streamed.next(Lsn(20)), SessionStart::Resumed { last_confirmed: Lsn(20) });
    }

    #[test]
    fn invalidated_slots_are_recognised_on_every_server_version() {
        let healthy = SlotHealth { wal_status: Some("reserved".into()), ..SlotHealth::default() };
        assert_eq!(healthy.invalidated(), None);
        assert_eq!(SlotHealth { wal_status: Some("unreserved".into()), ..SlotHealth::default() }.invalidated(), None);
        assert_eq!(SlotHealth::default().invalidated(), None);
        let lost = SlotHealth { wal_status: Some("lost".into()), ..SlotHealth::default() };
        assert!(lost.invalidated().unwrap().contains("max_slot_wal_keep_size"));
        let pg16 = SlotHealth { wal_status: Some("lost".into()), conflicting: Some(true), ..SlotHealth::default() };
        assert!(pg16.invalidated().unwrap().contains("conflict"));
        let pg17 = SlotHealth {
            wal_status: Some("lost".into()),
            invalidation_reason: Some("wal_removed".into()),
            conflicting: Some(false),
        };
        assert!(pg17.invalidated().unwrap().contains("wal_removed"));
        let error = invalidated("s", Lsn(5), pg17.invalidated().unwrap());
        let message = error.to_string();
        assert!(message.contains("pg_drop_replication_slot('s')") && message.contains("0/5"), "{message}");
    }

    #[test]
    fn failover_slots_only_where_the_server_has_them() {
        assert!(create_slot_sql(170_000, true).contains("true)"));
        assert!(!create_slot_sql(170_000, false).contains("true)"));
        assert!(!create_slot_sql(160_004, true).contains("true)"));
    }
}
