//! SQL of the webhook tables (`webhook_events`, `webhook_orders`) and of the stock changes the events
//! make. Functions take the caller's transaction; the caller decides what commits together.

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::payload::Envelope;
use crate::{domain::UserId, jobs::NewJob, storage::Pg};

/// What [`store_event_queued`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct Intake {
    /// The seller is connected now (nothing is stored for one who is not).
    pub(crate) connected: bool,
    /// The event is new and was stored; `false` for a redelivery, which changes nothing.
    pub(crate) stored: bool,
    /// A queued apply job of the seller will see the event: one was joined (held until this
    /// statement committed, so no worker claimed it in between) or created.
    pub(crate) queued: bool,
}

/// Stores a verified delivery for a connected seller and makes sure the seller's apply job
/// (`job`) will see it, in one statement (its own transaction): the intake's only round trip.
///
/// The job part is the jobs module's ([`crate::jobs::store::queue_in_statement`]): in the rare race
/// where another request queues one between this statement's look and its insert, `queued` is
/// `false` and the caller queues the job afterwards (any job queued after the commit sees the event).
pub(crate) async fn store_event_queued(
    pool: &Pg,
    user_id: UserId,
    envelope: &Envelope,
    body: &str,
    job: &NewJob,
) -> Result<Intake, sqlx::Error> {
    let sql = format!(
        "WITH account AS ( \
             SELECT user_id FROM accounts WHERE user_id = $2 AND status = 'connected' \
         ), event AS ( \
             INSERT INTO webhook_events (id, user_id, cause, object_id, mode, event_time, body) \
             SELECT $1, $2, $3, $4, $5, to_timestamp($6), $7::jsonb FROM account \
             ON CONFLICT ON CONSTRAINT webhook_events_pkey DO NOTHING \
             RETURNING 1 \
         ), {} \
         SELECT EXISTS (SELECT 1 FROM account) AS connected, \
                EXISTS (SELECT 1 FROM event) AS stored, \
                EXISTS (SELECT 1 FROM joined) OR EXISTS (SELECT 1 FROM created) AS queued",
        crate::jobs::store::queue_in_statement("event", 8)
    );
    let query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(envelope.id)
        .bind(user_id.as_uuid())
        .bind(&envelope.cause)
        .bind(envelope.object_id)
        .bind(&envelope.mode)
        .bind(envelope.time)
        .bind(body);
    crate::jobs::store::bind_new(query, job)
        .fetch_one(pool)
        .await
}

/// An event waiting to be applied.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PendingEvent {
    /// CardTrader's event id.
    pub(crate) id: Uuid,
    /// The delivery as stored.
    pub(crate) body: serde_json::Value,
}

/// The seller's oldest unapplied event, locked until the caller's transaction ends.
pub(crate) async fn next_event(
    conn: &mut PgConnection,
    user_id: UserId,
) -> Result<Option<PendingEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, body FROM webhook_events WHERE user_id = $1 AND applied_at IS NULL \
         ORDER BY seq LIMIT 1 FOR UPDATE",
    )
    .bind(user_id.as_uuid())
    .fetch_optional(conn)
    .await
}

/// Marks the event applied with what it did, and the products it named that have no local row.
pub(crate) async fn mark_applied(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    outcome: &str,
    error: Option<&str>,
    unknown: Option<&serde_json::Value>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_events SET applied_at = now(), outcome = $2, error = $3, unknown_products = $4 \
         WHERE id = $1",
    )
    .bind(id)
    .bind(outcome)
    .bind(error)
    .bind(unknown)
    .execute(executor)
    .await?;
    Ok(())
}

/// What earlier deliveries did to an order, as stored.
#[derive(Debug, Default, sqlx::FromRow)]
pub(crate) struct OrderRecord {
    /// Items were taken.
    pub(crate) stock_taken: bool,
    /// They were given back.
    pub(crate) stock_restored: bool,
    /// Seen cancelled.
    pub(crate) canceled: bool,
    /// `[[product_id, amount], …]` taken.
    pub(crate) taken: serde_json::Value,
}

