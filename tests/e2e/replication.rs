//! Durability that is checked, not assumed: on a cluster of three brokers (started by
//! `deploy/local/kafka` with `FLEETLEDGER_KAFKA_NODES=3` on ports of this module's own),
//! the ledger creates its topics with three replicas and `min.insync.replicas=2`, and a
//! start on settings that could lose an acknowledged write is refused unless the risk is
//! accepted.

use std::path::PathBuf;
use std::process::Command;

use crate::foundation::refused_start;
use crate::support::{TestServer, config, unique_prefix};

/// The first port of this module's three-broker cluster (nodes on it, +2 and +4).
const PORT: u16 = 19500;

/// Runs `deploy/local/kafka ACTION` for the three-node cluster; its output.
pub(crate) fn cluster(args: &[&str]) -> String {
    let out = Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka"))
        .args(args)
        .env("FLEETLEDGER_KAFKA_PORT", PORT.to_string())
        .env("FLEETLEDGER_KAFKA_NODES", "3")
        .env("FLEETLEDGER_KAFKA_HEAP", "512m")
        .output()
        .expect("deploy/local/kafka runs");
    assert!(
        out.status.success(),
        "kafka {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn on_three_brokers_topics_are_replicated_and_weak_settings_refuse_the_start() {
    cluster(&["start"]);
    let bootstrap = cluster(&["bootstrap"]);
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
