//! `GET /openapi.json`: the OpenAPI 3.1 document of the `/v1` API, generated from the
//! handlers' `#[utoipa::path]` annotations and the types below. The types describe the
//! bodies the handlers read and answer; `tests/e2e/openapi.rs` runs schemathesis against
//! the running service with this document, which fails on any answer that does not match
//! it (status, content type, body).

use crate::http::error::ERROR_CODES;
use axum::Json;
use std::collections::BTreeMap;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "fleetledger",
        description = "The system of record of a cloud control plane: the desired and actual state of every managed cluster, its history, audit, recovery, and read-only SQL over the projections. Every endpoint takes `Authorization: Bearer <token>`; errors are `{\"error\": code, \"message\": text}`.",
    ),
    paths(
        crate::http::clusters::append,
        crate::http::clusters::delete,
        crate::http::clusters::get_cluster,
        crate::http::clusters::history,
        crate::http::clusters::state_at,
        crate::http::clusters::audit,
        crate::http::clusters::verify,
        crate::http::clusters::recover,
        crate::http::batch::batch,
        crate::http::batch::import,
        crate::http::sql::sql,
        crate::http::watch::watch,
    ),
    components(schemas(
        ErrorBody,
        FacetName,
        Appended,
        FacetNow,
        ClusterNow,
        Record,
        History,
        StateAt,
        TimelineEntry,
        Audit,
        Verified,
        RecoverRequest,
        Recovered,
        BatchItem,
        BatchRequest,
        ItemAnswer,
        BatchAnswer,
        ImportItem,
        ImportRequest,
        ImportLineAnswer,
        ImportAnswer,
        SqlRequest,
        SqlColumn,
        SqlAnswer,
    )),
    modifiers(&BearerToken),
    security(("bearer" = [])),
    tags(
        (name = "clusters", description = "One cluster: write a facet, read its state, history, audit, verify, recover"),
        (name = "changes", description = "Many changes at once: batches and imports"),
        (name = "queries", description = "Read-only SQL and the watch stream"),
    )
)]
pub(crate) struct ApiDoc;

/// Adds the bearer token scheme every endpoint uses.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`fleetledger token create PRINCIPAL`); locally `dev-<principal>`",
                    ))
                    .build(),
            ),
        );
    }
}

/// `GET /openapi.json`.
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Every error: `{"error": code, "message": text}`, the code one of [`ERROR_CODES`], plus
/// fields some errors add (`current_version` of a 409 `version_conflict`, `line` of an
/// import's `invalid_line`).
pub(crate) struct ErrorBody;

impl PartialSchema for ErrorBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property(
                "error",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(ERROR_CODES.iter().copied()))
                    .description(Some("What went wrong, from a closed set of codes")),
            )
            .required("error")
            .property(
                "message",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("What was wrong and what would be right")),
            )
            .required("message")
            .property(
                "current_version",
                ObjectBuilder::new().schema_type(Type::Integer),
            )
            .property("line", ObjectBuilder::new().schema_type(Type::Integer))
            .property(
                "writer",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("On `not_writer`: the writer's URL")),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .into()
    }
}

impl ToSchema for ErrorBody {}

/// The refusals every endpoint may answer, each with an [`ErrorBody`].
pub(crate) struct Refusals;

impl utoipa::IntoResponses for Refusals {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
        [
            ("307", "A write sent to a standby: send it again, unchanged, to `Location` (the same path at the writer, also in `writer`); nothing was written here"),
            ("400", "Invalid input: the message says what was wrong and what would be right; nothing was written"),
            ("401", "No token, or an unknown one"),
            ("403", "The token's principal may not do this, or the cluster is outside its orgs"),
            ("404", "No such cluster"),
            ("409", "A version conflict, or a state the operation does not apply to"),
            ("413", "The body or a record is too large"),
            ("415", "The body is not JSON (`Content-Type: application/json`)"),
            ("422", "An idempotency key reused for a different change"),
            ("429", "Too many queries at once; retry after `Retry-After`"),
            ("503", "Not ready, overloaded, no writer elected yet, or the outcome of a write is unknown (retry with the same Idempotency-Key)"),
            ("504", "A read took longer than `read_timeout_ms`"),
        ]
        .into_iter()
        .map(|(status, description)| {
            let response = ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build();
            (status.to_owned(), RefOr::T(response))
        })
        .collect()
    }
}

