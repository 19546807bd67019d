//! `loadtest --scenario soak`: several replica processes sharing PostgreSQL (through PgBouncer in
//! transaction mode), Redis, the catalogue and the simulator, with every kind of work at once —
//! requested and scheduled syncs, purchases from concurrent buyers, price edits pushed to CardTrader,
//! CardTrader sales arriving as webhooks, simulator faults — while a chaos loop kills replicas with
//! SIGKILL, drains them with SIGTERM and cuts Redis and the catalogue. Then, with the faults off, it
//! lets the work settle, syncs every seller once more and checks that nothing was lost or done twice.
//!
//! Layout: `replicas` runs the processes, `proxy` the cuttable links to Redis and MySQL, `work` the
//! drivers, `checks` the invariants; this file sets up, runs the phases and prints the report.

mod checks;
mod proxy;
mod replicas;
mod work;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{
    LoadtestArgs,
    measure::{self, thousands},
    simulator::SimulatorProcess,
};
use brx_sync::{
    api::auth::mint_token,
    config::{Config, PgPooler},
};
use proxy::Cuttable;
use replicas::Replicas;
use work::{Chaos, Ledger, Shop};

/// Units every product holds on CardTrader when the soak starts: enough that no purchase or sale
/// takes one to zero (which would delete it and re-create it under another id).
const STOCK: i64 = 100_000;

/// Runs the soak and prints its report; fails when an invariant does not hold.
pub(super) async fn run(config: Config, args: &LoadtestArgs) -> anyhow::Result<()> {
    let (sellers, products) = (args.sellers(), args.products());
    let buyers = args.buyers();
    println!(
        "brx-sync loadtest (soak): {} replica processes, {sellers} sellers x {products} products, {:?}\n",
        args.replicas,
        args.duration()
    );
    let simulator = SimulatorProcess::start(sellers, products).await?;
    let setup = Setup::prepare(config, &simulator, args).await?;
    // Interrupted, the soak's future is dropped with its replicas, whose processes die with it.
    let outcome = tokio::select! {
        outcome = soak(&setup, &simulator, args, sellers, buyers) => outcome,
        () = brx_sync::shutdown::signal() => Err(anyhow::anyhow!("interrupted")),
    };
    setup.tear_down().await;
    simulator.stop().await;
    outcome
}

/// Everything the replicas share, and how the soak itself reaches it.
struct Setup {
    config: Config,
    database: String,
    env: BTreeMap<String, String>,
    redis: Cuttable,
    catalogue: Cuttable,
    /// Straight to PostgreSQL (not through the pooler): the soak's own reads.
    monitor: sqlx::PgPool,
    token: String,
}

