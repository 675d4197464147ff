//! `clusters` and the per-service views over it: one row per cluster, columns from the
//! column catalog ([`CLUSTER_COLUMNS`]).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field};
use fleetledger_projectors::{
    CLUSTER_COLUMNS, Cell, ClusterRow, Column, ColumnType, Projections, ServiceView,
};

use super::{ProjectionTable, Scan, ts_type};

fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::Str => DataType::Utf8,
        ColumnType::Int => DataType::Int64,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Ts => ts_type(),
    }
}

/// `clusters`, or a service's view of it.
#[derive(Debug)]
pub(crate) struct ClustersTable {
    columns: Vec<&'static Column>,
    view: Option<ServiceView>,
}

impl ClustersTable {
    /// Every column of every cluster.
    pub(crate) fn whole() -> Self {
        ClustersTable {
            columns: CLUSTER_COLUMNS.iter().collect(),
            view: None,
        }
    }

    /// The clusters and columns `view` shows.
    pub(crate) fn view(view: ServiceView) -> Self {
        ClustersTable {
            columns: view.columns(),
            view: Some(view),
        }
    }
}

impl ProjectionTable for ClustersTable {
    fn fields(&self) -> Vec<Field> {
        self.columns
            .iter()
            .map(|c| Field::new(c.name, arrow_type(c.ty), c.name != "cluster_id"))
            .collect()
    }

    fn pushable(&self, column: &str) -> bool {
        self.columns
            .iter()
            .any(|c| c.name == column && c.ty == ColumnType::Str)
    }

    fn build(&self, p: &Projections, scan: &Scan<'_>) -> (Vec<ArrayRef>, usize) {
        let eq_cols: Vec<(&'static Column, String)> = scan
            .eqs
            .iter()
            .filter_map(|(c, v)| {
                self.columns
                    .iter()
                    .find(|k| k.name == c)
                    .map(|k| (*k, v.clone()))
            })
            .collect();
        let rows: Vec<(&String, &ClusterRow)> = p
            .clusters
            .rows
            .iter()
            .filter(|(_, r)| self.view.as_ref().is_none_or(|v| v.shows(r)))
            .filter(|(id, r)| cluster_matches(id, r, &eq_cols))
            .take(scan.take)
            .collect();
        let cols: Vec<&'static Column> = scan.columns.iter().map(|i| self.columns[*i]).collect();
        (build_cells(&cols, &rows), rows.len())
    }
}

fn cluster_matches(id: &str, row: &ClusterRow, eqs: &[(&'static Column, String)]) -> bool {
    eqs.iter()
        .all(|(c, v)| matches!((c.get)(id, row), Cell::Str(s) if s == *v))
}

fn build_cells(cols: &[&'static Column], rows: &[(&String, &ClusterRow)]) -> Vec<ArrayRef> {
    cols.iter()
        .map(|c| -> ArrayRef {
            match c.ty {
                ColumnType::Str => {
                    let mut b = StringBuilder::new();
                    for (id, r) in rows {
                        match (c.get)(id, r) {
                            Cell::Str(s) => b.append_value(s),
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
                ColumnType::Int => {
                    let mut b = Int64Builder::new();
                    for (id, r) in rows {
                        match (c.get)(id, r) {
                            Cell::Int(v) => b.append_value(v),
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
                ColumnType::Bool => {
                    let mut b = BooleanBuilder::new();
                    for (id, r) in rows {
                        match (c.get)(id, r) {
                            Cell::Bool(v) => b.append_value(v),
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
                ColumnType::Ts => {
                    let mut b = TimestampMillisecondBuilder::new().with_timezone("UTC");
                    for (id, r) in rows {
                        match (c.get)(id, r) {
                            Cell::Ts(v) => b.append_value(v),
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
            }
        })
        .collect()
}
