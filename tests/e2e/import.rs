//! Simulated fleet history imported through the ledger with its original times.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fleetledger_bench::simulate::Simulation;
use fleetledger_client::ApiClient;
use fleetledger_client::history_file::HistoryLine;
use fleetledger_client::history_file::parse_lines;
use fleetledger_client::import::import_file;
use fleetledger_projectors::billing::{HOUR_MS, hour_start};
use serde_json::Value;

use crate::append::{Api, history_keys};
use crate::support::{TestServer, config, unique_prefix};

fn write_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join("fleetledger-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}-{name}", unique_prefix("file")));
    std::fs::write(&path, text).unwrap();
    path
}

/// What the billing invariants need to know of one simulated cluster.
#[derive(Default, Debug)]
struct Story {
    max_cku: i64,
    first_running_ms: Option<i64>,
    deleted_ms: Option<i64>,
}

/// The bill of a history by the obvious definition, in integer CKU-milliseconds per
/// (cluster, hour start) up to `now_ms`: each cluster's lines in time order (ties in file
/// order), the rate `min(desired, actual)` integrated from one line to the next.
fn reference_hours(lines: &[(usize, HistoryLine)], now_ms: i64) -> BTreeMap<(String, i64), i128> {
    let mut by_cluster: BTreeMap<&str, Vec<(i64, usize, &HistoryLine)>> = BTreeMap::new();
    for (no, l) in lines {
        let ms = l.ts.parse::<DateTime<Utc>>().unwrap().timestamp_millis();
        by_cluster
            .entry(&l.cluster_id)
            .or_default()
            .push((ms, *no, l));
    }
    let mut out = BTreeMap::new();
    for (cluster, mut events) in by_cluster {
        events.sort_by_key(|(ms, no, _)| (*ms, *no));
        let (mut desired, mut actual) = (0i64, 0i64);
        let mut add = |from: i64, to: i64, rate: i64| {
            let mut t = from;
            while t < to && rate > 0 {
                let end = (hour_start(t) + HOUR_MS).min(to);
                *out.entry((cluster.to_owned(), hour_start(t))).or_insert(0) +=
                    i128::from(rate) * i128::from(end - t);
                t = end;
            }
        };
        for (i, (ms, _, l)) in events.iter().enumerate() {
            match l.facet.as_str() {
                "logical" => {
                    let deleted = l.state["deleted"].as_bool().unwrap_or(false);
                    desired = if deleted {
                        0
                    } else {
                        l.state["cku"].as_i64().unwrap()
                    };
                }
                "status" => {
                    let billable = ["running", "expanding", "shrinking", "degraded"]
                        .contains(&l.state["phase"].as_str().unwrap());
                    actual = if billable {
                        l.state["cku"].as_i64().unwrap()
                    } else {
                        0
                    };
                }
                _ => {}
            }
            let next = events.get(i + 1).map_or(now_ms, |e| e.0.min(now_ms));
            add(*ms, next, desired.min(actual));
        }
    }
    out
}

