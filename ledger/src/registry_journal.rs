//! The embedded schema registry's journal in a compacted, single-partition Kafka topic.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use fleetledger_schemas::registry::{JournalEntry, RegistryJournal};
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use crate::error::{Error, Result};
use crate::kafka::{KafkaClients, LedgerConsumer};

/// Writes registry entries to the registry topic; `append` returns once the broker
/// acknowledged the write with `acks=all`.
#[derive(Clone)]
pub struct KafkaRegistryJournal {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for KafkaRegistryJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaRegistryJournal")
            .field("topic", &self.topic)
            .finish()
    }
}

impl KafkaRegistryJournal {
    /// A journal writing to `topic`.
    pub fn new(clients: &KafkaClients, topic: &str) -> Result<Self> {
        Ok(KafkaRegistryJournal {
            producer: clients.producer("registry")?,
            topic: topic.to_owned(),
        })
    }

    /// Reads every entry of `topic` from the beginning to its current end, in order.
    /// An unreadable entry is [`Error::Corrupt`] naming its offset.
    pub async fn load(clients: &KafkaClients, topic: &str) -> Result<Vec<JournalEntry>> {
        let consumer: LedgerConsumer = clients.consumer("registry-loader")?;
        let timeout = clients.config().request_timeout();
        let (low, high) = consumer
            .fetch_watermarks(topic, 0, timeout)
            .map_err(|e| Error::kafka(format!("watermarks of {topic}"), e))?;
        let mut entries = Vec::new();
        if high <= low {
            return Ok(entries);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(|e| Error::kafka("assign", e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka(format!("assign {topic}"), e))?;
        loop {
            let msg = match tokio::time::timeout(timeout, consumer.recv()).await {
                Err(_) => {
                    return Err(Error::kafka(
                        format!("read {topic}"),
                        KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut),
                    ));
                }
                Ok(Err(KafkaError::PartitionEOF(_))) => break,
                Ok(Err(e)) => return Err(Error::kafka(format!("read {topic}"), e)),
                Ok(Ok(m)) => m,
            };
            let offset = msg.offset();
            let key = msg.key().unwrap_or_default();
            match JournalEntry::from_key_value(key, msg.payload()) {
                Ok(Some(e)) => entries.push(e),
                Ok(None) => {}
                Err(message) => {
                    return Err(Error::Corrupt {
                        topic: topic.to_owned(),
                        partition: 0,
                        offset,
                        message,
                    });
                }
            }
            if offset + 1 >= high {
                break;
            }
        }
        Ok(entries)
    }
}

impl RegistryJournal for KafkaRegistryJournal {
    fn append<'a>(
        &'a self,
        entry: &'a JournalEntry,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let (key, value) = entry.to_key_value();
            let record = FutureRecord::to(&self.topic)
                .key(&key)
                .payload(&value)
                .partition(0);
            self.producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| format!("writing to {}: {e}", self.topic))
        })
    }
}
