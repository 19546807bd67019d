//! The buyers: each calls PurchaseService.Purchase on random items of random sellers, one call after
//! the other, until the phase's budget is spent, and records how long each answer took and what it
//! was.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use super::{Phase, Seller};
use crate::{
    demo::with_bearer,
    loadtest::{LoadtestArgs, measure, rig::Rig},
    pb::v1::{
        PurchaseLine, PurchaseRequest, PurchaseState,
        purchase_service_client::PurchaseServiceClient,
    },
};

/// Share of the faults phase's purchases that have two or three lines.
const MULTI_LINE_SHARE: f64 = 0.2;

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

/// What the buyers of one phase saw.
#[derive(Debug)]
pub(super) struct Answers {
    /// Latency of every answer, µs.
    pub(super) latency: Histogram<u64>,
    /// Latency of the COMPLETED answers, µs.
    pub(super) completed_latency: Histogram<u64>,
    /// The answers by kind.
    pub(super) tally: Tally,
    /// Lines asked for, over every call.
    pub(super) lines: u64,
    /// First call sent → last answer received.
    pub(super) wall: Duration,
}

impl Answers {
    fn new() -> Self {
        Self {
            latency: measure::histogram(),
            completed_latency: measure::histogram(),
            tally: Tally::default(),
            lines: 0,
            wall: Duration::ZERO,
        }
    }

    fn add(&mut self, other: Answers) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        self.completed_latency.add(&other.completed_latency)?;
        self.tally.add(other.tally);
        self.lines += other.lines;
        Ok(())
    }

    fn record(
        &mut self,
        answer: Result<tonic::Response<crate::pb::v1::Purchase>, tonic::Status>,
        took: Duration,
    ) {
        let micros = took.as_micros() as u64;
        self.latency.saturating_record(micros);
        let tally = &mut self.tally;
        match answer.map(|response| response.into_inner().state()) {
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

/// When the buyers stop: at an instant, or after a number of calls shared by all of them.
#[derive(Debug)]
enum Budget {
    Until(Instant),
    Calls { sent: AtomicU64, limit: u64 },
}

impl Budget {
    /// Whether one more call may be sent.
    fn take(&self) -> bool {
        match self {
            Budget::Until(end) => Instant::now() < *end,
            Budget::Calls { sent, limit } => sent.fetch_add(1, Ordering::Relaxed) < *limit,
        }
    }
}

/// Runs `args.buyers` buyers until the phase's budget is spent and every call was answered.
pub(super) async fn buy(
    rig: &Rig,
    sellers: &Arc<Vec<Seller>>,
    phase: Phase,
    args: &LoadtestArgs,
) -> anyhow::Result<Answers> {
    let started = Instant::now();
    let budget = Arc::new(match args.purchases {
        Some(limit) => Budget::Calls {
            sent: AtomicU64::new(0),
            limit,
        },
        None => Budget::Until(started + args.duration),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for buyer in 0..args.buyers as usize {
        let client = PurchaseServiceClient::new(rig.channel(buyer));
        let (token, sellers, budget) = (rig.token.clone(), sellers.clone(), budget.clone());
        tasks.spawn(async move {
            let mut answers = Answers::new();
            let mut client = client;
            let mut call = 0_u64;
            while budget.take() {
                let request = purchase(&sellers, phase, buyer, call);
                answers.lines += request.lines.len() as u64;
                call += 1;
                let sent = Instant::now();
                let answer = client.purchase(with_bearer(request, &token)?).await;
                answers.record(answer, sent.elapsed());
            }
            anyhow::Ok(answers)
        });
    }
    let mut all = Answers::new();
    while let Some(answers) = tasks.join_next().await {
        all.add(answers??)?;
    }
    all.wall = started.elapsed();
    Ok(all)
}

/// A purchase of a random seller's items under a fresh idempotency key: one item, or in the faults
/// phase two or three distinct items one time in five; one unit each.
fn purchase(sellers: &[Seller], phase: Phase, buyer: usize, call: u64) -> PurchaseRequest {
    let seller = &sellers[rand::random_range(0..sellers.len())];
    let items = &seller.items;
    let wanted = if phase == Phase::Faults && rand::random_bool(MULTI_LINE_SHARE) {
        rand::random_range(2..=3).min(items.len())
    } else {
        1
    };
    let lines = rand::seq::index::sample(&mut rand::rng(), items.len(), wanted)
        .into_iter()
        .map(|index| PurchaseLine {
            item_id: items[index].product_id,
            quantity: 1,
        })
        .collect();
    PurchaseRequest {
        user_id: seller.user.to_string(),
        idempotency_key: format!("{}-{buyer}-{call}", phase.key_prefix()),
        lines,
        buyer_ref: format!("loadtest buyer {buyer}"),
    }
}
