//! Bulk jobs: submitted at once, then `pending → running → completed|unprocessable` over
//! `job_duration_ms`, with per-item results ordered by `job_index`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    ops::{self, OpError, Outcome, ProductInput},
    state::{Seller, SimState, lock},
};

/// Finished jobs are forgotten after this long, so load tests do not grow memory without bound.
const KEEP_FINISHED: Duration = Duration::from_secs(15 * 60);
/// CardTrader splits a job into children; the count is informational.
const ITEMS_PER_CHILD: usize = 100;

/// Which bulk call made the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `bulk_create`.
    Create,
    /// `bulk_update`.
    Update,
    /// `bulk_destroy`.
    Destroy,
}

#[derive(Debug)]
struct Job {
    owner: u32,
    state: &'static str,
    children: usize,
    results: Vec<Value>,
    finished_at: Option<Instant>,
}

/// Every job, by uuid.
#[derive(Debug, Default)]
pub(crate) struct Jobs(Mutex<HashMap<String, Job>>);

impl Jobs {
    fn insert(&self, uuid: String, owner: u32, children: usize) {
        let mut jobs = lock(&self.0);
        jobs.retain(|_, job| job.finished_at.is_none_or(|t| t.elapsed() < KEEP_FINISHED));
        jobs.insert(
            uuid,
            Job {
                owner,
                state: "pending",
                children,
                results: Vec::new(),
                finished_at: None,
            },
        );
    }

    fn set(&self, uuid: &str, state: &'static str, results: Option<Vec<Value>>) {
        if let Some(job) = lock(&self.0).get_mut(uuid) {
            job.state = state;
            if let Some(results) = results {
                job.results = results;
                job.finished_at = Some(Instant::now());
            }
        }
    }

    /// The job in the API's shape, if it exists and belongs to seller `owner`.
    pub(crate) fn json(&self, uuid: &str, owner: u32) -> Option<Value> {
        let jobs = lock(&self.0);
        let job = jobs.get(uuid).filter(|job| job.owner == owner)?;
        let count = |kind: &str| job.results.iter().filter(|r| r["result"] == kind).count();
        Some(
            json!({"uuid": uuid, "state": job.state, "spawned_children": job.children,
            "stats": {"ok": count("ok"), "warning": count("warning"), "error": count("error")},
            "results": job.results}),
        )
    }
}

/// Registers a job over `body` and starts working it in the background; returns its uuid.
pub(crate) fn submit(
    state: &Arc<SimState>,
    seller: Arc<Seller>,
    kind: Kind,
    body: Value,
) -> String {
    let uuid = uuid::Uuid::new_v4().to_string();
    let items = body.get("products").and_then(Value::as_array).cloned();
    let children = items
        .as_ref()
        .map_or(1, |items| items.len().div_ceil(ITEMS_PER_CHILD).max(1));
    state.jobs.insert(uuid.clone(), seller.number, children);
    let third = Duration::from_millis(state.config.job_duration_ms / 3);
    let (state, job) = (state.clone(), uuid.clone());
    tokio::spawn(async move {
        if !pause(&state, third).await {
            return;
        }
        let Some(items) = items.filter(|items| !items.is_empty()) else {
            state.jobs.set(&job, "unprocessable", Some(Vec::new()));
            return;
        };
        state.jobs.set(&job, "running", None);
        let results = process(&seller, kind, &items);
        if pause(&state, third * 2).await {
            state.jobs.set(&job, "completed", Some(results));
        }
    });
    uuid
}

/// Sleeps `d`; `false` when the simulator shut down meanwhile.
async fn pause(state: &SimState, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = state.cancel.cancelled() => false,
    }
}

fn process(seller: &Seller, kind: Kind, items: &[Value]) -> Vec<Value> {
    let mut inventory = lock(&seller.inventory);
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let outcome = serde_json::from_value::<ProductInput>(item.clone())
                .map_err(|err| OpError::Invalid(json!({"base": [err.to_string()]})))
                .and_then(|input| apply(&mut inventory, kind, input));
            item_result(index, outcome)
        })
        .collect()
}

fn apply(
    inv: &mut super::inventory::Inventory,
    kind: Kind,
    input: ProductInput,
) -> Result<Outcome, OpError> {
    let id = || {
        input
            .id
            .ok_or_else(|| OpError::Invalid(json!({"id": ["can't be blank"]})))
    };
    match kind {
        Kind::Create => ops::create(inv, input),
        Kind::Update => {
            let id = id()?;
            ops::update(inv, id, input)
        }
        Kind::Destroy => {
            let product = ops::destroy(inv, id()?)?;
            Ok(Outcome {
                product,
                warnings: serde_json::Map::new(),
            })
        }
    }
}

fn item_result(index: usize, outcome: Result<Outcome, OpError>) -> Value {
    match outcome {
        Ok(o) if o.warnings.is_empty() => {
            json!({"result": "ok", "job_index": index, "product_id": o.product.id})
        }
        Ok(o) => {
            json!({"result": "warning", "job_index": index, "product_id": o.product.id, "warnings": o.warnings})
        }
        Err(OpError::NotFound) => {
            json!({"result": "error", "job_index": index, "errors": {"id": ["Product not found"]}})
        }
        Err(OpError::Invalid(errors)) => {
            json!({"result": "error", "job_index": index, "errors": errors})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        catalogue::Schema,
        inventory::{Generator, Inventory},
    };

    #[test]
    fn results_keep_payload_order_with_per_item_errors() {
        let mut inv = Inventory::new(Generator::new(1, 1, 5));
        let second = inv.get(100_000_002).unwrap();
        let foil_key = Schema::of(second.blueprint_id).foil_key();
        let flipped = !second.properties[&foil_key].as_bool().unwrap();
        let items = [
            json!({"id": 100_000_001, "quantity": 3}),
            json!({"id": 1, "quantity": 3}),
            json!({"id": 100_000_002, "properties": {foil_key.clone(): flipped}}),
        ];
        let results: Vec<_> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let input = serde_json::from_value(item.clone()).unwrap();
                item_result(i, apply(&mut inv, Kind::Update, input))
            })
            .collect();
        assert_eq!(results[0]["result"], "ok");
        assert_eq!(results[1]["result"], "error");
        assert_eq!(results[1]["job_index"], 1);
        assert_eq!(results[2]["result"], "warning");
        assert!(results[2]["warnings"]["properties"][&foil_key].is_array());
    }
}
