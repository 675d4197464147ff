//! State at a point, recovery, audit timeline and hash-chain verification,
//! against the real broker.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use fleetledger::Config;
use fleetledger_ledger::partitioner::partition_for;
use fleetledger_ledger::{KafkaClients, ManualClock, TopicLayout};
use fleetledger_projectors::{Projector, ProjectorConfig};
use fleetledger_schemas::{FacetState, RecordMeta, StateRecord};
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::append::{Api, logical, status};
use crate::support::{TestServer, config, unique_prefix};

fn physical(brokers: i64) -> Value {
    json!({"brokers": brokers, "disk_gb_per_broker": 100, "zones": ["a", "b"], "version": "3.9"})
}

fn capacity(pool: &str) -> Value {
    json!({"satellite": "sat-1", "k8s_cluster": "k8s-1", "node_pool": pool})
}

fn named(cku: i64, name: &str) -> Value {
    let mut l = logical(cku);
    l["name"] = json!(name);
    l
}

/// One step of a scenario: minute, facet, token, state.
type Step = (i64, &'static str, &'static str, Value);

/// Create → change every desired facet several times → delete → data plane reports
/// deleted. Returns the states just before the deletion (logical v4, physical v3,
/// capacity v3).
fn lifecycle() -> (Vec<Step>, [Value; 3]) {
    let steps: Vec<Step> = vec![
        (0, "logical", "dev-frontend", named(2, "orders")),
        (0, "physical", "dev-physical-controller", physical(3)),
        (0, "capacity", "dev-capacity-controller", capacity("pool-a")),
        (0, "status", "dev-sync", status("provisioning", 0, 1)),
        (10, "status", "dev-sync", status("running", 2, 1)),
        (20, "logical", "dev-frontend", named(2, "orders-v2")),
        (20, "physical", "dev-physical-controller", physical(6)),
        (
            20,
            "capacity",
            "dev-capacity-controller",
            capacity("pool-b"),
        ),
        (30, "logical", "dev-frontend", named(4, "orders-v2")),
        (31, "status", "dev-sync", status("expanding", 2, 3)),
        (40, "status", "dev-sync", status("running", 4, 3)),
        (50, "physical", "dev-physical-controller", physical(9)),
        (
            50,
            "capacity",
            "dev-capacity-controller",
            capacity("pool-c"),
        ),
        (50, "logical", "dev-frontend", named(4, "orders-final")),
    ];
    let before = [named(4, "orders-final"), physical(9), capacity("pool-c")];
    (steps, before)
}

async fn play(api: &Api, clock: &ManualClock, t0: DateTime<Utc>, cluster: &str, steps: &[Step]) {
    for (m, facet, token, body) in steps {
        clock.set(t0 + TimeDelta::minutes(*m));
        let (st, v) = api.append(cluster, facet, token, body, &[]).await;
        assert_eq!(st, 201, "{facet} at minute {m}: {v}");
    }
}

async fn delete(server: &TestServer, cluster: &str) {
    let resp = reqwest::Client::new()
        .delete(format!("{}/v1/clusters/{cluster}", server.url()))
        .bearer_auth("dev-frontend")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
}

/// Deletes at minute 60; the controllers scale the brokers down and release the node pool at
/// 62; the data plane reports deleting at 61 and deleted at 70.
async fn delete_and_tear_down(
    server: &TestServer,
    api: &Api,
    clock: &ManualClock,
    t0: DateTime<Utc>,
    cluster: &str,
) {
    clock.set(t0 + TimeDelta::minutes(60));
    delete(server, cluster).await;
    play(
        api,
        clock,
        t0,
        cluster,
        &[
            (61, "status", "dev-sync", status("deleting", 4, 5)),
            (62, "physical", "dev-physical-controller", physical(1)),
            (
                62,
                "capacity",
                "dev-capacity-controller",
                capacity("released"),
            ),
            (70, "status", "dev-sync", status("deleted", 0, 5)),
        ],
    )
    .await;
}

