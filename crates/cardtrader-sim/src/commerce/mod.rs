//! The buyer side: carts (per-seller subcarts plus one CardTrader Zero subcart) and orders with their
//! state machine (`paid`/`hub_pending` → `sent` …, cancellation requests and confirmations).

mod cart;
mod orders;

pub(crate) use cart::{Cart, Line, render as render_cart, resolve as resolve_cart};
pub(crate) use orders::{Order, OrderBook, OrderQuery, Side, order_json};
