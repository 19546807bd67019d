//! SQL of the `jobs` table. Every write a worker makes after its claim carries `fence = $n`, so a
//! worker whose lease was taken over changes nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::{Enqueued, Job, JobError, JobState, Lane, Lease, NewJob, Ranking};
use crate::domain::UserId;

/// The columns of [`JobRow`], as a literal so queries stay `&'static str`.
macro_rules! columns {
    () => {
        "id, user_id, kind, dedupe_key, lane, state, payload, attempts, max_attempts, run_at, fence, cancel_requested, \
         last_error, progress, created_at, started_at, finished_at"
    };
}

#[derive(Debug, sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    user_id: Uuid,
    kind: String,
    dedupe_key: String,
    lane: String,
    state: String,
    payload: serde_json::Value,
    attempts: i32,
    max_attempts: i32,
    run_at: DateTime<Utc>,
    fence: i64,
    cancel_requested: bool,
    last_error: Option<String>,
    progress: serde_json::Value,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<JobRow> for Job {
    type Error = sqlx::Error;

    fn try_from(row: JobRow) -> Result<Self, Self::Error> {
        let decode =
            |what: &str| sqlx::Error::Decode(format!("bad {what} in jobs row {}", row.id).into());
        Ok(Job {
            id: row.id,
            user_id: UserId::from_uuid(row.user_id).map_err(|_| decode("user_id"))?,
            kind: row.kind.clone(),
            dedupe_key: row.dedupe_key.clone(),
            lane: Lane::parse(&row.lane).ok_or_else(|| decode("lane"))?,
            state: JobState::parse(&row.state).ok_or_else(|| decode("state"))?,
            payload: row.payload,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            run_at: row.run_at,
            fence: row.fence,
            cancel_requested: row.cancel_requested,
            last_error: row.last_error,
            progress: row.progress,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        })
    }
}

fn job(row: JobRow) -> Result<Job, JobError> {
    Ok(Job::try_from(row)?)
}

/// Queues `new`, or joins the job of the same seller and kind already queued. Refuses with
/// [`JobError::QueueFull`] past `max_depth` queued jobs in the lane.
pub async fn enqueue(pool: &PgPool, new: &NewJob, max_depth: i64) -> Result<Enqueued, JobError> {
    let depth = queued_in_lane(pool, new.lane).await?;
    // Joining an existing job adds nothing to the queue, so only a new job is refused.
    for _ in 0..3 {
        if let Some(existing) = find_queued(pool, new).await? {
            return Ok(Enqueued::Coalesced(existing));
        }
        if depth >= max_depth {
            return Err(JobError::QueueFull {
                lane: new.lane.as_str(),
                depth,
                retry_after: Duration::from_secs(5),
            });
        }
        let sql = concat!(
            "INSERT INTO jobs (id, user_id, kind, lane, payload, priority, max_attempts, dedupe_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (user_id, kind, dedupe_key) WHERE state = 'queued' DO NOTHING RETURNING ",
            columns!()
        );
        let inserted: Option<JobRow> = sqlx::query_as(sql)
            .bind(Uuid::new_v4())
            .bind(new.user_id.as_uuid())
            .bind(&new.kind)
            .bind(new.lane.as_str())
            .bind(&new.payload)
            .bind(new.priority)
            .bind(new.max_attempts)
            .bind(&new.dedupe_key)
            .fetch_optional(pool)
            .await?;
        if let Some(row) = inserted {
            return Ok(Enqueued::Created(job(row)?));
        }
        // Another request queued one between our lookup and insert: join it on the next pass.
    }
    find_queued(pool, new)
        .await?
        .map(Enqueued::Coalesced)
        .ok_or(JobError::NotFound)
}

