//! The append path: validate → authorise → idempotency → optimistic concurrency → group
//! commit of the state and history records in one Kafka transaction.
//!
//! One writer task owns the transactional producer. Concurrent [`Ledger::append`] calls
//! queue to it; it takes up to `batch_max` of them (waiting at most `linger` for more),
//! assigns versions and hashes, writes every history record and then every state record in
//! one transaction, and answers each caller only after the commit. An aborted transaction
//! answers [`Error::Unavailable`] to all its callers and changes nothing; a fenced
//! producer answers [`Error::Fenced`] from then on; any other fatal producer error
//! re-creates the producer and rebuilds the index from the state topic before accepting
//! more, so a commit whose outcome was unknown can never lead to a duplicate version.
//!
//! Idempotency window: the last `idempotency_window` request ids per cluster+facet (default
//! 32). They travel in the `fleetledger.recent` header of each state record, so they
//! survive a restart: the index is rebuilt from the compacted state topic alone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetledger_schemas::{Facet, FacetState, RecordCodec, RecordMeta, StateRecord};
use rdkafka::Message;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::clock::Clock;
use crate::cluster_history::{ClusterHistory, HistoryEntry, RecoveryPlan};
use crate::error::{Error, Result};
use crate::hash_chain::{body_digest, canonical_state, record_hash_of_canonical};
use crate::kafka::{KafkaClients, read_partition_ranges, read_partition_to_end};
use crate::partitioner::partition_for;
use crate::principals::{IMPORT, Ownership, RECOVERY};
use crate::topics::TopicLayout;

const RECENT_HEADER: &str = "fleetledger.recent";

/// Tuning of the append path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Stable `transactional.id` of the writer; a second instance with the same id fences
    /// the first. Empty: `fleetledger-{topic_prefix}-writer`.
    pub transactional_id: String,
    /// Most changes per transaction.
    pub batch_max: usize,
    /// Longest wait for more changes before a transaction starts, in milliseconds.
    pub linger_ms: u64,
    /// Request ids remembered per cluster+facet for idempotency.
    pub idempotency_window: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            transactional_id: String::new(),
            batch_max: 1000,
            linger_ms: 2,
            idempotency_window: 32,
        }
    }
}

/// One change to append.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// The cluster (validated by the caller with `validate_cluster_id`).
    pub cluster_id: String,
    /// The facet's full new state (validated).
    pub state: FacetState,
    /// The authenticated principal.
    pub principal: String,
    /// `If-Match`: the version the caller believes is current (0: must not exist).
    pub expected_version: Option<i64>,
    /// Idempotency key; a fresh one is generated when absent.
    pub request_id: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Original time, only for the `import` principal.
    pub ts: Option<DateTime<Utc>>,
}

/// The answer to an accepted change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// Cluster.
    pub cluster_id: String,
    /// Facet.
    pub facet: Facet,
    /// The new version.
    pub version: i64,
    /// The new record's hash.
    pub hash: String,
    /// Partition of the cluster in both topics.
    pub partition: i32,
    /// Offset of the record in the history topic.
    pub offset: i64,
    /// The record's time.
    pub ts: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecentRequest {
    request_id: String,
    digest: String,
    result: Appended,
}

/// The latest accepted record of one cluster+facet.
#[derive(Debug, Clone)]
pub struct Head {
    /// The record.
    pub record: StateRecord,
    /// Where its history copy is.
    pub appended: Appended,
    recent: VecDeque<RecentRequest>,
}

type Key = (String, Facet);

#[derive(Debug, Default)]
struct Index {
    heads: HashMap<Key, Head>,
    /// Cluster → the latest `ts` of any of its facets: a live append's time never goes
    /// below it.
    latest_ts: HashMap<String, DateTime<Utc>>,
}

impl Index {
    /// Records that `cluster_id` has a record at `ts`.
    fn saw(&mut self, cluster_id: &str, ts: DateTime<Utc>) {
        match self.latest_ts.get_mut(cluster_id) {
            Some(t) => *t = (*t).max(ts),
            None => {
                self.latest_ts.insert(cluster_id.to_owned(), ts);
            }
        }
    }
}

struct Pending {
    request: AppendRequest,
    reply: oneshot::Sender<Result<Appended>>,
}

