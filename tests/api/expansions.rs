//! Products' expansions against the documented `/products/export`, which carries none: learnt from
//! CardTrader's `/expansions/export` and `/blueprints/export` into the shared index, or said by an
//! export asked for by expansion. The ListInventory filter and expansion-scoped syncs rely on them.

use std::time::Duration;

use brx_sync::{
    domain::UserId,
    pb::v1::{
        InventoryFilter, ListInventoryRequest, SyncState,
        inventory_service_client::InventoryServiceClient,
    },
};

use crate::helpers::{CatalogDb, TestApp, authorized, seller_listing, spawn_app_with, sync_to_end};

/// Blueprints of simulated expansion 2 (each expansion holds a hundred consecutive ids).
const IN_EXPANSION_2: [i64; 3] = [101, 102, 103];
/// Blueprints of simulated expansion 3.
const IN_EXPANSION_3: [i64; 2] = [201, 202];
/// A blueprint of simulated expansion 7.
const IN_EXPANSION_7: i64 = 650;

async fn app(learn: bool) -> (TestApp, CatalogDb) {
    let catalog = CatalogDb::seeded(1_000).await;
    let url = catalog.config.storage.mysql_url.clone();
    let app = spawn_app_with(|config| {
        config.storage.mysql_url = url;
        config.jobs.poll_interval = Duration::from_millis(100);
        config.catalog.expansion_learn = learn;
    })
    .await;
    (app, catalog)
}

/// The seller's product ids ListInventory lists, filtered by `expansion_id` (0: all), ascending.
async fn listed(app: &TestApp, user: UserId, expansion_id: i64) -> Vec<i64> {
    let request = ListInventoryRequest {
        user_id: user.to_string(),
        filter: Some(InventoryFilter {
            expansion_id,
            ..InventoryFilter::default()
        }),
        page_size: 500,
        page_token: String::new(),
    };
    let mut ids: Vec<i64> = InventoryServiceClient::new(app.channel().await)
        .list_inventory(authorized(request, &app.seller_token(user)))
        .await
        .unwrap()
        .into_inner()
        .items
        .iter()
        .map(|item| item.product_id)
        .collect();
    ids.sort_unstable();
    ids
}

fn sorted(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort_unstable();
    ids
}

/// `/blueprints/export` calls the app made, from its metrics.
async fn blueprint_exports(app: &TestApp) -> u64 {
    let (_, metrics) = app.admin_get("/metrics").await;
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("brx_cardtrader_requests_total{")
                && line.contains("endpoint=\"blueprints_export\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn list_inventory_filtered_by_expansion_finds_the_seller_s_items_though_the_export_never_says_it()
 {
    let (app, _catalog) = app(true).await;
    let blueprints = [101, 201, 102, IN_EXPANSION_7, 202, 103];
    let (user, token, products) = seller_listing(&app, &blueprints).await;
    let exported = app.simulator.product(&token, products[0]).unwrap();
    assert!(
        exported.get("expansion").is_none(),
        "the export has no expansion: {exported}"
    );

    let synced = sync_to_end(&app, user, vec![], vec![]).await;

    assert_eq!(
        synced.state(),
        SyncState::Succeeded,
        "{}",
        synced.last_error
    );
    let of = |wanted: &[i64]| {
        sorted(
            blueprints
                .iter()
                .zip(&products)
                .filter(|(blueprint, _)| wanted.contains(blueprint))
                .map(|(_, &product)| product)
                .collect(),
        )
    };
    assert_eq!(listed(&app, user, 2).await, of(&IN_EXPANSION_2));
    assert_eq!(listed(&app, user, 3).await, of(&IN_EXPANSION_3));
    assert_eq!(listed(&app, user, 7).await, of(&[IN_EXPANSION_7]));
    assert!(listed(&app, user, 4).await.is_empty());
}

#[tokio::test]
async fn a_second_seller_s_sync_finds_the_expansions_in_the_shared_index_without_reading_them_again()
 {
    let (app, _catalog) = app(true).await;
    let (first, _, _) = seller_listing(&app, &[101, 201]).await;
    let (second, _, second_products) = seller_listing(&app, &[102, 202]).await;
    let synced = sync_to_end(&app, first, vec![], vec![]).await;
    assert_eq!(
        synced.state(),
        SyncState::Succeeded,
        "{}",
        synced.last_error
    );
    let reads = blueprint_exports(&app).await;
    assert!(
        reads >= 2,
        "the first seller's sync read its two expansions, got {reads}"
    );

    let synced = sync_to_end(&app, second, vec![], vec![]).await;

    assert_eq!(
        synced.state(),
        SyncState::Succeeded,
        "{}",
        synced.last_error
    );
    assert_eq!(listed(&app, second, 2).await, vec![second_products[0]]);
    assert_eq!(listed(&app, second, 3).await, vec![second_products[1]]);
    assert_eq!(
        blueprint_exports(&app).await,
        reads,
        "blueprints of known expansions are not read again"
    );
}

#[tokio::test]
async fn a_sync_scoped_to_an_expansion_removes_its_products_deleted_on_cardtrader_and_leaves_other_expansions_alone()
 {
    let (app, _catalog) = app(true).await;
    let (user, token, products) = seller_listing(&app, &[101, 102, 201, 202]).await;
    let synced = sync_to_end(&app, user, vec![], vec![]).await;
    assert_eq!(
        synced.state(),
        SyncState::Succeeded,
        "{}",
        synced.last_error
    );
    // One product of each expansion goes on CardTrader.
    app.simulator.set_quantity(&token, products[0], 0);
    app.simulator.set_quantity(&token, products[2], 0);

    let last = sync_to_end(&app, user, vec![], vec![2]).await;

    assert_eq!(last.state(), SyncState::Succeeded, "{}", last.last_error);
    assert_eq!(last.progress.unwrap().deleted, 1);
    assert_eq!(
        listed(&app, user, 0).await,
        sorted(vec![products[1], products[2], products[3]]),
        "expansion 2 reconciled, expansion 3 left to its own sync"
    );
}

#[tokio::test]
async fn an_export_asked_for_by_expansion_says_its_expansion_so_the_scoped_sync_reconciles_without_learning()
 {
    let (app, _catalog) = app(false).await;
    let (user, token, products) = seller_listing(&app, &[101, 102, 201]).await;
    let synced = sync_to_end(&app, user, vec![], vec![]).await;
    assert_eq!(
        synced.state(),
        SyncState::Succeeded,
        "{}",
        synced.last_error
    );
    assert!(
        listed(&app, user, 2).await.is_empty(),
        "without learning, a full sync cannot know expansions"
    );
    let first = sync_to_end(&app, user, vec![], vec![2]).await;
    assert_eq!(first.state(), SyncState::Succeeded, "{}", first.last_error);
    assert_eq!(
        listed(&app, user, 2).await,
        sorted(vec![products[0], products[1]])
    );
    app.simulator.set_quantity(&token, products[1], 0);

    let last = sync_to_end(&app, user, vec![], vec![2]).await;

    assert_eq!(last.state(), SyncState::Succeeded, "{}", last.last_error);
    assert_eq!(last.progress.unwrap().deleted, 1);
    assert_eq!(
        listed(&app, user, 0).await,
        sorted(vec![products[0], products[2]])
    );
}
