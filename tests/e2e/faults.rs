//! Faults of the broker under a steady write load, against a broker of the test's own
//! (started by `deploy/local/kafka` on another port, so killing it touches no other test):
//! nothing answered 201 is lost or written twice, nothing answered "not written" is in
//! history, an unknown outcome resolves to the original answer on a keyed retry, and
//! writes come back after the broker does without a restart of `serve`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::append::{Api, status};
use crate::support::{TestServer, config, unique_prefix};

/// The port of the fault tests' own broker (its controller uses the next one).
const PORT: u16 = 19392;

fn kafka_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka")
}

/// Runs `deploy/local/kafka ACTION` for the private broker.
fn kafka(action: &str) {
    let out = Command::new(kafka_script())
        .arg(action)
        .env("FLEETLEDGER_KAFKA_PORT", PORT.to_string())
        .env("FLEETLEDGER_KAFKA_HEAP", "512m")
        .output()
        .expect("deploy/local/kafka runs");
    assert!(
        out.status.success(),
        "kafka {action}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGKILLs the private broker.
fn kill_broker() {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/fleetledger")
        .read_dir()
        .expect("the kafka cache exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&format!("-{PORT}")))
        .expect("the private broker's directory");
    let pid = std::fs::read_to_string(home.join("kafka.pid")).expect("pid file");
    let status = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -9 {pid}");
}

/// One answer a writer got: idempotency key, cluster, HTTP status, answer; and the state
/// it sent.
type Answer = (String, String, u16, Value, Value);

#[tokio::test]
async fn a_killed_broker_loses_nothing_acknowledged_and_writes_come_back() {
    kafka("start");
    let mut cfg = config(&unique_prefix("faultkill"));
    cfg.kafka.bootstrap_servers = format!("127.0.0.1:{PORT}");
    cfg.kafka.request_timeout_ms = 3_000;
    let server = TestServer::start(cfg.clone()).await;
    let api = Api::new(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6 {
        let (api, stop) = (api.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let cluster = format!("lkc-fault{w}");
            let mut answers: Vec<Answer> = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let key = format!("k-{w}-{n}");
                let state = status("running", n % 8 + 1, 1);
                let (st, v) = api
                    .append(
                        &cluster,
                        "status",
                        "dev-sync",
                        &state,
                        &[("idempotency-key", &key)],
                    )
                    .await;
                answers.push((key, cluster.clone(), st, v, state));
                if st != 201 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    kill_broker();
    // Longer than a commit may take (3 × the 3 s request timeout): commits in flight
    // fail, and their outcome must be learned before anyone is answered.
    tokio::time::sleep(Duration::from_secs(15)).await;
    kafka("start");
    let back = Instant::now();
    // Writes come back without a restart of serve: wait for a 201 answered after this point.
    let url = server.url();
    let probe = Api::new(&server);
    let mut recovered_after = None;
    while back.elapsed() < Duration::from_secs(120) {
        let (st, _) = probe
            .append(
                "lkc-probe",
                "status",
                "dev-sync",
                &status("running", 1, 1),
                &[],
            )
            .await;
        if st == 201 {
            recovered_after = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered_after = recovered_after.expect("writes succeed again after the broker is back");
    eprintln!(
        "faults: writes succeeded again {recovered_after:?} after the broker was back ({url})"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);
    let mut answers: Vec<Answer> = Vec::new();
    for w in writers {
        answers.extend(w.await.expect("writer task"));
    }
    // An unknown outcome is resolved by a keyed retry, which answers the original result.
    let mut unknown = 0;
    for (key, cluster, st, v, state) in answers.iter_mut() {
        if *st == 503 && v["error"] == "outcome_unknown" {
            unknown += 1;
        }
        let mut tries = 0;
        while *st == 503 && v["error"] == "outcome_unknown" && tries < 50 {
            tries += 1;
            let (s2, v2) = api
                .append(
                    cluster,
                    "status",
                    "dev-sync",
                    state,
                    &[("idempotency-key", key)],
                )
                .await;
            *st = s2;
            *v = v2;
        }
    }
    let acknowledged: BTreeMap<&str, (&str, i64)> = answers
        .iter()
        .filter(|a| a.2 == 201)
        .map(|(k, c, _, v, _)| (k.as_str(), (c.as_str(), v["version"].as_i64().unwrap())))
        .collect();
    let not_written: Vec<&str> = answers
        .iter()
        .filter(|a| a.2 == 503 && a.3["error"] == "unavailable")
        .map(|a| a.0.as_str())
        .collect();
    assert!(
        acknowledged.len() > 10,
        "the load wrote: {}",
        acknowledged.len()
    );
    // What history holds, per cluster: request id → versions.
    let mut in_history: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for w in 0..6 {
        let (st, h) = api
            .get(&format!("/v1/clusters/lkc-fault{w}/history"), "dev-sync")
            .await;
        assert_eq!(st, 200, "{h}");
        let records = h["records"].as_array().unwrap();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                r["version"].as_i64(),
                Some(i as i64 + 1),
                "versions are gapless"
            );
            in_history
                .entry(r["request_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(r["version"].as_i64().unwrap());
        }
    }
    let lost: Vec<&&str> = acknowledged
        .keys()
        .filter(|k| in_history.get(**k).is_none_or(|v| v.len() != 1))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not in history exactly once: {lost:?}"
    );
    for (k, (_, version)) in &acknowledged {
        assert_eq!(
            in_history[*k],
            vec![*version],
            "{k} has the answered version"
        );
    }
    let lies: Vec<&&str> = not_written
        .iter()
        .filter(|k| in_history.contains_key(**k))
        .collect();
    assert!(
        lies.is_empty(),
        "answered 'not written' but written: {lies:?}"
    );
    eprintln!(
        "faults: {} acknowledged, 0 lost, 0 duplicated, {} answered not written (none in history), {unknown} outcomes unknown (resolved by keyed retries), {} answers in all",
        acknowledged.len(),
        not_written.len(),
        answers.len()
    );
    server.stop().await;
    kafka("stop");
}
