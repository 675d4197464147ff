//! The append API against the real broker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetledger_ledger::{KafkaClients, TopicLayout};
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::support::{TestServer, config, unique_prefix};

/// The versions of a `GET /v1/clusters/{id}/history` answer's records, in its order.
fn history_versions(h: &Value) -> Vec<i64> {
    h["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_i64().unwrap())
        .collect()
}

/// A status state as the sync service reports it.
pub(crate) fn status(phase: &str, cku: i64, observed: i64) -> Value {
    json!({"phase": phase, "cku": cku, "brokers_ready": 3, "observed_version": observed})
}

pub(crate) fn logical(cku: i64) -> Value {
    json!({"org_id": "org-1", "env_id": "env-1", "kind": "kafka", "name": "orders",
        "sku": "dedicated", "cku": cku, "cloud": "aws", "region": "us-east-1",
        "network": "private-link", "config": {"retention.ms": "1000"}})
}

/// A small HTTP client for the API under test.
#[derive(Clone)]
pub(crate) struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(server: &TestServer) -> Api {
        Api {
            base: server.url(),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `POST /v1/batch` of `items` as `token`: status and answer.
    pub(crate) async fn batch(&self, token: &str, items: &[Value]) -> (u16, Value) {
        self.post_raw(
            "/v1/batch",
            Some(token),
            &[("content-type", "application/json")],
            json!({ "items": items }).to_string().into_bytes(),
        )
        .await
    }

    pub(crate) async fn append(
        &self,
        cluster: &str,
        facet: &str,
        token: &str,
        body: &Value,
        extra: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(extra);
        self.post_raw(
            &format!("/v1/clusters/{cluster}/{facet}"),
            Some(token),
            &headers,
            body.to_string().into_bytes(),
        )
        .await
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// Every committed record of the history topic: (key, partition, offset).
pub(crate) async fn history_keys(config: &fleetledger::Config) -> Vec<(String, i32, i64)> {
    let clients = KafkaClients::new(config.kafka.clone());
    let layout = TopicLayout::new(&config.kafka);
    let consumer = clients.consumer("test-reader").unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut open = 0;
    for p in 0..layout.partitions {
        tpl.add_partition_offset(&layout.history, p, Offset::Beginning)
            .unwrap();
        open += 1;
    }
    consumer.assign(&tpl).unwrap();
    let mut keys = Vec::new();
    while open > 0 {
        match tokio::time::timeout(std::time::Duration::from_secs(20), consumer.recv())
            .await
            .expect("history readable")
        {
            Err(KafkaError::PartitionEOF(_)) => open -= 1,
            Err(e) => panic!("read failed: {e}"),
            Ok(m) => keys.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.partition(),
                m.offset(),
            )),
        }
    }
    keys
}

#[tokio::test]
async fn every_refusal_has_its_status_and_writes_nothing() {
    let mut cfg = config(&unique_prefix("refusals"));
    cfg.max_body_bytes = 4096;
    let server = TestServer::start(cfg.clone()).await;
    let api = Api::new(&server);
    let fe = "dev-frontend";
    let c = "lkc-refuse1";

    let (st, v) = api
        .append(c, "logical", fe, &logical(2), &[("idempotency-key", "k1")])
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        (v["version"].as_i64(), v["facet"].as_str()),
        (Some(1), Some("logical"))
    );

    let path = format!("/v1/clusters/{c}/logical");
    let json_ct = [("content-type", "application/json")];
    let cases: Vec<(u16, &str, (u16, Value))> = vec![
        (
            400,
            "malformed JSON",
            api.post_raw(&path, Some(fe), &json_ct, b"{nope".to_vec())
                .await,
        ),
        (
            400,
            "wrong type",
            api.append(c, "logical", fe, &json!({"cku": "two"}), &[])
                .await,
        ),
        (
            400,
            "cku 0",
            api.append(c, "logical", fe, &logical(0), &[]).await,
        ),
        (
            400,
            "cku 257",
            api.append(c, "logical", fe, &logical(257), &[]).await,
        ),
        (400, "unknown cloud", {
            let mut l = logical(2);
            l["cloud"] = json!("ibm");
            api.append(c, "logical", fe, &l, &[]).await
        }),
        (
            400,
            "unknown facet",
            api.append(c, "billing", fe, &logical(2), &[]).await,
        ),
        (
            400,
            "bad cluster id",
            api.append("LKC_1", "logical", fe, &logical(2), &[]).await,
        ),
        (
            400,
            "bad If-Match",
            api.append(c, "logical", fe, &logical(3), &[("if-match", "x")])
                .await,
        ),
        (
            401,
            "no token",
            api.post_raw(&path, None, &json_ct, logical(2).to_string().into_bytes())
                .await,
        ),
        (
            401,
            "unknown token",
            api.append(c, "logical", "dev-nobody", &logical(2), &[])
                .await,
        ),
        (
            403,
            "not the owner",
            api.append(c, "logical", "dev-sync", &logical(2), &[]).await,
        ),
        (
            403,
            "recovery may not write status",
            api.append(
                c,
                "status",
                "dev-recovery",
                &json!({"phase": "running", "cku": 2, "brokers_ready": 3, "observed_version": 1}),
                &[],
            )
            .await,
        ),
        (
            409,
            "stale If-Match",
            api.append(c, "logical", fe, &logical(3), &[("if-match", "0")])
                .await,
        ),
        (413, "too large", {
            let mut l = logical(2);
            l["name"] = json!("x".repeat(5000));
            api.append(c, "logical", fe, &l, &[]).await
        }),
        (
            415,
            "not JSON",
            api.post_raw(
                &path,
                Some(fe),
                &[("content-type", "text/plain")],
                logical(2).to_string().into_bytes(),
            )
            .await,
        ),
        (
            422,
            "key reused with another body",
            api.append(c, "logical", fe, &logical(5), &[("idempotency-key", "k1")])
                .await,
        ),
    ];
    for (want, what, (got, body)) in &cases {
        assert_eq!(got, want, "{what}: {body}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{what}: {body}"
        );
    }
    let conflict = &cases.iter().find(|c| c.1 == "stale If-Match").unwrap().2.1;
    assert_eq!(conflict["current_version"], 1, "{conflict}");

    let (st, v) = api.get("/v1/clusters/lkc-unknown", fe).await;
    assert_eq!((st, v["error"].as_str()), (404, Some("not_found")));

    // The same key and body: the original answer, not a new version.
    let (st, again) = api
        .append(c, "logical", fe, &logical(2), &[("idempotency-key", "k1")])
        .await;
    assert_eq!(st, 201);
    assert_eq!(again["version"], 1);

    let keys = history_keys(&cfg).await;
    assert_eq!(
        keys.len(),
        1,
        "only the accepted change is in history: {keys:?}"
    );
    assert_eq!(keys[0].0, format!("{c}/logical/{:020}", 1));
    server.stop().await;
}

#[tokio::test]
async fn fifty_racing_writers_win_one_version_each() {
    let cfg = config(&unique_prefix("race"));
    let server = TestServer::start(cfg.clone()).await;
    let api = Arc::new(Api::new(&server));
    let c = "lkc-race1";
    let rounds = 4;
    for round in 0..rounds {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..50 {
            let api = api.clone();
            tasks.spawn(async move {
                let expect = round.to_string();
                let (st, _) = api
                    .append(
                        c,
                        "logical",
                        "dev-frontend",
                        &logical(1 + w),
                        &[("if-match", &expect)],
                    )
                    .await;
                st
            });
        }
        let mut statuses = BTreeMap::new();
        while let Some(st) = tasks.join_next().await {
            *statuses.entry(st.unwrap()).or_insert(0) += 1;
        }
        assert_eq!(
            statuses,
            BTreeMap::from([(201, 1), (409, 49)]),
            "round {round}"
        );
    }
    let (st, h) = api
        .get(&format!("/v1/clusters/{c}/history"), "dev-frontend")
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        history_versions(&h),
        (1..=rounds as i64).collect::<Vec<_>>()
    );
    // Each record links to the one before.
    let recs = h["records"].as_array().unwrap();
    for pair in recs.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    server.stop().await;
}

