//! The shared limiter against the real Redis: buckets per seller and scope, the interactive reserve,
//! 429 penalties, NOSCRIPT recovery, and the in-process fallback while Redis is unreachable.

use std::time::{Duration, Instant};

use brx_sync::{
    metrics::Metrics,
    rate_limit::{Limits, Priority, RateLimiter, Scope},
    storage::Storage,
};
use secrecy::SecretString;

use crate::helpers::{TcpProxy, test_config, wait_for};

fn limiter_with(adjust: impl FnOnce(&mut brx_sync::config::Config)) -> (RateLimiter, Metrics) {
    let (mut config, _) = test_config();
    adjust(&mut config);
    let storage = Storage::connect_lazy(&config.storage).unwrap();
    let metrics = Metrics::new().unwrap();
    let limiter = RateLimiter::new(
        storage.redis,
        &config.storage.redis_key_prefix,
        Limits::from_config(&config.cardtrader),
        metrics.clone(),
    );
    (limiter, metrics)
}

fn seller() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn drain(limiter: &RateLimiter, seller: &str, scope: Scope, priority: Priority) -> u32 {
    let mut granted = 0;
    while limiter.try_acquire(seller, scope, priority).await.granted {
        granted += 1;
    }
    granted
}

/// Tokens the general bucket refills while a test drains it (a slow machine drains slowly), so
/// counts are checked as `expected..=expected + refilled` instead of assuming an instant drain.
fn refilled_since(started: Instant, share: f64) -> u32 {
    let (config, _) = test_config();
    let refill = Limits::from_config(&config.cardtrader)
        .params(Scope::General)
        .refill_per_ms;
    (started.elapsed().as_millis() as f64 * refill * share).ceil() as u32
}

#[tokio::test]
async fn a_fresh_general_bucket_grants_its_burst_then_asks_to_wait() {
    let (limiter, _) = limiter_with(|_| {});
    let seller = seller();
    let started = Instant::now();

    let burst = drain(&limiter, &seller, Scope::General, Priority::Interactive).await;
    let next = limiter
        .try_acquire(&seller, Scope::General, Priority::Interactive)
        .await;

    let slack = refilled_since(started, 1.0);
    assert!(
        (18..=18 + slack).contains(&burst),
        "10% of 200 x (1 - 10% margin), got {burst}"
    );
    assert!(!next.granted);
    assert!(
        next.wait > Duration::ZERO && next.wait <= Duration::from_millis(100),
        "{:?}",
        next.wait
    );
}

#[tokio::test]
async fn bulk_work_leaves_the_reserved_share_to_interactive_work() {
    let (limiter, _) = limiter_with(|_| {});
    let seller = seller();
    let started = Instant::now();

    let bulk = drain(&limiter, &seller, Scope::General, Priority::Bulk).await;
    let bulk_slack = refilled_since(started, 1.0);
    let interactive = drain(&limiter, &seller, Scope::General, Priority::Interactive).await;

    assert!((15..=15 + bulk_slack).contains(&bulk), "bulk took {bulk}");
    assert!(
        interactive >= 3,
        "the reserve (20% of the burst) is still there for interactive calls"
    );
    assert!(interactive <= 3 + refilled_since(started, 1.0));
}

#[tokio::test]
async fn two_sellers_have_independent_buckets() {
    let (limiter, _) = limiter_with(|_| {});
    let (busy, quiet) = (seller(), seller());
    drain(&limiter, &busy, Scope::General, Priority::Interactive).await;

    let decision = limiter
        .try_acquire(&quiet, Scope::General, Priority::Interactive)
        .await;

    assert!(
        decision.granted,
        "one seller's exhausted bucket must not slow another"
    );
}

#[tokio::test]
async fn two_limiter_instances_share_one_bucket_through_redis() {
    let (config, _) = test_config();
    let make = || {
        let storage = Storage::connect_lazy(&config.storage).unwrap();
        RateLimiter::new(
            storage.redis,
            &config.storage.redis_key_prefix,
            Limits::from_config(&config.cardtrader),
            Metrics::new().unwrap(),
        )
    };
    let (replica_a, replica_b) = (make(), make());
    let seller = seller();
    let started = Instant::now();

    let from_a = drain(&replica_a, &seller, Scope::General, Priority::Interactive).await;
    let from_b = drain(&replica_b, &seller, Scope::General, Priority::Interactive).await;

    let total = from_a + from_b;
    assert!(
        (18..=18 + refilled_since(started, 1.0)).contains(&total),
        "the burst is shared, not doubled: {total}"
    );
}

