//! The `webhook_apply` job: applies a seller's stored events to local stock in arrival order, one
//! fenced transaction per event, then queues a targeted sync of the products it did not know. Local
//! stock only: CardTrader changed its own stock before it told us, so nothing is pushed back.

use std::{collections::BTreeSet, time::Duration};

use backon::Retryable;
use serde_json::json;

use super::{
    payload::{Envelope, Order},
    rule::{self, Action, Seen},
    store::{self, OrderUpdate, TakenLine},
};
use crate::{
    domain::UserId,
    jobs::{JobContext, JobError, JobKind, NewJob, TargetedScope, worker::JobFailure},
    retry::full_jitter,
    storage::is_retryable,
};

/// Reruns of one event's transaction after a deadlock or a dropped connection.
const EVENT_RETRIES: usize = 3;

/// The apply job of `user_id`, as the intake queues it: one per seller, coalesced while queued.
pub(crate) fn job(user_id: UserId) -> NewJob {
    NewJob::new(user_id, JobKind::WebhookApply)
}

/// Why an event's transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    /// The lease was taken over: the new holder applies the event.
    #[error("the job's lease was lost")]
    LeaseLost,
    /// Storage failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<JobError> for ApplyError {
    fn from(err: JobError) -> Self {
        match err {
            JobError::Database(err) => ApplyError::Database(err),
            _ => ApplyError::LeaseLost,
        }
    }
}

impl From<ApplyError> for JobFailure {
    fn from(err: ApplyError) -> Self {
        match err {
            ApplyError::LeaseLost => JobFailure::LeaseLost,
            ApplyError::Database(err) => JobFailure::Transient(err.to_string()),
        }
    }
}

/// Whether `err` is the event's own fault (a constraint or data error that will fail every rerun)
/// rather than the database's.
fn is_poison(err: &ApplyError) -> bool {
    match err {
        ApplyError::Database(err @ sqlx::Error::Database(db)) => {
            !is_retryable(err)
                && db
                    .code()
                    .is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
        }
        _ => false,
    }
}

/// Applies every unapplied event of the job's seller; stops early at cancellation or shutdown.
pub(crate) async fn run(context: &JobContext) -> Result<(), JobFailure> {
    loop {
        if let Some(reason) = context.should_stop() {
            return Err(reason);
        }
        let once = || apply_next(context);
        let applied = once
            .retry(full_jitter(
                Duration::from_millis(20),
                Duration::from_secs(1),
                Some(EVENT_RETRIES),
            ))
            .when(|err| matches!(err, ApplyError::Database(db) if is_retryable(db)))
            .notify(|err, wait| tracing::warn!(error = %err, ?wait, "webhook event transaction failed; rerunning it"))
            .await;
        match applied {
            Ok(true) => {}
            Ok(false) => break,
            Err(err) if is_poison(&err) => set_aside(context, &err).await?,
            Err(err) => return Err(err.into()),
        }
    }
    request_syncs(context).await
}

/// Applies the seller's oldest unapplied event in one unit of work; `false` when none is left.
async fn apply_next(context: &JobContext) -> Result<bool, ApplyError> {
    let user_id = context.user_id();
    let mut unit = context.begin().await?;
    let Some(event) = store::next_event(&mut unit, user_id).await? else {
        return Ok(false);
    };
    let (outcome, error, unknown) = match serde_json::from_value::<Envelope>(event.body) {
        Ok(envelope) if envelope.is_live() => {
            let applied = apply_order(&mut unit, user_id, &envelope).await?;
            (applied.outcome, None, applied.unknown)
        }
        Ok(_) => ("test delivery: stock unchanged".to_owned(), None, None),
        // The intake parsed it before storing it, so only a change of this code can get here.
        Err(err) => ("not applied".to_owned(), Some(err.to_string()), None),
    };
    store::mark_applied(
        &mut *unit,
        event.id,
        &outcome,
        error.as_deref(),
        unknown.as_ref(),
    )
    .await?;
    // Fenced at the commit: a worker whose lease was taken over rolls all of it back, and the job
    // row is held only for the moment before the commit.
    unit.commit().await?;
    Ok(true)
}

/// What applying one order event did.
struct Applied {
    outcome: String,
    unknown: Option<serde_json::Value>,
}

/// Applies the stock rule to one live order event, inside the event's transaction.
async fn apply_order(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
    envelope: &Envelope,
) -> Result<Applied, ApplyError> {
    let order = &envelope.data;
    let record = store::lock_order(conn, user_id, order.id).await?;
    let seen = Seen {
        stock_taken: record.stock_taken,
        stock_restored: record.stock_restored,
        canceled: record.canceled,
    };
    let cause = envelope.cause();
    let action = rule::decide(seen, cause, &order.state, order.via_cardtrader_zero);
    let mut update = OrderUpdate {
        state: &order.state,
        via_cardtrader_zero: order.via_cardtrader_zero,
        took: None,
        restored: false,
        canceled: rule::marks_canceled(cause, &order.state),
    };
    let applied = match action {
        Action::Take => {
            let amounts: Vec<(i64, i64)> = order.amounts().into_iter().collect();
            let lines = store::take_stock(conn, user_id, &amounts).await?;
            update.took = Some(taken_json(&lines));
            describe_take(order, &lines)
        }
        Action::Restore => {
            let amounts = taken_amounts(&record.taken);
            let rows = store::restore_stock(conn, user_id, &amounts).await?;
            update.restored = true;
            let units: i64 = amounts.iter().map(|(_, units)| units).sum();
            Applied {
                outcome: format!(
                    "gave back {units} units to {rows} of {} products",
                    amounts.len()
                ),
                unknown: None,
            }
        }
        Action::Keep(reason) => Applied {
            outcome: format!("no stock change: {reason}"),
            unknown: None,
        },
    };
    store::update_order(conn, user_id, order.id, &update).await?;
    Ok(applied)
}