/// The retry of the third keyed append of `a_restarted_server_…`: status and answer.
async fn retry_key_3(api: &Api, c: &str) -> (u16, Value) {
    api.append(
        c,
        "logical",
        "dev-frontend",
        &logical(3),
        &[("idempotency-key", "key-3")],
    )
    .await
}

#[tokio::test]
async fn a_restarted_server_continues_versions_chains_and_idempotency() {
    let prefix = unique_prefix("restart-ledger");
    let first = TestServer::start(config(&prefix)).await;
    let api = Api::new(&first);
    let c = "lkc-restart1";
    let mut last = Value::Null;
    for i in 1..=3 {
        let key = format!("key-{i}");
        let (st, v) = api
            .append(
                c,
                "logical",
                "dev-frontend",
                &logical(i),
                &[("idempotency-key", &key)],
            )
            .await;
        assert_eq!(st, 201, "{v}");
        last = v;
    }
    first.stop().await;

    let second = TestServer::start(config(&prefix)).await;
    let api = Api::new(&second);
    let (st, cur) = api.get(&format!("/v1/clusters/{c}"), "dev-sync").await;
    assert_eq!(st, 200);
    assert_eq!(cur["facets"]["logical"]["version"], 3);
    assert_eq!(cur["facets"]["logical"]["hash"], last["hash"]);

    // A retry of an earlier request after the restart gets its original answer.
    assert_eq!(retry_key_3(&api, c).await, (201, last.clone()));

    let (st, v) = api
        .append(
            c,
            "logical",
            "dev-frontend",
            &logical(4),
            &[("if-match", "3")],
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["version"], 4);
    let (_, h) = api
        .get(&format!("/v1/clusters/{c}/history"), "dev-frontend")
        .await;
    let recs = h["records"].as_array().unwrap();
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[3]["prev_hash"], last["hash"]);
    second.stop().await;

    // Version 4 came without an idempotency key, so it entered no window; the keyed
    // requests before it still answer after another restart (the window rides along in
    // the state record of the unkeyed change).
    let third = TestServer::start(config(&prefix)).await;
    let api = Api::new(&third);
    assert_eq!(retry_key_3(&api, c).await, (201, last.clone()));
    let (_, h) = api
        .get(&format!("/v1/clusters/{c}/history"), "dev-frontend")
        .await;
    assert_eq!(h["records"].as_array().unwrap().len(), 4, "{h}");
    third.stop().await;
}

