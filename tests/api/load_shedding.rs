//! Past the concurrency limit RPCs are shed with RESOURCE_EXHAUSTED and a retry hint; a caller's
//! deadline and the server's ceiling both end a slow RPC with DEADLINE_EXCEEDED.

use std::time::Duration;

use brx_sync::{api::status::RETRY_AFTER_MS, pb::v1::GetStatsRequest};
use tonic::Code;

use crate::helpers::{authorized, spawn_app_with, wait_until};

#[tokio::test]
async fn a_second_rpc_beyond_a_concurrency_limit_of_one_is_shed_with_a_retry_hint() {
    let app = spawn_app_with(|config| config.server.rpc_concurrency_limit = 1).await;
    let scenario = fail::FailScenario::setup();
    fail::cfg("admin.get_stats", "return(800)").unwrap();
    let token = app.service_token();
    let mut slow_client = app.admin().await;
    let mut second_client = app.admin().await;

    let slow = tokio::spawn({
        let token = token.clone();
        async move {
            slow_client
                .get_stats(authorized(GetStatsRequest {}, &token))
                .await
        }
    });
    wait_until(
        "the slow RPC to hold the only slot",
        Duration::from_secs(10),
        || async { app.metric("brx_rpc_in_flight").await == 1.0 },
    )
    .await;
    let shed = second_client
        .get_stats(authorized(GetStatsRequest {}, &token))
        .await
        .unwrap_err();

    assert_eq!(shed.code(), Code::ResourceExhausted);
    let retry_after: u64 = shed
        .metadata()
        .get(RETRY_AFTER_MS)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0);
    assert!(
        slow.await.unwrap().is_ok(),
        "the admitted RPC is unaffected"
    );
    scenario.teardown();

    let after = second_client
        .get_stats(authorized(GetStatsRequest {}, &token))
        .await;
    assert!(after.is_ok(), "capacity is given back: {after:?}");
    let (_, metrics) = app.admin_get("/metrics").await;
    assert!(metrics.contains("brx_rpc_shed_total 1"), "{metrics}");
}

#[tokio::test]
async fn an_rpc_running_past_the_servers_timeout_ends_with_deadline_exceeded() {
    let app = spawn_app_with(|config| config.server.rpc_timeout = Duration::from_millis(300)).await;
    let scenario = fail::FailScenario::setup();
    fail::cfg("admin.get_stats", "return(2000)").unwrap();

    let status = app
        .admin()
        .await
        .get_stats(authorized(GetStatsRequest {}, &app.service_token()))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded);
    scenario.teardown();
}

#[tokio::test]
async fn a_callers_shorter_grpc_timeout_wins_over_the_servers_ceiling() {
    let app = spawn_app_with(|config| config.server.rpc_timeout = Duration::from_secs(30)).await;
    let scenario = fail::FailScenario::setup();
    fail::cfg("admin.get_stats", "return(3000)").unwrap();
    let mut request = authorized(GetStatsRequest {}, &app.service_token());
    // Sent as raw metadata: `set_timeout` would also arm tonic's client-side timer and race the server.
    request
        .metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());

    let mut admin = app.admin().await;
    let started = std::time::Instant::now();
    let status = admin.get_stats(request).await.unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the server did not wait for its own ceiling"
    );
    scenario.teardown();
}