/// Queues `new` inside the caller's transaction, without coalescing or a depth check: for jobs whose
/// `dedupe_key` is unique (one per purchase), queued together with the row they work on.
pub async fn insert(conn: &mut sqlx::PgConnection, new: &NewJob) -> Result<Uuid, JobError> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO jobs (id, user_id, kind, lane, payload, priority, max_attempts, dedupe_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(new.user_id.as_uuid())
    .bind(&new.kind)
    .bind(new.lane.as_str())
    .bind(&new.payload)
    .bind(new.priority)
    .bind(new.max_attempts)
    .bind(&new.dedupe_key)
    .execute(conn)
    .await?;
    Ok(id)
}

/// Makes sure a queued job of `new`'s seller, kind and key will run after the caller's
/// transaction commits, which is the outbox pattern: the rows to work on commit together with the
/// promise that a job will look at them. Holds the queued job `FOR SHARE` until then, or queues one.
/// No depth check: refusing would lose what the caller is committing.
///
/// Holding it is what `ON CONFLICT DO NOTHING` alone would miss: a queued job claimed between the
/// conflict and the caller's commit would run without seeing the caller's rows, and nothing would
/// look at them until the next change. A claim passes over a locked job (`SKIP LOCKED`), so the job
/// starts only after the commit; a job claimed first is no longer queued, and a new one is queued.
pub async fn insert_coalesced(conn: &mut sqlx::PgConnection, new: &NewJob) -> Result<(), JobError> {
    // Each pass reads afresh, so the second sees the job that a concurrent request queued first.
    for _ in 0..3 {
        let held: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE user_id = $1 AND kind = $2 AND dedupe_key = $3 \
               AND state = 'queued' FOR SHARE",
        )
        .bind(new.user_id.as_uuid())
        .bind(&new.kind)
        .bind(&new.dedupe_key)
        .fetch_optional(&mut *conn)
        .await?;
        if held.is_some() {
            return Ok(());
        }
        let queued: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO jobs (id, user_id, kind, lane, payload, priority, max_attempts, dedupe_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (user_id, kind, dedupe_key) WHERE state = 'queued' DO NOTHING RETURNING id",
        )
        .bind(Uuid::new_v4())
        .bind(new.user_id.as_uuid())
        .bind(&new.kind)
        .bind(new.lane.as_str())
        .bind(&new.payload)
        .bind(new.priority)
        .bind(new.max_attempts)
        .bind(&new.dedupe_key)
        .fetch_optional(&mut *conn)
        .await?;
        if queued.is_some() {
            return Ok(());
        }
    }
    Err(JobError::Contended)
}

/// Queues `new` already claimed by `owner` for `lease` (its first attempt, fence 1), inside the
/// caller's transaction: for work the replica that asked for it starts at once, without a claim. If
/// that replica dies first, the lease runs out and any worker rescues the job like any orphan.
pub async fn insert_claimed(
    conn: &mut sqlx::PgConnection,
    new: &NewJob,
    owner: &str,
    lease: Duration,
) -> Result<Lease, JobError> {
    let sql = concat!(
        "INSERT INTO jobs (id, user_id, kind, lane, payload, priority, max_attempts, dedupe_key, \
             state, lease_owner, lease_expires_at, fence, attempts, started_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', $9, now() + make_interval(secs => $10), \
             1, 1, now()) RETURNING ",
        columns!()
    );
    let row: JobRow = sqlx::query_as(sql)
        .bind(Uuid::new_v4())
        .bind(new.user_id.as_uuid())
        .bind(&new.kind)
        .bind(new.lane.as_str())
        .bind(&new.payload)
        .bind(new.priority)
        .bind(new.max_attempts)
        .bind(&new.dedupe_key)
        .bind(owner)
        .bind(lease.as_secs_f64())
        .fetch_one(conn)
        .await?;
    let job = job(row)?;
    Ok(Lease {
        fence: job.fence,
        owner: owner.to_owned(),
        job,
    })
}

