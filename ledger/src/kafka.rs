//! The one place Kafka clients are configured. Every producer gets `acks=all`,
//! idempotence and the Java client's murmur2 partitioner; every consumer reads
//! `read_committed` and never commits offsets on its own. Nothing else in the workspace
//! builds a `ClientConfig`.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How to reach Kafka and how our topics are laid out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated.
    pub bootstrap_servers: String,
    /// Prefix of every topic name (`{prefix}.state.v1`, `{prefix}.history.v1`); tests use
    /// their own prefix to isolate themselves.
    pub topic_prefix: String,
    /// Partitions of the state and history topics (both have the same count).
    pub partitions: i32,
    /// Replication factor of topics we create; 0 (the default): 3 on a cluster of three or
    /// more brokers, else one per broker.
    pub replication_factor: i32,
    /// Start even though a topic the ledger relies on could lose an acknowledged write
    /// (replication factor under 3, `min.insync.replicas` under 2, unclean leader
    /// election): each risk is logged instead of refusing the start. The single-node
    /// local setup and the tests set it.
    pub accept_weak_durability: bool,
    /// Name of the embedded registry's compacted topic.
    pub schemas_topic: String,
    /// `client.id` prefix of every client.
    pub client_id: String,
    /// Timeout of admin and metadata requests, in milliseconds.
    pub request_timeout_ms: u64,
    /// Extra configs of the state and history topics, set when the ledger creates them
    /// (e.g. `segment.ms`, `min.cleanable.dirty.ratio`); the configs that keep history
    /// (`cleanup.policy`, `retention.ms`, `message.timestamp.*`) cannot be overridden.
    pub topic_configs: std::collections::BTreeMap<String, String>,
    /// TLS and SASL of every client (`kafka.security.*`); plaintext by default.
    pub security: crate::kafka_security::KafkaSecurity,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic_prefix: "fleet".into(),
            partitions: 6,
            replication_factor: 0,
            accept_weak_durability: false,
            schemas_topic: "_schemas".into(),
            client_id: "fleetledger".into(),
            request_timeout_ms: 10_000,
            topic_configs: std::collections::BTreeMap::new(),
            security: crate::kafka_security::KafkaSecurity::default(),
        }
    }
}

impl KafkaConfig {
    /// The timeout of admin and metadata requests.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// The client context of our consumers and admin clients: librdkafka's global errors (a
/// broker down, a failed TLS handshake or SASL authentication) are logged through
/// `tracing`, except end-of-partition, which our readers ask for and expect.
#[derive(Debug, Clone, Copy, Default)]
pub struct LedgerContext;

impl ClientContext for LedgerContext {
    /// librdkafka's log lines (warnings and worse, `log_level` 4) through `tracing`: a
    /// failed TLS handshake or SASL authentication is only said here.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(facility = fac, "librdkafka: {message}")
            }
            L::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
            L::Notice | L::Info => tracing::info!(facility = fac, "librdkafka: {message}"),
            L::Debug => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::error!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for LedgerContext {}

impl rdkafka::producer::ProducerContext for LedgerContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// The consumer every reader of ours uses.
pub type LedgerConsumer = StreamConsumer<LedgerContext>;

/// Builds Kafka clients from one [`KafkaConfig`]. Clones share one pool of idle seeking
/// consumers ([`KafkaClients::pooled_seeker`]).
#[derive(Debug, Clone)]
pub struct KafkaClients {
    config: KafkaConfig,
    seekers: Arc<SeekerPool>,
}

/// Idle seeking consumers, unassigned, kept for the next history read: starting a
/// consumer (threads, connection, metadata) costs about 100 ms, more than the reads of a
/// small cluster's history.
#[derive(Default)]
struct SeekerPool(std::sync::Mutex<Vec<LedgerConsumer>>);

impl std::fmt::Debug for SeekerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.0.lock().map(|p| p.len()).unwrap_or(0);
        f.debug_struct("SeekerPool").field("idle", &idle).finish()
    }
}

