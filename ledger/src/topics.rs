//! The topic layout of the system of record (DESIGN.md, "Kafka is the system of record"):
//! names, partition counts and configs, creating missing topics and checking existing ones.

use std::collections::BTreeMap;

use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::types::RDKafkaErrorCode as Code;

use crate::error::{Error, Result};
use crate::kafka::KafkaClients;

/// Names and settings of our topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    /// `{prefix}.state.v1`: latest state per cluster+facet, compacted.
    pub state: String,
    /// `{prefix}.history.v1`: every accepted record, keyed uniquely, compacted.
    pub history: String,
    /// The embedded registry's topic.
    pub schemas: String,
    /// `{prefix}.writer.v1`: the writer election's control topic (one partition). Every
    /// `serve` instance joins a consumer group on it, and the member assigned its
    /// partition is the writer; each writer announces itself there, in a transaction of
    /// its own producer ([`crate::election`]).
    pub writers: String,
    /// Partitions of state and history.
    pub partitions: i32,
    /// Replication factor of topics we create (0: 3 on a cluster of three or more
    /// brokers, else one per broker).
    pub replication_factor: i32,
    /// Extra configs of the state and history topics, set when they are created.
    pub topic_configs: BTreeMap<String, String>,
}

/// What [`TopicLayout::ensure`] found for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicCheck {
    /// The topic did not exist and was created.
    Created(String),
    /// The topic existed with the settings the layout needs.
    Matches(String),
}

impl TopicLayout {
    /// The layout for a configuration.
    pub fn new(config: &crate::KafkaConfig) -> Self {
        TopicLayout {
            state: format!("{}.state.v1", config.topic_prefix),
            history: format!("{}.history.v1", config.topic_prefix),
            schemas: config.schemas_topic.clone(),
            writers: format!("{}.writer.v1", config.topic_prefix),
            partitions: config.partitions,
            replication_factor: config.replication_factor,
            topic_configs: config.topic_configs.clone(),
        }
    }

    /// Every topic with the partition count and configs it must have. Both data topics
    /// are compacted: history keys are unique (`{cluster}/{facet}/{version:020}`), so
    /// compaction never loses history, while a tombstone can still erase one record.
    /// `message.timestamp.type=CreateTime` keeps the write time the ledger sets (its own,
    /// injected clock, which may stand in the past); an unbounded `before.max.ms` keeps
    /// records whose timestamps are old (written under such a clock, or before the
    /// timestamp was the write time: imports once carried their event time there);
    /// `retention.ms=-1` keeps a later switch of
    /// the policy to `compact,delete` from deleting history by age.
    pub fn specs(&self) -> Vec<(String, i32, BTreeMap<String, String>)> {
        self.specs_for(self.replication_factor.max(1))
    }

    /// The replication factor of the topics this layout creates on a cluster of `brokers`.
    pub fn replication_for(&self, brokers: usize) -> i32 {
        match self.replication_factor {
            0 => (brokers.clamp(1, 3)) as i32,
            rf => rf,
        }
    }

