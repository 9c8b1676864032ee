//! The pending buffer: the increments this node acknowledged that PostgreSQL does not have yet.
//!
//! It has two parts. The *open batch* ([`PendingDeltas`], `deltas.rs`) is where requests add:
//! a sharded map of per-key sums that tells each increment which batch it landed in. The
//! *batch in flight* is the one the flusher cut from it and is writing; [`Unpersisted`] keeps
//! it, sorted by key, until PostgreSQL has it. The request path and the flusher share one
//! [`Unpersisted`]: requests add to it and read from it, the flusher cuts and settles.
//!
//! What it answers for the rest of the node: a key's deltas held in memory (for reads, which
//! add those PostgreSQL lacks to its total), how old the oldest of them is (the freshness bound
//! of `/ready`), how many keys and bytes it holds (the memory bound and the metrics), and what
//! a stop that cannot write them would drop.

mod deltas;
mod key_map;

pub use deltas::{AddError, PendingDeltas};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::batch::{BatchSeq, FlushBatch};
use crate::item;
use crate::sync::lock;

/// The pending buffer: the open batch and the batch in flight. Shared behind an `Arc` by the
/// request path and the flusher.
pub struct Unpersisted {
    open: PendingDeltas,
    /// The cut batch until PostgreSQL has it. Also held while cutting, so that a reader sees
    /// each delta either in the open batch or here, never in neither.
    in_flight: Mutex<Option<Arc<FlushBatch>>>,
    /// When the open batch was opened.
    open_since: Mutex<Instant>,
}

/// Acknowledged increments held in memory that PostgreSQL does not have yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unwritten {
    /// Keys of the batch in flight plus keys of the open batch (a key in both counts twice).
    pub keys: usize,
    pub increments: u64,
}

/// A delta held in memory for one key, and the batch that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldDelta {
    pub batch: BatchSeq,
    pub delta: i64,
}

impl Unpersisted {
    /// An empty buffer whose open batch is `first_batch`, refusing new keys past `max_keys`
    /// (counting the keys of the batch in flight too).
    pub fn new(first_batch: BatchSeq, max_keys: usize) -> Self {
        Unpersisted {
            open: PendingDeltas::new(first_batch, max_keys),
            in_flight: Mutex::new(None),
            open_since: Mutex::new(Instant::now()),
        }
    }

    /// Adds `delta` to `key` in the open batch and returns that batch's number, which the
    /// journal records with it ([`PendingDeltas::add`]).
    pub fn add(&self, key: &str, delta: i64) -> Result<BatchSeq, AddError> {
        self.open.add(key, delta)
    }

    /// Adds every `(key, delta)` or none of them ([`PendingDeltas::add_all`]).
    pub fn add_all(
        &self,
        items: &[(&str, i64)],
    ) -> Result<Vec<BatchSeq>, (Option<usize>, AddError)> {
        self.open.add_all(items)
    }

    /// Takes back the adds of a request whose acknowledgement failed, all or none; false when
    /// one of their batches was cut meanwhile ([`PendingDeltas::undo_all`]).
    pub fn undo_all(&self, adds: &[(&str, i64, BatchSeq)]) -> bool {
        self.open.undo_all(adds)
    }

    /// Refuses every later add ([`PendingDeltas::close`]): a stopping node calls it before its
    /// final cut, so that nothing is acknowledged after it and left behind.
    pub fn close(&self) {
        self.open.close();
    }

    /// Keys held in memory: the open batch's and the batch in flight's.
    pub fn keys(&self) -> usize {
        self.open.keys()
    }

    /// Whether new keys are refused: the bound on keys held is reached.
    pub fn is_full(&self) -> bool {
        self.open.is_full()
    }

    /// Changes the bound on keys held ([`PendingDeltas::set_max_keys`]).
    pub fn set_max_keys(&self, max_keys: usize) {
        self.open.set_max_keys(max_keys);
    }

    /// Bytes of keys and deltas held in memory: the open batch and the one being written.
    pub fn bytes(&self) -> usize {
        let in_flight = lock(&self.in_flight).as_ref().map_or(0, |b| {
            b.deltas
                .iter()
                .map(|(k, _)| k.len() + std::mem::size_of::<i64>())
                .sum()
        });
        self.open.open_bytes() + in_flight
    }

    /// The deltas of `key` that this node holds in memory: at most one in the batch being
    /// written and one in the open batch. A caller that reads PostgreSQL *after* this call
    /// adds those whose batch is above the progress it read there.
    pub fn held(&self, key: &str) -> Vec<HeldDelta> {
        let in_flight = lock(&self.in_flight);
        let mut found = Vec::with_capacity(2);
        if let Some(batch) = in_flight.as_ref()
            && let Some(delta) = batch.delta(key)
        {
            found.push(HeldDelta {
                batch: batch.seq,
                delta,
            });
        }
        if let Some((delta, batch)) = self.open.get(key) {
            found.push(HeldDelta { batch, delta });
        }
        found
    }

