//! Compares ways of writing one flush batch of existing keys to PostgreSQL, in alternating
//! rounds, so that the candidates share the machine's moods (issue 14, the 1 M-key flush).
//!
//! ```sh
//! cargo run --release -p tally --example flush_candidates -- [--keys 1000000] [--rounds 3] \
//!     [--only library,library-ff100,copy-upsert-ff100,...] [--updates 1]
//! ```
//!
//! Every measurement starts a fresh managed PostgreSQL (Tally's default settings), creates the
//! schema, writes the keys once as new keys through [`Storage::apply_batch`] (the insert, timed
//! too), then writes the same keys again with the candidate, in one transaction (`--updates`
//! times), and checks that every key holds its total. Round `r` runs the candidates in the
//! order rotated by `r`. It prints one JSON object per measurement, then the median, minimum
//! and maximum per candidate of the first flush of existing keys.
//!
//! `counters` is as the migrations leave it (filled to half since V9) unless the candidate's
//! name ends in `-ff<N>`: `library-ff100` is the flush as it was before V9.
//!
//! The candidates other than `library` write the deltas only, without the batch's progress
//! row (one row, the same for all): they measure the SQL shape of the deltas.

mod common;

use std::pin::pin;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;
use tally::batch::BatchSeq;
use tally::node::DataDir;
use tally::storage::Storage;
use tally_postgres::{Endpoint, ManagedOptions, ManagedPostgres};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

#[derive(Parser)]
struct Args {
    /// Distinct keys in the batch.
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Length of each key in bytes.
    #[arg(long, default_value_t = 36)]
    key_bytes: usize,
    /// Rounds; each measures every candidate once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The candidates to measure, comma-separated (default: all, on the table as created).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Flushes of the same keys after the first (all timed; the figures are the first's).
    #[arg(long, default_value_t = 1)]
    updates: usize,
}

/// The ways of writing the batch.
const CANDIDATES: &[&str] = &[
    // `Storage::apply_batch`: the code this example is built with.
    "library",
    // One `unnest` upsert per chunk of 10,000 sorted keys, one after the other.
    "chunks-10k",
    // The same with chunks of 100,000.
    "chunks-100k",
    // One `unnest` upsert of the whole batch.
    "one-statement",
    // Chunks of 10,000 sent without waiting for each answer (pipelined).
    "pipelined-10k",
    // Binary COPY into a temporary table, then one `INSERT ... SELECT ... ORDER BY key ON
    // CONFLICT DO UPDATE` from it.
    "copy-upsert",
    // The same, with `temp_buffers` large enough to hold the temporary table.
    "copy-upsert-tempbuf",
    // Binary COPY, then one `UPDATE ... FROM` the temporary table (a merge join) and one
    // insert of the keys it did not update. Locks rows in the plan's order.
    "copy-update",
];

/// A candidate's name followed by `-ff<N>` runs it on a `counters` table with `fillfactor = N`
/// (set before the first write) instead of the migrations' 50: `-ff100` is the table as it
/// was before migration V9, full pages, where an update's new row version goes to another
/// page and needs a new index entry.
const FILLFACTOR: &str = "-ff";

/// The candidate and the fillfactor its name asks for, if any.
fn parse_candidate(name: &str) -> anyhow::Result<(&str, Option<u8>)> {
    let (base, fillfactor) = match name.rsplit_once(FILLFACTOR) {
        Some((base, n)) => {
            let n: u8 = n.parse()?;
            anyhow::ensure!((10..=100).contains(&n), "a fillfactor is 10 to 100: {name}");
            (base, Some(n))
        }
        None => (name, None),
    };
    anyhow::ensure!(CANDIDATES.contains(&base), "unknown candidate {name}");
    Ok((base, fillfactor))
}

const UPSERT: &str = "
    INSERT INTO counters AS c (key, value, updated_at)
    SELECT key, delta, now() FROM unnest($1::text[], $2::bigint[]) AS input(key, delta)
    ON CONFLICT (key) DO UPDATE SET value = c.value + EXCLUDED.value, updated_at = EXCLUDED.updated_at";

