//! The webhooks report: the ceiling, then for each phase answers/s against it, latency against the
//! target, answers by status, what was delivered, how long applying took, and the invariant; last,
//! the verdict on p99 < 20 ms.

use super::{Phase, PhaseRun, Seller, ceiling::Ceiling};
use crate::loadtest::{
    LoadtestArgs,
    measure::{self, thousands},
};
use brx_sync::config::Config;

/// Issue #7's target: p99 of the webhook answer, µs, from the (scheduled) send.
const TARGET_P99_US: u64 = 20_000;

/// Everything the report prints.
#[derive(Debug)]
pub(super) struct Report<'a> {
    pub(super) args: &'a LoadtestArgs,
    pub(super) config: &'a Config,
    pub(super) sellers: &'a [Seller],
    pub(super) ceiling: Ceiling,
    /// Closed loop, paced.
    pub(super) phases: [PhaseRun; 2],
}

impl Report<'_> {
    pub(super) fn print(&self) {
        let items: usize = self.sellers.iter().map(|seller| seller.items.len()).sum();
        println!(
            "\n  ── webhooks: {} senders over {} items of {} sellers, {:?} a phase ──",
            self.args.senders,
            thousands(items as u64),
            self.sellers.len(),
            self.args.duration()
        );
        self.print_ceiling();
        for run in &self.phases {
            println!();
            self.print_phase(run);
        }
        println!();
        self.print_verdict();
    }

    fn print_ceiling(&self) {
        let ceiling = &self.ceiling;
        row(
            "ceiling",
            format!(
                "{} answers/s: GET /livez on the same side port (no work), {} senders back to back, \
                 {} answers in {:.1} s ({})",
                thousands(ceiling.rate() as u64),
                ceiling.senders,
                thousands(ceiling.statuses.values().sum()),
                ceiling.wall.as_secs_f64(),
                statuses(&ceiling.statuses)
            ),
        );
        row("  latency", measure::percentiles_p90_us(&ceiling.latency));
    }

    fn print_phase(&self, run: &PhaseRun) {
        self.print_heading(run);
        self.print_rate(run);
        print_latency(run, &self.ceiling);
        self.print_connections(run);
        print_answers(run);
        print_applied(run);
        print_check(run);
    }

    fn print_heading(&self, run: &PhaseRun) {
        let (senders, rate) = (self.args.senders, self.args.webhook_rate);
        match run.phase {
            Phase::ClosedLoop => println!(
                "  closed loop: {senders} senders, each POSTing its next delivery as soon as the \
                 previous one answered (latency is senders / rate here, so the target is judged paced)"
            ),
            Phase::Paced => println!(
                "  paced: {rate} deliveries/s offered by {senders} senders, each one every {} on its \
                 own schedule; latency counts from the scheduled send",
                measure::millis((f64::from(senders) / f64::from(rate) * 1e6) as u64)
            ),
        }
    }

    fn print_rate(&self, run: &PhaseRun) {
        let answers = &run.answers;
        let span = answers
            .pacing
            .as_ref()
            .map_or(answers.wall, |pacing| pacing.span());
        let rate = answers.total() as f64 / span.as_secs_f64().max(f64::EPSILON);
        let ratio = rate / self.ceiling.rate().max(f64::EPSILON);
        let Some(pacing) = &answers.pacing else {
            row("answers/s", format!("{rate:.0}/s; {ratio:.2}x the ceiling"));
            return;
        };
        row(
            "answers/s",
            format!(
                "{rate:.0}/s answered of {:.0} offered; {ratio:.2}x the ceiling",
                pacing.rate
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
                "{late} (of {}; a sender's previous delivery had not answered by the next one's time)",
                thousands(answers.total())
            ),
        );
    }

    /// Whether the intake could have waited for a connection: the pool is shared with the apply
    /// jobs, each holding one for its event's transaction.
    fn print_connections(&self, run: &PhaseRun) {
        row(
            "PostgreSQL connections (peak)",
            format!(
                "{} open, {} busy, of BRX_PG_MAX_CONNECTIONS {} (shared by the intake and the apply \
                 jobs)",
                run.connections.open, run.connections.busy, self.config.storage.pg_max_connections
            ),
        );
    }

    /// MET/MISSED against p99 < 20 ms: judged paced, with the closed loop's figure beside it.
    fn print_verdict(&self) {
        let [closed, paced] = &self.phases;
        let p99 = |run: &PhaseRun| run.answers.latency.value_at_quantile(0.99);
        row(
            "p99 < 20 ms (issue #7)",
            format!(
                "{} at {} deliveries/s paced: p99 {} from the scheduled send; closed loop with {} in \
                 flight: p99 {} ({})",
                verdict(p99(paced) < TARGET_P99_US),
                self.args.webhook_rate,
                measure::millis(p99(paced)),
                self.args.senders,
                measure::millis(p99(closed)),
                verdict(p99(closed) < TARGET_P99_US)
            ),
        );
    }

    /// Fails when an answer was not 200 or the invariant was violated; latency is a figure.
    pub(super) fn verdict(&self) -> anyhow::Result<()> {
        let not_ok: u64 = self.phases.iter().map(|run| run.answers.not_ok()).sum();
        let violations: usize = self
            .phases
            .iter()
            .map(|run| run.check.violation_count)
            .sum();
        anyhow::ensure!(
            not_ok == 0 && violations == 0,
            "{not_ok} answers were not 200 and the invariant was violated {violations} times"
        );
        Ok(())
    }
}

