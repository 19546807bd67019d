//! The Redis level of the blueprint cache: `{prefix}bp:{id}` holds `m:{table}:{print_id}` for a mapping
//! or `u` for "unmapped". Reads are one MGET, writes one pipeline; any Redis error degrades to MySQL.

use std::{collections::HashMap, sync::Arc, time::Duration};

use deadpool_redis::redis;

use super::{Inner, PrintRef, Resolution};
use crate::domain::BlueprintId;

impl Inner {
    fn key(&self, id: BlueprintId) -> String {
        format!("{}{id}", self.key_prefix)
    }

    /// Answers from Redis, and the ids Redis did not know (all of them while Redis is down).
    pub(super) async fn read_cached(
        &self,
        ids: &[BlueprintId],
    ) -> (HashMap<BlueprintId, Resolution>, Vec<BlueprintId>) {
        let mut found = HashMap::new();
        if !self.redis_outage.should_try() {
            return (found, ids.to_vec());
        }
        let keys: Vec<String> = ids.iter().map(|&id| self.key(id)).collect();
        let mut mget = redis::cmd("MGET");
        mget.arg(&keys);
        let values: Vec<Option<String>> = match self.redis_call(RedisRequest::Command(&mget)).await
        {
            Some(values) => values,
            None => return (found, ids.to_vec()),
        };
        let mut missing = Vec::new();
        let (mut positive, mut negative) = (0, 0);
        for (&id, value) in ids.iter().zip(values) {
            match value.as_deref().and_then(|raw| self.decode(raw)) {
                Some(Resolution::Mapped(print)) => {
                    positive += 1;
                    found.insert(id, Resolution::Mapped(print));
                }
                Some(resolution) => {
                    negative += 1;
                    found.insert(id, resolution);
                }
                None => missing.push(id),
            }
        }
        self.count("redis", positive);
        self.count("negative", negative);
        (found, missing)
    }

    /// Writes MySQL's answers back with jittered TTLs, so entries written together expire apart.
    pub(super) async fn write_cached(&self, answers: &HashMap<BlueprintId, Resolution>) {
        if !self.redis_outage.should_try() {
            return;
        }
        let mut pipeline = redis::pipe();
        for (&id, resolution) in answers {
            let (value, ttl) = match resolution {
                Resolution::Mapped(print) => (
                    format!("m:{}:{}", print.table, print.print_id),
                    self.settings.positive_ttl,
                ),
                Resolution::Unmapped => ("u".to_owned(), self.settings.negative_ttl),
                Resolution::Unknown => continue,
            };
            pipeline
                .cmd("SET")
                .arg(self.key(id))
                .arg(value)
                .arg("EX")
                .arg(jittered_seconds(ttl))
                .ignore();
        }
        let _: Option<()> = self.redis_call(RedisRequest::Pipeline(&pipeline)).await;
    }

    /// Deletes the Redis entries of `ids`; fails while Redis is unreachable.
    pub(super) async fn delete_cached(&self, ids: &[BlueprintId]) -> Result<u64, String> {
        if ids.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = ids.iter().map(|&id| self.key(id)).collect();
        let mut conn = self.redis.get().await.map_err(|err| err.to_string())?;
        redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(|err| err.to_string())
    }

    /// Runs one command or pipeline; `None` (and the outage recorded) when Redis fails.
    pub(super) async fn redis_call<T: redis::FromRedisValue>(
        &self,
        request: RedisRequest<'_>,
    ) -> Option<T> {
        let result = async {
            let mut conn = self.redis.get().await.map_err(|err| err.to_string())?;
            let reply = match request {
                RedisRequest::Command(command) => command.query_async(&mut conn).await,
                RedisRequest::Pipeline(pipeline) => pipeline.query_async(&mut conn).await,
            };
            reply.map_err(|err| err.to_string())
        }
        .await;
        match result {
            Ok(value) => {
                if self.redis_outage.recovered() {
                    tracing::info!("blueprint cache: Redis is back");
                    self.metrics.blueprint_cache_degraded.set(0);
                }
                Some(value)
            }
            Err(error) => {
                if self.redis_outage.failed() {
                    tracing::error!(%error, "blueprint cache: Redis unreachable, using L1 and MySQL only");
                    self.metrics.blueprint_cache_degraded.set(1);
                }
                None
            }
        }
    }

    fn decode(&self, raw: &str) -> Option<Resolution> {
        if raw == "u" {
            return Some(Resolution::Unmapped);
        }
        let (table, print_id) = raw.strip_prefix("m:")?.rsplit_once(':')?;
        let table: Arc<str> = self
            .settings
            .tables
            .iter()
            .find(|known| &***known == table)?
            .clone();
        Some(Resolution::Mapped(PrintRef {
            print_id: print_id.parse().ok()?,
            table,
        }))
    }
}

/// What [`Inner::redis_call`] sends.
pub(super) enum RedisRequest<'a> {
    Command(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline),
}

/// `ttl` ± 10%, in whole seconds (at least one).
pub(super) fn jittered_seconds(ttl: Duration) -> u64 {
    let factor = 0.9 + rand::random::<f64>() * 0.2;
    (ttl.as_secs_f64() * factor).round().max(1.0) as u64
}
