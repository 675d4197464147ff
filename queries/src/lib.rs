//! Read-only SQL over the projections with DataFusion. One long-lived `SessionContext`
//! serves every query; each projection is a table whose scan reads a consistent snapshot
//! (one read lock) and builds only the projected columns, with string equality filters
//! applied while building (pushed down, inexact: DataFusion filters again).

mod engine;
mod error;
pub mod metrics;
mod output;
pub mod pg_catalog;
mod tables;

/// The Arrow arrays and types of [`QueryOutput`] (DataFusion's), for callers that encode
/// answers themselves.
pub use datafusion::arrow;
/// A value bound to a statement's parameter ([`QueryEngine::query_with`]).
pub use datafusion::common::ScalarValue;
pub use engine::{
    DEFAULT_METADATA_CACHE_MIB, PreparedQuery, QueryEngine, QueryLimits, QueryOutput,
};
pub use error::{Error, Result};
pub use metrics::QueryMetrics;
pub use output::{ipc_to_table, to_csv, to_ipc, to_json_rows};
