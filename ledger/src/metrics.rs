//! The append path's metrics, for `/metrics` (registered by the binary with the others'):
//! changes by outcome, changes per transaction, commit latency and fencing events.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::Error;

/// The label of a change's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `committed`, `conflict`, `refused`, `outcome_unknown` or `unavailable`.
    pub outcome: &'static str,
}

/// The outcome label of an append's answer: `committed` (written, or a keyed repeat's
/// original answer), `conflict` (If-Match or a racing version), `outcome_unknown`,
/// `unavailable` (not written: Kafka away, writer re-connecting, fenced), `refused`
/// (anything the caller got wrong: ownership, scope, time, size, a reused key).
pub fn outcome_of<T>(result: &Result<T, Error>) -> &'static str {
    match result {
        Ok(_) => "committed",
        Err(Error::Conflict { .. }) => "conflict",
        Err(Error::OutcomeUnknown(_)) => "outcome_unknown",
        Err(e) if e.is_retriable() || matches!(e, Error::Fenced | Error::NotWriter { .. }) => {
            "unavailable"
        }
        Err(_) => "refused",
    }
}

/// The ledger's metrics; clones share them.
#[derive(Debug, Clone)]
pub struct LedgerMetrics {
    /// `fleetledger_appends_total{outcome}`: changes answered, by outcome.
    pub appends: Family<OutcomeLabel, Counter>,
    /// `fleetledger_transaction_changes`: changes per committed transaction.
    pub transaction_changes: Histogram,
    /// `fleetledger_transaction_commit_seconds`: from the transaction's start to its
    /// commit's answer (committed or not).
    pub commit_seconds: Histogram,
    /// `fleetledger_writer_fenced_total`: times another writer fenced this one.
    pub fenced: Counter,
    /// `fleetledger_writer_takeovers_total`: times this instance became the writer.
    pub takeovers: Counter,
    /// `fleetledger_writer_groups_decided_ahead_total`: groups decided while the
    /// transaction before them committed (the pipeline at work).
    pub decided_ahead: Counter,
    /// `fleetledger_writer_groups_decided_again_total`: groups decided ahead and decided
    /// again because the transaction before them did not commit (or had to be resolved).
    pub decided_again: Counter,
}

impl Default for LedgerMetrics {
    fn default() -> Self {
        LedgerMetrics {
            appends: Family::default(),
            transaction_changes: Histogram::new(exponential_buckets(1.0, 4.0, 7)),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            fenced: Counter::default(),
            takeovers: Counter::default(),
            decided_ahead: Counter::default(),
            decided_again: Counter::default(),
        }
    }
}

impl LedgerMetrics {
    /// Adds these metrics to `registry` (names get the registry's `fleetledger` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "appends",
            "Changes answered, by outcome",
            self.appends.clone(),
        );
        registry.register(
            "transaction_changes",
            "Changes per transaction",
            self.transaction_changes.clone(),
        );
        registry.register_with_unit(
            "transaction_commit",
            "From a transaction's start to its commit's answer",
            prometheus_client::registry::Unit::Seconds,
            self.commit_seconds.clone(),
        );
        registry.register(
            "writer_fenced",
            "Times a newer producer of the writer's transactional id fenced this instance",
            self.fenced.clone(),
        );
        registry.register(
            "writer_takeovers",
            "Times this instance became the writer (won the election, fenced the one before)",
            self.takeovers.clone(),
        );
        registry.register(
            "writer_groups_decided_ahead",
            "Groups decided while the transaction before them committed",
            self.decided_ahead.clone(),
        );
        registry.register(
            "writer_groups_decided_again",
            "Groups decided ahead, decided again because the transaction before them did not commit",
            self.decided_again.clone(),
        );
    }
}
