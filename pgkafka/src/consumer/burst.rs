//! The records of one partition from one poll burst, copied out of librdkafka into one buffer by
//! the poll thread and read back by the partition's task.
//!
//! The poll thread only copies bytes (key, value, headers); the task decodes them. So decoding
//! runs on the tokio workers, in parallel across partitions, instead of on the one poll thread,
//! and each decoded op is allocated and freed on the thread that handles it (an op allocated on
//! one thread and freed on another makes the two contend for the allocator's locks).

use std::collections::VecDeque;

use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};

/// Where some bytes are in [`Burst::bytes`].
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

#[derive(Debug)]
struct CopiedHeader {
    key: Span,
    value: Option<Span>,
}

#[derive(Debug)]
struct CopiedRecord {
    offset: i64,
    key: Option<Span>,
    value: Option<Span>,
    /// Where the record's headers are in [`Burst::headers`].
    headers: Span,
}

/// Records of one partition, in offset order, copied into one buffer.
#[derive(Debug, Default)]
pub(crate) struct Burst {
    bytes: Vec<u8>,
    records: Vec<CopiedRecord>,
    headers: Vec<CopiedHeader>,
}

impl Burst {
    /// An empty burst with room for as much as `like` holds: consecutive bursts of a busy
    /// partition are alike, so the buffers rarely grow while records are copied in.
    pub(crate) fn sized_like(like: &Burst) -> Self {
        Self {
            bytes: Vec::with_capacity(like.bytes.len()),
            records: Vec::with_capacity(like.records.len()),
            headers: Vec::with_capacity(like.headers.len()),
        }
    }

    /// Copies the key, value and headers of `message` in.
    pub(crate) fn push(&mut self, message: &BorrowedMessage<'_>) {
        let headers = message.headers();
        let headers = headers.iter().flat_map(|headers| headers.iter().map(|header| (header.key, header.value)));
        self.push_parts(message.offset(), message.key(), message.payload(), headers);
    }

    fn push_parts<'h>(&mut self, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>, headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>) {
        let key = key.map(|key| self.copy(key));
        let value = value.map(|value| self.copy(value));
        let first_header = self.headers.len();
        for (name, value) in headers {
            let copied = CopiedHeader { key: self.copy(name.as_bytes()), value: value.map(|value| self.copy(value)) };
            self.headers.push(copied);
        }
        let headers = Span { start: first_header, end: self.headers.len() };
        self.records.push(CopiedRecord { offset, key, value, headers });
    }

    fn copy(&mut self, bytes: &[u8]) -> Span {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        Span { start, end: self.bytes.len() }
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// The offset of the first record, if any.
    pub(crate) fn first_offset(&self) -> Option<i64> {
        self.records.first().map(|record| record.offset)
    }

    /// The record at `index`, borrowed from the burst.
    fn record(&self, index: usize) -> Option<Record<'_>> {
        let copied = self.records.get(index)?;
        Some(Record {
            offset: copied.offset,
            key: copied.key.and_then(|span| self.bytes.get(span.start..span.end)),
            value: copied.value.and_then(|span| self.bytes.get(span.start..span.end)),
            headers: self.headers.get(copied.headers.start..copied.headers.end).unwrap_or_default(),
            bytes: &self.bytes,
        })
    }
}

/// One record of a [`Burst`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub(crate) offset: i64,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    headers: &'a [CopiedHeader],
    bytes: &'a [u8],
}

impl<'a> Record<'a> {
    /// The record's headers, keys and values, in order.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        let bytes = self.bytes;
        self.headers.iter().map(move |header| {
            // Copied from a `&str`, so always UTF-8; an empty key would name no header pgkafka reads.
            let key = bytes.get(header.key.start..header.key.end).and_then(|key| std::str::from_utf8(key).ok()).unwrap_or_default();
            (key, header.value.and_then(|span| bytes.get(span.start..span.end)))
        })
    }
}

/// The bursts a partition's task has received and not yet read, read record by record in order.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    bursts: VecDeque<Burst>,
    /// The index of the next record to read in the first burst.
    next: usize,
}

impl Pending {
    pub(crate) fn push(&mut self, burst: Burst) {
        self.bursts.push_back(burst);
    }

    /// Whether every record received has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.bursts.iter().map(Burst::len).sum::<usize>() <= self.next
    }

    /// Reads the next record with `read`.
    pub(crate) fn pop<T>(&mut self, read: impl FnOnce(Record<'_>) -> T) -> Option<T> {
        loop {
            let first = self.bursts.front()?;
            if let Some(record) = first.record(self.next) {
                self.next += 1;
                return Some(read(record));
            }
            self.bursts.pop_front();
            self.next = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record to copy in: offset, key, value, headers.
    type Parts<'a> = (i64, Option<&'a [u8]>, Option<&'a [u8]>, &'a [(&'a str, Option<&'a [u8]>)]);

    fn burst(records: &[Parts<'_>]) -> Burst {
        let mut burst = Burst::default();
        for (offset, key, value, headers) in records {
            burst.push_parts(*offset, *key, *value, headers.iter().copied());
        }
        burst
    }

    type Owned = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>);

    fn owned(record: Record<'_>) -> Owned {
        let headers = record.headers().map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec))).collect();
        (record.offset, record.key.map(<[u8]>::to_vec), record.value.map(<[u8]>::to_vec), headers)
    }

    /// Records come back from the bursts exactly as copied in, in order across bursts, with and
    /// without keys, values and headers, and an empty burst in between is passed over.
    #[test]
    fn records_are_read_back_in_order_across_bursts() {
        let mut pending = Pending::default();
        pending.push(burst(&[(3, Some(b"k"), Some(b"{}"), &[("a", Some(b"1")), ("b", None)]), (4, None, None, &[])]));
        pending.push(Burst::default());
        pending.push(burst(&[(5, Some(b""), Some(b"v"), &[("c", Some(b""))])]));
        assert!(!pending.is_empty());
        let read: Vec<Owned> = std::iter::from_fn(|| pending.pop(owned)).collect();
        assert_eq!(
            read,
            vec![
                (3, Some(b"k".to_vec()), Some(b"{}".to_vec()), vec![("a".into(), Some(b"1".to_vec())), ("b".into(), None)]),
                (4, None, None, vec![]),
                (5, Some(vec![]), Some(b"v".to_vec()), vec![("c".into(), Some(vec![]))]),
            ]
        );
        assert!(pending.is_empty());
        assert!(pending.pop(owned).is_none());
    }

    #[test]
    fn a_burst_sized_like_another_is_empty() {
        let full = burst(&[(1, Some(b"key"), Some(b"value"), &[("h", Some(b"x"))])]);
        let next = Burst::sized_like(&full);
        assert_eq!((next.len(), next.first_offset(), full.first_offset()), (0, None, Some(1)));
        assert!(next.bytes.capacity() >= full.bytes.len());
    }
}
