//! One shard's map of `key -> sum`, laid out for memory: the keys live end to end in an
//! arena of 64 KiB chunks, each after its length, and the table holds 12-byte slots
//! `(start, sum)` that point into it.
//!
//! A `HashTable<(Box<str>, i64)>` costs 24 bytes a slot plus an allocation per key, which the
//! allocator rounds up (a 36-byte key takes 48 bytes); here a key costs its own bytes, two
//! for its length and a 12-byte slot. The price is that a removed key's bytes stay in the
//! arena until the map is dropped; only taking back an add removes keys, and the map lives for
//! one batch. The chunks are never moved or grown: a growing buffer would leave each smaller
//! copy it outgrew with the allocator, which at a million keys cost more than the keys.
//!
//! hashbrown's `HashTable` does the hashing and probing: it takes the closures that compare
//! and rehash a slot, so the slots need not own their keys. Keys are compared and hashed as
//! bytes; they are only ever stored from a `&str`, and turned back into one when read out.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::AddError;

/// The hasher every shard shares: a key is hashed once, by [`KeyMap::hash`], and that hash
/// picks its shard and its bucket.
pub(super) type KeyHasher = foldhash::fast::RandomState;

/// Bytes of one arena chunk. A key and its length never span two chunks.
const CHUNK: usize = 64 * 1024;

/// Bytes of the length stored before each key.
const LEN_BYTES: usize = 2;

/// The longest key the arena stores, its length included a chunk; keys are validated far
/// below it.
const MAX_KEY: usize = CHUNK - LEN_BYTES;

/// The arena's limit: slots address it with 32-bit offsets.
const MAX_ARENA: usize = u32::MAX as usize;

/// A key's place in the arena and its sum, in 12 bytes: the sum is kept as two halves so
/// that the slot needs only 4-byte alignment.
#[derive(Debug, Clone, Copy)]
struct Slot {
    start: u32,
    sum: [u32; 2],
}

impl Slot {
    fn new(start: usize, sum: i64) -> Slot {
        let mut slot = Slot {
            // At most MAX_ARENA: checked before a key is stored.
            start: start as u32,
            sum: [0; 2],
        };
        slot.set_sum(sum);
        slot
    }

    fn sum(&self) -> i64 {
        (u64::from(self.sum[0]) | (u64::from(self.sum[1]) << 32)) as i64
    }

    fn set_sum(&mut self, sum: i64) {
        let bits = sum as u64;
        self.sum = [bits as u32, (bits >> 32) as u32];
    }
}

/// The keys: chunk `i` holds the bytes at offsets `i * CHUNK ..`, up to its length. Each key
/// is stored as its length (two bytes, little-endian) and then its bytes.
#[derive(Debug, Default)]
struct Arena {
    chunks: Vec<Vec<u8>>,
}

impl Arena {
    /// The key stored at `start`.
    fn key(&self, start: u32) -> &[u8] {
        let start = start as usize;
        let chunk = &self.chunks[start / CHUNK][start % CHUNK..];
        let len = usize::from(u16::from_le_bytes([chunk[0], chunk[1]]));
        &chunk[LEN_BYTES..LEN_BYTES + len]
    }

    /// The key stored at `start`, as the `&str` it was stored from.
    fn key_str(&self, start: u32) -> &str {
        std::str::from_utf8(self.key(start)).expect("the arena stores only whole `&str`s")
    }

    /// Where `key` would be stored: in the last chunk if it fits there, else at the start of
    /// a new one.
    fn next_offset(&self, key: &[u8]) -> usize {
        match self.chunks.last() {
            Some(last) if last.len() + LEN_BYTES + key.len() <= CHUNK => {
                (self.chunks.len() - 1) * CHUNK + last.len()
            }
            _ => self.chunks.len() * CHUNK,
        }
    }

    /// Stores `key` (at most [`MAX_KEY`] bytes) at [`next_offset`](Self::next_offset).
    fn push(&mut self, key: &[u8]) {
        let fits = |c: &Vec<u8>| c.len() + LEN_BYTES + key.len() <= CHUNK;
        if !self.chunks.last().is_some_and(fits) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let chunk = self
            .chunks
            .last_mut()
            .expect("a chunk was just made if none fit");
        chunk.extend_from_slice(&(key.len() as u16).to_le_bytes());
        chunk.extend_from_slice(key);
    }
}

