//! The sync job end to end: simulator export → catalogue mapping → chunked upserts → sweep, run by a
//! real worker against the real PostgreSQL, MariaDB and Redis.

use std::time::Duration;

use brx_sync::jobs::JobState;

use crate::helpers::{SyncRig, progress, wait_until};

#[tokio::test]
async fn a_full_sync_lands_exactly_the_simulators_inventory_and_a_resync_writes_only_what_changed()
{
    let setup = SyncRig::new().await;
    let seller = setup.app.simulator.add_seller(10_000);
    let user = setup.connect(&seller.token).await;

    let first = setup.sync(user).await;

    assert_eq!(first.state, JobState::Succeeded, "{:?}", first.last_error);
    let first_progress = progress(&first);
    assert_eq!(first_progress.products_seen, 10_000);
    assert_eq!(first_progress.written, 10_000);
    assert_eq!(setup.local_rows(user).await, 10_000);
    let unmapped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inventory_items WHERE user_id = $1 AND print_id IS NULL",
    )
    .bind(user.as_uuid())
    .fetch_one(&setup.pool)
    .await
    .unwrap();
    let beyond_catalogue: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inventory_items WHERE user_id = $1 AND blueprint_id > 300000",
    )
    .bind(user.as_uuid())
    .fetch_one(&setup.pool)
    .await
    .unwrap();
    assert_eq!(
        unmapped, beyond_catalogue,
        "exactly the blueprints the shop lacks are stored unmapped"
    );
    assert_eq!(first_progress.unmapped as i64, unmapped);
    // Autovacuum is off here, so only the sync can have refreshed them: pages read right after
    // the import are planned on 10,000 rows, not on the empty table the statistics described.
    let estimated_rows: f32 = sqlx::query_scalar(
        "SELECT reltuples FROM pg_class WHERE oid = 'inventory_items'::regclass",
    )
    .fetch_one(&setup.pool)
    .await
    .unwrap();
    assert!(
        estimated_rows > 9_000.0,
        "the import refreshed the statistics: PostgreSQL estimates {estimated_rows} rows"
    );
    let sample: Vec<(i64, i32)> = sqlx::query_as("SELECT product_id, quantity FROM inventory_items WHERE user_id = $1 ORDER BY product_id LIMIT 50")
        .bind(user.as_uuid())
        .fetch_all(&setup.pool)
        .await
        .unwrap();
    for (product_id, quantity) in sample {
        let upstream = setup
            .app
            .simulator
            .product(&seller.token, product_id)
            .unwrap();
        assert_eq!(upstream["quantity"].as_i64(), Some(i64::from(quantity)));
    }

    // 1% changed upstream, 5 products gone.
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT product_id FROM inventory_items WHERE user_id = $1 ORDER BY product_id",
    )
    .bind(user.as_uuid())
    .fetch_all(&setup.pool)
    .await
    .unwrap();
    for &id in ids.iter().step_by(100) {
        setup.app.simulator.set_quantity(&seller.token, id, 99);
    }
    for &id in ids.iter().skip(7).step_by(1_000).take(5) {
        setup.app.simulator.set_quantity(&seller.token, id, 0);
    }

    let second = setup.sync(user).await;

    assert_eq!(second.state, JobState::Succeeded, "{:?}", second.last_error);
    let second_progress = progress(&second);
    assert_eq!(
        second_progress.written, 100,
        "only the changed rows were rewritten"
    );
    assert_eq!(
        second_progress.deleted, 5,
        "products removed upstream are swept"
    );
    assert_eq!(
        (second_progress.products_seen, second_progress.unchanged),
        (9_995, 9_895),
        "rows found unchanged before any transaction are counted all the same"
    );
    assert_eq!(setup.local_rows(user).await, 9_995);
    let account = setup.handler.accounts.get(user).await.unwrap();
    assert!(account.last_sync_at.is_some());

    // Nothing changed since: no chunk needs a transaction, and every row is still counted.
    let chunk_transactions = || setup.handler.metrics.sync_chunk_seconds.get_sample_count();
    let before = chunk_transactions();
    let third = setup.sync(user).await;
    assert_eq!(third.state, JobState::Succeeded, "{:?}", third.last_error);
    let third_progress = progress(&third);
    assert_eq!(
        (
            third_progress.products_seen,
            third_progress.unchanged,
            third_progress.written,
            third_progress.deleted,
            third_progress.chunks_done,
        ),
        (9_995, 9_995, 0, 0, 10)
    );
    assert_eq!(
        chunk_transactions(),
        before,
        "an unchanged export opens no chunk transaction"
    );
    assert_eq!(setup.local_rows(user).await, 9_995);
}

