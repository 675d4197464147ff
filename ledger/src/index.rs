//! The in-memory index of the latest committed record of every cluster+facet, with its
//! idempotency window, and its rebuild from the compacted state topic.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use fleetledger_schemas::{Facet, FacetState, RecordCodec, RecordMeta, StateRecord};
use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use rdkafka::message::Headers;
use serde::{Deserialize, Serialize};

use crate::append::Appended;
use crate::error::{Error, Result};
use crate::kafka::{KafkaClients, read_partition_to_end};
use crate::keys::facet_of_key;
use crate::topics::TopicLayout;

/// The state record header that carries a cluster+facet's idempotency window.
pub(crate) const RECENT_HEADER: &str = "fleetledger.recent";

/// The idempotency window a state record carries in its [`RECENT_HEADER`], if any.
pub(crate) fn recent_header<'a>(m: &'a BorrowedMessage<'_>) -> Option<&'a [u8]> {
    m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == RECENT_HEADER)
            .and_then(|h| h.value)
    })
}

/// One request id of an idempotency window, with the digest of its body and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecentRequest {
    pub(crate) request_id: String,
    pub(crate) digest: String,
    pub(crate) result: Appended,
}

/// Keeps of `recent` (oldest first) at most the last `max` requests, and none whose
/// record is more than `window_ms` older than the latest one's.
pub(crate) fn trim_window(recent: &mut VecDeque<RecentRequest>, max: usize, window_ms: u64) {
    while recent.len() > max.max(1) {
        recent.pop_front();
    }
    let window = chrono::TimeDelta::milliseconds(i64::try_from(window_ms).unwrap_or(i64::MAX));
    if let Some(newest) = recent.back().map(|r| r.result.ts) {
        while recent
            .front()
            .is_some_and(|r| r.result.ts < newest - window)
        {
            recent.pop_front();
        }
    }
}

/// The latest accepted record of one cluster+facet.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// The record.
    pub record: StateRecord,
    /// Where its history copy is.
    pub appended: Appended,
    /// The last request ids that came with an idempotency key, oldest first.
    pub(crate) recent: VecDeque<RecentRequest>,
}

/// Every facet's head of one cluster, and the latest `ts` of any of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ClusterHeads {
    facets: [Option<Head>; 4],
    latest_ts: Option<DateTime<Utc>>,
}

fn slot(facet: Facet) -> usize {
    match facet {
        Facet::Logical => 0,
        Facet::Physical => 1,
        Facet::Capacity => 2,
        Facet::Status => 3,
    }
}

/// Cluster → its heads. Plain data: admission decides over it without I/O.
///
/// The heads are boxed: a [`ClusterHeads`] is about a kilobyte, and a hash table keeps its
/// values in its slots, empty ones included (up to half of them after it grows), and
/// holds the old and the new slots at once while it grows: at 26,000 clusters that was
/// 41 MB of table, 20 MB more while growing.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Index {
    clusters: HashMap<String, Box<ClusterHeads>>,
}

impl Index {
    /// The head of `cluster_id`'s `facet`.
    pub(crate) fn head(&self, cluster_id: &str, facet: Facet) -> Option<&Head> {
        self.clusters.get(cluster_id)?.facets[slot(facet)].as_ref()
    }

    /// The latest `ts` of any facet of `cluster_id`.
    pub(crate) fn latest_ts(&self, cluster_id: &str) -> Option<DateTime<Utc>> {
        self.clusters.get(cluster_id)?.latest_ts
    }

    /// Every head of `cluster_id`, by facet.
    pub(crate) fn heads_of(&self, cluster_id: &str) -> impl Iterator<Item = &Head> {
        self.clusters
            .get(cluster_id)
            .into_iter()
            .flat_map(|c| c.facets.iter().flatten())
    }

    /// Installs `head` unless the index holds a higher version of its cluster+facet.
    pub(crate) fn install(&mut self, head: Head) {
        let meta = &head.record.meta;
        let cluster = match self.clusters.get_mut(&meta.cluster_id) {
            Some(c) => c,
            None => self.clusters.entry(meta.cluster_id.clone()).or_default(),
        };
        cluster.latest_ts = Some(cluster.latest_ts.map_or(meta.ts, |t| t.max(meta.ts)));
        let slot = &mut cluster.facets[slot(head.record.facet())];
        if slot
            .as_ref()
            .is_none_or(|h| h.record.meta.version < head.record.meta.version)
        {
            *slot = Some(head);
        }
    }

    /// How many clusters the index holds.
    pub(crate) fn clusters(&self) -> usize {
        self.clusters.len()
    }
}

/// The states of the ledger's latest records, for another part of the process that
/// decodes the same records from the history topic (the projector): it may hold the
/// ledger's copy of a state instead of its own, so that the process holds each latest
/// state once (`serve`'s peak during the 10M import: about 25 MB less).
#[derive(Debug, Clone)]
pub struct HeadStates {
    index: std::sync::Arc<tokio::sync::RwLock<Index>>,
}

