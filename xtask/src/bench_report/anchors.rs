//! Tally beside the anchors: the systems `bench/run` loads with their own clients in every
//! round (nginx and Tally's modes with wrk, Redis with redis-benchmark, PostgreSQL with
//! pgbench), and the readers of those clients' output.
//!
//! Every client's figures become one [`Figures`], so that a table or a chart can put an nginx
//! measurement beside a Redis or a Tally one without caring which client took it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};

use super::read_text;

/// What one measurement of one system gave, whichever client took it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Figures {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers other than 2xx, connection errors and timeouts (wrk); failed transactions
    /// (pgbench). redis-benchmark reports none.
    pub failures: u64,
}

/// A system measured in every round, in the order of the report's main table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum System {
    Nginx,
    RedisNone,
    RedisAlways,
    Pgbench,
    Memory,
    Journal,
    Sync,
}

impl System {
    pub const ALL: [System; 7] = [
        System::Nginx,
        System::RedisNone,
        System::RedisAlways,
        System::Pgbench,
        System::Memory,
        System::Journal,
        System::Sync,
    ];

    pub fn label(self) -> &'static str {
        match self {
            System::Nginx => "nginx, return 200",
            System::RedisNone => "Redis INCRBY, no persistence",
            System::RedisAlways => "Redis INCRBY, appendfsync always",
            System::Pgbench => "PostgreSQL, per-request upsert",
            System::Memory => "Tally, memory mode",
            System::Journal => "Tally, journal mode",
            System::Sync => "Tally, sync mode",
        }
    }

    /// The chart's short name.
    pub fn short(self) -> &'static str {
        match self {
            System::Nginx => "nginx",
            System::RedisNone => "Redis",
            System::RedisAlways => "Redis fsync always",
            System::Pgbench => "pgbench upsert",
            System::Memory => "Tally memory",
            System::Journal => "Tally journal",
            System::Sync => "Tally sync",
        }
    }

    pub fn client(self) -> &'static str {
        match self {
            System::Nginx | System::Memory | System::Journal | System::Sync => "wrk",
            System::RedisNone | System::RedisAlways => "redis-benchmark",
            System::Pgbench => "pgbench",
        }
    }

    pub fn is_tally(self) -> bool {
        matches!(self, System::Memory | System::Journal | System::Sync)
    }

    /// Reads this system's measurement of round `number` from the results directory.
    pub fn read(self, dir: &Path, number: usize) -> anyhow::Result<Figures> {
        let wrk = |name: &str| -> anyhow::Result<Figures> {
            let file = format!("wrk-{name}-{number}.txt");
            parse_wrk(&read_text(dir, &file)?).with_context(|| file.clone())
        };
        let redis = |name: &str| -> anyhow::Result<Figures> {
            let file = format!("redis-{name}-{number}.csv");
            let requests = read_text(dir, &format!("redis-{name}-{number}.requests"))?;
            parse_redis_csv(&read_text(dir, &file)?, requests.trim().parse()?)
                .with_context(|| file.clone())
        };
        match self {
            System::Nginx => wrk("nginx"),
            System::Memory => wrk("memory"),
            System::Journal => wrk("journal"),
            System::Sync => wrk("sync"),
            System::RedisNone => redis("none"),
            System::RedisAlways => redis("always"),
            System::Pgbench => {
                let file = format!("pgbench-{number}.txt");
                let latencies = read_pgbench_logs(dir, &format!("pgbench-{number}-log."))?;
                parse_pgbench(&read_text(dir, &file)?, &latencies).with_context(|| file.clone())
            }
        }
    }
}

