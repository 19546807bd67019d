//! The purchases report: each phase's rate against the ceiling and CardTrader's limit, latency,
//! answers, the replica's counters, CardTrader traffic and the stock invariant.

use super::{Phase, PhaseRun, Seller, answers::Tally, ceiling::Ceiling, faults};
use crate::loadtest::{
    LoadtestArgs,
    measure::{self, thousands},
};
use brx_sync::config::Config;

/// Target of the paced phases: purchases answered per second, sustained.
const TARGET_RATE: f64 = 300.0;
/// Target of the paced phases: p99 of Purchase from the scheduled send, µs.
const TARGET_P99_US: u64 = 100_000;
/// CardTrader calls one single-line purchase makes: the export by blueprint, then the increment.
const CALLS_PER_PURCHASE: f64 = 2.0;

/// Everything the report prints.
#[derive(Debug)]
pub(super) struct Report<'a> {
    pub(super) config: &'a Config,
    pub(super) args: &'a LoadtestArgs,
    pub(super) sellers: &'a [Seller],
    /// Items lowered on CardTrader before the faults phase.
    pub(super) lowered: usize,
    /// Most requests one seller sent in any 10 s window, setup and every phase.
    pub(super) peak_in_10s: u64,
    pub(super) ceiling: Ceiling,
    /// Closed loop, paced, paced with faults.
    pub(super) phases: [PhaseRun; 3],
}

