//! The application: `App::build` binds the listeners and wires the parts without touching a database;
//! `run_until_stopped` serves until the shutdown future resolves, then drains in the order STYLE.md
//! describes.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use secrecy::ExposeSecret;

use crate::{
    accounts::{Accounts, Keyring},
    api::{self, GrpcParts, auth::Authenticator},
    blueprints::BlueprintCatalog,
    config::{Config, ConfigError, StorageConfig},
    http::{self, HttpState},
    inventory::Inventory,
    jobs::{
        Jobs, KindName, Lane,
        wake::{Changes, JobWakeups},
        worker::{JobHandler, Worker, WorkerSettings},
    },
    marketplace::MarketplaceClient,
    metrics::Metrics,
    purchase::{
        driver::{PurchaseEvents, PurchaseHandler},
        service::{PurchasePolicy, Purchases},
    },
    rate_limit::{Limits, RateLimiter},
    readiness::Readiness,
    storage::{Storage, StorageSupervisor},
    sync::{
        handler::{SyncHandler, SyncSettings},
        remap::RemapHandler,
        scheduler::{SchedulerSettings, SyncScheduler},
        service::Syncs,
        unknown_prints::UnknownPrintWatch,
    },
};

/// A built, not yet running, brx-sync replica.
#[derive(Debug)]
pub struct App {
    config: Config,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    storage: Storage,
    readiness: Readiness,
    metrics: Metrics,
    authenticator: Authenticator,
    accounts: Accounts,
    catalog: BlueprintCatalog,
}