/// A second instance on the same topics stands by: it serves reads from an index that
/// follows the writer's commits, redirects writes (307 to the same path at the writer,
/// nothing written here), and takes over when the writer stops, with the idempotency
/// window: a keyed retry there gets the original answer.
#[tokio::test]
async fn a_second_instance_stands_by_redirects_writes_and_takes_over() {
    let prefix = unique_prefix("standby");
    let cfg = config(&prefix);
    let first = TestServer::start(cfg.clone()).await;
    let a = Api::new(&first);
    let c = "lkc-standby1";
    let (st, _) = a
        .append(c, "logical", "dev-frontend", &logical(1), &[])
        .await;
    assert_eq!(st, 201);

    // A second instance has projections of its own (one directory per process).
    let mut second_cfg = cfg.clone();
    second_cfg.projector.dir = cfg.projector.dir.join("second");
    let second = TestServer::start(second_cfg).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let ready = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(format!("{url}/readyz")).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(
        ready(first.url()).await,
        (200, json!({"status": "ready", "role": "writer"}))
    );
    assert_eq!(
        ready(second.url()).await,
        (
            200,
            json!({"status": "ready", "role": "standby", "writer": first.url()})
        )
    );
    // A write to the standby: redirected to the writer, nothing written.
    let path = format!("/v1/clusters/{c}/logical");
    let r = http
        .post(format!("{}{path}", second.url()))
        .bearer_auth("dev-frontend")
        .header("idempotency-key", "k-standby")
        .json(&logical(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 307);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{}{path}", first.url())
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["error"].as_str(), v["writer"].as_str()),
        (Some("not_writer"), Some(first.url().as_str())),
        "{v}"
    );
    // Following the redirect (same method, body, token and key) writes it once.
    let (st, original) = a
        .append(
            c,
            "logical",
            "dev-frontend",
            &logical(2),
            &[("idempotency-key", "k-standby")],
        )
        .await;
    assert_eq!(
        (st, original["version"].as_i64()),
        (201, Some(2)),
        "{original}"
    );
    // The standby's reads follow the writer's commits.
    let b = Api::new(&second);
    let mut seen = Value::Null;
    for _ in 0..100 {
        let (_, v) = b.get(&format!("/v1/clusters/{c}"), "dev-frontend").await;
        seen = v["facets"]["logical"]["version"].clone();
        if seen == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 2, "the standby's index follows the state topic");

    // The writer stops (leaving the election): the standby takes over.
    let stopped = std::time::Instant::now();
    first.stop().await;
    let mut role = Value::Null;
    while stopped.elapsed() < std::time::Duration::from_secs(30) {
        role = ready(second.url()).await.1["role"].clone();
        if role == "writer" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(role, "writer", "the standby took over");
    // The keyed retry of a change the old writer committed: its original answer.
    let (st, again) = b
        .append(
            c,
            "logical",
            "dev-frontend",
            &logical(2),
            &[("idempotency-key", "k-standby")],
        )
        .await;
    assert_eq!((st, &again), (201, &original));
    let (st, v) = b
        .append(c, "logical", "dev-frontend", &logical(3), &[])
        .await;
    assert_eq!((st, v["version"].as_i64()), (201, Some(3)), "{v}");
    let keys: Vec<String> = history_keys(&cfg).await.into_iter().map(|k| k.0).collect();
    assert_eq!(
        keys,
        (1..=3)
            .map(|v| format!("{c}/logical/{v:020}"))
            .collect::<Vec<_>>()
    );
    second.stop().await;
}

