//! `fleetledger-bench simulate`: a deterministic, realistic fleet history as JSON lines,
//! in the format `fleetledger import` reads ([`HistoryLine`]).
//!
//! The choreography of the control plane, per cluster: the frontend writes `logical`; the
//! physical controller answers with `physical`, the capacity controller with `capacity`;
//! the satellite's sync service reports `status` (provisioning → running). Over the days
//! customers expand (status `expanding` for hours at the old size, then `running` at the
//! new one), sometimes change their mind in the middle of an expansion (a second logical
//! change the data plane absorbs: it lands directly on the final size), shrink (billed at
//! the lower size from the request on), change configs, hit failures that are retried
//! (`degraded` then `running` again), get their brokers rolled to a new version by the
//! physical controller about once a month, and delete (`deleting` → `deleted`).
//!
//! **Calibration.** The fleet is a steady one of `clusters` clusters, the way a production
//! fleet looks in any year of its life, not a cohort that dies out:
//! - the clusters are onboarded over the first [`ONBOARDING_DAYS`] (at most half the
//!   window);
//! - a customer acts on a cluster on average once a day (uniform 30 min – 48 h apart) and
//!   about 0.5% of actions are deletions (a mean life of about half a year);
//! - a deleted cluster's slot is taken by a new cluster (a new id, org and shape) 1 h –
//!   7 days later, so the fleet keeps its size;
//! - every writer takes part: per live cluster and day this makes about 3 records (the
//!   simulator prints the figure), so 10,000 clusters write ≈1M records in 42 days and
//!   ≈10M in 360 days, a year of such a fleet.
//!
//! **Streaming.** Each slot's story is generated one step at a time and the slots' events
//! are merged by (time, slot, sequence) through a heap, so memory holds a few events per
//! slot, not the history: ten million lines take as little memory as ten thousand.
//!
//! Determinism: every slot has its own SplitMix64 stream, seeded in slot order from the
//! seed, and every JSON object has a fixed field order, so the same arguments always
//! produce the same bytes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::Write;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use fleetledger_client::history_file::HistoryLine;
use serde_json::{Value, json};

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct Simulation {
    /// Clusters (the fleet's steady size).
    pub clusters: usize,
    /// Days of history.
    pub days: u32,
    /// Seed of the random stream.
    pub seed: u64,
    /// Start of the history.
    pub start: DateTime<Utc>,
    /// Which fleet: 0 names clusters `lkc-sim000123`, fleet n `lkc-sim{n}-000123`, so
    /// fleets of different numbers can be imported into one ledger.
    pub fleet: u32,
}

/// What a simulation wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Simulated {
    /// History lines.
    pub lines: u64,
    /// Distinct clusters (slots × the clusters that took a deleted one's place).
    pub clusters: u64,
    /// Records per live cluster and day: the calibration figure.
    pub per_cluster_day: f64,
}

/// Days over which the first clusters are onboarded (at most half the window).
pub const ONBOARDING_DAYS: i64 = 14;

const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;

/// SplitMix64: tiny, fast, and stable across versions (unlike a library's default RNG).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const REGIONS: [(&str, &[&str]); 3] = [
    ("aws", &["us-east-1", "us-west-2", "eu-west-1"]),
    ("gcp", &["us-central1", "europe-west4"]),
    ("azure", &["eastus", "westeurope"]),
];

/// One slot of the fleet: the story of its current cluster, and the events of its current
/// step not yet written (in time order).
struct Slot {
    index: usize,
    rng: Rng,
    /// Clusters this slot has had (the current one's id depends on it).
    generation: u32,
    cluster_id: String,
    logical: Value,
    logical_version: i64,
    physical: Value,
    capacity: Value,
    cku: i64,
    deleted: bool,
    /// The story's clock: the time of the step last generated.
    t: i64,
    /// When the current cluster was created, for the calibration figure.
    born: i64,
    pending: VecDeque<(i64, HistoryLine)>,
}

