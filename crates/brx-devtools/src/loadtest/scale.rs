//! The scale scenario: every seller's full sync started at once, then throughput, job latency, peak
//! RSS and PostgreSQL connections, next to what the old Python service managed.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use super::{
    LoadtestArgs,
    measure::{self, ConnectionPeak, ConnectionSampler, mib, thousands},
    rig::Rig,
    simulator::SimStats,
};
use crate::demo::with_bearer;
use brx_sync::api::status::RETRY_AFTER_MS;
use brx_sync::config::Config;
use brx_sync::domain::UserId;
use brx_sync::jobs::KindName;
use brx_sync::pb::v1::{StartSyncRequest, sync_service_client::SyncServiceClient};

/// How often the jobs table is read while the syncs run.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Attempts of one StartSync that the replica sheds or finds its queue full.
const START_ATTEMPTS: u32 = 5;
/// The old Python service's import rate: 100,000 products in 70 s.
const PYTHON_ROWS_PER_SECOND: f64 = 100_000.0 / 70.0;

/// One finished sync job, as the jobs table has it.
#[derive(Debug, sqlx::FromRow)]
struct JobRow {
    state: String,
    attempts: i32,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    products_seen: i64,
    unmapped: i64,
    last_error: Option<String>,
}

/// Runs the scenario and prints its report; fails when any job did not succeed.
pub(super) async fn run(rig: &Rig, args: &LoadtestArgs) -> anyhow::Result<()> {
    print_settings(&rig.config);
    let users = rig
        .connect_sellers(args.sellers(), args.connect_concurrency)
        .await?;
    let sampler = ConnectionSampler::start(rig.database_options.clone(), &rig.database).await?;
    let rss_before = measure::proc_status_kib("self", "VmRSS");
    let first_start = Utc::now();
    let started = Instant::now();
    let retried = start_all(rig, &users).await?;
    println!(
        "  run:   {} StartSync calls answered in {:.2} s ({retried} retried after RESOURCE_EXHAUSTED/UNAVAILABLE)",
        users.len(),
        started.elapsed().as_secs_f64()
    );
    let waited = wait_for_jobs(&rig.monitor, users.len() as u64, args.timeout).await;
    let connections = sampler.finish().await?;
    let peak_running = waited?;
    let jobs = finished_jobs(&rig.monitor).await?;
    let simulator = rig
        .simulator
        .stats(args.sellers())
        .await
        .unwrap_or_else(|err| {
            tracing::warn!(
                error = format!("{err:#}"),
                "simulator statistics unavailable"
            );
            SimStats::default()
        });
    let report = Report {
        sellers: args.sellers(),
        products: args.products(),
        first_start,
        jobs,
        peak_running,
        connections,
        rss_before,
        simulator,
        simulator_rss: rig.simulator.peak_rss_kib(),
    };
    report.print(&rig.config);
    report.verdict()
}

fn print_settings(config: &Config) {
    println!(
        "  replica: bulk concurrency {}, interactive concurrency {}, chunk size {}, chunks in flight {}, \
         PostgreSQL pool {}, sync DB writers {}, job poll {:?}, MySQL pool {}, Redis pool {}",
        config.jobs.bulk_concurrency,
        config.jobs.interactive_concurrency,
        config.sync.chunk_size,
        brx_sync::sync::handler::SyncSettings::from_config(&config.sync, &config.cardtrader)
            .chunks_in_flight,
        config.storage.pg_max_connections,
        config.sync.db_writers,
        config.jobs.poll_interval,
        config.storage.mysql_max_connections,
        config.storage.redis_max_connections,
    );
}

/// Fires one full-sync StartSync per seller, all at once; returns how many calls were retried.
pub(super) async fn start_all(rig: &Rig, users: &[UserId]) -> anyhow::Result<u32> {
    let calls = users
        .iter()
        .enumerate()
        .map(|(i, user)| start_one(rig.channel(i), &rig.token, *user));
    let retries = futures::future::try_join_all(calls).await?;
    Ok(retries.into_iter().sum())
}

