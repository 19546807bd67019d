//! The Redis pool (deadpool-redis).

use deadpool_redis::{PoolConfig, Runtime, Timeouts};

use super::{PoolKind, PoolSnapshot, StorageConfigError, expose, url_error};
use crate::config::Config;

pub(super) fn lazy_pool(config: &Config) -> Result<deadpool_redis::Pool, StorageConfigError> {
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
