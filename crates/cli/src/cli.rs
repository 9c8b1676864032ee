//! The `tally` command line: the subcommands, and where every setting comes from, in this
//! order of precedence: flag, `TALLY_*` environment variable, an optional TOML file
//! (`--config`), default.
//!
//! clap does flags, environment and defaults. The file slots in between environment and
//! default by becoming clap's default values before the final parse, so every value, wherever
//! it comes from, goes through the same parser and fails with the same kind of message.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tally::config::{MigrateConfig, ServeConfig};

/// The version `tally --version` prints: the package's and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TALLY_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version = VERSION,
    about = "Counts increments sent over HTTP and keeps exact totals in PostgreSQL",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<CliCommand>,
    /// `tally` without a subcommand serves.
    #[command(flatten)]
    serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Serve the HTTP API (the default).
    Serve(ServeConfig),
    /// Apply the database migrations and exit.
    Migrate(MigrateConfig),
    /// Load a Tally node with increments and check the totals it keeps in PostgreSQL.
    Load(tally_load::LoadConfig),
    /// Start or stop a managed PostgreSQL on its own, for several nodes on one machine.
    Postgres(PostgresConfig),
    /// Check a stopped node's journal, or repair damage that keeps the node from starting.
    Journal(JournalConfig),
    /// Print shell completions for `tally` (e.g. `tally completions bash > /etc/bash_completion.d/tally`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page of `tally` in roff (e.g. `tally man > tally.1; man ./tally.1`).
    Man,
    /// Check a configuration (flags, environment and `--config` file, as `serve` takes them)
    /// without starting: exits 0 and prints the settings if it is valid, 2 if not.
    CheckConfig(ServeConfig),
    /// Manage users (for `--auth required`).
    User(UserConfig),
    /// Manage API keys (for `--auth required`).
    Key(KeyConfig),
}

/// What the command line asked for, fully resolved.
#[derive(Debug)]
pub enum Command {
    Serve(ServeConfig),
    Migrate(MigrateConfig),
    Load(tally_load::LoadConfig),
    Postgres(PostgresConfig),
    Journal(JournalConfig),
    Completions(clap_complete::Shell),
    Man,
    CheckConfig(ServeConfig),
    User(UserConfig),
    Key(KeyConfig),
}

/// Settings of `tally user`.
#[derive(Debug, Clone, Args)]
pub struct UserConfig {
    #[command(subcommand)]
    pub action: UserAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum UserAction {
    /// Add a user, whatever `--signup` says. The password is read from standard input (its
    /// first line), so that it stays out of the shell's history and the process list.
    Add {
        /// The user's email, which is also the login.
        email: String,
        #[command(flatten)]
        settings: MigrateConfig,
    },
}

/// Settings of `tally key`.
#[derive(Debug, Clone, Args)]
pub struct KeyConfig {
    #[command(subcommand)]
    pub action: KeyAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeyAction {
    /// Create an API key for a user and print it, once: only its hash is kept.
    Create {
        /// The email of the user the key acts for.
        #[arg(long, value_name = "EMAIL")]
        user: String,
        #[command(flatten)]
        settings: MigrateConfig,
    },
}

/// Settings of `tally journal`.
#[derive(Debug, Clone, Args)]
pub struct JournalConfig {
    #[command(subcommand)]
    pub action: JournalAction,

    /// The journal lives under `<DIR>/journal`, as `tally serve` keeps it.
    #[arg(
        long,
        env = "TALLY_DATA_DIR",
        default_value = "./tally-data",
        value_name = "DIR",
        global = true
    )]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum JournalAction {
    /// Read every segment and say whether the node would start on it, and if not, where the
    /// damage is. Changes nothing; exits 1 when the node would refuse to start.
    Check,
    /// Drop the damage that keeps the node from starting, keep every readable record, and say
    /// exactly what was dropped. The files it changes are copied first to
    /// `<DIR>/journal-repair-<time>`.
    Repair,
}

/// Settings of `tally postgres`.
#[derive(Debug, Clone, Args)]
pub struct PostgresConfig {
    #[command(subcommand)]
    pub action: PostgresAction,

