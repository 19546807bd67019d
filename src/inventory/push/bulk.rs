//! The bulk path of a push: many pending updates or deletions go as `bulk_update` /
//! `bulk_destroy` batches, whose CardTrader job is polled until it ends; each item's result settles
//! or fails its own outbox row, so one refused item does not fail the batch.

use std::time::Instant;

use super::{BULK_JOB_PATIENCE, POLL_EVERY, Pending, Run};
use crate::{
    jobs::worker::JobFailure,
    marketplace::types::{BulkJob, BulkUpdateItem},
};

impl Run<'_> {
    pub(super) async fn bulk_update(&self, rows: &[Pending]) -> Result<(), JobFailure> {
        let mut items = Vec::new();
        let mut sent = Vec::new();
        for row in rows {
            match (row.product_id, self.wanted(row).await?) {
                (Some(id), Some(update)) => {
                    items.push(BulkUpdateItem { id, update });
                    sent.push(row);
                }
                _ => self.settled(row).await?,
            }
        }
        if items.is_empty() {
            return Ok(());
        }
        let uuid = self
            .marketplace()
            .bulk_update(self.credentials.seller(), self.options(), &items)
            .await
            .map_err(|err| self.call_failure(err))?;
        let job = self.await_bulk_job(&uuid).await?;
        self.record_results(&sent, &job).await
    }

    pub(super) async fn bulk_destroy(&self, rows: &[Pending]) -> Result<(), JobFailure> {
        let ids: Vec<i64> = rows.iter().filter_map(|row| row.product_id).collect();
        let uuid = self
            .marketplace()
            .bulk_destroy(self.credentials.seller(), self.options(), &ids)
            .await
            .map_err(|err| self.call_failure(err))?;
        let job = self.await_bulk_job(&uuid).await?;
        let sent: Vec<&Pending> = rows.iter().collect();
        self.record_results(&sent, &job).await
    }

    /// Polls the bulk job once a second until CardTrader has finished it.
    pub(super) async fn await_bulk_job(&self, uuid: &str) -> Result<BulkJob, JobFailure> {
        let give_up = Instant::now() + BULK_JOB_PATIENCE;
        loop {
            tokio::time::sleep(POLL_EVERY).await;
            let job = self
                .marketplace()
                .bulk_job(self.credentials.seller(), self.options(), uuid)
                .await;
            match job {
                Ok(job) if job.finished() => return Ok(job),
                Ok(_) => {}
                // A poll that failed is just tried again next second.
                Err(err) if err.is_transient() => {
                    tracing::debug!(%err, uuid, "polling a bulk job failed");
                }
                Err(err) => return Err(self.call_failure(err)),
            }
            if Instant::now() > give_up {
                return Err(JobFailure::Transient(format!(
                    "CardTrader's bulk job {uuid} did not finish in {BULK_JOB_PATIENCE:?}"
                )));
            }
        }
    }

    /// Settles each sent row by its item's result: applied clears it, an error marks it failed.
    pub(super) async fn record_results(
        &self,
        sent: &[&Pending],
        job: &BulkJob,
    ) -> Result<(), JobFailure> {
        if job.state == "unprocessable" {
            return Err(JobFailure::Transient(format!(
                "CardTrader could not process bulk job {}",
                job.uuid
            )));
        }
        for (index, row) in sent.iter().enumerate() {
            match job.results.iter().find(|result| result.job_index == index) {
                Some(result) if result.applied() => {
                    self.count(row, "bulk", "pushed");
                    self.settled(row).await?
                }
                Some(result) => {
                    self.count(row, "bulk", "refused");
                    self.failed(row, &result.error_text()).await?
                }
                None => {
                    self.count(row, "bulk", "refused");
                    self.failed(row, "CardTrader's bulk job reported nothing for this item")
                        .await?
                }
            }
        }
        Ok(())
    }
}
