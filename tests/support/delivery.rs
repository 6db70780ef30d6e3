//! The delivery checker: what reached Kafka against the changes the slot holds (exactly those
//! changes, in their topics, keyed right, in commit order per partition, re-sends byte-identical).
#![allow(clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pgkafka::ReplicationOp;

use crate::Record;

/// Where a table's changes go and how they are keyed, as a test expects.
#[derive(Debug, Clone)]
pub struct Route {
    pub topic: String,
    pub key_columns: Vec<String>,
}

/// What [`verify_delivery`] found.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Records that repeat an earlier record of their partition.
    pub duplicates: usize,
    /// Distinct changes.
    pub distinct: usize,
    /// Partitions that received records, per topic.
    pub partitions_used: BTreeMap<String, usize>,
}

/// Checks the records against the changes the slot holds:
/// - every record is exactly one of `expected` (same table, columns, values, lsn, seq_id), in the
///   topic of its table, keyed by the JSON array of its partition-key values;
/// - every expected change arrived;
/// - within each partition, changes come in (lsn, seq_id) order; a record out of that order is
///   only allowed as a byte-identical re-send of an earlier record of the same partition;
/// - all changes of one key went to one partition.
pub fn verify_delivery(records: &[(String, Record)], expected: &[ReplicationOp], routes: &HashMap<String, Route>) -> Delivery {
    let by_id: HashMap<(u64, u64), &ReplicationOp> = expected.iter().map(|op| ((op.lsn, op.seq_id), op)).collect();
    assert_eq!(by_id.len(), expected.len(), "the expected changes repeat an (lsn, seq_id)");
    let mut delivery = Delivery::default();
    // (lsn, seq_id) -> (topic, partition, key, value) of its first arrival.
    type FirstSeen = (String, i32, Option<Vec<u8>>, Option<Vec<u8>>);
    let mut first_seen: HashMap<(u64, u64), FirstSeen> = HashMap::new();
    let mut last_in_partition: HashMap<(String, i32), ((u64, u64), i64)> = HashMap::new();
    let mut partition_of_key: HashMap<(String, Vec<u8>), i32> = HashMap::new();
    let mut partitions: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (topic, record) in records {
        let op = record.op();
        let id = (op.lsn, op.seq_id);
        let where_ = format!("{topic}/{} offset {}", record.partition, record.offset);
        let Some(want) = by_id.get(&id) else {
            panic!("{where_}: a record that is no change of the slot: {op:?}");
        };
        assert_eq!(&op, *want, "{where_}: the record differs from the change the slot holds");
        let route = routes.get(&op.table_name).unwrap_or_else(|| panic!("{where_}: unexpected table {}", op.table_name));
        assert_eq!(topic, &route.topic, "{where_}: change of {} in the wrong topic", op.table_name);
        let key_row = op.op.key_row();
        let key_values: Vec<Option<&str>> = route
            .key_columns
            .iter()
            .map(|c| op.value(key_row, c).unwrap_or_else(|| panic!("{where_}: no key column {c} in {op:?}")))
            .collect();
        let want_key = pgkafka::key::encode_key(key_values);
        assert_eq!(
            record.key_text().as_deref(),
            Some(String::from_utf8_lossy(&want_key).as_ref()),
            "{where_}: wrong message key for {op:?}"
        );
        let partition = *partition_of_key.entry((topic.clone(), want_key)).or_insert(record.partition);
        assert_eq!(partition, record.partition, "{where_}: changes of one key went to two partitions");
        partitions.entry(topic.clone()).or_default().insert(record.partition);

        match first_seen.get(&id) {
            Some((first_topic, first_partition, key, value)) => {
                assert_eq!(
                    (first_topic, *first_partition),
                    (topic, record.partition),
                    "{where_}: change {id:?} re-sent to another partition"
                );
                assert!(
                    key == &record.key && value == &record.value,
                    "{where_}: change {id:?} arrived twice with different bytes"
                );
                delivery.duplicates += 1;
            }
            None => {
                if let Some((last, last_offset)) = last_in_partition.get(&(topic.clone(), record.partition)) {
                    assert!(
                        id > *last,
                        "{where_}: change {id:?} arrived after change {last:?} (offset {last_offset}) of the same \
                         partition and is not a re-send: out of commit order"
                    );
                }
                last_in_partition.insert((topic.clone(), record.partition), (id, record.offset));
                first_seen.insert(id, (topic.clone(), record.partition, record.key.clone(), record.value.clone()));
            }
        }
    }
    let missing: Vec<&(u64, u64)> = by_id.keys().filter(|id| !first_seen.contains_key(id)).collect();
    assert!(missing.is_empty(), "{} of {} changes never arrived, e.g. {:?}", missing.len(), by_id.len(), {
        let mut m = missing.clone();
        m.sort();
        m.into_iter().take(5).map(|id| by_id[id]).collect::<Vec<_>>()
    });
    delivery.distinct = first_seen.len();
    delivery.partitions_used = partitions.into_iter().map(|(t, p)| (t, p.len())).collect();
    delivery
}

