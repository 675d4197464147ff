//! Billing follows event time: a hand-computed multi-cluster history, imported in time
//! order and again in an arrival order where every status arrives after every logical
//! change, bills the same hours, exact to 1e-9.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fleetledger_client::ApiClient;
use fleetledger_client::import::import_file;
use fleetledger_projectors::billing::HOUR_MS;
use serde_json::{Value, json};

use crate::append::status;
use crate::support::{TestServer, config, unique_prefix};

const DAY: &str = "2025-06-01";

fn logical(cku: i64, deleted: bool) -> Value {
    json!({"org_id": "org-bill", "env_id": "env-1", "kind": "kafka", "name": "orders",
           "sku": "dedicated", "cku": cku, "cloud": "aws", "region": "us-east-1",
           "network": "public", "config": {}, "deleted": deleted})
}

fn physical(brokers: i64) -> Value {
    json!({"brokers": brokers, "disk_gb_per_broker": 500, "zones": ["a", "b", "c"], "version": "4.1"})
}

/// `(HH:MM, cluster, facet, writer, state)` in the order of their times, both clusters
/// interleaved, as a control plane would have written them.
fn scenario() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Value,
)> {
    let (a, b) = ("lkc-billa", "lkc-billb");
    vec![
        ("00:00", a, "logical", "frontend", logical(2, false)),
        ("00:02", a, "physical", "physical-controller", physical(3)),
        ("00:05", b, "logical", "frontend", logical(1, false)),
        ("00:10", a, "status", "sync", status("provisioning", 0, 1)),
        ("00:20", b, "status", "sync", status("running", 1, 1)),
        ("00:30", a, "status", "sync", status("running", 2, 1)),
        // A: expansion 2 → 4, done at 02:00. B: expansion 1 → 3, then a change of mind to
        // 2 during it; the data plane lands on 2 at 02:10.
        ("01:00", a, "logical", "frontend", logical(4, false)),
        ("01:00", b, "logical", "frontend", logical(3, false)),
        ("01:10", b, "status", "sync", status("expanding", 1, 2)),
        ("01:15", a, "status", "sync", status("expanding", 2, 2)),
        ("01:40", b, "logical", "frontend", logical(2, false)),
        ("02:00", a, "status", "sync", status("running", 4, 2)),
        ("02:00", a, "physical", "physical-controller", physical(6)),
        ("02:10", b, "status", "sync", status("running", 2, 3)),
        // A: shrink 4 → 1 at 02:30 (billed lower at once), done at 03:00.
        ("02:30", a, "logical", "frontend", logical(1, false)),
        ("02:45", a, "status", "sync", status("shrinking", 4, 3)),
        ("03:00", b, "logical", "frontend", logical(2, true)),
        ("03:00", a, "status", "sync", status("running", 1, 3)),
        ("03:05", b, "status", "sync", status("deleted", 0, 4)),
        ("04:00", a, "logical", "frontend", logical(1, true)),
        ("04:20", a, "status", "sync", status("deleting", 1, 4)),
        ("04:30", a, "status", "sync", status("deleted", 0, 4)),
    ]
}

/// The bill, computed by hand: (cluster, hour after midnight) → CKU-hours.
fn expected() -> BTreeMap<(String, i64), f64> {
    [
        // A: running at 2 from 00:30.
        ("lkc-billa", 0, 2.0 * 0.5),
        // Expansion requested at 01:00, not done: billed at 2.
        ("lkc-billa", 1, 2.0),
        // 4 until the shrink at 02:30, then 1.
        ("lkc-billa", 2, 4.0 * 0.5 + 1.0 * 0.5),
        ("lkc-billa", 3, 1.0),
        // B: running at 1 from 00:20.
        ("lkc-billb", 0, 40.0 / 60.0),
        // Expanding (3, then 2 desired) while the data plane still runs 1.
        ("lkc-billb", 1, 1.0),
        // 1 until 02:10, then 2.
        ("lkc-billb", 2, 10.0 / 60.0 + 2.0 * 50.0 / 60.0),
    ]
    .into_iter()
    .map(|(c, h, v)| ((c.to_owned(), h), v))
    .collect()
}

