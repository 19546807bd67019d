//! Seller inventory writes: single-product create/update/delete/increment with the
//! `{result, warnings, resource}` envelope, and bulk jobs.

use std::sync::Arc;

use axum::{
    Extension, Json,
    extract::{Path, State},
};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Caller;
use crate::{
    errors::{ApiError, parse_body},
    jobs::{self, Kind},
    ops::{self, OpError, Outcome, ProductInput},
    state::{SimState, lock},
};

type Answer = Result<Json<Value>, ApiError>;

fn op_error(err: OpError) -> ApiError {
    match err {
        OpError::NotFound => ApiError::NotFound("Product not found".into()),
        OpError::Invalid(errors) => ApiError::Validation {
            errors,
            message: "Validation failed".into(),
        },
    }
}

fn product_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound("Product not found".into()))
}

fn envelope(outcome: Outcome) -> Json<Value> {
    Json(
        json!({"result": "ok", "warnings": outcome.warnings, "resource": outcome.product.resource_json()}),
    )
}

/// `POST /products`: merges into an identical product by adding quantity.
pub(crate) async fn create(Extension(Caller(seller)): Extension<Caller>, body: Bytes) -> Answer {
    let input: ProductInput = parse_body(&body)?;
    let outcome = ops::create(&mut lock(&seller.inventory), input).map_err(op_error)?;
    Ok(envelope(outcome))
}

/// `PUT /products/:id`: sets the given values.
pub(crate) async fn update(
    Extension(Caller(seller)): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let id = product_id(&id)?;
    let input: ProductInput = parse_body(&body)?;
    let outcome = ops::update(&mut lock(&seller.inventory), id, input).map_err(op_error)?;
    Ok(envelope(outcome))
}

/// `DELETE /products/:id`; note `warnings` is an array here.
pub(crate) async fn destroy(
    Extension(Caller(seller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let id = product_id(&id)?;
    let product = ops::destroy(&mut lock(&seller.inventory), id).map_err(op_error)?;
    Ok(Json(
        json!({"result": "ok", "warnings": [], "resource": product.resource_json()}),
    ))
}

#[derive(Deserialize)]
struct Increment {
    delta_quantity: Option<i64>,
}

/// `POST /products/:id/increment {delta_quantity}`; a result ≤ 0 deletes the product.
pub(crate) async fn increment(
    Extension(Caller(seller)): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let id = product_id(&id)?;
    let delta = parse_body::<Increment>(&body)?
        .delta_quantity
        .ok_or_else(|| ApiError::MissingParameter("delta_quantity".into()))?;
    let outcome = ops::increment(&mut lock(&seller.inventory), id, delta).map_err(op_error)?;
    Ok(envelope(outcome))
}

fn bulk(state: &Arc<SimState>, caller: Caller, kind: Kind, body: &[u8]) -> Answer {
    let body: Value = parse_body(body)?;
    Ok(Json(
        json!({ "job": jobs::submit(state, caller.0, kind, body) }),
    ))
}

/// `POST /products/bulk_create`.
pub(crate) async fn bulk_create(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Answer {
    bulk(&state, caller, Kind::Create, &body)
}

/// `POST /products/bulk_update`.
pub(crate) async fn bulk_update(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Answer {
    bulk(&state, caller, Kind::Update, &body)
}

/// `POST /products/bulk_destroy`.
pub(crate) async fn bulk_destroy(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Answer {
    bulk(&state, caller, Kind::Destroy, &body)
}

/// `GET /jobs/:uuid`; unknown (or another seller's) job → 404.
pub(crate) async fn job(
    State(state): State<Arc<SimState>>,
    Extension(Caller(seller)): Extension<Caller>,
    Path(uuid): Path<String>,
) -> Answer {
    state
        .jobs
        .json(&uuid, seller.number)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("Job not found".into()))
}