impl Simulation {
    /// Writes the history to `out`, one JSON object per line, oldest first.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<Simulated> {
        let mut seeds = Rng(self.seed);
        let orgs = (self.clusters / 8).max(1) as u64;
        let end = i64::from(self.days.max(1)) * DAY;
        let onboarding = (ONBOARDING_DAYS * DAY).min(end / 2).max(1);
        let mut slots: Vec<Slot> = Vec::with_capacity(self.clusters);
        let mut heap = BinaryHeap::new();
        for index in 0..self.clusters {
            let mut rng = Rng(seeds.next());
            let t = rng.below(onboarding as u64) as i64;
            let mut slot = Slot::new(index, rng);
            slot.create(self, t, orgs);
            heap.push(Reverse((slot.pending[0].0, index)));
            slots.push(slot);
        }
        let mut lines = 0;
        let mut live_ms: i64 = 0;
        while let Some(Reverse((_, index))) = heap.pop() {
            let slot = &mut slots[index];
            let Some((_, line)) = slot.pending.pop_front() else {
                continue;
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            lines += 1;
            while slot.pending.is_empty() {
                if slot.deleted {
                    live_ms += slot.t.min(end) - slot.born;
                }
                if !slot.step(self, end, orgs) {
                    break;
                }
            }
            if let Some((t, _)) = slot.pending.front() {
                heap.push(Reverse((*t, index)));
            }
        }
        live_ms += slots
            .iter()
            .filter(|s| !s.deleted)
            .map(|s| end - s.born.min(end))
            .sum::<i64>();
        Ok(Simulated {
            lines,
            clusters: slots.iter().map(|s| u64::from(s.generation) + 1).sum(),
            per_cluster_day: lines as f64 / (live_ms.max(1) as f64 / DAY as f64),
        })
    }
}

impl Slot {
    fn new(index: usize, rng: Rng) -> Slot {
        Slot {
            index,
            rng,
            generation: 0,
            cluster_id: String::new(),
            logical: Value::Null,
            logical_version: 0,
            physical: Value::Null,
            capacity: Value::Null,
            cku: 0,
            deleted: false,
            t: 0,
            born: 0,
            pending: VecDeque::new(),
        }
    }

    fn emit(
        &mut self,
        sim: &Simulation,
        t: i64,
        facet: &str,
        writer: &str,
        reason: &str,
        state: Value,
    ) {
        let ts = sim.start + TimeDelta::milliseconds(t);
        self.pending.push_back((
            t,
            HistoryLine {
                ts: ts.to_rfc3339_opts(SecondsFormat::Millis, true),
                cluster_id: self.cluster_id.clone(),
                facet: facet.to_owned(),
                writer: writer.to_owned(),
                reason: Some(reason.to_owned()),
                state,
            },
        ));
    }

    fn status(phase: &str, cku: i64, observed: i64) -> Value {
        json!({"phase": phase, "cku": cku, "brokers_ready": if cku > 0 { 3 * cku } else { 0 }, "observed_version": observed})
    }

    /// The next step of the story (which may write nothing): the slot's next cluster after
    /// a deletion, or the customer's or the data plane's next action. False once the
    /// window has ended: the story is over.
    fn step(&mut self, sim: &Simulation, end: i64, orgs: u64) -> bool {
        if self.deleted {
            let t = self.t + (60 + self.rng.below(7 * 24 * 60 - 60) as i64) * MINUTE;
            if t >= end {
                return false;
            }
            self.generation += 1;
            self.create(sim, t, orgs);
            return true;
        }
        // The next action, on average once a day.
        self.t += (1 + self.rng.below(96) as i64) * 30 * MINUTE;
        if self.t >= end {
            return false;
        }
        self.act(sim);
        true
    }

