//! The `/_sim` admin API tests and the demo drive over HTTP: faults, statistics, new sellers and
//! changes "behind the client's back". No bearer token, no rate limits.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, patch, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Faults,
    errors::ApiError,
    ops,
    state::{SimState, lock},
};

/// Routes under `/_sim`.
pub(crate) fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/stats", get(stats))
        .route("/_sim/sellers", post(add_seller))
        .route("/_sim/sellers/{token}", patch(patch_seller))
        .route("/_sim/sellers/{token}/products/{id}", patch(patch_product))
        .with_state(state)
}

async fn get_faults(State(state): State<Arc<SimState>>) -> Json<Faults> {
    Json(state.faults())
}

async fn put_faults(
    State(state): State<Arc<SimState>>,
    Json(faults): Json<Faults>,
) -> Json<Faults> {
    state.set_faults(faults);
    Json(state.faults())
}

async fn stats(
    State(state): State<Arc<SimState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let token = q
        .get("token")
        .ok_or_else(|| ApiError::MissingParameter("token".into()))?;
    let seller = state
        .by_token(token)
        .ok_or_else(|| ApiError::NotFound("Unknown token".into()))?;
    let stats = lock(&seller.meter).stats();
    Ok(Json(json!(stats)))
}

#[derive(Deserialize)]
struct NewSeller {
    #[serde(default)]
    products: u64,
}

async fn add_seller(
    State(state): State<Arc<SimState>>,
    Json(body): Json<NewSeller>,
) -> Json<Value> {
    Json(json!(state.add_seller(body.products).info))
}

/// Account switches: `on_vacation`, and `payment_method: false` to make purchases fail.
#[derive(Deserialize)]
struct SellerPatch {
    on_vacation: Option<bool>,
    payment_method: Option<bool>,
}

async fn patch_seller(
    State(state): State<Arc<SimState>>,
    Path(token): Path<String>,
    Json(body): Json<SellerPatch>,
) -> Result<StatusCode, ApiError> {
    let seller = state
        .by_token(&token)
        .ok_or_else(|| ApiError::NotFound("Unknown token".into()))?;
    let mut account = lock(&seller.account);
    if let Some(on_vacation) = body.on_vacation {
        account.on_vacation = on_vacation;
    }
    if let Some(has) = body.payment_method {
        account.no_payment_method = !has;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct QuantityPatch {
    /// The new quantity.
    quantity: Option<i64>,
    /// Or a change to the current one, applied atomically (a sale elsewhere on CardTrader: -1).
    delta: Option<i64>,
}

async fn patch_product(
    State(state): State<Arc<SimState>>,
    Path((token, id)): Path<(String, i64)>,
    Json(body): Json<QuantityPatch>,
) -> Result<Json<Value>, ApiError> {
    let seller = state
        .by_token(&token)
        .ok_or_else(|| ApiError::NotFound("Unknown token".into()))?;
    let mut inventory = lock(&seller.inventory);
    let not_found = |_| ApiError::NotFound("Product not found".into());
    let product = match (body.quantity, body.delta) {
        (Some(quantity), None) => {
            ops::set_quantity(&mut inventory, id, quantity).map_err(not_found)?
        }
        (None, Some(delta)) => {
            ops::increment(&mut inventory, id, delta)
                .map_err(not_found)?
                .product
        }
        _ => {
            return Err(ApiError::MissingParameter(
                "quantity or delta (one of them)".into(),
            ));
        }
    };
    Ok(Json(product.export_json(
        seller.info.user_id,
        state.exports_expansion(),
    )))
}
