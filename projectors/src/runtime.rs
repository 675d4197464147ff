//! The projection runtime: consumes the history topic (read_committed) from the offsets of
//! the last checkpoints, applies records in partition order, and checkpoints every N
//! records or T milliseconds and at shutdown.
//!
//! One consumer feeds every projection; each projection has its own checkpoint file with
//! its own offsets, and a record is applied to a projection only if its offset is at or
//! after that projection's next offset. So projections checkpointed at different moments,
//! or one being rebuilt, stay exact: nothing is applied twice or skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetledger_ledger::{
    Clock, HistoryHint, HistoryKey, KafkaClients, LedgerConsumer, SystemClock, TopicLayout,
    facet_of_key,
};
use fleetledger_schemas::{FacetState, RecordCodec};
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audit::{AUDIT_SEGMENTS, AuditLog, AuditRow, audit_batch, audit_schema};
use crate::billing_hours::BillingHours;
use crate::checkpoint::{CheckpointStore, DirectoryLock, HistoryMarks, RecordMark};
use crate::clusters::Clusters;
use crate::error::{Error, Result};
use crate::name::ProjectionName;
use crate::record::HistoryRecord;
use crate::segments::{Retired, Segment};

/// Settings of the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectorConfig {
    /// Directory of the checkpoint files.
    pub dir: PathBuf,
    /// Checkpoint after this many applied records.
    pub checkpoint_every_records: u64,
    /// Checkpoint at least this often while records arrive, in milliseconds.
    pub checkpoint_every_ms: u64,
    /// Most records decoded and applied per batch.
    pub batch_max: usize,
    /// How long a projection file that no checkpoint names any more is kept for the
    /// queries that planned with it, in milliseconds (longer than the SQL time limit).
    pub retired_grace_ms: u64,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            dir: PathBuf::from("data/projections"),
            checkpoint_every_records: 100_000,
            checkpoint_every_ms: 10_000,
            batch_max: 5_000,
            retired_grace_ms: 120_000,
        }
    }
}

/// Every projection's state and the offsets it has applied.
#[derive(Debug, Default)]
pub struct Projections {
    /// `clusters`.
    pub clusters: Clusters,
    /// `billing_hours`.
    pub billing: BillingHours,
    /// `audit_log`.
    pub audit: AuditLog,
    /// Projection name → partition → next offset to apply.
    pub offsets: BTreeMap<ProjectionName, BTreeMap<i32, i64>>,
    /// The last record applied in each partition (saved with the checkpoints).
    pub marks: HistoryMarks,
    /// Records each projection applied since the process started, in the order of
    /// [`ProjectionName::ALL`].
    pub applied: [u64; 3],
}

impl Projections {
    /// Applies `h` to every projection that has not applied its offset yet (the audit
    /// log, last, takes the record over). If `billing_hours` cannot apply it (its point
    /// files cannot be read), neither it nor the audit log counts the record as applied:
    /// the error stops the runtime, which starts again from there.
    pub fn apply(&mut self, h: HistoryRecord) -> Result<()> {
        self.mark(&h);
        if self.advance(ProjectionName::Clusters, h.partition, h.offset) {
            self.clusters.apply(&h);
        }
        if self.advance(ProjectionName::BillingHours, h.partition, h.offset)
            && let Err(e) = self.billing.apply(&h)
        {
            if let Some(next) = self
                .offsets
                .get_mut(&ProjectionName::BillingHours)
                .and_then(|o| o.get_mut(&h.partition))
            {
                *next = h.offset;
            }
            return Err(e);
        }
        if self.advance(ProjectionName::AuditLog, h.partition, h.offset) {
            self.audit.apply(h);
        }
        Ok(())
    }

    /// Remembers `h` as the last record read from its partition.
    fn mark(&mut self, h: &HistoryRecord) {
        let key = HistoryKey::new(
            &h.record.meta.cluster_id,
            h.record.facet(),
            h.record.meta.version,
        );
        let mark = self.marks.entry(h.partition).or_insert_with(|| RecordMark {
            offset: -1,
            key: String::new(),
            timestamp_ms: 0,
        });
        // At or after the mark: a record re-applied at the mark's own offset (after a
        // rebuild) is the one that stands there now.
        if h.offset >= mark.offset {
            mark.offset = h.offset;
            mark.key.clear();
            std::fmt::Write::write_fmt(&mut mark.key, format_args!("{key}")).ok();
            mark.timestamp_ms = h.written_at_ms;
        }
    }

    /// Whether `name` has yet to apply `offset` of `partition`; if so, marks it applied.
    fn advance(&mut self, name: ProjectionName, partition: i32, offset: i64) -> bool {
        let next = self
            .offsets
            .entry(name)
            .or_default()
            .entry(partition)
            .or_insert(0);
        if offset < *next {
            return false;
        }
        *next = offset + 1;
        if let Some(i) = ProjectionName::ALL.iter().position(|n| *n == name) {
            self.applied[i] += 1;
        }
        true
    }

    /// Marks `offset` of `partition` as consumed without a record (an erased one).
    pub fn skip(&mut self, partition: i32, offset: i64) {
        for name in ProjectionName::ALL {
            self.advance(name, partition, offset);
        }
    }

    /// The offset to start consuming `partition` from: the lowest next offset of all.
    fn start_offset(&self, partition: i32) -> i64 {
        ProjectionName::ALL
            .iter()
            .map(|n| {
                self.offsets
                    .get(n)
                    .and_then(|o| o.get(&partition))
                    .copied()
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0)
    }

    fn reset(&mut self, name: ProjectionName) {
        match name {
            ProjectionName::Clusters => self.clusters = Clusters::default(),
            ProjectionName::BillingHours => {
                self.billing = BillingHours {
                    files: std::mem::take(&mut self.billing.files),
                    ..BillingHours::default()
                };
            }
            ProjectionName::AuditLog => {
                self.audit = AuditLog::new(std::mem::take(&mut self.audit.files));
            }
        }
        if let Some(o) = self.offsets.get_mut(&name) {
            o.clear();
        }
        // With nothing applied any more, the marks name nothing the projections rest on
        // (the topic may be another one now: `project rebuild all` is how a re-created
        // history is taken on).
        if self.offsets.values().all(BTreeMap::is_empty) {
            self.marks.clear();
        }
    }
}

/// Progress of a catch-up (rebuild).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Records applied so far.
    pub done: u64,
    /// Records to apply in all (approximate: offsets include transaction markers).
    pub total: u64,
    /// Time since the start.
    pub elapsed: Duration,
}

/// Consumes history into [`Projections`].
#[derive(Debug, Clone)]
pub struct Projector {
    clients: KafkaClients,
    layout: TopicLayout,
    codec: Arc<RecordCodec>,
    store: CheckpointStore,
    config: ProjectorConfig,
    shared: Arc<RwLock<Projections>>,
    lag: Arc<Mutex<BTreeMap<i32, i64>>>,
    /// One checkpoint at a time; the files the last ones retired.
    checkpointing: Arc<Mutex<Retired>>,
    /// Partition → why its projection stopped.
    stopped: Arc<Mutex<BTreeMap<i32, String>>>,
    /// What is wrong with the projections now, and how often the runtime restarted.
    health: Arc<Mutex<Health>>,
    /// This process's hold on the checkpoint directory.
    _lock: Arc<DirectoryLock>,
    /// Now, for the billing hours that close as time passes.
    clock: Arc<dyn Clock>,
    /// When the last record was applied: history is quiet after [`QUIET_AFTER`].
    last_record: Arc<Mutex<Instant>>,
    /// The ledger's latest states, in `serve`: a record's state that the ledger holds is
    /// applied as the ledger's copy ([`Projector::with_head_states`]).
    head_states: Option<fleetledger_ledger::HeadStates>,
}