/// Everything [`Ledger::open`] needs.
#[derive(Debug, Clone)]
pub struct LedgerSetup {
    /// Kafka clients.
    pub clients: KafkaClients,
    /// The topics.
    pub layout: TopicLayout,
    /// Encodes and decodes records.
    pub codec: Arc<RecordCodec>,
    /// Who owns which facet.
    pub ownership: Ownership,
    /// Source of `ts`.
    pub clock: Arc<dyn Clock>,
    /// Batching and idempotency settings.
    pub config: LedgerConfig,
}

/// The append path and the in-memory index of the latest state.
#[derive(Debug, Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Pending>,
    index: Arc<RwLock<Index>>,
    fenced: Arc<AtomicBool>,
    ownership: Arc<Ownership>,
    layout: TopicLayout,
    clients: KafkaClients,
    codec: Arc<RecordCodec>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("request", &self.request)
            .finish()
    }
}

impl Ledger {
    /// Starts the writer: creates the transactional producer (fencing any earlier instance
    /// with the same id), then rebuilds the index from the state topic. The writer runs on
    /// `tracker` until `shutdown`, finishing the changes already queued.
    pub async fn open(
        setup: LedgerSetup,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Ledger> {
        let LedgerSetup {
            clients,
            layout,
            codec,
            ownership,
            clock,
            config,
        } = setup;
        let txn_id = if config.transactional_id.is_empty() {
            format!("fleetledger-{}-writer", clients.config().topic_prefix)
        } else {
            config.transactional_id.clone()
        };
        let producer = new_transactional_producer(&clients, &txn_id).await?;
        let index = Arc::new(RwLock::new(rebuild_index(&clients, &layout, &codec).await?));
        let (tx, rx) = mpsc::channel(config.batch_max.max(1) * 4);
        let fenced = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            producer,
            txn_id,
            clients: clients.clone(),
            layout: layout.clone(),
            codec: codec.clone(),
            clock,
            config,
            index: index.clone(),
            fenced: fenced.clone(),
        };
        tracker.spawn(writer.run(rx, shutdown));
        Ok(Ledger {
            tx,
            index,
            fenced,
            ownership: Arc::new(ownership),
            layout,
            clients,
            codec,
        })
    }

    /// The ownership in force.
    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    /// Appends one change. Returns only after its transaction committed; refuses with
    /// [`Error::Forbidden`], [`Error::Conflict`], [`Error::IdempotencyMismatch`],
    /// [`Error::TimeBackwards`] (nothing written), or [`Error::Unavailable`] /
    /// [`Error::Fenced`] (nothing written; retry later or elsewhere). A repeated request id
    /// with the same body returns the original result.
    pub async fn append(&self, request: AppendRequest) -> Result<Appended> {
        if request.ts.is_some() && request.principal != IMPORT {
            return Err(Error::Config(format!(
                "only the {IMPORT} principal may set ts, not {}",
                request.principal
            )));
        }
        self.submit(request).await
    }

    /// Appends one change of imported history: like [`Ledger::append`], but `ts` (the
    /// original time) is kept and `principal` (the original writer, who must own the facet)
    /// is recorded as the writer. Only the import path, authorised as the `import`
    /// principal, calls this; times still must not go backwards per cluster+facet.
    pub async fn import(&self, request: AppendRequest) -> Result<Appended> {
        self.submit(request).await
    }

