//! The `/v1` HTTP API of the ledger: appends, deletion, current state and history. Handlers
//! only translate HTTP to `fleetledger_ledger` calls and back; every error becomes an
//! [`AppError`] in [`From<ledger::Error>`], the one place statuses are chosen.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetledger_ledger::import::{ImportAnswer, ImportLine};
use fleetledger_ledger::principals::{IMPORT, RECOVERY};
use fleetledger_ledger::{
    AppendRequest, Appended, ClusterHistory, DeleteRequest, Error as LedgerError, HistoryEntry,
    Ledger, Point, parse_time,
};
use fleetledger_schemas::diff::field_diff;
use fleetledger_schemas::{Facet, FacetState, validate_cluster_id};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::server::{AppError, AppState};

impl From<LedgerError> for AppError {
    fn from(e: LedgerError) -> Self {
        let (status, code) = match &e {
            LedgerError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            LedgerError::Conflict { .. } => (StatusCode::CONFLICT, "version_conflict"),
            LedgerError::IdempotencyMismatch { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            LedgerError::TimeBackwards { .. } => (StatusCode::BAD_REQUEST, "time_backwards"),
            LedgerError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            LedgerError::InvalidPoint(_) => (StatusCode::BAD_REQUEST, "invalid_point"),
            LedgerError::NotDeleted { .. } => (StatusCode::CONFLICT, "not_deleted"),
            LedgerError::BrokenChain(_) => (StatusCode::CONFLICT, "broken_chain"),
            LedgerError::Schema(fleetledger_schemas::Error::Invalid { .. }) => {
                (StatusCode::BAD_REQUEST, "invalid")
            }
            LedgerError::Schema(fleetledger_schemas::Error::UnknownFacet(_)) => {
                (StatusCode::BAD_REQUEST, "unknown_facet")
            }
            LedgerError::Config(_) => (StatusCode::BAD_REQUEST, "invalid"),
            LedgerError::Fenced => (StatusCode::SERVICE_UNAVAILABLE, "fenced"),
            e if e.is_retriable() => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let mut err = AppError::new(status, code, e.to_string());
        if let LedgerError::Conflict { current, .. } = e {
            err = err.with_detail("current_version", json!(current));
        }
        err
    }
}

impl From<fleetledger_schemas::Error> for AppError {
    fn from(e: fleetledger_schemas::Error) -> Self {
        LedgerError::Schema(e).into()
    }
}

/// The principal of the request's bearer token, or 401.
fn principal(state: &AppState, headers: &HeaderMap) -> Result<String, AppError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            AppError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing bearer token: send Authorization: Bearer <token>",
            )
        })?;
    state
        .tokens
        .principal(token.trim())
        .map(str::to_owned)
        .ok_or_else(|| AppError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token"))
}

fn ledger(state: &AppState) -> Result<&Ledger, AppError> {
    state.ledger.get().ok_or_else(|| {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the ledger is still starting (waiting for Kafka and the index rebuild)",
        )
    })
}

fn cluster(id: &str) -> Result<(), AppError> {
    validate_cluster_id(id).map_err(AppError::from)
}

fn expected_version(headers: &HeaderMap) -> Result<Option<i64>, AppError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim().trim_matches('"');
    text.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(Some)
        .ok_or_else(|| {
            AppError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("If-Match must be a version number (0 = must not exist yet), got {text:?}"),
            )
        })
}

fn text_header(headers: &HeaderMap, name: &str, max: usize) -> Result<Option<String>, AppError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("{name} must be visible ASCII"),
        )
    })?;
    if s.is_empty() || s.len() > max {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("{name} must be 1-{max} characters, got {}", s.len()),
        ));
    }
    Ok(Some(s.to_owned()))
}

async fn json_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, AppError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return Err(AppError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("the body must be JSON: send Content-Type: application/json, got {ct:?}"),
        ));
    }
    axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| {
            AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the body is larger than the limit of {} bytes",
                    state.max_body_bytes
                ),
            )
        })
}

