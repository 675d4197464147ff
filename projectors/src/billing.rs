//! Billing hours: per cluster and UTC hour, billable CKU-hours = the time-integral of
//! `min(desired cku, actual cku)` over the hour. Desired is `logical.cku`, or 0 once
//! deleted; actual is `status.cku` while the phase is running, expanding, shrinking or
//! degraded, else 0. So an expansion is billed at the higher CKU only once the data plane
//! reports it, and a shrink at the lower CKU from the moment it is requested.
//!
//! Pure arithmetic over milliseconds, exact for every input: accumulated in integer
//! CKU-milliseconds (`i128`), converted to hours only when read, so no rounding error
//! builds up however many changes an hour has.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;

/// The start (ms since the epoch, UTC) of the hour containing `ms`.
pub fn hour_start(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// One cluster's billing: its current rate and the CKU-milliseconds of every hour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterBilling {
    /// Billable desired CKU now.
    pub desired: i64,
    /// Billable actual CKU now.
    pub actual: i64,
    /// Time of the last change (ms), `None` before the first.
    pub last_ms: Option<i64>,
    /// Hour start (ms) → CKU-milliseconds accumulated in that hour up to `last_ms`.
    pub hours: BTreeMap<i64, i128>,
}

impl ClusterBilling {
    /// The rate billed now.
    pub fn rate(&self) -> i64 {
        self.desired.min(self.actual).max(0)
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

    /// Moves time to `at_ms` at the current rate. A time before the last change (possible
    /// when facets of one cluster were imported with times out of order) counts as the
    /// last change's time: intervals are never negative.
    pub fn advance(&mut self, at_ms: i64) {
        let at = match self.last_ms {
            Some(last) if at_ms < last => last,
            _ => at_ms,
        };
        if let Some(last) = self.last_ms {
            let rate = self.rate();
            Self::accumulate(&mut self.hours, rate, last, at);
        }
        self.last_ms = Some(at);
    }

    /// Applies a change of the desired CKU at `at_ms`.
    pub fn set_desired(&mut self, at_ms: i64, desired: i64) {
        self.advance(at_ms);
        self.desired = desired;
    }

    /// Applies a change of the actual CKU at `at_ms`.
    pub fn set_actual(&mut self, at_ms: i64, actual: i64) {
        self.advance(at_ms);
        self.actual = actual;
    }

    /// Every hour with a positive amount or within `[last change, now)`, as
    /// `(hour_start_ms, cku_hours, open)`. Hours up to `now_ms` are extended at the current
    /// rate; the hour containing `now_ms` is open, every earlier one is closed.
    pub fn rows(&self, now_ms: i64) -> Vec<(i64, f64, bool)> {
        let mut hours = self.hours.clone();
        if let Some(last) = self.last_ms {
            Self::accumulate(&mut hours, self.rate(), last, now_ms.max(last));
        }
        let open_hour = hour_start(now_ms);
        hours
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .map(|(h, v)| (h, v as f64 / HOUR_MS as f64, h >= open_hour))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const MIN: i64 = 60_000;

    #[test]
    fn expansion_is_billed_once_done_and_shrink_at_once() {
        let mut b = ClusterBilling::default();
        b.set_desired(T0, 2); // created 00:00
        b.set_actual(T0 + 10 * MIN, 2); // running 00:10
        b.set_desired(T0 + 30 * MIN, 4); // expansion requested 00:30
        b.set_actual(T0 + 120 * MIN, 4); // completes 02:00
        b.set_desired(T0 + 150 * MIN, 1); // shrink requested 02:30
        b.set_actual(T0 + 170 * MIN, 1); // shrink done 02:50
        b.set_desired(T0 + 200 * MIN, 0); // deleted 03:20
        let rows = b.rows(T0 + 300 * MIN);
        let got: Vec<(i64, f64)> = rows
            .iter()
            .map(|(h, v, _)| ((h - T0) / HOUR_MS, *v))
            .collect();
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
        assert!(rows.iter().all(|r| !r.2), "every hour closed at 05:00");
    }

    #[test]
    fn the_current_hour_is_open_and_grows_with_now() {
        let mut b = ClusterBilling::default();
        b.set_desired(T0, 3);
        b.set_actual(T0, 3);
        let at = |now| b.rows(now);
        assert_eq!(at(T0 + 30 * MIN), vec![(T0, 1.5, true)]);
        assert_eq!(
            at(T0 + 90 * MIN),
            vec![(T0, 3.0, false), (T0 + HOUR_MS, 1.5, true)]
        );
    }

    #[test]
    fn out_of_order_times_never_bill_negative() {
        let mut b = ClusterBilling::default();
        b.set_desired(T0 + 10 * MIN, 2);
        b.set_actual(T0 + 5 * MIN, 2);
        let rows = b.rows(T0 + 70 * MIN);
        assert!(rows.iter().all(|r| r.1 >= 0.0));
        assert!((rows.iter().map(|r| r.1).sum::<f64>() - 2.0).abs() < 1e-9);
    }

    /// The obvious implementation: minute by minute (changes on whole minutes).
    fn slow(changes: &[(i64, bool, i64)], now: i64) -> BTreeMap<i64, f64> {
        let mut out = BTreeMap::new();
        let (mut d, mut a) = (0, 0);
        let mut i = 0;
        let mut t = changes.first().map_or(now, |c| c.0);
        while t < now {
            while i < changes.len() && changes[i].0 <= t {
                if changes[i].1 {
                    d = changes[i].2
                } else {
                    a = changes[i].2
                }
                i += 1;
            }
            let rate = d.min(a).max(0);
            if rate > 0 {
                *out.entry(hour_start(t)).or_insert(0.0) += rate as f64 / 60.0;
            }
            t += MIN;
        }
        out
    }

    proptest! {
        #[test]
        fn matches_minute_by_minute_integration(
            steps in proptest::collection::vec((0i64..240, any::<bool>(), 0i64..=256), 1..30)
        ) {
            let mut t = T0;
            let mut changes = Vec::new();
            for (gap, desired, cku) in steps {
                t += gap * MIN;
                changes.push((t, desired, cku));
            }
            let now = t + 90 * MIN;
            let mut b = ClusterBilling::default();
            for (at, desired, cku) in &changes {
                if *desired { b.set_desired(*at, *cku) } else { b.set_actual(*at, *cku) }
            }
            let fast: BTreeMap<i64, f64> = b.rows(now).into_iter().map(|(h, v, _)| (h, v)).collect();
            let slow = slow(&changes, now);
            prop_assert_eq!(fast.keys().collect::<Vec<_>>(), slow.keys().collect::<Vec<_>>());
            for (h, v) in &fast {
                prop_assert!((v - slow[h]).abs() < 1e-6, "hour {}: {} vs {}", h, v, slow[h]);
            }
        }
    }
}