#[tokio::test]
async fn batch_items_are_independent() {
    let cfg = config(&unique_prefix("batch"));
    let server = TestServer::start(cfg.clone()).await;
    let api = Api::new(&server);
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"cluster_id": format!("lkc-b{i}"), "facet": "logical", "state": logical(2)}))
        .chain([
            json!({"cluster_id": "lkc-b0", "facet": "logical", "state": logical(3), "expected_version": 7}),
            json!({"cluster_id": "lkc-b1", "facet": "logical", "state": logical(0)}),
            json!({"cluster_id": "lkc-b2", "facet": "status", "state": {"phase": "running", "cku": 2, "brokers_ready": 3, "observed_version": 1}}),
        ])
        .collect();
    let (st, v) = api.batch("dev-frontend", &items).await;
    assert_eq!(st, 200, "{v}");
    let statuses: Vec<u64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    let mut want = vec![201; 20];
    want.extend([409, 400, 403]);
    assert_eq!(statuses, want, "{v}");
    assert_eq!(history_keys(&cfg).await.len(), 20);
    server.stop().await;
}

#[tokio::test]
async fn a_key_repeated_within_one_batch_is_one_change() {
    let cfg = config(&unique_prefix("batch-keys"));
    let server = TestServer::start(cfg.clone()).await;
    let api = Api::new(&server);
    let item = |c: &str, cku: i64, key: Option<&str>| {
        let mut v = json!({"cluster_id": c, "facet": "logical", "state": logical(cku)});
        if let Some(k) = key {
            v["idempotency_key"] = json!(k);
        }
        v
    };
    let items = vec![
        item("lkc-k1", 2, Some("k")),
        item("lkc-k1", 2, Some("k")), // the same request again: the same answer
        item("lkc-k1", 3, Some("k")), // the same key with another body: refused
        item("lkc-k2", 2, Some("k")), // the same key on another cluster: its own change
        item("lkc-k3", 2, None),      // unkeyed: two changes, two versions
        item("lkc-k3", 2, None),
    ];
    let (st, v) = api.batch("dev-frontend", &items).await;
    assert_eq!(st, 200, "{v}");
    let results = v["results"].as_array().unwrap();
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 201, 422, 201, 201, 201], "{v}");
    assert_eq!(results[0]["body"], results[1]["body"], "{v}");
    assert_eq!(results[3]["body"]["version"], 1, "{v}");
    assert_eq!(results[4]["body"]["version"], 1, "{v}");
    assert_eq!(results[5]["body"]["version"], 2, "{v}");
    assert_eq!(history_keys(&cfg).await.len(), 4);
    server.stop().await;
}

