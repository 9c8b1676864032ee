//! Configuration: one typed struct per subcommand, filled from flags, `TALLY_*` environment
//! variables and an optional TOML file, in that order of precedence, then validated once.
//!
//! clap does flags, environment and defaults. The file slots in between environment and
//! default by becoming clap's default values before the final parse, so every value, wherever
//! it comes from, goes through the same parser and fails with the same kind of message.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
pub use tally_postgres::DatabaseUrl;

use crate::increment::{KeyFormat, ValidationRules};
use crate::telemetry::LogFormat;

/// The shortest and longest database timeouts Tally accepts: below 100 ms an ordinary flush
/// statement on a busy server would be cut off; above 5 minutes a silent connection would hold
/// the flush up far longer than the freshness bound.
pub const DB_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(300));

/// The shortest and longest flush intervals Tally accepts (DESIGN.md section 4).
pub const FLUSH_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(10));

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
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
    Load(crate::load::LoadConfig),
    /// Start or stop a managed PostgreSQL on its own, for several nodes on one machine.
    Postgres(PostgresConfig),
    /// Check a stopped node's journal, or repair damage that keeps the node from starting.
    Journal(JournalConfig),
}

/// What the command line asked for, fully resolved.
#[derive(Debug)]
pub enum Command {
    Serve(ServeConfig),
    Migrate(MigrateConfig),
    Load(crate::load::LoadConfig),
    Postgres(PostgresConfig),
    Journal(JournalConfig),
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

/// Settings shared by every subcommand that reaches the database.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection string (URL or key=value). Unset: a managed local PostgreSQL
    /// under the data directory.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<DatabaseUrl>,

    /// Directory for the node id, the journal and the managed PostgreSQL.
    #[arg(
        long,
        env = "TALLY_DATA_DIR",
        default_value = "./tally-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "TALLY_DB_POOL_SIZE", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1000), value_name = "N")]
    pub db_pool_size: u32,

    /// Longest wait for the answer to one database statement (100ms to 5m). A connection that
    /// stays silent longer is dropped and the work retried on a new one.
    #[arg(long, env = "TALLY_DB_TIMEOUT", default_value = "5s",
          value_parser = parse_db_timeout, value_name = "DURATION")]
    pub db_timeout: Duration,
}

/// Settings of `tally serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(
        long,
        env = "TALLY_LISTEN",
        default_value = "0.0.0.0:3333",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseConfig,

    /// How often pending increments are written to PostgreSQL (10ms to 10s).
    #[arg(long, env = "TALLY_FLUSH_INTERVAL", default_value = "1s",
          value_parser = parse_flush_interval, value_name = "DURATION")]
    pub flush_interval: Duration,

    /// `journal`: an increment is acknowledged once it is in the local journal on disk.
    /// `memory`: acknowledged from memory; a crash loses up to one flush interval.
    #[arg(long, env = "TALLY_DURABILITY", value_enum, default_value_t = Durability::Journal)]
    pub durability: Durability,

    /// `buffered` answers at once and flushes in batches; `sync` writes each request to
    /// PostgreSQL before answering.
    #[arg(long, env = "TALLY_MODE", value_enum, default_value_t = Mode::Buffered)]
    pub mode: Mode,

    /// This node's id in PostgreSQL; created once and kept in the data directory when unset.
    #[arg(long, env = "TALLY_NODE_ID", value_parser = parse_node_id, value_name = "ID")]
    pub node_id: Option<String>,

    /// `any` accepts any key of 1 to 256 bytes; `uuid` only hyphenated UUIDs.
    #[arg(long, env = "TALLY_KEY_FORMAT", value_enum, default_value_t = KeyFormat::Any)]
    pub key_format: KeyFormat,

    /// Accept negative values (decrements). Zero is always rejected.
    #[arg(long, env = "TALLY_ALLOW_NEGATIVE", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_name = "BOOL")]
    pub allow_negative: bool,

    /// Largest accepted request body (64 bytes to 64MiB; e.g. `65536`, `1MiB`).
    #[arg(long, env = "TALLY_MAX_BODY_BYTES", default_value = "65536",
          value_parser = parse_body_size, value_name = "SIZE")]
    pub max_body_bytes: u64,

    /// Most keys held in memory waiting for PostgreSQL; past it, new keys get 503.
    #[arg(long, env = "TALLY_MAX_PENDING_KEYS", default_value_t = 10_000_000,
          value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub max_pending_keys: u64,

    /// Most bytes of journal on disk (e.g. `4GiB`, `500MB`); past it, increments get 503.
    #[arg(long, env = "TALLY_MAX_JOURNAL_BYTES", default_value = "4GiB",
          value_parser = parse_journal_size, value_name = "SIZE")]
    pub max_journal_bytes: u64,

    /// Most items in one `POST /increments` request.
    #[arg(long, env = "TALLY_MAX_BATCH", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N")]
    pub max_batch: u32,

    /// Log format.
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// After SIGTERM, keep serving this long while `/ready` answers 503, so that a load
    /// balancer stops sending requests before the node stops accepting them.
    #[arg(long, env = "TALLY_DRAIN_DELAY", default_value = "0s",
          value_parser = parse_drain_delay, value_name = "DURATION")]
    pub drain_delay: Duration,

    /// After SIGTERM (and the drain delay), how long requests in flight may take to finish.
    /// Past it, increments still arriving on their connections are refused with 503, and
    /// the final flush begins.
    #[arg(long, env = "TALLY_DRAIN_TIMEOUT", default_value = "30s",
          value_parser = parse_drain_timeout, value_name = "DURATION")]
    pub drain_timeout: Duration,

    /// Log one line per request (method, route, status, duration, request id).
    #[arg(long, env = "TALLY_ACCESS_LOG", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_name = "BOOL")]
    pub access_log: bool,

    /// TOML file with any of these settings (snake_case names, e.g. `flush_interval = "2s"`).
    #[arg(long, env = "TALLY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Settings of `tally migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Log format.
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// TOML file with settings (see `tally serve --help`).
    #[arg(long, env = "TALLY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// When an increment is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// After it is in the local journal on disk.
    Journal,
    /// From memory: fast, but a crash loses up to one flush interval.
    Memory,
}

