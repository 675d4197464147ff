//! Projections of the history topic: the runtime (consume, apply, checkpoint, rebuild) and
//! the projections themselves. Pure projection logic lives in plain modules testable
//! without Kafka.

pub mod billing;

pub use billing::ClusterBilling;