    /// The cluster lives under `<DIR>/postgres`, as `tally serve` would make it.
    #[arg(
        long,
        env = "TALLY_DATA_DIR",
        default_value = "./tally-data",
        value_name = "DIR",
        global = true
    )]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum PostgresAction {
    /// Create the cluster if needed, start it (or find it running), and print its
    /// connection string for DATABASE_URL.
    Start,
    /// Stop the cluster.
    Stop,
}

/// Why the configuration was refused. Its `Display` is the one line printed before exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The whole command line, as completions and the manual page describe it.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the process's arguments, environment and optional TOML file.
///
/// `--help` and `--version` print and exit 0 here; every other problem is a `ConfigError`.
pub fn load() -> Result<Command, ConfigError> {
    load_from(std::env::args_os())
}

/// Like [`load`] with explicit arguments (the first is the program name).
pub fn load_from<I, T>(args: I) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let first = parse(Cli::command(), &args)?;
    let config_file = match &first.command {
        Some(CliCommand::Migrate(m)) => m.config.clone(),
        Some(CliCommand::Serve(s) | CliCommand::CheckConfig(s)) => s.config.clone(),
        Some(CliCommand::User(UserConfig {
            action: UserAction::Add { settings, .. },
        }))
        | Some(CliCommand::Key(KeyConfig {
            action: KeyAction::Create { settings, .. },
        })) => settings.config.clone(),
        Some(
            CliCommand::Load(_)
            | CliCommand::Postgres(_)
            | CliCommand::Journal(_)
            | CliCommand::Completions { .. }
            | CliCommand::Man,
        ) => None,
        None => first.serve.config.clone(),
    };
    let cli = match config_file {
        None => first,
        Some(path) => {
            let file = read_file_settings(&path)?;
            parse(with_file_defaults(Cli::command(), &file, &path)?, &args)?
        }
    };
    Ok(match cli.command {
        Some(CliCommand::Migrate(m)) => Command::Migrate(m),
        Some(CliCommand::Serve(s)) => Command::Serve(s),
        Some(CliCommand::Load(l)) => Command::Load(l),
        Some(CliCommand::Postgres(p)) => Command::Postgres(p),
        Some(CliCommand::Journal(j)) => Command::Journal(j),
        Some(CliCommand::CheckConfig(s)) => Command::CheckConfig(s),
        Some(CliCommand::Completions { shell }) => Command::Completions(shell),
        Some(CliCommand::Man) => Command::Man,
        Some(CliCommand::User(u)) => Command::User(u),
        Some(CliCommand::Key(k)) => Command::Key(k),
        None => Command::Serve(cli.serve),
    })
}

fn parse(command: clap::Command, args: &[OsString]) -> Result<Cli, ConfigError> {
    let matches = command
        .clone()
        .try_get_matches_from(args)
        .map_err(|e| named_source(clap_error(&e), &e, &command, args))?;
    Cli::from_arg_matches(&matches).map_err(|e| clap_error(&e))
}

/// Names the environment variable a refused value came from, when it did not come from the
/// command line: `TALLY_MODE=fast: invalid value 'fast' for '--mode <MODE>'`. clap names only
/// the flag, which sends the user looking for a flag they never gave. The value is repeated
/// only for settings whose values `--help` shows (never `DATABASE_URL`'s).
fn named_source(
    error: ConfigError,
    e: &clap::Error,
    command: &clap::Command,
    args: &[OsString],
) -> ConfigError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return error;
    }
    let Some(ContextValue::String(flag)) = e.get(ContextKind::InvalidArg) else {
        return error;
    };
    let long = flag.trim_start_matches("--");
    let long = long.split([' ', '=']).next().unwrap_or(long);
    let on_command_line = args.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
    });
    if on_command_line {
        return error;
    }
    let mut commands = vec![command];
    let mut found = None;
    while let Some(c) = commands.pop() {
        commands.extend(c.get_subcommands());
        found = found.or_else(|| c.get_arguments().find(|a| a.get_long() == Some(long)));
    }
    let Some((name, value)) = found
        .and_then(|arg| Some((arg, arg.get_env()?)))
        .and_then(|(arg, name)| Some((arg, name, std::env::var_os(name)?)))
        .map(|(arg, name, value)| {
            let name = name.to_string_lossy().into_owned();
            let shown =
                (!arg.is_hide_env_values_set()).then(|| value.to_string_lossy().into_owned());
            (name, shown)
        })
    else {
        return error;
    };
    match value {
        Some(value) => ConfigError(format!("{name}={value}: {}", error.0)),
        None => ConfigError(format!("{name}: {}", error.0)),
    }
}

