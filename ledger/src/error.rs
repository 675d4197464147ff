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
    /// The principal does not own the facet.
    #[error("principal {principal} may not write the {facet} facet: its owner is {owner}")]
    Forbidden {
        /// Who tried.
        principal: String,
        /// What they tried to write.
        facet: fleetledger_schemas::Facet,
        /// Who owns it.
        owner: String,
    },
    /// A commit whose outcome could not be learned in time: the change may or may not be
    /// written. Retrying with the same idempotency key answers the original result if it
    /// was.
    #[error(
        "the outcome of the transaction is not known yet ({0}); retry with the same Idempotency-Key"
    )]
    OutcomeUnknown(String),
    /// One data topic exists and the other does not: history or state was deleted, and
    /// re-creating it would restart versions at 1 (and let compaction overwrite history).
    #[error("{missing} is missing while {present} exists: {advice}")]
    TopicMissing {
        /// The missing topic.
        missing: String,
        /// The one that exists.
        present: String,
        /// What happened and how to recover.
        advice: &'static str,
    },
    /// An imported line whose time lies outside the sane range.
    #[error("imported time {ts} is {why}")]
    ImportTime {
        /// The line's time.
        ts: String,
        /// What is wrong and what would be right.
        why: String,
    },
    /// Import into a cluster+facet whose history was written live, not imported.
    #[error(
        "{cluster_id}/{facet} already has live history (version {version} was not imported); importing under it would rewrite what the control plane wrote. Import it under another cluster id, or send allow_live_history if that is really meant"
    )]
    LiveHistory {
        /// Cluster.
        cluster_id: String,
        /// Facet.
        facet: fleetledger_schemas::Facet,
        /// Its current version.
        version: i64,
    },
    /// A resumed import's line differs from the record stored at its version.
    #[error(
        "{cluster_id}/{facet} version {version} is stored with another {what} than this line has; an import is resumed only with the same file"
    )]
    ImportDiffers {
        /// Cluster.
        cluster_id: String,
        /// Facet.
        facet: fleetledger_schemas::Facet,
        /// The version.
        version: i64,
        /// What differs (state, ts, writer, reason).
        what: &'static str,
    },
    /// The change's record would be larger than the writer sends.
    #[error(
        "the record of {cluster_id}/{facet} would be {bytes} bytes, more than the limit of {limit}; send a smaller state"
    )]
    TooLarge {
        /// Cluster.
        cluster_id: String,
        /// Facet.
        facet: fleetledger_schemas::Facet,
        /// Its encoded size.
        bytes: usize,
        /// The limit (`ledger.max_record_bytes`).
        limit: usize,
    },
    /// An operation reserved to one principal (recovery, import) asked for by another.
    #[error("principal {principal} may not {operation}: only {only} may")]
    OperationForbidden {
        /// Who asked.
        principal: String,
        /// What they asked for, e.g. `recover clusters`.
        operation: &'static str,
        /// The principal that may.
        only: &'static str,
    },
    /// `If-Match` named another version than the current one; the caller must re-read.
    #[error("{cluster_id}/{facet} is at version {current}, not {expected}")]
    Conflict {
        /// Cluster.
        cluster_id: String,
        /// Facet.
        facet: fleetledger_schemas::Facet,
        /// The version the caller expected.
        expected: i64,
        /// The current version (0: does not exist).
        current: i64,
    },
    /// An idempotency key reused with a different body.
    #[error(
        "idempotency key {request_id:?} was already used for {cluster_id}/{facet} with a different body; use a new key for a new change"
    )]
    IdempotencyMismatch {
        /// Cluster.
        cluster_id: String,
        /// Facet.
        facet: fleetledger_schemas::Facet,
        /// The reused key.
        request_id: String,
    },
    /// A time that goes backwards for a cluster+facet (import).
    #[error(
        "ts {ts} of {cluster_id}/{facet} is before the current version's ts {current}; times must not go backwards"
    )]
    TimeBackwards {
        /// Cluster.
        cluster_id: String,
        /// Facet.
        facet: fleetledger_schemas::Facet,
        /// The refused time.
        ts: String,
        /// The current version's time.
        current: String,
    },
    /// A point in a cluster's history that does not exist or cannot be used; the message
    /// says why and what would be right (e.g. when the cluster was created).
    #[error("{0}")]
    InvalidPoint(String),
    /// Recovery of a cluster that is not deleted.
    #[error(
        "cluster {cluster_id} is not deleted (logical version {version}); recovery restores deleted clusters only"
    )]
    NotDeleted {
        /// Cluster.
        cluster_id: String,
        /// Its current logical version.
        version: i64,
    },
    /// A change linked to an earlier one ([`crate::AppendRequest::requires`]) that was not
    /// written: nothing was written for it either.
    #[error(
        "cluster {cluster_id}: the line before this one ({facet} version {version}) was not written, so this one was not either; fix that line and run the import again"
    )]
    PrecedingNotWritten {
        /// Cluster.
        cluster_id: String,
        /// The facet of the change it follows.
        facet: fleetledger_schemas::Facet,
        /// The version that change would have had.
        version: i64,
    },
    /// A history whose hash chain does not verify, used where it must.
    #[error("{0}")]
    BrokenChain(String),
    /// Nothing is known about the cluster (or nothing the caller's scope lets it see: a
    /// cluster of another org is not found, so that its existence does not leak).
    #[error("cluster {0} not found")]
    NotFound(String),
    /// A topic the ledger relies on could lose an acknowledged write, and that risk was
    /// not accepted (`kafka.accept_weak_durability`).
    #[error(
        "these Kafka settings could lose an acknowledged write: {risks}. Give every topic {needed} (on a cluster of three or more brokers the ledger creates its topics so), or accept the risk with kafka.accept_weak_durability = true (FLEETLEDGER_KAFKA__ACCEPT_WEAK_DURABILITY; the single-node local setup does)"
    )]
    WeakDurability {
        /// Every risk found.
        risks: String,
        /// What would be safe.
        needed: &'static str,
    },
    /// A token limited to some orgs tried to create or move a cluster into another org.
    #[error(
        "this token may write only clusters of {allowed}, not of org {org}; use a token of that org"
    )]
    OutOfScope {
        /// The org the change names.
        org: String,
        /// The orgs the token may reach, comma-separated.
        allowed: String,
    },
    /// The change was not written (transaction aborted, Kafka unreachable); retry later.
    #[error("not written: {0}; retry later")]
    Unavailable(String),
    /// Another instance with the same transactional id took over; this one no longer writes.
    #[error(
        "this instance was fenced by another writer with the same transactional id and no longer accepts writes"
    )]
    Fenced,
    /// This instance is not the writer now (a standby, or taking over): nothing was
    /// written. `writer` is where the writer announced itself, if one did.
    #[error("{}", match writer {
        Some(url) => format!("this instance is a standby; the writer is {url}: send writes there (nothing was written here)"),
        None => "no instance is the writer right now (an election is under way); nothing was written, retry in a few seconds".to_owned(),
    })]
    NotWriter {
        /// The writer's advertised URL.
        writer: Option<String>,
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
            Error::Unavailable(_) | Error::OutcomeUnknown(_) => true,
            _ => false,
        }
    }
}

/// `Result` with the ledger's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
