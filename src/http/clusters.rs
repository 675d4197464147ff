//! `/v1/clusters/{id}…`: append, delete, current state, history, state at a point, audit,
//! verification and recovery of one cluster. Each handler parses, calls one ledger
//! operation and answers; the rules are the ledger's.

use crate::http::error::AppError;
use crate::http::request::*;
use crate::http::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use fleetledger_ledger::ClusterHistory;
use fleetledger_ledger::DeleteRequest;
use fleetledger_ledger::Error as LedgerError;
use fleetledger_ledger::HistoryEntry;
use fleetledger_ledger::Point;
use fleetledger_ledger::Scope;
use fleetledger_ledger::parse_time;
use fleetledger_ledger::principals::Operation;
use fleetledger_schemas::Facet;
use fleetledger_schemas::FacetState;
use fleetledger_schemas::diff::field_diff;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;
use std::sync::Arc;

#[utoipa::path(
    post,
    path = "/v1/clusters/{id}/{facet}",
    tag = "clusters",
    summary = "Write a facet's new state",
    description = "Appends the facet's whole new state as the next version, if the token's principal owns the facet (and the cluster's org is in its scope). `If-Match: N` makes it conditional on the current version (0: must not exist yet); an `Idempotency-Key` makes a retry answer the original outcome.",
    params(
        crate::http::openapi::ClusterId,
        ("facet" = crate::http::openapi::FacetName, Path, description = "The facet"),
        ("If-Match" = Option<String>, Header, description = "Expected current version (0: the facet must not exist yet)"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key answers the same outcome"),
        ("X-Reason" = Option<String>, Header, description = "Why (kept in history)"),
    ),
    request_body(content = crate::http::openapi::Object, description = "The facet's whole state (its Avro schema is in the registry)", content_type = "application/json"),
    responses(
        (status = 201, description = "Accepted into history", body = crate::http::openapi::Appended),
        crate::http::openapi::Refusals,
    )
)]
/// `POST /v1/clusters/{id}/{facet}`.
pub(crate) async fn append(
    State(state): State<Arc<AppState>>,
    Path((id, facet)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let who = caller(&state, &headers, &id)?;
    let facet: Facet = facet.parse()?;
    let change = ChangeHeaders::read(&headers)?;
    let ledger = ledger(&state)?;
    authorise(ledger, &who.principal, facet)?;
    let bytes = json_body(&state, &headers, body).await?;
    let facet_state = FacetState::from_json(facet, &bytes)?;
    let appended = ledger.append(change.request(id, facet_state, who)).await?;
    Ok(created(&appended))
}

#[utoipa::path(
    delete,
    path = "/v1/clusters/{id}",
    tag = "clusters",
    summary = "Delete a cluster",
    description = "Writes the logical facet with `deleted: true`. Deleting a deleted cluster writes nothing and answers 200 with the current version.",
    params(
        crate::http::openapi::ClusterId,
        ("If-Match" = Option<String>, Header, description = "Expected current version of the logical facet"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe"),
        ("X-Reason" = Option<String>, Header, description = "Why (kept in history)"),
    ),
    responses(
        (status = 201, description = "Deleted", body = crate::http::openapi::Appended),
        (status = 200, description = "Already deleted; nothing written", body = crate::http::openapi::Appended),
        crate::http::openapi::Refusals,
    )
)]
/// `DELETE /v1/clusters/{id}`: the logical facet becomes `deleted: true`, decided by the
/// ledger against the state current when the delete is admitted ([`Ledger::delete`]).
/// Deleting a deleted cluster writes nothing and answers 200 with the current version.
pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let who = caller(&state, &headers, &id)?;
    let change = ChangeHeaders::read(&headers)?;
    let ledger = ledger(&state)?;
    authorise(ledger, &who.principal, Facet::Logical)?;
    let outcome = ledger
        .delete(DeleteRequest {
            cluster_id: id,
            principal: who.principal,
            expected_version: change.expected,
            request_id: change.key,
            reason: change.reason,
            scope: who.scope,
        })
        .await?;
    if outcome.written {
        Ok(created(&outcome.appended))
    } else {
        Ok((StatusCode::OK, Json(json!(outcome.appended))).into_response())
    }
}

