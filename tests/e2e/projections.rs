//! Projections fed through the real broker.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use fleetledger::Config;
use fleetledger_ledger::{KafkaClients, ManualClock, TopicLayout};
use fleetledger_projectors::{Error, Projector, ProjectorConfig};
use rdkafka::producer::{FutureRecord, Producer};
use serde_json::{Value, json};

use crate::append::{Api, logical, status};
use crate::support::{TestServer, config, unique_prefix};

fn projector(cfg: &Config, server: &TestServer, dir_name: &str) -> Projector {
    let codec = fleetledger_registry::http_codec(&format!("{}/registry", server.url())).unwrap();
    let pc = ProjectorConfig {
        dir: cfg.projector.dir.join(dir_name),
        checkpoint_every_records: 700,
        checkpoint_every_ms: 100,
        batch_max: 500,
        retired_grace_ms: 0,
    };
    // A killed projector's checkpoint in flight holds the directory until it ends, as a
    // process would until it exits.
    let codec = Arc::new(codec);
    for _ in 0..200 {
        match Projector::open(
            KafkaClients::new(cfg.kafka.clone()),
            TopicLayout::new(&cfg.kafka),
            codec.clone(),
            pc.clone(),
        ) {
            Err(fleetledger_projectors::Error::DirectoryInUse { .. }) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => return other.expect("projector opens"),
        }
    }
    panic!("the projector directory stayed in use for 10 s")
}

#[tokio::test]
async fn billing_hours_of_create_expand_shrink_delete_are_exact() {
    let cfg = config(&unique_prefix("billing"));
    let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let server = TestServer::start_with_clock(cfg.clone(), clock.clone()).await;
    let api = Api::new(&server);
    let c = "lkc-bill1";
    let at = |m: i64| clock.set(t0 + TimeDelta::minutes(m));
    let steps: Vec<(i64, &str, &str, Value)> = vec![
        (0, "logical", "dev-frontend", logical(2)),
        (0, "status", "dev-sync", status("provisioning", 0, 1)),
        (10, "status", "dev-sync", status("running", 2, 1)),
        (30, "logical", "dev-frontend", logical(4)),
        (31, "status", "dev-sync", status("expanding", 2, 2)),
        (120, "status", "dev-sync", status("running", 4, 2)),
        (150, "logical", "dev-frontend", logical(1)),
        (151, "status", "dev-sync", status("shrinking", 4, 3)),
        (170, "status", "dev-sync", status("running", 1, 3)),
    ];
    for (m, facet, token, body) in steps {
        at(m);
        let (st, v) = api.append(c, facet, token, &body, &[]).await;
        assert_eq!(st, 201, "{v}");
    }
    at(200);
    let resp = reqwest::Client::new()
        .delete(format!("{}/v1/clusters/{c}", server.url()))
        .bearer_auth("dev-frontend")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    at(201);
    assert_eq!(
        api.append(c, "status", "dev-sync", &status("deleting", 1, 4), &[])
            .await
            .0,
        201
    );
    at(220);
    assert_eq!(
        api.append(c, "status", "dev-sync", &status("deleted", 0, 4), &[])
            .await
            .0,
        201
    );

    let p = projector(&cfg, &server, "billing");
    p.catch_up(|_| {}).await.expect("caught up");
    let projections = p.projections();
    let snapshot = projections.read().await;
    let rows = snapshot
        .billing
        .rows((t0 + TimeDelta::minutes(300)).timestamp_millis());
    let got: Vec<(i64, f64, bool)> = rows
        .iter()
        .map(|r| {
            (
                (r.hour_start_ms - t0.timestamp_millis()) / 3_600_000,
                r.cku_hours,
                r.open,
            )
        })
        .collect();
    let want = [
        (0, 2.0 * 50.0 / 60.0), // running at 2 from 00:10; the expansion is not billed yet
        (1, 2.0),
        (2, 4.0 * 0.5 + 1.0 * 0.5), // expansion done at 02:00; shrink billed from the request at 02:30
        (3, 1.0 * 20.0 / 60.0),     // deleted at 03:20
    ];
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((h, v, open), (wh, wv)) in got.iter().zip(want) {
        assert_eq!(*h, wh);
        assert!((v - wv).abs() < 1e-9, "hour {h}: {v} != {wv}");
        assert!(!open);
    }
    assert!(
        rows.iter()
            .all(|r| r.org_id == "org-1" && r.sku == "dedicated" && r.region == "us-east-1")
    );

    let row = &snapshot.clusters.rows[c];
    assert!(row.deleted());
    assert!(!row.drift(), "status observed logical v4");
    let views = fleetledger_projectors::ServiceViews::default();
    let view = |name: &str| views.views.iter().find(|v| v.name == name).unwrap().clone();
    assert!(
        !view("capacity_controller_view").shows(row),
        "deleted clusters are not live"
    );
    assert!(
        view("frontend_view").shows(row),
        "the frontend sees deleted clusters"
    );
    server.stop().await;
}

