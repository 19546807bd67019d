//! AdminService.GetStats reports the replica's pools, build and uptime.

use brx_sync::pb::v1::{GetStatsRequest, PoolState};
use secrecy::SecretString;

use crate::helpers::{authorized, spawn_app, spawn_app_with, wait_for};

#[tokio::test]
async fn get_stats_reports_every_pool_the_version_and_the_rpc_limit() {
    let app = spawn_app_with(|config| config.server.rpc_concurrency_limit = 77).await;

    let stats = app
        .admin()
        .await
        .get_stats(authorized(GetStatsRequest {}, &app.service_token()))
        .await
        .unwrap()
        .into_inner();

    assert!(stats.version.starts_with(env!("CARGO_PKG_VERSION")));
    assert!(stats.serving);
    let names: Vec<&str> = stats.pools.iter().map(|pool| pool.name.as_str()).collect();
    assert_eq!(names, ["postgres", "mysql", "redis"]);
    let postgres = &stats.pools[0];
    assert_eq!(postgres.state(), PoolState::Up);
    assert_eq!(postgres.max_size, app.config.storage.pg_max_connections);
    assert!(postgres.size <= postgres.max_size);
    assert_eq!(
        stats.pools[2].max_size,
        app.config.storage.redis_max_connections
    );
    let cardtrader = stats.cardtrader.unwrap();
    assert_eq!(cardtrader.breaker(), brx_sync::pb::v1::BreakerState::Closed);
    assert!(!cardtrader.rate_limit_fallback);
    let lanes: Vec<(&str, u64, u64)> = stats
        .lanes
        .iter()
        .map(|l| (l.lane.as_str(), l.queued, l.running))
        .collect();
    assert_eq!(lanes, vec![("interactive", 0, 0), ("bulk", 0, 0)]);
    let rpc = stats.rpc.unwrap();
    assert_eq!(rpc.concurrency_limit, 77);
    assert!(rpc.in_flight >= 1, "GetStats counts itself");
}

#[tokio::test]
async fn get_stats_reports_a_pool_that_cannot_connect_without_failing_start_up() {
    let app = spawn_app_with(|config| {
        // Nothing listens on port 1: the MySQL pool can never connect.
        config.storage.mysql_url =
            SecretString::from("mysql://root@127.0.0.1:1/nothing".to_owned());
    })
    .await;
    let token = app.service_token();

    // The supervisor's first check of the pool runs in the background after start-up.
    let stats = wait_for(
        "a failed check of the MySQL pool to show in GetStats",
        std::time::Duration::from_secs(20),
        || async {
            let stats = app.get_stats(Some(&token)).await.unwrap();
            let checked = stats
                .pools
                .iter()
                .any(|pool| pool.name == "mysql" && pool.consecutive_failures >= 1);
            if checked { Ok(stats) } else { Err(stats.pools) }
        },
    )
    .await;

    let mysql = stats
        .pools
        .iter()
        .find(|pool| pool.name == "mysql")
        .unwrap();
    assert_eq!(mysql.state(), PoolState::Connecting);
    assert!(mysql.consecutive_failures >= 1);
    assert!(!mysql.last_error.is_empty());
    assert!(stats.serving, "only PostgreSQL decides readiness");
}

#[tokio::test]
async fn get_stats_reports_uptime_and_keeps_counting() {
    let app = spawn_app().await;
    let token = app.service_token();

    let stats = wait_for(
        "GetStats to report a full second of uptime",
        std::time::Duration::from_secs(10),
        || async {
            let stats = app.get_stats(Some(&token)).await.unwrap();
            if stats.uptime_seconds >= 1 {
                Ok(stats)
            } else {
                Err(stats.uptime_seconds)
            }
        },
    )
    .await;

    assert!(stats.uptime_seconds >= 1);
}

/// A handler of remaps that always panics, as a poison job would.
struct Poisoned;

#[tonic::async_trait]
impl brx_sync::jobs::worker::JobHandler for Poisoned {
    fn kind(&self) -> brx_sync::jobs::KindName {
        brx_sync::jobs::KindName::RemapUnmapped
    }

    async fn run(
        &self,
        _context: &brx_sync::jobs::JobContext,
    ) -> Result<(), brx_sync::jobs::worker::JobFailure> {
        panic!("poison row");
    }
}

/// A handler of remaps that succeeds.
struct Healthy;

#[tonic::async_trait]
impl brx_sync::jobs::worker::JobHandler for Healthy {
    fn kind(&self) -> brx_sync::jobs::KindName {
        brx_sync::jobs::KindName::RemapUnmapped
    }

    async fn run(
        &self,
        _context: &brx_sync::jobs::JobContext,
    ) -> Result<(), brx_sync::jobs::worker::JobFailure> {
        Ok(())
    }
}

