//! Operations endpoints: `/healthz`, `/readyz`, `/metrics`.

use crate::http::error::AppError;
use crate::http::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fleetledger_ledger::Role;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Every metric, in the OpenMetrics text format ([`crate::http::metrics`]); the values
/// read from the state (readiness, role, the projections' progress) are taken now.
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    use crate::http::metrics::{Partition, Projection, Role};
    let m = &state.metrics;
    m.ready
        .set(i64::from(state.started.load(Ordering::Acquire)));
    let ledger = state.ledger.get();
    let writing = ledger.is_some_and(|l| l.is_writable());
    let standby = ledger.is_some_and(|l| l.role() == fleetledger_ledger::Role::Standby);
    for (role, on) in [
        ("writer", writing),
        ("standby", standby),
        ("not_writing", !writing && !standby),
    ] {
        m.role.get_or_create(&Role { role }).set(i64::from(on));
    }
    if let Some(p) = state.projector.get() {
        let now_ms = chrono::Utc::now().timestamp_millis();
        for (partition, lag) in p.lag() {
            let label = Partition {
                partition: partition.to_string(),
            };
            m.lag_records.get_or_create(&label).set(lag);
            m.stopped.get_or_create(&label).set(0);
        }
        for (partition, seconds) in p.lag_seconds(now_ms).await {
            m.lag_seconds
                .get_or_create(&Partition {
                    partition: partition.to_string(),
                })
                .set(seconds);
        }
        for (partition, _) in p.stopped() {
            m.stopped
                .get_or_create(&Partition {
                    partition: partition.to_string(),
                })
                .set(1);
        }
        let restarts = p.restarts();
        m.restarts.inc_by(restarts.saturating_sub(m.restarts.get()));
        m.degraded.set(p.degraded().len() as i64);
        let applied = p.projections().read().await.applied;
        for (name, n) in fleetledger_projectors::ProjectionName::ALL
            .iter()
            .zip(applied)
        {
            let c = m.applied.get_or_create(&Projection {
                projection: name.as_str(),
            });
            c.inc_by(n.saturating_sub(c.get()));
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
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
    // A standby is ready: it serves reads, and redirects writes to the writer.
    let role = state.ledger.get().map(|l| (l.role(), l.writer_url()));
    if let Some(why) = state
        .ledger
        .get()
        .filter(|l| l.role() != Role::Standby)
        .and_then(|l| l.not_writable())
    {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("{why}; writes answer 503 meanwhile"),
        ));
    }
    let role_fields = |mut body: serde_json::Value| {
        if let Some((role, writer)) = &role {
            body["role"] = json!(role.as_str());
            if let Some(w) = writer {
                body["writer"] = json!(w);
            }
        }
        body
    };
    match state.layout.all_exist(&state.clients).await {
        Ok(true) => {
            // Writes are accepted; reads may lag or miss a projection: said, not hidden.
            let degraded = state
                .projector
                .get()
                .map(|p| p.degraded())
                .unwrap_or_default();
            if degraded.is_empty() {
                Ok(axum::Json(role_fields(json!({"status": "ready"}))))
            } else {
                Ok(axum::Json(role_fields(
                    json!({"status": "degraded", "degraded": degraded}),
                )))
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
