//! One load worker: a task with its own connection, random number generator, latency
//! histogram and per-key sums, sending one request at a time until the run's budget is spent.
//!
//! Nothing is shared between workers on the request path but two relaxed counters for the
//! progress line and the budget; each worker's results are merged once at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use hdrhistogram::Histogram;
use rand::RngExt;
use rand::rngs::SmallRng;

use super::client::{Client, Outcome, Target};
use super::keys::{KeyPicker, KeySpace};
use super::progress::Progress;

/// Latencies are recorded in microseconds, from 1 µs to 1 hour, to 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// How long a worker waits after failing to connect, so that a server that is down is not
/// hammered with connection attempts.
const CONNECT_BACKOFF: Duration = Duration::from_millis(50);

/// When the run ends.
pub enum Budget {
    /// After this many requests in total, shared by all workers.
    Requests { total: u64, claimed: AtomicU64 },
    /// At this moment; a request in flight then is still completed and counted.
    Until(Instant),
}

impl Budget {
    /// Takes the right to send one more request.
    fn claim(&self) -> bool {
        match self {
            Budget::Requests { total, claimed } => claimed.fetch_add(1, Ordering::Relaxed) < *total,
            Budget::Until(deadline) => Instant::now() < *deadline,
        }
    }
}

/// The sums sent for one key.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeySums {
    /// Sum of values answered with a 2xx: the server promised to count these.
    pub acknowledged: i64,
    /// Sum of values whose outcome is unknown (connection lost or timed out after sending).
    pub unknown: i64,
}

/// What one worker saw.
pub struct WorkerResult {
    /// Requests with an outcome: answered, lost, timed out, or not sent.
    pub requests: u64,
    pub latency: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that failed on the connection, sent or not.
    pub connection_errors: u64,
    pub timeouts: u64,
    /// Requests answered with a 2xx.
    pub acknowledged: u64,
    /// Requests whose outcome is unknown.
    pub unknown: u64,
    /// Per key index, for POST runs.
    pub sums: hashbrown::HashMap<u32, KeySums>,
    /// When the last 2xx arrived.
    pub last_ack: Option<Instant>,
    /// The first connection error, to show the user why.
    pub first_error: Option<String>,
}

/// What a worker needs; shared by all workers of a run.
pub struct Plan<'a> {
    pub target: &'a Target,
    pub keys: &'a KeySpace,
    pub picker: &'a KeyPicker,
    /// Values are uniform in `1..=max_value`; `None` sends no body (GET).
    pub max_value: Option<u32>,
    pub budget: &'a Budget,
    pub progress: &'a Progress,
}

/// Runs one worker until the budget is spent.
pub async fn run(plan: Plan<'_>, mut rng: SmallRng) -> WorkerResult {
    let mut result = WorkerResult {
        requests: 0,
        latency: new_histogram(),
        statuses: BTreeMap::new(),
        connection_errors: 0,
        timeouts: 0,
        acknowledged: 0,
        unknown: 0,
        sums: hashbrown::HashMap::new(),
        last_ack: None,
        first_error: None,
    };
    let mut client = Client::new(plan.target);
    // One buffer for every body: once hyper has written a body and dropped it, `reserve`
    // reclaims the same allocation for the next one.
    let mut buffer = BytesMut::with_capacity(128);
    while plan.budget.claim() {
        let (key, value, body) = match plan.max_value {
            Some(max) => {
                let key = plan.picker.pick(&mut rng);
                let value = rng.random_range(1..=max);
                write_body(&mut buffer, plan.keys.key(key), value);
                (key, i64::from(value), buffer.split().freeze())
            }
            None => (0, 0, bytes::Bytes::new()),
        };
        let outcome = client.send(plan.target.request(body)).await;
        result.requests += 1;
        let failed = match outcome {
            Outcome::Answered { status, latency } => {
                result.latency.saturating_record(latency.as_micros() as u64);
                *result.statuses.entry(status.as_u16()).or_default() += 1;
                if status.is_success() {
                    result.acknowledged += 1;
                    result.last_ack = Some(Instant::now());
                    if plan.max_value.is_some() {
                        result.sums.entry(key).or_default().acknowledged += value;
                    }
                    false
                } else {
                    if outcome_unknown(status) {
                        result.unknown += 1;
                        if plan.max_value.is_some() {
                            result.sums.entry(key).or_default().unknown += value;
                        }
                    }
                    true
                }
            }
            Outcome::NotSent(e) => {
                result.connection_errors += 1;
                result.first_error.get_or_insert_with(|| format!("{e:#}"));
                tokio::time::sleep(CONNECT_BACKOFF).await;
                true
            }
            Outcome::Lost(e) => {
                result.connection_errors += 1;
                result.first_error.get_or_insert_with(|| format!("{e:#}"));
                result.unknown += 1;
                if plan.max_value.is_some() {
                    result.sums.entry(key).or_default().unknown += value;
                }
                true
            }
            Outcome::TimedOut => {
                result.timeouts += 1;
                result.unknown += 1;
                if plan.max_value.is_some() {
                    result.sums.entry(key).or_default().unknown += value;
                }
                true
            }
        };
        plan.progress.record(failed);
    }
    result
}

/// Whether an answer leaves the request's fate unknown: Tally's own 500 (`outcome_unknown`,
/// it cannot tell whether it will count the request), and a proxy's 502 or 504, sent when the
/// node it forwarded the request to failed before answering, which may have counted it.
fn outcome_unknown(status: hyper::StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 504)
}

/// Writes `{"key":"<key>","value":<value>}` into `buffer`. Keys come from [`KeySpace`], whose
/// alphabet never needs JSON escaping.
fn write_body(buffer: &mut BytesMut, key: &str, value: u32) {
    let mut digits = itoa::Buffer::new();
    let value = digits.format(value);
    buffer.reserve(key.len() + value.len() + 20);
    buffer.put_slice(b"{\"key\":\"");
    buffer.put_slice(key.as_bytes());
    buffer.put_slice(b"\",\"value\":");
    buffer.put_slice(value.as_bytes());
    buffer.put_u8(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_the_increment_json() {
        let mut buffer = BytesMut::new();
        write_body(&mut buffer, "run-7", 42);
        let first = buffer.split().freeze();
        let parsed: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(parsed, serde_json::json!({"key": "run-7", "value": 42}));
        drop(first);
        write_body(&mut buffer, "run-8", 1);
        assert_eq!(&buffer[..], br#"{"key":"run-8","value":1}"#);
    }

    #[test]
    fn unknown_outcomes_are_tallys_500_and_gateway_failures_and_refusals_are_not() {
        use hyper::StatusCode;
        assert!(outcome_unknown(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(outcome_unknown(StatusCode::BAD_GATEWAY));
        assert!(outcome_unknown(StatusCode::GATEWAY_TIMEOUT));
        assert!(!outcome_unknown(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!outcome_unknown(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn a_request_budget_is_shared_exactly() {
        let budget = Budget::Requests {
            total: 3,
            claimed: AtomicU64::new(0),
        };
        let granted = (0..10).filter(|_| budget.claim()).count();
        assert_eq!(granted, 3);
    }
}