/// The cluster a path names.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // describes the `{id}` of the cluster routes
pub(crate) struct ClusterId {
    /// Cluster id: 1-64 lowercase letters, digits and `-`, starting with a letter (the rule
    /// of `fleetledger_schemas::validate_cluster_id`).
    #[param(pattern = "^[a-z][a-z0-9-]{0,63}$")]
    id: String,
}

/// A facet's name.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum FacetName {
    /// The desired state a customer asked for (owned by `frontend`).
    Logical,
    /// The desired physical layout (owned by `physical-controller`).
    Physical,
    /// The desired capacity (owned by `capacity-controller`).
    Capacity,
    /// The actual state observed in the data plane (owned by `sync`).
    Status,
}

/// A record accepted into history.
#[derive(ToSchema)]
#[allow(dead_code)] // describes `fleetledger_ledger::Appended` as the handlers answer it
pub(crate) struct Appended {
    cluster_id: String,
    /// `logical`, `physical`, `capacity` or `status`.
    facet: String,
    /// The facet's new version.
    version: i64,
    /// The record's hash (the next record of the facet chains to it).
    hash: String,
    /// The cluster's partition of the state and history topics.
    partition: i32,
    /// The record's offset in the history topic.
    offset: i64,
    /// When it was accepted (RFC 3339).
    #[schema(format = DateTime)]
    ts: String,
}

/// One facet's current state.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct FacetNow {
    version: i64,
    hash: String,
    #[schema(format = DateTime)]
    ts: String,
    /// The principal that wrote it.
    writer: String,
    /// The facet's state.
    state: Object,
}

/// Free-form JSON object (a facet's state; its Avro schema is in the registry under
/// `/registry/subjects/<prefix>.<facet>-value`).
#[derive(ToSchema)]
#[schema(value_type = Object)]
#[allow(dead_code)]
pub(crate) struct Object(serde_json::Map<String, serde_json::Value>);

/// Every facet's current state.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ClusterNow {
    cluster_id: String,
    /// By facet name.
    facets: BTreeMap<String, FacetNow>,
}

/// One record of history.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Record {
    cluster_id: String,
    facet: String,
    version: i64,
    #[schema(format = DateTime)]
    ts: String,
    writer: String,
    request_id: String,
    reason: Option<String>,
    prev_hash: String,
    hash: String,
    partition: i32,
    offset: i64,
    state: Object,
}

/// A cluster's history, oldest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct History {
    cluster_id: String,
    records: Vec<Record>,
}

/// Every facet as it was at a point.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct StateAt {
    cluster_id: String,
    /// The point asked for (`latest`, a time, or a version).
    point: String,
    /// Whether the cluster was deleted at that point.
    deleted: bool,
    /// Records of the cluster up to the point.
    records_before: i64,
    /// By facet name: the record in force at the point.
    facets: BTreeMap<String, Record>,
}

/// One change with its field-level diff.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct TimelineEntry {
    #[schema(format = DateTime)]
    ts: String,
    facet: String,
    version: i64,
    writer: String,
    request_id: String,
    reason: Option<String>,
    /// `{"field": {"from": old, "to": new}}` against the facet's previous version.
    diff: Object,
    hash: String,
    partition: i32,
    offset: i64,
}

/// A cluster's timeline.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Audit {
    cluster_id: String,
    entries: Vec<TimelineEntry>,
}

