//! Behind a transaction-mode pooler (PgBouncer `pool_mode = transaction`, the way Kubernetes
//! deployments put many replicas in front of one PostgreSQL): with `BRX_PG_POOLER=transaction` every
//! statement stays on one server connection, so answers are never another client's.
//!
//! Each test runs its own PgBouncer with a server pool of 2, so dozens of clients share each server
//! connection and a statement split across two of them shows at once.

use brx_sync::{
    config::{Config, PgPooler},
    jobs::JobState,
    pb::v1::PurchaseState,
    storage::Pg,
};
use futures::future::join_all;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Row, postgres::PgConnectOptions};

use crate::helpers::{PgBouncer, PurchaseRig, TestDatabase};

/// Concurrent clients, each asking questions only it can answer right.
const CLIENTS: i64 = 40;

/// `adjust` for an app whose PostgreSQL is reached through `bouncer`, as a replica would be deployed.
fn through(bouncer: &PgBouncer) -> impl FnOnce(&mut Config) + use<> {
    let addr = bouncer.addr.to_string();
    move |config| {
        let direct = config.storage.database_url.expose_secret().to_owned();
        let database = direct.rsplit('/').next().unwrap().to_owned();
        config.storage.database_url =
            SecretString::from(format!("postgres://postgres@{addr}/{database}"));
        config.storage.database_direct_url = Some(SecretString::from(direct));
        config.storage.pg_pooler = PgPooler::Transaction;
    }
}

/// A sqlx pool to `database` through `bouncer`, sized for every client at once.
fn raw_pool(bouncer: &PgBouncer, database: &str, statement_cache: usize) -> sqlx::PgPool {
    let options = format!("postgres://postgres@{}/{database}", bouncer.addr)
        .parse::<PgConnectOptions>()
        .unwrap()
        .statement_cache_capacity(statement_cache);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(CLIENTS as u32)
        .connect_lazy_with(options)
}

/// Client `client`'s question `round`: the statement text differs per client, so a statement
/// another client prepared on the same server connection gives a different answer.
async fn ask(
    pool: impl sqlx::PgExecutor<'_>,
    client: i64,
    round: i64,
) -> Result<bool, sqlx::Error> {
    let sql = format!("SELECT $1::int8 * 100 + {client}");
    let answer: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(round)
        .fetch_one(pool)
        .await?;
    Ok(answer == round * 100 + client)
}

#[tokio::test]
async fn plain_sqlx_through_the_pooler_answers_with_other_clients_statements() {
    // Why the setting exists: sqlx parses and binds in two round trips, and the pooler may hand the
    // server connection to another client between them.
    let bouncer = PgBouncer::start(2).await;
    let database = TestDatabase::new().await;
    let pool = raw_pool(&bouncer, &database.name, 100);

    let mut broken = 0;
    for _ in 0..50 {
        let rounds = (0..CLIENTS).map(|client| {
            let pool = pool.clone();
            async move {
                let mut broken = 0;
                for round in 0..20 {
                    broken += usize::from(!ask(&pool, client, round).await.unwrap_or(false));
                }
                broken
            }
        });
        broken += join_all(rounds).await.into_iter().sum::<usize>();
        if broken > 0 {
            break;
        }
    }

    assert!(
        broken > 0,
        "sqlx's defaults survived a transaction pooler: BRX_PG_POOLER=transaction may be moot"
    );
}

