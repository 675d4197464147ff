//! [`HourAmounts`]: one cluster's billed hours not yet in files, as runs of equal hours.
//!
//! A cluster's stored hours run from the flushed instant to the hour of its latest change
//! point. Between two change points every whole hour has the same amount and, mostly, the
//! same recompute time. A `BTreeMap<i64, BilledHour>` spent about 70 bytes an hour on
//! them (a 32-byte value aligned to 16, nodes half full under ascending inserts): at
//! 10,000 clusters a catch-up held 200 MB of them between two checkpoints; a dense deque
//! of 24-byte slots still held 103 MB (`docs/profiling.md`). Here a run of consecutive
//! hours with the same amount and recompute time is one 32-byte entry: a few per cluster.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::billing::{BilledHour, HOUR_MS};

/// Consecutive hours with the same amount: `hours` hours from `first`. The amount is kept
/// as two halves (8-byte alignment, not `i128`'s 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: i64,
    hours: i64,
    cku_lo: u64,
    cku_hi: i64,
    recomputed_at_ms: i64,
}

impl Run {
    fn of(first: i64, hours: i64, b: BilledHour) -> Run {
        Run {
            first,
            hours,
            cku_lo: b.cku_ms as u64,
            cku_hi: (b.cku_ms >> 64) as i64,
            recomputed_at_ms: b.recomputed_at_ms,
        }
    }

    fn amount(&self) -> BilledHour {
        BilledHour {
            cku_ms: (i128::from(self.cku_hi) << 64) | i128::from(self.cku_lo),
            recomputed_at_ms: self.recomputed_at_ms,
        }
    }

    /// The start of the hour after the run.
    fn end(&self) -> i64 {
        self.first + self.hours * HOUR_MS
    }

    /// Whether `next` starts where this run ends, with the same amount.
    fn joins(&self, next: &Run) -> bool {
        self.end() == next.first && self.amount() == next.amount()
    }
}

/// Hour start (ms, a multiple of [`HOUR_MS`]) → its [`BilledHour`], kept as runs of equal
/// consecutive hours. Iterates in hour order; equal when the same hours have the same
/// amounts; saved as a map from hour to amount (the JSON a `BTreeMap<i64, BilledHour>`
/// had, so checkpoints read either way).
#[derive(Debug, Clone, Default)]
pub struct HourAmounts {
    /// Disjoint, in hour order; two adjacent runs never have the same amount.
    runs: Vec<Run>,
}

impl HourAmounts {
    /// No hour.
    pub fn new() -> Self {
        HourAmounts::default()
    }

    /// The index of the first run that ends after `hour`.
    fn after(&self, hour: i64) -> usize {
        self.runs.partition_point(|r| r.end() <= hour)
    }

    /// The amount of the hour starting at `hour`, if it has one.
    pub fn get(&self, hour: i64) -> Option<BilledHour> {
        self.runs
            .get(self.after(hour))
            .filter(|r| r.first <= hour)
            .map(Run::amount)
    }

    /// Sets the amount of the hour starting at `hour` (a multiple of [`HOUR_MS`]).
    pub fn insert(&mut self, hour: i64, amount: BilledHour) {
        debug_assert_eq!(hour.rem_euclid(HOUR_MS), 0, "not an hour start: {hour}");
        let one = Run::of(hour, 1, amount);
        let i = self.after(hour);
        match self.runs.get(i).copied() {
            Some(r) if r.first <= hour => {
                if r.amount() == amount {
                    return;
                }
                // Split the run around the hour: [before] [hour] [after].
                let before = Run {
                    hours: (hour - r.first) / HOUR_MS,
                    ..r
                };
                let after = Run {
                    first: hour + HOUR_MS,
                    hours: (r.end() - hour) / HOUR_MS - 1,
                    ..r
                };
                let pieces = [before, one, after];
                self.runs
                    .splice(i..=i, pieces.into_iter().filter(|p| p.hours > 0));
            }
            _ => self.runs.insert(i, one),
        }
        // The new hour's run is at `i` or `i + 1`: join it with its neighbours.
        let at = if self.runs[i].first == hour { i } else { i + 1 };
        if self
            .runs
            .get(at + 1)
            .is_some_and(|n| self.runs[at].joins(n))
        {
            self.runs[at].hours += self.runs[at + 1].hours;
            self.runs.remove(at + 1);
        }
        if at > 0 && self.runs[at - 1].joins(&self.runs[at]) {
            self.runs[at - 1].hours += self.runs[at].hours;
            self.runs.remove(at);
        }
    }

    /// Forgets every hour before `to`; gives memory back once most of it is unused.
    pub fn keep_from(&mut self, to: i64) {
        let i = self.after(to);
        self.runs.drain(..i);
        if let Some(r) = self.runs.first_mut()
            && r.first < to
        {
            let skip = (to - r.first + HOUR_MS - 1) / HOUR_MS;
            r.first += skip * HOUR_MS;
            r.hours -= skip;
        }
        if self.runs.capacity() > 8 && self.runs.len() < self.runs.capacity() / 4 {
            self.runs.shrink_to_fit();
        }
    }

    /// The hours with an amount in `[from, to]`, in order.
    pub fn range(&self, from: i64, to: i64) -> impl Iterator<Item = (i64, BilledHour)> + '_ {
        self.runs[self.after(from)..]
            .iter()
            .take_while(move |r| r.first <= to)
            .flat_map(move |r| {
                let amount = r.amount();
                // The first hour of the run at or after `from`.
                let skip = if from > r.first {
                    (from.saturating_sub(r.first) + HOUR_MS - 1) / HOUR_MS
                } else {
                    0
                };
                (skip..r.hours)
                    .map(move |k| r.first + k * HOUR_MS)
                    .take_while(move |h| *h <= to)
                    .map(move |h| (h, amount))
            })
    }

    /// Every hour with an amount, in order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, BilledHour)> + '_ {
        self.range(i64::MIN, i64::MAX)
    }

    /// How many runs of equal hours hold them (what the memory grows with).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

