//! Per-token sliding-window rate limits (global 200/10 s, marketplace and jobs per second) and the
//! received-request statistics tests assert client behaviour against.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use serde::Serialize;

/// Which extra limit a request falls under, besides the global one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Only the global limit.
    General,
    /// `GET /marketplace/products`.
    Marketplace,
    /// `GET /jobs/:uuid`.
    Jobs,
}

/// Configured limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) general_per_10s: u32,
    pub(crate) marketplace_per_second: u32,
    pub(crate) jobs_per_second: u32,
}

/// A refused request: the documented body text and when a slot frees up.
#[derive(Debug, Clone)]
pub(crate) struct Rejection {
    pub(crate) message: String,
    pub(crate) limit: u32,
    pub(crate) retry_after: Duration,
}

/// Counts of requests a token sent, in the shape `SimulatorHandle::stats` returns.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TokenStats {
    /// Requests received, accepted or not.
    pub total: u64,
    /// Requests answered 429.
    pub rejected_429: u64,
    /// Most requests received in any 10-second window.
    pub max_general_in_any_10s: u64,
    /// Most marketplace requests received in any 1-second window.
    pub max_marketplace_in_any_1s: u64,
    /// Most job polls received in any 1-second window.
    pub max_jobs_in_any_1s: u64,
}

/// Timestamps within the last `span`; exact sliding window (a request at `t` counts until `t + span`).
#[derive(Debug)]
pub(crate) struct Window {
    span: Duration,
    log: VecDeque<Instant>,
    peak: u64,
}

impl Window {
    /// An empty window of length `span`.
    pub(crate) fn new(span: Duration) -> Self {
        Self {
            span,
            log: VecDeque::new(),
            peak: 0,
        }
    }

    fn prune(&mut self, now: Instant) {
        while self
            .log
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.span)
        {
            self.log.pop_front();
        }
    }

    /// Requests currently in the window.
    pub(crate) fn count(&mut self, now: Instant) -> u64 {
        self.prune(now);
        self.log.len() as u64
    }

    /// Records one at `now`, updating the peak.
    pub(crate) fn push(&mut self, now: Instant) {
        self.prune(now);
        self.log.push_back(now);
        self.peak = self.peak.max(self.log.len() as u64);
    }

    /// When the oldest entry leaves the window.
    fn retry_after(&self, now: Instant) -> Duration {
        self.log.front().map_or(Duration::ZERO, |t| {
            (*t + self.span).saturating_duration_since(now)
        })
    }
}

/// One token's limiter state and statistics.
#[derive(Debug)]
pub(crate) struct Meter {
    accepted: [Window; 3],
    received: [Window; 3],
    total: u64,
    rejected: u64,
}

fn windows() -> [Window; 3] {
    [
        Window::new(Duration::from_secs(10)),
        Window::new(Duration::from_secs(1)),
        Window::new(Duration::from_secs(1)),
    ]
}

fn plural(n: u32, unit: &str) -> String {
    if n == 1 {
        format!("{n} {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

impl Default for Meter {
    fn default() -> Self {
        Self {
            accepted: windows(),
            received: windows(),
            total: 0,
            rejected: 0,
        }
    }
}

impl Meter {
    /// Counts a received request in the statistics.
    pub(crate) fn record(&mut self, scope: Scope, now: Instant) {
        self.total += 1;
        self.received[0].push(now);
        match scope {
            Scope::General => {}
            Scope::Marketplace => self.received[1].push(now),
            Scope::Jobs => self.received[2].push(now),
        }
    }

    /// Counts a 429 answered for a reason other than the limits (an injected burst).
    pub(crate) fn note_rejected(&mut self) {
        self.rejected += 1;
    }

    /// Admits the request or says which limit it hit; a 429 is due when the window already holds the limit.
    pub(crate) fn admit(
        &mut self,
        scope: Scope,
        limits: Limits,
        now: Instant,
    ) -> Result<(), Rejection> {
        let extra = match scope {
            Scope::General => None,
            Scope::Marketplace => Some((1, limits.marketplace_per_second)),
            Scope::Jobs => Some((2, limits.jobs_per_second)),
        };
        if self.accepted[0].count(now) >= u64::from(limits.general_per_10s) {
            return Err(self.reject(0, limits.general_per_10s, "per 10 seconds", now));
        }
        if let Some((slot, limit)) = extra
            && self.accepted[slot].count(now) >= u64::from(limit)
        {
            return Err(self.reject(slot, limit, "per second", now));
        }
        self.accepted[0].push(now);
        if let Some((slot, _)) = extra {
            self.accepted[slot].push(now);
        }
        Ok(())
    }

    fn reject(&mut self, slot: usize, limit: u32, per: &str, now: Instant) -> Rejection {
        self.rejected += 1;
        Rejection {
            message: format!("Too many requests: max {} {per}", plural(limit, "request")),
            limit,
            retry_after: self.accepted[slot].retry_after(now),
        }
    }

    /// The statistics so far.
    pub(crate) fn stats(&self) -> TokenStats {
        TokenStats {
            total: self.total,
            rejected_429: self.rejected,
            max_general_in_any_10s: self.received[0].peak,
            max_marketplace_in_any_1s: self.received[1].peak,
            max_jobs_in_any_1s: self.received[2].peak,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        general_per_10s: 200,
        marketplace_per_second: 10,
        jobs_per_second: 1,
    };

    #[test]
    fn general_window_holds_exactly_the_limit() {
        let mut meter = Meter::default();
        let t0 = Instant::now();
        for i in 0..200 {
            assert!(
                meter
                    .admit(Scope::General, LIMITS, t0 + Duration::from_millis(i))
                    .is_ok()
            );
        }
        let refused = meter
            .admit(Scope::General, LIMITS, t0 + Duration::from_secs(9))
            .unwrap_err();
        assert_eq!(
            refused.message,
            "Too many requests: max 200 requests per 10 seconds"
        );
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        // The first request leaves the window exactly 10 s after it arrived.
        assert!(
            meter
                .admit(Scope::General, LIMITS, t0 + Duration::from_secs(10))
                .is_ok()
        );
    }

    #[test]
    fn jobs_limit_uses_the_singular_body() {
        let mut meter = Meter::default();
        let t0 = Instant::now();
        assert!(meter.admit(Scope::Jobs, LIMITS, t0).is_ok());
        let refused = meter
            .admit(Scope::Jobs, LIMITS, t0 + Duration::from_millis(999))
            .unwrap_err();
        assert_eq!(
            refused.message,
            "Too many requests: max 1 request per second"
        );
        assert!(
            meter
                .admit(Scope::Jobs, LIMITS, t0 + Duration::from_secs(1))
                .is_ok()
        );
        assert_eq!(meter.stats().rejected_429, 1);
    }

    #[test]
    fn peaks_are_measured_over_sliding_windows() {
        let mut meter = Meter::default();
        let t0 = Instant::now();
        // 5 at 0.6 s and 5 at 1.4 s: no aligned second holds 10, the sliding one does.
        for t in [600, 1400] {
            for _ in 0..5 {
                meter.record(Scope::Marketplace, t0 + Duration::from_millis(t));
            }
        }
        meter.record(Scope::Marketplace, t0 + Duration::from_millis(2600));
        let stats = meter.stats();
        assert_eq!(stats.max_marketplace_in_any_1s, 10);
        assert_eq!(stats.max_general_in_any_10s, 11);
        assert_eq!(stats.total, 11);
    }
}
