//! PurchaseService end to end: the app's own workers drive each saga against the simulator, with its
//! fault switches standing in for CardTrader misbehaving. Every test checks both sides' stock and
//! that no reservation or CardTrader lock is left behind.

use std::time::Duration;

use brx_sync::pb::v1::{GetPurchaseRequest, LineState, PurchaseState, WatchPurchaseRequest};
use cardtrader_sim::Faults;
use tonic::Code;

use crate::helpers::{PurchaseRig, authorized, wait_until};

/// Sets the fault `set` on the next `POST /products/:id/increment` only.
fn fault_next_increment(shop: &PurchaseRig, set: impl FnOnce(&mut Faults)) {
    let mut faults = Faults {
        path_ends_with: "/increment".into(),
        max_faulted: 1,
        ..Faults::default()
    };
    set(&mut faults);
    shop.rig.app.simulator.set_faults(faults);
}

#[tokio::test]
async fn a_purchase_takes_stock_on_both_sides_and_completes() {
    let shop = PurchaseRig::new(4, 40).await;
    let items = shop.stocked(3, 2).await;
    let before: Vec<(Option<i64>, (i32, i32))> = futures::future::join_all(
        items
            .iter()
            .map(|id| async { (shop.upstream(*id), shop.local(*id).await.unwrap()) }),
    )
    .await;

    let purchase = shop
        .buy("happy", &[(items[0], 2), (items[1], 1)])
        .await
        .unwrap();

    assert_eq!(purchase.state(), PurchaseState::Completed, "{purchase:?}");
    assert!(purchase.lines.iter().all(|l| l.state() == LineState::Taken));
    // Two lines: intent and result each, then the local sale.
    assert_eq!(purchase.steps, 5);
    for ((id, bought), (upstream, (local, _))) in
        items.iter().zip([2, 1]).zip(before.iter().copied())
    {
        assert_eq!(shop.upstream(*id), upstream.map(|q| q - i64::from(bought)));
        assert_eq!(shop.local(*id).await, Some((local - bought, 0)));
    }
    assert_eq!(shop.leftovers().await, (0, 0));
    // Four transactions for five entries: the last take and the sale commit together (the same
    // now()), and that transaction also ends the purchase's job, not one of the worker's own.
    let id = uuid::Uuid::parse_str(&purchase.purchase_id).unwrap();
    let (commits, job_ended_with_sale): (i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(DISTINCT created_at) FROM purchase_steps WHERE purchase_id = p.id), \
                j.state = 'succeeded' AND j.finished_at = p.finished_at \
         FROM purchases p JOIN jobs j ON j.kind = 'purchase' AND j.dedupe_key = p.id::text \
         WHERE p.id = $1",
    )
    .bind(id)
    .fetch_one(&shop.rig.pool)
    .await
    .unwrap();
    assert_eq!(commits, 4);
    assert!(job_ended_with_sale);
    let (_, metrics) = shop.rig.app.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"brx_purchases_total{outcome="completed"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"brx_jobs_finished_total{kind="purchase",outcome="succeeded"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn too_little_local_stock_is_refused_with_nothing_reserved_or_recorded() {
    let shop = PurchaseRig::new(4, 20).await;
    let item = shop.stocked(1, 1).await[0];
    let (quantity, _) = shop.local(item).await.unwrap();

    let refused = shop
        .buy("short", &[(item, quantity + 1)])
        .await
        .unwrap_err();

    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains(&item.to_string()));
    assert_eq!(shop.local(item).await, Some((quantity, 0)));
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM purchases")
        .fetch_one(&shop.rig.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0);
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let shop = PurchaseRig::new(4, 5).await;
    let item = shop.stocked(1, 1).await[0];
    let cases = [
        (shop.request("", &[(item, 1)]), "idempotency_key"),
        (shop.request("k", &[]), "lines"),
        (shop.request("k", &[(item, 0)]), "lines[0].quantity"),
        (shop.request("k", &[(item, 1), (-4, 1)]), "lines[1].item_id"),
        (
            shop.request("k", &[(item, 1), (item, 1)]),
            "lines[1].item_id",
        ),
    ];
    for (request, field) in cases {
        let status = shop
            .client()
            .await
            .create_purchase(authorized(request, &shop.rig.app.seller_token(shop.user)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{status:?}");
    }
    let other_seller = brx_sync::domain::UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
    let status = shop
        .client()
        .await
        .create_purchase(authorized(
            shop.request("k", &[(item, 1)]),
            &shop.rig.app.seller_token(other_seller),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(shop.leftovers().await, (0, 0));
}

#[tokio::test]
async fn a_replay_returns_the_stored_purchase_and_another_request_under_the_key_is_refused() {
    let shop = PurchaseRig::new(4, 10).await;
    let item = shop.stocked(3, 1).await[0];
    let first = shop.buy("same", &[(item, 1)]).await.unwrap();
    let after_first = (shop.upstream(item), shop.local(item).await);

    let replay = shop.buy("same", &[(item, 1)]).await.unwrap();
    let conflict = shop.buy("same", &[(item, 2)]).await.unwrap_err();

    assert!(replay.replayed);
    assert_eq!(replay.purchase_id, first.purchase_id);
    assert_eq!(replay.state(), PurchaseState::Completed);
    assert_eq!(conflict.code(), Code::AlreadyExists, "{conflict:?}");
    assert_eq!((shop.upstream(item), shop.local(item).await), after_first);
}

#[tokio::test]
async fn cardtrader_having_less_than_the_shop_is_compensated_and_the_local_quantity_corrected() {
    let shop = PurchaseRig::new(4, 20).await;
    let item = shop.stocked(3, 1).await[0];
    shop.set_stock(item, 5).await;
    shop.rig.app.simulator.set_quantity(&shop.token, item, 1);

    let failed = shop.buy("less", &[(item, 3)]).await.unwrap_err();

    assert_eq!(failed.code(), Code::Aborted, "{failed:?}");
    assert!(failed.message().contains("CardTrader has 1"), "{failed:?}");
    assert_eq!(shop.upstream(item), Some(1), "nothing taken on CardTrader");
    assert_eq!(
        shop.local(item).await,
        Some((1, 0)),
        "corrected to CardTrader's"
    );
    assert_eq!(shop.leftovers().await, (0, 0));
}

#[tokio::test]
async fn a_third_line_failing_gives_the_first_two_back_on_cardtrader_in_reverse_order() {
    let shop = PurchaseRig::new(4, 30).await;
    let items = shop.stocked(2, 3).await;
    for id in &items {
        shop.set_stock(*id, 4).await;
    }
    // The third line's product is gone on CardTrader.
    shop.rig
        .app
        .simulator
        .set_quantity(&shop.token, items[2], 0);

    let failed = shop
        .buy("three", &[(items[0], 1), (items[1], 2), (items[2], 1)])
        .await
        .unwrap_err();

    assert_eq!(failed.code(), Code::Aborted, "{failed:?}");
    assert_eq!(shop.upstream(items[0]), Some(4));
    assert_eq!(shop.upstream(items[1]), Some(4));
    assert_eq!(shop.local(items[0]).await, Some((4, 0)));
    assert_eq!(shop.local(items[1]).await, Some((4, 0)));
    assert_eq!(shop.local(items[2]).await, Some((0, 0)), "corrected: gone");
    let purchase = list_one(&shop).await;
    let log = brx_sync::purchase::step_log(&shop.rig.pool, purchase)
        .await
        .unwrap();
    let given_back: Vec<String> = log
        .iter()
        .filter_map(|event| match event {
            brx_sync::purchase::saga::Event::GivenBack { line } => Some(line.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(given_back, ["1", "0"], "last taken first");
    assert_eq!(shop.leftovers().await, (0, 0));
}

#[tokio::test]
async fn a_product_taken_to_zero_is_deleted_and_recreated_by_a_later_compensation() {
    let shop = PurchaseRig::new(4, 30).await;
    let items = shop.stocked(2, 2).await;
    shop.set_stock(items[0], 2).await;
    shop.set_stock(items[1], 3).await;
    // The second line asks for more than CardTrader has.
    shop.rig
        .app
        .simulator
        .set_quantity(&shop.token, items[1], 1);

    let failed = shop
        .buy("zero", &[(items[0], 2), (items[1], 3)])
        .await
        .unwrap_err();

    assert_eq!(failed.code(), Code::Aborted, "{failed:?}");
    assert_eq!(shop.upstream(items[0]), None, "the decrement deleted it");
    let purchase = brx_sync::purchase::load(&shop.rig.pool, list_one(&shop).await)
        .await
        .unwrap()
        .unwrap();
    let recreated = purchase.lines[0]
        .recreated_product_id
        .expect("the give-back re-created the product");
    assert_eq!(shop.upstream(recreated), Some(2));
    assert_eq!(shop.local(items[0]).await, None, "the local row moved");
    assert_eq!(shop.local(recreated).await, Some((2, 0)));
    assert_eq!(shop.leftovers().await, (0, 0));

    // The re-created product sells like any other.
    let sold = shop.buy("again", &[(recreated, 1)]).await.unwrap();
    assert_eq!(sold.state(), PurchaseState::Completed);
    assert_eq!(shop.upstream(recreated), Some(1));
}

#[tokio::test]
async fn a_decrement_applied_but_unanswered_is_decided_as_applied_and_not_sent_twice() {
    let shop = PurchaseRig::with(4, 10, |config| {
        config.cardtrader.request_timeout = Duration::from_millis(800);
    })
    .await;
    let item = shop.stocked(3, 1).await[0];
    let (upstream, local) = (
        shop.upstream(item).unwrap(),
        shop.local(item).await.unwrap(),
    );
    fault_next_increment(&shop, |faults| faults.timeout_after_apply_rate = 1.0);

    let purchase = shop.buy("hung", &[(item, 2)]).await.unwrap();

    assert_eq!(purchase.state(), PurchaseState::Completed, "{purchase:?}");
    assert_eq!(shop.upstream(item), Some(upstream - 2), "applied once");
    assert_eq!(shop.local(item).await, Some((local.0 - 2, 0)));
    let id = uuid::Uuid::try_parse(&purchase.purchase_id).unwrap();
    let log = brx_sync::purchase::step_log(&shop.rig.pool, id)
        .await
        .unwrap();
    use brx_sync::purchase::saga::Event;
    assert!(
        matches!(
            log.as_slice(),
            [
                Event::DecrementSent {
                    line: 0,
                    settled_by: Some(_)
                },
                Event::Taken { line: 0 },
                Event::Finalized
            ]
        ),
        "sent once, with the instant it will have settled by: {log:?}"
    );
}

#[tokio::test]
async fn a_purchase_arriving_while_its_worker_claims_starts_at_once_in_a_free_slot() {
    let shop = PurchaseRig::new(4, 10).await;
    let item = shop.stocked(3, 1).await[0];
    let claiming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = claiming.clone();
    fail::cfg_callback("jobs.claiming", move || {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    })
    .unwrap();
    // Every claim of the worker's now takes three seconds.
    fail::cfg("jobs.claim", "return(3000)").unwrap();
    wait_until(
        "the worker to be claiming",
        Duration::from_secs(5),
        || async { claiming.load(std::sync::atomic::Ordering::SeqCst) },
    )
    .await;

    let purchase = shop.buy("during-claim", &[(item, 1)]).await;
    fail::remove("jobs.claim");
    fail::remove("jobs.claiming");

    assert_eq!(purchase.unwrap().state(), PurchaseState::Completed);
    // Created claimed, in the transaction that took the request (the same now()), not queued for
    // the claim to find: the claim in progress held one slot, not every free one.
    let started_locally: bool = sqlx::query_scalar(
        "SELECT started_at = created_at FROM jobs WHERE kind = 'purchase' AND dedupe_key = $1",
    )
    .bind(shop.purchase_id("during-claim").await.to_string())
    .fetch_one(&shop.rig.pool)
    .await
    .unwrap();
    assert!(started_locally);
}

#[tokio::test]
async fn a_decrement_seen_to_end_unanswered_settles_one_grace_later_not_at_the_call_deadline() {
    // The logged settle instant allows for the call's whole budget (20 s); the driver that saw the
    // request end knows it was sent once, so it waits one request timeout from there.
    let shop = PurchaseRig::with(4, 10, |config| {
        config.cardtrader.request_timeout = Duration::from_millis(500);
        config.cardtrader.call_budget = Duration::from_secs(20);
    })
    .await;
    let item = shop.stocked(3, 1).await[0];
    let upstream = shop.upstream(item).unwrap();
    fault_next_increment(&shop, |faults| faults.timeout_rate = 1.0);

    let purchase = shop.buy("unanswered", &[(item, 1)]).await.unwrap();

    assert_eq!(purchase.state(), PurchaseState::Completed, "{purchase:?}");
    assert_eq!(shop.upstream(item), Some(upstream - 1), "applied once");
    // Decided not applied and sent again without going back to the queue to wait out 20 s.
    let (_, metrics) = shop.rig.app.admin_get("/metrics").await;
    assert!(
        !metrics.contains(r#"brx_jobs_finished_total{kind="purchase",outcome="deferred"}"#),
        "{metrics}"
    );
    let id = uuid::Uuid::try_parse(&purchase.purchase_id).unwrap();
    let log = brx_sync::purchase::step_log(&shop.rig.pool, id)
        .await
        .unwrap();
    use brx_sync::purchase::saga::Event;
    assert!(
        matches!(
            log.as_slice(),
            [
                Event::DecrementSent { line: 0, .. },
                Event::NotTaken { line: 0 },
                Event::DecrementSent { line: 0, .. },
                Event::Taken { line: 0 },
                Event::Finalized
            ]
        ),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_purchase_waiting_for_a_lost_answer_leaves_its_worker_slot_to_others() {
    // One worker slot; a lost answer settles two seconds (one request timeout) after the client
    // stopped waiting for it.
    let shop = PurchaseRig::with(1, 10, |config| {
        config.cardtrader.request_timeout = Duration::from_secs(2);
        config.cardtrader.call_budget = Duration::from_secs(6);
    })
    .await;
    let items = shop.stocked(3, 2).await;
    // The first decrement times out unapplied: until it can no longer land, the purchase cannot
    // tell "not applied" from "not applied yet".
    fault_next_increment(&shop, |faults| faults.timeout_rate = 1.0);
    let waiting_in_queue = || async {
        let deferred: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE kind = 'purchase' AND state = 'queued' \
             AND last_error LIKE 'waiting until a lost answer%'",
        )
        .fetch_one(&shop.rig.pool)
        .await
        .unwrap();
        deferred == 1
    };
    let (hung_lines, other_lines) = ([(items[0], 1)], [(items[1], 1)]);

    let (hung, (other, hung_state_then)) = tokio::join!(shop.buy("hung", &hung_lines), async {
        wait_until(
            "the hung purchase to wait in the queue",
            Duration::from_secs(10),
            waiting_in_queue,
        )
        .await;
        let other = shop.buy("other", &other_lines).await.unwrap();
        let id = shop.purchase_id("hung").await;
        let state: String = sqlx::query_scalar("SELECT state FROM purchases WHERE id = $1")
            .bind(id)
            .fetch_one(&shop.rig.pool)
            .await
            .unwrap();
        (other, state)
    });

    assert_eq!(other.state(), PurchaseState::Completed, "{other:?}");
    assert_eq!(
        hung_state_then, "taking",
        "the other purchase did not wait for it"
    );
    let hung = hung.unwrap();
    assert_eq!(hung.state(), PurchaseState::Completed, "{hung:?}");
    assert_eq!(shop.leftovers().await, (0, 0));
}

#[tokio::test]
async fn two_hundred_buyers_racing_for_ten_units_sell_exactly_ten_on_both_sides() {
    let shop = PurchaseRig::new(16, 10).await;
    let item = shop.stocked(1, 1).await[0];
    shop.set_stock(item, 10).await;

    let buyers = (0..200).map(|n| {
        let shop = &shop;
        async move { shop.buy(&format!("race-{n}"), &[(item, 1)]).await }
    });
    let results = futures::future::join_all(buyers).await;

    let sold = results
        .iter()
        .filter(|r| matches!(r, Ok(p) if p.state() == PurchaseState::Completed))
        .count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::FailedPrecondition))
        .count();
    assert_eq!(
        (sold, refused),
        (10, 190),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(
        shop.upstream(item),
        None,
        "all 10 sold: CardTrader deleted it"
    );
    assert_eq!(shop.local(item).await, Some((0, 0)));
    assert_eq!(shop.leftovers().await, (0, 0));
}

#[tokio::test]
async fn a_full_sync_during_purchases_does_not_clobber_what_they_sold() {
    let shop = PurchaseRig::new(8, 300).await;
    let items = shop.stocked(2, 40).await;
    let before: Vec<i64> = items.iter().map(|id| shop.upstream(*id).unwrap()).collect();
    // The sync reads the whole export, then holds its chunk while every purchase runs: the export
    // it writes predates them all. It is one chunk, mapped only once the export has been read.
    fail::cfg("sync.before_chunk_write", "return(3000)").unwrap();
    let lookups = shop.rig.blueprint_lookups();
    let sync = shop.rig.sync(shop.user);
    let buying = async {
        wait_until(
            "the sync to have read the export and to map its chunk",
            Duration::from_secs(20),
            || async { shop.rig.blueprint_lookups() > lookups },
        )
        .await;
        futures::future::join_all(items.iter().enumerate().map(|(n, id)| {
            let shop = &shop;
            async move { shop.buy(&format!("during-{n}"), &[(*id, 1)]).await }
        }))
        .await
    };
    let (results, synced) = tokio::join!(buying, sync);
    fail::remove("sync.before_chunk_write");

    assert_eq!(synced.state, brx_sync::jobs::JobState::Succeeded);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    for (id, upstream) in items.iter().zip(before) {
        assert_eq!(shop.upstream(*id), Some(upstream - 1));
        assert_eq!(
            shop.local(*id).await.map(|(q, _)| i64::from(q)),
            Some(upstream - 1),
            "item {id}"
        );
    }
    assert_eq!(shop.leftovers().await, (0, 0));
    let again = shop.rig.sync(shop.user).await;
    assert_eq!(again.state, brx_sync::jobs::JobState::Succeeded);
    assert!(shop.rig.matches_upstream(shop.user, &shop.token).await);
}

#[tokio::test]
async fn a_purchase_can_be_read_listed_and_watched_only_by_its_seller() {
    let shop = PurchaseRig::new(4, 10).await;
    let item = shop.stocked(2, 1).await[0];
    let purchase = shop.buy("seen", &[(item, 1)]).await.unwrap();
    let token = shop.rig.app.seller_token(shop.user);
    let mut client = shop.client().await;

    let got = client
        .get_purchase(authorized(
            GetPurchaseRequest {
                purchase_id: purchase.purchase_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .purchase
        .unwrap();
    let listed = client
        .list_purchases(authorized(
            brx_sync::pb::v1::ListPurchasesRequest {
                user_id: shop.user.to_string(),
                state: PurchaseState::Completed.into(),
                page_size: 10,
                page_token: String::new(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut watched = client
        .watch_purchase(authorized(
            WatchPurchaseRequest {
                purchase_id: purchase.purchase_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let stranger = brx_sync::domain::UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
    let denied = client
        .get_purchase(authorized(
            GetPurchaseRequest {
                purchase_id: purchase.purchase_id.clone(),
            },
            &shop.rig.app.seller_token(stranger),
        ))
        .await
        .unwrap_err();

    assert_eq!(got.purchase_id, purchase.purchase_id);
    assert_eq!(got.state(), PurchaseState::Completed);
    assert_eq!(listed.purchases.len(), 1);
    assert_eq!(listed.purchases[0].purchase_id, purchase.purchase_id);
    let last = watched.message().await.unwrap().unwrap().purchase.unwrap();
    assert_eq!(last.state(), PurchaseState::Completed);
    assert!(
        watched.message().await.unwrap().is_none(),
        "ends when terminal"
    );
    assert_eq!(denied.code(), Code::PermissionDenied);
}

/// The id of the seller's only purchase.
async fn list_one(shop: &PurchaseRig) -> uuid::Uuid {
    sqlx::query_scalar("SELECT id FROM purchases WHERE user_id = $1")
        .bind(shop.user.as_uuid())
        .fetch_one(&shop.rig.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_purchase_past_its_deadline_gives_back_what_it_took() {
    let shop = PurchaseRig::with(4, 10, |config| {
        config.jobs.purchase_deadline = Duration::from_millis(600);
    })
    .await;
    let items = shop.stocked(2, 2).await;
    let before: Vec<Option<i64>> = items.iter().map(|id| shop.upstream(*id)).collect();
    // Each CardTrader call takes 400 ms: the first line alone outlasts the deadline.
    shop.rig.app.simulator.set_faults(Faults {
        latency_ms: 400,
        ..Faults::default()
    });

    let failed = shop
        .buy("late", &[(items[0], 1), (items[1], 1)])
        .await
        .unwrap_err();

    assert_eq!(failed.code(), Code::Aborted, "{failed:?}");
    assert!(failed.message().contains("deadline"), "{failed:?}");
    let after: Vec<Option<i64>> = items.iter().map(|id| shop.upstream(*id)).collect();
    assert_eq!(after, before, "the first line was given back");
    assert_eq!(shop.leftovers().await, (0, 0));
}

#[tokio::test]
async fn a_caller_whose_deadline_comes_first_gets_the_current_state_and_the_saga_goes_on() {
    let shop = PurchaseRig::new(4, 10).await;
    let item = shop.stocked(2, 1).await[0];
    let before = shop.upstream(item).unwrap();
    shop.rig.app.simulator.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let mut request = authorized(
        shop.request("impatient", &[(item, 1)]),
        &shop.rig.app.seller_token(shop.user),
    );
    request.set_timeout(Duration::from_millis(250));

    let answer = shop
        .client()
        .await
        .create_purchase(request)
        .await
        .unwrap()
        .into_inner()
        .purchase
        .unwrap();

    assert_eq!(answer.state(), PurchaseState::Taking, "{answer:?}");
    let ended = shop.until_done(&answer.purchase_id).await;
    assert_eq!(ended.saga.phase, brx_sync::purchase::saga::Phase::Completed);
    assert_eq!(shop.upstream(item), Some(before - 1));
}

#[tokio::test]
async fn a_purchase_in_flight_when_the_server_drains_is_answered_at_once_with_its_current_state() {
    // The soak found drains running into the grace period: CreatePurchase kept waiting for a saga
    // the drain had just handed back to the queue, and was cut at the end of the grace.
    let shop = PurchaseRig::with(4, 10, |config| {
        config.server.shutdown_grace_period = Duration::from_secs(20);
    })
    .await;
    let item = shop.stocked(2, 1).await[0];
    shop.rig.app.simulator.set_faults(Faults {
        latency_ms: 3_000,
        ..Faults::default()
    });
    let mut client = shop.client().await;
    let request = authorized(
        shop.request("draining", &[(item, 1)]),
        &shop.rig.app.seller_token(shop.user),
    );
    let in_flight = tokio::spawn(async move { client.create_purchase(request).await });
    let pool = shop.rig.pool.clone();
    wait_until(
        "the purchase to be taking stock",
        Duration::from_secs(10),
        || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM purchases WHERE state = 'taking'",
                )
                .fetch_one(&pool)
                .await
                .unwrap()
                    == 1
            }
        },
    )
    .await;

    let stopped = tokio::time::timeout(Duration::from_secs(10), shop.rig.app.stop()).await;

    assert!(
        matches!(stopped, Ok(Ok(()))),
        "the drain must not wait out the 20 s grace: {stopped:?}"
    );
    let answer = in_flight.await.unwrap().expect("answered, not cut");
    let purchase = answer.into_inner().purchase.unwrap();
    assert!(
        !matches!(
            purchase.state(),
            PurchaseState::Completed | PurchaseState::Failed
        ),
        "answered with the saga still in progress (another replica finishes it): {purchase:?}"
    );
    assert!(!purchase.purchase_id.is_empty());
}
