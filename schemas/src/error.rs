//! The schemas crate's error type.

/// Everything that can go wrong in this crate, by fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that does not satisfy the schema or the domain rules; the caller must fix it.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field (`cku`, `cloud`, `cluster_id`, …).
        field: String,
        /// What was wrong and what would be right.
        message: String,
    },
    /// A facet name that is not one of logical, physical, capacity, status.
    #[error("unknown facet {0:?}: expected one of logical, physical, capacity, status")]
    UnknownFacet(String),
    /// Bytes that are not a Confluent wire-format Avro record of ours.
    #[error("cannot decode record: {0}")]
    Decode(String),
    /// A record that could not be encoded (a bug, or a registry without our subjects).
    #[error("cannot encode record: {0}")]
    Encode(String),
    /// The schema registry could not be reached or answered with an error. Retriable when
    /// `retriable` is set (timeouts, 5xx).
    #[error("schema registry: {message}")]
    Registry {
        /// What the registry said.
        message: String,
        /// Whether the same call may succeed later.
        retriable: bool,
    },
}

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Error::Registry {
                retriable: true,
                ..
            }
        )
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
