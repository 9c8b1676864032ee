//! Turns the results `bench/run` collected into `BENCHMARKS.md` and `bench/results.svg`.
//!
//! ```sh
//! cargo xtask bench-report --results DIR [--markdown BENCHMARKS.md] [--svg bench/results.svg]
//! ```
//!
//! DIR holds one file per measurement, as `bench/run` writes them: `run.json` (settings, with
//! the number of rounds), `machine.json`, and for each round (numbered from 1)
//! `load-{health,memory,auth,journal,sync}-<round>.json` (`tally load --json`),
//! `wrk-{nginx,memory,journal,sync}-<round>.txt` (wrk's own output, `--latency`),
//! `redis-{none,always}-<round>.csv` (`redis-benchmark --csv`, with the request count beside it
//! in `.requests`), `pgbench-<round>.txt` with its per-transaction logs `pgbench-<round>-log.*`;
//! then `scale-{nginx-memory,memory,nginx-journal,journal}-<connections>.txt` (wrk),
//! `flush-<keys>.json` (the `flush_bench` example), `memory-<keys>.txt` (the `pending_memory`
//! example) and `commands.txt`. A missing or malformed file stops the report: a page with a
//! hole in it would be read as a full one.
//!
//! Every throughput figure is shown as a ratio to a reference measured in the same round,
//! seconds apart, because only such a ratio carries over between machines: Tally and the
//! anchors to nginx (wrk's ceiling), `tally load`'s figures to `GET /health` (its own). Each
//! system is reported by its median round, the round whose ratio is the median, with the
//! spread over the rounds; the targets of the issue are checked here, each with its figure and
//! by how much it is met or missed, so the page says so without anyone redoing the arithmetic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anchors::{Figures, System};
use anyhow::{Context, bail};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;
use serde::de::DeserializeOwned;

mod anchors;

/// Targets from the issue, for this 2-core machine with the client on it: memory mode against
/// nginx, journal mode against Redis with `appendfsync always`, sync mode against pgbench's
/// per-request upsert, each in the same round.
const MEMORY_MIN_OF_NGINX: f64 = 0.85;
const JOURNAL_MIN_OF_REDIS_ALWAYS: f64 = 1.2;
const SYNC_MIN_OF_PGBENCH: f64 = 3.0;
const JOURNAL_MAX_P99_MS: f64 = 5.0;
const TARGET_CONNECTIONS: u32 = 64;
/// The journal's p99 is also judged at few connections, where groups are small.
const LOW_CONNECTIONS: u32 = 8;
const FLUSH_MAX_SECONDS: f64 = 5.0;
const MAX_BYTES_PER_KEY: f64 = 100.0;
/// The key length of the memory target: a UUID's.
const TARGET_KEY_BYTES: u64 = 36;
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
    /// The connections of the sweep, each measured once.
    scale_connections: Vec<u32>,
    /// The flush and the pending map are judged at this many keys.
    flush_keys: usize,
    /// The key counts of the flush and memory table.
    scale_keys: Vec<usize>,
    /// Whether the flush of 10,000,000 keys ran (BENCH_FLUSH_10M=1).
    flush_10m: bool,
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
    nginx: String,
    redis: String,
    pgbench: String,
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

/// `flush-<keys>.json`, from the flush_bench example.
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
    /// Once the allocator has returned the memory it held free (the smaller tables the map
    /// outgrew); absent from older reports.
    held_bytes_per_key: Option<f64>,
}

/// The measurements of one round, back to back: `tally load` against each mode on a fresh
/// server, and the anchors beside Tally.
struct Round {
    health: Load,
    memory: Load,
    /// Memory mode with `--auth required`, every request with an API key.
    auth: Load,
    journal: Load,
    sync: Load,
    /// Indexed as [`System::ALL`].
    systems: Vec<Figures>,
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
            systems: System::ALL
                .iter()
                .map(|system| system.read(dir, number))
                .collect::<anyhow::Result<_>>()?,
        })
    }

    fn system(&self, system: System) -> &Figures {
        &self.systems[System::ALL
            .iter()
            .position(|&s| s == system)
            .expect("every system is in ALL")]
    }

    /// Requests/s of `system` as a fraction of `reference`'s in this same round.
    fn system_ratio(&self, system: System, reference: System) -> f64 {
        self.system(system).requests_per_sec / self.system(reference).requests_per_sec
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
}

fn summarize(rounds: &[Round], mode: Mode) -> Summary {
    let over = |f: &dyn Fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    let ratios = over(&|r| r.ratio(mode));
    let rates = over(&|r| r.load(mode).requests_per_sec);
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
    }
}

/// Everything one run produced.
struct Results {
    run: RunSettings,
    machine: Machine,
    /// In the order measured; never empty.
    rounds: Vec<Round>,
    /// The connections sweep, by connections.
    scale: Vec<ScalePoint>,
    /// By keys, ascending.
    flushes: Vec<Flush>,
    /// By keys, ascending.
    pending: Vec<PendingMemory>,
    commands: String,
}