fn clap_error(e: &clap::Error) -> ConfigError {
    use clap::error::ErrorKind::*;
    if matches!(
        e.kind(),
        DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let text = text.trim().trim_start_matches("error: ");
    match e.kind() {
        // A refused value, in one line: what clap says before its pointer to --help (the
        // possible values, if any, included).
        InvalidValue | ValueValidation => ConfigError(
            text.lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        // A missing argument, an unknown one and its suggestions, a misused subcommand: the
        // first line alone does not say which, so clap's whole message.
        _ => ConfigError(text.to_owned()),
    }
}

/// Reads a TOML file into `(setting name, value as text)` pairs.
fn read_file_settings(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let msg = e.message().to_owned();
        ConfigError(format!(
            "config file {} is not valid TOML: {msg}",
            path.display()
        ))
    })?;
    table
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ConfigError(format!(
                        "config file {}: `{name}` must be a string, an integer or a boolean, not {}",
                        path.display(),
                        other.type_str()
                    )));
                }
            };
            Ok((name, text))
        })
        .collect()
}

/// Makes each file setting the default of the argument it names, in the top-level command
/// and in every subcommand that has it. A name no command knows is an error.
fn with_file_defaults(
    mut command: clap::Command,
    settings: &[(String, String)],
    path: &Path,
) -> Result<clap::Command, ConfigError> {
    for (name, value) in settings {
        if name == "config" {
            return Err(ConfigError(format!(
                "config file {}: `config` cannot be set from a config file",
                path.display()
            )));
        }
        let mut known = false;
        command = set_default(command, name, value, &mut known);
        if !known {
            return Err(ConfigError(format!(
                "config file {}: unknown setting `{name}`",
                path.display()
            )));
        }
    }
    Ok(command)
}

