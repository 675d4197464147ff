//! Which `serve` instance is the writer, decided by Kafka's own group coordination (no
//! lock or consensus of ours).
//!
//! Every instance on the same topics joins one consumer group, [`election_group`], on the
//! control topic [`TopicLayout::writers`], which has a single partition. The group
//! coordinator assigns that partition to exactly one live member: that member is the
//! writer. The assignor is `cooperative-sticky`, so a standby joining or leaving does not
//! move the partition away from a live writer; a writer that dies (no heartbeat for the
//! session timeout, `ledger.election_session_timeout_ms`) or leaves (graceful shutdown)
//! loses it, and the coordinator gives it to a standby.
//!
//! Being assigned the partition is not enough to write: before it creates its
//! transactional producer (whose `init_transactions` fences every earlier producer of the
//! shared transactional id), an instance has the coordinator confirm that its membership
//! is current, by committing an offset of the partition ([`Election::confirm`]): a member
//! the group has moved on from (stopped or cut off past its session) is refused. The
//! transactional fence, not the group, is what makes two writers impossible; the group
//! only keeps the instances from fencing each other back and forth.
//!
//! A writer announces itself ([`Announcement`]) on the control topic in a transaction of
//! its own producer, so only an unfenced writer's announcement commits; every instance
//! follows the topic ([`WriterDirectory`]) to know where writes go.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::kafka::{KafkaClients, LedgerContext};
use crate::topics::TopicLayout;

/// The election's consumer group for the topics under `topic_prefix`. Derived, never
/// configured, like the transactional id: every instance on the same topics is in it.
pub fn election_group(topic_prefix: &str) -> String {
    format!("fleetledger-{topic_prefix}-writer-election")
}

/// The key of every announcement: compaction keeps the latest.
const ANNOUNCEMENT_KEY: &str = "writer";

/// What a writer says of itself on the control topic once it may write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// This process: its URL and process id, unique among running instances.
    pub instance: String,
    /// Where its HTTP API is reached (`advertised_url`): writes are redirected there.
    pub url: String,
    /// When it became the writer.
    pub since: DateTime<Utc>,
}

/// The consumer context of the election: says when this member gains or loses the
/// control topic's partition.
struct ElectionContext {
    held: watch::Sender<bool>,
}

impl ClientContext for ElectionContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        LedgerContext.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        LedgerContext.error(error, reason);
    }
}

fn names_partition_zero(tpl: &TopicPartitionList) -> bool {
    tpl.elements().iter().any(|e| e.partition() == 0)
}

impl ConsumerContext for ElectionContext {
    /// A revoked (or lost) partition stops the writer before the coordinator may give it
    /// to another member.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance
            && names_partition_zero(tpl)
        {
            tracing::info!("writer election: this instance lost the writer's partition");
            self.held.send_replace(false);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) if names_partition_zero(tpl) => {
                tracing::info!(
                    "writer election: this instance was assigned the writer's partition"
                );
                self.held.send_replace(true);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "writer election: rebalance failed"),
            _ => {}
        }
    }
}

/// This instance's membership in the writer election.
#[derive(Clone)]
pub struct Election {
    consumer: Arc<StreamConsumer<ElectionContext>>,
    held: watch::Receiver<bool>,
    topic: String,
    leave: CancellationToken,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("topic", &self.topic)
            .field("held", &*self.held.borrow())
            .finish()
    }
}