/// One number of connections of the sweep: nginx, then memory mode; nginx again, then journal
/// mode; all with wrk.
struct ScalePoint {
    connections: u32,
    nginx_memory: Figures,
    memory: Figures,
    nginx_journal: Figures,
    journal: Figures,
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
            scale: run
                .scale_connections
                .iter()
                .map(|&connections| {
                    let wrk = |name: &str| -> anyhow::Result<Figures> {
                        let file = format!("scale-{name}-{connections}.txt");
                        anchors::parse_wrk(&read_text(dir, &file)?).context(file)
                    };
                    Ok(ScalePoint {
                        connections,
                        nginx_memory: wrk("nginx-memory")?,
                        memory: wrk("memory")?,
                        nginx_journal: wrk("nginx-journal")?,
                        journal: wrk("journal")?,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            // The flushes that were not run (10,000,000 keys unless asked for) have no file.
            flushes: run
                .scale_keys
                .iter()
                .filter(|&&keys| keys < 10_000_000 || run.flush_10m)
                .map(|keys| read_json(dir, &format!("flush-{keys}.json")))
                .collect::<anyhow::Result<_>>()?,
            pending: run
                .scale_keys
                .iter()
                .map(|keys| {
                    let file = format!("memory-{keys}.txt");
                    parse_pending_memory(&read_text(dir, &file)?).context(file)
                })
                .collect::<anyhow::Result<_>>()?,
            run,
            machine: read_json(dir, "machine.json")?,
            commands: read_text(dir, "commands.txt")?,
        })
    }

    /// The flush the targets are judged on.
    fn flush(&self) -> anyhow::Result<&Flush> {
        self.flushes
            .iter()
            .find(|f| f.keys == self.run.flush_keys)
            .with_context(|| format!("no flush of {} keys", self.run.flush_keys))
    }

    /// The pending map the memory target is judged on.
    fn pending_at_target(&self) -> anyhow::Result<&PendingMemory> {
        self.pending
            .iter()
            .find(|p| p.keys as usize == self.run.flush_keys)
            .with_context(|| format!("no pending memory at {} keys", self.run.flush_keys))
    }
}

pub(crate) fn read_text(dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> anyhow::Result<T> {
    serde_json::from_str(&read_text(dir, name)?).with_context(|| format!("malformed {name}"))
}

/// Reads `1000000 pending keys of 36 bytes: 96.4 MiB resident, 101 bytes per key; once freed
/// memory is returned: 71.0 MiB, 74 bytes per key` (the part after `;` is optional).
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
    let mut per_key = words
        .windows(4)
        .filter(|w| w[1..] == ["bytes", "per", "key"] || w[1..] == ["bytes", "per", "key;"])
        .filter_map(|w| w[0].parse().ok());
    Ok(PendingMemory {
        keys: words.first().context("empty output")?.parse()?,
        key_bytes: after_of.parse()?,
        resident_mib: before("MiB")?.parse()?,
        bytes_per_key: per_key.next().context("no `bytes per key`")?,
        held_bytes_per_key: per_key.next(),
    })
}

/// One row of the `tally load` table: a mode's median round against its own ceiling.
struct Row {
    mode: &'static str,
    connections: u32,
    requests: u64,
    requests_per_sec: f64,
    /// To the ceiling of the same round.
    ratio: f64,
    p50_ms: f64,
    p99_ms: f64,
    p99_9_ms: f64,
    failures: u64,
    verified: String,
    /// The round shown and the spread over all rounds.
    rounds: Summary,
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
        connections: load.connections,
        requests: load.requests,
        requests_per_sec: load.requests_per_sec,
        ratio: load.requests_per_sec / ceiling.requests_per_sec,
        p50_ms: load.latency_ms.p50,
        p99_ms: load.latency_ms.p99,
        p99_9_ms: load.latency_ms.p99_9,
        failures: load.failures(),
        verified,
        rounds: summary,
    }
}

/// A figure over the rounds: the round whose value is the median, that value, and the lowest
/// and highest.
#[derive(Clone, Copy, Debug)]
struct OverRounds {
    /// Index of the median round.
    median: usize,
    value: f64,
    spread: (f64, f64),
}

fn over_rounds(values: &[f64]) -> OverRounds {
    let median = median_index(values);
    OverRounds {
        median,
        value: values[median],
        spread: spread(values),
    }
}

/// One system of the main table over every round: nginx by its requests/s, every other
/// system by its ratio to the nginx of its own round.
struct SystemRow {
    system: System,
    /// The reported round's figures.
    figures: Figures,
    ratio: OverRounds,
    requests_per_sec: (f64, f64),
    p99_ms: (f64, f64),
    rounds: usize,
}

fn system_row(system: System, rounds: &[Round]) -> SystemRow {
    let values = |f: &dyn Fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    let rates = values(&|r| r.system(system).requests_per_sec);
    let mut ratio = over_rounds(&values(&|r| r.system_ratio(system, System::Nginx)));
    if system == System::Nginx {
        ratio.median = median_index(&rates);
    }
    SystemRow {
        system,
        figures: *rounds[ratio.median].system(system),
        ratio,
        requests_per_sec: spread(&rates),
        p99_ms: spread(&values(&|r| r.system(system).p99_ms)),
        rounds: rounds.len(),
    }
}

impl Results {
    fn rows(&self) -> Vec<Row> {
        Mode::ALL
            .iter()
            .map(|&mode| load_row(mode, &self.rounds))
            .collect()
    }

    fn system_rows(&self) -> Vec<SystemRow> {
        System::ALL
            .iter()
            .map(|&system| system_row(system, &self.rounds))
            .collect()
    }

    /// `system` against `reference` over the rounds, each ratio within one round.
    fn paired_ratio(&self, system: System, reference: System) -> OverRounds {
        let ratios: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| r.system_ratio(system, reference))
            .collect();
        over_rounds(&ratios)
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
            // nginx's `return 200` is the ceiling of what wrk measures.
            for system in [System::Memory, System::Journal, System::Sync] {
                let ratio = round.system_ratio(system, System::Nginx);
                if ratio > MAX_PLAUSIBLE_RATIO {
                    found.push(format!(
                        "{} (wrk, round {}) at {} of nginx",
                        system.label(),
                        i + 1,
                        percent(ratio)
                    ));
                }
            }
        }
        found
    }

    /// Every measurement with failed requests or totals that do not match, named for the page;
    /// empty when every round was clean.
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
                        "{} (tally load) round {}: {}",
                        mode.label(),
                        i + 1,
                        problems.join(", ")
                    ));
                }
            }
            for system in System::ALL {
                let failures = round.system(system).failures;
                if failures > 0 {
                    found.push(format!(
                        "{} ({}) round {}: {} failed",
                        system.label(),
                        system.client(),
                        i + 1,
                        thousands(failures as f64)
                    ));
                }
            }
        }
        found
    }

    /// A ratio of two systems as a target's figure: the median over the rounds of their ratio
    /// within each round, that round's two rates, and how far the ratio spread.
    fn paired_figure(&self, system: System, reference: System) -> String {
        let ratio = self.paired_ratio(system, reference);
        let round = &self.rounds[ratio.median];
        let measured = format!(
            "{} against {} requests/s",
            thousands(round.system(system).requests_per_sec),
            thousands(round.system(reference).requests_per_sec)
        );
        if self.rounds.len() == 1 {
            format!("{} ({measured})", times(ratio.value))
        } else {
            format!(
                "{} (median round {} of {}: {measured}; {} over the rounds)",
                times(ratio.value),
                ratio.median + 1,
                self.rounds.len(),
                range(ratio.spread, times)
            )
        }
    }

    /// A ratio target's figure for `tally load`: the median round's ratio to its ceiling and
    /// requests/s, and how far the rounds spread.
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

/// Which side of its bound a target's figure must be on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bound {
    AtLeast(f64),
    AtMost(f64),
    Below(f64),
    /// A condition, measured as 1 when it holds and 0 when not.
    Holds,
}

/// A judged target: the figure measured and its bound.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Judged {
    measured: f64,
    bound: Bound,
}

impl Judged {
    fn met(&self) -> bool {
        match self.bound {
            Bound::AtLeast(b) => self.measured >= b,
            Bound::AtMost(b) => self.measured <= b,
            Bound::Below(b) => self.measured < b,
            Bound::Holds => self.measured == 1.0,
        }
    }