fn set_default(
    mut command: clap::Command,
    id: &str,
    value: &str,
    known: &mut bool,
) -> clap::Command {
    if command.get_arguments().any(|a| a.get_id() == id) {
        *known = true;
        command = command.mut_arg(id, |a| a.default_value(value.to_owned()));
    }
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        command = command.mut_subcommand(name, |s| set_default(s, id, value, known));
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tally::config::{Durability, Mode};
    use tally::increment::KeyFormat;
    use tally::telemetry::LogFormat;

    fn serve(args: &[&str]) -> Result<ServeConfig, ConfigError> {
        let mut all = vec!["tally"];
        all.extend_from_slice(args);
        match load_from(all)? {
            Command::Serve(s) => Ok(s),
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let s = serve(&[]).unwrap();
        assert_eq!(s.listen, "0.0.0.0:3333".parse().unwrap());
        assert_eq!(s.flush_interval, Duration::from_secs(1));
        assert_eq!(s.mode, Mode::Buffered);
        assert_eq!(s.key_format, KeyFormat::Any);
        assert!(!s.allow_negative);
        assert_eq!(s.max_body_bytes, 65536);
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.durability, Durability::Journal);
        assert_eq!(s.max_pending_keys, 10_000_000);
        assert_eq!(s.max_journal_bytes, 4 << 30);
        assert_eq!(s.database.data_dir, PathBuf::from("./tally-data"));
        assert_eq!(s.drain_timeout, Duration::from_secs(30));
        assert_eq!(s.database.db_timeout, Duration::from_secs(5));
    }

    #[test]
    fn serve_subcommand_and_bare_flags_are_the_same() {
        let a = serve(&["--flush-interval", "250ms"]).unwrap();
        let b = serve(&["serve", "--flush-interval", "250ms"]).unwrap();
        assert_eq!(a.flush_interval, Duration::from_millis(250));
        assert_eq!(b.flush_interval, a.flush_interval);
    }

    #[test]
    fn flush_interval_outside_range_is_one_clear_line() {
        for bad in ["5ms", "11s", "soon"] {
            let err = serve(&["--flush-interval", bad]).unwrap_err().to_string();
            assert!(err.contains("--flush-interval"), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(serve(&["--flush-interval", "10ms"]).is_ok());
        assert!(serve(&["--flush-interval", "10s"]).is_ok());
    }

    #[test]
    fn db_timeout_is_a_duration_within_range() {
        let s = serve(&["--db-timeout", "1s"]).unwrap();
        assert_eq!(s.database.db_timeout, Duration::from_secs(1));
        for bad in ["50ms", "6m", "never"] {
            let err = serve(&["--db-timeout", bad]).unwrap_err().to_string();
            assert!(err.contains("--db-timeout"), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(
            serve(&["--max-journal-bytes", "500MiB"])
                .unwrap()
                .max_journal_bytes,
            500 << 20
        );
        assert_eq!(
            serve(&["--max-journal-bytes", "2GB"])
                .unwrap()
                .max_journal_bytes,
            2_000_000_000
        );
        assert!(serve(&["--max-journal-bytes", "12"]).is_err(), "too small");
        assert!(serve(&["--max-journal-bytes", "lots"]).is_err());
    }

    #[test]
    fn allow_negative_is_a_flag_or_a_boolean() {
        assert!(serve(&["--allow-negative"]).unwrap().allow_negative);
        assert!(serve(&["--allow-negative", "true"]).unwrap().allow_negative);
        assert!(
            !serve(&["--allow-negative", "false"])
                .unwrap()
                .allow_negative
        );
        assert!(serve(&["--allow-negative", "maybe"]).is_err());
    }

    #[test]
    fn bad_database_url_is_refused_at_start() {
        let err = serve(&["--database-url", "postgres://x:y@host:notaport/db"]).unwrap_err();
        assert!(err.to_string().contains("connection string"), "{err}");
    }

    #[test]
    fn database_url_is_not_printed_by_debug() {
        let s = serve(&["--database-url", "postgres://u:secret@localhost/db"]).unwrap();
        assert!(!format!("{s:?}").contains("secret"));
    }

    fn write_file(text: &str) -> tempfile::TempPath {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.into_temp_path()
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let path = write_file(
            "flush_interval = \"2s\"\nmode = \"sync\"\nallow_negative = true\nmax_body_bytes = 1024\n",
        );
        let p = path.to_str().unwrap();
        let s = serve(&["--config", p, "--mode", "buffered"]).unwrap();
        assert_eq!(s.flush_interval, Duration::from_secs(2));
        assert_eq!(s.mode, Mode::Buffered, "the flag beats the file");
        assert!(s.allow_negative);
        assert_eq!(s.max_body_bytes, 1024);
    }

    #[test]
    fn file_settings_reach_subcommands() {
        let path = write_file("data_dir = \"/srv/tally\"\n");
        let p = path.to_str().unwrap();
        match load_from(["tally", "migrate", "--config", p]).unwrap() {
            Command::Migrate(m) => assert_eq!(m.database.data_dir, PathBuf::from("/srv/tally")),
            other => panic!("expected migrate, got {other:?}"),
        }
    }

    #[test]
    fn file_errors_name_the_file_and_setting() {
        let path = write_file("flush_intervall = \"2s\"\n");
        let err = serve(&["--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown setting `flush_intervall`"), "{err}");

        let path = write_file("flush_interval = \"20s\"\n");
        let err = serve(&["--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("between 10ms and 10s"), "{err}");

        let err = serve(&["--config", "/nonexistent/tally.toml"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read config file"), "{err}");
    }
}
