//! The append path's public face: the [`Ledger`] handle, its requests and answers, and the
//! domain operations built on it (append, import, delete, batch, recovery).
//!
//! Every change goes through one pipeline: the handle queues it to the writer task
//! ([`crate::writer`]), which has [`crate::admission::admit`] decide it (ownership,
//! idempotency, `If-Match`, versions, time, hashes), writes what is admitted in one Kafka
//! transaction with the rest of its group, and answers only after the commit.
//!
//! Idempotency window: the last `idempotency_window` request ids per cluster+facet (default
//! 32), none more than `idempotency_window_ms` (an hour) older than the latest. They
//! travel in the `fleetledger.recent` header of each state record, so they survive a
//! restart: the index is rebuilt from the compacted state topic alone. Imported lines take
//! no place in it: a resumed import recognises them by version and content.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetledger_schemas::{Facet, FacetState, RecordCodec};
use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{DeleteRequest, Outcome, Proposal};
use crate::clock::Clock;
use crate::cluster_history::RecoveryPlan;
use crate::election::{Announcement, Election, WriterDirectory};
use crate::error::{Error, Result};
use crate::follower::StateFollower;
use crate::index::{Head, HeadStates, Index};
use crate::kafka::KafkaClients;
use crate::metrics::{LedgerMetrics, OutcomeLabel, outcome_of};
use crate::partitioner::partition_for;
use crate::principals::Scope;
use crate::principals::{IMPORT, Ownership, RECOVERY};
use crate::topics::TopicLayout;
use crate::writer::{Pending, Role, Writer, WriterStatus};

/// Tuning of the append path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Most changes per transaction.
    pub batch_max: usize,
    /// Longest wait for more changes before a transaction starts while none is in flight,
    /// in milliseconds. 0 (the default) waits for none: the changes that arrive while a
    /// transaction commits form the next one.
    pub linger_ms: u64,
    /// Request ids remembered per cluster+facet for idempotency: at most this many.
    pub idempotency_window: usize,
    /// ... and none older than this, in milliseconds before the latest one (a retry comes
    /// within minutes; a window of a day's changes would make every state record, which
    /// carries it, and the index, which holds it, large for nothing).
    pub idempotency_window_ms: u64,
    /// Largest encoded record the writer sends, in bytes. A change whose record is larger
    /// is refused on its own ([`Error::TooLarge`]) before its transaction, and the rest of
    /// its group commits. Below the producer's and the topics' limits (librdkafka's
    /// `message.max.bytes` of 1,000,000; Kafka's `max.message.bytes` of 1,048,588), with
    /// room for the idempotency-window header the state record also carries.
    pub max_record_bytes: usize,
    /// The earliest time an imported line may carry (RFC 3339): older ones are refused
    /// as forged or mistyped.
    pub import_earliest: DateTime<Utc>,
    /// How far past the ledger's clock an imported line's time may be, in milliseconds
    /// (clock skew between the source and us); later ones are refused.
    pub import_max_skew_ms: u64,
    /// Longest a caller waits for its change's answer once queued, in milliseconds. Past
    /// it the answer is [`Error::OutcomeUnknown`] (the change may still commit: retry with
    /// the same Idempotency-Key), never "not written". Longer than a commit and the
    /// resolution of its outcome take, so those answer first.
    pub answer_timeout_ms: u64,
    /// The writer election's session timeout, in milliseconds: how long a writer that
    /// stopped answering (killed, cut off, paused) keeps the writer's role before a
    /// standby is given it. Kafka's brokers accept 6,000 to 1,800,000 by default
    /// (`group.min.session.timeout.ms`, `group.max.session.timeout.ms`).
    pub election_session_timeout_ms: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            batch_max: 1000,
            linger_ms: 0,
            idempotency_window: 32,
            idempotency_window_ms: 3_600_000,
            max_record_bytes: 900_000,
            import_earliest: DateTime::from_timestamp(946_684_800, 0).unwrap_or_default(),
            import_max_skew_ms: 300_000,
            answer_timeout_ms: 120_000,
            election_session_timeout_ms: 6_000,
        }
    }
}

