//! `tally load`: a load generator that checks what it measured.
//!
//! N workers ([`worker`]) each keep one HTTP/1.1 connection ([`client`]) and send
//! `POST /increment` with keys drawn from a uniform or Zipf distribution ([`keys`]), for a
//! duration or a number of requests, recording every latency and remembering, per key, the sum
//! the server acknowledged and the sum whose outcome is unknown. The run ends with a report
//! ([`report`]); with `--verify` it then waits for PostgreSQL to hold every acknowledged
//! increment and checks each key's total exactly ([`verify`]), which is what a generic tool
//! such as wrk cannot do. `--method get --path /health` measures the HTTP ceiling instead.

pub mod client;
pub mod keys;
pub mod progress;
pub mod report;
pub mod verify;
pub mod worker;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio_util::sync::CancellationToken;

use client::Target;
use keys::{KeyPicker, KeySpace};
use progress::Progress;
pub use report::LoadReport;
use report::{KeysUsed, LatencySummary, VerifyReport};
use tally_postgres::DatabaseUrl;
use verify::{Expected, Verifier};
use worker::{Budget, KeySums, Plan, WorkerResult};

/// Settings of `tally load`.
#[derive(Debug, Clone, Args)]
pub struct LoadConfig {
    /// The Tally node (or load balancer) to load: `http://host:port`.
    #[arg(long, default_value = "http://127.0.0.1:3333", value_name = "URL")]
    pub url: String,

    /// Concurrent connections, one worker each, one request in flight per connection.
    #[arg(long, default_value_t = 64, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,

    /// How long to send (humantime: `30s`, `2m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,

    /// Send this many requests in total instead of running for `--duration`.
    #[arg(long, conflicts_with = "duration", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// How many distinct keys to spread increments over.
    #[arg(long, default_value_t = 10_000, value_name = "K",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub keys: u32,

    /// How keys are picked.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,

    /// Skew of `--distribution zipf`: 0 is uniform, 1 the classic Zipf law, more is hotter.
    #[arg(long, default_value_t = 1.0, value_parser = parse_exponent, value_name = "S")]
    pub zipf_exponent: f64,

    /// Values are uniform in 1..=MAX.
    #[arg(long, default_value_t = 10, value_name = "MAX",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_value: u32,

    /// Keys are `PREFIX-0` .. `PREFIX-(K-1)`. Default: `load-` and six random characters, so
    /// runs against the same database do not mix.
    #[arg(long, value_parser = keys::parse_prefix, value_name = "PREFIX")]
    pub key_prefix: Option<String>,

    /// HTTP method: `post` sends `{"key": .., "value": ..}` bodies, `get` sends no body (for
    /// trivial routes such as `/health`, to measure the HTTP ceiling).
    #[arg(long, value_enum, default_value_t = LoadMethod::Post)]
    pub method: LoadMethod,

    /// Request path.
    #[arg(long, default_value = "/increment", value_name = "PATH")]
    pub path: String,

    /// A request without a complete answer after this long counts as timed out (its outcome
    /// unknown) and its connection is replaced.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub request_timeout: Duration,

    /// After the load, check every key's total in PostgreSQL against what was acknowledged.
    #[arg(long, requires = "database_url")]
    pub verify: bool,

    /// The database the node writes to, for `--verify` (URL or key=value, as DATABASE_URL).
    #[arg(long, value_name = "URL", value_parser = tally_postgres::DatabaseUrlParser)]
    pub database_url: Option<DatabaseUrl>,

    /// How long `--verify` waits for PostgreSQL to hold every acknowledged increment.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub verify_timeout: Duration,

    /// Seed for the workers' random numbers, to repeat a run's keys and values.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// An API key, sent as `Authorization: Bearer <key>` (for a node with `--auth required`).
    #[arg(
        long,
        env = "TALLY_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,

    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,

    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// How keys are picked for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// A few hot keys and a long tail (`--zipf-exponent`).
    Zipf,
}

/// The HTTP method of every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadMethod {
    /// An increment body in each request; what `--verify` checks.
    Post,
    /// No body; for trivial routes such as `/health`.
    Get,
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            self.to_possible_value()
                .expect("no variant skipped")
                .get_name(),
        )
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 2m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

fn parse_exponent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err("must be a number >= 0".into()),
    }
}

