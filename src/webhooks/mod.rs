//! CardTrader's order webhooks: `POST /webhooks/cardtrader/{user_id}` on the HTTP side port stores a
//! verified event, and the `webhook_apply` job applies it to local stock.

use axum::{Router, extract::Path, http::StatusCode, routing::post};
use sqlx::PgPool;

use crate::{
    accounts::Accounts,
    jobs::worker::{JobContext, JobFailure, JobHandler},
};

/// The job kind that applies a seller's stored webhook events.
pub const KIND_APPLY: &str = "webhook_apply";

/// Receives webhook deliveries.
#[derive(Debug, Clone)]
pub struct WebhookIntake {
    #[allow(dead_code)]
    pool: PgPool,
    #[allow(dead_code)]
    accounts: Accounts,
}

impl WebhookIntake {
    /// Intake storing events in `pool`, verifying them with the sellers' shared secrets.
    pub fn new(pool: PgPool, accounts: Accounts) -> Self {
        Self { pool, accounts }
    }
}

/// The webhook route, to merge into the side port's router.
pub fn routes(intake: WebhookIntake) -> Router {
    Router::new()
        .route("/webhooks/cardtrader/{user_id}", post(receive))
        .with_state(intake)
}

async fn receive(Path(_user_id): Path<String>) -> StatusCode {
    StatusCode::NOT_IMPLEMENTED
}

/// The `webhook_apply` job kind.
#[derive(Debug, Clone)]
pub struct ApplyHandler {
    /// PostgreSQL.
    pub pool: PgPool,
}

#[tonic::async_trait]
impl JobHandler for ApplyHandler {
    fn kind(&self) -> &'static str {
        KIND_APPLY
    }

    async fn run(&self, _context: JobContext) -> Result<(), JobFailure> {
        Ok(())
    }
}
