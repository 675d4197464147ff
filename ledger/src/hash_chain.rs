//! The SHA-256 chain per cluster+facet: each record's hash covers its metadata, its
//! state and the previous record's hash, so changing or removing any record breaks every
//! later link.

use std::collections::{HashMap, HashSet};

use fleetledger_schemas::{Facet, FacetState, RecordMeta, StateRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash of a record whose metadata (except `hash`) and state are given. Canonical
/// input: one field per line in a fixed order, the state as JSON with sorted map keys.
pub fn record_hash(meta: &RecordMeta, state: &FacetState) -> String {
    record_hash_of_canonical(meta, state.facet(), &canonical_state(state))
}

/// A state's canonical JSON (sorted field names and map keys,
/// [`FacetState::canonical_json`]), the form both [`record_hash`] and [`body_digest`]
/// hash; computed once per change by the append path.
pub fn canonical_state(state: &FacetState) -> String {
    state.canonical_json()
}

/// [`record_hash`] of a state already in canonical form ([`canonical_state`]).
pub fn record_hash_of_canonical(meta: &RecordMeta, facet: Facet, canonical: &str) -> String {
    let mut h = Sha256::new();
    let reason = meta.reason.as_deref().unwrap_or("");
    for part in [
        meta.cluster_id.as_str(),
        facet.as_str(),
        &meta.version.to_string(),
        meta.writer.as_str(),
        meta.request_id.as_str(),
        reason,
        &meta.ts.timestamp_millis().to_string(),
        meta.prev_hash.as_str(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// The SHA-256 of a request body (its state in canonical form, [`canonical_state`], and
/// its reason), to tell a repeated idempotency key with the same body from one with a
/// different body.
pub fn body_digest(canonical: &str, reason: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(canonical.as_bytes());
    h.update([0]);
    h.update(reason.unwrap_or("").as_bytes());
    hex::encode(h.finalize())
}

/// Where a chain breaks: the first record that does not follow from the one before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenLink {
    /// Cluster.
    pub cluster_id: String,
    /// Facet.
    pub facet: Facet,
    /// The record's version as it claims it.
    pub version: i64,
    /// History partition.
    pub partition: i32,
    /// History offset.
    pub offset: i64,
    /// What is wrong, e.g. `hash is ab12…, the record's content hashes to 9f3c…`.
    pub problem: String,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} version {} (partition {}, offset {}): {}",
            self.cluster_id, self.facet, self.version, self.partition, self.offset, self.problem
        )
    }
}

/// What [`ChainVerifier`] checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    /// Records checked.
    pub records: u64,
    /// Distinct cluster+facet chains seen.
    pub chains: u64,
    /// Distinct clusters seen.
    pub clusters: u64,
    /// Every broken link, in the order met (at most one per chain: after a break the
    /// chain is followed from the broken record on, so one tampered record is one entry).
    pub broken: Vec<BrokenLink>,
}

impl ChainReport {
    /// Whether every chain held.
    pub fn is_intact(&self) -> bool {
        self.broken.is_empty()
    }
}

/// Checks hash chains record by record, in the order each cluster+facet's records were
/// committed (partition order): every record's hash must be the hash of its content, its
/// `prev_hash` the hash of the record before it, and its version one more (the first
/// version 1 with an empty `prev_hash`).
#[derive(Debug, Default)]
pub struct ChainVerifier {
    last: HashMap<(String, Facet), (i64, String)>,
    clusters: HashSet<String>,
    records: u64,
    broken: Vec<BrokenLink>,
}

impl ChainVerifier {
    /// A verifier that has seen nothing.
    pub fn new() -> Self {
        ChainVerifier::default()
    }

