//! What the buyers of a phase saw: every answer by kind, its latency, and for a paced phase how far
//! the sends fell behind their schedule.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use crate::loadtest::measure;
use brx_sync::pb::v1::{CreatePurchaseResponse, PurchaseState};

/// How each Purchase call was answered.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// OK, the purchase COMPLETED.
    pub(super) completed: u64,
    /// ABORTED: the saga failed and was compensated.
    pub(super) aborted: u64,
    /// FAILED_PRECONDITION: not enough stock locally (or an item no longer listed).
    pub(super) out_of_stock: u64,
    /// OK, the purchase in REQUIRES_ATTENTION.
    pub(super) requires_attention: u64,
    /// OK, the purchase still running when the RPC's deadline came.
    pub(super) unfinished: u64,
    /// Any other status: count and the first message, by code.
    pub(super) other: BTreeMap<String, (u64, String)>,
}

impl Tally {
    /// Every answer.
    pub(super) fn total(&self) -> u64 {
        let other: u64 = self.other.values().map(|(count, _)| count).sum();
        self.completed
            + self.aborted
            + self.out_of_stock
            + self.requires_attention
            + self.unfinished
            + other
    }

    fn add(&mut self, other: Tally) {
        self.completed += other.completed;
        self.aborted += other.aborted;
        self.out_of_stock += other.out_of_stock;
        self.requires_attention += other.requires_attention;
        self.unfinished += other.unfinished;
        for (code, (count, message)) in other.other {
            self.other.entry(code).or_insert((0, message)).0 += count;
        }
    }
}

/// How a paced phase kept to its schedule.
#[derive(Debug)]
pub(super) struct Pacing {
    /// Purchases per second the buyers offered together.
    pub(super) rate: f64,
    /// Latency from the actual send, µs (`Answers::latency` counts from the scheduled time).
    pub(super) from_send: Histogram<u64>,
    /// Calls sent after their time because the buyer's previous purchase had not answered yet.
    pub(super) late: u64,
    /// How late those calls were sent, µs.
    pub(super) lag: Histogram<u64>,
    /// First scheduled send → last actual send.
    pub(super) last_send: Duration,
}

impl Pacing {
    pub(super) fn new(rate: f64) -> Self {
        Self {
            rate,
            from_send: measure::histogram(),
            late: 0,
            lag: measure::histogram(),
            last_send: Duration::ZERO,
        }
    }

    /// The span the sends took, one interval added so that sends exactly on schedule read as the
    /// offered rate.
    pub(super) fn span(&self) -> Duration {
        self.last_send + Duration::from_secs_f64(1.0 / self.rate)
    }

    fn add(&mut self, other: &Pacing) -> anyhow::Result<()> {
        self.from_send.add(&other.from_send)?;
        self.lag.add(&other.lag)?;
        self.late += other.late;
        self.last_send = self.last_send.max(other.last_send);
        Ok(())
    }
}

/// When a paced call was due and when it went out.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    /// Its time on the schedule, from the phase's start.
    pub(super) due: Duration,
    /// The same as an instant.
    pub(super) scheduled: Instant,
    /// When it was sent.
    pub(super) sent: Instant,
    /// How long after `scheduled` the buyer's previous purchase answered; zero when it answered in
    /// time (the buyer then waited for `scheduled`).
    pub(super) lag: Duration,
}

/// What the buyers of one phase saw.
#[derive(Debug)]
pub(super) struct Answers {
    /// Latency of every answer, µs: from the send, or in a paced phase from the scheduled send.
    pub(super) latency: Histogram<u64>,
    /// Latency of the COMPLETED answers, µs, counted as `latency` is.
    pub(super) completed_latency: Histogram<u64>,
    /// The answers by kind.
    pub(super) tally: Tally,
    /// Lines asked for, over every call.
    pub(super) lines: u64,
    /// First call sent (or scheduled) → last answer received.
    pub(super) wall: Duration,
    /// The schedule of a paced phase; `None` in the closed loop.
    pub(super) pacing: Option<Pacing>,
}

impl Answers {
    pub(super) fn new(pacing: Option<Pacing>) -> Self {
        Self {
            latency: measure::histogram(),
            completed_latency: measure::histogram(),
            tally: Tally::default(),
            lines: 0,
            wall: Duration::ZERO,
            pacing,
        }
    }

    pub(super) fn add(&mut self, other: Answers) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        self.completed_latency.add(&other.completed_latency)?;
        self.tally.add(other.tally);
        self.lines += other.lines;
        if let (Some(pacing), Some(other)) = (&mut self.pacing, &other.pacing) {
            pacing.add(other)?;
        }
        Ok(())
    }

    /// Records a paced call sent in `slot`, answered now.
    pub(super) fn record_paced(
        &mut self,
        answer: Result<tonic::Response<CreatePurchaseResponse>, tonic::Status>,
        slot: &Slot,
    ) {
        if let Some(pacing) = &mut self.pacing {
            pacing
                .from_send
                .saturating_record(micros(slot.sent.elapsed()));
            if !slot.lag.is_zero() {
                pacing.late += 1;
                pacing.lag.saturating_record(micros(slot.lag));
            }
            pacing.last_send = pacing.last_send.max(slot.due + slot.lag);
        }
        self.record(answer, slot.scheduled.elapsed());
    }

    pub(super) fn record(
        &mut self,
        answer: Result<tonic::Response<CreatePurchaseResponse>, tonic::Status>,
        took: Duration,
    ) {
        let micros = micros(took);
        self.latency.saturating_record(micros);
        let tally = &mut self.tally;
        // An answer without a purchase (never sent) would count as unfinished.
        let state =
            answer.map(|response| response.into_inner().purchase.unwrap_or_default().state());
        match state {
            Ok(PurchaseState::Completed) => {
                tally.completed += 1;
                self.completed_latency.saturating_record(micros);
            }
            Ok(PurchaseState::RequiresAttention) => tally.requires_attention += 1,
            Ok(_) => tally.unfinished += 1,
            Err(status) => match status.code() {
                tonic::Code::Aborted => tally.aborted += 1,
                tonic::Code::FailedPrecondition => tally.out_of_stock += 1,
                code => {
                    let message = status.message().to_owned();
                    tally
                        .other
                        .entry(format!("{code:?}"))
                        .or_insert((0, message))
                        .0 += 1;
                }
            },
        }
    }
}

fn micros(span: Duration) -> u64 {
    u64::try_from(span.as_micros()).unwrap_or(u64::MAX)
}
