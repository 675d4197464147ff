//! The `audit_log` projection: one row per accepted record, with the field-level diff from
//! the previous version of the same cluster+facet.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::HistoryRecord;
use crate::segments::{
    Sealed, Segment, SegmentDir, SegmentLayout, column, time_column, utf8_column,
};
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
    /// Field-level diff from the previous version, JSON text.
    pub diff: String,
    /// Record hash.
    pub hash: String,
    /// History partition.
    pub partition: i32,
    /// History offset.
    pub offset: i64,
}

/// The audit log: rows in Parquet segments plus the rows not yet written, and the last
/// state of every cluster+facet (to diff the next version against).
///
/// Memory holds only the rows applied since the last checkpoint (the `tail`, and while a
/// checkpoint writes them, `sealed`) and one state per cluster+facet; the rest is on disk,
/// in the segments the last checkpoint names, each sorted by (cluster, partition, offset)
/// so that one cluster's rows are a few row groups of each file.
#[derive(Debug, Clone, Default)]
pub struct AuditLog {
    /// Rows applied since the last segment was sealed, in the order applied.
    pub tail: Vec<AuditRow>,
    /// Rows being written to a segment by a checkpoint.
    pub sealed: Option<Sealed<AuditRow>>,
    /// The segments, oldest first.
    pub segments: Vec<Segment>,
    /// Where the segments are.
    pub files: SegmentDir,
    /// Cluster → its latest state per facet (indexed by `Facet as usize`).
    last: HashMap<String, [Option<FacetState>; 4]>,
}

impl PartialEq for AuditLog {
    /// Equal latest states and equal rows in memory (segments are compared by their rows,
    /// see [`AuditLog::all_rows`]).
    fn eq(&self, other: &Self) -> bool {
        self.last == other.last && self.tail == other.tail
    }
}

