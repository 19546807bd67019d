//! The senders: each POSTs deliveries from its own [`Mix`] until the phase's `--duration` is spent,
//! either one after the other (the closed loop) or on its own share of a fixed schedule (paced, with
//! latency counted from the scheduled send so a slow answer also charges the sends it held back).

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::AtomicI64},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::{
    Phase, Seller,
    deliveries::{Delivery, Ledger, Mix},
};
use crate::loadtest::{LoadtestArgs, measure};

/// Longest wait for one answer; a local side port slower than this is broken, not slow.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client the senders (and the ceiling) share: one keep-alive connection per sender.
pub(super) fn client(senders: u32) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(TIMEOUT)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(senders as usize)
        .build()?)
}

/// How a request was answered: the HTTP status, or the kind of transport failure.
pub(super) async fn answer(request: reqwest::RequestBuilder) -> String {
    match request.send().await {
        // Read to the end, so the connection goes back to the pool.
        Ok(response) => {
            let status = response.status().as_u16();
            match response.bytes().await {
                Ok(_) => status.to_string(),
                Err(err) => format!("{status} with an unreadable body ({err})"),
            }
        }
        Err(err) if err.is_timeout() => "timed out".to_owned(),
        Err(err) if err.is_connect() => "connection refused".to_owned(),
        Err(_) => "transport error".to_owned(),
    }
}

/// The paced phase's schedule: send `n` is due `n / rate` after the start, and sender `i` sends
/// `i`, `i + senders`, `i + 2 senders`, … so each keeps its own evenly spaced times.
#[derive(Debug)]
struct Schedule {
    start: Instant,
    rate: f64,
    senders: u64,
    until: Duration,
}

impl Schedule {
    /// When the sender's `k`-th send is due, from the start; `None` past the phase's duration.
    fn due(&self, sender: u64, k: u64) -> Option<Duration> {
        let n = sender + k * self.senders;
        let due = Duration::from_secs_f64(n as f64 / self.rate);
        (due < self.until).then_some(due)
    }
}

/// How the paced phase kept to its schedule.
#[derive(Debug)]
pub(super) struct Pacing {
    /// Deliveries per second offered.
    pub(super) rate: f64,
    /// Latency from the actual send, µs (`Answers::latency` counts from the scheduled time).
    pub(super) from_send: Histogram<u64>,
    /// Sends that went out after their time because the sender's previous one had not answered.
    pub(super) late: u64,
    /// How late, µs.
    pub(super) lag: Histogram<u64>,
    /// First scheduled send → last actual send.
    pub(super) last_send: Duration,
}

impl Pacing {
    fn new(rate: f64) -> Self {
        Self {
            rate,
            from_send: measure::histogram(),
            late: 0,
            lag: measure::histogram(),
            last_send: Duration::ZERO,
        }
    }

    /// The span the sends took, one interval added so sends exactly on time read as the offered rate.
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

/// What the senders of one phase saw.
#[derive(Debug)]
pub(super) struct Answers {
    /// Latency of every answer, µs: from the send, or in the paced phase from the scheduled send.
    pub(super) latency: Histogram<u64>,
    /// The same by kind of delivery: creates, redeliveries (which write nothing), updates.
    pub(super) by_kind: [Histogram<u64>; 3],
    /// Answers by status (`"200"`, `"500"`, `"timed out"`, …).
    pub(super) statuses: BTreeMap<String, u64>,
    /// What was delivered, for the invariant.
    pub(super) ledger: Ledger,
    /// First send (or scheduled send) → last answer.
    pub(super) wall: Duration,
    /// The schedule of the paced phase; `None` in the closed loop.
    pub(super) pacing: Option<Pacing>,
}

impl Answers {
    fn new(pacing: Option<Pacing>) -> Self {
        Self {
            latency: measure::histogram(),
            by_kind: [(); 3].map(|()| measure::histogram()),
            statuses: BTreeMap::new(),
            ledger: Ledger::default(),
            wall: Duration::ZERO,
            pacing,
        }
    }

