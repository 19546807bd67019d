//! Orders made by purchases, the `/orders` query semantics (lenient parameters) and the
//! cancellation state machine used as saga compensation.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

use crate::{
    catalogue::{blueprint_expansion, blueprint_game, blueprint_name, expansion_name},
    errors::ApiError,
    inventory::{Product, money},
    state::Seller,
};

/// Which party of an order a user is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The buyer.
    Buyer,
    /// The seller.
    Seller,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::Buyer => "buyer",
            Self::Seller => "seller",
        }
    }
}

/// One purchased product line.
#[derive(Debug, Clone)]
pub(crate) struct OrderItem {
    id: i64,
    /// The product as it was when bought; relisting revives it.
    pub(crate) product: Product,
    pub(crate) quantity: i64,
}

/// An order between one buyer and one seller.
#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub(crate) id: i64,
    pub(crate) buyer: u32,
    pub(crate) seller: u32,
    via_ct0: bool,
    pub(crate) state: &'static str,
    created_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    cancel_requester: Option<Side>,
    relist: bool,
    pub(crate) items: Vec<OrderItem>,
}

/// Minimum length of a cancellation explanation, as documented.
const MIN_EXPLANATION: usize = 50;

impl Order {
    /// Which side user `number` is on, if any.
    pub(crate) fn side_of(&self, number: u32) -> Option<Side> {
        if self.seller == number {
            Some(Side::Seller)
        } else if self.buyer == number {
            Some(Side::Buyer)
        } else {
            None
        }
    }

    /// `PUT /orders/:id/ship` by the seller.
    pub(crate) fn ship(&mut self, side: Side) -> Result<(), ApiError> {
        if side != Side::Seller || self.state != "paid" {
            return Err(ApiError::field(
                "state",
                &format!("cannot ship an order in state {}", self.state),
            ));
        }
        self.state = "sent";
        self.sent_at = Some(Utc::now());
        Ok(())
    }

    /// `PUT /orders/:id/request-cancellation`, allowed from paid, sent (and CT0 hub_pending).
    pub(crate) fn request_cancel(
        &mut self,
        side: Side,
        explanation: &str,
        relist: bool,
    ) -> Result<(), ApiError> {
        if explanation.chars().count() < MIN_EXPLANATION {
            return Err(ApiError::field(
                "cancel_explanation",
                "is too short (minimum is 50 characters)",
            ));
        }
        if !matches!(self.state, "paid" | "sent" | "hub_pending") {
            return Err(ApiError::field(
                "state",
                &format!("cannot request cancellation from {}", self.state),
            ));
        }
        self.state = "request_for_cancel";
        self.cancel_requester = Some(side);
        self.relist = relist;
        Ok(())
    }

    /// `PUT /orders/:id/confirm-cancellation` by the other party; returns whether to relist the stock.
    pub(crate) fn confirm_cancel(
        &mut self,
        side: Side,
        relist: Option<bool>,
    ) -> Result<bool, ApiError> {
        if self.state != "request_for_cancel" || self.cancel_requester == Some(side) {
            return Err(ApiError::field(
                "state",
                "no cancellation request to confirm",
            ));
        }
        self.state = "canceled";
        self.cancelled_at = Some(Utc::now());
        Ok(relist.unwrap_or(self.relist))
    }
}

/// `/orders` parameters after lenient parsing: anything invalid takes its default.
#[derive(Debug, Clone)]
pub(crate) struct OrderQuery {
    page: usize,
    limit: usize,
    from: NaiveDate,
    to: NaiveDate,
    from_id: Option<i64>,
    to_id: Option<i64>,
    state: Option<String>,
    side: Side,
    by_id: bool,
    descending: bool,
}

