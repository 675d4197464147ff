//! The HTTP client of fleetledger's API, shared by the command line and the benchmarks:
//! every call talks to a running `fleetledger serve` over the same API as any other
//! client. Answers are the server's JSON; a refusal is [`ClientError::Api`] with the
//! status and the server's `{"error", "message"}`.

pub mod history_file;
pub mod import;
pub mod render;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where an accepted change is: the answer to an append or a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// Cluster.
    pub cluster_id: String,
    /// Facet.
    pub facet: String,
    /// The version it got (or has, for a repeat).
    pub version: i64,
    /// Its hash.
    pub hash: String,
    /// The cluster's partition of both topics.
    pub partition: i32,
    /// Its offset in the history topic.
    pub offset: i64,
    /// Its event time.
    pub ts: DateTime<Utc>,
}

/// One line's answer to `POST /v1/import`: 201 imported now, 200 already in the ledger,
/// anything else refused (with the server's error in `body`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportLineAnswer {
    /// The line's number in the file.
    pub line: usize,
    /// Its status.
    pub status: u16,
    /// The cluster+facet's version, for a line that was already there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
    /// Where it was written (201), or the error (4xx/5xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// The answer to `POST /v1/import`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportAnswer {
    /// One per line sent, by line number.
    pub results: Vec<ImportLineAnswer>,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or its answer not read.
    #[error("cannot reach fleetledger at {url}: {source}")]
    Unreachable {
        /// The API's URL.
        url: String,
        /// What the HTTP client said.
        source: reqwest::Error,
    },
    /// The server refused the request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Input that cannot be sent (a malformed file, an unknown format).
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The HTTP status of a refusal, if the server answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(e) => Some(e.status),
            _ => None,
        }
    }
}

/// `Result` with [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Where the API is and who we are.
#[derive(Debug, Clone)]
pub struct ApiClient {
    url: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// An answer that was not a success: the status and the server's JSON error.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The error body.
    pub body: Value,
}

impl std::error::Error for ApiError {}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msg = self
            .body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("");
        let code = self
            .body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("error");
        write!(f, "{} {code}: {msg}", self.status)
    }
}

