//! Items carried over from another service (the Python one `import-legacy` moves shops from): a
//! seller's rows written in one `COPY` inside the caller's transaction. They bring no name and no
//! currency (the old service kept neither) and no sync fingerprint, so the seller's first full sync
//! compares every one of them in full, fills those in, and sweeps the ones CardTrader no longer has.

use std::sync::Arc;

use sqlx::PgConnection;

use crate::{domain::UserId, storage::CopyCsv};

/// Rows sent to PostgreSQL per `COPY` message, so progress moves while a large seller is written.
const ROWS_PER_SEND: usize = 2_000;

/// One item as another service kept it, keyed by its CardTrader product id.
#[derive(Debug, Clone, PartialEq)]
pub struct CarriedItem {
    /// CardTrader product id.
    pub product_id: i64,
    /// CardTrader blueprint.
    pub blueprint_id: i64,
    /// CardTrader expansion, where the shop's expansion index knows it.
    pub expansion_id: Option<i64>,
    /// The shop's print (id, table), when the catalogue maps the blueprint.
    pub print: Option<(i64, Arc<str>)>,
    /// The catalogue could not be asked: a remap is owed, as after a sync during an outage.
    pub print_unknown: bool,
    /// Quantity listed (never negative: the importer skips those).
    pub quantity: i32,
    /// Price in cents of the seller's CardTrader currency.
    pub price_cents: i64,
    /// CardTrader's properties, as exported.
    pub properties: serde_json::Value,
    /// Free text.
    pub description: Option<String>,
    /// The seller's free field.
    pub user_data_field: Option<String>,
    /// Graded.
    pub graded: Option<bool>,
}

/// Writes `items` of `user_id` in the caller's transaction, calling `on_sent` with each batch's row
/// count as it goes; returns the rows written. The seller must have no items yet (a product already
/// stored fails the whole COPY on the primary key, and the caller's transaction with it).
pub async fn copy_carried_in(
    conn: &mut PgConnection,
    user_id: UserId,
    items: &[CarriedItem],
    mut on_sent: impl FnMut(usize),
) -> Result<u64, sqlx::Error> {
    if items.is_empty() {
        return Ok(0);
    }
    // `name` and `currency` are written as empty strings until the first sync brings CardTrader's.
    let mut copy = conn
        .copy_in_raw(
            "COPY inventory_items (user_id, product_id, blueprint_id, expansion_id, print_id, \
                 print_table, print_unknown, name, quantity, price_cents, currency, properties, \
                 description, user_data_field, graded) \
             FROM STDIN (FORMAT csv)",
        )
        .await?;
    let user = user_id.to_string();
    let mut rows = CopyCsv::with_capacity(ROWS_PER_SEND * 256);
    for batch in items.chunks(ROWS_PER_SEND) {
        rows.clear();
        for item in batch {
            let (print_id, print_table) = match &item.print {
                Some((id, table)) => (Some(*id), Some(&**table)),
                None => (None, None),
            };
            rows.number(&user)
                .number(item.product_id)
                .number(item.blueprint_id)
                .number_or_null(item.expansion_id)
                .number_or_null(print_id)
                .text_or_null(print_table)
                .bool_or_null(Some(item.print_unknown))
                .text("")
                .number(item.quantity)
                .number(item.price_cents)
                .text("")
                .text(&item.properties.to_string())
                .text_or_null(item.description.as_deref())
                .text_or_null(item.user_data_field.as_deref())
                .bool_or_null(item.graded);
            rows.end_row();
        }
        if let Err(err) = copy.send(rows.as_bytes()).await {
            // Leave the connection usable for the caller's rollback.
            let _ = copy.abort("sending the carried rows failed").await;
            return Err(err);
        }
        on_sent(batch.len());
    }
    copy.finish().await
}
