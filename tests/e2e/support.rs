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
        pg_listen: "127.0.0.1:0".into(),
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

    /// The port of the PostgreSQL protocol.
    pub(crate) fn pg_port(&self) -> u16 {
        self.running
            .as_ref()
            .and_then(|r| r.pg_addr)
            .expect("pg_listen is set")
            .port()
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

/// The `fleetledger` binary set up, through its environment, for `cfg`'s broker, topics
/// and projection directory.
pub(crate) fn fleetledger_command(cfg: &fleetledger::Config) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_fleetledger"));
    c.env(
        "FLEETLEDGER_KAFKA__BOOTSTRAP_SERVERS",
        &cfg.kafka.bootstrap_servers,
    )
    .env("FLEETLEDGER_KAFKA__TOPIC_PREFIX", &cfg.kafka.topic_prefix)
    .env("FLEETLEDGER_KAFKA__SCHEMAS_TOPIC", &cfg.kafka.schemas_topic)
    .env(
        "FLEETLEDGER_KAFKA__PARTITIONS",
        cfg.kafka.partitions.to_string(),
    )
    .env("FLEETLEDGER_PROJECTOR__DIR", &cfg.projector.dir);
    c
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
        Self::spawn_command(Self::command(cfg, port, env), port)
    }

    /// The command [`ServeProcess::spawn_with`] runs.
    pub(crate) fn command(
        cfg: &fleetledger::Config,
        port: u16,
        env: &[(&str, &str)],
    ) -> std::process::Command {
        let mut c = fleetledger_command(cfg);
        c.arg("serve")
            .env("FLEETLEDGER_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLEETLEDGER_PG_LISTEN", "127.0.0.1:0")
            .env("FLEETLEDGER_PROJECTOR__CHECKPOINT_EVERY_MS", "200")
            .env("FLEETLEDGER_AUTH__DEVELOPMENT_TOKENS", "true")
            .env(
                "FLEETLEDGER_KAFKA__ACCEPT_WEAK_DURABILITY",
                cfg.kafka.accept_weak_durability.to_string(),
            )
            .env(
                "FLEETLEDGER_LOG",
                match std::env::var_os("FLEETLEDGER_TEST_SERVE_LOGS") {
                    Some(_) => "info",
                    None => "warn",
                },
            )
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(Self::log_of(port));
        c
    }

    /// Starts `command` (a [`ServeProcess::command`] on `port`).
    pub(crate) fn spawn_command(mut command: std::process::Command, port: u16) -> ServeProcess {
        let child = command.spawn().expect("fleetledger serve starts");
        ServeProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Where the process logs: `$FLEETLEDGER_TEST_SERVE_LOGS/serve-PORT.log` when that
    /// directory is set (to look into a failed test), else nowhere.
    fn log_of(port: u16) -> std::process::Stdio {
        std::env::var_os("FLEETLEDGER_TEST_SERVE_LOGS")
            .and_then(|dir| {
                std::fs::File::create(std::path::Path::new(&dir).join(format!("serve-{port}.log")))
                    .ok()
            })
            .map_or_else(std::process::Stdio::null, Into::into)
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

    /// Sends `signal` (`-STOP`, `-CONT`, `-9`, …) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {}", self.child.id());
    }
}

