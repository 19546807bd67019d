//! `spawn_app()` and what tests need around it: a fresh database per test, typed clients, tokens.

mod catalog;
mod legacy;
mod pgbouncer;
mod process;
mod proxy;
mod purchase_rig;
mod stock;
mod sync_rig;

use std::{fmt::Debug, future::Future, net::SocketAddr, time::Duration};

use brx_sync::{
    App,
    api::auth::mint_token,
    config::Config,
    domain::UserId,
    pb::v1::{
        account_service_client::AccountServiceClient, admin_service_client::AdminServiceClient,
    },
};
use cardtrader_sim::{SimulatorConfig, SimulatorHandle};
use secrecy::{ExposeSecret, SecretString};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub(crate) use catalog::{CatalogDb, CatalogueLock};
pub(crate) use legacy::{LegacyDatabase, OldItem};
pub(crate) use pgbouncer::PgBouncer;
pub(crate) use process::{PROTECTED_ENV, ServeProcess};
pub(crate) use proxy::TcpProxy;
pub(crate) use purchase_rig::{PurchaseRig, Workers};
pub(crate) use stock::{seller_listing, sync_to_end};
pub(crate) use sync_rig::{SyncRig, progress};

pub(crate) const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// base64 of 32 bytes of 0x2a: the AES key tests encrypt tokens with.
pub(crate) const TEST_ENCRYPTION_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

pub(crate) const MYSQL_ADMIN_URL: &str = "mysql://root@127.0.0.1:3306/mysql";

/// When set (e.g. `127.0.0.1:6432`, as `.ci/run` does for its second pass), tests reach PostgreSQL
/// through this PgBouncer in transaction mode, with `BRX_PG_POOLER=transaction`; migrations and
/// the tests' own bookkeeping go straight to PostgreSQL.
pub(crate) const PGBOUNCER_ENV: &str = "BRX_TEST_PGBOUNCER";

/// A running server, its own databases, and a way to stop it.
pub(crate) struct TestApp {
    /// The CardTrader simulator this app talks to, on its own port.
    pub(crate) simulator: SimulatorHandle,
    pub(crate) grpc_addr: SocketAddr,
    pub(crate) http_addr: SocketAddr,
    pub(crate) admin_addr: SocketAddr,
    pub(crate) config: Config,
    pub(crate) database_name: String,
    jwt_secret: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Settings every test starts from: ports 0, a fresh database name, its own Redis prefix, fast checks.
pub(crate) fn test_config() -> (Config, String) {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let database_name = format!("brx_test_{suffix}");
    let mut config = Config::defaults();
    config.server.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.server.http_addr = "127.0.0.1:0".parse().unwrap();
    config.server.admin_addr = "127.0.0.1:0".parse().unwrap();
    config.storage.database_url = SecretString::from(format!(
        "postgres://postgres@127.0.0.1:5432/{database_name}"
    ));
    if let Ok(pgbouncer) = std::env::var(PGBOUNCER_ENV) {
        config.storage.database_direct_url = Some(config.storage.database_url.clone());
        config.storage.database_url =
            SecretString::from(format!("postgres://postgres@{pgbouncer}/{database_name}"));
        config.storage.pg_pooler = brx_sync::config::PgPooler::Transaction;
    }
    config.storage.mysql_url = SecretString::from(MYSQL_ADMIN_URL.to_owned());
    config.storage.redis_key_prefix = format!("brx-test-{suffix}:");
    config.auth.jwt_hs256_secret = Some(SecretString::from(format!("test-secret-{suffix}")));
    config.storage.health_check_interval = Duration::from_millis(200);
    config.storage.reconnect_max_delay = Duration::from_millis(500);
    config.server.shutdown_grace_period = Duration::from_secs(10);
    config.telemetry.log_filter = "warn".into();
    config.auth.encryption_keys = Some(SecretString::from(format!(
        "test-key:{TEST_ENCRYPTION_KEY}"
    )));
    // Tests must not wait out 10 s breaker pauses or minutes-long exports.
    config.cardtrader.breaker_open_for = Duration::from_millis(500);
    config.cardtrader.request_timeout = Duration::from_secs(5);
    // A write whose answer was lost is judged only after it can no longer land: keep that short.
    config.cardtrader.call_budget = Duration::from_secs(5);
    // Scheduler rounds are run by the tests that are about them, not behind every test's back.
    config.sync.scheduler_interval = Duration::from_secs(3_600);
    // Likewise learning expansions: the simulator scatters a seller's products over all its 3,100
    // expansions, so with each test's empty index every full sync would read hundreds of them.
    config.catalog.expansion_learn = false;
    (config, database_name)
}

/// How often [`wait_for`] and [`wait_until`] look again.
const POLL_EVERY: Duration = Duration::from_millis(25);

/// Polls `check` until it answers `Ok`, returning that value; panics after `timeout` naming `what`
/// it waited for and the last `Err` it saw. A check still running at the deadline is cut off there.
pub(crate) async fn wait_for<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(seen)) => last = Some(seen),
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last saw {last:?}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls `check` until it answers true; panics after `timeout` naming `what` it waited for.
pub(crate) async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(true) = tokio::time::timeout_at(deadline, check()).await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A server whose PostgreSQL is reached through `proxy` (cut it to simulate an outage), with the
/// test settings `adjust` changed, already SERVING.
pub(crate) async fn spawn_app_behind(
    proxy: &TcpProxy,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    let proxy_addr = proxy.addr.to_string();
    spawn_app_with(|config| {
        let url = config
            .storage
            .database_url
            .expose_secret()
            .replace("127.0.0.1:5432", &proxy_addr);
        config.storage.database_url = SecretString::from(url);
        adjust(config);
    })
    .await
}

