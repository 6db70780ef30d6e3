//! What a publication's changes are, according to PostgreSQL itself: a second `pgoutput` slot
//! peeked over SQL (`pg_logical_slot_peek_binary_changes`) and decoded here, independently of
//! pgkafka's own decoder. Tests compare what the producer wrote to Kafka with this.
#![allow(clippy::indexing_slicing)]

use pgkafka::{Op, ReplicationOp};

/// One transaction as the reference slot holds it.
#[derive(Debug, Clone)]
pub struct RefTx {
    /// The transaction's commit LSN (pgoutput Begin's `final_lsn`).
    pub commit_lsn: u64,
    /// The end of its commit record (pgoutput Commit's `end_lsn`).
    pub end_lsn: u64,
    /// Its row changes as the producer should publish them: `lsn` = commit LSN, `seq_id` from 0.
    pub ops: Vec<ReplicationOp>,
    /// Tables it truncated (`table_name` form).
    pub truncated: Vec<String>,
    /// `(seq_id, column)` of update new-row values that were sent as "unchanged TOAST" and filled
    /// in here from the old row.
    pub unchanged_toast: Vec<(u64, String)>,
}

/// Creates a `pgoutput` slot to peek at later. Create it after the producer's slot, before the
/// changes the test makes.
pub async fn create_reference_slot(pg: &tokio_postgres::Client) -> String {
    let slot = crate::unique_name("ref_slot");
    pg.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
        .await
        .unwrap_or_else(|e| panic!("cannot create reference slot {slot}: {e}"));
    slot
}

/// Every committed transaction the reference slot holds for `publication`, in commit order. The
/// slot is only peeked, never advanced.
pub async fn reference_transactions(pg: &tokio_postgres::Client, slot: &str, publication: &str) -> Vec<RefTx> {
    let rows = pg
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', $2)",
            &[&slot, &publication],
        )
        .await
        .unwrap_or_else(|e| panic!("cannot peek reference slot {slot}: {e}"));
    let mut decoder = Decoder::default();
    for row in rows {
        let data: Vec<u8> = row.get(0);
        decoder.message(&data);
    }
    decoder.done
}

/// Every op of `txs`, in commit order.
pub fn all_ops(txs: &[RefTx]) -> Vec<ReplicationOp> {
    txs.iter().flat_map(|tx| tx.ops.iter().cloned()).collect()
}

#[derive(Default)]
struct Decoder {
    relations: std::collections::HashMap<u32, (String, Vec<String>)>,
    open: Option<RefTx>,
    done: Vec<RefTx>,
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let slice = self.data.get(self.pos..self.pos + n).unwrap_or_else(|| {
            panic!("reference pgoutput message too short at {}: {:?}", self.pos, self.data)
        });
        self.pos += n;
        slice
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    fn cstr(&mut self) -> String {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == 0).expect("unterminated string in reference message");
        let s = String::from_utf8(rest[..end].to_vec()).expect("non-UTF-8 name");
        self.pos += end + 1;
        s
    }
}

/// A tuple value: `None` = NULL, `Some(None)` = unchanged TOAST, `Some(Some(text))`.
type RefValue = Option<Option<String>>;

fn tuple(c: &mut Cursor<'_>) -> Vec<RefValue> {
    let n = c.i16();
    (0..n)
        .map(|_| match c.u8() {
            b'n' => None,
            b'u' => Some(None),
            b't' => {
                let len = c.i32() as usize;
                Some(Some(String::from_utf8(c.take(len).to_vec()).expect("non-UTF-8 text value")))
            }
            other => panic!("unexpected tuple value kind {other}"),
        })
        .collect()
}

fn plain(values: Vec<RefValue>) -> Vec<Option<String>> {
    values
        .into_iter()
        .map(|v| match v {
            None => None,
            Some(Some(t)) => Some(t),
            Some(None) => panic!("unchanged TOAST value in an old row or insert"),
        })
        .collect()
}

impl Decoder {
    fn message(&mut self, data: &[u8]) {
        let mut c = Cursor { data, pos: 1 };
        match data.first().copied() {
            Some(b'B') => {
                let final_lsn = c.u64();
                assert!(self.open.is_none(), "reference: Begin inside a transaction");
                self.open = Some(RefTx {
                    commit_lsn: final_lsn,
                    end_lsn: 0,
                    ops: Vec::new(),
                    truncated: Vec::new(),
                    unchanged_toast: Vec::new(),
                });
            }
            Some(b'C') => {
                let _flags = c.u8();
                let commit_lsn = c.u64();
                let end_lsn = c.u64();
                let mut tx = self.open.take().expect("reference: Commit without Begin");
                assert_eq!(tx.commit_lsn, commit_lsn, "reference: Begin and Commit disagree");
                tx.end_lsn = end_lsn;
                self.done.push(tx);
            }
            Some(b'R') => {
                let id = c.u32();
                let namespace = c.cstr();
                let name = c.cstr();
                let _identity = c.u8();
                let n = c.i16();
                let columns = (0..n)
                    .map(|_| {
                        let _flags = c.u8();
                        let name = c.cstr();
                        let _type = c.u32();
                        let _typmod = c.i32();
                        name
                    })
                    .collect();
                let table_name = if namespace == "public" { name } else { format!("{namespace}.{name}") };
                self.relations.insert(id, (table_name, columns));
            }
            Some(b'I') => {
                let id = c.u32();
                assert_eq!(c.u8(), b'N');
                let new = plain(tuple(&mut c));
                self.push(id, |_| Op::Insert(new));
            }
            Some(b'U') => {
                let id = c.u32();
                let mut kind = c.u8();
                let mut old = None;
                if kind == b'K' || kind == b'O' {
                    assert_eq!(kind, b'O', "reference: the table's replica identity is not FULL");
                    old = Some(plain(tuple(&mut c)));
                    kind = c.u8();
                }
                assert_eq!(kind, b'N');
                let new = tuple(&mut c);
                let old = old.expect("reference: update without old row (replica identity not FULL)");
                let mut toast_columns = Vec::new();
                let new: Vec<Option<String>> = new
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        None => None,
                        Some(Some(t)) => Some(t),
                        Some(None) => {
                            toast_columns.push(i);
                            old[i].clone()
                        }
                    })
                    .collect();
                let seq = self.push(id, |_| Op::Update((old, new)));
                let columns = self.relations[&id].1.clone();
                let tx = self.open.as_mut().unwrap();
                for i in toast_columns {
                    tx.unchanged_toast.push((seq, columns[i].clone()));
                }
            }
            Some(b'D') => {
                let id = c.u32();
                assert_eq!(c.u8(), b'O', "reference: delete without the full old row");
                let old = plain(tuple(&mut c));
                self.push(id, |_| Op::Delete(old));
            }
            Some(b'T') => {
                let n = c.i32();
                let _options = c.u8();
                let ids: Vec<u32> = (0..n).map(|_| c.u32()).collect();
                let names: Vec<String> = ids.iter().map(|id| self.relations[id].0.clone()).collect();
                self.open.as_mut().expect("reference: Truncate outside a transaction").truncated.extend(names);
            }
            // Type, Origin, logical messages.
            _ => {}
        }
    }

    fn push(&mut self, relation: u32, op: impl FnOnce(()) -> Op) -> u64 {
        let (table_name, col_names) = self.relations.get(&relation).expect("reference: change before Relation").clone();
        let tx = self.open.as_mut().expect("reference: change outside a transaction");
        let seq_id = tx.ops.len() as u64;
        tx.ops.push(ReplicationOp { table_name, col_names, lsn: tx.commit_lsn, seq_id, op: op(()) });
        seq_id
    }
}
