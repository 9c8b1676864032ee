//! Turns the results `bench/run` collected into `BENCHMARKS.md` and `bench/results.svg`.
//!
//! ```sh
//! cargo xtask bench-report --results DIR [--markdown BENCHMARKS.md] [--svg bench/results.svg]
//! ```
//!
//! DIR holds one file per measurement, as `bench/run` writes them: `run.json` (settings, with
//! the number of rounds), `machine.json`, `load-{health,memory,journal,sync}-<round>.json`
//! (`tally load --json`, rounds numbered from 1), `wrk-{health,memory}.txt` (wrk's own output,
//! `--latency`), `flush.json` (the `flush_bench` example), `memory.txt` (the `pending_memory`
//! example) and `commands.txt`. A missing or malformed file stops the report: a page with a
//! hole in it would be read as a full one.
//!
//! Every throughput figure is shown as a ratio to the HTTP ceiling that the same client
//! measured in the same round, because only that ratio carries over between machines. Each
//! mode is reported by its median round, the round whose ratio is the median, with the spread
//! of the ratio over the rounds; the targets of the issue are checked here on the median
//! rounds, each with its figure, so the page says PASS or FAIL without anyone redoing the
//! arithmetic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Targets from the issue, for this 2-core machine with the client on it.
const MEMORY_MIN_RATIO: f64 = 0.85;
const JOURNAL_MIN_RATIO: f64 = 0.60;
const JOURNAL_MAX_P99_MS: f64 = 5.0;
const TARGET_CONNECTIONS: u32 = 64;
const FLUSH_MAX_SECONDS: f64 = 5.0;
const MAX_BYTES_PER_KEY: f64 = 150.0;
/// Shorter runs than this are marked as noisy at the top of the page.
const MIN_TRUSTED_SECONDS: f64 = 10.0;
/// Fewer rounds than this are marked too: with two, the median is simply the lower one, and
/// one disturbed round is enough to move it.
const MIN_TRUSTED_ROUNDS: usize = 3;
/// A route that does work cannot outrun one that does none: a ratio above this says the
/// ceiling's measurement was disturbed, and the page says so.
const MAX_PLAUSIBLE_RATIO: f64 = 1.05;

/// Settings of `cargo xtask bench-report`.
#[derive(clap::Args)]
pub struct Args {
    /// The directory of results written by bench/run.
    #[arg(long)]
    results: PathBuf,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
    /// Where to write the chart; the report links to it relative to its own directory.
    #[arg(long, default_value = "bench/results.svg")]
    svg: PathBuf,
    /// Hand-written findings from profiles (Markdown), put under "Where the time goes" when a
    /// target is missed: figures come from the run, explanations from people.
    #[arg(long)]
    analysis: Option<PathBuf>,
}

/// `run.json`: how bench/run was configured.
#[derive(Deserialize)]
struct RunSettings {
    duration: String,
    duration_secs: f64,
    /// Rounds of ceiling, memory, memory with auth, journal and sync.
    rounds: usize,
    warmup: String,
    connections: u32,
    keys: u32,
    commit: String,
    started: String,
}

/// `machine.json`.
#[derive(Deserialize)]
struct Machine {
    cpu: String,
    cores: u32,
    memory: String,
    kernel: String,
    os: String,
    /// /proc/loadavg before the run: how quiet the machine was.
    load_average: String,
    rustc: String,
    wrk: String,
    date: String,
}

/// The fields of `tally load --json` (`LoadReport`) that the report shows.
#[derive(Deserialize)]
struct Load {
    connections: u32,
    requests: u64,
    requests_per_sec: f64,
    latency_ms: Latency,
    statuses: BTreeMap<String, u64>,
    connection_errors: u64,
    timeouts: u64,
    verify: Option<Verify>,
}

#[derive(Deserialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p99_9: f64,
}

#[derive(Deserialize)]
struct Verify {
    exact: bool,
    keys: usize,
    increments: u64,
    freshness_ms: Option<f64>,
}

impl Load {
    /// Requests that did not get a 2xx answer.
    fn failures(&self) -> u64 {
        let non_2xx: u64 = self
            .statuses
            .iter()
            .filter(|(status, _)| !status.starts_with('2'))
            .map(|(_, n)| n)
            .sum();
        non_2xx + self.connection_errors + self.timeouts
    }
}

/// What wrk printed, from `--latency` output.
struct Wrk {
    requests: u64,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: u64,
}

/// `flush.json`, from the flush_bench example.
#[derive(Deserialize)]
struct Flush {
    keys: usize,
    key_bytes: usize,
    database: String,
    /// `version()` of the server the flush ran on, a managed cluster like the nodes'.
    server_version: String,
    sort_seconds: f64,
    insert: Timed,
    update: Timed,
}

#[derive(Deserialize)]
struct Timed {
    seconds: f64,
    rows_per_sec: f64,
}

/// The line the pending_memory example prints.
struct PendingMemory {
    keys: u64,
    key_bytes: u64,
    resident_mib: f64,
    bytes_per_key: f64,
}

/// The measurements `tally load` takes in one round, back to back, each on a fresh server.
struct Round {
    health: Load,
    memory: Load,
    /// Memory mode with `--auth required`, every request with an API key.
    auth: Load,
    journal: Load,
    sync: Load,
}

/// What a round measures, in the order bench/run measures it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// GET /health: the HTTP ceiling.
    Health,
    Memory,
    /// Memory mode behind `--auth required`.
    Auth,
    Journal,
    Sync,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Health,
        Mode::Memory,
        Mode::Auth,
        Mode::Journal,
        Mode::Sync,
    ];
    const INCREMENTS: [Mode; 4] = [Mode::Memory, Mode::Auth, Mode::Journal, Mode::Sync];

    /// As bench/run names the results: `load-<name>-<round>.json`.
    fn name(self) -> &'static str {
        match self {
            Mode::Health => "health",
            Mode::Memory => "memory",
            Mode::Auth => "auth",
            Mode::Journal => "journal",
            Mode::Sync => "sync",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Health => "health (ceiling)",
            Mode::Memory => "buffered + memory",
            Mode::Auth => "buffered + memory, auth required",
            Mode::Journal => "buffered + journal",
            Mode::Sync => "sync",
        }
    }
}

impl Round {
    /// Round `number`, counted from 1 as in the file names.
    fn read(dir: &Path, number: usize) -> anyhow::Result<Round> {
        let load = |mode: Mode| read_json(dir, &format!("load-{}-{number}.json", mode.name()));
        Ok(Round {
            health: load(Mode::Health)?,
            memory: load(Mode::Memory)?,
            auth: load(Mode::Auth)?,
            journal: load(Mode::Journal)?,
            sync: load(Mode::Sync)?,
        })
    }