    /// A new cluster in this slot at `t`: created, placed, reserved, provisioned.
    fn create(&mut self, sim: &Simulation, t: i64, orgs: u64) {
        let rng = &mut self.rng;
        let (cloud, regions) = REGIONS[rng.below(REGIONS.len() as u64) as usize];
        let cku = 1 + rng.below(4) as i64;
        let i = self.index;
        let fleet = match sim.fleet {
            0 => String::new(),
            n => format!("{n}-"),
        };
        self.cluster_id = match self.generation {
            0 => format!("lkc-sim{fleet}{i:06}"),
            g => format!("lkc-sim{fleet}{i:06}-{g}"),
        };
        self.logical = json!({
            "org_id": format!("org-{}", rng.below(orgs)),
            "env_id": format!("env-{}", rng.below(3)),
            "kind": rng.pick(&["kafka", "kafka", "kafka", "ksqldb", "connect"]),
            "name": format!("cluster-{i}"),
            "sku": rng.pick(&["basic", "standard", "standard", "dedicated"]),
            "cku": cku,
            "cloud": cloud,
            "region": rng.pick(regions),
            "network": rng.pick(&["public", "vpc-peering", "private-link"]),
            "config": {"retention.ms": "604800000"},
            "deleted": false,
        });
        self.physical = json!({"brokers": 3 * cku, "disk_gb_per_broker": 500, "zones": ["a", "b", "c"], "version": "3.9"});
        self.capacity = json!({"satellite": format!("sat-{cloud}-{}", rng.below(4)), "k8s_cluster": format!("k8s-{}", rng.below(16)), "node_pool": format!("pool-{cku}")});
        self.cku = cku;
        self.deleted = false;
        self.logical_version = 1;
        self.born = t;
        let ready = t + (10 + self.rng.below(50) as i64) * MINUTE;
        self.emit(
            sim,
            t,
            "logical",
            "frontend",
            "create",
            self.logical.clone(),
        );
        self.emit(
            sim,
            t + MINUTE,
            "physical",
            "physical-controller",
            "place brokers",
            self.physical.clone(),
        );
        self.emit(
            sim,
            t + 2 * MINUTE,
            "capacity",
            "capacity-controller",
            "reserve node pool",
            self.capacity.clone(),
        );
        self.emit(
            sim,
            t + 3 * MINUTE,
            "status",
            "sync",
            "provisioning",
            Self::status("provisioning", 0, 1),
        );
        self.emit(
            sim,
            ready,
            "status",
            "sync",
            "running",
            Self::status("running", cku, 1),
        );
        self.t = ready;
    }