impl Setup {
    async fn prepare(
        mut config: Config,
        simulator: &SimulatorProcess,
        args: &LoadtestArgs,
    ) -> anyhow::Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("brx_soak_{suffix}");
        let mut direct = reqwest::Url::parse(config.storage.database_url.expose_secret())
            .context("BRX_DATABASE_URL is not a URL")?;
        direct.set_path(&format!("/{database}"));
        let mut pooled = direct.clone();
        if let Some(pgbouncer) = args.pooler() {
            pooled
                .set_host(Some(&pgbouncer.ip().to_string()))
                .map_err(|err| anyhow::anyhow!("--pgbouncer: {err}"))?;
            pooled
                .set_port(Some(pgbouncer.port()))
                .map_err(|()| anyhow::anyhow!("--pgbouncer: no port"))?;
        }
        config.storage.database_url = SecretString::from(direct.to_string());
        config.storage.pg_pooler = PgPooler::None;
        config.storage.redis_key_prefix = format!("brx-soak-{suffix}:");
        brx_sync::app::migrate(&config.storage).await?;
        let prints = cardtrader_sim::CATALOGUE_BLUEPRINTS;
        brx_sync::blueprints::fixture::seed(&config.storage.mysql_url, &config.catalog, prints)
            .await
            .context("seeding the MySQL catalogue (is MariaDB running at BRX_MYSQL_URL?)")?;
        let redis = Cuttable::start(upstream(&config.storage.redis_url, 6379)?).await?;
        let catalogue = Cuttable::start(upstream(&config.storage.mysql_url, 3306)?).await?;
        let secret = uuid::Uuid::new_v4().to_string() + &uuid::Uuid::new_v4().to_string();
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        let lease = args.lease;
        let mut env = BTreeMap::new();
        let mut set = |name: &str, value: String| env.insert(name.to_owned(), value);
        set("BRX_DATABASE_URL", pooled.to_string());
        set("BRX_DATABASE_DIRECT_URL", direct.to_string());
        let pooler = if args.pooler().is_some() {
            "transaction"
        } else {
            "none"
        };
        set("BRX_PG_POOLER", pooler.to_owned());
        set("BRX_PG_MAX_CONNECTIONS", "16".into());
        set("BRX_SYNC_DB_WRITERS", "4".into());
        set("BRX_MIGRATE_ON_START", "false".into());
        set(
            "BRX_REDIS_URL",
            through(&config.storage.redis_url, redis.addr)?,
        );
        set(
            "BRX_REDIS_KEY_PREFIX",
            config.storage.redis_key_prefix.clone(),
        );
        set(
            "BRX_MYSQL_URL",
            through(&config.storage.mysql_url, catalogue.addr)?,
        );
        set("BRX_CARDTRADER_BASE_URL", simulator.base_url());
        set("BRX_JWT_HS256_SECRET", secret.clone());
        set("BRX_ENCRYPTION_KEYS", format!("k1:{key}"));
        set("BRX_EXPECTED_REPLICAS", args.replicas.to_string());
        // Short leases and budgets: a killed replica's work is taken over within seconds.
        set(
            "BRX_JOB_LEASE",
            humantime::format_duration(lease).to_string(),
        );
        set(
            "BRX_CARDTRADER_CALL_BUDGET",
            format!("{}ms", lease.as_millis() * 2 / 3),
        );
        set(
            "BRX_CARDTRADER_REQUEST_TIMEOUT",
            format!("{}ms", lease.as_millis() / 3),
        );
        set("BRX_BREAKER_OPEN_FOR", "1s".into());
        set("BRX_JOB_POLL_INTERVAL", "200ms".into());
        // Sellers fall due for a scheduled sync while the soak runs.
        set("BRX_SCHEDULER_INTERVAL", "5s".into());
        set("BRX_SYNC_STALE_AFTER", "30s".into());
        set("BRX_EXPANSION_LEARN", "false".into());
        set("BRX_HEALTH_CHECK_INTERVAL", "500ms".into());
        set("BRX_RECONNECT_MAX_DELAY", "1s".into());
        set("BRX_SHUTDOWN_DRAIN_DELAY", "0s".into());
        set("BRX_SHUTDOWN_GRACE_PERIOD", "15s".into());
        set("BRX_LOG", args.replica_log.clone());
        let monitor = PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(direct.as_str().parse::<PgConnectOptions>()?);
        let token = mint_token(
            &secret,
            None,
            &config.auth.jwt_service_role,
            Duration::from_secs(24 * 3600),
        )?;
        println!(
            "  setup: database {database} (replicas through {}), catalogue seeded, Redis and \
             MySQL behind cuttable proxies",
            args.pooler().map_or_else(
                || "PostgreSQL directly".to_owned(),
                |addr| format!("PgBouncer {addr}")
            )
        );
        Ok(Self {
            config,
            database,
            env,
            redis,
            catalogue,
            monitor,
            token,
        })
    }

    async fn tear_down(&self) {
        self.monitor.close().await;
        let url = self.config.storage.database_url.expose_secret();
        if let Err(err) =
            <sqlx::Postgres as sqlx::migrate::MigrateDatabase>::force_drop_database(url).await
        {
            tracing::warn!(error = %err, "could not drop the soak database");
        }
        let redis = deadpool_redis::Config::from_url(self.config.storage.redis_url.expose_secret())
            .create_pool(Some(deadpool_redis::Runtime::Tokio1));
        if let Ok(pool) = redis {
            let prefix = &self.config.storage.redis_key_prefix;
            let _ = brx_sync::storage::delete_keys_with_prefix(&pool, prefix).await;
        }
        println!(
            "\n  teardown: database {} dropped, Redis keys removed",
            self.database
        );
    }
}

