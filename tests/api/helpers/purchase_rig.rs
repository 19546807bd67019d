//! A seller with a synced inventory, ready to buy from: the app (driving purchases with its own
//! interactive workers, or with none so the test's workers do), the simulator account behind it,
//! and reads of both sides' stock for the invariants.

use std::{sync::Arc, time::Duration};

use brx_sync::{
    domain::UserId,
    jobs::{
        JobState, Lane,
        worker::{Worker, WorkerSettings},
    },
    pb::v1::{CreatePurchaseRequest, PurchaseLine, purchase_service_client::PurchaseServiceClient},
    purchase::{
        StoredPurchase,
        driver::{PurchaseEvents, PurchaseHandler},
    },
};
use tonic::transport::Channel;

use super::{authorized, sync_rig::SyncRig};

/// Two workers of the interactive lane driving a rig's purchases, as two replicas would.
pub(crate) struct Workers {
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Workers {
    pub(crate) fn start(shop: &PurchaseRig, lease: Duration) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks = ["worker-a", "worker-b"]
            .into_iter()
            .map(|owner| tokio::spawn(shop.worker(owner, lease).run(stop.clone())))
            .collect();
        Self { stop, tasks }
    }

    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap().unwrap();
        }
    }
}

pub(crate) struct PurchaseRig {
    pub(crate) rig: SyncRig,
    pub(crate) user: UserId,
    pub(crate) token: String,
    pub(crate) handler: PurchaseHandler,
}

impl PurchaseRig {
    /// A seller with `products` products; the app runs `interactive` purchase slots (0: only the
    /// test's own workers drive purchases).
    pub(crate) async fn new(interactive: u32, products: u64) -> Self {
        Self::with(interactive, products, |_| {}).await
    }

    pub(crate) async fn with(
        interactive: u32,
        products: u64,
        adjust: impl FnOnce(&mut brx_sync::config::Config),
    ) -> Self {
        let rig = SyncRig::with(|config| {
            config.jobs.interactive_concurrency = interactive;
            config.jobs.poll_interval = Duration::from_millis(50);
            adjust(config);
        })
        .await;
        let seller = rig.app.simulator.add_seller(products);
        let user = rig.connect(&seller.token).await;
        let synced = rig.sync(user).await;
        assert_eq!(synced.state, JobState::Succeeded, "{synced:?}");
        let handler = PurchaseHandler {
            accounts: rig.handler.accounts.clone(),
            metrics: rig.handler.metrics.clone(),
            events: PurchaseEvents::default(),
            call_budget: rig.app.config.cardtrader.call_budget,
            write_grace: rig.app.config.cardtrader.request_timeout,
        };
        Self {
            rig,
            user,
            token: seller.token,
            handler,
        }
    }

    pub(crate) async fn client(&self) -> PurchaseServiceClient<Channel> {
        PurchaseServiceClient::new(self.rig.app.channel().await)
    }

    pub(crate) fn request(&self, key: &str, lines: &[(i64, i32)]) -> CreatePurchaseRequest {
        CreatePurchaseRequest {
            user_id: self.user.to_string(),
            idempotency_key: key.into(),
            lines: lines
                .iter()
                .map(|&(item_id, quantity)| PurchaseLine { item_id, quantity })
                .collect(),
            buyer_ref: format!("order-{key}"),
        }
    }

    /// Purchase RPC as the seller's shop.
    pub(crate) async fn buy(
        &self,
        key: &str,
        lines: &[(i64, i32)],
    ) -> Result<brx_sync::pb::v1::Purchase, tonic::Status> {
        let request = authorized(
            self.request(key, lines),
            &self.rig.app.seller_token(self.user),
        );
        self.client()
            .await
            .create_purchase(request)
            .await
            .map(|answer| answer.into_inner().purchase.unwrap())
    }

    /// A worker of the interactive lane driving purchases, owned by `owner`, with `lease` and
    /// short retry backoffs.
    pub(crate) fn worker(&self, owner: &str, lease: Duration) -> Worker {
        let settings = WorkerSettings {
            owner: owner.into(),
            lane: Lane::Interactive,
            concurrency: 8,
            lease,
            call_budget: lease / 3,
            poll_interval: Duration::from_millis(50),
            ranking: brx_sync::jobs::Ranking {
                aging: Duration::from_secs(60),
                turn: Duration::from_secs(1),
            },
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
        };
        Worker::new(
            self.rig.pool.clone(),
            vec![Arc::new(self.handler.clone())],
            settings,
            self.handler.metrics.clone(),
        )
    }