/// Like [`enqueue`], but a request that joins a queued job widens it: `merge(queued, requested)`
/// becomes the queued job's payload (a union of ids, say), so no request is coalesced away into a
/// narrower job. The swap is compare-and-set on the payload; if the job was claimed or changed in
/// between, the request is enqueued again.
pub async fn enqueue_merging(
    pool: &PgPool,
    new: &NewJob,
    max_depth: i64,
    merge: impl Fn(&serde_json::Value, &serde_json::Value) -> serde_json::Value,
) -> Result<Enqueued, JobError> {
    for _ in 0..5 {
        let queued = match enqueue(pool, new, max_depth).await? {
            Enqueued::Coalesced(queued) => queued,
            created => return Ok(created),
        };
        let merged = merge(&queued.payload, &new.payload);
        if merged == queued.payload {
            return Ok(Enqueued::Coalesced(queued));
        }
        let sql = concat!(
            "UPDATE jobs SET payload = $3, updated_at = now() \
             WHERE id = $1 AND state = 'queued' AND payload = $2 RETURNING ",
            columns!()
        );
        let widened: Option<JobRow> = sqlx::query_as(sql)
            .bind(queued.id)
            .bind(&queued.payload)
            .bind(&merged)
            .fetch_optional(pool)
            .await?;
        if let Some(row) = widened {
            return Ok(Enqueued::Coalesced(job(row)?));
        }
    }
    Err(JobError::Contended)
}

async fn find_queued(pool: &PgPool, new: &NewJob) -> Result<Option<Job>, JobError> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM jobs WHERE user_id = $1 AND kind = $2 AND dedupe_key = $3 AND state = 'queued'"
    );
    let row: Option<JobRow> = sqlx::query_as(sql)
        .bind(new.user_id.as_uuid())
        .bind(&new.kind)
        .bind(&new.dedupe_key)
        .fetch_optional(pool)
        .await?;
    row.map(job).transpose()
}

/// Queued jobs in `lane`.
pub async fn queued_in_lane(executor: impl PgExecutor<'_>, lane: Lane) -> Result<i64, JobError> {
    let depth =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'queued' AND lane = $1")
            .bind(lane.as_str())
            .fetch_one(executor)
            .await?;
    Ok(depth)
}

/// Claims the next job of `lane` that no other worker holds, and bumps its fence (see
/// [`claim_many`] for the order).
pub async fn claim(
    pool: &PgPool,
    lane: Lane,
    owner: &str,
    lease: Duration,
    ranking: Ranking,
) -> Result<Option<Lease>, JobError> {
    Ok(claim_many(pool, lane, owner, lease, ranking, 1)
        .await?
        .pop())
}

