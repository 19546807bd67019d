//! What the scenarios measure besides the jobs themselves: resident memory from `/proc`, PostgreSQL
//! connections from `pg_stat_activity`, latency histograms, and how the numbers are printed.

use std::time::Duration;

use hdrhistogram::Histogram;
use sqlx::{ConnectOptions, Connection, PgConnection, postgres::PgConnectOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `application_name` of the load test's own PostgreSQL connections, which the sampler leaves out.
pub(super) const APPLICATION_NAME: &str = "brx-loadtest";

/// How often `pg_stat_activity` is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// A `kB` field of `/proc/<pid>/status` (`pid` may be `self`), e.g. `VmHWM`, the peak resident set.
pub(super) fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Most connections of the replica seen at once.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ConnectionPeak {
    /// Open connections, idle ones included.
    pub(super) open: i64,
    /// Connections running a statement or inside a transaction.
    pub(super) busy: i64,
}

/// Samples the replica's connections to one database every 100 ms over a connection of its own.
#[derive(Debug)]
pub(super) struct ConnectionSampler {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<ConnectionPeak>>,
}

impl ConnectionSampler {
    /// Connects with `options` (pointing at the load test database) and starts sampling.
    pub(super) async fn start(options: PgConnectOptions, database: &str) -> anyhow::Result<Self> {
        let mut connection = options.application_name(APPLICATION_NAME).connect().await?;
        let stop = CancellationToken::new();
        let (until, database) = (stop.clone(), database.to_owned());
        let task = tokio::spawn(async move {
            let mut peak = ConnectionPeak::default();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            while until.run_until_cancelled(tick.tick()).await.is_some() {
                let (open, busy) = sample(&mut connection, &database).await?;
                peak.open = peak.open.max(open);
                peak.busy = peak.busy.max(busy);
            }
            connection.close().await?;
            Ok(peak)
        });
        Ok(Self { stop, task })
    }

    /// Stops sampling and returns the peaks.
    pub(super) async fn finish(self) -> anyhow::Result<ConnectionPeak> {
        self.stop.cancel();
        self.task.await?
    }
}

/// The replica's connections are all `brx-sync` (its pool and its one health-probe connection); the
/// load test's own connections carry [`APPLICATION_NAME`] and are not counted.
async fn sample(connection: &mut PgConnection, database: &str) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE state <> 'idle') \
         FROM pg_stat_activity WHERE datname = $1 AND application_name = 'brx-sync'",
    )
    .bind(database)
    .fetch_one(connection)
    .await
}

/// Longest span a histogram tracks, in microseconds (a day); `saturating_record` clamps above it.
const HISTOGRAM_MAX_US: u64 = 86_400 * 1_000_000;

/// An empty histogram of microseconds, 1 µs to a day at 3 significant figures.
pub(super) fn histogram() -> Histogram<u64> {
    // Fails only for bounds below 1, a high below twice the low, or more than 5 significant figures.
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("constant bounds are valid")
}

/// `p50 … p99 … max …` of a histogram of microseconds.
pub(super) fn percentiles_us(histogram: &Histogram<u64>) -> String {
    let at = |quantile| millis(histogram.value_at_quantile(quantile));
    format!(
        "p50 {}  p99 {}  max {}",
        at(0.50),
        at(0.99),
        millis(histogram.max())
    )
}

/// `p50 … p90 … p99 … max …` of a histogram of microseconds.
pub(super) fn percentiles_p90_us(histogram: &Histogram<u64>) -> String {
    let at = |quantile| millis(histogram.value_at_quantile(quantile));
    format!(
        "p50 {}  p90 {}  p99 {}  max {}",
        at(0.50),
        at(0.90),
        at(0.99),
        millis(histogram.max())
    )
}

/// Microseconds as milliseconds or seconds, whichever reads better.
pub(super) fn millis(us: u64) -> String {
    match us {
        0..10_000 => format!("{:.2} ms", us as f64 / 1000.0),
        10_000..1_000_000 => format!("{:.0} ms", us as f64 / 1000.0),
        1_000_000..10_000_000 => format!("{:.2} s", us as f64 / 1_000_000.0),
        _ => format!("{:.1} s", us as f64 / 1_000_000.0),
    }
}

/// `1234567` as `1,234,567`.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// KiB as MiB.
pub(super) fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "n/a".into(),
        |kib| format!("{:.0} MiB", kib as f64 / 1024.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn a_histogram_keeps_spans_from_microseconds_to_hours() {
        let mut histogram = histogram();
        histogram.saturating_record(250);
        histogram.saturating_record(3 * 3_600 * 1_000_000);
        assert!(histogram.min() <= 250 && histogram.min() > 240);
        let three_hours = 3 * 3_600 * 1_000_000;
        assert!(histogram.equivalent(histogram.max(), three_hours));
    }

    #[test]
    fn this_process_has_a_peak_resident_set() {
        assert!(proc_status_kib("self", "VmHWM").is_some_and(|kib| kib > 0));
    }
}