/// `[[product_id, amount], …]` of what was really taken, for a later give-back.
fn taken_json(lines: &[TakenLine]) -> serde_json::Value {
    lines
        .iter()
        .filter_map(|line| {
            line.taken
                .filter(|taken| *taken > 0)
                .map(|taken| json!([line.product_id, taken]))
        })
        .collect()
}

/// Reads [`taken_json`] back; entries that do not read are skipped (the next sync corrects them).
fn taken_amounts(taken: &serde_json::Value) -> Vec<(i64, i64)> {
    serde_json::from_value::<Vec<(i64, i64)>>(taken.clone()).unwrap_or_default()
}

/// The outcome of a take: units taken, units a reservation kept back, and the unknown products.
fn describe_take(order: &Order, lines: &[TakenLine]) -> Applied {
    let taken: i64 = lines.iter().filter_map(|line| line.taken).sum();
    let short: i64 = lines
        .iter()
        .filter_map(|line| line.taken.map(|taken| line.asked - taken))
        .sum();
    let unknown: Vec<serde_json::Value> = lines
        .iter()
        .filter(|line| line.taken.is_none())
        .map(|line| json!({"product_id": line.product_id, "blueprint_id": order.blueprint_of(line.product_id)}))
        .collect();
    let mut outcome = format!("took {taken} units");
    if short > 0 {
        // A reservation of an in-flight purchase kept these; CardTrader has sold them anyway.
        outcome.push_str(&format!(", {short} short (held by reservations)"));
    }
    if !unknown.is_empty() {
        outcome.push_str(&format!(", {} products unknown", unknown.len()));
    }
    Applied {
        outcome,
        unknown: (!unknown.is_empty()).then_some(serde_json::Value::Array(unknown)),
    }
}

/// Marks an event that fails every time as applied with its error, so it does not hold up the
/// seller's later events; the error stays on the event for an operator.
async fn set_aside(context: &JobContext, err: &ApplyError) -> Result<(), JobFailure> {
    let mut unit = context.begin().await?;
    let Some(event) = store::next_event(&mut unit, context.user_id())
        .await
        .map_err(ApplyError::from)?
    else {
        return Ok(());
    };
    tracing::error!(event_id = %event.id, error = %err, "webhook event cannot be applied; set aside");
    store::mark_applied(
        &mut *unit,
        event.id,
        "not applied",
        Some(&err.to_string()),
        None,
    )
    .await
    .map_err(ApplyError::from)?;
    unit.commit().await?;
    Ok(())
}

/// Queues one sync of the blueprints of every unknown product the seller's applied events named, and
/// marks those events, in one unit of work.
async fn request_syncs(context: &JobContext) -> Result<(), JobFailure> {
    let transient = |err: &dyn std::fmt::Display| JobFailure::Transient(err.to_string());
    let mut unit = context.begin().await?;
    let pending = store::syncs_pending(&mut *unit, context.user_id())
        .await
        .map_err(|err| transient(&err))?;
    if pending.is_empty() {
        return Ok(());
    }
    let blueprints: BTreeSet<i64> = pending
        .iter()
        .filter_map(|(_, products)| products.as_array())
        .flatten()
        .filter_map(|product| product["blueprint_id"].as_i64())
        .collect();
    if !blueprints.is_empty() {
        // No depth cap: the request coalesces into the seller's one queued sync of its kind, so a
        // seller adds at most one job to the lane, and refusing would leave the rows missing.
        unit.enqueue(&sync_job(
            context.user_id(),
            blueprints.into_iter().collect(),
        ))
        .await?;
    }
    let ids: Vec<uuid::Uuid> = pending.iter().map(|(id, _)| *id).collect();
    store::mark_syncs_queued(&mut *unit, &ids)
        .await
        .map_err(|err| transient(&err))?;
    unit.commit().await?;
    Ok(())
}

/// A targeted sync of `blueprint_ids`, or a full one past what a targeted sync may cover (so many
/// unknown products mean the local inventory is far behind anyway).
fn sync_job(user_id: UserId, blueprint_ids: Vec<i64>) -> NewJob {
    let kind = if blueprint_ids.len() > TargetedScope::MAX_IDS {
        JobKind::SyncFull
    } else {
        let scope = TargetedScope {
            blueprint_ids,
            expansion_ids: Vec::new(),
        };
        // Normalized (sorted, no duplicates) as coalescing compares scopes.
        JobKind::SyncTargeted(scope.union(&TargetedScope::default()))
    };
    NewJob::new(user_id, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_taken_round_trips_and_skips_unknown_and_empty_lines() {
        let lines = [
            TakenLine {
                product_id: 1,
                asked: 2,
                taken: Some(2),
            },
            TakenLine {
                product_id: 2,
                asked: 1,
                taken: None,
            },
            TakenLine {
                product_id: 3,
                asked: 1,
                taken: Some(0),
            },
        ];

        assert_eq!(taken_amounts(&taken_json(&lines)), vec![(1, 2)]);
        assert_eq!(taken_amounts(&json!("garbage")), Vec::<(i64, i64)>::new());
    }

    #[test]
    fn too_many_unknown_blueprints_ask_for_a_full_sync() {
        let user = UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();

        let few = sync_job(user, vec![3, 1]);
        let many = sync_job(user, (1..=101).collect());

        assert_eq!(
            few.kind,
            JobKind::SyncTargeted(TargetedScope {
                blueprint_ids: vec![1, 3],
                expansion_ids: vec![]
            })
        );
        assert_eq!(many.kind, JobKind::SyncFull);
    }
}
