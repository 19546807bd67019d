//! The application: `App::build` binds the listeners and wires the parts without touching a database;
//! `run_until_stopped` serves until the shutdown future resolves, then drains in the order STYLE.md
//! describes.

use std::{collections::HashMap, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use futures::future::BoxFuture;
use tokio::{
    net::TcpListener,
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;

use secrecy::{ExposeSecret, SecretString};

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
        worker::{JobHandler, LocalStart, Worker, WorkerSettings},
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
    admin_listener: TcpListener,
    storage: Storage,
    readiness: Readiness,
    metrics: Metrics,
    authenticator: Authenticator,
    accounts: Accounts,
    catalog: BlueprintCatalog,
}

/// `BRX_ENCRYPTION_KEYS` read as a keyring, or the setting named with what is wrong with it.
pub(crate) fn parse_keyring(keys: &SecretString) -> Result<Keyring, ConfigError> {
    Keyring::parse(keys.expose_secret()).map_err(|reason| ConfigError {
        setting: "BRX_ENCRYPTION_KEYS",
        reason,
    })
}

/// The accounts (sealing tokens with `keyring`, asking CardTrader through a client behind the
/// rate limiter every replica shares) and the blueprint catalogue over `storage`: what a replica
/// and the legacy importer both build, so both call CardTrader within the same limits.
pub(crate) fn accounts_and_catalog(
    config: &Config,
    storage: &Storage,
    keyring: Option<Keyring>,
    metrics: &Metrics,
) -> anyhow::Result<(Accounts, BlueprintCatalog)> {
    let limiter = RateLimiter::new(
        storage.redis.clone(),
        &config.storage.redis_key_prefix,
        Limits::from_config(&config.cardtrader),
        metrics.clone(),
    );
    let marketplace = MarketplaceClient::new(&config.cardtrader, limiter, metrics.clone())?;
    let accounts = Accounts::new(storage.pg.clone(), keyring, marketplace);
    let catalog = BlueprintCatalog::new(
        &config.catalog,
        storage.mysql.clone(),
        storage.redis.clone(),
        &config.storage.redis_key_prefix,
        metrics.clone(),
    );
    Ok((accounts, catalog))
}

impl App {
    /// Binds both ports and builds the pools lazily: a database that is down does not stop start-up.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let metrics = Metrics::new()?;
        let storage = Storage::connect_lazy(&config.storage)?;
        let authenticator = Authenticator::from_config(&config.auth)?;
        let keyring = match &config.auth.encryption_keys {
            Some(keys) => Some(parse_keyring(keys)?),
            None => {
                tracing::warn!("BRX_ENCRYPTION_KEYS is not set: accounts cannot be connected");
                None
            }
        };
        let (accounts, catalog) = accounts_and_catalog(&config, &storage, keyring, &metrics)?;
        let grpc_listener = TcpListener::bind(config.server.grpc_addr)
            .await
            .with_context(|| format!("binding gRPC on {}", config.server.grpc_addr))?;
        let http_listener = TcpListener::bind(config.server.http_addr)
            .await
            .with_context(|| format!("binding HTTP on {}", config.server.http_addr))?;
        let admin_listener = TcpListener::bind(config.server.admin_addr)
            .await
            .with_context(|| format!("binding the admin HTTP on {}", config.server.admin_addr))?;
        Ok(Self {
            config,
            grpc_listener,
            http_listener,
            admin_listener,
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

    /// The address of the public HTTP listener (webhooks).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .unwrap_or(self.config.server.http_addr)
    }

    /// The address of the admin HTTP listener (metrics, probes).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.server.admin_addr)
    }

    /// Serves until `shutdown` resolves, then: health NOT_SERVING, drain delay, stop claiming work,
    /// drain RPCs within the grace period, close the pools. Returns an error if a part stopped on its own.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (grpc_addr, http_addr, admin_addr) =
            (self.grpc_addr(), self.http_addr(), self.admin_addr());
        let mut running = self.start()?;
        tracing::info!(grpc = %grpc_addr, webhooks = %http_addr, admin = %admin_addr, version = crate::VERSION, "brx-sync serving");
        let early_exit = running.until_stopped_or_failed(shutdown).await;
        running.drain(early_exit.is_none()).await;
        tracing::info!("brx-sync stopped");
        early_exit.map_or(Ok(()), Err)
    }

    /// Starts every part: the storage supervisor, the background work (job workers, scheduler,
    /// retention, the remap watch, the push requeue, wake-ups and changes), gRPC and HTTP.
    fn start(self) -> anyhow::Result<Running> {
        let Self {
            config,
            grpc_listener,
            http_listener,
            admin_listener,
            storage,
            readiness,
            metrics,
            authenticator,
            accounts,
            catalog,
        } = self;
        let stop_background = CancellationToken::new();
        let supervisor = StorageSupervisor::new(
            storage.clone(),
            readiness.clone(),
            metrics.clone(),
            config.storage.health_check_interval,
            config.storage.reconnect_max_delay,
            config.storage.migrate_on_start,
            // Validated in `App::build` when migrations run on start; otherwise only read.
            config
                .storage
                .migration_url()
                .unwrap_or(&config.storage.database_url)
                .clone(),
        );
        let supervisor = tokio::spawn(supervisor.run(stop_background.clone()));
        let background = Background::start(
            &config,
            &storage,
            &readiness,
            &accounts,
            &catalog,
            &metrics,
            &stop_background,
        );
        let wakeups = background.wakeups;
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
                wakeups.clone(),
                background.purchase_events,
                metrics.clone(),
                PurchasePolicy::from_config(&config.jobs),
                background.interactive_start,
            ),
            accounts: accounts.clone(),
            catalog,
        };
        let stop_grpc = CancellationToken::new();
        let (health, grpc) =
            api::grpc_server(grpc_listener, &config.server, parts, stop_grpc.clone())?;
        let health_task = tokio::spawn(health.clone().run());
        let grpc = tokio::spawn(async move { grpc.await.map_err(anyhow::Error::from) });

        let webhook_intake =
            crate::webhooks::WebhookIntake::new(storage.pg.clone(), accounts, wakeups);
        let stop_http = CancellationToken::new();
        let webhook_routes = crate::webhooks::routes(webhook_intake, metrics.clone());
        let webhooks = axum::serve(http_listener, webhook_routes)
            .with_graceful_shutdown(stop_http.clone().cancelled_owned());
        let admin = http::router(HttpState {
            metrics,
            readiness: readiness.clone(),
            storage: storage.clone(),
        });
        let admin = axum::serve(admin_listener, admin)
            .with_graceful_shutdown(stop_http.clone().cancelled_owned());
        // One task for both listeners: either one stopping on its own is the HTTP side failing.
        let http = tokio::spawn(async move {
            tokio::try_join!(
                async { webhooks.await.context("webhook listener") },
                async { admin.await.context("admin listener") },
            )
            .map(|_| ())
        });

        Ok(Running {
            supervisor,
            background: background.tasks,
            grpc,
            http,
            health,
            health_task,
            stop_background,
            stop_grpc,
            stop_http,
            readiness,
            storage,
            drain_delay: config.server.shutdown_drain_delay,
            grace_period: config.server.shutdown_grace_period,
        })
    }
}

