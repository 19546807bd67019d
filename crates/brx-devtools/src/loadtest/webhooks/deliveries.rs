//! What the senders POST: CardTrader order deliveries in the shape the simulator's orders have
//! (regular orders, `paid`, one or two distinct items of one seller, one unit each), signed with the
//! seller's shared secret; some redelivered byte for byte under the same event id, some followed by
//! an `order.update` to `sent`. The ledger keeps what each order should have taken.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Item, Seller};
use cardtrader_sim::webhook_signature;

/// Share of the deliveries that are an earlier delivery again, same event id and body.
const REDELIVERY_SHARE: f64 = 0.10;
/// Share of the deliveries that are an `order.update` to `sent` of an order created earlier.
const UPDATE_SHARE: f64 = 0.10;
/// Share of the new orders with two distinct items rather than one.
const TWO_ITEM_SHARE: f64 = 0.3;
/// An order is updated to `sent` only this long after its creation was answered, so the update
/// usually finds it applied already.
const UPDATE_AFTER: Duration = Duration::from_secs(1);
/// Deliveries each sender keeps for redelivery.
const KEPT: usize = 512;

/// What a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `order.create` of a new order in `paid`.
    Create,
    /// An earlier delivery again, same event id and body.
    Redelivery,
    /// `order.update` of an order created earlier, now `sent`.
    Update,
}

/// One signed delivery, ready to POST.
#[derive(Debug, Clone)]
pub(super) struct Delivery {
    pub(super) kind: Kind,
    /// Index of the seller in the scenario's list.
    pub(super) seller: usize,
    pub(super) event_id: uuid::Uuid,
    pub(super) order_id: i64,
    /// `(product id, units)` of the order.
    pub(super) lines: Arc<[(i64, i64)]>,
    pub(super) body: Bytes,
    pub(super) signature: String,
}

/// An order created earlier, waiting for its update to `sent`.
#[derive(Debug)]
struct Created {
    at: Instant,
    seller: usize,
    order_id: i64,
    lines: Arc<[(i64, i64)]>,
    order: Value,
}

/// One sender's stream of deliveries.
#[derive(Debug)]
pub(super) struct Mix {
    sellers: Arc<Vec<Seller>>,
    next_order: Arc<AtomicI64>,
    sent: Vec<Delivery>,
    created: VecDeque<Created>,
}

impl Mix {
    /// A stream over `sellers`, taking order ids from `next_order` (shared by every sender).
    pub(super) fn new(sellers: Arc<Vec<Seller>>, next_order: Arc<AtomicI64>) -> Self {
        Self {
            sellers,
            next_order,
            sent: Vec::with_capacity(KEPT),
            created: VecDeque::new(),
        }
    }

    /// The next delivery: a redelivery, an update to `sent`, or (most often, and whenever there is
    /// nothing to redeliver or update yet) a new order.
    pub(super) fn next(&mut self) -> anyhow::Result<Delivery> {
        let roll = rand::random::<f64>();
        let delivery = if roll < REDELIVERY_SHARE && !self.sent.is_empty() {
            let earlier = &self.sent[rand::random_range(0..self.sent.len())];
            Delivery {
                kind: Kind::Redelivery,
                ..earlier.clone()
            }
        } else if roll < REDELIVERY_SHARE + UPDATE_SHARE
            && let Some(created) = self.due_update()
        {
            self.update(created)?
        } else {
            self.create()?
        };
        self.keep(&delivery);
        Ok(delivery)
    }

    /// The oldest created order, once it is `UPDATE_AFTER` old.
    fn due_update(&mut self) -> Option<Created> {
        let due = self.created.front()?.at.elapsed() >= UPDATE_AFTER;
        due.then(|| self.created.pop_front()).flatten()
    }

    fn create(&mut self) -> anyhow::Result<Delivery> {
        let seller_index = rand::random_range(0..self.sellers.len());
        let seller = &self.sellers[seller_index];
        let wanted = if rand::random_bool(TWO_ITEM_SHARE) {
            2.min(seller.items.len())
        } else {
            1
        };
        let items: Vec<&Item> =
            rand::seq::index::sample(&mut rand::rng(), seller.items.len(), wanted)
                .into_iter()
                .map(|index| &seller.items[index])
                .collect();
        let order_id = self.next_order.fetch_add(1, Ordering::Relaxed);
        let order = order_json(order_id, &items);
        let lines: Arc<[(i64, i64)]> = items.iter().map(|item| (item.product_id, 1)).collect();
        let delivery = signed(seller, seller_index, "order.create", &order, &lines)?;
        self.created.push_back(Created {
            at: Instant::now(),
            seller: seller_index,
            order_id,
            lines,
            order,
        });
        Ok(delivery)
    }