/// Idle seeking consumers kept at most.
const IDLE_SEEKERS: usize = RANGE_READERS;

/// A seeking consumer taken from the pool; [`PooledSeeker::release`] gives it back, and
/// dropping it without (after an error) closes it.
pub(crate) struct PooledSeeker<'a> {
    consumer: Option<LedgerConsumer>,
    pool: &'a SeekerPool,
}

impl PooledSeeker<'_> {
    /// Unassigns the consumer (its prefetched messages are dropped) and keeps it for the
    /// next read, unless the pool is full.
    pub(crate) fn release(mut self) {
        if let Some(c) = self.consumer.take()
            && c.unassign().is_ok()
            && let Ok(mut idle) = self.pool.0.lock()
            && idle.len() < IDLE_SEEKERS
        {
            idle.push(c);
        }
    }
}

impl std::ops::Deref for PooledSeeker<'_> {
    type Target = LedgerConsumer;
    fn deref(&self) -> &LedgerConsumer {
        // Only `release` takes the consumer, and it consumes the guard.
        self.consumer
            .as_ref()
            .expect("a pooled seeker holds its consumer")
    }
}

impl KafkaClients {
    /// Clients for `config`.
    pub fn new(config: KafkaConfig) -> Self {
        KafkaClients {
            config,
            seekers: Arc::default(),
        }
    }

    /// A [`KafkaClients::seeking_consumer`] of `role` from the pool of idle ones, or a new
    /// one. One role uses the pool (the history reader).
    pub(crate) fn pooled_seeker(&self, role: &str) -> Result<PooledSeeker<'_>> {
        let idle = self.seekers.0.lock().ok().and_then(|mut p| p.pop());
        let consumer = match idle {
            Some(c) => c,
            None => self.seeking_consumer(role)?,
        };
        Ok(PooledSeeker {
            consumer: Some(consumer),
            pool: &self.seekers,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Settings every client shares, its security included (read again for each client,
    /// so a rotated password file is picked up by the next client).
    fn base(&self, role: &str) -> Result<ClientConfig> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.config.bootstrap_servers)
            .set("client.id", format!("{}-{role}", self.config.client_id))
            .set("socket.keepalive.enable", "true")
            // A broker that comes back is reconnected to within a second (librdkafka's
            // back-off otherwise grows to 10 s during an outage, and the writer's election
            // and producer wait it out before writes resume).
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000")
            .set("log_level", "4");
        for (key, value) in self.config.security.client_settings()? {
            c.set(key, value);
        }
        Ok(c)
    }

    fn producer_config(&self, role: &str) -> Result<ClientConfig> {
        let mut c = self.base(role)?;
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("compression.type", "none")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "30000");
        Ok(c)
    }

    /// An idempotent, non-transactional producer (`acks=all`, murmur2 partitioner).
    pub fn producer(&self, role: &str) -> Result<FutureProducer> {
        self.producer_config(role)?
            .create()
            .map_err(|e| Error::kafka("create producer", e))
    }

    /// A transactional producer with the stable `transactional_id`: a second producer with
    /// the same id fences this one. The caller must `init_transactions` before use.
    pub fn transactional_producer(
        &self,
        role: &str,
        transactional_id: &str,
    ) -> Result<FutureProducer> {
        self.producer_config(role)?
            .set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", "60000")
            .create()
            .map_err(|e| Error::kafka("create transactional producer", e))
    }