    fn load(&self, mode: Mode) -> &Load {
        match mode {
            Mode::Health => &self.health,
            Mode::Memory => &self.memory,
            Mode::Auth => &self.auth,
            Mode::Journal => &self.journal,
            Mode::Sync => &self.sync,
        }
    }

    /// Requests/s of `mode` as a fraction of the ceiling of this same round.
    fn ratio(&self, mode: Mode) -> f64 {
        self.load(mode).requests_per_sec / self.health.requests_per_sec
    }
}

/// The index of the median of `values`, which must not be empty. With an even number of
/// values, the lower of the two middle ones: the figure reported is then always one that was
/// measured, with its own latencies and verification, rather than the mean of two rounds,
/// and of the two candidates the less flattering. Ties keep the earlier round.
fn median_index(values: &[f64]) -> usize {
    assert!(!values.is_empty(), "the median of no values");
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order[(values.len() - 1) / 2]
}

/// The smallest and the largest of `values`.
fn spread(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// One mode over every round: which round is reported, and how far the rounds spread.
#[derive(Clone, Copy, Debug)]
struct Summary {
    mode: Mode,
    /// Index in the rounds of the one reported: for an increment mode, the round with the
    /// median ratio to its own ceiling; for the ceiling, the round with the median requests/s.
    median: usize,
    rounds: usize,
    /// Min and max over the rounds.
    ratio: (f64, f64),
    requests_per_sec: (f64, f64),
    p99_ms: (f64, f64),
}

fn summarize(rounds: &[Round], mode: Mode) -> Summary {
    let over = |f: &dyn Fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    let ratios = over(&|r| r.ratio(mode));
    let rates = over(&|r| r.load(mode).requests_per_sec);
    let p99 = over(&|r| r.load(mode).latency_ms.p99);
    Summary {
        mode,
        median: median_index(if mode == Mode::Health {
            &rates
        } else {
            &ratios
        }),
        rounds: rounds.len(),
        ratio: spread(&ratios),
        requests_per_sec: spread(&rates),
        p99_ms: spread(&p99),
    }
}

/// Everything one run produced.
struct Results {
    run: RunSettings,
    machine: Machine,
    /// In the order measured; never empty.
    rounds: Vec<Round>,
    wrk_health: Wrk,
    wrk_memory: Wrk,
    flush: Flush,
    pending: PendingMemory,
    commands: String,
}

impl Results {
    fn read(dir: &Path) -> anyhow::Result<Results> {
        let run: RunSettings = read_json(dir, "run.json")?;
        if run.rounds == 0 {
            bail!("run.json says 0 rounds: there is nothing to report");
        }
        Ok(Results {
            rounds: (1..=run.rounds)
                .map(|number| Round::read(dir, number))
                .collect::<anyhow::Result<_>>()?,
            run,
            machine: read_json(dir, "machine.json")?,
            wrk_health: parse_wrk(&read_text(dir, "wrk-health.txt")?).context("wrk-health.txt")?,
            wrk_memory: parse_wrk(&read_text(dir, "wrk-memory.txt")?).context("wrk-memory.txt")?,
            flush: read_json(dir, "flush.json")?,
            pending: parse_pending_memory(&read_text(dir, "memory.txt")?).context("memory.txt")?,
            commands: read_text(dir, "commands.txt")?,
        })
    }
}

fn read_text(dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> anyhow::Result<T> {
    serde_json::from_str(&read_text(dir, name)?).with_context(|| format!("malformed {name}"))
}

/// Reads wrk's summary: `Requests/sec:`, the `Latency Distribution` block, the request count
/// and the error lines (absent when there were none).
fn parse_wrk(text: &str) -> anyhow::Result<Wrk> {
    let mut percentiles = BTreeMap::new();
    let (mut requests, mut requests_per_sec) = (None, None);
    let (mut non_2xx, mut socket_errors) = (0, 0);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rate] => requests_per_sec = Some(rate.parse::<f64>()?),
            [count, "requests", "in", ..] => requests = Some(count.parse::<u64>()?),
            [p, value] if p.ends_with('%') => {
                percentiles.insert(p.trim_end_matches('%').to_owned(), wrk_ms(value)?);
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse()?,
            ["Socket", "errors:", ..] => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                socket_errors = words[2..]
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    let percentile = |p: &str| {
        percentiles
            .get(p)
            .copied()
            .with_context(|| format!("no {p}% latency line (was wrk run with --latency?)"))
    };
    Ok(Wrk {
        requests: requests.context("no `N requests in` line")?,
        requests_per_sec: requests_per_sec.context("no `Requests/sec:` line")?,
        p50_ms: percentile("50")?,
        p99_ms: percentile("99")?,
        non_2xx,
        socket_errors,
    })
}

/// A wrk duration such as `612.00us`, `1.25ms` or `2.00s`, in milliseconds.
fn wrk_ms(value: &str) -> anyhow::Result<f64> {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in wrk latency `{value}`"))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        "h" => number * 3_600_000.0,
        other => bail!("unknown unit `{other}` in wrk latency `{value}`"),
    })
}

/// Reads `1000000 pending keys of 36 bytes: 96.4 MiB resident, 101 bytes per key`.
fn parse_pending_memory(text: &str) -> anyhow::Result<PendingMemory> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let before = |marker: &str| -> anyhow::Result<&str> {
        let at = words
            .iter()
            .position(|w| w.trim_end_matches(':') == marker)
            .filter(|&at| at > 0)
            .with_context(|| format!("no `{marker}` in `{}`", text.trim()))?;
        Ok(words[at - 1])
    };
    let after_of = words
        .iter()
        .position(|w| *w == "of")
        .and_then(|at| words.get(at + 1))
        .context("no key length")?;
    Ok(PendingMemory {
        keys: words.first().context("empty output")?.parse()?,
        key_bytes: after_of.parse()?,
        resident_mib: before("MiB")?.parse()?,
        bytes_per_key: words
            .windows(4)
            .find(|w| w[1..] == ["bytes", "per", "key"])
            .context("no `bytes per key`")?[0]
            .parse()?,
    })
}

/// One row of the throughput table and one bar of each chart panel.
struct Row {
    mode: &'static str,
    client: &'static str,
    connections: u32,
    requests: u64,
    requests_per_sec: f64,
    /// To the ceiling measured by the same client.
    ratio: f64,
    p50_ms: f64,
    p99_ms: f64,
    p99_9_ms: Option<f64>,
    failures: u64,
    verified: String,
    /// The round shown and the spread over all rounds; `None` for wrk, which runs once.
    rounds: Option<Summary>,
}

