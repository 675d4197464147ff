//! What every handler shares: the ledger, the projector, the query engine, the registry,
//! set once start-up has them.

use axum::Router;
use fleetledger_ledger::KafkaClients;
use fleetledger_ledger::Ledger;
use fleetledger_ledger::Tokens;
use fleetledger_ledger::TopicLayout;
use fleetledger_projectors::Projector;
use fleetledger_queries::QueryEngine;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

/// Shared state of the HTTP handlers.
#[derive(Debug)]
pub struct AppState {
    pub(crate) clients: KafkaClients,
    pub(crate) layout: TopicLayout,
    pub(crate) tokens: Tokens,
    pub(crate) ledger: OnceLock<Ledger>,
    pub(crate) projector: OnceLock<Projector>,
    pub(crate) queries: OnceLock<QueryEngine>,
    pub(crate) max_body_bytes: usize,
    /// Turns of the API's requests, `max_requests` of them (`max_concurrent_requests`).
    pub(crate) requests: std::sync::Arc<tokio::sync::Semaphore>,
    pub(crate) max_requests: usize,
    /// Turns of the watch streams, `max_watches` of them: a stream outlives its request's
    /// turn and holds a Kafka consumer, so it has a cap of its own.
    pub(crate) watches: std::sync::Arc<tokio::sync::Semaphore>,
    pub(crate) max_watches: usize,
    /// Longest a read may take (`read_timeout_ms`).
    pub(crate) read_timeout: std::time::Duration,
    pub(crate) started: AtomicBool,
    pub(crate) registry: OnceLock<Router>,
    pub(crate) startup_error: Mutex<Option<String>>,
    /// Every metric `/metrics` shows; the ledger and the SQL engine count into theirs.
    pub(crate) metrics: std::sync::Arc<crate::http::metrics::ServiceMetrics>,
    pub(crate) ledger_metrics: fleetledger_ledger::metrics::LedgerMetrics,
    pub(crate) query_metrics: fleetledger_queries::QueryMetrics,
    /// Cancelled when the service shuts down: ends the streams that would otherwise hold
    /// the graceful shutdown open (watches).
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
}