#[cfg(test)]
mod tests {
    //! The delivery checker must catch what a broken producer would do.
    use super::*;
    use pgkafka::Op;

    fn op(lsn: u64, seq_id: u64, id: &str) -> ReplicationOp {
        ReplicationOp {
            table_name: "t".into(),
            col_names: vec!["id".into(), "v".into()],
            lsn,
            seq_id,
            op: Op::Insert(vec![Some(id.into()), Some("x".into())]),
        }
    }

    fn rec(partition: i32, offset: i64, op: &ReplicationOp) -> (String, Record) {
        let key = pgkafka::key::encode_key([op.value(op.op.key_row(), "id").unwrap()]);
        ("topic".into(), Record { partition, offset, key: Some(key), value: Some(serde_json::to_vec(op).unwrap()) })
    }

    fn routes() -> HashMap<String, Route> {
        [("t".to_owned(), Route { topic: "topic".into(), key_columns: vec!["id".into()] })].into_iter().collect()
    }

    fn fails(records: &[(String, Record)], expected: &[ReplicationOp]) -> bool {
        let records = records.to_vec();
        let expected = expected.to_vec();
        std::panic::catch_unwind(move || {
            verify_delivery(&records, &expected, &routes());
        })
        .is_err()
    }

    /// Exact and crash-re-sent deliveries pass; a missing, reordered, late-filled, altered,
    /// misrouted or foreign record fails.
    #[test]
    fn accepts_exact_and_re_sent_deliveries_and_rejects_broken_ones() {
        let a = op(10, 0, "1");
        let b = op(10, 1, "1");
        let c = op(20, 0, "1");
        let d = op(20, 1, "2");
        let expected = vec![a.clone(), b.clone(), c.clone(), d.clone()];
        let exact = vec![rec(0, 0, &a), rec(0, 1, &b), rec(0, 2, &c), rec(1, 0, &d)];
        assert_eq!(verify_delivery(&exact, &expected, &routes()).duplicates, 0);
        // A crash after c: a and b re-sent, then c again.
        let resent = vec![rec(0, 0, &a), rec(0, 1, &b), rec(0, 2, &c), rec(0, 3, &a), rec(0, 4, &b), rec(0, 5, &c), rec(1, 0, &d)];
        assert_eq!(verify_delivery(&resent, &expected, &routes()).duplicates, 3);

        assert!(fails(&[rec(0, 0, &a), rec(0, 1, &c), rec(1, 0, &d)], &expected), "missing b");
        assert!(fails(&[rec(0, 0, &b), rec(0, 1, &a), rec(0, 2, &c), rec(1, 0, &d)], &expected), "b before a");
        assert!(fails(&[rec(0, 0, &a), rec(0, 1, &c), rec(0, 2, &b), rec(1, 0, &d)], &expected), "gap filled late");
        let mut changed = rec(0, 3, &a);
        changed.1.value = Some(serde_json::to_vec(&op(10, 0, "9")).unwrap());
        let mut with_changed = exact.clone();
        with_changed.push(changed);
        assert!(fails(&with_changed, &expected), "a duplicate with other content");
        let mut wrong_key = exact.clone();
        wrong_key[3].1.key = Some(br#"["1"]"#.to_vec());
        assert!(fails(&wrong_key, &expected), "wrong key");
        assert!(fails(&[rec(0, 0, &a), rec(0, 1, &b), rec(1, 1, &c), rec(1, 0, &d)], &expected), "one key in two partitions");
        let mut extra = exact.clone();
        extra.push(rec(1, 1, &op(30, 0, "2")));
        assert!(fails(&extra, &expected), "a record the slot does not hold");
        let mut wrong_lsn = exact;
        wrong_lsn[3].1.value = Some(serde_json::to_vec(&ReplicationOp { lsn: 21, ..d.clone() }).unwrap());
        assert!(fails(&wrong_lsn, &expected), "wrong lsn");
    }
}
