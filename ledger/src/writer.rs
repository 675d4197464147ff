//! The writer task: owns the transactional producer while the writer election
//! ([`crate::election`]) makes this instance the writer, and refuses writes with
//! [`Error::NotWriter`] otherwise. It gathers up to `batch_max` queued changes, has a
//! [`Decider`] ([`admit`]) decide and encode them, writes every history record and then
//! every state record in one transaction, and answers each caller only after the commit.
//!
//! **Pipelined.** One transaction is in flight at the broker at a time, but while it
//! commits, the changes that arrive meanwhile are gathered and decided on another task over
//! the index as that transaction leaves it ([`InFlight`]). They are answered and produced
//! only once it has committed; if it failed, they are decided again over what really
//! committed, so no answer names a version that did not commit and no gap appears.
//!
//! An aborted transaction answers [`Error::Unavailable`] to all its callers and changes
//! nothing. A fenced producer answers its group [`Error::Fenced`] (or an unknown outcome,
//! if its commit was asked for) and stands down; it takes over again only if the group
//! still confirms it as the writer, 3 s later. Any other failed
//! commit re-creates the producer and rebuilds the index from the state topic before
//! accepting more, so a commit whose outcome was unknown can never lead to a duplicate
//! version; while that does not succeed (the broker is away) the writer keeps trying with
//! capped back-off and answers [`Error::Unavailable`] meanwhile — it never gives up for good.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fleetledger_schemas::{Facet, RecordCodec, StateRecord};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::{RwLock, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admission::{Admitted, Outcome, Proposal, Rules, Verdict, admit};
use crate::append::{Appended, LedgerConfig};
use crate::clock::Clock;
use crate::election::{Announcement, Election, announce};
use crate::error::{Error, Result};
use crate::index::{Head, Heads, Index, RECENT_HEADER, RecentRequest, rebuild_index, trim_window};
use crate::kafka::KafkaClients;
use crate::keys::{HistoryKey, StateKey};
use crate::pipeline::{InFlight, WindowLimits};
use crate::principals::Ownership;
use crate::topics::TopicLayout;

/// A proposed change and where its answer goes.
pub(crate) struct Pending {
    pub(crate) proposal: Proposal,
    pub(crate) reply: oneshot::Sender<Result<Outcome>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("proposal", &self.proposal)
            .finish()
    }
}

/// What this instance is in the writer election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not the writer: reads are served from an index that follows the state topic, and
    /// writes go to the writer ([`Error::NotWriter`]).
    Standby,
    /// Assigned the writer's partition, taking over: confirming the membership, fencing
    /// the earlier writer, rebuilding the index, announcing itself.
    TakingOver,
    /// The writer: accepts writes (unless re-connecting to Kafka after a failed
    /// transaction).
    Writer,
}

impl Role {
    /// The role's name, as `/readyz` and `/metrics` say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::TakingOver => "taking_over",
            Role::Writer => "writer",
        }
    }
}

/// Flags the writer shares with the [`crate::Ledger`] handle.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriterStatus {
    /// The group being processed met a fence (a newer producer of the transactional id,
    /// or the election moved on): the writer stands down once it is answered.
    pub(crate) fenced: Arc<AtomicBool>,
    /// [`Role`] as a number: 0 standby, 1 taking over, 2 writer.
    role: Arc<std::sync::atomic::AtomicU8>,
    /// The producer is being re-created (the broker is away): writes answer 503 meanwhile.
    pub(crate) recovering: Arc<AtomicBool>,
    /// When the transaction in flight began, in milliseconds of [`monotonic_ms`] plus one;
    /// 0 when none is.
    committing_since: Arc<AtomicU64>,
}

/// Milliseconds since the first call in this process, never going backwards.
fn monotonic_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl WriterStatus {
    /// This instance's role now.
    pub(crate) fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            2 => Role::Writer,
            1 => Role::TakingOver,
            _ => Role::Standby,
        }
    }

    fn set_role(&self, role: Role) {
        let n = match role {
            Role::Standby => 0,
            Role::TakingOver => 1,
            Role::Writer => 2,
        };
        self.role.store(n, Ordering::Release);
    }

    /// How long the transaction in flight has been going, if one is.
    pub(crate) fn in_flight_for(&self) -> Option<Duration> {
        match self.committing_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_millis(
                monotonic_ms().saturating_sub(since - 1),
            )),
        }
    }

    fn transaction_started(&self) {
        self.committing_since
            .store(monotonic_ms() + 1, Ordering::Release);
    }

    fn transaction_ended(&self) {
        self.committing_since.store(0, Ordering::Release);
    }
}

pub(crate) struct Writer {
    /// The transactional producer while this instance is the writer.
    pub(crate) producer: Option<FutureProducer>,
    pub(crate) election: Election,
    /// The last stand-down came from an unconfirmed membership, not a fence.
    pub(crate) unconfirmed: AtomicBool,
    /// What this instance announces when it becomes the writer (`since` is set then).
    pub(crate) announcement: Announcement,
    pub(crate) txn_id: String,
    pub(crate) clients: KafkaClients,
    pub(crate) layout: TopicLayout,
    pub(crate) codec: Arc<RecordCodec>,
    pub(crate) ownership: Arc<Ownership>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: LedgerConfig,
    pub(crate) index: Arc<RwLock<Index>>,
    pub(crate) status: WriterStatus,
    pub(crate) metrics: crate::metrics::LedgerMetrics,
}