fn created(a: &Appended) -> Response {
    let mut r = (StatusCode::CREATED, Json(json!(a))).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("\"{}\"", a.version)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// The headers of a change: `If-Match`, `Idempotency-Key`, `X-Reason`.
struct ChangeHeaders {
    expected: Option<i64>,
    key: Option<String>,
    reason: Option<String>,
}

impl ChangeHeaders {
    fn read(headers: &HeaderMap) -> Result<Self, AppError> {
        Ok(ChangeHeaders {
            expected: expected_version(headers)?,
            key: text_header(headers, "idempotency-key", 200)?,
            reason: text_header(headers, "x-reason", 1000)?,
        })
    }

    /// The request that appends `state` for `principal` with these headers.
    fn request(self, cluster_id: String, state: FacetState, principal: String) -> AppendRequest {
        AppendRequest {
            cluster_id,
            state,
            principal,
            expected_version: self.expected,
            request_id: self.key,
            reason: self.reason,
            ts: None,
        }
    }
}

/// 403 unless `principal` may write `facet` (checked before the body is read).
fn authorise(ledger: &Ledger, principal: &str, facet: Facet) -> Result<(), AppError> {
    if ledger.ownership().may_write(principal, facet) {
        return Ok(());
    }
    Err(LedgerError::Forbidden {
        principal: principal.to_owned(),
        facet,
        owner: ledger.ownership().owner(facet).to_owned(),
    }
    .into())
}

/// `POST /v1/clusters/{id}/{facet}`.
pub(crate) async fn append(
    State(state): State<Arc<AppState>>,
    Path((id, facet)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let principal = principal(&state, &headers)?;
    cluster(&id)?;
    let facet: Facet = facet.parse()?;
    let change = ChangeHeaders::read(&headers)?;
    let ledger = ledger(&state)?;
    authorise(ledger, &principal, facet)?;
    let bytes = json_body(&state, &headers, body).await?;
    let facet_state = FacetState::from_json(facet, &bytes)?;
    let appended = ledger
        .append(change.request(id, facet_state, principal))
        .await?;
    Ok(created(&appended))
}

/// `DELETE /v1/clusters/{id}`: the logical facet becomes `deleted: true`, decided by the
/// ledger against the state current when the delete is admitted ([`Ledger::delete`]).
/// Deleting a deleted cluster writes nothing and answers 200 with the current version.
pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let principal = principal(&state, &headers)?;
    cluster(&id)?;
    let change = ChangeHeaders::read(&headers)?;
    let ledger = ledger(&state)?;
    authorise(ledger, &principal, Facet::Logical)?;
    let outcome = ledger
        .delete(DeleteRequest {
            cluster_id: id,
            principal,
            expected_version: change.expected,
            request_id: change.key,
            reason: change.reason,
        })
        .await?;
    if outcome.written {
        Ok(created(&outcome.appended))
    } else {
        Ok((StatusCode::OK, Json(json!(outcome.appended))).into_response())
    }
}

/// `GET /v1/clusters/{id}`: every facet's current state and version.
pub(crate) async fn get_cluster(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    principal(&state, &headers)?;
    cluster(&id)?;
    let current = ledger(&state)?.current(&id).await;
    if current.is_empty() {
        return Err(LedgerError::NotFound(id).into());
    }
    let facets: serde_json::Map<String, Value> = current
        .iter()
        .map(|(f, h)| {
            (
                f.as_str().to_owned(),
                json!({
                    "version": h.record.meta.version,
                    "hash": h.record.meta.hash,
                    "ts": h.record.meta.ts,
                    "writer": h.record.meta.writer,
                    "state": h.record.state.to_json(),
                }),
            )
        })
        .collect();
    Ok(Json(json!({"cluster_id": id, "facets": facets})).into_response())
}

/// The cluster's history, fetched with the `audit_log` projection as index when it runs
/// (only the cluster's offsets and the unindexed tail are read), or by reading its whole
/// partition before the projections started. 404 when nothing is known about it.
async fn cluster_history(state: &AppState, id: &str) -> Result<ClusterHistory, AppError> {
    let ledger = ledger(state)?;
    let hint = match state.projector.get() {
        Some(p) => Some(p.history_hint(id, ledger.partition_of(id)).await),
        None => None,
    };
    let history = ledger.history(id, hint.as_ref()).await?;
    if history.is_empty() {
        return Err(LedgerError::NotFound(id.to_owned()).into());
    }
    Ok(history)
}

/// The query parameters `pairs` as a map, refusing any not in `allowed` (a misspelt filter must
/// not silently widen an answer).
fn query_params(
    pairs: Vec<(String, String)>,
    allowed: &[&str],
) -> Result<std::collections::BTreeMap<String, String>, AppError> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!(
                    "unknown query parameter {k:?}: expected one of {}",
                    allowed.join(", ")
                ),
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// The point named by `as_of` or `version` (at most one), else `default`.
fn point_of(as_of: Option<&str>, version: Option<&str>, default: Point) -> Result<Point, AppError> {
    match (as_of, version) {
        (Some(_), Some(_)) => Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "give as_of or version, not both",
        )),
        (Some(t), None) => Ok(Point::parse_as_of(t)?),
        (None, Some(v)) => Ok(Point::parse_version(v)?),
        (None, None) => Ok(default),
    }
}

