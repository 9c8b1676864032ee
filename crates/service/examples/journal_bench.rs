//! Group commit under load: appends records from many concurrent tasks and prints records
//! per second, syncs per second, records per sync and the append latency.
//!
//! ```sh
//! cargo run --release -p tally --example journal_bench -- --records 400000 --tasks 256
//! ```
//!
//! The journal is written to a fresh directory under `--dir` (default: the current directory,
//! so that the figures are those of a real disk, not of a tmpfs) and removed afterwards.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use tally::batch::BatchSeq;
use tally::journal::{Journal, JournalOptions};

#[derive(Parser)]
struct Args {
    /// Records to append in all.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Concurrent appending tasks (requests in flight).
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// Where to create the journal's temporary directory.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.records > 0, "--records must be at least 1");
    let tasks = args.tasks.max(1);
    let dir = tempfile::Builder::new()
        .prefix("journal-bench-")
        .tempdir_in(&args.dir)?;
    let (journal, _) = Journal::open(JournalOptions::new(dir.path()), |_| {})?;

    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let journal = journal.clone();
            let count = args.records / tasks + usize::from(t < args.records % tasks);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(count);
                let mut key = String::with_capacity(32);
                for i in 0..count {
                    key.clear();
                    use std::fmt::Write;
                    write!(key, "bench-key-{}", (t * 7919 + i) % 10_000).unwrap();
                    let sent = Instant::now();
                    journal.append_one(BatchSeq::first(), &key, 1).await?;
                    latencies.push(sent.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::with_capacity(args.records);
    for h in handles {
        latencies.extend(h.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = journal.stats();
    journal.close()?;

    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "{} records from {tasks} tasks in {elapsed:.2} s on {}",
        stats.records,
        args.dir.display()
    );
    println!("records/s        {:.0}", stats.records as f64 / elapsed);
    println!("syncs/s          {:.0}", stats.syncs as f64 / elapsed);
    println!(
        "records per sync {:.1}",
        stats.records as f64 / stats.syncs.max(1) as f64
    );
    println!(
        "append latency   p50 {:?}  p99 {:?}  max {:?}",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
