// A failed unwrap is how a test reports a broken expectation.
#![allow(clippy::unwrap_used)]

//! The simulator seen from outside: CardTrader's documented shapes and quirks over real HTTP.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use cardtrader_sim::{Faults, SimulatorConfig, SimulatorHandle, blueprint_expansion};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

struct Sim {
    handle: SimulatorHandle,
    client: Client,
}

impl Sim {
    async fn start(config: SimulatorConfig) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let handle = SimulatorHandle::start(config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        Self {
            handle,
            client: Client::new(),
        }
    }

    async fn default() -> Self {
        Self::start(SimulatorConfig::default()).await
    }

    async fn call(&self, method: Method, token: &str, path: &str, body: Option<Value>) -> Response {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.handle.base_url()))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    async fn get(&self, token: &str, path: &str) -> Response {
        self.call(Method::GET, token, path, None).await
    }

    async fn json(
        &self,
        method: Method,
        token: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let response = self.call(method, token, path, body).await;
        (response.status(), response.json().await.unwrap())
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.handle.addr())
    }

    /// The first product of seller `n` (ids are `n * 100_000_000 + index + 1`).
    fn first_product(&self, n: u32) -> Value {
        self.handle
            .product(&self.handle.token(n), i64::from(n) * 100_000_000 + 1)
            .unwrap()
    }
}

#[tokio::test]
async fn games_are_wrapped_in_an_array_object_and_info_names_the_account() {
    let sim = Sim::default().await;
    let token = sim.handle.token(1);

    let (status, games) = sim.json(Method::GET, &token, "/games", None).await;
    let (_, info) = sim.json(Method::GET, &token, "/info", None).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(games["array"][0]["id"], 1);
    assert_eq!(games["array"][0]["name"], "Magic");
    let seller = sim.handle.seller(&token).unwrap();
    assert_eq!(info["user_id"], seller.user_id);
    assert_eq!(info["id"], seller.app_id);
    assert_eq!(info["shared_secret"], seller.shared_secret);
}

#[tokio::test]
async fn missing_or_unknown_tokens_get_the_unauthorized_envelope() {
    let sim = Sim::default().await;

    let (status, body) = sim.json(Method::GET, "not-a-token", "/info", None).await;
    let bare = sim
        .client
        .get(format!("{}/games", sim.handle.base_url()))
        .send()
        .await
        .unwrap();

    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error_code"], "unauthorized");
    assert_eq!(body["errors"], json!([]));
    assert!(body["extra"]["message"].is_string());
    assert_eq!(body["request_id"].as_str().unwrap().len(), 36);
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn reference_endpoints_have_the_documented_shapes() {
    let sim = Sim::default().await;
    let token = sim.handle.token(1);

    let (_, expansions) = sim.json(Method::GET, &token, "/expansions", None).await;
    let (_, blueprints) = sim
        .json(
            Method::GET,
            &token,
            "/blueprints/export?expansion_id=3",
            None,
        )
        .await;
    let (missing, body) = sim
        .json(Method::GET, &token, "/blueprints/export", None)
        .await;
    let (unknown, _) = sim
        .json(
            Method::GET,
            &token,
            "/blueprints/export?expansion_id=999999",
            None,
        )
        .await;
    let (_, categories) = sim
        .json(Method::GET, &token, "/categories?game_id=1", None)
        .await;
    let (_, shipping) = sim
        .json(
            Method::GET,
            &token,
            "/shipping_methods?username=sim-seller-2",
            None,
        )
        .await;

    assert!(expansions.as_array().unwrap().len() >= 3_000);
    assert_eq!(blueprints.as_array().unwrap().len(), 100);
    assert_eq!(blueprints[0]["id"], 201);
    assert_eq!(blueprints[0]["expansion_id"], 3);
    assert_eq!(
        blueprints[0]["editable_properties"][0]["default_value"],
        "Near Mint"
    );
    assert!(blueprints[0]["fixed_properties"]["collector_number"].is_string());
    assert_eq!(
        (missing, unknown),
        (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND)
    );
    assert_eq!(body["error_code"], "not_found");
    assert!(
        categories
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["game_id"] == 1)
    );
    assert!(shipping[0]["shipping_method_costs"][0]["price"]["cents"].is_i64());
}

