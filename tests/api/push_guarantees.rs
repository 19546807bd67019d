//! The push outbox's promises at the seams with jobs: a create still in flight when its worker lost
//! the lease is listed once, never twice; and no pending edit is stranded — a disconnected seller's
//! edits end failed with the reason (and a later sync is free to update those products), and edits
//! whose push job gave up are queued again with a backoff and land once CardTrader is back.

use std::{sync::Arc, time::Duration};

use brx_sync::{
    inventory::{push::PushHandler, requeue::PushRequeue},
    jobs::{
        Lane, Ranking,
        worker::{Worker, WorkerSettings},
    },
    pb::v1::{
        ConnectAccountRequest, CreateItemRequest, DisconnectAccountRequest, GetItemRequest,
        PushState, UpdateItemRequest, inventory_service_client::InventoryServiceClient,
    },
};
use cardtrader_sim::Faults;
use tokio_util::sync::CancellationToken;

use crate::helpers::{PurchaseRig, authorized, wait_for, wait_until};

/// A worker of the interactive lane running only pushes, with `lease`.
fn push_worker(shop: &PurchaseRig, owner: &str, lease: Duration) -> Worker {
    let handler = PushHandler {
        accounts: shop.handler.accounts.clone(),
        call_budget: shop.rig.app.config.cardtrader.call_budget,
        write_grace: shop.rig.app.config.cardtrader.request_timeout,
        metrics: shop.handler.metrics.clone(),
    };
    let settings = WorkerSettings {
        owner: owner.into(),
        lane: Lane::Interactive,
        concurrency: 2,
        lease,
        call_budget: lease / 3,
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

/// Push workers that run until dropped.
struct Pushers(CancellationToken);

impl Pushers {
    fn start(shop: &PurchaseRig, owners: &[&str], lease: Duration) -> Self {
        let stop = CancellationToken::new();
        for owner in owners {
            tokio::spawn(push_worker(shop, owner, lease).run(stop.clone()));
        }
        Self(stop)
    }
}

impl Drop for Pushers {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn inventory(shop: &PurchaseRig) -> InventoryServiceClient<tonic::transport::Channel> {
    InventoryServiceClient::new(shop.rig.app.channel().await)
}

/// Polls the seller's outbox until `done` holds for its (state, last_error, rounds) rows.
async fn until_outbox(
    shop: &PurchaseRig,
    what: &str,
    done: impl Fn(&[(String, Option<String>, i32)]) -> bool,
) -> Vec<(String, Option<String>, i32)> {
    for _ in 0..400 {
        let rows: Vec<(String, Option<String>, i32)> = sqlx::query_as(
            "SELECT state, last_error, rounds FROM inventory_pushes WHERE user_id = $1",
        )
        .bind(shop.user.as_uuid())
        .fetch_all(&shop.rig.pool)
        .await
        .unwrap();
        if done(&rows) {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the outbox never got to: {what}");
}

#[tokio::test]
async fn a_create_still_in_flight_when_its_worker_lost_the_lease_is_listed_once() {
    // A create settles 7 s after it is sent (a 4 s budget, a 3 s request timeout).
    let shop = PurchaseRig::with(0, 10, |config| {
        config.cardtrader.request_timeout = Duration::from_secs(3);
        config.cardtrader.call_budget = Duration::from_secs(4);
    })
    .await;
    let held: Vec<i64> =
        sqlx::query_scalar("SELECT blueprint_id FROM inventory_items WHERE user_id = $1")
            .bind(shop.user.as_uuid())
            .fetch_all(&shop.rig.pool)
            .await
            .unwrap();
    let blueprint_id = (1..).find(|id| !held.contains(id)).unwrap();
    let before = shop.rig.app.simulator.inventory_len(&shop.token);
    // CardTrader holds the create 2.5 s; meanwhile the first worker's heartbeat stalls, its 1 s
    // lease runs out and the other worker takes the job over, before the create has landed.
    shop.rig.app.simulator.set_faults(Faults {
        delayed_apply_rate: 1.0,
        apply_delay_ms: 2_500,
        path_ends_with: "/products".into(),
        max_faulted: 1,
        ..Faults::default()
    });
    fail::cfg("jobs.heartbeat", "1*return(5000)").unwrap();
    let _pushers = Pushers::start(&shop, &["pusher-a", "pusher-b"], Duration::from_secs(1));
    let request = CreateItemRequest {
        user_id: shop.user.to_string(),
        blueprint_id,
        price_cents: 250,
        quantity: 3,
        description: "from the shop".into(),
        properties: None,
        graded: false,
    };
    let created = inventory(&shop)
        .await
        .create_item(authorized(request, &shop.rig.app.seller_token(shop.user)))
        .await
        .unwrap()
        .into_inner();

    until_outbox(&shop, "the create done", |rows| {
        rows.iter().all(|(state, ..)| state == "done")
    })
    .await;
    // Whatever was sent has landed by the time the first create settled.
    let settled_by: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT (fields ->> 'settled_by')::timestamptz FROM inventory_pushes WHERE user_id = $1",
    )
    .bind(shop.user.as_uuid())
    .fetch_one(&shop.rig.pool)
    .await
    .unwrap();
    while chrono::Utc::now() < settled_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(
        shop.rig.app.simulator.inventory_len(&shop.token),
        before + 1,
        "one new product"
    );
    let product_id: i64 = sqlx::query_scalar(
        "SELECT product_id FROM inventory_items WHERE user_id = $1 AND user_data_field = $2",
    )
    .bind(shop.user.as_uuid())
    .bind(&created.create_tag)
    .fetch_one(&shop.rig.pool)
    .await
    .unwrap();
    assert_eq!(
        shop.upstream(product_id),
        Some(3),
        "created once, not twice"
    );
}

#[tokio::test]
async fn a_disconnected_sellers_pending_edits_end_failed_and_a_later_sync_updates_those_items() {
    let shop = PurchaseRig::new(0, 10).await;
    let item = shop.stocked(1, 1).await[0];
    let price_upstream = shop.rig.app.simulator.product(&shop.token, item).unwrap()["price_cents"]
        .as_i64()
        .unwrap();
    let edit = UpdateItemRequest {
        user_id: shop.user.to_string(),
        product_id: item,
        price_cents: Some(price_upstream + 500),
        ..Default::default()
    };
    let service = shop.rig.app.service_token();
    inventory(&shop)
        .await
        .update_item(authorized(edit, &service))
        .await
        .unwrap();
    let disconnect = DisconnectAccountRequest {
        user_id: shop.user.to_string(),
        purge_inventory: false,
    };
    let mut accounts = shop.rig.app.accounts().await;
    accounts
        .disconnect_account(authorized(disconnect, &service))
        .await
        .unwrap();
    let pushers = Pushers::start(&shop, &["pusher"], Duration::from_secs(30));

    let rows = until_outbox(&shop, "the edit failed", |rows| {
        !rows.is_empty() && rows.iter().all(|(state, ..)| state == "failed")
    })
    .await;
    drop(pushers);
    let reason = rows[0].1.clone().unwrap_or_default();
    assert!(reason.contains("disconnected"), "{reason}");
    let shown = inventory(&shop)
        .await
        .get_item(authorized(
            GetItemRequest {
                user_id: shop.user.to_string(),
                product_id: item,
            },
            &service,
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(shown.push_state(), PushState::Failed);
    assert!(shown.push_error.contains("disconnected"), "{shown:?}");
    // Back on: the next sync is free to bring the item back to CardTrader's values.
    let connect = ConnectAccountRequest {
        user_id: shop.user.to_string(),
        cardtrader_token: shop.token.clone(),
    };
    accounts
        .connect_account(authorized(connect, &service))
        .await
        .unwrap();
    let synced = shop.rig.sync(shop.user).await;
    assert_eq!(synced.state, brx_sync::jobs::JobState::Succeeded);
    let price = local_price(&shop, item).await;
    assert_eq!(price, price_upstream, "the sync did not skip the item");
}

#[tokio::test]
async fn edits_whose_push_job_gave_up_are_queued_again_with_a_backoff_and_land() {
    let shop = PurchaseRig::new(0, 10).await;
    let item = shop.stocked(1, 1).await[0];
    shop.rig.app.simulator.set_faults(Faults {
        error_5xx_rate: 1.0,
        path_ends_with: format!("/products/{item}"),
        ..Faults::default()
    });
    let edit = UpdateItemRequest {
        user_id: shop.user.to_string(),
        product_id: item,
        price_cents: Some(4_321),
        ..Default::default()
    };
    let service = shop.rig.app.service_token();
    inventory(&shop)
        .await
        .update_item(authorized(edit, &service))
        .await
        .unwrap();
    // Two attempts, both refused by a CardTrader that answers 5xx.
    sqlx::query("UPDATE jobs SET max_attempts = 2 WHERE kind = 'inventory_push'")
        .execute(&shop.rig.pool)
        .await
        .unwrap();
    let pushers = Pushers::start(&shop, &["pusher"], Duration::from_secs(30));

    let waiting = until_outbox(&shop, "the edit waiting for a new round", |rows| {
        rows.iter()
            .any(|(state, _, rounds)| state == "pending" && *rounds == 1)
    })
    .await;
    // The job records the edit's next round, then the worker buries it: wait for both.
    let job: String = wait_for(
        "the push job to be buried",
        Duration::from_secs(10),
        || async {
            let state: String =
                sqlx::query_scalar("SELECT state FROM jobs WHERE kind = 'inventory_push'")
                    .fetch_one(&shop.rig.pool)
                    .await
                    .unwrap();
            if state == "running" {
                Err(state)
            } else {
                Ok(state)
            }
        },
    )
    .await;
    let retry_in: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM retry_at - now())::float8 FROM inventory_pushes WHERE user_id = $1",
    )
    .bind(shop.user.as_uuid())
    .fetch_one(&shop.rig.pool)
    .await
    .unwrap();
    let requeue = PushRequeue::new(
        shop.rig.pool.clone(),
        brx_sync::jobs::wake::JobWakeups::new(
            brx_sync::storage::Storage::connect_lazy(&shop.rig.app.config.storage)
                .unwrap()
                .redis,
            &shop.rig.app.config.storage.redis_key_prefix,
            Default::default(),
        ),
        Duration::from_secs(3_600),
    );
    let too_early = requeue.round().await.unwrap();
    // CardTrader is back, and the backoff has run out.
    shop.rig.app.simulator.set_faults(Faults::default());
    sqlx::query("UPDATE inventory_pushes SET retry_at = now() WHERE user_id = $1")
        .bind(shop.user.as_uuid())
        .execute(&shop.rig.pool)
        .await
        .unwrap();
    let queued = requeue.round().await.unwrap();
    until_outbox(&shop, "the edit pushed", |rows| rows.is_empty()).await;
    drop(pushers);

    assert_eq!(job, "dead");
    assert!(waiting[0].1.is_some(), "the reason is kept");
    assert!(
        (30.0..=61.0).contains(&retry_in),
        "first round waits about a minute: {retry_in}"
    );
    assert_eq!(too_early, 0, "nothing queued before its time");
    assert_eq!(queued, 1);
    assert_eq!(
        shop.rig.app.simulator.product(&shop.token, item).unwrap()["price_cents"],
        4_321
    );
}

/// What a 10-minute soak found: an edit committed after a sync chunk had looked at the outbox (and
/// seen nothing pending) but before the chunk wrote, got the export's older price written over it,
/// and the push then sent that older price to CardTrader. The export predates the edit: the chunk
/// must leave the row to the push, and to the next sync.
#[tokio::test]
async fn an_edit_committed_while_a_sync_chunk_writes_keeps_its_price_on_both_sides() {
    let shop = PurchaseRig::new(0, 10).await;
    let item = shop.stocked(2, 1).await[0];
    let upstream = shop.rig.app.simulator.product(&shop.token, item).unwrap();
    let price_before = upstream["price_cents"].as_i64().unwrap();
    // A sale on CardTrader the shop has not heard of: the export differs, so the chunk writes the row.
    let quantity = upstream["quantity"].as_i64().unwrap();
    shop.rig
        .app
        .simulator
        .set_quantity(&shop.token, item, quantity - 1);
    const POINT: &str = "sync.chunk_after_push_check";
    fail::cfg(POINT, "return").unwrap();
    let edit = UpdateItemRequest {
        user_id: shop.user.to_string(),
        product_id: item,
        price_cents: Some(price_before + 777),
        ..Default::default()
    };
    let editing = async {
        wait_until(
            "the sync chunk to have looked at the outbox",
            Duration::from_secs(30),
            || async { brx_sync::failpoint::held(POINT) },
        )
        .await;
        inventory(&shop)
            .await
            .update_item(authorized(edit, &shop.rig.app.service_token()))
            .await
            .unwrap();
        fail::remove(POINT);
    };
    let (synced, ()) = tokio::join!(shop.rig.sync(shop.user), editing);
    assert_eq!(synced.state, brx_sync::jobs::JobState::Succeeded);

    let pushers = Pushers::start(&shop, &["pusher"], Duration::from_secs(30));
    until_outbox(&shop, "the edit pushed", |rows| rows.is_empty()).await;
    drop(pushers);
    let local = local_price(&shop, item).await;
    assert_eq!(
        local,
        price_before + 777,
        "the chunk undid the edit locally"
    );
    assert_eq!(
        shop.rig.app.simulator.product(&shop.token, item).unwrap()["price_cents"],
        price_before + 777,
        "the push sent what the chunk wrote"
    );
    // The next sync brings the sale in, and the edit stays.
    let again = shop.rig.sync(shop.user).await;
    assert_eq!(again.state, brx_sync::jobs::JobState::Succeeded);
    assert!(shop.rig.matches_upstream(shop.user, &shop.token).await);
}

/// The shop's stored price of CardTrader product `item`.
async fn local_price(shop: &PurchaseRig, item: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT price_cents FROM inventory_items WHERE user_id = $1 AND product_id = $2",
    )
    .bind(shop.user.as_uuid())
    .bind(item)
    .fetch_one(&shop.rig.pool)
    .await
    .unwrap()
}
