//! Hostile and careless callers, as a table: for each request, across every endpoint, the
//! status and error code it must get, a message that says what was wrong, nothing written
//! (the history, state and schema topics end where they ended before), and the service
//! still ready afterwards. The service runs as its own process so that its peak memory
//! during the table is its own.

use std::time::Duration;

use fleetledger_ledger::principals::token_hash;
use rdkafka::consumer::Consumer;
use serde_json::{Value, json};

use crate::append::{logical, status};
use crate::support::{ServeProcess, config, free_port, tokens_file, unique_prefix};

/// One hostile request and what it must get.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    token: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    /// The answer's `error` code.
    code: &'static str,
}

fn case(what: &'static str, method: &'static str, path: &str) -> Case {
    Case {
        what,
        method,
        path: path.to_owned(),
        token: Some("ops-frontend"),
        headers: vec![("content-type", "application/json".into())],
        body: Vec::new(),
        status: 400,
        code: "invalid",
    }
}

impl Case {
    fn token(mut self, t: Option<&'static str>) -> Self {
        self.token = t;
        self
    }
    fn json(mut self, v: Value) -> Self {
        self.body = v.to_string().into_bytes();
        self
    }
    fn raw(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }
    fn header(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.headers.retain(|(h, _)| *h != k);
        self.headers.push((k, v.into()));
        self
    }
    fn expect(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }
}

/// Where the ledger's topics (history, state) and the registry's end, per partition.
async fn ends(cfg: &fleetledger::Config) -> Vec<(String, i32, i64)> {
    let clients = fleetledger_ledger::KafkaClients::new(cfg.kafka.clone());
    let layout = fleetledger_ledger::TopicLayout::new(&cfg.kafka);
    let consumer = clients.consumer("hostile-ends").unwrap();
    let mut out = Vec::new();
    for (topic, partitions) in [
        (&layout.history, layout.partitions),
        (&layout.state, layout.partitions),
        (&layout.schemas, 1),
    ] {
        for p in 0..partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            out.push((topic.clone(), p, high));
        }
    }
    out
}

fn logical_in(org: &str) -> Value {
    let mut l = logical(2);
    l["org_id"] = json!(org);
    l
}

fn import_line(ts: &str) -> Value {
    json!({"items": [{"line": 1, "cluster_id": "lkc-imp1", "facet": "status", "ts": ts,
        "writer": "sync", "expected_version": 0, "idempotency_key": "imp-1",
        "state": status("running", 1, 1)}]})
}