impl Report<'_> {
    pub(super) fn print(&self) {
        let items: usize = self.sellers.iter().map(|seller| seller.items.len()).sum();
        let budget = match self.args.purchases {
            Some(count) => format!("{} purchases a phase", thousands(count)),
            None => format!("{:?} a phase", self.args.duration()),
        };
        println!(
            "\n  ── purchases: {} buyers over {} items of {} sellers, {budget} ──",
            self.args.buyers(),
            thousands(items as u64),
            self.sellers.len()
        );
        self.print_limits();
        for phase in &self.phases {
            println!();
            self.print_phase(phase);
        }
    }

    /// The ceiling, CardTrader's limit and the per-seller request rate planned for.
    fn print_limits(&self) {
        let ceiling = &self.ceiling;
        row(
            "ceiling",
            format!(
                "{} pairs/s: export?blueprint_id= then increment, sent straight to the simulator by {} \
                 workers, {} pairs in {:.2} s ({} failed)",
                thousands(ceiling.rate() as u64),
                ceiling.workers,
                thousands(ceiling.pairs),
                ceiling.elapsed.as_secs_f64(),
                ceiling.failed
            ),
        );
        let (limit, bucket) = (
            self.config.cardtrader.rate_general_per_10s,
            self.bucket_per_10s(),
        );
        let sellers = self.sellers.len() as f64;
        row(
            "CardTrader's limit",
            format!(
                "{} purchases/s at most: {} sellers x {bucket:.0} requests / 10 s (the client's bucket \
                 of CardTrader's {limit}) / {CALLS_PER_PURCHASE:.0} requests a purchase",
                thousands(self.limit_rate() as u64),
                self.sellers.len()
            ),
        );
        let rate = f64::from(self.args.rate);
        let planned = rate / sellers * CALLS_PER_PURCHASE * 10.0;
        row(
            "per-seller rate planned",
            format!(
                "{planned:.0} requests / 10 s a seller at the paced {rate:.0} purchases/s \
                 (sellers picked uniformly); the most one seller sent in any 10 s of the run: {} \
                 (CardTrader allows {limit})",
                self.peak_in_10s
            ),
        );
    }

    fn print_phase(&self, run: &PhaseRun) {
        self.print_heading(run);
        self.print_rate(run);
        print_latency(run);
        self.print_jobs(run);
        print_answers(run);
        print_outcomes(run);
        print_traffic(run);
        print_check(run);
    }

    fn print_heading(&self, run: &PhaseRun) {
        let (buyers, rate) = (self.args.buyers(), self.args.rate);
        let paced = format!(
            "{rate} purchases/s offered by {buyers} buyers, each one every {} on its own schedule; \
             latency counts from the scheduled send",
            measure::millis((f64::from(buyers) / f64::from(rate) * 1e6) as u64)
        );
        match run.phase {
            Phase::ClosedLoop => println!(
                "  closed loop: throughput: {buyers} buyers, each sending its next purchase as soon as \
                 the previous one answered; no faults (latency is buyers / rate here, so the targets \
                 are judged paced)"
            ),
            Phase::Paced => println!("  paced: {paced}; no faults"),
            Phase::Faults => {
                let faults = faults();
                println!(
                    "  paced with faults: {paced}; {:.0}% 5xx and {:.0}% timeout-after-apply on every \
                     CardTrader request (BRX_CARDTRADER_REQUEST_TIMEOUT {:?}); {} items lowered on \
                     CardTrader beforehand; one purchase in five of 2-3 lines",
                    faults.error_5xx_rate * 100.0,
                    faults.timeout_after_apply_rate * 100.0,
                    self.config.cardtrader.request_timeout,
                    self.lowered
                );
            }
        }
    }

    /// COMPLETED/s against the ceiling and CardTrader's limit; paced, also the rate sustained
    /// against the target and how many calls went out late.
    fn print_rate(&self, run: &PhaseRun) {
        let answers = &run.answers;
        let span = match &answers.pacing {
            Some(pacing) => pacing.span(),
            None => answers.wall,
        };
        let per_second = |count: u64| count as f64 / span.as_secs_f64().max(f64::EPSILON);
        let rate = per_second(answers.tally.completed);
        let (ceiling, limit) = (
            rate / self.ceiling.rate().max(f64::EPSILON),
            rate / self.limit_rate(),
        );
        let against = format!("{ceiling:.2}x the ceiling, {limit:.2}x CardTrader's limit");
        let Some(pacing) = &answers.pacing else {
            row("purchases/s", format!("{rate:.0} COMPLETED/s; {against}"));
            return;
        };
        let sustained = per_second(answers.tally.total());
        row(
            "purchases/s",
            format!(
                "{sustained:.0}/s answered of {:.0} offered (target >= {TARGET_RATE:.0} sustained: \
                 {}), {rate:.0} COMPLETED/s; {against}",
                pacing.rate,
                verdict(sustained >= TARGET_RATE)
            ),
        );
        let late = if pacing.late == 0 {
            "none".to_owned()
        } else {
            format!(
                "{}, behind by {}",
                thousands(pacing.late),
                measure::percentiles_p90_us(&pacing.lag)
            )
        };
        row(
            "sent late",
            format!(
                "{late} (of {} calls; a buyer's previous purchase had not answered by the next one's time)",
                thousands(answers.tally.total())
            ),
        );
    }

    /// The purchase jobs' time queued and running, and the worker slots that kept busy.
    fn print_jobs(&self, run: &PhaseRun) {
        row(
            "  queued for a worker slot",
            measure::percentiles_p90_us(&run.jobs.queued),
        );
        row(
            "  running (retries included)",
            measure::percentiles_p90_us(&run.jobs.running),
        );
        // Little's law: jobs per second times the mean time in a state is the mean number in it.
        let jobs_per_second = run.jobs.running.len() as f64 / wall_seconds(run);
        let mean = |histogram: &hdrhistogram::Histogram<u64>| histogram.mean() / 1e6;
        row(
            "  worker slots busy (mean)",
            format!(
                "{:.1} of {} (BRX_INTERACTIVE_CONCURRENCY) while {:.1} purchases waited for one",
                jobs_per_second * mean(&run.jobs.running),
                self.config.jobs.interactive_concurrency,
                jobs_per_second * mean(&run.jobs.queued)
            ),
        );
    }

    /// CardTrader's general limit less the client's safety margin, per 10 s.
    fn bucket_per_10s(&self) -> f64 {
        f64::from(self.config.cardtrader.rate_general_per_10s)
            * (1.0 - self.config.cardtrader.rate_safety_margin)
    }

    /// Single-line purchases per second the client's buckets allow over every seller.
    fn limit_rate(&self) -> f64 {
        self.sellers.len() as f64 * self.bucket_per_10s() / 10.0 / CALLS_PER_PURCHASE
    }

    /// Fails when any phase broke the stock invariant; missed targets are figures, not failures.
    pub(super) fn verdict(&self) -> anyhow::Result<()> {
        let violations: usize = self
            .phases
            .iter()
            .map(|run| run.check.violation_count)
            .sum();
        if violations > 0 {
            anyhow::bail!("the stock invariant was violated {violations} times");
        }
        Ok(())
    }
}

