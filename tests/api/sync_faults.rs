//! Syncs under faults: a worker killed mid-sync, a worker paused past its lease, cancellation of a
//! running sync, a 429 storm and a revoked token. Failpoints pause named points of the real code
//! (nextest runs each test in its own process, so their settings never leak between tests).

use std::time::Duration;

use brx_sync::{
    accounts::AccountStatus,
    jobs::{JobState, store as jobs},
};
use cardtrader_sim::Faults;
use tokio_util::sync::CancellationToken;

use crate::helpers::{SyncRig, progress, wait_until};

/// Waits until the job has committed at least `chunks` chunks.
async fn until_chunks_done(rig: &SyncRig, id: uuid::Uuid, chunks: u64) {
    for _ in 0..300 {
        let job = jobs::get(&rig.pool, id).await.unwrap();
        if progress(&job).chunks_done >= chunks {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the sync never reached {chunks} chunks");
}

#[tokio::test]
async fn a_worker_killed_mid_sync_is_taken_over_and_the_result_is_exact() {
    let rig = SyncRig::new().await;
    let seller = rig.app.simulator.add_seller(6_000);
    let user = rig.connect(&seller.token).await;
    fail::cfg("sync.after_chunk", "return(60000)").unwrap();
    let id = rig.queue(user).await;
    let doomed = tokio::spawn(
        rig.worker("doomed", Duration::from_secs(1))
            .run(CancellationToken::new()),
    );
    until_chunks_done(&rig, id, 1).await;

    // The process dies: its tasks, heartbeat included, are gone mid-sync.
    doomed.abort();
    fail::remove("sync.after_chunk");
    let stop = CancellationToken::new();
    let rescuer = tokio::spawn(
        rig.worker("rescuer", Duration::from_secs(30))
            .run(stop.clone()),
    );
    let job = rig.until_terminal(id).await;
    stop.cancel();
    rescuer.await.unwrap().unwrap();

    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    assert_eq!(job.fence, 2, "claimed once, taken over once");
    assert_eq!(
        progress(&job).products_seen,
        6_000,
        "the rescuer counted its own attempt only"
    );
    assert!(rig.matches_upstream(user, &seller.token).await);
}

#[tokio::test]
async fn a_worker_paused_past_its_lease_writes_nothing_after_the_takeover() {
    let rig = SyncRig::new().await;
    let seller = rig.app.simulator.add_seller(6_000);
    let user = rig.connect(&seller.token).await;
    // The first worker stops after its first chunk for 4 s and none of its heartbeats get through,
    // so its lease runs out while it still holds export rows it read before the takeover.
    fail::cfg("sync.after_chunk", "1*return(4000)").unwrap();
    fail::cfg("jobs.heartbeat", "return(60000)").unwrap();
    let id = rig.queue(user).await;
    let stop = CancellationToken::new();
    // One slot: with a second one free, the zombie's own worker could take its expired job over.
    let zombie = tokio::spawn(
        rig.worker_with_slots("zombie", Duration::from_secs(1), 1)
            .run(stop.clone()),
    );
    until_chunks_done(&rig, id, 1).await;
    // A product the zombie has most likely read already (its next chunk) changes upstream.
    let changed: i64 =
        sqlx::query_scalar("SELECT max(product_id) FROM inventory_items WHERE user_id = $1")
            .bind(user.as_uuid())
            .fetch_one(&rig.pool)
            .await
            .unwrap();
    let changed = changed + 1_000;
    rig.app.simulator.set_quantity(&seller.token, changed, 77);

    let rescuer = tokio::spawn(
        rig.worker("rescuer", Duration::from_secs(30))
            .run(stop.clone()),
    );
    let job = rig.until_terminal(id).await;
    // Let the zombie wake up, try its next chunk and be fenced out.
    let outcome = rig
        .handler
        .metrics
        .jobs_finished
        .with_label_values(&["sync_full", "lease_lost"]);
    wait_until(
        "the zombie to wake up and be fenced out",
        Duration::from_secs(10),
        || async { outcome.get() > 0 },
    )
    .await;
    stop.cancel();
    zombie.await.unwrap().unwrap();
    rescuer.await.unwrap().unwrap();

    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    assert_eq!(
        outcome.get(),
        1,
        "the zombie tried again and was fenced out"
    );
    let after_takeover: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inventory_items WHERE user_id = $1 AND updated_at > $2",
    )
    .bind(user.as_uuid())
    .bind(job.finished_at.unwrap())
    .fetch_one(&rig.pool)
    .await
    .unwrap();
    assert_eq!(after_takeover, 0, "no row written after the job ended");
    assert!(rig.matches_upstream(user, &seller.token).await);
    let final_job = jobs::get(&rig.pool, id).await.unwrap();
    assert_eq!(final_job.state, JobState::Succeeded);
}

#[tokio::test]
async fn a_running_sync_cancelled_stops_after_its_chunk_and_sweeps_nothing() {
    let rig = SyncRig::new().await;
    let seller = rig.app.simulator.add_seller(8_000);
    let user = rig.connect(&seller.token).await;
    assert_eq!(rig.sync(user).await.state, JobState::Succeeded);
    let stored: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT product_id, quantity FROM inventory_items WHERE user_id = $1 ORDER BY product_id",
    )
    .bind(user.as_uuid())
    .fetch_all(&rig.pool)
    .await
    .unwrap();
    // Every product changes, so every chunk of the re-sync is a chunk transaction (one whose rows
    // are all unchanged opens none, and is checked for a cancellation only once a second), and
    // the first is gone from CardTrader: a sync that ran to its end would sweep it.
    for (product, quantity) in &stored {
        rig.app
            .simulator
            .set_quantity(&seller.token, *product, i64::from(*quantity) + 1);
    }
    rig.app
        .simulator
        .set_quantity(&seller.token, stored[0].0, 0);
    fail::cfg("sync.after_chunk", "return(300)").unwrap();
    let id = rig.queue(user).await;
    let stop = CancellationToken::new();
    let worker = tokio::spawn(rig.worker("w", Duration::from_secs(30)).run(stop.clone()));
    until_chunks_done(&rig, id, 1).await;

    jobs::cancel(&rig.pool, id).await.unwrap();
    let job = rig.until_terminal(id).await;
    stop.cancel();
    worker.await.unwrap().unwrap();

    assert_eq!(job.state, JobState::Cancelled);
    assert!(progress(&job).chunks_done < 8, "{:?}", progress(&job));
    assert_eq!(
        rig.local_rows(user).await,
        8_000,
        "a cancelled sync sweeps nothing"
    );
}

