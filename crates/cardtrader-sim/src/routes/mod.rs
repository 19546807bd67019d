//! The `/api/v2` router and its gate: bearer auth, request statistics, rate limits and faults, in
//! that order, before any handler runs.

mod cart;
mod export;
mod marketplace;
mod orders;
mod products;
mod reference;

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};

use super::{
    errors::ApiError,
    faults,
    rate_limit::{Rejection, Scope},
    state::{Seller, SimState, lock},
};

/// The authenticated caller, put in request extensions by the gate.
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub(crate) Arc<Seller>);

/// The whole API under `/api/v2`.
pub(crate) fn api(state: Arc<SimState>) -> Router {
    let api = Router::new()
        .route("/info", get(reference::info))
        .route("/games", get(reference::games))
        .route("/categories", get(reference::categories))
        .route("/expansions", get(reference::expansions))
        .route("/expansions/export", get(reference::expansions_export))
        .route("/blueprints/export", get(reference::blueprints_export))
        .route("/shipping_methods", get(reference::shipping_methods))
        .route("/marketplace/products", get(marketplace::products))
        .route("/products/export", get(export::export))
        .route("/products", post(products::create))
        .route(
            "/products/{id}",
            put(products::update).delete(products::destroy),
        )
        .route("/products/{id}/increment", post(products::increment))
        .route("/products/bulk_create", post(products::bulk_create))
        .route("/products/bulk_update", post(products::bulk_update))
        .route("/products/bulk_destroy", post(products::bulk_destroy))
        .route("/jobs/{uuid}", get(products::job))
        .route("/cart", get(cart::show))
        .route("/cart/add", post(cart::add))
        .route("/cart/remove", post(cart::remove))
        .route("/cart/purchase", post(cart::purchase))
        .route("/orders", get(orders::list))
        .route("/orders/{id}", get(orders::show))
        .route("/orders/{id}/ship", put(orders::ship))
        .route(
            "/orders/{id}/request-cancellation",
            put(orders::request_cancellation),
        )
        .route(
            "/orders/{id}/confirm-cancellation",
            put(orders::confirm_cancellation),
        )
        .fallback(|| async { ApiError::NotFound("Not found".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state);
    Router::new().nest("/api/v2", api)
}

async fn gate(State(state): State<Arc<SimState>>, mut req: Request, next: Next) -> Response {
    let Some(seller) = bearer(req.headers()).and_then(|token| state.by_token(token)) else {
        return ApiError::Unauthorized.into_response();
    };
    let scope = scope_of(req.method(), req.uri().path());
    if let Err(rejection) = admit(&state, &seller, scope) {
        return too_many(rejection, state.config.rate_limit_headers);
    }
    req.extensions_mut().insert(Caller(seller));
    faults::apply(state, req, next).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}

/// Paths as seen inside the nest (prefix stripped) or outside it; both end the same way.
fn scope_of(method: &Method, path: &str) -> Scope {
    if method == Method::GET && path.ends_with("/marketplace/products") {
        Scope::Marketplace
    } else if method == Method::GET && path.contains("/jobs/") {
        Scope::Jobs
    } else {
        Scope::General
    }
}

fn admit(state: &SimState, seller: &Seller, scope: Scope) -> Result<(), Rejection> {
    let now = Instant::now();
    let limits = state.limits();
    let mut meter = lock(&seller.meter);
    meter.record(scope, now);
    if state.take_burst() {
        meter.note_rejected();
        let message = format!(
            "Too many requests: max {} requests per 10 seconds",
            limits.general_per_10s
        );
        return Err(Rejection {
            message,
            limit: limits.general_per_10s,
            retry_after: std::time::Duration::from_secs(1),
        });
    }
    meter.admit(scope, limits, now)
}

/// 429 with the documented body; headers only when the switch asks for them (CardTrader sends none).
fn too_many(rejection: Rejection, with_headers: bool) -> Response {
    let body = Json(serde_json::json!({ "error": rejection.message }));
    let mut response = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
    if with_headers {
        let secs = rejection.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        headers.insert("x-ratelimit-limit", HeaderValue::from(rejection.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(0));
        headers.insert("x-ratelimit-reset", HeaderValue::from(secs));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_path() {
        assert_eq!(
            scope_of(&Method::GET, "/api/v2/marketplace/products"),
            Scope::Marketplace
        );
        assert_eq!(scope_of(&Method::GET, "/jobs/abc"), Scope::Jobs);
        assert_eq!(scope_of(&Method::GET, "/products/export"), Scope::General);
    }
}
