//! The `tally` binary: parse the configuration, set up logging, run the subcommand, and turn
//! the outcome into an exit status (0 done, 1 failed, 2 refused to start).

mod cli;

use std::process::ExitCode;

use cli::Command;
use tally::{StartError, app, database::Database, exit_code, shutdown::Shutdown, telemetry};

fn main() -> ExitCode {
    let command = match cli::load() {
        Ok(command) => command,
        Err(e) => {
            eprintln!("tally: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tally: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Serve(config) => {
                telemetry::init(config.log_format);
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
                let shutdown = Shutdown::new();
                shutdown.listen_for_signals()?;
                app::serve(config, listener, shutdown).await
            }
            Command::Migrate(config) => {
                telemetry::init(config.log_format);
                let data_dir = tally::node::DataDir::open(&config.database.data_dir)
                    .map_err(StartError::from)?;
                let database = Database::open(&config.database, data_dir.path()).await?;
                tracing::info!(database = %database.description, "migrations are up to date");
                database.close().await;
                Ok(())
            }
            Command::Postgres(config) => {
                telemetry::init(telemetry::LogFormat::Text);
                postgres(config).await
            }
            Command::Journal(config) => {
                telemetry::init(telemetry::LogFormat::Text);
                journal(config)
            }
            Command::Load(config) => {
                // The report goes to stdout; logging is for errors only.
                telemetry::init(telemetry::LogFormat::Text);
                tally_load::run(config).await.map(|_report| ())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            if code == 2 {
                // Refused to start: one plain line, like a configuration error.
                eprintln!("tally: {e:#}");
            } else {
                tracing::error!("{e:#}");
            }
            ExitCode::from(code)
        }
    }
}

/// `tally postgres start|stop`: the managed cluster of `tally serve`, on its own.
async fn postgres(config: cli::PostgresConfig) -> anyhow::Result<()> {
    use cli::PostgresAction;
    use tally_postgres::{ManagedOptions, ManagedPostgres};
    let dir = config.data_dir.join("postgres");
    let options = ManagedOptions::default();
    tokio::task::spawn_blocking(move || match config.action {
        PostgresAction::Start => {
            let cluster = ManagedPostgres::start(&dir, &options).map_err(StartError::from)?;
            println!("{}", cluster.connection_string(&options.database));
            Ok(())
        }
        PostgresAction::Stop => {
            ManagedPostgres::attach(&dir, &options)
                .and_then(|cluster| cluster.stop())
                .map_err(StartError::from)?;
            Ok(())
        }
    })
    .await?
}

/// `tally journal check|repair`: the journal of a stopped node, as an operator sees it.
fn journal(config: cli::JournalConfig) -> anyhow::Result<()> {
    use cli::JournalAction;
    // The lock keeps a running node's journal out of reach.
    let data_dir = tally::node::DataDir::open(&config.data_dir).map_err(StartError::from)?;
    let dir = data_dir.path().join("journal");
    match config.action {
        JournalAction::Check => {
            let inspection = tally::journal::inspect(&dir)?;
            println!("{}: {inspection}", dir.display());
            anyhow::ensure!(
                inspection.opens(),
                "the journal is damaged where acknowledged increments may be; see above"
            );
        }
        JournalAction::Repair => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let backup = data_dir.path().join(format!("journal-repair-{stamp}"));
            let repaired = tally::journal::repair(&dir, &backup)?;
            for action in &repaired.actions {
                println!("{action}");
            }
            match &repaired.backup {
                Some(backup) => println!(
                    "repaired: the node starts on this journal; the files as they were are in {}",
                    backup.display()
                ),
                None => println!("nothing to repair: the node starts on this journal"),
            }
        }
    }
    Ok(())
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
