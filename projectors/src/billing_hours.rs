//! The `billing_hours` projection: [`ClusterBilling`] per cluster, with the dimensions
//! (org, sku, cloud, region) of its latest logical state.
//!
//! Every value here depends on the records' event times and versions, never on the order
//! they arrive in: the rates are step functions of `ts` (see [`crate::billing`]), and the
//! dimensions come from the highest logical version seen.

use std::collections::BTreeMap;

use fleetledger_schemas::FacetState;
use serde::{Deserialize, Serialize};

use crate::billing::{ClusterBilling, Rate};
use crate::record::HistoryRecord;

/// Billing of one cluster and its dimensions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BilledCluster {
    /// Organisation.
    pub org_id: String,
    /// SKU.
    pub sku: String,
    /// Cloud.
    pub cloud: String,
    /// Region.
    pub region: String,
    /// The logical version the dimensions come from (0 before any).
    pub logical_version: i64,
    /// The integral.
    pub billing: ClusterBilling,
}

/// One row of `billing_hours`.
#[derive(Debug, Clone, PartialEq)]
pub struct BillingRow {
    /// Start of the UTC hour, ms since the epoch.
    pub hour_start_ms: i64,
    /// Cluster.
    pub cluster_id: String,
    /// Organisation.
    pub org_id: String,
    /// SKU.
    pub sku: String,
    /// Cloud.
    pub cloud: String,
    /// Region.
    pub region: String,
    /// Billable CKU-hours in the hour.
    pub cku_hours: f64,
    /// The hour is still running.
    pub open: bool,
    /// When the hour's amount last changed (ms, the write time of the record that changed
    /// it): later than an invoice run's time if a late record re-billed the hour since.
    pub recomputed_at_ms: i64,
}

/// Cluster id → billing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingHours {
    /// Per cluster.
    pub clusters: BTreeMap<String, BilledCluster>,
}

impl BillingHours {
    /// Applies one record: logical changes the desired CKU (0 once deleted), status the
    /// actual billable CKU, each at the record's `ts`; other facets do not bill.
    pub fn apply(&mut self, h: &HistoryRecord) {
        let r = &h.record;
        if matches!(r.state, FacetState::Physical(_) | FacetState::Capacity(_)) {
            return;
        }
        let (at, version) = (r.meta.ts.timestamp_millis(), r.meta.version);
        // The id is copied only for a new cluster, not for every record.
        let c = match self.clusters.get_mut(&r.meta.cluster_id) {
            Some(c) => c,
            None => self.clusters.entry(r.meta.cluster_id.clone()).or_default(),
        };
        match &r.state {
            FacetState::Logical(l) => {
                if version >= c.logical_version {
                    c.logical_version = version;
                    c.org_id.clone_from(&l.org_id);
                    c.sku.clone_from(&l.sku);
                    c.cloud.clone_from(&l.cloud);
                    c.region.clone_from(&l.region);
                }
                let desired = if l.deleted { 0 } else { i64::from(l.cku) };
                c.billing
                    .apply(Rate::Desired, at, version, desired, h.written_at_ms);
            }
            FacetState::Status(s) => {
                let actual = i64::from(s.billable_cku());
                c.billing
                    .apply(Rate::Actual, at, version, actual, h.written_at_ms);
            }
            FacetState::Physical(_) | FacetState::Capacity(_) => {}
        }
    }

