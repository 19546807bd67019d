//! Ingest benchmark, every figure against a ceiling measured in the same run: a full sync end to end
//! (simulator export over HTTP → streaming parse → catalogue → chunk transactions → sweep) against a
//! raw COPY of the same rows, the chunk upsert path against a staged set-based upsert, an unchanged
//! re-sync and the rows it rewrote, two overlapping syncs and their deadlock retries, and peak RSS.
//! The expansion index is seeded first, as any shop has it after its first seller (a cold index is
//! a one-off of one CardTrader read per expansion at the rate limit, not the path measured here).
//!
//! `cargo bench --bench ingest` (needs the local PostgreSQL, MariaDB and Redis; BENCH_PRODUCTS,
//! BENCH_RSS_PRODUCTS (0 skips), BENCH_OVERLAP_PRODUCTS and BENCH_SWEEP_SECONDS tune it). Its
//! `brx_bench_*` databases are dropped at the end.

use std::{
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use brx_sync::{
    accounts::{Accounts, Keyring},
    blueprints::{BlueprintCatalog, fixture},
    config::Config,
    config::PgPooler,
    domain::UserId,
    jobs::{
        JobContext, JobKind, JobState, Lane, NewJob, QueueLimit, TargetedScope, store as jobs,
        worker::{JobHandler, Worker, WorkerSettings},
    },
    marketplace::MarketplaceClient,
    metrics::Metrics,
    rate_limit::{Limits, RateLimiter},
    storage::Pg,
    storage::{MIGRATOR, Storage, ensure_database},
    sync::{
        SyncRow,
        chunk::{ChunkError, ChunkTarget, write_chunk},
        handler::{SyncHandler, SyncSettings},
        scope::SyncProgress,
    },
};
use cardtrader_sim::{CATALOGUE_BLUEPRINTS, MAX_BLUEPRINT, SimSeller, blueprint_expansion};
use futures::{StreamExt, TryStreamExt};
use mysql_async::prelude::Queryable;
use rand::seq::SliceRandom;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgPool, Row, postgres::PgPoolOptions};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const MYSQL: &str = "mysql://root@127.0.0.1:3306";
/// base64 of 32 bytes of 0x2a, the key the tests seal tokens with.
const ENCRYPTION_KEYS: &str = "bench-key:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
const CHUNK: usize = 1_000;
/// The columns a sync writes besides the key `(user_id, product_id)`.
const VALUES: &str = "blueprint_id, expansion_id, print_id, print_table, name, quantity, \
    price_cents, currency, properties, description, user_data_field, tag, graded";

fn columns() -> String {
    format!("user_id, product_id, {VALUES}")
}

/// Figure 2's ceiling: `upsert::upsert_rows`'s upsert (bar the reserved-quantity rule), set-based.
const STAGED_UPSERT: &str = "INSERT INTO inventory_items AS i (user_id, product_id, blueprint_id, \
         expansion_id, print_id, print_table, name, quantity, price_cents, currency, properties, \
         description, user_data_field, tag, graded) \
     SELECT $1, product_id, blueprint_id, expansion_id, print_id, print_table, name, quantity, \
         price_cents, currency, properties, description, user_data_field, tag, graded \
     FROM bench_stage ORDER BY product_id \
     ON CONFLICT ON CONSTRAINT inventory_items_pkey DO UPDATE SET \
         blueprint_id = EXCLUDED.blueprint_id, expansion_id = EXCLUDED.expansion_id, \
         print_id = EXCLUDED.print_id, print_table = EXCLUDED.print_table, name = EXCLUDED.name, \
         quantity = EXCLUDED.quantity, price_cents = EXCLUDED.price_cents, \
         currency = EXCLUDED.currency, properties = EXCLUDED.properties, \
         description = EXCLUDED.description, user_data_field = EXCLUDED.user_data_field, \
         tag = EXCLUDED.tag, graded = EXCLUDED.graded, updated_at = now() \
     WHERE (i.blueprint_id, i.expansion_id, i.print_id, i.print_table, i.name, i.quantity, \
            i.price_cents, i.currency, i.properties, i.description, i.user_data_field, i.tag, \
            i.graded) \
       IS DISTINCT FROM (EXCLUDED.blueprint_id, EXCLUDED.expansion_id, EXCLUDED.print_id, \
            EXCLUDED.print_table, EXCLUDED.name, EXCLUDED.quantity, EXCLUDED.price_cents, \
            EXCLUDED.currency, EXCLUDED.properties, EXCLUDED.description, \
            EXCLUDED.user_data_field, EXCLUDED.tag, EXCLUDED.graded)";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn new_user() -> anyhow::Result<UserId> {
    Ok(UserId::from_uuid(Uuid::new_v4())?)
}

