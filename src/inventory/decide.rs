//! The push job's pure decisions: what an update sends, how an earlier attempt's create ended,
//! and how long a push waits before it is tried again. No I/O here.

use std::time::Duration;

use serde_json::Value;

use super::outbox::ItemValues;
use crate::marketplace::types::{Product, ProductUpdate};

/// How long the seller's pending pushes wait after the n-th push job that gave up on them; past
/// the last, they end failed. About seven hours in all, so an outage of CardTrader (or of the
/// seller's account) is ridden out without keeping the products out of syncs for days.
pub const RETRY_ROUNDS: [Duration; 10] = [
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(240),
    Duration::from_secs(480),
    Duration::from_secs(960),
    Duration::from_secs(1_800),
    Duration::from_secs(3_600),
    Duration::from_secs(3_600),
    Duration::from_secs(3_600),
    Duration::from_secs(3_600),
];

/// What the export says about a create that may have been sent.
#[derive(Debug, PartialEq)]
pub(super) enum CreateOutcome<'a> {
    /// Created (the tag is on it) or merged (it grew by exactly the create's quantity).
    Applied(&'a Product),
    /// Nothing changed: safe to send.
    NotApplied,
    /// Quantities moved by other amounts: sending could list the units twice.
    Unknown,
}

/// How a create sent earlier ended, from the blueprint's products now and their quantities
/// `before` it was sent.
pub(super) fn decide_create<'a>(
    products: &'a [Product],
    before: &serde_json::Map<String, Value>,
    tag: &str,
    quantity: i64,
) -> CreateOutcome<'a> {
    if let Some(tagged) = products
        .iter()
        .find(|product| product.user_data_field.as_deref() == Some(tag))
    {
        return CreateOutcome::Applied(tagged);
    }
    let was = |product: &Product| before.get(&product.id.to_string()).and_then(Value::as_i64);
    if let Some(merged) = products
        .iter()
        .find(|product| was(product).is_some_and(|was| product.quantity == was + quantity))
    {
        return CreateOutcome::Applied(merged);
    }
    let unchanged = products
        .iter()
        .all(|product| was(product) == Some(product.quantity))
        && products.len() == before.len();
    if unchanged {
        CreateOutcome::NotApplied
    } else {
        CreateOutcome::Unknown
    }
}

/// The update that carries an edit of the row's `edited` fields, with the item's values now (so a
/// sale applied meanwhile is not overwritten by a stale quantity).
pub(super) fn update_of(values: ItemValues, edited: impl Fn(&str) -> bool) -> ProductUpdate {
    let (price_cents, quantity, description, properties, user_data_field) = values;
    ProductUpdate {
        price: edited("price_cents").then(|| cents_to_price(price_cents)),
        quantity: edited("quantity").then_some(i64::from(quantity)),
        description: edited("description").then(|| description.unwrap_or_default()),
        properties: match properties {
            Value::Object(map) if edited("properties") => Some(map),
            _ => None,
        },
        user_data_field: edited("user_data_field").then(|| user_data_field.unwrap_or_default()),
    }
}

/// CardTrader takes prices in major units on writes.
pub(super) fn cents_to_price(cents: i64) -> f64 {
    cents as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: i64, quantity: i64, tag: Option<&str>) -> Product {
        serde_json::from_value(serde_json::json!({
            "id": id, "blueprint_id": 7, "quantity": quantity, "price_cents": 100,
            "price_currency": "EUR", "user_data_field": tag,
        }))
        .unwrap()
    }

    fn before(pairs: &[(i64, i64)]) -> serde_json::Map<String, Value> {
        pairs
            .iter()
            .map(|(id, quantity)| (id.to_string(), Value::from(*quantity)))
            .collect()
    }

    #[test]
    fn a_create_is_decided_by_its_tag_a_merge_or_nothing_changed() {
        let tagged = [product(1, 4, None), product(2, 3, Some("t"))];
        assert_eq!(
            decide_create(&tagged, &before(&[(1, 4)]), "t", 3),
            CreateOutcome::Applied(&tagged[1])
        );
        let merged = [product(1, 7, None)];
        assert_eq!(
            decide_create(&merged, &before(&[(1, 4)]), "t", 3),
            CreateOutcome::Applied(&merged[0])
        );
        let untouched = [product(1, 4, None)];
        assert_eq!(
            decide_create(&untouched, &before(&[(1, 4)]), "t", 3),
            CreateOutcome::NotApplied
        );
        let sold_meanwhile = [product(1, 2, None)];
        assert_eq!(
            decide_create(&sold_meanwhile, &before(&[(1, 4)]), "t", 3),
            CreateOutcome::Unknown
        );
    }

    #[test]
    fn an_update_sends_only_the_edited_fields_with_the_items_values_now() {
        let values = (
            1_234,
            3,
            None,
            serde_json::json!({"condition": "Played"}),
            None,
        );

        let update = update_of(values, |field| {
            field == "quantity" || field == "description"
        });

        assert_eq!(update.quantity, Some(3));
        assert_eq!(
            update.description.as_deref(),
            Some(""),
            "cleared, not left alone"
        );
        assert_eq!(update.price, None);
        assert_eq!(update.properties, None);
    }

    #[test]
    fn prices_are_sent_in_major_units() {
        assert_eq!(cents_to_price(1_234), 12.34);
        assert_eq!(cents_to_price(0), 0.0);
    }

    #[test]
    fn retries_back_off_and_end_within_a_working_day() {
        assert!(RETRY_ROUNDS.windows(2).all(|pair| pair[0] <= pair[1]));
        let total: Duration = RETRY_ROUNDS.iter().sum();
        assert!(total < Duration::from_secs(8 * 3_600), "{total:?}");
    }
}