impl AuditLog {
    /// An empty audit log whose segments go to `files`.
    pub fn new(files: SegmentDir) -> Self {
        AuditLog {
            files,
            ..AuditLog::default()
        }
    }

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
        let cluster = match self.last.get_mut(&meta.cluster_id) {
            Some(c) => c,
            None => self.last.entry(meta.cluster_id.clone()).or_default(),
        };
        let slot = &mut cluster[facet as usize];
        let mut diff = String::with_capacity(64);
        write_state_diff(&mut diff, slot.as_ref(), &state);
        *slot = Some(state);
        self.tail.push(AuditRow {
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

    /// The rows in memory (sealed, then tail).
    pub fn memory_rows(&self) -> impl Iterator<Item = &AuditRow> {
        self.sealed.iter().flat_map(|s| s.iter()).chain(&self.tail)
    }

    /// The clusters of which the log holds a latest state.
    pub fn cluster_ids(&self) -> impl Iterator<Item = &String> {
        self.last.keys()
    }

    /// Replaces each latest state of the clusters `ids` by `shared(cluster_id, state)`
    /// where that returns an equal one (held elsewhere, such as the ledger's), so that the
    /// process holds one copy of it; the log is unchanged in value. Returns how many were
    /// replaced.
    pub fn share_states(
        &mut self,
        ids: &[String],
        shared: &mut impl FnMut(&str, &FacetState) -> Option<FacetState>,
    ) -> usize {
        let mut n = 0;
        for id in ids {
            let Some(facets) = self.last.get_mut(id) else {
                continue;
            };
            for slot in facets.iter_mut() {
                if let Some(state) = slot
                    && let Some(s) = shared(id, state)
                    && s == *state
                {
                    *state = s;
                    n += 1;
                }
            }
        }
        n
    }

    /// The latest state of every cluster+facet as of now, for the checkpoint: a copy of
    /// the map whose states are shared with the log's (a few MB at 26,000 clusters, where
    /// their JSON is about 15 MB), which the log may go on changing. It serializes as a
    /// map of `cluster/facet` to the state's JSON.
    pub fn last_states(&self) -> LastStates {
        LastStates(self.last.clone())
    }

    /// An audit log with the latest states `last` (`cluster/facet` → state JSON, from a
    /// checkpoint) and the segments `segments` in `files`. An entry that names no facet or
    /// whose state does not parse is an error that says which.
    pub fn from_parts(
        files: SegmentDir,
        segments: Vec<Segment>,
        last: BTreeMap<String, Value>,
    ) -> Result<Self, String> {
        let mut log = AuditLog {
            segments,
            files,
            ..AuditLog::default()
        };
        for (key, state) in last {
            let (cluster_id, facet) = key
                .rsplit_once('/')
                .and_then(|(c, f)| Some((c, f.parse::<Facet>().ok()?)))
                .ok_or_else(|| format!("last state {key:?} is not named cluster/facet"))?;
            let state = FacetState::from_stored_json(facet, state)
                .map_err(|e| format!("last state {key:?} does not parse: {e}"))?;
            log.last.entry(cluster_id.to_owned()).or_default()[facet as usize] = Some(state);
        }
        Ok(log)
    }

    /// Every row, from the segments and memory, in (partition, offset) order. Reads every
    /// segment: for tests and tools, not for queries.
    pub fn all_rows(&self) -> crate::Result<Vec<AuditRow>> {
        let mut rows = Vec::new();
        for s in &self.segments {
            rows.extend(read_rows(&self.files, s)?);
        }
        rows.extend(self.memory_rows().cloned());
        rows.sort_by_key(|r| (r.partition, r.offset));
        Ok(rows)
    }
}

/// How audit segments are written: a bloom filter on the columns looked up by equality,
/// the record time as the key. The columns whose every value is its own (the idempotency
/// key, the diff, the hash, the time and the offset) are written plain: a dictionary of
/// them is as large as the values, costs the writer a hash table insert per value, and
/// costs a one-cluster lookup the decoding of the row group's whole dictionary page.
pub const AUDIT_SEGMENTS: SegmentLayout = SegmentLayout {
    bloom: &["cluster_id", "writer", "request_id"],
    key: "ts",
    pages: crate::segments::Pages::SmallPlainIn(&["request_id", "diff", "hash", "ts", "offset"]),
    group_rows: crate::segments::ROW_GROUP_ROWS,
};

/// The columns of `audit_log`, as a table and in its segments.
pub fn audit_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("cluster_id", DataType::Utf8, false),
        Field::new("facet", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("ts", ts, false),
        Field::new("writer", DataType::Utf8, false),
        Field::new("request_id", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("diff", DataType::Utf8, false),
        Field::new("hash", DataType::Utf8, false),
        Field::new("partition", DataType::Int64, false),
        Field::new("offset", DataType::Int64, false),
    ]))
}

/// The columns of [`audit_schema`] at `columns` (indexes into it) over `rows`: the
/// segment writer builds all of them, a table scan only those it projects.
pub fn audit_columns<'a>(
    rows: impl Iterator<Item = &'a AuditRow> + Clone,
    columns: &[usize],
) -> Vec<ArrayRef> {
    let strings = |f: fn(&AuditRow) -> &str| utf8_column(rows.clone(), f);
    let ints = |f: fn(&AuditRow) -> i64| -> ArrayRef {
        Arc::new(rows.clone().map(f).collect::<Int64Array>())
    };
    columns
        .iter()
        .map(|&i| match i {
            0 => strings(|r| &r.cluster_id),
            1 => strings(|r| r.facet.as_str()),
            2 => ints(|r| r.version),
            3 => time_column(rows.clone(), |r| r.ts_ms),
            4 => strings(|r| &r.writer),
            5 => strings(|r| &r.request_id),
            6 => Arc::new(
                rows.clone()
                    .map(|r| r.reason.as_deref())
                    .collect::<StringArray>(),
            ),
            7 => strings(|r| &r.diff),
            8 => strings(|r| &r.hash),
            9 => ints(|r| i64::from(r.partition)),
            10 => ints(|r| r.offset),
            other => panic!("audit_log has 11 columns, not a column {other}"),
        })
        .collect()
}

