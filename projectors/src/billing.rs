//! Billing hours: per cluster and UTC hour, billable CKU-hours = the time-integral of
//! `min(desired cku, actual cku)` over the hour. Desired is `logical.cku`, or 0 once
//! deleted; actual is `status.cku` while the phase is running, expanding, shrinking or
//! degraded, else 0. So an expansion is billed at the higher CKU only once the data plane
//! reports it, and a shrink at the lower CKU from the moment it is requested.
//!
//! **Event time, not arrival order.** A cluster's bill is a function of its records'
//! times (`ts`) alone. Each rate is kept as a step function over time ([`RateTimeline`]:
//! every change point, ordered by time and then by version); an hour's amount is the
//! integral of the two step functions over the hour. A record that arrives after records
//! with later times (a back-dated import line, a status that lands after a logical change
//! of a later time) re-integrates every hour from its own hour onwards, including hours
//! that have already closed, so any arrival order of the same records (each facet's
//! versions in their order) gives the same hours.
//!
//! **Revisions are visible.** Every hour carries `recomputed_at`: the write time (the
//! ledger's clock when it wrote the record, i.e. the Kafka record timestamp) of the last
//! record that changed the hour's amount. An invoice run that read closed hours at `T`
//! finds every hour changed since with `recomputed_at > T`. An hour whose amount a late
//! record took down to zero stays as a row with 0 CKU-hours, so the change is visible too.
//!
//! Pure arithmetic over milliseconds, exact for every input: accumulated in integer
//! CKU-milliseconds (`i128`), converted to hours only when read, so no rounding error
//! builds up however many changes an hour has.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hour_amounts::HourAmounts;

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;

/// The start (ms since the epoch, UTC) of the hour containing `ms`.
pub fn hour_start(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// One change of a billable rate: from `ts_ms` on, version `version` of its facet says the
/// rate is `cku`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatePoint {
    /// When the change took effect (the record's `ts`, ms since the epoch).
    pub ts_ms: i64,
    /// The facet version that made it: of two changes at the same instant, the higher
    /// version is the one in force.
    pub version: i64,
    /// The billable CKU from then on.
    pub cku: i64,
}

impl RatePoint {
    fn order(&self) -> (i64, i64) {
        (self.ts_ms, self.version)
    }
}

/// A rate as a step function of time: 0 before its first point, then the value of the
/// latest point (by time, then version) at or before each instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RateTimeline {
    points: Vec<RatePoint>,
}

impl RateTimeline {
    /// Adds `p` in its place; a point with the same time and version is replaced (applying
    /// the same record twice changes nothing).
    pub fn insert(&mut self, p: RatePoint) {
        // A live history appends at the end: no search.
        if self.points.last().is_none_or(|l| l.order() < p.order()) {
            self.points.push(p);
            return;
        }
        match self
            .points
            .binary_search_by_key(&p.order(), RatePoint::order)
        {
            Ok(i) => self.points[i] = p,
            Err(i) => self.points.insert(i, p),
        }
    }

    /// Drops the points before `t` but the last of them (the rate in force at `t`).
    pub fn keep_from(&mut self, t: i64) {
        let k = self.points.partition_point(|p| p.ts_ms < t);
        if k > 1 {
            self.points.drain(..k - 1);
        }
    }

    /// Index of the first point after instant `t`.
    fn after(&self, t: i64) -> usize {
        self.points.partition_point(|p| p.ts_ms <= t)
    }

    /// The rate in force at instant `t`.
    pub fn at(&self, t: i64) -> i64 {
        match self.after(t) {
            0 => 0,
            i => self.points[i - 1].cku,
        }
    }

    /// The rate in force after the last point (0 without points).
    pub fn last_cku(&self) -> i64 {
        self.points.last().map_or(0, |p| p.cku)
    }

    /// The time of the last point.
    pub fn last_ts(&self) -> Option<i64> {
        self.points.last().map(|p| p.ts_ms)
    }

    /// Every point, by time then version.
    pub fn points(&self) -> &[RatePoint] {
        &self.points
    }
}

/// One hour's amount and when it last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BilledHour {
    /// CKU-milliseconds of the whole hour, as far as the known records say.
    pub cku_ms: i128,
    /// Write time (ms) of the record that last changed `cku_ms`.
    pub recomputed_at_ms: i64,
}