/// Claims up to `max` jobs of `lane` that no other worker holds, in one statement, and bumps their
/// fences. First running jobs whose lease expired (their worker died). Then the due queued jobs
/// whose seller runs no job of the same kind and key, in [`Ranking`] order: a job's turns are the
/// jobs its seller already runs in the lane plus its due jobs ahead of it, so a batch spreads over
/// sellers as single claims would.
pub async fn claim_many(
    pool: &PgPool,
    lane: Lane,
    owner: &str,
    lease: Duration,
    ranking: Ranking,
    max: usize,
) -> Result<Vec<Lease>, JobError> {
    // `due` bounds the fairness sort to the most urgent jobs, so a deep queue costs one top-N sort and
    // a few dozen index probes per claim rather than a probe per queued job. A turn is two index
    // probes (a window function would be simpler, but cannot share a query level with FOR UPDATE,
    // and a separate level joined back cost twice as much). The locking query
    // repeats the claimability conditions: `due` read an older snapshot, and only conditions of the
    // locking query itself are re-checked on the row version a concurrent claim just committed.
    // Without them two workers could claim the same job. Its ORDER BY and LIMIT sit under SKIP
    // LOCKED, so jobs another worker is claiming right now are passed over, not waited for.
    let sql = concat!(
        "WITH due AS ( \
             SELECT j.id FROM jobs j \
             WHERE j.lane = $1 AND j.state = 'queued' AND j.run_at <= now() \
               AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.user_id = j.user_id AND r.kind = j.kind \
                               AND r.dedupe_key = j.dedupe_key AND r.state = 'running') \
             ORDER BY j.run_at - make_interval(secs => j.priority * $4) LIMIT 64), \
         orphaned AS ( \
             SELECT j.id FROM jobs j WHERE j.lane = $1 AND j.state = 'running' AND j.lease_expires_at < now()), \
         candidate AS ( \
             SELECT j.id AS candidate_id FROM jobs j \
             WHERE j.id IN (SELECT id FROM due UNION ALL SELECT id FROM orphaned) \
               AND j.lane = $1 AND ((j.state = 'queued' AND j.run_at <= now()) \
                                    OR (j.state = 'running' AND j.lease_expires_at < now())) \
             ORDER BY (j.state = 'running') DESC, \
                 j.run_at - make_interval(secs => j.priority * $4) \
                 + make_interval(secs => $6 * ( \
                     (SELECT count(*) FROM jobs o WHERE o.user_id = j.user_id AND o.lane = j.lane \
                      AND o.state = 'running') \
                     + (SELECT count(*) FROM jobs q WHERE q.user_id = j.user_id AND q.lane = j.lane \
                        AND q.state = 'queued' AND q.run_at <= now() \
                        AND q.run_at - make_interval(secs => q.priority * $4) \
                            < j.run_at - make_interval(secs => j.priority * $4)))) \
             LIMIT $5 FOR UPDATE SKIP LOCKED) \
         UPDATE jobs SET state = 'running', lease_owner = $2, \
             lease_expires_at = now() + make_interval(secs => $3), fence = jobs.fence + 1, \
             attempts = CASE WHEN jobs.state = 'queued' THEN jobs.attempts + 1 ELSE jobs.attempts END, \
             started_at = coalesce(jobs.started_at, now()), updated_at = now() \
         FROM candidate WHERE jobs.id = candidate.candidate_id \
           AND (jobs.state = 'queued' OR jobs.lease_expires_at < now()) RETURNING ",
        columns!()
    );
    let claimed = sqlx::query_as::<_, JobRow>(sql)
        .bind(lane.as_str())
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(ranking.aging.as_secs_f64())
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .bind(ranking.turn.as_secs_f64())
        .fetch_all(pool)
        .await;
    let rows = match claimed {
        Ok(rows) => rows,
        // Two workers raced to start the same seller's same kind: the index let one through.
        Err(err) if is_unique_violation(&err) => Vec::new(),
        Err(err) => return Err(err.into()),
    };
    rows.into_iter()
        .map(|row| {
            let job = job(row)?;
            Ok(Lease {
                fence: job.fence,
                owner: owner.to_owned(),
                job,
            })
        })
        .collect()
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error().and_then(|db| db.code()).as_deref() == Some("23505")
}