    /// `(quantity, reserved_quantity)` of the local item.
    pub(crate) async fn local(&self, product_id: i64) -> Option<(i32, i32)> {
        sqlx::query_as(
            "SELECT quantity, reserved_quantity FROM inventory_items WHERE user_id = $1 AND product_id = $2",
        )
        .bind(self.user.as_uuid())
        .bind(product_id)
        .fetch_optional(&self.rig.pool)
        .await
        .unwrap()
    }

    /// CardTrader's quantity of the product, `None` when it does not exist.
    pub(crate) fn upstream(&self, product_id: i64) -> Option<i64> {
        self.rig
            .app
            .simulator
            .product(&self.token, product_id)
            .and_then(|product| product["quantity"].as_i64())
    }

    /// `n` items holding at least `quantity` on both sides, lowest ids first.
    pub(crate) async fn stocked(&self, quantity: i32, n: usize) -> Vec<i64> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT product_id FROM inventory_items WHERE user_id = $1 AND quantity >= $2 ORDER BY product_id",
        )
        .bind(self.user.as_uuid())
        .bind(quantity)
        .fetch_all(&self.rig.pool)
        .await
        .unwrap();
        let picked: Vec<i64> = ids
            .into_iter()
            .filter(|id| self.upstream(*id) >= Some(i64::from(quantity)))
            .take(n)
            .collect();
        assert_eq!(
            picked.len(),
            n,
            "the seller has too few items with {quantity}"
        );
        picked
    }

    /// Sets the item's quantity on both sides (the sync would agree).
    pub(crate) async fn set_stock(&self, product_id: i64, quantity: i32) {
        self.rig
            .app
            .simulator
            .set_quantity(&self.token, product_id, i64::from(quantity));
        sqlx::query(
            "UPDATE inventory_items SET quantity = $3 WHERE user_id = $1 AND product_id = $2",
        )
        .bind(self.user.as_uuid())
        .bind(product_id)
        .bind(quantity)
        .execute(&self.rig.pool)
        .await
        .unwrap();
    }

    /// The purchase once it has ended (at most a minute).
    pub(crate) async fn until_done(&self, id: &str) -> StoredPurchase {
        let id = uuid::Uuid::try_parse(id).unwrap();
        for _ in 0..600 {
            let purchase = brx_sync::purchase::load(&self.rig.pool, id)
                .await
                .unwrap()
                .unwrap();
            if purchase.saga.phase.is_terminal() {
                return purchase;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("purchase {id} did not end within a minute");
    }

    /// A CardTrader buyer (another simulator account) buys `quantity` of `product_id` from the
    /// seller on CardTrader: a sale the shop only learns of through webhooks or `GET /orders`.
    pub(crate) async fn sell_on_cardtrader(&self, product_id: i64, quantity: i64) {
        let simulator = &self.rig.app.simulator;
        let buyer = simulator.token(1);
        let client = reqwest::Client::new();
        for (path, body) in [
            (
                "/cart/add",
                serde_json::json!({"product_id": product_id, "quantity": quantity, "via_cardtrader_zero": false}),
            ),
            ("/cart/purchase", serde_json::json!({})),
        ] {
            let response = client
                .post(format!("{}{path}", simulator.base_url()))
                .bearer_auth(&buyer)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
        }
    }

    /// When the driver read CardTrader's quantity for line 0 of purchase `id`.
    pub(crate) async fn line_seen_at(&self, id: uuid::Uuid) -> chrono::DateTime<chrono::Utc> {
        let purchase = brx_sync::purchase::load(&self.rig.pool, id)
            .await
            .unwrap()
            .unwrap();
        purchase.lines[0]
            .memo
            .as_ref()
            .and_then(|memo| memo.seen_at)
            .expect("the line's snapshot records when it was read")
    }

    /// The purchase stored under `key`, once the Purchase RPC has recorded it.
    pub(crate) async fn purchase_id(&self, key: &str) -> uuid::Uuid {
        for _ in 0..200 {
            let id: Option<uuid::Uuid> = sqlx::query_scalar(
                "SELECT id FROM purchases WHERE user_id = $1 AND idempotency_key = $2",
            )
            .bind(self.user.as_uuid())
            .bind(key)
            .fetch_optional(&self.rig.pool)
            .await
            .unwrap();
            if let Some(id) = id {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no purchase was recorded under {key}");
    }

    /// CardTrader locks still held, and items still reserved: both 0 once every purchase ended.
    pub(crate) async fn leftovers(&self) -> (i64, i64) {
        let locks: i64 = sqlx::query_scalar("SELECT count(*) FROM purchase_product_locks")
            .fetch_one(&self.rig.pool)
            .await
            .unwrap();
        let reserved: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(reserved_quantity), 0)::bigint FROM inventory_items WHERE user_id = $1",
        )
        .bind(self.user.as_uuid())
        .fetch_one(&self.rig.pool)
        .await
        .unwrap();
        (locks, reserved)
    }
}
