//! The purchase saga's promises at the seams with jobs and CardTrader: a decrement still in flight
//! when its worker died is never sent a second time by the worker that took over; a CardTrader
//! sale of the same amount is not mistaken for the purchase's own decrement; and every purchase
//! ends, whether the seller's token is gone or its job runs out of attempts.

use std::time::Duration;

use brx_sync::{
    pb::v1::{DisconnectAccountRequest, RetryPurchaseRequest},
    purchase::saga::{Event, Phase},
};
use cardtrader_sim::Faults;

use crate::helpers::{PurchaseRig, Workers, authorized, wait_until};

const LEASE: Duration = Duration::from_secs(1);

/// A rig whose CardTrader requests give up after half a second and whose calls may take
/// `budget`: a lost answer has settled the budget plus a request timeout after it was sent.
async fn rig(products: u64, budget: Duration) -> PurchaseRig {
    PurchaseRig::with(0, products, |config| {
        config.cardtrader.request_timeout = Duration::from_millis(500);
        config.cardtrader.call_budget = budget;
    })
    .await
}

/// Starts the Purchase RPC in the background (it waits for the outcome) and returns the purchase.
async fn start(shop: &PurchaseRig, key: &str, lines: &[(i64, i32)]) -> uuid::Uuid {
    let request = authorized(
        shop.request(key, lines),
        &shop.rig.app.seller_token(shop.user),
    );
    let mut client = shop.client().await;
    tokio::spawn(async move { client.create_purchase(request).await });
    shop.purchase_id(key).await
}