    /// Checks `record`, found at `partition`/`offset`, against the one before it in its
    /// chain. Returns the broken link it found, if any (also kept for the report).
    pub fn check(
        &mut self,
        record: &StateRecord,
        partition: i32,
        offset: i64,
    ) -> Option<BrokenLink> {
        self.records += 1;
        let m = &record.meta;
        let facet = record.facet();
        if !self.clusters.contains(&m.cluster_id) {
            self.clusters.insert(m.cluster_id.clone());
        }
        let key = (m.cluster_id.clone(), facet);
        let (expected_version, expected_prev) = match self.last.get(&key) {
            Some((v, h)) => (v + 1, h.as_str()),
            None => (1, ""),
        };
        let mut problems = Vec::new();
        let actual = record_hash(m, &record.state);
        if actual != m.hash {
            problems.push(format!(
                "hash is {}, but the record's content hashes to {actual}",
                short(&m.hash)
            ));
        }
        if m.version != expected_version {
            problems.push(format!(
                "version {} follows version {}, expected {expected_version}",
                m.version,
                expected_version - 1
            ));
        }
        if m.prev_hash != expected_prev {
            problems.push(format!(
                "prev_hash is {:?}, but the previous record's hash is {:?}",
                short(&m.prev_hash),
                short(expected_prev)
            ));
        }
        self.last.insert(key, (m.version, m.hash.clone()));
        if problems.is_empty() {
            return None;
        }
        let link = BrokenLink {
            cluster_id: m.cluster_id.clone(),
            facet,
            version: m.version,
            partition,
            offset,
            problem: problems.join("; "),
        };
        self.broken.push(link.clone());
        Some(link)
    }

    /// Records a record that could not be decoded at all: its chain is broken there.
    pub fn undecodable(&mut self, cluster_key: &str, partition: i32, offset: i64, message: &str) {
        self.records += 1;
        let mut parts = cluster_key.split('/');
        let cluster_id = parts.next().unwrap_or("").to_owned();
        let facet = parts
            .next()
            .and_then(|f| f.parse().ok())
            .unwrap_or(Facet::Logical);
        let version = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        self.broken.push(BrokenLink {
            cluster_id,
            facet,
            version,
            partition,
            offset,
            problem: format!("the record cannot be decoded: {message}"),
        });
    }

    /// What was checked and what broke.
    pub fn report(&self) -> ChainReport {
        ChainReport {
            records: self.records,
            chains: self.last.len() as u64,
            clusters: self.clusters.len() as u64,
            broken: self.broken.clone(),
        }
    }
}