    /// How far from the bound, relative to it: "met, 12% above" or "**missed** by 18%".
    fn verdict(&self) -> String {
        let (bound, side) = match self.bound {
            Bound::AtLeast(b) => (b, "above"),
            Bound::AtMost(b) | Bound::Below(b) => (b, "below"),
            Bound::Holds if self.met() => return "met".to_owned(),
            Bound::Holds => return "**missed**".to_owned(),
        };
        let off = (self.measured - bound).abs() / bound;
        if self.met() {
            if off < 0.0005 {
                "met, at the bound".to_owned()
            } else {
                format!("met, {} {side}", percent(off))
            }
        } else if off < 0.0005 {
            "**missed**, at the bound".to_owned()
        } else {
            let side = if side == "above" { "below" } else { "above" };
            format!("**missed**, {} {side} the bound", percent(off))
        }
    }
}

/// One target of the issue and how this run fared.
struct Target {
    what: String,
    figure: String,
    /// `None`: reported, not judged.
    judged: Option<Judged>,
    /// What a profile should explain if it failed.
    profile_hint: &'static str,
}

impl Target {
    fn missed(&self) -> bool {
        self.judged.is_some_and(|j| !j.met())
    }
}

impl Results {
    /// The flush target for one of the two flushes of the flush benchmark.
    fn flush_target(
        &self,
        flush: &Flush,
        rows: &str,
        timed: &Timed,
        profile_hint: &'static str,
    ) -> Target {
        Target {
            what: format!(
                "flush of {} distinct keys ({rows}) < {FLUSH_MAX_SECONDS} s",
                thousands(flush.keys as f64)
            ),
            figure: format!(
                "{:.2} s, {} rows/s",
                timed.seconds,
                thousands(timed.rows_per_sec)
            ),
            judged: Some(Judged {
                measured: timed.seconds,
                bound: Bound::Below(FLUSH_MAX_SECONDS),
            }),
            profile_hint,
        }
    }