/// How long a caller waits for the outcome of a commit that failed in flight, while the
/// writer re-creates its producer to learn it; past it the answer is
/// [`Error::OutcomeUnknown`].
pub(crate) const OUTCOME_DEADLINE: Duration = Duration::from_secs(30);

/// Why a transaction did not commit as asked.
enum CommitFailure {
    /// It failed before its commit was asked for: nothing of it is written.
    NotCommitted(Error),
    /// Its commit failed in flight: it may or may not be written. What had been produced
    /// (history offsets, when known) comes along.
    Unknown(Error, Written),
}

/// Answers every caller of `accepted` with the error `make` makes.
fn answer_all(accepted: Vec<Accepted>, make: impl Fn() -> Error) {
    for a in accepted {
        for r in a.reply_to {
            let _ = r.send(Err(make()));
        }
    }
}

/// Whether a transaction with these changes (`(cluster, facet, version, hash)`) committed,
/// judged from an index rebuilt after it was resolved: one transaction is all or nothing,
/// and the ledger has one writer, so it committed exactly when the index holds, for the
/// last change of some cluster+facet in it, that version with that hash.
pub(crate) fn committed(index: &Index, changes: &[(&str, Facet, i64, &str)]) -> bool {
    let mut last: HashMap<(&str, Facet), (i64, &str)> = HashMap::new();
    for &(cluster, facet, version, hash) in changes {
        last.insert((cluster, facet), (version, hash));
    }
    last.iter().any(|(&(cluster, facet), &(version, hash))| {
        index
            .head(cluster, facet)
            .is_some_and(|h| h.record.meta.version == version && h.record.meta.hash == hash)
    })
}

/// What a transaction wrote: history offsets in change order, and the idempotency window
/// of every key as its last state record carries it.
#[derive(Default)]
struct Written {
    offsets: Vec<i64>,
    recents: HashMap<StateKey, VecDeque<RecentRequest>>,
}

/// An admitted change, encoded, waiting for its transaction.
struct Accepted {
    reply_to: Vec<oneshot::Sender<Result<Outcome>>>,
    keyed: bool,
    request_id: String,
    digest: String,
    record: StateRecord,
    payload: Vec<u8>,
    partition: i32,
}

/// Proposed changes in arrival order, each with where its answer goes.
struct Group {
    proposals: Vec<Proposal>,
    replies: Vec<oneshot::Sender<Result<Outcome>>>,
}

impl Group {
    fn of(batch: Vec<Pending>) -> Group {
        let (proposals, replies) = batch.into_iter().map(|p| (p.proposal, p.reply)).unzip();
        Group { proposals, replies }
    }
}

/// A change refused at encoding (too large, not encodable), with where its answer goes.
type Refused = (oneshot::Sender<Result<Outcome>>, Error);

/// Where a decided proposal's answer comes from.
enum Route {
    /// The commit of this change of [`Decided::accepted`].
    Commit(usize),
    /// This answer, given when the group is settled.
    Answer(Result<Outcome>),
}

/// A group decided and encoded, nobody answered yet: until [`Decided::settle`] it can be
/// taken back ([`Decided::undo`]) and decided again.
struct Decided {
    /// What was admitted: the group without the changes refused at encoding.
    group: Group,
    /// Each proposal's answer, in the group's order.
    routes: Vec<Route>,
    /// Changes refused at encoding (too large, not encodable): their answer stands
    /// whatever the index holds.
    refused: Vec<Refused>,
    /// The changes to write, without callers until settled.
    accepted: Vec<Accepted>,
    /// What the index will hold once they commit: the next group is decided over it.
    in_flight: InFlight,
}

impl Decided {
    /// Answers what is answered now and hands each caller of a change to write to that
    /// change: the changes to commit.
    fn settle(self) -> (Vec<Accepted>, InFlight) {
        let Decided {
            group,
            routes,
            refused,
            mut accepted,
            in_flight,
        } = self;
        for (reply, e) in refused {
            let _ = reply.send(Err(e));
        }
        for (reply, route) in group.replies.into_iter().zip(routes) {
            match route {
                Route::Commit(k) => accepted[k].reply_to.push(reply),
                Route::Answer(answer) => {
                    let _ = reply.send(answer);
                }
            }
        }
        (accepted, in_flight)
    }

    /// The group and its encoding refusals, to be decided again.
    fn undo(self) -> (Group, Vec<Refused>) {
        (self.group, self.refused)
    }

    /// Answers every caller `make()`, nothing written (encoding refusals keep theirs).
    fn refuse(self, make: impl Fn() -> Error) {
        let (group, refused) = self.undo();
        for (reply, e) in refused {
            let _ = reply.send(Err(e));
        }
        for reply in group.replies {
            let _ = reply.send(Err(make()));
        }
    }
}

