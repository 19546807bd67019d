//! Blueprint catalogue benchmark, every figure against a ceiling measured in the same run:
//! warm batches vs a raw Redis MGET, cold batches vs the raw UNION ALL query, IN-lists vs point
//! selects, the hit rate of a Zipf workload, and a 4x-oversubscribed pool.
//!
//! `cargo bench --bench catalog` (needs the local MariaDB and Redis; seeds `brx_bench_catalog`).

use std::time::{Duration, Instant};

use brx_sync::{
    blueprints::{BlueprintCatalog, Resolution, fixture},
    config::Config,
    domain::BlueprintId,
    metrics::Metrics,
    storage::Storage,
};
use deadpool_redis::redis;
use mysql_async::prelude::Queryable;
use secrecy::SecretString;

const PRINTS: i64 = 300_000;
const BATCH: i64 = 1_000;
const ROUNDS: u32 = 50;

fn config(prefix: &str, l1: bool) -> Config {
    let mut config = Config::defaults();
    config.storage.mysql_url =
        SecretString::from("mysql://root@127.0.0.1:3306/brx_bench_catalog".to_owned());
    config.storage.redis_key_prefix =
        format!("brx-bench-{prefix}-{}:", uuid::Uuid::new_v4().simple());
    config.catalog.l1_capacity = if l1 { 1_000_000 } else { 0 };
    config
}

fn catalog(config: &Config) -> anyhow::Result<(BlueprintCatalog, Storage, Metrics)> {
    let storage = Storage::connect_lazy(&config.storage)?;
    let metrics = Metrics::new()?;
    let catalog = BlueprintCatalog::new(
        &config.catalog,
        storage.mysql.clone(),
        storage.redis.clone(),
        &config.storage.redis_key_prefix,
        metrics.clone(),
    );
    Ok((catalog, storage, metrics))
}

