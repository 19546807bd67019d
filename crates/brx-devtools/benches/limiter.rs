//! Rate-limiter throughput: `RateLimiter::try_acquire` (deadpool + redis-rs + the Lua bucket) against
//! `redis-benchmark` sending the same EVALSHA with the same arguments, in the same run.
//!
//! `cargo bench --bench limiter` (needs the local Redis and `redis-benchmark`; BENCH_SECONDS,
//! BENCH_CONCURRENCY tune it).

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use brx_sync::{
    config::Config,
    metrics::Metrics,
    rate_limit::{Limits, Priority, RateLimiter, Scope},
    storage::Storage,
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 50);
    let sellers: usize = 1_000;
    let mut config = Config::defaults();
    config.storage.redis_key_prefix = format!("brx-bench-{}:", uuid::Uuid::new_v4().simple());
    config.storage.redis_max_connections = concurrency as u32;
    let storage = Storage::connect_lazy(&config.storage)?;
    let limiter = RateLimiter::new(
        storage.redis.clone(),
        &config.storage.redis_key_prefix,
        Limits::from_config(&config.cardtrader),
        Metrics::new()?,
    );
    // Warm the pool and load the script.
    limiter
        .try_acquire("warm-up", Scope::General, Priority::Bulk)
        .await;

    let checks = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let limiter = limiter.clone();
        let checks = checks.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = worker;
            while Instant::now() < stop_at {
                let seller = format!("seller-{}", n % sellers);
                limiter
                    .try_acquire(&seller, Scope::General, Priority::Bulk)
                    .await;
                checks.fetch_add(1, Ordering::Relaxed);
                n += concurrency;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let ours = checks.load(Ordering::Relaxed) as f64 / seconds as f64;

    let raw = redis_benchmark_evalsha(&config, concurrency, ours as u64 * seconds)?;
    println!("limiter bench: {concurrency} concurrent callers over {sellers} sellers, {seconds} s");
    println!("RateLimiter::try_acquire     {ours:>10.0} checks/s");
    println!(
        "redis-benchmark EVALSHA      {raw:>10.0} calls/s (same script and arguments, C client)"
    );
    println!("ratio                        {:>10.2}x", ours / raw);
    Ok(())
}

/// Loads the bucket script and runs redis-benchmark on EVALSHA with the limiter's own arguments;
/// `__rand_int__` spreads the calls over sellers like the Rust side does.
fn redis_benchmark_evalsha(config: &Config, clients: usize, requests: u64) -> anyhow::Result<f64> {
    let script = brx_sync::rate_limit::BUCKET_LUA;
    let load = Command::new("redis-cli")
        .args(["SCRIPT", "LOAD", script])
        .output()?;
    let sha = String::from_utf8(load.stdout)?.trim().to_owned();
    let params = *Limits::from_config(&config.cardtrader).params(Scope::General);
    let key = format!(
        "{}rl:{{seller-__rand_int__}}:general",
        config.storage.redis_key_prefix
    );
    let output = Command::new("redis-benchmark")
        .args([
            "-q",
            "-r",
            "1000",
            "-c",
            &clients.to_string(),
            "-n",
            &requests.max(10_000).to_string(),
        ])
        .args(["EVALSHA", &sha, "1", &key, "take"])
        .args([
            params.capacity.to_string(),
            params.refill_per_ms.to_string(),
            params.reserve.to_string(),
            params.window.as_millis().to_string(),
            "0.25".into(),
            "0.125".into(),
            "100000".into(),
        ])
        .output()?;
    let text = String::from_utf8(output.stdout)?;
    // "EVALSHA ...: 41234.56 requests per second, p50=..." (the line is overwritten with \r while running)
    let last = text.rsplit('\r').next().unwrap_or(&text);
    let rps = last
        .split("requests per second")
        .next()
        .and_then(|head| head.rsplit(' ').find(|word| !word.is_empty()))
        .and_then(|number| number.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("unexpected redis-benchmark output: {text}"))?;
    Ok(rps)
}