impl OrderQuery {
    /// Parses raw query parameters, silently defaulting invalid ones.
    pub(crate) fn parse(q: &HashMap<String, String>) -> Self {
        let int = |k: &str| q.get(k).and_then(|v| v.parse::<i64>().ok());
        let date = |k: &str| {
            q.get(k)
                .and_then(|v| NaiveDate::parse_from_str(v, "%Y-%m-%d").ok())
        };
        let (by_id, descending) = match q.get("sort").map(String::as_str) {
            Some("id.asc") => (true, false),
            Some("id.desc") => (true, true),
            Some("date.asc") => (false, false),
            _ => (false, true),
        };
        Self {
            page: int("page").filter(|p| *p >= 1).unwrap_or(1) as usize,
            limit: int("limit").filter(|l| (1..=100).contains(l)).unwrap_or(20) as usize,
            from: date("from").unwrap_or(NaiveDate::MIN),
            to: date("to").unwrap_or(NaiveDate::MAX),
            from_id: int("from_id"),
            to_id: int("to_id"),
            state: q.get("state").filter(|s| !s.is_empty()).cloned(),
            side: if q.get("order_as").map(String::as_str) == Some("buyer") {
                Side::Buyer
            } else {
                Side::Seller
            },
            by_id,
            descending,
        }
    }

    fn matches(&self, order: &Order, user: u32) -> bool {
        let day = order.created_at.date_naive();
        order.side_of(user) == Some(self.side)
            && (self.from..=self.to).contains(&day)
            && self.from_id.is_none_or(|from| order.id > from)
            && self.to_id.is_none_or(|to| order.id <= to)
            && self.state.as_ref().is_none_or(|s| s == order.state)
    }
}

/// Every order, by id.
#[derive(Debug, Default)]
pub(crate) struct OrderBook {
    orders: BTreeMap<i64, Order>,
    next_item: i64,
}

impl OrderBook {
    /// Records a new order of `lines` (product as bought, quantity).
    pub(crate) fn place(
        &mut self,
        buyer: u32,
        seller: u32,
        via_ct0: bool,
        lines: Vec<(Product, i64)>,
    ) -> Order {
        let id = self
            .orders
            .keys()
            .next_back()
            .map_or(7_000_001, |last| last + 1);
        let items = lines
            .into_iter()
            .map(|(product, quantity)| {
                self.next_item += 1;
                OrderItem {
                    id: 9_000_000 + self.next_item,
                    product,
                    quantity,
                }
            })
            .collect();
        let state = if via_ct0 { "hub_pending" } else { "paid" };
        let order = Order {
            id,
            buyer,
            seller,
            via_ct0,
            state,
            created_at: Utc::now(),
            sent_at: None,
            cancelled_at: None,
            cancel_requester: None,
            relist: false,
            items,
        };
        self.orders.insert(id, order.clone());
        order
    }

    /// Order `id` if user `number` is a party to it.
    pub(crate) fn get_mut(&mut self, id: i64, number: u32) -> Option<(&mut Order, Side)> {
        let order = self.orders.get_mut(&id)?;
        let side = order.side_of(number)?;
        Some((order, side))
    }

    /// One page of the orders matching `query` for user `number`.
    pub(crate) fn list(&self, number: u32, query: &OrderQuery) -> Vec<Order> {
        let mut found: Vec<&Order> = self
            .orders
            .values()
            .filter(|o| query.matches(o, number))
            .collect();
        if !query.by_id {
            found.sort_by_key(|o| (o.created_at, o.id));
        }
        if query.descending {
            found.reverse();
        }
        found
            .into_iter()
            .skip((query.page - 1) * query.limit)
            .take(query.limit)
            .cloned()
            .collect()
    }
}

/// The Order object as seen by `side`; `counterpart` is the other party.
pub(crate) fn order_json(order: &Order, side: Side, counterpart: &Seller) -> Value {
    let subtotal: i64 = order
        .items
        .iter()
        .map(|i| i.product.price_cents * i.quantity)
        .sum();
    let fee = subtotal * 5 / 100;
    let total = if side == Side::Seller {
        subtotal - fee
    } else {
        subtotal
    };
    let paid_at = (order.state != "hub_pending").then_some(order.created_at);
    let mut out = json!({
        "id": order.id, "code": format!("{}{:06}", order.created_at.format("%Y%m%d"), order.id % 1_000_000),
        "transaction_code": format!("TX{}", order.id), "via_cardtrader_zero": order.via_ct0,
        "order_as": side.name(), "state": order.state,
        "size": order.items.iter().map(|i| i.quantity).sum::<i64>(),
        "paid_at": paid_at, "credit_added_to_seller_at": Value::Null, "sent_at": order.sent_at,
        "cancelled_at": order.cancelled_at, "cancel_requester": order.cancel_requester.map(Side::name),
        "presale_ended_at": Value::Null, "fee_percentage": "5.0", "fee_amount": money(fee),
        "seller_fee_amount": money(fee), "packing_number": order.id % 1000,
        "order_shipping_address": Value::Null, "order_billing_address": Value::Null,
        "order_shipping_method": Value::Null, "presale": false,
        "formatted_subtotal": format!("€{}.{:02}", subtotal / 100, subtotal % 100),
        "formatted_total": format!("€{}.{:02}", total / 100, total % 100),
        "order_items": order.items.iter().map(|i| item_json(i, side, order.created_at)).collect::<Vec<_>>(),
    });
    let other = if side == Side::Seller {
        "buyer"
    } else {
        "seller"
    };
    out[other] = counterpart.short_json();
    out[format!("{}_total", side.name())] = money(total);
    out[format!("{}_subtotal", side.name())] = money(subtotal);
    out
}

