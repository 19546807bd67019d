//! SyncService over gRPC: start, coalescing, a full queue, watching a sync to its end, status,
//! cancellation, clear statuses for bad input and other sellers' jobs, wake-ups, targeted scopes
//! and the remap of unmapped rows.

use std::time::Duration;

use brx_sync::{
    domain::UserId,
    pb::v1::{
        CancelSyncRequest, GetSyncRequest, GetSyncStatusRequest, InvalidateBlueprintsRequest,
        ListSyncsRequest, StartSyncRequest, SyncJob, SyncScope, SyncState, WatchSyncRequest,
        blueprint_service_client::BlueprintServiceClient, sync_service_client::SyncServiceClient,
    },
};
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};

use crate::helpers::{CatalogDb, TestApp, authorized, spawn_app_with, wait_for};

async fn app_with(adjust: impl FnOnce(&mut brx_sync::config::Config)) -> (TestApp, CatalogDb) {
    let catalog = CatalogDb::seeded(1_000).await;
    let url = catalog.config.storage.mysql_url.clone();
    let app = spawn_app_with(|config| {
        config.storage.mysql_url = url;
        config.jobs.poll_interval = Duration::from_millis(100);
        adjust(config);
    })
    .await;
    (app, catalog)
}

async fn client(app: &TestApp) -> SyncServiceClient<Channel> {
    SyncServiceClient::new(app.channel().await)
}

fn start(user: UserId) -> StartSyncRequest {
    StartSyncRequest {
        user_id: user.to_string(),
        blueprint_ids: vec![],
        expansion_ids: vec![],
        priority: 0,
    }
}

