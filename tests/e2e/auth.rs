//! Who gets in: token hashes, development tokens only where asked for and on loopback.

use fleetledger::server;
use fleetledger_ledger::principals::token_hash;
use tokio_util::sync::CancellationToken;

use crate::append::{Api, logical, status};
use crate::support::{TestServer, config, sql_as, tokens_file, unique_prefix};

#[tokio::test]
async fn without_a_tokens_file_the_service_starts_only_with_development_tokens_on_loopback() {
    let mut cfg = config(&unique_prefix("notokens"));
    cfg.auth.development_tokens = false;
    let err = server::start(cfg.clone(), CancellationToken::new())
        .await
        .expect_err("refused without tokens")
        .to_string();
    assert!(
        err.contains("auth.tokens_file") && err.contains("token create"),
        "{err}"
    );
    cfg.auth.development_tokens = true;
    cfg.listen = "0.0.0.0:0".into();
    let err = server::start(cfg, CancellationToken::new())
        .await
        .expect_err("refused off loopback")
        .to_string();
    assert!(
        err.contains("loopback") && err.contains("0.0.0.0:0"),
        "{err}"
    );
}

#[tokio::test]
async fn a_tokens_file_of_hashes_lets_in_its_tokens_and_nothing_else() {
    let mut cfg = config(&unique_prefix("tokensfile"));
    let file = tokens_file(&[("prod-frontend-secret", "frontend", &[])]);
    cfg.auth.tokens_file = Some(file);
    cfg.auth.development_tokens = true; // a tokens file wins: no dev tokens then
    let server = TestServer::start(cfg).await;
    let api = Api::new(&server);
    let (st, v) = api
        .append(
            "lkc-tok1",
            "logical",
            "prod-frontend-secret",
            &logical(1),
            &[],
        )
        .await;
    assert_eq!(st, 201, "{v}");
    for bad in [
        "dev-frontend",
        "prod-frontend-secre",
        &token_hash("prod-frontend-secret"),
    ] {
        let (st, v) = api
            .append("lkc-tok2", "logical", bad, &logical(1), &[])
            .await;
        assert_eq!(st, 401, "{bad}: {v}");
    }
    server.stop().await;
}

/// A token limited to an org sees and changes only that org: another org's cluster is not
/// found (reads, writes, deletes, batch items), a change naming another org is refused,
/// and every SQL table (joins included) holds only its org's rows; nothing it was refused
/// is written.
#[tokio::test]
async fn a_token_limited_to_an_org_sees_and_changes_only_that_org() {
    let mut cfg = config(&unique_prefix("scopes"));
    let file = tokens_file(&[
        ("ops-frontend", "frontend", &[]),
        ("ops-sync", "sync", &[]),
        ("tenant-a", "frontend", &["org-a"]),
    ]);
    cfg.auth.tokens_file = Some(file);
    let server = TestServer::start(cfg).await;
    let api = Api::new(&server);
    let in_org = |org: &str| {
        let mut l = logical(2);
        l["org_id"] = serde_json::json!(org);
        l
    };
    for (cluster, org) in [("lkc-sa1", "org-a"), ("lkc-sb1", "org-b")] {
        let (st, v) = api
            .append(cluster, "logical", "ops-frontend", &in_org(org), &[])
            .await;
        assert_eq!(st, 201, "{v}");
        let (st, v) = api
            .append(cluster, "status", "ops-sync", &status("running", 2, 1), &[])
            .await;
        assert_eq!(st, 201, "{v}");
    }
    // Reads of its own cluster work; another org's is not found, whatever the route.
    let (st, v) = api.get("/v1/clusters/lkc-sa1", "tenant-a").await;
    assert_eq!(st, 200, "{v}");
    for path in [
        "/v1/clusters/lkc-sb1",
        "/v1/clusters/lkc-sb1/history",
        "/v1/clusters/lkc-sb1/audit",
        "/v1/clusters/lkc-sb1/state",
        "/v1/clusters/lkc-sb1/verify",
    ] {
        let (st, v) = api.get(path, "tenant-a").await;
        assert_eq!(st, 404, "{path}: {v}");
        assert!(!v.to_string().contains("org-b"), "{path} leaks: {v}");
    }
    // Writes: another org's cluster is not found; naming another org is out of scope.
    let (st, v) = api
        .append("lkc-sb1", "logical", "tenant-a", &in_org("org-a"), &[])
        .await;
    assert_eq!((st, v["error"].as_str()), (404, Some("not_found")), "{v}");
    let (st, v) = api
        .append("lkc-sa2", "logical", "tenant-a", &in_org("org-b"), &[])
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (403, Some("out_of_scope")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("org-a"), "{v}");
    let (st, v) = api
        .append("lkc-sa1", "logical", "tenant-a", &in_org("org-b"), &[])
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (403, Some("out_of_scope")),
        "{v}"
    );
    let resp = reqwest::Client::new()
        .delete(format!("{}/v1/clusters/lkc-sb1", server.url()))
        .bearer_auth("tenant-a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let (st, v) = api
        .batch(
            "tenant-a",
            &[
                serde_json::json!({"cluster_id": "lkc-sb1", "facet": "logical", "state": in_org("org-a")}),
                serde_json::json!({"cluster_id": "lkc-sa2", "facet": "logical", "state": in_org("org-a")}),
            ],
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["status"], 404, "{v}");
    assert_eq!(v["results"][1]["status"], 201, "{v}");
    // Nothing refused was written: org-b's cluster has its two records only.
    let (st, h) = api
        .get("/v1/clusters/lkc-sb1/history", "ops-frontend")
        .await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["records"].as_array().unwrap().len(), 2, "{h}");
    // SQL: every table holds only org-a's rows, joins included.
    let url = server.url();
    let everything = "SELECT (SELECT count(*) FROM clusters) AS clusters, (SELECT count(*) FROM audit_log) AS audit, (SELECT count(DISTINCT cluster_id) FROM billing_hours) AS billed";
    let mut all = serde_json::Value::Null;
    for _ in 0..100 {
        let (st, v) = sql_as(&url, "ops-frontend", everything).await;
        assert_eq!(st, 200, "{v}");
        all = v["rows"][0].clone();
        if all["clusters"] == 3 && all["audit"] == 5 && all["billed"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        all,
        serde_json::json!({"clusters": 3, "audit": 5, "billed": 2})
    );
    let (st, v) = sql_as(&url, "tenant-a", everything).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["rows"][0],
        serde_json::json!({"clusters": 2, "audit": 3, "billed": 1})
    );
    for q in [
        "SELECT DISTINCT org_id FROM clusters",
        "SELECT DISTINCT b.org_id FROM billing_hours b JOIN audit_log a ON a.cluster_id = b.cluster_id",
        "SELECT DISTINCT org_id FROM billing_daily",
    ] {
        let (st, v) = sql_as(&url, "tenant-a", q).await;
        assert_eq!(st, 200, "{q}: {v}");
        assert_eq!(v["rows"], serde_json::json!([{"org_id": "org-a"}]), "{q}");
    }
    let (st, v) = sql_as(
        &url,
        "tenant-a",
        "SELECT count(*) AS n FROM audit_log WHERE cluster_id = 'lkc-sb1'",
    )
    .await;
    assert_eq!((st, v["rows"][0]["n"].as_i64()), (200, Some(0)), "{v}");
    server.stop().await;
}
