//! The `tally` binary: parse the configuration, set up logging, run the subcommand, and turn
//! the outcome into an exit status (0 done, 1 failed, 2 refused to start).

mod cli;

use std::process::ExitCode;

use cli::Command;
use tally::access::{AccessError, Accounts, AuthMode, Signup};
use tally::{
    StartError, app, database::Database, exit_code, reload, shutdown::Shutdown, telemetry,
};

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
                telemetry::init(config.log_format, config.log_level);
                let listener =
                    tokio::net::TcpListener::bind(config.listen)
                        .await
                        .map_err(|source| StartError::Listen {
                            addr: config.listen,
                            what: "",
                            source,
                        })?;
                let shutdown = Shutdown::new();
                shutdown.listen_for_signals()?;
                let hangups = reload::Hangups::listen().map_err(anyhow::Error::from)?;
                let node = app::Node::build(config, listener, shutdown).await?;
                node.reload_on(hangups, Box::new(read_serve_config()))
                    .run_until_stopped()
                    .await
            }
            Command::Migrate(config) => {
                telemetry::init(config.log_format, config.log_level);
                let data_dir = tally::node::DataDir::open(&config.database.data_dir)
                    .map_err(StartError::from)?;
                let database = Database::open(&config.database, data_dir.path()).await?;
                tracing::info!(database = %database.description, "migrations are up to date");
                database.close().await;
                Ok(())
            }
            Command::Postgres(config) => {
                telemetry::init(telemetry::LogFormat::Text, None);
                postgres(config).await
            }
            Command::Journal(config) => {
                telemetry::init(telemetry::LogFormat::Text, None);
                journal(config)
            }
            Command::Completions(shell) => {
                let mut command = cli::command();
                clap_complete::generate(shell, &mut command, "tally", &mut std::io::stdout());
                Ok(())
            }
            Command::Man => {
                clap_mangen::Man::new(cli::command()).render(&mut std::io::stdout())?;
                Ok(())
            }
            Command::CheckConfig(config) => {
                print!("{}", check_config(&config));
                Ok(())
            }
            Command::User(cli::UserConfig {
                action: cli::UserAction::Add { email, settings },
            }) => {
                telemetry::init(settings.log_format, settings.log_level);
                let password = read_password(&email)?;
                let id = with_accounts(&settings, async |accounts| {
                    accounts.add_user(&email, &password).await
                })
                .await?;
                println!("added user {email} (id {id})");
                Ok(())
            }
            Command::Key(cli::KeyConfig {
                action: cli::KeyAction::Create { user, settings },
            }) => {
                telemetry::init(settings.log_format, settings.log_level);
                let (key, id) = with_accounts(&settings, async |accounts| {
                    accounts.create_key_for(&user).await
                })
                .await?;
                eprintln!("API key {id} for {user}; it is shown this once, only its hash is kept:");
                println!("{key}");
                Ok(())
            }
            Command::Load(config) => {
                // The report goes to stdout; logging is for errors only.
                telemetry::init(telemetry::LogFormat::Text, None);
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

/// Reads the serve configuration again as at start, for a reload: the same arguments and
/// environment, the configuration file as it is now.
fn read_serve_config() -> impl Fn() -> Result<tally::config::ServeConfig, String> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    move || match cli::load_from(args.clone()) {
        Ok(Command::Serve(config)) => Ok(config),
        Ok(_) => Err("the command line no longer reads as `tally serve`".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// What `tally check-config` prints of a valid configuration: the settings that shape a
/// node, the connection string without its password.
fn check_config(config: &tally::config::ServeConfig) -> String {
    let mut out = String::from("the configuration is valid:\n");
    for (name, value) in tally::profile::settings(config, config.listen) {
        out.push_str(&format!("  {name} = {value}\n"));
    }
    out
}

/// Runs `work` on the accounts of the database `settings` name (migrated first), then closes it.
async fn with_accounts<T>(
    settings: &tally::config::MigrateConfig,
    work: impl AsyncFnOnce(&Accounts) -> Result<T, AccessError>,
) -> anyhow::Result<T> {
    // An external database needs no data directory: the node may be running on it. The
    // managed one lives in the data directory, which a running node holds.
    let external = settings
        .database
        .database_url
        .as_ref()
        .is_some_and(|u| !u.expose().trim().is_empty());
    let data_dir = match external {
        true => None,
        false => Some(
            tally::node::DataDir::open(&settings.database.data_dir).map_err(StartError::from)?,
        ),
    };
    let path = data_dir
        .as_ref()
        .map_or(settings.database.data_dir.as_path(), |d| d.path());
    let database = Database::open(&settings.database, path).await?;
    // Only `add_user` and `create_key_for` are used, which do not depend on the mode.
    let accounts = Accounts::new(
        database.storage.clone(),
        AuthMode::Required,
        Signup::Closed,
        std::time::Duration::from_secs(60),
    );
    let result = work(&accounts).await;
    database.close().await;
    Ok(result?)
}

/// The first line of standard input, asked for when it is a terminal.
fn read_password(email: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password for {email} (shown as typed): ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(
        !password.is_empty(),
        "no password: write it on standard input, e.g. `tally user add {email} < password-file`"
    );
    Ok(password.to_owned())
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
