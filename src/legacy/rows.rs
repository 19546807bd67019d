//! Which of a seller's old inventory rows can be carried over: ours are keyed by (seller,
//! CardTrader product id), so a row must name one product, alone, with a quantity and price our
//! table accepts. Pure; the rows that cannot are listed with why, never guessed at.

use std::collections::HashMap;

use serde::Serialize;

use super::source::LegacyItem;

/// Why an old row was not carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// `external_stock_id` is NULL or empty: the row was never pushed to CardTrader.
    NoProductId,
    /// `external_stock_id` is not a positive whole number.
    ProductIdNotANumber,
    /// Several rows of the seller name the same product: which one is right cannot be told.
    DuplicateProductId,
    /// A negative quantity.
    NegativeQuantity,
    /// A negative price.
    NegativePrice,
}

impl SkipReason {
    /// Every reason, in report order.
    pub const ALL: [SkipReason; 5] = [
        SkipReason::NoProductId,
        SkipReason::ProductIdNotANumber,
        SkipReason::DuplicateProductId,
        SkipReason::NegativeQuantity,
        SkipReason::NegativePrice,
    ];

    /// The reason as the report names it.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NoProductId => "no_product_id",
            SkipReason::ProductIdNotANumber => "product_id_not_a_number",
            SkipReason::DuplicateProductId => "duplicate_product_id",
            SkipReason::NegativeQuantity => "negative_quantity",
            SkipReason::NegativePrice => "negative_price",
        }
    }
}

/// An old row left behind, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedRow {
    /// Its id in the old table (the shop may hold references to it).
    pub legacy_id: i64,
    /// Its `external_stock_id`, as stored.
    pub external_stock_id: Option<String>,
    /// Why.
    pub reason: SkipReason,
}

/// A row that can be carried over, with its product id.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct KeyedRow {
    /// The CardTrader product id.
    pub product_id: i64,
    /// The old row.
    pub item: LegacyItem,
}

/// A seller's rows, sorted out.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct SortedRows {
    /// Carried over, in product id order.
    pub keyed: Vec<KeyedRow>,
    /// Left behind, in old id order.
    pub skipped: Vec<SkippedRow>,
}

/// Sorts a seller's rows. Every copy of a duplicated product is skipped, whatever its other
/// values: the first sync brings CardTrader's own row for it anyway.
pub(super) fn sort_rows(items: Vec<LegacyItem>) -> SortedRows {
    let mut sorted = SortedRows::default();
    let mut by_product: HashMap<i64, Vec<LegacyItem>> = HashMap::with_capacity(items.len());
    for item in items {
        match product_id(item.external_stock_id.as_deref()) {
            Ok(product_id) => by_product.entry(product_id).or_default().push(item),
            Err(reason) => sorted.skipped.push(skipped(&item, reason)),
        }
    }
    for (product_id, mut copies) in by_product {
        if copies.len() > 1 {
            let reason = SkipReason::DuplicateProductId;
            sorted
                .skipped
                .extend(copies.iter().map(|item| skipped(item, reason)));
            continue;
        }
        let Some(item) = copies.pop() else { continue };
        if item.quantity < 0 {
            sorted
                .skipped
                .push(skipped(&item, SkipReason::NegativeQuantity));
        } else if item.price_cents < 0 {
            sorted
                .skipped
                .push(skipped(&item, SkipReason::NegativePrice));
        } else {
            sorted.keyed.push(KeyedRow { product_id, item });
        }
    }
    sorted.keyed.sort_by_key(|row| row.product_id);
    sorted.skipped.sort_by_key(|row| row.legacy_id);
    sorted
}

/// The CardTrader product id an `external_stock_id` names.
fn product_id(external: Option<&str>) -> Result<i64, SkipReason> {
    let text = external.map(str::trim).unwrap_or_default();
    if text.is_empty() {
        return Err(SkipReason::NoProductId);
    }
    match text.parse::<i64>() {
        Ok(id) if id > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(id),
        _ => Err(SkipReason::ProductIdNotANumber),
    }
}

fn skipped(item: &LegacyItem, reason: SkipReason) -> SkippedRow {
    SkippedRow {
        legacy_id: item.id,
        external_stock_id: item.external_stock_id.clone(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, external: Option<&str>, quantity: i32, price_cents: i32) -> LegacyItem {
        LegacyItem {
            id,
            blueprint_id: 7,
            quantity,
            price_cents,
            properties: None,
            external_stock_id: external.map(str::to_owned),
            description: None,
            user_data_field: None,
            graded: None,
        }
    }

    #[test]
    fn rows_that_cannot_be_keyed_are_skipped_with_their_reason() {
        let sorted = sort_rows(vec![
            item(1, Some("300"), 2, 100),
            item(2, None, 1, 100),
            item(3, Some(" "), 1, 100),
            item(4, Some("12a"), 1, 100),
            item(5, Some("-4"), 1, 100),
            item(6, Some("+4"), 1, 100),
            item(7, Some("55"), 1, 100),
            item(8, Some("55"), 3, 100),
            item(9, Some("60"), -1, 100),
            item(10, Some("61"), 1, -5),
            item(11, Some(" 200 "), 0, 0),
        ]);
        let keyed: Vec<(i64, i64)> = sorted
            .keyed
            .iter()
            .map(|row| (row.product_id, row.item.id))
            .collect();
        assert_eq!(keyed, [(200, 11), (300, 1)]);
        let skipped: Vec<(i64, SkipReason)> = sorted
            .skipped
            .iter()
            .map(|row| (row.legacy_id, row.reason))
            .collect();
        use SkipReason::*;
        assert_eq!(
            skipped,
            [
                (2, NoProductId),
                (3, NoProductId),
                (4, ProductIdNotANumber),
                (5, ProductIdNotANumber),
                (6, ProductIdNotANumber),
                (7, DuplicateProductId),
                (8, DuplicateProductId),
                (9, NegativeQuantity),
                (10, NegativePrice),
            ]
        );
    }
}
