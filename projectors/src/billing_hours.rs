//! The `billing_hours` projection: [`ClusterBilling`] per cluster, with the dimensions
//! (org, sku, cloud, region) of its latest logical state.
//!
//! Every value here depends on the records' event times and versions, never on the order
//! they arrive in: the rates are step functions of `ts` (see [`crate::billing`]), and the
//! dimensions come from the highest logical version seen.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use fleetledger_schemas::FacetState;
use serde::{Deserialize, Serialize};

use crate::billing::{ClusterBilling, HOUR_MS, HourRow, Rate, RatePoint, nothing_flushed};
use crate::record::HistoryRecord;
use crate::segments::{
    Pages, ROW_GROUP_ROWS, Segment, SegmentDir, SegmentLayout, column, time_column, utf8_column,
};

/// Billing of one cluster and its dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BilledCluster {
    /// Organisation.
    pub org_id: String,
    /// SKU.
    pub sku: String,
    /// Cloud.
    pub cloud: String,
    /// Region.
    pub region: String,
    /// The logical version the dimensions come from (0 before any).
    pub logical_version: i64,
    /// The integral.
    pub billing: ClusterBilling,
    /// Every org the cluster's rows in the files were written under (rows keep the
    /// dimensions of their flush): a one-cluster query prunes the org-sorted files by
    /// these. `None`: not known (a checkpoint from before it was kept), so no pruning.
    #[serde(default)]
    pub filed_orgs: Option<Vec<String>>,
}

impl Default for BilledCluster {
    /// A cluster nothing of which is in files yet.
    fn default() -> Self {
        BilledCluster {
            org_id: String::new(),
            sku: String::new(),
            cloud: String::new(),
            region: String::new(),
            logical_version: 0,
            billing: ClusterBilling::default(),
            filed_orgs: Some(Vec::new()),
        }
    }
}

/// One row of `billing_hours`.
#[derive(Debug, Clone, PartialEq)]
pub struct BillingRow {
    /// Start of the UTC hour, ms since the epoch.
    pub hour_start_ms: i64,
    /// Cluster.
    pub cluster_id: String,
    /// Organisation.
    pub org_id: String,
    /// SKU.
    pub sku: String,
    /// Cloud.
    pub cloud: String,
    /// Region.
    pub region: String,
    /// Billable CKU-hours in the hour.
    pub cku_hours: f64,
    /// The hour is still running.
    pub open: bool,
    /// When the hour's amount last changed (ms, the write time of the record that changed
    /// it): later than an invoice run's time if a late record re-billed the hour since.
    pub recomputed_at_ms: i64,
}

/// The fields of a `billing_hours` row, whether owned ([`BillingRow`]) or borrowed from a
/// cluster's state while its day is written ([`ClusterHour`]): one column builder
/// ([`billing_columns`]) and one rollup ([`daily_of`]) serve both.
pub trait BillingFields {
    /// Start of the UTC hour (ms).
    fn hour_start_ms(&self) -> i64;
    /// Cluster.
    fn cluster_id(&self) -> &str;
    /// Organisation, SKU, cloud, region.
    fn dimensions(&self) -> [&str; 4];
    /// Billable CKU-hours in the hour.
    fn cku_hours(&self) -> f64;
    /// The hour is still running.
    fn open(&self) -> bool;
    /// When the hour's amount last changed (ms).
    fn recomputed_at_ms(&self) -> i64;
    /// How many consecutive hours from `hour_start_ms` the row stands for, each with its
    /// fields (1 but for a run a flush made, [`ClusterHour::hours`]).
    fn hours(&self) -> i32 {
        1
    }
}

impl BillingFields for BillingRow {
    fn hour_start_ms(&self) -> i64 {
        self.hour_start_ms
    }
    fn cluster_id(&self) -> &str {
        &self.cluster_id
    }
    fn dimensions(&self) -> [&str; 4] {
        [&self.org_id, &self.sku, &self.cloud, &self.region]
    }
    fn cku_hours(&self) -> f64 {
        self.cku_hours
    }
    fn open(&self) -> bool {
        self.open
    }
    fn recomputed_at_ms(&self) -> i64 {
        self.recomputed_at_ms
    }
}

/// One hour of a cluster as a `billing_hours` row, borrowing the cluster's id and
/// dimensions: a day of every cluster's hours is written without a string copied per row.
#[derive(Debug, Clone, Copy)]
pub struct ClusterHour<'a> {
    /// Cluster.
    pub id: &'a str,
    /// Its dimensions.
    pub cluster: &'a BilledCluster,
    /// The hour.
    pub hour: HourRow,
    /// How many consecutive hours from `hour` with its amount it stands for: 1, but in
    /// the runs a flush writes.
    pub hours: i32,
}

impl BillingFields for ClusterHour<'_> {
    fn hour_start_ms(&self) -> i64 {
        self.hour.hour_start_ms
    }
    fn cluster_id(&self) -> &str {
        self.id
    }
    fn dimensions(&self) -> [&str; 4] {
        let c = self.cluster;
        [&c.org_id, &c.sku, &c.cloud, &c.region]
    }
    fn cku_hours(&self) -> f64 {
        self.hour.cku_hours
    }
    fn open(&self) -> bool {
        self.hour.open
    }
    fn recomputed_at_ms(&self) -> i64 {
        self.hour.recomputed_at_ms
    }
    fn hours(&self) -> i32 {
        self.hours
    }
}

/// Cluster id → billing, and the closed hours in files.
///
/// **Closed hours are stored, not re-derived.** Once a UTC day has ended by the clock and
/// the history has moved an hour past it ([`BillingHours::flush`]), its hours (every
/// cluster's, the quiet ones billed at their final rate) are written once, as one Parquet
/// segment per day sorted by (org, cluster, hour), a run of equal consecutive hours to a
/// row ([`HourSpan`]), and forgotten in memory; only the
/// hours since, and each cluster's rate timelines, stay. A late record that re-bills a
/// flushed hour makes a correction, and the next flush rewrites the segment of that day
/// alone (until then SQL shows the hour's amount as the files have it). Flushed hours
/// keep the dimensions (org, sku, cloud, region) their cluster had when they were written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingHours {
    /// Per cluster.
    pub clusters: BTreeMap<String, BilledCluster>,
    /// Hours before this instant (ms, a UTC day start) are in `segments`.
    #[serde(default = "nothing_flushed")]
    pub flushed_to_ms: i64,
    /// The latest event time applied (ms).
    #[serde(default)]
    pub max_ts_ms: i64,
    /// The latest event time applied per history partition (ms): history is read
    /// partition by partition, and a catch-up may read one partition days of event time
    /// ahead of another; [`BillingHours::watermark`] is what all of them have reached.
    #[serde(default)]
    pub partition_ts_ms: BTreeMap<i32, i64>,
    /// Partitions read to their end (their next records are new writes): they do not hold
    /// the watermark back. Not saved: after a start every partition counts until it ends.
    #[serde(skip)]
    pub at_end: BTreeSet<i32>,
    /// One segment per UTC day that has billed hours, by day, for the days of months not
    /// merged yet.
    #[serde(default)]
    pub segments: Vec<Segment>,
    /// One segment per UTC month whose days were merged ([`MONTH_SETTLE_MS`]), by month:
    /// its days' runs merged into one order, (org, cluster, hour), as a day's. A query
    /// over a year opens a dozen files, not hundreds, and one cluster's year is a row
    /// group or two a month.
    #[serde(default)]
    pub month_segments: Vec<Segment>,
    /// The rate change points before the flushed instant, one segment per flush, each
    /// sorted by cluster: read back only for a late change of a cluster.
    #[serde(default)]
    pub point_segments: Vec<Segment>,
    /// `billing_daily` of the flushed days, by day: one segment per UTC day of months not
    /// merged yet, one per merged month ([`MONTH_SETTLE_MS`]; a checkpoint from before
    /// days had files may also hold a month's first days in one).
    #[serde(default)]
    pub daily_segments: Vec<Segment>,
    /// Where the segments are.
    #[serde(skip)]
    pub files: SegmentDir,
}

impl Default for BillingHours {
    fn default() -> Self {
        BillingHours {
            clusters: BTreeMap::new(),
            flushed_to_ms: nothing_flushed(),
            max_ts_ms: 0,
            partition_ts_ms: BTreeMap::new(),
            at_end: BTreeSet::new(),
            segments: Vec::new(),
            month_segments: Vec::new(),
            point_segments: Vec::new(),
            daily_segments: Vec::new(),
            files: SegmentDir::default(),
        }
    }
}

/// Milliseconds in a day.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// How far history must have moved past a day's end before the day is written (while
/// records flow): a record older than that re-bills a written hour and costs a rewrite
/// of its day's file, so the margin covers clusters whose records run a few hours behind
/// the others (an import's lanes, a slow controller).
pub const SETTLE_MS: i64 = 12 * HOUR_MS;

/// How far the flushed instant must be past a month's end before the month's day files
/// are merged into one. A record later than that re-bills an hour of the merged file,
/// which is rewritten whole (streaming: a month of 10,000 clusters is 7.2M rows); the
/// margin keeps that rare.
pub const MONTH_SETTLE_MS: i64 = DAY_MS;

/// How billing segments are written: the hour as the key, small pages in every column and
/// `cluster_id` without a dictionary. Rows are sorted by org, cluster and hour, so the org
/// statistics find the row group of a cluster's day (its filed orgs, [`BilledCluster`]),
/// and the page index the thousand runs in it that hold the cluster, in every column the
/// lookup reads. A row being a run of up to a day, a row group holds a run or three of
/// each of thousands of clusters: a dictionary of `cluster_id` would be most of what a
/// lookup reads, and a bloom filter would not skip a row group that the org statistics
/// let through (none is written). Row groups are of [`BILLING_GROUP_ROWS`] runs.
pub const BILLING_SEGMENTS: SegmentLayout = SegmentLayout {
    bloom: &[],
    key: "hour_start",
    pages: Pages::SmallPlainIn(&["cluster_id"]),
    group_rows: BILLING_GROUP_ROWS,
};

/// Runs per row group of a billing segment: a quarter of [`ROW_GROUP_ROWS`]. A lookup of
/// one cluster reads a page of each column it needs in one row group per day file (and a
/// row group or two per month file); in smaller row groups the pages of the columns it
/// filters by are fewer to evaluate (at 10M records, one cluster's whole life, before
/// months were sorted: 72 → 49 ms), for a larger footer.
pub const BILLING_GROUP_ROWS: usize = ROW_GROUP_ROWS / 4;

/// The fewest days a flush writes on more than one thread ([`BillingHours::flush`]).
const PARALLEL_FLUSH_DAYS: usize = 4;

/// `billing_daily` rows by day start.
type DailyByDay = BTreeMap<i64, Vec<DailyRow>>;

/// One day a flush wrote: its start, its `billing_daily` rows, its segment (none for a day
/// without hours).
type WrittenDay = (i64, Vec<DailyRow>, Option<Segment>);

/// What a flush wrote and what it made obsolete.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Segments replaced by rewritten ones: to delete once the checkpoint is durable.
    pub retired: Vec<std::path::PathBuf>,
}

/// A settled month of `billing_hours` to merge into one file: the month's file, if it has
/// one, and its day files. Running it ([`MonthMerge::run`]) reads only these files, which
/// no one changes (a late record's fix writes a new file): it needs no lock on the
/// projection, and [`BillingHours::install_month`] checks they are still the month's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthMerge {
    /// The month's start (ms).
    pub month: i64,
    /// The month's merged file, if it has one.
    pub file: Option<Segment>,
    /// The month's day files, in day order.
    pub days: Vec<Segment>,
}

impl MonthMerge {
    /// Merges the inputs run by run into one file sorted by (org, cluster, hour), as a
    /// day's file is: a cluster's month is then a row group or two, where a concatenation
    /// of the days kept it in one row group a day. Logs how long it took. The file is
    /// named by nothing until [`BillingHours::install_month`] puts it in place.
    pub fn run(&self, files: &SegmentDir) -> crate::Result<Option<Segment>> {
        let inputs: Vec<Segment> = self.file.iter().chain(&self.days).cloned().collect();
        // Each day is sorted by (org, cluster, hour): the month, merged from them run by
        // run, is too.
        let started = std::time::Instant::now();
        let merged = files.merge_sorted(
            &inputs,
            &billing_segment_schema(),
            "billing_hours",
            filed_runs_of,
            |a, b| billing_order(&a.first, &b.first),
            billing_segment_batch,
            BILLING_SEGMENTS,
        )?;
        if let Some(seg) = &merged {
            tracing::info!(
                month = self.month,
                files = inputs.len(),
                runs = seg.rows,
                merge_ms = started.elapsed().as_millis(),
                "a month of billing days merged into one file"
            );
        }
        Ok(merged)
    }
}