/// A map of `key -> sum` whose keys are stored in an arena.
#[derive(Debug, Default)]
pub(super) struct KeyMap {
    slots: HashTable<Slot>,
    arena: Arena,
    /// Bytes of the keys stored (their lengths not counted), for the metrics.
    key_bytes: usize,
}

impl KeyMap {
    /// An empty map with room for `keys` keys, so that a map sized like the last batch's
    /// never grows (and rehashes) on the request path.
    pub fn with_capacity(keys: usize) -> Self {
        KeyMap {
            slots: HashTable::with_capacity(keys),
            ..KeyMap::default()
        }
    }

    /// The hash [`KeyMap`]'s methods take for `key`.
    pub fn hash(hasher: &KeyHasher, key: &str) -> u64 {
        hasher.hash_one(key.as_bytes())
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Bytes of every key added since the map was made.
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// Whether the arena can store `key` at all: its length and itself fit one chunk.
    pub fn is_storable(key: &str) -> bool {
        key.len() <= MAX_KEY
    }

    /// Bytes `key` takes in the arena: its length, then itself.
    pub fn stored_len(key: &str) -> usize {
        LEN_BYTES + key.len()
    }

    /// Whether keys taking `stored` bytes in all ([`stored_len`](Self::stored_len)) can be
    /// added, however they fall into chunks.
    pub fn has_room_for(&self, stored: usize) -> bool {
        // A key starts a new chunk only when it does not fit in the last one, so any two
        // neighbouring chunks hold more than a chunk's worth: a chunk per half chunk stored,
        // and one more, cover any order of keys.
        let chunks = self.arena.chunks.len() + 1 + stored.div_ceil(CHUNK / 2);
        chunks * CHUNK <= MAX_ARENA
    }

    /// The sum of `key`, whose hash is `hash`.
    pub fn get(&self, hash: u64, key: &str) -> Option<i64> {
        let arena = &self.arena;
        self.slots
            .find(hash, |s| arena.key(s.start) == key.as_bytes())
            .map(Slot::sum)
    }

    /// Adds `delta` to the sum of `key`. A key not in the map is added only if it fits the
    /// arena and `admit` allows it; returns whether it was added.
    pub fn add(
        &mut self,
        hasher: &KeyHasher,
        hash: u64,
        key: &str,
        delta: i64,
        admit: impl FnOnce() -> Result<(), AddError>,
    ) -> Result<bool, AddError> {
        let KeyMap { slots, arena, .. } = self;
        let key = key.as_bytes();
        let entry = slots.entry(
            hash,
            |s| arena.key(s.start) == key,
            |s| hasher.hash_one(arena.key(s.start)),
        );
        match entry {
            Entry::Occupied(mut e) => {
                let slot = e.get_mut();
                slot.set_sum(slot.sum().checked_add(delta).ok_or(AddError::Overflow)?);
                Ok(false)
            }
            Entry::Vacant(e) => {
                let start = arena.next_offset(key);
                if key.len() > MAX_KEY || start + LEN_BYTES + key.len() > MAX_ARENA {
                    return Err(AddError::Full);
                }
                admit()?;
                e.insert(Slot::new(start, delta));
                arena.push(key);
                self.key_bytes += key.len();
                Ok(true)
            }
        }
    }

    /// Takes `delta` back from the sum of `key`, removing the key when its sum comes back to
    /// 0 (its bytes stay in the arena). Returns whether it was removed, or `None` when the key
    /// is not in the map.
    pub fn take_back(&mut self, hash: u64, key: &str, delta: i64) -> Option<bool> {
        let arena = &self.arena;
        let mut entry = self
            .slots
            .find_entry(hash, |s| arena.key(s.start) == key.as_bytes())
            .ok()?;
        let slot = entry.get_mut();
        // Cannot overflow: it reverses an add made to this same sum.
        slot.set_sum(slot.sum() - delta);
        if slot.sum() != 0 {
            return Some(false);
        }
        entry.remove();
        Some(true)
    }

    /// Every key, in no order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| self.arena.key_str(s.start))
    }