/// The median round of `mode`, read against the ceiling of that same round.
fn load_row(mode: Mode, rounds: &[Round]) -> Row {
    let summary = summarize(rounds, mode);
    let round = &rounds[summary.median];
    let (load, ceiling) = (round.load(mode), &round.health);
    let verified = match &load.verify {
        None => "n/a (no increments)".to_owned(),
        Some(v) if v.exact => format!(
            "exact ({} keys, {} increments), all in PostgreSQL {}",
            thousands(v.keys as f64),
            thousands(v.increments as f64),
            v.freshness_ms
                .map_or("later than --verify-timeout".to_owned(), |ms| {
                    format!("{ms:.0} ms after the last answer")
                }),
        ),
        Some(_) => "**MISMATCH**".to_owned(),
    };
    Row {
        mode: mode.label(),
        client: "tally load",
        connections: load.connections,
        requests: load.requests,
        requests_per_sec: load.requests_per_sec,
        ratio: load.requests_per_sec / ceiling.requests_per_sec,
        p50_ms: load.latency_ms.p50,
        p99_ms: load.latency_ms.p99,
        p99_9_ms: Some(load.latency_ms.p99_9),
        failures: load.failures(),
        verified,
        rounds: Some(summary),
    }
}

fn wrk_row(mode: &'static str, wrk: &Wrk, ceiling: &Wrk, connections: u32, verified: &str) -> Row {
    Row {
        mode,
        client: "wrk",
        connections,
        requests: wrk.requests,
        requests_per_sec: wrk.requests_per_sec,
        ratio: wrk.requests_per_sec / ceiling.requests_per_sec,
        p50_ms: wrk.p50_ms,
        p99_ms: wrk.p99_ms,
        p99_9_ms: None,
        failures: wrk.non_2xx + wrk.socket_errors,
        verified: verified.to_owned(),
        rounds: None,
    }
}

impl Results {
    fn rows(&self) -> Vec<Row> {
        let c = self.run.connections;
        let mut rows: Vec<Row> = Mode::ALL
            .iter()
            .map(|&mode| load_row(mode, &self.rounds))
            .collect();
        rows.extend([
            wrk_row(
                "health (ceiling)",
                &self.wrk_health,
                &self.wrk_health,
                c,
                "n/a (no increments)",
            ),
            wrk_row(
                "buffered + memory",
                &self.wrk_memory,
                &self.wrk_health,
                c,
                "not checked (wrk cannot)",
            ),
        ]);
        rows
    }

    fn summary(&self, mode: Mode) -> Summary {
        summarize(&self.rounds, mode)
    }

    /// The round reported for `mode`.
    fn median_round(&self, mode: Mode) -> &Round {
        &self.rounds[self.summary(mode).median]
    }

    /// Every measurement whose ratio to its ceiling is implausibly high, named for the page.
    fn implausible(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (i, round) in self.rounds.iter().enumerate() {
            for mode in Mode::INCREMENTS {
                if round.ratio(mode) > MAX_PLAUSIBLE_RATIO {
                    found.push(format!(
                        "{} (tally load, round {}) at {} of its ceiling",
                        mode.label(),
                        i + 1,
                        percent(round.ratio(mode))
                    ));
                }
            }
        }
        for r in self.rows().iter().filter(|r| r.rounds.is_none()) {
            if r.ratio > MAX_PLAUSIBLE_RATIO {
                found.push(format!(
                    "{} ({}) at {} of its ceiling",
                    r.mode,
                    r.client,
                    percent(r.ratio)
                ));
            }
        }
        found
    }

    /// Every measurement with answers other than 2xx or totals that do not match, named for
    /// the page; empty when every round was clean.
    fn unclean_rounds(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (i, round) in self.rounds.iter().enumerate() {
            for mode in Mode::ALL {
                let load = round.load(mode);
                let mut problems = Vec::new();
                if load.failures() > 0 {
                    problems.push(format!("{} not 2xx", thousands(load.failures() as f64)));
                }
                let exact = load.verify.as_ref().is_some_and(|v| v.exact);
                if mode != Mode::Health && !exact {
                    problems.push("totals not exact in PostgreSQL".to_owned());
                }
                if !problems.is_empty() {
                    found.push(format!(
                        "{} round {}: {}",
                        mode.label(),
                        i + 1,
                        problems.join(", ")
                    ));
                }
            }
        }
        found
    }

    /// A ratio target's figure: the median round's ratio and requests/s, and how far the
    /// rounds spread.
    fn ratio_figure(&self, mode: Mode) -> String {
        let summary = self.summary(mode);
        let round = self.median_round(mode);
        let measured = format!(
            "{} of {} requests/s",
            thousands(round.load(mode).requests_per_sec),
            thousands(round.health.requests_per_sec)
        );
        if summary.rounds == 1 {
            format!("{} ({measured})", percent(round.ratio(mode)))
        } else {
            format!(
                "{} (round {} of {}: {measured}; {} over the rounds)",
                percent(round.ratio(mode)),
                summary.median + 1,
                summary.rounds,
                range(summary.ratio, percent)
            )
        }
    }
}

/// One target of the issue and how this run fared.
struct Target {
    what: String,
    figure: String,
    /// `None`: reported, not judged.
    pass: Option<bool>,
    /// What a profile should explain if it failed.
    profile_hint: &'static str,
}

impl Results {
    /// The flush target for one of the two flushes of the flush benchmark.
    fn flush_target(&self, rows: &str, timed: &Timed, profile_hint: &'static str) -> Target {
        Target {
            what: format!(
                "flush of {} distinct keys ({rows}) < {FLUSH_MAX_SECONDS} s",
                thousands(self.flush.keys as f64)
            ),
            figure: format!(
                "{:.2} s, {} rows/s",
                timed.seconds,
                thousands(timed.rows_per_sec)
            ),
            pass: Some(timed.seconds < FLUSH_MAX_SECONDS),
            profile_hint,
        }
    }

