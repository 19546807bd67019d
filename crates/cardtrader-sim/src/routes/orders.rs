//! `/orders` (lenient paging and filters, bare array), `/orders/:id`, ship and the cancellation pair.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Extension, Json,
    extract::{Path, Query, State},
};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::Caller;
use crate::{
    commerce::{Order, OrderQuery, Side, order_json},
    errors::{ApiError, parse_body},
    state::{Seller, SimState, lock},
};

type Answer = Result<Json<Value>, ApiError>;

fn render(state: &SimState, order: &Order, side: Side) -> Value {
    let other = if side == Side::Seller {
        order.buyer
    } else {
        order.seller
    };
    match state.by_number(other) {
        Some(counterpart) => order_json(order, side, &counterpart),
        None => Value::Null,
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound("Order not found".into())
}

/// Runs `change` on order `id` (which `caller` must be party to) and renders the result.
fn with_order<R>(
    state: &SimState,
    caller: &Seller,
    id: &str,
    change: impl FnOnce(&mut Order, Side) -> Result<R, ApiError>,
) -> Result<(Order, Side, R), ApiError> {
    let id: i64 = id.parse().map_err(|_| not_found())?;
    let mut orders = lock(&state.orders);
    let (order, side) = orders.get_mut(id, caller.number).ok_or_else(not_found)?;
    let outcome = change(order, side)?;
    Ok((order.clone(), side, outcome))
}

/// `GET /orders`: a bare array, one page.
pub(crate) async fn list(
    State(state): State<Arc<SimState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let query = OrderQuery::parse(&q);
    let page = lock(&state.orders).list(caller.number, &query);
    let rows = page
        .iter()
        .filter_map(|o| o.side_of(caller.number).map(|side| render(&state, o, side)))
        .collect();
    Json(Value::Array(rows))
}

/// `GET /orders/:id`.
pub(crate) async fn show(
    State(state): State<Arc<SimState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let (order, side, ()) = with_order(&state, &caller, &id, |_, _| Ok(()))?;
    Ok(Json(render(&state, &order, side)))
}

/// `PUT /orders/:id/ship`.
pub(crate) async fn ship(
    State(state): State<Arc<SimState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let (order, side, ()) = with_order(&state, &caller, &id, |order, side| order.ship(side))?;
    Ok(Json(render(&state, &order, side)))
}

#[derive(Deserialize, Default)]
struct Cancellation {
    #[serde(default)]
    cancel_explanation: String,
    relist_if_cancelled: Option<bool>,
}

/// `PUT /orders/:id/request-cancellation {cancel_explanation (≥ 50 chars), relist_if_cancelled}`.
pub(crate) async fn request_cancellation(
    State(state): State<Arc<SimState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let body: Cancellation = parse_body(&body)?;
    let relist = body.relist_if_cancelled.unwrap_or(false);
    let (order, side, ()) = with_order(&state, &caller, &id, |order, side| {
        order.request_cancel(side, &body.cancel_explanation, relist)
    })?;
    Ok(Json(render(&state, &order, side)))
}

/// `PUT /orders/:id/confirm-cancellation {relist_if_cancelled}` by the other party; relisting puts
/// the units back on sale.
pub(crate) async fn confirm_cancellation(
    State(state): State<Arc<SimState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let body: Cancellation = parse_body(&body)?;
    let (order, side, relist) = with_order(&state, &caller, &id, |order, side| {
        order.confirm_cancel(side, body.relist_if_cancelled)
    })?;
    if relist && let Some(seller) = state.by_number(order.seller) {
        let mut inventory = lock(&seller.inventory);
        for item in &order.items {
            let mut product = inventory.get(item.product.id).unwrap_or_else(|| {
                let mut revived = item.product.clone();
                revived.quantity = 0;
                revived
            });
            product.quantity += item.quantity;
            inventory.put(product);
        }
    }
    Ok(Json(render(&state, &order, side)))
}