/// How increments reach PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Buffered in memory and flushed in batches.
    Buffered,
    /// One transaction per request before the answer.
    Sync,
}

/// `clap::ValueEnum` for a setting whose type belongs to the module that uses it, so that
/// module need not know the command line: each variant and the name it is written with.
macro_rules! value_enum {
    ($t:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl ValueEnum for $t {
            fn value_variants<'a>() -> &'a [Self] {
                &[$(Self::$variant),*]
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(match self {
                    $(Self::$variant => $name),*
                }))
            }
        }
    };
}
value_enum!(KeyFormat { Any => "any", Uuid => "uuid" });
value_enum!(LogFormat { Text => "text", Json => "json" });

/// Shows each setting the way it is written on the command line (`sync`, not `Sync`).
macro_rules! display_as_written {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let value = self.to_possible_value().expect("no variant is skipped");
                f.write_str(value.get_name())
            }
        }
    )*};
}
display_as_written!(Durability, Mode, KeyFormat, LogFormat);

fn parse_flush_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 250ms, 1s, 9s)"))?;
    let (min, max) = FLUSH_INTERVAL_RANGE;
    if d < min || d > max {
        return Err("must be between 10ms and 10s".into());
    }
    Ok(d)
}

fn parse_db_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 5s, 1m)"))?;
    let (min, max) = DB_TIMEOUT_RANGE;
    if d < min || d > max {
        return Err("must be between 100ms and 5m".into());
    }
    Ok(d)
}

/// A size in bytes, with or without a unit (`1048576`, `1MiB`, `500MB`), within `range`.
fn parse_size(s: &str, range: std::ops::RangeInclusive<u64>, bounds: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = s
        .parse()
        .map_err(|e| format!("{e} (examples: 65536, 1MiB, 500MB)"))?;
    let n = size.as_u64();
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be {bounds}"))
    }
}

fn parse_body_size(s: &str) -> Result<u64, String> {
    parse_size(s, 64..=64 << 20, "between 64 bytes and 64MiB")
}

fn parse_journal_size(s: &str) -> Result<u64, String> {
    parse_size(s, 1 << 20..=u64::MAX, "at least 1MiB")
}

fn parse_drain_delay(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 0s, 5s)"))?;
    if d > Duration::from_secs(300) {
        return Err("must be at most 5m".into());
    }
    Ok(d)
}

fn parse_drain_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 1s, 30s, 2m)"))?;
    if d > Duration::from_secs(3600) {
        return Err("must be at most 1h".into());
    }
    Ok(d)
}

fn parse_node_id(s: &str) -> Result<String, String> {
    crate::node::validate_node_id(s).map(|()| s.to_owned())
}

/// Why the configuration was refused. Its `Display` is the one line printed before exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

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
        Some(CliCommand::Serve(s)) => s.config.clone(),
        Some(CliCommand::Load(_) | CliCommand::Postgres(_) | CliCommand::Journal(_)) => None,
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
        None => Command::Serve(cli.serve),
    })
}

fn parse(command: clap::Command, args: &[OsString]) -> Result<Cli, ConfigError> {
    let matches = command.try_get_matches_from(args).map_err(clap_error)?;
    Cli::from_arg_matches(&matches).map_err(clap_error)
}

fn clap_error(e: clap::Error) -> ConfigError {
    use clap::error::ErrorKind::*;
    if matches!(
        e.kind(),
        DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    // clap's own rendering ends with a usage hint; the first line says what is wrong.
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or("invalid configuration");
    ConfigError(line.trim_start_matches("error: ").to_owned())
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

impl ServeConfig {
    /// The settings that validation needs, free of everything else.
    pub fn validation_rules(&self) -> ValidationRules {
        ValidationRules {
            key_format: self.key_format,
            allow_negative: self.allow_negative,
        }
    }

    /// The durability that applies: `none` in sync mode, where each request is committed to
    /// PostgreSQL before its answer and no journal is written.
    pub fn durability_in_effect(&self) -> String {
        match self.mode {
            Mode::Sync => "none".to_owned(),
            Mode::Buffered => self.durability.to_string(),
        }
    }

    /// Whether increments go through the local journal: buffered mode with journal
    /// durability. Sync mode commits each request to PostgreSQL before answering instead.
    pub fn uses_journal(&self) -> bool {
        self.mode == Mode::Buffered && self.durability == Durability::Journal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
