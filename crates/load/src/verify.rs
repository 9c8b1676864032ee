//! The check after a load run: what PostgreSQL holds for the run's keys against what the
//! server acknowledged.
//!
//! For every key, `acknowledged <= total <= acknowledged + unknown`, where `unknown` sums the
//! requests whose outcome the generator never learned (a connection lost or a timeout after
//! sending); with no such request the total must equal the acknowledged sum exactly. A key in
//! the database that was never sent is a mismatch too. The comparison is a pure function over
//! two maps ([`compare`]); [`Verifier`] only fetches the second map from PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use tally_postgres::DatabaseUrl;

/// How often PostgreSQL is asked while waiting for the totals; the freshness figure is no finer.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Most mismatches kept for the report.
pub const MAX_SHOWN: usize = 10;

/// What a key's total in PostgreSQL may be.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Sum of the values the server answered with a 2xx.
    pub acknowledged: i64,
    /// Sum of the values whose outcome is unknown.
    pub unknown: i64,
}

/// How a key's total is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    /// Below the acknowledged sum: acknowledged increments were lost.
    Missing,
    /// Above the acknowledged sum plus the unknown one: something was applied twice.
    Excess,
    /// A key of this run that was never sent holds a total.
    NeverSent,
}

/// One key whose total is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub key: String,
    pub kind: MismatchKind,
    /// The lowest and highest correct totals.
    pub expected_min: i64,
    pub expected_max: i64,
    /// The total in PostgreSQL (0 when there is no row).
    pub actual: i64,
}

/// The outcome of [`compare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// How many keys were wrong.
    pub mismatched_keys: usize,
    /// The first [`MAX_SHOWN`] of them, in key order (shorter keys first).
    pub mismatches: Vec<Mismatch>,
}

impl Comparison {
    /// Whether every total was within its bounds.
    pub fn exact(&self) -> bool {
        self.mismatched_keys == 0
    }
}

/// Compares the totals in PostgreSQL (`actual`, a missing key meaning 0) with what was sent.
pub fn compare(expected: &BTreeMap<String, Expected>, actual: &HashMap<String, i64>) -> Comparison {
    let mut mismatches = Vec::new();
    for (key, e) in expected {
        let total = actual.get(key).copied().unwrap_or(0);
        let max = e.acknowledged.saturating_add(e.unknown);
        let kind = if total < e.acknowledged {
            MismatchKind::Missing
        } else if total > max {
            MismatchKind::Excess
        } else {
            continue;
        };
        mismatches.push(Mismatch {
            key: key.clone(),
            kind,
            expected_min: e.acknowledged,
            expected_max: max,
            actual: total,
        });
    }
    for (key, &total) in actual {
        if !expected.contains_key(key) {
            mismatches.push(Mismatch {
                key: key.clone(),
                kind: MismatchKind::NeverSent,
                expected_min: 0,
                expected_max: 0,
                actual: total,
            });
        }
    }
    let mismatched_keys = mismatches.len();
    // Shorter keys first: within one prefix, `run-9` then comes before `run-10`.
    mismatches.sort_by(|a, b| (a.key.len(), &a.key).cmp(&(b.key.len(), &b.key)));
    mismatches.truncate(MAX_SHOWN);
    Comparison {
        mismatched_keys,
        mismatches,
    }
}

/// Whether PostgreSQL holds at least every acknowledged sum: the moment to stop waiting.
pub fn caught_up(expected: &BTreeMap<String, Expected>, actual: &HashMap<String, i64>) -> bool {
    expected
        .iter()
        .all(|(key, e)| actual.get(key).copied().unwrap_or(0) >= e.acknowledged)
}

/// The totals of one run's keys in PostgreSQL, read through one connection.
pub struct Verifier {
    client: tokio_postgres::Client,
    key_start: String,
}

/// What [`Verifier::wait_and_compare`] found.
pub struct Verdict {
    pub comparison: Comparison,
    /// When PostgreSQL first held every acknowledged sum; `None` if it never did in time.
    pub caught_up_at: Option<Instant>,
}

impl Verifier {
    /// Connects to `url`, and refuses a prefix that already has rows: totals from an earlier
    /// run would make this one's look wrong.
    pub async fn connect(url: &DatabaseUrl, key_start: String) -> anyhow::Result<Verifier> {
        let (client, connection) = url
            .endpoint()
            .connect()
            .await
            .context("cannot connect to the database to verify")?;
        tokio::spawn(connection);
        let verifier = Verifier { client, key_start };
        let existing = verifier
            .totals()
            .await
            .context("cannot read the counters table")?;
        if !existing.is_empty() {
            bail!(
                "the database already holds {} keys starting with {:?}; choose another --key-prefix",
                existing.len(),
                verifier.key_start
            );
        }
        Ok(verifier)
    }

