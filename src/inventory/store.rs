//! SQL of the inventory: listing and reading items with their push status, edits that commit with
//! their outbox row and push job, creates, and the storefront's offers. Item rows are locked by
//! primary key one at a time here, which keeps to the product id lock order every writer shares.

use crate::storage::Pg;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{
    CreateStatus, InventoryError, Item, ItemEdit, ListFilter, NewItem, Offer, OfferKey, OfferQuery,
    PushStatus,
};
use crate::{
    domain::UserId,
    jobs::{self, JobKind, NewJob, QueueLimit},
};

#[derive(sqlx::FromRow)]
struct ItemRow {
    user_id: Uuid,
    product_id: i64,
    blueprint_id: i64,
    expansion_id: Option<i64>,
    print_id: Option<i64>,
    name: String,
    quantity: i32,
    reserved_quantity: i32,
    price_cents: i64,
    currency: String,
    properties: Value,
    description: Option<String>,
    user_data_field: Option<String>,
    graded: Option<bool>,
    updated_at: DateTime<Utc>,
    push_state: Option<String>,
    push_error: Option<String>,
}

/// The columns of [`ItemRow`]: the item and its outstanding push, if any.
macro_rules! item_columns {
    () => {
        "i.user_id, i.product_id, i.blueprint_id, i.expansion_id, i.print_id, i.name, i.quantity, \
         i.reserved_quantity, i.price_cents, i.currency, i.properties, i.description, \
         i.user_data_field, i.graded, i.updated_at, p.state AS push_state, p.last_error AS push_error \
         FROM inventory_items i \
         LEFT JOIN inventory_pushes p ON p.user_id = i.user_id AND p.product_id = i.product_id \
              AND p.state <> 'done'"
    };
}

fn item(row: ItemRow) -> Result<Item, InventoryError> {
    let user_id = UserId::from_uuid(row.user_id)
        .map_err(|err| InventoryError::Internal(format!("bad user id: {err}")))?;
    Ok(Item {
        user_id,
        product_id: row.product_id,
        blueprint_id: row.blueprint_id,
        expansion_id: row.expansion_id,
        print_id: row.print_id,
        name: row.name,
        quantity: row.quantity,
        reserved_quantity: row.reserved_quantity,
        price_cents: row.price_cents,
        currency: row.currency,
        properties: object(row.properties),
        description: row.description,
        user_data_field: row.user_data_field,
        graded: row.graded,
        updated_at: row.updated_at,
        push: push_status(row.push_state.as_deref(), row.push_error),
    })
}

