//! Purchases as compensating sagas (DESIGN.md §6). The saga is a pure state machine ([`saga`]);
//! a private `store` holds its SQL (the reservation, the fenced step log, the local sale or release);
//! [`driver`] runs it on the durable job worker, calling CardTrader outside any transaction; and
//! [`service`] is what the RPCs call.

pub mod driver;
mod evidence;
pub mod saga;
pub mod service;
mod store;
pub mod verdict;

pub use service::{Outcome, PurchasePolicy, Purchases};
pub use store::{StoredLine, StoredPurchase, prune_ended_before};
/// The saga's record-level operations (the reservation, the fenced step log), for the tests that
/// prove the reservation and crash guarantees against the database directly; everything else
/// goes through [`service::Purchases`] or the driver.
pub use store::{append, load, reserve, reserve_with, step_log};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::UserId;

/// One line of a purchase: an item of the seller and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseLine {
    /// The item: the seller's CardTrader product id.
    pub product_id: i64,
    /// How many, at least 1.
    pub quantity: i32,
}

/// A purchase as a caller asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPurchase {
    /// The seller whose items are bought.
    pub user_id: UserId,
    /// The caller's key: the same request under it again returns the stored purchase.
    pub idempotency_key: String,
    /// What is bought, in order.
    pub lines: Vec<PurchaseLine>,
    /// The shop's reference of the buyer or order.
    pub buyer_ref: String,
    /// Past this instant a purchase still taking stock on CardTrader is compensated.
    pub deadline: DateTime<Utc>,
}

/// A CardTrader product as it was before a line took its stock: enough to re-create it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductSnapshot {
    /// Blueprint.
    pub blueprint_id: i64,
    /// Price in cents.
    pub price_cents: i64,
    /// Currency of the price.
    pub currency: String,
    /// Editable properties (condition, language, foil...).
    pub properties: Map<String, Value>,
    /// Free text.
    pub description: Option<String>,
    /// The seller's free field.
    pub user_data_field: Option<String>,
    /// Graded.
    pub graded: Option<bool>,
}

/// How a line's stock goes back to CardTrader, decided from what CardTrader showed just before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum GiveBackPlan {
    /// The product still exists with `from` units: increment it back.
    Increment {
        /// Its quantity before the give-back.
        from: i64,
        /// When `from` was read (sales after it change what the give-back must look like).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read_at: Option<DateTime<Utc>>,
    },
    /// The product is gone (the decrement took it to 0): create it again from the snapshot.
    /// CardTrader merges a create into an identical product; `merged_into` is that product and
    /// its quantity, when there was one.
    Recreate {
        /// An identical product (same blueprint and properties) and its quantity, if any.
        merged_into: Option<(i64, i64)>,
    },
}

/// What the driver learnt about a line on CardTrader, stored with the line before any call whose
/// outcome may have to be decided from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineMemo {
    /// CardTrader's quantity of the product when the line was confirmed (0: not there).
    pub seen_quantity: i64,
    /// When that quantity was read: sales after it are not in it. Absent in earlier releases' memos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_at: Option<DateTime<Utc>>,
    /// The product as it was.
    pub product: Option<ProductSnapshot>,
    /// How the give-back was sent, once it was.
    pub give_back: Option<GiveBackPlan>,
}

/// What reserving a purchase did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// The purchase was recorded and its stock reserved.
    Created(Uuid),
    /// The same request was recorded before under this key: nothing was touched.
    Replay(Uuid),
}

/// What can go wrong with a purchase.
#[derive(Debug, thiserror::Error)]
pub enum PurchaseError {
    /// An item has less unreserved stock than the purchase wants.
    #[error("item {product_id} has {available} available, {requested} requested")]
    InsufficientStock {
        /// The item.
        product_id: i64,
        /// Its quantity less its reservations.
        available: i32,
        /// What the purchase's lines want of it.
        requested: i32,
    },
    /// The seller has no such item.
    #[error("the seller has no item {0}")]
    UnknownItem(i64),
    /// The idempotency key was used for a different request.
    #[error("the idempotency key was already used for a different request")]
    KeyConflict,
    /// The interactive queue is full.
    #[error("too many purchases are waiting; retry shortly")]
    QueueFull,
    /// No such purchase.
    #[error("no such purchase")]
    NotFound,
    /// The seller's CardTrader account is not connected.
    #[error("{}", crate::accounts::not_connected_reason(*.0))]
    NotConnected(Option<crate::accounts::AccountStatus>),
    /// The purchase is not in a state that allows this (e.g. Retry of a completed one).
    #[error("{0}")]
    WrongState(String),
    /// The driver's lease was taken over: it must stop and write nothing more.
    #[error("the purchase's lease was taken over")]
    LeaseLost,
    /// Storage failure.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A bug: something that cannot fail did.
    #[error("{0}")]
    Internal(String),
}
