//! Flush batches: the unit in which increments reach PostgreSQL, exactly once.
//!
//! Every increment lands in the batch that is open when it is added to the pending buffer; the
//! journal records that batch's number with it, the flusher cuts the batch and writes it in one
//! transaction, and PostgreSQL records the number in that same transaction. A batch is
//! identified by its node, the epoch of the process that cut it, and its [`BatchSeq`]: batches
//! are numbered from 1 in each epoch, in the order they are cut.

use std::fmt;
use std::time::Instant;

/// A flush batch's sequence number within its epoch.
///
/// Batches are written one at a time and in order, so a progress of `n` means "batch `n` and
/// every batch before it are applied"; [`BatchSeq::ZERO`] is the progress of an epoch that
/// applied none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchSeq(u64);

impl BatchSeq {
    /// Before every batch.
    pub const ZERO: BatchSeq = BatchSeq(0);

    /// The first batch of every epoch.
    pub const fn first() -> BatchSeq {
        BatchSeq(1)
    }

    /// The batch numbered `n`, as the journal stores it.
    pub const fn new(n: u64) -> BatchSeq {
        BatchSeq(n)
    }

    /// The number, as the journal stores it.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The batch opened when this one is cut.
    pub fn next(self) -> BatchSeq {
        BatchSeq(self.0 + 1)
    }

    /// The number as PostgreSQL stores it: a `bigint`.
    pub fn to_stored(self) -> i64 {
        i64::try_from(self.0).expect("batch numbers stay far below 2^63")
    }

    /// A number PostgreSQL stored with [`to_stored`](Self::to_stored), which is never negative.
    pub fn from_stored(stored: i64) -> BatchSeq {
        BatchSeq(u64::try_from(stored).unwrap_or(0))
    }
}

impl fmt::Display for BatchSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A cut batch: its deltas sorted by key, ready to be written.
#[derive(Debug)]
pub struct FlushBatch {
    pub seq: BatchSeq,
    /// When this batch was opened: no increment in it is older.
    pub opened_at: Instant,
    /// Sorted by key, each key once.
    pub deltas: Vec<(Box<str>, i64)>,
    /// How many acknowledged increments were summed into `deltas`. Counted for batches cut
    /// from the pending buffer; 0 for a batch rebuilt from the journal, which keeps them until
    /// PostgreSQL has them.
    pub increments: u64,
}

impl FlushBatch {
    /// A batch of `deltas` in any order, each key once.
    pub fn new(seq: BatchSeq, opened_at: Instant, mut deltas: Vec<(Box<str>, i64)>) -> Self {
        deltas.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        FlushBatch {
            seq,
            opened_at,
            deltas,
            increments: 0,
        }
    }

    /// The delta of `key` in this batch, if it has one.
    pub fn delta(&self, key: &str) -> Option<i64> {
        self.deltas
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| self.deltas[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_numbers_count_up_from_one_and_round_trip_through_postgres() {
        assert!(BatchSeq::ZERO < BatchSeq::first());
        assert_eq!(BatchSeq::ZERO.next(), BatchSeq::first());
        assert_eq!(BatchSeq::first().next().get(), 2);
        let n = BatchSeq::new(1 << 40);
        assert_eq!(BatchSeq::from_stored(n.to_stored()), n);
        assert_eq!(n.to_string(), (1u64 << 40).to_string());
    }

    #[test]
    fn a_batch_is_sorted_and_finds_its_keys() {
        let deltas = vec![("b".into(), 2), ("a".into(), 1)];
        let batch = FlushBatch::new(BatchSeq::first(), Instant::now(), deltas);
        assert_eq!(batch.deltas[0].0.as_ref(), "a");
        assert_eq!((batch.delta("b"), batch.delta("c")), (Some(2), None));
    }
}
