//! The PostgreSQL pool and the embedded migrations.

use std::{collections::HashSet, str::FromStr};

use sqlx::{PgPool, postgres::PgConnectOptions, postgres::PgPoolOptions};

use super::{PoolKind, PoolSnapshot, StorageConfigError, expose, url_error};
use crate::config::Config;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

pub(super) fn lazy_pool(
    config: &Config,
    max_connections: u32,
) -> Result<PgPool, StorageConfigError> {
    let options = PgConnectOptions::from_str(expose(&config.database_url))
        .map_err(|err| err.to_string())
        .map_err(url_error("BRX_DATABASE_URL"))?
        .application_name("brx-sync");
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(config.pg_acquire_timeout)
        .connect_lazy_with(options))
}

pub(super) fn usage(pool: &PgPool) -> PoolSnapshot {
    let size = pool.size();
    let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
    PoolSnapshot::usage(
        PoolKind::Postgres,
        pool.options().get_max_connections(),
        size,
        idle,
        0,
    )
}

pub(super) async fn ping(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(drop)
        .map_err(|err| err.to_string())
}

/// True when every migration this build carries has been applied successfully.
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !table_exists {
        return Ok(false);
    }
    let applied: HashSet<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    Ok(MIGRATOR
        .iter()
        .filter(|migration| migration.migration_type.is_up_migration())
        .all(|migration| applied.contains(&migration.version)))
}

/// Creates the configured database when it does not exist yet (a fresh machine, a test).
pub async fn ensure_database(url: &secrecy::SecretString) -> Result<(), sqlx::Error> {
    use sqlx::migrate::MigrateDatabase;
    let url = expose(url);
    if !sqlx::Postgres::database_exists(url).await? {
        sqlx::Postgres::create_database(url).await?;
        tracing::info!("created the database");
    }
    Ok(())
}
