//! A standby's index: while this instance is not the writer, the index follows the
//! state topic (read_committed), so reads (`GET` of a cluster, visibility by org) answer
//! what the writer committed, a fetch wait behind it. When the instance becomes the
//! writer it rebuilds the index itself after fencing the one before; when it stands
//! down, the follower rebuilds the index and follows again.

use std::sync::Arc;
use std::time::Duration;

use fleetledger_schemas::RecordCodec;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::index::{Index, head_of, rebuild_index_at, recent_header};
use crate::kafka::KafkaClients;
use crate::keys::facet_of_key;
use crate::topics::TopicLayout;
use crate::writer::{Role, WriterStatus};

/// What the follower reads and where it writes.
pub(crate) struct StateFollower {
    pub(crate) clients: KafkaClients,
    pub(crate) layout: TopicLayout,
    pub(crate) codec: Arc<RecordCodec>,
    pub(crate) index: Arc<RwLock<Index>>,
    pub(crate) status: WriterStatus,
}

impl StateFollower {
    /// Follows the state topic whenever this instance is a standby, until `shutdown`.
    /// `positions` are where the index the ledger opened with was read to (None: it was
    /// not read as a standby's, and is rebuilt when this instance is one).
    pub(crate) async fn run(
        self,
        positions: Option<Vec<Option<i64>>>,
        shutdown: CancellationToken,
    ) {
        let mut positions = positions;
        loop {
            // Wait to be a standby.
            while self.status.role() != Role::Standby {
                positions = None;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.follow(positions.take()) => r,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "following the state topic failed; rebuilding the index in 1 s");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    /// A standby's index, read whole from the state topic and installed unless this
    /// instance started taking over meanwhile (the writer installs its own); where the
    /// read ended, or None if it was not installed.
    pub(crate) async fn read_index(&self) -> Result<Option<Vec<Option<i64>>>> {
        let (index, positions) = rebuild_index_at(&self.clients, &self.layout, &self.codec).await?;
        let mut current = self.index.write().await;
        if self.status.role() != Role::Standby {
            return Ok(None);
        }
        *current = index;
        Ok(Some(positions))
    }

    /// One round: the index (read again unless `positions` say where the current one was
    /// read to), then every committed state record after it, for as long as this instance
    /// stays a standby.
    async fn follow(&self, positions: Option<Vec<Option<i64>>>) -> Result<()> {
        let positions = match positions {
            Some(p) => p,
            None => match self.read_index().await? {
                Some(p) => p,
                None => return Ok(()),
            },
        };
        let consumer = self.clients.applying_consumer("state-follower")?;
        let mut tpl = TopicPartitionList::new();
        for (partition, last) in positions.iter().enumerate() {
            let offset = match last {
                Some(o) => Offset::Offset(o + 1),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(&self.layout.state, partition as i32, offset)
                .map_err(|e| Error::kafka("assign", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka(format!("assign {}", self.layout.state), e))?;
        tracing::info!("standby: following the state topic");
        while self.status.role() == Role::Standby {
            let m = match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
                Err(_) | Ok(Err(KafkaError::PartitionEOF(_))) => continue,
                Ok(Err(e)) => return Err(Error::kafka("follow the state topic", e)),
                Ok(Ok(m)) => m,
            };
            let Some(payload) = m.payload() else {
                continue;
            };
            let facet = m.key().and_then(facet_of_key);
            let record =
                self.codec
                    .decode_as(payload, facet)
                    .await
                    .map_err(|e| Error::Corrupt {
                        topic: self.layout.state.clone(),
                        partition: m.partition(),
                        offset: m.offset(),
                        message: e.to_string(),
                    })?;
            let recent = recent_header(&m);
            // Installing keeps the higher version: a record read here never undoes a
            // later one, whoever installed that.
            self.index
                .write()
                .await
                .install(head_of(record, recent, m.partition()));
        }
        Ok(())
    }
}
