//! The open batch: per key, the sum of the increments added since the last cut.
//!
//! Requests add into a map of `key -> delta`, split into shards so that concurrent requests
//! rarely wait on the same lock. The key is hashed once: the hash picks the shard and is
//! handed to the shard's table, and a key that is already pending is found by that hash and a
//! string compare, without allocating.
//!
//! Every shard carries the number of the flush batch its map belongs to. The flusher *cuts* a
//! batch by swapping each shard's map for an empty one and raising the shard's number, under
//! that shard's lock. An increment is therefore always added under the same lock that tells
//! it which batch it landed in; [`PendingDeltas::add`] returns that number, and that is the
//! number the journal records with it. No increment can fall between two batches.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::key_map::{KeyHasher, KeyMap};
use crate::batch::BatchSeq;
use crate::sync::lock;

/// Number of shards; a power of two. Far more than the cores of a small machine, so two
/// requests on different keys almost never share a lock.
const SHARDS: usize = 64;

/// Why an increment could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    /// The key's pending delta would leave the signed 64-bit range.
    #[error("the pending delta of this key would leave the signed 64-bit range")]
    Overflow,
    /// The key is new and the bound on pending keys is reached.
    #[error("too many keys are pending")]
    Full,
    /// The map is closed: the node is stopping and its final batch may already be cut.
    #[error("the node is stopping and takes no more increments")]
    Closed,
}

struct Shard {
    batch: BatchSeq,
    deltas: KeyMap,
    /// Increments summed into `deltas`, so that a stop that cannot write them can say how
    /// many acknowledged increments it dropped. Kept under the shard's lock, beside the
    /// deltas, so that counting costs the request path no shared atomic.
    increments: u64,
    /// Set by [`PendingDeltas::close`]; read under the lock by every add.
    closed: bool,
}

/// The sharded map of pending deltas. Cheap to share behind an `Arc`.
pub struct PendingDeltas {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    hasher: KeyHasher,
    /// Keys held in memory: in the open maps and in cut batches not yet released.
    keys: CachePadded<AtomicUsize>,
    /// The bound on `keys`; a reload may change it ([`PendingDeltas::set_max_keys`]).
    max_keys: AtomicUsize,
    /// Set by any add since the last cut; lets the flusher know the open batch is not empty
    /// without taking every lock.
    dirty: CachePadded<AtomicBool>,
}

