//! `/metrics`: every metric of the service in the OpenMetrics text format that Prometheus
//! scrapes, named by its conventions (`fleetledger_` prefix, units in the name, counters
//! ending in `_total`). The ledger and the SQL engine count their own
//! ([`fleetledger_ledger::metrics`], [`fleetledger_queries::metrics`]); this module counts
//! HTTP requests and registry writes, and reads the rest (readiness, role, the
//! projections' lag) from the state at each scrape.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A request's route (the matched path template) and answer status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteStatus {
    pub(crate) method: String,
    pub(crate) route: String,
    pub(crate) status: u16,
}

/// A request's route.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Route {
    pub(crate) method: String,
    pub(crate) route: String,
}

/// A history partition.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Partition {
    pub(crate) partition: String,
}

/// A projection.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Projection {
    pub(crate) projection: &'static str,
}

/// An instance's role.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Role {
    pub(crate) role: &'static str,
}

/// How a PostgreSQL login ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LoginOutcome {
    /// `accepted`, `refused` (wrong token, user or database) or `too_many` (over
    /// `pg_max_connections`).
    pub(crate) outcome: &'static str,
}

/// The service's metrics and the registry that encodes them.
#[derive(Debug)]
pub struct ServiceMetrics {
    registry: Registry,
    pub(crate) http_requests: Family<RouteStatus, Counter>,
    pub(crate) http_seconds: Family<Route, Histogram>,
    pub(crate) registry_writes: Counter,
    pub(crate) ready: Gauge,
    pub(crate) role: Family<Role, Gauge>,
    pub(crate) lag_records: Family<Partition, Gauge>,
    pub(crate) lag_seconds: Family<Partition, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub(crate) stopped: Family<Partition, Gauge>,
    pub(crate) restarts: Counter,
    pub(crate) degraded: Gauge,
    pub(crate) applied: Family<Projection, Counter>,
    pub(crate) pg_sessions: Gauge,
    pub(crate) pg_logins: Family<LoginOutcome, Counter>,
}

impl ServiceMetrics {
    /// The registry with the ledger's and the SQL engine's metrics and the service's own.
    pub fn new(
        ledger: &fleetledger_ledger::metrics::LedgerMetrics,
        queries: &fleetledger_queries::QueryMetrics,
    ) -> Arc<Self> {
        let mut registry = Registry::with_prefix("fleetledger");
        ledger.register(&mut registry);
        queries.register(&mut registry);
        let m = ServiceMetrics {
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            }),
            registry_writes: Counter::default(),
            ready: Gauge::default(),
            role: Family::default(),
            lag_records: Family::default(),
            lag_seconds: Family::default(),
            stopped: Family::default(),
            restarts: Counter::default(),
            degraded: Gauge::default(),
            applied: Family::default(),
            pg_sessions: Gauge::default(),
            pg_logins: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            m.http_requests.clone(),
        );
        registry.register_with_unit(
            "http_request",
            "Time to answer an HTTP request, by route",
            Unit::Seconds,
            m.http_seconds.clone(),
        );
        registry.register(
            "registry_writes",
            "Schema registry writes allowed (registrations, compatibility changes, deletions)",
            m.registry_writes.clone(),
        );
        registry.register("ready", "1 once start-up finished", m.ready.clone());
        registry.register(
            "role",
            "1 for this instance's role: writer (accepts writes now), standby (serves reads, redirects writes to the writer), or not_writing (taking over, fenced, re-connecting to Kafka, or starting)",
            m.role.clone(),
        );
        registry.register(
            "projector_lag_records",
            "History records not yet applied by the projections, per partition",
            m.lag_records.clone(),
        );
        registry.register_with_unit(
            "projector_lag",
            "How far behind the projections are, per partition: from the write time of the last record applied to now, while records wait",
            Unit::Seconds,
            m.lag_seconds.clone(),
        );
        registry.register(
            "projector_stopped",
            "1 for a partition stopped at an undecodable record",
            m.stopped.clone(),
        );
        registry.register(
            "projector_restarts",
            "Restarts of the projections after an error since start",
            m.restarts.clone(),
        );
        registry.register(
            "projector_degraded",
            "How many things are wrong with the projections now (restarting, rebuilding, stopped partitions)",
            m.degraded.clone(),
        );
        registry.register(
            "projector_applied_records",
            "Records each projection applied since start",
            m.applied.clone(),
        );
        registry.register(
            "pg_sessions",
            "PostgreSQL protocol sessions open now",
            m.pg_sessions.clone(),
        );
        registry.register(
            "pg_logins",
            "PostgreSQL protocol logins, by outcome: accepted, refused (token, user or database), too_many (over pg_max_connections)",
            m.pg_logins.clone(),
        );
        Arc::new(ServiceMetrics { registry, ..m })
    }

    /// Counts a PostgreSQL login that ended with `outcome` (see [`LoginOutcome`]).
    pub(crate) fn pg_login(&self, outcome: &'static str) {
        self.pg_logins
            .get_or_create(&LoginOutcome { outcome })
            .inc();
    }

    /// The registry, encoded.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        out
    }
}
