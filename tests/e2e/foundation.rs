//! Topics, the embedded registry, Avro round trips through the real
//! schema_registry_converter client.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fleetledger_ledger::{Error, KafkaClients, TopicCheck, TopicLayout};
use fleetledger_schemas::{
    CapacityState, Facet, FacetState, LogicalState, PhysicalState, RecordMeta, StateRecord,
    StatusState, decode_wire_header,
};
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_subjects, get_all_versions,
};
use serde_json::{Value, json};

use crate::support::{ServeProcess, TestServer, config, free_port, unique_prefix};

#[tokio::test]
async fn topics_are_created_compacted_and_a_mismatch_is_named() {
    let prefix = unique_prefix("topics");
    let cfg = config(&prefix);
    let clients = KafkaClients::new(cfg.kafka.clone());
    let layout = TopicLayout::new(&cfg.kafka);
    let first = layout.ensure(&clients).await.expect("topics created");
    assert_eq!(
        first,
        vec![
            TopicCheck::Created(format!("{prefix}.state.v1")),
            TopicCheck::Created(format!("{prefix}.history.v1")),
            TopicCheck::Created(format!("{prefix}._schemas")),
            TopicCheck::Created(format!("{prefix}.writer.v1")),
        ]
    );
    let second = layout.ensure(&clients).await.expect("topics checked");
    assert!(
        second.iter().all(|c| matches!(c, TopicCheck::Matches(_))),
        "{second:?}"
    );
    assert!(layout.all_exist(&clients).await.unwrap());

    let mut other = cfg.kafka.clone();
    other.partitions = 5;
    let err = TopicLayout::new(&other).ensure(&clients).await.unwrap_err();
    match err {
        Error::TopicMismatch { topic, differences } => {
            assert_eq!(topic, format!("{prefix}.state.v1"));
            assert!(
                differences.contains("partitions is 3, expected 5"),
                "{differences}"
            );
        }
        e => panic!("expected a mismatch, got {e}"),
    }
}

fn meta(cluster: &str, version: i64) -> RecordMeta {
    RecordMeta {
        cluster_id: cluster.into(),
        version,
        writer: "frontend".into(),
        request_id: format!("req-{version}"),
        reason: Some("test".into()),
        ts: DateTime::parse_from_rfc3339("2026-03-01T12:34:56.789Z")
            .unwrap()
            .with_timezone(&Utc),
        prev_hash: String::new(),
        hash: "ab".repeat(32),
    }
}

fn every_facet() -> Vec<FacetState> {
    vec![
        FacetState::Logical(std::sync::Arc::new(LogicalState {
            org_id: "org-1".into(),
            env_id: "env-1".into(),
            kind: "kafka".into(),
            name: "orders".into(),
            sku: "dedicated".into(),
            cku: 4,
            cloud: "aws".into(),
            region: "us-east-1".into(),
            network: "private-link".into(),
            config: BTreeMap::from([("retention.ms".into(), "604800000".into())]),
            deleted: false,
        })),
        FacetState::Physical(std::sync::Arc::new(PhysicalState {
            brokers: 6,
            disk_gb_per_broker: 2500,
            zones: vec!["use1-az1".into(), "use1-az2".into()],
            version: "3.9.0".into(),
        })),
        FacetState::Capacity(std::sync::Arc::new(CapacityState {
            satellite: "sat-7".into(),
            k8s_cluster: "k8s-7a".into(),
            node_pool: "np-large".into(),
        })),
        FacetState::Status(std::sync::Arc::new(StatusState {
            phase: "running".into(),
            cku: 4,
            brokers_ready: 6,
            observed_version: 3,
            message: None,
        })),
    ]
}

