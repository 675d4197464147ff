//! `fleetledger serve`: binds the HTTP API, makes sure the topics exist (creating or
//! checking them), loads the embedded schema registry from its topic, registers the
//! facet subjects, and becomes ready. Shutdown is injected as a `CancellationToken`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::routing::post;
use fleetledger_ledger::{
    Clock, KafkaClients, KafkaRegistryJournal, Ledger, LedgerConfig, LedgerSetup, Ownership,
    SystemClock, Tokens, TopicLayout,
};
use fleetledger_projectors::{Projector, ProjectorConfig, ServiceViews};
use fleetledger_queries::{QueryEngine, QueryLimits};
use fleetledger_registry::{Compatibility, SchemaRegistry};
use fleetledger_schemas::RecordCodec;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::Config;

/// An error as every endpoint of ours answers it: `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    code: &'static str,
    message: String,
    detail: serde_json::Map<String, serde_json::Value>,
}

impl AppError {
    /// An error with a status, a stable code and a human message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
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
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}

/// Shared state of the HTTP handlers.
#[derive(Debug)]
pub struct AppState {
    clients: KafkaClients,
    layout: TopicLayout,
    pub(crate) tokens: Tokens,
    pub(crate) ledger: OnceLock<Ledger>,
    pub(crate) projector: OnceLock<Projector>,
    pub(crate) queries: OnceLock<QueryEngine>,
    pub(crate) max_body_bytes: usize,
    started: AtomicBool,
    registry: OnceLock<Router>,
    startup_error: Mutex<Option<String>>,
}

/// The service's routes over `state`, without a socket (tests call it with `oneshot`).
pub fn app(state: Arc<AppState>) -> Router {
    let registry_state = state.clone();
    let registry = tower::service_fn(move |req: Request<Body>| {
        let state = registry_state.clone();
        async move {
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
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/clusters/{id}/{facet}", post(crate::api::append))
        .route(
            "/v1/clusters/{id}",
            get(crate::api::get_cluster).delete(crate::api::delete),
        )
        .route("/v1/clusters/{id}/history", get(crate::api::history))
        .route("/v1/clusters/{id}/state", get(crate::api::state_at))
        .route("/v1/clusters/{id}/audit", get(crate::api::audit))
        .route("/v1/clusters/{id}/verify", get(crate::api::verify))
        .route("/v1/clusters/{id}/recover", post(crate::api::recover))
        .route("/v1/batch", post(crate::api::batch))
        .route("/v1/import", post(crate::api::import))
        .route("/v1/sql", post(crate::api::sql))
        .layer(axum::middleware::from_fn(trace_request))
        .nest_service("/registry", registry)
        .with_state(state)
}

/// One `tracing` span per request, with method, path and, at the end, status and time.
async fn trace_request(req: Request<Body>, next: axum::middleware::Next) -> Response {
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
    if response.status().is_server_error() {
        tracing::warn!(parent: &span, status = response.status().as_u16(), "request failed");
    }
    response
}

/// Prometheus text format: readiness, fencing and projector lag per partition.
async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    use std::fmt::Write as _;
    let mut out = String::new();
    let ready = u8::from(state.started.load(Ordering::Acquire));
    let _ = writeln!(
        out,
        "# HELP fleetledger_ready 1 once start-up finished.\n# TYPE fleetledger_ready gauge\nfleetledger_ready {ready}"
    );
    let fenced = state.ledger.get().map_or(0, |l| u8::from(l.is_fenced()));
    let _ = writeln!(
        out,
        "# HELP fleetledger_ledger_fenced 1 once another writer fenced this one.\n# TYPE fleetledger_ledger_fenced gauge\nfleetledger_ledger_fenced {fenced}"
    );
    if let Some(p) = state.projector.get() {
        let _ = writeln!(
            out,
            "# HELP fleetledger_projector_lag_records History records not yet applied, per partition.\n# TYPE fleetledger_projector_lag_records gauge"
        );
        let _ = writeln!(
            out,
            "# HELP fleetledger_projector_stopped 1 for a partition stopped at an undecodable record.\n# TYPE fleetledger_projector_stopped gauge"
        );
        for (partition, _) in p.stopped() {
            let _ = writeln!(
                out,
                "fleetledger_projector_stopped{{partition=\"{partition}\"}} 1"
            );
        }
        for (partition, lag) in p.lag() {
            let _ = writeln!(
                out,
                "fleetledger_projector_lag_records{{partition=\"{partition}\"}} {lag}"
            );
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, AppError> {
    if let Some(e) = state.startup_error.lock().ok().and_then(|e| e.clone()) {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "startup_failed",
            e,
        ));
    }
    if !state.started.load(Ordering::Acquire) {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "starting: waiting for Kafka, the topics and the schema registry",
        ));
    }
    if let Some(l) = state.ledger.get().filter(|l| !l.is_writable()) {
        let why = if l.is_fenced() {
            "fenced: another writer with the same transactional id took over"
        } else {
            "the writer is re-connecting to Kafka after a failed transaction; writes answer 503 until it has"
        };
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            why,
        ));
    }
    match state.layout.all_exist(&state.clients).await {
        Ok(true) => Ok(axum::Json(json!({"status": "ready"}))),
        Ok(false) => Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "a topic of the layout is missing ({}, {}, {})",
                state.layout.state, state.layout.history, state.layout.schemas
            ),
        )),
        Err(e) => Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_unavailable",
            format!("Kafka does not answer: {e}"),
        )),
    }
}