async fn create(sim: &Sim, token: &str, body: Value) -> Value {
    let (status, body) = sim.json(Method::POST, token, "/products", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn marketplace_answers_a_map_keyed_by_string_ids_sorted_by_price_and_capped_at_25() {
    let sim = Sim::default().await;
    let token = sim.handle.token(1);
    let conditions = [
        "Mint",
        "Near Mint",
        "Slightly Played",
        "Moderately Played",
        "Played",
        "Poor",
    ];
    for i in 0..30_u32 {
        let language = ["en", "it", "de", "fr", "es"][(i / 6) as usize];
        let props = json!({"condition": conditions[(i % 6) as usize], "mtg_language": language});
        let price = f64::from((i * 37) % 30 + 1);
        create(
            &sim,
            &token,
            json!({"blueprint_id": 123_401, "price": price, "quantity": 1, "properties": props}),
        )
        .await;
    }

    let (status, body) = sim
        .json(
            Method::GET,
            &token,
            "/marketplace/products?blueprint_id=123401",
            None,
        )
        .await;
    let (_, italian) = sim
        .json(
            Method::GET,
            &token,
            "/marketplace/products?blueprint_id=123401&language=it",
            None,
        )
        .await;

    assert_eq!(status, StatusCode::OK);
    let listings = body["123401"].as_array().unwrap();
    assert_eq!(listings.len(), 25);
    let prices: Vec<i64> = listings
        .iter()
        .map(|p| p["price_cents"].as_i64().unwrap())
        .collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{prices:?}");
    let first = &listings[0];
    assert_eq!(first["price"]["cents"], first["price_cents"]);
    assert!(first["price"]["formatted"].is_string());
    assert_eq!(first["expansion"]["id"], 1235);
    assert!(first["user"]["username"].is_string());
    assert!(first["graded"].is_null());
    assert!(first["properties_hash"]["collector_number"].is_string());
    let italian = italian["123401"].as_array().unwrap();
    assert_eq!(italian.len(), 6);
    assert!(
        italian
            .iter()
            .all(|p| p["properties_hash"]["mtg_language"] == "it")
    );
}

#[tokio::test]
async fn marketplace_needs_exactly_one_of_expansion_or_blueprint() {
    let sim = Sim::default().await;
    let token = sim.handle.token(1);

    let (neither, body) = sim
        .json(Method::GET, &token, "/marketplace/products", None)
        .await;
    let (both, _) = sim
        .json(
            Method::GET,
            &token,
            "/marketplace/products?blueprint_id=1&expansion_id=1",
            None,
        )
        .await;
    let (_, by_expansion) = sim
        .json(
            Method::GET,
            &token,
            "/marketplace/products?expansion_id=2",
            None,
        )
        .await;

    assert_eq!(neither, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error_code"], "missing_parameter");
    assert_eq!(both, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(by_expansion.as_object().unwrap().len(), 100);
    assert!(by_expansion.get("101").is_some());
}

#[tokio::test]
async fn over_the_limit_answers_429_with_the_documented_body_and_no_headers() {
    let config = SimulatorConfig {
        general_per_10s: 5,
        ..SimulatorConfig::default()
    };
    let sim = Sim::start(config).await;
    let token = sim.handle.token(1);
    for _ in 0..5 {
        assert_eq!(sim.get(&token, "/info").await.status(), StatusCode::OK);
    }

    let refused = sim.get(&token, "/info").await;

    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().get("retry-after").is_none());
    assert!(
        refused
            .headers()
            .keys()
            .all(|k| !k.as_str().starts_with("x-ratelimit"))
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "Too many requests: max 5 requests per 10 seconds"})
    );
    let other = sim.handle.token(2);
    assert_eq!(
        sim.get(&other, "/info").await.status(),
        StatusCode::OK,
        "limits are per token"
    );
    let stats = sim.handle.stats(&token);
    assert_eq!(
        (
            stats.total,
            stats.rejected_429,
            stats.max_general_in_any_10s
        ),
        (6, 1, 6)
    );
}

#[tokio::test]
async fn marketplace_and_jobs_have_their_own_per_second_limits_and_optional_headers() {
    let config = SimulatorConfig {
        marketplace_per_second: 1,
        rate_limit_headers: true,
        ..SimulatorConfig::default()
    };
    let sim = Sim::start(config).await;
    let token = sim.handle.token(1);

    let first = sim
        .get(&token, "/marketplace/products?blueprint_id=5")
        .await;
    let second = sim
        .get(&token, "/marketplace/products?blueprint_id=5")
        .await;
    sim.get(&token, "/jobs/nope").await;
    let job_poll = sim.get(&token, "/jobs/nope").await;

    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().get("retry-after").is_some());
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"], "Too many requests: max 1 request per second");
    assert_eq!(job_poll.status(), StatusCode::TOO_MANY_REQUESTS);
    let stats = sim.handle.stats(&token);
    assert_eq!(
        (stats.max_marketplace_in_any_1s, stats.max_jobs_in_any_1s),
        (2, 2)
    );
}

