//! The token-bucket arithmetic, in Rust: the in-process fallback runs it when Redis is down, and its
//! unit tests pin the behaviour that `bucket.lua` implements for the shared buckets.

use std::time::Duration;

/// Sizes of one bucket, already reduced by the safety margin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketParams {
    /// Tokens a full bucket holds (the burst).
    pub capacity: f64,
    /// Tokens added per millisecond.
    pub refill_per_ms: f64,
    /// Tokens bulk callers must leave for interactive ones.
    pub reserve: f64,
    /// CardTrader's window for this scope: the penalty length and the recovery period.
    pub window: Duration,
}

/// Recovery after a 429: each clean window adds this much of the full rate back.
pub(super) const RECOVERY_STEP: f64 = 0.25;
/// A seller's rate never drops below this share of the limit.
pub(super) const MIN_FACTOR: f64 = 0.125;

/// What one check decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// A token was taken.
    pub granted: bool,
    /// When not granted: how long until one could be.
    pub wait: Duration,
    /// The adaptive share of the full rate in force (1.0 = no recent 429).
    pub factor: f64,
}

/// One bucket's state, as the Lua script keeps it in a Redis hash.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct BucketState {
    tokens: Option<f64>,
    updated_ms: u64,
    factor: f64,
    blocked_until_ms: u64,
    calm_since_ms: u64,
}

impl BucketState {
    /// A bucket never used: full, at full rate.
    pub(super) fn new(now_ms: u64) -> Self {
        Self {
            tokens: None,
            updated_ms: now_ms,
            factor: 1.0,
            blocked_until_ms: 0,
            calm_since_ms: now_ms,
        }
    }

    /// Takes a token if the bucket allows `reserve`-respecting callers one now.
    pub(super) fn take(&mut self, params: &BucketParams, reserve: f64, now_ms: u64) -> Decision {
        let tokens = self.refill(params, now_ms);
        if now_ms < self.blocked_until_ms {
            return self.decision(false, self.blocked_until_ms - now_ms);
        }
        if tokens - 1.0 >= reserve {
            self.tokens = Some(tokens - 1.0);
            return self.decision(true, 0);
        }
        let rate = params.refill_per_ms * self.factor;
        let wait = ((reserve + 1.0 - tokens) / rate).ceil().max(1.0) as u64;
        self.decision(false, wait)
    }

    /// CardTrader answered 429: halve the rate, empty the bucket, stay silent for the window.
    pub(super) fn penalize(&mut self, params: &BucketParams, now_ms: u64) {
        self.refill(params, now_ms);
        let window_ms = params.window.as_millis() as u64;
        self.factor = (self.factor / 2.0).max(MIN_FACTOR);
        self.tokens = Some(0.0);
        self.blocked_until_ms = now_ms + window_ms;
        self.calm_since_ms = self.blocked_until_ms;
    }

    fn refill(&mut self, params: &BucketParams, now_ms: u64) -> f64 {
        let window_ms = params.window.as_millis() as u64;
        if self.factor < 1.0 && now_ms.saturating_sub(self.calm_since_ms) >= window_ms {
            let windows = (now_ms - self.calm_since_ms) / window_ms;
            self.factor = (self.factor + windows as f64 * RECOVERY_STEP).min(1.0);
            self.calm_since_ms += windows * window_ms;
        }
        if self.factor >= 1.0 {
            self.calm_since_ms = now_ms;
        }
        let cap = params.capacity * self.factor;
        let elapsed = now_ms.saturating_sub(self.updated_ms) as f64;
        let tokens = self.tokens.map_or(cap, |t| {
            (t + elapsed * params.refill_per_ms * self.factor).min(cap)
        });
        self.tokens = Some(tokens);
        self.updated_ms = now_ms;
        tokens
    }

    fn decision(&self, granted: bool, wait_ms: u64) -> Decision {
        Decision {
            granted,
            wait: Duration::from_millis(wait_ms),
            factor: self.factor,
        }
    }
}