    /// Every answer.
    pub(super) fn total(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Answers other than 200.
    pub(super) fn not_ok(&self) -> u64 {
        self.total() - self.statuses.get("200").copied().unwrap_or(0)
    }

    fn record(&mut self, delivery: &Delivery, status: String, took: Duration) {
        self.latency.saturating_record(micros(took));
        self.by_kind[delivery.kind as usize].saturating_record(micros(took));
        self.ledger.record(delivery, status == "200");
        *self.statuses.entry(status).or_default() += 1;
    }

    fn add(&mut self, other: Answers) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        for (mine, theirs) in self.by_kind.iter_mut().zip(&other.by_kind) {
            mine.add(theirs)?;
        }
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.ledger.add(other.ledger);
        if let (Some(pacing), Some(other)) = (&mut self.pacing, &other.pacing) {
            pacing.add(other)?;
        }
        Ok(())
    }
}

/// Runs `--senders` senders over `sellers`, closed-loop or paced as the phase is, for `--duration`;
/// returns once every delivery was answered.
pub(super) async fn send(
    sellers: &Arc<Vec<Seller>>,
    phase: Phase,
    args: &LoadtestArgs,
) -> anyhow::Result<Answers> {
    let client = client(args.senders)?;
    let next_order = Arc::new(AtomicI64::new(phase.first_order()));
    let rate = f64::from(args.webhook_rate);
    let pacing = || (phase == Phase::Paced).then(|| Pacing::new(rate));
    let started = Instant::now();
    let schedule = Arc::new(Schedule {
        start: started,
        rate,
        senders: u64::from(args.senders),
        until: args.duration(),
    });
    let mut tasks = JoinSet::new();
    for number in 0..args.senders {
        let sender = Sender {
            client: client.clone(),
            sellers: sellers.clone(),
            mix: Mix::new(sellers.clone(), next_order.clone()),
            answers: Answers::new(pacing()),
        };
        match phase {
            Phase::ClosedLoop => tasks.spawn(sender.closed_loop(started + args.duration())),
            Phase::Paced => tasks.spawn(sender.paced(schedule.clone(), u64::from(number))),
        };
    }
    let mut all = Answers::new(pacing());
    while let Some(answers) = tasks.join_next().await {
        all.add(answers??)?;
    }
    all.wall = started.elapsed();
    Ok(all)
}

/// One sender: the shared client, its own stream of deliveries and what it saw.
#[derive(Debug)]
struct Sender {
    client: reqwest::Client,
    sellers: Arc<Vec<Seller>>,
    mix: Mix,
    answers: Answers,
}

impl Sender {
    /// POSTs each delivery as soon as the previous one answered.
    async fn closed_loop(mut self, until: Instant) -> anyhow::Result<Answers> {
        while Instant::now() < until {
            let delivery = self.mix.next()?;
            let sent = Instant::now();
            let status = self.post(&delivery).await;
            self.answers.record(&delivery, status, sent.elapsed());
        }
        Ok(self.answers)
    }

    /// POSTs each delivery at its time on the schedule, or as soon as the previous one answered when
    /// that came later; latency counts from the scheduled time (no coordinated omission).
    async fn paced(mut self, schedule: Arc<Schedule>, number: u64) -> anyhow::Result<Answers> {
        let mut k = 0;
        while let Some(due) = schedule.due(number, k) {
            k += 1;
            let delivery = self.mix.next()?;
            let scheduled = schedule.start + due;
            let lag = Instant::now().saturating_duration_since(scheduled);
            tokio::time::sleep_until(scheduled.into()).await;
            let sent = Instant::now();
            let status = self.post(&delivery).await;
            if let Some(pacing) = &mut self.answers.pacing {
                pacing.from_send.saturating_record(micros(sent.elapsed()));
                if !lag.is_zero() {
                    pacing.late += 1;
                    pacing.lag.saturating_record(micros(lag));
                }
                pacing.last_send = pacing.last_send.max(due + lag);
            }
            self.answers.record(&delivery, status, scheduled.elapsed());
        }
        Ok(self.answers)
    }

    async fn post(&self, delivery: &Delivery) -> String {
        let request = self
            .client
            .post(&self.sellers[delivery.seller].url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Signature", &delivery.signature)
            .body(delivery.body.clone());
        answer(request).await
    }
}

fn micros(span: Duration) -> u64 {
    u64::try_from(span.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sender_keeps_its_own_evenly_spaced_times_until_the_duration_ends() {
        let schedule = Schedule {
            start: Instant::now(),
            rate: 500.0,
            senders: 32,
            until: Duration::from_secs(1),
        };
        let millis = |sender, k| schedule.due(sender, k).map(|due| due.as_millis());

        assert_eq!(millis(0, 0), Some(0));
        assert_eq!(millis(5, 0), Some(10));
        assert_eq!(millis(5, 1), Some(74));
        assert_eq!(millis(31, 15), None);
        assert_eq!(millis(0, 15), Some(960));
        assert_eq!(millis(0, 16), None);
    }
}
