//! Every metric Tally exports, declared in one place, in Prometheus conventions: one `tally_`
//! prefix, unit suffixes, `_total` counters, small fixed label sets. `docs/operations.md`
//! says what each one means.
//!
//! Beside them, the process metrics every Prometheus client exports (`process_*`: resident
//! memory, CPU time, open files), read from the operating system at each scrape.
//!
//! Each `App` owns its registry (no process-global recorder), so several apps in one test
//! binary keep their figures apart. Metrics touched by every request are resolved to their
//! label set once, at start ([`RouteMetrics`]), so that the request path pays an atomic
//! increment, not a label lookup.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatusLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub node_id: String,
    pub mode: String,
    pub durability: String,
}

/// The metrics of one app.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by route and status.
    pub http_requests: Family<RouteStatusLabels, Counter>,
    /// Seconds from a request's arrival to its answer, by route.
    pub http_request_duration: Family<RouteLabel, Histogram>,
    /// Increments acknowledged to clients.
    pub increments_accepted: Counter,
    /// Increments refused, by reason: `invalid` (400 on input), `total_out_of_range`,
    /// `refused_by_database` (a flush left a key's delta out), `pending_keys_full`,
    /// `journal_full`, `journal_failed`, `outcome_unknown`, `database_unavailable`,
    /// `shutting_down`. A delta a flush leaves out counts once, however many increments it
    /// sums.
    pub increments_rejected: Family<ReasonLabel, Counter>,
    /// Requests with an `Idempotency-Key`, by outcome: `applied` (now), `replayed` (a retry
    /// given its first answer), `reused` (422), `failed`.
    pub idempotent_requests: Family<OutcomeLabel, Counter>,
    /// HTTP connections open now.
    pub http_connections: Gauge,
    /// Connections closed as soon as accepted, past `--max-connections`.
    pub connections_refused: Counter,
    /// Requests refused with 429 by the rate limit.
    pub rate_limited: Counter,
    /// Clients the rate limiter remembers (set when scraped).
    pub rate_limit_clients: Gauge,
    /// Requests refused with 401, by reason: `missing` (no credentials) or `invalid` (wrong,
    /// unknown, revoked or expired ones).
    pub auth_refused: Family<ReasonLabel, Counter>,
    /// Items (`POST /items`) acknowledged to clients, repeats included.
    pub items_accepted: Counter,
    /// Items refused, by the reasons of `increments_rejected`.
    pub items_rejected: Family<ReasonLabel, Counter>,
    /// Flush attempts by outcome: `applied`, `already_applied` or `failed`.
    pub flushes: Family<OutcomeLabel, Counter>,
    /// Configuration reloads (SIGHUP, `--watch-config`) by outcome: `applied` or `failed`.
    pub config_reloads: Family<OutcomeLabel, Counter>,
    /// Seconds one flush attempt took.
    pub flush_duration: Histogram,
    /// Rows written by flushes.
    pub flushed_rows: Counter,
    /// Keys held in memory waiting for PostgreSQL (set when scraped).
    pub pending_keys: Gauge,
    /// The bound on those keys, `--max-pending-keys`.
    pub pending_keys_limit: Gauge,
    /// Bytes of key and delta those keys hold (set when scraped).
    pub pending_bytes: Gauge,
    /// Age of the oldest increment PostgreSQL does not have yet (set when scraped).
    pub oldest_unpersisted_age: Gauge<f64, AtomicU64>,
    /// Bytes of journal on disk (set when scraped).
    pub journal_bytes: Gauge,
    /// The bound on those bytes, `--max-journal-bytes`.
    pub journal_limit_bytes: Gauge,
    /// Seconds one journal fdatasync took.
    pub journal_fsync_duration: Histogram,
    /// Requests written in one sync-mode statement (`crate::sync_writer`).
    pub sync_group_size: Histogram,
    /// PostgreSQL pool connections by state, `idle` or `in_use` (set when scraped).
    pub db_pool_connections: Family<StateLabel, Gauge>,
    /// The pool's size limit.
    pub db_pool_max_connections: Gauge,
    /// Whether the node is ready, by reason: 1 for the reason `/ready` gives now (`ok` when
    /// ready), 0 for every other one of [`crate::readiness::REASONS`] (set when scraped).
    pub ready: Family<ReasonLabel, Gauge>,
    /// Always 1; the labels say what runs.
    pub build_info: Family<BuildLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(|| {
                // 50 µs to about 3 s: from a buffered increment to a slow sync request.
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
            }),
            increments_accepted: Counter::default(),
            increments_rejected: Family::default(),
            items_accepted: Counter::default(),
            idempotent_requests: Family::default(),
            http_connections: Gauge::default(),
            connections_refused: Counter::default(),
            rate_limited: Counter::default(),
            rate_limit_clients: Gauge::default(),
            auth_refused: Family::default(),
            items_rejected: Family::default(),
            flushes: Family::default(),
            config_reloads: Family::default(),
            flush_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            flushed_rows: Counter::default(),
            pending_keys: Gauge::default(),
            pending_keys_limit: Gauge::default(),
            pending_bytes: Gauge::default(),
            oldest_unpersisted_age: Gauge::default(),
            journal_bytes: Gauge::default(),
            journal_limit_bytes: Gauge::default(),
            journal_fsync_duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
            // 1 to 1,024: up to a group's cap.
            sync_group_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            db_pool_connections: Family::default(),
            db_pool_max_connections: Gauge::default(),
            ready: Family::default(),
            build_info: Family::default(),
        };
        // Both outcomes from the start, so that a dashboard shows 0 rather than no data.
        for outcome in ["applied", "failed"] {
            drop(m.config_reloads.get_or_create(&OutcomeLabel { outcome }));
        }
        m.register_all()
    }
}