fn record_json(e: &HistoryEntry) -> Value {
    let r = &e.record;
    json!({
        "cluster_id": r.meta.cluster_id,
        "facet": r.facet(),
        "version": r.meta.version,
        "ts": r.meta.ts,
        "writer": r.meta.writer,
        "request_id": r.meta.request_id,
        "reason": r.meta.reason,
        "prev_hash": r.meta.prev_hash,
        "hash": r.meta.hash,
        "partition": e.partition,
        "offset": e.offset,
        "state": r.state.to_json(),
    })
}

/// `GET /v1/clusters/{id}/history`: every accepted record of the cluster, oldest first.
pub(crate) async fn history(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    principal(&state, &headers)?;
    cluster(&id)?;
    let history = cluster_history(&state, &id).await?;
    let items: Vec<Value> = history.entries().iter().map(record_json).collect();
    Ok(Json(json!({"cluster_id": id, "records": items})).into_response())
}

/// `GET /v1/clusters/{id}/state?as_of=TIME|version=N`: every facet as it was at that
/// point (default: now), reconstructed from history.
pub(crate) async fn state_at(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, AppError> {
    principal(&state, &headers)?;
    cluster(&id)?;
    let q = query_params(pairs, &["as_of", "version"])?;
    let point = point_of(
        q.get("as_of").map(String::as_str),
        q.get("version").map(String::as_str),
        Point::Latest,
    )?;
    let history = cluster_history(&state, &id).await?;
    let at = history.state_at(point)?;
    let facets: serde_json::Map<String, Value> = at
        .facets
        .iter()
        .map(|(f, e)| (f.as_str().to_owned(), record_json(e)))
        .collect();
    Ok(Json(json!({
        "cluster_id": id,
        "point": point.to_string(),
        "deleted": at.is_deleted(),
        "records_before": at.records,
        "facets": facets,
    }))
    .into_response())
}

/// `GET /v1/clusters/{id}/audit?since=T&until=T&facet=F`: the timeline with field-level
/// diffs, oldest first.
pub(crate) async fn audit(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, AppError> {
    principal(&state, &headers)?;
    cluster(&id)?;
    let q = query_params(pairs, &["since", "until", "facet"])?;
    let since = q.get("since").map(|t| parse_time(t)).transpose()?;
    let until = q.get("until").map(|t| parse_time(t)).transpose()?;
    let facet: Option<Facet> = q.get("facet").map(|f| f.parse()).transpose()?;
    let history = cluster_history(&state, &id).await?;
    let entries: Vec<_> = history
        .timeline()
        .into_iter()
        .filter(|e| since.is_none_or(|s| e.ts >= s))
        .filter(|e| until.is_none_or(|u| e.ts <= u))
        .filter(|e| facet.is_none_or(|f| e.facet == f))
        .collect();
    Ok(Json(json!({"cluster_id": id, "entries": entries})).into_response())
}

/// `GET /v1/clusters/{id}/verify`: checks the cluster's hash chains; 200 with the report
/// either way (`intact` says whether every link held).
pub(crate) async fn verify(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    principal(&state, &headers)?;
    cluster(&id)?;
    let history = cluster_history(&state, &id).await?;
    let report = history.verify();
    Ok(Json(json!({
        "cluster_id": id,
        "intact": report.is_intact(),
        "report": report,
    }))
    .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RecoverRequest {
    #[serde(default)]
    as_of: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    force: bool,
}

/// `POST /v1/clusters/{id}/recover` with `{as_of?, version?, dry_run?, force?}`, as the
/// `recovery` principal: restores every desired facet to its state at the point (default:
/// just before the deletion) through the normal append path. 200 with the plan on a dry
/// run, 201 with the plan and the appended records otherwise.
pub(crate) async fn recover(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let principal = principal(&state, &headers)?;
    cluster(&id)?;
    if principal != RECOVERY {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("principal {principal} may not recover clusters: only {RECOVERY} may"),
        ));
    }
    let bytes = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| {
            AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is too large",
            )
        })?;
    let req: RecoverRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        RecoverRequest::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            AppError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!(
                    "body must be {{\"as_of\"?: TIME, \"version\"?: \"N\" or \"FACET:N\", \"dry_run\"?: bool, \"force\"?: bool}}: {e}"
                ),
            )
        })?
    };
    let point = point_of(
        req.as_of.as_deref(),
        req.version.as_deref(),
        Point::BeforeDeletion,
    )?;
    let history = cluster_history(&state, &id).await?;
    let plan = history.plan_recovery(point, req.force)?;
    let facets: Vec<Value> = plan
        .facets
        .iter()
        .map(|f| {
            let current = f.current.as_ref().map(FacetState::to_json);
            json!({
                "facet": f.facet,
                "source_version": f.source_version,
                "source_ts": f.source_ts,
                "current_version": f.current_version,
                "unchanged": f.unchanged,
                "diff": field_diff(current.as_ref(), &f.state.to_json()),
                "state": f.state.to_json(),
            })
        })
        .collect();
    let mut answer = json!({
        "cluster_id": id,
        "point": plan.point,
        "reason": plan.reason,
        "dry_run": req.dry_run,
        "chain": plan.chain,
        "facets": facets,
    });
    if req.dry_run {
        return Ok(Json(answer).into_response());
    }
    let appended = ledger(&state)?.recover(&plan).await?;
    answer["appended"] = json!(appended);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    cluster_id: String,
    facet: String,
    state: Value,
    #[serde(default)]
    expected_version: Option<i64>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    items: Vec<BatchItem>,
}

