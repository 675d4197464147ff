//! The one error type of the HTTP API: every failure becomes `{"error": code, "message"}`
//! with the right status, the code from a closed set, mapped in one place from the
//! libraries' typed errors.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use fleetledger_ledger::Error as LedgerError;
use serde_json::json;

/// Every code an error may carry (the OpenAPI document's enum of `error`). A code not in
/// it panics in debug builds, so a test that reaches it fails.
pub(crate) const ERROR_CODES: [&str; 37] = [
    "broken_chain",
    "fenced",
    "forbidden",
    "idempotency_key_reused",
    "import_differs",
    "internal",
    "invalid",
    "invalid_line",
    "invalid_point",
    "invalid_query",
    "invalid_time",
    "kafka_unavailable",
    "live_history",
    "no_writer",
    "not_deleted",
    "not_found",
    "not_read_only",
    "not_writer",
    "not_ready",
    "out_of_scope",
    "outcome_unknown",
    "overloaded",
    "payload_too_large",
    "query_memory_limit",
    "query_timeout",
    "query_too_complex",
    "skipped",
    "startup_failed",
    "time_backwards",
    "timeout",
    "too_many_queries",
    "too_many_rows",
    "unauthorized",
    "unavailable",
    "unknown_facet",
    "unsupported_media_type",
    "version_conflict",
];

/// An error as every endpoint of ours answers it: `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct AppError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) detail: serde_json::Map<String, serde_json::Value>,
}

impl AppError {
    /// An error with a status, a stable code and a human message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            ERROR_CODES.contains(&code),
            "error code {code:?} is not in ERROR_CODES"
        );
        AppError {
            status,
            code,
            message: message.into(),
            detail: serde_json::Map::new(),
        }
    }

    /// Adds a machine-readable field to the body (e.g. `current_version` of a 409).
    pub fn with_detail(mut self, key: &str, value: serde_json::Value) -> Self {
        self.detail.insert(key.to_owned(), value);
        self
    }

    /// The status and the JSON body.
    pub fn parts(&self) -> (StatusCode, serde_json::Value) {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        for (k, v) in &self.detail {
            body.insert(k.clone(), v.clone());
        }
        (self.status, serde_json::Value::Object(body))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, body) = self.parts();
        let mut r = (status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::TEMPORARY_REDIRECT
            && let Some(url) = self.detail.get("writer").and_then(|w| w.as_str())
        {
            r.extensions_mut().insert(WriterLocation(url.to_owned()));
        }
        r
    }
}

/// The writer's URL on a `not_writer` answer: [`crate::http::redirect_to_writer`] makes it
/// the `Location` of the request's path and query there.
#[derive(Debug, Clone)]
pub(crate) struct WriterLocation(pub(crate) String);

impl From<LedgerError> for AppError {
    fn from(e: LedgerError) -> Self {
        let (status, code) = match &e {
            LedgerError::ImportTime { .. } => (StatusCode::BAD_REQUEST, "invalid_time"),
            LedgerError::LiveHistory { .. } => (StatusCode::CONFLICT, "live_history"),
            LedgerError::ImportDiffers { .. } => (StatusCode::CONFLICT, "import_differs"),
            LedgerError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            LedgerError::Forbidden { .. } | LedgerError::OperationForbidden { .. } => {
                (StatusCode::FORBIDDEN, "forbidden")
            }
            LedgerError::OutOfScope { .. } => (StatusCode::FORBIDDEN, "out_of_scope"),
            LedgerError::Conflict { .. } => (StatusCode::CONFLICT, "version_conflict"),
            LedgerError::IdempotencyMismatch { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            LedgerError::TimeBackwards { .. } => (StatusCode::BAD_REQUEST, "time_backwards"),
            LedgerError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            LedgerError::InvalidPoint(_) => (StatusCode::BAD_REQUEST, "invalid_point"),
            LedgerError::NotDeleted { .. } => (StatusCode::CONFLICT, "not_deleted"),
            LedgerError::PrecedingNotWritten { .. } => (StatusCode::FAILED_DEPENDENCY, "skipped"),
            LedgerError::BrokenChain(_) => (StatusCode::CONFLICT, "broken_chain"),
            LedgerError::Schema(fleetledger_schemas::Error::Invalid { .. }) => {
                (StatusCode::BAD_REQUEST, "invalid")
            }
            LedgerError::Schema(fleetledger_schemas::Error::UnknownFacet(_)) => {
                (StatusCode::BAD_REQUEST, "unknown_facet")
            }
            LedgerError::Config(_) => (StatusCode::BAD_REQUEST, "invalid"),
            LedgerError::Fenced => (StatusCode::SERVICE_UNAVAILABLE, "fenced"),
            LedgerError::NotWriter { writer: Some(_) } => {
                (StatusCode::TEMPORARY_REDIRECT, "not_writer")
            }
            LedgerError::NotWriter { writer: None } => {
                (StatusCode::SERVICE_UNAVAILABLE, "no_writer")
            }
            LedgerError::OutcomeUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
            e if e.is_retriable() => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let mut err = AppError::new(status, code, e.to_string());
        if let LedgerError::Conflict { current, .. } = e {
            err = err.with_detail("current_version", json!(current));
        }
        if let LedgerError::NotWriter {
            writer: Some(url), ..
        } = &e
        {
            err = err.with_detail("writer", json!(url));
        }
        err
    }
}

impl From<fleetledger_schemas::Error> for AppError {
    fn from(e: fleetledger_schemas::Error) -> Self {
        LedgerError::Schema(e).into()
    }
}

impl From<fleetledger_queries::Error> for AppError {
    fn from(e: fleetledger_queries::Error) -> Self {
        use fleetledger_queries::Error as Q;
        let (status, code) = match &e {
            Q::NotReadOnly(_) => (StatusCode::BAD_REQUEST, "not_read_only"),
            Q::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            Q::Timeout { .. } => (StatusCode::BAD_REQUEST, "query_timeout"),
            Q::TooManyRows { .. } => (StatusCode::BAD_REQUEST, "too_many_rows"),
            Q::MemoryLimit { .. } => (StatusCode::BAD_REQUEST, "query_memory_limit"),
            Q::TooComplex(_) => (StatusCode::BAD_REQUEST, "query_too_complex"),
            Q::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_queries"),
            Q::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        AppError::new(status, code, e.to_string())
    }
}
