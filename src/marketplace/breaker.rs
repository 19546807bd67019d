//! A circuit breaker on the CardTrader host. Consecutive 5xx answers and timeouts (never 4xx or 429,
//! which say nothing about CardTrader's health) open it; while open, calls fail fast; after a pause one
//! probe is let through, and its outcome closes or re-opens the breaker.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// The breaker's state as metrics and stats show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// One probe is in flight; other calls fail fast until it returns.
    HalfOpen,
    /// Calls fail fast until the pause ends.
    Open,
}

impl BreakerState {
    /// 0 closed, 1 half-open, 2 open: the `brx_cardtrader_breaker_state` gauge.
    pub fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// The breaker; shared by every call to one host.
#[derive(Debug)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
enum Inner {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `since` lets a probe that never reported (its task was dropped) be replaced after a pause.
    HalfOpen {
        since: Instant,
    },
}

/// Permission to make one call; report its outcome with [`CircuitBreaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A normal call.
    Call,
    /// The one probe of a half-open breaker.
    Probe,
}

impl CircuitBreaker {
    /// Opens after `failure_threshold` consecutive failures, for `open_for`.
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Self {
            failure_threshold,
            open_for,
            inner: Mutex::new(Inner::Closed {
                consecutive_failures: 0,
            }),
        }
    }

    /// Whether a call may go out now; `None` means fail fast.
    pub fn admit(&self) -> Option<Admission> {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => Some(Admission::Call),
            Inner::HalfOpen { since } if since.elapsed() < self.open_for => None,
            Inner::Open { until } if Instant::now() < until => None,
            Inner::HalfOpen { .. } | Inner::Open { .. } => {
                *inner = Inner::HalfOpen {
                    since: Instant::now(),
                };
                Some(Admission::Probe)
            }
        }
    }

    /// Reports how an admitted call went: `healthy` unless it was a 5xx, a timeout or a lost connection.
    pub fn record(&self, admission: Admission, healthy: bool) {
        let mut inner = self.lock();
        *inner = match (&*inner, admission, healthy) {
            (_, Admission::Probe, true) => Inner::Closed {
                consecutive_failures: 0,
            },
            (_, Admission::Probe, false) => Inner::Open {
                until: Instant::now() + self.open_for,
            },
            (Inner::Closed { .. }, Admission::Call, true) => Inner::Closed {
                consecutive_failures: 0,
            },
            (
                Inner::Closed {
                    consecutive_failures,
                },
                Admission::Call,
                false,
            ) => {
                let failures = consecutive_failures + 1;
                if failures >= self.failure_threshold {
                    tracing::warn!(
                        failures,
                        open_for_ms = u64::try_from(self.open_for.as_millis()).unwrap_or(u64::MAX),
                        "CardTrader circuit breaker opened"
                    );
                    Inner::Open {
                        until: Instant::now() + self.open_for,
                    }
                } else {
                    Inner::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
            // A call admitted before the breaker opened finished late: it changes nothing.
            (Inner::Open { until }, Admission::Call, _) => Inner::Open { until: *until },
            (Inner::HalfOpen { since }, Admission::Call, _) => Inner::HalfOpen { since: *since },
        };
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a plain enum: still valid if a holder panicked.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_open_the_breaker_and_it_fails_fast() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            let admission = breaker.admit().unwrap();
            breaker.record(admission, false);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.admit(), None);
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(60));
        for healthy in [false, false, true, false, false] {
            breaker.record(Admission::Call, healthy);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn after_the_pause_one_probe_goes_out_and_its_success_closes_the_breaker() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(50));
        breaker.record(Admission::Call, false);
        std::thread::sleep(Duration::from_millis(60));

        assert_eq!(breaker.admit(), Some(Admission::Probe));
        assert_eq!(breaker.admit(), None, "only one probe at a time");
        breaker.record(Admission::Probe, true);

        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.admit(), Some(Admission::Call));
    }

    #[test]
    fn a_failed_probe_reopens_the_breaker() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(1));
        breaker.record(Admission::Call, false);
        std::thread::sleep(Duration::from_millis(5));
        let probe = breaker.admit().unwrap();

        breaker.record(probe, false);

        assert_eq!(breaker.state(), BreakerState::Open);
    }
}
