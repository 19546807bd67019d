//! InventoryService end to end: listing with keyset pages while a sync writes, edits that commit
//! locally with their push and reach CardTrader (singly or in bulk, through an outage, newest edit
//! winning), reservations that bound edits, creates that are never sent twice, and the storefront.

use std::{collections::BTreeSet, time::Duration};

use std::sync::Arc;

use brx_sync::{
    inventory::push::PushHandler,
    jobs::{
        Lane, Ranking,
        worker::{Worker, WorkerSettings},
    },
    pb::v1::{
        CreateItemRequest, DeleteItemRequest, GetItemRequest, InventoryFilter,
        ListInventoryRequest, ListOffersRequest, PushState, UpdateItemRequest,
        inventory_service_client::InventoryServiceClient,
    },
};
use cardtrader_sim::Faults;
use tonic::{Code, transport::Channel};

use crate::helpers::{PurchaseRig, authorized, wait_until};

/// A seller with `products` synced products; the app's own interactive workers run the pushes.
async fn shop(products: u64) -> PurchaseRig {
    PurchaseRig::with(4, products, |config| {
        config.cardtrader.breaker_open_for = Duration::from_millis(200);
    })
    .await
}

async fn client(shop: &PurchaseRig) -> InventoryServiceClient<Channel> {
    InventoryServiceClient::new(shop.rig.app.channel().await)
}

fn as_seller<T>(shop: &PurchaseRig, message: T) -> tonic::Request<T> {
    authorized(message, &shop.rig.app.seller_token(shop.user))
}

fn edit(shop: &PurchaseRig, product_id: i64) -> UpdateItemRequest {
    UpdateItemRequest {
        user_id: shop.user.to_string(),
        product_id,
        ..Default::default()
    }
}

async fn update(
    shop: &PurchaseRig,
    request: UpdateItemRequest,
) -> Result<brx_sync::pb::v1::Item, tonic::Status> {
    client(shop)
        .await
        .update_item(as_seller(shop, request))
        .await
        .map(|answer| answer.into_inner().item.unwrap())
}

async fn get(shop: &PurchaseRig, product_id: i64) -> brx_sync::pb::v1::Item {
    let request = GetItemRequest {
        user_id: shop.user.to_string(),
        product_id,
    };
    client(shop)
        .await
        .get_item(as_seller(shop, request))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap()
}

/// Waits (at most 40 s) until no push of the seller is pending.
async fn until_pushed(shop: &PurchaseRig) {
    for _ in 0..400 {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inventory_pushes WHERE user_id = $1 AND state = 'pending'",
        )
        .bind(shop.user.as_uuid())
        .fetch_one(&shop.rig.pool)
        .await
        .unwrap();
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pushes still pending after 40 s");
}

fn upstream_field(shop: &PurchaseRig, product_id: i64, field: &str) -> serde_json::Value {
    shop.rig
        .app
        .simulator
        .product(&shop.token, product_id)
        .map(|product| product[field].clone())
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test]
async fn an_edit_commits_locally_and_reaches_cardtrader_with_a_put() {
    let shop = shop(20).await;
    let id = shop.stocked(2, 1).await[0];

    let mut request = edit(&shop, id);
    request.price_cents = Some(4_321);
    request.quantity = Some(7);
    request.description = Some("signed by the artist".into());
    let answered = update(&shop, request).await.unwrap();

    assert_eq!(answered.price_cents, 4_321);
    assert_eq!(answered.quantity, 7);
    until_pushed(&shop).await;
    assert_eq!(shop.upstream(id), Some(7));
    assert_eq!(upstream_field(&shop, id, "price_cents"), 4_321);
    assert_eq!(
        upstream_field(&shop, id, "description"),
        "signed by the artist"
    );
    assert_eq!(get(&shop, id).await.push_state(), PushState::Synced);
}