impl Metrics {
    fn register_all(mut self) -> Self {
        self.registry.register_collector(Box::new(ProcessMetrics));
        let r = self.registry.sub_registry_with_prefix("tally");
        r.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            self.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its answer, by route",
            Unit::Seconds,
            self.http_request_duration.clone(),
        );
        r.register(
            "increments_accepted",
            "Increments acknowledged to clients",
            self.increments_accepted.clone(),
        );
        r.register(
            "increments_rejected",
            "Increments refused, by reason",
            self.increments_rejected.clone(),
        );
        r.register(
            "idempotent_requests",
            "Requests with an Idempotency-Key, by outcome",
            self.idempotent_requests.clone(),
        );
        r.register(
            "http_connections",
            "HTTP connections open now",
            self.http_connections.clone(),
        );
        r.register(
            "http_connections_refused",
            "Connections closed as soon as accepted, past --max-connections",
            self.connections_refused.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused with 429 by the rate limit",
            self.rate_limited.clone(),
        );
        r.register(
            "rate_limit_clients",
            "Clients the rate limiter remembers",
            self.rate_limit_clients.clone(),
        );
        r.register(
            "auth_refused",
            "Requests refused with 401, by reason: missing or invalid credentials",
            self.auth_refused.clone(),
        );
        r.register(
            "items_accepted",
            "Items acknowledged to clients, repeats included",
            self.items_accepted.clone(),
        );
        r.register(
            "items_rejected",
            "Items refused, by reason",
            self.items_rejected.clone(),
        );
        r.register(
            "flushes",
            "Flush attempts, by outcome",
            self.flushes.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP, --watch-config), by outcome: applied or failed",
            self.config_reloads.clone(),
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
        r.register(
            "pending_keys_limit",
            "The bound on keys held in memory (--max-pending-keys); past it new keys are refused",
            self.pending_keys_limit.clone(),
        );
        r.register_with_unit(
            "pending",
            "Bytes of keys and deltas held in memory waiting for PostgreSQL",
            Unit::Bytes,
            self.pending_bytes.clone(),
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
            "journal_limit",
            "The bound on journal bytes (--max-journal-bytes); past it increments are refused",
            Unit::Bytes,
            self.journal_limit_bytes.clone(),
        );
        r.register_with_unit(
            "journal_fsync_duration",
            "Duration of one journal fdatasync (one per group of requests)",
            Unit::Seconds,
            self.journal_fsync_duration.clone(),
        );
        r.register(
            "sync_group_size",
            "Requests written together in one sync-mode statement and transaction",
            self.sync_group_size.clone(),
        );
        r.register(
            "db_pool_connections",
            "PostgreSQL pool connections, by state",
            self.db_pool_connections.clone(),
        );
        r.register(
            "db_pool_max_connections",
            "Most connections the PostgreSQL pool opens",
            self.db_pool_max_connections.clone(),
        );
        r.register(
            "ready",
            "1 for the reason GET /ready gives now (ok when ready), 0 for the others",
            self.ready.clone(),
        );
        r.register(
            "build_info",
            "Always 1; the labels name the version, the node and its modes",
            self.build_info.clone(),
        );
        self
    }

    /// Counts `n` refused increments.
    pub fn reject(&self, reason: &'static str, n: u64) {
        self.increments_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }

    /// Counts one flush attempt.
    pub fn flush(&self, outcome: &'static str, seconds: f64) {
        self.flushes.get_or_create(&OutcomeLabel { outcome }).inc();
        self.flush_duration.observe(seconds);
    }

    /// Records why the node is (not) ready: `reason` is 1, every other reason 0.
    pub fn set_ready(&self, reason: &'static str) {
        for r in crate::readiness::REASONS {
            self.ready
                .get_or_create(&ReasonLabel { reason: r })
                .set(i64::from(r == reason));
        }
    }

    /// The handles of one route, resolved once so that recording costs no label lookup.
    pub fn route(&self, route: &'static str) -> RouteMetrics {
        RouteMetrics {
            route,
            duration: self
                .http_request_duration
                .get_or_create(&RouteLabel { route })
                .clone(),
            statuses: Default::default(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The process metrics of the Prometheus conventions, read from `/proc` at each scrape by the
/// `metrics-process` crate (the same figures as Go's and Java's clients give). A figure the
/// system does not give is left out rather than exported as 0; so is an unlimited file limit,
/// so that a ratio of open to allowed files is never a division by zero.
#[derive(Debug)]
struct ProcessMetrics;

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = metrics_process::collector::collect();
        if let Some(seconds) = m.cpu_seconds_total {
            let c = ConstCounter::new(seconds);
            c.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(Unit::Bytes),
                m.resident_memory_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes",
                Some(Unit::Bytes),
                m.virtual_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                None,
                m.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                m.max_fds.filter(|n| *n > 0),
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                None,
                m.threads,
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds",
                Some(Unit::Seconds),
                m.start_time_seconds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(value) = value {
                let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                g.encode(encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

/// The statuses Tally answers with; others are counted too, through a slower lookup.
const COMMON_STATUSES: [u16; 10] = [200, 202, 400, 404, 405, 408, 413, 415, 429, 503];

/// One route's request counters and latency histogram.
pub struct RouteMetrics {
    route: &'static str,
    duration: Histogram,
    /// The counter of each common status, looked up on its first use (so that a status never
    /// answered is not exported as a zero) and kept.
    statuses: [OnceLock<Counter>; COMMON_STATUSES.len()],
}

impl RouteMetrics {
    /// Records one answered request.
    pub fn record(&self, metrics: &Metrics, status: u16, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
        let labels = || RouteStatusLabels {
            route: self.route,
            status,
        };
        match COMMON_STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.statuses[i]
                .get_or_init(|| metrics.http_requests.get_or_create(&labels()).clone())
                .inc(),
            None => metrics.http_requests.get_or_create(&labels()).inc(),
        };
    }
}
