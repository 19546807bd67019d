//! Server streams under limits: WatchSync and WatchPurchase are bounded per caller and per replica,
//! end after their maximum lifetime and at once at shutdown (UNAVAILABLE with a retry hint), and
//! re-read PostgreSQL when a change notice wakes them, from this replica or another, not on a poll.

use std::time::Duration;

use brx_sync::{
    api::status::RETRY_AFTER_MS,
    domain::UserId,
    jobs::{
        store as jobs,
        wake::{ChangeRelay, Changes, Subject},
    },
    pb::v1::{
        GetSyncRequest, PurchaseState, StartSyncRequest, SyncState, WatchPurchaseRequest,
        WatchPurchaseResponse, WatchSyncRequest, WatchSyncResponse,
        sync_service_client::SyncServiceClient,
    },
    purchase::driver::PurchaseEvents,
    sync::scope::SyncProgress,
};
use deadpool_redis::redis;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming, transport::Channel};

use crate::helpers::{CatalogDb, PurchaseRig, TestApp, authorized, spawn_app_with, start_app_with};

const WATCH_SYNC: &str = "/brx.sync.v1.SyncService/WatchSync";
/// Longest any awaited event may take before the test fails.
const BOUND: Duration = Duration::from_secs(20);

/// A server whose bulk lane has no worker, so a started full sync stays queued: a watch on it is
/// open and idle for as long as the test wants.
async fn idle_app(adjust: impl FnOnce(&mut brx_sync::config::Config)) -> TestApp {
    spawn_app_with(|config| {
        config.jobs.bulk_concurrency = 0;
        adjust(config);
    })
    .await
}

async fn client(app: &TestApp) -> SyncServiceClient<Channel> {
    SyncServiceClient::new(app.channel().await)
}

/// Starts a full sync of `user` and returns its job id.
async fn start_sync(app: &TestApp, user: UserId) -> String {
    let request = StartSyncRequest {
        user_id: user.to_string(),
        blueprint_ids: vec![],
        expansion_ids: vec![],
        priority: 0,
    };
    client(app)
        .await
        .start_sync(authorized(request, &app.service_token()))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .job_id
}

/// Opens WatchSync on `job_id` as the holder of `token`.
async fn watch(
    app: &TestApp,
    job_id: &str,
    token: &str,
) -> Result<Streaming<WatchSyncResponse>, Status> {
    let request = WatchSyncRequest {
        job_id: job_id.to_owned(),
    };
    client(app)
        .await
        .watch_sync(authorized(request, token))
        .await
        .map(tonic::Response::into_inner)
}

/// Opens WatchSync and waits for its first message, so the stream is surely open on the server.
async fn open_watch(app: &TestApp, job_id: &str, token: &str) -> Streaming<WatchSyncResponse> {
    let mut stream = watch(app, job_id, token).await.unwrap();
    let first = next(&mut stream).await.unwrap().unwrap().job.unwrap();
    assert_eq!(first.state(), SyncState::Queued);
    stream
}

/// The stream's next item, failing the test if none comes within [`BOUND`].
async fn next<T>(stream: &mut Streaming<T>) -> Option<Result<T, Status>> {
    tokio::time::timeout(BOUND, stream.message())
        .await
        .expect("the stream said something in time")
        .transpose()
}

/// Retries WatchSync until it is admitted, failing the test after [`BOUND`].
async fn watch_until_admitted(
    app: &TestApp,
    job_id: &str,
    token: &str,
) -> Streaming<WatchSyncResponse> {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match watch(app, job_id, token).await {
            Ok(stream) => return stream,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the freed slot was never given to a new stream"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("unexpected refusal: {status:?}"),
        }
    }
}

fn assert_refused_with_retry_hint(refused: &Status) {
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.metadata().get(RETRY_AFTER_MS).is_some(),
        "{refused:?}"
    );
}

fn assert_told_to_watch_again(ended: &Status) {
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    let hint = ended
        .metadata()
        .get(RETRY_AFTER_MS)
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        hint.is_some_and(|ms| ms.parse::<u64>().is_ok()),
        "{ended:?}"
    );
}

