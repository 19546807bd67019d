//! The `legacy_imports` table: which sellers a run has moved. A seller's row commits with their
//! account, items and queued sync, so it is the one thing that says "done"; only this module
//! writes it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::report::SellerReport;
use crate::storage::Pg;

/// When each of `user_ids` was moved, for those an earlier run moved.
pub(super) async fn moved_at(
    pg: &Pg,
    user_ids: &[Uuid],
) -> Result<HashMap<Uuid, DateTime<Utc>>, sqlx::Error> {
    let rows: Vec<(Uuid, DateTime<Utc>)> =
        sqlx::query_as("SELECT user_id, imported_at FROM legacy_imports WHERE user_id = ANY($1)")
            .bind(user_ids)
            .fetch_all(pg)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Records `seller` as moved with `account_status` and its queued sync, in the caller's
/// transaction; false when a concurrent run recorded it first (the caller rolls back).
pub(super) async fn record_in(
    conn: &mut PgConnection,
    seller: &SellerReport,
    account_status: &str,
    sync_job_id: Option<Uuid>,
) -> Result<bool, sqlx::Error> {
    let report = serde_json::json!({
        "rows_skipped": seller.rows_skipped,
        "skipped_rows": seller.skipped_rows,
        "pending_edits": seller.pending_edits,
        "notes": seller.notes,
        "old_sync_status": seller.old_sync_status,
        "old_last_error": seller.old_last_error,
    });
    let done = sqlx::query(
        "INSERT INTO legacy_imports (user_id, outcome, rows_carried, rows_skipped, sync_job_id, report) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT ON CONSTRAINT legacy_imports_pkey DO NOTHING",
    )
    .bind(seller.user_id)
    .bind(account_status)
    .bind(i32::try_from(seller.rows_carried).unwrap_or(i32::MAX))
    .bind(i32::try_from(seller.rows_skipped_total()).unwrap_or(i32::MAX))
    .bind(sync_job_id)
    .bind(report)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
