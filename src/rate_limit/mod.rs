//! Per-seller, adaptive rate limits on CardTrader calls, shared by every replica through Redis: one
//! token bucket per seller and scope, checked by one atomic Lua script. A 429 halves that seller's
//! rate; clean windows restore it. When Redis is unreachable each replica falls back to an
//! in-process bucket at `rate / expected replicas`, and goes back to Redis when it answers again.

mod bucket;
mod fallback;

use std::time::{Duration, Instant};

use deadpool_redis::redis::{Script, aio::MultiplexedConnection};

use crate::{config::CardTraderConfig, metrics::Metrics};
pub use bucket::{BucketParams, Decision};
use fallback::Fallback;

/// The Lua source of the atomic bucket check (the limiter benchmark measures it raw, as its ceiling).
pub const BUCKET_LUA: &str = include_str!("bucket.lua");

/// The atomic bucket check; `Script` sends EVALSHA and reloads the script on NOSCRIPT.
static BUCKET_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(BUCKET_LUA));

/// How long an unreachable Redis is left alone before the next attempt.
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Which of CardTrader's limits a call counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every call: 200 per 10 s.
    General,
    /// `GET /marketplace/products`: per second, on top of the general limit.
    Marketplace,
    /// `GET /jobs/:uuid`: per second, on top of the general limit.
    Jobs,
}

impl Scope {
    /// Name used in Redis keys and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Scope::General => "general",
            Scope::Marketplace => "marketplace",
            Scope::Jobs => "jobs",
        }
    }
}

/// Who is waiting: interactive work (purchases, pushes) may use the reserved share, bulk may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A caller is waiting on the result.
    Interactive,
    /// Background work such as a full sync.
    Bulk,
}

/// What a bucket check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BucketOp {
    /// Take a token if one is free.
    Take,
    /// Record a 429: halve the rate, empty the bucket, silence the window.
    Penalize,
}

impl BucketOp {
    /// The `op` argument of `bucket.lua`.
    fn as_str(self) -> &'static str {
        match self {
            BucketOp::Take => "take",
            BucketOp::Penalize => "penalize",
        }
    }
}

/// The caller's deadline came before a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate limited: no {scope} token for this seller before the deadline (next in {retry_after:?})"
)]
pub struct RateLimited {
    /// The scope that had no token.
    pub scope: &'static str,
    /// When a token is expected.
    pub retry_after: Duration,
}

/// The limits of each scope, derived once from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    general: BucketParams,
    marketplace: BucketParams,
    jobs: BucketParams,
    expected_replicas: u32,
}

impl Limits {
    /// From the `BRX_RATE_*` settings.
    pub fn from_config(config: &CardTraderConfig) -> Self {
        let margin = config.rate_safety_margin;
        let share = config.rate_interactive_reserve;
        let second = Duration::from_secs(1);
        Self {
            general: BucketParams::for_limit(
                config.rate_general_per_10s,
                Duration::from_secs(10),
                margin,
                share,
            ),
            marketplace: BucketParams::for_limit(
                config.rate_marketplace_per_second,
                second,
                margin,
                share,
            ),
            jobs: BucketParams::for_limit(config.rate_jobs_per_second, second, margin, share),
            expected_replicas: config.expected_replicas,
        }
    }

    /// The bucket of `scope`.
    pub fn params(&self, scope: Scope) -> &BucketParams {
        match scope {
            Scope::General => &self.general,
            Scope::Marketplace => &self.marketplace,
            Scope::Jobs => &self.jobs,
        }
    }
}

