//! Projections as DataFusion tables. A scan takes one read lock on the projections (a
//! consistent snapshot), builds only the projected columns, and keeps only rows that pass
//! the pushed-down string equality filters (`col = 'text'`), which are inexact:
//! DataFusion applies every filter again.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;
use fleetledger_projectors::{
    AuditRow, BillingRow, CLUSTER_COLUMNS, Cell, ClusterRow, Column, ColumnType, ProjectionName,
    Projections, ServiceView,
};
use tokio::sync::RwLock;

/// Milliseconds since the epoch, now (the billing table's open hour grows with it).
pub(crate) type NowMs = Arc<dyn Fn() -> i64 + Send + Sync>;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::Str => DataType::Utf8,
        ColumnType::Int => DataType::Int64,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Ts => ts_type(),
    }
}

/// What a table reads.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A projection, whole.
    Projection(ProjectionName),
    /// A per-service view of `clusters`.
    View(ServiceView),
}

/// A projection as a table.
pub(crate) struct SnapshotTable {
    source: Source,
    columns: Vec<&'static Column>,
    schema: SchemaRef,
    projections: Arc<RwLock<Projections>>,
    now_ms: NowMs,
}

impl std::fmt::Debug for SnapshotTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotTable")
            .field("source", &self.source)
            .finish()
    }
}

