//! The HTTP API: the router ([`app`]), built apart from binding a port so tests can call
//! it without a socket; one module per resource, one error type ([`error::AppError`]).

pub(crate) mod batch;
pub(crate) mod clusters;
pub(crate) mod error;
pub mod metrics;
pub(crate) mod openapi;
pub(crate) mod ops;
pub(crate) mod request;
pub(crate) mod sql;
pub(crate) mod state;
pub(crate) mod ui;
pub(crate) mod watch;

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
use fleetledger_ledger::principals::REGISTRY_ADMIN;
use std::convert::Infallible;
use std::sync::Arc;
use tower::ServiceExt;

/// `POST` a facet's new state.
const APPEND: &str = "/v1/clusters/{id}/{facet}";
/// `GET` every facet's current state, `DELETE` the cluster.
const CLUSTER: &str = "/v1/clusters/{id}";
const HISTORY: &str = "/v1/clusters/{id}/history";
const STATE_AT: &str = "/v1/clusters/{id}/state";
const AUDIT: &str = "/v1/clusters/{id}/audit";
const VERIFY: &str = "/v1/clusters/{id}/verify";
const RECOVER: &str = "/v1/clusters/{id}/recover";
const BATCH: &str = "/v1/batch";
const IMPORT: &str = "/v1/import";
const SQL: &str = "/v1/sql";
const WATCH: &str = "/v1/watch";

/// Every route of the `/v1` API; `/openapi.json` documents each of them (a test checks).
#[cfg(test)]
pub(crate) const V1_ROUTES: [&str; 11] = [
    APPEND, CLUSTER, HISTORY, STATE_AT, AUDIT, VERIFY, RECOVER, BATCH, IMPORT, SQL, WATCH,
];

/// The service's routes over `state`, without a socket (tests call it with `oneshot`).
pub fn app(state: Arc<AppState>) -> Router {
    let registry_state = state.clone();
    let registry = tower::service_fn(move |req: Request<Body>| {
        let state = registry_state.clone();
        async move {
            if let Err(refused) = registry_write_allowed(&state, &req) {
                return Ok(refused.into_response());
            }
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
        .route("/ui", get(ui::root))
        .route("/ui/", get(ui::index))
        .route("/ui/{file}", get(ui::file))
        .route("/openapi.json", get(openapi::document))
        .route(APPEND, post(clusters::append))
        .route(CLUSTER, get(clusters::get_cluster).delete(clusters::delete))
        .route(HISTORY, get(clusters::history))
        .route(STATE_AT, get(clusters::state_at))
        .route(AUDIT, get(clusters::audit))
        .route(VERIFY, get(clusters::verify))
        .route(RECOVER, post(clusters::recover))
        .route(BATCH, post(batch::batch))
        .route(IMPORT, post(batch::import))
        .route(SQL, post(sql::sql))
        .route(WATCH, get(watch::watch))
        .layer(axum::middleware::from_fn(redirect_to_writer))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            bound_request,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            trace_request,
        ))
        .nest_service("/registry", registry)
        .with_state(state)
}

/// The embedded registry's rule: reads are open to any client, so that every Confluent
/// client and Kafka tool can decode our topics (GET, and the two POSTs that change
/// nothing: looking a schema up under a subject, testing compatibility); writes
/// (registering a schema, changing compatibility, deleting) need the `registry-admin`
/// principal: 401 without a known token, 403 for any other principal. Every allowed write
/// is logged with its principal.
fn registry_write_allowed(state: &AppState, req: &Request<Body>) -> Result<(), AppError> {
    use axum::http::Method;
    let path = req.uri().path();
    let write = match *req.method() {
        Method::GET | Method::HEAD => false,
        Method::POST => path.starts_with("/subjects/") && path.ends_with("/versions"),
        _ => true,
    };
    if !write {
        return Ok(());
    }
    let principal = request::principal(state, req.headers())?;
    if principal != REGISTRY_ADMIN {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "principal {principal} may not change the schema registry: only {REGISTRY_ADMIN} may (reads are open)"
            ),
        )
        .with_detail("error_code", serde_json::json!(40301)));
    }
    tracing::info!(principal, method = %req.method(), path = %req.uri().path(), "schema registry write");
    state.metrics.registry_writes.inc();
    Ok(())
}

/// Bounds every API request but the operational ones (`/healthz`, `/readyz`,
/// `/metrics`): at most `max_concurrent_requests` at once, more answered 503 `overloaded`
/// with `Retry-After` at once (never queued, so a flood from one caller cannot hold the
/// others' requests); and a read (GET, or SQL) at most `read_timeout_ms`, past which its
/// work is dropped and it is answered 504 `timeout` (it changed nothing). A write is not
/// cut here: one cut short may have committed; its limit is the ledger's
/// (`ledger.answer_timeout_ms`, answered `outcome_unknown`).
async fn bound_request(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if matches!(path, "/healthz" | "/readyz" | "/metrics") || path.starts_with("/ui") {
        return next.run(req).await;
    }
    let Ok(_turn) = state.requests.clone().try_acquire_owned() else {
        // A 503 of ours carries Retry-After.
        return AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "more than {} requests at once (max_concurrent_requests): this one did nothing; retry after a second",
                state.max_requests
            ),
        )
        .into_response();
    };
    let read = req.method() == axum::http::Method::GET || path == "/v1/sql";
    if !read {
        return next.run(req).await;
    }
    match tokio::time::timeout(state.read_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => AppError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "the read took longer than {} ms (read_timeout_ms) and was stopped; it changed nothing",
                state.read_timeout.as_millis()
            ),
        )
        .into_response(),
    }
}

/// A write sent to a standby is answered `307 Temporary Redirect` to the same path and
/// query at the writer (its announced `advertised_url`): the client sends it again there,
/// with the same method, body and headers (its token and Idempotency-Key included).
/// Nothing was written here. Redirected, not forwarded: the client talks to the writer
/// itself, so an unknown outcome is never produced by a hop in between.
pub(crate) async fn redirect_to_writer(
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let mut response = next.run(req).await;
    if let Some(error::WriterLocation(url)) = response.extensions().get::<error::WriterLocation>() {
        let location = format!("{}{path_and_query}", url.trim_end_matches('/'));
        if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
            response
                .headers_mut()
                .insert(axum::http::header::LOCATION, v);
        }
    }
    response
}

/// One `tracing` span per request, with method, path and, at the end, status and time.
pub(crate) async fn trace_request(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
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
    let m = &state.metrics;
    m.http_seconds
        .get_or_create(&metrics::Route {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    m.http_requests
        .get_or_create(&metrics::RouteStatus {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    if response.status().is_server_error() {
        tracing::warn!(parent: &span, status = response.status().as_u16(), "request failed");
    }
    response
}
