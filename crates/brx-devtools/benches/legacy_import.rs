//! `import-legacy` throughput against a ceiling measured in the same run: a Python-service database
//! of BENCH_SELLERS (1,000) sellers × BENCH_ITEMS (1,000) inventory rows, real Fernet tokens and
//! plaintext webhook secrets, moved by the importer (read, decrypt, key the rows, map prints through
//! the catalogue, one transaction per seller) into a fresh brx-sync database; the ceiling is one
//! `COPY` of the very rows the import wrote into another fresh database, nothing else.
//!
//! `cargo bench -p brx-devtools --bench legacy_import` (needs the local PostgreSQL, MariaDB and
//! Redis; BENCH_SELLERS, BENCH_ITEMS, BENCH_RUNS (3) and BENCH_CONCURRENCY (4, the command's
//! default) tune it). Its `brx_bench_*` databases are dropped at the end.

use std::time::{Duration, Instant};

use anyhow::Context;
use brx_sync::{
    blueprints::fixture,
    config::Config,
    legacy::{ImportOptions, Importer, LegacyDb, LegacyKey, ProgressMode},
    storage::{MIGRATOR, ensure_database},
};
use fernet::Fernet;
use futures::TryStreamExt;
use mysql_async::prelude::Queryable;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const MYSQL: &str = "mysql://root@127.0.0.1:3306";
/// base64 of 32 bytes of 0x2a.
const ENCRYPTION_KEYS: &str = "bench-key:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
/// Blueprints the old rows spread over, all of them with a print in the catalogue.
const BLUEPRINTS: i64 = 5_000;
const LEGACY_SCHEMA: &str = include_str!("../../../tests/fixtures/legacy_schema.sql");
/// The columns the import writes, in both COPYs.
const COLUMNS: &str = "user_id, product_id, blueprint_id, expansion_id, print_id, print_table, \
    print_unknown, name, quantity, price_cents, currency, properties, description, user_data_field, graded";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// This run's databases and cache prefix.
struct Run {
    id: String,
    admin: PgPool,
}

impl Run {
    fn database(&self, name: &str) -> String {
        format!("brx_bench_{}_{name}", self.id)
    }

    fn url(&self, name: &str) -> String {
        format!("{PG}/{}", self.database(name))
    }

    fn config(&self, database: &str) -> Config {
        let mut config = Config::defaults();
        config.storage.database_url = SecretString::from(self.url(database));
        config.storage.mysql_url =
            SecretString::from(format!("{MYSQL}/{}", self.database("catalog")));
        config.storage.redis_key_prefix = format!("brx-bench-{}-{database}:", self.id);
        config.auth.encryption_keys = Some(SecretString::from(ENCRYPTION_KEYS.to_owned()));
        config
    }

    /// A fresh database, migrated when it is one of ours.
    async fn create(&self, name: &str, migrate: bool) -> anyhow::Result<PgPool> {
        let url = SecretString::from(self.url(name));
        ensure_database(&url).await?;
        let pool = PgPool::connect(url.expose_secret()).await?;
        if migrate {
            MIGRATOR.run(&pool).await?;
        }
        Ok(pool)
    }

    async fn drop_database(&self, name: &str) {
        let sql = format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.database(name)
        );
        if let Err(err) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&self.admin)
            .await
        {
            eprintln!("could not drop {}: {err:#}", self.database(name));
        }
    }

    async fn clean_up(&self, runs: usize) {
        self.drop_database("legacy").await;
        for n in 0..runs {
            self.drop_database(&format!("import{n}")).await;
            self.drop_database(&format!("copy{n}")).await;
        }
        let catalog = self.database("catalog");
        let dropped = async {
            let mut conn = mysql_async::Conn::from_url(format!("{MYSQL}/mysql")).await?;
            conn.query_drop(format!("DROP DATABASE IF EXISTS `{catalog}`"))
                .await?;
            conn.disconnect().await
        };
        if let Err(err) = dropped.await {
            eprintln!("could not drop {catalog}: {err:#}");
        }
        let storage = brx_sync::storage::Storage::connect_lazy(&self.config("none").storage);
        if let Ok(storage) = storage {
            let prefix = format!("brx-bench-{}-", self.id);
            let _ = brx_sync::storage::delete_keys_with_prefix(&storage.redis, &prefix).await;
        }
    }
}

/// The old database: `sellers` sellers with Fernet tokens and webhook secrets, `items` rows each
/// (every 100th seller also has one row without a product id); returns the Fernet key.
async fn legacy_fixture(run: &Run, sellers: usize, items: i64) -> anyhow::Result<String> {
    let pool = run.create("legacy", false).await?;
    sqlx::raw_sql(LEGACY_SCHEMA).execute(&pool).await?;
    let key = Fernet::generate_key();
    let fernet = Fernet::new(&key).context("a generated key")?;
    let users: Vec<Uuid> = (0..sellers).map(|_| Uuid::new_v4()).collect();
    let tokens: Vec<String> = (0..sellers)
        .map(|n| fernet.encrypt(format!("ct-token-{n}").as_bytes()))
        .collect();
    let secrets: Vec<String> = (0..sellers).map(|n| format!("{n:064x}")).collect();
    sqlx::query(
        "INSERT INTO user_sync_settings (user_id, cardtrader_token_encrypted, webhook_secret, sync_status) \
         SELECT u, t, s, 'active' FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS r(u, t, s)",
    )
    .bind(&users)
    .bind(&tokens)
    .bind(&secrets)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO user_inventory_items (user_id, blueprint_id, quantity, price_cents, properties, \
             external_stock_id) \
         SELECT s.user_id, 1 + ((i * 7 + s.n) % $2), i % 5, 100 + i, \
                '{\"condition\": \"Near Mint\", \"mtg_language\": \"en\", \"mtg_foil\": false}', \
                (s.n * 100000 + i)::text \
         FROM (SELECT user_id, row_number() OVER (ORDER BY user_id) AS n FROM user_sync_settings) s, \
              generate_series(1, $1::bigint) i",
    )
    .bind(items)
    .bind(BLUEPRINTS)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO user_inventory_items (user_id, blueprint_id, quantity, price_cents) \
         SELECT user_id, 1, 1, 100 FROM user_sync_settings ORDER BY user_id LIMIT $1",
    )
    .bind((sellers / 100) as i64)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE").execute(&pool).await?;
    pool.close().await;
    Ok(key)
}