#[derive(Serialize)]
struct Measurement {
    round: usize,
    candidate: String,
    insert_seconds: f64,
    /// The first flush of the keys again.
    update_seconds: f64,
    /// Its WAL, in MB.
    wal_mb: f64,
    /// The CPU time PostgreSQL's processes (backends, WAL writer, checkpointer...) spent on
    /// it: unlike the seconds, it hardly moves when other programs take the cores.
    server_cpu_seconds: f64,
    /// The CPU time this process spent on it (encoding, sending).
    client_cpu_seconds: f64,
    /// Each further flush of the same keys (`--updates`).
    later_updates_seconds: Vec<f64>,
    /// The table and its index after the last flush, in MB.
    table_mb: f64,
    index_mb: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let candidates: Vec<String> = if args.only.is_empty() {
        CANDIDATES.iter().map(|c| c.to_string()).collect()
    } else {
        args.only.clone()
    };
    anyhow::ensure!(args.updates >= 1, "--updates must be at least 1");
    for c in &candidates {
        parse_candidate(c)?;
    }
    let deltas = distinct_keys(args.keys, args.key_bytes);
    let runtime = tokio::runtime::Runtime::new()?;
    let mut all = Vec::new();
    for round in 0..args.rounds {
        for i in 0..candidates.len() {
            let candidate = &candidates[(i + round) % candidates.len()];
            let m = measure(&runtime, round + 1, candidate, &deltas, args.updates)?;
            println!("{}", serde_json::to_string(&m)?);
            all.push(m);
        }
    }
    for c in &candidates {
        let mut update: Vec<f64> = all
            .iter()
            .filter(|m| &m.candidate == c)
            .map(|m| m.update_seconds)
            .collect();
        let mut insert: Vec<f64> = all
            .iter()
            .filter(|m| &m.candidate == c)
            .map(|m| m.insert_seconds)
            .collect();
        let mut cpu: Vec<f64> = all
            .iter()
            .filter(|m| &m.candidate == c)
            .map(|m| m.server_cpu_seconds)
            .collect();
        update.sort_by(f64::total_cmp);
        insert.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        println!(
            "{c:24} update median {:.2} s ({:.2}-{:.2}), server CPU {:.2} s ({:.2}-{:.2}); insert median {:.2} s ({:.2}-{:.2})",
            median(&update),
            update[0],
            update[update.len() - 1],
            median(&cpu),
            cpu[0],
            cpu[cpu.len() - 1],
            median(&insert),
            insert[0],
            insert[insert.len() - 1],
        );
    }
    Ok(())
}

/// The lower middle value of sorted figures, so that it is one that was measured.
fn median(sorted: &[f64]) -> f64 {
    sorted[(sorted.len() - 1) / 2]
}

fn measure(
    runtime: &tokio::runtime::Runtime,
    round: usize,
    candidate: &str,
    deltas: &[(Box<str>, i64)],
    updates: usize,
) -> anyhow::Result<Measurement> {
    let dir = tempfile::Builder::new()
        .prefix("tally-flush-candidates-")
        .tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let options = ManagedOptions::default();
    let cluster = ManagedPostgres::start(&dir.path().join("postgres"), &options)?;
    let endpoint = Endpoint::plain(cluster.config(&options.database));
    let result = runtime.block_on(run(round, candidate, endpoint, dir.path(), deltas, updates));
    cluster.stop()?;
    result
}

