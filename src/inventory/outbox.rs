//! SQL of the push outbox (`inventory_pushes`) as the push job and its re-queuer use it. Every
//! function takes the caller's connection: the push job's fenced unit of work or read-only
//! transaction, so a worker whose lease was taken over records nothing.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{domain::UserId, marketplace::types::Product};

/// What an outbox row asks CardTrader to do (the `op` column, CHECK-constrained to these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// Set the edited fields to the item's values.
    Update,
    /// Delete the product.
    Delete,
    /// List a new product.
    Create,
}

impl Op {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            "create" => Some(Op::Create),
            _ => None,
        }
    }

    /// The metric label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Create => "create",
        }
    }
}

/// One outstanding push as the outbox holds it.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) id: Uuid,
    pub(super) product_id: Option<i64>,
    pub(super) op: Op,
    pub(super) fields: Value,
    pub(super) version: i64,
    pub(super) create_tag: Option<String>,
}

#[derive(sqlx::FromRow)]
struct PendingRow {
    id: Uuid,
    product_id: Option<i64>,
    op: String,
    fields: Value,
    version: i64,
    create_tag: Option<String>,
}

/// The seller's pending pushes, oldest first, at most `limit`.
pub(super) async fn pending(
    conn: &mut PgConnection,
    user_id: UserId,
    limit: i64,
) -> Result<Vec<Pending>, sqlx::Error> {
    let rows: Vec<PendingRow> = sqlx::query_as(
        "SELECT id, product_id, op, fields, version, create_tag FROM inventory_pushes \
         WHERE user_id = $1 AND state = 'pending' ORDER BY updated_at, id LIMIT $2",
    )
    .bind(user_id.as_uuid())
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let op = Op::parse(&row.op).ok_or_else(|| {
                sqlx::Error::Decode(format!("bad op in inventory_pushes row {}", row.id).into())
            })?;
            Ok(Pending {
                id: row.id,
                product_id: row.product_id,
                op,
                fields: row.fields,
                version: row.version,
                create_tag: row.create_tag,
            })
        })
        .collect()
}

/// Of the seller's `product_ids`, those with an edit still waiting to be pushed.
pub(super) async fn pending_of(
    conn: &mut PgConnection,
    user_id: UserId,
    product_ids: &[i64],
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT product_id FROM inventory_pushes \
         WHERE user_id = $1 AND product_id = ANY($2) AND state = 'pending'",
    )
    .bind(user_id.as_uuid())
    .bind(product_ids)
    .fetch_all(conn)
    .await
}

/// Of `product_ids`, those a purchase in flight holds on CardTrader.
pub(super) async fn held_by_purchases(
    conn: &mut PgConnection,
    user_id: UserId,
    product_ids: &[i64],
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT product_id FROM purchase_product_locks WHERE user_id = $1 AND product_id = ANY($2)",
    )
    .bind(user_id.as_uuid())
    .bind(product_ids)
    .fetch_all(conn)
    .await
}

/// The item's current values: price cents, quantity, description, properties, user data field.
pub(super) type ItemValues = (i64, i32, Option<String>, Value, Option<String>);

/// The values of the seller's item `product_id` now; `None` when it is gone locally.
pub(super) async fn item_values(
    conn: &mut PgConnection,
    user_id: UserId,
    product_id: i64,
) -> Result<Option<ItemValues>, sqlx::Error> {
    sqlx::query_as(
        "SELECT price_cents, quantity, description, properties, user_data_field \
         FROM inventory_items WHERE user_id = $1 AND product_id = $2",
    )
    .bind(user_id.as_uuid())
    .bind(product_id)
    .fetch_optional(conn)
    .await
}

/// CardTrader has the row's edit: it goes, unless an edit came in since it was read (then the
/// newer edit stays pending).
pub(super) async fn settle(conn: &mut PgConnection, row: &Pending) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM inventory_pushes WHERE id = $1 AND version = $2")
        .bind(row.id)
        .bind(row.version)
        .execute(conn)
        .await?;
    Ok(())
}

/// CardTrader refused the row's edit for good: it stays, failed, with the reason.
pub(super) async fn mark_failed(
    conn: &mut PgConnection,
    row: &Pending,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE inventory_pushes SET state = 'failed', last_error = $3, retry_at = NULL, \
             updated_at = now() WHERE id = $1 AND version = $2",
    )
    .bind(row.id)
    .bind(row.version)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records, before a create is sent, what the blueprint's products held and when the create will