impl BillingHours {
    /// Applies one record: logical changes the desired CKU (0 once deleted), status the
    /// actual billable CKU, each at the record's `ts`; other facets do not bill. A record
    /// from before the flushed instant first reads its cluster's points back from the
    /// point files (once until the next flush); if they cannot be read the error names
    /// the file, and nothing is applied.
    pub fn apply(&mut self, h: &HistoryRecord) -> crate::Result<()> {
        let r = &h.record;
        if matches!(r.state, FacetState::Physical(_) | FacetState::Capacity(_)) {
            return Ok(());
        }
        let (at, version) = (r.meta.ts.timestamp_millis(), r.meta.version);
        // The id is copied only for a new cluster, not for every record.
        self.max_ts_ms = self.max_ts_ms.max(at);
        let p = self.partition_ts_ms.entry(h.partition).or_insert(at);
        *p = (*p).max(at);
        self.at_end.remove(&h.partition);
        let c = match self.clusters.get_mut(&r.meta.cluster_id) {
            Some(c) => c,
            None => {
                let c = self.clusters.entry(r.meta.cluster_id.clone()).or_default();
                c.billing.flushed_to_ms = self.flushed_to_ms;
                c
            }
        };
        if at < c.billing.flushed_to_ms {
            tracing::debug!(
                cluster = %r.meta.cluster_id,
                partition = h.partition,
                late_ms = c.billing.flushed_to_ms - at,
                "a record re-bills hours already written"
            );
            if !c.billing.loaded {
                let points = read_points(&self.files, &self.point_segments, &r.meta.cluster_id)?;
                c.billing.load(points);
            }
        }
        match &r.state {
            FacetState::Logical(l) => {
                if version >= c.logical_version {
                    c.logical_version = version;
                    c.org_id.clone_from(&l.org_id);
                    c.sku.clone_from(&l.sku);
                    c.cloud.clone_from(&l.cloud);
                    c.region.clone_from(&l.region);
                }
                let desired = if l.deleted { 0 } else { i64::from(l.cku) };
                c.billing
                    .apply(Rate::Desired, at, version, desired, h.written_at_ms);
            }
            FacetState::Status(s) => {
                let actual = i64::from(s.billable_cku());
                c.billing
                    .apply(Rate::Actual, at, version, actual, h.written_at_ms);
            }
            FacetState::Physical(_) | FacetState::Capacity(_) => {}
        }
        Ok(())
    }

    /// Marks `partitions` as read to their end: until its next record none of them holds
    /// the watermark back.
    pub fn partitions_at_end(&mut self, partitions: impl IntoIterator<Item = i32>) {
        self.at_end.extend(partitions);
    }

    /// The event time every partition still being read has reached: the least of their
    /// latest event times, ignoring partitions read to their end; when all are at their
    /// end, the latest event time of all. A catch-up that reads one partition ahead of the
    /// others so closes a day only when the slowest has passed it, and does not find the
    /// others' records of that day late.
    pub fn watermark(&self) -> i64 {
        self.partition_ts_ms
            .iter()
            .filter(|(p, _)| !self.at_end.contains(p))
            .map(|(_, ts)| *ts)
            .min()
            .unwrap_or(self.max_ts_ms)
    }

    /// The instant up to which [`BillingHours::flush`] would write hours at `now_ms`: a
    /// UTC day start. Unless history is `quiet` (no record for a while), a day is written
    /// once both the clock and the [`BillingHours::watermark`] are [`SETTLE_MS`] past its
    /// end: an import of old history writes each day once, as it passes, even if its lanes
    /// are hours apart. On a quiet fleet a day is written an hour after it ends.
    pub fn flush_target(&self, now_ms: i64, quiet: bool) -> i64 {
        let upto = if quiet {
            now_ms - HOUR_MS
        } else {
            now_ms.min(self.watermark()) - SETTLE_MS
        };
        day_start(upto)
    }

    /// Whether a flush at `now_ms` has anything to write.
    pub fn flush_due(&self, now_ms: i64, quiet: bool) -> bool {
        self.flush_target(now_ms, quiet) > self.flushed_to_ms && !self.clusters.is_empty()
            || self
                .clusters
                .values()
                .any(|c| !c.billing.corrections.is_empty())
    }

    /// Writes the days that have closed by `now_ms` ([`BillingHours::flush_target`], with
    /// `quiet` history or not) as
    /// segments and forgets their hours; then rewrites the segment of each day a late
    /// record corrected. Files first, state after: on error nothing changed in memory (the
    /// files written are orphans, removed at the next start).
    pub fn flush(&mut self, now_ms: i64, quiet: bool) -> crate::Result<Flushed> {
        let mut out = self.flush_days(now_ms, quiet)?;
        self.merge_months(&mut out);
        Ok(out)
    }

