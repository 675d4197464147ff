//! Durability that is checked, not assumed: on a cluster of three brokers (started by
//! `deploy/local/kafka` with `FLEETLEDGER_KAFKA_NODES=3` on ports of this module's own),
//! the ledger creates its topics with three replicas and `min.insync.replicas=2`, and a
//! start on settings that could lose an acknowledged write is refused unless the risk is
//! accepted.

use std::process::Command;

use crate::foundation::refused_start;
use crate::support::{
    TestServer, assert_kept_every_promise, config, kafka_script, tally, unique_prefix, with_fields,
    written,
};

/// The first port of this module's three-broker cluster (nodes on it, +2 and +4).
const PORT: u16 = 19500;

/// Runs `deploy/local/kafka ARGS` for the three-node cluster; its output.
pub(crate) fn cluster(args: &[&str]) -> String {
    let port = PORT.to_string();
    kafka_script(
        args,
        &[
            ("FLEETLEDGER_KAFKA_PORT", &port),
            ("FLEETLEDGER_KAFKA_NODES", "3"),
            ("FLEETLEDGER_KAFKA_HEAP", "512m"),
        ],
    )
}

/// Starts the three brokers and waits (up to 60 s) until a metadata request lists all
/// three: a broker logs that it started once the controllers unfenced it, but the broker
/// that answers a metadata request may learn of it a moment later, and the ledger would
/// create its topics with the brokers it sees. Returns the bootstrap servers.
pub(crate) fn start_cluster() -> String {
    cluster(&["start"]);
    let bootstrap = cluster(&["bootstrap"]);
    let probe: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let mut seen = 0;
    for _ in 0..120 {
        seen = rdkafka::consumer::Consumer::fetch_metadata(
            &probe,
            None,
            std::time::Duration::from_secs(5),
        )
        .map_or(0, |md| md.brokers().len());
        if seen >= 3 {
            return bootstrap;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("the cluster's metadata lists {seen} of 3 brokers after 60 s");
}

#[tokio::test]
async fn on_three_brokers_topics_are_replicated_and_weak_settings_refuse_the_start() {
    let _cluster = crate::support::TIMED_FAULTS.lock().await;
    let bootstrap = start_cluster();
    assert_eq!(bootstrap.split(',').count(), 3, "{bootstrap}");
    let mut cfg = config(&unique_prefix("replicated"));
    cfg.kafka.bootstrap_servers = bootstrap;
    cfg.kafka.accept_weak_durability = false;
    // Created by the ledger on three brokers: three replicas, min.insync.replicas 2, and
    // Kafka's transaction log the same: nothing to refuse.
    let server = TestServer::start(cfg.clone()).await;
    let clients = fleetledger_ledger::KafkaClients::new(cfg.kafka.clone());
    let layout = fleetledger_ledger::TopicLayout::new(&cfg.kafka);
    let risks = layout.durability_risks(&clients).await.unwrap();
    assert!(risks.is_empty(), "{risks:?}");
    server.stop().await;
    // Topics made with one replica on the same cluster: the start names each and stops.
    let mut weak = cfg.clone();
    weak.kafka.topic_prefix = unique_prefix("unreplicated");
    weak.kafka.schemas_topic = format!("{}._schemas", weak.kafka.topic_prefix);
    weak.projector.dir = cfg.projector.dir.join("weak");
    weak.kafka.replication_factor = 1;
    let err = refused_start(&weak).await;
    assert!(
        err.contains("could lose an acknowledged write")
            && err.contains(&format!(
                "{}.history.v1 has 1 replica",
                weak.kafka.topic_prefix
            ))
            && err.contains("min.insync.replicas=1")
            && err.contains("accept_weak_durability"),
        "{err}"
    );
    // Accepting the risk on purpose lets it start.
    weak.kafka.accept_weak_durability = true;
    let server = TestServer::start(weak).await;
    server.stop().await;
    cluster(&["stop"]);
}

#[tokio::test]
async fn on_one_broker_the_start_is_refused_unless_the_risk_is_accepted() {
    let mut cfg = config(&unique_prefix("onebroker"));
    cfg.kafka.accept_weak_durability = false;
    let err = refused_start(&cfg).await;
    assert!(
        err.contains("has 1 replica")
            && err.contains("__transaction_state")
            && err.contains("accept_weak_durability"),
        "{err}"
    );
}

/// A steady keyed write load on `clusters`: each writer appends status changes to its own
/// cluster with an Idempotency-Key, as a client of several instances should: it follows a
/// redirect to the writer, moves to the next instance when one does not answer (within
/// 3 s) or has no writer yet, and asks again with the same key when the answer is no answer
/// about the change (outcome unknown, not ready).
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<Vec<(String, u16, serde_json::Value)>>>,
    /// When each 201 came, and from which instance.
    acks: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
}

impl Load {
    fn start(url: &str, clusters: &[String]) -> Load {
        Self::start_on(&[url.to_owned()], clusters)
    }

    fn start_on(urls: &[String], clusters: &[String]) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writers = clusters
            .iter()
            .enumerate()
            .map(|(i, cluster)| {
                let (urls, cluster, stop, acks) =
                    (urls.to_vec(), cluster.clone(), stop.clone(), acks.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .timeout(std::time::Duration::from_secs(if urls.len() > 1 {
                            3
                        } else {
                            150
                        }))
                        .redirect(reqwest::redirect::Policy::none())
                        .build()
                        .unwrap();
                    let mut answers = Vec::new();
                    let mut n = 0;
                    let mut at = i % urls.len();
                    while !stop.load(Ordering::Acquire) {
                        n += 1;
                        let key = format!("{cluster}-k{n}");
                        let mut target = urls[at].clone();
                        for _ in 0..600 {
                            let r = http
                                .post(format!("{target}/v1/clusters/{cluster}/status"))
                                .bearer_auth("dev-sync")
                                .header("idempotency-key", &key)
                                .json(&crate::append::status("running", n % 8 + 1, 1))
                                .send()
                                .await;
                            let (st, v) = match r {
                                Ok(r) => {
                                    let st = r.status().as_u16();
                                    (st, r.json::<serde_json::Value>().await.unwrap_or_default())
                                }
                                Err(_) => (0, serde_json::Value::Null),
                            };
                            if st == 307 {
                                if let Some(w) = v["writer"].as_str() {
                                    target = w.to_owned();
                                }
                                continue;
                            }
                            if st == 0 || (st == 503 && v["error"] == "no_writer") {
                                // This instance is away or has no writer to send us to.
                                at = (at + 1) % urls.len();
                                target = urls[at].clone();
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                                continue;
                            }
                            let unknown = st == 503
                                && (v["error"] == "outcome_unknown" || v["error"] == "not_ready");
                            if unknown {
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                                continue;
                            }
                            if st == 201 {
                                acks.lock()
                                    .unwrap()
                                    .push((std::time::Instant::now(), target.clone()));
                            } else {
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            }
                            answers.push((key.clone(), st, v));
                            break;
                        }
                    }
                    answers
                })
            })
            .collect();
        Load {
            stop,
            writers,
            acks,
        }
    }

    /// The longest time without a 201 between `from` and `to`.
    fn longest_gap(&self, from: std::time::Instant, to: std::time::Instant) -> f64 {
        let acks = self.acks.lock().unwrap();
        let mut last = from;
        let mut gap = 0f64;
        for (t, _) in acks.iter().filter(|(t, _)| *t > from && *t <= to) {
            gap = gap.max(t.duration_since(last).as_secs_f64());
            last = *t;
        }
        gap.max(to.saturating_duration_since(last).as_secs_f64())
    }

    /// The first 201 after `t`, in seconds after it.
    fn first_ack_after(&self, t: std::time::Instant) -> Option<f64> {
        self.first_ack_after_from(t, |_| true)
    }

    /// The first 201 after `t` from an instance `from` accepts, in seconds after it.
    fn first_ack_after_from(
        &self,
        t: std::time::Instant,
        from: impl Fn(&str) -> bool,
    ) -> Option<f64> {
        let acks = self.acks.lock().unwrap();
        acks.iter()
            .filter(|(a, url)| *a > t && from(url))
            .map(|(a, _)| a.duration_since(t).as_secs_f64())
            .min_by(f64::total_cmp)
    }

    async fn finish(self) -> Vec<(String, u16, serde_json::Value)> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let mut all = Vec::new();
        for w in self.writers {
            all.extend(w.await.unwrap());
        }
        all
    }
}

