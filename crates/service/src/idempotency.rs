//! Retries that count once: requests that carry an `Idempotency-Key`.
//!
//! Such a request is not summed into the pending buffer. It is applied to PostgreSQL before
//! its answer, in one transaction that also inserts its key with a fingerprint of the request
//! and the answer it gets (`crate::storage`); a retry of it, on any node and after any crash,
//! finds the key there and gets the same answer without applying anything, and a request
//! that reuses the key for another body is refused. PostgreSQL decides, so two nodes that see
//! the same key at once cannot both apply it: the second waits for the first's row and then
//! finds it. This node keeps the answers it gave recently ([`RecentAnswers`]) so that an
//! immediate retry on the same node is answered without the database.
//!
//! A key is kept `--idempotency-ttl` (24 h by default) after its request, then purged; a
//! retry after that counts again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::increment::Increment;
use crate::ingest::{IngestError, from_storage, merge_sorted};
use crate::item::Item;
use crate::storage::{Effect, Storage, Stored, Work};
use crate::sync::lock;

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// A valid `Idempotency-Key`: 1 to 255 printable ASCII characters (space to `~`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// Why a header value is not a key, with a message fit to show the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidKey(pub &'static str);

impl IdempotencyKey {
    /// Checks a header value's bytes.
    pub fn parse(value: &[u8]) -> Result<Self, InvalidKey> {
        if value.is_empty() {
            return Err(InvalidKey("Idempotency-Key must not be empty"));
        }
        if value.len() > MAX_KEY_BYTES {
            return Err(InvalidKey("Idempotency-Key must be at most 255 characters"));
        }
        if !value.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(InvalidKey(
                "Idempotency-Key must be printable ASCII (space to '~')",
            ));
        }
        // Checked above: ASCII only.
        Ok(IdempotencyKey(String::from_utf8_lossy(value).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a request was: a SHA-256 of its route and its body, byte for byte. A retry sends the
/// same bytes; anything else under the same key is another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(route: &str, body: &[u8]) -> Fingerprint {
        let mut hash = Sha256::new();
        hash.update(route.as_bytes());
        hash.update([0]);
        hash.update(body);
        Fingerprint(hash.finalize().into())
    }
}

/// The answer a request got, to give its retries: a status and a body (empty or JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// What became of a request with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once {
    /// Applied now; this is its answer.
    Applied(Answer),
    /// A retry: applied before, nothing applied now; this is the first answer.
    Replayed(Answer),
    /// The key was used before for another request: nothing applied.
    Reused,
}

/// The answers this node gave recently, by key: at most `capacity`, each for at most `ttl`,
/// the oldest forgotten first. A hand-written FIFO rather than an LRU crate: entries are
/// never refreshed (a retry does not extend a key's life), so insertion order is eviction
/// order.
pub struct RecentAnswers {
    inner: Mutex<Recent>,
    capacity: usize,
    ttl: Duration,
}

#[derive(Default)]
struct Recent {
    answers: HashMap<IdempotencyKey, (Fingerprint, Answer, Instant)>,
    order: VecDeque<IdempotencyKey>,
}

impl RecentAnswers {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        RecentAnswers {
            inner: Mutex::new(Recent::default()),
            capacity,
            ttl,
        }
    }

    /// What this node knows of `key`: `None` if nothing (ask PostgreSQL).
    pub fn get(&self, key: &IdempotencyKey, fingerprint: Fingerprint) -> Option<Once> {
        let recent = lock(&self.inner);
        let (seen, answer, at) = recent.answers.get(key)?;
        if at.elapsed() >= self.ttl {
            return None;
        }
        Some(if *seen == fingerprint {
            Once::Replayed(answer.clone())
        } else {
            Once::Reused
        })
    }

    /// Keeps the answer of a request applied or found in PostgreSQL.
    pub fn put(&self, key: &IdempotencyKey, fingerprint: Fingerprint, answer: &Answer) {
        if self.capacity == 0 {
            return;
        }
        let mut recent = lock(&self.inner);
        let entry = (fingerprint, answer.clone(), Instant::now());
        if recent.answers.insert(key.clone(), entry).is_none() {
            recent.order.push_back(key.clone());
        }
        while recent.answers.len() > self.capacity {
            let Some(oldest) = recent.order.pop_front() else {
                break;
            };
            recent.answers.remove(&oldest);
        }
    }
}

/// Requests with a key, from the handler to PostgreSQL, past this node's recent answers.
pub struct Idempotency {
    storage: Storage,
    recent: RecentAnswers,
    ttl: Duration,
}

impl Idempotency {
    /// Keys are kept `ttl`; this node remembers its last `recent` answers.
    pub fn new(storage: Storage, ttl: Duration, recent: usize) -> Self {
        Idempotency {
            storage,
            recent: RecentAnswers::new(recent, ttl),
            ttl,
        }
    }