/// The check of a cluster's hash chains.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Verified {
    cluster_id: String,
    /// Whether every link held.
    intact: bool,
    /// Records and chains checked, and each broken link.
    report: Object,
}

/// What to restore.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct RecoverRequest {
    /// Restore the state at this time (RFC 3339) ...
    as_of: Option<String>,
    /// ... or at this version (`N` or `FACET:N`); default: just before the deletion.
    version: Option<String>,
    /// Only plan: nothing is written.
    dry_run: Option<bool>,
    /// Recover although the cluster is not deleted.
    force: Option<bool>,
}

/// A recovery's plan and, unless a dry run, what it appended.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Recovered {
    cluster_id: String,
    point: String,
    reason: String,
    dry_run: bool,
    /// The hash-chain check of the history the plan was made from.
    chain: Object,
    /// One entry per restored facet (source version, diff, state).
    facets: Vec<Object>,
    appended: Option<Vec<Appended>>,
}

/// One change of a batch.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct BatchItem {
    cluster_id: String,
    facet: String,
    state: Object,
    expected_version: Option<i64>,
    idempotency_key: Option<String>,
    reason: Option<String>,
}

/// Changes answered each on its own.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct BatchRequest {
    /// At most 10,000.
    items: Vec<BatchItem>,
}

/// One item's answer: the status and body a single request would have had.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ItemAnswer {
    status: u16,
    /// An [`Appended`] record (201) or an error body.
    body: Object,
}

/// One answer per item, in order.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct BatchAnswer {
    results: Vec<ItemAnswer>,
}

/// One line of an import file.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ImportItem {
    line: u64,
    #[schema(format = DateTime)]
    ts: String,
    cluster_id: String,
    facet: String,
    /// The principal that wrote it originally (it must own the facet).
    writer: String,
    reason: Option<String>,
    state: Object,
    expected_version: i64,
    idempotency_key: String,
}

/// Lines of an import.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ImportRequest {
    items: Vec<ImportItem>,
    /// Import even into cluster+facets whose history was written live.
    allow_live_history: Option<bool>,
}

/// One line's answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ImportLineAnswer {
    line: u64,
    /// 201 imported, 200 already there, 424 skipped after an earlier failure, or an error.
    status: u16,
    imported: Option<bool>,
    current_version: Option<i64>,
    body: Option<Object>,
}

/// One answer per line.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ImportAnswer {
    results: Vec<ImportLineAnswer>,
}

/// One read-only statement.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SqlRequest {
    /// At most `queries.max_sql_bytes`.
    sql: String,
}

/// A column of an answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SqlColumn {
    name: String,
    /// The Arrow type.
    r#type: String,
}

/// An answer as JSON rows.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SqlAnswer {
    columns: Vec<SqlColumn>,
    /// One object per row, by column name.
    rows: Vec<Object>,
    row_count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_covers_every_v1_route_with_its_refusals_and_the_bearer_scheme() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        let routes = crate::http::V1_ROUTES;
        let mut listed: Vec<&str> = paths.keys().map(String::as_str).collect();
        listed.sort();
        let mut want: Vec<&str> = routes.to_vec();
        want.sort();
        assert_eq!(listed, want);
        for (path, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                assert!(op["responses"]["401"].is_object(), "{method} {path}");
                assert!(
                    op["summary"].is_string() || op["description"].is_string(),
                    "{method} {path}"
                );
            }
        }
        let id = &doc["paths"]["/v1/clusters/{id}"]["get"]["parameters"][0];
        assert_eq!(id["name"], "id");
        assert_eq!(id["in"], "path");
        assert_eq!(id["schema"]["pattern"], "^[a-z][a-z0-9-]{0,63}$");
        let codes = &doc["components"]["schemas"]["ErrorBody"]["properties"]["error"]["enum"];
        assert_eq!(codes.as_array().unwrap().len(), ERROR_CODES.len());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