/// A fixed column: its name and how to make its type.
type FieldSpec = (&'static str, fn() -> DataType);

const BILLING_FIELDS: [FieldSpec; 9] = [
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

const AUDIT_FIELDS: [FieldSpec; 11] = [
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

impl SnapshotTable {
    pub(crate) fn new(
        source: Source,
        projections: Arc<RwLock<Projections>>,
        now_ms: NowMs,
    ) -> Self {
        let (columns, fields): (Vec<&'static Column>, Vec<Field>) = match &source {
            Source::Projection(ProjectionName::Clusters) | Source::View(_) => {
                let cols: Vec<&'static Column> = match &source {
                    Source::View(v) => v.columns(),
                    _ => CLUSTER_COLUMNS.iter().collect(),
                };
                let fields = cols
                    .iter()
                    .map(|c| Field::new(c.name, arrow_type(c.ty), c.name != "cluster_id"))
                    .collect();
                (cols, fields)
            }
            Source::Projection(ProjectionName::BillingHours) => (
                vec![],
                BILLING_FIELDS
                    .iter()
                    .map(|(n, t)| Field::new(*n, t(), false))
                    .collect(),
            ),
            Source::Projection(ProjectionName::AuditLog) => (
                vec![],
                AUDIT_FIELDS
                    .iter()
                    .map(|(n, t)| Field::new(*n, t(), *n == "reason"))
                    .collect(),
            ),
        };
        SnapshotTable {
            source,
            columns,
            schema: Arc::new(Schema::new(fields)),
            projections,
            now_ms,
        }
    }
}

/// `column = 'text'` (either side), the filters we apply while building rows.
fn string_eq(e: &Expr) -> Option<(String, String)> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = e
    else {
        return None;
    };
    let pair = |a: &Expr, b: &Expr| match (a, b) {
        (Expr::Column(c), Expr::Literal(ScalarValue::Utf8(Some(v)), _)) => {
            Some((c.name.clone(), v.clone()))
        }
        _ => None,
    };
    pair(left, right).or_else(|| pair(right, left))
}

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

impl SnapshotTable {
    fn pushed(&self, filters: &[Expr]) -> Vec<(String, String)> {
        filters.iter().filter_map(string_eq).collect()
    }

    fn can_push(&self, e: &Expr) -> bool {
        let Some((col, _)) = string_eq(e) else {
            return false;
        };
        match &self.source {
            Source::Projection(ProjectionName::Clusters) | Source::View(_) => self
                .columns
                .iter()
                .any(|c| c.name == col && c.ty == ColumnType::Str),
            Source::Projection(ProjectionName::BillingHours) => {
                ["cluster_id", "org_id", "sku", "cloud", "region"].contains(&col.as_str())
            }
            Source::Projection(ProjectionName::AuditLog) => {
                ["cluster_id", "facet", "writer", "request_id", "hash"].contains(&col.as_str())
            }
        }
    }

    async fn batch(
        &self,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<(RecordBatch, SchemaRef)> {
        let indices: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let schema = Arc::new(self.schema.project(&indices)?);
        let eqs = self.pushed(filters);
        // Only a scan without filters may stop early at the limit.
        let take = if filters.is_empty() {
            limit.unwrap_or(usize::MAX)
        } else {
            usize::MAX
        };
        let p = self.projections.read().await;
        let (arrays, n_rows): (Vec<ArrayRef>, usize) = match &self.source {
            Source::Projection(ProjectionName::Clusters) | Source::View(_) => {
                let eq_cols: Vec<(&'static Column, String)> = eqs
                    .iter()
                    .filter_map(|(c, v)| {
                        self.columns
                            .iter()
                            .find(|k| k.name == c)
                            .map(|k| (*k, v.clone()))
                    })
                    .collect();
                let view = match &self.source {
                    Source::View(v) => Some(v),
                    _ => None,
                };
                let rows: Vec<(&String, &ClusterRow)> = p
                    .clusters
                    .rows
                    .iter()
                    .filter(|(_, r)| view.is_none_or(|v| v.shows(r)))
                    .filter(|(id, r)| cluster_matches(id, r, &eq_cols))
                    .take(take)
                    .collect();
                let cols: Vec<&'static Column> = indices.iter().map(|i| self.columns[*i]).collect();
                (build_cells(&cols, &rows), rows.len())
            }
            Source::Projection(ProjectionName::BillingHours) => {
                let all = p.billing.rows((self.now_ms)());
                let rows: Vec<&BillingRow> = all
                    .iter()
                    .filter(|r| {
                        eqs.iter()
                            .all(|(c, v)| billing_str(r, c) == Some(v.as_str()))
                    })
                    .take(take)
                    .collect();
                let arrays = indices
                    .iter()
                    .map(|i| -> ArrayRef {
                        match BILLING_FIELDS[*i].0 {
                            "hour_start" => Arc::new(
                                TimestampMillisecondBuilder::new()
                                    .with_timezone("UTC")
                                    .append_values_iter(rows.iter().map(|r| r.hour_start_ms)),
                            ),
                            "cku_hours" => Arc::new(
                                Float64Builder::new()
                                    .append_values_iter(rows.iter().map(|r| r.cku_hours)),
                            ),
                            "open" => Arc::new(
                                BooleanBuilder::new()
                                    .append_values_iter(rows.iter().map(|r| r.open)),
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
            Source::Projection(ProjectionName::AuditLog) => {
                let mut rows: Vec<&AuditRow> = p
                    .audit
                    .rows
                    .iter()
                    .filter(|r| eqs.iter().all(|(c, v)| audit_str(r, c) == Some(v.as_str())))
                    .collect();
                rows.sort_by_key(|r| (r.partition, r.offset));
                rows.truncate(take);
                let arrays =
                    indices
                        .iter()
                        .map(|i| -> ArrayRef {
                            match AUDIT_FIELDS[*i].0 {
                                "version" => Arc::new(
                                    Int64Builder::new()
                                        .append_values_iter(rows.iter().map(|r| r.version)),
                                ),
                                "partition" => Arc::new(Int64Builder::new().append_values_iter(
                                    rows.iter().map(|r| i64::from(r.partition)),
                                )),
                                "offset" => Arc::new(
                                    Int64Builder::new()
                                        .append_values_iter(rows.iter().map(|r| r.offset)),
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
        };
        drop(p);
        let batch = if arrays.is_empty() {
            RecordBatch::try_new_with_options(
                schema.clone(),
                arrays,
                &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(n_rows)),
            )?
        } else {
            RecordBatch::try_new(schema.clone(), arrays)?
        };
        Ok((batch, schema))
    }
}

/// Builders that take an iterator of plain values.
trait AppendIter<T> {
    fn append_values_iter(self, it: impl Iterator<Item = T>) -> datafusion::arrow::array::ArrayRef;
}

macro_rules! append_iter {
    ($builder:ty, $t:ty) => {
        impl AppendIter<$t> for $builder {
            fn append_values_iter(mut self, it: impl Iterator<Item = $t>) -> ArrayRef {
                for v in it {
                    self.append_value(v);
                }
                Arc::new(self.finish())
            }
        }
    };
}
append_iter!(Int64Builder, i64);
append_iter!(Float64Builder, f64);
append_iter!(BooleanBuilder, bool);
append_iter!(TimestampMillisecondBuilder, i64);

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let (batch, schema) = self.batch(projection, filters, limit).await?;
        let exec: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None)?;
        Ok(exec)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.can_push(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }
}