#[tokio::test]
async fn a_started_sync_can_be_watched_to_its_end_and_shows_in_the_status() {
    let (app, _catalog) = app_with(|_| {}).await;
    let user = app.connected_seller(1_500).await;
    let mut sync = client(&app).await;
    let token = app.seller_token(user);

    let job = sync
        .start_sync(authorized(start(user), &token))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let mut updates = sync
        .watch_sync(authorized(
            WatchSyncRequest {
                job_id: job.job_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(update) = updates.next().await {
        last = Some(update.unwrap().job.unwrap());
    }

    let last = last.unwrap();
    assert_eq!(last.state(), SyncState::Succeeded, "{}", last.last_error);
    assert_eq!(last.progress.unwrap().products_seen, 1_500);
    let status = sync
        .get_sync_status(authorized(
            GetSyncStatusRequest {
                user_id: user.to_string(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.item_count, 1_500);
    assert_eq!(status.last_finished.unwrap().job_id, job.job_id);
    assert!(status.current.is_none());
    let listed = sync
        .list_syncs(authorized(
            ListSyncsRequest {
                user_id: user.to_string(),
                page_size: 10,
                page_token: String::new(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.syncs.len(), 1);
}

#[tokio::test]
async fn fifty_concurrent_start_syncs_for_one_seller_coalesce_into_one_job() {
    // No bulk workers on this replica: every request finds the first one still queued.
    let (app, _catalog) = app_with(|config| config.jobs.bulk_concurrency = 0).await;
    let user = app.connected_seller(10).await;
    let token = app.seller_token(user);
    let channel = app.channel().await;

    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut sync = SyncServiceClient::new(channel.clone());
            let request = authorized(start(user), &token);
            tokio::spawn(async move {
                sync.start_sync(request)
                    .await
                    .unwrap()
                    .into_inner()
                    .job
                    .unwrap()
            })
        })
        .collect();
    let mut jobs = Vec::new();
    for call in calls {
        jobs.push(call.await.unwrap());
    }

    assert!(jobs.iter().all(|job| job.job_id == jobs[0].job_id));
    assert_eq!(jobs.iter().filter(|job| !job.coalesced).count(), 1);
}

#[tokio::test]
async fn a_full_queue_answers_resource_exhausted_with_a_retry_hint() {
    let (app, _catalog) = app_with(|config| {
        config.jobs.bulk_concurrency = 0;
        config.jobs.max_queue_depth = 1;
    })
    .await;
    let (first, second) = (
        app.connected_seller(10).await,
        app.connected_seller(10).await,
    );
    let mut sync = client(&app).await;
    sync.start_sync(authorized(start(first), &app.service_token()))
        .await
        .unwrap();

    let refused = sync
        .start_sync(authorized(start(second), &app.service_token()))
        .await
        .unwrap_err();

    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.metadata().get("retry-after-ms").is_some());
    let stats = app.get_stats(Some(&app.service_token())).await.unwrap();
    let bulk = stats.lanes.iter().find(|lane| lane.lane == "bulk").unwrap();
    assert_eq!(
        (bulk.queued, bulk.running),
        (1, 0),
        "GetStats shows the queue depth per lane"
    );
}

#[tokio::test]
async fn a_queued_sync_is_cancelled_at_once() {
    let (app, _catalog) = app_with(|config| config.jobs.bulk_concurrency = 0).await;
    let user = app.connected_seller(10).await;
    let mut sync = client(&app).await;
    let token = app.seller_token(user);
    let job = sync
        .start_sync(authorized(start(user), &token))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    let cancelled = sync
        .cancel_sync(authorized(CancelSyncRequest { job_id: job.job_id }, &token))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    assert_eq!(cancelled.state(), SyncState::Cancelled);
}

#[tokio::test]
async fn bad_input_unknown_jobs_and_other_sellers_get_clear_statuses() {
    let (app, _catalog) = app_with(|config| config.jobs.bulk_concurrency = 0).await;
    let (owner, stranger) = (
        app.connected_seller(10).await,
        app.connected_seller(10).await,
    );
    let mut sync = client(&app).await;
    let job = sync
        .start_sync(authorized(start(owner), &app.seller_token(owner)))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    let not_connected = UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
    let status = sync
        .start_sync(authorized(start(not_connected), &app.service_token()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    let mut bad_user = start(owner);
    bad_user.user_id = "seller-1".into();
    let status = sync
        .start_sync(authorized(bad_user, &app.service_token()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("user_id"));

    let mut negative = start(owner);
    negative.blueprint_ids = vec![1];
    negative.expansion_ids = vec![2, -3];
    let status = sync
        .start_sync(authorized(negative, &app.service_token()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("expansion_ids[1]"),
        "{status:?}"
    );

    let mut too_many = start(owner);
    too_many.blueprint_ids = (1..=101).collect();
    let status = sync
        .start_sync(authorized(too_many, &app.service_token()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("blueprint_ids"), "{status:?}");

    let bad_id = sync
        .get_sync(authorized(
            GetSyncRequest {
                job_id: "nope".into(),
            },
            &app.service_token(),
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    assert!(bad_id.message().starts_with("job_id"));

    let unknown = GetSyncRequest {
        job_id: uuid::Uuid::new_v4().to_string(),
    };
    assert_eq!(
        sync.get_sync(authorized(unknown, &app.service_token()))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    let theirs = CancelSyncRequest { job_id: job.job_id };
    let denied = sync
        .cancel_sync(authorized(theirs, &app.seller_token(stranger)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

/// Starts a sync and follows it to its end (at most 60 s); returns the last update.
async fn run_to_end(app: &TestApp, request: StartSyncRequest) -> SyncJob {
    let mut sync = client(app).await;
    let token = app.service_token();
    let job = sync
        .start_sync(authorized(request, &token))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let watch = async {
        let mut updates = sync
            .watch_sync(authorized(WatchSyncRequest { job_id: job.job_id }, &token))
            .await
            .unwrap()
            .into_inner();
        let mut last = None;
        while let Some(update) = updates.next().await {
            last = Some(update.unwrap().job.unwrap());
        }
        last.unwrap()
    };
    tokio::time::timeout(Duration::from_secs(60), watch)
        .await
        .expect("the sync ends within a minute")
}

async fn pool(app: &TestApp) -> brx_sync::storage::Pg {
    crate::helpers::pg_like_the_app(&app.config)
}

#[tokio::test]
async fn a_started_sync_runs_at_once_although_workers_poll_only_hourly() {
    let (app, _catalog) =
        app_with(|config| config.jobs.poll_interval = Duration::from_secs(3_600)).await;
    let user = app.connected_seller(200).await;

    let last = run_to_end(&app, start(user)).await;

    assert_eq!(last.state(), SyncState::Succeeded, "{}", last.last_error);
}

#[tokio::test]
async fn a_targeted_sync_reconciles_only_its_blueprints_and_expansions() {
    let (app, _catalog) = app_with(|_| {}).await;
    // About scopes, not about learning expansions (tests/api/expansions.rs): the export says them.
    app.simulator.set_export_expansion(true);
    let (user, token) = app.connected_seller_and_token(3_000).await;
    assert_eq!(
        run_to_end(&app, start(user)).await.state(),
        SyncState::Succeeded
    );
    let db = pool(&app).await;
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT product_id, blueprint_id, expansion_id FROM inventory_items WHERE user_id = $1 \
         ORDER BY product_id",
    )
    .bind(user.as_uuid())
    .fetch_all(&db)
    .await
    .unwrap();
    let (in_blueprint, blueprint, _) = rows[0];
    let (in_expansion, _, expansion) = *rows
        .iter()
        .find(|row| row.1 != blueprint && row.2 != rows[0].2)
        .unwrap();
    let (outside, _, _) = *rows
        .iter()
        .find(|row| row.1 != blueprint && row.2 != expansion)
        .unwrap();
    for product in [in_blueprint, in_expansion, outside] {
        app.simulator.set_quantity(&token, product, 0);
    }

    let mut targeted = start(user);
    targeted.blueprint_ids = vec![blueprint];
    targeted.expansion_ids = vec![expansion];
    let last = run_to_end(&app, targeted).await;

    assert_eq!(last.state(), SyncState::Succeeded, "{}", last.last_error);
    assert_eq!(last.scope(), SyncScope::Targeted);
    assert_eq!(
        (last.blueprint_ids.clone(), last.expansion_ids.clone()),
        (vec![blueprint], vec![expansion])
    );
    let left: Vec<i64> = sqlx::query_scalar(
        "SELECT product_id FROM inventory_items WHERE user_id = $1 AND product_id = ANY($2)",
    )
    .bind(user.as_uuid())
    .bind(vec![in_blueprint, in_expansion, outside])
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(left, vec![outside], "only the scope was reconciled");
    assert_eq!(last.progress.unwrap().deleted, 2);
}

#[tokio::test]
async fn unmapped_rows_are_remapped_once_their_blueprints_are_invalidated() {
    let (app, catalog) = app_with(|_| {}).await;
    let user = app.connected_seller(500).await;
    assert_eq!(
        run_to_end(&app, start(user)).await.state(),
        SyncState::Succeeded
    );
    let db = pool(&app).await;
    let unmapped_in_catalogue = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT blueprint_id FROM inventory_items WHERE user_id = $1 AND print_id IS NULL \
             AND blueprint_id <= $2",
        )
        .bind(user.as_uuid())
        .bind(cardtrader_sim::CATALOGUE_BLUEPRINTS)
        .fetch_all(&db)
    };
    let missing = unmapped_in_catalogue().await.unwrap();
    assert!(
        !missing.is_empty(),
        "the small catalogue left rows unmapped"
    );

    // The catalogue gains every print; the operator invalidates the blueprints concerned.
    brx_sync::blueprints::fixture::seed(
        &catalog.config.storage.mysql_url,
        &catalog.config.catalog,
        cardtrader_sim::CATALOGUE_BLUEPRINTS,
    )
    .await
    .unwrap();
    let mut blueprints = BlueprintServiceClient::new(app.channel().await);
    let answer = blueprints
        .invalidate_blueprints(authorized(
            InvalidateBlueprintsRequest {
                blueprint_ids: missing,
            },
            &app.service_token(),
        ))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(answer.remaps_queued, 1);
    wait_for(
        "the remap to map every row",
        Duration::from_secs(20),
        || async {
            let left = unmapped_in_catalogue().await.unwrap();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{} rows still unmapped", left.len()))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_targeted_request_joining_a_queued_one_widens_it_instead_of_being_dropped() {
    let (app, _catalog) = app_with(|config| config.jobs.interactive_concurrency = 0).await;
    let user = app.connected_seller(10).await;
    let mut sync = client(&app).await;
    let targeted = |blueprints: Vec<i64>, expansions: Vec<i64>| {
        let mut request = start(user);
        request.blueprint_ids = blueprints;
        request.expansion_ids = expansions;
        authorized(request, &app.service_token())
    };

    let first = sync
        .start_sync(targeted(vec![7, 3], vec![]))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let joined = sync
        .start_sync(targeted(vec![3, 11], vec![40]))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    assert!(joined.coalesced);
    assert_eq!(joined.job_id, first.job_id);
    assert_eq!(joined.scope(), SyncScope::Targeted);
    assert_eq!(
        (joined.blueprint_ids, joined.expansion_ids),
        (vec![3, 7, 11], vec![40])
    );
}
