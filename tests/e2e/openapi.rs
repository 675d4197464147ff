//! `GET /openapi.json` with the real tool: schemathesis (PyPI, installed by
//! `deploy/local/test`) generates requests for every operation of the document against a
//! service with a simulated fleet, and checks every answer against it: no 5xx, every
//! status, content type and body as documented, bad input refused.
//!
//! Left out, and why: `positive_data_acceptance` (a request the document allows may still
//! be refused by a rule a JSON schema cannot carry: a cluster that does not exist, a state
//! its facet's Avro schema refuses, a version that conflicts), and `GET /v1/watch` (a
//! stream that does not end; `watch.rs` tests it).

use std::process::Command;

use crate::support::{config, simulated_fleet, sql_as, tokens_file, unique_prefix};

/// schemathesis against `url` as `token`, `examples` per operation, with every `{id}` of a
/// path the existing cluster `cluster` (so reads reach real answers, not only 404s); its
/// output on failure.
async fn schemathesis(
    url: &str,
    token: &str,
    examples: u32,
    cluster: &str,
) -> Result<String, String> {
    let dir = std::env::temp_dir()
        .join("fleetledger-tests")
        .join(unique_prefix("st"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!("[parameters]\n\"path.id\" = \"{cluster}\"\n"),
    )
    .unwrap();
    let mut c = Command::new("schemathesis");
    // Its cache (`.schemathesis/`) goes to the test's directory, not the repository.
    c.current_dir(&dir)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{url}/openapi.json")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--exclude-path", "/v1/watch"])
        .args(["--max-examples", &examples.to_string(), "--seed", "1"])
        .args(["--request-timeout", "30", "--no-color"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .env("SCHEMATHESIS_HOOKS", "");
    let out = tokio::task::spawn_blocking(move || {
        c.output()
            .expect("schemathesis runs (deploy/local/test installs it from PyPI)")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Its summary in the test's output: how many cases, which warnings.
    let summary: Vec<&str> = text.lines().rev().take(14).collect();
    eprintln!(
        "schemathesis as {token}:\n{}",
        summary.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

async fn count(url: &str, sql: &str) -> u64 {
    let (status, v) = sql_as(url, "dev-sync", sql).await;
    assert_eq!(status, 200, "{v}");
    v["rows"][0]["n"].as_u64().unwrap_or(0)
}

/// `fleetledger_appends_total{outcome="committed"}`.
async fn committed(url: &str) -> f64 {
    let text = crate::support::metrics_text(url).await;
    crate::support::metric(&text, "fleetledger_appends_total{outcome=\"committed\"}").unwrap_or(0.0)
}

#[tokio::test]
async fn schemathesis_finds_every_answer_as_documented_and_nothing_written_it_should_not() {
    let mut cfg = config(&unique_prefix("openapi"));
    cfg.auth.tokens_file = Some(tokens_file(&[
        ("dev-import", "import", &[]),
        ("dev-sync", "sync", &[]),
        ("dev-frontend", "frontend", &[]),
        ("reader-token", "auditor", &[]),
    ]));
    let fleet = simulated_fleet(cfg, 8, 1).await;
    let url = fleet.server.url();

    // A principal that owns no facet: every operation, and not one record written.
    let run = schemathesis(&url, "reader-token", 10, &fleet.cluster).await;
    assert!(
        run.is_ok(),
        "schemathesis as a reader:\n{}",
        run.unwrap_err()
    );
    let all = "SELECT count(*) AS n FROM audit_log";
    assert_eq!(
        count(&url, all).await,
        fleet.records,
        "a reader wrote nothing"
    );

    // The owner of the logical facet: what it wrote is its own facet only, and each
    // record was acknowledged.
    let before = committed(&url).await;
    let run = schemathesis(&url, "dev-frontend", 10, &fleet.cluster).await;
    assert!(
        run.is_ok(),
        "schemathesis as frontend:\n{}",
        run.unwrap_err()
    );
    let acknowledged = committed(&url).await - before;
    let mut written = 0;
    for _ in 0..100 {
        written = count(&url, all).await - fleet.records;
        if written as f64 >= acknowledged {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        written as f64 <= acknowledged,
        "{written} records written, {acknowledged} acknowledged"
    );
    let foreign = count(
        &url,
        "SELECT count(*) AS n FROM audit_log WHERE writer NOT IN ('frontend', 'sync', 'physical-controller', 'capacity-controller') OR (writer = 'frontend' AND facet <> 'logical')",
    )
    .await;
    assert_eq!(foreign, 0, "no record outside the frontend's facet");
    fleet.server.stop().await;
}
