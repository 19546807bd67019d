//! Server streams (WatchSync, WatchPurchase) under limits of their own, since the concurrency and
//! deadline layers only see a stream until its first message: a bounded number open per replica and
//! per caller (`RESOURCE_EXHAUSTED` beyond), a maximum lifetime, an immediate end at shutdown (both
//! `UNAVAILABLE` with `retry-after-ms`: watch again), and re-reads driven by change notices with a
//! slow backstop instead of polling PostgreSQL.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use futures::{Stream, future::BoxFuture};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{
    auth::{self, Caller},
    status,
};
use crate::{
    config::ServerConfig,
    jobs::wake::{Changes, Subject, Subscription},
    metrics::Metrics,
};

/// Least time between two re-reads of one stream: a sync committing many small chunks a second would
/// otherwise cost one read per chunk per watcher, and four updates a second is plenty to watch.
const MIN_REREAD_GAP: Duration = Duration::from_millis(250);
/// Stands in for "never" where a configured duration would overflow an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);

/// A boxed server stream, as the generated services take it.
pub(crate) type BoxedStream<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>;

/// The bounds and timings of server streams.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamSettings {
    max_open: usize,
    max_per_caller: usize,
    lifetime: Duration,
    recheck: Duration,
    retry_after: Duration,
}

impl StreamSettings {
    /// From `BRX_MAX_STREAMS*`, `BRX_STREAM_*`; refusals and ends carry `BRX_RPC_SHED_RETRY_AFTER`.
    pub(crate) fn from_config(config: &ServerConfig) -> Self {
        Self {
            max_open: config.max_streams as usize,
            max_per_caller: config.max_streams_per_caller as usize,
            lifetime: config.stream_max_lifetime,
            recheck: config.stream_recheck_interval,
            retry_after: config.rpc_shed_retry_after,
        }
    }
}

/// The open streams of this replica. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Streams {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    settings: StreamSettings,
    open: Arc<Semaphore>,
    /// Open streams per caller key; a caller without one has no entry.
    callers: Mutex<HashMap<String, usize>>,
    changes: Changes,
    shutdown: CancellationToken,
    metrics: Metrics,
}

impl Streams {
    /// Streams woken by `changes`, ended at once when `shutdown` is cancelled.
    pub(crate) fn new(
        settings: StreamSettings,
        changes: Changes,
        shutdown: CancellationToken,
        metrics: Metrics,
    ) -> Self {
        let shared = Shared {
            open: Arc::new(Semaphore::new(settings.max_open)),
            settings,
            callers: Mutex::default(),
            changes,
            shutdown,
            metrics,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Admits one more stream of `method` for the request's caller, or refuses it with
    /// `RESOURCE_EXHAUSTED` when the caller's or the replica's bound is reached. Call it before any
    /// read, so a refusal costs no database work.
    pub(crate) fn admit<T>(
        &self,
        request: &tonic::Request<T>,
        method: &'static str,
    ) -> Result<Admitted, Status> {
        let shared = &self.shared;
        if shared.shutdown.is_cancelled() {
            return Err(status::unavailable(
                "SHUTTING_DOWN",
                "the server is shutting down; watch again",
                shared.settings.retry_after,
            ));
        }
        let caller = caller_key(auth::caller(request)?);
        let mut callers = shared.callers();
        let refuse = |limit: &str, message: &str| {
            shared
                .metrics
                .streams_refused
                .with_label_values(&[method, limit])
                .inc();
            status::resource_exhausted("STREAM_LIMIT", message, shared.settings.retry_after)
        };
        if callers.get(&caller).copied().unwrap_or(0) >= shared.settings.max_per_caller {
            return Err(refuse(
                "caller",
                "this caller has as many streams open on this replica as it may",
            ));
        }
        let Ok(permit) = shared.open.clone().try_acquire_owned() else {
            return Err(refuse(
                "replica",
                "this replica has as many streams open as it may",
            ));
        };
        *callers.entry(caller.clone()).or_default() += 1;
        drop(callers);
        shared
            .metrics
            .streams_open
            .with_label_values(&[method])
            .inc();
        Ok(Admitted {
            shared: shared.clone(),
            caller,
            method,
            expires: later(Instant::now(), shared.settings.lifetime),
            _permit: permit,
        })
    }
}

impl Shared {
    fn callers(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // Every change to the map is a single step, so a panicking holder cannot leave it half-done.
        self.callers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whom a stream counts against: a token's subject (sellers and services alike); with auth off
/// every caller is one.
fn caller_key(caller: &Caller) -> String {
    match caller {
        Caller::Seller(user) => format!("seller:{user}"),
        Caller::Service { subject } => format!("service:{subject}"),
        Caller::Unauthenticated => "unauthenticated".to_owned(),
    }
}

/// An admitted stream's slots, held until it is dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    shared: Arc<Shared>,
    caller: String,
    method: &'static str,
    expires: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Admitted {
    /// Starts listening for changes of `subject`: do it before the first read, so a change landing
    /// between that read and the first wait still wakes the stream.
    pub(crate) fn subscribe(&self, subject: Subject) -> Subscription {
        self.shared.changes.subscribe(subject)
    }

    /// The stream: `first` at once, then what `source` reads after each change notice (or backstop),
    /// whenever it looks different, until it is terminal, the lifetime runs out or the server stops.
    pub(crate) fn follow<T, M>(
        self,
        subscription: Subscription,
        first: T,
        source: Source<T, M>,
    ) -> BoxedStream<M>
    where
        T: Send + 'static,
        M: Clone + PartialEq + Send + 'static,
    {
        let follower = Follower {
            subscription,
            source,
            fetched: Some(first),
            last_sent: None,
            ended: None,
            last_read: Instant::now(),
            admitted: self,
        };
        Box::pin(futures::stream::unfold(
            follower,
            |mut follower| async move {
                let item = follower.next().await?;
                Some((item, follower))
            },
        ))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut callers = self.shared.callers();
        if let Some(count) = callers.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                callers.remove(&self.caller);
            }
        }
        self.shared
            .metrics
            .streams_open
            .with_label_values(&[self.method])
            .dec();
    }
}

/// How a stream reads what it watches and shows it.
pub(crate) struct Source<T, M> {
    /// Reads the watched row afresh.
    pub(crate) read: Box<dyn Fn() -> BoxFuture<'static, Result<T, Status>> + Send + Sync>,
    /// What the caller is sent; equal messages are sent once.
    pub(crate) encode: fn(&T) -> M,
    /// Whether nothing more will change: the stream ends after sending it.
    pub(crate) is_terminal: fn(&T) -> bool,
}

/// Why a stream was cut short.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Shutdown,
    Lifetime,
}

struct Follower<T, M> {
    admitted: Admitted,
    subscription: Subscription,
    source: Source<T, M>,
    /// Read but not yet looked at.
    fetched: Option<T>,
    last_sent: Option<M>,
    /// Why the stream ended, once it has (the `reason` label of the ended counter).
    ended: Option<&'static str>,
    last_read: Instant,
}

impl<T, M: Clone + PartialEq> Follower<T, M> {
    /// The next message, or the status that ends the stream, or `None` once it has ended.
    async fn next(&mut self) -> Option<Result<M, Status>> {
        loop {
            if let Some(item) = self.fetched.take() {
                let message = (self.source.encode)(&item);
                if (self.source.is_terminal)(&item) {
                    self.ended = Some("finished");
                }
                if self.last_sent.as_ref() != Some(&message) {
                    self.last_sent = Some(message.clone());
                    return Some(Ok(message));
                }
            }
            if self.ended.is_some() {
                return None;
            }
            match self.wait_and_read().await {
                Ok(item) => self.fetched = Some(item),
                Err(status) => return Some(Err(status)),
            }
        }
    }

