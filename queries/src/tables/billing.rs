//! `billing_hours`: one row per cluster and UTC hour with billable CKU-hours. Closed days
//! are in the projection's Parquet segments (one per day, sorted by org and cluster, and
//! one per month once its days are merged, so filters on `hour_start`, `org_id` and
//! `cluster_id` skip files and row groups), a run of equal hours to a segment row,
//! expanded as it is read ([`super::runs`]); the hours since are computed in memory,
//! unless a filter on the time column ends before them.

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::Field;
use datafusion::logical_expr::{Expr, col, lit};
use fleetledger_projectors::Projections;
use fleetledger_projectors::billing_hours::{
    ClusterHour, DailyRow, MAX_RUN_HOURS, billing_columns, billing_schema, billing_segment_schema,
    daily_columns, daily_schema,
};
use fleetledger_projectors::segments::{Segment, SegmentDir};

use super::runs::HourRuns;
use super::{ProjectionTable, Scan, fields_of};

/// Dimension column `col` of a row with these dimensions; `None` for another column.
fn dimension<'a>(col: &str, [org, sku, cloud, region]: [&'a str; 4]) -> Option<&'a str> {
    match col {
        "org_id" => Some(org),
        "sku" => Some(sku),
        "cloud" => Some(cloud),
        "region" => Some(region),
        _ => None,
    }
}

/// The `billing_hours` table.
#[derive(Debug)]
pub(crate) struct BillingTable;

impl ProjectionTable for BillingTable {
    fn fields(&self) -> Vec<Field> {
        fields_of(&billing_schema())
    }

    fn segments(&self, p: &Projections) -> Option<(SegmentDir, Vec<Segment>)> {
        Some((
            p.billing.files.clone(),
            p.billing.hour_segments().cloned().collect(),
        ))
    }

    fn pushable(&self, column: &str) -> bool {
        ["cluster_id", "org_id", "sku", "cloud", "region"].contains(&column)
    }

    /// A segment row is a run of up to a day of one cluster's hours with one amount.
    fn hour_runs(&self) -> Option<HourRuns> {
        Some(HourRuns {
            file_schema: billing_segment_schema(),
            time: "hour_start",
            hours: "hours",
            max_hours: i64::from(MAX_RUN_HOURS),
        })
    }

    /// The files are sorted by org first: a cluster's rows are found by the org
    /// statistics of row groups (then its bloom filter), not by every row group's bloom
    /// filter. A cluster with nothing filed reads no file.
    fn implied_file_filters(&self, p: &Projections, eqs: &[(String, String)]) -> Vec<Expr> {
        eqs.iter()
            .filter(|(c, _)| c == "cluster_id")
            .filter_map(|(_, id)| p.billing.filed_orgs(id))
            .map(|orgs| match orgs {
                [] => lit(false),
                [org] => col("org_id").eq(lit(org.as_str())),
                orgs => {
                    col("org_id").in_list(orgs.iter().map(|o| lit(o.as_str())).collect(), false)
                }
            })
            .collect()
    }

    fn build(&self, p: &Projections, scan: &Scan<'_>) -> (Vec<ArrayRef>, usize) {
        // The hours in memory come at or after the flushed instant.
        if scan.all_before("hour_start", p.billing.flushed_to_ms) {
            return (
                billing_columns(std::iter::empty::<&ClusterHour>(), scan.columns),
                0,
            );
        }
        // Every pushable column is a cluster's: the filter picks clusters before any
        // of their hours is built.
        let all = p.billing.rows_where(scan.now_ms, |id, c| {
            scan.eqs.iter().all(|(col, v)| {
                let have = if col == "cluster_id" {
                    Some(id)
                } else {
                    dimension(col, [&c.org_id, &c.sku, &c.cloud, &c.region])
                };
                have.is_none_or(|h| h == v)
            })
        });
        let rows = &all[..all.len().min(scan.take)];
        (billing_columns(rows.iter(), scan.columns), rows.len())
    }
}

/// The `billing_daily` table: CKU-hours per UTC day, org, sku, cloud and region. The
/// flushed days are in the projection's monthly segments; the days since are summed from
/// the hours in memory (`open` while the day holds the open hour).
#[derive(Debug)]
pub(crate) struct DailyTable;

impl ProjectionTable for DailyTable {
    fn fields(&self) -> Vec<Field> {
        fields_of(&daily_schema())
    }

    fn pushable(&self, column: &str) -> bool {
        ["org_id", "sku", "cloud", "region"].contains(&column)
    }

    fn build(&self, p: &Projections, scan: &Scan<'_>) -> (Vec<ArrayRef>, usize) {
        // The days in memory start at or after the flushed instant (a day start).
        if scan.all_before("day", p.billing.flushed_to_ms) {
            return (daily_columns(std::iter::empty(), scan.columns), 0);
        }
        let all = p.billing.daily(scan.now_ms);
        let rows: Vec<&DailyRow> = all
            .iter()
            .filter(|r| {
                scan.eqs.iter().all(|(c, v)| {
                    dimension(c, [&r.org_id, &r.sku, &r.cloud, &r.region]) == Some(v.as_str())
                })
            })
            .take(scan.take)
            .collect();
        (
            daily_columns(rows.iter().copied(), scan.columns),
            rows.len(),
        )
    }

    fn segments(&self, p: &Projections) -> Option<(SegmentDir, Vec<Segment>)> {
        Some((p.billing.files.clone(), p.billing.daily_segments.clone()))
    }
}
