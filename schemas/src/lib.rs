//! Avro schemas of the facet states, their typed Rust records, the Confluent Schema
//! Registry wire format, and the codec (which gets schemas through [`SchemaSource`]; the
//! embedded registry is the `fleetledger-registry` crate).
//!
//! Subject naming: **RecordNameStrategy**. The state and history topics carry the records
//! of all four facets, so one subject per topic (TopicNameStrategy) cannot describe them;
//! a subject per record type (`fleetledger.v1.LogicalRecord`, …) is shared by both topics,
//! which carry the same records. Compatibility is BACKWARD by default.

pub mod binary;
mod canonical;
mod codec;
pub mod diff;
mod error;
mod facet;
mod record;
#[cfg(test)]
mod state_strategy;

pub use codec::{
    MAGIC_BYTE, RecordCodec, SchemaFuture, SchemaSource, WireHeader, decode_wire_header,
    encode_wire,
};
pub use error::{Error, Result};
pub use facet::{
    CLOUDS, CapacityState, Facet, FacetState, KINDS, LogicalState, MAX_CKU, NETWORKS, PHASES,
    PhysicalState, SKUS, Side, StatusState, validate_cluster_id,
};
pub use record::{RecordMeta, StateRecord};
