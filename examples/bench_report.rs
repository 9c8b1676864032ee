//! Turns the results `bench/run` collected into `BENCHMARKS.md` and `bench/results.svg`.
//!
//! ```sh
//! cargo run --release --example bench_report -- --results DIR [--markdown BENCHMARKS.md] [--svg bench/results.svg]
//! ```
//!
//! DIR holds one file per measurement, as `bench/run` writes them: `run.json` (settings),
//! `machine.json`, `load-{health,memory,journal,sync}.json` (`tally load --json`),
//! `wrk-{health,memory}.txt` (wrk's own output, `--latency`), `flush.json` (the `flush_bench`
//! example), `memory.txt` (the `pending_memory` example) and `commands.txt`. A missing or
//! malformed file stops the report: a page with a hole in it would be read as a full one.
//!
//! Every throughput figure is shown as a ratio to the HTTP ceiling that the same client
//! measured in the same run, because only that ratio carries over between machines; the
//! targets of the issue are checked here, each with its figure, so the page says PASS or FAIL
//! without anyone redoing the arithmetic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;
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
/// A route that does work cannot outrun one that does none: a ratio above this says the
/// ceiling's measurement was disturbed, and the page says so.
const MAX_PLAUSIBLE_RATIO: f64 = 1.05;

#[derive(Parser)]
struct Args {
    /// The directory of results written by bench/run.
    #[arg(long)]
    results: PathBuf,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
    /// Where to write the chart; the report links to it relative to its own directory.
    #[arg(long, default_value = "bench/results.svg")]
    svg: PathBuf,
}

