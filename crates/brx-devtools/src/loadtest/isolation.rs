//! The isolation scenario: GetSyncStatus latency from a few concurrent callers while the replica is
//! idle, then while one large full sync runs; the target is a busy p99 at most 3x the idle p99.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::{
    LoadtestArgs,
    measure::{self, thousands},
    rig::Rig,
};
use crate::demo::with_bearer;
use anyhow::Context;
use brx_sync::domain::UserId;
use brx_sync::pb::v1::{
    GetSyncStatusRequest, StartSyncRequest, sync_service_client::SyncServiceClient,
};

/// Calls made before measuring, so connections and caches are warm.
const WARM_UP: Duration = Duration::from_secs(1);
/// The target: busy p99 / idle p99.
const TARGET_RATIO: f64 = 3.0;

/// Latencies (µs) of the calls that succeeded, and how many failed.
#[derive(Debug)]
struct Calls {
    latency: Histogram<u64>,
    failed: u64,
}

/// The sync as the jobs table has it once it ended.
#[derive(Debug, sqlx::FromRow)]
struct SyncRow {
    state: String,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    products_seen: i64,
    last_error: Option<String>,
}

/// Runs the scenario and prints its report; fails when a sync or any call failed.
///
/// Four phases: idle with nothing stored, the first sync (an import), idle with the inventory
/// stored, and a second sync (every product unchanged). GetSyncStatus counts the seller's items, so
/// each sync is compared with the idle phase before it and with the idle phase at the same item count.
pub(super) async fn run(rig: &Rig, args: &LoadtestArgs) -> anyhow::Result<()> {
    let user = rig.connect_sellers(1, 1).await?[0];
    let (callers, rate) = (args.status_callers as usize, args.status_rate);
    let load = (callers, rate);
    idle_phase(rig, user, load, WARM_UP).await?;
    let idle_empty = idle_phase(rig, user, load, args.idle_for).await?;
    let (import, first) = sync_phase(rig, user, load, args.timeout).await?;
    let idle_stored = idle_phase(rig, user, load, args.idle_for).await?;
    let (resync, second) = sync_phase(rig, user, load, args.timeout).await?;
    let pace = match rate {
        0 => "back to back".to_owned(),
        rate => format!("{rate} calls/s each"),
    };
    println!(
        "  run:   idle phases of {:?}, {callers} GetSyncStatus callers throughout, {pace}",
        args.idle_for
    );
    let phases = [
        Phase::idle("idle, nothing stored", idle_empty),
        Phase::sync("during the import", import, first),
        Phase::idle("idle, inventory stored", idle_stored),
        Phase::sync("during the re-sync", resync, second),
    ];
    print_report(args.products(), &phases);
    for phase in &phases {
        if let Some(sync) = phase.sync.as_ref().filter(|sync| sync.state != "succeeded") {
            anyhow::bail!("a sync ended {}: {:?}", sync.state, sync.last_error);
        }
    }
    let failed: u64 = phases.iter().map(|phase| phase.calls.failed).sum();
    if failed > 0 {
        anyhow::bail!("{failed} GetSyncStatus calls failed");
    }
    Ok(())
}

/// What one phase measured.
#[derive(Debug)]
struct Phase {
    label: &'static str,
    calls: Calls,
    sync: Option<SyncRow>,
}

impl Phase {
    fn idle(label: &'static str, calls: Calls) -> Self {
        Self {
            label,
            calls,
            sync: None,
        }
    }

    fn sync(label: &'static str, calls: Calls, sync: SyncRow) -> Self {
        Self {
            label,
            calls,
            sync: Some(sync),
        }
    }

    fn p99(&self) -> u64 {
        self.calls.latency.value_at_quantile(0.99)
    }
}

/// GetSyncStatus measured for `duration` with no sync running.
async fn idle_phase(
    rig: &Rig,
    user: UserId,
    load: (usize, u32),
    duration: Duration,
) -> anyhow::Result<Calls> {
    let done = CancellationToken::new();
    cancel_after(&done, duration);
    measure_status(rig, user, load, done).await
}

/// GetSyncStatus measured from StartSync of a full sync until the sync ends.
async fn sync_phase(
    rig: &Rig,
    user: UserId,
    load: (usize, u32),
    timeout: Duration,
) -> anyhow::Result<(Calls, SyncRow)> {
    let job_id = start_sync(rig, user).await?;
    let done = CancellationToken::new();
    let watcher = tokio::spawn(watch_job(
        rig.monitor.clone(),
        job_id,
        timeout,
        done.clone(),
    ));
    let calls = measure_status(rig, user, load, done).await?;
    Ok((calls, watcher.await??))
}

fn cancel_after(token: &CancellationToken, after: Duration) {
    let token = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        token.cancel();
    });
}