    fn consumer_config(&self, role: &str) -> Result<ClientConfig> {
        let mut c = self.base(role)?;
        c.set("group.id", format!("{}-{role}", self.config.client_id))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "100")
            // librdkafka pauses fetching for this long whenever its prefetch queue is full
            // (default 1000 ms): a reader that keeps up with its queue would starve for up
            // to a second at a time (bench/REPORT.md has what that cost).
            .set("fetch.queue.backoff.ms", "10");
        Ok(c)
    }

    /// The settings of a consumer in the consumer group `group` (the writer election),
    /// otherwise those of [`KafkaClients::consumer`].
    pub(crate) fn group_consumer_config(&self, role: &str, group: &str) -> Result<ClientConfig> {
        let mut c = self.consumer_config(role)?;
        c.set("group.id", group);
        Ok(c)
    }

    /// A `read_committed` consumer that never commits offsets by itself: callers assign
    /// partitions and keep their own offsets.
    pub fn consumer(&self, role: &str) -> Result<LedgerConsumer> {
        self.consumer_config(role)?
            .create_with_context(LedgerContext)
            .map_err(|e| Error::kafka("create consumer", e))
    }

    /// A [`KafkaClients::consumer`] for a long-running reader that applies what it reads
    /// (the projector): the reader, not the fetch, is its bottleneck, so its prefetch
    /// queue is bounded at 16 MiB (librdkafka's default, 64 MiB, sits in the process's
    /// memory during every catch-up).
    pub fn applying_consumer(&self, role: &str) -> Result<LedgerConsumer> {
        self.consumer_config(role)?
            .set("queued.max.messages.kbytes", "16384")
            .create_with_context(LedgerContext)
            .map_err(|e| Error::kafka("create consumer", e))
    }

    /// A [`KafkaClients::consumer`] for reading a few scattered offsets of one partition
    /// (one cluster's history): small fetches (64 KiB per partition, about one
    /// transaction's record batch) and a shallow prefetch queue, so a seek does not pull
    /// megabytes it will not use.
    pub fn seeking_consumer(&self, role: &str) -> Result<LedgerConsumer> {
        self.consumer_config(role)?
            .set("fetch.wait.max.ms", "10")
            .set("max.partition.fetch.bytes", "65536")
            .set("queued.min.messages", "1000")
            .set("queued.max.messages.kbytes", "1024")
            .create_with_context(LedgerContext)
            .map_err(|e| Error::kafka("create consumer", e))
    }

    /// A client for cluster metadata. Unlike an admin client, its events can be polled
    /// ([`BaseProducer::poll`](rdkafka::producer::BaseProducer::poll)), which hands
    /// librdkafka's log lines (a failed TLS handshake, a failed SASL authentication) to
    /// [`LedgerContext`] after a failed request.
    pub fn metadata_client(&self) -> Result<rdkafka::producer::BaseProducer<LedgerContext>> {
        self.base("metadata")?
            .create_with_context(LedgerContext)
            .map_err(|e| Error::kafka("create metadata client", e))
    }

    /// An admin client.
    pub fn admin(&self) -> Result<AdminClient<LedgerContext>> {
        self.base("admin")?
            .create_with_context(LedgerContext)
            .map_err(|e| Error::kafka("create admin client", e))
    }
}

/// Reads one partition of `topic` from the beginning to its end (read_committed: its last
/// stable offset), calling `f` with every message in order, tombstones included. An empty
/// partition calls nothing. A read that stalls for the request timeout is
/// [`Error::Unavailable`]; an error returned by `f` stops the read and is returned.
pub(crate) async fn read_partition_to_end(
    clients: &KafkaClients,
    topic: &str,
    partition: i32,
    role: &str,
    mut f: impl FnMut(&BorrowedMessage<'_>) -> Result<()>,
) -> Result<()> {
    let consumer = clients.consumer(role)?;
    let timeout = clients.config().request_timeout();
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(|e| Error::kafka(format!("watermarks of {topic}/{partition}"), e))?;
    if high <= low {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(|e| Error::kafka("assign", e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| Error::kafka(format!("assign {topic}"), e))?;
    loop {
        match tokio::time::timeout(timeout, consumer.recv()).await {
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "reading {topic}/{partition} timed out"
                )));
            }
            Ok(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
            Ok(Err(e)) => return Err(Error::kafka(format!("read {topic}/{partition}"), e)),
            Ok(Ok(m)) => f(&m)?,
        }
    }
}