/// A started server.
#[derive(Debug)]
pub struct RunningServer {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// Its state, for readiness checks in tests.
    pub state: Arc<AppState>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
}

impl RunningServer {
    /// The projector, once start-up finished.
    pub fn projector(&self) -> Option<&Projector> {
        self.state.projector.get()
    }

    /// Whether start-up finished (topics ensured, registry loaded, subjects registered).
    pub fn is_started(&self) -> bool {
        self.state.started.load(Ordering::Acquire)
    }

    /// Waits until the server is ready, or fails with the start-up error or after `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(e) = self.state.startup_error.lock().ok().and_then(|e| e.clone()) {
                anyhow::bail!("start-up failed: {e}");
            }
            if self.is_started() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("not ready after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until shutdown was requested and every task finished (at most the configured
    /// shutdown timeout after the request). Returns the start-up error, if start-up failed.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        self.tracker.close();
        if tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?self.shutdown_timeout, "tasks still running at shutdown timeout");
        }
        match self.state.startup_error.lock().ok().and_then(|e| e.clone()) {
            Some(e) => anyhow::bail!("start-up failed: {e}"),
            None => Ok(()),
        }
    }
}

/// Binds `config.listen` and starts serving; start-up (topics, registry) continues in the
/// background and `/readyz` answers 200 once it is done. Cancel `shutdown` to stop.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<RunningServer> {
    start_with_clock(config, Arc::new(SystemClock), shutdown).await
}

/// [`start`] with an injected clock (tests control record times with it).
pub async fn start_with_clock(
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningServer> {
    let ownership = match &config.auth.ownership_file {
        Some(f) => Ownership::from_file(f)?,
        None => Ownership::default(),
    };
    let tokens = match &config.auth.tokens_file {
        Some(f) => Tokens::from_file(f)?,
        None => {
            tracing::warn!("no tokens file configured: using development tokens dev-<principal>");
            Tokens::development(&ownership)
        }
    };
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let clients = KafkaClients::new(config.kafka.clone());
    let layout = TopicLayout::new(&config.kafka);
    let state = Arc::new(AppState {
        clients,
        layout,
        tokens,
        ledger: OnceLock::new(),
        projector: OnceLock::new(),
        queries: OnceLock::new(),
        max_body_bytes: config.max_body_bytes,
        started: AtomicBool::new(false),
        registry: OnceLock::new(),
        startup_error: Mutex::new(None),
    });
    let tracker = TaskTracker::new();
    let router = app(state.clone());
    let stop = shutdown.clone();
    tracker.spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server failed");
        }
    });
    tracing::info!(%addr, "listening");

    let registry_url = config.schema_registry_url.clone();
    let serves_registry = config.serves_registry();
    let st = state.clone();
    let stop = shutdown.clone();
    let ledger_config = config.ledger.clone();
    let projector_config = config.projector.clone();
    let views = match &config.queries.views_file {
        Some(f) => ServiceViews::from_file(f).map_err(|e| anyhow::anyhow!(e))?,
        None => ServiceViews::default(),
    };
    let limits = QueryLimits {
        timeout: Duration::from_millis(config.queries.timeout_ms),
        max_rows: config.queries.max_rows,
    };
    let writer_tracker = tracker.clone();
    tracker.spawn(async move {
        let deps = LedgerDeps {
            ownership,
            clock,
            config: ledger_config,
            projector: projector_config,
            views,
            limits,
            tracker: writer_tracker,
        };
        let startup = start_up(&st, serves_registry, registry_url.as_deref(), deps, &stop);
        tokio::select! {
            _ = stop.cancelled() => {}
            r = startup => match r {
                Ok(()) => {
                    st.started.store(true, Ordering::Release);
                    tracing::info!("ready");
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    tracing::error!(error = %text, "start-up failed; shutting down");
                    if let Ok(mut slot) = st.startup_error.lock() {
                        *slot = Some(text);
                    }
                    stop.cancel();
                }
            }
        }
    });

    Ok(RunningServer {
        addr,
        state,
        tracker,
        shutdown,
        shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
    })
}