/// `run.json`: how bench/run was configured.
#[derive(Deserialize)]
struct RunSettings {
    duration: String,
    duration_secs: f64,
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

/// Everything one run produced.
struct Results {
    run: RunSettings,
    machine: Machine,
    health: Load,
    memory: Load,
    journal: Load,
    sync: Load,
    wrk_health: Wrk,
    wrk_memory: Wrk,
    flush: Flush,
    pending: PendingMemory,
    commands: String,
}

impl Results {
    fn read(dir: &Path) -> anyhow::Result<Results> {
        Ok(Results {
            run: read_json(dir, "run.json")?,
            machine: read_json(dir, "machine.json")?,
            health: read_json(dir, "load-health.json")?,
            memory: read_json(dir, "load-memory.json")?,
            journal: read_json(dir, "load-journal.json")?,
            sync: read_json(dir, "load-sync.json")?,
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
}

fn load_row(mode: &'static str, load: &Load, ceiling: &Load) -> Row {
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
        mode,
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
    }
}

impl Results {
    fn rows(&self) -> Vec<Row> {
        let c = self.run.connections;
        vec![
            load_row("health (ceiling)", &self.health, &self.health),
            load_row("buffered + memory", &self.memory, &self.health),
            load_row("buffered + journal", &self.journal, &self.health),
            load_row("sync", &self.sync, &self.health),
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
        ]
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
    fn targets(&self) -> Vec<Target> {
        let ceiling = self.health.requests_per_sec;
        let ratio = |load: &Load| load.requests_per_sec / ceiling;
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
        let exact = [&self.memory, &self.journal, &self.sync]
            .iter()
            .all(|l| l.verify.as_ref().is_some_and(|v| v.exact));
        vec![
            Target {
                what: format!(
                    "buffered + memory >= {:.0}% of the HTTP ceiling",
                    MEMORY_MIN_RATIO * 100.0
                ),
                figure: format!(
                    "{} ({} of {} requests/s)",
                    percent(ratio(&self.memory)),
                    thousands(self.memory.requests_per_sec),
                    thousands(ceiling)
                ),
                pass: Some(ratio(&self.memory) >= MEMORY_MIN_RATIO),
                profile_hint: "where a memory-mode POST /increment spends the time a GET /health does not",
            },
            Target {
                what: format!(
                    "buffered + journal >= {:.0}% of the HTTP ceiling",
                    JOURNAL_MIN_RATIO * 100.0
                ),
                figure: format!(
                    "{} ({} of {} requests/s)",
                    percent(ratio(&self.journal)),
                    thousands(self.journal.requests_per_sec),
                    thousands(ceiling)
                ),
                pass: Some(ratio(&self.journal) >= JOURNAL_MIN_RATIO),
                profile_hint: "where a journal-mode POST /increment spends its time: request path, journal writer, fdatasync",
            },
            Target {
                what: format!(
                    "buffered + journal p99 < {JOURNAL_MAX_P99_MS} ms at {TARGET_CONNECTIONS} connections"
                ),
                figure: format!(
                    "{} ms{}",
                    ms(self.journal.latency_ms.p99),
                    at_connections(&self.journal)
                ),
                pass: Some(
                    self.journal.latency_ms.p99 < JOURNAL_MAX_P99_MS
                        && self.journal.connections == TARGET_CONNECTIONS,
                ),
                profile_hint: "what the slowest 1% of journal-mode requests wait for",
            },
            Target {
                what: format!(
                    "flush of {} distinct keys (new rows) < {FLUSH_MAX_SECONDS} s",
                    thousands(self.flush.keys as f64)
                ),
                figure: format!(
                    "{:.2} s, {} rows/s",
                    self.flush.insert.seconds,
                    thousands(self.flush.insert.rows_per_sec)
                ),
                pass: Some(self.flush.insert.seconds < FLUSH_MAX_SECONDS),
                profile_hint: "where the first flush of 1 million keys spends its time (client side and in PostgreSQL)",
            },
            Target {
                what: format!(
                    "flush of {} distinct keys (existing rows) < {FLUSH_MAX_SECONDS} s",
                    thousands(self.flush.keys as f64)
                ),
                figure: format!(
                    "{:.2} s, {} rows/s",
                    self.flush.update.seconds,
                    thousands(self.flush.update.rows_per_sec)
                ),
                pass: Some(self.flush.update.seconds < FLUSH_MAX_SECONDS),
                profile_hint: "where the update-path flush of 1 million keys spends its time (client side and in PostgreSQL)",
            },
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
                figure: format!(
                    "{} slower than buffered + journal, {} slower than buffered + memory",
                    times(self.journal.requests_per_sec / self.sync.requests_per_sec),
                    times(self.memory.requests_per_sec / self.sync.requests_per_sec),
                ),
                pass: None,
                profile_hint: "",
            },
            Target {
                what: "every increment run verified exact in PostgreSQL".to_owned(),
                figure: if exact {
                    "memory, journal and sync: exact".to_owned()
                } else {
                    "at least one run's totals differ from what was acknowledged".to_owned()
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

fn markdown(results: &Results, svg_link: &str) -> anyhow::Result<String> {
    let run = &results.run;
    let m = &results.machine;
    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "# Benchmarks")?;
    writeln!(w)?;
    writeln!(
        w,
        "Tally measured on one machine, in one run of `bench/run` (started {}, commit `{}`), with \
         the load generator on the same machine as the server. Each throughput is also given as \
         a ratio to the HTTP ceiling the same client measured in the same run.",
        run.started, run.commit
    )?;
    if run.duration_secs < MIN_TRUSTED_SECONDS {
        writeln!(w)?;
        writeln!(
            w,
            "> **Short run ({} per measurement): the figures are noisy. Run `bench/run` with the \
             default duration or longer before reading anything into them.**",
            run.duration
        )?;
    }
    let implausible: Vec<String> = results
        .rows()
        .iter()
        .filter(|r| r.ratio > MAX_PLAUSIBLE_RATIO)
        .map(|r| {
            format!(
                "{} ({}) at {} of its ceiling",
                r.mode,
                r.client,
                percent(r.ratio)
            )
        })
        .collect();
    if !implausible.is_empty() {
        writeln!(w)?;
        writeln!(
            w,
            "> **Disturbed run: {}. A route that does work cannot outrun one that does none, so \
             something else used the CPU during part of this run, and its ratios cannot be \
             trusted. Run it again on a quiet machine.**",
            implausible.join("; ")
        )?;
    }
    writeln!(w)?;
    writeln!(w, "Re-run (rewrites this page and `{svg_link}`):")?;
    writeln!(w)?;
    writeln!(w, "```sh")?;
    writeln!(w, "bench/run                  # 10 s per measurement")?;
    writeln!(w, "DURATION=30s bench/run     # longer, steadier figures")?;
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
        "{} per measurement after a {} warm-up, {} connections, `POST /increment` with keys drawn \
         uniformly from {}. The ceiling is `GET /health` on a memory-mode server: the same \
         HTTP stack doing no work.",
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
        "| mode | client | connections | requests | requests/s | of the ceiling | p50 ms | p99 ms | p99.9 ms | not 2xx | totals in PostgreSQL |"
    )?;
    writeln!(
        w,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )?;
    for r in results.rows() {
        writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
    writeln!(
        w,
        "\"not 2xx\" counts answers other than 2xx plus connection errors and timeouts. wrk's \
         latency distribution stops at p99; it cannot check totals, `tally load --verify` does: \
         after the load it waits until PostgreSQL holds every acknowledged increment and compares \
         every key's total."
    )?;

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
         (`examples/pending_memory.rs`).",
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
    writeln!(w, "| target | this run | result |")?;
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

    let failed: Vec<&Target> = targets
        .iter()
        .filter(|t| t.pass == Some(false) && !t.profile_hint.is_empty())
        .collect();
    if !failed.is_empty() {
        writeln!(w)?;
        writeln!(w, "## Where the time goes")?;
        writeln!(w)?;
        writeln!(
            w,
            "> **TODO (lead): this run missed the targets below. Fill this section in from a \
             profile of a full-length run; until then no explanation is given here.**"
        )?;
        writeln!(w)?;
        for t in failed {
            writeln!(w, "- {}: {}. TODO: {}.", t.what, t.figure, t.profile_hint)?;
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

/// Two panels, requests/s and p99 per mode, one bar per row of the table.
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
    let colour = |r: &Row| match r.client {
        "wrk" => RGBColor(230, 126, 34),
        _ => RGBColor(41, 98, 166),
    };
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    title.draw(&Text::new(
        format!(
            "Tally, {} connections, {} per mode, client on the same {} cores (blue: tally load, orange: wrk)",
            results.run.connections, results.run.duration, results.machine.cores
        ),
        (20, 12),
        ("sans-serif", 18).into_font(),
    ))?;
    let panels = body.split_evenly((1, 2));
    let throughput: Vec<f64> = rows.iter().map(|r| r.requests_per_sec).collect();
    let p99: Vec<f64> = rows.iter().map(|r| r.p99_ms).collect();
    bar_panel(
        &panels[0],
        "requests/s",
        &labels,
        &throughput,
        &rows.iter().map(colour).collect::<Vec<_>>(),
        thousands,
    )?;
    bar_panel(
        &panels[1],
        "p99 latency, ms",
        &labels,
        &p99,
        &rows.iter().map(colour).collect::<Vec<_>>(),
        ms,
    )?;
    root.present()?;
    Ok(())
}

fn bar_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    labels: &[String],
    values: &[f64],
    colours: &[RGBColor],
    format: fn(f64) -> String,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let top = values
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
    let label_style = ("sans-serif", 12)
        .into_font()
        .into_text_style(area)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(values.iter().enumerate().map(|(i, v)| {
        Text::new(
            format(*v),
            (SegmentValue::CenterOf(i), *v),
            label_style.clone(),
        )
    }))?;
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let results = Results::read(&args.results)?;
    chart(&results, &args.svg).with_context(|| format!("cannot draw {}", args.svg.display()))?;
    let page = markdown(&results, &relative_link(&args.markdown, &args.svg))?;
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

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }
}