/// Decides groups: [`admit`] over the index (or over the transaction in flight laid on
/// it), then encodes what is admitted. Its parts are shared handles, so the next group is
/// decided on a task of its own while the writer waits for a commit.
#[derive(Clone)]
struct Decider {
    index: Arc<RwLock<Index>>,
    codec: Arc<RecordCodec>,
    ownership: Arc<Ownership>,
    clock: Arc<dyn Clock>,
    partitions: i32,
    max_record_bytes: usize,
    window: WindowLimits,
}

impl Decider {
    /// Decides `group` over the committed index, or over `in_flight` laid on it, and
    /// encodes what is admitted; answers nobody. A change whose record is larger than
    /// `max_record_bytes` ([`Error::TooLarge`]) or cannot be encoded
    /// ([`Error::Unavailable`]) joins `refused`, and the rest of the group is decided again
    /// without it: no version depends on a record that is not written.
    async fn decide(
        &self,
        mut group: Group,
        mut refused: Vec<Refused>,
        in_flight: Option<&InFlight>,
    ) -> Decided {
        'decide: loop {
            // Admission, and what the index holds once the admitted changes commit (built
            // here, on the deciding task, not the writer's), over one view of the index.
            let (verdicts, after) = {
                let index = self.index.read().await;
                let layered;
                let view: &dyn Heads = match in_flight {
                    Some(f) => {
                        layered = f.layered(&index);
                        &layered
                    }
                    None => &*index,
                };
                let rules = Rules {
                    ownership: &self.ownership,
                    partitions: self.partitions,
                    now: self.clock.now(),
                };
                let verdicts = admit(view, &group.proposals, &rules);
                let mut after = InFlight::default();
                for v in &verdicts {
                    if let Verdict::Write(a) = v {
                        let keyed = a
                            .keyed
                            .then_some((a.request_id.as_str(), a.digest.as_str()));
                        after.add(&a.record, a.partition, keyed, view, self.window);
                    }
                }
                (verdicts, after)
            };
            let mut routes = Vec::with_capacity(verdicts.len());
            let mut accepted: Vec<Accepted> = Vec::new();
            // Index of each written proposal in `accepted`, for the joins that follow it.
            let mut slot: HashMap<usize, usize> = HashMap::new();
            for (i, v) in verdicts.into_iter().enumerate() {
                let route = match v {
                    Verdict::Write(Admitted {
                        record,
                        keyed,
                        request_id,
                        digest,
                        partition,
                    }) => {
                        let refusal = match self.codec.encode(&record).await {
                            Ok(p) if p.len() > self.max_record_bytes => Err(Error::TooLarge {
                                cluster_id: record.meta.cluster_id.clone(),
                                facet: record.facet(),
                                bytes: p.len(),
                                limit: self.max_record_bytes,
                            }),
                            Ok(payload) => Ok(payload),
                            Err(e) => Err(Error::Unavailable(format!("cannot encode: {e}"))),
                        };
                        let payload = match refusal {
                            Ok(payload) => payload,
                            Err(e) => {
                                group.proposals.remove(i);
                                refused.push((group.replies.remove(i), e));
                                continue 'decide;
                            }
                        };
                        slot.insert(i, accepted.len());
                        accepted.push(Accepted {
                            reply_to: Vec::new(),
                            keyed,
                            request_id,
                            digest,
                            record,
                            payload,
                            partition,
                        });
                        Route::Commit(accepted.len() - 1)
                    }
                    Verdict::Join(j) => match slot.get(&j) {
                        Some(&k) => Route::Commit(k),
                        None => Route::Answer(Err(Error::Unavailable(
                            "the change this repeats was not admitted".into(),
                        ))),
                    },
                    Verdict::Answer(answer) => Route::Answer(answer),
                };
                routes.push(route);
            }
            return Decided {
                group,
                routes,
                refused,
                accepted,
                in_flight: after,
            };
        }
    }
}