#[tokio::test]
async fn a_429_halves_the_rate_and_silences_the_seller_for_the_window() {
    let (limiter, metrics) = limiter_with(|_| {});
    let seller = seller();

    limiter.penalize(&seller, Scope::General).await;
    let decision = limiter
        .try_acquire(&seller, Scope::General, Priority::Interactive)
        .await;

    assert!(!decision.granted);
    assert!(
        decision.wait > Duration::from_secs(9),
        "silent for the 10 s window: {:?}",
        decision.wait
    );
    assert_eq!(decision.factor, 0.5);
    assert_eq!(
        metrics
            .rate_limit_penalties
            .with_label_values(&["general"])
            .get(),
        1
    );
}

#[tokio::test]
async fn acquire_gives_up_at_the_callers_deadline_instead_of_waiting_past_it() {
    let (limiter, _) = limiter_with(|_| {});
    let seller = seller();
    limiter.penalize(&seller, Scope::General).await;

    let started = Instant::now();
    let result = limiter
        .acquire(
            &seller,
            Scope::General,
            Priority::Interactive,
            Instant::now() + Duration::from_millis(200),
        )
        .await;

    let limited = result.unwrap_err();
    assert!(limited.retry_after > Duration::from_secs(9));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "it must not sleep through the penalty"
    );
}

#[tokio::test]
async fn the_script_is_reloaded_when_redis_has_forgotten_it() {
    let (limiter, _) = limiter_with(|_| {});
    let seller = seller();
    assert!(
        limiter
            .try_acquire(&seller, Scope::Jobs, Priority::Interactive)
            .await
            .granted
    );
    let mut redis = redis_connection().await;
    let _: () = deadpool_redis::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis)
        .await
        .unwrap();

    let other_seller = uuid::Uuid::new_v4().to_string();
    let decision = limiter
        .try_acquire(&other_seller, Scope::Jobs, Priority::Interactive)
        .await;

    assert!(
        decision.granted,
        "EVALSHA hit NOSCRIPT and the script was loaded again"
    );
    assert!(!limiter.is_degraded());
}

async fn redis_connection() -> deadpool_redis::Connection {
    let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:6379/0")
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    pool.get().await.unwrap()
}

#[tokio::test]
async fn with_redis_unreachable_the_limiter_falls_back_in_process_and_returns_to_redis_after() {
    let proxy = TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let (limiter, metrics) = limiter_with(|config| {
        config.storage.redis_url = SecretString::from(format!("redis://{}/0", proxy.addr));
        config.storage.redis_timeout = Duration::from_millis(300);
        config.cardtrader.expected_replicas = 2;
    });
    let seller = seller();
    assert!(
        limiter
            .try_acquire(&seller, Scope::General, Priority::Interactive)
            .await
            .granted
    );

    proxy.cut().await;
    let started = Instant::now();
    let during_outage = drain(&limiter, &seller, Scope::General, Priority::Interactive).await;

    assert!(limiter.is_degraded());
    assert_eq!(metrics.rate_limit_fallback.get(), 1);
    let slack = refilled_since(started, 0.5);
    assert!(
        (9..=9 + slack).contains(&during_outage),
        "each of 2 replicas gets half the burst: {during_outage}"
    );

    proxy.restore();
    // After a failure Redis is left alone for a while, then tried again by the next check.
    let back = wait_for(
        "the limiter to find Redis back",
        Duration::from_secs(10),
        || async {
            let decision = limiter
                .try_acquire(&seller, Scope::General, Priority::Interactive)
                .await;
            if limiter.is_degraded() {
                Err(decision)
            } else {
                Ok(decision)
            }
        },
    )
    .await;

    assert!(
        !limiter.is_degraded(),
        "Redis answers again: buckets are shared again"
    );
    assert_eq!(metrics.rate_limit_fallback.get(), 0);
    assert!(back.granted || back.wait > Duration::ZERO);
}