#[tokio::test]
async fn edits_made_while_cardtrader_is_down_land_when_it_returns_the_newest_winning() {
    let shop = shop(20).await;
    let ids = shop.stocked(1, 2).await;
    shop.rig.app.simulator.set_faults(Faults {
        error_5xx_rate: 1.0,
        ..Faults::default()
    });

    for quantity in [11, 12, 13] {
        let mut request = edit(&shop, ids[0]);
        request.quantity = Some(quantity);
        update(&shop, request).await.unwrap();
    }
    let mut other = edit(&shop, ids[1]);
    other.price_cents = Some(999);
    update(&shop, other).await.unwrap();
    // The edits woke a push job; once one of its attempts has failed against the outage, the
    // pushes had their chance to get through.
    wait_until(
        "a push attempt to fail against the outage",
        Duration::from_secs(20),
        || async {
            let failed: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE user_id = $1 AND kind = 'inventory_push' \
                 AND last_error IS NOT NULL",
            )
            .bind(shop.user.as_uuid())
            .fetch_one(&shop.rig.pool)
            .await
            .unwrap();
            failed > 0
        },
    )
    .await;

    assert_eq!(get(&shop, ids[0]).await.push_state(), PushState::Pending);
    assert_ne!(
        shop.upstream(ids[0]),
        Some(13),
        "nothing got through the outage"
    );
    let outbox: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inventory_pushes WHERE user_id = $1")
            .bind(shop.user.as_uuid())
            .fetch_one(&shop.rig.pool)
            .await
            .unwrap();
    assert_eq!(outbox, 2, "three edits of one item are one pending push");

    shop.rig.app.simulator.set_faults(Faults::default());
    until_pushed(&shop).await;

    assert_eq!(shop.upstream(ids[0]), Some(13), "the newest edit won");
    assert_eq!(upstream_field(&shop, ids[1], "price_cents"), 999);
    assert_eq!(get(&shop, ids[0]).await.push_state(), PushState::Synced);
}

/// A worker of the interactive lane that runs only pushes, started by the test.
fn push_worker(shop: &PurchaseRig) -> Worker {
    let handler = PushHandler {
        accounts: shop.handler.accounts.clone(),
        call_budget: Duration::from_secs(10),
        write_grace: shop.rig.app.config.cardtrader.request_timeout,
        metrics: shop.handler.metrics.clone(),
    };
    let settings = WorkerSettings {
        owner: "test-pusher".into(),
        lane: Lane::Interactive,
        concurrency: 2,
        lease: Duration::from_secs(30),
        call_budget: Duration::from_secs(10),
        poll_interval: Duration::from_millis(50),
        ranking: Ranking::default(),
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
    };
    Worker::new(
        shop.rig.pool.clone(),
        vec![Arc::new(handler)],
        settings,
        shop.handler.metrics.clone(),
    )
}

#[tokio::test]
async fn many_pending_edits_go_in_bulk_and_a_refused_item_fails_alone() {
    // No interactive worker in the app: every edit is pending before the test's worker starts.
    let shop = PurchaseRig::new(0, 40).await;
    let ids = shop.stocked(1, 15).await;
    // The item CardTrader no longer has: its bulk result is an error, the others are applied.
    let gone = ids[3];
    shop.rig.app.simulator.set_quantity(&shop.token, gone, 0);
    for (n, id) in ids.iter().enumerate() {
        let mut request = edit(&shop, *id);
        request.price_cents = Some(1_000 + n as i64);
        update(&shop, request).await.unwrap();
    }
    let before = shop.rig.app.simulator.stats(&shop.token).total;
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(push_worker(&shop).run(stop.clone()));
    until_pushed(&shop).await;
    stop.cancel();
    worker.await.unwrap().unwrap();

    for (n, id) in ids.iter().enumerate() {
        if *id == gone {
            continue;
        }
        assert_eq!(upstream_field(&shop, *id, "price_cents"), 1_000 + n as i64);
        assert_eq!(get(&shop, *id).await.push_state(), PushState::Synced);
    }
    let refused = get(&shop, gone).await;
    assert_eq!(refused.push_state(), PushState::Failed);
    assert!(!refused.push_error.is_empty());
    let counted = |outcome: &str| {
        shop.handler
            .metrics
            .inventory_pushes
            .with_label_values(&["update", "bulk", outcome])
            .get()
    };
    assert_eq!((counted("pushed"), counted("refused")), (14, 1));
    // One bulk_update and its polls, not fifteen PUTs.
    let calls = shop.rig.app.simulator.stats(&shop.token).total - before;
    assert!(
        calls < 15,
        "15 edits took {calls} calls: they were not sent as one bulk job"
    );
}