    /// [`BillingHours::flush`] without its merge of settled months: the days are written,
    /// and [`BillingHours::month_merges`] says which months are left to merge. A
    /// checkpoint merges them after it has saved, without holding the projections' lock
    /// ([`MonthMerge`]).
    pub fn flush_days(&mut self, now_ms: i64, quiet: bool) -> crate::Result<Flushed> {
        let target = self.flush_target(now_ms, quiet);
        let mut written = Vec::new();
        let start = if self.flushed_to_ms == nothing_flushed() {
            self.clusters
                .values()
                .filter_map(|c| {
                    let d = c.billing.desired.points().first().map(|p| p.ts_ms);
                    let a = c.billing.actual.points().first().map(|p| p.ts_ms);
                    d.into_iter().chain(a).min()
                })
                .min()
                .map(day_start)
        } else {
            Some(self.flushed_to_ms)
        };
        // Day start → the day's `billing_daily` rows, for every day written or rewritten.
        let mut daily: BTreeMap<i64, Vec<DailyRow>> = BTreeMap::new();
        if let Some(start) = start.filter(|s| *s < target) {
            // The clusters in the files' order, (org, cluster): each one's hours come in
            // hour order, so a day's rows are written as gathered, without a sort.
            let mut order: Vec<(&String, &BilledCluster)> = self.clusters.iter().collect();
            order.sort_by(|a, b| (&a.1.org_id, a.0).cmp(&(&b.1.org_id, b.0)));
            let days: Vec<i64> = (0..)
                .map(|n| start + n * DAY_MS)
                .take_while(|d| *d < target)
                .collect();
            // Days are independent files: a catch-up that flushes several days at once
            // writes them on as many threads as there are cores, each thread its share of
            // days. A flush of a day or two (as the history is written) stays on its
            // thread: a thread started for it would leave its allocator heap behind.
            let workers = if days.len() >= PARALLEL_FLUSH_DAYS {
                std::thread::available_parallelism()
                    .map_or(1, usize::from)
                    .min(days.len())
            } else {
                1
            };
            let write_days = |w: usize| -> crate::Result<Vec<WrittenDay>> {
                days.iter()
                    .skip(w)
                    .step_by(workers)
                    .map(|&day| {
                        // A cluster's day is made into its runs at once (a quiet one is
                        // one run): the day's rows are about as many as the clusters.
                        let mut rows: Vec<ClusterHour> = Vec::with_capacity(order.len());
                        for (id, c) in &order {
                            let hours: Vec<ClusterHour> = c
                                .billing
                                .closed_rows(day, day + DAY_MS)
                                .into_iter()
                                .map(|hour| ClusterHour {
                                    id,
                                    cluster: c,
                                    hour,
                                    hours: 1,
                                })
                                .collect();
                            rows.extend(spans_of(&hours).into_iter().map(|s| ClusterHour {
                                hours: s.hours,
                                ..*s.first
                            }));
                        }
                        Ok((day, daily_of(&rows), self.write_day(&rows)?))
                    })
                    .collect()
            };
            let done: Vec<_> = std::thread::scope(|s| {
                let others: Vec<_> = (1..workers)
                    .map(|w| s.spawn(move || write_days(w)))
                    .collect();
                let mut all = vec![write_days(0)];
                all.extend(others.into_iter().map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(crate::Error::Io {
                            path: self.files.dir().to_owned(),
                            source: std::io::Error::other(
                                "writing a day of billing hours panicked",
                            ),
                        })
                    })
                }));
                all
            });
            let mut by_day = Vec::new();
            for d in done {
                by_day.extend(d?);
            }
            by_day.sort_by_key(|(day, _, _)| *day);
            for (day, rows, seg) in by_day {
                daily.insert(day, rows);
                written.extend(seg);
            }
        }
        // The points the flushed days no longer need in memory.
        let mut points = Vec::new();
        if target > self.flushed_to_ms {
            for (id, c) in &self.clusters {
                points.extend(
                    c.billing
                        .points_to_save(target)
                        .into_iter()
                        .map(|(rate, p)| (id.as_str(), rate, p)),
                );
            }
        }
        let point_segment = write_points(&self.files, points)?;
        // Corrections of flushed hours, by day.
        let mut by_day: BTreeMap<i64, Vec<BillingRow>> = BTreeMap::new();
        for (id, c) in &self.clusters {
            for (&h, b) in &c.billing.corrections {
                by_day.entry(day_start(h)).or_default().push(c.row(
                    id,
                    &HourRow {
                        hour_start_ms: h,
                        cku_hours: b.cku_ms as f64 / HOUR_MS as f64,
                        open: false,
                        recomputed_at_ms: b.recomputed_at_ms,
                    },
                ));
            }
        }
        let mut replaced = Vec::new();
        // Fixes of days whose month is merged: by month segment.
        let mut month_fixes: BTreeMap<usize, Vec<BillingRow>> = BTreeMap::new();
        for (day, fixes) in by_day {
            if let Some(i) = self
                .month_segments
                .iter()
                .position(|s| month_start(s.min_key) == month_start(day))
            {
                month_fixes.entry(i).or_default().extend(fixes);
                continue;
            }
            let old = self
                .segments
                .iter()
                .position(|s| day_start(s.min_key) == day);
            let mut rows = match old {
                Some(i) => {
                    self.files
                        .read_rows(&self.segments[i], "billing_hours", billing_rows_of)?
                }
                None => Vec::new(),
            };
            let mut at: BTreeMap<(String, i64), usize> = rows
                .iter()
                .enumerate()
                .map(|(k, r)| ((r.cluster_id.clone(), r.hour_start_ms), k))
                .collect();
            for f in fixes {
                match at.get(&(f.cluster_id.clone(), f.hour_start_ms)) {
                    Some(&k) => {
                        rows[k].cku_hours = f.cku_hours;
                        rows[k].recomputed_at_ms = f.recomputed_at_ms;
                    }
                    None => {
                        at.insert((f.cluster_id.clone(), f.hour_start_ms), rows.len());
                        rows.push(f);
                    }
                }
            }
            rows.sort_by(billing_order);
            daily.insert(day, daily_of(&rows));
            if let Some(seg) = self.write_day(&rows)? {
                replaced.push((old, seg));
            }
        }
        let mut replaced_months = Vec::new();
        for (i, fixes) in month_fixes {
            let (seg, days) = self.rewrite_month(&self.month_segments[i], fixes)?;
            daily.extend(days);
            replaced_months.extend(seg.map(|seg| (i, seg)));
        }
        let daily = self.write_daily(daily)?;
        // Every file is written: now the state.
        let mut out = Flushed::default();
        for (old, seg) in replaced {
            match old {
                Some(i) => {
                    out.retired.push(self.files.path(&self.segments[i]));
                    self.segments[i] = seg;
                }
                None => self.segments.push(seg),
            }
        }
        for (i, seg) in replaced_months {
            out.retired.push(self.files.path(&self.month_segments[i]));
            self.month_segments[i] = seg;
        }
        self.segments.extend(written);
        self.segments.sort_by_key(|s| s.min_key);
        self.point_segments.extend(point_segment);
        for (old, seg) in daily {
            match old {
                Some(i) => {
                    out.retired.push(self.files.path(&self.daily_segments[i]));
                    self.daily_segments[i] = seg;
                }
                None => self.daily_segments.push(seg),
            }
        }
        self.daily_segments.sort_by_key(|s| s.min_key);
        for c in self.clusters.values_mut() {
            // Whatever this flush wrote of the cluster carries its org now.
            if (target > self.flushed_to_ms || !c.billing.corrections.is_empty())
                && let Some(orgs) = &mut c.filed_orgs
                && !orgs.contains(&c.org_id)
            {
                orgs.push(c.org_id.clone());
            }
            c.billing.corrections.clear();
            if target > self.flushed_to_ms {
                c.billing.flushed(target);
            }
        }
        self.flushed_to_ms = self.flushed_to_ms.max(target);
        self.merge_daily_months(&mut out);
        Ok(out)
    }

    /// Merges the day files of every month the flushed instant is [`MONTH_SETTLE_MS`]
    /// past into one file sorted as a day's is, by (org, cluster, hour): a cluster's
    /// month is then a row group or two, where a concatenation of the days kept it in one
    /// row group a day (a one-cluster lookup over a year read about 363). It retires the
    /// days, and the month's file if it has one already (a day file cannot appear in a
    /// merged month today: its fixes rewrite the month's file; merged with it, one would
    /// still never make a month of two files). The state is changed only for a merge that
    /// succeeded: one that failed is logged and tried at the next flush (the day files
    /// serve meanwhile).
    fn merge_months(&mut self, out: &mut Flushed) {
        for merge in self.month_merges() {
            let merged = merge.run(&self.files);
            self.install_month(merge, merged, out);
        }
    }

    /// The settled months whose day files are to be merged (see
    /// [`BillingHours::merge_months`]), each with its inputs as they are now.
    pub fn month_merges(&self) -> Vec<MonthMerge> {
        self.settled_months(&self.segments)
            .into_iter()
            .map(|month| {
                let mut days: Vec<Segment> = self
                    .segments
                    .iter()
                    .filter(|s| month_start(s.min_key) == month)
                    .cloned()
                    .collect();
                days.sort_by_key(|s| s.min_key);
                let file = self
                    .month_segments
                    .iter()
                    .find(|s| month_start(s.min_key) == month)
                    .cloned();
                MonthMerge { month, file, days }
            })
            .collect()
    }

    /// Puts the outcome of `merge` ([`MonthMerge::run`]) in place: its file replaces the
    /// month's days (and the month's earlier file), which `out` retires. A merge whose
    /// inputs are no longer all in place (a late record rewrote one of its days since) is
    /// dropped, its file deleted: nothing names it, and the next flush plans the month
    /// again. A merge that failed is logged; the day files serve and the merge is tried
    /// at the next flush.
    pub fn install_month(
        &mut self,
        merge: MonthMerge,
        merged: crate::Result<Option<Segment>>,
        out: &mut Flushed,
    ) {
        let MonthMerge { month, file, days } = merge;
        let seg = match merged {
            Ok(Some(seg)) => seg,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(month, %error, "merging a month of billing days failed; its day files stay and the merge is tried again at the next flush");
                return;
            }
        };
        let file_at = file
            .as_ref()
            .map(|f| self.month_segments.iter().position(|s| s == f));
        let in_place =
            !matches!(file_at, Some(None)) && days.iter().all(|d| self.segments.contains(d));
        if !in_place {
            tracing::info!(
                month,
                "a month's merge is dropped: one of its days was rewritten meanwhile"
            );
            let _ = std::fs::remove_file(self.files.path(&seg));
            return;
        }
        self.segments.retain(|s| !days.contains(s));
        if let Some(Some(i)) = file_at {
            self.month_segments.remove(i);
        }
        out.retired
            .extend(file.iter().chain(days.iter()).map(|s| self.files.path(s)));
        self.month_segments.push(seg);
        self.month_segments.sort_by_key(|s| s.min_key);
    }

    /// Rewrites month segment `seg` with `fixes` (the new amounts of hours a late record
    /// re-billed), streaming: an hour the file has keeps its row and dimensions with the
    /// new amount, a new one is added, in the order of a merged month (org, cluster,
    /// hour). A month merged before months were sorted (its days one after the other) is
    /// rewritten with every row kept, in an order that is neither: a lookup reads more of
    /// it, the answer is the same. Returns the new segment and the `billing_daily`
    /// rows of the days it fixed (only those days' rows are held, to sum them).
    fn rewrite_month(
        &self,
        seg: &Segment,
        fixes: Vec<BillingRow>,
    ) -> crate::Result<(Option<Segment>, DailyByDay)> {
        let fixed_days: BTreeSet<i64> = fixes.iter().map(|f| day_start(f.hour_start_ms)).collect();
        let mut fixes_of: BTreeMap<String, BTreeMap<i64, BillingRow>> = BTreeMap::new();
        for f in fixes {
            fixes_of
                .entry(f.cluster_id.clone())
                .or_default()
                .insert(f.hour_start_ms, f);
        }
        // Which fixed hours the file has: three columns read, a batch at a time, each
        // run's hours looked at.
        let keys_of = |b: &RecordBatch| -> Result<Vec<(String, i64)>, String> {
            let first = column::<TimestampMillisecondArray>(b, "hour_start")?;
            let ids = column::<StringArray>(b, "cluster_id")?;
            let spans = column::<Int32Array>(b, "hours")?;
            Ok((0..b.num_rows())
                .filter(|&k| fixed_days.contains(&day_start(first.value(k))))
                .flat_map(|k| {
                    (0..i64::from(spans.value(k))).map(move |n| (k, first.value(k) + n * HOUR_MS))
                })
                .filter(|&(k, h)| {
                    fixes_of
                        .get(ids.value(k))
                        .is_some_and(|f| f.contains_key(&h))
                })
                .map(|(k, h)| (ids.value(k).to_owned(), h))
                .collect())
        };
        let mut present = BTreeSet::new();
        for keys in self.files.parsed(
            seg,
            Some(&["hour_start", "cluster_id", "hours"]),
            "billing_hours",
            &keys_of,
        )? {
            present.extend(keys?);
        }
        let mut extra = Vec::new();
        for (id, hours) in &mut fixes_of {
            hours.retain(|h, f| {
                let new = !present.contains(&(id.clone(), *h));
                if new {
                    extra.push(f.clone());
                }
                !new
            });
        }
        extra.sort_by(billing_order);
        let mut fixed_rows: BTreeMap<i64, Vec<BillingRow>> = BTreeMap::new();
        let seg = self.files.rewrite_sorted(
            seg,
            extra,
            &billing_segment_schema(),
            "billing_hours",
            billing_rows_of,
            |r| {
                if !fixed_days.contains(&day_start(r.hour_start_ms)) {
                    return;
                }
                if let Some(f) = fixes_of
                    .get(&r.cluster_id)
                    .and_then(|h| h.get(&r.hour_start_ms))
                {
                    r.cku_hours = f.cku_hours;
                    r.recomputed_at_ms = f.recomputed_at_ms;
                }
            },
            billing_order,
            billing_segment_batch,
            |r| {
                let day = day_start(r.hour_start_ms);
                if fixed_days.contains(&day) {
                    fixed_rows.entry(day).or_default().push(r.clone());
                }
            },
            BILLING_SEGMENTS,
        )?;
        let daily = fixed_rows
            .into_iter()
            .map(|(day, rows)| (day, daily_of(&rows)))
            .collect();
        Ok((seg, daily))
    }

    /// The segments of `billing_hours` rows: the merged months' and the days'.
    pub fn hour_segments(&self) -> impl Iterator<Item = &Segment> {
        self.month_segments.iter().chain(&self.segments)
    }

    /// Every file of the projection, by name (for the removal of unnamed ones).
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.hour_segments()
            .chain(&self.point_segments)
            .chain(&self.daily_segments)
            .map(|s| s.name.as_str())
    }

    /// Writes the `billing_daily` rows of `days` (each day's rows whole): a day is a file
    /// of its own, which replaces the day's file if it has one; a day inside a file of
    /// several days (a month merged by [`BillingHours::merge_daily_months`], or a month
    /// file of a checkpoint from before days had files) rewrites that file with the day's
    /// rows replaced, which only a late record does. A flush so writes the days it closes
    /// and never reads back the month's rows (250k rows at 10,000 clusters).
    /// Returns (index of the segment it replaces, new segment) per file written.
    fn write_daily(
        &self,
        days: BTreeMap<i64, Vec<DailyRow>>,
    ) -> crate::Result<Vec<(Option<usize>, Segment)>> {
        let write = |rows: &mut Vec<DailyRow>| {
            rows.sort_by(|a, b| {
                (a.day_ms, &a.org_id, &a.sku, &a.cloud, &a.region)
                    .cmp(&(b.day_ms, &b.org_id, &b.sku, &b.cloud, &b.region))
            });
            self.files.write_rows(
                &daily_schema(),
                rows,
                |chunk| daily_batch(chunk.iter()),
                DAILY_SEGMENTS,
            )
        };
        let mut out = Vec::new();
        // Days that fall in a file of several days, by that file.
        let mut within: BTreeMap<usize, BTreeMap<i64, Vec<DailyRow>>> = BTreeMap::new();
        for (day, mut rows) in days {
            let old = self
                .daily_segments
                .iter()
                .position(|s| s.min_key <= day && day <= s.max_key);
            match old {
                Some(i) if self.daily_segments[i].min_key < self.daily_segments[i].max_key => {
                    within.entry(i).or_default().insert(day, rows);
                }
                _ => out.extend(write(&mut rows)?.map(|seg| (old, seg))),
            }
        }
        for (i, days) in within {
            let seg = &self.daily_segments[i];
            let mut rows: Vec<DailyRow> = self
                .files
                .read_rows(seg, "billing_hours", daily_rows_of)?
                .into_iter()
                .filter(|r| !days.contains_key(&r.day_ms))
                .collect();
            rows.extend(days.into_values().flatten());
            out.extend(write(&mut rows)?.map(|seg| (Some(i), seg)));
        }
        Ok(out)
    }

    /// The months of `segments` (by their first key) that the flushed instant is
    /// [`MONTH_SETTLE_MS`] past: those whose files are merged into one.
    fn settled_months(&self, segments: &[Segment]) -> BTreeSet<i64> {
        segments
            .iter()
            .map(|s| month_start(s.min_key))
            .filter(|m| next_month_start(*m) + MONTH_SETTLE_MS <= self.flushed_to_ms)
            .collect()
    }

    /// Merges the `billing_daily` files of each month the flushed instant is
    /// [`MONTH_SETTLE_MS`] past into one, as [`BillingHours::merge_months`] does for the
    /// hours (row groups copied, nothing decoded): a year is a dozen daily files, not
    /// hundreds. A merge that fails is logged and tried again at the next flush.
    fn merge_daily_months(&mut self, out: &mut Flushed) {
        for month in self.settled_months(&self.daily_segments) {
            let inputs: Vec<Segment> = self
                .daily_segments
                .iter()
                .filter(|s| month_start(s.min_key) == month)
                .cloned()
                .collect();
            if inputs.len() < 2 {
                continue;
            }
            match self.files.concat(&inputs) {
                Ok(Some(seg)) => {
                    out.retired
                        .extend(inputs.iter().map(|d| self.files.path(d)));
                    self.daily_segments
                        .retain(|s| month_start(s.min_key) != month);
                    self.daily_segments.push(seg);
                    self.daily_segments.sort_by_key(|s| s.min_key);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(month, %error, "merging a month of billing_daily files failed; its day files stay and the merge is tried again at the next flush");
                }
            }
        }
    }

    /// The `billing_daily` rows of the days not flushed yet, as of `now_ms`, summed
    /// straight from the clusters' hours (no row of `billing_hours` is built).
    pub fn daily(&self, now_ms: i64) -> Vec<DailyRow> {
        let mut acc: BTreeMap<(i64, [&str; 4]), DailyRow> = BTreeMap::new();
        for c in self.clusters.values() {
            // A cluster's hours come in order: its day is summed first, then added to the
            // map once (one lookup per cluster and day, not per hour).
            let mut day_sum: Option<(i64, f64, i64, bool)> = None;
            let dims = [
                c.org_id.as_str(),
                c.sku.as_str(),
                c.cloud.as_str(),
                c.region.as_str(),
            ];
            let mut add = |(day, cku_hours, recomputed_at_ms, open): (i64, f64, i64, bool)| {
                let d = daily_entry(&mut acc, day, dims);
                d.add_hours(cku_hours, recomputed_at_ms, open);
                d.clusters += 1;
            };
            for r in c.billing.rows(now_ms) {
                let day = day_start(r.hour_start_ms);
                match &mut day_sum {
                    Some(s) if s.0 == day => {
                        s.1 += r.cku_hours;
                        s.2 = s.2.max(r.recomputed_at_ms);
                        s.3 |= r.open;
                    }
                    _ => {
                        if let Some(done) = day_sum.take() {
                            add(done);
                        }
                        day_sum = Some((day, r.cku_hours, r.recomputed_at_ms, r.open));
                    }
                }
            }
            if let Some(done) = day_sum {
                add(done);
            }
        }
        acc.into_values().collect()
    }

    /// The rows in memory as of `now_ms` of the clusters `keep` accepts (by id and
    /// dimensions), by cluster then hour: a filter on a dimension builds no other rows,
    /// and a row borrows its cluster's strings.
    pub fn rows_where(
        &self,
        now_ms: i64,
        keep: impl Fn(&str, &BilledCluster) -> bool,
    ) -> Vec<ClusterHour<'_>> {
        let mut out = Vec::new();
        for (id, c) in &self.clusters {
            if keep(id, c) {
                out.extend(c.billing.rows(now_ms).into_iter().map(|hour| ClusterHour {
                    id,
                    cluster: c,
                    hour,
                    hours: 1,
                }));
            }
        }
        out
    }

    /// The orgs under which `cluster_id`'s rows in the files may be (a superset: every
    /// org it had at a flush); `None` when that is not known, and for a cluster billing
    /// has never seen. An empty list: none of its rows is in a file.
    pub fn filed_orgs(&self, cluster_id: &str) -> Option<&[String]> {
        self.clusters.get(cluster_id)?.filed_orgs.as_deref()
    }

    /// Writes one day's rows, which are sorted by (org, cluster, hour), as a segment.
    fn write_day<R: BillingFields>(&self, rows: &[R]) -> crate::Result<Option<Segment>> {
        self.files.write_rows(
            &billing_segment_schema(),
            rows,
            billing_segment_batch,
            BILLING_SEGMENTS,
        )
    }

    /// Every row, from the segments and memory, by cluster then hour. Reads every segment:
    /// for tests and tools, not for queries.
    pub fn all_rows(&self, now_ms: i64) -> crate::Result<Vec<BillingRow>> {
        let mut rows = Vec::new();
        for s in self.hour_segments() {
            rows.extend(self.files.read_rows(s, "billing_hours", billing_rows_of)?);
        }
        rows.extend(self.rows(now_ms));
        rows.sort_by(|a, b| {
            (&a.cluster_id, a.hour_start_ms).cmp(&(&b.cluster_id, b.hour_start_ms))
        });
        Ok(rows)
    }

    /// The rows in memory as of `now_ms` (hours not yet flushed), by cluster then hour.
    pub fn rows(&self, now_ms: i64) -> Vec<BillingRow> {
        self.rows_where(now_ms, |_, _| true)
            .iter()
            .map(|h| h.cluster.row(h.id, &h.hour))
            .collect()
    }
}

