//! What the soak does to the shop and to CardTrader while the chaos runs: the shop's state at the
//! start ([`Shop`]), what the drivers did and were told ([`Ledger`]), the drivers themselves, and the
//! chaos loop ([`Chaos`]).
//!
//! Every call goes to a random replica and, when that replica is down or going down (UNAVAILABLE,
//! a broken connection), to the next one with the same request: purchases carry one idempotency
//! key across retries, as a real caller's would.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use brx_sync::{
    domain::UserId,
    pb::v1::{
        ConnectAccountRequest, CreateItemRequest, CreatePurchaseRequest, PurchaseLine,
        StartSyncRequest, UpdateItemRequest, account_service_client::AccountServiceClient,
        inventory_service_client::InventoryServiceClient,
        purchase_service_client::PurchaseServiceClient, sync_service_client::SyncServiceClient,
    },
};
use futures::{StreamExt, TryStreamExt};
use tokio::{task::JoinHandle, time::Instant as Deadline};
use tonic::{Code, transport::Channel};

use super::{Setup, replicas::Replicas};
use crate::demo::with_bearer;
use crate::loadtest::{
    simulator::{SimulatorApi, SimulatorProcess},
    webhooks::{Item, deliveries::order_json},
};

/// One product in this many of each seller is restocked by the shop rather than bought and sold.
const RESTOCKED_SHARE: usize = 10;
/// Attempts of one call across replicas before the driver gives up on it.
const ATTEMPTS: u32 = 40;
/// Pause between two attempts of one call.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// The faults CardTrader shows during the chaos: errors, timeouts, answers lost after the write.
pub(super) fn faults() -> cardtrader_sim::Faults {
    cardtrader_sim::Faults {
        error_5xx_rate: 0.02,
        html_error_rate: 0.01,
        timeout_rate: 0.01,
        timeout_after_apply_rate: 0.02,
        ..cardtrader_sim::Faults::default()
    }
}

/// One simulator seller as the shop knows it.
#[derive(Debug)]
pub(super) struct Seller {
    /// `sim-token-{number}`.
    pub(super) number: u32,
    pub(super) user: UserId,
    /// The secret CardTrader signs this seller's webhooks with.
    secret: String,
    /// The items the shop listed after the first sync that buyers and CardTrader sales take from.
    pub(super) items: Vec<Item>,
    /// The items whose quantity the shop sets (restocks), which nobody buys or sells meanwhile: an
    /// UpdateItem quantity is absolute, with no compare-and-set, so a restock racing a sale would
    /// overwrite it by the caller's own doing and no ledger could say what CardTrader must hold.
    pub(super) restocked: Vec<Item>,
}

impl Seller {
    /// Every item of the seller the soak follows.
    pub(super) fn all_items(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().chain(&self.restocked)
    }
}

/// The sellers and how to reach the replicas.
#[derive(Debug)]
pub(super) struct Shop {
    pub(super) sellers: Vec<Seller>,
    channels: Vec<Channel>,
    webhooks: Vec<SocketAddr>,
    token: String,
    http: reqwest::Client,
    /// Order ids of the sales, unique across the run.
    next_order: AtomicI64,
}

