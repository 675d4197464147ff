//! The `audit_log` projection: one row per accepted record, with the field-level diff from
//! the previous version of the same cluster+facet.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diff::field_diff;
use crate::record::HistoryRecord;

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
}

impl AuditLog {
    /// Appends the row of `h`.
    pub fn apply(&mut self, h: &HistoryRecord) {
        let r = &h.record;
        let key = format!("{}/{}", r.meta.cluster_id, r.facet());
        let state = r.state.to_json();
        let diff = field_diff(self.last.get(&key), &state);
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
        self.last.insert(key, state);
    }
}