/// One import into a fresh database; returns how long it took and the rows carried.
async fn import(
    run: &Run,
    n: usize,
    key: &str,
    concurrency: usize,
) -> anyhow::Result<(Duration, u64)> {
    let database = format!("import{n}");
    run.create(&database, true).await?.close().await;
    let (importer, storage) = Importer::from_config(&run.config(&database))?;
    let legacy = LegacyDb::connect(&SecretString::from(run.url("legacy"))).await?;
    let key = LegacyKey::parse(&SecretString::from(key.to_owned()))?;
    let options = ImportOptions {
        dry_run: false,
        verify: false,
        sellers: Vec::new(),
        concurrency,
        progress: ProgressMode::Auto,
    };
    let started = Instant::now();
    let report = importer.import(&legacy, &key, &options).await?;
    let took = started.elapsed();
    legacy.close().await;
    storage.close().await;
    anyhow::ensure!(
        report.summary.failed == 0 && report.summary.skipped == 0,
        "the import left sellers behind: {:?}",
        report.summary
    );
    Ok((took, report.summary.rows_carried))
}

/// The ceiling: the rows import `n` wrote, read back, then one COPY of them into a fresh database.
async fn copy_ceiling(run: &Run, n: usize) -> anyhow::Result<Duration> {
    let source = PgPool::connect(&run.url(&format!("import{n}"))).await?;
    let mut rows = Vec::new();
    {
        let mut conn = source.acquire().await?;
        let sql = format!("COPY (SELECT {COLUMNS} FROM inventory_items) TO STDOUT (FORMAT csv)");
        let mut out = conn.copy_out_raw(&sql).await?;
        while let Some(chunk) = out.try_next().await? {
            rows.extend_from_slice(&chunk);
        }
    }
    source.close().await;
    let target = run.create(&format!("copy{n}"), true).await?;
    sqlx::query("CHECKPOINT").execute(&run.admin).await?;
    let started = Instant::now();
    let mut tx = target.begin().await?;
    let sql = format!("COPY inventory_items ({COLUMNS}) FROM STDIN (FORMAT csv)");
    let mut copy = tx.copy_in_raw(&sql).await?;
    for chunk in rows.chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    tx.commit().await?;
    let took = started.elapsed();
    target.close().await;
    Ok(took)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runs: usize = env_or("BENCH_RUNS", 3);
    let run = Run {
        id: Uuid::new_v4().simple().to_string(),
        admin: PgPool::connect(&format!("{PG}/postgres")).await?,
    };
    let result = measure(&run, runs).await;
    run.clean_up(runs).await;
    result
}

async fn measure(run: &Run, runs: usize) -> anyhow::Result<()> {
    let sellers: usize = env_or("BENCH_SELLERS", 1_000);
    let items: i64 = env_or("BENCH_ITEMS", 1_000);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 4);
    let seed = run.config("none");
    fixture::seed(&seed.storage.mysql_url, &seed.catalog, BLUEPRINTS).await?;
    eprintln!("building the old database: {sellers} sellers x {items} rows …");
    let key = legacy_fixture(run, sellers, items).await?;
    println!(
        "\nlegacy_import bench: {sellers} sellers x {items} rows, {concurrency} sellers at once\n"
    );
    println!(
        "{:<6}{:>12}{:>14}{:>14}{:>12}{:>8}",
        "run", "import s", "rows/s", "COPY s", "COPY rows/s", "ratio"
    );
    let mut ratios = Vec::new();
    for n in 0..runs {
        sqlx::query("CHECKPOINT").execute(&run.admin).await?;
        let (took, rows) = import(run, n, &key, concurrency).await?;
        let ceiling = copy_ceiling(run, n).await?;
        let ratio = ceiling.as_secs_f64() / took.as_secs_f64();
        ratios.push(ratio);
        println!(
            "{:<6}{:>12.1}{:>14.0}{:>14.1}{:>12.0}{:>7.2}x",
            n + 1,
            took.as_secs_f64(),
            rows as f64 / took.as_secs_f64(),
            ceiling.as_secs_f64(),
            rows as f64 / ceiling.as_secs_f64(),
            ratio
        );
    }
    ratios.sort_by(f64::total_cmp);
    if let (Some(min), Some(max)) = (ratios.first(), ratios.last()) {
        let median = ratios[ratios.len() / 2];
        println!(
            "\nimport vs one COPY of its rows: min {min:.2}x, median {median:.2}x, max {max:.2}x"
        );
    }
    Ok(())
}
