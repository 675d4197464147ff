//! The projectors' error type.

use std::path::PathBuf;

/// Everything that can stop a projection, by fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A history record that cannot be decoded; the projection stops there rather than
    /// skip it. Inspect it with `fleetledger project inspect --partition P --offset O`.
    #[error(
        "cannot decode {topic} partition {partition} offset {offset}: {message}; inspect it with `fleetledger project inspect --partition {partition} --offset {offset}`"
    )]
    Decode {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// Why.
        message: String,
    },
    /// A checkpoint file that is corrupt or belongs to another topic or layout.
    #[error(
        "checkpoint {path}: {message}; run `fleetledger project rebuild {projection}` to rebuild it from history"
    )]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// The projection.
        projection: String,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a checkpoint failed.
    #[error("checkpoint i/o on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the projection directory.
    #[error(
        "the projections of {topic} in {dir} are in use by another process ({holder}); stop it, or give this one another projector.dir"
    )]
    DirectoryInUse {
        /// The directory.
        dir: PathBuf,
        /// The history topic.
        topic: String,
        /// Who holds it, as its lock file says.
        holder: String,
    },
    /// The history topic holds less than the checkpoints say was applied, or starts after
    /// them: it was deleted and re-created, or records were deleted under the projections.
    /// Applying it would silently mix two histories.
    #[error(
        "{topic} partition {partition} {problem}; the topic was re-created or truncated since the checkpoints in {dir} were written. Restore the topic, or rebuild every projection from what it holds now (`fleetledger project rebuild all`)"
    )]
    HistoryChanged {
        /// The history topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// What does not fit, with the offsets.
        problem: String,
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// An unknown projection name.
    #[error(
        "unknown projection {0:?}: expected one of clusters, billing_hours, audit_log (or all for rebuild)"
    )]
    UnknownProjection(String),
    /// Kafka or the ledger failed.
    #[error(transparent)]
    Ledger(#[from] fleetledger_ledger::Error),
}

/// `Result` with the projectors' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
