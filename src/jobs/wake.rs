//! Wake-ups: a newly queued job is announced on a Redis channel, so the idle workers of every replica
//! claim it at once instead of at their next poll. Only a hint: a lost message (Redis down, a replica
//! reconnecting) costs at most one poll interval, because polling stays the backstop. The same
//! subscription carries [`Changes`] notices that wake the watchers of a job or a purchase.

mod changes;

pub use changes::{ChangeRelay, Changes, Subject, Subscription};

use std::{collections::HashMap, sync::Arc, time::Duration};

use deadpool_redis::redis;
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Lane;

/// How long an announcement may take before it is given up (the poll will find the job anyway).
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest pause between attempts to resubscribe while Redis is unreachable.
const RESUBSCRIBE_MAX_DELAY: Duration = Duration::from_secs(10);

/// Announces queued jobs and wakes this replica's workers, locally at once and on other replicas
/// through Redis pub/sub. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JobWakeups {
    redis: deadpool_redis::Pool,
    channel: String,
    local: Arc<HashMap<Lane, Arc<Notify>>>,
    changes: Changes,
}

impl JobWakeups {
    /// Wake-ups on `{key_prefix}jobs:wake` for the workers whose wakers are in `local`.
    pub fn new(
        redis: deadpool_redis::Pool,
        key_prefix: &str,
        local: HashMap<Lane, Arc<Notify>>,
    ) -> Self {
        Self {
            redis,
            channel: format!("{key_prefix}jobs:wake"),
            local: Arc::new(local),
            changes: Changes::default(),
        }
    }

    /// These wake-ups, also delivering other replicas' change notices to `changes`.
    pub fn with_changes(self, changes: Changes) -> Self {
        Self { changes, ..self }
    }

    /// The change notices hub (this replica's only, unless set by [`Self::with_changes`]).
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// Wakes this replica's worker of `lane` now and publishes the hint for the others, in the
    /// background: the caller (an RPC) never waits on Redis.
    pub fn announce(&self, lane: Lane) {
        self.wake_local(lane);
        let (redis, channel) = (self.redis.clone(), self.channel.clone());
        tokio::spawn(async move {
            let publish = async {
                let mut conn = redis.get().await.map_err(|err| err.to_string())?;
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(lane.as_str())
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(|err| err.to_string())
            };
            match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::debug!(%error, "job wake-up not published"),
                Err(_) => tracing::debug!("job wake-up not published: Redis too slow"),
            }
        });
    }

    fn wake_local(&self, lane: Lane) {
        if let Some(notify) = self.local.get(&lane) {
            // notify_one keeps a permit when the worker is busy claiming, so the hint is not lost.
            notify.notify_one();
        }
    }

    /// Listens on the channel until `shutdown`, waking local workers for every announcement,
    /// resubscribing with backoff whenever the connection drops.
    pub async fn listen(
        self,
        redis_url: SecretString,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let client = redis::Client::open(redis_url.expose_secret())?;
        let fresh_backoff =
            || crate::retry::full_jitter(Duration::from_millis(200), RESUBSCRIBE_MAX_DELAY, None);
        let mut backoff = fresh_backoff();
        loop {
            let listened = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                result = self.listen_once(&client) => result,
            };
            match listened {
                // The subscription worked until the connection closed: start the backoff over.
                Ok(()) => backoff = fresh_backoff(),
                Err(error) => {
                    tracing::debug!(%error, "job wake-up subscription failed; polling covers the gap")
                }
            }
            let pause = backoff.next().unwrap_or(RESUBSCRIBE_MAX_DELAY);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn listen_once(&self, client: &redis::Client) -> redis::RedisResult<()> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&self.channel).await?;
        if let Some(channel) = self.changes.channel() {
            pubsub.subscribe(channel).await?;
            // Notices published while the subscription was down are lost: every watcher re-reads.
            self.changes.wake_all();
        }
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let payload: String = message.get_payload().unwrap_or_default();
            if message.get_channel_name() == self.channel {
                if let Some(lane) = Lane::parse(&payload) {
                    self.wake_local(lane);
                }
            } else {
                self.changes.deliver(&payload);
            }
        }
        Ok(())
    }
}
