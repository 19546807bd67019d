//! [`Inventory`]: the shop's reads and edits of sellers' items, as the RPCs see them. An edit is
//! refused for a seller who is not connected (nothing could push it); an accepted one commits with
//! its outbox row and wakes a worker to push it.

use crate::storage::Pg;

use super::{
    CreateStatus, InventoryError, Item, ItemEdit, ListFilter, NewItem, Offer, OfferQuery, store,
};
use crate::{
    accounts::{AccountError, AccountStatus, Accounts},
    domain::UserId,
    jobs::{Lane, wake::JobWakeups},
};

/// Sellers' items and the storefront's offers; cheap to clone.
#[derive(Debug, Clone)]
pub struct Inventory {
    pool: Pg,
    accounts: Accounts,
    /// Workers would find a push at their next poll; this starts it at once.
    wakeups: JobWakeups,
}

impl Inventory {
    /// The inventory stored in `pool`; edits are allowed for sellers `accounts` has connected.
    pub fn new(pool: Pg, accounts: Accounts, wakeups: JobWakeups) -> Self {
        Self {
            pool,
            accounts,
            wakeups,
        }
    }

    /// A page of the seller's items matching `filter`, in product id order after `after`.
    pub async fn list(
        &self,
        user_id: UserId,
        filter: &ListFilter,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Item>, InventoryError> {
        store::list(&self.pool, user_id, filter, after, limit).await
    }

    /// The seller's item `product_id`.
    pub async fn get(&self, user_id: UserId, product_id: i64) -> Result<Item, InventoryError> {
        store::get(&self.pool, user_id, product_id).await
    }

    /// Applies `edit` locally and queues its push; returns the item as it now is.
    pub async fn update(
        &self,
        user_id: UserId,
        product_id: i64,
        edit: &ItemEdit,
    ) -> Result<Item, InventoryError> {
        self.require_connected(user_id).await?;
        let item = store::update(&self.pool, user_id, product_id, edit).await?;
        self.wakeups.announce(Lane::Interactive);
        Ok(item)
    }

    /// Deletes the item locally and queues its removal from CardTrader.
    pub async fn delete(&self, user_id: UserId, product_id: i64) -> Result<(), InventoryError> {
        self.require_connected(user_id).await?;
        store::delete(&self.pool, user_id, product_id).await?;
        self.wakeups.announce(Lane::Interactive);
        Ok(())
    }

    /// Records a product to list and queues its create; returns the tag that follows it.
    pub async fn create(&self, new: &NewItem) -> Result<String, InventoryError> {
        self.require_connected(new.user_id).await?;
        let tag = store::create(&self.pool, new).await?;
        self.wakeups.announce(Lane::Interactive);
        Ok(tag)
    }

    /// Where the create tagged `tag` stands.
    pub async fn create_status(
        &self,
        user_id: UserId,
        tag: &str,
    ) -> Result<CreateStatus, InventoryError> {
        store::create_status(&self.pool, user_id, tag).await
    }

    /// A page of the storefront's offers of one print or blueprint.
    pub async fn offers(&self, query: &OfferQuery) -> Result<Vec<Offer>, InventoryError> {
        store::offers(&self.pool, query).await
    }

    /// Edits are refused for a seller who is not connected: nothing could push them.
    async fn require_connected(&self, user_id: UserId) -> Result<(), InventoryError> {
        match self.accounts.get(user_id).await {
            Ok(account) if account.status == AccountStatus::Connected => Ok(()),
            Ok(account) => Err(InventoryError::NotConnected(Some(account.status))),
            Err(AccountError::NotFound) => Err(InventoryError::NotConnected(None)),
            Err(other) => Err(InventoryError::Accounts(other)),
        }
    }
}
