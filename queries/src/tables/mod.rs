//! Projections as DataFusion tables. A scan takes one read lock on the projections (a
//! consistent snapshot): it builds the projected columns of the rows in memory, keeping
//! only rows that pass the pushed-down string equality filters (`col = 'text'`), and takes
//! the list of the projection's Parquet segments, which it scans with the projection and
//! every filter as a pruning predicate (files, row groups, pages, bloom filters). Segment
//! files never change, and one the projection has dropped is kept for a grace period, so
//! the snapshot holds while the query runs. Filters are inexact: DataFusion applies every
//! filter again.
//!
//! One seam: a table over a projection is a [`ProjectionTable`] in a file of its own, and
//! [`table_of`] names it for its [`ProjectionName`] variant (the compiler asks for the arm
//! when a variant is added).

mod audit;
mod billing;
mod clusters;
mod page_indexed;
mod runs;
mod scoped;

pub(crate) use scoped::ScopedTable;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::DFSchema;
use datafusion::common::ScalarValue;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DfResult;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;
use fleetledger_projectors::segments::{Segment, SegmentDir};
use fleetledger_projectors::{ProjectionName, Projections, ServiceView};
use tokio::sync::RwLock;

/// Milliseconds since the epoch, now (the billing table's open hour grows with it).
pub(crate) type NowMs = Arc<dyn Fn() -> i64 + Send + Sync>;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// What one scan asks of a table.
#[derive(Debug)]
pub(crate) struct Scan<'a> {
    /// The columns to build, by index into [`ProjectionTable::fields`].
    pub(crate) columns: &'a [usize],
    /// `column = 'text'` filters to apply while building rows.
    pub(crate) eqs: &'a [(String, String)],
    /// Most rows to build (a scan without filters may stop early at its limit).
    pub(crate) take: usize,
    /// Now (ms since the epoch).
    pub(crate) now_ms: i64,
    /// `column < time` (or `<=`) filters, as (column, exclusive bound in ms): a table
    /// whose rows in memory all come at or after a bound skips building them.
    pub(crate) before: &'a [(String, i64)],
}

impl Scan<'_> {
    /// Whether every row the filters let through has `column` before `ms`.
    pub(crate) fn all_before(&self, column: &str, ms: i64) -> bool {
        self.before.iter().any(|(c, b)| c == column && *b <= ms)
    }
}

/// One SQL table over the projections.
pub(crate) trait ProjectionTable: Send + Sync + std::fmt::Debug {
    /// Its columns.
    fn fields(&self) -> Vec<Field>;
    /// Whether `column = 'text'` can be applied while building rows.
    fn pushable(&self, column: &str) -> bool;
    /// The columns of the rows in memory that pass, and how many rows there are.
    fn build(&self, p: &Projections, scan: &Scan<'_>) -> (Vec<ArrayRef>, usize);
    /// The Parquet segments that hold the table's other rows, in the table's schema (none
    /// for a table held whole in memory).
    fn segments(&self, _p: &Projections) -> Option<(SegmentDir, Vec<Segment>)> {
        None
    }
    /// Filters every row of the segments that passes `eqs` also passes, which the
    /// projection knows and the query did not say (one cluster's rows lie under the orgs
    /// it was filed under): added to the files' pruning predicate only.
    fn implied_file_filters(&self, _p: &Projections, _eqs: &[(String, String)]) -> Vec<Expr> {
        Vec::new()
    }
    /// How the segments hold the rows as runs of hours, to be expanded as they are read;
    /// `None`: a segment row is a table row.
    fn hour_runs(&self) -> Option<runs::HourRuns> {
        None
    }
}

/// The table of a projection.
fn table_of(name: ProjectionName) -> Box<dyn ProjectionTable> {
    match name {
        ProjectionName::Clusters => Box::new(clusters::ClustersTable::whole()),
        ProjectionName::BillingHours => Box::new(billing::BillingTable),
        ProjectionName::AuditLog => Box::new(audit::AuditTable),
    }
}

/// What a table reads.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A projection, whole.
    Projection(ProjectionName),
    /// A per-service view of `clusters`.
    View(ServiceView),
    /// `billing_daily`, the daily rollup of `billing_hours`.
    BillingDaily,
}

/// A projection as a DataFusion table.
pub(crate) struct SnapshotTable {
    table: Box<dyn ProjectionTable>,
    schema: SchemaRef,
    projections: Arc<RwLock<Projections>>,
    now_ms: NowMs,
}

impl std::fmt::Debug for SnapshotTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotTable")
            .field("table", &self.table)
            .finish()
    }
}