#[tokio::test]
async fn a_quantity_below_the_reservations_is_refused_and_nothing_is_queued() {
    let shop = shop(10).await;
    let id = shop.stocked(5, 1).await[0];
    sqlx::query(
        "UPDATE inventory_items SET reserved_quantity = 3 WHERE user_id = $1 AND product_id = $2",
    )
    .bind(shop.user.as_uuid())
    .bind(id)
    .execute(&shop.rig.pool)
    .await
    .unwrap();

    let mut request = edit(&shop, id);
    request.quantity = Some(2);
    let refused = update(&shop, request).await.unwrap_err();

    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("reserved"),
        "{}",
        refused.message()
    );
    let item = get(&shop, id).await;
    assert!(item.quantity >= 5);
    assert_eq!(item.push_state(), PushState::Synced);
    let pushes: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = $1")
        .bind(brx_sync::jobs::KindName::InventoryPush.as_str())
        .fetch_one(&shop.rig.pool)
        .await
        .unwrap();
    assert_eq!(pushes, 0);
    let mut allowed = edit(&shop, id);
    allowed.quantity = Some(3);
    assert_eq!(update(&shop, allowed).await.unwrap().quantity, 3);
}

#[tokio::test]
async fn bad_input_names_the_field_and_other_sellers_are_denied() {
    let shop = shop(5).await;
    let id = shop.stocked(1, 1).await[0];
    let cases = [
        (edit(&shop, id), "price_cents"),
        (
            UpdateItemRequest {
                quantity: Some(-1),
                ..edit(&shop, id)
            },
            "quantity",
        ),
        (
            UpdateItemRequest {
                quantity: Some(1),
                ..edit(&shop, 0)
            },
            "product_id",
        ),
    ];
    for (request, field) in cases {
        let err = update(&shop, request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let details = tonic_types::StatusExt::get_error_details(&err);
        let violations = &details.bad_request().expect("BadRequest").field_violations;
        assert!(
            violations.iter().any(|violation| violation.field == field),
            "{field} not among {violations:?}"
        );
    }
    let stranger = brx_sync::domain::UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
    let request = authorized(
        UpdateItemRequest {
            quantity: Some(1),
            ..edit(&shop, id)
        },
        &shop.rig.app.seller_token(stranger),
    );
    let denied = client(&shop).await.update_item(request).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let missing = update(
        &shop,
        UpdateItemRequest {
            quantity: Some(1),
            ..edit(&shop, 987_654_321)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn a_deleted_item_is_gone_locally_at_once_and_on_cardtrader_after_the_push() {
    let shop = shop(10).await;
    let id = shop.stocked(1, 1).await[0];
    let request = GetItemRequest {
        user_id: shop.user.to_string(),
        product_id: id,
    };
    let deletion = DeleteItemRequest {
        user_id: shop.user.to_string(),
        product_id: id,
    };

    client(&shop)
        .await
        .delete_item(as_seller(&shop, deletion))
        .await
        .unwrap();

    let gone = client(&shop)
        .await
        .get_item(as_seller(&shop, request))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    until_pushed(&shop).await;
    assert_eq!(shop.upstream(id), None);
}

async fn create(
    shop: &PurchaseRig,
    blueprint_id: i64,
    quantity: i32,
) -> brx_sync::pb::v1::CreateItemResponse {
    let request = CreateItemRequest {
        user_id: shop.user.to_string(),
        blueprint_id,
        price_cents: 250,
        quantity,
        description: "from the shop".into(),
        properties: None,
        graded: false,
    };
    let mut request = as_seller(shop, request);
    request.set_timeout(Duration::from_secs(20));
    client(shop)
        .await
        .create_item(request)
        .await
        .unwrap()
        .into_inner()
}

/// The create's answer never arrives: CardTrader applies it, the client sees a timeout.
fn lose_the_create_answer(shop: &PurchaseRig) {
    shop.rig.app.simulator.set_faults(Faults {
        timeout_after_apply_rate: 1.0,
        path_ends_with: "/products".into(),
        max_faulted: 1,
        ..Faults::default()
    });
}

#[tokio::test]
async fn a_created_item_is_listed_once_even_when_the_answer_is_lost() {
    let shop = shop(10).await;
    let held: Vec<i64> =
        sqlx::query_scalar("SELECT blueprint_id FROM inventory_items WHERE user_id = $1")
            .bind(shop.user.as_uuid())
            .fetch_all(&shop.rig.pool)
            .await
            .unwrap();
    let fresh_blueprint = (1..).find(|id| !held.contains(id)).unwrap();
    lose_the_create_answer(&shop);
    let before = shop.rig.app.simulator.inventory_len(&shop.token);

    let created = create(&shop, fresh_blueprint, 3).await;

    assert_eq!(created.push_state(), PushState::Synced, "{created:?}");
    let item = created.item.expect("the created item");
    assert_eq!(item.quantity, 3);
    assert_eq!(item.user_data_field, created.create_tag);
    assert_eq!(
        shop.rig.app.simulator.inventory_len(&shop.token),
        before + 1
    );
    assert_eq!(
        shop.upstream(item.product_id),
        Some(3),
        "created once, not twice"
    );
}

#[tokio::test]
async fn a_create_merged_into_an_identical_product_adds_its_quantity_once() {
    let shop = shop(10).await;
    // The simulator's products carry default properties, as a create without properties does.
    let (product_id, blueprint_id): (i64, i64) = sqlx::query_as(
        "SELECT product_id, blueprint_id FROM inventory_items WHERE user_id = $1 \
         ORDER BY product_id LIMIT 1",
    )
    .bind(shop.user.as_uuid())
    .fetch_one(&shop.rig.pool)
    .await
    .unwrap();
    let had = shop.upstream(product_id).unwrap();
    lose_the_create_answer(&shop);
    let before = shop.rig.app.simulator.inventory_len(&shop.token);

    let created = create(&shop, blueprint_id, 2).await;

    assert_eq!(created.push_state(), PushState::Synced, "{created:?}");
    let item = created.item.expect("the item the create went into");
    assert_eq!(
        shop.rig.app.simulator.inventory_len(&shop.token),
        before,
        "merged, not a new product"
    );
    assert_eq!(
        item.product_id, product_id,
        "merged into the identical product"
    );
    assert_eq!(
        shop.upstream(product_id),
        Some(had + 2),
        "added once, not twice"
    );
    assert_eq!(i64::from(item.quantity), had + 2);
}

#[tokio::test]
async fn list_inventory_pages_stay_consistent_while_a_sync_writes() {
    let shop = shop(300).await;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT product_id FROM inventory_items WHERE user_id = $1 ORDER BY product_id",
    )
    .bind(shop.user.as_uuid())
    .fetch_all(&shop.rig.pool)
    .await
    .unwrap();
    // Every product changes upstream, so the sync rewrites every row while the pages are read.
    for id in &ids {
        shop.rig.app.simulator.set_quantity(&shop.token, *id, 77);
    }
    let sync = {
        let rig_pool = shop.rig.pool.clone();
        let job = shop.rig.queue(shop.user).await;
        let worker = shop.rig.worker("pager-sync", Duration::from_secs(30));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(worker.run(stop.clone()));
        (job, task, stop, rig_pool)
    };

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let request = ListInventoryRequest {
            user_id: shop.user.to_string(),
            filter: Some(InventoryFilter::default()),
            page_size: 40,
            page_token: token.clone(),
        };
        let page = client(&shop)
            .await
            .list_inventory(as_seller(&shop, request))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.items.iter().map(|item| item.product_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (job, task, stop, _) = sync;
    shop.rig.until_terminal(job).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    let distinct: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), seen.len(), "an item appeared on two pages");
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]));
    assert_eq!(seen, ids, "every item exactly once");
    assert!(shop.local(ids[0]).await.unwrap().0 == 77);
}

