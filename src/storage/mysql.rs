//! The pool on the read-only MySQL blueprint catalogue.

use mysql_async::{Opts, OptsBuilder, PoolConstraints, PoolOpts, prelude::Queryable};

use super::{PoolKind, PoolSnapshot, StorageConfigError, expose, url_error};
use crate::config::StorageConfig;

pub(super) fn lazy_pool(config: &StorageConfig) -> Result<mysql_async::Pool, StorageConfigError> {
    let opts = Opts::from_url(expose(&config.mysql_url))
        .map_err(|err| err.to_string())
        .map_err(url_error("BRX_MYSQL_URL"))?;
    let max = usize::try_from(config.mysql_max_connections).unwrap_or(usize::MAX);
    let constraints = PoolConstraints::new(0, max)
        .ok_or_else(|| "pool bounds out of order".to_owned())
        .map_err(url_error("BRX_MYSQL_MAX_CONNECTIONS"))?;
    // This pool only reads, and never leaves session state behind (no variables, temporary tables or
    // open transactions), so the COM_RESET_CONNECTION that mysql_async sends on every checkout by
    // default buys nothing; on MariaDB it cut point-select throughput about 6x.
    let pool_opts = PoolOpts::default()
        .with_constraints(constraints)
        .with_reset_connection(false);
    let opts = OptsBuilder::from_opts(opts).pool_opts(pool_opts);
    Ok(mysql_async::Pool::new(opts))
}

pub(super) fn usage(pool: &mysql_async::Pool, max: u32) -> PoolSnapshot {
    use std::sync::atomic::Ordering::Relaxed;
    let metrics = pool.metrics();
    let to_u32 = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
    let size = to_u32(metrics.connection_count.load(Relaxed));
    let in_use = to_u32(metrics.connections_in_use.load(Relaxed));
    PoolSnapshot::usage(
        PoolKind::Mysql,
        max,
        size,
        size.saturating_sub(in_use),
        to_u32(metrics.active_wait_requests.load(Relaxed)),
    )
}

pub(super) async fn ping(pool: &mysql_async::Pool) -> Result<(), String> {
    let mut conn = pool.get_conn().await.map_err(|err| err.to_string())?;
    conn.ping().await.map_err(|err| err.to_string())
}

/// Creates the configured catalogue database when it does not exist yet (a fresh machine, the demo).
pub async fn ensure_database(url: &secrecy::SecretString) -> Result<(), mysql_async::Error> {
    let opts = Opts::from_url(expose(url))?;
    let Some(name) = opts.db_name().map(str::to_owned) else {
        return Ok(());
    };
    let server_opts = OptsBuilder::from_opts(opts).db_name(None::<String>);
    let mut conn = mysql_async::Conn::new(server_opts).await?;
    // Identifiers cannot be bound as parameters; backticks inside the name are doubled to stay quoted.
    let quoted = name.replace('`', "``");
    conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS `{quoted}`"))
        .await?;
    conn.disconnect().await
}