/// `rows` as one batch of [`audit_schema`].
pub fn audit_batch<'a>(rows: impl Iterator<Item = &'a AuditRow> + Clone) -> RecordBatch {
    let all: Vec<usize> = (0..audit_schema().fields().len()).collect();
    // The columns are built from the schema's own list: it cannot fail.
    RecordBatch::try_new(audit_schema(), audit_columns(rows, &all))
        .expect("audit batch matches its schema")
}

/// The history offsets of `cluster_id`'s rows in `partition` held by `segments`, read from
/// the row groups whose statistics may hold the cluster.
pub fn segment_offsets(
    files: &SegmentDir,
    segments: &[Segment],
    cluster_id: &str,
    partition: i32,
) -> crate::Result<Vec<i64>> {
    let mut out = Vec::new();
    for s in segments {
        let cols = ["cluster_id", "partition", "offset"];
        for b in files.read(s, Some(&cols), Some(("cluster_id", cluster_id)))? {
            let bad = |message| crate::Error::Checkpoint {
                path: files.path(s),
                projection: "audit_log".into(),
                message,
            };
            let ids = column::<StringArray>(&b, "cluster_id").map_err(bad)?;
            let parts = column::<Int64Array>(&b, "partition").map_err(bad)?;
            let offsets = column::<Int64Array>(&b, "offset").map_err(bad)?;
            out.extend(
                (0..b.num_rows())
                    .filter(|&k| {
                        ids.value(k) == cluster_id && parts.value(k) == i64::from(partition)
                    })
                    .map(|k| offsets.value(k)),
            );
        }
    }
    Ok(out)
}

/// The order of rows within an audit segment: by cluster, then history position (so a
/// one-cluster lookup reads a few row groups). Segments are written and merged in it.
pub fn segment_order(a: &AuditRow, b: &AuditRow) -> std::cmp::Ordering {
    (&a.cluster_id, a.partition, a.offset).cmp(&(&b.cluster_id, b.partition, b.offset))
}

/// Every row of audit segment `s` in `files`.
pub fn read_rows(files: &SegmentDir, s: &Segment) -> crate::Result<Vec<AuditRow>> {
    files.read_rows(s, "audit_log", rows_of)
}

/// The rows of a batch of [`audit_schema`] (or of a projection of it that has every
/// column); a missing or mistyped column is an error that names it.
pub fn rows_of(b: &RecordBatch) -> Result<Vec<AuditRow>, String> {
    let s = |name| column::<StringArray>(b, name);
    let i = |name| column::<Int64Array>(b, name);
    let (cluster, facet, writer, request, reason, diff, hash) = (
        s("cluster_id")?,
        s("facet")?,
        s("writer")?,
        s("request_id")?,
        s("reason")?,
        s("diff")?,
        s("hash")?,
    );
    let (version, partition, offset) = (i("version")?, i("partition")?, i("offset")?);
    let ts = column::<TimestampMillisecondArray>(b, "ts")?;
    (0..b.num_rows())
        .map(|k| {
            Ok(AuditRow {
                cluster_id: cluster.value(k).to_owned(),
                facet: facet
                    .value(k)
                    .parse()
                    .map_err(|_| format!("unknown facet {:?}", facet.value(k)))?,
                version: version.value(k),
                ts_ms: ts.value(k),
                writer: writer.value(k).to_owned(),
                request_id: request.value(k).to_owned(),
                reason: reason.is_valid(k).then(|| reason.value(k).to_owned()),
                diff: diff.value(k).to_owned(),
                hash: hash.value(k).to_owned(),
                partition: i32::try_from(partition.value(k))
                    .map_err(|_| format!("partition {} out of range", partition.value(k)))?,
                offset: offset.value(k),
            })
        })
        .collect()
}