    /// [`TopicLayout::specs`] for replication factor `rf` (`min.insync.replicas` 2 when
    /// there are two replicas or more).
    fn specs_for(&self, rf: i32) -> Vec<(String, i32, BTreeMap<String, String>)> {
        let min_isr = rf.clamp(1, 2).to_string();
        let data = || {
            let mut m: BTreeMap<String, String> = self.topic_configs.clone();
            for (k, v) in [
                ("cleanup.policy", "compact".to_owned()),
                ("retention.ms", "-1".to_owned()),
                ("min.insync.replicas", min_isr.clone()),
                ("message.timestamp.type", "CreateTime".to_owned()),
                ("message.timestamp.before.max.ms", i64::MAX.to_string()),
            ] {
                m.insert(k.to_owned(), v);
            }
            m
        };
        // The state topic is read whole at every start (the index rebuild); the cleaner
        // only compacts rolled segments, and the default roll is a week or 1 GiB, so
        // without this a restart reads every state record of the last week, or of a bulk
        // import (10M records: 2.6 GB). A segment rolls after an hour or 16 MiB, and is
        // cleanable once a fifth of the log is dirty, unless `kafka.topic_configs` says
        // otherwise.
        let mut state = data();
        for (k, v) in [
            ("segment.ms", STATE_SEGMENT_MS.to_string()),
            ("segment.bytes", STATE_SEGMENT_BYTES.to_string()),
            ("min.cleanable.dirty.ratio", "0.2".to_owned()),
        ] {
            state.entry(k.to_owned()).or_insert(v);
        }
        vec![
            (self.state.clone(), self.partitions, state),
            (self.history.clone(), self.partitions, data()),
            (
                self.schemas.clone(),
                1,
                BTreeMap::from([
                    ("cleanup.policy".to_owned(), "compact".to_owned()),
                    ("min.insync.replicas".to_owned(), min_isr.clone()),
                ]),
            ),
            // Announcements are keyed by one key: compaction keeps the latest writer's.
            (
                self.writers.clone(),
                1,
                BTreeMap::from([
                    ("cleanup.policy".to_owned(), "compact".to_owned()),
                    ("min.insync.replicas".to_owned(), min_isr),
                ]),
            ),
        ]
    }

    /// Creates the topics that are missing and checks that existing ones have the right
    /// partition count and configs; a mismatch is [`Error::TopicMismatch`] naming every
    /// difference (nothing is changed on an existing topic).
    pub async fn ensure(&self, clients: &KafkaClients) -> Result<Vec<TopicCheck>> {
        if let Some(k) = self
            .topic_configs
            .keys()
            .find(|k| PROTECTED_CONFIGS.contains(&k.as_str()))
        {
            return Err(Error::Config(format!(
                "kafka.topic_configs may not set {k}: the ledger sets it to keep history (allowed: any other topic config, e.g. segment.ms)"
            )));
        }
        if self.partitions < 1 {
            return Err(Error::Config(format!(
                "partitions must be at least 1, got {}",
                self.partitions
            )));
        }
        let admin = clients.admin()?;
        let timeout = clients.config().request_timeout();
        let (brokers, replicas) = cluster_metadata(clients).await?;
        let existing: BTreeMap<String, i32> = replicas
            .iter()
            .map(|(t, r)| (t.clone(), r.len() as i32))
            .collect();
        let rf = self.replication_for(brokers);
        let opts = AdminOptions::new().operation_timeout(Some(timeout));
        let specs = self.specs_for(rf);
        let mut report = Vec::new();

        // The state and history topics live and die together: one without the other means
        // one was deleted, and re-creating it empty would restart versions at 1.
        match (
            existing.contains_key(&self.state),
            existing.contains_key(&self.history),
        ) {
            (true, false) => {
                return Err(Error::TopicMissing {
                    missing: self.history.clone(),
                    present: self.state.clone(),
                    advice: "the history was deleted. Restore the topic from a backup (with its records and offsets), or start the ledger on a fresh topic prefix on purpose; nothing is re-created under the existing state",
                });
            }
            (false, true) => {
                return Err(Error::TopicMissing {
                    missing: self.state.clone(),
                    present: self.history.clone(),
                    advice: "the state topic was deleted. Re-creating it empty would restart every version at 1 and let compaction overwrite history records; restore it from a backup, or start the ledger on a fresh topic prefix on purpose",
                });
            }
            _ => {}
        }
        if existing.contains_key(&self.history) && !existing.contains_key(&self.schemas) {
            return Err(Error::TopicMissing {
                missing: self.schemas.clone(),
                present: self.history.clone(),
                advice: "the schema registry's topic was deleted while history exists. Re-created empty, it would give schemas ids that history's records do not carry (and Kafka tools would decode them with the wrong schema); restore it from a backup, or start the ledger on a fresh topic prefix on purpose",
            });
        }
        let missing: Vec<_> = specs
            .iter()
            .filter(|(name, _, _)| !existing.contains_key(name))
            .collect();
        if !missing.is_empty() {
            let new_topics: Vec<NewTopic<'_>> = missing
                .iter()
                .map(|(name, partitions, configs)| {
                    let mut t = NewTopic::new(name, *partitions, TopicReplication::Fixed(rf));
                    for (k, v) in configs {
                        t = t.set(k, v);
                    }
                    t
                })
                .collect();
            let results = admin
                .create_topics(&new_topics, &opts)
                .await
                .map_err(|e| Error::kafka("create topics", e))?;
            for r in results {
                match r {
                    Ok(name) => {
                        tracing::info!(topic = %name, "created topic");
                        report.push(TopicCheck::Created(name));
                    }
                    // Another instance created it between our look and our create.
                    Err((name, Code::TopicAlreadyExists)) => report.push(TopicCheck::Matches(name)),
                    Err((name, code)) => {
                        return Err(Error::kafka(
                            format!("create topic {name}"),
                            rdkafka::error::KafkaError::AdminOp(code),
                        ));
                    }
                }
            }
        }

        for (name, partitions, configs) in specs.iter().filter(|(n, _, _)| existing.contains_key(n))
        {
            let mut differences = Vec::new();
            let actual_partitions = existing[name];
            if actual_partitions != *partitions {
                differences.push(format!(
                    "partitions is {actual_partitions}, expected {partitions}"
                ));
            }
            let described = admin
                .describe_configs([&ResourceSpecifier::Topic(name)], &opts)
                .await
                .map_err(|e| Error::kafka(format!("describe configs of {name}"), e))?;
            let resource = described
                .into_iter()
                .next()
                .ok_or_else(|| Error::Config(format!("no config returned for topic {name}")))?
                .map_err(|code| {
                    Error::kafka(
                        format!("describe configs of {name}"),
                        rdkafka::error::KafkaError::AdminOp(code),
                    )
                })?;
            let actual = resource.entry_map();
            for key in CHECKED_CONFIGS {
                let Some(expected) = configs.get(key) else {
                    continue;
                };
                let got = actual
                    .get(key)
                    .and_then(|e| e.value.clone())
                    .unwrap_or_default();
                if &got != expected {
                    differences.push(format!("{key} is {got:?}, expected {expected:?}"));
                }
            }
            if !differences.is_empty() {
                return Err(Error::TopicMismatch {
                    topic: name.clone(),
                    differences: differences.join("; "),
                });
            }
            report.push(TopicCheck::Matches(name.clone()));
        }
        Ok(report)
    }