    /// One action at `self.t`; leaves `self.t` at the action's last event.
    fn act(&mut self, sim: &Simulation) {
        let t = self.t;
        match self.rng.below(100) {
            0..=34 => {
                // Expansion, sometimes redirected in the middle.
                let old = self.cku;
                let mut new = (old + 1 + self.rng.below(3) as i64).min(256);
                self.set_cku(new);
                self.emit(
                    sim,
                    t,
                    "logical",
                    "frontend",
                    "expand",
                    self.logical.clone(),
                );
                self.physical["brokers"] = json!(3 * new);
                self.emit(
                    sim,
                    t + MINUTE,
                    "physical",
                    "physical-controller",
                    "add brokers",
                    self.physical.clone(),
                );
                self.emit(
                    sim,
                    t + 2 * MINUTE,
                    "status",
                    "sync",
                    "expanding",
                    Self::status("expanding", old, self.logical_version),
                );
                let mut done = t + (60 + self.rng.below(300) as i64) * MINUTE;
                if self.rng.chance(20) {
                    // The customer changes their mind while the expansion runs.
                    let mid = t + (done - t) / 2;
                    new = (old + 1).max(new - 1);
                    self.set_cku(new);
                    self.emit(
                        sim,
                        mid,
                        "logical",
                        "frontend",
                        "change of mind during expansion",
                        self.logical.clone(),
                    );
                    self.physical["brokers"] = json!(3 * new);
                    self.emit(
                        sim,
                        mid + MINUTE,
                        "physical",
                        "physical-controller",
                        "adjust brokers",
                        self.physical.clone(),
                    );
                    done = done.max(mid + 2 * MINUTE);
                }
                self.emit(
                    sim,
                    done,
                    "status",
                    "sync",
                    "expansion done",
                    Self::status("running", new, self.logical_version),
                );
                self.t = done;
            }
            35..=49 if self.cku > 1 => {
                let old = self.cku;
                let new = old - 1;
                self.set_cku(new);
                self.emit(
                    sim,
                    t,
                    "logical",
                    "frontend",
                    "shrink",
                    self.logical.clone(),
                );
                self.emit(
                    sim,
                    t + 2 * MINUTE,
                    "status",
                    "sync",
                    "shrinking",
                    Self::status("shrinking", old, self.logical_version),
                );
                self.physical["brokers"] = json!(3 * new);
                let done = t + (30 + self.rng.below(120) as i64) * MINUTE;
                self.emit(
                    sim,
                    done - MINUTE,
                    "physical",
                    "physical-controller",
                    "remove brokers",
                    self.physical.clone(),
                );
                self.emit(
                    sim,
                    done,
                    "status",
                    "sync",
                    "shrink done",
                    Self::status("running", new, self.logical_version),
                );
                self.t = done;
            }
            50..=76 => {
                self.logical["config"]["retention.ms"] =
                    json!(((1 + self.rng.below(30)) * 86_400_000).to_string());
                self.logical_version += 1;
                self.emit(
                    sim,
                    t,
                    "logical",
                    "frontend",
                    "config change",
                    self.logical.clone(),
                );
                self.emit(
                    sim,
                    t + 5 * MINUTE,
                    "status",
                    "sync",
                    "config applied",
                    Self::status("running", self.cku, self.logical_version),
                );
                self.t = t + 5 * MINUTE;
            }
            77..=79 => {
                // The physical controller rolls the brokers to a new patch version.
                let patch = 1 + self.rng.below(20);
                self.physical["version"] = json!(format!("3.9.{patch}"));
                self.emit(
                    sim,
                    t,
                    "physical",
                    "physical-controller",
                    "rolling upgrade",
                    self.physical.clone(),
                );
                let mut rolling = Self::status("running", self.cku, self.logical_version);
                rolling["message"] = json!(format!("rolling brokers to 3.9.{patch}"));
                self.emit(
                    sim,
                    t + MINUTE,
                    "status",
                    "sync",
                    "rolling upgrade",
                    rolling,
                );
                let done = t + (20 + 5 * self.cku) * MINUTE;
                self.emit(
                    sim,
                    done,
                    "status",
                    "sync",
                    "upgrade done",
                    Self::status("running", self.cku, self.logical_version),
                );
                self.t = done;
            }
            80..=89 => {
                // A failure the data plane retries.
                self.emit(
                    sim,
                    t,
                    "status",
                    "sync",
                    "broker lost",
                    Self::status("degraded", self.cku, self.logical_version),
                );
                if self.rng.chance(50) {
                    self.capacity["node_pool"] =
                        json!(format!("pool-{}-r{}", self.cku, self.rng.below(100)));
                    self.emit(
                        sim,
                        t + 5 * MINUTE,
                        "capacity",
                        "capacity-controller",
                        "move to a healthy pool",
                        self.capacity.clone(),
                    );
                }
                let done = t + (10 + self.rng.below(60) as i64) * MINUTE;
                self.emit(
                    sim,
                    done,
                    "status",
                    "sync",
                    "recovered",
                    Self::status("running", self.cku, self.logical_version),
                );
                self.t = done;
            }
            _ if self.rng.chance(5) => {
                self.deleted = true;
                self.logical["deleted"] = json!(true);
                self.logical_version += 1;
                self.emit(
                    sim,
                    t,
                    "logical",
                    "frontend",
                    "delete",
                    self.logical.clone(),
                );
                self.emit(
                    sim,
                    t + MINUTE,
                    "status",
                    "sync",
                    "deleting",
                    Self::status("deleting", self.cku, self.logical_version),
                );
                let gone = t + (20 + self.rng.below(40) as i64) * MINUTE;
                self.emit(
                    sim,
                    gone,
                    "status",
                    "sync",
                    "deleted",
                    Self::status("deleted", 0, self.logical_version),
                );
                self.t = gone;
            }
            _ => {}
        }
    }

