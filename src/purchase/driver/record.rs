//! The driver's recorded writes: a step's events and the local write they belong to commit in one
//! fenced transaction, then fold into the saga in memory.

use super::{Also, Run};
use crate::{
    jobs::worker::JobFailure,
    metrics::Metrics,
    purchase::{
        PurchaseError,
        saga::{Event, LineStatus, Step},
        store,
    },
};

impl Run<'_> {
    /// The last local transaction: the sale or the release, the locks dropped, the event logged.
    pub(super) async fn finish(&mut self, also: Also, event: Event) -> Result<(), JobFailure> {
        self.record(vec![event], also).await
    }

    /// For each refused line, CardTrader's quantity as seen: the local item is lowered to it.
    pub(super) fn corrections(&self) -> Vec<(i64, i64)> {
        self.purchase
            .lines
            .iter()
            .filter(|line| self.saga.lines.get(line.line) == Some(&LineStatus::Refused))
            .filter_map(|line| Some((line.local_product_id(), line.memo.as_ref()?.seen_quantity)))
            .collect()
    }

    /// Writes `events` (and `also`) in one fenced transaction, then folds them into the saga.
    pub(super) async fn record(
        &mut self,
        mut events: Vec<Event>,
        mut also: Also,
    ) -> Result<(), JobFailure> {
        let mut next = self.saga.clone();
        for event in &events {
            next.apply(event);
        }
        if matches!(also, Also::Nothing) && next.next_step() == Step::Finalize {
            // The last line taken: nothing is called between it and the sale, so they commit
            // together, one transaction less per purchase. (A log that ends at the last `Taken`,
            // written before, still finalizes through the step of its own.)
            next.apply(&Event::Finalized);
            events.push(Event::Finalized);
            also = Also::Sale;
        }
        let purchase = &self.purchase;
        let user_id = purchase.user_id;
        // The saga's last write ends its job too: the driver stops after it.
        let settles_job = self.settles_job && next.phase.is_terminal();
        let result: Result<(), PurchaseError> = async {
            let mut unit = self.context.begin().await.map_err(jobs_error)?;
            match &also {
                Also::Nothing => {}
                Also::Memo(line, memo) => {
                    store::save_memo(&mut unit, purchase.id, *line, memo).await?
                }
                Also::Repoint { line, old, new } => {
                    store::repoint(&mut unit, user_id, purchase.id, *line, *old, *new).await?
                }
                Also::Sale => {
                    store::commit_sale(&mut unit, user_id, &purchase.lines).await?;
                    store::unlock_products(&mut unit, purchase.id).await?;
                }
                Also::Release(corrections) => {
                    store::release(&mut unit, user_id, &purchase.lines, corrections).await?;
                    store::unlock_products(&mut unit, purchase.id).await?;
                }
            }
            store::append(&mut unit, purchase.id, self.seq, &events, &next).await?;
            if settles_job {
                unit.settle_succeeded().await.map_err(jobs_error)?;
            }
            unit.commit().await.map_err(jobs_error)?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {}
            Err(PurchaseError::LeaseLost) => return Err(JobFailure::LeaseLost),
            Err(err) => return Err(transient(err)),
        }
        self.seq += events.len() as i32;
        match also {
            Also::Memo(line, memo) => {
                if let Some(stored) = self.purchase.lines.get_mut(line) {
                    stored.memo = Some(memo);
                }
            }
            Also::Repoint { line, new, .. } => {
                if let Some(stored) = self.purchase.lines.get_mut(line) {
                    stored.recreated_product_id = Some(new);
                }
            }
            _ => {}
        }
        self.saga = next;
        self.handler
            .events
            .changed(self.purchase.id, self.saga.phase.is_terminal());
        // Every step boundary: a test may kill the driver right after any entry of the log.
        crate::failpoint::crash_point("purchase.after_record");
        Ok(())
    }
}

pub(super) fn transient(err: PurchaseError) -> JobFailure {
    match err {
        PurchaseError::LeaseLost => JobFailure::LeaseLost,
        other => JobFailure::Transient(other.to_string()),
    }
}

pub(super) fn jobs_error(err: crate::jobs::JobError) -> PurchaseError {
    match err {
        crate::jobs::JobError::LeaseLost => PurchaseError::LeaseLost,
        crate::jobs::JobError::Database(err) => PurchaseError::Database(err),
        other => PurchaseError::Internal(other.to_string()),
    }
}

/// Re-reads how many purchases wait for a person.
pub(crate) async fn refresh_attention_gauge(conn: &mut sqlx::PgConnection, metrics: &Metrics) {
    match store::attention_count(conn).await {
        Ok(count) => metrics.purchases_requiring_attention.set(count),
        Err(err) => tracing::warn!(error = %err, "counting purchases requiring attention failed"),
    }
}
