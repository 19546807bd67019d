//! Durable jobs against the real PostgreSQL: coalescing, SKIP LOCKED claims, one running job per seller
//! and kind, lease takeover with fencing (a takeover is an attempt), retries, 429 reschedules,
//! cancellation, a full queue, a worker that dies mid-job, a handler that panics, jobs that end dead
//! and an operator sending them back, and a worker that cannot renew its lease stopping in time.

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
        Enqueued, JobContext, JobError, JobKind, JobState, KindName, Lane, NewJob, QueueLimit,
        Ranking, store,
        worker::{JobFailure, JobHandler, Worker, WorkerSettings},
    },
};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestDatabase, wait_for, wait_until};

fn seller() -> UserId {
    UserId::from_uuid(uuid::Uuid::new_v4()).unwrap()
}

/// A job of the bulk lane with three attempts.
fn new_job(user_id: UserId, kind: JobKind) -> NewJob {
    NewJob::new(user_id, kind).with_max_attempts(3)
}

const ROOM: QueueLimit = QueueLimit::Depth(1_000);

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
            tokio::spawn(async move {
                store::enqueue(&pool, &new_job(user, JobKind::SyncFull), ROOM).await
            })
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
        store::enqueue(&db.pool, &new_job(seller(), JobKind::SyncFull), ROOM)
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
    store::enqueue(&db.pool, &new_job(user, JobKind::SyncFull), ROOM)
        .await
        .unwrap();
    let running = store::claim(&db.pool, Lane::Bulk, "worker-a", LEASE, RANKING)
        .await
        .unwrap()
        .unwrap();

    let next = store::enqueue(&db.pool, &new_job(user, JobKind::SyncFull), ROOM)
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
    store::enqueue(&db.pool, &new_job(seller(), JobKind::SyncFull), ROOM)
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

    // Refused while the lease runs, the rescuer's claim takes the job over once it has run out.
    let fresh = wait_for(
        "the expired lease to be taken over",
        Duration::from_secs(10),
        || async {
            store::claim(&db.pool, Lane::Bulk, "rescuer", LEASE, RANKING)
                .await
                .unwrap()
                .ok_or("not claimable yet")
        },
    )
    .await;

    assert_eq!(fresh.job.id, stale.job.id);
    assert_eq!(fresh.fence, stale.fence + 1);
    assert_eq!(
        fresh.job.attempts,
        stale.job.attempts + 1,
        "a takeover is an attempt: a job that kills its workers cannot loop forever"
    );
    let progress = serde_json::json!({"chunks_done": 99});
    let stale_context = JobContext::detached(stale.clone(), db.pool.clone());
    assert!(matches!(
        stale_context.record_progress(&progress).await,
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
    JobContext::detached(fresh.clone(), db.pool.clone())
        .record_progress(&serde_json::json!({"chunks_done": 1}))
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
    store::enqueue(
        &db.pool,
        &new_job(user, JobKind::SyncFull),
        QueueLimit::Depth(1),
    )
    .await
    .unwrap();

    let refused = store::enqueue(
        &db.pool,
        &new_job(seller(), JobKind::SyncFull),
        QueueLimit::Depth(1),
    )
    .await
    .unwrap_err();
    let joined = store::enqueue(
        &db.pool,
        &new_job(user, JobKind::SyncFull),
        QueueLimit::Depth(1),
    )
    .await
    .unwrap();

    assert!(matches!(refused, JobError::QueueFull { depth: 1, .. }));
    assert!(matches!(joined, Enqueued::Coalesced(_)));
}

#[tokio::test]
async fn cancelling_a_queued_job_ends_it_and_a_running_one_is_asked_to_stop() {
    let db = TestDatabase::new().await;
    let queued = store::enqueue(&db.pool, &new_job(seller(), JobKind::SyncFull), ROOM)
        .await
        .unwrap();
    store::enqueue(&db.pool, &new_job(seller(), JobKind::RemapUnmapped), ROOM)
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
    kind: KindName,
    runs: Arc<AtomicU32>,
    outcome: fn(u32, &JobContext) -> Result<(), JobFailure>,
    pause: Duration,
    gave_up: Arc<AtomicU32>,
}

impl Scripted {
    fn new(runs: &Arc<AtomicU32>, outcome: fn(u32, &JobContext) -> Result<(), JobFailure>) -> Self {
        Self {
            kind: KindName::SyncFull,
            runs: runs.clone(),
            outcome,
            pause: Duration::ZERO,
            gave_up: Arc::default(),
        }
    }

    fn pausing(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }
}

#[tonic::async_trait]
impl JobHandler for Scripted {
    fn kind(&self) -> KindName {
        self.kind
    }

    async fn run(&self, context: &JobContext) -> Result<(), JobFailure> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let mut waited = Duration::ZERO;
        while waited < self.pause {
            if let Some(stop) = context.should_stop() {
                return Err(stop);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
        (self.outcome)(run, context)
    }

    async fn give_up(&self, _context: &JobContext, _reason: &str) -> Result<(), JobFailure> {
        self.gave_up.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn worker(db: &TestDatabase, handler: Scripted, lease: Duration) -> Worker {
    worker_on(&db.pool, handler, lease, lease / 3)
}

fn worker_on(
    pool: &brx_sync::storage::Pg,
    handler: Scripted,
    lease: Duration,
    call_budget: Duration,
) -> Worker {
    let settings = WorkerSettings {
        owner: format!("test-{}", uuid::Uuid::new_v4()),
        lane: Lane::Bulk,
        concurrency: 4,
        lease,
        call_budget,
        poll_interval: Duration::from_millis(50),
        ranking: RANKING,
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
    };
    Worker::new(
        pool.clone(),
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
async fn transient_failures_are_retried_until_the_attempts_run_out_and_the_job_ends_dead() {
    let db = TestDatabase::new().await;
    let runs = Arc::new(AtomicU32::new(0));
    let handler = Scripted::new(&runs, |run, _| {
        Err(JobFailure::Transient(format!("boom {run}")))
    });
    let gave_up = handler.gave_up.clone();
    let job = store::enqueue(&db.pool, &new_job(seller(), JobKind::SyncFull), ROOM)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker(&db, handler, LEASE).run(stop.clone()));

    let dead = wait_for_state(&db, job.job().id, JobState::Dead).await;

    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(dead.attempts, 3);
    assert!(dead.last_error.unwrap().starts_with("boom 3"));
    assert_eq!(
        gave_up.load(Ordering::SeqCst),
        1,
        "the handler gave up once"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_rate_limited_run_is_rescheduled_without_spending_an_attempt() {
    let db = TestDatabase::new().await;
    let runs = Arc::new(AtomicU32::new(0));
    let handler = Scripted::new(&runs, |run, _| {
        if run <= 4 {
            Err(JobFailure::RateLimited {
                wait: Duration::from_millis(20),
            })
        } else {
            Ok(())
        }
    });
    let job = store::enqueue(&db.pool, &new_job(seller(), JobKind::SyncFull), ROOM)
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
    assert_eq!(
        done.last_error, None,
        "a job that succeeded does not report an earlier attempt's 429 as its error"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_running_job_stops_when_cancelled() {
    let db = TestDatabase::new().await;
    let runs = Arc::new(AtomicU32::new(0));
    let handler = Scripted::new(&runs, |_, _| Ok(())).pausing(Duration::from_secs(30));
    let job = store::enqueue(&db.pool, &new_job(seller(), JobKind::SyncFull), ROOM)
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
    let stuck = Scripted::new(&first_runs, |_, _| Ok(())).pausing(Duration::from_secs(60));
    let job = store::enqueue(&db.pool, &new_job(seller(), JobKind::SyncFull), ROOM)
        .await
        .unwrap();
    let dying =
        tokio::spawn(worker(&db, stuck, Duration::from_millis(600)).run(CancellationToken::new()));
    // Running in the table is not yet running in the handler: the claim commits first.
    wait_until(
        "the first worker's handler to start",
        Duration::from_secs(10),
        || {
            let first_runs = first_runs.clone();
            async move { first_runs.load(Ordering::SeqCst) == 1 }
        },
    )
    .await;

    // Killed: the task and its heartbeats stop at once, nothing is handed back.
    dying.abort();
    let second_runs = Arc::new(AtomicU32::new(0));
    let healthy = Scripted::new(&second_runs, |_, _| Ok(()));
    let stop = CancellationToken::new();
    let rescuer = tokio::spawn(worker(&db, healthy, Duration::from_secs(5)).run(stop.clone()));

    let done = wait_for_state(&db, job.job().id, JobState::Succeeded).await;

    assert_eq!(first_runs.load(Ordering::SeqCst), 1);
    assert_eq!(second_runs.load(Ordering::SeqCst), 1);
    assert_eq!(done.fence, 2, "the rescue took a new fence");
    assert_eq!(done.attempts, 2, "and spent an attempt");
    stop.cancel();
    rescuer.await.unwrap().unwrap();
}

#[tokio::test]
async fn stopping_a_worker_hands_its_running_job_back_to_the_queue() {
    let db = TestDatabase::new().await;
    let runs = Arc::new(AtomicU32::new(0));
    let handler = Scripted::new(&runs, |_, _| Ok(())).pausing(Duration::from_secs(30));
    let job = store::enqueue(&db.pool, &new_job(seller(), JobKind::SyncFull), ROOM)
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
    let (p1, p2) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let purchase = |purchase_id| {
        NewJob::new(
            user,
            JobKind::Purchase {
                purchase_id,
                locked: false,
            },
        )
    };

    let first = store::enqueue(&db.pool, &purchase(p1), ROOM).await.unwrap();
    let second = store::enqueue(&db.pool, &purchase(p2), ROOM).await.unwrap();
    let again = store::enqueue(&db.pool, &purchase(p1), ROOM).await.unwrap();

    assert!(matches!(first, Enqueued::Created(_)));
    assert!(matches!(second, Enqueued::Created(_)));
    assert!(
        matches!(again, Enqueued::Coalesced(_)),
        "same purchase: same job"
    );
    let running = [
        store::claim(&db.pool, Lane::Interactive, "w", LEASE, RANKING)
            .await
            .unwrap(),
        store::claim(&db.pool, Lane::Interactive, "w", LEASE, RANKING)
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
        store::enqueue(&db.pool, &new_job(seller(), JobKind::SyncFull), ROOM)
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
        store::enqueue(&db.pool, &new_job(seller(), JobKind::SyncFull), ROOM)
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

/// Polls until job `id`'s lease has run out in the database's clock.
async fn until_lease_expired(pool: &brx_sync::storage::Pg, id: uuid::Uuid) {
    for _ in 0..200 {
        let expired: bool = sqlx::query_scalar(
            "SELECT coalesce(lease_expires_at < now(), true) FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
        if expired {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the lease of job {id} never ran out");
}

#[tokio::test]
async fn a_job_whose_workers_keep_dying_ends_dead_instead_of_being_taken_over_forever() {
    let db = TestDatabase::new().await;
    let new = NewJob::new(seller(), JobKind::SyncFull).with_max_attempts(2);
    let id = store::enqueue(&db.pool, &new, ROOM).await.unwrap().job().id;
    // Two workers die holding it: each claims, then never renews.
    for owner in ["dies-first", "dies-second"] {
        let short = Duration::from_millis(200);
        store::claim(&db.pool, Lane::Bulk, owner, short, RANKING)
            .await
            .unwrap()
            .unwrap();
        until_lease_expired(&db.pool, id).await;
    }
    let runs = Arc::new(AtomicU32::new(0));
    let handler = Scripted::new(&runs, |_, _| Ok(()));
    let gave_up = handler.gave_up.clone();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker(&db, handler, LEASE).run(stop.clone()));

    let dead = wait_for_state(&db, id, JobState::Dead).await;

    assert_eq!(runs.load(Ordering::SeqCst), 0, "not run a third time");
    assert_eq!(gave_up.load(Ordering::SeqCst), 1, "its handler gave up");
    assert_eq!(dead.attempts, 3, "two takeovers counted");
    let error = dead.last_error.unwrap();
    assert!(error.contains("stopped renewing its lease"), "{error}");
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_panicking_handler_is_a_failed_attempt_with_its_message_and_the_job_ends_dead() {
    let db = TestDatabase::new().await;
    let new = NewJob::new(seller(), JobKind::SyncFull).with_max_attempts(2);
    let id = store::enqueue(&db.pool, &new, ROOM).await.unwrap().job().id;
    let runs = Arc::new(AtomicU32::new(0));
    let handler = Scripted::new(&runs, |run, _| panic!("unreadable row {run}"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker(&db, handler, LEASE).run(stop.clone()));

    let dead = wait_for_state(&db, id, JobState::Dead).await;

    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let error = dead.last_error.unwrap();
    assert!(
        error.contains("panicked: unreadable row 2"),
        "the panic's message is kept: {error}"
    );
    stop.cancel();
    task.await
        .unwrap()
        .expect("the worker survived its handler's panics");
}

/// A handler that calls CardTrader's `/info` over and over with its job's lease token, until a
/// call is refused; then it reports when it stopped.
struct CallsUntilStopped {
    client: brx_sync::marketplace::MarketplaceClient,
    token: secrecy::SecretString,
    calls: Arc<AtomicU32>,
    stopped: tokio::sync::mpsc::UnboundedSender<brx_sync::marketplace::MarketplaceError>,
}

#[tonic::async_trait]
impl JobHandler for CallsUntilStopped {
    fn kind(&self) -> KindName {
        KindName::SyncFull
    }

    async fn run(&self, context: &JobContext) -> Result<(), JobFailure> {
        let seller = brx_sync::marketplace::Seller {
            key: "lease-test",
            token: &self.token,
        };
        loop {
            let options = brx_sync::marketplace::CallOptions::interactive(Duration::from_secs(1))
                .stopped_by(context.lease_token());
            match self.client.info(seller, options).await {
                Ok(_) => {
                    self.calls.fetch_add(1, Ordering::SeqCst);
                }
                Err(err) => {
                    let _ = self.stopped.send(err);
                    return Err(JobFailure::LeaseLost);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_job_that_cannot_renew_its_lease_is_stopped_before_it_runs_out_and_calls_cardtrader_no_more()
 {
    use brx_sync::{
        marketplace::{MarketplaceClient, MarketplaceError},
        rate_limit::{Limits, RateLimiter},
        storage::Storage,
    };
    use cardtrader_sim::{SimulatorConfig, SimulatorHandle};
    crate::helpers::init_process();
    let db = TestDatabase::new().await;
    let simulator =
        SimulatorHandle::start(SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
    let (mut config, _) = crate::helpers::test_config();
    config.cardtrader.base_url = simulator.base_url();
    let storage = Storage::connect_lazy(&config.storage).unwrap();
    let metrics = brx_sync::metrics::Metrics::new().unwrap();
    let limiter = RateLimiter::new(
        storage.redis.clone(),
        &config.storage.redis_key_prefix,
        Limits::from_config(&config.cardtrader),
        metrics.clone(),
    );
    let token = simulator.token(1);
    let (stopped, mut stops) = tokio::sync::mpsc::unbounded_channel();
    let calls = Arc::new(AtomicU32::new(0));
    let handler = CallsUntilStopped {
        client: MarketplaceClient::new(&config.cardtrader, limiter, metrics).unwrap(),
        token: secrecy::SecretString::from(token.clone()),
        calls: calls.clone(),
        stopped,
    };
    let id = store::enqueue(&db.pool, &NewJob::new(seller(), JobKind::SyncFull), ROOM)
        .await
        .unwrap()
        .job()
        .id;
    // Every renewal fails from now on (the database stays reachable for the test's own reads).
    fail::cfg("jobs.heartbeat_fails", "return").unwrap();
    let (lease, call_budget) = (Duration::from_millis(1_500), Duration::from_millis(500));
    let worker = Worker::new(
        db.pool.clone(),
        vec![Arc::new(handler)],
        WorkerSettings {
            owner: "cannot-renew".into(),
            lane: Lane::Bulk,
            concurrency: 1,
            lease,
            call_budget,
            poll_interval: Duration::from_millis(50),
            ranking: RANKING,
            retry_min: Duration::from_millis(10),
            retry_max: Duration::from_millis(50),
        },
        brx_sync::metrics::Metrics::new().unwrap(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));

    let refused = tokio::time::timeout(Duration::from_secs(10), stops.recv())
        .await
        .expect("the job was stopped")
        .unwrap();
    let left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM lease_expires_at - now())::float8 FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // No more claims from here: once the lease runs out, the worker would take the job over again.
    stop.cancel();
    task.await.unwrap().unwrap();
    let calls_when_stopped = simulator.stats(&token).total;
    until_lease_expired(&db.pool, id).await;

    assert_eq!(
        refused,
        MarketplaceError::Cancelled,
        "the last call was not sent"
    );
    assert!(
        left > call_budget.as_secs_f64() * 0.5,
        "stopped {left:.3}s before the lease ran out, about a call budget early"
    );
    assert!(
        calls.load(Ordering::SeqCst) > 0,
        "it called while it held the lease"
    );
    assert_eq!(
        simulator.stats(&token).total,
        calls_when_stopped,
        "no call reached CardTrader after the stop"
    );
    let job = store::get(&db.pool, id).await.unwrap();
    assert_eq!(
        job.state,
        JobState::Running,
        "nothing recorded: the lease is left to run out"
    );
    fail::remove("jobs.heartbeat_fails");
}