async fn recover(api: &Api, cluster: &str, token: &str, body: Value) -> (u16, Value) {
    api.post_raw(
        &format!("/v1/clusters/{cluster}/recover"),
        Some(token),
        &[("content-type", "application/json")],
        body.to_string().into_bytes(),
    )
    .await
}

/// The current state of every facet: facet → (version, state).
async fn current(api: &Api, cluster: &str) -> Value {
    let (st, v) = api
        .get(&format!("/v1/clusters/{cluster}"), "dev-frontend")
        .await;
    assert_eq!(st, 200, "{v}");
    v["facets"].clone()
}

pub(crate) fn caught_up_projector(cfg: &Config, server: &TestServer, dir: &str) -> Projector {
    let codec = fleetledger_registry::http_codec(&format!("{}/registry", server.url())).unwrap();
    Projector::open(
        KafkaClients::new(cfg.kafka.clone()),
        TopicLayout::new(&cfg.kafka),
        Arc::new(codec),
        ProjectorConfig {
            dir: cfg.projector.dir.join(dir),
            ..ProjectorConfig::default()
        },
    )
    .expect("projector opens")
}

#[tokio::test]
async fn recovery_restores_the_desired_facets_and_billing_waits_for_running() {
    let cfg = config(&unique_prefix("recover"));
    let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let server = TestServer::start_with_clock(cfg.clone(), clock.clone()).await;
    let api = Api::new(&server);
    let c = "lkc-rec1";
    let (steps, before) = lifecycle();
    play(&api, &clock, t0, c, &steps).await;
    delete_and_tear_down(&server, &api, &clock, t0, c).await;

    // A dry run shows the plan and writes nothing.
    clock.set(t0 + TimeDelta::minutes(130));
    let (st, plan) = recover(&api, c, "dev-recovery", json!({"dry_run": true})).await;
    assert_eq!(st, 200, "{plan}");
    assert_eq!(plan["facets"].as_array().unwrap().len(), 3, "{plan}");
    assert_eq!(plan["facets"][2]["facet"], "logical");
    assert_eq!(
        plan["facets"][2]["diff"]["deleted"],
        json!({"from": true, "to": false})
    );
    assert_eq!(current(&api, c).await["logical"]["version"], 5);

    let (st, done) = recover(&api, c, "dev-recovery", json!({})).await;
    assert_eq!(st, 201, "{done}");
    let reason = done["reason"].as_str().unwrap();
    for source in ["physical v3", "capacity v3", "logical v4"] {
        assert!(reason.contains(source), "{reason}");
    }
    let now = current(&api, c).await;
    for (facet, want) in ["logical", "physical", "capacity"].iter().zip(&before) {
        let mut want = want.clone();
        if *facet == "logical" {
            want["deleted"] = json!(false);
        }
        assert_eq!(
            &now[facet]["state"], &want,
            "{facet} restored field for field"
        );
        assert_eq!(now[facet]["writer"], "recovery");
    }
    assert_eq!(now["logical"]["version"], 6);
    assert_eq!(now["physical"]["version"], 5);
    assert_eq!(
        now["status"]["state"]["phase"], "deleted",
        "status is not restored"
    );

    // Recovering again is refused: the cluster is no longer deleted.
    let (st, again) = recover(&api, c, "dev-recovery", json!({})).await;
    assert_eq!(
        (st, again["error"].as_str()),
        (409, Some("not_deleted")),
        "{again}"
    );

    // The audit trail shows the recovery like any other change.
    let (st, audit) = api
        .get(
            &format!("/v1/clusters/{c}/audit?facet=logical"),
            "dev-frontend",
        )
        .await;
    assert_eq!(st, 200, "{audit}");
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 6);
    let last = entries.last().unwrap();
    assert_eq!(last["writer"], "recovery");
    assert_eq!(last["version"], 6);
    assert_eq!(last["diff"]["deleted"], json!({"from": true, "to": false}));
    assert_eq!(
        entries[4]["diff"]["deleted"],
        json!({"from": false, "to": true})
    );

    // The data plane brings it back: provisioning at 02:20, running at 4 CKU from 02:30.
    play(
        &api,
        &clock,
        t0,
        c,
        &[
            (140, "status", "dev-sync", status("provisioning", 0, 6)),
            (150, "status", "dev-sync", status("running", 4, 6)),
        ],
    )
    .await;
    let p = caught_up_projector(&cfg, &server, "after-recovery");
    p.catch_up(|_| {}).await.expect("caught up");
    let projections = p.projections();
    let snapshot = projections.read().await;
    let row = &snapshot.clusters.rows[c];
    assert!(
        !row.deleted(),
        "the clusters projection follows the recovery"
    );
    let rows = snapshot
        .billing
        .rows((t0 + TimeDelta::minutes(180)).timestamp_millis());
    let hour = |h: i64| {
        rows.iter()
            .filter(|r| {
                r.cluster_id == c
                    && r.hour_start_ms == (t0 + TimeDelta::hours(h)).timestamp_millis()
            })
            .map(|r| r.cku_hours)
            .sum::<f64>()
    };
    // Hour 0: 2 CKU 00:10-00:40 (the expansion bills once running), 4 CKU 00:40-01:00.
    assert!(
        (hour(0) - (2.0 * 30.0 / 60.0 + 4.0 * 20.0 / 60.0)).abs() < 1e-9,
        "{}",
        hour(0)
    );
    assert!(hour(1).abs() < 1e-9, "deleted all hour: {}", hour(1));
    // Hour 2: recovered at 02:10 but billed only from running at 02:30.
    assert!((hour(2) - 4.0 * 30.0 / 60.0).abs() < 1e-9, "{}", hour(2));
    drop(snapshot);
    server.stop().await;
}