/// A replica's running parts, and the tokens that stop them.
struct Running {
    supervisor: JoinHandle<anyhow::Result<()>>,
    background: NamedTasks,
    grpc: JoinHandle<anyhow::Result<()>>,
    http: JoinHandle<anyhow::Result<()>>,
    health: api::HealthBridge,
    health_task: JoinHandle<anyhow::Result<()>>,
    stop_background: CancellationToken,
    stop_grpc: CancellationToken,
    stop_http: CancellationToken,
    readiness: Readiness,
    storage: Storage,
    drain_delay: Duration,
    grace_period: Duration,
}

impl Running {
    /// Waits for `shutdown`, or for a part to stop on its own (always an error, returned).
    async fn until_stopped_or_failed(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Option<anyhow::Error> {
        tokio::select! {
            () = shutdown => None,
            result = &mut self.grpc => Some(report_exit("gRPC server", result)),
            result = &mut self.http => Some(report_exit("HTTP server", result)),
            result = &mut self.supervisor => Some(report_exit("storage supervisor", result)),
            // Workers, the scheduler, the remap watch, the wake-up listener and the change relay
            // only return at shutdown.
            Some((name, result)) = self.background.join_next() => Some(report_exit(name, result)),
        }
    }

    /// NOT_SERVING; after a clean shutdown, the drain delay for load balancers to notice; then stop
    /// claiming work and drain RPCs and running jobs within the grace period; close the pools.
    async fn drain(mut self, clean: bool) {
        self.readiness.start_draining();
        self.health.sync().await;
        if clean && !self.drain_delay.is_zero() {
            tracing::info!(delay = ?self.drain_delay, "NOT_SERVING; waiting for load balancers to notice");
            tokio::time::sleep(self.drain_delay).await;
        }
        self.stop_background.cancel();
        self.stop_grpc.cancel();
        let (mut grpc_drained, mut supervisor_stopped) = (false, false);
        let drained = tokio::time::timeout(self.grace_period, async {
            let _ = (&mut self.grpc).await;
            grpc_drained = true;
            let _ = (&mut self.supervisor).await;
            supervisor_stopped = true;
            // Workers hand their running jobs back to the queue as they stop.
            while self.background.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            // Named, so an operator whose drains run into the grace period knows what to look at.
            let still_running = [
                (!grpc_drained).then_some("in-flight RPCs"),
                (!supervisor_stopped).then_some("storage supervisor"),
            ]
            .into_iter()
            .flatten()
            .chain(self.background.running())
            .collect::<Vec<_>>()
            .join(", ");
            tracing::warn!(grace = ?self.grace_period, %still_running, "grace period over: cutting what is still running");
            self.grpc.abort();
            self.supervisor.abort();
            self.background.abort_all();
        }
        self.stop_http.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.http).await;
        self.health_task.abort();
        self.storage.close().await;
    }
}

/// Background tasks, each with the name a log line gives it when it stops or outlasts a drain.
#[derive(Default)]
struct NamedTasks {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl NamedTasks {
    fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let id = self.tasks.spawn(task).id();
        self.names.insert(id, name);
    }

