//! Signed CardTrader webhooks: verification, de-duplication and order application. Orders come from
//! real simulator purchases (so deliveries have CardTrader's shapes and upstream stock to compare
//! with); the app's own interactive workers apply them.

use std::time::{Duration, Instant};

use cardtrader_sim::webhook_signature;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{PurchaseRig, wait_until};

const CANCEL_REASON: &str =
    "The buyer changed their mind before the parcel was packed and shipped.";

/// A seller with a synced inventory and what it takes to deliver its webhooks.
struct Hooks {
    rig: PurchaseRig,
    client: reqwest::Client,
    secret: String,
}

impl Hooks {
    async fn new(products: u64) -> Self {
        let rig = PurchaseRig::new(32, products).await;
        let secret = rig
            .rig
            .app
            .simulator
            .seller(&rig.token)
            .unwrap()
            .shared_secret;
        Self {
            rig,
            client: reqwest::Client::new(),
            secret,
        }
    }

    fn pool(&self) -> &brx_sync::storage::Pg {
        &self.rig.rig.pool
    }

    fn url(&self, user: &str) -> String {
        format!(
            "http://{}/webhooks/cardtrader/{user}",
            self.rig.rig.app.http_addr
        )
    }

    /// POSTs `body` for `user` with `signature` (none: no header).
    async fn post(&self, user: &str, body: Vec<u8>, signature: Option<String>) -> StatusCode {
        let mut request = self
            .client
            .post(self.url(user))
            .header("content-type", "application/json")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("Signature", signature);
        }
        request.send().await.unwrap().status()
    }

    /// Delivers `event` to this seller, signed the way CardTrader signs.
    async fn deliver(&self, event: &Value) -> StatusCode {
        let body = serde_json::to_vec(event).unwrap();
        let signature = webhook_signature(&self.secret, &body);
        self.post(&self.rig.user.to_string(), body, Some(signature))
            .await
    }

    /// A CardTrader API call to the simulator as `token`.
    async fn sim(&self, method: Method, token: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.rig.rig.app.simulator.base_url());
        let mut request = self.client.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    fn buyer(&self) -> String {
        self.rig.rig.app.simulator.token(1)
    }

    /// Buys `quantity` of `product_id` from the seller on CardTrader; the seller's view of the order.
    async fn buy(&self, product_id: i64, quantity: i64, ct0: bool) -> Value {
        let buyer = self.buyer();
        let add =
            json!({"product_id": product_id, "quantity": quantity, "via_cardtrader_zero": ct0});
        self.sim(Method::POST, &buyer, "/cart/add", Some(add)).await;
        self.sim(Method::POST, &buyer, "/cart/purchase", Some(json!({})))
            .await;
        let newest = self
            .sim(
                Method::GET,
                &self.rig.token,
                "/orders?sort=id.desc&limit=1",
                None,
            )
            .await;
        newest[0].clone()
    }

    /// The seller's current view of order `id`.
    async fn order(&self, id: &Value) -> Value {
        self.sim(Method::GET, &self.rig.token, &format!("/orders/{id}"), None)
            .await
    }

    /// Waits until `n` events of the seller are stored and none is left unapplied.
    async fn until_applied(&self, n: i64) {
        for _ in 0..600 {
            let (stored, pending): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE applied_at IS NULL) FROM webhook_events \
                 WHERE user_id = $1",
            )
            .bind(self.rig.user.as_uuid())
            .fetch_one(self.pool())
            .await
            .unwrap();
            if stored == n && pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} events were not all applied within 30 s");
    }

    /// Waits until no event of the seller is unapplied and no apply job of its is queued or running.
    async fn until_settled(&self) {
        wait_until(
            "the seller's webhook applies to settle",
            Duration::from_secs(30),
            || async {
                let (unapplied, applying): (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM webhook_events \
                             WHERE user_id = $1 AND applied_at IS NULL), \
                            (SELECT count(*) FROM jobs WHERE user_id = $1 \
                             AND kind = 'webhook_apply' AND state IN ('queued', 'running'))",
                )
                .bind(self.rig.user.as_uuid())
                .fetch_one(self.pool())
                .await
                .unwrap();
                unapplied == 0 && applying == 0
            },
        )
        .await;
    }

    /// `(events stored, apply jobs queued)` across every seller.
    async fn stored(&self) -> (i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM webhook_events), \
                    (SELECT count(*) FROM jobs WHERE kind = 'webhook_apply')",
        )
        .fetch_one(self.pool())
        .await
        .unwrap()
    }

    /// The local quantity of `product_id`.
    async fn quantity(&self, product_id: i64) -> i32 {
        self.rig.local(product_id).await.unwrap().0
    }

    /// Outcomes of the seller's events, in arrival order.
    async fn outcomes(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT coalesce(outcome, '') FROM webhook_events WHERE user_id = $1 ORDER BY seq",
        )
        .bind(self.rig.user.as_uuid())
        .fetch_all(self.pool())
        .await
        .unwrap()
    }
}