/// `callers` loops of GetSyncStatus for `user` until `done` is cancelled, each at `rate` calls per
/// second (open loop: a late call does not delay the schedule) or back to back when `rate` is 0.
async fn measure_status(
    rig: &Rig,
    user: UserId,
    (callers, rate): (usize, u32),
    done: CancellationToken,
) -> anyhow::Result<Calls> {
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..callers {
        let (channel, token, done) = (rig.channel(caller), rig.token.clone(), done.clone());
        tasks.spawn(async move {
            let mut client = SyncServiceClient::new(channel);
            let mut calls = Calls {
                latency: measure::histogram(),
                failed: 0,
            };
            let mut schedule =
                (rate > 0).then(|| tokio::time::interval(Duration::from_secs(1) / rate));
            while !done.is_cancelled() {
                if let Some(schedule) = schedule.as_mut() {
                    schedule.tick().await;
                }
                let request = GetSyncStatusRequest {
                    user_id: user.to_string(),
                };
                let started = Instant::now();
                match client.get_sync_status(with_bearer(request, &token)?).await {
                    Ok(_) => calls
                        .latency
                        .saturating_record(started.elapsed().as_micros() as u64),
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), "GetSyncStatus failed");
                        calls.failed += 1;
                    }
                }
            }
            anyhow::Ok(calls)
        });
    }
    let mut all = Calls {
        latency: measure::histogram(),
        failed: 0,
    };
    while let Some(calls) = tasks.join_next().await {
        let calls = calls??;
        all.latency.add(&calls.latency)?;
        all.failed += calls.failed;
    }
    Ok(all)
}

async fn start_sync(rig: &Rig, user: UserId) -> anyhow::Result<uuid::Uuid> {
    let request = StartSyncRequest {
        user_id: user.to_string(),
        ..Default::default()
    };
    let job = SyncServiceClient::new(rig.channel(0))
        .start_sync(with_bearer(request, &rig.token)?)
        .await?
        .into_inner()
        .job
        .context("StartSync answered without a job")?;
    Ok(job.job_id.parse()?)
}

/// Reads the job every 200 ms until it ends (or `timeout` passes), then cancels `done`.
async fn watch_job(
    pool: sqlx::PgPool,
    job_id: uuid::Uuid,
    timeout: Duration,
    done: CancellationToken,
) -> anyhow::Result<SyncRow> {
    let _cancel_on_exit = done.drop_guard();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let row: SyncRow = sqlx::query_as(
            "SELECT state, started_at, finished_at, \
                    coalesce((progress->>'products_seen')::bigint, 0) AS products_seen, last_error \
             FROM jobs WHERE id = $1",
        )
        .bind(job_id)
        .fetch_one(&pool)
        .await?;
        if matches!(row.state.as_str(), "succeeded" | "failed" | "cancelled") {
            return Ok(row);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the sync did not end within {timeout:?} (still {})",
                row.state
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_report(products: u64, phases: &[Phase; 4]) {
    let row = |label: &str, value: String| println!("  {label:<30} {value}");
    println!(
        "\n  ── isolation: GetSyncStatus during {}-product syncs ──",
        thousands(products)
    );
    for phase in phases {
        let calls = &phase.calls;
        row(
            phase.label,
            format!(
                "{}  ({} calls, {} failed)",
                measure::percentiles_us(&calls.latency),
                thousands(calls.latency.len()),
                calls.failed
            ),
        );
    }
    let [idle_empty, import, idle_stored, resync] = phases;
    for (label, busy, idle) in [
        ("p99 import / idle before", import, idle_empty),
        ("p99 import / idle stored", import, idle_stored),
        ("p99 re-sync / idle stored", resync, idle_stored),
    ] {
        let ratio = busy.p99() as f64 / idle.p99().max(1) as f64;
        let verdict = if ratio <= TARGET_RATIO {
            "met"
        } else {
            "MISSED"
        };
        row(
            label,
            format!("{ratio:.2}x (target <= {TARGET_RATIO:.0}x: {verdict})"),
        );
    }
    for phase in [import, resync] {
        if let Some(sync) = &phase.sync {
            let name = phase.label.trim_start_matches("during the ");
            row(&format!("sync ({name})"), describe(sync));
        }
    }
}

/// `succeeded in 21.6 s, 200,000 products, 9,257 rows/s`.
fn describe(sync: &SyncRow) -> String {
    let ran = match (sync.started_at, sync.finished_at) {
        (Some(start), Some(end)) => (end - start).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    };
    let rate = sync.products_seen as f64 / ran.as_secs_f64().max(f64::EPSILON);
    format!(
        "{} in {:.1} s, {} products, {} rows/s",
        sync.state,
        ran.as_secs_f64(),
        thousands(sync.products_seen.unsigned_abs()),
        thousands(rate as u64)
    )
}