/// Most items in one `POST /v1/batch`.
pub(crate) const MAX_BATCH_ITEMS: usize = 10_000;

/// `POST /v1/batch`: `{"items": [{cluster_id, facet, state, expected_version?,
/// idempotency_key?, reason?}]}` → `{"results": [{"status", "body"}]}`, one per item in
/// order; each item succeeds or fails on its own.
pub(crate) async fn batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let principal = principal(&state, &headers)?;
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
                principal: principal.clone(),
                expected_version: item.expected_version,
                request_id: item.idempotency_key,
                reason: item.reason,
                ts: None,
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
struct ImportItem {
    line: usize,
    ts: String,
    cluster_id: String,
    facet: String,
    #[serde(alias = "principal")]
    writer: String,
    #[serde(default)]
    reason: Option<String>,
    state: Value,
    expected_version: i64,
    idempotency_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportBatch {
    items: Vec<ImportItem>,
}

/// `POST /v1/import`, as the `import` principal: `{"items": [{line, ts, cluster_id, facet,
/// writer, reason?, state, expected_version, idempotency_key}]}` (`principal` is accepted
/// for `writer`, the name older files used). Every item is checked first (cluster id,
/// facet, state, time, and that its writer owns the facet); the first bad one refuses the
/// whole batch with its line number and nothing is written. Then each cluster's items are
/// appended one after the other in the order of their times (ties in line order), with
/// their original time and writer; a failed line skips the cluster's later lines.
/// An item whose version already exists (a resumed import) answers `imported: false`.
pub(crate) async fn import(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let principal = principal(&state, &headers)?;
    if principal != IMPORT {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("principal {principal} may not import history: only {IMPORT} may"),
        ));
    }
    let bytes = json_body(&state, &headers, body).await?;
    let batch: ImportBatch = serde_json::from_slice(&bytes)
        .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, "invalid", format!("body: {e}")))?;
    let ledger = ledger(&state)?;
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
            })
        })()
        .map_err(|e| at_line(line, e))?;
        lines.push(ImportLine { line, request });
    }
    let answers = ledger
        .import_lines(lines)
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

impl From<fleetledger_queries::Error> for AppError {
    fn from(e: fleetledger_queries::Error) -> Self {
        use fleetledger_queries::Error as Q;
        let (status, code) = match &e {
            Q::NotReadOnly(_) => (StatusCode::BAD_REQUEST, "not_read_only"),
            Q::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            Q::Timeout { .. } => (StatusCode::BAD_REQUEST, "query_timeout"),
            Q::TooManyRows { .. } => (StatusCode::BAD_REQUEST, "too_many_rows"),
            Q::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        AppError::new(status, code, e.to_string())
    }
}

/// Media type of an Arrow IPC stream.
pub(crate) const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// `POST /v1/sql` with `{"sql": "…"}`: JSON rows (default), CSV (`Accept: text/csv`) or an
/// Arrow IPC stream (`Accept: application/vnd.apache.arrow.stream`). Any principal.
pub(crate) async fn sql(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    principal(&state, &headers)?;
    let bytes = json_body(&state, &headers, body).await?;
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
    let out = engine.query(&req.sql).await?;
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