impl App {
    /// Binds both ports and builds the pools lazily: a database that is down does not stop start-up.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let metrics = Metrics::new()?;
        let storage = Storage::connect_lazy(&config.storage)?;
        let authenticator = Authenticator::from_config(&config.auth)?;
        let limiter = RateLimiter::new(
            storage.redis.clone(),
            &config.storage.redis_key_prefix,
            Limits::from_config(&config.cardtrader),
            metrics.clone(),
        );
        let marketplace = MarketplaceClient::new(&config.cardtrader, limiter, metrics.clone())?;
        let keyring = match &config.auth.encryption_keys {
            Some(keys) => {
                Some(
                    Keyring::parse(keys.expose_secret()).map_err(|reason| ConfigError {
                        setting: "BRX_ENCRYPTION_KEYS",
                        reason,
                    })?,
                )
            }
            None => {
                tracing::warn!("BRX_ENCRYPTION_KEYS is not set: accounts cannot be connected");
                None
            }
        };
        let accounts = Accounts::new(storage.pg.clone(), keyring, marketplace);
        let catalog = BlueprintCatalog::new(
            &config.catalog,
            storage.mysql.clone(),
            storage.redis.clone(),
            &config.storage.redis_key_prefix,
            metrics.clone(),
        );
        let grpc_listener = TcpListener::bind(config.server.grpc_addr)
            .await
            .with_context(|| format!("binding gRPC on {}", config.server.grpc_addr))?;
        let http_listener = TcpListener::bind(config.server.http_addr)
            .await
            .with_context(|| format!("binding HTTP on {}", config.server.http_addr))?;
        Ok(Self {
            config,
            grpc_listener,
            http_listener,
            storage,
            readiness: Readiness::new(),
            metrics,
            authenticator,
            accounts,
            catalog,
        })
    }

    /// The address gRPC is served on (the real port when configured with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .unwrap_or(self.config.server.grpc_addr)
    }

    /// The address of the HTTP side port.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .unwrap_or(self.config.server.http_addr)
    }

    /// Serves until `shutdown` resolves, then: health NOT_SERVING, drain delay, stop claiming work,
    /// drain RPCs within the grace period, close the pools. Returns an error if a part stopped on its own.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (grpc_addr, http_addr) = (self.grpc_addr(), self.http_addr());
        let Self {
            config,
            grpc_listener,
            http_listener,
            storage,
            readiness,
            metrics,
            authenticator,
            accounts,
            catalog,
        } = self;
        let workers = CancellationToken::new();
        let stop_grpc = CancellationToken::new();
        let stop_http = CancellationToken::new();

        let supervisor = StorageSupervisor::new(
            storage.clone(),
            readiness.clone(),
            metrics.clone(),
            config.storage.health_check_interval,
            config.storage.reconnect_max_delay,
            config.storage.migrate_on_start,
            config.storage.database_url.clone(),
        );
        let mut supervisor_task = tokio::spawn(supervisor.run(workers.clone()));
        // Watchers on any replica hear of every job and purchase that moves.
        let (changes, change_relay) = Changes::relayed(&config.storage.redis_key_prefix);
        let purchase_events = PurchaseEvents::announcing(changes.clone());
        let job_workers = job_workers(
            &config,
            &storage,
            &accounts,
            &catalog,
            &metrics,
            &purchase_events,
        )
        .into_iter()
        .map(|worker| worker.announcing(changes.clone()))
        .collect::<Vec<_>>();
        let interactive_start = job_workers
            .iter()
            .find(|worker| worker.lane() == Lane::Interactive)
            .map(Worker::local_start);
        let wakeups = JobWakeups::new(
            storage.redis.clone(),
            &config.storage.redis_key_prefix,
            job_workers
                .iter()
                .map(|worker| (worker.lane(), worker.waker()))
                .collect(),
        )
        .with_changes(changes);
        let scheduler = SyncScheduler::new(
            storage.pg.clone(),
            wakeups.clone(),
            metrics.clone(),
            SchedulerSettings {
                stale_after: config.sync.stale_after,
                interval: config.sync.scheduler_interval,
                max_queue_depth: config.jobs.max_queue_depth,
            },
        );
        let unknown_prints = UnknownPrintWatch::new(
            storage.pg.clone(),
            storage.clone(),
            wakeups.clone(),
            config.sync.remap_unknown_interval,
            config.jobs.max_queue_depth,
        );
        let push_requeue = crate::inventory::requeue::PushRequeue::new(
            storage.pg.clone(),
            wakeups.clone(),
            config.jobs.push_requeue_interval,
        );
        let mut worker_tasks = tokio::task::JoinSet::new();
        // Claiming and scheduling need the jobs table: wait until the database is reachable and
        // migrated. The wake-up listener needs only Redis.
        let after_migrations = |stop: CancellationToken| {
            let mut ready = readiness.subscribe();
            async move {
                tokio::select! {
                    () = stop.cancelled() => false,
                    _ = ready.wait_for(|state| state.database_ready) => true,
                }
            }
        };
        for worker in job_workers {
            let (stop, ready) = (workers.clone(), after_migrations(workers.clone()));
            worker_tasks.spawn(async move {
                if ready.await {
                    worker.run(stop).await?;
                }
                Ok(())
            });
        }
        let (stop, ready) = (workers.clone(), after_migrations(workers.clone()));
        worker_tasks.spawn(async move {
            if ready.await {
                scheduler.run(stop).await?;
            }
            Ok(())
        });
        let retention = crate::retention::Retention::new(
            storage.pg.clone(),
            metrics.clone(),
            crate::retention::RetentionSettings::from_config(&config.retention),
        );
        let (stop, ready) = (workers.clone(), after_migrations(workers.clone()));
        worker_tasks.spawn(async move {
            if ready.await {
                retention.run(stop).await?;
            }
            Ok(())
        });
        let (stop, ready) = (workers.clone(), after_migrations(workers.clone()));
        worker_tasks.spawn(async move {
            if ready.await {
                unknown_prints.run(stop).await?;
            }
            Ok(())
        });
        let (stop, ready) = (workers.clone(), after_migrations(workers.clone()));
        worker_tasks.spawn(async move {
            if ready.await {
                push_requeue.run(stop).await?;
            }
            Ok(())
        });
        worker_tasks.spawn(
            wakeups
                .clone()
                .listen(config.storage.redis_url.clone(), workers.clone()),
        );
        worker_tasks.spawn(change_relay.run(storage.redis.clone(), workers.clone()));

        let webhook_intake = crate::webhooks::WebhookIntake::new(
            storage.pg.clone(),
            accounts.clone(),
            wakeups.clone(),
        );
        let parts = GrpcParts {
            storage: storage.clone(),
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            authenticator,
            syncs: Syncs::new(
                storage.pg.clone(),
                accounts.clone(),
                wakeups.clone(),
                config.jobs.max_queue_depth,
            ),
            changes: wakeups.changes().clone(),
            inventory: Inventory::new(storage.pg.clone(), accounts.clone(), wakeups.clone()),
            jobs: Jobs::new(storage.pg.clone(), wakeups.clone()),
            purchases: Purchases::new(
                storage.pg.clone(),
                accounts.clone(),
                wakeups,
                purchase_events,
                metrics.clone(),
                PurchasePolicy::from_config(&config.jobs),
                interactive_start,
            ),
            accounts,
            catalog,
        };
        let (health, grpc) =
            api::grpc_server(grpc_listener, &config.server, parts, stop_grpc.clone())?;
        let health_task = tokio::spawn(health.clone().run());
        let mut grpc_task = tokio::spawn(async move { grpc.await.map_err(anyhow::Error::from) });

        let router = http::router(HttpState {
            metrics,
            readiness: readiness.clone(),
            storage: storage.clone(),
        })
        .merge(crate::webhooks::routes(webhook_intake));
        let http = axum::serve(http_listener, router)
            .with_graceful_shutdown(stop_http.clone().cancelled_owned());
        let mut http_task = tokio::spawn(async move { http.await.map_err(anyhow::Error::from) });

        tracing::info!(grpc = %grpc_addr, http = %http_addr, version = crate::VERSION, "brx-sync serving");
        let early_exit = tokio::select! {
            () = shutdown => None,
            result = &mut grpc_task => Some(report_exit("gRPC server", result)),
            result = &mut http_task => Some(report_exit("HTTP server", result)),
            result = &mut supervisor_task => Some(report_exit("storage supervisor", result)),
            // Workers, the scheduler, the remap watch, the wake-up listener and the change relay
            // only return at shutdown.
            Some(result) = worker_tasks.join_next() => Some(report_exit("background work", result)),
        };

        readiness.start_draining();
        health.sync().await;
        if early_exit.is_none() && !config.server.shutdown_drain_delay.is_zero() {
            tracing::info!(delay = ?config.server.shutdown_drain_delay, "NOT_SERVING; waiting for load balancers to notice");
            tokio::time::sleep(config.server.shutdown_drain_delay).await;
        }
        workers.cancel();
        stop_grpc.cancel();
        let drained = tokio::time::timeout(config.server.shutdown_grace_period, async {
            let _ = (&mut grpc_task).await;
            let _ = (&mut supervisor_task).await;
            // Workers hand their running jobs back to the queue as they stop.
            while worker_tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = ?config.server.shutdown_grace_period, "grace period over: cutting in-flight RPCs");
            grpc_task.abort();
            supervisor_task.abort();
            worker_tasks.abort_all();
        }
        stop_http.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), &mut http_task).await;
        health_task.abort();
        storage.close().await;
        tracing::info!("brx-sync stopped");
        early_exit.map_or(Ok(()), Err)
    }
}

