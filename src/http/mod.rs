//! The HTTP API: the router ([`app`]), built apart from binding a port so tests can call
//! it without a socket; one module per resource, one error type ([`error::AppError`]).

pub(crate) mod batch;
pub(crate) mod clusters;
pub(crate) mod error;
pub(crate) mod ops;
pub(crate) mod request;
pub(crate) mod sql;
pub(crate) mod state;

pub use error::AppError;
pub use state::AppState;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use std::convert::Infallible;
use std::sync::Arc;
use tower::ServiceExt;

/// The service's routes over `state`, without a socket (tests call it with `oneshot`).
pub fn app(state: Arc<AppState>) -> Router {
    let registry_state = state.clone();
    let registry = tower::service_fn(move |req: Request<Body>| {
        let state = registry_state.clone();
        async move {
            match state.registry.get() {
                Some(r) => r.clone().oneshot(req).await,
                None => Ok::<_, Infallible>(
                    AppError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not_ready",
                        "the schema registry is still loading from Kafka",
                    )
                    .into_response(),
                ),
            }
        }
    });
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/clusters/{id}/{facet}", post(clusters::append))
        .route(
            "/v1/clusters/{id}",
            get(clusters::get_cluster).delete(clusters::delete),
        )
        .route("/v1/clusters/{id}/history", get(clusters::history))
        .route("/v1/clusters/{id}/state", get(clusters::state_at))
        .route("/v1/clusters/{id}/audit", get(clusters::audit))
        .route("/v1/clusters/{id}/verify", get(clusters::verify))
        .route("/v1/clusters/{id}/recover", post(clusters::recover))
        .route("/v1/batch", post(batch::batch))
        .route("/v1/import", post(batch::import))
        .route("/v1/sql", post(sql::sql))
        .layer(axum::middleware::from_fn(trace_request))
        .nest_service("/registry", registry)
        .with_state(state)
}

/// One `tracing` span per request, with method, path and, at the end, status and time.
pub(crate) async fn trace_request(req: Request<Body>, next: axum::middleware::Next) -> Response {
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        status = tracing::field::Empty,
        ms = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    span.record("status", response.status().as_u16());
    span.record("ms", started.elapsed().as_secs_f64() * 1e3);
    if response.status().is_server_error() {
        tracing::warn!(parent: &span, status = response.status().as_u16(), "request failed");
    }
    response
}
