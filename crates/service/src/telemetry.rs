//! Logging: human-readable text by default, one JSON object per line for machines.
//! `--log-level` sets the level; without it `RUST_LOG` filters as usual (per module too); the
//! default is `info`. Either way the migration library's per-step chatter and PostgreSQL's
//! notices are left out unless asked for by name: Tally logs each applied migration itself.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: one line of text per event.
    Text,
    /// For machines: one JSON object per line.
    Json,
}

/// The least severe events logged (`--log-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Replaces the filter of the installed subscriber; set once, by [`init`].
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static SET_FILTER: OnceLock<SetFilter> = OnceLock::new();

/// The filter for `level`, or `RUST_LOG` without one.
fn filter(level: Option<LogLevel>) -> EnvFilter {
    // PostgreSQL's notices ("relation ... already exists, skipping" at every start) reach
    // tokio-postgres as info events of its own; they are the server's chatter, not Tally's.
    let quiet_migrations = |level: &str| {
        EnvFilter::new(format!(
            "{level},refinery_core=warn,tokio_postgres::connection=warn"
        ))
    };
    match level {
        Some(level) => quiet_migrations(level.directive()),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| quiet_migrations("info")),
    }
}

/// Installs the global subscriber. Later calls (several apps in one test process) are no-ops.
/// `level`, when given, beats `RUST_LOG`.
pub fn init(format: LogFormat, level: Option<LogLevel>) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // The reload handle's type names the whole subscriber, so each format gets its own.
    let (installed, set): (_, SetFilter) = match format {
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            (
                builder.try_init(),
                Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
            )
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            (
                builder.try_init(),
                Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
            )
        }
    };
    if installed.is_ok() {
        let _ = SET_FILTER.set(set);
    }
}

/// Logs at `level` from now on (`RUST_LOG`'s filter, or `info`, when `None`): a reload.
pub fn set_level(level: Option<LogLevel>) -> Result<(), String> {
    match SET_FILTER.get() {
        Some(set) => set(filter(level)),
        None => Err("logging is not set up".to_owned()),
    }
}
