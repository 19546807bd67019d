//! The webhook body as CardTrader sends it (CARDTRADER.md §2.6): the envelope and the parts of the
//! Order it carries that stock depends on. Unknown fields are ignored, so richer deliveries still parse.

use std::collections::BTreeMap;

use serde::Deserialize;
use uuid::Uuid;

/// One delivery: `{id, time, cause, object_class, object_id, mode, data}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Envelope {
    /// CardTrader's event id: the same event redelivered carries the same id.
    pub(crate) id: Uuid,
    /// When CardTrader emitted it, epoch seconds; not needed to apply, so it may be absent.
    #[serde(default)]
    pub(crate) time: Option<f64>,
    /// `order.create`, `order.update` or `order.destroy`.
    pub(crate) cause: String,
    /// The order's id.
    pub(crate) object_id: i64,
    /// `live`, or `test` for CardTrader's test deliveries.
    pub(crate) mode: String,
    /// The order as it is after the change.
    pub(crate) data: Order,
}

impl Envelope {
    /// Parses a raw body; the error says what is missing or malformed.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// Only live events move stock: test deliveries are CardTrader checking the endpoint.
    pub(crate) fn is_live(&self) -> bool {
        self.mode == "live"
    }

    /// What happened to the order.
    pub(crate) fn cause(&self) -> Cause {
        match self.cause.as_str() {
            "order.create" => Cause::Create,
            "order.update" => Cause::Update,
            "order.destroy" => Cause::Destroy,
            _ => Cause::Other,
        }
    }
}

/// What happened to the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// `order.create`.
    Create,
    /// `order.update`.
    Update,
    /// `order.destroy`.
    Destroy,
    /// A cause this service does not know; stored, changes nothing.
    Other,
}

/// The Order fields the stock rule reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Order {
    /// Order id.
    pub(crate) id: i64,
    /// `paid`, `hub_pending`, `sent`, `arrived`, `done`, `request_for_cancel`, `canceled`, …
    pub(crate) state: String,
    /// A CardTrader Zero order (its stock moves at `hub_pending`, not at `paid`).
    pub(crate) via_cardtrader_zero: bool,
    /// What was bought.
    pub(crate) order_items: Vec<OrderItem>,
}

/// One line of an order.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct OrderItem {
    /// The seller's CardTrader product.
    pub(crate) product_id: i64,
    /// Its blueprint, to sync a product the seller has no local row for.
    #[serde(default)]
    pub(crate) blueprint_id: Option<i64>,
    /// Units bought.
    pub(crate) quantity: u32,
}

impl Order {
    /// Units bought per product, lines naming the same product added up, in product id order (the
    /// lock order every writer of `inventory_items` shares).
    pub(crate) fn amounts(&self) -> BTreeMap<i64, i64> {
        let mut amounts = BTreeMap::new();
        for item in self.order_items.iter().filter(|item| item.quantity > 0) {
            *amounts.entry(item.product_id).or_default() += i64::from(item.quantity);
        }
        amounts
    }

    /// The blueprint of `product_id`, from the order's lines.
    pub(crate) fn blueprint_of(&self, product_id: i64) -> Option<i64> {
        self.order_items
            .iter()
            .find(|item| item.product_id == product_id)
            .and_then(|item| item.blueprint_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_delivery_parses_ignoring_fields_it_does_not_need() {
        let body = serde_json::json!({
            "id": "6f1c1f7e-9b5e-4a43-9d3e-2a8c0f1b2c3d", "time": 1_700_000_000, "cause": "order.create",
            "object_class": "Order", "object_id": 7_000_001, "mode": "live",
            "data": {"id": 7_000_001, "code": "x", "state": "paid", "via_cardtrader_zero": false,
                     "seller_total": {"cents": 95, "currency": "EUR"},
                     "order_items": [{"id": 1, "product_id": 5, "blueprint_id": 9, "quantity": 2, "name": "n"},
                                     {"id": 2, "product_id": 5, "blueprint_id": 9, "quantity": 1},
                                     {"id": 3, "product_id": 4, "quantity": 1}]}
        });
        let envelope = Envelope::parse(body.to_string().as_bytes()).unwrap();

        assert_eq!(envelope.cause(), Cause::Create);
        assert!(envelope.is_live());
        assert_eq!(envelope.data.amounts(), BTreeMap::from([(4, 1), (5, 3)]));
        assert_eq!(envelope.data.blueprint_of(5), Some(9));
        assert_eq!(envelope.data.blueprint_of(4), None);
    }

    #[test]
    fn a_delivery_without_the_order_or_its_lines_does_not_parse() {
        let no_data = r#"{"id": "6f1c1f7e-9b5e-4a43-9d3e-2a8c0f1b2c3d", "cause": "order.create", "object_id": 1, "mode": "live"}"#;
        let no_lines = r#"{"id": "6f1c1f7e-9b5e-4a43-9d3e-2a8c0f1b2c3d", "cause": "order.create", "object_id": 1, "mode": "live", "data": {"id": 1, "state": "paid", "via_cardtrader_zero": false}}"#;

        assert!(Envelope::parse(no_data.as_bytes()).is_err());
        assert!(Envelope::parse(no_lines.as_bytes()).is_err());
        assert!(Envelope::parse(b"{not json").is_err());
    }
}