    fn update(&self, created: Created) -> anyhow::Result<Delivery> {
        let mut order = created.order;
        order["state"] = json!("sent");
        order["sent_at"] = json!(chrono::Utc::now());
        let seller = &self.sellers[created.seller];
        let delivery = signed(
            seller,
            created.seller,
            "order.update",
            &order,
            &created.lines,
        )?;
        debug_assert_eq!(delivery.order_id, created.order_id);
        Ok(Delivery {
            kind: Kind::Update,
            ..delivery
        })
    }

    /// Keeps `delivery` for a later redelivery, replacing a random one once `KEPT` are kept.
    fn keep(&mut self, delivery: &Delivery) {
        if self.sent.len() < KEPT {
            self.sent.push(delivery.clone());
        } else {
            let slot = rand::random_range(0..KEPT);
            self.sent[slot] = delivery.clone();
        }
    }
}

/// A delivery of `order` under a fresh event id, signed with the seller's secret.
fn signed(
    seller: &Seller,
    seller_index: usize,
    cause: &str,
    order: &Value,
    lines: &Arc<[(i64, i64)]>,
) -> anyhow::Result<Delivery> {
    let event_id = uuid::Uuid::new_v4();
    let order_id = order["id"].as_i64().unwrap_or_default();
    let event = json!({
        "id": event_id, "time": chrono::Utc::now().timestamp(), "cause": cause,
        "object_class": "Order", "object_id": order_id, "mode": "live", "data": order,
    });
    let body = Bytes::from(serde_json::to_vec(&event)?);
    let signature = webhook_signature(&seller.secret, &body);
    Ok(Delivery {
        kind: Kind::Create,
        seller: seller_index,
        event_id,
        order_id,
        lines: lines.clone(),
        body,
        signature,
    })
}

/// The Order as the seller sees it, as the simulator renders one (`commerce::orders::order_json`):
/// a regular order, paid now, one unit of each item.
pub(in crate::loadtest) fn order_json(order_id: i64, items: &[&Item]) -> Value {
    let now = chrono::Utc::now();
    let subtotal: i64 = items.iter().map(|item| item.price_cents).sum();
    let fee = subtotal * 5 / 100;
    let total = subtotal - fee;
    let money = |cents: i64| json!({"cents": cents, "currency": "EUR"});
    let euros = |cents: i64| format!("€{}.{:02}", cents / 100, cents % 100);
    let lines: Vec<Value> = (0..)
        .zip(items)
        .map(|(k, item)| {
            json!({
                "id": order_id * 10 + k, "product_id": item.product_id,
                "blueprint_id": item.blueprint_id, "name": item.name,
                "properties": item.properties, "quantity": 1, "bundle_size": 1,
                "description": Value::Null, "cancelled_price": [], "repurchase_price": [],
                "tag": Value::Null, "graded": Value::Null, "formatted_price": euros(item.price_cents),
                "mkm_id": Value::Null, "tcg_player_id": Value::Null, "scryfall_id": Value::Null,
                "user_data_field": Value::Null, "deleted_at": Value::Null, "created_at": now,
                "seller_price": money(item.price_cents),
            })
        })
        .collect();
    json!({
        "id": order_id, "code": format!("{}{:06}", now.format("%Y%m%d"), order_id % 1_000_000),
        "transaction_code": format!("TX{order_id}"), "via_cardtrader_zero": false,
        "order_as": "seller", "state": "paid", "size": items.len(), "paid_at": now,
        "credit_added_to_seller_at": Value::Null, "sent_at": Value::Null,
        "cancelled_at": Value::Null, "cancel_requester": Value::Null,
        "presale_ended_at": Value::Null, "fee_percentage": "5.0", "fee_amount": money(fee),
        "seller_fee_amount": money(fee), "packing_number": order_id % 1000,
        "order_shipping_address": Value::Null, "order_billing_address": Value::Null,
        "order_shipping_method": Value::Null, "presale": false,
        "formatted_subtotal": euros(subtotal), "formatted_total": euros(total),
        "order_items": lines, "buyer": {"id": 999_001, "username": "loadtest-buyer"},
        "seller_total": money(total), "seller_subtotal": money(subtotal),
    })
}

/// An order of the phase, as its deliveries were answered.
#[derive(Debug)]
pub(super) struct OrderEntry {
    /// `(product id, units)`.
    pub(super) lines: Arc<[(i64, i64)]>,
    /// One of its deliveries was answered 200: its units must have been taken, once.
    pub(super) stored: bool,
}

