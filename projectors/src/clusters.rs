//! The `clusters` projection: one row per cluster with every facet's fields and versions
//! joined, `drift` (the status has not observed the latest logical version) and `deleted`.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleetledger_schemas::{CapacityState, FacetState, LogicalState, PhysicalState, StatusState};
use serde::{Deserialize, Serialize};

use crate::record::HistoryRecord;

/// A facet's latest state with its version and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<S> {
    /// Version.
    pub version: i64,
    /// Time (ms since the epoch, UTC).
    pub ts_ms: i64,
    /// State.
    pub state: S,
}

/// Every facet of one cluster. The states are shared with the record they came from
/// (and with the audit log's previous versions): applying a record copies no state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRow {
    /// Logical (desired).
    pub logical: Option<Versioned<Arc<LogicalState>>>,
    /// Physical (desired).
    pub physical: Option<Versioned<Arc<PhysicalState>>>,
    /// Capacity (desired).
    pub capacity: Option<Versioned<Arc<CapacityState>>>,
    /// Status (actual).
    pub status: Option<Versioned<Arc<StatusState>>>,
}

impl ClusterRow {
    /// Deleted once the logical facet says so.
    pub fn deleted(&self) -> bool {
        self.logical.as_ref().is_some_and(|l| l.state.deleted)
    }

    /// The logical version the status reports to have observed (0 without status).
    pub fn observed_version(&self) -> i64 {
        self.status.as_ref().map_or(0, |s| s.state.observed_version)
    }

    /// The data plane has not yet reported the latest logical version.
    pub fn drift(&self) -> bool {
        self.logical
            .as_ref()
            .is_some_and(|l| self.observed_version() < l.version)
    }

    /// Time of the latest change of any facet.
    pub fn updated_at_ms(&self) -> i64 {
        [
            self.logical.as_ref().map(|v| v.ts_ms),
            self.physical.as_ref().map(|v| v.ts_ms),
            self.capacity.as_ref().map(|v| v.ts_ms),
            self.status.as_ref().map(|v| v.ts_ms),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
    }

    /// Since when the latest logical version is unobserved: its time, while drifting.
    pub fn drift_since_ms(&self) -> Option<i64> {
        if self.drift() {
            self.logical.as_ref().map(|l| l.ts_ms)
        } else {
            None
        }
    }
}

/// Cluster id → row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clusters {
    /// The rows, sorted by cluster id.
    pub rows: BTreeMap<String, ClusterRow>,
}

impl Clusters {
    /// Applies one record: the facet's state replaces an older version's. A record of a
    /// version lower than the one the row holds changes nothing, so the row is a function
    /// of the set of records applied (each facet's highest version), whatever order the
    /// facets' records arrive in; `drift`, `phase` and every per-service view derived from
    /// it are too.
    pub fn apply(&mut self, h: &HistoryRecord) {
        let r = &h.record;
        // The id is copied only for a new cluster, not for every record.
        let row = match self.rows.get_mut(&r.meta.cluster_id) {
            Some(row) => row,
            None => self.rows.entry(r.meta.cluster_id.clone()).or_default(),
        };
        let (version, ts_ms) = (r.meta.version, r.meta.ts.timestamp_millis());
        fn newer<S: Clone>(slot: &mut Option<Versioned<S>>, version: i64, ts_ms: i64, state: &S) {
            if slot.as_ref().is_none_or(|v| v.version <= version) {
                *slot = Some(Versioned {
                    version,
                    ts_ms,
                    state: state.clone(),
                });
            }
        }
        match &r.state {
            FacetState::Logical(s) => newer(&mut row.logical, version, ts_ms, s),
            FacetState::Physical(s) => newer(&mut row.physical, version, ts_ms, s),
            FacetState::Capacity(s) => newer(&mut row.capacity, version, ts_ms, s),
            FacetState::Status(s) => newer(&mut row.status, version, ts_ms, s),
        }
    }

    /// Replaces each state of the rows of `ids` by `shared(cluster_id, state)` where that
    /// returns an equal one (held elsewhere, such as the ledger's), so that the process
    /// holds one copy of it; rows are unchanged in value. Returns how many were replaced.
    pub fn share_states(
        &mut self,
        ids: &[String],
        shared: &mut impl FnMut(&str, &FacetState) -> Option<FacetState>,
    ) -> usize {
        let mut n = 0;
        for id in ids {
            let Some(row) = self.rows.get_mut(id) else {
                continue;
            };
            macro_rules! share {
                ($slot:expr, $variant:ident) => {
                    if let Some(v) = &mut $slot
                        && let Some(FacetState::$variant(s)) =
                            shared(id, &FacetState::$variant(v.state.clone()))
                        && s == v.state
                    {
                        v.state = s;
                        n += 1;
                    }
                };
            }
            share!(row.logical, Logical);
            share!(row.physical, Physical);
            share!(row.capacity, Capacity);
            share!(row.status, Status);
        }
        n
    }
}
