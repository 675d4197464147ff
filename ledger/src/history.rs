//! History reads: every accepted record of one cluster, from its partition of the history
//! topic, guided by an index of where its records are.

use std::time::Duration;

use fleetledger_schemas::Facet;
use rdkafka::Message;

use crate::append::Ledger;
use crate::cluster_history::{ClusterHistory, HistoryEntry};
use crate::error::{Error, Result};
use crate::kafka::read_partition_ranges;
use crate::keys::{HistoryKey, facet_of_key};
use crate::partitioner::partition_for;

impl Ledger {
    /// Every accepted record of `cluster_id` in commit order. Reads only the cluster's
    /// partition of the history topic, and of it only what `hint` does not rule out: the
    /// offsets it lists below `indexed_to` (fetched by seeking, nearby offsets in one
    /// read) and everything from `indexed_to` to the end. Without a hint the whole
    /// partition is read. Records of other clusters are dropped by key before decoding.
    ///
    /// Read-your-writes: a transaction's records become readable (`read_committed`) a few
    /// milliseconds after its commit returned, when the broker has written its markers; if
    /// the history read lacks a version this ledger has committed, it is read again (every
    /// 20 ms, for at most 2 s).
    pub async fn history(
        &self,
        cluster_id: &str,
        hint: Option<&HistoryHint>,
    ) -> Result<ClusterHistory> {
        let heads: Vec<(Facet, i64)> = self
            .current(cluster_id)
            .await
            .into_iter()
            .map(|(f, h)| (f, h.record.meta.version))
            .collect();
        let mut attempt = 0;
        loop {
            let history = self.read_history(cluster_id, hint).await?;
            let complete = heads.iter().all(|(facet, version)| {
                history
                    .entries()
                    .iter()
                    .any(|e| e.record.facet() == *facet && e.record.meta.version >= *version)
            });
            attempt += 1;
            if complete || attempt >= 100 {
                return Ok(history);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn read_history(
        &self,
        cluster_id: &str,
        hint: Option<&HistoryHint>,
    ) -> Result<ClusterHistory> {
        let partition = partition_for(cluster_id, self.layout.partitions);
        let ranges = hint.map_or_else(|| vec![(0, i64::MAX)], HistoryHint::ranges);
        let prefix = HistoryKey::cluster_prefix(cluster_id);
        let (fetched, out) = read_partition_ranges(
            &self.clients,
            &self.layout.history,
            partition,
            "history-reader",
            &ranges,
            |m| match (m.key(), m.payload()) {
                (Some(key), Some(payload)) if key.starts_with(prefix.as_bytes()) => {
                    Some((facet_of_key(key), payload.to_vec()))
                }
                _ => None,
            },
        )
        .await?;
        tracing::debug!(
            cluster_id,
            partition,
            ranges = ranges.len(),
            fetched,
            records = out.len(),
            "history read"
        );
        let mut entries = Vec::with_capacity(out.len());
        for (offset, (facet, bytes)) in out {
            let record = self
                .codec
                .decode_as(&bytes, facet)
                .await
                .map_err(|e| Error::Corrupt {
                    topic: self.layout.history.clone(),
                    partition,
                    offset,
                    message: e.to_string(),
                })?;
            entries.push(HistoryEntry {
                record,
                partition,
                offset,
            });
        }
        Ok(ClusterHistory::new(cluster_id, entries))
    }
}

/// What an index (the `audit_log` projection) knows about where one cluster's records
/// are in its history partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryHint {
    /// Offsets of the cluster's records below `indexed_to`, ascending.
    pub offsets: Vec<i64>,
    /// Every record of the partition below this offset was indexed; records at or after it
    /// are found by reading on to the end of the partition.
    pub indexed_to: i64,
}

impl HistoryHint {
    /// Offsets closer than this are read in one range rather than with a seek each: a seek
    /// costs a fetch round trip, about the time of reading this many small records.
    const GAP: i64 = 200;

    /// The offset ranges to read: runs of nearby indexed offsets, then the unindexed tail.
    fn ranges(&self) -> Vec<(i64, i64)> {
        let mut ranges: Vec<(i64, i64)> = Vec::new();
        for &o in self.offsets.iter().filter(|o| **o < self.indexed_to) {
            match ranges.last_mut() {
                Some((_, end)) if o < *end + Self::GAP => *end = (*end).max(o + 1),
                _ => ranges.push((o, o + 1)),
            }
        }
        match ranges.last_mut() {
            Some((_, end)) if self.indexed_to < *end + Self::GAP => *end = i64::MAX,
            _ => ranges.push((self.indexed_to, i64::MAX)),
        }
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::HistoryHint;

    #[test]
    fn hint_ranges_merge_nearby_offsets_and_read_the_tail() {
        let hint = HistoryHint {
            offsets: vec![5, 7, 100, 1000, 1100, 5000],
            indexed_to: 5100,
        };
        assert_eq!(
            hint.ranges(),
            vec![(5, 101), (1000, 1101), (5000, i64::MAX)]
        );
        let far = HistoryHint {
            offsets: vec![5],
            indexed_to: 9000,
        };
        assert_eq!(far.ranges(), vec![(5, 6), (9000, i64::MAX)]);
        assert_eq!(HistoryHint::default().ranges(), vec![(0, i64::MAX)]);
    }
}
