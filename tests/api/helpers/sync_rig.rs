//! A sync stack outside the served app: the real catalogue, limiter, CardTrader client and accounts
//! around a [`SyncHandler`], so tests can run workers of their own (kill them, pause them, race them)
//! against the app's database and simulator. The app runs no bulk workers of its own, so the test's
//! workers run every full sync.

use std::{sync::Arc, time::Duration};

use brx_sync::{
    accounts::Accounts,
    domain::UserId,
    jobs::{
        Job, JobKind, KindName, Lane, NewJob, QueueLimit, store as jobs,
        worker::{Worker, WorkerSettings},
    },
    marketplace::{CallOptions, MarketplaceClient},
    metrics::Metrics,
    pb::v1::ConnectAccountRequest,
    rate_limit::{Limits, RateLimiter},
    sync::{
        handler::{SyncHandler, SyncSettings},
        scope::SyncProgress,
    },
};
use tokio_util::sync::CancellationToken;

use super::{CatalogDb, TestApp, authorized, spawn_app_with, wait_for};

pub(crate) struct SyncRig {
    pub(crate) app: TestApp,
    pub(crate) _catalog: CatalogDb,
    pub(crate) pool: brx_sync::storage::Pg,
    pub(crate) handler: SyncHandler,
    /// Where the handler's blueprint catalogue counts its lookups.
    pub(crate) catalog_metrics: Metrics,
}

impl SyncRig {
    pub(crate) async fn new() -> Self {
        Self::with(|_| {}).await
    }

    pub(crate) async fn with(adjust: impl FnOnce(&mut brx_sync::config::Config)) -> Self {
        let catalog_db = CatalogDb::seeded(cardtrader_sim::CATALOGUE_BLUEPRINTS).await;
        let mysql_url = catalog_db.config.storage.mysql_url.clone();
        let app = spawn_app_with(|config| {
            config.storage.mysql_url = mysql_url;
            config.jobs.bulk_concurrency = 0;
            adjust(config);
        })
        .await;
        let pool = super::pg_like_the_app(&app.config);
        let (catalog, catalog_metrics, storage) = catalog_db.catalog(|config| {
            config.storage.redis_key_prefix = app.config.storage.redis_key_prefix.clone()
        });
        let metrics = Metrics::new().unwrap();
        let limiter = RateLimiter::new(
            storage.redis.clone(),
            &app.config.storage.redis_key_prefix,
            Limits::from_config(&app.config.cardtrader),
            metrics.clone(),
        );
        let marketplace =
            MarketplaceClient::new(&app.config.cardtrader, limiter, metrics.clone()).unwrap();
        let keyring = app.keyring();
        let accounts = Accounts::new(pool.clone(), Some(keyring), marketplace);
        let settings = SyncSettings {
            chunk_size: 1_000,
            chunks_in_flight: 2,
            statement_timeout: Duration::from_secs(30),
            sweep_batch: 1_000,
            export_budget: Duration::from_secs(60),
        };
        let handler = SyncHandler {
            kind: KindName::SyncFull,
            accounts,
            catalog,
            metrics,
            writers: Arc::new(tokio::sync::Semaphore::new(4)),
            settings,
        };
        Self {
            app,
            _catalog: catalog_db,
            pool,
            handler,
            catalog_metrics,
        }
    }

    /// Connects a new shop seller to the simulator account of `token`.
    pub(crate) async fn connect(&self, token: &str) -> UserId {
        let user = UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
        let request = ConnectAccountRequest {
            user_id: user.to_string(),
            cardtrader_token: token.into(),
        };
        self.app
            .accounts()
            .await
            .connect_account(authorized(request, &self.app.service_token()))
            .await
            .unwrap();
        user
    }

    /// Queues a full sync without waking anyone.
    pub(crate) async fn queue(&self, user: UserId) -> uuid::Uuid {
        let new = NewJob::new(user, JobKind::SyncFull).with_max_attempts(3);
        jobs::enqueue(&self.pool, &new, QueueLimit::Depth(1_000))
            .await
            .unwrap()
            .job()
            .id
    }

