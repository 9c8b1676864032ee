//! Rate limits (`--rate-limit N/PERIOD`): a token bucket per client, from the `governor`
//! crate. A client may send `N` requests at once and then one more every `PERIOD / N`.
//!
//! A node limits what it sees: behind a balancer spreading clients over `n` nodes, a client
//! gets up to `n` times the limit in all (docs/security.md). Idle clients are forgotten
//! ([`Limiter::forget_idle`], run every minute), so the limiter's memory follows the clients
//! active in the last period, not every client ever seen.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// `N` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: NonZeroU32,
    pub period: Duration,
}

impl FromStr for RateLimit {
    type Err = String;

    /// `1000/5s`, `10/1m`; `100/s` is `100/1s`.
    fn from_str(s: &str) -> Result<Self, String> {
        const EXAMPLES: &str = "write N/PERIOD, e.g. 1000/5s or 60/1m";
        let (n, period) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a rate; {EXAMPLES}"))?;
        let requests = n
            .trim()
            .parse::<NonZeroU32>()
            .map_err(|_| format!("{n:?} is not a number of requests from 1; {EXAMPLES}"))?;
        let period = period.trim();
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(period)
        } else {
            humantime::parse_duration(&format!("1{period}"))
        }
        .map_err(|e| format!("{period:?} is not a period ({e}); {EXAMPLES}"))?;
        if period < Duration::from_millis(1) || period > Duration::from_secs(24 * 3600) {
            return Err("the period must be from 1ms to 24h".into());
        }
        if period / requests.get() < Duration::from_nanos(1) {
            return Err("too many requests for so short a period".into());
        }
        Ok(RateLimit { requests, period })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.requests,
            humantime::format_duration(self.period)
        )
    }
}

/// Who a request counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// An API key, by its id.
    Key(Arc<str>),
    /// A user logged in with a session.
    User(i64),
    /// Anyone else, by address.
    Addr(IpAddr),
}

/// What the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Requests a client may send at once (`N`).
    pub limit: u32,
    /// Requests it may still send now.
    pub remaining: u32,
    /// Until it may send `limit` again.
    pub reset: Duration,
}

/// A request over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Until the client may send one more.
    pub retry_after: Duration,
    pub allowance: Allowance,
}

type Keyed =
    RateLimiter<Client, DefaultKeyedStateStore<Client>, DefaultClock, StateInformationMiddleware>;

/// The node's token buckets, one per client. A reload may change the rate
/// ([`Limiter::set_rate`]): governor's quota is fixed per limiter, so a new rate is a new set
/// of buckets, swapped in whole.
pub struct Limiter {
    current: ArcSwap<Buckets>,
}

/// The buckets of one rate.
struct Buckets {
    keyed: Keyed,
    limit: u32,
    /// Time to earn one request back.
    interval: Duration,
}

impl Buckets {
    fn new(rate: RateLimit) -> Buckets {
        let interval = rate.period / rate.requests.get();
        let quota = Quota::with_period(interval)
            .expect("the period per request is at least 1ns (checked when parsed)")
            .allow_burst(rate.requests);
        Buckets {
            keyed: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            limit: rate.requests.get(),
            interval,
        }
    }

    fn allowance(&self, remaining: u32) -> Allowance {
        Allowance {
            limit: self.limit,
            remaining,
            reset: self.interval * (self.limit - remaining.min(self.limit)),
        }
    }
}

impl Limiter {
    pub fn new(rate: RateLimit) -> Limiter {
        Limiter {
            current: ArcSwap::from_pointee(Buckets::new(rate)),
        }
    }

    /// Limits at `rate` from now on. Every client starts again with a full bucket.
    pub fn set_rate(&self, rate: RateLimit) {
        self.current.store(Arc::new(Buckets::new(rate)));
    }

    /// Takes one request from `client`'s bucket, or says how long it must wait.
    pub fn check(&self, client: &Client) -> Result<Allowance, Refusal> {
        let buckets = self.current.load();
        match buckets.keyed.check_key(client) {
            Ok(state) => Ok(buckets.allowance(state.remaining_burst_capacity())),
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(buckets.keyed.clock().now());
                let mut allowance = buckets.allowance(0);
                allowance.reset = allowance.reset.max(retry_after);
                Err(Refusal {
                    retry_after,
                    allowance,
                })
            }
        }
    }

    /// Forgets clients whose buckets are full again: they are as new.
    pub fn forget_idle(&self) {
        let buckets = self.current.load();
        buckets.keyed.retain_recent();
        buckets.keyed.shrink_to_fit();
    }

    /// Clients remembered now.
    pub fn clients(&self) -> usize {
        self.current.load().keyed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_written_n_per_period() {
        let r: RateLimit = "1000/5s".parse().unwrap();
        assert_eq!(r.requests.get(), 1000);
        assert_eq!(r.period, Duration::from_secs(5));
        assert_eq!(
            "100/s".parse::<RateLimit>().unwrap().period,
            Duration::from_secs(1)
        );
        assert_eq!("60 / 1m".parse::<RateLimit>().unwrap().to_string(), "60/1m");
        for bad in ["", "5", "0/1s", "x/1s", "5/soon", "5/0s", "5/2days"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_and_others_are_apart() {
        let limiter = Limiter::new("3/3s".parse().unwrap());
        let a = Client::Addr([10, 0, 0, 1].into());
        let remaining: Vec<u32> = (0..3)
            .map(|_| limiter.check(&a).unwrap().remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refusal = limiter.check(&a).unwrap_err();
        assert!(
            refusal.retry_after > Duration::ZERO && refusal.retry_after <= Duration::from_secs(1)
        );
        assert_eq!(refusal.allowance.remaining, 0);
        assert_eq!(refusal.allowance.limit, 3);
        assert!(limiter.check(&Client::User(7)).is_ok(), "another client");
        assert_eq!(limiter.clients(), 2);
    }
}