async fn run(
    round: usize,
    candidate: &str,
    endpoint: Endpoint,
    dir: &std::path::Path,
    deltas: &[(Box<str>, i64)],
    updates: usize,
) -> anyhow::Result<Measurement> {
    let storage = Storage::connect(endpoint.clone(), 2, Duration::from_secs(60))?;
    storage.migrate().await?;
    let (mut client, connection) = endpoint.connect().await?;
    tokio::spawn(connection);
    let (base, fillfactor) = parse_candidate(candidate)?;
    if let Some(n) = fillfactor {
        client
            .batch_execute(&format!("ALTER TABLE counters SET (fillfactor = {n})"))
            .await?;
    }
    let data_dir = DataDir::open(&dir.join("node"))?;
    let node = data_dir.node_id(None)?;
    let claim = storage.claim_node(&node, 0).await?;
    let first = BatchSeq::first();

    let started = Instant::now();
    let outcome = storage.apply_batch(claim.owner(), first, deltas).await?;
    let insert_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(outcome.applied && outcome.rejected.is_empty());

    let mut seq = first;
    let mut seconds = Vec::new();
    let (mut wal_mb, mut server_cpu_seconds, mut client_cpu_seconds) = (0.0, 0.0, 0.0);
    for update in 0..updates {
        seq = seq.next();
        let lsn: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let pids: Vec<i32> = client
            .query("SELECT pid FROM pg_stat_activity", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let (server_cpu, client_cpu) = (cpu_seconds(&pids), own_cpu_seconds());
        let started = Instant::now();
        if base == "library" {
            let outcome = storage.apply_batch(claim.owner(), seq, deltas).await?;
            anyhow::ensure!(outcome.applied && outcome.rejected.is_empty());
        } else {
            let tx = client.transaction().await?;
            match base {
                "chunks-10k" => chunks(&tx, deltas, 10_000).await?,
                "chunks-100k" => chunks(&tx, deltas, 100_000).await?,
                "one-statement" => chunks(&tx, deltas, deltas.len()).await?,
                "pipelined-10k" => pipelined(&tx, deltas, 10_000).await?,
                "copy-upsert" => copy_upsert(&tx, deltas, false).await?,
                "copy-upsert-tempbuf" => copy_upsert(&tx, deltas, update == 0).await?,
                "copy-update" => copy_update(&tx, deltas).await?,
                other => anyhow::bail!("unknown candidate {other}"),
            }
            tx.commit().await?;
        }
        seconds.push(started.elapsed().as_secs_f64());
        if update == 0 {
            server_cpu_seconds = cpu_seconds(&pids) - server_cpu;
            client_cpu_seconds = own_cpu_seconds() - client_cpu;
            wal_mb = client
                .query_one(
                    "SELECT (pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn) / 1e6)::float8",
                    &[&lsn],
                )
                .await?
                .get(0);
        }
    }
    let row = client
        .query_one(
            "SELECT (pg_relation_size('counters') / 1e6)::float8,
                    (pg_relation_size('counters_pkey') / 1e6)::float8",
            &[],
        )
        .await?;
    let (table_mb, index_mb): (f64, f64) = (row.get(0), row.get(1));
    drop(claim);

    common::check_totals(&client, deltas, updates as i64 + 1)
        .await
        .map_err(|e| e.context(candidate.to_owned()))?;
    storage.close();
    Ok(Measurement {
        round,
        candidate: candidate.to_owned(),
        insert_seconds,
        update_seconds: seconds[0],
        wal_mb,
        server_cpu_seconds,
        client_cpu_seconds,
        later_updates_seconds: seconds[1..].to_vec(),
        table_mb,
        index_mb,
    })
}

fn arrays(chunk: &[(Box<str>, i64)]) -> (Vec<&str>, Vec<i64>) {
    chunk.iter().map(|(k, d)| (&**k, *d)).unzip()
}

async fn chunks(
    tx: &tokio_postgres::Transaction<'_>,
    deltas: &[(Box<str>, i64)],
    rows: usize,
) -> anyhow::Result<()> {
    let statement = tx.prepare(UPSERT).await?;
    for chunk in deltas.chunks(rows) {
        let (keys, values) = arrays(chunk);
        tx.execute(&statement, &[&keys, &values]).await?;
    }
    Ok(())
}

async fn pipelined(
    tx: &tokio_postgres::Transaction<'_>,
    deltas: &[(Box<str>, i64)],
    rows: usize,
) -> anyhow::Result<()> {
    let statement = tx.prepare(UPSERT).await?;
    let arrays: Vec<_> = deltas.chunks(rows).map(arrays).collect();
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 2]> = arrays
        .iter()
        .map(|(keys, values)| [keys as _, values as _])
        .collect();
    let writes = params.iter().map(|p| tx.execute(&statement, p));
    futures_util::future::try_join_all(writes).await?;
    Ok(())
}

