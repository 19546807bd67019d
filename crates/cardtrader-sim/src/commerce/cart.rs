//! A buyer's cart and its rendering against current stock (items whose stock is gone silently vanish).

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::{
    inventory::{Product, money, owner_of},
    state::{Seller, SimState, lock},
};

/// Flat shipping charged per seller subcart; CardTrader Zero ships later, from the hub.
const SUBCART_SHIPPING_CENTS: i64 = 150;

/// A buyer's cart.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cart {
    pub(crate) created_at: Option<DateTime<Utc>>,
    pub(crate) updated_at: Option<DateTime<Utc>>,
    pub(crate) items: Vec<CartItem>,
    pub(crate) billing_address: Option<Value>,
    pub(crate) shipping_address: Option<Value>,
}

/// One product in the cart.
#[derive(Debug, Clone)]
pub(crate) struct CartItem {
    pub(crate) product_id: i64,
    pub(crate) quantity: i64,
    pub(crate) via_ct0: bool,
}

impl Cart {
    /// Units of `product_id` already in the cart.
    pub(crate) fn quantity_of(&self, product_id: i64) -> i64 {
        self.items
            .iter()
            .filter(|i| i.product_id == product_id)
            .map(|i| i.quantity)
            .sum()
    }

    /// Adds units (the caller checked stock).
    pub(crate) fn add(&mut self, product_id: i64, quantity: i64, via_ct0: bool) {
        let now = Utc::now();
        self.created_at.get_or_insert(now);
        self.updated_at = Some(now);
        match self
            .items
            .iter_mut()
            .find(|i| i.product_id == product_id && i.via_ct0 == via_ct0)
        {
            Some(item) => item.quantity += quantity,
            None => self.items.push(CartItem {
                product_id,
                quantity,
                via_ct0,
            }),
        }
    }

    /// Removes units; refuses to remove more than the cart holds.
    pub(crate) fn remove(
        &mut self,
        product_id: i64,
        mut quantity: i64,
    ) -> Result<(), &'static str> {
        if self.quantity_of(product_id) == 0 {
            return Err("is not in the cart");
        }
        if quantity > self.quantity_of(product_id) {
            return Err("cannot be greater than the quantity in the cart");
        }
        for item in self.items.iter_mut().filter(|i| i.product_id == product_id) {
            let taken = quantity.min(item.quantity);
            item.quantity -= taken;
            quantity -= taken;
        }
        self.items.retain(|i| i.quantity > 0);
        self.updated_at = Some(Utc::now());
        Ok(())
    }
}

/// A cart item resolved against the seller's current stock.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub(crate) seller: Arc<Seller>,
    pub(crate) product: Product,
    pub(crate) quantity: i64,
    pub(crate) via_ct0: bool,
}

/// The lines still purchasable; each seller's lock is taken on its own, never together.
pub(crate) fn resolve(state: &SimState, cart: &Cart) -> Vec<Line> {
    cart.items
        .iter()
        .filter_map(|item| {
            let seller = state.by_number(owner_of(item.product_id))?;
            let product = lock(&seller.inventory).get(item.product_id)?;
            (product.quantity >= item.quantity).then_some(Line {
                seller,
                product,
                quantity: item.quantity,
                via_ct0: item.via_ct0,
            })
        })
        .collect()
}

/// The Cart object: one subcart per seller, plus one for CardTrader Zero.
pub(crate) fn render(cart_id: i64, cart: &Cart, lines: &[Line]) -> Value {
    let mut groups: BTreeMap<u32, Vec<&Line>> = BTreeMap::new();
    for line in lines {
        groups
            .entry(if line.via_ct0 { 0 } else { line.seller.number })
            .or_default()
            .push(line);
    }
    let subcarts: Vec<Value> = groups
        .iter()
        .map(|(key, lines)| subcart(cart_id, *key, lines))
        .collect();
    let subtotal: i64 = lines
        .iter()
        .map(|l| l.product.price_cents * l.quantity)
        .sum();
    let shipping: i64 = groups.keys().filter(|k| **k != 0).count() as i64 * SUBCART_SHIPPING_CENTS;
    json!({
        "id": cart_id, "created_at": cart.created_at, "updated_at": cart.updated_at,
        "subcarts": subcarts, "subtotal": money(subtotal), "safeguard_fee_amount": money(0),
        "ct_zero_fee_amount": money(0), "payment_method_fee_percentage_amount": money(0),
        "payment_method_fee_fixed_amount": money(0), "shipping_cost": money(shipping),
        "total": money(subtotal + shipping),
        "billing_address": cart.billing_address, "shipping_address": cart.shipping_address,
    })
}

fn subcart(cart_id: i64, key: u32, lines: &[&Line]) -> Value {
    let seller = match lines.first() {
        Some(line) if key != 0 => line.seller.short_json(),
        _ => json!({"id": 0, "username": "CardTrader Zero"}),
    };
    let items: Vec<Value> = lines
        .iter()
        .map(|l| json!({"quantity": l.quantity, "price_cents": l.product.price_cents, "price_currency": "EUR",
            "product": {"id": l.product.id, "name_en": crate::catalogue::blueprint_name(l.product.blueprint_id)}}))
        .collect();
    let subtotal: i64 = lines
        .iter()
        .map(|l| l.product.price_cents * l.quantity)
        .sum();
    let shipping = if key == 0 { 0 } else { SUBCART_SHIPPING_CENTS };
    json!({"id": cart_id * 1_000 + i64::from(key), "seller": seller, "via_cardtrader_zero": key == 0,
        "cart_items": items, "subtotal": money(subtotal), "shipping_cost": money(shipping)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_remove_keep_quantities_per_product() {
        let mut cart = Cart::default();
        cart.add(7, 2, false);
        cart.add(7, 1, true);
        cart.add(7, 1, false);
        assert_eq!(cart.quantity_of(7), 4);
        assert!(cart.remove(7, 5).is_err());
        cart.remove(7, 3).unwrap();
        assert_eq!(cart.quantity_of(7), 1);
        assert!(cart.remove(8, 1).is_err());
    }
}
