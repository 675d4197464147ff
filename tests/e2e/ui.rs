//! The dashboard in a real browser: `tests/ui/dashboard.py` (Playwright from PyPI driving
//! Debian's Chromium, both installed by `deploy/local/test`) loads each page against a
//! service with a simulated fleet and checks the numbers against SQL. Screenshots go to
//! `FLEETLEDGER_UI_SCREENSHOTS` when set (the README's are in `docs/ui/`), else to a
//! temporary directory.

use std::path::PathBuf;
use std::process::Command;

use crate::support::{config, simulated_fleet, unique_prefix};

#[tokio::test]
async fn the_dashboard_shows_what_sql_says() {
    let fleet = simulated_fleet(config(&unique_prefix("ui")), 30, 20).await;
    let (server, cluster, dir) = (fleet.server, fleet.cluster, fleet.dir);
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