impl Writer {
    /// Writes while the election assigns this instance the writer's partition, stands by
    /// otherwise, until `shutdown`; then finishes the changes already queued and leaves
    /// the election.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Pending>,
        shutdown: CancellationToken,
    ) {
        let mut elected = self.election.watch();
        // After a fence or a failed take-over, the next attempt waits this long, so that
        // the group can tell this member it has moved on before it fences anyone again.
        let mut not_before = tokio::time::Instant::now();
        loop {
            let held = *elected.borrow_and_update();
            if held && self.producer.is_none() && tokio::time::Instant::now() >= not_before {
                if !self.take_over(&mut rx, &shutdown).await {
                    not_before = tokio::time::Instant::now() + RETRY_FAILED_TAKE_OVER;
                }
                continue;
            }
            if !held && self.producer.is_some() {
                self.stand_down("the election assigned the writer's partition elsewhere");
            }
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = elected.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break,
                },
                () = tokio::time::sleep_until(not_before), if held && self.producer.is_none() => continue,
                p = rx.recv() => match p { Some(p) => p, None => break },
            };
            if self.producer.is_none() {
                refuse_not_writer(first);
                continue;
            }
            let group = self.gather(first, &mut rx).await;
            self.write(group, &mut rx, &shutdown).await;
            if self.status.fenced.swap(false, Ordering::AcqRel) {
                self.stand_down("fenced");
                not_before = tokio::time::Instant::now()
                    + match self.unconfirmed.swap(false, Ordering::AcqRel) {
                        // The coordinator did not confirm the membership (it may be away):
                        // not a newer writer's doing, so try again soon.
                        true => RETRY_FAILED_TAKE_OVER,
                        false => RETRY_TAKE_OVER,
                    };
            }
        }
        // Finish what callers already queued, then stop.
        rx.close();
        let mut rest = Vec::new();
        while let Ok(p) = rx.try_recv() {
            rest.push(p);
        }
        if !rest.is_empty() {
            if self.producer.is_some() {
                self.write(Group::of(rest), &mut rx, &shutdown).await;
            } else {
                rest.into_iter().for_each(refuse_not_writer);
            }
        }
        self.stand_down("shutting down");
        self.election.leave();
        tracing::info!("ledger writer stopped");
    }

    /// Becomes the writer: the group confirms this member, a new transactional producer
    /// fences every earlier one (and has the coordinator finish their transactions), the
    /// index is rebuilt from the state topic, and the instance announces itself. False,
    /// and still a standby, if any step fails.
    async fn take_over(
        &mut self,
        queue: &mut mpsc::Receiver<Pending>,
        shutdown: &CancellationToken,
    ) -> bool {
        self.status.set_role(Role::TakingOver);
        let started = std::time::Instant::now();
        let result = {
            let attempt = async {
                if !self.election.confirm().await {
                    return Err(Error::NotWriter { writer: None });
                }
                let producer = new_transactional_producer(&self.clients, &self.txn_id).await?;
                let index = rebuild_index(&self.clients, &self.layout, &self.codec).await?;
                let announcement = Announcement {
                    since: chrono::Utc::now(),
                    ..self.announcement.clone()
                };
                let timeout = self.clients.config().request_timeout() * 3;
                announce(&producer, &self.layout.writers, &announcement, timeout).await?;
                Ok::<_, Error>((producer, index))
            };
            tokio::pin!(attempt);
            loop {
                tokio::select! {
                    r = &mut attempt => break r,
                    () = shutdown.cancelled() => break Err(Error::Unavailable("shutting down".into())),
                    Some(p) = queue.recv() => refuse_not_writer(p),
                }
            }
        };
        match result {
            Ok((producer, index)) => {
                *self.index.write().await = index;
                self.producer = Some(producer);
                // A fresh producer and index: nothing of an earlier failure is pending.
                self.status.recovering.store(false, Ordering::Release);
                self.status.set_role(Role::Writer);
                self.metrics.takeovers.inc();
                tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    url = %self.announcement.url,
                    "this instance is the writer"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "taking over as the writer failed; standing by");
                self.status.set_role(Role::Standby);
                false
            }
        }
    }

    /// Why a change this writer took cannot be written now: another writer fenced it
    /// ([`Error::Fenced`]); the group no longer confirms it as the writer
    /// ([`Error::NotWriter`], as a change queued after it stood down gets); or its producer
    /// is being re-created ([`Error::Unavailable`]). Nothing of such a change was produced.
    fn not_writing(&self) -> Error {
        if self.status.fenced.load(Ordering::Acquire) && !self.unconfirmed.load(Ordering::Acquire) {
            Error::Fenced
        } else if self.status.fenced.load(Ordering::Acquire) || !self.election.is_held() {
            Error::NotWriter { writer: None }
        } else {
            Error::Unavailable(
                "the writer is re-connecting to Kafka after a failed transaction".into(),
            )
        }
    }

    /// Stops writing: the producer is dropped (off the runtime: dropping flushes) and the
    /// index follows the state topic again.
    fn stand_down(&mut self, why: &str) {
        if let Some(p) = self.producer.take() {
            tracing::warn!(why, "this instance is no longer the writer");
            tokio::task::spawn_blocking(move || drop(p));
        }
        self.status.set_role(Role::Standby);
    }

    /// `first` and what else is queued now (up to `batch_max`): a group's boundary is the
    /// transaction before it, not a timer. An idle writer waits up to `linger_ms` (0 by
    /// default) for more; otherwise it takes what a yield to the enqueuing tasks brings.
    async fn gather(&self, first: Pending, queue: &mut mpsc::Receiver<Pending>) -> Group {
        let max = self.config.batch_max.max(1);
        let mut batch = vec![first];
        let linger = Duration::from_millis(self.config.linger_ms);
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) if linger.is_zero() => {
                    // Callers that enqueue many changes at once may be mid-way.
                    tokio::task::yield_now().await;
                    match queue.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                Err(_) => match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    _ => break,
                },
            }
        }
        Group::of(batch)
    }

    /// The next group from what is queued now, decided over the committed index; None
    /// when nothing is queued or the writer is shutting down (the run loop finishes what
    /// is queued then).
    async fn decide_queued(
        &self,
        decider: &Decider,
        queue: &mut mpsc::Receiver<Pending>,
        shutdown: &CancellationToken,
    ) -> Option<Decided> {
        if shutdown.is_cancelled() {
            return None;
        }
        let first = queue.try_recv().ok()?;
        let group = self.gather(first, queue).await;
        Some(decider.decide(group, Vec::new(), None).await)
    }

    /// What decides groups, apart from the writer (see [`Decider`]).
    fn decider(&self) -> Decider {
        Decider {
            index: self.index.clone(),
            codec: self.codec.clone(),
            ownership: self.ownership.clone(),
            clock: self.clock.clone(),
            partitions: self.layout.partitions,
            max_record_bytes: self.config.max_record_bytes,
            window: (
                self.config.idempotency_window,
                self.config.idempotency_window_ms,
            ),
        }
    }

    /// Writes `group`, and after it every group that queues up meanwhile, until the queue
    /// is empty, one transaction at a time at the broker. While a transaction commits, the
    /// next group is gathered and decided on another task over the index as that
    /// transaction leaves it ([`InFlight`]); it is answered and produced only after that
    /// commit, and decided again over what really committed if the commit failed. A group
    /// with a change that depends on the transaction in flight
    /// ([`InFlight::depends_on`]) is decided after its commit.
    async fn write(
        &mut self,
        group: Group,
        queue: &mut mpsc::Receiver<Pending>,
        shutdown: &CancellationToken,
    ) {
        let decider = self.decider();
        let mut decided = decider.decide(group, Vec::new(), None).await;
        loop {
            if self.status.fenced.load(Ordering::Acquire) || !self.election.is_held() {
                // The run loop stands down; nothing of this group was produced.
                decided.refuse(|| self.not_writing());
                return;
            }
            let (accepted, in_flight) = decided.settle();
            if accepted.is_empty() {
                match self.decide_queued(&decider, queue, shutdown).await {
                    Some(d) => {
                        decided = d;
                        continue;
                    }
                    None => return,
                }
            }
            let span = tracing::info_span!("transaction", changes = accepted.len());
            let in_flight = Arc::new(in_flight);
            self.status.transaction_started();
            let started = std::time::Instant::now();
            // The next group: decided over this transaction while it commits, or (when it
            // depends on it) held until it has.
            let mut next: Option<tokio::task::JoinHandle<Decided>> = None;
            let mut held: Option<Group> = None;
            let mut open = true;
            let result = {
                let commit = self.commit(&accepted).instrument(span.clone());
                tokio::pin!(commit);
                loop {
                    tokio::select! {
                        biased;
                        r = &mut commit => break r,
                        p = queue.recv(), if open && next.is_none() && held.is_none() => {
                            let Some(p) = p else {
                                open = false;
                                continue;
                            };
                            let group = self.gather(p, queue).await;
                            if group.proposals.iter().any(|p| in_flight.depends_on(p)) {
                                held = Some(group);
                            } else {
                                self.metrics.decided_ahead.inc();
                                let (decider, in_flight) = (decider.clone(), in_flight.clone());
                                next = Some(tokio::spawn(
                                    async move { decider.decide(group, Vec::new(), Some(&in_flight)).await }
                                        .instrument(tracing::info_span!("decide_next")),
                                ));
                            }
                        }
                    }
                }
            };
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            if result.is_ok() {
                self.metrics
                    .transaction_changes
                    .observe(accepted.len() as f64);
            } else {
                // Not writable from this instant until the producer is back.
                self.status.recovering.store(true, Ordering::Release);
            }
            self.status.transaction_ended();
            let committed = result.is_ok();
            async {
                match result {
                    Ok(written) => self.publish(accepted, written).await,
                    Err(CommitFailure::NotCommitted(e)) => {
                        let text = e.to_string();
                        tracing::warn!(error = %text, "transaction failed before its commit; nothing written");
                        let fenced = self.status.fenced.load(Ordering::Acquire);
                        answer_all(accepted, || {
                            if fenced {
                                Error::Fenced
                            } else {
                                Error::Unavailable(text.clone())
                            }
                        });
                        if !fenced {
                            self.recover_producer(queue, shutdown).await;
                        }
                    }
                    Err(CommitFailure::Unknown(e, written)) => {
                        self.resolve(accepted, written, e, queue, shutdown).await;
                    }
                }
            }
            .instrument(span)
            .await;
            let next = match next {
                Some(task) => Some(match task.await {
                    Ok(d) => d,
                    // Deciding does not panic; if it did, its callers' senders are gone
                    // with it and they learn that nothing was written.
                    Err(e) => {
                        tracing::error!(error = %e, "deciding the next group failed");
                        return;
                    }
                }),
                None => None,
            };
            decided = match (next, held) {
                (Some(d), _) if committed => d,
                // Decided over a transaction that did not commit (or whose outcome had to
                // be resolved): decided again over what the index holds now.
                (Some(d), _) => {
                    self.metrics.decided_again.inc();
                    let (group, refused) = d.undo();
                    decider.decide(group, refused, None).await
                }
                (None, Some(group)) => decider.decide(group, Vec::new(), None).await,
                (None, None) => match self.decide_queued(&decider, queue, shutdown).await {
                    Some(d) => d,
                    None => return,
                },
            };
            if !committed
                && (self.producer.is_none() || self.status.recovering.load(Ordering::Acquire))
            {
                decided.refuse(|| self.not_writing());
                return;
            }
        }
    }

    /// After a commit whose outcome is unknown: re-creates the producer (which has the
    /// transaction coordinator finish the transaction one way or the other) and rebuilds
    /// the index from the state topic, then answers each caller with what really happened
    /// ([`committed`]). If that cannot be learned within [`OUTCOME_DEADLINE`], the callers
    /// get [`Error::OutcomeUnknown`] (never "not written") while the recovery goes on: it
    /// is never cut short, since a producer left initialising in the background could
    /// fence the one that replaces it. A fence is an unknown outcome too: the commit may
    /// have landed before the other writer took over.
    async fn resolve(
        &mut self,
        accepted: Vec<Accepted>,
        written: Written,
        e: Error,
        queue: &mut mpsc::Receiver<Pending>,
        shutdown: &CancellationToken,
    ) {
        let text = e.to_string();
        tracing::warn!(error = %text, "commit outcome unknown; resolving it before answering");
        let unknown = |accepted| answer_all(accepted, || Error::OutcomeUnknown(text.clone()));
        if self.status.fenced.load(Ordering::Acquire) {
            unknown(accepted);
            return;
        }
        let mut waiting = Some(accepted);
        let in_time = {
            let recovery = self.recover_producer(queue, shutdown);
            tokio::pin!(recovery);
            tokio::select! {
                recovered = &mut recovery => recovered,
                () = tokio::time::sleep(OUTCOME_DEADLINE) => {
                    // The callers are answered now; the recovery goes on.
                    if let Some(accepted) = waiting.take() {
                        unknown(accepted);
                    }
                    recovery.await;
                    false
                }
            }
        };
        let Some(accepted) = waiting else {
            return;
        };
        if !in_time
            || self.status.recovering.load(Ordering::Acquire)
            || self.status.fenced.load(Ordering::Acquire)
        {
            unknown(accepted);
            return;
        }
        let changes: Vec<(&str, Facet, i64, &str)> = accepted
            .iter()
            .map(|a| {
                let m = &a.record.meta;
                (
                    m.cluster_id.as_str(),
                    a.record.facet(),
                    m.version,
                    m.hash.as_str(),
                )
            })
            .collect();
        let outcome = committed(&*self.index.read().await, &changes);
        tracing::warn!(
            committed = outcome,
            changes = accepted.len(),
            "commit outcome resolved"
        );
        if outcome {
            // The rebuilt index already holds these records; answer as a commit does.
            for (i, a) in accepted.into_iter().enumerate() {
                let offset = written.offsets.get(i).copied().unwrap_or(-1);
                let appended = appended_of(&a, offset);
                for r in a.reply_to {
                    let _ = r.send(Ok(Outcome {
                        appended: appended.clone(),
                        written: true,
                    }));
                }
            }
        } else {
            answer_all(accepted, || {
                Error::Unavailable(format!("the transaction was aborted ({text})"))
            });
        }
    }

    /// Writes every history record, then every state record (with its recent request ids),
    /// in one transaction. Returns what was written, known only once committed; a failure
    /// before the commit was asked for is [`CommitFailure::NotCommitted`], one during it
    /// [`CommitFailure::Unknown`].
    async fn commit(&self, accepted: &[Accepted]) -> std::result::Result<Written, CommitFailure> {
        let timeout = self.clients.config().request_timeout() * 3;
        let started = std::time::Instant::now();
        let producer = match self.producer.clone() {
            Some(p) => p,
            None => {
                return Err(CommitFailure::NotCommitted(Error::Unavailable(
                    "this instance is not the writer now".into(),
                )));
            }
        };
        let p = producer.clone();
        let produced = match blocking(move || p.begin_transaction()).await {
            Ok(()) => self.produce_all(&producer, accepted).await,
            Err(e) => Err(e),
        };
        let produce_ms = started.elapsed().as_secs_f64() * 1e3;
        let e = match produced {
            Ok(written) => {
                let p = producer.clone();
                let committed = blocking(move || {
                    settle_deliveries(&p);
                    p.commit_transaction(timeout)
                })
                .await;
                tracing::debug!(
                    produce_ms,
                    commit_ms = started.elapsed().as_secs_f64() * 1e3 - produce_ms,
                    "transaction written"
                );
                return match committed {
                    Ok(()) => Ok(written),
                    Err(e) => {
                        self.classify(&e);
                        // The coordinator may have committed: only a fresh producer
                        // learns the outcome.
                        Err(CommitFailure::Unknown(e, written))
                    }
                };
            }
            Err(e) => e,
        };
        self.classify(&e);
        if !self.status.fenced.load(Ordering::Acquire) {
            let p = producer.clone();
            if let Err(abort) = blocking(move || p.abort_transaction(timeout)).await {
                tracing::warn!(error = %abort, "abort failed");
            }
        }
        Err(CommitFailure::NotCommitted(e))
    }

    /// Sends every history record and every state record of the transaction. A state
    /// record carries its key's idempotency window (client-keyed requests only) in a
    /// header; a window that gains an entry needs that change's history offset, so only a
    /// transaction with keyed changes waits for the history deliveries before sending the
    /// state records; otherwise both go out at once.
    async fn produce_all(
        &self,
        producer: &FutureProducer,
        accepted: &[Accepted],
    ) -> Result<Written> {
        // The Kafka timestamp of every record is its write time (when this transaction
        // was formed, by the ledger's clock); the event time is the record's `ts`. The
        // projections tell from it when a late record re-billed an hour.
        let written_at = self.clock.now().timestamp_millis();
        let mut history = Vec::with_capacity(accepted.len());
        for a in accepted {
            let key = HistoryKey::new(
                &a.record.meta.cluster_id,
                a.record.facet(),
                a.record.meta.version,
            )
            .to_string();
            let rec = FutureRecord::to(&self.layout.history)
                .key(&key)
                .payload(&a.payload)
                .partition(a.partition)
                .timestamp(written_at);
            history.push(
                producer
                    .send_result(rec)
                    .map_err(|(e, _)| Error::kafka("produce history", e))?,
            );
        }
        let mut offsets = Vec::with_capacity(accepted.len());
        if accepted.iter().any(|a| a.keyed) {
            offsets = delivered_offsets(std::mem::take(&mut history), "produce history").await?;
        }
        let index = self.index.read().await;
        let mut recents: HashMap<StateKey, VecDeque<RecentRequest>> = HashMap::new();
        let mut state = Vec::with_capacity(accepted.len());
        for (i, a) in accepted.iter().enumerate() {
            let k = StateKey {
                cluster_id: a.record.meta.cluster_id.clone(),
                facet: a.record.facet(),
            };
            let recent = recents.entry(k.clone()).or_insert_with(|| {
                index
                    .head(&k.cluster_id, k.facet)
                    .map(|h| h.recent.clone())
                    .unwrap_or_default()
            });
            if a.keyed {
                recent.push_back(RecentRequest {
                    request_id: a.request_id.clone(),
                    digest: a.digest.clone(),
                    result: appended_of(a, offsets[i]),
                });
                trim_window(
                    recent,
                    self.config.idempotency_window,
                    self.config.idempotency_window_ms,
                );
            }
            let header = if recent.is_empty() {
                None
            } else {
                Some(serde_json::to_vec(&recent).unwrap_or_default())
            };
            let key = k.to_string();
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
                producer
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
        if let Some((code, reason)) = self
            .producer
            .as_ref()
            .and_then(|p| p.client().fatal_error())
        {
            tracing::warn!(?code, reason, "producer has a fatal error");
            fenced |= is_fence(Some(code));
        }
        if fenced && !self.status.fenced.swap(true, Ordering::AcqRel) {
            tracing::error!(transactional_id = %self.txn_id, "fenced: a newer producer of the writer's transactional id exists; standing down");
            self.metrics.fenced.inc();
        }
    }

    /// After a failed transaction: a fresh producer (which aborts anything pending) and an
    /// index rebuilt from the state topic, so an unknown outcome cannot cause a duplicate
    /// version. Retried with capped back-off (0.4 s doubling to 5 s) for as long as it
    /// takes, or until shutdown; writes answer [`Error::Unavailable`] meanwhile. Only a
    /// fence ends it for good.
    async fn recover_producer(
        &mut self,
        queue: &mut mpsc::Receiver<Pending>,
        shutdown: &CancellationToken,
    ) -> bool {
        self.status.recovering.store(true, Ordering::Release);
        let mut attempt = 0u32;
        let mut recovered = false;
        loop {
            attempt += 1;
            let result = {
                let (election, clients, txn_id) = (&self.election, &self.clients, &self.txn_id);
                let attempt = async {
                    // Only while the group still confirms this instance as the writer: a
                    // new producer would fence the instance that replaced this one.
                    if !election.confirm().await {
                        return Err(Error::NotWriter { writer: None });
                    }
                    let producer = new_transactional_producer(clients, txn_id).await?;
                    let index = rebuild_index(&self.clients, &self.layout, &self.codec).await?;
                    Ok::<_, Error>((producer, index))
                };
                tokio::pin!(attempt);
                loop {
                    tokio::select! {
                        r = &mut attempt => break r,
                        Some(p) = queue.recv() => refuse_while_recovering(p),
                    }
                }
            };
            match result {
                Ok((producer, index)) => {
                    self.producer = Some(producer);
                    *self.index.write().await = index;
                    tracing::info!(
                        attempt,
                        "producer re-created and index rebuilt; accepting writes"
                    );
                    recovered = true;
                    break;
                }
                Err(Error::NotWriter { .. }) => {
                    tracing::warn!(
                        "the group did not confirm this instance as the writer; standing down"
                    );
                    self.status.fenced.store(true, Ordering::Release);
                    self.unconfirmed.store(true, Ordering::Release);
                    break;
                }
                Err(e) => {
                    self.classify(&e);
                    if self.status.fenced.load(Ordering::Acquire) {
                        break;
                    }
                    let backoff = Duration::from_millis(200 * 2u64.pow(attempt.min(8)))
                        .min(Duration::from_secs(5));
                    tracing::warn!(attempt, error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "re-creating the producer failed; writes answer 503 until it succeeds");
                    let sleep = tokio::time::sleep(backoff);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = &mut sleep => break,
                            Some(p) = queue.recv() => refuse_while_recovering(p),
                        }
                    }
                    if shutdown.is_cancelled() {
                        break;
                    }
                }
            }
        }
        self.status.recovering.store(false, Ordering::Release);
        recovered
    }

    async fn publish(&self, accepted: Vec<Accepted>, written: Written) {
        let mut index = self.index.write().await;
        for (a, offset) in accepted.into_iter().zip(written.offsets) {
            let appended = appended_of(&a, offset);
            let key = StateKey {
                cluster_id: a.record.meta.cluster_id.clone(),
                facet: a.record.facet(),
            };
            tracing::debug!(cluster_id = %key.cluster_id, facet = %key.facet, version = appended.version, partition = appended.partition, offset, "appended");
            // The window as written with the key's last record of this transaction.
            let recent = written.recents.get(&key).cloned().unwrap_or_default();
            index.install(Head {
                record: a.record,
                appended: appended.clone(),
                recent,
            });
            for r in a.reply_to {
                let _ = r.send(Ok(Outcome {
                    appended: appended.clone(),
                    written: true,
                }));
            }
        }
    }
}

