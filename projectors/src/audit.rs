//! The `audit_log` projection: one row per accepted record, with the field-level diff from
//! the previous version of the same cluster+facet.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::HistoryRecord;
use fleetledger_schemas::diff::field_diff;

/// One row of `audit_log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    /// Cluster.
    pub cluster_id: String,
    /// Facet name.
    pub facet: String,
    /// Version.
    pub version: i64,
    /// Record time (ms since the epoch, UTC).
    pub ts_ms: i64,
    /// Writer principal.
    pub writer: String,
    /// Idempotency key.
    pub request_id: String,
    /// Reason.
    pub reason: Option<String>,
    /// Field-level diff from the previous version, JSON text.
    pub diff: String,
    /// Record hash.
    pub hash: String,
    /// History partition.
    pub partition: i32,
    /// History offset.
    pub offset: i64,
}

/// The audit log and the last state of every cluster+facet (to diff against).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditLog {
    /// Rows in the order the records were applied.
    pub rows: Vec<AuditRow>,
    /// `cluster/facet` → its latest state JSON.
    last: BTreeMap<String, Value>,
    /// Cluster → the indexes of its rows in `rows`, ascending; derived from `rows`, not
    /// checkpointed (see [`AuditLog::reindex`]).
    #[serde(skip)]
    by_cluster: HashMap<String, Vec<usize>>,
}

impl AuditLog {
    /// Appends the row of `h`.
    pub fn apply(&mut self, h: &HistoryRecord) {
        let r = &h.record;
        let key = format!("{}/{}", r.meta.cluster_id, r.facet());
        let state = r.state.to_json();
        // One lookup: the previous state is diffed and then replaced in place.
        let previous = self.last.get_mut(&key);
        let diff = field_diff(previous.as_deref(), &state);
        let row = self.rows.len();
        match self.by_cluster.get_mut(&r.meta.cluster_id) {
            Some(rows) => rows.push(row),
            None => {
                self.by_cluster.insert(r.meta.cluster_id.clone(), vec![row]);
            }
        }
        self.rows.push(AuditRow {
            cluster_id: r.meta.cluster_id.clone(),
            facet: r.facet().as_str().to_owned(),
            version: r.meta.version,
            ts_ms: r.meta.ts.timestamp_millis(),
            writer: r.meta.writer.clone(),
            request_id: r.meta.request_id.clone(),
            reason: r.meta.reason.clone(),
            diff: diff.to_string(),
            hash: r.meta.hash.clone(),
            partition: h.partition,
            offset: h.offset,
        });
        match previous {
            Some(p) => *p = state,
            None => {
                self.last.insert(key, state);
            }
        }
    }

    /// The latest state of every `cluster/facet`, for the checkpoint.
    pub fn last_states(&self) -> &BTreeMap<String, Value> {
        &self.last
    }

    /// An audit log of `rows` and the latest states `last` (from a checkpoint), indexed.
    pub fn from_parts(rows: Vec<AuditRow>, last: BTreeMap<String, Value>) -> Self {
        let mut log = AuditLog {
            rows,
            last,
            by_cluster: HashMap::new(),
        };
        log.reindex();
        log
    }

    /// Rebuilds the per-cluster index from `rows` (after loading a checkpoint).
    pub fn reindex(&mut self) {
        self.by_cluster.clear();
        for (i, row) in self.rows.iter().enumerate() {
            self.by_cluster
                .entry(row.cluster_id.clone())
                .or_default()
                .push(i);
        }
    }

    /// The history offsets of `cluster_id`'s records in `partition`, ascending, without
    /// scanning other clusters' rows.
    pub fn offsets_of(&self, cluster_id: &str, partition: i32) -> Vec<i64> {
        let mut offsets: Vec<i64> = self
            .by_cluster
            .get(cluster_id)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.rows.get(i))
            .filter(|r| r.partition == partition)
            .map(|r| r.offset)
            .collect();
        offsets.sort_unstable();
        offsets
    }
}