fn rereads(method: &str, cause: &str) -> String {
    format!(r#"brx_stream_rereads_total{{cause="{cause}",method="{method}"}}"#)
}

/// Another replica's change hub on the same Redis key prefix, relaying until the token is cancelled.
fn other_replica(app: &TestApp) -> (Changes, CancellationToken) {
    let (hub, relay): (Changes, ChangeRelay) =
        Changes::relayed(&app.config.storage.redis_key_prefix);
    let storage = brx_sync::storage::Storage::connect_lazy(&app.config.storage).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(relay.run(storage.redis, stop.clone()));
    (hub, stop)
}

/// Waits until `app` listens for change notices on Redis (it subscribes in the background).
async fn until_listening(app: &TestApp) {
    let storage = brx_sync::storage::Storage::connect_lazy(&app.config.storage).unwrap();
    let channel = format!("{}changes", app.config.storage.redis_key_prefix);
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let mut conn = storage.redis.get().await.unwrap();
        let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut conn)
            .await
            .unwrap();
        if subscribers > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the app never subscribed to {channel}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn watches_beyond_a_callers_bound_are_refused_with_a_retry_hint_until_one_closes() {
    let app = idle_app(|config| {
        config.server.max_streams_per_caller = 2;
        config.server.max_streams = 10;
    })
    .await;
    let user = app.connected_seller(10).await;
    let job_id = start_sync(&app, user).await;
    let seller = app.seller_token(user);
    let first = open_watch(&app, &job_id, &seller).await;
    let _second = open_watch(&app, &job_id, &seller).await;

    let refused = watch(&app, &job_id, &seller).await.unwrap_err();
    let _other_caller = open_watch(&app, &job_id, &app.service_token()).await;
    drop(first);
    let _reused = watch_until_admitted(&app, &job_id, &seller).await;

    assert_refused_with_retry_hint(&refused);
    let refusals =
        r#"brx_streams_refused_total{limit="caller",method="/brx.sync.v1.SyncService/WatchSync"}"#;
    assert_eq!(app.metric(refusals).await, 1.0);
}

#[tokio::test]
async fn watches_beyond_the_replicas_bound_are_refused_whoever_asks_until_one_closes() {
    let app = idle_app(|config| {
        config.server.max_streams = 2;
        config.server.max_streams_per_caller = 10;
    })
    .await;
    let (one, two) = (
        app.connected_seller(10).await,
        app.connected_seller(10).await,
    );
    let (job_one, job_two) = (start_sync(&app, one).await, start_sync(&app, two).await);
    let first = open_watch(&app, &job_one, &app.seller_token(one)).await;
    let _second = open_watch(&app, &job_two, &app.seller_token(two)).await;

    let refused = watch(&app, &job_one, &app.service_token())
        .await
        .unwrap_err();
    drop(first);
    let _reused = watch_until_admitted(&app, &job_one, &app.service_token()).await;

    assert_refused_with_retry_hint(&refused);
    let refusals =
        r#"brx_streams_refused_total{limit="replica",method="/brx.sync.v1.SyncService/WatchSync"}"#;
    assert_eq!(app.metric(refusals).await, 1.0);
}

#[tokio::test]
async fn a_watch_past_its_maximum_lifetime_ends_unavailable_telling_the_caller_to_watch_again() {
    let app = idle_app(|config| config.server.stream_max_lifetime = Duration::from_secs(1)).await;
    let user = app.connected_seller(10).await;
    let job_id = start_sync(&app, user).await;
    let mut stream = open_watch(&app, &job_id, &app.seller_token(user)).await;

    let ended = next(&mut stream)
        .await
        .expect("the stream ends with a status");

    assert_told_to_watch_again(&ended.unwrap_err());
    let ends =
        r#"brx_streams_ended_total{method="/brx.sync.v1.SyncService/WatchSync",reason="lifetime"}"#;
    assert_eq!(app.metric(ends).await, 1.0);
    let job = jobs::get(&pool(&app).await, job_id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        job.state,
        brx_sync::jobs::JobState::Queued,
        "the job is untouched"
    );
}

#[tokio::test]
async fn an_idle_watch_reads_postgres_only_when_another_replica_says_its_job_changed() {
    // The lifetime ends the test's watch; the backstop (default 5 s) is longer, so any re-read in
    // between was caused by a notice.
    let app = idle_app(|config| config.server.stream_max_lifetime = Duration::from_secs(4)).await;
    assert!(app.config.server.stream_recheck_interval > app.config.server.stream_max_lifetime);
    let user = app.connected_seller(10).await;
    let job_id = start_sync(&app, user).await;
    let mut stream = open_watch(&app, &job_id, &app.seller_token(user)).await;
    until_listening(&app).await;
    let (replica, _relaying) = other_replica(&app);

    let progress = SyncProgress {
        products_seen: 42,
        ..SyncProgress::default()
    };
    sqlx::query("UPDATE jobs SET progress = $2 WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&job_id).unwrap())
        .bind(progress.to_json())
        .execute(&pool(&app).await)
        .await
        .unwrap();
    replica.publish(Subject::Job(job_id.parse().unwrap()));
    let update = next(&mut stream).await.unwrap().unwrap().job.unwrap();
    let ended = next(&mut stream)
        .await
        .expect("the lifetime ends the stream");

    assert_eq!(update.progress.unwrap().products_seen, 42);
    assert_told_to_watch_again(&ended.unwrap_err());
    assert_eq!(app.metric(&rereads(WATCH_SYNC, "notice")).await, 1.0);
    assert_eq!(app.metric(&rereads(WATCH_SYNC, "backstop")).await, 0.0);
}

#[tokio::test]
async fn a_watch_on_one_replica_follows_a_sync_that_another_replica_runs() {
    let catalog = CatalogDb::seeded(1_000).await;
    // Replica A serves the watch and runs no jobs; its backstop is an hour, so only notices from
    // replica B, which runs the sync, can move the watch along.
    let api_only = idle_app(|config| {
        config.storage.mysql_url = catalog.config.storage.mysql_url.clone();
        config.jobs.interactive_concurrency = 0;
        config.server.stream_recheck_interval = Duration::from_secs(3_600);
    })
    .await;
    until_listening(&api_only).await;
    let user = api_only.connected_seller(1_500).await;
    let job_id = start_sync(&api_only, user).await;
    let mut stream = open_watch(&api_only, &job_id, &api_only.seller_token(user)).await;
    // Started only now, so the whole sync happens while the watch is open.
    let shared = api_only.config.clone();
    let simulator = api_only.simulator.base_url();
    let runner = start_app_with(|config| {
        config.storage.database_url = shared.storage.database_url.clone();
        config.storage.redis_key_prefix = shared.storage.redis_key_prefix.clone();
        config.storage.mysql_url = shared.storage.mysql_url.clone();
        config.cardtrader.base_url = simulator;
        config.jobs.poll_interval = Duration::from_millis(100);
    })
    .await;

    let mut last = None;
    while let Some(update) = next(&mut stream).await {
        last = Some(update.unwrap().job.unwrap());
    }

    let last = last.unwrap();
    assert_eq!(last.state(), SyncState::Succeeded, "{}", last.last_error);
    assert_eq!(last.progress.unwrap().products_seen, 1_500);
    assert!(api_only.metric(&rereads(WATCH_SYNC, "notice")).await >= 1.0);
    assert_eq!(api_only.metric(&rereads(WATCH_SYNC, "backstop")).await, 0.0);
    drop(runner);
}

#[tokio::test]
async fn shutdown_ends_an_open_watch_sync_at_once_with_unavailable_and_does_not_wait_out_the_grace_period()
 {
    let mut app =
        idle_app(|config| config.server.shutdown_grace_period = Duration::from_secs(120)).await;
    let user = app.connected_seller(10).await;
    let job_id = start_sync(&app, user).await;
    let mut stream = open_watch(&app, &job_id, &app.seller_token(user)).await;

    app.trigger_shutdown();
    let ended = next(&mut stream)
        .await
        .expect("the stream ends with a status");
    let stopped = tokio::time::timeout(BOUND, app.stop()).await;

    assert_told_to_watch_again(&ended.unwrap_err());
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "run_until_stopped returns long before the 120 s grace period: {stopped:?}"
    );
}

#[tokio::test]
async fn shutdown_ends_an_open_watch_purchase_at_once_with_unavailable() {
    // No interactive worker: the purchase stays in TAKING, so its watch stays open.
    let shop = PurchaseRig::with(0, 10, |config| {
        config.server.shutdown_grace_period = Duration::from_secs(120);
    })
    .await;
    let purchase_id = pending_purchase(&shop).await;
    let mut stream = watch_purchase(&shop, &purchase_id).await;
    let first = next(&mut stream).await.unwrap().unwrap().purchase.unwrap();
    let mut app = shop.rig.app;

    app.trigger_shutdown();
    let ended = next(&mut stream)
        .await
        .expect("the stream ends with a status");
    let stopped = tokio::time::timeout(BOUND, app.stop()).await;

    assert_eq!(first.state(), PurchaseState::Taking);
    assert_told_to_watch_again(&ended.unwrap_err());
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "run_until_stopped returns long before the 120 s grace period: {stopped:?}"
    );
}