impl HeadStates {
    /// The states of the records `index` holds.
    pub(crate) fn of(index: std::sync::Arc<tokio::sync::RwLock<Index>>) -> HeadStates {
        HeadStates { index }
    }

    /// The ledger's copy of the state of the record `meta` is of (facet `facet`): when the
    /// ledger's latest record of that cluster+facet is that record (the same version and
    /// hash), and the index is not being changed this instant (this never waits). `None`
    /// otherwise: the caller keeps its own copy, equal in value.
    pub fn same_state(&self, meta: &RecordMeta, facet: Facet) -> Option<FacetState> {
        let index = self.index.try_read().ok()?;
        index
            .head(&meta.cluster_id, facet)
            .filter(|h| h.record.meta.version == meta.version && h.record.meta.hash == meta.hash)
            .map(|h| h.record.state.clone())
    }

    /// The ledger's copy of `state`, a state of `cluster_id` that another part of the
    /// process restored on its own (a projection from its checkpoint): when the ledger's
    /// latest record of that cluster+facet holds a state equal in value, and the index is
    /// not being changed this instant (this never waits). `None` otherwise: the caller
    /// keeps its own copy.
    pub fn equal_state(&self, cluster_id: &str, state: &FacetState) -> Option<FacetState> {
        let index = self.index.try_read().ok()?;
        index
            .head(cluster_id, state.facet())
            .filter(|h| h.record.state == *state)
            .map(|h| h.record.state.clone())
    }
}

/// What admission reads: the latest record of every cluster+facet, and the latest `ts` of
/// each cluster. The committed [`Index`] is one; [`Layered`] is the index as it will be
/// once the transaction in flight commits.
pub(crate) trait Heads {
    /// The head of `cluster_id`'s `facet`.
    fn head(&self, cluster_id: &str, facet: Facet) -> Option<&Head>;
    /// The latest `ts` of any facet of `cluster_id`.
    fn latest_ts(&self, cluster_id: &str) -> Option<DateTime<Utc>>;
}

impl Heads for Index {
    fn head(&self, cluster_id: &str, facet: Facet) -> Option<&Head> {
        Index::head(self, cluster_id, facet)
    }

    fn latest_ts(&self, cluster_id: &str) -> Option<DateTime<Utc>> {
        Index::latest_ts(self, cluster_id)
    }
}

/// The committed index with the heads of a transaction in flight laid over it: what the
/// index will hold if that transaction commits. Admission of the next group decides over
/// it while the transaction commits (see [`crate::pipeline`]).
pub(crate) struct Layered<'a> {
    /// The heads the transaction in flight writes.
    pub(crate) over: &'a Index,
    /// The committed index.
    pub(crate) under: &'a Index,
}

