//! SQL of the sync: one set-based upsert per chunk (UNNEST arrays) that rewrites only rows that changed
//! and leaves the quantity of reserved rows to the purchase saga, and the batched, fenced sweep of
//! the rows a sync did not see.

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

/// Upserts `rows` (sorted by product id by the caller, the lock order that keeps concurrent chunks from
/// deadlocking) and returns how many rows were inserted or changed; unchanged rows are not rewritten.
pub async fn upsert_rows(
    conn: &mut PgConnection,
    user_id: UserId,
    rows: &[SyncRow],
) -> Result<u64, sqlx::Error> {
    let product_ids: Vec<i64> = rows.iter().map(|row| row.product_id).collect();
    let blueprint_ids: Vec<i64> = rows.iter().map(|row| row.blueprint_id).collect();
    let expansion_ids: Vec<Option<i64>> = rows.iter().map(|row| row.expansion_id).collect();
    let print_ids: Vec<Option<i64>> = rows
        .iter()
        .map(|row| row.print.as_ref().map(|print| print.0))
        .collect();
    let print_tables: Vec<Option<&str>> = rows
        .iter()
        .map(|row| row.print.as_ref().map(|print| print.1.as_str()))
        .collect();
    let names: Vec<&str> = rows.iter().map(|row| row.name.as_str()).collect();
    let quantities: Vec<i32> = rows.iter().map(|row| row.quantity).collect();
    let prices: Vec<i64> = rows.iter().map(|row| row.price_cents).collect();
    let currencies: Vec<&str> = rows.iter().map(|row| row.currency.as_str()).collect();
    let properties: Vec<&serde_json::Value> = rows.iter().map(|row| &row.properties).collect();
    let descriptions: Vec<Option<&str>> =
        rows.iter().map(|row| row.description.as_deref()).collect();
    let user_fields: Vec<Option<&str>> = rows
        .iter()
        .map(|row| row.user_data_field.as_deref())
        .collect();
    let tags: Vec<Option<&str>> = rows.iter().map(|row| row.tag.as_deref()).collect();
    let graded: Vec<Option<bool>> = rows.iter().map(|row| row.graded).collect();
    // A reserved row keeps its local quantity: the purchase saga owns it until it ends. Unchanged
    // rows are filtered out before the insert, not only by the conflict clause: ON CONFLICT DO
    // UPDATE … WHERE false still locks the row, which writes the heap and the WAL for nothing. The
    // conflict clause stays for rows that change between the filter and the insert.
    let written = sqlx::query(
        "INSERT INTO inventory_items AS i (user_id, product_id, blueprint_id, expansion_id, print_id, print_table, \
             name, quantity, price_cents, currency, properties, description, user_data_field, tag, graded) \
         SELECT $1, u.* FROM UNNEST($2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], \
             $8::int[], $9::bigint[], $10::text[], $11::jsonb[], $12::text[], $13::text[], $14::text[], $15::bool[]) \
             AS u(product_id, blueprint_id, expansion_id, print_id, print_table, name, quantity, price_cents, \
                  currency, properties, description, user_data_field, tag, graded) \
         WHERE NOT EXISTS (SELECT 1 FROM inventory_items c WHERE c.user_id = $1 AND c.product_id = u.product_id \
             AND (c.blueprint_id, c.expansion_id, c.print_id, c.print_table, c.name, \
                  CASE WHEN c.reserved_quantity > 0 THEN 0 ELSE c.quantity END, c.price_cents, c.currency, \
                  c.properties, c.description, c.user_data_field, c.tag, c.graded) \
             IS NOT DISTINCT FROM (u.blueprint_id, u.expansion_id, u.print_id, u.print_table, u.name, \
                  CASE WHEN c.reserved_quantity > 0 THEN 0 ELSE u.quantity END, u.price_cents, u.currency, \
                  u.properties, u.description, u.user_data_field, u.tag, u.graded)) \
         ON CONFLICT ON CONSTRAINT inventory_items_pkey DO UPDATE SET \
             blueprint_id = EXCLUDED.blueprint_id, expansion_id = EXCLUDED.expansion_id, \
             print_id = EXCLUDED.print_id, print_table = EXCLUDED.print_table, name = EXCLUDED.name, \
             quantity = CASE WHEN i.reserved_quantity > 0 THEN i.quantity ELSE EXCLUDED.quantity END, \
             price_cents = EXCLUDED.price_cents, currency = EXCLUDED.currency, properties = EXCLUDED.properties, \
             description = EXCLUDED.description, user_data_field = EXCLUDED.user_data_field, tag = EXCLUDED.tag, \
             graded = EXCLUDED.graded, updated_at = now() \
         WHERE (i.blueprint_id, i.expansion_id, i.print_id, i.print_table, i.name, \
                CASE WHEN i.reserved_quantity > 0 THEN 0 ELSE i.quantity END, i.price_cents, i.currency, \
                i.properties, i.description, i.user_data_field, i.tag, i.graded) \
           IS DISTINCT FROM (EXCLUDED.blueprint_id, EXCLUDED.expansion_id, EXCLUDED.print_id, EXCLUDED.print_table, \
                EXCLUDED.name, CASE WHEN i.reserved_quantity > 0 THEN 0 ELSE EXCLUDED.quantity END, \
                EXCLUDED.price_cents, EXCLUDED.currency, EXCLUDED.properties, EXCLUDED.description, \
                EXCLUDED.user_data_field, EXCLUDED.tag, EXCLUDED.graded)",
    )
    .bind(user_id.as_uuid())
    .bind(&product_ids)
    .bind(&blueprint_ids)
    .bind(&expansion_ids)
    .bind(&print_ids)
    .bind(&print_tables)
    .bind(&names)
    .bind(&quantities)
    .bind(&prices)
    .bind(&currencies)
    .bind(&properties)
    .bind(&descriptions)
    .bind(&user_fields)
    .bind(&tags)
    .bind(&graded)
    .execute(&mut *conn)
    .await?;
    Ok(written.rows_affected())
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
                 WHERE user_id = $1 AND product_id = ANY($2) AND reserved_quantity = 0",
            )
            .bind(user_id.as_uuid())
            .bind(&stale)
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
