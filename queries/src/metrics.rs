//! The SQL engine's metrics, for `/metrics`: queries by outcome and their duration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::error::Error;

/// The label of a query's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryOutcome {
    /// `ok`, or the limit or mistake that ended it.
    pub outcome: &'static str,
}

/// The outcome label of a query's answer.
pub fn query_outcome<T>(result: &Result<T, Error>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(Error::NotReadOnly(_)) => "not_read_only",
        Err(Error::Invalid(_)) => "invalid",
        Err(Error::Timeout { .. }) => "timeout",
        Err(Error::TooManyRows { .. }) => "too_many_rows",
        Err(Error::MemoryLimit { .. }) => "memory_limit",
        Err(Error::Busy { .. }) => "busy",
        Err(Error::TooComplex(_)) => "too_complex",
        Err(Error::Internal(_)) => "internal",
    }
}

/// The engine's metrics; clones share them.
#[derive(Debug, Clone)]
pub struct QueryMetrics {
    /// `fleetledger_sql_queries_total{outcome}`.
    pub queries: Family<QueryOutcome, Counter>,
    /// `fleetledger_sql_query_seconds`: every query's time, answered or not.
    pub seconds: Histogram,
}

impl Default for QueryMetrics {
    fn default() -> Self {
        QueryMetrics {
            queries: Family::default(),
            seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }
}

impl QueryMetrics {
    /// Adds these metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sql_queries",
            "SQL queries answered, by outcome",
            self.queries.clone(),
        );
        registry.register_with_unit(
            "sql_query",
            "Time of a SQL query, answered or not",
            Unit::Seconds,
            self.seconds.clone(),
        );
    }
}
