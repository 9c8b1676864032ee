//! The service's configuration: one typed struct per command the service runs (`serve`,
//! `migrate`), each setting a flag with an environment variable, parsed and checked by clap.
//! The `tally` binary (crate `tally-cli`) composes them into its command line and adds the
//! TOML file, which slots in between environment and default.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
pub use tally_postgres::DatabaseUrl;

use crate::access::peer::TrustedProxies;
use crate::access::rate_limit::RateLimit;
use crate::access::{AuthMode, Signup};
use crate::increment::{KeyFormat, ValidationRules};
use crate::telemetry::{LogFormat, LogLevel};

/// The shortest and longest database timeouts Tally accepts: below 100 ms an ordinary flush
/// statement on a busy server would be cut off; above 5 minutes a silent connection would hold
/// the flush up far longer than the freshness bound.
pub const DB_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(300));

/// The shortest and longest flush intervals Tally accepts (DESIGN.md section 4).
pub const FLUSH_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(10));

/// Settings shared by every subcommand that reaches the database.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection string (URL or key=value). Unset: a managed local PostgreSQL
    /// under the data directory.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true,
          value_parser = tally_postgres::DatabaseUrlParser)]
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

    /// Least severe events logged: error, warn, info, debug or trace. Unset: `RUST_LOG`, which
    /// also takes per-module directives, or `info`.
    #[arg(long, env = "TALLY_LOG_LEVEL", value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,

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

    /// How long an `Idempotency-Key` is kept: a retry within it counts once, a retry after it
    /// counts again. Expired keys are purged in the background.
    #[arg(long, env = "TALLY_IDEMPOTENCY_TTL", default_value = "24h",
          value_parser = parse_idempotency_ttl, value_name = "DURATION")]
    pub idempotency_ttl: Duration,

    /// How long a request's head (request line and headers) and then its body may take to
    /// arrive; an idle keep-alive connection is closed after it too (1s to 10m). A head too
    /// slow closes the connection; a body too slow is answered 408.
    #[arg(long, env = "TALLY_READ_TIMEOUT", default_value = "15s",
          value_parser = parse_read_timeout, value_name = "DURATION")]
    pub read_timeout: Duration,

    /// Largest request head, request line and headers together (8KiB to 1MiB); a larger one
    /// is answered 431 and its connection closed.
    #[arg(long, env = "TALLY_MAX_HEADER_BYTES", default_value = "16KiB",
          value_parser = parse_header_size, value_name = "SIZE")]
    pub max_header_bytes: u64,

    /// Most connections open at once; one more is closed as soon as it is accepted.
    #[arg(long, env = "TALLY_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N")]
    pub max_connections: u32,

    /// Most requests being handled at once; one more is answered 503 with Retry-After.
    #[arg(long, env = "TALLY_MAX_IN_FLIGHT", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N")]
    pub max_in_flight: u32,

    /// Whether counting and reading need credentials: `none`, or `required` (a session
    /// cookie or `Authorization: Bearer <api key>`; `/health`, `/ready` and `/metrics` stay
    /// open).
    #[arg(long, env = "TALLY_AUTH", value_enum, default_value_t = AuthMode::None)]
    pub auth: AuthMode,

    /// Who may create users: `open` (anyone, with `POST /api/users`) or `closed` (an operator,
    /// with `tally user add`).
    #[arg(long, env = "TALLY_SIGNUP", value_enum, default_value_t = Signup::Closed)]
    pub signup: Signup,

    /// How long a session lasts after its login (1m to 365days).
    #[arg(long, env = "TALLY_SESSION_TTL", default_value = "7days",
          value_parser = parse_session_ttl, value_name = "DURATION")]
    pub session_ttl: Duration,

    /// Session cookies without `Secure`, for clients that reach the node over plain HTTP
    /// (local tests); never on a public address.
    #[arg(long, env = "TALLY_INSECURE_COOKIES", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_name = "BOOL")]
    pub insecure_cookies: bool,

    /// Requests per client and period, e.g. `1000/5s`: a token bucket per API key, user or
    /// address (429 past it). Per node. Unset: no limit.
    #[arg(long, env = "TALLY_RATE_LIMIT", value_name = "N/PERIOD")]
    pub rate_limit: Option<RateLimit>,

    /// Proxies whose `X-Forwarded-For` names the client (comma-separated addresses or
    /// networks, e.g. `10.0.0.0/8,127.0.0.1`). From anyone else it is ignored.
    #[arg(
        long,
        env = "TALLY_TRUSTED_PROXIES",
        default_value = "",
        value_name = "LIST"
    )]
    pub trusted_proxies: TrustedProxies,

    /// Serve `/metrics` on this address instead of the main one (e.g. `127.0.0.1:9333`).
    #[arg(long, env = "TALLY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log one line per request (method, route, status, duration, request id).
    #[arg(long, env = "TALLY_ACCESS_LOG", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_name = "BOOL")]
    pub access_log: bool,

    /// TOML file with any of these settings (snake_case names, e.g. `flush_interval = "2s"`).
    /// SIGHUP reads it again and applies what can change while running.
    #[arg(long, env = "TALLY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Also read the --config file again whenever it changes, as on SIGHUP.
    #[arg(long, env = "TALLY_WATCH_CONFIG", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_name = "BOOL", requires = "config")]
    pub watch_config: bool,
}

