//! The PostgreSQL pool and the embedded migrations.

use std::{collections::HashSet, str::FromStr};

use sqlx::{PgPool, postgres::PgConnectOptions, postgres::PgPoolOptions};

use super::{PoolKind, PoolSnapshot, StorageConfigError, expose, url_error};
use crate::config::StorageConfig;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

pub(super) fn lazy_pool(
    config: &StorageConfig,
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

/// Whether rerunning the whole transaction may succeed: deadlock (40P01), serialization failure
/// (40001), statement timeout (57014), or a connection that went away. The one classification
/// every retried transaction (chunks, sweeps, webhook applications) shares.
pub fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("40P01" | "40001" | "57014"))
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

/// Whether `err` means PostgreSQL cannot be reached or is not taking work right now (pool timed out
/// or closed, connection lost, server starting, shutting down or out of connections), as opposed to
/// a fault in the request or in our code. Callers should retry such errors later.
pub fn is_outage(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 57P01-57P03: admin shutdown, crash shutdown,
            // cannot connect now; 53300: too many connections.
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}
