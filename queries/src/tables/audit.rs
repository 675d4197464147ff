//! `audit_log`: one row per accepted record. Most rows are in the projection's Parquet
//! segments (each sorted by cluster, so a filter on `cluster_id` reads a few row groups);
//! the rows applied since the last checkpoint are in memory. Without `ORDER BY` the order
//! of the rows is not defined; `ORDER BY partition, "offset"` is the order of history.

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::Field;
use fleetledger_projectors::segments::{Segment, SegmentDir};
use fleetledger_projectors::{AuditRow, Projections, audit_columns, audit_schema};

use super::{ProjectionTable, Scan, fields_of};

fn audit_str<'a>(r: &'a AuditRow, col: &str) -> Option<&'a str> {
    Some(match col {
        "cluster_id" => &r.cluster_id,
        "facet" => r.facet.as_str(),
        "writer" => &r.writer,
        "request_id" => &r.request_id,
        "hash" => &r.hash,
        _ => return None,
    })
}

/// The `audit_log` table.
#[derive(Debug)]
pub(crate) struct AuditTable;

impl ProjectionTable for AuditTable {
    fn fields(&self) -> Vec<Field> {
        fields_of(&audit_schema())
    }

    fn pushable(&self, column: &str) -> bool {
        ["cluster_id", "facet", "writer", "request_id", "hash"].contains(&column)
    }

    fn build(&self, p: &Projections, scan: &Scan<'_>) -> (Vec<ArrayRef>, usize) {
        let rows: Vec<&AuditRow> = p
            .audit
            .memory_rows()
            .filter(|r| {
                scan.eqs
                    .iter()
                    .all(|(c, v)| audit_str(r, c) == Some(v.as_str()))
            })
            .take(scan.take)
            .collect();
        (
            audit_columns(rows.iter().copied(), scan.columns),
            rows.len(),
        )
    }

    fn segments(&self, p: &Projections) -> Option<(SegmentDir, Vec<Segment>)> {
        Some((p.audit.files.clone(), p.audit.segments.clone()))
    }
}