#[tokio::test]
async fn audit_diffs_of_one_field_several_fields_and_deletion() {
    let cfg = config(&unique_prefix("audit"));
    let server = TestServer::start(cfg.clone()).await;
    let api = Api::new(&server);
    let c = "lkc-aud1";
    assert_eq!(
        api.append(c, "logical", "dev-frontend", &logical(2), &[])
            .await
            .0,
        201
    );
    assert_eq!(
        api.append(
            c,
            "logical",
            "dev-frontend",
            &logical(3),
            &[("x-reason", "more load")]
        )
        .await
        .0,
        201
    );
    let mut several = logical(3);
    several["name"] = json!("payments");
    several["region"] = json!("eu-west-1");
    several["config"] = json!({"retention.ms": "2000", "cleanup.policy": "compact"});
    assert_eq!(
        api.append(c, "logical", "dev-frontend", &several, &[])
            .await
            .0,
        201
    );
    let resp = reqwest::Client::new()
        .delete(format!("{}/v1/clusters/{c}", server.url()))
        .bearer_auth("dev-frontend")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);

    let p = projector(&cfg, &server, "audit");
    p.catch_up(|_| {}).await.unwrap();
    let all = p.audit_rows().await.unwrap();
    let rows: Vec<_> = all.iter().filter(|r| r.cluster_id == c).collect();
    let diffs: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::from_str(&r.diff).unwrap())
        .collect();
    assert_eq!(
        rows.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(diffs[0]["cku"], json!({"from": null, "to": 2}));
    assert_eq!(diffs[1], json!({"cku": {"from": 2, "to": 3}}));
    assert_eq!(rows[1].reason.as_deref(), Some("more load"));
    assert_eq!(
        diffs[2],
        json!({
            "config.cleanup.policy": {"from": null, "to": "compact"},
            "config.retention.ms": {"from": "1000", "to": "2000"},
            "name": {"from": "orders", "to": "payments"},
            "region": {"from": "us-east-1", "to": "eu-west-1"}
        })
    );
    assert_eq!(diffs[3], json!({"deleted": {"from": false, "to": true}}));
    assert!(
        rows.iter()
            .all(|r| r.writer == "frontend" && r.hash.len() == 64 && r.offset >= 0)
    );
    server.stop().await;
}

