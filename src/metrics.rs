//! Every metric Tally exports, declared in one place, in Prometheus conventions: one `tally_`
//! prefix, unit suffixes, `_total` counters, small fixed label sets.
//!
//! Each `App` owns its registry (no process-global recorder), so several apps in one test
//! binary keep their figures apart.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// The metrics of one app.
pub struct Metrics {
    registry: Registry,
    /// Increments acknowledged to clients.
    pub increments_accepted: Counter,
    /// Increments refused after validation (full buffer, out of range, ...), by reason.
    pub increments_rejected: Family<ReasonLabel, Counter>,
    /// Flush attempts by outcome: `applied`, `already_applied` or `failed`.
    pub flushes: Family<OutcomeLabel, Counter>,
    /// Seconds one flush attempt took.
    pub flush_duration: Histogram,
    /// Rows written by flushes.
    pub flushed_rows: Counter,
    /// Keys held in memory waiting for PostgreSQL (set when scraped).
    pub pending_keys: Gauge,
    /// Age of the oldest increment PostgreSQL does not have yet (set when scraped).
    pub oldest_unpersisted_age: Gauge<f64, AtomicU64>,
    /// Bytes of journal on disk (set when scraped).
    pub journal_bytes: Gauge,
    /// Seconds one journal fdatasync took.
    pub journal_fsync_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Registry::with_prefix("tally"),
            increments_accepted: Counter::default(),
            increments_rejected: Family::default(),
            flushes: Family::default(),
            flush_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            flushed_rows: Counter::default(),
            pending_keys: Gauge::default(),
            oldest_unpersisted_age: Gauge::default(),
            journal_bytes: Gauge::default(),
            journal_fsync_duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
        };
        m.register_all()
    }
}

impl Metrics {
    fn register_all(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "increments_accepted",
            "Increments acknowledged to clients",
            self.increments_accepted.clone(),
        );
        r.register(
            "increments_rejected",
            "Valid increments refused, by reason",
            self.increments_rejected.clone(),
        );
        r.register(
            "flushes",
            "Flush attempts, by outcome",
            self.flushes.clone(),
        );
        r.register_with_unit(
            "flush_duration",
            "Duration of one flush attempt",
            Unit::Seconds,
            self.flush_duration.clone(),
        );
        r.register(
            "flushed_rows",
            "Rows written by flushes",
            self.flushed_rows.clone(),
        );
        r.register(
            "pending_keys",
            "Keys held in memory waiting for PostgreSQL",
            self.pending_keys.clone(),
        );
        r.register_with_unit(
            "oldest_unpersisted_increment_age",
            "Age of the oldest acknowledged increment not yet in PostgreSQL",
            Unit::Seconds,
            self.oldest_unpersisted_age.clone(),
        );
        r.register_with_unit(
            "journal",
            "Bytes of journal segments on disk",
            Unit::Bytes,
            self.journal_bytes.clone(),
        );
        r.register_with_unit(
            "journal_fsync_duration",
            "Duration of one journal fdatasync (one per group of requests)",
            Unit::Seconds,
            self.journal_fsync_duration.clone(),
        );
        self
    }

    /// Counts one refused increment.
    pub fn reject(&self, reason: &'static str) {
        self.increments_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one flush attempt.
    pub fn flush(&self, outcome: &'static str, seconds: f64) {
        self.flushes.get_or_create(&OutcomeLabel { outcome }).inc();
        self.flush_duration.observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
