//! What an import did, seller by seller: the summary table printed at the end, and the same as
//! JSON for `--report`.

use std::{collections::BTreeMap, fmt::Write as _};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{
    rows::{SkipReason, SkippedRow},
    source::PendingEdit,
};

/// What happened to one seller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Connected here with their token, inventory carried, full sync queued.
    Moved,
    /// CardTrader refused the token (`--verify`): stored as TOKEN_INVALID, inventory carried, no
    /// sync; the seller must connect again.
    TokenInvalid,
    /// Disconnected in the old service: stored as DISCONNECTED, inventory carried, no sync.
    Disconnected,
    /// An earlier run moved this seller; nothing was done.
    AlreadyMoved,
    /// Left alone for a reason a person must look at (see `reason`); nothing was written.
    Skipped,
    /// Not moved for a reason that may pass (CardTrader or a database unavailable); nothing was
    /// written, and the next run tries again.
    Failed,
}

impl Outcome {
    /// The outcome as a word.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Moved => "moved",
            Outcome::TokenInvalid => "token_invalid",
            Outcome::Disconnected => "disconnected",
            Outcome::AlreadyMoved => "already_moved",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
        }
    }
}

/// One seller's part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct SellerReport {
    /// The seller.
    pub user_id: Uuid,
    /// What happened.
    pub outcome: Outcome,
    /// Why, for skipped, failed and invalid ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The old service's `sync_status`.
    pub old_sync_status: String,
    /// The old service's `last_error`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_last_error: Option<String>,
    /// Inventory rows carried over (would be, in a dry run).
    pub rows_carried: u64,
    /// Of those, rows the catalogue maps to a print.
    pub rows_mapped: u64,
    /// Rows left behind, by reason.
    pub rows_skipped: BTreeMap<SkipReason, u64>,
    /// Every row left behind.
    pub skipped_rows: Vec<SkippedRow>,
    /// Edits the old service had queued and may never have sent: not replayed. The queued sync
    /// brings CardTrader's values; re-apply any that still matter with UpdateItem/DeleteItem.
    pub pending_edits: Vec<PendingEdit>,
    /// The full sync queued for the seller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_job_id: Option<Uuid>,
    /// When an earlier run moved the seller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_at: Option<DateTime<Utc>>,
    /// Anything else the import decided for the seller.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl SellerReport {
    /// A seller not worked on yet.
    pub fn new(user_id: Uuid, old_sync_status: String, old_last_error: Option<String>) -> Self {
        Self {
            user_id,
            outcome: Outcome::Failed,
            reason: None,
            old_sync_status,
            old_last_error,
            rows_carried: 0,
            rows_mapped: 0,
            rows_skipped: BTreeMap::new(),
            skipped_rows: Vec::new(),
            pending_edits: Vec::new(),
            sync_job_id: None,
            moved_at: None,
            notes: Vec::new(),
        }
    }

    /// Ends the seller with `outcome` for `reason`.
    pub fn ended(mut self, outcome: Outcome, reason: impl Into<String>) -> Self {
        self.outcome = outcome;
        self.reason = Some(reason.into());
        self
    }

    /// Rows left behind in all.
    pub fn rows_skipped_total(&self) -> u64 {
        self.rows_skipped.values().sum()
    }

    /// One line for logs and progress output.
    pub fn line(&self) -> String {
        let mut line = format!("seller {}: {}", self.user_id, self.outcome.as_str());
        if let Some(reason) = &self.reason {
            let _ = write!(line, " ({reason})");
        }
        if self.rows_carried > 0 || self.rows_skipped_total() > 0 {
            let _ = write!(
                line,
                ", {} rows carried, {} skipped",
                self.rows_carried,
                self.rows_skipped_total()
            );
        }
        if !self.pending_edits.is_empty() {
            let _ = write!(line, ", {} pending edits", self.pending_edits.len());
        }
        if self.sync_job_id.is_some() {
            line.push_str(", full sync queued");
        }
        line
    }
}

