//! The expansion index: which CardTrader expansion each blueprint belongs to, for exports that do not
//! say (the documented `/products/export` has no expansion field). It is learnt from CardTrader's own
//! reference data, `/expansions/export` (the seller's expansions) and `/blueprints/export?expansion_id=`
//! (every blueprint carries its `expansion_id`), through the seller's rate limiter like every call,
//! and kept in L1 and in Redis (`{prefix}bpx:{blueprint}`) for `BRX_EXPANSION_INDEX_TTL`, shared by
//! replicas and sellers: blueprints are the same for everyone and never change expansion.
//! `{prefix}bpxr:{expansion}` records when an expansion's blueprints were last read, so each is read
//! once, and again only after `BRX_EXPANSION_REFRESH_AFTER` when a blueprint is missing.

use std::{
    collections::{HashMap, HashSet},
    time::{SystemTime, UNIX_EPOCH},
};

use deadpool_redis::redis;
use secrecy::SecretString;

use super::{
    BlueprintCatalog, Inner,
    cache::{RedisRequest, jittered_seconds},
};
use crate::marketplace::{CallOptions, MarketplaceClient, MarketplaceError, Seller};

/// Expansions read a second time (after `BRX_EXPANSION_REFRESH_AFTER`) by one lookup at most: a
/// blueprint CardTrader added to an expansion is found within a few syncs, and a seller with a
/// thousand expansions does not re-read them all for one missing blueprint.
const STALE_READS_PER_LOOKUP: usize = 20;

/// One sync's use of the index, as one seller: the seller's expansions are asked once, each
/// expansion is read at most once, and after a CardTrader failure the lookup stops learning (the
/// rows keep the expansion they had) instead of spending the sync's rate on retries.
///
/// It owns what it uses (all cheap clones), so a sync can share it with the futures of its stream.
#[derive(Debug)]
pub struct ExpansionLookup {
    catalog: BlueprintCatalog,
    marketplace: MarketplaceClient,
    seller_key: String,
    token: SecretString,
    options: CallOptions,
    // Held across the CardTrader calls: lookups of one sync run one after the other anyway, and
    // holding it keeps two of them from reading the same expansion.
    session: tokio::sync::Mutex<Session>,
}

#[derive(Debug, Default)]
struct Session {
    /// The seller's expansions, newest (highest id) first, once asked.
    seller_expansions: Option<Vec<i64>>,
    /// Expansions this lookup read, or found CardTrader could not serve.
    read: HashSet<i64>,
    stale_reads: usize,
    gave_up: bool,
}

impl BlueprintCatalog {
    /// A lookup of blueprints' expansions that learns what the index lacks as `seller`, within
    /// `options` (the calling sync's priority and deadline).
    pub fn expansion_lookup(
        &self,
        marketplace: &MarketplaceClient,
        seller: Seller<'_>,
        options: CallOptions,
    ) -> ExpansionLookup {
        ExpansionLookup {
            catalog: self.clone(),
            marketplace: marketplace.clone(),
            seller_key: seller.key.to_owned(),
            token: seller.token.clone(),
            options,
            session: tokio::sync::Mutex::new(Session::default()),
        }
    }
}

impl BlueprintCatalog {
    /// The expansion of each of `blueprints` the index already holds (L1, then Redis), asking
    /// CardTrader nothing; the others are left out.
    pub async fn known_expansions(&self, blueprints: &[i64]) -> HashMap<i64, i64> {
        let inner = &self.inner;
        let mut found = HashMap::with_capacity(blueprints.len());
        let mut misses = Vec::new();
        let mut seen = HashSet::with_capacity(blueprints.len());
        for &id in blueprints {
            if id <= 0 || !seen.insert(id) {
                continue;
            }
            match inner.expansion_l1.get(&id) {
                Some(expansion) => {
                    found.insert(id, expansion);
                }
                None => misses.push(id),
            }
        }
        inner.count_expansions("l1", found.len());
        if misses.is_empty() {
            return found;
        }
        let cached = inner.read_expansions(&misses).await;
        inner.count_expansions("redis", cached.len());
        for (&id, &expansion) in &cached {
            inner.expansion_l1.insert(id, expansion);
        }
        found.extend(cached);
        found
    }
}

