//! Change notices: "job X moved", "purchase Y moved". Watchers of this replica hear them at once;
//! other replicas hear them through a Redis channel, published in batches by a [`ChangeRelay`]. Only
//! hints: a watcher re-reads PostgreSQL when told and on a slow backstop, so a lost notice (Redis
//! down) costs at most one backstop interval.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use deadpool_redis::redis;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Notices waiting for the relay; past this, new ones are dropped (the backstop covers them).
const OUTBOX_CAPACITY: usize = 4_096;
/// Notices sent in one Redis message: one PUBLISH per batch keeps a busy replica's chunk commits
/// from costing one round trip each.
const MAX_BATCH: usize = 256;
/// How long one publish may take before its batch is given up.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// A job's row: its state, progress or cancellation request.
    Job(Uuid),
    /// A purchase's saga: a step was recorded.
    Purchase(Uuid),
}

impl Subject {
    fn encode(self) -> String {
        match self {
            Subject::Job(id) => format!("job {id}"),
            Subject::Purchase(id) => format!("purchase {id}"),
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let (kind, id) = line.split_once(' ')?;
        let id = Uuid::try_parse(id).ok()?;
        match kind {
            "job" => Some(Subject::Job(id)),
            "purchase" => Some(Subject::Purchase(id)),
            _ => None,
        }
    }
}

/// The hub: who watches what on this replica, and the way out to the others. Cheap to clone;
/// [`Changes::default`] reaches this replica only (tests, tools).
#[derive(Clone, Default)]
pub struct Changes {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// One version counter per watched subject; a notice bumps it, and every watcher of the subject
    /// sees the bump even if it was busy when it happened (no lost wake-up between read and wait).
    watched: Mutex<HashMap<Subject, watch::Sender<u64>>>,
    relay: Option<Outbox>,
}

struct Outbox {
    sender: mpsc::Sender<Subject>,
    /// This replica's tag on its messages, so it skips its own notices coming back.
    origin: String,
    channel: String,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("watched", &self.lock().len())
            .field("channel", &self.channel())
            .finish()
    }
}

impl Changes {
    /// A hub whose notices also go to `{key_prefix}changes`, once the returned relay runs.
    pub fn relayed(key_prefix: &str) -> (Self, ChangeRelay) {
        let (sender, outbox) = mpsc::channel(OUTBOX_CAPACITY);
        let origin = Uuid::new_v4().simple().to_string();
        let channel = format!("{key_prefix}changes");
        let relay = ChangeRelay {
            outbox,
            origin: origin.clone(),
            channel: channel.clone(),
        };
        let inner = Inner {
            watched: Mutex::default(),
            relay: Some(Outbox {
                sender,
                origin,
                channel,
            }),
        };
        (
            Self {
                inner: Arc::new(inner),
            },
            relay,
        )
    }

    /// The Redis channel other replicas' notices arrive on, if this hub is relayed.
    pub fn channel(&self) -> Option<&str> {
        self.inner
            .relay
            .as_ref()
            .map(|relay| relay.channel.as_str())
    }

    /// Tells this replica's watchers of `subject`, and the other replicas, that it changed. Never
    /// waits: the relay publishes in the background.
    pub fn publish(&self, subject: Subject) {
        self.notify(subject);
        if let Some(relay) = &self.inner.relay {
            // A full outbox means Redis is slow or down: the watchers' backstop covers the loss.
            let _ = relay.sender.try_send(subject);
        }
    }

    /// Starts watching `subject`. Subscribe before reading it, so a change that lands between the
    /// read and the wait still wakes the watcher.
    pub fn subscribe(&self, subject: Subject) -> Subscription {
        let receiver = self
            .lock()
            .entry(subject)
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe();
        Subscription {
            subject,
            receiver,
            hub: self.clone(),
        }
    }

    /// Subjects watched on this replica now.
    pub fn watched(&self) -> usize {
        self.lock().len()
    }

    /// Applies a message another replica published; this replica's own messages are skipped.
    pub fn deliver(&self, payload: &str) {
        let mut lines = payload.lines();
        let origin = lines.next().unwrap_or_default();
        if self
            .inner
            .relay
            .as_ref()
            .is_some_and(|relay| relay.origin == origin)
        {
            return;
        }
        for subject in lines.filter_map(Subject::parse) {
            self.notify(subject);
        }
    }

    /// Wakes every watcher: notices may have been lost (the subscription to Redis was down).
    pub fn wake_all(&self) {
        for sender in self.lock().values() {
            sender.send_modify(|version| *version = version.wrapping_add(1));
        }
    }