/// History without a record for this long is quiet: billing days close by the clock alone
/// ([`BillingHours::flush_target`]).
const QUIET_AFTER: Duration = Duration::from_secs(600);

/// The projector's health as [`Projector::degraded`] and [`Projector::restarts`] report it.
#[derive(Debug, Default)]
struct Health {
    /// Projections rebuilding after an unusable checkpoint → why.
    degraded: BTreeMap<ProjectionName, String>,
    /// The last error that stopped the runtime, until it applies records again.
    failing: Option<String>,
    /// Restarts after an error since the start.
    restarts: u64,
}

/// The `audit_log` checkpoint: the latest state per cluster+facet and the segments that
/// hold its rows (a checkpoint writes the rows new since the last one as a new segment).
#[derive(Debug, Serialize, Deserialize)]
struct AuditCheckpoint<L> {
    last: L,
    segments: Vec<Segment>,
}

/// Audit segments smaller than this are merged, four of a size class (a power of four of
/// rows) at a time, into one, streaming ([`SegmentDir::merge_sorted`]): a live service
/// that checkpoints a few rows every few seconds does not end with a file per checkpoint.
/// Larger ones (an import's or a rebuild's, about 100k rows each) stay as written until
/// their month closes ([`audit_month_run`]).
///
/// Why not larger tiers: a segment is sorted by cluster, so its row groups each span the
/// segment's whole time range. With tiers up to 1.6M rows (a cap of 1 << 20), one-cluster
/// lookups at 10M records got faster (audit 90 → 35 ms, history 266 → 158 ms, recovery
/// 116 → 57 ms) but "the last 20 changes by a writer" (`ORDER BY ts DESC LIMIT 20`) went
/// from 19 to 236 ms: it can no longer stop at the newest few days' file. Merging by
/// closed month instead keeps the newest month in its small files.
///
/// [`SegmentDir::merge_sorted`]: crate::segments::SegmentDir::merge_sorted
const AUDIT_MERGE_ROWS: u64 = 65_536;

/// The most a catch-up spaces its checkpoints out, as a multiple of
/// [`ProjectorConfig::checkpoint_every_records`] ([`Projector::catch_up`]): the rows held
/// between two checkpoints (the audit rows, the billing hours) stay bounded by it.
const CATCH_UP_CHECKPOINT_SPREAD: u64 = 4;

impl Projector {
    /// A projector whose projections start from their checkpoints in `config.dir`. A
    /// corrupt or foreign checkpoint affects only its projection: that one is rebuilt from
    /// the start of history (logged, and [`Projector::degraded`] says so until it has
    /// caught up once), the others go on from theirs. It holds the directory's lock for
    /// the topic while it (or a clone) lives: another process's projector on the same
    /// directory and topic is [`Error::DirectoryInUse`].
    pub fn open(
        clients: KafkaClients,
        layout: TopicLayout,
        codec: Arc<RecordCodec>,
        config: ProjectorConfig,
    ) -> Result<Self> {
        let store = CheckpointStore::new(&config.dir, &layout.history, layout.partitions);
        let lock = Arc::new(DirectoryLock::take(&config.dir, &layout.history)?);
        let mut p = Projections {
            marks: store.load_marks(),
            ..Projections::default()
        };
        let mut degraded = BTreeMap::new();
        // A bad checkpoint costs its projection a rebuild, never the others their state.
        let mut usable = |name: ProjectionName, e: Error| -> Result<()> {
            match e {
                Error::Checkpoint { message, .. } => {
                    tracing::error!(projection = name.as_str(), %message, "unusable checkpoint; rebuilding this projection from the start of history");
                    degraded.insert(
                        name,
                        format!("rebuilding from history: its checkpoint was unusable ({message})"),
                    );
                    Ok(())
                }
                other => Err(other),
            }
        };
        match store.load::<Clusters>(ProjectionName::Clusters) {
            Ok(Some(cp)) => {
                p.clusters = cp.state;
                p.offsets.insert(ProjectionName::Clusters, cp.offsets);
            }
            Ok(None) => {}
            Err(e) => usable(ProjectionName::Clusters, e)?,
        }
        let billing_files = store.segments(ProjectionName::BillingHours);
        p.billing.files = billing_files.clone();
        let billing = store
            .load::<BillingHours>(ProjectionName::BillingHours)
            .and_then(|cp| {
                let Some(cp) = cp else { return Ok(None) };
                check_segments(
                    &store,
                    ProjectionName::BillingHours,
                    &billing_files,
                    &cp.state.hour_segments().cloned().collect::<Vec<_>>(),
                )?;
                Ok(Some(cp))
            });
        match billing {
            Ok(Some(cp)) => {
                p.billing = BillingHours {
                    files: billing_files.clone(),
                    ..cp.state
                };
                p.offsets.insert(ProjectionName::BillingHours, cp.offsets);
            }
            Ok(None) => {}
            Err(e) => usable(ProjectionName::BillingHours, e)?,
        }
        let audit_files = store.segments(ProjectionName::AuditLog);
        p.audit = AuditLog::new(audit_files.clone());
        let audit = store
            .load::<AuditCheckpoint<BTreeMap<String, serde_json::Value>>>(ProjectionName::AuditLog)
            .and_then(|cp| {
                let Some(cp) = cp else { return Ok(None) };
                let log =
                    AuditLog::from_parts(audit_files.clone(), cp.state.segments, cp.state.last)
                        .map_err(|message| Error::Checkpoint {
                            path: store.path(ProjectionName::AuditLog),
                            projection: ProjectionName::AuditLog.to_string(),
                            message,
                        })?;
                check_segments(
                    &store,
                    ProjectionName::AuditLog,
                    &audit_files,
                    &log.segments,
                )?;
                Ok(Some((log, cp.offsets)))
            });
        match audit {
            Ok(Some((log, offsets))) => {
                p.audit = log;
                p.offsets.insert(ProjectionName::AuditLog, offsets);
            }
            Ok(None) => {}
            Err(e) => usable(ProjectionName::AuditLog, e)?,
        }
        // Files of checkpoints that never became durable, or retired before a crash.
        let named = p.audit.segments.iter().map(|s| s.name.as_str()).collect();
        audit_files.remove_unnamed(&named)?;
        let named = p.billing.file_names().collect();
        billing_files.remove_unnamed(&named)?;
        store.remove_legacy_rows(ProjectionName::AuditLog)?;
        Ok(Projector {
            clients,
            layout,
            codec,
            store,
            config,
            shared: Arc::new(RwLock::new(p)),
            lag: Arc::new(Mutex::new(BTreeMap::new())),
            checkpointing: Arc::new(Mutex::new(Retired::default())),
            stopped: Arc::new(Mutex::new(BTreeMap::new())),
            health: Arc::new(Mutex::new(Health {
                degraded,
                ..Health::default()
            })),
            _lock: lock,
            clock: Arc::new(SystemClock),
            last_record: Arc::new(Mutex::new(Instant::now())),
            head_states: None,
        })
    }

    /// Whether history has been quiet for [`QUIET_AFTER`].
    fn quiet(&self) -> bool {
        self.last_record
            .lock()
            .map(|t| t.elapsed() >= QUIET_AFTER)
            .unwrap_or(false)
    }

    /// The same projector with `clock` as now (tests and `serve` inject the ledger's).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The same projector applying each record's state as `states`' copy when the ledger
    /// of this process holds that record as the latest of its cluster+facet (`serve`):
    /// `audit_log` and `clusters` then share the ledger's latest states instead of holding
    /// equal ones of their own. The projections are the same either way.
    pub fn with_head_states(mut self, states: fleetledger_ledger::HeadStates) -> Self {
        self.head_states = Some(states);
        self
    }

