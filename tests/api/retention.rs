//! Retention against the real PostgreSQL: each owner deletes at most a batch per statement, oldest
//! first; a round deletes what ended long ago and keeps what is recent or still live; one replica's
//! round at a time; the served replica runs rounds and exports table sizes on /metrics.

use std::time::Duration;

use brx_sync::{
    jobs,
    metrics::Metrics,
    purchase::{
        self as purchases,
        saga::{Phase, Saga},
    },
    retention::{ROUND_LOCK, Retention, RetentionSettings, Swept},
    webhooks,
};
use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{TestDatabase, spawn_app_with, wait_for};

const DAY: f64 = 86_400.0;

/// The defaults, two rows a statement.
fn settings() -> RetentionSettings {
    RetentionSettings {
        interval: Duration::from_secs(3_600),
        batch: 2,
        jobs: Duration::from_secs(30 * 86_400),
        purchases: Duration::from_secs(30 * 86_400),
        webhooks: Duration::from_secs(30 * 86_400),
        webhook_orders: Duration::from_secs(365 * 86_400),
    }
}

fn days_ago(days: f64) -> DateTime<Utc> {
    Utc::now() - TimeDelta::milliseconds((days * DAY * 1_000.0) as i64)
}

/// A job of `kind` in `state` for `user`, ended (when its state is an end) `days` ago.
async fn job(pool: &brx_sync::storage::Pg, user: Uuid, kind: &str, state: &str, days: f64) -> Uuid {
    let id = Uuid::new_v4();
    let lane = if kind == "sync_full" {
        "bulk"
    } else {
        "interactive"
    };
    let dedupe = if kind == "purchase" {
        id.to_string()
    } else {
        String::new()
    };
    let ended = !matches!(state, "queued" | "running");
    sqlx::query(
        "INSERT INTO jobs (id, user_id, kind, lane, state, dedupe_key, lease_owner, lease_expires_at, \
             created_at, finished_at) \
         VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $5 = 'running' THEN 'worker' END, \
             CASE WHEN $5 = 'running' THEN now() + interval '1 minute' END, $7, $8)",
    )
    .bind(id)
    .bind(user)
    .bind(kind)
    .bind(lane)
    .bind(state)
    .bind(dedupe)
    .bind(days_ago(days + 0.01))
    .bind(ended.then(|| days_ago(days)))
    .execute(pool)
    .await
    .unwrap();
    id
}

/// A purchase in `state` with two lines (with snapshots) and three steps, ended `days` ago.
async fn purchase(pool: &brx_sync::storage::Pg, state: &str, days: f64) -> Uuid {
    let id = Uuid::new_v4();
    let mut saga = Saga::new(2);
    if state == "completed" {
        saga.phase = Phase::Completed;
    }
    sqlx::query(
        "INSERT INTO purchases (id, user_id, idempotency_key, request_hash, saga, deadline, state, \
             created_at, finished_at) \
         VALUES ($1, $2, $3, '\\x00', $4, $5, $6, $5, $5)",
    )
    .bind(id)
    .bind(Uuid::new_v4())
    .bind(id.to_string())
    .bind(serde_json::to_value(&saga).unwrap())
    .bind(days_ago(days))
    .bind(state)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO purchase_lines (purchase_id, line, product_id, quantity, snapshot) \
         VALUES ($1, 0, 10, 1, '{\"seen_quantity\": 3}'), ($1, 1, 11, 2, '{\"seen_quantity\": 4}')",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO purchase_steps (purchase_id, seq, event, fence) \
         SELECT $1, s, '{}', 0 FROM generate_series(0, 2) s",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// A webhook event of `order`, received `days` ago and applied then (unless `applied` is false);
/// `sync_pending`: its unknown products still wait for their sync to be queued.
async fn event(
    pool: &brx_sync::storage::Pg,
    user: Uuid,
    order: i64,
    days: f64,
    applied: bool,
    sync_pending: bool,
) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO webhook_events (id, user_id, cause, object_id, mode, body, received_at, \
             applied_at, outcome, unknown_products) \
         VALUES ($1, $2, 'order.update', $3, 'live', '{}', $4, CASE WHEN $5 THEN $4 END, \
             CASE WHEN $5 THEN 'stock taken' END, CASE WHEN $6 THEN '[]'::jsonb END)",
    )
    .bind(id)
    .bind(user)
    .bind(order)
    .bind(days_ago(days))
    .bind(applied)
    .bind(sync_pending)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// The record of `order`, last touched by a delivery `days` ago.
async fn order(pool: &brx_sync::storage::Pg, user: Uuid, order: i64, days: f64) {
    sqlx::query(
        "INSERT INTO webhook_orders (user_id, order_id, created_at, updated_at) VALUES ($1, $2, $3, $3)",
    )
    .bind(user)
    .bind(order)
    .bind(days_ago(days))
    .execute(pool)
    .await
    .unwrap();
}