    async fn submit(&self, request: AppendRequest) -> Result<Appended> {
        let facet = request.state.facet();
        if !self.ownership.may_write(&request.principal, facet) {
            return Err(Error::Forbidden {
                principal: request.principal,
                facet,
                owner: self.ownership.owner(facet).to_owned(),
            });
        }
        if self.fenced.load(Ordering::Acquire) {
            return Err(Error::Fenced);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { request, reply })
            .await
            .map_err(|_| Error::Unavailable("the writer is shutting down".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("the writer stopped before answering".into()))?
    }

    /// The latest record of every facet of `cluster_id` (read-your-writes: an append that
    /// returned is visible here).
    pub async fn current(&self, cluster_id: &str) -> BTreeMap<Facet, Head> {
        let idx = self.index.read().await;
        Facet::ALL
            .into_iter()
            .filter_map(|f| {
                idx.heads
                    .get(&(cluster_id.to_owned(), f))
                    .map(|h| (f, h.clone()))
            })
            .collect()
    }

    /// The partition of `cluster_id` in both topics.
    pub fn partition_of(&self, cluster_id: &str) -> i32 {
        partition_for(cluster_id, self.layout.partitions)
    }

    /// Whether this instance was fenced.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Every accepted record of `cluster_id` in commit order. Reads only the cluster's
    /// partition of the history topic, and of it only what `hint` does not rule out: the
    /// offsets it lists below `indexed_to` (fetched by seeking, nearby offsets in one
    /// read) and everything from `indexed_to` to the end. Without a hint the whole
    /// partition is read. Records of other clusters are dropped by key before decoding.
    ///
    /// Read-your-writes: a transaction's records become readable (`read_committed`) a few
    /// milliseconds after its commit returned, when the broker has written its markers; if
    /// the history read lacks a version this ledger has committed, it is read again (every
    /// 20 ms, for at most 2 s).
    pub async fn history(
        &self,
        cluster_id: &str,
        hint: Option<&HistoryHint>,
    ) -> Result<ClusterHistory> {
        let heads: Vec<(Facet, i64)> = self
            .current(cluster_id)
            .await
            .into_iter()
            .map(|(f, h)| (f, h.record.meta.version))
            .collect();
        let mut attempt = 0;
        loop {
            let history = self.read_history(cluster_id, hint).await?;
            let complete = heads.iter().all(|(facet, version)| {
                history
                    .entries()
                    .iter()
                    .any(|e| e.record.facet() == *facet && e.record.meta.version >= *version)
            });
            attempt += 1;
            if complete || attempt >= 100 {
                return Ok(history);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn read_history(
        &self,
        cluster_id: &str,
        hint: Option<&HistoryHint>,
    ) -> Result<ClusterHistory> {
        let partition = partition_for(cluster_id, self.layout.partitions);
        let ranges = hint.map_or_else(|| vec![(0, i64::MAX)], HistoryHint::ranges);
        let prefix = format!("{cluster_id}/");
        let mut out = Vec::new();
        let fetched = read_partition_ranges(
            &self.clients,
            &self.layout.history,
            partition,
            "history-reader",
            &ranges,
            |m| {
                if let (Some(key), Some(payload)) = (m.key(), m.payload())
                    && key.starts_with(prefix.as_bytes())
                {
                    out.push((payload.to_vec(), m.offset()));
                }
                Ok(())
            },
        )
        .await?;
        tracing::debug!(
            cluster_id,
            partition,
            ranges = ranges.len(),
            fetched,
            records = out.len(),
            "history read"
        );
        let mut entries = Vec::with_capacity(out.len());
        for (bytes, offset) in out {
            let record = self
                .codec
                .decode(&bytes)
                .await
                .map_err(|e| Error::Corrupt {
                    topic: self.layout.history.clone(),
                    partition,
                    offset,
                    message: e.to_string(),
                })?;
            entries.push(HistoryEntry {
                record,
                partition,
                offset,
            });
        }
        Ok(ClusterHistory::new(cluster_id, entries))
    }

    /// Appends the restored states of `plan` through the normal path as the `recovery`
    /// principal, each with `If-Match` of the version the plan saw (a concurrent change
    /// makes it a [`Error::Conflict`]) and the plan's reason. Facets whose state already
    /// equals the restored one are skipped; the logical facet is written last. The request
    /// ids name the source and the current version, so a retried recovery cannot write
    /// twice.
    pub async fn recover(&self, plan: &RecoveryPlan) -> Result<Vec<Appended>> {
        let mut written = Vec::new();
        for f in plan.facets.iter().filter(|f| !f.unchanged) {
            let appended = self
                .append(AppendRequest {
                    cluster_id: plan.cluster_id.clone(),
                    state: f.state.clone(),
                    principal: RECOVERY.to_owned(),
                    expected_version: Some(f.current_version),
                    request_id: Some(format!(
                        "recover-{}-v{}-at-v{}",
                        f.facet, f.source_version, f.current_version
                    )),
                    reason: Some(plan.reason.clone()),
                    ts: None,
                })
                .await?;
            written.push(appended);
        }
        Ok(written)
    }
}

/// What an index (the `audit_log` projection) knows about where one cluster's records
/// are in its history partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryHint {
    /// Offsets of the cluster's records below `indexed_to`, ascending.
    pub offsets: Vec<i64>,
    /// Every record of the partition below this offset was indexed; records at or after it
    /// are found by reading on to the end of the partition.
    pub indexed_to: i64,
}

impl HistoryHint {
    /// Offsets closer than this are read in one range rather than with a seek each: a seek
    /// costs a fetch round trip, about the time of reading this many small records.
    const GAP: i64 = 200;

    /// The offset ranges to read: runs of nearby indexed offsets, then the unindexed tail.
    fn ranges(&self) -> Vec<(i64, i64)> {
        let mut ranges: Vec<(i64, i64)> = Vec::new();
        for &o in self.offsets.iter().filter(|o| **o < self.indexed_to) {
            match ranges.last_mut() {
                Some((_, end)) if o < *end + Self::GAP => *end = (*end).max(o + 1),
                _ => ranges.push((o, o + 1)),
            }
        }
        match ranges.last_mut() {
            Some((_, end)) if self.indexed_to < *end + Self::GAP => *end = i64::MAX,
            _ => ranges.push((self.indexed_to, i64::MAX)),
        }
        ranges
    }
}

async fn new_transactional_producer(
    clients: &KafkaClients,
    txn_id: &str,
) -> Result<FutureProducer> {
    let producer = clients.transactional_producer("writer", txn_id)?;
    let p = producer.clone();
    let timeout = clients.config().request_timeout() * 3;
    tokio::task::spawn_blocking(move || p.init_transactions(timeout))
        .await
        .map_err(|e| Error::Unavailable(format!("init task failed: {e}")))?
        .map_err(|e| Error::kafka("init transactions", e))?;
    Ok(producer)
}

/// Rebuilds the index from the compacted state topic: the highest version of every
/// cluster+facet, with its recent request ids.
/// A state record as read: payload, recent-requests header, offset.
type RawState = (Vec<u8>, Option<Vec<u8>>, i64);

async fn rebuild_index(
    clients: &KafkaClients,
    layout: &TopicLayout,
    codec: &RecordCodec,
) -> Result<Index> {
    let mut index = Index::default();
    for partition in 0..layout.partitions {
        // The state topic is keyed by cluster/facet and written by one writer at a time,
        // so the last record of a key in its partition is its head: keep only that one's
        // bytes while reading (reusing the buffers), and decode one record per head, not
        // one per change the topic still holds before compaction.
        let mut latest: HashMap<Vec<u8>, RawState> = HashMap::new();
        let mut unkeyed = Vec::new();
        read_partition_to_end(clients, &layout.state, partition, "index-rebuild", |m| {
            if let Some(payload) = m.payload() {
                let recent = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == RECENT_HEADER)
                        .and_then(|h| h.value)
                });
                match m.key() {
                    Some(key) => match latest.get_mut(key) {
                        Some((p, r, o)) => {
                            p.clear();
                            p.extend_from_slice(payload);
                            *r = recent.map(<[u8]>::to_vec);
                            *o = m.offset();
                        }
                        None => {
                            latest.insert(
                                key.to_vec(),
                                (payload.to_vec(), recent.map(<[u8]>::to_vec), m.offset()),
                            );
                        }
                    },
                    None => {
                        unkeyed.push((payload.to_vec(), recent.map(<[u8]>::to_vec), m.offset()))
                    }
                }
            }
            Ok(())
        })
        .await?;
        let mut raw: Vec<_> = latest.into_values().chain(unkeyed).collect();
        raw.sort_unstable_by_key(|(_, _, offset)| *offset);
        for (payload, recent, offset) in raw {
            let record = codec.decode(&payload).await.map_err(|e| Error::Corrupt {
                topic: layout.state.clone(),
                partition,
                offset,
                message: e.to_string(),
            })?;
            let recent: VecDeque<RecentRequest> = recent
                .and_then(|r| serde_json::from_slice(&r).ok())
                .unwrap_or_default();
            let key = (record.meta.cluster_id.clone(), record.facet());
            let appended = recent
                .iter()
                .rev()
                .find(|r| r.result.version == record.meta.version)
                .map(|r| r.result.clone())
                .unwrap_or_else(|| Appended {
                    cluster_id: record.meta.cluster_id.clone(),
                    facet: record.facet(),
                    version: record.meta.version,
                    hash: record.meta.hash.clone(),
                    partition,
                    offset: -1,
                    ts: record.meta.ts,
                });
            let newer = index
                .heads
                .get(&key)
                .is_none_or(|h| h.record.meta.version < record.meta.version);
            index.saw(&key.0, record.meta.ts);
            if newer {
                index.heads.insert(
                    key,
                    Head {
                        record,
                        appended,
                        recent,
                    },
                );
            }
        }
    }
    tracing::info!(
        heads = index.heads.len(),
        "index rebuilt from the state topic"
    );
    Ok(index)
}