impl Drop for ServeProcess {
    /// A test that fails leaves no `serve` behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `deploy/local/kafka ARGS` with `env` (port, nodes, heap); its output, or a panic
/// with what it said. The first `start` of a broker (told apart by `env`) in this test
/// process is a `fresh` one, on empty storage: a test's own broker never carries the
/// topics of earlier runs, which would pile up and slow its start by minutes. Later starts
/// (after a test stopped or killed it) keep what it holds.
pub(crate) fn kafka_script(args: &[&str], env: &[(&str, &str)]) -> String {
    static STARTED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let first_start = args == ["start"] && STARTED.lock().unwrap().insert(format!("{env:?}"));
    let args = if first_start { &["fresh"][..] } else { args };
    let out = std::process::Command::new(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka"),
    )
    .args(args)
    .envs(env.iter().copied())
    .output()
    .expect("deploy/local/kafka runs");
    assert!(
        out.status.success(),
        "kafka {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// What history holds for some clusters: request id → the versions it is in, and how
/// many records are not where a gapless history would have them.
pub(crate) struct Written {
    pub(crate) by_request: std::collections::BTreeMap<String, Vec<i64>>,
    pub(crate) gaps: usize,
}

/// Reads the history of `clusters` through the service at `url`.
pub(crate) async fn written(url: &str, clusters: &[String]) -> Written {
    let http = reqwest::Client::new();
    let mut w = Written {
        by_request: Default::default(),
        gaps: 0,
    };
    for c in clusters {
        let h: serde_json::Value = http
            .get(format!("{url}/v1/clusters/{c}/history"))
            .bearer_auth("dev-sync")
            .send()
            .await
            .expect("history answers")
            .json()
            .await
            .expect("history is JSON");
        for (i, r) in h["records"].as_array().into_iter().flatten().enumerate() {
            if r["version"].as_i64() != Some(i as i64 + 1) {
                w.gaps += 1;
            }
            w.by_request
                .entry(r["request_id"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(r["version"].as_i64().unwrap_or(-1));
        }
    }
    w
}

/// A load's answers — (idempotency key, HTTP status, or 0 for no answer, body) — counted
/// against what history holds, as the fault report shows them: acknowledged (201), lost
/// (acknowledged, not in history), duplicated (in history more than once), wrong version
/// (in history under another version than answered), gaps, not written (503
/// `unavailable`, `fenced` or `no_writer`, 307 `not_writer`), not written but written (the lie the ledger must never tell), and
/// written but never acknowledged (the answer was lost with a connection).
pub(crate) fn tally(
    answers: &[(String, u16, serde_json::Value)],
    w: &Written,
) -> serde_json::Value {
    let acked: Vec<&(String, u16, serde_json::Value)> =
        answers.iter().filter(|a| a.1 == 201).collect();
    let lost = acked
        .iter()
        .filter(|a| !w.by_request.contains_key(&a.0))
        .count();
    let wrong_version = acked
        .iter()
        .filter(|a| {
            w.by_request
                .get(&a.0)
                .is_some_and(|v| v.first().copied() != a.2["version"].as_i64())
        })
        .count();
    // Every answer that says "not written": unavailable, fenced before the commit, no
    // writer elected, or a standby's redirect.
    let not_written: Vec<&String> = answers
        .iter()
        .filter(|a| {
            (a.1 == 503
                && (a.2["error"] == "unavailable"
                    || a.2["error"] == "fenced"
                    || a.2["error"] == "no_writer"))
                || (a.1 == 307 && a.2["error"] == "not_writer")
        })
        .map(|a| &a.0)
        .collect();
    let acked_keys: std::collections::BTreeSet<&String> = acked.iter().map(|a| &a.0).collect();
    // Every other final answer, by status and code: what the clients were told instead.
    let mut refusals: std::collections::BTreeMap<String, u64> = Default::default();
    for a in answers.iter().filter(|a| a.1 != 201) {
        *refusals
            .entry(format!("{} {}", a.1, a.2["error"].as_str().unwrap_or("-")))
            .or_default() += 1;
    }
    serde_json::json!({
        "refusals": refusals,
        "answers": answers.len(),
        "acknowledged": acked.len(),
        "lost": lost,
        "duplicated": w.by_request.values().filter(|v| v.len() > 1).count(),
        "wrong_version": wrong_version,
        "gaps": w.gaps,
        "not_written": not_written.len(),
        "not_written_but_written": not_written.iter().filter(|k| w.by_request.contains_key(**k)).count(),
        "written_unacknowledged": w.by_request.keys().filter(|k| !acked_keys.contains(k)).count(),
    })
}

/// Panics unless a [`tally`] shows a load that wrote, and nothing lost, duplicated,
/// misnumbered or answered "not written" that was written.
pub(crate) fn assert_kept_every_promise(t: &serde_json::Value) {
    assert!(
        t["acknowledged"].as_u64().unwrap_or(0) > 10,
        "the load wrote: {t}"
    );
    for k in [
        "lost",
        "duplicated",
        "wrong_version",
        "gaps",
        "not_written_but_written",
    ] {
        assert_eq!(t[k], 0, "{k}: {t}");
    }
}

/// `figures` with every field of `more` added.
pub(crate) fn with_fields(
    mut figures: serde_json::Value,
    more: serde_json::Value,
) -> serde_json::Value {
    if let (Some(f), Some(m)) = (figures.as_object_mut(), more.as_object()) {
        for (k, v) in m {
            f.insert(k.clone(), v.clone());
        }
    }
    figures
}

/// A tokens file of the test's own holding, for each `(token, principal, orgs)`, the
/// token's hash and its principal, limited to `orgs` when some are given; its path.
pub(crate) fn tokens_file(entries: &[(&str, &str, &[&str])]) -> std::path::PathBuf {
    use fleetledger_ledger::principals::token_hash;
    let dir = std::env::temp_dir().join("fleetledger-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}-tokens.toml", unique_prefix("tokens")));
    let mut text = String::from("[tokens]\n");
    for (token, principal, orgs) in entries {
        let value = if orgs.is_empty() {
            format!("\"{principal}\"")
        } else {
            let orgs: Vec<String> = orgs.iter().map(|o| format!("\"{o}\"")).collect();
            format!(
                "{{ principal = \"{principal}\", orgs = [{}] }}",
                orgs.join(", ")
            )
        };
        text.push_str(&format!("\"{}\" = {value}\n", token_hash(token)));
    }
    std::fs::write(&file, text).unwrap();
    file
}

/// `POST /v1/sql` of `q` to the service at `url` as `token`: status and answer.
pub(crate) async fn sql_as(url: &str, token: &str, q: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/sql"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "sql": q }))
        .send()
        .await
        .unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// A service whose history is a simulated fleet (every writer), imported and projected.
pub(crate) struct SimulatedFleet {
    /// The service; its clock stands still a day after the simulated history, so
    /// billing's open day does not grow between two reads of a test.
    pub(crate) server: TestServer,
    /// The first cluster of the history.
    pub(crate) cluster: String,
    /// How many records the history has.
    pub(crate) records: u64,
    /// A directory of the test's own (the history file is in it).
    pub(crate) dir: std::path::PathBuf,
}

/// Starts a service on `cfg` and imports a simulated fleet of `clusters` over `days` into
/// it, waiting until `audit_log` has every record.
pub(crate) async fn simulated_fleet(cfg: Config, clusters: usize, days: u32) -> SimulatedFleet {
    use chrono::{DateTime, Utc};
    let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let clock = std::sync::Arc::new(fleetledger_ledger::ManualClock::new(
        start + chrono::Duration::days(i64::from(days) + 1),
    ));
    let server = TestServer::start_with_clock(cfg, clock).await;
    let mut text = Vec::new();
    fleetledger_bench::simulate::Simulation {
        clusters,
        days,
        seed: 7,
        start,
        fleet: 0,
    }
    .write(&mut text)
    .unwrap();
    let dir = std::env::temp_dir()
        .join("fleetledger-tests")
        .join(unique_prefix("fleet-files"));
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("history.jsonl");
    std::fs::write(&history, &text).unwrap();
    let client = fleetledger_client::ApiClient::new(&server.url(), Some("dev-import".into()));
    fleetledger_client::import::import_file(&client, &history, 500, false)
        .await
        .expect("import");
    let text = String::from_utf8_lossy(&text);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let cluster = first["cluster_id"].as_str().unwrap().to_owned();
    let records = text.lines().count() as u64;
    for _ in 0..200 {
        let (_, v) = sql_as(
            &server.url(),
            "dev-sync",
            "SELECT count(*) AS n FROM audit_log",
        )
        .await;
        if v["rows"][0]["n"].as_u64() == Some(records) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    SimulatedFleet {
        server,
        cluster,
        records,
        dir,
    }
}

/// Held by the fault scenarios whose timings are asserted (a broker outage's) and by the
/// tests of the 3-broker cluster (they start, stop and kill its brokers), so they run one
/// at a time: the cluster loads both cores and would otherwise show in another
/// scenario's recovery time.
pub(crate) static TIMED_FAULTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The service's `/metrics` text.
pub(crate) async fn metrics_text(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series `series` (its name and labels as the text shows them) in
/// `/metrics` text, if it is there.
pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
}
