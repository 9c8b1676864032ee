//! The SQL of sync mode's group commit (`crate::sync_writer`): the increments of concurrent
//! sync requests, summed per key, written in one statement and so in one transaction, each
//! key's new total returned for the writer to share out among the requests.
//!
//! The statement is a single autocommit `INSERT ... ON CONFLICT DO UPDATE ... RETURNING`: one
//! round trip for the whole group, as cheap for PostgreSQL as one request's upsert plus a row
//! per further key. Keys come sorted, so groups (of this node or another) and flushes that
//! share keys lock rows in the same order and cannot deadlock.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use super::{Storage, StorageError, bounded};

/// Adds each `(key, delta)` of the arrays to its total, inserting new keys, and returns each
/// key's new total. A total that would leave the signed 64-bit range fails it as a whole.
const GROUP_UPSERT: &str = "
    INSERT INTO counters AS c (key, value, updated_at)
    SELECT key, delta, now() FROM unnest($1::text[], $2::bigint[]) AS input(key, delta)
    ON CONFLICT (key) DO UPDATE SET value = c.value + EXCLUDED.value, updated_at = EXCLUDED.updated_at
    RETURNING c.key, c.value";

/// Like [`GROUP_UPSERT`], but leaves out the keys whose total would leave the signed 64-bit
/// range, as their current row says: only their totals are missing from what it returns. It
/// reads each row once more, so it is only used for a group that the plain statement refused.
/// The rows are read before they are locked, so a total raised meanwhile by another
/// transaction can still make it fail as a whole; the caller then writes the group one by
/// one. Rows are written in byte order, whatever the collation (`upsert_fitting!`).
const GROUP_UPSERT_CHECKED: &str = concat!(
    upsert_fitting!(),
    "RETURNING c.key, c.value
    )
    SELECT key, value FROM fitting"
);

impl Storage {
    /// Adds each key's delta in one statement (one transaction) and returns each key's new
    /// total, in the order of `deltas`; `None` for a key left out because its total would
    /// leave the signed 64-bit range (nothing of it was written).
    ///
    /// `deltas` must be sorted by key, each key once. An error means nothing was written,
    /// except when [`StorageError::outcome_unknown`] says the statement got no answer.
    /// [`StorageError::OutOfRange`] and [`StorageError::Refused`] mean PostgreSQL refused the
    /// group's data and wrote none of it: the caller finds out which request it was by
    /// writing them one by one.
    pub async fn increment_group(
        &self,
        deltas: &[(&str, i64)],
    ) -> Result<Vec<Option<i64>>, StorageError> {
        debug_assert!(
            deltas.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, unique keys"
        );
        let (keys, values): (Vec<&str>, Vec<i64>) = deltas.iter().copied().unzip();
        self.with_client(async |client, limit| {
            match run(client, limit, GROUP_UPSERT, &keys, &values).await {
                Err(StorageError::Refused { sqlstate, .. })
                    if sqlstate == SqlState::NUMERIC_VALUE_OUT_OF_RANGE.code() =>
                {
                    run(client, limit, GROUP_UPSERT_CHECKED, &keys, &values)
                        .await
                        .map_err(|e| match e {
                            StorageError::Refused { sqlstate, .. }
                                if sqlstate == SqlState::NUMERIC_VALUE_OUT_OF_RANGE.code() =>
                            {
                                StorageError::OutOfRange { key: None }
                            }
                            other => other,
                        })
                }
                answer => answer,
            }
        })
        .await
        .map(|rows| {
            // Each key once in `keys`, sorted: find each returned total's place.
            let mut totals = vec![None; keys.len()];
            for (key, total) in rows {
                if let Ok(at) = keys.binary_search(&key.as_str()) {
                    totals[at] = Some(total);
                }
            }
            totals
        })
    }
}

/// Runs one of the group statements, prepared once per connection, and collects what it
/// returns.
async fn run(
    client: &mut deadpool_postgres::Object,
    limit: Duration,
    sql: &str,
    keys: &[&str],
    values: &[i64],
) -> Result<Vec<(String, i64)>, StorageError> {
    let statement = bounded(limit, client.prepare_cached(sql)).await?;
    let rows = bounded(limit, client.query(&statement, &[&keys, &values])).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