    /// Every row as of `now_ms`, by cluster then hour.
    pub fn rows(&self, now_ms: i64) -> Vec<BillingRow> {
        let mut out = Vec::new();
        for (id, c) in &self.clusters {
            for r in c.billing.rows(now_ms) {
                out.push(BillingRow {
                    hour_start_ms: r.hour_start_ms,
                    cluster_id: id.clone(),
                    org_id: c.org_id.clone(),
                    sku: c.sku.clone(),
                    cloud: c.cloud.clone(),
                    region: c.region.clone(),
                    cku_hours: r.cku_hours,
                    open: r.open,
                    recomputed_at_ms: r.recomputed_at_ms,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::DateTime;
    use fleetledger_schemas::{
        CapacityState, LogicalState, PhysicalState, RecordMeta, StateRecord, StatusState,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::billing::{HOUR_MS, hour_start};
    use crate::clusters::Clusters;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const MIN: i64 = 60_000;
    use fleetledger_schemas::PHASES;

    /// One change of a simulated cluster's life, before versions are assigned.
    #[derive(Debug, Clone)]
    enum Change {
        /// Desired CKU; `deleted` deletes, a later `false` recovers.
        Logical {
            cku: i32,
            deleted: bool,
        },
        Status {
            phase: usize,
            cku: i32,
        },
        Physical {
            brokers: i32,
        },
        Capacity,
    }

    fn state_of(c: &Change) -> FacetState {
        match c {
            Change::Logical { cku, deleted } => FacetState::Logical(Arc::new(LogicalState {
                org_id: "org-1".into(),
                env_id: "env-1".into(),
                kind: "kafka".into(),
                name: "orders".into(),
                sku: "dedicated".into(),
                cku: *cku,
                cloud: "aws".into(),
                region: format!("region-{cku}"),
                network: "public".into(),
                config: Default::default(),
                deleted: *deleted,
            })),
            Change::Status { phase, cku } => FacetState::Status(Arc::new(StatusState {
                phase: PHASES[*phase].into(),
                cku: *cku,
                brokers_ready: 3,
                observed_version: 1,
                message: None,
            })),
            Change::Physical { brokers } => FacetState::Physical(Arc::new(PhysicalState {
                brokers: *brokers,
                disk_gb_per_broker: 100,
                zones: vec!["a".into()],
                version: "4.1".into(),
            })),
            Change::Capacity => FacetState::Capacity(Arc::new(CapacityState {
                satellite: "sat-1".into(),
                k8s_cluster: "k8s-1".into(),
                node_pool: "pool-1".into(),
            })),
        }
    }

    /// A cluster's history in time order: created at `T0`, then changes of every facet
    /// (expansions, shrinks, changes of mind, deletion and recovery) at random gaps,
    /// versions counted per facet.
    fn life() -> impl Strategy<Value = Vec<HistoryRecord>> {
        let change = prop_oneof![
            (1i32..=8, proptest::bool::weighted(0.15))
                .prop_map(|(cku, deleted)| Change::Logical { cku, deleted }),
            (0usize..PHASES.len(), 0i32..=8).prop_map(|(phase, cku)| Change::Status { phase, cku }),
            (1i32..=6).prop_map(|brokers| Change::Physical { brokers }),
            Just(Change::Capacity),
        ];
        proptest::collection::vec((0i64..200, change), 1..40).prop_map(|steps| {
            let mut t = T0;
            let mut versions = BTreeMap::new();
            let first = (
                0,
                Change::Logical {
                    cku: 2,
                    deleted: false,
                },
            );
            std::iter::once(first)
                .chain(steps)
                .enumerate()
                .map(|(i, (gap, c))| {
                    t += gap * MIN;
                    let state = state_of(&c);
                    let v = versions.entry(state.facet()).or_insert(0i64);
                    *v += 1;
                    HistoryRecord {
                        record: StateRecord {
                            meta: RecordMeta {
                                cluster_id: "lkc-a".into(),
                                version: *v,
                                writer: "test".into(),
                                request_id: format!("r{i}"),
                                reason: None,
                                ts: DateTime::from_timestamp_millis(t).unwrap(),
                                prev_hash: String::new(),
                                hash: String::new(),
                            },
                            state,
                        },
                        partition: 0,
                        offset: i as i64,
                        written_at_ms: t,
                    }
                })
                .collect()
        })
    }

    /// The bill by the slow, obvious definition: minute by minute over the records in time
    /// order, in integer CKU-milliseconds.
    fn reference(life: &[HistoryRecord], now: i64) -> BTreeMap<i64, i128> {
        let mut out = BTreeMap::new();
        let (mut desired, mut actual) = (0i64, 0i64);
        let mut i = 0;
        let mut t = T0;
        while t < now {
            while i < life.len() && life[i].record.meta.ts.timestamp_millis() <= t {
                match &life[i].record.state {
                    FacetState::Logical(l) => {
                        desired = if l.deleted { 0 } else { i64::from(l.cku) }
                    }
                    FacetState::Status(s) => actual = i64::from(s.billable_cku()),
                    _ => {}
                }
                i += 1;
            }
            let rate = desired.min(actual).max(0);
            if rate > 0 {
                *out.entry(hour_start(t)).or_insert(0) += i128::from(rate) * i128::from(MIN);
            }
            t += MIN;
        }
        out
    }

    /// `life` in an arrival order chosen by `picks`: each facet's records keep their order,
    /// facets interleave arbitrarily (so back-dated records arrive after later ones), and
    /// every record is written at the time it arrives (late ones after every event).
    fn arrival(life: &[HistoryRecord], picks: &[u8]) -> Vec<HistoryRecord> {
        let mut queues: BTreeMap<String, std::collections::VecDeque<HistoryRecord>> =
            BTreeMap::new();
        for h in life {
            queues
                .entry(h.record.facet().to_string())
                .or_default()
                .push_back(h.clone());
        }
        let last = life
            .last()
            .map_or(T0, |h| h.record.meta.ts.timestamp_millis());
        let mut out = Vec::new();
        let mut k = 0;
        while queues.values().any(|q| !q.is_empty()) {
            let open: Vec<String> = queues
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(f, _)| f.clone())
                .collect();
            let pick = picks.get(k).copied().unwrap_or(0) as usize % open.len();
            k += 1;
            let mut h = queues
                .get_mut(&open[pick])
                .and_then(|q| q.pop_front())
                .unwrap();
            h.written_at_ms = last + out.len() as i64;
            h.offset = out.len() as i64;
            out.push(h);
        }
        out
    }

    fn billed(rows: &[BillingRow]) -> BTreeMap<i64, i128> {
        rows.iter()
            .filter(|r| r.cku_hours != 0.0)
            .map(|r| {
                (
                    r.hour_start_ms,
                    (r.cku_hours * HOUR_MS as f64).round() as i128,
                )
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Billing, the clusters row and the dimensions are the same for every arrival
        /// order of a cluster's records, and the bill is the reference integral.
        #[test]
        fn every_arrival_order_bills_the_reference_integral(
            life in life(),
            orders in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 48), 1..8),
        ) {
            let end = life.last().unwrap().record.meta.ts.timestamp_millis();
            let now = end + 150 * MIN;
            let want = reference(&life, now);
            let mut in_time = BillingHours::default();
            let mut clusters_in_time = Clusters::default();
            for h in &life {
                in_time.apply(h);
                clusters_in_time.apply(h);
            }
            prop_assert_eq!(&billed(&in_time.rows(now)), &want);
            for picks in &orders {
                let mut b = BillingHours::default();
                let mut c = Clusters::default();
                for h in arrival(&life, picks) {
                    b.apply(&h);
                    c.apply(&h);
                }
                let rows = b.rows(now);
                prop_assert_eq!(&billed(&rows), &want);
                for r in &rows {
                    let w = want.get(&r.hour_start_ms).copied().unwrap_or(0) as f64 / HOUR_MS as f64;
                    prop_assert!((r.cku_hours - w).abs() < 1e-9, "hour {}: {} != {}", r.hour_start_ms, r.cku_hours, w);
                }
                let a = &b.clusters["lkc-a"];
                let t = &in_time.clusters["lkc-a"];
                prop_assert_eq!((&a.region, a.logical_version), (&t.region, t.logical_version));
                prop_assert_eq!(&c, &clusters_in_time);
            }
        }
    }
}