fn item_json(item: &OrderItem, side: Side, created_at: DateTime<Utc>) -> Value {
    let p = &item.product;
    let game = blueprint_game(p.blueprint_id);
    let mut out = json!({
        "id": item.id, "product_id": p.id, "blueprint_id": p.blueprint_id,
        "category_id": game.single_category, "game_id": game.id, "name": blueprint_name(p.blueprint_id),
        "expansion": expansion_name(blueprint_expansion(p.blueprint_id)), "properties": p.properties,
        "quantity": item.quantity, "bundle_size": p.bundle_size, "description": p.description,
        "cancelled_price": [], "repurchase_price": [], "tag": p.tag, "graded": p.graded,
        "formatted_price": format!("€{}.{:02}", p.price_cents / 100, p.price_cents % 100),
        "mkm_id": Value::Null, "tcg_player_id": Value::Null, "scryfall_id": Value::Null,
        "user_data_field": p.user_data_field, "deleted_at": Value::Null, "created_at": created_at,
    });
    out[format!("{}_price", side.name())] = money(p.price_cents);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Generator, Inventory};

    fn book() -> OrderBook {
        let inv = Inventory::new(Generator::new(1, 2, 5));
        let mut book = OrderBook::default();
        for i in 0..5 {
            book.place(1, 2, i == 4, vec![(inv.get(200_000_001 + i).unwrap(), 1)]);
        }
        book
    }

    fn query(pairs: &[(&str, &str)]) -> OrderQuery {
        OrderQuery::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn list_pages_filters_and_defaults_invalid_params() {
        let book = book();
        let ids = |q: &[(&str, &str)], user| {
            book.list(user, &query(q))
                .iter()
                .map(|o| o.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&[], 2),
            vec![7_000_005, 7_000_004, 7_000_003, 7_000_002, 7_000_001]
        );
        assert!(ids(&[], 1).is_empty(), "default order_as is seller");
        assert_eq!(
            ids(
                &[
                    ("order_as", "buyer"),
                    ("sort", "id.asc"),
                    ("limit", "2"),
                    ("page", "2")
                ],
                1
            ),
            vec![7_000_003, 7_000_004]
        );
        assert_eq!(
            ids(
                &[
                    ("from_id", "7000002"),
                    ("to_id", "7000004"),
                    ("sort", "id.asc")
                ],
                2
            ),
            vec![7_000_003, 7_000_004]
        );
        assert_eq!(ids(&[("state", "hub_pending")], 2), vec![7_000_005]);
        assert_eq!(
            ids(&[("limit", "500"), ("page", "-3"), ("sort", "bogus")], 2).len(),
            5
        );
    }

    #[test]
    fn cancellation_needs_a_long_reason_and_the_other_party() {
        let mut book = book();
        let (order, side) = book.get_mut(7_000_001, 1).unwrap();
        assert_eq!(side, Side::Buyer);
        assert!(order.request_cancel(side, "too short", true).is_err());
        order.request_cancel(side, &"x".repeat(50), true).unwrap();
        assert!(order.confirm_cancel(Side::Buyer, None).is_err());
        assert!(order.confirm_cancel(Side::Seller, None).unwrap());
        assert_eq!(order.state, "canceled");
    }
}