/// A delivery of `order` with a fresh event id.
fn event(cause: &str, order: &Value) -> Value {
    json!({
        "id": uuid::Uuid::new_v4(), "time": 1_764_633_600, "cause": cause, "object_class": "Order",
        "object_id": order["id"], "mode": "live", "data": order,
    })
}

/// `order` in another state, as a later delivery would show it.
fn in_state(order: &Value, state: &str) -> Value {
    let mut order = order.clone();
    order["state"] = json!(state);
    order
}

#[tokio::test]
async fn webhooks_unsigned_wrongly_signed_or_for_no_connected_seller_are_refused_and_store_nothing()
{
    let hooks = Hooks::new(20).await;
    let product = hooks.rig.stocked(1, 1).await[0];
    let order = hooks.buy(product, 1, false).await;
    let body = serde_json::to_vec(&event("order.create", &order)).unwrap();
    let user = hooks.rig.user.to_string();
    let stranger = uuid::Uuid::new_v4().to_string();
    let good = webhook_signature(&hooks.secret, &body);

    let unsigned = hooks.post(&user, body.clone(), None).await;
    let wrong_key = hooks
        .post(
            &user,
            body.clone(),
            Some(webhook_signature("not-the-secret", &body)),
        )
        .await;
    let garbage = hooks.post(&user, body.clone(), Some("%%%".into())).await;
    let other_body = hooks
        .post(&user, br#"{"tampered": true}"#.to_vec(), Some(good.clone()))
        .await;
    let unknown_seller = hooks
        .post(&stranger, body.clone(), Some(good.clone()))
        .await;
    let not_a_user = hooks
        .post("seller-1", body.clone(), Some(good.clone()))
        .await;
    let request = brx_sync::pb::v1::DisconnectAccountRequest {
        user_id: user.clone(),
        purge_inventory: false,
    };
    hooks
        .rig
        .rig
        .app
        .accounts()
        .await
        .disconnect_account(crate::helpers::authorized(
            request,
            &hooks.rig.rig.app.service_token(),
        ))
        .await
        .unwrap();
    let disconnected = hooks.post(&user, body, Some(good)).await;

    for status in [
        unsigned,
        wrong_key,
        garbage,
        other_body,
        unknown_seller,
        not_a_user,
        disconnected,
    ] {
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(hooks.stored().await, (0, 0));
}

#[tokio::test]
async fn webhooks_verified_with_a_cached_key_still_refuse_a_disconnected_seller_and_follow_a_new_secret()
 {
    let hooks = Hooks::new(20).await;
    let user = hooks.rig.user.to_string();
    let product = hooks.rig.stocked(1, 1).await[0];
    let order = hooks.buy(product, 1, false).await;
    let signed = |secret: &str, cause: &str| {
        let mut delivery = event(cause, &order);
        delivery["mode"] = json!("test");
        let body = serde_json::to_vec(&delivery).unwrap();
        let signature = webhook_signature(secret, &body);
        (body, signature)
    };
    let post = |(body, signature): (Vec<u8>, String)| hooks.post(&user, body, Some(signature));
    let accounts = || async { hooks.rig.rig.app.accounts().await };
    let service = hooks.rig.rig.app.service_token();

    // Accepted: the seller's key is now cached.
    let first = post(signed(&hooks.secret, "order.create")).await;
    accounts()
        .await
        .disconnect_account(crate::helpers::authorized(
            brx_sync::pb::v1::DisconnectAccountRequest {
                user_id: user.clone(),
                purge_inventory: false,
            },
            &service,
        ))
        .await
        .unwrap();
    let after_disconnect = post(signed(&hooks.secret, "order.update")).await;
    // The same shop user connects another CardTrader seller: a new shared secret.
    let other = hooks.rig.rig.app.simulator.add_seller(1);
    accounts()
        .await
        .connect_account(crate::helpers::authorized(
            brx_sync::pb::v1::ConnectAccountRequest {
                user_id: user.clone(),
                cardtrader_token: other.token.clone(),
            },
            &service,
        ))
        .await
        .unwrap();
    let new_secret = post(signed(&other.shared_secret, "order.update")).await;
    let old_secret = post(signed(&hooks.secret, "order.update")).await;

    assert_eq!(first, StatusCode::OK);
    assert_eq!(
        after_disconnect,
        StatusCode::UNAUTHORIZED,
        "cached key, seller gone"
    );
    assert_eq!(
        new_secret,
        StatusCode::OK,
        "the cached key was an old connection's"
    );
    assert_eq!(old_secret, StatusCode::UNAUTHORIZED);
    assert_eq!(hooks.stored().await.0, 2);
    // Each delivery was stored with its apply job in one statement: the same now().
    let in_one_statement: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events e WHERE EXISTS (SELECT 1 FROM jobs j \
         WHERE j.user_id = e.user_id AND j.kind = 'webhook_apply' AND j.created_at = e.received_at)",
    )
    .fetch_one(hooks.pool())
    .await
    .unwrap();
    assert!(in_one_statement >= 1, "{in_one_statement}");
}

#[tokio::test]
async fn webhooks_oversized_or_malformed_are_refused_and_store_nothing() {
    let hooks = Hooks::new(20).await;
    let user = hooks.rig.user.to_string();
    let signed = |body: Vec<u8>| {
        let signature = webhook_signature(&hooks.secret, &body);
        (body, Some(signature))
    };
    let mut huge = event(
        "order.create",
        &json!({"id": 1, "state": "paid", "via_cardtrader_zero": false, "order_items": []}),
    );
    huge["padding"] = json!("x".repeat(300 * 1024));
    let no_order = json!({"id": uuid::Uuid::new_v4(), "cause": "order.create", "object_id": 1, "mode": "live"});
    let no_lines = event(
        "order.create",
        &json!({"id": 1, "state": "paid", "via_cardtrader_zero": false}),
    );
    let bad_id = json!({"id": "3f1c", "cause": "order.create", "object_id": 1, "mode": "live",
                        "data": {"id": 1, "state": "paid", "via_cardtrader_zero": false, "order_items": []}});

    let (body, signature) = signed(serde_json::to_vec(&huge).unwrap());
    let oversized = hooks.post(&user, body, signature).await;
    let mut malformed = Vec::new();
    for body in [
        b"{not json".to_vec(),
        serde_json::to_vec(&no_order).unwrap(),
        serde_json::to_vec(&no_lines).unwrap(),
        serde_json::to_vec(&bad_id).unwrap(),
    ] {
        let (body, signature) = signed(body);
        malformed.push(hooks.post(&user, body, signature).await);
    }

    assert_eq!(oversized, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(malformed, vec![StatusCode::BAD_REQUEST; 4]);
    assert_eq!(hooks.stored().await, (0, 0));
}

#[tokio::test]
async fn webhooks_redelivered_event_is_answered_200_and_applied_once() {
    let hooks = Hooks::new(20).await;
    let product = hooks.rig.stocked(3, 1).await[0];
    let before = hooks.quantity(product).await;
    let order = hooks.buy(product, 2, false).await;
    let created = event("order.create", &order);

    let first = hooks.deliver(&created).await;
    let again = hooks.deliver(&created).await;
    hooks.until_applied(1).await;
    let late = hooks.deliver(&created).await;
    // A delivery is stored, with its apply job, before it is answered: once no apply job is left
    // to run, nothing more can come of the late one.
    hooks.until_settled().await;

    assert_eq!(
        (first, again, late),
        (StatusCode::OK, StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(hooks.stored().await.0, 1);
    assert_eq!(hooks.quantity(product).await, before - 2);
    assert_eq!(hooks.rig.upstream(product), Some(i64::from(before - 2)));
}

#[tokio::test]
async fn webhooks_regular_order_takes_its_stock_once_from_paid_through_sent_to_done() {
    let hooks = Hooks::new(20).await;
    let product = hooks.rig.stocked(3, 1).await[0];
    let before = hooks.quantity(product).await;
    let order = hooks.buy(product, 2, false).await;
    assert_eq!(order["state"], "paid");

    hooks.deliver(&event("order.create", &order)).await;
    hooks
        .sim(
            Method::PUT,
            &hooks.rig.token,
            &format!("/orders/{}/ship", order["id"]),
            None,
        )
        .await;
    let sent = hooks.order(&order["id"]).await;
    assert_eq!(sent["state"], "sent");
    hooks.deliver(&event("order.update", &sent)).await;
    hooks
        .deliver(&event("order.update", &in_state(&sent, "done")))
        .await;
    hooks.until_applied(3).await;

    assert_eq!(hooks.quantity(product).await, before - 2);
    assert_eq!(hooks.rig.upstream(product), Some(i64::from(before - 2)));
    let outcomes = hooks.outcomes().await;
    assert_eq!(outcomes[0], "took 2 units");
    assert!(
        outcomes[1..].iter().all(|o| o.contains("already taken")),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn webhooks_ct0_order_takes_stock_at_hub_pending_and_not_again_when_paid() {
    let hooks = Hooks::new(20).await;
    let product = hooks.rig.stocked(3, 1).await[0];
    let before = hooks.quantity(product).await;
    let order = hooks.buy(product, 2, true).await;
    assert_eq!(order["state"], "hub_pending");
    // The weekly merge: the original is closed and a new paid CT0 order carries the same items.
    let mut merged = in_state(&order, "paid");
    merged["id"] = json!(order["id"].as_i64().unwrap() + 1_000);

    hooks.deliver(&event("order.create", &order)).await;
    hooks.until_applied(1).await;
    let after_hub_pending = hooks.quantity(product).await;
    hooks
        .deliver(&event("order.update", &in_state(&order, "paid")))
        .await;
    hooks
        .deliver(&event("order.update", &in_state(&order, "closed")))
        .await;
    hooks.deliver(&event("order.create", &merged)).await;
    hooks
        .deliver(&event("order.update", &in_state(&merged, "sent")))
        .await;
    hooks.until_applied(5).await;

    assert_eq!(after_hub_pending, before - 2);
    assert_eq!(hooks.quantity(product).await, before - 2);
    assert_eq!(hooks.rig.upstream(product), Some(i64::from(before - 2)));
}

#[tokio::test]
async fn webhooks_cancelled_order_gives_its_stock_back_once_though_destroyed_twice() {
    let hooks = Hooks::new(20).await;
    let product = hooks.rig.stocked(3, 1).await[0];
    let before = hooks.quantity(product).await;
    let order = hooks.buy(product, 2, false).await;
    let id = &order["id"];
    hooks.deliver(&event("order.create", &order)).await;
    hooks.until_applied(1).await;
    let taken = hooks.quantity(product).await;

    let cancel = json!({"cancel_explanation": CANCEL_REASON, "relist_if_cancelled": true});
    let requested = hooks
        .sim(
            Method::PUT,
            &hooks.buyer(),
            &format!("/orders/{id}/request-cancellation"),
            Some(cancel),
        )
        .await;
    hooks
        .sim(
            Method::PUT,
            &hooks.rig.token,
            &format!("/orders/{id}/confirm-cancellation"),
            Some(json!({"relist_if_cancelled": true})),
        )
        .await;
    let canceled = hooks.order(id).await;
    assert_eq!(
        (requested["state"].as_str(), canceled["state"].as_str()),
        (Some("request_for_cancel"), Some("canceled"))
    );
    hooks
        .deliver(&event(
            "order.update",
            &in_state(&order, "request_for_cancel"),
        ))
        .await;
    hooks.deliver(&event("order.destroy", &canceled)).await;
    hooks.deliver(&event("order.destroy", &canceled)).await;
    // A late redelivery of an older state must not take the stock again.
    hooks.deliver(&event("order.update", &order)).await;
    hooks.until_applied(5).await;

    assert_eq!(taken, before - 2);
    assert_eq!(hooks.quantity(product).await, before);
    assert_eq!(hooks.rig.upstream(product), Some(i64::from(before)));
}

#[tokio::test]
async fn webhooks_test_delivery_is_stored_but_moves_no_stock() {
    let hooks = Hooks::new(20).await;
    let product = hooks.rig.stocked(3, 1).await[0];
    let before = hooks.quantity(product).await;
    let order = hooks.buy(product, 2, false).await;
    let mut test = event("order.create", &order);
    test["mode"] = json!("test");

    let status = hooks.deliver(&test).await;
    hooks.until_applied(1).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(hooks.quantity(product).await, before);
    assert_eq!(
        hooks.outcomes().await,
        vec!["test delivery: stock unchanged"]
    );
}

#[tokio::test]
async fn webhooks_unknown_product_is_recorded_and_its_blueprint_synced() {
    let hooks = Hooks::new(20).await;
    let product = hooks.rig.stocked(3, 1).await[0];
    let blueprint: i64 = sqlx::query_scalar(
        "DELETE FROM inventory_items WHERE user_id = $1 AND product_id = $2 RETURNING blueprint_id",
    )
    .bind(hooks.rig.user.as_uuid())
    .bind(product)
    .fetch_one(hooks.pool())
    .await
    .unwrap();
    let order = hooks.buy(product, 1, false).await;

    hooks.deliver(&event("order.create", &order)).await;
    hooks.until_applied(1).await;
    let unknown: Value =
        sqlx::query_scalar("SELECT unknown_products FROM webhook_events WHERE user_id = $1")
            .bind(hooks.rig.user.as_uuid())
            .fetch_one(hooks.pool())
            .await
            .unwrap();
    let synced = until_row(&hooks, product).await;

    assert_eq!(
        unknown,
        json!([{"product_id": product, "blueprint_id": blueprint}])
    );
    let scopes: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM jobs WHERE user_id = $1 AND kind = 'sync_targeted'",
    )
    .bind(hooks.rig.user.as_uuid())
    .fetch_all(hooks.pool())
    .await
    .unwrap();
    assert_eq!(
        scopes,
        vec![json!({"scope": "targeted", "blueprint_ids": [blueprint], "expansion_ids": []})]
    );
    assert_eq!(Some(i64::from(synced)), hooks.rig.upstream(product));
}

/// The local quantity of `product_id` once a sync has brought its row back (at most 30 s).
async fn until_row(hooks: &Hooks, product_id: i64) -> i32 {
    for _ in 0..600 {
        if let Some((quantity, _)) = hooks.rig.local(product_id).await {
            return quantity;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("product {product_id} was not synced back within 30 s");
}

#[tokio::test]
async fn webhooks_burst_of_a_thousand_events_is_all_stored_and_applied_exactly() {
    let hooks = Hooks::new(40).await;
    let products = hooks.rig.stocked(1, 20).await;
    for &product in &products {
        hooks.rig.set_stock(product, 100).await;
    }
    // One real order gives the shape; the burst's 500 orders are copies with their own ids and lines.
    let template = hooks.buy(products[0], 1, false).await;
    hooks.rig.set_stock(products[0], 100).await;
    let mut events = Vec::new();
    for i in 0..500 {
        let mut order = template.clone();
        order["id"] = json!(8_000_000 + i);
        order["order_items"][0]["product_id"] = json!(products[i % products.len()]);
        order["order_items"][0]["quantity"] = json!(1);
        events.push(event("order.create", &order));
        events.push(event("order.update", &in_state(&order, "sent")));
    }

    let started = Instant::now();
    let answers: Vec<(StatusCode, Duration)> = futures::stream::iter(&events)
        .map(|event| async {
            let sent = Instant::now();
            let status = hooks.deliver(event).await;
            (status, sent.elapsed())
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let answered_in = started.elapsed();
    hooks.until_applied(1_000).await;
    let applied_in = started.elapsed();

    let mut latencies: Vec<Duration> = answers.iter().map(|(_, latency)| *latency).collect();
    latencies.sort();
    eprintln!(
        "webhook burst: 1000 events, 32 at a time: answer p50 {:?}, p99 {:?}, max {:?}; all answered in {answered_in:?}, all applied in {applied_in:?}",
        latencies[499], latencies[989], latencies[999],
    );
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK));
    for &product in &products {
        assert_eq!(hooks.quantity(product).await, 75, "product {product}");
    }
    let taken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_orders WHERE user_id = $1 AND stock_taken",
    )
    .bind(hooks.rig.user.as_uuid())
    .fetch_one(hooks.pool())
    .await
    .unwrap();
    assert_eq!(taken, 500);
}

#[tokio::test]
async fn webhooks_event_that_cannot_be_applied_is_set_aside_and_later_ones_still_apply() {
    let hooks = Hooks::new(20).await;
    let products = hooks.rig.stocked(3, 2).await;
    let (broken, fine) = (products[0], products[1]);
    let before = hooks.quantity(fine).await;
    let doomed = hooks.buy(broken, 1, false).await;
    // A record claiming more was taken than a quantity can hold: giving it back overflows.
    sqlx::query(
        "INSERT INTO webhook_orders (user_id, order_id, stock_taken, taken) \
         VALUES ($1, $2, true, jsonb_build_array(jsonb_build_array($3::bigint, 2147483647)))",
    )
    .bind(hooks.rig.user.as_uuid())
    .bind(doomed["id"].as_i64().unwrap())
    .bind(broken)
    .execute(hooks.pool())
    .await
    .unwrap();
    let later = hooks.buy(fine, 2, false).await;

    hooks
        .deliver(&event("order.destroy", &in_state(&doomed, "canceled")))
        .await;
    hooks.deliver(&event("order.create", &later)).await;
    hooks.until_applied(2).await;

    let errors: Vec<Option<String>> =
        sqlx::query_scalar("SELECT error FROM webhook_events WHERE user_id = $1 ORDER BY seq")
            .bind(hooks.rig.user.as_uuid())
            .fetch_all(hooks.pool())
            .await
            .unwrap();
    assert!(errors[0].is_some(), "{errors:?}");
    assert_eq!(errors[1], None);
    assert_eq!(hooks.quantity(fine).await, before - 2);
}