    fn notify(&self, subject: Subject) {
        if let Some(sender) = self.lock().get(&subject) {
            sender.send_modify(|version| *version = version.wrapping_add(1));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Subject, watch::Sender<u64>>> {
        // The map stays consistent whatever a panicking holder did: every operation on it is one call.
        self.inner
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One watcher's interest in one subject; dropping it forgets the subject once nobody else watches.
#[derive(Debug)]
pub struct Subscription {
    subject: Subject,
    receiver: watch::Receiver<u64>,
    hub: Changes,
}

impl Subscription {
    /// Resolves once the subject changed since the last call (or since subscribing).
    pub async fn changed(&mut self) {
        if self.receiver.changed().await.is_err() {
            // The hub keeps the sender while any subscription lives, so this cannot end; waiting
            // for ever is the right answer should it ever do, rather than a busy loop.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watched = self.hub.lock();
        // Under the lock no one can subscribe meanwhile; our own receiver is still counted.
        if watched
            .get(&self.subject)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            watched.remove(&self.subject);
        }
    }
}

/// Publishes a hub's notices on Redis, batched, until shutdown.
#[derive(Debug)]
pub struct ChangeRelay {
    outbox: mpsc::Receiver<Subject>,
    origin: String,
    channel: String,
}

impl ChangeRelay {
    /// Runs until `shutdown`. Redis errors are logged at debug and the batch dropped: notices are
    /// hints.
    pub async fn run(
        mut self,
        redis: deadpool_redis::Pool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = self.outbox.recv() => next,
            };
            let Some(first) = first else {
                // Every hub handle is gone; nothing more will come, but only shutdown ends a part.
                shutdown.cancelled().await;
                return Ok(());
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.outbox.try_recv() {
                    Ok(subject) => batch.push(subject),
                    Err(_) => break,
                }
            }
            // A sync commits chunks faster than watchers need telling: one line per subject.
            batch.sort_unstable();
            batch.dedup();
            let message = self.message(&batch);
            let publish = async {
                let mut conn = redis.get().await.map_err(|err| err.to_string())?;
                redis::cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(&message)
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(|err| err.to_string())
            };
            match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::debug!(%error, "change notices not published"),
                Err(_) => tracing::debug!("change notices not published: Redis too slow"),
            }
        }
    }

    /// The origin on the first line, one subject per line after it.
    fn message(&self, batch: &[Subject]) -> String {
        let mut message = self.origin.clone();
        for subject in batch {
            message.push('\n');
            message.push_str(&subject.encode());
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Subject {
        Subject::Job(Uuid::new_v4())
    }

    #[tokio::test]
    async fn a_change_published_before_the_wait_still_wakes_the_watcher() {
        let hub = Changes::default();
        let subject = job();
        let mut subscription = hub.subscribe(subject);

        hub.publish(subject);

        tokio::time::timeout(Duration::from_secs(1), subscription.changed())
            .await
            .expect("the earlier change is seen");
    }

    #[tokio::test]
    async fn a_change_of_another_subject_does_not_wake_the_watcher() {
        let hub = Changes::default();
        let mut subscription = hub.subscribe(job());

        hub.publish(job());

        let woken = futures::FutureExt::now_or_never(subscription.changed());
        assert!(woken.is_none());
    }

    #[test]
    fn the_last_subscription_dropped_forgets_the_subject() {
        let hub = Changes::default();
        let subject = job();
        let first = hub.subscribe(subject);
        let second = hub.subscribe(subject);

        drop(first);
        assert_eq!(hub.watched(), 1);
        drop(second);
        assert_eq!(hub.watched(), 0);
    }

    #[tokio::test]
    async fn another_replicas_message_wakes_and_our_own_is_skipped() {
        let (hub, relay) = Changes::relayed("t:");
        let (subject, other) = (job(), Subject::Purchase(Uuid::new_v4()));
        let mut subscription = hub.subscribe(subject);
        let mut purchase = hub.subscribe(other);

        hub.deliver(&relay.message(&[subject]));
        assert!(futures::FutureExt::now_or_never(subscription.changed()).is_none());
        hub.deliver(&format!("another-replica\n{}\nnonsense", other.encode()));

        assert!(futures::FutureExt::now_or_never(purchase.changed()).is_some());
        assert!(futures::FutureExt::now_or_never(subscription.changed()).is_none());
    }

    #[test]
    fn subjects_round_trip_through_their_wire_form() {
        for subject in [job(), Subject::Purchase(Uuid::new_v4())] {
            assert_eq!(Subject::parse(&subject.encode()), Some(subject));
        }
        assert_eq!(Subject::parse("job not-a-uuid"), None);
    }
}
