//! SQL of purchases. Reserving is one short transaction: the purchase recorded under its idempotency
//! key, the item rows locked in product id order (the lock order every writer shares), each line's
//! availability checked, `reserved_quantity` raised, the lines stored, and the job that drives the
//! saga queued. Nothing is left behind when it fails. Every later write of the driver is a fenced
//! transaction that appends to the step log ([`append`]), so a worker whose lease was taken over
//! changes nothing. Retention drops the step log of purchases long ended ([`prune_ended_before`]).

use std::collections::BTreeMap;

use crate::storage::Pg;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    LineMemo, NewPurchase, PurchaseError, Reserved,
    saga::{Event, Phase, PurchaseState, Saga},
};
use crate::{
    domain::UserId,
    jobs::{self, JobError, JobKind, Lane, Lease, NewJob, QueueLimit},
};

/// SHA-256 of what makes two requests the same: their lines, in order, and the buyer.
pub(super) fn request_hash(purchase: &NewPurchase) -> Vec<u8> {
    let lines: Vec<(i64, i32)> = purchase
        .lines
        .iter()
        .map(|line| (line.product_id, line.quantity))
        .collect();
    // A tuple of integers and a string always serializes.
    let encoded = serde_json::to_vec(&(lines, &purchase.buyer_ref)).unwrap_or_default();
    Sha256::digest(&encoded).to_vec()
}

/// Records `purchase`, reserves its stock and queues the job that drives it, or finds the purchase
/// already recorded under its key. `max_depth` bounds the interactive lane's queue.
pub async fn reserve(
    pool: &Pg,
    purchase: &NewPurchase,
    max_depth: i64,
) -> Result<Reserved, PurchaseError> {
    Ok(reserve_with(pool, purchase, max_depth, None).await?.0)
}

/// Who claims a purchase's job as it is created: `(owner, lease)` of the local worker.
pub(super) type LocalClaim<'a> = Option<(&'a str, std::time::Duration)>;

/// [`reserve`], with the driver's job created already claimed by `claim` when given (the lease
/// is returned), so the local worker starts it at once.
pub async fn reserve_with(
    pool: &Pg,
    purchase: &NewPurchase,
    max_depth: i64,
    claim: LocalClaim<'_>,
) -> Result<(Reserved, Option<Lease>), PurchaseError> {
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
        return Ok((existing(&mut tx, purchase, &hash).await?, None));
    }
    // A job started here at once adds nothing to the queue.
    if claim.is_none() {
        let depth = jobs::store::queued_in_lane(&mut *tx, Lane::Interactive)
            .await
            .map_err(jobs_error)?;
        if depth >= max_depth {
            return Err(PurchaseError::QueueFull);
        }
    }
    reserve_items(&mut tx, purchase).await?;
    store_lines(&mut tx, id, purchase).await?;
    let locked = try_lock_new(&mut tx, purchase, id).await?;
    let job = driver_job(purchase.user_id, id, locked);
    let lease = match claim {
        Some((owner, lease)) => Some(
            jobs::store::enqueue_claimed_in(&mut tx, &job, owner, lease)
                .await
                .map_err(jobs_error)?,
        ),
        None => {
            jobs::store::enqueue_in(&mut tx, &job, QueueLimit::Unbounded)
                .await
                .map_err(jobs_error)?;
            None
        }
    };
    tx.commit().await?;
    Ok((Reserved::Created(id), lease))
}