#[tokio::test]
async fn a_429_storm_delays_the_sync_without_spending_attempts_or_breaking_the_limit() {
    // One attempt per call: every 429 reaches the job, which must reschedule rather than retry.
    let rig = SyncRig::with(|config| config.cardtrader.attempts = 1).await;
    let seller = rig.app.simulator.add_seller(3_000);
    let user = rig.connect(&seller.token).await;
    rig.app.simulator.set_faults(Faults {
        burst_429: 2,
        ..Faults::default()
    });

    let job = rig.sync(user).await;

    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    // Three claims with max_attempts 3: had the 429s spent attempts, the job would have failed.
    assert_eq!(
        job.attempts, 1,
        "rate-limited runs gave their attempts back"
    );
    assert_eq!(
        rig.handler
            .metrics
            .jobs_finished
            .with_label_values(&["sync_full", "rate_limited"])
            .get(),
        2
    );
    let stats = rig.app.simulator.stats(&seller.token);
    assert!(stats.rejected_429 >= 2, "{stats:?}");
    assert!(stats.max_general_in_any_10s <= 200, "{stats:?}");
    assert!(rig.matches_upstream(user, &seller.token).await);
}

#[tokio::test]
async fn a_revoked_token_fails_the_sync_at_once_and_marks_the_account() {
    let rig = SyncRig::new().await;
    let seller = rig.app.simulator.add_seller(100);
    let user = rig.connect(&seller.token).await;
    // A token CardTrader does not know, sealed like a real one, as if the seller had revoked it.
    let keyring = rig.app.keyring();
    let revoked = keyring.seal(
        b"revoked-token",
        format!("accounts/{user}/token").as_bytes(),
    );
    sqlx::query("UPDATE accounts SET token_ciphertext = $1 WHERE user_id = $2")
        .bind(&revoked.bytes)
        .bind(user.as_uuid())
        .execute(&rig.pool)
        .await
        .unwrap();

    let job = rig.sync(user).await;

    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 1, "a 401 is not retried");
    assert_eq!(
        rig.handler.accounts.get(user).await.unwrap().status,
        AccountStatus::TokenInvalid
    );
    assert_eq!(rig.local_rows(user).await, 0);
}

/// Sweep batches rerun for `reason`, as the rig's worker counted them.
fn sweep_retries(rig: &SyncRig, reason: &str) -> u64 {
    let series = format!("brx_sync_sweep_retries_total{{reason=\"{reason}\"}} ");
    rig.handler
        .metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_sweep_batch_blocked_past_its_statement_timeout_is_rerun_and_the_sync_completes() {
    let mut setup = SyncRig::new().await;
    // A blocked batch gives up after this; the small chunks of this sync take milliseconds.
    setup.handler.settings.statement_timeout = Duration::from_millis(500);
    let seller = setup.app.simulator.add_seller(1_000);
    let user = setup.connect(&seller.token).await;
    let first = setup.sync(user).await;
    assert_eq!(first.state, JobState::Succeeded, "{:?}", first.last_error);
    let gone: i64 = sqlx::query_scalar(
        "SELECT product_id FROM inventory_items WHERE user_id = $1 ORDER BY product_id LIMIT 1",
    )
    .bind(user.as_uuid())
    .fetch_one(&setup.pool)
    .await
    .unwrap();
    setup.app.simulator.set_quantity(&seller.token, gone, 0);
    // Another transaction holds the row the sweep has to delete.
    let mut holder = setup.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM inventory_items WHERE user_id = $1 AND product_id = $2 FOR UPDATE")
        .bind(user.as_uuid())
        .bind(gone)
        .execute(&mut *holder)
        .await
        .unwrap();
    let id = setup.queue(user).await;
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        setup
            .worker("test", Duration::from_secs(30))
            .run(stop.clone()),
    );

    let mut waited = 0;
    while sweep_retries(&setup, "timeout") == 0 {
        assert!(
            waited < 200,
            "the blocked sweep batch was never given up and rerun within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    holder.rollback().await.unwrap();
    let job = setup.until_terminal(id).await;
    stop.cancel();
    worker.await.unwrap().unwrap();

    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    assert_eq!(progress(&job).deleted, 1);
    assert_eq!(setup.local_rows(user).await, 999);
    assert!(sweep_retries(&setup, "timeout") >= 1);
}
