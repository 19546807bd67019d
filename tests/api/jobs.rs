//! Durable jobs against the real PostgreSQL: coalescing, SKIP LOCKED claims, one running job per seller
//! and kind, lease takeover with fencing, retries, 429 reschedules, cancellation, a full queue, and a
//! worker that dies mid-job.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use brx_sync::{
    domain::UserId,
    jobs::{
        Enqueued, JobError, JobState, Lane, NewJob, Ranking, store,
        worker::{JobContext, JobFailure, JobHandler, Worker, WorkerSettings},
    },
};
use tokio_util::sync::CancellationToken;

use crate::helpers::TestDatabase;

fn seller() -> UserId {
    UserId::from_uuid(uuid::Uuid::new_v4()).unwrap()
}

fn new_job(user_id: UserId, kind: &str) -> NewJob {
    NewJob {
        user_id,
        kind: kind.into(),
        lane: Lane::Bulk,
        payload: serde_json::json!({}),
        priority: 0,
        max_attempts: 3,
        dedupe_key: String::new(),
    }
}

const LEASE: Duration = Duration::from_secs(30);
const AGING: Duration = Duration::from_secs(60);
const TURN: Duration = Duration::from_secs(5);
const RANKING: Ranking = Ranking {
    aging: AGING,
    turn: TURN,
};

#[tokio::test]
async fn fifty_concurrent_requests_for_one_seller_coalesce_into_one_queued_job() {
    let db = TestDatabase::new().await;
    let user = seller();

    let requests: Vec<_> = (0..50)
        .map(|_| {
            let pool = db.pool.clone();
            tokio::spawn(
                async move { store::enqueue(&pool, &new_job(user, "sync_full"), 1_000).await },
            )
        })
        .collect();
    let mut outcomes = Vec::new();
    for request in requests {
        outcomes.push(request.await.unwrap().unwrap());
    }

    let created = outcomes
        .iter()
        .filter(|o| matches!(o, Enqueued::Created(_)))
        .count();
    assert_eq!(created, 1);
    assert!(outcomes.iter().all(|o| o.job().id == outcomes[0].job().id));
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(queued, 1);
}