fn print_latency(run: &PhaseRun, ceiling: &Ceiling) {
    let answers = &run.answers;
    let p99 = answers.latency.value_at_quantile(0.99);
    let ceiling_p99 = ceiling.latency.value_at_quantile(0.99).max(1);
    row(
        "latency, every answer",
        format!(
            "{} (target p99 < {}: {}; {:.1}x the ceiling's p99)",
            measure::percentiles_p90_us(&answers.latency),
            measure::millis(TARGET_P99_US),
            verdict(p99 < TARGET_P99_US),
            p99 as f64 / ceiling_p99 as f64
        ),
    );
    if let Some(pacing) = &answers.pacing {
        row(
            "  from the actual send",
            measure::percentiles_p90_us(&pacing.from_send),
        );
    }
    let kinds = [
        "order.create",
        "redelivery (writes nothing)",
        "order.update",
    ];
    for (kind, latency) in kinds.iter().zip(&answers.by_kind) {
        row(&format!("  {kind}"), measure::percentiles_p90_us(latency));
    }
}

fn print_answers(run: &PhaseRun) {
    let answers = &run.answers;
    let all_ok = if answers.not_ok() == 0 {
        "all 200"
    } else {
        "NOT all 200"
    };
    row(
        "answers",
        format!(
            "{} in {:.1} s: {} ({all_ok})",
            thousands(answers.total()),
            answers.wall.as_secs_f64(),
            statuses(&answers.statuses)
        ),
    );
    let [creates, redeliveries, updates] = answers.ledger.kinds;
    row(
        "deliveries",
        format!(
            "{} order.create (paid, 1-2 items of 1 unit), {} redeliveries (same event id and body), \
             {} order.update to sent of an order created >= 1 s earlier",
            thousands(creates),
            thousands(redeliveries),
            thousands(updates)
        ),
    );
}

fn print_applied(run: &PhaseRun) {
    let check = &run.check;
    row(
        "all applied",
        format!(
            "{:.2} s after the last answer ({:.1} s after the first send)",
            run.applied_after.as_secs_f64(),
            (run.answers.wall + run.applied_after).as_secs_f64()
        ),
    );
    row(
        "  stored -> applied",
        measure::percentiles_p90_us(&check.apply_lag),
    );
    let outcomes: Vec<String> = check
        .outcomes
        .iter()
        .map(|(outcome, count)| format!("\"{outcome}\" {}", thousands(count.unsigned_abs())))
        .collect();
    row("  outcomes", outcomes.join(", "));
}

fn print_check(run: &PhaseRun) {
    let check = &run.check;
    let uncertain = if check.uncertain == 0 {
        String::new()
    } else {
        format!(
            "; {} orders had no 200 answer and were only bounded",
            check.uncertain
        )
    };
    row(
        &format!("invariant violations: {}", check.violation_count),
        format!(
            "{} items: local == start - units of distinct orders ({} orders, {} units), exactly; each \
             order took stock once; {} events stored == {} distinct event ids answered 200{uncertain}",
            thousands(check.items as u64),
            thousands(check.orders),
            thousands(check.units.unsigned_abs()),
            thousands(check.events_stored.unsigned_abs()),
            thousands(check.events_answered as u64),
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

/// `200 x 1,234, 500 x 2`.
fn statuses(statuses: &std::collections::BTreeMap<String, u64>) -> String {
    statuses
        .iter()
        .map(|(status, count)| format!("{status} x {}", thousands(*count)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "MISSED" }
}

/// One line of the report: a label column, then the figures.
fn row(label: &str, value: String) {
    println!("  {label:<30} {value}");
}