struct Writer {
    producer: FutureProducer,
    txn_id: String,
    clients: KafkaClients,
    layout: TopicLayout,
    codec: Arc<RecordCodec>,
    clock: Arc<dyn Clock>,
    config: LedgerConfig,
    index: Arc<RwLock<Index>>,
    fenced: Arc<AtomicBool>,
}

/// What a transaction wrote: history offsets in change order, and the idempotency window
/// of every key as its last state record carries it.
#[derive(Default)]
struct Written {
    offsets: Vec<i64>,
    recents: HashMap<Key, VecDeque<RecentRequest>>,
}

/// A change that passed every check and waits for its transaction.
struct Accepted {
    reply_to: Vec<oneshot::Sender<Result<Appended>>>,
    /// Whether the client gave the idempotency key (only those enter the window: a
    /// generated key names a version, so no retry could ever repeat it).
    keyed: bool,
    request_id: String,
    digest: String,
    record: StateRecord,
    payload: Vec<u8>,
    partition: i32,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Pending>, shutdown: CancellationToken) {
        let linger = Duration::from_millis(self.config.linger_ms);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = rx.recv() => match p { Some(p) => p, None => break },
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < self.config.batch_max {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    _ => break,
                }
            }
            self.process(batch).await;
        }
        // Finish what callers already queued, then stop.
        rx.close();
        let mut rest = Vec::new();
        while let Ok(p) = rx.try_recv() {
            rest.push(p);
        }
        if !rest.is_empty() {
            self.process(rest).await;
        }
        tracing::info!("ledger writer stopped");
    }

    async fn process(&mut self, batch: Vec<Pending>) {
        let span = tracing::info_span!("transaction", changes = batch.len());
        async {
            if self.fenced.load(Ordering::Acquire) {
                for p in batch {
                    let _ = p.reply.send(Err(Error::Fenced));
                }
                return;
            }
            let accepted = self.check(batch).await;
            if accepted.is_empty() {
                return;
            }
            match self.commit(&accepted).await {
                Ok(written) => self.publish(accepted, written).await,
                Err(e) => {
                    let text = e.to_string();
                    tracing::warn!(error = %text, "transaction failed; nothing written");
                    for a in accepted {
                        for r in a.reply_to {
                            let err = if self.fenced.load(Ordering::Acquire) {
                                Error::Fenced
                            } else {
                                Error::Unavailable(text.clone())
                            };
                            let _ = r.send(Err(err));
                        }
                    }
                    if !self.fenced.load(Ordering::Acquire) {
                        self.recover_producer().await;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Idempotency, concurrency, versions, hashes and encoding for every change of the
    /// batch, in arrival order; refused changes are answered at once.
    async fn check(&self, batch: Vec<Pending>) -> Vec<Accepted> {
        let index = self.index.read().await;
        let mut accepted: Vec<Accepted> = Vec::new();
        // Per key: (version, hash, ts) after the changes of this batch so far.
        let mut overlay: HashMap<Key, (i64, String, DateTime<Utc>)> = HashMap::new();
        // Per cluster: the latest `ts` of any facet after the changes of this batch so far.
        let mut cluster_ts: HashMap<String, DateTime<Utc>> = HashMap::new();
        // Keyed changes accepted so far: (key, request id) → index in `accepted`, so a
        // repeat within the batch is found without scanning it.
        let mut keyed_in_batch: HashMap<(Key, String), usize> = HashMap::new();
        for Pending { request, reply } in batch {
            let facet = request.state.facet();
            let key = (request.cluster_id.clone(), facet);
            let head = index.heads.get(&key);
            // The state's canonical JSON, hashed into the record and (for a keyed
            // request, whose retries must be recognised) into the body digest.
            let canonical = canonical_state(&request.state);
            let keyed = request.request_id.is_some();
            let digest = if keyed {
                body_digest(&canonical, request.reason.as_deref())
            } else {
                String::new()
            };
            if let Some(rid) = &request.request_id {
                let earlier = head.and_then(|h| h.recent.iter().find(|r| &r.request_id == rid));
                if let Some(e) = earlier {
                    let answer = if e.digest == digest {
                        Ok(e.result.clone())
                    } else {
                        Err(idem_mismatch(&key, rid))
                    };
                    let _ = reply.send(answer);
                    continue;
                }
                if let Some(a) = keyed_in_batch
                    .get(&(key.clone(), rid.clone()))
                    .map(|&i| &mut accepted[i])
                {
                    if a.digest == digest {
                        a.reply_to.push(reply);
                    } else {
                        let _ = reply.send(Err(idem_mismatch(&key, rid)));
                    }
                    continue;
                }
            }
            let (cur_version, cur_hash, cur_ts) = overlay.get(&key).cloned().unwrap_or_else(|| {
                head.map_or((0, String::new(), DateTime::<Utc>::MIN_UTC), |h| {
                    (
                        h.record.meta.version,
                        h.record.meta.hash.clone(),
                        h.record.meta.ts,
                    )
                })
            });
            if let Some(expected) = request.expected_version.filter(|e| *e != cur_version) {
                let _ = reply.send(Err(Error::Conflict {
                    cluster_id: key.0.clone(),
                    facet,
                    expected,
                    current: cur_version,
                }));
                continue;
            }
            let ts = match request.ts {
                Some(ts) if ts < cur_ts => {
                    let _ = reply.send(Err(Error::TimeBackwards {
                        cluster_id: key.0.clone(),
                        facet,
                        ts: ts.to_rfc3339(),
                        current: cur_ts.to_rfc3339(),
                    }));
                    continue;
                }
                Some(ts) => ts,
                // The wall clock may step back (or another instance's clock be behind);
                // a cluster's time never does, across all its facets.
                None => {
                    let floor = cluster_ts
                        .get(&key.0)
                        .or_else(|| index.latest_ts.get(&key.0))
                        .copied()
                        .unwrap_or(DateTime::<Utc>::MIN_UTC);
                    self.clock.now().max(floor).max(cur_ts)
                }
            };
            let ts = DateTime::from_timestamp_millis(ts.timestamp_millis()).unwrap_or(ts);
            let request_id = request
                .request_id
                .clone()
                .unwrap_or_else(|| format!("auto-{}-{}-{}", key.0, facet, cur_version + 1));
            let mut meta = RecordMeta {
                cluster_id: key.0.clone(),
                version: cur_version + 1,
                writer: request.principal.clone(),
                request_id: request_id.clone(),
                reason: request.reason.clone(),
                ts,
                prev_hash: cur_hash,
                hash: String::new(),
            };
            meta.hash = record_hash_of_canonical(&meta, facet, &canonical);
            let record = StateRecord {
                meta,
                state: request.state,
            };
            let payload = match self.codec.encode(&record).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = reply.send(Err(Error::Unavailable(format!("cannot encode: {e}"))));
                    continue;
                }
            };
            overlay.insert(
                key.clone(),
                (record.meta.version, record.meta.hash.clone(), ts),
            );
            let latest = cluster_ts
                .get(&key.0)
                .or_else(|| index.latest_ts.get(&key.0))
                .map_or(ts, |t| (*t).max(ts));
            cluster_ts.insert(key.0.clone(), latest);
            if keyed {
                keyed_in_batch.insert((key.clone(), request_id.clone()), accepted.len());
            }
            accepted.push(Accepted {
                reply_to: vec![reply],
                keyed,
                request_id,
                digest,
                partition: partition_for(&key.0, self.layout.partitions),
                record,
                payload,
            });
        }
        accepted
    }

    /// Writes every history record, then every state record (with its recent request ids),
    /// in one transaction. Returns what was written, known only once committed.
    async fn commit(&mut self, accepted: &[Accepted]) -> Result<Written> {
        let timeout = self.clients.config().request_timeout() * 3;
        let started = std::time::Instant::now();
        let p = self.producer.clone();
        let mut result = blocking(move || p.begin_transaction())
            .await
            .map(|_| Written::default());
        if result.is_ok() {
            result = self.produce_all(accepted).await;
        }
        let produced = started.elapsed();
        if let Ok(written) = result {
            let p = self.producer.clone();
            result = blocking(move || {
                settle_deliveries(&p);
                p.commit_transaction(timeout)
            })
            .await
            .map(|_| written);
        }
        tracing::debug!(
            produce_ms = produced.as_secs_f64() * 1e3,
            commit_ms = (started.elapsed() - produced).as_secs_f64() * 1e3,
            "transaction written"
        );
        if let Err(e) = &result {
            self.classify(e);
            if !self.fenced.load(Ordering::Acquire) {
                let p = self.producer.clone();
                if let Err(abort) = blocking(move || p.abort_transaction(timeout)).await {
                    tracing::warn!(error = %abort, "abort failed");
                }
            }
        }
        result
    }

    /// Sends every history record and every state record of the transaction. A state
    /// record carries its key's idempotency window (client-keyed requests only) in a
    /// header; a window that gains an entry needs that change's history offset, so only a
    /// transaction with keyed changes waits for the history deliveries before sending the
    /// state records; otherwise both go out at once.
    async fn produce_all(&self, accepted: &[Accepted]) -> Result<Written> {
        // The Kafka timestamp of every record is its write time (when this transaction
        // was formed, by the ledger's clock); the event time is the record's `ts`. The
        // projections tell from it when a late record re-billed an hour.
        let written_at = self.clock.now().timestamp_millis();
        let mut history = Vec::with_capacity(accepted.len());
        for a in accepted {
            let key = format!(
                "{}/{}/{:020}",
                a.record.meta.cluster_id,
                a.record.facet(),
                a.record.meta.version
            );
            let rec = FutureRecord::to(&self.layout.history)
                .key(&key)
                .payload(&a.payload)
                .partition(a.partition)
                .timestamp(written_at);
            history.push(
                self.producer
                    .send_result(rec)
                    .map_err(|(e, _)| Error::kafka("produce history", e))?,
            );
        }
        let mut offsets = Vec::with_capacity(accepted.len());
        if accepted.iter().any(|a| a.keyed) {
            offsets = delivered_offsets(std::mem::take(&mut history), "produce history").await?;
        }
        let index = self.index.read().await;
        let mut recents: HashMap<Key, VecDeque<RecentRequest>> = HashMap::new();
        let mut state = Vec::with_capacity(accepted.len());
        for (i, a) in accepted.iter().enumerate() {
            let k = (a.record.meta.cluster_id.clone(), a.record.facet());
            let recent = recents.entry(k.clone()).or_insert_with(|| {
                index
                    .heads
                    .get(&k)
                    .map(|h| h.recent.clone())
                    .unwrap_or_default()
            });
            if a.keyed {
                recent.push_back(RecentRequest {
                    request_id: a.request_id.clone(),
                    digest: a.digest.clone(),
                    result: appended_of(a, offsets[i]),
                });
                while recent.len() > self.config.idempotency_window.max(1) {
                    recent.pop_front();
                }
            }
            let header = if recent.is_empty() {
                None
            } else {
                Some(serde_json::to_vec(&recent).unwrap_or_default())
            };
            let key = format!("{}/{}", k.0, k.1);
            let mut rec = FutureRecord::to(&self.layout.state)
                .key(&key)
                .payload(&a.payload)
                .partition(a.partition)
                .timestamp(written_at);
            if let Some(header) = &header {
                rec = rec.headers(OwnedHeaders::new().insert(Header {
                    key: RECENT_HEADER,
                    value: Some(header),
                }));
            }
            state.push(
                self.producer
                    .send_result(rec)
                    .map_err(|(e, _)| Error::kafka("produce state", e))?,
            );
        }
        drop(index);
        if !history.is_empty() {
            offsets = delivered_offsets(history, "produce history").await?;
        }
        delivered_offsets(state, "produce state").await?;
        Ok(Written { offsets, recents })
    }

    /// Marks the writer fenced when `e`, or the producer's fatal error (librdkafka reports
    /// fencing as a fatal error and fails queued sends with a purge), says another
    /// instance took over.
    fn classify(&self, e: &Error) {
        use rdkafka::types::RDKafkaErrorCode as C;
        let is_fence = |c: Option<C>| {
            matches!(
                c,
                Some(C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch)
            )
        };
        let mut fenced =
            matches!(e, Error::Kafka { source, .. } if is_fence(source.rdkafka_error_code()));
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::warn!(?code, reason, "producer has a fatal error");
            fenced |= is_fence(Some(code));
        }
        if fenced {
            tracing::error!(transactional_id = %self.txn_id, "fenced by another writer; no longer accepting writes");
            self.fenced.store(true, Ordering::Release);
        }
    }

    /// After a failed transaction: a fresh producer (which aborts anything pending) and an
    /// index rebuilt from the state topic, so an unknown outcome cannot cause a duplicate
    /// version.
    async fn recover_producer(&mut self) {
        for attempt in 1..=5u32 {
            let result = async {
                let producer = new_transactional_producer(&self.clients, &self.txn_id).await?;
                let index = rebuild_index(&self.clients, &self.layout, &self.codec).await?;
                Ok::<_, Error>((producer, index))
            }
            .await;
            match result {
                Ok((producer, index)) => {
                    self.producer = producer;
                    *self.index.write().await = index;
                    return;
                }
                Err(e) => {
                    self.classify(&e);
                    if self.fenced.load(Ordering::Acquire) {
                        return;
                    }
                    tracing::warn!(attempt, error = %e, "re-creating the producer failed");
                    tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
                }
            }
        }
        tracing::error!("could not re-create the producer; refusing writes");
        self.fenced.store(true, Ordering::Release);
    }

    async fn publish(&self, accepted: Vec<Accepted>, written: Written) {
        let mut index = self.index.write().await;
        for (a, offset) in accepted.into_iter().zip(written.offsets) {
            let appended = appended_of(&a, offset);
            let key = (a.record.meta.cluster_id.clone(), a.record.facet());
            index.saw(&key.0, a.record.meta.ts);
            tracing::debug!(cluster_id = %key.0, facet = %key.1, version = appended.version, partition = appended.partition, offset, "appended");
            // The window as written with the key's last record of this transaction.
            let recent = written.recents.get(&key).cloned().unwrap_or_default();
            index.heads.insert(
                key.clone(),
                Head {
                    record: a.record,
                    appended: appended.clone(),
                    recent,
                },
            );
            for r in a.reply_to {
                let _ = r.send(Ok(appended.clone()));
            }
        }
    }
}

/// Waits (at most 50 ms) until librdkafka has released every delivered message.
///
/// A delivery future resolves inside the delivery callback, a moment before librdkafka
/// frees the message. `commit_transaction` first flushes, and rdkafka's flush, seeing a
/// message not yet freed, polls the event queue for up to 100 ms, although the producer's
/// polling thread has already taken the last event: that was a 100 ms stall in one commit
/// of twenty (the p99 of a single append). Every record of the transaction has been
/// delivered when this is called, so the count reaches zero within microseconds; past the
/// limit the commit's own flush takes over.
fn settle_deliveries(producer: &FutureProducer) {
    let deadline = std::time::Instant::now() + Duration::from_millis(50);
    while producer.in_flight_count() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// The offsets of delivered records, in send order; the first failure fails them all.
async fn delivered_offsets(futures: Vec<DeliveryFuture>, what: &str) -> Result<Vec<i64>> {
    let mut offsets = Vec::with_capacity(futures.len());
    for f in futures {
        match f.await {
            Ok(Ok(d)) => offsets.push(d.offset),
            Ok(Err((e, _))) => return Err(Error::kafka(what, e)),
            Err(_) => return Err(Error::Unavailable("delivery cancelled".into())),
        }
    }
    Ok(offsets)
}

fn appended_of(a: &Accepted, offset: i64) -> Appended {
    Appended {
        cluster_id: a.record.meta.cluster_id.clone(),
        facet: a.record.facet(),
        version: a.record.meta.version,
        hash: a.record.meta.hash.clone(),
        partition: a.partition,
        offset,
        ts: a.record.meta.ts,
    }
}

fn idem_mismatch(key: &Key, rid: &str) -> Error {
    Error::IdempotencyMismatch {
        cluster_id: key.0.clone(),
        facet: key.1,
        request_id: rid.to_owned(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unavailable(format!("producer task failed: {e}")))?
        .map_err(|e| Error::kafka("transaction", e))
}

#[cfg(test)]
mod tests {
    use super::HistoryHint;

    #[test]
    fn hint_ranges_merge_nearby_offsets_and_read_the_tail() {
        let hint = HistoryHint {
            offsets: vec![5, 7, 100, 1000, 1100, 5000],
            indexed_to: 5100,
        };
        assert_eq!(
            hint.ranges(),
            vec![(5, 101), (1000, 1101), (5000, i64::MAX)]
        );
        let far = HistoryHint {
            offsets: vec![5],
            indexed_to: 9000,
        };
        assert_eq!(far.ranges(), vec![(5, 6), (9000, i64::MAX)]);
        assert_eq!(HistoryHint::default().ranges(), vec![(0, i64::MAX)]);
    }
}