#[utoipa::path(
    get,
    path = "/v1/clusters/{id}",
    tag = "clusters",
    summary = "Every facet's current state",
    params(crate::http::openapi::ClusterId),
    responses(
        (status = 200, description = "The current state", body = crate::http::openapi::ClusterNow),
        crate::http::openapi::Refusals,
    )
)]
/// `GET /v1/clusters/{id}`: every facet's current state and version.
pub(crate) async fn get_cluster(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let who = caller(&state, &headers, &id)?;
    let ledger = ledger(&state)?;
    ledger.visible(&id, &who.scope).await?;
    let current = ledger.current(&id).await;
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
/// partition before the projections started. 404 when nothing is known about it, or
/// when `scope` does not see it.
pub(crate) async fn cluster_history(
    state: &AppState,
    id: &str,
    scope: &Scope,
) -> Result<ClusterHistory, AppError> {
    let ledger = ledger(state)?;
    ledger.visible(id, scope).await?;
    let started = std::time::Instant::now();
    let hint = match state.projector.get() {
        Some(p) => Some(p.history_hint(id, ledger.partition_of(id)).await),
        None => None,
    };
    let hinted = started.elapsed();
    let history = ledger.history(id, hint.as_ref()).await?;
    tracing::debug!(
        hint_ms = hinted.as_secs_f64() * 1e3,
        read_ms = (started.elapsed() - hinted).as_secs_f64() * 1e3,
        "cluster history"
    );
    if history.is_empty() {
        return Err(LedgerError::NotFound(id.to_owned()).into());
    }
    Ok(history)
}

pub(crate) fn record_json(e: &HistoryEntry) -> Value {
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

#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/history",
    tag = "clusters",
    summary = "Every accepted record of the cluster, oldest first",
    params(crate::http::openapi::ClusterId),
    responses(
        (status = 200, description = "The history", body = crate::http::openapi::History),
        crate::http::openapi::Refusals,
    )
)]
/// `GET /v1/clusters/{id}/history`: every accepted record of the cluster, oldest first.
pub(crate) async fn history(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let who = caller(&state, &headers, &id)?;
    let history = cluster_history(&state, &id, &who.scope).await?;
    let items: Vec<Value> = history.entries().iter().map(record_json).collect();
    Ok(Json(json!({"cluster_id": id, "records": items})).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/state",
    tag = "clusters",
    summary = "Every facet as it was at a point",
    params(
        crate::http::openapi::ClusterId,
        ("as_of" = Option<String>, Query, description = "A time (RFC 3339); default now"),
        ("version" = Option<String>, Query, description = "Instead of a time: `N` or `FACET:N`"),
    ),
    responses(
        (status = 200, description = "The state at the point", body = crate::http::openapi::StateAt),
        crate::http::openapi::Refusals,
    )
)]
/// `GET /v1/clusters/{id}/state?as_of=TIME|version=N`: every facet as it was at that
/// point (default: now), reconstructed from history.
pub(crate) async fn state_at(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, AppError> {
    let who = caller(&state, &headers, &id)?;
    let q = query_params(pairs, &["as_of", "version"])?;
    let point = point_of(
        q.get("as_of").map(String::as_str),
        q.get("version").map(String::as_str),
        Point::Latest,
    )?;
    let history = cluster_history(&state, &id, &who.scope).await?;
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

#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/audit",
    tag = "clusters",
    summary = "The cluster's timeline with field-level diffs",
    params(
        crate::http::openapi::ClusterId,
        ("since" = Option<String>, Query, description = "From this time (RFC 3339)"),
        ("until" = Option<String>, Query, description = "Up to this time (RFC 3339)"),
        ("facet" = Option<crate::http::openapi::FacetName>, Query, description = "Only this facet"),
    ),
    responses(
        (status = 200, description = "The timeline, oldest first", body = crate::http::openapi::Audit),
        crate::http::openapi::Refusals,
    )
)]
/// `GET /v1/clusters/{id}/audit?since=T&until=T&facet=F`: the timeline with field-level
/// diffs, oldest first.
pub(crate) async fn audit(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, AppError> {
    let who = caller(&state, &headers, &id)?;
    let q = query_params(pairs, &["since", "until", "facet"])?;
    let since = q.get("since").map(|t| parse_time(t)).transpose()?;
    let until = q.get("until").map(|t| parse_time(t)).transpose()?;
    let facet: Option<Facet> = q.get("facet").map(|f| f.parse()).transpose()?;
    let history = cluster_history(&state, &id, &who.scope).await?;
    let entries: Vec<_> = history
        .timeline()
        .into_iter()
        .filter(|e| since.is_none_or(|s| e.ts >= s))
        .filter(|e| until.is_none_or(|u| e.ts <= u))
        .filter(|e| facet.is_none_or(|f| e.facet == f))
        .collect();
    Ok(Json(json!({"cluster_id": id, "entries": entries})).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/verify",
    tag = "clusters",
    summary = "Check the cluster's hash chains",
    params(crate::http::openapi::ClusterId),
    responses(
        (status = 200, description = "The report, intact or not", body = crate::http::openapi::Verified),
        crate::http::openapi::Refusals,
    )
)]
/// `GET /v1/clusters/{id}/verify`: checks the cluster's hash chains; 200 with the report
/// either way (`intact` says whether every link held).
pub(crate) async fn verify(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let who = caller(&state, &headers, &id)?;
    let history = cluster_history(&state, &id, &who.scope).await?;
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
pub(crate) struct RecoverRequest {
    #[serde(default)]
    as_of: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    force: bool,
}

#[utoipa::path(
    post,
    path = "/v1/clusters/{id}/recover",
    tag = "clusters",
    summary = "Restore a cluster's desired state from its history",
    description = "As the `recovery` principal: restores every desired facet to its state at the point (default: just before the deletion) through the normal append path.",
    params(crate::http::openapi::ClusterId),
    request_body(content = crate::http::openapi::RecoverRequest, description = "Empty, or the point and options", content_type = "application/json"),
    responses(
        (status = 200, description = "The plan of a dry run; nothing written", body = crate::http::openapi::Recovered),
        (status = 201, description = "The plan and the appended records", body = crate::http::openapi::Recovered),
        crate::http::openapi::Refusals,
    )
)]
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
    let who = caller(&state, &headers, &id)?;
    Operation::Recover.check(&who.principal)?;
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
    let history = cluster_history(&state, &id, &who.scope).await?;
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
    let appended = ledger(&state)?.recover(&plan, &who.scope).await?;
    answer["appended"] = json!(appended);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}
