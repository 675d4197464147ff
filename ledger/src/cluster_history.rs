//! One cluster's history and what can be read from it: the state of every facet at any
//! point, the hash chains, and the plan of a recovery. Pure functions over records
//! already fetched (see [`crate::Ledger::history`]), testable without Kafka.
//!
//! A **point** in a cluster's life is a position in its commit order (the order of its
//! partition of the history topic). The state at a point is, per facet, the last record
//! at or before it. Points are named by time (`--as-of`: the last record with `ts` at or
//! before it), by version (`--version N`: the logical facet's version N; `FACET:N` for
//! another facet), or — the default of recovery — as *just before the last deletion*.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use fleetledger_schemas::diff::field_diff;
use fleetledger_schemas::{Facet, FacetState, Side, StateRecord};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::hash_chain::{ChainReport, ChainVerifier};

/// One record of a cluster's history and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The record.
    pub record: StateRecord,
    /// History partition.
    pub partition: i32,
    /// History offset.
    pub offset: i64,
}

/// A point in a cluster's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// After the latest record.
    Latest,
    /// Just before the latest deletion (the logical facet turning `deleted`).
    BeforeDeletion,
    /// After the last record whose time is at or before this time.
    AsOf(DateTime<Utc>),
    /// After the record of this facet and version.
    Version(Facet, i64),
}

impl Point {
    /// Parses `--version`: `N` (the logical facet) or `FACET:N`.
    pub fn parse_version(text: &str) -> Result<Point> {
        let (facet, n) = match text.split_once(':') {
            Some((f, n)) => (f.parse::<Facet>()?, n),
            None => (Facet::Logical, text),
        };
        match n.trim().parse::<i64>() {
            Ok(v) if v >= 1 => Ok(Point::Version(facet, v)),
            _ => Err(Error::InvalidPoint(format!(
                "version must be N or FACET:N with N >= 1 (e.g. 3 or physical:2), got {text:?}"
            ))),
        }
    }

    /// Parses `--as-of`: see [`parse_time`].
    pub fn parse_as_of(text: &str) -> Result<Point> {
        parse_time(text).map(Point::AsOf)
    }
}

/// Parses a time given by a person: RFC 3339 (`2026-11-25T10:00:00Z`) or milliseconds since
/// the epoch.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    text.trim()
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| {
            Error::InvalidPoint(format!(
                "a time must be RFC 3339 such as 2026-11-25T10:00:00Z, or milliseconds since the epoch, got {text:?}"
            ))
        })
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Point::Latest => write!(f, "now"),
            Point::BeforeDeletion => write!(f, "just before the deletion"),
            Point::AsOf(t) => write!(
                f,
                "as of {}",
                t.to_rfc3339_opts(SecondsFormat::Millis, true)
            ),
            Point::Version(facet, v) => write!(f, "{facet} version {v}"),
        }
    }
}

/// Every facet's record at a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateAt<'a> {
    /// The point, as asked.
    pub point: Point,
    /// How many of the cluster's records are at or before the point.
    pub records: usize,
    /// Facet → its last record at or before the point.
    pub facets: BTreeMap<Facet, &'a HistoryEntry>,
}

impl StateAt<'_> {
    /// Whether the logical facet at this point says the cluster is deleted.
    pub fn is_deleted(&self) -> bool {
        matches!(
            self.facets.get(&Facet::Logical).map(|e| &e.record.state),
            Some(FacetState::Logical(l)) if l.deleted
        )
    }
}

/// One cluster's records in commit order.
#[derive(Debug, Clone)]
pub struct ClusterHistory {
    cluster_id: String,
    entries: Vec<HistoryEntry>,
}

impl ClusterHistory {
    /// The history of `cluster_id` from its records in commit (partition) order; records
    /// of other clusters are left out.
    pub fn new(cluster_id: &str, entries: Vec<HistoryEntry>) -> Self {
        let entries = entries
            .into_iter()
            .filter(|e| e.record.meta.cluster_id == cluster_id)
            .collect();
        ClusterHistory {
            cluster_id: cluster_id.to_owned(),
            entries,
        }
    }