    /// Waits for a change notice (or the backstop), then reads; a shutdown or the end of the
    /// lifetime cuts in at any point.
    async fn wait_and_read(&mut self) -> Result<T, Status> {
        let shared = self.admitted.shared.clone();
        let expires = self.admitted.expires;
        let cut = || cut_short(&shared.shutdown, expires);
        let woken = tokio::select! {
            biased;
            cut = cut() => Err(cut),
            () = self.subscription.changed() => Ok("notice"),
            () = sleep_until(later(self.last_read, shared.settings.recheck)) => Ok("backstop"),
        };
        let cause = woken.map_err(|cut| self.end(cut))?;
        tokio::select! {
            biased;
            cut = cut() => return Err(self.end(cut)),
            () = sleep_until(self.last_read + MIN_REREAD_GAP) => {}
        }
        self.last_read = Instant::now();
        shared
            .metrics
            .stream_rereads
            .with_label_values(&[self.admitted.method, cause])
            .inc();
        let read = tokio::select! {
            biased;
            cut = cut() => Err(cut),
            read = (self.source.read)() => Ok(read),
        };
        match read.map_err(|cut| self.end(cut))? {
            Ok(item) => Ok(item),
            Err(status) => {
                self.ended = Some("error");
                Err(status)
            }
        }
    }

    fn end(&mut self, cut: Cut) -> Status {
        let retry_after = self.admitted.shared.settings.retry_after;
        match cut {
            Cut::Shutdown => {
                self.ended = Some("shutdown");
                status::unavailable(
                    "SHUTTING_DOWN",
                    "the server is shutting down; watch again",
                    retry_after,
                )
            }
            Cut::Lifetime => {
                self.ended = Some("lifetime");
                status::unavailable(
                    "STREAM_LIFETIME",
                    "the stream reached its maximum lifetime; watch again",
                    retry_after,
                )
            }
        }
    }
}

impl<T, M> Drop for Follower<T, M> {
    fn drop(&mut self) {
        // Dropped before it ended: the caller went away.
        let reason = self.ended.unwrap_or("cancelled");
        self.admitted
            .shared
            .metrics
            .streams_ended
            .with_label_values(&[self.admitted.method, reason])
            .inc();
    }
}

/// Resolves when the server shuts down or the stream's lifetime ends, whichever comes first.
async fn cut_short(shutdown: &CancellationToken, expires: Instant) -> Cut {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => Cut::Shutdown,
        () = sleep_until(expires) => Cut::Lifetime,
    }
}

/// `from + by`, or far in the future when that would overflow.
fn later(from: Instant, by: Duration) -> Instant {
    from.checked_add(by)
        .unwrap_or_else(|| from + FAR_FUTURE.min(by))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_caller_has_a_key_of_its_own() {
        let seller = crate::domain::UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
        let keys = [
            caller_key(&Caller::Seller(seller)),
            caller_key(&Caller::Service {
                subject: seller.to_string(),
            }),
            caller_key(&Caller::Unauthenticated),
        ];
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
    }

    #[test]
    fn a_huge_duration_does_not_overflow_the_clock() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
    }
}