    /// How long a key is kept (`--idempotency-ttl`).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Applies increments once for `key`. `answer` makes the request's answer from the new
    /// totals of its keys, sorted by key.
    pub async fn increments(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        incs: &[Increment<'_>],
        answer: impl FnOnce(&[(String, i64)]) -> Answer,
    ) -> Result<Once, IngestError> {
        let merged = merge_sorted(incs).map_err(|index| IngestError::OutOfRange {
            key: incs[index].key().to_owned(),
            index: Some(index),
        })?;
        self.apply(key, fingerprint, Work::Increments(&merged), answer)
            .await
    }

    /// Applies items once for `key`. `answer` makes the request's answer from the count of
    /// every tenant they name, sorted by tenant.
    pub async fn items(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        items: &[Item<'_>],
        answer: impl FnOnce(&[(String, i64)]) -> Answer,
    ) -> Result<Once, IngestError> {
        let mut pairs: Vec<(&str, &str)> = items.iter().map(|i| (i.tenant(), i.id())).collect();
        pairs.sort_unstable();
        pairs.dedup();
        self.apply(key, fingerprint, Work::Items(&pairs), answer)
            .await
    }

    async fn apply(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        work: Work<'_>,
        answer: impl FnOnce(&Effect) -> Answer,
    ) -> Result<Once, IngestError> {
        if let Some(known) = self.recent.get(key, fingerprint) {
            return Ok(known);
        }
        let stored = self
            .storage
            .apply_once(key.as_str(), fingerprint, self.ttl, work, answer)
            .await
            .map_err(|e| from_storage(e, |_| None))?;
        Ok(match stored {
            Stored::New(answer) => {
                self.recent.put(key, fingerprint, &answer);
                Once::Applied(answer)
            }
            Stored::Existing {
                fingerprint: seen,
                answer,
            } if seen == fingerprint => {
                self.recent.put(key, fingerprint, &answer);
                Once::Replayed(answer)
            }
            Stored::Existing { .. } => Once::Reused,
        })
    }
}

/// Deletes expired keys in the background, in small batches ([`crate::storage::PURGE_ROWS`]
/// each), about once a minute.
pub struct Purger {
    task: tokio::task::JoinHandle<()>,
    stop: tokio_util::sync::CancellationToken,
}

/// How often the purger looks for expired keys.
const PURGE_EVERY: Duration = Duration::from_secs(60);

impl Purger {
    pub fn start(storage: Storage) -> Purger {
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = tokio::time::sleep(PURGE_EVERY) => {}
                }
                purge_all(&storage, &stopped).await;
            }
        });
        Purger { task, stop }
    }

    /// Stops it between two batches.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Deletes batches of expired keys until none is left, the database fails, or a stop.
async fn purge_all(storage: &Storage, stop: &tokio_util::sync::CancellationToken) {
    let mut purged = 0;
    while !stop.is_cancelled() {
        match storage.purge_expired_keys().await {
            Ok(n) => {
                purged += n;
                if n < crate::storage::PURGE_ROWS as u64 {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not purge expired idempotency keys; trying again later");
                break;
            }
        }
    }
    if purged > 0 {
        tracing::debug!(purged, "purged expired idempotency keys");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> IdempotencyKey {
        IdempotencyKey::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn keys_are_1_to_255_printable_ascii_characters() {
        assert!(IdempotencyKey::parse(b"a").is_ok());
        assert!(IdempotencyKey::parse(b"order 42 / retry ~").is_ok());
        assert!(IdempotencyKey::parse(&[b'x'; 255]).is_ok());
        assert!(IdempotencyKey::parse(&[b'x'; 256]).is_err());
        assert!(IdempotencyKey::parse(b"").is_err());
        for bad in [&b"tab\there"[..], b"nul\0", "é".as_bytes(), b"\x7f"] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_fingerprint_covers_the_route_and_every_byte_of_the_body() {
        let a = Fingerprint::of("/increment", br#"{"key":"k","value":1}"#);
        assert_eq!(
            a,
            Fingerprint::of("/increment", br#"{"key":"k","value":1}"#)
        );
        assert_ne!(
            a,
            Fingerprint::of("/increment", br#"{"key":"k","value":2}"#)
        );
        assert_ne!(
            a,
            Fingerprint::of("/increments", br#"{"key":"k","value":1}"#)
        );
    }

    #[test]
    fn recent_answers_replay_refuse_and_forget_the_oldest() {
        let recent = RecentAnswers::new(2, Duration::from_secs(60));
        let (one, two) = (Fingerprint::of("/a", b"1"), Fingerprint::of("/a", b"2"));
        let answer = Answer {
            status: 202,
            body: String::new(),
        };
        assert_eq!(recent.get(&key("k"), one), None);
        recent.put(&key("k"), one, &answer);
        assert_eq!(
            recent.get(&key("k"), one),
            Some(Once::Replayed(answer.clone()))
        );
        assert_eq!(recent.get(&key("k"), two), Some(Once::Reused));
        recent.put(&key("l"), one, &answer);
        recent.put(&key("m"), one, &answer);
        assert_eq!(recent.get(&key("k"), one), None, "the oldest is forgotten");
        assert!(recent.get(&key("m"), one).is_some());

        let expired = RecentAnswers::new(2, Duration::ZERO);
        expired.put(&key("k"), one, &answer);
        assert_eq!(expired.get(&key("k"), one), None, "past the TTL");
    }
}