impl PendingDeltas {
    /// An empty map whose first batch is `first_batch`, refusing new keys past `max_keys`.
    pub fn new(first_batch: BatchSeq, max_keys: usize) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                CachePadded::new(Mutex::new(Shard {
                    batch: first_batch,
                    deltas: KeyMap::default(),
                    increments: 0,
                    closed: false,
                }))
            })
            .collect();
        PendingDeltas {
            shards,
            hasher: KeyHasher::default(),
            keys: CachePadded::new(AtomicUsize::new(0)),
            max_keys: AtomicUsize::new(max_keys),
            dirty: CachePadded::new(AtomicBool::new(false)),
        }
    }

    /// The key's hash and its shard's index.
    fn locate(&self, key: &str) -> (u64, usize) {
        let hash = KeyMap::hash(&self.hasher, key);
        // hashbrown uses the low bits for the bucket and the top seven for its tag; the shard
        // comes from bits in between so that neither is skewed within a shard.
        (hash, (hash >> 40) as usize & (SHARDS - 1))
    }

    /// Adds `delta` to `key` and returns the batch it landed in.
    pub fn add(&self, key: &str, delta: i64) -> Result<BatchSeq, AddError> {
        let (hash, shard) = self.locate(key);
        let mut shard = lock(&self.shards[shard]);
        if shard.closed {
            return Err(AddError::Closed);
        }
        let batch = shard.batch;
        let admit = || {
            if self.keys.load(Ordering::Relaxed) >= self.max_keys.load(Ordering::Relaxed) {
                return Err(AddError::Full);
            }
            Ok(())
        };
        if shard.deltas.add(&self.hasher, hash, key, delta, admit)? {
            self.keys.fetch_add(1, Ordering::Relaxed);
        }
        shard.increments += 1;
        drop(shard);
        self.mark_dirty();
        Ok(batch)
    }

    /// Adds every `(key, delta)` or none of them, and returns the batch each landed in. On
    /// overflow, the error names the index of the item that overflowed.
    ///
    /// The shards involved are locked together, in index order (so two callers cannot
    /// deadlock), checked, and only then changed.
    pub fn add_all(
        &self,
        items: &[(&str, i64)],
    ) -> Result<Vec<BatchSeq>, (Option<usize>, AddError)> {
        let located: Vec<(u64, usize)> = items.iter().map(|(key, _)| self.locate(key)).collect();
        let mut wanted: Vec<usize> = located.iter().map(|&(_, s)| s).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut guards: Vec<_> = wanted.iter().map(|&s| lock(&self.shards[s])).collect();
        let guard_of = |s: usize| wanted.binary_search(&s).expect("shard was locked");
        if guards.iter().any(|g| g.closed) {
            return Err((None, AddError::Closed));
        }

        // Check: the sum each key would reach, counting repeats within `items`, and that each
        // shard's arena has room for all of them (counting every key as new, which is more
        // than enough).
        let mut stored = vec![0usize; guards.len()];
        for ((key, _), &(_, shard)) in items.iter().zip(&located) {
            if !KeyMap::is_storable(key) {
                return Err((None, AddError::Full));
            }
            stored[guard_of(shard)] += KeyMap::stored_len(key);
        }
        if guards
            .iter()
            .zip(&stored)
            .any(|(g, &bytes)| !g.deltas.has_room_for(bytes))
        {
            return Err((None, AddError::Full));
        }
        let mut new_keys = 0usize;
        let mut seen: HashTable<(usize, i64)> = HashTable::with_capacity(items.len());
        for (i, ((key, delta), &(hash, shard))) in items.iter().zip(&located).enumerate() {
            let current = guards[guard_of(shard)].deltas.get(hash, key);
            let entry = seen.entry(hash, |&(j, _)| items[j].0 == *key, |&(j, _)| located[j].0);
            match entry {
                Entry::Occupied(mut e) => {
                    let sum = &mut e.get_mut().1;
                    *sum = sum
                        .checked_add(*delta)
                        .ok_or((Some(i), AddError::Overflow))?;
                }
                Entry::Vacant(e) => {
                    let base = current.unwrap_or_else(|| {
                        new_keys += 1;
                        0
                    });
                    let sum = base
                        .checked_add(*delta)
                        .ok_or((Some(i), AddError::Overflow))?;
                    e.insert((i, sum));
                }
            }
        }
        if new_keys > 0
            && self.keys.load(Ordering::Relaxed) + new_keys > self.max_keys.load(Ordering::Relaxed)
        {
            return Err((None, AddError::Full));
        }

        // Apply: nothing below can fail.
        let mut batches = Vec::with_capacity(items.len());
        for ((key, delta), &(hash, shard)) in items.iter().zip(&located) {
            let shard = &mut *guards[guard_of(shard)];
            batches.push(shard.batch);
            shard.increments += 1;
            shard
                .deltas
                .add(&self.hasher, hash, key, *delta, || Ok(()))
                .expect("every sum and every shard's room for new keys was checked");
        }
        self.keys.fetch_add(new_keys, Ordering::Relaxed);
        drop(guards);
        self.mark_dirty();
        Ok(batches)
    }

    /// Takes back every `(key, delta, batch)` add of a request whose acknowledgement failed
    /// (its journal records could not be made durable), or none of them: all or nothing, so
    /// that a request is never half applied. Returns false, changing nothing, when any of
    /// their batches was cut in the meantime: those adds will reach PostgreSQL, and the
    /// request's outcome is unknown to the client.
    ///
    /// A sum taken back to zero is removed, so that a key the request added is not written.
    pub fn undo_all(&self, adds: &[(&str, i64, BatchSeq)]) -> bool {
        let located: Vec<(u64, usize)> = adds.iter().map(|(key, _, _)| self.locate(key)).collect();
        let mut wanted: Vec<usize> = located.iter().map(|&(_, s)| s).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut guards: Vec<_> = wanted.iter().map(|&s| lock(&self.shards[s])).collect();
        let guard_of = |s: usize| wanted.binary_search(&s).expect("shard was locked");
        let all_open = adds
            .iter()
            .zip(&located)
            .all(|(&(key, _, batch), &(hash, s))| {
                let shard = &guards[guard_of(s)];
                shard.batch == batch && shard.deltas.get(hash, key).is_some()
            });
        if !all_open {
            return false;
        }
        let mut removed = 0;
        for (&(key, delta, _), &(hash, s)) in adds.iter().zip(&located) {
            let shard = &mut *guards[guard_of(s)];
            let Some(gone) = shard.deltas.take_back(hash, key, delta) else {
                continue;
            };
            shard.increments = shard.increments.saturating_sub(1);
            removed += usize::from(gone);
        }
        self.keys.fetch_sub(removed, Ordering::Relaxed);
        true
    }

    fn mark_dirty(&self) {
        // Read first: the flag is almost always set already, and a read keeps the cache line
        // shared between cores instead of bouncing it.
        if !self.dirty.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// The delta pending for `key` in the open batch, if any, with that batch's number.
    pub fn get(&self, key: &str) -> Option<(i64, BatchSeq)> {
        let (hash, shard) = self.locate(key);
        let shard = lock(&self.shards[shard]);
        shard.deltas.get(hash, key).map(|d| (d, shard.batch))
    }

    /// The rest of every key of the open batch that starts with `prefix`, appended to `out`.
    /// It visits every key, one shard at a time, each under its lock: a read of a tenant's
    /// items costs time in the number of keys pending, not in the tenant's.
    pub fn suffixes_of(&self, prefix: &str, out: &mut Vec<Box<str>>) {
        for shard in self.shards.iter() {
            let shard = lock(shard);
            out.extend(
                shard
                    .deltas
                    .keys()
                    .filter_map(|k| k.strip_prefix(prefix))
                    .map(Box::from),
            );
        }
    }

    /// Closes the open batch and opens batch `next`: every shard's map is swapped for an empty
    /// one. Returns the closed batch's deltas, unordered.
    ///
    /// The keys stay counted against the bound until [`release`](Self::release) is called,
    /// once PostgreSQL has them.
    pub fn cut(&self, next: BatchSeq) -> Vec<(Box<str>, i64)> {
        self.cut_counted(next).0
    }

    /// [`cut`](Self::cut), also returning how many increments were summed into the closed
    /// batch.
    pub fn cut_counted(&self, next: BatchSeq) -> (Vec<(Box<str>, i64)>, u64) {
        // Cleared before the swaps: an add that races with the cut sets it again, which can
        // only make the open batch look older than it is, never younger.
        self.dirty.store(false, Ordering::Relaxed);
        let mut maps = Vec::with_capacity(SHARDS);
        let mut increments = 0;
        for shard in self.shards.iter() {
            // The next batch will likely see about as many keys as this one: sized for them
            // now, its map never grows (and rehashes) on the request path.
            let sized = {
                let map = &lock(shard).deltas;
                KeyMap::with_capacity(map.len())
            };
            let mut shard = lock(shard);
            shard.batch = next;
            increments += std::mem::take(&mut shard.increments);
            maps.push(std::mem::replace(&mut shard.deltas, sized));
        }
        // Each key gets its own allocation here, outside the locks: the batch in flight is
        // sorted, searched and encoded as `(key, delta)` pairs.
        let mut deltas = Vec::with_capacity(maps.iter().map(KeyMap::len).sum());
        for map in maps {
            deltas.extend(map.into_owned());
        }
        (deltas, increments)
    }

    /// Refuses every later add, with [`AddError::Closed`]. Each shard is closed under its
    /// lock, so once this returns no add can succeed anywhere, and an add that did succeed
    /// is in the open batch, for the next cut. A stopping node closes the map before its
    /// final cut, so that nothing is acknowledged after it and left behind.
    pub fn close(&self) {
        for shard in self.shards.iter() {
            lock(shard).closed = true;
        }
    }

    /// Forgets `keys` keys of a batch that PostgreSQL now holds.
    pub fn release(&self, keys: usize) {
        self.keys.fetch_sub(keys, Ordering::Relaxed);
    }

    /// Keys held in memory (open batch and unreleased cut batches).
    pub fn keys(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// Whether new keys are refused: the bound on keys held is reached.
    pub fn is_full(&self) -> bool {
        self.keys() >= self.max_keys.load(Ordering::Relaxed)
    }

    /// Refuses new keys past `max_keys` from now on. Keys already held stay, even above it.
    pub fn set_max_keys(&self, max_keys: usize) {
        self.max_keys.store(max_keys, Ordering::Relaxed);
    }

    /// Increments summed into the open batch (those taken back by
    /// [`undo_all`](Self::undo_all) not counted).
    pub fn open_increments(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).increments).sum()
    }

    /// Bytes of keys and deltas in the open batch.
    pub fn open_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = lock(s);
                s.deltas.key_bytes() + s.deltas.len() * std::mem::size_of::<i64>()
            })
            .sum()
    }

    /// Whether anything was added since the last cut.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn b(n: u64) -> BatchSeq {
        BatchSeq::new(n)
    }

    #[test]
    fn adds_sum_per_key_and_cut_empties_the_map() {
        let p = PendingDeltas::new(b(1), 100);
        assert_eq!(p.add("a", 2), Ok(b(1)));
        assert_eq!(p.add("a", 3), Ok(b(1)));
        assert_eq!(p.add("b", 1), Ok(b(1)));
        assert_eq!(p.get("a"), Some((5, b(1))));
        assert_eq!(p.keys(), 2);
        assert!(p.is_dirty());

        let mut batch = p.cut(b(2));
        batch.sort();
        assert_eq!(batch, vec![("a".into(), 5), ("b".into(), 1)]);
        assert_eq!(p.get("a"), None);
        assert!(!p.is_dirty());
        assert_eq!(
            p.add("a", 1),
            Ok(b(2)),
            "adds after a cut land in the next batch"
        );
        assert_eq!(p.keys(), 3, "cut keys count until released");
        p.release(2);
        assert_eq!(p.keys(), 1);
    }

    #[test]
    fn increments_are_counted_per_batch_not_per_key() {
        let p = PendingDeltas::new(b(1), 100);
        p.add("a", 5).unwrap();
        p.add("a", 5).unwrap();
        let batch = p.add("b", 1).unwrap();
        p.add_all(&[("a", 1), ("c", 2), ("c", 2)]).unwrap();
        assert_eq!(p.add("a", i64::MAX), Err(AddError::Overflow));
        assert_eq!(p.open_increments(), 6, "a refused add is not counted");
        assert!(p.undo_all(&[("b", 1, batch)]));
        assert_eq!(p.open_increments(), 5, "an add taken back is not counted");

        let (deltas, increments) = p.cut_counted(b(2));
        assert_eq!(
            (deltas.len(), increments),
            (2, 5),
            "b, taken back to zero, is gone"
        );
        assert_eq!(p.open_increments(), 0);
        p.add("a", 1).unwrap();
        assert_eq!(p.cut_counted(b(3)).1, 1);
    }

    #[test]
    fn a_closed_map_refuses_every_add_and_keeps_what_it_took() {
        let p = PendingDeltas::new(b(1), 100);
        p.add("a", 2).unwrap();
        p.close();
        assert_eq!(p.add("a", 1), Err(AddError::Closed));
        assert_eq!(p.add("new", 1), Err(AddError::Closed));
        assert_eq!(
            p.add_all(&[("a", 1), ("b", 1)]),
            Err((None, AddError::Closed))
        );
        assert_eq!(p.open_increments(), 1);
        assert_eq!(
            p.cut(b(2)),
            vec![("a".into(), 2)],
            "the final cut has what was taken"
        );
    }

    /// Threads add while another closes the map: every add that succeeded is in the cut
    /// made after `close` returned, and none succeeds after.
    #[test]
    fn no_add_succeeds_once_close_returns() {
        let p = Arc::new(PendingDeltas::new(b(1), usize::MAX));
        let adders: Vec<_> = (0..4)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut taken = 0i64;
                    for i in 0.. {
                        let key = format!("k{}", (i * 7 + t) % 50);
                        let result = if i % 3 == 0 {
                            p.add_all(&[(&key, 1), ("shared", 1)])
                                .map(|_| 2)
                                .map_err(|(_, e)| e)
                        } else {
                            p.add(&key, 1).map(|_| 1)
                        };
                        match result {
                            Ok(n) => taken += n,
                            Err(AddError::Closed) => return taken,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        p.close();
        let (deltas, increments) = p.cut_counted(b(2));
        let taken: i64 = adders.into_iter().map(|a| a.join().unwrap()).sum();
        assert_eq!(deltas.iter().map(|(_, d)| d).sum::<i64>(), taken);
        assert_eq!(increments, taken as u64);
        assert!(
            p.cut(b(3)).is_empty(),
            "nothing was added after close returned"
        );
    }

    #[test]
    fn an_add_can_be_taken_back_while_its_batch_is_open() {
        let p = PendingDeltas::new(b(1), 100);
        p.add("k", 5).unwrap();
        let batch = p.add("k", 3).unwrap();
        assert!(p.undo_all(&[("k", 3, batch)]));
        assert_eq!(p.get("k"), Some((5, b(1))));
        let batch = p.add("new", 4).unwrap();
        assert_eq!(p.keys(), 2);
        assert!(p.undo_all(&[("new", 4, batch)]));
        assert_eq!(p.get("new"), None, "a key the add created is gone");
        assert_eq!(p.keys(), 1);
        let batch = p.add("k", 2).unwrap();
        p.cut(b(2));
        assert!(
            !p.undo_all(&[("k", 2, batch)]),
            "a cut batch is on its way to PostgreSQL"
        );
    }

    #[test]
    fn taking_back_several_adds_is_all_or_nothing() {
        let p = PendingDeltas::new(b(1), 100);
        let batches = p.add_all(&[("a", 1), ("b", 2), ("a", 3)]).unwrap();
        let adds: Vec<_> = [("a", 1), ("b", 2), ("a", 3)]
            .iter()
            .zip(&batches)
            .map(|(&(k, d), &b)| (k, d, b))
            .collect();
        let mut stale = adds.clone();
        stale[1].2 = BatchSeq::ZERO;
        assert!(!p.undo_all(&stale), "one add of another batch");
        assert_eq!(p.get("a"), Some((4, b(1))), "nothing was taken back");
        assert!(p.undo_all(&adds));
        assert_eq!((p.get("a"), p.get("b"), p.keys()), (None, None, 0));
    }

    #[test]
    fn overflow_is_refused_for_that_key_only() {
        let p = PendingDeltas::new(b(1), 100);
        p.add("big", i64::MAX).unwrap();
        assert_eq!(p.add("big", 1), Err(AddError::Overflow));
        assert_eq!(p.get("big"), Some((i64::MAX, b(1))));
        assert_eq!(p.add("other", 1), Ok(b(1)));
    }

    #[test]
    fn new_keys_are_refused_past_the_bound_but_pending_keys_still_count() {
        let p = PendingDeltas::new(b(1), 2);
        p.add("a", 1).unwrap();
        p.add("b", 1).unwrap();
        assert_eq!(p.add("c", 1), Err(AddError::Full));
        assert_eq!(p.add("a", 1), Ok(b(1)));
        let batch = p.cut(b(2));
        assert_eq!(
            p.add("c", 1),
            Err(AddError::Full),
            "a cut batch still holds memory"
        );
        p.release(batch.len());
        assert_eq!(p.add("c", 1), Ok(b(2)));
    }

    #[test]
    fn add_all_is_all_or_nothing() {
        let p = PendingDeltas::new(b(7), 100);
        p.add("x", i64::MAX - 1).unwrap();
        assert_eq!(
            p.add_all(&[("a", 1), ("x", 1), ("x", 1)]),
            Err((Some(2), AddError::Overflow))
        );
        assert_eq!(p.get("a"), None, "nothing of a refused batch is applied");
        assert_eq!(p.get("x"), Some((i64::MAX - 1, b(7))));

        assert_eq!(
            p.add_all(&[("a", 1), ("x", 1), ("a", 2)]),
            Ok(vec![b(7); 3])
        );
        assert_eq!(p.get("a"), Some((3, b(7))));
        assert_eq!(p.get("x"), Some((i64::MAX, b(7))));
        assert_eq!(p.keys(), 2);

        let small = PendingDeltas::new(b(1), 2);
        small.add("a", 1).unwrap();
        assert_eq!(
            small.add_all(&[("b", 1), ("c", 1)]),
            Err((None, AddError::Full))
        );
        assert_eq!(
            small.add_all(&[("b", 1), ("a", 1), ("b", 1)]),
            Ok(vec![b(1); 3])
        );
        assert_eq!(small.get("b"), Some((2, b(1))));
    }

    /// A key the arena cannot store is refused, and the request with it whole: nothing of it
    /// is added, where the check used to pass it and the apply found no room.
    #[test]
    fn a_key_too_long_to_store_is_refused_whole() {
        let p = PendingDeltas::new(b(1), 100);
        let too_long = "k".repeat(1 << 16);
        assert_eq!(p.add(&too_long, 1), Err(AddError::Full));
        assert_eq!(
            p.add_all(&[("a", 1), (&too_long, 1)]),
            Err((None, AddError::Full))
        );
        assert_eq!((p.keys(), p.get("a")), (0, None));
    }

    /// Many threads add while another keeps cutting: every increment lands in exactly one
    /// batch, and the batch number each add returned is the batch that holds it.
    #[test]
    fn concurrent_adds_and_cuts_lose_nothing_and_tag_truthfully() {
        let p = Arc::new(PendingDeltas::new(b(1), usize::MAX));
        let threads = 4;
        let per_thread = 20_000;
        let adders: Vec<_> = (0..threads)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut by_batch: HashMap<(BatchSeq, String), i64> = HashMap::new();
                    for i in 0..per_thread {
                        let key = format!("k{}", (i * 7 + t) % 50);
                        let batch = p.add(&key, 1).unwrap();
                        *by_batch.entry((batch, key)).or_default() += 1;
                    }
                    by_batch
                })
            })
            .collect();
        let mut cut: HashMap<(BatchSeq, String), i64> = HashMap::new();
        let mut counted = 0;
        let mut open = b(1);
        loop {
            let finished = adders.iter().all(|a| a.is_finished());
            let (deltas, increments) = p.cut_counted(open.next());
            for (k, d) in deltas {
                cut.insert((open, k.into()), d);
            }
            counted += increments;
            open = open.next();
            if finished {
                break;
            }
        }
        let mut tagged: HashMap<(BatchSeq, String), i64> = HashMap::new();
        for a in adders {
            for (k, d) in a.join().unwrap() {
                *tagged.entry(k).or_default() += d;
            }
        }
        assert_eq!(cut, tagged);
        assert_eq!(cut.values().sum::<i64>(), (threads * per_thread) as i64);
        assert_eq!(
            counted,
            (threads * per_thread) as u64,
            "each add counted once"
        );
    }
}
