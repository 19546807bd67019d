//! Connection pools shared by the capabilities (PostgreSQL, the MySQL catalogue, Redis) and the
//! supervisor that connects them with backoff and reports their state. Queries live with the capability
//! that owns the data, never here.

mod copy_csv;
mod mysql;
mod pool_health;
mod postgres;
mod redis;
mod redis_outage;
mod supervisor;

use std::time::Duration;

use secrecy::ExposeSecret;

use crate::config::StorageConfig;

pub use copy_csv::CopyCsv;
pub use mysql::ensure_database as ensure_catalog_database;
pub use pool_health::{PoolKind, PoolSnapshot, PoolState};
pub use postgres::{MIGRATOR, Pg, ensure_database, is_outage, is_retryable, migrations_applied};
pub use redis::delete_keys_with_prefix;
pub use redis_outage::RedisOutage;
pub use supervisor::StorageSupervisor;

use pool_health::PoolHealth;

/// Longest a single connectivity check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The three pools, built without I/O: a service that starts while a database is down still starts.
#[derive(Clone, Debug)]
pub struct Storage {
    /// PostgreSQL, the source of truth.
    pub pg: Pg,
    /// One connection of its own for health checks, so a busy main pool (every connection checked
    /// out by sync writers) never reads as "database down" and flips readiness. A [`Pg`] like the
    /// main pool: behind a transaction pooler its checks must stay on one server connection too.
    pg_probe: Pg,
    /// One connection straight to PostgreSQL (past any pooler) for migrations.
    pg_direct: sqlx::PgPool,
    /// The read-only MySQL blueprint catalogue.
    pub mysql: mysql_async::Pool,
    /// Redis: caches, rate-limit buckets, hints.
    pub redis: deadpool_redis::Pool,
    /// Prefix of every Redis key this deployment writes.
    pub redis_key_prefix: String,
    mysql_max_connections: u32,
    health: std::sync::Arc<[PoolHealth; 3]>,
}

/// A pool could not even be configured (a malformed URL).
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct StorageConfigError {
    /// Environment variable of the bad setting.
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl Storage {
    /// Builds the pools lazily from configuration; connections open on first use.
    pub fn connect_lazy(config: &StorageConfig) -> Result<Self, StorageConfigError> {
        Ok(Self {
            pg: Pg::new(
                postgres::lazy_pool(
                    config,
                    &config.database_url,
                    "BRX_DATABASE_URL",
                    config.pg_max_connections,
                )?,
                config.pg_pooler,
            ),
            pg_probe: Pg::new(
                postgres::lazy_pool(config, &config.database_url, "BRX_DATABASE_URL", 1)?,
                config.pg_pooler,
            ),
            // Without a direct URL behind a transaction pooler, migrations are refused by
            // `StorageConfig::migration_url`; this pool then only reads which ones are applied.
            pg_direct: postgres::lazy_pool(
                config,
                config.migration_url().unwrap_or(&config.database_url),
                "BRX_DATABASE_DIRECT_URL",
                1,
            )?,
            mysql: mysql::lazy_pool(config)?,
            redis: redis::lazy_pool(config)?,
            redis_key_prefix: config.redis_key_prefix.clone(),
            mysql_max_connections: config.mysql_max_connections,
            health: std::sync::Arc::new(Default::default()),
        })
    }

    /// Sizes, usage and state of every pool, from memory.
    pub fn snapshot(&self) -> Vec<PoolSnapshot> {
        PoolKind::ALL
            .iter()
            .map(|&kind| {
                let mut snapshot = match kind {
                    PoolKind::Postgres => postgres::usage(self.pg.pool()),
                    PoolKind::Mysql => mysql::usage(&self.mysql, self.mysql_max_connections),
                    PoolKind::Redis => redis::usage(&self.redis),
                };
                self.health(kind).fill(&mut snapshot);
                snapshot
            })
            .collect()
    }

    /// One round trip to the pool's server, bounded by [`CHECK_TIMEOUT`].
    pub async fn check(&self, kind: PoolKind) -> Result<(), String> {
        let check = async {
            match kind {
                PoolKind::Postgres => postgres::ping(&self.pg_probe).await,
                PoolKind::Mysql => mysql::ping(&self.mysql).await,
                PoolKind::Redis => redis::ping(&self.redis).await,
            }
        };
        match tokio::time::timeout(CHECK_TIMEOUT, check).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    }

    /// Applies pending migrations straight to PostgreSQL (past any pooler); sqlx's advisory lock
    /// makes replicas starting together migrate once.
    pub async fn run_migrations(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pg_direct).await
    }

    /// Closes the pools, letting checked-out connections finish first.
    pub async fn close(&self) {
        self.pg.close().await;
        self.pg_probe.close().await;
        self.pg_direct.close().await;
        if let Err(err) = self.mysql.clone().disconnect().await {
            tracing::debug!(error = %err, "mysql pool disconnect");
        }
        self.redis.close();
    }

    /// The pool's state as the supervisor last saw it.
    pub fn state(&self, kind: PoolKind) -> PoolState {
        self.health(kind).state()
    }

    /// A receiver that wakes each time the supervisor sees the pool come (back) up.
    pub fn watch_up(&self, kind: PoolKind) -> tokio::sync::watch::Receiver<u64> {
        self.health(kind).watch_up()
    }

    fn health(&self, kind: PoolKind) -> &PoolHealth {
        &self.health[kind as usize]
    }
}

fn url_error(setting: &'static str) -> impl Fn(String) -> StorageConfigError {
    move |reason| StorageConfigError { setting, reason }
}

fn expose(secret: &secrecy::SecretString) -> &str {
    secret.expose_secret()
}
