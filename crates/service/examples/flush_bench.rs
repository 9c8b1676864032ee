//! Times the flush of one batch of many distinct keys, the moment when a node's whole pending
//! map reaches PostgreSQL at once (after an outage, or at a flush interval on a busy node).
//!
//! ```sh
//! cargo run --release -p tally --example flush_bench -- [--keys 1000000] [--key-bytes 36] [--items]
//! ```
//!
//! With `--items` the batch holds that many distinct items of one tenant instead (ids of
//! `--key-bytes` bytes, as `POST /items` sends them): the first flush inserts every item, the
//! second finds every one already there and inserts nothing; the check wants the tenant's
//! count to be the number of ids.
//!
//! It writes the same keys twice through [`Storage::apply_batch`], as the flusher does: first
//! as new keys (every row an INSERT), then again as the next batch (every row hits an
//! existing one and takes the UPDATE path of the upsert), and prints one JSON object with the
//! seconds and rows per second of each. Then it checks, untimed, that PostgreSQL holds every
//! key with the value 2, so a fast figure cannot come from a flush that wrote nothing.
//!
//! Without `DATABASE_URL` it creates a managed PostgreSQL cluster in a temporary directory,
//! with Tally's default settings (the same a node runs with), and stops it at the end. With
//! `DATABASE_URL` it uses that database and deletes its keys and node row afterwards.

mod common;

use std::time::Instant;

use clap::Parser;
use rand::seq::SliceRandom;
use serde::Serialize;
use tally::batch::BatchSeq;
use tally::node::DataDir;
use tally::storage::Storage;
use tally_postgres::{Endpoint, ManagedOptions, ManagedPostgres};

#[derive(Parser)]
struct Args {
    /// Distinct keys in the batch.
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Length of each key in bytes (36 is a hyphenated UUID).
    #[arg(long, default_value_t = 36)]
    key_bytes: usize,
    /// Flush distinct items of one tenant instead of counter keys.
    #[arg(long)]
    items: bool,
}

/// One timed `apply_batch`.
#[derive(Serialize)]
struct Timed {
    seconds: f64,
    rows_per_sec: f64,
}

/// What the example prints.
#[derive(Serialize)]
struct FlushReport {
    keys: usize,
    key_bytes: usize,
    /// Whether the keys were items of one tenant (`--items`).
    items: bool,
    /// `managed` (a fresh cluster) or `external` (DATABASE_URL).
    database: &'static str,
    /// The server's own `version()` string.
    server_version: String,
    /// Sorting the batch by key, which the flusher does before writing; not in the figures
    /// below.
    sort_seconds: f64,
    /// First flush: every key (or item) new.
    insert: Timed,
    /// Second flush of the same keys: every key (or item) already in the table.
    update: Timed,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    anyhow::ensure!(
        (20..=256).contains(&args.key_bytes),
        "--key-bytes must be 20 to 256 (a run prefix plus a unique number, within Tally's key limit)"
    );
    let dir = tempfile::Builder::new()
        .prefix("tally-flush-bench-")
        .tempdir()?;
    let external = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty());

    let (endpoint, cluster) = match external {
        Some(url) => (
            Endpoint::parse(&url).map_err(|e| anyhow::anyhow!("invalid DATABASE_URL: {e}"))?,
            None,
        ),
        None => {
            // As root the server runs as `postgres`, which must be able to enter the
            // directory; tempfile creates it for its owner only.
            make_traversable(dir.path())?;
            let options = ManagedOptions::default();
            let cluster = ManagedPostgres::start(&dir.path().join("postgres"), &options)?;
            (
                Endpoint::plain(cluster.config(&options.database)),
                Some(StopOnDrop(cluster)),
            )
        }
    };

    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(run(&args, endpoint, dir.path(), cluster.is_some()))?;
    drop(cluster);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Stops the managed cluster when dropped, also on an error or a panic, so that no server
/// outlives the example or keeps its temporary directory busy.
struct StopOnDrop(ManagedPostgres);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.0.stop() {
            eprintln!("flush_bench: could not stop PostgreSQL: {e}");
        }
    }
}

