//! The Redis pool (deadpool-redis).

use deadpool_redis::{PoolConfig, Runtime, Timeouts};

use super::{PoolKind, PoolSnapshot, StorageConfigError, expose, url_error};
use crate::config::StorageConfig;

pub(super) fn lazy_pool(
    config: &StorageConfig,
) -> Result<deadpool_redis::Pool, StorageConfigError> {
    let mut redis_config = deadpool_redis::Config::from_url(expose(&config.redis_url));
    let max_size = usize::try_from(config.redis_max_connections).unwrap_or(usize::MAX);
    // Every wait is bounded: Redis holds only what can be lost, so a slow Redis must degrade a
    // caller, never hang it.
    let timeouts = Timeouts {
        wait: Some(config.redis_timeout),
        create: Some(config.redis_timeout),
        recycle: Some(config.redis_timeout),
    };
    redis_config.pool = Some(PoolConfig {
        max_size,
        timeouts,
        ..PoolConfig::default()
    });
    redis_config
        .create_pool(Some(Runtime::Tokio1))
        .map_err(|err| err.to_string())
        .map_err(url_error("BRX_REDIS_URL"))
}

pub(super) fn usage(pool: &deadpool_redis::Pool) -> PoolSnapshot {
    let status = pool.status();
    let to_u32 = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
    PoolSnapshot::usage(
        PoolKind::Redis,
        to_u32(status.max_size),
        to_u32(status.size),
        to_u32(status.available),
        to_u32(status.waiting),
    )
}

pub(super) async fn ping(pool: &deadpool_redis::Pool) -> Result<(), String> {
    let mut conn = pool.get().await.map_err(|err| err.to_string())?;
    deadpool_redis::redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(drop)
        .map_err(|err| err.to_string())
}

/// Deletes every key starting with `prefix` (SCAN + UNLINK, a batch at a time, never KEYS): what a
/// load test or benchmark run leaves behind under its own prefix. Returns how many were deleted.
pub async fn delete_keys_with_prefix(
    pool: &deadpool_redis::Pool,
    prefix: &str,
) -> anyhow::Result<u64> {
    let mut conn = pool.get().await?;
    let pattern = format!("{prefix}*");
    let (mut cursor, mut deleted) = (0_u64, 0);
    loop {
        let (next, keys): (u64, Vec<String>) = deadpool_redis::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(5_000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            deleted += deadpool_redis::redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<u64>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