impl SnapshotTable {
    pub(crate) fn new(
        source: Source,
        projections: Arc<RwLock<Projections>>,
        now_ms: NowMs,
    ) -> Self {
        let table: Box<dyn ProjectionTable> = match source {
            Source::Projection(name) => table_of(name),
            Source::View(v) => Box::new(clusters::ClustersTable::view(v)),
            Source::BillingDaily => Box::new(billing::DailyTable),
        };
        SnapshotTable {
            schema: Arc::new(Schema::new(table.fields())),
            table,
            projections,
            now_ms,
        }
    }

    /// A filter the scan takes (inexactly: DataFusion applies every filter again): a
    /// string equality the rows in memory are built with, or a comparison of a column with
    /// a time, which prunes files, row groups and pages by their statistics (and, for an
    /// upper bound, may spare the rows in memory).
    fn can_push(&self, e: &Expr) -> bool {
        string_eq(e).is_some_and(|(col, _)| self.table.pushable(&col)) || time_comparison(e)
    }

    async fn batch(
        &self,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<(
        RecordBatch,
        SchemaRef,
        Option<(SegmentDir, Vec<Segment>)>,
        Vec<Expr>,
    )> {
        let indices: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let schema = Arc::new(self.schema.project(&indices)?);
        let eqs: Vec<(String, String)> = filters.iter().filter_map(string_eq).collect();
        let before: Vec<(String, i64)> = filters.iter().filter_map(time_before).collect();
        let scan = Scan {
            columns: &indices,
            eqs: &eqs,
            before: &before,
            // Only a scan without filters may stop early at the limit.
            take: if filters.is_empty() {
                limit.unwrap_or(usize::MAX)
            } else {
                usize::MAX
            },
            now_ms: (self.now_ms)(),
        };
        let p = self.projections.read().await;
        let (arrays, n_rows) = self.table.build(&p, &scan);
        let segments = self.table.segments(&p);
        let implied = self.table.implied_file_filters(&p, &eqs);
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
        Ok((batch, schema, segments, implied))
    }

    /// A scan of `segments` with the projection, and the filters as a predicate that
    /// skips files, row groups and pages by their statistics and bloom filters.
    ///
    /// Files are read newest first (by their key, a time): a query for the latest rows
    /// (`ORDER BY ts DESC LIMIT n`) fills its top n from the first files, and its dynamic
    /// filter then skips the older files by their statistics. Their footers are read
    /// once (with their page index, for a scan with filters) and kept in the session's
    /// metadata cache (segment files never change: a rewrite is a new name).
    fn file_scan(
        &self,
        state: &dyn Session,
        file_schema: &SchemaRef,
        (dir, mut segments): (SegmentDir, Vec<Segment>),
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let runtime = state.runtime_env();
        let store_url = ObjectStoreUrl::local_filesystem();
        let readers = page_indexed::PageIndexedReaders {
            footers: CachedParquetFileReaderFactory::new(
                runtime.object_store(&store_url)?,
                runtime.cache_manager.get_file_metadata_cache(),
            ),
            page_index: !filters.is_empty(),
        };
        let mut source = ParquetSource::new(file_schema.clone())
            .with_pushdown_filters(true)
            .with_parquet_file_reader_factory(Arc::new(readers));
        segments.sort_by_key(|s| std::cmp::Reverse(s.max_key));
        if let Some(expr) = conjunction(filters.iter().cloned()) {
            let df_schema = DFSchema::try_from(file_schema.as_ref().clone())?;
            source = source.with_predicate(state.create_physical_expr(expr, &df_schema)?);
        }
        // Two groups: both cores read.
        let mut groups = vec![Vec::new(), Vec::new()];
        for (i, s) in segments.iter().enumerate() {
            let path = dir.path(s);
            groups[i % 2].push(PartitionedFile::new(path.to_string_lossy(), s.bytes));
        }
        let groups = groups
            .into_iter()
            .filter(|g| !g.is_empty())
            .map(FileGroup::new)
            .collect();
        let config = FileScanConfigBuilder::new(store_url, Arc::new(source))
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(if filters.is_empty() { limit } else { None })
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    /// [`SnapshotTable::file_scan`] of segments that hold runs of hours, expanded to the
    /// table's rows: the runs are read with the projected columns and their length, and
    /// with the filters made into filters of runs ([`runs::run_filters`]).
    fn runs_scan(
        &self,
        state: &dyn Session,
        runs: &runs::HourRuns,
        segments: (SegmentDir, Vec<Segment>),
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        // The table's columns have the same indexes in the segments; the runs' first hour
        // is read only for a projected hour.
        let time = self.schema.index_of(runs.time)?;
        let mut read = wanted.clone();
        let time_at = wanted.iter().position(|&c| c == time);
        read.push(runs.file_schema.index_of(runs.hours)?);
        let files = self.file_scan(
            state,
            &runs.file_schema,
            segments,
            Some(&read),
            &runs::run_filters(filters, runs),
            limit,
        )?;
        let schema = Arc::new(self.schema.project(&wanted)?);
        Ok(Arc::new(runs::ExpandRunsExec::new(
            files,
            schema,
            time_at,
            read.len() - 1,
        )))
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

/// A comparison of a column with a timestamp literal (either side), as `column OP v`: the
/// column, the operator with the column on its left, the value in its unit and how many of
/// that unit make a millisecond (a second's value is given in ms).
fn column_vs_time(e: &Expr) -> Option<(&str, Operator, i128, i128)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    let (col, op, lit) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => (c, *op, v),
        (Expr::Literal(v, _), Expr::Column(c)) => (c, op.swap()?, v),
        _ => return None,
    };
    let (v, per_ms) = match lit {
        ScalarValue::TimestampSecond(Some(v), _) => (i128::from(*v) * 1_000, 1),
        ScalarValue::TimestampMillisecond(Some(v), _) => (i128::from(*v), 1),
        ScalarValue::TimestampMicrosecond(Some(v), _) => (i128::from(*v), 1_000),
        ScalarValue::TimestampNanosecond(Some(v), _) => (i128::from(*v), 1_000_000),
        _ => return None,
    };
    Some((col.name.as_str(), op, v, per_ms))
}

/// A comparison (`<`, `<=`, `>`, `>=`, `=`) of a column with a timestamp literal.
fn time_comparison(e: &Expr) -> bool {
    column_vs_time(e).is_some_and(|(_, op, _, _)| {
        matches!(
            op,
            Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq | Operator::Eq
        )
    })
}

/// `column < time` or `column <= time` (either side), a timestamp literal of any unit: the
/// column and the exclusive bound in ms.
fn time_before(e: &Expr) -> Option<(String, i64)> {
    let (col, op, v, per_ms) = column_vs_time(e)?;
    // ts_ms * per_ms < v  ⇔  ts_ms < ceil(v / per_ms); ts_ms * per_ms <= v ⇔ ts_ms < floor(v / per_ms) + 1.
    let bound = match op {
        Operator::Lt => v.div_euclid(per_ms) + i128::from(v.rem_euclid(per_ms) != 0),
        Operator::LtEq => v.div_euclid(per_ms) + 1,
        _ => return None,
    };
    Some((col.to_owned(), i64::try_from(bound).ok()?))
}

/// The fields of `schema`, as [`ProjectionTable::fields`] gives them.
pub(crate) fn fields_of(schema: &SchemaRef) -> Vec<Field> {
    schema.fields().iter().map(|f| f.as_ref().clone()).collect()
}

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
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let (batch, schema, segments, implied) = self.batch(projection, filters, limit).await?;
        let memory: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None)?;
        match segments.filter(|(_, s)| !s.is_empty()) {
            None => Ok(memory),
            Some(segments) => {
                let predicate: Vec<Expr> = filters.iter().cloned().chain(implied).collect();
                let files = match self.table.hour_runs() {
                    None => self.file_scan(
                        state,
                        &self.schema,
                        segments,
                        projection,
                        &predicate,
                        limit,
                    )?,
                    Some(runs) => {
                        self.runs_scan(state, &runs, segments, projection, &predicate, limit)?
                    }
                };
                UnionExec::try_new(vec![files, memory])
            }
        }
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

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn ts(unit: &str, v: i64) -> Expr {
        let tz = Some("UTC".into());
        lit(match unit {
            "s" => ScalarValue::TimestampSecond(Some(v), tz),
            "ms" => ScalarValue::TimestampMillisecond(Some(v), tz),
            "us" => ScalarValue::TimestampMicrosecond(Some(v), tz),
            _ => ScalarValue::TimestampNanosecond(Some(v), tz),
        })
    }