impl Election {
    /// Joins the election group with a session of `session_timeout_ms` (Kafka's brokers
    /// accept 6,000 ms or more by default) and keeps the membership alive on `tracker`
    /// until [`Election::leave`], which leaves the group at once (a graceful handover).
    pub fn join(
        clients: &KafkaClients,
        layout: &TopicLayout,
        session_timeout_ms: u64,
        tracker: &TaskTracker,
    ) -> Result<Election> {
        let (held_tx, held) = watch::channel(false);
        let prefix = &clients.config().topic_prefix;
        let consumer: StreamConsumer<ElectionContext> = clients
            .group_consumer_config("election", &election_group(prefix))?
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (session_timeout_ms / 6).max(100).to_string(),
            )
            .create_with_context(ElectionContext { held: held_tx })
            .map_err(|e| Error::kafka("create the election consumer", e))?;
        consumer
            .subscribe(&[&layout.writers])
            .map_err(|e| Error::kafka(format!("subscribe to {}", layout.writers), e))?;
        let consumer = Arc::new(consumer);
        let leave = CancellationToken::new();
        let (polled, stop) = (consumer.clone(), leave.clone());
        // Polling drives the group protocol (joins, assignments, the rebalance callbacks);
        // the records themselves are the directory's business.
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    m = polled.recv() => {
                        if let Err(e) = m
                            && !matches!(e, KafkaError::PartitionEOF(_))
                        {
                            tracing::debug!(error = %e, "writer election: poll");
                        }
                    }
                }
            }
            polled.unsubscribe();
            tracing::info!("writer election: left the group");
        });
        Ok(Election {
            consumer,
            held,
            topic: layout.writers.clone(),
            leave,
        })
    }

    /// Whether the group assigns this instance the writer's partition now.
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Changes of [`Election::is_held`].
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.held.clone()
    }

    /// Whether the group coordinator confirms now that this member holds the partition in
    /// the group's current generation: an offset commit of the partition, which the
    /// coordinator refuses from a member it has moved on from.
    pub async fn confirm(&self) -> bool {
        if !self.is_held() {
            return false;
        }
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        let confirmed = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Offset(0))?;
            consumer.commit(&tpl, CommitMode::Sync)
        })
        .await;
        match confirmed {
            Ok(Ok(())) => self.is_held(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "writer election: the coordinator did not confirm this member");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "writer election: confirmation task failed");
                false
            }
        }
    }

    /// Leaves the group (at shutdown, once the writer stopped): a standby is assigned the
    /// partition without waiting for the session timeout.
    pub fn leave(&self) {
        self.leave.cancel();
    }
}

/// Writes `announcement` to the control topic in one transaction of `producer` (the
/// writer's own, just initialised): it commits only if no later writer fenced it.
pub(crate) async fn announce(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    announcement: &Announcement,
    timeout: Duration,
) -> Result<()> {
    use rdkafka::producer::{FutureRecord, Producer};
    let payload = serde_json::to_vec(announcement)
        .map_err(|e| Error::Unavailable(format!("cannot encode the announcement: {e}")))?;
    producer
        .begin_transaction()
        .map_err(|e| Error::kafka("begin the announcement", e))?;
    let sent = producer
        .send_result(
            FutureRecord::to(topic)
                .key(ANNOUNCEMENT_KEY)
                .payload(&payload)
                .partition(0),
        )
        .map_err(|(e, _)| Error::kafka("announce the writer", e))?;
    let delivered = sent
        .await
        .map_err(|_| Error::Unavailable("announcement cancelled".into()))?;
    if let Err((e, _)) = delivered {
        let p = producer.clone();
        let _ = tokio::task::spawn_blocking(move || p.abort_transaction(timeout)).await;
        return Err(Error::kafka("announce the writer", e));
    }
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.commit_transaction(timeout))
        .await
        .map_err(|e| Error::Unavailable(format!("announcement task failed: {e}")))?
        .map_err(|e| Error::kafka("commit the announcement", e))
}

/// The latest committed [`Announcement`]: who the writer is, as every instance learns it
/// from the control topic.
#[derive(Debug, Clone, Default)]
pub struct WriterDirectory {
    latest: Arc<std::sync::RwLock<Option<Announcement>>>,
}

impl WriterDirectory {
    /// Follows the control topic (read_committed, from its beginning) on `tracker` until
    /// `shutdown`.
    pub fn follow(
        clients: &KafkaClients,
        layout: &TopicLayout,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<WriterDirectory> {
        let consumer = clients.consumer("writer-directory")?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&layout.writers, 0, Offset::Beginning)
            .map_err(|e| Error::kafka("assign", e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka(format!("assign {}", layout.writers), e))?;
        let directory = WriterDirectory::default();
        let latest = directory.latest.clone();
        tracker.spawn(async move {
            loop {
                let m = tokio::select! {
                    () = shutdown.cancelled() => break,
                    m = consumer.recv() => m,
                };
                match m {
                    Ok(m) => match m.payload().map(serde_json::from_slice::<Announcement>) {
                        Some(Ok(a)) => {
                            tracing::info!(writer = %a.url, instance = %a.instance, "writer announced");
                            if let Ok(mut l) = latest.write() {
                                *l = Some(a);
                            }
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, offset = m.offset(), "unreadable writer announcement skipped"),
                        None => {}
                    },
                    Err(KafkaError::PartitionEOF(_)) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "writer directory: read");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(directory)
    }

    /// The latest writer announced, if any.
    pub fn latest(&self) -> Option<Announcement> {
        self.latest.read().ok().and_then(|l| l.clone())
    }
}
