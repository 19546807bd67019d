//! `brx-sync demo`: the whole service on this machine, with visible progress: start a replica on free
//! ports against the local databases, wait for it to be ready, call it over gRPC as another service
//! would, and shut it down gracefully. Each issue that adds a workflow adds its step here.

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::SecretString;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use base64::Engine;

use brx_sync::App;
use brx_sync::api::auth::mint_token;
use brx_sync::config::Config;
use brx_sync::domain::UserId;
use brx_sync::pb::v1::{
    ConnectAccountRequest, CreatePurchaseRequest, GetItemRequest, GetStatsRequest, MappingState,
    PoolState, PurchaseLine, PushState, ResolveBlueprintsRequest, StartSyncRequest,
    UpdateItemRequest, WatchSyncRequest, account_service_client::AccountServiceClient,
    admin_service_client::AdminServiceClient, blueprint_service_client::BlueprintServiceClient,
    inventory_service_client::InventoryServiceClient,
    purchase_service_client::PurchaseServiceClient, sync_service_client::SyncServiceClient,
};
use cardtrader_sim::{SimulatorConfig, SimulatorHandle};

/// Runs the demo against the configured databases.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let secret = uuid::Uuid::new_v4().to_string();
    config.server.grpc_addr = "127.0.0.1:0".parse()?;
    config.server.http_addr = "127.0.0.1:0".parse()?;
    config.server.admin_addr = "127.0.0.1:0".parse()?;
    config.auth.jwt_hs256_secret = Some(SecretString::from(secret.clone()));
    config.auth.jwt_rs256_public_key_path = None;
    config.auth.auth_disabled = false;
    config.storage.migrate_on_start = true;
    // The simulator scatters the demo seller's 50,000 products over all its 3,100 expansions: with
    // an empty expansion index the sync would spend minutes learning them (tests cover learning).
    config.catalog.expansion_learn = false;
    // The demo's own marketplace and a throwaway key: nothing here touches real tokens.
    let sim_config = SimulatorConfig {
        products_per_seller: DEMO_PRODUCTS,
        ..SimulatorConfig::default()
    };
    let simulator = SimulatorHandle::start(sim_config, "127.0.0.1:0".parse()?).await?;
    config.cardtrader.base_url = simulator.base_url();
    let demo_key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    config.auth.encryption_keys = Some(SecretString::from(format!("demo:{demo_key}")));

    println!("brx-sync demo: one replica against the local PostgreSQL, MariaDB and Redis\n");
    let started = std::time::Instant::now();
    brx_sync::blueprints::fixture::seed(
        &config.storage.mysql_url,
        &config.catalog,
        CATALOGUE_PRINTS,
    )
    .await
    .context("seeding the MySQL catalogue (is MariaDB running at BRX_MYSQL_URL?)")?;
    println!(
        "[1/10] catalogue fixture: {CATALOGUE_PRINTS} prints in {} ({:.1} s)",
        config.catalog.tables.join(", "),
        started.elapsed().as_secs_f64()
    );
    let app = App::build(config).await?;
    let (grpc_addr, http_addr, admin_addr) = (app.grpc_addr(), app.http_addr(), app.admin_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    println!(
        "[2/10] serving gRPC on {grpc_addr}, webhooks on {http_addr}, metrics on http://{admin_addr}/metrics; CardTrader simulator at {}",
        simulator.base_url()
    );

    let channel = Channel::from_shared(format!("http://{grpc_addr}"))?
        .connect()
        .await?;
    wait_until_serving(HealthClient::new(channel.clone())).await?;
    println!("[3/10] database reachable and migrated: health is SERVING");

    let token = mint_token(&secret, None, "service", Duration::from_secs(300))?;
    let mut request = tonic::Request::new(GetStatsRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let stats = AdminServiceClient::new(channel)
        .get_stats(request)
        .await?
        .into_inner();
    println!(
        "[4/10] AdminService.GetStats as the service role: version {}",
        stats.version
    );
    for pool in &stats.pools {
        let state = match pool.state() {
            PoolState::Up => "up",
            PoolState::Down => "DOWN",
            PoolState::Connecting | PoolState::Unspecified => "connecting",
        };
        let error = if pool.last_error.is_empty() {
            String::new()
        } else {
            format!(" ({})", pool.last_error)
        };
        println!(
            "        {:<9} {state:<10} {}/{} connections in use{error}",
            pool.name, pool.in_use, pool.max_size
        );
    }

    connect_a_seller(channel_for(grpc_addr).await?, &secret, &simulator).await?;
    resolve_some_blueprints(channel_for(grpc_addr).await?, &token, &simulator).await?;
    let expected = simulator.inventory_len(&simulator.token(1));
    sync_the_seller(channel_for(grpc_addr).await?, &token, expected).await?;
    buy_from_the_seller(channel_for(grpc_addr).await?, &token, &simulator).await?;
    edit_and_hear_back(channel_for(grpc_addr).await?, &token, &simulator, http_addr).await?;

    let _ = stop.send(());
    server.await.context("server task")??;
    simulator.shutdown().await;
    println!("[10/10] graceful shutdown: NOT_SERVING, RPCs drained, pools closed\n\ndemo finished");
    Ok(())
}

/// Prints the demo seeds: the simulator's catalogue blueprints 1..=300,000 (about 2% of its products use
/// ids above that, which the shop does not sell: they come back unmapped).
const CATALOGUE_PRINTS: i64 = cardtrader_sim::CATALOGUE_BLUEPRINTS;

/// Maps the blueprints of the seller's first listings through the caches, twice: MySQL, then L1.
async fn resolve_some_blueprints(
    channel: Channel,
    token: &str,
    simulator: &SimulatorHandle,
) -> anyhow::Result<()> {
    let mut blueprint_ids: Vec<i64> = (1..=20)
        .filter_map(|n| simulator.product(&simulator.token(1), n as i64 + 100_000_000))
        .filter_map(|product| {
            product
                .get("blueprint_id")
                .and_then(serde_json::Value::as_i64)
        })
        .collect();
    blueprint_ids.push(CATALOGUE_PRINTS + 1);
    let mut client = BlueprintServiceClient::new(channel);
    for pass in ["cold", "warm"] {
        let mut request = tonic::Request::new(ResolveBlueprintsRequest {
            blueprint_ids: blueprint_ids.clone(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let started = std::time::Instant::now();
        let mappings = client
            .resolve_blueprints(request)
            .await?
            .into_inner()
            .mappings;
        let mapped = mappings
            .iter()
            .filter(|m| m.state() == MappingState::Mapped)
            .count();
        println!(
            "[6/10] BlueprintService.ResolveBlueprints ({pass}): {} blueprints, {mapped} mapped, {} unmapped, in {:.1} ms",
            mappings.len(),
            mappings.len() - mapped,
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// Runs a full sync of the demo seller and follows it with WatchSync, as a progress bar over the
/// `expected` products the simulator holds for them.
async fn sync_the_seller(channel: Channel, token: &str, expected: u64) -> anyhow::Result<()> {
    let mut client = SyncServiceClient::new(channel);
    let start = StartSyncRequest {
        user_id: DEMO_SELLER.into(),
        ..Default::default()
    };
    let job = client
        .start_sync(with_bearer(start, token)?)
        .await?
        .into_inner()
        .job
        .context("StartSync answered without a job")?;
    let bar = ProgressBar::new(expected).with_style(ProgressStyle::with_template(
        "      sync [{bar:30}] {pos}/{len} products, {msg} ({elapsed})",
    )?);
    bar.enable_steady_tick(Duration::from_millis(100));
    let mut updates = client
        .watch_sync(with_bearer(
            WatchSyncRequest {
                job_id: job.job_id.clone(),
            },
            token,
        )?)
        .await?
        .into_inner();
    let mut last = job;
    while let Some(update) = updates.message().await? {
        let update = update
            .job
            .context("WatchSync sent an update without a job")?;
        let progress = update.progress.unwrap_or_default();
        bar.set_position(progress.products_seen);
        bar.set_message(format!(
            "{:?}, chunk {}/{}, {} written",
            update.state(),
            progress.chunks_done,
            progress.chunks_total.max(progress.chunks_done),
            progress.written
        ));
        last = update;
    }
    bar.finish_and_clear();
    let progress = last.progress.unwrap_or_default();
    println!(
        "[7/10] SyncService.StartSync + WatchSync: {:?}; {} products seen, {} written, {} unchanged, {} unmapped, {} swept",
        last.state(),
        progress.products_seen,
        progress.written,
        progress.unchanged,
        progress.unmapped,
        progress.deleted
    );
    Ok(())
}

/// Two purchases of the demo seller's items: one that completes on both sides, and one whose second
/// item CardTrader no longer has, so the first is given back and the purchase is undone.
async fn buy_from_the_seller(
    channel: Channel,
    token: &str,
    simulator: &SimulatorHandle,
) -> anyhow::Result<()> {
    let cardtrader = simulator.token(1);
    let upstream = |id: i64| {
        simulator
            .product(&cardtrader, id)
            .and_then(|product| product.get("quantity").and_then(serde_json::Value::as_i64))
    };
    // The seller's first listings with at least two units (product ids start at 100,000,001).
    let items: Vec<i64> = (100_000_001..100_000_001 + 1_000)
        .filter(|id| upstream(*id).is_some_and(|quantity| quantity >= 2))
        .take(3)
        .collect();
    let [sold, given_back, gone] = items[..] else {
        anyhow::bail!("the demo seller has too few listings with two units");
    };
    let mut client = PurchaseServiceClient::new(channel);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let purchase = |key: &str, lines: &[(i64, i32)]| CreatePurchaseRequest {
        user_id: DEMO_SELLER.into(),
        idempotency_key: format!("demo-{run}-{key}"),
        lines: lines
            .iter()
            .map(|&(item_id, quantity)| PurchaseLine { item_id, quantity })
            .collect(),
        buyer_ref: format!("demo order {key}"),
    };

    let before = upstream(sold);
    let started = std::time::Instant::now();
    let completed = client
        .create_purchase(with_bearer(purchase("1", &[(sold, 1)]), token)?)
        .await?
        .into_inner()
        .purchase
        .context("Purchase answered without a purchase")?;
    println!(
        "[8/10] PurchaseService.CreatePurchase: {:?} in {:.0} ms, {} step-log entries; item {sold} on CardTrader {} -> {}",
        completed.state(),
        started.elapsed().as_secs_f64() * 1000.0,
        completed.steps,
        before.unwrap_or(0),
        upstream(sold).unwrap_or(0)
    );

    // Sold elsewhere behind the service's back: CardTrader no longer has the second item.
    simulator.set_quantity(&cardtrader, gone, 0);
    let before = upstream(given_back);
    let undone = client
        .create_purchase(with_bearer(
            purchase("2", &[(given_back, 1), (gone, 1)]),
            token,
        )?)
        .await;
    let message = match undone {
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
        Ok(answer) => format!(
            "{:?}",
            answer.into_inner().purchase.unwrap_or_default().state()
        ),
    };
    println!(
        "      a purchase whose second item CardTrader no longer has: {message}\n      \
         item {given_back} was taken on CardTrader, then given back: {} before, {} after; reservations released",
        before.unwrap_or(0),
        upstream(given_back).unwrap_or(0)
    );
    Ok(())
}

/// The shop edits an item (pushed to CardTrader through the outbox), then CardTrader reports a sale
/// through a signed webhook (applied to local stock by a job).
async fn edit_and_hear_back(
    channel: Channel,
    token: &str,
    simulator: &SimulatorHandle,
    http_addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let cardtrader = simulator.token(1);
    let upstream = |id: i64, field: &str| {
        simulator
            .product(&cardtrader, id)
            .and_then(|product| product.get(field).and_then(serde_json::Value::as_i64))
    };
    // Listings the purchases above did not touch.
    let items: Vec<i64> = (100_000_101..100_000_101 + 1_000)
        .filter(|id| upstream(*id, "quantity").is_some_and(|quantity| quantity >= 2))
        .take(2)
        .collect();
    let [edited, sold] = items[..] else {
        anyhow::bail!("the demo seller has too few listings with two units");
    };
    let mut client = InventoryServiceClient::new(channel);
    let get = |product_id: i64| GetItemRequest {
        user_id: DEMO_SELLER.into(),
        product_id,
    };
    let price_before = upstream(edited, "price_cents").unwrap_or(0);
    let started = std::time::Instant::now();
    let update = UpdateItemRequest {
        user_id: DEMO_SELLER.into(),
        product_id: edited,
        price_cents: Some(price_before + 100),
        ..Default::default()
    };
    client.update_item(with_bearer(update, token)?).await?;
    let mut state = PushState::Pending;
    while state == PushState::Pending && started.elapsed() < std::time::Duration::from_secs(15) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        state = client
            .get_item(with_bearer(get(edited), token)?)
            .await?
            .into_inner()
            .item
            .context("GetItem answered without an item")?
            .push_state();
    }
    println!(
        "[9/10] InventoryService.UpdateItem: item {edited} committed with its push, {state:?} after {:.0} ms; \
         price on CardTrader {price_before} -> {}",
        started.elapsed().as_secs_f64() * 1000.0,
        upstream(edited, "price_cents").unwrap_or(0)
    );

    let local_before = client
        .get_item(with_bearer(get(sold), token)?)
        .await?
        .into_inner()
        .item
        .context("GetItem answered without an item")?
        .quantity;
    let seller = simulator
        .seller(&cardtrader)
        .context("the demo seller is gone from the simulator")?;
    // A new order id each run: the demo database outlives runs, and an order is applied only once.
    let order_id = chrono::Utc::now().timestamp_micros() % 1_000_000_000_000;
    let order = serde_json::json!({
        "id": order_id, "state": "paid", "via_cardtrader_zero": false,
        "order_items": [{"product_id": sold, "quantity": 1}],
    });
    let body = serde_json::to_vec(&serde_json::json!({
        "id": uuid::Uuid::new_v4(), "time": chrono::Utc::now().timestamp(), "cause": "order.create",
        "object_class": "Order", "object_id": order_id, "mode": "live", "data": order,
    }))?;
    let url = format!("http://{http_addr}/webhooks/cardtrader/{DEMO_SELLER}");
    let started = std::time::Instant::now();
    let answer = reqwest::Client::new()
        .post(&url)
        .header(
            "Signature",
            cardtrader_sim::webhook_signature(&seller.shared_secret, &body),
        )
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await?;
    let answered_in = started.elapsed();
    let mut local_after = local_before;
    while local_after == local_before && started.elapsed() < std::time::Duration::from_secs(15) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        local_after = client
            .get_item(with_bearer(get(sold), token)?)
            .await?
            .into_inner()
            .item
            .context("GetItem answered without an item")?
            .quantity;
    }
    println!(
        "      a signed order.create webhook (a sale on CardTrader): HTTP {} in {:.1} ms; \
         item {sold} locally {local_before} -> {local_after} after {:.0} ms",
        answer.status().as_u16(),
        answered_in.as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

pub(crate) fn with_bearer<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// The shop user the demo acts for.
const DEMO_SELLER: &str = "0d3e5c1a-5b6f-4c2e-9a1d-7e2f00000001";
/// Products of each simulated seller: enough for a sync of fifty chunks to watch.
const DEMO_PRODUCTS: u64 = 50_000;

/// A seller connects their CardTrader token, as the shop's account page would.
async fn connect_a_seller(
    channel: Channel,
    secret: &str,
    simulator: &SimulatorHandle,
) -> anyhow::Result<()> {
    // A fixed seller, so running the demo again reconnects the same account instead of tripping the
    // one-CardTrader-user-per-seller rule.
    let seller = UserId::parse(DEMO_SELLER)?;
    let token = mint_token(secret, Some(seller), "service", Duration::from_secs(300))?;
    let cardtrader_token = simulator.token(1);
    let mut request = tonic::Request::new(ConnectAccountRequest {
        user_id: seller.to_string(),
        cardtrader_token,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let account = AccountServiceClient::new(channel)
        .connect_account(request)
        .await?
        .into_inner()
        .account
        .context("ConnectAccount answered without an account")?;
    println!(
        "[5/10] AccountService.ConnectAccount: seller {seller} is {:?} as CardTrader user {}; token checked with /info, stored encrypted",
        account.status(),
        account.cardtrader_user_id
    );
    Ok(())
}

pub(crate) async fn channel_for(addr: std::net::SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

pub(crate) async fn wait_until_serving(mut health: HealthClient<Channel>) -> anyhow::Result<()> {
    let spinner = ProgressBar::new_spinner()
        .with_style(ProgressStyle::with_template(
            "      {spinner} {msg} ({elapsed})",
        )?)
        .with_message("waiting for PostgreSQL and migrations");
    spinner.enable_steady_tick(Duration::from_millis(100));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status();
        if status == ServingStatus::Serving {
            spinner.finish_and_clear();
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            spinner.abandon();
            anyhow::bail!("not SERVING after 60 s: is PostgreSQL running at BRX_DATABASE_URL?");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
