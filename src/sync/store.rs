//! SQL of the sync around the chunk upsert ([`super::upsert`]): the rows as the sync stores them,
//! prints already stored, item counts, and the batched, fenced sweep of the rows a sync did not see.

use crate::storage::Pg;
use backon::Retryable;
use roaring::RoaringTreemap;
use sqlx::PgConnection;

use super::chunk::{ChunkError, retry_reason};
use crate::{
    domain::UserId, jobs::JobContext, metrics::Metrics, retry::full_jitter, storage::is_retryable,
};

/// One product as the sync stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncRow {
    /// CardTrader product id.
    pub product_id: i64,
    /// CardTrader blueprint id.
    pub blueprint_id: i64,
    /// CardTrader expansion id, where the export says.
    pub expansion_id: Option<i64>,
    /// The shop's print (id, table), if mapped.
    pub print: Option<(i64, String)>,
    /// No print because the catalogue could not be asked (not because it has none): a remap is owed.
    pub print_unknown: bool,
    /// English name.
    pub name: String,
    /// Quantity on CardTrader.
    pub quantity: i32,
    /// Price in cents.
    pub price_cents: i64,
    /// ISO currency.
    pub currency: String,
    /// Editable properties.
    pub properties: serde_json::Value,
    /// Free text.
    pub description: Option<String>,
    /// The seller's free field.
    pub user_data_field: Option<String>,
    /// The seller's private tag.
    pub tag: Option<String>,
    /// Graded.
    pub graded: Option<bool>,
}

/// Which part of the inventory a sync reconciles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepScope<'a> {
    /// Everything the seller has.
    All,
    /// The products of these blueprints and these expansions.
    Targeted {
        /// Blueprint ids.
        blueprint_ids: &'a [i64],
        /// Expansion ids.
        expansion_ids: &'a [i64],
    },
}

impl<'a> SweepScope<'a> {
    /// Bind values of the scope filter `($n OR blueprint_id = ANY($n+1) OR expansion_id = ANY($n+2))`.
    fn binds(self) -> (bool, &'a [i64], &'a [i64]) {
        match self {
            SweepScope::All => (true, &[], &[]),
            SweepScope::Targeted {
                blueprint_ids,
                expansion_ids,
            } => (false, blueprint_ids, expansion_ids),
        }
    }
}

/// The seller's items, from the counter the inventory triggers keep.
pub async fn item_count(pool: &Pg, user_id: UserId) -> Result<u64, sqlx::Error> {
    let items: Option<i64> =
        sqlx::query_scalar("SELECT items FROM inventory_counts WHERE user_id = $1")
            .bind(user_id.as_uuid())
            .fetch_optional(pool)
            .await?;
    Ok(items.map_or(0, |items| u64::try_from(items).unwrap_or(0)))
}

/// The seller's rows in `scope`.
pub(super) async fn count_in_scope(
    conn: &mut PgConnection,
    user_id: UserId,
    scope: SweepScope<'_>,
) -> Result<u64, sqlx::Error> {
    let (all, blueprints, expansions) = scope.binds();
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inventory_items \
         WHERE user_id = $1 AND ($2 OR blueprint_id = ANY($3) OR expansion_id = ANY($4))",
    )
    .bind(user_id.as_uuid())
    .bind(all)
    .bind(blueprints)
    .bind(expansions)
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// The mappings already stored for these products, to keep them when the catalogue cannot be asked.
pub(super) async fn stored_prints(
    conn: &mut PgConnection,
    user_id: UserId,
    product_ids: &[i64],
) -> Result<Vec<(i64, Option<i64>, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT product_id, print_id, print_table FROM inventory_items WHERE user_id = $1 AND product_id = ANY($2)")
        .bind(user_id.as_uuid())
        .bind(product_ids)
        .fetch_all(&mut *conn)
        .await
}

/// Rows a sync must have written or deleted before it refreshes the items' statistics: at least
/// this many, and more than [`STATISTICS_SHARE`] of the rows PostgreSQL believes the table holds.
const STATISTICS_MIN_CHANGES: u64 = 1_000;
/// See [`STATISTICS_MIN_CHANGES`]; autovacuum's own default analyze threshold.
const STATISTICS_SHARE: f64 = 0.1;
/// Key of the advisory lock that keeps replicas from analyzing the table at the same time.
const STATISTICS_LOCK: i64 = 0x6272_785f_616e_6c7a; // "brx_anlz"

