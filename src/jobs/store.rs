//! SQL of the `jobs` table: enqueue (inside the caller's transaction), claim, lease, fence, settle,
//! cancel, the operators' dead-letter queue, and retention's batched deletes of ended jobs. Every
//! write a worker makes after its claim carries `fence = $n`, so a worker whose lease was taken over
//! changes nothing.

use std::time::{Duration, Instant};

use crate::storage::Pg;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::{
    Enqueued, Job, JobError, JobKind, JobState, KindName, Lane, Lease, NewJob, QueueLimit, Ranking,
};
use crate::domain::UserId;

/// The columns of [`JobRow`], as a literal so queries stay `&'static str`.
macro_rules! columns {
    () => {
        "id, user_id, kind, lane, state, payload, attempts, max_attempts, run_at, fence, \
         cancel_requested, last_error, progress, created_at, started_at, finished_at, trace_parent"
    };
}

#[derive(Debug, sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    user_id: Uuid,
    kind: String,
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
    trace_parent: Option<String>,
}

impl TryFrom<JobRow> for Job {
    type Error = JobError;

    fn try_from(row: JobRow) -> Result<Self, Self::Error> {
        let decode =
            |what: &str| sqlx::Error::Decode(format!("bad {what} in jobs row {}", row.id).into());
        Ok(Job {
            id: row.id,
            user_id: UserId::from_uuid(row.user_id).map_err(|_| decode("user_id"))?,
            kind: JobKind::decode(&row.kind, &row.payload)?,
            lane: Lane::parse(&row.lane).ok_or_else(|| decode("lane"))?,
            state: JobState::parse(&row.state).ok_or_else(|| decode("state"))?,
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
            trace_parent: row.trace_parent,
        })
    }
}

fn job(row: JobRow) -> Result<Job, JobError> {
    Job::try_from(row)
}

/// Makes sure a queued job will do `new` after the caller's transaction commits: joins the queued
/// job of the same seller, kind and key (widening it when the kind says so), or queues one,
/// refusing a new one past `limit`. This is the outbox pattern: the rows to work on commit together
/// with the promise that a job will look at them.
///
/// The joined job is held until the caller's commit (`FOR SHARE`, or `FOR UPDATE` when it is
/// widened), which `ON CONFLICT DO NOTHING` alone would miss: a queued job claimed between the
/// conflict and the caller's commit would run without seeing the caller's rows. A claim passes
/// over a held job (`SKIP LOCKED`), so it starts only after the commit; a job claimed first is no
/// longer queued, and a new one is queued.
pub async fn enqueue_in(
    conn: &mut PgConnection,
    new: &NewJob,
    limit: QueueLimit,
) -> Result<Enqueued, JobError> {
    let widens = new.kind.name() == KindName::SyncTargeted;
    // Each pass reads afresh, so the second sees the job that a concurrent request queued first.
    for _ in 0..3 {
        if let Some(queued) = held_queued(conn, new, widens).await? {
            let Some(wider) = queued.kind.widened(&new.kind) else {
                return Ok(Enqueued::Coalesced(queued));
            };
            let sql = concat!(
                "UPDATE jobs SET payload = $2, updated_at = now() WHERE id = $1 RETURNING ",
                columns!()
            );
            let row: JobRow = sqlx::query_as(sql)
                .bind(queued.id)
                .bind(wider.payload())
                .fetch_one(&mut *conn)
                .await?;
            return Ok(Enqueued::Coalesced(job(row)?));
        }
        if let QueueLimit::Depth(max_depth) = limit {
            let depth = queued_in_lane(&mut *conn, new.kind.lane()).await?;
            if depth >= max_depth {
                return Err(JobError::QueueFull {
                    lane: new.kind.lane().as_str(),
                    depth,
                    retry_after: Duration::from_secs(5),
                });
            }
        }
        let sql = concat!(
            "INSERT INTO jobs (id, user_id, kind, lane, payload, priority, max_attempts, dedupe_key, \
                 trace_parent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (user_id, kind, dedupe_key) WHERE state = 'queued' DO NOTHING RETURNING ",
            columns!()
        );
        let inserted: Option<JobRow> = bind_new(sqlx::query_as(sql), new)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = inserted {
            return Ok(Enqueued::Created(job(row)?));
        }
        // Another request queued one between our lookup and insert: join it on the next pass.
    }
    Err(JobError::Contended)
}

