//! The SQL of distinct items: the `items` rows, one per (tenant, item), and each tenant's count
//! in `item_counts`.
//!
//! Items are inserted with `ON CONFLICT DO NOTHING`, and the same transaction raises each
//! tenant's count by the rows it actually inserted: an item sent again, through any node, or a
//! flush retried after a commit whose answer was lost (which the batch's progress row skips
//! anyway), adds nothing. Locks are taken in one order in every transaction: item rows by
//! (tenant, item), then count rows by tenant, then the counters, each in the byte order the
//! input arrays are sorted in (not the database's collation, which could differ from one
//! chunk to the next); two nodes writing overlapping items therefore cannot deadlock.

use std::collections::BTreeMap;
use std::time::Duration;

use super::counters::{CHUNK_ROWS, Rejected};
use super::{Storage, StorageError, bounded};

/// Inserts the items of the arrays that are new and returns how many per tenant.
const INSERT: &str = "
    WITH new AS (
        INSERT INTO items (tenant, item)
        SELECT tenant, item FROM unnest($1::text[], $2::text[]) AS input(tenant, item)
        ON CONFLICT DO NOTHING
        RETURNING tenant
    )
    SELECT tenant, count(*) FROM new GROUP BY tenant";

/// Raises each tenant's count by its new items.
const ADD_TO_COUNTS: &str = "
    INSERT INTO item_counts AS c (tenant, count, updated_at)
    SELECT tenant, n, now() FROM unnest($1::text[], $2::bigint[]) AS input(tenant, n)
    ON CONFLICT (tenant) DO UPDATE SET count = c.count + EXCLUDED.count, updated_at = now()";

/// Items as `(tenant, item)`, sorted, each once.
pub type Items<'a> = [(&'a str, &'a str)];

/// New items per tenant, sorted by tenant.
type NewPerTenant = BTreeMap<String, i64>;

/// Inserts `items` in chunks within the caller's transaction and raises the counts. In
/// `isolating` mode (a batch whose plain write PostgreSQL refused), each chunk is written under
/// a savepoint and halved on refusal down to single items; a single item still refused is left
/// out into `rejected`. Without it, a refusal is returned as the error.
pub(super) async fn insert(
    tx: &deadpool_postgres::Transaction<'_>,
    limit: Duration,
    items: &Items<'_>,
    isolating: bool,
    rejected: &mut Vec<Rejected>,
) -> Result<(), StorageError> {
    let mut new = NewPerTenant::new();
    for chunk in items.chunks(CHUNK_ROWS) {
        if isolating {
            insert_isolating(tx, limit, chunk, &mut new, rejected).await?;
        } else {
            insert_chunk(tx, limit, chunk, &mut new).await?;
        }
    }
    if !new.is_empty() {
        let (tenants, counts): (Vec<&str>, Vec<i64>) =
            new.iter().map(|(t, n)| (t.as_str(), *n)).unzip();
        bounded(limit, tx.execute(ADD_TO_COUNTS, &[&tenants, &counts])).await?;
    }
    Ok(())
}

async fn insert_chunk(
    tx: &deadpool_postgres::Transaction<'_>,
    limit: Duration,
    chunk: &Items<'_>,
    new: &mut NewPerTenant,
) -> Result<(), StorageError> {
    let (tenants, ids): (Vec<&str>, Vec<&str>) = chunk.iter().copied().unzip();
    for row in bounded(limit, tx.query(INSERT, &[&tenants, &ids])).await? {
        *new.entry(row.get(0)).or_default() += row.get::<_, i64>(1);
    }
    Ok(())
}

/// [`insert_chunk`] under savepoints, halving a refused part down to single items, left to
/// right so that rows are still locked in order.
async fn insert_isolating(
    tx: &deadpool_postgres::Transaction<'_>,
    limit: Duration,
    chunk: &Items<'_>,
    new: &mut NewPerTenant,
    rejected: &mut Vec<Rejected>,
) -> Result<(), StorageError> {
    let mut parts = vec![chunk];
    while let Some(part) = parts.pop() {
        bounded(limit, tx.batch_execute("SAVEPOINT isolate_items")).await?;
        let mut part_new = NewPerTenant::new();
        match insert_chunk(tx, limit, part, &mut part_new).await {
            Ok(()) => {
                bounded(limit, tx.batch_execute("RELEASE SAVEPOINT isolate_items")).await?;
                for (tenant, n) in part_new {
                    *new.entry(tenant).or_default() += n;
                }
            }
            Err(StorageError::Refused { sqlstate, message }) => {
                bounded(
                    limit,
                    tx.batch_execute(
                        "ROLLBACK TO SAVEPOINT isolate_items; RELEASE SAVEPOINT isolate_items",
                    ),
                )
                .await?;
                match part {
                    [(tenant, id)] => rejected.push(Rejected::refused(
                        &format!("items/{tenant}/{id}"),
                        1,
                        sqlstate,
                        message,
                    )),
                    _ => {
                        let (left, right) = part.split_at(part.len() / 2);
                        parts.push(right);
                        parts.push(left);
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Inserts `items` (sorted, each once) in the caller's transaction and returns the count of
/// every tenant they name, sorted by tenant.
pub(super) async fn insert_and_count(
    tx: &deadpool_postgres::Transaction<'_>,
    limit: Duration,
    items: &Items<'_>,
) -> Result<Vec<(String, i64)>, StorageError> {
    let mut tenants: Vec<&str> = items.iter().map(|(t, _)| *t).collect();
    tenants.dedup();
    let mut rejected = Vec::new();
    insert(tx, limit, items, false, &mut rejected).await?;
    let rows = bounded(
        limit,
        tx.query(
            "SELECT t.tenant, coalesce(c.count, 0)
             FROM unnest($1::text[]) AS t(tenant)
             LEFT JOIN item_counts c ON c.tenant = t.tenant
             ORDER BY t.tenant",
            &[&tenants],
        ),
    )
    .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

impl Storage {
    /// Inserts `items` (sorted, each once) in one transaction and returns the new count of
    /// every tenant they name, sorted by tenant: `--mode sync`.
    pub async fn add_items(&self, items: &Items<'_>) -> Result<Vec<(String, i64)>, StorageError> {
        self.with_client(async |client, limit| {
            let tx = bounded(limit, client.transaction()).await?;
            let counts = insert_and_count(&tx, limit, items).await?;
            bounded(limit, tx.commit()).await?;
            Ok(counts)
        })
        .await
    }

    /// The number of distinct items of `tenant`: PostgreSQL's count plus those of `pending`
    /// (this node's ids of the tenant that may not be written yet, each once) that PostgreSQL
    /// does not have, read in one snapshot, so an id written meanwhile counts once.
    pub async fn item_count(&self, tenant: &str, pending: &[&str]) -> Result<i64, StorageError> {
        self.with_client(async |client, limit| {
            let statement = bounded(
                limit,
                client.prepare_cached(
                    "SELECT coalesce((SELECT count FROM item_counts WHERE tenant = $1), 0)
                          + (SELECT count(*) FROM unnest($2::text[]) AS p(item)
                             WHERE NOT EXISTS (
                                 SELECT 1 FROM items i WHERE i.tenant = $1 AND i.item = p.item))",
                ),
            )
            .await?;
            let row = bounded(limit, client.query_one(&statement, &[&tenant, &pending])).await?;
            Ok(row.get(0))
        })
        .await
    }
}