/// The soak proper, from the replicas' start to the report.
async fn soak(
    setup: &Setup,
    simulator: &SimulatorProcess,
    args: &LoadtestArgs,
    sellers: u32,
    buyers: u32,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut replicas = Replicas::start(args.replicas as usize, setup.env.clone()).await?;
    println!(
        "  setup: {} replicas SERVING in {:.1} s",
        args.replicas,
        started.elapsed().as_secs_f64()
    );
    let shop = Arc::new(Shop::open(setup, simulator, &replicas, sellers, STOCK).await?);
    let ledger = Arc::new(Ledger::default());
    let api = simulator.api();

    println!(
        "\n  chaos for {:?}: faults on, buyers, syncs, edits, sales, kills, drains, cuts",
        args.duration()
    );
    api.set_faults(&work::faults()).await?;
    let run_started = Instant::now();
    let until = tokio::time::Instant::now() + args.duration();
    let drivers = work::start(&shop, &ledger, &api, buyers, until);
    let progress = tokio::spawn(progress(ledger.clone(), run_started, until));
    let mut chaos = Chaos::default();
    let chaos_outcome = chaos
        .run(&mut replicas, setup, &api, until, args.lease)
        .await;
    let driven = futures::future::join_all(drivers).await;
    progress.abort();
    let ran_for = run_started.elapsed();
    chaos_outcome?;
    for outcome in driven {
        outcome.context("a driver task")??;
    }

    println!("\n  settle: faults off, every replica up, work allowed to end");
    api.set_faults(&cardtrader_sim::Faults::default()).await?;
    setup.redis.restore();
    setup.catalogue.restore();
    for index in 0..replicas.slots.len() {
        if !replicas.is_running(index) {
            replicas.spawn(index)?;
        }
        replicas.wait_serving(index).await?;
    }
    let settled = checks::settle(&setup.monitor, &shop, args.timeout).await?;
    replicas.sample_rss();
    let report = checks::verify(&setup.monitor, &shop, &ledger, simulator, sellers).await?;

    println!("\n  figures over {:.0} s of chaos", ran_for.as_secs_f64());
    let per_minute = |n: u64| n as f64 * 60.0 / ran_for.as_secs_f64();
    let work = ledger.totals();
    for (what, n) in [
        ("purchases answered", work.purchases),
        ("syncs requested", work.syncs_requested),
        ("price edits accepted", work.edits),
        ("restocks (quantity edits) accepted", work.restocks),
        ("CardTrader sales delivered as webhooks", work.sales),
    ] {
        println!(
            "    {:>8}/min  {what} ({} in all)",
            format!("{:.0}", per_minute(n)),
            thousands(n)
        );
    }
    println!(
        "    {:>8}/min  sync jobs succeeded ({} in all)",
        format!("{:.0}", per_minute(report.syncs_succeeded)),
        thousands(report.syncs_succeeded)
    );
    chaos.print(args.lease);
    println!(
        "    PostgreSQL connections to the soak database: peak {} (replicas x BRX_PG_MAX_CONNECTIONS = {})",
        report.peak_connections.max(chaos.peak_connections),
        args.replicas * 16
    );
    for slot in &replicas.slots {
        println!(
            "    {}: peak RSS {}",
            slot.name,
            measure::mib(Some(slot.peak_rss_kib))
        );
    }
    println!(
        "    settle: work ended {:.1} s after the chaos",
        settled.as_secs_f64()
    );
    replicas.stop_all().await?;
    report.outcome()
}

/// Where `url` (a `redis://` or `mysql://` URL) points.
fn upstream(url: &SecretString, default_port: u16) -> anyhow::Result<SocketAddr> {
    let url = reqwest::Url::parse(url.expose_secret())?;
    let host = url.host_str().context("no host")?;
    let port = url.port().unwrap_or(default_port);
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    Ok(format!("{host}:{port}").parse()?)
}

/// `url` pointed at `proxy` instead.
fn through(url: &SecretString, proxy: SocketAddr) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(url.expose_secret())?;
    url.set_host(Some(&proxy.ip().to_string()))?;
    url.set_port(Some(proxy.port()))
        .map_err(|()| anyhow::anyhow!("cannot set a port on {url}"))?;
    Ok(url.to_string())
}

/// A line every 30 s while the chaos runs, so a long soak shows it is alive.
async fn progress(ledger: Arc<Ledger>, started: Instant, until: tokio::time::Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    while tokio::time::Instant::now() < until {
        tick.tick().await;
        let work = ledger.totals();
        println!(
            "    {:>4.0} s: {} purchases answered, {} price edits, {} restocks, {} sales, {} syncs \
             requested",
            started.elapsed().as_secs_f64(),
            thousands(work.purchases),
            thousands(work.edits),
            thousands(work.restocks),
            thousands(work.sales),
            thousands(work.syncs_requested)
        );
    }
}
