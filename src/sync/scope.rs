//! What a sync covers and how far it got: the job's scope and its progress counters.

use serde::{Deserialize, Serialize};

use crate::{
    jobs::{JobKind, TargetedScope},
    marketplace::ExportFilter,
};

/// Most blueprint plus expansion ids in one targeted sync (see [`TargetedScope::MAX_IDS`]).
pub const MAX_TARGETED_IDS: usize = TargetedScope::MAX_IDS;

/// What a sync covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SyncScope {
    /// The whole inventory.
    #[default]
    Full,
    /// The products of the listed blueprints and expansions, and only those.
    Targeted {
        /// Blueprint ids.
        blueprint_ids: Vec<i64>,
        /// Expansion ids.
        expansion_ids: Vec<i64>,
    },
}

impl SyncScope {
    /// The job that syncs this scope.
    pub fn job_kind(&self) -> JobKind {
        match self {
            SyncScope::Full => JobKind::SyncFull,
            SyncScope::Targeted {
                blueprint_ids,
                expansion_ids,
            } => {
                let requested = TargetedScope {
                    blueprint_ids: blueprint_ids.clone(),
                    expansion_ids: expansion_ids.clone(),
                };
                // Normalized (sorted, no duplicates) as coalescing compares scopes.
                JobKind::SyncTargeted(requested.union(&TargetedScope::default()))
            }
        }
    }

    /// The scope a sync job covers; `None` for a job that is not a sync.
    pub fn of_job(kind: &JobKind) -> Option<Self> {
        match kind {
            JobKind::SyncFull => Some(SyncScope::Full),
            JobKind::SyncTargeted(scope) => Some(SyncScope::Targeted {
                blueprint_ids: scope.blueprint_ids.clone(),
                expansion_ids: scope.expansion_ids.clone(),
            }),
            _ => None,
        }
    }

    /// The export calls that read this scope, one per id (CardTrader filters by one id at a time).
    pub fn export_filters(&self) -> Vec<ExportFilter> {
        match self {
            SyncScope::Full => vec![ExportFilter::All],
            SyncScope::Targeted {
                blueprint_ids,
                expansion_ids,
            } => blueprint_ids
                .iter()
                .map(|&id| ExportFilter::Blueprint(id))
                .chain(expansion_ids.iter().map(|&id| ExportFilter::Expansion(id)))
                .collect(),
        }
    }

    /// A short human-readable form: `full`, or e.g. `blueprints:1,2 expansions:7` (the API itself
    /// answers with the `SyncScope` enum and the id lists).
    pub fn describe(&self) -> String {
        match self {
            SyncScope::Full => "full".to_owned(),
            SyncScope::Targeted {
                blueprint_ids,
                expansion_ids,
            } => {
                let list =
                    |ids: &[i64]| ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                let mut parts = Vec::new();
                if !blueprint_ids.is_empty() {
                    parts.push(format!("blueprints:{}", list(blueprint_ids)));
                }
                if !expansion_ids.is_empty() {
                    parts.push(format!("expansions:{}", list(expansion_ids)));
                }
                parts.join(" ")
            }
        }
    }
}

/// Progress counters of one sync attempt. Each chunk adds its own counts in its transaction, so
/// chunks committing out of order still add up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SyncProgress {
    /// Chunks expected: estimated from the local item count until the export has been read, exact after.
    #[serde(default)]
    pub chunks_total: u64,
    /// Chunks written.
    pub chunks_done: u64,
    /// Products read from the export.
    pub products_seen: u64,
    /// Rows inserted or changed.
    pub written: u64,
    /// Rows already up to date.
    pub unchanged: u64,
    /// Rows swept because CardTrader no longer lists them.
    pub deleted: u64,
    /// Products stored without a shop print.
    pub unmapped: u64,
}

impl SyncProgress {
    /// Adds what one chunk did.
    pub fn add(&mut self, chunk: &SyncProgress) {
        self.chunks_done += chunk.chunks_done;
        self.products_seen += chunk.products_seen;
        self.written += chunk.written;
        self.unchanged += chunk.unchanged;
        self.deleted += chunk.deleted;
        self.unmapped += chunk.unmapped;
    }

    /// As stored on the job.
    pub fn to_json(&self) -> serde_json::Value {
        // A struct of integers always serializes.
        serde_json::to_value(self).unwrap_or_default()
    }

    /// As stored on the job; counters missing from older rows read as zero.
    pub fn from_json(value: &serde_json::Value) -> Self {
        serde_json::from_value(value.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_targeted_scope_reads_one_export_per_id_and_round_trips() {
        let scope = SyncScope::Targeted {
            blueprint_ids: vec![1, 2],
            expansion_ids: vec![7],
        };
        assert_eq!(
            scope.export_filters(),
            vec![
                ExportFilter::Blueprint(1),
                ExportFilter::Blueprint(2),
                ExportFilter::Expansion(7)
            ]
        );
        assert_eq!(scope.describe(), "blueprints:1,2 expansions:7");
        assert_eq!(SyncScope::of_job(&scope.job_kind()), Some(scope));
    }

    #[test]
    fn a_targeted_job_is_stored_normalized_so_equal_requests_coalesce() {
        let requested = SyncScope::Targeted {
            blueprint_ids: vec![5, 2, 5],
            expansion_ids: vec![9],
        };
        assert_eq!(
            SyncScope::of_job(&requested.job_kind()),
            Some(SyncScope::Targeted {
                blueprint_ids: vec![2, 5],
                expansion_ids: vec![9],
            })
        );
        assert_eq!(SyncScope::of_job(&JobKind::InventoryPush), None);
    }

    #[test]
    fn chunk_counts_add_up_whatever_the_order() {
        let chunk = |written, unchanged| SyncProgress {
            chunks_done: 1,
            products_seen: written + unchanged,
            written,
            unchanged,
            ..SyncProgress::default()
        };
        let mut total = SyncProgress::default();
        for done in [chunk(3, 7), chunk(10, 0), chunk(0, 10)] {
            total.add(&done);
        }
        assert_eq!(total.chunks_done, 3);
        assert_eq!(total.products_seen, 30);
        assert_eq!(total.written, 13);
        assert_eq!(total.unchanged, 17);
    }
}
