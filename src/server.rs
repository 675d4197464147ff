//! `fleetledger serve`: binds the HTTP API, makes sure the topics exist (creating or
//! checking them), loads the embedded schema registry from its topic, registers the
//! facet subjects, and becomes ready. Shutdown is injected as a `CancellationToken`.

use crate::config::Config;
use crate::http::AppState;
use crate::http::app;
use anyhow::Context;
use fleetledger_ledger::Clock;
use fleetledger_ledger::KafkaClients;
use fleetledger_ledger::KafkaRegistryJournal;
use fleetledger_ledger::Ledger;
use fleetledger_ledger::LedgerConfig;
use fleetledger_ledger::LedgerSetup;
use fleetledger_ledger::Ownership;
use fleetledger_ledger::SystemClock;
use fleetledger_ledger::Tokens;
use fleetledger_ledger::TopicLayout;
use fleetledger_projectors::Projector;
use fleetledger_projectors::ProjectorConfig;
use fleetledger_projectors::ServiceViews;
use fleetledger_queries::QueryEngine;
use fleetledger_queries::QueryLimits;
use fleetledger_registry::Compatibility;
use fleetledger_registry::SchemaRegistry;
use fleetledger_schemas::RecordCodec;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A started server.
#[derive(Debug)]
pub struct RunningServer {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The address of the PostgreSQL protocol, if `pg_listen` is set.
    pub pg_addr: Option<SocketAddr>,
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

/// The tokens the service accepts: those of the tokens file; or, without one, the
/// development tokens, only if asked for and only on a loopback address.
fn tokens_of(config: &Config, ownership: &Ownership) -> anyhow::Result<Tokens> {
    if let Some(f) = &config.auth.tokens_file {
        return Ok(Tokens::from_file(f)?);
    }
    let on_loopback = |listen: &str| {
        listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
            || listen.starts_with("localhost:")
    };
    let loopback = on_loopback(&config.listen)
        && (config.pg_listen.is_empty() || on_loopback(&config.pg_listen));
    match (config.auth.development_tokens, loopback) {
        (true, true) => {
            tracing::warn!(
                "development tokens dev-<principal> are accepted (auth.development_tokens, loopback only)"
            );
            Ok(Tokens::development(ownership))
        }
        (true, false) => anyhow::bail!(
            "development tokens are refused on {} (PostgreSQL protocol: {}): they are for a service on loopback (127.0.0.1) only; configure auth.tokens_file",
            config.listen,
            config.pg_listen
        ),
        (false, _) => anyhow::bail!(
            "no tokens file: set auth.tokens_file (FLEETLEDGER_AUTH__TOKENS_FILE) to a file of token hashes (fleetledger token create PRINCIPAL makes one), or, on loopback only, auth.development_tokens = true"
        ),
    }
}

/// [`start`] with an injected clock (tests control record times with it).
pub async fn start_with_clock(
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningServer> {
    // A wrong TLS/SASL combination stops the start here, with what would be right, before
    // any client tries to connect with it.
    config.kafka.security.client_settings()?;
    let ownership = match &config.auth.ownership_file {
        Some(f) => Ownership::from_file(f)?,
        None => Ownership::default(),
    };
    let tokens = tokens_of(&config, &ownership)?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let pg_listener = match config.pg_listen.as_str() {
        "" => None,
        a => Some(TcpListener::bind(a).await.with_context(|| {
            format!(
                "cannot listen on {a} for the PostgreSQL protocol (pg_listen; empty turns it off)"
            )
        })?),
    };
    let pg_addr = pg_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let clients = KafkaClients::new(config.kafka.clone());
    let layout = TopicLayout::new(&config.kafka);
    let ledger_metrics = fleetledger_ledger::metrics::LedgerMetrics::default();
    let query_metrics = fleetledger_queries::QueryMetrics::default();
    let state = Arc::new(AppState {
        clients,
        layout,
        tokens,
        ledger: OnceLock::new(),
        projector: OnceLock::new(),
        queries: OnceLock::new(),
        max_body_bytes: config.max_body_bytes,
        requests: Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_requests.max(1),
        )),
        max_requests: config.max_concurrent_requests.max(1),
        watches: Arc::new(tokio::sync::Semaphore::new(config.max_watches.max(1))),
        max_watches: config.max_watches.max(1),
        read_timeout: std::time::Duration::from_millis(config.read_timeout_ms),
        started: AtomicBool::new(false),
        registry: OnceLock::new(),
        startup_error: Mutex::new(None),
        metrics: crate::http::metrics::ServiceMetrics::new(&ledger_metrics, &query_metrics),
        ledger_metrics,
        query_metrics,
        shutdown: shutdown.clone(),
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
    if let Some(pg) = pg_listener {
        tracing::info!(addr = ?pg_addr, "PostgreSQL protocol listening");
        crate::postgres::serve(
            pg,
            state.clone(),
            config.pg_max_connections,
            shutdown.clone(),
            &tracker,
        );
    }

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
    let q = &config.queries;
    let limits = QueryLimits {
        timeout: Duration::from_millis(q.timeout_ms),
        max_rows: q.max_rows,
        memory_limit_mib: q.memory_limit_mib,
        metadata_cache_mib: q.metadata_cache_mib,
        max_concurrent: q.max_concurrent,
        queue_wait: Duration::from_millis(q.queue_wait_ms),
        max_sql_bytes: q.max_sql_bytes,
        max_depth: q.max_depth,
        max_operators: q.max_operators,
    };
    let writer_tracker = tracker.clone();
    let advertised_url = config
        .advertised_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    tracker.spawn(async move {
        let deps = LedgerDeps {
            advertised_url,
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
                    // Once ready, not before: it does not hold the start up.
                    if let Some(projector) = st.projector.get() {
                        let sharing = std::time::Instant::now();
                        let shared = projector.share_head_states().await;
                        tracing::debug!(
                            shared,
                            took_ms = sharing.elapsed().as_millis() as u64,
                            "projection states shared with the ledger's index"
                        );
                    }
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
        pg_addr,
        state,
        tracker,
        shutdown,
        // Shutdown never cuts a commit: it waits at least as long as a commit may take
        // (three request timeouts) and then resolving its outcome may.
        shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms)
            .max(config.kafka.request_timeout() * 3 + Duration::from_secs(5)),
    })
}

/// Retries `op` while it fails with a retriable error: exponential backoff from 200 ms to
/// 5 s, a log line per failure, at most `attempts` tries.
pub(crate) async fn with_retries<T, F, Fut>(
    what: &str,
    attempts: u32,
    mut op: F,
) -> anyhow::Result<T>
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
pub(crate) async fn load_embedded_registry(
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
pub(crate) struct LedgerDeps {
    ownership: Ownership,
    clock: Arc<dyn Clock>,
    config: LedgerConfig,
    projector: ProjectorConfig,
    views: ServiceViews,
    limits: QueryLimits,
    tracker: TaskTracker,
    advertised_url: String,
}

pub(crate) async fn start_up(
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
        let (config, clock) = (deps.projector.clone(), deps.clock.clone());
        tokio::task::spawn_blocking(move || {
            Projector::open(clients, layout, codec, config).map(|p| p.with_clock(clock))
        })
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
                metrics: state.ledger_metrics.clone(),
                advertised_url: deps.advertised_url.clone(),
            },
            shutdown.clone(),
            &deps.tracker,
        )
    })
    .await?;
    // The transactional producer exists now, and with it Kafka's transaction log: every
    // topic the ledger's promises rest on must keep an acknowledged write through the
    // loss of a broker, unless the risk is accepted (and then logged).
    let risks = state
        .layout
        .durability_risks(&state.clients)
        .await
        .context("checking the replication of the topics")?;
    fleetledger_ledger::topics::durability_verdict(
        &risks,
        state.clients.config().accept_weak_durability,
    )?;
    let projector = loading
        .await
        .context("loading the projection checkpoints")??
        .with_head_states(ledger.head_states());
    // Before any write can reach the ledger: a history that does not fit the checkpoints
    // (re-created, truncated) stops the start.
    projector
        .check_history()
        .await
        .context("checking the history topic against the projection checkpoints")?;
    let _ = state.ledger.set(ledger);
    let running = projector.clone();
    let stop = shutdown.clone();
    deps.tracker
        .spawn(async move { running.run_healing(stop).await });
    let clock = deps.clock.clone();
    let engine = QueryEngine::new(
        projector.projections(),
        &deps.views,
        Arc::new(move || clock.now().timestamp_millis()),
        deps.limits,
    )?
    .with_metrics(state.query_metrics.clone());
    let _ = state.queries.set(engine);
    let _ = state.projector.set(projector);
    Ok(())
}