/// Reads wrk's summary: `Requests/sec:`, the `Latency Distribution` block, the request count
/// and the error lines (absent when there were none).
pub(super) fn parse_wrk(text: &str) -> anyhow::Result<Figures> {
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
    Ok(Figures {
        requests: requests.context("no `N requests in` line")?,
        requests_per_sec: requests_per_sec.context("no `Requests/sec:` line")?,
        p50_ms: percentile("50")?,
        p99_ms: percentile("99")?,
        failures: non_2xx + socket_errors,
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

/// Reads `redis-benchmark --csv`: a header line naming the columns, then one line for the one
/// test run (`"INCRBY key:__rand_int__ 1","81234.57",...`). `requests` is the `-n` it ran.
pub(super) fn parse_redis_csv(text: &str, requests: u64) -> anyhow::Result<Figures> {
    let split = |line: &str| -> Vec<String> {
        line.split(',')
            .map(|field| field.trim().trim_matches('"').to_owned())
            .collect()
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = split(lines.next().context("empty redis-benchmark output")?);
    let values = split(
        lines
            .next()
            .context("no result line in redis-benchmark output")?,
    );
    let column = |name: &str| -> anyhow::Result<f64> {
        let at = header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no `{name}` column in redis-benchmark output"))?;
        let value = values.get(at).context("a short result line")?;
        value
            .parse()
            .with_context(|| format!("`{name}` is not a number: `{value}`"))
    };
    Ok(Figures {
        requests,
        requests_per_sec: column("rps")?,
        p50_ms: column("p50_latency_ms")?,
        p99_ms: column("p99_latency_ms")?,
        failures: 0,
    })
}

/// The latencies of every transaction, in milliseconds, from pgbench's `--log` files, whose
/// names start with `prefix` (one file per thread: `<prefix><pid>`, `<prefix><pid>.1`). Each
/// line is `client_id transaction_no time_us script_no time_epoch time_us_of_epoch`, with
/// `failed` or `skipped` in place of the time of a transaction that did not complete.
pub(super) fn read_pgbench_logs(dir: &Path, prefix: &str) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with(prefix)) else {
            continue;
        };
        files += 1;
        latencies.extend(parse_pgbench_log(&read_text(dir, name)?).context(name.to_owned())?);
    }
    if files == 0 {
        bail!("no pgbench log {prefix}* in {}", dir.display());
    }
    Ok(latencies)
}

fn parse_pgbench_log(text: &str) -> anyhow::Result<Vec<f64>> {
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter(|time| !matches!(*time, "failed" | "skipped"))
        .map(|time| {
            time.parse::<f64>()
                .map(|us| us / 1000.0)
                .with_context(|| format!("a transaction time that is not a number: `{time}`"))
        })
        .collect()
}

/// Reads pgbench's summary (`tps = ...`, the transactions processed and failed) and takes the
/// percentiles from `latencies`, every transaction's time in milliseconds.
pub(super) fn parse_pgbench(text: &str, latencies: &[f64]) -> anyhow::Result<Figures> {
    let (mut tps, mut processed, mut failed) = (None, None, 0);
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("tps = ") {
            tps = Some(
                rest.split_whitespace()
                    .next()
                    .unwrap_or("")
                    .parse::<f64>()?,
            );
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            processed = Some(rest.split('/').next().unwrap_or("").trim().parse::<u64>()?);
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            failed = rest
                .split_whitespace()
                .next()
                .unwrap_or("")
                .parse::<u64>()?;
        }
    }
    if latencies.is_empty() {
        bail!("pgbench logged no transaction");
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f64::total_cmp);
    Ok(Figures {
        requests: processed.context("no `number of transactions actually processed` line")?,
        requests_per_sec: tps.context("no `tps =` line")?,
        p50_ms: percentile(&sorted, 0.50),
        p99_ms: percentile(&sorted, 0.99),
        failures: failed,
    })
}

/// The nearest-rank percentile `p` (0 to 1) of `sorted`, which must not be empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub const WRK: &str = "Running 3s test @ http://127.0.0.1:32927
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

    pub const REDIS: &str = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"
\"INCRBY key:__rand_int__ 1\",\"12779.55\",\"4.483\",\"0.072\",\"1.055\",\"19.631\",\"26.895\",\"43.583\"
";

    pub const PGBENCH: &str = "pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: /tmp/upsert.sql
scaling factor: 1
query mode: prepared
number of clients: 64
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 41234
number of failed transactions: 3 (0.007%)
latency average = 15.512 ms
initial connection time = 30.518 ms
tps = 4125.832711 (without initial connection time)
";

    #[test]
    fn wrk_output_gives_rate_percentiles_in_ms_and_errors() {
        let wrk = parse_wrk(WRK).unwrap();
        assert_eq!(wrk.requests, 275_740);
        assert_eq!(wrk.requests_per_sec, 91_698.54);
        assert_eq!(wrk.p50_ms, 0.465);
        assert_eq!(wrk.p99_ms, 1070.0);
        assert_eq!(wrk.failures, 12 + 7);
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
    fn redis_benchmark_csv_gives_rate_and_percentiles() {
        let redis = parse_redis_csv(REDIS, 20_000).unwrap();
        assert_eq!(redis.requests, 20_000);
        assert_eq!(redis.requests_per_sec, 12_779.55);
        assert_eq!(redis.p50_ms, 1.055);
        assert_eq!(redis.p99_ms, 26.895);
        assert!(parse_redis_csv("\"test\",\"rps\"\n", 1).is_err());
    }

    #[test]
    fn pgbench_summary_and_logs_give_rate_failures_and_percentiles() {
        // 100 transactions of 1 to 100 ms, in microseconds, and two failed ones.
        let log: String = (1..=100)
            .map(|ms| format!("{} {ms} {} 0 1700000000 0\n", ms % 64, ms * 1000))
            .chain(["5 101 failed 0 1700000000 0\n".to_owned()])
            .collect();
        let latencies = parse_pgbench_log(&log).unwrap();
        assert_eq!(latencies.len(), 100);
        let figures = parse_pgbench(PGBENCH, &latencies).unwrap();
        assert_eq!(figures.requests, 41_234);
        assert_eq!(figures.requests_per_sec, 4125.832711);
        assert_eq!(figures.failures, 3);
        assert_eq!(figures.p50_ms, 50.0);
        assert_eq!(figures.p99_ms, 99.0);
        assert!(parse_pgbench(PGBENCH, &[]).is_err());
    }

    #[test]
    fn percentile_is_the_nearest_rank() {
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
    }
}
