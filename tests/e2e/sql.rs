//! The README's SQL examples against projections fed through the real broker.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeDelta, TimeZone, Utc};
use fleetledger_ledger::ManualClock;
use serde_json::{Value, json};

use crate::append::{Api, logical, status};
use crate::support::{TestServer, config, unique_prefix};

/// The README's examples, verbatim from README.md so the two cannot drift apart.
fn readme_example(title: &str) -> String {
    let readme = include_str!("../../README.md");
    let start = readme
        .find(&format!("-- {title}"))
        .unwrap_or_else(|| panic!("README example {title:?}"));
    let rest = &readme[start..];
    let end = rest.find(';').expect("example ends with ;");
    rest[..end]
        .lines()
        .filter(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn sql(server: &TestServer, q: &str) -> (u16, Value) {
    crate::support::sql_as(&server.url(), "dev-sync", q).await
}

fn logical_in(org: &str, region: &str, cku: i64) -> Value {
    let mut l = logical(cku);
    l["org_id"] = json!(org);
    l["region"] = json!(region);
    l
}

#[tokio::test]
async fn the_readme_examples_answer_exactly() {
    let cfg = config(&unique_prefix("sql"));
    let now = Utc::now();
    let this_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    let last = (this_month - TimeDelta::days(1)).with_day(2).unwrap(); // 2nd of last month, 00:00
    let clock = Arc::new(ManualClock::new(last));
    let server = TestServer::start_with_clock(cfg.clone(), clock.clone()).await;
    let api = Api::new(&server);
    let at = |t: DateTime<Utc>| clock.set(t);
    let h = TimeDelta::hours;
    let m = TimeDelta::minutes;
    let mut writes = 0;
    let mut put = async |c: &str, facet: &str, token: &str, body: Value, reason: Option<&str>| {
        let headers: Vec<(&str, &str)> = reason.map(|r| vec![("x-reason", r)]).unwrap_or_default();
        let (st, v) = api.append(c, facet, token, &body, &headers).await;
        assert_eq!(st, 201, "{c} {facet}: {v}");
        writes += 1;
    };
    // Last month: org-a runs 2 CKU for 10 h, org-b 3 CKU for 2 h.
    at(last);
    put(
        "lkc-e1",
        "logical",
        "dev-frontend",
        logical_in("org-a", "us-east-1", 2),
        Some("created"),
    )
    .await;
    put(
        "lkc-e1",
        "status",
        "dev-sync",
        status("running", 2, 1),
        None,
    )
    .await;
    at(last + h(5));
    put(
        "lkc-e2",
        "logical",
        "dev-frontend",
        logical_in("org-b", "eu-west-1", 3),
        None,
    )
    .await;
    put(
        "lkc-e2",
        "status",
        "dev-sync",
        status("running", 3, 1),
        None,
    )
    .await;
    at(last + h(7));
    let mut gone = logical_in("org-b", "eu-west-1", 3);
    gone["deleted"] = json!(true);
    put(
        "lkc-e2",
        "logical",
        "dev-frontend",
        gone,
        Some("customer deleted"),
    )
    .await;
    put(
        "lkc-e2",
        "status",
        "dev-sync",
        status("deleted", 0, 2),
        None,
    )
    .await;
    at(last + h(10));
    let mut gone = logical_in("org-a", "us-east-1", 2);
    gone["deleted"] = json!(true);
    put(
        "lkc-e1",
        "logical",
        "dev-frontend",
        gone,
        Some("customer deleted"),
    )
    .await;
    put(
        "lkc-e1",
        "status",
        "dev-sync",
        status("deleted", 0, 2),
        None,
    )
    .await;
    // Now: e3 drifts for 45 minutes, e4 for 10, e5 is provisioning and in sync.
    at(now - h(3));
    put(
        "lkc-e5",
        "logical",
        "dev-frontend",
        logical_in("org-b", "eu-west-1", 1),
        None,
    )
    .await;
    put(
        "lkc-e5",
        "status",
        "dev-sync",
        status("provisioning", 0, 1),
        None,
    )
    .await;
    at(now - h(2));
    put(
        "lkc-e3",
        "logical",
        "dev-frontend",
        logical_in("org-a", "us-east-1", 1),
        None,
    )
    .await;
    put(
        "lkc-e3",
        "status",
        "dev-sync",
        status("running", 1, 1),
        None,
    )
    .await;
    at(now - m(45));
    put(
        "lkc-e3",
        "logical",
        "dev-frontend",
        logical_in("org-a", "us-east-1", 2),
        Some("expand"),
    )
    .await;
    at(now - m(10));
    put(
        "lkc-e4",
        "logical",
        "dev-frontend",
        logical_in("org-b", "eu-west-1", 1),
        None,
    )
    .await;

    // Wait for the server's projector.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (st, v) = sql(&server, "SELECT count(*) AS n FROM audit_log").await;
        if st == 200 && v["rows"][0]["n"] == writes {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projector did not catch up: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (st, v) = sql(&server, &readme_example("CKU-hours per org for last month")).await;
    assert_eq!(st, 200, "{v}");
    // lkc-e3 bills 1 CKU from now-2h on; only in the first two hours of a month does part
    // of that fall into last month.
    let e3_last_month = (this_month - (now - h(2)))
        .num_milliseconds()
        .clamp(0, 7_200_000) as f64
        / 3_600_000.0;
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(
        (rows[0]["org_id"].as_str(), rows[1]["org_id"].as_str()),
        (Some("org-a"), Some("org-b"))
    );
    assert!(
        (rows[0]["cku_hours"].as_f64().unwrap() - (20.0 + e3_last_month)).abs() < 1e-6,
        "{v}"
    );
    assert!(
        (rows[1]["cku_hours"].as_f64().unwrap() - 6.0).abs() < 1e-9,
        "{v}"
    );

    let (st, v) = sql(
        &server,
        &readme_example(
            "Clusters whose desired state the data plane has not reached for over 30 minutes",
        ),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["cluster_id"], "lkc-e3");
    assert_eq!(rows[0]["logical_version"], 2);
    assert_eq!(rows[0]["observed_version"], 1);

    let (st, v) = sql(&server, &readme_example("Clusters per region and phase")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["rows"],
        json!([
            {"region": "eu-west-1", "phase": "provisioning", "clusters": 1},
            {"region": "eu-west-1", "clusters": 1},
            {"region": "us-east-1", "phase": "running", "clusters": 1}
        ])
    );

    let (st, v) = sql(
        &server,
        &readme_example("The last 20 changes by a given principal"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let got: Vec<(String, String)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["cluster_id"].as_str().unwrap().to_owned(),
                r["facet"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = ["lkc-e3", "lkc-e5", "lkc-e1", "lkc-e2", "lkc-e2", "lkc-e1"]
        .iter()
        .map(|c| (c.to_string(), "status".to_owned()))
        .collect();
    assert_eq!(got, want);

    let between = readme_example("Every change to a cluster between two times")
        .replace("2026-10-02T00:00:00Z", &last.to_rfc3339())
        .replace("2026-10-02T09:00:00Z", &(last + h(9)).to_rfc3339());
    let (st, v) = sql(&server, &between).await;
    assert_eq!(st, 200, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "the deletion at +10 h is outside: {v}");
    assert_eq!(
        (rows[0]["facet"].as_str(), rows[0]["reason"].as_str()),
        (Some("logical"), Some("created"))
    );
    let diff: Value = serde_json::from_str(rows[0]["diff"].as_str().unwrap()).unwrap();
    assert_eq!(diff["cku"], json!({"from": null, "to": 2}));

    // CSV and Arrow IPC carry the same answer.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/sql", server.url()))
        .bearer_auth("dev-frontend")
        .header("accept", "text/csv")
        .json(
            &json!({"sql": "SELECT cluster_id, deleted FROM clusters ORDER BY cluster_id LIMIT 2"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        "cluster_id,deleted\nlkc-e1,true\nlkc-e2,true\n"
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/sql", server.url()))
        .bearer_auth("dev-frontend")
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&json!({"sql": "SELECT cluster_id FROM clusters ORDER BY cluster_id"}))
        .send()
        .await
        .unwrap();
    let table = fleetledger_queries::ipc_to_table(&resp.bytes().await.unwrap()).unwrap();
    assert!(
        table.contains("lkc-e5") && table.ends_with("(5 rows)"),
        "{table}"
    );

    // Refusals over HTTP: 400 with a message; 401 without a token.
    for (q, code) in [
        ("DROP TABLE clusters", "not_read_only"),
        ("COPY (SELECT 1) TO '/tmp/x.csv'", "not_read_only"),
        ("SELEC 1", "invalid_query"),
        ("SELECT * FROM nope", "invalid_query"),
    ] {
        let (st, v) = sql(&server, q).await;
        assert_eq!((st, v["error"].as_str()), (400, Some(code)), "{q}: {v}");
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/sql", server.url()))
        .json(&json!({"sql": "SELECT 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    server.stop().await;
}

/// Hostile SQL against the service: each limit answers with its status and names itself,
/// nothing is read from or written to local files, and the service stays ready.
#[tokio::test]
async fn hostile_queries_hit_named_limits_and_the_service_stays_ready() {
    let mut cfg = config(&unique_prefix("sqlhostile"));
    cfg.queries.memory_limit_mib = 64;
    cfg.queries.timeout_ms = 4_000;
    let server = TestServer::start(cfg).await;
    let cases: Vec<(String, u16, &str)> = vec![
        (
            "SELECT v % 50000000 AS k, count(*) FROM range(0, 200000000) AS t(v) GROUP BY k ORDER BY k LIMIT 1".into(),
            400,
            "",
        ),
        (format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000)), 400, "queries.max_sql_bytes"),
        (format!("SELECT {}1{}", "(".repeat(1_000), ")".repeat(1_000)), 400, "queries.max_depth"),
        (format!("SELECT 0{}", " + 1".repeat(1_000)), 400, "queries.max_operators"),
        ("COPY (SELECT 1) TO '/tmp/fleetledger-e2e-copy.csv'".into(), 400, "only queries"),
        ("CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'".into(), 400, "only queries"),
        ("SELECT count(*) FROM range(0, 100000) a CROSS JOIN range(0, 100000) b".into(), 400, ""),
    ];
    for (q, want, names) in &cases {
        let (st, v) = sql(&server, q).await;
        assert_eq!(st, *want, "{}: {v}", &q[..q.len().min(80)]);
        let message = v["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(names),
            "{}: {message}",
            &q[..q.len().min(80)]
        );
        assert!(
            [
                "query_memory_limit",
                "query_timeout",
                "too_many_rows",
                "query_too_complex",
                "not_read_only"
            ]
            .contains(&v["error"].as_str().unwrap_or_default()),
            "{v}"
        );
    }
    assert!(!std::path::Path::new("/tmp/fleetledger-e2e-copy.csv").exists());
    let ready = reqwest::get(format!("{}/readyz", server.url()))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200, "still ready");
    let (st, v) = sql(&server, "SELECT count(*) AS n FROM clusters").await;
    assert_eq!(st, 200, "{v}");
    server.stop().await;
}
