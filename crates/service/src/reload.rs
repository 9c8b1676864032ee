//! Live reload: on SIGHUP, and with `--watch-config` whenever the `--config` file changes, a
//! running node reads its configuration again and applies what can change while it runs.
//!
//! The configuration is read as at start: the same flags and environment, the file as it is
//! now. So a setting given by a flag or an environment variable keeps that value, since they
//! beat the file. What changed is found by comparing the settings as the console shows them
//! ([`crate::profile`]); the [`RELOADABLE`] ones are applied at once and logged, a change to
//! any other is logged as needing a restart and left as it is. A file that does not parse, or
//! holds an invalid value, is refused whole: the node keeps every running setting. Each reload
//! counts in `tally_config_reloads_total{outcome}`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::access::rate_limit::Limiter;
use crate::config::ServeConfig;
use crate::http::ApiContext;
use crate::ingest::LiveBound;
use crate::metrics::OutcomeLabel;
use crate::pending::Unpersisted;
use crate::profile::{self, Profile};
use crate::telemetry;

/// Reads the configuration again, as at start.
pub type ReadConfig = Box<dyn Fn() -> Result<ServeConfig, String> + Send + Sync>;

/// The settings a reload applies. `rate_limit` only changes from one rate to another: turning
/// it on or off changes how requests are routed, which needs a restart.
pub const RELOADABLE: &[&str] = &[
    "flush_interval",
    "max_pending_keys",
    "max_journal_bytes",
    "log_level",
    "access_log",
    "rate_limit",
    "signup",
    "session_ttl",
];

/// How often `--watch-config` looks at the file. Polling its contents, rather than asking the
/// kernel for events, sees every way a file is replaced (an editor's rename, a Kubernetes
/// ConfigMap's symlink swap) alike, and reading a small file once a second costs nothing.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// SIGHUP, caught from the start: without a handler it would end the process.
pub struct Hangups(Signal);

impl Hangups {
    pub fn listen() -> std::io::Result<Hangups> {
        Ok(Hangups(signal(SignalKind::hangup())?))
    }
}

/// The parts of a running node that take new settings.
pub struct Live {
    /// `None` in sync mode, which has no flusher.
    pub flush_interval: Option<Arc<watch::Sender<Duration>>>,
    /// `None` in sync mode.
    pub pending: Option<Arc<Unpersisted>>,
    pub max_journal_bytes: LiveBound,
    pub access_log: Arc<AtomicBool>,
    /// `None` without `--rate-limit`.
    pub limiter: Option<Arc<Limiter>>,
    /// The accounts, the console's profile and the metrics.
    pub ctx: Arc<ApiContext>,
    pub listen: SocketAddr,
    /// With `--watch-config`: the file, and its contents when the node started, so that a
    /// change made while it started is seen too.
    pub watched: Option<(PathBuf, Option<Vec<u8>>)>,
}

/// The file `--watch-config` watches, and its contents now.
pub fn watched(config: &ServeConfig) -> Option<(PathBuf, Option<Vec<u8>>)> {
    let path = config.config.clone().filter(|_| config.watch_config)?;
    let contents = std::fs::read(&path).ok();
    Some((path, contents))
}

/// One setting whose value differs between the running configuration and the one read.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub name: &'static str,
    pub from: String,
    pub to: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.name, self.from, self.to)
    }
}

/// What a reload did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub applied: Vec<Change>,
    pub need_restart: Vec<Change>,
}

/// Reads the configuration again and applies it to a running node.
pub struct Reloader {
    read: ReadConfig,
    /// The settings in force: those of the start, with every reload's applied changes.
    running: ServeConfig,
    live: Live,
}

impl Reloader {
    pub fn new(read: ReadConfig, running: ServeConfig, live: Live) -> Reloader {
        Reloader {
            read,
            running,
            live,
        }
    }

    /// Reads the configuration and applies what changed and can change; an error (the file
    /// unreadable or invalid) leaves everything as it was.
    pub fn reload(&mut self) -> Result<Outcome, String> {
        let read = (self.read)()?;
        let listen = self.live.listen;
        let before = profile::settings(&self.running, listen);
        let after = profile::settings(&read, listen);
        let mut outcome = Outcome::default();
        for ((name, from), (_, to)) in before.into_iter().zip(after) {
            if from == to {
                continue;
            }
            let change = Change { name, from, to };
            let reloadable = RELOADABLE.contains(&name)
                && (name != "rate_limit"
                    || (self.running.rate_limit.is_some() && read.rate_limit.is_some()));
            if reloadable {
                outcome.applied.push(change);
            } else {
                outcome.need_restart.push(change);
            }
        }
        if outcome.applied.iter().any(|c| c.name == "log_level") {
            telemetry::set_level(read.log_level)?;
        }
        self.apply(&read, &outcome.applied);
        Ok(outcome)
    }

