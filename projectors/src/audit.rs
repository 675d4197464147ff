//! The `audit_log` projection: one row per accepted record, with the field-level diff from
//! the previous version of the same cluster+facet.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::HistoryRecord;
use fleetledger_schemas::diff::write_state_diff;
use fleetledger_schemas::{Facet, FacetState};

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

/// What the audit log keeps per cluster: the latest state of each facet (to diff the
/// next version against) and the indexes of its rows.
#[derive(Debug, Clone, Default, PartialEq)]
struct ClusterAudit {
    /// Indexed by `Facet as usize`.
    last: [Option<FacetState>; 4],
    /// Indexes into [`AuditLog::rows`], ascending.
    rows: Vec<usize>,
}

/// The audit log and the last state of every cluster+facet (to diff against).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditLog {
    /// Rows in the order the records were applied.
    pub rows: Vec<AuditRow>,
    /// Cluster → its latest states and rows: one lookup per record. The states are
    /// checkpointed ([`AuditLog::last_states`]); the row indexes are derived from `rows`.
    clusters: HashMap<String, ClusterAudit>,
}

impl AuditLog {
    /// Appends the row of `h`. The diff is written straight from the typed states
    /// ([`write_state_diff`]): no JSON tree per record.
    pub fn apply(&mut self, h: &HistoryRecord) {
        let r = &h.record;
        let row = self.rows.len();
        let cluster = match self.clusters.get_mut(&r.meta.cluster_id) {
            Some(c) => c,
            None => self.clusters.entry(r.meta.cluster_id.clone()).or_default(),
        };
        let slot = &mut cluster.last[r.facet() as usize];
        let mut diff = String::with_capacity(64);
        write_state_diff(&mut diff, slot.as_ref(), &r.state);
        match slot {
            Some(previous) => previous.clone_from(&r.state),
            None => *slot = Some(r.state.clone()),
        }
        cluster.rows.push(row);
        self.rows.push(AuditRow {
            cluster_id: r.meta.cluster_id.clone(),
            facet: r.facet().as_str().to_owned(),
            version: r.meta.version,
            ts_ms: r.meta.ts.timestamp_millis(),
            writer: r.meta.writer.clone(),
            request_id: r.meta.request_id.clone(),
            reason: r.meta.reason.clone(),
            diff,
            hash: r.meta.hash.clone(),
            partition: h.partition,
            offset: h.offset,
        });
    }

    /// The latest state of every cluster+facet, for the checkpoint: it serializes as a
    /// map of `cluster/facet` to the state's JSON, sorted by key.
    pub fn last_states(&self) -> LastStates<'_> {
        LastStates(self)
    }

    /// An audit log of `rows` and the latest states `last` (`cluster/facet` → state JSON,
    /// from a checkpoint), indexed. An entry that names no facet or whose state does not
    /// parse is an error that says which.
    pub fn from_parts(rows: Vec<AuditRow>, last: BTreeMap<String, Value>) -> Result<Self, String> {
        let mut log = AuditLog {
            rows,
            clusters: HashMap::new(),
        };
        for (key, state) in last {
            let (cluster_id, facet) = key
                .rsplit_once('/')
                .and_then(|(c, f)| Some((c, f.parse::<Facet>().ok()?)))
                .ok_or_else(|| format!("last state {key:?} is not named cluster/facet"))?;
            let state = FacetState::from_stored_json(facet, state)
                .map_err(|e| format!("last state {key:?} does not parse: {e}"))?;
            log.clusters.entry(cluster_id.to_owned()).or_default().last[facet as usize] =
                Some(state);
        }
        log.reindex();
        Ok(log)
    }

    /// Rebuilds the per-cluster row indexes from `rows` (after loading a checkpoint).
    pub fn reindex(&mut self) {
        for c in self.clusters.values_mut() {
            c.rows.clear();
        }
        for (i, row) in self.rows.iter().enumerate() {
            match self.clusters.get_mut(&row.cluster_id) {
                Some(c) => c.rows.push(i),
                None => {
                    let c = self.clusters.entry(row.cluster_id.clone()).or_default();
                    c.rows.push(i);
                }
            }
        }
    }

    /// The history offsets of `cluster_id`'s records in `partition`, ascending, without
    /// scanning other clusters' rows.
    pub fn offsets_of(&self, cluster_id: &str, partition: i32) -> Vec<i64> {
        let mut offsets: Vec<i64> = self
            .clusters
            .get(cluster_id)
            .into_iter()
            .flat_map(|c| &c.rows)
            .filter_map(|&i| self.rows.get(i))
            .filter(|r| r.partition == partition)
            .map(|r| r.offset)
            .collect();
        offsets.sort_unstable();
        offsets
    }
}

/// [`AuditLog::last_states`]: serializes as `{"cluster/facet": state, …}`, sorted by key,
/// the shape [`AuditLog::from_parts`] reads back.
#[derive(Debug, Clone, Copy)]
pub struct LastStates<'a>(&'a AuditLog);

impl Serialize for LastStates<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut entries: Vec<(String, &FacetState)> = self
            .0
            .clusters
            .iter()
            .flat_map(|(id, c)| {
                c.last
                    .iter()
                    .flatten()
                    .map(move |s| (format!("{id}/{}", s.facet()), s))
            })
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        serializer.collect_map(entries)
    }
}
