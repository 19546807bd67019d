//! Purchases as compensating sagas (issue #6, in progress): the pure state machine ([`saga`]) and
//! the reservation that starts a purchase ([`store`]); the step log, the driver on the durable jobs
//! and `PurchaseService` build on them.

pub mod saga;
pub mod store;

use chrono::{DateTime, Utc};
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
    /// Storage failure.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A bug: something that cannot fail did.
    #[error("{0}")]
    Internal(String),
}