/// Extends the lease; returns whether a cancellation was requested. [`JobError::LeaseLost`] when the
/// job was taken over.
pub async fn heartbeat(pool: &PgPool, lease: &Lease, duration: Duration) -> Result<bool, JobError> {
    let cancel: Option<bool> = sqlx::query_scalar(
        "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3), updated_at = now() \
         WHERE id = $1 AND fence = $2 AND state = 'running' RETURNING cancel_requested",
    )
    .bind(lease.job.id)
    .bind(lease.fence)
    .bind(duration.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    cancel.ok_or(JobError::LeaseLost)
}

/// Stores progress counters, fenced; meant to run inside the caller's transaction with its other writes,
/// so a fenced-out worker's transaction rolls back whole.
pub async fn record_progress(
    executor: impl PgExecutor<'_>,
    lease: &Lease,
    progress: &serde_json::Value,
) -> Result<(), JobError> {
    let updated = sqlx::query("UPDATE jobs SET progress = $3, updated_at = now() WHERE id = $1 AND fence = $2 AND state = 'running'")
        .bind(lease.job.id)
        .bind(lease.fence)
        .bind(progress)
        .execute(executor)
        .await?;
    fenced(updated.rows_affected())
}

/// Adds `deltas` (an object of numbers) to the job's progress counters, fenced, and returns whether a
/// cancellation was requested. Chunks of one sync commit in any order, so each adds what it did
/// instead of writing a total; reading the cancel flag here lets a sync stop after the chunk that
/// committed, rather than at the next heartbeat.
pub async fn add_progress(
    executor: impl PgExecutor<'_>,
    lease: &Lease,
    deltas: &serde_json::Value,
) -> Result<bool, JobError> {
    let cancel: Option<bool> = sqlx::query_scalar(
        "UPDATE jobs SET progress = progress || coalesce(( \
             SELECT jsonb_object_agg(d.key, coalesce((jobs.progress ->> d.key)::numeric, 0) + d.value::numeric) \
             FROM jsonb_each_text($3) d), '{}'), updated_at = now() \
         WHERE id = $1 AND fence = $2 AND state = 'running' RETURNING cancel_requested",
    )
    .bind(lease.job.id)
    .bind(lease.fence)
    .bind(deltas)
    .fetch_optional(executor)
    .await?;
    cancel.ok_or(JobError::LeaseLost)
}

/// Holds the job row until the caller's transaction ends, if this claim still owns it: a takeover
/// (which updates the row) waits, so everything the transaction does happens before any takeover.
pub async fn lock_fenced(executor: impl PgExecutor<'_>, lease: &Lease) -> Result<(), JobError> {
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM jobs WHERE id = $1 AND fence = $2 AND state = 'running' FOR SHARE",
    )
    .bind(lease.job.id)
    .bind(lease.fence)
    .fetch_optional(executor)
    .await?;
    held.map(|_| ()).ok_or(JobError::LeaseLost)
}

fn fenced(rows: u64) -> Result<(), JobError> {
    if rows == 1 {
        Ok(())
    } else {
        Err(JobError::LeaseLost)
    }
}

/// The job finished its work.
pub async fn succeed(pool: &PgPool, lease: &Lease) -> Result<(), JobError> {
    finish(pool, lease, JobState::Succeeded, None).await
}

/// The job stopped at a cancellation.
pub async fn cancelled(pool: &PgPool, lease: &Lease) -> Result<(), JobError> {
    finish(pool, lease, JobState::Cancelled, None).await
}

/// The job failed for good, keeping `error`.
pub async fn fail(pool: &PgPool, lease: &Lease, error: &str) -> Result<(), JobError> {
    finish(pool, lease, JobState::Failed, Some(error)).await
}

async fn finish(
    pool: &PgPool,
    lease: &Lease,
    state: JobState,
    error: Option<&str>,
) -> Result<(), JobError> {
    let updated = sqlx::query(
        "UPDATE jobs SET state = $3, last_error = coalesce($4, last_error), finished_at = now(), \
             lease_owner = NULL, lease_expires_at = NULL, updated_at = now() \
         WHERE id = $1 AND fence = $2 AND state = 'running'",
    )
    .bind(lease.job.id)
    .bind(lease.fence)
    .bind(state.as_str())
    .bind(error)
    .execute(pool)
    .await?;
    fenced(updated.rows_affected())
}

/// Puts the job back in the queue to run after `delay`. `spend_attempt = false` gives the claim's
/// attempt back (a 429 is CardTrader's pacing, not a failure of ours). If the seller already has a
/// queued job of this kind, that one will redo the work: this one fails as superseded.
pub async fn retry_later(
    pool: &PgPool,
    lease: &Lease,
    delay: Duration,
    error: &str,
    spend_attempt: bool,
) -> Result<(), JobError> {
    let requeued = sqlx::query(
        "UPDATE jobs SET state = 'queued', run_at = now() + make_interval(secs => $3), last_error = $4, \
             attempts = CASE WHEN $5 THEN attempts ELSE greatest(attempts - 1, 0) END, \
             lease_owner = NULL, lease_expires_at = NULL, updated_at = now() \
         WHERE id = $1 AND fence = $2 AND state = 'running'",
    )
    .bind(lease.job.id)
    .bind(lease.fence)
    .bind(delay.as_secs_f64())
    .bind(error)
    .bind(spend_attempt)
    .execute(pool)
    .await;
    match requeued {
        Ok(done) => fenced(done.rows_affected()),
        Err(err) if is_unique_violation(&err) => {
            fail(
                pool,
                lease,
                &format!("{error} (superseded by a newer queued job)"),
            )
            .await
        }
        Err(err) => Err(err.into()),
    }
}

