//! The buyers: each calls PurchaseService.Purchase on random items of random sellers until the
//! phase's budget is spent, either one call after the other (the closed loop, which finds the most
//! the service does) or on its own share of a fixed schedule (paced, which finds the latency at a
//! given rate).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::{
    Phase, Seller,
    answers::{Answers, Pacing, Slot},
};
use crate::demo::with_bearer;
use crate::loadtest::{LoadtestArgs, rig::Rig};
use brx_sync::pb::v1::{
    CreatePurchaseRequest, PurchaseLine, purchase_service_client::PurchaseServiceClient,
};

/// Share of the faults phase's purchases that have two or three lines.
const MULTI_LINE_SHARE: f64 = 0.2;

/// When the closed-loop buyers stop: at an instant, or after a number of calls shared by all of them.
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

/// The paced phases' schedule: call `n` is due `n / rate` after the start, and buyer `i` sends calls
/// `i`, `i + buyers`, `i + 2 buyers`, … so each buyer keeps its own evenly spaced times.
#[derive(Debug)]
struct Schedule {
    start: Instant,
    rate: f64,
    buyers: u64,
    /// Calls are due before this offset, or (with `--purchases-per-phase`) number fewer than this many.
    until: Option<Duration>,
    calls: Option<u64>,
}

impl Schedule {
    fn new(start: Instant, args: &LoadtestArgs) -> Self {
        Self {
            start,
            rate: f64::from(args.rate),
            buyers: u64::from(args.buyers()),
            until: args.purchases.is_none().then_some(args.duration()),
            calls: args.purchases,
        }
    }

    /// When the buyer's `k`-th call is due, from the start; `None` once the budget is spent.
    fn due(&self, buyer: u64, k: u64) -> Option<Duration> {
        let n = buyer + k * self.buyers;
        let due = Duration::from_secs_f64(n as f64 / self.rate);
        let within = self.until.is_none_or(|end| due < end) && self.calls.is_none_or(|c| n < c);
        within.then_some(due)
    }
}

/// Runs `args.buyers()` buyers, closed-loop or paced as the phase is, until the phase's budget is spent
/// and every call was answered.
pub(super) async fn buy(
    rig: &Rig,
    sellers: &Arc<Vec<Seller>>,
    phase: Phase,
    args: &LoadtestArgs,
) -> anyhow::Result<Answers> {
    let started = Instant::now();
    let pacing = || phase.paced().then(|| Pacing::new(f64::from(args.rate)));
    let mut tasks = JoinSet::new();
    if phase.paced() {
        let schedule = Arc::new(Schedule::new(started, args));
        for buyer in 0..args.buyers() {
            let buyer = Buyer::new(rig, sellers, phase, buyer);
            tasks.spawn(buyer.paced(schedule.clone(), pacing()));
        }
    } else {
        let budget = Arc::new(match args.purchases {
            Some(limit) => Budget::Calls {
                sent: AtomicU64::new(0),
                limit,
            },
            None => Budget::Until(started + args.duration()),
        });
        for buyer in 0..args.buyers() {
            tasks.spawn(Buyer::new(rig, sellers, phase, buyer).closed_loop(budget.clone()));
        }
    }
    let mut all = Answers::new(pacing());
    while let Some(answers) = tasks.join_next().await {
        all.add(answers??)?;
    }
    all.wall = started.elapsed();
    Ok(all)
}

/// One buyer: its own connection, the seller list, and its number in the phase's idempotency keys.
#[derive(Debug)]
struct Buyer {
    client: PurchaseServiceClient<Channel>,
    token: String,
    sellers: Arc<Vec<Seller>>,
    phase: Phase,
    number: u32,
}

impl Buyer {
    fn new(rig: &Rig, sellers: &Arc<Vec<Seller>>, phase: Phase, number: u32) -> Self {
        Self {
            client: PurchaseServiceClient::new(rig.channel(number as usize)),
            token: rig.token.clone(),
            sellers: sellers.clone(),
            phase,
            number,
        }
    }

    /// Sends each call as soon as the previous one answered.
    async fn closed_loop(mut self, budget: Arc<Budget>) -> anyhow::Result<Answers> {
        let mut answers = Answers::new(None);
        let mut call = 0_u64;
        while budget.take() {
            let request = self.request(call, &mut answers)?;
            call += 1;
            let sent = Instant::now();
            let answer = self.client.create_purchase(request).await;
            answers.record(answer, sent.elapsed());
        }
        Ok(answers)
    }

    /// Sends each call at its time on the schedule, or as soon as the previous one answered when
    /// that came later; latency counts from the scheduled time, so a slow answer also charges the
    /// calls it held back (no coordinated omission).
    async fn paced(
        mut self,
        schedule: Arc<Schedule>,
        pacing: Option<Pacing>,
    ) -> anyhow::Result<Answers> {
        let mut answers = Answers::new(pacing);
        let mut call = 0_u64;
        while let Some(due) = schedule.due(u64::from(self.number), call) {
            let request = self.request(call, &mut answers)?;
            call += 1;
            let scheduled = schedule.start + due;
            let lag = Instant::now().saturating_duration_since(scheduled);
            tokio::time::sleep_until(scheduled.into()).await;
            let sent = Instant::now();
            let answer = self.client.create_purchase(request).await;
            let slot = Slot {
                due,
                scheduled,
                sent,
                lag,
            };
            answers.record_paced(answer, &slot);
        }
        Ok(answers)
    }

    /// The buyer's `call`-th request with its bearer token; its lines are counted in `answers`.
    fn request(
        &self,
        call: u64,
        answers: &mut Answers,
    ) -> anyhow::Result<tonic::Request<CreatePurchaseRequest>> {
        let request = purchase(&self.sellers, self.phase, self.number, call);
        answers.lines += request.lines.len() as u64;
        with_bearer(request, &self.token)
    }
}

/// A purchase of a random seller's items under a fresh idempotency key: one item, or in the faults
/// phase two or three distinct items one time in five; one unit each.
fn purchase(sellers: &[Seller], phase: Phase, buyer: u32, call: u64) -> CreatePurchaseRequest {
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
    CreatePurchaseRequest {
        user_id: seller.user.to_string(),
        idempotency_key: format!("{}-{buyer}-{call}", phase.key_prefix()),
        lines,
        buyer_ref: format!("loadtest buyer {buyer}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(until: Option<Duration>, calls: Option<u64>) -> Schedule {
        Schedule {
            start: Instant::now(),
            rate: 300.0,
            buyers: 100,
            until,
            calls,
        }
    }

    #[test]
    fn each_buyer_keeps_its_own_evenly_spaced_times_until_the_duration_ends() {
        let schedule = schedule(Some(Duration::from_secs(1)), None);
        let millis = |buyer, k| schedule.due(buyer, k).map(|due| due.as_millis());
        assert_eq!(millis(0, 0), Some(0));
        assert_eq!(millis(3, 0), Some(10));
        assert_eq!(millis(3, 1), Some(343));
        assert_eq!(millis(99, 2), Some(996));
        assert_eq!(millis(0, 3), None);
    }

    #[test]
    fn the_schedule_ends_after_the_number_of_calls_asked_for() {
        let schedule = schedule(None, Some(150));
        assert!(schedule.due(49, 1).is_some());
        assert!(schedule.due(50, 1).is_none());
    }
}