#[tokio::test]
async fn records_decode_with_the_registry_and_aborted_transactions_stay_invisible() {
    let cfg = config(&unique_prefix("decode"));
    let server = TestServer::start(cfg.clone()).await;
    let api = Api::new(&server);
    let c = "lkc-dec1";
    assert_eq!(
        api.append(c, "logical", "dev-frontend", &logical(2), &[])
            .await
            .0,
        201
    );
    assert_eq!(
        api.append(
            c,
            "physical",
            "dev-physical-controller",
            &json!({"brokers": 3, "disk_gb_per_broker": 100, "zones": ["a"], "version": "3.9"}),
            &[]
        )
        .await
        .0,
        201
    );
    assert_eq!(
        api.append(
            c,
            "capacity",
            "dev-capacity-controller",
            &json!({"satellite": "s", "k8s_cluster": "k", "node_pool": "n"}),
            &[]
        )
        .await
        .0,
        201
    );
    assert_eq!(
        api.append(
            c,
            "status",
            "dev-sync",
            &json!({"phase": "running", "cku": 2, "brokers_ready": 3, "observed_version": 1}),
            &[]
        )
        .await
        .0,
        201
    );

    // Write around the ledger in a transaction that aborts.
    let clients = KafkaClients::new(cfg.kafka.clone());
    let layout = TopicLayout::new(&cfg.kafka);
    let producer = clients
        .transactional_producer("test", &format!("{}-aborter", cfg.kafka.topic_prefix))
        .unwrap();
    producer
        .init_transactions(std::time::Duration::from_secs(30))
        .unwrap();
    producer.begin_transaction().unwrap();
    let key = format!("{c}/logical/{:020}", 99);
    producer
        .send(
            FutureRecord::to(&layout.history)
                .key(&key)
                .payload("aborted")
                .partition(0),
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap();
    producer
        .abort_transaction(std::time::Duration::from_secs(30))
        .unwrap();

    let keys: Vec<String> = history_keys(&cfg).await.into_iter().map(|k| k.0).collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(!keys.contains(&key));

    // The history endpoint decodes every record with the registered schemas.
    let (st, h) = api
        .get(&format!("/v1/clusters/{c}/history"), "dev-sync")
        .await;
    assert_eq!(st, 200);
    let facets: Vec<&str> = h["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["facet"].as_str().unwrap())
        .collect();
    assert_eq!(facets, vec!["logical", "physical", "capacity", "status"]);
    assert_eq!(h["records"][1]["state"]["zones"], json!(["a"]));
    server.stop().await;
}

#[tokio::test]
async fn without_kafka_writes_answer_503_with_retry_after() {
    let mut cfg = config(&unique_prefix("nokafka"));
    // Nothing listens on port 1.
    cfg.kafka.bootstrap_servers = "127.0.0.1:1".into();
    cfg.kafka.request_timeout_ms = 1000;
    let token = tokio_util::sync::CancellationToken::new();
    let running = fleetledger::server::start(cfg, token.clone())
        .await
        .unwrap();
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let resp = http
        .post(format!("{base}/v1/clusters/lkc-nok1/logical"))
        .bearer_auth("dev-frontend")
        .header("content-type", "application/json")
        .body(logical(2).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "not_ready", "{body}");
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    token.cancel();
    // Start-up never finished, so waiting returns without an error of its own.
    let _ = running.wait().await;
}

/// A live record's `ts` never goes below the cluster's previous record of any facet, even
/// when the clock steps back and across a restart of the writer.
#[tokio::test]
async fn a_clusters_time_never_goes_backwards_across_facets_clock_steps_and_restarts() {
    use chrono::{DateTime, TimeDelta, Utc};
    use fleetledger_ledger::ManualClock;
    let cfg = config(&unique_prefix("monotone"));
    let t0: DateTime<Utc> = "2026-03-01T12:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let server = TestServer::start_with_clock(cfg.clone(), clock.clone()).await;
    let api = Api::new(&server);
    let c = "lkc-monotone";
    let ts_of = |v: &Value| v["ts"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap();
    let (st, first) = api
        .append(c, "logical", "dev-frontend", &logical(2), &[])
        .await;
    assert_eq!(st, 201, "{first}");
    assert_eq!(ts_of(&first), t0);
    // The clock steps back an hour: another facet of the same cluster keeps t0.
    clock.set(t0 - TimeDelta::hours(1));
    let (st, s1) = api
        .append(c, "status", "dev-sync", &status("provisioning", 0, 1), &[])
        .await;
    assert_eq!(st, 201, "{s1}");
    assert_eq!(ts_of(&s1), t0, "not earlier than the logical record");
    // Another cluster is not held back by this one.
    let (st, other) = api
        .append("lkc-other", "logical", "dev-frontend", &logical(1), &[])
        .await;
    assert_eq!(st, 201, "{other}");
    assert_eq!(ts_of(&other), t0 - TimeDelta::hours(1));
    // A restarted writer learns the cluster's latest time from the state topic.
    server.stop().await;
    let server = TestServer::start_with_clock(cfg.clone(), clock.clone()).await;
    let api = Api::new(&server);
    let (st, p1) = api
        .append(
            c,
            "capacity",
            "dev-capacity-controller",
            &json!({"satellite": "sat-1", "k8s_cluster": "k8s-1", "node_pool": "pool-1"}),
            &[],
        )
        .await;
    assert_eq!(st, 201, "{p1}");
    assert_eq!(ts_of(&p1), t0, "after a restart too");
    // Time moves on normally once the clock passes it.
    clock.set(t0 + TimeDelta::minutes(5));
    let (st, s2) = api
        .append(c, "status", "dev-sync", &status("running", 2, 1), &[])
        .await;
    assert_eq!(st, 201, "{s2}");
    assert_eq!(ts_of(&s2), t0 + TimeDelta::minutes(5));
    server.stop().await;
}

/// A DELETE without `If-Match` racing a change of the same cluster never overwrites that
/// change with a stale copy: the deleted record differs from the version before it only
/// in `deleted`. (Deciding the delete in the HTTP handler from a state read before the
/// change committed lost the change.)
#[tokio::test]
async fn a_delete_racing_a_change_never_overwrites_it_with_a_stale_copy() {
    let cfg = config(&unique_prefix("delrace"));
    let server = TestServer::start(cfg.clone()).await;
    let api = Api::new(&server);
    let http = reqwest::Client::new();
    let clusters: Vec<String> = (0..12).map(|i| format!("lkc-race{i}")).collect();
    for c in &clusters {
        let (st, v) = api
            .append(c, "logical", "dev-frontend", &logical(2), &[])
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let races = clusters.iter().map(|c| {
        let (api, http, url) = (api.clone(), http.clone(), server.url());
        async move {
            let five = logical(5);
            let change = api.append(c, "logical", "dev-frontend", &five, &[]);
            let delete = async {
                // Sent while the change waits for its transaction.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                http.delete(format!("{url}/v1/clusters/{c}"))
                    .bearer_auth("dev-frontend")
                    .send()
                    .await
                    .expect("delete sent")
                    .status()
                    .as_u16()
            };
            let ((st, v), del) = tokio::join!(change, delete);
            assert_eq!(st, 201, "{v}");
            assert!(del == 201 || del == 200, "delete answered {del}");
        }
    });
    futures::future::join_all(races).await;
    for c in &clusters {
        let (st, h) = api
            .get(&format!("/v1/clusters/{c}/history"), "dev-frontend")
            .await;
        assert_eq!(st, 200, "{h}");
        let logical: Vec<&Value> = h["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["facet"] == "logical")
            .collect();
        for pair in logical.windows(2) {
            let (before, after) = (&pair[0]["state"], &pair[1]["state"]);
            if after["deleted"] == true && before["deleted"] != true {
                assert_eq!(
                    after["cku"], before["cku"],
                    "{c}: the delete (v{}) brought back cku {} over v{}'s {}",
                    pair[1]["version"], after["cku"], pair[0]["version"], before["cku"]
                );
            }
        }
        assert_eq!(
            logical.len(),
            3,
            "{c}: create, change and delete: {logical:?}"
        );
    }
    server.stop().await;
}

/// A change whose record is larger than the writer sends is refused alone with 413 and
/// the limit; the other changes of its group commit, and the writer goes on.
#[tokio::test]
async fn an_oversized_change_is_refused_alone_and_its_group_commits() {
    let mut cfg = config(&unique_prefix("oversize"));
    cfg.ledger.max_record_bytes = 4_000;
    cfg.ledger.linger_ms = 50;
    let server = TestServer::start(cfg.clone()).await;
    let api = Api::new(&server);
    let mut huge = logical(2);
    huge["config"] = (0..8)
        .map(|i| (format!("blob{i}"), json!("x".repeat(1_000))))
        .collect::<serde_json::Map<String, Value>>()
        .into();
    let items: Vec<Value> = ["lkc-big1", "lkc-big2", "lkc-big3"]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let state = if i == 1 { huge.clone() } else { logical(2) };
            json!({"cluster_id": c, "facet": "logical", "state": state})
        })
        .collect();
    let (st, v) = api.batch("dev-frontend", &items).await;
    assert_eq!(st, 200, "{v}");
    let statuses: Vec<u64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![201, 413, 201], "{v}");
    let message = v["results"][1]["body"]["message"].as_str().unwrap();
    assert!(
        message.contains("4000") && message.contains("lkc-big2"),
        "{message}"
    );
    // Nothing of the refused change was written; the writer goes on at once.
    let keys: Vec<String> = history_keys(&cfg).await.into_iter().map(|k| k.0).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| !k.starts_with("lkc-big2/")), "{keys:?}");
    let (st, v) = api
        .append("lkc-big2", "logical", "dev-frontend", &logical(2), &[])
        .await;
    assert_eq!((st, v["version"].as_i64()), (201, Some(1)), "{v}");
    server.stop().await;
}