/// What the senders of a phase delivered and how it was answered.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    pub(super) orders: HashMap<i64, OrderEntry>,
    /// Distinct event ids answered 200 at least once.
    pub(super) events: HashSet<uuid::Uuid>,
    /// Deliveries by kind: creates, redeliveries, updates.
    pub(super) kinds: [u64; 3],
}

impl Ledger {
    /// Records a delivery and whether it was answered 200.
    pub(super) fn record(&mut self, delivery: &Delivery, ok: bool) {
        self.kinds[delivery.kind as usize] += 1;
        let entry = self
            .orders
            .entry(delivery.order_id)
            .or_insert_with(|| OrderEntry {
                lines: delivery.lines.clone(),
                stored: false,
            });
        if ok {
            entry.stored = true;
            self.events.insert(delivery.event_id);
        }
    }

    /// Adds another sender's ledger (its orders are its own: order ids are never shared).
    pub(super) fn add(&mut self, other: Ledger) {
        for (id, entry) in other.orders {
            match self.orders.get_mut(&id) {
                Some(mine) => mine.stored |= entry.stored,
                None => {
                    self.orders.insert(id, entry);
                }
            }
        }
        self.events.extend(other.events);
        for (mine, theirs) in self.kinds.iter_mut().zip(other.kinds) {
            *mine += theirs;
        }
    }

    /// Units the stored orders must have taken, by product.
    pub(super) fn taken(&self) -> HashMap<i64, i64> {
        let mut taken = HashMap::new();
        for entry in self.orders.values().filter(|entry| entry.stored) {
            for &(product, units) in entry.lines.iter() {
                *taken.entry(product).or_default() += units;
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sellers() -> Arc<Vec<Seller>> {
        let item = |product_id| Item {
            product_id,
            blueprint_id: 7,
            name: "Card".into(),
            price_cents: 120,
            properties: json!({"condition": "Near Mint"}),
        };
        Arc::new(vec![Seller {
            url: "http://127.0.0.1:1/webhooks/cardtrader/x".into(),
            secret: "s3cret".into(),
            items: vec![item(1), item(2), item(3)],
        }])
    }

    #[test]
    fn a_new_order_is_a_paid_live_delivery_of_the_sellers_items_signed_with_its_secret() {
        let mut mix = Mix::new(sellers(), Arc::new(AtomicI64::new(5_000)));

        let delivery = mix.create().unwrap();

        let event: Value = serde_json::from_slice(&delivery.body).unwrap();
        assert_eq!(event["id"], json!(delivery.event_id));
        assert_eq!(
            (&event["cause"], &event["mode"], &event["object_id"]),
            (&json!("order.create"), &json!("live"), &json!(5_000))
        );
        assert_eq!(event["data"]["state"], "paid");
        assert_eq!(event["data"]["via_cardtrader_zero"], false);
        let products: Vec<(i64, i64)> = event["data"]["order_items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|line| {
                (
                    line["product_id"].as_i64().unwrap(),
                    line["quantity"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(products, delivery.lines.to_vec());
        assert_eq!(
            delivery.signature,
            webhook_signature("s3cret", &delivery.body)
        );
    }

    #[test]
    fn an_update_is_the_same_order_sent_under_a_new_event_id() {
        let mut mix = Mix::new(sellers(), Arc::new(AtomicI64::new(1)));
        let created = mix.create().unwrap();
        let pending = mix.created.pop_front().unwrap();

        let update = mix.update(pending).unwrap();

        let event: Value = serde_json::from_slice(&update.body).unwrap();
        assert_eq!(
            (update.kind, update.order_id),
            (Kind::Update, created.order_id)
        );
        assert_ne!(update.event_id, created.event_id);
        assert_eq!(
            (&event["cause"], &event["data"]["state"]),
            (&json!("order.update"), &json!("sent"))
        );
    }

    #[test]
    fn an_order_delivered_many_times_takes_its_units_once_and_only_when_answered_200() {
        let mut mix = Mix::new(sellers(), Arc::new(AtomicI64::new(1)));
        let stored = mix.create().unwrap();
        let refused = mix.create().unwrap();
        let mut ledger = Ledger::default();

        ledger.record(&stored, true);
        ledger.record(
            &Delivery {
                kind: Kind::Redelivery,
                ..stored.clone()
            },
            true,
        );
        ledger.record(&refused, false);

        let mut expected = HashMap::new();
        for &(product, units) in stored.lines.iter() {
            *expected.entry(product).or_insert(0) += units;
        }
        assert_eq!(ledger.taken(), expected);
        assert_eq!((ledger.events.len(), ledger.kinds), (1, [2, 1, 0]));
    }
}