/// [`enqueue_in`] in a transaction of its own.
pub async fn enqueue(pool: &Pg, new: &NewJob, limit: QueueLimit) -> Result<Enqueued, JobError> {
    let mut tx = pool.begin().await?;
    let enqueued = enqueue_in(&mut tx, new, limit).await?;
    tx.commit().await?;
    Ok(enqueued)
}

/// For a caller that queues its job in the statement of its own write: the CTEs `joined` (the
/// seller's queued job of the kind, held `FOR SHARE` until the statement commits, as
/// [`enqueue_in`] holds it) and `created` (a new job when none is queued), both only when the
/// caller's CTE `gate` returned a row. Their parameters start at `$first`, in [`bind_new`]'s
/// order. The caller queues the job again after its commit when neither has a row: a job queued
/// between this statement's look and its insert may have been claimed since.
pub(crate) fn queue_in_statement(gate: &str, first: usize) -> String {
    let [
        id,
        user,
        kind,
        lane,
        payload,
        priority,
        attempts,
        dedupe,
        trace,
    ] = std::array::from_fn::<usize, 9, _>(|k| first + k);
    format!(
        "joined AS ( \
             SELECT id FROM jobs \
             WHERE user_id = ${user} AND kind = ${kind} AND dedupe_key = ${dedupe} \
               AND state = 'queued' AND EXISTS (SELECT 1 FROM {gate}) \
             FOR SHARE \
         ), created AS ( \
             INSERT INTO jobs (id, user_id, kind, lane, payload, priority, max_attempts, dedupe_key, \
                 trace_parent) \
             SELECT ${id}, ${user}, ${kind}, ${lane}, ${payload}, ${priority}, ${attempts}, ${dedupe}, \
                 ${trace} \
             WHERE EXISTS (SELECT 1 FROM {gate}) AND NOT EXISTS (SELECT 1 FROM joined) \
             ON CONFLICT (user_id, kind, dedupe_key) WHERE state = 'queued' DO NOTHING \
             RETURNING 1 \
         )"
    )
}

/// Binds `new` to nine parameters: those of an `INSERT INTO jobs`, or of [`queue_in_statement`].
pub(crate) fn bind_new<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    new: &'q NewJob,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(Uuid::new_v4())
        .bind(new.user_id.as_uuid())
        .bind(new.kind.name().as_str())
        .bind(new.kind.lane().as_str())
        .bind(new.kind.payload())
        .bind(new.priority)
        .bind(new.max_attempts)
        .bind(new.kind.dedupe_key())
        .bind(new.trace_parent.as_deref())
}

/// The queued job `new` would join, held until the caller's transaction ends.
async fn held_queued(
    conn: &mut PgConnection,
    new: &NewJob,
    for_update: bool,
) -> Result<Option<Job>, JobError> {
    let sql = if for_update {
        concat!(
            "SELECT ",
            columns!(),
            " FROM jobs WHERE user_id = $1 AND kind = $2 AND dedupe_key = $3 AND state = 'queued' \
             FOR UPDATE"
        )
    } else {
        concat!(
            "SELECT ",
            columns!(),
            " FROM jobs WHERE user_id = $1 AND kind = $2 AND dedupe_key = $3 AND state = 'queued' \
             FOR SHARE"
        )
    };
    let row: Option<JobRow> = sqlx::query_as(sql)
        .bind(new.user_id.as_uuid())
        .bind(new.kind.name().as_str())
        .bind(new.kind.dedupe_key())
        .fetch_optional(conn)
        .await?;
    row.map(job).transpose()
}