    fn targets(&self) -> Vec<Target> {
        let ratio = |mode: Mode| self.median_round(mode).ratio(mode);
        let journal = self.median_round(Mode::Journal).load(Mode::Journal);
        let journal_summary = self.summary(Mode::Journal);
        let at_connections = |load: &Load| {
            if load.connections == TARGET_CONNECTIONS {
                String::new()
            } else {
                format!(
                    " (measured at {} connections, not {TARGET_CONNECTIONS})",
                    load.connections
                )
            }
        };
        let exact = self.rounds.iter().all(|round| {
            Mode::INCREMENTS
                .iter()
                .all(|&mode| round.load(mode).verify.as_ref().is_some_and(|v| v.exact))
        });
        vec![
            Target {
                what: format!(
                    "buffered + memory >= {:.0}% of the HTTP ceiling",
                    MEMORY_MIN_RATIO * 100.0
                ),
                figure: self.ratio_figure(Mode::Memory),
                pass: Some(ratio(Mode::Memory) >= MEMORY_MIN_RATIO),
                profile_hint: "where a memory-mode POST /increment spends the time a GET /health does not",
            },
            Target {
                what: format!(
                    "buffered + journal >= {:.0}% of the HTTP ceiling",
                    JOURNAL_MIN_RATIO * 100.0
                ),
                figure: self.ratio_figure(Mode::Journal),
                pass: Some(ratio(Mode::Journal) >= JOURNAL_MIN_RATIO),
                profile_hint: "where a journal-mode POST /increment spends its time: request path, journal writer, fdatasync",
            },
            Target {
                what: format!(
                    "buffered + journal p99 < {JOURNAL_MAX_P99_MS} ms at {TARGET_CONNECTIONS} connections"
                ),
                figure: if journal_summary.rounds == 1 {
                    format!(
                        "{} ms{}",
                        ms(journal.latency_ms.p99),
                        at_connections(journal)
                    )
                } else {
                    format!(
                        "{} ms (round {}, the journal median; {} ms over the rounds){}",
                        ms(journal.latency_ms.p99),
                        journal_summary.median + 1,
                        range(journal_summary.p99_ms, ms),
                        at_connections(journal)
                    )
                },
                pass: Some(
                    journal.latency_ms.p99 < JOURNAL_MAX_P99_MS
                        && journal.connections == TARGET_CONNECTIONS,
                ),
                profile_hint: "what the slowest 1% of journal-mode requests wait for",
            },
            self.flush_target(
                "new rows",
                &self.flush.insert,
                "where the first flush of 1 million keys spends its time (client side and in PostgreSQL)",
            ),
            self.flush_target(
                "existing rows",
                &self.flush.update,
                "where the update-path flush of 1 million keys spends its time (client side and in PostgreSQL)",
            ),
            Target {
                what: format!(
                    "resident memory per pending key < {MAX_BYTES_PER_KEY:.0} bytes at {} keys",
                    thousands(self.pending.keys as f64)
                ),
                figure: format!(
                    "{:.0} bytes ({}-byte keys)",
                    self.pending.bytes_per_key, self.pending.key_bytes
                ),
                pass: Some(self.pending.bytes_per_key < MAX_BYTES_PER_KEY),
                profile_hint: "what a pending key's bytes are made of",
            },
            Target {
                what: "sync mode: how many times slower".to_owned(),
                // Ratios of ratios: each mode's median round against its own ceiling, so that
                // the ceilings' drift between rounds cancels out.
                figure: format!(
                    "{} slower than buffered + journal, {} slower than buffered + memory{}",
                    times(ratio(Mode::Journal) / ratio(Mode::Sync)),
                    times(ratio(Mode::Memory) / ratio(Mode::Sync)),
                    if self.rounds.len() == 1 {
                        ""
                    } else {
                        " (median rounds, each as a ratio to its own round's ceiling)"
                    }
                ),
                pass: None,
                profile_hint: "",
            },
            Target {
                what: "every increment run verified exact in PostgreSQL".to_owned(),
                figure: match (exact, self.rounds.len()) {
                    (true, 1) => "memory, auth, journal and sync: exact".to_owned(),
                    (true, n) => format!("memory, auth, journal and sync, all {n} rounds: exact"),
                    (false, _) => {
                        "at least one run's totals differ from what was acknowledged".to_owned()
                    }
                },
                pass: Some(exact),
                profile_hint: "",
            },
        ]
    }
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.1}")
    }
}

fn times(factor: f64) -> String {
    format!("{factor:.1}x")
}