#[tokio::test]
async fn a_simulated_history_years_old_imports_once_and_bills_plausibly() {
    let cfg = config(&unique_prefix("import"));
    let server = TestServer::start(cfg.clone()).await;
    let start: DateTime<Utc> = "2019-03-01T00:00:00Z".parse().unwrap();
    let mut text = Vec::new();
    let lines = Simulation {
        clusters: 20,
        days: 10,
        seed: 42,
        start,
        fleet: 0,
    }
    .write(&mut text)
    .unwrap()
    .lines;
    let text = String::from_utf8(text).unwrap();
    let path = write_file("history.jsonl", &text);
    let client = ApiClient::new(&server.url(), Some("dev-import".into()));

    let first = import_file(&client, &path, 150, false)
        .await
        .expect("import");
    assert_eq!((first.imported, first.already), (lines, 0));
    // Running it again (as after an interruption) writes nothing twice.
    let again = import_file(&client, &path, 150, false)
        .await
        .expect("re-import");
    assert_eq!((again.imported, again.already), (0, lines));
    assert_eq!(
        history_keys(&cfg).await.len() as u64,
        lines,
        "Kafka kept every years-old record"
    );

    // Original times and writers are kept.
    let parsed = parse_lines(&text).unwrap();
    let (_, first_line) = &parsed[0];
    let api = Api::new(&server);
    let (st, h) = api
        .get(
            &format!("/v1/clusters/{}/history", first_line.cluster_id),
            "dev-frontend",
        )
        .await;
    assert_eq!(st, 200, "{h}");
    let r0 = &h["records"][0];
    assert_eq!(
        r0["ts"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(),
        first_line.ts.parse::<DateTime<Utc>>().unwrap()
    );
    assert_eq!(r0["writer"], first_line.writer.as_str());
    assert!(r0["ts"].as_str().unwrap().starts_with("2019-"));

    // Billing invariants over the projection of the import.
    let mut stories: BTreeMap<String, Story> = BTreeMap::new();
    for (_, l) in &parsed {
        let s = stories.entry(l.cluster_id.clone()).or_default();
        let ms = l.ts.parse::<DateTime<Utc>>().unwrap().timestamp_millis();
        if let Some(cku) = l.state.get("cku").and_then(Value::as_i64) {
            s.max_cku = s.max_cku.max(cku);
        }
        if l.state.get("phase").and_then(Value::as_str) == Some("running")
            && s.first_running_ms.is_none()
        {
            s.first_running_ms = Some(ms);
        }
        if l.state.get("deleted").and_then(Value::as_bool) == Some(true) {
            s.deleted_ms = Some(ms);
        }
    }
    let p = crate::recovery::caught_up_projector(&cfg, &server, "import");
    p.catch_up(|_| {}).await.expect("caught up");
    let projections = p.projections();
    let snapshot = projections.read().await;
    let now = Utc::now().timestamp_millis();
    // Closed days from the files the projection wrote, the rest from memory.
    let rows = snapshot.billing.all_rows(now).unwrap();
    assert!(!rows.is_empty());
    assert!(
        !snapshot.billing.segments.is_empty(),
        "the closed days of years-old history are in files"
    );
    // Exact, hour by hour, against the reference integral of the simulated history.
    let want = reference_hours(&parsed, now);
    let got: BTreeMap<(String, i64), f64> = rows
        .iter()
        .filter(|r| r.cku_hours != 0.0)
        .map(|r| ((r.cluster_id.clone(), r.hour_start_ms), r.cku_hours))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the billed hours are the reference's"
    );
    for (k, v) in &want {
        let v = *v as f64 / HOUR_MS as f64;
        assert!(
            (got[k] - v).abs() < 1e-9,
            "{k:?}: billed {} not {v}",
            got[k]
        );
    }
    let mut billed = 0.0;
    for r in &rows {
        let s = &stories[&r.cluster_id];
        assert!(r.cku_hours >= 0.0, "{r:?}");
        assert!(
            r.cku_hours <= s.max_cku as f64 + 1e-9,
            "above the cluster's CKU: {r:?} {s:?}"
        );
        let running = s.first_running_ms.expect("every cluster runs");
        if r.hour_start_ms < hour_start(running) {
            assert!(
                r.cku_hours.abs() < 1e-12,
                "billed while provisioning: {r:?} {s:?}"
            );
        }
        if let Some(d) = s.deleted_ms
            && r.hour_start_ms > hour_start(d)
        {
            assert!(
                r.cku_hours.abs() < 1e-12,
                "billed after deletion: {r:?} {s:?}"
            );
        }
        // Clusters still running bill on up to now; the hours of 2019 are closed.
        if r.hour_start_ms
            < "2020-01-01T00:00:00Z"
                .parse::<DateTime<Utc>>()
                .unwrap()
                .timestamp_millis()
        {
            assert!(!r.open, "{r:?}");
        }
        billed += r.cku_hours;
    }
    assert!(billed > 0.0);
    drop(snapshot);
    server.stop().await;
}