/// The order's record, created empty when first seen and locked until the caller's transaction ends.
pub(crate) async fn lock_order(
    conn: &mut PgConnection,
    user_id: UserId,
    order_id: i64,
) -> Result<OrderRecord, sqlx::Error> {
    // DO UPDATE rather than DO NOTHING: it returns (and locks) the row that is already there.
    sqlx::query_as(
        "INSERT INTO webhook_orders (user_id, order_id) VALUES ($1, $2) \
         ON CONFLICT ON CONSTRAINT webhook_orders_pkey DO UPDATE SET updated_at = now() \
         RETURNING stock_taken, stock_restored, canceled, taken",
    )
    .bind(user_id.as_uuid())
    .bind(order_id)
    .fetch_one(conn)
    .await
}

/// What a delivery changed on the order's record.
#[derive(Debug)]
pub(crate) struct OrderUpdate<'a> {
    /// The state delivered.
    pub(crate) state: &'a str,
    /// A CT0 order.
    pub(crate) via_cardtrader_zero: bool,
    /// Stock was taken now, with what was taken.
    pub(crate) took: Option<serde_json::Value>,
    /// Stock was given back now.
    pub(crate) restored: bool,
    /// The delivery cancelled the order.
    pub(crate) canceled: bool,
}

/// Records what a delivery did to the order (flags only ever turn on).
pub(crate) async fn update_order(
    conn: &mut PgConnection,
    user_id: UserId,
    order_id: i64,
    update: &OrderUpdate<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_orders SET last_state = $3, via_cardtrader_zero = $4, \
             stock_taken = stock_taken OR $5 IS NOT NULL, taken = coalesce($5, taken), \
             stock_restored = stock_restored OR $6, canceled = canceled OR $7, updated_at = now() \
         WHERE user_id = $1 AND order_id = $2",
    )
    .bind(user_id.as_uuid())
    .bind(order_id)
    .bind(update.state)
    .bind(update.via_cardtrader_zero)
    .bind(update.took.as_ref())
    .bind(update.restored)
    .bind(update.canceled)
    .execute(conn)
    .await?;
    Ok(())
}

/// One product of a take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct TakenLine {
    /// The product.
    pub(crate) product_id: i64,
    /// Units the order took.
    pub(crate) asked: i64,
    /// Units taken from the local row; `None` when the seller has no local row for it.
    pub(crate) taken: Option<i64>,
}

/// Takes `amounts` (product id, units; in product id order) from the seller's local rows, in one
/// statement locking them in product id order. A row never drops below its reservation: an in-flight
/// purchase holds that stock and will settle it (the CHECK would refuse anything lower); what could
/// not be taken is the caller's shortfall to report, and the next sync corrects it.
pub(crate) async fn take_stock(
    conn: &mut PgConnection,
    user_id: UserId,
    amounts: &[(i64, i64)],
) -> Result<Vec<TakenLine>, sqlx::Error> {
    let (ids, units): (Vec<i64>, Vec<i64>) = amounts.iter().copied().unzip();
    sqlx::query_as(
        "WITH wanted AS (SELECT * FROM UNNEST($2::bigint[], $3::bigint[]) AS w(product_id, amount)), \
         locked AS ( \
             SELECT product_id, quantity, reserved_quantity FROM inventory_items \
             WHERE user_id = $1 AND product_id = ANY($2) ORDER BY product_id FOR UPDATE), \
         taken AS ( \
             UPDATE inventory_items i \
             SET quantity = greatest(l.quantity - w.amount, l.reserved_quantity), updated_at = now() \
             FROM wanted w JOIN locked l USING (product_id) \
             WHERE i.user_id = $1 AND i.product_id = w.product_id \
             RETURNING i.product_id, (l.quantity - i.quantity)::bigint AS taken) \
         SELECT w.product_id, w.amount AS asked, t.taken FROM wanted w LEFT JOIN taken t USING (product_id) \
         ORDER BY w.product_id",
    )
    .bind(user_id.as_uuid())
    .bind(&ids)
    .bind(&units)
    .fetch_all(conn)
    .await
}

/// Gives `amounts` back to the seller's local rows; returns how many rows still existed.
pub(crate) async fn restore_stock(
    conn: &mut PgConnection,
    user_id: UserId,
    amounts: &[(i64, i64)],
) -> Result<u64, sqlx::Error> {
    let (ids, units): (Vec<i64>, Vec<i64>) = amounts.iter().copied().unzip();
    let restored = sqlx::query(
        "UPDATE inventory_items i SET quantity = i.quantity + r.amount, updated_at = now() \
         FROM (SELECT * FROM UNNEST($2::bigint[], $3::bigint[]) AS r(product_id, amount) ORDER BY product_id) r \
         WHERE i.user_id = $1 AND i.product_id = r.product_id",
    )
    .bind(user_id.as_uuid())
    .bind(&ids)
    .bind(&units)
    .execute(conn)
    .await?;
    Ok(restored.rows_affected())
}

