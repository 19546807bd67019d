//! Start-up and shutdown: configuration errors, SIGTERM, draining in-flight RPCs, the grace period.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use brx_sync::pb::v1::GetStatsRequest;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::helpers::{
    PROTECTED_ENV, ServeProcess, TestApp, authorized, spawn_app, spawn_app_with, wait_until,
};

const BINARY: &str = env!("CARGO_BIN_EXE_brx-sync");

/// Bound on the waits for the server to react to something the test did.
const REACTS_WITHIN: Duration = Duration::from_secs(10);

/// Waits until the server is handling one RPC (the one the test started), by its in-flight gauge.
async fn until_one_rpc_in_flight(app: &TestApp) {
    wait_until(
        "the RPC to be in flight on the server",
        REACTS_WITHIN,
        || async { app.metric("brx_rpc_in_flight").await == 1.0 },
    )
    .await;
}

#[tokio::test]
async fn an_in_flight_rpc_completes_after_shutdown_begins_and_new_connections_are_refused() {
    let mut app = spawn_app().await;
    let scenario = fail::FailScenario::setup();
    fail::cfg("admin.get_stats", "return(1000)").unwrap();
    let token = app.service_token();
    let mut admin = app.admin().await;
    let in_flight = tokio::spawn(async move {
        admin
            .get_stats(authorized(GetStatsRequest {}, &token))
            .await
    });
    until_one_rpc_in_flight(&app).await;

    app.trigger_shutdown();
    let endpoint =
        tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr)).unwrap();
    wait_until("the gRPC listener to close", REACTS_WITHIN, || async {
        endpoint.connect().await.is_err()
    })
    .await;

    let late = endpoint.connect().await;
    assert!(
        late.is_err(),
        "a new connection after shutdown began must be refused"
    );
    assert!(
        !in_flight.is_finished(),
        "new connections are refused while the RPC is still in flight"
    );
    let completed = in_flight.await.unwrap();
    assert!(
        completed.is_ok(),
        "the in-flight RPC completes: {completed:?}"
    );
    scenario.teardown();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn health_says_not_serving_during_the_drain_delay_while_rpcs_are_still_answered() {
    let mut app =
        spawn_app_with(|config| config.server.shutdown_drain_delay = Duration::from_secs(2)).await;
    let mut health = app.health().await;
    let mut admin = app.admin().await;

    app.trigger_shutdown();
    wait_until("health to say NOT_SERVING", REACTS_WITHIN, || {
        let mut health = health.clone();
        async move {
            let request = HealthCheckRequest {
                service: String::new(),
            };
            health.check(request).await.unwrap().into_inner().status() == ServingStatus::NotServing
        }
    })
    .await;

    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(status.into_inner().status(), ServingStatus::NotServing);
    let per_service = health
        .check(HealthCheckRequest {
            service: "brx.sync.v1.AdminService".into(),
        })
        .await
        .unwrap();
    assert_eq!(per_service.into_inner().status(), ServingStatus::NotServing);
    assert!(
        admin
            .get_stats(authorized(GetStatsRequest {}, &app.service_token()))
            .await
            .is_ok()
    );
    assert_eq!(app.admin_get("/readyz").await.0, 503);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_grace_period_bounds_an_rpc_that_would_outlive_it() {
    let mut app =
        spawn_app_with(|config| config.server.shutdown_grace_period = Duration::from_millis(300))
            .await;
    let scenario = fail::FailScenario::setup();
    fail::cfg("admin.get_stats", "return(20000)").unwrap();
    let token = app.service_token();
    let mut admin = app.admin().await;
    let _stuck = tokio::spawn(async move {
        admin
            .get_stats(authorized(GetStatsRequest {}, &token))
            .await
    });
    until_one_rpc_in_flight(&app).await;

    app.trigger_shutdown();
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.stop()).await;

    assert!(
        matches!(stopped, Ok(Ok(()))),
        "shutdown must not wait for the 20 s RPC: {stopped:?}"
    );
    scenario.teardown();
}

fn run_binary_with(env: &[(&str, &str)]) -> std::process::Output {
    Command::new(BINARY)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(PROTECTED_ENV)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("binary runs")
}

#[test]
fn an_invalid_address_exits_64_with_one_line_naming_the_setting() {
    let output = run_binary_with(&[("BRX_GRPC_ADDR", "nonsense")]);

    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("BRX_GRPC_ADDR"), "{stderr}");
}

#[test]
fn an_out_of_range_pool_size_exits_64_naming_the_setting() {
    let output = run_binary_with(&[("BRX_PG_MAX_CONNECTIONS", "0")]);

    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("BRX_PG_MAX_CONNECTIONS"));
}

#[test]
fn a_malformed_encryption_keyring_exits_64_with_one_line_naming_the_setting() {
    // Checked by App::build (the keyring is parsed there, once), not by clap.
    let output = run_binary_with(&[("BRX_ENCRYPTION_KEYS", "k1:not-base64!")]);

    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("BRX_ENCRYPTION_KEYS"), "{stderr}");
}

#[test]
fn two_jwt_keys_at_once_exit_64_naming_the_setting() {
    let output = run_binary_with(&[(
        "BRX_JWT_RS256_PUBLIC_KEY_PATH",
        "tests/fixtures/jwt_rs256_public.pem",
    )]);

    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("BRX_JWT_HS256_SECRET"));
}

#[test]
fn a_lease_shorter_than_a_cardtrader_call_can_take_exits_64_naming_both_settings() {
    // A job could lose its lease while its call is still in flight, and another worker would
    // take it over and decide too early.
    let output = run_binary_with(&[
        ("BRX_JOB_LEASE", "20s"),
        ("BRX_CARDTRADER_CALL_BUDGET", "20s"),
    ]);
    let enough = run_binary_with(&[
        ("BRX_JOB_LEASE", "30s"),
        ("BRX_CARDTRADER_CALL_BUDGET", "20s"),
        ("BRX_GRPC_ADDR", "nonsense"),
    ]);

    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("BRX_JOB_LEASE") && stderr.contains("BRX_CARDTRADER_CALL_BUDGET"),
        "{stderr}"
    );
    let stderr = String::from_utf8_lossy(&enough.stderr);
    assert!(
        !stderr.contains("BRX_JOB_LEASE"),
        "1.5 times the budget is enough: {stderr}"
    );
}

#[test]
fn help_documents_every_setting_with_its_environment_variable() {
    let help = Command::new(BINARY).arg("--help").output().unwrap();

    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for setting in [
        "BRX_GRPC_ADDR",
        "BRX_HTTP_ADDR",
        "BRX_DATABASE_URL",
        "BRX_MYSQL_URL",
        "BRX_REDIS_URL",
        "BRX_AUTH_DISABLED",
        "BRX_MIGRATE_ON_START",
        "BRX_SHUTDOWN_GRACE_PERIOD",
    ] {
        assert!(text.contains(setting), "--help does not mention {setting}");
    }
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut process = ServeProcess::spawn(&[("BRX_LOG_FORMAT", "json")]);
    process.wait_until_ready().await;

    process.sigterm();
    let output = tokio::time::timeout(Duration::from_secs(20), async {
        let child = &mut process.child;
        let mut stdout = String::new();
        tokio::io::AsyncReadExt::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout)
            .await
            .unwrap();
        (child.wait().await.unwrap(), stdout)
    })
    .await
    .expect("exits within the grace period");

    let (status, logs) = output;
    assert!(status.success(), "exit status {status:?}");
    assert!(logs.contains("brx-sync stopped"), "{logs}");
}