/// `3 rounds`, `1 round`.
fn rounds_text(rounds: usize) -> String {
    match rounds {
        1 => "1 round".to_owned(),
        n => format!("{n} rounds"),
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or(String::new(), |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// A (min, max) pair as `min–max`, each formatted by `format`.
fn range((lo, hi): (f64, f64), format: fn(f64) -> String) -> String {
    format!("{}–{}", format(lo), format(hi))
}

fn markdown(results: &Results, svg_link: &str, analysis: Option<&str>) -> anyhow::Result<String> {
    let run = &results.run;
    let m = &results.machine;
    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "# Benchmarks")?;
    writeln!(w)?;
    writeln!(
        w,
        "Tally measured on one machine, in one run of `bench/run` (started {}, commit `{}`), with \
         the load generator on the same machine as the server: {}, each measuring the HTTP \
         ceiling and then the modes back to back. Each throughput is also given as a \
         ratio to the HTTP ceiling the same client measured in the same round, and each mode is \
         reported by its median round (see [Rounds](#rounds)).",
        run.started,
        run.commit,
        rounds_text(results.rounds.len())
    )?;
    if run.duration_secs < MIN_TRUSTED_SECONDS || results.rounds.len() < MIN_TRUSTED_ROUNDS {
        writeln!(w)?;
        writeln!(
            w,
            "> **Short run ({} per measurement, {}): the figures are noisy. Run `bench/run` with \
             the default duration and number of rounds, or more, before reading anything into \
             them.**",
            run.duration,
            rounds_text(results.rounds.len())
        )?;
    }
    let implausible = results.implausible();
    if !implausible.is_empty() {
        writeln!(w)?;
        writeln!(
            w,
            "> **Disturbed measurements: {}. A route that does work cannot outrun one that does \
             none, so something else used the CPU during them, and their ratios cannot be \
             trusted; a median round absorbs disturbed rounds only while they are fewer than \
             half. Run it again on a quiet machine.**",
            implausible.join("; ")
        )?;
    }
    writeln!(w)?;
    writeln!(w, "Re-run (rewrites this page and `{svg_link}`):")?;
    writeln!(w)?;
    writeln!(w, "```sh")?;
    writeln!(
        w,
        "bench/run                          # 3 rounds of 10 s per measurement"
    )?;
    writeln!(w, "ROUNDS=5 DURATION=20s bench/run    # steadier figures")?;
    writeln!(w, "```")?;
    writeln!(w)?;
    writeln!(
        w,
        "It needs Rust, the PostgreSQL server programs and wrk (installed with apt-get when \
         missing). Each mode gets a fresh data directory and its own managed PostgreSQL; \
         `DATABASE_URL` and `TALLY_*` variables are ignored so that settings cannot leak in."
    )?;

    writeln!(w)?;
    writeln!(w, "## Machine")?;
    writeln!(w)?;
    writeln!(w, "| | |")?;
    writeln!(w, "| --- | --- |")?;
    for (name, value) in [
        ("CPU", m.cpu.as_str()),
        ("cores (nproc)", &m.cores.to_string()),
        ("memory", &m.memory),
        ("OS", &m.os),
        ("kernel", &m.kernel),
        ("load average before the run", &m.load_average),
        ("PostgreSQL", &results.flush.server_version),
        ("Rust", &m.rustc),
        ("wrk", &m.wrk),
        ("date", &m.date),
    ] {
        writeln!(w, "| {name} | {} |", value.replace('|', "\\|"))?;
    }

    writeln!(w)?;
    writeln!(w, "## Throughput and latency")?;
    writeln!(w)?;
    writeln!(
        w,
        "{}; in each, {} per measurement after a {} warm-up, {} connections, `POST /increment` \
         with keys drawn uniformly from {}. The ceiling is `GET /health` on a memory-mode \
         server: the same HTTP stack doing no work. Each `tally load` row is its mode's median \
         round (column \"round\"), read against the ceiling of that same round, with the \
         min–max of that ratio over all the rounds; the ceiling's row is the round with the \
         median ceiling. wrk runs once, after the rounds.",
        capitalized(&rounds_text(results.rounds.len())),
        run.duration,
        run.warmup,
        run.connections,
        thousands(f64::from(run.keys))
    )?;
    writeln!(w)?;
    writeln!(w, "![requests/s and p99 latency per mode]({svg_link})")?;
    writeln!(w)?;
    writeln!(
        w,
        "| mode | client | round | connections | requests | requests/s | of the ceiling | min–max over the rounds | p50 ms | p99 ms | p99.9 ms | not 2xx | totals in PostgreSQL |"
    )?;
    writeln!(
        w,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )?;
    for r in results.rows() {
        let (round, ratio_spread) = match &r.rounds {
            Some(s) if s.mode == Mode::Health => {
                (format!("{} of {}", s.median + 1, s.rounds), "—".to_owned())
            }
            Some(s) => (
                format!("{} of {}", s.median + 1, s.rounds),
                range(s.ratio, percent),
            ),
            None => ("after the rounds".to_owned(), "one run".to_owned()),
        };
        writeln!(
            w,
            "| {} | {} | {round} | {} | {} | {} | {} | {ratio_spread} | {} | {} | {} | {} | {} |",
            r.mode,
            r.client,
            r.connections,
            thousands(r.requests as f64),
            thousands(r.requests_per_sec),
            percent(r.ratio),
            ms(r.p50_ms),
            ms(r.p99_ms),
            r.p99_9_ms.map_or("n/a".to_owned(), ms),
            thousands(r.failures as f64),
            r.verified
        )?;
    }
    writeln!(w)?;
    let ceiling = results.summary(Mode::Health);
    let median_ceiling = results.rounds[ceiling.median].health.requests_per_sec;
    let (lo, hi) = ceiling.requests_per_sec;
    writeln!(
        w,
        "The ceiling ranged from {} to {} requests/s over the {}: a spread of {} of its median. \
         \"not 2xx\" counts answers other than 2xx plus connection errors and timeouts. wrk's \
         latency distribution stops at p99; it cannot check totals, `tally load --verify` does: \
         after the load it waits until PostgreSQL holds every acknowledged increment and compares \
         every key's total.",
        thousands(lo),
        thousands(hi),
        rounds_text(results.rounds.len()),
        percent((hi - lo) / median_ceiling)
    )?;

    writeln!(w)?;
    writeln!(w, "## Rounds")?;
    writeln!(w)?;
    writeln!(
        w,
        "Every round as measured, in order: requests/s, its ratio to the ceiling of the same \
         round, and p99 latency. The round reported for each mode is in bold."
    )?;
    writeln!(w)?;
    let numbers: Vec<usize> = (1..=results.rounds.len()).collect();
    writeln!(
        w,
        "| mode |{}",
        numbers
            .iter()
            .map(|n| format!(" round {n} |"))
            .collect::<String>()
    )?;
    writeln!(w, "| --- |{}", " ---: |".repeat(numbers.len()))?;
    for mode in Mode::ALL {
        let median = results.summary(mode).median;
        let cells: String = results
            .rounds
            .iter()
            .enumerate()
            .map(|(i, round)| {
                let load = round.load(mode);
                let cell = if mode == Mode::Health {
                    format!(
                        "{}/s, p99 {} ms",
                        thousands(load.requests_per_sec),
                        ms(load.latency_ms.p99)
                    )
                } else {
                    format!(
                        "{}/s ({}), p99 {} ms",
                        thousands(load.requests_per_sec),
                        percent(round.ratio(mode)),
                        ms(load.latency_ms.p99)
                    )
                };
                if i == median {
                    format!(" **{cell}** |")
                } else {
                    format!(" {cell} |")
                }
            })
            .collect();
        writeln!(w, "| {} |{cells}", mode.label())?;
    }
    writeln!(w)?;
    let unclean = results.unclean_rounds();
    if unclean.is_empty() {
        writeln!(
            w,
            "In every round, every answer was 2xx and every increment mode's totals were exact in \
             PostgreSQL."
        )?;
    } else {
        writeln!(w, "**Not every round was clean: {}.**", unclean.join("; "))?;
    }

    let f = &results.flush;
    writeln!(w)?;
    writeln!(w, "## Flush")?;
    writeln!(w)?;
    writeln!(
        w,
        "One batch of {} distinct {}-byte keys, delta 1, sorted, written by \
         `Storage::apply_batch` as the flusher writes it ({} PostgreSQL, default settings); \
         then the same keys again as the next batch, so that every row takes the update path.",
        thousands(f.keys as f64),
        f.key_bytes,
        f.database
    )?;
    writeln!(w)?;
    writeln!(w, "| flush | keys | seconds | rows/s |")?;
    writeln!(w, "| --- | ---: | ---: | ---: |")?;
    for (what, t) in [
        ("new keys (insert)", &f.insert),
        ("existing keys (update)", &f.update),
    ] {
        writeln!(
            w,
            "| {what} | {} | {:.2} | {} |",
            thousands(f.keys as f64),
            t.seconds,
            thousands(t.rows_per_sec)
        )?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "Sorting the batch by key, which the flusher does before writing it, took {:.2} s more \
         (not in the figures above).",
        f.sort_seconds
    )?;

    let p = &results.pending;
    writeln!(w)?;
    writeln!(w, "## Memory")?;
    writeln!(w)?;
    writeln!(
        w,
        "Growth of the resident set while {} distinct {}-byte keys are added to the pending map \
         (`crates/service/examples/pending_memory.rs`).",
        thousands(p.keys as f64),
        p.key_bytes
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| pending keys | key bytes | resident MiB | bytes per key |"
    )?;
    writeln!(w, "| ---: | ---: | ---: | ---: |")?;
    writeln!(
        w,
        "| {} | {} | {:.1} | {:.0} |",
        thousands(p.keys as f64),
        p.key_bytes,
        p.resident_mib,
        p.bytes_per_key
    )?;

    let targets = results.targets();
    writeln!(w)?;
    writeln!(w, "## Targets")?;
    writeln!(w)?;
    writeln!(w, "| target | this run (median rounds) | result |")?;
    writeln!(w, "| --- | --- | --- |")?;
    for t in &targets {
        let verdict = match t.pass {
            Some(true) => "PASS",
            Some(false) => "**FAIL**",
            None => "reported",
        };
        writeln!(w, "| {} | {} | {verdict} |", t.what, t.figure)?;
    }

    writeln!(w)?;
    writeln!(w, "## What the figures mean")?;
    writeln!(w)?;
    writeln!(
        w,
        "The load generator runs on the same {} cores as the server (and as PostgreSQL), so every \
         request costs client time as well as server time, and the ceiling is the ceiling of this \
         setup, not of the server alone: a ratio says how much of what this machine can do over \
         HTTP the counting path keeps, which is why the targets are ratios. wrk is a second, independent client: its ratio should tell the same \
         story as `tally load`'s; its absolute figures differ because each client costs a \
         different amount of CPU per request. Memory mode acknowledges from memory, journal mode \
         after the increment's journal record is on disk (one `fdatasync` per group of \
         requests), and sync mode after PostgreSQL committed the increment. Short runs, and \
         runs on a machine doing anything else, move these figures by several percent.",
        m.cores
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "Why rounds and medians: on a shared machine the same measurement moves by 10-15% from \
         one run of a few seconds to the next, as other programs take the cores from the \
         server, the client and PostgreSQL in turn, so a mode measured once, minutes apart from \
         its ceiling, gives a ratio that says more about that noise than about Tally. \
         `bench/run` therefore measures in rounds: each round measures the ceiling and then the \
         modes back to back, and each mode is read against the ceiling of its own round, \
         seconds away rather than minutes, so that slow drifts of the machine cancel out. Each \
         mode is then reported by the round whose ratio is the median, and the targets are \
         judged on it: a disturbed measurement, of the mode or of its ceiling, pushes its \
         round's ratio towards one end, away from the median, as long as fewer than half of the \
         rounds are disturbed. The median is a round that was measured, not an average, so its \
         requests/s, latencies and verification belong together; with an even number of rounds \
         it is the lower of the two middle ones. The min–max of each ratio, the ceiling's \
         spread and the table of every round show how noisy the run was: a target that passes \
         on the median while some rounds miss it is close to its limit on this machine."
    )?;

    let failed: Vec<&Target> = targets
        .iter()
        .filter(|t| t.pass == Some(false) && !t.profile_hint.is_empty())
        .collect();
    if !failed.is_empty() {
        writeln!(w)?;
        writeln!(w, "## Where the time goes")?;
        writeln!(w)?;
        match analysis {
            Some(text) => {
                writeln!(w, "This run missed:")?;
                writeln!(w)?;
                for t in failed {
                    writeln!(w, "- {}: {}.", t.what, t.figure)?;
                }
                writeln!(w)?;
                writeln!(w, "{}", text.trim_end())?;
            }
            None => {
                writeln!(
                    w,
                    "> **TODO (lead): this run missed the targets below. Fill this section in \
                     from a profile of a full-length run; until then no explanation is given \
                     here.**"
                )?;
                writeln!(w)?;
                for t in failed {
                    writeln!(w, "- {}: {}. TODO: {}.", t.what, t.figure, t.profile_hint)?;
                }
            }
        }
    }

    writeln!(w)?;
    writeln!(w, "## Commands")?;
    writeln!(w)?;
    writeln!(
        w,
        "As `bench/run` ran them, in order (`$WORK` is its temporary directory, `$PORT` the \
         port each server picked):"
    )?;
    writeln!(w)?;
    writeln!(w, "```sh")?;
    write!(w, "{}", results.commands.trim_end())?;
    writeln!(w)?;
    writeln!(w, "```")?;
    Ok(out)
}

/// Two panels, requests/s and p99 per mode, one bar per row of the table: the median round of
/// each mode, with a whisker from the lowest to the highest value over the rounds.
fn chart(results: &Results, path: &Path) -> anyhow::Result<()> {
    let rows = results.rows();
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            let mode = r
                .mode
                .trim_end_matches(" (ceiling)")
                .replace("buffered + ", "");
            match r.client {
                "wrk" => format!("wrk: {mode}"),
                _ => mode,
            }
        })
        .collect();
    let colours: Vec<RGBColor> = rows
        .iter()
        .map(|r| match r.client {
            "wrk" => RGBColor(230, 126, 34),
            _ => RGBColor(41, 98, 166),
        })
        .collect();
    // One round has nothing to spread over.
    let whiskers = |of: fn(&Summary) -> (f64, f64)| -> Vec<Option<(f64, f64)>> {
        rows.iter()
            .map(|r| r.rounds.as_ref().filter(|s| s.rounds > 1).map(of))
            .collect()
    };
    let root = SVGBackend::new(path, (1200, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(60);
    title.draw(&Text::new(
        format!(
            "Tally, {} connections, {} per mode, client on the same {} cores",
            results.run.connections, results.run.duration, results.machine.cores
        ),
        (20, 10),
        ("sans-serif", 18).into_font(),
    ))?;
    let rounds = results.rounds.len();
    title.draw(&Text::new(
        if rounds > 1 {
            format!(
                "blue: tally load, median round of {rounds}, whiskers from the lowest to the \
                 highest round; orange: wrk, one run"
            )
        } else {
            "blue: tally load, 1 round; orange: wrk, one run".to_owned()
        },
        (20, 36),
        ("sans-serif", 14).into_font(),
    ))?;
    let panels = body.split_evenly((1, 2));
    let throughput: Vec<f64> = rows.iter().map(|r| r.requests_per_sec).collect();
    let p99: Vec<f64> = rows.iter().map(|r| r.p99_ms).collect();
    bar_panel(
        &panels[0],
        "requests/s",
        &labels,
        &throughput,
        &whiskers(|s| s.requests_per_sec),
        &colours,
        thousands,
    )?;
    bar_panel(
        &panels[1],
        "p99 latency, ms",
        &labels,
        &p99,
        &whiskers(|s| s.p99_ms),
        &colours,
        ms,
    )?;
    root.present()?;
    Ok(())
}

/// Bars of `values`, each labelled with its value; where `whiskers` has a (min, max), a black
/// line between the two with a cap at each end.
fn bar_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    labels: &[String],
    values: &[f64],
    whiskers: &[Option<(f64, f64)>],
    colours: &[RGBColor],
    format: fn(f64) -> String,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    // The label of a bar goes above its whisker, if it has one.
    let label_at: Vec<f64> = values
        .iter()
        .zip(whiskers)
        .map(|(v, w)| w.map_or(*v, |(_, hi)| hi.max(*v)))
        .collect();
    let top = label_at
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        // Integer ranges are inclusive in plotters: 0..n-1 gives exactly one segment per bar.
        .build_cartesian_2d((0..labels.len() - 1).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                labels.get(*i).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .y_label_formatter(&|y| format(*y))
        .x_label_style(("sans-serif", 12))
        .y_label_style(("sans-serif", 12))
        .draw()?;
    chart.draw_series(values.iter().zip(colours).enumerate().map(|(i, (v, c))| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), *v),
            ],
            c.filled(),
        );
        bar.set_margin(0, 0, 10, 10);
        bar
    }))?;
    let whisker_style = BLACK.stroke_width(1);
    let spans: Vec<(usize, f64, f64)> = whiskers
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.map(|(lo, hi)| (i, lo, hi)))
        .collect();
    chart.draw_series(spans.iter().map(|&(i, lo, hi)| {
        PathElement::new(
            vec![
                (SegmentValue::CenterOf(i), lo),
                (SegmentValue::CenterOf(i), hi),
            ],
            whisker_style,
        )
    }))?;
    chart.draw_series(
        spans
            .iter()
            .flat_map(|&(i, lo, hi)| [(i, lo), (i, hi)])
            .map(|(i, y)| {
                EmptyElement::at((SegmentValue::CenterOf(i), y))
                    + PathElement::new(vec![(-6, 0), (6, 0)], whisker_style)
            }),
    )?;
    let label_style = ("sans-serif", 12)
        .into_font()
        .into_text_style(area)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    // A few pixels up, clear of a whisker's cap.
    chart.draw_series(
        values
            .iter()
            .zip(&label_at)
            .enumerate()
            .map(|(i, (v, at))| {
                EmptyElement::at((SegmentValue::CenterOf(i), *at))
                    + Text::new(format(*v), (0, -3), label_style.clone())
            }),
    )?;
    Ok(())
}