#[tokio::test]
async fn creating_an_identical_product_adds_to_its_quantity() {
    let sim = Sim::default().await;
    let token = sim.handle.token(1);
    let before = sim.handle.inventory_len(&token);
    let body = json!({"blueprint_id": 2_001, "price": 2.5, "quantity": 2, "properties": {"condition": "Played"}});

    let first = create(&sim, &token, body.clone()).await;
    let second = create(&sim, &token, body).await;

    assert_eq!(first["result"], "ok");
    assert_eq!(first["warnings"], json!({}));
    assert_eq!(first["resource"]["graded"], 0);
    assert_eq!(first["resource"]["price"]["cents"], 250);
    assert_eq!(first["resource"]["properties"]["condition"], "Played");
    assert_eq!(second["resource"]["id"], first["resource"]["id"]);
    assert_eq!(second["resource"]["quantity"], 4);
    assert_eq!(sim.handle.inventory_len(&token), before + 1);
}

#[tokio::test]
async fn invalid_properties_warn_unless_strict() {
    let sim = Sim::default().await;
    let token = sim.handle.token(1);
    let body = json!({"blueprint_id": 2_002, "price": 1.0, "quantity": 1, "properties": {"condition": "Destroyed"}});

    let lenient = create(&sim, &token, body.clone()).await;
    let mut strict_body = body;
    strict_body["error_mode"] = json!("strict");
    let (status, strict) = sim
        .json(Method::POST, &token, "/products", Some(strict_body))
        .await;

    assert_eq!(lenient["resource"]["properties"]["condition"], "Near Mint");
    assert!(lenient["warnings"]["properties"]["condition"].is_array());
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(strict["error_code"], "validation_error");
}