fn short(hash: &str) -> String {
    if hash.len() > 16 {
        format!("{}…", &hash[..16])
    } else {
        hash.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use fleetledger_schemas::CapacityState;

    fn meta(version: i64, prev: &str) -> RecordMeta {
        RecordMeta {
            cluster_id: "lkc-1".into(),
            version,
            writer: "capacity-controller".into(),
            request_id: "r".into(),
            reason: None,
            ts: Utc::now(),
            prev_hash: prev.into(),
            hash: String::new(),
        }
    }

    /// The hash of one fixed record, pinned: every record ever written is chained by this
    /// function, so its output must never change (a map's key order, a number's format or a
    /// field's place would break the verification of every existing history). A logical
    /// state with a config map covers the sorted-keys rule of the canonical JSON.
    #[test]
    fn golden_vector_pins_the_record_hash() {
        let state = FacetState::Logical(std::sync::Arc::new(fleetledger_schemas::LogicalState {
            org_id: "org-1".into(),
            env_id: "env-1".into(),
            kind: "kafka".into(),
            name: "orders \"eu\" ü".into(),
            sku: "dedicated".into(),
            cku: 4,
            cloud: "aws".into(),
            region: "eu-west-1".into(),
            network: "private-link".into(),
            config: [("z.last", "1"), ("a.first", "2"), ("m.mid", "x\ny")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            deleted: false,
        }));
        let meta = RecordMeta {
            cluster_id: "lkc-7x2k9".into(),
            version: 3,
            writer: "frontend".into(),
            request_id: "req-42".into(),
            reason: Some("expand".into()),
            ts: "2026-01-02T03:04:05.678Z".parse().unwrap(),
            prev_hash: "ab".repeat(32),
            hash: String::new(),
        };
        assert_eq!(
            canonical_state(&state),
            r#"{"cku":4,"cloud":"aws","config":{"a.first":"2","m.mid":"x\ny","z.last":"1"},"deleted":false,"env_id":"env-1","kind":"kafka","name":"orders \"eu\" ü","network":"private-link","org_id":"org-1","region":"eu-west-1","sku":"dedicated"}"#
        );
        assert_eq!(
            record_hash(&meta, &state),
            "b36802504f0ba06db19e0a49084dea23547fe3b4db4649e8edf56800ec8b7a37"
        );
    }

    #[test]
    fn any_change_changes_the_hash() {
        let s = FacetState::Capacity(std::sync::Arc::new(CapacityState {
            satellite: "a".into(),
            k8s_cluster: "b".into(),
            node_pool: "c".into(),
        }));
        let m = meta(1, "");
        let h = record_hash(&m, &s);
        assert_eq!(h.len(), 64);
        assert_eq!(h, record_hash(&m, &s));
        assert_ne!(h, record_hash(&meta(2, ""), &s));
        assert_ne!(
            h,
            record_hash(
                &RecordMeta {
                    prev_hash: "x".into(),
                    ..m.clone()
                },
                &s
            )
        );
        let s2 = FacetState::Capacity(std::sync::Arc::new(CapacityState {
            satellite: "a2".into(),
            k8s_cluster: "b".into(),
            node_pool: "c".into(),
        }));
        assert_ne!(h, record_hash(&m, &s2));
    }

    fn chain(n: i64) -> Vec<StateRecord> {
        let mut out: Vec<StateRecord> = Vec::new();
        for v in 1..=n {
            let prev = out.last().map(|r| r.meta.hash.clone()).unwrap_or_default();
            let state = FacetState::Capacity(std::sync::Arc::new(CapacityState {
                satellite: format!("sat-{v}"),
                k8s_cluster: "k".into(),
                node_pool: "p".into(),
            }));
            let mut m = meta(v, &prev);
            m.hash = record_hash(&m, &state);
            out.push(StateRecord { meta: m, state });
        }
        out
    }

    #[test]
    fn an_honest_chain_verifies() {
        let mut v = ChainVerifier::new();
        for (i, r) in chain(5).iter().enumerate() {
            assert_eq!(v.check(r, 0, i as i64), None);
        }
        let report = v.report();
        assert!(report.is_intact());
        assert_eq!((report.records, report.chains, report.clusters), (5, 1, 1));
    }

    #[test]
    fn tampering_gaps_and_bad_links_are_named() {
        let records = chain(4);
        // Content changed after hashing.
        let mut tampered = records.clone();
        if let FacetState::Capacity(c) = &mut tampered[1].state {
            std::sync::Arc::make_mut(c).node_pool = "evil".into();
        }
        let mut v = ChainVerifier::new();
        let broken: Vec<_> = tampered
            .iter()
            .enumerate()
            .filter_map(|(i, r)| v.check(r, 2, 10 + i as i64))
            .collect();
        assert_eq!(broken.len(), 1);
        assert_eq!((broken[0].version, broken[0].offset), (2, 11));
        assert!(
            broken[0].problem.contains("content hashes to"),
            "{}",
            broken[0].problem
        );

        // A version missing.
        let mut v = ChainVerifier::new();
        let gap: Vec<_> = [0, 1, 3]
            .iter()
            .filter_map(|&i| v.check(&records[i], 0, i as i64))
            .collect();
        assert_eq!(gap.len(), 1);
        assert_eq!(gap[0].version, 4);
        assert!(gap[0].problem.contains("expected 3"), "{}", gap[0].problem);
        assert!(gap[0].problem.contains("prev_hash"), "{}", gap[0].problem);

        // A self-consistent record whose prev_hash points elsewhere.
        let mut forged = records[1].clone();
        forged.meta.prev_hash = "0".repeat(64);
        forged.meta.hash = record_hash(&forged.meta, &forged.state);
        let mut v = ChainVerifier::new();
        assert_eq!(v.check(&records[0], 0, 0), None);
        let b = v.check(&forged, 0, 1).expect("broken link");
        assert!(b.problem.starts_with("prev_hash"), "{}", b.problem);
    }
}
