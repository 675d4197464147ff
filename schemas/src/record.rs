//! The state record: the full state of one facet of one cluster after a change, plus the
//! metadata the ledger assigns.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::facet::{Facet, FacetState};

/// Metadata of an accepted change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMeta {
    /// The cluster.
    pub cluster_id: String,
    /// Per cluster+facet, from 1, without gaps.
    pub version: i64,
    /// Principal that wrote the change.
    pub writer: String,
    /// Idempotency key of the request that made the change.
    pub request_id: String,
    /// Why, in human words.
    pub reason: Option<String>,
    /// The change's event time (millisecond precision, UTC): when it took effect in the
    /// control plane, the time billing integrates by. For a live append, the ledger's
    /// clock when it admitted the change, but never earlier than the cluster's previous
    /// record of any facet (so a cluster's records are in time order even across writer
    /// restarts and clock steps); for imported history, the time the source recorded.
    /// When the ledger *wrote* the record is the Kafka record timestamp instead.
    pub ts: DateTime<Utc>,
    /// Hex SHA-256 of the previous version of the same cluster+facet; empty for version 1.
    pub prev_hash: String,
    /// Hex SHA-256 of this record.
    pub hash: String,
}

/// One accepted change: metadata and the facet's full state after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRecord {
    /// Metadata.
    pub meta: RecordMeta,
    /// The facet's full state.
    pub state: FacetState,
}

impl StateRecord {
    /// The facet this record belongs to.
    pub fn facet(&self) -> Facet {
        self.state.facet()
    }
}

/// The Avro shape of a record: metadata fields flattened, the state nested.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AvroRecord<S> {
    pub(crate) cluster_id: String,
    pub(crate) version: i64,
    pub(crate) writer: String,
    pub(crate) request_id: String,
    pub(crate) reason: Option<String>,
    pub(crate) ts: i64,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
    pub(crate) state: S,
}

impl<S> AvroRecord<S> {
    fn new(meta: &RecordMeta, state: S) -> Self {
        AvroRecord {
            cluster_id: meta.cluster_id.clone(),
            version: meta.version,
            writer: meta.writer.clone(),
            request_id: meta.request_id.clone(),
            reason: meta.reason.clone(),
            ts: meta.ts.timestamp_millis(),
            prev_hash: meta.prev_hash.clone(),
            hash: meta.hash.clone(),
            state,
        }
    }

    pub(crate) fn into_parts(self) -> Result<(RecordMeta, S)> {
        let ts = Utc
            .timestamp_millis_opt(self.ts)
            .single()
            .ok_or_else(|| Error::Decode(format!("ts {} is out of range", self.ts)))?;
        Ok((
            RecordMeta {
                cluster_id: self.cluster_id,
                version: self.version,
                writer: self.writer,
                request_id: self.request_id,
                reason: self.reason,
                ts,
                prev_hash: self.prev_hash,
                hash: self.hash,
            },
            self.state,
        ))
    }
}

/// The Avro record of each facet under the name its schema gives it: the schema-aware
/// decoder ([`crate::codec::WriterSchema`]) reads a struct only from a record of the same
/// name, which the generic [`AvroRecord`] cannot carry.
macro_rules! named_record {
    ($name:ident, $state:ty) => {
        #[doc = concat!("[`AvroRecord`] of `", stringify!($state), "` as the schema names it.")]
        #[derive(Debug, Deserialize)]
        pub(crate) struct $name {
            cluster_id: String,
            version: i64,
            writer: String,
            request_id: String,
            #[serde(default)]
            reason: Option<String>,
            ts: i64,
            prev_hash: String,
            hash: String,
            state: $state,
        }

        impl From<$name> for AvroRecord<$state> {
            fn from(r: $name) -> Self {
                AvroRecord {
                    cluster_id: r.cluster_id,
                    version: r.version,
                    writer: r.writer,
                    request_id: r.request_id,
                    reason: r.reason,
                    ts: r.ts,
                    prev_hash: r.prev_hash,
                    hash: r.hash,
                    state: r.state,
                }
            }
        }
    };
}

named_record!(LogicalRecord, crate::facet::LogicalState);
named_record!(PhysicalRecord, crate::facet::PhysicalState);
named_record!(CapacityRecord, crate::facet::CapacityState);
named_record!(StatusRecord, crate::facet::StatusState);

/// Converts a record to the Avro value of its facet's schema.
pub(crate) fn to_avro_value(record: &StateRecord) -> Result<apache_avro::types::Value> {
    let m = &record.meta;
    let v = match &record.state {
        FacetState::Logical(s) => apache_avro::to_value(AvroRecord::new(m, s)),
        FacetState::Physical(s) => apache_avro::to_value(AvroRecord::new(m, s)),
        FacetState::Capacity(s) => apache_avro::to_value(AvroRecord::new(m, s)),
        FacetState::Status(s) => apache_avro::to_value(AvroRecord::new(m, s)),
    };
    v.map_err(|e| Error::Encode(e.to_string()))
}

/// Converts a decoded Avro value of `facet`'s schema back into a record (the slow path the
/// decoder replaced; the tests check both agree).
#[cfg(test)]
pub(crate) fn from_avro_value(
    facet: Facet,
    value: &apache_avro::types::Value,
) -> Result<StateRecord> {
    fn parts<S: serde::de::DeserializeOwned>(
        value: &apache_avro::types::Value,
    ) -> Result<(RecordMeta, S)> {
        apache_avro::from_value::<AvroRecord<S>>(value)
            .map_err(|e| Error::Decode(e.to_string()))?
            .into_parts()
    }
    let (meta, state) = match facet {
        Facet::Logical => {
            let (m, s) = parts(value)?;
            (m, FacetState::Logical(s))
        }
        Facet::Physical => {
            let (m, s) = parts(value)?;
            (m, FacetState::Physical(s))
        }
        Facet::Capacity => {
            let (m, s) = parts(value)?;
            (m, FacetState::Capacity(s))
        }
        Facet::Status => {
            let (m, s) = parts(value)?;
            (m, FacetState::Status(s))
        }
    };
    Ok(StateRecord { meta, state })
}
