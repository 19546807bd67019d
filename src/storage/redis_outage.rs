//! Bookkeeping of a Redis outage for the capabilities that degrade without Redis (rate limits, the
//! blueprint cache): after a failure, Redis is left alone for a while instead of costing every call a
//! timeout, then tried again; entering and leaving the outage are reported once each.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// Whether Redis is considered down, and when to try it again.
#[derive(Debug)]
pub struct RedisOutage {
    active: AtomicBool,
    retry_at: Mutex<Option<Instant>>,
    retry_after: Duration,
}

impl RedisOutage {
    /// After a failure, Redis is tried again once `retry_after` has passed.
    pub fn new(retry_after: Duration) -> Self {
        Self {
            active: AtomicBool::new(false),
            retry_at: Mutex::new(None),
            retry_after,
        }
    }

    /// Whether an outage is in progress.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// False while a recent failure is still being waited out.
    pub fn should_try(&self) -> bool {
        self.lock().is_none_or(|at| Instant::now() >= at)
    }

    /// Records a failed Redis call; true when this started the outage.
    pub fn failed(&self) -> bool {
        *self.lock() = Some(Instant::now() + self.retry_after);
        !self.active.swap(true, Ordering::Relaxed)
    }

    /// Records a successful Redis call; true when this ended the outage.
    pub fn recovered(&self) -> bool {
        if !self.active.load(Ordering::Relaxed) {
            return false;
        }
        *self.lock() = None;
        self.active.swap(false, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // An Option<Instant> stays valid whatever a panicking holder did.
        self.retry_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_once_when_it_starts_and_once_when_it_ends() {
        let outage = RedisOutage::new(Duration::from_millis(20));
        assert!(outage.should_try());

        assert!(outage.failed());
        assert!(!outage.failed(), "already in the outage");
        assert!(!outage.should_try(), "left alone for a while");
        std::thread::sleep(Duration::from_millis(30));
        assert!(outage.should_try());

        assert!(outage.recovered());
        assert!(!outage.recovered());
        assert!(!outage.is_active());
    }
}
