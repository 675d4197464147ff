//! The ledger: the topic layout of the system of record, the one place Kafka clients are
//! configured, the Kafka-backed journal of the embedded schema registry, and the clock.

mod admission;
pub mod append;
mod clock;
pub mod cluster_history;
pub mod election;
mod error;
mod follower;
pub mod hash_chain;
mod history;
pub mod import;
mod index;
pub mod kafka;
pub mod kafka_security;
pub mod keys;
pub mod metrics;
pub mod partitioner;
mod pipeline;
pub mod principals;
pub mod registry_journal;
pub mod topics;
pub mod verify;
pub mod watch;
mod writer;

pub use admission::{DeleteRequest, MAX_REASON_BYTES, MAX_REQUEST_ID_BYTES, Outcome};
pub use append::{AppendRequest, Appended, Ledger, LedgerConfig, LedgerSetup};
pub use clock::{Clock, ManualClock, SystemClock};
pub use cluster_history::{
    ClusterHistory, FacetRestore, HistoryEntry, Point, RecoveryPlan, StateAt, TimelineEntry,
    parse_time,
};
pub use election::{Announcement, Election, WriterDirectory};
pub use error::{Error, Result};
pub use hash_chain::{BrokenLink, ChainReport, ChainVerifier};
pub use history::HistoryHint;
pub use index::{Head, HeadStates};
pub use kafka::{KafkaClients, KafkaConfig, LedgerConsumer};
pub use kafka_security::{KafkaSecurity, SaslMechanism, Secret, SecurityProtocol};
pub use keys::{HistoryKey, StateKey, facet_of_key};
pub use principals::{Caller, Ownership, Scope, Tokens};
pub use registry_journal::KafkaRegistryJournal;
pub use topics::{TopicCheck, TopicLayout};
pub use verify::{VerifyProgress, verify_history};
pub use writer::Role;
