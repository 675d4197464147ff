//! `audit_log`: one row per accepted record, in (partition, offset) order.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field};
use fleetledger_projectors::{AuditRow, Projections};

use super::{AppendIter, FieldSpec, ProjectionTable, Scan, ts_type};

const FIELDS: [FieldSpec; 11] = [
    ("cluster_id", || DataType::Utf8),
    ("facet", || DataType::Utf8),
    ("version", || DataType::Int64),
    ("ts", ts_type),
    ("writer", || DataType::Utf8),
    ("request_id", || DataType::Utf8),
    ("reason", || DataType::Utf8),
    ("diff", || DataType::Utf8),
    ("hash", || DataType::Utf8),
    ("partition", || DataType::Int64),
    ("offset", || DataType::Int64),
];

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
        FIELDS
            .iter()
            .map(|(n, t)| Field::new(*n, t(), *n == "reason"))
            .collect()
    }

    fn pushable(&self, column: &str) -> bool {
        ["cluster_id", "facet", "writer", "request_id", "hash"].contains(&column)
    }

    fn build(&self, p: &Projections, scan: &Scan<'_>) -> (Vec<ArrayRef>, usize) {
        let mut rows: Vec<&AuditRow> = p
            .audit
            .rows
            .iter()
            .filter(|r| {
                scan.eqs
                    .iter()
                    .all(|(c, v)| audit_str(r, c) == Some(v.as_str()))
            })
            .collect();
        rows.sort_by_key(|r| (r.partition, r.offset));
        rows.truncate(scan.take);
        let indices = scan.columns;
        let arrays = indices
            .iter()
            .map(|i| -> ArrayRef {
                match FIELDS[*i].0 {
                    "version" => Arc::new(
                        Int64Builder::new().append_values_iter(rows.iter().map(|r| r.version)),
                    ),
                    "partition" => Arc::new(
                        Int64Builder::new()
                            .append_values_iter(rows.iter().map(|r| i64::from(r.partition))),
                    ),
                    "offset" => Arc::new(
                        Int64Builder::new().append_values_iter(rows.iter().map(|r| r.offset)),
                    ),
                    "ts" => Arc::new(
                        TimestampMillisecondBuilder::new()
                            .with_timezone("UTC")
                            .append_values_iter(rows.iter().map(|r| r.ts_ms)),
                    ),
                    "reason" => {
                        let mut b = StringBuilder::new();
                        for r in &rows {
                            b.append_option(r.reason.as_deref());
                        }
                        Arc::new(b.finish())
                    }
                    "diff" => {
                        let mut b = StringBuilder::new();
                        for r in &rows {
                            b.append_value(&r.diff);
                        }
                        Arc::new(b.finish())
                    }
                    name => {
                        let mut b = StringBuilder::new();
                        for r in &rows {
                            b.append_value(audit_str(r, name).unwrap_or(""));
                        }
                        Arc::new(b.finish())
                    }
                }
            })
            .collect();
        (arrays, rows.len())
    }
}