    /// Whether every topic of the layout exists (for readiness).
    pub async fn all_exist(&self, clients: &KafkaClients) -> Result<bool> {
        let existing = partition_counts(clients).await?;
        Ok(self
            .specs()
            .iter()
            .all(|(n, _, _)| existing.contains_key(n)))
    }
}

/// Configs the ledger sets itself; `topic_configs` may not override them.
const PROTECTED_CONFIGS: [&str; 4] = [
    "cleanup.policy",
    "retention.ms",
    "message.timestamp.type",
    "message.timestamp.before.max.ms",
];

/// The state topic's default `segment.ms` (one hour): how old an uncompacted state record
/// can grow before the cleaner may remove it.
const STATE_SEGMENT_MS: i64 = 3_600_000;

/// The state topic's default `segment.bytes` (16 MiB): how much a bulk write (an import)
/// leaves uncompacted per partition before the cleaner may catch up with it.
const STATE_SEGMENT_BYTES: i64 = 16 << 20;

/// The configs whose values decide whether history is safe; others may differ.
const CHECKED_CONFIGS: [&str; 3] = ["cleanup.policy", "retention.ms", "message.timestamp.type"];

/// Partition count of every topic in the cluster.
pub(crate) async fn partition_counts(clients: &KafkaClients) -> Result<BTreeMap<String, i32>> {
    let (_, replicas) = cluster_metadata(clients).await?;
    Ok(replicas
        .into_iter()
        .map(|(t, r)| (t, r.len() as i32))
        .collect())
}