impl ApiClient {
    /// A client for the API at `url` (e.g. `http://127.0.0.1:7070`).
    pub fn new(url: &str, token: Option<String>) -> Self {
        ApiClient {
            url: url.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status >= 400 {
            return Err(ApiError { status, body }.into());
        }
        Ok(body)
    }

    /// `POST /v1/clusters/{cluster}/{facet}` with the JSON of `file`.
    pub async fn append(
        &self,
        cluster: &str,
        facet: &str,
        file: &Path,
        expect: Option<i64>,
        key: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Appended> {
        let body = std::fs::read(file).map_err(|source| ClientError::Io {
            path: file.to_owned(),
            source,
        })?;
        let mut req = self
            .http
            .post(format!("{}/v1/clusters/{cluster}/{facet}", self.url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(n) = expect {
            req = req.header("if-match", n.to_string());
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        if let Some(r) = reason {
            req = req.header("x-reason", r);
        }
        typed(self.send(req).await?)
    }

    /// `GET /v1/clusters/{cluster}`.
    pub async fn get(&self, cluster: &str) -> Result<Value> {
        self.send(self.http.get(format!("{}/v1/clusters/{cluster}", self.url)))
            .await
    }

    /// `GET /v1/clusters/{cluster}/history`.
    pub async fn history(&self, cluster: &str) -> Result<Value> {
        self.send(
            self.http
                .get(format!("{}/v1/clusters/{cluster}/history", self.url)),
        )
        .await
    }

    /// `GET /v1/clusters/{cluster}/state` at `as_of` or `version` (default: now).
    pub async fn state(
        &self,
        cluster: &str,
        as_of: Option<&str>,
        version: Option<&str>,
    ) -> Result<Value> {
        let mut query = Vec::new();
        if let Some(t) = as_of {
            query.push(("as_of", t));
        }
        if let Some(v) = version {
            query.push(("version", v));
        }
        let url = reqwest::Url::parse_with_params(
            &format!("{}/v1/clusters/{cluster}/state", self.url),
            &query,
        )
        .map_err(|e| ClientError::Invalid(format!("cannot form the request's URL: {e}")))?;
        self.send(self.http.get(url)).await
    }

    /// `GET /v1/clusters/{cluster}/audit` between `since` and `until`, of one facet or all.
    pub async fn audit(
        &self,
        cluster: &str,
        since: Option<&str>,
        until: Option<&str>,
        facet: Option<&str>,
    ) -> Result<Value> {
        let query: Vec<(&str, &str)> = [("since", since), ("until", until), ("facet", facet)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        let url = reqwest::Url::parse_with_params(
            &format!("{}/v1/clusters/{cluster}/audit", self.url),
            &query,
        )
        .map_err(|e| ClientError::Invalid(format!("cannot form the request's URL: {e}")))?;
        self.send(self.http.get(url)).await
    }

    /// `GET /v1/clusters/{cluster}/verify`.
    pub async fn verify(&self, cluster: &str) -> Result<Value> {
        self.send(
            self.http
                .get(format!("{}/v1/clusters/{cluster}/verify", self.url)),
        )
        .await
    }

    /// `POST /v1/clusters/{cluster}/recover` with `{as_of?, version?, dry_run, force}`.
    pub async fn recover(
        &self,
        cluster: &str,
        as_of: Option<&str>,
        version: Option<&str>,
        dry_run: bool,
        force: bool,
    ) -> Result<Value> {
        self.send(
            self.http
                .post(format!("{}/v1/clusters/{cluster}/recover", self.url))
                .json(&serde_json::json!({
                    "as_of": as_of,
                    "version": version,
                    "dry_run": dry_run,
                    "force": force,
                })),
        )
        .await
    }

    /// `POST /v1/import` with `items`.
    pub async fn import(&self, items: &[Value]) -> Result<ImportAnswer> {
        self.import_with(items, false).await
    }

    /// `POST /v1/import` with `items`, importing even into cluster+facets whose history
    /// was written live when `allow_live_history` is set.
    pub async fn import_with(
        &self,
        items: &[Value],
        allow_live_history: bool,
    ) -> Result<ImportAnswer> {
        typed(
            self.send(self.http.post(format!("{}/v1/import", self.url)).json(
                &serde_json::json!({ "items": items, "allow_live_history": allow_live_history }),
            ))
            .await?,
        )
    }

    /// `POST /v1/sql`, answered in `format`: `json`, `csv`, or `arrow` (an Arrow IPC
    /// stream, which `fleetledger_queries::ipc_to_table` renders as a table). The answer's
    /// bytes as the server sent them.
    pub async fn sql(&self, sql: &str, format: &str) -> Result<Vec<u8>> {
        let accept = match format {
            "json" => "application/json",
            "csv" => "text/csv",
            "arrow" => "application/vnd.apache.arrow.stream",
            other => {
                return Err(ClientError::Invalid(format!(
                    "unknown format {other:?}: expected json, csv or arrow"
                )));
            }
        };
        let mut req = self
            .http
            .post(format!("{}/v1/sql", self.url))
            .header("accept", accept)
            .json(&serde_json::json!({ "sql": sql }));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if status >= 400 {
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(ApiError { status, body }.into());
        }
        Ok(bytes.to_vec())
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.url.clone(),
            source,
        }
    }

    /// `DELETE /v1/clusters/{cluster}`.
    pub async fn delete(&self, cluster: &str, reason: Option<&str>) -> Result<Appended> {
        let mut req = self
            .http
            .delete(format!("{}/v1/clusters/{cluster}", self.url));
        if let Some(r) = reason {
            req = req.header("x-reason", r);
        }
        typed(self.send(req).await?)
    }
}

/// An answer read as its type; a server that answers another shape is
/// [`ClientError::Invalid`].
fn typed<T: DeserializeOwned>(answer: Value) -> Result<T> {
    serde_json::from_value(answer)
        .map_err(|e| ClientError::Invalid(format!("the server's answer does not read: {e}")))
}