#[tokio::test]
async fn update_delete_and_increment_follow_the_documented_envelopes() {
    let sim = Sim::default().await;
    let token = sim.handle.token(1);
    let product = sim.first_product(1);
    let id = product["id"].as_i64().unwrap();
    let second = id + 1;

    let (_, updated) = sim
        .json(
            Method::PUT,
            &token,
            &format!("/products/{id}"),
            Some(json!({"price": 9.99, "quantity": 7})),
        )
        .await;
    let (_, deleted) = sim
        .json(Method::DELETE, &token, &format!("/products/{id}"), None)
        .await;
    let (again, _) = sim
        .json(Method::DELETE, &token, &format!("/products/{id}"), None)
        .await;
    let quantity = sim.handle.product(&token, second).unwrap()["quantity"]
        .as_i64()
        .unwrap();
    let (_, incremented) = sim
        .json(
            Method::POST,
            &token,
            &format!("/products/{second}/increment"),
            Some(json!({"delta_quantity": -quantity})),
        )
        .await;
    let (foreign, _) = sim
        .json(
            Method::PUT,
            &sim.handle.token(2),
            &format!("/products/{second}"),
            Some(json!({"quantity": 1})),
        )
        .await;

    assert_eq!(updated["resource"]["price"]["cents"], 999);
    assert_eq!(updated["resource"]["quantity"], 7);
    assert_eq!(deleted["warnings"], json!([]));
    assert_eq!(again, StatusCode::NOT_FOUND);
    assert_eq!(incremented["result"], "ok");
    assert!(
        sim.handle.product(&token, second).is_none(),
        "increment to zero deletes"
    );
    assert_eq!(foreign, StatusCode::NOT_FOUND);
}

/// Bound on the waits for a bulk job; the simulator's jobs finish in a fraction of it.
const JOB_WAIT: Duration = Duration::from_secs(10);
const POLL_EVERY: Duration = Duration::from_millis(50);