/// Takes the CardTrader locks of a purchase being reserved, if no other purchase holds any of its
/// products; all or none. Saves the driver a transaction in the common case of free products.
async fn try_lock_new(
    conn: &mut PgConnection,
    purchase: &NewPurchase,
    id: Uuid,
) -> Result<bool, PurchaseError> {
    let mut ids: Vec<i64> = purchase.lines.iter().map(|line| line.product_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let inserted = insert_locks(conn, purchase.user_id, &ids, id).await?;
    if inserted as usize == ids.len() {
        return Ok(true);
    }
    // Some are held by another purchase: the driver waits for all of them instead. Every lock of
    // this purchase was taken just now, by this statement.
    unlock_products(conn, id).await?;
    Ok(false)
}

/// The job that drives purchase `id` (`locked`: the reservation took its product locks):
/// interactive, never coalesced with another purchase's.
pub(super) fn driver_job(user_id: UserId, id: Uuid, locked: bool) -> NewJob {
    NewJob::new(
        user_id,
        JobKind::Purchase {
            purchase_id: id,
            locked,
        },
    )
}

fn jobs_error(err: JobError) -> PurchaseError {
    match err {
        JobError::Database(err) => PurchaseError::Database(err),
        other => PurchaseError::Internal(other.to_string()),
    }
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
    let amounts: Vec<i32> = wanted.values().copied().collect();
    // One statement: `locked` takes the row locks in product id order, and the update raises the
    // reservations only if every line is available. The rows as they were come back, so a
    // shortfall can be named (the caller's transaction is then rolled back).
    let stock: Vec<(i64, Option<i32>, Option<i32>)> = sqlx::query_as(
        "WITH wanted AS (SELECT * FROM UNNEST($2::bigint[], $3::int[]) AS w(product_id, amount)), \
         locked AS ( \
             SELECT product_id, quantity, reserved_quantity FROM inventory_items \
             WHERE user_id = $1 AND product_id = ANY($2) ORDER BY product_id FOR UPDATE), \
         stock AS ( \
             SELECT w.product_id, w.amount, l.quantity, l.reserved_quantity \
             FROM wanted w LEFT JOIN locked l USING (product_id)), \
         raised AS ( \
             UPDATE inventory_items i SET reserved_quantity = i.reserved_quantity + s.amount, \
                 updated_at = now() \
             FROM stock s \
             WHERE i.user_id = $1 AND i.product_id = s.product_id \
               AND NOT EXISTS (SELECT 1 FROM stock short WHERE short.quantity IS NULL \
                               OR short.quantity - short.reserved_quantity < short.amount)) \
         SELECT product_id, quantity, reserved_quantity FROM stock ORDER BY product_id",
    )
    .bind(purchase.user_id.as_uuid())
    .bind(&ids)
    .bind(&amounts)
    .fetch_all(&mut *conn)
    .await?;
    for ((product_id, requested), (_, quantity, reserved)) in wanted.iter().zip(&stock) {
        let (Some(quantity), Some(reserved)) = (quantity, reserved) else {
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

/// One line as stored, with what the driver learnt about it on CardTrader. Read as one element of
/// the JSON array the purchase queries aggregate, so a purchase and its lines are one query.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct StoredLine {
    /// Line index.
    pub line: usize,
    /// The CardTrader product the line takes stock of.
    pub product_id: i64,
    /// How many.
    pub quantity: i32,
    /// What was seen on CardTrader (written before the decrement is sent).
    #[serde(rename = "snapshot")]
    pub memo: Option<LineMemo>,
    /// The id of the product re-created by a give-back, which the local row now points to.
    pub recreated_product_id: Option<i64>,
    /// The local item's blueprint, `None` when the shop no longer has the item.
    pub blueprint_id: Option<i64>,
}

impl StoredLine {
    /// The local item this line holds a reservation on.
    pub fn local_product_id(&self) -> i64 {
        self.recreated_product_id.unwrap_or(self.product_id)
    }
}

/// A purchase as stored: the request, the folded saga and the step log's length.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPurchase {
    /// Purchase id.
    pub id: Uuid,
    /// The seller.
    pub user_id: UserId,
    /// The caller's idempotency key.
    pub idempotency_key: String,
    /// The shop's buyer or order reference.
    pub buyer_ref: String,
    /// The saga's state, as of the last step.
    pub saga: Saga,
    /// Past this instant a purchase still taking stock is compensated.
    pub deadline: DateTime<Utc>,
    /// An operator's resolution and note, for a purchase that needed one.
    pub resolution: Option<(String, String)>,
    /// Its lines, in order.
    pub lines: Vec<StoredLine>,
    /// Entries in the step log.
    pub steps: i32,
    /// When it was reserved.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
    /// When it ended, if it has.
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct PurchaseRow {
    id: Uuid,
    user_id: Uuid,
    idempotency_key: String,
    buyer_ref: String,
    saga: serde_json::Value,
    deadline: DateTime<Utc>,
    resolution: Option<String>,
    resolution_note: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    steps: i32,
    lines: serde_json::Value,
}

/// The columns of [`PurchaseRow`], as a literal so queries stay `&'static str`.
macro_rules! purchase_columns {
    () => {
        "p.id, p.user_id, p.idempotency_key, p.buyer_ref, p.saga, p.deadline, \
         p.resolution, p.resolution_note, p.created_at, p.updated_at, p.finished_at, \
         (SELECT count(*)::int FROM purchase_steps s WHERE s.purchase_id = p.id) AS steps, \
         (SELECT coalesce(jsonb_agg(jsonb_build_object( \
                     'line', l.line, 'product_id', l.product_id, 'quantity', l.quantity, \
                     'snapshot', l.snapshot, 'recreated_product_id', l.recreated_product_id, \
                     'blueprint_id', i.blueprint_id) ORDER BY l.line), '[]') \
          FROM purchase_lines l \
          LEFT JOIN inventory_items i ON i.user_id = p.user_id \
               AND i.product_id = coalesce(l.recreated_product_id, l.product_id) \
          WHERE l.purchase_id = p.id) AS lines"
    };
}

/// The purchase `id`, or `None`.
pub async fn load(
    executor: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<StoredPurchase>, PurchaseError> {
    let sql = concat!(
        "SELECT ",
        purchase_columns!(),
        " FROM purchases p WHERE p.id = $1"
    );
    let row: Option<PurchaseRow> = sqlx::query_as(sql)
        .bind(id)
        .fetch_optional(executor)
        .await?;
    row.map(decode).transpose()
}

/// A page of the seller's purchases, newest first, optionally in one state, after `before`.
pub(super) async fn list(
    pool: &Pg,
    user_id: UserId,
    state: Option<PurchaseState>,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<StoredPurchase>, PurchaseError> {
    let (before_at, before_id) = before.unzip();
    let sql = concat!(
        "SELECT ",
        purchase_columns!(),
        " FROM purchases p \
         WHERE p.user_id = $1 AND ($2::text IS NULL OR p.state = $2) \
           AND ($3::timestamptz IS NULL OR (p.created_at, p.id) < ($3, $4)) \
         ORDER BY p.created_at DESC, p.id DESC LIMIT $5"
    );
    let rows: Vec<PurchaseRow> = sqlx::query_as(sql)
        .bind(user_id.as_uuid())
        .bind(state.map(PurchaseState::as_str))
        .bind(before_at)
        .bind(before_id)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(decode).collect()
}

fn decode(row: PurchaseRow) -> Result<StoredPurchase, PurchaseError> {
    let saga = serde_json::from_value(row.saga)
        .map_err(|err| PurchaseError::Internal(format!("unreadable saga of {}: {err}", row.id)))?;
    let lines = serde_json::from_value(row.lines)
        .map_err(|err| PurchaseError::Internal(format!("unreadable lines of {}: {err}", row.id)))?;
    let user_id = UserId::from_uuid(row.user_id)
        .map_err(|err| PurchaseError::Internal(format!("bad user id on {}: {err}", row.id)))?;
    Ok(StoredPurchase {
        id: row.id,
        user_id,
        idempotency_key: row.idempotency_key,
        buyer_ref: row.buyer_ref,
        saga,
        deadline: row.deadline,
        resolution: row.resolution.zip(row.resolution_note),
        lines,
        steps: row.steps,
        created_at: row.created_at,
        updated_at: row.updated_at,
        finished_at: row.finished_at,
    })
}

/// The step log of purchase `id`, in order.
pub async fn step_log(pool: &Pg, id: Uuid) -> Result<Vec<Event>, PurchaseError> {
    let events: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT event FROM purchase_steps WHERE purchase_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(pool)
            .await?;
    events
        .into_iter()
        .map(|event| {
            serde_json::from_value(event)
                .map_err(|err| PurchaseError::Internal(format!("unreadable step of {id}: {err}")))
        })
        .collect()
}

/// Appends `events` to the step log at `seq` and stores the saga they lead to, in one statement of
/// the caller's transaction: the driver's fenced unit of work (whose commit checks the job's
/// fence, so a worker whose lease was taken over appends nothing), or an operator's transaction
/// holding the purchase row.
pub async fn append(
    conn: &mut PgConnection,
    id: Uuid,
    seq: i32,
    events: &[Event],
    saga: &Saga,
) -> Result<(), PurchaseError> {
    let encoded: Vec<serde_json::Value> = events
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()
        .map_err(|err| PurchaseError::Internal(err.to_string()))?;
    let seqs: Vec<i32> = (seq..).take(events.len()).collect();
    let failure_reason = match &saga.phase {
        Phase::Failed { reason } | Phase::RequiresAttention { reason, .. } => Some(reason.as_str()),
        _ => None,
    };
    let saga_json =
        serde_json::to_value(saga).map_err(|err| PurchaseError::Internal(err.to_string()))?;
    let appended: i64 = sqlx::query_scalar(
        "WITH steps AS ( \
             INSERT INTO purchase_steps (purchase_id, seq, event, fence) \
             SELECT $1, s.seq, s.event, 0 FROM UNNEST($2::int[], $3::jsonb[]) AS s(seq, event)), \
         saga AS ( \
             UPDATE purchases SET saga = $4, state = $5, failure_reason = $6, updated_at = now(), \
                 finished_at = CASE WHEN $7 THEN coalesce(finished_at, now()) ELSE NULL END \
             WHERE id = $1 RETURNING 1) \
         SELECT count(*) FROM saga",
    )
    .bind(id)
    .bind(&seqs)
    .bind(&encoded)
    .bind(&saga_json)
    .bind(saga.phase.state().as_str())
    .bind(failure_reason)
    .bind(saga.phase.is_terminal())
    .fetch_one(&mut *conn)
    .await?;
    if appended == 1 {
        Ok(())
    } else {
        Err(PurchaseError::NotFound)
    }
}

/// Takes the CardTrader locks of every product purchase `id`'s lines name, in the caller's
/// transaction, and returns those product ids; `None` when another purchase holds one of them (the
/// caller must then roll back, so nothing is taken). Locks
/// this purchase already holds (from before a crash) count as taken. The lines are read under a
/// share lock, so a give-back re-pointing them to a re-created product waits until this commits.
pub(super) async fn lock_products(
    conn: &mut PgConnection,
    user_id: UserId,
    id: Uuid,
) -> Result<Option<Vec<i64>>, PurchaseError> {
    let mut ids: Vec<i64> = sqlx::query_scalar(
        "SELECT coalesce(recreated_product_id, product_id) FROM purchase_lines \
         WHERE purchase_id = $1 FOR SHARE",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    ids.sort_unstable();
    ids.dedup();
    let inserted = insert_locks(&mut *conn, user_id, &ids, id).await?;
    let held = if inserted as usize == ids.len() {
        ids.len()
    } else {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM purchase_product_locks \
             WHERE user_id = $1 AND product_id = ANY($2) AND purchase_id = $3",
        )
        .bind(user_id.as_uuid())
        .bind(&ids)
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
        usize::try_from(held).unwrap_or(0)
    };
    // Short of one: the caller rolls back, which undoes the locks this call inserted.
    Ok((held == ids.len()).then_some(ids))
}

/// Inserts the locks of `product_ids` (sorted) for purchase `id`, skipping those already held by
/// anyone; returns how many it inserted. In id order, so two purchases wanting overlapping products
/// never wait on each other in a cycle.
async fn insert_locks(
    conn: &mut PgConnection,
    user_id: UserId,
    product_ids: &[i64],
    id: Uuid,
) -> Result<u64, PurchaseError> {
    Ok(sqlx::query(
        "INSERT INTO purchase_product_locks (user_id, product_id, purchase_id) \
         SELECT $1, p, $3 FROM UNNEST($2::bigint[]) AS p ORDER BY p \
         ON CONFLICT ON CONSTRAINT purchase_product_locks_pkey DO NOTHING",
    )
    .bind(user_id.as_uuid())
    .bind(product_ids)
    .bind(id)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Drops every CardTrader lock purchase `id` holds; part of the step that ends it.
pub(super) async fn unlock_products(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<(), PurchaseError> {
    sqlx::query("DELETE FROM purchase_product_locks WHERE purchase_id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores what was learnt about a line on CardTrader.
pub(super) async fn save_memo(
    conn: &mut PgConnection,
    id: Uuid,
    line: usize,
    memo: &LineMemo,
) -> Result<(), PurchaseError> {
    let memo =
        serde_json::to_value(memo).map_err(|err| PurchaseError::Internal(err.to_string()))?;
    sqlx::query("UPDATE purchase_lines SET snapshot = $3 WHERE purchase_id = $1 AND line = $2")
        .bind(id)
        .bind(line as i32)
        .bind(&memo)
        .execute(conn)
        .await?;
    Ok(())
}

/// A give-back re-created line `line`'s product as `new_id`: the local row, and the lines of other
/// unfinished purchases of the old product (which cannot have touched it on CardTrader: this
/// purchase holds its lock), now point to the new product. When the seller already has a local row
/// for `new_id` (CardTrader merged the create into an identical product) nothing is re-pointed and
/// the next sync reconciles the two.
pub(super) async fn repoint(
    conn: &mut PgConnection,
    user_id: UserId,
    id: Uuid,
    line: usize,
    old_id: i64,
    new_id: i64,
) -> Result<(), PurchaseError> {
    let moved = sqlx::query(
        "UPDATE inventory_items SET product_id = $3, updated_at = now() \
         WHERE user_id = $1 AND product_id = $2 \
           AND NOT EXISTS (SELECT 1 FROM inventory_items WHERE user_id = $1 AND product_id = $3)",
    )
    .bind(user_id.as_uuid())
    .bind(old_id)
    .bind(new_id)
    .execute(&mut *conn)
    .await?;
    if moved.rows_affected() == 0 {
        return Ok(());
    }
    sqlx::query(
        "UPDATE purchase_lines SET recreated_product_id = $4 WHERE purchase_id = $1 AND line = $2 AND product_id = $3",
    )
    .bind(id)
    .bind(line as i32)
    .bind(old_id)
    .bind(new_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE purchase_lines l SET product_id = $3 FROM purchases p \
         WHERE l.purchase_id = p.id AND p.user_id = $1 AND p.id <> $4 AND l.product_id = $2 \
           AND l.recreated_product_id IS NULL AND p.state IN ('taking', 'compensating')",
    )
    .bind(user_id.as_uuid())
    .bind(old_id)
    .bind(new_id)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The sale stands locally: each line's item loses its quantity and its reservation.
pub(super) async fn commit_sale(
    conn: &mut PgConnection,
    user_id: UserId,
    lines: &[StoredLine],
) -> Result<(), PurchaseError> {
    let (ids, amounts) = amounts_by_item(lines);
    sqlx::query(
        "UPDATE inventory_items i SET quantity = i.quantity - w.amount, \
             reserved_quantity = i.reserved_quantity - w.amount, updated_at = now() \
         FROM (SELECT * FROM UNNEST($2::bigint[], $3::int[]) AS w(product_id, amount) ORDER BY product_id) w \
         WHERE i.user_id = $1 AND i.product_id = w.product_id",
    )
    .bind(user_id.as_uuid())
    .bind(&ids)
    .bind(&amounts)
    .execute(conn)
    .await?;
    Ok(())
}

/// The purchase is undone locally: reservations released, and an item CardTrader was seen to have
/// less of than the shop thought is lowered to CardTrader's quantity, when no other purchase holds
/// a reservation on it (else the next sync corrects it).
pub(super) async fn release(
    conn: &mut PgConnection,
    user_id: UserId,
    lines: &[StoredLine],
    corrections: &[(i64, i64)],
) -> Result<(), PurchaseError> {
    let (ids, amounts) = amounts_by_item(lines);
    sqlx::query(
        "UPDATE inventory_items i SET reserved_quantity = i.reserved_quantity - w.amount, updated_at = now() \
         FROM (SELECT * FROM UNNEST($2::bigint[], $3::int[]) AS w(product_id, amount) ORDER BY product_id) w \
         WHERE i.user_id = $1 AND i.product_id = w.product_id",
    )
    .bind(user_id.as_uuid())
    .bind(&ids)
    .bind(&amounts)
    .execute(&mut *conn)
    .await?;
    if !corrections.is_empty() {
        let (ids, seen): (Vec<i64>, Vec<i64>) = corrections.iter().copied().unzip();
        sqlx::query(
            "UPDATE inventory_items i SET quantity = LEAST(i.quantity, c.seen::int), updated_at = now() \
             FROM UNNEST($2::bigint[], $3::bigint[]) AS c(product_id, seen) \
             WHERE i.user_id = $1 AND i.product_id = c.product_id AND i.reserved_quantity = 0 \
               AND i.quantity > c.seen",
        )
        .bind(user_id.as_uuid())
        .bind(&ids)
        .bind(&seen)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Per local item, the quantity of the lines, in item id order.
fn amounts_by_item(lines: &[StoredLine]) -> (Vec<i64>, Vec<i32>) {
    let mut amounts: BTreeMap<i64, i32> = BTreeMap::new();
    for line in lines {
        *amounts.entry(line.local_product_id()).or_default() += line.quantity;
    }
    amounts.into_iter().unzip()
}

/// Holds purchase `id` for an operator's action: its row locked, its state returned.
pub(super) async fn lock_for_operator(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<PurchaseState>, PurchaseError> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM purchases WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    state
        .map(|raw| {
            PurchaseState::parse(&raw)
                .ok_or_else(|| PurchaseError::Internal(format!("unknown purchase state {raw}")))
        })
        .transpose()
}

/// Records an operator's resolution of purchase `id`.
pub(super) async fn record_resolution(
    conn: &mut PgConnection,
    id: Uuid,
    resolution: &str,
    note: &str,
) -> Result<(), PurchaseError> {
    sqlx::query("UPDATE purchases SET resolution = $2, resolution_note = $3 WHERE id = $1")
        .bind(id)
        .bind(resolution)
        .bind(note)
        .execute(conn)
        .await?;
    Ok(())
}

/// Purchases waiting for a person, for the gauge.
pub(super) async fn attention_count(
    executor: impl sqlx::PgExecutor<'_>,
) -> Result<i64, PurchaseError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM purchases WHERE state = 'requires_attention'")
            .fetch_one(executor)
            .await?,
    )
}

/// What one retention batch removed from ended purchases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Purchases whose log was dropped.
    pub purchases: u64,
    /// Step log entries deleted.
    pub steps: u64,
}

/// Drops the step log and the lines' CardTrader snapshots of up to `batch` purchases that ended
/// completed or failed before `cutoff`, oldest first, in one statement; the purchase row and its
/// lines stay, marked pruned. Those are what an idempotent replay and GetPurchase still need; the
/// log and snapshots only serve a saga that can still move, which an ended one cannot. A purchase
/// in requires_attention keeps everything (an operator may retry it). Rows another transaction
/// holds are skipped.
pub async fn prune_ended_before(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<Pruned, PurchaseError> {
    let (purchases, steps): (i64, i64) = sqlx::query_as(
        "WITH ended AS ( \
             SELECT id FROM purchases \
             WHERE state IN ('completed', 'failed') AND pruned_at IS NULL AND finished_at < $1 \
             ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
         steps AS ( \
             DELETE FROM purchase_steps WHERE purchase_id IN (SELECT id FROM ended) RETURNING 1), \
         snapshots AS ( \
             UPDATE purchase_lines SET snapshot = NULL \
             WHERE purchase_id IN (SELECT id FROM ended) AND snapshot IS NOT NULL), \
         marked AS ( \
             UPDATE purchases SET pruned_at = now() WHERE id IN (SELECT id FROM ended) RETURNING 1) \
         SELECT (SELECT count(*) FROM marked), (SELECT count(*) FROM steps)",
    )
    .bind(cutoff)
    .bind(batch)
    .fetch_one(conn)
    .await?;
    Ok(Pruned {
        purchases: u64::try_from(purchases).unwrap_or(0),
        steps: u64::try_from(steps).unwrap_or(0),
    })
}