/// Queues `new` already claimed by `owner` for `lease` (its first attempt, fence 1), inside the
/// caller's transaction: for work the replica that asked for it starts at once, without a claim. If
/// that replica dies first, the lease runs out and any worker rescues the job like any orphan.
pub async fn enqueue_claimed_in(
    conn: &mut PgConnection,
    new: &NewJob,
    owner: &str,
    lease: Duration,
) -> Result<Lease, JobError> {
    let sql = concat!(
        "INSERT INTO jobs (id, user_id, kind, lane, payload, priority, max_attempts, dedupe_key, \
             trace_parent, state, lease_owner, lease_expires_at, fence, attempts, started_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'running', $10, \
             now() + make_interval(secs => $11), 1, 1, now()) RETURNING ",
        columns!()
    );
    let renewed_at = Instant::now();
    let row: JobRow = bind_new(sqlx::query_as(sql), new)
        .bind(owner)
        .bind(lease.as_secs_f64())
        .fetch_one(conn)
        .await?;
    let job = job(row)?;
    Ok(Lease {
        fence: job.fence,
        owner: owner.to_owned(),
        renewed_at,
        job,
    })
}

/// Queues `kind` for each of `sellers` that has none queued (one statement, inside the caller's
/// transaction), spacing their `run_at` a millisecond apart in the given order so claims take them
/// in that order; returns how many were queued. For kinds that coalesce per seller (not purchases).
pub async fn enqueue_for_sellers_in(
    conn: &mut PgConnection,
    sellers: &[UserId],
    kind: &JobKind,
    priority: i32,
) -> Result<u64, JobError> {
    let ids: Vec<Uuid> = sellers.iter().map(|user| user.as_uuid()).collect();
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, user_id, kind, lane, payload, priority, max_attempts, dedupe_key, run_at) \
         SELECT gen_random_uuid(), s.user_id, $2, $3, $4, $5, $6, $7, \
                now() + make_interval(secs => s.rank / 1000.0) \
         FROM UNNEST($1::uuid[]) WITH ORDINALITY AS s(user_id, rank) \
         ON CONFLICT (user_id, kind, dedupe_key) WHERE state = 'queued' DO NOTHING",
    )
    .bind(&ids)
    .bind(kind.name().as_str())
    .bind(kind.lane().as_str())
    .bind(kind.payload())
    .bind(priority)
    .bind(kind.max_attempts())
    .bind(kind.dedupe_key())
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected())
}

/// Of `sellers`, those with a job of `kind` queued or running, or requested less than `within` ago.
pub async fn recently_requested(
    executor: impl PgExecutor<'_>,
    sellers: &[UserId],
    kind: KindName,
    within: Duration,
) -> Result<Vec<UserId>, JobError> {
    let ids: Vec<Uuid> = sellers.iter().map(|user| user.as_uuid()).collect();
    let found: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT user_id FROM jobs WHERE user_id = ANY($1) AND kind = $2 \
           AND (state IN ('queued', 'running') OR created_at > now() - make_interval(secs => $3))",
    )
    .bind(&ids)
    .bind(kind.as_str())
    .bind(within.as_secs_f64())
    .fetch_all(executor)
    .await?;
    Ok(found
        .into_iter()
        .filter_map(|id| UserId::from_uuid(id).ok())
        .collect())
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
    pool: &Pg,
    lane: Lane,
    owner: &str,
    lease: Duration,
    ranking: Ranking,
) -> Result<Option<Lease>, JobError> {
    Ok(claim_many(pool, lane, owner, lease, ranking, 1)
        .await?
        .pop())
}