impl ExpansionLookup {
    /// The expansion of each of `blueprints` the index knows or can learn; the others are left out.
    pub async fn expansions_of(&self, blueprints: &[i64]) -> HashMap<i64, i64> {
        let inner = &self.catalog.inner;
        let mut found = self.catalog.known_expansions(blueprints).await;
        let mut misses: Vec<i64> = blueprints
            .iter()
            .copied()
            .filter(|id| *id > 0 && !found.contains_key(id))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !misses.is_empty() && inner.settings.expansion_learn {
            let learnt = self.learn(&misses).await;
            inner.count_expansions("cardtrader", learnt.len());
            found.extend(learnt);
            misses.retain(|id| !found.contains_key(id));
        }
        inner.count_expansions("unknown", misses.len());
        found
    }

    /// Reads the seller's expansions not indexed yet (then a few stale ones) until every miss is
    /// found or none is left to read.
    async fn learn(&self, misses: &[i64]) -> HashMap<i64, i64> {
        let mut session = self.session.lock().await;
        let mut wanted: HashSet<i64> = misses.iter().copied().collect();
        let mut learnt = HashMap::new();
        if session.gave_up {
            return learnt;
        }
        let candidates = match self.candidates(&mut session).await {
            Ok(candidates) => candidates,
            Err(error) => {
                self.give_up(&mut session, &error);
                return learnt;
            }
        };
        for (expansion, stale) in candidates {
            if wanted.is_empty() || (stale && session.stale_reads >= STALE_READS_PER_LOOKUP) {
                break;
            }
            session.read.insert(expansion);
            session.stale_reads += usize::from(stale);
            match self.read_expansion(expansion).await {
                Ok(blueprints) => {
                    for (blueprint, expansion) in blueprints {
                        if wanted.remove(&blueprint) {
                            learnt.insert(blueprint, expansion);
                        }
                    }
                }
                // Unknown to CardTrader, or its export not built yet: the others may still answer.
                Err(MarketplaceError::NotFound { .. }) => {}
                Err(error) => {
                    self.give_up(&mut session, &error);
                    break;
                }
            }
        }
        learnt
    }

    /// The seller's expansions this lookup has not read yet and that are worth reading: never read
    /// (first), or read longer ago than the refresh age, each flagged `true` when stale.
    async fn candidates(
        &self,
        session: &mut Session,
    ) -> Result<Vec<(i64, bool)>, MarketplaceError> {
        if session.seller_expansions.is_none() {
            let mut ids: Vec<i64> = self
                .marketplace
                .expansions_export(self.seller(), self.options.clone())
                .await?
                .into_iter()
                .map(|expansion| expansion.id)
                .collect();
            // Newest first: recent sets are where new blueprints (and new listings) appear.
            ids.sort_unstable_by(|a, b| b.cmp(a));
            ids.dedup();
            session.seller_expansions = Some(ids);
        }
        let open: Vec<i64> = session
            .seller_expansions
            .iter()
            .flatten()
            .copied()
            .filter(|expansion| !session.read.contains(expansion))
            .collect();
        let inner = &self.catalog.inner;
        let read_at = inner.expansion_reads(&open).await;
        let refresh_before =
            now_secs().saturating_sub(inner.settings.expansion_refresh_after.as_secs());
        let unread = open
            .iter()
            .filter(|expansion| !read_at.contains_key(expansion))
            .map(|&expansion| (expansion, false));
        let stale = open
            .iter()
            .filter(|expansion| {
                read_at
                    .get(expansion)
                    .is_some_and(|&at| at < refresh_before)
            })
            .map(|&expansion| (expansion, true));
        Ok(unread.chain(stale).collect())
    }