impl BilledCluster {
    /// The table row of hour `r` of this cluster.
    fn row(&self, id: &str, r: &HourRow) -> BillingRow {
        BillingRow {
            hour_start_ms: r.hour_start_ms,
            cluster_id: id.to_owned(),
            org_id: self.org_id.clone(),
            sku: self.sku.clone(),
            cloud: self.cloud.clone(),
            region: self.region.clone(),
            cku_hours: r.cku_hours,
            open: r.open,
            recomputed_at_ms: r.recomputed_at_ms,
        }
    }
}

/// The columns of `billing_hours`, as a table and in its segments.
pub fn billing_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("hour_start", ts(), false),
        Field::new("cluster_id", DataType::Utf8, false),
        Field::new("org_id", DataType::Utf8, false),
        Field::new("sku", DataType::Utf8, false),
        Field::new("cloud", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("cku_hours", DataType::Float64, false),
        Field::new("open", DataType::Boolean, false),
        Field::new("recomputed_at", ts(), false),
    ]))
}

/// The columns of [`billing_schema`] at `columns` (indexes into it) over `rows`: the
/// segment writer builds all of them, a table scan only those it projects.
pub fn billing_columns<'a, R: BillingFields + 'a>(
    rows: impl Iterator<Item = &'a R> + Clone,
    columns: &[usize],
) -> Vec<ArrayRef> {
    let dimension = |k: usize| utf8_column(rows.clone(), move |r: &'a R| r.dimensions()[k]);
    let times = |f: fn(&R) -> i64| time_column(rows.clone(), f);
    columns
        .iter()
        .map(|&i| match i {
            0 => times(R::hour_start_ms),
            1 => utf8_column(rows.clone(), |r: &'a R| r.cluster_id()),
            2..=5 => dimension(i - 2),
            6 => Arc::new(Float64Array::from_iter_values(
                rows.clone().map(R::cku_hours),
            )) as ArrayRef,
            7 => Arc::new(
                rows.clone()
                    .map(|r| Some(r.open()))
                    .collect::<BooleanArray>(),
            ),
            8 => times(R::recomputed_at_ms),
            other => panic!("billing_hours has 9 columns, not a column {other}"),
        })
        .collect()
}

/// The columns of a `billing_hours` segment: [`billing_schema`]'s, in its order, then
/// `hours`. A row is a run of `hours` consecutive closed hours of one cluster within one
/// UTC day with the same dimensions, amount and recomputed time ([`HourSpan`]); its
/// `hour_start` is the run's first hour. A quiet cluster's day is one row, not 24: a
/// flush writes and a scan reads about a tenth of the rows the hours are.
pub fn billing_segment_schema() -> SchemaRef {
    let mut fields = fields_of(&billing_schema());
    fields.push(Field::new("hours", DataType::Int32, false));
    Arc::new(Schema::new(fields))
}

fn fields_of(schema: &SchemaRef) -> Vec<Field> {
    schema.fields().iter().map(|f| f.as_ref().clone()).collect()
}

/// The most hours a run holds ([`spans_of`] ends a run with its UTC day).
pub const MAX_RUN_HOURS: i32 = 24;

/// A run of consecutive closed hours of one cluster within one UTC day whose every field
/// but the hour is `first`'s: one row of a `billing_hours` segment.
#[derive(Debug)]
pub struct HourSpan<'a, R> {
    /// The run's first hour.
    pub first: &'a R,
    /// How many hours it has (1 to 24).
    pub hours: i32,
}

/// `rows` (sorted so that a cluster's hours come together, in hour order; a row may be a
/// run already, [`BillingFields::hours`]) as runs ([`HourSpan`]): an hour (or a run of
/// them) joins the run before it when it starts at that run's next hour, of
/// the same cluster, dimensions, day, amount (the same `f64`, bit for bit: a run expands
/// to exactly its hours) and recomputed time, and neither is open.
pub fn spans_of<R: BillingFields>(rows: &[R]) -> Vec<HourSpan<'_, R>> {
    let mut out: Vec<HourSpan<'_, R>> = Vec::new();
    for r in rows {
        if let Some(last) = out.last_mut() {
            let f = last.first;
            let next = f.hour_start_ms() + i64::from(last.hours) * HOUR_MS;
            let r_last = r.hour_start_ms() + i64::from(r.hours() - 1) * HOUR_MS;
            if r.hour_start_ms() == next
                && day_start(r_last) == day_start(f.hour_start_ms())
                && !r.open()
                && !f.open()
                && r.cku_hours().to_bits() == f.cku_hours().to_bits()
                && r.recomputed_at_ms() == f.recomputed_at_ms()
                && r.cluster_id() == f.cluster_id()
                && r.dimensions() == f.dimensions()
            {
                last.hours += r.hours();
                continue;
            }
        }
        out.push(HourSpan {
            first: r,
            hours: r.hours(),
        });
    }
    out
}

/// `rows` as one batch of [`billing_segment_schema`], their runs ([`spans_of`]) one row
/// each.
pub fn billing_segment_batch<R: BillingFields>(rows: &[R]) -> RecordBatch {
    let spans = spans_of(rows);
    let all: Vec<usize> = (0..billing_schema().fields().len()).collect();
    let mut columns = billing_columns(spans.iter().map(|s| s.first), &all);
    columns.push(Arc::new(Int32Array::from_iter_values(
        spans.iter().map(|s| s.hours),
    )));
    // The columns are built from the schema's own list: it cannot fail.
    RecordBatch::try_new(billing_segment_schema(), columns)
        .expect("billing segment batch matches its schema")
}

/// The rows of a batch of [`billing_schema`], or of [`billing_segment_schema`] with each
/// run expanded to its hours; a missing or mistyped column is an error that names it.
pub fn billing_rows_of(b: &RecordBatch) -> Result<Vec<BillingRow>, String> {
    let mut rows = Vec::with_capacity(b.num_rows());
    for FiledRun { first, hours } in filed_runs_of(b)? {
        // Every hour but the last a copy of the parsed row, the last the row itself
        // (`filed_runs_of` gives at least one hour): no row is built twice.
        let (start, last) = (first.hour_start_ms, i64::from(hours) - 1);
        rows.extend((0..last).map(|n| BillingRow {
            hour_start_ms: start + n * HOUR_MS,
            ..first.clone()
        }));
        rows.push(BillingRow {
            hour_start_ms: start + last * HOUR_MS,
            ..first
        });
    }
    Ok(rows)
}

/// One row of a `billing_hours` segment as it is filed: a run of `hours` hours from
/// `first`'s, each with `first`'s other fields ([`HourSpan`]), not expanded. A month's
/// merge moves runs, not the hours they stand for.
#[derive(Debug, Clone, PartialEq)]
pub struct FiledRun {
    /// The run's first hour.
    pub first: BillingRow,
    /// How many hours it has (1 to [`MAX_RUN_HOURS`]; 1 in a file of hour rows).
    pub hours: i32,
}

impl BillingFields for FiledRun {
    fn hour_start_ms(&self) -> i64 {
        self.first.hour_start_ms
    }
    fn cluster_id(&self) -> &str {
        &self.first.cluster_id
    }
    fn dimensions(&self) -> [&str; 4] {
        self.first.dimensions()
    }
    fn cku_hours(&self) -> f64 {
        self.first.cku_hours
    }
    fn open(&self) -> bool {
        self.first.open
    }
    fn recomputed_at_ms(&self) -> i64 {
        self.first.recomputed_at_ms
    }
    fn hours(&self) -> i32 {
        self.hours
    }
}

/// The rows of a batch of [`billing_schema`] (each a run of one hour) or of
/// [`billing_segment_schema`], as filed; a missing or mistyped column, or a run of more
/// than [`MAX_RUN_HOURS`] or fewer than 1, is an error that names it.
pub fn filed_runs_of(b: &RecordBatch) -> Result<Vec<FiledRun>, String> {
    let s = |name| column::<StringArray>(b, name);
    let t = |name| column::<TimestampMillisecondArray>(b, name);
    let (hour, cluster, org, sku, cloud, region) = (
        t("hour_start")?,
        s("cluster_id")?,
        s("org_id")?,
        s("sku")?,
        s("cloud")?,
        s("region")?,
    );
    let (cku, open, at) = (
        column::<Float64Array>(b, "cku_hours")?,
        column::<BooleanArray>(b, "open")?,
        t("recomputed_at")?,
    );
    let spans = match b.column_by_name("hours") {
        Some(_) => Some(column::<Int32Array>(b, "hours")?),
        None => None,
    };
    (0..b.num_rows())
        .map(|k| {
            let hours = spans.map_or(1, |h| h.value(k));
            if !(1..=MAX_RUN_HOURS).contains(&hours) {
                return Err(format!(
                    "a run of {hours} hours; a segment row holds 1 to {MAX_RUN_HOURS}"
                ));
            }
            Ok(FiledRun {
                first: BillingRow {
                    hour_start_ms: hour.value(k),
                    cluster_id: cluster.value(k).to_owned(),
                    org_id: org.value(k).to_owned(),
                    sku: sku.value(k).to_owned(),
                    cloud: cloud.value(k).to_owned(),
                    region: region.value(k).to_owned(),
                    cku_hours: cku.value(k),
                    open: open.value(k),
                    recomputed_at_ms: at.value(k),
                },
                hours,
            })
        })
        .collect()
}

