//! Concurrent clients that keep a ledger of what they sent, and the check of FAULTS.md: for
//! every key, acknowledged <= PostgreSQL's total <= acknowledged + unknown, where unknown
//! counts requests whose outcome the client never learned.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::RngExt;

#[derive(Default, Debug, Clone)]
pub struct Ledger {
    pub acknowledged: BTreeMap<String, i64>,
    pub unknown: BTreeMap<String, i64>,
    /// Answers that were neither 2xx nor a lost connection, by status.
    pub refused: BTreeMap<u16, u64>,
}

impl Ledger {
    pub fn acknowledged_total(&self) -> i64 {
        self.acknowledged.values().sum()
    }

    pub fn unknown_total(&self) -> i64 {
        self.unknown.values().sum()
    }

    /// Adds another ledger's entries to this one.
    pub fn merge(&mut self, other: Ledger) {
        for (k, v) in other.acknowledged {
            *self.acknowledged.entry(k).or_default() += v;
        }
        for (k, v) in other.unknown {
            *self.unknown.entry(k).or_default() += v;
        }
        for (s, n) in other.refused {
            *self.refused.entry(s).or_default() += n;
        }
    }

    /// Checks PostgreSQL's totals against the ledger; the error lists the first mismatches.
    pub fn check(&self, totals: &[(String, i64)]) -> Result<(), String> {
        let totals: BTreeMap<&str, i64> = totals.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let mut problems = Vec::new();
        let keys: std::collections::BTreeSet<&str> = self
            .acknowledged
            .keys()
            .chain(self.unknown.keys())
            .map(String::as_str)
            .chain(totals.keys().copied())
            .collect();
        for key in keys {
            let acked = self.acknowledged.get(key).copied().unwrap_or(0);
            let unknown = self.unknown.get(key).copied().unwrap_or(0);
            let total = totals.get(key).copied().unwrap_or(0);
            if total < acked {
                problems.push(format!(
                    "{key}: LOST {} (total {total}, acknowledged {acked})",
                    acked - total
                ));
            } else if total > acked + unknown {
                problems.push(format!(
                    "{key}: DOUBLED {} (total {total}, acknowledged {acked}, unknown {unknown})",
                    total - acked - unknown
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            problems.truncate(10);
            Err(problems.join("\n"))
        }
    }
}

/// Whether an answer leaves the request's outcome unknown. Tally answers 500 only with
/// `outcome_unknown` (its journal failed after taking the increment, which may still be
/// counted). It never answers 502 or 504; a load balancer does, when the node it forwarded to
/// died or went silent mid-request: the node may have journaled the increment.
pub fn outcome_unknown(status: reqwest::StatusCode) -> bool {
    use reqwest::StatusCode;
    matches!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR | StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Clients sending random increments until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Ledger>>,
}

impl Load {
    /// Starts `clients` tasks posting to `url` (`http://host:port/increment`) random values
    /// on `keys` keys named `<prefix><n>`.
    pub fn start(url: String, clients: usize, keys: usize, prefix: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, http, url, prefix) =
                    (stop.clone(), http.clone(), url.clone(), prefix.to_owned());
                tokio::spawn(async move {
                    let mut ledger = Ledger::default();
                    while !stop.load(Ordering::Relaxed) {
                        let (key, value) = {
                            let mut rng = rand::rng();
                            (
                                format!("{prefix}{}", rng.random_range(0..keys)),
                                rng.random_range(1..=9i64),
                            )
                        };
                        let sent = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(format!(r#"{{"key":"{key}","value":{value}}}"#))
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status().is_success() => {
                                *ledger.acknowledged.entry(key).or_default() += value
                            }
                            Ok(r) if outcome_unknown(r.status()) => {
                                *ledger.unknown.entry(key).or_default() += value
                            }
                            Ok(r) => *ledger.refused.entry(r.status().as_u16()).or_default() += 1,
                            Err(_) => {
                                *ledger.unknown.entry(key).or_default() += value;
                                // The node is gone or restarting: do not spin.
                                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            }
                        }
                    }
                    ledger
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the clients and returns their combined ledger.
    pub async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Ledger::default();
        for t in self.tasks {
            all.merge(t.await.unwrap());
        }
        all
    }
}
