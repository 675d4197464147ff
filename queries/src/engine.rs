//! The query engine: one long-lived `SessionContext` with every projection registered,
//! read-only statements only, a time limit and a row limit.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use fleetledger_projectors::{ProjectionName, Projections, ServiceViews};
use futures::StreamExt;
use tokio::sync::RwLock;

use crate::error::{Error, Result};
use crate::tables::{NowMs, ScopedTable, SnapshotTable, Source};
use datafusion::execution::runtime_env::RuntimeEnv;
use fleetledger_ledger::Scope;

/// Limits that end runaway queries, so that no query can starve the process that is also
/// the ledger's writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Longest a query may run; past it the query's work is dropped.
    pub timeout: Duration,
    /// Most rows an answer may have.
    pub max_rows: usize,
    /// Memory all running queries may hold together (sorts, joins, aggregations), in MiB.
    /// Nothing spills to disk: a query over it fails with [`Error::MemoryLimit`].
    pub memory_limit_mib: usize,
    /// Memory kept between queries for the projection files' footers and page indexes, in
    /// MiB (least recently used first out). A file whose metadata is not kept has it read
    /// and parsed again by each query that opens it.
    pub metadata_cache_mib: usize,
    /// Queries running at once; more wait up to `queue_wait`, then get [`Error::Busy`].
    pub max_concurrent: usize,
    /// Longest a query waits for a turn.
    pub queue_wait: Duration,
    /// Longest statement, in bytes.
    pub max_sql_bytes: usize,
    /// Deepest nesting of parentheses (expressions, subqueries) accepted.
    pub max_depth: usize,
    /// Most operators (`+`, `=`, `AND`, …) in one statement.
    pub max_operators: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: Duration::from_secs(10),
            max_rows: 100_000,
            memory_limit_mib: 512,
            metadata_cache_mib: DEFAULT_METADATA_CACHE_MIB,
            max_concurrent: 4,
            queue_wait: Duration::from_secs(2),
            max_sql_bytes: 16 * 1024,
            max_depth: 32,
            max_operators: 128,
        }
    }
}

/// An answer: its schema and rows.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    /// Column names and types.
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
    /// How many rows.
    pub rows: usize,
}

/// The default of [`QueryLimits::metadata_cache_mib`]: the metadata of a year of a
/// 10,000-cluster fleet's projection files (10M history records) takes about 50 MiB.
pub const DEFAULT_METADATA_CACHE_MIB: usize = 64;

/// Runs read-only SQL over the projections.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    /// What a scoped caller's session is made of: the same configuration, runtime
    /// (memory pool, metadata cache) and tables, each limited to the caller's orgs.
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    sources: Vec<(String, Arc<SnapshotTable>)>,
    projections: Arc<RwLock<Projections>>,
    limits: QueryLimits,
    tables: Vec<String>,
    now_ms: NowMs,
    turns: Arc<tokio::sync::Semaphore>,
    metrics: crate::metrics::QueryMetrics,
}

/// A statement planned but not run: what a PostgreSQL client's `Parse` and `Describe`
/// learn before any row is read.
#[derive(Debug, Clone)]
pub struct PreparedQuery {
    /// The types of its parameters `$1`, `$2`, … in order; `None` where the statement
    /// does not say (`SELECT $1`), so the value's own type is taken.
    pub params: Vec<Option<DataType>>,
    /// The columns of its answer.
    pub schema: SchemaRef,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("tables", &self.tables)
            .finish()
    }
}

/// The deepest nesting of parentheses in `sql` and how many operators it has (operator
/// characters, `AND` and `OR`), outside string literals, quoted identifiers and comments:
/// checked before parsing, because parsing, planning and evaluating recurse over the
/// expression tree, which a deeply nested or very long expression would take past the
/// stack.
fn shape(sql: &str) -> (usize, usize) {
    let (mut depth, mut deepest, mut operators) = (0usize, 0usize, 0usize);
    let mut word = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut prev = ' ';
                for d in chars.by_ref() {
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
            }
            '(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' => depth = depth.saturating_sub(1),
            '+' | '-' | '*' | '/' | '%' | '<' | '>' | '=' | '|' | '&' | '^' => operators += 1,
            _ => {}
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c.to_ascii_uppercase());
        } else {
            if word == "AND" || word == "OR" {
                operators += 1;
            }
            word.clear();
        }
    }
    if word == "AND" || word == "OR" {
        operators += 1;
    }
    (deepest, operators)
}

fn classify(e: DataFusionError, tables: &[String], limits: &QueryLimits) -> Error {
    match e {
        DataFusionError::SQL(e, _) if e.to_string().contains("ecursion limit") => {
            Error::TooComplex(format!(
                "the statement nests deeper than the limit of {} levels (queries.max_depth)",
                limits.max_depth
            ))
        }
        DataFusionError::SQL(e, _) => Error::Invalid(format!("syntax error: {e}")),
        DataFusionError::Plan(m) if m.contains("table") && m.contains("not found") => {
            Error::Invalid(format!("{m}; tables are {}", tables.join(", ")))
        }
        DataFusionError::Plan(m) => Error::Invalid(m),
        DataFusionError::SchemaError(e, _) => Error::Invalid(e.to_string()),
        DataFusionError::NotImplemented(m) => Error::Invalid(format!("not supported: {m}")),
        DataFusionError::Context(c, inner) => match classify(*inner, tables, limits) {
            Error::Invalid(m) => Error::Invalid(format!("{c}: {m}")),
            other => other,
        },
        DataFusionError::Diagnostic(_, inner) => classify(*inner, tables, limits),
        DataFusionError::ResourcesExhausted(_) => Error::MemoryLimit {
            limit_mib: limits.memory_limit_mib,
        },
        DataFusionError::Shared(inner) => {
            classify(DataFusionError::External(Box::new(inner)), tables, limits)
        }
        DataFusionError::External(e) if e.to_string().contains("Resources exhausted") => {
            Error::MemoryLimit {
                limit_mib: limits.memory_limit_mib,
            }
        }
        other => Error::Internal(other.to_string()),
    }
}

