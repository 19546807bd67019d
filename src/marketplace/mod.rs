//! The CardTrader API client. Every call goes through the seller's rate limiter and the host's circuit
//! breaker, is classified into [`MarketplaceError`], retried with full-jitter backoff only when it is
//! idempotent, and recorded in metrics. Payloads are read tolerantly (see [`types`]).

mod breaker;
mod call;
mod error;
pub mod export;
pub mod types;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::Method;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

pub use breaker::{BreakerState, CircuitBreaker};
pub use error::MarketplaceError;
use types::{
    BlueprintRef, BulkAccepted, BulkJob, BulkUpdateItem, Envelope, Expansion, GamesBody, Info,
    MarketProduct, NewProduct, Product, ProductResource, ProductUpdate, SellerOrder,
};

use crate::{
    config::CardTraderConfig,
    metrics::Metrics,
    rate_limit::{Priority, RateLimiter, Scope},
};
use call::CallSpec;

/// The seller a call is made for: their token, and the key of their rate-limit buckets.
#[derive(Debug, Clone, Copy)]
pub struct Seller<'a> {
    /// Rate-limit key: the seller's user id, the same on every replica.
    pub key: &'a str,
    /// The seller's CardTrader bearer token.
    pub token: &'a SecretString,
}

/// How long the caller may wait, whether it is interactive, and what stops it.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Interactive calls may use the reserved share of the rate.
    pub priority: Priority,
    /// Nothing (rate-limit waits and retries included) runs past this instant.
    pub deadline: Instant,
    /// Once cancelled, nothing more is sent: a rate-limit wait ends at once and no further request
    /// (or retry) goes out. A job passes its lease token, so a worker that lost its lease stops.
    pub cancel: Option<CancellationToken>,
}

impl CallOptions {
    /// Interactive, with `budget` from now.
    pub fn interactive(budget: Duration) -> Self {
        Self {
            priority: Priority::Interactive,
            deadline: Instant::now() + budget,
            cancel: None,
        }
    }

    /// Bulk, with `budget` from now.
    pub fn bulk(budget: Duration) -> Self {
        Self {
            priority: Priority::Bulk,
            deadline: Instant::now() + budget,
            cancel: None,
        }
    }

    /// The same options, stopped by `cancel`.
    pub fn stopped_by(mut self, cancel: CancellationToken) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// Whether the call must send nothing more.
    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// When CardTrader will have answered or dropped a write sent with these options, as far as
    /// this client can know: the call's deadline, plus `grace` for a request CardTrader received
    /// but had not applied when the client stopped waiting. Recorded before a write is sent, so a
    /// worker that takes the job over never decides "not applied" while the write may still land.
    pub fn settled_by(&self, grace: Duration) -> chrono::DateTime<chrono::Utc> {
        let left = self.deadline.saturating_duration_since(Instant::now()) + grace;
        chrono::Utc::now() + chrono::TimeDelta::from_std(left).unwrap_or(chrono::TimeDelta::MAX)
    }
}

/// Which part of the inventory an export covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFilter {
    /// Every product.
    All,
    /// The products of one blueprint.
    Blueprint(i64),
    /// The products of one expansion.
    Expansion(i64),
}

/// The client; cheap to clone, one per process.
#[derive(Debug, Clone)]
pub struct MarketplaceClient {
    inner: Arc<call::Inner>,
}

