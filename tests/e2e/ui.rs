//! The dashboard in a real browser: `tests/ui/dashboard.py` (Playwright from PyPI driving
//! Debian's Chromium, both installed by `deploy/local/test`) loads each page against a
//! service with a simulated fleet and checks the numbers against SQL. Screenshots go to
//! `FLEETLEDGER_UI_SCREENSHOTS` when set (the README's are in `docs/ui/`), else to a
//! temporary directory.

use std::path::PathBuf;
use std::process::Command;

use chrono::{DateTime, Utc};
use fleetledger_bench::simulate::Simulation;
use fleetledger_client::ApiClient;
use fleetledger_client::import::import_file;

use crate::support::{TestServer, config, unique_prefix};

#[tokio::test]
async fn the_dashboard_shows_what_sql_says() {
    let cfg = config(&unique_prefix("ui"));
    let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    // The clock stands still after the simulated history: billing's open day does not
    // grow between what the page shows and what the check asks.
    let clock = std::sync::Arc::new(fleetledger_ledger::ManualClock::new(
        start + chrono::Duration::days(21),
    ));
    let server = TestServer::start_with_clock(cfg.clone(), clock).await;
    let mut text = Vec::new();
    Simulation {
        clusters: 30,
        days: 20,
        seed: 7,
        start,
    }
    .write(&mut text)
    .unwrap();
    let dir = std::env::temp_dir()
        .join("fleetledger-tests")
        .join(unique_prefix("ui-files"));
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("history.jsonl");
    std::fs::write(&history, &text).unwrap();
    let client = ApiClient::new(&server.url(), Some("dev-import".into()));
    import_file(&client, &history, 500, false)
        .await
        .expect("import");
    // A cluster of the history, once the projections have it.
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&text).lines().next().unwrap()).unwrap();
    let cluster = first["cluster_id"].as_str().unwrap().to_owned();
    let lines = String::from_utf8_lossy(&text).lines().count() as u64;
    for _ in 0..200 {
        let (_, v) = crate::support::sql_as(
            &server.url(),
            "dev-sync",
            "SELECT count(*) AS n FROM audit_log",
        )
        .await;
        if v["rows"][0]["n"].as_u64() == Some(lines) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let shots = std::env::var("FLEETLEDGER_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dir.clone());
    std::fs::create_dir_all(&shots).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ui/dashboard.py");
    let url = server.url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .args([&url, "dev-sync", &cluster])
            .arg(&shots)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the dashboard check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}
