//! `/metrics` as an operator uses it: a real Prometheus server (Debian's `prometheus`,
//! which `deploy/local/test` installs) scrapes the service, and PromQL answers what the
//! test did; `promtool` checks the shipped alerting rules, and Prometheus evaluates them.
//! (The service speaks OpenMetrics, which Prometheus negotiates; `promtool check metrics`
//! reads only the older text format, so it is not used on it.)

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::append::{Api, logical};
use crate::support::{TestServer, config, free_port, unique_prefix};

/// The value of a PromQL instant query's single sample, if it has one.
async fn promql(prometheus: &str, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let v: Value = reqwest::Client::new()
        .get(format!("{prometheus}/api/v1/query?query={encoded}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Kills the Prometheus server when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn prometheus_scrapes_what_the_service_did() {
    let server = TestServer::start(config(&unique_prefix("metrics"))).await;
    let api = Api::new(&server);
    // What the metrics must show: two committed changes, one conflict, one refusal, and
    // two SQL queries (one of them invalid).
    for cluster in ["lkc-m1", "lkc-m2"] {
        let (st, v) = api
            .append(
                cluster,
                "logical",
                "dev-frontend",
                &logical(1),
                &[("idempotency-key", "k-m")],
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let (st, _) = api
        .append(
            "lkc-m1",
            "logical",
            "dev-frontend",
            &logical(2),
            &[("if-match", "7")],
        )
        .await;
    assert_eq!(st, 409);
    // The same key with another body: refused by the ledger.
    let (st, _) = api
        .append(
            "lkc-m1",
            "logical",
            "dev-frontend",
            &logical(3),
            &[("idempotency-key", "k-m")],
        )
        .await;
    assert_eq!(st, 422);
    for (q, want) in [("SELECT 1", 200), ("SELECT nope FROM nowhere", 400)] {
        let (st, _) = crate::support::sql_as(&server.url(), "dev-sync", q).await;
        assert_eq!(st, want);
    }
    // The shipped alerting rules are valid.
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A real Prometheus scrapes the service every second.
    let dir = std::env::temp_dir()
        .join("fleetledger-tests")
        .join(unique_prefix("prometheus"));
    std::fs::create_dir_all(&dir).unwrap();
    let target = server.url().trim_start_matches("http://").to_owned();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: fleetledger\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = Child(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs"),
    );
    let prometheus = format!("http://127.0.0.1:{port}");
    let queries = [
        (
            r#"sum(fleetledger_appends_total{outcome="committed"})"#,
            2.0,
        ),
        (r#"sum(fleetledger_appends_total{outcome="conflict"})"#, 1.0),
        (r#"sum(fleetledger_appends_total{outcome="refused"})"#, 1.0),
        (r#"sum(fleetledger_sql_queries_total{outcome="ok"})"#, 1.0),
        (
            r#"sum(fleetledger_sql_queries_total{outcome="invalid"})"#,
            1.0,
        ),
        (
            r#"sum(fleetledger_http_requests_total{route="/v1/clusters/{id}/{facet}",status="201"})"#,
            2.0,
        ),
        (r#"fleetledger_role{role="writer"}"#, 1.0),
        ("fleetledger_ready", 1.0),
        ("sum(fleetledger_transaction_changes_count)", 2.0),
    ];
    let started = Instant::now();
    let mut last = Vec::new();
    loop {
        last.clear();
        for (q, want) in &queries {
            let got = promql(&prometheus, q).await;
            if got != Some(*want) {
                last.push(format!("{q}: {got:?}, expected {want}"));
            }
        }
        if last.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "after 60 s Prometheus answers: {}",
            last.join("; ")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Commit latency was observed for both transactions.
    let commits = promql(
        &prometheus,
        "sum(fleetledger_transaction_commit_seconds_count)",
    )
    .await;
    assert_eq!(commits, Some(2.0));
    server.stop().await;
}