impl MarketplaceClient {
    /// A client for `BRX_CARDTRADER_BASE_URL` with the configured timeouts.
    pub fn new(
        config: &CardTraderConfig,
        limiter: RateLimiter,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("brx-sync/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let breaker = CircuitBreaker::new(config.breaker_failures, config.breaker_open_for);
        Ok(Self {
            inner: Arc::new(call::Inner {
                http,
                base_url: config.base_url.trim_end_matches('/').to_owned(),
                limiter,
                breaker,
                metrics,
                attempts: config.attempts,
                request_timeout: config.request_timeout,
                export_timeout: config.export_timeout,
                max_export_product_bytes: config.max_product_bytes as usize,
            }),
        })
    }

    /// The circuit breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// The rate limiter calls go through.
    pub fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    /// `GET /info`: checks a token and tells whose it is.
    pub async fn info(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
    ) -> Result<Info, MarketplaceError> {
        let spec = self.inner.read("info", "/info".into(), Scope::General);
        self.inner
            .call_json(seller, options, spec, None::<&()>)
            .await
    }

    /// `GET /games`.
    pub async fn games(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
    ) -> Result<Vec<types::Game>, MarketplaceError> {
        let spec = self.inner.read("games", "/games".into(), Scope::General);
        let body: GamesBody = self
            .inner
            .call_json(seller, options, spec, None::<&()>)
            .await?;
        Ok(body.into_games())
    }

    /// `GET /expansions/export`: the expansions the seller has products in.
    pub async fn expansions_export(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
    ) -> Result<Vec<Expansion>, MarketplaceError> {
        let spec = self.inner.read(
            "expansions_export",
            "/expansions/export".into(),
            Scope::General,
        );
        self.inner
            .call_json(seller, options, spec, None::<&()>)
            .await
    }

    /// `GET /blueprints/export?expansion_id=`: the blueprints of one expansion. CardTrader answers
    /// 404 for an unknown expansion, and for one whose export is not built yet.
    pub async fn blueprints_export(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
        expansion_id: i64,
    ) -> Result<Vec<BlueprintRef>, MarketplaceError> {
        let path = format!("/blueprints/export?expansion_id={expansion_id}");
        let spec = self.inner.read("blueprints_export", path, Scope::General);
        self.inner
            .call_json(seller, options, spec, None::<&()>)
            .await
    }

    /// `GET /marketplace/products?blueprint_id=`: the 25 cheapest offers, keyed by blueprint id.
    pub async fn marketplace_products(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
        blueprint_id: i64,
    ) -> Result<HashMap<i64, Vec<MarketProduct>>, MarketplaceError> {
        let path = format!("/marketplace/products?blueprint_id={blueprint_id}");
        let spec = self
            .inner
            .read("marketplace_products", path, Scope::Marketplace);
        let body: HashMap<String, Vec<MarketProduct>> = self
            .inner
            .call_json(seller, options, spec, None::<&()>)
            .await?;
        types::marketplace_by_blueprint(body)
            .map_err(|reason| MarketplaceError::Unavailable { reason })
    }

    /// `GET /products/export`, read whole. Meant for filtered exports; full inventories are streamed
    /// by the sync instead.
    pub async fn export_products(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
        filter: ExportFilter,
    ) -> Result<Vec<Product>, MarketplaceError> {
        let mut spec = self
            .inner
            .read("products_export", export_path(filter), Scope::General);
        spec.timeout = self.inner.export_timeout;
        let mut products: Vec<Product> = self
            .inner
            .call_json(seller, options, spec, None::<&()>)
            .await?;
        for product in &mut products {
            learn_from_filter(product, filter);
        }
        Ok(products)
    }

    /// `GET /products/export`, streamed: products are parsed as they arrive, so memory stays bounded
    /// whatever the inventory size, and a product longer than `BRX_SYNC_MAX_PRODUCT_BYTES` ends the
    /// stream with an error. Starting is retried like any read; a failure mid-stream ends the stream with
    /// an error and is the caller's to retry.
    pub async fn export_stream(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
        filter: ExportFilter,
    ) -> Result<
        impl futures::Stream<Item = Result<Product, export::ExportError>> + use<>,
        MarketplaceError,
    > {
        let mut spec = self
            .inner
            .read("products_export", export_path(filter), Scope::General);
        spec.timeout = self.inner.export_timeout;
        let open = || self.inner.open_stream(seller, &options, &spec);
        let response = backon::Retryable::retry(
            open,
            crate::retry::full_jitter(
                Duration::from_millis(200),
                Duration::from_secs(5),
                Some(self.inner.attempts.saturating_sub(1) as usize),
            ),
        )
        .when(|err: &MarketplaceError| err.is_transient() && Instant::now() < options.deadline)
        .await?;
        let products = export::products(
            Box::pin(response.bytes_stream()),
            self.inner.max_export_product_bytes,
        );
        // Without a token nothing stops it: a token that never fires.
        let cancel = options.cancel.clone().unwrap_or_default();
        Ok(futures::TryStreamExt::map_ok(
            export::stopped_by(products, cancel),
            move |mut product| {
                learn_from_filter(&mut product, filter);
                product
            },
        ))
    }

    /// `POST /products`. Not idempotent (CardTrader merges into an identical product by adding
    /// quantity): never retried; a timeout means the outcome is unknown.
    pub async fn create_product(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
        product: &NewProduct,
    ) -> Result<ProductResource, MarketplaceError> {
        let spec = self
            .inner
            .write("product_create", Method::POST, "/products".into(), false);
        let envelope: Envelope = self
            .inner
            .call_json(seller, options, spec, Some(product))
            .await?;
        resource(envelope)
    }

    /// `PUT /products/:id` with absolute values: idempotent, so retried.
    pub async fn update_product(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
        product_id: i64,
        update: &ProductUpdate,
    ) -> Result<ProductResource, MarketplaceError> {
        let spec = self.inner.write(
            "product_update",
            Method::PUT,
            format!("/products/{product_id}"),
            true,
        );
        let envelope: Envelope = self
            .inner
            .call_json(seller, options, spec, Some(update))
            .await?;
        resource(envelope)
    }

    /// `DELETE /products/:id`. A 404 means it is already gone, which is what the caller wanted.
    pub async fn delete_product(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
        product_id: i64,
    ) -> Result<(), MarketplaceError> {
        let spec = self.inner.write(
            "product_delete",
            Method::DELETE,
            format!("/products/{product_id}"),
            true,
        );
        match self
            .inner
            .call_json::<Envelope>(seller, options, spec, None::<&()>)
            .await
        {
            Ok(_) | Err(MarketplaceError::NotFound { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// `POST /products/bulk_update` with absolute values (idempotent, so retried); returns the job
    /// to poll with [`Self::bulk_job`].
    pub async fn bulk_update(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
        items: &[BulkUpdateItem],
    ) -> Result<String, MarketplaceError> {
        let spec = self.inner.write(
            "products_bulk_update",
            Method::POST,
            "/products/bulk_update".into(),
            true,
        );
        let body = serde_json::json!({ "products": items });
        let accepted: BulkAccepted = self
            .inner
            .call_json(seller, options, spec, Some(&body))
            .await?;
        Ok(accepted.job)
    }

    /// `POST /products/bulk_destroy` (deleting twice is harmless, so retried); returns the job.
    pub async fn bulk_destroy(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
        product_ids: &[i64],
    ) -> Result<String, MarketplaceError> {
        let spec = self.inner.write(
            "products_bulk_destroy",
            Method::POST,
            "/products/bulk_destroy".into(),
            true,
        );
        let products: Vec<serde_json::Value> = product_ids
            .iter()
            .map(|id| serde_json::json!({ "id": id }))
            .collect();
        let body = serde_json::json!({ "products": products });
        let accepted: BulkAccepted = self
            .inner
            .call_json(seller, options, spec, Some(&body))
            .await?;
        Ok(accepted.job)
    }

    /// `GET /jobs/:uuid`, under its own limit of one call a second.
    pub async fn bulk_job(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
        uuid: &str,
    ) -> Result<BulkJob, MarketplaceError> {
        let spec = self
            .inner
            .read("job_status", format!("/jobs/{uuid}"), Scope::Jobs);
        self.inner
            .call_json(seller, options, spec, None::<&()>)
            .await
    }

    /// The seller's orders sold since `since` (by the days `GET /orders` filters on, newest first),
    /// paging until an order older than `since` or the last page, at most `max_pages` pages of 100.
    /// `None` when there were more pages than that: the list is then not known to be complete.
    pub async fn orders_since(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
        since: chrono::DateTime<chrono::Utc>,
        max_pages: u32,
    ) -> Result<Option<Vec<SellerOrder>>, MarketplaceError> {
        const PAGE: usize = 100;
        // `from` is a day; the day before covers clocks on either side of midnight.
        let from = (since - chrono::TimeDelta::days(1)).format("%Y-%m-%d");
        let mut orders = Vec::new();
        for page in 1..=max_pages {
            let path = format!(
                "/orders?order_as=seller&sort=date.desc&limit={PAGE}&page={page}&from={from}"
            );
            let spec = self.inner.read("orders", path, Scope::General);
            let listed: Vec<SellerOrder> = self
                .inner
                .call_json(seller, options.clone(), spec, None::<&()>)
                .await?;
            let short = listed.len() < PAGE;
            let older = listed
                .iter()
                .any(|order| order.sold_at().is_some_and(|at| at < since));
            orders.extend(listed);
            if short || older {
                return Ok(Some(orders));
            }
        }
        Ok(None)
    }

    /// `POST /products/:id/increment`. Not idempotent: never retried. Returns the product, or `None`
    /// when the quantity reached 0 and CardTrader deleted it.
    pub async fn increment_product(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
        product_id: i64,
        delta: i64,
    ) -> Result<Option<ProductResource>, MarketplaceError> {
        let path = format!("/products/{product_id}/increment");
        let spec = self
            .inner
            .write("product_increment", Method::POST, path, false);
        let body = serde_json::json!({ "delta_quantity": delta });
        let envelope: Envelope = self
            .inner
            .call_json(seller, options, spec, Some(&body))
            .await?;
        Ok(envelope.resource.filter(|product| product.quantity > 0))
    }
}

/// The documented export carries no expansion, but one asked for by expansion holds only products of
/// that expansion: the filter says it.
fn learn_from_filter(product: &mut Product, filter: ExportFilter) {
    if let ExportFilter::Expansion(expansion_id) = filter {
        product.learn_expansion(expansion_id);
    }
}

fn export_path(filter: ExportFilter) -> String {
    match filter {
        ExportFilter::All => "/products/export".to_owned(),
        ExportFilter::Blueprint(id) => format!("/products/export?blueprint_id={id}"),
        ExportFilter::Expansion(id) => format!("/products/export?expansion_id={id}"),
    }
}

fn resource(envelope: Envelope) -> Result<ProductResource, MarketplaceError> {
    for warning in envelope.warning_messages() {
        tracing::debug!(%warning, "CardTrader warning");
    }
    envelope
        .resource
        .ok_or_else(|| MarketplaceError::Unavailable {
            reason: "the answer carried no resource".into(),
        })
}

impl CallSpec {
    /// Whether this call may be repeated without changing the outcome.
    pub(crate) fn retryable(&self) -> bool {
        self.idempotent
    }
}