/// Retries `op` while it fails with a retriable error: exponential backoff from 200 ms to
/// 5 s, a log line per failure, at most `attempts` tries.
async fn with_retries<T, F, Fut>(what: &str, attempts: u32, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, fleetledger_ledger::Error>>,
{
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=attempts {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retriable() && attempt < attempts => {
                tracing::warn!(attempt, error = %e, "{what} failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(anyhow::Error::new(e).context(what.to_owned())),
        }
    }
    anyhow::bail!("{what}: no attempt was made")
}

/// The embedded registry, loaded from its Kafka topic.
async fn load_embedded_registry(
    clients: &KafkaClients,
    layout: &TopicLayout,
) -> anyhow::Result<Arc<SchemaRegistry>> {
    let entries = with_retries("loading the schema registry", 30, || {
        KafkaRegistryJournal::load(clients, &layout.schemas)
    })
    .await?;
    let journal = Arc::new(KafkaRegistryJournal::new(clients, &layout.schemas)?);
    let count = entries.len();
    let registry = SchemaRegistry::new(journal, entries, Compatibility::Backward);
    tracing::info!(entries = count, "schema registry loaded");
    Ok(Arc::new(registry))
}

/// The codec of a command that runs without `serve` (`project`, `audit --verify`, …): over
/// the external registry, or over the embedded one loaded from its topic in this process
/// (no server is started for it).
pub async fn codec_for_command(config: &Config) -> anyhow::Result<RecordCodec> {
    if !config.serves_registry() {
        return Ok(fleetledger_registry::http_codec(&config.registry_url())?);
    }
    let clients = KafkaClients::new(config.kafka.clone());
    let layout = TopicLayout::new(&config.kafka);
    let registry = load_embedded_registry(&clients, &layout).await?;
    Ok(RecordCodec::with_source(registry))
}

/// What the ledger needs beyond the shared state.
struct LedgerDeps {
    ownership: Ownership,
    clock: Arc<dyn Clock>,
    config: LedgerConfig,
    projector: ProjectorConfig,
    views: ServiceViews,
    limits: QueryLimits,
    tracker: TaskTracker,
}

async fn start_up(
    state: &AppState,
    serves_registry: bool,
    registry_url: Option<&str>,
    deps: LedgerDeps,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // About two minutes of retries: long enough for a broker that is still starting.
    let report = with_retries("creating or checking topics", 30, || {
        state.layout.ensure(&state.clients)
    })
    .await?;
    tracing::info!(?report, "topics ready");
    // The codec reads the embedded registry in process; only an external registry is
    // reached over HTTP.
    let codec = match registry_url {
        Some(url) if !serves_registry => fleetledger_registry::http_codec(url)?,
        _ => {
            let registry = load_embedded_registry(&state.clients, &state.layout).await?;
            if serves_registry {
                let _ = state
                    .registry
                    .set(fleetledger_registry::http::router(registry.clone()));
            }
            RecordCodec::with_source(registry)
        }
    };
    let ids = codec
        .register_subjects()
        .await
        .context("registering the facet schemas")?;
    tracing::info!(?ids, "facet subjects registered");
    let codec = Arc::new(codec);
    // The projections load their checkpoints (a second or so for a million audit rows)
    // on a blocking thread while the ledger rebuilds its index from the state topic:
    // start-up takes the longer of the two, not their sum.
    let loading = {
        let (clients, layout, codec) = (state.clients.clone(), state.layout.clone(), codec.clone());
        let config = deps.projector.clone();
        tokio::task::spawn_blocking(move || Projector::open(clients, layout, codec, config))
    };
    let ledger = with_retries("opening the ledger", 30, || {
        Ledger::open(
            LedgerSetup {
                clients: state.clients.clone(),
                layout: state.layout.clone(),
                codec: codec.clone(),
                ownership: deps.ownership.clone(),
                clock: deps.clock.clone(),
                config: deps.config.clone(),
            },
            shutdown.clone(),
            &deps.tracker,
        )
    })
    .await?;
    let _ = state.ledger.set(ledger);
    let projector = loading
        .await
        .context("loading the projection checkpoints")??;
    let running = projector.clone();
    let stop = shutdown.clone();
    deps.tracker.spawn(async move {
        if let Err(e) = running.run(stop).await {
            tracing::error!(error = %e, "projections stopped; the API keeps serving writes");
        }
    });
    let clock = deps.clock.clone();
    let engine = QueryEngine::new(
        projector.projections(),
        &deps.views,
        Arc::new(move || clock.now().timestamp_millis()),
        deps.limits,
    )?;
    let _ = state.queries.set(engine);
    let _ = state.projector.set(projector);
    Ok(())
}
