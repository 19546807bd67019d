//! `GET /marketplace/products`: an object keyed by blueprint id (as a string), each value the 25
//! cheapest listings across all sellers, ascending by price.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    extract::{Query, State},
};
use serde_json::{Map, Value};

use crate::{
    catalogue::{MAX_EXPANSION, blueprint_exists},
    errors::ApiError,
    inventory::Product,
    state::{SimState, lock},
};

/// Listings per blueprint, as documented.
const MAX_LISTINGS: usize = 25;

/// `GET /marketplace/products?expansion_id=|blueprint_id=[&foil=][&language=]`.
pub(crate) async fn products(
    State(state): State<Arc<SimState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let int = |k: &str| q.get(k).and_then(|v| v.parse::<i64>().ok());
    let blueprints: Vec<i64> = match (int("expansion_id"), int("blueprint_id")) {
        (Some(e), None) if (1..=MAX_EXPANSION).contains(&e) => {
            ((e - 1) * 100 + 1..=e * 100).collect()
        }
        (Some(_), None) => Vec::new(),
        (None, Some(b)) if blueprint_exists(b) => vec![b],
        (None, Some(_)) => Vec::new(),
        _ => {
            return Err(ApiError::MissingParameter(
                "expansion_id or blueprint_id".into(),
            ));
        }
    };
    let foil = q.get("foil").and_then(|f| f.parse::<bool>().ok());
    let language = q.get("language").cloned();
    let keep = |p: &Product| {
        let prop = |suffix: &str| {
            p.properties
                .iter()
                .find(|(k, _)| k.ends_with(suffix))
                .map(|(_, v)| v)
        };
        p.quantity > 0
            && foil.is_none_or(|f| prop("_foil").and_then(Value::as_bool) == Some(f))
            && language
                .as_deref()
                .is_none_or(|l| prop("_language").and_then(Value::as_str) == Some(l))
    };
    let mut listings: HashMap<i64, Vec<(i64, Value)>> = HashMap::new();
    for seller in state.all() {
        let (user, vacation) = (seller.user_json(), seller.on_vacation());
        let inventory = lock(&seller.inventory);
        for bp in &blueprints {
            for p in inventory.with_blueprint(*bp).iter().filter(|p| keep(p)) {
                listings
                    .entry(*bp)
                    .or_default()
                    .push((p.price_cents, p.marketplace_json(user.clone(), vacation)));
            }
        }
    }
    let mut out = Map::new();
    for bp in blueprints {
        let mut rows = listings.remove(&bp).unwrap_or_default();
        rows.sort_by_key(|(price, row)| (*price, row["id"].as_i64()));
        let rows = rows
            .into_iter()
            .take(MAX_LISTINGS)
            .map(|(_, row)| row)
            .collect();
        out.insert(bp.to_string(), Value::Array(rows));
    }
    Ok(Json(Value::Object(out)))
}