    /// Makes the projections hold the ledger's copy ([`Projector::with_head_states`]) of
    /// each latest state equal to theirs. Restored from their checkpoints, `clusters` and
    /// `audit_log` each hold a copy of every latest state beside the ledger's index, read
    /// from the state topic: this leaves one (at 10M records, 26,365 clusters: RSS after a
    /// restart 280 → 222 MiB). It takes 200–330 ms there, so it goes a few hundred
    /// clusters per hold of the projections' lock: queries and the applier wait for one
    /// step, not the whole. Returns how many states are shared; 0 without head states.
    pub async fn share_head_states(&self) -> usize {
        /// Clusters per hold of the lock.
        const STEP: usize = 512;
        let Some(states) = &self.head_states else {
            return 0;
        };
        let ids: Vec<String> = {
            let p = self.shared.read().await;
            let ids: BTreeSet<&String> = p
                .clusters
                .rows
                .keys()
                .chain(p.audit.cluster_ids())
                .collect();
            ids.into_iter().cloned().collect()
        };
        let mut shared = |id: &str, state: &FacetState| states.equal_state(id, state);
        let mut n = 0;
        for step in ids.chunks(STEP) {
            let mut p = self.shared.write().await;
            n += p.clusters.share_states(step, &mut shared);
            n += p.audit.share_states(step, &mut shared);
        }
        n
    }

    /// The projections, for consistent reads (hold the read lock for one snapshot).
    pub fn projections(&self) -> Arc<RwLock<Projections>> {
        self.shared.clone()
    }

    /// Where `cluster_id`'s records are in `partition` of the history topic, as far as the
    /// `audit_log` projection has applied it: the offsets of its rows (from the row groups
    /// of its segments that may hold the cluster, and from memory), and the offset from
    /// which nothing is indexed yet (the caller reads from there to the end). If a segment
    /// cannot be read, the hint says nothing is indexed (the caller reads the partition)
    /// and the error is logged.
    pub async fn history_hint(&self, cluster_id: &str, partition: i32) -> HistoryHint {
        let (files, segments, mut offsets, indexed_to) = {
            let p = self.shared.read().await;
            let offsets: Vec<i64> = p
                .audit
                .memory_rows()
                .filter(|r| r.partition == partition && r.cluster_id == cluster_id)
                .map(|r| r.offset)
                .collect();
            let indexed_to = p
                .offsets
                .get(&ProjectionName::AuditLog)
                .and_then(|o| o.get(&partition))
                .copied()
                .unwrap_or(0);
            (
                p.audit.files.clone(),
                p.audit.segments.clone(),
                offsets,
                indexed_to,
            )
        };
        let id = cluster_id.to_owned();
        let on_disk = tokio::task::spawn_blocking(move || {
            crate::audit::segment_offsets(&files, &segments, &id, partition)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|found| found.map_err(|e| e.to_string()));
        match on_disk {
            Ok(found) => offsets.extend(found),
            Err(error) => {
                tracing::warn!(cluster_id, partition, %error, "cannot read the audit segments; reading the whole partition instead");
                return HistoryHint {
                    offsets: Vec::new(),
                    indexed_to: 0,
                };
            }
        }
        offsets.sort_unstable();
        offsets.dedup();
        HistoryHint {
            offsets,
            indexed_to,
        }
    }

    /// Every `audit_log` row, from its segments and memory, in (partition, offset) order:
    /// for tests and tools (it reads every segment).
    pub async fn audit_rows(&self) -> Result<Vec<AuditRow>> {
        let log = self.shared.read().await.audit.clone();
        tokio::task::spawn_blocking(move || log.all_rows())
            .await
            .map_err(|e| Error::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(e),
            })?
    }

    /// Records behind the end of each partition, as of the last measurement.
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        self.lag.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// How far behind each partition's projections are in time, in seconds: for a
    /// partition with records not yet applied, from the write time of the last record
    /// applied there to `now_ms` (0 for a partition that is caught up).
    pub async fn lag_seconds(&self, now_ms: i64) -> BTreeMap<i32, f64> {
        let lag = self.lag();
        let p = self.shared.read().await;
        lag.into_iter()
            .map(|(partition, records)| {
                let behind = match p.marks.get(&partition) {
                    Some(m) if records > 0 => (now_ms - m.timestamp_ms).max(0) as f64 / 1e3,
                    _ => 0.0,
                };
                (partition, behind)
            })
            .collect()
    }

    /// Forgets `name`'s state and checkpoint, so the next run rebuilds it from offset 0.
    pub async fn reset(&self, name: ProjectionName) -> Result<()> {
        self.store.remove(name)?;
        self.shared.write().await.reset(name);
        Ok(())
    }

    /// Writes every projection's checkpoint atomically. The `audit_log` rows applied since
    /// the last checkpoint become a new segment, which the checkpoint names; small
    /// segments are then merged (see [`AUDIT_MERGE_ROWS`]).
    pub async fn checkpoint(&self) -> Result<()> {
        // A month of billing merged after the save is named by the next checkpoint: one
        // more makes this one's state whole on disk (the second plans no merge, having
        // flushed nothing new).
        for _ in 0..2 {
            if !self.start_checkpoint().finish().await?.unsaved_months {
                break;
            }
        }
        Ok(())
    }

