//! The verifying load generator on its own, with the same flags as `tally load`:
//!
//! ```sh
//! cargo run --release --example load -- --connections 64 --duration 10s --keys 100000 \
//!     --verify --database-url 'host=/path/to/socket/dir user=tally dbname=tally'
//! ```

use std::process::ExitCode;

use clap::Parser;
use tally::load::LoadConfig;

#[derive(Parser)]
#[command(
    name = "load",
    about = "Loads a Tally node and checks the totals it keeps in PostgreSQL"
)]
struct Cli {
    #[command(flatten)]
    load: LoadConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match tally::load::run(cli.load).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