/// Cancels a queued job at once; asks a running one to stop at its next checkpoint.
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<Job, JobError> {
    let sql = concat!(
        "UPDATE jobs SET \
             state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END, \
             finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END, \
             cancel_requested = cancel_requested OR state = 'running', updated_at = now() \
         WHERE id = $1 RETURNING ",
        columns!()
    );
    let row: Option<JobRow> = sqlx::query_as(sql).bind(id).fetch_optional(pool).await?;
    job(row.ok_or(JobError::NotFound)?)
}

/// Cancels every queued and running job of a seller (queued at once, running at their next checkpoint).
pub async fn cancel_all_for(
    executor: impl PgExecutor<'_>,
    user_id: UserId,
) -> Result<u64, JobError> {
    let done = sqlx::query(
        "UPDATE jobs SET \
             state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END, \
             finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END, \
             cancel_requested = cancel_requested OR state = 'running', updated_at = now() \
         WHERE user_id = $1 AND state IN ('queued', 'running')",
    )
    .bind(user_id.as_uuid())
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// One job.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Job, JobError> {
    let sql = concat!("SELECT ", columns!(), " FROM jobs WHERE id = $1");
    let row: Option<JobRow> = sqlx::query_as(sql).bind(id).fetch_optional(pool).await?;
    job(row.ok_or(JobError::NotFound)?)
}

/// A seller's jobs of the given kinds, newest first, strictly older than `before` (keyset paging).
pub async fn list_for_user(
    pool: &PgPool,
    user_id: UserId,
    kinds: &[&str],
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Job>, JobError> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM jobs WHERE user_id = $1 AND kind = ANY($2) \
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
         ORDER BY created_at DESC, id DESC LIMIT $5"
    );
    let kinds: Vec<String> = kinds.iter().map(|kind| (*kind).to_owned()).collect();
    let rows: Vec<JobRow> = sqlx::query_as(sql)
        .bind(user_id.as_uuid())
        .bind(&kinds)
        .bind(before.map(|(at, _)| at))
        .bind(before.map(|(_, id)| id))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(job).collect()
}

/// The seller's most recent job of these kinds in one of `states`.
pub async fn latest_in_states(
    pool: &PgPool,
    user_id: UserId,
    kinds: &[&str],
    states: &[JobState],
) -> Result<Option<Job>, JobError> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM jobs WHERE user_id = $1 AND kind = ANY($2) AND state = ANY($3) \
         ORDER BY coalesce(finished_at, created_at) DESC LIMIT 1"
    );
    let kinds: Vec<String> = kinds.iter().map(|kind| (*kind).to_owned()).collect();
    let states: Vec<&str> = states.iter().map(|state| state.as_str()).collect();
    let row: Option<JobRow> = sqlx::query_as(sql)
        .bind(user_id.as_uuid())
        .bind(&kinds)
        .bind(&states)
        .fetch_optional(pool)
        .await?;
    row.map(job).transpose()
}

/// Queued and running jobs per lane, across all replicas.
pub async fn lane_counts(pool: &PgPool) -> Result<Vec<(Lane, i64, i64)>, JobError> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT lane, count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running') \
         FROM jobs WHERE state IN ('queued', 'running') GROUP BY lane",
    )
    .fetch_all(pool)
    .await?;
    Ok([Lane::Interactive, Lane::Bulk]
        .into_iter()
        .map(|lane| {
            let found = rows.iter().find(|(name, _, _)| name == lane.as_str());
            (
                lane,
                found.map_or(0, |row| row.1),
                found.map_or(0, |row| row.2),
            )
        })
        .collect())
}