#[tokio::test]
async fn list_inventory_filters_by_blueprint_and_name_prefix() {
    let shop = shop(30).await;
    let (id, blueprint_id, name): (i64, i64, String) = sqlx::query_as(
        "SELECT product_id, blueprint_id, name FROM inventory_items WHERE user_id = $1 ORDER BY product_id LIMIT 1",
    )
    .bind(shop.user.as_uuid())
    .fetch_one(&shop.rig.pool)
    .await
    .unwrap();
    let list = |filter: InventoryFilter| {
        let request = ListInventoryRequest {
            user_id: shop.user.to_string(),
            filter: Some(filter),
            page_size: 500,
            page_token: String::new(),
        };
        let shop = &shop;
        async move {
            client(shop)
                .await
                .list_inventory(as_seller(shop, request))
                .await
                .unwrap()
                .into_inner()
                .items
        }
    };

    let by_blueprint = list(InventoryFilter {
        blueprint_id,
        ..Default::default()
    })
    .await;
    assert!(by_blueprint.iter().any(|item| item.product_id == id));
    assert!(
        by_blueprint
            .iter()
            .all(|item| item.blueprint_id == blueprint_id)
    );
    let prefix: String = name.chars().take(3).collect::<String>().to_uppercase();
    let by_name = list(InventoryFilter {
        name_prefix: prefix.clone(),
        ..Default::default()
    })
    .await;
    assert!(by_name.iter().any(|item| item.product_id == id));
    assert!(
        by_name
            .iter()
            .all(|item| item.name.to_uppercase().starts_with(&prefix))
    );
    let wildcard = list(InventoryFilter {
        name_prefix: "%".into(),
        ..Default::default()
    })
    .await;
    assert!(
        wildcard.is_empty(),
        "LIKE wildcards in a prefix match literally"
    );
}