fn push_status(state: Option<&str>, error: Option<String>) -> PushStatus {
    match state {
        Some("pending") => PushStatus::Pending,
        Some("failed") => PushStatus::Failed(error.unwrap_or_default()),
        _ => PushStatus::Synced,
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The seller's item `product_id`.
pub(super) async fn get(
    pool: &Pg,
    user_id: UserId,
    product_id: i64,
) -> Result<Item, InventoryError> {
    let sql = concat!(
        "SELECT ",
        item_columns!(),
        " WHERE i.user_id = $1 AND i.product_id = $2"
    );
    let row: Option<ItemRow> = sqlx::query_as(sql)
        .bind(user_id.as_uuid())
        .bind(product_id)
        .fetch_optional(pool)
        .await?;
    row.map(item).transpose()?.ok_or(InventoryError::NotFound)
}

/// A page of the seller's items matching `filter`, in product id order after `after`. Keyset
/// paging on the primary key: rows a sync inserts or deletes meanwhile never shift a page.
pub(super) async fn list(
    pool: &Pg,
    user_id: UserId,
    filter: &ListFilter,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<Item>, InventoryError> {
    let mut page = pool.begin_with(PAGE_BEGIN).await?;
    let rows: Vec<ItemRow> = page_query(user_id.as_uuid(), filter, after, limit)
        .build_query_as()
        .fetch_all(&mut *page)
        .await?;
    page.commit().await?;
    rows.into_iter().map(item).collect()
}

/// How a page's transaction starts. Sorting is what a page must never need (its index gives the
/// order), so it is priced out: with statistics that predate a bulk load, PostgreSQL otherwise
/// guesses the seller has a few dozen rows and prefers collecting all of them and sorting (130 ms a
/// page at 100,000 rows instead of 0.5 ms). `SET LOCAL` ends with the transaction, also behind a
/// transaction pooler.
pub const PAGE_BEGIN: &str = "BEGIN READ ONLY; SET LOCAL enable_sort = off";

/// The statement of one page: only the conditions `filter` sets, so each filter shape is a
/// statement of its own. Its plan then walks an index in product id order and stops at the page's
/// end, whatever PostgreSQL's statistics say (right after a bulk load they say the table is
/// empty), and a generic plan cached for it is the same plan: one statement with `$n IS NULL OR`
/// for every filter was planned as a scan of all the seller's rows and a sort.
fn page_query(
    user_id: Uuid,
    filter: &ListFilter,
    after: Option<i64>,
    limit: i64,
) -> QueryBuilder<Postgres> {
    let mut query = QueryBuilder::new(concat!("SELECT ", item_columns!(), " WHERE i.user_id = "));
    query.push_bind(user_id);
    if let Some(after) = after {
        query.push(" AND i.product_id > ").push_bind(after);
    }
    if let Some(blueprint_id) = filter.blueprint_id {
        query.push(" AND i.blueprint_id = ").push_bind(blueprint_id);
    }
    if let Some(expansion_id) = filter.expansion_id {
        query.push(" AND i.expansion_id = ").push_bind(expansion_id);
    }
    if let Some(prefix) = &filter.name_prefix {
        let pattern = format!("{}%", escape_like(&prefix.to_lowercase()));
        query
            .push(" AND lower(i.name) LIKE ")
            .push_bind(pattern)
            .push(" ESCAPE '\\'");
    }
    match filter.mapped {
        Some(true) => query.push(" AND i.print_id IS NOT NULL"),
        Some(false) => query.push(" AND i.print_id IS NULL"),
        None => &mut query,
    };
    query.push(" ORDER BY i.product_id LIMIT ").push_bind(limit);
    query
}

/// The SQL of a ListInventory page for `filter` (`after`: a later page), for tests that check its
/// plan (in a transaction begun by [`PAGE_BEGIN`]). Its parameters are the seller, then `after`, then the filter's values in field order, then
/// the page size.
pub fn page_statement(filter: &ListFilter, after: bool) -> String {
    let after = after.then_some(0);
    page_query(Uuid::nil(), filter, after, 1)
        .into_sql()
        .as_str()
        .to_owned()
}

/// `text` with LIKE's wildcards escaped, so a name prefix matches literally.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(ch);
    }
    escaped
}

/// The push job of a seller: one queued at a time, later edits join it.
pub(super) fn push_job(user_id: UserId) -> NewJob {
    NewJob::new(user_id, JobKind::InventoryPush)
}

/// Applies `edit` to the item locally and records its push, in one transaction; returns the item.
/// The row is stamped with the time of the write, not of the transaction's start (which may be
/// before a wait for the row's lock): a sync whose export was requested after that start may still
/// predate the edit, and compares against this stamp to leave the row alone.
pub(super) async fn update(
    pool: &Pg,
    user_id: UserId,
    product_id: i64,
    edit: &ItemEdit,
) -> Result<Item, InventoryError> {
    let mut tx = pool.begin().await?;
    let (_, reserved) = lock_item(&mut tx, user_id, product_id).await?;
    if let Some(requested) = edit.quantity
        && requested < reserved
    {
        return Err(InventoryError::BelowReserved {
            reserved,
            requested,
        });
    }
    sqlx::query(
        "UPDATE inventory_items SET \
             price_cents = coalesce($3, price_cents), \
             quantity = coalesce($4, quantity), \
             description = CASE WHEN $5::text IS NULL THEN description ELSE $5 END, \
             properties = properties || coalesce($6, '{}'::jsonb), \
             user_data_field = CASE WHEN $7::text IS NULL THEN user_data_field ELSE $7 END, \
             updated_at = clock_timestamp() \
         WHERE user_id = $1 AND product_id = $2",
    )
    .bind(user_id.as_uuid())
    .bind(product_id)
    .bind(edit.price_cents)
    .bind(edit.quantity)
    .bind(&edit.description)
    .bind(edit.properties.clone().map(Value::Object))
    .bind(&edit.user_data_field)
    .execute(&mut *tx)
    .await?;
    // The outbox keeps which fields to send; their values are read from the item when pushed, so
    // a sale or a webhook applied meanwhile is not overwritten with the value of edit time.
    let mut fields = Map::new();
    for (name, given) in [
        ("price_cents", edit.price_cents.is_some()),
        ("quantity", edit.quantity.is_some()),
        ("description", edit.description.is_some()),
        ("properties", edit.properties.is_some()),
        ("user_data_field", edit.user_data_field.is_some()),
    ] {
        if given {
            fields.insert(name.to_owned(), Value::Bool(true));
        }
    }
    record_push(&mut tx, user_id, product_id, "update", fields).await?;
    tx.commit().await?;
    get(pool, user_id, product_id).await
}

/// Deletes the item locally and records its deletion on CardTrader, in one transaction.
pub(super) async fn delete(
    pool: &Pg,
    user_id: UserId,
    product_id: i64,
) -> Result<(), InventoryError> {
    let mut tx = pool.begin().await?;
    let (_, reserved) = lock_item(&mut tx, user_id, product_id).await?;
    if reserved > 0 {
        return Err(InventoryError::Reserved { reserved });
    }
    sqlx::query("DELETE FROM inventory_items WHERE user_id = $1 AND product_id = $2")
        .bind(user_id.as_uuid())
        .bind(product_id)
        .execute(&mut *tx)
        .await?;
    record_push(&mut tx, user_id, product_id, "delete", Map::new()).await?;
    tx.commit().await?;
    Ok(())
}

/// Locks the item row; returns its quantity and reservation.
async fn lock_item(
    conn: &mut PgConnection,
    user_id: UserId,
    product_id: i64,
) -> Result<(i32, i32), InventoryError> {
    let row: Option<(i32, i32)> = sqlx::query_as(
        "SELECT quantity, reserved_quantity FROM inventory_items \
         WHERE user_id = $1 AND product_id = $2 FOR UPDATE",
    )
    .bind(user_id.as_uuid())
    .bind(product_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.ok_or(InventoryError::NotFound)
}

/// Records that the item's `fields` (or its deletion) must reach CardTrader: merged into the
/// item's outstanding push if there is one (the newer edit supersedes it, and its version moves on
/// so a push already in flight does not clear it), and the seller's push job queued.
async fn record_push(
    conn: &mut PgConnection,
    user_id: UserId,
    product_id: i64,
    op: &str,
    fields: Map<String, Value>,
) -> Result<(), InventoryError> {
    sqlx::query(
        "INSERT INTO inventory_pushes (id, user_id, product_id, op, fields) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (user_id, product_id) WHERE product_id IS NOT NULL AND state <> 'done' \
         DO UPDATE SET op = EXCLUDED.op, \
             fields = CASE WHEN EXCLUDED.op = 'delete' THEN '{}'::jsonb \
                           ELSE inventory_pushes.fields || EXCLUDED.fields END, \
             version = inventory_pushes.version + 1, state = 'pending', last_error = NULL, \
             rounds = 0, retry_at = NULL, updated_at = now()",
    )
    .bind(Uuid::new_v4())
    .bind(user_id.as_uuid())
    .bind(product_id)
    .bind(op)
    .bind(Value::Object(fields))
    .execute(&mut *conn)
    .await?;
    jobs::store::enqueue_in(conn, &push_job(user_id), QueueLimit::Unbounded)
        .await
        .map_err(|err| InventoryError::Internal(err.to_string()))?;
    Ok(())
}

/// Records a create for the push job; returns its tag.
pub(super) async fn create(pool: &Pg, new: &NewItem) -> Result<String, InventoryError> {
    let tag = format!("brx-create:{}", Uuid::new_v4());
    let fields = json!({
        "blueprint_id": new.blueprint_id,
        "price_cents": new.price_cents,
        "quantity": new.quantity,
        "description": new.description,
        "properties": new.properties,
        "graded": new.graded,
    });
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO inventory_pushes (id, user_id, op, fields, create_tag) \
         VALUES ($1, $2, 'create', $3, $4)",
    )
    .bind(Uuid::new_v4())
    .bind(new.user_id.as_uuid())
    .bind(fields)
    .bind(&tag)
    .execute(&mut *tx)
    .await?;
    jobs::store::enqueue_in(&mut tx, &push_job(new.user_id), QueueLimit::Unbounded)
        .await
        .map_err(|err| InventoryError::Internal(err.to_string()))?;
    tx.commit().await?;
    Ok(tag)
}

/// Where the seller's create `tag` stands.
pub(super) async fn create_status(
    pool: &Pg,
    user_id: UserId,
    tag: &str,
) -> Result<CreateStatus, InventoryError> {
    let row: Option<(String, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT state, last_error, product_id FROM inventory_pushes \
         WHERE user_id = $1 AND create_tag = $2",
    )
    .bind(user_id.as_uuid())
    .bind(tag)
    .fetch_optional(pool)
    .await?;
    let (state, error, product_id) = row.ok_or(InventoryError::NotFound)?;
    let push = match state.as_str() {
        "done" => PushStatus::Synced,
        other => push_status(Some(other), error),
    };
    let item = match product_id.filter(|_| push == PushStatus::Synced) {
        Some(product_id) => match get(pool, user_id, product_id).await {
            Ok(item) => Some(item),
            Err(InventoryError::NotFound) => None,
            Err(other) => return Err(other),
        },
        None => None,
    };
    Ok(CreateStatus {
        create_tag: tag.to_owned(),
        push,
        item,
    })
}

/// The offers statement for one key condition. `quantity > reserved_quantity` repeats the partial
/// indexes' predicate so the planner can use them.
macro_rules! offers_sql {
    ($key:literal) => {
        concat!(
            "SELECT i.user_id, i.product_id, i.blueprint_id, i.print_id, i.name, \
                    i.quantity - i.reserved_quantity, i.price_cents, i.currency, i.properties \
             FROM inventory_items i JOIN accounts a ON a.user_id = i.user_id \
             WHERE ",
            $key,
            " AND i.quantity > i.reserved_quantity AND a.status = 'connected' \
               AND i.quantity - i.reserved_quantity >= $2 \
               AND ($3::bigint IS NULL OR i.price_cents <= $3) \
               AND ($4::bigint IS NULL OR (i.price_cents, i.user_id, i.product_id) > ($4, $5, $6)) \
             ORDER BY i.price_cents, i.user_id, i.product_id LIMIT $7"
        )
    };
}

/// A page of every connected seller's available stock of a print or blueprint, cheapest first,
/// from the partial offer indexes (only rows with stock left over the reservations are in them).
pub(super) async fn offers(pool: &Pg, query: &OfferQuery) -> Result<Vec<Offer>, InventoryError> {
    // Two statements rather than one with `print_id = $1 OR blueprint_id = $1`, so each is planned
    // on its own index.
    let (column, key) = match query.key {
        OfferKey::Print(id) => ("print", id),
        OfferKey::Blueprint(id) => ("blueprint", id),
    };
    let sql = if column == "print" {
        offers_sql!("i.print_id = $1")
    } else {
        offers_sql!("i.blueprint_id = $1")
    };
    let (after_price, after_user, after_product) = match query.after {
        Some((price, user, product)) => (Some(price), Some(user), Some(product)),
        None => (None, None, None),
    };
    type OfferRow = (Uuid, i64, i64, Option<i64>, String, i32, i64, String, Value);
    let rows: Vec<OfferRow> = sqlx::query_as(sql)
        .bind(key)
        .bind(query.min_available)
        .bind(query.max_price_cents)
        .bind(after_price)
        .bind(after_user)
        .bind(after_product)
        .bind(query.limit)
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(
            |(
                user,
                product_id,
                blueprint_id,
                print_id,
                name,
                available,
                price,
                currency,
                props,
            )| {
                Ok(Offer {
                    user_id: UserId::from_uuid(user)
                        .map_err(|err| InventoryError::Internal(format!("bad user id: {err}")))?,
                    product_id,
                    blueprint_id,
                    print_id,
                    name,
                    available,
                    price_cents: price,
                    currency,
                    properties: object(props),
                })
            },
        )
        .collect()
}
