//! The record keys of both topics, built and parsed in one place: `{cluster}/{facet}` on
//! the state topic, `{cluster}/{facet}/{version:020}` on the history topic (zero-padded, so
//! one cluster+facet's keys sort by version and never collide).

use std::fmt;

use fleetledger_schemas::Facet;

/// The key of a record of the state topic: the latest state of one cluster+facet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateKey {
    /// Cluster.
    pub cluster_id: String,
    /// Facet.
    pub facet: Facet,
}

/// The key of a record of the history topic: one version of one cluster+facet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HistoryKey {
    /// Cluster.
    pub cluster_id: String,
    /// Facet.
    pub facet: Facet,
    /// Version (1, 2, …).
    pub version: i64,
}

impl fmt::Display for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.cluster_id, self.facet.as_str())
    }
}

impl fmt::Display for HistoryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{:020}",
            self.cluster_id,
            self.facet.as_str(),
            self.version
        )
    }
}

impl HistoryKey {
    /// The key of version `version` of `cluster_id`'s `facet`.
    pub fn new(cluster_id: &str, facet: Facet, version: i64) -> Self {
        HistoryKey {
            cluster_id: cluster_id.to_owned(),
            facet,
            version,
        }
    }

    /// Parses a history key; `None` for anything that is not `{cluster}/{facet}/{20 digits}`.
    pub fn parse(key: &str) -> Option<HistoryKey> {
        let (rest, version) = key.rsplit_once('/')?;
        let (cluster_id, facet) = rest.rsplit_once('/')?;
        if version.len() != 20 || !version.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(HistoryKey {
            cluster_id: cluster_id.to_owned(),
            facet: facet.parse().ok()?,
            version: version.parse().ok()?,
        })
    }

    /// The prefix every history key of `cluster_id` starts with.
    pub fn cluster_prefix(cluster_id: &str) -> String {
        format!("{cluster_id}/")
    }
}

/// The facet a history or state key names (`{cluster}/{facet}[/{version}]`), if it names one.
pub fn facet_of_key(key: &[u8]) -> Option<Facet> {
    let key = std::str::from_utf8(key).ok()?;
    let mut parts = key.rsplitn(3, '/');
    let last = parts.next()?;
    match parts.next() {
        Some(facet) if last.len() == 20 && last.bytes().all(|b| b.is_ascii_digit()) => {
            facet.parse().ok()
        }
        _ => last.parse().ok(),
    }
}

impl StateKey {
    /// Parses a state key; `None` for anything that is not `{cluster}/{facet}`.
    pub fn parse(key: &str) -> Option<StateKey> {
        let (cluster_id, facet) = key.rsplit_once('/')?;
        Some(StateKey {
            cluster_id: cluster_id.to_owned(),
            facet: facet.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_read_as_the_topics_hold_them() {
        let k = HistoryKey::new("lkc-7x2k9", Facet::Status, 42);
        assert_eq!(k.to_string(), "lkc-7x2k9/status/00000000000000000042");
        let s = StateKey {
            cluster_id: "lkc-7x2k9".into(),
            facet: Facet::Logical,
        };
        assert_eq!(s.to_string(), "lkc-7x2k9/logical");
        assert_eq!(StateKey::parse("lkc-7x2k9/logical"), Some(s));
        assert_eq!(facet_of_key(k.to_string().as_bytes()), Some(Facet::Status));
        assert_eq!(facet_of_key(b"lkc-7x2k9/logical"), Some(Facet::Logical));
        assert_eq!(facet_of_key(b"lkc-7x2k9/nope"), None);
        for bad in [
            "lkc/logical/42",
            "lkc/nope/00000000000000000042",
            "x",
            "lkc/logical/0000000000000000004a",
        ] {
            assert_eq!(HistoryKey::parse(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn history_keys_round_trip_and_sort_by_version(
            cluster in "[a-z][a-z0-9-]{0,20}",
            facet in 0usize..4,
            a in 0i64..i64::MAX,
            b in 0i64..i64::MAX,
        ) {
            let facet = Facet::ALL[facet];
            let ka = HistoryKey::new(&cluster, facet, a);
            prop_assert_eq!(HistoryKey::parse(&ka.to_string()), Some(ka.clone()));
            let kb = HistoryKey::new(&cluster, facet, b);
            prop_assert_eq!(ka.to_string().cmp(&kb.to_string()), a.cmp(&b));
        }
    }
}