/// Runs the load, prints the report (text, or JSON with `--json`) on stdout, and returns it.
///
/// Fails before sending anything when the settings do not fit together, the server cannot be
/// reached, or (with `--verify`) the database cannot be read or already holds keys with the
/// run's prefix. With `--verify`, a total outside its bounds is an error, returned after the
/// report with the mismatches is printed.
pub async fn run(config: LoadConfig) -> anyhow::Result<LoadReport> {
    let post = config.method == LoadMethod::Post;
    if config.verify && !post {
        bail!("--verify needs --method post: a GET sends no increment to check");
    }
    let method = match config.method {
        LoadMethod::Post => hyper::Method::POST,
        LoadMethod::Get => hyper::Method::GET,
    };
    let target = Target::resolve(
        &config.url,
        &config.path,
        method.clone(),
        config.request_timeout,
        config.api_key.as_deref(),
    )
    .await?;
    let seed = config.seed.unwrap_or_else(rand::random);
    let mut seeds = SmallRng::seed_from_u64(seed);
    let prefix = config
        .key_prefix
        .clone()
        .unwrap_or_else(|| keys::random_prefix(&mut seeds));
    let keys = KeySpace::new(&prefix, if post { config.keys } else { 1 });
    let picker = KeyPicker::new(config.distribution, keys.len(), config.zipf_exponent)?;

    let verifier = match (&config.verify, &config.database_url) {
        (true, Some(url)) => Some(Verifier::connect(url, keys.key_start()).await?),
        (true, None) => bail!("--verify needs --database-url"),
        (false, _) => None,
    };
    target
        .probe()
        .await
        .with_context(|| format!("cannot connect to {}", config.url))?;

    let budget = match config.requests {
        Some(total) => Budget::Requests {
            total,
            claimed: AtomicU64::new(0),
        },
        None => Budget::Until(Instant::now() + config.duration),
    };
    let progress = Arc::new(Progress::default());
    let plan = Arc::new(SharedPlan {
        target,
        keys,
        picker,
        budget,
        progress: progress.clone(),
        max_value: post.then_some(config.max_value),
    });

    let started = Instant::now();
    let stop_progress = CancellationToken::new();
    let printer =
        (!config.quiet).then(|| progress::spawn_printer(progress, started, stop_progress.clone()));
    let workers: Vec<_> = (0..config.connections)
        .map(|i| {
            let plan = plan.clone();
            let rng = SmallRng::seed_from_u64(seed.wrapping_add(1 + u64::from(i)));
            tokio::spawn(async move { worker::run(plan.as_plan(), rng).await })
        })
        .collect();
    let mut results = Vec::with_capacity(workers.len());
    for w in workers {
        results.push(w.await.context("a load worker panicked")?);
    }
    let elapsed = started.elapsed();
    stop_progress.cancel();
    if let Some(printer) = printer {
        let _ = printer.await;
    }

    let totals = Totals::merge(results, plan.keys.len());
    let verify = match &verifier {
        Some(verifier) => Some(verify_totals(verifier, &plan.keys, &totals, &config).await?),
        None => None,
    };
    let report = LoadReport {
        target: format!(
            "{method} {}{}",
            config.url.trim_end_matches('/'),
            config.path
        ),
        connections: config.connections as usize,
        keys: post.then(|| KeysUsed {
            count: plan.keys.len(),
            distribution: match config.distribution {
                Distribution::Uniform => "uniform".to_owned(),
                Distribution::Zipf => format!("zipf, exponent {}", config.zipf_exponent),
            },
            prefix: plan.keys.prefix().to_owned(),
        }),
        requests: totals.requests,
        duration_secs: elapsed.as_secs_f64(),
        requests_per_sec: totals.requests as f64 / elapsed.as_secs_f64(),
        latency_ms: LatencySummary::from_micros(&totals.latency),
        statuses: totals.statuses,
        connection_errors: totals.connection_errors,
        timeouts: totals.timeouts,
        first_error: totals.first_error,
        verify,
    };
    if config.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    if let Some(v) = &report.verify
        && !v.exact
    {
        bail!(
            "verification failed: {} keys hold a wrong total in PostgreSQL",
            v.mismatched_keys
        );
    }
    Ok(report)
}

/// What every worker of a run shares, owned so that tasks can hold it.
struct SharedPlan {
    target: Target,
    keys: KeySpace,
    picker: KeyPicker,
    budget: Budget,
    progress: Arc<Progress>,
    max_value: Option<u32>,
}

impl SharedPlan {
    fn as_plan(&self) -> Plan<'_> {
        Plan {
            target: &self.target,
            keys: &self.keys,
            picker: &self.picker,
            max_value: self.max_value,
            budget: &self.budget,
            progress: &self.progress,
        }
    }
}

/// Every worker's results, added up.
struct Totals {
    requests: u64,
    latency: hdrhistogram::Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    connection_errors: u64,
    timeouts: u64,
    acknowledged: u64,
    unknown: u64,
    /// Indexed by key.
    sums: Vec<KeySums>,
    last_ack: Option<Instant>,
    first_error: Option<String>,
}

