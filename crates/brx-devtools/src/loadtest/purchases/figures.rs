//! The figures of a phase read from outside the buyers: the purchase jobs' queue and run times, the
//! simulator's request counts, and the replica's purchase counters.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use sqlx::PgPool;

use super::Phase;
use crate::loadtest::{measure, rig::Rig, simulator::SimStats};
use brx_sync::metrics;

/// Where the phase's purchases spent their time on the replica, from the jobs that drove them, µs.
#[derive(Debug)]
pub(super) struct JobSpans {
    /// Reserved → a worker slot took the job.
    pub(super) queued: Histogram<u64>,
    /// First taken → ended (retries and their backoff included).
    pub(super) running: Histogram<u64>,
}

impl JobSpans {
    pub(super) async fn read(pool: &PgPool, phase: Phase) -> anyhow::Result<Self> {
        let rows: Vec<(Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT (extract(epoch FROM j.started_at - j.created_at) * 1e6)::bigint, \
                    (extract(epoch FROM j.finished_at - j.started_at) * 1e6)::bigint \
             FROM jobs j JOIN purchases p ON p.id = (j.payload->>'purchase_id')::uuid \
             WHERE j.kind = $1 AND p.idempotency_key LIKE $2",
        )
        .bind(brx_sync::jobs::KindName::Purchase.as_str())
        .bind(format!("{}-%", phase.key_prefix()))
        .fetch_all(pool)
        .await?;
        let mut spans = Self {
            queued: measure::histogram(),
            running: measure::histogram(),
        };
        for (queued, running) in rows {
            if let Some(queued) = queued {
                spans.queued.saturating_record(queued.max(0).unsigned_abs());
            }
            if let Some(running) = running {
                spans
                    .running
                    .saturating_record(running.max(0).unsigned_abs());
            }
        }
        Ok(spans)
    }
}

/// The CardTrader requests of a phase, as the simulator counted them.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Traffic {
    pub(super) requests: u64,
    pub(super) rejected_429: u64,
    /// Requests of the seller that sent the most.
    pub(super) busiest: u64,
}

impl Traffic {
    pub(super) fn between(before: &[SimStats], after: &[SimStats]) -> Self {
        let mut traffic = Self::default();
        for (before, after) in before.iter().zip(after) {
            let requests = after.requests.saturating_sub(before.requests);
            traffic.requests += requests;
            traffic.rejected_429 += after.rejected_429.saturating_sub(before.rejected_429);
            traffic.busiest = traffic.busiest.max(requests);
        }
        traffic
    }
}

/// The replica's purchase counters, by label value.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// `brx_purchases_total` by outcome.
    pub(super) purchases: BTreeMap<String, u64>,
    /// `brx_purchase_compensations_total` by how the line was given back.
    pub(super) compensations: BTreeMap<String, u64>,
}

impl Counters {
    pub(super) async fn read(rig: &Rig) -> anyhow::Result<Self> {
        let text = rig.metrics().await?;
        Ok(Self {
            purchases: counter(&text, metrics::PURCHASES_TOTAL, "outcome"),
            compensations: counter(&text, metrics::PURCHASE_COMPENSATIONS_TOTAL, "by"),
        })
    }

    /// What was counted since `earlier`.
    pub(super) fn since(self, earlier: &Counters) -> Self {
        let minus = |now: BTreeMap<String, u64>, then: &BTreeMap<String, u64>| {
            now.into_iter()
                .map(|(label, value)| {
                    let before = then.get(&label).copied().unwrap_or(0);
                    (label, value.saturating_sub(before))
                })
                .collect()
        };
        Self {
            purchases: minus(self.purchases, &earlier.purchases),
            compensations: minus(self.compensations, &earlier.compensations),
        }
    }
}

/// The values of a counter with one label, from the Prometheus text format
/// (`name{label="value"} 12`).
fn counter(text: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{name}{{{label}=\"");
    text.lines()
        .filter_map(|line| {
            let (value, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
            let count: f64 = count.trim().parse().ok()?;
            Some((value.to_owned(), count as u64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_is_read_by_label_from_the_exposition() {
        let text = "# HELP brx_purchases_total Purchases that ended, by outcome.\n\
                    # TYPE brx_purchases_total counter\n\
                    brx_purchases_total{outcome=\"completed\"} 8240\n\
                    brx_purchases_total{outcome=\"failed\"} 3\n\
                    brx_purchases_total_other{outcome=\"failed\"} 9\n";
        let values = counter(text, "brx_purchases_total", "outcome");
        assert_eq!(values.len(), 2);
        assert_eq!(values["completed"], 8240);
        assert_eq!(values["failed"], 3);
    }
}
