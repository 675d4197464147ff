//! The embedded schema registry's journal in a compacted, single-partition Kafka topic.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use fleetledger_registry::{JournalEntry, RegistryJournal};
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::error::{Error, Result};
use crate::kafka::{KafkaClients, read_partition_to_end};

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
        let mut entries = Vec::new();
        read_partition_to_end(clients, topic, 0, "registry-loader", |m| {
            match JournalEntry::from_key_value(m.key().unwrap_or_default(), m.payload()) {
                Ok(Some(e)) => entries.push(e),
                Ok(None) => {}
                Err(message) => {
                    return Err(Error::Corrupt {
                        topic: topic.to_owned(),
                        partition: 0,
                        offset: m.offset(),
                        message,
                    });
                }
            }
            Ok(())
        })
        .await?;
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
