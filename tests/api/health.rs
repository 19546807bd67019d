//! grpc.health.v1 follows PostgreSQL reachability and migrations.

use std::time::Duration;

use brx_sync::{
    pb::v1::{PoolState, PoolStats},
    storage::MIGRATOR,
};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{TcpProxy, TestApp, spawn_app, spawn_app_behind, start_app_with, wait_for};

/// Generous: the supervisor checks every 200 ms and backs off to at most 500 ms between failures.
const CHECKS_WITHIN: Duration = Duration::from_secs(20);

/// Waits until GetStats shows the PostgreSQL pool `as_wanted`; returns it with whether the replica
/// said it was serving in the same answer.
async fn until_postgres(
    app: &TestApp,
    what: &str,
    as_wanted: impl Fn(&PoolStats) -> bool,
) -> (PoolStats, bool) {
    let token = app.service_token();
    wait_for(what, CHECKS_WITHIN, || async {
        let stats = app.get_stats(Some(&token)).await.unwrap();
        let postgres = stats
            .pools
            .into_iter()
            .find(|pool| pool.name == "postgres")
            .unwrap();
        if as_wanted(&postgres) {
            Ok((postgres, stats.serving))
        } else {
            Err(postgres)
        }
    })
    .await
}

#[tokio::test]
async fn health_is_serving_once_the_fresh_database_is_migrated() {
    let app = spawn_app().await;

    let pool = crate::helpers::pg_like_the_app(&app.config);
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, MIGRATOR.iter().count());
    assert_eq!(app.health_status().await, ServingStatus::Serving);
    assert_eq!(app.admin_get("/readyz").await.0, 200);
}

#[tokio::test]
async fn health_is_not_serving_while_postgres_is_unreachable_and_recovers_when_it_returns() {
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let app = spawn_app_behind(&proxy, |_| {}).await;

    proxy.cut().await;
    app.wait_for_health(ServingStatus::NotServing).await;
    assert_eq!(app.admin_get("/readyz").await.0, 503);

    proxy.restore();
    app.wait_for_health(ServingStatus::Serving).await;
    assert_eq!(app.admin_get("/readyz").await.0, 200);
}

#[tokio::test]
async fn health_stays_not_serving_while_migrations_are_pending_and_start_up_does_not_apply_them() {
    let app = start_app_with(|config| config.storage.migrate_on_start = false).await;
    // The database does not even exist: nothing may create or migrate it behind the operator's back.
    // Every check of the supervisor decides readiness; after two failed ones it has had its chances.
    let (_, serving) = until_postgres(&app, "two failed checks of the missing database", |pool| {
        pool.consecutive_failures >= 2
    })
    .await;
    assert!(!serving);
    assert_eq!(app.health_status().await, ServingStatus::NotServing);

    let admin = sqlx::PgPool::connect(crate::helpers::POSTGRES_ADMIN_URL)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{}\"",
        app.database_name
    )))
    .execute(&admin)
    .await
    .unwrap();
    // The check that finds the database reachable also reads its migrations and decides readiness.
    let (_, serving) = until_postgres(&app, "a check to reach the created database", |pool| {
        pool.state() == PoolState::Up
    })
    .await;
    assert!(!serving, "unmigrated database must not serve");
    assert_eq!(
        app.health_status().await,
        ServingStatus::NotServing,
        "unmigrated database must not serve"
    );

    brx_sync::app::migrate(&app.config.storage).await.unwrap();
    app.wait_for_health(ServingStatus::Serving).await;
}
