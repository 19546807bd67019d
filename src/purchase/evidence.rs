//! What a purchase driver reads to judge a write whose answer was lost: the product on CardTrader,
//! and the sales of it since its quantity was last read, from CardTrader's order list (read before
//! and after the product, so a sale landing in between is caught) and the webhook orders this
//! service stored. Reads only; the verdict itself is [`super::verdict`]'s.

use chrono::{DateTime, Utc};

use super::verdict::{CLOCK_MARGIN, Sale, SalesSince};
use crate::{
    jobs::JobContext,
    marketplace::{CallOptions, MarketplaceClient, MarketplaceError, Seller, types::SellerOrder},
};

/// Pages of `GET /orders` read at most (100 orders each) to find the sales since a read.
const MAX_ORDER_PAGES: u32 = 5;

/// Why the sales since a read are not known.
#[derive(Debug)]
pub(crate) enum Unknown {
    /// CardTrader could not be read now; later may work.
    Unreadable(MarketplaceError),
    /// A sale of the product landed while it was being read: reading again will settle it.
    Moving,
    /// More orders than can be read since then: they cannot be known.
    TooMany,
    /// The stored webhook orders could not be read.
    Storage(String),
}

/// The sales of `product_id` since `read_at`, around a read of the product that `read` makes.
pub(crate) async fn sales_around<T>(
    context: &JobContext,
    client: &MarketplaceClient,
    seller: Seller<'_>,
    options: &CallOptions,
    product_id: i64,
    read_at: DateTime<Utc>,
    read: impl std::future::Future<Output = Result<T, MarketplaceError>>,
) -> Result<(T, SalesSince), Unknown> {
    let since = read_at - CLOCK_MARGIN;
    let orders = |options: CallOptions| async move {
        client
            .orders_since(seller, options, since, MAX_ORDER_PAGES)
            .await
            .map_err(Unknown::Unreadable)?
            .ok_or(Unknown::TooMany)
    };
    let first = orders(options.clone()).await?;
    let seen = read.await.map_err(Unknown::Unreadable)?;
    let second = orders(options.clone()).await?;
    let touching = |orders: &[SellerOrder]| -> Vec<(i64, i64, String)> {
        let mut found: Vec<(i64, i64, String)> = orders
            .iter()
            .filter(|order| order.units_of(product_id) > 0)
            .map(|order| (order.id, order.units_of(product_id), order.state.clone()))
            .collect();
        found.sort();
        found
    };
    if touching(&first) != touching(&second) {
        return Err(Unknown::Moving);
    }
    let mut sales: Vec<Sale> = second
        .iter()
        .filter(|order| order.units_of(product_id) > 0)
        .map(|order| Sale {
            order_id: order.id,
            units: order.units_of(product_id),
            at: order.sold_at(),
            cancelled: is_cancelled(&order.state),
        })
        .collect();
    // Webhooks may know an order the (lightly cached) list does not show yet. A delivery's time is
    // when it was sent, not when the sale happened, so such a sale may or may not predate the read.
    let recorded = {
        let mut read = context
            .read()
            .await
            .map_err(|err| Unknown::Storage(err.to_string()))?;
        crate::webhooks::recorded_sales(&mut read, context.user_id(), product_id, since)
            .await
            .map_err(|err| Unknown::Storage(err.to_string()))?
    };
    for order in recorded {
        if !sales.iter().any(|sale| sale.order_id == order.order_id) {
            sales.push(Sale {
                order_id: order.order_id,
                units: order.units,
                at: None,
                cancelled: is_cancelled(&order.state),
            });
        }
    }
    Ok((seen, SalesSince::of(&sales, read_at)))
}

/// Whether an order in `state` may have put its units back on sale.
fn is_cancelled(state: &str) -> bool {
    matches!(state, "canceled" | "cancelled" | "request_for_cancel")
}