/// Claims up to `max` jobs of `lane` that no other worker holds, in one statement, bumps their
/// fences and counts an attempt for each. First running jobs whose lease expired (their worker died
/// or hung: taking one over is an attempt too, so a job that kills its workers cannot loop forever).
/// Then the due queued jobs whose seller runs no job of the same kind and key, in [`Ranking`]
/// order: a job's turns are the jobs its seller already runs in the lane plus its due jobs ahead of
/// it, so a batch spreads over sellers as single claims would.
pub async fn claim_many(
    pool: &Pg,
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
             attempts = jobs.attempts + 1, \
             last_error = CASE WHEN jobs.state = 'running' \
                 THEN 'the worker holding it stopped renewing its lease (died or hung)' \
                 ELSE jobs.last_error END, \
             started_at = coalesce(jobs.started_at, now()), updated_at = now() \
         FROM candidate WHERE jobs.id = candidate.candidate_id \
           AND (jobs.state = 'queued' OR jobs.lease_expires_at < now()) RETURNING ",
        columns!()
    );
    let renewed_at = Instant::now();
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
                renewed_at,
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
pub async fn heartbeat(pool: &Pg, lease: &Lease, duration: Duration) -> Result<bool, JobError> {
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

/// Stores progress counters, fenced; runs inside the caller's transaction with its other writes,
/// so a fenced-out worker's transaction rolls back whole.
pub(super) async fn record_progress(
    conn: &mut PgConnection,
    job_id: Uuid,
    fence: i64,
    progress: &serde_json::Value,
) -> Result<(), JobError> {
    let updated = sqlx::query(
        "UPDATE jobs SET progress = $3, updated_at = now() \
         WHERE id = $1 AND fence = $2 AND state = 'running'",
    )
    .bind(job_id)
    .bind(fence)
    .bind(progress)
    .execute(conn)
    .await?;
    fenced(updated.rows_affected())
}

/// Adds `deltas` (an object of numbers) to the job's progress counters, fenced, and returns whether a
/// cancellation was requested. Chunks of one sync commit in any order, so each adds what it did
/// instead of writing a total; reading the cancel flag here lets a sync stop after the chunk that
/// committed, rather than at the next heartbeat.
pub(super) async fn add_progress(
    conn: &mut PgConnection,
    job_id: Uuid,
    fence: i64,
    deltas: &serde_json::Value,
) -> Result<bool, JobError> {
    let cancel: Option<bool> = sqlx::query_scalar(
        "UPDATE jobs SET progress = progress || coalesce(( \
             SELECT jsonb_object_agg(d.key, coalesce((jobs.progress ->> d.key)::numeric, 0) + d.value::numeric) \
             FROM jsonb_each_text($3) d), '{}'), updated_at = now() \
         WHERE id = $1 AND fence = $2 AND state = 'running' RETURNING cancel_requested",
    )
    .bind(job_id)
    .bind(fence)
    .bind(deltas)
    .fetch_optional(conn)
    .await?;
    cancel.ok_or(JobError::LeaseLost)
}

/// Holds the job row until the caller's transaction ends, if this claim still owns it: a takeover
/// (which updates the row) waits, so everything the transaction does happens before any takeover.
pub(super) async fn lock_fenced(
    conn: &mut PgConnection,
    job_id: Uuid,
    fence: i64,
) -> Result<(), JobError> {
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM jobs WHERE id = $1 AND fence = $2 AND state = 'running' FOR SHARE",
    )
    .bind(job_id)
    .bind(fence)
    .fetch_optional(conn)
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
pub async fn succeed(pool: &Pg, lease: &Lease) -> Result<(), JobError> {
    finish(pool, lease, JobState::Succeeded, None).await
}

/// The job stopped at a cancellation.
pub async fn cancelled(pool: &Pg, lease: &Lease) -> Result<(), JobError> {
    finish(pool, lease, JobState::Cancelled, None).await
}

/// The job failed for good, keeping `error`.
pub async fn fail(pool: &Pg, lease: &Lease, error: &str) -> Result<(), JobError> {
    finish(pool, lease, JobState::Failed, Some(error)).await
}

/// The job used every attempt: a dead letter, keeping `error`.
pub async fn bury(pool: &Pg, lease: &Lease, error: &str) -> Result<(), JobError> {
    finish(pool, lease, JobState::Dead, Some(error)).await
}

/// Ends a running job (fenced) in `state`, keeping `error` (`$4`) unless it succeeded: a job that
/// succeeded has no error now, and an earlier attempt's (a 429, a shutdown that handed it over)
/// would read as the outcome.
const FINISH: &str = "UPDATE jobs SET state = $3, \
         last_error = CASE WHEN $3 = 'succeeded' THEN NULL ELSE coalesce($4, last_error) END, \
         finished_at = now(), \
         lease_owner = NULL, lease_expires_at = NULL, updated_at = now() \
     WHERE id = $1 AND fence = $2 AND state = 'running'";

/// The job finished its work, recorded in the caller's transaction, which holds the job's row
/// until it commits.
pub(super) async fn succeed_in(
    conn: &mut PgConnection,
    job_id: Uuid,
    fence: i64,
) -> Result<(), JobError> {
    let updated = sqlx::query(FINISH)
        .bind(job_id)
        .bind(fence)
        .bind(JobState::Succeeded.as_str())
        .bind(None::<&str>)
        .execute(conn)
        .await?;
    fenced(updated.rows_affected())
}

async fn finish(
    pool: &Pg,
    lease: &Lease,
    state: JobState,
    error: Option<&str>,
) -> Result<(), JobError> {
    let updated = sqlx::query(FINISH)
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
    pool: &Pg,
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
pub async fn cancel(pool: &Pg, id: Uuid) -> Result<Job, JobError> {
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

/// Cancels a seller's syncs and remaps (queued at once, running at their next checkpoint), as when
/// the seller disconnects. Purchases, pushes and webhook applications are left to run to their
/// end: each must leave what it holds settled (a purchase without the seller's token undoes what
/// it can and hands the rest to a person; a push marks its edits failed with the reason).
pub async fn cancel_all_for(
    executor: impl PgExecutor<'_>,
    user_id: UserId,
) -> Result<u64, JobError> {
    let done = sqlx::query(
        "UPDATE jobs SET \
             state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END, \
             finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END, \
             cancel_requested = cancel_requested OR state = 'running', updated_at = now() \
         WHERE user_id = $1 AND state IN ('queued', 'running') AND kind = ANY($2)",
    )
    .bind(user_id.as_uuid())
    .bind(kind_names(&[
        KindName::SyncFull,
        KindName::SyncTargeted,
        KindName::RemapUnmapped,
    ]))
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// One job.
pub async fn get(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Job, JobError> {
    let sql = concat!("SELECT ", columns!(), " FROM jobs WHERE id = $1");
    let row: Option<JobRow> = sqlx::query_as(sql)
        .bind(id)
        .fetch_optional(executor)
        .await?;
    job(row.ok_or(JobError::NotFound)?)
}

/// A seller's jobs of the given kinds, newest first, strictly older than `before` (keyset paging).
pub async fn list_for_user(
    pool: &Pg,
    user_id: UserId,
    kinds: &[KindName],
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
    let rows: Vec<JobRow> = sqlx::query_as(sql)
        .bind(user_id.as_uuid())
        .bind(kind_names(kinds))
        .bind(before.map(|(at, _)| at))
        .bind(before.map(|(_, id)| id))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(job).collect()
}

fn kind_names(kinds: &[KindName]) -> Vec<&'static str> {
    kinds.iter().map(|kind| kind.as_str()).collect()
}

/// The seller's most recent job of these kinds in one of `states`.
pub async fn latest_in_states(
    pool: &Pg,
    user_id: UserId,
    kinds: &[KindName],
    states: &[JobState],
) -> Result<Option<Job>, JobError> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM jobs WHERE user_id = $1 AND kind = ANY($2) AND state = ANY($3) \
         ORDER BY coalesce(finished_at, created_at) DESC LIMIT 1"
    );
    let states: Vec<&str> = states.iter().map(|state| state.as_str()).collect();
    let row: Option<JobRow> = sqlx::query_as(sql)
        .bind(user_id.as_uuid())
        .bind(kind_names(kinds))
        .bind(&states)
        .fetch_optional(pool)
        .await?;
    row.map(job).transpose()
}

/// Queued, running and dead jobs per lane, across all replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneCounts {
    /// The lane.
    pub lane: Lane,
    /// Waiting to run.
    pub queued: i64,
    /// Holding a lease.
    pub running: i64,
    /// Out of attempts, waiting for an operator.
    pub dead: i64,
}

/// [`LaneCounts`] of both lanes.
pub async fn lane_counts(pool: &Pg) -> Result<Vec<LaneCounts>, JobError> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT lane, count(*) FILTER (WHERE state = 'queued'), \
                count(*) FILTER (WHERE state = 'running'), count(*) FILTER (WHERE state = 'dead') \
         FROM jobs WHERE state IN ('queued', 'running', 'dead') GROUP BY lane",
    )
    .fetch_all(pool)
    .await?;
    Ok([Lane::Interactive, Lane::Bulk]
        .into_iter()
        .map(|lane| {
            let found = rows.iter().find(|(name, ..)| name == lane.as_str());
            LaneCounts {
                lane,
                queued: found.map_or(0, |row| row.1),
                running: found.map_or(0, |row| row.2),
                dead: found.map_or(0, |row| row.3),
            }
        })
        .collect())
}