    /// The totals of every key that starts with the run's prefix.
    pub async fn totals(&self) -> anyhow::Result<HashMap<String, i64>> {
        // `left()` rather than LIKE: no wildcard in the prefix to escape, and it means the
        // same in every collation.
        let rows = self
            .client
            .query(
                "SELECT key, value FROM counters WHERE left(key, char_length($1)) = $1",
                &[&self.key_start],
            )
            .await
            .map_err(describe)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Polls until PostgreSQL holds every acknowledged sum or `timeout` passes, then compares
    /// what it holds.
    pub async fn wait_and_compare(
        &self,
        expected: &BTreeMap<String, Expected>,
        timeout: Duration,
    ) -> anyhow::Result<Verdict> {
        let deadline = Instant::now() + timeout;
        loop {
            // The query's snapshot is taken when it starts, so that is when the totals were
            // seen.
            let asked = Instant::now();
            let actual = self.totals().await?;
            let done = caught_up(expected, &actual);
            if done || Instant::now() >= deadline {
                return Ok(Verdict {
                    comparison: compare(expected, &actual),
                    caught_up_at: done.then_some(asked),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// A server error's `Display` is only "db error"; its message says what went wrong.
fn describe(e: tokio_postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => anyhow::anyhow!("{}: {}", db.code().code(), db.message()),
        None => anyhow::Error::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(entries: &[(&str, i64, i64)]) -> BTreeMap<String, Expected> {
        entries
            .iter()
            .map(|&(k, acknowledged, unknown)| {
                (
                    k.to_owned(),
                    Expected {
                        acknowledged,
                        unknown,
                    },
                )
            })
            .collect()
    }

    fn actual(entries: &[(&str, i64)]) -> HashMap<String, i64> {
        entries.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn equal_totals_are_exact() {
        let e = expected(&[("r-0", 10, 0), ("r-1", 3, 0)]);
        let a = actual(&[("r-0", 10), ("r-1", 3)]);
        assert!(caught_up(&e, &a));
        assert!(compare(&e, &a).exact());
    }

    #[test]
    fn a_lost_increment_is_missing() {
        let e = expected(&[("r-0", 10, 0), ("r-1", 3, 0)]);
        let a = actual(&[("r-0", 7), ("r-1", 3)]);
        assert!(!caught_up(&e, &a));
        let c = compare(&e, &a);
        assert_eq!(c.mismatched_keys, 1);
        assert_eq!(
            c.mismatches,
            vec![Mismatch {
                key: "r-0".into(),
                kind: MismatchKind::Missing,
                expected_min: 10,
                expected_max: 10,
                actual: 7,
            }]
        );
    }

    #[test]
    fn a_key_missing_from_the_database_is_missing() {
        let e = expected(&[("r-0", 4, 0)]);
        let c = compare(&e, &actual(&[]));
        assert_eq!(c.mismatches[0].kind, MismatchKind::Missing);
        assert_eq!(c.mismatches[0].actual, 0);
    }

    #[test]
    fn a_doubled_increment_is_excess() {
        let e = expected(&[("r-0", 10, 0)]);
        let a = actual(&[("r-0", 20)]);
        assert!(
            caught_up(&e, &a),
            "waiting stops; the comparison catches it"
        );
        let c = compare(&e, &a);
        assert_eq!(c.mismatches[0].kind, MismatchKind::Excess);
        assert_eq!(
            (c.mismatches[0].expected_max, c.mismatches[0].actual),
            (10, 20)
        );
    }

    #[test]
    fn unknown_outcomes_widen_the_range_and_nothing_more() {
        let e = expected(&[("r-0", 10, 5)]);
        for ok in [10, 12, 15] {
            assert!(compare(&e, &actual(&[("r-0", ok)])).exact(), "{ok}");
        }
        for (bad, kind) in [(9, MismatchKind::Missing), (16, MismatchKind::Excess)] {
            let c = compare(&e, &actual(&[("r-0", bad)]));
            assert_eq!(c.mismatches[0].kind, kind, "{bad}");
        }
        // A key only ever sent with an unknown outcome may be absent, or hold up to it.
        let e = expected(&[("r-1", 0, 4)]);
        assert!(compare(&e, &actual(&[])).exact());
        assert!(compare(&e, &actual(&[("r-1", 4)])).exact());
    }

    #[test]
    fn a_key_never_sent_is_a_mismatch() {
        let e = expected(&[("r-0", 1, 0)]);
        let c = compare(&e, &actual(&[("r-0", 1), ("r-99", 5)]));
        assert_eq!(c.mismatched_keys, 1);
        assert_eq!(c.mismatches[0].key, "r-99");
        assert_eq!(c.mismatches[0].kind, MismatchKind::NeverSent);
    }

    #[test]
    fn only_the_first_mismatches_are_kept_but_all_are_counted() {
        let keys: Vec<String> = (0..25).map(|i| format!("r-{i:02}")).collect();
        let e: BTreeMap<String, Expected> = keys
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    Expected {
                        acknowledged: 1,
                        unknown: 0,
                    },
                )
            })
            .collect();
        let c = compare(&e, &HashMap::new());
        assert_eq!(c.mismatched_keys, 25);
        assert_eq!(c.mismatches.len(), MAX_SHOWN);
        assert_eq!(c.mismatches[0].key, "r-00");
    }
}
