//! The purchase saga as a pure state machine: from the durable state, which step comes next; from a
//! step's recorded intent or result, the new state. No I/O here. The driver runs each step outside
//! any transaction, writes its intent to the step log before and its result after, and feeds both
//! back through [`Saga::apply`]; a worker resuming a purchase folds the log with [`Saga::replay`]
//! and carries on from [`Saga::next_step`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Give-backs that may fail (each retried with backoff) before a person has to look.
pub const MAX_GIVE_BACK_FAILURES: u32 = 5;

/// One line's progress on CardTrader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineStatus {
    /// Not touched on CardTrader yet.
    Pending,
    /// The decrement was sent and its outcome is not known (a timeout, or a crash right after).
    DecrementSent,
    /// CardTrader took the stock.
    Taken,
    /// CardTrader could not take it (less stock, product gone, a 4xx): nothing to give back.
    Refused,
    /// The give-back was sent and its outcome is not known.
    GiveBackSent,
    /// Given back on CardTrader (incremented, or re-created from the snapshot).
    GivenBack,
}

/// Where the whole purchase is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Reserved locally; taking each line's stock on CardTrader in order.
    Taking,
    /// Every line taken: the local sale is being committed. From here on the sale stands.
    Finalizing,
    /// Sold on both sides.
    Completed,
    /// A line failed for good or the deadline passed: giving back, last line first.
    Compensating {
        /// Why the purchase is being undone.
        reason: String,
    },
    /// Undone on CardTrader and locally.
    Failed {
        /// Why.
        reason: String,
    },
    /// Neither finishing nor undoing can be decided or done automatically.
    RequiresAttention {
        /// What a person has to look at.
        reason: String,
        /// Whether the purchase was being undone when it stopped: a retry carries on undoing.
        #[serde(default)]
        undoing: bool,
    },
}

/// The name of a [`Phase`], as the `purchases.state` column stores it (CHECK-constrained to these)
/// and as callers filter by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PurchaseState {
    /// [`Phase::Taking`].
    Taking,
    /// [`Phase::Finalizing`].
    Finalizing,
    /// [`Phase::Completed`].
    Completed,
    /// [`Phase::Compensating`].
    Compensating,
    /// [`Phase::Failed`].
    Failed,
    /// [`Phase::RequiresAttention`].
    RequiresAttention,
}

impl PurchaseState {
    const ALL: [PurchaseState; 6] = [
        PurchaseState::Taking,
        PurchaseState::Finalizing,
        PurchaseState::Completed,
        PurchaseState::Compensating,
        PurchaseState::Failed,
        PurchaseState::RequiresAttention,
    ];

    /// The column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            PurchaseState::Taking => "taking",
            PurchaseState::Finalizing => "finalizing",
            PurchaseState::Completed => "completed",
            PurchaseState::Compensating => "compensating",
            PurchaseState::Failed => "failed",
            PurchaseState::RequiresAttention => "requires_attention",
        }
    }

    /// The state a column value names.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == raw)
    }
}

impl Phase {
    /// Its state's name.
    pub fn state(&self) -> PurchaseState {
        match self {
            Phase::Taking => PurchaseState::Taking,
            Phase::Finalizing => PurchaseState::Finalizing,
            Phase::Completed => PurchaseState::Completed,
            Phase::Compensating { .. } => PurchaseState::Compensating,
            Phase::Failed { .. } => PurchaseState::Failed,
            Phase::RequiresAttention { .. } => PurchaseState::RequiresAttention,
        }
    }

    /// Whether the saga will take no further step on its own.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Phase::Completed | Phase::Failed { .. } | Phase::RequiresAttention { .. }
        )
    }
}

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Confirm CardTrader still has the line's quantity, then decrement it (record
    /// [`Event::DecrementSent`] before sending).
    TakeStock {
        /// Line index.
        line: usize,
    },
    /// Re-read CardTrader to decide whether a sent decrement was applied.
    VerifyTake {
        /// Line index.
        line: usize,
    },
    /// Give the line's quantity back (record [`Event::GiveBackSent`] before sending).
    GiveBack {
        /// Line index.
        line: usize,
    },
    /// Re-read CardTrader to decide whether a sent give-back was applied.
    VerifyGiveBack {
        /// Line index.
        line: usize,
    },
    /// One local transaction: lower quantities and reservations, mark the purchase completed.
    Finalize,
    /// One local transaction: release the reservations, mark the purchase failed.
    Release,
    /// Nothing to do: the saga is terminal.
    Stop,
}