/// Writes the batch into `flush_input`, a temporary table dropped at commit.
async fn copy_in(
    tx: &tokio_postgres::Transaction<'_>,
    deltas: &[(Box<str>, i64)],
) -> anyhow::Result<()> {
    tx.batch_execute(
        "CREATE TEMPORARY TABLE flush_input (key text NOT NULL, delta bigint NOT NULL)
         ON COMMIT DROP",
    )
    .await?;
    let sink = tx
        .copy_in("COPY flush_input (key, delta) FROM STDIN (FORMAT binary)")
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::INT8]));
    for (key, delta) in deltas {
        let key: &str = key;
        writer.as_mut().write(&[&key, delta]).await?;
    }
    writer.finish().await?;
    Ok(())
}

async fn copy_upsert(
    tx: &tokio_postgres::Transaction<'_>,
    deltas: &[(Box<str>, i64)],
    temp_buffers: bool,
) -> anyhow::Result<()> {
    if temp_buffers {
        tx.batch_execute("SET temp_buffers = '256MB'").await?;
    }
    tx.batch_execute("SET LOCAL work_mem = '256MB'").await?;
    copy_in(tx, deltas).await?;
    tx.execute(
        "INSERT INTO counters AS c (key, value, updated_at)
         SELECT key, delta, now() FROM flush_input ORDER BY key COLLATE \"C\"
         ON CONFLICT (key) DO UPDATE
         SET value = c.value + EXCLUDED.value, updated_at = EXCLUDED.updated_at",
        &[],
    )
    .await?;
    Ok(())
}

async fn copy_update(
    tx: &tokio_postgres::Transaction<'_>,
    deltas: &[(Box<str>, i64)],
) -> anyhow::Result<()> {
    tx.batch_execute("SET LOCAL work_mem = '256MB'").await?;
    copy_in(tx, deltas).await?;
    tx.batch_execute("ANALYZE flush_input").await?;
    tx.execute(
        "WITH updated AS (
             UPDATE counters c SET value = c.value + i.delta, updated_at = now()
             FROM flush_input i WHERE c.key = i.key
             RETURNING c.key
         )
         INSERT INTO counters AS c (key, value, updated_at)
         SELECT i.key, i.delta, now() FROM flush_input i
         WHERE NOT EXISTS (SELECT 1 FROM updated u WHERE u.key = i.key)
         ORDER BY i.key COLLATE \"C\"
         ON CONFLICT (key) DO UPDATE
         SET value = c.value + EXCLUDED.value, updated_at = EXCLUDED.updated_at",
        &[],
    )
    .await?;
    Ok(())
}

/// The user and system CPU seconds of these processes so far (the ones still running).
fn cpu_seconds(pids: &[i32]) -> f64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| ticks(&stat))
        .sum::<f64>()
}

fn own_cpu_seconds() -> f64 {
    ticks(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds (the command name, in parentheses,
/// may hold spaces: the fields are counted after it).
fn ticks(stat: &str) -> f64 {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of the line; `rest` starts at field 3. Ticks are 1/100 s on Linux.
    (field(11) + field(12)) / 100.0
}

/// `count` distinct sorted keys of `key_bytes` bytes with delta 1.
fn distinct_keys(count: usize, key_bytes: usize) -> Vec<(Box<str>, i64)> {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let prefix = format!("flush-{run}-");
    let digits = key_bytes - prefix.len();
    (0..count)
        .map(|i| (format!("{prefix}{i:0>digits$}").into_boxed_str(), 1))
        .collect()
}