/// Latency of every answer (paced: from the scheduled send, against the target, and from the actual
/// send) and, with faults, of the COMPLETED ones.
fn print_latency(run: &PhaseRun) {
    let answers = &run.answers;
    let Some(pacing) = &answers.pacing else {
        row(
            "latency, every answer",
            measure::percentiles_p90_us(&answers.latency),
        );
        return;
    };
    let p99 = answers.latency.value_at_quantile(0.99);
    row(
        "latency, every answer",
        format!(
            "{} (target p99 < {}: {})",
            measure::percentiles_p90_us(&answers.latency),
            measure::millis(TARGET_P99_US),
            verdict(p99 < TARGET_P99_US)
        ),
    );
    row(
        "  from the actual send",
        measure::percentiles_p90_us(&pacing.from_send),
    );
    if run.phase.faults().is_some() {
        row(
            "latency, COMPLETED",
            measure::percentiles_p90_us(&answers.completed_latency),
        );
    }
}

fn print_answers(run: &PhaseRun) {
    let answers = &run.answers;
    row(
        "answers",
        format!(
            "{} in {:.1} s ({:.2} lines each): {}",
            thousands(answers.tally.total()),
            answers.wall.as_secs_f64(),
            answers.lines as f64 / answers.tally.total().max(1) as f64,
            describe(&answers.tally)
        ),
    );
    for (code, (count, message)) in &answers.tally.other {
        row(&format!("  {code}"), format!("{count} x, first: {message}"));
    }
}

fn print_traffic(run: &PhaseRun) {
    let (traffic, wall) = (&run.traffic, wall_seconds(run));
    row(
        "CardTrader requests",
        format!(
            "{} ({:.2} a COMPLETED purchase), {} answered 429; busiest seller {} in {wall:.1} s \
             ({:.0} / 10 s)",
            thousands(traffic.requests),
            traffic.requests as f64 / run.answers.tally.completed.max(1) as f64,
            thousands(traffic.rejected_429),
            traffic.busiest,
            traffic.busiest as f64 / wall * 10.0
        ),
    );
}

/// First call sent (or scheduled) → last answer, in seconds, never zero.
fn wall_seconds(run: &PhaseRun) -> f64 {
    run.answers.wall.as_secs_f64().max(f64::EPSILON)
}

/// The purchases table, `brx_purchases_total` and `brx_purchase_compensations_total` for the phase.
fn print_outcomes(run: &PhaseRun) {
    let join = |values: &std::collections::BTreeMap<String, u64>| {
        if values.is_empty() {
            return "none".to_owned();
        }
        values
            .iter()
            .map(|(label, count)| format!("{label} {}", thousands(*count)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    row("purchases table", join(&run.check.states));
    row("brx_purchases_total", join(&run.counters.purchases));
    row(
        "brx_purchase_compensations",
        format!(
            "{} (lines given back, by how)",
            join(&run.counters.compensations)
        ),
    );
}

fn print_check(run: &PhaseRun) {
    let check = &run.check;
    let attention = check.states.get("requires_attention").copied().unwrap_or(0);
    row(
        &format!("invariant violations: {}", check.violation_count),
        format!(
            "{} items checked ({} corrected to CardTrader's quantity, {} left to the next sync, {} \
             re-created); {attention} requires_attention ({} items left unchecked)",
            thousands(check.items as u64),
            check.corrected,
            check.deferred,
            check.recreated,
            check.held
        ),
    );
    for violation in &check.violations {
        println!("    {violation}");
    }
    if check.violation_count > check.violations.len() {
        println!(
            "    ... and {} more",
            check.violation_count - check.violations.len()
        );
    }
}

fn describe(tally: &Tally) -> String {
    let other: u64 = tally.other.values().map(|(count, _)| count).sum();
    let mut parts = vec![
        format!("{} COMPLETED", thousands(tally.completed)),
        format!("{} ABORTED (compensated)", thousands(tally.aborted)),
        format!(
            "{} FAILED_PRECONDITION (out of stock)",
            thousands(tally.out_of_stock)
        ),
    ];
    if tally.requires_attention > 0 {
        parts.push(format!("{} REQUIRES_ATTENTION", tally.requires_attention));
    }
    if tally.unfinished > 0 {
        parts.push(format!(
            "{} still running at the RPC's deadline",
            tally.unfinished
        ));
    }
    parts.push(format!("{other} other errors"));
    parts.join(", ")
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// One line of the report: a label column, then the figures.
fn row(label: &str, value: String) {
    println!("  {label:<30} {value}");
}