/// One worker per lane with slots: full syncs and remaps on the bulk lane, targeted syncs and
/// purchases on the interactive lane.
fn job_workers(
    config: &Config,
    storage: &Storage,
    accounts: &Accounts,
    catalog: &BlueprintCatalog,
    metrics: &Metrics,
    purchase_events: &PurchaseEvents,
) -> Vec<Worker> {
    let owner = format!("brx-sync-{}", uuid::Uuid::new_v4().simple());
    // One cap for every sync of this replica, below the pool size (config validation), so chunk
    // writers can never take the connections RPCs and job bookkeeping need.
    let writers = Arc::new(tokio::sync::Semaphore::new(config.sync.db_writers as usize));
    let sync = |kind| SyncHandler {
        kind,
        accounts: accounts.clone(),
        catalog: catalog.clone(),
        metrics: metrics.clone(),
        writers: writers.clone(),
        settings: SyncSettings::from_config(&config.sync, &config.cardtrader),
    };
    let settings = |lane, concurrency: u32| WorkerSettings {
        owner: owner.clone(),
        lane,
        concurrency: concurrency as usize,
        lease: config.jobs.lease,
        call_budget: config.cardtrader.call_budget,
        poll_interval: config.jobs.poll_interval,
        ranking: crate::jobs::Ranking {
            aging: config.jobs.aging,
            turn: config.jobs.turn_cost,
        },
        retry_min: std::time::Duration::from_secs(1),
        retry_max: std::time::Duration::from_secs(60),
    };
    let remap = RemapHandler {
        catalog: catalog.clone(),
    };
    let bulk: Vec<Arc<dyn JobHandler>> = vec![Arc::new(sync(KindName::SyncFull)), Arc::new(remap)];
    let purchases = PurchaseHandler {
        accounts: accounts.clone(),
        metrics: metrics.clone(),
        events: purchase_events.clone(),
        call_budget: config.cardtrader.call_budget,
        write_grace: config.cardtrader.request_timeout,
    };
    let pushes = crate::inventory::push::PushHandler {
        accounts: accounts.clone(),
        call_budget: config.cardtrader.call_budget,
        write_grace: config.cardtrader.request_timeout,
        metrics: metrics.clone(),
    };
    let webhooks = crate::webhooks::ApplyHandler;
    let interactive: Vec<Arc<dyn JobHandler>> = vec![
        Arc::new(sync(KindName::SyncTargeted)),
        Arc::new(purchases),
        Arc::new(pushes),
        Arc::new(webhooks),
    ];
    [
        (Lane::Bulk, bulk, config.jobs.bulk_concurrency),
        (
            Lane::Interactive,
            interactive,
            config.jobs.interactive_concurrency,
        ),
    ]
    .into_iter()
    // A lane with no slots on this replica (an API-only replica) gets no worker at all.
    .filter(|(_, _, concurrency)| *concurrency > 0)
    .map(|(lane, handlers, concurrency)| {
        Worker::new(
            storage.pg.clone(),
            handlers,
            settings(lane, concurrency),
            metrics.clone(),
        )
    })
    .collect()
}

/// Logs which part stopped and why; a part stopping before shutdown is always an error.
fn report_exit(
    part: &str,
    result: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Error {
    let error = match result {
        Ok(Ok(())) => anyhow::anyhow!("{part} stopped unexpectedly"),
        Ok(Err(err)) => err.context(format!("{part} failed")),
        Err(join) => anyhow::anyhow!("{part} panicked or was cancelled: {join}"),
    };
    tracing::error!(
        error = format!("{error:#}"),
        "{part} stopped; shutting down"
    );
    error
}

/// Applies pending migrations (creating the database if needed), retrying while PostgreSQL is not up.
pub async fn migrate(config: &StorageConfig) -> anyhow::Result<()> {
    use backon::Retryable;
    let storage = Storage::connect_lazy(config)?;
    let attempt = || async {
        crate::storage::ensure_database(&config.database_url).await?;
        crate::storage::MIGRATOR.run(&storage.pg).await?;
        anyhow::Ok(())
    };
    attempt
        .retry(crate::retry::full_jitter(
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(10),
            Some(8),
        ))
        .notify(
            |err, wait| tracing::warn!(error = %err, ?wait, "migration attempt failed, retrying"),
        )
        .await?;
    storage.pg.close().await;
    Ok(())
}
