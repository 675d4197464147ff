//! Segments whose rows are runs of hours (`billing_hours`: a row is up to a day of one
//! cluster's consecutive hours with one amount, see
//! [`fleetledger_projectors::billing_hours::HourSpan`]), read as the hours they hold.
//!
//! The scan reads the runs with the table's filters made to hold for a run that holds a
//! matching hour ([`run_filters`]), and [`ExpandRunsExec`] makes each run its hours. The
//! table's filters are inexact, so DataFusion applies every one of them again to the
//! hours: the run filters only have to keep every run that may hold a matching hour.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Int32Array, RecordBatch, RecordBatchOptions, TimestampMillisecondArray,
    UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, Operator, col, lit};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, ReplaceChildrenOptions,
};
use fleetledger_projectors::billing::HOUR_MS;
use futures::StreamExt;

use super::column_vs_time;

/// How a table's segments hold its rows as runs of hours.
#[derive(Debug, Clone)]
pub(crate) struct HourRuns {
    /// The segments' schema: the table's columns, at the same indexes, then the run length.
    pub(crate) file_schema: SchemaRef,
    /// The hour column (a UTC millisecond timestamp): a run's first hour.
    pub(crate) time: &'static str,
    /// The run length column (Int32, hours).
    pub(crate) hours: &'static str,
    /// The longest run, in hours.
    pub(crate) max_hours: i64,
}

/// The filters of a scan of the hours, made into filters of their runs: a run starts at
/// most `max_hours - 1` hours before any of its hours, so a lower bound on the hour
/// (`>`, `>=`, `=`) becomes that much lower a bound on the run's first hour, and an upper
/// bound (`<`, `<=`, and the upper half of `=`) holds for the first hour as it is. Every
/// other filter is on a column a run's hours share, and holds as it is.
pub(crate) fn run_filters(filters: &[Expr], runs: &HourRuns) -> Vec<Expr> {
    let slack = (runs.max_hours - 1) * HOUR_MS;
    let mut out = Vec::new();
    for f in filters {
        let Some((column, op, v, per_ms)) = column_vs_time(f).filter(|(c, ..)| *c == runs.time)
        else {
            out.push(f.clone());
            continue;
        };
        // Every hour the filter lets through is at or after `floor(v / per_ms)` ms.
        let at_least = || {
            let ms = i64::try_from(v.div_euclid(per_ms)).unwrap_or(i64::MIN);
            col(column).gt_eq(lit(ScalarValue::TimestampMillisecond(
                Some(ms.saturating_sub(slack)),
                Some("UTC".into()),
            )))
        };
        match op {
            Operator::Gt | Operator::GtEq => out.push(at_least()),
            Operator::Eq => {
                out.push(at_least());
                // The first hour is at or before the hour asked for.
                out.push(Expr::BinaryExpr(datafusion::logical_expr::BinaryExpr {
                    left: Box::new(col(column)),
                    op: Operator::LtEq,
                    right: Box::new(time_literal(f)),
                }));
            }
            _ => out.push(f.clone()),
        }
    }
    out
}

/// The literal side of a comparison [`column_vs_time`] accepted.
fn time_literal(e: &Expr) -> Expr {
    match e {
        Expr::BinaryExpr(b) if matches!(b.right.as_ref(), Expr::Literal(..)) => {
            b.right.as_ref().clone()
        }
        Expr::BinaryExpr(b) => b.left.as_ref().clone(),
        other => other.clone(),
    }
}

/// Makes each run its hours: a run of `n` hours from hour `h` becomes `n` rows, at `h`,
/// `h + 1 h`, …, the other columns repeated. Its input reads the runs' columns the
/// output needs and the run length.
#[derive(Debug, Clone)]
pub(crate) struct ExpandRunsExec {
    input: Arc<dyn ExecutionPlan>,
    /// The output: the table's projected columns.
    schema: SchemaRef,
    /// The column of the hour, in the output and of the run's first hour in the input,
    /// if the hour is projected (else the runs are read without it).
    time: Option<usize>,
    /// The input column of the run length.
    hours: usize,
    properties: Arc<PlanProperties>,
}

impl ExpandRunsExec {
    /// Expands `input`'s runs into rows of `schema`: output column `j` is input column
    /// `j`, except the hour (column `time`, if projected), made from the run's first hour
    /// (input column `time`) and its length (input column `hours`, after the others).
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        schema: SchemaRef,
        time: Option<usize>,
        hours: usize,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            input.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        ExpandRunsExec {
            input,
            schema,
            time,
            hours,
            properties,
        }
    }

    /// The hours of `runs`.
    fn expand(&self, runs: &RecordBatch) -> DfResult<RecordBatch> {
        let err = |what: &str| DataFusionError::Execution(format!("billing segment: {what}"));
        let hours = runs
            .column(self.hours)
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| err("the run length is not Int32"))?;
        let first = match self.time {
            Some(at) => Some(
                runs.column(at)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .ok_or_else(|| err("the hour is not a millisecond timestamp"))?,
            ),
            None => None,
        };
        let total: usize = hours.values().iter().map(|&n| n.max(0) as usize).sum();
        let mut index = Vec::with_capacity(total);
        let mut at = Vec::with_capacity(if first.is_some() { total } else { 0 });
        for (k, &n) in hours.values().iter().enumerate() {
            for h in 0..i64::from(n.max(0)) {
                index.push(k as u32);
                if let Some(first) = first {
                    at.push(first.value(k) + h * HOUR_MS);
                }
            }
        }
        let index = UInt32Array::from(index);
        let width = self.schema.fields().len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(width);
        let mut at = Some(at);
        for j in 0..width {
            match (self.time, first) {
                (Some(out), Some(first)) if out == j => {
                    let hours = TimestampMillisecondArray::from(at.take().unwrap_or_default())
                        .with_timezone_opt(first.timezone());
                    columns.push(Arc::new(hours));
                }
                _ => columns.push(take(runs.column(j).as_ref(), &index, None)?),
            }
        }
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(total)),
        )?)
    }
}

impl DisplayAs for ExpandRunsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "ExpandRunsExec")
    }
}

impl ExecutionPlan for ExpandRunsExec {
    fn name(&self) -> &str {
        "ExpandRunsExec"
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!(
                "ExpandRunsExec has one child, not {}",
                children.len()
            )));
        }
        let me = &*self;
        Ok(Arc::new(ExpandRunsExec::new(
            children.swap_remove(0),
            me.schema.clone(),
            me.time,
            me.hours,
        )))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let runs = self.input.execute(partition, context)?;
        let me = self.clone();
        let hours = runs.map(move |b| b.and_then(|b| me.expand(&b)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            hours,
        )))
    }
}
