//! SQL of the sync around the chunk upsert ([`super::upsert`]): the rows as the sync stores them,
//! prints already stored, item counts, and the batched, fenced sweep of the rows a sync did not see.

use roaring::RoaringTreemap;
use sqlx::{PgConnection, PgPool};

use crate::{
    domain::UserId,
    jobs::{JobError, Lease, store as jobs},
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
pub async fn item_count(pool: &PgPool, user_id: UserId) -> Result<u64, sqlx::Error> {
    let items: Option<i64> =
        sqlx::query_scalar("SELECT items FROM inventory_counts WHERE user_id = $1")
            .bind(user_id.as_uuid())
            .fetch_optional(pool)
            .await?;
    Ok(items.map_or(0, |items| u64::try_from(items).unwrap_or(0)))
}

/// The seller's rows in `scope`.
pub async fn count_in_scope(
    pool: &PgPool,
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
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// The mappings already stored for these products, to keep them when the catalogue cannot be asked.
pub async fn stored_prints(
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

/// Deletes the seller's rows in `scope` that are not in `seen` (the product ids this attempt's
/// export listed), sparing reserved rows (a purchase is using them), walking up the product ids
/// `batch` rows per transaction. Each batch first checks the fence, holding the job row, so a worker
/// whose lease was taken over deletes nothing more. Returns how many rows were deleted.
///
/// The difference is taken here, batch by primary-key range, rather than by an anti-join in SQL,
/// whose plan without fresh statistics (a first import, autovacuum behind) was a nested loop.
pub async fn sweep(
    pool: &PgPool,
    user_id: UserId,
    lease: &Lease,
    scope: SweepScope<'_>,
    seen: &RoaringTreemap,
    batch: i64,
    read_since: chrono::DateTime<chrono::Utc>,
) -> Result<u64, JobError> {
    let (all, blueprints, expansions) = scope.binds();
    let (mut deleted, mut after) = (0, i64::MIN);
    loop {
        let mut tx = pool.begin().await?;
        jobs::lock_fenced(&mut *tx, lease).await?;
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
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        let Some(&last) = local.last() else {
            return Ok(deleted);
        };
        let stale: Vec<i64> = local
            .iter()
            .copied()
            .filter(|id| !seen.contains(seen_key(*id)))
            .collect();
        if !stale.is_empty() {
            let done = sqlx::query(
                "DELETE FROM inventory_items \
                 WHERE user_id = $1 AND product_id = ANY($2) AND reserved_quantity = 0 AND updated_at < $3",
            )
            .bind(user_id.as_uuid())
            .bind(&stale)
            .bind(read_since)
            .execute(&mut *tx)
            .await?;
            deleted += done.rows_affected();
        }
        tx.commit().await?;
        if (local.len() as i64) < batch {
            return Ok(deleted);
        }
        after = last;
    }
}

/// A product id as a member of a seen-set (a bijection of i64 onto u64, so any id fits).
pub fn seen_key(product_id: i64) -> u64 {
    u64::from_ne_bytes(product_id.to_ne_bytes())
}