/// How long after a fence the writer waits before taking over again (if the election
/// still assigns it the partition): longer than a heartbeat, so a member the group moved
/// on from learns so first.
const RETRY_TAKE_OVER: Duration = Duration::from_secs(3);

/// How long after a take-over that failed (the coordinator or a broker away, the
/// membership not confirmed) the writer tries again while still assigned the partition.
const RETRY_FAILED_TAKE_OVER: Duration = Duration::from_millis(500);

/// Answers a change that reached the queue after this instance stopped being the writer:
/// it was never admitted, so it is truly not written.
fn refuse_not_writer(p: Pending) {
    let _ = p.reply.send(Err(Error::NotWriter { writer: None }));
}

/// Answers a change that reached the queue while the producer is being re-created: it was
/// never admitted, so it is truly not written. (A change submitted while recovering is
/// refused before it is queued; these were queued just before.)
fn refuse_while_recovering(p: Pending) {
    let _ = p.reply.send(Err(Error::Unavailable(
        "the writer is re-connecting to Kafka after a failed transaction".into(),
    )));
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
    Appended::of(&a.record, a.partition, offset)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unavailable(format!("producer task failed: {e}")))?
        .map_err(|e| Error::kafka("transaction", e))
}

pub(crate) async fn new_transactional_producer(
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use fleetledger_schemas::{CapacityState, FacetState, RecordMeta};

    use super::*;

    fn head(cluster: &str, version: i64, hash: &str) -> Head {
        let record = StateRecord {
            meta: RecordMeta {
                cluster_id: cluster.into(),
                version,
                writer: "capacity-controller".into(),
                request_id: format!("r{version}"),
                reason: None,
                ts: chrono::DateTime::from_timestamp_millis(0).unwrap(),
                prev_hash: String::new(),
                hash: hash.into(),
            },
            state: FacetState::Capacity(Arc::new(CapacityState {
                satellite: "s".into(),
                k8s_cluster: "k".into(),
                node_pool: "p".into(),
            })),
        };
        Head {
            appended: Appended::of(&record, 0, -1),
            record,
            recent: VecDeque::new(),
        }
    }

    #[test]
    fn a_transaction_committed_exactly_when_the_index_holds_its_last_versions() {
        let mut index = Index::default();
        index.install(head("lkc-a", 3, "h3"));
        let cap = Facet::Capacity;
        // Versions 2 and 3 of lkc-a in one transaction; the index holds 3 with its hash.
        assert!(committed(
            &index,
            &[("lkc-a", cap, 2, "h2"), ("lkc-a", cap, 3, "h3")]
        ));
        // The index still holds the version before: the transaction was aborted.
        assert!(!committed(&index, &[("lkc-a", cap, 4, "h4")]));
        // Same version, another hash: not ours.
        assert!(!committed(&index, &[("lkc-a", cap, 3, "other")]));
        // A cluster the index does not know at all.
        assert!(!committed(&index, &[("lkc-b", cap, 1, "h1")]));
        // Several keys: one of them is enough evidence (all or nothing).
        assert!(committed(
            &index,
            &[("lkc-b", cap, 1, "h1"), ("lkc-a", cap, 3, "h3")]
        ));
    }
}
