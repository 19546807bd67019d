//! The clock of the periodic background rounds (scheduler, push re-queuer, retention): one round per
//! interval, the first one interval after start, so a rolling restart of N replicas does not run N
//! rounds back to back; a slow round delays the next instead of bunching them.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Ticks once per interval until shutdown.
#[derive(Debug)]
pub struct Rounds {
    every: tokio::time::Interval,
}

impl Rounds {
    /// Rounds `interval` apart (which must be above zero; config validation sees to it).
    pub fn every(interval: Duration) -> Self {
        let first = tokio::time::Instant::now() + interval;
        let mut every = tokio::time::interval_at(first, interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { every }
    }

    /// Waits for the next round: `true` when it is due, `false` once `shutdown` fired.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = shutdown.cancelled() => false,
            _ = self.every.tick() => true,
        }
    }
}