    /// Applies the `changes` of `read` to the node and to the settings it runs with.
    fn apply(&mut self, read: &ServeConfig, changes: &[Change]) {
        let live = &self.live;
        let running = &mut self.running;
        for change in changes {
            match change.name {
                "flush_interval" => {
                    running.flush_interval = read.flush_interval;
                    if let Some(interval) = &live.flush_interval {
                        interval.send_replace(read.flush_interval);
                    }
                }
                "max_pending_keys" => {
                    running.max_pending_keys = read.max_pending_keys;
                    if let Some(pending) = &live.pending {
                        pending.set_max_keys(
                            usize::try_from(read.max_pending_keys).unwrap_or(usize::MAX),
                        );
                    }
                    live.ctx
                        .metrics
                        .pending_keys_limit
                        .set(gauge(read.max_pending_keys));
                }
                "max_journal_bytes" => {
                    running.max_journal_bytes = read.max_journal_bytes;
                    live.max_journal_bytes.set(read.max_journal_bytes);
                    live.ctx
                        .metrics
                        .journal_limit_bytes
                        .set(gauge(read.max_journal_bytes));
                }
                "log_level" => running.log_level = read.log_level,
                "access_log" => {
                    running.access_log = read.access_log;
                    live.access_log.store(read.access_log, Ordering::Relaxed);
                }
                "rate_limit" => {
                    running.rate_limit = read.rate_limit;
                    if let (Some(limiter), Some(rate)) = (&live.limiter, read.rate_limit) {
                        limiter.set_rate(rate);
                    }
                }
                "signup" | "session_ttl" => {
                    running.signup = read.signup;
                    running.session_ttl = read.session_ttl;
                    live.ctx.accounts.set_policy(read.signup, read.session_ttl);
                }
                other => unreachable!("{other} is not in RELOADABLE"),
            }
        }
        let mut shown = live
            .ctx
            .profile
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *shown = Profile::of(running, shown.node_id.clone(), live.listen);
    }

    /// Reloads, logs what became of it and counts it.
    fn reload_and_log(&mut self, why: &'static str) {
        let metrics = self.live.ctx.metrics.clone();
        let outcome = |outcome| {
            metrics
                .config_reloads
                .get_or_create(&OutcomeLabel { outcome })
        };
        match self.reload() {
            Ok(done) => {
                outcome("applied").inc();
                let list = |changes: &[Change]| {
                    let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
                    shown.join(", ")
                };
                if done.applied.is_empty() && done.need_restart.is_empty() {
                    tracing::info!(trigger = why, "configuration reloaded: nothing changed");
                } else if !done.applied.is_empty() {
                    tracing::info!(
                        trigger = why,
                        changed = list(&done.applied),
                        "configuration reloaded"
                    );
                }
                if !done.need_restart.is_empty() {
                    tracing::warn!(
                        trigger = why,
                        needs_restart = list(&done.need_restart),
                        "configuration changes that need a restart were not applied"
                    );
                }
            }
            Err(e) => {
                outcome("failed").inc();
                tracing::error!(
                    trigger = why,
                    error = %e,
                    "configuration reload refused; the running settings stay"
                );
            }
        }
    }

    /// Reloads on every SIGHUP and, with `--watch-config`, whenever the file's contents
    /// change, until `stop`.
    pub async fn run(mut self, mut hangups: Hangups, stop: CancellationToken) {
        let mut watched = self.live.watched.take();
        let mut poll = tokio::time::interval(WATCH_EVERY);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = hangups.0.recv() => self.reload_and_log("SIGHUP"),
                _ = poll.tick(), if watched.is_some() => {
                    if let Some((path, seen)) = &mut watched {
                        let now = std::fs::read(&*path).ok();
                        if now != *seen {
                            *seen = now;
                            self.reload_and_log("file changed");
                        }
                    }
                }
            }
        }
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
