//! What a load run reports: [`LoadReport`], printed as text for people or as one JSON object
//! for scripts (`--json`).

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::verify::{Mismatch, MismatchKind};

/// Everything a run measured and, with `--verify`, what PostgreSQL held afterwards.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// `POST http://127.0.0.1:3333/increment`.
    pub target: String,
    pub connections: usize,
    /// Keys, distribution and prefix, for POST runs.
    pub keys: Option<KeysUsed>,
    /// Requests with an outcome: answered, lost, timed out or not sent.
    pub requests: u64,
    /// From the first request to the end of the last.
    pub duration_secs: f64,
    pub requests_per_sec: f64,
    /// Of the answered requests.
    pub latency_ms: LatencySummary,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that failed on the connection, whether or not they were sent.
    pub connection_errors: u64,
    /// Requests without a complete answer within `--request-timeout`.
    pub timeouts: u64,
    /// The first connection error, if any, to say why.
    pub first_error: Option<String>,
    /// Present with `--verify`.
    pub verify: Option<VerifyReport>,
}

/// The keys of a POST run.
#[derive(Debug, Clone, Serialize)]
pub struct KeysUsed {
    pub count: u32,
    pub distribution: String,
    pub prefix: String,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencySummary {
    /// Summarises a histogram of microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// What the check against PostgreSQL found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Every key's total within its bounds, and no key that was never sent.
    pub exact: bool,
    /// Keys with at least one acknowledged increment.
    pub keys: usize,
    /// Acknowledged increments (2xx answers).
    pub increments: u64,
    /// Sum of their values.
    pub acknowledged_sum: i64,
    /// Requests whose outcome is unknown; each may or may not be counted.
    pub unknown: u64,
    /// From the last acknowledged request to the first poll that saw every acknowledged sum
    /// in PostgreSQL; `None` if that never happened within `--verify-timeout`.
    pub freshness_ms: Option<f64>,
    /// How many keys were wrong.
    pub mismatched_keys: usize,
    /// The first of them, by key.
    pub mismatches: Vec<Mismatch>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "target:     {}, {} connections",
            self.target, self.connections
        )?;
        if let Some(keys) = &self.keys {
            writeln!(
                f,
                "keys:       {} ({}), prefix {}",
                keys.count, keys.distribution, keys.prefix
            )?;
        }
        writeln!(
            f,
            "requests:   {} in {:.3}s = {:.1} requests/s",
            self.requests, self.duration_secs, self.requests_per_sec
        )?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3})",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
        )?;
        writeln!(f, "statuses:")?;
        for (status, count) in &self.statuses {
            writeln!(f, "  {status}: {count}")?;
        }
        writeln!(f, "  connection errors: {}", self.connection_errors)?;
        writeln!(f, "  timeouts: {}", self.timeouts)?;
        if let Some(e) = &self.first_error {
            writeln!(f, "first error: {e}")?;
        }
        if let Some(v) = &self.verify {
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exact {
            write!(
                f,
                "verify: exact ({} keys, {} increments",
                self.keys, self.increments
            )?;
            if self.unknown > 0 {
                write!(
                    f,
                    "; {} of unknown outcome, each counted at most once",
                    self.unknown
                )?;
            }
            writeln!(f, ")")?;
        } else {
            writeln!(
                f,
                "verify: MISMATCH in {} keys ({} keys, {} increments acknowledged, {} of unknown outcome); first {}:",
                self.mismatched_keys,
                self.keys,
                self.increments,
                self.unknown,
                self.mismatches.len()
            )?;
            for m in &self.mismatches {
                writeln!(f, "  {}", MismatchLine(m))?;
            }
        }
        match self.freshness_ms {
            Some(ms) => writeln!(
                f,
                "freshness: {ms:.0} ms from the last acknowledged request to the totals in PostgreSQL"
            ),
            None => writeln!(
                f,
                "freshness: PostgreSQL did not hold every acknowledged increment within --verify-timeout"
            ),
        }
    }
}

struct MismatchLine<'a>(&'a Mismatch);

impl fmt::Display for MismatchLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        let expected = if m.expected_min == m.expected_max {
            m.expected_min.to_string()
        } else {
            format!("{} to {}", m.expected_min, m.expected_max)
        };
        let what = match m.kind {
            MismatchKind::Missing => "acknowledged increments missing",
            MismatchKind::Excess => "more than was sent",
            MismatchKind::NeverSent => "never sent",
        };
        write!(
            f,
            "{}: expected {expected}, PostgreSQL has {} ({what})",
            m.key, m.actual
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(verify: Option<VerifyReport>) -> LoadReport {
        LoadReport {
            target: "POST http://127.0.0.1:3333/increment".into(),
            connections: 8,
            keys: Some(KeysUsed {
                count: 200,
                distribution: "uniform".into(),
                prefix: "load-abc123".into(),
            }),
            requests: 5000,
            duration_secs: 1.25,
            requests_per_sec: 4000.0,
            latency_ms: LatencySummary {
                p50: 0.5,
                p90: 1.0,
                p99: 2.0,
                p99_9: 3.0,
                max: 4.5,
                mean: 0.6,
            },
            statuses: BTreeMap::from([(202, 4990), (503, 10)]),
            connection_errors: 0,
            timeouts: 0,
            first_error: None,
            verify,
        }
    }

    #[test]
    fn text_names_requests_latency_and_statuses() {
        let text = report(None).to_string();
        assert!(
            text.contains("requests:   5000 in 1.250s = 4000.0 requests/s"),
            "{text}"
        );
        assert!(text.contains("p99.9 3.000"), "{text}");
        assert!(text.contains("  202: 4990\n  503: 10\n"), "{text}");
        assert!(text.contains("connection errors: 0"), "{text}");
    }

    #[test]
    fn text_shows_the_verdict_and_the_first_mismatches() {
        let mut v = VerifyReport {
            exact: true,
            keys: 200,
            increments: 4990,
            acknowledged_sum: 27000,
            unknown: 0,
            freshness_ms: Some(812.4),
            mismatched_keys: 0,
            mismatches: vec![],
        };
        let text = report(Some(v.clone())).to_string();
        assert!(
            text.contains("verify: exact (200 keys, 4990 increments)\n"),
            "{text}"
        );
        assert!(text.contains("freshness: 812 ms"), "{text}");

        v.exact = false;
        v.mismatched_keys = 1;
        v.mismatches = vec![Mismatch {
            key: "load-abc123-7".into(),
            kind: MismatchKind::Missing,
            expected_min: 40,
            expected_max: 40,
            actual: 20,
        }];
        let text = report(Some(v)).to_string();
        assert!(text.contains("verify: MISMATCH in 1 keys"), "{text}");
        assert!(
            text.contains("load-abc123-7: expected 40, PostgreSQL has 20"),
            "{text}"
        );
    }

    #[test]
    fn json_is_one_object_with_status_keys_as_strings() {
        let json = serde_json::to_value(report(None)).unwrap();
        assert_eq!(json["statuses"]["202"], 4990);
        assert_eq!(json["latency_ms"]["p99_9"], 3.0);
        assert!(json["verify"].is_null());
    }
}
