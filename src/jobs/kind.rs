//! Every kind of background work the service does, with its typed input: the one list a newcomer
//! reads to know what runs in the background. Each kind knows its lane, priority, attempts and how
//! requests for it coalesce, so callers only say what they want done.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Lane;

/// What a sync of listed blueprints and expansions covers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TargetedScope {
    /// Blueprint ids, sorted and without duplicates.
    #[serde(default)]
    pub blueprint_ids: Vec<i64>,
    /// Expansion ids, sorted and without duplicates.
    #[serde(default)]
    pub expansion_ids: Vec<i64>,
}

impl TargetedScope {
    /// Most blueprint plus expansion ids in one targeted sync: each is one export call on the
    /// seller's rate limit.
    pub const MAX_IDS: usize = 100;

    /// The scope of both: what a queued sync must cover once another request joins it.
    pub fn union(&self, other: &Self) -> Self {
        let merge = |left: &[i64], right: &[i64]| {
            let mut ids: Vec<i64> = left.iter().chain(right).copied().collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        Self {
            blueprint_ids: merge(&self.blueprint_ids, &other.blueprint_ids),
            expansion_ids: merge(&self.expansion_ids, &other.expansion_ids),
        }
    }
}

/// A kind of job and its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// Reconcile the seller's whole inventory with CardTrader's export (bulk lane).
    SyncFull,
    /// Reconcile the products of some blueprints and expansions (interactive lane).
    SyncTargeted(TargetedScope),
    /// Map the seller's rows stored without a print, now that the catalogue may know them.
    RemapUnmapped,
    /// Drive one purchase's saga to its end.
    Purchase {
        /// The purchase.
        purchase_id: Uuid,
        /// Whether the reservation already took the purchase's CardTrader product locks.
        locked: bool,
    },
    /// Send the seller's pending shop edits to CardTrader.
    InventoryPush,
    /// Apply the seller's stored CardTrader webhook events to local stock.
    WebhookApply,
}

/// The name of a kind, as stored in the `kind` column (a CHECK constraint holds the same list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KindName {
    /// [`JobKind::SyncFull`].
    SyncFull,
    /// [`JobKind::SyncTargeted`].
    SyncTargeted,
    /// [`JobKind::RemapUnmapped`].
    RemapUnmapped,
    /// [`JobKind::Purchase`].
    Purchase,
    /// [`JobKind::InventoryPush`].
    InventoryPush,
    /// [`JobKind::WebhookApply`].
    WebhookApply,
}

impl KindName {
    /// Every kind.
    pub const ALL: [KindName; 6] = [
        KindName::SyncFull,
        KindName::SyncTargeted,
        KindName::RemapUnmapped,
        KindName::Purchase,
        KindName::InventoryPush,
        KindName::WebhookApply,
    ];

    /// The `kind` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            KindName::SyncFull => "sync_full",
            KindName::SyncTargeted => "sync_targeted",
            KindName::RemapUnmapped => "remap_unmapped",
            KindName::Purchase => "purchase",
            KindName::InventoryPush => "inventory_push",
            KindName::WebhookApply => "webhook_apply",
        }
    }

    /// The kind named by a `kind` column value.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }

    /// The lane its jobs run on: full syncs and remaps in the background, the rest while someone
    /// (a buyer, the shop, CardTrader) is waiting for it.
    pub fn lane(self) -> Lane {
        match self {
            KindName::SyncFull | KindName::RemapUnmapped => Lane::Bulk,
            _ => Lane::Interactive,
        }
    }
}

impl std::fmt::Display for KindName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a stored job's kind or payload could not be read.
#[derive(Debug, thiserror::Error)]
#[error("job kind '{kind}': {reason}")]
pub struct KindError {
    kind: String,
    reason: String,
}

/// The stored payload of the purchase kind.
#[derive(Serialize, Deserialize)]
struct PurchasePayload {
    purchase_id: Uuid,
    #[serde(default)]
    locked: bool,
}

/// The stored payload of the sync kinds (the shape earlier releases stored, kept so queued jobs
/// survive an upgrade).
#[derive(Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
enum SyncPayload {
    Full,
    Targeted(TargetedScope),
}

impl JobKind {
    /// Its name.
    pub fn name(&self) -> KindName {
        match self {
            JobKind::SyncFull => KindName::SyncFull,
            JobKind::SyncTargeted(_) => KindName::SyncTargeted,
            JobKind::RemapUnmapped => KindName::RemapUnmapped,
            JobKind::Purchase { .. } => KindName::Purchase,
            JobKind::InventoryPush => KindName::InventoryPush,
            JobKind::WebhookApply => KindName::WebhookApply,
        }
    }

    /// The lane it runs on.
    pub fn lane(&self) -> Lane {
        self.name().lane()
    }

    /// Its rank within the lane when nobody says otherwise: a waiting buyer first, then
    /// CardTrader's sales (until they apply, the shop may sell stock already gone), then the shop's
    /// edits, then targeted syncs.
    pub fn default_priority(&self) -> i32 {
        match self {
            JobKind::Purchase { .. } => 10,
            JobKind::WebhookApply => 8,
            JobKind::InventoryPush => 5,
            _ => 0,
        }
    }

    /// Attempts before the job ends dead. A purchase's attempts are each a full resume from its
    /// step log, and most failures are bounded by the saga itself (deadline, give-back allowance),
    /// so they only stop a purchase that can make no progress at all.
    pub fn max_attempts(&self) -> i32 {
        match self {
            JobKind::Purchase { .. } => 25,
            JobKind::WebhookApply => 10,
            JobKind::InventoryPush => 8,
            JobKind::RemapUnmapped => 3,
            JobKind::SyncFull | JobKind::SyncTargeted(_) => 5,
        }
    }