/// Refreshes `inventory_items`' statistics, in the caller's transaction, when `changed` rows are a
/// large share of the table; whether it did. Right after a bulk load the statistics still describe
/// the table before it, and autovacuum analyzes only later (or never, where it is off), so plans made
/// meanwhile guess. Another replica analyzing already is enough: this one then skips.
pub(super) async fn refresh_statistics(
    conn: &mut PgConnection,
    changed: u64,
    statement_timeout: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    if changed < STATISTICS_MIN_CHANGES {
        return Ok(false);
    }
    // -1 (as 0 here) until the table was first analyzed.
    let estimated: f32 = sqlx::query_scalar(
        "SELECT reltuples FROM pg_class WHERE oid = 'inventory_items'::regclass",
    )
    .fetch_one(&mut *conn)
    .await?;
    if (changed as f64) < STATISTICS_SHARE * f64::from(estimated.max(0.0)) {
        return Ok(false);
    }
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(STATISTICS_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(false);
    }
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(format!("{}ms", statement_timeout.as_millis()))
        .execute(&mut *conn)
        .await?;
    sqlx::query("ANALYZE inventory_items")
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// How the sweep runs: rows per batch transaction, and each batch's statement timeout.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    /// Rows per batch transaction.
    pub batch: i64,
    /// `SET LOCAL statement_timeout` of each batch.
    pub statement_timeout: std::time::Duration,
}

/// Deletes the seller's rows in `scope` that are not in `seen` (the product ids this attempt's
/// export listed), sparing reserved rows (a purchase is using them) and rows changed since
/// `read_since`, walking up the product ids one batch per fenced unit of work, so a worker whose
/// lease was taken over deletes nothing more. A batch runs under a statement timeout and is rerun
/// whole after a deadlock, a serialization failure, a timeout or a lost connection, like a chunk.
/// Returns how many rows were deleted.
///
/// The difference is taken here, batch by primary-key range, rather than by an anti-join in SQL,
/// whose plan without fresh statistics (a first import, autovacuum behind) was a nested loop.
pub async fn sweep(
    job: &JobContext,
    scope: SweepScope<'_>,
    seen: &RoaringTreemap,
    settings: SweepSettings,
    read_since: chrono::DateTime<chrono::Utc>,
    metrics: &Metrics,
) -> Result<u64, ChunkError> {
    let (mut deleted, mut after) = (0, i64::MIN);
    loop {
        let once = || sweep_batch(job, scope, seen, settings, after, read_since);
        let batch = once
            .retry(full_jitter(
                std::time::Duration::from_millis(50),
                std::time::Duration::from_secs(2),
                Some(SWEEP_RETRIES),
            ))
            .when(|err| matches!(err, ChunkError::Database(db) if is_retryable(db)))
            .notify(|err, wait| {
                metrics
                    .sync_sweep_retries
                    .with_label_values(&[retry_reason(err)])
                    .inc();
                tracing::warn!(error = %err, ?wait, "sweep batch failed; rerunning it");
            })
            .await?;
        deleted += batch.deleted;
        match batch.last {
            Some(last) if batch.full => after = last,
            _ => return Ok(deleted),
        }
    }
}

/// Reruns of one sweep batch before the sync attempt gives up.
const SWEEP_RETRIES: usize = 5;

/// What one sweep batch did.
struct SweptBatch {
    deleted: u64,
    /// The highest product id the batch looked at.
    last: Option<i64>,
    /// Whether it looked at a whole batch (more may follow).
    full: bool,
}

async fn sweep_batch(
    job: &JobContext,
    scope: SweepScope<'_>,
    seen: &RoaringTreemap,
    settings: SweepSettings,
    after: i64,
    read_since: chrono::DateTime<chrono::Utc>,
) -> Result<SweptBatch, ChunkError> {
    let (all, blueprints, expansions) = scope.binds();
    let user_id = job.user_id();
    let mut unit = job.begin().await?;
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(format!("{}ms", settings.statement_timeout.as_millis()))
        .execute(&mut *unit)
        .await?;
    crate::failpoint::pause("sync.sweep_batch").await;
    let local: Vec<i64> = sqlx::query_scalar(
        "SELECT product_id FROM inventory_items \
         WHERE user_id = $1 AND product_id > $2 \
           AND ($3 OR blueprint_id = ANY($4) OR expansion_id = ANY($5)) \
         ORDER BY product_id LIMIT $6",
    )
    .bind(user_id.as_uuid())
    .bind(after)
    .bind(all)
    .bind(blueprints)
    .bind(expansions)
    .bind(settings.batch)
    .fetch_all(&mut *unit)
    .await?;
    let stale: Vec<i64> = local
        .iter()
        .copied()
        .filter(|id| !seen.contains(seen_key(*id)))
        .collect();
    let mut deleted = 0;
    if !stale.is_empty() {
        let done = sqlx::query(
            "DELETE FROM inventory_items \
             WHERE user_id = $1 AND product_id = ANY($2) AND reserved_quantity = 0 AND updated_at < $3",
        )
        .bind(user_id.as_uuid())
        .bind(&stale)
        .bind(read_since)
        .execute(&mut *unit)
        .await?;
        deleted = done.rows_affected();
    }
    unit.commit().await?;
    Ok(SweptBatch {
        deleted,
        last: local.last().copied(),
        full: local.len() as i64 >= settings.batch,
    })
}

/// A product id as a member of a seen-set (a bijection of i64 onto u64, so any id fits).
pub fn seen_key(product_id: i64) -> u64 {
    u64::from_ne_bytes(product_id.to_ne_bytes())
}