/// A server with the default test settings, already SERVING.
pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A server whose test settings `adjust` changed first, already SERVING.
pub(crate) async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let app = start_app_with(adjust).await;
    app.wait_for_health(ServingStatus::Serving).await;
    app
}

/// A server whose test settings `adjust` changed first, without waiting for readiness.
pub(crate) async fn start_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    init_process();
    let simulator =
        SimulatorHandle::start(SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("simulator starts");
    let (mut config, database_name) = test_config();
    config.cardtrader.base_url = simulator.base_url();
    adjust(&mut config);
    if config.storage.pg_pooler == brx_sync::config::PgPooler::Transaction {
        // Created first: PgBouncer waits out `server_login_retry` (15 s) after a login to a
        // database that does not exist yet, which the replica's own start would otherwise hit.
        brx_sync::storage::ensure_database(config.storage.migration_url().unwrap())
            .await
            .unwrap();
    }
    let jwt_secret = config
        .auth
        .jwt_hs256_secret
        .as_ref()
        .map(|secret| secret.expose_secret().to_owned())
        .unwrap_or_default();
    let app = App::build(config.clone()).await.expect("app builds");
    let (grpc_addr, http_addr, admin_addr) = (app.grpc_addr(), app.http_addr(), app.admin_addr());
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        simulator,
        grpc_addr,
        http_addr,
        admin_addr,
        config,
        database_name,
        jwt_secret,
        shutdown: Some(shutdown),
        task: Some(task),
    }
}

