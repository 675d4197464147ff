//! A tenant's view of a table: only the rows of its orgs. A table with an `org_id` column
//! keeps the rows whose org is in the scope; one with only a `cluster_id` column keeps the
//! rows of the clusters whose current logical state names an org in the scope (the rule
//! the ledger applies to `GET /v1/clusters/…` and to writes); a table with neither is not
//! shown to a scoped caller at all.
//!
//! The scope's predicate goes to the table's scan with the query's filters (so it prunes
//! segment files by their statistics and bloom filters) and is then applied exactly
//! above the scan: whatever the query, joins and subqueries included, no row of another
//! org leaves the table.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column, DFSchema};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType, lit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use fleetledger_projectors::Projections;
use tokio::sync::RwLock;

use super::SnapshotTable;

/// Which column a table's rows are scoped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScopedBy {
    /// `org_id`.
    Org,
    /// `cluster_id`, through the clusters' current orgs.
    Cluster,
}

/// `inner` limited to the rows of `orgs`.
#[derive(Debug)]
pub(crate) struct ScopedTable {
    inner: Arc<SnapshotTable>,
    by: ScopedBy,
    /// Index of the scoping column in the table's schema.
    column: usize,
    orgs: Arc<BTreeSet<String>>,
    projections: Arc<RwLock<Projections>>,
}

impl ScopedTable {
    /// `inner` limited to `orgs`, or `None` when it has neither an `org_id` nor a
    /// `cluster_id` column (a scoped caller does not see it).
    pub(crate) fn new(
        inner: Arc<SnapshotTable>,
        orgs: Arc<BTreeSet<String>>,
        projections: Arc<RwLock<Projections>>,
    ) -> Option<Self> {
        let schema = inner.schema();
        let (by, column) = match (schema.index_of("org_id"), schema.index_of("cluster_id")) {
            (Ok(i), _) => (ScopedBy::Org, i),
            (Err(_), Ok(i)) => (ScopedBy::Cluster, i),
            _ => return None,
        };
        Some(ScopedTable {
            inner,
            by,
            column,
            orgs,
            projections,
        })
    }

    /// The rows the scope keeps, as an expression over the table's columns.
    async fn predicate(&self) -> Expr {
        let values: Vec<Expr> = match self.by {
            ScopedBy::Org => self.orgs.iter().map(|o| lit(o.as_str())).collect(),
            ScopedBy::Cluster => {
                let p = self.projections.read().await;
                p.clusters
                    .rows
                    .iter()
                    .filter(|(_, r)| {
                        r.logical
                            .as_ref()
                            .is_some_and(|l| self.orgs.contains(&l.state.org_id))
                    })
                    .map(|(id, _)| lit(id.as_str()))
                    .collect()
            }
        };
        if values.is_empty() {
            return lit(false);
        }
        let name = self.inner.schema().field(self.column).name().clone();
        Expr::Column(Column::from_name(name)).in_list(values, false)
    }
}

#[async_trait]
impl TableProvider for ScopedTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let predicate = self.predicate().await;
        let wanted: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..self.inner.schema().fields().len()).collect());
        // The scan reads the scoping column too, dropped again below if not asked for.
        let mut read = wanted.clone();
        if !read.contains(&self.column) {
            read.push(self.column);
        }
        let mut all = filters.to_vec();
        all.push(predicate.clone());
        // No limit into the scan: rows of other orgs are dropped after it.
        let plan = self.inner.scan(state, Some(&read), &all, None).await?;
        let schema = plan.schema();
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let exact = state.create_physical_expr(predicate, &df_schema)?;
        let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(exact, plan)?);
        if read.len() == wanted.len() {
            return Ok(filtered);
        }
        let keep: Vec<(Arc<dyn PhysicalExpr>, String)> = schema
            .fields()
            .iter()
            .enumerate()
            .take(wanted.len())
            .map(|(i, f)| {
                let c: Arc<dyn PhysicalExpr> = Arc::new(PhysicalColumn::new(f.name(), i));
                (c, f.name().clone())
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(keep, filtered)?))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
}