#[tokio::test]
async fn a_sync_whose_export_fails_sweeps_nothing_and_a_retry_completes() {
    let setup = SyncRig::new().await;
    let seller = setup.app.simulator.add_seller(3_000);
    let user = setup.connect(&seller.token).await;
    let first = setup.sync(user).await;
    assert_eq!(first.state, JobState::Succeeded);
    // Upstream drops a product, then the next export dies: the row must survive the failed attempts.
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT product_id FROM inventory_items WHERE user_id = $1 ORDER BY product_id LIMIT 1",
    )
    .bind(user.as_uuid())
    .fetch_all(&setup.pool)
    .await
    .unwrap();
    setup.app.simulator.set_quantity(&seller.token, ids[0], 0);
    setup.app.simulator.set_faults(cardtrader_sim::Faults {
        error_5xx_rate: 1.0,
        ..Default::default()
    });

    let failed = setup.sync(user).await;

    assert_eq!(failed.state, JobState::Dead, "out of attempts");
    assert!(failed.last_error.is_some());
    assert_eq!(
        setup.local_rows(user).await,
        3_000,
        "a failed sync deletes nothing"
    );

    setup
        .app
        .simulator
        .set_faults(cardtrader_sim::Faults::default());
    setup.until_cardtrader_admits(user).await;
    let retried = setup.sync(user).await;

    assert_eq!(
        retried.state,
        JobState::Succeeded,
        "{:?}",
        retried.last_error
    );
    assert_eq!(setup.local_rows(user).await, 2_999);
}

#[tokio::test]
async fn a_served_replica_finds_a_job_queued_behind_its_back_by_polling() {
    // Queued straight into the table, nobody announces the job: the replica's own bulk worker must
    // find it by polling, the backstop of lost wake-ups.
    let rig = SyncRig::with(|config| {
        config.jobs.bulk_concurrency = 2;
        config.jobs.poll_interval = Duration::from_millis(100);
    })
    .await;
    let seller = rig.app.simulator.add_seller(2_500);
    let user = rig.connect(&seller.token).await;

    let job = rig.until_terminal(rig.queue(user).await).await;

    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    assert_eq!(progress(&job).products_seen, 2_500);
}

/// `BRX_SYNC_MAX_PRODUCT_BYTES`'s default.
const DEFAULT_MAX_PRODUCT_BYTES: usize = 1 << 20;

#[tokio::test]
async fn a_product_past_the_size_bound_fails_the_sync_naming_the_setting_and_sweeps_nothing() {
    let setup = SyncRig::new().await;
    let seller = setup.app.simulator.add_seller(3_000);
    let user = setup.connect(&seller.token).await;
    let first = setup.sync(user).await;
    assert_eq!(first.state, JobState::Succeeded, "{:?}", first.last_error);
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT product_id FROM inventory_items WHERE user_id = $1 ORDER BY product_id",
    )
    .bind(user.as_uuid())
    .fetch_all(&setup.pool)
    .await
    .unwrap();
    // Gone upstream: a sync that completed would sweep its row.
    setup.app.simulator.set_quantity(&seller.token, ids[0], 0);
    // The seller gives the last product of the export a description half again past the default
    // bound, through CardTrader's own API.
    let description = "x".repeat(DEFAULT_MAX_PRODUCT_BYTES * 3 / 2);
    let updated = reqwest::Client::new()
        .put(format!(
            "{}/products/{}",
            setup.app.simulator.base_url(),
            ids[ids.len() - 1]
        ))
        .bearer_auth(&seller.token)
        .json(&serde_json::json!({ "description": description }))
        .send()
        .await
        .unwrap();
    assert!(updated.status().is_success(), "{}", updated.status());

    let failed = setup.sync(user).await;

    assert_eq!(failed.state, JobState::Failed, "retrying cannot shrink it");
    let error = failed.last_error.unwrap_or_default();
    assert!(error.contains("BRX_SYNC_MAX_PRODUCT_BYTES"), "{error}");
    assert_eq!(
        setup.local_rows(user).await,
        3_000,
        "a sync that could not read its whole export sweeps nothing"
    );
}

#[tokio::test]
async fn a_draining_replica_hands_back_a_sync_waiting_on_its_export_at_once() {
    // Found by the soak: drains ran into their grace period waiting for a sync whose export was in
    // flight (CardTrader asks clients to give it minutes). A read abandoned halfway changes
    // nothing, so the job goes back to the queue for another replica straight away.
    let mut rig = SyncRig::with(|config| {
        config.jobs.bulk_concurrency = 2;
        config.jobs.poll_interval = Duration::from_millis(100);
        config.server.shutdown_grace_period = Duration::from_secs(30);
    })
    .await;
    let seller = rig.app.simulator.add_seller(100);
    let user = rig.connect(&seller.token).await;
    let calls_before = rig.app.simulator.stats(&seller.token).total;
    rig.app.simulator.set_faults(cardtrader_sim::Faults {
        export_delay_ms: 120_000,
        ..cardtrader_sim::Faults::default()
    });
    let job = rig.queue(user).await;
    // The sync's first CardTrader call is the export.
    wait_until(
        "the export to be asked for",
        Duration::from_secs(10),
        || {
            let calls = rig.app.simulator.stats(&seller.token).total;
            async move { calls > calls_before }
        },
    )
    .await;

    let stopped = tokio::time::timeout(Duration::from_secs(10), rig.app.shut_down()).await;

    assert!(
        matches!(stopped, Ok(Ok(()))),
        "the drain must not wait for the export: {stopped:?}"
    );
    let handed_back = brx_sync::jobs::store::get(&rig.pool, job).await.unwrap();
    assert_eq!(
        handed_back.state,
        JobState::Queued,
        "free for another replica: {handed_back:?}"
    );
}
