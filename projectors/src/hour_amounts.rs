//! [`HourAmounts`]: one cluster's billed hours not yet in files, dense by hour.
//!
//! A cluster's stored hours run from the flushed instant to the hour of its latest change
//! point, nearly every one with an amount. A `BTreeMap<i64, BilledHour>` spent about 70
//! bytes an hour on them (a 32-byte value aligned to 16, nodes half full under ascending
//! inserts): at 10,000 clusters a catch-up held 200 MB of them between two checkpoints.
//! Here an hour is a 24-byte slot in a deque indexed by hour, and an hour without an
//! amount is a slot marked absent.

use std::collections::VecDeque;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::billing::{BilledHour, HOUR_MS};

/// One hour's slot: the amount as two halves (8-byte alignment, not `i128`'s 16), or
/// absent when `cku_hi` is [`ABSENT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HourSlot {
    cku_lo: u64,
    cku_hi: i64,
    recomputed_at_ms: i64,
}

/// `cku_hi` of a slot without an amount: no amount is below -2^127 (amounts are ≥ 0).
const ABSENT: i64 = i64::MIN;

impl HourSlot {
    const EMPTY: HourSlot = HourSlot {
        cku_lo: 0,
        cku_hi: ABSENT,
        recomputed_at_ms: 0,
    };

    fn of(b: BilledHour) -> HourSlot {
        HourSlot {
            cku_lo: b.cku_ms as u64,
            cku_hi: (b.cku_ms >> 64) as i64,
            recomputed_at_ms: b.recomputed_at_ms,
        }
    }

    fn get(&self) -> Option<BilledHour> {
        (self.cku_hi != ABSENT).then(|| BilledHour {
            cku_ms: (i128::from(self.cku_hi) << 64) | i128::from(self.cku_lo),
            recomputed_at_ms: self.recomputed_at_ms,
        })
    }
}

/// Hour start (ms, a multiple of [`HOUR_MS`]) → its [`BilledHour`], for the hours of a
/// contiguous range, at 24 bytes an hour of the range. Iterates in hour order; equal when
/// the same hours have the same amounts; saved as a map from hour to amount (the JSON a
/// `BTreeMap<i64, BilledHour>` had, so checkpoints read either way).
#[derive(Debug, Clone, Default)]
pub struct HourAmounts {
    /// Start of the hour of `slots[0]`.
    first: i64,
    slots: VecDeque<HourSlot>,
}

impl HourAmounts {
    /// No hour.
    pub fn new() -> Self {
        HourAmounts::default()
    }

    fn index(&self, hour: i64) -> Option<usize> {
        if self.slots.is_empty() || hour < self.first {
            return None;
        }
        usize::try_from((hour - self.first) / HOUR_MS)
            .ok()
            .filter(|i| *i < self.slots.len())
    }

    /// The amount of the hour starting at `hour`, if it has one.
    pub fn get(&self, hour: i64) -> Option<BilledHour> {
        self.index(hour).and_then(|i| self.slots[i].get())
    }

    /// Sets the amount of the hour starting at `hour` (a multiple of [`HOUR_MS`]).
    pub fn insert(&mut self, hour: i64, amount: BilledHour) {
        debug_assert_eq!(hour.rem_euclid(HOUR_MS), 0, "not an hour start: {hour}");
        if self.slots.is_empty() {
            self.first = hour;
            self.slots.push_back(HourSlot::of(amount));
            return;
        }
        if hour < self.first {
            let gap = ((self.first - hour) / HOUR_MS) as usize;
            self.slots.reserve(gap);
            for _ in 0..gap {
                self.slots.push_front(HourSlot::EMPTY);
            }
            self.first = hour;
        }
        let i = ((hour - self.first) / HOUR_MS) as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, HourSlot::EMPTY);
        }
        self.slots[i] = HourSlot::of(amount);
    }

    /// Forgets every hour before `to`; gives memory back once most of it is unused.
    pub fn keep_from(&mut self, to: i64) {
        if self.slots.is_empty() || to <= self.first {
            return;
        }
        let ahead = to.saturating_sub(self.first).saturating_add(HOUR_MS - 1);
        let drop = usize::try_from(ahead / HOUR_MS)
            .unwrap_or(usize::MAX)
            .min(self.slots.len());
        self.slots.drain(..drop);
        self.first += drop as i64 * HOUR_MS;
        while self.slots.front().is_some_and(|s| s.get().is_none()) {
            self.slots.pop_front();
            self.first += HOUR_MS;
        }
        if self.slots.capacity() > 64 && self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to_fit();
        }
    }

    /// The hours with an amount in `[from, to]`, in order.
    pub fn range(&self, from: i64, to: i64) -> impl Iterator<Item = (i64, BilledHour)> + '_ {
        let skip = if from <= self.first {
            0
        } else {
            let ahead = from.saturating_sub(self.first).saturating_add(HOUR_MS - 1);
            usize::try_from(ahead / HOUR_MS).unwrap_or(usize::MAX)
        };
        let first = self.first;
        self.slots
            .iter()
            .enumerate()
            .skip(skip)
            .map(move |(i, s)| (first + i as i64 * HOUR_MS, s))
            .take_while(move |(h, _)| *h <= to)
            .filter_map(|(h, s)| s.get().map(|b| (h, b)))
    }

    /// Every hour with an amount, in order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, BilledHour)> + '_ {
        self.range(i64::MIN, i64::MAX)
    }

    /// Whether no hour has an amount.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
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
            ops in proptest::collection::vec((0u8..3, -30i64..60, 0i128..1_000_000_000), 1..80),
            from in -40i64..70,
            to in -40i64..70,
        ) {
            let mut dense = HourAmounts::new();
            let mut map: BTreeMap<i64, BilledHour> = BTreeMap::new();
            for (i, (op, hour, v)) in ops.into_iter().enumerate() {
                let hour = T0 + hour * HOUR_MS;
                match op {
                    0 | 1 => {
                        dense.insert(hour, amount(v, i as i64));
                        map.insert(hour, amount(v, i as i64));
                    }
                    _ => {
                        dense.keep_from(hour);
                        map = map.split_off(&hour);
                    }
                }
                prop_assert_eq!(dense.iter().collect::<BTreeMap<_, _>>(), map.clone());
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