/// Events of the seller with unknown products whose sync is not queued yet: `(event id, products)`.
pub(crate) async fn syncs_pending(
    executor: impl PgExecutor<'_>,
    user_id: UserId,
) -> Result<Vec<(Uuid, serde_json::Value)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, unknown_products FROM webhook_events \
         WHERE user_id = $1 AND unknown_products IS NOT NULL AND sync_queued_at IS NULL",
    )
    .bind(user_id.as_uuid())
    .fetch_all(executor)
    .await
}

/// Records that the sync of these events' unknown products was queued.
pub(crate) async fn mark_syncs_queued(
    executor: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE webhook_events SET sync_queued_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(executor)
        .await?;
    Ok(())
}

/// One order of a product as the stored webhook deliveries last showed it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RecordedSale {
    /// CardTrader's order id.
    pub order_id: i64,
    /// Units of the product it bought.
    pub units: i64,
    /// Its state in the latest delivery.
    pub state: String,
    /// When CardTrader emitted that delivery (else when it arrived).
    pub at: chrono::DateTime<chrono::Utc>,
}

/// The orders of `product_id` that live deliveries stored since `since` name, each as its latest
/// delivery shows it.
pub(crate) async fn recorded_sales(
    conn: &mut PgConnection,
    user_id: UserId,
    product_id: i64,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<RecordedSale>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (order_id) order_id, units, state, at FROM ( \
             SELECT object_id AS order_id, seq, body -> 'data' ->> 'state' AS state, \
                    coalesce(event_time, received_at) AS at, \
                    (SELECT coalesce(sum((item ->> 'quantity')::bigint), 0) \
                     FROM jsonb_array_elements(body -> 'data' -> 'order_items') item \
                     WHERE (item ->> 'product_id')::bigint = $2)::bigint AS units \
             FROM webhook_events \
             WHERE user_id = $1 AND mode = 'live' AND coalesce(event_time, received_at) >= $3 \
               AND body -> 'data' -> 'order_items' @> jsonb_build_array(jsonb_build_object('product_id', $2::bigint)) \
         ) deliveries ORDER BY order_id, seq DESC",
    )
    .bind(user_id.as_uuid())
    .bind(product_id)
    .bind(since)
    .fetch_all(conn)
    .await
}

/// Deletes up to `batch` events applied before `cutoff`, oldest first, in one statement; returns how
/// many. Unapplied events are the apply job's backlog, and an event whose unknown products still
/// wait for their sync to be queued is not done either: both stay. A redelivery of a deleted event
/// is stored again, and its order's record ([`delete_orders_untouched_since`]) keeps it from moving
/// stock a second time.
pub(crate) async fn delete_events_applied_before(
    executor: impl PgExecutor<'_>,
    cutoff: chrono::DateTime<chrono::Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM webhook_events WHERE id IN ( \
             SELECT id FROM webhook_events \
             WHERE applied_at IS NOT NULL AND applied_at < $1 \
               AND NOT (unknown_products IS NOT NULL AND sync_queued_at IS NULL) \
             ORDER BY applied_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(cutoff)
    .bind(batch)
    .execute(executor)
    .await?;
    Ok(deleted.rows_affected())
}

/// Deletes up to `batch` order records that no delivery touched since `cutoff`, and no stored
/// event of the order waits to be applied, oldest first, in one statement; returns how many. A
/// record is what keeps a later delivery of its order from taking stock again, so it must outlive
/// every delivery still to come: the caller passes a cutoff far beyond CardTrader's redeliveries and
/// an order's life, and never later than the events' own cutoff. Records an apply holds are skipped.
pub(crate) async fn delete_orders_untouched_since(
    executor: impl PgExecutor<'_>,
    cutoff: chrono::DateTime<chrono::Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM webhook_orders WHERE (user_id, order_id) IN ( \
             SELECT o.user_id, o.order_id FROM webhook_orders o \
             WHERE o.updated_at < $1 \
               AND NOT EXISTS (SELECT 1 FROM webhook_events e \
                               WHERE e.user_id = o.user_id AND e.object_id = o.order_id \
                                 AND e.applied_at IS NULL) \
             ORDER BY o.updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(cutoff)
    .bind(batch)
    .execute(executor)
    .await?;
    Ok(deleted.rows_affected())
}