    /// A worker of the bulk lane running this rig's handler, owned by `owner`, with `lease`.
    pub(crate) fn worker(&self, owner: &str, lease: Duration) -> Worker {
        self.worker_with_slots(owner, lease, 2)
    }

    /// [`Self::worker`] with `slots` jobs at once.
    pub(crate) fn worker_with_slots(&self, owner: &str, lease: Duration, slots: usize) -> Worker {
        let settings = WorkerSettings {
            owner: owner.into(),
            lane: Lane::Bulk,
            concurrency: slots,
            lease,
            call_budget: lease / 3,
            poll_interval: Duration::from_millis(50),
            ranking: brx_sync::jobs::Ranking {
                aging: Duration::from_secs(60),
                turn: Duration::from_secs(1),
            },
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
        };
        Worker::new(
            self.pool.clone(),
            vec![Arc::new(self.handler.clone())],
            settings,
            self.handler.metrics.clone(),
        )
    }

    /// Polls the job until it is terminal (at most a minute).
    pub(crate) async fn until_terminal(&self, id: uuid::Uuid) -> Job {
        for _ in 0..600 {
            let job = jobs::get(&self.pool, id).await.unwrap();
            if job.state.is_terminal() {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {id} did not finish within a minute");
    }

    /// Queues a full sync and runs a worker until it ends.
    pub(crate) async fn sync(&self, user: UserId) -> Job {
        let id = self.queue(user).await;
        let stop = CancellationToken::new();
        let worker = tokio::spawn(
            self.worker("test", Duration::from_secs(30))
                .run(stop.clone()),
        );
        let job = self.until_terminal(id).await;
        stop.cancel();
        worker.await.unwrap().unwrap();
        job
    }

    /// Waits until this rig's CardTrader client lets `user`'s calls through again: a breaker that an
    /// outage opened fails calls fast for its pause, then closes on the first one that succeeds.
    pub(crate) async fn until_cardtrader_admits(&self, user: UserId) {
        let credentials = self.handler.accounts.credentials(user).await.unwrap();
        let marketplace = self.handler.accounts.marketplace();
        wait_for(
            "the CardTrader client to let calls through again",
            Duration::from_secs(10),
            || async {
                let options = CallOptions::interactive(Duration::from_secs(5));
                marketplace
                    .info(credentials.seller(), options)
                    .await
                    .map(drop)
            },
        )
        .await;
    }

    /// Blueprint lookups the handler's catalogue answered so far, from any level: they rise when a
    /// sync maps a chunk, that is once it has read the export up to the chunk's end.
    pub(crate) fn blueprint_lookups(&self) -> u64 {
        ["l1", "redis", "negative", "mysql", "unknown"]
            .into_iter()
            .map(|level| {
                self.catalog_metrics
                    .blueprint_lookups
                    .with_label_values(&[level])
                    .get()
            })
            .sum()
    }

    pub(crate) async fn local_rows(&self, user: UserId) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM inventory_items WHERE user_id = $1")
            .bind(user.as_uuid())
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Whether every local row of `user` has the simulator's quantity, and the row counts match.
    pub(crate) async fn matches_upstream(&self, user: UserId, token: &str) -> bool {
        let local: Vec<(i64, i32)> = sqlx::query_as(
            "SELECT product_id, quantity FROM inventory_items WHERE user_id = $1 ORDER BY product_id",
        )
        .bind(user.as_uuid())
        .fetch_all(&self.pool)
        .await
        .unwrap();
        local.len() as u64 == self.app.simulator.inventory_len(token)
            && local.iter().all(|(product_id, quantity)| {
                self.app
                    .simulator
                    .product(token, *product_id)
                    .and_then(|product| product["quantity"].as_i64())
                    == Some(i64::from(*quantity))
            })
    }
}

pub(crate) fn progress(job: &Job) -> SyncProgress {
    SyncProgress::from_json(&job.progress)
}
