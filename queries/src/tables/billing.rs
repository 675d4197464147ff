//! `billing_hours`: one row per cluster and UTC hour with billable CKU-hours. Closed days
//! are in the projection's Parquet segments (one per day, sorted by org and cluster, so
//! filters on `hour_start`, `org_id` and `cluster_id` skip files and row groups); the
//! hours since are computed in memory.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field};

use fleetledger_projectors::billing_hours::{DailyRow, billing_schema, daily_batch, daily_schema};
use fleetledger_projectors::segments::{Segment, SegmentDir};
use fleetledger_projectors::{BillingRow, Projections};

use super::{AppendIter, FieldSpec, ProjectionTable, Scan, ts_type};

const FIELDS: [FieldSpec; 9] = [
    ("hour_start", ts_type),
    ("cluster_id", || DataType::Utf8),
    ("org_id", || DataType::Utf8),
    ("sku", || DataType::Utf8),
    ("cloud", || DataType::Utf8),
    ("region", || DataType::Utf8),
    ("cku_hours", || DataType::Float64),
    ("open", || DataType::Boolean),
    ("recomputed_at", ts_type),
];

fn billing_str<'a>(r: &'a BillingRow, col: &str) -> Option<&'a str> {
    Some(match col {
        "cluster_id" => &r.cluster_id,
        "org_id" => &r.org_id,
        "sku" => &r.sku,
        "cloud" => &r.cloud,
        "region" => &r.region,
        _ => return None,
    })
}

/// The `billing_hours` table.
#[derive(Debug)]
pub(crate) struct BillingTable;

impl ProjectionTable for BillingTable {
    fn fields(&self) -> Vec<Field> {
        billing_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect()
    }

    fn segments(&self, p: &Projections) -> Option<(SegmentDir, Vec<Segment>)> {
        Some((p.billing.files.clone(), p.billing.segments.clone()))
    }

    fn pushable(&self, column: &str) -> bool {
        ["cluster_id", "org_id", "sku", "cloud", "region"].contains(&column)
    }

    fn build(&self, p: &Projections, scan: &Scan<'_>) -> (Vec<ArrayRef>, usize) {
        // Every pushable column is a cluster's: the filter picks clusters before any
        // of their hours is built.
        let all = p.billing.rows_where(scan.now_ms, |id, c| {
            scan.eqs.iter().all(|(col, v)| {
                let have = match col.as_str() {
                    "cluster_id" => id,
                    "org_id" => &c.org_id,
                    "sku" => &c.sku,
                    "cloud" => &c.cloud,
                    "region" => &c.region,
                    _ => return true,
                };
                have == v
            })
        });
        let rows: Vec<&BillingRow> = all.iter().take(scan.take).collect();
        let indices = scan.columns;
        let arrays = indices
            .iter()
            .map(|i| -> ArrayRef {
                match FIELDS[*i].0 {
                    "hour_start" => Arc::new(
                        TimestampMillisecondBuilder::new()
                            .with_timezone("UTC")
                            .append_values_iter(rows.iter().map(|r| r.hour_start_ms)),
                    ),
                    "cku_hours" => Arc::new(
                        Float64Builder::new().append_values_iter(rows.iter().map(|r| r.cku_hours)),
                    ),
                    "open" => Arc::new(
                        BooleanBuilder::new().append_values_iter(rows.iter().map(|r| r.open)),
                    ),
                    "recomputed_at" => Arc::new(
                        TimestampMillisecondBuilder::new()
                            .with_timezone("UTC")
                            .append_values_iter(rows.iter().map(|r| r.recomputed_at_ms)),
                    ),
                    name => {
                        let mut b = StringBuilder::new();
                        for r in &rows {
                            b.append_value(billing_str(r, name).unwrap_or(""));
                        }
                        Arc::new(b.finish())
                    }
                }
            })
            .collect();
        (arrays, rows.len())
    }
}

fn daily_str<'a>(r: &'a DailyRow, col: &str) -> Option<&'a str> {
    Some(match col {
        "org_id" => &r.org_id,
        "sku" => &r.sku,
        "cloud" => &r.cloud,
        "region" => &r.region,
        _ => return None,
    })
}

/// The `billing_daily` table: CKU-hours per UTC day, org, sku, cloud and region. The
/// flushed days are in the projection's monthly segments; the days since are summed from
/// the hours in memory (`open` while the day holds the open hour).
#[derive(Debug)]
pub(crate) struct DailyTable;

impl ProjectionTable for DailyTable {
    fn fields(&self) -> Vec<Field> {
        daily_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect()
    }

    fn pushable(&self, column: &str) -> bool {
        ["org_id", "sku", "cloud", "region"].contains(&column)
    }

    fn build(&self, p: &Projections, scan: &Scan<'_>) -> (Vec<ArrayRef>, usize) {
        let all = p.billing.daily(scan.now_ms);
        let rows: Vec<&DailyRow> = all
            .iter()
            .filter(|r| {
                scan.eqs
                    .iter()
                    .all(|(c, v)| daily_str(r, c) == Some(v.as_str()))
            })
            .take(scan.take)
            .collect();
        let batch = daily_batch(rows.iter().copied());
        let arrays = scan
            .columns
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        (arrays, rows.len())
    }

    fn segments(&self, p: &Projections) -> Option<(SegmentDir, Vec<Segment>)> {
        Some((p.billing.files.clone(), p.billing.daily_segments.clone()))
    }
}