    /// The key that decides which requests coalesce: requests of one seller, kind and key share
    /// one queued job. A purchase's job is its own; every other kind has one queued job per seller.
    pub fn dedupe_key(&self) -> String {
        match self {
            JobKind::Purchase { purchase_id, .. } => purchase_id.to_string(),
            _ => String::new(),
        }
    }

    /// What a queued job of this kind must do once `requested` joins it, or `None` when it already
    /// covers it: targeted syncs widen to the union of both, so no request is coalesced away into a
    /// narrower job.
    pub fn widened(&self, requested: &JobKind) -> Option<JobKind> {
        match (self, requested) {
            (JobKind::SyncTargeted(queued), JobKind::SyncTargeted(more)) => {
                let union = queued.union(more);
                (union != *queued).then_some(JobKind::SyncTargeted(union))
            }
            _ => None,
        }
    }

    /// The `payload` column's value.
    pub fn payload(&self) -> serde_json::Value {
        let encoded = match self {
            JobKind::SyncFull => serde_json::to_value(SyncPayload::Full),
            JobKind::SyncTargeted(scope) => {
                serde_json::to_value(SyncPayload::Targeted(scope.clone()))
            }
            JobKind::Purchase {
                purchase_id,
                locked,
            } => serde_json::to_value(PurchasePayload {
                purchase_id: *purchase_id,
                locked: *locked,
            }),
            JobKind::RemapUnmapped | JobKind::InventoryPush | JobKind::WebhookApply => {
                Ok(serde_json::json!({}))
            }
        };
        // Plain structs of integers and uuids always serialize.
        encoded.unwrap_or_default()
    }

    /// The kind stored as `kind` and `payload`.
    pub fn decode(kind: &str, payload: &serde_json::Value) -> Result<Self, KindError> {
        let error = |reason: String| KindError {
            kind: kind.to_owned(),
            reason,
        };
        let name = KindName::parse(kind).ok_or_else(|| error("no such kind".into()))?;
        let sync = || {
            serde_json::from_value::<SyncPayload>(payload.clone())
                .map_err(|err| error(format!("unreadable scope: {err}")))
        };
        Ok(match name {
            KindName::SyncFull => match sync()? {
                SyncPayload::Full => JobKind::SyncFull,
                SyncPayload::Targeted(_) => return Err(error("a targeted scope".into())),
            },
            KindName::SyncTargeted => match sync()? {
                SyncPayload::Targeted(scope) => JobKind::SyncTargeted(scope),
                SyncPayload::Full => return Err(error("a full scope".into())),
            },
            KindName::Purchase => {
                let stored: PurchasePayload = serde_json::from_value(payload.clone())
                    .map_err(|err| error(format!("unreadable purchase: {err}")))?;
                JobKind::Purchase {
                    purchase_id: stored.purchase_id,
                    locked: stored.locked,
                }
            }
            KindName::RemapUnmapped => JobKind::RemapUnmapped,
            KindName::InventoryPush => JobKind::InventoryPush,
            KindName::WebhookApply => JobKind::WebhookApply,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_what_it_stores() {
        let kinds = [
            JobKind::SyncFull,
            JobKind::SyncTargeted(TargetedScope {
                blueprint_ids: vec![1, 2],
                expansion_ids: vec![7],
            }),
            JobKind::RemapUnmapped,
            JobKind::Purchase {
                purchase_id: Uuid::new_v4(),
                locked: true,
            },
            JobKind::InventoryPush,
            JobKind::WebhookApply,
        ];
        for kind in kinds {
            let decoded = JobKind::decode(kind.name().as_str(), &kind.payload()).unwrap();
            assert_eq!(decoded, kind);
        }
    }

    #[test]
    fn payloads_of_earlier_releases_still_read() {
        let full = JobKind::decode("sync_full", &serde_json::json!({"scope": "full"})).unwrap();
        assert_eq!(full, JobKind::SyncFull);
        let targeted = JobKind::decode(
            "sync_targeted",
            &serde_json::json!({"scope": "targeted", "blueprint_ids": [3]}),
        )
        .unwrap();
        assert_eq!(
            targeted,
            JobKind::SyncTargeted(TargetedScope {
                blueprint_ids: vec![3],
                expansion_ids: vec![]
            })
        );
    }

    #[test]
    fn unknown_kinds_and_mismatched_payloads_are_refused() {
        assert!(JobKind::decode("flaky", &serde_json::json!({})).is_err());
        assert!(JobKind::decode("sync_full", &serde_json::json!({"scope": "targeted"})).is_err());
        assert!(JobKind::decode("purchase", &serde_json::json!({})).is_err());
    }

    #[test]
    fn a_targeted_sync_widens_to_the_union_and_nothing_else_widens() {
        let queued = JobKind::SyncTargeted(TargetedScope {
            blueprint_ids: vec![1, 3],
            expansion_ids: vec![],
        });
        let requested = JobKind::SyncTargeted(TargetedScope {
            blueprint_ids: vec![2, 3],
            expansion_ids: vec![9],
        });
        assert_eq!(
            queued.widened(&requested),
            Some(JobKind::SyncTargeted(TargetedScope {
                blueprint_ids: vec![1, 2, 3],
                expansion_ids: vec![9],
            }))
        );
        assert_eq!(queued.widened(&queued), None, "already covered");
        assert_eq!(JobKind::SyncFull.widened(&JobKind::SyncFull), None);
    }
}