/// `GET /jobs/{uuid}`, asked again while the one-poll-a-second limit on job polls refuses it (429):
/// the test waits on the limit's window, not a fixed time. Panics after [`JOB_WAIT`].
async fn get_job(sim: &Sim, token: &str, uuid: &str) -> (StatusCode, Value) {
    let deadline = tokio::time::Instant::now() + JOB_WAIT;
    loop {
        let (status, body) = sim
            .json(Method::GET, token, &format!("/jobs/{uuid}"), None)
            .await;
        if status != StatusCode::TOO_MANY_REQUESTS {
            return (status, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {JOB_WAIT:?} waiting for the job poll limit to admit a poll of {uuid}: {body}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls job `uuid` until it is completed or unprocessable. Panics after [`JOB_WAIT`].
async fn poll_job(sim: &Sim, token: &str, uuid: &str) -> Value {
    let deadline = tokio::time::Instant::now() + JOB_WAIT;
    loop {
        let (status, job) = get_job(sim, token, uuid).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if job["state"] == "completed" || job["state"] == "unprocessable" {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {JOB_WAIT:?} waiting for job {uuid} to finish: {job}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[tokio::test]
async fn bulk_jobs_go_from_pending_to_completed_with_per_item_results() {
    let sim = Sim::default().await;
    let token = sim.handle.token(1);
    let id = sim.first_product(1)["id"].as_i64().unwrap();
    let items = json!({"products": [
        {"id": id, "quantity": 42},
        {"id": 1, "quantity": 1},
        {"id": id + 1, "properties": {"mtg_rarity": "Common", "altered": "maybe"}},
    ]});

    let (status, submitted) = sim
        .json(Method::POST, &token, "/products/bulk_update", Some(items))
        .await;
    let uuid = submitted["job"].as_str().unwrap().to_owned();
    let (_, pending) = sim
        .json(Method::GET, &token, &format!("/jobs/{uuid}"), None)
        .await;
    let job = poll_job(&sim, &token, &uuid).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(pending["state"], "pending");
    assert_eq!(job["state"], "completed");
    let results = job["results"].as_array().unwrap();
    let kinds: Vec<_> = results
        .iter()
        .map(|r| {
            (
                r["job_index"].as_i64().unwrap(),
                r["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds, vec![(0, "ok"), (1, "error"), (2, "warning")]);
    assert_eq!(job["stats"], json!({"ok": 1, "warning": 1, "error": 1}));
    assert!(job["spawned_children"].as_i64().unwrap() >= 1);
    assert_eq!(sim.handle.product(&token, id).unwrap()["quantity"], 42);
}

#[tokio::test]
async fn bulk_create_and_destroy_apply_and_unknown_jobs_are_not_found() {
    let sim = Sim::default().await;
    let token = sim.handle.token(1);
    let before = sim.handle.inventory_len(&token);
    let create = json!({"products": [{"blueprint_id": 77, "price": 1.0, "quantity": 1}, {"price": 1.0, "quantity": 1}]});

    let (_, created) = sim
        .json(Method::POST, &token, "/products/bulk_create", Some(create))
        .await;
    let created = poll_job(&sim, &token, created["job"].as_str().unwrap()).await;
    let new_id = created["results"][0]["product_id"].as_i64().unwrap();
    let destroy = json!({"products": [{"id": new_id}]});
    let (_, destroyed) = sim
        .json(
            Method::POST,
            &token,
            "/products/bulk_destroy",
            Some(destroy),
        )
        .await;
    let destroyed = poll_job(&sim, &token, destroyed["job"].as_str().unwrap()).await;
    let (missing, _) = get_job(&sim, &token, "00000000-0000-0000-0000-000000000000").await;

    assert_eq!(
        created["results"][1]["errors"]["blueprint_id"][0],
        "Blueprint cant be blank"
    );
    assert_eq!(destroyed["results"][0]["result"], "ok");
    assert!(sim.handle.product(&token, new_id).is_none());
    assert_eq!(sim.handle.inventory_len(&token), before);
    assert_eq!(missing, StatusCode::NOT_FOUND);
}

/// Counts `needle` in a streamed body chunk by chunk, never holding the whole body.
async fn count_streamed(response: Response, needle: &str) -> (u64, usize) {
    let mut stream = response.bytes_stream();
    let (mut count, mut tail, mut largest) = (0_u64, String::new(), 0_usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        largest = largest.max(chunk.len());
        // The export is ASCII, so a chunk boundary never splits a character.
        let window = tail + std::str::from_utf8(&chunk).unwrap();
        count += window.matches(needle).count() as u64;
        // Keep a tail shorter than the needle so a match split across chunks is counted once.
        tail = window[window.len().saturating_sub(needle.len() - 1)..].to_owned();
    }
    (count, largest)
}

#[tokio::test]
async fn export_streams_a_million_product_seller_in_bounded_chunks() {
    let sim = Sim::start(SimulatorConfig {
        sellers: 1,
        ..SimulatorConfig::default()
    })
    .await;
    let seller = sim.handle.add_seller(1_000_000);
    sim.handle
        .set_quantity(&seller.token, 2 * 100_000_000 + 5, 0);

    let response = sim.get(&seller.token, "/products/export").await;
    assert_eq!(response.status(), StatusCode::OK);
    let (count, largest) = count_streamed(response, "\"blueprint_id\"").await;

    assert_eq!(count, 999_999);
    assert!(largest < 4 * 1024 * 1024, "chunks stay small: {largest}");
}

#[tokio::test]
async fn export_rows_use_export_field_names_and_filters_apply() {
    let sim = Sim::default().await;
    let token = sim.handle.token(1);
    let first = sim.first_product(1);
    let blueprint = first["blueprint_id"].as_i64().unwrap();
    let expansion = blueprint_expansion(blueprint);

    let (_, all) = sim
        .json(Method::GET, &token, "/products/export", None)
        .await;
    let (_, by_blueprint) = sim
        .json(
            Method::GET,
            &token,
            &format!("/products/export?blueprint_id={blueprint}"),
            None,
        )
        .await;
    let (_, by_expansion) = sim
        .json(
            Method::GET,
            &token,
            &format!("/products/export?expansion_id={expansion}"),
            None,
        )
        .await;

    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 1000);
    assert_eq!(all[0], first);
    for field in [
        "price_cents",
        "properties_hash",
        "bundled_quantity",
        "tag",
        "user_data_field",
        "uploaded_images",
        "graded",
    ] {
        assert!(all[0].get(field).is_some(), "{field}");
    }
    assert!(
        all.iter().all(|p| p.get("expansion").is_none()),
        "the documented export has no expansion"
    );
    assert!(all.iter().any(|p| p["graded"].is_null()) && all.iter().any(|p| p["graded"] == 0));
    assert!(
        all.iter().any(|p| p["description"] == "")
            && all.iter().any(|p| p["description"].is_null())
    );
    assert!(
        all.iter()
            .any(|p| p["blueprint_id"].as_i64().unwrap() > cardtrader_sim::CATALOGUE_BLUEPRINTS)
    );
    let by_blueprint = by_blueprint.as_array().unwrap();
    assert!(
        !by_blueprint.is_empty() && by_blueprint.iter().all(|p| p["blueprint_id"] == blueprint)
    );
    let by_expansion = by_expansion.as_array().unwrap();
    assert!(!by_expansion.is_empty());
    assert!(
        by_expansion
            .iter()
            .all(|p| blueprint_expansion(p["blueprint_id"].as_i64().unwrap()) == expansion)
    );
    assert!(by_expansion.len() >= by_blueprint.len());
}

#[tokio::test]
async fn the_undocumented_expansion_object_is_exported_only_when_switched_on() {
    let sim = Sim::start(SimulatorConfig {
        export_expansion: true,
        ..SimulatorConfig::default()
    })
    .await;
    let token = sim.handle.token(1);

    let (_, with) = sim
        .json(Method::GET, &token, "/products/export", None)
        .await;
    sim.handle.set_export_expansion(false);
    let (_, without) = sim
        .json(Method::GET, &token, "/products/export", None)
        .await;

    let with = with.as_array().unwrap();
    assert!(with.iter().all(|p| {
        p["expansion"]["id"].as_i64()
            == Some(blueprint_expansion(p["blueprint_id"].as_i64().unwrap()))
    }));
    assert!(
        without
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p.get("expansion").is_none())
    );
    assert_eq!(with.len(), without.as_array().unwrap().len());
}

#[tokio::test]
async fn fault_switches_inject_json_and_html_errors_and_429_bursts() {
    let sim = Sim::default().await;
    let token = sim.handle.token(1);

    sim.handle.set_faults(Faults {
        error_5xx_rate: 1.0,
        ..Faults::default()
    });
    let (json_status, json_body) = sim.json(Method::GET, &token, "/info", None).await;
    let put = sim
        .client
        .put(sim.admin("/_sim/faults"))
        .json(&Faults {
            html_error_rate: 1.0,
            ..Faults::default()
        })
        .send()
        .await
        .unwrap();
    let html = sim.get(&token, "/info").await;
    let (html_status, html_type) = (
        html.status(),
        html.headers()["content-type"].to_str().unwrap().to_owned(),
    );
    let page = html.text().await.unwrap();
    sim.handle.set_faults(Faults {
        burst_429: 2,
        ..Faults::default()
    });
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(sim.get(&token, "/info").await.status());
    }

    assert!(json_status.is_server_error());
    assert_eq!(json_body["error_code"], "internal_server_error");
    assert!(put.status().is_success());
    assert!(html_status.is_server_error());
    assert!(html_type.starts_with("text/html"));
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<p>"));
    assert_eq!(
        statuses,
        vec![
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::OK
        ]
    );
    assert_eq!(sim.handle.faults().burst_429, 0);
}

#[tokio::test]
async fn timeouts_after_apply_leave_the_change_applied() {
    let sim = Sim::default().await;
    let token = sim.handle.token(1);
    let id = sim.first_product(1)["id"].as_i64().unwrap();
    sim.handle.set_faults(Faults {
        timeout_after_apply_rate: 1.0,
        ..Faults::default()
    });

    let attempt = sim
        .client
        .put(format!("{}/products/{id}", sim.handle.base_url()))
        .bearer_auth(&token)
        .json(&json!({"quantity": 33}))
        .timeout(Duration::from_millis(500))
        .send()
        .await;

    assert!(attempt.unwrap_err().is_timeout());
    assert_eq!(sim.handle.product(&token, id).unwrap()["quantity"], 33);
}

#[tokio::test]
async fn stats_and_admin_routes_work_without_a_token() {
    let sim = Sim::default().await;
    let token = sim.handle.token(3);
    for _ in 0..3 {
        sim.get(&token, "/games").await;
    }

    let stats: Value = sim
        .client
        .get(sim.admin(&format!("/_sim/stats?token={token}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seller: Value = sim
        .client
        .post(sim.admin("/_sim/sellers"))
        .json(&json!({"products": 12}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_token = seller["token"].as_str().unwrap();
    let id = 11 * 100_000_000 + 1;
    let patched = sim
        .client
        .patch(sim.admin(&format!("/_sim/sellers/{new_token}/products/{id}")))
        .json(&json!({"quantity": 0}))
        .send()
        .await
        .unwrap();

    assert_eq!(stats["total"], 3);
    assert_eq!(stats["max_general_in_any_10s"], 3);
    assert_eq!(new_token, "sim-token-11");
    assert!(patched.status().is_success());
    assert_eq!(sim.handle.inventory_len(new_token), 11);
    assert!(sim.handle.product(new_token, id).is_none());
}

#[tokio::test]
async fn webhooks_carry_a_verifiable_hmac_signature() {
    let sim = Sim::default().await;
    let token = sim.handle.token(1);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    let signature = headers["signature"].to_str().unwrap().to_owned();
                    tx.send((signature, body.to_vec())).unwrap();
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    let body = json!({"id": "3f1c", "time": 1_700_000_000, "cause": "order.create", "object_class": "Order", "object_id": 1, "mode": "test", "data": {}});

    let status = sim
        .handle
        .emit_webhook(&url, &token, body.clone())
        .await
        .unwrap();
    let (signature, raw) = rx.recv().await.unwrap();

    assert_eq!(status, 200);
    let secret = sim.handle.seller(&token).unwrap().shared_secret;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&raw);
    mac.verify_slice(&STANDARD.decode(signature).unwrap())
        .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&raw).unwrap(), body);
}

#[tokio::test]
async fn cart_purchase_creates_orders_and_decrements_seller_stock() {
    let sim = Sim::default().await;
    let (buyer, seller) = (sim.handle.token(1), sim.handle.token(2));
    let product = sim.first_product(2);
    let (id, stock) = (
        product["id"].as_i64().unwrap(),
        product["quantity"].as_i64().unwrap(),
    );
    sim.handle.set_quantity(&seller, id, stock.max(2));
    let stock = stock.max(2);

    let (too_many, _) = sim
        .json(
            Method::POST,
            &buyer,
            "/cart/add",
            Some(json!({"product_id": id, "quantity": stock + 1, "via_cardtrader_zero": false})),
        )
        .await;
    let (_, cart) = sim
        .json(
            Method::POST,
            &buyer,
            "/cart/add",
            Some(json!({"product_id": id, "quantity": 1, "via_cardtrader_zero": false})),
        )
        .await;
    let (purchase_status, purchased) = sim
        .json(Method::POST, &buyer, "/cart/purchase", Some(json!({})))
        .await;
    let (_, emptied) = sim.json(Method::GET, &buyer, "/cart", None).await;
    let (_, bought) = sim
        .json(Method::GET, &buyer, "/orders?order_as=buyer", None)
        .await;
    let (_, sold) = sim.json(Method::GET, &seller, "/orders", None).await;

    assert_eq!(too_many, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(cart["subcarts"][0]["cart_items"][0]["product"]["id"], id);
    assert_eq!(cart["subcarts"][0]["seller"]["username"], "sim-seller-2");
    assert_eq!(purchase_status, StatusCode::OK);
    assert_eq!(purchased["subcarts"].as_array().unwrap().len(), 1);
    assert_eq!(emptied["subcarts"], json!([]));
    assert_eq!(
        sim.handle.product(&seller, id).unwrap()["quantity"],
        stock - 1
    );
    assert_eq!(bought.as_array().unwrap().len(), 1);
    assert_eq!(bought[0]["state"], "paid");
    assert_eq!(bought[0]["order_items"][0]["product_id"], id);
    assert_eq!(sold[0]["id"], bought[0]["id"]);
    assert_eq!(sold[0]["buyer"]["username"], "sim-seller-1");
}

#[tokio::test]
async fn purchases_fail_without_payment_method_and_vacationing_sellers_cannot_be_bought_from() {
    let sim = Sim::default().await;
    let (buyer, seller) = (sim.handle.token(1), sim.handle.token(2));
    let id = sim.first_product(2)["id"].as_i64().unwrap();
    let add = json!({"product_id": id, "quantity": 1, "via_cardtrader_zero": true});
    sim.json(Method::POST, &buyer, "/cart/add", Some(add.clone()))
        .await;
    sim.handle.set_payment_method(&buyer, false);

    let (status, body) = sim.json(Method::POST, &buyer, "/cart/purchase", None).await;
    sim.handle.set_on_vacation(&seller, true);
    let (vacation, _) = sim.json(Method::POST, &buyer, "/cart/add", Some(add)).await;
    sim.handle.set_on_vacation(&seller, false);
    sim.handle.set_payment_method(&buyer, true);
    let (_, ct0) = sim.json(Method::POST, &buyer, "/cart/purchase", None).await;
    let (_, orders) = sim
        .json(
            Method::GET,
            &buyer,
            "/orders?order_as=buyer&state=hub_pending",
            None,
        )
        .await;

    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error_code"], "validation_error");
    assert_eq!(body["errors"]["payment_method"][0], "cannot be blank");
    assert_eq!(vacation, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(ct0["subcarts"][0]["via_cardtrader_zero"], true);
    assert_eq!(orders[0]["via_cardtrader_zero"], true);
}

#[tokio::test]
async fn orders_can_be_cancelled_by_request_and_confirmation_with_relisting() {
    let sim = Sim::default().await;
    let (buyer, seller) = (sim.handle.token(1), sim.handle.token(2));
    let product = sim.first_product(2);
    let (id, stock) = (
        product["id"].as_i64().unwrap(),
        product["quantity"].as_i64().unwrap(),
    );
    sim.json(
        Method::POST,
        &buyer,
        "/cart/add",
        Some(json!({"product_id": id, "quantity": stock})),
    )
    .await;
    sim.json(Method::POST, &buyer, "/cart/purchase", None).await;
    assert!(
        sim.handle.product(&seller, id).is_none(),
        "buying all the stock deletes the product"
    );
    let (_, orders) = sim
        .json(Method::GET, &buyer, "/orders?order_as=buyer", None)
        .await;
    let order = orders[0]["id"].as_i64().unwrap();

    let short = json!({"cancel_explanation": "no", "relist_if_cancelled": true});
    let (too_short, _) = sim
        .json(
            Method::PUT,
            &buyer,
            &format!("/orders/{order}/request-cancellation"),
            Some(short),
        )
        .await;
    let reason = json!({"cancel_explanation": "The shop sold this card at the counter before the sync ran.", "relist_if_cancelled": true});
    let (_, requested) = sim
        .json(
            Method::PUT,
            &buyer,
            &format!("/orders/{order}/request-cancellation"),
            Some(reason),
        )
        .await;
    let (_, confirmed) = sim
        .json(
            Method::PUT,
            &seller,
            &format!("/orders/{order}/confirm-cancellation"),
            Some(json!({"relist_if_cancelled": true})),
        )
        .await;

    assert_eq!(too_short, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(requested["state"], "request_for_cancel");
    assert_eq!(confirmed["state"], "canceled");
    assert_eq!(sim.handle.product(&seller, id).unwrap()["quantity"], stock);
}