    /// The next task to end, by name, and how it ended; `None` when none is left.
    async fn join_next(
        &mut self,
    ) -> Option<(
        &'static str,
        Result<anyhow::Result<()>, tokio::task::JoinError>,
    )> {
        let ended = self.tasks.join_next_with_id().await?;
        let id = match &ended {
            Ok((id, _)) => *id,
            Err(error) => error.id(),
        };
        let name = self.names.remove(&id).unwrap_or("background task");
        Some((name, ended.map(|(_, result)| result)))
    }

    /// The names of the tasks still running.
    fn running(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.names.values().copied()
    }

    fn abort_all(&mut self) {
        self.tasks.abort_all();
    }
}

/// Everything a replica runs besides serving: job workers per lane, the sync scheduler, retention,
/// the remap watch, the push requeue, the wake-up listener and the change relay.
struct Background {
    tasks: NamedTasks,
    wakeups: JobWakeups,
    purchase_events: PurchaseEvents,
    /// Starts a new purchase on this replica's interactive worker at once, when it has one.
    interactive_start: Option<LocalStart>,
}

impl Background {
    fn start(
        config: &Config,
        storage: &Storage,
        readiness: &Readiness,
        accounts: &Accounts,
        catalog: &BlueprintCatalog,
        metrics: &Metrics,
        stop: &CancellationToken,
    ) -> Self {
        // Watchers on any replica hear of every job and purchase that moves.
        let (changes, change_relay) = Changes::relayed(&config.storage.redis_key_prefix);
        let purchase_events = PurchaseEvents::announcing(changes.clone());
        let workers = job_workers(
            config,
            storage,
            accounts,
            catalog,
            metrics,
            &purchase_events,
        )
        .into_iter()
        .map(|worker| worker.announcing(changes.clone()))
        .collect::<Vec<_>>();
        let interactive_start = workers
            .iter()
            .find(|worker| worker.lane() == Lane::Interactive)
            .map(Worker::local_start);
        let wakeups = JobWakeups::new(
            storage.redis.clone(),
            &config.storage.redis_key_prefix,
            workers
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
        let retention = crate::retention::Retention::new(
            storage.pg.clone(),
            metrics.clone(),
            crate::retention::RetentionSettings::from_config(&config.retention),
        );

        let mut tasks = NamedTasks::default();
        // Claiming, scheduling and pruning need the jobs table: each waits until the database is
        // reachable and migrated. The wake-up listener and the change relay need only Redis.
        let mut once_migrated = |name, run: BoxFuture<'static, anyhow::Result<()>>| {
            let (stop, mut ready) = (stop.clone(), readiness.subscribe());
            tasks.spawn(name, async move {
                let migrated = tokio::select! {
                    () = stop.cancelled() => false,
                    _ = ready.wait_for(|state| state.database_ready) => true,
                };
                if migrated { run.await } else { Ok(()) }
            });
        };
        for worker in workers {
            let name = match worker.lane() {
                Lane::Interactive => "interactive job worker",
                Lane::Bulk => "bulk job worker",
            };
            once_migrated(name, Box::pin(worker.run(stop.clone())));
        }
        once_migrated("sync scheduler", Box::pin(scheduler.run(stop.clone())));
        once_migrated("retention", Box::pin(retention.run(stop.clone())));
        once_migrated("remap watch", Box::pin(unknown_prints.run(stop.clone())));
        once_migrated("push re-queuer", Box::pin(push_requeue.run(stop.clone())));
        tasks.spawn(
            "wake-up listener",
            wakeups
                .clone()
                .listen(config.storage.redis_url.clone(), stop.clone()),
        );
        tasks.spawn(
            "change relay",
            change_relay.run(storage.redis.clone(), stop.clone()),
        );
        Self {
            tasks,
            wakeups,
            purchase_events,
            interactive_start,
        }
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
    // `lease_owner` names the pod holding a job (Kubernetes sets HOSTNAME to the pod's name), so an
    // operator reading the jobs table sees which replica has it; the suffix tells restarts apart.
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "brx-sync".to_owned());
    let owner = format!("{host}-{}", uuid::Uuid::new_v4().simple());
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
    let migration_url = config.migration_url()?;
    let storage = Storage::connect_lazy(config)?;
    let attempt = || async {
        crate::storage::ensure_database(migration_url).await?;
        storage.run_migrations().await?;
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