/// The chart's path as the report should link it: relative to the report's directory.
fn relative_link(markdown: &Path, svg: &Path) -> String {
    let base = markdown.parent().unwrap_or(Path::new(""));
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (base, svg_abs) = (absolute(base), absolute(svg));
    svg_abs
        .strip_prefix(&base)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| svg_abs.display().to_string())
}

/// Writes the report and its chart from the results of a run.
pub fn run(args: Args) -> anyhow::Result<()> {
    let results = Results::read(&args.results)?;
    chart(&results, &args.svg).with_context(|| format!("cannot draw {}", args.svg.display()))?;
    let analysis = match &args.analysis {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    let page = markdown(
        &results,
        &relative_link(&args.markdown, &args.svg),
        analysis.as_deref(),
    )?;
    std::fs::write(&args.markdown, page)
        .with_context(|| format!("cannot write {}", args.markdown.display()))?;
    println!(
        "wrote {} and {}",
        args.markdown.display(),
        args.svg.display()
    );
    Ok(())
}

// Run with `cargo test --example bench_report`: the parsers must read the tools' real output.
#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.1:32927
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms    1.63ms  20.02ms   89.76%
    Req/Sec    46.16k     8.65k   56.20k    73.33%
  Latency Distribution
     50%  465.00us
     75%    0.87ms
     90%    2.71ms
     99%    1.07s
  275740 requests in 3.01s, 21.30MB read
  Socket errors: connect 0, read 2, write 0, timeout 5
  Non-2xx or 3xx responses: 12
Requests/sec:  91698.54
Transfer/sec:      7.08MB
";

    #[test]
    fn wrk_output_gives_rate_percentiles_in_ms_and_errors() {
        let wrk = parse_wrk(WRK).unwrap();
        assert_eq!(wrk.requests, 275_740);
        assert_eq!(wrk.requests_per_sec, 91_698.54);
        assert_eq!(wrk.p50_ms, 0.465);
        assert_eq!(wrk.p99_ms, 1070.0);
        assert_eq!(wrk.non_2xx, 12);
        assert_eq!(wrk.socket_errors, 7);
    }

    #[test]
    fn wrk_output_without_latency_distribution_is_refused() {
        let without: String = WRK
            .lines()
            .filter(|l| !l.trim_start().starts_with("99%"))
            .map(|l| format!("{l}\n"))
            .collect();
        let error = parse_wrk(&without).err().unwrap().to_string();
        assert!(error.contains("99%"), "{error}");
    }

    #[test]
    fn pending_memory_line_gives_keys_and_bytes_per_key() {
        let p = parse_pending_memory(
            "1000000 pending keys of 36 bytes: 96.0 MiB resident, 101 bytes per key\n",
        )
        .unwrap();
        assert_eq!((p.keys, p.key_bytes), (1_000_000, 36));
        assert_eq!(p.resident_mib, 96.0);
        assert_eq!(p.bytes_per_key, 101.0);
    }

    /// A `tally load --json` report with the fields the report reads.
    fn load(requests_per_sec: f64, p99: f64) -> Load {
        Load {
            connections: 64,
            requests: (requests_per_sec * 10.0) as u64,
            requests_per_sec,
            latency_ms: Latency {
                p50: p99 / 4.0,
                p99,
                p99_9: p99 * 2.0,
            },
            statuses: BTreeMap::from([("202".to_owned(), (requests_per_sec * 10.0) as u64)]),
            connection_errors: 0,
            timeouts: 0,
            verify: None,
        }
    }

    /// A round from its requests/s: ceiling, memory, journal, sync.
    fn round(health: f64, memory: f64, journal: f64, sync: f64) -> Round {
        Round {
            health: load(health, 1.0),
            memory: load(memory, 2.0),
            auth: load(memory * 0.9, 2.0),
            journal: load(journal, 3.0),
            sync: load(sync, 40.0),
        }
    }

    #[test]
    fn median_of_an_odd_number_of_rounds_is_the_middle_one() {
        assert_eq!(median_index(&[0.7]), 0);
        assert_eq!(median_index(&[0.90, 0.80, 0.95]), 0);
        assert_eq!(median_index(&[0.95, 0.90, 0.80]), 1);
        assert_eq!(median_index(&[0.5, 0.9, 0.7, 0.6, 0.8]), 2);
    }

    #[test]
    fn median_of_an_even_number_of_rounds_is_the_lower_middle_one() {
        assert_eq!(median_index(&[0.9, 0.8]), 1);
        assert_eq!(median_index(&[0.8, 0.9]), 0);
        // Sorted: 0.80 (1), 0.85 (3), 0.90 (0), 0.95 (2).
        assert_eq!(median_index(&[0.90, 0.80, 0.95, 0.85]), 3);
    }

    #[test]
    fn median_of_equal_values_keeps_the_earlier_round() {
        assert_eq!(median_index(&[0.8, 0.8, 0.8]), 1);
        assert_eq!(median_index(&[0.8, 0.8]), 0);
    }

    #[test]
    fn spread_is_the_lowest_and_the_highest_value() {
        assert_eq!(spread(&[0.90, 0.80, 0.95, 0.85]), (0.80, 0.95));
        assert_eq!(spread(&[0.7]), (0.7, 0.7));
        assert_eq!(range((0.8, 0.95), percent), "80.0%–95.0%");
    }

    #[test]
    fn a_mode_is_reported_by_its_median_ratio_to_the_ceiling_of_its_own_round() {
        // Memory's ratios are 0.90, 0.96 and 0.75: the median is round 1 (index 0), although
        // by requests/s alone (90, 48, 60) it would be round 3.
        let rounds = [
            round(100.0, 90.0, 70.0, 10.0),
            round(50.0, 48.0, 30.0, 6.0),
            round(80.0, 60.0, 56.0, 8.0),
        ];
        let memory = summarize(&rounds, Mode::Memory);
        assert_eq!(memory.median, 0);
        assert_eq!(memory.rounds, 3);
        assert_eq!(memory.ratio, (0.75, 0.96));
        assert_eq!(memory.requests_per_sec, (48.0, 90.0));
        // Journal's ratios are 0.70, 0.60 and 0.70: the earlier of the two 0.70s.
        assert_eq!(summarize(&rounds, Mode::Journal).median, 0);
        // The ceiling itself: the median requests/s, 80.
        let ceiling = summarize(&rounds, Mode::Health);
        assert_eq!(ceiling.median, 2);
        assert_eq!(ceiling.requests_per_sec, (50.0, 100.0));
        assert_eq!(ceiling.ratio, (1.0, 1.0));
        // The row shows the median round against its own ceiling, with the spread.
        let row = load_row(Mode::Memory, &rounds);
        assert_eq!(row.requests_per_sec, 90.0);
        assert_eq!(row.ratio, 0.9);
        assert_eq!(row.rounds.unwrap().ratio, (0.75, 0.96));
    }

    #[test]
    fn with_two_rounds_a_mode_is_reported_by_its_lower_ratio() {
        let rounds = [
            round(100.0, 90.0, 70.0, 10.0),
            round(100.0, 85.0, 75.0, 9.0),
        ];
        assert_eq!(summarize(&rounds, Mode::Memory).median, 1);
        assert_eq!(summarize(&rounds, Mode::Journal).median, 0);
        assert_eq!(summarize(&rounds, Mode::Sync).median, 1);
    }

    #[test]
    fn a_results_directory_with_rounds_gives_a_page_and_a_chart() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "run.json",
            r#"{"duration":"10s","duration_secs":10,"rounds":2,"warmup":"2s","connections":64,
                "keys":100000,"commit":"abc1234","started":"2026-01-01T00:00:00Z"}"#,
        );
        write(
            "machine.json",
            r#"{"cpu":"test CPU","cores":2,"memory":"4.0 GiB","kernel":"Linux","os":"Debian",
                "load_average":"0.00 0.00 0.00","rustc":"rustc","wrk":"wrk","date":"today"}"#,
        );
        let verify = r#"{"exact":true,"keys":10,"increments":100,"freshness_ms":12.0}"#;
        for (number, [health, memory, journal, sync]) in
            [(1, [100.0, 90.0, 70.0, 10.0]), (2, [80.0, 76.0, 50.0, 9.0])]
        {
            for (mode, rate, verify) in [
                ("health", health, "null"),
                ("memory", memory, verify),
                ("auth", memory * 0.9, verify),
                ("journal", journal, verify),
                ("sync", sync, verify),
            ] {
                write(
                    &format!("load-{mode}-{number}.json"),
                    &format!(
                        r#"{{"connections":64,"requests":1000,"requests_per_sec":{rate},
                            "latency_ms":{{"p50":0.5,"p99":{number}.5,"p99_9":3.0}},
                            "statuses":{{"202":1000}},"connection_errors":0,"timeouts":0,
                            "verify":{verify}}}"#
                    ),
                );
            }
        }
        write("wrk-health.txt", WRK);
        write("wrk-memory.txt", WRK);
        write(
            "flush.json",
            r#"{"keys":1000000,"key_bytes":36,"database":"managed","server_version":"PostgreSQL",
                "sort_seconds":0.5,"insert":{"seconds":3.0,"rows_per_sec":333333},
                "update":{"seconds":4.0,"rows_per_sec":250000}}"#,
        );
        write(
            "memory.txt",
            "1000000 pending keys of 36 bytes: 96.0 MiB resident, 101 bytes per key\n",
        );
        write("commands.txt", "# a step\ntally serve\n");

        let results = Results::read(dir.path()).unwrap();
        let page = markdown(&results, "bench/results.svg", None).unwrap();
        // Memory: ratios 0.90 and 0.95, so round 1; journal: 0.70 and 0.625, so round 2.
        assert!(
            page.contains("| buffered + memory | tally load | 1 of 2 |"),
            "{page}"
        );
        assert!(page.contains("| buffered + journal | tally load | 2 of 2 |"));
        assert!(page.contains("| 90.0%–95.0% |"));
        assert!(page.contains("| mode | round 1 | round 2 |"));
        assert!(page.contains("**90/s (90.0%), p99 1.50 ms**"));
        assert!(page.contains("every increment mode's totals were exact"));
        assert!(page.contains("Short run (10s per measurement, 2 rounds)"));
        assert!(page.contains("| buffered + memory >= 85% of the HTTP ceiling | 90.0% (round 1 of 2: 90 of 100 requests/s; 90.0%–95.0% over the rounds) | PASS |"));
        let svg = dir.path().join("results.svg");
        chart(&results, &svg).unwrap();
        assert!(std::fs::read_to_string(&svg).unwrap().ends_with("</svg>\n"));

        // A round's file missing stops the report.
        std::fs::remove_file(dir.path().join("load-sync-2.json")).unwrap();
        let error = format!("{:#}", Results::read(dir.path()).err().unwrap());
        assert!(error.contains("load-sync-2.json"), "{error}");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }
}