    /// The cluster.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Every record, oldest first.
    pub fn entries(&self) -> &[HistoryEntry] {
        &self.entries
    }

    /// Whether nothing is known about the cluster.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first logical record (the creation), if any.
    pub fn created(&self) -> Option<&HistoryEntry> {
        self.entries
            .iter()
            .find(|e| e.record.facet() == Facet::Logical)
    }

    /// The timeline: every record with the field-level diff from the previous version of
    /// its facet, oldest first.
    pub fn timeline(&self) -> Vec<TimelineEntry> {
        let mut last: BTreeMap<Facet, serde_json::Value> = BTreeMap::new();
        self.entries
            .iter()
            .map(|e| {
                let m = &e.record.meta;
                let facet = e.record.facet();
                let state = e.record.state.to_json();
                let diff = field_diff(last.get(&facet), &state);
                last.insert(facet, state);
                TimelineEntry {
                    ts: m.ts,
                    facet,
                    version: m.version,
                    writer: m.writer.clone(),
                    request_id: m.request_id.clone(),
                    reason: m.reason.clone(),
                    diff,
                    hash: m.hash.clone(),
                    partition: e.partition,
                    offset: e.offset,
                }
            })
            .collect()
    }

    /// Checks every hash chain of the cluster.
    pub fn verify(&self) -> ChainReport {
        let mut v = ChainVerifier::new();
        for e in &self.entries {
            v.check(&e.record, e.partition, e.offset);
        }
        v.report()
    }

    /// How many records are at or before `point`; errors say why a point does not exist
    /// (unknown version, a time before the creation, no deletion to recover from).
    fn position(&self, point: Point) -> Result<usize> {
        if self.entries.is_empty() {
            return Err(Error::NotFound(self.cluster_id.clone()));
        }
        match point {
            Point::Latest => Ok(self.entries.len()),
            Point::AsOf(t) => {
                let n = self
                    .entries
                    .iter()
                    .rposition(|e| e.record.meta.ts <= t)
                    .map_or(0, |i| i + 1);
                let created = self.created().map(|c| c.record.meta.ts);
                if created.is_none_or(|c| c > t) {
                    return Err(Error::InvalidPoint(format!(
                        "cluster {} did not exist at {}: it was created at {}",
                        self.cluster_id,
                        t.to_rfc3339_opts(SecondsFormat::Millis, true),
                        created.map_or("an unknown time".into(), |c| c
                            .to_rfc3339_opts(SecondsFormat::Millis, true))
                    )));
                }
                Ok(n)
            }
            Point::Version(facet, v) => self
                .entries
                .iter()
                .position(|e| e.record.facet() == facet && e.record.meta.version == v)
                .map(|i| i + 1)
                .ok_or_else(|| {
                    let latest = self
                        .entries
                        .iter()
                        .filter(|e| e.record.facet() == facet)
                        .map(|e| e.record.meta.version)
                        .max();
                    Error::InvalidPoint(match latest {
                        Some(l) => format!(
                            "{}/{facet} has no version {v}: its versions are 1 to {l}",
                            self.cluster_id
                        ),
                        None => format!("{}/{facet} has no records", self.cluster_id),
                    })
                }),
            Point::BeforeDeletion => {
                let deleted = |e: &HistoryEntry| matches!(&e.record.state, FacetState::Logical(l) if l.deleted);
                // The latest logical record that turned the cluster deleted.
                let mut before_deleted = false;
                let mut found = None;
                for (i, e) in self.entries.iter().enumerate() {
                    if e.record.facet() != Facet::Logical {
                        continue;
                    }
                    let d = deleted(e);
                    if d && !before_deleted {
                        found = Some(i);
                    }
                    before_deleted = d;
                }
                found.ok_or_else(|| {
                    Error::InvalidPoint(format!(
                        "cluster {} was never deleted: name a point with as-of or version",
                        self.cluster_id
                    ))
                })
            }
        }
    }