/// A worker of the bulk lane running `handler`, until the returned token is cancelled.
fn bulk_worker(
    pool: &brx_sync::storage::Pg,
    handler: impl brx_sync::jobs::worker::JobHandler,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    use std::time::Duration;
    let settings = brx_sync::jobs::worker::WorkerSettings {
        owner: format!("test-{}", uuid::Uuid::new_v4()),
        lane: brx_sync::jobs::Lane::Bulk,
        concurrency: 1,
        lease: Duration::from_secs(30),
        call_budget: Duration::from_secs(10),
        poll_interval: Duration::from_millis(50),
        ranking: brx_sync::jobs::Ranking::default(),
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(20),
    };
    let worker = brx_sync::jobs::worker::Worker::new(
        pool.clone(),
        vec![std::sync::Arc::new(handler)],
        settings,
        brx_sync::metrics::Metrics::new().unwrap(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    (stop, task)
}

/// Polls job `id` until it is in `state`.
async fn until_job_state(pool: &brx_sync::storage::Pg, id: uuid::Uuid, state: &str) {
    for _ in 0..200 {
        let now: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
        if now == state {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("job {id} never became {state}");
}

#[tokio::test]
async fn a_poison_job_ends_dead_shows_in_get_stats_and_metrics_and_an_operator_sends_it_back() {
    use brx_sync::{
        jobs::{JobKind, NewJob, QueueLimit, store},
        pb::v1::{ListDeadJobsRequest, RetryJobRequest},
    };
    use tonic::Code;
    // The app runs no bulk work itself: the test's workers do.
    let app = spawn_app_with(|config| config.jobs.bulk_concurrency = 0).await;
    let pool = crate::helpers::pg_like_the_app(&app.config);
    let seller = brx_sync::domain::UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
    let new = NewJob::new(seller, JobKind::RemapUnmapped).with_max_attempts(2);
    let id = store::enqueue(&pool, &new, QueueLimit::Unbounded)
        .await
        .unwrap()
        .job()
        .id;
    let (stop, task) = bulk_worker(&pool, Poisoned);
    until_job_state(&pool, id, "dead").await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let service = app.service_token();
    let mut admin = app.admin().await;

    let stats = app.get_stats(Some(&service)).await.unwrap();
    let dead = admin
        .list_dead_jobs(authorized(ListDeadJobsRequest::default(), &service))
        .await
        .unwrap()
        .into_inner();
    let (_, metrics) = app.admin_get("/metrics").await;
    let denied = admin
        .retry_job(authorized(
            RetryJobRequest {
                job_id: id.to_string(),
            },
            &app.seller_token(seller),
        ))
        .await
        .unwrap_err();
    let retried = admin
        .retry_job(authorized(
            RetryJobRequest {
                job_id: id.to_string(),
            },
            &service,
        ))
        .await
        .unwrap()
        .into_inner();
    let (stop, task) = bulk_worker(&pool, Healthy);
    until_job_state(&pool, id, "succeeded").await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let again = admin
        .retry_job(authorized(
            RetryJobRequest {
                job_id: id.to_string(),
            },
            &service,
        ))
        .await
        .unwrap_err();
    let unknown = admin
        .retry_job(authorized(
            RetryJobRequest {
                job_id: uuid::Uuid::new_v4().to_string(),
            },
            &service,
        ))
        .await
        .unwrap_err();
    let malformed = admin
        .retry_job(authorized(
            RetryJobRequest {
                job_id: "not-a-job".into(),
            },
            &service,
        ))
        .await
        .unwrap_err();

    let bulk = stats.lanes.iter().find(|lane| lane.lane == "bulk").unwrap();
    assert_eq!(bulk.dead, 1, "{stats:?}");
    assert_eq!(dead.jobs.len(), 1);
    let listed = &dead.jobs[0];
    assert_eq!(
        (
            listed.job_id.as_str(),
            listed.kind.as_str(),
            listed.attempts
        ),
        (id.to_string().as_str(), "remap_unmapped", 2)
    );
    assert!(
        listed.last_error.contains("panicked: poison row"),
        "{listed:?}"
    );
    assert!(
        metrics.contains("brx_jobs{lane=\"bulk\",state=\"dead\"} 1"),
        "{metrics}"
    );
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(retried.state, "queued");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(malformed.message().starts_with("job_id"));
}

#[tokio::test]
async fn get_stats_stops_reporting_the_rate_limit_fallback_once_redis_answers_without_waiting_for_a_call()
 {
    let proxy = crate::helpers::TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let redis_url = format!("redis://{}/0", proxy.addr);
    let app = spawn_app_with(|config| {
        config.storage.redis_url = SecretString::from(redis_url);
        config.storage.redis_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    proxy.cut().await;
    // A CardTrader call while Redis is gone puts the limiter in its in-process fallback.
    app.connected_seller(1).await;
    // GetStats says so once the supervisor's Redis check has seen the outage too.
    wait_for(
        "GetStats to report the fallback",
        std::time::Duration::from_secs(20),
        || {
            let app = &app;
            async move {
                if rate_limit_fallback(app).await {
                    Ok(())
                } else {
                    Err("not in fallback")
                }
            }
        },
    )
    .await;

    proxy.restore();

    // No CardTrader call after this: the answer follows Redis's health, not the next call.
    wait_for(
        "GetStats to report the fallback over",
        std::time::Duration::from_secs(20),
        || {
            let app = &app;
            async move {
                if rate_limit_fallback(app).await {
                    Err("still in fallback")
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;
}

/// What GetStats says of the rate limiter's in-process fallback.
async fn rate_limit_fallback(app: &crate::helpers::TestApp) -> bool {
    let request = authorized(GetStatsRequest {}, &app.service_token());
    let stats = app
        .admin()
        .await
        .get_stats(request)
        .await
        .unwrap()
        .into_inner();
    stats.cardtrader.unwrap().rate_limit_fallback
}