/// A cluster whose records lie far apart in its partition (hundreds of other clusters'
/// changes between each two of them) reads back whole and in order: its history read
/// seeks range by range, the ranges shared among several consumers read at once.
#[tokio::test]
async fn a_history_spread_over_a_long_partition_reads_back_whole() {
    let mut cfg = config(&unique_prefix("spread"));
    cfg.kafka.partitions = 1;
    let server = TestServer::start(cfg).await;
    let api = Api::new(&server);
    // 40 ranges: three readers of 16 ranges or fewer.
    let rounds: i64 = 40;
    for round in 0..rounds {
        let items: Vec<Value> = std::iter::once(
            json!({"cluster_id": "lkc-spread", "facet": "logical", "state": logical(1 + round % 4)}),
        )
        .chain((0..250).map(|k| {
            json!({"cluster_id": format!("lkc-fill{k}"), "facet": "logical", "state": logical(1 + round % 4)})
        }))
        .collect();
        let (st, v) = api.batch("dev-frontend", &items).await;
        assert_eq!(st, 200, "{v}");
        assert!(
            v["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["status"] == 201),
            "round {round}: {v}"
        );
    }
    // The audit projection indexes where the cluster's records are: wait for it.
    let want = rounds * 251;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let body = json!({"sql": "SELECT count(*) AS n FROM audit_log"}).to_string();
        let (st, v) = api
            .post_raw(
                "/v1/sql",
                Some("dev-frontend"),
                &[("content-type", "application/json")],
                body.into_bytes(),
            )
            .await;
        if st == 200 && v["rows"][0]["n"] == want {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "projector: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, h) = api
        .get("/v1/clusters/lkc-spread/history", "dev-frontend")
        .await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(history_versions(&h), (1..=rounds).collect::<Vec<_>>());
    server.stop().await;
}
