//! `/cart`, `/cart/add`, `/cart/remove`, `/cart/purchase`. Locks are taken one at a time (seller
//! account, seller inventory, buyer account) so a buyer buying from itself cannot deadlock.

use std::{collections::BTreeMap, sync::Arc};

use axum::{Extension, Json, extract::State};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Caller;
use crate::{
    commerce::{Line, render_cart, resolve_cart},
    errors::{ApiError, parse_body},
    inventory::{Product, owner_of},
    ops,
    state::{Seller, SimState, lock},
};

type Answer = Result<Json<Value>, ApiError>;

#[derive(Deserialize)]
struct CartChange {
    product_id: Option<i64>,
    quantity: Option<i64>,
    #[serde(default)]
    via_cardtrader_zero: bool,
    billing_address: Option<Value>,
    shipping_address: Option<Value>,
}

impl CartChange {
    fn required(&self) -> Result<(i64, i64), ApiError> {
        let product_id = self
            .product_id
            .ok_or_else(|| ApiError::MissingParameter("product_id".into()))?;
        let quantity = self
            .quantity
            .ok_or_else(|| ApiError::MissingParameter("quantity".into()))?;
        if quantity < 1 {
            return Err(ApiError::field("quantity", "must be greater than 0"));
        }
        Ok((product_id, quantity))
    }
}

fn current(state: &SimState, buyer: &Seller) -> Value {
    let cart = lock(&buyer.account).cart.clone();
    render_cart(buyer.info.user_id, &cart, &resolve_cart(state, &cart))
}

/// `GET /cart`.
pub(crate) async fn show(
    State(state): State<Arc<SimState>>,
    Extension(Caller(buyer)): Extension<Caller>,
) -> Json<Value> {
    Json(current(&state, &buyer))
}

/// `POST /cart/add`: checks vacation and stock, then adds; the last addresses sent win.
pub(crate) async fn add(
    State(state): State<Arc<SimState>>,
    Extension(Caller(buyer)): Extension<Caller>,
    body: Bytes,
) -> Answer {
    let change: CartChange = parse_body(&body)?;
    let (product_id, quantity) = change.required()?;
    let not_found = || ApiError::NotFound("Product not found".into());
    let seller = state
        .by_number(owner_of(product_id))
        .ok_or_else(not_found)?;
    if seller.on_vacation() {
        return Err(ApiError::field(
            "product",
            "cannot be bought: the seller is on vacation",
        ));
    }
    let product = lock(&seller.inventory)
        .get(product_id)
        .ok_or_else(not_found)?;
    let mut account = lock(&buyer.account);
    if account.cart.quantity_of(product_id) + quantity > product.quantity {
        return Err(ApiError::field(
            "quantity",
            "is greater than the available quantity",
        ));
    }
    account
        .cart
        .add(product_id, quantity, change.via_cardtrader_zero);
    if change.billing_address.is_some() {
        account.cart.billing_address = change.billing_address;
    }
    if change.shipping_address.is_some() {
        account.cart.shipping_address = change.shipping_address;
    }
    drop(account);
    Ok(Json(current(&state, &buyer)))
}

/// `POST /cart/remove`: cannot remove more than the cart holds.
pub(crate) async fn remove(
    State(state): State<Arc<SimState>>,
    Extension(Caller(buyer)): Extension<Caller>,
    body: Bytes,
) -> Answer {
    let change: CartChange = parse_body(&body)?;
    let (product_id, quantity) = change.required()?;
    let removed = lock(&buyer.account).cart.remove(product_id, quantity);
    removed.map_err(|message| ApiError::field("quantity", message))?;
    Ok(Json(current(&state, &buyer)))
}

/// `POST /cart/purchase`: decrements stock, creates `paid` (or CT0 `hub_pending`) orders, empties the
/// cart and returns the cart as bought.
pub(crate) async fn purchase(
    State(state): State<Arc<SimState>>,
    Extension(Caller(buyer)): Extension<Caller>,
) -> Answer {
    let (cart, no_payment_method) = {
        let account = lock(&buyer.account);
        (account.cart.clone(), account.no_payment_method)
    };
    if no_payment_method {
        return Err(ApiError::Validation {
            errors: json!({"payment_method": ["cannot be blank"]}),
            message: "You need to have at least one payment method set.".into(),
        });
    }
    let lines = resolve_cart(&state, &cart);
    if lines.is_empty() {
        return Err(ApiError::field("cart", "is empty"));
    }
    let bought: Vec<Line> = lines.into_iter().filter_map(take_stock).collect();
    let mut groups: BTreeMap<(u32, bool), Vec<(Product, i64)>> = BTreeMap::new();
    for line in &bought {
        groups
            .entry((line.seller.number, line.via_ct0))
            .or_default()
            .push((line.product.clone(), line.quantity));
    }
    {
        let mut orders = lock(&state.orders);
        for ((seller, via_ct0), items) in groups {
            orders.place(buyer.number, seller, via_ct0, items);
        }
    }
    let mut account = lock(&buyer.account);
    let rendered = render_cart(buyer.info.user_id, &account.cart, &bought);
    account.cart.items.clear();
    Ok(Json(rendered))
}

/// Takes the line's units from the seller's stock; `None` when they are gone since the cart was read.
fn take_stock(line: Line) -> Option<Line> {
    let mut inventory = lock(&line.seller.inventory);
    let product = inventory
        .get(line.product.id)
        .filter(|p| p.quantity >= line.quantity)?;
    ops::set_quantity(&mut inventory, product.id, product.quantity - line.quantity).ok()?;
    drop(inventory);
    Some(Line { product, ..line })
}
