//! Connects every pool with backoff at start-up and keeps checking it, so a database that is down when
//! the service starts (or goes down later) is retried instead of crash-looping the pod. It also applies
//! migrations once PostgreSQL answers and decides database readiness.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use secrecy::SecretString;

use super::{PoolKind, Storage, ensure_database, migrations_applied};
use crate::{
    metrics::Metrics,
    readiness::Readiness,
    retry::{FullJitter, full_jitter},
};

/// The worker behind pool state, migrations on start and database readiness.
#[derive(Debug)]
pub struct StorageSupervisor {
    storage: Storage,
    readiness: Readiness,
    metrics: Metrics,
    check_interval: Duration,
    reconnect_max_delay: Duration,
    migrate_on_start: bool,
    direct_url: SecretString,
}

impl StorageSupervisor {
    /// A supervisor over `storage`, checking every `check_interval` while healthy.
    pub fn new(
        storage: Storage,
        readiness: Readiness,
        metrics: Metrics,
        check_interval: Duration,
        reconnect_max_delay: Duration,
        migrate_on_start: bool,
        direct_url: SecretString,
    ) -> Self {
        Self {
            storage,
            readiness,
            metrics,
            check_interval,
            reconnect_max_delay,
            migrate_on_start,
            direct_url,
        }
    }

    /// Watches every pool until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let watchers = PoolKind::ALL.map(|kind| self.watch(kind, &shutdown));
        futures::future::join_all(watchers).await;
        Ok(())
    }

    async fn watch(&self, kind: PoolKind, shutdown: &CancellationToken) {
        let mut backoff = self.backoff();
        loop {
            let delay = match self.check_once(kind).await {
                Ok(()) => {
                    backoff = self.backoff();
                    self.check_interval
                }
                Err(()) => backoff.next().unwrap_or(self.reconnect_max_delay),
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Full-jitter exponential backoff from 200 ms up to the configured ceiling, never giving up.
    fn backoff(&self) -> FullJitter {
        full_jitter(Duration::from_millis(200), self.reconnect_max_delay, None)
    }

    async fn check_once(&self, kind: PoolKind) -> Result<(), ()> {
        let result = match kind {
            PoolKind::Postgres => self.check_database().await,
            PoolKind::Mysql | PoolKind::Redis => self.storage.check(kind).await,
        };
        let health = self.storage.health(kind);
        let up = self.metrics.pool_up.with_label_values(&[kind.name()]);
        match result {
            Ok(()) => {
                up.set(1);
                if health.record_success() {
                    tracing::info!(pool = kind.name(), "storage pool is up");
                }
                Ok(())
            }
            Err(error) => {
                up.set(0);
                let (went_down, failures) = health.record_failure(error.clone());
                if went_down {
                    tracing::error!(pool = kind.name(), %error, "storage pool went down");
                } else if failures == 3 || failures % 10 == 0 {
                    // A first failure or two is normal at start-up (the supervisor may be creating the
                    // database); after that one line per ten retries keeps the log readable.
                    tracing::warn!(pool = kind.name(), %error, failures, "storage pool unreachable, retrying");
                }
                Err(())
            }
        }
    }

    /// PostgreSQL is the source of truth: reachable *and* migrated, or not ready.
    async fn check_database(&self) -> Result<(), String> {
        if let Err(error) = self.storage.check(PoolKind::Postgres).await {
            self.readiness.set_database_ready(false);
            if self.migrate_on_start {
                // A fresh machine has no database yet; if that is why, the next check will pass.
                if let Err(err) = ensure_database(&self.direct_url).await {
                    tracing::debug!(error = %err, "could not create the database");
                }
            }
            return Err(error);
        }
        // Plain reads (no parameters), fine through a transaction pooler: the direct connection
        // is opened only to migrate.
        let pool = &self.storage.pg_probe;
        let mut applied = migrations_applied(pool)
            .await
            .map_err(|err| err.to_string())?;
        if !applied && self.migrate_on_start {
            // sqlx takes an advisory lock, so replicas starting together migrate once.
            self.storage
                .run_migrations()
                .await
                .map_err(|err| format!("migrations failed: {err}"))?;
            tracing::info!("database migrations applied");
            applied = true;
        }
        if !applied && self.readiness.current().database_ready {
            tracing::warn!("database migrations are pending: run `brx-sync migrate`");
        }
        self.readiness.set_database_ready(applied);
        Ok(())
    }
}