#[tokio::test]
async fn offers_are_cheapest_first_net_of_reservations_and_skip_disconnected_sellers() {
    let shop = shop(20).await;
    let (blueprint_id,): (i64,) = sqlx::query_as(
        "SELECT blueprint_id FROM inventory_items WHERE user_id = $1 ORDER BY product_id LIMIT 1",
    )
    .bind(shop.user.as_uuid())
    .fetch_one(&shop.rig.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE inventory_items SET reserved_quantity = 1, quantity = greatest(quantity, 2) \
         WHERE user_id = $1 AND blueprint_id = $2",
    )
    .bind(shop.user.as_uuid())
    .bind(blueprint_id)
    .execute(&shop.rig.pool)
    .await
    .unwrap();
    let offers = |page_token: String| {
        let request = ListOffersRequest {
            blueprint_id,
            page_size: 1,
            page_token,
            ..Default::default()
        };
        let shop = &shop;
        async move {
            client(shop)
                .await
                .list_offers(authorized(request, &shop.rig.app.service_token()))
                .await
                .unwrap()
                .into_inner()
        }
    };

    let mut prices = Vec::new();
    let mut token = String::new();
    loop {
        let page = offers(token).await;
        for offer in &page.offers {
            let (quantity, reserved) = shop.local(offer.product_id).await.unwrap();
            assert_eq!(offer.available_quantity, quantity - reserved);
            prices.push(offer.price_cents);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(!prices.is_empty());
    assert!(
        prices.windows(2).all(|pair| pair[0] <= pair[1]),
        "{prices:?}"
    );

    sqlx::query("UPDATE accounts SET status = 'disconnected' WHERE user_id = $1")
        .bind(shop.user.as_uuid())
        .execute(&shop.rig.pool)
        .await
        .unwrap();
    assert!(offers(String::new()).await.offers.is_empty());

    let as_seller_only = client(&shop)
        .await
        .list_offers(as_seller(
            &shop,
            ListOffersRequest {
                blueprint_id,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(as_seller_only.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn offers_are_read_from_the_offer_index() {
    let shop = shop(5).await;
    // Enough rows that a scan would be the expensive plan.
    sqlx::query(
        "INSERT INTO inventory_items (user_id, product_id, blueprint_id, print_id, print_table, name, \
             quantity, price_cents, currency) \
         SELECT $1, 10000000 + g, g % 500, g % 500, 'cards', 'Card', 2, g, 'EUR' \
         FROM generate_series(1, 20000) g",
    )
    .bind(shop.user.as_uuid())
    .execute(&shop.rig.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE inventory_items")
        .execute(&shop.rig.pool)
        .await
        .unwrap();
    for (column, index) in [
        ("print_id", "inventory_items_offers_idx"),
        ("blueprint_id", "inventory_items_offers_blueprint_idx"),
    ] {
        // `column` is one of two literals above.
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN SELECT i.product_id FROM inventory_items i JOIN accounts a ON a.user_id = i.user_id \
             WHERE i.{column} = 42 AND i.quantity > i.reserved_quantity AND a.status = 'connected' \
             ORDER BY i.price_cents, i.user_id, i.product_id LIMIT 100"
        )))
        .fetch_all(&shop.rig.pool)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains(index), "{column}: {plan}");
    }
}

#[tokio::test]
async fn a_sync_neither_undoes_a_pending_edit_nor_brings_back_a_pending_deletion() {
    // No interactive worker in the app: the pushes stay pending while the sync runs.
    let shop = PurchaseRig::new(0, 20).await;
    let ids = shop.stocked(1, 2).await;
    let mut request = edit(&shop, ids[0]);
    request.price_cents = Some(5_555);
    update(&shop, request).await.unwrap();
    let deletion = DeleteItemRequest {
        user_id: shop.user.to_string(),
        product_id: ids[1],
    };
    client(&shop)
        .await
        .delete_item(as_seller(&shop, deletion))
        .await
        .unwrap();

    let synced = shop.rig.sync(shop.user).await;

    assert_eq!(synced.state, brx_sync::jobs::JobState::Succeeded);
    let kept = get(&shop, ids[0]).await;
    assert_eq!(kept.price_cents, 5_555, "the edit survived the sync");
    assert_eq!(kept.push_state(), PushState::Pending);
    assert_eq!(
        shop.local(ids[1]).await,
        None,
        "the deleted item stayed deleted"
    );
    assert_ne!(upstream_field(&shop, ids[0], "price_cents"), 5_555);
}

#[tokio::test]
async fn many_pending_deletions_go_as_one_bulk_destroy() {
    let shop = PurchaseRig::new(0, 30).await;
    let ids = shop.stocked(1, 12).await;
    for id in &ids {
        let request = DeleteItemRequest {
            user_id: shop.user.to_string(),
            product_id: *id,
        };
        client(&shop)
            .await
            .delete_item(as_seller(&shop, request))
            .await
            .unwrap();
    }
    let before = shop.rig.app.simulator.stats(&shop.token).total;
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(push_worker(&shop).run(stop.clone()));
    until_pushed(&shop).await;
    stop.cancel();
    worker.await.unwrap().unwrap();

    for id in &ids {
        assert_eq!(shop.upstream(*id), None, "{id} still listed on CardTrader");
    }
    let calls = shop.rig.app.simulator.stats(&shop.token).total - before;
    assert!(calls < 12, "12 deletions took {calls} calls");
}

/// The plan of every ListInventory page shape walks an index in product id order and never sorts,
/// whatever the statistics say: right after a bulk load (never analyzed, as here before ANALYZE)
/// and after, as a custom plan and as the generic plan a prepared statement settles on. One
/// statement with `$n IS NULL OR …` for every filter was planned, generically, as a bitmap scan of
/// all the seller's rows and a sort (63 ms a page at 100,000 rows, against 0.08 ms); one statement
/// per shape alone still was, as a custom plan, before the table was first analyzed.
#[tokio::test]
async fn every_list_page_shape_walks_an_index_in_product_order_whatever_the_statistics() {
    use brx_sync::inventory::{ListFilter, PAGE_BEGIN, page_statement};

    let db = crate::helpers::TestDatabase::new().await;
    let seller = uuid::Uuid::new_v4();
    // The seller's rows among other sellers', loaded in bulk with no ANALYZE after.
    for user in [uuid::Uuid::new_v4(), seller, uuid::Uuid::new_v4()] {
        sqlx::query(
            "INSERT INTO inventory_items (user_id, product_id, blueprint_id, expansion_id, print_id, \
                 print_table, name, quantity, price_cents, currency) \
             SELECT $1, g, g % 2000, g % 40, CASE WHEN g % 10 = 0 THEN NULL ELSE g END, \
                 CASE WHEN g % 10 = 0 THEN NULL ELSE 'cards' END, 'Card ' || g, 3, 100, 'EUR' \
             FROM generate_series(1, 20000) g",
        )
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let filters = [
        ListFilter::default(),
        ListFilter {
            blueprint_id: Some(7),
            ..ListFilter::default()
        },
        ListFilter {
            expansion_id: Some(3),
            ..ListFilter::default()
        },
        ListFilter {
            name_prefix: Some("card 1".into()),
            ..ListFilter::default()
        },
        ListFilter {
            mapped: Some(true),
            ..ListFilter::default()
        },
        ListFilter {
            mapped: Some(false),
            blueprint_id: Some(10),
            ..ListFilter::default()
        },
    ];
    let mut conn = db.pool.pool().acquire().await.unwrap();
    let mut statement = 0;
    for analyzed in [false, true] {
        if analyzed {
            sqlx::raw_sql("ANALYZE inventory_items")
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        for plan_mode in ["force_custom_plan", "force_generic_plan"] {
            for filter in &filters {
                for after in [false, true] {
                    let sql = page_statement(filter, after);
                    // The values, in the statement's parameter order.
                    let mut values = vec![format!("'{seller}'::uuid")];
                    values.extend(after.then(|| "5000".to_owned()));
                    values.extend(filter.blueprint_id.map(|id| id.to_string()));
                    values.extend(filter.expansion_id.map(|id| id.to_string()));
                    values.extend(filter.name_prefix.as_ref().map(|p| format!("'{p}%'")));
                    values.push("100".into());
                    statement += 1;
                    let explain = format!(
                        "{PAGE_BEGIN}; SET LOCAL plan_cache_mode = {plan_mode}; \
                         PREPARE page_{statement} AS {sql}; \
                         EXPLAIN (FORMAT JSON) EXECUTE page_{statement}({}); ROLLBACK",
                        values.join(", ")
                    );
                    use sqlx::Row;
                    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(explain.clone()))
                        .fetch_all(&mut *conn)
                        .await
                        .unwrap_or_else(|err| panic!("{explain}: {err}"));
                    let plan: serde_json::Value = rows[0].get(0);
                    let nodes = crate::helpers::plan_nodes(&plan[0]["Plan"]);
                    let shape = format!("{filter:?} after={after} {plan_mode} analyzed={analyzed}");
                    assert!(
                        !nodes.iter().any(|node| node["Node Type"] == "Sort"),
                        "{shape}: sorts\n{plan:#}"
                    );
                    let items = nodes
                        .iter()
                        .find(|node| node["Relation Name"] == "inventory_items")
                        .unwrap();
                    let wanted = if filter.blueprint_id.is_some() {
                        "inventory_items_blueprint_user_product_idx"
                    } else if filter.expansion_id.is_some() {
                        "inventory_items_expansion_user_product_idx"
                    } else {
                        "inventory_items_pkey"
                    };
                    assert_eq!(
                        (items["Node Type"].as_str(), items["Index Name"].as_str()),
                        (Some("Index Scan"), Some(wanted)),
                        "{shape}\n{plan:#}"
                    );
                }
            }
        }
    }
}