/// The shared limiter; cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    redis: deadpool_redis::Pool,
    /// One of the pool's multiplexed connections, kept for every check of this replica: concurrent
    /// checks are pipelined on it rather than each checking a connection out of the pool and back
    /// (which held the limiter to 0.71x of a raw EVALSHA). Dropped after a failed call, so the
    /// next one takes a fresh connection from the pool.
    shared: std::sync::Arc<std::sync::Mutex<Option<MultiplexedConnection>>>,
    key_prefix: String,
    limits: Limits,
    fallback: std::sync::Arc<Fallback>,
    metrics: Metrics,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("key_prefix", &self.key_prefix)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter over `redis`, with keys under `key_prefix`.
    pub fn new(
        redis: deadpool_redis::Pool,
        key_prefix: &str,
        limits: Limits,
        metrics: Metrics,
    ) -> Self {
        Self {
            redis,
            shared: std::sync::Arc::default(),
            key_prefix: format!("{key_prefix}rl:"),
            limits,
            fallback: std::sync::Arc::new(Fallback::new(
                limits.expected_replicas,
                REDIS_RETRY_AFTER,
            )),
            metrics,
        }
    }

    /// Waits for a token of `scope` for `seller`, up to `deadline`.
    pub async fn acquire(
        &self,
        seller: &str,
        scope: Scope,
        priority: Priority,
        deadline: Instant,
    ) -> Result<(), RateLimited> {
        let started = Instant::now();
        loop {
            let decision = self.try_acquire(seller, scope, priority).await;
            if decision.granted {
                self.metrics
                    .rate_limit_wait
                    .with_label_values(&[scope.name()])
                    .observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            let now = Instant::now();
            if now + decision.wait > deadline {
                return Err(RateLimited {
                    scope: scope.name(),
                    retry_after: decision.wait,
                });
            }
            tokio::time::sleep(decision.wait).await;
        }
    }

    /// One check: takes a token if one is free now, else says how long to wait.
    pub async fn try_acquire(&self, seller: &str, scope: Scope, priority: Priority) -> Decision {
        let params = *self.limits.params(scope);
        let reserve = match priority {
            Priority::Interactive => 0.0,
            Priority::Bulk => params.reserve,
        };
        self.run(BucketOp::Take, seller, scope, &params, reserve)
            .await
    }

    /// CardTrader answered 429 on `scope`: halve this seller's rate and silence it for the window.
    pub async fn penalize(&self, seller: &str, scope: Scope) {
        let params = *self.limits.params(scope);
        self.metrics
            .rate_limit_penalties
            .with_label_values(&[scope.name()])
            .inc();
        self.run(BucketOp::Penalize, seller, scope, &params, 0.0)
            .await;
    }

    /// Whether checks currently run in-process because Redis is unreachable.
    pub fn is_degraded(&self) -> bool {
        self.fallback.outage.is_active()
    }

    async fn run(
        &self,
        op: BucketOp,
        seller: &str,
        scope: Scope,
        params: &BucketParams,
        reserve: f64,
    ) -> Decision {
        if self.fallback.outage.should_try() {
            match self.run_in_redis(op, seller, scope, params, reserve).await {
                Ok(decision) => {
                    if self.fallback.outage.recovered() {
                        self.fallback.forget_local_buckets();
                        tracing::info!("rate limiter: Redis is back, buckets are shared again");
                        self.metrics.rate_limit_fallback.set(0);
                    }
                    return decision;
                }
                Err(error) => {
                    if self.fallback.outage.failed() {
                        tracing::error!(%error, "rate limiter: Redis unreachable, falling back to in-process buckets at rate / expected replicas");
                        self.metrics.rate_limit_fallback.set(1);
                    }
                }
            }
        }
        self.fallback.run(op, seller, scope, params, reserve)
    }

    /// The shared connection, taken from the pool the first time (and after a failure).
    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        if let Some(conn) = self.lock_shared().as_ref() {
            return Ok(conn.clone());
        }
        let pooled = self.redis.get().await.map_err(|err| err.to_string())?;
        // A clone shares the pooled connection's socket, which outlives the pool object.
        let conn = MultiplexedConnection::clone(&pooled);
        *self.lock_shared() = Some(conn.clone());
        Ok(conn)
    }

    fn forget_connection(&self) {
        *self.lock_shared() = None;
    }

    fn lock_shared(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        // A panic while holding this lock cannot leave the Option half-written.
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn run_in_redis(
        &self,
        op: BucketOp,
        seller: &str,
        scope: Scope,
        params: &BucketParams,
        reserve: f64,
    ) -> Result<Decision, String> {
        let mut conn = self.connection().await?;
        let window_ms = params.window.as_millis() as u64;
        // Idle buckets expire after a few windows; a returning seller starts full, as after a restart.
        let ttl_ms = window_ms * 4 + 60_000;
        let (granted, wait_ms, factor_millis): (i64, i64, i64) = BUCKET_SCRIPT
            .key(format!("{}{{{seller}}}:{}", self.key_prefix, scope.name()))
            .arg(op.as_str())
            .arg(params.capacity)
            .arg(params.refill_per_ms)
            .arg(reserve)
            .arg(window_ms)
            .arg(bucket::RECOVERY_STEP)
            .arg(bucket::MIN_FACTOR)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(|err| {
                self.forget_connection();
                err.to_string()
            })?;
        Ok(Decision {
            granted: granted == 1,
            wait: Duration::from_millis(wait_ms.max(0) as u64),
            factor: factor_millis as f64 / 1000.0,
        })
    }
}