/// The totals of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Sellers the run looked at.
    pub sellers: u64,
    /// Moved and connected.
    pub moved: u64,
    /// Moved by an earlier run.
    pub already_moved: u64,
    /// Stored as TOKEN_INVALID.
    pub tokens_invalid: u64,
    /// Stored as DISCONNECTED.
    pub disconnected: u64,
    /// Left for a person.
    pub skipped: u64,
    /// To try again.
    pub failed: u64,
    /// Rows carried over.
    pub rows_carried: u64,
    /// Of those, mapped to a print.
    pub rows_mapped: u64,
    /// Rows left behind, by reason.
    pub rows_skipped: BTreeMap<SkipReason, u64>,
    /// Full syncs queued.
    pub syncs_queued: u64,
    /// Pending edits reported.
    pub pending_edits: u64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// Nothing was written.
    pub dry_run: bool,
    /// Tokens were checked with CardTrader.
    pub verify: bool,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub seconds: f64,
    /// The totals.
    pub summary: Summary,
    /// `--sellers` the old database does not have.
    pub sellers_not_found: Vec<Uuid>,
    /// Pending edits whose metadata names no seller.
    pub pending_edits_without_seller: Vec<PendingEdit>,
    /// Every seller, in user id order.
    pub sellers: Vec<SellerReport>,
}

impl ImportReport {
    /// The report of `sellers`, totalled.
    pub fn new(
        dry_run: bool,
        verify: bool,
        started_at: DateTime<Utc>,
        mut sellers: Vec<SellerReport>,
        sellers_not_found: Vec<Uuid>,
        pending_edits_without_seller: Vec<PendingEdit>,
    ) -> Self {
        sellers.sort_by_key(|seller| seller.user_id);
        let mut summary = Summary {
            sellers: sellers.len() as u64,
            ..Summary::default()
        };
        for seller in &sellers {
            let count = match seller.outcome {
                Outcome::Moved => &mut summary.moved,
                Outcome::AlreadyMoved => &mut summary.already_moved,
                Outcome::TokenInvalid => &mut summary.tokens_invalid,
                Outcome::Disconnected => &mut summary.disconnected,
                Outcome::Skipped => &mut summary.skipped,
                Outcome::Failed => &mut summary.failed,
            };
            *count += 1;
            summary.rows_carried += seller.rows_carried;
            summary.rows_mapped += seller.rows_mapped;
            for (reason, rows) in &seller.rows_skipped {
                *summary.rows_skipped.entry(*reason).or_default() += rows;
            }
            summary.syncs_queued += u64::from(seller.sync_job_id.is_some());
            summary.pending_edits += seller.pending_edits.len() as u64;
        }
        summary.pending_edits += pending_edits_without_seller.len() as u64;
        let seconds = (Utc::now() - started_at).num_milliseconds() as f64 / 1_000.0;
        Self {
            dry_run,
            verify,
            started_at,
            seconds,
            summary,
            sellers_not_found,
            pending_edits_without_seller,
            sellers,
        }
    }

    /// The summary table an operator reads at the end of a run.
    pub fn table(&self) -> String {
        let s = &self.summary;
        let mut out = String::new();
        let mode = if self.dry_run {
            " — DRY RUN: nothing was written"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "import-legacy: {} sellers in {:.1} s{mode}",
            s.sellers, self.seconds
        );
        let mut row = |label: &str, value: u64| {
            let _ = writeln!(out, "  {label:<48}{value:>10}");
        };
        row("sellers moved (connected, full sync queued)", s.moved);
        row("already moved by an earlier run", s.already_moved);
        row("tokens invalid (CardTrader refused them)", s.tokens_invalid);
        row("disconnected in the old service", s.disconnected);
        row("skipped (a person must look: see below)", s.skipped);
        row("failed (run again to retry them)", s.failed);
        row("inventory rows carried", s.rows_carried);
        row("  of which mapped to a print", s.rows_mapped);
        row(
            "inventory rows skipped",
            s.rows_skipped.values().sum::<u64>(),
        );
        for reason in SkipReason::ALL {
            if let Some(rows) = s.rows_skipped.get(&reason) {
                row(&format!("  {}", reason.as_str()), *rows);
            }
        }
        row("full syncs queued", s.syncs_queued);
        row(
            "pending edits of the old service (not replayed)",
            s.pending_edits,
        );
        for seller in &self.sellers {
            let worth_a_look = matches!(
                seller.outcome,
                Outcome::Skipped | Outcome::Failed | Outcome::TokenInvalid
            ) || !seller.pending_edits.is_empty();
            if worth_a_look {
                let _ = writeln!(out, "  {}", seller.line());
            }
        }
        for user_id in &self.sellers_not_found {
            let _ = writeln!(out, "  seller {user_id}: not in the old database");
        }
        if !self.pending_edits_without_seller.is_empty() {
            let _ = writeln!(
                out,
                "  {} pending edits name no seller (see the JSON report)",
                self.pending_edits_without_seller.len()
            );
        }
        out
    }
}