/// Whether `plan` has parameters (`$1`, …) to bind.
fn plan_has_params(plan: &LogicalPlan) -> bool {
    plan.get_parameter_types().is_ok_and(|t| !t.is_empty())
}

/// `plan` with its parameters replaced by `params`, each cast to the parameter's type
/// where the plan infers one; a statement given too few or too many values is invalid.
fn bind(plan: LogicalPlan, params: &[ScalarValue]) -> datafusion::error::Result<LogicalPlan> {
    let types = plan.get_parameter_types()?;
    if types.len() != params.len() {
        return Err(DataFusionError::Plan(format!(
            "the statement has {} parameters and {} values were given; give one value for each of $1 … ${}",
            types.len(),
            params.len(),
            types.len()
        )));
    }
    let values = params
        .iter()
        .enumerate()
        .map(
            |(i, v)| match types.get(&format!("${}", i + 1)).cloned().flatten() {
                Some(t) if t != v.data_type() => v.cast_to(&t).map_err(|e| {
                    DataFusionError::Plan(format!("parameter ${} is not a {t}: {e}", i + 1))
                }),
                _ => Ok(v.clone()),
            },
        )
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    plan.with_param_values(values)
}

impl QueryEngine {
    /// An engine over `projections`: tables `clusters`, `billing_hours`, `audit_log` and one
    /// per service view. `now_ms` is the time the open billing hour extends to.
    pub fn new(
        projections: Arc<RwLock<Projections>>,
        views: &ServiceViews,
        now_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
        limits: QueryLimits,
    ) -> Result<Self> {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(2);
        config.options_mut().sql_parser.recursion_limit =
            datafusion::config::ConfigNonZeroUsize::try_new(limits.max_depth.max(1))
                .map_err(|e| Error::Internal(e.to_string()))?;
        // One pool for all queries; no disk manager, so nothing spills to (or reads) local
        // files.
        // The footers and page indexes of the projection files stay cached between
        // queries, up to metadata_cache_mib.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(limits.memory_limit_mib << 20)))
            .with_metadata_cache_limit(limits.metadata_cache_mib << 20)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let ctx = SessionContext::new_with_config_rt(config.clone(), runtime.clone());
        let now: NowMs = now_ms;
        let mut sources: Vec<(String, Source)> = ProjectionName::ALL
            .into_iter()
            .map(|p| (p.to_string(), Source::Projection(p)))
            .collect();
        sources.push(("billing_daily".to_owned(), Source::BillingDaily));
        for v in &views.views {
            sources.push((v.name.clone(), Source::View(v.clone())));
        }
        let mut tables = Vec::new();
        let mut snapshots = Vec::new();
        for (name, source) in sources {
            let table = Arc::new(SnapshotTable::new(source, projections.clone(), now.clone()));
            ctx.register_table(name.as_str(), table.clone())
                .map_err(|e| Error::Internal(e.to_string()))?;
            snapshots.push((name.clone(), table));
            tables.push(name);
        }
        tables.sort();
        let described: Vec<(String, SchemaRef)> = snapshots
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    datafusion::catalog::TableProvider::schema(t.as_ref()),
                )
            })
            .collect();
        crate::pg_catalog::register(&ctx, &described)
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(QueryEngine {
            ctx,
            config,
            runtime,
            sources: snapshots,
            projections,
            turns: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
            metrics: crate::metrics::QueryMetrics::default(),
            limits,
            tables,
            now_ms: now,
        })
    }

    /// This engine counting its queries in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::QueryMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The tables.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// Runs one read-only statement over every row (an unscoped caller's query).
    pub async fn query(&self, sql: &str) -> Result<QueryOutput> {
        self.query_as(sql, &Scope::All).await
    }

    /// The session a caller of `scope` queries: the shared one, or for a caller limited to
    /// some orgs a session of its own whose every table keeps only those orgs' rows
    /// ([`ScopedTable`]); `information_schema` then lists only those tables.
    fn session_for(&self, scope: &Scope) -> Result<SessionContext> {
        let Some(orgs) = scope.orgs() else {
            return Ok(self.ctx.clone());
        };
        let orgs = Arc::new(orgs.clone());
        let ctx = SessionContext::new_with_config_rt(self.config.clone(), self.runtime.clone());
        let mut described = Vec::new();
        for (name, table) in &self.sources {
            if let Some(scoped) =
                ScopedTable::new(table.clone(), orgs.clone(), self.projections.clone())
            {
                described.push((
                    name.clone(),
                    datafusion::catalog::TableProvider::schema(&scoped),
                ));
                ctx.register_table(name.as_str(), Arc::new(scoped))
                    .map_err(|e| Error::Internal(e.to_string()))?;
            }
        }
        crate::pg_catalog::register(&ctx, &described)
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(ctx)
    }

    /// Runs one read-only statement for a caller of `scope`, seeing only its orgs' rows.
    /// Anything that would create, change or drop something, or read files, is
    /// [`Error::NotReadOnly`]; a query over the time or row limit stops with
    /// [`Error::Timeout`] or [`Error::TooManyRows`].
    pub async fn query_as(&self, sql: &str, scope: &Scope) -> Result<QueryOutput> {
        self.query_with(sql, &[], scope).await
    }

    /// [`query_as`](Self::query_as) for a statement with parameters `$1`, `$2`, …, bound
    /// to `params` in order (each cast to the type [`prepare`](Self::prepare) reported, if
    /// it differs). A statement without parameters takes `&[]`.
    pub async fn query_with(
        &self,
        sql: &str,
        params: &[ScalarValue],
        scope: &Scope,
    ) -> Result<QueryOutput> {
        let started = std::time::Instant::now();
        let answer = self.run(sql, params, scope).await;
        self.metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .queries
            .get_or_create(&crate::metrics::QueryOutcome {
                outcome: crate::metrics::query_outcome(&answer),
            })
            .inc();
        answer
    }

    /// Plans `sql` for a caller of `scope` without running it: its parameters' types and
    /// its answer's columns. Refused as [`query_as`](Self::query_as) would refuse it (too
    /// large or complex, not read-only, invalid), within the time limit.
    pub async fn prepare(&self, sql: &str, scope: &Scope) -> Result<PreparedQuery> {
        let ctx = self.session_for(scope)?;
        let planned = async {
            let (_, plan) = self.plan(&ctx, sql).await?;
            let types = plan
                .get_parameter_types()
                .map_err(|e| classify(e, &self.tables, &self.limits))?;
            let count = types
                .keys()
                .filter_map(|k| k.strip_prefix('$')?.parse::<usize>().ok())
                .max()
                .unwrap_or(0);
            let params = (1..=count)
                .map(|i| types.get(&format!("${i}")).cloned().flatten())
                .collect();
            Ok(PreparedQuery {
                params,
                schema: Arc::new(plan.schema().as_arrow().clone()),
            })
        };
        match tokio::time::timeout(self.limits.timeout, planned).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                limit_ms: self.limits.timeout.as_millis() as u64,
            }),
        }
    }

    /// The checked plan of one statement in `ctx`: within the size and shape limits, valid
    /// and read-only.
    async fn plan(&self, ctx: &SessionContext, sql: &str) -> Result<(SessionState, LogicalPlan)> {
        self.check_shape(sql)?;
        let mut state = ctx.state();
        // SQL's now() (and current_date, …) is the injected clock's time, the same
        // "now" the open billing hour extends to.
        state.execution_props_mut().query_execution_start_time =
            chrono::DateTime::from_timestamp_millis((self.now_ms)());
        let plan = state
            .create_logical_plan(&crate::pg_catalog::pg_dialect(sql))
            .await
            .map_err(|e| classify(e, &self.tables, &self.limits))?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| Error::NotReadOnly(e.to_string()))?;
        Ok((state, plan))
    }

    fn check_shape(&self, sql: &str) -> Result<()> {
        if sql.len() > self.limits.max_sql_bytes {
            return Err(Error::TooComplex(format!(
                "the statement is {} bytes, more than the limit of {} (queries.max_sql_bytes)",
                sql.len(),
                self.limits.max_sql_bytes
            )));
        }
        let (depth, operators) = shape(sql);
        if operators > self.limits.max_operators {
            return Err(Error::TooComplex(format!(
                "the statement has {operators} operators, more than the limit of {} (queries.max_operators)",
                self.limits.max_operators
            )));
        }
        if depth > self.limits.max_depth {
            return Err(Error::TooComplex(format!(
                "the statement nests {depth} levels of parentheses, deeper than the limit of {} levels (queries.max_depth)",
                self.limits.max_depth
            )));
        }
        Ok(())
    }

    async fn run(&self, sql: &str, params: &[ScalarValue], scope: &Scope) -> Result<QueryOutput> {
        let span = tracing::info_span!("sql", sql = %sql.chars().take(200).collect::<String>());
        self.check_shape(sql)?;
        let _turn = tokio::time::timeout(self.limits.queue_wait, self.turns.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(Error::Busy {
                limit: self.limits.max_concurrent,
            })?;
        let ctx = self.session_for(scope)?;
        let run = async {
            let (state, mut plan) = self.plan(&ctx, sql).await?;
            if !params.is_empty() || plan_has_params(&plan) {
                plan = bind(plan, params).map_err(|e| classify(e, &self.tables, &self.limits))?;
            }
            let df = datafusion::dataframe::DataFrame::new(state, plan);
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df
                .execute_stream()
                .await
                .map_err(|e| classify(e, &self.tables, &self.limits))?;
            let mut batches = Vec::new();
            let mut rows = 0usize;
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| classify(e, &self.tables, &self.limits))?;
                rows += b.num_rows();
                if rows > self.limits.max_rows {
                    return Err(Error::TooManyRows {
                        limit: self.limits.max_rows,
                    });
                }
                batches.push(b);
            }
            Ok(QueryOutput {
                schema,
                batches,
                rows,
            })
        };
        let run = tracing::Instrument::instrument(run, span);
        match tokio::time::timeout(self.limits.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                limit_ms: self.limits.timeout.as_millis() as u64,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use fleetledger_projectors::HistoryRecord;
    use fleetledger_schemas::{FacetState, LogicalState, RecordMeta, StateRecord, StatusState};

    fn rec(
        cluster: &str,
        version: i64,
        ts: &str,
        writer: &str,
        state: FacetState,
        offset: i64,
    ) -> HistoryRecord {
        let ts = ts.parse::<DateTime<Utc>>().unwrap();
        HistoryRecord {
            written_at_ms: ts.timestamp_millis(),
            record: StateRecord {
                meta: RecordMeta {
                    cluster_id: cluster.into(),
                    version,
                    writer: writer.into(),
                    request_id: format!("r{offset}"),
                    reason: None,
                    ts,
                    prev_hash: String::new(),
                    hash: format!("h{offset}"),
                },
                state,
            },
            partition: 0,
            offset,
        }
    }

    fn logical(cku: i32, region: &str) -> FacetState {
        FacetState::Logical(Arc::new(LogicalState {
            org_id: "org-1".into(),
            env_id: "env-1".into(),
            kind: "kafka".into(),
            name: "n".into(),
            sku: "basic".into(),
            cku,
            cloud: "aws".into(),
            region: region.into(),
            network: "public".into(),
            config: Default::default(),
            deleted: false,
        }))
    }

    /// A logical state of `cku` in us-east-1 owned by `org`.
    fn of_org(cku: i32, org: &str) -> FacetState {
        let FacetState::Logical(mut l) = logical(cku, "us-east-1") else {
            unreachable!()
        };
        Arc::make_mut(&mut l).org_id = org.into();
        FacetState::Logical(l)
    }

    fn running(cku: i32, observed: i64) -> FacetState {
        FacetState::Status(Arc::new(StatusState {
            phase: "running".into(),
            cku,
            brokers_ready: 3,
            observed_version: observed,
            message: None,
        }))
    }

    /// An engine over `p` at the clock `now` (ms), with the default limits.
    fn engine_over(p: Projections, now: i64) -> QueryEngine {
        QueryEngine::new(
            Arc::new(RwLock::new(p)),
            &ServiceViews::default(),
            Arc::new(move || now),
            QueryLimits::default(),
        )
        .unwrap()
    }

    async fn engine(max_rows: usize) -> QueryEngine {
        let mut p = Projections::default();
        let recs = [
            rec(
                "lkc-a",
                1,
                "2026-01-01T00:00:00Z",
                "frontend",
                logical(2, "us-east-1"),
                0,
            ),
            rec("lkc-a", 1, "2026-01-01T00:00:00Z", "sync", running(2, 1), 1),
            rec(
                "lkc-b",
                1,
                "2026-01-01T00:30:00Z",
                "frontend",
                logical(4, "eu-west-1"),
                2,
            ),
        ];
        for r in recs {
            p.apply(r).unwrap();
        }
        let now = "2026-01-01T02:00:00Z"
            .parse::<DateTime<Utc>>()
            .unwrap()
            .timestamp_millis();
        QueryEngine::new(
            Arc::new(RwLock::new(p)),
            &ServiceViews::default(),
            Arc::new(move || now),
            QueryLimits {
                timeout: Duration::from_secs(5),
                max_rows,
                memory_limit_mib: 32,
                max_concurrent: 2,
                queue_wait: Duration::from_millis(200),
                ..QueryLimits::default()
            },
        )
        .unwrap()
    }

    /// `billing_hours` read from files of runs of hours ([`ExpandRunsExec`]) is the hours
    /// themselves, under every filter on the hour a query can push (both sides, every
    /// operator, a bound inside a run), a projection of no column (`count(*)`) or of the
    /// hour alone, and `ORDER BY … LIMIT`: each answer equals the one computed from the
    /// projection's own rows.
    ///
    /// [`ExpandRunsExec`]: crate::tables
    #[tokio::test]
    async fn hours_read_from_runs_are_the_hours_under_every_filter() {
        /// Which hours (ms) a filter keeps.
        type HourTest = Box<dyn Fn(i64) -> bool>;
        let dir = std::env::temp_dir().join(format!("fl-sql-runs-{}", std::process::id()));
        let files = fleetledger_projectors::segments::SegmentDir::new(&dir);
        let mut p = Projections::default();
        p.billing.files = files.clone();
        let ms = |t: &str| t.parse::<DateTime<Utc>>().unwrap().timestamp_millis();
        for r in [
            rec(
                "lkc-a",
                1,
                "2026-01-01T00:00:00Z",
                "frontend",
                of_org(2, "org-1"),
                0,
            ),
            rec("lkc-a", 1, "2026-01-01T00:00:00Z", "sync", running(2, 1), 1),
            // A change within hour 10: hours 0–9, 10, and 11 on are three runs.
            rec(
                "lkc-a",
                2,
                "2026-01-01T10:30:00Z",
                "frontend",
                of_org(3, "org-1"),
                2,
            ),
            rec("lkc-a", 2, "2026-01-01T10:30:00Z", "sync", running(3, 2), 3),
            rec(
                "lkc-b",
                1,
                "2026-01-01T00:20:00Z",
                "frontend",
                of_org(4, "org-2"),
                4,
            ),
            rec("lkc-b", 1, "2026-01-01T00:20:00Z", "sync", running(4, 1), 5),
            rec(
                "lkc-c",
                1,
                "2026-01-02T13:45:00Z",
                "frontend",
                of_org(1, "org-1"),
                6,
            ),
            rec("lkc-c", 1, "2026-01-02T13:45:00Z", "sync", running(1, 1), 7),
        ] {
            p.apply(r).unwrap();
        }
        p.billing.flush(ms("2026-01-03T00:00:00Z"), true).unwrap();
        let now = ms("2026-01-03T06:30:00Z");
        let all = p.billing.all_rows(now).unwrap();
        // Two days of three clusters are 96 hours in fewer file rows.
        let filed: u64 = p.billing.hour_segments().map(|s| s.rows).sum();
        let hours_filed = all
            .iter()
            .filter(|r| r.hour_start_ms < ms("2026-01-03T00:00:00Z"));
        assert_eq!(hours_filed.count(), 24 + 24 + 24 + 24 + 11);
        assert!(filed <= 9, "{filed} file rows");
        let e = engine_over(p, now);
        let answer = |sql: String| {
            let e = &e;
            async move {
                let out = e
                    .query(&sql)
                    .await
                    .unwrap_or_else(|err| panic!("{sql}: {err}"));
                crate::to_json_rows(&out.schema, &out.batches).unwrap()["rows"].clone()
            }
        };
        let t = |h: &str| format!("TIMESTAMP '2026-01-0{h}:00Z'");
        let bounds = [
            "1T10:00", "1T10:30", "1T11:00", "2T00:00", "2T13:00", "3T02:00",
        ];
        for b in bounds {
            let at = ms(&format!("2026-01-0{b}:00Z"));
            let cases: [(String, HourTest); 10] = [
                (
                    format!("hour_start >= {}", t(b)),
                    Box::new(move |h| h >= at),
                ),
                (format!("hour_start > {}", t(b)), Box::new(move |h| h > at)),
                (format!("hour_start = {}", t(b)), Box::new(move |h| h == at)),
                (format!("hour_start < {}", t(b)), Box::new(move |h| h < at)),
                (
                    format!("hour_start <= {}", t(b)),
                    Box::new(move |h| h <= at),
                ),
                (
                    format!("{} <= hour_start", t(b)),
                    Box::new(move |h| h >= at),
                ),
                (format!("{} > hour_start", t(b)), Box::new(move |h| h < at)),
                (
                    format!("hour_start BETWEEN {} AND {}", t(b), t("2T14:00")),
                    Box::new(move |h| h >= at && h <= ms("2026-01-02T14:00:00Z")),
                ),
                (
                    format!("hour_start >= {} AND org_id = 'org-1'", t(b)),
                    Box::new(move |h| h >= at),
                ),
                (
                    format!("hour_start >= {} AND cluster_id = 'lkc-b'", t(b)),
                    Box::new(move |h| h >= at),
                ),
            ];
            for (k, (filter, keep)) in cases.iter().enumerate() {
                let want: Vec<(String, i64, f64)> = all
                    .iter()
                    .filter(|r| keep(r.hour_start_ms))
                    .filter(|r| k != 8 || r.org_id == "org-1")
                    .filter(|r| k != 9 || r.cluster_id == "lkc-b")
                    .map(|r| (r.cluster_id.clone(), r.hour_start_ms, r.cku_hours))
                    .collect();
                let rows = answer(format!(
                    "SELECT cluster_id, CAST(hour_start AS BIGINT) AS h, cku_hours FROM billing_hours \
                     WHERE {filter} ORDER BY cluster_id, h"
                ))
                .await;
                let got: Vec<(String, i64, f64)> = rows
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        let h = r["h"].as_i64().unwrap();
                        // The cast gives the hour in the column's unit, ms.
                        (
                            r["cluster_id"].as_str().unwrap().to_owned(),
                            h,
                            r["cku_hours"].as_f64().unwrap(),
                        )
                    })
                    .collect();
                assert_eq!(got, want, "{filter}");
                let n = answer(format!(
                    "SELECT count(*) AS n FROM billing_hours WHERE {filter}"
                ))
                .await;
                assert_eq!(n[0]["n"], want.len() as i64, "count(*) where {filter}");
            }
        }
        let n = answer("SELECT count(*) AS n FROM billing_hours".into()).await;
        assert_eq!(n[0]["n"], all.len() as i64);
        // A limit without a filter stops reading runs early, and still gives that many hours.
        let few = answer("SELECT cluster_id FROM billing_hours LIMIT 3".into()).await;
        assert_eq!(few.as_array().map(Vec::len), Some(3));
        let mut latest: Vec<i64> = all.iter().map(|r| r.hour_start_ms).collect();
        latest.sort_unstable_by(|a, b| b.cmp(a));
        let top = answer(
            "SELECT CAST(hour_start AS BIGINT) AS h FROM billing_hours \
             WHERE hour_start < TIMESTAMP '2026-01-03T00:00:00Z' ORDER BY hour_start DESC LIMIT 4"
                .into(),
        )
        .await;
        let top: Vec<i64> = top
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["h"].as_i64().unwrap())
            .collect();
        let filed_latest: Vec<i64> = latest
            .into_iter()
            .filter(|h| *h < ms("2026-01-03T00:00:00Z"))
            .take(4)
            .collect();
        assert_eq!(top, filed_latest);
        files.remove_all().unwrap();
    }

    /// One cluster's hours in the files are found by the orgs it was filed under (an
    /// implied filter on the org-sorted files), also after it moved to another org; a
    /// cluster with nothing filed reads no file and still gets its hours in memory.
    #[tokio::test]
    async fn one_clusters_filed_hours_are_all_found_after_it_moved_org() {
        let dir = std::env::temp_dir().join(format!("fl-sql-orgs-{}", std::process::id()));
        let files = fleetledger_projectors::segments::SegmentDir::new(&dir);
        let mut p = Projections::default();
        p.billing.files = files.clone();
        let ms = |t: &str| t.parse::<DateTime<Utc>>().unwrap().timestamp_millis();
        let t0 = "2026-01-01T00:00:00Z";
        for r in [
            rec("lkc-a", 1, t0, "frontend", of_org(2, "org-1"), 0),
            rec("lkc-a", 1, t0, "sync", running(2, 1), 1),
            rec("lkc-b", 1, t0, "frontend", of_org(4, "org-2"), 2),
            rec("lkc-b", 1, t0, "sync", running(4, 1), 3),
        ] {
            p.apply(r).unwrap();
        }
        p.billing.flush(ms("2026-01-03T00:00:00Z"), true).unwrap();
        let moved = rec(
            "lkc-a",
            2,
            "2026-01-03T05:00:00Z",
            "frontend",
            of_org(2, "org-9"),
            4,
        );
        p.apply(moved).unwrap();
        p.billing.flush(ms("2026-01-05T00:00:00Z"), true).unwrap();
        p.apply(rec(
            "lkc-c",
            1,
            "2026-01-04T06:00:00Z",
            "frontend",
            of_org(1, "org-1"),
            5,
        ))
        .unwrap();
        p.apply(rec(
            "lkc-c",
            1,
            "2026-01-04T06:00:00Z",
            "sync",
            running(1, 1),
            6,
        ))
        .unwrap();
        assert_eq!(p.billing.filed_orgs("lkc-a").unwrap(), ["org-1", "org-9"]);
        assert_eq!(p.billing.filed_orgs("lkc-c").unwrap(), [] as [String; 0]);
        let now = ms("2026-01-05T12:00:00Z");
        let want = |id: &str| {
            let rows = p.billing.all_rows(now).unwrap();
            let mine: Vec<_> = rows.iter().filter(|r| r.cluster_id == id).collect();
            (
                mine.len() as i64,
                mine.iter().map(|r| r.cku_hours).sum::<f64>(),
            )
        };
        let expected = [("lkc-a", want("lkc-a")), ("lkc-c", want("lkc-c"))];
        // lkc-a: 2 CKU from Jan 1 to 12:00 on Jan 5; lkc-c: 1 CKU from 06:00 on Jan 4.
        assert_eq!(expected[0].1, (108, 216.0));
        assert_eq!(expected[1].1, (30, 30.0));
        let e = engine_over(p, now);
        for (id, (n, sum)) in expected {
            let out = e
                .query(&format!(
                    "SELECT count(*) AS n, sum(cku_hours) AS h FROM billing_hours WHERE cluster_id = '{id}'"
                ))
                .await
                .unwrap();
            let json = crate::to_json_rows(&out.schema, &out.batches).unwrap();
            assert_eq!(json["rows"][0]["n"], n, "{id}");
            assert_eq!(json["rows"][0]["h"], sum, "{id}");
        }
        files.remove_all().unwrap();
    }

    #[tokio::test]
    async fn a_scoped_caller_sees_only_its_orgs_rows_in_every_table() {
        let mut p = Projections::default();
        let t = "2026-01-01T00:00:00Z";
        for r in [
            rec("lkc-a", 1, t, "frontend", of_org(2, "org-1"), 0),
            rec("lkc-a", 1, t, "sync", running(2, 1), 1),
            rec("lkc-b", 1, t, "frontend", of_org(4, "org-2"), 2),
            rec("lkc-b", 1, t, "sync", running(4, 1), 3),
            // A status of a cluster no logical state names: no org sees it.
            rec("lkc-c", 1, t, "sync", running(1, 1), 4),
        ] {
            p.apply(r).unwrap();
        }
        let now = "2026-01-01T03:00:00Z"
            .parse::<DateTime<Utc>>()
            .unwrap()
            .timestamp_millis();
        let e = engine_over(p, now);
        let org1 = Scope::Orgs(Arc::new(["org-1".to_owned()].into()));
        let rows = |sql: &'static str, scope: Scope| {
            let e = e.clone();
            async move {
                let out = e.query_as(sql, &scope).await.unwrap();
                crate::to_json_rows(&out.schema, &out.batches).unwrap()["rows"].clone()
            }
        };
        for (sql, all, scoped) in [
            ("SELECT count(*) AS n FROM clusters", 3, 1),
            ("SELECT count(*) AS n FROM audit_log", 5, 2),
            (
                "SELECT count(DISTINCT cluster_id) AS n FROM billing_hours",
                2,
                1,
            ),
            (
                "SELECT count(*) AS n FROM billing_daily WHERE org_id = 'org-2'",
                1,
                0,
            ),
            (
                "SELECT count(*) AS n FROM audit_log a JOIN clusters c ON a.cluster_id = c.cluster_id",
                5,
                2,
            ),
            (
                "SELECT count(*) AS n FROM (SELECT cluster_id FROM clusters UNION ALL SELECT cluster_id FROM audit_log WHERE facet = 'status')",
                6,
                2,
            ),
            (
                "SELECT count(*) AS n FROM (SELECT diff FROM audit_log WHERE writer = 'sync')",
                3,
                1,
            ),
        ] {
            assert_eq!(rows(sql, Scope::All).await[0]["n"], all, "{sql}");
            assert_eq!(rows(sql, org1.clone()).await[0]["n"], scoped, "{sql}");
        }
        // Rows without the scoping column asked for: still only the org's.
        let diffs = rows(
            "SELECT version, writer FROM audit_log ORDER BY writer",
            org1.clone(),
        )
        .await;
        assert_eq!(diffs.as_array().unwrap().len(), 2, "{diffs}");
        let ids = rows("SELECT DISTINCT org_id FROM billing_hours", org1.clone()).await;
        assert_eq!(ids, serde_json::json!([{"org_id": "org-1"}]));
        // The catalog names the same tables (no tenant's names are in it).
        let tables =
            "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public'";
        assert_eq!(
            rows(tables, org1.clone()).await,
            rows(tables, Scope::All).await
        );
    }

    #[tokio::test]
    async fn a_prepared_statement_reports_its_types_and_binds_its_values() {
        let e = engine(1000).await;
        let sql = "SELECT cluster_id, logical_version FROM clusters WHERE cluster_id = $1 AND logical_version >= $2";
        let p = e.prepare(sql, &Scope::All).await.unwrap();
        assert_eq!(p.params, vec![Some(DataType::Utf8), Some(DataType::Int64)]);
        let names: Vec<&str> = p
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["cluster_id", "logical_version"]);
        let bound = |params: Vec<ScalarValue>| {
            let e = e.clone();
            async move { e.query_with(sql, &params, &Scope::All).await }
        };
        let out = bound(vec![
            ScalarValue::from("lkc-b"),
            ScalarValue::Int64(Some(1)),
        ])
        .await
        .unwrap();
        let rows = crate::to_json_rows(&out.schema, &out.batches).unwrap()["rows"].clone();
        assert_eq!(
            rows,
            serde_json::json!([{"cluster_id": "lkc-b", "logical_version": 1}])
        );
        // A value given as text is cast to the parameter's type, as a PostgreSQL client's
        // text-format parameter is.
        let out = bound(vec![ScalarValue::from("lkc-a"), ScalarValue::from("1")])
            .await
            .unwrap();
        assert_eq!(out.rows, 1);
        let e1 = bound(vec![ScalarValue::from("lkc-a"), ScalarValue::from("one")])
            .await
            .unwrap_err();
        assert!(e1.to_string().contains("$2"), "{e1}");
        let e2 = bound(vec![ScalarValue::from("lkc-a")]).await.unwrap_err();
        assert!(e2.to_string().contains("2 parameters and 1 values"), "{e2}");
        // A write is refused when prepared, not only when run.
        let w = e
            .prepare("DELETE FROM clusters", &Scope::All)
            .await
            .unwrap_err();
        assert!(
            matches!(w, Error::NotReadOnly(_) | Error::Invalid(_)),
            "{w}"
        );
    }

    #[tokio::test]
    async fn pg_catalog_lists_each_table_and_its_columns_as_drivers_ask() {
        let e = engine(1000).await;
        let rows = |sql: &'static str| {
            let e = e.clone();
            async move {
                let out = e
                    .query(sql)
                    .await
                    .unwrap_or_else(|err| panic!("{sql}: {err}"));
                crate::to_json_rows(&out.schema, &out.batches).unwrap()["rows"].clone()
            }
        };
        // The shape of the JDBC driver's DatabaseMetaData.getTables query.
        let tables = rows(
            "SELECT NULL AS table_cat, n.nspname AS table_schem, c.relname AS table_name, \
             CASE n.nspname ~ '^pg_' OR n.nspname = 'information_schema' WHEN true THEN 'SYSTEM TABLE' \
             WHEN false THEN CASE c.relkind WHEN 'r' THEN 'TABLE' ELSE NULL END ELSE NULL END AS table_type, \
             d.description AS remarks \
             FROM pg_catalog.pg_namespace n, pg_catalog.pg_class c \
             LEFT JOIN pg_catalog.pg_description d ON (c.oid = d.objoid AND d.objsubid = 0) \
             WHERE c.relnamespace = n.oid AND c.relname LIKE '%' \
             AND (false OR (c.relkind = 'r' AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema')) \
             ORDER BY table_type, table_schem, table_name",
        )
        .await;
        let names: Vec<&str> = tables
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["table_name"].as_str().unwrap())
            .collect();
        let mut expected: Vec<&str> = e.tables().iter().map(String::as_str).collect();
        expected.sort();
        assert_eq!(names, expected);
        assert!(
            tables
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["table_type"] == "TABLE")
        );
        // Columns with their types, in order (the shape of getColumns).
        let cols = rows(
            "SELECT a.attname, a.attnum, t.typname, format_type(a.atttypid, a.atttypmod) AS ft \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
             JOIN pg_catalog.pg_type t ON a.atttypid = t.oid \
             WHERE c.relname = 'clusters' AND a.attnum > 0 AND NOT a.attisdropped \
             AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY a.attnum",
        )
        .await;
        let out = e.query("SELECT * FROM clusters LIMIT 0").await.unwrap();
        let cols = cols.as_array().unwrap();
        assert_eq!(cols.len(), out.schema.fields().len());
        for (c, f) in cols.iter().zip(out.schema.fields()) {
            assert_eq!(c["attname"], f.name().as_str());
            assert_eq!(
                c["typname"],
                crate::pg_catalog::pg_type_of(f.data_type()).name
            );
            assert_eq!(c["ft"], c["typname"]);
        }
        let who =
            rows("SELECT current_database() AS d, current_schema() AS s, version() AS v").await;
        assert_eq!(who[0]["d"], "fleetledger");
        assert_eq!(who[0]["s"], "public");
        assert!(who[0]["v"].as_str().unwrap().starts_with("PostgreSQL 16"));
    }

    #[tokio::test]
    async fn hostile_queries_stop_at_a_limit_that_names_itself() {
        let e = engine(1000).await;
        // A GROUP BY over a generated range needs more memory than the pool.
        let err = e
            .query("SELECT v % 10000000 AS k, count(*) FROM range(0, 100000000) AS t(v) GROUP BY k ORDER BY k LIMIT 1")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::MemoryLimit { limit_mib: 32 } | Error::Timeout { .. }
            ),
            "{err}"
        );
        // 10,000 levels of nesting are refused by the parser, not by the stack.
        let deep = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        let err = e.query(&deep).await.unwrap_err();
        assert!(matches!(err, Error::TooComplex(_)), "{err}");
        assert!(err.to_string().contains("queries.max_sql_bytes"), "{err}");
        let nested = format!("SELECT {}1{}", "(".repeat(500), ")".repeat(500));
        let err = e.query(&nested).await.unwrap_err();
        assert!(err.to_string().contains("queries.max_depth"), "{err}");
        // Parentheses inside strings and comments do not count.
        let quoted = format!("SELECT '{}' AS s -- {}", "(".repeat(200), "(".repeat(200));
        assert_eq!(e.query(&quoted).await.unwrap().rows, 1);
        let shallow = format!("SELECT {}1{}", "(".repeat(8), ")".repeat(8));
        assert_eq!(e.query(&shallow).await.unwrap().rows, 1);
        // A long flat chain of operators is refused by count; a shorter one runs.
        let long = format!("SELECT 0{}", " + 1".repeat(2_000));
        let err = e.query(&long).await.unwrap_err();
        assert!(err.to_string().contains("queries.max_operators"), "{err}");
        let chain = format!("SELECT 0{}", " + 1".repeat(100));
        let out = e.query(&chain).await.unwrap();
        assert_eq!(out.rows, 1);
        // No local files: neither read nor written.
        for sql in [
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "COPY (SELECT 1) TO '/tmp/fleetledger-copy.csv'",
        ] {
            assert!(
                matches!(e.query(sql).await, Err(Error::NotReadOnly(_))),
                "{sql}"
            );
        }
        assert!(!std::path::Path::new("/tmp/fleetledger-copy.csv").exists());
        // The engine still answers.
        assert_eq!(e.query("SELECT 1").await.unwrap().rows, 1);
    }

    #[tokio::test]
    async fn more_queries_than_allowed_at_once_wait_then_are_turned_away() {
        let e = engine(1000).await;
        let slow = "SELECT count(*) FROM range(0, 400000000)";
        let (a, b, c) = tokio::join!(e.query(slow), e.query(slow), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            e.query("SELECT 1").await
        });
        assert!(
            a.is_ok() || matches!(a, Err(Error::Timeout { .. })),
            "{a:?}"
        );
        assert!(
            b.is_ok() || matches!(b, Err(Error::Timeout { .. })),
            "{b:?}"
        );
        match c {
            Err(Error::Busy { limit: 2 }) => {}
            // Both finished within the queue wait on a fast machine: then it ran.
            Ok(out) => assert_eq!(out.rows, 1),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn sql_now_is_the_injected_clock() {
        let e = engine(1000).await;
        let out = e
            .query("SELECT CAST(now() AS VARCHAR) AS t, current_date AS d")
            .await
            .unwrap();
        let json = crate::to_json_rows(&out.schema, &out.batches).unwrap();
        let t = json["rows"][0]["t"].as_str().unwrap();
        assert!(t.starts_with("2026-01-01T02:00:00"), "{json}");
        assert_eq!(json["rows"][0]["d"], "2026-01-01", "{json}");
    }

    #[tokio::test]
    async fn selects_read_a_snapshot_of_every_table() {
        let e = engine(1000).await;
        let out = e
            .query("SELECT cluster_id, cku_desired, drift FROM clusters ORDER BY cluster_id")
            .await
            .unwrap();
        let json = crate::to_json_rows(&out.schema, &out.batches).unwrap();
        assert_eq!(
            json["rows"],
            serde_json::json!([
                {"cluster_id": "lkc-a", "cku_desired": 2, "drift": false},
                {"cluster_id": "lkc-b", "cku_desired": 4, "drift": true}
            ])
        );
        let out = e
            .query("SELECT SUM(cku_hours) AS h FROM billing_hours WHERE cluster_id = 'lkc-a'")
            .await
            .unwrap();
        let json = crate::to_json_rows(&out.schema, &out.batches).unwrap();
        assert_eq!(json["rows"][0]["h"], 4.0);
        for ok in [
            "SHOW TABLES",
            "DESCRIBE audit_log",
            "EXPLAIN SELECT * FROM audit_log WHERE writer = 'sync'",
            "WITH x AS (SELECT * FROM clusters) SELECT count(*) FROM x",
            "SELECT * FROM capacity_controller_view",
        ] {
            e.query(ok)
                .await
                .unwrap_or_else(|err| panic!("{ok}: {err}"));
        }
    }

    #[tokio::test]
    async fn every_kind_of_write_or_file_access_is_refused() {
        let e = engine(1000).await;
        for sql in [
            "CREATE TABLE t AS SELECT 1",
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "CREATE VIEW v AS SELECT 1",
            "DROP TABLE clusters",
            "INSERT INTO clusters (cluster_id) VALUES ('x')",
            "COPY (SELECT 1) TO '/tmp/out.csv'",
            "SET datafusion.execution.batch_size = 1",
            "CREATE SCHEMA s",
        ] {
            match e.query(sql).await {
                Err(Error::NotReadOnly(m)) => assert!(!m.is_empty()),
                other => panic!("{sql}: expected NotReadOnly, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn errors_name_the_position_tables_columns_and_limits() {
        let e = engine(2).await;
        let Err(Error::Invalid(m)) = e.query("SELEC 1").await else {
            panic!("syntax")
        };
        assert!(
            m.contains("syntax error") && m.contains("Line: 1, Column: 1"),
            "{m}"
        );
        let Err(Error::Invalid(m)) = e.query("SELECT * FROM nope").await else {
            panic!("table")
        };
        assert!(m.contains("tables are") && m.contains("audit_log"), "{m}");
        let Err(Error::Invalid(m)) = e.query("SELECT colour FROM clusters").await else {
            panic!("column")
        };
        assert!(m.contains("colour") && m.contains("cluster_id"), "{m}");
        let Err(Error::TooManyRows { limit: 2 }) = e.query("SELECT * FROM audit_log").await else {
            panic!("rows")
        };
    }
}