/// Dead jobs, most recently buried first, strictly before `before` (keyset paging).
pub async fn dead_jobs(
    pool: &Pg,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Job>, JobError> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM jobs WHERE state = 'dead' \
           AND ($1::timestamptz IS NULL OR (finished_at, id) < ($1, $2)) \
         ORDER BY finished_at DESC, id DESC LIMIT $3"
    );
    let rows: Vec<JobRow> = sqlx::query_as(sql)
        .bind(before.map(|(at, _)| at))
        .bind(before.map(|(_, id)| id))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(job).collect()
}

/// Sends a dead job back to the queue with a fresh allowance of attempts (an operator fixed what
/// killed it). Refused when it is not dead, or when its seller already has such a job queued (that
/// one will do the work).
pub async fn revive(pool: &Pg, id: Uuid) -> Result<Job, JobError> {
    let sql = concat!(
        "UPDATE jobs SET state = 'queued', attempts = 0, run_at = now(), finished_at = NULL, \
             cancel_requested = false, updated_at = now() \
         WHERE id = $1 AND state = 'dead' RETURNING ",
        columns!()
    );
    let revived: Result<Option<JobRow>, sqlx::Error> =
        sqlx::query_as(sql).bind(id).fetch_optional(pool).await;
    match revived {
        Ok(Some(row)) => job(row),
        Ok(None) => {
            let found = get(pool, id).await?;
            Err(JobError::WrongState(format!(
                "the job is {}, not dead",
                found.state.as_str()
            )))
        }
        Err(err) if is_unique_violation(&err) => Err(JobError::WrongState(
            "the seller already has this kind of job queued; it will do the work".into(),
        )),
        Err(err) => Err(err.into()),
    }
}