#[tokio::test]
async fn concurrent_claims_get_different_jobs() {
    let db = TestDatabase::new().await;
    for _ in 0..2 {
        store::enqueue(&db.pool, &new_job(seller(), "sync_full"), 1_000)
            .await
            .unwrap();
    }

    let (a, b) = tokio::join!(
        store::claim(&db.pool, Lane::Bulk, "worker-a", LEASE, RANKING),
        store::claim(&db.pool, Lane::Bulk, "worker-b", LEASE, RANKING)
    );

    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    assert_ne!(a.job.id, b.job.id);
    assert!(
        store::claim(&db.pool, Lane::Bulk, "worker-c", LEASE, RANKING)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_seller_runs_one_job_of_a_kind_at_a_time_and_a_new_request_queues_behind_it() {
    let db = TestDatabase::new().await;
    let user = seller();
    store::enqueue(&db.pool, &new_job(user, "sync_full"), 1_000)
        .await
        .unwrap();
    let running = store::claim(&db.pool, Lane::Bulk, "worker-a", LEASE, RANKING)
        .await
        .unwrap()
        .unwrap();

    let next = store::enqueue(&db.pool, &new_job(user, "sync_full"), 1_000)
        .await
        .unwrap();

    assert!(
        matches!(next, Enqueued::Created(_)),
        "one running and one queued are allowed"
    );
    assert!(
        store::claim(&db.pool, Lane::Bulk, "worker-b", LEASE, RANKING)
            .await
            .unwrap()
            .is_none(),
        "not while the first runs"
    );
    store::succeed(&db.pool, &running).await.unwrap();
    let second = store::claim(&db.pool, Lane::Bulk, "worker-b", LEASE, RANKING)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.job.id, next.job().id);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_old_holder_can_no_longer_write() {
    let db = TestDatabase::new().await;
    store::enqueue(&db.pool, &new_job(seller(), "sync_full"), 1_000)
        .await
        .unwrap();
    let stale = store::claim(
        &db.pool,
        Lane::Bulk,
        "dead-worker",
        Duration::from_millis(300),
        RANKING,
    )
    .await
    .unwrap()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let fresh = store::claim(&db.pool, Lane::Bulk, "rescuer", LEASE, RANKING)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(fresh.job.id, stale.job.id);
    assert_eq!(fresh.fence, stale.fence + 1);
    assert_eq!(
        fresh.job.attempts, stale.job.attempts,
        "a takeover is not a new attempt"
    );
    let progress = serde_json::json!({"chunks_done": 99});
    assert!(matches!(
        store::record_progress(&db.pool, &stale, &progress).await,
        Err(JobError::LeaseLost)
    ));
    assert!(matches!(
        store::heartbeat(&db.pool, &stale, LEASE).await,
        Err(JobError::LeaseLost)
    ));
    assert!(matches!(
        store::succeed(&db.pool, &stale).await,
        Err(JobError::LeaseLost)
    ));
    store::record_progress(&db.pool, &fresh, &serde_json::json!({"chunks_done": 1}))
        .await
        .unwrap();
    assert_eq!(
        store::get(&db.pool, fresh.job.id).await.unwrap().progress["chunks_done"],
        1
    );
}

#[tokio::test]
async fn a_full_queue_refuses_new_jobs_but_still_coalesces_into_queued_ones() {
    let db = TestDatabase::new().await;
    let user = seller();
    store::enqueue(&db.pool, &new_job(user, "sync_full"), 1)
        .await
        .unwrap();

    let refused = store::enqueue(&db.pool, &new_job(seller(), "sync_full"), 1)
        .await
        .unwrap_err();
    let joined = store::enqueue(&db.pool, &new_job(user, "sync_full"), 1)
        .await
        .unwrap();

    assert!(matches!(refused, JobError::QueueFull { depth: 1, .. }));
    assert!(matches!(joined, Enqueued::Coalesced(_)));
}

#[tokio::test]
async fn cancelling_a_queued_job_ends_it_and_a_running_one_is_asked_to_stop() {
    let db = TestDatabase::new().await;
    let queued = store::enqueue(&db.pool, &new_job(seller(), "a"), 1_000)
        .await
        .unwrap();
    store::enqueue(&db.pool, &new_job(seller(), "b"), 1_000)
        .await
        .unwrap();

    let cancelled = store::cancel(&db.pool, queued.job().id).await.unwrap();
    let running = store::claim(&db.pool, Lane::Bulk, "w", LEASE, RANKING)
        .await
        .unwrap()
        .unwrap();
    let asked = store::cancel(&db.pool, running.job.id).await.unwrap();

    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(asked.state, JobState::Running);
    assert!(asked.cancel_requested);
    assert!(
        store::heartbeat(&db.pool, &running, LEASE).await.unwrap(),
        "the heartbeat carries the request"
    );
    assert!(matches!(
        store::cancel(&db.pool, uuid::Uuid::new_v4()).await,
        Err(JobError::NotFound)
    ));
}

/// A handler scripted by the test.
struct Scripted {
    kind: &'static str,
    runs: Arc<AtomicU32>,
    outcome: fn(u32, &JobContext) -> Result<(), JobFailure>,
    pause: Duration,
}

#[tonic::async_trait]
impl JobHandler for Scripted {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn run(&self, context: JobContext) -> Result<(), JobFailure> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let mut waited = Duration::ZERO;
        while waited < self.pause {
            if let Some(stop) = context.should_stop() {
                return Err(stop);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
        (self.outcome)(run, &context)
    }
}

fn worker(db: &TestDatabase, handler: Scripted, lease: Duration) -> Worker {
    let settings = WorkerSettings {
        owner: format!("test-{}", uuid::Uuid::new_v4()),
        lane: Lane::Bulk,
        concurrency: 4,
        lease,
        poll_interval: Duration::from_millis(50),
        ranking: RANKING,
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
    };
    Worker::new(
        db.pool.clone(),
        vec![Arc::new(handler)],
        settings,
        brx_sync::metrics::Metrics::new().unwrap(),
    )
}

async fn wait_for_state(db: &TestDatabase, id: uuid::Uuid, state: JobState) -> brx_sync::jobs::Job {
    for _ in 0..200 {
        let job = store::get(&db.pool, id).await.unwrap();
        if job.state == state {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "job never reached {state:?}: {:?}",
        store::get(&db.pool, id).await.unwrap()
    );
}

#[tokio::test]
async fn transient_failures_are_retried_until_the_attempts_run_out_and_the_last_error_is_kept() {
    let db = TestDatabase::new().await;
    let runs = Arc::new(AtomicU32::new(0));
    let handler = Scripted {
        kind: "flaky",
        runs: runs.clone(),
        outcome: |run, _| Err(JobFailure::Transient(format!("boom {run}"))),
        pause: Duration::ZERO,
    };
    let job = store::enqueue(&db.pool, &new_job(seller(), "flaky"), 1_000)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker(&db, handler, LEASE).run(stop.clone()));

    let failed = wait_for_state(&db, job.job().id, JobState::Failed).await;

    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(failed.attempts, 3);
    assert!(failed.last_error.unwrap().starts_with("boom 3"));
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_rate_limited_run_is_rescheduled_without_spending_an_attempt() {
    let db = TestDatabase::new().await;
    let runs = Arc::new(AtomicU32::new(0));
    let handler = Scripted {
        kind: "paced",
        runs: runs.clone(),
        outcome: |run, _| {
            if run <= 4 {
                Err(JobFailure::RateLimited {
                    wait: Duration::from_millis(20),
                })
            } else {
                Ok(())
            }
        },
        pause: Duration::ZERO,
    };
    let job = store::enqueue(&db.pool, &new_job(seller(), "paced"), 1_000)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker(&db, handler, LEASE).run(stop.clone()));

    let done = wait_for_state(&db, job.job().id, JobState::Succeeded).await;

    assert_eq!(
        runs.load(Ordering::SeqCst),
        5,
        "four 429s did not exhaust max_attempts = 3"
    );
    assert_eq!(done.attempts, 1);
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_running_job_stops_when_cancelled() {
    let db = TestDatabase::new().await;
    let runs = Arc::new(AtomicU32::new(0));
    let handler = Scripted {
        kind: "long",
        runs,
        outcome: |_, _| Ok(()),
        pause: Duration::from_secs(30),
    };
    let job = store::enqueue(&db.pool, &new_job(seller(), "long"), 1_000)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker(&db, handler, Duration::from_millis(600)).run(stop.clone()));
    wait_for_state(&db, job.job().id, JobState::Running).await;

    store::cancel(&db.pool, job.job().id).await.unwrap();

    wait_for_state(&db, job.job().id, JobState::Cancelled).await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_worker_that_dies_mid_job_has_its_job_finished_by_another_after_the_lease_expires() {
    let db = TestDatabase::new().await;
    let first_runs = Arc::new(AtomicU32::new(0));
    let stuck = Scripted {
        kind: "sync",
        runs: first_runs.clone(),
        outcome: |_, _| Ok(()),
        pause: Duration::from_secs(60),
    };
    let job = store::enqueue(&db.pool, &new_job(seller(), "sync"), 1_000)
        .await
        .unwrap();
    let dying =
        tokio::spawn(worker(&db, stuck, Duration::from_millis(600)).run(CancellationToken::new()));
    wait_for_state(&db, job.job().id, JobState::Running).await;

    // Killed: the task and its heartbeats stop at once, nothing is handed back.
    dying.abort();
    let second_runs = Arc::new(AtomicU32::new(0));
    let healthy = Scripted {
        kind: "sync",
        runs: second_runs.clone(),
        outcome: |_, _| Ok(()),
        pause: Duration::ZERO,
    };
    let stop = CancellationToken::new();
    let rescuer = tokio::spawn(worker(&db, healthy, Duration::from_secs(5)).run(stop.clone()));

    let done = wait_for_state(&db, job.job().id, JobState::Succeeded).await;

    assert_eq!(first_runs.load(Ordering::SeqCst), 1);
    assert_eq!(second_runs.load(Ordering::SeqCst), 1);
    assert_eq!(done.fence, 2, "the rescue took a new fence");
    stop.cancel();
    rescuer.await.unwrap().unwrap();
}

#[tokio::test]
async fn stopping_a_worker_hands_its_running_job_back_to_the_queue() {
    let db = TestDatabase::new().await;
    let runs = Arc::new(AtomicU32::new(0));
    let handler = Scripted {
        kind: "long",
        runs,
        outcome: |_, _| Ok(()),
        pause: Duration::from_secs(30),
    };
    let job = store::enqueue(&db.pool, &new_job(seller(), "long"), 1_000)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker(&db, handler, LEASE).run(stop.clone()));
    wait_for_state(&db, job.job().id, JobState::Running).await;

    stop.cancel();
    task.await.unwrap().unwrap();

    let handed_back = store::get(&db.pool, job.job().id).await.unwrap();
    assert_eq!(handed_back.state, JobState::Queued);
    assert_eq!(
        handed_back.attempts, 0,
        "an interrupted attempt is given back"
    );
}

#[tokio::test]
async fn jobs_with_their_own_keys_neither_coalesce_nor_wait_for_each_other() {
    let db = TestDatabase::new().await;
    let user = seller();
    let keyed = |key: &str| NewJob {
        dedupe_key: key.into(),
        ..new_job(user, "purchase")
    };

    let first = store::enqueue(&db.pool, &keyed("p-1"), 1_000)
        .await
        .unwrap();
    let second = store::enqueue(&db.pool, &keyed("p-2"), 1_000)
        .await
        .unwrap();
    let again = store::enqueue(&db.pool, &keyed("p-1"), 1_000)
        .await
        .unwrap();

    assert!(matches!(first, Enqueued::Created(_)));
    assert!(matches!(second, Enqueued::Created(_)));
    assert!(
        matches!(again, Enqueued::Coalesced(_)),
        "same key: same job"
    );
    let running = [
        store::claim(&db.pool, Lane::Bulk, "w", LEASE, RANKING)
            .await
            .unwrap(),
        store::claim(&db.pool, Lane::Bulk, "w", LEASE, RANKING)
            .await
            .unwrap(),
    ];
    assert!(
        running.iter().all(Option::is_some),
        "one seller's two purchases run at once"
    );
}

#[tokio::test]
async fn racing_batch_claims_never_hand_one_job_to_two_workers() {
    let db = TestDatabase::new().await;
    for _ in 0..60 {
        store::enqueue(&db.pool, &new_job(seller(), "sync_full"), 1_000)
            .await
            .unwrap();
    }

    let claims: Vec<_> = (0..12)
        .map(|n| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                store::claim_many(&pool, Lane::Bulk, &format!("w-{n}"), LEASE, RANKING, 8)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claim in claims {
        claimed.extend(claim.await.unwrap().into_iter().map(|lease| lease.job.id));
    }

    let distinct: std::collections::HashSet<_> = claimed.iter().collect();
    assert_eq!(distinct.len(), claimed.len(), "a job was claimed twice");
    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(running, claimed.len() as i64);
    assert!(
        claimed.len() >= 8,
        "at least one batch went through: {}",
        claimed.len()
    );
}

#[tokio::test]
async fn many_racing_claims_never_hand_one_job_to_two_workers() {
    let db = TestDatabase::new().await;
    for _ in 0..30 {
        store::enqueue(&db.pool, &new_job(seller(), "sync_full"), 1_000)
            .await
            .unwrap();
    }

    let claims: Vec<_> = (0..40)
        .map(|n| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                store::claim(&pool, Lane::Bulk, &format!("w-{n}"), LEASE, RANKING)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claim in claims {
        if let Some(lease) = claim.await.unwrap() {
            claimed.push(lease.job.id);
        }
    }

    let distinct: std::collections::HashSet<_> = claimed.iter().collect();
    assert_eq!(distinct.len(), claimed.len(), "a job was claimed twice");
    let fences: Vec<i64> = sqlx::query_scalar("SELECT fence FROM jobs WHERE state = 'running'")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(fences.iter().all(|fence| *fence == 1), "{fences:?}");
    assert_eq!(fences.len(), claimed.len());
}
