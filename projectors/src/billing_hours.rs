//! The `billing_hours` projection: [`ClusterBilling`] per cluster, with the dimensions
//! (org, sku, cloud, region) of its latest logical state.

use std::collections::BTreeMap;

use fleetledger_schemas::FacetState;
use serde::{Deserialize, Serialize};

use crate::billing::ClusterBilling;
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
}

/// Cluster id → billing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingHours {
    /// Per cluster.
    pub clusters: BTreeMap<String, BilledCluster>,
}

impl BillingHours {
    /// Applies one record: logical changes the desired CKU (0 once deleted), status the
    /// actual billable CKU; other facets do not bill.
    pub fn apply(&mut self, h: &HistoryRecord) {
        let r = &h.record;
        let at = r.meta.ts.timestamp_millis();
        if matches!(r.state, FacetState::Physical(_) | FacetState::Capacity(_)) {
            return;
        }
        // The id is copied only for a new cluster, not for every record.
        let c = match self.clusters.get_mut(&r.meta.cluster_id) {
            Some(c) => c,
            None => self.clusters.entry(r.meta.cluster_id.clone()).or_default(),
        };
        match &r.state {
            FacetState::Logical(l) => {
                c.org_id.clone_from(&l.org_id);
                c.sku.clone_from(&l.sku);
                c.cloud.clone_from(&l.cloud);
                c.region.clone_from(&l.region);
                let desired = if l.deleted { 0 } else { i64::from(l.cku) };
                c.billing.set_desired(at, desired);
            }
            FacetState::Status(s) => {
                c.billing.set_actual(at, i64::from(s.billable_cku()));
            }
            FacetState::Physical(_) | FacetState::Capacity(_) => {}
        }
    }

    /// Every row as of `now_ms`, by cluster then hour.
    pub fn rows(&self, now_ms: i64) -> Vec<BillingRow> {
        let mut out = Vec::new();
        for (id, c) in &self.clusters {
            for (h, v, open) in c.billing.rows(now_ms) {
                out.push(BillingRow {
                    hour_start_ms: h,
                    cluster_id: id.clone(),
                    org_id: c.org_id.clone(),
                    sku: c.sku.clone(),
                    cloud: c.cloud.clone(),
                    region: c.region.clone(),
                    cku_hours: v,
                    open,
                });
            }
        }
        out
    }
}