/// The purchase's step log, once it holds an entry `wanted` accepts.
async fn until_logged(
    shop: &PurchaseRig,
    id: uuid::Uuid,
    wanted: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    for _ in 0..200 {
        let log = brx_sync::purchase::step_log(&shop.rig.pool, id)
            .await
            .unwrap();
        if log.iter().any(&wanted) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the step log of {id} never showed what was awaited");
}

#[tokio::test]
async fn a_decrement_still_in_flight_when_its_worker_died_is_not_sent_again_by_the_one_that_took_over()
 {
    // The decrement settles 4.5 s after it is sent (a 4 s budget, a 0.5 s request timeout).
    let shop = rig(10, Duration::from_secs(4)).await;
    let item = shop.stocked(3, 1).await[0];
    shop.set_stock(item, 3).await;
    // CardTrader holds the decrement for 3 s before applying it; the client gives up at 0.5 s and
    // its worker dies right then. The worker that takes over (the lease is 1 s) reads CardTrader
    // before it lands.
    shop.rig.app.simulator.set_faults(Faults {
        delayed_apply_rate: 1.0,
        apply_delay_ms: 3_000,
        path_ends_with: "/increment".into(),
        max_faulted: 1,
        ..Faults::default()
    });
    fail::cfg("purchase.after_decrement", "1*return").unwrap();
    let workers = Workers::start(&shop, LEASE);

    let id = start(&shop, "in-flight", &[(item, 2)]).await;
    let ended = shop.until_done(&id.to_string()).await;

    assert_eq!(ended.saga.phase, Phase::Completed, "{ended:?}");
    assert_eq!(shop.upstream(item), Some(1), "taken once on CardTrader");
    assert_eq!(shop.local(item).await, Some((1, 0)));
    assert_eq!(shop.leftovers().await, (0, 0));
    let log = brx_sync::purchase::step_log(&shop.rig.pool, id)
        .await
        .unwrap();
    let sent = log
        .iter()
        .filter(|event| matches!(event, Event::DecrementSent { .. }))
        .count();
    assert_eq!(sent, 1, "sent once: {log:?}");
    workers.stop().await;
}

#[tokio::test]
async fn a_cardtrader_sale_of_the_same_amount_meanwhile_is_not_mistaken_for_the_decrement() {
    let shop = rig(10, Duration::from_secs(1)).await;
    let item = shop.stocked(5, 1).await[0];
    shop.set_stock(item, 5).await;
    // The decrement hangs on CardTrader and never applies; the client gives up at 0.5 s.
    shop.rig.app.simulator.set_faults(Faults {
        timeout_rate: 1.0,
        path_ends_with: "/increment".into(),
        max_faulted: 1,
        ..Faults::default()
    });
    // Verification waits a moment, long enough for a CardTrader buyer to step in.
    fail::cfg("purchase.before_verify", "1*return(3000)").unwrap();
    let workers = Workers::start(&shop, Duration::from_secs(30));

    let id = start(&shop, "coincidence", &[(item, 2)]).await;
    until_logged(&shop, id, |event| {
        matches!(event, Event::DecrementSent { .. })
    })
    .await;
    // Past the clock margin after the snapshot, a buyer takes exactly the purchase's amount.
    let snapshot_at = shop.line_seen_at(id).await;
    until_past(snapshot_at + chrono::TimeDelta::milliseconds(1_200)).await;
    shop.sell_on_cardtrader(item, 2).await;
    let ended = shop.until_done(&id.to_string()).await;

    assert_eq!(ended.saga.phase, Phase::Completed, "{ended:?}");
    assert_eq!(
        shop.upstream(item),
        Some(1),
        "5, less the CardTrader sale, less this purchase"
    );
    assert_eq!(shop.local(item).await, Some((3, 0)));
    let log = brx_sync::purchase::step_log(&shop.rig.pool, id)
        .await
        .unwrap();
    assert!(
        log.contains(&Event::NotTaken { line: 0 }),
        "judged not applied: {log:?}"
    );
    workers.stop().await;
}

/// Waits until the wall clock passes `at` (a few hundred milliseconds here).
async fn until_past(at: chrono::DateTime<chrono::Utc>) {
    while chrono::Utc::now() < at {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_purchase_whose_seller_disconnected_before_it_ran_is_undone_locally() {
    let shop = PurchaseRig::new(0, 10).await;
    let item = shop.stocked(2, 1).await[0];
    let (upstream, local) = (shop.upstream(item), shop.local(item).await.unwrap());
    let id = start(&shop, "gone", &[(item, 1)]).await;
    let request = DisconnectAccountRequest {
        user_id: shop.user.to_string(),
        purge_inventory: false,
    };
    shop.rig
        .app
        .accounts()
        .await
        .disconnect_account(authorized(request, &shop.rig.app.service_token()))
        .await
        .unwrap();
    let workers = Workers::start(&shop, Duration::from_secs(30));

    let ended = shop.until_done(&id.to_string()).await;

    assert!(
        matches!(&ended.saga.phase, Phase::Failed { reason } if reason.contains("cannot be used")),
        "{ended:?}"
    );
    assert_eq!(shop.upstream(item), upstream, "CardTrader untouched");
    assert_eq!(shop.local(item).await, Some(local), "reservation released");
    assert_eq!(shop.leftovers().await, (0, 0));
    workers.stop().await;
}

#[tokio::test]
async fn a_purchase_whose_stored_token_cannot_be_decrypted_ends_at_once_instead_of_retrying() {
    let shop = PurchaseRig::new(0, 10).await;
    let item = shop.stocked(2, 1).await[0];
    let local = shop.local(item).await.unwrap();
    // A key removed from BRX_ENCRYPTION_KEYS, say: the ciphertext no longer opens.
    sqlx::query("UPDATE accounts SET token_ciphertext = '\\x00ff' WHERE user_id = $1")
        .bind(shop.user.as_uuid())
        .execute(&shop.rig.pool)
        .await
        .unwrap();
    let id = start(&shop, "unreadable", &[(item, 1)]).await;
    let workers = Workers::start(&shop, Duration::from_secs(30));

    let ended = shop.until_done(&id.to_string()).await;

    assert!(
        matches!(&ended.saga.phase, Phase::Failed { reason } if reason.contains("cannot be decrypted")),
        "{ended:?}"
    );
    assert_eq!(shop.local(item).await, Some(local));
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM jobs WHERE kind = 'purchase' AND dedupe_key = $1")
            .bind(id.to_string())
            .fetch_one(&shop.rig.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 1, "one attempt, not a retry loop");
    workers.stop().await;
}

#[tokio::test]
async fn a_purchase_whose_job_runs_out_of_attempts_with_stock_taken_waits_for_a_person_with_the_reason()
 {
    let shop = PurchaseRig::new(0, 10).await;
    let items = shop.stocked(2, 2).await;
    let id = start(&shop, "exhausted", &[(items[0], 1), (items[1], 1)]).await;
    // Two attempts only: the first dies after its decrement, the second after recording it taken.
    sqlx::query("UPDATE jobs SET max_attempts = 2 WHERE kind = 'purchase' AND dedupe_key = $1")
        .bind(id.to_string())
        .execute(&shop.rig.pool)
        .await
        .unwrap();
    fail::cfg("purchase.after_decrement", "1*return").unwrap();
    fail::cfg("purchase.after_record", "1*off->1*return").unwrap();
    let workers = Workers::start(&shop, LEASE);

    let stuck = shop.until_done(&id.to_string()).await;

    assert!(
        matches!(&stuck.saga.phase, Phase::RequiresAttention { reason, .. } if reason.contains("out of attempts")),
        "{stuck:?}"
    );
    // The worker buries the job just after the driver recorded the purchase's end.
    wait_until("the job to end dead", Duration::from_secs(10), || async {
        let job: String = sqlx::query_scalar(
            "SELECT state FROM jobs WHERE kind = 'purchase' AND dedupe_key = $1",
        )
        .bind(id.to_string())
        .fetch_one(&shop.rig.pool)
        .await
        .unwrap();
        job == "dead"
    })
    .await;
    // An operator retries it once CardTrader is reachable: it completes.
    fail::remove("purchase.after_record");
    let request = RetryPurchaseRequest {
        purchase_id: id.to_string(),
    };
    shop.client()
        .await
        .retry_purchase(authorized(request, &shop.rig.app.service_token()))
        .await
        .unwrap();
    let ended = shop.until_done(&id.to_string()).await;
    assert_eq!(ended.saga.phase, Phase::Completed, "{ended:?}");
    assert_eq!(shop.leftovers().await, (0, 0));
    workers.stop().await;
}