/// One row of `billing_daily`: CKU-hours of one UTC day per org, sku, cloud and region
/// (what an invoice sums).
#[derive(Debug, Clone, PartialEq)]
pub struct DailyRow {
    /// Start of the UTC day, ms since the epoch.
    pub day_ms: i64,
    /// Organisation.
    pub org_id: String,
    /// SKU.
    pub sku: String,
    /// Cloud.
    pub cloud: String,
    /// Region.
    pub region: String,
    /// CKU-hours of the day (its hours' sum).
    pub cku_hours: f64,
    /// Clusters with an hour that day.
    pub clusters: i64,
    /// The latest `recomputed_at` of the day's hours.
    pub recomputed_at_ms: i64,
    /// The day is not over (it holds the open hour).
    pub open: bool,
}

impl DailyRow {
    /// The row of `day` and dimensions `dims` (org, sku, cloud, region), with no hours.
    fn empty(day: i64, dims: [&str; 4]) -> DailyRow {
        DailyRow {
            day_ms: day,
            org_id: dims[0].to_owned(),
            sku: dims[1].to_owned(),
            cloud: dims[2].to_owned(),
            region: dims[3].to_owned(),
            cku_hours: 0.0,
            clusters: 0,
            recomputed_at_ms: i64::MIN,
            open: false,
        }
    }

    /// Adds billed hours of this day and dimensions: their amount, their latest recompute
    /// time, and whether one of them is open. The caller counts the cluster.
    fn add_hours(&mut self, cku_hours: f64, recomputed_at_ms: i64, open: bool) {
        self.cku_hours += cku_hours;
        self.recomputed_at_ms = self.recomputed_at_ms.max(recomputed_at_ms);
        self.open |= open;
    }
}

/// The row of `day` and dimensions `dims` (org, sku, cloud, region) in `acc`, empty if new.
fn daily_entry<'a, 'm>(
    acc: &'m mut BTreeMap<(i64, [&'a str; 4]), DailyRow>,
    day: i64,
    dims: [&'a str; 4],
) -> &'m mut DailyRow {
    acc.entry((day, dims))
        .or_insert_with(|| DailyRow::empty(day, dims))
}

/// The `billing_daily` rows of `rows`, by day then dimensions. A cluster counts once a day,
/// in the row of the dimensions of its first hour that day.
///
/// A flush gathers each cluster's hours in turn: while day and dimensions stay those of
/// the row before, its daily row is taken again without a lookup, and while day and
/// cluster stay, the cluster is known to be counted.
pub fn daily_of<R: BillingFields>(rows: &[R]) -> Vec<DailyRow> {
    let mut out: Vec<DailyRow> = Vec::new();
    let mut index: std::collections::HashMap<(i64, [&str; 4]), usize> =
        std::collections::HashMap::new();
    let mut seen: std::collections::HashSet<(i64, &str)> = std::collections::HashSet::new();
    let mut last: Option<(i64, [&str; 4], usize, &str)> = None;
    for r in rows {
        let day = day_start(r.hour_start_ms());
        let dims = r.dimensions();
        let cluster = r.cluster_id();
        let i = match last {
            Some((d, ds, i, _)) if d == day && ds == dims => i,
            _ => *index.entry((day, dims)).or_insert_with(|| {
                out.push(DailyRow::empty(day, dims));
                out.len() - 1
            }),
        };
        let counted = last.is_some_and(|(d, _, _, c)| d == day && c == cluster);
        let d = &mut out[i];
        // Hour by hour: a run adds up to what its hours did.
        for _ in 0..r.hours() {
            d.add_hours(r.cku_hours(), r.recomputed_at_ms(), r.open());
        }
        if !counted && seen.insert((day, cluster)) {
            d.clusters += 1;
        }
        last = Some((day, dims, i, cluster));
    }
    out.sort_unstable_by(|a, b| {
        (a.day_ms, [&a.org_id, &a.sku, &a.cloud, &a.region])
            .cmp(&(b.day_ms, [&b.org_id, &b.sku, &b.cloud, &b.region]))
    });
    out
}

/// The order of rows in a `billing_hours` segment: org, cluster, hour.
fn billing_order(a: &BillingRow, b: &BillingRow) -> std::cmp::Ordering {
    (&a.org_id, &a.cluster_id, a.hour_start_ms).cmp(&(&b.org_id, &b.cluster_id, b.hour_start_ms))
}

/// The start of the UTC month after the one `ms` is in.
pub(crate) fn next_month_start(ms: i64) -> i64 {
    month_start(month_start(ms) + 32 * DAY_MS)
}

/// The start of the UTC day of `ms`.
fn day_start(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// The start of the UTC month of `ms`.
pub(crate) fn month_start(ms: i64) -> i64 {
    use chrono::Datelike;
    let d = chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(chrono::NaiveDate::default, |t| t.date_naive());
    d.with_day(1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(ms, |t| t.and_utc().timestamp_millis())
}

/// How `billing_daily` segments are written: a bloom filter on the org, the day as key.
const DAILY_SEGMENTS: SegmentLayout = SegmentLayout {
    bloom: &["org_id"],
    key: "day",
    pages: Pages::Large,
    group_rows: ROW_GROUP_ROWS,
};

/// The columns of `billing_daily`, as a table and in its segments.
pub fn daily_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("day", ts(), false),
        Field::new("org_id", DataType::Utf8, false),
        Field::new("sku", DataType::Utf8, false),
        Field::new("cloud", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("cku_hours", DataType::Float64, false),
        Field::new("clusters", DataType::Int64, false),
        Field::new("open", DataType::Boolean, false),
        Field::new("recomputed_at", ts(), false),
    ]))
}

/// The columns of [`daily_schema`] at `columns` (indexes into it) over `rows`.
pub fn daily_columns<'a>(
    rows: impl Iterator<Item = &'a DailyRow> + Clone,
    columns: &[usize],
) -> Vec<ArrayRef> {
    let strings = |f: fn(&DailyRow) -> &str| utf8_column(rows.clone(), f);
    let times = |f: fn(&DailyRow) -> i64| time_column(rows.clone(), f);
    columns
        .iter()
        .map(|&i| match i {
            0 => times(|r| r.day_ms),
            1 => strings(|r| &r.org_id),
            2 => strings(|r| &r.sku),
            3 => strings(|r| &r.cloud),
            4 => strings(|r| &r.region),
            5 => Arc::new(Float64Array::from_iter_values(
                rows.clone().map(|r| r.cku_hours),
            )) as ArrayRef,
            6 => Arc::new(Int64Array::from_iter_values(
                rows.clone().map(|r| r.clusters),
            )),
            7 => Arc::new(rows.clone().map(|r| Some(r.open)).collect::<BooleanArray>()),
            8 => times(|r| r.recomputed_at_ms),
            other => panic!("billing_daily has 9 columns, not a column {other}"),
        })
        .collect()
}

/// `rows` as one batch of [`daily_schema`].
pub fn daily_batch<'a>(rows: impl Iterator<Item = &'a DailyRow> + Clone) -> RecordBatch {
    let all: Vec<usize> = (0..daily_schema().fields().len()).collect();
    RecordBatch::try_new(daily_schema(), daily_columns(rows, &all))
        .expect("daily batch matches its schema")
}

/// The rows of a batch of [`daily_schema`].
fn daily_rows_of(b: &RecordBatch) -> Result<Vec<DailyRow>, String> {
    let s = |name| column::<StringArray>(b, name);
    let t = |name| column::<TimestampMillisecondArray>(b, name);
    let (day, org, sku, cloud, region) = (
        t("day")?,
        s("org_id")?,
        s("sku")?,
        s("cloud")?,
        s("region")?,
    );
    let (cku, clusters, open, at) = (
        column::<Float64Array>(b, "cku_hours")?,
        column::<Int64Array>(b, "clusters")?,
        column::<BooleanArray>(b, "open")?,
        t("recomputed_at")?,
    );
    Ok((0..b.num_rows())
        .map(|k| DailyRow {
            day_ms: day.value(k),
            org_id: org.value(k).to_owned(),
            sku: sku.value(k).to_owned(),
            cloud: cloud.value(k).to_owned(),
            region: region.value(k).to_owned(),
            cku_hours: cku.value(k),
            clusters: clusters.value(k),
            open: open.value(k),
            recomputed_at_ms: at.value(k),
        })
        .collect())
}

/// How point segments are written: a bloom filter on the cluster, the time as the key.
const POINT_SEGMENTS: SegmentLayout = SegmentLayout {
    bloom: &["cluster_id"],
    key: "ts",
    pages: Pages::Small,
    group_rows: ROW_GROUP_ROWS,
};

/// The columns of a point segment.
fn points_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("cluster_id", DataType::Utf8, false),
        Field::new("rate", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("version", DataType::Int64, false),
        Field::new("cku", DataType::Int64, false),
    ]))
}

fn rate_name(rate: Rate) -> &'static str {
    match rate {
        Rate::Desired => "desired",
        Rate::Actual => "actual",
    }
}

/// Writes `points` (sorted here by cluster) as one point segment.
fn write_points(
    files: &SegmentDir,
    mut points: Vec<(&str, Rate, RatePoint)>,
) -> crate::Result<Option<Segment>> {
    points.sort_by(|a, b| (a.0, a.2.ts_ms, a.2.version).cmp(&(b.0, b.2.ts_ms, b.2.version)));
    let column = |f: fn(&(&str, Rate, RatePoint)) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(points.iter().map(f)))
    };
    let batch = RecordBatch::try_new(
        points_schema(),
        vec![
            Arc::new(points.iter().map(|p| Some(p.0)).collect::<StringArray>()),
            Arc::new(
                points
                    .iter()
                    .map(|p| Some(rate_name(p.1)))
                    .collect::<StringArray>(),
            ),
            column(|p| p.2.ts_ms),
            column(|p| p.2.version),
            column(|p| p.2.cku),
        ],
    )
    .expect("points batch matches its schema");
    files.write(&points_schema(), &[batch], POINT_SEGMENTS)
}