fn rate(rows: u64, took: Duration) -> f64 {
    rows as f64 / took.as_secs_f64()
}

/// The simulator as a child process, so its memory and CPU are not this process's.
struct Simulator {
    _child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl Simulator {
    async fn start() -> anyhow::Result<Self> {
        // A port the OS just handed out and took back: free unless something grabs it meanwhile.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_brx-devtools"))
            .args(["simulator", "--addr", &addr.to_string(), "--sellers", "0"])
            .env("BRX_LOG", "error")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        for _ in 0..100 {
            if reqwest::get(format!("http://{addr}/_sim/faults"))
                .await
                .is_ok()
            {
                return Ok(Self {
                    _child: child,
                    addr,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the simulator never answered on {addr}")
    }

    /// A new seller holding `products`; returns its token.
    async fn add_seller(&self, products: u64) -> anyhow::Result<String> {
        let seller: SimSeller = reqwest::Client::new()
            .post(format!("http://{}/_sim/sellers", self.addr))
            .json(&serde_json::json!({ "products": products }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(seller.token)
    }
}

/// What one run shares: its id (in every database name and Redis prefix), the simulator, the
/// seeded catalogue and an admin connection.
struct Run {
    id: String,
    simulator: Simulator,
    admin: PgPool,
}

impl Run {
    async fn start() -> anyhow::Result<Self> {
        let run = Self {
            id: Uuid::new_v4().simple().to_string(),
            simulator: Simulator::start().await?,
            admin: PgPool::connect(&format!("{PG}/postgres")).await?,
        };
        let seed_config = run.config("none", "seed");
        fixture::seed(
            &seed_config.storage.mysql_url,
            &seed_config.catalog,
            CATALOGUE_BLUEPRINTS,
        )
        .await?;
        Ok(run)
    }

    fn database(&self, name: &str) -> String {
        format!("brx_bench_{}_{name}", self.id)
    }

    /// Production defaults, pointed at this run's databases; `prefix` keeps caches apart.
    fn config(&self, database: &str, prefix: &str) -> Config {
        let mut config = Config::defaults();
        config.storage.database_url =
            SecretString::from(format!("{PG}/{}", self.database(database)));
        config.storage.mysql_url =
            SecretString::from(format!("{MYSQL}/{}", self.database("catalog")));
        config.storage.redis_key_prefix = format!("brx-bench-{}-{prefix}:", self.id);
        config.cardtrader.base_url = format!("http://{}/api/v2", self.simulator.addr);
        config.auth.encryption_keys = Some(SecretString::from(ENCRYPTION_KEYS.to_owned()));
        // A million-product export read at database speed may outlast the default 180 s.
        config.cardtrader.export_timeout = Duration::from_secs(600);
        config
    }

    /// A fresh, migrated database.
    async fn create_database(&self, name: &str) -> anyhow::Result<PgPool> {
        let url = SecretString::from(format!("{PG}/{}", self.database(name)));
        ensure_database(&url).await?;
        let pool = PgPoolOptions::new().max_connections(8);
        let pool = pool.connect(url.expose_secret()).await?;
        MIGRATOR.run(&pool).await?;
        Ok(pool)
    }

    async fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        let sql = format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.database(name)
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&self.admin)
            .await?;
        Ok(())
    }

    /// Flushes dirty pages, so one measurement does not pay for the writes of the one before.
    async fn settle(&self) -> anyhow::Result<()> {
        sqlx::query("CHECKPOINT").execute(&self.admin).await?;
        Ok(())
    }

    async fn clean_up(&self) {
        for name in ["main", "copy", "rss"] {
            if let Err(err) = self.drop_database(name).await {
                eprintln!("could not drop {}: {err:#}", self.database(name));
            }
        }
        let catalog = self.database("catalog");
        let dropped = async {
            let mut conn = mysql_async::Conn::from_url(format!("{MYSQL}/mysql")).await?;
            let sql = format!("DROP DATABASE IF EXISTS `{catalog}`");
            conn.query_drop(sql).await?;
            conn.disconnect().await
        };
        if let Err(err) = dropped.await {
            eprintln!("could not drop {catalog}: {err:#}");
        }
        if let Err(err) = self.forget_redis_keys().await {
            eprintln!("could not delete the run's Redis keys: {err:#}");
        }
    }

    /// Deletes this run's cache entries and buckets, which would otherwise live for a day.
    async fn forget_redis_keys(&self) -> anyhow::Result<()> {
        let storage = Storage::connect_lazy(&self.config("none", "none").storage)?;
        let prefix = format!("brx-bench-{}-", self.id);
        brx_sync::storage::delete_keys_with_prefix(&storage.redis, &prefix).await?;
        Ok(())
    }
}

/// The real sync stack, built as `App` builds it, with a worker started per sync.
struct Stack {
    storage: Storage,
    handler: SyncHandler,
}

/// One sync as the bench saw it: when the job's progress first counted every product (all chunks
/// in) and when the job ended, `None` if what follows the chunks overran its budget and was cancelled.
struct Synced {
    chunks_in: Duration,
    finished: Option<Duration>,
    progress: SyncProgress,
}

impl Stack {
    fn build(config: &Config) -> anyhow::Result<Self> {
        let storage = Storage::connect_lazy(&config.storage)?;
        let metrics = Metrics::new()?;
        let (limits, prefix) = (
            Limits::from_config(&config.cardtrader),
            &config.storage.redis_key_prefix,
        );
        let limiter = RateLimiter::new(storage.redis.clone(), prefix, limits, metrics.clone());
        let marketplace = MarketplaceClient::new(&config.cardtrader, limiter, metrics.clone())?;
        let keys = config
            .auth
            .encryption_keys
            .as_ref()
            .context("no encryption keys")?;
        let keyring = Keyring::parse(keys.expose_secret()).map_err(anyhow::Error::msg)?;
        let (mysql, redis) = (storage.mysql.clone(), storage.redis.clone());
        let handler = SyncHandler {
            kind: brx_sync::jobs::KindName::SyncFull,
            accounts: Accounts::new(storage.pg.clone(), Some(keyring), marketplace),
            catalog: BlueprintCatalog::new(&config.catalog, mysql, redis, prefix, metrics.clone()),
            metrics,
            writers: Arc::new(Semaphore::new(config.sync.db_writers as usize)),
            settings: SyncSettings::from_config(&config.sync, &config.cardtrader),
        };
        Ok(Self { storage, handler })
    }

    /// Fills the expansion index in Redis as a shop's first sellers leave it (every blueprint's
    /// expansion, every expansion read just now), so a first sync measures the catalogue and the
    /// writes. A cold index costs one `/blueprints/export` per expansion at the seller's rate
    /// limit (3,100 reads, about 195 s on this simulator whatever the seller's size), paid once
    /// per shop, not per seller.
    async fn seed_expansion_index(&self, prefix: &str) -> anyhow::Result<()> {
        let mut redis = self.storage.redis.get().await?;
        let ttl = Config::defaults().catalog.expansion_index_ttl.as_secs();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let blueprints: Vec<i64> = (1..=MAX_BLUEPRINT).collect();
        for batch in blueprints.chunks(10_000) {
            let mut pipeline = deadpool_redis::redis::pipe();
            for &blueprint in batch {
                let key = format!("{prefix}bpx:{blueprint}");
                let expansion = blueprint_expansion(blueprint);
                pipeline.set_ex(key, expansion, ttl).ignore();
            }
            pipeline.query_async::<()>(&mut redis).await?;
        }
        let mut pipeline = deadpool_redis::redis::pipe();
        for expansion in 1..=blueprint_expansion(MAX_BLUEPRINT) {
            pipeline
                .set_ex(format!("{prefix}bpxr:{expansion}"), now, ttl)
                .ignore();
        }
        pipeline.query_async::<()>(&mut redis).await?;
        Ok(())
    }

    /// Connects a new shop user to the simulator seller behind `token`.
    async fn connect(&self, token: &str) -> anyhow::Result<UserId> {
        let user = new_user()?;
        let token = SecretString::from(token.to_owned());
        self.handler.accounts.connect(user, token).await?;
        Ok(user)
    }

    /// Queues a full sync of `user`'s `products` and runs a worker until it ends, timed from enqueue.
    async fn sync(&self, user: UserId, products: u64) -> anyhow::Result<Synced> {
        let pool = &self.storage.pg;
        let new = job(user, JobKind::SyncFull);
        let started = Instant::now();
        let id = jobs::enqueue(pool, &new, QueueLimit::Unbounded)
            .await?
            .job()
            .id;
        let handlers: Vec<Arc<dyn JobHandler>> = vec![Arc::new(self.handler.clone())];
        let worker = Worker::new(pool.clone(), handlers, worker_settings(), Metrics::new()?);
        let stop = CancellationToken::new();
        let running = tokio::spawn(worker.run(stop.clone()));
        let synced = watch(pool, id, started, products).await;
        if synced
            .as_ref()
            .is_ok_and(|synced| synced.finished.is_none())
        {
            // An abandoned statement would keep a core busy through the figures after it.
            sqlx::query(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE datname = \
                 current_database() AND application_name = 'brx-sync' AND pid <> pg_backend_pid()",
            )
            .execute(pool)
            .await?;
        }
        stop.cancel();
        running.await??;
        synced
    }
}

fn job(user: UserId, kind: JobKind) -> NewJob {
    NewJob::new(user, kind).with_max_attempts(1)
}

fn worker_settings() -> WorkerSettings {
    WorkerSettings {
        owner: "bench".into(),
        lane: Lane::Bulk,
        concurrency: 1,
        lease: Duration::from_secs(30),
        call_budget: Duration::from_secs(20),
        poll_interval: Duration::from_millis(20),
        ranking: brx_sync::jobs::Ranking::default(),
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
    }
}

/// Polls job `id` until it ends, giving up once it has spent BENCH_SWEEP_SECONDS past its chunks.
async fn watch(pool: &Pg, id: Uuid, started: Instant, products: u64) -> anyhow::Result<Synced> {
    let budget = Duration::from_secs(env_or("BENCH_SWEEP_SECONDS", 30));
    let mut chunks_in = None;
    loop {
        let job = jobs::get(pool, id).await?;
        let (now, progress) = (started.elapsed(), SyncProgress::from_json(&job.progress));
        if progress.products_seen >= products {
            chunks_in.get_or_insert(now);
        }
        let overran = chunks_in.is_some_and(|chunks_in| now > chunks_in + budget);
        if job.state.is_terminal() || overran {
            let finished = job.state.is_terminal().then_some(now);
            let state = (job.state, &job.last_error);
            anyhow::ensure!(
                overran || job.state == JobState::Succeeded,
                "ended {state:?}"
            );
            let chunks_in = chunks_in.unwrap_or(now);
            return Ok(Synced {
                chunks_in,
                finished,
                progress,
            });
        }
        anyhow::ensure!(
            now < Duration::from_secs(900),
            "no end after {now:?}: {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The seller's rows in COPY text format, in product id order.
async fn copy_out(pool: &PgPool, user: UserId) -> anyhow::Result<Vec<u8>> {
    let mut conn = pool.acquire().await?;
    let (columns, user) = (columns(), user.as_uuid());
    let sql = format!(
        "COPY (SELECT {columns} FROM inventory_items WHERE user_id = '{user}' \
         ORDER BY product_id) TO STDOUT"
    );
    let mut data = Vec::new();
    let mut stream = conn.copy_out_raw(&sql).await?;
    while let Some(chunk) = stream.try_next().await? {
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

/// `COPY table FROM STDIN` of `data` on `conn`.
async fn copy_into(conn: &mut sqlx::PgConnection, table: &str, data: &[u8]) -> sqlx::Result<()> {
    let sql = format!("COPY {table} ({}) FROM STDIN", columns());
    let mut copy = conn.copy_in_raw(&sql).await?;
    copy.send(data).await?;
    copy.finish().await?;
    Ok(())
}

/// `n_tup_upd` of `inventory_items` and of `jobs` (each chunk updates its job: proof a sync's counters are in),
/// once the stack's connections are gone: a backend flushes its counters when it exits, while an
/// idle one may sit on them for up to 10 s (PostgreSQL 15).
async fn table_counters(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    for _ in 0..100 {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'brx-sync'",
        )
        .fetch_one(pool)
        .await?;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A backend leaves pg_stat_activity just before it writes its counters out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await?;
    let sql = "SELECT max(n_tup_upd) FILTER (WHERE relname = 'inventory_items'), \
               max(n_tup_upd) FILTER (WHERE relname = 'jobs') FROM pg_stat_user_tables";
    let (updated, seen): (Option<i64>, Option<i64>) = sqlx::query_as(sql).fetch_one(pool).await?;
    Ok((updated.unwrap_or(0), seen.unwrap_or(0)))
}

/// The stored rows of `user` as the sync builds them.
async fn load_rows(pool: &PgPool, user: UserId) -> anyhow::Result<Vec<SyncRow>> {
    let sql = format!(
        "SELECT product_id, {VALUES} FROM inventory_items WHERE user_id = $1 ORDER BY product_id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user.as_uuid())
        .fetch(pool)
        .map(|row| {
            let row = row?;
            let print_id: Option<i64> = row.try_get("print_id")?;
            let print_table: Option<String> = row.try_get("print_table")?;
            Ok::<_, sqlx::Error>(SyncRow {
                product_id: row.try_get("product_id")?,
                blueprint_id: row.try_get("blueprint_id")?,
                expansion_id: row.try_get("expansion_id")?,
                print: print_id.zip(print_table),
                // The bench's catalogue is always reachable.
                print_unknown: false,
                name: row.try_get("name")?,
                quantity: row.try_get("quantity")?,
                price_cents: row.try_get("price_cents")?,
                currency: row.try_get("currency")?,
                properties: row.try_get("properties")?,
                description: row.try_get("description")?,
                user_data_field: row.try_get("user_data_field")?,
                tag: row.try_get("tag")?,
                graded: row.try_get("graded")?,
            })
        })
        .try_collect()
        .await?;
    Ok(rows)
}

/// A claimed job of `kind`, whose fenced units of work `write_chunk` uses.
async fn lease(pool: &PgPool, user: UserId, kind: JobKind) -> anyhow::Result<JobContext> {
    let pool = &Pg::new(pool.clone(), PgPooler::None);
    let lane = kind.lane();
    jobs::enqueue(pool, &job(user, kind), QueueLimit::Unbounded).await?;
    let hour = Duration::from_secs(3600);
    let claimed = jobs::claim(
        pool,
        lane,
        "bench",
        hour,
        brx_sync::jobs::Ranking::default(),
    )
    .await?
    .context("the queued job was not claimed")?;
    Ok(JobContext::detached(claimed, pool.clone()))
}

fn target<'a>(job: &'a JobContext, writers: &'a Semaphore) -> ChunkTarget<'a> {
    let statement_timeout = Duration::from_secs(30);
    ChunkTarget {
        job,
        writers,
        statement_timeout,
        read_since: chrono::Utc::now(),
    }
}

/// A second kind of sync job, so two leases of one seller can be held at once.
fn targeted() -> JobKind {
    JobKind::SyncTargeted(TargetedScope {
        blueprint_ids: vec![1],
        expansion_ids: vec![],
    })
}

/// Figure 2: `write_chunk` over chunks of 1,000 rows, one after another, for a new seller.
async fn chunk_path(pool: &PgPool, rows: &[SyncRow]) -> anyhow::Result<Duration> {
    let user = new_user()?;
    let lease = lease(pool, user, JobKind::SyncFull).await?;
    let (writers, metrics) = (Semaphore::new(16), Metrics::new()?);
    let chunks: Vec<Vec<SyncRow>> = rows.chunks(CHUNK).map(<[SyncRow]>::to_vec).collect();
    let started = Instant::now();
    for chunk in chunks {
        write_chunk(target(&lease, &writers), user, chunk, &metrics).await?;
    }
    Ok(started.elapsed())
}

/// Figure 2's ceiling: COPY into a temporary table, then one INSERT … SELECT … ON CONFLICT.
async fn staged_upsert(pool: &PgPool, data: &[u8]) -> anyhow::Result<Duration> {
    let user = new_user()?;
    let mut tx = pool.begin().await?;
    let started = Instant::now();
    let stage = format!(
        "CREATE TEMP TABLE bench_stage ON COMMIT DROP AS SELECT {} FROM inventory_items WITH NO DATA",
        columns()
    );
    sqlx::query(sqlx::AssertSqlSafe(stage))
        .execute(&mut *tx)
        .await?;
    copy_into(&mut tx, "bench_stage", data).await?;
    let upsert = sqlx::query(STAGED_UPSERT).bind(user.as_uuid());
    upsert.execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(started.elapsed())
}

/// Figure 4: two syncs of one seller writing the same products at once, the second's chunks half a
/// chunk out of step with the first's; returns (deadlock retries, all retries, time).
async fn overlapping(pool: &PgPool, rows: &[SyncRow]) -> anyhow::Result<(u64, u64, Duration)> {
    let (user, metrics) = (new_user()?, Metrics::new()?);
    let first = lease(pool, user, JobKind::SyncFull).await?;
    let second = lease(pool, user, targeted()).await?;
    let shifted = rows.get(CHUNK / 2..).unwrap_or_default();
    let started = Instant::now();
    let (a, b) = tokio::join!(
        overlap_stream(&first, user, rows, 1, &metrics),
        overlap_stream(&second, user, shifted, 2, &metrics),
    );
    let elapsed = started.elapsed();
    a?;
    b?;
    let counter = &metrics.sync_chunk_retries;
    let retries = |reason: &str| counter.with_label_values(&[reason]).get();
    let reasons = ["deadlock", "serialization", "timeout", "other"];
    let all = reasons.map(retries).iter().sum::<u64>() + retries("connection");
    Ok((retries("deadlock"), all, elapsed))
}

/// Two passes of chunks over `rows`, prices bumped so every row really changes, each chunk shuffled
/// (write_chunk must restore the lock order itself).
async fn overlap_stream(
    lease: &JobContext,
    user: UserId,
    rows: &[SyncRow],
    bump: i64,
    metrics: &Metrics,
) -> Result<(), ChunkError> {
    let writers = Semaphore::new(16);
    for pass in 0..2 {
        for window in rows.chunks(CHUNK) {
            let mut chunk = window.to_vec();
            chunk
                .iter_mut()
                .for_each(|row| row.price_cents += bump + 10 * pass);
            chunk.shuffle(&mut rand::rng());
            write_chunk(target(lease, &writers), user, chunk, metrics).await?;
        }
    }
    Ok(())
}

/// A `kB` field of /proc/self/status, in MB.
fn status_mb(field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    let kb: f64 = value.trim().trim_end_matches("kB").trim().parse()?;
    Ok(kb / 1024.0)
}

/// Figure 5: this process's memory around one big sync, in MB: VmHWM since start, VmRSS before the
/// sync (VmHWM if the mark cannot be reset), VmHWM during it.
struct Peak {
    process: f64,
    before: f64,
    during: f64,
    synced: Synced,
}

async fn peak_rss(run: &Run, products: u64) -> anyhow::Result<Peak> {
    let pool = run.create_database("rss").await?;
    let token = run.simulator.add_seller(products).await?;
    let config = run.config("rss", "rss");
    let stack = Stack::build(&config)?;
    let user = stack.connect(&token).await?;
    stack
        .seed_expansion_index(&config.storage.redis_key_prefix)
        .await?;
    run.settle().await?;
    let hwm_before = status_mb("VmHWM")?;
    // "5" resets VmHWM to the current RSS (Linux 4.0+).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = status_mb("VmRSS")?;
    let synced = stack.sync(user, products).await?;
    let during = status_mb("VmHWM")?;
    stack.storage.close().await;
    pool.close().await;
    run.drop_database("rss").await?;
    let before = if reset { rss_before } else { hwm_before };
    let process = during.max(hwm_before);
    Ok(Peak {
        process,
        before,
        during,
        synced,
    })
}

/// Figures 1 to 4, measured in one fresh database.
struct Figures {
    products: u64,
    copy: Duration,
    first: Synced,
    resync: Synced,
    /// `table_counters` before and after the re-sync.
    counters: [(i64, i64); 2],
    staged: Duration,
    chunks: Duration,
    overlap: (u64, u64, Duration, usize),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let run = Run::start().await?;
    let result = measure(&run).await;
    run.clean_up().await;
    result
}

async fn measure(run: &Run) -> anyhow::Result<()> {
    let products: u64 = env_or("BENCH_PRODUCTS", 200_000);
    let rss_products: u64 = env_or("BENCH_RSS_PRODUCTS", 1_000_000);
    // First, while the heap is small: later figures hold their rows in memory.
    let mut peak = None;
    if rss_products > 0 {
        eprintln!("syncing {rss_products} products for peak RSS …");
        peak = Some(peak_rss(run, rss_products).await?);
    }
    let figures = syncs(run, products).await?;
    println!("\ningest bench: {products} products, chunks of {CHUNK}\n");
    line("figure", "measured", "ceiling", "ratio", "target");
    report(&figures);
    if let Some(peak) = peak {
        report_peak(rss_products, &peak);
    }
    Ok(())
}

async fn syncs(run: &Run, products: u64) -> anyhow::Result<Figures> {
    eprintln!("syncing {products} products twice, and the COPY ceiling …");
    let main = run.create_database("main").await?;
    let token = run.simulator.add_seller(products).await?;
    let config = run.config("main", "main");
    let stack = Stack::build(&config)?;
    let user = stack.connect(&token).await?;
    stack
        .seed_expansion_index(&config.storage.redis_key_prefix)
        .await?;
    run.settle().await?;
    let first = stack.sync(user, products).await?;
    anyhow::ensure!(first.progress.written == products, "{:?}", first.progress);
    stack.storage.close().await;
    let data = copy_out(&main, user).await?;
    let copy_db = run.create_database("copy").await?;
    run.settle().await?;
    let mut conn = copy_db.acquire().await?;
    let started = Instant::now();
    copy_into(&mut conn, "inventory_items", &data).await?;
    let copy = started.elapsed();
    drop(conn);
    copy_db.close().await;
    run.drop_database("copy").await?;
    let before = table_counters(&main).await?;
    // A new stack, as a later re-sync finds it: Redis warm, this replica's L1 cold.
    let stack = Stack::build(&run.config("main", "main"))?;
    run.settle().await?;
    let resync = stack.sync(user, products).await?;
    stack.storage.close().await;
    let counters = [before, table_counters(&main).await?];
    let (staged, chunks, overlap) = chunks(run, &main, user, &data).await?;
    main.close().await;
    Ok(Figures {
        products,
        copy,
        first,
        resync,
        counters,
        staged,
        chunks,
        overlap,
    })
}

/// Figures 2 and 4, over the rows the first sync stored.
async fn chunks(
    run: &Run,
    main: &PgPool,
    user: UserId,
    data: &[u8],
) -> anyhow::Result<(Duration, Duration, (u64, u64, Duration, usize))> {
    eprintln!("chunk path, overlapping syncs …");
    let rows = load_rows(main, user).await?;
    run.settle().await?;
    let staged = staged_upsert(main, data).await?;
    run.settle().await?;
    let chunks = chunk_path(main, &rows).await?;
    let overlap_rows = &rows[..env_or("BENCH_OVERLAP_PRODUCTS", 50_000).min(rows.len())];
    let (deadlocks, retries, took) = overlapping(main, overlap_rows).await?;
    Ok((
        staged,
        chunks,
        (deadlocks, retries, took, overlap_rows.len()),
    ))
}

fn line(figure: &str, measured: &str, ceiling: &str, ratio: &str, target: &str) {
    let line = format!("{figure:<44} {measured:>18}  {ceiling:>20}  {ratio:>7}  {target}");
    println!("{}", line.trim_end());
}

/// A sync's end-to-end line against COPY, then where its time went.
fn report_sync(figure: &str, synced: &Synced, products: u64, copy: Duration, target: &str) {
    let copy_rate = rate(products, copy);
    let budget = Duration::from_secs(env_or("BENCH_SWEEP_SECONDS", 30));
    let (bound, took) = match synced.finished {
        Some(took) => ("", took),
        None => ("< ", synced.chunks_in + budget),
    };
    let end_to_end = rate(products, took);
    let measured = format!("{bound}{end_to_end:.0}");
    let ratio = format!("{bound}{:.2}x", end_to_end / copy_rate);
    let ceiling = format!("COPY {copy_rate:.0}");
    line(figure, &measured, &ceiling, &ratio, target);
    let chunks_rate = rate(products, synced.chunks_in);
    let measured = format!("{chunks_rate:.0}");
    let ratio = format!("{:.2}x", chunks_rate / copy_rate);
    let took = format!("in {:.1?}", synced.chunks_in);
    line("   export + mapping + chunks", &measured, &took, &ratio, "");
    let rest = match synced.finished {
        Some(took) => format!("{:.1?}", took - synced.chunks_in),
        None => format!("> {budget:?} (cancelled)"),
    };
    line("   then sweep + job bookkeeping", &rest, "", "", "");
}

fn report(figures: &Figures) {
    let Figures { products, copy, .. } = *figures;
    let first = "1. full sync end to end (rows/s)";
    report_sync(first, &figures.first, products, copy, ">= 0.5x");
    let chunk_rate = rate(products, figures.chunks);
    let staged_rate = rate(products, figures.staged);
    let measured = format!("{chunk_rate:.0}");
    let ceiling = format!("staged {staged_rate:.0}");
    let ratio = format!("{:.2}x", chunk_rate / staged_rate);
    let second = "2. write_chunk, 1,000-row chunks (rows/s)";
    line(second, &measured, &ceiling, &ratio, ">= 0.9x");
    let third = "3. unchanged re-sync end to end (rows/s)";
    report_sync(third, &figures.resync, products, copy, ">= 0.8x");
    let [(before, seen_before), (after, seen_after)] = figures.counters;
    let (measured, ceiling) = (
        format!("{}", after - before),
        format!("{before} -> {after}"),
    );
    let (written, seen) = (figures.resync.progress.written, seen_after - seen_before);
    let target =
        format!("~ 0 (sync counted {written}; job row updates +{seen}, so the counters are in)");
    line(
        "   rows rewritten (n_tup_upd)",
        &measured,
        &ceiling,
        "",
        &target,
    );
    let (deadlocks, retries, took, rows) = figures.overlap;
    let (measured, ceiling) = (format!("{deadlocks}"), format!("all retries {retries}"));
    let what = format!("0 (2 syncs x 2 passes over {rows} rows, {took:.1?})");
    let figure = "4. overlapping syncs: deadlock retries";
    line(figure, &measured, &ceiling, "", &what);
}

fn report_peak(products: u64, peak: &Peak) {
    let measured = format!("VmHWM {:.0} MB", peak.process);
    let (before, during) = (peak.before, peak.during);
    let growth = format!("+{:.0} MB ({before:.0} -> {during:.0})", during - before);
    let chunks_in = peak.synced.chunks_in;
    let ended = match peak.synced.finished {
        Some(took) => format!("done in {took:.1?}"),
        None => "sweep cancelled".into(),
    };
    let note = format!("< 200 MB (chunks in after {chunks_in:.1?}, {ended})");
    let figure = format!("5. peak RSS, {products}-product sync");
    line(&figure, &measured, &growth, "", &note);
}
