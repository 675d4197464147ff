//! Watching accepted changes as they commit: the history topic read from a position (the
//! next offset of every partition) onwards, filtered, each change carrying the position
//! that resumes just after it. A resumed watch neither skips nor repeats: positions are
//! per partition, and Kafka keeps each partition's order.

use std::collections::BTreeMap;
use std::fmt;

use fleetledger_schemas::{Facet, FacetState};
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::append::Ledger;
use crate::cluster_history::HistoryEntry;
use crate::error::{Error, Result};
use crate::keys::facet_of_key;
use crate::principals::Scope;

/// Where a watch stands: the next offset to read in every history partition. Written
/// `0:15,1:20,2:7`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchPosition(pub BTreeMap<i32, i64>);

impl fmt::Display for WatchPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        write!(f, "{}", parts.join(","))
    }
}

impl WatchPosition {
    /// Parses `0:15,1:20,…`; every partition of a ledger with `partitions` partitions must
    /// be named once, with an offset of 0 or more.
    pub fn parse(text: &str, partitions: i32) -> Result<Self> {
        let bad = |why: String| {
            Error::InvalidPoint(format!(
                "position {text:?}: {why}; a position is the id of a watch event (PARTITION:OFFSET for each of the {partitions} partitions, comma-separated)"
            ))
        };
        let mut map = BTreeMap::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (p, o) = part
                .split_once(':')
                .ok_or_else(|| bad(format!("{part:?} is not PARTITION:OFFSET")))?;
            let p: i32 = p.parse().map_err(|_| bad(format!("partition {p:?}")))?;
            let o: i64 = o.parse().map_err(|_| bad(format!("offset {o:?}")))?;
            if !(0..partitions).contains(&p) || o < 0 || map.insert(p, o).is_some() {
                return Err(bad(format!("{part:?} is out of range or repeated")));
            }
        }
        if map.len() != partitions as usize {
            return Err(bad(format!(
                "it names {} partitions, not {partitions}",
                map.len()
            )));
        }
        Ok(WatchPosition(map))
    }
}

/// Which changes a watch passes on.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    /// Only this facet's.
    pub facet: Option<Facet>,
    /// Only this cluster's.
    pub cluster_id: Option<String>,
    /// Only clusters of this org.
    pub org_id: Option<String>,
    /// Only clusters the caller sees.
    pub scope: Scope,
}

/// One change a watch passes on, and the position just after it.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// The change as history holds it.
    pub entry: HistoryEntry,
    /// Resumes the watch just after this change.
    pub position: WatchPosition,
}

impl Ledger {
    /// Watches the changes committed from `from` on (default: from now), passing on those
    /// `filter` lets through, in each partition's order. The watch runs until the
    /// receiver is dropped; a Kafka or decoding error is its last item. A change's org is
    /// its cluster's current logical org (the scope rule of reads and writes).
    pub async fn watch(
        &self,
        from: Option<WatchPosition>,
        filter: WatchFilter,
    ) -> Result<mpsc::Receiver<Result<WatchEvent>>> {
        let consumer = self.clients.consumer("watch")?;
        let timeout = self.clients.config().request_timeout();
        let mut position = match from {
            Some(p) => p,
            None => {
                let mut map = BTreeMap::new();
                for p in 0..self.layout.partitions {
                    let (_, high) = consumer
                        .fetch_watermarks(&self.layout.history, p, timeout)
                        .map_err(|e| Error::kafka("watermarks", e))?;
                    map.insert(p, high);
                }
                WatchPosition(map)
            }
        };
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &position.0 {
            tpl.add_partition_offset(&self.layout.history, *p, Offset::Offset(*o))
                .map_err(|e| Error::kafka("assign", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka("assign", e))?;
        let (tx, rx) = mpsc::channel(256);
        let ledger = self.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    () = tx.closed() => return,
                    m = consumer.recv() => m,
                };
                let (partition, offset, facet, payload) = match msg {
                    Ok(m) => (
                        m.partition(),
                        m.offset(),
                        m.key().and_then(facet_of_key),
                        m.payload().map(<[u8]>::to_vec),
                    ),
                    Err(KafkaError::PartitionEOF(_)) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(Error::kafka("watch", e))).await;
                        return;
                    }
                };
                position.0.insert(partition, offset + 1);
                let Some(payload) = payload else { continue };
                let record = match ledger.codec.decode_as(&payload, facet).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Error::Corrupt {
                                topic: ledger.layout.history.clone(),
                                partition,
                                offset,
                                message: e.to_string(),
                            }))
                            .await;
                        return;
                    }
                };
                if !ledger.passes(&filter, &record).await {
                    continue;
                }
                let event = WatchEvent {
                    entry: HistoryEntry {
                        record,
                        partition,
                        offset,
                    },
                    position: position.clone(),
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Whether `filter` lets `record` through.
    async fn passes(
        &self,
        filter: &WatchFilter,
        record: &fleetledger_schemas::StateRecord,
    ) -> bool {
        if filter.facet.is_some_and(|f| f != record.facet())
            || filter
                .cluster_id
                .as_ref()
                .is_some_and(|c| *c != record.meta.cluster_id)
        {
            return false;
        }
        if filter.org_id.is_none() && filter.scope.orgs().is_none() {
            return true;
        }
        let org = match &record.state {
            FacetState::Logical(l) => Some(l.org_id.clone()),
            _ => self.org_of(&record.meta.cluster_id).await,
        };
        filter.scope.sees(org.as_deref())
            && filter
                .org_id
                .as_ref()
                .is_none_or(|o| org.as_deref() == Some(o.as_str()))
    }
}