/// One StartSync, retried on shedding and a full queue after the replica's `retry-after-ms` hint.
async fn start_one(
    channel: tonic::transport::Channel,
    token: &str,
    user: UserId,
) -> anyhow::Result<u32> {
    let mut client = SyncServiceClient::new(channel);
    for attempt in 0..START_ATTEMPTS {
        let request = StartSyncRequest {
            user_id: user.to_string(),
            ..Default::default()
        };
        let status = match client.start_sync(with_bearer(request, token)?).await {
            Ok(_) => return Ok(attempt),
            Err(status) => status,
        };
        if !matches!(
            status.code(),
            tonic::Code::ResourceExhausted | tonic::Code::Unavailable
        ) {
            return Err(status).with_context(|| format!("StartSync for {user}"));
        }
        let wait_ms = status
            .metadata()
            .get(RETRY_AFTER_MS)
            .and_then(|value| value.to_str().ok()?.parse().ok())
            .unwrap_or(200);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    }
    anyhow::bail!("StartSync for {user} refused {START_ATTEMPTS} times")
}

/// Waits until all `expected` full syncs are terminal, with a progress bar; returns the most jobs
/// seen running at once.
pub(super) async fn wait_for_jobs(
    pool: &PgPool,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<i64> {
    let bar = ProgressBar::new(expected).with_style(ProgressStyle::with_template(
        "  {spinner} syncs {pos}/{len} ended {wide_bar} {msg} ({elapsed})",
    )?);
    bar.enable_steady_tick(Duration::from_millis(100));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut peak_running = 0;
    loop {
        let (ended, running, seen): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state IN ('succeeded', 'failed', 'cancelled')), \
                    count(*) FILTER (WHERE state = 'running'), \
                    coalesce(sum((progress->>'products_seen')::bigint), 0)::bigint \
             FROM jobs WHERE kind = $1",
        )
        .bind(KindName::SyncFull.as_str())
        .fetch_one(pool)
        .await?;
        peak_running = peak_running.max(running);
        bar.set_position(ended.unsigned_abs());
        bar.set_message(format!(
            "{running} running, {} products",
            thousands(seen.unsigned_abs())
        ));
        if ended.unsigned_abs() >= expected {
            bar.finish_and_clear();
            return Ok(peak_running);
        }
        if tokio::time::Instant::now() > deadline {
            bar.abandon();
            anyhow::bail!("{ended} of {expected} syncs ended within {timeout:?}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

async fn finished_jobs(pool: &PgPool) -> anyhow::Result<Vec<JobRow>> {
    Ok(sqlx::query_as(
        "SELECT state, attempts, created_at, started_at, finished_at, \
                coalesce((progress->>'products_seen')::bigint, 0) AS products_seen, \
                coalesce((progress->>'unmapped')::bigint, 0) AS unmapped, last_error \
         FROM jobs WHERE kind = $1",
    )
    .bind(KindName::SyncFull.as_str())
    .fetch_all(pool)
    .await?)
}

/// Everything the scale report prints.
#[derive(Debug)]
struct Report {
    sellers: u32,
    products: u64,
    first_start: DateTime<Utc>,
    jobs: Vec<JobRow>,
    peak_running: i64,
    connections: ConnectionPeak,
    rss_before: Option<u64>,
    simulator: SimStats,
    simulator_rss: Option<u64>,
}

impl Report {
    fn count(&self, state: &str) -> usize {
        self.jobs.iter().filter(|job| job.state == state).count()
    }

    /// First StartSync → last job end.
    fn wall(&self) -> Duration {
        let last = self.jobs.iter().filter_map(|job| job.finished_at).max();
        last.and_then(|last| (last - self.first_start).to_std().ok())
            .unwrap_or_default()
    }

    /// Histogram of `to - from` over the jobs, in microseconds.
    fn spans(
        &self,
        span: impl Fn(&JobRow) -> Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) -> hdrhistogram::Histogram<u64> {
        let mut histogram = measure::histogram();
        for (from, to) in self.jobs.iter().filter_map(span) {
            let micros = (to - from).num_microseconds().unwrap_or(0).max(0);
            histogram.saturating_record(micros.unsigned_abs());
        }
        histogram
    }

    fn products_seen(&self) -> u64 {
        self.jobs
            .iter()
            .map(|job| job.products_seen.unsigned_abs())
            .sum()
    }

    /// Products read per second of [`Report::wall`].
    fn rate(&self) -> f64 {
        self.products_seen() as f64 / self.wall().as_secs_f64().max(f64::EPSILON)
    }

    fn print(&self, config: &Config) {
        println!(
            "\n  ── scale: {} sellers x {} products ──",
            self.sellers,
            thousands(self.products)
        );
        self.print_jobs();
        self.print_resources(config);
        self.print_errors();
        println!(
            "\n  vs the old Python service: 10–15 concurrent sellers, 100,000 products in 70 s ({} rows/s).\n  \
             here: {} sellers started at once, all ended in {:.1} s, {} rows/s ({:.1}x).",
            thousands(PYTHON_ROWS_PER_SECOND as u64),
            self.sellers,
            self.wall().as_secs_f64(),
            thousands(self.rate() as u64),
            self.rate() / PYTHON_ROWS_PER_SECOND
        );
    }

    fn print_jobs(&self) {
        let retried: i32 = self.jobs.iter().map(|job| (job.attempts - 1).max(0)).sum();
        let unmapped: i64 = self.jobs.iter().map(|job| job.unmapped).sum();
        let (succeeded, failed) = (self.count("succeeded"), self.count("failed"));
        let cancelled = self.count("cancelled");
        let all = self.jobs.len();
        row(
            "jobs",
            format!(
                "{succeeded} succeeded, {failed} failed, {cancelled} cancelled, of {all} ({retried} extra attempts)"
            ),
        );
        let wall = self.wall().as_secs_f64();
        row(
            "total time",
            format!("{wall:.1} s (first StartSync → last job end)"),
        );
        row(
            "throughput",
            format!(
                "{} rows/s ({} products read, {} unmapped)",
                thousands(self.rate() as u64),
                thousands(self.products_seen()),
                thousands(unmapped.unsigned_abs())
            ),
        );
        let latency = self.spans(|job| Some((job.created_at, job.finished_at?)));
        let queued = self.spans(|job| Some((job.created_at, job.started_at?)));
        let running = self.spans(|job| Some((job.started_at?, job.finished_at?)));
        row(
            "job latency (created → end)",
            measure::percentiles_us(&latency),
        );
        row(
            "  queued (created → start)",
            measure::percentiles_us(&queued),
        );
        row("  running (start → end)", measure::percentiles_us(&running));
    }

    fn print_resources(&self, config: &Config) {
        let (running, bulk) = (self.peak_running, config.jobs.bulk_concurrency);
        row(
            "jobs running at once (peak)",
            format!("{running} (BRX_BULK_CONCURRENCY {bulk})"),
        );
        let peak = mib(measure::proc_status_kib("self", "VmHWM"));
        let before = mib(self.rss_before);
        row(
            "peak RSS (this process)",
            format!("{peak} (VmHWM; {before} before the syncs)"),
        );
        let child = mib(self.simulator_rss);
        row(
            "peak RSS (simulator child)",
            format!("{child} (not counted above)"),
        );
        let ConnectionPeak { open, busy } = self.connections;
        let pool = config.storage.pg_max_connections;
        row(
            "PostgreSQL connections (peak)",
            format!("{open} open, {busy} busy; pool max {pool} (+1 health-probe connection)"),
        );
        let (requests, rejected) = (self.simulator.requests, self.simulator.rejected_429);
        row(
            "CardTrader simulator",
            format!(
                "{} requests, {} answered 429",
                thousands(requests),
                thousands(rejected)
            ),
        );
    }

    /// The distinct reasons of failed jobs, most frequent first.
    fn print_errors(&self) {
        let mut reasons = std::collections::BTreeMap::<&str, usize>::new();
        for job in self.jobs.iter().filter(|job| job.state != "succeeded") {
            *reasons
                .entry(job.last_error.as_deref().unwrap_or("(no error)"))
                .or_default() += 1;
        }
        let mut reasons: Vec<_> = reasons.into_iter().collect();
        reasons.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
        for (reason, count) in reasons.iter().take(5) {
            row("failure", format!("{count} x {reason}"));
        }
    }

    fn verdict(&self) -> anyhow::Result<()> {
        let succeeded = self.count("succeeded");
        if succeeded != self.jobs.len() || self.jobs.len() != self.sellers as usize {
            anyhow::bail!(
                "{} of {} sellers' syncs did not succeed",
                self.sellers as usize - succeeded.min(self.sellers as usize),
                self.sellers
            );
        }
        Ok(())
    }
}

/// One line of the report: a label column, then the figures.
fn row(label: &str, value: String) {
    println!("  {label:<30} {value}");
}
