//! Faults of the broker under a steady write load, against a broker of the test's own
//! (started by `deploy/local/kafka` on another port, so killing it touches no other test):
//! nothing answered 201 is lost or written twice, nothing answered "not written" is in
//! history, an unknown outcome resolves to the original answer on a keyed retry, and
//! writes come back after the broker does without a restart of `serve`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::append::{Api, status};
use crate::support::{
    ServeProcess, TestServer, assert_kept_every_promise, config, free_port, kafka_script, tally,
    unique_prefix, with_fields, written,
};

/// The port of the fault tests' own broker (its controller uses the next one).
const PORT: u16 = 19392;

/// Runs `deploy/local/kafka ACTION` for the private broker.
fn kafka(action: &str) {
    let port = PORT.to_string();
    kafka_script(
        &[action],
        &[
            ("FLEETLEDGER_KAFKA_PORT", &port),
            ("FLEETLEDGER_KAFKA_HEAP", "512m"),
        ],
    );
}

/// SIGKILLs the private broker.
fn kill_broker() {
    let port = PORT.to_string();
    let pid = kafka_script(&["pid", "1"], &[("FLEETLEDGER_KAFKA_PORT", &port)]);
    let status = Command::new("kill")
        .args(["-9", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -9 {pid}");
}

/// One answer a writer got: idempotency key, cluster, HTTP status, answer; and the state
/// it sent.
type Answer = (String, String, u16, Value, Value);

/// How a scenario takes the broker away.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outage {
    /// SIGKILL: no goodbye, connections simply stop answering.
    Kill,
    /// `deploy/local/kafka stop`: a controlled shutdown (SIGTERM).
    Stop,
}

/// A number from the environment, or `default`: `deploy/local/faults` runs the long
/// versions of these scenarios through it.
pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Appends a scenario's figures as one JSON line to `FLEETLEDGER_FAULT_RESULTS`, when set
/// (`deploy/local/faults` writes `faults/REPORT.md` from them). Written before the test's
/// assertions, so a failing scenario is in the report too.
pub(crate) fn record_result(figures: Value) {
    eprintln!("faults: {figures}");
    if let Ok(path) = std::env::var("FLEETLEDGER_FAULT_RESULTS") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("the results file opens");
        writeln!(f, "{figures}").expect("the results file takes a line");
    }
}

/// The broker taken away for a while under six keyed writers, then back: nothing
/// acknowledged is lost or duplicated, nothing answered "not written" is in history, an
/// unknown outcome resolves to the original answer on a keyed retry, `/readyz` says not
/// ready while writes cannot commit, and writes come back within 10 s of the broker's
/// return without a restart of `serve`. The normal suite takes the broker away for 15 s
/// (`FLEETLEDGER_FAULT_OUTAGE_S`, `FLEETLEDGER_FAULT_OUTAGE=kill|stop`).
#[tokio::test]
async fn a_killed_broker_loses_nothing_acknowledged_and_writes_come_back() {
    let how = match std::env::var("FLEETLEDGER_FAULT_OUTAGE").as_deref() {
        Ok("stop") => Outage::Stop,
        _ => Outage::Kill,
    };
    let outage = Duration::from_secs(env_u64("FLEETLEDGER_FAULT_OUTAGE_S", 15));
    broker_outage(outage, how).await;
}

