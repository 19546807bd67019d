//! AdminService.GetStats reports the replica's pools, build and uptime.

use brx_sync::pb::v1::{GetStatsRequest, PoolState};
use secrecy::SecretString;

use crate::helpers::{authorized, spawn_app, spawn_app_with};

#[tokio::test]
async fn get_stats_reports_every_pool_the_version_and_the_rpc_limit() {
    let app = spawn_app_with(|config| config.rpc_concurrency_limit = 77).await;

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
    assert_eq!(postgres.max_size, app.config.pg_max_connections);
    assert!(postgres.size <= postgres.max_size);
    assert_eq!(stats.pools[2].max_size, app.config.redis_max_connections);
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
        config.mysql_url = SecretString::from("mysql://root@127.0.0.1:1/nothing".to_owned());
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;

    let stats = app
        .admin()
        .await
        .get_stats(authorized(GetStatsRequest {}, &app.service_token()))
        .await
        .unwrap()
        .into_inner();

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
    let mut admin = app.admin().await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let stats = admin
        .get_stats(authorized(GetStatsRequest {}, &app.service_token()))
        .await
        .unwrap()
        .into_inner();

    assert!(stats.uptime_seconds >= 1);
}
