//! Test isolation and servers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fleetledger::Config;
use fleetledger::server::{self, RunningServer};
use tokio_util::sync::CancellationToken;

/// A topic prefix no other test (or earlier run) uses.
pub(crate) fn unique_prefix(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "t-{name}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A configuration isolated under `prefix`, listening on a free port, broker from
/// `FLEETLEDGER_TEST_BOOTSTRAP` (default 127.0.0.1:9092).
pub(crate) fn config(prefix: &str) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".into(),
        shutdown_timeout_ms: 5_000,
        ..Config::default()
    };
    c.kafka.bootstrap_servers =
        std::env::var("FLEETLEDGER_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    c.kafka.topic_prefix = prefix.to_owned();
    c.kafka.schemas_topic = format!("{prefix}._schemas");
    c.kafka.partitions = 3;
    c.projector.dir = std::env::temp_dir().join("fleetledger-tests").join(prefix);
    c.projector.checkpoint_every_ms = 200;
    c.auth.development_tokens = true;
    c
}

/// A server started from `config` and ready, with the token that stops it.
pub(crate) struct TestServer {
    pub(crate) running: Option<RunningServer>,
    pub(crate) token: CancellationToken,
}

impl TestServer {
    pub(crate) async fn start(config: Config) -> TestServer {
        Self::start_with_clock(config, std::sync::Arc::new(fleetledger_ledger::SystemClock)).await
    }

    pub(crate) async fn start_with_clock(
        config: Config,
        clock: std::sync::Arc<dyn fleetledger_ledger::Clock>,
    ) -> TestServer {
        let token = CancellationToken::new();
        let running = server::start_with_clock(config, clock, token.clone())
            .await
            .expect("server starts");
        running
            .wait_ready(Duration::from_secs(60))
            .await
            .expect("server becomes ready");
        TestServer {
            running: Some(running),
            token,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!(
            "http://{}",
            self.running.as_ref().map(|r| r.addr).expect("running")
        )
    }

    /// Stops the server and waits for its tasks.
    pub(crate) async fn stop(mut self) {
        self.token.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await.expect("clean shutdown");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