#[tokio::test]
async fn fifty_hostile_requests_get_their_status_a_clear_message_and_write_nothing() {
    let cfg = config(&unique_prefix("hostile"));
    let tokens = tokens_file(&[
        ("ops-frontend", "frontend", &[]),
        ("ops-sync", "sync", &[]),
        ("ops-physical-controller", "physical-controller", &[]),
        ("ops-capacity-controller", "capacity-controller", &[]),
        ("ops-recovery", "recovery", &[]),
        ("ops-import", "import", &[]),
        ("tenant-a", "frontend", &["org-a"]),
    ]);
    let port = free_port();
    let serve = ServeProcess::spawn_with(
        &cfg,
        port,
        &[
            ("FLEETLEDGER_AUTH__TOKENS_FILE", tokens.to_str().unwrap()),
            ("FLEETLEDGER_AUTH__DEVELOPMENT_TOKENS", "false"),
            ("FLEETLEDGER_QUERIES__TIMEOUT_MS", "2000"),
        ],
    );
    serve.wait_ready().await;
    let url = serve.url.clone();
    let http = reqwest::Client::new();
    let send = |c: &Case| {
        let mut req = match c.method {
            "GET" => http.get(format!("{url}{}", c.path)),
            "PUT" => http.put(format!("{url}{}", c.path)),
            "DELETE" => http.delete(format!("{url}{}", c.path)),
            _ => http.post(format!("{url}{}", c.path)),
        };
        if let Some(t) = c.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in &c.headers {
            req = req.header(*k, v);
        }
        req.body(c.body.clone()).send()
    };
    // What exists before the table: a cluster of org-a (with status) and one of org-b.
    for (cluster, org) in [("lkc-ha1", "org-a"), ("lkc-hb1", "org-b")] {
        let c =
            case("setup", "POST", &format!("/v1/clusters/{cluster}/logical")).json(logical_in(org));
        let r = send(&c).await.unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    }
    let c = case("setup", "POST", "/v1/clusters/lkc-ha1/status")
        .token(Some("ops-sync"))
        .json(status("running", 2, 1));
    assert_eq!(send(&c).await.unwrap().status().as_u16(), 201);
    let c = case("setup", "POST", "/v1/clusters/lkc-ha1/physical")
        .token(Some("ops-physical-controller"))
        .json(json!({"brokers": 3, "disk_gb_per_broker": 100, "zones": ["a"], "version": "3.9"}))
        .header("idempotency-key", "phys-1");
    assert_eq!(send(&c).await.unwrap().status().as_u16(), 201);
    let before = ends(&cfg).await;

    let append = "/v1/clusters/lkc-ha1/logical";
    let nested = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_sql = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    let many_config: serde_json::Map<String, Value> =
        (0..1001).map(|i| (format!("k{i}"), json!("v"))).collect();
    let physical = |brokers: i64, zones: Value| json!({"brokers": brokers, "disk_gb_per_broker": 100, "zones": zones, "version": "3.9"});
    let with = |key: &str, v: Value| {
        let mut l = logical_in("org-a");
        l[key] = v;
        l
    };
    let cases: Vec<Case> = vec![
        // Who: tokens and principals.
        case("no token", "POST", append)
            .token(None)
            .json(logical_in("org-a"))
            .expect(401, "unauthorized"),
        case("unknown token", "POST", append)
            .token(Some("ops-nobody"))
            .json(logical_in("org-a"))
            .expect(401, "unauthorized"),
        case("a token's hash as the token", "POST", append)
            .token(Some(Box::leak(token_hash("ops-frontend").into_boxed_str())))
            .json(logical_in("org-a"))
            .expect(401, "unauthorized"),
        case("a development token where none are enabled", "POST", append)
            .token(Some("dev-frontend"))
            .json(logical_in("org-a"))
            .expect(401, "unauthorized"),
        case("basic auth instead of a bearer token", "POST", append)
            .token(None)
            .header("authorization", "Basic b3BzOm9wcw==")
            .json(logical_in("org-a"))
            .expect(401, "unauthorized"),
        case("another principal's facet", "POST", append)
            .token(Some("ops-sync"))
            .json(logical_in("org-a"))
            .expect(403, "forbidden"),
        case(
            "recovery writing actual state",
            "POST",
            "/v1/clusters/lkc-ha1/status",
        )
        .token(Some("ops-recovery"))
        .json(status("running", 2, 1))
        .expect(403, "forbidden"),
        case(
            "another org's cluster",
            "POST",
            "/v1/clusters/lkc-hb1/logical",
        )
        .token(Some("tenant-a"))
        .json(logical_in("org-a"))
        .expect(404, "not_found"),
        case("moving a cluster into another org", "POST", append)
            .token(Some("tenant-a"))
            .json(logical_in("org-b"))
            .expect(403, "out_of_scope"),
        case(
            "creating a cluster in another org",
            "POST",
            "/v1/clusters/lkc-ha9/logical",
        )
        .token(Some("tenant-a"))
        .json(logical_in("org-b"))
        .expect(403, "out_of_scope"),
        // What: bodies.
        case("malformed JSON", "POST", append).raw("{nope"),
        case("bad UTF-8", "POST", append).raw(b"{\"org_id\": \"\xff\xfe\"}".to_vec()),
        case("an unknown field", "POST", append).json(with("owner", json!("me"))),
        case("cku as a string", "POST", append).json(with("cku", json!("two"))),
        case("negative cku", "POST", append).json(with("cku", json!(-1))),
        case("cku of 10^30", "POST", append).json(with("cku", json!(1e30))),
        case("cku of i64::MAX", "POST", append).json(with("cku", json!(i64::MAX))),
        case("a 300-character name", "POST", append).json(with("name", json!("n".repeat(300)))),
        case("an empty org", "POST", append).json(with("org_id", json!(""))),
        case("an unknown cloud", "POST", append).json(with("cloud", json!("ibm"))),
        case("10,000 levels of nested JSON", "POST", append).raw(format!(
            "{{\"org_id\":\"org-a\",\"config\":{{\"k\":{nested}}}}}"
        )),
        case("1,001 config entries", "POST", append)
            .json(with("config", Value::Object(many_config.clone()))),
        case("a 300-character config key", "POST", append)
            .json(with("config", json!({"k".repeat(300): "v"}))),
        case("a 5,000-character config value", "POST", append)
            .json(with("config", json!({"k": "v".repeat(5000)}))),
        case("a 2 MiB body", "POST", append)
            .raw(vec![b' '; 2 << 20])
            .expect(413, "payload_too_large"),
        case("not JSON at all", "POST", append)
            .header("content-type", "text/plain")
            .json(logical_in("org-a"))
            .expect(415, "unsupported_media_type"),
        case(
            "a status phase nobody knows",
            "POST",
            "/v1/clusters/lkc-ha1/status",
        )
        .token(Some("ops-sync"))
        .json(status("exploding", 2, 1)),
        case("zero brokers", "POST", "/v1/clusters/lkc-ha1/physical")
            .token(Some("ops-physical-controller"))
            .json(physical(0, json!(["a"]))),
        case("an empty zone", "POST", "/v1/clusters/lkc-ha1/physical")
            .token(Some("ops-physical-controller"))
            .json(physical(3, json!([""]))),
        case(
            "a capacity without its node pool",
            "POST",
            "/v1/clusters/lkc-ha1/capacity",
        )
        .token(Some("ops-capacity-controller"))
        .json(json!({"satellite": "s", "k8s_cluster": "k"})),
        // Where: ids, facets, headers.
        case("an unknown facet", "POST", "/v1/clusters/lkc-ha1/billing")
            .json(logical_in("org-a"))
            .expect(400, "unknown_facet"),
        case(
            "an upper-case cluster id",
            "POST",
            "/v1/clusters/LKC_1/logical",
        )
        .json(logical_in("org-a")),
        case(
            "a 200-character cluster id",
            "POST",
            &format!("/v1/clusters/lkc-{}/logical", "a".repeat(200)),
        )
        .json(logical_in("org-a")),
        case("If-Match of -1", "POST", append)
            .header("if-match", "-1")
            .json(logical_in("org-a")),
        case("If-Match that is no number", "POST", append)
            .header("if-match", "\"abc\"")
            .json(logical_in("org-a")),
        case("a stale If-Match", "POST", append)
            .header("if-match", "7")
            .json(logical_in("org-a"))
            .expect(409, "version_conflict"),
        case("a 300-character idempotency key", "POST", append)
            .header("idempotency-key", "k".repeat(300))
            .json(logical_in("org-a")),
        case("a 2,000-character reason", "POST", append)
            .header("x-reason", "r".repeat(2000))
            .json(logical_in("org-a")),
        case(
            "an idempotency key reused with another body",
            "POST",
            "/v1/clusters/lkc-ha1/physical",
        )
        .token(Some("ops-physical-controller"))
        .header("idempotency-key", "phys-1")
        .json(physical(5, json!(["a"])))
        .expect(422, "idempotency_key_reused"),
        // Deletes.
        case(
            "deleting a cluster that does not exist",
            "DELETE",
            "/v1/clusters/lkc-nope",
        )
        .expect(404, "not_found"),
        case(
            "deleting as a principal that does not own logical",
            "DELETE",
            "/v1/clusters/lkc-ha1",
        )
        .token(Some("ops-sync"))
        .expect(403, "forbidden"),
        case(
            "deleting another org's cluster",
            "DELETE",
            "/v1/clusters/lkc-hb1",
        )
        .token(Some("tenant-a"))
        .expect(404, "not_found"),
        // Reads.
        case(
            "reading a cluster that does not exist",
            "GET",
            "/v1/clusters/lkc-nope",
        )
        .expect(404, "not_found"),
        case("reading a bad cluster id", "GET", "/v1/clusters/..%2Fetc").expect(400, "invalid"),
        case(
            "reading another org's history",
            "GET",
            "/v1/clusters/lkc-hb1/history",
        )
        .token(Some("tenant-a"))
        .expect(404, "not_found"),
        case(
            "a state at a time that is no time",
            "GET",
            "/v1/clusters/lkc-ha1/state?as_of=yesterday",
        )
        .expect(400, "invalid_point"),
        case(
            "a state at a time and a version",
            "GET",
            "/v1/clusters/lkc-ha1/state?as_of=2026-01-01T00:00:00Z&version=1",
        ),
        case(
            "a state at version -5",
            "GET",
            "/v1/clusters/lkc-ha1/state?version=-5",
        )
        .expect(400, "invalid_point"),
        case(
            "an audit filter nobody knows",
            "GET",
            "/v1/clusters/lkc-ha1/audit?owner=me",
        ),
        case(
            "an audit since no time",
            "GET",
            "/v1/clusters/lkc-ha1/audit?since=0001-13-45",
        )
        .expect(400, "invalid_point"),
        // Recovery.
        case(
            "recovering as frontend",
            "POST",
            "/v1/clusters/lkc-ha1/recover",
        )
        .json(json!({}))
        .expect(403, "forbidden"),
        case(
            "recovering with an unknown field",
            "POST",
            "/v1/clusters/lkc-ha1/recover",
        )
        .token(Some("ops-recovery"))
        .json(json!({"everything": true})),
        case(
            "recovering a cluster that is not deleted",
            "POST",
            "/v1/clusters/lkc-ha1/recover",
        )
        .token(Some("ops-recovery"))
        .json(json!({}))
        .expect(409, "not_deleted"),
        // Batch and import.
        case("a batch that is not an object", "POST", "/v1/batch").json(json!([1, 2, 3])),
        case("a batch of 10,001 items", "POST", "/v1/batch")
            .json(json!({"items": vec![json!({"cluster_id": "lkc-x", "facet": "logical", "state": {}}); 10_001]}))
            .expect(413, "payload_too_large"),
        case("importing as frontend", "POST", "/v1/import")
            .json(import_line("2026-01-01T00:00:00Z"))
            .expect(403, "forbidden"),
        case("importing a line of year 1", "POST", "/v1/import")
            .token(Some("ops-import"))
            .json(import_line("0001-01-01T00:00:00Z"))
            .expect(400, "invalid_line"),
        case("importing a line of year 9999", "POST", "/v1/import")
            .token(Some("ops-import"))
            .json(import_line("9999-12-31T00:00:00Z"))
            .expect(400, "invalid_line"),
        // SQL.
        case("SQL that reads a file", "POST", "/v1/sql")
            .json(json!({"sql": "SELECT * FROM '/etc/passwd'"}))
            .expect(400, "invalid_query"),
        case("SQL that creates an external table", "POST", "/v1/sql")
            .json(json!({"sql": "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'"}))
            .expect(400, "not_read_only"),
        case("SQL that copies to a file", "POST", "/v1/sql")
            .json(json!({"sql": "COPY (SELECT 1) TO '/tmp/fleetledger-hostile.csv'"}))
            .expect(400, "not_read_only"),
        case("SQL nested 5,000 levels", "POST", "/v1/sql")
            .json(json!({ "sql": deep_sql }))
            .expect(400, "query_too_complex"),
        case("SQL of 20,000 bytes", "POST", "/v1/sql")
            .json(json!({ "sql": format!("SELECT 1 -- {}", "x".repeat(20_000)) }))
            .expect(400, "query_too_complex"),
        case("SQL that cross-joins ranges", "POST", "/v1/sql")
            .json(json!({"sql": "SELECT count(*) FROM range(0, 100000) a, range(0, 100000) b"}))
            .expect(400, "query_timeout"),
        case("SQL that runs for minutes", "POST", "/v1/sql")
            .json(json!({"sql": "SELECT sum(v) FROM range(0, 100000000000) AS t(v)"}))
            .expect(400, "query_timeout"),
        case("a 100 KiB SQL body", "POST", "/v1/sql")
            .json(json!({"sql": "SELECT 1", "pad": "x".repeat(100 << 10)}))
            .expect(413, "payload_too_large"),
        case("empty SQL", "POST", "/v1/sql")
            .json(json!({"sql": ""}))
            .expect(400, "invalid_query"),
        case("SQL in the wrong field", "POST", "/v1/sql").json(json!({"query": "SELECT 1"})),
        // The registry.
        case(
            "changing registry compatibility without a token",
            "PUT",
            "/registry/config",
        )
        .token(None)
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(json!({"compatibility": "NONE"}))
        .expect(401, "unauthorized"),
        case(
            "registering a schema as frontend",
            "POST",
            "/registry/subjects/x-value/versions",
        )
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(json!({"schema": "\"string\""}))
        .expect(403, "forbidden"),
        case(
            "deleting a subject without a token",
            "DELETE",
            "/registry/subjects/x-value",
        )
        .token(None)
        .expect(401, "unauthorized"),
    ];
    assert!(cases.len() >= 50, "the table has {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let r = match send(c).await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: no answer: {e}", c.what));
                continue;
            }
        };
        let st = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        let message = v["message"].as_str().unwrap_or_default();
        if st != c.status || v["error"] != c.code || message.len() < 10 {
            failures.push(format!(
                "{}: expected {} {}, got {st} {v}",
                c.what, c.status, c.code
            ));
        }
        // A fresh connection: the server may close one whose body it refused unread.
        let ready = reqwest::Client::new()
            .get(format!("{url}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if !matches!(ready, Ok(200)) {
            failures.push(format!("{}: not ready afterwards: {ready:?}", c.what));
        }
    }
    let after = ends(&cfg).await;
    let rss = serve.peak_rss_mib().unwrap_or(f64::NAN);
    eprintln!(
        "hostile: {} cases, serve's peak RSS {rss:.0} MiB during them",
        cases.len()
    );
    serve.kill();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(after, before, "nothing was written by the table");
}