impl Totals {
    fn merge(results: Vec<WorkerResult>, keys: u32) -> Totals {
        let mut t = Totals {
            requests: 0,
            latency: worker::new_histogram(),
            statuses: BTreeMap::new(),
            connection_errors: 0,
            timeouts: 0,
            acknowledged: 0,
            unknown: 0,
            sums: vec![KeySums::default(); keys as usize],
            last_ack: None,
            first_error: None,
        };
        for r in results {
            t.requests += r.requests;
            t.latency
                .add(&r.latency)
                .expect("histograms of the same bounds add up");
            for (status, count) in r.statuses {
                *t.statuses.entry(status).or_default() += count;
            }
            t.connection_errors += r.connection_errors;
            t.timeouts += r.timeouts;
            t.acknowledged += r.acknowledged;
            t.unknown += r.unknown;
            for (key, s) in r.sums {
                let sum = &mut t.sums[key as usize];
                sum.acknowledged += s.acknowledged;
                sum.unknown += s.unknown;
            }
            t.last_ack = t.last_ack.max(r.last_ack);
            if t.first_error.is_none() {
                t.first_error = r.first_error;
            }
        }
        t
    }
}

async fn verify_totals(
    verifier: &Verifier,
    keys: &KeySpace,
    totals: &Totals,
    config: &LoadConfig,
) -> anyhow::Result<VerifyReport> {
    let expected: BTreeMap<String, Expected> = totals
        .sums
        .iter()
        .enumerate()
        .filter(|(_, s)| s.acknowledged != 0 || s.unknown != 0)
        .map(|(i, s)| {
            (
                keys.key(i as u32).to_owned(),
                Expected {
                    acknowledged: s.acknowledged,
                    unknown: s.unknown,
                },
            )
        })
        .collect();
    let verdict = verifier
        .wait_and_compare(&expected, config.verify_timeout)
        .await
        .context("cannot read the totals back from PostgreSQL")?;
    let freshness_ms = verdict.caught_up_at.map(|seen| match totals.last_ack {
        Some(last) => seen.saturating_duration_since(last).as_secs_f64() * 1000.0,
        None => 0.0,
    });
    Ok(VerifyReport {
        exact: verdict.comparison.exact(),
        keys: totals.sums.iter().filter(|s| s.acknowledged != 0).count(),
        increments: totals.acknowledged,
        acknowledged_sum: totals.sums.iter().map(|s| s.acknowledged).sum(),
        unknown: totals.unknown,
        freshness_ms,
        mismatched_keys: verdict.comparison.mismatched_keys,
        mismatches: verdict.comparison.mismatches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadConfig,
    }

    fn parse(args: &[&str]) -> Result<LoadConfig, clap::Error> {
        let mut all = vec!["load"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| c.load)
    }

    #[test]
    fn defaults_are_as_documented() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.url, "http://127.0.0.1:3333");
        assert_eq!(c.connections, 64);
        assert_eq!(c.duration, Duration::from_secs(10));
        assert_eq!(c.requests, None);
        assert_eq!(c.keys, 10_000);
        assert_eq!(c.distribution, Distribution::Uniform);
        assert_eq!(c.zipf_exponent, 1.0);
        assert_eq!(c.max_value, 10);
        assert_eq!(c.key_prefix, None);
        assert_eq!(c.method, LoadMethod::Post);
        assert_eq!(c.path, "/increment");
        assert!(!c.verify);
        assert_eq!(c.verify_timeout, Duration::from_secs(30));
    }

    #[test]
    fn requests_replace_the_duration_but_not_both() {
        assert_eq!(parse(&["--requests", "500"]).unwrap().requests, Some(500));
        assert!(parse(&["--requests", "500", "--duration", "5s"]).is_err());
    }

    #[test]
    fn verify_needs_a_database_url() {
        assert!(parse(&["--verify"]).is_err());
        let c = parse(&["--verify", "--database-url", "postgres://u@localhost/db"]).unwrap();
        assert!(c.verify);
        assert!(parse(&["--verify", "--database-url", "postgres://u@h:port/db"]).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["--connections", "0"][..],
            &["--keys", "0"],
            &["--max-value", "0"],
            &["--zipf-exponent", "-1"],
            &["--duration", "0s"],
            &["--key-prefix", "has space"],
            &["--distribution", "pareto"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[tokio::test]
    async fn verify_with_get_is_refused_before_any_request() {
        let c = parse(&[
            "--method",
            "get",
            "--path",
            "/health",
            "--verify",
            "--database-url",
            "postgres://u@localhost/db",
        ])
        .unwrap();
        let err = run(c).await.unwrap_err().to_string();
        assert!(err.contains("--method post"), "{err}");
    }
}