impl PartialEq for HourAmounts {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for HourAmounts {}

impl Serialize for HourAmounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for HourAmounts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<i64, BilledHour>::deserialize(d)?;
        let mut out = HourAmounts::new();
        for (h, b) in map {
            if h.rem_euclid(HOUR_MS) != 0 {
                return Err(serde::de::Error::custom(format!(
                    "billed hour {h} is not the start of an hour"
                )));
            }
            out.insert(h, b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const T0: i64 = 1_767_225_600_000;

    fn amount(cku_ms: i128, at: i64) -> BilledHour {
        BilledHour {
            cku_ms,
            recomputed_at_ms: at,
        }
    }

    #[test]
    fn amounts_beyond_64_bits_and_zero_amounts_are_kept_exactly() {
        let mut h = HourAmounts::new();
        h.insert(T0, amount(i128::MAX, 1));
        h.insert(T0 + 3 * HOUR_MS, amount(0, 2));
        h.insert(T0 - 2 * HOUR_MS, amount((1 << 70) + 5, 3));
        assert_eq!(h.get(T0), Some(amount(i128::MAX, 1)));
        assert_eq!(h.get(T0 + 3 * HOUR_MS), Some(amount(0, 2)));
        assert_eq!(h.get(T0 - 2 * HOUR_MS), Some(amount((1 << 70) + 5, 3)));
        assert_eq!(h.get(T0 + HOUR_MS), None);
        assert_eq!(h.get(T0 - 3 * HOUR_MS), None);
        assert_eq!(h.get(T0 + 4 * HOUR_MS), None);
        let json = serde_json::to_string(&h).unwrap();
        let back: HourAmounts = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn a_month_of_equal_hours_is_one_run_and_one_change_splits_it_in_three() {
        let mut h = HourAmounts::new();
        for k in 0..720 {
            h.insert(T0 + k * HOUR_MS, amount(7_200_000, 1));
        }
        assert_eq!(h.runs(), 1);
        h.insert(T0 + 100 * HOUR_MS, amount(3_600_000, 2));
        assert_eq!(h.runs(), 3);
        assert_eq!(h.iter().count(), 720);
        h.insert(T0 + 100 * HOUR_MS, amount(7_200_000, 1));
        assert_eq!(h.runs(), 1, "restoring the hour joins the runs again");
        h.keep_from(T0 + 700 * HOUR_MS);
        assert_eq!(h.iter().next().map(|(t, _)| t), Some(T0 + 700 * HOUR_MS));
        assert_eq!(h.iter().count(), 20);
    }

    #[test]
    fn a_checkpoint_of_the_old_map_reads_back_and_a_misaligned_hour_is_refused() {
        let mut old = BTreeMap::new();
        old.insert(T0, amount(7, 1));
        old.insert(T0 + 5 * HOUR_MS, amount(9, 2));
        let json = serde_json::to_string(&old).unwrap();
        let h: HourAmounts = serde_json::from_str(&json).unwrap();
        assert_eq!(h.iter().collect::<BTreeMap<_, _>>(), old);
        assert_eq!(serde_json::to_string(&h).unwrap(), json);
        let bad = format!("{{\"{}\":{{\"cku_ms\":1,\"recomputed_at_ms\":0}}}}", T0 + 1);
        assert!(serde_json::from_str::<HourAmounts>(&bad).is_err());
    }

    proptest! {
        /// Whatever the operations, the hours read back are those of a `BTreeMap` given
        /// the same operations.
        #[test]
        fn behaves_as_an_ordered_map_of_hours(
            ops in proptest::collection::vec((0u8..3, -30i64..60, 0i128..3), 1..80),
            from in -40i64..70,
            to in -40i64..70,
        ) {
            let mut dense = HourAmounts::new();
            let mut map: BTreeMap<i64, BilledHour> = BTreeMap::new();
            for (op, hour, v) in ops {
                let hour = T0 + hour * HOUR_MS;
                match op {
                    0 | 1 => {
                        dense.insert(hour, amount(v, v as i64 * 10));
                        map.insert(hour, amount(v, v as i64 * 10));
                    }
                    _ => {
                        dense.keep_from(hour);
                        map = map.split_off(&hour);
                    }
                }
                prop_assert_eq!(dense.iter().collect::<BTreeMap<_, _>>(), map.clone());
                // As few runs as the map has stretches of equal consecutive hours.
                let hours: Vec<(i64, BilledHour)> = map.iter().map(|(h, b)| (*h, *b)).collect();
                let stretches = hours
                    .iter()
                    .enumerate()
                    .filter(|(k, (h, b))| {
                        *k == 0 || hours[k - 1] != (h - HOUR_MS, *b)
                    })
                    .count();
                prop_assert_eq!(dense.runs(), stretches);
            }
            let (from, to) = (T0 + from * HOUR_MS, T0 + to * HOUR_MS);
            let want: Vec<_> = map
                .iter()
                .filter(|(h, _)| **h >= from && **h <= to)
                .map(|(h, b)| (*h, *b))
                .collect();
            prop_assert_eq!(dense.range(from, to).collect::<Vec<_>>(), want);
            for h in -40i64..70 {
                let h = T0 + h * HOUR_MS;
                prop_assert_eq!(dense.get(h), map.get(&h).copied());
            }
        }
    }
}