/// A step's recorded intent or result: the entries of the step log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// About to send the decrement of `line`.
    DecrementSent {
        /// Line index.
        line: usize,
        /// When CardTrader will have answered or dropped it: until then a re-read that shows it
        /// not applied proves nothing (it may still land), so "not applied" is never decided
        /// before. Absent in logs of earlier releases.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        settled_by: Option<DateTime<Utc>>,
    },
    /// CardTrader took `line`'s stock (answered, or verified after an unknown outcome).
    Taken {
        /// Line index.
        line: usize,
    },
    /// CardTrader cannot take `line`'s stock, or a sent decrement was verified as not applied while
    /// undoing.
    Refused {
        /// Line index.
        line: usize,
        /// Why.
        reason: String,
    },
    /// A sent decrement was verified as not applied while taking stock: it may be sent again.
    NotTaken {
        /// Line index.
        line: usize,
    },
    /// About to send the give-back of `line`.
    GiveBackSent {
        /// Line index.
        line: usize,
        /// As for [`Event::DecrementSent`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        settled_by: Option<DateTime<Utc>>,
    },
    /// `line`'s quantity is back on CardTrader.
    GivenBack {
        /// Line index.
        line: usize,
    },
    /// The give-back of `line` failed, or was verified as not applied: it will be retried.
    GiveBackFailed {
        /// Line index.
        line: usize,
        /// Why.
        reason: String,
    },
    /// Whether a sent call was applied cannot be told from CardTrader.
    Undecidable {
        /// Line index.
        line: usize,
        /// What was seen.
        reason: String,
    },
    /// The purchase's deadline passed.
    DeadlinePassed,
    /// The driver cannot go on calling CardTrader (the seller's token is gone, or its job used its
    /// last attempt): undone locally if CardTrader holds nothing of it yet, else handed to a person.
    GaveUp {
        /// Why.
        reason: String,
    },
    /// The local sale was committed.
    Finalized,
    /// The reservations were released.
    Released,
    /// An operator asked for a purchase in `RequiresAttention` to be tried again: unknown outcomes
    /// are verified again and give-backs get a fresh allowance of failures.
    Retried,
    /// An operator settled a purchase in `RequiresAttention` by hand: `sold` keeps the sale
    /// (completed), otherwise it is undone (failed). The local effect is the operator's call.
    Resolved {
        /// Whether the sale stands.
        sold: bool,
        /// The operator's note.
        note: String,
    },
}

/// The durable state of one purchase saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saga {
    /// Where the purchase is.
    pub phase: Phase,
    /// Each line's progress, in request order.
    pub lines: Vec<LineStatus>,
    /// Give-backs that failed so far.
    pub give_back_failures: u32,
    /// Per line, when the last write sent for it will have settled (see
    /// [`Event::DecrementSent`]'s `settled_by`).
    #[serde(default)]
    pub settled_by: Vec<Option<DateTime<Utc>>>,
}

impl Saga {
    /// A purchase of `lines` lines, reserved locally and not yet touched on CardTrader.
    pub fn new(lines: usize) -> Self {
        Self {
            phase: Phase::Taking,
            lines: vec![LineStatus::Pending; lines],
            give_back_failures: 0,
            settled_by: vec![None; lines],
        }
    }