/// One change to append.
#[derive(Debug, Clone, PartialEq)]
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
    /// The orgs the caller may change (see [`crate::Scope`]).
    pub scope: Scope,
    /// Admit this change only if the cluster's facet (`.0`) has reached version `.1`,
    /// written before or admitted earlier in the same group; else it is refused with
    /// [`Error::PrecedingNotWritten`]. An import queues a cluster's lines at once and
    /// links each to the one before it, so a refused line stops the later ones as if they
    /// had waited for it.
    pub requires: Option<(fleetledger_schemas::Facet, i64)>,
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

impl Appended {
    /// Where `record` is: its cluster's `partition` and its `offset` in the history topic
    /// (-1 where it is not known).
    pub fn of(record: &fleetledger_schemas::StateRecord, partition: i32, offset: i64) -> Self {
        Appended {
            cluster_id: record.meta.cluster_id.clone(),
            facet: record.facet(),
            version: record.meta.version,
            hash: record.meta.hash.clone(),
            partition,
            offset,
            ts: record.meta.ts,
        }
    }
}

/// [`StateFollower::read_index`] at start-up, retried while Kafka is away (before
/// `open` returns, a standby must have its index).
async fn standby_index(follower: &StateFollower) -> Result<Option<Vec<Option<i64>>>> {
    let mut delay = Duration::from_millis(200);
    loop {
        match follower.read_index().await {
            Err(e) if e.is_retriable() => {
                tracing::warn!(error = %e, "reading the state topic failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            r => return r,
        }
    }
}

/// The writer's `transactional.id` for the topics under `topic_prefix`. Derived, never
/// configured: every instance on the same topics has the same id, so the newest writer
/// fences any earlier one at the broker, and two writers can never both commit.
pub fn writer_transactional_id(topic_prefix: &str) -> String {
    format!("fleetledger-{topic_prefix}-writer")
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
    /// Where the append path counts what it does.
    pub metrics: LedgerMetrics,
    /// The URL this instance's HTTP API is reached at, announced when it becomes the
    /// writer (standbys redirect writes there).
    pub advertised_url: String,
}

/// The append path and the in-memory index of the latest state.
#[derive(Debug, Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Pending>,
    index: Arc<RwLock<Index>>,
    status: WriterStatus,
    directory: WriterDirectory,
    /// This process in announcements ([`Announcement::instance`]).
    instance: String,
    /// Where this instance is reached ([`LedgerSetup::advertised_url`]).
    advertised_url: String,
    ownership: Arc<Ownership>,
    pub(crate) layout: TopicLayout,
    pub(crate) clients: KafkaClients,
    pub(crate) codec: Arc<RecordCodec>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: LedgerConfig,
    metrics: LedgerMetrics,
}

impl Ledger {
    /// Opens the ledger of one `serve` instance: joins the writer election
    /// ([`crate::election`]), follows the writer announcements, and reads the state topic
    /// once into the index (as the writer when it takes over, or as a standby). The
    /// instance then writes while the election assigns it the
    /// writer's partition (after fencing every earlier writer through the shared
    /// transactional id), and is a standby otherwise, its index following the state
    /// topic. Returns once the instance is the writer or knows who is (at most two
    /// session timeouts and a request timeout; then it goes on as a standby). Everything
    /// runs on `tracker` until `shutdown`, the writer finishing the changes already
    /// queued.
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
            metrics,
            advertised_url,
        } = setup;
        let txn_id = writer_transactional_id(&clients.config().topic_prefix);
        // Empty until the role is known: a writer reads the state topic when it takes
        // over, a standby below; neither serves anything before `open` returns.
        let index = Arc::new(RwLock::new(Index::default()));
        // What can fail before anything is spawned does so first: a failed open is
        // retried from scratch.
        let directory = WriterDirectory::follow(&clients, &layout, shutdown.clone(), tracker)?;
        let election = Election::join(
            &clients,
            &layout,
            config.election_session_timeout_ms,
            tracker,
        )?;
        let (tx, rx) = mpsc::channel(config.batch_max.max(1) * 4);
        let status = WriterStatus::default();
        let ownership = Arc::new(ownership);
        let instance = format!("{advertised_url}#{}", std::process::id());
        let (writer_clock, writer_config) = (clock.clone(), config.clone());
        let session = Duration::from_millis(config.election_session_timeout_ms);
        let writer = Writer {
            producer: None,
            election,
            unconfirmed: AtomicBool::new(false),
            announcement: Announcement {
                instance: instance.clone(),
                url: advertised_url.clone(),
                since: chrono::Utc::now(),
            },
            txn_id,
            clients: clients.clone(),
            layout: layout.clone(),
            codec: codec.clone(),
            ownership: ownership.clone(),
            clock,
            config,
            index: index.clone(),
            status: status.clone(),
            metrics: metrics.clone(),
        };
        tracker.spawn(writer.run(rx, shutdown.clone()));
        let follower = StateFollower {
            clients: clients.clone(),
            layout: layout.clone(),
            codec: codec.clone(),
            index: index.clone(),
            status: status.clone(),
        };
        let ledger = Ledger {
            tx,
            index,
            status,
            directory,
            instance,
            advertised_url,
            ownership,
            layout,
            clients,
            codec,
            clock: writer_clock,
            config: writer_config,
            metrics,
        };
        let deadline =
            tokio::time::Instant::now() + session * 2 + ledger.clients.config().request_timeout();
        while tokio::time::Instant::now() < deadline && !shutdown.is_cancelled() {
            match ledger.role() {
                Role::Writer => break,
                Role::Standby if ledger.writer_url().is_some() => break,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        // A standby reads the state topic here (the writer did when it took over), unless
        // it became the writer meanwhile; the follower goes on from where this read ended.
        let positions = match ledger.role() {
            Role::Writer => None,
            _ => standby_index(&follower).await?,
        };
        tracker.spawn(follower.run(positions, shutdown.clone()));
        tracing::info!(role = ledger.role().as_str(), writer = ?ledger.writer_url(), "ledger open");
        Ok(ledger)
    }

    /// Ok if this instance is the writer now, else [`Error::NotWriter`] naming the writer
    /// if one is known: for a request of many changes, refused (redirected) as a whole.
    pub fn check_writer(&self) -> Result<()> {
        match self.role() {
            Role::Writer => Ok(()),
            _ => Err(Error::NotWriter {
                writer: self.writer_url(),
            }),
        }
    }

    /// This instance's role in the writer election now.
    pub fn role(&self) -> Role {
        self.status.role()
    }

    /// The URL of the writer, as it announced itself, unless it is this instance: where
    /// a standby sends writes. None while no other instance is known to write.
    pub fn writer_url(&self) -> Option<String> {
        // Not this process, nor an earlier process at this address (a restarted writer's
        // announcement): a standby must not redirect writes to itself.
        self.directory
            .latest()
            .filter(|a| a.instance != self.instance && a.url != self.advertised_url)
            .map(|a| a.url)
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
        Ok(self.submit(Proposal::Put(request)).await?.appended)
    }

    /// Appends every change of a batch, each on its own (one refused change does not stop
    /// the others; they share transactions with each other and with concurrent callers).
    /// The answers are in the changes' order.
    pub async fn batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Appended>> {
        futures::future::join_all(requests.into_iter().map(|r| self.append(r))).await
    }

    /// Deletes a cluster: its logical facet becomes `deleted: true`, decided by the writer
    /// against the logical state current when the delete is admitted, so a change
    /// committed after the caller looked is never overwritten by a stale copy. Deleting a
    /// deleted cluster without an idempotency key writes nothing (`written: false`, the
    /// current version). [`Error::NotFound`] if the cluster has no logical facet.
    pub async fn delete(&self, request: DeleteRequest) -> Result<Outcome> {
        self.submit(Proposal::Delete(request)).await
    }

    /// Appends one change of imported history: like [`Ledger::append`], but `ts` (the
    /// original time) is kept and `principal` (the original writer, who must own the facet)
    /// is recorded as the writer. Only the import path, authorised as the `import`
    /// principal, calls this; times still must not go backwards per cluster+facet.
    pub async fn import(&self, request: AppendRequest) -> Result<Appended> {
        Ok(self.submit(Proposal::Put(request)).await?.appended)
    }

    async fn submit(&self, proposal: Proposal) -> Result<Outcome> {
        let answer = self.answer(proposal).await;
        self.count(&answer);
        answer
    }

    fn count(&self, answer: &Result<Outcome>) {
        self.metrics
            .appends
            .get_or_create(&OutcomeLabel {
                outcome: outcome_of(answer),
            })
            .inc();
    }

    /// Imports one cluster's lines, each linked to the one before it
    /// ([`AppendRequest::requires`]): every line is queued, in order, before any answer is
    /// awaited, so the writer admits them in that order, most often in one group. A line
    /// that cannot be queued (the writer is fenced, re-connecting or stopping) is answered
    /// so, and the lines after it are not queued ([`Error::PrecedingNotWritten`]).
    pub(crate) async fn import_linked(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Vec<Result<Appended>> {
        let mut queued = Vec::with_capacity(requests.len());
        let mut stopped = false;
        for r in requests {
            if stopped {
                let (facet, version) = r.requires.unwrap_or((r.state.facet(), 0));
                queued.push(Err(Error::PrecedingNotWritten {
                    cluster_id: r.cluster_id,
                    facet,
                    version,
                }));
                continue;
            }
            let q = self.enqueue(Proposal::Put(r)).await;
            stopped = q.is_err();
            queued.push(q);
        }
        futures::future::join_all(queued.into_iter().map(|q| async move {
            let answer = match q {
                Ok(rx) => self.await_answer(rx).await,
                Err(e) => Err(e),
            };
            self.count(&answer);
            answer.map(|o| o.appended)
        }))
        .await
    }

    /// The answer to one proposal: refused before the queue, or the writer's.
    async fn answer(&self, proposal: Proposal) -> Result<Outcome> {
        let rx = self.enqueue(proposal).await?;
        self.await_answer(rx).await
    }

    /// Queues `proposal` for the writer, or says why it is refused before the queue.
    async fn enqueue(&self, proposal: Proposal) -> Result<oneshot::Receiver<Result<Outcome>>> {
        self.check_writer()?;
        if self.status.fenced.load(Ordering::Acquire) {
            return Err(Error::Fenced);
        }
        if let Some(why) = self.not_writable() {
            return Err(Error::Unavailable(why));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { proposal, reply })
            .await
            .map_err(|_| Error::Unavailable("the writer is shutting down".into()))?;
        Ok(rx)
    }

    /// The writer's answer to a queued proposal. Once queued, a change may be written
    /// whatever happens to this caller: no answer here is "not written".
    async fn await_answer(&self, rx: oneshot::Receiver<Result<Outcome>>) -> Result<Outcome> {
        match tokio::time::timeout(Duration::from_millis(self.config.answer_timeout_ms), rx).await {
            Ok(answer) => answer
                .map_err(|_| Error::OutcomeUnknown("the writer stopped before answering".into()))?,
            Err(_) => Err(Error::OutcomeUnknown(format!(
                "no answer within {} ms (ledger.answer_timeout_ms)",
                self.config.answer_timeout_ms
            ))),
        }
    }

    /// The states of the latest records the ledger holds, shared: see [`HeadStates`].
    pub fn head_states(&self) -> HeadStates {
        HeadStates::of(self.index.clone())
    }

    /// The latest record of every facet of `cluster_id` (read-your-writes: an append that
    /// returned is visible here).
    pub async fn current(&self, cluster_id: &str) -> BTreeMap<Facet, Head> {
        let idx = self.index.read().await;
        idx.heads_of(cluster_id)
            .map(|h| (h.record.facet(), h.clone()))
            .collect()
    }

    /// Whether a caller of `scope` may see `cluster_id`: [`Error::NotFound`] unless the
    /// cluster's current logical state names one of its orgs (the rule admission applies
    /// to writes, [`Scope::sees`]). An unscoped caller sees every cluster.
    pub async fn visible(&self, cluster_id: &str, scope: &Scope) -> Result<()> {
        if scope.orgs().is_none() {
            return Ok(());
        }
        if scope.sees(self.org_of(cluster_id).await.as_deref()) {
            Ok(())
        } else {
            Err(Error::NotFound(cluster_id.to_owned()))
        }
    }

    /// The org `cluster_id`'s current logical state names, if it has one.
    pub async fn org_of(&self, cluster_id: &str) -> Option<String> {
        let idx = self.index.read().await;
        idx.head(cluster_id, Facet::Logical)
            .and_then(|h| match &h.record.state {
                FacetState::Logical(l) => Some(l.org_id.clone()),
                _ => None,
            })
    }

    /// How many partitions each topic has.
    pub fn layout_partitions(&self) -> i32 {
        self.layout.partitions
    }

    /// The partition of `cluster_id` in both topics.
    pub fn partition_of(&self, cluster_id: &str) -> i32 {
        partition_for(cluster_id, self.layout.partitions)
    }

    /// Whether writes can be accepted now: [`Ledger::not_writable`] has nothing to say.
    pub fn is_writable(&self) -> bool {
        self.not_writable().is_none()
    }

    /// Why a write would not be accepted now, if it would not: this instance is not the
    /// writer (a standby, or taking over), it was just fenced,
    /// the writer is re-connecting to Kafka after a failed transaction, or the transaction
    /// in flight has gone unanswered for longer than Kafka's request timeout (the broker is
    /// away; the writer will learn so when the commit's own time limit ends). A change
    /// submitted meanwhile is refused before it is queued: truly not written.
    pub fn not_writable(&self) -> Option<String> {
        match self.role() {
            Role::Writer => {}
            Role::TakingOver => return Some("taking over as the writer".into()),
            Role::Standby => {
                return Some(match self.writer_url() {
                    Some(url) => format!("a standby: the writer is {url}"),
                    None => "a standby, and no writer is known yet".into(),
                });
            }
        }
        if self.status.fenced.load(Ordering::Acquire) {
            return Some("fenced: another writer with the same transactional id took over".into());
        }
        if self.status.recovering.load(Ordering::Acquire) {
            return Some("the writer is re-connecting to Kafka after a failed transaction".into());
        }
        let limit = self.clients.config().request_timeout();
        match self.status.in_flight_for() {
            Some(t) if t > limit => Some(format!(
                "the transaction in flight has waited {} ms for Kafka (more than the {} ms request timeout)",
                t.as_millis(),
                limit.as_millis()
            )),
            _ => None,
        }
    }

    /// Appends the restored states of `plan` through the normal path as the `recovery`
    /// principal, each with `If-Match` of the version the plan saw (a concurrent change
    /// makes it a [`Error::Conflict`]) and the plan's reason. Facets whose state already
    /// equals the restored one are skipped; the logical facet is written last. The request
    /// ids name the source and the current version, so a retried recovery cannot write
    /// twice. A caller limited to some orgs (`scope`) recovers only their clusters.
    pub async fn recover(&self, plan: &RecoveryPlan, scope: &Scope) -> Result<Vec<Appended>> {
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
                    scope: scope.clone(),
                    requires: None,
                })
                .await?;
            written.push(appended);
        }
        Ok(written)
    }
}