/// Reads the offset ranges `[start, end)` (ascending, not overlapping; `end = i64::MAX`
/// reads to the partition's end) of one partition, seeking from range to range, and keeps
/// what `keep` makes of each message inside a range, with its offset, in offset order.
/// Offsets without a committed record (transaction markers, aborted or compacted records)
/// are simply not seen. Returns how many messages were fetched in all (inside and between
/// ranges' wanted offsets), and what was kept.
///
/// Each range costs a fetch round trip; a cluster whose records are spread over a long
/// history has hundreds. Many ranges are split into up to [`RANGE_READERS`] contiguous
/// shares, each read by a consumer of its own at the same time.
pub(crate) async fn read_partition_ranges<T>(
    clients: &KafkaClients,
    topic: &str,
    partition: i32,
    role: &str,
    ranges: &[(i64, i64)],
    keep: impl Fn(&BorrowedMessage<'_>) -> Option<T> + Sync,
) -> Result<(u64, Vec<(i64, T)>)> {
    if ranges.is_empty() {
        return Ok((0, Vec::new()));
    }
    let readers = RANGE_READERS.min(ranges.len().div_ceil(RANGES_PER_READER));
    let share = ranges.len().div_ceil(readers.max(1));
    let reads = ranges
        .chunks(share)
        .map(|chunk| read_ranges(clients, topic, partition, role, chunk, &keep));
    let mut seen = 0;
    let mut kept = Vec::new();
    // The shares are in offset order: so is their concatenation.
    for (n, share) in futures::future::try_join_all(reads).await? {
        seen += n;
        kept.extend(share);
    }
    Ok((seen, kept))
}

/// Consumers [`read_partition_ranges`] uses at most for one read.
pub const RANGE_READERS: usize = 4;

/// Ranges a reader of [`read_partition_ranges`] takes at least before another is added:
/// a consumer costs more to start than a few round trips.
const RANGES_PER_READER: usize = 16;

/// One consumer's share of [`read_partition_ranges`].
async fn read_ranges<T>(
    clients: &KafkaClients,
    topic: &str,
    partition: i32,
    role: &str,
    ranges: &[(i64, i64)],
    keep: &(impl Fn(&BorrowedMessage<'_>) -> Option<T> + Sync),
) -> Result<(u64, Vec<(i64, T)>)> {
    let consumer = clients.pooled_seeker(role)?;
    let timeout = clients.config().request_timeout();
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(|e| Error::kafka(format!("watermarks of {topic}/{partition}"), e))?;
    let mut seen = 0u64;
    let mut kept = Vec::new();
    for &(start, end) in ranges {
        let (start, end) = (start.max(low), end.min(high));
        if start >= end {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(|e| Error::kafka("assign", e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka(format!("assign {topic}"), e))?;
        loop {
            match tokio::time::timeout(timeout, consumer.recv()).await {
                Err(_) => {
                    return Err(Error::Unavailable(format!(
                        "reading {topic}/{partition} at {start} timed out"
                    )));
                }
                Ok(Err(KafkaError::PartitionEOF(_))) => break,
                Ok(Err(e)) => return Err(Error::kafka(format!("read {topic}/{partition}"), e)),
                Ok(Ok(m)) => {
                    // A message fetched before the seek (or, by a pooled consumer, for
                    // an earlier read): not ours.
                    if m.offset() < start || m.partition() != partition || m.topic() != topic {
                        continue;
                    }
                    seen += 1;
                    if m.offset() >= end {
                        break;
                    }
                    if let Some(t) = keep(&m) {
                        kept.push((m.offset(), t));
                    }
                    if m.offset() + 1 >= end {
                        break;
                    }
                }
            }
        }
    }
    consumer.release();
    Ok((seen, kept))
}