/// A rolling restart of the three brokers (each stopped, then started again), then a
/// SIGKILL of the broker leading the written partitions, under a steady keyed write
/// load: nothing acknowledged is lost or written twice, versions stay gapless, and writes
/// are unavailable only briefly (the figures go to the fault report).
#[tokio::test]
async fn a_rolling_restart_and_a_killed_leader_lose_nothing_acknowledged() {
    let _cluster = crate::support::TIMED_FAULTS.lock().await;
    let mut cfg = config(&unique_prefix("rolling"));
    cfg.kafka.bootstrap_servers = start_cluster();
    cfg.kafka.accept_weak_durability = false;
    cfg.kafka.request_timeout_ms = 5_000;
    let server = TestServer::start(cfg.clone()).await;
    let url = server.url();
    let clusters: Vec<String> = (0..4).map(|i| format!("lkc-roll{i}")).collect();
    let load = Load::start(&url, &clusters);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // Rolling restart: the longest time without a write while each broker restarts.
    let mut per_broker = Vec::new();
    for node in ["1", "2", "3"] {
        let from = std::time::Instant::now();
        cluster(&["stop", node]);
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        cluster(&["start", node]);
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        per_broker.push(load.longest_gap(from, std::time::Instant::now()));
    }
    // The leader of the partition the first cluster is written to, SIGKILLed.
    let clients = fleetledger_ledger::KafkaClients::new(cfg.kafka.clone());
    let layout = fleetledger_ledger::TopicLayout::new(&cfg.kafka);
    let partition = fleetledger_ledger::partitioner::partition_for(&clusters[0], layout.partitions);
    let leader = {
        let consumer = clients.consumer("leader-probe").unwrap();
        let md = rdkafka::consumer::Consumer::fetch_metadata(
            &consumer,
            Some(&layout.history),
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        md.topics()[0].partitions()[partition as usize].leader()
    };
    let pid = cluster(&["pid", &leader.to_string()]);
    let killed = std::time::Instant::now();
    let status = Command::new("kill").args(["-9", &pid]).status().unwrap();
    assert!(status.success());
    // Two brokers remain: writes must come back without the killed one (Kafka first
    // waits out the dead broker's session, broker.session.timeout.ms, 9 s by default).
    while load.first_ack_after(killed).is_none()
        && killed.elapsed() < std::time::Duration::from_secs(60)
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let after_kill = load.first_ack_after(killed);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    cluster(&["start", &leader.to_string()]);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let answers = load.finish().await;
    // Count every answer against history.
    let t = tally(&answers, &written(&url, &clusters).await);
    let worst = per_broker.iter().copied().fold(0.0, f64::max);
    crate::faults::record_result(with_fields(
        t.clone(),
        serde_json::json!({
            "scenario": "rolling restart of 3 brokers (each stopped 3 s) under 4 keyed writers",
            "kind": "rolling_restart",
            "faults": 3,
            "recovery_s": worst,
            "unavailable_s_per_broker": per_broker,
        }),
    ));
    crate::faults::record_result(with_fields(
        t.clone(),
        serde_json::json!({
            "scenario": "SIGKILL of the broker leading the written partition (3 brokers) under 4 keyed writers",
            "kind": "leader_kill",
            "faults": 1,
            "recovery_s": after_kill,
        }),
    ));
    assert_kept_every_promise(&t);
    assert!(
        after_kill.is_some_and(|s| s < 30.0),
        "writes succeeded again {after_kill:?} s after the leader was killed, without it"
    );
    server.stop().await;
    cluster(&["stop"]);
}

/// Which of `urls` says it is the writer now (by `/readyz`), waiting up to 30 s.
async fn writer_among(urls: &[String]) -> usize {
    for _ in 0..300 {
        for (i, u) in urls.iter().enumerate() {
            if role_of(u).await.as_deref() == Some("writer") {
                return i;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no instance of {urls:?} is the writer");
}

/// The role `url`'s `/readyz` says, if it answers within 2 s.
async fn role_of(url: &str) -> Option<String> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    let v: serde_json::Value = http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["role"].as_str().map(str::to_owned)
}

impl Load {
    /// Waits (at most 45 s) for the first 201 after `t` from an instance other than
    /// `not`; its delay in seconds.
    async fn first_ack_elsewhere(&self, t: std::time::Instant, not: &str) -> Option<f64> {
        while self.first_ack_after_from(t, |u| u != not).is_none()
            && t.elapsed() < std::time::Duration::from_secs(45)
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.first_ack_after_from(t, |u| u != not)
    }
}

/// Three `serve` processes on the same topics under a keyed write load sent to all of
/// them. The writer is paused (SIGSTOP) past its session timeout, as a process cut off
/// from Kafka would be: a standby takes over, fencing it; resumed (SIGCONT), the old
/// writer stands down without committing anything. Then the new writer is SIGKILLed: the
/// remaining instances elect another. Nothing acknowledged is lost or written twice,
/// versions stay gapless (no two writers committed conflicting versions), keyed retries
/// at the last writer get the original answers (byte for byte), and each take-over is
/// measured (goal: 15 s).
#[tokio::test]
async fn a_paused_or_killed_writer_is_replaced_and_never_commits_after_it() {
    use crate::support::{ServeProcess, free_port};
    let mut cfg = config(&unique_prefix("failover"));
    // The quick version runs on the suite's broker; the fault suite's on three brokers.
    let three = std::env::var("FLEETLEDGER_FAULT_FAILOVER_BROKERS").as_deref() == Ok("3");
    let _cluster = match three {
        true => Some(crate::support::TIMED_FAULTS.lock().await),
        false => None,
    };
    if three {
        cfg.kafka.bootstrap_servers = start_cluster();
        cfg.kafka.accept_weak_durability = false;
    }
    let brokers = if three { "3 brokers" } else { "1 broker" };
    let spawn = |n: usize| {
        let mut c = cfg.clone();
        c.projector.dir = cfg.projector.dir.join(format!("instance{n}"));
        ServeProcess::spawn(&c, free_port())
    };
    // The first is started alone, so it is the writer.
    let mut instances = vec![spawn(0)];
    instances[0].wait_ready().await;
    instances.push(spawn(1));
    instances.push(spawn(2));
    for i in &instances[1..] {
        i.wait_ready().await;
    }
    let urls: Vec<String> = instances.iter().map(|i| i.url.clone()).collect();
    assert_eq!(writer_among(&urls).await, 0);
    assert_eq!(role_of(&urls[1]).await.as_deref(), Some("standby"));
    let clusters: Vec<String> = (0..4).map(|i| format!("lkc-failover{i}")).collect();
    let load = Load::start_on(&urls, &clusters);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;

    // The writer paused past its session: cut off from Kafka and its clients.
    let paused = std::time::Instant::now();
    instances[0].signal("-STOP");
    let after_pause = load.first_ack_elsewhere(paused, &urls[0]).await;
    tokio::time::sleep(std::time::Duration::from_secs(12).saturating_sub(paused.elapsed())).await;
    instances[0].signal("-CONT");
    let resumed = std::time::Instant::now();
    let mut stood_down = None;
    while resumed.elapsed() < std::time::Duration::from_secs(30) {
        if role_of(&urls[0]).await.as_deref() == Some("standby") {
            stood_down = Some(resumed.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    // The new writer SIGKILLed; two instances remain.
    let second = writer_among(&urls).await;
    assert_ne!(
        second, 0,
        "the resumed instance did not take the writer's role back"
    );
    let killed = std::time::Instant::now();
    instances[second].signal("-9");
    let after_kill = load.first_ack_elsewhere(killed, &urls[second]).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let answers = load.finish().await;
    let live = &urls[writer_among(&urls).await];
    let t = tally(&answers, &written(live, &clusters).await);
    crate::faults::record_result(with_fields(
        t.clone(),
        serde_json::json!({
            "scenario": format!("writer paused (SIGSTOP) 12 s, past its 6 s election session, then resumed; 2 standbys; 4 keyed writers on all 3 instances; {brokers}"),
            "kind": "writer_failover",
            "faults": 1,
            "recovery_s": after_pause,
            "old_writer_stood_down_s": stood_down,
        }),
    ));
    crate::faults::record_result(with_fields(
        t.clone(),
        serde_json::json!({
            "scenario": format!("writer SIGKILLed; 2 instances remain; 4 keyed writers on all 3 instances; {brokers}"),
            "kind": "writer_failover",
            "faults": 1,
            "recovery_s": after_kill,
        }),
    ));
    assert_kept_every_promise(&t);
    // Keyed retries, at the writer of now, of the last changes each cluster had
    // acknowledged (by the writers before it, most of them): the original answers, to the
    // byte.
    let http = reqwest::Client::new();
    let mut retried = 0;
    for cluster in &clusters {
        let prefix = format!("{cluster}-k");
        let acked: Vec<&(String, u16, serde_json::Value)> = answers
            .iter()
            .filter(|a| a.1 == 201 && a.0.starts_with(&prefix))
            .collect();
        for (key, _, original) in acked.iter().rev().take(8) {
            let n: i64 = key[prefix.len()..].parse().unwrap();
            let r = http
                .post(format!("{live}/v1/clusters/{cluster}/status"))
                .bearer_auth("dev-sync")
                .header("idempotency-key", key)
                .json(&crate::append::status("running", n % 8 + 1, 1))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201, "retry of {key}");
            let again: serde_json::Value = r.json().await.unwrap();
            assert_eq!(
                &again, original,
                "a keyed retry of {key} answers the original"
            );
            retried += 1;
        }
    }
    assert!(retried >= 4, "retried {retried} acknowledged changes");
    assert!(
        stood_down.is_some(),
        "the resumed writer stands down: {stood_down:?}"
    );
    for (what, s) in [("paused", after_pause), ("killed", after_kill)] {
        assert!(
            s.is_some_and(|s| s <= 15.0),
            "a standby accepts writes within 15 s of the writer being {what}: {s:?}"
        );
    }
    drop(instances);
    if three {
        cluster(&["stop"]);
    }
}