    #[test]
    fn an_upper_time_bound_is_read_from_either_side_in_any_unit_and_nothing_else_is() {
        let day = || col("day");
        let cases = [
            (day().lt(ts("ms", 1_000)), Some(1_000)),
            (day().lt_eq(ts("ms", 1_000)), Some(1_001)),
            (ts("ms", 1_000).gt(day()), Some(1_000)),
            (ts("ms", 1_000).gt_eq(day()), Some(1_001)),
            (day().lt(ts("s", 2)), Some(2_000)),
            // 1.5 ms: a row at 1 ms passes `<`, one at 2 ms does not.
            (day().lt(ts("ns", 1_500_000)), Some(2)),
            (day().lt_eq(ts("ns", 1_500_000)), Some(2)),
            (day().lt(ts("ns", 2_000_000)), Some(2)),
            (day().lt(ts("us", -1_500)), Some(-1)),
            // Lower bounds, other operators and other literals say nothing.
            (day().gt_eq(ts("ms", 1_000)), None),
            (day().eq(ts("ms", 1_000)), None),
            (day().lt(lit(5i64)), None),
            (
                day().lt(lit(ScalarValue::TimestampMillisecond(None, None))),
                None,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(time_before(&e), want.map(|b| ("day".to_owned(), b)), "{e}");
        }
    }
}
