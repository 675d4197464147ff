//! Operations endpoints: `/healthz`, `/readyz`, `/metrics`.

use crate::http::error::AppError;
use crate::http::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Prometheus text format: readiness, fencing and projector lag per partition.
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    use std::fmt::Write as _;
    let mut out = String::new();
    let ready = u8::from(state.started.load(Ordering::Acquire));
    let _ = writeln!(
        out,
        "# HELP fleetledger_ready 1 once start-up finished.\n# TYPE fleetledger_ready gauge\nfleetledger_ready {ready}"
    );
    let fenced = state.ledger.get().map_or(0, |l| u8::from(l.is_fenced()));
    let _ = writeln!(
        out,
        "# HELP fleetledger_ledger_fenced 1 once another writer fenced this one.\n# TYPE fleetledger_ledger_fenced gauge\nfleetledger_ledger_fenced {fenced}"
    );
    if let Some(p) = state.projector.get() {
        let _ = writeln!(
            out,
            "# HELP fleetledger_projector_lag_records History records not yet applied, per partition.\n# TYPE fleetledger_projector_lag_records gauge"
        );
        let _ = writeln!(
            out,
            "# HELP fleetledger_projector_stopped 1 for a partition stopped at an undecodable record.\n# TYPE fleetledger_projector_stopped gauge"
        );
        let _ = writeln!(
            out,
            "# HELP fleetledger_projector_restarts_total Restarts of the projections after an error.\n# TYPE fleetledger_projector_restarts_total counter\nfleetledger_projector_restarts_total {}",
            p.restarts()
        );
        let _ = writeln!(
            out,
            "# HELP fleetledger_projector_degraded What is wrong with the projections now (restarting, rebuilding, stopped partitions).\n# TYPE fleetledger_projector_degraded gauge\nfleetledger_projector_degraded {}",
            p.degraded().len()
        );
        for (partition, _) in p.stopped() {
            let _ = writeln!(
                out,
                "fleetledger_projector_stopped{{partition=\"{partition}\"}} 1"
            );
        }
        for (partition, lag) in p.lag() {
            let _ = writeln!(
                out,
                "fleetledger_projector_lag_records{{partition=\"{partition}\"}} {lag}"
            );
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}

pub(crate) async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

pub(crate) async fn readyz(
    State(state): State<Arc<AppState>>,
) -> Result<impl IntoResponse, AppError> {
    if let Some(e) = state.startup_error.lock().ok().and_then(|e| e.clone()) {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "startup_failed",
            e,
        ));
    }
    if !state.started.load(Ordering::Acquire) {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "starting: waiting for Kafka, the topics and the schema registry",
        ));
    }
    if let Some(why) = state.ledger.get().and_then(|l| l.not_writable()) {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("{why}; writes answer 503 meanwhile"),
        ));
    }
    match state.layout.all_exist(&state.clients).await {
        Ok(true) => {
            // Writes are accepted; reads may lag or miss a projection: said, not hidden.
            let degraded = state
                .projector
                .get()
                .map(|p| p.degraded())
                .unwrap_or_default();
            if degraded.is_empty() {
                Ok(axum::Json(json!({"status": "ready"})))
            } else {
                Ok(axum::Json(
                    json!({"status": "degraded", "degraded": degraded}),
                ))
            }
        }
        Ok(false) => Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "a topic of the layout is missing ({}, {}, {})",
                state.layout.state, state.layout.history, state.layout.schemas
            ),
        )),
        Err(e) => Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_unavailable",
            format!("Kafka does not answer: {e}"),
        )),
    }
}