impl Heads for Layered<'_> {
    fn head(&self, cluster_id: &str, facet: Facet) -> Option<&Head> {
        self.over
            .head(cluster_id, facet)
            .or_else(|| self.under.head(cluster_id, facet))
    }

    fn latest_ts(&self, cluster_id: &str) -> Option<DateTime<Utc>> {
        match (
            self.over.latest_ts(cluster_id),
            self.under.latest_ts(cluster_id),
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A state record as read: payload, recent-requests header, offset.
type RawState = (Vec<u8>, Option<Vec<u8>>, i64);

/// Rebuilds the index from the compacted state topic: the highest version of every
/// cluster+facet, with its recent request ids.
pub(crate) async fn rebuild_index(
    clients: &KafkaClients,
    layout: &TopicLayout,
    codec: &RecordCodec,
) -> Result<Index> {
    Ok(rebuild_index_at(clients, layout, codec).await?.0)
}

/// The index as a state record makes it: the record, the idempotency window its header
/// carries, and where its history copy is (known from the window, else unknown: -1).
pub(crate) fn head_of(record: StateRecord, recent: Option<&[u8]>, partition: i32) -> Head {
    let recent: VecDeque<RecentRequest> = recent
        .and_then(|r| serde_json::from_slice(r).ok())
        .unwrap_or_default();
    let appended = recent
        .iter()
        .rev()
        .find(|r| r.result.version == record.meta.version)
        .map(|r| r.result.clone())
        .unwrap_or_else(|| Appended::of(&record, partition, -1));
    Head {
        record,
        appended,
        recent,
    }
}

/// [`rebuild_index`], and for every partition the offset of the last record read (None:
/// none was), where a reader that follows the topic goes on from.
pub(crate) async fn rebuild_index_at(
    clients: &KafkaClients,
    layout: &TopicLayout,
    codec: &RecordCodec,
) -> Result<(Index, Vec<Option<i64>>)> {
    let mut index = Index::default();
    let mut last_read = Vec::with_capacity(layout.partitions as usize);
    for partition in 0..layout.partitions {
        // The state topic is keyed by cluster/facet and written by one writer at a time,
        // so the last record of a key in its partition is its head: keep only that one's
        // bytes while reading (reusing the buffers), and decode one record per head, not
        // one per change the topic still holds before compaction.
        let mut latest: HashMap<Vec<u8>, RawState> = HashMap::new();
        let mut unkeyed = Vec::new();
        let mut last = None;
        read_partition_to_end(clients, &layout.state, partition, "index-rebuild", |m| {
            last = Some(m.offset());
            if let Some(payload) = m.payload() {
                let recent = recent_header(m);
                match m.key() {
                    Some(key) => match latest.get_mut(key) {
                        Some((p, r, o)) => {
                            p.clear();
                            p.extend_from_slice(payload);
                            *r = recent.map(<[u8]>::to_vec);
                            *o = m.offset();
                        }
                        None => {
                            latest.insert(
                                key.to_vec(),
                                (payload.to_vec(), recent.map(<[u8]>::to_vec), m.offset()),
                            );
                        }
                    },
                    None => {
                        unkeyed.push((payload.to_vec(), recent.map(<[u8]>::to_vec), m.offset()))
                    }
                }
            }
            Ok(())
        })
        .await?;
        last_read.push(last);
        let mut raw: Vec<_> = latest
            .into_iter()
            .map(|(key, (payload, recent, offset))| (facet_of_key(&key), payload, recent, offset))
            .chain(unkeyed.into_iter().map(|(p, r, o)| (None, p, r, o)))
            .collect();
        raw.sort_unstable_by_key(|(_, _, _, offset)| *offset);
        for (facet, payload, recent, offset) in raw {
            let record = codec
                .decode_as(&payload, facet)
                .await
                .map_err(|e| Error::Corrupt {
                    topic: layout.state.clone(),
                    partition,
                    offset,
                    message: e.to_string(),
                })?;
            index.install(head_of(record, recent.as_deref(), partition));
        }
    }
    tracing::info!(
        clusters = index.clusters(),
        "index rebuilt from the state topic"
    );
    Ok((index, last_read))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(n: i64, minutes: i64) -> RecentRequest {
        RecentRequest {
            request_id: format!("k-{n}"),
            digest: String::new(),
            result: Appended {
                cluster_id: "lkc-a".into(),
                facet: fleetledger_schemas::Facet::Logical,
                version: n,
                hash: String::new(),
                partition: 0,
                offset: n,
                ts: chrono::DateTime::from_timestamp(1_767_225_600 + minutes * 60, 0).unwrap(),
            },
        }
    }

    /// The ledger's copy of a state is given for its own record only (same version and
    /// hash, same facet), and never while the index is being changed.
    #[tokio::test]
    async fn a_head_state_is_shared_for_the_same_record_only() {
        use fleetledger_schemas::StatusState;
        use std::sync::Arc;
        let record = |version: i64, hash: &str| StateRecord {
            meta: RecordMeta {
                cluster_id: "lkc-a".into(),
                version,
                writer: "sync".into(),
                request_id: format!("r{version}"),
                reason: None,
                ts: chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
                prev_hash: String::new(),
                hash: hash.into(),
            },
            state: FacetState::Status(Arc::new(StatusState {
                phase: "running".into(),
                cku: 2,
                brokers_ready: 3,
                observed_version: 1,
                message: None,
            })),
        };
        let head = record(2, "h2");
        let mut index = Index::default();
        index.install(Head {
            record: head.clone(),
            appended: request(2, 0).result,
            recent: VecDeque::new(),
        });
        let index = Arc::new(tokio::sync::RwLock::new(index));
        let states = HeadStates::of(index.clone());
        let same = |meta: &RecordMeta, facet| states.same_state(meta, facet);
        let shared = same(&head.meta, Facet::Status).expect("its own record");
        let (FacetState::Status(a), FacetState::Status(b)) = (&shared, &head.state) else {
            panic!("a status");
        };
        assert!(Arc::ptr_eq(a, b), "the ledger's copy, not an equal one");
        assert!(same(&record(2, "other").meta, Facet::Status).is_none());
        assert!(same(&record(1, "h2").meta, Facet::Status).is_none());
        assert!(same(&head.meta, Facet::Logical).is_none());
        let mut other = head.meta.clone();
        other.cluster_id = "lkc-b".into();
        assert!(same(&other, Facet::Status).is_none());
        let writing = index.write().await;
        assert!(
            same(&head.meta, Facet::Status).is_none(),
            "it does not wait"
        );
        drop(writing);
        assert!(same(&head.meta, Facet::Status).is_some());
    }

    #[test]
    fn the_window_keeps_the_last_requests_of_the_last_hour() {
        let ids = |r: &VecDeque<RecentRequest>| -> Vec<String> {
            r.iter().map(|r| r.request_id.clone()).collect()
        };
        // By count.
        let mut r: VecDeque<_> = (1..=5).map(|n| request(n, n)).collect();
        trim_window(&mut r, 3, 3_600_000);
        assert_eq!(ids(&r), ["k-3", "k-4", "k-5"]);
        // By age: a request of 2 hours before the latest goes, one of 59 minutes stays.
        let mut r: VecDeque<_> = [request(1, 0), request(2, 61), request(3, 120)].into();
        trim_window(&mut r, 32, 3_600_000);
        assert_eq!(ids(&r), ["k-2", "k-3"]);
    }
}
