//! What the flush examples share. Not an example itself: Cargo builds only `examples/*.rs`
//! and `examples/*/main.rs` as examples.

/// Fails unless every key of `deltas` is in PostgreSQL's `counters` and their values add up
/// to `per_key` for each, so that a fast figure cannot come from a flush that wrote nothing.
pub async fn check_totals(
    client: &tokio_postgres::Client,
    deltas: &[(Box<str>, i64)],
    per_key: i64,
) -> anyhow::Result<()> {
    // In slices: one array of 10 million keys makes PostgreSQL pass its 1 GB limit on a
    // string while it builds the statement's text.
    let (mut rows, mut sum) = (0i64, 0i64);
    for slice in deltas.chunks(100_000) {
        let keys: Vec<&str> = slice.iter().map(|(key, _)| &**key).collect();
        let row = client
            .query_one(
                "SELECT count(*), coalesce(sum(c.value), 0)::bigint
                 FROM counters c WHERE c.key = ANY($1::text[])",
                &[&keys],
            )
            .await?;
        rows += row.get::<_, i64>(0);
        sum += row.get::<_, i64>(1);
    }
    let keys = deltas.len() as i64;
    anyhow::ensure!(
        rows == keys && sum == per_key * keys,
        "PostgreSQL holds {rows} of the {keys} keys with a sum of {sum}, expected {per_key} per key"
    );
    Ok(())
}