impl Shop {
    /// Connects every seller, gives each product [`super::STOCK`] units on CardTrader and syncs them
    /// all once, so the run starts from a shop that agrees with CardTrader.
    pub(super) async fn open(
        setup: &Setup,
        simulator: &SimulatorProcess,
        replicas: &Replicas,
        sellers: u32,
        stock: i64,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let api = simulator.api();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut shop = Self {
            sellers: Vec::new(),
            channels: replicas.channels.clone(),
            webhooks: replicas.slots.iter().map(|slot| slot.http).collect(),
            token: setup.token.clone(),
            http,
            next_order: AtomicI64::new(900_000_000),
        };
        let mut users = Vec::new();
        for number in 1..=sellers {
            for product in api.export(number, None).await? {
                api.set_quantity(number, product.id, stock).await?;
            }
            let user = UserId::from_uuid(uuid::Uuid::new_v4())?;
            let request = ConnectAccountRequest {
                user_id: user.to_string(),
                cardtrader_token: format!("sim-token-{number}"),
            };
            AccountServiceClient::new(shop.channels[0].clone())
                .connect_account(with_bearer(request, &shop.token)?)
                .await
                .with_context(|| format!("ConnectAccount of sim-token-{number}"))?;
            users.push((number, user));
        }
        let synced_at = chrono::Utc::now();
        for (_, user) in &users {
            shop.start_sync(*user).await?;
        }
        wait_for_syncs(
            &setup.monitor,
            synced_at,
            users.len(),
            Duration::from_secs(300),
        )
        .await?;
        let secrets: Vec<String> = futures::stream::iter(&users)
            .map(|(number, _)| api.shared_secret(*number))
            .buffered(8)
            .try_collect()
            .await?;
        for ((number, user), secret) in users.into_iter().zip(secrets) {
            let mut items = Item::of_seller(&setup.monitor, user).await?;
            anyhow::ensure!(
                items.len() >= 2,
                "sim-token-{number} lists {} products after its sync: the soak needs two",
                items.len()
            );
            let restocked = items.split_off(items.len() - (items.len() / RESTOCKED_SHARE).max(1));
            shop.sellers.push(Seller {
                number,
                user,
                secret,
                items,
                restocked,
            });
        }
        let items: usize = shop
            .sellers
            .iter()
            .map(|seller| seller.all_items().count())
            .sum();
        println!(
            "  setup: {sellers} sellers connected, {items} products at {stock} units each, all \
             synced, in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(shop)
    }

    /// A random replica's channel.
    fn channel(&self, attempt: u32) -> Channel {
        let first = rand::random_range(0..self.channels.len());
        self.channels[(first + attempt as usize) % self.channels.len()].clone()
    }

    /// StartSync of `user` on any replica that answers.
    pub(super) async fn start_sync(&self, user: UserId) -> anyhow::Result<String> {
        let request = StartSyncRequest {
            user_id: user.to_string(),
            ..StartSyncRequest::default()
        };
        let answer = self
            .call(|channel| {
                let request = request.clone();
                async move {
                    SyncServiceClient::new(channel)
                        .start_sync(with_bearer(request, &self.token).map_err(internal)?)
                        .await
                }
            })
            .await?;
        Ok(answer.job.map(|job| job.job_id).unwrap_or_default())
    }

    /// UpdateItem on any replica that answers.
    async fn update_item(&self, request: &UpdateItemRequest) -> Result<(), tonic::Status> {
        self.call(|channel| {
            let request = request.clone();
            async move {
                InventoryServiceClient::new(channel)
                    .update_item(with_bearer(request, &self.token).map_err(internal)?)
                    .await
            }
        })
        .await
        .map(|_| ())
    }

    /// `call` on one replica after another until one answers something other than "down".
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            match call(self.channel(attempt)).await {
                Ok(answer) => return Ok(answer.into_inner()),
                Err(status) if replica_down(&status) => last = Some(status),
                Err(status) => return Err(status),
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Err(last.unwrap_or_else(|| tonic::Status::unavailable("no replica answered")))
    }
}

/// Whether another replica (or the same one, a moment later) may answer the same request.
fn replica_down(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::ResourceExhausted
    )
}

/// Whether the service refused the request outright (nothing of it was applied).
fn refused(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}

fn internal(err: anyhow::Error) -> tonic::Status {
    tonic::Status::internal(err.to_string())
}

/// Waits until `count` full syncs created since `since` have succeeded.
async fn wait_for_syncs(
    monitor: &sqlx::PgPool,
    since: chrono::DateTime<chrono::Utc>,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT user_id) FROM jobs \
             WHERE kind = 'sync_full' AND state = 'succeeded' AND created_at >= $1",
        )
        .bind(since)
        .fetch_one(monitor)
        .await?;
        if done as usize >= count {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {count} sellers synced within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the drivers did, and what the replicas told them.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    purchases: AtomicU64,
    purchases_given_up: AtomicU64,
    syncs_requested: AtomicU64,
    edits: AtomicU64,
    /// Units sold on CardTrader behind the shop's back, per (seller index, product).
    pub(super) sales: Mutex<HashMap<(usize, i64), i64>>,
    /// The last price the shop accepted for an item, per (seller index, product).
    pub(super) prices: Mutex<HashMap<(usize, i64), i64>>,
    /// Restocks accepted (UpdateItem of a quantity).
    restocks: AtomicU64,
    /// The last quantity the shop accepted for a restocked item, per (seller index, product).
    pub(super) restocked: Mutex<HashMap<(usize, i64), i64>>,
    /// Webhook deliveries a replica answered 2xx.
    pub(super) acknowledged: Mutex<Vec<uuid::Uuid>>,
    /// Webhook deliveries no replica took.
    pub(super) unacknowledged: AtomicU64,
    /// Every CreateItem sent: (seller index, blueprint, what the answer says of it).
    pub(super) creates: Mutex<Vec<(usize, i64, Created)>>,
}