/// A tiny deterministic generator for kill points (seed printed on failure).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[tokio::test]
async fn a_projector_killed_at_random_points_ends_equal_to_a_clean_rebuild() {
    let cfg = config(&unique_prefix("kill"));
    let server = TestServer::start(cfg.clone()).await;
    let api = Api::new(&server);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("kill seed {seed}");
    let mut rng = Lcg(seed);

    // 10,000 changes in batches of 1,000, written while the projector is being killed.
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            for b in 0..10 {
                let items: Vec<Value> = (0..1000)
                    .map(|j| {
                        let i = b * 1000 + j;
                        let cluster = format!("lkc-k{}", i % 250);
                        if i % 3 == 2 {
                            json!({"cluster_id": cluster, "facet": "status", "state": status("running", 1 + (i % 5) as i64, 1)})
                        } else {
                            json!({"cluster_id": cluster, "facet": "logical", "state": logical(1 + (i % 7) as i64)})
                        }
                    })
                    .collect();
                let (st, v) = api.batch("dev-frontend", &items).await;
                assert_eq!(st, 200);
                let ok = v["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["status"] == 201)
                    .count();
                let status_items = items_with_status_count(b);
                // status items are refused (frontend does not own status): exactly those.
                assert_eq!(ok, 1000 - status_items, "batch {b}");
            }
        })
    };
    let mut kills = 0;
    while kills < 6 || !writer.is_finished() {
        let p = projector(&cfg, &server, "killed");
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let p = p.clone();
            let stop = stop.clone();
            async move { p.run(stop).await }
        });
        tokio::time::sleep(Duration::from_millis(50 + rng.next(400))).await;
        task.abort();
        let _ = task.await;
        kills += 1;
        assert!(kills < 200, "writer never finished");
    }
    writer.await.unwrap();

    let resumed = projector(&cfg, &server, "killed");
    resumed.catch_up(|_| {}).await.unwrap();
    let clean = projector(&cfg, &server, "clean");
    clean.catch_up(|_| {}).await.unwrap();
    let (ra, rb) = (
        resumed.audit_rows().await.unwrap(),
        clean.audit_rows().await.unwrap(),
    );
    let (a, b) = (resumed.projections(), clean.projections());
    let (a, b) = (a.read().await, b.read().await);
    let total = history_len(&cfg).await;
    assert_eq!(rb.len(), total);
    assert_eq!(
        ra.len(),
        total,
        "no record applied twice or skipped, seed {seed}"
    );
    // Every file in the projection directories is one a checkpoint names: no orphan.
    for (p, dir) in [(&a, "killed"), (&b, "clean")] {
        for (segments, files) in [
            (&p.audit.segments, &p.audit.files),
            (&p.billing.segments, &p.billing.files),
        ] {
            let named: std::collections::BTreeSet<String> =
                segments.iter().map(|s| s.name.clone()).collect();
            let on_disk: std::collections::BTreeSet<String> = match std::fs::read_dir(files.dir()) {
                Ok(entries) => entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(_) => Default::default(),
            };
            assert_eq!(on_disk, named, "files of {dir}, seed {seed}");
        }
    }
    assert!(a.clusters == b.clusters, "clusters differ, seed {seed}");
    let now = chrono::Utc::now().timestamp_millis();
    assert!(
        a.billing.all_rows(now).unwrap() == b.billing.all_rows(now).unwrap(),
        "billing differs, seed {seed}"
    );
    for (x, y) in ra.iter().zip(&rb) {
        assert!(
            x == y,
            "first differing audit row, seed {seed}:\n{x:?}\n{y:?}"
        );
    }
    assert_eq!(a.offsets, b.offsets, "seed {seed}");
    server.stop().await;
}

fn items_with_status_count(b: usize) -> usize {
    (0..1000).filter(|j| (b * 1000 + j) % 3 == 2).count()
}

async fn history_len(cfg: &Config) -> usize {
    crate::append::history_keys(cfg).await.len()
}