async fn exists(pool: &brx_sync::storage::Pg, table: &str, column: &str, id: Uuid) -> bool {
    let sql = format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE {column} = $1)");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn count(pool: &brx_sync::storage::Pg, table: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {table}");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn each_owner_deletes_at_most_a_batch_per_statement_oldest_first() {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    let user = Uuid::new_v4();
    let mut old_jobs = Vec::new();
    for n in 0..7 {
        old_jobs.push(job(pool, user, "purchase", "succeeded", 40.0 + f64::from(n)).await);
        purchase(pool, "completed", 40.0).await;
        event(pool, user, n.into(), 40.0, true, false).await;
        order(pool, user, n.into(), 400.0).await;
    }
    let cutoff = days_ago(30.0);
    let quiet = days_ago(365.0);

    let mut jobs_deleted = Vec::new();
    let mut pruned = Vec::new();
    let mut events = Vec::new();
    let mut orders = Vec::new();
    for _ in 0..4 {
        jobs_deleted.push(
            jobs::store::delete_ended_before(pool, cutoff, 3)
                .await
                .unwrap(),
        );
        let mut conn = pool.pool().acquire().await.unwrap();
        pruned.push(
            purchases::prune_ended_before(&mut conn, cutoff, 3)
                .await
                .unwrap()
                .purchases,
        );
        events.push(
            webhooks::delete_events_applied_before(pool, cutoff, 3)
                .await
                .unwrap(),
        );
        orders.push(
            webhooks::delete_orders_untouched_since(pool, quiet, 3)
                .await
                .unwrap(),
        );
        if jobs_deleted.len() == 1 {
            // The three oldest went first.
            for (n, id) in old_jobs.iter().enumerate() {
                assert_eq!(exists(pool, "jobs", "id", *id).await, n < 4, "job {n}");
            }
        }
    }

    assert_eq!(jobs_deleted, [3, 3, 1, 0]);
    assert_eq!(pruned, [3, 3, 1, 0]);
    assert_eq!(events, [3, 3, 1, 0]);
    assert_eq!(orders, [3, 3, 1, 0]);
    assert_eq!(count(pool, "purchase_steps").await, 0);
    assert_eq!(count(pool, "purchases").await, 7, "purchases stay");
}

