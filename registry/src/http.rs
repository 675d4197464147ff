//! The Confluent Schema Registry REST API over [`SchemaRegistry`]: the endpoints
//! `schema_registry_converter` uses plus subjects, versions, config and compatibility.
//! Status codes and `{"error_code", "message"}` bodies follow Confluent's registry.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Compatibility, RegistryError, SchemaRegistry};

/// The media type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Request media types the registry accepts, as Confluent's does.
const ACCEPTED: &[&str] = &[
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
    "application/octet-stream",
];

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        reply(
            status,
            json!({"error_code": self.error_code, "message": self.message}),
        )
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

fn ok(body: Value) -> Result<Response, RegistryError> {
    Ok(reply(StatusCode::OK, body))
}

/// Checks the content type and parses the JSON body.
fn body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<T, RegistryError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !ACCEPTED.contains(&media.as_str()) {
        return Err(RegistryError {
            status: 415,
            error_code: 415,
            message: format!(
                "HTTP 415 Unsupported Media Type: got {ct:?}, expected one of {}",
                ACCEPTED.join(", ")
            ),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| RegistryError {
        status: 400,
        error_code: 400,
        message: format!("malformed JSON body: {e}"),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    #[serde(default)]
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Value>>,
}

impl SchemaRequest {
    fn avro_schema(&self) -> Result<&str, RegistryError> {
        if let Some(t) = self
            .schema_type
            .as_ref()
            .filter(|t| !t.eq_ignore_ascii_case("AVRO"))
        {
            return Err(RegistryError::invalid_schema(&format!(
                "schemaType {t} is not supported by this registry: only AVRO"
            )));
        }
        if self.references.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(RegistryError::invalid_schema(
                "schema references are not supported by this registry",
            ));
        }
        if self.schema.trim().is_empty() {
            return Err(RegistryError::invalid_schema("empty schema"));
        }
        Ok(&self.schema)
    }
}

#[derive(Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

type Reg = State<Arc<SchemaRegistry>>;

async fn subjects(State(r): Reg) -> Result<Response, RegistryError> {
    ok(json!(r.subjects().await))
}

async fn versions(State(r): Reg, Path(s): Path<String>) -> Result<Response, RegistryError> {
    ok(json!(r.versions(&s).await?))
}

async fn register(
    State(r): Reg,
    Path(s): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, RegistryError> {
    let req: SchemaRequest = body(&headers, &bytes)?;
    let id = r.register(&s, req.avro_schema()?).await?;
    ok(json!({ "id": id }))
}

async fn lookup(
    State(r): Reg,
    Path(s): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, RegistryError> {
    let req: SchemaRequest = body(&headers, &bytes)?;
    let v = r.lookup(&s, req.avro_schema()?).await?;
    ok(json!({"subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema}))
}

async fn version(
    State(r): Reg,
    Path((s, v)): Path<(String, String)>,
) -> Result<Response, RegistryError> {
    let v = r.version(&s, &v).await?;
    ok(json!({"subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema}))
}

async fn version_schema(
    State(r): Reg,
    Path((s, v)): Path<(String, String)>,
) -> Result<Response, RegistryError> {
    let v = r.version(&s, &v).await?;
    let raw: Value = serde_json::from_str(&v.schema).unwrap_or(Value::String(v.schema));
    ok(raw)
}

async fn schema_by_id(State(r): Reg, Path(id): Path<String>) -> Result<Response, RegistryError> {
    let id: u32 = id
        .parse()
        .map_err(|_| RegistryError::schema_not_found(&id))?;
    ok(json!({ "schema": r.schema_by_id(id).await? }))
}

async fn get_global_config(State(r): Reg) -> Result<Response, RegistryError> {
    ok(json!({ "compatibilityLevel": r.global_config().await }))
}

async fn put_global_config(
    State(r): Reg,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, RegistryError> {
    let req: ConfigRequest = body(&headers, &bytes)?;
    let level = Compatibility::parse(&req.compatibility)?;
    r.set_config(None, level).await?;
    ok(json!({ "compatibility": level }))
}

async fn get_config(State(r): Reg, Path(s): Path<String>) -> Result<Response, RegistryError> {
    match r.subject_config(&s).await {
        Some(level) => ok(json!({ "compatibilityLevel": level })),
        None => Err(RegistryError::subject_config_not_found(&s)),
    }
}

async fn put_config(
    State(r): Reg,
    Path(s): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, RegistryError> {
    let req: ConfigRequest = body(&headers, &bytes)?;
    let level = Compatibility::parse(&req.compatibility)?;
    r.set_config(Some(&s), level).await?;
    ok(json!({ "compatibility": level }))
}

async fn compatibility(
    State(r): Reg,
    Path((s, v)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, RegistryError> {
    let req: SchemaRequest = body(&headers, &bytes)?;
    match r.is_compatible(&s, &v, req.avro_schema()?).await? {
        Ok(()) => ok(json!({ "is_compatible": true })),
        Err(why) => ok(json!({ "is_compatible": false, "messages": [why] })),
    }
}

async fn compatibility_latest(
    state: Reg,
    Path(s): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, RegistryError> {
    compatibility(state, Path((s, "latest".to_owned())), headers, bytes).await
}

async fn not_found() -> RegistryError {
    RegistryError {
        status: 404,
        error_code: 404,
        message: "HTTP 404 Not Found".into(),
    }
}

/// The registry's routes, to be nested under a prefix (e.g. `/registry`).
pub fn router(registry: Arc<SchemaRegistry>) -> Router {
    Router::new()
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/config", get(get_global_config).put(put_global_config))
        .route("/config/{subject}", get(get_config).put(put_config))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_latest),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility),
        )
        .fallback(not_found)
        .with_state(registry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryJournal;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        ct: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn wrong_content_type_is_415_and_stores_nothing() {
        let journal = Arc::new(MemoryJournal::default());
        let app = router(Arc::new(SchemaRegistry::new(
            journal.clone(),
            [],
            Compatibility::Backward,
        )));
        let body = json!({"schema": "\"string\""}).to_string();
        let (st, v) = call(
            &app,
            "POST",
            "/subjects/x/versions",
            Some("text/plain"),
            &body,
        )
        .await;
        assert_eq!((st, v["error_code"].as_u64()), (415, Some(415)));
        assert!(journal.entries().is_empty());
        let (st, v) = call(
            &app,
            "POST",
            "/subjects/x/versions",
            Some(CONTENT_TYPE),
            &body,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let (st, v) = call(&app, "GET", "/subjects/nope/versions", None, "").await;
        assert_eq!((st, v["error_code"].as_u64()), (404, Some(40401)));
        let (st, v) = call(
            &app,
            "POST",
            "/subjects/x/versions",
            Some("application/json"),
            "{\"schema\": \"{bad\"}",
        )
        .await;
        assert_eq!((st, v["error_code"].as_u64()), (422, Some(42201)));
        assert_eq!(journal.entries().len(), 1);
    }
}
