//! `POST /v1/sql`: read-only SQL over the projections, answered as JSON, CSV or Arrow IPC.

use crate::http::error::AppError;
use crate::http::request::*;
use crate::http::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SqlRequest {
    sql: String,
}

/// Largest `/v1/sql` body, in bytes.
const SQL_BODY_BYTES: usize = 64 << 10;

/// Media type of an Arrow IPC stream.
pub(crate) const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

#[utoipa::path(
    post,
    path = "/v1/sql",
    tag = "queries",
    summary = "Read-only SQL over the projections",
    request_body(content = crate::http::openapi::SqlRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The answer: JSON rows, CSV (`Accept: text/csv`) or an Arrow IPC stream (`Accept: application/vnd.apache.arrow.stream`)",
            content(
                (crate::http::openapi::SqlAnswer = "application/json"),
                (String = "text/csv"),
                (Vec<u8> = "application/vnd.apache.arrow.stream"),
            )),
        crate::http::openapi::Refusals,
    )
)]
/// `POST /v1/sql` with `{"sql": "…"}`: JSON rows (default), CSV (`Accept: text/csv`) or an
/// Arrow IPC stream (`Accept: application/vnd.apache.arrow.stream`). Any principal.
pub(crate) async fn sql(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let who = authenticated(&state, &headers)?;
    // A statement is at most queries.max_sql_bytes; its JSON envelope, escapes included,
    // is never more than 64 KiB.
    let bytes = json_body_within(&headers, body, SQL_BODY_BYTES.min(state.max_body_bytes)).await?;
    let req: SqlRequest = serde_json::from_slice(&bytes).map_err(|e| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("body must be {{\"sql\": \"...\"}}: {e}"),
        )
    })?;
    let engine = state.queries.get().ok_or_else(|| {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the projections are still starting",
        )
    })?;
    let out = engine.query_as(&req.sql, &who.scope).await?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if accept.contains("text/csv") {
        let csv = fleetledger_queries::to_csv(&out.schema, &out.batches)?;
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response());
    }
    if accept.contains(ARROW_STREAM) {
        let ipc = fleetledger_queries::to_ipc(&out.schema, &out.batches)?;
        return Ok(([(header::CONTENT_TYPE, ARROW_STREAM)], ipc).into_response());
    }
    let mut json = fleetledger_queries::to_json_rows(&out.schema, &out.batches)?;
    json["row_count"] = json!(out.rows);
    Ok(Json(json).into_response())
}