/// What a CreateItem's answer says about the item it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Created {
    /// Accepted: it must be on CardTrader exactly once.
    Yes,
    /// Refused: it must not be there.
    No,
    /// No answer (the replica died mid-call): there once, or not at all, never twice.
    Maybe,
}

/// Units of each item the soak creates.
pub(super) const CREATED_UNITS: i32 = 5;

/// The ledger's counts at the end.
#[derive(Debug, Clone, Copy)]
pub(super) struct Totals {
    pub(super) purchases: u64,
    pub(super) purchases_given_up: u64,
    pub(super) syncs_requested: u64,
    pub(super) edits: u64,
    pub(super) restocks: u64,
    pub(super) sales: u64,
}

impl Ledger {
    pub(super) fn totals(&self) -> Totals {
        Totals {
            purchases: self.purchases.load(Ordering::Relaxed),
            purchases_given_up: self.purchases_given_up.load(Ordering::Relaxed),
            syncs_requested: self.syncs_requested.load(Ordering::Relaxed),
            edits: self.edits.load(Ordering::Relaxed),
            restocks: self.restocks.load(Ordering::Relaxed),
            sales: self
                .sales
                .lock()
                .map_or(0, |sales| sales.values().sum::<i64>() as u64),
        }
    }
}

/// Starts every driver; each runs until `until`.
pub(super) fn start(
    shop: &Arc<Shop>,
    ledger: &Arc<Ledger>,
    api: &SimulatorApi,
    buyers: u32,
    until: Deadline,
) -> Vec<JoinHandle<anyhow::Result<()>>> {
    let mut drivers = Vec::new();
    for buyer in 0..buyers {
        let (shop, ledger) = (shop.clone(), ledger.clone());
        drivers.push(tokio::spawn(async move {
            buy(&shop, &ledger, buyer, until).await
        }));
    }
    let (shop_, ledger_) = (shop.clone(), ledger.clone());
    drivers.push(tokio::spawn(async move {
        request_syncs(&shop_, &ledger_, until).await
    }));
    let (shop_, ledger_) = (shop.clone(), ledger.clone());
    drivers.push(tokio::spawn(async move {
        edit_prices(&shop_, &ledger_, until).await
    }));
    let (shop_, ledger_) = (shop.clone(), ledger.clone());
    drivers.push(tokio::spawn(async move {
        restock(&shop_, &ledger_, until).await
    }));
    let (shop_, ledger_) = (shop.clone(), ledger.clone());
    drivers.push(tokio::spawn(async move {
        create_items(&shop_, &ledger_, until).await
    }));
    let (shop_, ledger_, api) = (shop.clone(), ledger.clone(), api.clone());
    drivers.push(tokio::spawn(async move {
        sell_elsewhere(&shop_, &ledger_, &api, until).await
    }));
    drivers
}

/// A random (seller index, item) of the shop.
fn pick(shop: &Shop) -> (usize, &Item) {
    let seller = rand::random_range(0..shop.sellers.len());
    let items = &shop.sellers[seller].items;
    (seller, &items[rand::random_range(0..items.len())])
}