/// [`AuditLog::last_states`]: serializes as `{"cluster/facet": state, …}`, sorted by
/// cluster, then facet, the shape [`AuditLog::from_parts`] reads back. Serializing it
/// builds no key and no state's JSON in memory beyond the one being written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastStates(HashMap<String, [Option<FacetState>; 4]>);

/// A `cluster/facet` key, written as it is serialized.
struct StateKey<'a>(&'a str, &'a FacetState);

impl Serialize for StateKey<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}/{}", self.0, self.1.facet()))
    }
}

impl Serialize for LastStates {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut clusters: Vec<(&String, &[Option<FacetState>; 4])> = self.0.iter().collect();
        clusters.sort_unstable_by_key(|c| c.0);
        serializer.collect_map(
            clusters.into_iter().flat_map(|(id, states)| {
                states.iter().flatten().map(move |s| (StateKey(id, s), s))
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn row(i: i64, reason: Option<&str>, diff: &str) -> AuditRow {
        AuditRow {
            cluster_id: format!("lkc-{}", i % 7),
            facet: Facet::ALL[(i % 4) as usize],
            version: 3 + i,
            ts_ms: 1_700_000_000_123 + i,
            writer: "svc \"frontend\"\n".into(),
            request_id: format!("r\\{i}\u{1}é"),
            reason: reason.map(str::to_owned),
            diff: diff.into(),
            hash: "ab".repeat(32),
            partition: (i % 3) as i32,
            offset: 41 + i,
        }
    }

    /// An audit segment writes the columns whose every value is its own without a
    /// dictionary, and keeps one where values repeat (cluster, facet, writer); its rows
    /// read back as written.
    #[test]
    fn unique_columns_are_written_plain_and_rows_read_back() {
        use parquet::basic::Encoding;
        let dir = SegmentDir::new(
            std::env::temp_dir().join(format!("fl-audit-plain-{}", std::process::id())),
        );
        let mut rows: Vec<AuditRow> = (0..3_000)
            .map(|i| row(i, None, &format!("{{\"cku\":[{i},{}]}}", i + 1)))
            .collect();
        for (i, r) in rows.iter_mut().enumerate() {
            r.hash = format!("{i:064x}");
        }
        rows.sort_by(segment_order);
        let refs: Vec<&AuditRow> = rows.iter().collect();
        let segment = dir
            .write_rows(
                &audit_schema(),
                &refs,
                |c| audit_batch(c.iter().copied()),
                AUDIT_SEGMENTS,
            )
            .unwrap()
            .unwrap();
        let file = std::fs::File::open(dir.path(&segment)).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let group = reader.metadata().row_group(0);
        let dictionary = |name: &str| {
            let column = group
                .columns()
                .iter()
                .find(|c| c.column_path().string() == name)
                .unwrap();
            column
                .encodings()
                .any(|e| matches!(e, Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY))
        };
        for plain in ["request_id", "diff", "hash", "ts", "offset"] {
            assert!(!dictionary(plain), "{plain} is written with a dictionary");
        }
        for repeated in ["cluster_id", "facet", "writer"] {
            assert!(
                dictionary(repeated),
                "{repeated} is written without a dictionary"
            );
        }
        assert_eq!(read_rows(&dir, &segment).unwrap(), rows);
        std::fs::remove_dir_all(dir.dir()).unwrap();
    }

    /// Restored projections take the ledger's copy of each state equal to theirs, and only
    /// of those: a state that differs keeps its own copy, and nothing changes in value.
    #[test]
    fn only_equal_states_are_shared_and_values_stay() {
        use fleetledger_schemas::{RecordMeta, StatusState};
        let status = |phase: &str| {
            FacetState::Status(Arc::new(StatusState {
                phase: phase.into(),
                cku: 2,
                brokers_ready: 3,
                observed_version: 1,
                message: None,
            }))
        };
        let record = |cluster: &str, state: FacetState| HistoryRecord {
            record: StateRecord {
                meta: RecordMeta {
                    cluster_id: cluster.into(),
                    version: 1,
                    writer: "test".into(),
                    request_id: "r1".into(),
                    reason: None,
                    ts: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
                    prev_hash: String::new(),
                    hash: String::new(),
                },
                state,
            },
            partition: 0,
            offset: 1,
            written_at_ms: 0,
        };
        // Each projection with its own copies, as restored from its checkpoint.
        let (mut log, mut clusters) = (AuditLog::default(), crate::Clusters::default());
        for id in ["lkc-a", "lkc-b"] {
            log.apply(record(id, status("running")));
            clusters.apply(&record(id, status("running")));
        }
        let before = (log.last_states(), serde_json::to_value(&clusters).unwrap());
        // The ledger's: equal for lkc-a, another phase for lkc-b.
        let ledger: HashMap<&str, FacetState> =
            [("lkc-a", status("running")), ("lkc-b", status("degraded"))].into();
        let mut shared = |id: &str, _: &FacetState| ledger.get(id).cloned();
        let ids = vec!["lkc-a".to_owned(), "lkc-b".to_owned()];
        assert_eq!(log.share_states(&ids, &mut shared), 1);
        assert_eq!(clusters.share_states(&ids, &mut shared), 1);
        let arc = |s: &FacetState| match s {
            FacetState::Status(a) => a.clone(),
            _ => unreachable!(),
        };
        let held =
            |log: &AuditLog, id: &str| arc(log.last[id][Facet::Status as usize].as_ref().unwrap());
        let row = |id: &str| clusters.rows[id].status.as_ref().unwrap().state.clone();
        assert!(Arc::ptr_eq(&held(&log, "lkc-a"), &arc(&ledger["lkc-a"])));
        assert!(Arc::ptr_eq(&row("lkc-a"), &arc(&ledger["lkc-a"])));
        assert!(!Arc::ptr_eq(&held(&log, "lkc-b"), &arc(&ledger["lkc-b"])));
        assert_eq!(row("lkc-b").phase, "running");
        assert_eq!(
            serde_json::to_value(&before.0).unwrap(),
            serde_json::to_value(log.last_states()).unwrap()
        );
        assert_eq!(before.1, serde_json::to_value(&clusters).unwrap());
    }

    /// The latest states saved with a checkpoint read back as the log's, keyed
    /// `cluster/facet`, and are those of the moment they were taken: the log goes on
    /// changing without them.
    #[test]
    fn the_latest_states_saved_read_back_and_stay_as_of_their_moment() {
        use fleetledger_schemas::{CapacityState, RecordMeta, StatusState};
        let record = |cluster: &str, version: i64, state: FacetState| HistoryRecord {
            record: StateRecord {
                meta: RecordMeta {
                    cluster_id: cluster.into(),
                    version,
                    writer: "test".into(),
                    request_id: format!("r{version}"),
                    reason: None,
                    ts: chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + version)
                        .unwrap(),
                    prev_hash: String::new(),
                    hash: String::new(),
                },
                state,
            },
            partition: 0,
            offset: version,
            written_at_ms: 0,
        };
        let status = |phase: &str, cku| {
            FacetState::Status(Arc::new(StatusState {
                phase: phase.into(),
                cku,
                brokers_ready: 3,
                observed_version: 1,
                message: None,
            }))
        };
        let capacity = |pool: &str| {
            FacetState::Capacity(Arc::new(CapacityState {
                satellite: "sat-1".into(),
                k8s_cluster: "k8s-1".into(),
                node_pool: pool.into(),
            }))
        };
        let mut log = AuditLog::default();
        // "lkc-1" and "lkc-1-b": a key is not confused with a longer id's.
        for (i, id) in ["lkc-1", "lkc-1-b", "lkc-10", "lkc-2"].iter().enumerate() {
            log.apply(record(id, 1, status("provisioning", 1)));
            log.apply(record(id, 2, status("running", i as i32 + 1)));
            if i % 2 == 0 {
                log.apply(record(id, 1, capacity("pool-1")));
            }
        }
        let saved = log.last_states();
        let json = serde_json::to_value(&saved).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "lkc-1-b/status",
                "lkc-1/capacity",
                "lkc-1/status",
                "lkc-10/capacity",
                "lkc-10/status",
                "lkc-2/status"
            ]
        );
        assert_eq!(json["lkc-2/status"]["cku"], 4);
        let last: BTreeMap<String, Value> = serde_json::from_value(json.clone()).unwrap();
        let back = AuditLog::from_parts(SegmentDir::default(), Vec::new(), last).unwrap();
        assert_eq!(back.last_states(), saved);
        assert_eq!(back.last, log.last);
        log.apply(record("lkc-2", 3, status("running", 9)));
        log.apply(record("lkc-3", 1, status("running", 1)));
        assert_eq!(serde_json::to_value(&saved).unwrap(), json);
        assert_ne!(log.last_states(), saved);
    }

