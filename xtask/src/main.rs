//! `cargo xtask <task>`: programs that serve the repository rather than the service, kept out
//! of the service's crates so that their dependencies (a chart library) never reach it.

mod bench_report;

use clap::Parser;

#[derive(Parser)]
#[command(name = "cargo xtask", about)]
enum Task {
    /// Writes BENCHMARKS.md and bench/results.svg from the results `bench/run` collected.
    BenchReport(bench_report::Args),
}

fn main() -> anyhow::Result<()> {
    match Task::parse() {
        Task::BenchReport(args) => bench_report::run(args),
    }
}