#[tokio::test]
async fn the_service_pool_keeps_every_statement_and_transaction_on_one_server_connection() {
    let bouncer = PgBouncer::start(2).await;
    let database = TestDatabase::new().await;
    let pg = Pg::new(raw_pool(&bouncer, &database.name, 0), PgPooler::Transaction);

    let clients = (0..CLIENTS).map(|client| {
        let pg = pg.clone();
        async move {
            let (mut wrong, mut errors) = (0, Vec::new());
            for round in 0..25 {
                // A statement on its own.
                match ask(&pg, client, round).await {
                    Ok(right) => wrong += usize::from(!right),
                    Err(err) => errors.push(err.to_string()),
                }
                // A transaction of several statements, as a chunk or a saga step writes.
                let in_transaction = async {
                    let mut tx = pg.begin().await?;
                    let first = ask(&mut *tx, client, round).await?;
                    let second = ask(&mut *tx, client, round + 1).await?;
                    let rows = sqlx::query("SELECT g FROM generate_series(1, $1::int4) g")
                        .bind(i32::try_from(client + 1).unwrap())
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(first && second && rows.len() as i64 == client + 1)
                };
                match in_transaction.await {
                    Ok(right) => wrong += usize::from(!right),
                    Err(err) => errors.push(err.to_string()),
                }
                // Several rows from a statement on its own.
                match sqlx::query("SELECT g FROM generate_series(1, $1::int4) g")
                    .bind(i32::try_from(client + 1).unwrap())
                    .fetch_all(&pg)
                    .await
                {
                    Ok(rows) => {
                        let last: i32 = rows.last().unwrap().get(0);
                        wrong += usize::from(i64::from(last) != client + 1);
                    }
                    Err(err) => errors.push(err.to_string()),
                }
            }
            (wrong, errors)
        }
    });
    let outcomes = join_all(clients).await;

    let wrong: usize = outcomes.iter().map(|(wrong, _)| wrong).sum();
    let errors: Vec<&String> = outcomes.iter().flat_map(|(_, errors)| errors).collect();
    assert_eq!(wrong, 0, "answers computed by another client's statement");
    assert!(
        errors.is_empty(),
        "{} errors, e.g. {:?}",
        errors.len(),
        errors.first()
    );
}

#[tokio::test]
async fn syncs_and_concurrent_purchases_run_through_the_pooler() {
    let bouncer = PgBouncer::start(2).await;
    let shop = PurchaseRig::with(8, 60, through(&bouncer)).await;
    let items = shop.stocked(1, 12).await;

    // Twelve buyers at once, each taking one unit of its own item: sagas, step logs, job claims,
    // heartbeats and wake-ups all sharing two server connections.
    let purchases = join_all(items.iter().enumerate().map(|(n, item)| {
        let shop = &shop;
        async move { shop.buy(&format!("pooled-{n}"), &[(*item, 1)]).await }
    }))
    .await;

    for purchase in &purchases {
        let purchase = purchase.as_ref().unwrap();
        assert_eq!(purchase.state(), PurchaseState::Completed, "{purchase:?}");
    }
    // CardTrader drops a product sold out; locally the row stays at zero until a sync sweeps it.
    for item in &items {
        let upstream = shop.upstream(*item).unwrap_or(0);
        assert_eq!(
            shop.local(*item).await,
            Some((i32::try_from(upstream).unwrap(), 0))
        );
    }
    assert_eq!(shop.leftovers().await, (0, 0));

    // A full sync through the pooled pool ends, and agrees with CardTrader on every item bought.
    let synced = shop.rig.sync(shop.user).await;
    assert_eq!(synced.state, JobState::Succeeded, "{synced:?}");
    for item in &items {
        assert_eq!(
            shop.local(*item)
                .await
                .map(|(quantity, _)| i64::from(quantity)),
            shop.upstream(*item)
        );
    }
}

