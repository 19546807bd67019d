//! The ceiling: `GET /livez` on the same side port, which does no work, sent back to back by as many
//! senders as the closed loop has over the same kind of client, for as long: what the HTTP stack,
//! the client and this box answer at most, before any signature check or database write.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::senders;
use crate::loadtest::{measure, rig::Rig};

/// What the ceiling measured.
#[derive(Debug)]
pub(super) struct Ceiling {
    pub(super) senders: u32,
    /// Latency of every answer, µs.
    pub(super) latency: Histogram<u64>,
    /// Answers by status.
    pub(super) statuses: BTreeMap<String, u64>,
    /// First request → last answer.
    pub(super) wall: Duration,
}

impl Ceiling {
    /// Answers 200 per second.
    pub(super) fn rate(&self) -> f64 {
        let ok = self.statuses.get("200").copied().unwrap_or(0);
        ok as f64 / self.wall.as_secs_f64().max(f64::EPSILON)
    }
}

/// `senders` callers of `GET /livez`, each sending its next request when the previous answered,
/// for `duration`.
pub(super) async fn measure(
    rig: &Rig,
    senders: u32,
    duration: Duration,
) -> anyhow::Result<Ceiling> {
    let client = senders::client(senders)?;
    // The admin listener's /livez: the same process and HTTP stack, with nothing behind it.
    let url = format!("http://{}/livez", rig.admin_addr);
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..senders {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            let mut latency = measure::histogram();
            let mut statuses = BTreeMap::<String, u64>::new();
            while Instant::now() < until {
                let sent = Instant::now();
                let status = senders::answer(client.get(&url)).await;
                let took = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                latency.saturating_record(took);
                *statuses.entry(status).or_default() += 1;
            }
            (latency, statuses)
        });
    }
    let mut ceiling = Ceiling {
        senders,
        latency: measure::histogram(),
        statuses: BTreeMap::new(),
        wall: Duration::ZERO,
    };
    while let Some(joined) = tasks.join_next().await {
        let (latency, statuses) = joined?;
        ceiling.latency.add(&latency)?;
        for (status, count) in statuses {
            *ceiling.statuses.entry(status).or_default() += count;
        }
    }
    ceiling.wall = started.elapsed();
    Ok(ceiling)
}
