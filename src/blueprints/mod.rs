//! The shop's print for each CardTrader blueprint, from the read-only MySQL catalogue behind two caches:
//! an in-process L1 (moka) and Redis (one MGET per call). Misses go to MySQL as one `UNION ALL … IN (…)`
//! query, concurrent misses of the same ids share that query, and answers are written back with jittered
//! TTLs. Without Redis it runs on L1 + MySQL; without MySQL it answers from the caches and reports the
//! rest as unknown (not "unmapped"), so callers can store them unmapped and retry later. Also the
//! CardTrader expansion of each blueprint ([`ExpansionLookup`]), behind the same two caches.

mod cache;
mod catalogue;
mod expansions;
pub mod fixture;

pub use expansions::ExpansionLookup;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};

use crate::{config::CatalogConfig, domain::BlueprintId, metrics::Metrics, storage::RedisOutage};

/// How long an unreachable Redis is left alone before the cache tries it again.
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Expansions whose read time L1 keeps: CardTrader has about 4,000 in all.
const EXPANSION_READS_CAPACITY: u64 = 20_000;

/// A print of the shop's catalogue: its id, and the table it lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrintRef {
    /// The print's id in its table.
    pub print_id: i64,
    /// The catalogue table, e.g. `cards_prints`.
    pub table: Arc<str>,
}

/// What the catalogue says about one blueprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The shop sells this blueprint as this print.
    Mapped(PrintRef),
    /// The catalogue has no print for it (cached briefly: prints get added).
    Unmapped,
    /// MySQL could not be asked and no cache knew: ask again later.
    Unknown,
}

/// The catalogue's settings, from `BRX_CATALOG_*`.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    tables: Vec<Arc<str>>,
    id_column: String,
    blueprint_column: String,
    batch_size: usize,
    acquire_timeout: Duration,
    positive_ttl: Duration,
    negative_ttl: Duration,
    query_timeout: Duration,
    expansion_learn: bool,
    expansion_ttl: Duration,
    expansion_refresh_after: Duration,
}

impl CatalogSettings {
    /// From the validated configuration.
    pub fn from_config(config: &CatalogConfig) -> Self {
        Self {
            tables: config
                .tables
                .iter()
                .map(|table| Arc::from(table.as_str()))
                .collect(),
            id_column: config.id_column.clone(),
            blueprint_column: config.blueprint_column.clone(),
            batch_size: config.batch_size as usize,
            acquire_timeout: config.mysql_acquire_timeout,
            positive_ttl: config.positive_ttl,
            negative_ttl: config.negative_ttl,
            query_timeout: config.query_timeout,
            expansion_learn: config.expansion_learn,
            expansion_ttl: config.expansion_index_ttl,
            expansion_refresh_after: config.expansion_refresh_after,
        }
    }
}

type Batch = Shared<BoxFuture<'static, Arc<HashMap<BlueprintId, Resolution>>>>;

/// The catalogue; cheap to clone.
#[derive(Clone)]
pub struct BlueprintCatalog {
    inner: Arc<Inner>,
}

struct Inner {
    mysql: mysql_async::Pool,
    redis: deadpool_redis::Pool,
    /// The deployment's prefix of every Redis key.
    redis_prefix: String,
    key_prefix: String,
    l1: moka::sync::Cache<BlueprintId, Resolution>,
    /// Blueprint → expansion, see [`ExpansionLookup`].
    expansion_l1: moka::sync::Cache<i64, i64>,
    /// Expansion → when its blueprints were last read (Unix seconds).
    expansion_reads: moka::sync::Cache<i64, u64>,
    in_flight: Mutex<HashMap<BlueprintId, Batch>>,
    redis_outage: RedisOutage,
    settings: CatalogSettings,
    metrics: Metrics,
}

impl std::fmt::Debug for BlueprintCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlueprintCatalog")
            .field("l1_entries", &self.inner.l1.entry_count())
            .field("redis_degraded", &self.redis_degraded())
            .finish_non_exhaustive()
    }
}

impl BlueprintCatalog {
    /// A catalogue over these pools; Redis keys go under `key_prefix`.
    pub fn new(
        config: &CatalogConfig,
        mysql: mysql_async::Pool,
        redis: deadpool_redis::Pool,
        key_prefix: &str,
        metrics: Metrics,
    ) -> Self {
        let l1 = moka::sync::Cache::builder()
            .max_capacity(config.l1_capacity)
            .time_to_live(config.l1_ttl)
            .build();
        // Blueprints never change expansion: the L1 keeps entries as long as Redis does.
        let expansion_l1 = moka::sync::Cache::builder()
            .max_capacity(config.l1_capacity)
            .time_to_live(config.expansion_index_ttl)
            .build();
        let expansion_reads = moka::sync::Cache::builder()
            .max_capacity(EXPANSION_READS_CAPACITY)
            .time_to_live(config.expansion_index_ttl)
            .build();
        Self {
            inner: Arc::new(Inner {
                mysql,
                redis,
                redis_prefix: key_prefix.to_owned(),
                key_prefix: format!("{key_prefix}bp:"),
                l1,
                expansion_l1,
                expansion_reads,
                in_flight: Mutex::new(HashMap::new()),
                redis_outage: RedisOutage::new(REDIS_RETRY_AFTER),
                settings: CatalogSettings::from_config(config),
                metrics,
            }),
        }
    }