#[tokio::test]
async fn a_round_deletes_what_ended_long_ago_and_keeps_what_is_recent_or_live() {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    let user = Uuid::new_v4();
    // Jobs: five past retention go; the recent, the live, the dead and the seller's latest ended
    // sync stay.
    let mut gone_jobs = Vec::new();
    for _ in 0..3 {
        gone_jobs.push(job(pool, user, "purchase", "succeeded", 40.0).await);
    }
    gone_jobs.push(job(pool, user, "webhook_apply", "failed", 45.0).await);
    gone_jobs.push(job(pool, user, "sync_full", "succeeded", 50.0).await);
    let kept_jobs = [
        job(pool, user, "sync_full", "failed", 40.0).await,
        job(pool, user, "purchase", "succeeded", 1.0).await,
        job(pool, user, "sync_targeted", "queued", 60.0).await,
        job(pool, user, "purchase", "running", 60.0).await,
        job(pool, user, "purchase", "dead", 60.0).await,
    ];
    // Purchases: four ended long ago lose their log; the one needing a person and the recent one
    // keep everything.
    let mut pruned = Vec::new();
    for _ in 0..3 {
        pruned.push(purchase(pool, "completed", 40.0).await);
    }
    pruned.push(purchase(pool, "failed", 40.0).await);
    let attention = purchase(pool, "requires_attention", 40.0).await;
    let recent = purchase(pool, "completed", 1.0).await;
    // Webhook events: three applied long ago go; the unapplied one, the one whose sync is still to
    // be queued and the recent one stay. Orders: the one quiet for over a year goes, unless an
    // event of it waits to be applied; the one quiet for 100 days stays.
    let mut gone_events = Vec::new();
    for n in 0..3 {
        gone_events.push(event(pool, user, 100 + n, 40.0, true, false).await);
    }
    let kept_events = [
        event(pool, user, 2, 40.0, false, false).await,
        event(pool, user, 200, 40.0, true, true).await,
        event(pool, user, 201, 1.0, true, false).await,
    ];
    order(pool, user, 1, 400.0).await;
    order(pool, user, 2, 400.0).await;
    order(pool, user, 3, 100.0).await;
    let metrics = Metrics::new().unwrap();
    let retention = Retention::new(pool.clone(), metrics.clone(), settings());

    let swept = retention.round(&CancellationToken::new()).await.unwrap();

    assert_eq!(
        swept,
        Some(Swept {
            jobs: 5,
            purchases: 4,
            purchase_steps: 12,
            webhook_events: 3,
            webhook_orders: 1,
        })
    );
    for id in gone_jobs {
        assert!(!exists(pool, "jobs", "id", id).await);
    }
    for id in kept_jobs {
        assert!(exists(pool, "jobs", "id", id).await, "job {id} kept");
    }
    for id in gone_events {
        assert!(!exists(pool, "webhook_events", "id", id).await);
    }
    for id in kept_events {
        assert!(
            exists(pool, "webhook_events", "id", id).await,
            "event {id} kept"
        );
    }
    let orders: Vec<i64> = sqlx::query_scalar("SELECT order_id FROM webhook_orders ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(orders, [2, 3]);
    let kept = purchases::load(pool, pruned[0]).await.unwrap().unwrap();
    assert_eq!(kept.saga.phase, Phase::Completed);
    assert_eq!(kept.steps, 0, "the step log is gone");
    assert_eq!(kept.lines.len(), 2, "the lines stay");
    assert!(kept.lines.iter().all(|line| line.memo.is_none()));
    for untouched in [attention, recent] {
        let whole = purchases::load(pool, untouched).await.unwrap().unwrap();
        assert_eq!(whole.steps, 3);
        assert!(whole.lines.iter().all(|line| line.memo.is_some()));
    }
    let rendered = metrics.render();
    for (table, deleted) in [
        ("jobs", 5),
        ("purchase_steps", 12),
        ("webhook_events", 3),
        ("webhook_orders", 1),
    ] {
        let series = format!("brx_retention_deleted_total{{table=\"{table}\"}} {deleted}\n");
        assert!(rendered.contains(&series), "{series}{rendered}");
    }
    assert_eq!(
        retention.round(&CancellationToken::new()).await.unwrap(),
        Some(Swept::default()),
        "nothing is left to delete"
    );
}

#[tokio::test]
async fn a_round_waits_its_turn_while_another_replica_runs_one() {
    let db = TestDatabase::new().await;
    let old = job(&db.pool, Uuid::new_v4(), "purchase", "succeeded", 40.0).await;
    let retention = Retention::new(db.pool.clone(), Metrics::new().unwrap(), settings());
    let mut other_replica = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ROUND_LOCK)
        .execute(&mut *other_replica)
        .await
        .unwrap();

    let skipped = retention.round(&CancellationToken::new()).await.unwrap();

    assert_eq!(skipped, None);
    assert!(exists(&db.pool, "jobs", "id", old).await);
    other_replica.rollback().await.unwrap();
    let ran = retention.round(&CancellationToken::new()).await.unwrap();
    assert_eq!(ran.map(|swept| swept.jobs), Some(1));
    assert!(!exists(&db.pool, "jobs", "id", old).await);
}

#[tokio::test]
async fn a_retention_longer_than_the_calendar_keeps_everything() {
    let db = TestDatabase::new().await;
    let old = job(&db.pool, Uuid::new_v4(), "purchase", "succeeded", 40.0).await;
    let forever = RetentionSettings {
        jobs: humantime::parse_duration("300000years").unwrap(),
        ..settings()
    };
    let retention = Retention::new(db.pool.clone(), Metrics::new().unwrap(), forever);

    let swept = retention.round(&CancellationToken::new()).await.unwrap();

    assert_eq!(swept.map(|swept| swept.jobs), Some(0));
    assert!(exists(&db.pool, "jobs", "id", old).await);
}

#[tokio::test]
async fn a_served_replica_runs_retention_and_exports_table_sizes() {
    let app = spawn_app_with(|config| {
        config.retention.interval = Duration::from_millis(200);
    })
    .await;
    let pool = crate::helpers::pg_like_the_app(&app.config);
    let old = job(&pool, Uuid::new_v4(), "purchase", "succeeded", 40.0).await;

    let body = wait_for(
        "a retention round to delete the old job",
        Duration::from_secs(20),
        || async {
            let (_, body) = app.admin_get("/metrics").await;
            if body.contains("brx_retention_deleted_total{table=\"jobs\"} 1\n") {
                Ok(body)
            } else {
                Err(body)
            }
        },
    )
    .await;

    assert!(!exists(&pool, "jobs", "id", old).await);
    for table in [
        "jobs",
        "purchases",
        "purchase_steps",
        "webhook_events",
        "inventory_items",
    ] {
        assert!(
            body.contains(&format!("brx_table_bytes{{table=\"{table}\"}} ")),
            "{table}: {body}"
        );
        assert!(
            body.contains(&format!("brx_table_rows{{table=\"{table}\"}} ")),
            "{table}: {body}"
        );
    }
}