async fn run(
    args: &Args,
    endpoint: Endpoint,
    dir: &std::path::Path,
    managed: bool,
) -> anyhow::Result<FlushReport> {
    // 5 s per statement: a node's default `--db-timeout`.
    let storage = Storage::connect(endpoint.clone(), 2, std::time::Duration::from_secs(5))?;
    storage.migrate().await?;
    let data_dir = DataDir::open(&dir.join("node"))?;
    let node = data_dir.node_id(None)?;
    let claim = storage.claim_node(&node, 0).await?;

    let (mut deltas, sort_seconds) = distinct_keys(args.keys, args.key_bytes);
    let tenant = format!("bench-{}", uuid::Uuid::new_v4().simple());
    if args.items {
        // Each key becomes an item's pending key: the prefix keeps them sorted.
        let prefix = tally::item::tenant_prefix(&tenant);
        for (key, _) in &mut deltas {
            *key = format!("{prefix}{key}").into_boxed_str();
        }
    }
    let first = BatchSeq::first();
    let insert = timed_flush(&storage, claim.owner(), first, &deltas).await?;
    let update = timed_flush(&storage, claim.owner(), first.next(), &deltas).await?;
    drop(claim);

    let (client, connection) = endpoint.connect().await?;
    tokio::spawn(connection);
    if args.items {
        check_items(&client, &tenant, deltas.len()).await?;
    } else {
        common::check_totals(&client, &deltas, 2).await?;
    }
    if !managed {
        forget(&client, &deltas, &tenant, node.as_str()).await?;
    }
    let server_version: String = client.query_one("SELECT version()", &[]).await?.get(0);
    storage.close();

    Ok(FlushReport {
        keys: args.keys,
        key_bytes: args.key_bytes,
        items: args.items,
        database: if managed { "managed" } else { "external" },
        server_version,
        sort_seconds,
        insert,
        update,
    })
}

/// `count` distinct keys of `key_bytes` bytes with delta 1, sorted as the flusher sorts a
/// batch, and the seconds the sort took. A random run prefix keeps them apart from any other
/// run's keys in a shared database; the keys are shuffled before the sort, since a pending
/// map hands them over in hash order.
fn distinct_keys(count: usize, key_bytes: usize) -> (Vec<(Box<str>, i64)>, f64) {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let prefix = format!("flush-{run}-");
    let digits = key_bytes - prefix.len();
    let mut deltas: Vec<(Box<str>, i64)> = (0..count)
        .map(|i| (format!("{prefix}{i:0>digits$}").into_boxed_str(), 1))
        .collect();
    assert!(
        deltas.iter().all(|(key, _)| key.len() == key_bytes),
        "{count} keys need more than {digits} digits"
    );
    deltas.shuffle(&mut rand::rng());
    let started = Instant::now();
    deltas.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    (deltas, started.elapsed().as_secs_f64())
}

async fn timed_flush(
    storage: &Storage,
    owner: &tally::storage::Owner,
    seq: BatchSeq,
    deltas: &[(Box<str>, i64)],
) -> anyhow::Result<Timed> {
    let started = Instant::now();
    let outcome = storage.apply_batch(owner, seq, deltas).await?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        outcome.applied && outcome.rejected.is_empty(),
        "batch {seq} was not applied in full: {outcome:?}"
    );
    Ok(Timed {
        seconds,
        rows_per_sec: deltas.len() as f64 / seconds,
    })
}

/// Fails unless the tenant has exactly `ids` items, in rows and in its count.
async fn check_items(
    client: &tokio_postgres::Client,
    tenant: &str,
    ids: usize,
) -> anyhow::Result<()> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM items WHERE tenant = $1),
                    (SELECT count FROM item_counts WHERE tenant = $1)",
            &[&tenant],
        )
        .await?;
    let (rows, count): (i64, Option<i64>) = (row.get(0), row.get(1));
    anyhow::ensure!(
        rows == ids as i64 && count == Some(ids as i64),
        "PostgreSQL holds {rows} items and a count of {count:?} for {ids} distinct ids"
    );
    Ok(())
}

/// Removes what the run wrote to a database that outlives it.
async fn forget(
    client: &tokio_postgres::Client,
    deltas: &[(Box<str>, i64)],
    tenant: &str,
    node: &str,
) -> anyhow::Result<()> {
    for table in ["items", "item_counts"] {
        client
            .execute(
                &format!("DELETE FROM {table} WHERE tenant = $1"),
                &[&tenant],
            )
            .await?;
    }
    for slice in deltas.chunks(100_000) {
        let keys: Vec<&str> = slice.iter().map(|(key, _)| &**key).collect();
        client
            .execute("DELETE FROM counters WHERE key = ANY($1::text[])", &[&keys])
            .await?;
    }
    for table in ["tally_nodes", "tally_epochs", "tally_replays"] {
        client
            .execute(&format!("DELETE FROM {table} WHERE node_id = $1"), &[&node])
            .await?;
    }
    Ok(())
}

fn make_traversable(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}