/// Process-wide set-up: the rustls provider, once.
pub(crate) fn init_process() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl TestApp {
    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect()
            .await
            .expect("gRPC connects")
    }

    pub(crate) async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    pub(crate) async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel().await)
    }

    pub(crate) async fn accounts(&self) -> AccountServiceClient<Channel> {
        AccountServiceClient::new(self.channel().await)
    }

    /// GetStats with `token` as bearer, or with no token at all.
    pub(crate) async fn get_stats(
        &self,
        token: Option<&str>,
    ) -> Result<brx_sync::pb::v1::GetStatsResponse, tonic::Status> {
        let message = brx_sync::pb::v1::GetStatsRequest {};
        let request = match token {
            Some(token) => authorized(message, token),
            None => tonic::Request::new(message),
        };
        self.admin()
            .await
            .get_stats(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub(crate) fn service_token(&self) -> String {
        mint_token(&self.jwt_secret, None, "service", Duration::from_secs(300)).unwrap()
    }

    pub(crate) fn seller_token(&self, user: UserId) -> String {
        mint_token(
            &self.jwt_secret,
            Some(user),
            "service",
            Duration::from_secs(300),
        )
        .unwrap()
    }

    /// Current overall health as the server reports it.
    pub(crate) async fn health_status(&self) -> ServingStatus {
        let response = self
            .health()
            .await
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check answers");
        response.into_inner().status()
    }

    /// Polls health until it reports `expected`; panics after 20 s.
    pub(crate) async fn wait_for_health(&self, expected: ServingStatus) {
        let client = self.health().await;
        wait_for(
            &format!("health to become {expected:?}"),
            Duration::from_secs(20),
            || {
                let mut client = client.clone();
                async move {
                    let request = HealthCheckRequest {
                        service: String::new(),
                    };
                    match client.check(request).await {
                        Ok(response) if response.get_ref().status() == expected => Ok(()),
                        other => Err(other.map(|response| response.into_inner().status())),
                    }
                }
            },
        )
        .await;
    }

    /// The value of one sample on the metrics page, 0 when the series has none.
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Starts the graceful shutdown, as SIGTERM would.
    pub(crate) fn trigger_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Triggers shutdown and waits for `run_until_stopped` to return.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.shut_down().await
    }

    /// [`Self::stop`], keeping the database (dropped with the app) for the test to read.
    pub(crate) async fn shut_down(&mut self) -> anyhow::Result<()> {
        self.trigger_shutdown();
        let task = self.task.take().expect("not stopped yet");
        task.await.expect("app task did not panic")
    }

    /// A shop seller connected (as the service role) to a new simulator account with `products`
    /// products; returns the seller and the account's CardTrader token.
    pub(crate) async fn connected_seller_and_token(
        &self,
        products: u64,
    ) -> (brx_sync::domain::UserId, String) {
        let seller = self.simulator.add_seller(products);
        let user = brx_sync::domain::UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
        let request = brx_sync::pb::v1::ConnectAccountRequest {
            user_id: user.to_string(),
            cardtrader_token: seller.token.clone(),
        };
        self.accounts()
            .await
            .connect_account(authorized(request, &self.service_token()))
            .await
            .unwrap();
        (user, seller.token)
    }

    /// A shop seller connected to a new simulator account with `products` products.
    pub(crate) async fn connected_seller(&self, products: u64) -> brx_sync::domain::UserId {
        self.connected_seller_and_token(products).await.0
    }

    /// The keyring this replica seals CardTrader tokens with, to store tokens as it would.
    pub(crate) fn keyring(&self) -> brx_sync::accounts::Keyring {
        let keys = self.config.auth.encryption_keys.as_ref().unwrap();
        brx_sync::accounts::Keyring::parse(secrecy::ExposeSecret::expose_secret(keys)).unwrap()
    }

    /// The body of a GET on the admin listener (metrics, probes).
    pub(crate) async fn admin_get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.admin_addr))
            .await
            .expect("HTTP answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }
}

/// Attaches a bearer token to a request.
pub(crate) fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // Tests leave no databases behind.
        drop_database(&self.database_name);
    }
}

/// Drops a test database; callable from sync or async code (it runs on a thread of its own).
pub(crate) fn drop_database(name: &str) {
    let name = name.to_owned();
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            if let Ok(pool) = sqlx::PgPool::connect(POSTGRES_ADMIN_URL).await {
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                pool.close().await;
            }
        });
    });
    let _ = dropped.join();
}

/// PostgreSQL reached as a replica with `config` reaches it (through the test PgBouncer when
/// [`PGBOUNCER_ENV`] is set), for tests that drive capabilities or stores directly.
pub(crate) fn pg_like_the_app(config: &Config) -> brx_sync::storage::Pg {
    brx_sync::storage::Storage::connect_lazy(&config.storage)
        .unwrap()
        .pg
}

/// A fresh, migrated PostgreSQL database for tests that need storage but no server; dropped after.
pub(crate) struct TestDatabase {
    pub(crate) pool: brx_sync::storage::Pg,
    pub(crate) name: String,
}

impl TestDatabase {
    pub(crate) async fn new() -> Self {
        let (mut config, name) = test_config();
        config.storage.pg_max_connections = 20;
        let storage = brx_sync::storage::Storage::connect_lazy(&config.storage).unwrap();
        brx_sync::storage::ensure_database(config.storage.migration_url().unwrap())
            .await
            .unwrap();
        storage.run_migrations().await.unwrap();
        Self {
            pool: storage.pg,
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        drop_database(&self.name);
    }
}

/// Every node of an EXPLAIN (FORMAT JSON) plan.
pub(crate) fn plan_nodes(node: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut nodes = vec![node];
    for child in node["Plans"].as_array().into_iter().flatten() {
        nodes.extend(plan_nodes(child));
    }
    nodes
}
