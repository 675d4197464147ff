//! `audit --verify` over the whole history topic: every partition read from its beginning,
//! every record decoded and checked against its chain ([`ChainVerifier`]).

use std::time::{Duration, Instant};

use fleetledger_schemas::RecordCodec;
use rdkafka::Message;

use crate::error::{Error, Result};
use crate::hash_chain::{ChainReport, ChainVerifier};
use crate::kafka::{KafkaClients, read_partition_to_end};
use crate::topics::TopicLayout;

/// Progress of a verification.
#[derive(Debug, Clone, Copy)]
pub struct VerifyProgress {
    /// Partitions finished.
    pub partitions_done: i32,
    /// Partitions in all.
    pub partitions: i32,
    /// Records checked so far.
    pub records: u64,
    /// Time since the start.
    pub elapsed: Duration,
}

/// Checks every hash chain of the history topic. A record that cannot be decoded counts as
/// a broken link at its offset (it is reported, never skipped silently). `progress` is
/// called after every partition.
pub async fn verify_history(
    clients: &KafkaClients,
    layout: &TopicLayout,
    codec: &RecordCodec,
    mut progress: impl FnMut(VerifyProgress),
) -> Result<ChainReport> {
    let started = Instant::now();
    let mut verifier = ChainVerifier::new();
    for partition in 0..layout.partitions {
        let mut raw = Vec::new();
        read_partition_to_end(clients, &layout.history, partition, "verifier", |m| {
            let key = m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            raw.push((key, m.payload().map(<[u8]>::to_vec), m.offset()));
            Ok(())
        })
        .await?;
        for (key, payload, offset) in raw {
            let Some(payload) = payload else {
                verifier.undecodable(&key, partition, offset, "tombstone: the record was erased");
                continue;
            };
            match codec
                .decode_as(&payload, crate::keys::facet_of_key(key.as_bytes()))
                .await
            {
                Ok(record) => {
                    verifier.check(&record, partition, offset);
                }
                Err(e) if e.is_retriable() => {
                    return Err(Error::Unavailable(format!(
                        "cannot decode {}/{partition} offset {offset}: {e}",
                        layout.history
                    )));
                }
                Err(e) => verifier.undecodable(&key, partition, offset, &e.to_string()),
            }
        }
        progress(VerifyProgress {
            partitions_done: partition + 1,
            partitions: layout.partitions,
            records: verifier.report().records,
            elapsed: started.elapsed(),
        });
    }
    Ok(verifier.report())
}
