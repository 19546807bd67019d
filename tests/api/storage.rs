//! The storage supervisor: readiness follows the database, not how busy the pool is.

use std::time::Duration;

use brx_sync::{
    metrics::Metrics,
    readiness::Readiness,
    storage::{Storage, StorageSupervisor, ensure_database},
};
use tokio_util::sync::CancellationToken;

use crate::helpers::{drop_database, test_config};

/// How long readiness must stay up with the pool exhausted: five of the supervisor's 100 ms checks.
/// Staying up is an absence of change and the supervisor counts no checks a test could wait for, so
/// only watching over a fixed window can show it.
const QUIET_WINDOW: Duration = Duration::from_millis(500);

#[tokio::test]
async fn readiness_stays_up_while_every_connection_of_the_main_pool_is_checked_out() {
    let (mut config, database) = test_config();
    config.storage.pg_max_connections = 2;
    config.storage.pg_acquire_timeout = Duration::from_millis(300);
    ensure_database(&config.storage.database_url).await.unwrap();
    let storage = Storage::connect_lazy(&config.storage).unwrap();
    let held = [
        storage.pg.pool().acquire().await.unwrap(),
        storage.pg.pool().acquire().await.unwrap(),
    ];
    let readiness = Readiness::new();
    let supervisor = StorageSupervisor::new(
        storage.clone(),
        readiness.clone(),
        Metrics::new().unwrap(),
        Duration::from_millis(100),
        Duration::from_millis(300),
        true,
        config.storage.database_url.clone(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(supervisor.run(stop.clone()));

    let mut changes = readiness.subscribe();
    tokio::time::timeout(
        Duration::from_secs(20),
        changes.wait_for(|state| state.database_ready),
    )
    .await
    .expect("ready although the main pool is exhausted")
    .unwrap();
    let went_down = tokio::time::timeout(QUIET_WINDOW, changes.wait_for(|state| !state.serving()))
        .await
        .is_ok();

    assert!(!went_down, "readiness dropped while the pool was exhausted");
    assert!(
        readiness.current().serving(),
        "a busy pool must not read as a database outage"
    );
    assert!(
        storage.pg.pool().try_acquire().is_none(),
        "the main pool really was exhausted"
    );
    drop(held);
    stop.cancel();
    task.await.unwrap().unwrap();
    storage.close().await;
    drop_database(&database);
}

#[tokio::test]
async fn a_transaction_dropped_while_it_begins_leaves_its_connection_out_of_any_transaction() {
    // A caller's deadline or a cancelled RPC drops a future at any await. Dropped between sending
    // BEGIN and reading its answer, sqlx hands the connection back with the server inside a
    // transaction it does not know of; the next autocommit statement on it would then never commit
    // (the soak saw "there is already a transaction in progress").
    let (mut config, database) = test_config();
    config.storage.pg_max_connections = 1;
    ensure_database(&config.storage.database_url).await.unwrap();
    let storage = Storage::connect_lazy(&config.storage).unwrap();
    let pg = &storage.pg;
    sqlx::query("CREATE TABLE marks (id int)")
        .execute(pg)
        .await
        .unwrap();

    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        pg.begin_with("BEGIN; SELECT pg_sleep(0.5)"),
    )
    .await;
    assert!(dropped.is_err(), "dropped before the BEGIN was answered");
    // The pool's only connection, once it is back: an autocommit insert on it.
    sqlx::query("INSERT INTO marks VALUES (1)")
        .execute(pg)
        .await
        .unwrap();

    let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let mut other = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM marks")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(
        seen, 1,
        "the insert committed, visible to another connection"
    );
    drop(other);
    storage.close().await;
    drop_database(&database);
}