/// The cluster's broker count, and for every topic the replica count of each partition.
async fn cluster_metadata(clients: &KafkaClients) -> Result<(usize, BTreeMap<String, Vec<usize>>)> {
    let client = clients.metadata_client()?;
    let timeout = clients.config().request_timeout();
    tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        let md = client.client().fetch_metadata(None, timeout).map_err(|e| {
            // What librdkafka said about it (e.g. the authentication that failed) is
            // in its queued log lines: log them.
            client.poll(std::time::Duration::ZERO);
            Error::kafka("fetch metadata", e)
        })?;
        let topics = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() || !t.partitions().is_empty())
            .map(|t| {
                let replicas = t.partitions().iter().map(|p| p.replicas().len()).collect();
                (t.name().to_owned(), replicas)
            })
            .collect();
        Ok((md.brokers().len(), topics))
    })
    .await
    .map_err(|e| Error::Config(format!("metadata task failed: {e}")))?
}

/// Kafka's own topic of transaction states: the ledger's commits are as durable as it.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

/// What each topic the ledger's promises rest on must have, so that an acknowledged
/// write survives the loss of any one broker: (config or property, the weakest safe value).
const DURABLE: &str =
    "replication factor >= 3, min.insync.replicas >= 2, unclean.leader.election.enable=false";

/// The settings of one topic that decide whether an acknowledged write survives a
/// broker's loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDurability {
    /// The topic.
    pub topic: String,
    /// Replica count of each partition (`[0]` for a topic that does not exist).
    pub replicas: Vec<usize>,
    /// Its `min.insync.replicas`, if known.
    pub min_isr: Option<i64>,
    /// Its `unclean.leader.election.enable`, if known.
    pub unclean: Option<bool>,
}

/// The risks of losing an acknowledged write in `topics`' settings, one sentence each.
/// Pure: [`TopicLayout::durability_risks`] reads the settings.
pub fn risks_of(topics: &[TopicDurability]) -> Vec<String> {
    let mut risks = Vec::new();
    for TopicDurability {
        topic,
        replicas,
        min_isr,
        unclean,
    } in topics
    {
        let rf = replicas.iter().copied().min().unwrap_or(0);
        if rf < 3 {
            risks.push(format!(
                "{topic} has {rf} replica(s): losing {} broker(s) loses acknowledged writes (needs 3)",
                rf.max(1)
            ));
        }
        match min_isr {
            Some(n) if *n >= 2 => {}
            Some(n) => risks.push(format!(
                "{topic} has min.insync.replicas={n}: a write is acknowledged with one copy, which one broker failure loses (needs 2)"
            )),
            None => risks.push(format!("{topic}: min.insync.replicas unknown")),
        }
        if *unclean == Some(true) {
            risks.push(format!(
                "{topic} has unclean.leader.election.enable=true: a lagging replica may become leader and drop acknowledged writes"
            ));
        }
    }
    risks
}

/// Whether the ledger may start with `risks`: without any, yes; with some, only if
/// `accepted` (`kafka.accept_weak_durability`), and then each is logged as a warning;
/// otherwise [`Error::WeakDurability`] names them all.
pub fn durability_verdict(risks: &[String], accepted: bool) -> Result<()> {
    if risks.is_empty() {
        return Ok(());
    }
    if accepted {
        for r in risks {
            tracing::warn!(risk = %r, "kafka.accept_weak_durability: starting although an acknowledged write could be lost");
        }
        return Ok(());
    }
    Err(Error::WeakDurability {
        risks: risks.join("; "),
        needed: DURABLE,
    })
}