#[tokio::test]
async fn state_and_recovery_at_an_earlier_point_and_every_refusal() {
    let cfg = config(&unique_prefix("asof"));
    let t0: DateTime<Utc> = "2026-02-01T00:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let server = TestServer::start_with_clock(cfg.clone(), clock.clone()).await;
    let api = Api::new(&server);
    let c = "lkc-asof1";
    let (steps, _) = lifecycle();
    play(&api, &clock, t0, c, &steps).await;

    // State at a time and at a version.
    let (st, s) = api
        .get(
            &format!("/v1/clusters/{c}/state?as_of=2026-02-01T00:25:00Z"),
            "dev-frontend",
        )
        .await;
    assert_eq!(st, 200, "{s}");
    assert_eq!(s["facets"]["logical"]["version"], 2);
    assert_eq!(s["facets"]["physical"]["state"], physical(6));
    assert_eq!(s["facets"]["status"]["state"]["phase"], "running");
    let (_, s) = api
        .get(
            &format!("/v1/clusters/{c}/state?version=physical:1"),
            "dev-frontend",
        )
        .await;
    assert_eq!(s["facets"]["physical"]["state"], physical(3));
    assert_eq!(s["facets"]["logical"]["version"], 1);

    // Refusals, none of which writes anything.
    let (st, e) = recover(&api, c, "dev-recovery", json!({})).await;
    assert_eq!((st, e["error"].as_str()), (409, Some("not_deleted")), "{e}");
    delete_and_tear_down(&server, &api, &clock, t0, c).await;
    let (st, e) = recover(&api, c, "dev-frontend", json!({})).await;
    assert_eq!(st, 403, "{e}");
    let (st, e) = recover(
        &api,
        c,
        "dev-recovery",
        json!({"as_of": "2026-01-31T23:00:00Z"}),
    )
    .await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_point")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("created at 2026-02-01T00:00:00.000Z"),
        "{e}"
    );
    let (st, e) = api
        .get(
            &format!("/v1/clusters/{c}/state?as_of=2026-01-31T23:00:00Z"),
            "dev-frontend",
        )
        .await;
    assert_eq!(st, 400, "{e}");
    let (st, e) = recover(
        &api,
        c,
        "dev-recovery",
        json!({"as_of": "2026-02-01T01:05:00Z"}),
    )
    .await;
    assert_eq!(st, 400, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("was deleted"),
        "{e}"
    );
    let (st, e) = recover(&api, c, "dev-recovery", json!({"as_of": "noon"})).await;
    assert_eq!(st, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("RFC 3339"), "{e}");
    let (st, e) = recover(&api, c, "dev-recovery", json!({"version": "9"})).await;
    assert_eq!(st, 400, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("versions are 1 to 5"),
        "{e}"
    );
    let (st, e) = recover(&api, "lkc-nobody", "dev-recovery", json!({})).await;
    assert_eq!(st, 404, "{e}");
    let (st, e) = api
        .get(&format!("/v1/clusters/{c}/audit?sinse=1"), "dev-frontend")
        .await;
    assert_eq!(st, 400, "{e}");
    assert_eq!(
        current(&api, c).await["logical"]["version"],
        5,
        "nothing was written"
    );

    // Recovery to an earlier time restores that earlier state.
    clock.set(t0 + TimeDelta::minutes(90));
    let (st, done) = recover(
        &api,
        c,
        "dev-recovery",
        json!({"as_of": "2026-02-01T00:25:00Z"}),
    )
    .await;
    assert_eq!(st, 201, "{done}");
    let now = current(&api, c).await;
    let mut want = named(2, "orders-v2");
    want["deleted"] = json!(false);
    assert_eq!(now["logical"]["state"], want);
    assert_eq!(now["physical"]["state"], physical(6));
    assert_eq!(now["capacity"]["state"], capacity("pool-b"));

    // The CLI: an unknown cluster exits 2; the timeline prints the recovery.
    let out = cli(&server, &["audit", "lkc-nobody"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    let out = cli(&server, &["audit", c, "--facet", "logical"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("recovery") && table.contains("deleted: true → false"),
        "{table}"
    );
    let out = cli(&server, &["audit", c, "--verify"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("every hash and every link holds"));
    server.stop().await;
}

/// Runs the `fleetledger` binary against `server` as `frontend` (on the blocking pool: the
/// server shares this test's runtime).
async fn cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fleetledger"));
    command
        .args(args)
        .args(["--url", &server.url(), "--token", "dev-frontend"])
        .env("FLEETLEDGER_LOG", "error");
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .expect("the binary's task")
}

/// Records of `topic` whose key starts with `prefix`, read from the beginning.
async fn keys_in(cfg: &Config, topic: &str, prefix: &str) -> Vec<String> {
    let clients = KafkaClients::new(cfg.kafka.clone());
    let consumer = clients.consumer("test-compaction").unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..cfg.kafka.partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut open = cfg.kafka.partitions;
    let mut keys = Vec::new();
    while open > 0 {
        match tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("topic readable")
        {
            Err(KafkaError::PartitionEOF(_)) => open -= 1,
            Err(e) => panic!("read failed: {e}"),
            Ok(m) => {
                let k = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                if k.starts_with(prefix) {
                    keys.push(k);
                }
            }
        }
    }
    keys
}

/// The partitions of `topic` the broker's log cleaner has cleaned, from its
/// `cleaner-offset-checkpoint` (lines `topic partition offset`).
fn cleaned_partitions(topic: &str) -> usize {
    let dir = std::env::var("FLEETLEDGER_TEST_KAFKA_DATA").unwrap_or_else(|_| {
        format!(
            "{}/.cache/fleetledger/kafka-4.1.1-9092/data",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let text =
        std::fs::read_to_string(format!("{dir}/cleaner-offset-checkpoint")).unwrap_or_default();
    text.lines()
        .filter(|l| {
            let mut parts = l.split(' ');
            parts.next() == Some(topic)
                && parts.nth(1).and_then(|o| o.parse::<i64>().ok()) > Some(0)
        })
        .count()
}

#[tokio::test]
async fn recovery_works_after_compaction_of_both_topics() {
    let mut cfg = config(&unique_prefix("compact"));
    cfg.kafka.partitions = 1;
    for (k, v) in [
        ("segment.ms", "100"),
        ("min.cleanable.dirty.ratio", "0.001"),
        ("min.compaction.lag.ms", "0"),
        ("delete.retention.ms", "100"),
    ] {
        cfg.kafka.topic_configs.insert(k.into(), v.into());
    }
    let layout = TopicLayout::new(&cfg.kafka);
    let t0: DateTime<Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let server = TestServer::start_with_clock(cfg.clone(), clock.clone()).await;
    let api = Api::new(&server);
    let c = "lkc-compact1";
    let (steps, before) = lifecycle();
    play(&api, &clock, t0, c, &steps).await;
    delete_and_tear_down(&server, &api, &clock, t0, c).await;
    let history_before = keys_in(&cfg, &layout.history, &format!("{c}/")).await;
    assert_eq!(history_before.len(), steps.len() + 5);

    // Keep appending elsewhere so segments roll, until the cleaner has cleaned both
    // topics and the state topic kept only the latest record per key.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut n = 0;
    loop {
        n += 1;
        clock.set(t0 + TimeDelta::minutes(80) + TimeDelta::seconds(n));
        let (st, v) = api
            .append(
                "lkc-filler",
                "status",
                "dev-sync",
                &status("running", n % 5, 1),
                &[],
            )
            .await;
        assert_eq!(st, 201, "{v}");
        let state_keys = keys_in(&cfg, &layout.state, &format!("{c}/")).await;
        if state_keys.len() == 4
            && cleaned_partitions(&layout.state) > 0
            && cleaned_partitions(&layout.history) > 0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log cleaner did not compact within 120 s (state keys {state_keys:?}, cleaned state {} history {})",
            cleaned_partitions(&layout.state),
            cleaned_partitions(&layout.history)
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        keys_in(&cfg, &layout.history, &format!("{c}/")).await,
        history_before,
        "history keys are unique: compaction keeps every record"
    );
    server.stop().await;

    // A fresh instance: index from the compacted state topic, projections rebuilt from
    // the compacted history.
    let mut cfg2 = cfg.clone();
    cfg2.projector.dir = cfg.projector.dir.join("second");
    clock.set(t0 + TimeDelta::minutes(200));
    let server = TestServer::start_with_clock(cfg2, clock.clone()).await;
    let api = Api::new(&server);
    let (st, v) = api
        .get(&format!("/v1/clusters/{c}/verify"), "dev-frontend")
        .await;
    assert_eq!((st, v["intact"].as_bool()), (200, Some(true)), "{v}");
    let (st, done) = recover(&api, c, "dev-recovery", json!({})).await;
    assert_eq!(st, 201, "{done}");
    let now = current(&api, c).await;
    for (facet, want) in ["logical", "physical", "capacity"].iter().zip(&before) {
        let mut want = want.clone();
        if *facet == "logical" {
            want["deleted"] = json!(false);
        }
        assert_eq!(&now[facet]["state"], &want, "{facet}");
    }
    assert_eq!(now["logical"]["version"], 6);
    server.stop().await;
}

#[tokio::test]
async fn verify_passes_on_honest_history_and_names_a_forged_record() {
    let cfg = config(&unique_prefix("verify"));
    let t0: DateTime<Utc> = "2026-04-01T00:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let server = TestServer::start_with_clock(cfg.clone(), clock.clone()).await;
    let api = Api::new(&server);
    let c = "lkc-verify1";
    let (steps, _) = lifecycle();
    play(&api, &clock, t0, c, &steps).await;
    play(&api, &clock, t0, "lkc-verify2", &steps[..4]).await;

    let (st, v) = api
        .get(&format!("/v1/clusters/{c}/verify"), "dev-frontend")
        .await;
    assert_eq!((st, v["intact"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(v["report"]["records"], steps.len() as i64);
    assert_eq!(v["report"]["chains"], 4);
    let whole = fleetledger::verify_topic(&cfg).await.expect("verify runs");
    assert!(whole.is_intact(), "{whole:?}");
    assert_eq!(whole.records, steps.len() as u64 + 4);
    assert_eq!(whole.clusters, 2);

    // A status record written around the ledger: valid Avro, linked to the real head,
    // but its hash is not the hash of its content.
    let (_, head) = api.get(&format!("/v1/clusters/{c}"), "dev-frontend").await;
    let status_head = &head["facets"]["status"];
    let meta = RecordMeta {
        cluster_id: c.into(),
        version: status_head["version"].as_i64().unwrap() + 1,
        writer: "sync".into(),
        request_id: "forged".into(),
        reason: None,
        ts: t0 + TimeDelta::minutes(55),
        prev_hash: status_head["hash"].as_str().unwrap().into(),
        hash: "f".repeat(64),
    };
    let state = FacetState::from_json(
        fleetledger_schemas::Facet::Status,
        status("running", 40, 4).to_string().as_bytes(),
    )
    .unwrap();
    // Encoding registers (or finds) the shipped schemas: a registry write, for its admin.
    let codec = fleetledger_schemas::RecordCodec::with_source(Arc::new(
        fleetledger_registry::HttpSchemaSource::with_bearer(
            &format!("{}/registry", server.url()),
            "dev-registry-admin",
        )
        .unwrap(),
    ));
    let payload = codec
        .encode(&StateRecord {
            meta: meta.clone(),
            state,
        })
        .await
        .unwrap();
    let producer = KafkaClients::new(cfg.kafka.clone())
        .producer("forger")
        .unwrap();
    let layout = TopicLayout::new(&cfg.kafka);
    let key = format!("{c}/status/{:020}", meta.version);
    let (_, forged_offset) = producer
        .send(
            FutureRecord::to(&layout.history)
                .key(&key)
                .payload(&payload)
                .partition(partition_for(c, layout.partitions)),
            Duration::from_secs(10),
        )
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| e)
        .expect("forged record written");

    let (_, v) = api
        .get(&format!("/v1/clusters/{c}/verify"), "dev-frontend")
        .await;
    assert_eq!(v["intact"], false, "{v}");
    let broken = &v["report"]["broken"][0];
    assert_eq!(broken["offset"], forged_offset, "{v}");
    assert_eq!(broken["facet"], "status");
    assert!(
        broken["problem"]
            .as_str()
            .unwrap()
            .contains("content hashes to"),
        "{v}"
    );
    let whole = fleetledger::verify_topic(&cfg).await.expect("verify runs");
    assert_eq!(whole.broken.len(), 1, "{whole:?}");
    assert_eq!(whole.broken[0].offset, forged_offset);

    let out = cli(&server, &["audit", c, "--verify"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("offset {forged_offset}")),
        "{out:?}"
    );

    // Recovery refuses a broken chain unless forced.
    delete_and_tear_down(&server, &api, &clock, t0, c).await;
    clock.set(t0 + TimeDelta::minutes(100));
    let (st, e) = recover(&api, c, "dev-recovery", json!({})).await;
    assert_eq!(
        (st, e["error"].as_str()),
        (409, Some("broken_chain")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("force"), "{e}");
    assert_eq!(current(&api, c).await["logical"]["version"], 5);
    let (st, done) = recover(&api, c, "dev-recovery", json!({"force": true})).await;
    assert_eq!(st, 201, "{done}");
    assert_eq!(current(&api, c).await["logical"]["version"], 6);
    server.stop().await;
}
