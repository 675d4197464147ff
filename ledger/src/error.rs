//! The ledger's error type.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Everything that can go wrong in the ledger, by fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kafka could not be reached or answered with an error. `retriable` says whether the
    /// same call may succeed later (timeouts, unavailable brokers).
    #[error("kafka {operation}: {source}")]
    Kafka {
        /// What we were doing (`create topics`, `produce to fleet.state.v1`, …).
        operation: String,
        /// The client's error.
        #[source]
        source: KafkaError,
        /// Whether retrying may help.
        retriable: bool,
    },
    /// A topic exists with settings other than the layout needs; the message lists them.
    #[error("topic {topic} does not match the layout: {differences}")]
    TopicMismatch {
        /// The topic.
        topic: String,
        /// What differs, e.g. `partitions is 3, expected 6; cleanup.policy is delete, expected compact`.
        differences: String,
    },
    /// A configuration value that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A record in a topic we own that we cannot read.
    #[error("corrupt record in {topic} partition {partition} offset {offset}: {message}")]
    Corrupt {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// What is wrong with it.
        message: String,
    },
    /// An error from the schemas crate.
    #[error(transparent)]
    Schema(#[from] fleetledger_schemas::Error),
}

impl Error {
    pub(crate) fn kafka(operation: impl Into<String>, source: KafkaError) -> Self {
        let retriable = !matches!(
            source.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
            )
        );
        Error::Kafka {
            operation: operation.into(),
            source,
            retriable,
        }
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Kafka { retriable, .. } => *retriable,
            Error::Schema(e) => e.is_retriable(),
            _ => false,
        }
    }
}

/// `Result` with the ledger's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
