//! Everything a scenario runs against: the simulator child, a fresh PostgreSQL database, its own Redis
//! key prefix, the seeded MySQL catalogue and the real replica in-process; and the teardown that
//! removes all of it again.

use std::{str::FromStr, time::Duration, time::Instant};

use anyhow::Context;
use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    PgPool,
    migrate::MigrateDatabase,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use super::{measure::APPLICATION_NAME, simulator::SimulatorProcess};
use crate::demo::{channel_for, wait_until_serving, with_bearer};
use brx_sync::App;
use brx_sync::api::auth::mint_token;
use brx_sync::config::Config;
use brx_sync::domain::UserId;
use brx_sync::pb::v1::{ConnectAccountRequest, account_service_client::AccountServiceClient};

/// HTTP/2 connections the load is spread over.
const CHANNELS: usize = 8;

/// A running replica with its simulator and databases.
#[derive(Debug)]
pub(super) struct Rig {
    /// The replica's settings, as changed for the load test.
    pub(super) config: Config,
    /// Name of the load test's PostgreSQL database.
    pub(super) database: String,
    /// How the load test itself reaches that database.
    pub(super) database_options: PgConnectOptions,
    /// One connection of the load test's own, for reading the jobs table.
    pub(super) monitor: PgPool,
    /// The CardTrader simulator.
    pub(super) simulator: SimulatorProcess,
    /// gRPC connections to the replica.
    pub(super) channels: Vec<Channel>,
    /// Service-role bearer token.
    pub(super) token: String,
    /// The replica's public listener, where webhooks are posted.
    pub(super) http_addr: std::net::SocketAddr,
    /// The admin listener: metrics and probes.
    pub(super) admin_addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<anyhow::Result<()>>,
}