/// Settings of `tally migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Log format.
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Least severe events logged: error, warn, info, debug or trace. Unset: `RUST_LOG`, which
    /// also takes per-module directives, or `info`.
    #[arg(long, env = "TALLY_LOG_LEVEL", value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,

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
value_enum!(LogLevel { Error => "error", Warn => "warn", Info => "info", Debug => "debug", Trace => "trace" });
value_enum!(AuthMode { None => "none", Required => "required" });
value_enum!(Signup { Open => "open", Closed => "closed" });

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
display_as_written!(
    Durability, Mode, KeyFormat, LogFormat, LogLevel, AuthMode, Signup
);

/// A duration (`humantime`: `250ms`, `9s`, `24h`) within `min..=max`; `examples` for a value
/// that is not one, `bounds` for one out of range.
fn parse_duration_within(
    s: &str,
    (min, max): (Duration, Duration),
    examples: &str,
    bounds: &str,
) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: {examples})"))?;
    if d < min || d > max {
        return Err(format!("must be {bounds}"));
    }
    Ok(d)
}

fn parse_flush_interval(s: &str) -> Result<Duration, String> {
    parse_duration_within(
        s,
        FLUSH_INTERVAL_RANGE,
        "250ms, 1s, 9s",
        "between 10ms and 10s",
    )
}

fn parse_db_timeout(s: &str) -> Result<Duration, String> {
    parse_duration_within(s, DB_TIMEOUT_RANGE, "500ms, 5s, 1m", "between 100ms and 5m")
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

fn parse_header_size(s: &str) -> Result<u64, String> {
    // hyper's smallest read buffer is 8 KiB.
    parse_size(s, 8 << 10..=1 << 20, "between 8KiB and 1MiB")
}

fn parse_read_timeout(s: &str) -> Result<Duration, String> {
    let range = (Duration::from_secs(1), Duration::from_secs(600));
    parse_duration_within(s, range, "5s, 15s, 1m", "from 1s to 10m")
}

fn parse_journal_size(s: &str) -> Result<u64, String> {
    parse_size(s, 1 << 20..=u64::MAX, "at least 1MiB")
}

fn parse_drain_delay(s: &str) -> Result<Duration, String> {
    let range = (Duration::ZERO, Duration::from_secs(300));
    parse_duration_within(s, range, "0s, 5s", "at most 5m")
}

fn parse_drain_timeout(s: &str) -> Result<Duration, String> {
    let range = (Duration::ZERO, Duration::from_secs(3600));
    parse_duration_within(s, range, "1s, 30s, 2m", "at most 1h")
}

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn parse_idempotency_ttl(s: &str) -> Result<Duration, String> {
    let range = (Duration::from_secs(1), YEAR);
    parse_duration_within(s, range, "1h, 24h, 7days", "from 1s to 365days")
}

fn parse_session_ttl(s: &str) -> Result<Duration, String> {
    let range = (Duration::from_secs(60), YEAR);
    parse_duration_within(s, range, "12h, 7days", "from 1m to 365days")
}

fn parse_node_id(s: &str) -> Result<String, String> {
    crate::node::validate_node_id(s).map(|()| s.to_owned())
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