/// A buyer: one unit of a random item at a time, retried across replicas under one key.
async fn buy(shop: &Shop, ledger: &Ledger, buyer: u32, until: Deadline) -> anyhow::Result<()> {
    while Deadline::now() < until {
        let (seller, item) = pick(shop);
        let request = CreatePurchaseRequest {
            user_id: shop.sellers[seller].user.to_string(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            lines: vec![PurchaseLine {
                item_id: item.product_id,
                quantity: 1,
            }],
            buyer_ref: format!("soak-buyer-{buyer}"),
        };
        let answer = shop
            .call(|channel| {
                let request = request.clone();
                async move {
                    PurchaseServiceClient::new(channel)
                        .create_purchase(with_bearer(request, &shop.token).map_err(internal)?)
                        .await
                }
            })
            .await;
        match answer {
            // Undone purchases (not enough stock after all, CardTrader refused) answer an error:
            // an answer all the same. The saga's end is read from the database at the end.
            Ok(_) => ledger.purchases.fetch_add(1, Ordering::Relaxed),
            Err(status) if !replica_down(&status) => {
                ledger.purchases.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => ledger.purchases_given_up.fetch_add(1, Ordering::Relaxed),
        };
    }
    Ok(())
}

/// StartSync of a random seller every two seconds, beside the scheduler's own.
async fn request_syncs(shop: &Shop, ledger: &Ledger, until: Deadline) -> anyhow::Result<()> {
    while Deadline::now() < until {
        let seller = &shop.sellers[rand::random_range(0..shop.sellers.len())];
        if shop.start_sync(seller.user).await.is_ok() {
            ledger.syncs_requested.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}

/// New prices for random items, one after the other so "the last accepted" is well defined.
async fn edit_prices(shop: &Shop, ledger: &Ledger, until: Deadline) -> anyhow::Result<()> {
    while Deadline::now() < until {
        let (seller, item) = pick(shop);
        let price = rand::random_range(100..10_000);
        let request = UpdateItemRequest {
            user_id: shop.sellers[seller].user.to_string(),
            product_id: item.product_id,
            price_cents: Some(price),
            ..UpdateItemRequest::default()
        };
        if shop.update_item(&request).await.is_ok() {
            ledger.edits.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut prices) = ledger.prices.lock() {
                prices.insert((seller, item.product_id), price);
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    Ok(())
}

/// New quantities for random restocked items, one after the other so "the last accepted" is well
/// defined. A call no replica answered may have landed: it is sent again (an absolute quantity
/// can be) until one answers, so the ledger always knows the last quantity sent.
async fn restock(shop: &Shop, ledger: &Ledger, until: Deadline) -> anyhow::Result<()> {
    while Deadline::now() < until {
        let seller = rand::random_range(0..shop.sellers.len());
        let items = &shop.sellers[seller].restocked;
        let item = &items[rand::random_range(0..items.len())];
        let quantity = rand::random_range(super::STOCK - 50..super::STOCK + 50);
        let request = UpdateItemRequest {
            user_id: shop.sellers[seller].user.to_string(),
            product_id: item.product_id,
            quantity: Some(i32::try_from(quantity)?),
            ..UpdateItemRequest::default()
        };
        let mut rounds = 0;
        loop {
            match shop.update_item(&request).await {
                Ok(_) => break,
                Err(status) if refused(&status) => anyhow::bail!(
                    "restocking sim-token-{} product {} was refused: {status}",
                    shop.sellers[seller].number,
                    item.product_id
                ),
                // No answer, or one that does not say whether the edit committed.
                Err(status) => {
                    rounds += 1;
                    anyhow::ensure!(
                        rounds < 10,
                        "no replica took a restock of sim-token-{} product {}: {status}",
                        shop.sellers[seller].number,
                        item.product_id
                    );
                }
            }
        }
        ledger.restocks.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut restocked) = ledger.restocked.lock() {
            restocked.insert((seller, item.product_id), quantity);
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    Ok(())
}

/// New items the shop lists, each of a blueprint its seller has nowhere else, so CardTrader's stock
/// of that blueprint tells whether the create landed once, not at all, or twice. One attempt each:
/// CreateItem carries no idempotency key, so a caller retrying after a lost answer may create twice
/// by its own doing.
async fn create_items(shop: &Shop, ledger: &Ledger, until: Deadline) -> anyhow::Result<()> {
    let mut used: std::collections::HashSet<(usize, i64)> = shop
        .sellers
        .iter()
        .enumerate()
        .flat_map(|(index, seller)| {
            seller
                .all_items()
                .map(move |item| (index, item.blueprint_id))
        })
        .collect();
    while Deadline::now() < until {
        let seller = rand::random_range(0..shop.sellers.len());
        let blueprint = rand::random_range(1..=cardtrader_sim::CATALOGUE_BLUEPRINTS);
        if !used.insert((seller, blueprint)) {
            continue;
        }
        let request = CreateItemRequest {
            user_id: shop.sellers[seller].user.to_string(),
            blueprint_id: blueprint,
            price_cents: 500,
            quantity: CREATED_UNITS,
            ..CreateItemRequest::default()
        };
        let channel = shop.channel(0);
        let answer = match with_bearer(request, &shop.token) {
            Ok(request) => {
                InventoryServiceClient::new(channel)
                    .create_item(request)
                    .await
            }
            Err(err) => Err(internal(err)),
        };
        let created = match answer {
            Ok(_) => Created::Yes,
            Err(status)
                if matches!(
                    status.code(),
                    Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound
                ) =>
            {
                Created::No
            }
            Err(_) => Created::Maybe,
        };
        if let Ok(mut creates) = ledger.creates.lock() {
            creates.push((seller, blueprint, created));
        }
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    Ok(())
}

/// A unit sold on CardTrader outside the shop, then the signed `order.create` CardTrader would send,
/// delivered to whichever replica takes it.
async fn sell_elsewhere(
    shop: &Shop,
    ledger: &Ledger,
    api: &SimulatorApi,
    until: Deadline,
) -> anyhow::Result<()> {
    while Deadline::now() < until {
        let (seller_index, item) = pick(shop);
        let seller = &shop.sellers[seller_index];
        api.adjust_quantity(seller.number, item.product_id, -1)
            .await
            .context("selling a unit on the simulator")?;
        if let Ok(mut sales) = ledger.sales.lock() {
            *sales.entry((seller_index, item.product_id)).or_default() += 1;
        }
        let order_id = shop.next_order.fetch_add(1, Ordering::Relaxed);
        let order = order_json(order_id, &[item]);
        let event_id = uuid::Uuid::new_v4();
        let event = serde_json::json!({
            "id": event_id, "time": chrono::Utc::now().timestamp(), "cause": "order.create",
            "object_class": "Order", "object_id": order_id, "mode": "live", "data": order,
        });
        let body = serde_json::to_vec(&event)?;
        let signature = cardtrader_sim::webhook_signature(&seller.secret, &body);
        let mut delivered = false;
        for attempt in 0..ATTEMPTS {
            let replica = shop.webhooks[(seller_index + attempt as usize) % shop.webhooks.len()];
            let sent = shop
                .http
                .post(format!(
                    "http://{replica}/webhooks/cardtrader/{}",
                    seller.user
                ))
                .header("content-type", "application/json")
                .header("signature", &signature)
                .body(body.clone())
                .send()
                .await;
            if sent.is_ok_and(|answer| answer.status().is_success()) {
                delivered = true;
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        if delivered {
            if let Ok(mut acknowledged) = ledger.acknowledged.lock() {
                acknowledged.push(event_id);
            }
        } else {
            ledger.unacknowledged.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// The chaos loop and what it measured.
#[derive(Debug, Default)]
pub(super) struct Chaos {
    kills: u32,
    /// From a SIGKILL until no job is still held by the killed process.
    takeovers: Vec<Duration>,
    drains: Vec<Duration>,
    redis_cuts: u32,
    catalogue_cuts: u32,
    bursts_429: u32,
    pub(super) peak_connections: i64,
}

/// How long Redis or the catalogue stays cut.
const CUT_FOR: Duration = Duration::from_secs(3);

impl Chaos {
    /// Until `until`, every few seconds: a SIGKILL and restart, a SIGTERM and restart, a Redis or
    /// catalogue cut, or a burst of 429s.
    pub(super) async fn run(
        &mut self,
        replicas: &mut Replicas,
        setup: &Setup,
        api: &SimulatorApi,
        until: Deadline,
        lease: Duration,
    ) -> anyhow::Result<()> {
        let mut turn = 0_u32;
        while Deadline::now() < until {
            tokio::time::sleep(Duration::from_millis(rand::random_range(2_000..6_000))).await;
            self.sample_connections(setup).await;
            replicas.sample_rss();
            let index = rand::random_range(0..replicas.slots.len());
            match turn % 5 {
                0 => {
                    self.kill(replicas, setup, index, lease).await?;
                    println!("      SIGKILL {} (restarted)", replicas.slots[index].name);
                }
                1 => {
                    setup.redis.cut().await;
                    tokio::time::sleep(CUT_FOR).await;
                    setup.redis.restore();
                    println!("      Redis cut for {CUT_FOR:?}");
                    self.redis_cuts += 1;
                }
                2 => {
                    let drained = replicas.drain(index).await?;
                    println!(
                        "      SIGTERM {}: drained in {:.1} s (restarted)",
                        replicas.slots[index].name,
                        drained.as_secs_f64()
                    );
                    self.drains.push(drained);
                    replicas.spawn(index)?;
                    replicas.wait_serving(index).await?;
                }
                3 => {
                    setup.catalogue.cut().await;
                    tokio::time::sleep(CUT_FOR).await;
                    setup.catalogue.restore();
                    println!("      catalogue cut for {CUT_FOR:?}");
                    self.catalogue_cuts += 1;
                }
                _ => {
                    api.set_faults(&cardtrader_sim::Faults {
                        burst_429: 30,
                        ..super::work::faults()
                    })
                    .await?;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    api.set_faults(&super::work::faults()).await?;
                    println!("      30 answers 429 in a burst");
                    self.bursts_429 += 1;
                }
            }
            turn += 1;
        }
        Ok(())
    }

    /// SIGKILL of replica `index`, restarted a second later; measures the takeover of its jobs.
    async fn kill(
        &mut self,
        replicas: &mut Replicas,
        setup: &Setup,
        index: usize,
        lease: Duration,
    ) -> anyhow::Result<()> {
        let owner = format!("{}-%", replicas.slots[index].name);
        let held: Vec<(uuid::Uuid, String)> = sqlx::query_as(
            "SELECT id, lease_owner FROM jobs WHERE state = 'running' AND lease_owner LIKE $1",
        )
        .bind(&owner)
        .fetch_all(&setup.monitor)
        .await?;
        let killed_at = Instant::now();
        replicas.kill(index).await?;
        self.kills += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
        replicas.spawn(index)?;
        if !held.is_empty() {
            let ids: Vec<uuid::Uuid> = held.iter().map(|(id, _)| *id).collect();
            let owners: Vec<String> = held.into_iter().map(|(_, owner)| owner).collect();
            let give_up = killed_at + lease * 4;
            loop {
                let still_held: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM jobs WHERE id = ANY($1) AND state = 'running' \
                     AND lease_owner = ANY($2)",
                )
                .bind(&ids)
                .bind(&owners)
                .fetch_one(&setup.monitor)
                .await?;
                if still_held == 0 {
                    self.takeovers.push(killed_at.elapsed());
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < give_up,
                    "{still_held} jobs of the killed {} still held {:?} after the kill \
                     (lease {lease:?})",
                    replicas.slots[index].name,
                    killed_at.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        replicas.wait_serving(index).await?;
        Ok(())
    }

    async fn sample_connections(&mut self, setup: &Setup) {
        let count: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(&setup.database)
                .fetch_one(&setup.monitor)
                .await;
        self.peak_connections = self.peak_connections.max(count.unwrap_or(0));
    }

    /// The chaos figures.
    pub(super) fn print(&self, lease: Duration) {
        let mut takeovers = self.takeovers.clone();
        takeovers.sort();
        let at = |share: f64| {
            takeovers
                .get(((takeovers.len() as f64 - 1.0) * share).round() as usize)
                .map_or_else(
                    || "-".to_owned(),
                    |took| format!("{:.1} s", took.as_secs_f64()),
                )
        };
        println!(
            "    {} SIGKILLs; takeover of the killed replica's jobs p50 {} p99 {} (BRX_JOB_LEASE {:?}, \
             {} kills held jobs)",
            self.kills,
            at(0.5),
            at(0.99),
            lease,
            takeovers.len()
        );
        let mut drains = self.drains.clone();
        drains.sort();
        println!(
            "    {} SIGTERM drains: min {} median {} max {}",
            drains.len(),
            drains
                .first()
                .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            drains
                .get(drains.len() / 2)
                .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            drains
                .last()
                .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        );
        println!(
            "    {} Redis cuts, {} catalogue cuts ({CUT_FOR:?} each), {} bursts of 429s",
            self.redis_cuts, self.catalogue_cuts, self.bursts_429
        );
    }
}
