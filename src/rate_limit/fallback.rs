//! The in-process buckets used while Redis is unreachable: same arithmetic, each replica's share only.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::storage::RedisOutage;

use super::{
    BucketOp, Scope,
    bucket::{BucketParams, BucketState, Decision},
};

/// Local buckets plus the bookkeeping of the Redis outage.
#[derive(Debug)]
pub(super) struct Fallback {
    replicas: u32,
    pub(super) outage: RedisOutage,
    buckets: Mutex<HashMap<(String, Scope), BucketState>>,
    epoch: Instant,
}

impl Fallback {
    pub(super) fn new(replicas: u32, retry_redis_after: Duration) -> Self {
        Self {
            replicas,
            outage: RedisOutage::new(retry_redis_after),
            buckets: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    /// Redis answers again: local buckets are dropped, Redis holds the truth.
    pub(super) fn forget_local_buckets(&self) {
        lock(&self.buckets).clear();
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