    fn targets(&self) -> anyhow::Result<Vec<Target>> {
        let flush = self.flush()?;
        let pending = self.pending_at_target()?;
        let ratio = |mode: Mode| self.median_round(mode).ratio(mode);
        let exact = self.rounds.iter().all(|round| {
            Mode::INCREMENTS
                .iter()
                .all(|&mode| round.load(mode).verify.as_ref().is_some_and(|v| v.exact))
        });
        let memory = self.paired_ratio(System::Memory, System::Nginx);
        let journal = self.paired_ratio(System::Journal, System::RedisAlways);
        let sync = self.paired_ratio(System::Sync, System::Pgbench);
        let p99: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| r.system(System::Journal).p99_ms)
            .collect();
        let p99 = over_rounds(&p99);
        let p99_low = self
            .scale
            .iter()
            .find(|s| s.connections == LOW_CONNECTIONS)
            .map(|s| s.journal.p99_ms);
        let mut targets = vec![
            Target {
                what: format!(
                    "memory mode >= {MEMORY_MIN_OF_NGINX:.2}x nginx (wrk, {TARGET_CONNECTIONS} connections)"
                ),
                figure: self.paired_figure(System::Memory, System::Nginx),
                judged: Some(Judged {
                    measured: memory.value,
                    bound: Bound::AtLeast(MEMORY_MIN_OF_NGINX),
                }),
                profile_hint: "where a memory-mode POST /increment spends the time nginx's return 200 does not",
            },
            Target {
                what: format!(
                    "journal mode >= {JOURNAL_MIN_OF_REDIS_ALWAYS:.1}x Redis with appendfsync always ({TARGET_CONNECTIONS} connections)"
                ),
                figure: self.paired_figure(System::Journal, System::RedisAlways),
                judged: Some(Judged {
                    measured: journal.value,
                    bound: Bound::AtLeast(JOURNAL_MIN_OF_REDIS_ALWAYS),
                }),
                profile_hint: "where a journal-mode POST /increment spends its time: request path, journal writer, fdatasync",
            },
            Target {
                what: format!(
                    "journal mode p99 <= {JOURNAL_MAX_P99_MS} ms at {TARGET_CONNECTIONS} connections (wrk)"
                ),
                figure: if self.rounds.len() == 1 {
                    format!("{} ms", ms(p99.value))
                } else {
                    format!(
                        "{} ms (median round {}; {} ms over the rounds)",
                        ms(p99.value),
                        p99.median + 1,
                        range(p99.spread, ms)
                    )
                },
                judged: Some(Judged {
                    measured: p99.value,
                    bound: Bound::AtMost(JOURNAL_MAX_P99_MS),
                }),
                profile_hint: "what the slowest 1% of journal-mode requests wait for",
            },
            Target {
                what: format!(
                    "journal mode p99 <= {JOURNAL_MAX_P99_MS} ms at {LOW_CONNECTIONS} connections (wrk)"
                ),
                figure: p99_low.map_or("not measured".to_owned(), |p| {
                    format!("{} ms (the connections sweep, one measurement)", ms(p))
                }),
                judged: p99_low.map(|p| Judged {
                    measured: p,
                    bound: Bound::AtMost(JOURNAL_MAX_P99_MS),
                }),
                profile_hint: "what a journal-mode request waits for when few requests share a sync",
            },
            Target {
                what: format!(
                    "sync mode >= {SYNC_MIN_OF_PGBENCH:.0}x pgbench's per-request upsert ({TARGET_CONNECTIONS} connections)"
                ),
                figure: self.paired_figure(System::Sync, System::Pgbench),
                judged: Some(Judged {
                    measured: sync.value,
                    bound: Bound::AtLeast(SYNC_MIN_OF_PGBENCH),
                }),
                profile_hint: "what sync mode spends per increment beyond one upsert and one commit",
            },
            self.flush_target(
                flush,
                "existing rows",
                &flush.update,
                "where the update-path flush of 1 million keys spends its time (client side and in PostgreSQL)",
            ),
            self.flush_target(
                flush,
                "new rows",
                &flush.insert,
                "where the first flush of 1 million keys spends its time (client side and in PostgreSQL)",
            ),
            Target {
                what: format!(
                    "resident memory per pending {TARGET_KEY_BYTES}-byte key <= {MAX_BYTES_PER_KEY:.0} bytes at {} keys",
                    thousands(pending.keys as f64)
                ),
                figure: format!(
                    "{:.0} bytes ({}-byte keys)",
                    pending.bytes_per_key, pending.key_bytes
                ),
                judged: (pending.key_bytes == TARGET_KEY_BYTES).then_some(Judged {
                    measured: pending.bytes_per_key,
                    bound: Bound::AtMost(MAX_BYTES_PER_KEY),
                }),
                profile_hint: "what a pending key's bytes are made of",
            },
            Target {
                what: "every increment run of tally load verified exact in PostgreSQL".to_owned(),
                figure: match (exact, self.rounds.len()) {
                    (true, 1) => "memory, auth, journal and sync: exact".to_owned(),
                    (true, n) => format!("memory, auth, journal and sync, all {n} rounds: exact"),
                    (false, _) => {
                        "at least one run's totals differ from what was acknowledged".to_owned()
                    }
                },
                judged: Some(Judged {
                    measured: if exact { 1.0 } else { 0.0 },
                    bound: Bound::Holds,
                }),
                profile_hint: "",
            },
        ];
        // The same comparisons in tally load's terms, reported beside the judged ones.
        targets.extend([
            Target {
                what: "memory mode, of tally load's HTTP ceiling (GET /health)".to_owned(),
                figure: self.ratio_figure(Mode::Memory),
                judged: None,
                profile_hint: "",
            },
            Target {
                what: "journal mode, of tally load's HTTP ceiling (GET /health)".to_owned(),
                figure: self.ratio_figure(Mode::Journal),
                judged: None,
                profile_hint: "",
            },
            Target {
                what: "sync mode: how many times slower (tally load)".to_owned(),
                // Ratios of ratios: each mode's median round against its own ceiling, so that
                // the ceilings' drift between rounds cancels out.
                figure: format!(
                    "{} slower than journal mode, {} slower than memory mode{}",
                    times(ratio(Mode::Journal) / ratio(Mode::Sync)),
                    times(ratio(Mode::Memory) / ratio(Mode::Sync)),
                    if self.rounds.len() == 1 {
                        ""
                    } else {
                        " (median rounds, each as a ratio to its own round's ceiling)"
                    }
                ),
                judged: None,
                profile_hint: "",
            },
        ]);
        Ok(targets)
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
    format!("{factor:.2}x")
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
    let rounds = results.rounds.len();
    let flush = results.flush()?;
    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "# Benchmarks")?;
    writeln!(w)?;
    writeln!(
        w,
        "Tally measured on one machine, in one run of `bench/run` (started {}, commit `{}`), \
         beside anchors that need no code of Tally's: nginx answering `return 200`, Redis \
         INCRBY without persistence and with `appendfsync always`, and pgbench running the \
         per-request upsert against PostgreSQL. The load generators run on the same machine as \
         the servers. {}, each measuring Tally's modes and the anchors back to back; every \
         throughput is also given as a ratio to a reference measured in the same round, and \
         every system is reported by its median round (see [Rounds](#rounds)).",
        run.started,
        run.commit,
        capitalized(&rounds_text(rounds))
    )?;
    if run.duration_secs < MIN_TRUSTED_SECONDS || rounds < MIN_TRUSTED_ROUNDS {
        writeln!(w)?;
        writeln!(
            w,
            "> **Short run ({} per measurement, {}): the figures are noisy. Run `bench/run` with \
             the default duration and number of rounds, or more, before reading anything into \
             them.**",
            run.duration,
            rounds_text(rounds)
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
        "bench/run                          # 3 rounds of 10 s per measurement (about 20 minutes)"
    )?;
    writeln!(w, "ROUNDS=5 DURATION=20s bench/run    # steadier figures")?;
    writeln!(
        w,
        "ROUNDS=1 DURATION=2s bench/run     # a quick check that everything runs; noisy figures"
    )?;
    writeln!(
        w,
        "BENCH_FLUSH_10M=1 bench/run        # also flush 10,000,000 keys (minutes, GBs of disk)"
    )?;
    writeln!(w, "```")?;
    writeln!(w)?;
    writeln!(
        w,
        "It needs Rust and the PostgreSQL server programs; wrk, nginx, redis-server, \
         redis-benchmark (redis-tools) and pgbench (postgresql-client) are installed from Debian \
         with apt-get when missing. Each Tally mode gets a fresh data directory and its own \
         managed PostgreSQL, each anchor its own configuration and data in a temporary \
         directory and a free loopback port; `DATABASE_URL` and `TALLY_*` variables are ignored \
         so that settings cannot leak in."
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
        ("PostgreSQL", &flush.server_version),
        ("Rust", &m.rustc),
        ("wrk", &m.wrk),
        ("nginx", &m.nginx),
        ("Redis", &m.redis),
        ("pgbench", &m.pgbench),
        ("date", &m.date),
    ] {
        writeln!(w, "| {name} | {} |", value.replace('|', "\\|"))?;
    }

    write_anchors(w, results, svg_link)?;
    write_tally_load(w, results)?;
    write_rounds(w, results)?;
    write_connections(w, results)?;
    write_keys(w, results)?;

    let targets = results.targets()?;
    writeln!(w)?;
    writeln!(w, "## Targets")?;
    writeln!(w)?;
    writeln!(
        w,
        "Judged on this run: the ratios are the median over the rounds of the ratio within each \
         round, with their spread; \"above\" and \"below\" say how far from the bound, as a \
         share of the bound. The last rows are reported, not judged."
    )?;
    writeln!(w)?;
    writeln!(w, "| target | this run | result |")?;
    writeln!(w, "| --- | --- | --- |")?;
    for t in &targets {
        let verdict = t.judged.map_or("reported".to_owned(), |j| j.verdict());
        writeln!(w, "| {} | {} | {verdict} |", t.what, t.figure)?;
    }

    writeln!(w)?;
    writeln!(w, "## What the figures mean")?;
    writeln!(w)?;
    writeln!(
        w,
        "The load generators run on the same {} cores as the servers (and as PostgreSQL), so \
         every request costs client time as well as server time, and a figure is what this \
         setup reaches, not what the server alone could: that is why the comparisons are \
         ratios within a round. nginx and Tally are loaded by the same client with the same \
         settings and the same script (`wrk -t2`, `bench/post_increment.lua`: a `POST \
         /increment` with a random key out of {} and its JSON body, which nginx discards), so \
         memory mode against nginx compares like with like: nginx is the ceiling of an HTTP \
         server doing no work on this machine. Redis and PostgreSQL speak their own protocols, \
         so they have their own clients (redis-benchmark, pgbench), with the same connections, \
         two client threads and the same key space; a ratio across clients also carries the \
         difference between the clients' costs per request. Memory mode acknowledges from \
         memory, journal mode after the increment's journal record is on disk (one \
         `fdatasync` per group of requests), like Redis with `appendfsync always` (an fsync \
         before replying, shared by the commands of one event-loop turn), and sync mode after \
         PostgreSQL committed the increment, like pgbench's upsert (one transaction and one \
         commit per increment, `synchronous_commit` on).",
        m.cores,
        thousands(f64::from(run.keys))
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "Why rounds and medians: on a shared machine the same measurement moves by 10-15% from \
         one run of a few seconds to the next, as other programs take the cores from the \
         server, the client and PostgreSQL in turn, so a system measured once, minutes apart \
         from its reference, gives a ratio that says more about that noise than about Tally. \
         `bench/run` therefore measures in rounds: each round measures Tally's modes and the \
         anchors back to back, each anchor right before the mode it is compared with, and each \
         is read against the reference of its own round, seconds away rather than minutes, so \
         that slow drifts of the machine cancel out. Each system is then reported by the round \
         whose ratio is the median, and the targets are judged on it: a disturbed measurement \
         pushes its round's ratio towards one end, away from the median, as long as fewer than \
         half of the rounds are disturbed. The median is a round that was measured, not an \
         average, so its requests/s and latencies belong together; with an even number of \
         rounds it is the lower of the two middle ones. The min–max of each figure and the \
         table of every round show how noisy the run was: a target that is met on the median \
         while some rounds miss it is close to its limit on this machine. The connections \
         sweep and the key counts are measured once each."
    )?;

    let failed: Vec<&Target> = targets
        .iter()
        .filter(|t| t.missed() && !t.profile_hint.is_empty())
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
         port each Tally server picked):"
    )?;
    writeln!(w)?;
    writeln!(w, "```sh")?;
    write!(w, "{}", results.commands.trim_end())?;
    writeln!(w)?;
    writeln!(w, "```")?;
    Ok(out)
}