fn at(hhmm: &str) -> String {
    format!("{DAY}T{hhmm}:00Z")
}

fn midnight_ms() -> i64 {
    at("00:00")
        .parse::<DateTime<Utc>>()
        .unwrap()
        .timestamp_millis()
}

/// The server's `billing_hours` (non-zero rows) as (cluster, hour after midnight) → CKU-hours.
async fn billed(
    server: &TestServer,
    cfg: &fleetledger::Config,
    dir: &str,
) -> BTreeMap<(String, i64), f64> {
    let p = crate::recovery::caught_up_projector(cfg, server, dir);
    p.catch_up(|_| {}).await.expect("caught up");
    let projections = p.projections();
    let snapshot = projections.read().await;
    snapshot
        .billing
        .rows(Utc::now().timestamp_millis())
        .into_iter()
        .filter(|r| r.cku_hours != 0.0)
        .map(|r| {
            assert!(!r.open, "every hour of {DAY} is closed: {r:?}");
            (
                (
                    r.cluster_id.clone(),
                    (r.hour_start_ms - midnight_ms()) / HOUR_MS,
                ),
                r.cku_hours,
            )
        })
        .collect()
}

fn assert_bill(got: &BTreeMap<(String, i64), f64>, what: &str) {
    let want = expected();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: billed hours {got:?}"
    );
    for (k, v) in &want {
        assert!(
            (got[k] - v).abs() < 1e-9,
            "{what}: {k:?} billed {} not {v}",
            got[k]
        );
    }
}

#[tokio::test]
async fn billing_is_exact_by_event_time_in_any_arrival_order() {
    // 1. The scenario as an import file, in time order.
    let cfg = config(&unique_prefix("billtime"));
    let server = TestServer::start(cfg.clone()).await;
    let lines: Vec<String> = scenario()
        .into_iter()
        .map(|(t, c, f, w, s)| {
            json!({"ts": at(t), "cluster_id": c, "facet": f, "writer": w, "state": s}).to_string()
        })
        .collect();
    let dir = std::env::temp_dir().join("fleetledger-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.jsonl", unique_prefix("billtime")));
    std::fs::write(&path, lines.join("\n")).unwrap();
    let client = ApiClient::new(&server.url(), Some("dev-import".into()));
    let done = import_file(&client, &path, 7, false).await.expect("import");
    assert_eq!(done.imported, lines.len() as u64);
    let in_time = billed(&server, &cfg, "billtime").await;
    assert_bill(&in_time, "imported in time order");
    server.stop().await;

    // 2. The same records in another arrival order: every logical change first, then
    // every status (back-dated behind later logical changes), then the rest.
    let cfg = config(&unique_prefix("billlate"));
    let server = TestServer::start(cfg.clone()).await;
    let client = ApiClient::new(&server.url(), Some("dev-import".into()));
    let mut versions: BTreeMap<(String, String), i64> = BTreeMap::new();
    for facet in ["logical", "status", "physical"] {
        let items: Vec<Value> = scenario()
            .into_iter()
            .enumerate()
            .filter(|(_, (_, _, f, _, _))| *f == facet)
            .map(|(i, (t, c, f, w, s))| {
                let v = versions.entry((c.to_owned(), f.to_owned())).or_insert(0);
                *v += 1;
                json!({"line": i + 1, "ts": at(t), "cluster_id": c, "facet": f, "writer": w,
                       "state": s, "expected_version": *v - 1,
                       "idempotency_key": format!("late:{c}/{f}/v{v}")})
            })
            .collect();
        let answer = client.import(&items).await.expect("import batch");
        for r in &answer.results {
            assert_eq!(r.status, 201, "{r:?}");
        }
    }
    let late = billed(&server, &cfg, "billlate").await;
    assert_bill(&late, "statuses arriving after every logical change");
    assert_eq!(in_time, late, "both arrival orders bill the same hours");
    server.stop().await;
}
