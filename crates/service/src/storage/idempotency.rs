//! The SQL of requests with an `Idempotency-Key` (`crate::idempotency`): the key, the
//! request's fingerprint and its answer are written in the transaction that applies it.
//!
//! The key's row is inserted first. A second request with the same key, on any node, waits for
//! that row's transaction: if it commits, the second finds the row and applies nothing; if it
//! rolls back, the second inserts the row itself. A row past its expiry is taken over as new.

use std::time::Duration;

use super::items::{Items, insert_and_count};
use super::{Storage, StorageError, bounded};
use crate::idempotency::{Answer, Fingerprint};

/// Claims the key for this request unless a live row holds it; returns a row when claimed.
const CLAIM: &str = "
    INSERT INTO idempotency_keys AS k (key, fingerprint, status, body, expires_at)
    VALUES ($1, $2, 0, '', now() + make_interval(secs => $3))
    ON CONFLICT (key) DO UPDATE
        SET fingerprint = EXCLUDED.fingerprint, status = 0, body = '',
            created_at = now(), expires_at = EXCLUDED.expires_at
        WHERE k.expires_at <= now()
    RETURNING 1";

/// Like the flush's upsert, returning each key's new total.
const UPSERT_RETURNING: &str = "
    INSERT INTO counters AS c (key, value, updated_at)
    SELECT key, delta, now() FROM unnest($1::text[], $2::bigint[]) AS input(key, delta)
    ON CONFLICT (key) DO UPDATE SET value = c.value + EXCLUDED.value, updated_at = EXCLUDED.updated_at
    RETURNING key, value";

/// Most expired keys one purge statement deletes, so that a purge never holds many row locks
/// or runs long.
pub const PURGE_ROWS: i64 = 1_000;

/// What one request applies.
#[derive(Debug, Clone, Copy)]
pub enum Work<'a> {
    /// Deltas summed per key, sorted by key, each key once.
    Increments(&'a [(&'a str, i64)]),
    /// Items sorted, each once.
    Items(&'a Items<'a>),
}

/// What applying a request gave: for increments the new total of each key, for items the
/// count of each tenant named; sorted by key or tenant.
pub type Effect = [(String, i64)];

/// What became of the request in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Effect now, with this answer.
    New(Answer),
    /// The key was there: nothing applied. Its request's fingerprint and answer.
    Existing {
        fingerprint: Fingerprint,
        answer: Answer,
    },
}

impl Storage {
    /// Applies `work` once for `key`: in one transaction, claims the key (kept for `ttl`),
    /// applies the work, and stores the answer `answer` makes of what it gave. When the key is
    /// already held, applies nothing and returns what is stored.
    pub async fn apply_once(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        ttl: Duration,
        work: Work<'_>,
        answer: impl FnOnce(&Effect) -> Answer,
    ) -> Result<Stored, StorageError> {
        self.with_client(async |client, limit| {
            let tx = bounded(limit, client.transaction()).await?;
            // Prepared once per connection: each statement of this transaction is then one
            // round trip, not two.
            let claim = bounded(limit, tx.prepare_cached(CLAIM)).await?;
            let claimed = bounded(
                limit,
                tx.query_opt(&claim, &[&key, &&fingerprint.0[..], &ttl.as_secs_f64()]),
            )
            .await?;
            if claimed.is_none() {
                let row = bounded(
                    limit,
                    tx.query_one(
                        "SELECT fingerprint, status, body FROM idempotency_keys WHERE key = $1",
                        &[&key],
                    ),
                )
                .await?;
                let stored: &[u8] = row.get(0);
                let status: i16 = row.get(1);
                return Ok(Stored::Existing {
                    fingerprint: Fingerprint(stored.try_into().unwrap_or([0; 32])),
                    answer: Answer {
                        status: u16::try_from(status).unwrap_or(0),
                        body: row.get(2),
                    },
                });
            }
            let applied = match work {
                Work::Increments(deltas) => {
                    let (keys, values): (Vec<&str>, Vec<i64>) = deltas.iter().copied().unzip();
                    let upsert = bounded(limit, tx.prepare_cached(UPSERT_RETURNING)).await?;
                    let rows = bounded(limit, tx.query(&upsert, &[&keys, &values]))
                        .await
                        .map_err(out_of_range)?;
                    let mut totals: Vec<(String, i64)> =
                        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                    totals.sort_unstable();
                    totals
                }
                Work::Items(items) => insert_and_count(&tx, limit, items).await?,
            };
            let answer = answer(&applied);
            bounded(
                limit,
                tx.execute(
                    "UPDATE idempotency_keys SET status = $2, body = $3 WHERE key = $1",
                    &[
                        &key,
                        &i16::try_from(answer.status).unwrap_or(0),
                        &answer.body,
                    ],
                ),
            )
            .await?;
            bounded(limit, tx.commit()).await?;
            Ok(Stored::New(answer))
        })
        .await
    }

    /// Deletes up to [`PURGE_ROWS`] expired keys; returns how many it deleted.
    pub async fn purge_expired_keys(&self) -> Result<u64, StorageError> {
        self.with_client(async |client, limit| {
            bounded(
                limit,
                client.execute(
                    "DELETE FROM idempotency_keys WHERE key IN (
                         SELECT key FROM idempotency_keys WHERE expires_at <= now()
                         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)",
                    &[&PURGE_ROWS],
                ),
            )
            .await
        })
        .await
    }
}

/// A total out of the 64-bit range refuses the whole request.
fn out_of_range(e: StorageError) -> StorageError {
    match e {
        StorageError::Refused { sqlstate, .. } if sqlstate == "22003" => {
            StorageError::OutOfRange { key: None }
        }
        other => other,
    }
}