/// `cluster_id`'s points in the point segments.
fn read_points(
    files: &SegmentDir,
    segments: &[Segment],
    cluster_id: &str,
) -> crate::Result<Vec<(Rate, RatePoint)>> {
    let mut out = Vec::new();
    for s in segments {
        for b in files.read(s, None, Some(("cluster_id", cluster_id)))? {
            let bad = |message: String| crate::Error::Checkpoint {
                path: files.path(s),
                projection: "billing_hours".into(),
                message,
            };
            let strings = |name: &str| column::<StringArray>(&b, name).map_err(bad);
            let ints = |name: &str| column::<Int64Array>(&b, name).map_err(bad);
            let (ids, rates) = (strings("cluster_id")?, strings("rate")?);
            let (ts, version, cku) = (ints("ts")?, ints("version")?, ints("cku")?);
            for k in 0..b.num_rows() {
                if ids.value(k) != cluster_id {
                    continue;
                }
                let rate = match rates.value(k) {
                    "desired" => Rate::Desired,
                    "actual" => Rate::Actual,
                    other => return Err(bad(format!("unknown rate {other:?}"))),
                };
                out.push((
                    rate,
                    RatePoint {
                        ts_ms: ts.value(k),
                        version: version.value(k),
                        cku: cku.value(k),
                    },
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::DateTime;
    use fleetledger_schemas::{
        CapacityState, LogicalState, PhysicalState, RecordMeta, StateRecord, StatusState,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::billing::{HOUR_MS, hour_start};
    use crate::clusters::Clusters;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const MIN: i64 = 60_000;
    use fleetledger_schemas::PHASES;

    /// One change of a simulated cluster's life, before versions are assigned.
    #[derive(Debug, Clone)]
    enum Change {
        /// Desired CKU; `deleted` deletes, a later `false` recovers.
        Logical {
            cku: i32,
            deleted: bool,
        },
        Status {
            phase: usize,
            cku: i32,
        },
        Physical {
            brokers: i32,
        },
        Capacity,
    }

    fn state_of(c: &Change) -> FacetState {
        match c {
            Change::Logical { cku, deleted } => FacetState::Logical(Arc::new(LogicalState {
                org_id: "org-1".into(),
                env_id: "env-1".into(),
                kind: "kafka".into(),
                name: "orders".into(),
                sku: "dedicated".into(),
                cku: *cku,
                cloud: "aws".into(),
                region: format!("region-{cku}"),
                network: "public".into(),
                config: Default::default(),
                deleted: *deleted,
            })),
            Change::Status { phase, cku } => FacetState::Status(Arc::new(StatusState {
                phase: PHASES[*phase].into(),
                cku: *cku,
                brokers_ready: 3,
                observed_version: 1,
                message: None,
            })),
            Change::Physical { brokers } => FacetState::Physical(Arc::new(PhysicalState {
                brokers: *brokers,
                disk_gb_per_broker: 100,
                zones: vec!["a".into()],
                version: "4.1".into(),
            })),
            Change::Capacity => FacetState::Capacity(Arc::new(CapacityState {
                satellite: "sat-1".into(),
                k8s_cluster: "k8s-1".into(),
                node_pool: "pool-1".into(),
            })),
        }
    }

    /// A cluster's history in time order: created at `T0`, then changes of every facet
    /// (expansions, shrinks, changes of mind, deletion and recovery) at random gaps,
    /// versions counted per facet.
    fn life() -> impl Strategy<Value = Vec<HistoryRecord>> {
        life_from(T0)
    }

    /// A cluster's life from `t0`.
    fn life_from(t0: i64) -> impl Strategy<Value = Vec<HistoryRecord>> {
        let change = prop_oneof![
            (1i32..=8, proptest::bool::weighted(0.15))
                .prop_map(|(cku, deleted)| Change::Logical { cku, deleted }),
            (0usize..PHASES.len(), 0i32..=8).prop_map(|(phase, cku)| Change::Status { phase, cku }),
            (1i32..=6).prop_map(|brokers| Change::Physical { brokers }),
            Just(Change::Capacity),
        ];
        proptest::collection::vec((0i64..200, change), 1..40).prop_map(move |steps| {
            let mut t = t0;
            let mut versions = BTreeMap::new();
            let first = (
                0,
                Change::Logical {
                    cku: 2,
                    deleted: false,
                },
            );
            std::iter::once(first)
                .chain(steps)
                .enumerate()
                .map(|(i, (gap, c))| {
                    t += gap * MIN;
                    let state = state_of(&c);
                    let v = versions.entry(state.facet()).or_insert(0i64);
                    *v += 1;
                    HistoryRecord {
                        record: StateRecord {
                            meta: RecordMeta {
                                cluster_id: "lkc-a".into(),
                                version: *v,
                                writer: "test".into(),
                                request_id: format!("r{i}"),
                                reason: None,
                                ts: DateTime::from_timestamp_millis(t).unwrap(),
                                prev_hash: String::new(),
                                hash: String::new(),
                            },
                            state,
                        },
                        partition: 0,
                        offset: i as i64,
                        written_at_ms: t,
                    }
                })
                .collect()
        })
    }

    /// The bill by the slow, obvious definition: minute by minute over the records in time
    /// order, in integer CKU-milliseconds.
    fn reference(life: &[HistoryRecord], now: i64) -> BTreeMap<i64, i128> {
        let mut out = BTreeMap::new();
        let (mut desired, mut actual) = (0i64, 0i64);
        let mut i = 0;
        let mut t = T0;
        while t < now {
            while i < life.len() && life[i].record.meta.ts.timestamp_millis() <= t {
                match &life[i].record.state {
                    FacetState::Logical(l) => {
                        desired = if l.deleted { 0 } else { i64::from(l.cku) }
                    }
                    FacetState::Status(s) => actual = i64::from(s.billable_cku()),
                    _ => {}
                }
                i += 1;
            }
            let rate = desired.min(actual).max(0);
            if rate > 0 {
                *out.entry(hour_start(t)).or_insert(0) += i128::from(rate) * i128::from(MIN);
            }
            t += MIN;
        }
        out
    }

    /// `life` in an arrival order chosen by `picks`: each facet's records keep their order,
    /// facets interleave arbitrarily (so back-dated records arrive after later ones), and
    /// every record is written at the time it arrives (late ones after every event).
    fn arrival(life: &[HistoryRecord], picks: &[u8]) -> Vec<HistoryRecord> {
        let mut queues: BTreeMap<String, std::collections::VecDeque<HistoryRecord>> =
            BTreeMap::new();
        for h in life {
            queues
                .entry(h.record.facet().to_string())
                .or_default()
                .push_back(h.clone());
        }
        let last = life
            .last()
            .map_or(T0, |h| h.record.meta.ts.timestamp_millis());
        let mut out = Vec::new();
        let mut k = 0;
        while queues.values().any(|q| !q.is_empty()) {
            let open: Vec<String> = queues
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(f, _)| f.clone())
                .collect();
            let pick = picks.get(k).copied().unwrap_or(0) as usize % open.len();
            k += 1;
            let mut h = queues
                .get_mut(&open[pick])
                .and_then(|q| q.pop_front())
                .unwrap();
            h.written_at_ms = last + out.len() as i64;
            h.offset = out.len() as i64;
            out.push(h);
        }
        out
    }

    fn billed(rows: &[BillingRow]) -> BTreeMap<i64, i128> {
        rows.iter()
            .filter(|r| r.cku_hours != 0.0)
            .map(|r| {
                (
                    r.hour_start_ms,
                    (r.cku_hours * HOUR_MS as f64).round() as i128,
                )
            })
            .collect()
    }

    fn record(c: Change, ts: i64, version: i64, offset: i64) -> HistoryRecord {
        HistoryRecord {
            record: StateRecord {
                meta: RecordMeta {
                    cluster_id: "lkc-a".into(),
                    version,
                    writer: "test".into(),
                    request_id: format!("r{offset}"),
                    reason: None,
                    ts: DateTime::from_timestamp_millis(ts).unwrap(),
                    prev_hash: String::new(),
                    hash: String::new(),
                },
                state: state_of(&c),
            },
            partition: 0,
            offset,
            written_at_ms: ts,
        }
    }

    /// A segment row is a run of equal hours of one cluster within one day: a change of
    /// amount, recomputed time, cluster, dimensions, an open hour, a gap and midnight each
    /// start a new run, and the runs read back are exactly the hours written.
    #[test]
    fn runs_of_hours_end_at_every_difference_and_read_back_as_the_hours() {
        let row = |id: &str, org: &str, h: i64, cku: f64, at: i64| BillingRow {
            hour_start_ms: T0 + h * HOUR_MS,
            cluster_id: id.into(),
            org_id: org.into(),
            sku: "basic".into(),
            cloud: "aws".into(),
            region: "us-east-1".into(),
            cku_hours: cku,
            open: false,
            recomputed_at_ms: at,
        };
        let mut rows = Vec::new();
        // lkc-a: hours 0–9 at 2, 10 at 2.5, 11–23 at 3, 24–29 at 3 (the next day), a gap,
        // 31–32 at 3 recomputed later.
        rows.extend((0..10).map(|h| row("lkc-a", "o", h, 2.0, 1)));
        rows.push(row("lkc-a", "o", 10, 2.5, 1));
        rows.extend((11..30).map(|h| row("lkc-a", "o", h, 3.0, 1)));
        rows.extend((31..33).map(|h| row("lkc-a", "o", h, 3.0, 7)));
        // lkc-b: same amounts but another cluster, then another org.
        rows.extend((0..3).map(|h| row("lkc-b", "o", h, 3.0, 1)));
        rows.extend((3..5).map(|h| row("lkc-b", "p", h, 3.0, 1)));
        // 0.1 + 0.2 is not 0.3: not the same amount.
        rows.push(row("lkc-b", "p", 5, 0.1 + 0.2, 1));
        rows.push(row("lkc-b", "p", 6, 0.3, 1));
        let mut open = row("lkc-b", "p", 7, 0.3, 1);
        open.open = true;
        rows.push(open);
        assert_eq!(day_start(T0), T0, "T0 is a midnight");
        let runs: Vec<(String, i64, i32)> = spans_of(&rows)
            .iter()
            .map(|s| {
                let h = (s.first.hour_start_ms - T0) / HOUR_MS;
                (s.first.cluster_id.clone(), h, s.hours)
            })
            .collect();
        let want = [
            ("lkc-a", 0, 10),
            ("lkc-a", 10, 1),
            ("lkc-a", 11, 13),
            ("lkc-a", 24, 6),
            ("lkc-a", 31, 2),
            ("lkc-b", 0, 3),
            ("lkc-b", 3, 2),
            ("lkc-b", 5, 1),
            ("lkc-b", 6, 1),
            ("lkc-b", 7, 1),
        ];
        let want: Vec<(String, i64, i32)> = want
            .iter()
            .map(|(c, h, n)| (c.to_string(), *h, *n))
            .collect();
        assert_eq!(runs, want);
        let batch = billing_segment_batch(&rows);
        assert_eq!(batch.num_rows(), want.len());
        assert_eq!(billing_rows_of(&batch).unwrap(), rows);
        // Runs made already (a flush's) join as their hours would, and not across midnight;
        // the daily rollup counts each of their hours.
        let c = BilledCluster::default();
        let run = |h: i64, hours: i32| ClusterHour {
            id: "lkc-r",
            cluster: &c,
            hour: HourRow {
                hour_start_ms: T0 + h * HOUR_MS,
                cku_hours: 0.5,
                open: false,
                recomputed_at_ms: 1,
            },
            hours,
        };
        let made = [run(0, 3), run(3, 2), run(5, 19), run(24, 4)];
        let joined: Vec<(i64, i32)> = spans_of(&made)
            .iter()
            .map(|s| ((s.first.hour.hour_start_ms - T0) / HOUR_MS, s.hours))
            .collect();
        assert_eq!(joined, [(0, 24), (24, 4)]);
        let daily = daily_of(&made);
        assert_eq!(
            daily.iter().map(|d| d.cku_hours).collect::<Vec<_>>(),
            [12.0, 2.0]
        );
        assert_eq!(
            billing_rows_of(&billing_segment_batch(&made))
                .unwrap()
                .len(),
            28
        );
    }

    /// A catch-up that reads one partition days ahead of another closes a day only once
    /// the slower partition has passed it (so its records of that day are not late); a
    /// partition read to its end stops holding the days back until its next record.
    #[test]
    fn days_close_at_the_slowest_partition_still_being_read() {
        let mut b = BillingHours::default();
        let on = |p: i32, mut h: HistoryRecord| {
            h.partition = p;
            h.record.meta.cluster_id = format!("lkc-p{p}");
            h
        };
        let logical = Change::Logical {
            cku: 1,
            deleted: false,
        };
        b.apply(&on(0, record(logical.clone(), T0, 1, 0))).unwrap();
        b.apply(&on(0, record(logical.clone(), T0 + 5 * DAY_MS, 2, 1)))
            .unwrap();
        b.apply(&on(1, record(logical.clone(), T0 + HOUR_MS, 1, 0)))
            .unwrap();
        let now = T0 + 30 * DAY_MS;
        assert_eq!(b.watermark(), T0 + HOUR_MS, "partition 1 is behind");
        assert_eq!(
            b.flush_target(now, false),
            T0 - DAY_MS,
            "no day has closed for both"
        );
        b.flush(now, false).unwrap();
        // Partition 1 goes on with day one: not late, nothing read back or corrected.
        b.apply(&on(1, record(logical.clone(), T0 + 20 * HOUR_MS, 2, 1)))
            .unwrap();
        assert!(!b.clusters["lkc-p1"].billing.loaded);
        assert!(
            b.clusters
                .values()
                .all(|c| c.billing.corrections.is_empty())
        );
        // Read to its end, partition 1 no longer holds the days back; its next record does.
        b.partitions_at_end([1]);
        assert_eq!(b.watermark(), T0 + 5 * DAY_MS);
        assert_eq!(b.flush_target(now, false), T0 + 4 * DAY_MS);
        b.apply(&on(1, record(logical, T0 + 2 * DAY_MS, 3, 2)))
            .unwrap();
        assert_eq!(b.watermark(), T0 + 2 * DAY_MS);
        b.partitions_at_end([0, 1]);
        assert_eq!(
            b.watermark(),
            T0 + 5 * DAY_MS,
            "all at their end: the latest"
        );
    }

    /// A status record's change: running at `cku`.
    fn running(cku: i32) -> Change {
        Change::Status {
            phase: PHASES.iter().position(|p| *p == "running").unwrap(),
            cku,
        }
    }

    /// A logical record's change: `cku` desired, not deleted.
    fn logical(cku: i32) -> Change {
        Change::Logical {
            cku,
            deleted: false,
        }
    }

    /// Empty billing whose files go to a directory of this test process named `name`.
    fn billing_in(name: &str) -> (crate::segments::SegmentDir, BillingHours) {
        let dir = std::env::temp_dir().join(format!("fl-billing-{name}-{}", std::process::id()));
        let files = crate::segments::SegmentDir::new(&dir);
        let b = BillingHours {
            files: files.clone(),
            ..BillingHours::default()
        };
        (files, b)
    }

    /// A cluster moved to another org has rows in the files under both: the orgs kept
    /// for it name both, and every org its filed rows carry is among them. A checkpoint
    /// without them reads as "not known".
    #[test]
    fn the_orgs_of_a_clusters_filed_rows_are_known_across_an_org_change() {
        let (files, mut b) = billing_in("orgs");
        let logical = Change::Logical {
            cku: 2,
            deleted: false,
        };
        let running = Change::Status {
            phase: PHASES.iter().position(|p| *p == "running").unwrap(),
            cku: 2,
        };
        b.apply(&record(logical.clone(), T0, 1, 0)).unwrap();
        b.apply(&record(running, T0 + 30 * MIN, 1, 1)).unwrap();
        assert_eq!(b.filed_orgs("lkc-a"), Some(&[][..]), "nothing filed yet");
        assert_eq!(b.filed_orgs("lkc-unknown"), None);
        b.flush(T0 + 2 * DAY_MS, true).unwrap();
        assert_eq!(b.filed_orgs("lkc-a").unwrap(), ["org-1"]);
        let mut moved = record(logical, T0 + 2 * DAY_MS + HOUR_MS, 2, 2);
        if let FacetState::Logical(l) = &mut moved.record.state {
            Arc::make_mut(l).org_id = "org-2".into();
        }
        b.apply(&moved).unwrap();
        b.flush(T0 + 4 * DAY_MS, true).unwrap();
        assert_eq!(b.filed_orgs("lkc-a").unwrap(), ["org-1", "org-2"]);
        let filed: BTreeSet<String> = b
            .all_rows(T0 + 4 * DAY_MS)
            .unwrap()
            .into_iter()
            .filter(|r| r.hour_start_ms < b.flushed_to_ms)
            .map(|r| r.org_id)
            .collect();
        assert_eq!(filed, BTreeSet::from(["org-1".into(), "org-2".into()]));
        let mut old = serde_json::to_value(&b.clusters["lkc-a"]).unwrap();
        old.as_object_mut().unwrap().remove("filed_orgs");
        let old: BilledCluster = serde_json::from_value(old).unwrap();
        assert_eq!(old.filed_orgs, None);
        files.remove_all().unwrap();
    }

    /// A status back-dated into a written day reads the cluster's points back, rewrites
    /// the files of the days it re-bills and no other, and goes to the point files itself.
    #[test]
    fn a_late_status_rewrites_the_day_it_falls_in() {
        let (files, mut b) = billing_in("late");
        let life = [
            record(logical(2), T0, 1, 0),
            record(running(2), T0 + 30 * MIN, 1, 1),
            record(logical(4), T0 + 26 * HOUR_MS, 2, 2),
            record(running(4), T0 + 28 * HOUR_MS, 2, 3),
            record(logical(3), T0 + 75 * HOUR_MS, 3, 4),
        ];
        for h in &life {
            b.apply(h).unwrap();
        }
        let now = T0 + 80 * HOUR_MS;
        // While records flow, day three is not written yet: history is not 12 h past it.
        b.flush(now, false).unwrap();
        assert_eq!(b.flushed_to_ms, T0 + 2 * DAY_MS);
        b.flush(now, true).unwrap();
        assert_eq!(b.flushed_to_ms, T0 + 3 * DAY_MS);
        assert_eq!(b.segments.len(), 3, "one file per day");
        assert!(b.clusters["lkc-a"].billing.desired.points().len() <= 2);
        let (day_two, day_three) = (b.segments[1].clone(), b.segments[2].clone());
        assert_eq!(b.daily_segments.len(), 3, "one daily file per day");
        let (daily_two, daily_three) = (b.daily_segments[1].clone(), b.daily_segments[2].clone());
        // The data plane reports, late, that it had shrunk to 1 CKU on day two at 10:00.
        let late = record(running(1), T0 + DAY_MS + 10 * HOUR_MS, 3, 5);
        b.apply(&late).unwrap();
        assert!(b.clusters["lkc-a"].billing.loaded);
        assert!(!b.clusters["lkc-a"].billing.corrections.is_empty());
        let flushed = b.flush(now, false).unwrap();
        // The shrink holds from day two 10:00 on: days two and three are rewritten, day
        // one is not; so are their daily rollups, and not day one's.
        assert_eq!(
            flushed.retired,
            vec![
                files.path(&day_two),
                files.path(&day_three),
                files.path(&daily_two),
                files.path(&daily_three),
            ]
        );
        let mut all = life.to_vec();
        all.push(late);
        all.sort_by_key(|h| h.record.meta.ts);
        let rows = b.all_rows(now).unwrap();
        assert_eq!(billed(&rows), reference(&all, now));
        // The late point waits in memory (and the checkpoint) for the next day's flush.
        assert_eq!(b.clusters["lkc-a"].billing.unsaved.len(), 1);
        b.flush(now + DAY_MS, true).unwrap();
        assert!(b.clusters["lkc-a"].billing.unsaved.is_empty());
        assert!(
            read_points(&files, &b.point_segments, "lkc-a")
                .unwrap()
                .iter()
                .any(|(r, p)| *r == Rate::Actual
                    && p.ts_ms == T0 + DAY_MS + 10 * HOUR_MS
                    && p.cku == 1)
        );
        files.remove_all().unwrap();
    }

    /// A settled month's day files merge into one file of the same runs sorted by (org,
    /// cluster, hour), as a day's are: a cluster's month lies in a row group or two, not
    /// in one row group a day.
    #[test]
    fn a_settled_month_is_the_days_runs_sorted_by_org_cluster_and_hour() {
        let (files, mut b) = billing_in("sorted-month");
        let of = |mut h: HistoryRecord, n: i64| {
            h.record.meta.cluster_id = format!("lkc-{n:03}");
            if let FacetState::Logical(l) = &mut h.record.state {
                Arc::make_mut(l).org_id = format!("org-{}", n % 7);
            }
            h
        };
        let mut offset = 0;
        let mut next = || {
            offset += 1;
            offset
        };
        for n in 0..300 {
            let start = T0 + n * MIN;
            b.apply(&of(record(logical(2), start, 1, next()), n))
                .unwrap();
            b.apply(&of(record(running(2), start + MIN, 1, next()), n))
                .unwrap();
            if n % 3 == 0 {
                // A resize in the middle of the month: three runs that day.
                let at = T0 + 10 * DAY_MS + n * HOUR_MS / 20;
                b.apply(&of(record(running(4), at, 2, next()), n)).unwrap();
            }
        }
        // January's days are written, not yet settled; then merged.
        b.flush(T0 + 31 * DAY_MS + HOUR_MS, true).unwrap();
        let mut days: Vec<FiledRun> = Vec::new();
        for s in b.segments.iter().filter(|s| month_start(s.min_key) == T0) {
            days.extend(files.read_rows(s, "billing_hours", filed_runs_of).unwrap());
        }
        assert!(b.month_segments.is_empty());
        b.flush(T0 + 33 * DAY_MS, true).unwrap();
        assert_eq!(b.month_segments.len(), 1, "January is one file");
        let january = b.month_segments[0].clone();
        let month = files
            .read_rows(&january, "billing_hours", filed_runs_of)
            .unwrap();
        let key = |r: &FiledRun| {
            (
                r.first.org_id.clone(),
                r.first.cluster_id.clone(),
                r.first.hour_start_ms,
            )
        };
        assert!(
            month.windows(2).all(|w| key(&w[0]) < key(&w[1])),
            "sorted by org, cluster, hour, each run once"
        );
        days.sort_by(|a, c| billing_order(&a.first, &c.first));
        assert_eq!(month, days, "the days' runs, neither joined nor split");
        assert!(month.iter().any(|r| r.hours == 24) && month.iter().any(|r| r.hours < 24));
        // Row group by row group, which clusters it holds: each cluster in at most two.
        let file = std::fs::File::open(files.path(&january)).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let groups: Vec<usize> = (0..reader.metadata().num_row_groups())
            .map(|g| reader.metadata().row_group(g).num_rows() as usize)
            .collect();
        assert!(groups.len() >= 3, "{groups:?}");
        let mut groups_of: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
        let mut row = 0;
        for (g, n) in groups.iter().enumerate() {
            for r in &month[row..row + n] {
                groups_of.entry(&r.first.cluster_id).or_default().insert(g);
            }
            row += n;
        }
        assert_eq!(groups_of.len(), 300);
        assert!(groups_of.values().all(|g| g.len() <= 2));
        files.remove_all().unwrap();
    }

    /// A checkpoint flushes the days and merges a settled month after it has saved
    /// (`flush_days`, then `month_merges`, `MonthMerge::run`, `install_month`): a merge
    /// whose day a late record rewrote meanwhile is dropped with its file; planned again,
    /// it replaces the days, and the bill is the reference integral.
    #[test]
    fn a_month_is_merged_apart_and_dropped_if_a_day_was_rewritten_meanwhile() {
        let (files, mut b) = billing_in("merge-apart");
        let t1 = T0 + 27 * DAY_MS; // 2026-01-28
        let life = [
            record(logical(2), t1, 1, 0),
            record(running(2), t1 + 30 * MIN, 1, 1),
        ];
        for h in &life {
            b.apply(h).unwrap();
        }
        let now = T0 + 33 * DAY_MS;
        b.flush_days(now, true).unwrap();
        let merges = b.month_merges();
        assert_eq!(
            merges.len(),
            1,
            "January is settled, not merged: {merges:?}"
        );
        assert_eq!((merges[0].month, merges[0].file.clone()), (T0, None));
        assert_eq!(merges[0].days.len(), 4, "January 28 to 31");
        assert!(b.month_segments.is_empty(), "flush_days merges nothing");
        // A late record rewrites January 29 before the merge is put in place: the merge,
        // run from the days it was planned with, is dropped and its file deleted.
        let late = record(running(1), t1 + DAY_MS + 6 * HOUR_MS, 2, 2);
        b.apply(&late).unwrap();
        let january_29 = b
            .segments
            .iter()
            .find(|s| day_start(s.min_key) == t1 + DAY_MS)
            .cloned()
            .unwrap();
        let fixed = b.flush_days(now, true).unwrap();
        assert!(
            fixed.retired.contains(&files.path(&january_29)),
            "rewritten"
        );
        let stale = merges[0].clone();
        let merged = stale.run(&files).unwrap().expect("a file");
        let mut out = Flushed::default();
        b.install_month(stale, Ok(Some(merged.clone())), &mut out);
        assert!(out.retired.is_empty());
        assert!(b.month_segments.is_empty());
        assert!(
            !files.path(&merged).exists(),
            "the dropped merge's file is deleted"
        );
        // Planned again, it is put in place: one file instead of the days, which are
        // retired, and the bill is the reference's.
        let days: Vec<Segment> = b.segments.clone();
        let merges = b.month_merges();
        assert_eq!(merges.len(), 1);
        let merge = merges[0].clone();
        let merged = merge.run(&files);
        b.install_month(merge, merged, &mut out);
        assert_eq!(b.month_segments.len(), 1, "January is one file");
        assert!(b.segments.iter().all(|s| s.min_key >= T0 + 31 * DAY_MS));
        for d in days.iter().filter(|d| d.min_key < T0 + 31 * DAY_MS) {
            assert!(out.retired.contains(&files.path(d)));
        }
        let mut all = life.to_vec();
        all.push(late);
        let rows = b.all_rows(now).unwrap();
        assert_eq!(billed(&rows), reference(&all, now));
    }

    /// A month well past is one file; a status back-dated into it rewrites that file
    /// (changing the hours it has and adding the ones it lacked) and the days after it,
    /// and the bill is the reference integral.
    #[test]
    fn a_late_status_rewrites_the_merged_month_it_falls_in() {
        let (files, mut b) = billing_in("month");
        let t1 = T0 + 28 * DAY_MS; // 2026-01-29
        let life = [
            record(logical(2), t1, 1, 0),
            record(running(2), t1 + 30 * MIN, 1, 1),
            record(running(0), t1 + DAY_MS, 2, 2),
            record(logical(3), t1 + 6 * DAY_MS, 2, 3),
        ];
        for h in &life {
            b.apply(h).unwrap();
        }
        let now = t1 + 7 * DAY_MS;
        b.flush(now, true).unwrap();
        assert_eq!(b.month_segments.len(), 1, "January is one file");
        let january = b.month_segments[0].clone();
        assert_eq!(month_start(january.min_key), T0);
        assert!(
            b.segments.iter().all(|s| s.min_key >= T0 + 31 * DAY_MS),
            "only February's days stay day files"
        );
        // The month is written with the days' layout and page index (the hours'
        // `cluster_id` without a dictionary), and the daily month's row groups are copied
        // with their bloom filter on the org.
        let open = |seg: &Segment| {
            let file = std::fs::File::open(files.path(seg)).unwrap();
            let options = parquet::file::serialized_reader::ReadOptionsBuilder::new()
                .with_page_index()
                .with_reader_properties(
                    parquet::file::properties::ReaderProperties::builder()
                        .set_read_bloom_filter(true)
                        .build(),
                )
                .build();
            parquet::file::serialized_reader::SerializedFileReader::new_with_options(file, options)
                .unwrap()
        };
        let column = |md: &parquet::file::metadata::ParquetMetaData, name: &str| {
            md.file_metadata()
                .schema_descr()
                .columns()
                .iter()
                .position(|c| c.name() == name)
                .unwrap()
        };
        {
            use parquet::file::reader::FileReader;
            let reader = open(&january);
            let md = reader.metadata();
            assert_eq!(md.file_metadata().num_rows(), january.rows as i64);
            let id = column(md, "cluster_id");
            assert!(
                md.row_group(0)
                    .column(id)
                    .dictionary_page_offset()
                    .is_none()
            );
            assert!(md.column_index().is_some() && md.offset_index().is_some());
        }
        // So is its daily rollup; February's days are a daily file each.
        let daily_january: Vec<Segment> = b
            .daily_segments
            .iter()
            .filter(|s| month_start(s.min_key) == T0)
            .cloned()
            .collect();
        assert_eq!(daily_january.len(), 1, "January's daily rollup is one file");
        let daily_january = daily_january[0].clone();
        {
            use parquet::file::reader::FileReader;
            let reader = open(&daily_january);
            let org = column(reader.metadata(), "org_id");
            let group = reader.get_row_group(0).unwrap();
            let bloom = group.get_column_bloom_filter(org).expect("a bloom filter");
            assert!(bloom.check(&"org-1"));
        }
        assert_eq!(
            (daily_january.min_key, daily_january.max_key),
            (t1, t1 + DAY_MS),
            "of January 29 and 30 (no hour is billed after it stopped, on the 30th)"
        );
        assert!(
            b.daily_segments
                .iter()
                .filter(|s| s.min_key >= T0 + 31 * DAY_MS)
                .all(|s| s.min_key == s.max_key)
        );
        let days_before: Vec<Segment> = b.segments.clone();
        // Late: it had shrunk to 1 CKU on January 29 at 06:00 (hours the file has), and
        // had been running at 2 CKU again from January 30 12:00 (hours it lacks).
        let late = [
            record(running(1), t1 + 6 * HOUR_MS, 3, 4),
            record(running(2), t1 + DAY_MS + 12 * HOUR_MS, 4, 5),
        ];
        for h in &late {
            b.apply(h).unwrap();
        }
        let flushed = b.flush(now, true).unwrap();
        assert!(flushed.retired.contains(&files.path(&january)));
        assert!(flushed.retired.contains(&files.path(&daily_january)));
        assert_eq!(
            b.daily_segments
                .iter()
                .filter(|s| month_start(s.min_key) == T0)
                .count(),
            1,
            "January's daily rollup, rewritten, is still one file"
        );
        assert_eq!(b.month_segments.len(), 1);
        assert!(
            b.month_segments[0].rows > january.rows,
            "the hours it lacked were added"
        );
        for d in &days_before {
            assert!(
                flushed.retired.contains(&files.path(d)),
                "February re-billed"
            );
        }
        let mut all = life.to_vec();
        all.extend(late);
        all.sort_by_key(|h| h.record.meta.ts);
        let rows = b.all_rows(now).unwrap();
        let mut keys: Vec<i64> = rows.iter().map(|r| r.hour_start_ms).collect();
        keys.dedup();
        assert_eq!(keys.len(), rows.len(), "one row per hour");
        assert_eq!(billed(&rows), reference(&all, now));
        // The daily rollup of the rewritten days is the sum of their hours.
        let mut daily: Vec<DailyRow> = Vec::new();
        for seg in &b.daily_segments {
            daily.extend(
                files
                    .read_rows(seg, "billing_hours", daily_rows_of)
                    .unwrap(),
            );
        }
        daily.extend(b.daily(now));
        let want = daily_of(&rows);
        assert_eq!(daily.len(), want.len());
        for (d, w) in daily.iter().zip(&want) {
            assert_eq!((d.day_ms, d.clusters), (w.day_ms, w.clusters));
            assert!((d.cku_hours - w.cku_hours).abs() < 1e-9, "{d:?} != {w:?}");
        }
        files.remove_all().unwrap();
    }

    /// The daily rollup as a map from day and dimensions, each cluster counted in the row of
    /// its first hour of the day: what [`daily_of`] must equal, in any order of rows.
    fn daily_reference(rows: &[BillingRow]) -> Vec<DailyRow> {
        let mut acc: BTreeMap<(i64, [&str; 4]), DailyRow> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for r in rows {
            let day = day_start(r.hour_start_ms);
            let d = daily_entry(&mut acc, day, r.dimensions());
            d.add_hours(r.cku_hours, r.recomputed_at_ms, r.open);
            if seen.insert((day, r.cluster_id.as_str())) {
                d.clusters += 1;
            }
        }
        acc.into_values().collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Rows grouped by cluster (as a flush gathers them) or in any order, clusters that
        /// change org or region within a day: the rollup is the reference's, exactly.
        #[test]
        fn the_daily_rollup_is_the_reference_in_any_order_of_rows(
            rows in proptest::collection::vec(
                (0..4u8, 0..3u8, 0..2u8, 0..3i64, 0..24i64, 0..5u8, any::<bool>()),
                0..120,
            ),
            grouped in any::<bool>(),
        ) {
            let mut rows: Vec<BillingRow> = rows
                .into_iter()
                .map(|(cluster, org, region, day, hour, cku, open)| BillingRow {
                    hour_start_ms: T0 + day * DAY_MS + hour * HOUR_MS,
                    cluster_id: format!("lkc-{cluster}"),
                    org_id: format!("org-{org}"),
                    sku: "KAFKA_DEDICATED".into(),
                    cloud: "aws".into(),
                    region: format!("region-{region}"),
                    cku_hours: f64::from(cku) * 0.25,
                    open,
                    recomputed_at_ms: T0 + hour,
                })
                .collect();
            if grouped {
                rows.sort_by(|a, b| (&a.cluster_id, a.hour_start_ms).cmp(&(&b.cluster_id, b.hour_start_ms)));
            }
            prop_assert_eq!(daily_of(&rows), daily_reference(&rows));
        }
    }

    proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            /// Billing, the clusters row and the dimensions are the same for every arrival
            /// order of a cluster's records, and the bill is the reference integral.
            #[test]
            fn every_arrival_order_bills_the_reference_integral(
                life in life(),
                orders in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 48), 1..8),
            ) {
                let end = life.last().unwrap().record.meta.ts.timestamp_millis();
                let now = end + 150 * MIN;
                let want = reference(&life, now);
                let mut in_time = BillingHours::default();
                let mut clusters_in_time = Clusters::default();
                for h in &life {
                    in_time.apply(h).unwrap();
                    clusters_in_time.apply(h);
                }
                prop_assert_eq!(&billed(&in_time.rows(now)), &want);
                for picks in &orders {
                    let mut b = BillingHours::default();
                    let mut c = Clusters::default();
                    for h in arrival(&life, picks) {
                        b.apply(&h).unwrap();
                        c.apply(&h);
                    }
                    let rows = b.rows(now);
                    prop_assert_eq!(&billed(&rows), &want);
                    for r in &rows {
                        let w = want.get(&r.hour_start_ms).copied().unwrap_or(0) as f64 / HOUR_MS as f64;
                        prop_assert!((r.cku_hours - w).abs() < 1e-9, "hour {}: {} != {}", r.hour_start_ms, r.cku_hours, w);
                    }
                    let a = &b.clusters["lkc-a"];
                    let t = &in_time.clusters["lkc-a"];
                    prop_assert_eq!((&a.region, a.logical_version), (&t.region, t.logical_version));
                    prop_assert_eq!(&c, &clusters_in_time);
                }
            }
                /// With closed days flushed to files at random moments of the arrival (the clock
            /// far ahead, as in an import of old history), late records re-billing flushed
            /// hours, and a restart from the checkpointed state in between, the files plus
            /// memory are the reference integral, and each hour is one row.
            #[test]
            fn flushed_days_and_their_corrections_bill_the_reference_integral(
                life in prop_oneof![life(), life_from(T0 + 28 * DAY_MS)],
                picks in proptest::collection::vec(any::<u8>(), 48),
                flush_at in proptest::collection::vec(0usize..48, 0..6),
                restart_at in 0usize..48,
            ) {
                static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let dir = std::env::temp_dir().join(format!(
                    "fl-billing-flush-{}-{}",
                    std::process::id(),
                    CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                let files = crate::segments::SegmentDir::new(&dir);
                let end = life.last().unwrap().record.meta.ts.timestamp_millis();
                let now = end + 3 * DAY_MS + 17 * MIN;
                let want = reference(&life, now);
                let mut b = BillingHours { files: files.clone(), ..BillingHours::default() };
                for (i, h) in arrival(&life, &picks).into_iter().enumerate() {
                    b.apply(&h).unwrap();
                    if flush_at.contains(&i) {
                        b.flush(now, false).unwrap();
                    }
                    if i == restart_at {
                        // What a checkpoint holds, read back.
                        let json = serde_json::to_vec(&b).unwrap();
                        b = BillingHours { files: files.clone(), ..serde_json::from_slice(&json).unwrap() };
                    }
                }
                b.flush(now, true).unwrap();
                let rows = b.all_rows(now).unwrap();
                let mut keys: Vec<i64> = rows.iter().map(|r| r.hour_start_ms).collect();
                keys.dedup();
                prop_assert_eq!(keys.len(), rows.len(), "one row per hour");
                prop_assert_eq!(&billed(&rows), &want);
                prop_assert!(b.flushed_to_ms > T0, "something was flushed");
                // The days of a month the flushed instant is well past are one file.
                for seg in &b.segments {
                    prop_assert!(next_month_start(seg.min_key) + MONTH_SETTLE_MS > b.flushed_to_ms);
                }
                prop_assert!(b.month_segments.len() <= 1);
                for seg in &b.month_segments {
                    prop_assert!(next_month_start(seg.min_key) + MONTH_SETTLE_MS <= b.flushed_to_ms);
                    prop_assert_eq!(month_start(seg.max_key), month_start(seg.min_key));
                }
                let c = &b.clusters["lkc-a"].billing;
            prop_assert!(c.hours.iter().all(|(h, _)| h >= b.flushed_to_ms));
            // Memory keeps of each rate one point before the flushed instant, no more.
            for t in [&c.desired, &c.actual] {
                prop_assert!(t.points().iter().filter(|p| p.ts_ms < b.flushed_to_ms).count() <= 1);
            }
            // The daily rollup (files of the flushed days, memory for the others) is the
            // sum of the hours.
            let mut daily: Vec<DailyRow> = Vec::new();
            for seg in &b.daily_segments {
                daily.extend(files.read_rows(seg, "billing_hours", daily_rows_of).unwrap());
            }
            daily.extend(b.daily(now));
            let want_daily = daily_of(&rows);
            prop_assert_eq!(daily.len(), want_daily.len());
            for (d, w) in daily.iter().zip(&want_daily) {
                prop_assert_eq!((d.day_ms, d.clusters), (w.day_ms, w.clusters));
                prop_assert!((d.cku_hours - w.cku_hours).abs() < 1e-9, "{:?} != {:?}", d, w);
            }
            // Every point of the life is in the point files or in memory, once.
            let mut on_disk = read_points(&files, &b.point_segments, "lkc-a").unwrap();
            on_disk.sort_by_key(|(r, p)| (*r as u8, p.ts_ms, p.version));
            let mut keys: Vec<_> = on_disk.iter().map(|(r, p)| (*r as u8, p.ts_ms, p.version)).collect();
            keys.dedup();
            prop_assert_eq!(keys.len(), on_disk.len(), "no point written twice");
                files.remove_all().unwrap();
            }
    }
}
