//! The chunk upsert. Each row carries a fingerprint of its upstream content; one cheap query over
//! (product id, fingerprint) pairs, before any transaction, finds the rows that are new or changed
//! since the last sync wrote them, and only those go through the set-based `UNNEST` upsert, which
//! still rewrites a row only when its content differs and leaves the quantity of reserved rows to
//! the purchase saga.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::store::SyncRow;
use crate::domain::UserId;

/// Bumped whenever the fingerprinted fields change, so old fingerprints never match new ones.
const FINGERPRINT_VERSION: u8 = 1;

/// A stable fingerprint of everything the sync writes into a row: the first 8 bytes of SHA-256
/// over a canonical JSON encoding. Persisted, so it must not depend on the Rust version or process
/// (std's hashers promise neither).
pub fn fingerprint(row: &SyncRow) -> i64 {
    let content = (
        FINGERPRINT_VERSION,
        row.blueprint_id,
        row.expansion_id,
        &row.print,
        &row.name,
        row.quantity,
        row.price_cents,
        &row.currency,
        &row.properties,
        &row.description,
        &row.user_data_field,
        &row.tag,
        row.graded,
    );
    // The flag joins the content only when set, so rows fingerprinted before it existed still
    // match and are not all rewritten by the first sync after the upgrade.
    // Serializing integers, strings and a JSON value into a Vec cannot fail.
    let encoded = if row.print_unknown {
        serde_json::to_vec(&(content, "print_unknown")).unwrap_or_default()
    } else {
        serde_json::to_vec(&content).unwrap_or_default()
    };
    let digest = Sha256::digest(&encoded);
    let mut first = [0_u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The stale check: of the (product id, fingerprint) pairs `$2`, `$3`, the products of seller `$1`
/// whose stored fingerprint is missing or differs. Public for tests that check its plan.
///
/// A scalar subquery on the whole primary key, never pulled up into a join: one index probe per row
/// whatever the statistics say. As `NOT EXISTS` it became an anti-join planned on statistics: after
/// an ANALYZE that saw one seller, a new seller's chunks each hashed the whole table (write_chunk
/// fell from 0.63x to 0.17x of a staged upsert at 200,000 rows).
pub const STALE_ROWS: &str = "SELECT u.product_id \
     FROM UNNEST($2::bigint[], $3::bigint[]) AS u(product_id, sync_hash) \
     WHERE (SELECT i.sync_hash FROM inventory_items i \
            WHERE i.user_id = $1 AND i.product_id = u.product_id) IS DISTINCT FROM u.sync_hash";

/// Upserts `rows` (sorted by product id by the caller, the lock order that keeps concurrent chunks
/// from deadlocking) and returns how many rows were inserted or changed. `read_since` is when the
/// export these rows come from was requested: a row changed locally since then (a purchase, an
/// edit) is left as it is, since the export may predate the change.
///
/// The rows are the ones the sync found new or changed before the transaction ([`stale_rows`]), or
/// a first import's: they are not compared again here. One that became equal meanwhile is left as
/// it is by the upsert's own comparison and not counted.
pub async fn upsert_rows(
    conn: &mut PgConnection,
    user_id: UserId,
    rows: &[SyncRow],
    fingerprints: &[i64],
    read_since: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let product_ids: Vec<i64> = rows.iter().map(|row| row.product_id).collect();
    let pushing = crate::inventory::pending_pushes(conn, user_id, &product_ids).await?;
    // Lets a test commit an edit between this look at the outbox and the write below.
    crate::failpoint::pause("sync.chunk_after_push_check").await;
    if pushing.is_empty() {
        let rows: Vec<&SyncRow> = rows.iter().collect();
        return write_rows(conn, user_id, &rows, fingerprints, read_since).await;
    }
    // A product with a local edit still on its way to CardTrader is left out: the export predates
    // the edit, and writing it would undo the edit locally (or bring back an item deleted locally)
    // until the push lands.
    let (rows, fingerprints): (Vec<&SyncRow>, Vec<i64>) = rows
        .iter()
        .zip(fingerprints.iter().copied())
        .filter(|(row, _)| !pushing.contains(&row.product_id))
        .unzip();
    write_rows(conn, user_id, &rows, &fingerprints, read_since).await
}

/// The products of `rows` whose stored fingerprint is missing or differs from the row's: new rows,
/// rows changed upstream, and rows another writer touched since the last sync (its trigger cleared
/// the fingerprint). Asked outside any chunk transaction, it tells the sync which rows, and so which
/// chunks, need one at all.
pub async fn stale_rows(
    conn: &mut PgConnection,
    user_id: UserId,
    rows: &[SyncRow],
) -> Result<HashSet<i64>, sqlx::Error> {
    let product_ids: Vec<i64> = rows.iter().map(|row| row.product_id).collect();
    let fingerprints: Vec<i64> = rows.iter().map(fingerprint).collect();
    sqlx::query_scalar::<_, i64>(STALE_ROWS)
        .bind(user_id.as_uuid())
        .bind(&product_ids)
        .bind(&fingerprints)
        .fetch(&mut *conn)
        .try_collect()
        .await
}

/// One set-based upsert of `rows` with their fingerprints. A row is rewritten only when its content
/// or fingerprint differs. A reserved row (a saga owns its quantity until it ends) keeps its local
/// quantity, and loses its fingerprint so the next sync compares it in full.
///
/// A row changed since `read_since` is not written at all: an edit committed after the outbox was
/// looked at would otherwise get the export's older values written over it, and its push would
/// then send those (the push reads the item's values when it runs). The writer that changed the
/// row cleared its fingerprint (the `sync_hash` trigger), so the next sync compares it in full.
async fn write_rows(
    conn: &mut PgConnection,
    user_id: UserId,
    rows: &[&SyncRow],
    fingerprints: &[i64],
    read_since: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let column = |value: fn(&SyncRow) -> Option<&str>| -> Vec<Option<&str>> {
        rows.iter().map(|row| value(row)).collect()
    };
    let product_ids: Vec<i64> = rows.iter().map(|row| row.product_id).collect();
    let blueprint_ids: Vec<i64> = rows.iter().map(|row| row.blueprint_id).collect();
    let expansion_ids: Vec<Option<i64>> = rows.iter().map(|row| row.expansion_id).collect();
    let print_ids: Vec<Option<i64>> = rows
        .iter()
        .map(|row| row.print.as_ref().map(|print| print.0))
        .collect();
    let print_tables = column(|row| row.print.as_ref().map(|print| print.1.as_str()));
    let names: Vec<&str> = rows.iter().map(|row| row.name.as_str()).collect();
    let quantities: Vec<i32> = rows.iter().map(|row| row.quantity).collect();
    let prices: Vec<i64> = rows.iter().map(|row| row.price_cents).collect();
    let currencies: Vec<&str> = rows.iter().map(|row| row.currency.as_str()).collect();
    let properties: Vec<&serde_json::Value> = rows.iter().map(|row| &row.properties).collect();
    let descriptions = column(|row| row.description.as_deref());
    let user_fields = column(|row| row.user_data_field.as_deref());
    let tags = column(|row| row.tag.as_deref());
    let graded: Vec<Option<bool>> = rows.iter().map(|row| row.graded).collect();
    let print_unknown: Vec<bool> = rows.iter().map(|row| row.print_unknown).collect();
    let written = sqlx::query(
        "INSERT INTO inventory_items AS i (user_id, product_id, blueprint_id, expansion_id, print_id, print_table, \
             name, quantity, price_cents, currency, properties, description, user_data_field, tag, graded, sync_hash, \
             print_unknown) \
         SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], \
             $8::int[], $9::bigint[], $10::text[], $11::jsonb[], $12::text[], $13::text[], $14::text[], $15::bool[], \
             $16::bigint[], $18::bool[]) \
         ON CONFLICT ON CONSTRAINT inventory_items_pkey DO UPDATE SET \
             blueprint_id = EXCLUDED.blueprint_id, expansion_id = EXCLUDED.expansion_id, \
             print_id = EXCLUDED.print_id, print_table = EXCLUDED.print_table, \
             print_unknown = EXCLUDED.print_unknown, name = EXCLUDED.name, \
             quantity = CASE WHEN i.reserved_quantity > 0 THEN i.quantity ELSE EXCLUDED.quantity END, \
             price_cents = EXCLUDED.price_cents, currency = EXCLUDED.currency, properties = EXCLUDED.properties, \
             description = EXCLUDED.description, user_data_field = EXCLUDED.user_data_field, tag = EXCLUDED.tag, \
             graded = EXCLUDED.graded, \
             sync_hash = CASE WHEN i.reserved_quantity > 0 THEN NULL ELSE EXCLUDED.sync_hash END, \
             updated_at = now() \
         WHERE i.updated_at < $17 \
           AND (i.blueprint_id, i.expansion_id, i.print_id, i.print_table, i.print_unknown, i.name, \
                CASE WHEN i.reserved_quantity > 0 THEN 0 ELSE i.quantity END, i.price_cents, \
                i.currency, i.properties, i.description, i.user_data_field, i.tag, i.graded, i.sync_hash) \
           IS DISTINCT FROM (EXCLUDED.blueprint_id, EXCLUDED.expansion_id, EXCLUDED.print_id, EXCLUDED.print_table, \
                EXCLUDED.print_unknown, EXCLUDED.name, CASE WHEN i.reserved_quantity > 0 THEN 0 ELSE EXCLUDED.quantity END, \
                EXCLUDED.price_cents, EXCLUDED.currency, EXCLUDED.properties, EXCLUDED.description, \
                EXCLUDED.user_data_field, EXCLUDED.tag, EXCLUDED.graded, EXCLUDED.sync_hash)",
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
    .bind(fingerprints)
    .bind(read_since)
    .bind(&print_unknown)
    .execute(&mut *conn)
    .await?;
    Ok(written.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> SyncRow {
        SyncRow {
            product_id: 1,
            blueprint_id: 7,
            expansion_id: Some(3),
            print: Some((70, "cards_prints".into())),
            print_unknown: false,
            name: "Card".into(),
            quantity: 2,
            price_cents: 150,
            currency: "EUR".into(),
            properties: serde_json::json!({"condition": "Near Mint"}),
            description: None,
            user_data_field: None,
            tag: None,
            graded: Some(false),
        }
    }

    #[test]
    fn the_fingerprint_follows_every_written_field_but_not_the_product_id() {
        let base = fingerprint(&row());
        assert_eq!(fingerprint(&row()), base, "stable");
        let mut moved = row();
        moved.product_id = 2;
        assert_eq!(fingerprint(&moved), base);
        let changes: [fn(&mut SyncRow); 8] = [
            |r| r.quantity += 1,
            |r| r.price_cents += 1,
            |r| r.print = None,
            |r| {
                r.print = None;
                r.print_unknown = true;
            },
            |r| r.expansion_id = None,
            |r| r.properties = serde_json::json!({"condition": "Played"}),
            |r| r.tag = Some("x".into()),
            |r| r.graded = None,
        ];
        for change in changes {
            let mut changed = row();
            change(&mut changed);
            assert_ne!(fingerprint(&changed), base, "{changed:?}");
        }
    }
}