/// have settled on CardTrader: an attempt that finds these decides from the export instead of
/// sending again, and not before `settled_by`.
pub(super) async fn save_create_intent(
    conn: &mut PgConnection,
    row: &Pending,
    products: &[Product],
    settled_by: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let before: serde_json::Map<String, Value> = products
        .iter()
        .map(|product| (product.id.to_string(), Value::from(product.quantity)))
        .collect();
    sqlx::query(
        "UPDATE inventory_pushes SET fields = fields \
             || jsonb_build_object('before', $3::jsonb, 'settled_by', $4::timestamptz) \
         WHERE id = $1 AND version = $2",
    )
    .bind(row.id)
    .bind(row.version)
    .bind(Value::Object(before))
    .bind(settled_by)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a created product locally (CardTrader may have merged the create into an identical
/// product the seller already had: its row then takes CardTrader's new quantity) and closes the
/// create's row.
pub(super) async fn adopt_created(
    conn: &mut PgConnection,
    user_id: UserId,
    row: &Pending,
    product: &Product,
    expansion_id: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO inventory_items (user_id, product_id, blueprint_id, expansion_id, name, \
             quantity, price_cents, currency, properties, description, user_data_field, tag, graded) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT ON CONSTRAINT inventory_items_pkey DO UPDATE SET \
             quantity = greatest(EXCLUDED.quantity, inventory_items.reserved_quantity), \
             price_cents = EXCLUDED.price_cents, properties = EXCLUDED.properties, \
             description = EXCLUDED.description, user_data_field = EXCLUDED.user_data_field, \
             updated_at = now()",
    )
    .bind(user_id.as_uuid())
    .bind(product.id)
    .bind(product.blueprint_id)
    .bind(expansion_id)
    .bind(&product.name_en)
    .bind(i32::try_from(product.quantity).unwrap_or(i32::MAX))
    .bind(product.price_cents)
    .bind(&product.price_currency)
    .bind(Value::Object(product.properties_hash.clone()))
    .bind(&product.description)
    .bind(&product.user_data_field)
    .bind(&product.tag)
    .bind(product.graded)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE inventory_pushes SET state = 'done', product_id = $2, last_error = NULL, \
             retry_at = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(row.id)
    .bind(product.id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every pending push of the seller ends failed with `reason` (their push can no longer run);
/// returns how many.
pub(super) async fn fail_all_pending(
    conn: &mut PgConnection,
    user_id: UserId,
    reason: &str,
) -> Result<u64, sqlx::Error> {
    let failed = sqlx::query(
        "UPDATE inventory_pushes SET state = 'failed', last_error = $2, retry_at = NULL, \
             updated_at = now() WHERE user_id = $1 AND state = 'pending'",
    )
    .bind(user_id.as_uuid())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(failed.rows_affected())
}

/// A push job gave up on the seller's pending pushes (`reason`): each counts another round and
/// waits `backoff(rounds)` for the re-queuer; a push past `max_rounds` ends failed. Returns
/// (rescheduled, failed).
pub(super) async fn schedule_retry(
    conn: &mut PgConnection,
    user_id: UserId,
    reason: &str,
    backoff: &[std::time::Duration],
) -> Result<(u64, u64), sqlx::Error> {
    let waits: Vec<f64> = backoff.iter().map(|wait| wait.as_secs_f64()).collect();
    let max_rounds = i32::try_from(waits.len()).unwrap_or(i32::MAX);
    let (rescheduled, failed): (i64, i64) = sqlx::query_as(
        "WITH counted AS ( \
             UPDATE inventory_pushes SET rounds = rounds + 1, last_error = $2, updated_at = now(), \
                 state = CASE WHEN rounds + 1 >= $4 THEN 'failed' ELSE 'pending' END, \
                 retry_at = CASE WHEN rounds + 1 >= $4 THEN NULL \
                     ELSE now() + make_interval(secs => ($3::float8[])[rounds + 1]) END \
             WHERE user_id = $1 AND state = 'pending' RETURNING state) \
         SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'failed') \
         FROM counted",
    )
    .bind(user_id.as_uuid())
    .bind(reason)
    .bind(&waits)
    .bind(max_rounds)
    .fetch_one(conn)
    .await?;
    Ok((
        u64::try_from(rescheduled).unwrap_or(0),
        u64::try_from(failed).unwrap_or(0),
    ))
}

/// Sellers whose pending pushes wait for the re-queuer: their retry time has come, or no push job
/// has looked at them for `orphaned_after` (the job that should have was lost). At most `limit`.
pub(super) async fn sellers_due(
    conn: &mut PgConnection,
    orphaned_after: std::time::Duration,
    limit: i64,
) -> Result<Vec<UserId>, sqlx::Error> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT user_id FROM inventory_pushes \
         WHERE state = 'pending' \
           AND (retry_at <= now() \
                OR (retry_at IS NULL AND updated_at < now() - make_interval(secs => $1))) \
         LIMIT $2",
    )
    .bind(orphaned_after.as_secs_f64())
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(ids
        .into_iter()
        .filter_map(|id| UserId::from_uuid(id).ok())
        .collect())
}

/// The seller's pending pushes are about to get a job: no longer waiting for the re-queuer.
pub(super) async fn clear_retry(
    conn: &mut PgConnection,
    user_id: UserId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE inventory_pushes SET retry_at = NULL WHERE user_id = $1 AND state = 'pending'",
    )
    .bind(user_id.as_uuid())
    .execute(conn)
    .await?;
    Ok(())
}