    /// Resolves every id; ids still unresolved at `deadline` come back [`Resolution::Unknown`].
    ///
    /// Each level's answers are the caller's as soon as that level gave them: only the MySQL step
    /// runs against the deadline, so a catalogue that hangs (or a batch started by a caller with a
    /// later deadline) costs the ids that needed MySQL, never the ones L1 or Redis answered.
    pub async fn resolve_many(
        &self,
        ids: &[BlueprintId],
        deadline: Instant,
    ) -> HashMap<BlueprintId, Resolution> {
        let mut answers = HashMap::with_capacity(ids.len());
        let mut misses = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for &id in ids {
            if !seen.insert(id) {
                continue;
            }
            match self.inner.l1.get(&id) {
                Some(resolution) => {
                    answers.insert(id, resolution);
                }
                None => misses.push(id),
            }
        }
        self.inner.count("l1", answers.len());
        if misses.is_empty() {
            return answers;
        }
        let cached =
            tokio::time::timeout_at(deadline.into(), self.inner.read_cached(&misses)).await;
        if let Ok((found, missing)) = cached {
            for (id, resolution) in found {
                self.inner.l1.insert(id, resolution.clone());
                answers.insert(id, resolution);
            }
            misses = missing;
        }
        if misses.is_empty() {
            return answers;
        }
        let batches = self.join_or_start(&misses, deadline, &mut answers);
        let loaded = tokio::time::timeout_at(deadline.into(), futures::future::join_all(batches))
            .await
            .unwrap_or_default();
        for id in misses {
            answers.entry(id).or_insert_with(|| {
                loaded
                    .iter()
                    .find_map(|batch| batch.get(&id).cloned())
                    .unwrap_or(Resolution::Unknown)
            });
        }
        answers
    }

    /// Forgets cached answers for `ids` here and in Redis (other replicas' L1 entries expire within
    /// `BRX_CATALOG_L1_TTL`). Returns how many Redis entries existed.
    pub async fn invalidate(&self, ids: &[BlueprintId]) -> Result<u64, String> {
        for id in ids {
            self.inner.l1.invalidate(id);
        }
        self.inner.delete_cached(ids).await
    }

    /// Whether the cache is running without Redis.
    pub fn redis_degraded(&self) -> bool {
        self.inner.redis_outage.is_active()
    }

    /// Registers the misses nobody is loading yet as one new MySQL batch, and joins the batches
    /// already loading the others, so concurrent callers share one MySQL query per id. A miss that a
    /// batch finished loading since the caller looked at L1 is answered from L1 into `answers`
    /// (batches fill L1 before they leave `in_flight`).
    fn join_or_start(
        &self,
        misses: &[BlueprintId],
        deadline: Instant,
        answers: &mut HashMap<BlueprintId, Resolution>,
    ) -> Vec<Batch> {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut joined: Vec<Batch> = Vec::new();
        let mut fresh = Vec::new();
        for id in misses {
            match in_flight.get(id) {
                Some(batch) if !joined.iter().any(|known| known.ptr_eq(batch)) => {
                    joined.push(batch.clone())
                }
                Some(_) => {}
                None => match self.inner.l1.get(id) {
                    Some(resolution) => {
                        answers.insert(*id, resolution);
                    }
                    None => fresh.push(*id),
                },
            }
        }
        if !fresh.is_empty() {
            let batch = self
                .inner
                .clone()
                .load(fresh.clone(), deadline)
                .boxed()
                .shared();
            for id in fresh {
                in_flight.insert(id, batch.clone());
            }
            // Driven by a task of its own, so it runs to its end (and leaves `in_flight`) even when
            // every caller waiting on it gave up at its deadline.
            tokio::spawn(batch.clone());
            joined.push(batch);
        }
        joined
    }
}

impl Inner {
    /// One batch of ids neither L1 nor Redis knew: MySQL, then write-back to Redis and L1.
    async fn load(
        self: Arc<Self>,
        ids: Vec<BlueprintId>,
        deadline: Instant,
    ) -> Arc<HashMap<BlueprintId, Resolution>> {
        let loaded = self.query_catalogue(&ids, deadline).await;
        self.write_cached(&loaded).await;
        for (id, resolution) in &loaded {
            if *resolution != Resolution::Unknown {
                self.l1.insert(*id, resolution.clone());
            }
        }
        // Only after L1 holds the answers, so a caller arriving now finds them there.
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for id in &ids {
            in_flight.remove(id);
        }
        Arc::new(loaded)
    }

    fn count(&self, level: &str, lookups: usize) {
        if lookups > 0 {
            self.metrics
                .blueprint_lookups
                .with_label_values(&[level])
                .inc_by(lookups as u64);
        }
    }
}
