//! One chunk of a sync as one transaction on one pooled connection: the upsert and the job's progress
//! (fenced) commit together, under a statement timeout. Deadlocks, serialization
//! failures, timeouts and lost connections rerun the whole transaction with jittered backoff. A
//! semaphore shared by every sync of the replica caps how many chunk transactions are open at once.

use std::time::{Duration, Instant};

use backon::Retryable;
use tokio::sync::Semaphore;

use super::{scope::SyncProgress, store::SyncRow, upsert};
use crate::{
    domain::UserId,
    jobs::{JobContext, JobError},
    metrics::Metrics,
    retry::full_jitter,
    storage::is_retryable,
};

/// Reruns of one chunk transaction before the sync attempt gives up.
const CHUNK_RETRIES: usize = 5;

/// What one committed chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkOutcome {
    /// Its counters, already added to the job's progress.
    pub progress: SyncProgress,
    /// Whether a cancellation of the job was requested (read in the same transaction).
    pub cancel_requested: bool,
}

/// Where a chunk goes: the job (whose fenced units of work carry every write), and the replica-wide
/// cap on open chunk transactions.
#[derive(Debug, Clone, Copy)]
pub struct ChunkTarget<'a> {
    /// The sync job.
    pub job: &'a JobContext,
    /// Permits for open chunk transactions, fewer than the pool has connections.
    pub writers: &'a Semaphore,
    /// `SET LOCAL statement_timeout` of the transaction.
    pub statement_timeout: Duration,
    /// When the export was requested (database time): rows changed since keep their quantity.
    pub read_since: chrono::DateTime<chrono::Utc>,
}

/// Why a chunk could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The job's lease was taken over: nothing of this chunk was written.
    #[error("the job's lease was lost")]
    LeaseLost,
    /// A database error that retrying did not (or cannot) fix.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<JobError> for ChunkError {
    fn from(err: JobError) -> Self {
        match err {
            JobError::Database(err) => ChunkError::Database(err),
            _ => ChunkError::LeaseLost,
        }
    }
}

/// The metric label of a rerun.
pub(crate) fn retry_reason(err: &ChunkError) -> &'static str {
    match err {
        ChunkError::Database(sqlx::Error::Database(db)) => match db.code().as_deref() {
            Some("40P01") => "deadlock",
            Some("40001") => "serialization",
            Some("57014") => "timeout",
            _ => "other",
        },
        _ => "connection",
    }
}

/// Writes `rows` (sorted here by product id, the lock order shared by every writer, and de-duplicated)
/// and adds what it did to the job's progress, rerunning the transaction on transient failures. The
/// rows are those the sync found new or changed ([`upsert::stale_rows`]): they are not compared with
/// the stored fingerprints again inside the transaction.
pub async fn write_chunk(
    target: ChunkTarget<'_>,
    user_id: UserId,
    mut rows: Vec<SyncRow>,
    metrics: &Metrics,
) -> Result<ChunkOutcome, ChunkError> {
    rows.sort_unstable_by_key(|row| row.product_id);
    rows.dedup_by_key(|row| row.product_id);
    let started = Instant::now();
    // Computed once, not per rerun of the transaction.
    let fingerprints: Vec<i64> = rows.iter().map(upsert::fingerprint).collect();
    let (rows, fingerprints): (&[SyncRow], &[i64]) = (&rows, &fingerprints);
    let once = || write_once(target, user_id, rows, fingerprints);
    let outcome = once
        .retry(full_jitter(
            Duration::from_millis(50),
            Duration::from_secs(2),
            Some(CHUNK_RETRIES),
        ))
        .when(|err| matches!(err, ChunkError::Database(db) if is_retryable(db)))
        .notify(|err, wait| {
            metrics
                .sync_chunk_retries
                .with_label_values(&[retry_reason(err)])
                .inc();
            tracing::warn!(error = %err, ?wait, "chunk transaction failed; rerunning it");
        })
        .await?;
    metrics
        .sync_chunk_seconds
        .observe(started.elapsed().as_secs_f64());
    let counted = outcome.progress;
    for (result, count) in [
        ("written", counted.written),
        ("unchanged", counted.unchanged),
        ("unmapped", counted.unmapped),
    ] {
        metrics.sync_rows.with_label_values(&[result]).inc_by(count);
    }
    Ok(outcome)
}

async fn write_once(
    target: ChunkTarget<'_>,
    user_id: UserId,
    rows: &[SyncRow],
    fingerprints: &[i64],
) -> Result<ChunkOutcome, ChunkError> {
    // Taken per attempt, so a chunk backing off after a deadlock holds no permit. The semaphore is
    // never closed, so acquiring only fails if it were.
    let _permit = target
        .writers
        .acquire()
        .await
        .map_err(|_| ChunkError::Database(sqlx::Error::PoolClosed))?;
    let mut unit = target.job.begin().await?;
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(format!("{}ms", target.statement_timeout.as_millis()))
        .execute(&mut *unit)
        .await?;
    let written =
        upsert::upsert_rows(&mut unit, user_id, rows, fingerprints, target.read_since).await?;
    let progress = SyncProgress {
        chunks_done: 1,
        products_seen: rows.len() as u64,
        written,
        unchanged: rows.len() as u64 - written,
        unmapped: rows.iter().filter(|row| row.print.is_none()).count() as u64,
        ..SyncProgress::default()
    };
    // Fenced, last, in the same transaction: a worker whose lease was taken over rolls back all of
    // it, and the job row is locked only for the moment before the commit.
    let cancel_requested = unit.add_progress(&progress.to_json()).await?;
    unit.commit().await?;
    Ok(ChunkOutcome {
        progress,
        cancel_requested,
    })
}
