//! Reference data: `/info`, `/games`, `/categories`, `/expansions[/export]`, `/blueprints/export`,
//! `/shipping_methods`.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use axum::{
    Extension, Json,
    extract::{Query, State},
};
use serde_json::{Value, json};

use super::{Caller, export};
use crate::{
    catalogue::{
        MAX_EXPANSION, blueprint_expansion, blueprint_json, categories_json, expansion_json,
        games_json,
    },
    errors::ApiError,
    inventory::{Filter, money},
    state::SimState,
};

type Params = Query<HashMap<String, String>>;

/// `GET /info`.
pub(crate) async fn info(Extension(Caller(seller)): Extension<Caller>) -> Json<Value> {
    let info = &seller.info;
    Json(
        json!({"id": info.app_id, "name": format!("{} app", info.username),
        "shared_secret": info.shared_secret, "user_id": info.user_id}),
    )
}

/// `GET /games`, wrapped in `{"array": …}` as the live API does (the doc says bare array).
pub(crate) async fn games() -> Json<Value> {
    Json(games_json())
}

/// `GET /categories[?game_id=]`.
pub(crate) async fn categories(Query(q): Params) -> Json<Value> {
    Json(categories_json(
        q.get("game_id").and_then(|g| g.parse().ok()),
    ))
}

/// `GET /expansions`: all of them, unpaginated.
pub(crate) async fn expansions() -> Json<Value> {
    Json(Value::Array(
        (1..=MAX_EXPANSION).map(expansion_json).collect(),
    ))
}

/// `GET /expansions/export`: only expansions the caller has products in.
pub(crate) async fn expansions_export(Extension(Caller(seller)): Extension<Caller>) -> Json<Value> {
    let mut ids = BTreeSet::new();
    export::for_each(&seller, &Filter::default(), |p| {
        ids.insert(blueprint_expansion(p.blueprint_id));
    })
    .await;
    Json(Value::Array(ids.into_iter().map(expansion_json).collect()))
}

/// `GET /blueprints/export?expansion_id=N`; missing or unknown expansion → 404.
pub(crate) async fn blueprints_export(Query(q): Params) -> Result<Json<Value>, ApiError> {
    let expansion = q
        .get("expansion_id")
        .and_then(|e| e.parse::<i64>().ok())
        .filter(|e| (1..=MAX_EXPANSION).contains(e))
        .ok_or_else(|| ApiError::NotFound("Data is not ready for this expansion".into()))?;
    let first = (expansion - 1) * 100 + 1;
    Ok(Json(Value::Array(
        (first..first + 100).map(blueprint_json).collect(),
    )))
}

/// `GET /shipping_methods?username=` (the extractor decodes `+` and `%20`).
pub(crate) async fn shipping_methods(
    State(state): State<Arc<SimState>>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    let username = q
        .get("username")
        .ok_or_else(|| ApiError::MissingParameter("username".into()))?;
    let seller = state
        .by_username(username)
        .ok_or_else(|| ApiError::NotFound("User not found".into()))?;
    let base = i64::from(seller.number) * 10;
    let cost = |cents| {
        json!({"from_grams": 0, "to_grams": 2000, "price": money(cents),
        "formatted_price": format!("€{}.{:02}", cents / 100, cents % 100)})
    };
    Ok(Json(json!([
        {"id": base + 1, "name": "Standard letter", "min_estimate_shipping_days": 3, "max_estimate_shipping_days": 10,
         "parcel": false, "tracked": false, "tracking_link": Value::Null, "free_shipping_threshold_quantity": Value::Null,
         "free_shipping_threshold_price": Value::Null, "formatted_free_shipping_threshold_price": Value::Null,
         "max_cart_subtotal_price": money(5000), "formatted_max_cart_subtotal_price": "€50.00",
         "shipping_method_costs": [cost(150)]},
        {"id": base + 2, "name": "Tracked parcel", "min_estimate_shipping_days": Value::Null, "max_estimate_shipping_days": 5,
         "parcel": true, "tracked": true, "tracking_link": "https://track.example/{code}",
         "free_shipping_threshold_quantity": 20, "free_shipping_threshold_price": money(10000),
         "formatted_free_shipping_threshold_price": "€100.00", "max_cart_subtotal_price": Value::Null,
         "formatted_max_cart_subtotal_price": Value::Null, "shipping_method_costs": [cost(690)]},
    ])))
}
