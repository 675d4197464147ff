//! What handlers read from a request, in one place: the principal of the bearer token,
//! the cluster id, `If-Match`, `Idempotency-Key`, `X-Reason`, the JSON body, query
//! parameters, and the 201 answer with its `ETag`.

use crate::http::error::AppError;
use crate::http::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use fleetledger_ledger::AppendRequest;
use fleetledger_ledger::Appended;
use fleetledger_ledger::Caller;
use fleetledger_ledger::Error as LedgerError;
use fleetledger_ledger::Ledger;
use fleetledger_ledger::Point;
use fleetledger_ledger::{MAX_REASON_BYTES, MAX_REQUEST_ID_BYTES};
use fleetledger_schemas::Facet;
use fleetledger_schemas::FacetState;
use fleetledger_schemas::validate_cluster_id;
use serde_json::json;

/// Who the request's bearer token is (principal and scope), or 401.
pub(crate) fn authenticated(state: &AppState, headers: &HeaderMap) -> Result<Caller, AppError> {
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
        .caller(token.trim())
        .cloned()
        .ok_or_else(|| AppError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token"))
}

/// The principal of the request's bearer token, or 401.
pub(crate) fn principal(state: &AppState, headers: &HeaderMap) -> Result<String, AppError> {
    authenticated(state, headers).map(|c| c.principal)
}

/// Who asks about cluster `id`: 401 without a known token, 400 for an id that is not a
/// cluster id.
pub(crate) fn caller(state: &AppState, headers: &HeaderMap, id: &str) -> Result<Caller, AppError> {
    let c = authenticated(state, headers)?;
    cluster(id)?;
    Ok(c)
}

pub(crate) fn ledger(state: &AppState) -> Result<&Ledger, AppError> {
    state.ledger.get().ok_or_else(|| {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the ledger is still starting (waiting for Kafka and the index rebuild): this request did nothing; retry it (with the same Idempotency-Key) after Retry-After",
        )
    })
}

pub(crate) fn cluster(id: &str) -> Result<(), AppError> {
    validate_cluster_id(id).map_err(AppError::from)
}

pub(crate) fn expected_version(headers: &HeaderMap) -> Result<Option<i64>, AppError> {
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

pub(crate) fn text_header(
    headers: &HeaderMap,
    name: &str,
    max: usize,
) -> Result<Option<String>, AppError> {
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

/// The JSON body, at most `max_body_bytes` (413 past it, 415 if it is not JSON).
pub(crate) async fn json_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, AppError> {
    json_body_within(headers, body, state.max_body_bytes).await
}

/// The JSON body, at most `limit` bytes (an endpoint whose bodies are small by nature
/// reads no more than that).
pub(crate) async fn json_body_within(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
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
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than this endpoint's limit of {limit} bytes"),
        )
    })
}

pub(crate) fn created(a: &Appended) -> Response {
    let mut r = (StatusCode::CREATED, Json(json!(a))).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("\"{}\"", a.version)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// The headers of a change: `If-Match`, `Idempotency-Key`, `X-Reason`.
pub(crate) struct ChangeHeaders {
    pub(crate) expected: Option<i64>,
    pub(crate) key: Option<String>,
    pub(crate) reason: Option<String>,
}

impl ChangeHeaders {
    pub(crate) fn read(headers: &HeaderMap) -> Result<Self, AppError> {
        Ok(ChangeHeaders {
            expected: expected_version(headers)?,
            key: text_header(headers, "idempotency-key", MAX_REQUEST_ID_BYTES)?,
            reason: text_header(headers, "x-reason", MAX_REASON_BYTES)?,
        })
    }

    /// The request that appends `state` for `caller` with these headers.
    pub(crate) fn request(
        self,
        cluster_id: String,
        state: FacetState,
        caller: Caller,
    ) -> AppendRequest {
        AppendRequest {
            cluster_id,
            state,
            principal: caller.principal,
            expected_version: self.expected,
            request_id: self.key,
            reason: self.reason,
            ts: None,
            scope: caller.scope,
            requires: None,
        }
    }
}

/// 403 unless `principal` may write `facet` (checked before the body is read).
pub(crate) fn authorise(ledger: &Ledger, principal: &str, facet: Facet) -> Result<(), AppError> {
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

/// The query parameters `pairs` as a map, refusing any not in `allowed` (a misspelt filter must
/// not silently widen an answer).
pub(crate) fn query_params(
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
pub(crate) fn point_of(
    as_of: Option<&str>,
    version: Option<&str>,
    default: Point,
) -> Result<Point, AppError> {
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