    /// Every `(key, sum)`, each key in its own allocation, as a cut batch holds them, in the
    /// order they were added.
    pub fn into_owned(self) -> impl Iterator<Item = (Box<str>, i64)> {
        let KeyMap { slots, arena, .. } = self;
        // Read in arena order: reading in table order jumps about the arena, a cache miss a
        // key, and took 1.6 times as long at a million keys.
        let mut slots: Vec<Slot> = slots.into_iter().collect();
        slots.sort_unstable_by_key(|s| s.start);
        slots
            .into_iter()
            .map(move |s| (arena.key_str(s.start).into(), s.sum()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(map: &mut KeyMap, hasher: &KeyHasher, key: &str, delta: i64) -> Result<bool, AddError> {
        map.add(hasher, KeyMap::hash(hasher, key), key, delta, || Ok(()))
    }

    fn get(map: &KeyMap, hasher: &KeyHasher, key: &str) -> Option<i64> {
        map.get(KeyMap::hash(hasher, key), key)
    }

    #[test]
    fn keys_are_found_summed_and_survive_the_table_growing() {
        let hasher = KeyHasher::default();
        let mut map = KeyMap::default();
        let keys: Vec<String> = (0..10_000).map(|i| format!("key-{i}")).collect();
        for key in &keys {
            assert_eq!(add(&mut map, &hasher, key, 1), Ok(true), "{key} is new");
        }
        assert_eq!(add(&mut map, &hasher, "key-7", 2), Ok(false));
        assert_eq!(add(&mut map, &hasher, "key-8", -(1 << 40)), Ok(false));
        assert_eq!(map.len(), keys.len());
        assert_eq!(get(&map, &hasher, "key-7"), Some(3));
        assert_eq!(
            get(&map, &hasher, "key-8"),
            Some(1 - (1 << 40)),
            "both halves"
        );
        assert_eq!(get(&map, &hasher, "key-"), None);
        assert_eq!(map.key_bytes(), keys.iter().map(String::len).sum::<usize>());
        let mut owned: Vec<(Box<str>, i64)> = map.into_owned().collect();
        owned.sort();
        assert_eq!(owned.len(), keys.len());
        assert_eq!(owned[0], ("key-0".into(), 1));
    }

    #[test]
    fn overflow_and_a_refused_key_change_nothing() {
        let hasher = KeyHasher::default();
        let mut map = KeyMap::default();
        add(&mut map, &hasher, "a", i64::MAX).unwrap();
        assert_eq!(add(&mut map, &hasher, "a", 1), Err(AddError::Overflow));
        assert_eq!(get(&map, &hasher, "a"), Some(i64::MAX));
        let hash = KeyMap::hash(&hasher, "b");
        let refused = map.add(&hasher, hash, "b", 1, || Err(AddError::Full));
        assert_eq!(refused, Err(AddError::Full));
        assert_eq!((map.len(), map.key_bytes()), (1, 1));
    }

    #[test]
    fn a_key_is_removed_when_taken_back_to_zero() {
        let hasher = KeyHasher::default();
        let mut map = KeyMap::default();
        let hash = KeyMap::hash(&hasher, "ü/k");
        add(&mut map, &hasher, "ü/k", 5).unwrap();
        add(&mut map, &hasher, "ü/k", 2).unwrap();
        assert_eq!(map.take_back(hash, "ü/k", 2), Some(false), "the sum is 5");
        assert_eq!(map.take_back(hash, "ü/k", 5), Some(true));
        assert_eq!(map.take_back(hash, "ü/k", 5), None, "gone");
        assert_eq!(map.keys().count(), 0);
    }

    /// Keys fill a chunk to its end and go on in the next; none is split or moved.
    #[test]
    fn keys_fill_chunks_without_spanning_two() {
        let hasher = KeyHasher::default();
        let mut map = KeyMap::default();
        let long = |i: usize| format!("{i:0>1000}");
        for i in 0..200 {
            add(&mut map, &hasher, &long(i), i as i64).unwrap();
        }
        assert_eq!(map.arena.chunks.len(), 4, "65 keys of 1002 bytes a chunk");
        assert!(map.arena.chunks.iter().all(|c| c.len() <= CHUNK));
        for i in 0..200 {
            assert_eq!(get(&map, &hasher, &long(i)), Some(i as i64));
        }
        let longest = "k".repeat(MAX_KEY);
        assert_eq!(add(&mut map, &hasher, &longest, 1), Ok(true));
        assert_eq!(get(&map, &hasher, &longest), Some(1));
        assert!(
            map.arena.chunks.iter().all(|c| c.capacity() == CHUNK),
            "the longest key fills a chunk exactly: no chunk grew"
        );
        let too_long = "k".repeat(MAX_KEY + 1);
        assert_eq!(add(&mut map, &hasher, &too_long, 1), Err(AddError::Full));
        assert_eq!(KeyMap::stored_len("k"), 3, "one byte of key, three stored");
        assert!(map.has_room_for(1 << 20) && !map.has_room_for(MAX_ARENA / 2));
    }
}