    /// Every facet's record at `point`.
    pub fn state_at(&self, point: Point) -> Result<StateAt<'_>> {
        let n = self.position(point)?;
        let mut facets = BTreeMap::new();
        for e in &self.entries[..n] {
            facets.insert(e.record.facet(), e);
        }
        Ok(StateAt {
            point,
            records: n,
            facets,
        })
    }

    /// The plan to restore every desired facet to its state at `point` (default: just
    /// before the deletion). Refused with [`Error::NotDeleted`] when the cluster is not
    /// deleted now, [`Error::InvalidPoint`] when it did not exist or was deleted at the
    /// point, and [`Error::BrokenChain`] when its history fails verification, unless
    /// `force`.
    pub fn plan_recovery(&self, point: Point, force: bool) -> Result<RecoveryPlan> {
        let now = self.state_at(Point::Latest)?;
        let current_logical = now
            .facets
            .get(&Facet::Logical)
            .ok_or_else(|| Error::NotFound(self.cluster_id.clone()))?;
        if !now.is_deleted() {
            return Err(Error::NotDeleted {
                cluster_id: self.cluster_id.clone(),
                version: current_logical.record.meta.version,
            });
        }
        let report = self.verify();
        if let (Some(first), false) = (report.broken.first(), force) {
            return Err(Error::BrokenChain(format!(
                "the history of {} fails verification at {first}; recovering from it would restore states that cannot be trusted (use force to recover anyway)",
                self.cluster_id
            )));
        }
        let at = self.state_at(point)?;
        if at.is_deleted() {
            let since = at.facets.get(&Facet::Logical).map(|e| &e.record.meta);
            return Err(Error::InvalidPoint(format!(
                "cluster {} was deleted at {point} (since logical version {} at {}): choose a point before the deletion",
                self.cluster_id,
                since.map_or(0, |m| m.version),
                since.map_or(String::new(), |m| m
                    .ts
                    .to_rfc3339_opts(SecondsFormat::Millis, true)),
            )));
        }
        let mut facets = Vec::new();
        // Logical last: the cluster comes back only once its other desired facets are in
        // place.
        for facet in [Facet::Physical, Facet::Capacity, Facet::Logical] {
            debug_assert_eq!(facet.side(), Side::Desired);
            let Some(source) = at.facets.get(&facet) else {
                continue;
            };
            let current = now.facets.get(&facet);
            facets.push(FacetRestore {
                facet,
                source_version: source.record.meta.version,
                source_ts: source.record.meta.ts,
                current_version: current.map_or(0, |c| c.record.meta.version),
                unchanged: current.is_some_and(|c| c.record.state == source.record.state),
                state: source.record.state.clone(),
                current: current.map(|c| c.record.state.clone()),
            });
        }
        let sources: Vec<String> = facets
            .iter()
            .map(|f| format!("{} v{}", f.facet, f.source_version))
            .collect();
        let reason = format!(
            "recovery of {} to {point}: restores {}",
            self.cluster_id,
            sources.join(", ")
        );
        Ok(RecoveryPlan {
            cluster_id: self.cluster_id.clone(),
            point: point.to_string(),
            reason,
            chain: report,
            facets,
        })
    }
}

/// One change in a cluster's timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// When it was accepted.
    pub ts: DateTime<Utc>,
    /// Facet.
    pub facet: Facet,
    /// Version.
    pub version: i64,
    /// Principal that wrote it.
    pub writer: String,
    /// Idempotency key.
    pub request_id: String,
    /// Why.
    pub reason: Option<String>,
    /// `{"field": {"from": old, "to": new}}` against the facet's previous version.
    pub diff: serde_json::Value,
    /// The record's hash.
    pub hash: String,
    /// History partition.
    pub partition: i32,
    /// History offset.
    pub offset: i64,
}

