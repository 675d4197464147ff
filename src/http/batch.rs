//! `POST /v1/batch` and `POST /v1/import`: many changes in one request, each answered on
//! its own; the rules (independence, import order, resumption) are the ledger's.

use crate::http::error::AppError;
use crate::http::request::*;
use crate::http::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use fleetledger_ledger::AppendRequest;
use fleetledger_ledger::Error as LedgerError;
use fleetledger_ledger::import::ImportAnswer;
use fleetledger_ledger::import::ImportLine;
use fleetledger_ledger::parse_time;
use fleetledger_ledger::principals::Operation;
use fleetledger_schemas::Facet;
use fleetledger_schemas::FacetState;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchItem {
    cluster_id: String,
    facet: String,
    /// An object; a batch with any other state is refused whole, as malformed.
    state: serde_json::Map<String, Value>,
    #[serde(default)]
    expected_version: Option<i64>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Batch {
    items: Vec<BatchItem>,
}

/// Most items in one `POST /v1/batch`.
pub(crate) const MAX_BATCH_ITEMS: usize = 10_000;

#[utoipa::path(
    post,
    path = "/v1/batch",
    tag = "changes",
    summary = "Many changes, each answered on its own",
    request_body(content = crate::http::openapi::BatchRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "One answer per item, in order", body = crate::http::openapi::BatchAnswer),
        crate::http::openapi::Refusals,
    )
)]
/// `POST /v1/batch`: `{"items": [{cluster_id, facet, state, expected_version?,
/// idempotency_key?, reason?}]}` → `{"results": [{"status", "body"}]}`, one per item in
/// order; each item succeeds or fails on its own.
pub(crate) async fn batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let who = authenticated(&state, &headers)?;
    let bytes = json_body(&state, &headers, body).await?;
    let batch: Batch = serde_json::from_slice(&bytes)
        .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, "invalid", format!("body: {e}")))?;
    if batch.items.len() > MAX_BATCH_ITEMS {
        return Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "at most {MAX_BATCH_ITEMS} items per batch, got {}",
                batch.items.len()
            ),
        ));
    }
    let ledger = ledger(&state)?;
    // A standby redirects the whole request to the writer, not item by item.
    ledger.check_writer()?;
    let prepared: Vec<Result<AppendRequest, AppError>> = batch
        .items
        .into_iter()
        .map(|item| {
            cluster(&item.cluster_id)?;
            let facet: Facet = item.facet.parse()?;
            let bytes = serde_json::to_vec(&item.state).unwrap_or_default();
            let st = FacetState::from_json(facet, &bytes)?;
            if item.expected_version.is_some_and(|v| v < 0) {
                return Err(AppError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "expected_version must be >= 0",
                ));
            }
            Ok(AppendRequest {
                cluster_id: item.cluster_id,
                state: st,
                principal: who.principal.clone(),
                expected_version: item.expected_version,
                request_id: item.idempotency_key,
                reason: item.reason,
                ts: None,
                scope: who.scope.clone(),
                requires: None,
            })
        })
        .collect();
    let mut refused = Vec::with_capacity(prepared.len());
    let mut valid = Vec::with_capacity(prepared.len());
    for p in prepared {
        match p {
            Ok(r) => {
                valid.push(r);
                refused.push(None);
            }
            Err(e) => refused.push(Some(e)),
        }
    }
    let mut appended = ledger.batch(valid).await.into_iter();
    let results: Vec<Value> = refused
        .into_iter()
        .map(|refusal| {
            let result = match refusal {
                None => appended
                    .next()
                    .unwrap_or_else(|| Err(LedgerError::Unavailable("no answer".into())))
                    .map_err(AppError::from),
                Some(e) => Err(e),
            };
            match result {
                Ok(a) => json!({"status": 201, "body": a}),
                Err(e) => {
                    let (status, body) = e.parts();
                    json!({"status": status.as_u16(), "body": body})
                }
            }
        })
        .collect();
    Ok(Json(json!({ "results": results })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportItem {
    line: usize,
    ts: String,
    cluster_id: String,
    facet: String,
    #[serde(alias = "principal")]
    writer: String,
    #[serde(default)]
    reason: Option<String>,
    state: serde_json::Map<String, Value>,
    expected_version: i64,
    idempotency_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportBatch {
    items: Vec<ImportItem>,
    /// Import even into cluster+facets whose history was written live.
    #[serde(default)]
    allow_live_history: bool,
}

#[utoipa::path(
    post,
    path = "/v1/import",
    tag = "changes",
    summary = "Import history from another system",
    description = "As the `import` principal. Every line is checked first; the first bad one refuses the whole request with its line number and nothing is written.",
    request_body(content = crate::http::openapi::ImportRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "One answer per line", body = crate::http::openapi::ImportAnswer),
        crate::http::openapi::Refusals,
    )
)]
/// `POST /v1/import`, as the `import` principal: `{"items": [{line, ts, cluster_id, facet,
/// writer, reason?, state, expected_version, idempotency_key}]}` (`principal` is accepted
/// for `writer`, the name older files used). Every item is checked first (cluster id,
/// facet, state, time, and that its writer owns the facet); the first bad one refuses the
/// whole batch with its line number and nothing is written. Then each cluster's items are
/// appended in the order of their times (ties in line order), queued together and linked
/// (see `fleetledger_ledger::import`), with their original time and writer; a failed line
/// skips the cluster's later lines.
/// An item whose version already exists (a resumed import) answers `imported: false`.
pub(crate) async fn import(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let who = authenticated(&state, &headers)?;
    Operation::Import.check(&who.principal)?;
    let bytes = json_body(&state, &headers, body).await?;
    let batch: ImportBatch = serde_json::from_slice(&bytes)
        .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, "invalid", format!("body: {e}")))?;
    let ledger = ledger(&state)?;
    // A standby redirects the whole request to the writer, not item by item.
    ledger.check_writer()?;
    let at_line = |line: usize, e: AppError| {
        let (status, body) = e.parts();
        AppError::new(
            status,
            "invalid_line",
            format!(
                "line {line}: {}",
                body["message"].as_str().unwrap_or_default()
            ),
        )
        .with_detail("line", json!(line))
    };
    let mut lines = Vec::with_capacity(batch.items.len());
    for item in batch.items {
        let line = item.line;
        let request = (|| {
            cluster(&item.cluster_id)?;
            let facet: Facet = item.facet.parse()?;
            let ts = parse_time(&item.ts)?;
            let bytes = serde_json::to_vec(&item.state).unwrap_or_default();
            let st = FacetState::from_json(facet, &bytes)?;
            Ok::<_, AppError>(AppendRequest {
                cluster_id: item.cluster_id,
                state: st,
                principal: item.writer,
                expected_version: Some(item.expected_version),
                request_id: Some(item.idempotency_key),
                reason: item.reason,
                ts: Some(ts),
                scope: who.scope.clone(),
                requires: None,
            })
        })()
        .map_err(|e| at_line(line, e))?;
        lines.push(ImportLine { line, request });
    }
    let answers = ledger
        .import_lines(lines, batch.allow_live_history)
        .await
        .map_err(|r| at_line(r.line, r.error.into()))?;
    let results: Vec<Value> = answers
        .into_iter()
        .map(|(line, answer)| match answer {
            ImportAnswer::Imported(a) => {
                json!({"line": line, "status": 201, "imported": true, "body": a})
            }
            ImportAnswer::Already { current_version } => {
                json!({"line": line, "status": 200, "imported": false, "current_version": current_version})
            }
            ImportAnswer::Failed(e) => {
                let (status, body) = AppError::from(e).parts();
                json!({"line": line, "status": status.as_u16(), "body": body})
            }
            ImportAnswer::Skipped => {
                json!({"line": line, "status": 424, "body": {"error": "skipped", "message": "an earlier line of the same cluster failed; fix it and run the import again"}})
            }
        })
        .collect();
    Ok(Json(json!({ "results": results })).into_response())
}