    /// Starts [`Projector::checkpoint`] on a blocking thread and returns at once: the
    /// caller may go on applying while the checkpoint writes its files (the applier waits
    /// only while a checkpoint holds the projections' lock: the billing flush and the
    /// state saves). Nothing is skipped: the rows and offsets a checkpoint saves are taken
    /// together under the lock, and what is applied meanwhile goes to the next one.
    fn start_checkpoint(&self) -> CheckpointInFlight {
        let shared = self.shared.clone();
        let store = self.store.clone();
        let checkpointing = self.checkpointing.clone();
        let grace = Duration::from_millis(self.config.retired_grace_ms);
        // The directory stays locked until the checkpoint ends, even if the projector that
        // started it is dropped meanwhile: no other projector opens in between and takes
        // a segment being named for an orphan.
        let lock = self._lock.clone();
        let now_ms = self.clock.now().timestamp_millis();
        let quiet = self.quiet();
        let span = tracing::info_span!("checkpoint");
        let dir = self.config.dir.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _g = span.enter();
            let started = Instant::now();
            let _lock = lock;
            let mut retired = checkpointing.lock().map_err(|_| Error::Io {
                path: store.path(ProjectionName::AuditLog),
                source: std::io::Error::other("a checkpoint panicked"),
            })?;
            let mut saved = match checkpoint_all(&shared, &store, (now_ms, quiet), &mut retired) {
                Ok(saved) => saved,
                Err(e) => {
                    unseal(&shared);
                    return Err(e);
                }
            };
            for projection in ProjectionName::ALL {
                retired.checkpointed(projection);
            }
            let merged = merge_billing_months(
                &shared,
                std::mem::take(&mut saved.month_merges),
                &mut retired,
            );
            merge_audit_segments(&shared, &store, &saved, &mut retired)?;
            retired.sweep(grace);
            tracing::debug!("checkpoint written");
            Ok(CheckpointWritten {
                took: started.elapsed(),
                unsaved_months: merged,
            })
        });
        CheckpointInFlight { task, dir }
    }

    async fn consumer(&self) -> Result<(fleetledger_ledger::kafka::LedgerConsumer, u64)> {
        let consumer = self.clients.applying_consumer("projector")?;
        let p = self.shared.read().await;
        let mut tpl = TopicPartitionList::new();
        let mut total = 0u64;
        let timeout = self.clients.config().request_timeout();
        for partition in 0..self.layout.partitions {
            let start = p.start_offset(partition);
            let (low, high) = consumer
                .fetch_watermarks(&self.layout.history, partition, timeout)
                .map_err(|e| fleetledger_ledger::Error::Unavailable(format!("watermarks: {e}")))?;
            self.check_fits(&p, partition, low, high)?;
            total += (high - start).max(0) as u64;
            tpl.add_partition_offset(&self.layout.history, partition, Offset::Offset(start))
                .map_err(|e| fleetledger_ledger::Error::Unavailable(format!("assign: {e}")))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| fleetledger_ledger::Error::Unavailable(format!("assign: {e}")))?;
        Ok((consumer, total))
    }

    /// Whether `partition` of the history topic, holding offsets `low..high`, can be the
    /// one the checkpoints were written from: no projection has applied past its end, and
    /// none waits for a record before its start.
    fn check_fits(&self, p: &Projections, partition: i32, low: i64, high: i64) -> Result<()> {
        let applied: Vec<i64> = ProjectionName::ALL
            .iter()
            .filter_map(|n| p.offsets.get(n).and_then(|o| o.get(&partition)).copied())
            .collect();
        let problem = if let Some(max) = applied.iter().copied().max().filter(|m| *m > high) {
            Some(format!(
                "ends at offset {high}, but the projections have applied up to offset {max}"
            ))
        } else {
            applied
                .iter()
                .copied()
                .filter(|o| *o > 0)
                .min()
                .filter(|min| *min < low)
                .map(|min| {
                    format!("starts at offset {low}, but a projection has applied only up to {min}")
                })
        };
        match problem {
            None => Ok(()),
            Some(problem) => Err(Error::HistoryChanged {
                topic: self.layout.history.clone(),
                partition,
                problem,
                dir: self.config.dir.clone(),
            }),
        }
    }

    /// Checks that the history topic is the one the checkpoints were written from (see
    /// [`Error::HistoryChanged`]): `serve` refuses to start otherwise. Its offsets must fit
    /// the checkpoints', and the last record applied in each partition must still stand at
    /// its offset with its key and write time (a topic deleted and re-created since may
    /// have grown past those offsets, with other records).
    pub async fn check_history(&self) -> Result<()> {
        drop(self.consumer().await?);
        self.check_marks().await
    }

    /// The record-level half of [`Projector::check_history`]: reads the record at each
    /// partition's mark that some projection has applied (a projection rebuilt from the
    /// start has applied nothing, so `project rebuild all` starts afresh), and compares.
    async fn check_marks(&self) -> Result<()> {
        let marks: Vec<(i32, RecordMark)> = {
            let p = self.shared.read().await;
            p.marks
                .iter()
                .filter(|(partition, mark)| {
                    ProjectionName::ALL.iter().any(|n| {
                        p.offsets
                            .get(n)
                            .and_then(|o| o.get(partition))
                            .is_some_and(|next| *next > mark.offset)
                    })
                })
                .map(|(partition, mark)| (*partition, mark.clone()))
                .collect()
        };
        if marks.is_empty() {
            return Ok(());
        }
        let unavailable = |what: &str, e: KafkaError| {
            Error::Ledger(fleetledger_ledger::Error::Unavailable(format!(
                "checking the history's records ({what}): {e}"
            )))
        };
        let consumer = self.clients.consumer("projector-check")?;
        let timeout = self.clients.config().request_timeout();
        let mut tpl = TopicPartitionList::new();
        let mut waiting: BTreeMap<i32, RecordMark> = BTreeMap::new();
        for (partition, mark) in marks {
            let (low, _) = consumer
                .fetch_watermarks(&self.layout.history, partition, timeout)
                .map_err(|e| unavailable("watermarks", e))?;
            if mark.offset < low {
                // Retention removed it: nothing left to compare with.
                tracing::warn!(
                    partition,
                    offset = mark.offset,
                    low,
                    "the last applied record is no longer in the history topic; its incarnation is not checked"
                );
                continue;
            }
            tpl.add_partition_offset(&self.layout.history, partition, Offset::Offset(mark.offset))
                .map_err(|e| unavailable("assign", e))?;
            waiting.insert(partition, mark);
        }
        if waiting.is_empty() {
            return Ok(());
        }
        consumer
            .assign(&tpl)
            .map_err(|e| unavailable("assign", e))?;
        let changed = |partition: i32, problem: String| Error::HistoryChanged {
            topic: self.layout.history.clone(),
            partition,
            problem,
            dir: self.config.dir.clone(),
        };
        let deadline = Instant::now() + timeout * 3;
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match tokio::time::timeout(left, consumer.recv()).await {
                Err(_) => {
                    return Err(Error::Ledger(fleetledger_ledger::Error::Unavailable(
                        format!(
                            "checking the history's records: partitions {:?} did not answer within {} s",
                            waiting.keys().collect::<Vec<_>>(),
                            (timeout * 3).as_secs()
                        ),
                    )));
                }
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    if let Some(mark) = waiting.remove(&partition) {
                        return Err(changed(
                            partition,
                            format!(
                                "holds no committed record at offset {} where the projections applied {}",
                                mark.offset, mark.key
                            ),
                        ));
                    }
                    continue;
                }
                Ok(Err(e)) => return Err(unavailable("read", e)),
                Ok(Ok(msg)) => msg,
            };
            let Some(mark) = waiting.remove(&msg.partition()) else {
                continue;
            };
            let key = String::from_utf8_lossy(msg.key().unwrap_or_default());
            let timestamp = msg.timestamp().to_millis();
            if msg.offset() != mark.offset
                || key != mark.key
                || timestamp.is_some_and(|t| t != mark.timestamp_ms)
            {
                return Err(changed(
                    msg.partition(),
                    format!(
                        "holds {key} (written at {}) at offset {}, but the projections applied {} (written at {}) at offset {}",
                        timestamp.unwrap_or(-1),
                        msg.offset(),
                        mark.key,
                        mark.timestamp_ms,
                        mark.offset
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Applies history until every partition reached its end as of the start, reporting
    /// progress and checkpointing as it goes (every
    /// [`ProjectorConfig::checkpoint_every_records`], spaced out when checkpoints grow
    /// slow, see [`CATCH_UP_CHECKPOINT_SPREAD`]), then checkpoints. Returns the number of
    /// records applied, or the first [`Error::Decode`] once the other partitions are
    /// done: a partition with an undecodable record stops there, the others are applied
    /// to their end.
    pub async fn catch_up(&self, progress: impl FnMut(Progress)) -> Result<u64> {
        let mut in_flight = None;
        let caught_up = self.apply_to_end(progress, &mut in_flight).await;
        // A checkpoint still being written ends before this returns, whatever happened.
        if let Some(checkpoint) = in_flight {
            let written = checkpoint.finish().await;
            if caught_up.is_ok() {
                written?;
            }
        }
        let (done, first_failure) = caught_up?;
        let t = Instant::now();
        self.checkpoint().await?;
        tracing::info!(
            records = done,
            checkpoint_ms = t.elapsed().as_millis() as u64,
            "caught up with the history"
        );
        match first_failure {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// The loop of [`Projector::catch_up`], up to its last checkpoint: returns the records
    /// applied and the first [`Error::Decode`]. A checkpoint is written while the next
    /// records are applied ([`Projector::start_checkpoint`]); the one being written when
    /// this returns is left in `in_flight`, and at most one is written at a time.
    async fn apply_to_end(
        &self,
        mut progress: impl FnMut(Progress),
        in_flight: &mut Option<CheckpointInFlight>,
    ) -> Result<(u64, Option<Error>)> {
        let (consumer, total) = self.consumer().await?;
        let mut ahead = self.read_ahead(Arc::new(consumer), Duration::from_secs(10));
        let started = Instant::now();
        let mut at_end = vec![false; self.layout.partitions as usize];
        let mut done = 0u64;
        let mut since_checkpoint = 0u64;
        // How long the last checkpoint took to write, and when it started.
        let (mut last_checkpoint, mut checkpointed_at) = (Duration::ZERO, Instant::now());
        let mut last_report = Instant::now();
        let mut first_failure = None;
        // Where the rebuild's time goes: waiting for the read-ahead (reading and
        // decoding), applying, and waiting for a checkpoint to end; logged at the end.
        let (mut waiting, mut applying, mut checkpointing) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        while at_end.iter().any(|e| !e) {
            let t = Instant::now();
            let mut batch = ahead.next().await?;
            waiting += t.elapsed();
            let mut ended = batch.eofs.clone();
            for (p, e) in std::mem::take(&mut batch.stopped) {
                ended.push(p);
                // A stopped partition no longer holds billing's watermark back:
                // `apply_decoded` marks it with the batch's ended partitions.
                batch.eofs.push(p);
                tracing::error!(partition = p, error = %e, "projection of this partition stopped at an undecodable record");
                if let Ok(mut s) = self.stopped.lock() {
                    s.entry(p).or_insert_with(|| e.to_string());
                }
                first_failure.get_or_insert(e);
            }
            let t = Instant::now();
            let n = self.apply_decoded(batch).await? as u64;
            done += n;
            since_checkpoint += n;
            applying += t.elapsed();
            // What is final goes to disk as the rebuild goes: memory stays bounded. A
            // checkpoint's cost grows with the state (every cluster's is saved) while the
            // records between two stay as many: once checkpoints take longer than half the
            // time between their starts, they are spaced out, up to
            // CATCH_UP_CHECKPOINT_SPREAD times the records.
            let every = self.config.checkpoint_every_records;
            if since_checkpoint >= every
                && (since_checkpoint >= every.saturating_mul(CATCH_UP_CHECKPOINT_SPREAD)
                    || checkpointed_at.elapsed() >= 2 * last_checkpoint)
            {
                if let Some(previous) = in_flight.take() {
                    let t = Instant::now();
                    last_checkpoint = previous.finish().await?.took;
                    checkpointing += t.elapsed();
                }
                *in_flight = Some(self.start_checkpoint());
                checkpointed_at = Instant::now();
                since_checkpoint = 0;
            } else if in_flight.as_ref().is_some_and(|c| c.task.is_finished())
                && let Some(previous) = in_flight.take()
            {
                last_checkpoint = previous.finish().await?.took;
            }
            for p in ended {
                if let Some(e) = at_end.get_mut(p as usize) {
                    *e = true;
                }
            }
            if last_report.elapsed() >= Duration::from_millis(500) {
                progress(Progress {
                    done,
                    total,
                    elapsed: started.elapsed(),
                });
                last_report = Instant::now();
            }
        }
        progress(Progress {
            done,
            total,
            elapsed: started.elapsed(),
        });
        tracing::info!(
            records = done,
            waiting_for_decoded_ms = waiting.as_millis() as u64,
            applying_ms = applying.as_millis() as u64,
            waiting_for_checkpoints_ms = checkpointing.as_millis() as u64,
            "applied the history to its end"
        );
        Ok((done, first_failure))
    }

    /// Applies history as it arrives until `shutdown`, checkpointing every N records or T
    /// ms, and once more at shutdown. A record that cannot be decoded stops its partition
    /// there (logged, and listed by [`Projector::stopped`]); the other partitions go on.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let (consumer, _) = self.consumer().await?;
        let consumer = Arc::new(consumer);
        let mut ahead = self.read_ahead(consumer.clone(), Duration::from_millis(200));
        let every = Duration::from_millis(self.config.checkpoint_every_ms);
        let mut since_records = 0u64;
        let mut since = Instant::now();
        let result = loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                b = ahead.next() => b,
            };
            let applied = match next {
                Ok(batch) => self.apply_decoded(batch).await,
                Err(e) => Err(e),
            };
            match applied {
                Ok(n) => {
                    if n > 0 {
                        self.with_health(|h| h.failing = None);
                    }
                    since_records += n as u64
                }
                Err(e) => break Err(e),
            }
            // Also without records: billing hours close as time passes.
            let due = since.elapsed() >= every
                && (since_records > 0 || {
                    let now = self.clock.now().timestamp_millis();
                    self.shared
                        .read()
                        .await
                        .billing
                        .flush_due(now, self.quiet())
                });
            if since_records >= self.config.checkpoint_every_records || due {
                self.checkpoint().await?;
                self.measure_lag(&consumer);
                since_records = 0;
                since = Instant::now();
            }
        };
        self.checkpoint().await?;
        if let Err(e) = &result {
            tracing::error!(error = %e, "projection stopped");
        }
        result
    }

    fn measure_lag(&self, consumer: &LedgerConsumer) {
        let timeout = Duration::from_secs(2);
        let Ok(p) = self.shared.try_read() else {
            return;
        };
        let mut lag = BTreeMap::new();
        for partition in 0..self.layout.partitions {
            if let Ok((_, high)) =
                consumer.fetch_watermarks(&self.layout.history, partition, timeout)
            {
                lag.insert(partition, (high - p.start_offset(partition)).max(0));
            }
        }
        let caught_up =
            lag.len() == self.layout.partitions as usize && lag.values().all(|l| *l == 0);
        if let Ok(mut l) = self.lag.lock() {
            *l = lag;
        }
        if caught_up {
            // A projection rebuilt after an unusable checkpoint is whole again.
            self.with_health(|h| h.degraded.clear());
        }
    }

    fn with_health(&self, f: impl FnOnce(&mut Health)) {
        if let Ok(mut h) = self.health.lock() {
            f(&mut h);
        }
    }

    /// Runs the projections until `shutdown`, healing itself: an error that stops
    /// [`Projector::run`] (Kafka, the registry, a checkpoint write) is logged, shown by
    /// [`Projector::degraded`], and the runtime restarts from its last applied offsets
    /// after a back-off (0.5 s doubling to 30 s). It never ends on an error.
    pub async fn run_healing(&self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.run(shutdown.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    let reason = e.to_string();
                    self.with_health(|h| {
                        h.failing = Some(reason.clone());
                        h.restarts += 1;
                    });
                    tracing::warn!(error = %reason, retry_in_ms = backoff.as_millis() as u64, "projections stopped; restarting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// What is wrong with the projections now, one line each: a runtime that failed and
    /// is restarting, a projection rebuilding after an unusable checkpoint, a partition
    /// stopped at an undecodable record. Empty when all is well.
    pub fn degraded(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(h) = self.health.lock() {
            if let Some(f) = &h.failing {
                out.push(format!("projections restarting after: {f}"));
            }
            for (name, why) in &h.degraded {
                out.push(format!("{name}: {why}"));
            }
        }
        for (partition, why) in self.stopped() {
            out.push(format!("partition {partition} stopped: {why}"));
        }
        out
    }

    /// How often the runtime restarted after an error since the start.
    pub fn restarts(&self) -> u64 {
        self.health.lock().map_or(0, |h| h.restarts)
    }

    /// Up to `batch_max` raw records (waiting at most `wait` for the first), and the
    /// partitions that reported their end.
    async fn next_batch(&self, consumer: &LedgerConsumer, wait: Duration) -> Result<RawBatch> {
        let mut batch = RawBatch::default();
        let deadline = tokio::time::Instant::now() + wait;
        while batch.records.len() < self.config.batch_max {
            let limit = if batch.records.is_empty() {
                deadline
            } else {
                tokio::time::Instant::now()
            };
            let msg = match tokio::time::timeout_at(limit, consumer.recv()).await {
                Err(_) => break,
                Ok(Err(KafkaError::PartitionEOF(p))) => {
                    batch.eofs.push(p);
                    if batch.records.is_empty() {
                        break;
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    return Err(fleetledger_ledger::Error::Unavailable(format!(
                        "reading {}: {e}",
                        self.layout.history
                    ))
                    .into());
                }
                Ok(Ok(m)) => m,
            };
            if batch.records.is_empty() {
                // Sized once for a full batch of records like the first (untouched
                // capacity costs no memory); a catch-up fills it.
                let guess = msg.payload().map_or(0, <[u8]>::len) * self.config.batch_max;
                batch.bytes.reserve(guess.min(16 << 20));
                batch.records.reserve(self.config.batch_max);
            }
            let payload = msg.payload().map(|p| {
                let start = batch.bytes.len();
                batch.bytes.extend_from_slice(p);
                start..batch.bytes.len()
            });
            let written_at_ms = msg.timestamp().to_millis();
            batch.records.push(RawRecord {
                partition: msg.partition(),
                offset: msg.offset(),
                written_at_ms,
                facet: msg.key().and_then(facet_of_key),
                payload,
            });
        }
        Ok(batch)
    }

    /// Reads batches on one task and decodes them on another, each up to eight batches
    /// ahead of the next stage, so that reading, decoding and applying overlap. A record that
    /// cannot be decoded stops its partition there (the partition is paused and its later
    /// records are dropped unapplied, so its next offset stays at the bad record); the other
    /// partitions go on. Both tasks end on a read error or when the [`ReadAhead`] is dropped.
    fn read_ahead(&self, consumer: Arc<LedgerConsumer>, wait: Duration) -> ReadAhead {
        let (raw_tx, mut raw_rx) = mpsc::channel::<Result<RawBatch>>(READ_AHEAD_BATCHES);
        let (tx, rx) = mpsc::channel(READ_AHEAD_BATCHES);
        let me = self.clone();
        let reader = consumer.clone();
        let read = tokio::spawn(async move {
            // Where this stage's time goes, logged at its end (debug).
            let (mut reading, mut sending) = (Duration::ZERO, Duration::ZERO);
            loop {
                let t = Instant::now();
                let next = me.next_batch(&reader, wait).await;
                reading += t.elapsed();
                let failed = next.is_err();
                let t = Instant::now();
                if raw_tx.send(next).await.is_err() || failed {
                    break;
                }
                sending += t.elapsed();
            }
            tracing::debug!(
                reading_ms = reading.as_millis() as u64,
                blocked_sending_ms = sending.as_millis() as u64,
                "history reader stopped"
            );
        });
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut stopped: BTreeMap<i32, i64> = BTreeMap::new();
            // Where this stage's time goes, logged at its end (debug).
            let (mut recv_w, mut dec, mut send_w) =
                (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            loop {
                let t = Instant::now();
                let Some(next) = raw_rx.recv().await else {
                    break;
                };
                recv_w += t.elapsed();
                let t = Instant::now();
                let decoded = match next {
                    Ok(batch) => {
                        let d = me.decode_batch(batch, &mut stopped).await;
                        for (partition, _) in &d.stopped {
                            let mut tpl = TopicPartitionList::new();
                            tpl.add_partition(&me.layout.history, *partition);
                            if let Err(e) = consumer.pause(&tpl) {
                                tracing::warn!(partition, error = %e, "cannot pause a stopped partition");
                            }
                        }
                        Ok(d)
                    }
                    Err(e) => Err(e),
                };
                let failed = decoded.is_err();
                dec += t.elapsed();
                let t = Instant::now();
                if tx.send(decoded).await.is_err() || failed {
                    break;
                }
                send_w += t.elapsed();
            }
            tracing::debug!(
                waiting_ms = recv_w.as_millis() as u64,
                decoding_ms = dec.as_millis() as u64,
                blocked_sending_ms = send_w.as_millis() as u64,
                "history decoder stopped"
            );
        });
        ReadAhead {
            rx,
            tasks: [read, task],
        }
    }

    /// Decodes a raw batch. Records of partitions in `stopped` (partition → offset of its
    /// bad record) are dropped; a newly undecodable record stops its partition.
    async fn decode_batch(
        &self,
        batch: RawBatch,
        stopped: &mut BTreeMap<i32, i64>,
    ) -> DecodedBatch {
        let RawBatch {
            bytes,
            records: raw,
            eofs,
        } = batch;
        let mut records = Vec::with_capacity(raw.len());
        let mut newly = Vec::new();
        for RawRecord {
            partition,
            offset,
            written_at_ms,
            facet,
            payload,
        } in raw
        {
            if stopped.contains_key(&partition) {
                continue;
            }
            match payload {
                None => records.push(Err((partition, offset))),
                Some(range) => match self.codec.decode_as(&bytes[range], facet).await {
                    Ok(record) => records.push(Ok(HistoryRecord {
                        written_at_ms: written_at_ms
                            .unwrap_or_else(|| record.meta.ts.timestamp_millis()),
                        record,
                        partition,
                        offset,
                    })),
                    Err(e) => {
                        stopped.insert(partition, offset);
                        newly.push((
                            partition,
                            Error::Decode {
                                topic: self.layout.history.clone(),
                                partition,
                                offset,
                                message: e.to_string(),
                            },
                        ));
                    }
                },
            }
        }
        DecodedBatch {
            records,
            eofs,
            stopped: newly,
        }
    }

    /// Applies a decoded batch under one write lock; returns how many records it held. The
    /// partitions it stopped are logged and kept (see [`Projector::stopped`]).
    async fn apply_decoded(&self, batch: DecodedBatch) -> Result<usize> {
        let DecodedBatch {
            mut records,
            stopped,
            eofs,
        } = batch;
        // Partitions read to their end, or stopped, no longer hold billing's watermark
        // back (after this batch's records).
        let ended: Vec<i32> = eofs
            .into_iter()
            .chain(stopped.iter().map(|(p, _)| *p))
            .collect();
        for (partition, e) in stopped {
            tracing::error!(partition, error = %e, "projection of this partition stopped at an undecodable record; other partitions go on");
            if let Ok(mut s) = self.stopped.lock() {
                s.entry(partition).or_insert_with(|| e.to_string());
            }
        }
        let Some(first) = records.first() else {
            if !ended.is_empty() {
                self.shared.write().await.billing.partitions_at_end(ended);
            }
            return Ok(0);
        };
        let (partition, offset) = match first {
            Ok(h) => (h.partition, h.offset),
            Err(po) => *po,
        };
        let span = tracing::info_span!(
            "projector_batch",
            records = records.len(),
            partition,
            offset
        );
        if let Ok(mut t) = self.last_record.lock() {
            *t = Instant::now();
        }
        if let Some(states) = &self.head_states {
            for h in records.iter_mut().flatten() {
                if let Some(state) = states.same_state(&h.record.meta, h.record.state.facet()) {
                    h.record.state = state;
                }
            }
        }
        async {
            let n = records.len();
            let mut p = self.shared.write().await;
            for d in records {
                match d {
                    Ok(h) => p.apply(h)?,
                    Err((partition, offset)) => p.skip(partition, offset),
                }
            }
            p.billing.partitions_at_end(ended);
            Ok(n)
        }
        .instrument(span)
        .await
    }

    /// Partitions stopped at an undecodable record, with the error naming topic, partition
    /// and offset (`fleetledger project inspect` shows the record).
    pub fn stopped(&self) -> BTreeMap<i32, String> {
        self.stopped.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A batch read and decoded ahead of its application.
#[derive(Debug)]
struct DecodedBatch {
    /// Decoded records; `Err((partition, offset))` is an erased record (tombstone).
    records: Vec<std::result::Result<HistoryRecord, (i32, i64)>>,
    /// Partitions that reported their end after these records.
    eofs: Vec<i32>,
    /// Partitions stopped in this batch at an undecodable record.
    stopped: Vec<(i32, Error)>,
}

/// The receiving end of [`Projector::read_ahead`]; dropping it stops the reader.
#[derive(Debug)]
struct ReadAhead {
    rx: mpsc::Receiver<Result<DecodedBatch>>,
    /// The reading and the decoding task.
    tasks: [tokio::task::JoinHandle<()>; 2],
}

/// Batches each read-ahead stage may run ahead of the next. Four keep reading and
/// decoding busy while a batch is applied; each holds up to `batch_max` records twice
/// (raw, then decoded), so eight held about 40 MB more at 10,000 clusters
/// (`docs/profiling.md`).
const READ_AHEAD_BATCHES: usize = 4;

/// Raw records as read, before decoding: their payloads copied into one buffer (one
/// allocation per batch, not per record), and the partitions that reported their end.
#[derive(Debug, Default)]
struct RawBatch {
    /// Every payload, back to back.
    bytes: Vec<u8>,
    /// The records, in the order read.
    records: Vec<RawRecord>,
    /// Partitions that reported their end after these records.
    eofs: Vec<i32>,
}

/// One record as read: where it is, when it was written, and its payload's range in
/// [`RawBatch::bytes`] (`None` is a tombstone).
#[derive(Debug)]
struct RawRecord {
    partition: i32,
    offset: i64,
    /// The Kafka record timestamp, if the record has one.
    written_at_ms: Option<i64>,
    /// The facet its key names: its writer schema must be that facet's record.
    facet: Option<fleetledger_schemas::Facet>,
    payload: Option<std::ops::Range<usize>>,
}

impl ReadAhead {
    /// The next batch, or why there is none.
    async fn next(&mut self) -> Result<DecodedBatch> {
        match self.rx.recv().await {
            Some(batch) => batch,
            None => Err(fleetledger_ledger::Error::Unavailable(
                "the history reader stopped".into(),
            )
            .into()),
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A checkpoint being written on a blocking thread ([`Projector::start_checkpoint`]).
/// Dropping it does not stop it: it runs to its end, holding the directory's lock.
struct CheckpointInFlight {
    task: tokio::task::JoinHandle<Result<CheckpointWritten>>,
    dir: PathBuf,
}

/// What a checkpoint did ([`CheckpointInFlight::finish`]).
struct CheckpointWritten {
    /// How long it took to write.
    took: Duration,
    /// Whether it merged a month of billing after it saved: the next checkpoint names it.
    unsaved_months: bool,
}

impl CheckpointInFlight {
    /// Waits for the checkpoint to end.
    async fn finish(self) -> Result<CheckpointWritten> {
        self.task.await.map_err(|e| Error::Io {
            path: self.dir,
            source: std::io::Error::other(e),
        })?
    }
}

/// What the `audit_log` checkpoint just saved holds besides its segments: a merge of
/// segments saves them again with the new list (the same rows).
struct AuditSaved {
    offsets: BTreeMap<i32, i64>,
    last: crate::audit::LastStates,
    /// The settled months of `billing_hours` left to merge ([`merge_billing_months`]).
    month_merges: Vec<crate::billing_hours::MonthMerge>,
}

/// Saves the checkpoints of `clusters` and `billing_hours`, and of `audit_log` with its
/// tail written as a new segment. On error the tail is left sealed: the caller unseals.
fn checkpoint_all(
    shared: &Arc<RwLock<Projections>>,
    store: &CheckpointStore,
    (now_ms, quiet): (i64, bool),
    retired: &mut Retired,
) -> Result<AuditSaved> {
    use ProjectionName::{AuditLog as A, BillingHours as B, Clusters as C};
    // Closed days of billing go to their files (and corrected days are rewritten) before
    // the checkpoint that names them.
    let started = Instant::now();
    let (flushed, month_merges) = {
        let mut p = shared.blocking_write();
        let flushed = p.billing.flush_days(now_ms, quiet)?;
        (flushed, p.billing.month_merges())
    };
    let flush_ms = started.elapsed().as_millis() as u64;
    // Seal the audit tail together with the offsets and latest states it matches.
    let (sealed, audit_offsets, last, marks) = {
        let mut p = shared.blocking_write();
        // The next tail is reserved as long as this one: it grows to about as many rows
        // by the next checkpoint, and a vector that doubles its way there copies its rows
        // at each step, into memory the system zeroes first.
        let reserved = Vec::with_capacity(p.audit.tail.len());
        let rows = Arc::new(std::mem::replace(&mut p.audit.tail, reserved));
        p.audit.sealed = Some(rows.clone());
        let last = p.audit.last_states();
        (
            rows,
            p.offsets.get(&A).cloned().unwrap_or_default(),
            last,
            p.marks.clone(),
        )
    };
    let files = shared.blocking_read().audit.files.clone();
    // The segment is written while the other two checkpoints are, on another thread: one
    // of the runtime's blocking threads, which outlive a checkpoint (a thread started for
    // each one would leave its allocator heap behind at every checkpoint).
    let runtime = tokio::runtime::Handle::current();
    let others = {
        let (shared, store) = (shared.clone(), store.clone());
        runtime.spawn_blocking(move || -> Result<u64> {
            // Written under the read lock, synced after it: the applier waits for the
            // state to be written out, not for the disk.
            let t = Instant::now();
            let (clusters, billing) = {
                let p = shared.blocking_read();
                let empty = BTreeMap::new();
                let off = |n: ProjectionName| p.offsets.get(&n).unwrap_or(&empty);
                (
                    store.write(C, off(C), &p.clusters)?,
                    store.write(B, off(B), &p.billing)?,
                )
            };
            let locked_ms = t.elapsed().as_millis() as u64;
            clusters.commit()?;
            billing.commit()?;
            Ok(locked_ms)
        })
    };
    let mut rows: Vec<&AuditRow> = sealed.iter().collect();
    rows.sort_unstable_by(|a, b| crate::audit::segment_order(a, b));
    let segment = files.write_rows(
        &audit_schema(),
        &rows,
        |chunk| audit_batch(chunk.iter().copied()),
        AUDIT_SEGMENTS,
    );
    let segment_ms = started.elapsed().as_millis() as u64 - flush_ms;
    let states_locked_ms = runtime.block_on(others).map_err(|_| Error::Io {
        path: store.path(C),
        source: std::io::Error::other("writing a checkpoint panicked"),
    })??;
    let segment = segment?;
    let mut segments = shared.blocking_read().audit.segments.clone();
    segments.extend(segment.clone());
    let saved = store.save(
        A,
        &audit_offsets,
        &AuditCheckpoint {
            last: &last,
            segments: segments.clone(),
        },
    );
    if let Err(e) = saved {
        if let Some(s) = &segment {
            let _ = std::fs::remove_file(files.path(s));
        }
        return Err(e);
    }
    // Records every checkpoint just written has applied (taken with the audit offsets,
    // the lowest of the three).
    store.save_marks(&marks)?;
    tracing::debug!(
        flush_ms,
        segment_ms,
        states_locked_ms,
        total_ms = started.elapsed().as_millis() as u64,
        "checkpoint saved"
    );
    let mut p = shared.blocking_write();
    p.audit.segments = segments;
    p.audit.sealed = None;
    for path in flushed.retired {
        retired.retire(B, path);
    }
    Ok(AuditSaved {
        offsets: audit_offsets,
        last,
        month_merges,
    })
}

/// Merges the settled months of `billing_hours` a checkpoint left ([`crate::billing_hours::MonthMerge`]), each
/// without the projections' lock (the applier goes on), then puts it in place under the
/// lock. The checkpoint just saved names the day files: they are retired by
/// `billing_hours` ([`Retired`]), so they wait for its next checkpoint (which names the
/// month's file instead) to be durable, and then for the grace period; a re-save of the
/// audit checkpoint meanwhile does not free them. Until then a crash leaves the month's file
/// unnamed, removed at the next start, and the days in force. Returns whether a month was
/// put in place (the checkpoint in force does not name it yet).
fn merge_billing_months(
    shared: &RwLock<Projections>,
    merges: Vec<crate::billing_hours::MonthMerge>,
    retired: &mut Retired,
) -> bool {
    if merges.is_empty() {
        return false;
    }
    let files = shared.blocking_read().billing.files.clone();
    let mut installed = false;
    for merge in merges {
        let merged = merge.run(&files);
        let mut out = crate::billing_hours::Flushed::default();
        shared
            .blocking_write()
            .billing
            .install_month(merge, merged, &mut out);
        installed |= !out.retired.is_empty();
        for path in out.retired {
            retired.retire(ProjectionName::BillingHours, path);
        }
    }
    installed
}

/// Puts sealed audit rows back in front of the tail (their checkpoint failed).
fn unseal(shared: &RwLock<Projections>) {
    let mut p = shared.blocking_write();
    if let Some(sealed) = p.audit.sealed.take() {
        let mut rows = Arc::try_unwrap(sealed).unwrap_or_else(|a| (*a).clone());
        rows.append(&mut p.audit.tail);
        p.audit.tail = rows;
    }
}

/// Which trailing segments to merge: the last four, if each is smaller than
/// [`AUDIT_MERGE_ROWS`] and of the same size class (a power of four of rows).
fn audit_merge_run(segments: &[Segment]) -> Option<std::ops::Range<usize>> {
    let class = |s: &Segment| s.rows.max(1).ilog(4);
    let n = segments.len();
    let last = segments.get(n.checked_sub(4)?..)?;
    let c = class(&last[3]);
    last.iter()
        .all(|s| s.rows < AUDIT_MERGE_ROWS && class(s) == c)
        .then_some(n - 4..n)
}

/// How far the newest audit row must be past a month's end before the segments of that
/// month are merged into one ([`audit_month_run`]): a day, as for billing's months.
const AUDIT_MONTH_SETTLE_MS: i64 = crate::billing_hours::DAY_MS;

/// Which segments hold a closed month: the first run of two or more consecutive segments
/// whose newest rows are in one UTC month that ended [`AUDIT_MONTH_SETTLE_MS`] before the
/// newest row of all. Merged into one file sorted by cluster, a month costs a one-cluster
/// lookup one file, not one per checkpoint (an import or a rebuild writes one per 100k
/// records): the files a lookup opens grow with the months of history, not its records.
/// The newest month stays in the files as written, so that "the latest changes"
/// (`ORDER BY ts DESC LIMIT n`) still stops at the newest few files.
fn audit_month_run(segments: &[Segment]) -> Option<std::ops::Range<usize>> {
    use crate::billing_hours::{month_start, next_month_start};
    let newest = segments.iter().map(|s| s.max_key).max()?;
    let mut i = 0;
    while i < segments.len() {
        let month = month_start(segments[i].max_key);
        let end = i + segments[i..]
            .iter()
            .take_while(|s| month_start(s.max_key) == month)
            .count();
        if end - i >= 2 && next_month_start(month) + AUDIT_MONTH_SETTLE_MS <= newest {
            return Some(i..end);
        }
        i = end;
    }
    None
}

/// Merges audit segments while [`audit_month_run`] or [`audit_merge_run`] finds a run:
/// merges them into one sorted segment (streaming), saves the checkpoint that names it
/// instead of them (same offsets and states: the same rows), and retires them.
fn merge_audit_segments(
    shared: &RwLock<Projections>,
    store: &CheckpointStore,
    saved: &AuditSaved,
    retired: &mut Retired,
) -> Result<()> {
    loop {
        let (files, segments) = {
            let p = shared.blocking_read();
            (p.audit.files.clone(), p.audit.segments.clone())
        };
        let Some(run) = audit_month_run(&segments).or_else(|| audit_merge_run(&segments)) else {
            return Ok(());
        };
        let Some(merged) = files.merge_sorted(
            &segments[run.clone()],
            &audit_schema(),
            "audit_log",
            crate::audit::rows_of,
            crate::audit::segment_order,
            |chunk| audit_batch(chunk.iter()),
            AUDIT_SEGMENTS,
        )?
        else {
            return Ok(());
        };
        let mut next = segments[..run.start].to_vec();
        next.push(merged.clone());
        next.extend_from_slice(&segments[run.end..]);
        // The offsets and states the checkpoint just saved, with the new list.
        if let Err(e) = store.save(
            ProjectionName::AuditLog,
            &saved.offsets,
            &AuditCheckpoint {
                last: &saved.last,
                segments: next.clone(),
            },
        ) {
            let _ = std::fs::remove_file(files.path(&merged));
            return Err(e);
        }
        shared.blocking_write().audit.segments = next;
        for s in &segments[run] {
            retired.retire(ProjectionName::AuditLog, files.path(s));
        }
        retired.checkpointed(ProjectionName::AuditLog);
        tracing::debug!(rows = merged.rows, "merged audit segments");
    }
}

/// Every segment a checkpoint names is there with its size: else the checkpoint is not
/// usable ([`Error::Checkpoint`], its projection is rebuilt).
fn check_segments(
    store: &CheckpointStore,
    projection: ProjectionName,
    files: &crate::segments::SegmentDir,
    segments: &[Segment],
) -> Result<()> {
    for s in segments {
        let path = files.path(s);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == s.bytes => {}
            found => {
                return Err(Error::Checkpoint {
                    path: store.path(projection),
                    projection: projection.to_string(),
                    message: format!(
                        "segment {} should have {} bytes, found {}",
                        path.display(),
                        s.bytes,
                        found.map_or_else(|e| e.to_string(), |m| m.len().to_string())
                    ),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(rows: &[u64]) -> Vec<Segment> {
        rows.iter()
            .map(|&rows| Segment {
                name: String::new(),
                rows,
                bytes: 0,
                min_key: 0,
                max_key: 0,
            })
            .collect()
    }

    #[test]
    fn small_audit_segments_merge_four_of_a_size_and_large_ones_stay() {
        let k = 1_000;
        // Four checkpoints of a live service, of about one size: one merge.
        assert_eq!(audit_merge_run(&sized(&[5 * k; 4])), Some(0..4));
        // Three of them after a larger one: nothing yet.
        assert_eq!(
            audit_merge_run(&sized(&[20 * k, 5 * k, 5 * k, 5 * k])),
            None
        );
        // Four of 20k after an import's checkpoint: merged.
        assert_eq!(
            audit_merge_run(&sized(&[100 * k, 20 * k, 20 * k, 20 * k, 20 * k])),
            Some(1..5)
        );
        // An import's checkpoints (at the cap and over) stay as written.
        assert_eq!(audit_merge_run(&sized(&[100 * k; 4])), None);
        // A live service's small checkpoints merge too.
        assert_eq!(
            audit_merge_run(&sized(&[900 * k, 20, 30, 40, 50])),
            Some(1..5)
        );
    }

    #[test]
    fn closed_months_of_audit_segments_merge_into_one() {
        const JAN: i64 = 1_767_225_600_000; // 2026-01-01T00:00Z
        let day = crate::billing_hours::DAY_MS;
        let ending = |days: &[i64]| -> Vec<Segment> {
            days.iter()
                .map(|d| Segment {
                    name: String::new(),
                    rows: 100_000,
                    bytes: 0,
                    min_key: JAN + (d - 1) * day,
                    max_key: JAN + d * day - 1,
                })
                .collect()
        };
        // January's three files, once history is a day into February.
        assert_eq!(audit_month_run(&ending(&[10, 20, 31, 33])), Some(0..3));
        // Not before the month has settled.
        assert_eq!(audit_month_run(&ending(&[10, 20, 31, 32])), None);
        // A month already one file stays; the next closed month is merged.
        assert_eq!(audit_month_run(&ending(&[31, 40, 50, 59, 61])), Some(1..4));
        // The newest month is never merged, however many files it has.
        assert_eq!(audit_month_run(&ending(&[33, 40, 50, 55])), None);
        // A late file of a closed month after newer ones stays alone.
        assert_eq!(audit_month_run(&ending(&[31, 45, 20, 50])), None);
    }
}