/// The main table: Tally beside the anchors, each by its median round, with the chart.
fn write_anchors(w: &mut String, results: &Results, svg_link: &str) -> anyhow::Result<()> {
    let run = &results.run;
    let rounds = results.rounds.len();
    writeln!(w)?;
    writeln!(w, "## Tally beside nginx, Redis and PostgreSQL")?;
    writeln!(w)?;
    writeln!(
        w,
        "{}; in each, {} per measurement, {} connections, keys drawn uniformly from {}. Each \
         row is the system's median round by its ratio to the nginx of the same round (nginx's \
         own row: the round with its median requests/s); \"min–max\" spans all the rounds.",
        capitalized(&rounds_text(rounds)),
        run.duration,
        run.connections,
        thousands(f64::from(run.keys))
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "![Tally beside the anchors: requests/s and p99]({svg_link})"
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| system | client | round | requests/s | min–max requests/s | of nginx | min–max of nginx | p50 ms | p99 ms | min–max p99 ms | failed |"
    )?;
    writeln!(
        w,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for r in results.system_rows() {
        let name = if r.system.is_tally() {
            format!("**{}**", r.system.label())
        } else {
            r.system.label().to_owned()
        };
        let ratio_spread = if r.system == System::Nginx {
            "—".to_owned()
        } else {
            range(r.ratio.spread, times)
        };
        writeln!(
            w,
            "| {name} | {} | {} of {} | {} | {} | {} | {ratio_spread} | {} | {} | {} | {} |",
            r.system.client(),
            r.ratio.median + 1,
            r.rounds,
            thousands(r.figures.requests_per_sec),
            range(r.requests_per_sec, thousands),
            times(r.figures.requests_per_sec / nginx_of(results, r.ratio.median)),
            ms(r.figures.p50_ms),
            ms(r.figures.p99_ms),
            range(r.p99_ms, ms),
            thousands(r.figures.failures as f64),
        )?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "The commands are listed under [Commands](#commands). nginx: `worker_processes auto` \
         (one worker per core, as Tally's runtime has one worker thread per core), no access \
         log, `keepalive_requests 1000000` (its default of 1,000 would close a client's \
         connection where Tally keeps it open), `location / {{ return 200; }}`. Redis: a fresh \
         `redis-server` per measurement, `--save ''` and either `--appendonly no` or \
         `--appendonly yes --appendfsync always`; `redis-benchmark --threads 2 -c {c} -r {k} \
         INCRBY key:__rand_int__ 1`, no pipelining, sized to last about {d} from an unmeasured \
         run of 50,000 requests. pgbench: `-c {c} -j 2 -M prepared`, one `INSERT ... ON \
         CONFLICT (key) DO UPDATE SET value = counters.value + EXCLUDED.value` per \
         transaction on Tally's `counters` table, against the managed PostgreSQL of the \
         sync-mode server of the same round (Tally's settings, `synchronous_commit` on), after \
         a 2 s warm-up; its percentiles come from its per-transaction log. Tally: the memory-, \
         journal- and sync-mode servers that `tally load` measured just before (warm). \
         \"failed\": answers other than 2xx and socket errors (wrk), failed transactions \
         (pgbench); redis-benchmark counts none.",
        c = run.connections,
        k = run.keys,
        d = run.duration
    )?;
    Ok(())
}

/// nginx's requests/s in round `index`.
fn nginx_of(results: &Results, index: usize) -> f64 {
    results.rounds[index].system(System::Nginx).requests_per_sec
}

/// `tally load` against each mode, verified, and against its own HTTP ceiling.
fn write_tally_load(w: &mut String, results: &Results) -> anyhow::Result<()> {
    let run = &results.run;
    writeln!(w)?;
    writeln!(w, "## Throughput and latency with tally load")?;
    writeln!(w)?;
    writeln!(
        w,
        "Tally's own load generator, in the same rounds: {} per measurement after a {} warm-up, \
         {} connections, `POST /increment` with keys drawn uniformly from {}, and every \
         increment run verified (`--verify`). The ceiling is `GET /health` on a memory-mode \
         server: the same HTTP stack doing no work. Each row is its mode's median round \
         (column \"round\"), read against the ceiling of that same round, with the min–max of \
         that ratio over all the rounds; the ceiling's row is the round with the median \
         ceiling.",
        run.duration,
        run.warmup,
        run.connections,
        thousands(f64::from(run.keys))
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| mode | round | connections | requests | requests/s | of the ceiling | min–max over the rounds | p50 ms | p99 ms | p99.9 ms | not 2xx | totals in PostgreSQL |"
    )?;
    writeln!(
        w,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )?;
    for r in results.rows() {
        let s = &r.rounds;
        let ratio_spread = if s.mode == Mode::Health {
            "—".to_owned()
        } else {
            range(s.ratio, percent)
        };
        writeln!(
            w,
            "| {} | {} of {} | {} | {} | {} | {} | {ratio_spread} | {} | {} | {} | {} | {} |",
            r.mode,
            s.median + 1,
            s.rounds,
            r.connections,
            thousands(r.requests as f64),
            thousands(r.requests_per_sec),
            percent(r.ratio),
            ms(r.p50_ms),
            ms(r.p99_ms),
            ms(r.p99_9_ms),
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
         \"not 2xx\" counts answers other than 2xx plus connection errors and timeouts. \
         `tally load --verify` waits after the load until PostgreSQL holds every acknowledged \
         increment and compares every key's total; wrk, redis-benchmark and pgbench cannot.",
        thousands(lo),
        thousands(hi),
        rounds_text(results.rounds.len()),
        percent((hi - lo) / median_ceiling)
    )?;
    Ok(())
}

/// Every round as measured, the reported one in bold.
fn write_rounds(w: &mut String, results: &Results) -> anyhow::Result<()> {
    writeln!(w)?;
    writeln!(w, "## Rounds")?;
    writeln!(w)?;
    writeln!(
        w,
        "Every round as measured, in order: requests/s, its ratio to the reference of the same \
         round (nginx for the systems beside it, `GET /health` for `tally load`), and p99 \
         latency. The round reported for each is in bold."
    )?;
    writeln!(w)?;
    let bold = |cell: String, reported: bool| {
        if reported {
            format!(" **{cell}** |")
        } else {
            format!(" {cell} |")
        }
    };
    writeln!(
        w,
        "| system | client |{}",
        (1..=results.rounds.len())
            .map(|n| format!(" round {n} |"))
            .collect::<String>()
    )?;
    writeln!(w, "| --- | --- |{}", " ---: |".repeat(results.rounds.len()))?;
    for row in results.system_rows() {
        let system = row.system;
        let cells: String = results
            .rounds
            .iter()
            .enumerate()
            .map(|(i, round)| {
                let f = round.system(system);
                let cell = if system == System::Nginx {
                    format!(
                        "{}/s, p99 {} ms",
                        thousands(f.requests_per_sec),
                        ms(f.p99_ms)
                    )
                } else {
                    format!(
                        "{}/s ({}), p99 {} ms",
                        thousands(f.requests_per_sec),
                        times(round.system_ratio(system, System::Nginx)),
                        ms(f.p99_ms)
                    )
                };
                bold(cell, i == row.ratio.median)
            })
            .collect();
        writeln!(w, "| {} | {} |{cells}", system.label(), system.client())?;
    }
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
                bold(cell, i == median)
            })
            .collect();
        writeln!(w, "| {} | tally load |{cells}", mode.label())?;
    }
    writeln!(w)?;
    let unclean = results.unclean_rounds();
    if unclean.is_empty() {
        writeln!(
            w,
            "In every round, every request succeeded and every increment mode's totals were \
             exact in PostgreSQL."
        )?;
    } else {
        writeln!(w, "**Not every round was clean: {}.**", unclean.join("; "))?;
    }
    Ok(())
}