fn batch(start: i64) -> Vec<BlueprintId> {
    (start..start + BATCH)
        .filter_map(|id| BlueprintId::new(id).ok())
        .collect()
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// Mean time of `rounds` runs of `run`, in microseconds.
async fn mean_us<F, Fut>(rounds: u32, mut run: F) -> f64
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    for round in 0..rounds {
        run(round).await;
    }
    started.elapsed().as_micros() as f64 / f64::from(rounds)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seed_config = config("seed", false);
    fixture::seed(&seed_config.storage.mysql_url, &seed_config.catalog, PRINTS).await?;
    println!(
        "catalogue bench: {PRINTS} prints, batches of {BATCH} ids, {ROUNDS} rounds per figure\n"
    );

    // 1. Warm cache: Redis holds every id; L1 off, then on.
    let warm_config = config("warm", false);
    let (warm, storage, _) = catalog(&warm_config)?;
    warm.resolve_many(&batch(1), deadline()).await;
    let redis_level = mean_us(ROUNDS, |_| async {
        drop(warm.resolve_many(&batch(1), deadline()).await)
    })
    .await;
    let keys: Vec<String> = (1..=BATCH)
        .map(|id| format!("{}bp:{id}", warm_config.storage.redis_key_prefix))
        .collect();
    let mut conn = storage.redis.get().await?;
    let raw_mget = {
        let started = Instant::now();
        for _ in 0..ROUNDS {
            let _: Vec<Option<String>> =
                redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        }
        started.elapsed().as_micros() as f64 / f64::from(ROUNDS)
    };
    let l1_config = config("l1", true);
    let (with_l1, _, _) = catalog(&l1_config)?;
    with_l1.resolve_many(&batch(1), deadline()).await;
    let l1_level = mean_us(ROUNDS, |_| async {
        drop(with_l1.resolve_many(&batch(1), deadline()).await)
    })
    .await;
    println!(
        "warm batch, Redis level     {redis_level:>9.0} us   raw MGET {raw_mget:>7.0} us   -> {:.2}x the MGET (target <= 2x)",
        redis_level / raw_mget
    );
    println!(
        "warm batch, L1 level        {l1_level:>9.0} us                      -> {:.2}x the MGET (target < 1x)",
        l1_level / raw_mget
    );

    // 2. Cold cache: ids never asked before, so MGET misses, MySQL answers, Redis is written.
    let (cold_catalog, _, _) = catalog(&config("cold", false))?;
    cold_catalog
        .resolve_many(&batch(PRINTS - BATCH), deadline())
        .await;
    let cold = mean_us(ROUNDS, |round| {
        let cold_catalog = cold_catalog.clone();
        async move {
            drop(
                cold_catalog
                    .resolve_many(&batch(1 + i64::from(round) * BATCH), deadline())
                    .await,
            )
        }
    })
    .await;
    let mut mysql =
        mysql_async::Conn::from_url("mysql://root@127.0.0.1:3306/brx_bench_catalog").await?;
    let started = Instant::now();
    for round in ROUNDS..2 * ROUNDS {
        let sql = union_sql(&batch(1 + i64::from(round) * BATCH));
        drop(mysql.query::<(i64, i64, usize), _>(sql).await?);
    }
    let raw_union = started.elapsed().as_micros() as f64 / f64::from(ROUNDS);
    println!(
        "cold batch (MGET+MySQL+SET) {cold:>9.0} us   raw UNION ALL {raw_union:>7.0} us -> {:.2}x the raw query",
        cold / raw_union
    );

    // 3. IN-lists against one point select per id, for the same 1,000 misses.
    let point_rounds = 5;
    let started = Instant::now();
    for round in 0..point_rounds {
        for id in batch(1 + i64::from(round) * BATCH) {
            drop(
                mysql
                    .query::<(i64, i64, usize), _>(union_sql(&[id]))
                    .await?,
            );
        }
    }
    let points = started.elapsed().as_micros() as f64 / f64::from(point_rounds);
    println!(
        "1,000 misses: IN-list       {raw_union:>9.0} us   point selects {points:>7.0} us -> IN-lists {:.1}x faster (target >= 5x)",
        points / raw_union
    );

    // 4. Hit rate of a Zipf(1.1) workload over all prints, after a warm-up.
    let zipf = Zipf::new(PRINTS as usize, 1.1);
    let (zipf_catalog, _, zipf_metrics) = catalog(&config("zipf", true))?;
    for _ in 0..100 {
        zipf_catalog
            .resolve_many(&zipf.batch(BATCH as usize), deadline())
            .await;
    }
    let level = |name: &str| {
        zipf_metrics
            .blueprint_lookups
            .with_label_values(&[name])
            .get()
    };
    let before: Vec<u64> = ["l1", "redis", "negative", "mysql", "unknown"]
        .iter()
        .map(|l| level(l))
        .collect();
    for _ in 0..200 {
        zipf_catalog
            .resolve_many(&zipf.batch(BATCH as usize), deadline())
            .await;
    }
    let after: Vec<u64> = ["l1", "redis", "negative", "mysql", "unknown"]
        .iter()
        .map(|l| level(l))
        .collect();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: u64 = delta.iter().sum();
    println!(
        "Zipf(1.1) hit rate after 100 warm-up batches: {:.1}% (l1 {}, redis {}, negative {}, mysql {}, unknown {})",
        100.0 * (delta[0] + delta[1] + delta[2]) as f64 / total as f64,
        delta[0],
        delta[1],
        delta[2],
        delta[3],
        delta[4]
    );

    // 5. A pool of 4 under 16 concurrent cold callers, each bounded by a 500 ms checkout timeout.
    let mut tight = config("pool", false);
    tight.storage.mysql_max_connections = 4;
    tight.catalog.mysql_acquire_timeout = Duration::from_millis(500);
    let (pool_catalog, _, _) = catalog(&tight)?;
    let callers: Vec<_> = (0..16)
        .map(|caller| {
            let pool_catalog = pool_catalog.clone();
            tokio::spawn(async move {
                let mut worst = Duration::ZERO;
                let mut unknown = 0;
                for round in 0..10 {
                    let started = Instant::now();
                    let answers = pool_catalog
                        .resolve_many(
                            &batch(1 + (caller * 10 + round) * BATCH % (PRINTS - BATCH)),
                            deadline(),
                        )
                        .await;
                    worst = worst.max(started.elapsed());
                    unknown += answers
                        .values()
                        .filter(|r| **r == Resolution::Unknown)
                        .count();
                }
                (worst, unknown)
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    let mut unknown = 0;
    for caller in callers {
        let (caller_worst, caller_unknown) = caller.await?;
        worst = worst.max(caller_worst);
        unknown += caller_unknown;
    }
    let hangs = usize::from(worst > Duration::from_secs(5));
    println!(
        "pool of 4, 16 callers x 10 cold batches: slowest call {worst:?}, unknown answers {unknown}, hangs {hangs}"
    );
    Ok(())
}

fn union_sql(ids: &[BlueprintId]) -> String {
    let list = ids
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    ["cards_prints", "op_prints", "pk_prints", "sealed_products"]
        .iter()
        .enumerate()
        .map(|(index, table)| {
            format!(
                "SELECT cardtrader_id, id, {index} FROM `{table}` WHERE cardtrader_id IN ({list})"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Inverse-CDF sampling of a Zipf distribution over ids 1..=n.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, exponent: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(exponent);
                total
            })
            .collect::<Vec<_>>();
        Self {
            cumulative: cumulative.iter().map(|c| c / total).collect(),
        }
    }

    fn batch(&self, size: usize) -> Vec<BlueprintId> {
        (0..size)
            .filter_map(|_| {
                let draw = rand::random::<f64>();
                let rank = self.cumulative.partition_point(|&c| c < draw) + 1;
                BlueprintId::new(rank as i64).ok()
            })
            .collect()
    }
}