#[tokio::test]
async fn a_watch_purchase_follows_the_steps_another_replica_records() {
    let mut shop = PurchaseRig::with(0, 10, |config| {
        config.server.stream_recheck_interval = Duration::from_secs(3_600);
    })
    .await;
    until_listening(&shop.rig.app).await;
    let purchase_id = pending_purchase(&shop).await;
    let mut stream = watch_purchase(&shop, &purchase_id).await;
    let first = next(&mut stream).await.unwrap().unwrap().purchase.unwrap();
    // The test's worker is the other replica: its steps reach the app only as notices on Redis.
    let (replica, _relaying) = other_replica(&shop.rig.app);
    shop.handler.events = PurchaseEvents::announcing(replica.clone());
    let stop = CancellationToken::new();
    let worker = shop
        .worker("other-replica", Duration::from_secs(30))
        .announcing(replica);
    let running = tokio::spawn(worker.run(stop.clone()));

    let mut last = first.clone();
    while let Some(update) = next(&mut stream).await {
        last = update.unwrap().purchase.unwrap();
    }
    stop.cancel();
    running.await.unwrap().unwrap();

    assert_eq!(first.state(), PurchaseState::Taking);
    assert_eq!(last.state(), PurchaseState::Completed);
    let stored = shop.until_done(&purchase_id).await;
    assert!(stored.saga.phase.is_terminal());
    let method = "/brx.sync.v1.PurchaseService/WatchPurchase";
    assert!(shop.rig.app.metric(&rereads(method, "notice")).await >= 1.0);
    assert_eq!(shop.rig.app.metric(&rereads(method, "backstop")).await, 0.0);
}