impl TopicLayout {
    /// The settings of the topics the ledger's promises rest on — state, history, the
    /// registry's, and Kafka's transaction state log — that could lose an acknowledged
    /// write ([`risks_of`]): empty when every one has replication factor 3 or more,
    /// `min.insync.replicas` 2 or more and no unclean leader election. Call it once the
    /// transactional producer exists (the transaction log is created with the first).
    pub async fn durability_risks(&self, clients: &KafkaClients) -> Result<Vec<String>> {
        let (_, replicas) = cluster_metadata(clients).await?;
        let admin = clients.admin()?;
        let opts = AdminOptions::new().operation_timeout(Some(clients.config().request_timeout()));
        let mut topics = Vec::new();
        for name in [
            self.state.as_str(),
            self.history.as_str(),
            self.schemas.as_str(),
            TRANSACTION_STATE_TOPIC,
        ] {
            let Some(r) = replicas.get(name) else {
                topics.push(TopicDurability {
                    topic: name.to_owned(),
                    replicas: vec![0],
                    min_isr: None,
                    unclean: None,
                });
                continue;
            };
            let described = admin
                .describe_configs([&ResourceSpecifier::Topic(name)], &opts)
                .await
                .map_err(|e| Error::kafka(format!("describe configs of {name}"), e))?;
            let entries = described
                .into_iter()
                .next()
                .and_then(|r| r.ok())
                .map(|r| {
                    r.entry_map()
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.value.clone()))
                        .collect::<BTreeMap<_, _>>()
                })
                .unwrap_or_default();
            let get = |k: &str| entries.get(k).cloned().flatten();
            topics.push(TopicDurability {
                topic: name.to_owned(),
                replicas: r.clone(),
                min_isr: get("min.insync.replicas").and_then(|v| v.parse().ok()),
                unclean: get("unclean.leader.election.enable").map(|v| v == "true"),
            });
        }
        Ok(risks_of(&topics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_that_could_lose_an_acknowledged_write_is_named() {
        let t = |name: &str, replicas: Vec<usize>, min_isr: Option<i64>, unclean: Option<bool>| {
            TopicDurability {
                topic: name.to_owned(),
                replicas,
                min_isr,
                unclean,
            }
        };
        assert!(risks_of(&[t("h", vec![3, 3, 3], Some(2), Some(false))]).is_empty());
        let risks = risks_of(&[
            t("h", vec![3, 1, 3], Some(2), Some(false)),
            t("s", vec![3], Some(1), None),
            t("__transaction_state", vec![3], Some(2), Some(true)),
        ]);
        assert_eq!(risks.len(), 3, "{risks:?}");
        assert!(risks[0].starts_with("h has 1 replica"), "{risks:?}");
        assert!(
            risks[1].contains("s has min.insync.replicas=1"),
            "{risks:?}"
        );
        assert!(risks[2].contains("unclean.leader.election"), "{risks:?}");
        assert!(durability_verdict(&risks, true).is_ok());
        let err = durability_verdict(&risks, false).unwrap_err().to_string();
        assert!(
            err.contains("accept_weak_durability") && err.contains("h has 1 replica"),
            "{err}"
        );
        // Replication follows the cluster unless configured.
        let mut l = layout(&[]);
        l.replication_factor = 0;
        assert_eq!(
            (
                l.replication_for(1),
                l.replication_for(3),
                l.replication_for(5)
            ),
            (1, 3, 3)
        );
        l.replication_factor = 2;
        assert_eq!(l.replication_for(5), 2);
    }

    fn layout(topic_configs: &[(&str, &str)]) -> TopicLayout {
        TopicLayout {
            state: "p.state.v1".into(),
            history: "p.history.v1".into(),
            schemas: "p._schemas".into(),
            writers: "p.writer.v1".into(),
            partitions: 6,
            replication_factor: 1,
            topic_configs: topic_configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn configs_of(layout: &TopicLayout, topic: &str) -> BTreeMap<String, String> {
        layout
            .specs()
            .into_iter()
            .find(|(name, _, _)| name == topic)
            .map(|(_, _, c)| c)
            .unwrap()
    }

    #[test]
    fn the_state_topic_rolls_hourly_unless_configured_and_history_keeps_the_default() {
        let l = layout(&[]);
        let state = configs_of(&l, "p.state.v1");
        assert_eq!(state["segment.ms"], "3600000");
        assert_eq!(state["segment.bytes"], "16777216");
        assert!(!configs_of(&l, "p.history.v1").contains_key("segment.bytes"));
        assert_eq!(state["cleanup.policy"], "compact");
        assert!(!configs_of(&l, "p.history.v1").contains_key("segment.ms"));

        let l = layout(&[("segment.ms", "60000")]);
        assert_eq!(configs_of(&l, "p.state.v1")["segment.ms"], "60000");
        assert_eq!(configs_of(&l, "p.history.v1")["segment.ms"], "60000");
    }
}
