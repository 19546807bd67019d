//! The purchase driver killed at every step boundary: right after each entry of the step log, and
//! right after each CardTrader write whose answer was not recorded yet. Another worker takes the
//! lease over and finishes or undoes the purchase from the log; the invariant holds every time:
//! CardTrader stock + local stock add up with what was sold, nothing is applied twice, and no
//! reservation or CardTrader lock is left. Also: give-backs that keep failing need a person, who can
//! retry or resolve the purchase.

use std::time::Duration;

use brx_sync::{
    pb::v1::{PurchaseState, Resolution, ResolvePurchaseRequest, RetryPurchaseRequest},
    purchase::saga::Phase,
};
use cardtrader_sim::Faults;
use tonic::Code;

use crate::helpers::{PurchaseRig, Workers, authorized, wait_until};

const LEASE: Duration = Duration::from_secs(1);

/// CardTrader answers at once here: a second's timeout and budget keep a lost answer's wait (until
/// it can no longer land) short.
fn settle_fast(config: &mut brx_sync::config::Config) {
    config.cardtrader.request_timeout = Duration::from_secs(1);
    config.cardtrader.call_budget = Duration::from_secs(1);
}

/// Buys `lines` with the driver killed at the `nth` evaluation of crash point `point`, and returns
/// the purchase once another worker has ended it.
async fn buy_killed_at(
    shop: &PurchaseRig,
    point: &str,
    nth: usize,
    key: &str,
    lines: &[(i64, i32)],
) -> brx_sync::purchase::StoredPurchase {
    let actions = if nth == 0 {
        "1*return".to_owned()
    } else {
        format!("{nth}*off->1*return")
    };
    fail::cfg(point, &actions).unwrap();
    // Answers when the purchase ends (or ABORTED when it was undone); the state is read below.
    let _ = shop.buy(key, lines).await;
    let id = shop.purchase_id(key).await;
    shop.until_done(&id.to_string()).await;
    // The record that ends the purchase ends its job too, so the job is over once it is.
    for _ in 0..100 {
        let state: String = sqlx::query_scalar(
            "SELECT state FROM jobs WHERE kind = 'purchase' AND dedupe_key = $1",
        )
        .bind(id.to_string())
        .fetch_one(&shop.rig.pool)
        .await
        .unwrap();
        if state == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fail::remove(point);
    shop.until_done(&id.to_string()).await
}

/// Claims of the purchase's job: a takeover bumps the fence once more (a rescue spends no attempt).
async fn claims(shop: &PurchaseRig, purchase: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT fence FROM jobs WHERE kind = 'purchase' AND dedupe_key = $1")
        .bind(purchase.to_string())
        .fetch_one(&shop.rig.pool)
        .await
        .unwrap()
}

/// A driver killed before its last record needs another worker to finish; one killed right after
/// it has nothing left to hand over: that record ended the job with the purchase.
async fn assert_taken_over_unless_ended(
    shop: &PurchaseRig,
    purchase: uuid::Uuid,
    killed_after_last_record: bool,
    at: &str,
) {
    let claims = claims(shop, purchase).await;
    if killed_after_last_record {
        assert_eq!(
            claims, 1,
            "{at}: the last record ended the job, no takeover"
        );
    } else {
        assert!(claims >= 2, "{at}: a takeover ran");
    }
}

#[tokio::test]
async fn a_purchase_killed_at_any_boundary_is_finished_by_another_worker() {
    let shop = PurchaseRig::with(0, 120, settle_fast).await;
    let workers = Workers::start(&shop, LEASE);
    // Five log entries (two lines taken, the second with the sale) in four records, two decrements.
    let boundaries = (0..4)
        .map(|n| ("purchase.after_record", n))
        .chain((0..2).map(|n| ("purchase.after_decrement", n)));
    let all = shop.stocked(1, 12).await;
    for (case, (point, nth)) in boundaries.enumerate() {
        let items = all[2 * case..2 * case + 2].to_vec();
        for id in &items {
            shop.set_stock(*id, 3).await;
        }

        let ended = buy_killed_at(
            &shop,
            point,
            nth,
            &format!("ok-{case}"),
            &[(items[0], 1), (items[1], 2)],
        )
        .await;

        let at = format!("killed at {point} #{nth}");
        assert_eq!(ended.saga.phase, Phase::Completed, "{at}: {ended:?}");
        assert_eq!(shop.upstream(items[0]), Some(2), "{at}: taken once");
        assert_eq!(shop.upstream(items[1]), Some(1), "{at}: taken once");
        assert_eq!(shop.local(items[0]).await, Some((2, 0)), "{at}");
        assert_eq!(shop.local(items[1]).await, Some((1, 0)), "{at}");
        assert_eq!(shop.leftovers().await, (0, 0), "{at}");
        let last = (point, nth) == ("purchase.after_record", 3);
        assert_taken_over_unless_ended(&shop, ended.id, last, &at).await;
    }
    workers.stop().await;
}

/// Ten log entries: three lines (the first takes its product to 0), the third refused, two
/// give-backs (the first a re-create), the release; two decrements and two give-backs sent.
fn undo_boundaries() -> impl Iterator<Item = (&'static str, usize)> {
    (0..10)
        .map(|n| ("purchase.after_record", n))
        .chain((0..2).map(|n| ("purchase.after_decrement", n)))
        .chain((0..2).map(|n| ("purchase.after_give_back", n)))
}

#[tokio::test]
async fn a_purchase_killed_at_any_boundary_while_undoing_is_undone_by_another_worker() {
    let shop = PurchaseRig::with(0, 200, settle_fast).await;
    let workers = Workers::start(&shop, LEASE);
    let all = shop.stocked(1, 42).await;
    for (case, (point, nth)) in undo_boundaries().enumerate() {
        let items = all[3 * case..3 * case + 3].to_vec();
        shop.set_stock(items[0], 2).await;
        shop.set_stock(items[1], 3).await;
        shop.set_stock(items[2], 3).await;
        // CardTrader has less of the third item than the shop thinks.
        shop.rig
            .app
            .simulator
            .set_quantity(&shop.token, items[2], 1);

        let ended = buy_killed_at(
            &shop,
            point,
            nth,
            &format!("undo-{case}"),
            &[(items[0], 2), (items[1], 1), (items[2], 2)],
        )
        .await;

        let at = format!("killed at {point} #{nth}");
        assert!(
            matches!(&ended.saga.phase, Phase::Failed { reason } if reason.contains("CardTrader has 1")),
            "{at}: {ended:?}"
        );
        let recreated = ended.lines[0]
            .recreated_product_id
            .unwrap_or_else(|| panic!("{at}: line 0 was re-created"));
        assert_eq!(shop.upstream(items[0]), None, "{at}");
        assert_eq!(shop.upstream(recreated), Some(2), "{at}: given back once");
        assert_eq!(shop.local(recreated).await, Some((2, 0)), "{at}");
        assert_eq!(shop.upstream(items[1]), Some(3), "{at}: given back once");
        assert_eq!(shop.local(items[1]).await, Some((3, 0)), "{at}");
        assert_eq!(shop.upstream(items[2]), Some(1), "{at}");
        assert_eq!(shop.local(items[2]).await, Some((1, 0)), "{at}: corrected");
        assert_eq!(shop.leftovers().await, (0, 0), "{at}");
        let last = (point, nth) == ("purchase.after_record", 9);
        assert_taken_over_unless_ended(&shop, ended.id, last, &at).await;
    }
    workers.stop().await;
}

/// A purchase whose give-back (a re-create) CardTrader keeps failing: it ends in requires_attention
/// with its reservations held.
async fn stuck_purchase(shop: &PurchaseRig, key: &str) -> (uuid::Uuid, Vec<i64>) {
    let items = shop.stocked(1, 2).await;
    shop.set_stock(items[0], 2).await;
    shop.set_stock(items[1], 3).await;
    shop.rig
        .app
        .simulator
        .set_quantity(&shop.token, items[1], 1);
    shop.rig.app.simulator.set_faults(Faults {
        error_5xx_rate: 1.0,
        path_ends_with: "/products".into(),
        ..Faults::default()
    });
    let _ = shop.buy(key, &[(items[0], 2), (items[1], 3)]).await;
    let id = shop.purchase_id(key).await;
    let ended = shop.until_done(&id.to_string()).await;
    assert!(
        matches!(&ended.saga.phase, Phase::RequiresAttention { reason, .. } if reason.contains("failed 5 times")),
        "{ended:?}"
    );
    assert_eq!(shop.local(items[0]).await, Some((2, 2)), "still reserved");
    shop.rig.app.simulator.set_faults(Faults::default());
    (id, items)
}

#[tokio::test]
async fn give_backs_that_keep_failing_need_a_person_and_a_retry_finishes_the_undo() {
    let shop = PurchaseRig::with(0, 60, settle_fast).await;
    let workers = Workers::start(&shop, LEASE);
    let (id, items) = stuck_purchase(&shop, "stuck").await;
    // The driver refreshes the gauge just after recording the purchase's end.
    let gauge = &shop.handler.metrics.purchases_requiring_attention;
    wait_until(
        "the gauge to count the purchase needing a person",
        Duration::from_secs(10),
        || async { gauge.get() == 1 },
    )
    .await;
    assert_eq!(gauge.get(), 1);
    let mut client = shop.client().await;
    let seller = shop.rig.app.seller_token(shop.user);
    let request = || RetryPurchaseRequest {
        purchase_id: id.to_string(),
    };

    let denied = client
        .retry_purchase(authorized(request(), &seller))
        .await
        .unwrap_err();
    let retried = client
        .retry_purchase(authorized(request(), &shop.rig.app.service_token()))
        .await
        .unwrap()
        .into_inner()
        .purchase
        .unwrap();
    let ended = shop.until_done(&id.to_string()).await;

    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_ne!(retried.state(), PurchaseState::RequiresAttention);
    assert!(
        matches!(ended.saga.phase, Phase::Failed { .. }),
        "{ended:?}"
    );
    let recreated = ended.lines[0].recreated_product_id.unwrap();
    assert_eq!(shop.upstream(recreated), Some(2));
    assert_eq!(shop.local(recreated).await, Some((2, 0)));
    assert_eq!(shop.local(items[1]).await, Some((1, 0)));
    assert_eq!(shop.leftovers().await, (0, 0));
    let again = client
        .retry_purchase(authorized(request(), &shop.rig.app.service_token()))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    workers.stop().await;
}

#[tokio::test]
async fn an_operator_resolves_a_stuck_purchase_with_a_recorded_note() {
    let shop = PurchaseRig::with(0, 60, settle_fast).await;
    let workers = Workers::start(&shop, LEASE);
    let (id, items) = stuck_purchase(&shop, "resolve").await;
    let mut client = shop.client().await;
    let service = shop.rig.app.service_token();
    let resolve = |resolution: Resolution, note: &str| ResolvePurchaseRequest {
        purchase_id: id.to_string(),
        resolution: resolution.into(),
        note: note.into(),
    };

    let no_note = client
        .resolve_purchase(authorized(resolve(Resolution::Undone, " "), &service))
        .await
        .unwrap_err();
    let no_resolution = client
        .resolve_purchase(authorized(resolve(Resolution::Unspecified, "x"), &service))
        .await
        .unwrap_err();
    let resolved = client
        .resolve_purchase(authorized(
            resolve(Resolution::Undone, "re-listed by hand on CardTrader"),
            &service,
        ))
        .await
        .unwrap()
        .into_inner()
        .purchase
        .unwrap();

    assert!(no_note.message().starts_with("note"), "{no_note:?}");
    assert!(
        no_resolution.message().starts_with("resolution"),
        "{no_resolution:?}"
    );
    assert_eq!(resolved.state(), PurchaseState::Failed);
    assert_eq!(resolved.resolution(), Resolution::Undone);
    assert_eq!(resolved.resolution_note, "re-listed by hand on CardTrader");
    assert_eq!(shop.local(items[0]).await, Some((2, 0)), "released");
    assert_eq!(shop.leftovers().await, (0, 0));
    let (_, metrics) = shop.rig.app.admin_get("/metrics").await;
    assert!(
        metrics.contains("brx_purchases_requiring_attention 0"),
        "{metrics}"
    );
    workers.stop().await;
}

#[tokio::test]
async fn an_operator_retries_and_resolves_on_a_pool_of_one_connection() {
    // The app's whole pool is one connection, and the app runs no workers (the test's own drive
    // the purchases on a pool of their own): an operator action that took a second connection
    // while its transaction holds the first would wait out the acquire timeout.
    let shop = PurchaseRig::with(0, 60, |config| {
        settle_fast(config);
        config.storage.pg_max_connections = 1;
        config.storage.pg_acquire_timeout = Duration::from_secs(2);
    })
    .await;
    let workers = Workers::start(&shop, LEASE);
    let mut client = shop.client().await;
    let service = shop.rig.app.service_token();
    let (retry_case, _) = stuck_purchase(&shop, "retry-on-one-connection").await;

    let retried = client
        .retry_purchase(authorized(
            RetryPurchaseRequest {
                purchase_id: retry_case.to_string(),
            },
            &service,
        ))
        .await
        .map(|answer| answer.into_inner().purchase.unwrap())
        .map_err(|status| status.code());

    assert_eq!(
        retried.as_ref().map(|purchase| purchase.state()),
        Ok(PurchaseState::Compensating),
        "{retried:?}"
    );
    let undone = shop.until_done(&retry_case.to_string()).await;
    assert!(
        matches!(undone.saga.phase, Phase::Failed { .. }),
        "{undone:?}"
    );

    let (resolve_case, items) = stuck_purchase(&shop, "resolve-on-one-connection").await;
    let resolved = client
        .resolve_purchase(authorized(
            ResolvePurchaseRequest {
                purchase_id: resolve_case.to_string(),
                resolution: Resolution::Undone.into(),
                note: "re-listed by hand on CardTrader".into(),
            },
            &service,
        ))
        .await
        .map(|answer| answer.into_inner().purchase.unwrap())
        .map_err(|status| status.code());

    assert_eq!(
        resolved.as_ref().map(|purchase| purchase.state()),
        Ok(PurchaseState::Failed),
        "{resolved:?}"
    );
    assert_eq!(shop.local(items[0]).await, Some((2, 0)), "released");
    assert_eq!(shop.leftovers().await, (0, 0));
    workers.stop().await;
}