/// A purchase of one item that no worker drives yet; the Purchase RPC answers at its short deadline.
async fn pending_purchase(shop: &PurchaseRig) -> String {
    let item = shop.stocked(2, 1).await[0];
    let mut request = authorized(
        shop.request("pending", &[(item, 1)]),
        &shop.rig.app.seller_token(shop.user),
    );
    request.set_timeout(Duration::from_secs(2));
    let answer = shop
        .client()
        .await
        .create_purchase(request)
        .await
        .unwrap()
        .into_inner()
        .purchase
        .unwrap();
    assert_eq!(answer.state(), PurchaseState::Taking);
    answer.purchase_id
}

async fn watch_purchase(shop: &PurchaseRig, purchase_id: &str) -> Streaming<WatchPurchaseResponse> {
    let request = WatchPurchaseRequest {
        purchase_id: purchase_id.to_owned(),
    };
    shop.client()
        .await
        .watch_purchase(authorized(request, &shop.rig.app.seller_token(shop.user)))
        .await
        .unwrap()
        .into_inner()
}

async fn pool(app: &TestApp) -> brx_sync::storage::Pg {
    crate::helpers::pg_like_the_app(&app.config)
}

#[tokio::test]
async fn a_connection_past_its_maximum_age_is_closed_after_its_grace_and_the_client_reconnects() {
    // The stream's own lifetime is far away: only the connection's age can end it.
    let app = idle_app(|config| {
        config.server.grpc_max_connection_age = Duration::from_millis(500);
        config.server.grpc_max_connection_age_grace = Duration::from_millis(300);
    })
    .await;
    let user = app.connected_seller(10).await;
    let job_id = start_sync(&app, user).await;
    let channel = app.channel().await;
    let request = WatchSyncRequest {
        job_id: job_id.clone(),
    };
    let mut stream = SyncServiceClient::new(channel.clone())
        .watch_sync(authorized(request, &app.service_token()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next(&mut stream)
            .await
            .unwrap()
            .unwrap()
            .job
            .unwrap()
            .state(),
        SyncState::Queued
    );

    let ended = next(&mut stream).await;

    assert!(
        matches!(ended, Some(Err(_)) | None),
        "the old connection was closed under the stream: {ended:?}"
    );
    // The same client goes on, on a new connection (to whichever replica DNS gives it next).
    let request = GetSyncRequest { job_id };
    let job = SyncServiceClient::new(channel)
        .get_sync(authorized(request, &app.service_token()))
        .await
        .expect("the client reconnects")
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.state(), SyncState::Queued);
}