#[tokio::test]
async fn an_undecodable_record_stops_its_partition_and_names_its_offset() {
    let cfg = config(&unique_prefix("undecodable"));
    let server = TestServer::start(cfg.clone()).await;
    let api = Api::new(&server);
    assert_eq!(
        api.append("lkc-u1", "logical", "dev-frontend", &logical(2), &[])
            .await
            .0,
        201
    );

    let clients = KafkaClients::new(cfg.kafka.clone());
    let layout = TopicLayout::new(&cfg.kafka);
    let producer = clients
        .transactional_producer("test", &format!("{}-garbage", cfg.kafka.topic_prefix))
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    let delivered = producer
        .send(
            FutureRecord::to(&layout.history)
                .key("lkc-u1/logical/x")
                .payload(&[7u8, 0, 0, 0, 1, 2][..])
                .partition(1),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();

    // Changes after the bad record: those in its partition wait behind it, the others go on.
    let after: Vec<String> = (0..12).map(|i| format!("lkc-after{i}")).collect();
    for c in &after {
        assert_eq!(
            api.append(c, "logical", "dev-frontend", &logical(1), &[])
                .await
                .0,
            201
        );
    }
    let partition_of =
        |c: &str| fleetledger_ledger::partitioner::partition_for(c, layout.partitions);
    assert!(
        after.iter().any(|c| partition_of(c) == 1) && after.iter().any(|c| partition_of(c) != 1)
    );

    let p = projector(&cfg, &server, "undecodable");
    let err = p.catch_up(|_| {}).await.unwrap_err();
    {
        let projections = p.projections();
        let snapshot = projections.read().await;
        for c in &after {
            assert_eq!(
                snapshot.clusters.rows.contains_key(c.as_str()),
                partition_of(c) != 1,
                "{c} in partition {}",
                partition_of(c)
            );
        }
        assert_eq!(
            snapshot.offsets[&fleetledger_projectors::ProjectionName::AuditLog]
                .get(&1)
                .copied()
                .unwrap_or(0),
            delivered.offset,
            "stopped at the bad record"
        );
    }
    assert_eq!(p.stopped().keys().copied().collect::<Vec<_>>(), vec![1]);
    match &err {
        Error::Decode {
            partition,
            offset,
            message,
            ..
        } => {
            assert_eq!(
                (*partition, *offset),
                (delivered.partition, delivered.offset)
            );
            assert!(message.contains("magic byte is 7"), "{message}");
        }
        e => panic!("expected a decode error, got {e}"),
    }
    assert!(
        err.to_string().contains("project inspect --partition 1"),
        "{err}"
    );
    server.stop().await;
}

/// A corrupt checkpoint costs only its projection a rebuild: the projector opens, says so
/// (degraded, with the reason), keeps the other projections' state, and the rebuilt one
/// equals what it was.
#[tokio::test]
async fn a_corrupt_checkpoint_rebuilds_only_its_projection() {
    let cfg = config(&unique_prefix("corruptcp"));
    let server = TestServer::start(cfg.clone()).await;
    let api = Api::new(&server);
    for i in 0..5 {
        let c = format!("lkc-cp{i}");
        let (st, v) = api
            .append(&c, "logical", "dev-frontend", &logical(2), &[])
            .await;
        assert_eq!(st, 201, "{v}");
        let (st, v) = api
            .append(&c, "status", "dev-sync", &status("running", 2, 1), &[])
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let now = Utc::now().timestamp_millis();
    let first = projector(&cfg, &server, "corrupt");
    first.catch_up(|_| {}).await.expect("caught up");
    let (billing, clusters) = {
        let p = first.projections();
        let p = p.read().await;
        (p.billing.rows(now), p.clusters.clone())
    };
    assert_eq!(billing.len(), 5, "{billing:?}");
    assert!(first.degraded().is_empty(), "{:?}", first.degraded());
    drop(first);
    let dir = cfg.projector.dir.join("corrupt");
    let layout = TopicLayout::new(&cfg.kafka);
    let path = dir.join(format!("{}.billing_hours.checkpoint.json", layout.history));
    std::fs::write(
        &path,
        b"{\"format\": \"fleetledger.checkpoint.v2\", \"trunc",
    )
    .unwrap();

    // The first projector's reading tasks end (and let go of the directory) as they are
    // aborted, a moment after it is dropped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = projector(&cfg, &server, "corrupt");
    let degraded = second.degraded();
    assert_eq!(degraded.len(), 1, "{degraded:?}");
    assert!(
        degraded[0].starts_with("billing_hours: rebuilding"),
        "{degraded:?}"
    );
    {
        let p = second.projections();
        let p = p.read().await;
        assert_eq!(
            p.clusters, clusters,
            "the other projections keep their state"
        );
        assert!(p.billing.rows(now).is_empty(), "billing starts over");
    }
    second.catch_up(|_| {}).await.expect("caught up");
    let p = second.projections();
    let p = p.read().await;
    assert_eq!(p.billing.rows(now), billing, "rebuilt equal");
    assert_eq!(p.clusters, clusters);
    drop(p);
    server.stop().await;
}