/// What a recovery restores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryPlan {
    /// Cluster.
    pub cluster_id: String,
    /// The point restored, in words.
    pub point: String,
    /// The reason recorded with every restored record; names the source versions.
    pub reason: String,
    /// The verification of the cluster's history.
    pub chain: ChainReport,
    /// Every desired facet that existed at the point, in the order they are written.
    pub facets: Vec<FacetRestore>,
}

/// One desired facet of a recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FacetRestore {
    /// Facet.
    pub facet: Facet,
    /// The version whose state is restored.
    pub source_version: i64,
    /// Its time.
    pub source_ts: DateTime<Utc>,
    /// The facet's version now (the restore is appended with this as If-Match).
    pub current_version: i64,
    /// Whether the state now already equals the restored one (nothing is written).
    pub unchanged: bool,
    /// The state restored.
    #[serde(skip)]
    pub state: FacetState,
    /// The state now.
    #[serde(skip)]
    pub current: Option<FacetState>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash_chain::record_hash;
    use chrono::TimeZone;
    use fleetledger_schemas::{LogicalState, PhysicalState, RecordMeta};

    fn logical(cku: i32, deleted: bool) -> FacetState {
        FacetState::Logical(std::sync::Arc::new(LogicalState {
            org_id: "org-1".into(),
            env_id: "env-1".into(),
            kind: "kafka".into(),
            name: "n".into(),
            sku: "standard".into(),
            cku,
            cloud: "aws".into(),
            region: "us-east-1".into(),
            network: "public".into(),
            config: BTreeMap::new(),
            deleted,
        }))
    }

    fn physical(brokers: i32) -> FacetState {
        FacetState::Physical(std::sync::Arc::new(PhysicalState {
            brokers,
            disk_gb_per_broker: 100,
            zones: vec!["a".into()],
            version: "3.9".into(),
        }))
    }

    /// Builds a valid history from (minute, state) pairs.
    fn history(steps: &[(i64, FacetState)]) -> ClusterHistory {
        let mut last: BTreeMap<Facet, (i64, String)> = BTreeMap::new();
        let mut entries = Vec::new();
        for (i, (minute, state)) in steps.iter().enumerate() {
            let (v, prev) = last
                .get(&state.facet())
                .cloned()
                .unwrap_or((0, String::new()));
            let mut meta = RecordMeta {
                cluster_id: "lkc-1".into(),
                version: v + 1,
                writer: "w".into(),
                request_id: format!("r{i}"),
                reason: None,
                ts: Utc.timestamp_millis_opt(minute * 60_000).unwrap(),
                prev_hash: prev,
                hash: String::new(),
            };
            meta.hash = record_hash(&meta, state);
            last.insert(state.facet(), (meta.version, meta.hash.clone()));
            entries.push(HistoryEntry {
                record: StateRecord {
                    meta,
                    state: state.clone(),
                },
                partition: 0,
                offset: i as i64,
            });
        }
        ClusterHistory::new("lkc-1", entries)
    }

    fn sample() -> ClusterHistory {
        history(&[
            (10, logical(2, false)),
            (11, physical(3)),
            (20, logical(4, false)),
            (21, physical(6)),
            (30, logical(4, true)),
            (31, physical(0)),
        ])
    }

    #[test]
    fn state_at_time_and_version() {
        let h = sample();
        let at = h
            .state_at(Point::parse_as_of("1970-01-01T00:15:00Z").unwrap())
            .unwrap();
        assert_eq!(at.records, 2);
        assert_eq!(at.facets[&Facet::Logical].record.state, logical(2, false));
        assert_eq!(at.facets[&Facet::Physical].record.state, physical(3));
        let v = h.state_at(Point::parse_version("2").unwrap()).unwrap();
        assert_eq!(v.records, 3);
        assert_eq!(v.facets[&Facet::Physical].record.meta.version, 1);
        let p = h
            .state_at(Point::parse_version("physical:2").unwrap())
            .unwrap();
        assert_eq!(p.facets[&Facet::Physical].record.state, physical(6));
        let err = h
            .state_at(Point::parse_as_of("599999").unwrap())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("created at 1970-01-01T00:10:00.000Z"),
            "{err}"
        );
        let err = h.state_at(Point::Version(Facet::Logical, 9)).unwrap_err();
        assert!(err.to_string().contains("versions are 1 to 3"), "{err}");
        assert!(Point::parse_version("0").is_err());
        assert!(Point::parse_version("nope:1").is_err());
        assert!(Point::parse_as_of("yesterday").is_err());
    }

    #[test]
    fn timeline_diffs_each_facet_against_its_previous_version() {
        let t = sample().timeline();
        assert_eq!(t.len(), 6);
        assert_eq!(t[2].diff, serde_json::json!({"cku": {"from": 2, "to": 4}}));
        assert_eq!(
            t[3].diff,
            serde_json::json!({"brokers": {"from": 3, "to": 6}})
        );
        assert_eq!(
            t[4].diff,
            serde_json::json!({"deleted": {"from": false, "to": true}})
        );
    }

    #[test]
    fn recovery_restores_the_state_before_deletion() {
        let h = sample();
        let plan = h.plan_recovery(Point::BeforeDeletion, false).unwrap();
        let restored: Vec<_> = plan
            .facets
            .iter()
            .map(|f| (f.facet, f.source_version, f.current_version))
            .collect();
        assert_eq!(
            restored,
            vec![(Facet::Physical, 2, 3), (Facet::Logical, 2, 3)]
        );
        assert_eq!(plan.facets[1].state, logical(4, false));
        assert_eq!(plan.facets[0].state, physical(6));
        assert!(
            plan.reason.contains("physical v2, logical v2"),
            "{}",
            plan.reason
        );

        let earlier = h
            .plan_recovery(
                Point::AsOf(Utc.timestamp_millis_opt(15 * 60_000).unwrap()),
                false,
            )
            .unwrap();
        assert_eq!(earlier.facets[1].state, logical(2, false));
        assert_eq!(earlier.facets[0].state, physical(3));

        let err = h
            .plan_recovery(
                Point::AsOf(Utc.timestamp_millis_opt(35 * 60_000).unwrap()),
                false,
            )
            .unwrap_err();
        assert!(err.to_string().contains("was deleted at"), "{err}");
    }

    #[test]
    fn recovery_refuses_live_clusters_and_broken_chains() {
        let live = history(&[(10, logical(2, false))]);
        assert!(matches!(
            live.plan_recovery(Point::BeforeDeletion, false),
            Err(Error::NotDeleted { version: 1, .. })
        ));
        let mut h = sample();
        if let FacetState::Physical(p) = &mut h.entries[3].record.state {
            std::sync::Arc::make_mut(p).brokers = 60;
        }
        let err = h.plan_recovery(Point::BeforeDeletion, false).unwrap_err();
        assert!(matches!(err, Error::BrokenChain(_)), "{err}");
        assert!(err.to_string().contains("offset 3"), "{err}");
        let forced = h.plan_recovery(Point::BeforeDeletion, true).unwrap();
        assert_eq!(forced.chain.broken.len(), 1);
    }

    #[test]
    fn recovery_after_delete_recreate_delete_uses_the_latest_deletion() {
        let h = history(&[
            (10, logical(2, false)),
            (20, logical(2, true)),
            (30, logical(8, false)),
            (40, logical(8, true)),
        ]);
        let plan = h.plan_recovery(Point::BeforeDeletion, false).unwrap();
        assert_eq!(plan.facets[0].state, logical(8, false));
        assert_eq!(plan.facets[0].source_version, 3);
    }
}
