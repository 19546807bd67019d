//! CardTrader's order webhooks: `POST /webhooks/cardtrader/{user_id}` on the public HTTP listener stores a
//! verified event, and the `webhook_apply` job applies it to local stock once per
//! order, following CardTrader's stock rule. Layout: `payload` (the body), `rule` (the stock rule),
//! `intake` (the route), `apply` (the job), `store` (the SQL).
//!
//! Answers: 200 once stored (a redelivery of a stored event id too, changing nothing); 413 past
//! [`MAX_BODY_BYTES`]; 401 for a missing or wrong `Signature` *and* for a seller that is unknown or
//! not connected, so the answer tells a caller without the secret nothing about which sellers exist
//! (a 404 would); 400 for a signed body that is not an order delivery. Only 200 stores anything.
//! `mode: "test"` deliveries are stored and marked applied without touching stock. Retention deletes
//! applied events, and much later the records of orders long quiet.

mod apply;
mod intake;
mod payload;
mod rule;
mod store;

pub use store::RecordedSale;

/// The orders of `product_id` that CardTrader's webhooks told this service about since `since`,
/// each as its latest delivery shows it: evidence of sales a purchase must not mistake for its own
/// decrement.
pub async fn recorded_sales(
    conn: &mut sqlx::PgConnection,
    user_id: crate::domain::UserId,
    product_id: i64,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<RecordedSale>, sqlx::Error> {
    store::recorded_sales(conn, user_id, product_id, since).await
}

/// Deletes up to `batch` webhook events applied before `cutoff` (never an unapplied one, nor one
/// whose unknown products still wait for their sync); returns how many. For retention.
pub async fn delete_events_applied_before(
    pool: &Pg,
    cutoff: chrono::DateTime<chrono::Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    store::delete_events_applied_before(pool, cutoff, batch).await
}

/// Deletes up to `batch` order records no delivery touched since `cutoff` and with no event left
/// to apply; returns how many. For retention, with a cutoff no later than the events' one.
pub async fn delete_orders_untouched_since(
    pool: &Pg,
    cutoff: chrono::DateTime<chrono::Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    store::delete_orders_untouched_since(pool, cutoff, batch).await
}

use crate::storage::Pg;
use axum::{Router, extract::DefaultBodyLimit, routing::post};

use crate::{
    accounts::Accounts,
    jobs::{
        JobContext, KindName,
        wake::JobWakeups,
        worker::{JobFailure, JobHandler},
    },
    metrics::Metrics,
};

/// Largest body accepted; an order with hundreds of lines stays far below it.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// How long a seller's verification key (the shared secret, decrypted) is kept after it verified
/// a delivery: a busy seller's deliveries then cost no read and no decryption. A key replaced by a
/// new connection is looked up again at its first mismatch, and a disconnected seller is refused
/// by the statement that stores the delivery, whatever the cache holds.
const KEY_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Sellers whose keys are kept at most.
const KEYS_KEPT: u64 = 100_000;

/// Receives webhook deliveries.
#[derive(Clone)]
pub struct WebhookIntake {
    pool: Pg,
    accounts: Accounts,
    wakeups: JobWakeups,
    keys: moka::sync::Cache<crate::domain::UserId, std::sync::Arc<secrecy::SecretString>>,
}

impl std::fmt::Debug for WebhookIntake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookIntake")
            .field("keys_cached", &self.keys.entry_count())
            .finish_non_exhaustive()
    }
}

impl WebhookIntake {
    /// Intake storing events in `pool`, verifying them with the sellers' shared secrets, and waking
    /// a worker through `wakeups` for each new event.
    pub fn new(pool: Pg, accounts: Accounts, wakeups: JobWakeups) -> Self {
        Self {
            pool,
            accounts,
            wakeups,
            keys: moka::sync::Cache::builder()
                .max_capacity(KEYS_KEPT)
                .time_to_live(KEY_TTL)
                .build(),
        }
    }
}

/// The webhook route: the whole of the public HTTP listener. Every answer is counted and timed by
/// status, refusals included.
pub fn routes(intake: WebhookIntake, metrics: Metrics) -> Router {
    Router::new()
        .route("/webhooks/cardtrader/{user_id}", post(intake::receive))
        // Refused from Content-Length before reading, or as soon as a chunked body passes it.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(axum::middleware::from_fn(move |request, next| {
            measured(metrics.clone(), request, next)
        }))
        .with_state(intake)
}

async fn measured(
    metrics: Metrics,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let code = response.status().as_u16().to_string();
    metrics.webhook_requests.with_label_values(&[&code]).inc();
    metrics
        .webhook_duration
        .with_label_values(&[&code])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The `webhook_apply` job kind.
#[derive(Debug, Clone, Default)]
pub struct ApplyHandler;

#[tonic::async_trait]
impl JobHandler for ApplyHandler {
    fn kind(&self) -> KindName {
        KindName::WebhookApply
    }

    async fn run(&self, context: &JobContext) -> Result<(), JobFailure> {
        apply::run(context).await
    }
}
