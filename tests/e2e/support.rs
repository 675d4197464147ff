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
    // The local broker is a single node.
    c.kafka.accept_weak_durability = true;
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

/// A port nobody listens on now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A `fleetledger serve` process of the test's own, on a free port.
pub(crate) struct ServeProcess {
    pub(crate) child: std::process::Child,
    pub(crate) url: String,
}

impl ServeProcess {
    pub(crate) fn spawn(cfg: &fleetledger::Config, port: u16) -> ServeProcess {
        Self::spawn_with(cfg, port, &[])
    }

    /// [`ServeProcess::spawn`] with more `FLEETLEDGER_*` settings in `env`.
    pub(crate) fn spawn_with(
        cfg: &fleetledger::Config,
        port: u16,
        env: &[(&str, &str)],
    ) -> ServeProcess {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_fleetledger"))
            .arg("serve")
            .env("FLEETLEDGER_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "FLEETLEDGER_KAFKA__BOOTSTRAP_SERVERS",
                &cfg.kafka.bootstrap_servers,
            )
            .env("FLEETLEDGER_KAFKA__TOPIC_PREFIX", &cfg.kafka.topic_prefix)
            .env("FLEETLEDGER_KAFKA__SCHEMAS_TOPIC", &cfg.kafka.schemas_topic)
            .env(
                "FLEETLEDGER_KAFKA__PARTITIONS",
                cfg.kafka.partitions.to_string(),
            )
            .env("FLEETLEDGER_PROJECTOR__DIR", &cfg.projector.dir)
            .env("FLEETLEDGER_PROJECTOR__CHECKPOINT_EVERY_MS", "200")
            .env("FLEETLEDGER_AUTH__DEVELOPMENT_TOKENS", "true")
            .env(
                "FLEETLEDGER_KAFKA__ACCEPT_WEAK_DURABILITY",
                cfg.kafka.accept_weak_durability.to_string(),
            )
            .env("FLEETLEDGER_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("fleetledger serve starts");
        ServeProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    pub(crate) async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        for _ in 0..600 {
            if let Ok(r) = http.get(format!("{}/readyz", self.url)).send().await
                && r.status().as_u16() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("serve not ready after 60 s");
    }

    /// The process's peak resident memory so far (VmHWM), in MiB.
    pub(crate) fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }

    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