#[tokio::test]
async fn health_checks_through_the_pooler_never_read_another_clients_answer() {
    // Found by the soak: the replica's own health probe (a pool of one, apart from the main pool)
    // used plain sqlx, and behind PgBouncer its checks failed now and then ("bind message supplies
    // 0 parameters, but prepared statement \"sqlx_s_300\" requires 1"), flipping readiness.
    let bouncer = PgBouncer::start(2).await;
    let database = TestDatabase::new().await;
    let (mut config, _) = crate::helpers::test_config();
    through(&bouncer)(&mut config);
    let url = format!("postgres://postgres@{}/{}", bouncer.addr, database.name);
    config.storage.database_url = SecretString::from(url);
    let storage = brx_sync::storage::Storage::connect_lazy(&config.storage).unwrap();

    // Other clients keep every server connection busy with statements of their own.
    let stop = tokio_util::sync::CancellationToken::new();
    let noise = raw_pool(&bouncer, &database.name, 100);
    let others: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (noise, stop) = (noise.clone(), stop.clone());
            tokio::spawn(async move {
                let mut round = 0;
                while !stop.is_cancelled() {
                    let _ = ask(&noise, client, round).await;
                    round += 1;
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for _ in 0..300 {
        if let Err(err) = storage.check(brx_sync::storage::PoolKind::Postgres).await {
            failures.push(err);
        }
    }
    stop.cancel();
    for other in others {
        other.await.unwrap();
    }

    assert!(
        failures.is_empty(),
        "{} of 300 checks failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
}

/// A job that runs until the test lets it finish.
struct Gated {
    started: tokio::sync::mpsc::UnboundedSender<()>,
    finish: tokio_util::sync::CancellationToken,
}

#[tonic::async_trait]
impl brx_sync::jobs::worker::JobHandler for Gated {
    fn kind(&self) -> brx_sync::jobs::KindName {
        brx_sync::jobs::KindName::SyncFull
    }

    async fn run(
        &self,
        _context: &brx_sync::jobs::JobContext,
    ) -> Result<(), brx_sync::jobs::worker::JobFailure> {
        let _ = self.started.send(());
        self.finish.cancelled().await;
        Ok(())
    }
}

#[tokio::test]
async fn a_job_ending_while_its_heartbeat_is_in_flight_settles_without_waiting_for_it() {
    // Found by the soak: behind the pooler a heartbeat is a transaction of its own. A job that
    // ended while one was in flight settled with the heartbeat still alive but no longer polled:
    // its transaction held the job's row, the settle waited for that row, and the job stayed
    // `running` under a lease nobody could take over (SKIP LOCKED passes a locked row by).
    use brx_sync::jobs::{
        JobKind, Lane, NewJob, QueueLimit, Ranking, store,
        worker::{Worker, WorkerSettings},
    };
    use std::{sync::Arc, time::Duration};

    let bouncer = PgBouncer::start(2).await;
    let database = TestDatabase::new().await;
    let pooled = format!("postgres://postgres@{}/{}", bouncer.addr, database.name)
        .parse::<PgConnectOptions>()
        .unwrap()
        .statement_cache_capacity(0);
    let pool = Pg::new(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_lazy_with(pooled),
        PgPooler::Transaction,
    );
    let user = brx_sync::domain::UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
    let job = store::enqueue(
        &database.pool,
        &NewJob::new(user, JobKind::SyncFull),
        QueueLimit::Depth(10),
    )
    .await
    .unwrap()
    .job()
    .id;
    let (started, mut has_started) = tokio::sync::mpsc::unbounded_channel();
    let finish = tokio_util::sync::CancellationToken::new();
    let settings = WorkerSettings {
        owner: "heartbeat-test".into(),
        lane: Lane::Bulk,
        // One slot: with the job running, the worker claims nothing, and the only statements
        // through the pool are the heartbeats.
        concurrency: 1,
        lease: Duration::from_secs(3),
        call_budget: Duration::from_secs(1),
        poll_interval: Duration::from_millis(50),
        ranking: Ranking {
            aging: Duration::from_secs(60),
            turn: Duration::from_secs(1),
        },
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
    };
    let handler = Gated {
        started,
        finish: finish.clone(),
    };
    let worker = Worker::new(
        pool,
        vec![Arc::new(handler)],
        settings,
        brx_sync::metrics::Metrics::new().unwrap(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    has_started.recv().await.unwrap();

    // The next heartbeat stops between its UPDATE and its COMMIT, holding the job's row.
    let scenario = fail::FailScenario::setup();
    fail::cfg("pg.alone_before_commit", "1*return(60000)").unwrap();
    let monitor = &database.pool;
    crate::helpers::wait_until(
        "a heartbeat holding the job's row",
        Duration::from_secs(10),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND state = 'idle in transaction' AND query LIKE 'UPDATE jobs SET lease_expires_at%'",
            )
            .fetch_one(monitor)
            .await
            .unwrap()
                == 1
        },
    )
    .await;
    finish.cancel();

    crate::helpers::wait_until("the job to settle", Duration::from_secs(10), || async {
        store::get(monitor, job).await.unwrap().state == JobState::Succeeded
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    scenario.teardown();
}