#[tokio::test]
async fn bad_lines_are_refused_with_their_number_and_nothing_of_the_batch_is_written() {
    let cfg = config(&unique_prefix("importbad"));
    let server = TestServer::start(cfg.clone()).await;
    let client = ApiClient::new(&server.url(), Some("dev-import".into()));
    let logical = r#"{"org_id":"o","env_id":"e","kind":"kafka","name":"n","sku":"basic","cku":1,"cloud":"aws","region":"us-east-1","network":"public","config":{},"deleted":false}"#;
    let good = |minute: u32, cluster: &str| {
        format!(
            r#"{{"ts":"2020-01-01T00:{minute:02}:00Z","cluster_id":"{cluster}","facet":"logical","principal":"frontend","state":{logical}}}"#
        )
    };
    // Malformed line: refused before anything is sent.
    let path = write_file(
        "malformed.jsonl",
        &format!(
            "{}\n{}\n{{\"ts\": 3}}\n",
            good(1, "lkc-i1"),
            good(2, "lkc-i1")
        ),
    );
    let err = import_file(&client, &path, 10, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3"), "{err}");
    // Backwards time: refused before anything is sent.
    let path = write_file(
        "backwards.jsonl",
        &format!("{}\n{}\n", good(5, "lkc-i1"), good(1, "lkc-i1")),
    );
    let err = import_file(&client, &path, 10, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("backwards"), "{err}");
    // A principal that does not own the facet: the server refuses the batch.
    let stranger = good(2, "lkc-i2").replace("\"frontend\"", "\"mallory\"");
    let path = write_file(
        "principal.jsonl",
        &format!("{}\n{stranger}\n", good(1, "lkc-i3")),
    );
    let err = import_file(&client, &path, 10, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("mallory"), "{err}");
    // Only the import principal may import.
    let path = write_file("ok.jsonl", &format!("{}\n", good(1, "lkc-i4")));
    let frontend = ApiClient::new(&server.url(), Some("dev-frontend".into()));
    let err = import_file(&frontend, &path, 10, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("403"), "{err}");
    assert!(history_keys(&cfg).await.is_empty(), "nothing was written");
    let done = import_file(&client, &path, 10, false)
        .await
        .expect("a good file imports");
    assert_eq!(done.imported, 1);
    server.stop().await;
}

/// Import cannot forge: times outside the sane range, importing under live history, and a
/// resumed import whose line differs from what is stored are all refused, and nothing of
/// a refused batch is written.
#[tokio::test]
async fn import_cannot_forge_times_live_history_or_resumed_lines() {
    let cfg = config(&unique_prefix("importforge"));
    let server = TestServer::start(cfg.clone()).await;
    let client = ApiClient::new(&server.url(), Some("dev-import".into()));
    let item = |line: usize, cluster: &str, ts: &str, cku: i64, expected: i64| {
        let mut state = crate::append::logical(cku);
        state["deleted"] = serde_json::json!(false);
        serde_json::json!({"line": line, "ts": ts, "cluster_id": cluster, "facet": "logical",
            "writer": "frontend", "state": state, "expected_version": expected,
            "idempotency_key": format!("import:{cluster}/logical/v{}", expected + 1)})
    };
    let refused = |e: fleetledger_client::ClientError| match e {
        fleetledger_client::ClientError::Api(api) => (api.status, api.body),
        other => panic!("{other}"),
    };
    // In the future (a day ahead), and in year 1: refused with the line and the range.
    let future = (Utc::now() + chrono::TimeDelta::days(1)).to_rfc3339();
    for ts in [future.as_str(), "0001-01-01T00:00:00Z"] {
        let (st, body) = refused(
            client
                .import(&[
                    item(1, "lkc-forge1", "2024-01-01T00:00:00Z", 1, 0),
                    item(2, "lkc-forge1", ts, 2, 1),
                ])
                .await
                .unwrap_err(),
        );
        assert_eq!(st, 400, "{body}");
        let m = body["message"].as_str().unwrap();
        assert!(
            m.starts_with("line 2:") && (m.contains("future") || m.contains("import_earliest")),
            "{m}"
        );
    }
    assert!(
        history_keys(&cfg).await.is_empty(),
        "nothing of a refused batch is written"
    );

    // Live history: refused unless asked for; then only as versions after the live ones.
    let api = Api::new(&server);
    let (st, v) = api
        .append(
            "lkc-live1",
            "logical",
            "dev-frontend",
            &crate::append::logical(2),
            &[],
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, body) = refused(
        client
            .import(&[item(1, "lkc-live1", "2024-01-01T00:00:00Z", 1, 0)])
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (st, body["error"].as_str()),
        (409, Some("invalid_line")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("live history"),
        "{body}"
    );
    let answer = client
        .import_with(&[item(1, "lkc-live1", "2024-01-01T00:00:00Z", 1, 0)], true)
        .await
        .unwrap();
    assert_eq!(
        answer.results[0].status, 409,
        "v1 is the live record, not this line: {answer:?}"
    );
    assert_eq!(
        answer.results[0].body.as_ref().unwrap()["error"],
        "import_differs"
    );

    // A resumed import is compared line by line with what is stored.
    let first = [
        item(1, "lkc-forge2", "2024-01-01T00:00:00Z", 1, 0),
        item(2, "lkc-forge2", "2024-01-01T01:00:00Z", 2, 1),
    ];
    let answer = client.import(&first).await.unwrap();
    assert!(answer.results.iter().all(|r| r.status == 201), "{answer:?}");
    let same = client.import(&first).await.unwrap();
    assert!(same.results.iter().all(|r| r.status == 200), "{same:?}");
    let changed = [
        first[0].clone(),
        item(2, "lkc-forge2", "2024-01-01T01:00:00Z", 3, 1),
    ];
    let answer = client.import(&changed).await.unwrap();
    assert_eq!(answer.results[0].status, 200, "{answer:?}");
    assert_eq!(answer.results[1].status, 409, "{answer:?}");
    let body = answer.results[1].body.as_ref().unwrap();
    assert_eq!(body["error"], "import_differs", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("version 2"),
        "{body}"
    );
    server.stop().await;
}

/// A cluster's lines are queued together, each linked to the one before it: a line that
/// fails at write time stops the cluster's later lines (answered 424, not written), even
/// of another facet, while other clusters' lines are written.
#[tokio::test]
async fn a_failed_line_stops_its_clusters_later_lines_and_no_other() {
    let server = TestServer::start(config(&unique_prefix("import-chain"))).await;
    let item = |line: u64, ts: &str, cluster: &str, facet: &str, expected: i64| {
        let (writer, state) = match facet {
            "logical" => ("frontend", crate::append::logical(2)),
            _ => ("sync", crate::append::status("running", 2, 1)),
        };
        serde_json::json!({
            "line": line, "ts": ts, "cluster_id": cluster, "facet": facet, "writer": writer,
            "state": state, "expected_version": expected,
            "idempotency_key": format!("import:{cluster}/{facet}/v{}", expected + 1),
        })
    };
    let items = serde_json::json!({"items": [
        item(1, "2026-01-01T00:00:00Z", "lkc-chain-a", "logical", 0),
        // Expects version 5 of a facet at version 1: refused at write time.
        item(2, "2026-01-01T01:00:00Z", "lkc-chain-a", "logical", 5),
        item(3, "2026-01-01T02:00:00Z", "lkc-chain-a", "status", 0),
        item(4, "2026-01-01T03:00:00Z", "lkc-chain-a", "status", 1),
        item(5, "2026-01-01T01:30:00Z", "lkc-chain-b", "logical", 0),
        item(6, "2026-01-01T02:30:00Z", "lkc-chain-b", "status", 0),
    ]});
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/v1/import", server.url()))
        .bearer_auth("dev-import")
        .json(&items)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<i64> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, vec![201, 409, 424, 424, 201, 201], "{answer}");
    let api = Api::new(&server);
    let records = |cluster: &'static str| {
        let api = api.clone();
        async move {
            let (status, h) = api
                .get(&format!("/v1/clusters/{cluster}/history"), "dev-sync")
                .await;
            assert_eq!(status, 200, "{h}");
            h["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["facet"].as_str().unwrap().to_owned(),
                        r["version"].as_i64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        records("lkc-chain-a").await,
        vec![("logical".to_owned(), 1)],
        "nothing after the failed line"
    );
    assert_eq!(
        records("lkc-chain-b").await,
        vec![("logical".to_owned(), 1), ("status".to_owned(), 1)]
    );
    server.stop().await;
}