#[tokio::test]
async fn every_facet_round_trips_through_the_registry_over_http() {
    let server = TestServer::start(config(&unique_prefix("codec"))).await;
    let registry = format!("{}/registry", server.url());

    let settings = SrSettings::new(registry.clone());
    let subjects = get_all_subjects(&settings).await.expect("subjects listed");
    let expected: Vec<String> = {
        let mut s: Vec<String> = Facet::ALL.iter().map(|f| f.subject().to_owned()).collect();
        s.sort();
        s
    };
    assert_eq!(subjects, expected);

    let codec = fleetledger_schemas::RecordCodec::with_source(std::sync::Arc::new(
        fleetledger_registry::HttpSchemaSource::with_bearer(&registry, "dev-registry-admin")
            .unwrap(),
    ));
    let ids = codec
        .register_subjects()
        .await
        .expect("already registered: same ids");
    for (i, state) in every_facet().into_iter().enumerate() {
        let record = StateRecord {
            meta: meta("lkc-abc12", i as i64 + 1),
            state,
        };
        let bytes = codec.encode(&record).await.expect("encodes");
        let (header, _) = decode_wire_header(&bytes).unwrap();
        assert_eq!(header.schema_id, ids[&record.facet()]);
        let back = codec.decode(&bytes).await.expect("decodes");
        assert_eq!(back, record);
    }
    server.stop().await;
}

/// A POST as the registry admin (registry writes need its token).
async fn post(url: &str, content_type: &str, body: &Value) -> (u16, Value) {
    post_as(Some("dev-registry-admin"), "POST", url, content_type, body).await
}