/// Deletes up to `batch` jobs that ended (succeeded, failed or cancelled) before `cutoff`, oldest
/// first, in one statement; returns how many. Queued, running and dead jobs are never touched (a dead
/// letter waits for an operator), nor a seller's latest ended sync of each kind: GetSyncStatus
/// reports it, and the scheduler reads it to leave a seller whose syncs keep failing alone. Rows
/// another transaction holds are skipped, not waited for.
pub async fn delete_ended_before(
    executor: impl PgExecutor<'_>,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<u64, JobError> {
    let deleted = sqlx::query(
        "DELETE FROM jobs WHERE id IN ( \
             SELECT j.id FROM jobs j \
             WHERE j.state IN ('succeeded', 'failed', 'cancelled') AND j.finished_at < $1 \
               AND (j.kind NOT IN ('sync_full', 'sync_targeted') OR EXISTS ( \
                   SELECT 1 FROM jobs n \
                   WHERE n.user_id = j.user_id AND n.kind = j.kind \
                     AND n.state IN ('succeeded', 'failed', 'cancelled') \
                     AND n.kind IN ('sync_full', 'sync_targeted') AND n.finished_at > j.finished_at)) \
             ORDER BY j.finished_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
           AND state IN ('succeeded', 'failed', 'cancelled')",
    )
    .bind(cutoff)
    .bind(batch)
    .execute(executor)
    .await?;
    Ok(deleted.rows_affected())
}