/// How throughput and p99 change with the number of connections.
fn write_connections(w: &mut String, results: &Results) -> anyhow::Result<()> {
    let scale = &results.scale;
    if scale.is_empty() {
        return Ok(());
    }
    writeln!(w)?;
    writeln!(w, "## Connections")?;
    writeln!(w)?;
    writeln!(
        w,
        "wrk (`-t2`, `bench/post_increment.lua`, {} each) at {} connections, once each, after \
         the rounds: one memory-mode and one journal-mode server, and at each number of \
         connections nginx measured right before the mode, so that the mode's ratio to nginx \
         compares two measurements seconds apart.",
        results.run.duration,
        scale
            .iter()
            .map(|s| s.connections.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| system |{}",
        scale
            .iter()
            .map(|s| format!(" {} connections |", s.connections))
            .collect::<String>()
    )?;
    writeln!(w, "| --- |{}", " ---: |".repeat(scale.len()))?;
    type Pick = fn(&ScalePoint) -> (&Figures, Option<&Figures>);
    let rows: [(&str, Pick); 4] = [
        ("nginx (before memory mode)", |s| (&s.nginx_memory, None)),
        ("Tally, memory mode", |s| (&s.memory, Some(&s.nginx_memory))),
        ("nginx (before journal mode)", |s| (&s.nginx_journal, None)),
        ("Tally, journal mode", |s| {
            (&s.journal, Some(&s.nginx_journal))
        }),
    ];
    for (name, pick) in rows {
        let cells: String = scale
            .iter()
            .map(|s| {
                let (f, nginx) = pick(s);
                let ratio = nginx.map_or(String::new(), |n| {
                    format!(
                        " ({} of nginx)",
                        times(f.requests_per_sec / n.requests_per_sec)
                    )
                });
                let failed = if f.failures > 0 {
                    format!(", **{} failed**", thousands(f.failures as f64))
                } else {
                    String::new()
                };
                format!(
                    " {}/s{ratio}, p50 {} ms, p99 {} ms{failed} |",
                    thousands(f.requests_per_sec),
                    ms(f.p50_ms),
                    ms(f.p99_ms)
                )
            })
            .collect();
        writeln!(w, "| {name} |{cells}")?;
    }
    Ok(())
}

/// How the flush and the pending map scale with the number of keys.
fn write_keys(w: &mut String, results: &Results) -> anyhow::Result<()> {
    let run = &results.run;
    writeln!(w)?;
    writeln!(w, "## Keys: flush and memory")?;
    writeln!(w)?;
    writeln!(
        w,
        "Flush: one batch of N distinct {}-byte keys, delta 1, sorted, written by \
         `Storage::apply_batch` as the flusher writes it ({} PostgreSQL, default settings, a \
         fresh cluster each); then the same keys again as the next batch, so that every row \
         takes the update path (`crates/service/examples/flush_bench.rs`). Memory: growth of \
         the resident set while N distinct keys are added to the pending map \
         (`crates/service/examples/pending_memory.rs`); at 10 keys the growth is below the \
         resolution of a page and says nothing.",
        results.flushes.first().map_or(36, |f| f.key_bytes),
        results
            .flushes
            .first()
            .map_or("managed", |f| f.database.as_str()),
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| keys | flush, new keys: s | rows/s | flush, existing keys: s | rows/s | sorting the batch: s | pending map: resident MiB | bytes per key | once freed memory is returned: bytes per key |"
    )?;
    writeln!(
        w,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for &keys in &run.scale_keys {
        let flush = results.flushes.iter().find(|f| f.keys == keys);
        let pending = results.pending.iter().find(|p| p.keys as usize == keys);
        let flush_cells = match flush {
            Some(f) => format!(
                "{:.2} | {} | {:.2} | {} | {:.2}",
                f.insert.seconds,
                thousands(f.insert.rows_per_sec),
                f.update.seconds,
                thousands(f.update.rows_per_sec),
                f.sort_seconds
            ),
            None => "not run (`BENCH_FLUSH_10M=1`) | | | |".to_owned(),
        };
        let pending_cells = match pending {
            Some(p) => format!(
                "{:.1} | {:.0} | {}",
                p.resident_mib,
                p.bytes_per_key,
                // Below zero at a few keys: returning freed memory took more than they hold.
                p.held_bytes_per_key
                    .filter(|b| *b >= 0.0)
                    .map_or("—".to_owned(), |b| format!("{b:.0}"))
            ),
            None => "— | — | —".to_owned(),
        };
        writeln!(
            w,
            "| {} | {flush_cells} | {pending_cells} |",
            thousands(keys as f64)
        )?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "The flusher sorts each batch by key before writing it; that time is given apart, not \
         in the flush's."
    )?;
    Ok(())
}

/// Two panels, requests/s and p99, one bar per system of the main table: Tally's modes beside
/// the anchors, each by its median round, with a whisker from the lowest to the highest value
/// over the rounds.
fn chart(results: &Results, path: &Path) -> anyhow::Result<()> {
    let rows = results.system_rows();
    let labels: Vec<String> = rows.iter().map(|r| r.system.short().to_owned()).collect();
    let colours: Vec<RGBColor> = rows
        .iter()
        .map(|r| {
            if r.system.is_tally() {
                RGBColor(41, 98, 166)
            } else {
                RGBColor(150, 150, 150)
            }
        })
        .collect();
    let rounds = results.rounds.len();
    // One round has nothing to spread over.
    let whiskers = |of: fn(&SystemRow) -> (f64, f64)| -> Vec<Option<(f64, f64)>> {
        rows.iter().map(|r| (rounds > 1).then(|| of(r))).collect()
    };
    let root = SVGBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(60);
    title.draw(&Text::new(
        format!(
            "Tally beside nginx, Redis and PostgreSQL: {} connections, {} per measurement, \
             clients on the same {} cores",
            results.run.connections, results.run.duration, results.machine.cores
        ),
        (20, 10),
        ("sans-serif", 18).into_font(),
    ))?;
    title.draw(&Text::new(
        if rounds > 1 {
            format!(
                "blue: Tally; grey: the anchors; median round of {rounds}, whiskers from the \
                 lowest to the highest round. Clients: wrk (nginx, Tally), redis-benchmark, pgbench"
            )
        } else {
            "blue: Tally; grey: the anchors; 1 round. Clients: wrk (nginx, Tally), \
             redis-benchmark, pgbench"
                .to_owned()
        },
        (20, 36),
        ("sans-serif", 14).into_font(),
    ))?;
    let panels = body.split_evenly((1, 2));
    let throughput: Vec<f64> = rows.iter().map(|r| r.figures.requests_per_sec).collect();
    let p99: Vec<f64> = rows.iter().map(|r| r.figures.p99_ms).collect();
    bar_panel(
        &panels[0],
        "requests/s",
        &labels,
        &throughput,
        &whiskers(|r| r.requests_per_sec),
        &colours,
        thousands,
    )?;
    bar_panel(
        &panels[1],
        "p99 latency, ms",
        &labels,
        &p99,
        &whiskers(|r| r.p99_ms),
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
    // `BENCHMARKS.md` has the parent "", which `absolute` refuses: it means the current directory.
    let base = match markdown.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
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
    use super::anchors::tests::{PGBENCH, REDIS, WRK};
    use super::*;

    #[test]
    fn pending_memory_line_gives_keys_and_bytes_per_key() {
        let p = parse_pending_memory(
            "1000000 pending keys of 36 bytes: 96.0 MiB resident, 101 bytes per key\n",
        )
        .unwrap();
        assert_eq!((p.keys, p.key_bytes), (1_000_000, 36));
        assert_eq!(p.resident_mib, 96.0);
        assert_eq!((p.bytes_per_key, p.held_bytes_per_key), (101.0, None));

        let p = parse_pending_memory(
            "1000000 pending keys of 36 bytes: 76.0 MiB resident, 80 bytes per key; \
             once freed memory is returned: 71.0 MiB, 74 bytes per key\ncut of 1000000 keys: 41.6 ms\n",
        )
        .unwrap();
        assert_eq!((p.resident_mib, p.bytes_per_key), (76.0, 80.0));
        assert_eq!(p.held_bytes_per_key, Some(74.0));
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

    fn figures(requests_per_sec: f64, p99_ms: f64) -> Figures {
        Figures {
            requests: (requests_per_sec * 10.0) as u64,
            requests_per_sec,
            p50_ms: p99_ms / 4.0,
            p99_ms,
            failures: 0,
        }
    }

    /// A round from its requests/s: ceiling, memory, journal, sync, with the anchors and wrk's
    /// figures for Tally in proportion.
    fn round(health: f64, memory: f64, journal: f64, sync: f64) -> Round {
        Round {
            health: load(health, 1.0),
            memory: load(memory, 2.0),
            auth: load(memory * 0.9, 2.0),
            journal: load(journal, 3.0),
            sync: load(sync, 40.0),
            systems: System::ALL
                .iter()
                .map(|system| match system {
                    System::Nginx => figures(health * 1.3, 1.0),
                    System::RedisNone => figures(health, 1.0),
                    System::RedisAlways => figures(health * 0.6, 2.0),
                    System::Pgbench => figures(sync * 0.5, 20.0),
                    System::Memory => figures(memory, 2.0),
                    System::Journal => figures(journal, 3.0),
                    System::Sync => figures(sync, 40.0),
                })
                .collect(),
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
        assert_eq!(row.rounds.ratio, (0.75, 0.96));
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

    /// wrk's output for a run of `rate` requests/s with a p99 of `p99`.
    fn wrk_output(rate: f64, p99: &str) -> String {
        WRK.replace("91698.54", &format!("{rate:.2}"))
            .replace("1.07s", p99)
    }

    #[test]
    fn a_results_directory_with_rounds_gives_a_page_and_a_chart() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "run.json",
            r#"{"duration":"10s","duration_secs":10,"rounds":2,"warmup":"2s","connections":64,
                "keys":100000,"scale_connections":[8,64],"flush_keys":1000000,
                "scale_keys":[10,1000000,10000000],"flush_10m":false,
                "commit":"abc1234","started":"2026-01-01T00:00:00Z"}"#,
        );
        write(
            "machine.json",
            r#"{"cpu":"test CPU","cores":2,"memory":"4.0 GiB","kernel":"Linux","os":"Debian",
                "load_average":"0.00 0.00 0.00","rustc":"rustc","wrk":"wrk","nginx":"nginx/1",
                "redis":"Redis server v=7","pgbench":"pgbench 15","date":"today"}"#,
        );
        let verify = r#"{"exact":true,"keys":10,"increments":100,"freshness_ms":12.0}"#;
        // Per round: tally load's ceiling, memory, journal, sync; then wrk's nginx, memory,
        // journal and sync, Redis with appendfsync always, pgbench.
        for (
            number,
            [health, memory, journal, sync],
            [nginx, wrk_memory, wrk_journal, wrk_sync, always, pgbench],
        ) in [
            (
                1,
                [100.0, 90.0, 70.0, 10.0],
                [100_000.0, 80_000.0, 60_000.0, 12_000.0, 50_000.0, 4_000.0],
            ),
            (
                2,
                [80.0, 76.0, 50.0, 9.0],
                [120_000.0, 90_000.0, 66_000.0, 13_000.0, 50_000.0, 5_000.0],
            ),
        ] {
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
            for (name, rate) in [
                ("nginx", nginx),
                ("memory", wrk_memory),
                ("journal", wrk_journal),
                ("sync", wrk_sync),
            ] {
                write(
                    &format!("wrk-{name}-{number}.txt"),
                    &wrk_output(rate, &format!("{number}.50ms")),
                );
            }
            write(&format!("redis-none-{number}.csv"), REDIS);
            write(&format!("redis-none-{number}.requests"), "200000\n");
            write(
                &format!("redis-always-{number}.csv"),
                &REDIS.replace("12779.55", &format!("{always:.2}")),
            );
            write(&format!("redis-always-{number}.requests"), "500000\n");
            write(
                &format!("pgbench-{number}.txt"),
                &PGBENCH.replace("4125.832711", &format!("{pgbench:.6}")),
            );
            write(
                &format!("pgbench-{number}-log.123"),
                "0 1 2500 0 1700000000 0\n1 1 3500 0 1700000000 0\n",
            );
        }
        for connections in [8, 64] {
            for name in ["nginx-memory", "memory", "nginx-journal", "journal"] {
                write(
                    &format!("scale-{name}-{connections}.txt"),
                    &wrk_output(50_000.0, "4.25ms"),
                );
            }
        }
        for keys in [10, 1_000_000] {
            write(
                &format!("flush-{keys}.json"),
                &format!(
                    r#"{{"keys":{keys},"key_bytes":36,"database":"managed",
                        "server_version":"PostgreSQL","sort_seconds":0.5,
                        "insert":{{"seconds":3.0,"rows_per_sec":333333}},
                        "update":{{"seconds":6.0,"rows_per_sec":166667}}}}"#
                ),
            );
        }
        for keys in [10, 1_000_000, 10_000_000] {
            write(
                &format!("memory-{keys}.txt"),
                &format!("{keys} pending keys of 36 bytes: 96.0 MiB resident, 101 bytes per key\n"),
            );
        }
        write("commands.txt", "# a step\ntally serve\n");

        let results = Results::read(dir.path()).unwrap();
        let page = markdown(&results, "bench/results.svg", None).unwrap();
        // tally load: memory's ratios 0.90 and 0.95, so round 1; journal's 0.70 and 0.625, so
        // round 2.
        assert!(page.contains("| buffered + memory | 1 of 2 |"), "{page}");
        assert!(page.contains("| buffered + journal | 2 of 2 |"));
        assert!(page.contains("| 90.0%–95.0% |"));
        assert!(page.contains("| system | client | round 1 | round 2 |"));
        assert!(page.contains("**90/s (90.0%), p99 1.50 ms**"));
        // Beside the anchors: memory mode 0.80 and 0.75 of nginx, so round 2.
        assert!(
            page.contains("| **Tally, memory mode** | wrk | 2 of 2 | 90,000 | 80,000–90,000 | 0.75x | 0.75x–0.80x |"),
            "{page}"
        );
        assert!(page.contains("| nginx, return 200 | wrk | 1 of 2 | 100,000 |"));
        assert!(page.contains("| PostgreSQL, per-request upsert | pgbench | "));
        assert!(page.contains("every request succeeded") || page.contains("Not every round"));
        assert!(page.contains("Short run (10s per measurement, 2 rounds)"));
        // Targets: 0.75 against 0.85; 1.20 against 1.2; 2.60 against 3; 6 s against 5 s.
        assert!(page.contains("| memory mode >= 0.85x nginx (wrk, 64 connections) | 0.75x (median round 2 of 2: 90,000 against 120,000 requests/s; 0.75x–0.80x over the rounds) | **missed**, 11.8% below the bound |"), "{page}");
        assert!(page.contains("1.20x (median round 1 of 2: 60,000 against 50,000 requests/s; 1.20x–1.32x over the rounds) | met, at the bound |"));
        assert!(
            page.contains(
                "| sync mode >= 3x pgbench's per-request upsert (64 connections) | 2.60x"
            )
        );
        assert!(page.contains("**missed**, 13.3% below the bound"));
        assert!(page.contains("| flush of 1,000,000 distinct keys (existing rows) < 5 s | 6.00 s, 166,667 rows/s | **missed**, 20.0% above the bound |"));
        assert!(page.contains("| journal mode p99 <= 5 ms at 8 connections (wrk) | 4.25 ms (the connections sweep, one measurement) | met, 15.0% below |"));
        assert!(page.contains("| resident memory per pending 36-byte key <= 100 bytes at 1,000,000 keys | 101 bytes (36-byte keys) | **missed**, 1.0% above the bound |"));
        // The sweep and the key counts.
        assert!(page.contains("| system | 8 connections | 64 connections |"));
        assert!(page.contains("| Tally, journal mode | 50,000/s (1.00x of nginx), p50 0.47 ms, p99 4.25 ms, **19 failed** |"));
        assert!(
            page.contains("| 10,000,000 | not run (`BENCH_FLUSH_10M=1`) | | | | | 96.0 | 101 |")
        );
        let svg = dir.path().join("results.svg");
        chart(&results, &svg).unwrap();
        let svg = std::fs::read_to_string(&svg).unwrap();
        assert!(svg.ends_with("</svg>\n"));
        assert!(svg.contains("Tally journal") && svg.contains("Redis fsync always"));

        // A round's file missing stops the report.
        std::fs::remove_file(dir.path().join("pgbench-2.txt")).unwrap();
        let error = format!("{:#}", Results::read(dir.path()).err().unwrap());
        assert!(error.contains("pgbench-2.txt"), "{error}");
    }

    #[test]
    fn a_target_says_by_how_much_it_is_met_or_missed() {
        let judged = |measured, bound| Judged { measured, bound };
        assert_eq!(
            judged(0.9, Bound::AtLeast(0.85)).verdict(),
            "met, 5.9% above"
        );
        assert_eq!(
            judged(0.68, Bound::AtLeast(0.85)).verdict(),
            "**missed**, 20.0% below the bound"
        );
        assert_eq!(
            judged(4.0, Bound::AtMost(5.0)).verdict(),
            "met, 20.0% below"
        );
        assert_eq!(
            judged(5.0, Bound::Below(5.0)).verdict(),
            "**missed**, at the bound"
        );
        assert!(judged(5.0, Bound::AtMost(5.0)).met());
        assert_eq!(judged(1.0, Bound::Holds).verdict(), "met");
        assert_eq!(judged(0.0, Bound::Holds).verdict(), "**missed**");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }
}
