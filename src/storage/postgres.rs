//! The PostgreSQL pool ([`Pg`], safe behind a transaction pooler) and the embedded migrations.

use std::{collections::HashSet, str::FromStr};

use futures::{StreamExt, TryStreamExt, future::BoxFuture, stream::BoxStream};
use secrecy::SecretString;
use sqlx::{
    Describe, Either, Execute, Executor, PgPool, Postgres, Transaction,
    error::BoxDynError,
    postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow, PgStatement},
};

use super::{PoolKind, PoolSnapshot, StorageConfigError, expose, url_error};
use crate::config::{PgPooler, StorageConfig};

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The PostgreSQL pool the capabilities query through, used like a `PgPool`: `&pg` is an executor
/// and [`Pg::begin`] opens a transaction.
///
/// Behind a transaction-mode pooler (`BRX_PG_POOLER=transaction`) each transaction may run on
/// another server connection, and sqlx's extended protocol needs one: it parses a statement and
/// binds it in two round trips, each ended by a Sync, and between them the pooler may hand the
/// server to another client. Measured through PgBouncer 1.18 with a pool of 4 and 40 concurrent
/// clients, sqlx's defaults gave errors ("prepared statement sqlx_s_1 already exists") and, worse,
/// answers computed by another client's statement with our parameters. So, in that mode:
/// - a statement run on its own (`query.fetch_one(&pg)`) runs unnamed inside a transaction of its
///   own, which keeps the server between the two round trips;
/// - a transaction opened with [`Pg::begin`] starts with `DEALLOCATE ALL`: sqlx names the
///   statements it prepares inside (its cache is off, so it never reuses a name across
///   transactions), and another client's names left on the server would collide with ours.
#[derive(Debug, Clone)]
pub struct Pg {
    pool: PgPool,
    pooler: PgPooler,
}

/// How a transaction starts behind a transaction pooler: clearing statements other clients'
/// transactions left on this server connection.
const BEGIN_BEHIND_POOLER: &str = "BEGIN; DEALLOCATE ALL";

impl Pg {
    /// A pool used as `pooler` requires.
    pub fn new(pool: PgPool, pooler: PgPooler) -> Self {
        Self { pool, pooler }
    }

    /// Opens a transaction on a pooled connection.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        match self.pooler {
            PgPooler::None => begin_whole(self.pool.clone(), "BEGIN".into()).await,
            PgPooler::Transaction => {
                begin_whole(self.pool.clone(), BEGIN_BEHIND_POOLER.into()).await
            }
        }
    }

    /// Opens a transaction started by `statement` (e.g. `BEGIN READ ONLY`).
    pub async fn begin_with(
        &self,
        statement: &'static str,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        match self.pooler {
            PgPooler::None => begin_whole(self.pool.clone(), statement.into()).await,
            PgPooler::Transaction => {
                begin_whole(self.pool.clone(), format!("{statement}; DEALLOCATE ALL")).await
            }
        }
    }

    /// The sqlx pool underneath, for its size and usage.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool, letting checked-out connections finish first.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs one statement in a transaction of its own, unnamed, collecting what it returns.
    async fn run_alone<'q, E>(
        pool: PgPool,
        query: E,
    ) -> Result<Vec<Either<PgQueryResult, PgRow>>, sqlx::Error>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        let mut tx = begin_whole(pool, "BEGIN".into()).await?;
        let steps = tx.fetch_many(Unnamed(query)).try_collect().await?;
        crate::failpoint::pause("pg.alone_before_commit").await;
        tx.commit().await?;
        Ok(steps)
    }
}

impl<'p> Executor<'p> for &'_ Pg {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match self.pooler {
            PgPooler::None => (&self.pool).fetch_many(query),
            PgPooler::Transaction => {
                let steps = Pg::run_alone(self.pool.clone(), query);
                futures::stream::once(steps)
                    .map_ok(|steps| futures::stream::iter(steps.into_iter().map(Ok)))
                    .try_flatten()
                    .boxed()
            }
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match self.pooler {
            PgPooler::None => (&self.pool).fetch_optional(query),
            PgPooler::Transaction => {
                let steps = Pg::run_alone(self.pool.clone(), query);
                Box::pin(async move { Ok(steps.await?.into_iter().find_map(|step| step.right())) })
            }
        }
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        (&self.pool).prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        (&self.pool).describe(sql)
    }
}

/// Acquires a connection and runs `statement` (a BEGIN) on a task of its own, so it is never
/// dropped halfway. sqlx counts a transaction as open only once BEGIN is answered: a future dropped
/// between sending BEGIN and reading the answer (a caller's deadline, a cancelled RPC) hands the
/// connection back to the pool with the server inside a transaction sqlx does not know of, and the
/// next autocommit statement on it never commits. Finished on its task, a transaction whose caller
/// has gone is dropped there and rolled back like any other.
async fn begin_whole(
    pool: PgPool,
    statement: String,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    tokio::spawn(async move { pool.begin_with(sqlx::AssertSqlSafe(statement)).await })
        .await
        .map_err(|_| sqlx::Error::WorkerCrashed)?
}

/// A statement sqlx prepares unnamed: it lives until the next statement on the server connection,
/// so nothing of it is left for another client.
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(self) -> sqlx::SqlStr {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.0.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

/// A lazily connecting pool to `url` (named by `setting` in errors): sqlx's statement cache is off
/// behind a transaction pooler, where a cached statement may live on another server connection.
pub(super) fn lazy_pool(
    config: &StorageConfig,
    url: &SecretString,
    setting: &'static str,
    max_connections: u32,
) -> Result<PgPool, StorageConfigError> {
    let mut options = PgConnectOptions::from_str(expose(url))
        .map_err(|err| err.to_string())
        .map_err(url_error(setting))?
        .application_name("brx-sync");
    if config.pg_pooler == PgPooler::Transaction {
        options = options.statement_cache_capacity(0);
    }
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

pub(super) async fn ping(pool: &Pg) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(drop)
        .map_err(|err| err.to_string())
}

/// True when every migration this build carries has been applied successfully.
pub async fn migrations_applied(pool: &Pg) -> Result<bool, sqlx::Error> {
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
