//! The periodic scheduler against the real PostgreSQL: which accounts get a full sync, in what order,
//! within the queue depth, and never twice when replicas run rounds at once.

use std::{collections::HashMap, time::Duration};

use brx_sync::{
    domain::UserId,
    jobs::{Lane, store as jobs, wake::JobWakeups},
    metrics::Metrics,
    storage::Storage,
    sync::scheduler::{SchedulerSettings, SyncScheduler},
};

use crate::helpers::{TestDatabase, test_config};

const STALE_AFTER: Duration = Duration::from_secs(24 * 3_600);

/// An account row as ConnectAccount would leave it, last synced `hours_ago` (None: never).
async fn account(db: &TestDatabase, status: &str, hours_ago: Option<f64>) -> UserId {
    let user = UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
    sqlx::query(
        "INSERT INTO accounts (user_id, status, token_ciphertext, shared_secret_ciphertext, \
             encryption_key_id, last_sync_at) \
         VALUES ($1, $2, '\\x00', '\\x00', 'k', now() - make_interval(secs => $3 * 3600))",
    )
    .bind(user.as_uuid())
    .bind(status)
    .bind(hours_ago)
    .execute(&db.pool)
    .await
    .unwrap();
    user
}

fn scheduler(db: &TestDatabase, max_queue_depth: i64) -> SyncScheduler {
    let (config, _) = test_config();
    let storage = Storage::connect_lazy(&config.storage).unwrap();
    let wakeups = JobWakeups::new(
        storage.redis,
        &config.storage.redis_key_prefix,
        HashMap::new(),
    );
    SyncScheduler::new(
        db.pool.clone(),
        wakeups,
        Metrics::new().unwrap(),
        SchedulerSettings {
            stale_after: STALE_AFTER,
            interval: Duration::from_secs(60),
            max_queue_depth,
        },
    )
}

async fn queued_users(db: &TestDatabase) -> Vec<uuid::Uuid> {
    sqlx::query_scalar(
        "SELECT user_id FROM jobs WHERE kind = 'sync_full' AND state = 'queued' ORDER BY run_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_round_queues_full_syncs_for_stale_connected_accounts_stalest_first() {
    let db = TestDatabase::new().await;
    let never = account(&db, "connected", None).await;
    let week_old = account(&db, "connected", Some(24.0 * 7.0)).await;
    let two_days = account(&db, "connected", Some(48.0)).await;
    let _fresh = account(&db, "connected", Some(1.0)).await;
    let _revoked = account(&db, "token_invalid", Some(48.0)).await;
    let _gone = account(&db, "disconnected", None).await;

    let queued = scheduler(&db, 1_000).round().await.unwrap();

    assert_eq!(queued, 3);
    assert_eq!(
        queued_users(&db).await,
        vec![never.as_uuid(), week_old.as_uuid(), two_days.as_uuid()],
        "never synced first, then the stalest"
    );
    let again = scheduler(&db, 1_000).round().await.unwrap();
    assert_eq!(again, 0, "a queued sync is not queued twice");
}

#[tokio::test]
async fn a_seller_whose_scheduled_sync_failed_is_not_requeued_every_round() {
    let db = TestDatabase::new().await;
    account(&db, "connected", Some(48.0)).await;
    scheduler(&db, 1_000).round().await.unwrap();
    let lease = jobs::claim(
        &db.pool,
        Lane::Bulk,
        "w",
        Duration::from_secs(30),
        brx_sync::jobs::Ranking::default(),
    )
    .await
    .unwrap()
    .unwrap();
    jobs::fail(&db.pool, &lease, "CardTrader was down")
        .await
        .unwrap();

    let queued = scheduler(&db, 1_000).round().await.unwrap();

    assert_eq!(queued, 0, "the next try waits for the stale threshold");
}

#[tokio::test]
async fn a_round_never_fills_the_lane_past_the_queue_depth() {
    let db = TestDatabase::new().await;
    for _ in 0..5 {
        account(&db, "connected", None).await;
    }

    let queued = scheduler(&db, 3).round().await.unwrap();

    assert_eq!(queued, 3);
    assert_eq!(scheduler(&db, 3).round().await.unwrap(), 0);
}

#[tokio::test]
async fn replicas_running_rounds_at_once_queue_each_account_once() {
    let db = TestDatabase::new().await;
    for _ in 0..50 {
        account(&db, "connected", None).await;
    }

    let rounds: Vec<_> = (0..8)
        .map(|_| {
            let scheduler = scheduler(&db, 1_000);
            tokio::spawn(async move { scheduler.round().await.unwrap() })
        })
        .collect();
    let mut total = 0;
    for round in rounds {
        total += round.await.unwrap();
    }

    assert_eq!(total, 50);
    assert_eq!(queued_users(&db).await.len(), 50);
}