    /// One `/blueprints/export`, recorded in the index; returns (blueprint, expansion) pairs.
    async fn read_expansion(&self, expansion: i64) -> Result<Vec<(i64, i64)>, MarketplaceError> {
        let blueprints = self
            .marketplace
            .blueprints_export(self.seller(), self.options.clone(), expansion)
            .await?;
        let pairs: Vec<(i64, i64)> = blueprints
            .into_iter()
            // Listed under this expansion: that is its expansion when CardTrader sends null.
            .map(|blueprint| (blueprint.id, blueprint.expansion_id.unwrap_or(expansion)))
            .collect();
        self.catalog.inner.write_expansions(expansion, &pairs).await;
        Ok(pairs)
    }

    fn give_up(&self, session: &mut Session, error: &MarketplaceError) {
        session.gave_up = true;
        tracing::warn!(%error, seller = %self.seller_key, "expansion index: CardTrader could not be asked; unknown expansions stay as stored");
    }

    fn seller(&self) -> Seller<'_> {
        Seller {
            key: &self.seller_key,
            token: &self.token,
        }
    }
}

impl Inner {
    fn expansion_key(&self, blueprint: i64) -> String {
        format!("{}bpx:{blueprint}", self.redis_prefix)
    }

    fn expansion_read_key(&self, expansion: i64) -> String {
        format!("{}bpxr:{expansion}", self.redis_prefix)
    }

    /// What Redis knows of these blueprints (nothing while it is down).
    async fn read_expansions(&self, blueprints: &[i64]) -> HashMap<i64, i64> {
        let keys: Vec<String> = blueprints
            .iter()
            .map(|&id| self.expansion_key(id))
            .collect();
        self.mget_numbers(blueprints, keys).await
    }

    /// When each of these expansions was last read (L1, then Redis), in Unix seconds.
    async fn expansion_reads(&self, expansions: &[i64]) -> HashMap<i64, u64> {
        let mut read_at = HashMap::new();
        let mut ask = Vec::new();
        for &expansion in expansions {
            match self.expansion_reads.get(&expansion) {
                Some(at) => {
                    read_at.insert(expansion, at);
                }
                None => ask.push(expansion),
            }
        }
        let keys = ask.iter().map(|&id| self.expansion_read_key(id)).collect();
        for (expansion, at) in self.mget_numbers(&ask, keys).await {
            let at = u64::try_from(at).unwrap_or_default();
            self.expansion_reads.insert(expansion, at);
            read_at.insert(expansion, at);
        }
        read_at
    }

    /// Records one expansion's blueprints and when they were read, here and in Redis.
    async fn write_expansions(&self, expansion: i64, pairs: &[(i64, i64)]) {
        let now = now_secs();
        for &(blueprint, its_expansion) in pairs {
            self.expansion_l1.insert(blueprint, its_expansion);
        }
        self.expansion_reads.insert(expansion, now);
        if !self.redis_outage.should_try() {
            return;
        }
        let ttl = self.settings.expansion_ttl;
        let mut pipeline = redis::pipe();
        for &(blueprint, its_expansion) in pairs {
            pipeline
                .cmd("SET")
                .arg(self.expansion_key(blueprint))
                .arg(its_expansion)
                .arg("EX")
                .arg(jittered_seconds(ttl))
                .ignore();
        }
        // Written last: a replica that sees the read time also finds the entries.
        pipeline
            .cmd("SET")
            .arg(self.expansion_read_key(expansion))
            .arg(now)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .ignore();
        let _: Option<()> = self.redis_call(RedisRequest::Pipeline(&pipeline)).await;
    }

    /// One MGET of integer values, paired with `ids` in order; unreadable values count as absent.
    async fn mget_numbers(&self, ids: &[i64], keys: Vec<String>) -> HashMap<i64, i64> {
        if ids.is_empty() || !self.redis_outage.should_try() {
            return HashMap::new();
        }
        let mut mget = redis::cmd("MGET");
        mget.arg(keys);
        let values: Option<Vec<Option<String>>> =
            self.redis_call(RedisRequest::Command(&mget)).await;
        ids.iter()
            .zip(values.unwrap_or_default())
            .filter_map(|(&id, value)| Some((id, value?.parse().ok()?)))
            .collect()
    }

    fn count_expansions(&self, level: &str, lookups: usize) {
        if lookups > 0 {
            self.metrics
                .expansion_lookups
                .with_label_values(&[level])
                .inc_by(lookups as u64);
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}