    /// The state a purchase of `lines` lines reaches through `log`: how a worker resumes it.
    pub fn replay<'a>(lines: usize, log: impl IntoIterator<Item = &'a Event>) -> Self {
        log.into_iter().fold(Self::new(lines), |mut saga, event| {
            saga.apply(event);
            saga
        })
    }

    /// What to do next. An unknown outcome is always settled first: nothing is sent while it is
    /// not known whether an earlier call took effect.
    pub fn next_step(&self) -> Step {
        let find = |status: LineStatus| self.lines.iter().position(|line| *line == status);
        match &self.phase {
            Phase::Completed | Phase::Failed { .. } | Phase::RequiresAttention { .. } => Step::Stop,
            Phase::Finalizing => Step::Finalize,
            Phase::Taking => match (find(LineStatus::DecrementSent), find(LineStatus::Pending)) {
                (Some(line), _) => Step::VerifyTake { line },
                (None, Some(line)) => Step::TakeStock { line },
                (None, None) => Step::Finalize,
            },
            Phase::Compensating { .. } => {
                if let Some(line) = find(LineStatus::DecrementSent) {
                    Step::VerifyTake { line }
                } else if let Some(line) = find(LineStatus::GiveBackSent) {
                    Step::VerifyGiveBack { line }
                } else if let Some(line) = self.lines.iter().rposition(|l| *l == LineStatus::Taken)
                {
                    Step::GiveBack { line }
                } else {
                    Step::Release
                }
            }
        }
    }

    /// Applies one recorded event. Events that make no sense in the current state (a duplicate
    /// after a crash, a deadline after finalizing) change nothing.
    pub fn apply(&mut self, event: &Event) {
        if let Phase::RequiresAttention { reason, undoing } = &self.phase {
            let (reason, undoing) = (reason.clone(), *undoing);
            self.settle_by_hand(event, &reason, undoing);
            return;
        }
        if self.phase.is_terminal() {
            return;
        }
        match event {
            Event::DecrementSent { line, settled_by } => {
                self.set(*line, LineStatus::DecrementSent);
                self.note_settled_by(*line, *settled_by);
            }
            Event::Taken { line } => {
                self.set(*line, LineStatus::Taken);
                if self.phase == Phase::Taking && self.lines.iter().all(|l| *l == LineStatus::Taken)
                {
                    self.phase = Phase::Finalizing;
                }
            }
            Event::NotTaken { line } => self.set(*line, LineStatus::Pending),
            Event::Refused { line, reason } => {
                self.set(*line, LineStatus::Refused);
                self.compensate(reason);
            }
            Event::GiveBackSent { line, settled_by } => {
                self.set(*line, LineStatus::GiveBackSent);
                self.note_settled_by(*line, *settled_by);
            }
            Event::GivenBack { line } => self.set(*line, LineStatus::GivenBack),
            Event::GiveBackFailed { line, reason } => {
                self.set(*line, LineStatus::Taken);
                self.give_back_failures += 1;
                if self.give_back_failures >= MAX_GIVE_BACK_FAILURES {
                    let reason = format!(
                        "giving back line {line} failed {} times: {reason}",
                        self.give_back_failures
                    );
                    self.needs_a_person(reason);
                }
            }
            Event::Undecidable { line, reason } => {
                self.needs_a_person(format!(
                    "cannot tell whether line {line} was applied: {reason}"
                ));
            }
            Event::DeadlinePassed => self.compensate("the purchase's deadline passed"),
            Event::GaveUp { reason } => self.give_up(reason),
            Event::Finalized => {
                if self.phase == Phase::Finalizing {
                    self.phase = Phase::Completed;
                }
            }
            Event::Released => {
                if let Phase::Compensating { reason } = &self.phase {
                    self.phase = Phase::Failed {
                        reason: reason.clone(),
                    };
                }
            }
            // Only meaningful in `RequiresAttention` (see `settle_by_hand`).
            Event::Retried | Event::Resolved { .. } => {}
        }
    }

    /// Stops for a person, remembering whether the purchase was being undone.
    fn needs_a_person(&mut self, reason: String) {
        let undoing = matches!(self.phase, Phase::Compensating { .. });
        self.phase = Phase::RequiresAttention { reason, undoing };
    }

    /// Whether CardTrader may hold something of this purchase that only a CardTrader call can
    /// settle: a line taken, or a call whose outcome is not known.
    fn holds_stock_on_cardtrader(&self) -> bool {
        self.lines.iter().any(|line| {
            matches!(
                line,
                LineStatus::DecrementSent | LineStatus::Taken | LineStatus::GiveBackSent
            )
        })
    }

    /// No more CardTrader calls: what is left must be local. Nothing taken yet: undo locally.
    /// Every line taken and finalizing: the sale is committed locally. Anything else needs a person.
    fn give_up(&mut self, reason: &str) {
        match &self.phase {
            Phase::Finalizing => {}
            Phase::Taking | Phase::Compensating { .. } if !self.holds_stock_on_cardtrader() => {
                if self.phase == Phase::Taking {
                    self.phase = Phase::Compensating {
                        reason: reason.to_owned(),
                    };
                }
            }
            _ => self.needs_a_person(format!("gave up: {reason}")),
        }
    }

    /// The only events a purchase in `RequiresAttention` takes: an operator's retry or resolution.
    fn settle_by_hand(&mut self, event: &Event, reason: &str, was_undoing: bool) {
        match event {
            Event::Retried => {
                self.give_back_failures = 0;
                let undoing = self.lines.iter().any(|line| {
                    matches!(
                        line,
                        LineStatus::Refused | LineStatus::GiveBackSent | LineStatus::GivenBack
                    )
                });
                self.phase = if self.lines.iter().all(|line| *line == LineStatus::Taken) {
                    Phase::Finalizing
                } else if undoing || was_undoing {
                    Phase::Compensating {
                        reason: format!("retried after: {reason}"),
                    }
                } else {
                    Phase::Taking
                };
            }
            Event::Resolved { sold: true, .. } => self.phase = Phase::Completed,
            Event::Resolved { sold: false, note } => {
                self.phase = Phase::Failed {
                    reason: format!("resolved by an operator: {note}"),
                }
            }
            _ => {}
        }
    }

    /// Starts undoing, unless already undoing or past the point where the sale stands.
    fn compensate(&mut self, reason: &str) {
        if self.phase == Phase::Taking {
            self.phase = Phase::Compensating {
                reason: reason.to_owned(),
            };
        }
    }

    fn note_settled_by(&mut self, line: usize, settled_by: Option<DateTime<Utc>>) {
        if self.settled_by.len() < self.lines.len() {
            self.settled_by.resize(self.lines.len(), None);
        }
        if let Some(slot) = self.settled_by.get_mut(line) {
            *slot = settled_by;
        }
    }

    /// When the last write sent for `line` will have settled, if the log says.
    pub fn settled_by(&self, line: usize) -> Option<DateTime<Utc>> {
        self.settled_by.get(line).copied().flatten()
    }

    fn set(&mut self, line: usize, status: LineStatus) {
        if let Some(slot) = self.lines.get_mut(line) {
            *slot = status;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(line: usize) -> Event {
        Event::DecrementSent {
            line,
            settled_by: None,
        }
    }

    fn given(line: usize) -> Event {
        Event::GiveBackSent {
            line,
            settled_by: None,
        }
    }

    /// Runs `saga` to its end, answering each step with `answer`, and returns the steps taken.
    fn drive(saga: &mut Saga, mut answer: impl FnMut(Step) -> Vec<Event>) -> Vec<Step> {
        let mut steps = Vec::new();
        for _ in 0..100 {
            let step = saga.next_step();
            steps.push(step);
            if step == Step::Stop {
                return steps;
            }
            for event in answer(step) {
                saga.apply(&event);
            }
        }
        panic!("the saga did not end: {saga:?}");
    }

    fn all_succeed(step: Step) -> Vec<Event> {
        match step {
            Step::TakeStock { line } => vec![sent(line), Event::Taken { line }],
            Step::GiveBack { line } => {
                vec![given(line), Event::GivenBack { line }]
            }
            Step::Finalize => vec![Event::Finalized],
            Step::Release => vec![Event::Released],
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_purchase_takes_every_line_in_order_then_finalizes() {
        let mut saga = Saga::new(3);

        let steps = drive(&mut saga, all_succeed);

        assert_eq!(
            steps,
            vec![
                Step::TakeStock { line: 0 },
                Step::TakeStock { line: 1 },
                Step::TakeStock { line: 2 },
                Step::Finalize,
                Step::Stop
            ]
        );
        assert_eq!(saga.phase, Phase::Completed);
    }

    #[test]
    fn a_third_line_refused_gives_back_the_first_two_in_reverse_order_then_releases() {
        let mut saga = Saga::new(3);

        let steps = drive(&mut saga, |step| match step {
            Step::TakeStock { line: 2 } => vec![Event::Refused {
                line: 2,
                reason: "CardTrader has 0".into(),
            }],
            other => all_succeed(other),
        });

        assert_eq!(
            &steps[3..],
            &[
                Step::GiveBack { line: 1 },
                Step::GiveBack { line: 0 },
                Step::Release,
                Step::Stop
            ]
        );
        assert_eq!(
            saga.phase,
            Phase::Failed {
                reason: "CardTrader has 0".into()
            }
        );
        assert_eq!(
            saga.lines,
            vec![
                LineStatus::GivenBack,
                LineStatus::GivenBack,
                LineStatus::Refused
            ]
        );
    }

    #[test]
    fn an_unknown_decrement_is_verified_before_anything_else_is_sent() {
        let mut saga = Saga::new(2);
        saga.apply(&sent(0));

        assert_eq!(saga.next_step(), Step::VerifyTake { line: 0 });
        saga.apply(&Event::Taken { line: 0 });
        assert_eq!(
            saga.next_step(),
            Step::TakeStock { line: 1 },
            "applied: not sent again"
        );

        let mut retried = Saga::new(2);
        retried.apply(&sent(0));
        retried.apply(&Event::NotTaken { line: 0 });
        assert_eq!(
            retried.next_step(),
            Step::TakeStock { line: 0 },
            "verified as not applied: safe to send again"
        );
    }

    #[test]
    fn an_undecidable_outcome_needs_a_person_and_stops() {
        let mut saga = Saga::new(1);
        saga.apply(&sent(0));
        saga.apply(&Event::Undecidable {
            line: 0,
            reason: "CardTrader unreachable".into(),
        });

        assert!(matches!(saga.phase, Phase::RequiresAttention { .. }));
        assert_eq!(saga.next_step(), Step::Stop);
    }

    #[test]
    fn a_deadline_while_taking_undoes_but_after_finalize_the_sale_stands() {
        let mut late = Saga::new(2);
        late.apply(&sent(0));
        late.apply(&Event::Taken { line: 0 });
        late.apply(&Event::DeadlinePassed);
        assert_eq!(late.next_step(), Step::GiveBack { line: 0 });

        let mut sold = Saga::new(1);
        sold.apply(&sent(0));
        sold.apply(&Event::Taken { line: 0 });
        sold.apply(&Event::DeadlinePassed);
        assert_eq!(sold.phase, Phase::Finalizing);
        assert_eq!(sold.next_step(), Step::Finalize, "retries forward");
    }

    #[test]
    fn a_decrement_in_doubt_while_undoing_is_verified_and_given_back_if_it_was_applied() {
        let mut saga = Saga::new(2);
        saga.apply(&sent(0));
        saga.apply(&Event::Taken { line: 0 });
        saga.apply(&sent(1));
        saga.apply(&Event::DeadlinePassed);

        assert_eq!(saga.next_step(), Step::VerifyTake { line: 1 });
        saga.apply(&Event::Taken { line: 1 });
        assert_eq!(saga.next_step(), Step::GiveBack { line: 1 });
    }

    #[test]
    fn give_backs_are_retried_until_the_bound_then_need_a_person() {
        // Line 0 taken, the deadline passes before line 1.
        let mut saga = Saga::new(2);
        saga.apply(&sent(0));
        saga.apply(&Event::Taken { line: 0 });
        saga.apply(&Event::DeadlinePassed);
        for attempt in 1..=MAX_GIVE_BACK_FAILURES {
            assert_eq!(saga.next_step(), Step::GiveBack { line: 0 });
            saga.apply(&given(0));
            assert_eq!(saga.next_step(), Step::VerifyGiveBack { line: 0 });
            saga.apply(&Event::GiveBackFailed {
                line: 0,
                reason: "503".into(),
            });
            assert_eq!(saga.give_back_failures, attempt);
        }

        assert!(matches!(saga.phase, Phase::RequiresAttention { .. }));
    }

    #[test]
    fn replaying_the_log_after_a_crash_at_every_point_resumes_where_it_stopped() {
        let mut saga = Saga::new(3);
        let mut log = Vec::new();
        drive(&mut saga, |step| {
            let events = match step {
                Step::TakeStock { line: 2 } => vec![
                    sent(2),
                    Event::Refused {
                        line: 2,
                        reason: "gone".into(),
                    },
                ],
                other => all_succeed(other),
            };
            log.extend(events.clone());
            events
        });

        // A crash after any prefix of the log: the replayed state equals the live one at that point,
        // and driving it on ends the same way.
        for cut in 0..=log.len() {
            let mut resumed = Saga::replay(3, &log[..cut]);
            let mut live = Saga::new(3);
            log[..cut].iter().for_each(|event| live.apply(event));
            assert_eq!(resumed, live);
            drive(&mut resumed, |step| match step {
                Step::TakeStock { line: 2 } => vec![Event::Refused {
                    line: 2,
                    reason: "gone".into(),
                }],
                // What CardTrader would show: line 2's decrement was refused, the others applied.
                Step::VerifyTake { line: 2 } => vec![Event::NotTaken { line: 2 }],
                Step::VerifyTake { line } => vec![Event::Taken { line }],
                Step::VerifyGiveBack { line } => vec![Event::GivenBack { line }],
                other => all_succeed(other),
            });
            assert_eq!(resumed.phase, saga.phase, "cut at {cut}");
        }
    }

    #[test]
    fn a_retry_verifies_again_and_a_resolution_ends_the_purchase() {
        let mut saga = Saga::new(2);
        saga.apply(&sent(0));
        saga.apply(&Event::Undecidable {
            line: 0,
            reason: "quantity moved".into(),
        });
        saga.apply(&Event::Taken { line: 0 });
        assert!(
            matches!(saga.phase, Phase::RequiresAttention { .. }),
            "nothing but an operator moves it"
        );

        saga.apply(&Event::Retried);
        assert_eq!(saga.phase, Phase::Taking);
        assert_eq!(saga.next_step(), Step::VerifyTake { line: 0 });

        let mut stuck = Saga::new(1);
        stuck.apply(&sent(0));
        stuck.apply(&Event::Undecidable {
            line: 0,
            reason: "unreachable".into(),
        });
        stuck.apply(&Event::Resolved {
            sold: false,
            note: "checked by hand: not taken".into(),
        });
        assert!(matches!(stuck.phase, Phase::Failed { .. }));
        assert_eq!(stuck.next_step(), Step::Stop);
    }

    #[test]
    fn a_retry_of_failing_give_backs_carries_on_undoing_with_a_fresh_allowance() {
        let mut saga = Saga::new(2);
        saga.apply(&sent(0));
        saga.apply(&Event::Taken { line: 0 });
        saga.apply(&Event::DeadlinePassed);
        for _ in 0..MAX_GIVE_BACK_FAILURES {
            saga.apply(&given(0));
            saga.apply(&Event::GiveBackFailed {
                line: 0,
                reason: "503".into(),
            });
        }
        assert!(matches!(saga.phase, Phase::RequiresAttention { .. }));

        saga.apply(&Event::Retried);

        assert!(matches!(saga.phase, Phase::Compensating { .. }));
        assert_eq!(saga.give_back_failures, 0);
        assert_eq!(saga.next_step(), Step::GiveBack { line: 0 });
    }

    #[test]
    fn late_or_repeated_events_on_a_terminal_saga_change_nothing() {
        let mut saga = Saga::new(1);
        drive(&mut saga, all_succeed);
        let done = saga.clone();

        saga.apply(&Event::DeadlinePassed);
        saga.apply(&Event::Refused {
            line: 0,
            reason: "late".into(),
        });

        assert_eq!(saga, done);
    }

    #[test]
    fn giving_up_before_anything_was_sent_undoes_locally() {
        let mut saga = Saga::new(2);

        saga.apply(&Event::GaveUp {
            reason: "the seller disconnected".into(),
        });

        assert_eq!(
            saga.next_step(),
            Step::Release,
            "no CardTrader call is needed"
        );
        saga.apply(&Event::Released);
        assert!(
            matches!(&saga.phase, Phase::Failed { reason } if reason == "the seller disconnected")
        );
    }

    #[test]
    fn giving_up_with_stock_on_cardtrader_needs_a_person_and_a_finalizing_sale_stands() {
        for held in [sent(0), Event::Taken { line: 0 }] {
            let mut saga = Saga::new(2);
            saga.apply(&sent(0));
            saga.apply(&held);
            saga.apply(&Event::GaveUp {
                reason: "out of attempts".into(),
            });
            assert!(
                matches!(&saga.phase, Phase::RequiresAttention { reason, undoing: false } if reason.contains("out of attempts")),
                "{saga:?}"
            );
            assert_eq!(saga.next_step(), Step::Stop);
        }

        let mut sold = Saga::new(1);
        sold.apply(&sent(0));
        sold.apply(&Event::Taken { line: 0 });
        sold.apply(&Event::GaveUp {
            reason: "out of attempts".into(),
        });
        assert_eq!(
            sold.next_step(),
            Step::Finalize,
            "local only: the sale is committed"
        );
    }

    #[test]
    fn a_purchase_that_needed_a_person_while_undoing_carries_on_undoing_when_retried() {
        // The deadline passes with line 1's decrement in doubt, and verifying it cannot decide: no
        // line shows the undo yet, only the phase does.
        let mut saga = Saga::new(2);
        saga.apply(&sent(0));
        saga.apply(&Event::Taken { line: 0 });
        saga.apply(&sent(1));
        saga.apply(&Event::DeadlinePassed);
        saga.apply(&Event::Undecidable {
            line: 1,
            reason: "moved by 3".into(),
        });
        assert!(matches!(
            saga.phase,
            Phase::RequiresAttention { undoing: true, .. }
        ));

        saga.apply(&Event::Retried);

        assert!(matches!(saga.phase, Phase::Compensating { .. }));
        assert_eq!(saga.next_step(), Step::VerifyTake { line: 1 });
    }
}