impl BucketParams {
    /// A bucket that never lets more than `limit * (1 - margin)` calls into any `window`: a burst of a
    /// tenth of that (at least one call) plus a steady refill of the rest.
    pub fn for_limit(limit: u32, window: Duration, margin: f64, interactive_share: f64) -> Self {
        let effective = f64::from(limit) * (1.0 - margin);
        let capacity = (effective * 0.1).floor().max(1.0);
        let refill = (effective - capacity).max(effective * 0.9);
        Self {
            capacity,
            refill_per_ms: refill / window.as_millis() as f64,
            // Whole tokens only: a one-token bucket cannot be split between bulk and interactive.
            reserve: (capacity * interactive_share).floor(),
            window,
        }
    }

    /// The same bucket divided between `replicas` that cannot coordinate (Redis down).
    pub fn split(&self, replicas: u32) -> Self {
        let replicas = f64::from(replicas.max(1));
        let capacity = (self.capacity / replicas).floor().max(1.0);
        Self {
            capacity,
            refill_per_ms: self.refill_per_ms / replicas,
            reserve: self.reserve.min(capacity - 1.0).max(0.0),
            window: self.window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_SECONDS: Duration = Duration::from_secs(10);

    fn general() -> BucketParams {
        BucketParams::for_limit(200, TEN_SECONDS, 0.1, 0.2)
    }

    /// Drives a caller that retries the moment it may, and returns the most calls seen in any window.
    fn max_calls_in_any_window(params: &BucketParams, window_ms: u64, horizon_ms: u64) -> usize {
        let mut bucket = BucketState::new(0);
        let mut granted_at = Vec::new();
        let mut now = 0;
        while now < horizon_ms {
            let decision = bucket.take(params, 0.0, now);
            if decision.granted {
                granted_at.push(now);
            } else {
                now += decision.wait.as_millis() as u64;
            }
        }
        granted_at
            .iter()
            .map(|&start| {
                granted_at
                    .iter()
                    .filter(|&&t| t >= start && t < start + window_ms)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn the_general_bucket_never_lets_more_than_the_margin_allows_into_any_ten_seconds() {
        let most = max_calls_in_any_window(&general(), 10_000, 60_000);
        assert!(most <= 180, "{most} calls in one window");
        assert!(
            most >= 170,
            "the bucket should use most of what it may: {most}"
        );
    }

    #[test]
    fn a_one_per_second_limit_never_sees_two_calls_in_a_second() {
        let params = BucketParams::for_limit(1, Duration::from_secs(1), 0.1, 0.2);
        assert_eq!(
            params.reserve, 0.0,
            "a one-token bucket has nothing to reserve"
        );
        assert_eq!(max_calls_in_any_window(&params, 1_000, 30_000), 1);
    }

    #[test]
    fn bulk_callers_leave_the_reserve_for_interactive_ones() {
        let params = general();
        let mut bucket = BucketState::new(0);
        let mut bulk = 0;
        while bucket.take(&params, params.reserve, 0).granted {
            bulk += 1;
        }
        assert_eq!(f64::from(bulk), params.capacity - params.reserve);
        assert!(
            bucket.take(&params, 0.0, 0).granted,
            "interactive still gets a token"
        );
    }

    #[test]
    fn a_429_halves_the_rate_blocks_the_window_and_clean_windows_restore_it() {
        let params = general();
        let mut bucket = BucketState::new(0);
        bucket.penalize(&params, 1_000);

        let blocked = bucket.take(&params, 0.0, 2_000);
        assert!(!blocked.granted);
        assert_eq!(blocked.wait, Duration::from_millis(9_000));
        assert_eq!(blocked.factor, 0.5);

        let after_one_clean_window = bucket.take(&params, 0.0, 21_000);
        assert_eq!(after_one_clean_window.factor, 0.75);
        let after_three = bucket.take(&params, 0.0, 41_000);
        assert_eq!(after_three.factor, 1.0);
    }

    #[test]
    fn repeated_429s_never_drop_below_the_floor() {
        let params = general();
        let mut bucket = BucketState::new(0);
        for n in 0..10 {
            bucket.penalize(&params, n * 100);
        }
        assert_eq!(bucket.take(&params, 0.0, 10_000).factor, MIN_FACTOR);
    }

    #[test]
    fn splitting_between_replicas_divides_the_rate() {
        let params = general().split(2);
        assert_eq!(params.capacity, 9.0);
        assert!(max_calls_in_any_window(&params, 10_000, 60_000) <= 90);
    }
}