    fn set_cku(&mut self, cku: i64) {
        self.cku = cku;
        self.logical["cku"] = json!(cku);
        self.logical_version += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use fleetledger_client::history_file::parse_lines;

    fn sim(seed: u64, clusters: usize, days: u32) -> (Vec<u8>, Simulated) {
        let mut out = Vec::new();
        let done = Simulation {
            clusters,
            days,
            seed,
            start: "2026-01-01T00:00:00Z".parse().unwrap(),
            fleet: 0,
        }
        .write(&mut out)
        .unwrap();
        (out, done)
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_valid_states() {
        let (a, done) = sim(7, 40, 10);
        assert_eq!(a, sim(7, 40, 10).0);
        assert_ne!(a, sim(8, 40, 10).0);
        let lines = parse_lines(std::str::from_utf8(&a).unwrap()).unwrap();
        assert_eq!(lines.len() as u64, done.lines);
        assert!(lines.len() > 40 * 5, "{}", lines.len());
        for (no, l) in &lines {
            let facet: fleetledger_schemas::Facet = l.facet.parse().unwrap();
            fleetledger_schemas::FacetState::from_json(facet, l.state.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("line {no}: {e}"));
        }
        let phases: std::collections::BTreeSet<&str> = lines
            .iter()
            .filter_map(|(_, l)| l.state.get("phase").and_then(Value::as_str))
            .collect();
        for p in ["provisioning", "running", "expanding", "degraded"] {
            assert!(phases.contains(p), "{p} missing from {phases:?}");
        }
    }

    /// The calibration the module promises: a steady fleet (deleted clusters replaced, the
    /// live count near the slots at the end), about 3 records per live cluster and day, in
    /// time order, every writer.
    #[test]
    fn the_fleet_stays_its_size_at_the_calibrated_rate() {
        let (bytes, done) = sim(1, 300, 240);
        let lines = parse_lines(std::str::from_utf8(&bytes).unwrap()).unwrap();
        assert!(
            (2.5..3.5).contains(&done.per_cluster_day),
            "{} records per cluster-day",
            done.per_cluster_day
        );
        assert!(
            done.clusters > 300,
            "deleted clusters were replaced: {}",
            done.clusters
        );
        let times: Vec<&str> = lines.iter().map(|(_, l)| l.ts.as_str()).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "lines are in time order"
        );
        let mut last: BTreeMap<&str, (&str, bool)> = BTreeMap::new();
        for (_, l) in &lines {
            if l.facet == "logical" {
                let deleted = l.state["deleted"] == json!(true);
                last.insert(&l.cluster_id, (&l.writer, deleted));
            }
        }
        assert_eq!(last.len() as u64, done.clusters, "one id per cluster");
        let live = last.values().filter(|(_, deleted)| !deleted).count();
        assert!(
            live > 270,
            "the fleet keeps its size: {live} of 300 live at the end"
        );
        let writers: std::collections::BTreeSet<&str> =
            lines.iter().map(|(_, l)| l.writer.as_str()).collect();
        assert_eq!(
            writers.into_iter().collect::<Vec<_>>(),
            vec![
                "capacity-controller",
                "frontend",
                "physical-controller",
                "sync"
            ]
        );
    }
}
