//! The in-process buckets used while Redis is unreachable: same arithmetic, each replica's share only.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    BucketOp, Scope,
    bucket::{BucketParams, BucketState, Decision},
};

/// Local buckets plus the bookkeeping of when to try Redis again.
#[derive(Debug)]
pub(super) struct Fallback {
    active: AtomicBool,
    replicas: u32,
    retry_redis_at: Mutex<Option<Instant>>,
    buckets: Mutex<HashMap<(String, Scope), BucketState>>,
    epoch: Instant,
}

impl Fallback {
    pub(super) fn new(replicas: u32) -> Self {
        Self {
            active: AtomicBool::new(false),
            replicas,
            retry_redis_at: Mutex::new(None),
            buckets: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    pub(super) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// False while a recent Redis failure is still being waited out.
    pub(super) fn should_try_redis(&self) -> bool {
        let retry_at = *lock(&self.retry_redis_at);
        retry_at.is_none_or(|at| Instant::now() >= at)
    }

    /// Records a Redis failure; true when this switched the limiter to fallback.
    pub(super) fn redis_failed(&self, retry_after: Duration) -> bool {
        *lock(&self.retry_redis_at) = Some(Instant::now() + retry_after);
        !self.active.swap(true, Ordering::Relaxed)
    }

    /// Records a Redis success; true when this ended a fallback period.
    pub(super) fn redis_recovered(&self) -> bool {
        if !self.active.load(Ordering::Relaxed) {
            return false;
        }
        *lock(&self.retry_redis_at) = None;
        // Local buckets are dropped: Redis holds the truth again.
        lock(&self.buckets).clear();
        self.active.swap(false, Ordering::Relaxed)
    }

    pub(super) fn run(
        &self,
        op: BucketOp,
        seller: &str,
        scope: Scope,
        params: &BucketParams,
        reserve: f64,
    ) -> Decision {
        let params = params.split(self.replicas);
        let reserve = reserve.min(params.reserve);
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let mut buckets = lock(&self.buckets);
        let bucket = buckets
            .entry((seller.to_owned(), scope))
            .or_insert_with(|| BucketState::new(now_ms));
        if op == BucketOp::Penalize {
            bucket.penalize(&params, now_ms);
            return Decision {
                granted: false,
                wait: params.window,
                factor: 0.0,
            };
        }
        bucket.take(&params, reserve, now_ms)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values stay consistent even if a holder panicked.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