impl Rig {
    /// Gives every product of sellers 1..=`sellers` `stock` units on CardTrader, before the shop
    /// first syncs, `concurrency` sellers at a time.
    pub(crate) async fn stock_up(
        &self,
        sellers: u32,
        stock: i64,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let api = self.simulator.api();
        let counts: Vec<usize> = futures::stream::iter(1..=sellers)
            .map(|seller| {
                let api = api.clone();
                async move {
                    let products = api.export(seller, None).await?;
                    for product in &products {
                        api.set_quantity(seller, product.id, stock).await?;
                    }
                    anyhow::Ok(products.len())
                }
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        println!(
            "  setup: {} products given {} units each on CardTrader in {:.1} s",
            super::measure::thousands(counts.iter().sum::<usize>() as u64),
            super::measure::thousands(stock.unsigned_abs()),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Starts the simulator and the replica and waits until the replica is SERVING.
    pub(super) async fn start(config: Config, sellers: u32, products: u64) -> anyhow::Result<Self> {
        let simulator = start_simulator(sellers, products).await?;
        let (config, database, secret) = prepare(config, simulator.base_url())?;
        let database_options =
            PgConnectOptions::from_str(config.storage.database_url.expose_secret())?;
        brx_sync::storage::ensure_database(&config.storage.database_url).await?;
        println!(
            "  setup: PostgreSQL database {database}, Redis prefix {}",
            config.storage.redis_key_prefix
        );
        let (stop, server, grpc_addr, http_addr, admin_addr) = match start_replica(&config).await {
            Ok(replica) => replica,
            Err(err) => {
                drop_database(&config.storage.database_url).await;
                return Err(err);
            }
        };
        let monitor = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(database_options.clone().application_name(APPLICATION_NAME));
        let mut rig = Self {
            token: mint_token(
                &secret,
                None,
                &config.auth.jwt_service_role,
                Duration::from_secs(4 * 3600),
            )?,
            config,
            database,
            database_options,
            monitor,
            simulator,
            channels: Vec::new(),
            http_addr,
            admin_addr,
            stop,
            server,
        };
        if let Err(err) = rig.connect(grpc_addr).await {
            if let Err(stop_err) = rig.stop().await {
                tracing::warn!(
                    error = format!("{stop_err:#}"),
                    "teardown after a failed start"
                );
            }
            return Err(err);
        }
        Ok(rig)
    }

    /// Connects sellers 1..=n (`sim-token-N`) through AccountService.ConnectAccount, `concurrency` at
    /// once; returns their shop user ids in seller order.
    pub(super) async fn connect_sellers(
        &self,
        n: u32,
        concurrency: u32,
    ) -> anyhow::Result<Vec<UserId>> {
        let started = Instant::now();
        let users: Vec<UserId> = futures::stream::iter(1..=n)
            .map(|seller| self.connect_seller(seller))
            .buffered(concurrency as usize)
            .try_collect()
            .await?;
        println!(
            "  setup: {n} sellers connected through ConnectAccount ({concurrency} at once) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(users)
    }

    /// The replica's Prometheus exposition, as `GET /metrics` serves it.
    pub(super) async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("http://{}/metrics", self.admin_addr);
        Ok(reqwest::get(url).await?.error_for_status()?.text().await?)
    }

    /// The gRPC connection for the `i`-th caller.
    pub(super) fn channel(&self, i: usize) -> Channel {
        self.channels[i % self.channels.len()].clone()
    }

    /// Shuts the replica down gracefully, kills the simulator, drops the database and the Redis keys.
    pub(super) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let stopped = self.server.await.context("replica task");
        self.monitor.close().await;
        self.simulator.stop().await;
        drop_database(&self.config.storage.database_url).await;
        if let Err(err) = forget_redis_keys(&self.config).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "could not remove the load test's Redis keys"
            );
        }
        println!(
            "\n  teardown: replica stopped gracefully, simulator killed, database {} dropped",
            self.database
        );
        stopped?
    }

    async fn connect(&mut self, grpc_addr: std::net::SocketAddr) -> anyhow::Result<()> {
        for _ in 0..CHANNELS {
            self.channels.push(channel_for(grpc_addr).await?);
        }
        let started = Instant::now();
        wait_until_serving(HealthClient::new(self.channel(0))).await?;
        println!(
            "  setup: replica SERVING on {grpc_addr} after {:.1} s (migrations applied)",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    async fn connect_seller(&self, seller: u32) -> anyhow::Result<UserId> {
        let user = UserId::from_uuid(uuid::Uuid::new_v4())?;
        let request = ConnectAccountRequest {
            user_id: user.to_string(),
            cardtrader_token: format!("sim-token-{seller}"),
        };
        AccountServiceClient::new(self.channel(seller as usize))
            .connect_account(with_bearer(request, &self.token)?)
            .await
            .with_context(|| format!("ConnectAccount of sim-token-{seller}"))?;
        Ok(user)
    }
}

/// The configuration from the command line, pointed at fresh stores, the simulator and free ports,
/// with throwaway secrets; returns it with the database name and the JWT secret.
fn prepare(mut config: Config, simulator: String) -> anyhow::Result<(Config, String, String)> {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let database = format!("brx_loadtest_{suffix}");
    let mut url = reqwest::Url::parse(config.storage.database_url.expose_secret())
        .context("BRX_DATABASE_URL is not a URL")?;
    url.set_path(&format!("/{database}"));
    config.storage.database_url = SecretString::from(url.to_string());
    config.storage.redis_key_prefix = format!("brx-loadtest-{suffix}:");
    config.server.grpc_addr = "127.0.0.1:0".parse()?;
    config.server.http_addr = "127.0.0.1:0".parse()?;
    config.server.admin_addr = "127.0.0.1:0".parse()?;
    config.cardtrader.base_url = simulator;
    config.storage.migrate_on_start = true;
    // Every simulated seller's products span all 3,100 simulated expansions: learning them into a
    // fresh prefix's index would be measured as sync time (learning is covered by tests).
    config.catalog.expansion_learn = false;
    config.auth.auth_disabled = false;
    let secret = uuid::Uuid::new_v4().to_string();
    config.auth.jwt_hs256_secret = Some(SecretString::from(secret.clone()));
    config.auth.jwt_rs256_public_key_path = None;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    config.auth.encryption_keys = Some(SecretString::from(format!("k1:{key}")));
    Ok((config, database, secret))
}

async fn start_simulator(sellers: u32, products: u64) -> anyhow::Result<SimulatorProcess> {
    let started = Instant::now();
    let simulator = SimulatorProcess::start(sellers, products).await?;
    println!(
        "  setup: simulator child at {} ready in {:.1} s",
        simulator.base_url(),
        started.elapsed().as_secs_f64()
    );
    Ok(simulator)
}

/// The stop signal, the serving task, and the gRPC, public and admin addresses of a started replica.
type Replica = (
    oneshot::Sender<()>,
    JoinHandle<anyhow::Result<()>>,
    std::net::SocketAddr,
    std::net::SocketAddr,
    std::net::SocketAddr,
);

/// Seeds the catalogue, then builds the replica and serves it in a task until told to stop.
async fn start_replica(config: &Config) -> anyhow::Result<Replica> {
    let started = Instant::now();
    let prints = cardtrader_sim::CATALOGUE_BLUEPRINTS;
    brx_sync::blueprints::fixture::seed(&config.storage.mysql_url, &config.catalog, prints)
        .await
        .context("seeding the MySQL catalogue (is MariaDB running at BRX_MYSQL_URL?)")?;
    println!(
        "  setup: MySQL catalogue seeded with {} prints in {:.1} s",
        super::measure::thousands(prints.unsigned_abs()),
        started.elapsed().as_secs_f64()
    );
    let app = App::build(config.clone()).await?;
    let addrs = (app.grpc_addr(), app.http_addr(), app.admin_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    Ok((stop, server, addrs.0, addrs.1, addrs.2))
}

/// Drops the load test database, ending any connection still open to it; failures are only logged.
async fn drop_database(url: &SecretString) {
    if let Err(err) = sqlx::Postgres::force_drop_database(url.expose_secret()).await {
        tracing::warn!(error = %err, "could not drop the load test database");
    }
}

/// Deletes the run's Redis keys (about 300,000 cache entries otherwise outlive it by a day).
async fn forget_redis_keys(config: &Config) -> anyhow::Result<()> {
    let pool = deadpool_redis::Config::from_url(config.storage.redis_url.expose_secret())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    brx_sync::storage::delete_keys_with_prefix(&pool, &config.storage.redis_key_prefix).await?;
    Ok(())
}
