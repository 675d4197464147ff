//! The `audit_log` projection: one row per accepted record, with the field-level diff from
//! the previous version of the same cluster+facet.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::HistoryRecord;
use fleetledger_schemas::diff::write_state_diff;
use fleetledger_schemas::{Facet, FacetState, StateRecord};

/// One row of `audit_log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    /// Cluster.
    pub cluster_id: String,
    /// Facet (its name in JSON).
    pub facet: Facet,
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
    /// Field-level diff from the previous version, JSON text. Read from a JSON string
    /// or, as [`AuditRow::write_json_line`] writes it, an embedded JSON object.
    #[serde(deserialize_with = "diff_text")]
    pub diff: String,
    /// Record hash.
    pub hash: String,
    /// History partition.
    pub partition: i32,
    /// History offset.
    pub offset: i64,
}

impl AuditRow {
    /// Appends the row as one line of JSON (with its newline) to `out`: the fields of its
    /// `Serialize` form, except that the diff is embedded as the JSON object it is rather
    /// than as an escaped string, which halves the cost of writing and reading the rows
    /// file. `Deserialize` reads both forms.
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        fn text(out: &mut Vec<u8>, s: &str) {
            // Writing a str to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, s);
        }
        use std::io::Write;
        out.extend_from_slice(b"{\"cluster_id\":");
        text(out, &self.cluster_id);
        let _ = write!(
            out,
            ",\"facet\":\"{}\",\"version\":{},\"ts_ms\":{},\"writer\":",
            self.facet, self.version, self.ts_ms
        );
        text(out, &self.writer);
        out.extend_from_slice(b",\"request_id\":");
        text(out, &self.request_id);
        out.extend_from_slice(b",\"reason\":");
        match &self.reason {
            Some(r) => text(out, r),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"diff\":");
        out.extend_from_slice(self.diff.as_bytes());
        out.extend_from_slice(b",\"hash\":");
        text(out, &self.hash);
        let _ = writeln!(
            out,
            ",\"partition\":{},\"offset\":{}}}",
            self.partition, self.offset
        );
    }
}

/// The diff as JSON text, from a JSON string (its content) or any other JSON value (its
/// text as written).
fn diff_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = <Box<serde_json::value::RawValue>>::deserialize(d)?;
    if raw.get().starts_with('"') {
        serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)
    } else {
        // The raw value's own allocation becomes the string: no copy.
        Ok(Box::<str>::from(raw).into_string())
    }
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
    /// Appends the row of `h`, taking its strings over. The diff is written straight from
    /// the typed states ([`write_state_diff`]): no JSON tree per record.
    pub fn apply(&mut self, h: HistoryRecord) {
        let HistoryRecord {
            record: StateRecord { meta, state },
            partition,
            offset,
            ..
        } = h;
        let facet = state.facet();
        let row = self.rows.len();
        let cluster = match self.clusters.get_mut(&meta.cluster_id) {
            Some(c) => c,
            None => self.clusters.entry(meta.cluster_id.clone()).or_default(),
        };
        let slot = &mut cluster.last[facet as usize];
        let mut diff = String::with_capacity(64);
        write_state_diff(&mut diff, slot.as_ref(), &state);
        *slot = Some(state);
        cluster.rows.push(row);
        self.rows.push(AuditRow {
            cluster_id: meta.cluster_id,
            facet,
            version: meta.version,
            ts_ms: meta.ts.timestamp_millis(),
            writer: meta.writer,
            request_id: meta.request_id,
            reason: meta.reason,
            diff,
            hash: meta.hash,
            partition,
            offset,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(reason: Option<&str>, diff: &str) -> AuditRow {
        AuditRow {
            cluster_id: "lkc-1".into(),
            facet: Facet::Logical,
            version: 3,
            ts_ms: 1_700_000_000_123,
            writer: "svc \"frontend\"\n".into(),
            request_id: "r\\1\u{1}é".into(),
            reason: reason.map(str::to_owned),
            diff: diff.into(),
            hash: "ab".repeat(32),
            partition: 2,
            offset: 41,
        }
    }

    #[test]
    fn a_json_line_reads_back_as_the_row_and_old_string_diffs_still_read() {
        for r in [
            row(Some("resize \"now\""), r#"{"cku":{"from":2,"to":4}}"#),
            row(None, r#"{"config.a\"b":{"from":null,"to":"\n"}}"#),
            row(None, "{}"),
        ] {
            let mut line = Vec::new();
            r.write_json_line(&mut line);
            assert_eq!(line.last(), Some(&b'\n'));
            let back: AuditRow = serde_json::from_slice(&line).unwrap();
            assert_eq!(back, r);
            // The diff is embedded as an object, not as a string.
            let v: Value = serde_json::from_slice(&line).unwrap();
            assert!(v["diff"].is_object(), "{v}");
            // The derived form (the diff as a string) reads back the same.
            let old = serde_json::to_string(&r).unwrap();
            assert!(serde_json::from_str::<Value>(&old).unwrap()["diff"].is_string());
            assert_eq!(serde_json::from_str::<AuditRow>(&old).unwrap(), r);
        }
    }
}