    #[test]
    fn rows_read_back_from_a_segment_and_unnamed_files_are_removed() {
        let dir = std::env::temp_dir().join(format!("fl-audit-seg-{}", std::process::id()));
        let files = SegmentDir::new(&dir);
        let rows: Vec<AuditRow> = (0..40_000)
            .map(|i| match i % 3 {
                0 => row(i, Some("resize \"now\""), r#"{"cku":{"from":2,"to":4}}"#),
                1 => row(i, None, r#"{"config.a\"b":{"from":null,"to":"\n"}}"#),
                _ => row(i, None, "{}"),
            })
            .collect();
        let seg = files
            .write(&audit_schema(), &[audit_batch(rows.iter())], AUDIT_SEGMENTS)
            .unwrap()
            .unwrap();
        assert_eq!(seg.rows, 40_000);
        assert_eq!(
            (seg.min_key, seg.max_key),
            (1_700_000_000_123, 1_700_000_040_122)
        );
        let log = AuditLog::from_parts(files.clone(), vec![seg.clone()], BTreeMap::new()).unwrap();
        let mut in_history_order = rows.clone();
        in_history_order.sort_by_key(|r| (r.partition, r.offset));
        assert_eq!(log.all_rows().unwrap(), in_history_order);
        // A lookup of one cluster reads only the row groups that may hold it.
        let some: Vec<AuditRow> = files
            .read(&seg, None, Some(("cluster_id", "lkc-3")))
            .unwrap()
            .iter()
            .flat_map(|b| rows_of(b).unwrap())
            .collect();
        assert!(some.iter().any(|r| r.cluster_id == "lkc-3"));
        // A second file no checkpoint names goes at the next open; the named one stays.
        let orphan = files
            .write(
                &audit_schema(),
                &[audit_batch(rows[..10].iter())],
                AUDIT_SEGMENTS,
            )
            .unwrap()
            .unwrap();
        std::fs::write(dir.join("x.parquet.tmp"), b"half").unwrap();
        let named = BTreeSet::from([seg.name.as_str()]);
        assert_eq!(files.remove_unnamed(&named).unwrap(), 2);
        assert!(!files.path(&orphan).exists());
        assert_eq!(log.all_rows().unwrap().len(), 40_000);
        files.remove_all().unwrap();
    }

    #[test]
    fn a_one_cluster_lookup_decodes_only_the_pages_that_may_hold_it_and_finds_every_row() {
        let dir = std::env::temp_dir().join(format!("fl-audit-pages-{}", std::process::id()));
        let files = SegmentDir::new(&dir);
        // A segment as the projection writes one: 2,000 clusters, sorted by cluster, three
        // row groups of many pages.
        let mut rows: Vec<AuditRow> = (0..40_000)
            .map(|i| AuditRow {
                cluster_id: format!("lkc-{:04}", (i * 7_919) % 2_000),
                ..row(i, None, "{}")
            })
            .collect();
        rows.sort_by(segment_order);
        let seg = files
            .write(&audit_schema(), &[audit_batch(rows.iter())], AUDIT_SEGMENTS)
            .unwrap()
            .unwrap();
        for id in ["lkc-0000", "lkc-1013", "lkc-1999"] {
            let read: usize = files
                .read(&seg, Some(&["cluster_id"]), Some(("cluster_id", id)))
                .unwrap()
                .iter()
                .map(RecordBatch::num_rows)
                .sum();
            assert!(
                read <= 2 * crate::segments::PAGE_ROWS + 1,
                "{id}: {read} rows decoded of 40,000"
            );
            for partition in 0..3 {
                let mut want: Vec<i64> = rows
                    .iter()
                    .filter(|r| r.cluster_id == id && r.partition == partition)
                    .map(|r| r.offset)
                    .collect();
                want.sort_unstable();
                let mut got =
                    segment_offsets(&files, std::slice::from_ref(&seg), id, partition).unwrap();
                got.sort_unstable();
                assert!(!want.is_empty());
                assert_eq!(got, want, "{id} in partition {partition}");
            }
        }
        assert!(
            segment_offsets(&files, &[seg], "lkc-none", 0)
                .unwrap()
                .is_empty()
        );
        files.remove_all().unwrap();
    }

    #[test]
    fn a_streaming_merge_of_sorted_segments_is_their_sorted_union() {
        let dir = std::env::temp_dir().join(format!("fl-audit-merge-{}", std::process::id()));
        let files = SegmentDir::new(&dir);
        // Three segments of different sizes (one over a row group, one under a read batch),
        // each sorted, their clusters interleaved.
        let mut all = Vec::new();
        let mut segments = Vec::new();
        for (n, len) in [(0, 20_000), (1, 3_000), (2, 37_000)] {
            let mut rows: Vec<AuditRow> = (0..len)
                .map(|i| row(i * 3 + n, (i % 5 == 0).then_some("why"), "{}"))
                .collect();
            rows.sort_by(segment_order);
            all.extend(rows.iter().cloned());
            let seg = files
                .write_rows(
                    &audit_schema(),
                    &rows,
                    |c| audit_batch(c.iter()),
                    AUDIT_SEGMENTS,
                )
                .unwrap()
                .unwrap();
            segments.push(seg);
        }
        let merged = files
            .merge_sorted(
                &segments,
                &audit_schema(),
                "audit_log",
                rows_of,
                segment_order,
                |c| audit_batch(c.iter()),
                AUDIT_SEGMENTS,
            )
            .unwrap()
            .unwrap();
        all.sort_by(segment_order);
        assert_eq!(merged.rows, 60_000);
        assert_eq!(read_rows(&files, &merged).unwrap(), all);
        assert_eq!(
            (merged.min_key, merged.max_key),
            (
                segments.iter().map(|s| s.min_key).min().unwrap(),
                segments.iter().map(|s| s.max_key).max().unwrap()
            )
        );
        // An input that cannot be parsed fails the merge, names its file, and leaves no
        // file behind.
        let before: BTreeSet<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let err = files
            .merge_sorted(
                &segments,
                &audit_schema(),
                "audit_log",
                |b: &RecordBatch| {
                    if b.num_rows() < 4_096 {
                        Err("short batch".to_owned())
                    } else {
                        rows_of(b)
                    }
                },
                segment_order,
                |c| audit_batch(c.iter()),
                AUDIT_SEGMENTS,
            )
            .unwrap_err()
            .to_string();
        // The 3,000-row segment is read in one short batch.
        assert!(
            err.contains("short batch") && err.contains(&segments[1].name),
            "{err}"
        );
        let after: BTreeSet<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(before, after);
        files.remove_all().unwrap();
    }
}
