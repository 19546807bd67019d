//! What a sync covers and how far it got: the job's payload and progress, as stored in `jobs`.

use serde::{Deserialize, Serialize};

use crate::marketplace::ExportFilter;

/// Most blueprint plus expansion ids in one targeted sync: each is one export call on the seller's
/// rate limit.
pub const MAX_TARGETED_IDS: usize = 100;

/// What a sync covers, as stored in the job's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum SyncScope {
    /// The whole inventory.
    #[default]
    Full,
    /// The products of the listed blueprints and expansions, and only those.
    Targeted {
        /// Blueprint ids.
        #[serde(default)]
        blueprint_ids: Vec<i64>,
        /// Expansion ids.
        #[serde(default)]
        expansion_ids: Vec<i64>,
    },
}

impl SyncScope {
    /// Reads a job's payload; a payload that does not parse is an error, never a full sync.
    pub fn from_payload(payload: &serde_json::Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(payload.clone())
    }

    /// The payload to store.
    pub fn to_payload(&self) -> serde_json::Value {
        // Serializing a plain enum of integers cannot fail.
        serde_json::to_value(self).unwrap_or_default()
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

    /// The scope a queued sync must cover once `requested` joins it: the union of both (a full
    /// sync covers everything). Stored payloads that do not parse are left as they are.
    pub fn merge_payloads(
        queued: &serde_json::Value,
        requested: &serde_json::Value,
    ) -> serde_json::Value {
        let (Ok(queued_scope), Ok(requested_scope)) =
            (Self::from_payload(queued), Self::from_payload(requested))
        else {
            return queued.clone();
        };
        match (queued_scope, requested_scope) {
            (
                SyncScope::Targeted {
                    blueprint_ids: mut blueprints,
                    expansion_ids: mut expansions,
                },
                SyncScope::Targeted {
                    blueprint_ids,
                    expansion_ids,
                },
            ) => {
                for (ids, more) in [
                    (&mut blueprints, blueprint_ids),
                    (&mut expansions, expansion_ids),
                ] {
                    ids.extend(more);
                    ids.sort_unstable();
                    ids.dedup();
                }
                SyncScope::Targeted {
                    blueprint_ids: blueprints,
                    expansion_ids: expansions,
                }
                .to_payload()
            }
            _ => SyncScope::Full.to_payload(),
        }
    }

    /// How callers see it: `full`, or e.g. `blueprints:1,2 expansions:7`.
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
        assert_eq!(
            SyncScope::from_payload(&scope.to_payload()).ok(),
            Some(scope)
        );
    }

    #[test]
    fn a_request_joining_a_queued_targeted_sync_widens_it_to_the_union() {
        let queued = SyncScope::Targeted {
            blueprint_ids: vec![1, 5],
            expansion_ids: vec![],
        };
        let requested = SyncScope::Targeted {
            blueprint_ids: vec![5, 2],
            expansion_ids: vec![9],
        };
        let merged = SyncScope::merge_payloads(&queued.to_payload(), &requested.to_payload());
        assert_eq!(
            SyncScope::from_payload(&merged).ok(),
            Some(SyncScope::Targeted {
                blueprint_ids: vec![1, 2, 5],
                expansion_ids: vec![9],
            })
        );
        let same = SyncScope::merge_payloads(&queued.to_payload(), &queued.to_payload());
        assert_eq!(same, queued.to_payload(), "nothing new: nothing to write");
    }

    #[test]
    fn an_unreadable_payload_is_an_error_not_a_full_sync() {
        assert!(SyncScope::from_payload(&serde_json::json!({"scope": "everything"})).is_err());
        assert_eq!(
            SyncScope::from_payload(&serde_json::json!({"scope": "full"})).ok(),
            Some(SyncScope::Full)
        );
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
