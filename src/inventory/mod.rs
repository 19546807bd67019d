//! The shop's view of sellers' stock and the shop's own edits of it. An edit commits locally with a
//! row in the push outbox (`inventory_pushes`) and a coalesced `inventory_push` job in the same
//! transaction, so it survives CardTrader being down and the replica dying; the job ([`push`])
//! sends it. The outbox holds one row per item with the latest wanted values: a newer edit merges
//! into it, superseding what was pending.

mod carried;
mod decide;
mod outbox;
pub mod push;
pub mod requeue;
mod service;
mod store;

pub use carried::{CarriedItem, copy_carried_in};
pub use decide::RETRY_ROUNDS;
pub use service::Inventory;
pub use store::{PAGE_BEGIN, page_statement};

/// Of the seller's `product_ids`, those with a local edit still on its way to CardTrader, in the
/// caller's transaction. A sync leaves them alone: its export predates the edit, and writing it
/// would undo the edit locally (or bring back an item deleted locally) until the push lands.
pub async fn pending_pushes(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
    product_ids: &[i64],
) -> Result<std::collections::HashSet<i64>, sqlx::Error> {
    Ok(outbox::pending_of(conn, user_id, product_ids)
        .await?
        .into_iter()
        .collect())
}

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::domain::UserId;

/// Where an item's local edits stand on CardTrader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushStatus {
    /// CardTrader has every edit.
    Synced,
    /// An edit is waiting (or being pushed).
    Pending,
    /// CardTrader refused the last push, for this reason.
    Failed(String),
}

/// One item as stored, with its push status.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The seller.
    pub user_id: UserId,
    /// CardTrader product id.
    pub product_id: i64,
    /// CardTrader blueprint.
    pub blueprint_id: i64,
    /// Expansion, where known.
    pub expansion_id: Option<i64>,
    /// The shop's print, `None` while unmapped.
    pub print_id: Option<i64>,
    /// Name.
    pub name: String,
    /// Quantity listed.
    pub quantity: i32,
    /// Held by in-flight purchases.
    pub reserved_quantity: i32,
    /// Price in cents of `currency`.
    pub price_cents: i64,
    /// The seller's currency.
    pub currency: String,
    /// Editable properties.
    pub properties: Map<String, Value>,
    /// Free text.
    pub description: Option<String>,
    /// The seller's free field.
    pub user_data_field: Option<String>,
    /// Graded.
    pub graded: Option<bool>,
    /// Last local change.
    pub updated_at: DateTime<Utc>,
    /// Push status.
    pub push: PushStatus,
}

/// Which of a seller's items to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this blueprint.
    pub blueprint_id: Option<i64>,
    /// Only this expansion.
    pub expansion_id: Option<i64>,
    /// Case-insensitive name prefix.
    pub name_prefix: Option<String>,
    /// `Some(true)`: mapped to a print only; `Some(false)`: unmapped only.
    pub mapped: Option<bool>,
}

/// An edit: only the fields given change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemEdit {
    /// New price in cents.
    pub price_cents: Option<i64>,
    /// New quantity (never below the reservations).
    pub quantity: Option<i32>,
    /// New description.
    pub description: Option<String>,
    /// Properties to set (merged into the item's).
    pub properties: Option<Map<String, Value>>,
    /// New free field.
    pub user_data_field: Option<String>,
}

impl ItemEdit {
    /// Whether the edit changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A product to list on CardTrader.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    /// The seller.
    pub user_id: UserId,
    /// Blueprint to list.
    pub blueprint_id: i64,
    /// Price in cents.
    pub price_cents: i64,
    /// Quantity.
    pub quantity: i32,
    /// Free text.
    pub description: Option<String>,
    /// Editable properties.
    pub properties: Map<String, Value>,
    /// Graded.
    pub graded: bool,
}

/// Where a create stands.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateStatus {
    /// The tag sent as the product's user_data_field.
    pub create_tag: String,
    /// Pending, synced (created) or failed.
    pub push: PushStatus,
    /// The item, once created.
    pub item: Option<Item>,
}

/// Storefront offers of which print or blueprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferKey {
    /// A shop print.
    Print(i64),
    /// A CardTrader blueprint.
    Blueprint(i64),
}

/// One seller's available stock of an offered print.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// The seller.
    pub user_id: UserId,
    /// The product.
    pub product_id: i64,
    /// Blueprint.
    pub blueprint_id: i64,
    /// Print, where mapped.
    pub print_id: Option<i64>,
    /// Name.
    pub name: String,
    /// Quantity minus reservations.
    pub available: i32,
    /// Price in cents.
    pub price_cents: i64,
    /// Currency.
    pub currency: String,
    /// Properties.
    pub properties: Map<String, Value>,
}

/// Offer filters and the page position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferQuery {
    /// Print or blueprint.
    pub key: OfferKey,
    /// At least this many available units.
    pub min_available: i32,
    /// At most this price.
    pub max_price_cents: Option<i64>,
    /// After this `(price, seller, product)` of the previous page.
    pub after: Option<(i64, uuid::Uuid, i64)>,
    /// Page size.
    pub limit: i64,
}

/// Why an inventory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// No such item for this seller.
    #[error("no such item")]
    NotFound,
    /// The quantity would fall below what in-flight purchases reserve.
    #[error("quantity {requested} is below the {reserved} reserved by purchases in flight")]
    BelowReserved {
        /// Reserved units.
        reserved: i32,
        /// The quantity asked for.
        requested: i32,
    },
    /// The item has reservations, so it cannot be deleted now.
    #[error("{reserved} units are reserved by purchases in flight")]
    Reserved {
        /// Reserved units.
        reserved: i32,
    },
    /// The seller's account is not connected.
    #[error("{}", crate::accounts::not_connected_reason(*.0))]
    NotConnected(Option<crate::accounts::AccountStatus>),
    /// Reading the seller's account failed.
    #[error(transparent)]
    Accounts(crate::accounts::AccountError),
    /// A database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Something that should not happen.
    #[error("{0}")]
    Internal(String),
}
