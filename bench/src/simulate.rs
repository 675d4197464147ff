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
//! (`degraded` then `running` again), and delete (`deleting` → `deleted`).
//!
//! Determinism: one seeded SplitMix64 stream drives everything, events are sorted by
//! (time, cluster, sequence), and every JSON object has a fixed field order, so the same
//! arguments always produce the same bytes.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use fleetledger_client::history_file::HistoryLine;
use serde_json::{Value, json};

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct Simulation {
    /// Clusters.
    pub clusters: usize,
    /// Days of history.
    pub days: u32,
    /// Seed of the random stream.
    pub seed: u64,
    /// Start of the history.
    pub start: DateTime<Utc>,
}

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

/// One simulated cluster's desired and actual state as the story goes on.
struct ClusterStory {
    logical: Value,
    logical_version: i64,
    physical: Value,
    capacity: Value,
    cku: i64,
    deleted: bool,
}

/// An event before sorting: (time in ms, cluster index, sequence within the cluster).
type Event = ((i64, usize, u32), HistoryLine);

impl Simulation {
    /// Writes the history to `out`, one JSON object per line, oldest first. Returns the
    /// number of lines.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<u64> {
        let mut events: Vec<Event> = Vec::new();
        let mut rng = Rng(self.seed);
        let orgs = (self.clusters / 8).max(1) as u64;
        let window_ms = i64::from(self.days.max(1)) * 86_400_000;
        for i in 0..self.clusters {
            let mut own = Rng(rng.next());
            self.cluster(i, orgs, window_ms, &mut own, &mut events);
        }
        events.sort_by_key(|a| a.0);
        let mut n = 0;
        for (_, line) in events {
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            n += 1;
        }
        Ok(n)
    }

    fn cluster(&self, i: usize, orgs: u64, window_ms: i64, rng: &mut Rng, events: &mut Vec<Event>) {
        let (cloud, regions) = REGIONS[rng.below(REGIONS.len() as u64) as usize];
        let cku = 1 + rng.below(4) as i64;
        let mut story = ClusterStory {
            logical: json!({
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
            }),
            logical_version: 0,
            physical: json!({"brokers": 3 * cku, "disk_gb_per_broker": 500, "zones": ["a", "b", "c"], "version": "3.9"}),
            capacity: json!({"satellite": format!("sat-{cloud}-{}", rng.below(4)), "k8s_cluster": format!("k8s-{}", rng.below(16)), "node_pool": format!("pool-{cku}")}),
            cku,
            deleted: false,
        };
        let mut seq = 0u32;
        let mut emit = |t: i64, facet: &str, principal: &str, reason: &str, state: Value| {
            let ts = self.start + TimeDelta::milliseconds(t);
            events.push((
                (t, i, seq),
                HistoryLine {
                    ts: ts.to_rfc3339_opts(SecondsFormat::Millis, true),
                    cluster_id: format!("lkc-sim{i:06}"),
                    facet: facet.to_owned(),
                    writer: principal.to_owned(),
                    reason: Some(reason.to_owned()),
                    state,
                },
            ));
            seq += 1;
        };
        let minute = 60_000;
        let status = |phase: &str, cku: i64, observed: i64| json!({"phase": phase, "cku": cku, "brokers_ready": if cku > 0 { 3 * cku } else { 0 }, "observed_version": observed});
        // Created in the first half of the window.
        let mut t = rng.below((window_ms / 2).max(1) as u64) as i64;
        story.logical_version = 1;
        emit(t, "logical", "frontend", "create", story.logical.clone());
        emit(
            t + minute,
            "physical",
            "physical-controller",
            "place brokers",
            story.physical.clone(),
        );
        emit(
            t + 2 * minute,
            "capacity",
            "capacity-controller",
            "reserve node pool",
            story.capacity.clone(),
        );
        emit(
            t + 3 * minute,
            "status",
            "sync",
            "provisioning",
            status("provisioning", 0, 1),
        );
        t += (10 + rng.below(50) as i64) * minute;
        emit(
            t,
            "status",
            "sync",
            "running",
            status("running", story.cku, 1),
        );
        let end = window_ms;
        loop {
            // The next customer action, on average every two days.
            t += (1 + rng.below(96) as i64) * 30 * minute;
            if t >= end || story.deleted {
                break;
            }
            match rng.below(100) {
                0..=34 => {
                    // Expansion, sometimes redirected in the middle.
                    let old = story.cku;
                    let mut new = (old + 1 + rng.below(3) as i64).min(256);
                    story.cku = new;
                    story.logical["cku"] = json!(new);
                    story.logical_version += 1;
                    emit(t, "logical", "frontend", "expand", story.logical.clone());
                    story.physical["brokers"] = json!(3 * new);
                    emit(
                        t + minute,
                        "physical",
                        "physical-controller",
                        "add brokers",
                        story.physical.clone(),
                    );
                    emit(
                        t + 2 * minute,
                        "status",
                        "sync",
                        "expanding",
                        status("expanding", old, story.logical_version),
                    );
                    let mut done = t + (60 + rng.below(300) as i64) * minute;
                    if rng.chance(20) {
                        // The customer changes their mind while the expansion runs.
                        let mid = t + (done - t) / 2;
                        new = (old + 1).max(new - 1);
                        story.cku = new;
                        story.logical["cku"] = json!(new);
                        story.logical_version += 1;
                        emit(
                            mid,
                            "logical",
                            "frontend",
                            "change of mind during expansion",
                            story.logical.clone(),
                        );
                        story.physical["brokers"] = json!(3 * new);
                        emit(
                            mid + minute,
                            "physical",
                            "physical-controller",
                            "adjust brokers",
                            story.physical.clone(),
                        );
                        done = done.max(mid + 2 * minute);
                    }
                    emit(
                        done,
                        "status",
                        "sync",
                        "expansion done",
                        status("running", new, story.logical_version),
                    );
                    t = done;
                }
                35..=49 if story.cku > 1 => {
                    let new = story.cku - 1;
                    let old = story.cku;
                    story.cku = new;
                    story.logical["cku"] = json!(new);
                    story.logical_version += 1;
                    emit(t, "logical", "frontend", "shrink", story.logical.clone());
                    emit(
                        t + 2 * minute,
                        "status",
                        "sync",
                        "shrinking",
                        status("shrinking", old, story.logical_version),
                    );
                    story.physical["brokers"] = json!(3 * new);
                    let done = t + (30 + rng.below(120) as i64) * minute;
                    emit(
                        done - minute,
                        "physical",
                        "physical-controller",
                        "remove brokers",
                        story.physical.clone(),
                    );
                    emit(
                        done,
                        "status",
                        "sync",
                        "shrink done",
                        status("running", new, story.logical_version),
                    );
                    t = done;
                }
                50..=79 => {
                    story.logical["config"]["retention.ms"] =
                        json!(((1 + rng.below(30)) * 86_400_000).to_string());
                    story.logical_version += 1;
                    emit(
                        t,
                        "logical",
                        "frontend",
                        "config change",
                        story.logical.clone(),
                    );
                    emit(
                        t + 5 * minute,
                        "status",
                        "sync",
                        "config applied",
                        status("running", story.cku, story.logical_version),
                    );
                }
                80..=89 => {
                    // A failure the data plane retries.
                    emit(
                        t,
                        "status",
                        "sync",
                        "broker lost",
                        status("degraded", story.cku, story.logical_version),
                    );
                    if rng.chance(50) {
                        story.capacity["node_pool"] =
                            json!(format!("pool-{}-r{}", story.cku, rng.below(100)));
                        emit(
                            t + 5 * minute,
                            "capacity",
                            "capacity-controller",
                            "move to a healthy pool",
                            story.capacity.clone(),
                        );
                    }
                    t += (10 + rng.below(60) as i64) * minute;
                    emit(
                        t,
                        "status",
                        "sync",
                        "recovered",
                        status("running", story.cku, story.logical_version),
                    );
                }
                _ if rng.chance(30) => {
                    story.deleted = true;
                    story.logical["deleted"] = json!(true);
                    story.logical_version += 1;
                    emit(t, "logical", "frontend", "delete", story.logical.clone());
                    emit(
                        t + minute,
                        "status",
                        "sync",
                        "deleting",
                        status("deleting", story.cku, story.logical_version),
                    );
                    emit(
                        t + (20 + rng.below(40) as i64) * minute,
                        "status",
                        "sync",
                        "deleted",
                        status("deleted", 0, story.logical_version),
                    );
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetledger_client::history_file::parse_lines;

    fn sim(seed: u64) -> Vec<u8> {
        let mut out = Vec::new();
        Simulation {
            clusters: 40,
            days: 10,
            seed,
            start: "2026-01-01T00:00:00Z".parse().unwrap(),
        }
        .write(&mut out)
        .unwrap();
        out
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_valid_states() {
        let a = sim(7);
        assert_eq!(a, sim(7));
        assert_ne!(a, sim(8));
        let lines = parse_lines(std::str::from_utf8(&a).unwrap()).unwrap();
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
        for p in [
            "provisioning",
            "running",
            "expanding",
            "degraded",
            "deleted",
        ] {
            assert!(phases.contains(p), "{p} missing from {phases:?}");
        }
    }
}