/// One row of a cluster's bill as of some `now`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HourRow {
    /// Start of the UTC hour (ms since the epoch).
    pub hour_start_ms: i64,
    /// Billable CKU-hours in the hour (up to `now` for the open hour).
    pub cku_hours: f64,
    /// The hour contains `now`: its amount still grows.
    pub open: bool,
    /// Write time (ms) of the record that last changed the hour's amount.
    pub recomputed_at_ms: i64,
}

/// Which rate a record sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rate {
    /// The billable desired CKU (`logical`).
    Desired,
    /// The billable actual CKU (`status`).
    Actual,
}

/// One cluster's billing: both rates as step functions of event time and the amount of
/// every hour up to the hour of the latest change point; hours after it are billed at the
/// final rate (`min(desired, actual)` after every known change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterBilling {
    /// Billable desired CKU over time.
    pub desired: RateTimeline,
    /// Billable actual CKU over time.
    pub actual: RateTimeline,
    /// Hour start (ms) → its amount, for every hour up to the hour of the latest change
    /// point that has, or once had, a positive amount.
    pub hours: HourAmounts,
    /// Write time (ms) of the record that last changed the final rate: the hours after the
    /// latest change point's hour changed then.
    pub tail_recomputed_at_ms: i64,
    /// Hours before this instant (ms) are in the projection's files, not in `hours`; a
    /// change that re-bills one of them is kept in `corrections` until the files are
    /// rewritten. `i64::MIN`: nothing flushed.
    #[serde(default = "nothing_flushed")]
    pub flushed_to_ms: i64,
    /// Hour start → the new amount of a flushed hour that a late change re-billed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub corrections: BTreeMap<i64, BilledHour>,
    /// Points before the flushed instant that are not in the point files yet (late
    /// changes since the last flush).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsaved: Vec<(Rate, RatePoint)>,
    /// The timelines hold the points from the point files too (loaded for a late change).
    #[serde(skip)]
    pub loaded: bool,
}

impl Default for ClusterBilling {
    fn default() -> Self {
        ClusterBilling {
            desired: RateTimeline::default(),
            actual: RateTimeline::default(),
            hours: HourAmounts::new(),
            tail_recomputed_at_ms: 0,
            flushed_to_ms: nothing_flushed(),
            corrections: BTreeMap::new(),
            unsaved: Vec::new(),
            loaded: false,
        }
    }
}

/// `flushed_to_ms` of a cluster nothing of which is in files.
pub fn nothing_flushed() -> i64 {
    i64::MIN
}

impl ClusterBilling {
    /// The rate billed after the last known change.
    pub fn rate(&self) -> i64 {
        self.desired.last_cku().min(self.actual.last_cku()).max(0)
    }