    /// The ids of `tenant`'s items (`crate::item`) this node holds in memory, each once: in
    /// the batch being written and in the open batch. A caller that reads PostgreSQL *after*
    /// this call counts those PostgreSQL does not have.
    pub fn held_items(&self, tenant: &str) -> Vec<Box<str>> {
        let prefix = item::tenant_prefix(tenant);
        // Held while the open batch is read, so that no cut moves an id from the open batch
        // to the batch in flight, unseen, in between.
        let in_flight = lock(&self.in_flight);
        let mut ids = Vec::new();
        if let Some(batch) = in_flight.as_ref() {
            let keys = &batch.deltas;
            let start = keys.partition_point(|(k, _)| **k < *prefix);
            ids.extend(
                keys[start..]
                    .iter()
                    .map_while(|(k, _)| k.strip_prefix(&*prefix))
                    .map(Box::from),
            );
        }
        self.open.suffixes_of(&prefix, &mut ids);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Age of the oldest increment PostgreSQL does not have yet (an upper bound: the age of
    /// the batch that holds it), or zero when there is none.
    pub fn oldest_age(&self) -> Duration {
        let oldest = match lock(&self.in_flight).as_ref() {
            Some(batch) => Some(batch.opened_at),
            None if self.open.is_dirty() => Some(*lock(&self.open_since)),
            None => None,
        };
        oldest.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// What PostgreSQL does not have yet: the batch in flight and the open batch. Exact once
    /// nothing can add or cut any more (the buffer closed, the flusher stopped).
    pub fn unwritten(&self) -> Unwritten {
        let in_flight = lock(&self.in_flight);
        Unwritten {
            // The open map counts its keys until they are released, which happens when the
            // batch in flight is settled: that is both batches' keys.
            keys: self.open.keys(),
            increments: in_flight.as_ref().map_or(0, |b| b.increments)
                + self.open.open_increments(),
        }
    }

    /// Closes the open batch, numbered `closing`, opens the next one, and publishes the closed
    /// one as in flight unless it is empty. The flusher's call.
    pub(crate) fn cut(&self, closing: BatchSeq) -> Option<Arc<FlushBatch>> {
        let mut in_flight = lock(&self.in_flight);
        debug_assert!(in_flight.is_none(), "one batch in flight at a time");
        let (deltas, increments) = self.open.cut_counted(closing.next());
        let opened_at = std::mem::replace(&mut *lock(&self.open_since), Instant::now());
        if deltas.is_empty() {
            return None;
        }
        let batch = Arc::new(FlushBatch {
            increments,
            ..FlushBatch::new(closing, opened_at, deltas)
        });
        *in_flight = Some(batch.clone());
        Some(batch)
    }

    /// Forgets the batch in flight: PostgreSQL has it. The flusher's call.
    pub(crate) fn settle(&self, batch: &FlushBatch) {
        let mut in_flight = lock(&self.in_flight);
        if in_flight.as_ref().is_some_and(|b| b.seq == batch.seq) {
            *in_flight = None;
            self.open.release(batch.deltas.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(batch: BatchSeq, delta: i64) -> HeldDelta {
        HeldDelta { batch, delta }
    }

    fn unwritten(keys: usize, increments: u64) -> Unwritten {
        Unwritten { keys, increments }
    }

    /// A read sees each delta once, in the open batch or in flight, from the add until
    /// PostgreSQL has it; the keys stay counted against the bound until then.
    #[test]
    fn a_delta_is_held_from_its_add_until_its_batch_is_settled() {
        let pending = Unpersisted::new(BatchSeq::first(), 10);
        assert_eq!(pending.oldest_age(), Duration::ZERO, "nothing held");
        let first = pending.add("k", 2).unwrap();
        pending.add("k", 3).unwrap();
        assert_eq!(pending.held("k"), [held(first, 5)]);

        let batch = pending.cut(first).expect("the open batch had a key");
        assert_eq!(batch.seq, first);
        assert_eq!(pending.held("k"), [held(first, 5)], "in flight now");
        let second = pending.add("k", 1).unwrap();
        assert_eq!(second, first.next());
        assert_eq!(pending.held("k"), [held(first, 5), held(second, 1)]);
        assert_eq!(pending.unwritten(), unwritten(2, 3));
        assert!(pending.bytes() > 0);

        pending.settle(&batch);
        assert_eq!(pending.held("k"), [held(second, 1)]);
        assert_eq!(pending.unwritten(), unwritten(1, 1));
        let last = pending.cut(second).expect("the open batch had a key");
        pending.settle(&last);
        assert_eq!(pending.unwritten(), unwritten(0, 0));
        assert!(
            pending.cut(second.next()).is_none(),
            "an empty batch is not in flight"
        );
    }

    /// A tenant's ids are found in the open batch and in flight, each once, and no other
    /// tenant's (nor a counter's).
    #[test]
    fn a_tenants_held_items_are_found_in_both_batches_once() {
        use crate::increment::ValidationRules;
        use crate::item::Item;
        let key = |tenant: &str, id: &str| {
            Item::new(tenant.into(), id.into(), &ValidationRules::default())
                .unwrap()
                .pending_key()
        };
        let pending = Unpersisted::new(BatchSeq::first(), 100);
        for (tenant, id) in [("t", "a"), ("t", "b"), ("tt", "x"), ("u", "a")] {
            pending.add(&key(tenant, id), 1).unwrap();
        }
        pending.add("t", 5).unwrap();
        let batch = pending.cut(BatchSeq::first()).unwrap();
        pending.add(&key("t", "b"), 1).unwrap();
        pending.add(&key("t", "c"), 1).unwrap();
        let ids: Vec<String> = pending
            .held_items("t")
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        pending.settle(&batch);
        let ids: Vec<String> = pending
            .held_items("t")
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(ids, ["b", "c"]);
        assert!(pending.held_items("nobody").is_empty());
    }
}
