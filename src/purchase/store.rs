//! SQL of purchases. Reserving is one short transaction: the purchase recorded under its idempotency
//! key, the item rows locked in product id order (the lock order every writer shares), each line's
//! availability checked, `reserved_quantity` raised, the lines stored. Nothing is left behind when it
//! fails.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{NewPurchase, PurchaseError, Reserved, saga::Saga};

/// SHA-256 of what makes two requests the same: their lines, in order, and the buyer.
pub fn request_hash(purchase: &NewPurchase) -> Vec<u8> {
    let lines: Vec<(i64, i32)> = purchase
        .lines
        .iter()
        .map(|line| (line.product_id, line.quantity))
        .collect();
    // A tuple of integers and a string always serializes.
    let encoded = serde_json::to_vec(&(lines, &purchase.buyer_ref)).unwrap_or_default();
    Sha256::digest(&encoded).to_vec()
}

/// Records `purchase` and reserves its stock, or finds the purchase already recorded under its key.
pub async fn reserve(pool: &PgPool, purchase: &NewPurchase) -> Result<Reserved, PurchaseError> {
    let hash = request_hash(purchase);
    let mut tx = pool.begin().await?;
    let id = Uuid::new_v4();
    let saga = serde_json::to_value(Saga::new(purchase.lines.len()))
        .map_err(|err| PurchaseError::Internal(err.to_string()))?;
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO purchases (id, user_id, idempotency_key, request_hash, buyer_ref, saga, deadline) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT ON CONSTRAINT purchases_idempotency_key DO NOTHING RETURNING id",
    )
    .bind(id)
    .bind(purchase.user_id.as_uuid())
    .bind(&purchase.idempotency_key)
    .bind(&hash)
    .bind(&purchase.buyer_ref)
    .bind(&saga)
    .bind(purchase.deadline)
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_none() {
        return existing(&mut tx, purchase, &hash).await;
    }
    reserve_items(&mut tx, purchase).await?;
    store_lines(&mut tx, id, purchase).await?;
    tx.commit().await?;
    Ok(Reserved::Created(id))
}

/// The purchase already under this key: a replay if it is the same request, a conflict if not.
async fn existing(
    conn: &mut PgConnection,
    purchase: &NewPurchase,
    hash: &[u8],
) -> Result<Reserved, PurchaseError> {
    let (id, stored): (Uuid, Vec<u8>) = sqlx::query_as(
        "SELECT id, request_hash FROM purchases WHERE user_id = $1 AND idempotency_key = $2",
    )
    .bind(purchase.user_id.as_uuid())
    .bind(&purchase.idempotency_key)
    .fetch_one(&mut *conn)
    .await?;
    if stored == hash {
        Ok(Reserved::Replay(id))
    } else {
        Err(PurchaseError::KeyConflict)
    }
}

/// Locks the lines' items in product id order and raises their reservations, or fails naming the
/// first item that is missing or short.
async fn reserve_items(
    conn: &mut PgConnection,
    purchase: &NewPurchase,
) -> Result<(), PurchaseError> {
    // Lines naming the same item are reserved together.
    let mut wanted: BTreeMap<i64, i32> = BTreeMap::new();
    for line in &purchase.lines {
        *wanted.entry(line.product_id).or_default() += line.quantity;
    }
    let ids: Vec<i64> = wanted.keys().copied().collect();
    let stock: Vec<(i64, i32, i32)> = sqlx::query_as(
        "SELECT product_id, quantity, reserved_quantity FROM inventory_items \
         WHERE user_id = $1 AND product_id = ANY($2) ORDER BY product_id FOR UPDATE",
    )
    .bind(purchase.user_id.as_uuid())
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    for (product_id, requested) in &wanted {
        let Some((_, quantity, reserved)) = stock.iter().find(|row| row.0 == *product_id) else {
            return Err(PurchaseError::UnknownItem(*product_id));
        };
        let available = quantity - reserved;
        if available < *requested {
            return Err(PurchaseError::InsufficientStock {
                product_id: *product_id,
                available,
                requested: *requested,
            });
        }
    }
    let amounts: Vec<i32> = wanted.values().copied().collect();
    sqlx::query(
        "UPDATE inventory_items i SET reserved_quantity = i.reserved_quantity + w.amount, updated_at = now() \
         FROM UNNEST($2::bigint[], $3::int[]) AS w(product_id, amount) \
         WHERE i.user_id = $1 AND i.product_id = w.product_id",
    )
    .bind(purchase.user_id.as_uuid())
    .bind(&ids)
    .bind(&amounts)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn store_lines(
    conn: &mut PgConnection,
    id: Uuid,
    purchase: &NewPurchase,
) -> Result<(), PurchaseError> {
    let numbers: Vec<i32> = (0..purchase.lines.len() as i32).collect();
    let products: Vec<i64> = purchase.lines.iter().map(|l| l.product_id).collect();
    let quantities: Vec<i32> = purchase.lines.iter().map(|l| l.quantity).collect();
    sqlx::query(
        "INSERT INTO purchase_lines (purchase_id, line, product_id, quantity) \
         SELECT $1, * FROM UNNEST($2::int[], $3::bigint[], $4::int[])",
    )
    .bind(id)
    .bind(&numbers)
    .bind(&products)
    .bind(&quantities)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
