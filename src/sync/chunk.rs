//! One chunk of a sync as one transaction on one pooled connection: the upsert, the seen-set and the
//! job's progress (fenced) commit together, under a statement timeout. Deadlocks, serialization
//! failures, timeouts and lost connections rerun the whole transaction with jittered backoff.

use std::time::Duration;

use backon::Retryable;
use sqlx::PgPool;

use super::store::{self, SyncRow};
use crate::{
    domain::UserId,
    jobs::{JobError, Lease, store as jobs},
    metrics::Metrics,
    retry::full_jitter,
};

/// Reruns of one chunk transaction before the sync attempt gives up.
const CHUNK_RETRIES: usize = 5;

/// What one chunk changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkOutcome {
    /// Rows inserted or changed.
    pub written: u64,
    /// Rows that were already up to date.
    pub unchanged: u64,
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

/// Whether rerunning the whole transaction may succeed: deadlock (40P01), serialization failure
/// (40001), statement timeout (57014), or a connection that went away.
pub fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("40P01" | "40001" | "57014"))
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

fn retry_reason(err: &ChunkError) -> &'static str {
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

/// Writes `rows` (sorted here by product id, the lock order shared by every writer) with the job's
/// `progress`, retrying transient failures.
pub async fn write_chunk(
    pool: &PgPool,
    lease: &Lease,
    user_id: UserId,
    rows: &mut [SyncRow],
    progress: &serde_json::Value,
    statement_timeout: Duration,
    metrics: &Metrics,
) -> Result<ChunkOutcome, ChunkError> {
    rows.sort_unstable_by_key(|row| row.product_id);
    let rows: &[SyncRow] = rows;
    let once = || write_once(pool, lease, user_id, rows, progress, statement_timeout);
    once.retry(full_jitter(
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
    .await
}

async fn write_once(
    pool: &PgPool,
    lease: &Lease,
    user_id: UserId,
    rows: &[SyncRow],
    progress: &serde_json::Value,
    statement_timeout: Duration,
) -> Result<ChunkOutcome, ChunkError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(format!("{}ms", statement_timeout.as_millis()))
        .execute(&mut *tx)
        .await?;
    let written = store::upsert_rows(&mut tx, user_id, rows).await?;
    let product_ids: Vec<i64> = rows.iter().map(|row| row.product_id).collect();
    store::mark_seen(&mut tx, lease.job.id, &product_ids).await?;
    // Fenced, in the same transaction: a worker whose lease was taken over rolls back all of it.
    jobs::record_progress(&mut *tx, lease, progress).await?;
    tx.commit().await?;
    Ok(ChunkOutcome {
        written,
        unchanged: rows.len() as u64 - written,
    })
}