    /// The time of the latest change point of either rate.
    pub fn last_ms(&self) -> Option<i64> {
        match (self.desired.last_ts(), self.actual.last_ts()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Adds `rate` × time from `from` to `to` (ms) to the hours it spans.
    fn accumulate(hours: &mut BTreeMap<i64, i128>, rate: i64, from: i64, to: i64) {
        if rate <= 0 || to <= from {
            return;
        }
        let mut t = from;
        while t < to {
            let h = hour_start(t);
            let end = (h + HOUR_MS).min(to);
            *hours.entry(h).or_insert(0) += i128::from(rate) * i128::from(end - t);
            t = end;
        }
    }

    /// The integral of the billed rate over `[from, to)`, per hour (hours with a positive
    /// amount only).
    fn integrate(&self, from: i64, to: i64) -> BTreeMap<i64, i128> {
        let mut out = BTreeMap::new();
        let (d, a) = (self.desired.points(), self.actual.points());
        let (mut i, mut j) = (self.desired.after(from), self.actual.after(from));
        let (mut cur_d, mut cur_a) = (self.desired.at(from), self.actual.at(from));
        let mut t = from;
        while t < to {
            let next_d = d.get(i).map_or(i64::MAX, |p| p.ts_ms);
            let next_a = a.get(j).map_or(i64::MAX, |p| p.ts_ms);
            let next = next_d.min(next_a).min(to);
            Self::accumulate(&mut out, cur_d.min(cur_a).max(0), t, next);
            // Every point at `next` applies; the last of them (highest version) wins.
            while d.get(i).is_some_and(|p| p.ts_ms == next) {
                cur_d = d[i].cku;
                i += 1;
            }
            while a.get(j).is_some_and(|p| p.ts_ms == next) {
                cur_a = a[j].cku;
                j += 1;
            }
            t = next;
        }
        out
    }

    /// Applies a change of `rate` to `cku` at event time `ts_ms`, made by version
    /// `version` of its facet and written at `written_at_ms`. Re-bills every hour from the
    /// change's hour to the hour of the latest change point (so a change that arrives after
    /// later ones corrects hours already closed) and marks the hours whose amount changed
    /// as recomputed at `written_at_ms`.
    pub fn apply(&mut self, rate: Rate, ts_ms: i64, version: i64, cku: i64, written_at_ms: i64) {
        let old_last = self.last_ms();
        let old_rate = self.rate();
        let old_tail_at = self.tail_recomputed_at_ms;
        let point = RatePoint {
            ts_ms,
            version,
            cku,
        };
        // A point changes the integral from its own time on: hours in files change only if
        // it lies before the flushed instant (the timelines then hold every point from
        // its hour on: see `BillingHours::apply`). Their old amounts, before the point:
        let deep_from = hour_start(ts_ms);
        let deep = deep_from < self.flushed_to_ms;
        let deep_old = deep.then(|| self.integrate(deep_from, self.flushed_to_ms));
        match rate {
            Rate::Desired => self.desired.insert(point),
            Rate::Actual => self.actual.insert(point),
        }
        let new_last = old_last.map_or(ts_ms, |l| l.max(ts_ms));
        let from_hour = hour_start(old_last.map_or(ts_ms, |l| l.min(ts_ms)));
        let last_hour = hour_start(new_last);
        let flushed = self.flushed_to_ms;
        if deep {
            self.unsaved.push((rate, point));
            // Hours already in files: the old amounts are the integral without the new
            // point; every hour whose amount changes becomes a correction.
            let old = deep_old.unwrap_or_default();
            let new = self.integrate(deep_from, flushed);
            let hours: std::collections::BTreeSet<i64> =
                old.keys().chain(new.keys()).copied().collect();
            for h in hours {
                let (o, n) = (
                    old.get(&h).copied().unwrap_or(0),
                    new.get(&h).copied().unwrap_or(0),
                );
                if o != n {
                    self.corrections.insert(
                        h,
                        BilledHour {
                            cku_ms: n,
                            recomputed_at_ms: written_at_ms,
                        },
                    );
                }
            }
        }
        let from_hour = from_hour.max(flushed);
        let fresh = self.integrate(from_hour, (last_hour + HOUR_MS).max(from_hour));
        let mut h = from_hour;
        while h <= last_hour {
            let new = fresh.get(&h).copied().unwrap_or(0);
            // What the hour was before this record: stored up to the old last point's
            // hour, billed at the old final rate after it.
            let old = match old_last {
                Some(l) if h <= hour_start(l) => self.hours.get(h),
                Some(_) if old_rate > 0 => Some(BilledHour {
                    cku_ms: i128::from(old_rate) * i128::from(HOUR_MS),
                    recomputed_at_ms: old_tail_at,
                }),
                _ => None,
            };
            match old {
                Some(o) if o.cku_ms == new => {
                    self.hours.insert(h, o);
                }
                Some(o) => {
                    self.hours.insert(
                        h,
                        BilledHour {
                            cku_ms: new,
                            recomputed_at_ms: o.recomputed_at_ms.max(written_at_ms),
                        },
                    );
                }
                None if new != 0 => {
                    self.hours.insert(
                        h,
                        BilledHour {
                            cku_ms: new,
                            recomputed_at_ms: written_at_ms,
                        },
                    );
                }
                None => {}
            }
            h += HOUR_MS;
        }
        if old_last.is_none() || self.rate() != old_rate {
            self.tail_recomputed_at_ms = old_tail_at.max(written_at_ms);
        }
    }

    /// The closed hours in `[from, to)` (`to` an hour start): what a flush writes. Only
    /// those hours are made: a catch-up that flushes many days at once asks for each day
    /// in turn.
    pub fn closed_rows(&self, from: i64, to: i64) -> Vec<HourRow> {
        let mut rows = self.rows_from(from, to);
        rows.retain(|r| r.hour_start_ms < to);
        rows
    }

    /// The points a flush to `to` writes to the point files: those in
    /// `[flushed_to_ms, to)` and the late ones not written yet.
    pub fn points_to_save(&self, to: i64) -> Vec<(Rate, RatePoint)> {
        let from = self.flushed_to_ms;
        let mut out = self.unsaved.clone();
        for (rate, t) in [(Rate::Desired, &self.desired), (Rate::Actual, &self.actual)] {
            out.extend(
                t.points()
                    .iter()
                    .filter(|p| p.ts_ms >= from && p.ts_ms < to)
                    .map(|p| (rate, *p)),
            );
        }
        out
    }

    /// The hours and points before `to` are in files now: forget them, keeping of each
    /// rate the last point before `to` (the rate in force at `to`).
    pub fn flushed(&mut self, to: i64) {
        if to > self.flushed_to_ms {
            self.hours.keep_from(to);
            self.flushed_to_ms = to;
            self.desired.keep_from(to);
            self.actual.keep_from(to);
            self.unsaved.clear();
            self.loaded = false;
        }
    }

    /// Adds points read back from the point files (once per cluster until the next flush).
    pub fn load(&mut self, points: impl IntoIterator<Item = (Rate, RatePoint)>) {
        for (rate, p) in points {
            match rate {
                Rate::Desired => self.desired.insert(p),
                Rate::Actual => self.actual.insert(p),
            }
        }
        self.loaded = true;
    }

    /// Every hour from the flushed instant up to `now_ms` with an amount, or whose amount a
    /// late record took to zero: hours before `now_ms`'s hour are closed, the hour
    /// containing `now_ms` is open and counts up to `now_ms`. Hours after `now_ms` are not
    /// billed yet.
    pub fn rows(&self, now_ms: i64) -> Vec<HourRow> {
        self.rows_from(i64::MIN, now_ms)
    }

    /// [`ClusterBilling::rows`] of the hours that start at or after `from`.
    fn rows_from(&self, from: i64, now_ms: i64) -> Vec<HourRow> {
        let now_hour = hour_start(now_ms);
        let to_hours = |v: i128| v as f64 / HOUR_MS as f64;
        let mut out = Vec::new();
        let Some(last) = self.last_ms() else {
            return out;
        };
        if from > now_hour {
            return out;
        }
        for (h, b) in self.hours.range(from, now_hour) {
            let (cku_ms, open) = if h < now_hour {
                (b.cku_ms, false)
            } else {
                (
                    self.integrate(h, now_ms).get(&h).copied().unwrap_or(0),
                    true,
                )
            };
            out.push(HourRow {
                hour_start_ms: h,
                cku_hours: to_hours(cku_ms),
                open,
                recomputed_at_ms: b.recomputed_at_ms,
            });
        }
        let rate = self.rate();
        if rate > 0 {
            let mut h = (hour_start(last) + HOUR_MS).max(self.flushed_to_ms);
            if h < from {
                // The first hour at or after `from` (h is an hour start).
                h += (from - h + HOUR_MS - 1) / HOUR_MS * HOUR_MS;
            }
            while h < now_ms {
                let end = (h + HOUR_MS).min(now_ms);
                out.push(HourRow {
                    hour_start_ms: h,
                    cku_hours: to_hours(i128::from(rate) * i128::from(end - h)),
                    open: h == now_hour,
                    recomputed_at_ms: self.tail_recomputed_at_ms,
                });
                h += HOUR_MS;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const MIN: i64 = 60_000;

    /// Applies `(time, rate, cku)` changes in the given order, each facet's versions
    /// counted in that order, written at `written`.
    fn bill(changes: &[(i64, Rate, i64)], written: i64) -> ClusterBilling {
        let mut b = ClusterBilling::default();
        let (mut vd, mut va) = (0, 0);
        for &(at, rate, cku) in changes {
            let v = match rate {
                Rate::Desired => {
                    vd += 1;
                    vd
                }
                Rate::Actual => {
                    va += 1;
                    va
                }
            };
            b.apply(rate, at, v, cku, written);
        }
        b
    }

    fn amounts(rows: &[HourRow]) -> Vec<(i64, f64)> {
        rows.iter()
            .map(|r| ((r.hour_start_ms - T0) / HOUR_MS, r.cku_hours))
            .collect()
    }

    use Rate::{Actual as A, Desired as D};

    #[test]
    fn expansion_is_billed_once_done_and_shrink_at_once() {
        let b = bill(
            &[
                (T0, D, 2),             // created 00:00
                (T0 + 10 * MIN, A, 2),  // running 00:10
                (T0 + 30 * MIN, D, 4),  // expansion requested 00:30
                (T0 + 120 * MIN, A, 4), // completes 02:00
                (T0 + 150 * MIN, D, 1), // shrink requested 02:30
                (T0 + 170 * MIN, A, 1), // shrink done 02:50
                (T0 + 200 * MIN, D, 0), // deleted 03:20
            ],
            T0,
        );
        let rows = b.rows(T0 + 300 * MIN);
        let got = amounts(&rows);
        let want = vec![
            (0, 2.0 * 50.0 / 60.0),             // 00:10-01:00 at 2
            (1, 2.0),                           // 01:00-02:00 at 2 (expansion not done)
            (2, 4.0 * 30.0 / 60.0 + 1.0 * 0.5), // 02:00-02:30 at 4, then at 1
            (3, 1.0 * 20.0 / 60.0),             // 03:00-03:20 at 1, then deleted
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((h, v), (wh, wv)) in got.iter().zip(&want) {
            assert_eq!(h, wh);
            assert!((v - wv).abs() < 1e-9, "hour {h}: {v} != {wv}");
        }
        assert!(rows.iter().all(|r| !r.open), "every hour closed at 05:00");
    }

    #[test]
    fn the_current_hour_is_open_and_grows_with_now() {
        let b = bill(&[(T0, D, 3), (T0, A, 3)], T0);
        let at = |now| -> Vec<(i64, f64, bool)> {
            b.rows(now)
                .iter()
                .map(|r| (r.hour_start_ms, r.cku_hours, r.open))
                .collect()
        };
        assert_eq!(at(T0 + 30 * MIN), vec![(T0, 1.5, true)]);
        assert_eq!(
            at(T0 + 90 * MIN),
            vec![(T0, 3.0, false), (T0 + HOUR_MS, 1.5, true)]
        );
        // A change later in the open hour is not billed before it happens.
        let mut b = b.clone();
        b.apply(D, T0 + 50 * MIN, 2, 1, T0);
        let rows = b.rows(T0 + 40 * MIN);
        assert_eq!(rows.len(), 1);
        assert!((rows[0].cku_hours - 2.0).abs() < 1e-9, "{rows:?}");
    }

    #[test]
    fn a_status_that_arrives_after_a_later_logical_change_rebills_closed_hours() {
        // Logical: 2 CKU at 00:00, 4 CKU at 02:00; status running at 2 CKU from 00:30,
        // arriving only after the 02:00 change was applied.
        let mut b = ClusterBilling::default();
        b.apply(D, T0, 1, 2, T0);
        b.apply(D, T0 + 120 * MIN, 2, 4, T0 + 120 * MIN);
        assert!(b.rows(T0 + 180 * MIN).is_empty(), "nothing running yet");
        let late = T0 + 181 * MIN;
        b.apply(A, T0 + 30 * MIN, 1, 2, late);
        let rows = b.rows(T0 + 180 * MIN);
        assert_eq!(amounts(&rows), vec![(0, 1.0), (1, 2.0), (2, 2.0)]);
        assert!(rows.iter().all(|r| r.recomputed_at_ms == late), "{rows:?}");
    }

    #[test]
    fn an_hour_taken_to_zero_by_a_late_record_stays_visible_as_recomputed() {
        let mut b = bill(&[(T0, D, 2), (T0, A, 2)], T0);
        // Hour 0 has been billed (closed at 01:30) ...
        assert_eq!(amounts(&b.rows(T0 + 90 * MIN))[0], (0, 2.0));
        // ... then a deletion at 00:00:00 (version 2 of logical, same instant) arrives.
        b.apply(D, T0, 2, 0, T0 + 95 * MIN);
        let rows = b.rows(T0 + 90 * MIN);
        assert_eq!(amounts(&rows), vec![(0, 0.0)]);
        assert_eq!(rows[0].recomputed_at_ms, T0 + 95 * MIN);
    }

    #[test]
    fn unchanged_hours_keep_their_recompute_time() {
        let mut b = bill(&[(T0, D, 2), (T0, A, 2)], T0);
        // A status 5 hours later that changes nothing billable.
        b.apply(A, T0 + 300 * MIN, 2, 2, T0 + 301 * MIN);
        let rows = b.rows(T0 + 360 * MIN);
        assert_eq!(rows.len(), 6);
        assert!(rows.iter().all(|r| r.recomputed_at_ms == T0), "{rows:?}");
        // A shrink at 05:30 changes hour 5 and the tail only.
        b.apply(D, T0 + 330 * MIN, 2, 1, T0 + 331 * MIN);
        let rows = b.rows(T0 + 420 * MIN);
        let changed: Vec<i64> = rows
            .iter()
            .filter(|r| r.recomputed_at_ms != T0)
            .map(|r| (r.hour_start_ms - T0) / HOUR_MS)
            .collect();
        assert_eq!(changed, vec![5, 6]);
    }

    #[test]
    fn applying_the_same_record_twice_changes_nothing() {
        let mut b = bill(&[(T0, D, 2), (T0 + 10 * MIN, A, 2)], T0);
        let before = b.clone();
        b.apply(A, T0 + 10 * MIN, 1, 2, T0 + 999 * MIN);
        assert_eq!(b, before);
    }

    /// The obvious implementation: minute by minute, in integer CKU-milliseconds, over
    /// changes sorted by time (a facet's later version wins at the same minute).
    fn slow(changes: &[(i64, Rate, i64)], now: i64) -> BTreeMap<i64, i128> {
        let mut sorted: Vec<(usize, &(i64, Rate, i64))> = changes.iter().enumerate().collect();
        sorted.sort_by_key(|(i, c)| (c.0, *i));
        let mut out = BTreeMap::new();
        let (mut d, mut a) = (0, 0);
        let mut i = 0;
        let mut t = sorted.first().map_or(now, |c| hour_start(c.1.0));
        while t < now {
            while i < sorted.len() && sorted[i].1.0 <= t {
                match sorted[i].1.1 {
                    D => d = sorted[i].1.2,
                    A => a = sorted[i].1.2,
                }
                i += 1;
            }
            let rate: i64 = d.min(a).max(0);
            if rate > 0 {
                *out.entry(hour_start(t)).or_insert(0) += i128::from(rate) * i128::from(MIN);
            }
            t += MIN;
        }
        out
    }

    /// A random history in time order: `(minutes after the previous change, rate, cku)`.
    fn history() -> impl Strategy<Value = Vec<(i64, Rate, i64)>> {
        proptest::collection::vec(
            (
                0i64..240,
                prop_oneof![Just(D), Just(A)],
                prop_oneof![Just(0i64), 1i64..=8, Just(256)],
            ),
            1..30,
        )
        .prop_map(|steps| {
            let mut t = T0;
            steps
                .into_iter()
                .map(|(gap, r, cku)| {
                    t += gap * MIN;
                    (t, r, cku)
                })
                .collect()
        })
    }

    /// Interleaves the two facets' changes in an order chosen by `picks` (true: desired
    /// next), keeping each facet's own order.
    fn interleave(changes: &[(i64, Rate, i64)], picks: &[bool]) -> Vec<(i64, Rate, i64)> {
        let ds: Vec<_> = changes.iter().filter(|c| c.1 == D).copied().collect();
        let as_: Vec<_> = changes.iter().filter(|c| c.1 == A).copied().collect();
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        let mut k = 0;
        while i < ds.len() || j < as_.len() {
            let take_d = j >= as_.len() || (i < ds.len() && picks.get(k).copied().unwrap_or(true));
            k += 1;
            if take_d {
                out.push(ds[i]);
                i += 1;
            } else {
                out.push(as_[j]);
                j += 1;
            }
        }
        out
    }

    proptest! {
        #[test]
        fn matches_minute_by_minute_integration_in_any_arrival_order(
            changes in history(),
            orders in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 60), 1..6),
        ) {
            let now = changes.last().map_or(T0, |c| c.0) + 90 * MIN;
            let reference = slow(&changes, now);
            for picks in &orders {
                let arrived = interleave(&changes, picks);
                let b = bill(&arrived, T0);
                let got: BTreeMap<i64, i128> = b
                    .rows(now)
                    .into_iter()
                    .filter(|r| r.cku_hours != 0.0)
                    .map(|r| (r.hour_start_ms, (r.cku_hours * HOUR_MS as f64).round() as i128))
                    .collect();
                prop_assert_eq!(&got, &reference);
                // Exact: the stored hours are the reference's integers.
                for (h, v) in &reference {
                    if *h + HOUR_MS <= now {
                        let stored = b.hours.get(*h).map(|x| x.cku_ms).unwrap_or_else(|| {
                            i128::from(b.rate()) * i128::from(HOUR_MS)
                        });
                        prop_assert_eq!(stored, *v, "hour {}", h);
                    }
                }
            }
        }

        #[test]
        fn closed_rows_of_a_window_are_the_rows_of_that_window(
            changes in history(),
            from_hours in 0i64..40,
            len_hours in 0i64..40,
        ) {
            let b = bill(&changes, T0);
            let from = T0 + from_hours * HOUR_MS;
            let to = from + len_hours * HOUR_MS;
            let mut want = b.rows(to);
            want.retain(|r| r.hour_start_ms >= from && r.hour_start_ms < to);
            prop_assert_eq!(b.closed_rows(from, to), want);
        }
    }
}