/// Bounded HTTP: a read past `read_timeout_ms` is stopped with 504 naming the limit, and
/// requests beyond `max_concurrent_requests` are refused at once with 503 and
/// `Retry-After` rather than queued; the operational routes still answer meanwhile.
#[tokio::test]
async fn slow_reads_stop_at_their_limit_and_a_flood_is_refused_not_queued() {
    let mut cfg = config(&unique_prefix("bounded"));
    cfg.max_concurrent_requests = 2;
    // Long enough that the flood's four requests overlap even on a busy machine.
    cfg.read_timeout_ms = 5_000;
    cfg.queries.timeout_ms = 60_000;
    let server = crate::support::TestServer::start(cfg).await;
    let url = server.url();
    let slow = || {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/sql"))
                .bearer_auth("dev-sync")
                .json(&json!({"sql": "SELECT sum(v) FROM range(0, 100000000000) AS t(v)"}))
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            let retry = r.headers().get("retry-after").cloned();
            (st, retry, r.json::<Value>().await.unwrap_or_default())
        }
    };
    let (st, _, v) = slow().await;
    assert_eq!((st, v["error"].as_str()), (504, Some("timeout")), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("read_timeout_ms"),
        "{v}"
    );
    let flood: Vec<_> = (0..4).map(|_| tokio::spawn(slow())).collect();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200, "ops routes are not bounded");
    let mut answers = Vec::new();
    for f in flood {
        answers.push(f.await.unwrap());
    }
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert_eq!(
        answers.iter().filter(|a| a.0 == 504).count(),
        2,
        "{answers:?}"
    );
    assert_eq!(refused.len(), 2, "{answers:?}");
    for (_, retry, v) in refused {
        assert_eq!(v["error"], "overloaded", "{v}");
        assert!(retry.is_some(), "Retry-After on {v}");
    }
    server.stop().await;
}