async fn broker_outage(outage: Duration, how: Outage) {
    let _alone = crate::support::TIMED_FAULTS.lock().await;
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
                // Writers a few milliseconds apart: their changes reach the writer while
                // the transaction before them commits, not all in one group.
                let pause = if st == 201 { w as u64 } else { 100 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The writer is pipelined under this load: groups were decided while the transaction
    // before them committed, so the broker dies in the middle of such a sequence.
    let metric = |text: &str, name: &str| crate::support::metric(text, name).unwrap_or(0.0);
    let ahead_before_outage = metric(
        &crate::support::metrics_text(&server.url()).await,
        "fleetledger_writer_groups_decided_ahead_total",
    );
    match how {
        Outage::Kill => kill_broker(),
        Outage::Stop => kafka("stop"),
    }
    let down = Instant::now();
    // While the broker is away, /readyz must come to say so (once the writer has seen a
    // write fail to commit: within a commit's time limit, 3 × the request timeout).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut not_ready_after = None;
    while down.elapsed() < outage {
        if not_ready_after.is_none()
            && let Ok(r) = http.get(format!("{}/readyz", server.url())).send().await
            && r.status().as_u16() == 503
        {
            not_ready_after = Some(down.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    kafka("start");
    let back = Instant::now();
    // Writes come back without a restart of serve: wait for a 201 answered after this point.
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
    let fenced = answers.iter().filter(|a| a.3["error"] == "fenced").count();
    let decided_again = metric(
        &crate::support::metrics_text(&server.url()).await,
        "fleetledger_writer_groups_decided_again_total",
    );
    let answers: Vec<(String, u16, Value)> = answers
        .into_iter()
        .map(|(k, _, st, v, _)| (k, st, v))
        .collect();
    let clusters: Vec<String> = (0..6).map(|w| format!("lkc-fault{w}")).collect();
    let t = tally(&answers, &written(&server.url(), &clusters).await);
    let acknowledged = t["acknowledged"].as_u64().unwrap_or(0) as usize;
    let rebuilt = projections_match_a_rebuild(&cfg, &server.url(), "lkc-fault").await;
    let scenario = match how {
        Outage::Kill => "broker SIGKILLed",
        Outage::Stop => "broker stopped (SIGTERM)",
    };
    record_result(with_fields(
        t.clone(),
        serde_json::json!({
            "scenario": format!("{scenario} for {} s under 6 keyed writers", outage.as_secs()),
            "kind": "broker_outage",
            "outage_s": outage.as_secs(),
            "faults": 1,
            "outcome_unknown": unknown,
            "fenced": fenced,
            "groups_decided_ahead_before_outage": ahead_before_outage,
            "groups_decided_again": decided_again,
            "not_ready_after_s": not_ready_after.map(|d| d.as_secs_f64()),
            "recovery_s": recovered_after.map(|d| d.as_secs_f64()),
            "projections_equal_rebuild": rebuilt.as_ref().is_ok_and(|r| r.audit_rows == acknowledged),
            "projections_detail": rebuilt.as_ref().err(),
        }),
    ));
    let recovered_after = recovered_after.expect("writes succeed again after the broker is back");
    assert_kept_every_promise(&t);
    assert_eq!(fenced, 0, "no writer but this one: nothing is fenced");
    assert!(
        ahead_before_outage > 0.0,
        "the writer decided groups ahead of their transaction before the outage"
    );
    let rebuilt = rebuilt.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        rebuilt.audit_rows, acknowledged,
        "one audit row per acknowledged change"
    );
    assert!(
        not_ready_after.is_some(),
        "/readyz said not ready during the {outage:?} outage"
    );
    assert!(
        recovered_after < Duration::from_secs(10),
        "writes came back {recovered_after:?} after the broker did (at most 10 s)"
    );
    server.stop().await;
    kafka("stop");
}

/// `fleetledger serve` SIGKILLed at random points under a keyed write load, three times
/// (`FLEETLEDGER_FAULT_KILLS`), restarted each time: every change answered 201 (or learned
/// by a keyed retry) is in history exactly once with its version, versions are gapless,
/// and the projections after catch-up equal a clean rebuild.
#[tokio::test]
async fn a_killed_service_loses_nothing_acknowledged_and_its_projections_match_a_rebuild() {
    let kills = env_u64("FLEETLEDGER_FAULT_KILLS", 3);
    let cfg = config(&unique_prefix("servekill"));
    let port = free_port();
    let mut serve = ServeProcess::spawn(&cfg, port);
    serve.wait_ready().await;
    let url = serve.url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (url, stop) = (url.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            // (key, answer, status, version). A client retries a request whose answer it
            // did not get (the connection broke, or the outcome is unknown) with the same
            // key until it gets one, as a well-behaved client does.
            let mut answers: Vec<(String, Value, Option<u16>, Option<i64>)> = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let key = format!("k-{w}-{n}");
                let state = status("running", n % 8 + 1, 1);
                let mut tries = 0;
                loop {
                    tries += 1;
                    let sent = http
                        .post(format!("{url}/v1/clusters/lkc-kill{w}/status"))
                        .bearer_auth("dev-sync")
                        .header("idempotency-key", &key)
                        .json(&state)
                        .send()
                        .await;
                    match sent {
                        Ok(r) => {
                            let st = r.status().as_u16();
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            // Not an answer about the change: the outcome is unknown, or
                            // the service restarted and is not ready yet (it did nothing
                            // with this request). Ask again with the same key.
                            if st == 503
                                && (v["error"] == "outcome_unknown" || v["error"] == "not_ready")
                                && tries < 300
                            {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                            answers.push((key.clone(), v.clone(), Some(st), v["version"].as_i64()));
                            if st != 201 {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            break;
                        }
                        Err(_) if tries < 300 => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(_) => {
                            answers.push((key.clone(), state.clone(), None, None));
                            break;
                        }
                    }
                }
            }
            answers
        }));
    }
    let jitter = || {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Duration::from_millis(500 + u64::from(nanos % 1500))
    };
    // Seconds from each restart to the first write answered 201 after it.
    let mut recovery = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(jitter()).await;
        serve.kill();
        let restarted = Instant::now();
        serve = ServeProcess::spawn(&cfg, port);
        serve.wait_ready().await;
        let probe = reqwest::Client::new();
        while restarted.elapsed() < Duration::from_secs(120) {
            let r = probe
                .post(format!("{url}/v1/clusters/lkc-probe/status"))
                .bearer_auth("dev-sync")
                .json(&status("running", 1, 1))
                .send()
                .await;
            if r.is_ok_and(|r| r.status().as_u16() == 201) {
                recovery.push(restarted.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let mut answers = Vec::new();
    for w in writers {
        answers.extend(w.await.expect("writer"));
    }
    let retried = answers.iter().filter(|a| a.2.is_none()).count();
    assert_eq!(retried, 0, "every request got an answer");
    let answers: Vec<(String, u16, Value)> = answers
        .into_iter()
        .map(|(k, body, st, _)| (k, st.unwrap_or(0), body))
        .collect();
    let clusters: Vec<String> = (0..4).map(|w| format!("lkc-kill{w}")).collect();
    let t = tally(&answers, &written(&url, &clusters).await);
    let acknowledged = t["acknowledged"].as_u64().unwrap_or(0) as usize;
    let rebuilt = projections_match_a_rebuild(&cfg, &url, "lkc-kill").await;
    record_result(with_fields(
        t.clone(),
        serde_json::json!({
            "scenario": format!("serve SIGKILLed {kills} times at random points under 4 keyed writers, restarted each time"),
            "kind": "serve_kill",
            "faults": kills,
            "recovery_s": recovery.iter().copied().fold(0.0, f64::max),
            "projections_equal_rebuild": rebuilt.as_ref().is_ok_and(|r| r.audit_rows == acknowledged),
            "projections_detail": rebuilt.as_ref().err(),
        }),
    ));
    assert_kept_every_promise(&t);
    assert_eq!(
        t["written_unacknowledged"], 0,
        "nothing written that was not acknowledged (every client retried with its key): {t}"
    );
    let rebuilt = rebuilt.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        rebuilt.audit_rows, acknowledged,
        "one audit row per acknowledged change"
    );
    serve.kill();
}

/// A clean rebuild of a prefix's topics, next to what a service serves.
struct Rebuilt {
    /// The clean rebuild's `audit_log` rows of clusters whose id starts with the prefix
    /// asked for.
    audit_rows: usize,
}

/// Rebuilds the projections of `cfg`'s topics from scratch (in a directory of its own) and
/// waits (up to 20 s) until the service at `url` serves the same `clusters` versions and
/// `audit_log` row count: `Err` says what differs.
async fn projections_match_a_rebuild(
    cfg: &fleetledger::Config,
    url: &str,
    clusters_prefix: &str,
) -> Result<Rebuilt, String> {
    let codec = fleetledger_registry::http_codec(&format!("{url}/registry")).unwrap();
    let p = fleetledger_projectors::Projector::open(
        fleetledger_ledger::KafkaClients::new(cfg.kafka.clone()),
        fleetledger_ledger::TopicLayout::new(&cfg.kafka),
        Arc::new(codec),
        fleetledger_projectors::ProjectorConfig {
            dir: cfg.projector.dir.join("clean"),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    p.catch_up(|_| {}).await.map_err(|e| e.to_string())?;
    let clean_versions: Vec<(String, i64)> = {
        let s = p.projections();
        let s = s.read().await;
        s.clusters
            .rows
            .iter()
            .map(|(id, r)| (id.clone(), r.status.as_ref().map_or(0, |v| v.version)))
            .collect()
    };
    let audit = p.audit_rows().await.map_err(|e| e.to_string())?;
    let clean_audit_rows = audit.len();
    let rebuilt = Rebuilt {
        audit_rows: audit
            .iter()
            .filter(|r| r.cluster_id.starts_with(clusters_prefix))
            .count(),
    };
    let http = reqwest::Client::new();
    let sql = |q: &'static str| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("{url}/v1/sql"))
                .bearer_auth("dev-sync")
                .json(&serde_json::json!({ "sql": q }))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            r.json::<Value>().await.map_err(|e| e.to_string())
        }
    };
    let mut served = (Vec::new(), None);
    for _ in 0..100 {
        let v = sql("SELECT cluster_id, status_version FROM clusters ORDER BY cluster_id").await?;
        let versions = v["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r["cluster_id"].as_str().unwrap_or_default().to_owned(),
                            r["status_version"].as_i64().unwrap_or(0),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let n = sql("SELECT count(*) AS n FROM audit_log").await?["rows"][0]["n"].as_u64();
        served = (versions, n);
        if served.0 == clean_versions && served.1 == Some(clean_audit_rows as u64) {
            return Ok(rebuilt);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "after 20 s the service serves {} clusters rows and {:?} audit rows; a clean rebuild has {} and {clean_audit_rows}{}",
        served.0.len(),
        served.1,
        clean_versions.len(),
        if served.0 == clean_versions {
            ""
        } else {
            " (the clusters' versions differ)"
        }
    ))
}

/// SIGTERM under a write load never cuts a commit: the service drains, every change it
/// answered 201 is in history, nothing it answered "not written" is, and it exits cleanly.
#[tokio::test]
async fn sigterm_under_load_drains_without_cutting_a_commit() {
    let cfg = config(&unique_prefix("serveterm"));
    let port = free_port();
    let mut serve = ServeProcess::spawn(&cfg, port);
    serve.wait_ready().await;
    let url = serve.url.clone();
    let mut writers = Vec::new();
    for w in 0..4 {
        let url = url.clone();
        writers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut answers: Vec<(String, Option<u16>, Value)> = Vec::new();
            for n in 1.. {
                let key = format!("t-{w}-{n}");
                let sent = http
                    .post(format!("{url}/v1/clusters/lkc-term{w}/status"))
                    .bearer_auth("dev-sync")
                    .header("idempotency-key", &key)
                    .json(&status("running", n % 8 + 1, 1))
                    .send()
                    .await;
                match sent {
                    Ok(r) => {
                        let st = r.status().as_u16();
                        answers.push((key, Some(st), r.json().await.unwrap_or(Value::Null)));
                    }
                    // The service is gone: the last request may have no answer.
                    Err(_) => {
                        answers.push((key, None, Value::Null));
                        break;
                    }
                }
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = serve.child.id().to_string();
    let status_of_kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status_of_kill.success());
    let termed = Instant::now();
    let exit = tokio::task::spawn_blocking(move || serve.child.wait())
        .await
        .unwrap()
        .unwrap();
    let drained_in = termed.elapsed();
    let mut answers = Vec::new();
    for w in writers {
        answers.extend(w.await.unwrap());
    }
    // Read what history holds through a fresh service.
    let serve = ServeProcess::spawn(&cfg, port);
    serve.wait_ready().await;
    let back_after = termed.elapsed();
    let answers: Vec<(String, u16, Value)> = answers
        .into_iter()
        .map(|(k, st, v)| (k, st.unwrap_or(0), v))
        .collect();
    let clusters: Vec<String> = (0..4).map(|w| format!("lkc-term{w}")).collect();
    let t = tally(&answers, &written(&url, &clusters).await);
    record_result(with_fields(
        t.clone(),
        serde_json::json!({
            "scenario": "serve sent SIGTERM under 4 keyed writers",
            "kind": "serve_term",
            "faults": 1,
            "exit": exit.code(),
            "drain_s": drained_in.as_secs_f64(),
            "recovery_s": back_after.as_secs_f64(),
        }),
    ));
    assert!(exit.success(), "serve exits cleanly on SIGTERM: {exit}");
    assert_kept_every_promise(&t);
    serve.kill();
}