/// A request with `token` (none: anonymous).
async fn post_as(
    token: Option<&str>,
    method: &str,
    url: &str,
    content_type: &str,
    body: &Value,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new()
        .request(method, url)
        .header("content-type", content_type)
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

const SR: &str = "application/vnd.schemaregistry.v1+json";

#[tokio::test]
async fn incompatible_schemas_and_bad_requests_are_refused_and_nothing_is_stored() {
    let server = TestServer::start(config(&unique_prefix("compat"))).await;
    let reg = format!("{}/registry", server.url());
    let subject = Facet::Logical.subject();

    // A new required field without a default: old data cannot be read with it.
    let mut schema: Value = serde_json::from_str(Facet::Logical.schema_text()).unwrap();
    schema["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "tier", "type": "string"}));
    let body = json!({"schema": schema.to_string()});

    let (st, v) = post(
        &format!("{reg}/compatibility/subjects/{subject}/versions/latest"),
        SR,
        &body,
    )
    .await;
    assert_eq!((st, &v["is_compatible"]), (200, &json!(false)), "{v}");
    let (st, v) = post(&format!("{reg}/subjects/{subject}/versions"), SR, &body).await;
    assert_eq!((st, v["error_code"].as_u64()), (409, Some(409)), "{v}");

    // The same field with a default is a compatible evolution.
    let mut ok_schema = schema.clone();
    let fields = ok_schema["fields"].as_array_mut().unwrap();
    fields.pop();
    fields.push(json!({"name": "tier", "type": "string", "default": "standard"}));
    let ok_body = json!({"schema": ok_schema.to_string()});
    let (st, v) = post(
        &format!("{reg}/compatibility/subjects/{subject}/versions/latest"),
        SR,
        &ok_body,
    )
    .await;
    assert_eq!((st, &v["is_compatible"]), (200, &json!(true)), "{v}");

    let (st, v) = post(
        &format!("{reg}/subjects/{subject}/versions"),
        "text/plain",
        &ok_body,
    )
    .await;
    assert_eq!((st, v["error_code"].as_u64()), (415, Some(415)), "{v}");
    let (st, v) = post(
        &format!("{reg}/subjects/{subject}/versions"),
        SR,
        &json!({"schema": "{nope"}),
    )
    .await;
    assert_eq!((st, v["error_code"].as_u64()), (422, Some(42201)), "{v}");
    let (st, v) = get(&format!("{reg}/subjects/no.such.Subject/versions")).await;
    assert_eq!((st, v["error_code"].as_u64()), (404, Some(40401)), "{v}");
    let (st, v) = get(&format!("{reg}/schemas/ids/9999")).await;
    assert_eq!((st, v["error_code"].as_u64()), (404, Some(40403)), "{v}");
    let (st, v) = get(&format!("{reg}/subjects/{subject}/versions/2")).await;
    assert_eq!((st, v["error_code"].as_u64()), (404, Some(40402)), "{v}");

    // Nothing of the refused requests was stored.
    let (_, versions) = get(&format!("{reg}/subjects/{subject}/versions")).await;
    assert_eq!(versions, json!([1]));

    // Config per subject, then the compatible one registers as version 2.
    let (st, v) = post_as(
        Some("dev-registry-admin"),
        "PUT",
        &format!("{reg}/config/{subject}"),
        SR,
        &json!({"compatibility": "FULL"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = get(&format!("{reg}/config/{subject}")).await;
    assert_eq!(v["compatibilityLevel"], "FULL");
    let (st, v) = post(&format!("{reg}/subjects/{subject}/versions"), SR, &ok_body).await;
    assert_eq!(st, 200, "{v}");
    server.stop().await;
}

#[tokio::test]
async fn a_restarted_registry_keeps_every_subject_version_and_id() {
    let prefix = unique_prefix("restart");
    let first = TestServer::start(config(&prefix)).await;
    let reg = format!("{}/registry", first.url());
    let extra = |n: u32| {
        let fields: Vec<Value> = (0..n)
            .map(|i| json!({"name": format!("f{i}"), "type": "int", "default": 0}))
            .collect();
        json!({"schema": json!({"type": "record", "name": "Extra", "fields": fields}).to_string()})
    };
    for n in 1..=3 {
        let (st, v) = post(
            &format!("{reg}/subjects/extra-value/versions"),
            SR,
            &extra(n),
        )
        .await;
        assert_eq!(st, 200, "{v}");
    }
    let snapshot = |reg: String| async move {
        let settings = SrSettings::new(reg.clone());
        let mut all = BTreeMap::new();
        for s in get_all_subjects(&settings).await.unwrap() {
            for v in get_all_versions(&settings, s.clone()).await.unwrap() {
                let (_, body) = get(&format!("{reg}/subjects/{s}/versions/{v}")).await;
                all.insert((s.clone(), v), body);
            }
        }
        all
    };
    let before = snapshot(reg).await;
    assert_eq!(before.len(), 4 + 3);
    first.stop().await;

    let second = TestServer::start(config(&prefix)).await;
    let after = snapshot(format!("{}/registry", second.url())).await;
    assert_eq!(before, after);
    second.stop().await;
}

/// Registry writes need the registry-admin token; reads and the two POSTs that change
/// nothing stay open; a refused write stores nothing.
#[tokio::test]
async fn registry_writes_need_the_registry_admin() {
    let server = TestServer::start(config(&unique_prefix("regauth"))).await;
    let reg = format!("{}/registry", server.url());
    let subject = Facet::Logical.subject();
    let schema = json!({"schema": Facet::Logical.schema_text()});
    let other =
        json!({"schema": json!({"type": "record", "name": "Other", "fields": []}).to_string()});
    let config_body = json!({"compatibility": "NONE"});
    for (token, want) in [
        (None, 401),
        (Some("dev-frontend"), 403),
        (Some("not-a-token"), 401),
    ] {
        let (st, v) = post_as(
            token,
            "POST",
            &format!("{reg}/subjects/other-value/versions"),
            SR,
            &other,
        )
        .await;
        assert_eq!(st, want, "register as {token:?}: {v}");
        let (st, v) = post_as(token, "PUT", &format!("{reg}/config"), SR, &config_body).await;
        assert_eq!(st, want, "PUT /config as {token:?}: {v}");
        let (st, v) = post_as(
            token,
            "DELETE",
            &format!("{reg}/subjects/{subject}"),
            SR,
            &json!({}),
        )
        .await;
        assert_eq!(st, want, "DELETE as {token:?}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    // Nothing was stored.
    let (st, subjects) = get(&format!("{reg}/subjects")).await;
    assert_eq!(st, 200);
    assert!(
        !subjects.as_array().unwrap().contains(&json!("other-value")),
        "{subjects}"
    );
    let (_, cfg) = get(&format!("{reg}/config")).await;
    assert_eq!(cfg["compatibilityLevel"], "BACKWARD", "{cfg}");
    // Reads and lookups are open to anonymous clients.
    let (st, v) = post_as(
        None,
        "POST",
        &format!("{reg}/subjects/{subject}"),
        SR,
        &schema,
    )
    .await;
    assert_eq!(st, 200, "lookup: {v}");
    let (st, v) = post_as(
        None,
        "POST",
        &format!("{reg}/compatibility/subjects/{subject}/versions/latest"),
        SR,
        &schema,
    )
    .await;
    assert_eq!((st, &v["is_compatible"]), (200, &json!(true)), "{v}");
    // The admin may.
    let (st, v) = post(&format!("{reg}/subjects/other-value/versions"), SR, &other).await;
    assert_eq!(st, 200, "{v}");
    server.stop().await;
}

/// Deletes `topics` and waits until the broker no longer lists them.
async fn delete_topics(cfg: &fleetledger::Config, topics: &[&str]) {
    use rdkafka::admin::AdminOptions;
    let clients = fleetledger_ledger::KafkaClients::new(cfg.kafka.clone());
    let admin = clients.admin().unwrap();
    for r in admin
        .delete_topics(topics, &AdminOptions::new())
        .await
        .expect("delete topics")
    {
        r.expect("topic deleted");
    }
    let layout = fleetledger_ledger::TopicLayout::new(&cfg.kafka);
    for _ in 0..100 {
        if !layout.all_exist(&clients).await.unwrap_or(true) {
            let consumer = clients.consumer("probe").unwrap();
            let md = rdkafka::consumer::Consumer::fetch_metadata(
                &consumer,
                None,
                std::time::Duration::from_secs(5),
            )
            .unwrap();
            if md.topics().iter().all(|t| !topics.contains(&t.name())) {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("topics not deleted: {topics:?}");
}

/// Starts a server on `cfg`, expecting its start-up to fail; the error, once the server
/// has stopped.
pub(crate) async fn refused_start(cfg: &fleetledger::Config) -> String {
    let token = tokio_util::sync::CancellationToken::new();
    let running = fleetledger::server::start(cfg.clone(), token.clone())
        .await
        .unwrap();
    let err = running
        .wait_ready(std::time::Duration::from_secs(60))
        .await
        .expect_err("refused")
        .to_string();
    token.cancel();
    running.wait().await.ok();
    err
}

/// A deleted history (or state, or schemas) topic is never silently re-created under the
/// others, and projections never go on from checkpoints of a history that was re-created,
/// even once the new one has grown past their offsets.
#[tokio::test]
async fn deleted_or_recreated_history_stops_the_start_with_what_to_do() {
    let cfg = config(&unique_prefix("topicgone"));
    let server = TestServer::start(cfg.clone()).await;
    let api = crate::append::Api::new(&server);
    for i in 0..3 {
        let (st, v) = api
            .append(
                &format!("lkc-gone{i}"),
                "logical",
                "dev-frontend",
                &crate::append::logical(1),
                &[],
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    // The projections applied the three records (their checkpoints name offsets past
    // them) before the service stops.
    let mut audited = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, v) = crate::support::sql_as(
            &server.url(),
            "dev-sync",
            "SELECT count(*) AS n FROM audit_log",
        )
        .await;
        audited = v["rows"][0]["n"].clone();
        if audited == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(audited, 3, "the projections applied the three records");
    server.stop().await;
    let layout = fleetledger_ledger::TopicLayout::new(&cfg.kafka);

    // The history topic alone is deleted: the start stops and names it.
    delete_topics(&cfg, &[layout.history.as_str()]).await;
    let err = refused_start(&cfg).await;
    assert!(
        err.contains(&layout.history)
            && err.contains("is missing")
            && err.contains("fresh topic prefix"),
        "{err}"
    );

    // Both are deleted and would be created empty: the projections' checkpoints name
    // offsets the new history does not have.
    delete_topics(&cfg, &[layout.state.as_str()]).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let err = refused_start(&cfg).await;
    assert!(
        err.contains("re-created or truncated") && err.contains("rebuild all"),
        "{err:#}"
    );

    // The re-created topics grow past the checkpoints' offsets (another instance, with
    // projections of its own, writes to them): the offsets fit again, but the records
    // standing there are not the ones the checkpoints applied.
    let mut elsewhere = cfg.clone();
    elsewhere.projector.dir = cfg.projector.dir.join("elsewhere");
    let other = TestServer::start(elsewhere).await;
    let api = crate::append::Api::new(&other);
    for i in 0..30 {
        let (st, v) = api
            .append(
                &format!("lkc-new{i}"),
                "logical",
                "dev-frontend",
                &crate::append::logical(2),
                &[],
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    other.stop().await;
    let err = refused_start(&cfg).await;
    assert!(
        err.contains("re-created or truncated")
            && err.contains("but the projections applied")
            && err.contains("lkc-gone"),
        "{err:#}"
    );

    // What the message says to do: rebuild every projection from what the topic holds
    // now (`fleetledger project rebuild all`); then the start goes through.
    let rebuilt = crate::support::fleetledger_command(&cfg)
        .args(["project", "rebuild", "all"])
        .env("FLEETLEDGER_LOG", "error")
        .output()
        .expect("the binary runs");
    assert!(
        rebuilt.status.success(),
        "project rebuild all: {}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let server = TestServer::start(cfg.clone()).await;
    server.stop().await;

    // The schema registry's topic is deleted while history exists: named, not re-created.
    delete_topics(&cfg, &[layout.schemas.as_str()]).await;
    let err = refused_start(&cfg).await;
    assert!(
        err.contains(&layout.schemas) && err.contains("is missing") && err.contains("ids"),
        "{err}"
    );
}

/// `serve` runs itself again (the same process) with its allocator settings where the
/// environment has none, and keeps one the environment has.
#[tokio::test]
async fn serve_sets_its_allocator_settings_and_keeps_the_environments() {
    let cfg = config(&unique_prefix("allocator"));
    let environ = |serve: &ServeProcess| -> BTreeMap<String, String> {
        let raw = std::fs::read(format!("/proc/{}/environ", serve.child.id())).unwrap();
        raw.split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect()
    };
    // The environment without either setting, then with a GLIBC_TUNABLES of its own.
    for (own, want) in [
        (None, "glibc.malloc.mmap_threshold=65536"),
        (Some("glibc.malloc.arena_max=2"), "glibc.malloc.arena_max=2"),
    ] {
        let port = free_port();
        let mut command = ServeProcess::command(&cfg, port, &[]);
        command
            .env_remove("MIMALLOC_PURGE_DELAY")
            .env_remove("GLIBC_TUNABLES");
        if let Some(own) = own {
            command.env("GLIBC_TUNABLES", own);
        }
        let serve = ServeProcess::spawn_command(command, port);
        serve.wait_ready().await;
        let env = environ(&serve);
        assert_eq!(
            env.get("MIMALLOC_PURGE_DELAY").map(String::as_str),
            Some("0")
        );
        assert_eq!(env.get("GLIBC_TUNABLES").map(String::as_str), Some(want));
        serve.kill();
    }
}
