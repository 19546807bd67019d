//! Which job a claim picks (sellers take turns, old jobs age past higher priorities) and how idle
//! workers learn of new jobs (Redis wake-ups, polling as the backstop).

use std::{collections::HashMap, sync::Arc, time::Duration};

use brx_sync::{
    domain::UserId,
    jobs::{JobKind, Lane, NewJob, QueueLimit, Ranking, TargetedScope, store, wake::JobWakeups},
    storage::Storage,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestDatabase, test_config};

const LEASE: Duration = Duration::from_secs(30);
const AGING: Duration = Duration::from_secs(60);
const TURN: Duration = Duration::from_secs(5);
const RANKING: Ranking = Ranking {
    aging: AGING,
    turn: TURN,
};

fn seller() -> UserId {
    UserId::from_uuid(uuid::Uuid::new_v4()).unwrap()
}

/// Three kinds of the interactive lane, so one seller can have several jobs queued at once.
fn interactive(kind: &str) -> JobKind {
    match kind {
        "push_a" => JobKind::InventoryPush,
        "push_b" => JobKind::WebhookApply,
        _ => JobKind::SyncTargeted(TargetedScope {
            blueprint_ids: vec![1],
            expansion_ids: vec![],
        }),
    }
}

async fn queue(db: &TestDatabase, user_id: UserId, kind: &str, priority: i32) -> uuid::Uuid {
    let new = NewJob::new(user_id, interactive(kind)).with_priority(priority);
    store::enqueue(&db.pool, &new, QueueLimit::Unbounded)
        .await
        .unwrap()
        .job()
        .id
}

async fn claim_next(db: &TestDatabase) -> uuid::Uuid {
    store::claim(&db.pool, Lane::Interactive, "w", LEASE, RANKING)
        .await
        .unwrap()
        .unwrap()
        .job
        .id
}

async fn backdate(db: &TestDatabase, id: uuid::Uuid, by: Duration) {
    sqlx::query("UPDATE jobs SET run_at = run_at - make_interval(secs => $2) WHERE id = $1")
        .bind(id)
        .bind(by.as_secs_f64())
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_seller_with_a_running_job_yields_to_a_seller_with_none() {
    let db = TestDatabase::new().await;
    let (busy, waiting) = (seller(), seller());
    let first = queue(&db, busy, "push_a", 0).await;
    assert_eq!(claim_next(&db).await, first);
    // The busy seller queued more (and earlier) work than the other seller.
    let busy_second = queue(&db, busy, "push_b", 0).await;
    backdate(&db, busy_second, TURN / 2).await;
    let other = queue(&db, waiting, "push_a", 0).await;

    let next = claim_next(&db).await;

    assert_eq!(next, other, "the seller with nothing running goes first");
    assert_eq!(claim_next(&db).await, busy_second);
}

#[tokio::test]
async fn a_job_that_waited_longer_than_its_turns_outranks_a_newer_sellers_job() {
    let db = TestDatabase::new().await;
    let (busy, newcomer) = (seller(), seller());
    let running = queue(&db, busy, "push_a", 0).await;
    assert_eq!(claim_next(&db).await, running);
    let waited = queue(&db, busy, "push_b", 0).await;
    backdate(&db, waited, TURN * 2).await;
    let fresh = queue(&db, newcomer, "push_a", 0).await;

    assert_eq!(
        claim_next(&db).await,
        waited,
        "one turn behind, two turns older"
    );
    assert_eq!(claim_next(&db).await, fresh);
}

#[tokio::test]
async fn a_long_wait_outranks_a_higher_priority() {
    let db = TestDatabase::new().await;
    let old = queue(&db, seller(), "sync_targeted", 0).await;
    backdate(&db, old, AGING * 5).await;
    let urgent_but_new = queue(&db, seller(), "sync_targeted", 3).await;
    let urgent_and_newer = queue(&db, seller(), "sync_targeted", 10).await;

    let order = [
        claim_next(&db).await,
        claim_next(&db).await,
        claim_next(&db).await,
    ];

    // Effective due times: old = now - 5 min; priority 3 = now - 3 min; priority 10 = now - 10 min.
    assert_eq!(order, [urgent_and_newer, old, urgent_but_new]);
}

#[tokio::test]
async fn an_announced_job_wakes_the_workers_of_another_replica_through_redis() {
    let (config, _) = test_config();
    let storage = Storage::connect_lazy(&config.storage).unwrap();
    let woken = Arc::new(Notify::new());
    let listener = JobWakeups::new(
        storage.redis.clone(),
        &config.storage.redis_key_prefix,
        HashMap::from([(Lane::Bulk, woken.clone())]),
    );
    let stop = CancellationToken::new();
    let listening = tokio::spawn(listener.listen(config.storage.redis_url.clone(), stop.clone()));
    // Another replica: same channel, no workers of its own here.
    let announcer = JobWakeups::new(
        storage.redis.clone(),
        &config.storage.redis_key_prefix,
        HashMap::new(),
    );

    // The subscription takes a moment; announce until it is heard.
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            announcer.announce(Lane::Bulk);
            if tokio::time::timeout(Duration::from_millis(200), woken.notified())
                .await
                .is_ok()
            {
                break;
            }
        }
    })
    .await;

    assert!(heard.is_ok(), "the other replica's worker was never woken");
    // Drain wake-ups still in flight from the announcing loop.
    while tokio::time::timeout(Duration::from_millis(300), woken.notified())
        .await
        .is_ok()
    {}
    let interactive_only = JobWakeups::new(
        storage.redis.clone(),
        &config.storage.redis_key_prefix,
        HashMap::new(),
    );
    interactive_only.announce(Lane::Interactive);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), woken.notified())
            .await
            .is_err(),
        "a wake-up for another lane does not wake the bulk worker"
    );
    stop.cancel();
    listening.await.unwrap().unwrap();
}

#[tokio::test]
async fn one_claim_of_several_jobs_spreads_them_over_sellers() {
    let db = TestDatabase::new().await;
    let (busy, quiet, other) = (seller(), seller(), seller());
    // The busy seller's three jobs are the oldest (by less than a turn), so a plain due-order batch
    // would take them all.
    let mut busy_jobs = Vec::new();
    for (n, kind) in ["push_a", "push_b", "push_c"].into_iter().enumerate() {
        let id = queue(&db, busy, kind, 0).await;
        backdate(&db, id, Duration::from_millis(1_000 - 200 * n as u64)).await;
        busy_jobs.push(id);
    }
    let quiet_job = queue(&db, quiet, "push_a", 0).await;
    let other_job = queue(&db, other, "push_a", 0).await;

    let batch: Vec<uuid::Uuid> =
        store::claim_many(&db.pool, Lane::Interactive, "w", LEASE, RANKING, 3)
            .await
            .unwrap()
            .into_iter()
            .map(|lease| lease.job.id)
            .collect();

    assert_eq!(batch.len(), 3);
    assert!(
        batch.contains(&busy_jobs[0]),
        "the busy seller's oldest job takes its turn"
    );
    assert!(
        batch.contains(&quiet_job) && batch.contains(&other_job),
        "{batch:?}"
    );
    let rest = store::claim_many(&db.pool, Lane::Interactive, "w", LEASE, RANKING, 16)
        .await
        .unwrap();
    let rest: Vec<uuid::Uuid> = rest.into_iter().map(|lease| lease.job.id).collect();
    assert_eq!(rest.len(), 2, "the rest, and nothing claimed twice");
    assert!(rest.contains(&busy_jobs[1]) && rest.contains(&busy_jobs[2]));
}
